import DAX
import DaxFS

#if canImport(Glibc)
import Glibc
import Pmem
#endif

/// What every write of a race puts in a block, so the oracle can tell who wrote it and under
/// which ownership of the block: 32 bytes, repeated over the 4 KiB block.
///
/// ```
///  0 magic u32    4 inode u32    8 generation u32    12 page u32
/// 16 writer u16  18 kind u16    20 epoch u32        24 stamp u64
/// ```
/// `epoch` is the oracle's ownership epoch of the block that the write was made under (a
/// device's pin records it; writers write 0). `stamp` is a writer's write number, or the lease
/// a device wrote under (a pin's lease ID, or an on-demand-paging device's mapping: both
/// `LeaseStamp`s).
///
/// 32 bytes, a divisor of a cache line: two devices writing one page at the same moment leave
/// whole tags of both, never half of one.
public struct BlockTag: Sendable, Equatable, CustomStringConvertible {
    public static let size = 32
    public static let magic: UInt32 = 0x5741_4D44  // "DMAW"

    /// Who wrote: a DMA device or a CPU writer of the file system.
    public enum Kind: UInt16, Sendable { case device = 1, writer = 2 }

    public var file: FileID
    public var page: Int
    public var writer: Int
    public var kind: Kind
    public var epoch: UInt32
    public var stamp: UInt64

    public init(file: FileID, page: Int, writer: Int, kind: Kind, epoch: UInt32 = 0, stamp: UInt64) {
        self.file = file
        self.page = page
        self.writer = writer
        self.kind = kind
        self.epoch = epoch
        self.stamp = stamp
    }

    /// Fills `block` (4096 bytes) with the tag repeated.
    public func fill(_ block: UnsafeMutableRawPointer) {
        for offset in stride(from: 0, to: pageSize, by: Self.size) {
            block.storeBytes(of: Self.magic, toByteOffset: offset, as: UInt32.self)
            block.storeBytes(of: UInt32(truncatingIfNeeded: self.file.inode), toByteOffset: offset + 4, as: UInt32.self)
            block.storeBytes(of: self.file.generation, toByteOffset: offset + 8, as: UInt32.self)
            block.storeBytes(of: UInt32(truncatingIfNeeded: self.page), toByteOffset: offset + 12, as: UInt32.self)
            block.storeBytes(of: UInt16(truncatingIfNeeded: self.writer), toByteOffset: offset + 16, as: UInt16.self)
            block.storeBytes(of: self.kind.rawValue, toByteOffset: offset + 18, as: UInt16.self)
            block.storeBytes(of: self.epoch, toByteOffset: offset + 20, as: UInt32.self)
            block.storeBytes(of: self.stamp, toByteOffset: offset + 24, as: UInt64.self)
        }
    }

    /// The tag at `copy`, if those 32 bytes hold one.
    private static func decode(_ copy: UnsafeRawPointer) -> BlockTag? {
        guard copy.loadUnaligned(as: UInt32.self) == Self.magic,
            let kind = Kind(rawValue: copy.loadUnaligned(fromByteOffset: 18, as: UInt16.self))
        else { return nil }
        return BlockTag(
            file: FileID(
                inode: Int(copy.loadUnaligned(fromByteOffset: 4, as: UInt32.self)),
                generation: copy.loadUnaligned(fromByteOffset: 8, as: UInt32.self)),
            page: Int(copy.loadUnaligned(fromByteOffset: 12, as: UInt32.self)),
            writer: Int(copy.loadUnaligned(fromByteOffset: 16, as: UInt16.self)), kind: kind,
            epoch: copy.loadUnaligned(fromByteOffset: 20, as: UInt32.self),
            stamp: copy.loadUnaligned(fromByteOffset: 24, as: UInt64.self))
    }

    /// The tag a block holds, if it holds one whole (every copy identical); nil otherwise.
    public static func read(_ block: UnsafeRawPointer) -> BlockTag? {
        for offset in stride(from: Self.size, to: pageSize, by: Self.size) where memcmp(block, block + offset, Self.size) != 0 {
            return nil
        }
        return Self.decode(block)
    }

    /// The tag of every 32-byte copy in `block`, or nil if any copy is not a tag. Two devices
    /// that pinned the same page may write it at the same moment, and their copies interleave:
    /// the block then holds whole tags from both.
    public static func readEach(_ block: UnsafeRawPointer) -> [BlockTag]? {
        var tags: [BlockTag] = []
        tags.reserveCapacity(pageSize / Self.size)
        for offset in stride(from: 0, to: pageSize, by: Self.size) {
            guard let tag = Self.decode(block + offset) else { return nil }
            tags.append(tag)
        }
        return tags
    }

    public var description: String {
        self.kind == .device
            ? "device \(self.writer) lease \(LeaseStamp.describe(self.stamp)) epoch \(self.epoch) -> \(self.file) page \(self.page)"
            : "writer \(self.writer) #\(self.stamp) -> \(self.file) page \(self.page)"
    }
}
