/// A view of one 512-byte inode record, in the mapping or staged in a transaction.
///
/// ```
///   0 flags u32 (bit 0 in use; bits 8-15 kind)   4 generation u32
///   8 size u64          16 data blocks u64        24 mtime ns u64
///  32 name length u16   36 checksum u32 (CRC-32C of the record, this field as 0)
///  40 direct[12] u32    88 indirect u32           92 double indirect u32
///  96 intent u32       104 intent a u64          112 intent b u64
/// 128 name[256]       384 reservation count u32   388 reserved blocks u32[31]
/// 100-103 and 120-127 reserved, zero
/// ```
struct InodeRecord {
    enum Kind: UInt32 {
        case regular = 1
        case lostFound = 2
        case rootDirectory = 3
    }

    static let directCount = 12
    static let maximumNameLength = 255
    /// Pages reachable through direct, indirect and double-indirect pointers (just over 1 GiB).
    static let maximumPages = directCount + MapEntry.perBlock + MapEntry.perBlock * MapEntry.perBlock
    static let directOffset = 40
    static let indirectOffset = 88
    static let doubleIndirectOffset = 92
    static let nameOffset = 128
    static let checksumOffset = 36
    static let intentOffset = 96
    static let reservationOffset = 384
    /// The most blocks one file holds in reserve for its write faults (see `FileSystem+Reservation`).
    static let maximumReservation = 31

    /// An operation on the file that spans several transactions, recorded in the inode so that
    /// mount finishes it after a crash: a truncate or punch is then complete, an unlinked or
    /// replaced file gone, a file written under a temporary inode gone (the write never happened).
    enum Intent: Equatable, CustomStringConvertible {
        case none
        /// Shrinking to `size` bytes.
        case truncate(size: UInt64)
        /// Deallocating `offset..<end` (whole pages freed, partial edge pages zeroed).
        case punch(offset: UInt64, end: UInt64)
        /// Nameless: unlinked, replaced by a rename, or a temporary being written. Mount frees it.
        case orphan

        var description: String {
            switch self {
            case .none: "none"
            case .truncate(let size): "truncate to \(size)"
            case .punch(let offset, let end): "punch \(offset)..<\(end)"
            case .orphan: "orphan"
            }
        }
    }

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

    var name: FileName {
        let length = min(self.nameLength, Self.maximumNameLength)
        return FileName(bytes: Array(UnsafeRawBufferPointer(start: self.pointer + Self.nameOffset, count: length)))
    }

    /// Sets the name (an empty one for an orphan); the caller has validated it.
    func setName(_ name: FileName) {
        let length = min(name.bytes.count, Self.maximumNameLength)
        name.bytes.withUnsafeBytes { bytes in
            if length > 0 { (self.pointer + Self.nameOffset).copyMemory(from: bytes.baseAddress!, byteCount: length) }
        }
        (self.pointer + Self.nameOffset + length).initializeMemory(
            as: UInt8.self, repeating: 0, count: Self.maximumNameLength + 1 - length)
        self.pointer.storeBytes(of: UInt16(length), toByteOffset: 32, as: UInt16.self)
    }

    /// The intent recorded in the inode, or nil for an intent word this version does not know.
    var intent: Intent? {
        get {
            let a = self.pointer.load(fromByteOffset: Self.intentOffset + 8, as: UInt64.self)
            let b = self.pointer.load(fromByteOffset: Self.intentOffset + 16, as: UInt64.self)
            switch self.pointer.load(fromByteOffset: Self.intentOffset, as: UInt32.self) {
            case 0: return a == 0 && b == 0 ? Intent.none : nil
            case 1: return b == 0 ? .truncate(size: a) : nil
            case 2: return .punch(offset: a, end: b)
            case 3: return a == 0 && b == 0 ? .orphan : nil
            default: return nil
            }
        }
        nonmutating set {
            let (kind, a, b): (UInt32, UInt64, UInt64)
            switch newValue ?? Intent.none {
            case .none: (kind, a, b) = (0, 0, 0)
            case .truncate(let size): (kind, a, b) = (1, size, 0)
            case .punch(let offset, let end): (kind, a, b) = (2, offset, end)
            case .orphan: (kind, a, b) = (3, 0, 0)
            }
            self.pointer.storeBytes(of: kind, toByteOffset: Self.intentOffset, as: UInt32.self)
            self.pointer.storeBytes(of: a, toByteOffset: Self.intentOffset + 8, as: UInt64.self)
            self.pointer.storeBytes(of: b, toByteOffset: Self.intentOffset + 16, as: UInt64.self)
        }
    }

