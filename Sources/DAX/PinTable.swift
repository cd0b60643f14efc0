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
public final class PinTable: @unchecked Sendable {
    public static let pinBias: UInt32 = 1024
    private static let sequestered: UInt32 = 1 << 31
    private static let deferred: UInt32 = 1 << 30
    private static let committed: UInt32 = 1 << 29
    private static let countMask: UInt32 = committed - 1
    private static let claims: UInt32 = sequestered | deferred

    // One atomic word per block of the image, allocated once; only accessed atomically.
    private let words: UnsafeMutablePointer<UnsafeAtomic<UInt32>.Storage>
    let blockCount: Int
    let waits = WaitQueues()
    private let release: @Sendable (UInt32, BusyBlockDisposition) -> Void

    /// - Parameter release: takes a claimed block once it is idle and its removal committed.
    init(blockCount: Int, release: @escaping @Sendable (UInt32, BusyBlockDisposition) -> Void) {
        self.blockCount = blockCount
        self.words = .allocate(capacity: blockCount)
        self.words.initialize(repeating: UnsafeAtomic<UInt32>.Storage(0), count: blockCount)
        self.release = release
    }

    deinit { self.words.deallocate() }

    @inline(__always)
    private func word(_ block: UInt32) -> UnsafeAtomic<UInt32> { UnsafeAtomic(at: self.words + Int(block)) }

    // MARK: Hot path

    /// Adds a pin (`pinBias`) to `block`.
    @inline(__always)
    func pin(_ block: UInt32) {
        self.word(block).wrappingIncrement(by: Self.pinBias, ordering: .sequentiallyConsistent)
    }

    /// Drops a pin; the last one wakes waiters and releases a claimed block.
    @inline(__always)
    func unpin(_ block: UInt32) {
        let after = self.word(block).loadThenWrappingDecrement(by: Self.pinBias, ordering: .sequentiallyConsistent)
            &- Self.pinBias
        // The last pin: a claimed block is released, and a truncate sleeping on the block's
        // queue is woken. Mostly neither: two loads, no call.
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
        self.word(block).wrappingIncrement(ordering: .relaxed)
    }

    func dereference(_ block: UInt32) {
        self.word(block).wrappingDecrement(ordering: .relaxed)
    }

    // MARK: Queries

    /// Times a sleeping truncate was woken (condition-variable returns), and broadcasts sent by
    /// last unpins: a waiter woken only by unpins sees one per unpin, never one per tick.
    public var waitWakeups: Int { self.waits.wakeups.load(ordering: .relaxed) }
    public var wakeBroadcasts: Int { self.waits.broadcasts.load(ordering: .relaxed) }

    /// Whether `block` may be pinned for DMA (the count holds at least one pin's bias).
    public func maybeDMAPinned(_ block: UInt32) -> Bool {
        self.word(block).load(ordering: .sequentiallyConsistent) & Self.countMask >= Self.pinBias
    }

    /// Pins on `block` now.
    public func pinCount(_ block: UInt32) -> Int {
        Int((self.word(block).load(ordering: .relaxed) & Self.countMask) / Self.pinBias)
    }

    // MARK: Claims

    /// Claims `block` for release on its last unpin, as `disposition` says, if it is pinned now.
    func claim(_ block: UInt32, as disposition: BusyBlockDisposition) -> Bool {
        precondition(disposition != .free, "a block freed at once is not claimed")
        let flag = disposition == .sequester ? Self.sequestered : Self.deferred
        var current = self.word(block).load(ordering: .sequentiallyConsistent)
        while current & Self.countMask >= Self.pinBias {
            let (exchanged, original) = self.word(block).weakCompareExchange(
                expected: current, desired: current | flag, ordering: .sequentiallyConsistent)
            if exchanged { return true }
            current = original
        }
        return false
    }

    /// The disposition `block` is claimed for, or nil.
    func claimedDisposition(_ block: UInt32) -> BusyBlockDisposition? {
        let word = self.word(block).load(ordering: .relaxed)
        if word & Self.sequestered != 0 { return .sequester }
        if word & Self.deferred != 0 { return .deferred }
        return nil
    }

    /// The removal that claimed `blocks` committed: release those already idle.
    func commit(_ blocks: [UInt32]) {
        for block in blocks {
            self.word(block).loadThenBitwiseOr(with: Self.committed, ordering: .sequentiallyConsistent)
            self.releaseIfReady(block)
        }
    }

    /// The removal failed: drop the claims.
    func abort(_ blocks: [UInt32]) {
        for block in blocks {
            self.word(block).loadThenBitwiseAnd(with: ~(Self.claims | Self.committed), ordering: .sequentiallyConsistent)
        }
    }

    /// Releases `block` if it is claimed, committed and unpinned, and nobody else did already.
    private func releaseIfReady(_ block: UInt32) {
        var current = self.word(block).load(ordering: .sequentiallyConsistent)
        while current & Self.claims != 0, current & Self.committed != 0, current & Self.countMask < Self.pinBias {
            let (exchanged, original) = self.word(block).weakCompareExchange(
                expected: current, desired: current & ~(Self.claims | Self.committed), ordering: .sequentiallyConsistent)
            if exchanged {
                self.release(block, current & Self.sequestered != 0 ? .sequester : .deferred)
                return
            }
            current = original
        }
    }
}
