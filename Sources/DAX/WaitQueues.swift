#if canImport(Glibc)
import Glibc
#endif
import Atomics

/// Hashed wait queues on blocks: the analogue of the kernel's `wait_var_event` / `wake_up_var`
/// hashed wait-queue table. A truncate sleeps on a busy block's queue; the unpin that drops the
/// block's last pin wakes it. Nothing polls and nothing runs on a timer (a deadline only bounds a
/// wait that the policy itself bounds).
final class WaitQueues: @unchecked Sendable {
    // Each bucket's mutex and condition variable live at stable heap addresses for the table's
    // life; `waiters` is atomic. Nothing else is stored.
    private struct Bucket {
        var mutex = pthread_mutex_t()
        var condition = pthread_cond_t()
    }

    private let buckets: UnsafeMutablePointer<Bucket>
    private let waiters: UnsafeMutablePointer<UnsafeAtomic<Int>.Storage>
    private let count = 64
    /// Condition-variable wake-ups seen by waiters (tests: a waiter woken only by unpins sees one
    /// per unpin that dropped a block it waits on, never one per tick).
    let wakeups = ManagedAtomic<Int>(0)
    /// Broadcasts sent by unpins.
    let broadcasts = ManagedAtomic<Int>(0)

    init() {
        self.buckets = .allocate(capacity: self.count)
        self.waiters = .allocate(capacity: self.count)
        for index in 0..<self.count {
            (self.buckets + index).initialize(to: Bucket())
            pthread_mutex_init(&self.buckets[index].mutex, nil)
            var attributes = pthread_condattr_t()
            pthread_condattr_init(&attributes)
            pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
            pthread_cond_init(&self.buckets[index].condition, &attributes)
            pthread_condattr_destroy(&attributes)
            (self.waiters + index).initialize(to: UnsafeAtomic<Int>.Storage(0))
        }
    }

    deinit {
        for index in 0..<self.count {
            pthread_mutex_destroy(&self.buckets[index].mutex)
            pthread_cond_destroy(&self.buckets[index].condition)
        }
        self.buckets.deallocate()
        self.waiters.deallocate()
    }

    private func bucket(_ block: UInt32) -> Int { Int((block &* 0x9E37_79B1) >> 26) % self.count }

    private func waiterCount(_ index: Int) -> UnsafeAtomic<Int> { UnsafeAtomic(at: self.waiters + index) }

    /// Sleeps until `isIdle()` holds, or until `deadline` (CLOCK_MONOTONIC ns) passes.
    /// - Returns: whether `isIdle()` held (false: the deadline passed first).
    func wait(on block: UInt32, deadline: UInt64?, until isIdle: () -> Bool) -> Bool {
        let index = self.bucket(block)
        // Announce the waiter before checking (sequentially consistent on both sides): either the
        // unpinner sees a waiter and broadcasts, or this check sees the pin gone.
        self.waiterCount(index).wrappingIncrement(ordering: .sequentiallyConsistent)
        defer { self.waiterCount(index).wrappingDecrement(ordering: .sequentiallyConsistent) }
        pthread_mutex_lock(&self.buckets[index].mutex)
        defer { pthread_mutex_unlock(&self.buckets[index].mutex) }
        while !isIdle() {
            if let deadline {
                var time = timespec(tv_sec: Int(deadline / 1_000_000_000), tv_nsec: Int(deadline % 1_000_000_000))
                let result = pthread_cond_timedwait(&self.buckets[index].condition, &self.buckets[index].mutex, &time)
                if result == ETIMEDOUT { return isIdle() }
            } else {
                pthread_cond_wait(&self.buckets[index].condition, &self.buckets[index].mutex)
            }
            self.wakeups.wrappingIncrement(ordering: .relaxed)
        }
        return true
    }

    /// Wakes the waiters of `block`'s bucket, if there are any. Called by the unpin that drops a
    /// block's last pin, after the sequentially consistent decrement.
    @inline(__always)
    func wake(_ block: UInt32) {
        let index = self.bucket(block)
        guard self.waiterCount(index).load(ordering: .sequentiallyConsistent) > 0 else { return }
        pthread_mutex_lock(&self.buckets[index].mutex)
        pthread_cond_broadcast(&self.buckets[index].condition)
        pthread_mutex_unlock(&self.buckets[index].mutex)
        self.broadcasts.wrappingIncrement(ordering: .relaxed)
    }
}
