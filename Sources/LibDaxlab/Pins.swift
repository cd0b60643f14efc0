import Atomics
import CDaxlab
import DAX
import DaxFS
import DaxlabSupport

#if canImport(Glibc)
import Glibc
#endif

/// A pin as the C interface holds it: the handle, until the unpin takes it (under `handle`'s
/// lock, which a write through the pin holds too, so an unpin never ends a pin under a write).
final class CPin: @unchecked Sendable {
    let handle: Locked<PinHandleBox>
    let mount: CMount
    let holder: CLeaseHolder?
    /// Taken with DAXLAB_PIN_WRITE: the device may write through it.
    let writable: Bool

    init(_ pinned: consuming PinHandle, mount: CMount, holder: CLeaseHolder?, writable: Bool) {
        self.handle = Locked(PinHandleBox(pinned), rank: .cPin)
        self.mount = mount
        self.holder = holder
        self.writable = writable
    }
}

/// A `PinHandle` (non-copyable) in a class, taken once by the unpin.
final class PinHandleBox {
    var pinned: PinHandle?
    init(_ pinned: consuming PinHandle) { self.pinned = consume pinned }

    /// Runs `body` with the handle (-EBADF once it was unpinned).
    func use<Result>(_ pin: UInt64, _ body: (borrowing PinHandle) throws(CFailure) -> Result) throws(CFailure) -> Result {
        guard let pinned = self.pinned.take() else { throw CFailure(EBADF, "pin \(pin) was unpinned") }
        let outcome: Swift.Result<Result, CFailure>
        do throws(CFailure) { outcome = .success(try body(pinned)) } catch { outcome = .failure(error) }
        self.pinned = consume pinned
        return try outcome.get()
    }
}

/// A pin's lease holder for C: a break is handed to the mount's notifier thread, which calls the
/// program's function, so that the function may unpin (the truncating thread, which tells the
/// holder, must not wait for its own unpin).
final class CLeaseHolder: LeaseHolder, @unchecked Sendable {
    let function: daxlab_lease_break_fn
    let context: UnsafeMutableRawPointer?
    let notifier: LeaseNotifier
    /// The pin's handle, set once it is registered (a break before that is delivered after it),
    /// or `Self.never` once the pin is gone: it failed, or it was unpinned (a callback not started
    /// by then is skipped).
    let pin = ManagedAtomic<UInt64>(0)
    static let never = UInt64.max

    init(_ function: @escaping daxlab_lease_break_fn, _ context: UnsafeMutableRawPointer?, _ notifier: LeaseNotifier) {
        self.function = function
        self.context = context
        self.notifier = notifier
    }

    func leaseBroken(_ lease: LeaseInfo) {
        let pages = lease.pages
        self.notifier.post { [self] in
            // (The pin is registered as soon as `pin` returns: a break in between waits for it.)
            var handle = self.pin.load(ordering: .acquiring)
            while handle == 0 {
                sched_yield()
                handle = self.pin.load(ordering: .acquiring)
            }
            // (Unpinned, or failed, before this started: skipped; the program may have freed `context`.)
            guard handle != Self.never, self.pin.load(ordering: .acquiring) != Self.never else { return }
            self.function(self.context, handle, UInt64(pages.lowerBound), UInt64(pages.count))
        }
    }
}

/// One mount's lease-break callbacks, each on a thread of its own: a truncate over several pins
/// tells every holder at once, and each holder's unpin returns only when the truncate has stopped
/// holding the leases it broke, that is when every one of them was released (or revoked at the
/// break time). Callbacks run one after another would make the first unpin wait for the
/// second callback, which would wait for the first.
final class LeaseNotifier: @unchecked Sendable {
    private final class Call: @unchecked Sendable {
        let done = ManagedAtomic<Bool>(false)
        var thread: JoinableThread?
    }

