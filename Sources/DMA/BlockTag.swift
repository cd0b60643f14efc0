import DaxFS

/// What every simulated device write puts in a block, so an independent checker can tell who
/// wrote it: 32 bytes, repeated over the 4 KiB block.
///
/// `magic u32, inode u32, generation u32, page u32, writer u32, kind u32, sequence u64`
public struct BlockTag: Sendable, Equatable, CustomStringConvertible {
    public static let size = 32
    public static let magic: UInt32 = 0x5741_4D44  // "DMAW"

    /// Who wrote: a DMA device or a CPU writer of the file system.
    public enum Kind: UInt32, Sendable { case device = 1, writer = 2 }

    public var file: FileID
    public var page: Int
    public var writer: Int
    public var kind: Kind
    public var sequence: UInt64

    public init(file: FileID, page: Int, writer: Int, kind: Kind, sequence: UInt64) {
        self.file = file
        self.page = page
        self.writer = writer
        self.kind = kind
        self.sequence = sequence
    }

    /// Fills `block` (4096 bytes) with the tag repeated.
    public func fill(_ block: UnsafeMutableRawPointer) {
        for offset in stride(from: 0, to: 4096, by: Self.size) {
            block.storeBytes(of: Self.magic, toByteOffset: offset, as: UInt32.self)
            block.storeBytes(of: UInt32(truncatingIfNeeded: self.file.inode), toByteOffset: offset + 4, as: UInt32.self)
            block.storeBytes(of: self.file.generation, toByteOffset: offset + 8, as: UInt32.self)
            block.storeBytes(of: UInt32(truncatingIfNeeded: self.page), toByteOffset: offset + 12, as: UInt32.self)
            block.storeBytes(of: UInt32(truncatingIfNeeded: self.writer), toByteOffset: offset + 16, as: UInt32.self)
            block.storeBytes(of: self.kind.rawValue, toByteOffset: offset + 20, as: UInt32.self)
            block.storeBytes(of: self.sequence, toByteOffset: offset + 24, as: UInt64.self)
        }
    }

    /// The tag a block holds, if it holds one whole (every copy identical); nil otherwise.
    public static func read(_ block: UnsafeRawPointer) -> BlockTag? {
        guard block.loadUnaligned(as: UInt32.self) == Self.magic,
            let kind = Kind(rawValue: block.loadUnaligned(fromByteOffset: 20, as: UInt32.self))
        else { return nil }
        for offset in stride(from: Self.size, to: 4096, by: Self.size)
        where memcmp(block, block + offset, Self.size) != 0 {
            return nil
        }
        return BlockTag(
            file: FileID(
                inode: Int(block.loadUnaligned(fromByteOffset: 4, as: UInt32.self)),
                generation: block.loadUnaligned(fromByteOffset: 8, as: UInt32.self)),
            page: Int(block.loadUnaligned(fromByteOffset: 12, as: UInt32.self)),
            writer: Int(block.loadUnaligned(fromByteOffset: 16, as: UInt32.self)), kind: kind,
            sequence: block.loadUnaligned(fromByteOffset: 24, as: UInt64.self))
    }

    /// The tag of every 32-byte copy in `block`, or nil if any copy is not a tag. Two devices
    /// that pinned the same page may write it at the same moment, and their copies interleave:
    /// the block then holds whole tags from both.
    public static func readEach(_ block: UnsafeRawPointer) -> [BlockTag]? {
        var tags: [BlockTag] = []
        tags.reserveCapacity(4096 / Self.size)
        for offset in stride(from: 0, to: 4096, by: Self.size) {
            let copy = block + offset
            guard copy.loadUnaligned(as: UInt32.self) == Self.magic,
                let kind = Kind(rawValue: copy.loadUnaligned(fromByteOffset: 20, as: UInt32.self))
            else { return nil }
            tags.append(BlockTag(
                file: FileID(
                    inode: Int(copy.loadUnaligned(fromByteOffset: 4, as: UInt32.self)),
                    generation: copy.loadUnaligned(fromByteOffset: 8, as: UInt32.self)),
                page: Int(copy.loadUnaligned(fromByteOffset: 12, as: UInt32.self)),
                writer: Int(copy.loadUnaligned(fromByteOffset: 16, as: UInt32.self)), kind: kind,
                sequence: copy.loadUnaligned(fromByteOffset: 24, as: UInt64.self)))
        }
        return tags
    }

    public var description: String {
        "\(self.kind == .device ? "device" : "writer") \(self.writer) #\(self.sequence) -> \(self.file) page \(self.page)"
    }
}

#if canImport(Glibc)
import Glibc
#endif
