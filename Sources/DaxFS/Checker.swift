/// One inconsistency fsck (or mount) found.
public struct FsckProblem: Sendable, Equatable, Codable, CustomStringConvertible {
    /// `superblock`, `log`, `inode N`, `bitmap`.
    public var structure: String
    public var message: String
    /// Whether `--repair` fixed it.
    public var repaired: Bool

    public var description: String { "\(self.structure): \(self.message)" }
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

    public var isClean: Bool { self.problems.isEmpty && self.unlistedProblems == 0 }
    public var problemCount: Int { self.problems.count + self.unlistedProblems }
}

/// Checks (and optionally repairs) the inode table, every block map and the bitmap against each
/// other. Mount runs it without repair and refuses an image with any problem; fsck runs it with
/// or without repair. Reads only what the superblock's geometry bounds, so any damage is a
/// reported problem, never a crash.
struct Checker {
    static let problemLimit = 1000
    let media: Media
    let geometry: Geometry
    var repair = false

    private var result = CheckResult()
    /// Per block: -1 free, -2 metadata, otherwise the owning inode.
    private var owner: [Int32] = []
    private var names: [String: Int] = [:]

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
        for number in 0..<self.geometry.inodeCount { self.checkInode(number) }
        self.checkBitmap()
        return self.result
    }

    private mutating func report(_ structure: String, _ message: String) {
        if self.result.problems.count < Self.problemLimit {
            self.result.problems.append(FsckProblem(structure: structure, message: message, repaired: self.repair))
        } else {
            self.result.unlistedProblems += 1
        }
    }

    private func persist(_ offset: Int, _ length: Int) {
        try? self.media.persist(offset, length)
    }

    // MARK: Inodes

    private mutating func checkInode(_ number: Int) {
        let offset = self.geometry.inodeOffset(number)
        let record = InodeRecord(self.media.base + offset)
        let label = "inode \(number)"
        let expected: InodeRecord.Kind =
            number == FileSystem.rootInode ? .rootDirectory : number == FileSystem.lostFoundInode ? .lostFound : .regular

        func reset(_ why: String) {
            self.report(label, why)
            guard self.repair else { return }
            if number < FileSystem.firstUserInode {
                record.initialize(kind: expected, name: expected == .lostFound ? "lost+found" : "", now: FileSystem.now())
            } else {
                record.release()
            }
            record.sealChecksum()
            self.persist(offset, Geometry.inodeSize)
        }

        guard record.storedChecksum == record.computedChecksum else { return reset("checksum mismatch") }
        guard record.inUse else {
            if number < FileSystem.firstUserInode { return reset("reserved \(expected) inode is missing") }
            let blank = UnsafeRawBufferPointer(start: record.pointer, count: Geometry.inodeSize).enumerated()
                .allSatisfy { index, byte in byte == 0 || (4..<8).contains(index) || (36..<40).contains(index) }
            if !blank { reset("free inode is not blank") }
            return
        }
        guard record.kind == expected else { return reset("kind \(record.flags >> 8) where \(expected) belongs") }
        guard record.flags & ~0xFF01 == 0, record.reservedBytesAreZero else { return reset("reserved bits are set") }
        guard record.size <= UInt64(InodeRecord.maximumPages * Geometry.blockSize) else {
            return reset("size \(record.size) exceeds the largest file")
        }
        if number >= FileSystem.firstUserInode {
            let length = record.nameLength
            let nameBytes = UnsafeRawBufferPointer(start: record.pointer + InodeRecord.nameOffset, count: 256)
            guard length >= 1, length <= InodeRecord.maximumNameLength,
                nameBytes[length...].allSatisfy({ $0 == 0 }),
                let name = String(validating: nameBytes[..<length], as: UTF8.self),
                (try? FileSystem.validate(name: name)) != nil
            else { return reset("invalid name") }
            if let other = self.names[name] {
                return reset("name \"\(name)\" is also used by inode \(other)")
            }
            self.names[name] = number
            self.result.files += 1
        }
        self.checkBlockMap(number, record)
    }

    /// Walks every pointer of inode `number`, claiming blocks; fixes pointers under `repair`.
    private mutating func checkBlockMap(_ number: Int, _ record: InodeRecord) {
        let label = "inode \(number)"
        let inodeOffset = self.geometry.inodeOffset(number)
        let pages = Int((record.size + UInt64(Geometry.blockSize) - 1) / UInt64(Geometry.blockSize))
        var dataBlocks: UInt64 = 0
        var recordChanged = false

        /// Checks the pointer at byte `offset`; returns the block when it is valid and now claimed.
        func visit(_ offset: Int, page: Int?, map: Bool) -> UInt32? {
            let block = self.media.base.load(fromByteOffset: offset, as: UInt32.self)
            guard block != 0 else { return nil }
            var why: String?
            if !self.geometry.isDataBlock(block) {
                why = "pointer to block \(block) outside the data area"
            } else if self.owner[Int(block)] != -1 {
                why = "block \(block) is also used by inode \(self.owner[Int(block)])"
            } else if let page, page >= pages {
                why = "block \(block) mapped at page \(page), past the end of file"
            }
            if let why {
                self.report(label, why)
                if self.repair {
                    self.media.base.storeBytes(of: 0, toByteOffset: offset, as: UInt32.self)
                    if offset >= inodeOffset && offset < inodeOffset + Geometry.inodeSize {
                        recordChanged = true
                    } else {
                        self.persist(offset, 4)
                    }
                }
                return nil
            }
            self.owner[Int(block)] = Int32(number)
            if !map { dataBlocks += 1 }
            return block
        }

        for index in 0..<InodeRecord.directCount {
            _ = visit(inodeOffset + InodeRecord.directPointerOffset(index), page: index, map: false)
        }
        let perBlock = InodeRecord.pointersPerBlock
        if let map = visit(inodeOffset + InodeRecord.indirectOffset, page: nil, map: true) {
            for index in 0..<perBlock {
                _ = visit(self.geometry.entryOffset(map, index), page: BlockMapPath.indirectFirstPage + index, map: false)
            }
        }
        if let top = visit(inodeOffset + InodeRecord.doubleIndirectOffset, page: nil, map: true) {
            for outer in 0..<perBlock {
                guard let leaf = visit(self.geometry.entryOffset(top, outer), page: nil, map: true) else { continue }
                let first = BlockMapPath.doubleIndirectFirstPage + outer * perBlock
                for inner in 0..<perBlock {
                    _ = visit(self.geometry.entryOffset(leaf, inner), page: first + inner, map: false)
                }
            }
        }
        if record.blocks != dataBlocks {
            self.report(label, "records \(record.blocks) data blocks but maps \(dataBlocks)")
            if self.repair {
                record.blocks = dataBlocks
                recordChanged = true
            }
        }
        if recordChanged {
            record.sealChecksum()
            self.persist(inodeOffset, Geometry.inodeSize)
        }
        if number == FileSystem.lostFoundInode { self.result.lostFoundBlocks = Int(dataBlocks) }
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
