import Atomics
import DaxFS

/// Per-block reference counts in which a pin weighs `pinBias` (the kernel's
/// `GUP_PIN_COUNTING_BIAS`, 1024) and an ordinary reference (a mapping in a page table) weighs 1,
/// so "maybe DMA-pinned" can be asked of any block (`folio_maybe_dma_pinned`).
///
/// The top bits carry the release claims of blocks that left their file while pinned: `sequester`
/// or `deferred` (a `BusyBlockDisposition`), and `committed` once the removing transaction is
/// durable. The last unpin and the commit race to release the block; clearing the claim with a
/// compare-and-swap decides which one does it, exactly once. Releasing means handing the block to
/// `release` (the reclaimer's queue): an unpin never takes a file-system lock.
///
/// Counts are kept in pairs: the 64-bit word `k` holds block `2k` in its low half and block
/// `2k + 1` in its high half, so pinning (or unpinning) two adjacent blocks of a run is one atomic
/// add, as the kernel's GUP takes one atomic per large folio rather than one per page. Every
/// access is to the whole word (no mixed-size atomics); an operation on one block changes only
/// its half. A half's count never goes below zero nor reaches the flag bits, so no add carries or
/// borrows across halves.
public final class PinTable: @unchecked Sendable {
    public static let pinBias: UInt32 = 1024
    private static let sequestered: UInt32 = 1 << 31
    private static let deferred: UInt32 = 1 << 30
    private static let committed: UInt32 = 1 << 29
    private static let countMask: UInt32 = committed - 1
    private static let claims: UInt32 = sequestered | deferred

    // One atomic word per two blocks of the image, allocated once; only accessed atomically.
    private let words: UnsafeMutablePointer<UnsafeAtomic<UInt64>.Storage>
    let blockCount: Int
    let waits = WaitQueues()
    private let release: @Sendable (UInt32, BusyBlockDisposition) -> Void

    /// - Parameter release: takes a claimed block once it is idle and its removal committed.
    init(blockCount: Int, release: @escaping @Sendable (UInt32, BusyBlockDisposition) -> Void) {
        self.blockCount = blockCount
        self.words = .allocate(capacity: (blockCount + 1) / 2)
        self.words.initialize(repeating: UnsafeAtomic<UInt64>.Storage(0), count: (blockCount + 1) / 2)
        self.release = release
    }

    deinit { self.words.deallocate() }

    /// The word holding `block`'s half.
    @inline(__always)
    private func word(_ block: UInt32) -> UnsafeAtomic<UInt64> { UnsafeAtomic(at: self.words + Int(block >> 1)) }

    /// Where `block`'s half starts in its word.
    @inline(__always)
    private static func shift(_ block: UInt32) -> UInt64 { UInt64(block & 1) &<< 5 }

    /// `value` moved into `block`'s half.
    @inline(__always)
    private static func inHalf(_ value: UInt32, of block: UInt32) -> UInt64 { UInt64(value) &<< Self.shift(block) }

    /// `block`'s half of `word`.
    @inline(__always)
    private static func half(_ word: UInt64, of block: UInt32) -> UInt32 {
        UInt32(truncatingIfNeeded: word &>> Self.shift(block))
    }

    /// Whether `first` and the block after it share a word (`first` even): pinned together with
    /// one add. Block 0 (the zero page's stand-in, never pinned) never pairs.
    @inline(__always)
    static func pairs(_ first: UInt32, _ second: UInt32) -> Bool {
        first & 1 == 0 && first != 0 && second == first &+ 1
    }

    // MARK: Hot path

    /// Adds a pin (`pinBias`) to `block`.
    @inline(__always)
    func pin(_ block: UInt32) {
        self.word(block).wrappingIncrement(by: Self.inHalf(Self.pinBias, of: block), ordering: .sequentiallyConsistent)
    }

    /// Adds a pin to `first` and to the block after it, in one add (`pairs(first, first + 1)`).
    @inline(__always)
    func pinPair(_ first: UInt32) {
        self.word(first).wrappingIncrement(by: Self.pairBias, ordering: .sequentiallyConsistent)
    }

    private static let pairBias = UInt64(pinBias) | UInt64(pinBias) << 32

    /// Drops a pin; the last one wakes waiters and releases a claimed block.
    @inline(__always)
    func unpin(_ block: UInt32) {
        let delta = Self.inHalf(Self.pinBias, of: block)
        let after = self.word(block).loadThenWrappingDecrement(by: delta, ordering: .sequentiallyConsistent) &- delta
        self.afterUnpin(block, Self.half(after, of: block))
    }

    /// Drops a pin of `first` and one of the block after it, in one subtraction.
    @inline(__always)
    func unpinPair(_ first: UInt32) {
        let after = self.word(first).loadThenWrappingDecrement(by: Self.pairBias, ordering: .sequentiallyConsistent)
            &- Self.pairBias
        self.afterUnpin(first, UInt32(truncatingIfNeeded: after))
        self.afterUnpin(first &+ 1, UInt32(truncatingIfNeeded: after >> 32))
    }

    /// Drops one pin of each of `blocks` (0s, the zero page, skipped), two adjacent blocks of a
    /// run at a time.
    @inline(__always)
    func unpin(_ blocks: UnsafeBufferPointer<UInt32>) {
        var index = 0
        while index < blocks.count {
            let block = blocks[index]
            if index + 1 < blocks.count, Self.pairs(block, blocks[index + 1]) {
                self.unpinPair(block)
                index += 2
            } else {
                if block != 0 { self.unpin(block) }
                index += 1
            }
        }
    }

