import ArgumentParser
import CShims
import DAX
import DMA
@_spi(Oracle) import DaxFS
import Pmem

#if canImport(Glibc)
import Glibc
#endif

/// `daxlab rdma-check`: the seed's story told by the RDMA stack, step by step, on a medium.
struct RDMACheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rdma-check",
        abstract: "Check, step by step, what an RDMA WRITE does after a truncate freed the block it targets.",
        discussion: """
            Formats a fresh image at PATH (as race does), mounts it, and makes each step of the \
            seed's story happen in order, with an RDMA device (--rdma-device, default the first \
            one listed) in place of the NIC. The races show the same statistically; these are \
            deterministic. One line per check, then a summary:

              none-lands-in-another-file   a file's page pinned long-term and registered as a \
            memory region (ibv_reg_mr); an RDMA WRITE lands in it; the file is truncated under \
            policy none, which frees the block though the device holds it; another file grows \
            until it takes that block; the next RDMA WRITE, posted to the same region, completes \
            and its bytes are in the other file: the corruption, done by the RDMA stack.
              lease-break-refuses          the same under lease-break (a 20 ms break time, a \
            holder that ignores the break, as hardware mid-transfer): the truncate revokes the \
            lease, which deregisters the region before the block is freed; the other file takes \
            the block; the same RDMA WRITE completes with a remote access error, and the other \
            file is intact.

            Where the kernel will not register the image's pages for long (fs-dax: EOPNOTSUPP) \
            the checks are skipped, saying so. Where there is no RDMA device, one line and exit 2.

            Exit status: 0 when every check passed (skips allowed); 1 when a check failed; 2 for \
            bad arguments, an unusable path, or no RDMA device.
            """
    )

    static let defaultPath = "/dev/shm/daxlab-rdma-check.pmem"
    /// Pages the file pinned and truncated has; the other file grows up to `victimPages` pages
    /// to take the freed block.
    static let filePages = 4
    static let victimPages = 64

    @Argument(help: "The image to format (a file, created, or with --force a device-dax device).")
    var path: String = RDMACheckCommand.defaultPath
    @Option(name: .long, help: "Size of the image when it is created.") var size = ByteSize(bytes: 64 << 20)
    @Option(name: .customLong("rdma-device"), help: "The RDMA device (default: the first here).")
    var rdmaDevice: String?
    @Flag(name: .long, help: "Format PATH even though it exists (its contents are lost; it is not removed afterwards).")
    var force = false
    @Flag(name: .long, help: "Print one JSON object: the medium, the RDMA device, and each check.")
    var json = false

    /// What `--json` prints.
    struct Report: Encodable {
        var path: String
        var medium: Medium
        var rdmaDevice: String
        var checks: [WindowCheck]
        var passed: Int
        var failed: Int
        var skipped: Int
    }

    func validate() throws {
        guard (16 << 20...16 << 30).contains(self.size.bytes) else {
            throw ValidationError("--size \(self.size) is out of range: 16M to 16G")
        }
    }

    func run() throws {
        // The path first (its error is the more useful), then the device; nothing is formatted
        // before both are good: no RDMA device is one line and exit 2.
        let image = try ScratchImage(self.path, command: "rdma-check", force: self.force, defaultPath: Self.defaultPath)
        let port = try RDMAPort(device: self.rdmaDevice)
        _ = try FileSystem.format(path: image.path, size: image.isDevice ? nil : self.size.bytes, force: image.formatForce)
        let report: Report
        do {
            report = try self.check(image, port)
        } catch {
            image.remove()
            throw error
        }
        image.remove()
        if self.json {
            try Terminal.printJSON(report)
        } else {
            Output.print("\(report.path): \(report.medium.description), RDMA device \(report.rdmaDevice)")
            WindowCheck.printLines(report.checks)
        }
        if report.failed > 0 { throw ExitCode(1) }
    }

    private func check(_ image: ScratchImage, _ port: RDMAPort) throws -> Report {
        let fs = try FileSystem.mount(path: image.path)
        var checks: [WindowCheck] = []
        do {
            let dax = try DAXFileSystem(fs: fs, policy: .none, times: PolicyTimes(leaseBreakTime: .milliseconds(20)))
            // One CPU: the block the truncate frees is the next one its allocator shard hands out.
            _ = CShims_bind_to_cpu(CShims_current_cpu())
            defer { _ = CShims_unbind_cpu() }
            for policy in [TruncatePolicy.none, .leaseBreak] {
                let name = policy == .none ? "none-lands-in-another-file" : "lease-break-refuses"
                let verdict = try Story(fs: fs, dax: dax, port: port, policy: policy).tell()
                checks.append(WindowCheck(name: name, outcome: verdict.outcome, detail: verdict.detail))
            }
        } catch {
            try? fs.unmount()
            throw error
        }
        try fs.unmount()
        let count = { (outcome: WindowCheck.Outcome) in WindowCheck.count(checks, outcome) }
        return Report(
            path: image.path, medium: fs.mapping.medium, rdmaDevice: port.name, checks: checks,
            passed: count(.pass), failed: count(.fail), skipped: count(.skip))
    }
}

