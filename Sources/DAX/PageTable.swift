import Atomics
import DaxFS

/// A file's emulated page table: page index to block number (0: not mapped), two levels of 512
/// entries like an x86 page table, so the hot path is two dependent loads and a file of 4 GiB
/// costs only the leaves it touches. Leaves are created on first use (the cold fault path) and
/// kept until the address space goes, so a lookup never races with a free.
final class PageTable: @unchecked Sendable {
    static let leafShift = 9
    static let leafEntries = 1 << leafShift

    // `top` holds atomic optional pointers to leaves of `leafEntries` atomic UInt32s; both are
    // only accessed atomically, and leaves are freed only in deinit.
    private let top: UnsafeMutablePointer<UnsafeAtomic<UnsafeMutableRawPointer?>.Storage>
    private let topCount: Int

    init(maximumPages: Int = FileSystem.maximumFilePages) {
        self.topCount = (maximumPages + Self.leafEntries - 1) >> Self.leafShift
        self.top = .allocate(capacity: self.topCount)
        self.top.initialize(repeating: UnsafeAtomic<UnsafeMutableRawPointer?>.Storage(nil), count: self.topCount)
    }

    deinit {
        for index in 0..<self.topCount {
            if let leaf = UnsafeAtomic<UnsafeMutableRawPointer?>(at: self.top + index).load(ordering: .relaxed) { leaf.deallocate() }
        }
        self.top.deallocate()
    }

    var maximumPages: Int { self.topCount << Self.leafShift }

    /// The entry of `page`, or nil when its leaf does not exist (nothing mapped near it).
    @inline(__always)
    func entry(_ page: Int) -> UnsafeAtomic<UInt32>? {
        guard page >= 0, page < self.maximumPages,
            let leaf = UnsafeAtomic<UnsafeMutableRawPointer?>(at: self.top + (page >> Self.leafShift)).load(ordering: .acquiring)
        else { return nil }
        return UnsafeAtomic(at: leaf.assumingMemoryBound(to: UnsafeAtomic<UInt32>.Storage.self) + (page & (Self.leafEntries - 1)))
    }

    /// The entry of `page`, creating its leaf (cold path).
    func entryCreating(_ page: Int) -> UnsafeAtomic<UInt32> {
        if let entry = self.entry(page) { return entry }
        let fresh = UnsafeMutableRawPointer.allocate(byteCount: Self.leafEntries * 4, alignment: 64)
        fresh.initializeMemory(as: UInt32.self, repeating: 0, count: Self.leafEntries)
        let slot = UnsafeAtomic<UnsafeMutableRawPointer?>(at: self.top + (page >> Self.leafShift))
        let (exchanged, _) = slot.compareExchange(expected: nil, desired: fresh, ordering: .acquiringAndReleasing)
        if !exchanged { fresh.deallocate() }
        return self.entry(page)!
    }
}
