import DAX
@_spi(Oracle) import DaxFS
import DaxlabSupport
import Foundation
import TestSupport

/// A fresh image with one file of `pages` written pages, the DAX layer on top.
final class Lab: @unchecked Sendable {
    let path: String
    let fs: FileSystem
    let dax: DAXFileSystem
    let file: FileID

    init(policy: TruncatePolicy, pages: Int = 16, times: PolicyTimes = PolicyTimes(), size: Int = 32 << 20) throws {
        self.path = "/dev/shm/daxlab-dax-\(getpid())-\(UUID().uuidString.prefix(8))"
        _ = try FileSystem.format(path: self.path, size: size)
        self.fs = try FileSystem.mount(path: self.path)
        self.dax = try DAXFileSystem(fs: self.fs, policy: policy, times: times)
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
