import Synchronization
import DaxFS
import Pmem

#if canImport(Glibc)
import Glibc
#endif

/// One pin batch: the blocks one `pin` call pinned, its lease, and the state word that orders
/// everything that can happen to them. Every transition of the word is one method here, named
/// for what it guarantees; the address space, the pin handle and the lease breaker call these and
/// never touch the bits. Batches are pooled and reused, so pinning allocates nothing once warm.
///
/// The state word:
///
/// | bits  | meaning |
/// |-------|---------|
/// | 1     | revoked: lease-break took the lease back; device writes are refused |
/// | 2     | released: claimed by the holder's unpin or a revoker when both saw the other (once) |
/// | 3     | notified: the holder was told its lease is breaking (once) |
/// | 4     | orphaned: a truncate under `none` freed blocks of its range under the pin |
/// | 16-31 | device writes in flight: what a revocation waits for (the fence) |
/// | 32-63 | breakers holding the batch: each keeps it from being recycled, none waits for another |
///
/// Life of a batch: `begin` (taken from the pool) → pins taken → `publishPinned` → writes
/// (`beginWrite`/`endWrite`), perhaps `notifyOnce` and `revoke` → `releaseByHolder` (the
/// holder's unpin; the revoker's side is in `revoke`) → `waitUntilAlone` → `end` → back to the pool.
///
/// Who drops the pins, holder or revoker, is decided without a locked instruction on the
/// holder's side unless a revoker really came. The holder stores a flag of its own (`published`
/// once pinned, `holderReleased` as it unpins) and then loads the revoked bit; the revoker sets
/// the revoked bit and then loads those flags; an `AsymmetricFence` between (the holder's
/// light, the revoker's heavy) means at least one of them sees the other. A holder that sees no
/// revocation goes on alone (the revoker saw its flag and stands back); a revoker that sees no
/// flag goes on alone (the holder saw the bit and stands back: undoing an unpublished pin is the
/// pinner's own); and when both saw each other, `claimRelease` picks one.
final class PinBatch: @unchecked Sendable {
    // The fields below the state word are written by the pinning thread before the batch enters
    // its address space's lease table (a releasing store) and before `publishPinned`; other threads read
    // them only after taking the batch from that table, holding it.
    private static let revokedBit: UInt64 = 2
    private static let releasedBit: UInt64 = 4
    private static let notifiedBit: UInt64 = 8
    private static let orphanedBit: UInt64 = 16
    private static let writing: UInt64 = 1 << 16
    private static let holding: UInt64 = 1 << 32

    private let state = Atomic<UInt64>(0)
    /// Written by the pinning thread only (the holder): every pin is taken and published, and
    /// the holder is unpinning. Read by a revoker (see above).
    private let published = Atomic<Bool>(false)
    private let holderReleased = Atomic<Bool>(false)

