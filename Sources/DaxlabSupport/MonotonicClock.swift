#if canImport(Glibc)
import Glibc
#endif

/// CLOCK_MONOTONIC in nanoseconds: for deadlines, latencies and benchmarks across the package.
package enum MonotonicClock {
    @inline(__always)
    package static func now() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
    }

    /// Nanoseconds since `start` (a `now()` reading), as seconds.
    package static func seconds(since start: UInt64) -> Double {
        Double(Self.now() &- start) / 1e9
    }
}

extension Duration {
    /// The duration in whole nanoseconds (negative durations count as zero).
    package var nanoseconds: UInt64 {
        let (seconds, attoseconds) = self.components
        return UInt64(max(0, seconds)) * 1_000_000_000 + UInt64(max(0, attoseconds) / 1_000_000_000)
    }

    /// `milliseconds` (a finite, non-negative number) as a duration, to the microsecond.
    package static func milliseconds(_ milliseconds: Double) -> Duration {
        .microseconds(Int64((milliseconds * 1000).rounded()))
    }
}
