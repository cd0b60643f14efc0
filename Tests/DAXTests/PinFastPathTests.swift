@testable import DAX
@_spi(Oracle) import DaxFS
import Foundation
import Testing
import TestSupport

/// The pin fast path's recheck (gup-fast's `pte_same`): a pin raises the block's count and then
/// checks that the page table still maps the block, undoing and retrying if an invalidation got
/// there first. The window is a few instructions wide, so races alone never hit it; the test
/// hook (builds with DAXLAB_TEST_HOOKS=1) stops the pinner inside it while a punch runs to completion.
@Suite("The pin fast path's recheck", .serialized, .timeLimit(.minutes(1)))
struct PinFastPathTests {
    @Test("an invalidation between the entry load and the pin-count increment makes the pin retry",
          arguments: [TruncatePolicy.wait, .none])
    func invalidationInTheWindow(policy: TruncatePolicy) throws {
        #if DAXLAB_TEST_HOOKS
        let lab = try Lab(policy: policy, pages: 4)
        let file = lab.file
        let space = try lab.space
        _ = try space.fault(2, write: true)  // mapped: the pin takes the fast path
        let old = lab.fs.currentBlock(file, page: 2)
        let fired = Box(false)
        space.pinFastPathHook = { page, block in
            guard page == 2, !fired.value else { return }
            fired.value = true
            #expect(block == old)
            // The punch runs whole while this pinner sits between its load and its increment:
            // nothing is pinned yet, so every policy frees the block.
            let punched = lab.background { _ = try? lab.fs.punchHole(file, offset: 2 * 4096, length: 4096) }
            #expect(punched.wait(seconds: 10), "the punch must not wait for a pinner holding no lock")
            #expect(lab.fs.currentBlock(file, page: 2) == 0)
        }
        defer { space.pinFastPathHook = nil }
        let handle = try space.pin(2..<3, write: true)
        #expect(fired.value, "the hook ran: the pin went through the fast path")
        let pinned = handle.block(at: 0)
        #expect(pinned != 0)
        #expect(pinned == lab.fs.currentBlock(file, page: 2), "the pin holds the page's block, faulted in again")
        #expect(!lab.fs.isFreeForAllocation(pinned), "a pinned block is never in the free pool")
        #expect(lab.dax.pins.pinCount(pinned) == 1)
        if pinned != old { #expect(lab.dax.pins.pinCount(old) == 0, "the pin taken on the old block was undone") }
        handle.unpin()
        #else
        try Test.cancel(testHooksMissing)
        #endif
    }

    @Test("a range pin checks the invalidation sequence once: an invalidation of its third page, after two pins, undoes them all and redoes each page",
          arguments: [TruncatePolicy.wait, .none])
    func invalidationInsideARange(policy: TruncatePolicy) throws {
        #if DAXLAB_TEST_HOOKS
        let lab = try Lab(policy: policy, pages: 4)
        let file = lab.file
        let space = try lab.space
        for page in 0..<4 { _ = try space.fault(page, write: true) }  // all mapped: one fast run
        let before = (0..<4).map { lab.fs.currentBlock(file, page: $0) }
        let fired = Box(false)
        let pinnedWhenFired = Box<[Int]>([])
        space.pinFastPathHook = { page, block in
            guard page == 2, !fired.value else { return }
            fired.value = true
            #expect(block == before[2])
            // The pages before page 2 are pinned by now: the punch of page 2 (unpinned) runs whole.
            pinnedWhenFired.value = (0..<4).map { lab.dax.pins.pinCount(before[$0]) }
            let punched = lab.background { _ = try? lab.fs.punchHole(file, offset: 2 * 4096, length: 4096) }
            #expect(punched.wait(seconds: 10), "the punch must not wait: page 2 is not pinned")
        }
        defer { space.pinFastPathHook = nil }
        let handle = try space.pin(0..<4, write: true)
        #expect(fired.value, "the hook ran: the range went through the fast path")
        // Pages before page 2 were pinned by then, but for page 1 when it shares one add with page
        // 2 (their blocks share a pin-count word: the hook sees both before the add).
        let pairedWithPage1 = PinTable.pairs(before[1], before[2])
        let expected = pairedWithPage1 ? [1, 0, 0, 0] : [1, 1, 0, 0]
        #expect(pinnedWhenFired.value == expected, "the pages before page 2 (and its pair) were pinned before its load")
        let now = (0..<4).map { lab.fs.currentBlock(file, page: $0) }
        #expect(now[2] != 0, "page 2 was faulted in again")
        for index in 0..<4 {
            #expect(handle.block(at: index) == now[index], "page \(index): the pin holds the page's block now")
            #expect(lab.dax.pins.pinCount(now[index]) == 1, "page \(index): pinned once, the undone pin dropped")
        }
        if now[2] != before[2] {
            #expect(lab.dax.pins.pinCount(before[2]) == 0, "the pin taken on page 2's old block was undone")
        }
        handle.unpin()
        for index in 0..<4 { #expect(lab.dax.pins.pinCount(now[index]) == 0) }
        #else
        try Test.cancel(testHooksMissing)
        #endif
    }
}
