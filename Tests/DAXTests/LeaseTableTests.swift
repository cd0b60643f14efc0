import Atomics
import CShims
@testable import DAX
@_spi(Oracle) import DaxFS
import DaxlabSupport
import Foundation
import Testing
import TestSupport

/// The lock-free lease table's reclamation rule: a lease that ends while a breaker has loaded
/// its slot but not yet held its batch waits for that breaker (so the batch is never recycled
/// under it). The window is a few instructions wide; the test hook (builds with DAXLAB_TEST_HOOKS=1) stops
/// the breaker inside it while the holder unpins.
///
/// The rule's fence is asymmetric where membarrier(2) is there (the unpin's side a compiler
/// barrier, the breaker's a membarrier), sequentially consistent on both sides where it is not:
/// the tests below run under both.
@Suite("Lease table", .serialized, .timeLimit(.minutes(1)))
struct LeaseTableTests {
    /// A lab whose file's lease table uses the fallback fence, or the default one.
    private func lab(fallback: Bool, pages: Int) throws -> Lab {
        let lab = try Lab(policy: .wait, pages: pages, asymmetricFence: !fallback)
        #expect(try lab.space.leases.asymmetric == (!fallback && AsymmetricFence.available))
        return lab
    }

    @Test("lease IDs: a batch's number and its lease count, written number.count; the count wraps alone; live leases differ")
    func leaseIDs() throws {
        let stamp = LeaseStamp.make(number: 3, count: 17)
        #expect(LeaseStamp.describe(stamp) == "3.17")
        #expect(LeaseStamp.describe(LeaseStamp.next(stamp)) == "3.18")
        let last = LeaseStamp.make(number: 3, count: 1 << 40 - 1)
        #expect(LeaseStamp.describe(LeaseStamp.next(last)) == "3.0", "the count wrapped into the number")
        let lab = try Lab(policy: .wait, pages: 4)
        let (a, b) = try holding(try lab.space.pin(0..<1, write: true)) { first in
            try holding(try lab.space.pin(1..<2, write: true)) { second in (first.lease.id, second.lease.id) }
        }
        #expect(a != b, "two live leases share an ID")
        #expect(a >> 40 != b >> 40, "two live leases share a batch")
    }

    @Test("the asymmetric fence is in use: membarrier's private expedited command registered")
    func membarrierInUse() throws {
        guard CShims_membarrier_offers_private_expedited() != 0 else {
            try Test.cancel("this kernel offers no membarrier PRIVATE_EXPEDITED: the fallback runs")
        }
        #expect(AsymmetricFence.available)
        let lab = try Lab(policy: .wait, pages: 1)
        #expect(try lab.space.leases.asymmetric)
    }

