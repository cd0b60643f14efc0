import Pmem
import Atomics
import DaxlabSupport
import Synchronization

/// Reserved blocks: how a write fault to a hole avoids a log transaction of its own.
///
/// A file takes up to `InodeRecord.maximumReservation` blocks at once, from the allocator shard
/// of the CPU it runs on, in one transaction that sets their bitmap bits, lists them in the
/// inode's reservation and counts them in its `blocks`; before that transaction commits they
/// are zeroed with non-temporal stores, so its barrier makes the zeros durable too (XFS's
/// speculative preallocation and ext4's delayed allocation also pay for many allocations with
/// one metadata update). A later write fault to a hole whose pointer slot lies in a block-map
/// block that already exists takes one of those blocks and makes one 8-byte store durable: the
/// pointer. Nothing else on the media changes: the block was already allocated, zeroed and
/// counted.
///
/// The crash guarantee: a fault that returned survives with its block mapped and zeroed (the
/// pointer was durable before it returned, the zeros before the reservation was). A block the
/// reservation lists and no page maps is freed by the next mount (`reclaimReservations`); one
/// that leaves the file (truncate, punch, collapse, unlink) leaves the reservation in the same
/// transaction. Direct pages (0-11) keep the transaction path: their pointers live in the
/// checksummed inode. So does a fault whose map block is missing (it is made then). Neither
/// path without a transaction touches the inode, so neither changes the file's modification
/// time (a write fault through the log, and every write, truncate and larger punch, do).
extension FileSystem {
    /// The most blocks one file holds in reserve for its write faults: also how many punched
    /// blocks one scrub zeroes at most.
    public static var reservationSize: Int { InodeRecord.maximumReservation }

    /// How many fault stripes there are; inode `n` belongs to stripe `n % faultStripes`.
    static let faultStripes = 64

    /// One stripe of fault allocation, behind its lock.
    struct FaultStripe {
        /// One inode's reserved blocks that no page maps. `zeroed` ones are zero on the media
        /// (drained), lowest last; `punched` ones left a page in a punch and still hold its bytes
        /// until a fault that finds no zeroed one scrubs them all (non-temporal zeroing, one
        /// drain).
        private struct Reserve {
            var zeroed: [UInt32] = []
            var punched: [UInt32] = []
        }

        /// Fault allocations made under this stripe (tests).
        var allocations = 0
        /// Per inode of the stripe (inode `n` at `n / faultStripes`): an array, not a dictionary,
        /// so there is no hashing on the fault path.
        private var reserves: [Reserve] = []

        private static func index(_ number: Int) -> Int { number / FileSystem.faultStripes }

        func hasZeroed(_ number: Int) -> Bool {
            let index = Self.index(number)
            return index < self.reserves.count && !self.reserves[index].zeroed.isEmpty
        }

        /// Inode `number`'s punched blocks waiting to be zeroed.
        func punchedBlocks(_ number: Int) -> [UInt32] {
            let index = Self.index(number)
            return index < self.reserves.count ? self.reserves[index].punched : []
        }

        /// Inode `number`'s reserved blocks no page maps, zeroed or not.
        func unusedCount(_ number: Int) -> Int {
            let index = Self.index(number)
            return index < self.reserves.count ? self.reserves[index].zeroed.count + self.reserves[index].punched.count : 0
        }

        /// The next zeroed reserved block of inode `number` (`hasZeroed` said there is one).
        mutating func takeZeroed(_ number: Int) -> UInt32 { self.reserves[Self.index(number)].zeroed.removeLast() }

        /// Gives a zeroed reserved block back to inode `number`.
        mutating func putZeroed(_ number: Int, _ block: UInt32) {
            self.grow(to: number)
            self.reserves[Self.index(number)].zeroed.append(block)
        }

        /// Gives a reserved block that a punch unmapped back to inode `number`, not yet zeroed.
        mutating func putPunched(_ number: Int, _ block: UInt32) {
            self.grow(to: number)
            self.reserves[Self.index(number)].punched.append(block)
        }

        /// Inode `number`'s punched block to zero next, left in place (`lastPunchedZeroed` moves it
        /// once its zeros are drained; if zeroing fails it simply stays punched).
        func lastPunched(_ number: Int) -> UInt32? {
            let index = Self.index(number)
            return index < self.reserves.count ? self.reserves[index].punched.last : nil
        }

        /// Moves inode `number`'s last punched block (`lastPunched`) to its zeroed ones: its zeros
        /// are drained.
        mutating func lastPunchedZeroed(_ number: Int) {
            let index = Self.index(number)
            self.reserves[index].zeroed.append(self.reserves[index].punched.removeLast())
        }

