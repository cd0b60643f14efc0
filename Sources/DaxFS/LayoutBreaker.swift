/// What truncate, punch and unlink do with a block that may still be under DMA.
public enum BusyBlockHandling: Sendable, Equatable {
    /// Free every block at once, busy or not.
    case free
    /// Move busy blocks to lost+found (persistently); each is freed on its last unpin.
    case sequester
    /// Remove busy blocks from the file and the bitmap at once, but keep them out of the
    /// allocator until their last unpin (XFS's busy extents).
    case deferRelease
}

/// What the DAX layer says about a range about to lose its blocks.
public enum LayoutBreakResult: Sendable, Equatable {
    /// The file's lock was dropped and retaken (the caller slept): the file may have changed, so
    /// recompute the range and ask again.
    case retry
    /// The range is unmapped and no new fault can reach it while the lock is held: remove its
    /// blocks, treating busy ones as given.
    case proceed(BusyBlockHandling)
}

/// The DAX layer's side of block removal. The file system calls `breakLayouts` holding the
/// file's lock exclusively before any block leaves a file (the analogue of XFS calling
/// `xfs_break_layouts`, which calls `dax_layout_busy_page_range`), then `claimBusy` for each block
/// as it stages the removal, and `claimsCommitted` once the removal is durable.
public protocol LayoutBreaker: AnyObject, Sendable {
    /// Unmaps `pages` of inode `inode` and applies the truncate policy to the busy blocks found.
    /// May drop and retake `lock` (the file's lock, held exclusively on entry and on return).
    /// - Throws: `.busy` (policy `fail`) or `.timedOut` (a bounded wait); nothing has changed then.
    func breakLayouts(inode: Int, pages: Range<Int>, lock: ReadWriteLock) throws(FSError) -> LayoutBreakResult

    /// Whether `block` is pinned now; if so it is claimed: its last unpin releases it (after
    /// `claimsCommitted`). False means the block is idle and is freed normally.
    func claimBusy(_ block: UInt32, handling: BusyBlockHandling) -> Bool

    /// The transaction that moved claimed blocks out of their file has committed.
    func claimsCommitted(_ blocks: [UInt32])

    /// The transaction that was to move claimed blocks failed: they stay in their file, unclaimed.
    func claimsAborted(_ blocks: [UInt32])
}
