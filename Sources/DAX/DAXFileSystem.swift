import Atomics
import DaxFS
import DaxlabSupport
import Pmem

#if canImport(Glibc)
import Glibc
#endif

/// The DAX layer attached to a mounted DaxFS: per-file address spaces, the pin table, pin
/// batches, the layout breaker every truncate, punch and unlink goes through, and the reclaimer
/// that releases blocks whose last pin dropped after they left their file.
///
/// It uses the file system only through the DAX contract (`DAXBlockSource`) and its public file
/// operations. It holds the file system, and the file system holds it until unmount: the layer
/// is part of the mount, and `unmount()` lets go of it (a layer dropped before then stays
/// attached, as one whose pins are outstanding must).
public final class DAXFileSystem {
    public let fs: FileSystem
    /// The file system as the DAX contract sees it.
    let source: any DAXBlockSource
    public let pins: PinTable
    /// The policy truncate, punch and unlink use unless a call names its own.
    public let defaultPolicy: TruncatePolicy
    public let times: PolicyTimes
    public let statistics: PolicyStatistics
    /// A 4 KiB page of zeros, mapped read-only: what a read fault on a hole returns.
    let zeroPage: UnsafeMutableRawPointer
    let reclaimer: Reclaimer
    /// By inode number (an array: a punch finds its space without hashing).
    private let spaces = Locked<[AddressSpace?]>([], rank: .spaceTable)
    /// The same spaces, unretained, one atomic slot per inode, for the breaker: a slot is written
    /// only under its file's lock (shared) and the table's mutex, and the breaker reads it holding
    /// the file's lock exclusively, so no write of the slot, and no release of the space it
    /// names, can happen meanwhile: no mutex on the punch path.
    private let spaceSlots: UnsafeMutablePointer<UnsafeAtomic<UInt>.Storage>
    private let inodeCount: Int
    let batchPool: BatchPool
    /// Whether this layer's Dekker pairs (the lease tables', the batch pool's cells') use the
    /// asymmetric fence, or the sequentially consistent fallback. Decided once, at attach.
    let asymmetricFence: Bool
    /// How windows are asked to fault (`.userfaultfd`, falling back to `.signals` where refused).
    let windowFaults: WindowFaultMechanism
    /// The mapping granularity windows assume instead of the image's alignment (a test's
    /// stand-in for a device-dax device aligned to 2 MiB); nil: the image's.
    let windowGranularity: Int?
    /// Set by the unmount's final layout break: new pins are refused from then on.
    let unmounting = UnmountFlag()

    /// Attaches the DAX layer to a mounted file system.
    /// - Parameters:
    ///   - policy: the default truncate policy.
    ///   - times: the wait timeout and the lease-break time.
    /// - Throws: `.inUse` when another DAX layer is attached, `.invalidArgument` when `fs` is not
    ///   mounted, `.io` when the zero page cannot be mapped.
    public convenience init(fs: FileSystem, policy: TruncatePolicy, times: PolicyTimes = PolicyTimes()) throws(FSError) {
        try self.init(
            fs: fs, policy: policy, times: times, asymmetricFence: AsymmetricFence.available, windowFaults: .userfaultfd)
    }

    /// Attaches the layer with its fence chosen: `asymmetricFence` false makes every Dekker pair
    /// use the sequentially consistent fallback, as where membarrier(2) is missing or refused
    /// (true where it is missing is taken as false). The tests run both sides.
    /// `windowFaults` `.signals` gives windows the fallback a user without userfaultfd gets;
    /// `windowGranularity` 2 MiB makes windows behave as over a device aligned to 2 MiB.
    init(
        fs: FileSystem, policy: TruncatePolicy, times: PolicyTimes, asymmetricFence: Bool,
        windowFaults: WindowFaultMechanism = .userfaultfd, windowGranularity: Int? = nil
    ) throws(FSError) {
        let page: UnsafeMutableRawPointer
        do {
            page = try mapMemory(
                "map the zero page", length: pageSize, protection: PROT_READ, flags: MAP_PRIVATE | MAP_ANONYMOUS)
        } catch {
            throw FSError(.io, error.description)
        }
        let statistics = PolicyStatistics()
        let source: any DAXBlockSource = fs
        // The reclaimer's thread must not keep the file system (or this layer) alive. Unowned,
        // not weak: this layer holds the file system and stops the reclaimer before it lets it
        // go, and a weak reference would give the file system a side table, which sends every
        // retain and release of it down the runtime's slow path (every fault and punch).
        let reclaimer = Reclaimer { [unowned fs] block, disposition in
            do { try fs.releaseFromLimbo(block, disposition) } catch {
                Self.report("could not release block \(block) (\(disposition)): \(error)")
            }
            statistics.leaveLimbo(disposition)
        }
        self.fs = fs
        self.source = source
        self.asymmetricFence = asymmetricFence && AsymmetricFence.available
        self.windowFaults = windowFaults
        self.windowGranularity = windowGranularity
        self.batchPool = BatchPool(usesCells: self.asymmetricFence)
        self.defaultPolicy = policy
        self.times = times
        self.zeroPage = page
        self.statistics = statistics
        self.reclaimer = reclaimer
        self.inodeCount = source.inodeCount
        self.spaceSlots = .allocate(capacity: max(1, source.inodeCount))
        self.spaceSlots.initialize(repeating: UnsafeAtomic<UInt>.Storage(0), count: max(1, source.inodeCount))
        self.pins = PinTable(blockCount: source.blockCount) { block, disposition in
            reclaimer.enqueue(block, disposition)
        }
        try source.attach(self)  // (on failure, deinit unmaps the zero page)
    }

