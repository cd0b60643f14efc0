import Pmem
import DaxlabSupport
import Atomics
import Synchronization

/// The redo log that makes every metadata update atomic with respect to a crash.
///
/// The log is `logSlotCount` independent slots, so transactions on different files commit in
/// parallel. A transaction stages its records in a slot (not yet valid: the slot's header magic
/// is 0), makes them durable, then commits by writing the header, sealed by two checksums (one
/// over the header's fields, one over header and records), and making it durable. It then
/// applies the records in place, makes them durable, and retires the slot by zeroing the header's
/// first three words (magic, sizes, checksums). Mount replays every slot whose records' checksum
/// holds; replay is idempotent (byte images, zeroing, and setting or clearing bits).
///
/// A commit a crash cut short and a committed transaction damaged since are told apart: the
/// records are durable before the header is written, and the header's words were zero before it
/// (a retire zeroes them, and mount zeroes them in every slot it does not replay, so that a torn
/// commit or retire never leaves words a later commit could mix with; power failure keeps 8-byte
/// stores whole, not the 64-byte header), so a header whose every word is the new one, proved by
/// the header checksum, sits over whole records. Records that fail
/// their checksum under such a header are damage (fsck names the slot, mount refuses the image);
/// a header that fails its own checksum, or lacks the records' checksum, is a commit cut short,
/// ignored.
///
/// A slot's 64-byte header: magic (8 bytes), the records' bytes and count (4 each), the records'
/// checksum (4: CRC-32C of the header with this field as zero, then the records), the header's
/// checksum (4: CRC-32C of the header with both checksum fields as zero, 1 where that is 0; 0 in
/// slots written before it existed), zeros. The records' checksum is the one earlier daxlab
/// wrote, over the whole header, so earlier daxlab still replays these slots.
///
/// Why slots never conflict on replay: a transaction holds the lock of every inode it changes
/// (and so of that inode's block-map blocks) until it retires, and a block it frees returns to
/// the allocator only after it retires, so at most one unretired transaction touches any byte or
/// bitmap bit.
final class MetadataLog: Sendable {
    static let headerSize = 64
    static let magic: UInt64 = 0x3130_474F_4C58_4144  // "DAXLOG01"

    let media: Media
    let geometry: Geometry
    private let slots: [LogSlot]
    private let nextSlot = Atomic<Int>(0)

    init(media: Media, geometry: Geometry) {
        self.media = media
        self.geometry = geometry
        self.slots = (0..<geometry.logSlotCount).map { index in
            let offset = geometry.logOffset + index * geometry.logSlotBlocks * pageSize
            return LogSlot(Transaction(media: media, geometry: geometry, slotOffset: offset,
                                       capacity: geometry.logSlotBlocks * pageSize))
        }
    }

    /// Runs `body` with a fresh transaction in a free slot, then commits what it staged.
    /// If `body` throws, nothing it staged reaches the media.
    /// - Returns: what `body` returned, and the blocks the transaction freed (now safe to reuse).
    func transaction<Result: Sendable>(
        _ body: (Transaction) throws(FSError) -> Result
    ) throws(FSError) -> (Result, [UInt32]) {
        let start = self.nextSlot.add(1, ordering: .relaxed).newValue
        #if DEBUG
        // The probes below are try-locks, which the lock order records unchecked (they never
        // wait); but a transaction may block on a slot when every probe fails, so the order is
        // checked here, whether or not one succeeds.
        if let violation = LockOrder.violation(taking: .logSlot) { fatalError(violation) }
        #endif
        for probe in 0..<self.slots.count {
            let slot = self.slots[(start + probe) % self.slots.count]
            if let outcome = try slot.transaction.withLockIfAvailable({ (tx) throws(FSError) in try Self.run(tx, body) }) {
                return outcome
            }
        }
        return try self.slots[start % self.slots.count].transaction.withLock { (tx) throws(FSError) in try Self.run(tx, body) }
    }

    private static func run<Result: Sendable>(
        _ tx: Transaction, _ body: (Transaction) throws(FSError) -> Result
    ) throws(FSError) -> (Result, [UInt32]) {
        tx.reset()
        let result = try body(tx)
        try tx.commit()
        return (result, tx.freedBlocks)
    }

    // MARK: Recovery

    /// What the log holds.
    struct Recovery {
        /// Committed transactions replayed (or, without `apply`, waiting to be).
        var replayed = 0
        /// Torn or uncommitted transactions ignored.
        var discarded = 0
        /// Slots whose checksum holds but whose records point outside metadata: damage.
        var invalidSlots: [Int] = []
        /// Slots whose header holds but whose records fail their checksum: committed, and
        /// damaged since (the records were durable before the header was written).
        var damagedSlots: [Int] = []
    }

