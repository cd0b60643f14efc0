import Atomics
@_spi(Oracle) import DAX
import DMA
@_spi(Oracle) import DaxFS
import DaxlabSupport
import Foundation
import Testing
import TestSupport

@Suite("Faults, pins and truncates racing", .timeLimit(.minutes(3)))
struct DAXRaceTests {
    @Test("Jan Kara's case: a pinner holding block A faults block B while a truncate waits on A",
          arguments: [TruncatePolicy.wait, .leaseBreak])
    func karaDeadlock(policy: TruncatePolicy) throws {
        let lab = try Lab(policy: policy, pages: 64, times: PolicyTimes(leaseBreakTime: .seconds(30)))
        let file = lab.file
        let space = try lab.space
        for round in 0..<100 {
            let handle = try space.pin(0..<1, write: true)  // block A
            let blockA = handle.block(at: 0)
            let punchErrors = Box<[String]>([])
            let punched = lab.background {
                do { try lab.fs.punchHole(file, offset: 0, length: 4096) } catch { punchErrors.value.append("\(error)") }
            }
            // Even rounds make the case that deadlocks: the punch asleep on A. Odd rounds let the
            // fault below meet the punch wherever it is.
            if round % 2 == 0 {
                let asleep = waitUntil(seconds: 30) { lab.dax.pins.hasWaiters(on: blockA) }
                #expect(asleep, "round \(round): the punch never slept on the pinned block")
            }
            // The pinner now needs the invalidate lock to fault B; the punch must not hold it.
            let faulted = lab.background {
                do {
                    let b = try space.fault(32 + round % 16, write: true)
                    UnsafeMutableRawPointer(mutating: b).storeBytes(of: UInt8(round), as: UInt8.self)
                } catch { punchErrors.value.append("fault: \(error)") }
            }
            let faultedInTime = faulted.wait(seconds: 30)
            #expect(faultedInTime, "round \(round): the fault of B waited for the punch that waits for A's pin: deadlock")
            #expect(!punched.isDone, "round \(round): the punch returned while A was pinned")
            handle.unpin()
            #expect(punched.wait(seconds: 30), "round \(round): the punch never finished after the unpin")
            #expect(punchErrors.value.isEmpty, "round \(round): \(punchErrors.value)")
            guard faultedInTime else { return }
            try lab.fs.write(file, offset: 0, bytes: [1])  // refill A for the next round
        }
    }

