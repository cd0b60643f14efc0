import DAX
@_spi(Oracle) import DaxFS
import Foundation
import Testing
import TestSupport

/// Policy `mainline`: what v6.15 does (mm/gup.c `check_vma_flags`, fs/dax.c `dax_break_layout`).
@Suite("mainline: long-term pins refused, short-term pins waited for", .timeLimit(.minutes(1)))
struct MainlineTests {
    @Test("a long-term pin of a DAX file is refused with EOPNOTSUPP and leaves nothing behind; a short-term pin is allowed")
    func longTermRefused() throws {
        let lab = try Lab(policy: .mainline)
        let error = refusal("a long-term pin was allowed under mainline") {
            try lab.space.pin(0..<2, write: true)  // long-term unless told
        }
        #expect(error?.code == .notSupported)
        #expect(error?.message.contains("EOPNOTSUPP") == true, "\(String(describing: error))")
        #expect(lab.dax.statistics.longTermRefused.load(ordering: .relaxed) == 1)
        #expect(try lab.space.leaseList.isEmpty, "a refused pin records no lease")
        let block = lab.fs.currentBlock(lab.file, page: 0)
        #expect(lab.dax.pins.pinCount(block) == 0)
        try holding(try lab.space.pin(0..<2, write: true, term: .shortTerm)) { handle in
            #expect(lab.dax.pins.pinCount(handle.block(at: 0)) == 1)
        }
    }

    @Test("a long-term kernel pin is refused under mainline before io_uring registers anything",
          .enabled(if: ioUringRefusal == nil, "io_uring is refused here (seccomp, io_uring_disabled or an old kernel)"))
    func kernelLongTermRefused() throws {
        let lab = try Lab(policy: .mainline)
        let ring = try KernelRing(slots: 2)
        let error = refusal("a long-term kernel pin was allowed under mainline") {
            try lab.space.pin(0..<1, write: true, kernel: .longTerm(ring))
        }
        #expect(error?.code == .notSupported)
        #expect(ring.freeSlots == 2, "no fixed-buffer slot was taken")
        #expect(try lab.space.leaseList.isEmpty)
    }

    @Test("a term a kernel pin contradicts is refused")
    func contradictoryTerm() throws {
        let lab = try Lab(policy: .wait)
        let error = refusal("a short-term kernel pin was taken as long-term") {
            try lab.space.pin(0..<1, write: true, term: .longTerm, kernel: .shortTerm)
        }
        #expect(error?.code == .invalidArgument)
        #expect(try lab.space.leaseList.isEmpty)
    }

    /// The wait's timeout is a nanosecond, so a sleep that honoured it would end at once, and
    /// the truncate with `.timedOut`. Mainline's sleep has no deadline (the wait queue counts
    /// none begun with one): the truncate is seen asleep on the pinned block's queue (not
    /// returned), and after the unpin it succeeds, having slept once, woken by the unpin.
    @Test("truncate sleeps until the short-term pin drops, with no timeout even where wait would have one")
    func truncateWaitsWithoutTimeout() throws {
        let lab = try Lab(policy: .mainline, times: PolicyTimes(waitTimeout: .nanoseconds(1)))
        let file = lab.file
        let statistics = lab.dax.statistics
        let pins = lab.dax.pins
        let failure = Box<FSError?>(nil)
        let (block, truncated) = try holding(try lab.space.pin(2..<3, write: true, term: .shortTerm)) { handle in
            let block = handle.block(at: 0)
            let truncated = lab.background {
                do throws(FSError) { try lab.fs.truncate(file, size: 4096) } catch { failure.value = error }
            }
            try #require(waitUntil(seconds: 30) { pins.hasWaiters(on: block) || truncated.isDone },
                         "the truncate neither returned nor waited on the pinned block")
            #expect(!truncated.isDone, "the truncate returned while the block was pinned: \(String(describing: failure.value))")
            #expect(lab.fs.currentBlock(file, page: 2) == block)
            #expect(!lab.fs.isFreeForAllocation(block))
            #expect(statistics.truncatesWaited.load(ordering: .relaxed) == 1)
            #expect(pins.timedWaits == 0, "mainline's sleep has a deadline")
            return (block, truncated)
        }
        #expect(truncated.wait(seconds: 30), "the truncate did not finish after the unpin")
        #expect(failure.value == nil, "a timed wait gave up: \(String(describing: failure.value))")
        #expect(statistics.waits.load(ordering: .relaxed) == 1, "one sleep, ended by the unpin")
        #expect(pins.wakeBroadcasts == 1, "the unpin woke it")
        #expect(pins.timedWaits == 0 && pins.expiredWaits == 0, "a sleep with a deadline, or ended by one")
        #expect(lab.fs.isFreeForAllocation(block))
        #expect(try lab.fs.stat(file).size == 4096)
    }
}

