#if DEBUG
import Atomics
import CShims

/// The lock-order checker of debug builds, after the kernel's lockdep: every lock daxlab takes
/// (`Locked`, `LockedArray`, `ReadWriteLock`, `ConditionLock`) reports here, and each thread
/// keeps the locks it holds. Taking a lock whose rank (`LockRank`) is lower than, or the same
/// as, that of one already held traps at once, naming both, instead of deadlocking some day
/// under a rare interleaving: the order is checked on every acquisition the tests make, not only
/// on the ones that happen to collide. Release builds compile none of it (the locks call it only
/// under `#if DEBUG`), so they pay nothing.
///
/// The rules:
/// - a blocking acquisition is checked against every lock the thread holds, then recorded;
/// - a try-lock cannot deadlock, so it is recorded unchecked (what is taken after it is
///   checked against it);
/// - a release removes the lock wherever it is in the thread's list (locks need not be
///   released in the order they were taken: the layout breaker drops a file's lock while it
///   sleeps and takes it again);
/// - a condition wait releases its mutex for the sleep and takes it again after, checked.
///
/// The held locks live in a fixed thread-local array in CShims (no allocation), so the checker
/// also runs in the window fault handler, which takes a file's lock on whatever thread touched
/// the window: its acquisition is checked against what that thread held.
public enum LockOrder {
    /// Checks that the calling thread may take `lock` (of `rank`, `index` in its table or -1)
    /// now, then records it as held: traps with both locks' names on an inversion.
    @usableFromInline
    static func acquire(_ lock: UnsafeRawPointer, _ rank: LockRank, index: Int) {
        let held = CShims_held_locks_of_thread()!
        if let message = Self.violation(in: held, taking: rank, index: index, lock: UInt(bitPattern: lock)) {
            fatalError(message)
        }
        Self.record(lock, rank, index: index, in: held)
    }

    /// Records `lock` as held without a check: a try-lock that succeeded (it never waited, so it
    /// cannot close a cycle).
    @usableFromInline
    static func acquiredWithoutWaiting(_ lock: UnsafeRawPointer, _ rank: LockRank, index: Int) {
        Self.record(lock, rank, index: index, in: CShims_held_locks_of_thread()!)
    }

    /// Removes `lock` from the calling thread's held locks, wherever it is: traps if the thread
    /// does not hold it (an unbalanced unlock, or one on another thread than the lock's, which
    /// the checker cannot follow).
    @usableFromInline
    static func release(_ lock: UnsafeRawPointer, _ rank: LockRank) {
        let held = CShims_held_locks_of_thread()!
        let address = UInt(bitPattern: lock)
        let found = Self.withEntries(held) { locks -> Bool in
            // The newest first: a lock is mostly released right after it was taken.
            guard let at = locks.indices.reversed().first(where: { locks[$0].lock == address }) else { return false }
            for position in at..<(locks.count - 1) { locks[position] = locks[position + 1] }
            return true
        }
        guard found else {
            fatalError("lock order: releasing \(rank), which this thread does not hold; it holds \(Self.describe(held))")
        }
        held.pointee.count -= 1
    }

    /// What taking a lock of `rank` (at `index` in its table, -1 for none) would violate now on
    /// the calling thread, or nil when it is in order: the message the checker traps with.
    /// (Tests ask this instead of making the thread trap.)
    public static func violation(taking rank: LockRank, index: Int = -1) -> String? {
        Self.violation(in: CShims_held_locks_of_thread()!, taking: rank, index: index, lock: 0)
    }

    /// The locks the calling thread holds now, oldest first, as reports name them.
    public static var held: [String] {
        Self.withEntries(CShims_held_locks_of_thread()!) { $0.map(Self.describe) }
    }

    /// How many locks of `rank` all threads have taken so far (blocking, try-locks and retakes
    /// after a condition wait): tests check that the locks they exercise reach the checker.
    public static func acquisitions(of rank: LockRank) -> Int {
        Self.counter(rank.rank).load(ordering: .relaxed)
    }

    // MARK: The check

