import Atomics
import CShims
import Synchronization
import DaxFS
import DaxlabSupport
import Pmem

/// One file's DAX address space: its emulated page table, its invalidation sequence, its leases,
/// and the fault and pin paths. The analogue of a file's `address_space` with `fs/dax.c` on top.
///
/// Hot path (page mapped): one load from the flat page table, as a CPU's access through a
/// present PTE is; no lock, no allocation. Cold path: the file's invalidate lock shared, the
/// block map, a new zeroed block for a write to a hole, and the page-table entry installed
/// before the lock is dropped, so an entry never outlives its block's place in the file.
public final class AddressSpace: @unchecked Sendable {
    // All stored properties are set in init; `table`, `sequence` and the pin table are atomic;
    // `leases` has its own mutex. `dax` is unowned: the DAX layer holds its spaces.
    public let id: FileID
    unowned let dax: DAXFileSystem
    let lock: ReadWriteLock
    let table: PageTable
    /// The table's entries and size, copied here so the hot lookup loads nothing else.
    @usableFromInline let entries: UnsafeMutablePointer<UnsafeAtomic<UInt32>.Storage>
    @usableFromInline let maximumPages: Int
    /// Odd while an invalidation is clearing entries: the seqcount of the pin fast path (a pin
    /// must not take a block whose entry was cleared and set again around it).
    let sequence = Atomic<UInt64>(0)
    let leases: LeaseTable
    /// On-demand-paging devices' subscriptions to ranges of the file (`DeviceMirror`).
    let subscriptions = Locked(Subscriptions(), rank: .subscriptions)
    /// Set by the file's first subscription (under the invalidate lock), never cleared.
    let everSubscribed = Atomic<Bool>(false)
    let pins: PinTable
    /// The layer's pool and unmount flag, held here: the pin and fault paths reach them without
    /// an unowned load of the layer (a strong-retain attempt each).
    private let batchPool: BatchPool
    let unmounting: UnmountFlag
    /// The file system, held here for the fault path likewise (the layer holds it too; this
    /// space goes with the layer, or with the last pooled batch that names it).
    let source: any DAXBlockSource
    /// The layer's policy refuses long-term pins (`mainline`).
    private let refusesLongTerm: Bool
    let mapping: PmemMapping
    @usableFromInline let base: UnsafeMutableRawPointer
    /// The real MMU window over the file, once asked for (`mapWindow`), and its registration
    /// with the fault service.
    let windowReference = ManagedAtomicLazyReference<MappedWindow>()
    let windowRegistration = ManagedAtomicLazyReference<FaultService.Registration>()
    /// The window's registration as memory whose faults daxlab serves (`FaultServedMemory`).
    let faultServedToken = ManagedAtomic<FaultServedMemory.Token>(.none)

    #if DAXLAB_TEST_HOOKS
    /// Tests only (builds with DAXLAB_TEST_HOOKS=1): runs in the pin fast path between the page-table load and the
    /// pin-count increment, with the page and the block it loaded: where an invalidation must be
    /// caught by the recheck (gup-fast's `pte_same`).
    nonisolated(unsafe) var pinFastPathHook: ((Int, UInt32) -> Void)?
    /// Tests only: runs in `refault` once its revocation check passed, before it maps the page
    /// (the file's lock held shared).
    nonisolated(unsafe) var refaultHook: (() -> Void)?
    /// Tests only: runs in the revocation of a pin of this space once the revoked bit is set and
    /// the view unmapped, before it waits for the writes in the fence.
    nonisolated(unsafe) var revocationHook: (() -> Void)?
    /// Tests only: runs in the holder's unpin between its mark (`PinBatch.releaseByHolder`) and
    /// its load of the revoked bit: where a revoker sees the holder and the holder the revoker.
    nonisolated(unsafe) var releaseHook: ((PinBatch) -> Void)?
    /// Tests only: runs in a kernel pin once daxlab's pins are taken, before it takes the file's
    /// lock to check them and map its view: where an invalidation must be caught.
    nonisolated(unsafe) var kernelPinHook: (() -> Void)?
    #endif

    init(id: FileID, dax: DAXFileSystem) {
        self.id = id
        self.table = PageTable()
        self.entries = self.table.entries
        self.maximumPages = self.table.maximumPages
        self.dax = dax
        self.lock = dax.source.invalidateLock(for: id)
        self.pins = dax.pins
        self.batchPool = dax.batchPool
        self.unmounting = dax.unmounting
        self.source = dax.source
        self.refusesLongTerm = dax.defaultPolicy == .mainline
        self.leases = LeaseTable(asymmetric: dax.asymmetricFence)
        self.mapping = dax.source.mapping
        self.base = dax.source.mapping.base
    }

