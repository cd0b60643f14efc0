import DaxFS
import DaxlabSupport

/// Releases the blocks whose last pin dropped after they left their file (sequestered in
/// lost+found, or deferred out of the allocator), on its own thread, `daxlab-reclaim`: the
/// analogue of the work XFS queues to clear busy extents.
///
/// It exists for the lock order. A device's last unpin runs on the device's thread, which may be
/// anywhere (even inside a fault holding a file's invalidate lock); releasing a sequestered
/// block takes lost+found's lock and a log slot. So the unpin only queues the block, and the
/// reclaimer, which holds no other lock, releases it: no file-system lock is ever taken from an
/// unpin. The thread starts with the first block queued.
final class Reclaimer: Sendable {
    private struct State {
        var queue: [(UInt32, BusyBlockDisposition)] = []
        /// A batch taken off the queue is being released.
        var releasing = false
        var thread: JoinableThread?
        /// After `stop`: nothing more is queued.
        var stopped = false
    }

    private let state = ConditionLock(State(), rank: .reclaimer)
    private let release: @Sendable (UInt32, BusyBlockDisposition) -> Void

    /// - Parameter release: releases one block (the file system's `releaseFromLimbo`).
    init(release: @escaping @Sendable (UInt32, BusyBlockDisposition) -> Void) {
        self.release = release
    }

    deinit { self.stop() }

    /// Queues `block` for release; wakes the reclaimer (starting it the first time).
    func enqueue(_ block: UInt32, _ disposition: BusyBlockDisposition) {
        self.state.withLockThenBroadcast { state in
            guard !state.stopped else { return }
            state.queue.append((block, disposition))
            if state.thread == nil {
                let lock = self.state
                let release = self.release
                // If no thread can be had now, the next enqueue tries again and `waitUntilIdle`
                // drains the queue itself.
                state.thread = try? JoinableThread.spawn(name: "daxlab-reclaim") { Self.run(lock, release) }
            }
        }
    }

    private static func run(
        _ state: ConditionLock<State>, _ release: @Sendable (UInt32, BusyBlockDisposition) -> Void
    ) {
        while true {
            let batch = state.wait(until: { !$0.queue.isEmpty || $0.stopped }) { state -> [(UInt32, BusyBlockDisposition)]? in
                guard !state.queue.isEmpty else { return nil }  // stopped, and nothing left
                state.releasing = true
                defer { state.queue.removeAll(keepingCapacity: true) }
                return state.queue
            }
            guard let batch = batch ?? nil else { return }
            for (block, disposition) in batch { release(block, disposition) }
            state.withLockThenBroadcast { $0.releasing = false }
        }
    }

    /// Waits until every block queued so far has been released. With no reclaimer thread (none
    /// could be started), releases them on the calling thread, which must hold no file-system lock.
    func waitUntilIdle() {
        let orphans = self.state.withLock { state -> [(UInt32, BusyBlockDisposition)] in
            guard state.thread == nil else { return [] }
            defer { state.queue.removeAll() }
            return state.queue
        }
        for (block, disposition) in orphans { self.release(block, disposition) }
        _ = self.state.wait(until: { $0.queue.isEmpty && !$0.releasing }) { _ in () }
    }

    /// Releases what is queued, stops the thread, and from then on drops what is queued (the file
    /// system is going away: see `LayoutBreaker.fileSystemWillUnmount`). Idempotent.
    func stop() {
        self.waitUntilIdle()
        let thread = self.state.withLockThenBroadcast { state -> JoinableThread? in
            state.stopped = true
            defer { state.thread = nil }
            return state.thread
        }
        thread?.join()
    }
}
