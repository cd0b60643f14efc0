@testable import DaxFS
import Foundation
import Testing
import TestSupport

/// The log's flushes and persist points, in order, and a snapshot of the image at each point.
private final class PersistRecorder: PersistObserver, @unchecked Sendable {
    enum Event: Equatable { case flush(Range<Int>), barrier }
    let path: String
    var events: [Event] = []
    var images: [[UInt8]] = []
    init(path: String) { self.path = path }
    func didFlush(offset: Int, length: Int) { self.events.append(.flush(offset..<(offset + length))) }
    func didBarrier() {
        self.events.append(.barrier)
        if let bytes = FileManager.default.contents(atPath: self.path) { self.images.append([UInt8](bytes)) }
    }
}

/// A committed log transaction damaged on the media (a flipped bit in its records) is told apart
/// from a commit a crash cut short: the records are durable before the header that commits them,
/// and the header carries a checksum of its own. So fsck names the damaged slot, mount refuses
/// the image instead of silently dropping a committed transaction, and a torn header is ignored.
@Suite("Damaged log slots", .serialized, .timeLimit(.minutes(2)))
struct DamagedLogTests {
    /// The slots whose header has the magic, in `image`.
    private func liveSlots(_ image: [UInt8], _ geometry: Geometry) -> [Int] {
        (0..<geometry.logSlotCount).filter { slot in
            let offset = MetadataLog.slotOffset(slot, geometry)
            return image.withUnsafeBytes { $0.load(fromByteOffset: offset, as: UInt64.self) } == MetadataLog.magic
        }
    }

    /// A punch of 64 pages, recorded; the snapshot at the persist point where its transaction is
    /// committed and not yet applied (a crash there leaves it to replay), and the geometry.
    private func committedPunch(_ path: String) throws -> (image: [UInt8], slot: Int, geometry: Geometry, recorder: PersistRecorder) {
        _ = try FileSystem.format(path: path, size: 4 << 20)
        let recorder = PersistRecorder(path: path)
        let fs = try FileSystem.mount(path: path, persistence: nil, persistObserver: recorder)
        let file = try fs.create("f")
        try fs.write(file, offset: 0, bytes: [UInt8](repeating: 7, count: 64 * 4096))
        recorder.images.removeAll()
        try fs.punchHole(file, offset: 0, length: 64 * 4096)
        let geometry = fs.geometry
        try fs.unmount()
        let image = try #require(recorder.images.first { !self.liveSlots($0, geometry).isEmpty }, "no persist point left a committed slot")
        return (image, self.liveSlots(image, geometry)[0], geometry, recorder)
    }

    @Test("every commit makes its records durable before it writes the header: a barrier separates the two flushes")
    func recordsBeforeHeader() throws {
        try withTemporaryPath("log-order") { path in
            let (_, _, geometry, recorder) = try self.committedPunch(path)
            let slots = (0..<geometry.logSlotCount).map { MetadataLog.slotOffset($0, geometry) }
            var commits = 0
            for (index, event) in recorder.events.enumerated() {
                // A header flush: 64 bytes at a slot's start.
                guard case .flush(let range) = event, slots.contains(range.lowerBound), range.count == MetadataLog.headerSize else { continue }
                commits += 1
                let before = recorder.events[..<index]
                let lastBarrier = try #require(before.lastIndex(of: .barrier), "a header flushed before any persist point")
                let records = before.lastIndex { if case .flush(let r) = $0 { return r.lowerBound == range.upperBound } else { return false } }
                #expect(records.map { $0 < lastBarrier } == true, "the records of slot \(range.lowerBound) were not durable before its header")
            }
            #expect(commits > 0, "no commit seen")
        }
    }

    @Test("a bit flipped in a committed slot's records: fsck names the slot, mount refuses and writes nothing, --repair discards it and ends clean")
    func damagedCommittedSlot() throws {
        try withTemporaryPath("log-damaged") { path in
            let (committed, slot, geometry, _) = try self.committedPunch(path)
            var image = committed
            let records = MetadataLog.slotOffset(slot, geometry) + MetadataLog.headerSize
            image[records + 20] ^= 0x10
            try Data(image).write(to: URL(fileURLWithPath: path))

            let report = try Fsck.run(path: path)
            #expect(!report.isClean)
            #expect(report.result.problems.contains { $0.structure == "log" && $0.message.hasPrefix("slot \(slot) holds a committed transaction whose records fail their checksum") },
                    "\(report.result.problems)")
            do throws(FSError) {
                _ = try FileSystem.mount(path: path)
                Issue.record("the image with a damaged committed slot mounted")
            } catch {
                #expect(error.code == .corrupt && error.message.contains("log slot \(slot)") && error.message.contains("fsck --repair"),
                        "\(error.message)")
            }
            #expect(try [UInt8](Data(contentsOf: URL(fileURLWithPath: path))) == image, "a refused mount wrote")

