@testable import DaxFS
import DaxlabSupport
import Foundation
import Testing
import TestSupport

/// Block-map entries carry a check of their inode, position and block: a flipped bit is
/// corrected, a pointer copied to another file or page is known bad, and a block two sound
/// pointers name is copied, never handed from one file to the other.
@Suite("Checked block-map entries", .serialized, .timeLimit(.minutes(3)))
struct MapEntryTests {
    /// An image with `huge` (direct, indirect and two double-indirect leaves), `ins` and `small`,
    /// unmounted; the files' contents, and the geometry.
    private struct Image {
        var bytes: [UInt8]
        var geometry: Geometry
        var contents: [FileName: [UInt8]]
        var inodes: [FileName: Int]

        func u32(_ offset: Int) -> UInt32 {
            bytes[offset..<(offset + 4)].reversed().reduce(0) { $0 << 8 | UInt32($1) }
        }
        func inodeOffset(_ name: FileName) -> Int { self.geometry.inodeOffset(self.inodes[name]!) }
        /// The map blocks of `huge`: indirect, double-indirect, and its two leaves.
        var maps: [Int] {
            let inode = self.inodeOffset("huge")
            let top = Int(self.u32(inode + 92))
            return [Int(self.u32(inode + 88)), top, Int(self.u32(top * 4096)), Int(self.u32(top * 4096 + 8))]
        }
    }

    private static let image = Result { () throws -> Image in
        try withTemporaryPath("entries") { path in
            _ = try FileSystem.format(path: path, size: 8 << 20)
            let fs = try FileSystem.mount(path: path)
            var contents: [FileName: [UInt8]] = [:]
            var inodes: [FileName: Int] = [:]
            let huge = try fs.create("huge")
            for page in [0, 5, 12, 40, 523, 524, 700, 1036, 1100] {
                try fs.write(huge, offset: page * 4096, bytes: randomBytes(count: 4096, seed: UInt64(page)))
            }
            let ins = try fs.create("ins")
            try fs.write(ins, offset: 0, bytes: randomBytes(count: 20 * 4096, seed: 77))
            try fs.write(try fs.create("small"), offset: 0, bytes: Array("hello".utf8))
            for name in ["huge", "ins", "small"] as [FileName] {
                let id = try fs.lookup(name)
                contents[name] = try fs.read(id, offset: 0, count: try fs.stat(id).size)
                inodes[name] = id.inode
            }
            let geometry = fs.geometry
            try fs.unmount()
            return Image(
                bytes: try [UInt8](Data(contentsOf: URL(fileURLWithPath: path))), geometry: geometry, contents: contents,
                inodes: inodes)
        }
    }

    /// Writes `bytes` to a temporary image and runs `body` on its path.
    private func with(_ bytes: [UInt8], _ body: (String) throws -> Void) throws {
        try withTemporaryPath("entry-damage") { path in
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            try body(path)
        }
    }

    private func contents(_ path: String) throws -> [FileName: [UInt8]] {
        let fs = try FileSystem.mount(path: path, readOnly: true)
        defer { try? fs.unmount() }
        var contents: [FileName: [UInt8]] = [:]
        for entry in fs.list() {
            let id = try fs.lookup(entry.name)
            contents[entry.name] = try fs.read(id, offset: 0, count: try fs.stat(id).size)
        }
        return contents
    }

    @Test("an entry is its block and a check of inode, position and block; a hole is zero")
    func encoding() {
        let entry = MapEntry.encode(1234, inode: 7, position: 40)
        #expect(UInt32(truncatingIfNeeded: entry) == 1234)
        #expect(MapEntry.decode(entry, inode: 7, position: 40) == 1234)
        #expect(MapEntry.decode(entry, inode: 8, position: 40) == nil, "another file's entry")
        #expect(MapEntry.decode(entry, inode: 7, position: 41) == nil, "another page's entry")
        #expect(MapEntry.decode(entry, inode: 7, position: MapEntry.leafTag | 40) == nil, "a leaf pointer is not a page")
        #expect(MapEntry.encode(0, inode: 7, position: 40) == 0)
        #expect(MapEntry.decode(0, inode: 7, position: 40) == 0)
        for bit in 0..<64 {
            let flipped = entry ^ (1 << UInt64(bit))
            #expect(MapEntry.decode(flipped, inode: 7, position: 40) == nil, "bit \(bit) flipped passes its check")
            #expect(MapEntry.correctOneBit(flipped, inode: 7, position: 40) == entry, "bit \(bit)")
            #expect(MapEntry.correctOneBit(1 << UInt64(bit), inode: 7, position: 40) == 0, "a hole with bit \(bit) set")
        }
    }