    /// The first held lock that taking `rank` at `index` would invert, as a report; nil if none.
    /// (No allocation unless there is one to report: the window fault handler runs this too.)
    private static func violation(
        in held: UnsafeMutablePointer<CShims_held_locks>, taking rank: LockRank, index: Int, lock: UInt
    ) -> String? {
        let inverted = Self.withEntries(held) { locks -> CShims_held_lock? in
            locks.first { entry in
                let inOrder = entry.rank < rank.rank
                    || (entry.rank == rank.rank && rank.nestsByIndex && entry.nests_by_index != 0 && Int(entry.index) < index)
                return !inOrder
            }
        }
        guard let inverted else { return nil }
        let taking = Self.describe(name: rank.name.utf8Start, rank: rank.rank, index: index)
        let what = lock != 0 && inverted.lock == lock
            ? "taking \(taking) again while holding it (it is not recursive: that deadlocks)"
            : "taking \(taking) while holding \(Self.describe(inverted))"
        return "lock order violated: \(what); this thread holds \(Self.describe(held)) "
            + "(the order: docs/architecture.md, \"The lock order\")"
    }

    private static func record(
        _ lock: UnsafeRawPointer, _ rank: LockRank, index: Int, in held: UnsafeMutablePointer<CShims_held_locks>
    ) {
        let count = Int(held.pointee.count)
        guard count < Int(CSHIMS_HELD_LOCKS_LIMIT) else {
            fatalError("lock order: taking \(rank) with \(count) locks held already: \(Self.describe(held))")
        }
        held.pointee.count += 1
        Self.withEntries(held) { locks in
            locks[count] = CShims_held_lock(
                lock: UInt(bitPattern: lock),
                name: UnsafeRawPointer(rank.name.utf8Start).assumingMemoryBound(to: CChar.self),
                rank: Int32(rank.rank), index: Int32(truncatingIfNeeded: index), nests_by_index: rank.nestsByIndex ? 1 : 0)
        }
        Self.counter(rank.rank).wrappingIncrement(ordering: .relaxed)
    }

    /// Runs `body` on the thread's held locks, oldest first, in place.
    private static func withEntries<Result>(
        _ held: UnsafeMutablePointer<CShims_held_locks>, _ body: (UnsafeMutableBufferPointer<CShims_held_lock>) -> Result
    ) -> Result {
        let count = Int(held.pointee.count)
        return withUnsafeMutablePointer(to: &held.pointee.locks) { tuple in
            tuple.withMemoryRebound(to: CShims_held_lock.self, capacity: Int(CSHIMS_HELD_LOCKS_LIMIT)) { locks in
                body(UnsafeMutableBufferPointer(start: locks, count: count))
            }
        }
    }

    // MARK: Reports

    /// The thread's held locks, oldest first.
    private static func describe(_ held: UnsafeMutablePointer<CShims_held_locks>) -> String {
        let entries = Self.withEntries(held) { $0.map(Self.describe) }
        return entries.isEmpty ? "nothing" : entries.joined(separator: ", ")
    }

    private static func describe(_ entry: CShims_held_lock) -> String {
        Self.describe(
            name: UnsafeRawPointer(entry.name).assumingMemoryBound(to: UInt8.self), rank: Int(entry.rank),
            index: Int(entry.index))
    }

    /// `"inode" #5 (rank 40)`; no `#` for a lock of its own.
    private static func describe(name: UnsafePointer<UInt8>, rank: Int, index: Int) -> String {
        let name = String(cString: name)
        return index >= 0 ? "\"\(name)\" #\(index) (rank \(rank))" : "\"\(name)\" (rank \(rank))"
    }

    // MARK: Counts

    /// One count per rank number, each on a cache line of its own.
    nonisolated(unsafe) private static let counters: UnsafeMutablePointer<UnsafeAtomic<Int>.Storage> = {
        let words = LockRank.limit * Self.spacing
        let counters = UnsafeMutablePointer<UnsafeAtomic<Int>.Storage>.allocate(capacity: words)
        counters.initialize(repeating: UnsafeAtomic<Int>.Storage(0), count: words)
        return counters
    }()
    private static let spacing = 8

    private static func counter(_ rank: Int) -> UnsafeAtomic<Int> {
        UnsafeAtomic(at: Self.counters + rank * Self.spacing)
    }
}
#endif
