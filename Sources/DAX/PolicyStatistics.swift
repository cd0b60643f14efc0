import Atomics
import DaxFS

/// Counters of what the policies did, for the race harness, the benchmarks and tests. All
/// relaxed atomics: each is a count, none orders anything.
public final class PolicyStatistics: Sendable {
    /// Truncates, punches and unlinks that slept at least once (`wait`, `mainline`, `lease-break`).
    public let truncatesWaited = ManagedAtomic<Int>(0)
    /// Blocks held in limbo now (sequestered in lost+found, or deferred), and the most at once.
    public let sequesteredNow = ManagedAtomic<Int>(0)
    public let sequesteredPeak = ManagedAtomic<Int>(0)
    public let deferredNow = ManagedAtomic<Int>(0)
    public let deferredPeak = ManagedAtomic<Int>(0)
    /// `fail`: refused with EBUSY.
    public let refusedBusy = ManagedAtomic<Int>(0)
    /// `wait`, `mainline` and `lease-break`: sleeps on a busy block.
    public let waits = ManagedAtomic<Int>(0)
    /// `sequester`, `deferred`: blocks claimed for release on last unpin.
    public let claimed = ManagedAtomic<Int>(0)
    /// `lease-break`: holders notified, and leases revoked after the break time.
    public let leaseBreaks = ManagedAtomic<Int>(0)
    public let revocations = ManagedAtomic<Int>(0)
    /// `none`: pinned blocks freed anyway (each one a DMA-after-free waiting to happen).
    public let pinnedBlocksFreed = ManagedAtomic<Int>(0)
    /// On-demand-paging subscriptions invalidated by truncates and punches (`odp`'s currency).
    public let odpInvalidations = ManagedAtomic<Int>(0)
    /// Window faults the fault service served (the CPU's and the kernel's), and those that
    /// mapped a whole 2 MiB range at once (huge faults).
    public let windowFaults = ManagedAtomic<Int>(0)
    public let hugeFaults = ManagedAtomic<Int>(0)
    /// Faults the kernel took in kernel pins' views (userfaultfd): its GUP, for a pin's I/O or
    /// registration, reached a page not mapped yet or unmapped since.
    public let viewFaults = ManagedAtomic<Int>(0)
    /// `mainline`: long-term pins refused (EOPNOTSUPP).
    public let longTermRefused = ManagedAtomic<Int>(0)
    /// Unmounts with pins outstanding: waited for them (`wait`, `mainline`, `sequester`,
    /// `deferred`), revoked them (`lease-break`), refused (`fail`, EBUSY), or let them outlive
    /// the unmount (`none`).
    public let unmountsWaited = ManagedAtomic<Int>(0)
    public let unmountsRefused = ManagedAtomic<Int>(0)
    public let pinsOutlivingUnmount = ManagedAtomic<Int>(0)

    init() {}

    func enterLimbo(_ disposition: BusyBlockDisposition) {
        let (now, peak) = disposition == .sequester
            ? (self.sequesteredNow, self.sequesteredPeak) : (self.deferredNow, self.deferredPeak)
        let current = now.wrappingIncrementThenLoad(ordering: .relaxed)
        var seen = peak.load(ordering: .relaxed)
        while current > seen {
            let (exchanged, original) = peak.weakCompareExchange(expected: seen, desired: current, ordering: .relaxed)
            if exchanged { break }
            seen = original
        }
    }

    func leaveLimbo(_ disposition: BusyBlockDisposition) {
        (disposition == .sequester ? self.sequesteredNow : self.deferredNow).wrappingDecrement(ordering: .relaxed)
    }

    /// Window faults served so far, and how many of them were huge faults (read together, for
    /// a caller that counts what one access cost).
    public var windowFaultCounts: (served: Int, huge: Int) {
        (self.windowFaults.load(ordering: .relaxed), self.hugeFaults.load(ordering: .relaxed))
    }

    /// Blocks in limbo now (sequestered plus deferred).
    public var limboNow: Int {
        self.sequesteredNow.load(ordering: .relaxed) + self.deferredNow.load(ordering: .relaxed)
    }
}
