import Atomics
@testable import DaxlabSupport
import Foundation
import Testing

/// The file lock (`ReadWriteLock`, a futex reader-writer lock): readers share it, a writer has
/// it alone, a waiting writer goes before readers that come after it, and every sleeper is woken.
/// The mechanism tests make each interleaving happen on purpose: a thread is known to be asleep
/// in the lock (counted among its sleepers, `sleepingReaders` and `sleepingWriters`) before the
/// next step, never assumed to be after a pause; the stress test drives the contended paths at
/// random.
@Suite("the file lock (futex reader-writer lock)", .serialized, .timeLimit(.minutes(2)))
struct ReadWriteLockTests {
    /// The lock's state word: the reader count (all ones: a writer) and the sleeper bits.
    private func state(_ lock: ReadWriteLock) -> UInt32 { lock.state.load(ordering: .relaxed) }

    @Test("readers share it; a writer waits for them and then has it alone", .timeLimit(.minutes(1)))
    func sharedThenExclusive() {
        let locks = ReadWriteLocks(count: 2)
        let lock = locks[1]
        lock.lockShared()
        // A second reader, on a thread of its own (a thread that takes it twice can deadlock
        // behind a waiting writer: the lock-order checker refuses that), until told to let go.
        let letGo = ManagedAtomic<Bool>(false)
        let second = Worker {
            lock.lockShared()
            while !letGo.load(ordering: .acquiring) { usleep(100) }
            lock.unlock()
        }
        #expect(eventually { self.state(lock) == 2 }, "the second reader did not get in beside the first")
        let inside = ManagedAtomic<Bool>(false)
        let writer = Worker {
            lock.withWriteLock { inside.store(true, ordering: .relaxed) }
        }
        #expect(eventually { lock.sleepingWriters == 1 }, "the writer never slept")
        #expect(self.state(lock) & ReadWriteLock.writersWaiting != 0)
        #expect(!value(inside), "the writer got in while readers held the lock")
        lock.unlock()
        #expect(!value(inside), "the writer got in while a reader held the lock")
        letGo.store(true, ordering: .releasing)
        #expect(eventually { second.isDone })
        #expect(eventually { writer.isDone }, "the last reader's unlock did not wake the writer")
        #expect(value(inside))
        #expect(self.state(lock) == 0, "sleeper bits left behind: \(self.state(lock))")
        #expect(lock.sleepingWriters == 0)
        #expect(self.state(locks[0]) == 0, "the neighbouring lock changed")
    }

    @Test("a waiting writer goes before readers that come after it, and those readers are woken when it leaves")
    func writerPreference() {
        let locks = ReadWriteLocks(count: 1)
        let lock = locks[0]
        let order = ManagedAtomic<Int>(0)
        let writerTurn = ManagedAtomic<Int>(-1)
        let readerTurns = [ManagedAtomic<Int>(-1), ManagedAtomic<Int>(-1)]
        lock.lockShared()
        let writer = Worker {
            lock.withWriteLock { writerTurn.store(order.loadThenWrappingIncrement(ordering: .relaxed), ordering: .relaxed) }
        }
        #expect(eventually { lock.sleepingWriters == 1 }, "the writer never slept")
        // Two readers arrive while the writer waits: they must sleep, though only a reader holds it.
        let readers = readerTurns.map { turn in
            Worker { lock.withReadLock { turn.store(order.loadThenWrappingIncrement(ordering: .relaxed), ordering: .relaxed) } }
        }
        #expect(eventually { lock.sleepingReaders == 2 }, "the new readers never both slept")
        #expect(self.state(lock) & ReadWriteLock.readersWaiting != 0)
        #expect(readerTurns.allSatisfy { value($0) == -1 }, "a reader overtook the waiting writer")
        lock.unlock()
        #expect(eventually { writer.isDone && readers.allSatisfy(\.isDone) }, "a sleeper was never woken")
        #expect(value(writerTurn) == 0, "the writer was not first")
        #expect(Set(readerTurns.map { value($0) }) == [1, 2])
        #expect(self.state(lock) == 0)
        #expect(lock.sleepingReaders == 0 && lock.sleepingWriters == 0)
    }

    @Test("writers queue: each one sleeping behind another is woken in turn, none lost")
    func writersInTurn() {
        let locks = ReadWriteLocks(count: 1)
        let lock = locks[0]
        let entered = ManagedAtomic<Int>(0)
        lock.lockExclusive()
        let writers = (0..<3).map { _ in
            Worker { lock.withWriteLock { entered.wrappingIncrement(ordering: .relaxed) } }
        }
        #expect(eventually { lock.sleepingWriters == 3 }, "the three writers never all slept")
        #expect(value(entered) == 0, "a writer got in while another held the lock")
        lock.unlock()
        #expect(eventually { writers.allSatisfy(\.isDone) }, "a sleeping writer was never woken")
        #expect(value(entered) == 3)
        #expect(self.state(lock) == 0)
        #expect(lock.sleepingWriters == 0)
    }

