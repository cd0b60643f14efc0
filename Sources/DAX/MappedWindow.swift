import Atomics
import CShims
import DaxFS
import DaxlabSupport
import Pmem

#if canImport(Glibc)
import Glibc
#endif

/// A window: virtual addresses reserved `PROT_NONE`, whose pages the MMU maps onto blocks of the
/// pmem image. Two kinds use it:
///
/// - a file's window (`AddressSpace.mapWindow`), as many pages as the file may have: the
///   analogue of a DAX `mmap` of the file. A load or store to a page not mapped yet is a real
///   CPU fault (SIGSEGV, caught by `WindowFaults`), which runs daxlab's fault path and maps the
///   block's page of the image into the window with `mmap(MAP_SHARED | MAP_FIXED)` (MAP_SYNC
///   where the kernel grants it), or a read-only page of zeros for a read of a hole. From then
///   on the access is a plain load or store: no daxlab code runs;
/// - a kernel pin's view (`PinBatch`): page `i` maps the pin's `i`-th block, and the kernel's
///   pins and I/O go there (see `AddressSpace.kernelPin`).
///
/// Unmapping a range puts `PROT_NONE` back over it, which is `unmap_mapping_range`: every CPU's
/// TLB entry for it is shot down.
///
/// userfaultfd is not used: it resolves a fault by copying into the faulting page
/// (UFFDIO_COPY) or by mapping the page cache page at the *same* file offset (UFFDIO_CONTINUE),
/// and a window must map block `b` of the image at any page of the window.
final class MappedWindow: @unchecked Sendable {
    // Set once in init; the mappings themselves are changed only by mmap, under the file's
    // invalidate lock (shared for faults, exclusive for unmapping).
    let base: UnsafeMutableRawPointer
    let pages: Int
    /// The image (held: its descriptor is mapped again at every fault).
    private let mapping: PmemMapping
    private let mapFlags: Int32
    /// For a pin's view: the block each page maps now (0: none), so that a pin of blocks the
    /// view maps already keeps the page-table entries the kernel has (as a process's mmap keeps
    /// them from one pin to the next). Written under the rules of `map` and `unmap`.
    private let mappedBlocks: UnsafeMutablePointer<UnsafeAtomic<UInt32>.Storage>?

    /// Reserves a window of `pages` pages over `mapping` (the image).
    /// - Parameter tracked: remember what each page maps (a pin's view; see `isMapped`).
    /// - Throws: `.notSupported` when the image cannot be mapped block by block (a device-dax
    ///   device whose alignment is not 4 KiB) or is read-only; `.io` when the reservation fails.
    init(pages: Int, mapping: PmemMapping, tracked: Bool = false) throws(FSError) {
        guard !mapping.isReadOnly else { throw FSError(.readOnly, "\(mapping.path): mounted read-only") }
        guard mapping.alignment == pageSize else {
            throw FSError(
                .notSupported,
                "\(mapping.path): a device aligned to \(mapping.alignment) bytes cannot map single blocks; "
                    + "create the namespace with ndctl create-namespace -m devdax --align 4K")
        }
        do {
            self.base = try mapMemory(
                "reserve a window of \(pages) pages", length: pages * pageSize, protection: PROT_NONE,
                flags: MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE)
        } catch {
            throw FSError(.io, error.description)
        }
        self.pages = pages
        self.mapping = mapping
        self.mapFlags = MappedWindow.probeMapSync(mapping) ? CShims_MAP_SHARED_VALIDATE | CShims_MAP_SYNC : MAP_SHARED
        if tracked {
            let blocks = UnsafeMutablePointer<UnsafeAtomic<UInt32>.Storage>.allocate(capacity: pages)
            blocks.initialize(repeating: UnsafeAtomic<UInt32>.Storage(0), count: pages)
            self.mappedBlocks = blocks
        } else {
            self.mappedBlocks = nil
        }
    }

