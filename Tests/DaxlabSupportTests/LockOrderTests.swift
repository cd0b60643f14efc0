#if DEBUG
import Atomics
@testable import DaxlabSupport
import Foundation
import Testing

/// The lock-order checker (`LockOrder`, debug builds): a nesting in rank order passes; an
/// inversion is reported with both locks' names, through the query the trap uses, and traps in
/// a child process; same-rank locks nest only where the rank allows it, in ascending index; a
/// try-lock is recorded but not checked; locks released out of order, and a condition wait's
/// release and retake, leave the right locks held.
@Suite("the lock-order checker", .serialized, .timeLimit(.minutes(1)))
struct LockOrderTests {
    // Ranks of the tests' own (the production table's numbers do not matter here).
    static let outer = LockRank("test.outer", 1)
    static let middle = LockRank("test.middle", 2)
    static let inner = LockRank("test.inner", 3)
    static let table = LockRank("test.table", 4, nestsByIndex: true)
    static let stripes = LockRank("test.stripes", 5)

    @Test("the order's table: ranks strictly ascending, names unique, the leaf last")
    func table() {
        let ranks = LockRank.all.map(\.rank)
        #expect(ranks == ranks.sorted() && Set(ranks).count == ranks.count, "\(ranks)")
        let names = LockRank.all.map { String(describing: $0.name) }
        #expect(Set(names).count == names.count, "\(names)")
        #expect(LockRank.all.last == .leaf)
        #expect(LockRank.all.filter(\.nestsByIndex) == [.inode], "only the inode locks nest by index")
    }

    @Test("a nesting in rank order passes, and the thread's held locks are listed oldest first")
    func inOrder() {
        let outer = Locked(0, rank: Self.outer)
        let inner = Locked(0, rank: Self.inner)
        #expect(LockOrder.held.isEmpty)
        outer.withLock { _ in
            #expect(LockOrder.violation(taking: Self.inner) == nil)
            inner.withLock { _ in
                #expect(LockOrder.held == ["\"test.outer\" (rank 1)", "\"test.inner\" (rank 3)"])
            }
            #expect(LockOrder.held == ["\"test.outer\" (rank 1)"])
        }
        #expect(LockOrder.held.isEmpty)
    }