    @Test("one flipped bit anywhere in a map block (entries used or not): mount refuses, fsck --repair corrects it, every file reads as before (many seeds)")
    func oneBitFlips() throws {
        let image = try Self.image.get()
        let maps = image.maps
        #expect(Set(maps).count == 4 && !maps.contains(0))
        for seed in UInt64(1)...48 {
            var random = SplitMix64(seed: seed)
            let map = maps[random.next(below: maps.count)]
            let byte = random.next(below: 4096)
            let bit = random.next(below: 8)
            var bytes = image.bytes
            bytes[map * 4096 + byte] ^= UInt8(1 << bit)
            let label = "seed \(seed): block \(map) byte \(byte) bit \(bit)"
            try self.with(bytes) { path in
                #expect(throws: FSError.self, "\(label): mount refuses") { try FileSystem.mount(path: path) }
                let report = try Fsck.run(path: path, repair: true)
                #expect(report.result.problems.contains { $0.action == "corrected that bit" }, "\(label): \(report.result.problems)")
                #expect(report.result.salvagedFiles.isEmpty, "\(label)")
                #expect(try Fsck.run(path: path).isClean, "\(label)")
                let after = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
                #expect(after[(map * 4096)..<((map + 1) * 4096)] == image.bytes[(map * 4096)..<((map + 1) * 4096)], "\(label)")
                #expect(try self.contents(path) == image.contents, "\(label)")
            }
        }
    }

    @Test("a pointer copied into another file's map fails its check: the page reads zeros, never the other file's data")
    func copiedPointerIsBad() throws {
        let image = try Self.image.get()
        let insBlock = Int(image.u32(image.inodeOffset("ins")  + 40))
        var bytes = image.bytes
        // huge's entry for page 40 (index 28 of its indirect block) made exactly ins's entry for
        // its own page 40, were it there: a valid entry, of the wrong file.
        let entry = image.maps[0] * 4096 + 28 * 8
        let forged = MapEntry.encode(UInt32(insBlock), inode: image.inodes["ins"]!, position: 40)
        withUnsafeBytes(of: forged.littleEndian) { for (index, byte) in $0.enumerated() { bytes[entry + index] = byte } }
        try self.with(bytes) { path in
            let report = try Fsck.run(path: path)
            #expect(report.result.problems.contains { $0.message.contains("fails its check") }, "\(report.result.problems)")
            let repaired = try Fsck.run(path: path, repair: true)
            #expect(try Fsck.run(path: path).isClean, "\(repaired.result.problems)")
            let contents = try self.contents(path)
            #expect(contents["ins"] == image.contents["ins"], "the other file is untouched")
            let salvaged = try #require(contents["lost+found#\(image.inodes["huge"]!)" as FileName])
            #expect(salvaged[(40 * 4096)..<(41 * 4096)].allSatisfy { $0 == 0 }, "page 40 is a hole")
            #expect(Array(salvaged[(12 * 4096)..<(13 * 4096)]) == randomBytes(count: 4096, seed: 12))
        }
    }

