import ArgumentParser
import CShims
import CrashCampaign
import DaxFS
import DaxlabSupport
import Foundation

#if canImport(Glibc)
import Glibc
import Pmem
#endif

/// `daxlab crash-test`: the crash campaign. Runs a mixed workload in a child process, kills it
/// (SIGKILL, from its `CrashInjector`) at many persist points, then checks that every recovered
/// image mounts, is fsck-clean, and holds every operation that returned before the crash.
struct CrashTestCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "crash-test",
        abstract: "Crash a workload at many persist points and check every recovered image.",
        discussion: """
            A dry run counts the workload's persist points (each barrier after a flush); then for \
            each of --points points spread over them, a fresh image is formatted, a child process \
            runs the workload and kills itself at that point. The child mirrors \
            every drained flush into a shadow image and, at the crash, only a random half of the \
            cache lines still in flight: what power loss would leave. The shadow is mounted \
            (recovery), compared with a model of the operations the child completed, and fsck'd. \
            With --seeds N the campaign runs N workloads (seeds S, S+1, ... S+N-1, each with \
            --points points): a fixed seed hides what the next one shows. A failure names its seed \
            and point: `--seed S --seeds 1` reproduces it. Exit 0 when every crash recovered; 1 \
            otherwise.
            """
    )

    @Option(name: .long, help: "Crash points to test.") var points = 200
    @Option(name: .long, help: "Operations in the workload.") var ops = 150
    @Option(name: .long, help: "Workload seed (the first, with --seeds).") var seed: UInt64 = 1
    @Option(name: .long, help: "How many workloads, of seeds --seed, --seed + 1, ...") var seeds = 1
    @Option(name: .long, help: "Image size.") var size = ByteSize(bytes: 16 << 20)
    @Option(name: .long, help: "Where the scratch folder (images, journals) goes: tmpfs by default.")
    var directory = "/dev/shm"
    @Flag(name: .long, help: "Print one JSON object.") var json = false

    // The child's side (internal).
    @Flag(name: .long, help: .hidden) var child = false
    @Option(name: .long, help: .hidden) var image: String?
    @Option(name: .long, help: .hidden) var journal: String?
    @Option(name: .customLong("crash-at"), help: .hidden) var crashAt: Int?
    @Option(name: .long, help: .hidden) var shadow: String?
    @Option(name: .long, help: .hidden) var parent: Int32?

    struct Report: Codable {
        /// The workloads' seeds.
        var seeds: [UInt64]
        /// Crash points over all seeds.
        var points: Int
        var totalPersistPoints: Int
        var operations: Int
        var recovered: Int
        var replayedTransactions: Int
        var failures: [String]
    }

    func validate() throws {
        guard (1...100_000).contains(self.points) else { throw ValidationError("--points must be 1...100000") }
        guard (1...100_000).contains(self.ops) else { throw ValidationError("--ops must be 1...100000") }
        guard (1...10_000).contains(self.seeds) else { throw ValidationError("--seeds must be 1...10000") }
        guard self.seed <= UInt64.max - UInt64(self.seeds) else { throw ValidationError("--seed + --seeds is past 2^64") }
        guard (4 << 20...(1 << 30)).contains(self.size.bytes), self.size.bytes % pageSize == 0 else {
            throw ValidationError("--size must be 4M...1G, a multiple of 4 KiB")
        }
    }

    func run() throws {
        if self.child { return try self.runChild() }
        // Everything in a private folder (mode 0700): no planted link can redirect a write, and
        // an interrupt removes it all (and kills the child: children die with their parent).
        let scratch = try ScratchDirectory(in: self.directory, prefix: "daxlab-crash-")
        let running = Locked<pid_t>(0, rank: .crashChild)
        scratch.stopOnSignal {
            // After the handler recorded the signal: a child spawned before is killed here, and
            // none is spawned after (spawnChild checks under the same lock).
            let pid = running.withLock { $0 }
            if pid > 0 { kill(pid, SIGKILL) }
        }
        defer { scratch.remove() }
        let image = scratch.path + "/image"
        let durable = scratch.path + "/durable"
        var runs = 0
        func journal() -> String { "\(scratch.path)/journal-\(runs)" }
        let seeds = (0..<self.seeds).map { self.seed + UInt64($0) }
        var report = Report(
            seeds: seeds, points: 0, totalPersistPoints: 0, operations: self.ops, recovered: 0,
            replayedTransactions: 0, failures: [])
        let live = !self.json && Terminal.standardOutputIsTerminal
        for seed in seeds {
            // Dry run: how many persist points the whole workload passes.
            _ = try FileSystem.format(path: image, size: self.size.bytes, force: true)
            runs += 1
            let dry = try self.spawnChild(
                seed: seed, image: image, journal: journal(), crashAt: nil, shadow: nil, running: running, scratch: scratch)
            guard dry.status == 0, let total = self.readJournal(journal()).points else {
                throw CommandFailure("seed \(seed): the workload failed without a crash: \(dry.error)", status: 1)
            }

            let chosen = Self.spread(self.points, over: total, seed: seed)
            report.points += chosen.count
            report.totalPersistPoints += total
            for (index, point) in chosen.enumerated() {
                try scratch.checkSignal()
                _ = try FileSystem.format(path: image, size: self.size.bytes, force: true)
                unlink(durable)
                try ScratchDirectory.copy(image, to: durable)
                unlink(journal())
                runs += 1
                let outcome = try self.spawnChild(
                    seed: seed, image: image, journal: journal(), crashAt: point, shadow: durable, running: running,
                    scratch: scratch)
                let completed = self.readJournal(journal()).completed
                var problems: [String] = []
                if outcome.status != 128 + SIGKILL {
                    problems.append("child exited with \(outcome.status), not SIGKILL: \(outcome.error)")
                }
                do {
                    // What power loss at that point would have left: the durable shadow.
                    let (replayed, differences) = try self.verify(seed: seed, image: durable, completed: completed)
                    report.replayedTransactions += replayed
                    problems += differences
                } catch {
                    problems.append("\(error)")
                }
                if problems.isEmpty {
                    report.recovered += 1
                } else {
                    report.failures.append(
                        "seed \(seed): crash at point \(point) after \(completed) ops: " + problems.joined(separator: "; "))
                }
                if live {
                    Output.print(
                        "\r[seed \(seed): \(index + 1)/\(chosen.count)] point \(point): \(problems.isEmpty ? "ok" : "FAILED")  ",
                        terminator: "")
                    fflush(nil)
                }
            }
        }
        if live { Output.print("") }
        if self.json {
            try Terminal.printJSON(report)
        } else {
            for failure in report.failures.prefix(20) { Output.print(failure) }
            let which = seeds.count == 1 ? "seed \(self.seed)" : "seeds \(seeds[0])...\(seeds[seeds.count - 1])"
            Output.print("crash-test: \(report.recovered)/\(report.points) crashes recovered (\(which): points spread over "
                  + "\(report.totalPersistPoints) persist points of \(self.ops) operations each; \(report.replayedTransactions) "
                  + "log transactions replayed)")
        }
        if !report.failures.isEmpty { throw ExitCode(1) }
    }

    /// Mounts the crashed image, compares it with the model, unmounts and fscks.
    private func verify(seed: UInt64, image: String, completed: Int) throws -> (Int, [String]) {
        var workload = CrashWorkload(seed: seed)
        for _ in 0..<completed { workload.apply(workload.next()) }
        let inFlight = completed < self.ops ? workload.next() : nil
        let fs = try FileSystem.mount(path: image)
        var differences = CrashWorkload.compare(
            fs, before: workload.model, faulted: workload.faulted, inFlight: inFlight)
        let replayed = fs.mountReport.replayedTransactions
        try fs.unmount()
        let fsck = try Fsck.run(path: image)
        if !fsck.isClean {
            differences.append("fsck: " + fsck.result.problems.prefix(3).map(\.description).joined(separator: ", "))
        }
        return (replayed, differences)
    }

    private func runChild() throws {
        guard let image = self.image, let journal = self.journal else { throw CommandFailure("--child needs --image and --journal") }
        // Die with the parent, and not at all if it is already gone.
        _ = CShims_die_with_parent(SIGKILL)
        if let parent = self.parent, getppid() != parent { throw CommandFailure("the crash-test parent is gone") }
        let fd = open(journal, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_APPEND | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw CommandFailure("\(journal): cannot create: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        func note(_ line: String) {
            var text = line + "\n"
            text.withUTF8 { _ = write(fd, $0.baseAddress, $0.count) }
        }
        let injector = try CrashInjector(image: image, shadow: self.shadow, crashAt: self.crashAt)
        let fs = try FileSystem.mount(path: image, persistence: nil, persistObserver: injector)
        var workload = CrashWorkload(seed: self.seed)
        for index in 0..<self.ops {
            let operation = workload.next()
            try CrashWorkload.perform(operation, on: fs)
            workload.apply(operation)
            note("op \(index + 1)")
        }
        try fs.unmount()
        note("points \(injector.persistPoints)")
    }

    private func readJournal(_ path: String) -> (completed: Int, points: Int?) {
        let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        var completed = 0
        var points: Int?
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: " ")
            guard parts.count == 2, let value = Int(parts[1]) else { continue }
            if parts[0] == "op" { completed = value } else if parts[0] == "points" { points = value }
        }
        return (completed, points)
    }

    private func spawnChild(
        seed: UInt64, image: String, journal: String, crashAt: Int?, shadow: String?, running: Locked<pid_t>,
        scratch: ScratchDirectory
    ) throws -> (status: Int32, error: String) {
        let arguments = [
            "daxlab", "crash-test", "--child", "--image", image, "--journal", journal, "--seed", String(seed),
            "--ops", String(self.ops), "--parent", String(getpid()),
        ] + (crashAt.map { ["--crash-at", String($0)] } ?? []) + (shadow.map { ["--shadow", $0] } ?? [])
        // Spawned and registered under the lock the signal handler kills under: a signal either
        // finds this child registered or stops it from being spawned.
        let child = try running.withLock { pid in
            try scratch.checkSignal()
            let child = try Subprocess("/proc/self/exe", arguments)
            pid = child.pid
            return child
        }
        defer { running.withLock { $0 = 0 } }
        let (status, errors) = child.wait()
        try scratch.checkSignal()  // killed by the handler: the run stops, it is no crash to verify
        return (status, errors)
    }

    /// `count` distinct points in 1...total, evenly spread with a seeded jitter.
    static func spread(_ count: Int, over total: Int, seed: UInt64) -> [Int] {
        guard total > count else { return Array(1...max(total, 1)) }
        let step = Double(total) / Double(count)
        var jitter = SplitMix64(seed: seed)
        return (0..<count).map { index in
            let offset = Int(Double(jitter.next() >> 11) / Double(1 << 53) * step)
            return min(total, 1 + Int(Double(index) * step) + offset)
        }
    }
}
