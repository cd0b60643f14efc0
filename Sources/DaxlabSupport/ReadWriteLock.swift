import Atomics
import CShims

/// A reader-writer lock on a futex word: a file's lock, shared by reads and faults, exclusive
/// for changes to its size or block map (the analogue of a file system's per-inode `i_rwsem` /
/// `invalidate_lock`). Writer-preferring, like the `PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP`
/// rwlock it replaces: once a writer waits, new readers wait behind it, so a truncate is not
/// starved by a stream of faults. And readers are not starved by a writer that loops alone: a
/// writer leaving the lock to sleeping readers, with no writer asleep, hands it to them (they are
/// woken with the lock marked theirs, and no writer takes it before one of them has). Writers
/// that loop together still can starve readers: a writer leaving wakes a sleeping writer first.
/// Not recursive: a thread that takes it twice exclusively, or exclusively while it holds it
/// shared, deadlocks.
///
/// Why not pthread_rwlock: one uncontended shared lock, unlock and exclusive lock, unlock cost
/// glibc nine locked instructions and about 250 others (its rwlock keeps phases and a separate
/// writer futex in every operation); here each costs one locked instruction and a handful of
/// others, the floor for a lock that readers share. A write fault plus a punch takes both.
///
/// The algorithm is the one of Rust's standard library (`sys/sync/rwlock/futex.rs`), written
/// anew, with one bit more. `state` holds the number of readers in its low 29 bits (all ones: a
/// writer holds it), bit 29 says the lock was handed to woken readers (the first reader in
/// clears it), bit 30 says readers sleep, bit 31 says writers sleep. Readers sleep on `state`; writers
/// sleep on `writerWakeups`, a counter bumped before every wake-up of a writer, so a writer
/// about to sleep cannot miss one. The uncontended paths are one compare-exchange (lock) or
/// one subtraction (unlock); only the contended ones spin briefly and then call futex.
///
/// A handle, not an object: the lock's words live in a `ReadWriteLocks` table, which must outlive
/// every handle to it (a file system holds its table; an address space holds the file system).
/// So taking a file's lock counts no references. In debug builds the handle also carries the
/// lock's rank and index for the lock-order checker (`LockOrder`).
///
/// Two more words count the readers and the writers asleep in the lock (from just before their
/// futex wait to just after it returns), the analogue of a wait queue's length: the sleep a test
/// waits for before it releases the lock, so that it releases sleepers, not threads still on
/// their way. Only the contended paths touch them, next to a system call.
public struct ReadWriteLock: @unchecked Sendable {
    /// `state`, `writerWakeups`, then the sleeping readers and writers, in one cache line of the table.
    @usableFromInline let words: UnsafeMutablePointer<UInt32.AtomicRepresentation>
    #if DEBUG
    /// Its place in the lock order, and its index in its table.
    public let rank: LockRank
    public let index: Int

    @usableFromInline init(_ words: UnsafeMutablePointer<UInt32.AtomicRepresentation>, rank: LockRank, index: Int) {
        self.words = words
        self.rank = rank
        self.index = index
    }
    #else
    @usableFromInline init(_ words: UnsafeMutablePointer<UInt32.AtomicRepresentation>) { self.words = words }
    #endif

    @usableFromInline var state: UnsafeAtomic<UInt32> { UnsafeAtomic(at: self.words) }
    @usableFromInline var writerWakeups: UnsafeAtomic<UInt32> { UnsafeAtomic(at: self.words + 1) }
    private var readerSleepers: UnsafeAtomic<UInt32> { UnsafeAtomic(at: self.words + 2) }
    private var writerSleepers: UnsafeAtomic<UInt32> { UnsafeAtomic(at: self.words + 3) }

    /// Readers asleep in the lock now (in their futex wait, or about to enter it): a waiting
    /// writer, or a writer holding it, keeps them out.
    public var sleepingReaders: Int { Int(self.readerSleepers.load(ordering: .relaxed)) }
    /// Writers asleep in the lock now (in their futex wait, or about to enter it).
    public var sleepingWriters: Int { Int(self.writerSleepers.load(ordering: .relaxed)) }

    /// The low bits: readers holding the lock, or `writeLocked`.
    @usableFromInline static var mask: UInt32 { (1 << 29) - 1 }
    @usableFromInline static var writeLocked: UInt32 { mask }
    @usableFromInline static var maxReaders: UInt32 { mask - 1 }
    /// A writer left the lock to the readers it woke: only a reader may take it, and the first
    /// one in clears this (a writer that loops cannot take it back before any woken reader ran).
    @usableFromInline static var readersWoken: UInt32 { 1 << 29 }
    @usableFromInline static var readersWaiting: UInt32 { 1 << 30 }
    @usableFromInline static var writersWaiting: UInt32 { 1 << 31 }

    /// A reader may take it: no writer holds it, there is room, and nobody sleeps (a sleeping
    /// writer goes first; sleeping readers are woken together when the writer leaves), or the
    /// lock was handed to readers (then a writer that went to sleep since waits for them).
    @inlinable
    static func isReadLockable(_ state: UInt32) -> Bool {
        state & mask < maxReaders && (state & (readersWaiting | writersWaiting) == 0 || state & readersWoken != 0)
    }

