import ArgumentParser
import DaxFS
import Foundation
import Race

/// `daxlab demo`: the main job. The race under every policy, then a comparison table.
struct DemoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Race every policy for a few seconds and compare them: the bug, and each remedy.",
        discussion: """
            Runs `daxlab race` under none, fail, wait, sequester, deferred and lease-break on PATH \
            (re-formatted for each), then prints a table: corruption seen, truncate latency, EBUSY \
            refusals, blocks held in limbo, revoked DMA writes, and the verdict. Exit 0 when every \
            protective policy held (and none showed the corruption it exists to show).
            """
    )

    @Argument(help: "Scratch image (created and removed).") var path: String = "/dev/shm/daxlab-demo.pmem"
    @Option(name: .long, help: "Seconds per policy.") var seconds: Double = 3
    @Option(name: .customLong("pin-ms"), help: "How long a device holds each pin batch (ms).") var pinMs: Double = 2
    @Option(name: .customLong("lease-break-ms"), help: "The lease-break time (ms).") var leaseBreakMs: Double = 1
    @Flag(name: .long, help: "Print one JSON array of the reports.") var json = false

    func validate() throws {
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
        var reports: [RaceReport] = []
        for policy in TruncatePolicy.allCases {
            var configuration = RaceConfiguration(policy: policy)
            configuration.seconds = self.seconds
            configuration.pinMilliseconds = self.pinMs
            configuration.leaseBreakMilliseconds = self.leaseBreakMs
            if !self.json { Output.print("racing \(policy) for \(self.seconds) s ...") }
            reports.append(try RaceRunner.run(
                path: self.path, size: 64 << 20, configuration: configuration, force: true, keep: false,
                live: !self.json))
        }
        if self.json {
            try Terminal.printJSON(reports)
        } else {
            Output.print(Self.table(reports))
        }
        let protectiveHeld = reports.filter { $0.policy != "none" }.allSatisfy(\.held)
        let bugShown = reports.first { $0.policy == "none" }?.corruptionSeen ?? false
        if !self.json {
            Output.print(protectiveHeld
                ? "Every protective policy held" + (bugShown ? "; none showed the corruption." : ", but none did not show corruption this time.")
                : "A protective policy FAILED: see its row.")
        }
        if !protectiveHeld { throw ExitCode(1) }
    }

    static func table(_ reports: [RaceReport]) -> String {
        let header = ["policy", "corruption", "stale", "corrupted", "trunc p50", "trunc p99", "EBUSY", "limbo peak",
                      "revoked", "refused", "verdict"]
        var rows = [header]
        for report in reports {
            rows.append([
                report.policy, report.corruptionSeen ? "YES" : "no", String(report.staleDmaWrites),
                String(report.corruptedBlocks), RaceRunner.format(report.truncateLatencyUs.p50),
                RaceRunner.format(report.truncateLatencyUs.p99), String(report.truncatesBusy),
                String(max(report.sequesteredBlocksPeak, report.deferredBlocksPeak)), String(report.revocations),
                String(report.revokedDmaWrites),
                report.policy == "none"
                    ? (report.corruptionSeen ? "bug reproduced" : "bug not seen")
                    : (report.held ? "held" : "FAILED"),
            ])
        }
        let widths = (0..<header.count).map { column in rows.map { $0[column].count }.max()! }
        return rows.enumerated().map { index, row in
            let line = zip(row, widths).map { $0.padding(toLength: $1, withPad: " ", startingAt: 0) }.joined(separator: "  ")
            return index == 0 ? line + "\n" + String(repeating: "-", count: line.count) : line
        }.joined(separator: "\n")
    }
}
