import DaxFS
import Foundation
import Testing
import TestSupport

/// What fsck --repair makes of damage: it fixes what it can prove and keeps data wherever it can.
@Suite("fsck --repair salvages", .serialized, .timeLimit(.minutes(2)))
struct RepairTests {
    /// An image with `small` (5 bytes), `big` (pages 0, 5, 12 and 40: direct and indirect) and an
    /// empty file; the damage is applied to the unmounted image.
    private func damaged(
        _ label: String, _ damage: (inout [UInt8], Geometry) throws -> Void,
        _ check: (String, Fsck.Report, [UInt8]) throws -> Void
    ) throws {
        try withTemporaryPath("repair") { path in
            _ = try FileSystem.format(path: path, size: 4 << 20)
            let fs = try FileSystem.mount(path: path)
            try fs.write(try fs.create("small"), offset: 0, bytes: Array("hello".utf8))
            let big = try fs.create("big")
            for page in [0, 5, 12, 40] {
                try fs.write(big, offset: page * 4096, bytes: randomBytes(count: 4096, seed: UInt64(page)))
            }
            try fs.create("empty")
            let geometry = fs.geometry
            try fs.unmount()
            var bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
            let before = bytes
            try damage(&bytes, geometry)
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            #expect(throws: FSError.self, "\(label): the damage is refused at mount") { try FileSystem.mount(path: path) }
            let report = try Fsck.run(path: path, repair: true)
            #expect(report.isClean, "\(label): \(report.result.problems)")
            try check(path, report, before)
        }
    }

    private func inode(_ geometry: Geometry, _ number: Int) -> Int { geometry.inodeTableOffset + number * 512 }

    private func content(_ path: String, _ name: FileName) throws -> [UInt8] {
        let fs = try FileSystem.mount(path: path, readOnly: true)
        defer { try? fs.unmount() }
        let id = try fs.lookup(name)
        return try fs.read(id, offset: 0, count: try fs.stat(id).size)
    }

    @Test("one flipped bit in an inode (its mtime) is corrected: the record comes back exactly")
    func singleBitFlip() throws {
        var record = 0..<0
        try self.damaged("one bit", { bytes, geometry in
            record = self.inode(geometry, 2)..<(self.inode(geometry, 2) + 512)
            bytes[record.lowerBound + 24 + 3] ^= 0x10
        }, { (path: String, report: Fsck.Report, before: [UInt8]) throws in
            #expect(report.result.problems.contains { $0.action == "corrected that bit" }, "\(report.result.problems)")
            let after = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
            #expect(after[record] == before[record], "the inode record is byte for byte what it was")
            #expect(try self.content(path, "small") == Array("hello".utf8))
        })
    }

