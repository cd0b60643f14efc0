import Atomics
import CShims
import DaxFS
import DaxlabSupport
import Pmem

#if canImport(Glibc)
import Glibc
#endif

/// A window: virtual addresses reserved for a file (or a pin), whose pages the MMU maps onto
/// blocks of the pmem image. Two kinds use it:
///
/// - a file's window (`AddressSpace.mapWindow`), as many pages as the file may have: the
///   analogue of a DAX `mmap` of the file. With userfaultfd (`WindowFaultMechanism`) the
///   reservation is anonymous memory registered for missing and write-protect faults, so the
///   kernel's accesses fault it as the CPU's do; without it, `PROT_NONE` whose CPU faults a
///   SIGSEGV handler catches. Either way the fault service (`FaultService`) runs daxlab's fault
///   path and maps the block's page of the image at the faulting page with `mmap(MAP_SHARED |
///   MAP_FIXED)` (MAP_SYNC where the kernel grants it), or zeros for a read of a hole (a
///   write-protected anonymous page, or a read-only one without userfaultfd: the write after it
///   faults again). From then on the access is a plain load or store: no daxlab code runs;
/// - a kernel pin's view (`PinBatch`): page `i` maps the pin's `i`-th block, and the kernel's
///   pins and I/O go there (see `AddressSpace.kernelPin`). With userfaultfd the view is
///   registered memory too and the kernel faults its pages in as it reaches them (its GUP for
///   the pin's I/O or registration): the fault service maps the pinned block there while the
///   file still has it and the pin stands, and fences the page otherwise (EFAULT). Without
///   userfaultfd its pages are mapped when the pin is taken and after an unmap only the pin's
///   own retry maps them again (`PinHandle.kernelWrite`).
///
/// Unmapping a range puts back what was reserved (registered anonymous memory, or `PROT_NONE`),
/// which is `unmap_mapping_range`: every CPU's TLB entry for it is shot down, and a later access
/// faults again. `mmap` replaces a page's mapping whatever it was: that is how a window maps
/// block `b` of the image at any page (userfaultfd's COPY copies, and CONTINUE maps only the same
/// offset of the same file).
final class MappedWindow: @unchecked Sendable {
    // Set once in init. The mappings change by mmap and madvise: the fault service maps (under
    // the file's invalidate lock, shared) and drops regions past the budget (without it); a
    // removal unmaps and a call that fills holes drops zeros (the lock exclusive); a thread
    // whose fault or pin fills a hole drops that page's zeros (the lock shared). Each of those
    // leaves a state any later access faults back from.
    let base: UnsafeMutableRawPointer
    let pages: Int
    /// The least the image can be mapped by: 4 KiB, or 2 MiB for a file's window over a
    /// device-dax device aligned to 2 MiB, where only whole aligned runs are mapped (a huge
    /// fault) and a removal unmaps whole 2 MiB regions (the device cannot split its mappings).
    let granularity: Int
    /// Whether `granularity` is more than a page.
    let isCoarse: Bool
    /// How the window's faults are served: a file's window `.userfaultfd` or `.signals`; a pin's
    /// view `.userfaultfd`, or nil where userfaultfd is refused (nothing faults it in then).
    let faults: WindowFaultMechanism?
    /// Whether this is a pin's view (it remembers what each page maps; see `isMapped`).
    var isView: Bool { self.mappedBlocks != nil }
    /// The image (held: its descriptor is mapped again at every fault).
    private let mapping: PmemMapping
    private let mapFlags: Int32
    /// The userfaultfd the window is registered with (-1: none).
    private let userfaultfd: Int32
    /// Pages past the end of file that a fault found (userfaultfd windows): `PROT_NONE` and not
    /// registered, so the CPU's retried access raises SIGSEGV, which the fault service turns into
    /// SIGBUS, and the kernel's fails with EFAULT. A file that grows lifts them (`liftFences`).
    ///
    /// And the pages that map zeros (a read of a hole): a call that fills the hole drops them
    /// (`dropZeros`), as the kernel unmaps a hole's zero page when a block replaces it.
    private let state = Locked(PageSets(), rank: .windowPages)

