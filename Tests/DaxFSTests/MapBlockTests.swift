@_spi(Oracle) @testable import DaxFS
import DaxlabSupport
import Foundation
import Testing
import TestSupport

/// Block-map blocks leave a file with their last pointer, and the operations that cannot finish
/// change nothing.
@Suite("Block-map blocks and all-or-nothing range calls", .serialized, .timeLimit(.minutes(3)))
struct MapBlockTests {
    /// Unmounts `fs` and expects a clean fsck of `path`.
    private func expectClean(_ fs: FileSystem, _ path: String, _ label: String) throws {
        try fs.unmount()
        let report = try Fsck.run(path: path)
        #expect(report.isClean, "\(label): \(report.result.problems.prefix(3))")
    }

    @Test("a collapse frees the indirect block it empties; the unlink after it leaks nothing")
    func collapseFreesIndirect() throws {
        try withFileSystem(size: 16 << 20) { fs, path in
            let free = fs.usage.freeBlocks
            let id = try fs.create("f")
            let data = randomBytes(count: 20 * 4096, seed: 1)
            try fs.write(id, offset: 0, bytes: data)
            #expect(fs.usage.freeBlocks == free - 21, "20 pages and the indirect block")
            try fs.collapseRange(id, offset: 0, length: 10 * 4096)
            #expect(fs.usage.freeBlocks == free - 10, "10 direct pages: the indirect block went with its last pointer")
            #expect(try fs.read(id, offset: 0, count: 10 * 4096) == Array(data[(10 * 4096)...]))
            try fs.unlink("f")
            #expect(fs.usage.freeBlocks == free)
            try self.expectClean(fs, path, "after unlink")
        }
    }

    @Test("a collapse frees the double-indirect leaf it empties")
    func collapseFreesLeaf() throws {
        try withFileSystem(size: 64 << 20) { fs, path in
            let free = fs.usage.freeBlocks
            let id = try fs.create("f")
            try fs.write(id, offset: 0, bytes: randomBytes(count: 2101 * 4096, seed: 2))
            #expect(fs.usage.freeBlocks == free - 2101 - 6, "indirect, top, four leaves")
            try fs.collapseRange(id, offset: 0, length: 50 * 4096)
            #expect(fs.usage.freeBlocks == free - 2051 - 5, "the last leaf (pages 2060 on) is gone")
            try fs.unlink("f")
            #expect(fs.usage.freeBlocks == free)
            try self.expectClean(fs, path, "after unlink")
        }
    }

    @Test("an insert frees the indirect block its hole empties; a punch frees the map blocks it empties")
    func insertAndPunchFreeMaps() throws {
        try withFileSystem(size: 64 << 20) { fs, path in
            let free = fs.usage.freeBlocks
            let id = try fs.create("f")
            let data = randomBytes(count: 21 * 4096, seed: 3)
            try fs.write(id, offset: 0, bytes: data)
            // Pages 12-20 move to 1036-1044: the indirect block maps nothing any more.
            try fs.insertRange(id, offset: 12 * 4096, length: 1024 * 4096)
            #expect(fs.usage.freeBlocks == free - 21 - 2, "the top and one leaf; no indirect block")
            #expect(try fs.read(id, offset: 1036 * 4096, count: 9 * 4096) == Array(data[(12 * 4096)...]))
            try fs.punchHole(id, offset: 1036 * 4096, length: 9 * 4096)
            #expect(fs.usage.freeBlocks == free - 12, "the punch emptied the leaf, and so the top")
            try fs.truncate(id, size: 5 * 4096)
            try self.expectClean(fs, path, "after the punch")
        }
    }

    @Test("random collapses, inserts, punches, truncates and writes never leave a map block that maps nothing (many seeds)")
    func randomCampaign() throws {
        for seed in UInt64(1)...8 {
            try withFileSystem(size: 32 << 20) { fs, path in
                var random = SplitMix64(seed: seed)
                let free = fs.usage.freeBlocks
                let id = try fs.create("f")
                var model = randomBytes(count: (1 + random.next(below: 1300)) * 4096, seed: seed)
                try fs.write(id, offset: 0, bytes: model)
                for step in 0..<20 {
                    let pages = model.count / 4096
                    let first = random.next(below: max(1, pages))
                    switch random.next(below: 5) {
                    case 0 where pages >= 2:
                        let length = 1 + random.next(below: min(600, pages - 1 - min(first, pages - 2)))
                        let at = min(first, pages - 1 - length)
                        try fs.collapseRange(id, offset: at * 4096, length: length * 4096)
                        model.removeSubrange((at * 4096)..<((at + length) * 4096))
                    case 1 where pages >= 1 && pages < 900:
                        let length = 1 + random.next(below: 1100)
                        try fs.insertRange(id, offset: first * 4096, length: length * 4096)
                        model.insert(contentsOf: [UInt8](repeating: 0, count: length * 4096), at: first * 4096)
                    case 2:
                        let length = 1 + random.next(below: 1500)
                        try fs.punchHole(id, offset: first * 4096, length: length * 4096)
                        let end = min(model.count, (first + length) * 4096)
                        if end > first * 4096 { model.replaceSubrange((first * 4096)..<end, with: repeatElement(0, count: end - first * 4096)) }
                    case 3:
                        let size = random.next(below: pages + 1) * 4096
                        try fs.truncate(id, size: size)
                        model = Array(model[..<size])
                    default:
                        let bytes = randomBytes(count: (1 + random.next(below: 40)) * 4096, seed: seed &+ UInt64(step))
                        let at = random.next(below: 1400) * 4096
                        try fs.write(id, offset: at, bytes: bytes)
                        if model.count < at { model += [UInt8](repeating: 0, count: at - model.count) }
                        let end = at + bytes.count
                        if model.count < end { model += [UInt8](repeating: 0, count: end - model.count) }
                        model.replaceSubrange(at..<end, with: bytes)
                    }
                    let problems = fs.checkQuiesced().problems
                    #expect(problems.isEmpty, "seed \(seed), step \(step): \(problems.prefix(2))")
                    if !problems.isEmpty { break }
                }
                #expect(try fs.read(id, offset: 0, count: model.count) == model, "seed \(seed)")
                try fs.unlink("f")
                #expect(fs.usage.freeBlocks == free, "seed \(seed): every block back after the unlink")
                try self.expectClean(fs, path, "seed \(seed)")
            }
        }
    }

