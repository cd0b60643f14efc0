import CShims
import DMA
import DaxFS
import DaxlabSupport
import Pmem

#if canImport(Glibc)
import Glibc
#endif

/// A file the kernel reads from into a window, for `mmap-check`: `pages` pages of a pattern
/// (`KernelSource.page(_:seed:)`), unnamed from the start, so nothing is left behind.
///
/// Buffered, a `pread` from it copies from the page cache with `copy_to_user`, which faults the
/// destination as the kernel's own access. O_DIRECT, the block layer's DMA goes straight into the
/// destination pages, which GUP (`FOLL_PIN`) must fault in and pin first: what a device's DMA
/// into a DAX mapping does.
final class KernelSource {
    let descriptor: Int32
    let pages: Int
    let seed: UInt8

    /// A buffered source in `directory` (any file system: the page cache copies).
    /// - Throws: `CommandFailure` naming the file and the errno.
    static func buffered(in directory: String, pages: Int, seed: UInt8) throws -> KernelSource {
        var random = SplitMix64(seed: MonotonicClock.now(), stream: UInt64(seed))
        let path = "\(directory)/.daxlab-mmap-check-\(getpid())-\(String(random.next(), radix: 36))"
        let descriptor = open(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else {
            throw CommandFailure("\(path): cannot create: \(String(cString: strerror(errno)))")
        }
        unlink(path)
        return try KernelSource(descriptor: descriptor, pages: pages, seed: seed)
    }

    /// An O_DIRECT source in `directory` (a disk file system: tmpfs and ramfs copy).
    /// - Throws: `FSError` `.notSupported` where O_DIRECT is refused or would copy (see
    ///   `DeviceKind.openDirectSource`); `CommandFailure` when the pattern cannot be written.
    static func direct(in directory: String, pages: Int, seed: UInt8) throws -> KernelSource {
        let descriptor = try DeviceKind.openDirectSource(in: directory, device: Int(seed))
        return try KernelSource(descriptor: descriptor, pages: pages, seed: seed)
    }

    /// Writes the pattern through `descriptor` (from an aligned buffer, as O_DIRECT needs).
    private init(descriptor: Int32, pages: Int, seed: UInt8) throws {
        self.descriptor = descriptor
        self.pages = pages
        self.seed = seed
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: pages * pageSize, alignment: pageSize)
        defer { buffer.deallocate() }
        for page in 0..<pages {
            let target = buffer.baseAddress! + page * pageSize
            Self.page(page, seed: seed).withUnsafeBytes {
                target.copyMemory(from: $0.baseAddress!, byteCount: pageSize)
            }
        }
        var written = 0
        while written < buffer.count {
            let step = pwrite(descriptor, buffer.baseAddress! + written, buffer.count - written, off_t(written))
            if step < 0, errno == EINTR { continue }
            guard step > 0 else {
                let error = step == 0 ? ENOSPC : errno
                // (Every stored property is set: deinit closes the descriptor.)
                throw CommandFailure("cannot write the source file of mmap-check: \(String(cString: strerror(error)))")
            }
            written += step
        }
    }

    deinit { close(self.descriptor) }

    /// `pread` of `pages` pages from page `from` into `address`.
    /// - Returns: the bytes read, or -errno.
    func read(into address: UnsafeMutableRawPointer, pages: Int, from: Int = 0) -> Int {
        while true {
            let count = pread(self.descriptor, address, pages * pageSize, off_t(from * pageSize))
            if count < 0, errno == EINTR { continue }
            return count < 0 ? -Int(errno) : count
        }
    }

    /// Page `page` of a source made with `seed`: every byte depends on the seed, the page and
    /// its offset, so a page that landed in the wrong place or a stale one is told apart.
    static func page(_ page: Int, seed: UInt8) -> [UInt8] {
        (0..<pageSize).map { UInt8(truncatingIfNeeded: Int(seed) &+ page &* 131 &+ $0 / 16) }
    }
}
