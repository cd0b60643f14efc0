import CShims
@testable import DAX
@_spi(Oracle) import DaxFS
import Foundation
import DaxlabSupport
import Testing

/// The batch pool's per-thread cells (`BatchPool`): a thread takes back the batch it gave back
/// without a locked instruction, and the unmount's `close` and a cell's owner decide who empties
/// the cell by a Dekker pair with the asymmetric fence. Each interleaving of an owner with a
/// close is made on purpose with the pool's test hook (builds with DAXLAB_TEST_HOOKS=1): a batch is handed out at
/// most once and never after the close let it go, and none stays in a closed pool.
@Suite("The batch pool's per-thread cells", .serialized, .timeLimit(.minutes(1)))
struct BatchPoolTests {
    /// A pool with cells, or the reason there is none (no membarrier here).
    private func poolWithCells() throws -> BatchPool {
        let pool = BatchPool(usesCells: AsymmetricFence.available)
        if !pool.usesCells {
            try Test.cancel("membarrier's private expedited command is refused here: the pool uses no cells")
        }
        return pool
    }

    /// Runs `body` on a thread of its own and waits for it.
    private func onThread<T: Sendable>(_ body: @escaping @Sendable () -> T) -> T {
        nonisolated(unsafe) var result: T?
        let done = DispatchSemaphore(value: 0)
        Thread {
            result = body()
            done.signal()
        }.start()
        done.wait()
        return result!
    }

    #if DAXLAB_TEST_HOOKS
    /// Runs `body` (on the calling thread, the cell's owner) with the pool closing when the owner
    /// reaches `stage`.
    private func closing<T>(_ pool: BatchPool, at stage: BatchPool.CellStage, _ body: () -> T) -> T {
        pool.cellHook = { reached in if reached == stage { pool.close() } }
        defer { pool.cellHook = nil }
        return body()
    }
    #endif