        /// Moves the first `count` of inode `number`'s punched blocks to its zeroed ones (they have
        /// been zeroed and drained) and, when `dropNext`, forgets the one after them (its zeroing
        /// failed); the rest stay punched.
        mutating func scrubbed(_ number: Int, count: Int, dropNext: Bool) {
            let index = Self.index(number)
            let end = min(self.reserves[index].punched.count, count + (dropNext ? 1 : 0))
            self.reserves[index].zeroed += self.reserves[index].punched[..<count]
            self.reserves[index].punched.removeSubrange(..<end)
        }

        /// Replaces inode `number`'s unused reserved blocks with `blocks`, zeroed (empty: forgets
        /// them all).
        mutating func setZeroed(_ number: Int, _ blocks: [UInt32]) {
            self.grow(to: number)
            self.reserves[Self.index(number)] = Reserve(zeroed: blocks)
        }

        private mutating func grow(to number: Int) {
            let index = Self.index(number)
            if index >= self.reserves.count {
                self.reserves += Array(repeating: Reserve(), count: index + 1 - self.reserves.count)
            }
        }
    }

    /// Free blocks per reserved block: a file reserves only while the allocator has at least this
    /// many times every file's unused reserved blocks, its new ones included, free. So at most
    /// about 1/64 of the space that was free can sit unused in reserves when the image fills up
    /// (until the files fault it in, or the next mount frees it).
    static let reservationHeadroom = 64

    /// Runs `body` with inode `inode`'s fault stripe locked.
    @inline(__always)
    func withStripe<Result, Failure: Error>(
        _ inode: Int, _ body: (inout FaultStripe) throws(Failure) -> Result
    ) throws(Failure) -> Result {
        try self.allocationLocks.withLock(inode % Self.faultStripes, body)
    }

    /// Maps a reserved block at `page` of inode `number` (a hole), whose pointer lives at `slot`
    /// in a block-map block (`BlockMapReader.mapSlot`; direct pages and pages whose map block is
    /// missing take the transaction path). When the file has no zeroed reserved block it first
    /// scrubs the ones punches gave back, and when it has none of those either it takes a new
    /// reservation. The caller holds the file's lock (shared at least) and its stripe's lock.
    /// - Returns: the block, durable in the map; nil when the page must take the transaction
    ///   path (too little free space to reserve).
    func mapReserved(_ number: Int, slot: Int, page: Int, stripe: inout FaultStripe) throws(FSError) -> UInt32? {
        if !stripe.hasZeroed(number) {
            try self.scrubPunched(number, stripe: &stripe)
        }
        if !stripe.hasZeroed(number) {
            guard try self.takeReservation(number, page: page, stripe: &stripe) else { return nil }
        }
        let block = stripe.takeZeroed(number)
        self.unusedReserved.add(-1, stripeOf: number)
        self.allocator.allocationObserver?.didAllocate(block, inode: number, page: page)
        // One aligned 8-byte store: the entry is old or new after a crash, never torn.
        self.media.base.storeBytes(
            of: MapEntry.encode(block, inode: number, position: UInt32(page)), toByteOffset: slot, as: UInt64.self)
        do {
            try self.media.flush(slot, MapEntry.size)
        } catch {
            self.media.base.storeBytes(of: 0, toByteOffset: slot, as: UInt64.self)
            stripe.putZeroed(number, block)
            self.unusedReserved.add(1, stripeOf: number)
            throw error
        }
        // While the pointer's write-back is in flight, zero one block a punch gave back: its
        // non-temporal stores drain with the pointer, at the same barrier (see `scrubUnderPersist`).
        let scrubbed = self.scrubUnderPersist(number, stripe: stripe)
        self.media.barrier()
        if scrubbed { stripe.lastPunchedZeroed(number) }
        return block
    }

    /// Zeroes one of inode `number`'s punched blocks without draining, for the caller's next
    /// barrier, which waits for a pointer's write-back anyway: on a CPU whose write-back is
    /// slower than 4 KiB of non-temporal stores, the zeroing then costs little or nothing, and
    /// in steady state (a fault per punch) the reserve never needs a batch scrub. The block no
    /// page maps (its punch made its pointer's clearing durable), so a crash that leaves it
    /// half zeroed loses nothing: mount reclaims it, and the allocator zeroes what it hands out.
    /// - Returns: whether it zeroed one (the stripe's last punched block, which goes to the zeroed
    ///   list after the barrier); false when there is none or its zeroing failed (it stays
    ///   punched, for a later scrub).
    private func scrubUnderPersist(_ number: Int, stripe: borrowing FaultStripe) -> Bool {
        guard let block = stripe.lastPunched(number) else { return false }
        do {
            try self.media.zero(Int(block) * pageSize, pageSize)
            return true
        } catch {
            return false
        }
    }