    @Test("a block two sound pointers name: each file keeps its own copy, both reported")
    func sharedBlockIsCopied() throws {
        let image = try Self.image.get()
        let ins = image.inodes["ins"]!
        let huge = image.inodes["huge"]!
        let insBlock = image.u32(image.inodeOffset("ins") + 40 + 4 * 3)  // ins's page 3
        var bytes = image.bytes
        // huge's page 40 entry, validly re-pointed at ins's page-3 block (its own block leaks).
        let entry = image.maps[0] * 4096 + 28 * 8
        let shared = MapEntry.encode(insBlock, inode: huge, position: 40)
        withUnsafeBytes(of: shared.littleEndian) { for (index, byte) in $0.enumerated() { bytes[entry + index] = byte } }
        try self.with(bytes) { path in
            let report = try Fsck.run(path: path)
            // (Which claimant is named first follows the walk: both pointers are sound.)
            #expect(report.result.problems.contains {
                [($0.structure, $0.message)].contains { structure, message in
                    (structure == "inode \(huge)" && message.contains("block \(insBlock) is also used by inode \(ins)"))
                        || (structure == "inode \(ins)" && message.contains("block \(insBlock) is also used by inode \(huge)"))
                }
            }, "\(report.result.problems)")
            let repaired = try Fsck.run(path: path, repair: true)
            #expect(repaired.result.problems.contains { $0.action?.contains("its own copy") == true }, "\(repaired.result.problems)")
            #expect(try Fsck.run(path: path).isClean)
            let contents = try self.contents(path)
            #expect(contents["ins"] == image.contents["ins"])
            let hugeNow = try #require(contents["huge"])
            #expect(Array(hugeNow[(40 * 4096)..<(41 * 4096)]) == Array(image.contents["ins"]![(3 * 4096)..<(4 * 4096)]),
                    "huge keeps a copy of what its pointer named")
            // The copy is huge's own: writing it leaves ins alone.
            let fs = try FileSystem.mount(path: path)
            try fs.write(try fs.lookup("huge"), offset: 40 * 4096, bytes: [UInt8](repeating: 0xEE, count: 4096))
            #expect(try fs.read(try fs.lookup("ins"), offset: 0, count: 20 * 4096) == image.contents["ins"])
            try fs.unmount()
        }
    }

    @Test("two flipped bits in a record (a direct pointer; the size and a reserved block): never the file's data under its own name")
    func twoBitRecordDamage() throws {
        let image = try Self.image.get()
        let huge = image.inodeOffset("huge")
        for (label, flips) in [("direct pointer 0", [(40, 0), (40, 1)]), ("size and reservation", [(13, 1), (400, 0)])] {
            var bytes = image.bytes
            for (byte, bit) in flips { bytes[huge + byte] ^= UInt8(1 << bit) }
            try self.with(bytes) { path in
                let repaired = try Fsck.run(path: path, repair: true)
                #expect(try Fsck.run(path: path).isClean, "\(label): \(repaired.result.problems)")
                let contents = try self.contents(path)
                #expect(contents["huge"] == nil, "\(label): the damaged file is not left under its name")
                #expect(repaired.result.salvagedFiles == ["lost+found#\(image.inodes["huge"]!)"], "\(label)")
                let salvaged = try #require(contents["lost+found#\(image.inodes["huge"]!)" as FileName])
                #expect(salvaged.count <= 1101 * 4096, "\(label): the size is what the map reaches, not a flipped bit's")
                #expect(Array(salvaged[(1100 * 4096)..<(1101 * 4096)]) == randomBytes(count: 4096, seed: 1100), "\(label)")
                #expect(contents["ins"] == image.contents["ins"] && contents["small"] == image.contents["small"], "\(label)")
            }
        }
    }

    @Test("a damaged record whose indirect pointer names its own double-indirect block: the double-indirect tree is kept")
    func mapOfAnotherLevel() throws {
        let image = try Self.image.get()
        let huge = image.inodeOffset("huge")
        var bytes = image.bytes
        for index in 0..<4 { bytes[huge + 88 + index] = bytes[huge + 92 + index] }
        bytes[huge + 24] ^= 0x11  // and the mtime: no one flipped bit explains the record
        try self.with(bytes) { path in
            let repaired = try Fsck.run(path: path, repair: true)
            #expect(try Fsck.run(path: path).isClean, "\(repaired.result.problems)")
            let contents = try self.contents(path)
            let salvaged = try #require(
                contents["lost+found#\(image.inodes["huge"]!)" as FileName], "\(contents.keys) \(repaired.result.problems)")
            #expect(salvaged[(12 * 4096)..<(13 * 4096)].allSatisfy { $0 == 0 }, "the indirect pages are lost")
            for page in [0, 5, 524, 700, 1036, 1100] {
                #expect(Array(salvaged[(page * 4096)..<((page + 1) * 4096)]) == randomBytes(count: 4096, seed: UInt64(page)),
                        "page \(page) is kept")
            }
        }
    }

    @Test("a damaged record's pointer to a sound file's block: the sound file keeps it, whichever inode comes first")
    func soundRecordWins() throws {
        let image = try Self.image.get()
        // small is the last inode; huge (the first) gets a direct pointer to small's block, and
        // a record damaged past one bit, so its pointers cannot be trusted.
        let smallBlock = image.u32(image.inodeOffset("small") + 40)
        var bytes = image.bytes
        let huge = image.inodeOffset("huge")
        withUnsafeBytes(of: smallBlock.littleEndian) { for (index, byte) in $0.enumerated() { bytes[huge + 40 + 4 + index] = byte } }
        bytes[huge + 24] ^= 0x11  // two bits of the mtime: no single flip explains the checksum
        try self.with(bytes) { path in
            let repaired = try Fsck.run(path: path, repair: true)
            #expect(try Fsck.run(path: path).isClean, "\(repaired.result.problems)")
            let contents = try self.contents(path)
            #expect(contents["small"] == Array("hello".utf8), "small is intact and keeps its name")
            let salvaged = try #require(contents["lost+found#\(image.inodes["huge"]!)" as FileName])
            #expect(salvaged[4096..<8192].allSatisfy { $0 == 0 }, "the damaged record's page 1 is a hole")
            #expect(Array(salvaged[0..<4096]) == randomBytes(count: 4096, seed: 0))
        }
    }
}
