import Pmem

/// A metadata transaction being staged in one log slot. Reads through `load32` and `inode(_:)`
/// see the transaction's own staged changes; nothing reaches the live metadata before `commit`.
///
/// One instance per slot, reused; used only while its slot's lock is held.
final class Transaction {
    private struct Staged {
        var kind: LogRecord.Kind
        var offset: Int
        var length: Int
        /// Byte offset of the payload inside the slot's record area.
        var payload: Int
    }

    let media: Media
    let geometry: Geometry
    private let slotOffset: Int
    private let capacity: Int
    private var cursor = 0
    private var staged: [Staged] = []
    /// Where `find` looks once a transaction is large (a bulk mapping stages hundreds of
    /// records, and a linear search per record would be quadratic): the newest byte or zero
    /// record of at most 8 bytes at each offset, and every longer one, by index into `staged`.
    private var shortRecords = OffsetIndex(capacity: 1024)
    private var longRecords: [Int] = []
    /// The staged image of each inode this transaction changes, by inode number: the payload of
    /// its 512-byte record (no other record is that long, so it is the one `find` would return,
    /// without a search through every record a bulk mapping staged).
    private var inodeRecords = OffsetIndex(capacity: 8)
    /// The newest set-bits record of each bitmap word, by the word's offset, while no clear-bits
    /// record for the word follows it.
    private var setBitsRecords = OffsetIndex(capacity: 64)
    /// Blocks whose bits this transaction clears; the caller returns them to the allocator after
    /// the commit.
    private(set) var freedBlocks: [UInt32] = []

    init(media: Media, geometry: Geometry, slotOffset: Int, capacity: Int) {
        self.media = media
        self.geometry = geometry
        self.slotOffset = slotOffset
        self.capacity = capacity - MetadataLog.headerSize
        self.staged.reserveCapacity(1024)
        self.freedBlocks.reserveCapacity(512)
    }

    private var records: UnsafeMutableRawPointer { self.media.base + self.slotOffset + MetadataLog.headerSize }

    func reset() {
        self.cursor = 0
        self.staged.removeAll(keepingCapacity: true)
        self.shortRecords.removeAll()
        self.longRecords.removeAll(keepingCapacity: true)
        self.inodeRecords.removeAll()
        self.setBitsRecords.removeAll()
        self.freedBlocks.removeAll(keepingCapacity: true)
    }

    /// Bytes of record space left; bulk operations stop staging when this runs low and commit.
    var remainingCapacity: Int { self.capacity - self.cursor }

    // MARK: Staging

    private func append(_ kind: LogRecord.Kind, offset: Int, length: Int) -> Int {
        let payloadSize = kind == .zero ? 0 : (length + 7) & ~7
        precondition(self.cursor + LogRecord.headerSize + payloadSize <= self.capacity, "log slot overflow")
        let header = self.records + self.cursor
        header.storeBytes(of: kind.rawValue, as: UInt16.self)
        header.storeBytes(of: 0, toByteOffset: 2, as: UInt16.self)
        header.storeBytes(of: UInt32(length), toByteOffset: 4, as: UInt32.self)
        header.storeBytes(of: UInt64(offset), toByteOffset: 8, as: UInt64.self)
        let payload = self.cursor + LogRecord.headerSize
        if payloadSize > length {
            (self.records + payload + length).initializeMemory(as: UInt8.self, repeating: 0, count: payloadSize - length)
        }
        self.cursor = payload + payloadSize
        if kind == .bytes || kind == .zero {
            if length <= Self.shortRecord { self.shortRecords[offset] = self.staged.count } else { self.longRecords.append(self.staged.count) }
        }
        self.staged.append(Staged(kind: kind, offset: offset, length: length, payload: payload))
        return payload
    }

    /// The staged record covering `offset..<offset+length`, newest first.
    private func find(covering offset: Int, length: Int) -> Staged? {
        guard self.staged.count > Self.linearSearchLimit, length <= Self.shortRecord else {
            for record in self.staged.reversed() where record.kind == .bytes || record.kind == .zero {
                if offset >= record.offset && offset + length <= record.offset + record.length { return record }
            }
            return nil
        }
        // The newest covering record is the newer of the newest short one (it starts at most
        // 8 - length bytes before `offset`) and the newest long one.
        var newest = -1
        for start in (offset + length - Self.shortRecord)...offset {
            guard let index = self.shortRecords[start], index > newest else { continue }
            let record = self.staged[index]
            if offset + length <= record.offset + record.length { newest = index }
        }
        for index in self.longRecords.reversed() {
            guard index > newest else { break }
            let record = self.staged[index]
            if offset >= record.offset && offset + length <= record.offset + record.length {
                newest = index
                break
            }
        }
        return newest >= 0 ? self.staged[newest] : nil
    }

