import Atomics
import CShims

/// A mutex on a futex word: a fault stripe's lock, taken twice in every alloc.block cycle (the
/// write fault that maps a reserved block, the punch that gives it back).
///
/// Why not pthread_mutex: glibc's lock and unlock run about 90 instructions a pair around their
/// one locked instruction each (type and owner checks, elision and robust-list paths); here the
/// uncontended lock is one compare-exchange and the unlock one exchange, inlined into the caller.
///
/// The algorithm is Ulrich Drepper's "mutex 2" ("Futexes Are Tricky", 2011), as Rust's standard
/// library also uses it (`sys/sync/mutex/futex.rs`), written anew. The word is 0 (unlocked), 1
/// (locked, nobody sleeps) or 2 (locked, someone may sleep). A contended locker spins briefly,
/// then swaps in 2 and sleeps while it reads 2; an unlock that swaps out a 2 wakes one sleeper,
/// which takes the lock as 2 again (it cannot know whether others sleep), so no wake-up is lost.
/// Not recursive.
///
/// ThreadSanitizer sees the acquire and release orderings of these atomics (they are compiled in
/// daxlab's instrumented code), so `make tsan` checks the sections this lock guards; the futex
/// calls only put threads to sleep, they carry no ordering TSan needs.
///
/// A handle, not an object: the word lives in its owner's storage (a `LockedArray`'s slot), which
/// must outlive every handle to it.
public struct FutexMutex: @unchecked Sendable {
    @usableFromInline let word: UnsafeMutablePointer<UInt32.AtomicRepresentation>

    @usableFromInline static var unlocked: UInt32 { 0 }
    @usableFromInline static var locked: UInt32 { 1 }
    @usableFromInline static var contended: UInt32 { 2 }

    /// A handle on the word at `word`, which must be initialized to 0 (unlocked).
    @inlinable
    public init(_ word: UnsafeMutablePointer<UInt32.AtomicRepresentation>) { self.word = word }

    @usableFromInline var state: UnsafeAtomic<UInt32> { UnsafeAtomic(at: self.word) }

    @inlinable
    public func lock() {
        if self.state.weakCompareExchange(
            expected: Self.unlocked, desired: Self.locked, successOrdering: .acquiring, failureOrdering: .relaxed
        ).exchanged {
            return
        }
        self.lockContended()
    }

    /// Takes it if it is free now. - Returns: whether it did.
    @inlinable
    public func tryLock() -> Bool {
        self.state.compareExchange(
            expected: Self.unlocked, desired: Self.locked, successOrdering: .acquiring, failureOrdering: .relaxed
        ).exchanged
    }

    @inlinable
    public func unlock() {
        if self.state.exchange(Self.unlocked, ordering: .releasing) == Self.contended {
            _ = CShims_futex_wake(UnsafeMutableRawPointer(self.word), 1)
        }
    }

    @usableFromInline
    func lockContended() {
        // A holder is usually out within a few hundred cycles: spin while it holds the lock and
        // nobody sleeps yet, then try once more before going to sleep.
        var left = 100
        var state = self.state.load(ordering: .relaxed)
        while state == Self.locked, left > 0 {
            CShims_cpu_relax()
            left -= 1
            state = self.state.load(ordering: .relaxed)
        }
        if state == Self.unlocked,
            self.state.compareExchange(
                expected: Self.unlocked, desired: Self.locked, successOrdering: .acquiring, failureOrdering: .relaxed
            ).exchanged
        {
            return
        }
        // From here it takes the lock as `contended`: another thread may be asleep behind it.
        while self.state.exchange(Self.contended, ordering: .acquiring) != Self.unlocked {
            _ = CShims_futex_wait(UnsafeMutableRawPointer(self.word), Self.contended)
        }
    }

    /// Whether some thread holds it (tests).
    var isLocked: Bool { self.state.load(ordering: .relaxed) != Self.unlocked }

    /// Whether a thread may sleep on it (tests).
    var mayHaveSleepers: Bool { self.state.load(ordering: .relaxed) == Self.contended }
}