    // (A leaf: nothing is taken under it.)
    private let calls = Locked<(running: [Call], stopped: Bool)>(([], false), rank: .cLeaseQueue)
    /// Callbacks not run because no thread could be started (the holder is revoked at the break
    /// time instead).
    let dropped = ManagedAtomic<Int>(0)

    func post(_ call: @escaping @Sendable () -> Void) {
        let record = Call()
        // The ones finished since the last break are joined now: threads do not pile up.
        let finished = self.calls.withLock { calls -> [Call]? in
            guard !calls.stopped else { return nil }
            let finished = calls.running.filter { $0.done.load(ordering: .acquiring) }
            calls.running.removeAll { $0.done.load(ordering: .acquiring) }
            calls.running.append(record)
            return finished
        }
        guard let finished else { return }
        for call in finished { call.thread?.join() }
        let thread = try? JoinableThread.spawn(name: "daxlab-lease-cb") {
            call()
            record.done.store(true, ordering: .releasing)
        }
        guard let thread else {
            // (No thread to be had: the callback is not run on the truncating thread, which
            // must not wait for its own unpin; the holder is revoked at the break time.)
            self.dropped.wrappingIncrement(ordering: .relaxed)
            record.done.store(true, ordering: .releasing)
            return
        }
        self.calls.withLock { _ in record.thread = thread }
    }

    /// Waits for the callbacks running (the unmount: no pin is left, so no new one can come).
    func stop() {
        let running = self.calls.withLock { calls -> [Call] in
            calls.stopped = true
            return calls.running
        }
        for call in running {
            while self.calls.withLock({ _ in call.thread }) == nil && !call.done.load(ordering: .acquiring) { sched_yield() }
            self.calls.withLock { _ in call.thread }?.join()
        }
    }
}

@_cdecl("daxlab_attach")
public func daxlabAttach(_ handle: UInt64, _ policyValue: Int32, _ times: UnsafePointer<daxlab_times>?) -> Int32 {
    cCall { () throws(CFailure) in
        let mount = try Handles.enter(handle)
        defer { mount.leave() }
        // (Past about 100 days the DAX layer's deadlines would overflow their nanoseconds.)
        let most: Int64 = 8_640_000_000
        if let times = times?.pointee, times.wait_timeout_ms > most || times.lease_break_time_ms > most {
            throw CFailure(EINVAL, "times above \(most) ms (100 days): wait_timeout_ms \(times.wait_timeout_ms), lease_break_time_ms \(times.lease_break_time_ms)")
        }
        guard let chosen = try policy(policyValue) else {
            throw CFailure(EINVAL, "daxlab_attach needs a policy (DAXLAB_POLICY_DEFAULT names the mount's, which this sets)")
        }
        var policyTimes = PolicyTimes()
        if let times = times?.pointee {
            guard times.wait_timeout_ms >= 0, times.lease_break_time_ms >= 0 else {
                throw CFailure(EINVAL, "negative times: wait_timeout_ms \(times.wait_timeout_ms), lease_break_time_ms \(times.lease_break_time_ms)")
            }
            policyTimes = PolicyTimes(
                waitTimeout: times.wait_timeout_ms == 0 ? nil : .milliseconds(times.wait_timeout_ms),
                leaseBreakTime: .milliseconds(times.lease_break_time_ms))
        }
        try mount.dax.withLock { (dax: inout DAXFileSystem?) throws(CFailure) in
            guard dax == nil else { throw CFailure(EBUSY, "\(mount.fs.path): the DAX layer is attached already") }
            dax = try fsCall { () throws(FSError) in try DAXFileSystem(fs: mount.fs, policy: chosen, times: policyTimes) }
        }
    }
}

