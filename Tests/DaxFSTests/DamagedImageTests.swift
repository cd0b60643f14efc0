import DaxFS
import DaxlabSupport
import Foundation
import Testing
import TestSupport

/// A generated corpus of damaged images: every metadata structure hit at least once, then
/// random byte flips. Mount must refuse damage with an error (never crash, never hang) and write
/// nothing when it refuses; fsck must report it.
@Suite("Damaged images", .serialized, .timeLimit(.minutes(3)))
struct DamagedImageTests {
    /// A small image with files that use direct, indirect and double-indirect maps.
    final class Corpus: @unchecked Sendable {
        let bytes: [UInt8]
        let geometry: Geometry
        /// The block numbers of a file's indirect, double-indirect and leaf map blocks.
        let indirect: Int
        let doubleIndirect: Int
        let leaf: Int
        let usedInodes: [Int]

        init() throws {
            let (bytes, geometry) = try withTemporaryPath("corpus") { path in
                _ = try FileSystem.format(path: path, size: 2 << 20)
                let fs = try FileSystem.mount(path: path)
                let big = try fs.create("big")
                for page in [0, 5, 12, 40, 1036, 1100] {
                    try fs.write(big, offset: page * 4096, bytes: randomBytes(count: 4096, seed: UInt64(page)))
                }
                try fs.write(try fs.create("small"), offset: 0, bytes: Array("hello".utf8))
                try fs.create("empty")
                let geometry = fs.geometry
                try fs.unmount()
                return (try [UInt8](Data(contentsOf: URL(fileURLWithPath: path))), geometry)
            }
            self.bytes = bytes
            self.geometry = geometry
            let bigInode = geometry.inodeTableOffset + 2 * 512
            func u32(_ offset: Int) -> Int {
                Int(bytes[offset]) | Int(bytes[offset + 1]) << 8 | Int(bytes[offset + 2]) << 16 | Int(bytes[offset + 3]) << 24
            }
            self.indirect = u32(bigInode + 88)
            self.doubleIndirect = u32(bigInode + 92)
            self.leaf = u32(self.doubleIndirect * 4096 + 8)  // leaf 1: pages 1036 ... 1547
            self.usedInodes = [0, 1, 2, 3, 4]
        }
    }

    static let corpus = Result { try Corpus() }

    enum Verdict: Equatable { case refused, mounted }

    /// Writes the corpus with `damage` applied, mounts it, and checks the invariants.
    @discardableResult
    func attempt(_ label: String, _ damage: (inout [UInt8]) -> Void, mustRefuse: Bool) throws -> Verdict {
        let corpus = try Self.corpus.get()
        return try withTemporaryPath("damaged") { path in
            var bytes = corpus.bytes
            damage(&bytes)
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            do {
                let fs = try FileSystem.mount(path: path)
                #expect(!mustRefuse, "\(label): damage went unnoticed")
                try fs.unmount()
                let fsck = try Fsck.run(path: path)
                #expect(fsck.isClean, "\(label): mounted, but fsck finds \(fsck.result.problems.prefix(2))")
                return .mounted
            } catch let error as FSError {
                #expect([.corrupt, .notAnImage].contains(error.code), "\(label): \(error)")
                #expect(!error.description.contains("\n"), "\(label): one line")
                let after = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
                #expect(after == bytes, "\(label): a refused mount wrote to the image")
                // fsck describes it (exit 1) or cannot read the image at all (exit 2).
                do {
                    let fsck = try Fsck.run(path: path)
                    #expect(!fsck.isClean, "\(label): fsck calls a refused image clean")
                } catch let error as FSError {
                    #expect([.corrupt, .notAnImage].contains(error.code), "\(label): fsck: \(error)")
                }
                return .refused
            }
        }
    }

    @Test("every byte of the superblock's checksummed part and state word")
    func superblock() throws {
        // Bytes 260-263 are the mount counter: informational, any value is valid.
        for offset in 0..<260 {
            try self.attempt("superblock byte \(offset)", { $0[offset] ^= 0x40 }, mustRefuse: true)
        }
    }

