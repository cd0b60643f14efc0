import Atomics
import DaxFS
import Pmem

#if canImport(Glibc)
import Glibc
#endif

/// DaxFS with the DAX layer attached: per-file address spaces, the pin table, pin batches, and
/// the truncate policy that every truncate, punch and unlink goes through.
public final class DAXFileSystem: @unchecked Sendable {
    // Immutable after init except through the Locked, atomic and counter members named below.
    public let fs: FileSystem
    public let pins: PinTable
    /// The policy truncate, punch and unlink use unless a call names its own.
    public let defaultPolicy: TruncatePolicy
    public let times: PolicyTimes
    /// A 4 KiB page of zeros, mapped read-only: what a read fault on a hole returns.
    let zeroPage: UnsafeMutableRawPointer
    private let spaces = Locked<[Int: AddressSpace]>([:])
    private let batchPool = BatchPool()
    private let leaseCounter = ManagedAtomic<UInt64>(0)
    public let statistics: PolicyStatistics

    /// Attaches the DAX layer to a mounted file system.
    /// - Parameters:
    ///   - policy: the default truncate policy.
    ///   - times: the wait timeout and the lease-break time.
    public init(fs: FileSystem, policy: TruncatePolicy, times: PolicyTimes = PolicyTimes()) {
        self.fs = fs
        self.defaultPolicy = policy
        self.times = times
        let page = mmap(nil, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)!
        mprotect(page, 4096, PROT_READ)
        self.zeroPage = page
        let statistics = PolicyStatistics()
        self.statistics = statistics
        self.pins = PinTable(blockCount: fs.geometry.blockCount) { [weak fs] block, kind in
            switch kind {
            case .sequestered: try? fs?.releaseSequestered(block)
            case .deferred: fs?.releaseDeferred(block)
            }
            statistics.leaveLimbo(kind == .sequestered ? .sequester : .deferRelease)
        }
        fs.attach(self)
    }

    deinit { munmap(self.zeroPage, 4096) }

    /// The address space of `id` (one per file, created on first use).
    public func open(_ id: FileID) -> AddressSpace {
        self.spaces.withLock { spaces in
            if let space = spaces[id.inode], space.id == id { return space }
            let space = AddressSpace(id: id, dax: self)
            spaces[id.inode] = space
            return space
        }
    }

    func space(inode: Int) -> AddressSpace? { self.spaces.withLock { $0[inode] } }

    // MARK: Truncate and punch under a policy

    /// `FileSystem.truncate` under `policy` (default: the mount's).
    public func truncate(_ id: FileID, size: Int, policy: TruncatePolicy? = nil) throws(FSError) {
        try self.withPolicy(policy) { () throws(FSError) in try self.fs.truncate(id, size: size) }
    }

    /// `FileSystem.punchHole` under `policy` (default: the mount's).
    public func punchHole(_ id: FileID, offset: Int, length: Int, policy: TruncatePolicy? = nil) throws(FSError) {
        try self.withPolicy(policy) { () throws(FSError) in try self.fs.punchHole(id, offset: offset, length: length) }
    }

    /// `FileSystem.unlink` under `policy` (default: the mount's).
    public func unlink(_ name: String, policy: TruncatePolicy? = nil) throws(FSError) {
        try self.withPolicy(policy) { () throws(FSError) in try self.fs.unlink(name) }
    }

    /// One truncate, punch or unlink in progress on this thread: its policy, and whether it slept.
    final class Call: Sendable {
        let policy: TruncatePolicy?
        let slept = ManagedAtomic<Bool>(false)
        init(policy: TruncatePolicy?) { self.policy = policy }
    }

    @TaskLocal static var call: Call?

    private func withPolicy(_ policy: TruncatePolicy?, _ body: () throws(FSError) -> Void) throws(FSError) {
        self.statistics.truncates.wrappingIncrement(ordering: .relaxed)
        let call = Call(policy: policy)
        let start = MonotonicClock.now()
        defer {
            self.statistics.record(latency: MonotonicClock.now() - start)
            if call.slept.load(ordering: .relaxed) { self.statistics.truncatesWaited.wrappingIncrement(ordering: .relaxed) }
        }
        let result: Result<Void, FSError> = Self.$call.withValue(call) {
            Result { () throws(FSError) in try body() }
        }
        try result.get()
    }

    var currentPolicy: TruncatePolicy { Self.call?.policy ?? self.defaultPolicy }

    // MARK: Pin batches

    func takeBatch() -> PinBatch { self.batchPool.take() }

    func returnBatch(_ batch: PinBatch) { self.batchPool.put(batch) }

    func nextLeaseID() -> UInt64 { self.leaseCounter.wrappingIncrementThenLoad(ordering: .relaxed) }
}

/// Counters of what the policies did, for the race harness and tests.
public final class PolicyStatistics: Sendable {
    public let truncates = ManagedAtomic<Int>(0)
    /// Truncates, punches and unlinks that slept at least once (`wait`, `lease-break`).
    public let truncatesWaited = ManagedAtomic<Int>(0)
    /// Blocks held in limbo now (sequestered in lost+found, or deferred), and the most at once.
    public let sequesteredNow = ManagedAtomic<Int>(0)
    public let sequesteredPeak = ManagedAtomic<Int>(0)
    public let deferredNow = ManagedAtomic<Int>(0)
    public let deferredPeak = ManagedAtomic<Int>(0)
    /// `fail`: refused with EBUSY.
    public let refusedBusy = ManagedAtomic<Int>(0)
    /// `wait` and `lease-break`: sleeps on a busy block.
    public let waits = ManagedAtomic<Int>(0)
    /// `sequester`, `deferred`: blocks claimed for release on last unpin.
    public let claimed = ManagedAtomic<Int>(0)
    /// `lease-break`: holders notified, and leases revoked after the break time.
    public let leaseBreaks = ManagedAtomic<Int>(0)
    public let revocations = ManagedAtomic<Int>(0)
    /// `none`: pinned blocks freed anyway (each one a DMA-after-free waiting to happen).
    public let pinnedBlocksFreed = ManagedAtomic<Int>(0)
    private let latencies = Locked<[UInt64]>([])

    init() {}

    func enterLimbo(_ handling: BusyBlockHandling) {
        let (now, peak) = handling == .sequester ? (self.sequesteredNow, self.sequesteredPeak) : (self.deferredNow, self.deferredPeak)
        let current = now.wrappingIncrementThenLoad(ordering: .relaxed)
        var seen = peak.load(ordering: .relaxed)
        while current > seen {
            let (exchanged, original) = peak.weakCompareExchange(expected: seen, desired: current, ordering: .relaxed)
            if exchanged { break }
            seen = original
        }
    }

    func leaveLimbo(_ handling: BusyBlockHandling) {
        (handling == .sequester ? self.sequesteredNow : self.deferredNow).wrappingDecrement(ordering: .relaxed)
    }

    func record(latency: UInt64) { self.latencies.withLock { $0.append(latency) } }

    /// Every truncate/punch/unlink latency so far, in ns, and clears them.
    public func drainLatencies() -> [UInt64] { self.latencies.withLock { latencies in
        defer { latencies.removeAll(keepingCapacity: true) }
        return latencies
    } }
}