/// One telling of the story under one policy, on files of its own.
private struct Story {
    let fs: FileSystem
    let dax: DAXFileSystem
    let port: RDMAPort
    let policy: TruncatePolicy

    /// A holder that ignores the break, as hardware in the middle of a transfer does.
    final class DeafHolder: LeaseHolder, @unchecked Sendable {
        func leaseBroken(_ lease: LeaseInfo) {}
    }

    func tell() throws -> (outcome: WindowCheck.Outcome, detail: String) {
        let tag = self.policy == .none ? "none" : "lease-break"
        let file = try self.fs.create("pinned-\(tag)")
        try self.fs.write(file, offset: 0, bytes: [UInt8](repeating: 0xAA, count: RDMACheckCommand.filePages * pageSize))
        let holder = DeafHolder()
        var pinned = false
        do {
            let handle = try self.dax.open(file).pin(0..<1, write: true, holder: holder, kernel: .longTerm(self.port))
            pinned = true
            return try self.tell(holding: handle, file: file)
        } catch let error as FSError where error.code == .notSupported && !pinned {
            return (.skip, "the kernel refused the registration: \(error.message)")
        }
    }

    /// Tells the story through `handle`, and unpins it whatever happens.
    private func tell(holding handle: consuming PinHandle, file: FileID) throws -> (WindowCheck.Outcome, String) {
        let verdict: (WindowCheck.Outcome, String)
        do {
            verdict = try self.tell(through: handle, file: file)
        } catch {
            handle.unpin()
            throw error
        }
        handle.unpin()
        return verdict
    }

    /// Fills the port's source buffer with `byte` and RDMA-writes it into the pin's page.
    private func write(_ byte: UInt8, through handle: borrowing PinHandle) -> Int32 {
        guard let slot = handle.kernelSlot else { return -EINVAL }
        self.port.source.initializeMemory(as: UInt8.self, repeating: byte, count: pageSize)
        let port = self.port
        return handle.kernelWrite(at: 0) { port.write(into: $0, length: pageSize, slot: slot) }
    }

    private func tell(through handle: borrowing PinHandle, file: FileID) throws -> (WindowCheck.Outcome, String) {
        let block = handle.block(at: 0)
        let first = self.write(0xD1, through: handle)
        guard first == Int32(pageSize) else { return (.fail, "the first RDMA WRITE did not complete: \(first)") }
        guard try self.fs.read(file, offset: 0, count: pageSize).allSatisfy({ $0 == 0xD1 }) else {
            return (.fail, "the first RDMA WRITE completed but its bytes are not in the file's page")
        }
        try self.fs.truncate(file, size: 0, policy: self.policy)
        let revoked = handle.isRevoked
        if self.policy == .leaseBreak && !revoked { return (.fail, "the truncate did not revoke the lease") }
        // Another file grows a page at a time (as a small file does) until it takes the block.
        let victim = try self.fs.create("victim-\(self.policy == .none ? "none" : "lease-break")")
        var taken: Int?
        for page in 0..<RDMACheckCommand.victimPages where taken == nil {
            try self.fs.write(victim, offset: page * pageSize, bytes: [UInt8](repeating: 0x42, count: pageSize))
            if self.fs.currentBlock(victim, page: page) == block { taken = page }
        }
        guard let page = taken else {
            return (.fail, "block \(block) was not handed to another file within \(RDMACheckCommand.victimPages) pages")
        }
        let second = self.write(0xD2, through: handle)
        let landed = try self.fs.read(victim, offset: page * pageSize, count: pageSize)
        let intact = try self.fs.read(victim, offset: 0, count: (page + 1) * pageSize).allSatisfy { $0 == 0x42 }
        switch self.policy {
        case .none:
            guard second == Int32(pageSize) else { return (.fail, "the RDMA WRITE after the truncate failed: \(second)") }
            guard landed.allSatisfy({ $0 == 0xD2 }) else {
                return (.fail, "the RDMA WRITE completed but the other file's page (block \(block)) does not hold it")
            }
            return (.pass, "block \(block) freed under the registration and given to another file's page \(page); "
                + "the RDMA WRITE to the same region landed there")
        default:
            guard second == -EFAULT else {
                return (.fail, "the RDMA WRITE after the revocation returned \(second), not a remote access error")
            }
            guard intact else { return (.fail, "the other file's pages changed after the refused RDMA WRITE") }
            return (.pass, "the revocation deregistered the region before block \(block) went to another file's "
                + "page \(page); the RDMA WRITE completed with a remote access error and the other file is intact")
        }
    }
}