    /// Checks every slot: a valid committed header whose records all target metadata is replayed
    /// (with `apply`), a header that fails its checksum is an uncommitted or torn transaction and
    /// ignored, a sealed header over records that fail theirs is damage. With `apply` and any
    /// invalid or damaged slot, nothing is written.
    static func recover(media: Media, geometry: Geometry, apply: Bool) throws(FSError) -> Recovery {
        var recovery = Recovery()
        var pending: [Int] = []
        var discarded: [Int] = []
        for slot in 0..<geometry.logSlotCount {
            let offset = Self.slotOffset(slot, geometry)
            let capacity = geometry.logSlotBlocks * pageSize
            let header = UnsafeRawPointer(media.base + offset)
            guard header.load(as: UInt64.self) == Self.magic else { continue }
            let bytes = Int(header.load(fromByteOffset: 8, as: UInt32.self))
            let recordsChecksum = header.load(fromByteOffset: 16, as: UInt32.self)
            guard bytes <= capacity - Self.headerSize, recordsChecksum == Self.checksum(header, recordBytes: bytes)
            else {
                let sealed = header.load(fromByteOffset: 20, as: UInt32.self)
                if sealed != 0, recordsChecksum != 0, sealed == Self.headerChecksum(header) {
                    recovery.damagedSlots.append(slot)
                } else {
                    recovery.discarded += 1
                    discarded.append(offset)
                }
                continue
            }
            let count = Int(header.load(fromByteOffset: 12, as: UInt32.self))
            if Self.validate(records: header + Self.headerSize, bytes: bytes, count: count, geometry: geometry) {
                pending.append(offset)
            } else {
                recovery.invalidSlots.append(slot)
            }
        }
        guard apply, recovery.invalidSlots.isEmpty, recovery.damagedSlots.isEmpty else {
            recovery.replayed = pending.count
            return recovery
        }
        // Every slot that is not a commit to replay is made empty: one a crash cut short keeps
        // its magic otherwise, beside words the next commit's torn header could mix with.
        for offset in discarded { try Self.retire(offset: offset, media: media) }
        try Self.clearStaleHeaders(media: media, geometry: geometry)
        for offset in pending {
            let header = media.base + offset
            let bytes = Int(header.load(fromByteOffset: 8, as: UInt32.self))
            try Self.apply(records: header + Self.headerSize, bytes: bytes, media: media, dataOffset: geometry.dataOffset)
            media.barrier()
            try Self.retire(offset: offset, media: media)
            recovery.replayed += 1
        }
        return recovery
    }

    static func slotOffset(_ slot: Int, _ geometry: Geometry) -> Int {
        geometry.logOffset + slot * geometry.logSlotBlocks * pageSize
    }

    /// The header words a commit writes: magic, sizes, checksums.
    static let headerWords = 24

    /// Marks a slot empty: its first three words zero, so that the next commit's header, should a
    /// crash keep only some of its words, never mixes them with this one's (see the type's note).
    static func retire(offset: Int, media: Media) throws(FSError) {
        (media.base + offset).initializeMemory(as: UInt8.self, repeating: 0, count: Self.headerWords)
        try media.persist(offset, Self.headerWords)
    }

    /// Zeroes what an empty slot's header still holds of its last transaction (retired by a
    /// daxlab that zeroed only the magic): mount, before anything commits.
    private static func clearStaleHeaders(media: Media, geometry: Geometry) throws(FSError) {
        for slot in 0..<geometry.logSlotCount {
            let offset = Self.slotOffset(slot, geometry)
            let header = UnsafeRawPointer(media.base + offset)
            guard header.load(as: UInt64.self) == 0,
                header.load(fromByteOffset: 8, as: UInt64.self) != 0 || header.load(fromByteOffset: 16, as: UInt64.self) != 0
            else { continue }
            try Self.retire(offset: offset, media: media)
        }
    }

    /// The records' checksum: the header with this field as zero, then the records.
    static func checksum(_ header: UnsafeRawPointer, recordBytes: Int) -> UInt32 {
        let sum = CRC32C.checksum(header, count: Self.headerSize, skipping: 16)
        return CRC32C.checksum(header + Self.headerSize, count: recordBytes, seed: sum)
    }