    @Test("an inversion is reported with both locks, as lockdep does")
    func inversion() {
        let inner = Locked(0, rank: Self.inner)
        inner.withLock { _ in
            #expect(
                LockOrder.violation(taking: Self.outer)
                    == "lock order violated: taking \"test.outer\" (rank 1) while holding \"test.inner\" (rank 3); "
                    + "this thread holds \"test.inner\" (rank 3) (the order: docs/architecture.md, \"The lock order\")")
            #expect(LockOrder.violation(taking: Self.inner) != nil, "the same rank again, which does not nest")
        }
        // A lock made without a rank is a leaf: nothing may be taken under it.
        let leaf = Locked(0)
        leaf.withLock { _ in
            #expect(LockOrder.violation(taking: Self.inner)?.contains("while holding \"leaf\" (rank 255)") == true)
        }
    }

    @Test("an inversion traps, naming both locks", .timeLimit(.minutes(1)))
    func inversionTraps() async {
        await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) {
            let outer = Locked(0, rank: LockRank("test.outer", 1))
            let inner = Locked(0, rank: LockRank("test.inner", 3))
            inner.withLock { _ in outer.withLock { _ in } }
        }.map { result in
            let message = String(decoding: result.standardErrorContent, as: UTF8.self)
            #expect(
                message.contains("lock order violated: taking \"test.outer\" (rank 1) while holding \"test.inner\" (rank 3)"),
                "\(message)")
        }
    }

    @Test("locks of a rank that nests by index: ascending passes, descending or the same index is an inversion")
    func byIndex() {
        let locks = ReadWriteLocks(count: 4, rank: Self.table)
        locks[1].withWriteLock {
            #expect(LockOrder.violation(taking: Self.table, index: 3) == nil)
            #expect(LockOrder.violation(taking: Self.table, index: 0)?.contains("taking \"test.table\" #0 (rank 4) while holding \"test.table\" #1 (rank 4)") == true)
            #expect(LockOrder.violation(taking: Self.table, index: 1) != nil, "a second hold of one lock (a read lock too)")
            locks[3].withReadLock {
                #expect(LockOrder.held == ["\"test.table\" #1 (rank 4)", "\"test.table\" #3 (rank 4)"])
            }
        }
        // A table's lock with a rank of its own (lost+found's in the inode table).
        let mixed = ReadWriteLocks(count: 3, rank: Self.table, exceptions: [1: Self.stripes])
        mixed[2].withWriteLock {
            #expect(LockOrder.violation(taking: Self.stripes, index: 1) == nil, "ranked after the table: taken after any of it")
            mixed[1].withWriteLock {}
        }
        #expect(mixed[1].rank == Self.stripes && mixed[0].rank == Self.table)
    }

    @Test("slots of a rank that does not nest: never two at once, whatever their order")
    func stripesDoNotNest() {
        let stripes = LockedArray<Int>(count: 2, rank: Self.stripes) { $0 }
        stripes.withLock(0) { _ in
            #expect(LockOrder.violation(taking: Self.stripes, index: 1) != nil)
            #expect(LockOrder.held == ["\"test.stripes\" #0 (rank 5)"])
        }
        #expect(LockOrder.held.isEmpty)
    }

    @Test("a try-lock is recorded without a check, and what is taken under it is checked against it")
    func tryLock() {
        let middle = Locked(0, rank: Self.middle)
        let inner = Locked(0, rank: Self.inner)
        inner.withLock { _ in
            // Out of order, but a try-lock never waits, so it cannot close a cycle.
            let taken = middle.withLockIfAvailable { _ in
                #expect(LockOrder.held == ["\"test.inner\" (rank 3)", "\"test.middle\" (rank 2)"])
                return LockOrder.violation(taking: Self.outer)
            }
            #expect(taken??.contains("while holding \"test.inner\"") == true)
        }
        middle.withLock { _ in
            #expect(inner.withLockIfAvailable { _ in LockOrder.violation(taking: Self.outer) }??.contains("while holding \"test.middle\"") == true)
        }
        #expect(LockOrder.held.isEmpty)
    }

    @Test("locks released out of order leave the others held")
    func releasedOutOfOrder() {
        let locks = ReadWriteLocks(count: 3, rank: Self.table)
        locks[0].lockExclusive()
        locks[1].lockShared()
        locks[2].lockExclusive()
        locks[1].unlock()  // as the layout breaker drops a file's lock, and takes it again
        #expect(LockOrder.held == ["\"test.table\" #0 (rank 4)", "\"test.table\" #2 (rank 4)"])
        #expect(LockOrder.violation(taking: Self.table, index: 1) != nil, "retaken below one still held")
        locks[0].unlock()
        locks[2].unlock()
        #expect(LockOrder.held.isEmpty)
    }

    @Test("a condition wait releases its mutex for the sleep and takes it again, checked, under the locks its thread holds")
    func conditionWait() {
        let outer = Locked(0, rank: Self.outer)
        let condition = ConditionLock(false, rank: Self.middle)
        let before = LockOrder.acquisitions(of: Self.middle)
        let seen = Locked<[[String]]>([])
        let asleep = ManagedAtomic<Bool>(false)
        let waiter = Worker {
            outer.withLock { _ in
                let during = condition.wait(until: { ready in
                    if !ready { asleep.store(true, ordering: .releasing) }
                    return ready
                }) { _ in LockOrder.held }
                let after = LockOrder.held
                seen.withLock { $0 = [during ?? [], after] }
            }
            let outside = LockOrder.held
            seen.withLock { $0.append(outside) }
        }
        #expect(eventually { asleep.load(ordering: .acquiring) })
        usleep(10_000)  // (into its sleep)
        condition.withLockThenBroadcast { $0 = true }
        #expect(eventually { waiter.isDone })
        #expect(
            seen.withLock { $0 }
                == [["\"test.outer\" (rank 1)", "\"test.middle\" (rank 2)"], ["\"test.outer\" (rank 1)"], []])
        // The waiter's first take and its retake after the wake-up, and the broadcaster's.
        #expect(LockOrder.acquisitions(of: Self.middle) - before >= 3)
    }
}
#endif
