import CShims
import Foundation
import Testing

/// The per-CPU hint (batch pool, lease slots, allocator shards) is read inline from the thread's
/// rseq area; it must name the CPU the thread runs on, as sched_getcpu does.
@Suite("The current-CPU hint", .serialized, .timeLimit(.minutes(1)))
struct CurrentCPUTests {
    @Test("bound to each CPU in turn, the inline hint and sched_getcpu both name that CPU")
    func matchesTheBoundCPU() throws {
        defer { _ = CShims_unbind_cpu() }
        let cpus = Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        var checked = 0
        for cpu in 0..<cpus {
            guard CShims_bind_to_cpu(Int32(cpu)) == 0 else { continue }  // (a CPU outside this cgroup's set)
            sched_yield()  // (the binding moves the thread at the latest here)
            #expect(CShims_current_cpu() == Int32(cpu), "inline hint on CPU \(cpu)")
            #expect(CShims_current_cpu_slow() == Int32(cpu), "sched_getcpu on CPU \(cpu)")
            checked += 1
        }
        #expect(checked > 0, "the thread could be bound to no CPU")
    }
}
