import Atomics
import CShims
import DaxlabSupport

#if canImport(Glibc)
import Glibc
#endif

/// The volatile free-block pool, rebuilt from the bitmap at mount.
///
/// The data area is cut into shards (by default 4 per CPU, at least 8), each a contiguous range of
/// blocks with its own lock and free stack. An allocation starts at the shard of the CPU it runs
/// on (`currentCPUHint`) and moves on only when that shard is empty, so threads on different CPUs
/// rarely meet, and a block freed on a CPU is soon reused there, by any file (as ext4's per-CPU
/// locality groups do). The persistent bitmap changes only through transactions; this pool is the
/// in-memory answer to "which blocks may be handed out now".
final class BlockAllocator: Sendable {
    private final class Shard: Sendable {
        let range: Range<UInt32>
        /// Free blocks, highest first, so pops hand out ascending (contiguous) runs.
        let free: Locked<[UInt32]>
        init(range: Range<UInt32>, free: [UInt32]) {
            self.range = range
            self.free = Locked(free, rank: .allocatorShard)
        }
    }

    /// The allocation observer, boxed so it can be published once with an atomic store.
    private final class ObserverBox: Sendable {
        let observer: any AllocationObserver
        init(_ observer: any AllocationObserver) { self.observer = observer }
    }

    private let shards: [Shard]
    private let shardSize: UInt32
    private let firstBlock: UInt32
    private let observer = ManagedAtomicLazyReference<ObserverBox>()

    /// - Parameters:
    ///   - dataRange: the blocks that may hold data or block maps.
    ///   - isAllocated: whether the bitmap marks a block in use.
    init(dataRange: Range<UInt32>, shardCount: Int = BlockAllocator.defaultShardCount, isAllocated: (UInt32) -> Bool) {
        let count = max(1, min(shardCount, dataRange.count))
        let size = UInt32((dataRange.count + count - 1) / count)
        self.shardSize = max(size, 1)
        self.firstBlock = dataRange.lowerBound
        var shards: [Shard] = []
        var start = dataRange.lowerBound
        while start < dataRange.upperBound {
            let end = min(start + self.shardSize, dataRange.upperBound)
            var free: [UInt32] = []
            free.reserveCapacity(Int(end - start))
            for block in (start..<end).reversed() where !isAllocated(block) { free.append(block) }
            shards.append(Shard(range: start..<end, free: free))
            start = end
        }
        self.shards = shards
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

    /// Takes `count` free blocks, preferring the shard `hint` picks.
    /// - Returns: the blocks, or nil (taking none) when fewer than `count` are free.
    func allocate(_ count: Int, hint: Int) -> [UInt32]? {
        var taken: [UInt32] = []
        taken.reserveCapacity(count)
        let start = hint % self.shards.count
        for probe in 0..<self.shards.count where taken.count < count {
            self.shards[(start + probe) % self.shards.count].free.withLock { free in
                while taken.count < count, let block = free.popLast() { taken.append(block) }
            }
        }
        guard taken.count == count else {
            self.release(taken)
            return nil
        }
        return taken
    }

    /// Returns blocks to their shards (after the transaction that freed them has committed).
    /// Freed blocks are reused first (LIFO), as a real allocator's hot free lists are: exactly the
    /// reuse that turns a DMA into a freed block into corruption of another file. The observer
    /// hears of each block before it can be handed out again.
    func release(_ blocks: [UInt32]) {
        let observer = self.allocationObserver
        for block in blocks.reversed() {
            self.shards[Int((block - self.firstBlock) / self.shardSize)].free.withLock { free in
                observer?.didFree(block)
                free.append(block)
            }
        }
    }

    /// How many blocks are free now.
    var freeCount: Int {
        self.shards.reduce(0) { total, shard in total + shard.free.withLock { $0.count } }
    }

    /// Whether `block` is in the free pool now: a linear search of its shard under the shard's
    /// lock (tests and the oracle's checks; nothing on a hot path asks).
    func isFree(_ block: UInt32) -> Bool {
        guard block >= self.firstBlock else { return false }
        let index = Int((block - self.firstBlock) / self.shardSize)
        guard index < self.shards.count else { return false }
        return self.shards[index].free.withLock { $0.contains(block) }
    }
}
