import Atomics
import CShims
import DaxlabSupport
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The volatile free-block pool, rebuilt from the bitmap at mount.
///
/// The data area is cut into shards (by default 4 per CPU, at least 8), each a contiguous range of
/// blocks with its own lock and free list (`ShardFreeList`). An allocation starts at the shard of
/// the CPU it runs on (`currentCPUHint`) and moves on only when that shard is empty, so threads
/// on different CPUs rarely meet, and a block freed on a CPU is soon reused there, by any file (as
/// ext4's per-CPU locality groups do). Shards of at least a run's size start and end on run
/// boundaries (`Geometry.runBlocks`), so each whole aligned run lies in one shard and can be
/// claimed by a file that grows through it (BlockAllocator+Runs.swift). The persistent bitmap
/// changes only through transactions; this pool is the in-memory answer to "which blocks may be
/// handed out now".
final class BlockAllocator: Sendable {
    final class Shard: Sendable {
        let range: Range<UInt32>
        let free: Locked<ShardFreeList>
        init(range: Range<UInt32>, free: [UInt32]) {
            self.range = range
            self.free = Locked(ShardFreeList(range: range, free: free), rank: .allocatorShard)
        }
    }

    /// The allocation observer, boxed so it can be published once with an atomic store.
    private final class ObserverBox: Sendable {
        let observer: any AllocationObserver
        init(_ observer: any AllocationObserver) { self.observer = observer }
    }

    let shards: [Shard]
    private let shardSize: UInt32
    /// Where the shards' grid starts: shard `i` ends at `gridStart + (i + 1) * shardSize`.
    private let gridStart: UInt32
    private let observer = ManagedAtomicLazyReference<ObserverBox>()
    /// Who hears that blocks were freed (`notifyWhenSpaceFrees`), set once, and whether anyone
    /// waits for it now; and how many calls freed blocks so far (`spaceGeneration`).
    private let spaceNotifier = ManagedAtomicLazyReference<SpaceNotifier>()
    private let spaceWanted = ManagedAtomic<Bool>(false)
    private let frees = ManagedAtomic<UInt64>(0)
    private final class SpaceNotifier: Sendable {
        let notify: @Sendable () -> Void
        init(_ notify: @escaping @Sendable () -> Void) { self.notify = notify }
    }
    /// Whole free runs in every shard's stack, together: whether a claim can succeed, asked
    /// before a file looks for one (changes under the shards' locks; read relaxed, a hint).
    let wholeRuns = Atomic<Int>(0)

    /// - Parameters:
    ///   - dataRange: the blocks that may hold data or block maps.
    ///   - isAllocated: whether the bitmap marks a block in use.
    init(dataRange: Range<UInt32>, shardCount: Int = BlockAllocator.defaultShardCount, isAllocated: (UInt32) -> Bool) {
        let count = max(1, min(shardCount, dataRange.count))
        let runBlocks = UInt32(Geometry.runBlocks)
        var size = UInt32(max((dataRange.count + count - 1) / count, 1))
        if size >= runBlocks { size = (size + runBlocks - 1) / runBlocks * runBlocks }
        self.shardSize = size
        self.gridStart = size % runBlocks == 0 ? dataRange.lowerBound / runBlocks * runBlocks : dataRange.lowerBound
        var shards: [Shard] = []
        var start = dataRange.lowerBound
        while start < dataRange.upperBound {
            let end = min(self.gridStart + ((start - self.gridStart) / size + 1) * size, dataRange.upperBound)
            var free: [UInt32] = []
            free.reserveCapacity(Int(end - start))
            for block in (start..<end).reversed() where !isAllocated(block) { free.append(block) }
            shards.append(Shard(range: start..<end, free: free))
            start = end
        }
        self.shards = shards
        self.wholeRuns.store(shards.reduce(0) { $0 + $1.free.withLock { $0.wholeRuns } }, ordering: .relaxed)
    }

    /// The shard holding `block` (a data block).
    @inline(__always)
    func shard(of block: UInt32) -> Shard { self.shards[Int((block - self.gridStart) / self.shardSize)] }

    /// Runs `body` on `shard`'s free list under its lock, keeping `wholeRuns` up to date.
    @inline(__always)
    func withFreeList<Result>(_ shard: Shard, _ body: (inout ShardFreeList) -> Result) -> Result {
        shard.free.withLock { list in
            let before = list.wholeRuns
            let result = body(&list)
            if list.wholeRuns != before { self.wholeRuns.add(list.wholeRuns - before, ordering: .relaxed) }
            return result
        }
    }

    /// The shard hint for the calling thread: its CPU.
    static var currentCPUHint: Int { Int(CShims_current_cpu()) }

