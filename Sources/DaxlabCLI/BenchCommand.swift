import ArgumentParser
import Bench
import DaxFS
import Foundation
import Race

/// `daxlab bench`: the comparison harness.
struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Time the hot fault and pin paths against the kernel's own and the physical floor.",
        discussion: """
            Every row is measured against a baseline in the same run and reported as a ratio \
            (value / baseline). Rows: fault.hot (vs an array load, vs the kernel's tmpfs read fault), \
            fault.cold_write (vs the kernel's first-touch fault), pin.batch512 (vs atomic inc+dec, \
            vs io_uring buffer registration), pin.single (vs process_vm_writev), pin.batch512 at N \
            threads (vs 1 thread, vs a mutex-and-dictionary pin table), fault.hot at N threads \
            faulting one shared file (vs 1 thread), truncate.wake (vs a condvar \
            wake), dma.copy (vs pmem_memcpy_persist), alloc.block (a write fault maps a zeroed block \
            and a punch frees it; vs pmemobj_alloc+free, vs pmemobj_zalloc+free, and vs \
            floor.persist_alloc_free, the same persists and zeroing alone; and that floor itself vs \
            pmemobj_alloc+free); with the \
            kernel in the loop: fault.mapped_hot (a load through the MMU window vs the same load \
            from an anonymous array), fault.mapped_cold_write (a store into a hole through the \
            window: a userfaultfd fault, daxlab's fault path, mmap; vs the kernel's first-touch \
            fault, vs floor.uffd_mmap, a C userfaultfd handler thread that only maps the page, and \
            vs floor.sigsegv_mmap, the same from a SIGSEGV handler, the fallback's mechanism), \
            fault.mapped_cold_write_2m (64 MiB of holes written in order through the window: a \
            huge fault allocates and maps each 2 MiB at once; vs the kernel's first-touch fault), \
            pin.kernel_longterm (a \
            512-page pin the kernel pins too, io_uring fixed buffer; vs registering anonymous \
            memory), dma.kernel_read_fixed (READ_FIXED into a pinned block vs into anonymous \
            memory); where an RDMA device exists (group rdma, no targets): rdma.write (an RDMA \
            WRITE into a block pinned and registered through daxlab vs into registered anonymous \
            memory) and rdma.register (a 512-page pin the RDMA device registers, ibv_reg_mr, per \
            page, vs registering anonymous memory). Rows that need io_uring, userfaultfd or an \
            RDMA device are left out where there is none, and the report says why. Rows with a physical floor (alloc.block; fault.mapped_cold_write vs \
            tmpfs) carry the floor's own ratio to their \
            baseline (JSON floor_ratio), the best this machine allows: a target the floor misses \
            too reads 'NO, floor'. Method: each row and its baseline run interleaved (A B B A …, 11 pairs of \
            samples after a warm-up); the ratio is the median of the pairs' ratios, shown with their \
            interquartile range, and a row whose range is too wide to judge (straddling the target's \
            bound; without a target, over 25% of the median) is marked ~ and its verdict '?'. A run that had \
            fewer than 1.8 CPUs is flagged, and a threaded row whose threads ran on fewer CPUs than \
            they are (their CPU time over wall time; JSON thread_cpus) gets no verdict. --from FILE --markdown prints a committed run's table \
            for docs/bench.md (--from FILE --plot SVG draws its plot again).
            """
    )

    static let defaultPath = "/dev/shm/daxlab-bench.pmem"

    @Argument(help: "Scratch image (created and removed; a path that exists, other than this default, needs --force). With --plot, PATH.race too.")
    var path: String = BenchCommand.defaultPath
    @Option(name: .long, help: "Thread counts of the scaling rows, comma-separated.") var threads = "1,2"
    @Option(name: .long, help: "Seconds of measurement per row and per baseline.") var seconds: Double = 2
    @Option(name: .long, help: ArgumentHelp("Write the report as JSON to FILE ('-' for stdout).", valueName: "FILE"))
    var json: String?
    @Option(name: .long, help: ArgumentHelp("Write an SVG plot to FILE: pin and fault throughput against threads, truncate latency per policy.", valueName: "FILE"))
    var plot: String?
    @Option(name: .long, help: "Pages of the hot-fault file (the block map's size).") var pages = 65536
    @Option(name: .long, help: ArgumentHelp("Measure nothing: print the table of a report written by --json (a committed run).", valueName: "FILE"))
    var from: String?
    @Flag(name: .long, help: "Print the table as Markdown (docs/bench.md is one).") var markdown = false
    @Flag(name: .long, help: "Format PATH (and PATH.race) even though it exists (its contents are lost; it is not removed afterwards).")
    var force = false
    @Option(name: .long, help: ArgumentHelp(
        "Run only these groups of rows, comma-separated: \(Bench.Group.allCases.map(\.rawValue).joined(separator: ", ")).",
        valueName: "GROUPS"))
    var only: String?

    func validate() throws {
        guard self.seconds.isFinite, self.seconds > 0, self.seconds <= 600 else {
            throw ValidationError("--seconds must be in (0, 600]")
        }
        guard self.parsedThreads != nil else {
            throw ValidationError("--threads must be 1 to 16 counts of 1...256, comma-separated, e.g. 1,2,4")
        }
        guard (512...(1 << 20)).contains(self.pages) else { throw ValidationError("--pages must be 512...1048576") }
        if let only = self.only {
            for name in only.split(separator: ",", omittingEmptySubsequences: false) where Bench.Group(rawValue: String(name)) == nil {
                throw ValidationError(
                    "--only: no group '\(name)' (groups: \(Bench.Group.allCases.map(\.rawValue).joined(separator: ", ")))")
            }
        }
    }

    var parsedThreads: [Int]? {
        let values = self.threads.split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard (1...16).contains(values.count), values.allSatisfy({ (1...256).contains($0 ?? 0) }) else { return nil }
        return values.map { $0! }
    }

    func run() throws {
        if let from = self.from {
            let data = try Self.readReport(from)
            let report: BenchReport
            do { report = try JSONDecoder().decode(BenchReport.self, from: data) } catch {
                throw ValidationError("\(from) is not a report of daxlab bench --json (\(error))")
            }
            if let problem = report.problem {
                throw CommandFailure("\(from) is not a report of daxlab bench --json: \(problem)")
            }
            Output.print(self.markdown ? Self.markdown(report) : Self.table(report))
            if let plot { try OutputFile(plot).write(Array(BenchPlot.svg(report).utf8)) }
            return
        }
        // Before minutes of measuring: an image path that is taken, or a report that cannot be
        // written, is an error now.
        let image = try ScratchImage(self.path, command: "bench", force: self.force, defaultPath: Self.defaultPath)
        let raceImage = try self.plot.map { _ in
            try ScratchImage(self.path + ".race", command: "bench", force: self.force, defaultPath: Self.defaultPath + ".race")
        }
        for file in [self.json, self.plot].compactMap({ $0 }) where file != "-" { try OutputFile(file).checkWritable() }
        var options = Bench.Options()
        options.seconds = self.seconds
        options.threads = Array(Set(self.parsedThreads! + [1])).sorted()
        options.pages = self.pages
        options.groups = self.only.map { Set($0.split(separator: ",").compactMap { Bench.Group(rawValue: String($0)) }) }
        let quiet = self.json == "-"
        let live = !quiet && Terminal.standardOutputIsTerminal
        let bench = try Bench(path: image.path, options: options, force: image.formatForce) { line in
            if !quiet { Output.print((live ? "  " : "") + line) }
        }
        defer { image.remove() }
        var report = try bench.run()
        if let raceImage { report.truncateLatencies = try self.truncateLatencies(image: raceImage, quiet: quiet) }
        if !quiet { Output.print(self.markdown ? Self.markdown(report) : Self.table(report)) }
        if let json = self.json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            let data = try encoder.encode(report)
            if json == "-" {
                Output.print(String(decoding: data, as: UTF8.self))
            } else {
                try OutputFile(json).write(Array(data))
            }
        }
        if let plot { try OutputFile(plot).write(Array(BenchPlot.svg(report).utf8)) }
    }

    /// The largest report `--from` reads (a run's report is tens of KiB).
    static let maxReportBytes = 16 << 20

    /// The bytes of the report file `path`: a regular file of at most `maxReportBytes`.
    /// - Throws: `CommandFailure` saying why it cannot be read.
    static func readReport(_ path: String) throws -> Data {
        // O_NONBLOCK: a FIFO is refused below, not waited on.
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { throw CommandFailure("cannot read \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var status = stat()
        guard fstat(fd, &status) == 0 else {
            throw CommandFailure("cannot read \(path): \(String(cString: strerror(errno)))")
        }
        switch status.st_mode & S_IFMT {
        case S_IFREG: break
        case S_IFDIR: throw CommandFailure("cannot read \(path): is a directory, not a report file")
        default: throw CommandFailure("cannot read \(path): not a regular file")
        }
        guard Int(status.st_size) <= Self.maxReportBytes else {
            throw CommandFailure(
                "cannot read \(path): too large (\(status.st_size) bytes; a report is at most \(Self.maxReportBytes))")
        }
        var data = Data()
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
            if count < 0, errno == EINTR { continue }
            guard count >= 0 else { throw CommandFailure("cannot read \(path): \(String(cString: strerror(errno)))") }
            if count == 0 { return data }
            data.append(contentsOf: chunk[..<count])
            if data.count > Self.maxReportBytes {
                throw CommandFailure("cannot read \(path): too large (a report is at most \(Self.maxReportBytes) bytes)")
            }
        }
    }

    static let percentiles: [Double] = [1, 5, 10, 25, 50, 75, 90, 95, 99, 99.9]

    /// One-second races of each protective policy, for the latency plot.
    private func truncateLatencies(image: ScratchImage, quiet: Bool) throws -> [String: [Double]] {
        var curves: [String: [Double]] = [:]
        for policy in TruncatePolicy.allCases where policy.isProtective {
            var configuration = RaceConfiguration(policy: policy)
            configuration.seconds = min(2, self.seconds)
            configuration.leaseBreakMilliseconds = 1
            // mainline refuses long-term pins (nothing would race): its truncates wait for
            // short-term ones.
            if policy == .mainline { configuration.profile = .shortTerm }
            let harness = try RaceHarness(path: image.path, size: 32 << 20, configuration: configuration, force: image.formatForce)
            let report = try harness.run()
            if report.deadlock { image.leave() } else { image.remove() }
            guard report.truncates > 0 else { continue }  // (no truncate ran: no curve)
            curves[policy.rawValue] = harness.latencyPercentiles(Self.percentiles)
            if !quiet { Output.print("  truncate latency under \(policy): p50 \(curves[policy.rawValue]![4]) us") }
        }
        return curves
    }

    static func table(_ report: BenchReport) -> String {
        var lines = [Self.machineLine(report.machine)]
        if let warning = Self.cpuWarning(report.machine) { lines.append(warning) }
        let header = ["row", "threads", "value", "unit", "baseline", "baseline value", "ratio", "[q1-q3]", "target", "met"]
        var rows = [header]
        for result in report.results {
            rows.append([
                result.name, String(result.threads), Self.number(result.value), result.unit, result.baseline,
                Self.number(result.baselineValue), String(format: "%.3g", result.ratio), Self.spread(result),
                result.target ?? "-", Self.verdict(result),
            ])
        }
        let widths = (0..<header.count).map { column in rows.map { $0[column].count }.max()! }
        for (index, row) in rows.enumerated() {
            let padded = zip(row, widths).map { $0.padding(toLength: $1, withPad: " ", startingAt: 0) }.joined(separator: "  ")
            lines.append(String(padded.reversed().drop { $0 == " " }.reversed()))
            if index == 0 { lines.append(String(repeating: "-", count: lines.last!.count)) }
        }
        lines.append("ratio: median of \(report.results.first?.pairs ?? 0) interleaved pairs; [q1-q3]: their interquartile range; ~: spread too wide to judge")
        lines += Self.notes(report)
        for missing in report.unavailable {
            lines.append("not measured here: \(missing.baseline) (\(missing.reason))")
        }
        return lines.joined(separator: "\n")
    }

    /// The table as Markdown, as docs/bench.md holds it (`--from docs/bench.json --markdown`).
    static func markdown(_ report: BenchReport) -> String {
        var lines = ["Machine: " + String(Self.machineLine(report.machine).dropFirst("machine: ".count))]
        if let warning = Self.cpuWarning(report.machine) { lines += ["", "**\(warning)**"] }
        lines.append("")
        lines.append("| row | threads | value | baseline | baseline value | ratio (median of pairs) | q1–q3 | target | met |")
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for result in report.results {
            let target = result.target.map {
                $0.replacingOccurrences(of: "<=", with: "≤").replacingOccurrences(of: ">=", with: "≥")
            }
            lines.append("| \(result.name) | \(result.threads) | \(Self.number(result.value)) \(result.unit) | \(result.baseline) | "
                + "\(Self.number(result.baselineValue)) | \(String(format: "%.3g", result.ratio)) | \(Self.spread(result)) | "
                + "\(target ?? "–") | \(Self.verdict(result)) |")
        }
        for note in Self.notes(report) { lines += ["", note] }
        for missing in report.unavailable { lines += ["", "Not measured: \(missing.baseline) (\(missing.reason))."] }
        return lines.joined(separator: "\n") + "\n"
    }

    static func machineLine(_ machine: BenchMachine) -> String {
        String(
            format: "machine: %d CPUs%@ (%.2f available while two threads spin), %@, is_pmem %@, kernel %@",
            machine.cpus, machine.cpuModel.map { " (\($0))" } ?? "", machine.cpusAvailable, machine.medium,
            machine.isPmem ? "yes" : "no", machine.kernel)
            + (machine.guestHaltPollNanoseconds.map { $0 == 0 ? ", idle CPUs halt at once (guest_halt_poll_ns 0)" : ", idle CPUs poll \($0) ns before they halt" } ?? "")
    }

    /// A warning when the run did not really have two CPUs: its ratios are less certain.
    static func cpuWarning(_ machine: BenchMachine) -> String? {
        guard machine.cpus >= 2, machine.cpusAvailable < 1.8 else { return nil }
        return String(
            format: "warning: only %.2f CPUs were available (< 1.8): another load shared this machine, ratios are less certain",
            machine.cpusAvailable)
    }

    /// What the table's verdicts cannot say: a "NO, floor", and threaded rows whose threads did
    /// not get their CPUs (no verdict then).
    static func notes(_ report: BenchReport) -> [String] {
        var notes: [String] = []
        let beyond = report.results.filter(\.isBeyondFloor)
        if !beyond.isEmpty {
            let rows = beyond.map { String(format: "%@ (its floor's ratio: %.3g)", $0.name, $0.floorRatio ?? 0) }
            notes.append("NO, floor: the physical floor itself misses the target on this machine: " + rows.joined(separator: ", "))
        }
        for result in report.results {
            let wanted = min(result.threads, report.machine.cpus)
            guard let cpus = result.threadCPUs,
                !BenchResult.ranInParallel(threadCPUs: cpus, threads: result.threads, machineCPUs: report.machine.cpus)
            else { continue }
            notes.append(String(
                format: "%@ at %d threads vs %@: its samples ran on %.2f CPUs, not %d (another load, or the host took CPU time): no verdict",
                result.name, result.threads, result.baseline, cpus, wanted))
        }
        if report.machine.guestHaltPollNanoseconds == 0,
            report.results.contains(where: { $0.name == "fault.mapped_cold_write" && $0.met == false })
        {
            notes.append(
                "fault.mapped_cold_write: this machine's idle CPUs halt at once (guest_halt_poll_ns 0), so each fault's "
                    + "wake-up brings a halted CPU back, and the later it comes the dearer: see docs/benchmarks.md "
                    + "(scripts/bench-haltpoll.sh runs the row with the kernel's default of 200 µs)")
        }
        return notes
    }

    static func spread(_ result: BenchResult) -> String {
        String(format: "%.3g-%.3g", result.ratioLow, result.ratioHigh) + (result.wide ? " ~" : "")
    }

    static func verdict(_ result: BenchResult) -> String {
        guard let met = result.met else { return "-" }
        if result.isBeyondFloor { return "NO, floor" + (result.wide ? "?" : "") }
        return (met ? "yes" : "NO") + (result.wide ? "?" : "")
    }

    static func number(_ value: Double) -> String {
        value >= 1e6 ? String(format: "%.3gM", value / 1e6) : String(format: "%.3g", value)
    }
}