    /// The longest record `shortRecords` holds (a map entry), and how many records a
    /// transaction stages before `find` uses the index rather than a search.
    private static let shortRecord = 8
    private static let linearSearchLimit = 32

    /// A 32-bit metadata word as this transaction sees it.
    func load32(_ offset: Int) -> UInt32 {
        guard let record = self.find(covering: offset, length: 4) else {
            return self.media.base.load(fromByteOffset: offset, as: UInt32.self)
        }
        if record.kind == .zero { return 0 }
        return (self.records + record.payload + (offset - record.offset)).loadUnaligned(as: UInt32.self)
    }

    /// A 64-bit metadata word (a block-map entry) as this transaction sees it.
    func load64(_ offset: Int) -> UInt64 {
        guard let record = self.find(covering: offset, length: 8) else {
            return self.media.base.load(fromByteOffset: offset, as: UInt64.self)
        }
        if record.kind == .zero { return 0 }
        return (self.records + record.payload + (offset - record.offset)).loadUnaligned(as: UInt64.self)
    }

    /// Stages a 64-bit store (a block-map entry).
    func store64(_ offset: Int, _ value: UInt64) {
        if let record = self.find(covering: offset, length: 8), record.kind == .bytes {
            (self.records + record.payload + (offset - record.offset)).storeBytes(of: value, as: UInt64.self)
            return
        }
        let payload = self.append(.bytes, offset: offset, length: 8)
        (self.records + payload).storeBytes(of: value, as: UInt64.self)
    }

    /// The block `slot` names for inode `number` as this transaction sees it: 0 for a hole or an
    /// entry whose check fails, and a record field as it is (callers check it names a data block).
    func pointer(_ slot: PointerSlot, inode number: Int) -> UInt32 {
        switch slot {
        case .record(let offset): self.load32(offset)
        case .entry(let offset, let position): MapEntry.decode(self.load64(offset), inode: number, position: position) ?? 0
        }
    }

    /// Whether `slot` holds anything but a hole (a pointer, or an entry that fails its check).
    func isSet(_ slot: PointerSlot) -> Bool {
        switch slot {
        case .record(let offset): self.load32(offset) != 0
        case .entry(let offset, _): self.load64(offset) != 0
        }
    }

    /// Stages `slot` naming `block` (0: a hole) for inode `number`. A record field is changed in
    /// the staged record (staged here if it is not yet), whose checksum the commit reseals.
    func setPointer(_ slot: PointerSlot, inode number: Int, _ block: UInt32) {
        switch slot {
        case .record(let offset):
            _ = self.inode(number)
            self.store32(offset, block)
        case .entry(let offset, let position): self.store64(offset, MapEntry.encode(block, inode: number, position: position))
        }
    }

    /// Whether block-map block `block` holds no pointer as this transaction sees it: the media's
    /// 4 KiB with every staged byte image and zeroing over it applied, oldest first.
    func mapBlockIsEmpty(_ block: UInt32) -> Bool {
        let start = Int(block) * pageSize
        let end = start + pageSize
        return withUnsafeTemporaryAllocation(byteCount: pageSize, alignment: 8) { view in
            let copy = view.baseAddress!
            copy.copyMemory(from: self.media.base + start, byteCount: pageSize)
            for record in self.staged where record.kind == .bytes || record.kind == .zero {
                let from = max(start, record.offset)
                let to = min(end, record.offset + record.length)
                guard from < to else { continue }
                if record.kind == .zero {
                    (copy + (from - start)).initializeMemory(as: UInt8.self, repeating: 0, count: to - from)
                } else {
                    (copy + (from - start)).copyMemory(
                        from: self.records + record.payload + (from - record.offset), byteCount: to - from)
                }
            }
            return (0..<(pageSize / 8)).allSatisfy { copy.load(fromByteOffset: $0 * 8, as: UInt64.self) == 0 }
        }
    }

