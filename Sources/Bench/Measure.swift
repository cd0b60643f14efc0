import CShims
import DaxFS

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
    func median(_ body: () -> Double) -> Double {
        _ = body()  // warm-up
        return Self.median((0..<self.repetitions).map { _ in body() })
    }

    static func median(_ samples: [Double]) -> Double {
        let sorted = samples.sorted()
        return sorted.isEmpty ? 0 : sorted[sorted.count / 2]
    }


    /// How many CPUs two spinning threads really get: their CPU time over wall time.
    static func availableCPUs(seconds: Double = 0.3) -> Double {
        let wall = UInt64(seconds * 1e9)
        var cpu = [UInt64](repeating: 0, count: 2)
        cpu.withUnsafeMutableBufferPointer { results in
            let base = results.baseAddress!
            let threads = (0..<2).map { index in
                BenchThread.spawn {
                    let start = MonotonicClock.now()
                    let cpuStart = CShims_thread_cpu_ns()
                    var spin: UInt64 = 0
                    while MonotonicClock.now() - start < wall { spin &+= 1 }
                    (base + index).pointee = CShims_thread_cpu_ns() - cpuStart + (spin & 0)
                }
            }
            for thread in threads { pthread_join(thread, nil) }
        }
        return (Double(cpu[0] + cpu[1]) / Double(wall) * 100).rounded() / 100
    }
}

/// Joinable threads for the benchmarks.
enum BenchThread {
    static func spawn(_ body: @escaping () -> Void) -> pthread_t {
        final class Box { let body: () -> Void; init(_ body: @escaping () -> Void) { self.body = body } }
        var thread = pthread_t()
        let context = Unmanaged.passRetained(Box(body)).toOpaque()
        let status = pthread_create(&thread, nil, { context in
            Unmanaged<Box>.fromOpaque(context!).takeRetainedValue().body()
            return nil
        }, context)
        precondition(status == 0, "pthread_create: \(status)")
        return thread
    }
}

/// Keeps a value from being optimised away: the call is opaque to the optimiser.
@inline(never) @_optimize(none)
func blackHole<T>(_ value: T) {}
