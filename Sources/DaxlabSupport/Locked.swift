#if canImport(Glibc)
import Glibc
#endif
import Atomics
import CShims

/// A value behind a pthread mutex.
///
/// daxlab uses this rather than `Synchronization.Mutex` because ThreadSanitizer understands
/// pthread mutexes: `Mutex` parks contended threads with futex calls inside the uninstrumented
/// standard library, so TSan misses the happens-before edge and reports races that are not there,
/// which would hide real ones in `make tsan`.
///
/// `Value` must not be zero-sized: ThreadSanitizer sees a `Void` value at the same address as
/// the object's first field and reports the lock's own reads as races with the value's writes.
public final class Locked<Value>: @unchecked Sendable {
    // `value` is read and written only between pthread_mutex_lock and unlock of `mutex`, which
    // lives at a stable heap address for the object's life. The mutex is what makes each access
    // exclusive (a nested withLock on one thread would deadlock, not overlap), so the runtime's
    // dynamic exclusivity check, a thread-local access-set insert and removal around every
    // `body`, is left out: it was a tenth of a hole punch's time.
    // (Usable from inline: `withLock` is inlined into its callers and specialized there, instead of
    // running generic code that calls its closure through a context: 40 instructions a section.
    // Public, not package: a package function's inlinable body was not inlined across modules.)
    @usableFromInline let mutex: UnsafeMutablePointer<pthread_mutex_t>
    @usableFromInline @exclusivity(unchecked) var value: Value
    #if DEBUG
    /// Its place in the lock order (`LockOrder` checks it; release builds keep no rank).
    public let rank: LockRank
    #endif

    /// - Parameter rank: its place in the lock order (docs/architecture.md); a lock that never
    ///   has another taken under it may leave it as a `leaf`.
    public init(_ value: Value, rank: LockRank = .leaf) {
        self.value = value
        self.mutex = HeapMutex.make()
        #if DEBUG
        self.rank = rank
        #endif
    }

    deinit { HeapMutex.free(self.mutex) }

    @inlinable
    public func withLock<Result, Failure: Error>(_ body: (inout Value) throws(Failure) -> Result) throws(Failure) -> Result {
        #if DEBUG
        LockOrder.acquire(self.mutex, self.rank, index: -1)
        defer { LockOrder.release(self.mutex, self.rank) }
        #endif
        pthread_mutex_lock(self.mutex)
        defer { pthread_mutex_unlock(self.mutex) }
        return try body(&self.value)
    }

    /// Whether the lock's word says a thread may sleep on it (glibc's word is 2 from the moment a
    /// locker that found it held decides to sleep, until the unlock by a holder that took it that
    /// way): so also true while a thread that had to wait holds it. A test that took the lock
    /// without contention and then sees it true knows another thread sleeps, or is about to sleep,
    /// on it; tests wait for that before they act on the sleeper, instead of waiting for time.
    public var hasWaiters: Bool { CShims_mutex_has_waiters(self.mutex) != 0 }

    /// Runs `body` if the lock is free now; nil if another thread holds it.
    /// Runs `body` if the lock is free now; nil if another thread holds it. (A try-lock cannot
    /// deadlock: the lock order does not check it, only what is taken under it.)
    @inlinable
    public func withLockIfAvailable<Result, Failure: Error>(
        _ body: (inout Value) throws(Failure) -> Result
    ) throws(Failure) -> Result? {
        guard pthread_mutex_trylock(self.mutex) == 0 else { return nil }
        #if DEBUG
        LockOrder.acquiredWithoutWaiting(self.mutex, self.rank, index: -1)
        defer { LockOrder.release(self.mutex, self.rank) }
        #endif
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

/// `count` values, each behind its own futex mutex (`FutexMutex`), in one allocation: a lock
/// stripe per slot, each slot on cache lines of its own (two stripes never share a line). Unlike
/// an array of `Locked`, taking a stripe counts no reference: there is no object per stripe to
/// retain. The fault stripes are its user: their lock is on the alloc.block cycle's path twice.
public final class LockedArray<Value>: @unchecked Sendable {
    public let count: Int
    // Slot `i` at `storage + i * stride`: its mutex word, then its value at `valueOffset`. Values
    // are read and written only between the lock and unlock of their slot's mutex.
    @usableFromInline let storage: UnsafeMutableRawPointer
    @usableFromInline let stride: Int
    @usableFromInline let valueOffset: Int
    #if DEBUG
    /// The slots' place in the lock order (one rank for all; `LockOrder` checks it).
    public let rank: LockRank
    #endif

    /// `count` slots, each holding `make(index)`.
    /// - Parameter rank: the slots' place in the lock order (docs/architecture.md).
    public init(count: Int, rank: LockRank = .leaf, _ make: (Int) -> Value) {
        #if DEBUG
        self.rank = rank
        #endif
        precondition(count > 0, "a LockedArray needs a slot")
        let wordSize = MemoryLayout<UInt32.AtomicRepresentation>.stride
        let alignment = max(MemoryLayout<Value>.alignment, MemoryLayout<UInt32.AtomicRepresentation>.alignment)
        self.valueOffset = (wordSize + alignment - 1) / alignment * alignment
        self.stride = (self.valueOffset + MemoryLayout<Value>.size + 63) & ~63
        self.count = count
        self.storage = .allocate(byteCount: count * self.stride, alignment: max(64, alignment))
        for index in 0..<count {
            (self.storage + index * self.stride).initializeMemory(
                as: UInt32.AtomicRepresentation.self, to: UInt32.AtomicRepresentation(0))
            (self.storage + index * self.stride + self.valueOffset).initializeMemory(as: Value.self, to: make(index))
        }
    }

    deinit {
        for index in 0..<self.count {
            (self.storage + index * self.stride + self.valueOffset).assumingMemoryBound(to: Value.self).deinitialize(count: 1)
        }
        self.storage.deallocate()
    }

    /// Slot `index`'s mutex.
    @inlinable
    func mutex(_ index: Int) -> FutexMutex {
        FutexMutex((self.storage + index * self.stride).assumingMemoryBound(to: UInt32.AtomicRepresentation.self))
    }

    /// Runs `body` on slot `index`'s value with its mutex held (traps out of range).
    @inlinable
    public func withLock<Result, Failure: Error>(
        _ index: Int, _ body: (inout Value) throws(Failure) -> Result
    ) throws(Failure) -> Result {
        precondition(UInt(bitPattern: index) < UInt(bitPattern: self.count), "slot \(index) of \(self.count)")
        let mutex = self.mutex(index)
        #if DEBUG
        LockOrder.acquire(mutex.word, self.rank, index: index)
        defer { LockOrder.release(mutex.word, self.rank) }
        #endif
        mutex.lock()
        defer { mutex.unlock() }
        return try body(&(self.storage + index * self.stride + self.valueOffset).assumingMemoryBound(to: Value.self).pointee)
    }
}