    deinit {
        FaultServedMemory.unregister(self.faultServedToken.load(ordering: .acquiring))
        if let registration = self.windowRegistration.load() { FaultService.shared.retire(registration) }
    }

    // MARK: Faults

    /// The address of `page`'s block. A read fault on a hole returns the shared read-only zero
    /// page; a write fault on a hole allocates, zeroes and maps a block first.
    /// - Throws: `.invalidArgument` past the end of file (the SIGBUS), `.notFound` for a removed
    ///   file, `.noSpace`.
    @inlinable @inline(__always)
    public func fault(_ page: Int, write: Bool) throws(FSError) -> UnsafeRawPointer {
        let block = self.lookup(page)
        if _fastPath(block != 0) { return UnsafeRawPointer(self.base + Int(block) * pageSize) }
        return try self.faultSlow(page, write: write)
    }

    /// The mapped block of `page`, or 0 when it is not mapped: one load. Like a CPU's access
    /// through a PTE, a lookup that runs while a truncate clears entries sees each entry before
    /// or after its own clearing (an atomic load), never a block the entry did not hold; a
    /// returned address is the block's at the moment of the load, as a TLB hit is.
    @inlinable @inline(__always)
    func lookup(_ page: Int) -> UInt32 {
        guard UInt(bitPattern: page) < UInt(bitPattern: self.maximumPages) else { return 0 }
        return UnsafeAtomic(at: self.entries + page).load(ordering: .acquiring)
    }

    @usableFromInline @inline(never)
    func faultSlow(_ page: Int, write: Bool) throws(FSError) -> UnsafeRawPointer {
        try self.lock.withReadLock { () throws(FSError) -> UnsafeRawPointer in
            let block = try self.install(page, write: write)
            if block == 0 { return UnsafeRawPointer(self.dax.zeroPage) }
            return UnsafeRawPointer(self.base + Int(block) * pageSize)
        }
    }

    /// Maps `page` (caller holds the invalidate lock shared): the block it has, or a new one for
    /// a write to a hole. Returns 0 for a read of a hole (nothing is mapped).
    func install(_ page: Int, write: Bool) throws(FSError) -> UInt32 {
        guard let entry = self.table.entryForInstall(page) else {
            throw FSError(.invalidArgument, "\(self.id): page \(page) is past the largest file")
        }
        let present = entry.load(ordering: .acquiring)
        if present != 0 { return present }
        // Nothing new is mapped (or allocated) once the unmount's final layout break began.
        if self.unmounting.isRaised {
            throw FSError(.invalidArgument, "\(self.id): the file system is unmounting")
        }
        let block = try self.source.blockForFault(self.id, page: page, allocate: write)
        guard block != 0 else { return 0 }
        // Two faults may race here; both found the same block under the shared lock.
        if entry.compareExchange(expected: 0, desired: block, ordering: .acquiringAndReleasing).exchanged {
            self.pins.reference(block)
            // A block where the window may map a hole's zeros (this fault filled the hole, or
            // another's whose install lost to this one did): the zeros go.
            if let window = self.windowReference.load() { window.dropZeros(page..<(page + 1)) }
        }
        return block
    }

    // MARK: Pins

    /// Pins `pages` for DMA (the analogue of `pin_user_pages(FOLL_LONGTERM)` on a DAX mapping):
    /// records a lease over the range first (as the FL_ALLOCATED patch does), then faults each
    /// page in and raises its block's pin count, rechecking the entry after the increment (the
    /// gup-fast `pte_same` check) and retrying through the slow path if an invalidation won.
    /// - Parameters:
    ///   - write: fault holes in as new blocks (a device that writes); a read pin of a hole pins
    ///     nothing (the zero page).
    ///   - holder: told when a truncate breaks the lease.
    ///   - term: short-term (one I/O) or long-term (a registration); nil takes the term a kernel
    ///     pin implies, and long-term for daxlab's own.
    ///   - kernel: the kernel's pin too (see `KernelPin`).
    /// - Throws: what `fault` throws (nothing stays pinned then); `.busy` if the lease was
    ///   revoked while pinning; `.notSupported` for a long-term pin under `mainline` (EOPNOTSUPP,
    ///   as mm/gup.c refuses `FOLL_LONGTERM` on a DAX file) or where the kernel refuses it;
    ///   `.invalidArgument` for a term a kernel pin contradicts, or while the file system unmounts.
    public func pin(
        _ pages: Range<Int>, write: Bool, holder: (any LeaseHolder)? = nil, term: PinTerm? = nil,
        kernel: KernelPin = .none
    ) throws(FSError) -> PinHandle {
        let implied = PinTerm.implied(by: kernel)
        if let term, let implied, term != implied {
            throw FSError(.invalidArgument, "\(self.id): a \(implied) kernel pin cannot be \(term)")
        }
        let resolved = term ?? implied ?? .longTerm
        // `admitPin` decides; it is asked only when it could refuse (a plain pin skips the call).
        if (resolved == .longTerm && self.refusesLongTerm) || self.unmounting.isRaised {
            try self.dax.admitPin(resolved, of: self.id)
        }
        // The lease's reference to its batch, from the pool and back to it at the lease's end:
        // the batch is used unretained in between (no reference counting on the pin path).
        // (The thread's index, read once: its cell in the pool and its slot in the lease table.)
        let thread = Int(CShims_thread_index())
        let lease = self.batchPool.take(thread: thread)
        var failure: FSError?
        lease._withUnsafeGuaranteedRef { batch in
            do throws(FSError) {
                try self.pin(batch, lease, pages, thread: thread, write: write, holder: holder, kernel: kernel)
            } catch {
                failure = error
            }
        }
        if let failure { throw failure }
        return PinHandle(lease)
    }

