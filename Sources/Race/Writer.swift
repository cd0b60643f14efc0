import DMA
import DaxFS

#if canImport(Glibc)
import Glibc
#endif

/// A CPU writer's own file and what it last wrote to each page (0: a hole, reads as zeros).
/// Its thread and the verifier share it under `lock`.
final class Writer: @unchecked Sendable {
    // `expected`, `sequence` and `buffer` are touched only with `lock` held.
    let index: Int
    let file: FileID
    let pages: Int
    let lock = Locked(0)
    var expected: [UInt64]
    var sequence: UInt64 = 0
    let buffer = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
    let check = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)

    init(index: Int, file: FileID, pages: Int) {
        self.index = index
        self.file = file
        self.pages = pages
        self.expected = [UInt64](repeating: 0, count: pages)
    }

    deinit {
        self.buffer.deallocate()
        self.check.deallocate()
    }
}

extension RaceHarness {
    /// Truncaters: cut a shared file to a random size and grow it back, or punch a random range,
    /// under the policy; time each cut.
    func truncateLoop(_ index: Int) {
        var generator = self.configuration.seed &+ 0xABCD &* UInt64(index + 1)
        func random(_ bound: Int) -> Int {
            generator = generator &* 6364136223846793005 &+ 1442695040888963407
            return Int((generator >> 33) % UInt64(max(bound, 1)))
        }
        let pages = self.configuration.filePages
        while !self.stop.load(ordering: .relaxed) {
            let file = self.sharedFiles[random(self.sharedFiles.count)]
            let start = MonotonicClock.now()
            do {
                if random(3) == 0 {
                    let first = random(pages)
                    try self.dax.punchHole(file, offset: first * 4096, length: (1 + random(8)) * 4096)
                } else {
                    try self.dax.truncate(file, size: random(pages) * 4096)
                }
                let took = MonotonicClock.now() - start
                _ = self.latencies.withLock { $0.record(took) }
            } catch where error.code == .busy {
                self.busy.wrappingIncrement(ordering: .relaxed)
            } catch {}
            self.truncates.wrappingIncrement(ordering: .relaxed)
            try? self.fs.truncate(file, size: pages * 4096)  // grow back: holes, for the devices
            usleep(UInt32(200 + random(600)))  // let data live a little between cuts
        }
    }

    /// Writers: write tagged blocks into their own file, and now and then cut it and grow it
    /// back, so blocks are allocated and freed all the time.
    func writeLoop(_ writer: Writer) {
        var generator = self.configuration.seed &+ 0x5151 &* UInt64(writer.index + 1)
        func random(_ bound: Int) -> Int {
            generator = generator &* 6364136223846793005 &+ 1442695040888963407
            return Int((generator >> 33) % UInt64(max(bound, 1)))
        }
        var round = 0
        while !self.stop.load(ordering: .relaxed) {
            round += 1
            writer.lock.withLock { _ in
                if round % 16 == 0 {
                    let keep = random(writer.pages)
                    if (try? self.dax.truncate(writer.file, size: keep * 4096)) != nil {
                        for page in keep..<writer.pages { writer.expected[page] = 0 }
                    }
                    try? self.fs.truncate(writer.file, size: writer.pages * 4096)
                    return
                }
                let page = random(writer.pages)
                writer.sequence += 1
                BlockTag(file: writer.file, page: page, writer: writer.index, kind: .writer, sequence: writer.sequence)
                    .fill(writer.buffer)
                do {
                    try self.fs.write(
                        writer.file, offset: page * 4096, bytes: UnsafeRawBufferPointer(start: writer.buffer, count: 4096))
                    writer.expected[page] = writer.sequence
                    let block = self.fs.currentBlock(writer.file, page: page)
                    if block != 0 { self.oracle.take(block, file: writer.file, page: page) }
                } catch {}
            }
            self.writerWrites.wrappingIncrement(ordering: .relaxed)
        }
    }

    /// The verifier: every 20 ms, every writer's file against what it last wrote.
    func verifyLoop() {
        while !self.stop.load(ordering: .relaxed) {
            self.verifyWriters()
            usleep(20_000)
        }
    }

    /// Checks each writer's pages: a hole reads zeros, a written page holds exactly its last tag.
    func verifyWriters() {
        for writer in self.writers {
            writer.lock.withLock { _ in
                for page in 0..<writer.pages {
                    guard let bytes = try? self.fs.read(writer.file, offset: page * 4096, count: 4096),
                        bytes.count == 4096
                    else { continue }
                    bytes.withUnsafeBytes { writer.check.copyMemory(from: $0.baseAddress!, byteCount: 4096) }
                    let expected = writer.expected[page]
                    let good: Bool
                    if expected == 0 {
                        good = bytes.allSatisfy { $0 == 0 }
                    } else if let tag = BlockTag.read(writer.check) {
                        good = tag.kind == .writer && tag.file == writer.file && tag.page == page
                            && tag.sequence == expected
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

    /// After the run: each page of a shared file is a hole or holds device tags naming that very
    /// file and page (from one device, or interleaved from several that wrote it at once).
    func verifySharedFiles() {
        let check = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { check.deallocate() }
        for file in self.sharedFiles {
            guard let size = try? self.fs.stat(file).size else { continue }
            for page in 0..<(size / 4096) {
                guard let bytes = try? self.fs.read(file, offset: page * 4096, count: 4096), bytes.count == 4096
                else { continue }
                if bytes.allSatisfy({ $0 == 0 }) { continue }
                bytes.withUnsafeBytes { check.copyMemory(from: $0.baseAddress!, byteCount: 4096) }
                // Devices that pinned the same page may have written it at once: any mix of whole
                // device tags naming this very file and page is what its file last wrote.
                if let tags = BlockTag.readEach(check),
                    tags.allSatisfy({ $0.kind == .device && $0.file == file && $0.page == page })
                {
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
        for offset in stride(from: 0, to: 4096, by: 512) {
            let copy = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 16)
            defer { copy.deallocate() }
            for index in stride(from: 0, to: 4096, by: BlockTag.size) {
                copy.advanced(by: index).copyMemory(from: block + offset, byteCount: BlockTag.size)
            }
            tags.append(BlockTag.read(copy).map { "\(offset): \($0)" } ?? "\(offset): -")
        }
        let line = "corrupted: \(what); \(zeros) zero bytes; " + tags.joined(separator: " | ") + "\n"
        _ = line.withCString { write(STDERR_FILENO, $0, strlen($0)) }
    }

    /// Blocks lost after everything stopped: allocated on the media but used by no file, free on
    /// the media but never returned to the allocator, or still held in lost+found.
    func countLeaks() -> Int {
        let check = self.fs.checkQuiesced()
        // Blocks no file or block map uses, less those the allocator can hand out: allocated but
        // unreferenced on the media, or freed on the media but never returned (a deferred block
        // whose release was lost). Plus whatever is still in lost+found with no pin left.
        return max(0, check.freeDataBlocks - self.fs.allocatorFreeBlocks) + check.lostFoundBlocks
    }
}
