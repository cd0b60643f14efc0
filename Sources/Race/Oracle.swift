import Atomics
import DAX
import DMA
import DaxFS

/// The independent judge of a race run. It never asks the policy code what it did; it keeps its
/// own records and reads the file system the way a user would:
///
/// - a **shadow ownership table**, one word per block: which (file, page) last took the block
///   (a device when it pins it, a CPU writer after writing through the file system);
/// - the **tag** every write puts in its block (`BlockTag`), and for every CPU-written page the tag
///   last written.
///
/// A *stale DMA write* is a device write that landed in a block that, at that moment, another
/// file had taken (per the shadow table) or the allocator could hand out: the device no longer
/// writes into its own file. Blocks a policy holds in limbo (sequestered, deferred, waited on)
/// are taken by nobody else and are not free, so writes into them are not stale.
/// A *corrupted block* is a page whose content is not what its file last wrote.
public final class Oracle: DMAObserver, @unchecked Sendable {
    // `owners` is one atomic word per block; the counters are atomic; the expected tags live in
    // `Writer`s, each used by its own thread and the verifier under the writer's lock.
    let fs: FileSystem
    private let owners: UnsafeMutablePointer<UnsafeAtomic<UInt64>.Storage>
    private let blockCount: Int
    public let staleWrites = ManagedAtomic<Int>(0)
    public let landedWrites = ManagedAtomic<Int>(0)
    public let refusedWrites = ManagedAtomic<Int>(0)
    let corruptions = Locked<Set<Corruption>>([])

    /// One corrupted page: the file, the page, and the write it should have held.
    struct Corruption: Hashable {
        var inode: Int
        var page: Int
        var expected: UInt64
    }

    init(fs: FileSystem) {
        self.fs = fs
        self.blockCount = fs.geometry.blockCount
        self.owners = .allocate(capacity: self.blockCount)
        self.owners.initialize(repeating: UnsafeAtomic<UInt64>.Storage(0), count: self.blockCount)
    }

    deinit { self.owners.deallocate() }

    static func owner(_ file: FileID, _ page: Int) -> UInt64 {
        UInt64(UInt32(truncatingIfNeeded: file.inode)) << 32 | UInt64(UInt32(truncatingIfNeeded: page)) | 1 << 63
    }

    private func slot(_ block: UInt32) -> UnsafeAtomic<UInt64>? {
        Int(block) < self.blockCount ? UnsafeAtomic(at: self.owners + Int(block)) : nil
    }

    /// Records that `file`'s `page` now lives in `block`.
    func take(_ block: UInt32, file: FileID, page: Int) {
        self.slot(block)?.store(Self.owner(file, page), ordering: .releasing)
    }

    /// The corrupted pages found so far.
    public var corruptedBlocks: Int { self.corruptions.withLock { $0.count } }

    func recordCorruption(_ corruption: Corruption) {
        _ = self.corruptions.withLock { $0.insert(corruption) }
    }

    // MARK: DMAObserver

    /// A device took its blocks when it pinned them.
    public func didPin(_ file: FileID, page: Int, block: UInt32) {
        self.take(block, file: file, page: page)
    }

    public func willWrite(_ tag: BlockTag, block: UInt32) {}

    public func didWrite(_ tag: BlockTag, block: UInt32, landed: Bool) {
        guard landed else {
            self.refusedWrites.wrappingIncrement(ordering: .relaxed)
            return
        }
        self.landedWrites.wrappingIncrement(ordering: .relaxed)
        let mine = Self.owner(tag.file, tag.page)
        let owner = self.slot(block)?.load(ordering: .acquiring) ?? 0
        if owner != mine || self.fs.isFreeForAllocation(block) {
            self.staleWrites.wrappingIncrement(ordering: .relaxed)
        }
    }
}