    /// The address space of the lease (nil before the batch's first lease). Kept while the
    /// batch is pooled, so that the next lease of the same file sets nothing (a pooled batch
    /// keeps its last file's address space alive until it is reused or its pool closes).
    private(set) var space: AddressSpace?
    /// `space`, unretained: the unpin path calls it without touching its reference count (valid
    /// while `space` holds it).
    private(set) var owner: Unmanaged<AddressSpace>?
    /// The DAX layer of `space` (address spaces hold theirs unowned), held from the batch's first
    /// lease on, pooled or not: an outstanding pin keeps its layer, its file system and its
    /// mapping alive, and a lease takes no reference for it. The pool is the layer's, so pooled
    /// batches and their layer form a cycle; unmount breaks it (`BatchPool.close`), and after it
    /// a batch whose pin outlived the unmount goes, with its reference, when it is unpinned.
    private var layer: DAXFileSystem?
    private(set) var pages: Range<Int> = 0..<0
    private(set) var holder: (any LeaseHolder)?
    /// This batch's number (`serials`) and its lease count (`LeaseStamp`): unique among live
    /// leases, and over a process's life unless one batch takes 2^40 leases or 2^24 batches are
    /// made.
    private(set) var leaseID: UInt64
    /// Batches made so far (a batch is made only when its pool is empty, off the pin path).
    private static let serials = Atomic<UInt64>(0)
    /// The lease table's slot holding this lease (-1: its overflow list); set by `add`.
    var leaseSlot = -1
    /// The pinned blocks: a raw buffer (no copy-on-write or exclusivity checks on the pin path),
    /// `capacity` long, the first `count` in use.
    private(set) var blocks: UnsafeMutablePointer<UInt32>
    private var capacity: Int
    var count = 0
    /// A kernel pin's view of its range: a window of its own whose page `i` maps the `i`-th
    /// pinned block, where the kernel pins and writes. Created on the batch's first kernel pin
    /// and kept while the batch is pooled; its pages are mapped by the fault service as the
    /// kernel faults them (with userfaultfd) or by the pinning thread under the file's lock
    /// (shared), and unmapped by a truncate under that lock (exclusive) and by a revocation.
    private(set) var view: MappedWindow?
    /// The view's entry in the fault service's table (a view served by userfaultfd).
    private var viewRegistration: FaultService.Registration?
    /// A long-term kernel pin: the registry and the slot holding the range. Set by the
    /// pinning thread before `publishPinned`; dropped once, by `dropKernelPin`.
    private(set) var kernelRegistry: (any KernelRegistry)?
    private(set) var kernelSlot = -1
    private let kernelPinned = Atomic<Bool>(false)
    /// Whether this pin uses its view (a kernel pin): from `useView` to `retireView`.
    private let viewInUse = Atomic<Bool>(false)

    init() {
        self.leaseID = LeaseStamp.make(number: Self.serials.wrappingAdd(1, ordering: .relaxed).newValue, count: 0)
        self.capacity = 512
        self.blocks = .allocate(capacity: 512)
    }

    deinit {
        if let registration = self.viewRegistration { FaultService.shared.retire(registration) }
        self.blocks.deallocate()
    }

    /// The pinned blocks, for loops that unpin them.
    var pinned: UnsafeBufferPointer<UInt32> { UnsafeBufferPointer(start: self.blocks, count: self.count) }

    // MARK: Pinning (the pinning thread)

    /// A fresh lease over `pages` of `space`, nothing pinned yet.
    func begin(space: AddressSpace, pages: Range<Int>, holder: (any LeaseHolder)?) {
        if self.space !== space {  // (cold: a batch serves one file until another takes it)
            self.space = space
            self.owner = Unmanaged.passUnretained(space)
            self.layer = space.dax  // (one layer per pool: set on the first lease, the same after)
        }
        self.pages = pages
        // (Assigned only when either is set: most pins have no holder, and an assignment of nil
        // over nil still calls swift_retain and swift_release on the pin path.)
        if holder != nil || self.holder != nil { self.holder = holder }
        self.leaseID = LeaseStamp.next(self.leaseID)
        self.count = 0
        if pages.count > self.capacity {  // cold: only batches over 512 pages grow
            self.blocks.deallocate()
            self.capacity = pages.count
            self.blocks = .allocate(capacity: pages.count)
        }
        self.published.store(false, ordering: .relaxed)
        self.holderReleased.store(false, ordering: .relaxed)
        self.state.store(0, ordering: .releasing)
    }

    /// Publishes the pins: from now on a revoker may drop them on the holder's behalf.
    /// - Parameter asymmetric: the file's fence (`LeaseTable.asymmetric`).
    /// - Returns: false when the lease was revoked while pinning: the pinner must undo its pins,
    ///   through `releaseByHolder` (a revoker that saw them published may claim them too).
    @inline(__always)
    func publishPinned(asymmetric: Bool) -> Bool {
        !self.storeThenSeeRevoked(self.published, asymmetric: asymmetric)
    }