    @Test("Dave Chinner's three-way race: two write faults on one page while a third punches it, again and again")
    func chinnerThreeWay() throws {
        let lab = try Lab(policy: .wait, pages: 8)
        let file = lab.file
        let space = try lab.space
        let stop = ManagedAtomic<Bool>(false)
        let faults = ManagedAtomic<Int>(0)
        let punches = ManagedAtomic<Int>(0)
        let failures = Box<[String]>([])
        var workers: [Finished] = []
        for writer in 0..<2 {
            workers.append(lab.background {
                while !stop.load(ordering: .relaxed) {
                    do {
                        let address = try space.fault(3, write: true)
                        UnsafeMutableRawPointer(mutating: address).storeBytes(of: UInt8(writer), as: UInt8.self)
                        faults.wrappingIncrement(ordering: .relaxed)
                    } catch {
                        failures.value.append("fault: \(error)")
                    }
                }
            })
        }
        workers.append(lab.background {
            while !stop.load(ordering: .relaxed) {
                do {
                    try lab.fs.punchHole(file, offset: 3 * 4096, length: 4096)
                    punches.wrappingIncrement(ordering: .relaxed)
                } catch { failures.value.append("punch: \(error)") }
            }
        })
        // This thread checks, under the invalidate lock, that no entry outlives its block, until
        // the racers have done enough work (counted, not timed; a minute is the hang guard).
        var stale = 0
        var checks = 0
        let enough = { faults.load(ordering: .relaxed) >= 2_000 && punches.load(ordering: .relaxed) >= 200 }
        let deadline = MonotonicClock.now() + 60_000_000_000
        while !(enough() && checks >= 20), MonotonicClock.now() < deadline {
            stale += space.staleMappings().count
            checks += 1
            usleep(1_000)
        }
        stop.store(true, ordering: .relaxed)
        for worker in workers { #expect(worker.wait(seconds: 30), "a racer hung") }
        #expect(stale == 0, "page-table entries that outlived their block")
        #expect(failures.value.isEmpty, "\(failures.value.prefix(3))")
        #expect(enough(), "the racers made too little progress in a minute: \(faults.load(ordering: .relaxed)) faults, \(punches.load(ordering: .relaxed)) punches")
        try lab.fs.unmount()
        #expect(try Fsck.run(path: lab.path).isClean)
    }

    @Test("DMA devices, truncaters and writers on shared files: no pinned block is ever handed out again",
          .serialized, arguments: TruncatePolicy.allCases)
    func devicesAndTruncaters(policy: TruncatePolicy) throws {
        try self.race(policy: policy, devices: .simulated)
    }

    @Test("kernel long-term devices (io_uring fixed buffers), truncaters and writers: no kernel write lands in a block the allocator could hand out",
          .serialized, .enabled(if: KernelFacilities.ioUringRefusal == nil, "io_uring is refused here"),
          arguments: TruncatePolicy.allCases.filter { $0 != .mainline })  // (mainline refuses them: MainlineTests)
    func kernelLongtermDevicesAndTruncaters(policy: TruncatePolicy) throws {
        try self.race(policy: policy, devices: .kernelLongterm)
    }

    @Test("kernel O_DIRECT devices, truncaters and writers: no kernel write lands in a block the allocator could hand out",
          .serialized, .enabled(if: KernelFacilities.directIORefusal == nil, "O_DIRECT in /var/tmp is refused here"),
          arguments: TruncatePolicy.allCases)
    func kernelDirectDevicesAndTruncaters(policy: TruncatePolicy) throws {
        try self.race(policy: policy, devices: .kernelDirect)
    }

    /// `devices` pinning and writing four shared files while a truncater cuts and punches them
    /// and a writer allocates, until each has done its share of work (counted, not timed); the
    /// watcher counts writes into free blocks.
    private func race(policy: TruncatePolicy, devices: DeviceKind) throws {
        let lab = try Lab(
            policy: policy, pages: 32, times: PolicyTimes(waitTimeout: .seconds(20), leaseBreakTime: .milliseconds(1)),
            size: 64 << 20)
        var created = [lab.file]
        for index in 1..<4 {
            let file = try lab.fs.create("f\(index)")
            try lab.fs.truncate(file, size: 32 * 4096)
            created.append(file)
        }
        let files = created
        let watcher = PinWatcher(blockCount: lab.fs.geometry.blockCount)
        try #require(lab.fs.observeAllocations(watcher))
        let engine = try DMAEngine(
            dax: lab.dax, files: files,
            configuration: DMAConfiguration(
                devices: 3, pinDuration: .milliseconds(3), pagesPerPin: 1...4, kind: devices,
                term: policy == .mainline ? .shortTerm : .longTerm, onDemandPaging: policy == .odp && devices == .simulated,
                sourceDirectory: KernelFacilities.directSourceDirectory),
            observer: watcher)
        try engine.start()
        let stop = ManagedAtomic<Bool>(false)
        // Each cut, extension, punch and write that succeeded, and each failure that is not the
        // policy's own answer to a pinned block (`fail`'s and `mainline`'s EBUSY).
        let done = (cuts: ManagedAtomic<Int>(0), punches: ManagedAtomic<Int>(0), writes: ManagedAtomic<Int>(0))
        let unexpected = Box<[String]>([])
        let expected: Set<FSError.Code> = [.busy]
        @Sendable func attempt(_ what: String, _ counter: ManagedAtomic<Int>, _ body: () throws -> Void) {
            do {
                try body()
                counter.wrappingIncrement(ordering: .relaxed)
            } catch let error as FSError where expected.contains(error.code) {
            } catch { unexpected.value.append("\(what): \(error)") }
        }
        let truncater = lab.background {
            var round = 0
            while !stop.load(ordering: .relaxed) {
                let file = files[round % files.count]
                round += 1
                attempt("truncate", done.cuts) { try lab.fs.truncate(file, size: (round % 3) * 4096) }
                attempt("extend", done.cuts) { try lab.fs.truncate(file, size: 32 * 4096) }
                if round % 2 == 0 {
                    attempt("punch", done.punches) { try lab.fs.punchHole(file, offset: 4096 * (round % 8), length: 8192) }
                }
            }
        }
        // Writers allocate blocks all the while: a freed block gets reused at once.
        let writer = lab.background {
            var round = 0
            while !stop.load(ordering: .relaxed) {
                let file = files[round % files.count]
                round += 1
                attempt("write", done.writes) {
                    try lab.fs.write(file, offset: 4096 * (round % 32), bytes: [UInt8](repeating: 1, count: 4096))
                }
            }
        }
        let attempts = {
            engine.statistics.writes.load(ordering: .relaxed) + engine.statistics.refusedWrites.load(ordering: .relaxed)
        }
        let enough = {
            attempts() >= 200 && done.cuts.load(ordering: .relaxed) >= 20 && done.punches.load(ordering: .relaxed) >= 10
                && done.writes.load(ordering: .relaxed) >= 20
        }
        let progressed = waitUntil(seconds: 120, enough)
        stop.store(true, ordering: .relaxed)
        #expect(truncater.wait(seconds: 30), "\(policy): truncater hung")
        #expect(writer.wait(seconds: 30), "\(policy): writer hung")
        engine.stop()
        #expect(progressed, """
            \(policy), \(devices): too little work in two minutes: \(attempts()) device writes attempted (under \
            lease-break most are revoked), \(done.cuts.load(ordering: .relaxed)) truncates, \
            \(done.punches.load(ordering: .relaxed)) punches, \(done.writes.load(ordering: .relaxed)) writes
            """)
        #expect(unexpected.value.isEmpty, "\(policy), \(devices): \(unexpected.value.prefix(3))")
        if devices.isKernel {
            #expect(engine.statistics.kernelWrites.load(ordering: .relaxed) > 0, "the kernel did the writes")
            #expect(engine.statistics.kernelErrors.load(ordering: .relaxed) == 0)
        }
        let violations = watcher.violations.load(ordering: .relaxed)
        if policy.isProtective {
            #expect(violations == 0, "\(policy), \(devices): \(violations) device writes into blocks the allocator could hand out")
        }
        // (Whether this race happened to revoke is left to chance; the revocation itself is
        // tested deterministically: PolicyTests.leaseBreakRevokes and the race harness's collision.)
        try lab.fs.unmount()
        if policy.isProtective {
            let fsck = try Fsck.run(path: lab.path)
            #expect(fsck.isClean, "\(policy): \(fsck.result.problems.prefix(3))")
        } else {
            _ = try? Fsck.run(path: lab.path)  // under none, stale DMA may have damaged anything
        }
    }
}

/// Counts device writes that landed in a block the allocator could hand out at the time: it
/// keeps its own free flag per block from the allocator's events, and checks it inside the
/// write's revocation fence (a revoked write is refused and not counted).
final class PinWatcher: DMAObserver, AllocationObserver, @unchecked Sendable {
    // One atomic flag per block, allocated once.
    private let free: [ManagedAtomic<Bool>]
    let violations = ManagedAtomic<Int>(0)
    init(blockCount: Int) { self.free = (0..<blockCount).map { _ in ManagedAtomic(false) } }
    func didAllocate(_ block: UInt32, inode: Int, page: Int?) { self.free[Int(block)].store(false, ordering: .releasing) }
    func didFree(_ block: UInt32) { self.free[Int(block)].store(true, ordering: .releasing) }
    func didPin(_ file: FileID, page: Int, block: UInt32, lease: UInt64) -> UInt64 { 0 }
    func fill(_ buffer: UnsafeMutableRawPointer, for write: DMAWrite) {}
    func didWrite(_ write: DMAWrite, block: UInt32, landed: Bool) {
        if landed, self.free[Int(block)].load(ordering: .acquiring) {
            self.violations.wrappingIncrement(ordering: .relaxed)
        }
    }
}
