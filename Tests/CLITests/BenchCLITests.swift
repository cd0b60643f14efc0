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

/// Whether this process may use userfaultfd (refused without CAP_SYS_PTRACE where
/// vm.unprivileged_userfaultfd is 0 and /dev/userfaultfd is closed to it, or by a seccomp filter).
let userfaultfdAvailable: Bool = {
    let path = "/dev/shm/daxlab-uffd-probe-\(getpid())"
    let fd = open(path, O_RDWR | O_CREAT | O_EXCL, 0o600)
    guard fd >= 0 else { return false }
    unlink(path)
    defer { close(fd) }
    return ftruncate(fd, 4096) == 0 && CBenchShims_uffd_mmap_touch(fd, 1) >= 0
}()

@Suite("daxlab bench, end to end", .timeLimit(.minutes(5)))
struct BenchCLITests {
    static let rows: [(String, String)] = [
        ("fault.hot", "array.load"), ("fault.hot", "kernel.tmpfs_read_fault"),
        ("fault.cold_write", "kernel.tmpfs_first_touch"), ("pin.batch512", "atomic.incdec"),
        ("pin.batch512", "kernel.io_uring_register"), ("pin.single", "kernel.process_vm_writev"),
        ("pin.batch512", "pin.batch512"), ("pin.batch512", "naive.mutex_dict"), ("fault.hot", "fault.hot"), ("truncate.wake", "condvar.wake"),
        ("dma.copy", "pmem.memcpy_persist"), ("alloc.block", "pmemobj.alloc"), ("floor.persist_alloc_free", "pmemobj.alloc"),
        ("fault.mapped_hot", "array.load"), ("fault.mapped_cold_write", "kernel.tmpfs_first_touch"),
        ("fault.mapped_cold_write", "floor.sigsegv_mmap"), ("fault.mapped_cold_write", "floor.uffd_mmap"),
        ("fault.mapped_cold_write_2m", "kernel.tmpfs_first_touch"),
        ("pin.kernel_longterm", "kernel.io_uring_register"),
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
            if let cpuinfo = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8), cpuinfo.contains("model name") {
                let model = machine["cpu_model"] as? String ?? ""
                #expect(!model.isEmpty && cpuinfo.contains(model), "cpu_model \(model) is not this machine's")
            }
            let governor = (try? String(contentsOfFile: "/sys/devices/system/cpu/cpuidle/current_governor", encoding: .utf8)) ?? ""
            if governor.trimmingCharacters(in: .whitespacesAndNewlines) == "haltpoll",
                let poll = try? String(contentsOfFile: "/sys/module/haltpoll/parameters/guest_halt_poll_ns", encoding: .utf8)
            {
                #expect(machine["guest_halt_poll_ns"] as? Int == Int(poll.trimmingCharacters(in: .whitespacesAndNewlines)), "\(machine)")
            } else {
                #expect(machine["guest_halt_poll_ns"] == nil, "\(machine): no haltpoll governor here")
            }
            let results = try #require(report["results"] as? [[String: Any]])
            let unavailable = try #require(report["unavailable"] as? [[String: Any]])
            if !ioUringAvailable {
                // The row is left out, and the report says why.
                #expect(unavailable.contains { $0["baseline"] as? String == "kernel.io_uring_register" })
                #expect(unavailable.contains { $0["baseline"] as? String == "kernel.read_fixed_anon" })
            }
            if !userfaultfdAvailable {
                #expect(unavailable.contains { $0["baseline"] as? String == "floor.uffd_mmap" })
            }
            if let refusal = KernelFacilities.rdmaRefusal {
                // No RDMA device: the RDMA rows are left out, with the reason.
                #expect(unavailable.contains { $0["baseline"] as? String == "rdma.*" && $0["reason"] as? String == refusal },
                        "\(unavailable)")
            } else {
                for (name, baseline) in [("rdma.write", "rdma.write_anon"), ("rdma.register", "rdma.register_anon")] {
                    #expect(results.contains { $0["name"] as? String == name && $0["baseline"] as? String == baseline })
                }
            }
            for (name, baseline) in Self.rows
            where (ioUringAvailable || !Self.needsIOUring(name, baseline))
                && (userfaultfdAvailable || baseline != "floor.uffd_mmap")
            {
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
            // alloc.block carries its floor's ratio to the same baseline, from the floor's own row.
            let allocation = try #require(results.first { $0["name"] as? String == "alloc.block" && $0["baseline"] as? String == "pmemobj.alloc" })
            let floorRow = try #require(results.first { $0["name"] as? String == "floor.persist_alloc_free" })
            #expect(allocation["floor_ratio"] as? Double == floorRow["ratio"] as? Double)
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

    @Test("bench refuses a file it did not create (an image of its own size, PATH.race for --plot) unless --force, and never removes one")
    func keepsExistingFiles() throws {
        // With --pages 512 and one thread the image is 198 MiB.
        let quick = ["--only", "wake", "--pages", "512", "--threads", "1", "--seconds", "0.1"]
        try withTemporaryPath("bench-existing") { path in
            #expect(try DaxlabBinary.run(["mkfs", path, "--size", "198M"]).status == 0)
            let input = path + ".in"
            defer { unlink(input) }
            try Data("precious\n".utf8).write(to: URL(fileURLWithPath: input))
            #expect(try DaxlabBinary.run(["write", path, "precious", "--input", input]).status == 0)
            let refused = try DaxlabBinary.run(["bench", path] + quick, timeout: 120)
            #expect(refused.status == 2, "\(refused.standardOutput)\(refused.standardError)")
            #expect(refused.standardError.split(separator: "\n").count == 1, "\(refused.standardError)")
            #expect(refused.standardError.contains("exists") && refused.standardError.contains("--force"), "\(refused.standardError)")
            #expect(try DaxlabBinary.run(["read", path, "precious"]).standardOutput == "precious\n", "the image was touched")

            let forced = try DaxlabBinary.run(["bench", path, "--force"] + quick, timeout: 120)
            #expect(forced.status == 0, "\(forced.standardOutput)\(forced.standardError)")
            #expect(FileManager.default.fileExists(atPath: path), "--force removed a file bench did not create")
            unlink(path)

            // --plot also formats PATH.race: checked before anything is measured.
            let race = path + ".race"
            let plot = path + ".svg"
            defer {
                unlink(race)
                unlink(plot)
            }
            let data = Data(randomBytes(count: 32 << 20, seed: 3))
            try data.write(to: URL(fileURLWithPath: race))
            let plotted = try DaxlabBinary.run(["bench", path, "--plot", plot] + quick, timeout: 120)
            #expect(plotted.status == 2, "\(plotted.standardOutput)\(plotted.standardError)")
            #expect(plotted.standardError.contains(race), "\(plotted.standardError)")
            #expect(FileManager.default.contents(atPath: race) == data, "PATH.race was touched")
            #expect(!FileManager.default.fileExists(atPath: path), "bench began before refusing")
        }
    }
}

