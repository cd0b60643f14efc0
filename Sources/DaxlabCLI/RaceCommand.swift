import ArgumentParser
import CShims
import DAX
import DMA
import DaxFS
import Foundation
import Race

extension TruncatePolicy: ExpressibleByArgument {}
extension DeviceKind: ExpressibleByArgument {}
extension PinTerm: ExpressibleByArgument {}
extension RaceScenario: ExpressibleByArgument {}

/// `daxlab race`: one race run under one policy, judged by the oracle.
struct RaceCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "race",
        abstract: "Race DMA devices against truncate and hole punch under one policy, and judge the result.",
        discussion: """
            Formats a fresh image at PATH. First the race is made to happen once, on purpose: a \
            device pins pages of a shared file and keeps them until a truncate over them has \
            reached its policy's decision, then writes into them again. Then, for --seconds: DMA \
            devices that pin ranges of shared files and write tagged blocks into them (a quarter \
            of them, --long-pin-devices, hold pins for --long-pin-ms, longer than the lease-break \
            time); truncaters that cut and punch those files under --policy; writers that allocate \
            and write blocks of their own files. An independent oracle counts stale DMA writes (a \
            device writing into a block that was freed or allocated again since it pinned it) and \
            corrupted blocks (a page that does not hold what its file last wrote); at the end it \
            counts leaked blocks and runs fsck.

            Policies: none (the bug), fail, wait, sequester, deferred, lease-break, mainline \
            (v6.15's rules: long-term pins refused with EOPNOTSUPP, truncate waits for short-term \
            pins without a timeout), and odp (on-demand paging: the devices keep translations, \
            not pins; a truncate invalidates them and goes on, and a device's next write faults \
            its range in again; simulated devices only).

            Profiles (--profile): long-term (RDMA-like: pins held for --pin-ms, and by a quarter \
            of the devices for --long-pin-ms) or short-term (O_DIRECT-like: each pin held a \
            random time up to --pin-ms, default 1 ms, no long-pin devices). kernel-direct devices \
            are short-term and kernel-longterm ones long-term whatever is asked. Under mainline \
            long-term pins are refused: nothing races and the run says so (longterm_refused), \
            exit 0.

            Devices (--devices): simulated (daxlab's threads copy into the pinned blocks); \
            kernel-longterm (the kernel pins: each pin registers the range as an io_uring fixed \
            buffer, pin_user_pages(FOLL_LONGTERM), and each write is an IORING_OP_READ_FIXED the \
            kernel copies into the page it pinned; lease-break revokes by replacing the buffer); \
            kernel-direct (each write is an O_DIRECT read from a file in --source-dir into the \
            pinned range: a short-term pin for one I/O and block-layer DMA); rdma (an RDMA device, \
            --rdma-device, soft-RoCE's rxe in a guest: each pin registers the range as a memory \
            region, ibv_reg_mr, which pins it long-term, and each write is an RDMA WRITE the \
            device executes into the pages, posted from a second queue pair of the same port; \
            lease-break revokes by deregistering the region, and a later write to it completes \
            with a remote access error, landing nowhere). Where the kernel refuses long-term pins \
            (fs-dax: EOPNOTSUPP, mainline's own answer), nothing races and the run says so, exit \
            0. Where io_uring or O_DIRECT is refused, or there is no RDMA device, one line and \
            exit 2. --policy odp with rdma devices asks the device for an on-demand-paging \
            registration and reports its answer (6.1's rxe refuses it), exit 0, nothing raced.

            Scenarios (--scenario): mixed (the above) or collision (xfstests' dax group, \
            generic/503's t_mmap_collision: a device writes into its pinned range of a file while \
            another thread punches, zero-ranges, truncates down or collapses that file; each of \
            the four made to happen on purpose, round after round for --seconds, judged by the \
            same oracle).

            Exit status: 0 when nothing went wrong; 1 when the oracle saw a stale write, a \
            corrupted or leaked block, an fsck problem or a deadlock, or mainline granted a \
            long-term pin it must refuse (so --policy none exits 1: the bug, reproduced); 2 for \
            bad arguments or an unusable path.
            """
    )

    static let defaultPath = "/dev/shm/daxlab-race.pmem"

    @Argument(help: "The image to format (a file, created, or with --force a device-dax device).")
    var path: String = RaceCommand.defaultPath

    @Option(name: .long, help: "The truncate policy: \(TruncatePolicy.allCases.map(\.rawValue).joined(separator: ", ")).")
    var policy: TruncatePolicy

    @Option(name: .long, help: "How long to race.") var seconds: Double = 5
    @Option(name: .customLong("dma-threads"), help: "Devices (threads).") var dmaThreads = 4
    @Option(name: .long, help: "Who does the devices' writes: simulated, kernel-longterm, kernel-direct or rdma.")
    var devices: DeviceKind = .simulated
    @Option(name: .customLong("rdma-device"), help: "The RDMA device rdma devices use (default: the first here).")
    var rdmaDevice: String?
    @Option(name: .customLong("source-dir"), help: "Where kernel-direct devices keep their source files: a directory on a disk file system (not tmpfs).")
    var sourceDirectory = DeviceKind.defaultSourceDirectory
    @Option(name: .long, help: "Threads that truncate and punch the shared files.") var truncaters = 2
    @Option(name: .long, help: "Threads that allocate and write their own files.") var writers = 2
    @Option(name: .long, help: "mixed (the collision once, then the race) or collision (xfstests' dax collision scenario: punch, zero-range, truncate and collapse each made to collide with a device, round after round).")
    var scenario: RaceScenario = .mixed
    @Option(name: .long, help: "The devices' pins: long-term (RDMA-like) or short-term (O_DIRECT-like). Default: what --devices implies, else long-term.")
    var profile: PinTerm?
    @Option(name: .customLong("pin-ms"), help: "How long a device holds each pin batch (ms; default 2, or 1 for short-term pins, each held a random time up to it).")
    var pinMs: Double?
    @Option(name: .customLong("long-pin-ms"), help: "How long the long-pin devices hold each pin batch (ms).")
    var longPinMs: Double = 100
    @Option(name: .customLong("long-pin-devices"), help: "Devices that hold long pins (default: a quarter, at least one).")
    var longPinDevices: Int?
    @Option(name: .customLong("lease-break-ms"), help: "The lease-break time of policy lease-break (ms).")
    var leaseBreakMs: Double = 50
    @Option(name: .long, help: "Size of the image when it is created.") var size = ByteSize(bytes: 64 << 20)
    @Option(name: .long, help: "Seed for the devices' and threads' choices.") var seed: UInt64 = 1
    @Flag(name: .long, help: "Keep the image afterwards (one the run created is removed otherwise).") var keep = false
    @Flag(name: .long, help: "Format PATH even though it exists (its contents are lost; it is not removed afterwards).")
    var force = false
    @Flag(name: .long, help: "Print one JSON object with the report.") var json = false
    @Flag(name: .long, help: "Print a progress line on stderr four times a second, even when it is not a terminal.")
    var progress = false

    func validate() throws {
        guard self.seconds.isFinite, self.seconds > 0, self.seconds <= 3600 else {
            throw ValidationError("--seconds must be in (0, 3600]")
        }
        guard (1...256).contains(self.dmaThreads) else { throw ValidationError("--dma-threads must be 1...256") }
        guard (0...64).contains(self.truncaters), (0...64).contains(self.writers) else {
            throw ValidationError("--truncaters and --writers must be 0...64")
        }
        for (name, value) in [("--pin-ms", self.pinMs ?? 1), ("--long-pin-ms", self.longPinMs), ("--lease-break-ms", self.leaseBreakMs)] {
            guard value.isFinite, value > 0, value <= 3_600_000 else {
                throw ValidationError("\(name) must be in (0, 3600000] ms")
            }
        }
        if self.policy == .odp && self.devices.isKernel && self.devices != .rdma {
            throw ValidationError("--policy odp runs on-demand-paging devices, which never pin: --devices simulated")
        }
        if let profile = self.profile, let implied = self.devices.impliedTerm, profile != implied {
            throw ValidationError("--devices \(self.devices) pins are \(implied); --profile \(profile) contradicts it")
        }
        if self.rdmaDevice != nil && self.devices != .rdma {
            throw ValidationError("--rdma-device is for --devices rdma (the devices are \(self.devices))")
        }
        if let devices = self.longPinDevices, !(0...self.dmaThreads).contains(devices) {
            throw ValidationError("--long-pin-devices must be 0...\(self.dmaThreads) (the --dma-threads)")
        }
    }

    func run() throws {
        if self.policy == .odp && self.devices == .rdma { return try self.probeOnDemandPaging() }
        var configuration = RaceConfiguration(policy: self.policy)
        configuration.seconds = self.seconds
        configuration.dmaThreads = self.dmaThreads
        configuration.devices = self.devices
        configuration.sourceDirectory = self.sourceDirectory
        configuration.rdmaDevice = self.rdmaDevice
        configuration.truncaters = self.truncaters
        configuration.writers = self.writers
        configuration.profile = self.profile
        configuration.scenario = self.scenario
        let shortTerm = self.profile == .shortTerm
        configuration.pinMilliseconds = self.pinMs ?? (shortTerm ? 1 : 2)
        configuration.longPinMilliseconds = self.longPinMs
        configuration.longPinDevices = self.longPinDevices ?? (shortTerm ? 0 : nil)
        configuration.leaseBreakMilliseconds = self.leaseBreakMs
        configuration.seed = self.seed
        let image = try ScratchImage(self.path, command: "race", force: self.force, defaultPath: Self.defaultPath)
        let report = try RaceRunner.run(
            image: image, size: self.size.bytes, configuration: configuration, keep: self.keep, live: !self.json,
            progressLines: self.progress)
        if self.json {
            try Terminal.printJSON(report)
        } else {
            RaceRunner.printReport(report)
        }
        if !report.held { throw ExitCode(1) }
    }
}

