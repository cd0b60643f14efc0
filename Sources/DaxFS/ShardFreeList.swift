/// One allocator shard's free blocks, behind the shard's lock: a stack of loose free blocks, and
/// the aligned runs (`Geometry.runBlocks` blocks, the first a multiple of it) that files have
/// claimed. A claimed run's unused blocks are free on the media (the bitmap has them clear) and
/// out of the stack: only the claiming file takes them, each for the page whose offset in its
/// 2 MiB range matches the block's in the run. The analogue of ext4's inode preallocation
/// (`ext4_mb_use_inode_pa`), which is in memory only as well: a crash forgets claims and loses
/// nothing.
struct ShardFreeList {
    /// A file's claim on an aligned run.
    struct RunClaim {
        /// The run's first block (a multiple of `Geometry.runBlocks`).
        let first: UInt32
        /// The claiming inode.
        let owner: Int
        /// Bit `i` set: block `first + i` is still unused (free on the media, in no stack).
        var unused: InlineArray<8, UInt64> = InlineArray(repeating: ~0)
        var unusedCount = Geometry.runBlocks

        func isUnused(_ offset: Int) -> Bool { self.unused[offset / 64] & (1 << UInt64(offset % 64)) != 0 }

        mutating func use(_ offset: Int) {
            self.unused[offset / 64] &= ~(1 << UInt64(offset % 64))
            self.unusedCount -= 1
        }
    }

    /// Loose free blocks, highest first, so pops hand out ascending (contiguous) blocks.
    private(set) var stack: [UInt32]
    /// For each aligned run overlapping the shard (`run - firstRun`), how many of its blocks are
    /// in `stack`: `Geometry.runBlocks` says the whole run is free (a run the shard holds only
    /// part of never gets there).
    private var stacked: [UInt16]
    private let firstRun: UInt32
    /// Runs whose every block is in `stack`.
    private(set) var wholeRuns = 0
    /// Runs claimed by files (a few: a file holds one at a time).
    private(set) var claims: [RunClaim] = []
    /// Unused blocks of the claims, together.
    private(set) var claimedUnused = 0

    private static let runBlocks = UInt32(Geometry.runBlocks)

    /// - Parameters:
    ///   - range: the shard's blocks.
    ///   - free: its free blocks, highest first.
    init(range: Range<UInt32>, free: [UInt32]) {
        self.stack = free
        self.firstRun = range.lowerBound / Self.runBlocks
        let runs = range.isEmpty ? 0 : Int((range.upperBound - 1) / Self.runBlocks - self.firstRun) + 1
        self.stacked = Array(repeating: 0, count: runs)
        for block in free { self.stacked[self.runIndex(block)] += 1 }
        self.wholeRuns = self.stacked.reduce(0) { $0 + ($1 == Geometry.runBlocks ? 1 : 0) }
    }

    /// Free blocks, in the stack or unused in a claim.
    var freeCount: Int { self.stack.count + self.claimedUnused }

    @inline(__always)
    private func runIndex(_ block: UInt32) -> Int { Int(block / Self.runBlocks - self.firstRun) }

    /// Takes the block on top of the stack.
    @inline(__always)
    mutating func pop() -> UInt32? {
        guard let block = self.stack.popLast() else { return nil }
        let index = self.runIndex(block)
        if self.stacked[index] == Geometry.runBlocks { self.wholeRuns -= 1 }
        self.stacked[index] -= 1
        return block
    }

    /// Puts `block` on top of the stack: the next pop takes it.
    @inline(__always)
    mutating func push(_ block: UInt32) {
        self.stack.append(block)
        let index = self.runIndex(block)
        self.stacked[index] += 1
        if self.stacked[index] == Geometry.runBlocks { self.wholeRuns += 1 }
    }

    /// Claims the highest whole run for inode `owner`: its blocks leave the stack (one pass over
    /// it). The highest, because pops take the lowest blocks first: loose allocations and claims
    /// start from opposite ends, so loose ones break up the runs last.
    /// - Returns: the run's first block, or nil when the shard has no whole run.
    mutating func claimWholeRun(owner: Int) -> UInt32? {
        guard self.wholeRuns > 0,
            let index = self.stacked.lastIndex(where: { $0 == Geometry.runBlocks })
        else { return nil }
        let first = (self.firstRun + UInt32(index)) * Self.runBlocks
        self.stack.removeAll { $0 / Self.runBlocks == first / Self.runBlocks }
        self.stacked[index] = 0
        self.wholeRuns -= 1
        self.claims.append(RunClaim(first: first, owner: owner))
        self.claimedUnused += Geometry.runBlocks
        return first
    }

    /// Takes blocks `start ..< start + count` of a run `owner` claimed, from `start` up to the
    /// first one already used (all in one run). A claim whose blocks are all used is dropped.
    /// - Returns: how many it took (0 when `owner` has no claim on the run).
    mutating func take(_ start: UInt32, count: Int, owner: Int) -> Int {
        let first = start / Self.runBlocks * Self.runBlocks
        guard let index = self.claims.firstIndex(where: { $0.first == first && $0.owner == owner }) else { return 0 }
        var taken = 0
        let offset = Int(start - first)
        while taken < count, offset + taken < Geometry.runBlocks, self.claims[index].isUnused(offset + taken) {
            self.claims[index].use(offset + taken)
            taken += 1
        }
        self.claimedUnused -= taken
        if self.claims[index].unusedCount == 0 { self.claims.remove(at: index) }
        return taken
    }

    /// Gives the unused blocks of the claims `owner` names (nil: all of them) back to the stack,
    /// at its bottom: they were never used, so the blocks files freed lately stay the first
    /// reused.
    /// - Returns: how many blocks went back.
    @discardableResult
    mutating func dissolve(owner: Int?) -> Int {
        guard !self.claims.isEmpty else { return 0 }
        var returned: [UInt32] = []
        self.claims.removeAll { claim in
            guard owner == nil || claim.owner == owner else { return false }
            for offset in (0..<Geometry.runBlocks).reversed() where claim.isUnused(offset) {
                returned.append(claim.first + UInt32(offset))
            }
            return true
        }
        guard !returned.isEmpty else { return 0 }
        self.stack.insert(contentsOf: returned, at: 0)
        for block in returned {
            let index = self.runIndex(block)
            self.stacked[index] += 1
            if self.stacked[index] == Geometry.runBlocks { self.wholeRuns += 1 }
        }
        self.claimedUnused -= returned.count
        return returned.count
    }

    /// Whether `block` is free: in the stack or unused in a claim (a linear search).
    func contains(_ block: UInt32) -> Bool {
        if self.stack.contains(block) { return true }
        let first = block / Self.runBlocks * Self.runBlocks
        return self.claims.contains { $0.first == first && $0.isUnused(Int(block - first)) }
    }
}
