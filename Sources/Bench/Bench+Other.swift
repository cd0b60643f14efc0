import Atomics
import CShims
import DAX
import DaxFS
import Pmem

#if canImport(Glibc)
import Glibc
#endif

extension Bench {
    /// truncate.wake (policy wait): from the last unpin to the truncate's return, the truncating
    /// thread on the other CPU; against a condition-variable wake of a thread on the other CPU.
    func wakeRow() throws {
        let file = try self.fs.create("wake")
        let space = self.dax.open(file)
        let samples = max(5, Int(self.options.seconds * 20))
        var wakes: [Double] = []
        for _ in 0..<samples {
            try self.fs.truncate(file, size: 2 * 4096)
            _ = try space.fault(1, write: true)
            let handle = try space.pin(1..<2, write: true)
            let sleeping = self.dax.statistics.waits.load(ordering: .relaxed)
            let returned = ManagedAtomic<UInt64>(0)
            let truncater = BenchThread.spawn {
                _ = CShims_bind_to_cpu(1)
                try! self.dax.truncate(file, size: 4096, policy: .wait)
                returned.store(MonotonicClock.now(), ordering: .releasing)
            }
            _ = CShims_bind_to_cpu(0)
            while self.dax.statistics.waits.load(ordering: .relaxed) == sleeping { sched_yield() }
            usleep(2000)  // let it fall asleep
            let released = MonotonicClock.now()
            handle.unpin()
            pthread_join(truncater, nil)
            wakes.append(Double(returned.load(ordering: .acquiring) - released) / 1000)
        }
        unbindCPU()
        let condvar = Self.condvarWake(samples: samples)
        self.add("truncate.wake", unit: "us", value: Measure.median(wakes), baseline: "condvar.wake",
                 baselineValue: condvar, better: "lower", target: ("<= 2.0", { $0 <= 2.0 }))
    }

    /// µs from pthread_cond_signal on CPU 0 to the waiter running on CPU 1.
    static func condvarWake(samples: Int) -> Double {
        var mutex = pthread_mutex_t()
        var condition = pthread_cond_t()
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&condition, nil)
        var results: [Double] = []
        withUnsafeMutablePointer(to: &mutex) { mutex in
            withUnsafeMutablePointer(to: &condition) { condition in
                for _ in 0..<samples {
                    let state = ManagedAtomic<Int>(0)  // 0 waiting to sleep, 1 asleep, 2 signalled
                    let signalled = ManagedAtomic<UInt64>(0)
                    let woke = ManagedAtomic<UInt64>(0)
                    let waiter = BenchThread.spawn {
                        _ = CShims_bind_to_cpu(1)
                        pthread_mutex_lock(mutex)
                        state.store(1, ordering: .releasing)
                        while state.load(ordering: .acquiring) != 2 { pthread_cond_wait(condition, mutex) }
                        woke.store(MonotonicClock.now(), ordering: .releasing)
                        pthread_mutex_unlock(mutex)
                    }
                    _ = CShims_bind_to_cpu(0)
                    while state.load(ordering: .acquiring) != 1 { sched_yield() }
                    usleep(2000)
                    pthread_mutex_lock(mutex)
                    state.store(2, ordering: .releasing)
                    signalled.store(MonotonicClock.now(), ordering: .releasing)
                    pthread_cond_signal(condition)
                    pthread_mutex_unlock(mutex)
                    pthread_join(waiter, nil)
                    results.append(Double(woke.load(ordering: .acquiring) - signalled.load(ordering: .acquiring)) / 1000)
                }
            }
        }
        unbindCPU()
        return Measure.median(results)
    }

    /// dma.copy: a device writing 2 MiB through its pin handle (non-temporal copies into the 512
    /// pinned blocks, one drain); against pmem_memcpy_persist of the same 2 MiB chunk on the same medium.
    func copyRow() throws {
        let (file, space) = try self.mappedFile("copy", pages: 512)
        _ = file
        let source = UnsafeMutableRawPointer.allocate(byteCount: 2 << 20, alignment: 4096)
        defer { source.deallocate() }
        source.initializeMemory(as: UInt8.self, repeating: 0x33, count: 2 << 20)
        let handle = try space.pin(0..<512, write: true)
        let ours = self.measure.nanosecondsPerUnit { count in
            for _ in 0..<count { _ = handle.writeAll(from: source) }
        }
        handle.unpin()
        let mapping = self.fs.mapping
        let target = mapping.base + Int(self.fs.currentBlock(file, page: 0)) * 4096
        let baseline = self.measure.nanosecondsPerUnit { count in
            for _ in 0..<count { pmem_memcpy_persist(target, source, 2 << 20) }
        }
        let gigabytes = Double(2 << 20) / 1e9
        self.add("dma.copy", unit: "GB/s", value: gigabytes / (ours / 1e9), baseline: "pmem.memcpy_persist",
                 baselineValue: gigabytes / (baseline / 1e9), better: "higher", target: (">= 0.9", { $0 >= 0.9 }))
    }

    /// alloc.block: allocate a block for a file (zeroed, persisted, mapped by a log transaction)
    /// and free it (a punch, another transaction); against libpmemobj's pmemobj_alloc + free of
    /// 4 KiB in a pool on the same medium.
    func allocationRow() throws {
        let file = try self.fs.create("alloc")
        try self.fs.truncate(file, size: 4096)
        let space = self.dax.open(file)
        let ours = self.measure.nanosecondsPerUnit { count in
            for _ in 0..<count {
                _ = try! space.fault(0, write: true)
                try! self.dax.punchHole(file, offset: 0, length: 4096)
            }
        }
        let directory = NSStringPath(path: self.path).directory
        let poolPath = "\(directory)/daxlab-bench-pool-\(getpid())"
        // The same medium, persisted the same way: libpmemobj honours PMEM_IS_PMEM_FORCE.
        if self.fs.mapping.medium == .tmpfs { setenv("PMEM_IS_PMEM_FORCE", "1", 1) }
        unlink(poolPath)
        defer { unlink(poolPath) }
        guard let pool = CShims_pmemobj_create(poolPath, 64 << 20) else {
            self.progress("pmemobj pool could not be created in \(directory): alloc.block has no baseline")
            return
        }
        defer { CShims_pmemobj_close(pool) }
        let pmemobj = self.measure.nanosecondsPerUnit { count in
            for _ in 0..<count { _ = CShims_pmemobj_alloc_free(pool, 4096) }
        }
        self.add("alloc.block", unit: "ns/op", value: ours, baseline: "pmemobj.alloc", baselineValue: pmemobj,
                 better: "lower", target: ("<= 0.5", { $0 <= 0.5 }))
    }

    /// For the plot: truncate latencies under each protective policy while devices pin.
    func truncateLatencies() throws {
        // Filled by the CLI from short race runs (see BenchCommand); nothing here.
    }
}

/// The directory part of a path.
struct NSStringPath {
    let path: String
    var directory: String {
        guard let slash = self.path.lastIndex(of: "/") else { return "." }
        return slash == self.path.startIndex ? "/" : String(self.path[..<slash])
    }
}

func unbindCPU() { _ = CShims_unbind_cpu() }
