import Atomics
@_spi(Oracle) import DaxFS

#if canImport(Glibc)
import Glibc
import Pmem
#endif

/// The verifier (`daxlab-verify`): every 20 ms it reads every writer's file back through the
/// file system and checks each page; at the end of the run the shared files are checked too.
extension RaceHarness {
    func verifyLoop() {
        while !self.stop.load(ordering: .relaxed) {
            self.verifyWriters()
            self.verifierProgress.wrappingIncrement(ordering: .relaxed)
            usleep(20_000)
        }
    }

    /// Checks each writer's pages: a hole reads zeros, a written page holds exactly its last tag.
    func verifyWriters() {
        for writer in self.writers + [self.collisionWriter] {
            writer.lock.withLock { _ in
                for page in 0..<writer.pages {
                    guard let bytes = try? self.fs.read(writer.file, offset: page * pageSize, count: pageSize),
                        bytes.count == pageSize
                    else { continue }
                    bytes.withUnsafeBytes { writer.check.copyMemory(from: $0.baseAddress!, byteCount: pageSize) }
                    let expected = writer.expected[page]
                    let good: Bool
                    if expected == 0 {
                        good = bytes.allSatisfy { $0 == 0 }
                    } else if let tag = BlockTag.read(writer.check) {
                        good = tag.kind == .writer && tag.file == writer.file && tag.page == page && tag.stamp == expected
                    } else {
                        good = false
                    }
                    if !good {
                        self.oracle.recordCorruption(Oracle.Corruption(inode: writer.file.inode, page: page, expected: expected))
                        Self.explain("[\(self.configuration.policy)] writer \(writer.index) page \(page): expected #\(expected)", writer.check, bytes)
                    }
                }
            }
        }
    }

    /// After the run: each page of a shared file is a hole, zeros, or device data written under
    /// the block's current ownership (from one device, or interleaved from several that wrote it
    /// at once). A device tag from an earlier ownership of the block is stale data, even when it
    /// names this very file and page.
    func verifySharedFiles() {
        let check = UnsafeMutableRawPointer.allocate(byteCount: pageSize, alignment: pageSize)
        defer { check.deallocate() }
        for file in self.sharedFiles {
            guard let size = try? self.fs.stat(file).size else { continue }
            for page in 0..<(size / pageSize) {
                guard let bytes = try? self.fs.read(file, offset: page * pageSize, count: pageSize), bytes.count == pageSize
                else { continue }
                if bytes.allSatisfy({ $0 == 0 }) { continue }
                bytes.withUnsafeBytes { check.copyMemory(from: $0.baseAddress!, byteCount: pageSize) }
                let block = self.fs.currentBlock(file, page: page)
                if let tags = BlockTag.readEach(check), self.oracle.isOwnDeviceData(tags, file: file, page: page, block: block) {
                    continue
                }
                self.oracle.recordCorruption(Oracle.Corruption(inode: file.inode, page: page, expected: UInt64.max))
                Self.explain("[\(self.configuration.policy)] shared \(file) page \(page) at the end", check, bytes)
            }
        }
    }

    /// With DAXLAB_RACE_VERBOSE set, says on stderr what a corrupted page held.
    static func explain(_ what: String, _ block: UnsafeRawPointer, _ bytes: [UInt8]) {
        guard getenv("DAXLAB_RACE_VERBOSE") != nil else { return }
        let zeros = bytes.filter { $0 == 0 }.count
        var tags: [String] = []
        let copy = UnsafeMutableRawPointer.allocate(byteCount: pageSize, alignment: 16)
        defer { copy.deallocate() }
        for offset in stride(from: 0, to: pageSize, by: 512) {
            for index in stride(from: 0, to: pageSize, by: BlockTag.size) {
                copy.advanced(by: index).copyMemory(from: block + offset, byteCount: BlockTag.size)
            }
            tags.append(BlockTag.read(copy).map { "\(offset): \($0)" } ?? "\(offset): -")
        }
        let line = "corrupted: \(what); \(zeros) zero bytes; " + tags.joined(separator: " | ") + "\n"
        _ = line.withCString { write(STDERR_FILENO, $0, strlen($0)) }
    }
}
