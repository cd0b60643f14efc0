import Atomics
import Synchronization
import CShims
import DaxlabSupport

#if canImport(Glibc)
import Glibc
#endif

/// A file's leases: the pin batches that hold pages of it (FL_ALLOCATED-style: each pin batch
/// records its lease before it pins).
///
/// Pinning and unpinning take no lock, and no locked instruction. A lease is a slot: an atomic
/// word naming its batch, left with one store. The slot does not retain the batch: the lease owns
/// the reference it took from the batch pool and gives it back when it ends, after its slot is
/// cleared (`AddressSpace.finish`). Two kinds of slot:
///
/// - **Owned** (the first `ownedSlots`): one per thread, by `CShims_thread_index`, entered with
///   a plain store when it is empty. Only its thread stores a lease there (anyone may clear the
///   lease it ends), so a thread that loaded it empty owns it until it stores: nothing can be
///   lost between the load and the store. The first eight threads' slots lie on eight different
///   cache lines.
/// - **Shared** (the next `sharedSlots`): for a thread's second lease on the file while its first
///   still holds its slot, and for threads past the first `ownedSlots`: entered with a
///   compare-exchange, the search starting at the thread's CPU's cache line, so pins on
///   different CPUs do not share lines. The rare lease beyond them goes to a mutex-guarded
///   overflow list.
///
/// A plain store leaves the slot in the pinner's store buffer for a while, so a breaker can load
/// a zero where a lease has just been entered. That is harmless: the breaker has moved the file's
/// invalidation sequence before it scans, and the pinner's every path from its store to its
/// check of that sequence passes a locked instruction (the pin count's increment, or the file
/// lock's acquisition on the fault path), which drains the store buffer. So either the breaker
/// sees the slot, or the pinner sees the sequence moved and retries behind the breaker (Dekker,
/// the increment as the pinner's fence).
///
/// Breakers (truncate, punch, lease-break, `leases`) scan the slots and hold each batch they
/// find (`PinBatch.hold`) so it cannot be recycled while they look at it. Reclamation is safe by
/// a quiescent-state rule: a breaker counts itself in `scanners` before its first slot load
/// and out after its last hold; a lease's end clears its slot, then waits until `scanners` is
/// zero, and only then lets the batch go (`PinBatch.waitUntilAlone` then waits for the holds
/// those breakers took). So a breaker that loaded a slot before it was cleared either holds the
/// batch before the end waits for holds, or sees the slot cleared when it rechecks; it never
/// touches a batch that was recycled or freed. Each side stores, then loads what the other
/// stores (the clear, then the count; the count, then the slot), and at least one of them must
/// see the other: the fence between is an `AsymmetricFence`. The ending lease, on every unpin,
/// has only a compiler barrier between its plain store and its load; the breaker, rare, follows
/// its increment with a membarrier. So an unpin whose clear was still in its CPU's store buffer
/// at that moment loads the count after the barrier and sees the breaker; one that loaded the
/// count earlier had its clear made visible by the barrier, and the breaker's slot load sees
/// it. The membarrier costs up to ~10 µs while another thread of the process runs, so a breaker
/// asks for it only once it found a slot taken (and loads that slot again): a scan of a file
/// with no lease now costs none. Without membarrier both sides are sequentially consistent:
/// one locked instruction more per unpin. A scan is a bounded loop of loads and holds with
/// nothing that sleeps, so an ending lease waits at most that long, and only while a breaker
/// runs.
///
/// A file that never had a lease costs a breaker one load (`everLeased`), as a Linux inode with
/// no `i_flctx` costs `break_layout` one: the flag is set, sequentially consistent, before a
/// file's first lease takes its slot, and never cleared. A breaker that has moved the file's
/// invalidation sequence and then loads it false is ahead, in the total order, of every store
/// of the flag, and each pinner's sequence check comes after its own store of the flag, or
/// after its acquiring load of someone's: so that pinner sees the sequence moved and retries
/// behind the breaker's lock; there is no lease of this file for the breaker to find.
final class LeaseTable: @unchecked Sendable {
    /// Owned slots per file (one per thread index below it): 8 cache lines of 8 words.
    static let ownedSlots = 64
    /// Shared slots per file, after the owned ones: 8 cache lines of 8 words (a power of two:
    /// `add` masks with it).
    static let sharedSlots = 64
    /// Slots per file, both kinds.
    static let slotCount = ownedSlots + sharedSlots
    private static let slotsPerLine = 8
    private static let slotsPerLineShift = 3  // (a shift, not `/`: a signed division costs a sign fix-up)

