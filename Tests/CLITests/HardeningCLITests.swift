import Foundation
import Testing
import TestSupport

/// daxlab tried as a hostile user would: every input gets a result or one clear line and a
/// non-zero exit, never a trap, a signal or a hang, and the image stays consistent and intact.
@Suite("Hostile input, through the CLI", .serialized, .timeLimit(.minutes(5)))
struct HardeningCLITests {
    /// A fresh image with one file `f` of `content`.
    private func image(_ name: String, size: String = "16M", content: [UInt8] = Array("hello\n".utf8),
                       _ body: (String) throws -> Void) throws {
        try withTemporaryPath(name) { image in
            #expect(try DaxlabBinary.run(["mkfs", image, "--size", size]).status == 0)
            let input = image + ".in"
            defer { unlink(input) }
            try Data(content).write(to: URL(fileURLWithPath: input))
            #expect(try DaxlabBinary.run(["write", image, "f", "--input", input]).status == 0)
            try body(image)
        }
    }

    /// The image is intact: fsck is clean and `f` reads back as `content`.
    private func expectIntact(_ image: String, _ content: [UInt8] = Array("hello\n".utf8), _ label: String) throws {
        let fsck = try DaxlabBinary.run(["fsck", image])
        #expect(fsck.status == 0, "\(label): \(fsck.standardOutput)")
        let read = try runShell("exec \"$DAXLAB\" read '\(image)' f >&3 2>&4")
        #expect(read.status == 0, "\(label): \(read.standardError)")
        #expect(read.standardOutput == content, "\(label): f changed")
    }

    /// Exit 2 and exactly one line on stderr.
    private func expectOneLineError(_ result: MeasuredResult, _ label: String, contains text: String? = nil) {
        self.expectOneLineError(status: result.status, standardError: result.standardError, label, contains: text)
    }

    private func expectOneLineError(_ result: ProcessResult, _ label: String, contains text: String? = nil) {
        self.expectOneLineError(status: result.status, standardError: result.standardError, label, contains: text)
    }

