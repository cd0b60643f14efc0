import Foundation
import Testing
import TestSupport

/// `daxlab mmap-check` through the built binary, on tmpfs. The guests of `make test-pmem` run it
/// on fs-dax and device-dax.
@Suite("daxlab mmap-check, end to end", .serialized, .timeLimit(.minutes(2)))
struct MmapCheckCLITests {
    static let checks = ["kernel-read", "kernel-direct", "huge-fault", "punch-split", "past-eof", "hole-then-write"]
    /// The checks that need the kernel to fault windows (userfaultfd): skipped under the fallback.
    static let kernelChecks: Set<String> = ["kernel-read", "kernel-direct", "past-eof"]

    private func json(_ text: String) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
    }

    /// The checks of a `--json` report by name: (outcome, detail).
    private func outcomes(_ report: [String: Any]) throws -> [(name: String, outcome: String, detail: String)] {
        let checks = try #require(report["checks"] as? [[String: Any]])
        return try checks.map { check in
            #expect(Set(check.keys) == ["name", "outcome", "detail"])
            return (try #require(check["name"] as? String), try #require(check["outcome"] as? String),
                    try #require(check["detail"] as? String))
        }
    }

    @Test("on /dev/shm every check passes (a skip only where this kernel or user refuses what it needs, with why); --json names each; the image is removed")
    func passesOnTmpfs() throws {
        try withTemporaryPath("mmap-check") { path in
            let result = try DaxlabBinary.run(["mmap-check", path, "--json"])
            #expect(result.status == 0, "\(result.standardOutput)\(result.standardError)")
            let report = try self.json(result.standardOutput)
            #expect(Set(report.keys) == ["path", "medium", "window_faults", "map_sync", "window_granularity", "checks", "passed", "failed", "skipped"])
            #expect(report["medium"] as? String == "tmpfs")
            #expect(report["map_sync"] as? Bool == false, "tmpfs has no MAP_SYNC")
            #expect(report["window_granularity"] as? Int == 4096, "tmpfs maps single pages")
            let mechanism = try #require(report["window_faults"] as? String)
            #expect(["userfaultfd", "signals"].contains(mechanism))
            let checks = try self.outcomes(report)
            #expect(checks.map(\.name) == Self.checks)
            for check in checks {
                let mayBeSkipped = (Self.kernelChecks.contains(check.name) && mechanism == "signals")
                    || (check.name == "kernel-direct" && KernelFacilities.directIORefusal != nil)
                #expect(check.outcome == "pass" || (check.outcome == "skip" && mayBeSkipped), "\(check.name): \(check.outcome) \(check.detail)")
                #expect(!check.detail.isEmpty, "\(check.name) says nothing")
            }
            let counted = ["passed", "failed", "skipped"].compactMap { report[$0] as? Int }
            #expect(counted.count == 3 && counted.reduce(0, +) == Self.checks.count && counted[1] == 0)
            #expect(!FileManager.default.fileExists(atPath: path), "the image it created is removed")
        }
    }

    @Test("the text form: one PASS, FAIL or SKIP line per check, then the summary")
    func textLines() throws {
        try withTemporaryPath("mmap-check") { path in
            let result = try DaxlabBinary.run(["mmap-check", path])
            #expect(result.status == 0, "\(result.standardOutput)\(result.standardError)")
            let lines = result.standardOutput.split(separator: "\n").map(String.init)
            #expect(lines.count == Self.checks.count + 2, "\(lines)")
            #expect(lines.first?.contains("tmpfs file") == true)
            for (line, name) in zip(lines.dropFirst(), Self.checks) {
                #expect(["PASS", "SKIP"].contains { line.hasPrefix("\($0) \(name): ") }, "\(line)")
            }
            #expect(lines.last?.hasPrefix("6 checks: ") == true && lines.last?.contains(", 0 failed, ") == true)
        }
    }

    @Test("--source-dir on tmpfs: kernel-direct is skipped, saying why (tmpfs copies; GUP pins nothing); the rest pass")
    func directSourceOnTmpfs() throws {
        try withTemporaryPath("mmap-check") { path in
            let result = try DaxlabBinary.run(["mmap-check", path, "--source-dir", "/dev/shm", "--json"])
            #expect(result.status == 0, "\(result.standardError)")
            let checks = try self.outcomes(try self.json(result.standardOutput))
            let direct = try #require(checks.first { $0.name == "kernel-direct" })
            #expect(direct.outcome == "skip")
            #expect(direct.detail.contains("tmpfs") || direct.detail.contains("userfaultfd"), "\(direct.detail)")
            #expect(checks.filter { $0.outcome == "fail" }.isEmpty)
        }
    }

    @Test("a missing folder, an existing file without --force, --size out of range, a --source-dir that is no folder: exit 2, one line; the file is untouched")
    func badInput() throws {
        try withTemporaryPath("mmap-check") { path in
            let existing = Data("keep me".utf8)
            #expect(FileManager.default.createFile(atPath: path, contents: existing))
            let cases: [([String], String)] = [
                (["mmap-check", "/nonexistent-daxlab-folder/image.pmem"], "/nonexistent-daxlab-folder/image.pmem"),
                (["mmap-check", path], "--force"),
                (["mmap-check", path + ".new", "--size", "1M"], "--size"),
                (["mmap-check", path + ".new", "--size", "17G"], "--size"),
                (["mmap-check", path + ".new", "--source-dir", path], "not a directory"),
            ]
            for (arguments, mention) in cases {
                let result = try DaxlabBinary.run(arguments)
                #expect(result.status == 2, "\(arguments): \(result.standardError)")
                #expect(result.standardOutput.isEmpty, "\(arguments)")
                #expect(result.standardError.split(separator: "\n").count == 1, "\(arguments): \(result.standardError)")
                #expect(result.standardError.contains(mention), "\(arguments): \(result.standardError)")
            }
            #expect(FileManager.default.contents(atPath: path) == existing, "refused without --force: untouched")
            #expect(!FileManager.default.fileExists(atPath: path + ".new"))
        }
    }

    @Test("--help names every check and what it shows")
    func help() throws {
        let result = try DaxlabBinary.run(["mmap-check", "--help"])
        #expect(result.status == 0)
        for name in Self.checks { #expect(result.standardOutput.contains(name), "\(name)") }
        for term in ["userfaultfd", "EFAULT", "O_DIRECT", "2 MiB", "--source-dir"] {
            #expect(result.standardOutput.contains(term), "\(term)")
        }
    }
}
