import CShims

/// The CPU the calling thread runs on (sched_getcpu; 0 where it fails): the hint that spreads
/// per-CPU structures (allocator shards, lease slots, batch pools) so threads on different CPUs
/// rarely share a cache line. A hint only: the thread may move right after.
package enum CurrentCPU {
    @inlinable
    package static var index: Int { Int(max(0, CShims_sched_getcpu())) }
}