    private struct PageSets {
        var fences: Set<Int> = []
        /// Of `fences`, the pages fenced because the image had no block for them (a write fault
        /// on a full file system): that lasts only until blocks are freed (`liftSpaceFences`),
        /// as the kernel's next fault there tries to allocate again.
        var spaceFences: Set<Int> = []
        var zeros: Set<Int> = []

        /// Removes `pages` from the sets; whether any was fenced.
        mutating func forget(_ pages: Range<Int>) -> Bool {
            if self.zeros.isEmpty && self.fences.isEmpty { return false }
            if pages.count == 1 {
                self.zeros.remove(pages.lowerBound)
                return self.unfence(pages.lowerBound)
            }
            if !self.zeros.isEmpty { self.zeros = self.zeros.filter { !pages.contains($0) } }
            let before = self.fences.count
            if before > 0 { self.fences = self.fences.filter { !pages.contains($0) } }
            if !self.spaceFences.isEmpty { self.spaceFences = self.spaceFences.filter { !pages.contains($0) } }
            return self.fences.count != before
        }

        /// Removes one page's fence; whether it had one.
        mutating func unfence(_ page: Int) -> Bool {
            if !self.spaceFences.isEmpty { self.spaceFences.remove(page) }
            return self.fences.remove(page) != nil
        }
    }
    /// For a pin's view: the block each page maps now (0: none), so that a pin of blocks the
    /// view maps already keeps the page-table entries the kernel has (as a process's mmap keeps
    /// them from one pin to the next). Written under the rules of `map` and `unmap`.
    private let mappedBlocks: UnsafeMutablePointer<UnsafeAtomic<UInt32>.Storage>?
    /// What init mapped and kept (the slack that aligned the pages to 2 MiB is unmapped).
    private let reservation: (start: UnsafeMutableRawPointer, length: Int)
    /// For a pin's view: held across each change of its mappings. The fault service maps and
    /// fences a view's pages under the file's lock shared, a truncate unmaps them under it
    /// exclusive, a revoker with no lock at all, and each change is several system calls (an
    /// unmap is `mmap`, `UFFDIO_REGISTER`, `mprotect`): interleaved, a fence could end up plain
    /// memory, or a register meet a file mapping. No holder waits on a fault (nothing is
    /// populated under it on the service's thread). It counts the changes (a `Void` value would
    /// share its address with the lock's next field, which ThreadSanitizer takes for a race).
    private let viewChanges: Locked<Int>?

