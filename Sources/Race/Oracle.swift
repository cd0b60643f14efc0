import Atomics
@_spi(Oracle) import DaxFS
import DMA
import DaxlabSupport

/// The independent judge of a race run. It never asks the DAX layer what it did; it keeps its
/// own records and reads the file system the way a user would:
///
/// - a **shadow ownership table**, one word per block, kept from the allocator's own events
///   (`AllocationObserver`): whether the block is allocated, to which inode and page, and an
///   *epoch* that grows each time the block is allocated again;
/// - the **tag** every write puts in its block (`BlockTag`): a device's tag carries the epoch
///   its pin was taken under and the lease; a CPU writer's, its write number.
///
/// A device's pin is *valid* when, at the moment it was taken, the shadow table had the block
/// allocated to that very file and page; the pin remembers the block's word (its cookie). A
/// *stale DMA write* is a device write that landed while the block's word was no longer that
/// cookie: the block was freed, or allocated again (to another file, or even to the same file
/// and page), or the pin was never valid. Blocks a policy holds in limbo (sequestered, deferred,
/// waited on) are neither freed nor reallocated, so writes into them are not stale.
/// A *corrupted block* is a page whose content is not what its file last wrote: for a writer's
/// page, anything but its last tag; for a shared page, any device tag from another epoch of
/// the block, another file or another page.
package final class Oracle: DMAObserver, AllocationObserver, @unchecked Sendable {
    // `owners` is one atomic word per block, allocated once; the counters are atomic; the
    // expected tags live in `Writer`s, each used by its own thread and the verifier under the
    // writer's lock.
    /// Unowned: the file system holds the oracle (its allocator's observer) for as long as it
    /// lives, so a strong reference back would keep both, and the image's mapping, forever.
    unowned let fs: FileSystem
    private let owners: UnsafeMutablePointer<UnsafeAtomic<UInt64>.Storage>
    private let blockCount: Int
    package let staleWrites = ManagedAtomic<Int>(0)
    package let landedWrites = ManagedAtomic<Int>(0)
    package let refusedWrites = ManagedAtomic<Int>(0)
    let corruptions = Locked<Set<Corruption>>([], rank: .oracleCorruptions)
    /// Blocks that moved within their file since their last allocation (their content is the
    /// file's own from another offset), and whether any did (the common case asks nothing more).
    private let moved = Locked<Set<UInt32>>([], rank: .oracleMoved)
    private let anyMoved = ManagedAtomic<Bool>(false)

    /// One corrupted page: the file, the page, and the write it should have held.
    struct Corruption: Hashable {
        var inode: Int
        var page: Int
        var expected: UInt64
    }

    /// Attaches to `fs`'s allocator (`observeAllocations`): from now on every allocation and
    /// release reaches the shadow table.
    /// - Parameter attach: false leaves attaching to the caller (a test that interposes on the
    ///   allocator's events and forwards them).
    /// - Throws: `.inUse` when another observer is attached to `fs`.
    package init(fs: FileSystem, attach: Bool = true) throws(FSError) {
        self.fs = fs
        self.blockCount = fs.geometry.blockCount
        self.owners = .allocate(capacity: self.blockCount)
        self.owners.initialize(repeating: UnsafeAtomic<UInt64>.Storage(0), count: self.blockCount)
        guard !attach || fs.observeAllocations(self) else {
            self.owners.deallocate()
            throw FSError(.inUse, "\(fs.path): an allocation observer is already attached")
        }
    }

    deinit { self.owners.deallocate() }

    // MARK: The shadow ownership word

    // bit 63 allocated | bits 37-62 epoch | bits 16-36 page (all ones: a block-map block) | bits 0-15 inode
    private static let allocatedBit: UInt64 = 1 << 63
    private static let epochShift: UInt64 = 37
    private static let epochMask: UInt64 = (1 << 26) - 1
    private static let pageShift: UInt64 = 16
    private static let mapPage: UInt64 = (1 << 21) - 1

    static func word(inode: Int, page: Int?, epoch: UInt64) -> UInt64 {
        Self.allocatedBit | (epoch & Self.epochMask) << Self.epochShift
            | (page.map { UInt64($0) & Self.mapPage } ?? Self.mapPage) << Self.pageShift
            | UInt64(UInt16(truncatingIfNeeded: inode))
    }

    static func epoch(of word: UInt64) -> UInt32 { UInt32((word >> Self.epochShift) & Self.epochMask) }

    private func slot(_ block: UInt32) -> UnsafeAtomic<UInt64>? {
        Int(block) < self.blockCount ? UnsafeAtomic(at: self.owners + Int(block)) : nil
    }

    /// The shadow word of `block` now (0: never allocated since the oracle attached).
    package func owner(of block: UInt32) -> UInt64 { self.slot(block)?.load(ordering: .acquiring) ?? 0 }

    /// Whether the shadow table has `block` allocated to `page` of `file` now.
    package func isOwned(_ block: UInt32, by file: FileID, page: Int) -> Bool {
        let word = self.owner(of: block)
        return word & Self.allocatedBit != 0 && word == Self.word(inode: file.inode, page: page, epoch: UInt64(Self.epoch(of: word)))
    }

    /// Whether the shadow table has `block` free (released to the allocator) now.
    package func isFree(_ block: UInt32) -> Bool {
        let word = self.owner(of: block)
        return word != 0 && word & Self.allocatedBit == 0
    }

    // MARK: AllocationObserver

    package func didAllocate(_ block: UInt32, inode: Int, page: Int?) {
        guard let slot = self.slot(block) else { return }
        if self.anyMoved.load(ordering: .relaxed) { _ = self.moved.withLock { $0.remove(block) } }
        var current = slot.load(ordering: .relaxed)
        while true {
            let next = Self.word(inode: inode, page: page, epoch: UInt64(Self.epoch(of: current)) + 1)
            let (exchanged, original) = slot.weakCompareExchange(expected: current, desired: next, ordering: .acquiringAndReleasing)
            if exchanged { return }
            current = original
        }
    }

    /// A block that moved within its file (collapse-range, insert-range): allocated still, to
    /// another page, in a new epoch (so a device that pinned it before the move writes stale).
    /// Its content is the file's own, from its old place: `isOwnDeviceData` takes it as such.
    package func didMove(_ block: UInt32, inode: Int, page: Int) {
        guard let slot = self.slot(block) else { return }
        let word = slot.load(ordering: .relaxed)
        slot.store(Self.word(inode: inode, page: page, epoch: UInt64(Self.epoch(of: word)) + 1), ordering: .releasing)
        _ = self.moved.withLock { $0.insert(block) }
        self.anyMoved.store(true, ordering: .relaxed)
    }

    package func didFree(_ block: UInt32) {
        guard let slot = self.slot(block) else { return }
        // Keep the epoch, so a later allocation moves it on. A block never allocated since the
        // oracle attached gets epoch 0 and the allocated bit clear: free.
        let word = slot.load(ordering: .relaxed)
        slot.store((word & ~Self.allocatedBit) | (word == 0 ? 1 << Self.epochShift : 0), ordering: .releasing)
    }

    // MARK: DMAObserver

    /// A valid pin's cookie is the block's shadow word now; an invalid one (the block is not the
    /// file's page per the shadow table) gets 0, which no word equals.
    package func didPin(_ file: FileID, page: Int, block: UInt32, lease: UInt64) -> UInt64 {
        self.isOwned(block, by: file, page: page) ? self.owner(of: block) : 0
    }

    package func fill(_ buffer: UnsafeMutableRawPointer, for write: DMAWrite) {
        BlockTag(
            file: write.file, page: write.page, writer: write.device, kind: .device,
            epoch: write.cookie == 0 ? UInt32.max : Self.epoch(of: write.cookie), stamp: write.lease
        ).fill(buffer)
    }

    package func didWrite(_ write: DMAWrite, block: UInt32, landed: Bool) {
        guard landed else {
            self.refusedWrites.wrappingIncrement(ordering: .relaxed)
            return
        }
        self.landedWrites.wrappingIncrement(ordering: .relaxed)
        if write.cookie == 0 || self.owner(of: block) != write.cookie {
            self.staleWrites.wrappingIncrement(ordering: .relaxed)
        }
    }

    // MARK: Corruption

    /// The corrupted pages found so far.
    package var corruptedBlocks: Int { self.corruptions.withLock { $0.count } }

    func recordCorruption(_ corruption: Corruption) {
        _ = self.corruptions.withLock { $0.insert(corruption) }
    }

    /// Whether `tags` (read from page `page` of `file`, now backed by `block`) are the file's own
    /// device data: every copy a device tag naming this file and page, written under the block's
    /// current epoch (from one device, or interleaved from several that wrote it at once).
    package func isOwnDeviceData(_ tags: [BlockTag], file: FileID, page: Int, block: UInt32) -> Bool {
        let word = self.owner(of: block)
        guard self.isOwned(block, by: file, page: page) else { return false }
        if self.anyMoved.load(ordering: .relaxed), self.moved.withLock({ $0.contains(block) }) { return true }
        let epoch = Self.epoch(of: word)
        return tags.allSatisfy { $0.kind == .device && $0.file == file && $0.page == page && $0.epoch == epoch }
    }
}
