import Benchmark
import DAX
import DaxFS

/// The hot paths allocate nothing. The framework itself allocates ~16-20 times per sample (the
/// "empty" benchmark shows it), so each hot-path benchmark does 1000 operations per sample and
/// its threshold is that overhead: one malloc per operation would show 1000 more.
let benchmarks: @Sendable () -> Void = {
    let zeroMallocs = Benchmark.Configuration(
        metrics: [.wallClock, .cpuTotal, .mallocCountTotal, .throughput],
        thresholds: [.mallocCountTotal: .init(absolute: [.p100: 32])])
    let timed = Benchmark.Configuration(metrics: [.wallClock, .cpuTotal, .mallocCountTotal, .throughput])
    let fixture = Fixture.shared
    _ = try? fixture.pins.pin(0..<512, write: true).unpin()  // warm the batch pool

    Benchmark("empty (x1000): the framework's own mallocs per sample", configuration: zeroMallocs) { benchmark in
        for _ in benchmark.scaledIterations {
            for page in 0..<1000 { blackHole(page) }
        }
    }

    Benchmark("fault.hot.read (x1000)", configuration: zeroMallocs) { benchmark in
        for _ in benchmark.scaledIterations {
            for page in 0..<1000 { blackHole(try fixture.hot.fault(page, write: false)) }
        }
    }

    Benchmark("fault.hot.write (x1000)", configuration: zeroMallocs) { benchmark in
        for _ in benchmark.scaledIterations {
            for page in 0..<1000 { blackHole(try fixture.hot.fault(page, write: true)) }
        }
    }

    Benchmark("fault.cold_write (64 pages)", configuration: timed) { benchmark in
        let (file, space) = fixture.cold
        for _ in benchmark.scaledIterations {
            try fixture.fs.truncate(file, size: 0)
            try fixture.fs.truncate(file, size: 64 * 4096)
            benchmark.startMeasurement()
            for page in 0..<64 { blackHole(try space.fault(page, write: true)) }
            benchmark.stopMeasurement()
        }
    }

    Benchmark("pin.single (pin+unpin, x1000)", configuration: zeroMallocs) { benchmark in
        for _ in benchmark.scaledIterations {
            for page in 0..<1000 { try fixture.pins.pin((page & 511)..<((page & 511) + 1), write: true).unpin() }
        }
    }

    Benchmark("pin.batch512 (pin+unpin)", configuration: zeroMallocs) { benchmark in
        for _ in benchmark.scaledIterations { try fixture.pins.pin(0..<512, write: true).unpin() }
    }

    Benchmark("block alloc+free from the reserve (fault page 12, punch it; x1000)", configuration: zeroMallocs) {
        benchmark in
        let (file, space) = fixture.alloc
        for _ in benchmark.scaledIterations {
            for _ in 0..<1000 {
                blackHole(try space.fault(12, write: true))
                try fixture.fs.punchHole(file, offset: 12 * 4096, length: 4096)
            }
        }
    }

    Benchmark("block alloc+free (write fault on a hole, punch)", configuration: timed) { benchmark in
        let (file, space) = fixture.alloc
        for _ in benchmark.scaledIterations {
            blackHole(try space.fault(0, write: true))
            try fixture.fs.punchHole(file, offset: 0, length: 4096)
        }
    }

    Benchmark("lease add/remove (pin+unpin of 1 page, lease list)", configuration: timed) { benchmark in
        for _ in benchmark.scaledIterations {
            let handle = try fixture.pins.pin(0..<1, write: true)
            blackHole(fixture.pins.leaseList.count)
            handle.unpin()
        }
    }

    Benchmark("truncate of an unpinned 2 MiB range", configuration: timed) { benchmark in
        let (file, space) = fixture.truncated
        for _ in benchmark.scaledIterations {
            try fixture.fs.truncate(file, size: 1024 * 4096)
            for page in 512..<1024 { _ = try space.fault(page, write: true) }
            benchmark.startMeasurement()
            try fixture.fs.truncate(file, size: 512 * 4096)
            benchmark.stopMeasurement()
        }
    }
}
