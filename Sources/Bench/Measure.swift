import CBenchShims
import DaxlabSupport

#if canImport(Glibc)
import Glibc
#endif

/// How a row is measured against its baseline: interleaved pairs.
///
/// A shared machine's speed drifts over seconds (another guest wakes, the host takes a CPU), so
/// measuring all of A and then all of B compares two different machines. Here the row and its
/// baseline alternate, A B B A A B …, one sample each per pair, and each pair gives one ratio: a
/// drift slower than a sample cancels out of it. The row's ratio is the median of the pairs'
/// ratios, with their interquartile range and extremes as its spread; a row whose spread is too
/// wide to judge is flagged (`Paired.isWide`). Every sample lasts about budget / (2 × pairs).
struct Measure {
    /// Seconds one comparison (both sides) takes, about.
    var budget: Double
    /// Pairs of samples per comparison.
    var pairs = 11

    /// A comparison's outcome: the medians of both sides' samples and the pairs' ratios.
    struct Paired {
        var value: Double
        var baseline: Double
        /// value/baseline of each pair, sorted.
        var ratios: [Double]

        var ratio: Double { Measure.quantile(self.ratios, 0.5) }
        var lowerQuartile: Double { Measure.quantile(self.ratios, 0.25) }
        var upperQuartile: Double { Measure.quantile(self.ratios, 0.75) }

        /// Whether the pairs disagree too much to judge the row: with a target, its bound lies
        /// strictly inside the interquartile range (the middle half of the pairs would give
        /// both verdicts); without one, that range is over a quarter of the median.
        func isWide(bound: Double?) -> Bool {
            let median = self.ratio
            guard median > 0 else { return true }
            if let bound { return self.lowerQuartile < bound && bound < self.upperQuartile }
            return (self.upperQuartile - self.lowerQuartile) / median > 0.25
        }
    }

    /// Interleaves `row` and `baseline`, each a body doing `count` units: both are calibrated
    /// (warm-up included) so a sample lasts its share of the budget, then timed in pairs.
    /// `transform` maps ns per unit to the reported figure (a rate, say) before ratios are taken.
    func interleave(
        _ row: (Int) -> Void, _ baseline: (Int) -> Void, transform: (Double) -> Double = { $0 }
    ) -> Paired {
        let rowCount = self.calibrate(row)
        let baselineCount = self.calibrate(baseline)
        return self.interleave(
            samples: { Self.time(rowCount, row) }, { Self.time(baselineCount, baseline) }, transform: transform)
    }

    /// Interleaves a body doing `count` units with a baseline that times one fixed sample itself.
    func interleave(
        _ row: (Int) -> Void, samples baseline: () throws -> Double, transform: (Double) -> Double = { $0 }
    ) rethrows -> Paired {
        let rowCount = self.calibrate(row)
        return try self.interleave(samples: { Self.time(rowCount, row) }, baseline, transform: transform)
    }

    /// Interleaves two sample functions (each times one sample and returns its figure), after
    /// one untimed warm-up call of each: pair i runs the row first when i is even, the baseline
    /// first when it is odd (A B B A …), so neither side always runs on a cache the other warmed.
    func interleave(
        samples row: () throws -> Double, _ baseline: () throws -> Double, transform: (Double) -> Double = { $0 }
    ) rethrows -> Paired {
        _ = try row()
        _ = try baseline()
        var rows: [Double] = []
        var baselines: [Double] = []
        for pair in 0..<self.pairs {
            if pair % 2 == 0 {
                rows.append(transform(try row()))
                baselines.append(transform(try baseline()))
            } else {
                baselines.append(transform(try baseline()))
                rows.append(transform(try row()))
            }
        }
        let ratios = zip(rows, baselines).map { $1 > 0 ? $0 / $1 : 0 }.sorted()
        return Paired(value: Self.median(rows), baseline: Self.median(baselines), ratios: ratios)
    }

    /// The count that makes one sample of `body` last its share of the budget (after a warm-up
    /// that grows the count until a run takes 5 ms).
    func calibrate(_ body: (Int) -> Void) -> Int {
        var count = 16
        while true {
            let start = MonotonicClock.now()
            body(count)
            let took = MonotonicClock.now() - start
            if took > 5_000_000 || count > 1 << 30 { break }
            count *= 4
        }
        let perSample = max(0.005, self.budget / Double(2 * self.pairs))
        let unit = Self.time(count, body)
        return max(1, Int(perSample * 1e9 / max(unit, 0.01)))
    }

    /// ns per unit of one run of `body(count)`.
    static func time(_ count: Int, _ body: (Int) -> Void) -> Double {
        let start = MonotonicClock.now()
        body(count)
        return Double(MonotonicClock.now() - start) / Double(count)
    }

    static func median(_ samples: [Double]) -> Double { self.quantile(samples.sorted(), 0.5) }

    /// The `q` quantile of sorted `samples` (linear between neighbours).
    static func quantile(_ sorted: [Double], _ q: Double) -> Double {
        guard !sorted.isEmpty else { return 0 }
        let position = q * Double(sorted.count - 1)
        let low = Int(position.rounded(.down))
        let high = min(sorted.count - 1, low + 1)
        return sorted[low] + (sorted[high] - sorted[low]) * (position - Double(low))
    }

    /// How many CPUs two spinning threads really get: their CPU time over wall time.
    static func availableCPUs(seconds: Double = 0.3) throws -> Double {
        let wall = UInt64(seconds * 1e9)
        let cpu = UnsafeMutablePointer<UInt64>.allocate(capacity: 2)
        cpu.initialize(repeating: 0, count: 2)
        defer { cpu.deallocate() }
        do {
            var threads: [JoinableThread] = []
            defer { for thread in threads { thread.join() } }
            for index in 0..<2 {
                threads.append(try BenchThread.spawn(name: "daxlab-spin-\(index)") {
                    let start = MonotonicClock.now()
                    let cpuStart = CBenchShims_thread_cpu_ns()
                    var spin: UInt64 = 0
                    while MonotonicClock.now() - start < wall { spin &+= 1 }
                    (cpu + index).pointee = CBenchShims_thread_cpu_ns() - cpuStart + (spin & 0)
                })
            }
        }
        return (Double(cpu[0] + cpu[1]) / Double(wall) * 100).rounded() / 100
    }
}

/// The benchmarks' threads: named joinable threads whose bodies may share unsynchronised
/// measurement buffers with the caller (each writes its own slot, read after the join).
enum BenchThread {
    static func spawn(name: String, _ body: @escaping () -> Void) throws(SystemCallError) -> JoinableThread {
        nonisolated(unsafe) let body = body
        return try JoinableThread.spawn(name: name) { body() }
    }
}

/// Keeps a value from being optimised away: the call is opaque to the optimiser.
@inline(never) @_optimize(none)
func blackHole<T>(_ value: T) {}
