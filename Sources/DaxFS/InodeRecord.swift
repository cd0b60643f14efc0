/// A view of one 512-byte inode record, in the mapping or staged in a transaction.
///
/// ```
///   0 flags u32 (bit 0 in use; bits 8-15 kind)   4 generation u32
///   8 size u64          16 data blocks u64        24 mtime ns u64
///  32 name length u16   36 checksum u32 (CRC-32C of the record, this field as 0)
///  40 direct[12] u32    88 indirect u32           92 double indirect u32
/// 128 name[256]         96-127 and 384-511 reserved, zero
/// ```
struct InodeRecord {
    enum Kind: UInt32 {
        case regular = 1
        case lostFound = 2
        case rootDirectory = 3
    }

    static let directCount = 12
    static let pointersPerBlock = Geometry.blockSize / 4
    static let maximumNameLength = 255
    /// Pages reachable through direct, indirect and double-indirect pointers (just over 4 GiB).
    static let maximumPages = directCount + pointersPerBlock + pointersPerBlock * pointersPerBlock
    static let directOffset = 40
    static let indirectOffset = 88
    static let doubleIndirectOffset = 92
    static let nameOffset = 128
    static let checksumOffset = 36

    let pointer: UnsafeMutableRawPointer
    init(_ pointer: UnsafeMutableRawPointer) { self.pointer = pointer }

    var flags: UInt32 {
        get { self.pointer.load(as: UInt32.self) }
        nonmutating set { self.pointer.storeBytes(of: newValue, as: UInt32.self) }
    }
    var inUse: Bool { self.flags & 1 != 0 }
    var kind: Kind? { Kind(rawValue: (self.flags >> 8) & 0xFF) }

    var generation: UInt32 {
        get { self.pointer.load(fromByteOffset: 4, as: UInt32.self) }
        nonmutating set { self.pointer.storeBytes(of: newValue, toByteOffset: 4, as: UInt32.self) }
    }
    var size: UInt64 {
        get { self.pointer.load(fromByteOffset: 8, as: UInt64.self) }
        nonmutating set { self.pointer.storeBytes(of: newValue, toByteOffset: 8, as: UInt64.self) }
    }
    var blocks: UInt64 {
        get { self.pointer.load(fromByteOffset: 16, as: UInt64.self) }
        nonmutating set { self.pointer.storeBytes(of: newValue, toByteOffset: 16, as: UInt64.self) }
    }
    var modifiedNanoseconds: UInt64 {
        get { self.pointer.load(fromByteOffset: 24, as: UInt64.self) }
        nonmutating set { self.pointer.storeBytes(of: newValue, toByteOffset: 24, as: UInt64.self) }
    }
    var nameLength: Int { Int(self.pointer.load(fromByteOffset: 32, as: UInt16.self)) }
    var storedChecksum: UInt32 { self.pointer.load(fromByteOffset: Self.checksumOffset, as: UInt32.self) }

    var name: String {
        let length = min(self.nameLength, Self.maximumNameLength)
        return String(decoding: UnsafeRawBufferPointer(start: self.pointer + Self.nameOffset, count: length), as: UTF8.self)
    }

    func setName(_ name: String) {
        var name = name
        let length = name.withUTF8 { bytes in
            (self.pointer + Self.nameOffset).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
            return bytes.count
        }
        (self.pointer + Self.nameOffset + length).initializeMemory(
            as: UInt8.self, repeating: 0, count: Self.maximumNameLength + 1 - length)
        self.pointer.storeBytes(of: UInt16(length), toByteOffset: 32, as: UInt16.self)
    }

    /// The byte offset (within the record) of direct pointer `index`.
    static func directPointerOffset(_ index: Int) -> Int { Self.directOffset + 4 * index }

    /// Makes the record an in-use inode of `kind` with no blocks, bumping the generation.
    func initialize(kind: Kind, name: String, now: UInt64) {
        let generation = self.generation &+ 1
        self.pointer.initializeMemory(as: UInt8.self, repeating: 0, count: Geometry.inodeSize)
        self.flags = 1 | kind.rawValue << 8
        self.generation = generation
        self.modifiedNanoseconds = now
        self.setName(name)
    }

    /// Marks the record free, keeping its generation so the next owner's differs.
    func release() {
        let generation = self.generation
        self.pointer.initializeMemory(as: UInt8.self, repeating: 0, count: Geometry.inodeSize)
        self.generation = generation
    }

    var computedChecksum: UInt32 {
        CRC32C.checksum(self.pointer, count: Geometry.inodeSize, skipping: Self.checksumOffset)
    }

    func sealChecksum() {
        self.pointer.storeBytes(of: self.computedChecksum, toByteOffset: Self.checksumOffset, as: UInt32.self)
    }

    /// Whether the reserved bytes are zero (part of validation).
    var reservedBytesAreZero: Bool {
        let spans = [(34, 2), (96, 32), (Self.nameOffset + Self.maximumNameLength + 1, 0), (384, 128)]
        for (start, count) in spans where count > 0 {
            for index in start..<(start + count) where self.pointer.load(fromByteOffset: index, as: UInt8.self) != 0 {
                return false
            }
        }
        return true
    }
}