    /// The pin itself, in `batch` (the lease's, from the pool); on failure nothing stays pinned
    /// and the batch is back in the pool.
    @inline(__always)
    private func pin(
        _ batch: PinBatch, _ lease: Unmanaged<PinBatch>, _ pages: Range<Int>, thread: Int, write: Bool,
        holder: (any LeaseHolder)?, kernel: KernelPin
    ) throws(FSError) {
        batch.begin(space: self, pages: pages, holder: holder)
        self.leases.add(lease, thread: thread)
        let blocks = batch.blocks
        // (For a kernel pin's check of its entries; see `kernelPin`.)
        let sequence = kernel.isKernel ? self.sequence.load(ordering: .sequentiallyConsistent) : 1
        // (A one-page pin goes straight to `pinOne`: its recheck is the same two loads.)
        var pinned = pages.count > 1 ? self.pinMapped(pages, into: blocks) : 0
        do {
            while pinned < pages.count {
                blocks[pinned] = try self.pinOne(pages.lowerBound + pinned, write: write)
                pinned += 1
            }
            batch.count = pinned
            if kernel.isKernel { try self.kernelPin(batch, kernel, pinnedSince: sequence) }
        } catch {
            batch.count = pinned
            self.unpinBlocks(batch)
            self.finish(batch)
            throw error
        }
        // Published: from here a revoker may drop these pins for us.
        if !batch.publishPinned(asymmetric: self.leases.asymmetric) {
            self.release(batch)
            throw FSError(.busy, "\(self.id): lease revoked while pinning")
        }
    }

    /// The fast path for a run of mapped pages (gup-fast over a range): pins the pages from the
    /// first on while their entries hold blocks, and checks the invalidation sequence once, after
    /// the last increment, instead of after each. An unchanged sequence means no invalidation
    /// began before that check (it would have moved the count), so none began before any of the
    /// increments either, and the truncate's scan of pin counts, which follows its invalidation,
    /// sees them all; faults only fill holes, so no entry changed meanwhile. If the sequence
    /// moved, every pin taken here is dropped and `pinOne` redoes the pages one by one.
    ///
    /// Two pages mapping two adjacent blocks that share a pin-count word (`PinTable.pairs`) are
    /// pinned with one add: a file's blocks come in runs, so a range costs about one atomic per
    /// two pages.
    /// - Returns: how many pages from the first are pinned (their blocks in `blocks`).
    @inline(never)  // (called for ranges only; inlined, it made the one-page path slower)
    private func pinMapped(_ pages: Range<Int>, into blocks: UnsafeMutablePointer<UInt32>) -> Int {
        let before = self.sequence.load(ordering: .sequentiallyConsistent)
        guard before & 1 == 0 else { return 0 }
        var count = 0
        var page = pages.lowerBound
        while page < pages.upperBound {
            guard let entry = self.table.entry(page) else { break }
            let block = entry.load(ordering: .sequentiallyConsistent)
            guard block != 0 else { break }
            #if DAXLAB_TEST_HOOKS
            self.pinFastPathHook?(page, block)
            #endif
            if page + 1 < pages.upperBound, let next = self.table.entry(page + 1),
                PinTable.pairs(block, next.load(ordering: .sequentiallyConsistent))
            {
                #if DAXLAB_TEST_HOOKS
                self.pinFastPathHook?(page + 1, block + 1)
                #endif
                self.pins.pinPair(block)
                blocks[count] = block
                blocks[count + 1] = block + 1
                count += 2
                page += 2
            } else {
                self.pins.pin(block)
                blocks[count] = block
                count += 1
                page += 1
            }
        }
        guard count > 0, self.sequence.load(ordering: .sequentiallyConsistent) != before else { return count }
        self.pins.unpin(UnsafeBufferPointer(start: blocks, count: count))  // an invalidation won the race
        return 0
    }