    /// Each slot: 0, or the bits of an `Unmanaged<PinBatch>` whose lease owns its reference.
    private let slots: UnsafeMutablePointer<UnsafeAtomic<UInt>.Storage>
    /// Breakers between their first slot load and their last hold.
    private let scanners = Atomic<Int>(0)
    private let overflow = Locked<[PinBatch]>([], rank: .leaseOverflow)
    /// Set before the file's first lease takes a slot; never cleared (see above).
    private let everLeased = Atomic<Bool>(false)
    /// Whether this file's Dekker pairs use the asymmetric fence (see above, and `PinBatch`'s
    /// release and publication), or the sequentially consistent fallback.
    let asymmetric: Bool

    #if DAXLAB_TEST_HOOKS
    /// Tests only (builds with DAXLAB_TEST_HOOKS=1): runs in a breaker's scan between its load of a slot and its
    /// hold of the batch found there: where an ending lease must wait for the breaker.
    nonisolated(unsafe) var scanHook: ((PinBatch) -> Void)?
    /// Tests only: runs in a lease's end, its slot cleared, each time it finds a breaker still
    /// scanning and yields to it: the end's wait, which a test sees reached before it lets the
    /// breaker go.
    nonisolated(unsafe) var endWaitHook: (() -> Void)?
    #endif

    /// - Parameter asymmetric: use the asymmetric fence (only where `AsymmetricFence.available`).
    init(asymmetric: Bool) {
        self.asymmetric = asymmetric
        self.slots = .allocate(capacity: Self.slotCount)
        self.slots.initialize(repeating: UnsafeAtomic<UInt>.Storage(0), count: Self.slotCount)
    }

    deinit {
        // A lease holds its address space, which holds this table: none is left here now.
        self.slots.deallocate()
    }

    @inline(__always)
    private func slot(_ index: Int) -> UnsafeAtomic<UInt> { UnsafeAtomic(at: self.slots + index) }

    /// The owned slot of thread index `thread` (0 to `ownedSlots` - 1): thread indices 0-7 on eight
    /// different cache lines, 8-15 next to them, and so on.
    @inline(__always)
    static func ownedSlot(_ thread: Int) -> Int {
        (thread & (Self.slotsPerLine - 1)) * Self.slotsPerLine + thread >> Self.slotsPerLineShift
    }

    /// Records `batch`'s lease (the pinning thread, before it pins: see the type's note for why a
    /// plain store is enough, and what the pinner must do after it).
    func add(_ reference: Unmanaged<PinBatch>) { self.add(reference, thread: Int(CShims_thread_index())) }

    /// `add` for a caller that has the calling thread's index (`CShims_thread_index`) at hand.
    func add(_ reference: Unmanaged<PinBatch>, thread: Int) {
        if !self.everLeased.load(ordering: .acquiring) { self.everLeased.store(true, ordering: .sequentiallyConsistent) }
        let bits = UInt(bitPattern: reference.toOpaque())
        if thread < Self.ownedSlots {
            let index = Self.ownedSlot(thread)
            let slot = self.slot(index)
            if slot.load(ordering: .relaxed) == 0 {
                // (Releasing: a breaker that loads the bits sees the batch's fields written.)
                slot.store(bits, ordering: .releasing)
                reference._withUnsafeGuaranteedRef { $0.leaseSlot = index }
                return
            }
        }
        self.addShared(reference, bits)
    }

    /// Records a lease in a shared slot, or in the overflow list.
    @inline(never)  // (the second lease of a thread on one file, or a thread past the owned slots)
    private func addShared(_ reference: Unmanaged<PinBatch>, _ bits: UInt) {
        // (Masks, not `%`: the count is a power of two, and a signed remainder costs a sign fix-up.)
        let start = (Int(CShims_current_cpu()) * Self.slotsPerLine) & (Self.sharedSlots - 1)
        for probe in 0..<Self.sharedSlots {
            let index = Self.ownedSlots + ((start + probe) & (Self.sharedSlots - 1))
            let slot = self.slot(index)
            guard slot.load(ordering: .relaxed) == 0 else { continue }  // (a scan dirties no line)
            if slot.compareExchange(expected: 0, desired: bits, ordering: .releasing).exchanged {
                reference._withUnsafeGuaranteedRef { $0.leaseSlot = index }
                return
            }
        }
        let batch = reference.takeUnretainedValue()
        batch.leaseSlot = -1
        self.overflow.withLock { $0.append(batch) }  // (a reference of the list's own)
    }