    /// After an unpin left `after` in `block`'s half. The last pin: a claimed block is released,
    /// and a truncate sleeping on the block's queue is woken. Mostly neither: two loads, no call.
    @inline(__always)
    private func afterUnpin(_ block: UInt32, _ after: UInt32) {
        if after & Self.countMask < Self.pinBias, after & Self.claims != 0 || self.waits.hasWaiters(block) {
            self.lastPinDropped(block, after)
        }
    }

    @inline(never)
    private func lastPinDropped(_ block: UInt32, _ word: UInt32) {
        if word & Self.claims != 0 { self.releaseIfReady(block) }
        self.waits.wake(block)
    }

    /// An ordinary reference: a page-table mapping.
    func reference(_ block: UInt32) {
        self.word(block).wrappingIncrement(by: Self.inHalf(1, of: block), ordering: .relaxed)
    }

    func dereference(_ block: UInt32) {
        self.word(block).wrappingDecrement(by: Self.inHalf(1, of: block), ordering: .relaxed)
    }

    // MARK: Queries

    /// Times a sleeping truncate was woken (condition-variable returns), and broadcasts sent by
    /// last unpins: a waiter woken only by unpins sees one per unpin, never one per tick.
    public var waitWakeups: Int { self.waits.wakeups.load(ordering: .relaxed) }
    public var wakeBroadcasts: Int { self.waits.broadcasts.load(ordering: .relaxed) }
    /// Sleeps begun with a deadline (a policy's timeout, a lease-break time), and those that
    /// ended at it with the block still pinned. A sleep without a deadline ends only when an
    /// unpin wakes it.
    public var timedWaits: Int { self.waits.timedWaits.load(ordering: .relaxed) }
    public var expiredWaits: Int { self.waits.expiredWaits.load(ordering: .relaxed) }

    /// Whether a truncate, punch, unlink or rename is asleep waiting for `block`'s pins (a thread
    /// sleeps in its wait queue's bucket, past its last check): the state a test waits for before
    /// it acts on the sleeper.
    public func hasWaiters(on block: UInt32) -> Bool { self.waits.hasSleepers(block) }

    /// Whether `block` may be pinned for DMA (the count holds at least one pin's bias).
    public func maybeDMAPinned(_ block: UInt32) -> Bool {
        Self.half(self.word(block).load(ordering: .sequentiallyConsistent), of: block) & Self.countMask >= Self.pinBias
    }

    /// Pins on `block` now.
    public func pinCount(_ block: UInt32) -> Int {
        Int((Self.half(self.word(block).load(ordering: .relaxed), of: block) & Self.countMask) / Self.pinBias)
    }

    // MARK: Claims

    /// Claims `block` for release on its last unpin, as `disposition` says, if it is pinned now.
    func claim(_ block: UInt32, as disposition: BusyBlockDisposition) -> Bool {
        precondition(disposition != .free, "a block freed at once is not claimed")
        let flag = disposition == .sequester ? Self.sequestered : Self.deferred
        var current = self.word(block).load(ordering: .sequentiallyConsistent)
        while Self.half(current, of: block) & Self.countMask >= Self.pinBias {
            let (exchanged, original) = self.word(block).weakCompareExchange(
                expected: current, desired: current | Self.inHalf(flag, of: block), ordering: .sequentiallyConsistent)
            if exchanged { return true }
            current = original
        }
        return false
    }

    /// The disposition `block` is claimed for, or nil.
    func claimedDisposition(_ block: UInt32) -> BusyBlockDisposition? {
        let word = Self.half(self.word(block).load(ordering: .relaxed), of: block)
        if word & Self.sequestered != 0 { return .sequester }
        if word & Self.deferred != 0 { return .deferred }
        return nil
    }

    /// The removal that claimed `blocks` committed: release those already idle.
    func commit(_ blocks: [UInt32]) {
        for block in blocks {
            _ = self.word(block).loadThenBitwiseOr(with: Self.inHalf(Self.committed, of: block), ordering: .sequentiallyConsistent)
            self.releaseIfReady(block)
        }
    }

    /// The removal failed: drop the claims.
    func abort(_ blocks: [UInt32]) {
        for block in blocks {
            _ = self.word(block).loadThenBitwiseAnd(
                with: ~Self.inHalf(Self.claims | Self.committed, of: block), ordering: .sequentiallyConsistent)
        }
    }

    /// Releases `block` if it is claimed, committed and unpinned, and nobody else did already.
    private func releaseIfReady(_ block: UInt32) {
        var current = self.word(block).load(ordering: .sequentiallyConsistent)
        while case let mine = Self.half(current, of: block),
            mine & Self.claims != 0, mine & Self.committed != 0, mine & Self.countMask < Self.pinBias
        {
            let (exchanged, original) = self.word(block).weakCompareExchange(
                expected: current, desired: current & ~Self.inHalf(Self.claims | Self.committed, of: block),
                ordering: .sequentiallyConsistent)
            if exchanged {
                self.release(block, mine & Self.sequestered != 0 ? .sequester : .deferred)
                return
            }
            current = original
        }
    }
}
