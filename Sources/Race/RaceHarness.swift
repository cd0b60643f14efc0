import Atomics
import DAX
import DMA
@_spi(Oracle) import DaxFS
import DaxlabSupport
import Histogram

#if canImport(Glibc)
import Glibc
import Pmem
#endif

/// One race run on a freshly formatted, mounted image.
///
/// First the race is made to happen once on purpose (`collide`): a device pins a range of a
/// shared file and holds it until a truncate over that range has reached its policy's decision,
/// then writes into its blocks again. Then the statistical phase: DMA devices pin ranges of
/// shared files and write tagged blocks into them, truncaters cut and punch those files under
/// the policy, writers allocate and write blocks of their own files (so freed blocks are reused
/// at once), and a verifier checks the writers' files as it goes. The oracle counts what went
/// wrong; at the end every thread stops, the files are verified once more, leaks are counted,
/// the image is unmounted and fsck'd.
///
/// Threads: `daxlab-dma-N` (devices), `daxlab-trunc-N`, `daxlab-writer-N`, `daxlab-verify`,
/// `daxlab-collide` (the first truncate), `daxlab-stopper`, and the DAX layer's `daxlab-reclaim`;
/// the watchdog runs on the caller's thread.
public final class RaceHarness: @unchecked Sendable {
    // Set in init; threads share them read-only, or through atomics and locks.
    public let configuration: RaceConfiguration
    let fs: FileSystem
    let dax: DAXFileSystem
    let oracle: Oracle
    let sharedFiles: [FileID]
    let writers: [Writer]
    /// The writer whose file takes the blocks the collision's truncate freed (policy none).
    let collisionWriter: Writer
    let stop = ManagedAtomic<Bool>(false)
    let truncates = ManagedAtomic<Int>(0)
    let busy = ManagedAtomic<Int>(0)
    let writerWrites = ManagedAtomic<Int>(0)
    let truncaterProgress: [ManagedAtomic<Int>]
    let verifierProgress = ManagedAtomic<Int>(0)
    /// The collision's device and its counters, and the engine whose devices race after it.
    let collisionStatistics = DMAStatistics()
    let collisionDevice: DMADevice
    let engine: DMAEngine
    let latencies = Locked(
        Histogram<UInt64>(highestTrackableValue: 3_600_000_000, numberOfSignificantValueDigits: .three), rank: .raceLatencies)

    /// Formats `path` and mounts it with the DAX layer under `configuration.policy`, and makes
    /// the devices.
    /// - Parameter size: the image size when `path` must be created; nil takes an existing file's
    ///   size, and a device-dax device is always used whole.
    /// - Throws: for kernel devices, `.notSupported` where io_uring or O_DIRECT is refused here.
    public init(path: String, size: Int?, configuration: RaceConfiguration, force: Bool) throws(FSError) {
        self.configuration = configuration
        try configuration.devices.checkAvailable(
            sourceDirectory: configuration.sourceDirectory, rdmaDevice: configuration.rdmaDevice)
        _ = try FileSystem.format(path: path, size: size, force: force)
        self.fs = try FileSystem.mount(path: path)
        self.dax = try DAXFileSystem(
            fs: self.fs, policy: configuration.policy,
            times: PolicyTimes(leaseBreakTime: .milliseconds(configuration.leaseBreakMilliseconds)))
        self.oracle = try Oracle(fs: self.fs)
        var shared: [FileID] = []
        for index in 0..<max(2, configuration.dmaThreads) {
            let file = try self.fs.create("shared-\(index)")
            try self.fs.truncate(file, size: configuration.filePages * pageSize)
            shared.append(file)
        }
        self.sharedFiles = shared
        var writers: [Writer] = []
        for index in 0..<configuration.writers {
            let file = try self.fs.create("writer-\(index)")
            try self.fs.truncate(file, size: configuration.writerPages * pageSize)
            writers.append(Writer(index: index, file: file, pages: configuration.writerPages))
        }
        self.writers = writers
        self.collisionWriter = Writer(
            index: configuration.writers, file: try self.fs.create("collision-writer"), pages: 0)
        self.truncaterProgress = (0..<configuration.truncaters).map { _ in ManagedAtomic(0) }
        self.collisionDevice = try DMADevice(
            index: configuration.dmaThreads, dax: self.dax, observer: self.oracle, statistics: self.collisionStatistics,
            kind: configuration.devices, term: configuration.term, onDemandPaging: configuration.onDemandPaging,
            sourceDirectory: configuration.sourceDirectory, rdmaDevice: configuration.rdmaDevice)
        self.engine = try DMAEngine(
            dax: self.dax, files: self.sharedFiles,
            configuration: DMAConfiguration(
                devices: configuration.dmaThreads, pinDuration: .milliseconds(configuration.pinMilliseconds),
                longPinDuration: .milliseconds(configuration.longPinMilliseconds),
                longPinDevices: configuration.effectiveLongPinDevices, pagesPerPin: 1...8, seed: configuration.seed,
                kind: configuration.devices, term: configuration.term, onDemandPaging: configuration.onDemandPaging,
                sourceDirectory: configuration.sourceDirectory, rdmaDevice: configuration.rdmaDevice),
            observer: self.oracle)
    }

