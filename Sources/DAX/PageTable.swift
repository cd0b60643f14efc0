#if canImport(Glibc)
import Glibc
#endif
import Atomics
import DaxFS

/// A file's emulated page table: page index to block number (0: not mapped), one flat array of
/// 4-byte entries over every page a file can have, so a lookup is one load at `entries + page`.
///
/// The array is reserved, not allocated: an anonymous private mapping of about 1 MiB
/// (`MAP_NORESERVE`, small pages) that the kernel fills in one zeroed 4 KiB page per 1024
/// entries on first write, and answers reads of untouched parts with its shared zero page. So a
/// small file costs one or two table pages, and a file of 1 GiB only the table pages it touches,
/// as the two-level table it replaces did, without the second dependent load on every lookup.
/// The table's pages are never given back while the address space lives, so a lookup never
/// races with a free.
///
/// `touched` marks each 1024-entry chunk an entry was ever installed in (on the cold path), so
/// an invalidation of a huge range visits only chunks that can hold an entry.
final class PageTable: @unchecked Sendable {
    /// Entries per table page (4 KiB of 4-byte entries).
    static let chunkShift = 10

    /// The entries: `maximumPages` atomic UInt32s, only accessed atomically.
    let entries: UnsafeMutablePointer<UnsafeAtomic<UInt32>.Storage>
    let maximumPages: Int
    private let touched: UnsafeMutablePointer<UnsafeAtomic<Bool>.Storage>
    private let chunkCount: Int
    /// Whether `entries` is a reservation to unmap (false: a plain allocation, where the
    /// reservation was refused).
    private let reserved: Bool

    init(maximumPages: Int = FileSystem.maximumFilePages) {
        self.maximumPages = maximumPages
        let bytes = (maximumPages * 4 + 4095) & ~4095
        let address = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        if let address, address != MAP_FAILED {
            // Small pages: a huge page would make every file's first fault cost 2 MiB.
            madvise(address, bytes, MADV_NOHUGEPAGE)
            self.entries = address.bindMemory(to: UnsafeAtomic<UInt32>.Storage.self, capacity: maximumPages)
            self.reserved = true
        } else {
            // No address space to reserve: the same table, allocated and zeroed at once.
            self.entries = .allocate(capacity: maximumPages)
            self.entries.initialize(repeating: UnsafeAtomic<UInt32>.Storage(0), count: maximumPages)
            self.reserved = false
        }
        self.chunkCount = (maximumPages + (1 << Self.chunkShift) - 1) >> Self.chunkShift
        self.touched = .allocate(capacity: self.chunkCount)
        self.touched.initialize(repeating: UnsafeAtomic<Bool>.Storage(false), count: self.chunkCount)
    }

    deinit {
        if self.reserved {
            munmap(UnsafeMutableRawPointer(self.entries), (self.maximumPages * 4 + 4095) & ~4095)
        } else {
            self.entries.deallocate()
        }
        self.touched.deallocate()
    }

    /// The mapped block of `page` (0: none, or `page` outside the table): one load.
    @inline(__always)
    func block(_ page: Int) -> UInt32 {
        guard UInt(bitPattern: page) < UInt(bitPattern: self.maximumPages) else { return 0 }
        return UnsafeAtomic(at: self.entries + page).load(ordering: .acquiring)
    }

    /// The entry of `page`, or nil outside the table.
    @inline(__always)
    func entry(_ page: Int) -> UnsafeAtomic<UInt32>? {
        guard UInt(bitPattern: page) < UInt(bitPattern: self.maximumPages) else { return nil }
        return UnsafeAtomic(at: self.entries + page)
    }

    /// The entry of `page`, for installing a mapping (cold path): marks its chunk touched first.
    func entryForInstall(_ page: Int) -> UnsafeAtomic<UInt32>? {
        guard let entry = self.entry(page) else { return nil }
        let chunk = UnsafeAtomic<Bool>(at: self.touched + (page >> Self.chunkShift))
        if !chunk.load(ordering: .relaxed) { chunk.store(true, ordering: .sequentiallyConsistent) }
        return entry
    }

    /// Calls `body` with each entry of `pages` whose chunk was ever touched.
    func forEachEntry(in pages: Range<Int>, _ body: (Int, UnsafeAtomic<UInt32>) -> Void) {
        var page = max(0, pages.lowerBound)
        let end = min(pages.upperBound, self.maximumPages)
        while page < end {
            let chunkEnd = min(end, ((page >> Self.chunkShift) + 1) << Self.chunkShift)
            if UnsafeAtomic<Bool>(at: self.touched + (page >> Self.chunkShift)).load(ordering: .sequentiallyConsistent) {
                for index in page..<chunkEnd { body(index, UnsafeAtomic(at: self.entries + index)) }
            }
            page = chunkEnd
        }
    }
}