    private func expectOneLineError(status: Int32, standardError: String, _ label: String, contains text: String?) {
        #expect(status == 2, "\(label): status \(status): \(standardError)")
        #expect(standardError.split(separator: "\n").count == 1, "\(label): \(standardError)")
        if let text { #expect(standardError.contains(text), "\(label): \(standardError)") }
    }

    @Test("a path holding a newline, a tab or an escape: the error is still one line, the characters written as escapes")
    func controlCharactersInAPath() throws {
        for (path, shown) in [("/tmp/no\nsuch", "/tmp/no\\nsuch"), ("/tmp/a\tb", "/tmp/a\\tb"), ("/tmp/\u{1B}[2J", "/tmp/\\x1B[2J")] {
            let result = try DaxlabBinary.run(["fsck", path])
            #expect(result.status == 2)
            #expect(result.standardError.split(separator: "\n", omittingEmptySubsequences: false).count == 2, "\(result.standardError)")
            #expect(result.standardError.contains(shown), "\(result.standardError)")
        }
    }

    @Test("an image whose path holds a newline and an escape: mkfs, info and fsck still print one line per line, the characters as escapes")
    func controlCharactersInAnImagePath() throws {
        let path = "/dev/shm/daxlab-\(getpid())-new\nFAKE: clean\u{1B}[2K.img"
        defer { unlink(path) }
        for arguments in [["mkfs", path, "--size", "4M"], ["info", path], ["fsck", path]] {
            let result = try DaxlabBinary.run(arguments)
            #expect(result.status == 0, "\(arguments[0]): \(result.standardError)")
            #expect(!result.standardOutput.contains("\u{1B}"), "\(arguments[0]) passed an escape through")
            #expect(!result.standardOutput.split(separator: "\n").contains { $0.hasPrefix("FAKE") }, "\(arguments[0]) split a line at the path's newline")
            #expect(result.standardOutput.contains("new\\nFAKE"), "\(arguments[0]): \(result.standardOutput)")
        }
    }

    @Test("offsets, lengths and sizes near 2^63: a clear error, the image untouched")
    func arithmetic() throws {
        try self.image("arith") { image in
            for arguments in [
                "punch '\(image)' f 4096 9223372036854775807", "punch '\(image)' f 9223372036854775807 4096",
                "punch '\(image)' f 4611686018427387904 4611686018427387904", "truncate '\(image)' f 9223372036854775807",
                "truncate '\(image)' f 8E", "truncate '\(image)' f -1", "punch '\(image)' f -4096 1",
            ] {
                let result = try runShell("exec \"$DAXLAB\" \(arguments) >&3 2>&4")
                self.expectOneLineError(result, arguments)
                try self.expectIntact(image, Array("hello\n".utf8), arguments)
            }
            let negative = try runShell("exec \"$DAXLAB\" truncate '\(image)' f -1 >&3 2>&4")
            #expect(negative.standardError.contains("negative"))
            let large = try runShell("exec \"$DAXLAB\" truncate '\(image)' f 9223372036854775807 >&3 2>&4")
            #expect(large.standardError.contains("1075888128"), "the range it accepts: \(large.standardError)")
        }
    }

    @Test("output into /dev/full or a closed stdout, input from a closed stdin: one line, exit 2")
    func outputErrors() throws {
        try self.image("output") { image in
            for command in ["read '\(image)' f", "ls '\(image)'", "fsck '\(image)'", "info '\(image)'", "devices"] {
                let full = try runShell("exec \"$DAXLAB\" \(command) >/dev/full 2>&4")
                self.expectOneLineError(full, "\(command) > /dev/full", contains: "No space left on device")
                let closed = try runShell("exec \"$DAXLAB\" \(command) >&- 2>&4")
                self.expectOneLineError(closed, "\(command) >&-", contains: "closed")
            }
            let noInput = try runShell("exec \"$DAXLAB\" write '\(image)' g <&- 2>&4")
            self.expectOneLineError(noInput, "write <&-", contains: "standard input is closed")
            let listing = try runShell("exec \"$DAXLAB\" ls '\(image)' >&3 2>&4")
            #expect(!String(decoding: listing.standardOutput, as: UTF8.self).contains(" g\n"), "no file created")
            try self.expectIntact(image, Array("hello\n".utf8), "after the output errors")
        }
    }

    @Test("a report file that cannot be written is refused before anything is measured: a missing directory, a directory, a path under a file, an empty path")
    func reportRefusedFirst() throws {
        try withTemporaryPath("report") { directory in
            #expect(mkdir(directory, 0o755) == 0)
            let scratch = directory + "/scratch.pmem"
            for (option, target, reason) in [
                ("--json", directory + "/missing/run.json", "No such file or directory"),
                ("--plot", directory, "it is a directory"),
                ("--json", "/etc/passwd/run.json", "Not a directory"),
                ("--plot", "", "an empty path"),
            ] {
                // (A long --seconds: if the check came after the measuring, this would run for minutes.)
                let result = try runShell(
                    "exec \"$DAXLAB\" bench '\(scratch)' --only pin --seconds 600 \(option) '\(target)' >&3 2>&4", timeout: 60)
                self.expectOneLineError(result, "bench \(option) '\(target)'", contains: reason)
                #expect(result.standardOutput.isEmpty, "nothing measured or printed: \(String(decoding: result.standardOutput, as: UTF8.self))")
                #expect(access(scratch, F_OK) != 0, "no scratch image made")
            }
            let demo = try runShell(
                "exec \"$DAXLAB\" demo '\(scratch)' --report '\(directory)/missing/demo.json' >&3 2>&4", timeout: 60)
            self.expectOneLineError(demo, "demo --report", contains: "No such file or directory")
            #expect(demo.standardOutput.isEmpty, "no race ran: \(String(decoding: demo.standardOutput, as: UTF8.self))")
        }
    }

    @Test("a report replaces its file whole or not at all: a write that fails (a file-size limit) leaves the old report and no temporary file; a device is written in place")
    func reportReplacedWhole() throws {
        try withTemporaryPath("replace") { directory in
            #expect(mkdir(directory, 0o755) == 0)
            let run = directory + "/run.json"
            try BenchTableTests.report.write(toFile: run, atomically: true, encoding: .utf8)
            let plot = directory + "/plot.svg"
            try "the old plot".write(toFile: plot, atomically: true, encoding: .utf8)
            // The plot is some kilobytes; 1 KiB is all the limit lets a file hold (SIGXFSZ ignored,
            // so the write fails with EFBIG instead of killing the process).
            let limited = try runShell(
                "trap '' XFSZ; ulimit -f 1; exec \"$DAXLAB\" bench --from '\(run)' --plot '\(plot)' >/dev/null 2>&4")
            self.expectOneLineError(limited, "--plot under ulimit -f 1", contains: "File too large")
            #expect(try String(contentsOfFile: plot, encoding: .utf8) == "the old plot")
            #expect(try FileManager.default.contentsOfDirectory(atPath: directory).sorted() == ["plot.svg", "run.json"])
            let written = try DaxlabBinary.run(["bench", "--from", run, "--plot", plot], timeout: 60)
            #expect(written.status == 0, "\(written.standardError)")
            #expect(try String(contentsOfFile: plot, encoding: .utf8).hasPrefix("<svg"))
            // /dev/stdout into a pipe: not a regular file, so written in place (a rename would replace
            // the link).
            let device = try runShell("(\"$DAXLAB\" bench --from '\(run)' --plot /dev/stdout 2>&4; echo \"exit $?\") | cat >&3")
            let piped = String(decoding: device.standardOutput, as: UTF8.self)
            #expect(piped.contains("<svg") && piped.hasSuffix("exit 0\n"), "\(piped.suffix(200)) \(device.standardError)")
        }
    }

    @Test("a broken pipe ends read quietly (status 141, nothing on stderr); the image stays clean")
    func brokenPipe() throws {
        let content = randomBytes(count: 8 << 20, seed: 3)
        try self.image("pipe", size: "64M", content: content) { image in
            // The reader takes one byte and leaves (8 MiB is far more than a pipe holds); daxlab
            // ignores SIGPIPE and sees EPIPE.
            let result = try runShell("(\"$DAXLAB\" read '\(image)' f 2>&4; echo $? >&3) | head -c1 >/dev/null")
            #expect(result.standardError.isEmpty, "\(result.standardError)")
            #expect(String(decoding: result.standardOutput, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) == "141")
            try self.expectIntact(image, content, "after the broken pipe")
        }
    }

    @Test("timing and count options: inf, nan, huge and out-of-range values are refused at parse time with the range",
          arguments: [
              "race --policy wait --pin-ms inf", "race --policy wait --pin-ms nan", "race --policy wait --pin-ms 1e300",
              "race --policy wait --lease-break-ms inf", "race --policy wait --seconds inf", "race --policy wait --seconds nan",
              "demo --seconds inf", "demo --seconds nan", "demo --seconds 0", "demo --pin-ms inf",
              "bench --seconds inf", "bench --seconds nan", "bench --seconds 1e300", "bench --threads 0",
              "bench --threads 100000", "crash-test --points 0", "crash-test --ops 100000000", "crash-test --size 1K",
          ])
    func options(arguments: String) throws {
        let result = try runShell("exec \"$DAXLAB\" \(arguments) >&3 2>&4", timeout: 30)
        self.expectOneLineError(result, arguments, contains: "must be")
    }

    @Test("read and write stream: memory stays small whatever the file's size")
    func streaming() throws {
        try withTemporaryPath("stream") { image in
            #expect(try DaxlabBinary.run(["mkfs", image, "--size", "256M"]).status == 0)
            let input = image + ".in"
            defer { unlink(input) }
            #expect(try runShell("head -c 134217728 /dev/zero > '\(input)'").status == 0)
            // daxlab is the shell's own child (exec), so wait4 reports its peak memory.
            let write = try runShell("exec \"$DAXLAB\" write '\(image)' big < '\(input)' 2>&4")
            #expect(write.status == 0, "\(write.standardError)")
            // The data's own pages are the image's (DAX: mapped into the process, they count in its
            // resident set, not in its anonymous memory); the write holds a 4 MiB chunk, not the input.
            #expect(write.maxAnonymousKiB < 64 << 10, "write of 128 MiB held \(write.maxAnonymousKiB) KiB of its own")
            #expect(try DaxlabBinary.run(["truncate", image, "sparse", "0"]).status == 2, "no such file yet")
            #expect(try runShell("exec \"$DAXLAB\" write '\(image)' sparse </dev/null").status == 0)
            #expect(try DaxlabBinary.run(["truncate", image, "sparse", "1G"]).status == 0)
            let read = try runShell("exec \"$DAXLAB\" read '\(image)' sparse 2>&4 | wc -c >&3")
            #expect(read.status == 0, "\(read.standardError)")
            #expect(String(decoding: read.standardOutput, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) == "1073741824")
            let measured = try runShell("exec \"$DAXLAB\" read '\(image)' sparse >/dev/null 2>&4")
            #expect(measured.maxAnonymousKiB < 64 << 10, "read of a 1 GiB sparse file held \(measured.maxAnonymousKiB) KiB")
        }
    }

    @Test("names are bytes: canonically equivalent and non-UTF-8 names are distinct files; ls escapes them")
    func namesAreBytes() throws {
        try self.image("names") { image in
            let names = [("caf\\303\\251", "one"), ("cafe\\314\\201", "two"), ("\\377", "three"), ("\\376", "four"),
                         ("evil\\n\\033[31mred", "five")]
            for (name, content) in names {
                let result = try runShell("printf '\(content)' | exec \"$DAXLAB\" write '\(image)' \"$(printf '\(name)')\" 2>&4")
                #expect(result.status == 0, "\(name): \(result.standardError)")
            }
            for (name, content) in names {
                let result = try runShell("exec \"$DAXLAB\" read '\(image)' \"$(printf '\(name)')\" >&3 2>&4")
                #expect(String(decoding: result.standardOutput, as: UTF8.self) == content, "\(name)")
            }
            let listing = try runShell("exec \"$DAXLAB\" ls '\(image)' >&3 2>&4")
            let text = String(decoding: listing.standardOutput, as: UTF8.self)
            #expect(listing.standardOutput.allSatisfy { $0 >= 0x20 || $0 == 0x0A }, "no control bytes reach the terminal")
            #expect(text.split(separator: "\n").count == 6, "one line per file: \(text)")
            #expect(text.contains("\\377") && text.contains("\\376") && text.contains("evil\\n\\033[31mred"))
            let json = try JSONSerialization.jsonObject(
                with: Data(try runShell("exec \"$DAXLAB\" ls '\(image)' --json >&3").standardOutput)) as? [[String: Any]]
            #expect(json?.contains { $0["name_hex"] as? String == "ff" } == true)
            let slash = try runShell("exec \"$DAXLAB\" write '\(image)' a/b </dev/null 2>&4")
            self.expectOneLineError(slash, "a name with /", contains: "'/'")
            let long = try runShell("exec \"$DAXLAB\" write '\(image)' \(String(repeating: "n", count: 256)) </dev/null 2>&4")
            self.expectOneLineError(long, "256 bytes", contains: "255")
            let dash = try runShell("exec \"$DAXLAB\" write '\(image)' -dash </dev/null >&3 2>&4")
            #expect(dash.status == 2, "-dash is not help")
            #expect(dash.standardOutput.isEmpty)
            #expect(try runShell("exec \"$DAXLAB\" write '\(image)' -- -dash </dev/null").status == 0)
            #expect(try DaxlabBinary.run(["fsck", image]).status == 0)
        }
    }

    @Test("a write that does not fit keeps the old file whole, and says so")
    func failedOverwriteKeepsOldFile() throws {
        let old = randomBytes(count: 3 << 20, seed: 9)
        try self.image("overwrite", size: "8M", content: old) { image in
            let big = image + ".big"
            defer { unlink(big) }
            try Data(randomBytes(count: 6 << 20, seed: 10)).write(to: URL(fileURLWithPath: big))
            let result = try runShell("exec \"$DAXLAB\" write '\(image)' f --input '\(big)' 2>&4")
            self.expectOneLineError(result, "overwrite bigger than free space", contains: "kept")
            #expect(result.standardError.contains("f:"), "names the file: \(result.standardError)")
            try self.expectIntact(image, old, "after the failed overwrite")
            let missing = try runShell("exec \"$DAXLAB\" write '\(image)' g --input /nonexistent 2>&4")
            self.expectOneLineError(missing, "missing input", contains: "No such file or directory")
        }
    }

    @Test("mkfs refuses data it recognizes: a signature, a non-zero byte in the first or last MiB, a daxlab backup")
    func mkfsRecognizesData() throws {
        try withTemporaryPath("mkfs-data") { target in
            // An ISO starts with 32 KiB of zeros: data at the end only must be seen too.
            #expect(FileManager.default.createFile(atPath: target, contents: nil))
            let handle = try #require(FileHandle(forWritingAtPath: target))
            try handle.truncate(atOffset: 8 << 20)
            try handle.seek(toOffset: (8 << 20) - 100)
            try handle.write(contentsOf: Data([1]))
            try handle.close()
            let tail = try DaxlabBinary.run(["mkfs", target])
            #expect(tail.status == 2)
            #expect(tail.standardError.contains("non-zero byte"))
            if FileManager.default.isExecutableFile(atPath: "/sbin/mkswap") {
                #expect(try runProcess(["/sbin/mkswap", target]).status == 0)
                let swap = try DaxlabBinary.run(["mkfs", target])
                #expect(swap.status == 2)
                #expect(swap.standardError.contains("swap"), "\(swap.standardError)")
            }
            #expect(try DaxlabBinary.run(["mkfs", target, "--force"]).status == 0)
            // Block 0 zeroed, the backup at the end still there: still refused.
            let zero = try #require(FileHandle(forWritingAtPath: target))
            try zero.write(contentsOf: Data(count: 4096))
            try zero.close()
            let backup = try DaxlabBinary.run(["mkfs", target])
            #expect(backup.status == 2)
            #expect(backup.standardError.contains("backup"))
        }
    }

    @Test("mkfs --help says which bytes it checks, and mkfs checks those: the first and last MiB, not the middle")
    func mkfsHelpMatchesCheck() throws {
        let help = try DaxlabBinary.run(["mkfs", "--help"])
        let text = help.standardOutput.split(whereSeparator: \.isWhitespace).joined(separator: " ")
        #expect(text.contains("any non-zero byte in its first or last MiB"), "\(help.standardOutput)")
        #expect(!text.contains("4 KiB"), "\(help.standardOutput)")
        try withTemporaryPath("mkfs-span") { target in
            for (offset, refused) in [(512 << 10, true), ((8 << 20) - (512 << 10), true), (4 << 20, false)] {
                unlink(target)
                #expect(FileManager.default.createFile(atPath: target, contents: nil))
                let handle = try #require(FileHandle(forWritingAtPath: target))
                try handle.truncate(atOffset: 8 << 20)
                try handle.seek(toOffset: UInt64(offset))
                try handle.write(contentsOf: Data([1]))
                try handle.close()
                let result = try DaxlabBinary.run(["mkfs", target])
                #expect(result.status == (refused ? 2 : 0), "a byte at \(offset): \(result.standardError)")
            }
        }
    }

    @Test("a damaged superblock with an intact backup: every command points to fsck --repair, never to mkfs; the repair keeps the data")
    func damagedSuperblockHint() throws {
        // Block 0 zeroed (bad magic), then one byte of its checksummed part changed.
        for (offset, bytes) in [(0, Data(count: 4096)), (100, Data([0xA5]))] {
            try self.image("primary-\(offset)") { image in
                let handle = try #require(FileHandle(forWritingAtPath: image))
                try handle.seek(toOffset: UInt64(offset))
                try handle.write(contentsOf: bytes)
                try handle.close()
                // (mkfs says the same where block 0 lost its magic; with the magic there it says the image is daxlab's.)
                let mkfs = offset == 0 ? [["mkfs", image]] : []
                for arguments in [["ls", image], ["read", image, "f"], ["write", image, "g"], ["rm", image, "f"]] + mkfs {
                    let result = try DaxlabBinary.run(arguments)
                    self.expectOneLineError(result, "\(arguments)", contains: "fsck --repair")
                    #expect(!result.standardError.contains("daxlab mkfs"), "\(arguments): \(result.standardError)")
                }
                let info = try DaxlabBinary.run(["info", image])
                #expect(info.status == 1, "info: \(info.standardError)")
                #expect(info.standardOutput.contains("fsck --repair") && !info.standardOutput.contains("mkfs"), "info: \(info.standardOutput)")
                let fsck = try DaxlabBinary.run(["fsck", image])
                #expect(fsck.status == 1)
                #expect(fsck.standardOutput.contains("backup") && !fsck.standardOutput.contains("daxlab mkfs"), "fsck: \(fsck.standardOutput)")
                #expect(try DaxlabBinary.run(["fsck", image, "--repair"]).status == 0)
                try self.expectIntact(image, Array("hello\n".utf8), "after fsck --repair")
            }
        }
        // Without a backup there is nothing to repair from: mkfs is still the advice.
        try self.image("no-backup") { image in
            let handle = try #require(FileHandle(forWritingAtPath: image))
            try handle.write(contentsOf: Data(count: 4096))
            try handle.seek(toOffset: (16 << 20) - 4096)
            try handle.write(contentsOf: Data(count: 4096))
            try handle.close()
            self.expectOneLineError(try DaxlabBinary.run(["ls", image]), "ls, no backup", contains: "run daxlab mkfs")
        }
    }

    @Test("a final symbolic link is not followed when creating or formatting (unless it leads to a device)")
    func symlinks() throws {
        try withTemporaryPath("link-target") { target in
            let content = Data("precious".utf8)
            try content.write(to: URL(fileURLWithPath: target))
            let link = target + ".link"
            defer { unlink(link) }
            #expect(symlink(target, link) == 0)
            for arguments in [["mkfs", link, "--force"], ["info", link, "--create", "1M"], ["race", link, "--policy", "wait", "--force", "--seconds", "1"]] {
                let result = try DaxlabBinary.run(arguments)
                #expect(result.status == 2, "\(arguments)")
                #expect(result.standardError.contains("symbolic link"), "\(arguments): \(result.standardError)")
                #expect(try Data(contentsOf: URL(fileURLWithPath: target)) == content, "\(arguments) wrote through the link")
            }
        }
    }

    @Test("a FIFO is refused at once by every command that opens an image, never waited on")
    func fifo() throws {
        try withTemporaryPath("fifo") { fifo in
            #expect(mkfifo(fifo, 0o600) == 0)
            for arguments in [
                ["ls", fifo], ["read", fifo, "f"], ["fsck", fifo], ["fsck", fifo, "--repair"], ["info", fifo],
                ["write", fifo, "f"], ["mkfs", fifo],
            ] {
                // A hang is a timeout here, not a test that never ends.
                let result = try DaxlabBinary.run(arguments, timeout: 10)
                #expect(result.status != 0 && result.status < 128, "\(arguments): status \(result.status)")
                #expect(result.standardError.split(separator: "\n").count == 1, "\(arguments): \(result.standardError)")
                #expect(result.standardError.contains("not a regular file"), "\(arguments): \(result.standardError)")
            }
        }
    }

    @Test("read-only commands open the image read-only: a user with read permission can use them, not write")
    func readOnlyCommands() throws {
        guard getuid() == 0, FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv") else {
            try Test.cancel("needs root to drop to nobody (setpriv)")
        }
        let binary = try DaxlabBinary.copyForEveryone()
        defer { try? FileManager.default.removeItem(atPath: URL(fileURLWithPath: binary).deletingLastPathComponent().path) }
        try self.image("readonly") { image in
            #expect(chmod(image, 0o644) == 0)
            let nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", binary]
            for arguments in [["ls", image], ["read", image, "f"], ["info", image], ["fsck", image]] {
                let result = try runProcess(nobody + arguments)
                #expect(result.status == 0, "\(arguments): \(result.standardError)")
            }
            let write = try runProcess(nobody + ["rm", image, "f"])
            #expect(write.status == 2)
            #expect(write.standardError.contains("permission denied"))
            try self.expectIntact(image, Array("hello\n".utf8), "after nobody's reads")
        }
    }

