import Atomics
import DaxFS
import DaxlabSupport

#if canImport(Glibc)
import Glibc
import Pmem
#endif

/// The truncaters (`daxlab-trunc-N`): they cut a shared file to a random size and grow it
/// back, or punch, zero, collapse or insert a random range, under the run's policy, and time
/// each cut (the file is grown or cut back to its size after each).
extension RaceHarness {
    func truncateLoop(_ index: Int) {
        var random = SplitMix64(seed: self.configuration.seed, stream: 0x7452_0000 + UInt64(index))
        let pages = self.configuration.filePages
        let progress = self.truncaterProgress[index]
        while !self.stop.load(ordering: .relaxed) {
            let file = self.sharedFiles[random.next(below: self.sharedFiles.count)]
            switch random.next(below: 8) {
            case 0, 1:
                self.cut(file) { () throws(FSError) in
                    try self.fs.punchHole(
                        file, offset: random.next(below: pages) * pageSize, length: (1 + random.next(below: 8)) * pageSize,
                        policy: self.configuration.policy)
                }
            case 2:
                // Zero-range frees the whole pages (through the policy) and gives them new zeroed
                // blocks at once: a freed block can come straight back to the same file.
                self.cut(file) { () throws(FSError) in
                    try self.fs.zeroRange(
                        file, offset: random.next(below: pages) * pageSize, length: (1 + random.next(below: 8)) * pageSize,
                        keepSize: true, policy: self.configuration.policy)
                }
            case 3:
                // Collapse and insert move the whole tail: every block after the offset changes
                // place, so the policy is asked about all of them.
                self.cut(file) { () throws(FSError) in
                    let first = random.next(below: pages - 1)
                    let length = 1 + random.next(below: min(8, pages - 1 - first))
                    try self.fs.collapseRange(file, offset: first * pageSize, length: length * pageSize, policy: self.configuration.policy)
                }
            case 4:
                self.cut(file) { () throws(FSError) in
                    try self.fs.insertRange(
                        file, offset: random.next(below: pages) * pageSize, length: (1 + random.next(below: 8)) * pageSize,
                        policy: self.configuration.policy)
                }
            default:
                self.cut(file) { () throws(FSError) in
                    try self.fs.truncate(file, size: random.next(below: pages) * pageSize, policy: self.configuration.policy)
                }
            }
            progress.wrappingIncrement(ordering: .relaxed)
            usleep(UInt32(200 + random.next(below: 600)))  // let data live a little between cuts
        }
    }

    /// One truncate or punch of a shared file, timed and counted, then the file grown back to
    /// its size (holes, for the devices to fault in).
    func cut(_ file: FileID, _ body: () throws(FSError) -> Void) {
        let start = MonotonicClock.now()
        do {
            try body()
            let took = MonotonicClock.now() - start
            _ = self.latencies.withLock { $0.record(took) }
        } catch where error.code == .busy {
            self.busy.wrappingIncrement(ordering: .relaxed)
        } catch {}
        self.truncates.wrappingIncrement(ordering: .relaxed)
        try? self.fs.truncate(file, size: self.configuration.filePages * pageSize)
    }
}