@_cdecl("daxlab_map")
public func daxlabMap(
    _ handle: UInt64, _ file: UInt64, _ address: UnsafeMutablePointer<UnsafeMutableRawPointer?>?,
    _ length: UnsafeMutablePointer<Int>?
) -> Int32 {
    cCall { () throws(CFailure) in
        let mount = try Handles.enter(handle)
        defer { mount.leave() }
        let dax = try mount.attached()
        let out = try output(address, "address")
        let base = try fsCall { () throws(FSError) in try dax.open(mount.fileID(file)).mapWindow() }
        out.pointee = base
        length?.pointee = FileSystem.maximumFileSize
    }
}

@_cdecl("daxlab_pin")
public func daxlabPin(
    _ handle: UInt64, _ file: UInt64, _ first: UInt64, _ pages: UInt64, _ flags: Int32,
    _ onBreak: daxlab_lease_break_fn?, _ context: UnsafeMutableRawPointer?, _ pin: UnsafeMutablePointer<UInt64>?
) -> Int32 {
    cCall { () throws(CFailure) in
        let mount = try Handles.enter(handle)
        defer { mount.leave() }
        let dax = try mount.attached()
        let out = try output(pin, "pin")
        try checkFlags(flags, allowed: Int32(DAXLAB_PIN_WRITE.rawValue | DAXLAB_PIN_LONG_TERM.rawValue), "daxlab_pin")
        guard pages >= 1, pages <= 512, first <= UInt64(Int32.max) else {
            throw CFailure(EINVAL, "pages \(first)..<\(first &+ pages): a pin covers 1 to 512 pages")
        }
        let write = flags & Int32(DAXLAB_PIN_WRITE.rawValue) != 0
        let term: PinTerm = flags & Int32(DAXLAB_PIN_LONG_TERM.rawValue) != 0 ? .longTerm : .shortTerm
        let holder = onBreak.map { CLeaseHolder($0, context, mount.notifier) }
        let range = Int(first)..<Int(first + pages)
        let pinned: PinHandle
        do throws(FSError) {
            pinned = try dax.open(mount.fileID(file)).pin(range, write: write, holder: holder, term: term)
        } catch {
            // (The lease may have been broken before the pin failed: its callback is skipped.)
            holder?.pin.store(CLeaseHolder.never, ordering: .releasing)
            throw CFailure(error)
        }
        let box = CPin(pinned, mount: mount, holder: holder, writable: write)
        let number: UInt64
        do throws(CFailure) {
            number = try Handles.addPin(box, of: mount)
        } catch {
            holder?.pin.store(CLeaseHolder.never, ordering: .releasing)
            box.handle.withLock { $0.pinned.take()?.unpin() }
            throw error
        }
        holder?.pin.store(number, ordering: .releasing)
        out.pointee = number
    }
}

@_cdecl("daxlab_pin_block")
public func daxlabPinBlock(_ pin: UInt64, _ index: UInt64) -> Int64 {
    cCall { () throws(CFailure) -> Int64 in
        let box = try Handles.pin(pin)
        return try box.handle.withLock { (box: inout PinHandleBox) throws(CFailure) -> Int64 in
            try box.use(pin) { (pinned: borrowing PinHandle) throws(CFailure) -> Int64 in
                guard index < UInt64(pinned.count) else {
                    throw CFailure(EINVAL, "index \(index) is outside the pin's \(pinned.count) page(s)")
                }
                return Int64(pinned.block(at: Int(index)))
            }
        }
    }
}