    @Test("live threads have distinct indices; an exited thread's index is reused")
    func threadIndices() {
        let count = 4
        let ready = DispatchSemaphore(value: 0)
        let release = DispatchSemaphore(value: 0)
        let done = DispatchSemaphore(value: 0)
        let indices = Locked<[Int32]>([])
        for _ in 0..<count {
            Thread {
                let index = CShims_thread_index()
                indices.withLock { $0.append(index == CShims_thread_index() ? index : -1) }  // (-1: not stable)
                ready.signal()
                release.wait()  // all alive at once
                done.signal()
            }.start()
        }
        for _ in 0..<count { ready.wait() }
        let live = indices.withLock { $0 }
        #expect(!live.contains(-1), "a thread's index changed between two reads")
        #expect(Set(live).count == count, "live threads share an index: \(live)")
        #expect(!live.contains(CShims_thread_index()), "a live thread shares the test thread's index")
        for _ in 0..<count { release.signal() }
        for _ in 0..<count { done.wait() }
        // The four have exited (or are exiting: their index goes back in their key's destructor,
        // which runs before the thread is gone). A new thread takes the lowest free index, at
        // most the highest of theirs once theirs are free.
        let highest = live.max()!
        #expect(waitUntil(seconds: 10) { self.onThread { CShims_thread_index() } <= highest },
                "no index of an exited thread was reused")
    }

    @Test("a thread takes back the batch it gave back; another thread's take does not find it (the shared slots would give it)",
          arguments: [false, true])
    func cellKeepsItsBatch(fallback: Bool) throws {
        let lab = try Lab(policy: .wait, pages: 4, asymmetricFence: !fallback)
        #expect(lab.dax.batchPool.usesCells == (!fallback && AsymmetricFence.available))
        if !fallback && !AsymmetricFence.available {
            try Test.cancel("membarrier's private expedited command is refused here: the pool uses no cells")
        }
        let space = try lab.space
        let number = { @Sendable () -> UInt64 in space.leaseList.first!.id >> 40 }
        // Thread A pins and unpins (its batch goes to A's cell), then waits, alive, so that its
        // index is not reused by B; B pins and unpins; then A pins again.
        let aPinned = DispatchSemaphore(value: 0)
        let bDone = DispatchSemaphore(value: 0)
        let numbers = Locked<[String: UInt64]>([:])
        let errors = Locked<[String]>([])
        let a = lab.background {
            do {
                let first = try space.pin(0..<1, write: true)
                let a1 = number()  // (outside the test's lock: the lease list takes a lock of its own)
                numbers.withLock { $0["a1"] = a1 }
                first.unpin()
                aPinned.signal()
                bDone.wait()
                let second = try space.pin(0..<1, write: true)
                let a2 = number()
                numbers.withLock { $0["a2"] = a2 }
                second.unpin()
            } catch {
                errors.withLock { $0.append("thread A: \(error)") }
                aPinned.signal()
            }
        }
        aPinned.wait()
        let b = lab.background {
            do {
                let pin = try space.pin(1..<2, write: true)
                let b = number()
                numbers.withLock { $0["b"] = b }
                pin.unpin()
            } catch {
                errors.withLock { $0.append("thread B: \(error)") }
            }
            bDone.signal()
        }
        #expect(b.wait(seconds: 30) && a.wait(seconds: 30))
        #expect(errors.withLock { $0 }.isEmpty, "\(errors.withLock { $0 })")
        let seen = numbers.withLock { $0 }
        if fallback {
            #expect(seen["b"] == seen["a1"], "the shared slots give B the batch A gave back")
        } else {
            #expect(seen["b"] != seen["a1"], "B took the batch in A's cell")
            #expect(seen["a2"] == seen["a1"], "A did not get its own batch back from its cell")
        }
    }

    @Test("a close while a take has marked its cell: the close leaves the cell, the take sees the close and lets the batch go")
    func closeDuringTakeMark() throws {
        #if DAXLAB_TEST_HOOKS
        let pool = try self.poolWithCells()
        let kept = self.onThread { () -> Bool in
            let cached = pool.take()
            weak let batch = cached.takeUnretainedValue()
            pool.put(cached)  // into this thread's cell
            let taken = self.closing(pool, at: .takeMarked) { pool.take() }  // (new: its address may be the freed one's)
            let kept = batch != nil  // (handed out by the take, it would be alive)
            taken.release()
            return kept
        }
        #expect(!kept, "the batch of a closed pool's cell was kept, or handed out")
        #else
        try Test.cancel(testHooksMissing)
        #endif
    }

    @Test("a close after a take looked at an open pool: the close leaves the marked cell, the take owns its batch")
    func closeAfterTakeLooked() throws {
        #if DAXLAB_TEST_HOOKS
        let pool = try self.poolWithCells()
        let (alive, same, goneAfter) = self.onThread { () -> (Bool, Bool, Bool) in
            let cached = pool.take()
            weak let batch = cached.takeUnretainedValue()
            pool.put(cached)
            let taken = self.closing(pool, at: .takeLooked) { pool.take() }
            // A close that emptied the marked cell would have let the batch go under the take.
            let alive = batch != nil
            let same = taken.toOpaque() == cached.toOpaque()
            if alive { taken.release() }
            return (alive, same, batch == nil)
        }
        #expect(alive, "the close let go a batch the take was taking")
        #expect(same, "the take did not get its cell's batch")
        #expect(goneAfter, "the taker's release did not free the batch: someone else holds it")
        #else
        try Test.cancel(testHooksMissing)
        #endif
    }

    @Test("a close after a put looked at an open pool: the put stores its batch, looks again, and lets it go")
    func closeAfterPutLooked() throws {
        #if DAXLAB_TEST_HOOKS
        let pool = try self.poolWithCells()
        let kept = self.onThread { () -> Bool in
            let taken = pool.take()
            weak let batch = taken.takeUnretainedValue()
            self.closing(pool, at: .putLooked) { pool.put(taken) }
            return batch != nil
        }
        #expect(!kept, "a batch stayed in the cell of a closed pool")
        #else
        try Test.cancel(testHooksMissing)
        #endif
    }

    @Test("the close empties every thread's cell: a layer whose threads pinned goes at unmount")
    func closeEmptiesEveryCell() throws {
        _ = try self.poolWithCells()
        let path = "/dev/shm/daxlab-cells-\(getpid())-\(UUID().uuidString.prefix(8))"
        defer { unlink(path) }
        _ = try FileSystem.format(path: path, size: 4 << 20)
        weak var weakDAX: DAXFileSystem?
        let threads = 3
        let pinned = DispatchSemaphore(value: 0)
        let exit = DispatchSemaphore(value: 0)
        let exited = DispatchSemaphore(value: 0)
        let errors = Locked<[String]>([])
        try { () throws -> Void in
            let fs = try FileSystem.mount(path: path)
            let dax = try DAXFileSystem(fs: fs, policy: .wait)
            weakDAX = dax
            let file = try fs.openOrCreate("f")
            try fs.truncate(file, size: 4 * 4096)
            let space = try dax.open(file)
            for page in 0..<threads {
                Thread {
                    do { try space.pin(page..<(page + 1), write: true).unpin() } catch {
                        errors.withLock { $0.append("pin on a thread: \(error)") }
                    }
                    pinned.signal()
                    exit.wait()  // alive (its cell full) until after the unmount
                    exited.signal()
                }.start()
            }
            for _ in 0..<threads { pinned.wait() }
            try fs.unmount()
        }()
        #expect(errors.withLock { $0 }.isEmpty, "\(errors.withLock { $0 })")
        #expect(waitUntil(seconds: 5) { weakDAX == nil },
                "the layer outlived its unmount: a thread's cell kept a batch, which keeps it")
        for _ in 0..<threads { exit.signal() }
        for _ in 0..<threads { exited.wait() }
    }

    @Test("threads pin and unpin while the file system unmounts: no batch is handed out twice, none is kept")
    func unmountWhilePinning() throws {
        _ = try self.poolWithCells()
        for round in 0..<20 {
            let path = "/dev/shm/daxlab-cells-\(getpid())-\(round)"
            defer { unlink(path) }
            _ = try FileSystem.format(path: path, size: 4 << 20)
            weak var weakDAX: DAXFileSystem?
            let threads = 3
            let stop = Locked(false)
            var finished: [Finished] = []
            try { () throws -> Void in
                let fs = try FileSystem.mount(path: path)
                let dax = try DAXFileSystem(fs: fs, policy: .none)  // pins may outlive the unmount
                weakDAX = dax
                let file = try fs.openOrCreate("f")
                try fs.truncate(file, size: 4 * 4096)
                let space = try dax.open(file)
                for page in 0..<threads {
                    let done = Finished()
                    finished.append(done)
                    Thread {
                        // (The thread holds the layer, as a user of a space must: a space holds
                        // its layer unowned. It lets it go when it stops.)
                        withExtendedLifetime(dax) {
                            var pins = 0
                            while !stop.withLock({ $0 }) || pins < 100 {
                                guard let handle = try? space.pin(page..<(page + 1), write: true) else { break }  // refused once unmounted
                                handle.unpin()
                                pins += 1
                            }
                        }
                        done.signal()
                    }.start()
                }
                usleep(UInt32(round % 5) * 200)
                try fs.unmount()
                stop.withLock { $0 = true }
            }()
            for done in finished { #expect(done.wait(seconds: 30), "a pinning thread did not stop") }
            #expect(waitUntil(seconds: 10) { weakDAX == nil },
                    "round \(round): a batch stayed pooled after the unmount and kept the layer")
        }
    }
}
