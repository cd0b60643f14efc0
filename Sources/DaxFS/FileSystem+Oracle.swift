import Atomics
import DaxlabSupport

/// Sees every block leave and enter the allocator's free pool: the race harness's oracle keeps
/// its shadow ownership table with it, independently of the DAX layer. Attach with
/// `FileSystem.observeAllocations(_:)`; a file system without one pays one atomic load per
/// allocation or release.
@_spi(Oracle) public protocol AllocationObserver: AnyObject, Sendable {
    /// `block` left the free pool to hold `page` of inode `inode` (nil: a block-map block of it).
    /// Called after the allocator handed it out and before anything is written to it.
    func didAllocate(_ block: UInt32, inode: Int, page: Int?)
    /// `block` is going back to the free pool; no allocation can hand it out before this returns.
    func didFree(_ block: UInt32)
    /// `block` stayed allocated but now holds `page` of inode `inode` (collapse-range,
    /// insert-range), before any new fault or pin can reach it there.
    func didMove(_ block: UInt32, inode: Int, page: Int)
}

extension AllocationObserver {
    public func didMove(_ block: UInt32, inode: Int, page: Int) {}
}

/// What the oracle and the tests may ask of a mounted file system, beyond its file operations.
/// Not part of the DAX contract; imported with `@_spi(Oracle) import DaxFS`.
extension FileSystem {
    /// From now on, tells `observer` of every allocation and release. Once per mount.
    /// - Returns: false when an observer is already attached.
    @_spi(Oracle) @discardableResult
    public func observeAllocations(_ observer: any AllocationObserver) -> Bool {
        self.allocator.observe(observer)
    }

    /// The block behind `page` (0 for a hole), read without locks.
    @_spi(Oracle)
    public func currentBlock(_ id: FileID, page: Int) -> UInt32 {
        let record = self.record(id.inode)
        guard record.inUse, record.generation == id.generation else { return 0 }
        return self.reader.block(of: record, id.inode, page: page)
    }

    /// Whether `block` is in the allocator's free pool now (a linear search of its shard under
    /// the shard's lock: for tests).
    @_spi(Oracle)
    public func isFreeForAllocation(_ block: UInt32) -> Bool { self.allocator.isFree(block) }

    /// Blocks in the allocator's free pool now.
    @_spi(Oracle)
    public var allocatorFreeBlocks: Int { self.allocator.freeCount }

    /// fsck's checks on the mounted image, without repairing: the caller must have stopped
    /// every thread that changes it (the race harness does, at the end of a run).
    @_spi(Oracle)
    public func checkQuiesced() -> CheckResult {
        Checker(media: self.media, geometry: self.geometry).check()
    }
}