    /// Zeroes every block punches gave back to inode `number`'s reserve since the last scrub
    /// (non-temporal stores) and drains once: one barrier for up to a reservation's worth of
    /// punches, instead of one per punch. The caller holds the stripe's lock, so no fault maps
    /// a block before its zeros are durable.
    private func scrubPunched(_ number: Int, stripe: inout FaultStripe) throws(FSError) {
        let punched = stripe.punchedBlocks(number)
        guard !punched.isEmpty else { return }
        var zeroed = 0
        var failure: FSError?
        for block in punched {
            do throws(FSError) {
                try self.media.zero(Int(block) * pageSize, pageSize)
            } catch {
                failure = error
                break
            }
            zeroed += 1
        }
        self.media.barrier()
        stripe.scrubbed(number, count: zeroed, dropNext: failure != nil)
        if let failure {
            // A media error (msync's EIO; non-temporal stores on pmem do not fail): that block
            // leaves the reserve, so no fault maps it, and leaks until fsck --repair frees it;
            // the fault fails with the error, and the blocks after it wait for the next scrub.
            self.unusedReserved.add(-1, stripeOf: number)
            throw failure
        }
    }

    /// Punches `pages` of inode `number` without a transaction when it is one page whose block
    /// is reserved and whose pointer lies in a map block: the pointer is cleared and made
    /// durable (the punch has happened: one persist point), and the block goes back to the
    /// file's reserve with the page's bytes still in it; a later fault zeroes it, with others,
    /// before mapping it (`scrubPunched`). It stays allocated and counted, so nothing else
    /// changes on the media; a crash before it is reused leaves it to mount's reclaim, and the
    /// allocator zeroes every block it hands out. The caller holds the file's lock exclusively,
    /// and the layout breaker has let the block go (`.free`).
    /// - Returns: false (nothing done) when the punch needs the transaction path: more than one
    ///   page, a direct page, a block not reserved, or an intent recorded on the file.
    func unmapReserved(_ number: Int, pages: Range<Int>) throws(FSError) -> Bool {
        let record = self.record(number)
        let page = pages.lowerBound
        guard pages.count == 1, let slot = self.reader.mapSlot(of: record, number, page: page) else { return false }
        let block = self.reader.pointer(at: slot, number, page: page)
        guard block != 0, record.intent == InodeRecord.Intent.none, record.reservationContains(block) else {
            return false
        }
        try self.withStripe(number) { (stripe) throws(FSError) in
            self.media.base.storeBytes(of: 0, toByteOffset: slot, as: UInt64.self)
            try self.media.persist(slot, MapEntry.size)
            // Unmapped now; a device still writing (policy none) writes into the reserve.
            self.allocator.allocationObserver?.didFree(block)
            stripe.putPunched(number, block)
            self.unusedReserved.add(1, stripeOf: number)
        }
        return true
    }

    /// Reserves blocks for inode `number`, whose earlier reservation is all mapped and whose next
    /// write fault is expected at `page`: zeroes them (non-temporal stores, flushed) and commits
    /// one transaction that allocates them, lists them in the inode and counts them. When the file
    /// has an aligned run for the page's range, the blocks are the run's for `page` and the pages
    /// after it (`reservationFromRun`), so faults in page order fill the range from the run. The
    /// blocks of the earlier reservation stay mapped and counted, as ordinary blocks of the file.
    /// - Returns: false (nothing changed) when free space is too low to reserve.
    func takeReservation(_ number: Int, page: Int, stripe: inout FaultStripe) throws(FSError) -> Bool {
        let allowed = self.allocator.freeCount / Self.reservationHeadroom - self.unusedReserved.total
        let count = min(InodeRecord.maximumReservation, allowed)
        guard count >= 2,
            let blocks = self.reservationFromRun(number, page: page, count: count)
                ?? self.allocator.allocate(count, hint: BlockAllocator.currentCPUHint)
        else {
            return false
        }
        do throws(FSError) {
            for block in blocks { try self.media.zero(Int(block) * pageSize, pageSize) }
            _ = try self.log.transaction { (tx) throws(FSError) in
                let staged = tx.inode(number)
                for block in blocks { tx.setAllocated(block) }
                staged.reservation = blocks
                staged.blocks += UInt64(blocks.count)
            }
        } catch {
            self.allocator.release(blocks, aborted: true)
            throw error
        }
        stripe.setZeroed(number, blocks.reversed())
        self.unusedReserved.add(blocks.count, stripeOf: number)
        return true
    }

