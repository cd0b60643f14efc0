import DaxlabCLI
import Foundation
import Testing
import TestSupport

@Suite("daxlab end to end, through the built binary", .timeLimit(.minutes(2)))
struct CLITests {
    private func json(_ text: String) throws -> [String: Any] {
        let object = try JSONSerialization.jsonObject(with: Data(text.utf8))
        return try #require(object as? [String: Any])
    }

    @Test("info on a missing path: exit 2 and one line on stderr")
    func infoMissingPath() throws {
        let result = try DaxlabBinary.run(["info", "/nonexistent"])
        #expect(result.status == 2)
        #expect(result.standardOutput.isEmpty)
        #expect(result.standardError == "daxlab: error: /nonexistent: no such file or device\n")
    }

    @Test("info on a directory, a non-dax character device and a bad size: exit 2, one line each")
    func infoBadInputs() throws {
        for arguments in [["info", "/dev/shm"], ["info", "/dev/null"]] {
            let result = try DaxlabBinary.run(arguments)
            #expect(result.status == 2, "\(arguments)")
            #expect(result.standardError.split(separator: "\n").count == 1, "\(arguments): \(result.standardError)")
        }
        try withTemporaryPath { path in
            let unaligned = try DaxlabBinary.run(["info", path, "--create", "1000"])
            #expect(unaligned.status == 2)
            #expect(unaligned.standardError.contains("not a multiple of 4096"))
            #expect(!FileManager.default.fileExists(atPath: path))

            let garbage = try DaxlabBinary.run(["info", path, "--create", "12Q"])
            #expect(garbage.status == 2)
            #expect(garbage.standardError.contains("12Q"))
        }
    }

    @Test("info --create makes a 0600 file and reports it; a second run finds it")
    func infoCreatesAndReports() throws {
        try withTemporaryPath { path in
            let first = try DaxlabBinary.run(["info", path, "--create", "1M", "--json"])
            #expect(first.status == 0, "\(first.standardError)")
            let report = try self.json(first.standardOutput)
            #expect(report["created"] as? Bool == true)
            #expect(report["size"] as? Int == 1 << 20)
            #expect(report["medium"] as? String == "tmpfs")
            #expect(report["alignment"] as? Int == 4096)
            let attributes = try FileManager.default.attributesOfItem(atPath: path)
            #expect((attributes[.posixPermissions] as? Int) == 0o600)

            let second = try DaxlabBinary.run(["info", path])
            #expect(second.status == 0)
            #expect(second.standardOutput.contains("tmpfs file (emulated pmem)"))
            #expect(second.standardOutput.contains("1048576 bytes (1 MiB)"))
            #expect(!second.standardOutput.contains("(created)"))

            let mismatch = try DaxlabBinary.run(["info", path, "--create", "2M"])
            #expect(mismatch.status == 2)
            #expect(mismatch.standardError.contains("not 2097152"))
        }
    }

    @Test("PMEM_IS_PMEM_FORCE, read once by libpmem per process, decides is-pmem and the persist path")
    func isPmemForceInChild() throws {
        try withTemporaryPath { path in
            let created = try DaxlabBinary.run(["info", path, "--create", "64K"])
            #expect(created.status == 0)
            for (force, expected) in [("1", true), ("0", false)] {
                let result = try DaxlabBinary.run(["info", path, "--json"], environment: ["PMEM_IS_PMEM_FORCE": force])
                let report = try self.json(result.standardOutput)
                #expect(report["is_pmem"] as? Bool == expected, "PMEM_IS_PMEM_FORCE=\(force)")
                #expect(report["persistence"] as? String == (expected ? "pmem" : "msync"))
            }
            let unset = try self.json(try DaxlabBinary.run(["info", path, "--json"]).standardOutput)
            #expect(unset["is_pmem"] as? Bool == false, "tmpfs is not pmem without the override")
        }
    }

    @Test("a file the user may not open: exit 2, permission denied")
    func permissionDenied() throws {
        guard getuid() == 0, FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv") else {
            return  // The unprivileged case runs in PmemTests; this one needs root to drop to nobody.
        }
        // The build folder may sit in a folder nobody cannot enter (a clone in root's home, or
        // in `mktemp -d`): run a copy of the binary from a folder everyone can reach.
        let binary = try DaxlabBinary.copyForEveryone()
        defer { try? FileManager.default.removeItem(atPath: URL(fileURLWithPath: binary).deletingLastPathComponent().path) }
        try withTemporaryPath { path in
            #expect(FileManager.default.createFile(atPath: path, contents: Data(count: 4096)))
            #expect(chmod(path, 0o600) == 0)
            let result = try runProcess(
                ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", binary, "info", path],
                removing: ["PMEM_IS_PMEM_FORCE"])
            #expect(result.status == 2, "\(result.standardError)")
            #expect(result.standardError == "daxlab: error: \(path): permission denied\n")
        }
    }

    @Test("devices: exit 0; with nothing found it says how to get pmem; --json is one object")
    func devices() throws {
        let plain = try DaxlabBinary.run(["devices"])
        #expect(plain.status == 0)
        let listing = try self.json(try DaxlabBinary.run(["devices", "--json"]).standardOutput)
        let regions = try #require(listing["regions"] as? [Any])
        let daxDevices = try #require(listing["dax_devices"] as? [Any])
        let rdma = try #require(listing["rdma_devices"] as? [String])
        #expect(plain.standardOutput.contains(rdma.isEmpty ? "RDMA devices: none" : "RDMA devices: \(rdma[0])"))
        if regions.isEmpty && daxDevices.isEmpty {
            #expect(plain.standardOutput.contains("No persistent memory found"))
            #expect(plain.standardOutput.contains("memmap="))
        } else {
            #expect(plain.standardOutput.contains("region"))
        }
    }

    @Test("usage errors exit 2; --help and --version exit 0")
    func usage() throws {
        #expect(try DaxlabBinary.run(["no-such-command"]).status == 2)
        #expect(try DaxlabBinary.run(["info"]).status == 2)
        let help = try DaxlabBinary.run(["--help"])
        #expect(help.status == 0)
        #expect(help.standardOutput.contains("devices"))
        let version = try DaxlabBinary.run(["--version"])
        #expect(version.status == 0)
        #expect(version.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines) == DaxlabVersion.string)
    }
}

@Suite("Size arguments")
struct ByteSizeTests {
    @Test(arguments: [
        ("4096", 4096), ("64K", 65536), ("256M", 256 << 20), ("1G", 1 << 30), ("2GiB", 2 << 30), ("3mb", 3 << 20),
        ("0", 0),
    ])
    func parses(text: String, bytes: Int) {
        #expect(ByteSize.parse(text) == bytes)
    }

    @Test(arguments: ["", "M", "-1", "12Q", "1.5G", "99999999999999999999", "9999999999T"])
    func rejects(text: String) {
        #expect(ByteSize.parse(text) == nil)
    }
}
