import Atomics
import DAX
import DaxFS

#if canImport(Glibc)
import Glibc
#endif

/// Sees every device write, before and after: the race harness's oracle hooks in here.
public protocol DMAObserver: AnyObject, Sendable {
    /// A device pinned `block` as `page` of `file`.
    func didPin(_ file: FileID, page: Int, block: UInt32)
    /// A device is about to write `tag` into `block`, which it pinned as `tag.page` of `tag.file`.
    func willWrite(_ tag: BlockTag, block: UInt32)
    /// The write landed, or (`landed == false`) was refused because the lease was revoked. For a
    /// landed write this runs inside the pin's revocation fence: the block cannot change hands
    /// through a lease break before it returns.
    func didWrite(_ tag: BlockTag, block: UInt32, landed: Bool)
}

/// How the simulated devices behave.
public struct DMAConfiguration: Sendable {
    /// Device threads.
    public var devices: Int
    /// How long each device keeps a pin batch and writes into it (short like O_DIRECT, long like RDMA).
    public var pinDuration: Duration
    /// Pages per pin batch.
    public var pagesPerPin: ClosedRange<Int>
    public var seed: UInt64

    public init(
        devices: Int = 4, pinDuration: Duration = .milliseconds(2), pagesPerPin: ClosedRange<Int> = 1...8,
        seed: UInt64 = 1
    ) {
        self.devices = devices
        self.pinDuration = pinDuration
        self.pagesPerPin = pagesPerPin
        self.seed = seed
    }
}

/// N simulated devices. Each repeatedly picks a range of one of the files, pins it (faulting
/// holes in), writes tagged 4 KiB blocks straight into the pinned pmem blocks (non-temporal copy,
/// drained) for the pin duration, and unpins. Devices ignore lease breaks until their pin
/// duration ends, as hardware in the middle of a transfer does; `lease-break` then revokes them.
public final class DMAEngine: Sendable {
    public let dax: DAXFileSystem
    public let files: [FileID]
    public let configuration: DMAConfiguration
    let observer: DMAObserver?
    let running = ManagedAtomic<Bool>(false)
    private let threads = Locked<[pthread_t]>([])
    public let statistics = DMAStatistics()

    public init(dax: DAXFileSystem, files: [FileID], configuration: DMAConfiguration, observer: DMAObserver? = nil) {
        self.dax = dax
        self.files = files
        self.configuration = configuration
        self.observer = observer
    }

    /// Starts the device threads.
    public func start() {
        guard self.running.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged
        else { return }
        for index in 0..<self.configuration.devices {
            let device = DMADevice(index: index, engine: self)
            let thread = spawnThread { device.run() }
            self.threads.withLock { $0.append(thread) }
        }
    }

    /// Stops the devices and waits for them: every pin is dropped when this returns.
    public func stop() {
        self.running.store(false, ordering: .releasing)
        let threads = self.threads.withLock { threads in
            defer { threads.removeAll() }
            return threads
        }
        for thread in threads { pthread_join(thread, nil) }
    }
}

/// Counters the devices keep.
public final class DMAStatistics: Sendable {
    public let pins = ManagedAtomic<Int>(0)
    public let pinnedPages = ManagedAtomic<Int>(0)
    public let writes = ManagedAtomic<Int>(0)
    /// Writes refused after a revocation: fenced, never landed.
    public let refusedWrites = ManagedAtomic<Int>(0)
    /// Pins that failed (the range was truncated away first, or no space for a hole).
    public let pinFailures = ManagedAtomic<Int>(0)
    /// Lease-break notices received.
    public let leaseBreaks = ManagedAtomic<Int>(0)
    /// Completed pin-write-unpin cycles: progress, for a watchdog.
    public let cycles = ManagedAtomic<Int>(0)
    init() {}
}

/// One simulated device.
final class DMADevice: LeaseHolder, @unchecked Sendable {
    // `generator` and `buffer` are used only by the device's own thread.
    let index: Int
    let engine: DMAEngine
    private var generator: UInt64
    private let buffer = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
    private var sequence: UInt64 = 0

    init(index: Int, engine: DMAEngine) {
        self.index = index
        self.engine = engine
        self.generator = engine.configuration.seed &+ UInt64(index) &* 0x9E37_79B9_7F4A_7C15
    }

    deinit { self.buffer.deallocate() }

    func leaseBroken(_ lease: LeaseInfo) {
        self.engine.statistics.leaseBreaks.wrappingIncrement(ordering: .relaxed)
    }

    private func random(_ bound: Int) -> Int {
        self.generator = self.generator &* 6364136223846793005 &+ 1442695040888963407
        return Int((self.generator >> 33) % UInt64(max(bound, 1)))
    }

    func run() {
        let engine = self.engine
        let stats = engine.statistics
        let pinNanoseconds = engine.configuration.pinDuration.nanoseconds
        while engine.running.load(ordering: .relaxed) {
            let file = engine.files[self.random(engine.files.count)]
            guard let size = try? engine.dax.fs.stat(file).size, size >= 4096 else {
                sched_yield()
                continue
            }
            let filePages = size / 4096
            let span = engine.configuration.pagesPerPin
            let count = min(filePages, span.lowerBound + self.random(span.count))
            let first = self.random(filePages - count + 1)
            let handle: PinHandle
            do {
                handle = try engine.dax.open(file).pin(first..<(first + count), write: true, holder: self)
            } catch {
                stats.pinFailures.wrappingIncrement(ordering: .relaxed)
                continue
            }
            stats.pins.wrappingIncrement(ordering: .relaxed)
            stats.pinnedPages.wrappingIncrement(by: count, ordering: .relaxed)
            if let observer = engine.observer {
                for index in 0..<handle.count { observer.didPin(file, page: first + index, block: handle.block(at: index)) }
            }
            let deadline = MonotonicClock.now() + pinNanoseconds
            repeat {
                for index in 0..<handle.count {
                    let block = handle.block(at: index)
                    self.sequence += 1
                    let tag = BlockTag(
                        file: file, page: first + index, writer: self.index, kind: .device, sequence: self.sequence)
                    tag.fill(self.buffer)
                    engine.observer?.willWrite(tag, block: block)
                    let observer = engine.observer
                    let landed = handle.write(at: index, from: self.buffer, count: 4096) { block in
                        observer?.didWrite(tag, block: block, landed: true)
                    }
                    if !landed { observer?.didWrite(tag, block: block, landed: false) }
                    (landed ? stats.writes : stats.refusedWrites).wrappingIncrement(ordering: .relaxed)
                }
            } while MonotonicClock.now() < deadline && engine.running.load(ordering: .relaxed)
            handle.unpin()
            stats.cycles.wrappingIncrement(ordering: .relaxed)
        }
    }
}

/// Starts a joinable thread running `body`.
package func spawnThread(_ body: @escaping @Sendable () -> Void) -> pthread_t {
    final class Box { let body: @Sendable () -> Void; init(_ body: @escaping @Sendable () -> Void) { self.body = body } }
    var thread = pthread_t()
    let context = Unmanaged.passRetained(Box(body)).toOpaque()
    let status = pthread_create(&thread, nil, { context in
        let box = Unmanaged<Box>.fromOpaque(context!).takeRetainedValue()
        box.body()
        return nil
    }, context)
    precondition(status == 0, "pthread_create failed: \(status)")
    return thread
}