    public var isPmem: Bool { self.fs.mapping.isPmem }

    /// Truncate latency (µs) at each of `percentiles`, after `run()`: for plots.
    public func latencyPercentiles(_ percentiles: [Double]) -> [Double] {
        let histogram = self.latencies.withLock { $0 }
        guard histogram.totalCount > 0 else { return percentiles.map { _ in 0 } }
        return percentiles.map { Double(histogram.valueAtPercentile($0)) / 1000 }
    }

    /// Runs the collision, then the race for the configured time, and returns what the oracle found.
    ///
    /// Where the devices' long-term pins are refused (EOPNOTSUPP: by the kernel on fs-dax, or by
    /// policy `mainline`: mainline's own answer to DMA versus truncate), nothing races: the
    /// report says so (`longTermRefused`, and `kernelPinRefused` when the kernel refused), and
    /// the image is unmounted and checked.
    /// - Parameter progress: called about four times a second from the watchdog (the caller's thread).
    /// - Throws: `SystemCallError` when a thread cannot be started (nothing is left running then).
    public func run(progress: (@Sendable (RaceProgress) -> Void)? = nil) throws -> RaceReport {
        let started = MonotonicClock.now()
        let engine = self.engine
        if self.configuration.scenario == .collision { return try self.runCollisions(started: started, progress: progress) }
        let collided: Bool
        do {
            collided = try self.collide()
        } catch let error as FSError where error.code == .notSupported && self.configuration.term == .longTerm {
            return self.refusedReport(started: started)
        }
        let threads = try self.startThreads(engine)
        let watched = self.progressCounters(engine)
        let (deadlock, stuck) = collided
            ? self.watch(watched, started: started, progress: progress)
            : (true, ["daxlab-collide"])
        self.stop.store(true, ordering: .relaxed)
        let elapsed = MonotonicClock.seconds(since: started)
        if deadlock {
            // Threads are stuck: report without joining them, and without touching the image.
            return self.report(engine: engine, elapsed: elapsed, leaked: 0, fsckClean: false, stuck: stuck)
        }
        // Stopping is watched too: a thread stuck in the policy would hang the joins.
        let joined = ConditionLock(false, rank: .raceJoined)
        let stopper = try? JoinableThread.spawn(name: "daxlab-stopper") {
            engine.stop()
            for thread in threads { thread.join() }
            joined.withLockThenBroadcast { $0 = true }
        }
        let deadline = MonotonicClock.now() + UInt64(self.watchdogWindow * 1e9)
        guard let stopper, joined.wait(until: { $0 }, deadline: deadline, then: { _ in () }) != nil else {
            let names = threads.map(\.name) + engine.devices.map { "daxlab-dma-\($0.index)" }
            return self.report(engine: engine, elapsed: elapsed, leaked: 0, fsckClean: false, stuck: names)
        }
        stopper.join()
        self.dax.waitForReclaims()  // every pin is gone: limbo blocks are released now
        self.verifyWriters()
        self.verifySharedFiles()
        let leaked = self.countLeaks()
        return self.report(engine: engine, elapsed: elapsed, leaked: leaked, fsckClean: self.unmountAndCheck(), stuck: [])
    }

    /// The collision scenario: each of the four operations collides with a device, round after
    /// round until the run's time is up (at least one round), then the verdict as for any run.
    private func runCollisions(started: UInt64, progress: (@Sendable (RaceProgress) -> Void)?) throws -> RaceReport {
        let engine = self.engine
        repeat {
            for operation in self.configuration.collisionOperations {
                let collided: Bool
                do {
                    collided = try self.collide(operation)
                } catch let error as FSError where error.code == .notSupported && self.configuration.term == .longTerm {
                    return self.refusedReport(started: started)
                }
                guard collided else {
                    return self.report(
                        engine: engine, elapsed: MonotonicClock.seconds(since: started), leaked: 0, fsckClean: false,
                        stuck: ["daxlab-collide"])
                }
            }
            progress?(self.snapshot(started: started))
        } while MonotonicClock.seconds(since: started) < self.configuration.seconds
        self.dax.waitForReclaims()
        self.verifyWriters()
        self.verifySharedFiles()
        return self.report(
            engine: engine, elapsed: MonotonicClock.seconds(since: started), leaked: self.countLeaks(),
            fsckClean: self.unmountAndCheck(), stuck: [])
    }