    deinit {
        munmap(self.base, self.pages * pageSize)
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

    /// The page of the window `address` falls in, or nil.
    func page(of address: UnsafeRawPointer) -> Int? {
        let offset = Int(bitPattern: address) - Int(bitPattern: self.base)
        guard offset >= 0, offset < self.pages * pageSize else { return nil }
        return offset / pageSize
    }

    /// Maps `page` onto `block` of the image, read-write (the caller holds the invalidate lock).
    func map(page: Int, block: UInt32) throws(SystemCallError) {
        try self.map(pages: page..<(page + 1), firstBlock: block)
    }

    /// Maps `pages` onto as many consecutive blocks from `firstBlock`, with one `mmap`.
    func map(pages: Range<Int>, firstBlock: UInt32) throws(SystemCallError) {
        _ = try mapMemory(
            "map blocks \(firstBlock)..<\(Int(firstBlock) + pages.count) at window page \(pages.lowerBound)",
            address: self.address(page: pages.lowerBound), length: pages.count * pageSize,
            // MAP_POPULATE: the page-table entries are filled now, so the retried access (or the
            // kernel's GUP) does not fault a second time.
            protection: PROT_READ | PROT_WRITE, flags: self.mapFlags | MAP_FIXED | MAP_POPULATE,
            descriptor: self.mapping.descriptor, offset: Int(firstBlock) * pageSize)
        for page in pages { self.mappedBlock(page)?.store(firstBlock &+ UInt32(page - pages.lowerBound), ordering: .relaxed) }
    }

    /// Maps a read-only page of zeros at `page`: a read of a hole. A store faults again.
    func mapZero(page: Int) throws(SystemCallError) {
        _ = try mapMemory(
            "map zeros at window page \(page)", address: self.address(page: page), length: pageSize,
            protection: PROT_READ, flags: MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED)
    }

    /// Puts `PROT_NONE` back over `pages` (the caller holds the invalidate lock exclusively):
    /// `unmap_mapping_range`, TLB shootdown included.
    func unmap(_ pages: Range<Int>) {
        let range = max(0, pages.lowerBound)..<min(pages.upperBound, self.pages)
        guard !range.isEmpty else { return }
        let result = mmap(
            self.address(page: range.lowerBound), range.count * pageSize, PROT_NONE,
            MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0)
        // The range is ours and of a valid size: mmap over it cannot fail short of ENOMEM, and a
        // page left mapped would outlive its block. Stop rather than go on.
        precondition(result != MAP_FAILED, "daxlab: could not unmap window pages \(range): errno \(errno)")
        for page in range { self.mappedBlock(page)?.store(0, ordering: .relaxed) }
    }
}

/// The windows of the process, for the SIGSEGV handler: a fixed table of (base, length, address
/// space) read without locks (the handler runs on the faulting thread, which may be anywhere).
/// A window is registered when its address space creates it and removed when that space goes.
enum WindowFaults {
    private static let capacity = 4096
    // Three words per slot: base address, length in bytes, the address space (unretained).
    private nonisolated(unsafe) static let table: UnsafeMutablePointer<UnsafeAtomic<UInt>.Storage> = {
        let table = UnsafeMutablePointer<UnsafeAtomic<UInt>.Storage>.allocate(capacity: 3 * WindowFaults.capacity)
        table.initialize(repeating: UnsafeAtomic<UInt>.Storage(0), count: 3 * WindowFaults.capacity)
        return table
    }()
    private static let installed: Void = {
        _ = CShims_install_window_fault_handler { address, isWrite in
            WindowFaults.handle(address, isWrite: isWrite != 0)
        }
    }()

    private static func word(_ slot: Int, _ field: Int) -> UnsafeAtomic<UInt> {
        UnsafeAtomic(at: Self.table + 3 * slot + field)
    }

    /// Registers `space`'s window (installing the handler the first time).
    /// - Returns: the slot, or nil when the table is full.
    static func register(_ window: MappedWindow, of space: AddressSpace) -> Int? {
        _ = Self.installed
        let base = UInt(bitPattern: window.base)
        for slot in 0..<Self.capacity where Self.word(slot, 0).load(ordering: .relaxed) == 0 {
            guard Self.word(slot, 0).compareExchange(expected: 0, desired: base, ordering: .acquiringAndReleasing).exchanged
            else { continue }
            Self.word(slot, 2).store(UInt(bitPattern: Unmanaged.passUnretained(space).toOpaque()), ordering: .releasing)
            Self.word(slot, 1).store(UInt(window.pages * pageSize), ordering: .releasing)
            return slot
        }
        return nil
    }

    static func unregister(_ slot: Int) {
        Self.word(slot, 1).store(0, ordering: .releasing)
        Self.word(slot, 2).store(0, ordering: .releasing)
        Self.word(slot, 0).store(0, ordering: .releasing)
    }

    /// The fault handler's decision for a SIGSEGV at `address` (see `CShims_FAULT_*`).
    private static func handle(_ address: UnsafeMutableRawPointer?, isWrite: Bool) -> Int32 {
        guard let address else { return Int32(CShims_FAULT_NOT_OURS) }
        let target = UInt(bitPattern: address)
        for slot in 0..<Self.capacity {
            let base = Self.word(slot, 0).load(ordering: .acquiring)
            guard base != 0, target >= base else { continue }
            let length = Self.word(slot, 1).load(ordering: .acquiring)
            guard target < base &+ length, let space = UnsafeRawPointer(bitPattern: Self.word(slot, 2).load(ordering: .acquiring))
            else { continue }
            let page = Int((target - base) / UInt(pageSize))
            let owner = Unmanaged<AddressSpace>.fromOpaque(space).takeUnretainedValue()
            return owner.windowFault(page, write: isWrite) ? Int32(CShims_FAULT_MAPPED) : Int32(CShims_FAULT_SIGBUS)
        }
        return Int32(CShims_FAULT_NOT_OURS)
    }
}