    /// The holder's half of a Dekker pair with `revoke`: stores `flag`, then loads the revoked bit.
    /// - Parameter unpinning: the holder's unpin (where the test hook runs), not the publication.
    @inline(__always)
    private func storeThenSeeRevoked(
        _ flag: borrowing Atomic<Bool>, asymmetric: Bool, unpinning: Bool = false
    ) -> Bool {
        if asymmetric {
            flag.store(true, ordering: .releasing)
            AsymmetricFence.light()
        } else {
            flag.store(true, ordering: .sequentiallyConsistent)
        }
        #if DAXLAB_TEST_HOOKS
        if unpinning { self.space?.releaseHook?(self) }
        #endif
        let state = asymmetric
            ? self.state.load(ordering: .acquiring) : self.state.load(ordering: .sequentiallyConsistent)
        return state & Self.revokedBit != 0
    }

    /// Forgets the lease before the batch goes back to the pool.
    func end() {
        if self.holder != nil { self.holder = nil }  // (nil over nil: see `begin`)
        if self.kernelRegistry != nil { self.kernelRegistry = nil }
        self.kernelSlot = -1
    }

    // MARK: Kernel pins (the pinning thread, before publishing)

    /// The view for this batch's range, created (or grown) on first use (a new view maps
    /// nothing; a kept one still maps what the batch's earlier pins mapped).
    /// - Parameter served: the kernel faults the view through userfaultfd (registered with the
    ///   fault service); false: the pinner maps it.
    func viewForPinning(_ mapping: PmemMapping, served: Bool) throws(FSError) -> MappedWindow {
        if let view = self.view, view.pages >= self.pages.count, (view.faults != nil) == served { return view }
        let view = try MappedWindow(
            pages: max(self.capacity, self.pages.count), mapping: mapping, tracked: true,
            faults: served ? .userfaultfd : nil)
        // (No pin uses the old view now: no fault can be under way in it.)
        if let old = self.viewRegistration {
            self.viewRegistration = nil
            FaultService.shared.retire(old)
        }
        if served { self.viewRegistration = try FaultService.shared.register(view: view, of: self) }
        self.view = view
        return view
    }

    /// A fault in the view, on the fault service's thread: the kernel, doing this pin's I/O or
    /// registration, found the `index`-th page missing (not faulted in yet, or unmapped since by
    /// a truncate or a revocation). Maps the pinned block there when `AddressSpace.refault`
    /// allows it, and fences the page otherwise, so the kernel's access fails with EFAULT.
    /// - Returns: whether the page is mapped.
    func serveViewFault(_ view: MappedWindow, page index: Int) -> Bool {
        // (The acquiring load orders the pinner's stores before `useView` before the reads below.)
        guard self.viewInUse.load(ordering: .acquiring) else {
            // No pin uses the view: a fault left over from an earlier pin (or an access outside
            // any pin), fenced unless a pin took the view meanwhile, which then serves it below.
            if view.fence(page: index, unless: { self.viewInUse.load(ordering: .acquiring) }) { return false }
            return self.serveViewFault(view, page: index)
        }
        guard index < self.count, let space = self.space else {
            view.fence(page: index)
            return false
        }
        space.dax.statistics.viewFaults.wrappingIncrement(ordering: .relaxed)
        if space.refault(self, index: index) { return true }
        view.fence(page: index)
        return false
    }

    /// Records that this pin uses its view (before it maps a page or leaves one to faults): from
    /// now on truncates and revocations unmap it, and the fault service serves its faults.
    func useView() { self.viewInUse.store(true, ordering: .releasing) }

    /// Ends the view's use as the pin ends (the owner's last kernel I/O is done). Its pages stay
    /// mapped, as a process's mmap stays after an unpin: nothing does I/O through them until a
    /// later kernel pin of this batch maps its own blocks there (keeping the pages that map them
    /// already), and no truncate looks at a view that is not in use. A fault left over from an
    /// earlier I/O that the service is serving now may still read this pin's blocks: it is
    /// waited for, before the batch can be reused.
    func retireView() {
        self.viewInUse.store(false, ordering: .releasing)
        if let registration = self.viewRegistration {
            while registration.serving.load(ordering: .acquiring) != 0 { sched_yield() }
        }
    }