    /// Forgets inode `number`'s unused reserved blocks (its release has staged freeing them).
    func forgetReservation(_ number: Int) {
        self.withStripe(number) { stripe in
            self.unusedReserved.add(-stripe.unusedCount(number), stripeOf: number)
            stripe.setZeroed(number, [])
        }
    }

    /// Stages dropping `block` from the reservation of the staged inode `record`, if it is
    /// there: the block is leaving the file (truncate, punch, collapse).
    static func dropFromReservation(_ record: InodeRecord, _ block: UInt32) {
        guard record.reservationContains(block) else { return }
        record.reservation = record.reservation.filter { $0 != block }
    }

    /// Stages freeing the reserved blocks of inode `number` that `isMapped` says no page maps,
    /// and empties its reservation.
    /// - Returns: how many were freed.
    @discardableResult
    static func stageReleaseReservation(
        _ tx: Transaction, inode number: Int, isMapped: (UInt32) -> Bool = { _ in false }
    ) -> Int {
        let staged = tx.inode(number)
        guard staged.reservationCount != 0 else { return 0 }
        var freed = 0
        for block in staged.reservation where !isMapped(block) {
            tx.setFree(block)
            freed += 1
        }
        staged.blocks = staged.blocks >= UInt64(freed) ? staged.blocks - UInt64(freed) : 0
        staged.reservation = []
        return freed
    }

    /// Frees, at mount, every reserved block no page maps (the faults that would have used them
    /// died with the last mount), and empties every reservation.
    /// - Returns: blocks freed.
    static func reclaimReservations(
        log: MetadataLog, allocator: BlockAllocator, geometry: Geometry
    ) throws(FSError) -> Int {
        let media = log.media
        let reader = BlockMapReader(base: media.base, geometry: geometry)
        var reclaimed = 0
        for number in FileSystem.firstUserInode..<geometry.inodeCount {
            let record = InodeRecord(media.base + geometry.inodeOffset(number))
            guard record.inUse, record.reservationCount != 0 else { continue }
            var pending = Set(record.reservation)
            var mapped: Set<UInt32> = []
            let pages = Int((record.size + UInt64(pageSize) - 1) / UInt64(pageSize))
            for page in 0..<min(pages, InodeRecord.maximumPages) where !pending.isEmpty {
                let block = reader.block(of: record, number, page: page)
                if pending.remove(block) != nil { mapped.insert(block) }
            }
            let (freed, blocks) = try log.transaction { (tx) throws(FSError) -> Int in
                Self.stageReleaseReservation(tx, inode: number, isMapped: mapped.contains)
            }
            allocator.release(blocks)
            reclaimed += freed
            // Map blocks that punches of reserved pages emptied were kept for write faults.
            var swept = false
            while !swept {
                let (done, maps) = try log.transaction { (tx) throws(FSError) -> Bool in
                    Self.stageReleaseEmptyMaps(tx, inode: number, pages: 0..<InodeRecord.maximumPages)
                }
                allocator.release(maps)
                swept = done
            }
        }
        return reclaimed
    }
}

/// Reserved blocks no page maps, counted per fault stripe: each stripe's count changes only under
/// that stripe's lock, by a load and a store (no read-modify-write on the fault and punch
/// paths), and on a cache line of its own; the total is a relaxed sum of the stripes (a
/// snapshot, as the single relaxed counter it replaces was).
final class StripeCounts: @unchecked Sendable {
    private static let spacing = 8  // counts a cache line apart
    private let counts: UnsafeMutablePointer<UnsafeAtomic<Int>.Storage>
    private let stripes: Int

    init(stripes: Int) {
        self.stripes = stripes
        self.counts = .allocate(capacity: stripes * Self.spacing)
        self.counts.initialize(repeating: UnsafeAtomic<Int>.Storage(0), count: stripes * Self.spacing)
    }

    deinit { self.counts.deallocate() }

    /// Adds `delta` to the stripe of inode `number`; the caller holds that stripe's lock.
    func add(_ delta: Int, stripeOf number: Int) {
        let count = UnsafeAtomic<Int>(at: self.counts + (number % self.stripes) * Self.spacing)
        count.store(count.load(ordering: .relaxed) &+ delta, ordering: .relaxed)
    }

    /// Every stripe's count, summed.
    var total: Int {
        (0..<self.stripes).reduce(0) { $0 &+ UnsafeAtomic<Int>(at: self.counts + $1 * Self.spacing).load(ordering: .relaxed) }
    }
}
