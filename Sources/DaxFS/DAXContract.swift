import DaxlabSupport
import Pmem

// The contract between DaxFS and the DAX layer, both directions in one place: the analogue of
// `iomap_ops` (the file system tells fs/dax.c which block backs a page) and of
// `dax_holder_operations` / `xfs_break_layouts` (the DAX layer is asked before blocks leave a
// file). Everything else each side does is its own business.

/// What happens to a block that may be pinned for DMA as it leaves its file. One name for it
/// in DaxFS, in the DAX layer's pin table and in the policies.
public enum BusyBlockDisposition: Sendable, Equatable, CustomStringConvertible {
    /// Freed at once, pinned or not (policy `none`; or nothing in the range is pinned).
    case free
    /// Moved to lost+found in the transaction that removes it; freed when its last pin drops,
    /// or by the next mount after a crash.
    case sequester
    /// Taken out of the file and the bitmap at once but kept out of the allocator until its
    /// last pin drops (XFS's busy extents); volatile, so a crash frees it.
    case deferred

    public var description: String {
        switch self {
        case .free: "free"
        case .sequester: "sequester"
        case .deferred: "deferred"
        }
    }
}

/// The DAX layer's answer for a range about to lose its blocks.
public enum LayoutBreakResult: Sendable, Equatable {
    /// The file's lock was dropped and retaken (the caller slept): the file may have changed, so
    /// recompute the range and ask again.
    case retry
    /// The range is unmapped and no new fault or pin can reach it while the lock is held: remove
    /// its blocks, treating pinned ones as the disposition says.
    case proceed(BusyBlockDisposition)
}

/// One truncate, punch or unlink on its way through the layout breaker: the policy it runs
/// under and what happened to it so far. The file system makes one per call and passes it down
/// explicitly (no task-local state), so every removal is judged by its own caller's policy.
public struct LayoutBreakCall: Sendable {
    /// The caller's policy, or the DAX layer's default when the caller named none.
    public let policy: TruncatePolicy
    /// Whether this call has slept waiting for pins (`wait`, `lease-break`); the breaker sets it.
    public var slept = false
    /// Blocks of the range move within the file rather than leave it (collapse-range,
    /// insert-range): a pinned one cannot be held in limbo, so `sequester` and `deferred` wait
    /// for it as `wait` does.
    public let movesBlocks: Bool

    package init(policy: TruncatePolicy, movesBlocks: Bool = false) {
        self.policy = policy
        self.movesBlocks = movesBlocks
    }
}

/// The file locks a removal holds exclusively while it asks the layout breaker: the removed
/// file's, and for a rename or publish over a name also the renamed file's. A breaker that sleeps
/// for pins drops them all and takes them again before it returns, so no sleep holds any file's
/// lock (Jan Kara's rule, for both files: a device holding a pin may need to fault either). Two
/// are taken, and taken again, in ascending inode number: the lock order (docs/architecture.md).
package struct FileLocks: Sendable {
    private let first: ReadWriteLock
    private let second: ReadWriteLock?

    /// The lock of inode `number` in `locks`.
    init(_ locks: ReadWriteLocks, _ number: Int) {
        self.first = locks[number]
        self.second = nil
    }

    /// The locks of inodes `a` and `b` in `locks`, lower number first (one lock if they are the same).
    init(_ locks: ReadWriteLocks, _ a: Int, _ b: Int) {
        self.first = locks[min(a, b)]
        self.second = a == b ? nil : locks[max(a, b)]
    }

    /// Takes them exclusively, in order.
    package func lockExclusive() {
        self.first.lockExclusive()
        self.second?.lockExclusive()
    }

    /// Releases them.
    package func unlock() {
        self.second?.unlock()
        self.first.unlock()
    }
}

/// The DAX layer's side of the contract: what it offers the file system. DaxFS calls
/// `breakLayouts` holding the file's lock exclusively before any block leaves the file (the
/// analogue of XFS calling `xfs_break_layouts`, which reaches `dax_layout_busy_page_range`),
/// then `claimBusy` for each block as it stages the removal, and `claimsCommitted` once the
/// removal is durable. The file system holds its breaker until unmount, which drops it.
package protocol LayoutBreaker: AnyObject, Sendable {
    /// The policy for calls that name none.
    var defaultPolicy: TruncatePolicy { get }

    /// Unmaps `pages` of inode `inode` and applies `call.policy` to the pinned blocks found.
    /// May drop and retake `locks` (the file's lock, and any other the removal holds: held
    /// exclusively on entry and on return, and never while it sleeps).
    /// - Throws: `.busy` (policy `fail`) or `.timedOut` (a bounded wait); nothing has changed then.
    func breakLayouts(
        _ call: inout LayoutBreakCall, inode: Int, pages: Range<Int>, locks: FileLocks
    ) throws(FSError) -> LayoutBreakResult

    /// Whether `block` is pinned now; if so it is claimed for `disposition` (`.sequester` or
    /// `.deferred`): its last unpin has it released (after `claimsCommitted`). False means the
    /// block is idle and is freed normally.
    func claimBusy(_ block: UInt32, as disposition: BusyBlockDisposition) -> Bool

    /// A call holding inode `inode`'s lock exclusively may have filled holes in `filled` (a
    /// write, fallocate, zero-range) and grew the file to `grownTo` pages (nil: it did not grow):
    /// mappings of zeros in `filled` must go, and mappings that answered a fault past the old end
    /// with SIGBUS must fault again (the kernel's `dax_insert_entry` unmaps a hole's zero page
    /// when a block replaces it).
    func mappingsChanged(_ inode: Int, filled: Range<Int>, grownTo: Int?)

    /// The transaction that moved claimed blocks out of their file has committed.
    func claimsCommitted(_ blocks: [UInt32])

    /// The transaction that was to move claimed blocks failed: they stay in their file, unclaimed.
    func claimsAborted(_ blocks: [UInt32])

    /// Before an unmount, with nothing locked: what to do with pins still outstanding, under the
    /// default policy (wait for them, revoke them, refuse the unmount, or let them outlive it).
    /// - Throws: `.busy` or `.timedOut`: the unmount must not proceed (nothing changed).
    func breakLayoutsFinal() throws(FSError)

    /// The file system is being unmounted: finish the releases already due, and from now on
    /// release nothing (under `none` a sequestered or deferred block may still be pinned: it
    /// stays in lost+found for the next mount, or is already free on the media).
    func fileSystemWillUnmount()
}