    /// Reserves a window of `pages` pages over `mapping` (the image), 2 MiB-aligned.
    /// - Parameters:
    ///   - tracked: remember what each page maps (a pin's view; see `isMapped`).
    ///   - faults: how the window is faulted (`FaultService.mechanism` decided it); for a pin's
    ///     view `.userfaultfd` or nil (mapped by the pinner only).
    ///   - granularity: the image's mapping granularity (`mapping.alignment` when nil); a test
    ///     stands a 2 MiB-aligned device in with it.
    /// - Throws: `.notSupported` when the image cannot be mapped as this window needs (a pin's
    ///   view block by block, a file's window by 4 KiB or 2 MiB), or is read-only; `.io` when
    ///   the reservation fails.
    init(
        pages: Int, mapping: PmemMapping, tracked: Bool = false, faults: WindowFaultMechanism? = nil,
        granularity: Int? = nil
    ) throws(FSError) {
        guard !mapping.isReadOnly else { throw FSError(.readOnly, "\(mapping.path): mounted read-only") }
        let granularity = granularity ?? mapping.alignment
        let huge = Self.regionPages * pageSize
        guard granularity == pageSize || (!tracked && faults != nil && granularity == huge) else {
            throw FSError(
                .notSupported,
                "\(mapping.path): a device aligned to \(granularity) bytes cannot map "
                    + (tracked ? "single blocks for a pin" : "a file's window (only 4 KiB and 2 MiB can)")
                    + "; create the namespace with ndctl create-namespace -m devdax --align 4K")
        }
        self.granularity = granularity
        self.isCoarse = granularity > pageSize
        let served = faults == .userfaultfd
        let length = pages * pageSize
        // Reserved with 2 MiB of slack and trimmed, so that page 512k of the window is 2 MiB-
        // aligned (a 2 MiB run of the image can then be mapped as one huge page).
        let slack = tracked ? 0 : huge
        let start: UnsafeMutableRawPointer
        do {
            start = try mapMemory(
                "reserve a window of \(pages) pages", length: length + slack,
                protection: served ? PROT_READ | PROT_WRITE : PROT_NONE,
                flags: MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE)
        } catch {
            throw FSError(.io, error.description)
        }
        let aligned = slack == 0 ? start : UnsafeMutableRawPointer(bitPattern: (UInt(bitPattern: start) + UInt(huge - 1)) & ~UInt(huge - 1))!
        if slack > 0 {
            // The slack goes: an access just outside the window faults as it would elsewhere.
            if aligned > start { munmap(start, aligned - start) }
            let end = aligned + length
            if end < start + length + slack { munmap(end, start + length + slack - end) }
        }
        self.reservation = (aligned, length)
        self.base = aligned
        self.pages = pages
        self.faults = faults
        self.mapping = mapping
        self.userfaultfd = served ? FaultService.shared.userfaultfd : -1
        self.mapFlags = MappedWindow.probeMapSync(mapping) ? CShims_MAP_SHARED_VALIDATE | CShims_MAP_SYNC : MAP_SHARED
        if tracked {
            let blocks = UnsafeMutablePointer<UnsafeAtomic<UInt32>.Storage>.allocate(capacity: pages)
            blocks.initialize(repeating: UnsafeAtomic<UInt32>.Storage(0), count: pages)
            self.mappedBlocks = blocks
            self.viewChanges = Locked(0, rank: .viewMappings)
        } else {
            self.mappedBlocks = nil
            self.viewChanges = nil
        }
        if served {
            let status = CShims_uffd_register(self.userfaultfd, aligned, length)
            guard status == 0 else {
                munmap(aligned, length)
                self.mappedBlocks?.deallocate()
                throw FSError(.io, "register a window of \(pages) pages with userfaultfd: \(String(cString: strerror(-status)))")
            }
        }
    }

    deinit {
        munmap(self.reservation.start, self.reservation.length)
        self.mappedBlocks?.deallocate()
    }

    private func mappedBlock(_ page: Int) -> UnsafeAtomic<UInt32>? {
        self.mappedBlocks.map { UnsafeAtomic(at: $0 + page) }
    }

    /// Whether `pages` map consecutive blocks from `firstBlock` already (a tracked window only).
    func isMapped(pages: Range<Int>, firstBlock: UInt32) -> Bool {
        guard let blocks = self.mappedBlocks else { return false }
        var expected = firstBlock
        for page in pages {
            guard UnsafeAtomic<UInt32>(at: blocks + page).load(ordering: .relaxed) == expected else { return false }
            expected &+= 1
        }
        return true
    }

    /// Whether the kernel grants MAP_SYNC for the image (fs-dax files and device-dax; not tmpfs).
    private static func probeMapSync(_ mapping: PmemMapping) -> Bool {
        let probe = mmap(
            nil, pageSize, PROT_READ | PROT_WRITE, CShims_MAP_SHARED_VALIDATE | CShims_MAP_SYNC, mapping.descriptor, 0)
        guard let probe, probe != MAP_FAILED else { return false }
        munmap(probe, pageSize)
        return true
    }

    /// Whether MAP_SYNC is in force for the window's mappings.
    var synchronousFaults: Bool { self.mapFlags != MAP_SHARED }

    func address(page: Int) -> UnsafeMutableRawPointer { self.base + page * pageSize }

