import Foundation
import Testing
import TestSupport

/// The host side of `make test-pmem` (scripts/pmem-guest/verdict.sh), fed consoles written here:
/// it must pass only a complete, clean set, and name what is wrong otherwise. The guests
/// themselves run in `make test-pmem` (QEMU), not in `swift test`.
@Suite("test-pmem's verdict on guest consoles", .timeLimit(.minutes(1)))
struct PmemGuestVerdictTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path
    static let script = root + "/scripts/pmem-guest/verdict.sh"
    static let stages = ["nvdimm", "reboot", "memmap"]

    private func expected(_ stage: String, kernel: String? = nil) throws -> [String] {
        let result = try runProcess([Self.script, "--expected", stage] + (kernel.map { [$0] } ?? []))
        #expect(result.status == 0, "\(result.standardError)")
        return result.standardOutput.split(separator: "\n").map(String.init)
    }

    /// A console on which every expected check passed and the guest reached its end marker.
    private func cleanConsole(_ stage: String) throws -> [String] {
        ["daxlab-guest[\(stage)]: kernel 6.1.0-test"]
            + (try self.expected(stage)).map { "DAXLAB-CHECK \(stage) \($0) PASS" }
            + ["DAXLAB-GUEST-END stage=\(stage) failures=0", "[   9.0] reboot: Power down"]
    }

    /// Writes the consoles (a stage mapped to nil has no log) and runs the verdict on them.
    private func verdict(_ consoles: [String: [String]?]) throws -> ProcessResult {
        try withTemporaryPath("verdict") { directory in
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            for (stage, lines) in consoles {
                guard let lines else { continue }
                try (lines.joined(separator: "\n") + "\n").write(
                    toFile: "\(directory)/\(stage).log", atomically: true, encoding: .utf8)
            }
            return try runProcess([Self.script, directory])
        }
    }

    private func clean() throws -> [String: [String]?] {
        var consoles: [String: [String]?] = [:]
        for stage in Self.stages { consoles[stage] = try self.cleanConsole(stage) }
        return consoles
    }

    @Test("the plan covers every policy on devdax and fs-dax, MAP_SYNC, windows (mmap-check), the reboot")
    func planCoversTheIssue() throws {
        let nvdimm = Set(try self.expected("nvdimm"))
        let memmap = Set(try self.expected("memmap"))
        for policy in ["none", "fail", "wait", "sequester", "deferred", "lease-break", "mainline", "odp"] {
            for target in ["devdax", "fsdax"] {
                #expect(nvdimm.contains("race-\(target)-\(policy)"))
                #expect(memmap.contains("race-\(target)-\(policy)"))
            }
        }
        for name in ["devices-fsdax", "devices-devdax", "mount-option-dax", "info-fsdax-is-pmem",
                     "info-fsdax-map-sync", "info-devdax-is-pmem", "fsdax-read-back", "devdax-read-back",
                     "mmap-check-fsdax", "mmap-check-devdax"] {
            #expect(nvdimm.contains(name) && memmap.contains(name), "\(name)")
        }
        // A device-dax device aligned to 2 MiB: the memmap guest's device, reconfigured at its end.
        #expect(memmap.contains("mmap-check-devdax-2m") && memmap.contains("reconfigure-devdax-2m"))
        // The kernel's own pins: short-term races on both targets; long-term pins refused on fs-dax,
        // and on device-dax before 6.5 (io_uring's own rule), raced on device-dax from 6.5.
        for stage in ["nvdimm", "memmap"] {
            let debian = Set(try self.expected(stage))
            let newer = Set(try self.expected(stage, kernel: "6.12.9"))
            for policy in ["none", "fail", "wait", "sequester", "deferred", "lease-break", "mainline"] {
                for target in ["devdax-direct", "fsdax-direct"] {
                    #expect(debian.contains("race-\(target)-\(policy)") && newer.contains("race-\(target)-\(policy)"))
                }
                #expect(!debian.contains("race-devdax-longterm-\(policy)"))
                // mainline refuses long-term pins: no long-term race under it, on any kernel.
                #expect(newer.contains("race-devdax-longterm-\(policy)") == (policy != "mainline"))
            }
            #expect(debian.isSuperset(of: ["fsdax-mainline-refused", "devdax-mainline-refused"]))
            #expect(debian.isSuperset(of: ["fsdax-longterm-refused", "devdax-longterm-refused", "disk-mount"]))
            #expect(newer.contains("fsdax-longterm-refused") && !newer.contains("devdax-longterm-refused"))
        }
        let reboot = Set(try self.expected("reboot"))
        #expect(reboot.isSuperset(of: ["fsdax-survived-fsck", "fsdax-survived-read-back",
                                       "devdax-survived-fsck", "devdax-survived-read-back"]))
        #expect(try runProcess([Self.script, "--expected", "nonsense"]).status != 0)
    }

    @Test("complete, clean consoles pass and count every check")
    func cleanConsolesPass() throws {
        let result = try self.verdict(try self.clean())
        #expect(result.status == 0, "\(result.standardOutput)\(result.standardError)")
        let total = try Self.stages.map { try self.expected($0).count }.reduce(0, +)
        #expect(result.standardOutput.contains("PASS: \(total) checks"))
    }

    @Test("a missing check, a FAIL, a timeout, a dirty or missing end marker, or a missing console each fail")
    func everyDefectFails() throws {
        typealias Damage = (String, (inout [String: [String]?]) -> Void, String)
        let damages: [Damage] = [
            ("missing check", { $0["nvdimm"] = $0["nvdimm"]!!.filter { !$0.contains(" race-devdax-wait ") } },
             "nvdimm: race-devdax-wait did not pass"),
            ("extra FAIL", { $0["memmap"]!!.insert("DAXLAB-CHECK memmap something FAIL (exit 1)", at: 1) },
             "failed: memmap something FAIL"),
            ("timeout", { $0["reboot"]!!.append("DAXLAB-HOST reboot TIMEOUT") }, "reboot: timed out"),
            ("no end marker", { $0["reboot"] = $0["reboot"]!!.filter { !$0.hasPrefix("DAXLAB-GUEST-END") } },
             "reboot: no clean end marker"),
            ("end marker with failures",
             { $0["memmap"] = $0["memmap"]!!.map { $0.hasPrefix("DAXLAB-GUEST-END") ? $0.replacingOccurrences(
                 of: "failures=0", with: "failures=10") : $0 } }, "memmap: no clean end marker"),
            ("PASS for another stage", {
                $0["reboot"] = $0["reboot"]!!.map { $0.replacingOccurrences(of: "CHECK reboot ", with: "CHECK nvdimm ") }
             }, "reboot: namespaces-back did not pass"),
            ("no console", { $0["memmap"] = .some(nil) }, "memmap: no console log"),
            // A 6.5+ guest must race long-term pins on device-dax: its refusal alone does not pass.
            ("newer kernel, long-term pins only refused",
             { $0["nvdimm"] = $0["nvdimm"]!!.map { $0.replacingOccurrences(of: "kernel 6.1.0-test", with: "kernel 6.12.9-test") } },
             "nvdimm: race-devdax-longterm-none did not pass"),
        ]
        for (label, damage, message) in damages {
            var consoles = try self.clean()
            damage(&consoles)
            let result = try self.verdict(consoles)
            #expect(result.status == 1, "\(label): exit \(result.status)")
            #expect(result.standardOutput.contains(message), "\(label): \(result.standardOutput)")
            #expect(result.standardError.contains("test-pmem: FAIL"), "\(label)")
        }
    }
}
