import CBenchShims
import Foundation
import Testing
import TestSupport

/// Whether this kernel lets the process use io_uring (a seccomp filter, as in many containers,
/// refuses io_uring_setup with EPERM or ENOSYS).
let ioUringAvailable: Bool = {
    guard let ring = CBenchShims_uring_create(4) else { return false }
    CBenchShims_uring_destroy(ring)
    return true
}()

@Suite("daxlab bench, end to end", .timeLimit(.minutes(5)))
struct BenchCLITests {
    static let rows: [(String, String)] = [
        ("fault.hot", "array.load"), ("fault.hot", "kernel.tmpfs_read_fault"),
        ("fault.cold_write", "kernel.tmpfs_first_touch"), ("pin.batch512", "atomic.incdec"),
        ("pin.batch512", "kernel.io_uring_register"), ("pin.single", "kernel.process_vm_writev"),
        ("pin.batch512", "pin.batch512"), ("pin.batch512", "naive.mutex_dict"), ("truncate.wake", "condvar.wake"),
        ("dma.copy", "pmem.memcpy_persist"), ("alloc.block", "pmemobj.alloc"),
    ]

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
            }
            for (name, baseline) in Self.rows where ioUringAvailable || baseline != "kernel.io_uring_register" {
                let row = results.first { $0["name"] as? String == name && $0["baseline"] as? String == baseline }
                let found = try #require(row, "\(name) vs \(baseline) missing")
                for key in ["unit", "threads", "value", "baseline_threads", "baseline_value", "ratio", "better"] {
                    #expect(found[key] != nil, "\(name) vs \(baseline): no \(key)")
                }
                let value = try #require(found["value"] as? Double)
                let baselineValue = try #require(found["baseline_value"] as? Double)
                let ratio = try #require(found["ratio"] as? Double)
                #expect(value > 0 && baselineValue > 0, "\(name) vs \(baseline): measured nothing")
                #expect(abs(ratio - value / baselineValue) <= max(0.002, ratio * 0.01), "\(name) vs \(baseline): ratio")
                #expect(["lower", "higher"].contains(found["better"] as? String ?? ""))
            }
            let svg = try String(contentsOfFile: plot, encoding: .utf8)
            #expect(svg.hasPrefix("<svg"))
            #expect(svg.contains("polyline"))
        }
    }
}

@Suite("Kernel baselines")
struct KernelBaselineTests {
    @Test("io_uring buffer registration pins and unpins a buffer (the pin.batch512 baseline)",
          .enabled(if: ioUringAvailable, "io_uring_setup is refused here (a seccomp filter or an old kernel)"))
    func ioUringRegisters() throws {
        let ring = try #require(CBenchShims_uring_create(4))
        defer { CBenchShims_uring_destroy(ring) }
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: 16 * 4096, alignment: 4096)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 1, count: 16 * 4096)
        #expect(CBenchShims_uring_register_unregister(ring, buffer, 16 * 4096) == 0)
    }
}