extension RaceCommand {
    /// `--policy odp --devices rdma`: daxlab's RDMA devices pin; what the device answers to an
    /// on-demand-paging registration is the outcome (exit 0 either way, nothing raced).
    func probeOnDemandPaging() throws {
        let port = try RDMAPort(device: self.rdmaDevice)
        let refusal = port.onDemandPagingRefusal()
        if self.json {
            try Terminal.printJSON(OnDemandProbe(
                policy: "odp", devices: "rdma", rdmaDevice: port.name, onDemandPagingRefused: refusal != nil,
                answer: refusal ?? "\(port.name) accepts on-demand-paging registrations"))
        } else {
            Output.print(refusal.map { "policy odp, devices rdma: \($0); nothing raced" }
                ?? "policy odp, devices rdma: \(port.name) accepts on-demand-paging registrations")
        }
        if refusal == nil {
            Terminal.writeStandardError(
                "daxlab race: \(port.name) pages on demand, but daxlab's rdma devices pin: nothing raced "
                    + "(race odp with --devices simulated)\n")
        }
    }
}

/// What `race --policy odp --devices rdma --json` prints: the device's answer.
struct OnDemandProbe: Encodable {
    var policy: String
    var devices: String
    var rdmaDevice: String
    var onDemandPagingRefused: Bool
    var answer: String
    enum CodingKeys: String, CodingKey {
        case policy, devices, answer
        case rdmaDevice = "rdma_device"
        case onDemandPagingRefused = "odp_refused"
    }
}