    /// The state with one reader more (a hand-off to readers is taken up).
    @inlinable
    static func withReader(_ state: UInt32) -> UInt32 { (state & ~readersWoken) + 1 }

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

    /// Whether a thread sleeps, or is about to, waiting for this lock (a waiting bit of the state
    /// word is set): tests wait for it before they act on the sleeper.
    public var hasWaiters: Bool {
        self.state.load(ordering: .relaxed) & (Self.readersWaiting | Self.writersWaiting) != 0
    }

    /// Takes the lock shared (prefer `withReadLock`).
    @inlinable
    public func lockShared() {
        #if DEBUG
        LockOrder.acquire(self.words, self.rank, index: self.index)
        #endif
        let state = self.state.load(ordering: .relaxed)
        if Self.isReadLockable(state),
            self.state.weakCompareExchange(
                expected: state, desired: Self.withReader(state), successOrdering: .acquiring, failureOrdering: .relaxed
            ).exchanged
        {
            return
        }
        self.lockSharedContended()
    }

    /// Takes the lock exclusively (prefer `withWriteLock`).
    @inlinable
    public func lockExclusive() {
        #if DEBUG
        LockOrder.acquire(self.words, self.rank, index: self.index)
        #endif
        if self.state.compareExchange(
            expected: 0, desired: Self.writeLocked, successOrdering: .acquiring, failureOrdering: .relaxed
        ).exchanged {
            return
        }
        self.lockExclusiveContended()
    }

    /// Releases the lock, however this thread took it.
    @inlinable
    public func unlock() {
        #if DEBUG
        LockOrder.release(self.words, self.rank)
        #endif
        // Only the holder changes the low bits from here: a writer sees its own `writeLocked`,
        // a reader a count of at least its own one.
        if self.state.load(ordering: .relaxed) & Self.mask == Self.writeLocked {
            let state = self.state.loadThenWrappingDecrement(by: Self.writeLocked, ordering: .releasing) - Self.writeLocked
            if state & (Self.readersWaiting | Self.writersWaiting) != 0 { self.wake(state) }
        } else {
            let state = self.state.loadThenWrappingDecrement(ordering: .releasing) &- 1
            precondition(state & Self.mask != Self.mask, "unlock of a ReadWriteLock nobody holds")
            // The last reader out lets a sleeping writer in (readers only sleep behind one).
            if state & Self.mask == 0, state & Self.writersWaiting != 0 { self.wake(state) }
        }
    }

    // MARK: the contended paths

    @usableFromInline
    func lockSharedContended() {
        var state = self.spin(until: Self.readerStopsSpinning)
        while true {
            if Self.isReadLockable(state) {
                let (exchanged, current) = self.state.weakCompareExchange(
                    expected: state, desired: Self.withReader(state), successOrdering: .acquiring, failureOrdering: .relaxed)
                if exchanged { return }
                state = current
                continue
            }
            precondition(state & Self.mask != Self.maxReaders, "ReadWriteLock: too many readers")
            // Say that readers sleep before sleeping, so the writer's unlock wakes us.
            if state & Self.readersWaiting == 0 {
                let (exchanged, current) = self.state.compareExchange(
                    expected: state, desired: state | Self.readersWaiting, ordering: .relaxed)
                if !exchanged {
                    state = current
                    continue
                }
            }
            self.readerSleepers.wrappingIncrement(ordering: .relaxed)
            _ = CShims_futex_wait(UnsafeMutableRawPointer(self.words), state | Self.readersWaiting)
            self.readerSleepers.wrappingDecrement(ordering: .relaxed)
            state = self.spin(until: Self.readerStopsSpinning)
        }
    }

    @usableFromInline
    func lockExclusiveContended() {
        var state = self.spin(until: Self.writerStopsSpinning)
        // Once this writer has slept, others may sleep too: it takes the lock leaving the bit set,
        // so its unlock wakes one of them (or finds none and wakes the readers).
        var otherWritersWaiting: UInt32 = 0
        while true {
            if state & (Self.mask | Self.readersWoken) == 0 {
                let (exchanged, current) = self.state.weakCompareExchange(
                    expected: state, desired: state | Self.writeLocked | otherWritersWaiting,
                    successOrdering: .acquiring, failureOrdering: .relaxed)
                if exchanged { return }
                state = current
                continue
            }
            if state & Self.writersWaiting == 0 {
                let (exchanged, current) = self.state.compareExchange(
                    expected: state, desired: state | Self.writersWaiting, ordering: .relaxed)
                if !exchanged {
                    state = current
                    continue
                }
            }
            otherWritersWaiting = Self.writersWaiting
            // Read the wake-up count before checking the state again: a wake-up after this
            // check bumps it, and the futex then refuses to sleep.
            let wakeups = self.writerWakeups.load(ordering: .acquiring)
            state = self.state.load(ordering: .relaxed)
            if state & (Self.mask | Self.readersWoken) == 0 || state & Self.writersWaiting == 0 { continue }
            self.writerSleepers.wrappingIncrement(ordering: .relaxed)
            _ = CShims_futex_wait(UnsafeMutableRawPointer(self.words + 1), wakeups)
            self.writerSleepers.wrappingDecrement(ordering: .relaxed)
            state = self.spin(until: Self.writerStopsSpinning)
        }
    }

