import Pmem

/// One inconsistency fsck (or mount) found, and with `--repair` what was done about it.
public struct FsckProblem: Sendable, Equatable, Codable, CustomStringConvertible {
    /// `superblock`, `log`, `inode N`, `bitmap`.
    public var structure: String
    public var message: String
    /// Whether `--repair` fixed it.
    public var repaired: Bool
    /// What the repair did, when it did something more than the message says (salvaged blocks
    /// into a file, recomputed a checksum, corrected a flipped bit).
    public var action: String?

    public init(structure: String, message: String, repaired: Bool, action: String? = nil) {
        self.structure = structure
        self.message = message
        self.repaired = repaired
        self.action = action
    }

    public var description: String {
        "\(self.structure): \(self.message)" + (self.repaired ? (self.action.map { " (repaired: \($0))" } ?? " (repaired)") : "")
    }
}

/// What a check found.
public struct CheckResult: Sendable, Equatable {
    public var problems: [FsckProblem] = []
    /// Problems found beyond the ones listed (the list stops at `Checker.problemLimit`).
    public var unlistedProblems = 0
    public var files = 0
    public var usedDataBlocks = 0
    public var freeDataBlocks = 0
    public var lostFoundBlocks = 0
    /// Truncates and punches a crash left for mount to finish (not problems).
    public var pendingOperations = 0
    /// Orphans a crash left for mount to free: files without a name (unlinked, replaced by a
    /// rename, or written as a temporary that was never published). Not problems.
    public var pendingOrphans = 0
    /// Files a repair renamed `lost+found#N` because their name or map could not be trusted.
    public var salvagedFiles: [String] = []

    public var isClean: Bool { self.problems.isEmpty && self.unlistedProblems == 0 }
    public var problemCount: Int { self.problems.count + self.unlistedProblems }
}

/// Checks (and optionally repairs) the inode table, every block map and the bitmap against each
/// other. Mount runs it without repair and refuses an image with any problem; fsck runs it with
/// or without repair. Reads only what the superblock's geometry bounds, so any damage is a
/// reported problem, never a crash.
///
/// Repair fixes what it can prove and keeps data wherever it can (`Checker+Inodes.swift`): a
/// record whose checksum fails because of one flipped bit is corrected, and so is a block-map
/// entry; a record damaged beyond that keeps its readable blocks and is renamed `lost+found#N`;
/// only a record that says it is free is cleared.
struct Checker {
    static let problemLimit = 1000
    let media: Media
    let geometry: Geometry
    var repair = false

    var result = CheckResult()
    /// Per block: -1 free, -2 metadata, otherwise the owning inode.
    var owner: [Int32] = []
    var names: [FileName: Int] = [:]
    /// Inodes whose record must be renamed once every name is known (repair).
    var toSalvage: [Int] = []
    /// Data blocks a second trustworthy pointer also names, in walk order.
    var shared: [SharedClaim] = []

    /// A pointer that checks out and names a data block an earlier one already claimed: both
    /// records and both entries are sound, so the checksums cannot tell which file the block is
    /// (the situation e2fsck's pass 1B handles): each claimant gets its own copy.
    struct SharedClaim {
        var inode: Int
        var slot: PointerSlot
        var block: UInt32
        var firstOwner: Int
    }

    init(media: Media, geometry: Geometry, repair: Bool = false) {
        self.media = media
        self.geometry = geometry
        self.repair = repair
    }

    func check() -> CheckResult {
        var checker = self
        return checker.run()
    }

    private mutating func run() -> CheckResult {
        self.owner = [Int32](repeating: -1, count: self.geometry.blockCount)
        for block in 0..<self.geometry.dataStart { self.owner[block] = -2 }
        self.owner[self.geometry.backupSuperblock] = -2
        // Records whose checksum holds (or is one flipped bit away) first: where a damaged
        // record's pointer and a sound one name the same block, the sound one keeps it.
        let numbers = 0..<self.geometry.inodeCount
        let sound = numbers.map(self.recordIsSound)
        for number in numbers where sound[number] { self.checkInode(number) }
        for number in numbers where !sound[number] { self.checkInode(number) }
        self.cloneSharedBlocks()
        self.salvageNames()
        self.checkBitmap()
        return self.result
    }

    mutating func report(_ structure: String, _ message: String, action: String? = nil) {
        if self.result.problems.count < Self.problemLimit {
            self.result.problems.append(
                FsckProblem(structure: structure, message: message, repaired: self.repair, action: action))
        } else {
            self.result.unlistedProblems += 1
        }
    }

    func persist(_ offset: Int, _ length: Int) {
        try? self.media.persist(offset, length)
    }

