#if canImport(Glibc)
import Glibc
#endif

/// A reader-writer lock (pthread_rwlock, writer-preferring): a file's lock, shared by reads and
/// faults, exclusive for changes to its size or block map. The analogue of a file system's
/// per-inode `i_rwsem` / `invalidate_lock`.
///
/// A handle, not an object: the pthread_rwlock_t lives in a `ReadWriteLocks` table, which must
/// outlive every handle to it (a file system holds its table; an address space holds the file
/// system). So taking a file's lock counts no references.
public struct ReadWriteLock: @unchecked Sendable {
    // A stable heap address, owned by the table; pthread guards what is there.
    @usableFromInline let lock: UnsafeMutablePointer<pthread_rwlock_t>

    @usableFromInline init(_ lock: UnsafeMutablePointer<pthread_rwlock_t>) { self.lock = lock }

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

/// `count` reader-writer locks in one allocation, one cache line each (two files' locks never
/// share a line), destroyed with the table.
public final class ReadWriteLocks: @unchecked Sendable {
    public let count: Int
    @usableFromInline let storage: UnsafeMutableRawPointer
    @usableFromInline static let stride = (MemoryLayout<pthread_rwlock_t>.stride + 63) & ~63

    public init(count: Int) {
        precondition(count >= 0, "a negative count of locks")
        self.count = count
        self.storage = .allocate(byteCount: max(1, count) * Self.stride, alignment: 64)
        var attributes = pthread_rwlockattr_t()
        pthread_rwlockattr_init(&attributes)
        pthread_rwlockattr_setkind_np(&attributes, Int32(PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP))
        for index in 0..<count {
            let lock = (self.storage + index * Self.stride).bindMemory(to: pthread_rwlock_t.self, capacity: 1)
            lock.initialize(to: pthread_rwlock_t())
            pthread_rwlock_init(lock, &attributes)
        }
        pthread_rwlockattr_destroy(&attributes)
    }

    deinit {
        for index in 0..<self.count {
            pthread_rwlock_destroy((self.storage + index * Self.stride).assumingMemoryBound(to: pthread_rwlock_t.self))
        }
        self.storage.deallocate()
    }

    /// The `index`-th lock (traps out of range, as an array would).
    @inlinable
    public subscript(index: Int) -> ReadWriteLock {
        precondition(UInt(bitPattern: index) < UInt(bitPattern: self.count), "lock \(index) of \(self.count)")
        return ReadWriteLock((self.storage + index * Self.stride).assumingMemoryBound(to: pthread_rwlock_t.self))
    }
}