    /// Blocks allocated to the file ahead of its write faults: each is either mapped by this
    /// file (at most once) or not mapped at all; `blocks` counts every one of them, mapped or
    /// not. Mount frees the unmapped ones. Entries past the count are zero.
    var reservation: [UInt32] {
        get {
            let count = min(Int(self.reservationCount), Self.maximumReservation)
            return (0..<count).map { self.pointer.load(fromByteOffset: Self.reservationOffset + 4 + 4 * $0, as: UInt32.self) }
        }
        nonmutating set {
            precondition(newValue.count <= Self.maximumReservation, "reservation of \(newValue.count) blocks")
            self.pointer.storeBytes(of: UInt32(newValue.count), toByteOffset: Self.reservationOffset, as: UInt32.self)
            for index in 0..<Self.maximumReservation {
                self.pointer.storeBytes(
                    of: index < newValue.count ? newValue[index] : 0, toByteOffset: Self.reservationOffset + 4 + 4 * index,
                    as: UInt32.self)
            }
        }
    }

    /// Whether the reservation lists `block` (no array: the punch path asks).
    func reservationContains(_ block: UInt32) -> Bool {
        let count = min(Int(self.reservationCount), Self.maximumReservation)
        // Four entries a compare (every punch of a reserved block asks), then the rest one by one.
        let wanted = SIMD4<UInt32>(repeating: block)
        var index = 0
        while index + 4 <= count {
            let four = self.pointer.loadUnaligned(
                fromByteOffset: Self.reservationOffset + 4 + 4 * index, as: SIMD4<UInt32>.self)
            if any(four .== wanted) { return true }
            index += 4
        }
        while index < count {
            if self.pointer.load(fromByteOffset: Self.reservationOffset + 4 + 4 * index, as: UInt32.self) == block {
                return true
            }
            index += 1
        }
        return false
    }

    /// The stored reservation count (validation reads it raw).
    var reservationCount: UInt32 { self.pointer.load(fromByteOffset: Self.reservationOffset, as: UInt32.self) }

    /// Whether the reservation's count is in range and the entries past it are zero.
    var reservationIsWellFormed: Bool {
        let count = Int(self.reservationCount)
        guard count <= Self.maximumReservation else { return false }
        return (count..<Self.maximumReservation).allSatisfy {
            self.pointer.load(fromByteOffset: Self.reservationOffset + 4 + 4 * $0, as: UInt32.self) == 0
        }
    }

    /// The byte offset (within the record) of direct pointer `index`.
    static func directPointerOffset(_ index: Int) -> Int { Self.directOffset + 4 * index }

    /// Makes the record an in-use inode of `kind` with no blocks, bumping the generation. An empty
    /// name makes an orphan (a temporary inode that mount frees unless it is published).
    func initialize(kind: Kind, name: FileName, now: UInt64) {
        let generation = self.generation &+ 1
        self.pointer.initializeMemory(as: UInt8.self, repeating: 0, count: Geometry.inodeSize)
        self.flags = 1 | kind.rawValue << 8
        self.generation = generation
        self.modifiedNanoseconds = now
        self.setName(name)
        if kind == .regular && name.bytes.isEmpty { self.intent = .orphan }
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

    /// Byte ranges that must be zero.
    static let reservedSpans = [(34, 2), (100, 4), (120, 8)]

    /// Whether the reserved bytes are zero (part of validation).
    var reservedBytesAreZero: Bool {
        let spans = Self.reservedSpans
        for (start, count) in spans where count > 0 {
            for index in start..<(start + count) where self.pointer.load(fromByteOffset: index, as: UInt8.self) != 0 {
                return false
            }
        }
        return true
    }
}
