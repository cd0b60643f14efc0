import DaxlabSupport
import Pmem
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// DaxFS: a small file system whose file blocks are blocks of a pmem mapping (the DAX premise).
///
/// Metadata (inodes, bitmap, block maps) changes only through `MetadataLog` transactions; file
/// data is written in place, made durable before the transaction that maps it commits (ordered
/// mode). Every file has a `ReadWriteLock`; the namespace has one mutex. The order they and the
/// file system's other locks are taken in is the program's one lock order, in docs/architecture.md
/// ("The lock order"); each lock's rank comes from `LockRank`, and debug builds check it.
/// Operations are in `FileSystem+Namespace.swift` and `FileSystem+Data.swift`; the format is in
/// docs/FORMAT.md.
public final class FileSystem: Sendable {
    public let media: Media
    public let geometry: Geometry
    /// The block map's reader, and where inode 0's record is: made once (the fault and punch
    /// paths read them several times each, and building the reader copies the geometry).
    /// (Pointers into the mapping, which every thread reads and writes by the file system's
    /// locking rules, as through `media`; the properties themselves never change.)
    nonisolated(unsafe) let reader: BlockMapReader
    nonisolated(unsafe) private let inodeTable: UnsafeMutableRawPointer
    let log: MetadataLog
    let allocator: BlockAllocator
    /// One lock per inode number.
    let locks: ReadWriteLocks
    let namespace: Locked<Namespace>
    /// The DAX layer's layout breaker, once attached: held until unmount, which drops it. (The
    /// DAX layer holds the file system too: the layer is part of the mount, and the unmount
    /// ends the cycle. Not a weak reference: a weakly referenced object pays the slow path of
    /// every reference count change, and the pin path retains the layer.)
    let breaker = BreakerSlot()
    /// Serialise block allocation between faults, which hold a file's lock only shared; striped
    /// by inode. Each stripe holds its files' unused reserved blocks (`FileSystem+Reservation`).
    let allocationLocks = LockedArray<FaultStripe>(count: FileSystem.faultStripes, rank: .faultStripe) { _ in FaultStripe() }
    /// Reserved blocks no page maps, over every file: what a full image cannot hand out until the
    /// files use them or the next mount frees them (kept under `freeBlocks / reservationHeadroom`).
    let unusedReserved = StripeCounts(stripes: FileSystem.faultStripes)
    /// Which lost+found page holds each sequestered block.
    let lostFound = Locked(LostFoundPages(), rank: .lostFoundPages)
    private let mounted = Atomic<Bool>(true)
    /// What mount found and did.
    public let mountReport: MountReport

    struct LostFoundPages {
        var pageOfBlock: [UInt32: Int] = [:]
        var freePages: [Int] = []
        var nextPage = 0
    }

    struct Namespace {
        var names: [FileName: Int] = [:]
        /// Names an unlink, rename or publish is working on: it may sleep (waiting for pins on a
        /// file it removes or replaces) without the namespace lock, and no other operation may
        /// name, rename or remove these names meanwhile. An unlinked name is no longer in `names`
        /// but is not reusable until its unlink ends.
        var busy: Set<FileName> = []
        var freeInodes: [Int] = []
    }

    /// What mount did to bring the image up.
    public struct MountReport: Sendable, Equatable {
        /// The image had not been unmounted cleanly.
        public var wasDirty: Bool
        /// Committed log transactions replayed.
        public var replayedTransactions: Int
        /// Torn or uncommitted transactions ignored.
        public var discardedTransactions: Int
        /// Blocks reclaimed from lost+found (sequestered under DMA before a crash).
        public var reclaimedLostFoundBlocks: Int
        /// Truncates and punches a crash interrupted, finished now.
        public var finishedOperations: Int
        /// Unnamed files freed: unlinks and replacing renames a crash interrupted, and temporary
        /// files of writes that never published.
        public var freedOrphans: Int
        /// Reserved blocks that no page mapped, freed (see `FileSystem+Reservation`).
        public var reclaimedReservedBlocks: Int = 0
    }

    public var mapping: PmemMapping { self.media.mapping }
    public var path: String { self.media.mapping.path }

    // MARK: Mount

    /// Mounts the daxlab image at `path`: takes the image's lock, validates the superblock and
    /// the log, replays committed transactions, validates every inode, block map and the bitmap,
    /// finishes the operations a crash interrupted, reclaims lost+found, and marks the image
    /// mounted. A file image has its blocks allocated first, so no later store can fault for space.
    /// - Parameters:
    ///   - persistence: force a persistence strategy (tests); nil lets libpmem decide.
    ///   - readOnly: open the image read-only and take its lock shared: readers coexist, a writer
    ///     waits for none of them and is refused while they mount it. Recovery of a file image
    ///     runs in this process's private copy; nothing is written to the image. Mutations throw
    ///     `.readOnly`.
    /// - Throws: `.pmem` (the path; `PmemError.Code.noSpace` when the backing file system is
    ///   full), `.inUse`, `.notAnImage`, `.corrupt` (with the first problem), `.readOnly` (a
    ///   device-dax image that needs recovery, mounted read-only).
    public static func mount(
        path: String, persistence: PersistenceStrategy? = nil, readOnly: Bool = false
    ) throws(FSError) -> FileSystem {
        try Self.mount(path: path, persistence: persistence, readOnly: readOnly, persistObserver: nil)
    }

