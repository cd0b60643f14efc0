#if canImport(Glibc)
import Glibc
#endif

/// A reader-writer lock (pthread_rwlock, writer-preferring): a file's lock, shared by reads and
/// faults, exclusive for changes to its size or block map. The analogue of a file system's
/// per-inode `i_rwsem` / `invalidate_lock`.
public final class ReadWriteLock: @unchecked Sendable {
    // The pthread_rwlock_t lives at a stable heap address for the lock's life; pthread guards it.
    private let lock: UnsafeMutablePointer<pthread_rwlock_t>

    public init() {
        self.lock = .allocate(capacity: 1)
        var attributes = pthread_rwlockattr_t()
        pthread_rwlockattr_init(&attributes)
        pthread_rwlockattr_setkind_np(&attributes, Int32(PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP))
        pthread_rwlock_init(self.lock, &attributes)
        pthread_rwlockattr_destroy(&attributes)
    }

    deinit {
        pthread_rwlock_destroy(self.lock)
        self.lock.deallocate()
    }

    @inlinable
    public func withReadLock<Result, Failure: Error>(_ body: () throws(Failure) -> Result) throws(Failure) -> Result {
        self.lockShared()
        defer { self.unlock() }
        return try body()
    }

    @inlinable
    public func withWriteLock<Result, Failure: Error>(_ body: () throws(Failure) -> Result) throws(Failure) -> Result {
        self.lockExclusive()
        defer { self.unlock() }
        return try body()
    }

    /// Takes the lock shared (prefer `withReadLock`).
    public func lockShared() {
        let result = pthread_rwlock_rdlock(self.lock)
        precondition(result == 0, "pthread_rwlock_rdlock: \(result) (EDEADLK: this thread holds it exclusively)")
    }
    /// Takes the lock exclusively (prefer `withWriteLock`).
    public func lockExclusive() {
        let result = pthread_rwlock_wrlock(self.lock)
        precondition(result == 0, "pthread_rwlock_wrlock: \(result) (EDEADLK: this thread holds it already)")
    }
    /// Releases the lock, however it was taken.
    public func unlock() {
        let result = pthread_rwlock_unlock(self.lock)
        precondition(result == 0, "pthread_rwlock_unlock: \(result)")
    }
}