    @Test("every inode in use, a free inode, each field")
    func inodes() throws {
        let corpus = try Self.corpus.get()
        for inode in corpus.usedInodes + [9, corpus.geometry.inodeCount - 1] {
            for offset in [0, 1, 4, 8, 16, 24, 32, 36, 40, 60, 88, 92, 100, 128, 130, 300, 400, 511] {
                let at = corpus.geometry.inodeTableOffset + inode * 512 + offset
                try self.attempt("inode \(inode) byte \(offset)", { $0[at] ^= 0x01 }, mustRefuse: true)
            }
        }
    }

    @Test("bitmap bits: metadata, used data, free data, past the end")
    func bitmap() throws {
        let corpus = try Self.corpus.get()
        let g = corpus.geometry
        for block in [0, 1, g.inodeTableStart, g.dataStart - 1, corpus.indirect, corpus.leaf, g.dataStart + 500,
                      g.blockCount - 1, g.blockCount, g.blockCount + 100]
        {
            let at = g.bitmapOffset + block / 8
            try self.attempt("bitmap bit \(block)", { $0[at] ^= UInt8(1 << (block % 8)) }, mustRefuse: true)
        }
    }

    @Test("block maps: indirect, double-indirect and leaf entries, used and unused")
    func blockMaps() throws {
        let corpus = try Self.corpus.get()
        for (name, block) in [("indirect", corpus.indirect), ("double", corpus.doubleIndirect), ("leaf", corpus.leaf)] {
            for entry in [0, 1, 28, 64, 511] {
                for bit in [0, 5, 13, 31, 40, 63] {
                    let at = block * 4096 + entry * 8 + bit / 8
                    try self.attempt("\(name) entry \(entry) bit \(bit)", { $0[at] ^= UInt8(1 << (bit % 8)) },
                                     mustRefuse: true)
                }
            }
        }
    }

    @Test("an image cut short, or grown")
    func wrongSize() throws {
        let corpus = try Self.corpus.get()
        for length in [0, 100, 4096, 8192, corpus.bytes.count / 2, corpus.bytes.count - 4096] {
            try withTemporaryPath("short") { path in
                try Data(corpus.bytes[..<length]).write(to: URL(fileURLWithPath: path))
                do {
                    _ = try FileSystem.mount(path: path)
                    Issue.record("mounted an image cut to \(length) bytes")
                } catch let error as FSError {
                    #expect([.corrupt, .notAnImage, .pmem].contains(error.code), "\(length): \(error)")
                }
            }
        }
        try self.attempt("grown by a block", { $0 += [UInt8](repeating: 0, count: 4096) }, mustRefuse: true)
    }

    @Test("log slots: random damage never crashes, and a torn slot is ignored")
    func logArea() throws {
        let corpus = try Self.corpus.get()
        var generator = SplitMix64(seed: 17)
        for round in 0..<60 {
            let at = corpus.geometry.logOffset + Int(generator.next() % UInt64(corpus.geometry.inodeTableOffset - corpus.geometry.logOffset))
            try self.attempt("log byte \(at) round \(round)", { $0[at] = UInt8(truncatingIfNeeded: generator.next()) },
                             mustRefuse: false)
        }
        // A forged committed header (right magic, wrong checksum) is a torn commit: ignored.
        let header = corpus.geometry.logOffset
        let verdict = try self.attempt("forged log magic", { bytes in
            for (index, byte) in Array("DAXLOG01".utf8).enumerated() { bytes[header + index] = byte }
            bytes[header + 8] = 64
        }, mustRefuse: false)
        #expect(verdict == .mounted)
    }

    @Test("random byte flips across the metadata area")
    func randomFlips() throws {
        let corpus = try Self.corpus.get()
        var generator = SplitMix64(seed: UInt64(ProcessInfo.processInfo.environment["DAXLAB_FLIP_SEED"].flatMap(UInt64.init) ?? 5))
        var refused = 0
        for round in 0..<300 {
            let flips = 1 + Int(generator.next() % 4)
            let spots = (0..<flips).map { _ in
                (Int(generator.next() % UInt64(corpus.geometry.dataOffset)), UInt8(1 << (generator.next() % 8)))
            }
            let verdict = try self.attempt("random round \(round): \(spots)", { bytes in
                for (at, mask) in spots { bytes[at] ^= mask }
            }, mustRefuse: false)
            if verdict == .refused { refused += 1 }
        }
        #expect(refused > 0)
    }
}