    @Test("a file with reserved blocks keeps the map block its punch emptied; the next mount frees it, resealing the record")
    func reservedFileKeepsEmptyMap() throws {
        try withFileSystem(size: 16 << 20) { fs, path in
            let free = fs.usage.freeBlocks
            let id = try fs.create("r")
            try fs.truncate(id, size: 64 * 4096)
            _ = try fs.blockForFault(id, page: 12, allocate: true)  // makes the indirect block, takes the reserve
            #expect(fs.usage.reservedBlocks == InodeRecord.maximumReservation)
            try fs.punchHole(id, offset: 12 * 4096, length: 4096)
            #expect(fs.reader.mapSlot(of: fs.record(id.inode), id.inode, page: 12) != nil, "the empty map block stays")
            try self.expectClean(fs, path, "with the reserve")
            let again = try FileSystem.mount(path: path)
            #expect(again.usage.freeBlocks == free, "mount freed the reserve and the empty map block")
            #expect(again.reader.mapSlot(of: again.record(id.inode), id.inode, page: 12) == nil)
            try self.expectClean(again, path, "after the mount freed them")
        }
    }

    @Test("fsck reports a map block that maps nothing, and repair frees it")
    func emptyMapIsReported() throws {
        try withTemporaryPath("empty-map") { path in
            _ = try FileSystem.format(path: path, size: 4 << 20)
            let fs = try FileSystem.mount(path: path)
            let id = try fs.create("f")
            try fs.write(id, offset: 12 * 4096, bytes: [1, 2, 3])
            let geometry = fs.geometry
            try fs.unmount()
            // Damage: the one pointer of the indirect block cleared, and the record says so
            // (blocks 0, checksum resealed), as a collapse that kept its map block left it.
            var bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
            let inode = geometry.inodeTableOffset + 2 * 512
            let indirect = bytes[(inode + 88)..<(inode + 92)].reversed().reduce(0) { $0 << 8 | Int($1) }
            let data = bytes[(indirect * 4096)..<(indirect * 4096 + 4)].reversed().reduce(0) { $0 << 8 | Int($1) }
            for index in 0..<8 { bytes[indirect * 4096 + index] = 0 }
            bytes.withUnsafeMutableBytes { raw in
                let record = InodeRecord(raw.baseAddress! + inode)
                record.blocks = 0
                record.size = 0
                record.sealChecksum()
            }
            // The data block is leaked too; free its bit so only the map block is at issue.
            bytes[geometry.bitmapOffset + data / 8] &= ~UInt8(1 << (data % 8))
            try Data(bytes).write(to: URL(fileURLWithPath: path))

            let report = try Fsck.run(path: path)
            #expect(report.result.problems.contains { $0.message.contains("map nothing: block \(indirect)") },
                    "\(report.result.problems)")
            #expect(throws: FSError.self, "mount refuses it") { try FileSystem.mount(path: path) }
            let repaired = try Fsck.run(path: path, repair: true)
            #expect(repaired.isClean, "\(repaired.result.problems)")
            #expect(repaired.result.salvagedFiles.isEmpty, "nothing was lost: the file keeps its name")
            #expect(try Fsck.run(path: path).isClean)
            let after = try FileSystem.mount(path: path)
            #expect(try after.lookup("f").inode == 2)
            #expect(after.usage.freeBlocks == after.usage.dataBlocks, "the map block is free again")
            try after.unmount()
        }
    }

    @Test("a zero-range that runs out of space changes nothing")
    func zeroRangeNoSpace() throws {
        try withFileSystem(size: 16 << 20) { fs, path in
            let id = try fs.create("f")
            let data = randomBytes(count: 100_000, seed: 4)
            try fs.write(id, offset: 0, bytes: data)
            let blocks = try fs.stat(id).blocks
            let free = fs.usage.freeBlocks
            #expect {
                try fs.zeroRange(id, offset: 50_000, length: 1 << 30)
            } throws: { ($0 as? FSError)?.code == .noSpace }
            #expect(try fs.stat(id).size == 100_000)
            #expect(try fs.stat(id).blocks == blocks)
            #expect(fs.usage.freeBlocks == free)
            #expect(try fs.read(id, offset: 0, count: 100_000) == data)
            // One that fits still works, growing the file.
            try fs.zeroRange(id, offset: 50_000, length: 1 << 20)
            #expect(try fs.stat(id).size == 50_000 + (1 << 20))
            #expect(try fs.read(id, offset: 0, count: 50_000) == Array(data[..<50_000]))
            try self.expectClean(fs, path, "after zero-range")
        }
    }

    @Test("an insert that needs a map block on a full image changes nothing")
    func insertNoSpace() throws {
        try withFileSystem(size: 4 << 20) { fs, path in
            let id = try fs.create("f")
            let data = randomBytes(count: 12 * 4096, seed: 5)
            try fs.write(id, offset: 0, bytes: data)  // direct pages only
            let filler = try fs.create("filler")
            var offset = 0
            while fs.usage.freeBlocks > 0 {
                try fs.write(filler, offset: offset, bytes: [UInt8](repeating: 1, count: 4096))
                offset += 4096
            }
            #expect {
                try fs.insertRange(id, offset: 0, length: 4096)  // page 11 moves to 12: a new indirect block
            } throws: { ($0 as? FSError)?.code == .noSpace }
            #expect(try fs.stat(id).size == data.count)
            #expect(try fs.read(id, offset: 0, count: data.count) == data)
            try self.expectClean(fs, path, "after the refused insert")
        }
    }

    @Test("fallocate with keepSize allocates the holes inside the file and keeps its size")
    func allocateKeepSize() throws {
        try withFileSystem(size: 16 << 20) { fs, path in
            let id = try fs.create("f")
            try fs.write(id, offset: 0, bytes: [9])
            try fs.truncate(id, size: 5 * 4096)
            #expect(try fs.stat(id).blocks == 1)
            let allocated = try fs.fallocate(id, offset: 0, length: 1 << 20, keepSize: true)
            #expect(allocated == 5 * 4096)
            #expect(try fs.stat(id).size == 5 * 4096)
            #expect(try fs.stat(id).blocks == 5)
            #expect(try fs.read(id, offset: 0, count: 5 * 4096) == [9] + [UInt8](repeating: 0, count: 5 * 4096 - 1))
            #expect(try fs.fallocate(id, offset: 6 * 4096, length: 4096, keepSize: true) == 0, "wholly past the end")
            try self.expectClean(fs, path, "after keep-size")
        }
    }

    @Test("a collapse too large for one transaction says what it would free and move, and changes nothing")
    func shiftLimitMessage() throws {
        try withFileSystem(size: 64 << 20) { fs, _ in
            let id = try fs.create("f")
            let data = randomBytes(count: 1200 * 4096, seed: 6)
            try fs.write(id, offset: 0, bytes: data)
            #expect {
                try fs.collapseRange(id, offset: 4096, length: 1 << 22)
            } throws: { error in
                let message = (error as? FSError)?.message ?? ""
                return (error as? FSError)?.code == .notSupported
                    && message.contains("freeing 1024 pages and moving 175 pages")
            }
            #expect(try fs.read(id, offset: 0, count: data.count) == data)
            // A collapse of the same tail with a short range fits.
            try fs.collapseRange(id, offset: 4096, length: 4096)
            #expect(try fs.stat(id).size == data.count - 4096)
        }
    }
}