/// Shared by `race` and `demo`: one run with a progress line and clean-up.
enum RaceRunner {
    static func run(
        image: ScratchImage, size: Int, configuration: RaceConfiguration, keep: Bool, live: Bool,
        progressLines: Bool = false
    ) throws -> RaceReport {
        // A device-dax device is formatted whole, whatever --size says.
        let harness = try RaceHarness(
            path: image.path, size: image.isDevice ? nil : size, configuration: configuration, force: image.formatForce)
        let terminal = live && Terminal.standardOutputIsTerminal
        let report = try harness.run { progress in
            if progressLines {
                Terminal.writeStandardError(String(
                    format: "progress elapsed=%.2f dma_writes=%d truncates=%d stale=%d corrupted=%d limbo=%d\n",
                    progress.elapsed, progress.dmaWrites, progress.truncates, progress.staleDmaWrites,
                    progress.corruptedBlocks, progress.limboBlocks))
            }
            guard terminal else { return }
            let line = String(
                format: "\r[%@ %4.1fs/%gs] writes %d  truncates %d  stale %d  corrupted %d  limbo %d ",
                configuration.policy.rawValue, progress.elapsed, progress.seconds, progress.dmaWrites,
                progress.truncates, progress.staleDmaWrites, progress.corruptedBlocks, progress.limboBlocks)
            Output.print(line, terminator: "")
            _ = CShims_flush_stdout()
        }
        if terminal { Output.print("\r\u{1B}[K", terminator: "") }
        if report.deadlock {
            // Stuck threads still hold the image: report and leave it for inspection.
            image.leave()
            return report
        }
        if !keep { image.remove() }
        return report
    }

