import Pmem

/// Where each on-media structure lives, in 4096-byte blocks from the start of the image.
///
/// ```
/// block 0                superblock
/// 1 ..< inodeTableStart  metadata log: logSlotCount slots of logSlotBlocks blocks
/// inodeTableStart ..     inode table: inodeCount records of 512 bytes
/// bitmapStart ..         allocation bitmap: one bit per block of the image
/// dataStart ..< count-1  data and block-map blocks
/// count - 1              backup superblock (a copy of block 0's checksummed part)
/// ```
/// Everything but `blockCount` and `inodeCount` follows from the rules here, so mount can check
/// a superblock's numbers against them. See docs/FORMAT.md.
public struct Geometry: Sendable, Equatable {
    public static let inodeSize = 512
    public static let inodesPerBlock = pageSize / inodeSize
    public static let bitsPerBitmapBlock = pageSize * 8
    /// The smallest image mkfs accepts.
    public static let minimumImageSize = 1 << 20
    /// 32-bit block numbers.
    public static let maximumBlockCount = Int(UInt32.max)
    /// Blocks of one aligned run: 2 MiB, what one huge (PMD) mapping covers. A run's first block
    /// is a multiple of this, so the run is 2 MiB-aligned in the image; the allocator hands a
    /// growing file whole runs where it has them (`BlockAllocator`), and `alignedRun` says where
    /// a file has one (the analogue of the kernel's `PG_PMD_NR`).
    public static let runBlocks = 512

    public let blockCount: Int
    public let inodeCount: Int
    public let logSlotCount: Int
    public let logSlotBlocks: Int

    // Derived from the four numbers above once, in `init`: the fault and punch paths ask for
    // them several times each.
    public var logStart: Int { 1 }
    public let inodeTableStart: Int
    public let inodeTableBlocks: Int
    public let bitmapStart: Int
    public let bitmapBlocks: Int
    public let dataStart: Int
    /// The last block: a copy of the superblock, so one damaged block 0 does not lose the image.
    public var backupSuperblock: Int { self.blockCount - 1 }
    public var dataBlocks: Int { self.backupSuperblock - self.dataStart }

    /// Byte offsets of the structures.
    public var logOffset: Int { self.logStart * pageSize }
    public let inodeTableOffset: Int
    public var bitmapOffset: Int { self.bitmapStart * pageSize }
    public var dataOffset: Int { self.dataStart * pageSize }

    init(blockCount: Int, inodeCount: Int, logSlotCount: Int, logSlotBlocks: Int) {
        self.blockCount = blockCount
        self.inodeCount = inodeCount
        self.logSlotCount = logSlotCount
        self.logSlotBlocks = logSlotBlocks
        // (Wrapping: a damaged superblock's numbers reach here before `isPlausible` rejects them,
        // and must not trap; nothing reads these for an implausible geometry.)
        self.inodeTableStart = 1 &+ logSlotCount &* logSlotBlocks  // (the log starts at block 1)
        self.inodeTableBlocks = inodeCount / Self.inodesPerBlock
        self.bitmapStart = self.inodeTableStart &+ self.inodeTableBlocks
        self.bitmapBlocks = (blockCount &+ (Self.bitsPerBitmapBlock - 1)) / Self.bitsPerBitmapBlock
        self.dataStart = self.bitmapStart &+ self.bitmapBlocks
        self.inodeTableOffset = self.inodeTableStart &* pageSize
    }

    /// The geometry mkfs gives an image of `size` bytes: one inode per 8 blocks (64 to 65536),
    /// 8 log slots of 64 KiB.
    /// - Throws: `.invalidArgument` for a size under 1 MiB, over 16 TiB, or not a multiple of 4096.
    public static func forImage(size: Int) throws(FSError) -> Geometry {
        guard size >= Self.minimumImageSize else {
            throw FSError(.invalidArgument, "image size \(size) is below the minimum of \(Self.minimumImageSize) bytes")
        }
        guard size % pageSize == 0 else {
            throw FSError(.invalidArgument, "image size \(size) is not a multiple of \(pageSize)")
        }
        let blockCount = size / pageSize
        guard blockCount <= Self.maximumBlockCount else {
            throw FSError(.invalidArgument, "image size \(size) exceeds 16 TiB")
        }
        let inodes = min(max(blockCount / 8, 64), 65536) / Self.inodesPerBlock * Self.inodesPerBlock
        return Geometry(blockCount: blockCount, inodeCount: inodes, logSlotCount: 8, logSlotBlocks: 16)
    }

    /// Whether these numbers are ones mkfs could have written: the check mount applies to a
    /// superblock before trusting any offset in it.
    var isPlausible: Bool {
        self.blockCount * pageSize >= Self.minimumImageSize && self.blockCount <= Self.maximumBlockCount
            && self.inodeCount >= 64 && self.inodeCount <= 65536 && self.inodeCount % Self.inodesPerBlock == 0
            && (1...64).contains(self.logSlotCount) && (1...256).contains(self.logSlotBlocks)
            && self.dataStart < self.backupSuperblock
    }

    /// Whether block `block` may hold file data or a block map.
    @inlinable
    public func isDataBlock(_ block: UInt32) -> Bool {
        Int(block) >= self.dataStart && Int(block) < self.backupSuperblock
    }
}
