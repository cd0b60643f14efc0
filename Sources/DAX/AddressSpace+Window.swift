import DaxFS
import DaxlabSupport
import Pmem

/// The one line said when windows fall back to signals.
private enum FallbackReport {
    static let message = Locked<String?>(nil)
}

/// What a pin asks of the kernel besides daxlab's own pin count.
public enum KernelPin: Sendable {
    /// daxlab's pin only (simulated devices).
    case none
    /// The pinned blocks are mapped in the pin's view (`PinHandle.kernelAddress`), and the
    /// caller's own I/O into them pins them for its duration (`FOLL_PIN`, as an O_DIRECT read
    /// into them does).
    case shortTerm
    /// The pinned blocks are mapped in the pin's view and the view is registered in a slot of
    /// `registry` (an io_uring fixed buffer, an RDMA memory region):
    /// `pin_user_pages(FOLL_WRITE | FOLL_LONGTERM)`, held until the unpin.
    case longTerm(any KernelRegistry)

    var isKernel: Bool {
        if case .none = self { return false }
        return true
    }
}

/// The real MMU mapping of a file: its window, the fault path a CPU fault in it takes, and the
/// kernel's pins of its pages.
///
/// The rule that keeps the fault handler from deadlocking: a fault takes the file's invalidate
/// lock shared and nothing else that the faulting thread could hold, so a window must never be
/// touched by a thread that holds that lock (daxlab's own code never does: it reaches blocks
/// through the image mapping). A fault on a file whose lock another thread holds exclusively
/// (a truncate) waits for it, as a kernel fault waits for `invalidate_lock`; a truncate that
/// sleeps on pins drops the lock first (Jan Kara's rule), so a pinner faulting another page of
/// the file goes on.
extension AddressSpace {
    /// The file's window, created on first use: `FileSystem.maximumFileSize` bytes of address
    /// space whose page `p` is page `p` of the file once touched, 2 MiB-aligned.
    /// - Returns: its first byte.
    /// - Throws: `.notSupported` when the image cannot be mapped block by block (see
    ///   `MappedWindow`), `.readOnly`, `.io`.
    @discardableResult
    public func mapWindow() throws(FSError) -> UnsafeMutableRawPointer {
        try self.window().base
    }

    func window() throws(FSError) -> MappedWindow {
        if let window = self.windowReference.load() { return window }
        let service = FaultService.shared
        let mechanism = service.mechanism(self.dax.windowFaults)
        if mechanism != self.dax.windowFaults, let refusal = service.refusal { Self.reportFallback(refusal) }
        let fresh = try MappedWindow(
            pages: FileSystem.maximumFileSize / pageSize, mapping: self.mapping, faults: mechanism,
            granularity: self.dax.windowGranularity)
        // Registered before it is published: no address of it is out before the service knows
        // it, and no write whose source it is misses it (`FileSystem.write` copies such a source
        // before it takes a file's lock; with userfaultfd the kernel's copy faults it in).
        let registration = try service.register(fresh, of: self)
        let served = FaultServedMemory.register(
            base: fresh.base, length: fresh.pages * pageSize, kernelFaults: mechanism == .userfaultfd)
        let window = self.windowReference.storeIfNilThenLoad(fresh)
        if window === fresh {
            _ = self.windowRegistration.storeIfNilThenLoad(registration)
            self.faultServedToken.store(served, ordering: .releasing)
        } else {
            // Another thread's window won.
            FaultServedMemory.unregister(served)
            service.retire(registration)
        }
        return window
    }

    /// Says once per process, on stderr, that windows serve only the CPU's faults, and why.
    private static func reportFallback(_ refusal: String) {
        FallbackReport.message.withLock { message in
            guard message == nil else { return }
            message = refusal
            DAXFileSystem.report(refusal)
        }
    }

    /// Why windows fall back to SIGSEGV in this process (userfaultfd refused), in one line; nil
    /// where they fault through userfaultfd.
    public static var userfaultfdRefusal: String? { FaultService.shared.refusal }

    /// Whether the window maps MAP_SYNC (fs-dax and device-dax, not tmpfs).
    public var windowIsSynchronous: Bool { self.windowReference.load()?.synchronousFaults ?? false }

    /// The least the window maps at once (nil before `mapWindow`): 4 KiB, or 2 MiB over a
    /// device-dax device aligned to 2 MiB, where a fault maps a 2 MiB range of the file only if
    /// it is one aligned run of the image (or holes a write makes one), reads zeros from a hole
    /// of a range that is not, and otherwise fails as past the end of file does (SIGBUS for the
    /// CPU, EFAULT for the kernel; `read`/`write` through the file system still reach it).
    public var windowGranularity: Int? { self.windowReference.load()?.granularity }

