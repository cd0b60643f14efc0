import Atomics
import CBenchShims
import CShims
import DAX
import DaxFS
import DaxlabSupport
import Pmem

#if canImport(Glibc)
import Glibc
#endif

extension Bench {
    /// truncate.wake (policy wait): from the last unpin to the truncate's return, the truncating
    /// thread on the other CPU; against a condition-variable wake of a thread on the other CPU.
    func wakeRow() throws {
        let file = try self.fs.create("wake")
        let space = try self.dax.open(file)
        defer { _ = CShims_unbind_cpu() }
        // A sample is the median of a few wakes: one wake is a few µs, at the scheduler's mercy.
        let wakes = try Measure(budget: self.options.seconds, pairs: 11).interleave(
            samples: {
                Measure.median(try (0..<5).map { _ in try self.truncateWake(file, space) })
            },
            { Measure.median(try (0..<5).map { _ in try Self.condvarWake() }) })
        self.add("truncate.wake", unit: "us", wakes, baseline: "condvar.wake", better: "lower", target: .atMost(2))
    }

    /// µs from the last unpin on CPU 0 to the return of a truncate (policy wait) asleep on CPU 1.
    private func truncateWake(_ file: FileID, _ space: AddressSpace) throws -> Double {
        try self.fs.truncate(file, size: 2 * pageSize)
        _ = try space.fault(1, write: true)
        let handle = try space.pin(1..<2, write: true)
        let sleeping = self.dax.statistics.waits.load(ordering: .relaxed)
        let returned = ManagedAtomic<UInt64>(0)
        let truncater: JoinableThread
        do {
            truncater = try BenchThread.spawn(name: "daxlab-bench-trunc") {
                _ = CShims_bind_to_cpu(1)
                _ = try? self.fs.truncate(file, size: pageSize, policy: .wait)
                returned.store(MonotonicClock.now(), ordering: .releasing)
            }
        } catch {
            handle.unpin()
            throw error
        }
        _ = CShims_bind_to_cpu(0)
        while self.dax.statistics.waits.load(ordering: .relaxed) == sleeping { sched_yield() }
        usleep(2000)  // let it fall asleep
        let released = MonotonicClock.now()
        handle.unpin()
        truncater.join()
        return Double(returned.load(ordering: .acquiring) - released) / 1000
    }

    /// µs from a condition-variable signal on CPU 0 to the waiter running on CPU 1.
    static func condvarWake() throws -> Double {
        let state = ConditionLock(0, rank: .benchWake)  // 0 waiting to sleep, 1 asleep, 2 signalled
        let signalled = ManagedAtomic<UInt64>(0)
        let woke = ManagedAtomic<UInt64>(0)
        let waiter = try BenchThread.spawn(name: "daxlab-bench-wait") {
            _ = CShims_bind_to_cpu(1)
            state.withLockThenBroadcast { $0 = 1 }
            _ = state.wait(until: { $0 == 2 }) { _ in woke.store(MonotonicClock.now(), ordering: .releasing) }
        }
        _ = CShims_bind_to_cpu(0)
        _ = state.wait(until: { $0 == 1 }) { _ in () }
        usleep(2000)
        state.withLockThenBroadcast { value in
            value = 2
            signalled.store(MonotonicClock.now(), ordering: .releasing)
        }
        waiter.join()
        return Double(woke.load(ordering: .acquiring) - signalled.load(ordering: .acquiring)) / 1000
    }
}
