#if canImport(Glibc)
import Glibc
#endif
import CShims

/// What a mapping already holds, asked before it is formatted, and making sure of its backing
/// store before it is written.
extension PmemMapping {
    /// A file system, partition table or RAID signature at the start of the mapping, as
    /// libblkid's safe probe finds it in the first MiB (where they live: ext4 at 1 KiB, ISO 9660 at
    /// 32 KiB, btrfs at 64 KiB, ...), or nil.
    public func foreignSignature() -> String? {
        var type = [CChar](repeating: 0, count: 64)
        let found = CShims_blkid_probe_bytes(self.base, min(self.length, 1 << 20), &type, type.count)
        guard found == 1 else { return nil }
        return String(decoding: type.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The offset of the first non-zero byte in the first and the last `span` bytes, or nil
    /// when they are all zero (an ISO image starts with 32 KiB of zeros; a GPT and md RAID keep
    /// copies at the end, so both ends are read).
    public func firstNonZeroByte(atEitherEnd span: Int = 1 << 20) -> Int? {
        let head = min(span, self.length)
        let tail = max(head, self.length - span)
        for range in [0..<head, tail..<self.length] {
            let bytes = UnsafeRawBufferPointer(start: self.base + range.lowerBound, count: range.count)
            if let index = bytes.firstIndex(where: { $0 != 0 }) { return range.lowerBound + index }
        }
        return nil
    }

    /// Allocates every block of a file image the file system does not hold yet (nothing for a
    /// device), so that no later store into the mapping can fault for space.
    /// - Throws: `PmemError` `.noSpace` when the backing file system is full.
    public func allocateBackingStore() throws(PmemError) {
        guard self.medium != .deviceDAX, !self.isReadOnly else { return }
        try OpenedPath.allocateHoles(fd: self.descriptor, size: self.length, path: self.path)
    }
}