    @Test("a full backing file system: a clear error before anything is written, never a SIGBUS")
    func fullBackingStore() throws {
        guard getuid() == 0 else { try Test.cancel("needs root to mount a small tmpfs") }
        try withTemporaryPath("small-tmpfs", in: "/tmp") { folder in
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: false)
            guard try runProcess(["mount", "-t", "tmpfs", "-o", "size=8M", "tmpfs", folder]).status == 0 else {
                try Test.cancel("mount -t tmpfs is not permitted here")
            }
            defer { _ = try? runProcess(["umount", "-l", folder]) }
            // A 16 MiB image on an 8 MiB file system: refused at mkfs, nothing left behind.
            let big = try DaxlabBinary.run(["mkfs", folder + "/big", "--size", "16M"])
            #expect(big.status == 2)
            #expect(big.standardError.contains("no space on the backing file system"), "\(big.standardError)")
            #expect(!FileManager.default.fileExists(atPath: folder + "/big"))
            // An image whose free data area went sparse (copied without its holes, say), on a file
            // system then filled up: a write is refused at mount, before anything is written.
            let image = folder + "/image"
            #expect(try DaxlabBinary.run(["mkfs", image, "--size", "4M"]).status == 0)
            #expect(try runShell("printf hello | exec \"$DAXLAB\" write '\(image)' f").status == 0)
            #expect(try runProcess(["fallocate", "--punch-hole", "--offset", "2M", "--length", String((2 << 20) - 4096), image]).status == 0)
            _ = try runShell("exec dd if=/dev/zero of='\(folder)/filler' bs=64k 2>/dev/null")
            let write = try runShell("printf more | exec \"$DAXLAB\" write '\(image)' g 2>&4")
            self.expectOneLineError(write, "write onto a full backing store", contains: "no space on the backing file system")
            unlink(folder + "/filler")
            try self.expectIntact(image, Array("hello".utf8), "after the refused write")
            #expect(try runShell("printf more | exec \"$DAXLAB\" write '\(image)' g").status == 0, "with space again")
        }
    }

    @Test("sparse files on a full backing file system: the read-only commands read an image, mkfs refuses in one line, never a SIGBUS")
    func readOnlyCommandsOnFullBackingStore() throws {
        guard getuid() == 0 else { try Test.cancel("needs root to mount a small tmpfs") }
        try withTemporaryPath("full-tmpfs", in: "/tmp") { folder in
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: false)
            guard try runProcess(["mount", "-t", "tmpfs", "-o", "size=6M", "tmpfs", folder]).status == 0 else {
                try Test.cancel("mount -t tmpfs is not permitted here")
            }
            defer { _ = try? runProcess(["umount", "-l", folder]) }
            // A 32 MiB image, mostly holes, copied sparse onto a 6 MiB file system, then filled up.
            let image = folder + "/image"
            try self.image("sparse-source", size: "32M") { source in
                let copy = try runProcess(["cp", "--sparse=always", source, image])
                #expect(copy.status == 0, "cp: \(copy.standardError)")
            }
            let plain = folder + "/plain"  // all hole: mkfs reads it before it allocates it
            #expect(FileManager.default.createFile(atPath: plain, contents: nil) && truncate(plain, 8 << 20) == 0)
            _ = try runShell("exec dd if=/dev/zero of='\(folder)/filler' bs=64k 2>/dev/null")
            var space = statvfs()
            #expect(statvfs(folder, &space) == 0 && space.f_bavail == 0, "the file system is full")
            var before = stat()
            #expect(stat(image, &before) == 0)
            #expect(Int(before.st_blocks) * 512 < 6 << 20, "the image is sparse")

            let list = try DaxlabBinary.run(["ls", image])
            #expect(list.status == 0, "ls: \(list.status): \(list.standardError)")
            #expect(list.standardOutput.hasSuffix("  f\n"), "ls: \(list.standardOutput)")
            let read = try runShell("exec \"$DAXLAB\" read '\(image)' f >&3 2>&4")
            #expect(read.status == 0, "read: \(read.status): \(read.standardError)")
            #expect(read.standardOutput == Array("hello\n".utf8))
            let fsck = try DaxlabBinary.run(["fsck", image])
            #expect(fsck.status == 0, "fsck: \(fsck.status): \(fsck.standardOutput)\(fsck.standardError)")
            let info = try DaxlabBinary.run(["info", image])
            #expect(info.status == 0, "info: \(info.status): \(info.standardError)")
            #expect(info.standardOutput.contains("file system    daxlab, clean"), "info: \(info.standardOutput)")
            let json = try DaxlabBinary.run(["info", "--json", image])
            #expect(json.status == 0, "info --json: \(json.status): \(json.standardError)")
            #expect(json.standardOutput.contains("\"files\""), "info --json: \(json.standardOutput)")

            var after = stat()
            #expect(stat(image, &after) == 0)
            #expect(after.st_blocks == before.st_blocks, "reading took pages from the file system")
            let write = try runShell("printf more | exec \"$DAXLAB\" write '\(image)' g 2>&4")
            self.expectOneLineError(write, "write onto a full backing store", contains: "no space on the backing file system")
            let mkfs = try runShell("exec \"$DAXLAB\" mkfs '\(plain)' 2>&4")
            self.expectOneLineError(mkfs, "mkfs of a sparse file on a full backing store", contains: "no space on the backing file system")
            var plainAfter = stat()
            #expect(stat(plain, &plainAfter) == 0 && plainAfter.st_blocks == 0 && plainAfter.st_size == 8 << 20, "mkfs changed the file")
        }
    }

    @Test("crash-test keeps its scratch files in a private folder, and removes it and its child on SIGTERM")
    func crashTestCleansUp() throws {
        try withTemporaryPath("crash-scratch") { folder in
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: false)
            // At different moments of the run (the dry run, formatting, copying, a child running,
            // verifying): the signal must never leave a file behind, whatever the run was doing.
            for delay in ["0.3", "0.8", "1.3", "2"] {
                let result = try runShell(
                    "\"$DAXLAB\" crash-test --points 5000 --ops 400 --directory '\(folder)' >/dev/null 2>&4 & pid=$!; "
                        + "sleep \(delay); ls '\(folder)' >&3; kill -TERM $pid; wait $pid; echo status=$? >&3")
                let text = String(decoding: result.standardOutput, as: UTF8.self)
                #expect(text.contains("daxlab-crash-"), "a private folder while it runs (\(delay) s): \(text)")
                #expect(text.contains("status=143"), "\(delay) s: \(text)")
                #expect(try FileManager.default.contentsOfDirectory(atPath: folder).isEmpty, "left behind (SIGTERM after \(delay) s)")
            }
            usleep(200_000)
            let children = try runProcess(["pgrep", "-f", "crash-test --child --image \(folder)"])
            #expect(children.standardOutput.isEmpty, "children outlived their parent: \(children.standardOutput)")
            // A parent killed outright cannot clean up its folder, but its children still die.
            _ = try runShell(
                "\"$DAXLAB\" crash-test --points 5000 --ops 400 --directory '\(folder)' >/dev/null 2>&1 & pid=$!; "
                    + "sleep 2; kill -KILL $pid; wait $pid")
            usleep(300_000)
            let orphans = try runProcess(["pgrep", "-f", "crash-test --child --image \(folder)"])
            #expect(orphans.standardOutput.isEmpty, "children outlived a SIGKILLed parent: \(orphans.standardOutput)")
            for entry in try FileManager.default.contentsOfDirectory(atPath: folder) {
                try FileManager.default.removeItem(atPath: folder + "/" + entry)
            }
        }
    }
}