    /// `mount(path:persistence:readOnly:)` with every flush and barrier reported to
    /// `persistObserver` (the crash campaign).
    package static func mount(
        path: String, persistence: PersistenceStrategy?, readOnly: Bool = false,
        persistObserver: (any PersistObserver)?
    ) throws(FSError) -> FileSystem {
        let mapping: PmemMapping
        do {
            mapping = try PmemMapping(
                path: path, options: MapOptions(access: readOnly ? .readOnly : .readWrite, persistence: persistence))
        } catch {
            throw FSError(error)
        }
        try Self.lockImage(mapping, shared: readOnly)
        return try FileSystem(mapping: mapping, persistObserver: persistObserver)
    }

    /// Mounts an image fsck --repair has locked and made consistent: finishes what a crash
    /// interrupted, exactly as a mount would.
    convenience init(repairedMapping mapping: PmemMapping) throws(FSError) {
        try self.init(mapping: mapping, persistObserver: nil)
    }

    private init(mapping: PmemMapping, persistObserver: (any PersistObserver)?) throws(FSError) {
        let (superblock, readState, mounts) = try Superblock.readPrimary(from: mapping)
        guard let state = readState else {
            throw FSError(.corrupt, "\(mapping.path): superblock: invalid mount state; run daxlab fsck --repair")
        }
        // A device mapped read-only cannot take even private stores: it must need no recovery.
        if mapping.isReadOnly, mapping.medium == .deviceDAX, state != .clean {
            throw FSError(
                .readOnly,
                "\(mapping.path): was not cleanly unmounted, and recovery writes; run a command that writes, or daxlab fsck --repair")
        }
        let geometry = superblock.geometry
        let media = Media(mapping: mapping, observer: persistObserver)
        // Validate the log before writing anything; then replay what was committed.
        let recovery = try MetadataLog.recover(media: media, geometry: geometry, apply: true)
        if let slot = recovery.invalidSlots.first {
            throw FSError(.corrupt, "\(mapping.path): log slot \(slot): a record points outside metadata; run daxlab fsck")
        }
        if let slot = recovery.damagedSlots.first {
            throw FSError(
                .corrupt,
                "\(mapping.path): log slot \(slot): a committed transaction is damaged (its records fail their checksum) "
                    + "and cannot be replayed; run daxlab fsck --repair")
        }

        let check = Checker(media: media, geometry: geometry).check()
        if let first = check.problems.first {
            let more = check.problems.count > 1 ? " (and \(check.problems.count - 1) more)" : ""
            throw FSError(.corrupt, "\(mapping.path): \(first.description)\(more); run daxlab fsck")
        }

        self.media = media
        self.geometry = geometry
        self.reader = BlockMapReader(base: media.base, geometry: geometry)
        self.inodeTable = media.base + geometry.inodeTableOffset
        self.log = MetadataLog(media: media, geometry: geometry)
        let bitmap = Bitmap(base: media.base, geometry: geometry)
        self.allocator = BlockAllocator(
            dataRange: UInt32(geometry.dataStart)..<UInt32(geometry.backupSuperblock), isAllocated: bitmap.isAllocated)
        self.locks = ReadWriteLocks(count: geometry.inodeCount, rank: .inode, exceptions: [Self.lostFoundInode: .lostFound])
        // Operations a crash interrupted are finished before anything can see the files (in the
        // private copy of a read-only mount; a clean device mounted read-only has none).
        let writable = !mapping.isReadOnly || mapping.medium != .deviceDAX
        let finished = writable
            ? try Self.finishIntents(log: self.log, allocator: self.allocator, geometry: geometry) : (0, 0)
        let unreserved = writable
            ? try Self.reclaimReservations(log: self.log, allocator: self.allocator, geometry: geometry) : 0
        var namespace = Namespace()
        for number in (FileSystem.firstUserInode..<geometry.inodeCount).reversed() {
            let record = InodeRecord(media.base + geometry.inodeOffset(number))
            if record.inUse { namespace.names[record.name] = number } else { namespace.freeInodes.append(number) }
        }
        self.namespace = Locked(namespace, rank: .namespace)
        let reclaimed = writable
            ? try Self.reclaimLostFound(log: self.log, allocator: self.allocator, geometry: geometry) : 0
        self.mountReport = MountReport(
            wasDirty: state == .mounted, replayedTransactions: recovery.replayed,
            discardedTransactions: recovery.discarded, reclaimedLostFoundBlocks: reclaimed,
            finishedOperations: finished.0, freedOrphans: finished.1, reclaimedReservedBlocks: unreserved)
        if !mapping.isReadOnly { try self.setState(.mounted, mounts: mounts &+ 1) }
    }