    @inline(__always)
    private func pinOne(_ page: Int, write: Bool) throws(FSError) -> UInt32 {
        while true {
            let before = self.sequence.load(ordering: .sequentiallyConsistent)
            if before & 1 == 0, let entry = self.table.entry(page) {
                let block = entry.load(ordering: .sequentiallyConsistent)
                if block != 0 {
                    #if DAXLAB_TEST_HOOKS
                    self.pinFastPathHook?(page, block)
                    #endif
                    self.pins.pin(block)
                    if entry.load(ordering: .sequentiallyConsistent) == block,
                        self.sequence.load(ordering: .sequentiallyConsistent) == before
                    {
                        return block
                    }
                    self.pins.unpin(block)  // an invalidation won the race: retry
                    continue
                }
            }
            let faulted = try self.lock.withReadLock { () throws(FSError) -> UInt32 in
                try self.install(page, write: write)
            }
            if faulted == 0 {
                guard !write else { throw FSError(.io, "\(self.id): page \(page) has no block after a write fault") }
                return 0  // read pin of a hole: the zero page
            }
        }
    }

    private func unpinBlocks(_ batch: PinBatch) {
        self.pins.unpin(batch.pinned)
    }

    /// Ends a batch: drops its pins unless a revoker did (the kernel's first, then daxlab's
    /// mirror of them), removes its lease, recycles it.
    func release(_ batch: PinBatch) {
        if batch.releaseByHolder(asymmetric: self.leases.asymmetric) {
            batch.dropKernelPin()
            self.unpinBlocks(batch)
        }
        self.finish(batch)
    }

    /// Drops the pins of a batch a revoker revoked (on the holder's behalf).
    func unpinRevoked(_ batch: PinBatch) { self.unpinBlocks(batch) }

    private func finish(_ batch: PinBatch) {
        self.leases.remove(batch)
        batch.waitUntilAlone()  // a revoker or breaker that entered before the removal
        batch.dropKernelPin()
        batch.retireView()
        batch.end()
        // The lease's reference, given back. Nothing here touches the batch or this address
        // space after the put: another thread may take the batch at once and point it at another
        // file, and this space may then go with it (the unpin path holds it only through the
        // batch), as may the layer, when a closed pool lets the batch go.
        self.batchPool.put(Unmanaged.passUnretained(batch))
    }

    /// The file's leases now.
    public var leaseList: [LeaseInfo] { self.leases.list }

    // MARK: Invalidation (caller holds the invalidate lock exclusively)

    /// Clears the entries of `pages` (the analogue of `unmap_mapping_range`): no fault or pin can
    /// reach those blocks until the lock is dropped.
    /// - Parameter keepingData: the range's blocks move within the file (collapse, insert).
    func unmap(_ pages: Range<Int>, keepingData: Bool = false) {
        // The file's lock, held exclusively, serializes everything that writes the sequence or
        // the entries (faults install under it shared), so both change by plain stores, no
        // read-modify-write. The opening store is sequentially consistent: it must come before
        // the breaker's loads of lease slots and pin counts, against a pinner's increment and
        // its load of the sequence. The closing one only releases the clears before it (as
        // `write_seqcount_end` does).
        let start = self.sequence.load(ordering: .relaxed)
        self.sequence.store(start &+ 1, ordering: .sequentiallyConsistent)
        defer { self.sequence.store(start &+ 2, ordering: .releasing) }
        self.table.forEachEntry(in: pages) { _, entry in
            let block = entry.load(ordering: .relaxed)
            guard block != 0 else { return }  // (most entries of a large range are holes)
            entry.store(0, ordering: .releasing)
            self.pins.dereference(block)
        }
        // And for real: the window's pages and the kernel pins' views of them go back to
        // PROT_NONE (TLB shootdown included). The kernel's long-term pins keep their pages.
        self.windowReference.load()?.unmap(pages, keepingData: keepingData)
        self.leases.forEachOverlapping(pages) { $0.unmapView(overlapping: pages) }
    }

    /// Every page-table entry that does not match the file's block map: stale mappings, over
    /// every page the file can have (chunks no fault touched are skipped). Takes the invalidate
    /// lock exclusively; for tests of the fault/truncate races.
    @_spi(Oracle)
    public func staleMappings() -> [Int] {
        self.lock.withWriteLock {
            var stale: [Int] = []
            self.table.forEachEntry(in: 0..<self.maximumPages) { page, entry in
                let block = entry.load(ordering: .relaxed)
                if block != 0 && block != self.dax.source.mappedBlock(inode: self.id.inode, page: page) {
                    stale.append(page)
                }
            }
            return stale
        }
    }
}

#if canImport(Glibc)
import Glibc
#endif
