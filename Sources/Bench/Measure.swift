import CBenchShims
import DaxlabSupport

#if canImport(Glibc)
import Glibc
#endif

/// How a row is measured: a warm-up, then `repetitions` timed runs of about `budget` seconds
/// shared out among them, reporting the median.
struct Measure {
    var budget: Double
    var repetitions = 5

    /// Median ns per unit of `body(count)`, which must do `count` units; the count is tuned in
    /// the warm-up so each repetition lasts about budget / repetitions.
    func nanosecondsPerUnit(_ body: (Int) -> Void) -> Double {
        var count = 16
        // Warm-up and calibration: grow the count until a run takes 5 ms.
        while true {
            let start = MonotonicClock.now()
            body(count)
            let took = MonotonicClock.now() - start
            if took > 5_000_000 || count > 1 << 30 { break }
            count *= 4
        }
        let perRep = max(0.005, self.budget / Double(self.repetitions))
        let start = MonotonicClock.now()
        body(count)
        let unit = Double(MonotonicClock.now() - start) / Double(count)
        let tuned = max(1, Int(perRep * 1e9 / max(unit, 0.01)))
        var samples: [Double] = []
        for _ in 0..<self.repetitions {
            let begin = MonotonicClock.now()
            body(tuned)
            samples.append(Double(MonotonicClock.now() - begin) / Double(tuned))
        }
        return Self.median(samples)
    }

    /// Median of `repetitions` samples of `body()` (each returns a value).
    func median(_ body: () throws -> Double) rethrows -> Double {
        _ = try body()  // warm-up
        return Self.median(try (0..<self.repetitions).map { _ in try body() })
    }

    static func median(_ samples: [Double]) -> Double {
        let sorted = samples.sorted()
        return sorted.isEmpty ? 0 : sorted[sorted.count / 2]
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