    /// Whether inode `number`'s record checksum holds, or one flipped bit explains its failure.
    private func recordIsSound(_ number: Int) -> Bool {
        let record = InodeRecord(self.media.base + self.geometry.inodeOffset(number))
        guard record.storedChecksum != record.computedChecksum else { return true }
        let scratch = UnsafeMutableRawPointer.allocate(byteCount: Geometry.inodeSize, alignment: 8)
        defer { scratch.deallocate() }
        scratch.copyMemory(from: record.pointer, byteCount: Geometry.inodeSize)
        return Self.singleBitError(in: scratch) != nil
    }

    /// Gives every claimant in `shared` a copy of its block in a block nobody uses (a hole when
    /// there is none), and reports each. Without repair it only reports.
    private mutating func cloneSharedBlocks() {
        var free = self.geometry.dataStart
        for claim in self.shared {
            let label = "inode \(claim.inode)"
            let other = claim.firstOwner == claim.inode ? "another page of this file" : "inode \(claim.firstOwner)"
            let what = "block \(claim.block) is also used by \(other), and both pointers check out"
            while free < self.geometry.backupSuperblock, self.owner[free] != -1 { free += 1 }
            guard free < self.geometry.backupSuperblock else {
                self.report(label, what + "; no free block is left for a copy", action: "made this page a hole")
                self.setPointer(claim, to: 0)
                continue
            }
            self.report(label, what, action: "gave this file its own copy, block \(free)")
            guard self.repair else { continue }
            self.owner[free] = Int32(claim.inode)
            let (source, copy) = (Int(claim.block) * pageSize, free * pageSize)
            (self.media.base + copy).copyMemory(from: self.media.base + source, byteCount: pageSize)
            self.persist(copy, pageSize)
            self.setPointer(claim, to: UInt32(free))
        }
    }

    /// Under repair, points `claim`'s slot at `block` (0: a hole), durably.
    private func setPointer(_ claim: SharedClaim, to block: UInt32) {
        guard self.repair else { return }
        switch claim.slot {
        case .record(let offset):
            self.media.base.storeBytes(of: block, toByteOffset: offset, as: UInt32.self)
            let inodeOffset = self.geometry.inodeOffset(claim.inode)
            let record = InodeRecord(self.media.base + inodeOffset)
            if block == 0 { record.blocks = record.blocks > 0 ? record.blocks - 1 : 0 }
            record.sealChecksum()
            self.persist(inodeOffset, Geometry.inodeSize)
        case .entry(let offset, let position):
            self.media.base.storeBytes(
                of: MapEntry.encode(block, inode: claim.inode, position: position), toByteOffset: offset, as: UInt64.self)
            self.persist(offset, MapEntry.size)
            if block == 0 {
                let inodeOffset = self.geometry.inodeOffset(claim.inode)
                let record = InodeRecord(self.media.base + inodeOffset)
                record.blocks = record.blocks > 0 ? record.blocks - 1 : 0
                record.sealChecksum()
                self.persist(inodeOffset, Geometry.inodeSize)
            }
        }
    }

    // MARK: Bitmap

    private mutating func checkBitmap() {
        let bitmap = self.media.base + self.geometry.bitmapOffset
        func bit(_ block: Int) -> Bool {
            bitmap.load(fromByteOffset: (block / 64) * 8, as: UInt64.self) & (1 << UInt64(block % 64)) != 0
        }
        func setBit(_ block: Int, _ value: Bool) {
            let offset = (block / 64) * 8
            let word = bitmap.load(fromByteOffset: offset, as: UInt64.self)
            let mask: UInt64 = 1 << UInt64(block % 64)
            bitmap.storeBytes(of: value ? word | mask : word & ~mask, toByteOffset: offset, as: UInt64.self)
            self.persist(self.geometry.bitmapOffset + offset, 8)
        }
        for block in 0..<self.geometry.blockCount {
            let allocated = bit(block)
            let owner = self.owner[block]
            if owner == -1 {
                if allocated {
                    self.report("bitmap", "block \(block) is allocated but no file uses it (leaked)")
                    if self.repair { setBit(block, false) }
                }
                self.result.freeDataBlocks += 1
            } else {
                if !allocated {
                    let what = owner == -2 ? "metadata block" : "block used by inode \(owner)"
                    self.report("bitmap", "\(what) \(block) is marked free")
                    if self.repair { setBit(block, true) }
                }
                if owner >= 0 { self.result.usedDataBlocks += 1 }
            }
        }
        let totalBits = self.geometry.bitmapBlocks * Geometry.bitsPerBitmapBlock
        for block in self.geometry.blockCount..<totalBits where bit(block) {
            self.report("bitmap", "bit \(block) is set past the end of the image")
            if self.repair { setBit(block, false) }
        }
    }
}