    /// The lock was just released (`state` has no holder) with sleepers: wakes one writer if
    /// one sleeps (writer preference), else every reader, handing the lock to them.
    @usableFromInline
    func wake(_ state: UInt32) {
        var state = state
        if state == Self.writersWaiting {
            let (exchanged, current) = self.state.compareExchange(expected: state, desired: 0, ordering: .relaxed)
            if exchanged {
                self.wakeWriter()
                return
            }
            state = current
        }
        if state == Self.readersWaiting | Self.writersWaiting {
            // Readers keep sleeping; if no writer was asleep after all (one about to sleep
            // saw the bump and went round again), the readers are woken instead.
            guard self.state.compareExchange(expected: state, desired: Self.readersWaiting, ordering: .relaxed).exchanged
            else { return }  // changed meanwhile: whoever holds it now wakes at its unlock
            if self.wakeWriter() { return }
            state = Self.readersWaiting
        }
        if state == Self.readersWaiting,
            self.state.compareExchange(expected: state, desired: Self.readersWoken, ordering: .relaxed).exchanged
        {
            _ = CShims_futex_wake(UnsafeMutableRawPointer(self.words), Int32.max)
        }
    }

    /// Wakes one sleeping writer. - Returns: whether one was asleep.
    @discardableResult
    func wakeWriter() -> Bool {
        self.writerWakeups.wrappingIncrement(ordering: .releasing)
        return CShims_futex_wake(UnsafeMutableRawPointer(self.words + 1), 1) > 0
    }

    /// A reader spins while a writer holds the lock and nobody sleeps: past that, spinning will
    /// not help (it must go to sleep or may take the lock now).
    static func readerStopsSpinning(_ state: UInt32) -> Bool {
        state & mask != writeLocked || state & ~mask != 0
    }

    /// A writer spins while the lock is held (or handed to readers) and no writer sleeps.
    static func writerStopsSpinning(_ state: UInt32) -> Bool {
        state & (mask | readersWoken) == 0 || state & writersWaiting != 0
    }

    /// Spins a little (a holder is usually out soon) until `done` holds; the state last seen.
    @usableFromInline
    func spin(until done: (UInt32) -> Bool) -> UInt32 {
        var left = 100
        while true {
            let state = self.state.load(ordering: .relaxed)
            if done(state) || left == 0 { return state }
            CShims_cpu_relax()
            left -= 1
        }
    }
}

/// `count` reader-writer locks in one allocation, one cache line each (two files' locks never
/// share a line).
public final class ReadWriteLocks: @unchecked Sendable {
    public let count: Int
    @usableFromInline let storage: UnsafeMutablePointer<UInt32.AtomicRepresentation>
    /// Words per lock: a cache line.
    @usableFromInline static var stride: Int { 64 / MemoryLayout<UInt32.AtomicRepresentation>.stride }
    #if DEBUG
    /// The locks' place in the lock order (`LockOrder` checks it), and the few of them that have
    /// a rank of their own (lost+found's lock in the inode table).
    @usableFromInline let rank: LockRank
    @usableFromInline let exceptions: [Int: LockRank]
    #endif

    /// - Parameters:
    ///   - rank: the locks' place in the lock order (docs/architecture.md).
    ///   - exceptions: locks of the table with a rank of their own, by index.
    public init(count: Int, rank: LockRank = .leaf, exceptions: [Int: LockRank] = [:]) {
        precondition(count >= 0, "a negative count of locks")
        #if DEBUG
        self.rank = rank
        self.exceptions = exceptions
        #endif
        self.count = count
        let words = max(1, count) * Self.stride
        let raw = UnsafeMutableRawPointer.allocate(byteCount: words * MemoryLayout<UInt32.AtomicRepresentation>.stride, alignment: 64)
        self.storage = raw.bindMemory(to: UInt32.AtomicRepresentation.self, capacity: words)
        self.storage.initialize(repeating: UInt32.AtomicRepresentation(0), count: words)
    }

    deinit {
        self.storage.deinitialize(count: max(1, self.count) * Self.stride)
        self.storage.deallocate()
    }

    /// The `index`-th lock (traps out of range, as an array would).
    @inlinable
    public subscript(index: Int) -> ReadWriteLock {
        precondition(UInt(bitPattern: index) < UInt(bitPattern: self.count), "lock \(index) of \(self.count)")
        #if DEBUG
        return ReadWriteLock(self.storage + index * Self.stride, rank: self.exceptions[index] ?? self.rank, index: index)
        #else
        return ReadWriteLock(self.storage + index * Self.stride)
        #endif
    }
}
