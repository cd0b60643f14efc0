import Atomics
import Dispatch
import DAX
import DMA
import DaxFS
import Histogram
import Pmem

#if canImport(Glibc)
import Glibc
#endif

/// One race run on a freshly formatted, mounted image: DMA devices pin ranges of shared files
/// and write tagged blocks into them, truncaters cut and punch those files under the policy,
/// writers allocate and write blocks of their own files (so freed blocks are reused at once),
/// and a verifier checks the writers' files as it goes. The oracle counts what went wrong; at
/// the end every thread stops, the files are verified once more, leaks are counted, the image
/// is unmounted and fsck'd.
public final class RaceHarness: @unchecked Sendable {
    // Set in init; threads share them read-only, or through atomics and locks.
    public let configuration: RaceConfiguration
    let fs: FileSystem
    let dax: DAXFileSystem
    let oracle: Oracle
    let sharedFiles: [FileID]
    let writers: [Writer]
    let stop = ManagedAtomic<Bool>(false)
    let truncates = ManagedAtomic<Int>(0)
    let busy = ManagedAtomic<Int>(0)
    let writerWrites = ManagedAtomic<Int>(0)
    let latencies = Locked(Histogram<UInt64>(highestTrackableValue: 3_600_000_000, numberOfSignificantValueDigits: .three))

    /// Formats `path` and mounts it with the DAX layer under `configuration.policy`.
    /// - Parameter size: the image size when `path` must be created; nil takes an existing file's
    ///   size, and a device-dax device is always used whole.
    public init(path: String, size: Int?, configuration: RaceConfiguration, force: Bool) throws(FSError) {
        self.configuration = configuration
        _ = try FileSystem.format(path: path, size: size, force: force)
        self.fs = try FileSystem.mount(path: path)
        self.dax = DAXFileSystem(
            fs: self.fs, policy: configuration.policy,
            times: PolicyTimes(leaseBreakTime: .microseconds(Int64(configuration.leaseBreakMilliseconds * 1000))))
        self.oracle = Oracle(fs: self.fs)
        var shared: [FileID] = []
        for index in 0..<max(2, configuration.dmaThreads) {
            let file = try self.fs.create("shared-\(index)")
            try self.fs.truncate(file, size: configuration.filePages * 4096)
            shared.append(file)
        }
        self.sharedFiles = shared
        var writers: [Writer] = []
        for index in 0..<configuration.writers {
            let file = try self.fs.create("writer-\(index)")
            try self.fs.truncate(file, size: configuration.writerPages * 4096)
            writers.append(Writer(index: index, file: file, pages: configuration.writerPages))
        }
        self.writers = writers
    }

    public var isPmem: Bool { self.fs.mapping.isPmem }

    /// Truncate latency (µs) at each of `percentiles`, after `run()`: for plots.
    public func latencyPercentiles(_ percentiles: [Double]) -> [Double] {
        let histogram = self.latencies.withLock { $0 }
        guard histogram.totalCount > 0 else { return percentiles.map { _ in 0 } }
        return percentiles.map { Double(histogram.valueAtPercentile($0)) / 1000 }
    }