@_cdecl("daxlab_pin_write")
public func daxlabPinWrite(
    _ pin: UInt64, _ index: UInt64, _ data: UnsafeRawPointer?, _ count: Int, _ offset: UInt64
) -> Int32 {
    Int32(cCall { () throws(CFailure) -> Int64 in
        let box = try Handles.pin(pin)
        guard let data else { throw CFailure(EINVAL, "data is NULL") }
        guard offset <= 4096, count >= 0, UInt64(count) <= 4096 - offset else {
            throw CFailure(EINVAL, "\(count) bytes at offset \(offset) do not fit in a 4096-byte page")
        }
        guard box.writable else { throw CFailure(EPERM, "pin \(pin) was taken without DAXLAB_PIN_WRITE: a device cannot write through it") }
        return try box.handle.withLock { (box: inout PinHandleBox) throws(CFailure) -> Int64 in
            try box.use(pin) { (pinned: borrowing PinHandle) throws(CFailure) -> Int64 in
                guard index < UInt64(pinned.count) else {
                    throw CFailure(EINVAL, "index \(index) is outside the pin's \(pinned.count) page(s)")
                }
                guard pinned.block(at: Int(index)) != 0 else {
                    throw CFailure(EINVAL, "page \(index) of a read pin is a hole: pin with DAXLAB_PIN_WRITE to write")
                }
                // The source is read as the kernel would read it: one that cannot be read gives
                // -EFAULT, not a signal.
                let bounce = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1), alignment: 64)
                defer { bounce.deallocate() }
                try copyChecked(to: bounce, from: data, count: count, "the source at \(data)")
                let landed = try fsCall { () throws(FSError) in
                    try pinned.write(at: Int(index), offset: Int(offset), from: bounce, count: count)
                }
                return landed ? 1 : 0
            }
        }
    })
}

@_cdecl("daxlab_pin_revoked")
public func daxlabPinRevoked(_ pin: UInt64) -> Int32 {
    Int32(cCall { () throws(CFailure) -> Int64 in
        let box = try Handles.pin(pin)
        return try box.handle.withLock { (box: inout PinHandleBox) throws(CFailure) -> Int64 in
            try box.use(pin) { (pinned: borrowing PinHandle) throws(CFailure) -> Int64 in
                pinned.isRevoked ? 1 : 0
            }
        }
    })
}

@_cdecl("daxlab_unpin")
public func daxlabUnpin(_ pin: UInt64) -> Int32 {
    cCall { () throws(CFailure) in
        let cPin = try Handles.pin(pin)
        // Counted as a call on the mount: the pin leaves the mount's set before the unpin (which
        // may wait for a truncate's lease break), and an unmount then waits for the unpin to end
        // instead of refusing.
        let mount = cPin.mount
        try mount.enter(pin)
        defer { mount.leave() }
        // (The handle is taken under its lock: of two unpins, one finds it gone.)
        let unpinned = cPin.handle.withLock { (box: inout PinHandleBox) -> Bool in
            guard let pinned = box.pinned.take() else { return false }
            cPin.holder?.pin.store(CLeaseHolder.never, ordering: .releasing)
            Handles.removePin(pin, of: mount)
            pinned.unpin()
            return true
        }
        guard unpinned else {
            throw CFailure(EBADF, "pin handle \(pin) is not a pin held now (unpinned already, or never pinned)")
        }
    }
}

@_cdecl("daxlab_statistics")
public func daxlabStatistics(_ handle: UInt64, _ statistics: UnsafeMutablePointer<daxlab_statistics>?) -> Int32 {
    cCall { () throws(CFailure) in
        let mount = try Handles.enter(handle)
        defer { mount.leave() }
        let out = try output(statistics, "statistics")
        let counters = try mount.attached().statistics
        func value(_ counter: KeyPath<PolicyStatistics, ManagedAtomic<Int>>) -> UInt64 {
            UInt64(max(0, counters[keyPath: counter].load(ordering: .relaxed)))
        }
        out.pointee = daxlab_statistics(
            refused_busy: value(\.refusedBusy), waits: value(\.waits), truncates_waited: value(\.truncatesWaited),
            lease_breaks: value(\.leaseBreaks), revocations: value(\.revocations),
            sequestered_now: value(\.sequesteredNow), deferred_now: value(\.deferredNow),
            pinned_blocks_freed: value(\.pinnedBlocksFreed), window_faults: value(\.windowFaults),
            long_term_refused: value(\.longTermRefused),
            callbacks_dropped: UInt64(mount.notifier.dropped.load(ordering: .relaxed)))
    }
}
