import Atomics
import DMA
import DaxlabSupport

#if canImport(Glibc)
import Glibc
#endif

/// The watchdog: it ends the run at its time, reports progress, and declares a deadlock when a
/// thread that must keep going (a truncater, a writer, the verifier) or the whole run makes no
/// progress for a window, naming the threads that did not move.
extension RaceHarness {
    /// A thread's progress counter, by the thread's name.
    struct Watched {
        var name: String
        /// Whether the thread must progress all the time (devices may hold a pin for long).
        var mustProgress: Bool
        var count: @Sendable () -> Int
    }

    /// The watchdog's window in seconds: at least `watchdogSeconds`, and longer than any pin a
    /// truncate may legitimately wait for.
    var watchdogWindow: Double {
        let config = self.configuration
        let longestPin = max(config.pinMilliseconds, config.effectiveLongPinDevices > 0 ? config.longPinMilliseconds : 0)
        return max(config.watchdogSeconds, (2 * longestPin + config.leaseBreakMilliseconds) / 1000 + 1)
    }

    func progressCounters(_ engine: DMAEngine) -> [Watched] {
        var watched = engine.devices.map { device in
            Watched(name: "daxlab-dma-\(device.index)", mustProgress: false) { device.cycles.load(ordering: .relaxed) }
        }
        for (index, counter) in self.truncaterProgress.enumerated() {
            watched.append(Watched(name: "daxlab-trunc-\(index)", mustProgress: true) { counter.load(ordering: .relaxed) })
        }
        for writer in self.writers {
            watched.append(Watched(name: "daxlab-writer-\(writer.index)", mustProgress: true) {
                writer.progress.load(ordering: .relaxed)
            })
        }
        let verifier = self.verifierProgress
        watched.append(Watched(name: "daxlab-verify", mustProgress: true) { verifier.load(ordering: .relaxed) })
        return watched
    }

    /// Watches until the run's time is up or a deadlock.
    /// - Returns: whether it saw a deadlock, and the threads that did not move in the last window.
    func watch(
        _ watched: [Watched], started: UInt64, progress: (@Sendable (RaceProgress) -> Void)?
    ) -> (deadlock: Bool, stuck: [String]) {
        let window = UInt64(self.watchdogWindow * 1e9)
        var last = watched.map { $0.count() }
        var changed = [UInt64](repeating: MonotonicClock.now(), count: watched.count)
        var anyChange = MonotonicClock.now()
        while true {
            usleep(250_000)
            let now = MonotonicClock.now()
            for (index, thread) in watched.enumerated() {
                let count = thread.count()
                if count != last[index] {
                    last[index] = count
                    changed[index] = now
                    anyChange = now
                }
            }
            let stuck = watched.indices.filter { now - changed[$0] >= window }
            if now - anyChange >= window || stuck.contains(where: { watched[$0].mustProgress }) {
                return (true, stuck.map { watched[$0].name })
            }
            let snapshot = self.snapshot(started: started)
            progress?(snapshot)
            if snapshot.elapsed >= self.configuration.seconds, self.hasRacedEnough(snapshot) { return (false, []) }
        }
    }

    /// Whether the run has reached its configuration's minimums, or its time is up even for them.
    private func hasRacedEnough(_ snapshot: RaceProgress) -> Bool {
        let configuration = self.configuration
        return (snapshot.dmaWrites >= configuration.minimumDmaWrites && snapshot.truncates >= configuration.minimumTruncates)
            || snapshot.elapsed >= configuration.seconds * RaceConfiguration.overtimeFactor
    }

    /// The run's counters now, for a progress line.
    func snapshot(started: UInt64) -> RaceProgress {
        RaceProgress(
            elapsed: MonotonicClock.seconds(since: started), seconds: self.configuration.seconds,
            dmaWrites: self.oracle.landedWrites.load(ordering: .relaxed),
            truncates: self.truncates.load(ordering: .relaxed),
            staleDmaWrites: self.oracle.staleWrites.load(ordering: .relaxed),
            corruptedBlocks: self.oracle.corruptedBlocks, limboBlocks: self.dax.statistics.limboNow)
    }
}