    /// Runs the race for the configured time and returns what the oracle found.
    /// - Parameter progress: called about four times a second from the watchdog thread.
    public func run(progress: (@Sendable (RaceProgress) -> Void)? = nil) -> RaceReport {
        let config = self.configuration
        let engine = DMAEngine(
            dax: self.dax, files: self.sharedFiles,
            configuration: DMAConfiguration(
                devices: config.dmaThreads,
                pinDuration: .microseconds(Int64(config.pinMilliseconds * 1000)), pagesPerPin: 1...8,
                seed: config.seed),
            observer: self.oracle)
        let started = MonotonicClock.now()
        engine.start()
        var threads: [pthread_t] = []
        for index in 0..<config.truncaters {
            threads.append(spawnThread { self.truncateLoop(index) })
        }
        for writer in self.writers {
            threads.append(spawnThread { self.writeLoop(writer) })
        }
        threads.append(spawnThread { self.verifyLoop() })

        // Watchdog and progress, on this thread.
        var lastProgress = -1
        var lastChange = MonotonicClock.now()
        var deadlock = false
        while true {
            usleep(250_000)
            let now = MonotonicClock.now()
            let elapsed = Double(now - started) / 1e9
            let made = engine.statistics.cycles.load(ordering: .relaxed) + self.truncates.load(ordering: .relaxed)
                + self.writerWrites.load(ordering: .relaxed)
            if made != lastProgress {
                lastProgress = made
                lastChange = now
            } else if Double(now - lastChange) / 1e9 >= config.watchdogSeconds {
                deadlock = true
                break
            }
            progress?(RaceProgress(
                elapsed: elapsed, seconds: config.seconds, dmaWrites: self.oracle.landedWrites.load(ordering: .relaxed),
                truncates: self.truncates.load(ordering: .relaxed),
                staleDmaWrites: self.oracle.staleWrites.load(ordering: .relaxed),
                corruptedBlocks: self.oracle.corruptedBlocks))
            if elapsed >= config.seconds { break }
        }
        self.stop.store(true, ordering: .relaxed)
        let elapsed = Double(MonotonicClock.now() - started) / 1e9
        if deadlock {
            // Threads are stuck: report without joining them, and without touching the image.
            return self.report(engine: engine, elapsed: elapsed, leaked: 0, fsckClean: false, deadlock: true)
        }
        // Stopping is watched too: a thread stuck in the policy would hang the joins.
        let joined = DispatchSemaphore(value: 0)
        let joinedThreads = threads
        let stopper = spawnThread {
            engine.stop()
            for thread in joinedThreads { pthread_join(thread, nil) }
            joined.signal()
        }
        if joined.wait(timeout: .now() + config.watchdogSeconds) == .timedOut {
            return self.report(engine: engine, elapsed: elapsed, leaked: 0, fsckClean: false, deadlock: true)
        }
        pthread_join(stopper, nil)
        self.verifyWriters()
        self.verifySharedFiles()
        let leaked = self.countLeaks()
        let fsckClean: Bool
        do {
            try self.fs.unmount()
            fsckClean = try Fsck.run(path: self.fs.path).isClean
        } catch {
            fsckClean = false
        }
        return self.report(engine: engine, elapsed: elapsed, leaked: leaked, fsckClean: fsckClean, deadlock: false)
    }

    private func report(engine: DMAEngine, elapsed: Double, leaked: Int, fsckClean: Bool, deadlock: Bool) -> RaceReport {
        let histogram = self.latencies.withLock { $0 }
        let stats = self.dax.statistics
        func microseconds(_ value: UInt64) -> Double { (Double(value) / 1000).rounded() / 1 }
        return RaceReport(
            policy: self.configuration.policy.rawValue, seconds: (elapsed * 10).rounded() / 10, isPmem: self.isPmem,
            dmaWrites: self.oracle.landedWrites.load(ordering: .relaxed),
            pins: engine.statistics.pins.load(ordering: .relaxed), truncates: self.truncates.load(ordering: .relaxed),
            truncatesBusy: self.busy.load(ordering: .relaxed),
            truncatesWaited: stats.truncatesWaited.load(ordering: .relaxed),
            truncateLatencyUs: RaceReport.Latency(
                p50: histogram.totalCount == 0 ? 0 : microseconds(histogram.valueAtPercentile(50)),
                p99: histogram.totalCount == 0 ? 0 : microseconds(histogram.valueAtPercentile(99)),
                max: histogram.totalCount == 0 ? 0 : microseconds(histogram.maxRecorded)),
            staleDmaWrites: self.oracle.staleWrites.load(ordering: .relaxed),
            corruptedBlocks: self.oracle.corruptedBlocks, leakedBlocks: leaked,
            revokedDmaWrites: self.oracle.refusedWrites.load(ordering: .relaxed),
            sequesteredBlocksPeak: stats.sequesteredPeak.load(ordering: .relaxed),
            deferredBlocksPeak: stats.deferredPeak.load(ordering: .relaxed), fsckClean: fsckClean, deadlock: deadlock)
    }
}
