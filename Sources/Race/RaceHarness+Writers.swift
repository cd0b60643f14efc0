import Atomics
import DaxFS
import DaxlabSupport
import Pmem

/// A CPU writer's own file and what it last wrote to each page (0: a hole, reads as zeros).
/// Its thread and the verifier share it under `lock`.
final class Writer: @unchecked Sendable {
    // `expected`, `sequence` and `buffer` are touched only with `lock` held.
    let index: Int
    let file: FileID
    let lock = Locked(0, rank: .raceWriter)
    var expected: [UInt64]
    var sequence: UInt64 = 0
    let buffer = UnsafeMutableRawPointer.allocate(byteCount: pageSize, alignment: pageSize)
    let check = UnsafeMutableRawPointer.allocate(byteCount: pageSize, alignment: pageSize)
    /// Writes done: progress, for the watchdog.
    let progress = ManagedAtomic<Int>(0)

    init(index: Int, file: FileID, pages: Int) {
        self.index = index
        self.file = file
        self.expected = [UInt64](repeating: 0, count: pages)
    }

    deinit {
        self.buffer.deallocate()
        self.check.deallocate()
    }

    var pages: Int { self.expected.count }

    /// Writes a fresh tag into `page` through the file system (the caller holds `lock`), and
    /// records it as what the page must hold.
    func writeTag(page: Int, fs: FileSystem) throws(FSError) {
        self.sequence += 1
        BlockTag(file: self.file, page: page, writer: self.index, kind: .writer, stamp: self.sequence).fill(self.buffer)
        try fs.write(self.file, offset: page * pageSize, bytes: UnsafeRawBufferPointer(start: self.buffer, count: pageSize))
        if page >= self.expected.count { self.expected += [UInt64](repeating: 0, count: page + 1 - self.expected.count) }
        self.expected[page] = self.sequence
    }
}

/// The writers (`daxlab-writer-N`): they write tagged blocks into their own files, and now and
/// then cut them and grow them back, so blocks are allocated and freed all the time. The
/// allocator tells the oracle of each block a writer takes, before the writer writes it.
extension RaceHarness {
    func writeLoop(_ writer: Writer) {
        var random = SplitMix64(seed: self.configuration.seed, stream: 0x5752_0000 + UInt64(writer.index))
        var round = 0
        while !self.stop.load(ordering: .relaxed) {
            round += 1
            writer.lock.withLock { _ in
                if round % 16 == 0 {
                    let keep = random.next(below: writer.pages)
                    if (try? self.fs.truncate(writer.file, size: keep * pageSize, policy: self.configuration.policy)) != nil {
                        for page in keep..<writer.pages { writer.expected[page] = 0 }
                    }
                    try? self.fs.truncate(writer.file, size: writer.pages * pageSize)
                    return
                }
                try? writer.writeTag(page: random.next(below: writer.pages), fs: self.fs)
            }
            self.writerWrites.wrappingIncrement(ordering: .relaxed)
            writer.progress.wrappingIncrement(ordering: .relaxed)
        }
    }
}