    /// Marks the image clean and releases its lock. The attached DAX layer decides first what
    /// happens to pins still outstanding (its final layout break: wait for them, revoke them,
    /// refuse, or under `none` let them outlive the unmount), then finishes the limbo releases
    /// due and is detached. The file system must not be used afterwards; its mapping goes when
    /// the last reference to it does.
    /// - Throws: `.busy` (`fail` with pins outstanding) or `.timedOut` (`wait`'s timeout): still
    ///   mounted, nothing changed; `.io` when the clean state cannot be persisted.
    public func unmount() throws(FSError) {
        if self.isMounted, let breaker = self.breaker.retained {
            try breaker.breakLayoutsFinal()  // may sleep for pins, or refuse: still mounted then
        }
        self.breaker.detach(waitingOut: self.locks)?.fileSystemWillUnmount()
        guard self.mounted.exchange(false, ordering: .acquiring) else { return }
        if !self.isReadOnly {
            let word = self.media.base.load(fromByteOffset: Superblock.stateOffset, as: UInt64.self)
            try self.setState(.clean, mounts: UInt32(word >> 32))
        }
        flock(self.mapping.descriptor, LOCK_UN)
    }

    public var isMounted: Bool { self.mounted.load(ordering: .relaxed) }

    /// Mounted read-only: nothing reaches the image.
    public var isReadOnly: Bool { self.mapping.isReadOnly }

    /// Refuses a change on a read-only mount.
    func checkWritable() throws(FSError) {
        if self.isReadOnly { throw FSError(.readOnly, "\(self.path): mounted read-only") }
    }

    private func setState(_ state: Superblock.MountState, mounts: UInt32) throws(FSError) {
        self.media.base.storeBytes(
            of: Superblock.stateWord(state, mounts: mounts), toByteOffset: Superblock.stateOffset, as: UInt64.self)
        try self.media.persist(Superblock.stateOffset, 8)
    }

    /// Takes the image's lock (flock on the mapping's descriptor) for this mount: exclusive, or
    /// shared for a read-only mapping, which is then mapped afresh from the file under the lock.
    ///
    /// A flock belongs to the open file description, which a child forked by this process shares
    /// until its exec closes the (close-on-exec) descriptor: a lock dropped just before such a fork
    /// can look held for a moment. So a busy lock is tried again for up to 50 ms; a real mount
    /// holds it far longer and is reported as in use.
    static func lockImage(_ mapping: PmemMapping, shared: Bool = false) throws(FSError) {
        var attempts = 0
        while flock(mapping.descriptor, (shared ? LOCK_SH : LOCK_EX) | LOCK_NB) != 0 {
            let error = errno
            guard error == EWOULDBLOCK || error == EINTR else {
                throw FSError(.io, "\(mapping.path): lock: \(String(cString: strerror(error)))")
            }
            attempts += 1
            guard attempts < 10 else {
                throw FSError(.inUse, "\(mapping.path): in use (mounted or checked by another daxlab)")
            }
            usleep(5_000)
        }
        // The holes as they are now that no writer can fill one (a writer may have come and gone
        // between the mapping and the lock).
        if mapping.isReadOnly {
            do { try mapping.remapPrivateCopy() } catch {
                flock(mapping.descriptor, LOCK_UN)
                throw FSError(error)
            }
        }
    }

    // MARK: Reserved inodes

    /// The most pages a file can have (direct, indirect and double-indirect pointers).
    public static let maximumFilePages = InodeRecord.maximumPages

    /// Inode 0 marks the root directory; inode 1 is lost+found; files start at 2.
    public static let rootInode = 0
    public static let lostFoundInode = 1
    static let firstUserInode = 2

    static func now() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_REALTIME, &time)
        return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
    }

    func record(_ number: Int) -> InodeRecord { InodeRecord(self.inodeTable + number * Geometry.inodeSize) }

    /// Usage figures.
    public var usage: FileSystemUsage {
        let (files, freeInodes) = self.namespace.withLock { ($0.names.count, $0.freeInodes.count) }
        return FileSystemUsage(
            blockSize: pageSize, totalBlocks: self.geometry.blockCount,
            dataBlocks: self.geometry.dataBlocks, freeBlocks: self.allocator.freeCount,
            reservedBlocks: self.unusedReserved.total,
            inodes: self.geometry.inodeCount, freeInodes: freeInodes, files: files)
    }
}

/// The allocation bitmap, read from the mapping.
struct Bitmap {
    let base: UnsafeRawPointer
    let geometry: Geometry

    func isAllocated(_ block: UInt32) -> Bool {
        let word = self.base.load(fromByteOffset: self.geometry.bitmapOffset + Int(block / 64) * 8, as: UInt64.self)
        return word & (1 << UInt64(block % 64)) != 0
    }
}