    /// How the window's faults are served (nil before `mapWindow`): `.userfaultfd`, or
    /// `.signals` where userfaultfd is refused (the kernel's accesses then fail with EFAULT).
    public var windowFaults: WindowFaultMechanism? { self.windowReference.load()?.faults }

    /// A fault at `page` of the window, on the fault service's thread (a userfaultfd message or a
    /// SIGSEGV handler's request): the software fault path under the invalidate lock (shared),
    /// then the block's page of the image mapped at the faulting page, or zeros for a read of a
    /// hole (write-protected: the write after it faults again and allocates, the `pfn_mkwrite`
    /// path).
    /// - Parameter signalled: the fault came from the SIGSEGV handler (a CPU access to a fenced
    ///   page of a userfaultfd window, or any fault of a signals window).
    /// - Returns: the pages now mapped, or nil for a SIGBUS (past the end of file, the file gone,
    ///   no space for a hole), as the kernel answers such a fault: the page is fenced, so the
    ///   CPU's retried access raises SIGBUS and the kernel's fails with EFAULT. A fence for want
    ///   of space lasts until blocks are freed (the fault service lifts it then), one past the
    ///   end until the file grows over it.
    func serveWindowFault(_ window: MappedWindow, page: Int, write: Bool, signalled: Bool) -> Range<Int>? {
        self.dax.statistics.windowFaults.wrappingIncrement(ordering: .relaxed)
        return self.lock.withReadLock {
            do {
                if let range = try self.hugeFault(window, page: page, write: write) { return range }
                if window.isCoarse { return try self.coarseFault(window, page: page, write: write) }
                var block = try self.install(page, write: write)
                if block == 0 {
                    try window.mapZero(page: page)
                    // A write that filled the hole meanwhile dropped zeros that were not there
                    // yet: look again, now that they are.
                    block = try self.install(page, write: false)
                }
                if block != 0 { try window.map(page: page, block: block) }
                return page..<(page + 1)
            } catch {
                if !signalled { window.fence(page: page, forSpace: (error as? FSError)?.code == .noSpace) }
                return nil
            }
        }
    }

    /// A fault that `hugeFault` could not serve on a 2 MiB-granular window: the range holding
    /// `page` is not one aligned run, and the device cannot map a 4 KiB piece of it. A read of a
    /// hole gets zeros (anonymous memory, not the device's); anything else is refused, as a
    /// device-dax fault smaller than its alignment is (`VM_FAULT_SIGBUS`). Nothing is allocated.
    private func coarseFault(_ window: MappedWindow, page: Int, write: Bool) throws(FSError) -> Range<Int> {
        let refusal = FSError(
            .notSupported,
            "\(self.id): page \(page) is in a 2 MiB range that is not one aligned run, which a device aligned to 2 MiB cannot map")
        guard !write, try self.install(page, write: false) == 0 else { throw refusal }
        do throws(SystemCallError) { try window.mapZero(page: page) } catch { throw FSError(.io, error.description) }
        // A write that filled the hole meanwhile dropped zeros that were not there yet.
        guard try self.install(page, write: false) == 0 else { throw refusal }
        return page..<(page + 1)
    }

    /// A huge fault (`dax_iomap_pmd_fault`): where the 2 MiB range of the file holding `page` is
    /// one 2 MiB-aligned run of the image (or, for a write to a range of holes, can be made one
    /// now), every page of it is installed and mapped with one `mmap`: on device-dax and fs-dax
    /// the kernel then maps a PMD, on tmpfs 512 PTEs. The window's pages are 2 MiB-aligned, so
    /// the range is one huge page of the window. A later truncate or punch inside it unmaps only
    /// its own pages (the kernel splits the PMD). The caller holds the file's lock, shared.
    /// - Returns: the range mapped, or nil (the fault is a 4 KiB one).
    private func hugeFault(_ window: MappedWindow, page: Int, write: Bool) throws(FSError) -> Range<Int>? {
        let runPages = MappedWindow.regionPages
        let first = page - page % runPages
        guard first + runPages <= window.pages else { return nil }
        var run: UInt32?
        let block = self.lookup(page) != 0 ? self.lookup(page) : self.source.mappedBlock(inode: self.id.inode, page: page)
        if block != 0 {
            // Only a page at its own offset of an aligned run can be in one, and a range filled
            // in order is complete only when its last page is (two lookups before the 512).
            let base = block &- UInt32(page - first)
            guard Int(block) % runPages == page - first,
                self.source.mappedBlock(inode: self.id.inode, page: first + runPages - 1) == base &+ UInt32(runPages - 1)
            else { return nil }
            run = self.source.alignedRun(self.id, page: page)
        } else if write {
            // Nothing is allocated once the unmount's final layout break began (as `install`).
            if self.unmounting.isRaised { throw FSError(.invalidArgument, "\(self.id): the file system is unmounting") }
            do {
                run = try self.source.allocateAlignedRun(self.id, page: page)
            } catch where error.code == .noSpace {
                return nil  // (a 4 KiB fault may still find a block, as the kernel falls back to PTEs)
            }
        }
        guard let run else { return nil }
        if self.unmounting.isRaised { throw FSError(.invalidArgument, "\(self.id): the file system is unmounting") }
        for index in 0..<runPages {
            guard let entry = self.table.entryForInstall(first + index) else { return nil }
            let wanted = run &+ UInt32(index)
            if entry.compareExchange(expected: 0, desired: wanted, ordering: .acquiringAndReleasing).exchanged {
                self.pins.reference(wanted)
            } else if entry.load(ordering: .acquiring) != wanted {
                return nil  // (the map says otherwise under the lock: take the 4 KiB path)
            }
        }
        do throws(SystemCallError) { try window.map(pages: first..<(first + runPages), firstBlock: run) } catch {
            throw FSError(.io, error.description)
        }
        self.dax.statistics.hugeFaults.wrappingIncrement(ordering: .relaxed)
        return first..<(first + runPages)
    }