    static var defaultShardCount: Int {
        max(8, 4 * max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))))
    }

    /// Tells `observer` of every release from now on (allocations are reported by the callers,
    /// who know what a block is for). Once.
    func observe(_ observer: any AllocationObserver) -> Bool {
        let box = ObserverBox(observer)
        return self.observer.storeIfNilThenLoad(box) === box
    }

    /// The allocation observer, if one is attached.
    var allocationObserver: (any AllocationObserver)? { self.observer.load()?.observer }

    /// Takes `count` free blocks, preferring the shard `hint` picks. Blocks that files have
    /// claimed in runs are taken only when the stacks alone fall short: then every claim met on
    /// the way is dissolved first (its file allocates as before it had one).
    /// - Returns: the blocks, or nil (taking none) when fewer than `count` are free.
    func allocate(_ count: Int, hint: Int) -> [UInt32]? {
        var taken: [UInt32] = []
        taken.reserveCapacity(count)
        let start = hint % self.shards.count
        for pass in 0..<2 where taken.count < count {
            for probe in 0..<self.shards.count where taken.count < count {
                self.withFreeList(self.shards[(start + probe) % self.shards.count]) { list in
                    if pass == 1 { list.dissolve(owner: nil) }
                    while taken.count < count, let block = list.pop() { taken.append(block) }
                }
            }
        }
        guard taken.count == count else {
            self.release(taken, aborted: true)
            return nil
        }
        return taken
    }

    /// Returns blocks to their shards (after the transaction that freed them has committed).
    /// Freed blocks are reused first (LIFO), as a real allocator's hot free lists are: exactly the
    /// reuse that turns a DMA into a freed block into corruption of another file. The observer
    /// hears of each block before it can be handed out again, unless `report` is false (blocks
    /// taken and given back before anyone heard of them).
    /// - Parameter aborted: the blocks are the caller's own, taken a moment ago by the call that
    ///   failed: giving them back frees no space a waiter could want (no `notifyWhenSpaceFrees`).
    func release(_ blocks: [UInt32], report: Bool = true, aborted: Bool = false) {
        let observer = report ? self.allocationObserver : nil
        for block in blocks.reversed() {
            self.withFreeList(self.shard(of: block)) { list in
                observer?.didFree(block)
                list.push(block)
            }
        }
        if !aborted, !blocks.isEmpty {
            self.frees.wrappingIncrement(ordering: .sequentiallyConsistent)
            self.spaceFreed()
        }
    }

    /// How many calls have freed blocks so far: read before an allocation that may fail, it is
    /// what `notifyWhenSpaceFrees` compares with.
    var spaceGeneration: UInt64 { self.frees.load(ordering: .sequentiallyConsistent) }

    /// Calls `notify` once, from the next `release` that frees blocks, or at once when one did
    /// since `generation` (`spaceGeneration` before the allocation that failed). No wake-up is
    /// lost: the waiter sets the flag, then reads the count; a release bumps the count, then
    /// reads the flag (all sequentially consistent), so one of them sees the other's. A release
    /// may take a flag set after its bump, for a waiter that counted that free already: the
    /// waiter, told with nothing new for it, asks again (`FaultService.liftSpaceFences`).
    func notifyWhenSpaceFrees(since generation: UInt64, _ notify: @escaping @Sendable () -> Void) {
        _ = self.spaceNotifier.storeIfNilThenLoad(SpaceNotifier(notify))
        self.spaceWanted.store(true, ordering: .sequentiallyConsistent)
        if self.spaceGeneration != generation { self.spaceFreed() }
    }

    private func spaceFreed() {
        guard self.spaceWanted.load(ordering: .sequentiallyConsistent),
            self.spaceWanted.exchange(false, ordering: .sequentiallyConsistent)
        else { return }
        self.spaceNotifier.load()?.notify()
    }

    /// How many blocks are free now (claimed runs' unused blocks included: an allocation that
    /// needs them dissolves the claims).
    var freeCount: Int {
        self.shards.reduce(0) { total, shard in total + shard.free.withLock { $0.freeCount } }
    }

    /// Whether `block` is free now, in a stack or unused in a claimed run: a linear search of its
    /// shard under the shard's lock (tests and the oracle's checks; nothing on a hot path asks).
    func isFree(_ block: UInt32) -> Bool {
        guard let first = self.shards.first?.range.lowerBound, block >= first else { return false }
        let index = Int((block - self.gridStart) / self.shardSize)
        guard index < self.shards.count else { return false }
        return self.shards[index].free.withLock { $0.contains(block) }
    }
}
