import CShims

/// A fence split between a hot side and a rare side, as liburcu's membarrier flavour and the
/// kernel's `sys_membarrier` users split it: where two threads each store, then load what the
/// other stores (a Dekker pair), and one of them runs on every pin or unpin while the other
/// runs once per truncate, the hot side puts only a compiler barrier between its store and its
/// load (`light`), and the rare side calls `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`
/// (`heavy`), which makes every running thread of the process execute a full memory barrier
/// before it returns (an IPI to each CPU running one; a thread not running passed one at its
/// context switch). So either the hot side's store was made visible by that barrier and the
/// rare side's load after it sees it, or the hot side's load came after the barrier and sees
/// the rare side's store, which preceded the call: never neither.
///
/// Costs measured on the 2-vCPU development VM (scripts/microbench/membarrier.c, output in
/// docs/amd/membarrier.txt): `heavy` 0.4 µs alone, 0.6 to 10 µs while another thread of the
/// process runs; `light` nothing, where a sequentially consistent store is one locked
/// instruction (2 to 7 ns by CPU).
///
/// Where membarrier is missing or refused (a kernel before 4.14, a seccomp filter), `available`
/// is false and users fall back to sequentially consistent accesses on both sides. Each user decides
/// once, when it is made (the DAX layer's `asymmetricFence`, chosen at attach), and keeps to it.
enum AsymmetricFence {
    /// Whether this process registered for the private expedited command (once, on first use).
    static let available: Bool = CShims_membarrier_register() == 0

    /// The hot side: orders nothing at run time, only stops the compiler moving accesses across.
    @inline(__always)
    static func light() { CShims_compiler_barrier() }

    /// The rare side. Only where `available`.
    static func heavy() {
        let result = CShims_membarrier()
        // Registered, so it cannot fail (membarrier(2): EPERM only before registering).
        precondition(result == 0, "membarrier failed after registering: \(result)")
    }
}