            let repaired = try Fsck.run(path: path, repair: true)
            #expect(repaired.afterRepair?.isClean == true, "\(repaired.afterRepair?.problems ?? [])")
            let fs = try FileSystem.mount(path: path)
            #expect(fs.list().map(\.name) == ["f"])
            try fs.unmount()
        }
    }

    @Test("the same slot intact is replayed; with its header torn (its own checksum fails) it is a commit a crash cut short: ignored, and the image mounts")
    func intactAndTorn() throws {
        try withTemporaryPath("log-torn") { path in
            let (committed, slot, geometry, _) = try self.committedPunch(path)
            try Data(committed).write(to: URL(fileURLWithPath: path))
            #expect(try Fsck.run(path: path).pendingLogTransactions == 1)
            var fs = try FileSystem.mount(path: path)
            #expect(fs.mountReport.replayedTransactions == 1)
            try fs.unmount()

            var torn = committed
            torn[MetadataLog.slotOffset(slot, geometry) + 40] ^= 0x01  // (the header's padding)
            try Data(torn).write(to: URL(fileURLWithPath: path))
            let report = try Fsck.run(path: path)
            #expect(!report.result.problems.contains { $0.structure == "log" }, "\(report.result.problems)")
            fs = try FileSystem.mount(path: path)
            #expect(fs.mountReport.discardedTransactions == 1 && fs.mountReport.replayedTransactions == 0)
            try fs.unmount()
        }
    }

    @Test("a commit cut short with only its magic durable (the header's other words still the zeros a retire leaves) is ignored, not called damage")
    func magicOnly() throws {
        try withTemporaryPath("log-magic-only") { path in
            let (committed, slot, geometry, _) = try self.committedPunch(path)
            var image = committed
            let header = MetadataLog.slotOffset(slot, geometry)
            for index in 8..<MetadataLog.headerWords { image[header + index] = 0 }
            image[header + MetadataLog.headerSize + 20] ^= 0x10  // (records not all new either)
            try Data(image).write(to: URL(fileURLWithPath: path))
            let report = try Fsck.run(path: path)
            #expect(!report.result.problems.contains { $0.structure == "log" }, "\(report.result.problems)")
            let fs = try FileSystem.mount(path: path)
            #expect(fs.mountReport.discardedTransactions == 1 && fs.mountReport.replayedTransactions == 0)
            try fs.unmount()
            // The mount emptied the slot, magic and all: a later commit's torn header there can
            // only mix its words with zeros.
            let after = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
            #expect(after[header..<(header + MetadataLog.headerWords)].allSatisfy { $0 == 0 }, "the discarded slot kept its words")
        }
    }

    @Test("a slot committed without the header's checksum (its field 0, as earlier daxlab wrote) is replayed; the records' checksum is the one earlier daxlab computes")
    func slotWithoutHeaderChecksum() throws {
        try withTemporaryPath("log-old-slot") { path in
            let (committed, slot, geometry, _) = try self.committedPunch(path)
            var image = committed
            let header = MetadataLog.slotOffset(slot, geometry)
            // Earlier daxlab's checksum: the whole header but its own field, then the records. The
            // new header's (non-zero) field is part of it, as earlier daxlab would read it.
            image.withUnsafeMutableBytes { raw in
                let base = raw.baseAddress! + header
                let bytes = Int(base.load(fromByteOffset: 8, as: UInt32.self))
                let old = CRC32C.checksum(base + MetadataLog.headerSize, count: bytes, seed: CRC32C.checksum(base, count: 64, skipping: 16))
                #expect(base.load(fromByteOffset: 16, as: UInt32.self) == old, "earlier daxlab would not replay this slot")
                base.storeBytes(of: 0, toByteOffset: 20, as: UInt32.self)
                base.storeBytes(of: MetadataLog.checksum(UnsafeRawPointer(base), recordBytes: bytes), toByteOffset: 16, as: UInt32.self)
            }
            try Data(image).write(to: URL(fileURLWithPath: path))
            #expect(try Fsck.run(path: path).pendingLogTransactions == 1)
            let fs = try FileSystem.mount(path: path)
            #expect(fs.mountReport.replayedTransactions == 1)
            try fs.unmount()
            #expect(try Fsck.run(path: path).isClean)
        }
    }

    @Test("an empty slot whose header still holds an earlier transaction's sizes and checksums (retired by zeroing the magic alone) is cleared by a mount")
    func staleHeaderCleared() throws {
        try withFileSystem(size: 4 << 20) { fs, path in
            let geometry = fs.geometry
            try fs.unmount()
            let header = MetadataLog.slotOffset(3, geometry)
            var image = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
            for index in 8..<MetadataLog.headerWords { image[header + index] = UInt8(index) }
            try Data(image).write(to: URL(fileURLWithPath: path))
            try FileSystem.mount(path: path).unmount()
            let after = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
            #expect(after[header..<(header + MetadataLog.headerWords)].allSatisfy { $0 == 0 })
        }
    }
}