/// Unmount with a pin outstanding: DMA must not outlive an unmount under a protective policy
/// (the next mount would reclaim lost+found and trust the bitmap). Each test waits for the
/// unmount's decision (it returned, refused, or sleeps on the pin), not for a time.
@Suite("Unmount with pins outstanding, under every policy", .timeLimit(.minutes(2)))
struct UnmountTests {
    @Test("what unmount does with a pin outstanding", arguments: TruncatePolicy.allCases)
    func unmountWithPin(policy: TruncatePolicy) throws {
        let lab = try Lab(policy: policy, times: PolicyTimes(leaseBreakTime: .milliseconds(100)))
        let statistics = lab.dax.statistics
        let slot = HandleSlot(try lab.space.pin(1..<3, write: true, term: .shortTerm))
        defer { slot.unpin() }
        let block = lab.fs.currentBlock(lab.file, page: 1)
        switch policy {
        case .none:
            try lab.fs.unmount()
            #expect(!lab.fs.isMounted, "none unmounts at once")
            #expect(statistics.pinsOutlivingUnmount.load(ordering: .relaxed) == 2, "the bug: the pins outlive it")
            slot.unpin()
        case .fail:
            do {
                try lab.fs.unmount()
                Issue.record("unmount succeeded with a pin outstanding under fail")
            } catch { #expect(error.code == .busy) }
            #expect(lab.fs.isMounted)
            #expect(statistics.unmountsRefused.load(ordering: .relaxed) == 1)
            try lab.fs.write(lab.file, offset: 0, bytes: [1, 2, 3])  // still mounted and usable
            let again = try lab.space.pin(5..<6, write: true, term: .shortTerm)  // pins allowed again
            again.unpin()
            slot.unpin()
            try lab.fs.unmount()
        case .leaseBreak:
            try lab.fs.unmount()  // breaks the lease, waits the break time, revokes
            #expect(!lab.fs.isMounted)
            #expect(statistics.revocations.load(ordering: .relaxed) == 1)
            #expect(lab.dax.pins.pinCount(block) == 0, "the revocation dropped the pins")
            slot.unpin()
        case .wait, .mainline, .sequester, .deferred, .odp:
            let unmounted = lab.background { _ = try? lab.fs.unmount() }  // (a failure shows in isMounted)
            try #require(waitUntil(seconds: 20) { statistics.unmountsWaited.load(ordering: .relaxed) == 1 })
            try #require(waitUntil(seconds: 20) { statistics.waits.load(ordering: .relaxed) > 0 }, "unmount never slept")
            #expect(!unmounted.isDone, "\(policy): unmount returned with a pin outstanding")
            #expect(lab.fs.isMounted)
            let error = refusal("a new pin was allowed while unmounting") {
                try lab.space.pin(6..<7, write: true, term: .shortTerm)
            }
            #expect(error?.code == .invalidArgument)
            slot.unpin()
            #expect(unmounted.wait(seconds: 20), "\(policy): unmount did not finish after the unpin")
            #expect(!lab.fs.isMounted)
        }
        let fsck = try Fsck.run(path: lab.path)
        #expect(fsck.isClean, "\(policy): \(fsck.result.problems.prefix(3))")
        let again = try FileSystem.mount(path: lab.path)
        #expect(try again.read(again.lookup("data"), offset: 4096, count: 8192).allSatisfy { $0 == 0xAA },
                "unmount changes no file")
        try again.unmount()
    }

    @Test("wait with a timeout: an unmount still pinned at the timeout fails, stays mounted, and allows pins again")
    func waitTimeout() throws {
        let lab = try Lab(policy: .wait, times: PolicyTimes(waitTimeout: .milliseconds(100)))
        try holding(try lab.space.pin(1..<2, write: true)) { _ in
            do {
                try lab.fs.unmount()
                Issue.record("unmount returned with a pin outstanding")
            } catch let error as FSError { #expect(error.code == .timedOut) }
            #expect(lab.fs.isMounted)
            try lab.space.pin(4..<5, write: true).unpin()
        }
        try lab.fs.unmount()
        #expect(try Fsck.run(path: lab.path).isClean)
    }

    @Test("a deferred block across unmount: the unmount waits for its last unpin, which frees it; the next mount finds it free")
    func deferredAcrossUnmount() throws {
        let lab = try Lab(policy: .deferred)
        let slot = HandleSlot(try lab.space.pin(3..<4, write: true, term: .shortTerm))
        defer { slot.unpin() }
        let block = lab.fs.currentBlock(lab.file, page: 3)
        try lab.fs.punchHole(lab.file, offset: 3 * 4096, length: 4096)
        #expect(lab.dax.statistics.deferredNow.load(ordering: .relaxed) == 1, "in limbo: free on the media only")
        let unmounted = lab.background { _ = try? lab.fs.unmount() }  // (a failure shows in isMounted)
        try #require(waitUntil(seconds: 20) { lab.dax.statistics.unmountsWaited.load(ordering: .relaxed) == 1 })
        #expect(!unmounted.isDone)
        slot.unpin()
        #expect(unmounted.wait(seconds: 20))
        #expect(lab.dax.statistics.deferredNow.load(ordering: .relaxed) == 0, "released before the unmount finished")
        let again = try FileSystem.mount(path: lab.path)
        #expect(again.isFreeForAllocation(block))
        #expect(try again.read(again.lookup("data"), offset: 3 * 4096, count: 4096).allSatisfy { $0 == 0 })
        try again.unmount()
    }

    @Test("a sequestered block across unmount: released from lost+found before the unmount finishes, nothing left for the next mount")
    func sequesterAcrossUnmount() throws {
        let lab = try Lab(policy: .sequester)
        let slot = HandleSlot(try lab.space.pin(2..<4, write: true, term: .shortTerm))
        defer { slot.unpin() }
        try lab.fs.truncate(lab.file, size: 4096)
        #expect(lab.fs.lostFoundBlocks == 2)
        let unmounted = lab.background { _ = try? lab.fs.unmount() }  // (a failure shows in isMounted)
        try #require(waitUntil(seconds: 20) { lab.dax.statistics.unmountsWaited.load(ordering: .relaxed) == 1 })
        #expect(!unmounted.isDone)
        slot.unpin()
        #expect(unmounted.wait(seconds: 20))
        let again = try FileSystem.mount(path: lab.path)
        #expect(again.mountReport.reclaimedLostFoundBlocks == 0, "the unmount emptied lost+found itself")
        #expect(again.lostFoundBlocks == 0)
        try again.unmount()
    }
}
