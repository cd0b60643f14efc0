import DAX
import DMA
import DaxFS
import DaxlabSupport

#if canImport(Glibc)
import Glibc
import Pmem
#endif

extension Bench {
    /// The RDMA rows (reported, no target; where an RDMA device exists, as in the test-pmem
    /// guests): an RDMA WRITE into a block pinned through daxlab against the same into registered
    /// anonymous memory, and a 512-page pin that the RDMA device registers against registering
    /// 512 pages of anonymous memory.
    func rdmaRows() throws {
        let port: RDMAPort
        do { port = try RDMAPort(slots: 2) } catch {
            self.unavailable("rdma.*", because: error.message)
            return
        }
        let anonymous = try mapMemory(
            "map anonymous memory", length: 512 * pageSize, protection: PROT_READ | PROT_WRITE,
            flags: MAP_PRIVATE | MAP_ANONYMOUS)
        defer { munmap(anonymous, 512 * pageSize) }
        anonymous.initializeMemory(as: UInt8.self, repeating: 0, count: 512 * pageSize)
        try self.rdmaWriteRow(port, anonymous)
        try self.rdmaRegisterRow(port, anonymous)
    }

    /// rdma.write: a 4 KiB RDMA WRITE, posted and waited for, into a block pinned (and
    /// registered) through daxlab, inside its revocation fence; against the same into an
    /// anonymous page registered with the same port.
    private func rdmaWriteRow(_ port: RDMAPort, _ anonymous: UnsafeMutableRawPointer) throws {
        let (_, space) = try self.mappedFile("rdma-writes", pages: 1)
        guard let plain = port.take() else { throw FSError(.busy, "no free RDMA slot for the baseline") }
        defer { port.give(plain) }
        try port.register(slot: plain, address: anonymous, length: pageSize)
        defer { port.clear(plain) }
        let handle = try space.pin(0..<1, write: true, kernel: .longTerm(port))
        let slot = handle.kernelSlot!
        let writes = self.measure.interleave({ count in
            for _ in 0..<count { _ = handle.kernelWrite(at: 0) { port.write(into: $0, length: pageSize, slot: slot) } }
        }, { count in
            for _ in 0..<count { _ = port.write(into: anonymous, length: pageSize, slot: plain) }
        }, transform: { 1e9 / $0 })
        handle.unpin()
        self.add("rdma.write", unit: "writes/s", writes, baseline: "rdma.write_anon", better: "higher")
    }

    /// rdma.register: a 512-page pin that the RDMA device registers too (`ibv_reg_mr` of the
    /// pin's view) and its unpin (`ibv_dereg_mr`, then daxlab's pins), per page; against
    /// registering and deregistering 512 pages of anonymous memory.
    private func rdmaRegisterRow(_ port: RDMAPort, _ anonymous: UnsafeMutableRawPointer) throws {
        let (_, space) = try self.mappedFile("rdma-pins", pages: 512)
        guard let plain = port.take() else { throw FSError(.busy, "no free RDMA slot for the baseline") }
        defer { port.give(plain) }
        let registrations = self.measure.interleave({ count in
            for _ in 0..<max(1, count / 512) { try! space.pin(0..<512, write: true, kernel: .longTerm(port)).unpin() }
        }, { count in
            for _ in 0..<max(1, count / 512) {
                try! port.register(slot: plain, address: anonymous, length: 512 * pageSize)
                port.clear(plain)
            }
        })
        self.add("rdma.register", unit: "ns/page", registrations, baseline: "rdma.register_anon", better: "lower")
    }
}