    func attachKernelPin(_ ring: any KernelRegistry, slot: Int) {
        self.kernelRegistry = ring
        self.kernelSlot = slot
        self.kernelPinned.store(true, ordering: .releasing)
    }

    /// Drops the kernel's long-term pin (empties the slot, gives it back), once; the kernel lets
    /// the pages go after the requests in flight on them complete.
    @inline(__always)
    func dropKernelPin() {
        // (A load first, inline: most pins have no kernel pin, and only the pinning thread, before
        // it published the batch, sets the flag; the exchange decides between two droppers.)
        if self.kernelPinned.load(ordering: .acquiring) { self.dropKernelPinSlow() }
    }

    @inline(never)
    private func dropKernelPinSlow() {
        guard self.kernelPinned.exchange(false, ordering: .acquiringAndReleasing), let ring = self.kernelRegistry else {
            return
        }
        ring.clear(self.kernelSlot)
        ring.give(self.kernelSlot)
    }

    /// Unmaps the view's pages for `filePages` of the file (a truncate, under the file's lock
    /// held exclusively): a short-term I/O started after this faults (EFAULT) instead of landing.
    func unmapView(overlapping filePages: Range<Int>) {
        guard self.viewInUse.load(ordering: .acquiring), let view = self.view else { return }
        let first = self.pages.lowerBound
        let overlap = filePages.clamped(to: self.pages)
        view.unmap((overlap.lowerBound - first)..<(overlap.upperBound - first))
    }

    /// Unmaps the whole view of a kernel pin (a revocation; again is harmless). Pages are mapped
    /// only for the pin's own I/O, inside the write fence (the fault service serving it, or the
    /// owner's retry) or under the file's lock before the pin is published, so an unmap after
    /// the fence drained cannot be undone by a mapping already under way.
    func unmapView() {
        guard self.viewInUse.load(ordering: .acquiring), let view = self.view else { return }
        view.unmap(0..<self.pages.count)
    }

    /// Revocation for real: a long-term pin's slot is pointed at a page nobody reads, so later
    /// requests on the old range fail (EFAULT) without landing (the slot stays taken until
    /// `dropKernelPin`); the view is unmapped, so a short-term I/O started later faults.
    func defuseKernelPin() {
        if self.kernelPinned.load(ordering: .acquiring), let ring = self.kernelRegistry { ring.defuse(self.kernelSlot) }
        self.unmapView()
    }

    // MARK: The write fence (device threads)

    /// Enters the fence for one device write.
    /// - Returns: false when the lease is revoked: the write must not happen (no `endWrite`).
    @inline(__always)
    func beginWrite() -> Bool {
        let before = self.state.wrappingAdd(Self.writing, ordering: .acquiringAndReleasing).oldValue
        guard before & Self.revokedBit == 0 else {
            self.state.wrappingSubtract(Self.writing, ordering: .releasing)
            return false
        }
        return true
    }

    /// Enters the fence for a write the kernel does (submitted whatever the lease's state: the
    /// kernel refuses it after a revocation), so a revoker waits for it to complete.
    @inline(__always)
    func enterFlight() {
        self.state.wrappingAdd(Self.writing, ordering: .acquiringAndReleasing)
    }

    /// Leaves the fence after a write `beginWrite` admitted (or `enterFlight` entered).
    @inline(__always)
    func endWrite() {
        self.state.wrappingSubtract(Self.writing, ordering: .releasing)
    }

    // MARK: Breaking and revoking (truncating threads)

    /// Keeps the batch from being recycled while a breaker looks at it (taken under the lease
    /// table's lock, so the batch is still the lease the breaker found).
    func hold() { self.state.wrappingAdd(Self.holding, ordering: .acquiringAndReleasing) }

    func unhold() { self.state.wrappingSubtract(Self.holding, ordering: .releasing) }

    /// Marks the holder notified of the break.
    /// - Returns: true for exactly one caller over the lease's life: the one that tells the holder.
    func notifyOnce() -> Bool {
        self.state.bitwiseOr(Self.notifiedBit, ordering: .acquiringAndReleasing).oldValue & Self.notifiedBit == 0
    }