@Suite("daxlab bench --from: a committed run's table")
struct BenchTableTests {
    /// A report with one row of each verdict: met, missed, missed with the floor missing too, and
    /// one from before floor ratios were recorded.
    static let report = """
        {"machine": {"cpus": 2, "cpus_available": 1.97, "medium": "tmpfs", "is_pmem": false, "kernel": "6.1"},
         "unavailable": [],
         "results": [
          {"name": "pin.single", "unit": "ns/op", "threads": 1, "value": 50, "baseline": "kernel.process_vm_writev",
           "baseline_threads": 1, "baseline_value": 1000, "ratio": 0.05, "ratio_q1": 0.049, "ratio_q3": 0.051,
           "ratio_min": 0.04, "ratio_max": 0.06, "pairs": 11, "wide": false, "better": "lower", "target": "<= 1/15", "met": true},
          {"name": "alloc.block", "unit": "ns/op", "threads": 1, "value": 560, "baseline": "pmemobj.alloc",
           "baseline_threads": 1, "baseline_value": 950, "ratio": 0.589, "ratio_q1": 0.58, "ratio_q3": 0.6,
           "ratio_min": 0.57, "ratio_max": 0.61, "pairs": 11, "wide": false, "better": "lower", "target": "<= 1/2", "met": false,
           "floor_ratio": 0.514},
          {"name": "fault.hot", "unit": "ns/op", "threads": 1, "value": 5, "baseline": "array.load",
           "baseline_threads": 1, "baseline_value": 2, "ratio": 2.5, "ratio_q1": 2.4, "ratio_q3": 2.6,
           "ratio_min": 2.3, "ratio_max": 2.7, "pairs": 11, "wide": false, "better": "lower", "target": "<= 2", "met": false,
           "floor_ratio": 1.2},
          {"name": "pin.batch512", "unit": "pages/s", "threads": 2, "value": 70e6, "baseline": "pin.batch512",
           "baseline_threads": 1, "baseline_value": 66e6, "ratio": 1.06, "ratio_q1": 1.0, "ratio_q3": 1.1,
           "ratio_min": 0.9, "ratio_max": 1.2, "pairs": 7, "wide": false, "better": "higher", "thread_cpus": 1.21}
         ]}
        """