    @Test("a writer gets in past readers that never all let go at once")
    func writerNotStarved() {
        let locks = ReadWriteLocks(count: 1)
        let lock = locks[0]
        let stop = ManagedAtomic<Bool>(false)
        // Two readers whose holds overlap: without writer preference the lock is never free.
        let readers = (0..<2).map { _ in
            Worker {
                while !stop.load(ordering: .relaxed) { _ = lock.withReadLock { usleep(200) } }
            }
        }
        // Both readers in at once: from here the lock is never free unless a writer waits.
        #expect(eventually { self.state(lock) & ReadWriteLock.mask == 2 }, "the readers never held it together")
        let writer = Worker { lock.withWriteLock {} }
        #expect(eventually { writer.isDone }, "the writer starved behind the readers")
        stop.store(true, ordering: .relaxed)
        #expect(eventually { readers.allSatisfy(\.isDone) })
        #expect(self.state(lock) == 0)
    }

    @Test("a writer that leaves and takes the lock again at once lets a sleeping reader in first: readers are not starved by a looping writer")
    func readerNotStarved() {
        let locks = ReadWriteLocks(count: 1)
        let lock = locks[0]
        let entered = ManagedAtomic<Bool>(false)
        lock.lockExclusive()
        let reader = Worker { lock.withReadLock { entered.store(true, ordering: .releasing) } }
        #expect(eventually { lock.sleepingReaders == 1 }, "the reader never slept")
        lock.unlock()
        // At once, before the woken reader can have run: without the hand-off this takes it back.
        lock.lockExclusive()
        let readerWentFirst = value(entered)
        lock.unlock()
        #expect(readerWentFirst, "the writer took the lock back before the reader it woke got in")
        #expect(eventually { reader.isDone }, "the reader was never woken")
        #expect(self.state(lock) == 0, "bits left behind: \(self.state(lock))")
        #expect(lock.sleepingReaders == 0 && lock.sleepingWriters == 0)
    }

    /// Checked state for the stress test: how many hold the lock of each kind, and a plain
    /// counter only writers touch (a lost update, or ThreadSanitizer, catches a writer that
    /// was not alone).
    private final class Shared: @unchecked Sendable {
        let readers = ManagedAtomic<Int>(0)
        let writers = ManagedAtomic<Int>(0)
        let violations = ManagedAtomic<Int>(0)
        var counter = 0
    }

    @Test("4 threads x 20 000 random shared and exclusive sections: never a writer beside anyone, no update lost")
    func stress() {
        let locks = ReadWriteLocks(count: 1)
        let lock = locks[0]
        let shared = Shared()
        let writes = ManagedAtomic<Int>(0)
        let workers = (0..<4).map { thread in
            Worker {
                var random = SplitMix64(seed: UInt64(thread) &+ 17)
                for _ in 0..<20_000 {
                    let roll = random.next() % 16
                    if roll < 5 {
                        lock.withWriteLock {
                            if shared.writers.loadThenWrappingIncrement(ordering: .relaxed) != 0
                                || shared.readers.load(ordering: .relaxed) != 0
                            {
                                shared.violations.wrappingIncrement(ordering: .relaxed)
                            }
                            shared.counter += 1
                            if roll == 0 { usleep(50) }  // long enough for the others to sleep
                            shared.writers.wrappingDecrement(ordering: .relaxed)
                        }
                        writes.wrappingIncrement(ordering: .relaxed)
                    } else {
                        lock.withReadLock {
                            shared.readers.wrappingIncrement(ordering: .relaxed)
                            if shared.writers.load(ordering: .relaxed) != 0 {
                                shared.violations.wrappingIncrement(ordering: .relaxed)
                            }
                            _ = shared.counter  // a read that must not race a writer
                            if roll == 15 { usleep(50) }
                            shared.readers.wrappingDecrement(ordering: .relaxed)
                        }
                    }
                }
            }
        }
        #expect(eventually { workers.allSatisfy(\.isDone) }, "a thread never finished (a lost wake-up)")
        #expect(value(shared.violations) == 0)
        let written = value(writes)
        lock.withWriteLock { #expect(shared.counter == written) }
        #expect(self.state(lock) == 0, "sleeper bits left behind: \(self.state(lock))")
    }
}
