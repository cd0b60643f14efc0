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
    /// Truncates, punches and orphans a crash left for mount to finish (not problems).
    public var pendingOperations = 0
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
/// record whose checksum fails because of one flipped bit is corrected; a record whose fields
/// all check out gets its checksum recomputed; a damaged record keeps its readable blocks and is
/// renamed `lost+found#N`; only a record that says it is free is cleared.
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
        for number in 0..<self.geometry.inodeCount { self.checkInode(number) }
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