    @Test("a target the floor misses too reads 'NO, floor' and is explained; one the floor meets reads 'NO'; a threaded row short of CPUs is explained; rows without floor ratios still read")
    func floorVerdict() throws {
        try withTemporaryPath("bench-from") { path in
            try Self.report.write(toFile: path, atomically: true, encoding: .utf8)
            let table = try DaxlabBinary.run(["bench", "--from", path], timeout: 60)
            #expect(table.status == 0, "\(table.standardError)")
            let lines = table.standardOutput.split(separator: "\n").map(String.init)
            let row = { (name: String) in lines.first { $0.hasPrefix(name + " ") } ?? "" }
            #expect(row("pin.single").hasSuffix("yes"), "\(row("pin.single"))")
            #expect(row("alloc.block").hasSuffix("NO, floor"), "\(row("alloc.block"))")
            #expect(row("fault.hot").hasSuffix("NO"), "\(row("fault.hot"))")
            #expect(lines.contains { $0.hasPrefix("NO, floor:") && $0.contains("alloc.block (its floor's ratio: 0.514)") && !$0.contains("fault.hot") },
                    "\(table.standardOutput)")
            // A 2-thread row whose threads got 1.21 CPUs: no target, and the table says why.
            #expect(lines.contains { $0.hasPrefix("pin.batch512 at 2 threads vs pin.batch512: its samples ran on 1.21 CPUs, not 2") },
                    "\(table.standardOutput)")
            let markdown = try DaxlabBinary.run(["bench", "--from", path, "--markdown"], timeout: 60)
            #expect(markdown.status == 0)
            #expect(markdown.standardOutput.contains("| ≤ 1/2 | NO, floor |"), "\(markdown.standardOutput)")
            #expect(markdown.standardOutput.contains("NO, floor: the physical floor itself misses the target"))
        }
    }

    @Test("a run on a guest whose idle CPUs halt at once says so on its machine line, and explains a missed window fault row by it; one that polls says how long")
    func haltPolling() throws {
        let row = """
              {"name": "fault.mapped_cold_write", "unit": "ns/page", "threads": 1, "value": 26000, "baseline": "floor.uffd_mmap",
               "baseline_threads": 1, "baseline_value": 11000, "ratio": 2.36, "ratio_q1": 2.3, "ratio_q3": 2.4,
               "ratio_min": 2.2, "ratio_max": 2.5, "pairs": 11, "wide": false, "better": "lower", "target": "<= 1.25", "met": false},
            """
        try withTemporaryPath("bench-haltpoll") { path in
            for (poll, halts) in [(0, true), (200000, false)] {
                let text = Self.report
                    .replacingOccurrences(of: #""cpus_available": 1.97"#, with: #""cpus_available": 1.97, "guest_halt_poll_ns": "# + "\(poll)")
                    .replacingOccurrences(of: #""results": ["#, with: #""results": ["# + row)
                try text.write(toFile: path, atomically: true, encoding: .utf8)
                let table = try DaxlabBinary.run(["bench", "--from", path], timeout: 60)
                #expect(table.status == 0, "\(table.standardError)")
                let machine = table.standardOutput.split(separator: "\n").first { $0.hasPrefix("machine:") } ?? ""
                #expect(machine.hasSuffix(halts ? "idle CPUs halt at once (guest_halt_poll_ns 0)" : "idle CPUs poll 200000 ns before they halt"),
                        "\(machine)")
                #expect(table.standardOutput.contains("fault.mapped_cold_write: this machine's idle CPUs halt at once") == halts,
                        "\(table.standardOutput)")
            }
        }
    }

    @Test("a report read back with a field out of range is refused with one line, before the table or plot: never a trap or a hang")
    func outOfRange() throws {
        let latencies = #", "truncate_latencies_us": {"wait": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]}}"#
        let variants: [(String, String, String)] = [
            (#""threads": 2,"#, #""threads": 9223372036854775807,"#, "threads 9223372036854775807"),
            (#""threads": 2,"#, #""threads": 0,"#, "threads 0"),
            (#""baseline_threads": 1, "baseline_value": 66e6"#, #""baseline_threads": -3, "baseline_value": 66e6"#, "baseline_threads -3"),
            (#""value": 50,"#, #""value": -50,"#, "value -50"),
            (#""value": 70e6,"#, #""value": 1.7e308,"#, "value 1.7e+308 is over"),
            (#""ratio": 0.05,"#, #""ratio": 1e999,"#, "not valid JSON"),
            (#""thread_cpus": 1.21"#, #""thread_cpus": -1.21"#, "thread_cpus"),
            (#""pairs": 11,"#, #""pairs": -11,"#, "pairs"),
            (#""better": "lower""#, #""better": "sideways""#, "better"),
            (#""target": "<= 1/15""#, #""target": "<= lots""#, "target"),
            (#""cpus": 2,"#, #""cpus": 0,"#, "machine.cpus"),
            (#""cpus_available": 1.97"#, #""cpus_available": -1"#, "cpus_available"),
            (#""cpus_available": 1.97"#, #""cpus_available": 1.97, "guest_halt_poll_ns": -5"#, "guest_halt_poll_ns -5"),
            (#""cpus_available": 1.97"#, #""cpus_available": 1.97, "guest_halt_poll_ns": 200000"#, ""),
            ("]}", "]" + latencies, ""),
            ("]}", "]" + latencies.replacingOccurrences(of: "\"wait\"", with: "\"<svg>\""), "policy"),
            ("]}", "]" + latencies.replacingOccurrences(of: "[1, 2", with: "[-1, 2"), "negative"),
        ]
        try withTemporaryPath("bench-range") { path in
            let plot = path + ".svg"
            defer { unlink(plot) }
            for (old, new, reason) in variants {
                let text = Self.report.replacingOccurrences(of: old, with: new)
                #expect(text != Self.report, "\(new): nothing replaced")
                try text.write(toFile: path, atomically: true, encoding: .utf8)
                unlink(plot)
                let result = try DaxlabBinary.run(["bench", "--from", path, "--plot", plot], timeout: 60)
                if reason.isEmpty {
                    #expect(result.status == 0, "\(new): \(result.standardError)")  // (in range: the control)
                    continue
                }
                #expect(result.status == 2, "\(new): status \(result.status): \(result.standardError)")
                #expect(result.standardError.split(separator: "\n").count == 1, "\(new): \(result.standardError)")
                #expect(result.standardError.contains("not a report of daxlab bench"), "\(new): \(result.standardError)")
                #expect(result.standardError.contains(reason), "\(new): \(result.standardError)")
                #expect(result.standardOutput.isEmpty, "\(new): printed a table")
                #expect(!FileManager.default.fileExists(atPath: plot), "\(new): wrote a plot")
            }
        }
    }

    @Test("--from a directory, a device, a FIFO or a huge file: one line that says why, exit 2")
    func unreadableFrom() throws {
        try withTemporaryPath("bench-from-bad") { path in
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)
            let fifo = path + "/fifo"
            #expect(mkfifo(fifo, 0o600) == 0)
            let huge = path + "/huge.json"
            #expect(FileManager.default.createFile(atPath: huge, contents: nil))
            #expect(truncate(huge, 1 << 30) == 0)
            for (file, reason) in [
                (path, "is a directory"), ("/dev/zero", "not a regular file"), (fifo, "not a regular file"),
                (huge, "too large"), (path + "/missing.json", "No such file"),
            ] {
                let result = try DaxlabBinary.run(["bench", "--from", file], timeout: 20)
                #expect(result.status == 2, "\(file): status \(result.status): \(result.standardError)")
                #expect(result.standardError.split(separator: "\n").count == 1, "\(file): \(result.standardError)")
                #expect(result.standardError.contains(reason), "\(file): \(result.standardError)")
                #expect(!result.standardError.contains("Success"), "\(file): \(result.standardError)")
            }
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

    /// A 16-page tmpfs file, already unlinked, for the floors to map.
    private func floorFile() throws -> Int32 {
        let path = "/dev/shm/daxlab-floor-\(getpid())-\(UUID().uuidString.prefix(8))"
        let fd = open(path, O_RDWR | O_CREAT | O_EXCL, 0o600)
        try #require(fd >= 0)
        unlink(path)
        guard ftruncate(fd, 16 * 4096) == 0 else {
            close(fd)
            throw CocoaError(.fileWriteUnknown)
        }
        return fd
    }

    @Test("the fault-and-map floor: a C SIGSEGV handler maps each page of a tmpfs file, and the stores land in it")
    func sigsegvMmapFloor() throws {
        let fd = try self.floorFile()
        defer { close(fd) }
        #expect(CBenchShims_sigsegv_mmap_touch(fd, 16) > 0)
        var byte: UInt8 = 0
        #expect(pread(fd, &byte, 1, 5 * 4096) == 1 && byte == 1, "the store went through the mapping into the file")
    }

    @Test("the userfaultfd floor: a handler thread maps each page of a tmpfs file, and every store lands in it",
          .enabled(if: userfaultfdAvailable, "userfaultfd is refused here"))
    func userfaultfdMmapFloor() throws {
        let fd = try self.floorFile()
        defer { close(fd) }
        #expect(CBenchShims_uffd_mmap_touch(fd, 16) > 0)
        var bytes = [UInt8](repeating: 0, count: 16 * 4096)
        #expect(pread(fd, &bytes, bytes.count, 0) == bytes.count)
        #expect((0..<16).allSatisfy { bytes[$0 * 4096] == 1 }, "a store did not go through the mapping into the file")
    }
}