    /// Whether `address` falls in the window.
    func contains(_ address: UInt) -> Bool {
        address >= UInt(bitPattern: self.base) && address - UInt(bitPattern: self.base) < UInt(self.pages * pageSize)
    }

    /// The page of the window `address` falls in, or nil.
    func page(of address: UnsafeRawPointer) -> Int? {
        let offset = Int(bitPattern: address) - Int(bitPattern: self.base)
        guard offset >= 0, offset < self.pages * pageSize else { return nil }
        return offset / pageSize
    }

    /// Maps `page` onto `block` of the image, read-write (the caller holds the invalidate lock).
    func map(page: Int, block: UInt32, populate: Bool = true) throws(SystemCallError) {
        try self.map(pages: page..<(page + 1), firstBlock: block, populate: populate)
    }

    /// Maps `pages` onto as many consecutive blocks from `firstBlock`, with one `mmap`.
    /// - Parameter populate: fill the page-table entries now (`MAP_POPULATE`), so the retried
    ///   access (or the kernel's GUP) does not fault a second time. The populate runs after the
    ///   `mmap` has let go of the process's `mmap_lock`: it walks whatever is mapped there by
    ///   then, so a caller that another thread may unmap meanwhile (a pin's view, which a
    ///   revoker unmaps holding no file lock) must not populate on the fault service's thread:
    ///   registered memory put back there would fault to the service itself, which would wait
    ///   for itself.
    func map(pages: Range<Int>, firstBlock: UInt32, populate: Bool = true) throws(SystemCallError) {
        try self.changing { () throws(SystemCallError) in try self.mapNow(pages: pages, firstBlock: firstBlock, populate: populate) }
    }

    private func mapNow(pages: Range<Int>, firstBlock: UInt32, populate: Bool) throws(SystemCallError) {
        _ = try mapMemory(
            "map blocks \(firstBlock)..<\(Int(firstBlock) + pages.count) at window page \(pages.lowerBound)",
            address: self.address(page: pages.lowerBound), length: pages.count * pageSize,
            protection: PROT_READ | PROT_WRITE, flags: self.mapFlags | MAP_FIXED | (populate ? MAP_POPULATE : 0),
            descriptor: self.mapping.descriptor, offset: Int(firstBlock) * pageSize)
        for page in pages { self.mappedBlock(page)?.store(firstBlock &+ UInt32(page - pages.lowerBound), ordering: .relaxed) }
        self.forget(pages)
    }

    /// Runs `body` holding `viewChanges` (a pin's view), or as is (a file's window).
    @inline(__always)
    private func changing<Result, Failure: Error>(_ body: () throws(Failure) -> Result) throws(Failure) -> Result {
        guard let lock = self.viewChanges else { return try body() }
        return try lock.withLock { (changes: inout Int) throws(Failure) -> Result in
            changes &+= 1
            return try body()
        }
    }

    /// Readies `pages` of a pin's view served by userfaultfd for the kernel to fault in onto
    /// consecutive blocks from `firstBlock`: pages that map other blocks (an earlier pin's), or
    /// were fenced, go back to missing; pages that map these blocks already keep them (as a
    /// process's mmap keeps its page-table entries from one I/O to the next).
    func leaveToFaults(pages: Range<Int>, firstBlock: UInt32) {
        guard let blocks = self.mappedBlocks, !pages.isEmpty else { return }
        var expected = firstBlock
        var stale = false
        for page in pages {
            let mapped = UnsafeAtomic<UInt32>(at: blocks + page).load(ordering: .relaxed)
            if mapped != 0 && mapped != expected {
                stale = true
                break
            }
            expected &+= 1
        }
        self.changing {
            if !stale { stale = self.state.withLock { state in state.fences.contains { pages.contains($0) } } }
            if stale { self.unmapNow(pages, keepingData: false) }
        }
    }