    /// Stages a 32-bit store (a pointer field of an inode record).
    func store32(_ offset: Int, _ value: UInt32) {
        if let record = self.find(covering: offset, length: 4), record.kind == .bytes {
            (self.records + record.payload + (offset - record.offset)).storeBytes(of: value, as: UInt32.self)
            return
        }
        let payload = self.append(.bytes, offset: offset, length: 4)
        (self.records + payload).storeBytes(of: value, as: UInt32.self)
    }

    /// Stages zeroing a range (a new block-map block).
    func zero(_ offset: Int, _ length: Int) {
        _ = self.append(.zero, offset: offset, length: length)
    }

    /// The staged image of inode `number`'s 512-byte record, to modify in place; its checksum is
    /// recomputed at commit.
    func inode(_ number: Int) -> InodeRecord {
        if let payload = self.inodeRecords[number] { return InodeRecord(self.records + payload) }
        let offset = self.geometry.inodeTableOffset + number * Geometry.inodeSize
        let payload = self.append(.bytes, offset: offset, length: Geometry.inodeSize)
        (self.records + payload).copyMemory(from: self.media.base + offset, byteCount: Geometry.inodeSize)
        self.inodeRecords[number] = payload
        return InodeRecord(self.records + payload)
    }

    /// Stages marking `block` allocated: into the word's set-bits record where one is staged and
    /// no clear-bits record for the word came after it (a run of 512 blocks stages 8 records, not
    /// 512; only these two kinds touch a bitmap word, and setting bits commutes with setting).
    func setAllocated(_ block: UInt32) {
        let (word, mask) = self.bitmapWord(block)
        if let payload = self.setBitsRecords[word] {
            let bits = self.records + payload
            bits.storeBytes(of: bits.load(as: UInt64.self) | mask, as: UInt64.self)
            return
        }
        let payload = self.append(.setBits, offset: word, length: 8)
        (self.records + payload).storeBytes(of: mask, as: UInt64.self)
        self.setBitsRecords[word] = payload
    }

    /// Stages marking `block` free; unless `toAllocator` is false (a busy block whose release
    /// the DAX layer defers to its last unpin), it is handed back to the allocator after commit.
    func setFree(_ block: UInt32, toAllocator: Bool = true) {
        let (word, mask) = self.bitmapWord(block)
        let payload = self.append(.clearBits, offset: word, length: 8)
        (self.records + payload).storeBytes(of: mask, as: UInt64.self)
        self.setBitsRecords[word] = nil  // (a later set must come after this clear)
        if toAllocator { self.freedBlocks.append(block) }
    }

    private func bitmapWord(_ block: UInt32) -> (Int, UInt64) {
        precondition(self.geometry.isDataBlock(block), "bitmap change for block \(block) outside the data area")
        return (self.geometry.bitmapOffset + Int(block / 64) * 8, 1 << UInt64(block % 64))
    }

    // MARK: Commit

    /// Makes the staged records durable as one atomic step, applies them in place, retires the slot.
    func commit() throws(FSError) {
        guard !self.staged.isEmpty else { return }
        for payload in self.inodeRecords.presentValues { InodeRecord(self.records + payload).sealChecksum() }
        // The records are durable before the header that commits them, so a header whose own
        // checksum holds proves its records were whole: records failing their checksum under it
        // are damage, not a commit a crash cut short (see `MetadataLog.recover`).
        try self.media.flush(self.slotOffset + MetadataLog.headerSize, self.cursor)
        self.media.barrier()
        let header = self.media.base + self.slotOffset
        header.initializeMemory(as: UInt8.self, repeating: 0, count: MetadataLog.headerSize)
        header.storeBytes(of: MetadataLog.magic, as: UInt64.self)
        header.storeBytes(of: UInt32(self.cursor), toByteOffset: 8, as: UInt32.self)
        header.storeBytes(of: UInt32(self.staged.count), toByteOffset: 12, as: UInt32.self)
        MetadataLog.seal(header, recordBytes: self.cursor)
        try self.media.persist(self.slotOffset, MetadataLog.headerSize)  // committed: mount replays from here on

        try MetadataLog.apply(records: self.records, bytes: self.cursor, media: self.media, dataOffset: self.geometry.dataOffset)
        self.media.barrier()  // applied

        try MetadataLog.retire(offset: self.slotOffset, media: self.media)  // retired
    }
}

// A transaction is used only by the thread holding its log slot's mutex (see `MetadataLog`),
// which orders every access to its fields.
extension Transaction: @unchecked Sendable {}