    static func printReport(_ report: RaceReport) {
        let latency = report.truncateLatencyUs
        if report.kernelPinRefused {
            Output.print("""
                policy \(report.policy), devices \(report.devices): the kernel REFUSED the long-term pin \
                (EOPNOTSUPP): it does not pin these pages for long (fs-dax), which is mainline's own answer \
                to DMA versus truncate; nothing raced (is_pmem \(report.isPmem), fsck \(report.fsckClean ? "clean" : "NOT clean"))
                """)
            return
        }
        if report.pinsRefused {
            Output.print("""
                policy \(report.policy), devices \(report.devices): long-term pins REFUSED (EOPNOTSUPP, \
                \(report.longTermRefused) of them), as mainline refuses FOLL_LONGTERM on a DAX file; nothing \
                raced (is_pmem \(report.isPmem), fsck \(report.fsckClean ? "clean" : "NOT clean")). Short-term \
                devices race under mainline: --profile short-term
                """)
            return
        }
        Output.print("""
            policy \(report.policy), devices \(report.devices): \
            \(report.held ? "HELD" : (report.corruptionSeen ? "CORRUPTION" : "FAILED")) \
            (\(report.seconds) s, is_pmem \(report.isPmem))
              DMA writes \(report.dmaWrites) in \(report.pins) pins\
            \(report.devices == "simulated" ? "" : " (by the kernel: \(report.kernelWrites) writes, \(report.kernelPins) pins, \(report.kernelFaults) faults served\(report.kernelErrors > 0 ? ", \(report.kernelErrors) I/O errors" : "")\(report.devices == "rdma" ? "; RDMA WRITEs completed \(report.rdmaWrites), failed \(report.rdmaErrors)" : ""))"); \
            leases revoked \(report.revocations), writes refused \(report.revokedDmaWrites)\
            \(report.policy == "odp" ? "; translations invalidated \(report.odpInvalidations), device refaults \(report.deviceRefaults)" : "")
              truncates \(report.truncates): EBUSY \(report.truncatesBusy), waited \(report.truncatesWaited); \
            latency p50 \(format(latency.p50)) p99 \(format(latency.p99)) max \(format(latency.max))
              stale DMA writes \(report.staleDmaWrites), corrupted blocks \(report.corruptedBlocks), \
            leaked blocks \(report.leakedBlocks)
              limbo peak: sequestered \(report.sequesteredBlocksPeak), deferred \(report.deferredBlocksPeak); \
            fsck \(report.fsckClean ? "clean" : "NOT clean")\
            \(report.deadlock ? "; DEADLOCK: no progress from " + report.stuckThreads.joined(separator: ", ") : "")\
            \(report.held ? "" : "\n  violations: " + report.violations.joined(separator: "; "))
            """)
    }

    static func format(_ microseconds: Double) -> String {
        microseconds >= 1000 ? String(format: "%.1f ms", microseconds / 1000) : String(format: "%.0f µs", microseconds)
    }
}