    /// The report of a run whose long-term pins were refused (by the kernel, or by `mainline`):
    /// nothing raced; the image is unmounted and checked.
    private func refusedReport(started: UInt64) -> RaceReport {
        self.report(
            engine: self.engine, elapsed: MonotonicClock.seconds(since: started), leaked: self.countLeaks(),
            fsckClean: self.unmountAndCheck(), stuck: [],
            kernelPinRefused: self.configuration.devices.impliedTerm == .longTerm && self.configuration.policy != .mainline)
    }

    /// Unmounts the image and runs fsck on it: whether it is clean.
    private func unmountAndCheck() -> Bool {
        do {
            try self.fs.unmount()
            return try Fsck.run(path: self.fs.path).isClean
        } catch {
            return false
        }
    }

    /// Starts the truncaters, the writers and the verifier (and the engine's devices); if one
    /// cannot be started, stops and joins the others and throws.
    private func startThreads(_ engine: DMAEngine) throws -> [JoinableThread] {
        var threads: [JoinableThread] = []
        do {
            try engine.start()
            for index in 0..<self.configuration.truncaters {
                threads.append(try JoinableThread.spawn(name: "daxlab-trunc-\(index)") { self.truncateLoop(index) })
            }
            for writer in self.writers {
                threads.append(try JoinableThread.spawn(name: "daxlab-writer-\(writer.index)") { self.writeLoop(writer) })
            }
            threads.append(try JoinableThread.spawn(name: "daxlab-verify") { self.verifyLoop() })
        } catch {
            self.stop.store(true, ordering: .relaxed)
            engine.stop()
            for thread in threads { thread.join() }
            throw error
        }
        return threads
    }

    private func report(
        engine: DMAEngine, elapsed: Double, leaked: Int, fsckClean: Bool, stuck: [String], kernelPinRefused: Bool = false
    ) -> RaceReport {
        let histogram = self.latencies.withLock { $0 }
        let stats = self.dax.statistics
        func microseconds(_ value: UInt64) -> Double { (Double(value) / 1000).rounded() }
        func both(_ counter: KeyPath<DMAStatistics, ManagedAtomic<Int>>) -> Int {
            engine.statistics[keyPath: counter].load(ordering: .relaxed)
                + self.collisionStatistics[keyPath: counter].load(ordering: .relaxed)
        }
        return RaceReport(
            policy: self.configuration.policy.rawValue, devices: self.configuration.devices.rawValue,
            profile: self.configuration.onDemandPaging ? "odp" : self.configuration.term.rawValue, scenario: self.configuration.scenario.rawValue,
            seconds: (elapsed * 10).rounded() / 10, isPmem: self.isPmem,
            dmaWrites: self.oracle.landedWrites.load(ordering: .relaxed), pins: both(\.pins),
            kernelPins: both(\.kernelPins), kernelWrites: both(\.kernelWrites), kernelErrors: both(\.kernelErrors),
            kernelFaults: stats.viewFaults.load(ordering: .relaxed),
            rdmaWrites: both(\.rdmaWrites), rdmaErrors: both(\.rdmaErrors),
            kernelPinRefused: kernelPinRefused, longTermRefused: both(\.longTermRefusals),
            longTermPins: both(\.longTermPins),
            truncates: self.truncates.load(ordering: .relaxed), truncatesBusy: self.busy.load(ordering: .relaxed),
            truncatesWaited: stats.truncatesWaited.load(ordering: .relaxed),
            truncateLatencyUs: RaceReport.Latency(
                p50: histogram.totalCount == 0 ? 0 : microseconds(histogram.valueAtPercentile(50)),
                p99: histogram.totalCount == 0 ? 0 : microseconds(histogram.valueAtPercentile(99)),
                max: histogram.totalCount == 0 ? 0 : microseconds(histogram.maxRecorded)),
            staleDmaWrites: self.oracle.staleWrites.load(ordering: .relaxed),
            corruptedBlocks: self.oracle.corruptedBlocks, leakedBlocks: leaked,
            revokedDmaWrites: self.oracle.refusedWrites.load(ordering: .relaxed),
            persistErrors: both(\.persistErrors),
            revocations: stats.revocations.load(ordering: .relaxed),
            odpInvalidations: stats.odpInvalidations.load(ordering: .relaxed), deviceRefaults: both(\.deviceRefaults),
            sequesteredBlocksPeak: stats.sequesteredPeak.load(ordering: .relaxed),
            deferredBlocksPeak: stats.deferredPeak.load(ordering: .relaxed), fsckClean: fsckClean,
            deadlock: !stuck.isEmpty, stuckThreads: stuck)
    }
}