    /// Maps zeros at `page`: a read of a hole. A store faults again (a write-protect fault with
    /// userfaultfd, a protection fault without).
    func mapZero(page: Int) throws(SystemCallError) {
        try self.state.withLock { (state) throws(SystemCallError) in
            state.zeros.insert(page)
            guard self.userfaultfd >= 0 else {
                _ = try mapMemory(
                    "map zeros at window page \(page)", address: self.address(page: page), length: pageSize,
                    protection: PROT_READ, flags: MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED)
                return
            }
            // (A fenced page, or one whose file mapping a racing fault left, is made registered
            // anonymous memory again first: UFFDIO_COPY fills only a missing page of such memory.)
            if state.unfence(page) { self.restoreKeepingData(page..<(page + 1)) }
            var status = CShims_uffd_map_zeros(self.userfaultfd, self.address(page: page))
            if status == -ENOENT {
                // (Not registered memory there: make it so, without a moment of plain memory.)
                self.restoreKeepingData(page..<(page + 1))
                status = CShims_uffd_map_zeros(self.userfaultfd, self.address(page: page))
            }
            // EEXIST: a fault for the same page, served just before, mapped them already.
            guard status == 0 || status == -EEXIST else { throw SystemCallError("map zeros at window page \(page)", errno: -status) }
        }
    }

    /// Drops the zeros mapped over `pages` (their holes were filled): the next access faults and
    /// finds the block.
    func dropZeros(_ pages: Range<Int>) {
        self.state.withLock { state in
            guard !state.zeros.isEmpty else { return }
            for page in state.zeros.filter({ pages.contains($0) }) {
                state.zeros.remove(page)
                if self.userfaultfd >= 0 {
                    // The zeros are a page of the registered memory: zapped, the page is missing
                    // again, and the next access faults (no remapping, so nothing is ever plain
                    // memory here, and a racing map of the block is at worst zapped and faulted).
                    madvise(self.address(page: page), pageSize, MADV_DONTNEED)
                } else {
                    self.protectNone(page..<(page + 1))
                }
            }
        }
    }

    /// Makes `page` fault for good (a userfaultfd window): the CPU gets SIGBUS, the kernel
    /// EFAULT. A page past the end of file stays so until the file grows over it (`liftFences`);
    /// one whose fault found no free block (`forSpace`), until blocks are freed
    /// (`liftSpaceFences`).
    func fence(page: Int, forSpace: Bool = false) {
        guard self.userfaultfd >= 0 else { return }  // (PROT_NONE already)
        self.changing {
            self.protectNone(page..<(page + 1))
            self.state.withLock { state in
                state.fences.insert(page)
                if forSpace { state.spaceFences.insert(page) }
            }
        }
    }

    /// Whether a page is fenced for want of space (see `fence(page:forSpace:)`).
    var waitsForSpace: Bool { self.state.withLock { !$0.spaceFences.isEmpty } }

    /// Makes the pages fenced for want of space fault again (blocks were freed: their next fault
    /// tries to allocate again). Runs on the fault service's thread without the file's lock, as
    /// `drop(region:)` does: a truncate that unmaps the same pages meanwhile leaves what this
    /// leaves, registered memory. - Returns: how many were lifted.
    @discardableResult
    func liftSpaceFences() -> Int {
        guard self.userfaultfd >= 0 else { return 0 }
        let lifted = self.state.withLock { state -> [Int] in
            let lifted = state.spaceFences.intersection(state.fences)
            state.spaceFences.removeAll()
            state.fences.subtract(lifted)
            return Array(lifted)
        }
        for page in lifted { self.restoreKeepingData(page..<(page + 1)) }
        return lifted.count
    }

    /// Fences `page` of a pin's view unless `inUse()` (read under the page sets' lock) says a
    /// pin uses the view now: a fault left over from an earlier pin must not fence a page that
    /// the next pin has readied already (`leaveToFaults` reads the fences under that lock after
    /// the pin marks the view in use).
    /// - Returns: whether it fenced the page.
    func fence(page: Int, unless inUse: () -> Bool) -> Bool {
        guard self.userfaultfd >= 0 else { return false }
        return self.changing {
            self.state.withLock { state in
                guard !inUse() else { return false }
                self.protectNone(page..<(page + 1))
                state.fences.insert(page)
                return true
            }
        }
    }

