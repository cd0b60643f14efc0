import DaxFS

/// One row of `daxlab bench`: a measurement and its baseline from the same run.
public struct BenchResult: Sendable, Codable, Equatable {
    public var name: String
    public var unit: String
    public var threads: Int
    public var value: Double
    public var baseline: String
    public var baselineThreads: Int
    public var baselineValue: Double
    /// The median of the pairs' ratios (row sample / baseline sample, measured interleaved).
    public var ratio: Double
    /// The pairs' ratios: interquartile range and extremes.
    public var ratioLow: Double
    public var ratioHigh: Double
    public var ratioMin: Double
    public var ratioMax: Double
    public var pairs: Int
    /// The spread is too wide to judge the row (see `Measure.Paired.isWide`).
    public var wide: Bool
    /// `lower` or `higher`: which way is better for `value`.
    public var better: String
    /// The target from the issue, as a ratio bound, and whether this run met it (nil: no target).
    public var target: String?
    public var met: Bool?
    /// Where the row has a physical floor measured against the same baseline in the same run: the
    /// floor's own ratio, the best this machine allows (nil: no floor row). A target the floor
    /// misses too cannot be met here by any code that keeps the floor's work.
    public var floorRatio: Double?
    /// For a row of N threads: the CPUs its N-thread samples really ran on (median over samples;
    /// nil for other rows). Below 1.8 for 2 threads, the row has no target (the host took a CPU).
    public var threadCPUs: Double?
    /// What the row measured that its name does not say (nil: nothing): floor.persist_alloc_free's
    /// arrangement of the zeroing, the faster of two on this machine.
    public var note: String?

    /// The target is missed and so is it by the floor: beyond this machine, not the code.
    public var isBeyondFloor: Bool { self.met == false && self.floorMet == false }
    /// Whether `threads` threads that ran on `threadCPUs` CPUs (their CPU time over wall time) had
    /// the CPUs a machine of `machineCPUs` could give them: 0.9 of each. Short of that, a threaded
    /// row gets no verdict.
    public static func ranInParallel(threadCPUs: Double, threads: Int, machineCPUs: Int) -> Bool {
        threadCPUs >= 0.9 * Double(min(threads, machineCPUs))
    }

    /// Whether the floor's ratio meets the target (nil: no target or no floor).
    public var floorMet: Bool? {
        guard let floorRatio, let target else { return nil }
        return Bench.Target(text: target)?.isMet(floorRatio)
    }

    enum CodingKeys: String, CodingKey {
        case name, unit, threads, value, baseline
        case baselineThreads = "baseline_threads"
        case baselineValue = "baseline_value"
        case ratio
        case ratioLow = "ratio_q1"
        case ratioHigh = "ratio_q3"
        case ratioMin = "ratio_min"
        case ratioMax = "ratio_max"
        case pairs, wide, better, target, met
        case floorRatio = "floor_ratio"
        case threadCPUs = "thread_cpus"
        case note
    }
}

/// The machine a run measured.
public struct BenchMachine: Sendable, Codable, Equatable {
    public var cpus: Int
    /// CPUs this process really got while two threads spun (these VMs do not always get both):
    /// the lower of the measurements before and after the rows.
    public var cpusAvailable: Double
    public var medium: String
    public var isPmem: Bool
    public var kernel: String
    /// The CPU's model name (nil in runs from before it was recorded, or where the kernel does
    /// not say): ratios of rows made of atomics differ by CPU (see docs/benchmarks.md, "Other machines").
    public var cpuModel: String?
    /// How long an idle CPU of this (virtual) machine polls before it halts, where the kernel's
    /// haltpoll idle governor runs it (nil elsewhere, and in runs from before it was recorded).
    /// 0 (halt at once) makes every wake-up of a sleeping thread on another CPU bring a halted
    /// vCPU back: the window's 4 KiB fault pays that once per fault.
    public var guestHaltPollNanoseconds: Int?

    enum CodingKeys: String, CodingKey {
        case cpuModel = "cpu_model"
        case guestHaltPollNanoseconds = "guest_halt_poll_ns"
        case cpus
        case cpusAvailable = "cpus_available"
        case medium
        case isPmem = "is_pmem"
        case kernel
    }
}

