import Atomics
import DaxlabSupport

/// Hashed wait queues on blocks: the analogue of the kernel's `wait_var_event` / `wake_up_var`
/// hashed wait-queue table. A truncate sleeps on a busy block's queue; the unpin that drops the
/// block's last pin wakes it. Nothing polls and nothing runs on a timer (a deadline only bounds a
/// wait that the policy itself bounds).
final class WaitQueues: @unchecked Sendable {
    private static let count = 64
    // Each bucket: its lock and condition variable (at stable heap addresses, in the
    // ConditionLock), and how many waiters it has (atomic, read without the lock by `wake`).
    // The lock's value is unused (an Int, not Void: see `ConditionLock`). The waiter counts are
    // raw atomic words, not objects: every unpin that drops a block's last pin reads one, and an
    // object there would cost a retain and a release shared by every thread.
    private let buckets: [ConditionLock<Int>] = (0..<WaitQueues.count).map { _ in ConditionLock(0, rank: .waitQueue) }
    private let waiters: UnsafeMutablePointer<UnsafeAtomic<Int>.Storage> = {
        let words = UnsafeMutablePointer<UnsafeAtomic<Int>.Storage>.allocate(capacity: WaitQueues.count)
        words.initialize(repeating: UnsafeAtomic<Int>.Storage(0), count: WaitQueues.count)
        return words
    }()
    /// Condition-variable wake-ups seen by waiters (tests: a waiter woken only by unpins sees one
    /// per unpin that dropped a block it waits on, never one per tick).
    let wakeups = ManagedAtomic<Int>(0)
    /// Broadcasts sent by unpins.
    let broadcasts = ManagedAtomic<Int>(0)
    /// Sleeps begun with a deadline, and those the deadline ended (the block still pinned): a
    /// sleep without one ends only by a wake-up, so these tell a timer from an unpin.
    let timedWaits = ManagedAtomic<Int>(0)
    let expiredWaits = ManagedAtomic<Int>(0)

    init() {}

    deinit { self.waiters.deallocate() }

    @inline(__always)
    private func waiterCount(_ index: Int) -> UnsafeAtomic<Int> { UnsafeAtomic(at: self.waiters + index) }

    @inline(__always)
    private func bucket(_ block: UInt32) -> Int { Int((block &* 0x9E37_79B1) >> 26) % Self.count }

    /// Sleeps until `isIdle()` holds, or until `deadline` (CLOCK_MONOTONIC ns) passes.
    /// - Returns: whether `isIdle()` held (false: the deadline passed first).
    func wait(on block: UInt32, deadline: UInt64?, until isIdle: () -> Bool) -> Bool {
        let index = self.bucket(block)
        if deadline != nil { self.timedWaits.wrappingIncrement(ordering: .relaxed) }
        // Announce the waiter before checking (sequentially consistent on both sides): either the
        // unpinner sees a waiter and broadcasts, or this check sees the pin gone.
        self.waiterCount(index).wrappingIncrement(ordering: .sequentiallyConsistent)
        defer { self.waiterCount(index).wrappingDecrement(ordering: .sequentiallyConsistent) }
        let woken = self.buckets[index].wait(
            until: { _ in isIdle() }, deadline: deadline,
            wakeups: { self.wakeups.wrappingIncrement(ordering: .relaxed) }, then: { _ in true })
        if woken == nil { self.expiredWaits.wrappingIncrement(ordering: .relaxed) }
        return woken ?? false
    }

    /// Whether `block`'s bucket has waiters (the load `wake` starts with, for an inline check).
    @inline(__always)
    func hasWaiters(_ block: UInt32) -> Bool {
        self.waiterCount(self.bucket(block)).load(ordering: .sequentiallyConsistent) > 0
    }

    /// Whether a thread sleeps on `block`'s bucket now (in its condition wait, not only announced:
    /// a waiter announces itself before its last check, and may never sleep).
    func hasSleepers(_ block: UInt32) -> Bool { self.buckets[self.bucket(block)].sleepers > 0 }

    /// Wakes the waiters of `block`'s bucket, if there are any. Called by the unpin that drops a
    /// block's last pin, after the sequentially consistent decrement.
    @inline(__always)
    func wake(_ block: UInt32) {
        let index = self.bucket(block)
        guard self.waiterCount(index).load(ordering: .sequentiallyConsistent) > 0 else { return }
        self.buckets[index].broadcast()
        self.broadcasts.wrappingIncrement(ordering: .relaxed)
    }
}
