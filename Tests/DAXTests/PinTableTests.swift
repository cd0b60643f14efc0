import Atomics
@testable import DAX
@_spi(Oracle) import DaxFS
import DaxlabSupport
import Foundation
import Testing

/// The pin table keeps two blocks' counts in one 64-bit word, so a run's adjacent blocks are
/// pinned with one add. Each block must still behave as if it had a word of its own: its count,
/// its claims, its release and its waiters' wake-up, whatever its neighbour does.
@Suite("Pin counts in pairs", .serialized, .timeLimit(.minutes(1)))
struct PinTableTests {
    /// A table over 64 blocks whose releases are recorded.
    final class Table: @unchecked Sendable {
        let released = Locked<[UInt32: BusyBlockDisposition]>([:])
        let releases = ManagedAtomic<Int>(0)
        private(set) var pins: PinTable!
        var releaseCount: Int { self.releases.load(ordering: .relaxed) }
        init() {
            self.pins = PinTable(blockCount: 64) { [unowned self] block, disposition in
                self.releases.wrappingIncrement(ordering: .relaxed)
                self.released.withLock { $0[block] = disposition }
            }
        }
    }

    @Test("which blocks pair: an even block other than 0 and the one after it")
    func pairing() {
        #expect(PinTable.pairs(10, 11))
        #expect(!PinTable.pairs(11, 12), "an odd block starts no pair: 11 and 12 are in two words")
        #expect(!PinTable.pairs(10, 12))
        #expect(!PinTable.pairs(0, 1), "block 0 stands for the zero page and is never pinned")
    }

    @Test("a pair pin and single pins of the same word: each block keeps its own count")
    func countsStayApart() {
        let table = Table()
        let pins = table.pins!
        pins.pinPair(10)
        pins.pin(11)
        pins.reference(10)  // a page-table reference weighs 1, not a pin
        #expect(pins.pinCount(10) == 1 && pins.pinCount(11) == 2)
        #expect(pins.pinCount(9) == 0 && pins.pinCount(12) == 0, "the neighbouring words are untouched")
        pins.unpin(11)
        #expect(pins.pinCount(10) == 1 && pins.pinCount(11) == 1)
        pins.unpinPair(10)
        #expect(!pins.maybeDMAPinned(10) && !pins.maybeDMAPinned(11))
        pins.reference(11)
        #expect(!pins.maybeDMAPinned(11), "references alone are no pin")
        pins.dereference(10)
        pins.dereference(11)
        pins.pin(11)
        #expect(pins.pinCount(10) == 0 && pins.pinCount(11) == 1, "the references went without touching the pin")
        pins.unpin(11)
        #expect(table.releaseCount == 0, "nothing was claimed, nothing released")
    }

    @Test("unpinning a list of blocks pairs what shares a word, skips zeros and leaves every count at zero",
          arguments: [[4, 5, 6, 9, 0, 12, 13] as [UInt32], [5, 6, 7, 8], [0, 1, 2, 3], [7], [20, 21, 21, 22]])
    func unpinList(_ blocks: [UInt32]) {
        let table = Table()
        let pins = table.pins!
        for block in blocks where block != 0 { pins.pin(block) }
        blocks.withUnsafeBufferPointer { pins.unpin($0) }
        for block in UInt32(0)..<64 { #expect(pins.pinCount(block) == 0, "block \(block)") }
    }

    @Test("a claim on one half is released by the pair unpin that drops its last pin, once; its neighbour is not",
          arguments: [UInt32(20), 21])
    func claimInAPair(claimed: UInt32) {
        let table = Table()
        let pins = table.pins!
        let other = claimed ^ 1
        pins.pinPair(20)
        #expect(pins.claim(claimed, as: .sequester))
        #expect(pins.claimedDisposition(claimed) == .sequester && pins.claimedDisposition(other) == nil)
        pins.commit([claimed])
        #expect(table.releaseCount == 0, "still pinned: not released at the commit")
        pins.unpinPair(20)
        #expect(table.releaseCount == 1)
        #expect(table.released.withLock { $0 } == [claimed: .sequester])
        #expect(pins.claimedDisposition(claimed) == nil, "the release cleared the claim")
        #expect(pins.pinCount(claimed) == 0 && pins.pinCount(other) == 0)
    }

    @Test("a truncate waiting on the high half of a word is woken by the pair unpin")
    func waiterOnTheHighHalf() {
        let table = Table()
        let pins = table.pins!
        pins.pinPair(30)
        let idle = ManagedAtomic<Bool>(false)
        let done = DispatchSemaphore(value: 0)
        Thread {
            let woke = pins.waits.wait(on: 31, deadline: nil) { !pins.maybeDMAPinned(31) }
            idle.store(woke, ordering: .relaxed)
            done.signal()
        }.start()
        // The waiter is asleep on block 31's queue before the unpin: the wake must come from it.
        let deadline = Date().addingTimeInterval(10)
        while !pins.waits.hasWaiters(31), Date() < deadline { usleep(1000) }
        #expect(pins.waits.hasWaiters(31), "the waiter announced itself")
        pins.unpinPair(30)
        #expect(done.wait(timeout: .now() + 10) == .success, "the waiter was not woken by the pair unpin")
        let wokeIdle = idle.load(ordering: .relaxed)
        #expect(wokeIdle)
    }

    @Test("4 threads pinning pairs, single halves, references and claims on the same words: every count exact throughout, zero after")
    func concurrentHalves() {
        let table = Table()
        let pins = table.pins!
        let errors = ManagedAtomic<Int>(0)
        let group = DispatchGroup()
        for thread in 0..<4 {
            DispatchQueue.global().async(group: group) {
                for round in 0..<50_000 {
                    let first = UInt32(2 + 2 * (round % 8))  // words 1-8, shared by all threads
                    switch thread {
                    case 0:
                        pins.pinPair(first)
                        if pins.pinCount(first) < 1 || pins.pinCount(first + 1) < 1 { errors.wrappingIncrement(ordering: .relaxed) }
                        pins.unpinPair(first)
                    case 1:
                        pins.pin(first + 1)
                        if pins.pinCount(first + 1) < 1 { errors.wrappingIncrement(ordering: .relaxed) }
                        pins.unpin(first + 1)
                    case 2:
                        pins.pin(first)
                        if pins.pinCount(first) < 1 { errors.wrappingIncrement(ordering: .relaxed) }
                        pins.unpin(first)
                    default:
                        // References, and claims on the low half (compare-and-swaps on the whole
                        // word) while the others add to it; never committed, so never released.
                        pins.reference(first + 1)
                        if pins.claim(first, as: .deferred) { pins.abort([first]) }
                        pins.dereference(first + 1)
                    }
                }
            }
        }
        #expect(group.wait(timeout: .now() + 50) == .success, "a thread hung")
        let missed = errors.load(ordering: .relaxed)
        #expect(missed == 0, "a held pin was not counted")
        for block in UInt32(0)..<64 {
            #expect(pins.pinCount(block) == 0 && !pins.maybeDMAPinned(block), "block \(block)")
            #expect(pins.claimedDisposition(block) == nil)
        }
        #expect(table.releaseCount == 0)
    }
}