    deinit {
        self.reclaimer.stop()
        self.batchPool.close()  // (pooled batches hold address spaces, which hold the pool)
        munmap(self.zeroPage, pageSize)
        self.spaceSlots.deallocate()
    }

    /// The address space of `id` (one per file, created on first use).
    /// - Throws: `.notFound` when `id` names no file that exists now: an inode number outside
    ///   the image or reserved, or a removed file's id (its inode may belong to another file by
    ///   now, whose space, which the breaker must find, it never displaces). A file removed after
    ///   its space was opened keeps the space, and every fault and pin through it fails.
    public func open(_ id: FileID) throws(FSError) -> AddressSpace {
        // (A caller's FileID may hold any number: the lock table traps outside its range.)
        guard id.inode >= 0, id.inode < self.inodeCount else { throw FSError(.notFound, "\(id): no such file") }
        if let space = self.space(inode: id.inode), space.id == id { return space }
        // Decided under the file's lock, so no removal or creation of the inode interleaves
        // (the file's lock, then the table's: the lock order).
        // A removed file's space that this replaces is let go after the locks (its teardown
        // waits for faults being served in its window, which may wait for this file's lock).
        var replaced: AddressSpace?
        defer { replaced = nil }
        return try self.source.invalidateLock(for: id).withReadLock { () throws(FSError) -> AddressSpace in
            guard self.source.isCurrent(id) else { throw FSError(.notFound, "\(id): no such file (removed)") }
            return self.spaces.withLock { spaces in
                if id.inode < spaces.count, let space = spaces[id.inode], space.id == id { return space }
                let space = AddressSpace(id: id, dax: self)
                if id.inode >= spaces.count { spaces += Array(repeating: nil, count: id.inode + 1 - spaces.count) }
                replaced = spaces[id.inode]  // (a removed file's space, which no breaker reads now)
                spaces[id.inode] = space
                UnsafeAtomic<UInt>(at: self.spaceSlots + id.inode).store(
                    UInt(bitPattern: Unmanaged.passUnretained(space).toOpaque()), ordering: .releasing)
                return space
            }
        }
    }

    func space(inode: Int) -> AddressSpace? {
        self.spaces.withLock { spaces in inode >= 0 && inode < spaces.count ? spaces[inode] : nil }
    }

    /// The space of inode `inode`, unretained, for a caller that holds the file's lock
    /// exclusively (the breaker): one load, no mutex (see `spaceSlots`). Valid while that lock
    /// is held.
    func spaceForBreaker(inode: Int) -> Unmanaged<AddressSpace>? {
        guard inode >= 0, inode < self.inodeCount else { return nil }
        let bits = UnsafeAtomic<UInt>(at: self.spaceSlots + inode).load(ordering: .acquiring)
        guard let opaque = UnsafeRawPointer(bitPattern: bits) else { return nil }
        return Unmanaged<AddressSpace>.fromOpaque(opaque)
    }

    /// Every address space opened so far, in inode order.
    var allSpaces: [AddressSpace] { self.spaces.withLock { $0.compactMap { $0 } } }

    /// Whether a pin of `term` may be taken now: not while the file system unmounts, and not a
    /// long-term one under `mainline` (mm/gup.c `check_vma_flags`: `FOLL_LONGTERM` on a DAX
    /// mapping fails with EOPNOTSUPP).
    func admitPin(_ term: PinTerm, of file: FileID) throws(FSError) {
        if term == .longTerm, self.defaultPolicy == .mainline {
            self.statistics.longTermRefused.wrappingIncrement(ordering: .relaxed)
            throw FSError(.notSupported, "\(file): a long-term pin of a DAX file is refused under mainline (EOPNOTSUPP)")
        }
        if self.unmounting.isRaised {
            throw FSError(.invalidArgument, "\(file): the file system is unmounting")
        }
    }

    /// Waits until every block whose last pin has dropped is released (back in the allocator or
    /// out of lost+found). The releases run on the reclaimer thread; call this before counting.
    public func waitForReclaims() { self.reclaimer.waitUntilIdle() }

    /// A failure with nobody to return it to (a background release): one line on stderr.
    static func report(_ message: String) {
        let line = "daxlab: " + message + "\n"
        _ = line.withCString { write(STDERR_FILENO, $0, strlen($0)) }
    }
}

// Every stored property is a `let` set in init; `zeroPage` points at a read-only page; the
// spaces, the pool, the counters and the reclaimer are thread-safe themselves.
extension DAXFileSystem: @unchecked Sendable {}
