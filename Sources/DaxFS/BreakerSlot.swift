import DaxlabSupport
import Synchronization

/// Where the file system keeps the DAX layer's layout breaker: attached once, detached at
/// unmount, and read by every truncate, punch, unlink and range shift with no lock and no
/// reference count of its own (a mutex and a retain were five of the 22 locked instructions of
/// a write fault plus a punch).
///
/// The rule that makes that safe is the one the removers already follow: they read the breaker
/// only while holding a file's lock exclusively, and read it again after every time that lock
/// was dropped (`LayoutBreakResult.retry`). So a reader is always inside some file's exclusive
/// section, and `detach` can wait the readers out the way RCU's `synchronize_rcu` waits out
/// read-side sections: it clears `attached`, then takes and drops every file's lock once.
/// A reader that saw `attached` set held a file's lock since before that pass reached it, so
/// it has finished with the breaker when the pass is through; a reader that takes its lock
/// after the pass reached it sees `attached` clear. Only then is the strong reference dropped.
/// (The breaker's own methods that sleep with the file's lock dropped keep a reference of
/// their own across the sleep: `DAXFileSystem.breakLayouts`.)
final class BreakerSlot: @unchecked Sendable {
    /// The breaker, in a box of its own whose reference the slot holds (+1) from attach to
    /// detach: a `let` of a guaranteed reference is borrowed where it is used, where a breaker
    /// loaded from a variable is copied (a retain and a release). Written only under `writer`,
    /// and only while `attached` is clear (readers look only while it is set).
    nonisolated(unsafe) private var box: Unmanaged<Box>?
    private final class Box {
        let breaker: any LayoutBreaker
        init(_ breaker: any LayoutBreaker) { self.breaker = breaker }
    }
    /// Set (releasing) once the breaker is stored; cleared before it is dropped.
    private let attached = Atomic<Bool>(false)
    /// Serialises attach and detach; true once detached (nothing attaches after that).
    private let writer = Locked(false, rank: .breakerSlot)

    init() {}

    deinit {
        self.box?.release()
    }

    enum Attach { case attached, another, detached }

    /// Attaches `breaker`, or finds it attached already.
    func attach(_ breaker: any LayoutBreaker) -> Attach {
        self.writer.withLock { detached in
            if detached { return .detached }
            if let box = self.box { return box.takeUnretainedValue().breaker === breaker ? .attached : .another }
            self.box = Unmanaged.passRetained(Box(breaker))
            self.attached.store(true, ordering: .releasing)
            return .attached
        }
    }

    /// Runs `body` with the attached breaker, or `none` when there is none. The caller holds a
    /// file's lock exclusively, and `body` uses the breaker only while it does: it is borrowed
    /// from the slot, not retained; after the lock was dropped and retaken, `isAttached` says
    /// whether it is still there (it cannot have been replaced: nothing attaches after a detach).
    @inline(__always)
    func withCurrent<R, E: Error>(
        _ body: (any LayoutBreaker) throws(E) -> R, none: () throws(E) -> R
    ) throws(E) -> R {
        guard self.attached.load(ordering: .acquiring), let box = self.box else { return try none() }
        // (`_withUnsafeGuaranteedRef` rethrows untyped: the typed error travels in a Result.)
        return try box._withUnsafeGuaranteedRef { (box) in
            Result { () throws(E) in try body(box.breaker) }
        }.get()
    }

    /// Whether the breaker is still attached (see `withCurrent`).
    var isAttached: Bool { self.attached.load(ordering: .acquiring) }

    /// The attached breaker, for a caller that holds no file's lock (unmount): a strong reference.
    var retained: (any LayoutBreaker)? {
        self.writer.withLock { _ in self.box?.takeUnretainedValue().breaker }
    }

    /// Detaches the breaker once no reader can still be using it (see the type's doc), and hands
    /// back the strong reference. The caller holds no file's lock.
    func detach(waitingOut locks: ReadWriteLocks) -> (any LayoutBreaker)? {
        self.writer.withLock { detached in
            detached = true
            guard let box = self.box else { return nil }
            self.attached.store(false, ordering: .releasing)
            for index in 0..<locks.count {
                let lock = locks[index]
                lock.lockExclusive()
                lock.unlock()
            }
            self.box = nil
            return box.takeRetainedValue().breaker
        }
    }
}