    /// Takes the kernel's pin of `batch`'s blocks (pinned by daxlab already) through the batch's
    /// view, after checking under the file's lock (shared) that each page's entry still names
    /// the pinned block (the `pte_same` check): a range a truncate invalidated since it was
    /// pinned fails with `.busy`, and the kernel never pins a block the batch does not hold.
    ///
    /// With userfaultfd the view is left for the kernel to fault in: pages that map these blocks
    /// already keep them, the others are missing, and the kernel's GUP (this pin's O_DIRECT
    /// I/O, or, for a long-term pin, the registration made here once the lock is dropped) faults
    /// them in through the fault service, which maps a page only while the file still has the
    /// pinned block there and the pin stands (`PinBatch.serveViewFault`), as a DAX mapping's
    /// fault maps what the file has. Without it the pinner maps every page here, and registers
    /// a long-term pin under the lock (its GUP then faults nothing); so does a long-term pin on
    /// a kernel whose registration does not wait for userfaultfd faults (before 6.10), once the
    /// registration failed.
    ///
    /// `sequence` is the invalidation sequence read before the first of the pins. If it is even
    /// and still the same under the lock, no invalidation ran since, and every pinned page's
    /// entry still names its block (only an invalidation changes an entry that holds a block), so
    /// the check is that one comparison instead of a load per page.
    ///
    /// The view is the pin's own (a second mapping of the file, as two `mmap`s of one file are
    /// two VMAs), not the file's window, so the oracle knows which block a kernel write can land
    /// in: in the shared window, a page a truncate unmapped could be mapped again onto the file's
    /// new block by another pin, and a short-term I/O from the old pin would land there. A view
    /// maps only its pin's blocks, so whatever the kernel pins through it is a pinned block.
    func kernelPin(_ batch: PinBatch, _ kernel: KernelPin, pinnedSince sequence: UInt64) throws(FSError) {
        let service = FaultService.shared
        let served = service.mechanism(self.dax.windowFaults) == .userfaultfd
        let view = try batch.viewForPinning(self.mapping, served: served)
        var registry: (any KernelRegistry)?
        var slot: Int?
        if case .longTerm(let kernelRegistry) = kernel {
            guard let taken = kernelRegistry.take() else { throw FSError(.busy, "the device has no free \(kernelRegistry.slotName)") }
            registry = kernelRegistry
            slot = taken
        }
        #if DAXLAB_TEST_HOOKS
        self.kernelPinHook?()
        #endif
        do {
            guard let registry, let slot else {
                return try self.checkAndMapView(batch, view, pinnedSince: sequence, leavingToFaults: served, register: nil)
            }
            guard served else {
                return try self.checkAndMapView(batch, view, pinnedSince: sequence, leavingToFaults: false, register: (registry, slot))
            }
            try self.checkAndMapView(batch, view, pinnedSince: sequence, leavingToFaults: true, register: nil)
            // (Outside the lock: the registration faults the view, and a fault takes the lock.)
            do {
                try registry.register(slot: slot, address: view.base, length: batch.count * pageSize)
                batch.attachKernelPin(registry, slot: slot)
            } catch where error.code == .busy {
                // EFAULT: the range was invalidated meanwhile (the fault service fenced a page),
                // or this kernel's registration does not wait for userfaultfd faults (before
                // 6.10 it pins without retrying a fault, and the page fails at once). Mapping and
                // registering under the lock checks the range again and tells them apart.
                try self.checkAndMapView(batch, view, pinnedSince: sequence, leavingToFaults: false, register: (registry, slot))
            }
        } catch {
            if let registry, let slot, batch.kernelRegistry == nil { registry.give(slot) }
            throw error
        }
    }