/// The file system's side of the contract: what it offers the DAX layer. The DAX layer uses
/// DaxFS through this and through DaxFS's public file operations, nothing else.
package protocol DAXBlockSource: AnyObject, Sendable {
    /// The pmem mapping every block lives in (block `b` at byte `b * 4096`).
    var mapping: PmemMapping { get }
    /// Blocks in the image (the size of per-block tables).
    var blockCount: Int { get }
    /// Inodes in the image (the size of per-file tables); inode numbers are below it.
    var inodeCount: Int { get }

    /// The file's invalidate lock (the analogue of `mapping->invalidate_lock`): faults hold it
    /// shared; truncate, punch and unlink hold it exclusively.
    func invalidateLock(for file: FileID) -> ReadWriteLock

    /// Whether `file` names a file that exists now (its inode in use, with that generation),
    /// not a removed one whose inode may belong to another file. The caller holds the
    /// invalidate lock.
    func isCurrent(_ file: FileID) -> Bool

    /// The block behind `page` of `file` for a fault (`iomap_begin`); with `allocate`, a hole
    /// gets a new zeroed block, durable and mapped before this returns. The caller holds the
    /// invalidate lock (shared).
    /// - Returns: the block, or 0 for a hole when not allocating.
    /// - Throws: `.notFound` (file gone), `.invalidArgument` past the end of file (SIGBUS), `.noSpace`.
    func blockForFault(_ file: FileID, page: Int, allocate: Bool) throws(FSError) -> UInt32

    /// The first block of the aligned run behind the 2 MiB range of `file` holding `page` (pages
    /// `r ..< r + Geometry.runBlocks`, `r` a multiple of it), for a huge fault (what
    /// `dax_iomap_pmd_fault` needs of `iomap_begin`): when every page of the range lies within the
    /// file's size and page `r + i` maps block `first + i`, with `first` a multiple of
    /// `Geometry.runBlocks` (so the range is one 2 MiB-aligned extent of the image, at byte
    /// `first * 4096`). Allocates nothing. The caller holds the invalidate lock (shared).
    /// - Returns: `first`; nil when the range is not so backed (a hole in it, a block out of
    ///   place, a range past the end of file) or `file` is gone.
    func alignedRun(_ file: FileID, page: Int) -> UInt32?

    /// For a huge write fault: allocates the whole 2 MiB range of `file` holding `page` as one
    /// aligned run, zeroed and durable, when the range lies within the file and is all holes.
    /// The caller holds the invalidate lock (shared).
    /// - Returns: the run's first block; nil when it cannot be had so (nothing allocated then,
    ///   unless another fault got there first).
    /// - Throws: `.noSpace`, `.notFound`, `.io`.
    func allocateAlignedRun(_ file: FileID, page: Int) throws(FSError) -> UInt32?

    /// The block behind `page` of inode `inode`, 0 for a hole: for the breaker's scan of a range,
    /// with the invalidate lock held exclusively so the block map cannot change under it.
    func mappedBlock(inode: Int, page: Int) -> UInt32

    /// Releases a block whose last pin dropped after it left its file: a sequestered block leaves
    /// lost+found (a transaction), a deferred one returns to the allocator. Called by the DAX
    /// layer's reclaimer thread, never from a device's unpin.
    func releaseFromLimbo(_ block: UInt32, _ disposition: BusyBlockDisposition) throws(FSError)

    /// How many calls have freed blocks so far (read before a fault that may find no space).
    var spaceGeneration: UInt64 { get }

    /// Calls `notify` once, from the next call that frees blocks (at once when one did since
    /// `generation`): a fault that found no space waits for some (the DAX layer lifts the fences
    /// it left then). Every call shares the first `notify` given (the process's fault service).
    func notifyWhenSpaceFrees(since generation: UInt64, _ notify: @escaping @Sendable () -> Void)

    /// Makes `breaker` the one every removal asks from now on (held until unmount, which drops it).
    /// - Throws: `.inUse` when another DAX layer is attached, `.invalidArgument` when unmounted.
    func attach(_ breaker: any LayoutBreaker) throws(FSError)
}