    @Test("two flipped bits, even where every field still looks sane: the record cannot be trusted, so the file keeps its data under lost+found#N")
    func twoBitsAreNotTrusted() throws {
        try self.damaged("two bits", { bytes, geometry in
            bytes[self.inode(geometry, 2) + 25] ^= 0x05
        }, { (path: String, report: Fsck.Report, _: [UInt8]) throws in
            #expect(report.result.problems.contains { $0.action == "kept the readable blocks; the record cannot be trusted" },
                    "\(report.result.problems)")
            #expect(report.result.salvagedFiles == ["lost+found#2"])
            #expect(try self.content(path, "lost+found#2") == Array("hello".utf8))
        })
    }

    @Test("a damaged name: the file keeps its data under lost+found#N")
    func damagedName() throws {
        try self.damaged("name", { bytes, geometry in
            bytes[self.inode(geometry, 2) + 128 + 1] = UInt8(ascii: "/")  // "small" -> "s/all"
        }, { (path: String, report: Fsck.Report, _: [UInt8]) throws in
            #expect(report.result.salvagedFiles == ["lost+found#2"], "\(report.result.problems)")
            #expect(try self.content(path, "lost+found#2") == Array("hello".utf8))
        })
    }

    @Test("a bad block-map pointer: the readable blocks are kept under lost+found#N, the bad page reads zeros")
    func damagedMap() throws {
        try self.damaged("map", { bytes, geometry in
            let indirect = Int(bytes[self.inode(geometry, 3) + 88]) | Int(bytes[self.inode(geometry, 3) + 89]) << 8
                | Int(bytes[self.inode(geometry, 3) + 90]) << 16
            // Page 40's entry (index 28 of the indirect block) points past the image.
            let entry = indirect * 4096 + 28 * 8
            bytes[entry + 3] = 0x7F
        }, { (path: String, report: Fsck.Report, _: [UInt8]) throws in
            #expect(report.result.salvagedFiles == ["lost+found#3"], "\(report.result.problems)")
            let data = try self.content(path, "lost+found#3")
            #expect(Array(data[0..<4096]) == randomBytes(count: 4096, seed: 0))
            #expect(Array(data[(12 * 4096)..<(13 * 4096)]) == randomBytes(count: 4096, seed: 12))
            #expect(data[(40 * 4096)..<(41 * 4096)].allSatisfy { $0 == 0 }, "the page behind the bad pointer")
            #expect(try self.content(path, "small") == Array("hello".utf8))
        })
    }

    @Test("a damaged superblock is restored from the backup in the last block")
    func backupSuperblock() throws {
        try self.damaged("superblock", { bytes, _ in
            bytes[20] ^= 0x01  // the block count: the checksum fails
        }, { (path: String, report: Fsck.Report, _: [UInt8]) throws in
            #expect(report.result.problems.first?.action == "restored it from the backup", "\(report.result.problems)")
            #expect(try self.content(path, "small") == Array("hello".utf8))
            #expect(try self.content(path, "big").count == 41 * 4096)
        })
    }

    @Test("both superblocks damaged: the image cannot be read (an error, nothing written)")
    func bothSuperblocks() throws {
        try withTemporaryPath("repair-both") { path in
            _ = try FileSystem.format(path: path, size: 4 << 20)
            var bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
            bytes[20] ^= 1
            bytes[bytes.count - 4096 + 20] ^= 1
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            #expect(throws: FSError.self) { try Fsck.run(path: path, repair: true) }
            #expect(try [UInt8](Data(contentsOf: URL(fileURLWithPath: path))) == bytes)
        }
    }

    @Test("an invalid mount state word is rewritten")
    func stateWord() throws {
        try self.damaged("state", { bytes, _ in
            bytes[256] = 7
        }, { (path: String, report: Fsck.Report, _: [UInt8]) throws in
            #expect(report.result.problems.contains { $0.message == "invalid mount state word" })
            #expect(try self.content(path, "small") == Array("hello".utf8))
        })
    }

    @Test("the superblock's flags field must be zero")
    func superblockFlags() throws {
        try withTemporaryPath("flags") { path in
            _ = try FileSystem.format(path: path, size: 4 << 20)
            let mapping = try FileSystem.mount(path: path)
            try mapping.unmount()
            var bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
            bytes[36] = 1
            // A valid checksum over the bad flags: the flags alone must refuse it.
            let sum = crc32c(Array(bytes[0..<252]) + [0, 0, 0, 0])
            for index in 0..<4 { bytes[252 + index] = UInt8(truncatingIfNeeded: sum >> (8 * index)) }
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            do {
                _ = try FileSystem.mount(path: path)
                Issue.record("mounted with flags set")
            } catch let error as FSError { #expect(error.message.contains("unknown flags"), "\(error)") }
        }
    }

    @Test("an orphan a crash left (a write never published) is freed by the next mount")
    func orphanFreedAtMount() throws {
        try withTemporaryPath("orphan") { path in
            _ = try FileSystem.format(path: path, size: 4 << 20)
            let fs = try FileSystem.mount(path: path)
            try fs.write(try fs.create("kept"), offset: 0, bytes: [1, 2, 3])
            let free = fs.usage.freeBlocks
            let unnamed = try fs.createUnnamed()
            try fs.write(unnamed, offset: 0, bytes: randomBytes(count: 5 * 4096, seed: 1))
            // The crash: the image as it is now, still mounted.
            let crashed = path + ".crashed"
            defer { unlink(crashed) }
            try Data(contentsOf: URL(fileURLWithPath: path)).write(to: URL(fileURLWithPath: crashed))
            try fs.discardUnnamed(unnamed)
            try fs.unmount()
            let pending = try Fsck.run(path: crashed)
            #expect(pending.result.pendingOrphans == 1 && pending.result.pendingOperations == 0)
            #expect(pending.result.problems.contains { $0.structure == "intents" && $0.message.hasPrefix("1 orphan(s): file(s) left without a name") },
                    "\(pending.result.problems)")
            let recovered = try FileSystem.mount(path: crashed)
            #expect(recovered.mountReport.freedOrphans == 1)
            #expect(recovered.usage.freeBlocks == free)
            #expect(recovered.list().map(\.name) == ["kept"])
            try recovered.unmount()
            #expect(try Fsck.run(path: crashed).isClean)
        }
    }
}

/// CRC-32C of `bytes` (the superblock's checksum), for a test that forges one.
private func crc32c(_ bytes: [UInt8]) -> UInt32 {
    var crc: UInt32 = 0xFFFF_FFFF
    for byte in bytes {
        crc ^= UInt32(byte)
        for _ in 0..<8 { crc = crc & 1 != 0 ? (crc >> 1) ^ 0x82F6_3B78 : crc >> 1 }
    }
    return ~crc
}
