import ArgumentParser
import DAX
import DMA
import DaxFS
import Foundation
import Race

/// `daxlab demo`: the main job. The race under every policy, then a comparison table.
struct DemoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Race every policy for a few seconds and compare them: the bug, and each remedy.",
        discussion: """
            Runs `daxlab race` under none, fail, wait, sequester, deferred, lease-break, mainline \
            and odp on PATH (re-formatted for each; something already at PATH is refused unless \
            --force, and only an image demo created is removed afterwards), once for each kind of \
            device in --devices: simulated (daxlab's threads write; raced twice, with long-term \
            RDMA-like pins and with short-term O_DIRECT-like ones), kernel-longterm (the kernel \
            writes through io_uring fixed buffers it pinned for long), kernel-direct (O_DIRECT \
            reads from a disk file: the kernel pins for one I/O) and rdma (RDMA WRITEs into memory \
            regions an RDMA device registered, --rdma-device). Under mainline long-term pins are refused (EOPNOTSUPP): \
            that row says so; odp (on-demand paging) is raced with simulated devices only, which \
            mirror instead of pinning. Then it prints a table: corruption seen, truncate latency, \
            EBUSY refusals, blocks held in limbo, revoked and refused writes, and the verdict. A \
            kind of device this machine cannot run (io_uring or O_DIRECT refused, no RDMA device) is skipped with \
            one line saying why; when every kind was skipped nothing raced, and it exits 2. Exit 0 \
            when every protective policy held.
            """
    )

    static let defaultPath = "/dev/shm/daxlab-demo.pmem"

    @Argument(help: "Scratch image (created and removed; a path that exists, other than this default, needs --force).")
    var path: String = DemoCommand.defaultPath
    @Option(name: .long, help: "Seconds per policy.") var seconds: Double = 3
    @Option(name: .customLong("pin-ms"), help: "How long a device holds each pin batch (ms).") var pinMs: Double = 2
    @Option(name: .customLong("lease-break-ms"), help: "The lease-break time (ms).") var leaseBreakMs: Double = 1
    @Option(
        name: .long, parsing: .upToNextOption,
        help: "The kinds of device to race: simulated, kernel-longterm, kernel-direct, rdma (default: all four; a kind that cannot run here is skipped with one line saying why).")
    var devices: [DeviceKind] = DeviceKind.allCases
    @Option(name: .customLong("source-dir"), help: "Where kernel-direct devices keep their source files (a disk file system).")
    var sourceDirectory = DeviceKind.defaultSourceDirectory
    @Option(name: .customLong("rdma-device"), help: "The RDMA device rdma devices use (default: the first here).")
    var rdmaDevice: String?
    @Flag(name: .long, help: "Format PATH even though it exists (its contents are lost; it is not removed afterwards).")
    var force = false
    @Flag(name: .long, help: "Print one JSON array of the reports.") var json = false
    @Option(name: .long, help: "Also write the JSON array of the reports to FILE (the table still prints): the run a README table quotes.")
    var report: String?

    func validate() throws {
        if self.rdmaDevice != nil && !self.devices.contains(.rdma) {
            throw ValidationError("--rdma-device is for rdma devices, which --devices leaves out")
        }
        guard self.seconds.isFinite, self.seconds > 0, self.seconds <= 3600 else {
            throw ValidationError("--seconds must be in (0, 3600]")
        }
        for (name, value) in [("--pin-ms", self.pinMs), ("--lease-break-ms", self.leaseBreakMs)] {
            guard value.isFinite, value > 0, value <= 3_600_000 else {
                throw ValidationError("\(name) must be in (0, 3600000] ms")
            }
        }
    }

    func run() throws {
        // Before minutes of racing: an image path that is taken, or a report that cannot be
        // written, is an error now.
        let image = try ScratchImage(self.path, command: "demo", force: self.force, defaultPath: Self.defaultPath)
        if let file = self.report { try OutputFile(file).checkWritable() }
        var reports: [RaceReport] = []
        races: for kind in self.devices {
            do { try kind.checkAvailable(sourceDirectory: self.sourceDirectory, rdmaDevice: self.rdmaDevice) } catch {
                Terminal.writeStandardError("daxlab demo: \(kind) devices skipped: \(error.message)\n")
                continue
            }
            for profile in kind.impliedTerm.map({ [$0] }) ?? [.longTerm, .shortTerm] {
                // odp's devices hold no pins, so it has one row: with simulated devices, once.
                for policy in TruncatePolicy.allCases where policy != .odp || (kind == .simulated && profile == .longTerm) {
                    var configuration = RaceConfiguration(policy: policy)
                    configuration.seconds = self.seconds
                    configuration.profile = profile
                    configuration.pinMilliseconds = kind == .simulated && profile == .shortTerm ? min(1, self.pinMs) : self.pinMs
                    if kind == .simulated && profile == .shortTerm { configuration.longPinDevices = 0 }
                    configuration.leaseBreakMilliseconds = self.leaseBreakMs
                    configuration.devices = kind
                    configuration.sourceDirectory = self.sourceDirectory
                    configuration.rdmaDevice = self.rdmaDevice
                    if !self.json {
                        Output.print("racing \(policy) with \(kind) \(profile) devices for \(self.seconds) s ...")
                    }
                    let report = try RaceRunner.run(
                        image: image, size: 64 << 20, configuration: configuration, keep: false, live: !self.json)
                    reports.append(report)
                    // Its stuck threads still hold the image: no later race can have it.
                    if report.deadlock { break races }
                }
            }
        }
        // Every kind of device skipped: nothing raced, so nothing held.
        guard !reports.isEmpty else {
            throw CommandFailure("demo: nothing raced: every kind of device in --devices was skipped")
        }
        if let file = self.report { try OutputFile(file).write(Array(try Terminal.json(reports)) + [0x0A]) }
        if self.json {
            try Terminal.printJSON(reports)
        } else {
            Output.print(Self.table(reports))
        }
        // (A deadlock is a failure whatever the policy.)
        let protectiveHeld = reports.filter { $0.policy != "none" || $0.deadlock }.allSatisfy(\.held)
        let unshown = reports.filter { $0.policy == "none" && !$0.corruptionSeen && !$0.pinsRefused }
            .map { "\($0.devices) \($0.profile)" }
        if let stuck = reports.last, stuck.deadlock {
            Terminal.writeStandardError(
                "daxlab demo: the race of \(stuck.policy) with \(stuck.devices) devices DEADLOCKED (no progress from "
                    + "\(stuck.stuckThreads.joined(separator: ", "))); the races after it were not run, and "
                    + "\(image.path) is left for inspection\n")
        }
        if !self.json {
            Output.print(protectiveHeld
                ? "Every protective policy held"
                    + (unshown.isEmpty
                        ? "; none showed the corruption."
                        : ", but none did not show corruption this time with \(unshown.joined(separator: ", ")) devices.")
                : "A protective policy FAILED: see its row.")
        }
        if !protectiveHeld { throw ExitCode(1) }
    }

    static func table(_ reports: [RaceReport]) -> String {
        let header = ["policy", "devices", "profile", "corruption", "stale", "corrupted", "trunc p50", "trunc p99", "EBUSY", "limbo peak",
                      "revoked", "refused", "invalidated", "refaults", "verdict"]
        var rows = [header]
        for report in reports {
            rows.append([
                report.policy, report.devices, report.profile,
                report.pinsRefused ? "pin refused" : report.corruptionSeen ? "YES" : "no", String(report.staleDmaWrites),
                String(report.corruptedBlocks), RaceRunner.format(report.truncateLatencyUs.p50),
                RaceRunner.format(report.truncateLatencyUs.p99), String(report.truncatesBusy),
                String(max(report.sequesteredBlocksPeak, report.deferredBlocksPeak)), String(report.revocations),
                String(report.revokedDmaWrites), String(report.odpInvalidations), String(report.deviceRefaults),
                report.kernelPinRefused
                    ? "kernel refused"
                    : report.pinsRefused
                    ? (report.fsckClean ? "refused (EOPNOTSUPP)" : "FAILED")
                    : report.policy == "none"
                        ? (report.corruptionSeen ? "bug reproduced" : "bug not seen")
                        : (report.held ? "held" : "FAILED"),
            ])
        }
        let widths = (0..<header.count).map { column in rows.map { $0[column].count }.max()! }
        return rows.enumerated().map { index, row in
            let padded = zip(row, widths).map { $0.padding(toLength: $1, withPad: " ", startingAt: 0) }.joined(separator: "  ")
            let line = String(padded.reversed().drop { $0 == " " }.reversed())
            return index == 0 ? line + "\n" + String(repeating: "-", count: padded.count) : line
        }.joined(separator: "\n")
    }
}