    /// The header's checksum: the header with both checksum fields as zero (1 where that is 0:
    /// 0 means a slot from before the field).
    static func headerChecksum(_ header: UnsafeRawPointer) -> UInt32 {
        var copy = (UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0))
        let sum = withUnsafeMutableBytes(of: &copy) { copy in
            copy.copyMemory(from: UnsafeRawBufferPointer(start: header, count: Self.headerSize))
            copy.storeBytes(of: 0, toByteOffset: 16, as: UInt64.self)
            return CRC32C.checksum(copy.baseAddress!, count: Self.headerSize)
        }
        return sum == 0 ? 1 : sum
    }

    /// Writes both checksums into a header whose other fields are written: the header's first,
    /// since the records' covers it.
    static func seal(_ header: UnsafeMutableRawPointer, recordBytes: Int) {
        header.storeBytes(of: 0, toByteOffset: 16, as: UInt64.self)
        header.storeBytes(of: Self.headerChecksum(header), toByteOffset: 20, as: UInt32.self)
        header.storeBytes(of: Self.checksum(header, recordBytes: recordBytes), toByteOffset: 16, as: UInt32.self)
    }

    /// Whether every record is well formed and targets the inode table, the bitmap or the data
    /// area (which ends before the backup superblock in the last block).
    static func validate(records: UnsafeRawPointer, bytes: Int, count: Int, geometry: Geometry) -> Bool {
        var cursor = 0
        var seen = 0
        let imageEnd = geometry.backupSuperblock * pageSize
        while cursor < bytes {
            guard cursor + LogRecord.headerSize <= bytes else { return false }
            let record = LogRecord(at: records + cursor)
            guard let kind = record.kind else { return false }
            let end = record.offset.addingReportingOverflow(record.length)
            guard !end.overflow, record.offset >= geometry.inodeTableOffset, end.partialValue <= imageEnd else {
                return false
            }
            switch kind {
            case .setBits, .clearBits:
                guard record.length == 8, record.offset % 8 == 0, record.offset >= geometry.bitmapOffset,
                    end.partialValue <= geometry.dataOffset
                else { return false }
            case .bytes, .zero: break
            }
            cursor += record.size
            seen += 1
        }
        return cursor == bytes && seen == count
    }

    /// Applies records in place and flushes them (the caller drains), in two passes: first the
    /// records in the data area (new block-map blocks zeroed, map entries set), then the inode
    /// table and the bitmap, each pass in log order. So a block's contents are in place before
    /// the pointer that reaches it: a fault that reads the block map without the allocation lock
    /// (another file's fault, or a pin) never follows a fresh inode pointer into a map block that
    /// still holds its previous life's bytes. The order does not matter to recovery, which
    /// replays the whole committed log.
    static func apply(records: UnsafeRawPointer, bytes: Int, media: Media, dataOffset: Int) throws(FSError) {
        for dataPass in [true, false] {
            var cursor = 0
            // Records that follow each other in the media (a bulk mapping's entries) are flushed
            // as one range: a flush per 8-byte record would flush each cache line eight times.
            var pending = 0..<0
            while cursor < bytes {
                let record = LogRecord(at: records + cursor)
                cursor += record.size
                guard (record.offset >= dataOffset) == dataPass else { continue }
                let target = media.base + record.offset
                switch record.kind {
                case .bytes?:
                    target.copyMemory(from: record.payload, byteCount: record.length)
                case .zero?:
                    target.initializeMemory(as: UInt8.self, repeating: 0, count: record.length)
                case .setBits?:
                    _ = Self.atomicWord(target).loadThenBitwiseOr(with: record.payload.load(as: UInt64.self), ordering: .relaxed)
                case .clearBits?:
                    _ = Self.atomicWord(target).loadThenBitwiseAnd(
                        with: ~record.payload.load(as: UInt64.self), ordering: .relaxed)
                case nil:
                    preconditionFailure("unvalidated log record")
                }
                if record.offset >= pending.lowerBound && record.offset <= pending.upperBound {
                    pending = pending.lowerBound..<max(pending.upperBound, record.offset + record.length)
                } else {
                    if !pending.isEmpty { try media.flush(pending.lowerBound, pending.count) }
                    pending = record.offset..<(record.offset + record.length)
                }
            }
            if !pending.isEmpty { try media.flush(pending.lowerBound, pending.count) }
            if dataPass { media.barrier() }  // (the contents, durable before the pointers)
        }
    }

    /// A bitmap word in the mapping, updated atomically: concurrent transactions may change
    /// different bits of one word.
    static func atomicWord(_ pointer: UnsafeMutableRawPointer) -> UnsafeAtomic<UInt64> {
        UnsafeAtomic(at: pointer.assumingMemoryBound(to: UInt64.AtomicRepresentation.self))
    }
}

/// A log slot: its reusable transaction, behind the lock that makes the slot one writer's.
private final class LogSlot: Sendable {
    let transaction: Locked<Transaction>
    init(_ transaction: Transaction) { self.transaction = Locked(transaction, rank: .logSlot) }
}

/// One record in a log slot: a 16-byte header (kind u16, reserved u16, length u32, offset u64)
/// and, for `bytes` and the bit kinds, a payload padded to 8 bytes.
struct LogRecord {
    enum Kind: UInt16 {
        case bytes = 1, zero = 2, setBits = 3, clearBits = 4
    }

    static let headerSize = 16
    let pointer: UnsafeRawPointer

    init(at pointer: UnsafeRawPointer) { self.pointer = pointer }

    var kind: Kind? { Kind(rawValue: self.pointer.load(as: UInt16.self)) }
    var length: Int { Int(self.pointer.load(fromByteOffset: 4, as: UInt32.self)) }
    var offset: Int { Int(truncatingIfNeeded: self.pointer.load(fromByteOffset: 8, as: UInt64.self)) }
    var payload: UnsafeRawPointer { self.pointer + Self.headerSize }

    /// Header plus padded payload.
    var size: Int { Self.headerSize + (self.kind == .zero ? 0 : (self.length + 7) & ~7) }
}