    /// The unpin's wait is seen by its hook (it found the breaker scanning and yields to it),
    /// not inferred from its not having returned yet: the breaker is parked between its slot
    /// load and its hold, so the wait cannot end until the breaker is let go.
    @Test("an unpin waits for a breaker between its slot load and its hold; the breaker then skips the ended lease",
          arguments: [false, true])
    func endWaitsForScanner(fallback: Bool) throws {
        #if DAXLAB_TEST_HOOKS
        let lab = try self.lab(fallback: fallback, pages: 4)
        let space = try lab.space
        _ = try space.fault(1, write: true)
        let pinned = DispatchSemaphore(value: 0)
        let unpinNow = DispatchSemaphore(value: 0)
        let pinFailure = Box<FSError?>(nil)
        let holder = lab.background {
            let handle: PinHandle
            do throws(FSError) { handle = try space.pin(1..<2, write: true) } catch {
                pinFailure.value = error
                pinned.signal()
                return
            }
            pinned.signal()
            unpinNow.wait()
            handle.unpin()
        }
        pinned.wait()
        try #require(pinFailure.value == nil, "the pin failed: \(String(describing: pinFailure.value))")
        let inWindow = DispatchSemaphore(value: 0)
        let leave = DispatchSemaphore(value: 0)
        let fired = Box(false)
        space.leases.scanHook = { batch in
            guard !fired.value else { return }
            fired.value = true
            #expect(batch.pages == 1..<2)
            inWindow.signal()
            leave.wait()
        }
        let waiting = DispatchSemaphore(value: 0)
        let endWaited = Box(false)
        space.leases.endWaitHook = {
            guard !endWaited.value else { return }
            endWaited.value = true
            waiting.signal()
        }
        defer {
            space.leases.scanHook = nil
            space.leases.endWaitHook = nil
        }
        let listed = Box<[LeaseInfo]?>(nil)
        let breaker = lab.background { listed.value = space.leaseList }
        let found = inWindow.wait(timeout: .now() + 30) == .success
        if !found { unpinNow.signal() }
        try #require(found, "the breaker never found the lease")
        unpinNow.signal()
        // The unpin has cleared the slot, found the breaker scanning, and waits for it.
        let waited = waiting.wait(timeout: .now() + 30) == .success
        if waited { #expect(!holder.isDone, "the unpin returned while the breaker was in its window") }
        leave.signal()
        #expect(waited, "the lease ended without waiting for a breaker that could still hold its batch")
        #expect(holder.wait(seconds: 30), "the unpin returns once the breaker is past its hold")
        #expect(breaker.wait(seconds: 30))
        #expect(listed.value == [], "the breaker rechecked the slot and skipped the ended lease")
        #expect(space.leaseList.isEmpty)
        #expect(lab.dax.pins.pinCount(lab.fs.currentBlock(lab.file, page: 1)) == 0)
        #else
        try Test.cancel(testHooksMissing)
        #endif
    }

    @Test("a thread's first lease takes its own slot, a second one while the first lives a shared slot; a lease ended on another thread frees the slot")
    func ownedSlots() throws {
        let thread = Int(CShims_thread_index())
        guard thread < LeaseTable.ownedSlots else {
            try Test.cancel("this test's thread has index \(thread), past the owned slots (more live threads than the table has)")
        }
        let lab = try Lab(policy: .wait, pages: 4)
        let space = try lab.space
        let first = HandleSlot(try space.pin(0..<1, write: true))
        defer { first.unpin() }
        #expect(first.withHandle { $0.batch.takeUnretainedValue().leaseSlot } == LeaseTable.ownedSlot(thread))
        let second = HandleSlot(try space.pin(1..<2, write: true))
        defer { second.unpin() }
        let shared = try #require(second.withHandle { $0.batch.takeUnretainedValue().leaseSlot })
        #expect(shared >= LeaseTable.ownedSlots && shared < LeaseTable.slotCount, "slot \(shared)")
        // The first lease ends on another thread: its clear is the only store into this thread's
        // slot not made by this thread.
        #expect(lab.background { first.unpin() }.wait(seconds: 30))
        try holding(try space.pin(2..<3, write: true)) { third in
            #expect(third.batch.takeUnretainedValue().leaseSlot == LeaseTable.ownedSlot(thread))
            #expect(Set(space.leaseList.map(\.pages.lowerBound)) == [1, 2])
            second.unpin()
        }
        #expect(space.leaseList.isEmpty)
        for page in 0..<3 { #expect(lab.dax.pins.pinCount(lab.fs.currentBlock(lab.file, page: page)) == 0) }
    }

    @Test("the first eight threads' owned slots lie on eight cache lines; every thread index below the owned slots has its own")
    func ownedSlotLayout() {
        let slots = (0..<LeaseTable.ownedSlots).map(LeaseTable.ownedSlot)
        #expect(Set(slots) == Set(0..<LeaseTable.ownedSlots))
        #expect(Set(slots[0..<8].map { $0 / 8 }).count == 8)
    }

    @Test("a thread past the owned slots enters a shared slot, and its lease is listed and ends")
    func threadPastOwnedSlots() throws {
        let lab = try Lab(policy: .wait, pages: 4)
        let space = try lab.space
        // Enough live threads that the next one's index is past the owned slots (indices are the
        // lowest free, so at most this many are below it).
        let parked = LeaseTable.ownedSlots
        let ready = DispatchSemaphore(value: 0)
        let release = DispatchSemaphore(value: 0)
        var parkers: [Finished] = []
        for _ in 0..<parked {
            parkers.append(lab.background {
                _ = CShims_thread_index()
                ready.signal()
                release.wait()
            })
        }
        for _ in 0..<parked { ready.wait() }
        defer {
            for _ in 0..<parked { release.signal() }
            for parker in parkers { #expect(parker.wait(seconds: 10)) }
        }
        let result = Box<(index: Int, slot: Int, listed: Int)?>(nil)
        let pinner = lab.background {
            let index = Int(CShims_thread_index())
            guard let handle = try? space.pin(3..<4, write: true) else { return }
            let slot = handle.batch.takeUnretainedValue().leaseSlot
            let listed = space.leaseList.count
            handle.unpin()
            result.value = (index, slot, listed)
        }
        #expect(pinner.wait(seconds: 10))
        let seen = try #require(result.value, "the pin failed")
        #expect(seen.index >= LeaseTable.ownedSlots, "thread index \(seen.index) with \(parked) others alive")
        #expect(seen.slot >= LeaseTable.ownedSlots && seen.slot < LeaseTable.slotCount, "slot \(seen.slot)")
        #expect(seen.listed == 1)
        #expect(space.leaseList.isEmpty)
        #expect(lab.dax.pins.pinCount(lab.fs.currentBlock(lab.file, page: 3)) == 0)
    }

    @Test("more leases on one file than it has slots: the rest go to the overflow list, and every one is listed and ends")
    func overflow() throws {
        let lab = try Lab(policy: .wait, pages: LeaseTable.slotCount + 8)
        let space = try lab.space
        var listed: [LeaseInfo] = []
        // (Handles are not copyable: each level of the recursion holds one pin.)
        func pinFrom(_ page: Int) throws {
            guard page < LeaseTable.slotCount + 8 else {
                listed = space.leaseList
                return
            }
            let handle = try space.pin(page..<(page + 1), write: true)
            do { try pinFrom(page + 1) } catch {
                handle.unpin()
                throw error
            }
            handle.unpin()
        }
        try pinFrom(0)
        #expect(listed.count == LeaseTable.slotCount + 8)
        #expect(Set(listed.map(\.pages.lowerBound)) == Set(0..<(LeaseTable.slotCount + 8)))
        #expect(space.leaseList.isEmpty)
    }

    /// The run lasts until every thread has done its share (counted successes), not for a time:
    /// on a slow or loaded machine it runs longer instead of testing less. Under `wait` nothing
    /// here can fail: a pin faults a punched page in again, a punch waits for the pins over its
    /// page; any error is recorded as one.
    @Test("pins and unpins on four threads while two breakers list and punch: every lease ends, nothing stays pinned",
          arguments: [false, true])
    func stress(fallback: Bool) throws {
        let lab = try self.lab(fallback: fallback, pages: 64)
        let space = try lab.space
        for page in 0..<64 { _ = try space.fault(page, write: true) }
        let (pinsEach, lists, punches) = (500, 200, 200)
        let stop = ManagedAtomic<Bool>(false)
        let pinned = (0..<4).map { _ in ManagedAtomic<Int>(0) }
        let listed = ManagedAtomic<Int>(0)
        let punched = ManagedAtomic<Int>(0)
        let failures = Locked<[String]>([])
        var workers: [Finished] = []
        for thread in 0..<4 {
            workers.append(lab.background {
                var round = 0
                while !stop.load(ordering: .relaxed) {
                    let first = (thread * 16 + round) % 60
                    do throws(FSError) {
                        try space.pin(first..<(first + 4), write: true).unpin()
                        pinned[thread].wrappingIncrement(ordering: .relaxed)
                    } catch {
                        failures.withLock { $0.append("pin \(first)..<\(first + 4): \(error)") }
                    }
                    round += 1
                }
            })
        }
        workers.append(lab.background {
            while !stop.load(ordering: .relaxed) {
                _ = space.leaseList
                listed.wrappingIncrement(ordering: .relaxed)
            }
        })
        workers.append(lab.background {
            var round = 0
            while !stop.load(ordering: .relaxed) {
                do throws(FSError) {
                    try lab.fs.punchHole(lab.file, offset: (round % 64) * 4096, length: 4096)
                    punched.wrappingIncrement(ordering: .relaxed)
                } catch {
                    failures.withLock { $0.append("punch of page \(round % 64): \(error)") }
                }
                round += 1
            }
        })
        let done = waitUntil(seconds: 45) {
            pinned.allSatisfy { $0.load(ordering: .relaxed) >= pinsEach } && listed.load(ordering: .relaxed) >= lists
                && punched.load(ordering: .relaxed) >= punches
        }
        stop.store(true, ordering: .relaxed)
        for worker in workers { #expect(worker.wait(seconds: 30)) }
        #expect(done, "the threads did not all do their share: pins \(pinned.map { $0.load(ordering: .relaxed) }), lists \(listed.load(ordering: .relaxed)), punches \(punched.load(ordering: .relaxed))")
        #expect(failures.withLock { $0 }.isEmpty, "\(failures.withLock { $0.prefix(5) })")
        #expect(space.leaseList.isEmpty)
        for page in 0..<64 {
            let block = lab.fs.currentBlock(lab.file, page: page)
            if block != 0 { #expect(lab.dax.pins.pinCount(block) == 0) }
        }
    }
}