    /// The part of `kernelPin` under the file's lock (shared): checks that each page's entry
    /// still names the pinned block, then readies the view, a run of consecutive blocks at a
    /// time: leaves it to the kernel's faults, or maps it (one `mmap` per run, none for a run the
    /// view maps already), and registers it in `register`'s slot if given.
    private func checkAndMapView(
        _ batch: PinBatch, _ view: MappedWindow, pinnedSince sequence: UInt64, leavingToFaults: Bool,
        register: (registry: any KernelRegistry, slot: Int)?
    ) throws(FSError) {
        let first = batch.pages.lowerBound
        try self.lock.withReadLock { () throws(FSError) -> Void in
            // (A registration retried here after the service refused it: `none` may have freed
            // and handed the very block back to the same page meanwhile.)
            guard !batch.isOrphaned else {
                throw FSError(.busy, "\(self.id): pages \(batch.pages) were cut under the pin while it was being pinned")
            }
            batch.useView()  // (before the first map: a failure below unmaps what was mapped)
            let blocks = batch.blocks  // (read once: the batch's fields are class storage)
            let count = batch.count
            let table = self.table
            let unchanged = sequence & 1 == 0 && self.sequence.load(ordering: .acquiring) == sequence
            var run = 0  // the first index of the run of consecutive blocks being gathered
            for index in 0...count {
                if index < count {
                    let block = blocks[index]
                    guard block != 0 else {
                        throw FSError(.invalidArgument, "\(self.id): a kernel pin needs blocks; page \(first + index) is a hole")
                    }
                    guard unchanged || table.entry(first + index)?.load(ordering: .acquiring) == block else {
                        throw FSError(.busy, "\(self.id): page \(first + index) was invalidated while it was being pinned")
                    }
                    if index == run || block == blocks[index - 1] &+ 1 { continue }
                }
                guard index > run else { continue }  // (an empty pin)
                if leavingToFaults {
                    view.leaveToFaults(pages: run..<index, firstBlock: blocks[run])
                } else if !view.isMapped(pages: run..<index, firstBlock: blocks[run]) {
                    do throws(SystemCallError) { try view.map(pages: run..<index, firstBlock: blocks[run]) } catch {
                        throw FSError(.io, error.description)
                    }
                }
                run = index
            }
            if let register {
                try register.registry.register(slot: register.slot, address: view.base, length: count * pageSize)
                batch.attachKernelPin(register.registry, slot: register.slot)
            }
        }
    }

    /// Waits until no invalidation holds the file's lock (an unmap under way ends with it), so
    /// that a pin's I/O that met a view page `PROT_NONE` for the instant of its unmap can try
    /// again after it.
    func waitForInvalidation() {
        self.lock.withReadLock {}
    }

    /// The kernel reached the `index`-th page of a pin's view and found it unmapped (not
    /// faulted in yet, or unmapped by a truncate since): maps it, as the kernel's GUP faults a
    /// page in, if the file's page has had the pinned block all along (it still has it, and no
    /// truncate under `none` cut the range under the pin) and the pin is not revoked. Runs
    /// inside the batch's write fence (a short-term pin's retried I/O, or the fault service
    /// serving that I/O's fault), or for a registration before the pin is published.
    ///
    /// The revocation check is made again after the page is mapped, and a revoked pin's page is
    /// unmapped before returning. A revoker (which holds no file lock) sets the revoked bit,
    /// unmaps the view, waits for the writes in the fence, and unmaps once more; without the
    /// second check, a refault whose first check ran just before the bit could map the page
    /// after the revoker's first unmap, and the device's *next* write, entering the fence after
    /// the revoker stopped waiting but before its last unmap, would have the kernel pin the
    /// page through that mapping and land in the block after it was freed (the rare
    /// lease-break / kernel-direct stale write). The two mapping calls are ordered by the
    /// kernel (both take the process's `mmap_lock` for writing): a map after the revoker's
    /// unmap sees the bit the revoker set before it; a map before it is undone by it.
    /// - Returns: whether the view page is mapped again.
    func refault(_ batch: PinBatch, index: Int) -> Bool {
        guard let view = batch.view else { return false }
        let page = batch.pages.lowerBound + index
        return self.lock.withReadLock {
            guard !batch.isRevoked, !batch.isOrphaned, let block = try? self.install(page, write: false), block == batch.blocks[index]
            else { return false }
            #if DAXLAB_TEST_HOOKS
            self.refaultHook?()
            #endif
            // (No populate on the fault service's thread: see `MappedWindow.map`.)
            guard (try? view.map(page: index, block: block, populate: view.faults == nil)) != nil else { return false }
            if batch.isRevoked {
                view.unmap(index..<(index + 1))
                return false
            }
            return true
        }
    }
}