/// A FileID is the caller's to make (its initializer is public): any number it holds is an error,
/// never a trap.
@Suite("FileIDs out of range")
struct FileIDRangeTests {
    @Test("every call with a FileID that names no file throws notFound")
    func outOfRange() throws {
        try withFileSystem(size: 4 << 20) { fs, _ in
            for inode in [-1, 0, 1, 1 << 20, Int.max] {
                let id = FileID(inode: inode, generation: 0)
                let calls: [(String, () throws -> Void)] = [
                    ("read", { _ = try fs.read(id, offset: 0, count: 1) }),
                    ("write", { try fs.write(id, offset: 0, bytes: [1]) }),
                    ("truncate", { try fs.truncate(id, size: 0) }),
                    ("punch", { try fs.punchHole(id, offset: 0, length: 4096) }),
                    ("zero-range", { try fs.zeroRange(id, offset: 0, length: 4096) }),
                    ("fallocate", { try fs.fallocate(id, offset: 0, length: 4096) }),
                    ("collapse", { try fs.collapseRange(id, offset: 0, length: 4096) }),
                    ("insert", { try fs.insertRange(id, offset: 0, length: 4096) }),
                    ("stat", { _ = try fs.stat(id) }),
                    ("publish", { try fs.publish(id, as: "x") }),
                    ("discard", { try fs.discardUnnamed(id) }),
                ]
                for (name, call) in calls {
                    #expect(throws: FSError.self, "\(name) of inode \(inode)") { try call() }
                }
            }
        }
    }
}