    /// What `revoke` did.
    enum Revocation: Equatable {
        /// Revoked or released before: nothing done.
        case nothing
        /// Revoked now; writes in flight have finished and later ones are refused. `mustUnpin`:
        /// the caller owns dropping the pins (false while still pinning: the pinner undoes them).
        case revoked(mustUnpin: Bool)
    }

    /// Revokes the lease, once: sets the revoked bit, defuses a kernel pin (later kernel writes
    /// fail, and the view is unmapped), then waits for the writes that entered the fence before
    /// it (only writes: another truncate may be revoking the same batch, and neither waits for
    /// the other).
    func revoke() -> Revocation {
        let previous = self.state.bitwiseOr(Self.revokedBit, ordering: .acquiringAndReleasing).oldValue
        guard previous & Self.revokedBit == 0 else { return .nothing }
        // The revoker's half of the Dekker pairs with `publishPinned` and `releaseByHolder`.
        let asymmetric = self.space!.leases.asymmetric
        if asymmetric { AsymmetricFence.heavy() }
        // Unpinning: the holder saw the bit, or will claim (it may not have loaded it yet).
        if self.holderReleased.load(ordering: .sequentiallyConsistent) { return .nothing }
        let published = self.published.load(ordering: .sequentiallyConsistent)
        if published { self.defuseKernelPin() }
        #if DAXLAB_TEST_HOOKS
        self.space?.revocationHook?()
        #endif
        while (self.state.load(ordering: .acquiring) >> 16) & 0xFFFF > 0 { sched_yield() }
        // A kernel write that entered before the revoked bit may have faulted its view page in
        // again (`AddressSpace.refault`), even after the unmap above; every later one sees the
        // bit. Unmap once more, now that none is under way.
        if published { self.unmapView() }
        // Not published: the pinner saw the bit (the fence), and undoes its pins itself.
        guard published else { return .revoked(mustUnpin: false) }
        return .revoked(mustUnpin: self.claimRelease())
    }

    // MARK: Ending

    /// The holder's unpin (or a pinner undoing a pin revoked while it pinned) decides who drops
    /// the pins: it marks itself unpinning, then looks for a revocation.
    /// - Returns: true when the caller drops them: no revoker came (one that comes now sees the
    ///   mark and stands back), or one came and the caller won `claimRelease`.
    @inline(__always)
    func releaseByHolder(asymmetric: Bool) -> Bool {
        guard self.storeThenSeeRevoked(self.holderReleased, asymmetric: asymmetric, unpinning: true) else {
            return true
        }
        return self.claimRelease()
    }

    /// Claims dropping the pins, where the holder and a revoker both saw the other.
    /// - Returns: true for exactly one caller: it drops them.
    private func claimRelease() -> Bool {
        self.state.bitwiseOr(Self.releasedBit, ordering: .acquiringAndReleasing).oldValue & Self.releasedBit == 0
    }

    /// Waits until no device write is in flight and no breaker holds the batch, so it can be
    /// recycled; short: each is one block copy, or one notification and unpin loop.
    func waitUntilAlone() {
        while self.state.load(ordering: .acquiring) >= Self.writing { sched_yield() }
    }

    /// Marks the batch's range as cut under it by policy `none` (under the file's lock held
    /// exclusively): a short-term kernel pin may not fault its pages in again, since the page's
    /// block may be a new one (even the same block, allocated again).
    func orphan() { _ = self.state.bitwiseOr(Self.orphanedBit, ordering: .acquiringAndReleasing).oldValue }

    // MARK: Queries

    var isOrphaned: Bool { self.state.load(ordering: .acquiring) & Self.orphanedBit != 0 }

    var isRevoked: Bool { self.state.load(ordering: .acquiring) & Self.revokedBit != 0 }

    var info: LeaseInfo {
        let state = self.state.load(ordering: .acquiring)
        return LeaseInfo(
            id: self.leaseID, file: self.space!.id, pages: self.pages, breaking: state & Self.notifiedBit != 0,
            revoked: state & Self.revokedBit != 0)
    }
}
