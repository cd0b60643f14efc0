#if canImport(Glibc)
import Glibc
#endif

/// A value behind a pthread mutex.
///
/// daxlab uses this rather than `Synchronization.Mutex` because ThreadSanitizer understands
/// pthread mutexes: `Mutex` parks contended threads with futex calls inside the uninstrumented
/// standard library, so TSan misses the happens-before edge and reports races that are not there,
/// which would hide real ones in `make tsan`.
///
/// `Value` must not be zero-sized: ThreadSanitizer sees a `Void` value at the same address as
/// the object's first field and reports the lock's own reads as races with the value's writes.
package final class Locked<Value>: @unchecked Sendable {
    // `value` is read and written only between pthread_mutex_lock and unlock of `mutex`, which
    // lives at a stable heap address for the object's life. The mutex is what makes each access
    // exclusive (a nested withLock on one thread would deadlock, not overlap), so the runtime's
    // dynamic exclusivity check, a thread-local access-set insert and removal around every
    // `body`, is left out: it was a tenth of a hole punch's time.
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    @exclusivity(unchecked) private var value: Value

    package init(_ value: Value) {
        self.value = value
        self.mutex = HeapMutex.make()
    }

    deinit { HeapMutex.free(self.mutex) }

    package func withLock<Result, Failure: Error>(_ body: (inout Value) throws(Failure) -> Result) throws(Failure) -> Result {
        pthread_mutex_lock(self.mutex)
        defer { pthread_mutex_unlock(self.mutex) }
        return try body(&self.value)
    }

    /// Runs `body` if the lock is free now; nil if another thread holds it.
    package func withLockIfAvailable<Result, Failure: Error>(
        _ body: (inout Value) throws(Failure) -> Result
    ) throws(Failure) -> Result? {
        guard pthread_mutex_trylock(self.mutex) == 0 else { return nil }
        defer { pthread_mutex_unlock(self.mutex) }
        return try body(&self.value)
    }
}

/// A pthread mutex at a stable heap address (a pthread object must not move, and Swift may move
/// a stored struct): made and freed for `Locked` and `ConditionLock`.
enum HeapMutex {
    static func make() -> UnsafeMutablePointer<pthread_mutex_t> {
        let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
        return mutex
    }

    static func free(_ mutex: UnsafeMutablePointer<pthread_mutex_t>) {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }
}
