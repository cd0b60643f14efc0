import CBenchShims
import CRing
import Foundation
import Testing
import TestSupport

/// Whether this kernel lets the process use io_uring (a seccomp filter, as in many containers,
/// refuses io_uring_setup with EPERM or ENOSYS).
let ioUringAvailable: Bool = {
    guard let ring = CRing_create(4, 0) else { return false }
    CRing_destroy(ring)
    return true
}()

@Suite("daxlab bench, end to end", .timeLimit(.minutes(5)))
struct BenchCLITests {
    static let rows: [(String, String)] = [
        ("fault.hot", "array.load"), ("fault.hot", "kernel.tmpfs_read_fault"),
        ("fault.cold_write", "kernel.tmpfs_first_touch"), ("pin.batch512", "atomic.incdec"),
        ("pin.batch512", "kernel.io_uring_register"), ("pin.single", "kernel.process_vm_writev"),
        ("pin.batch512", "pin.batch512"), ("pin.batch512", "naive.mutex_dict"), ("fault.hot", "fault.hot"), ("truncate.wake", "condvar.wake"),
        ("dma.copy", "pmem.memcpy_persist"), ("alloc.block", "pmemobj.alloc"),
        ("fault.mapped_hot", "array.load"), ("fault.mapped_cold_write", "kernel.tmpfs_first_touch"),
        ("fault.mapped_cold_write", "floor.sigsegv_mmap"), ("pin.kernel_longterm", "kernel.io_uring_register"),
        ("dma.kernel_read_fixed", "kernel.read_fixed_anon"),
    ]

    /// Whether a row needs io_uring (left out, with the reason, where it is refused).
    static func needsIOUring(_ name: String, _ baseline: String) -> Bool {
        baseline == "kernel.io_uring_register" || ["pin.kernel_longterm", "dma.kernel_read_fixed"].contains(name)
    }

    @Test("bench --seconds 1 --json F: every row with its baseline, ratio = value / baseline_value, and a plot")
    func everyRow() throws {
        try withTemporaryPath("bench") { path in
            let json = path + ".json"
            let plot = path + ".svg"
            defer {
                try? FileManager.default.removeItem(atPath: json)
                try? FileManager.default.removeItem(atPath: plot)
            }
            let result = try DaxlabBinary.run(
                ["bench", path, "--seconds", "1", "--pages", "4096", "--threads", "1,2", "--json", json, "--plot", plot],
                timeout: 280)
            #expect(result.status == 0, "\(result.standardError)")
            let object = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: json)))
            let report = try #require(object as? [String: Any])
            let machine = try #require(report["machine"] as? [String: Any])
            #expect((machine["cpus"] as? Int ?? 0) >= 1)
            #expect((machine["cpus_available"] as? Double ?? 0) > 0)
            let results = try #require(report["results"] as? [[String: Any]])
            let unavailable = try #require(report["unavailable"] as? [[String: Any]])
            if !ioUringAvailable {
                // The row is left out, and the report says why.
                #expect(unavailable.contains { $0["baseline"] as? String == "kernel.io_uring_register" })
                #expect(unavailable.contains { $0["baseline"] as? String == "kernel.read_fixed_anon" })
            }
            for (name, baseline) in Self.rows where ioUringAvailable || !Self.needsIOUring(name, baseline) {
                let row = results.first { $0["name"] as? String == name && $0["baseline"] as? String == baseline }
                let found = try #require(row, "\(name) vs \(baseline) missing")
                for key in ["unit", "threads", "value", "baseline_threads", "baseline_value", "ratio", "better", "pairs", "wide"] {
                    #expect(found[key] != nil, "\(name) vs \(baseline): no \(key)")
                }
                let value = try #require(found["value"] as? Double)
                let baselineValue = try #require(found["baseline_value"] as? Double)
                let ratio = try #require(found["ratio"] as? Double)
                #expect(value > 0 && baselineValue > 0, "\(name) vs \(baseline): measured nothing")
                // The ratio is the median of interleaved pairs' ratios, inside their spread.
                let spread = try ["ratio_min", "ratio_q1", "ratio_q3", "ratio_max"].map { key in
                    try #require(found[key] as? Double, "\(name) vs \(baseline): no \(key)")
                }
                #expect(spread[0] <= spread[1] && spread[1] <= ratio && ratio <= spread[2] && spread[2] <= spread[3],
                        "\(name) vs \(baseline): ratio \(ratio) outside its spread \(spread)")
                #expect(ratio > 0, "\(name) vs \(baseline): ratio")
                #expect((found["pairs"] as? Int ?? 0) >= 5, "\(name) vs \(baseline): pairs")
                #expect(["lower", "higher"].contains(found["better"] as? String ?? ""))
            }
            let svg = try String(contentsOfFile: plot, encoding: .utf8)
            #expect(svg.hasPrefix("<svg"))
            // Both scaling curves (ours at 1 and 2 threads, the naive table at 2) and the latency curves.
            for title in ["pin.batch512 throughput", "fault.hot throughput", "truncate latency"] {
                #expect(svg.contains(title), "plot: no \(title) panel")
            }
            #expect(svg.components(separatedBy: "<polyline").count - 1 >= 4, "plot: too few curves")
            // The committed run's table, rendered again from its JSON: one Markdown row per result.
            let table = try DaxlabBinary.run(["bench", "--from", json, "--markdown"], timeout: 60)
            #expect(table.status == 0, "\(table.standardError)")
            #expect(table.standardOutput.hasPrefix("Machine: "))
            #expect(table.standardOutput.components(separatedBy: "\n| ").count - 2 == results.count, "\(table.standardOutput)")
        }
    }
}

@Suite("Kernel baselines")
struct KernelBaselineTests {
    @Test("io_uring buffer registration pins and unpins a buffer (the pin.batch512 baseline)",
          .enabled(if: ioUringAvailable, "io_uring_setup is refused here (a seccomp filter or an old kernel)"))
    func ioUringRegisters() throws {
        let ring = try #require(CRing_create(4, 0))
        defer { CRing_destroy(ring) }
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: 16 * 4096, alignment: 4096)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 1, count: 16 * 4096)
        #expect(CBenchShims_uring_register_unregister(ring, buffer, 16 * 4096) == 0)
    }

    @Test("the fault-and-map floor: a C SIGSEGV handler maps each page of a tmpfs file, and the stores land in it")
    func sigsegvMmapFloor() throws {
        let path = "/dev/shm/daxlab-floor-\(getpid())"
        let fd = open(path, O_RDWR | O_CREAT | O_EXCL, 0o600)
        try #require(fd >= 0)
        unlink(path)
        defer { close(fd) }
        try #require(ftruncate(fd, 16 * 4096) == 0)
        #expect(CBenchShims_sigsegv_mmap_touch(fd, 16) > 0)
        var byte: UInt8 = 0
        #expect(pread(fd, &byte, 1, 5 * 4096) == 1 && byte == 1, "the store went through the mapping into the file")
    }
}
