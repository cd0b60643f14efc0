@testable import DAX
@_spi(Oracle) import DaxFS
import DaxlabSupport
import Foundation
import Testing
import TestSupport

/// A fresh image with one file of `pages` written pages, the DAX layer on top.
final class Lab: @unchecked Sendable {
    let path: String
    let fs: FileSystem
    let dax: DAXFileSystem
    let file: FileID

    /// - Parameters:
    ///   - asymmetricFence: false attaches the layer with the sequentially consistent fallback
    ///     fence, as where membarrier(2) is missing.
    ///   - windowFaults: `.signals` gives windows the fallback of a user without userfaultfd.
    ///   - windowGranularity: 2 MiB makes windows behave as over a device-dax device aligned to 2 MiB.
    init(
        policy: TruncatePolicy, pages: Int = 16, times: PolicyTimes = PolicyTimes(), size: Int = 32 << 20,
        asymmetricFence: Bool = true, windowFaults: WindowFaultMechanism = .userfaultfd, windowGranularity: Int? = nil
    ) throws {
        self.path = "/dev/shm/daxlab-dax-\(getpid())-\(UUID().uuidString.prefix(8))"
        _ = try FileSystem.format(path: self.path, size: size)
        self.fs = try FileSystem.mount(path: self.path)
        self.dax = try DAXFileSystem(
            fs: self.fs, policy: policy, times: times, asymmetricFence: asymmetricFence, windowFaults: windowFaults,
            windowGranularity: windowGranularity)
        self.file = try self.fs.create("data")
        try self.fs.write(self.file, offset: 0, bytes: [UInt8](repeating: 0xAA, count: pages * 4096))
    }

    deinit { unlink(self.path) }

    var space: AddressSpace { get throws(FSError) { try self.dax.open(self.file) } }

    /// Runs `body` on its own thread; `finished` tells when it returned.
    func background(_ body: @escaping @Sendable () -> Void) -> Finished {
        let finished = Finished()
        Thread {
            body()
            finished.signal()
        }.start()
        return finished
    }
}

/// Why a test that needs the DAX layer's test hooks did not run.
let testHooksMissing: Comment = "this build has no DAX test hooks: build with DAXLAB_TEST_HOOKS=1 in the environment (make test does)"

/// A one-shot event with a timed wait.
final class Finished: @unchecked Sendable {
    private let semaphore = DispatchSemaphore(value: 0)
    private let lock = NSLock()
    private var done = false
    func signal() {
        self.lock.withLock { self.done = true }
        self.semaphore.signal()
    }
    var isDone: Bool { self.lock.withLock { self.done } }
    /// Whether it finished within `seconds` (any number of waits may ask).
    func wait(seconds: Double) -> Bool {
        if self.isDone { return true }
        guard self.semaphore.wait(timeout: .now() + seconds) == .success else { return false }
        self.semaphore.signal()  // leave it signalled for later waits
        return true
    }
}

/// Polls `condition` every millisecond for up to `seconds`.
/// - Returns: whether it held in time.
func waitUntil(seconds: Double, _ condition: () -> Bool) -> Bool {
    let deadline = MonotonicClock.now() + UInt64(seconds * 1e9)
    while !condition() {
        guard MonotonicClock.now() < deadline else { return condition() }
        usleep(1000)
    }
    return true
}


/// A lease holder that counts breaks and can answer them by unpinning.
final class Holder: LeaseHolder, @unchecked Sendable {
    let breaks = Box(0)
    var onBreak: (@Sendable () -> Void)?
    func leaseBroken(_ lease: LeaseInfo) {
        self.breaks.value += 1
        self.onBreak?()
    }
}

// MARK: Pins released on every path
//
// A `PinHandle` dropped without `unpin()` stops the process ("PinHandle dropped without unpin"),
// and with it every suite still to run. A test that holds a pin while something can throw (a
// failed `#require`, a `try` that fails) must release it on that path too, so that a failure is
// reported as a failure: hold it with `holding`, or in a `HandleSlot` unpinned in a `defer`, and
// ask for a pin that must be refused with `refusal`, which releases one granted by mistake.

/// Runs `body` with `handle` and unpins it afterwards, whether `body` returned or threw (a
/// failed `#require` must not leak the pin).
func holding<Result>(_ handle: consuming PinHandle, _ body: (borrowing PinHandle) throws -> Result) throws -> Result {
    let result: Result
    do { result = try body(handle) } catch {
        handle.unpin()
        throw error
    }
    handle.unpin()
    return result
}

/// A pin handle another thread may unpin, or a `defer` (handles are not copyable, so a `defer`
/// cannot consume one itself): `unpin()` releases it the first time and does nothing after.
final class HandleSlot: @unchecked Sendable {
    // `handle` is touched only with `lock` held.
    private let lock = NSLock()
    private var handle: PinHandle?
    init(_ handle: consuming PinHandle) { self.handle = consume handle }

    /// Runs `body` with the handle while it is still pinned; nil once it was unpinned.
    func withHandle<Result>(_ body: (borrowing PinHandle) throws -> Result) rethrows -> Result? {
        self.lock.lock()
        defer { self.lock.unlock() }
        switch self.handle {
        case .some(let handle): return try body(handle)
        case .none: return nil
        }
    }

    func unpin() {
        self.lock.lock()
        let taken = self.handle.take()
        self.lock.unlock()
        taken?.unpin()
    }
}

/// Asks for a pin that must be refused. - Returns: the error it was refused with; nil when it
/// was granted, which is recorded as an issue (`comment`), and the pin released at once.
func refusal(
    _ comment: Comment, sourceLocation: SourceLocation = #_sourceLocation, of pin: () throws -> PinHandle
) -> FSError? {
    do {
        let handle = try pin()
        Issue.record(comment, sourceLocation: sourceLocation)
        handle.unpin()
        return nil
    } catch let error as FSError {
        return error
    } catch {
        Issue.record("refused with \(error), not an FSError", sourceLocation: sourceLocation)
        return nil
    }
}

extension Result {
    /// The error, if it failed.
    var failure: Failure? {
        if case .failure(let error) = self { error } else { nil }
    }
}
