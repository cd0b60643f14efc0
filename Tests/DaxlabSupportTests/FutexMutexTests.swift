import Atomics
@testable import DaxlabSupport
import Foundation
import Testing

/// The fault stripes' lock (`FutexMutex`, inside `LockedArray`): one holder at a time, a
/// sleeper is woken by the unlock, and no wake-up is lost when several sleep. The mechanism
/// tests make each interleaving happen on purpose (a thread is known to be asleep in the lock
/// before the holder lets go); the stress test drives the contended path at random.
@Suite("the fault stripes' lock (futex mutex)", .serialized, .timeLimit(.minutes(2)))
struct FutexMutexTests {
    /// A value per slot that only its slot's holder touches.
    private final class Counter: @unchecked Sendable { var value = 0 }

    @Test("a locker sleeps while another holds the slot, and the unlock wakes it; other slots stay free")
    func sleeperWoken() {
        let array = LockedArray<Int>(count: 3) { $0 * 10 }
        let mutex = array.mutex(1)
        mutex.lock()
        let inside = ManagedAtomic<Bool>(false)
        let waiter = Worker {
            array.withLock(1) { value in
                value += 1
                inside.store(true, ordering: .relaxed)
            }
        }
        #expect(eventually { mutex.mayHaveSleepers }, "the second locker never went to sleep")
        #expect(!value(inside), "the second locker got in while the slot was held")
        #expect(array.withLock(0) { $0 } == 0, "a neighbouring slot was held too")
        #expect(!array.mutex(2).isLocked)
        mutex.unlock()
        #expect(eventually { waiter.isDone }, "the unlock did not wake the sleeper")
        #expect(array.withLock(1) { $0 } == 11)
        #expect(!mutex.isLocked, "left locked: \(mutex.isLocked)")
        #expect(!mutex.mayHaveSleepers)
    }

    @Test("three sleepers behind one holder: each is woken in turn, none lost")
    func sleepersInTurn() {
        let array = LockedArray<Int>(count: 1) { _ in 0 }
        let mutex = array.mutex(0)
        let entered = ManagedAtomic<Int>(0)
        mutex.lock()
        let lockers = (0..<3).map { _ in
            Worker {
                array.withLock(0) { value in
                    value += 1
                    entered.wrappingIncrement(ordering: .relaxed)
                    usleep(1_000)  // hold it while the others are asleep
                }
            }
        }
        #expect(eventually { mutex.mayHaveSleepers })
        usleep(20_000)  // (not needed for correctness: lets all three reach their sleep)
        #expect(value(entered) == 0, "a locker got in while the slot was held")
        mutex.unlock()
        #expect(eventually { lockers.allSatisfy(\.isDone) }, "a sleeping locker was never woken")
        #expect(array.withLock(0) { $0 } == 3)
        #expect(!mutex.isLocked)
    }

    @Test("tryLock takes a free slot and refuses a held one")
    func tryLock() {
        let array = LockedArray<Int>(count: 2) { _ in 0 }
        let mutex = array.mutex(0)
        #expect(mutex.tryLock())
        #expect(!mutex.tryLock(), "took a slot its holder had not let go")
        #expect(array.mutex(1).tryLock(), "a neighbouring slot was held")
        array.mutex(1).unlock()
        mutex.unlock()
        #expect(!mutex.isLocked)
    }

    @Test("4 threads x 50 000 sections over 2 slots: never two holders, no update lost")
    func stress() {
        let array = LockedArray<Int>(count: 2) { _ in 0 }
        let holders = [ManagedAtomic<Int>(0), ManagedAtomic<Int>(0)]
        let violations = ManagedAtomic<Int>(0)
        let counters = [Counter(), Counter()]
        let workers = (0..<4).map { thread in
            Worker {
                var random = SplitMix64(seed: UInt64(thread) &+ 29)
                for _ in 0..<50_000 {
                    let roll = random.next()
                    let slot = Int(roll % 2)
                    array.withLock(slot) { value in
                        if holders[slot].loadThenWrappingIncrement(ordering: .relaxed) != 0 {
                            violations.wrappingIncrement(ordering: .relaxed)
                        }
                        value += 1
                        counters[slot].value += 1  // a plain write ThreadSanitizer checks
                        if roll % 64 == 0 { usleep(20) }  // long enough for others to sleep
                        holders[slot].wrappingDecrement(ordering: .relaxed)
                    }
                }
            }
        }
        #expect(eventually { workers.allSatisfy(\.isDone) }, "a thread never finished (a lost wake-up)")
        #expect(value(violations) == 0)
        let total = array.withLock(0) { $0 } + array.withLock(1) { $0 }
        #expect(total == 200_000)
        #expect(array.withLock(0) { $0 == counters[0].value } && array.withLock(1) { $0 == counters[1].value })
        #expect(!array.mutex(0).isLocked && !array.mutex(1).isLocked)
    }
}
