/// Aligned runs: a file growing through a 2 MiB range of its pages claims a whole free run
/// (`Geometry.runBlocks` blocks, the first a multiple of it) and takes, for each page of the
/// range, the block at the same offset in the run, so the range ends up backed by one 2 MiB-aligned
/// extent that a huge fault maps at once. A claim is volatile (the blocks stay free on the media
/// until a transaction maps them), one at a time per file, and gives way: the file's removal
/// dissolves it, and so does any allocation the stacks alone cannot satisfy. Where no whole run
/// is free, nothing is claimed and files allocate as they always did.
extension BlockAllocator {
    /// Whether some shard has a whole free run now (a hint: another thread may take it first).
    var hasWholeRun: Bool { self.wholeRuns.load(ordering: .relaxed) > 0 }

    /// Claims a whole free run for inode `owner`, preferring the shard `hint` picks, after
    /// dissolving the claims `owner` already holds.
    /// - Returns: the run's first block, or nil when no shard has a whole free run.
    func claimRun(owner: Int, hint: Int) -> UInt32? {
        self.dissolveClaims(owner: owner)
        guard self.hasWholeRun else { return nil }
        let start = hint % self.shards.count
        for probe in 0..<self.shards.count {
            if let first = self.withFreeList(self.shards[(start + probe) % self.shards.count], {
                $0.claimWholeRun(owner: owner)
            }) {
                return first
            }
        }
        return nil
    }

    /// Takes blocks `start ..< start + count` (within one run) from the claim inode `owner` holds
    /// on their run, up to the first one not unused there.
    /// - Returns: how many it took, from `start` on (0 when `owner` no longer has the claim).
    func takeClaimed(_ start: UInt32, count: Int, owner: Int) -> Int {
        guard let first = self.shards.first?.range.lowerBound, let last = self.shards.last?.range.upperBound,
            start >= first, start < last
        else { return 0 }
        return self.withFreeList(self.shard(of: start)) { $0.take(start, count: count, owner: owner) }
    }

    /// Gives the unused blocks of every claim of inode `owner` back to the stacks.
    func dissolveClaims(owner: Int) {
        for shard in self.shards {
            self.withFreeList(shard) { $0.dissolve(owner: owner) }
        }
    }

    /// The claims held now, as (first block, owner, unused blocks) (tests).
    var claims: [(first: UInt32, owner: Int, unused: Int)] {
        self.shards.flatMap { shard in
            shard.free.withLock { $0.claims.map { ($0.first, $0.owner, $0.unusedCount) } }
        }
    }
}