    /// `pages` rounded out to whole granules of the window (2 MiB regions on a 2 MiB-granular
    /// window), within the window.
    private func granules(around pages: Range<Int>) -> Range<Int> {
        let step = self.granularity / pageSize
        let outer = (pages.lowerBound / step * step)..<((pages.upperBound + step - 1) / step * step)
        return outer.clamped(to: 0..<self.pages)
    }

    /// Holes in `pages` were filled (the caller holds the invalidate lock exclusively): their
    /// zeros go, and on a 2 MiB-granular window the refusals anywhere in their regions are lifted
    /// (a range of them may be one aligned run now).
    func holesFilled(_ pages: Range<Int>) {
        self.dropZeros(pages)
        if self.isCoarse { self.liftFences(in: self.granules(around: pages)) }
    }

    /// Makes the fenced pages below `end` fault again (the file grew; the caller holds the
    /// invalidate lock exclusively).
    func liftFences(below end: Int) {
        self.liftFences(in: 0..<end)
    }

    /// Makes the fenced pages in `pages` fault again (holes there were filled: on a 2 MiB-granular
    /// window a page that could not be mapped may be part of an aligned run now).
    func liftFences(in pages: Range<Int>) {
        guard self.userfaultfd >= 0 else { return }
        let lifted = self.state.withLock { state -> [Int] in
            guard !state.fences.isEmpty else { return [] }
            let lifted = state.fences.filter { pages.contains($0) }
            state.fences.subtract(lifted)
            state.spaceFences.subtract(lifted)
            return Array(lifted)
        }
        for page in lifted { self.restoreKeepingData(page..<(page + 1)) }
    }

    /// Forgets what `pages` mapped (zeros, fences); whether any was fenced.
    @discardableResult
    private func forget(_ pages: Range<Int>) -> Bool {
        self.state.withLock { $0.forget(pages) }
    }

    /// Wakes the threads waiting on faults in `pages` (a userfaultfd window).
    func wake(_ pages: Range<Int>) {
        guard self.userfaultfd >= 0 else { return }
        _ = CShims_uffd_wake(self.userfaultfd, self.address(page: pages.lowerBound), pages.count * pageSize)
    }

    /// Puts back what was reserved over `pages` (the caller holds the invalidate lock
    /// exclusively): `unmap_mapping_range`, TLB shootdown included.
    /// - Parameter keepingData: the blocks stay in the file at other pages (collapse-range,
    ///   insert-range): no access may find zeros meanwhile (see `restoreKeepingData`).
    /// On a 2 MiB-granular window the whole regions around `pages` go (the device cannot split
    /// a mapping): their other pages fault again, and map again only as whole aligned runs.
    func unmap(_ pages: Range<Int>, keepingData: Bool = false) {
        self.changing { self.unmapNow(pages, keepingData: keepingData) }
    }

    private func unmapNow(_ pages: Range<Int>, keepingData: Bool) {
        let range = self.granules(around: pages)
        guard !range.isEmpty else { return }
        self.forget(range)
        if self.userfaultfd >= 0 {
            // (A region's pages beyond `pages` keep their blocks: nothing may read zeros there.
            // Nor may a kernel pin's I/O land in plain memory of its view and report success.)
            let whole = range == pages.clamped(to: 0..<self.pages)
            if keepingData || !whole || self.isView { self.restoreKeepingData(range) } else { self.restore(range) }
        } else {
            self.protectNone(range)
        }
        for page in range { self.mappedBlock(page)?.store(0, ordering: .relaxed) }
    }