/// A baseline the machine could not measure, and why.
public struct UnavailableBaseline: Sendable, Codable, Equatable {
    public var baseline: String
    public var reason: String
}

/// What `daxlab bench --json` writes.
public struct BenchReport: Sendable, Codable, Equatable {
    public var machine: BenchMachine
    public var results: [BenchResult]
    /// Baselines left out, with the reason (empty when every one ran).
    public var unavailable: [UnavailableBaseline]
    /// Truncate-and-return latency samples per policy (µs), for the plot.
    public var truncateLatencies: [String: [Double]]?

    enum CodingKeys: String, CodingKey {
        case machine, results, unavailable
        case truncateLatencies = "truncate_latencies_us"
    }
}

extension BenchReport {
    /// The most threads a row may have run on (`daxlab bench --threads` takes 1...256).
    public static let threadRange = 1...256
    /// The halt polling a machine line may claim (0 to an hour, in ns).
    public static let haltPollRange = 0...3_600_000_000_000
    /// The most CPUs a machine line may claim.
    public static let cpuRange = 1...65536
    /// The largest number a report may hold: far above any rate, time or ratio a run measures,
    /// and small enough that the plot's scaling of it stays finite.
    public static let largestNumber = 1e18

    /// What is wrong with a report read back (`bench --from`), for one line of error: the first
    /// field no run of `daxlab bench` writes (a count out of its range, a number that is not
    /// finite, negative or over `largestNumber`, an unknown verdict word or policy). nil when
    /// every field is in range.
    public var problem: String? {
        let machine = self.machine
        if !Self.cpuRange.contains(machine.cpus) {
            return "machine.cpus \(machine.cpus) is not in \(Self.cpuRange)"
        }
        if let bad = Self.badNumber(machine.cpusAvailable) { return "machine.cpus_available \(bad)" }
        if let poll = machine.guestHaltPollNanoseconds, !Self.haltPollRange.contains(poll) {
            return "machine.guest_halt_poll_ns \(poll) is not in \(Self.haltPollRange)"
        }
        for (index, result) in self.results.enumerated() {
            let row = "results[\(index)] (\(result.name))"
            for (key, threads) in [("threads", result.threads), ("baseline_threads", result.baselineThreads)]
            where !Self.threadRange.contains(threads) {
                return "\(row): \(key) \(threads) is not in \(Self.threadRange)"
            }
            let numbers: [(String, Double?)] = [
                ("value", result.value), ("baseline_value", result.baselineValue), ("ratio", result.ratio),
                ("ratio_q1", result.ratioLow), ("ratio_q3", result.ratioHigh), ("ratio_min", result.ratioMin),
                ("ratio_max", result.ratioMax), ("floor_ratio", result.floorRatio), ("thread_cpus", result.threadCPUs),
            ]
            for case let (key, number?) in numbers {
                if let bad = Self.badNumber(number) { return "\(row): \(key) \(bad)" }
            }
            if result.pairs < 0 { return "\(row): pairs \(result.pairs) is negative" }
            if !["lower", "higher"].contains(result.better) {
                return "\(row): better is \"\(result.better)\", not \"lower\" or \"higher\""
            }
            if let target = result.target, !(Bench.Target(text: target).map { $0.bound.isFinite } ?? false) {
                return "\(row): target \"\(target)\" is not a bound such as \"<= 1/2\" or \">= 0.9\""
            }
        }
        for (policy, latencies) in (self.truncateLatencies ?? [:]).sorted(by: { $0.key < $1.key }) {
            guard TruncatePolicy(rawValue: policy) != nil else {
                return "truncate_latencies_us: \"\(policy)\" is not a policy"
            }
            for latency in latencies {
                if let bad = Self.badNumber(latency) { return "truncate_latencies_us.\(policy): \(bad)" }
            }
        }
        return nil
    }

    /// Why `number` cannot be a measurement (nil when it can): not finite, negative or too large.
    private static func badNumber(_ number: Double) -> String? {
        if !number.isFinite { return "is not a finite number" }
        if number < 0 { return "\(number) is negative" }
        if number > Self.largestNumber { return "\(number) is over \(Self.largestNumber)" }
        return nil
    }
}
