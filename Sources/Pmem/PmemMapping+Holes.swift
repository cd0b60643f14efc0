#if canImport(Glibc)
import Glibc
#endif
import CShims

/// The holes of a file image mapped read-only.
///
/// A private mapping of a file reads a hole through the file system, and tmpfs gives the fault a
/// page of the file for it: charged to the file system, and a SIGBUS when it is full. A read-only
/// mapping therefore has anonymous zero pages over each hole instead: they read as zeros, as the
/// hole does, and take their pages (if stored into) from memory, never from the file system.
/// This holds while no writer fills a hole; writers take the image's lock exclusively, so a
/// caller that locks it shared after mapping calls `remapPrivateCopy()` under the lock.
extension PmemMapping {
    /// Maps a read-only file image afresh: the file again over the whole private mapping, then
    /// anonymous zero pages over the holes the file has now. For a caller that took the file's
    /// lock after mapping it, before it reads anything: a range that was a hole at mapping and
    /// that a writer has filled since reads the writer's data. What was stored into the private
    /// copy is dropped. Nothing is done for a read-write mapping or a device.
    /// - Throws: `.mapFailed` when a range cannot be mapped (the mapping is then unusable), or
    ///   `.ioFailed` when the file's holes cannot be found.
    public func remapPrivateCopy() throws(PmemError) {
        guard self.isReadOnly, self.medium != .deviceDAX else { return }
        let mapped = mmap(
            self.base, self.length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, self.descriptor, 0)
        guard let mapped, mapped != MAP_FAILED, mapped == self.base else {
            let error = errno
            throw PmemError(
                .mapFailed, path: self.path, detail: "map \(self.length) bytes read-only again: \(Self.reason(error))",
                errno: error)
        }
        try Self.coverHoles(base: self.base, length: self.length, descriptor: self.descriptor, path: self.path)
    }

    /// Maps anonymous zero pages (private, read-write like the copy-on-write mapping under them)
    /// over every whole page of `descriptor`'s first `length` bytes that is a hole, in the mapping
    /// at `base`.
    static func coverHoles(
        base: UnsafeMutableRawPointer, length: Int, descriptor: Int32, path: String
    ) throws(PmemError) {
        for hole in try Self.holes(descriptor: descriptor, length: length, path: path) {
            let address = base + hole.lowerBound
            let mapped = mmap(
                address, hole.count, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0)
            guard let mapped, mapped != MAP_FAILED, mapped == address else {
                let error = errno
                throw PmemError(
                    .mapFailed, path: path,
                    detail: "map zero pages over the hole at \(hole.lowerBound) (\(hole.count) bytes): \(Self.reason(error))",
                    errno: error)
            }
        }
    }

    /// The page-aligned byte ranges of `descriptor`'s first `length` bytes that are holes, found
    /// with lseek SEEK_HOLE and SEEK_DATA; a page only partly in a hole is left out. Empty where
    /// lseek cannot tell (it does not support the whences here); a file system that does not track
    /// holes reports the whole file as data.
    /// - Throws: `.ioFailed` when lseek fails otherwise.
    static func holes(descriptor: Int32, length: Int, path: String) throws(PmemError) -> [Range<Int>] {
        var holes: [Range<Int>] = []
        var offset = 0
        while offset < length {
            let hole = lseek(descriptor, off_t(offset), CShims_SEEK_HOLE)
            if hole < 0 {
                let error = errno
                switch error {
                case ENXIO: return holes  // at or past the end of file
                case EINVAL, EOPNOTSUPP, ESPIPE: return []
                default: throw PmemError.system("find the holes", errno: error, path: path)
                }
            }
            guard Int(hole) < length else { break }
            var end = length
            let data = lseek(descriptor, hole, CShims_SEEK_DATA)
            if data >= 0 {
                end = min(Int(data), length)
            } else if errno != ENXIO {  // ENXIO: the hole runs to the end of file
                let error = errno
                throw PmemError.system("find the data after a hole", errno: error, path: path)
            }
            let first = (Int(hole) + pageSize - 1) / pageSize * pageSize
            let last = end / pageSize * pageSize
            if first < last { holes.append(first..<last) }
            guard end > Int(hole) else { break }
            offset = end
        }
        return holes
    }

    private static func reason(_ error: Int32) -> String {
        String(cString: strerror(error)).lowercased()
    }
}