    /// Anonymous memory registered with the userfaultfd over `range`, as init reserved it: the
    /// unmap of a truncate or punch, whose blocks leave the file (the caller holds the file's
    /// lock exclusively). A new mapping
    /// is never registered, so there is a moment between the `mmap` and the registration when
    /// the range is plain anonymous memory, and an access then (another thread's, or the
    /// kernel's) gets a private page of zeros instead of faulting. For a range whose blocks are
    /// leaving the file that is what a fault would have found: zeros, and a store that is lost
    /// with the blocks. The pages such accesses made are thrown away once the range is
    /// registered (`MADV_DONTNEED`), so the next access faults. (`PROT_NONE` first would make
    /// the kernel's accesses fail with EFAULT meanwhile, and a DAX file never does that inside
    /// its size.)
    private func restore(_ range: Range<Int>) {
        let address = self.address(page: range.lowerBound)
        let length = range.count * pageSize
        let result = mmap(
            address, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0)
        precondition(result != MAP_FAILED, "daxlab: could not unmap window pages \(range): errno \(errno)")
        self.register(range)
        madvise(address, length, MADV_DONTNEED)
    }

    /// The same for a range whose blocks stay in the file (a collapse or insert, the budget's
    /// drop, a fence lifted), and for any range of a pin's view: no access may find zeros there
    /// (nor may a device's write land in plain memory and be reported done), so the range is
    /// `PROT_NONE` until it is registered. A CPU access meanwhile waits for the fault service;
    /// a kernel access fails with EFAULT, where a DAX file's would wait (a pin's I/O then tries
    /// again).
    private func restoreKeepingData(_ range: Range<Int>) {
        let address = self.address(page: range.lowerBound)
        let length = range.count * pageSize
        self.protectNone(range)
        self.register(range)
        precondition(mprotect(address, length, PROT_READ | PROT_WRITE) == 0, "daxlab: could not open window pages \(range): errno \(errno)")
    }

    /// `PROT_NONE` over `range`, not registered: any access faults (the CPU's as SIGSEGV, the
    /// kernel's as EFAULT). The range is the window's and of a valid size, so `mmap` over it
    /// fails only for want of memory, and a page left mapped could outlive its block: stop then.
    private func protectNone(_ range: Range<Int>) {
        let result = mmap(
            self.address(page: range.lowerBound), range.count * pageSize, PROT_NONE,
            MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0)
        precondition(result != MAP_FAILED, "daxlab: could not unmap window pages \(range): errno \(errno)")
    }

    private func register(_ range: Range<Int>) {
        let status = CShims_uffd_register(self.userfaultfd, self.address(page: range.lowerBound), range.count * pageSize)
        precondition(status == 0, "daxlab: could not register window pages \(range) with userfaultfd: errno \(-status)")
    }

    // MARK: The mapping budget (the fault service's thread only)

    /// Pages per region: the unit the budget drops (one huge page's worth).
    static let regionPages = 512
    /// Regions the service has mapped something in since they were last dropped.
    private var queuedRegions: [Bool] = []

    /// Notes that the service mapped something in `page`'s region; whether the region is new to
    /// the budget's queue.
    func queueRegion(of page: Int) -> Bool {
        let region = page / Self.regionPages
        if self.queuedRegions.isEmpty { self.queuedRegions = Array(repeating: false, count: (self.pages + Self.regionPages - 1) / Self.regionPages) }
        guard !self.queuedRegions[region] else { return false }
        self.queuedRegions[region] = true
        return true
    }

    /// Drops every mapping of `region` (the budget ran out): its pages fault again when touched.
    /// A pin is unaffected (it holds its blocks, and a kernel pin its pages, not this mapping).
    /// Runs without the file's lock: a truncate that unmaps the same pages meanwhile leaves what
    /// this leaves, and only the service maps pages.
    func drop(region: Int) {
        self.queuedRegions[region] = false
        let pages = (region * Self.regionPages)..<min(self.pages, (region + 1) * Self.regionPages)
        self.forget(pages)
        if self.userfaultfd >= 0 {
            self.restoreKeepingData(pages)
        } else {
            self.protectNone(pages)
        }
    }
}

