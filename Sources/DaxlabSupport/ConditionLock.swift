#if canImport(Glibc)
import Glibc
#endif
import Atomics

/// A value behind a pthread mutex, with a condition variable to sleep on until the value (or
/// anything the caller can observe under the mutex) says to go on: the shape of NIO's
/// `ConditionLock` and of the kernel's wait queues.
///
/// The condition variable waits on CLOCK_MONOTONIC, so deadlines are `MonotonicClock.now()`
/// nanoseconds and a change of the wall clock cannot stretch a wait.
///
/// `Value` must not be zero-sized: ThreadSanitizer sees a `Void` value at the same address as
/// the object's first field and reports the lock's own reads as races with the value's writes.
package final class ConditionLock<Value>: @unchecked Sendable {
    // `value` is touched only with `mutex` held; `mutex` and `condition` live at stable heap
    // addresses for the object's life.
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let condition: UnsafeMutablePointer<pthread_cond_t>
    private var value: Value
    /// Threads inside the condition wait now: raised under the mutex just before the sleep and
    /// lowered after it, so a thread counted here is asleep (or woken and not yet back), and a
    /// broadcast sent once it is counted reaches it.
    private let sleeping = ManagedAtomic<Int>(0)
    #if DEBUG
    /// Its place in the lock order (`LockOrder` checks it).
    package let rank: LockRank
    #endif

    /// - Parameter rank: its place in the lock order (docs/architecture.md); a lock that never
    ///   has another taken under it may leave it as a `leaf`.
    package init(_ value: Value, rank: LockRank = .leaf) {
        self.value = value
        self.mutex = HeapMutex.make()
        #if DEBUG
        self.rank = rank
        #endif
        self.condition = .allocate(capacity: 1)
        self.condition.initialize(to: pthread_cond_t())
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(self.condition, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        pthread_cond_destroy(self.condition)
        self.condition.deallocate()
        HeapMutex.free(self.mutex)
    }

    package func withLock<Result, Failure: Error>(_ body: (inout Value) throws(Failure) -> Result) throws(Failure) -> Result {
        self.lock()
        defer { self.unlock() }
        return try body(&self.value)
    }

    /// Runs `body` under the lock, then wakes every waiter.
    package func withLockThenBroadcast<Result>(_ body: (inout Value) -> Result) -> Result {
        self.lock()
        defer {
            pthread_cond_broadcast(self.condition)
            self.unlock()
        }
        return body(&self.value)
    }

    /// Sleeps until `ready(value)` holds, then runs `body` still holding the lock.
    /// - Parameters:
    ///   - deadline: CLOCK_MONOTONIC nanoseconds after which to give up; nil waits forever.
    ///   - wakeups: called once per return from the condition variable (tests count them).
    /// - Returns: what `body` returned, or nil when the deadline passed with `ready` still false.
    package func wait<Result>(
        until ready: (inout Value) -> Bool, deadline: UInt64? = nil, wakeups: (() -> Void)? = nil,
        then body: (inout Value) -> Result
    ) -> Result? {
        self.lock()
        defer { self.unlock() }
        while !ready(&self.value) {
            // The sleep releases the mutex and takes it again: so does the lock order's record.
            #if DEBUG
            LockOrder.release(self.mutex, self.rank)
            #endif
            var timedOut = false
            self.sleeping.wrappingIncrement(ordering: .relaxed)
            defer { self.sleeping.wrappingDecrement(ordering: .relaxed) }
            if let deadline {
                var time = timespec(tv_sec: Int(deadline / 1_000_000_000), tv_nsec: Int(deadline % 1_000_000_000))
                timedOut = pthread_cond_timedwait(self.condition, self.mutex, &time) == ETIMEDOUT
            } else {
                pthread_cond_wait(self.condition, self.mutex)
            }
            #if DEBUG
            LockOrder.acquire(self.mutex, self.rank, index: -1)
            #endif
            if timedOut { return ready(&self.value) ? body(&self.value) : nil }
            wakeups?()
        }
        return body(&self.value)
    }

    /// How many threads sleep in `wait` now (tests wait for a sleeper before they wake it).
    package var sleepers: Int { self.sleeping.load(ordering: .relaxed) }

    /// Wakes every waiter (taking the lock, so a waiter between its check and its sleep is not missed).
    package func broadcast() {
        self.lock()
        pthread_cond_broadcast(self.condition)
        self.unlock()
    }

    private func lock() {
        #if DEBUG
        LockOrder.acquire(self.mutex, self.rank, index: -1)
        #endif
        pthread_mutex_lock(self.mutex)
    }

    private func unlock() {
        pthread_mutex_unlock(self.mutex)
        #if DEBUG
        LockOrder.release(self.mutex, self.rank)
        #endif
    }
}
