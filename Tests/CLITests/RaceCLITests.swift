import Foundation
import Testing
import TestSupport

@Suite("daxlab race and demo, end to end", .serialized, .timeLimit(.minutes(5)))
struct RaceCLITests {
    private func json(_ text: String) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
    }

    static let keys: Set<String> = [
        "policy", "devices", "profile", "scenario", "seconds", "is_pmem", "dma_writes", "pins", "kernel_pins", "kernel_writes", "kernel_errors", "kernel_faults",
        "rdma_writes", "rdma_errors",
        "kernel_pin_refused", "longterm_refused", "longterm_pins", "truncates", "truncates_busy", "truncates_waited",
        "truncate_latency_us", "stale_dma_writes", "corrupted_blocks", "leaked_blocks", "revoked_dma_writes", "persist_errors",
        "revocations", "odp_invalidations", "device_refaults", "sequestered_blocks_peak", "deferred_blocks_peak", "fsck_clean", "deadlock", "stuck_threads",
    ]

    @Test("race --json: exactly the documented keys; exit 1 under none, 0 under wait; the image is removed")
    func raceJSON() throws {
        try withTemporaryPath("race-cli") { path in
            let none = try DaxlabBinary.run(["race", path, "--policy", "none", "--seconds", "2", "--json"])
            #expect(none.status == 1, "\(none.standardError)")
            let report = try self.json(none.standardOutput)
            #expect(Set(report.keys) == Self.keys)
            let latency = try #require(report["truncate_latency_us"] as? [String: Any])
            #expect(Set(latency.keys) == ["p50", "p99", "max"])
            #expect(report["policy"] as? String == "none")
            #expect(report["devices"] as? String == "simulated", "the default devices")
            #expect(report["kernel_pins"] as? Int == 0 && report["kernel_writes"] as? Int == 0)
            #expect(!FileManager.default.fileExists(atPath: path), "removed without --keep")

            let wait = try DaxlabBinary.run(["race", path, "--policy", "wait", "--seconds", "1", "--json", "--keep"])
            #expect(wait.status == 0, "\(wait.standardOutput)")
            let waited = try self.json(wait.standardOutput)
            #expect(waited["stale_dma_writes"] as? Int == 0)
            #expect(waited["truncates_waited"] as? Int ?? 0 > 0, "the collision's truncate waits")
            #expect((waited["stuck_threads"] as? [Any])?.isEmpty == true)
            #expect(FileManager.default.fileExists(atPath: path), "kept")
            #expect(try DaxlabBinary.run(["fsck", path]).status == 0)

            let exists = try DaxlabBinary.run(["race", path, "--policy", "wait", "--seconds", "1"])
            #expect(exists.status == 2, "an existing path needs --force")
            #expect(exists.standardError.contains("--force"))
            #expect(exists.standardError.contains("exists (a file of"), "says what was found: \(exists.standardError)")
        }
    }

    @Test("race --devices kernel-longterm: the kernel's own writes corrupt under none; lease-break revokes them for real",
          .enabled(if: KernelFacilities.ioUringRefusal == nil, "io_uring is refused here"))
    func kernelLongterm() throws {
        try withTemporaryPath("race-kernel") { path in
            let none = try DaxlabBinary.run(
                ["race", path, "--policy", "none", "--devices", "kernel-longterm", "--seconds", "1", "--json"])
            #expect(none.status == 1, "\(none.standardError)")
            let report = try self.json(none.standardOutput)
            #expect(report["devices"] as? String == "kernel-longterm")
            #expect(report["kernel_pin_refused"] as? Bool == false)
            #expect(report["kernel_pins"] as? Int ?? 0 > 0 && report["kernel_writes"] as? Int ?? 0 > 0, "\(report)")
            if KernelFacilities.userfaultfdRefusal == nil {
                #expect(report["kernel_faults"] as? Int ?? 0 > 0, "the registrations faulted the views in: \(report)")
            }
            #expect(report["stale_dma_writes"] as? Int ?? 0 > 0, "the collision's kernel write is stale: \(report)")
            #expect(report["corrupted_blocks"] as? Int ?? 0 > 0, "and corrupts the collision writer's page: \(report)")

            let revoked = try DaxlabBinary.run(
                ["race", path, "--policy", "lease-break", "--devices", "kernel-longterm", "--seconds", "1", "--json"])
            #expect(revoked.status == 0, "\(revoked.standardOutput)\(revoked.standardError)")
            let held = try self.json(revoked.standardOutput)
            #expect(held["revocations"] as? Int ?? 0 > 0, "the collision's lease is revoked: \(held)")
            #expect(held["revoked_dma_writes"] as? Int ?? 0 > 0, "and the kernel refuses its later writes: \(held)")
            #expect(held["stale_dma_writes"] as? Int == 0 && held["corrupted_blocks"] as? Int == 0)
        }
    }

    @Test("race --devices kernel-direct: O_DIRECT devices race and wait holds; a tmpfs --source-dir is refused in one line",
          .enabled(if: KernelFacilities.directIORefusal == nil, "O_DIRECT in /var/tmp is refused here"))
    func kernelDirect() throws {
        try withTemporaryPath("race-direct") { path in
            let wait = try DaxlabBinary.run(
                ["race", path, "--policy", "wait", "--devices", "kernel-direct", "--seconds", "1", "--json"])
            #expect(wait.status == 0, "\(wait.standardOutput)\(wait.standardError)")
            let report = try self.json(wait.standardOutput)
            #expect(report["devices"] as? String == "kernel-direct")
            #expect(report["kernel_writes"] as? Int ?? 0 > 0, "\(report)")
            if KernelFacilities.userfaultfdRefusal == nil {
                #expect(report["kernel_faults"] as? Int ?? 0 > 0, "the O_DIRECT reads faulted the views in: \(report)")
            }
            #expect(report["stale_dma_writes"] as? Int == 0 && report["corrupted_blocks"] as? Int == 0)

            let tmpfs = try DaxlabBinary.run(
                ["race", path, "--policy", "wait", "--devices", "kernel-direct", "--source-dir", "/dev/shm", "--seconds", "1"])
            #expect(tmpfs.status == 2)
            #expect(tmpfs.standardError.contains("tmpfs"), "\(tmpfs.standardError)")
            #expect(tmpfs.standardError.split(separator: "\n").count == 1)
            #expect(!FileManager.default.fileExists(atPath: path), "nothing formatted before the refusal")
        }
    }

    @Test("race --devices rdma without an RDMA device: one line saying so, exit 2, nothing formatted; demo skips them in one line",
          .enabled(if: KernelFacilities.rdmaRefusal?.hasPrefix("no RDMA device here") == true,
                   "this machine has an RDMA device (the next test races on it)"))
    func rdmaMissing() throws {
        try withTemporaryPath("race-rdma") { path in
            for policy in ["none", "odp"] {
                let refused = try DaxlabBinary.run(["race", path, "--policy", policy, "--devices", "rdma", "--seconds", "1"])
                #expect(refused.status == 2, "\(policy): \(refused.standardOutput)\(refused.standardError)")
                #expect(refused.standardError.contains("no RDMA device here"), "\(refused.standardError)")
                #expect(refused.standardError.split(separator: "\n").count == 1)
                #expect(!FileManager.default.fileExists(atPath: path), "nothing formatted before the refusal")
            }
            let check = try DaxlabBinary.run(["rdma-check", path])
            #expect(check.status == 2 && check.standardError.contains("no RDMA device here"), "\(check.standardError)")
            #expect(!FileManager.default.fileExists(atPath: path), "rdma-check formatted nothing")
            let demo = try DaxlabBinary.run(["demo", path, "--devices", "rdma", "--seconds", "1"])
            #expect(demo.status == 2, "nothing raced: \(demo.standardError)")
            #expect(demo.standardError.contains("rdma devices skipped: no RDMA device here"), "\(demo.standardError)")
        }
    }

    @Test("race --devices rdma: RDMA WRITEs corrupt under none; lease-break deregisters the region and the device's later writes complete with a remote access error",
          .enabled(if: KernelFacilities.rdmaRefusal == nil, "\(KernelFacilities.rdmaRefusal ?? ""); make test-pmem races RDMA devices in its guests"))
    func rdma() throws {
        try withTemporaryPath("race-rdma") { path in
            let none = try DaxlabBinary.run(["race", path, "--policy", "none", "--devices", "rdma", "--seconds", "2", "--json"])
            let report = try self.json(none.standardOutput)
            if report["kernel_pin_refused"] as? Bool == true { return }  // (a file system whose pages are not pinned for long)
            #expect(none.status == 1, "\(none.standardError)")
            #expect(report["devices"] as? String == "rdma")
            #expect(report["rdma_writes"] as? Int ?? 0 > 0 && report["kernel_writes"] as? Int == report["rdma_writes"] as? Int)
            #expect(report["stale_dma_writes"] as? Int ?? 0 > 0, "the collision's RDMA WRITE is stale: \(report)")

            let revoked = try DaxlabBinary.run(
                ["race", path, "--policy", "lease-break", "--devices", "rdma", "--seconds", "2", "--json"])
            #expect(revoked.status == 0, "\(revoked.standardOutput)\(revoked.standardError)")
            let held = try self.json(revoked.standardOutput)
            #expect(held["revocations"] as? Int ?? 0 > 0 && held["revoked_dma_writes"] as? Int ?? 0 > 0, "\(held)")
            #expect(held["rdma_errors"] as? Int ?? 0 > 0, "the refused writes completed with an error: \(held)")
            #expect(held["stale_dma_writes"] as? Int == 0 && held["corrupted_blocks"] as? Int == 0)
        }
    }

    @Test("race --policy mainline: long-term pins refused (EOPNOTSUPP) as the outcome, exit 0; short-term devices race and truncates wait")
    func mainline() throws {
        try withTemporaryPath("race-mainline") { path in
            let refused = try DaxlabBinary.run(["race", path, "--policy", "mainline", "--seconds", "1", "--json"])
            #expect(refused.status == 0, "\(refused.standardOutput)\(refused.standardError)")
            let report = try self.json(refused.standardOutput)
            #expect(report["profile"] as? String == "long-term", "the default profile")
            #expect(report["longterm_refused"] as? Int ?? 0 > 0, "\(report)")
            #expect(report["pins"] as? Int == 0 && report["dma_writes"] as? Int == 0, "nothing raced: \(report)")
            #expect(report["kernel_pin_refused"] as? Bool == false, "daxlab refused, not the kernel")
            #expect(report["fsck_clean"] as? Bool == true)
            let text = try DaxlabBinary.run(["race", path, "--policy", "mainline", "--seconds", "1"])
            #expect(text.status == 0)
            #expect(text.standardOutput.contains("REFUSED (EOPNOTSUPP"), "\(text.standardOutput)")

            let short = try DaxlabBinary.run(
                ["race", path, "--policy", "mainline", "--profile", "short-term", "--seconds", "1", "--json"])
            #expect(short.status == 0, "\(short.standardOutput)\(short.standardError)")
            let raced = try self.json(short.standardOutput)
            #expect(raced["profile"] as? String == "short-term")
            #expect(raced["longterm_refused"] as? Int == 0)
            #expect(raced["pins"] as? Int ?? 0 > 0 && raced["truncates_waited"] as? Int ?? 0 > 0, "\(raced)")
            #expect(raced["stale_dma_writes"] as? Int == 0 && raced["corrupted_blocks"] as? Int == 0)
        }
    }

    @Test("race --policy odp: devices mirror instead of pinning; truncates invalidate and never wait; it holds")
    func onDemandPaging() throws {
        try withTemporaryPath("race-odp") { path in
            let result = try DaxlabBinary.run(["race", path, "--policy", "odp", "--seconds", "1", "--json"])
            #expect(result.status == 0, "\(result.standardOutput)\(result.standardError)")
            let report = try self.json(result.standardOutput)
            #expect(report["odp_invalidations"] as? Int ?? 0 > 0, "\(report)")
            #expect(report["truncates_waited"] as? Int == 0, "no truncate waits: nothing is pinned")
            #expect(report["dma_writes"] as? Int ?? 0 > 100)
            #expect(report["stale_dma_writes"] as? Int == 0 && report["corrupted_blocks"] as? Int == 0)
            let text = try DaxlabBinary.run(["race", path, "--policy", "odp", "--seconds", "1"])
            #expect(text.standardOutput.contains("translations invalidated"), "\(text.standardOutput)")
        }
    }

    @Test("race --scenario collision: xfstests' collision rounds; none corrupts (exit 1), wait holds (exit 0)")
    func collisionScenario() throws {
        try withTemporaryPath("race-collision") { path in
            let none = try DaxlabBinary.run(["race", path, "--policy", "none", "--scenario", "collision", "--seconds", "1", "--json"])
            #expect(none.status == 1, "\(none.standardError)")
            let broken = try self.json(none.standardOutput)
            #expect(broken["scenario"] as? String == "collision")
            #expect(broken["stale_dma_writes"] as? Int ?? 0 > 0, "\(broken)")
            let wait = try DaxlabBinary.run(["race", path, "--policy", "wait", "--scenario", "collision", "--seconds", "1", "--json"])
            #expect(wait.status == 0, "\(wait.standardOutput)\(wait.standardError)")
            let held = try self.json(wait.standardOutput)
            #expect(held["truncates_waited"] as? Int ?? 0 >= 4, "each of the four operations waited: \(held)")
            #expect(held["stale_dma_writes"] as? Int == 0 && held["corrupted_blocks"] as? Int == 0)
            let odp = try self.json(try DaxlabBinary.run(["race", path, "--policy", "odp", "--seconds", "1", "--json"]).standardOutput)
            #expect(odp["profile"] as? String == "odp")
        }
    }

    @Test("race: bad arguments exit 2 with one line")
    func badArguments() throws {
        for arguments in [["race", "--policy", "sometimes"], ["race", "--policy", "wait", "--seconds", "0"],
                          ["race", "--policy", "wait", "--seconds", "nan"], ["race", "--policy", "wait", "--pin-ms", "inf"],
                          ["race", "--policy", "wait", "--long-pin-devices", "9"],
                          ["race", "--policy", "wait", "--devices", "gpu"],
                          ["race", "--policy", "wait", "--profile", "forever"],
                          ["race", "--policy", "odp", "--devices", "kernel-direct"],
                          ["race", "--policy", "wait", "--scenario", "sometimes"],
                          ["race", "--policy", "wait", "--devices", "kernel-direct", "--profile", "long-term"],
                          ["race", "/nonexistent-dir/x.pmem", "--policy", "wait", "--seconds", "1"]]
        {
            let result = try DaxlabBinary.run(arguments)
            #expect(result.status == 2, "\(arguments): \(result.standardError)")
            #expect(!result.standardError.isEmpty)
        }
    }

    @Test("a sequester race killed with blocks in lost+found: the next mount reclaims them and fsck is clean")
    func sequesterKilled() throws {
        try withTemporaryPath("race-kill") { path in
            // Devices that hold their pins for a minute: once a truncate has sequestered a block,
            // it stays in lost+found until the kill. The kill waits for the progress line that
            // says so, not for a time.
            let process = Process()
            process.executableURL = URL(fileURLWithPath: DaxlabBinary.path)
            process.arguments = [
                "race", path, "--policy", "sequester", "--seconds", "120", "--pin-ms", "60000",
                "--long-pin-devices", "0", "--keep", "--progress",
            ]
            let errors = Pipe()
            process.standardOutput = FileHandle.nullDevice
            process.standardError = errors
            try process.run()
            let seen = Box(false)
            let reader = Thread {
                var text = ""
                while let chunk = try? errors.fileHandleForReading.read(upToCount: 4096), !chunk.isEmpty {
                    text += String(decoding: chunk, as: UTF8.self)
                    let limbo = text.split(separator: "\n").compactMap { line in
                        line.split(separator: " ").first { $0.hasPrefix("limbo=") }.flatMap { Int($0.dropFirst(6)) }
                    }
                    if limbo.contains(where: { $0 > 0 }) {
                        seen.value = true
                        kill(process.processIdentifier, SIGKILL)
                        return
                    }
                }
            }
            reader.start()
            let deadline = Date().addingTimeInterval(60)
            while process.isRunning, Date() < deadline { usleep(20_000) }
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
            process.waitUntilExit()
            try #require(seen.value, "no progress line reported sequestered blocks within 60 s")
            #expect(process.terminationReason == .uncaughtSignal)

            let info = try self.json(try DaxlabBinary.run(["info", path, "--json"]).standardOutput)
            let fs = try #require(info["file_system"] as? [String: Any])
            #expect(fs["state"] as? String == "mounted", "left mounted by the kill")
            // Before recovery, lost+found holds the blocks that were sequestered under DMA.
            let before = try self.json(try DaxlabBinary.run(["fsck", path, "--json"]).standardOutput)
            #expect(before["lost_found_blocks"] as? Int ?? 0 > 0, "\(before)")
            // A read-only command (ls) recovers it in its private copy only: the image stays as it is.
            #expect(try DaxlabBinary.run(["ls", path]).status == 0)
            let still = try self.json(try DaxlabBinary.run(["fsck", path, "--json"]).standardOutput)
            #expect(still["lost_found_blocks"] as? Int == before["lost_found_blocks"] as? Int)
            // fsck --repair (or any command that writes) recovers it: replays the log and frees
            // lost+found; then it is clean.
            #expect(try DaxlabBinary.run(["fsck", path, "--repair"]).status == 0)
            let fsck = try self.json(try DaxlabBinary.run(["fsck", path, "--json"]).standardOutput)
            #expect(fsck["clean"] as? Bool == true, "\(fsck)")
            #expect(fsck["lost_found_blocks"] as? Int == 0)
        }
    }

    /// `size` bytes of random data at `path` (one random MiB, repeated).
    static func writeRandomFile(_ path: String, size: Int) throws -> Data {
        let chunk = Data(randomBytes(count: 1 << 20, seed: 7))
        var data = Data(capacity: size)
        while data.count < size { data.append(chunk) }
        try data.write(to: URL(fileURLWithPath: path))
        return data
    }

    @Test("demo refuses a file it did not create (an image, random data, of its own size) unless --force, and never removes one")
    func demoKeepsExistingFiles() throws {
        try withTemporaryPath("demo-existing") { path in
            #expect(try DaxlabBinary.run(["mkfs", path, "--size", "64M"]).status == 0)
            let input = path + ".in"
            defer { unlink(input) }
            try Data("precious\n".utf8).write(to: URL(fileURLWithPath: input))
            #expect(try DaxlabBinary.run(["write", path, "precious", "--input", input]).status == 0)
            let arguments = ["demo", path, "--seconds", "0.1", "--devices", "simulated"]
            let image = try DaxlabBinary.run(arguments, timeout: 120)
            #expect(image.status == 2, "\(image.standardOutput)\(image.standardError)")
            #expect(image.standardError.split(separator: "\n").count == 1, "\(image.standardError)")
            #expect(image.standardError.contains("exists") && image.standardError.contains("--force"), "\(image.standardError)")
            #expect(try DaxlabBinary.run(["read", path, "precious"]).standardOutput == "precious\n", "the image was touched")

            let data = try Self.writeRandomFile(path, size: 64 << 20)
            let random = try DaxlabBinary.run(arguments, timeout: 120)
            #expect(random.status == 2, "\(random.standardOutput)\(random.standardError)")
            #expect(FileManager.default.contents(atPath: path) == data, "random data was touched")

            // --force takes it: formatted and raced on, but left in place.
            let forced = try DaxlabBinary.run(arguments + ["--force"], timeout: 180)
            #expect(forced.status == 0, "\(forced.standardOutput)\(forced.standardError)")
            var status = stat()
            #expect(stat(path, &status) == 0 && status.st_size == 64 << 20, "--force removed a file demo did not create")
        }
    }

    @Test("race --force formats an existing file and leaves it in place; a file race created is removed")
    func raceForceKeepsExistingFile() throws {
        try withTemporaryPath("race-existing") { path in
            _ = try Self.writeRandomFile(path, size: 64 << 20)
            let forced = try DaxlabBinary.run(["race", path, "--policy", "wait", "--seconds", "0.2", "--force"], timeout: 120)
            #expect(forced.status == 0, "\(forced.standardOutput)\(forced.standardError)")
            #expect(FileManager.default.fileExists(atPath: path), "--force removed a file race did not create")
            #expect(try DaxlabBinary.run(["fsck", path]).status == 0, "it holds the race's image")
            unlink(path)
            #expect(try DaxlabBinary.run(["race", path, "--policy", "wait", "--seconds", "0.2"], timeout: 120).status == 0)
            #expect(!FileManager.default.fileExists(atPath: path), "race's own image is removed")
        }
    }

    @Test("demo: when every kind of device is skipped nothing raced: it says so and exits 2, writing no report")
    func demoNothingRaced() throws {
        try withTemporaryPath("demo-skipped") { path in
            let saved = path + ".json"
            defer { unlink(saved) }
            // kernel-direct refuses a tmpfs --source-dir (O_DIRECT needs a disk file system).
            let result = try DaxlabBinary.run(
                ["demo", path, "--devices", "kernel-direct", "--source-dir", "/dev/shm", "--seconds", "0.1", "--report", saved],
                timeout: 60)
            #expect(result.status == 2, "\(result.standardOutput)\(result.standardError)")
            #expect(result.standardError.contains("kernel-direct devices skipped"), "\(result.standardError)")
            #expect(result.standardError.contains("nothing raced"), "\(result.standardError)")
            #expect(!result.standardOutput.contains("held"), "\(result.standardOutput)")
            #expect(!FileManager.default.fileExists(atPath: saved), "an empty report was written")
            #expect(!FileManager.default.fileExists(atPath: path))
        }
    }

    @Test("demo: every policy raced, a table, exit 0 when every protective policy held")
    func demo() throws {
        try withTemporaryPath("demo") { path in
            let saved = path + ".json"
            defer { try? FileManager.default.removeItem(atPath: saved) }
            let result = try DaxlabBinary.run(["demo", path, "--seconds", "1", "--report", saved], timeout: 240)
            #expect(result.status == 0, "\(result.standardOutput)\(result.standardError)")
            // --report keeps the run the table shows: one report per row, with race --json's keys.
            let reports = try #require(
                try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: saved))) as? [[String: Any]])
            let policies: Set<Substring> = ["none", "fail", "wait", "sequester", "deferred", "lease-break", "mainline", "odp"]
            let tableRows = result.standardOutput.split(separator: "\n").filter {
                policies.contains($0.split(separator: " ").first ?? "")
            }
            #expect(reports.count == tableRows.count && !reports.isEmpty, "\(reports.count) reports, \(tableRows.count) rows")
            #expect(reports.allSatisfy { Set($0.keys) == Self.keys })
            for policy in ["none", "fail", "wait", "sequester", "deferred", "lease-break", "mainline", "odp"] {
                #expect(result.standardOutput.contains(policy))
            }
            // Each kind of device raced every policy (simulated ones with both profiles), or was
            // skipped with its reason.
            let rows = result.standardOutput.split(separator: "\n").filter { !$0.hasPrefix("racing") }
            for (kind, count) in [("simulated", 15), ("kernel-longterm", 7), ("kernel-direct", 7)] {
                let raced = rows.filter { $0.contains(" \(kind) ") }.count
                #expect(raced == count || result.standardError.contains("\(kind) devices skipped"), "\(kind): \(raced)")
            }
            // mainline with long-term devices: refused, and the table says so.
            let refusedRow = rows.first { $0.hasPrefix("mainline") && $0.contains(" simulated ") && $0.contains("long-term") }
            #expect(refusedRow?.contains("refused (EOPNOTSUPP)") == true, "\(refusedRow ?? "no row")")
            #expect(result.standardOutput.contains("verdict"))
            #expect(result.standardOutput.contains("Every protective policy held"))
        }
    }
}