    /// Ends `batch`'s lease. Afterwards no breaker can newly find it, and every breaker that
    /// found it holds it already (the caller then waits for those holds to go).
    func remove(_ batch: PinBatch) {
        let index = batch.leaseSlot
        guard index >= 0 else {
            self.overflow.withLock { batches in
                if let at = batches.firstIndex(where: { $0 === batch }) { batches.swapAt(at, batches.count - 1) }
                batches.removeLast()
            }
            return
        }
        if self.asymmetric {
            self.slot(index).store(0, ordering: .releasing)
            AsymmetricFence.light()  // (the breaker's membarrier is the rest of the fence)
            while self.scanners.load(ordering: .acquiring) != 0 { self.yieldToScanners() }
        } else {
            self.slot(index).store(0, ordering: .sequentiallyConsistent)
            while self.scanners.load(ordering: .sequentiallyConsistent) != 0 { self.yieldToScanners() }
        }
    }

    /// One turn of an ending lease's wait for the breakers scanning now.
    @inline(__always)
    private func yieldToScanners() {
        #if DAXLAB_TEST_HOOKS
        self.endWaitHook?()
        #endif
        sched_yield()
    }

    /// The batches whose range overlaps `pages`, each held (so it cannot be recycled) until the
    /// caller calls `unhold()` on it. A breaker calls it after moving the file's invalidation
    /// sequence (`AddressSpace.unmap`).
    func holdOverlapping(_ pages: Range<Int>) -> [PinBatch] { self.hold { $0.pages.overlaps(pages) } }

    /// Every batch that `wanted` accepts, held.
    private func hold(where wanted: (PinBatch) -> Bool) -> [PinBatch] {
        guard self.everLeased.load(ordering: .sequentiallyConsistent) else { return [] }
        var held: [PinBatch] = []
        self.scanners.wrappingAdd(1, ordering: .sequentiallyConsistent)
        // (The fallback needs no fence: both sides are sequentially consistent.)
        var fenced = !self.asymmetric
        var index = 0
        while index < Self.slotCount {  // (a `for` over the range left a call and a witness per slot)
            defer { index += 1 }
            var bits = self.slot(index).load(ordering: .sequentiallyConsistent)
            guard bits != 0 else { continue }
            if !fenced {
                // The membarrier, before the first slot this scan trusts, and the load again: an
                // ended lease's clear may have been in its CPU's store buffer. Only a batch
                // found can be a recycled one; a stale zero is a lease being entered, whose
                // pinner then sees the sequence this breaker moved (the type's note), so a scan
                // that finds no lease costs no barrier.
                AsymmetricFence.heavy()
                fenced = true
                bits = self.slot(index).load(ordering: .sequentiallyConsistent)
                guard bits != 0 else { continue }
            }
            // Alive: its lease's end waits for this scan before it lets the batch go.
            let batch = Unmanaged<PinBatch>.fromOpaque(UnsafeRawPointer(bitPattern: bits)!).takeUnretainedValue()
            #if DAXLAB_TEST_HOOKS
            self.scanHook?(batch)
            #endif
            batch.hold()
            guard self.slot(index).load(ordering: .sequentiallyConsistent) == bits, wanted(batch) else {
                batch.unhold()  // ended meanwhile (its end waits for us), or elsewhere in the file
                continue
            }
            held.append(batch)
        }
        self.scanners.wrappingSubtract(1, ordering: .sequentiallyConsistent)
        self.overflow.withLock { batches in
            for batch in batches where wanted(batch) {
                batch.hold()
                held.append(batch)
            }
        }
        return held
    }

    /// Runs `body` on each batch whose range overlaps `pages`, holding it meanwhile.
    func forEachOverlapping(_ pages: Range<Int>, _ body: (PinBatch) -> Void) {
        for batch in self.holdOverlapping(pages) {
            body(batch)
            batch.unhold()
        }
    }

    var list: [LeaseInfo] {
        self.hold { _ in true }.map { batch in
            defer { batch.unhold() }
            return batch.info
        }
    }
}
