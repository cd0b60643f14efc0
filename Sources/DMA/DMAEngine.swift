import Atomics
import DAX
import DaxFS
import DaxlabSupport

#if canImport(Glibc)
import Glibc
import Pmem
#endif

/// How the devices behave.
public struct DMAConfiguration: Sendable {
    /// Device threads.
    public var devices: Int
    /// Who does their writes: daxlab's simulation or the kernel (`DeviceKind`).
    public var kind: DeviceKind
    /// Where `kernel-direct` devices keep their source files (a directory on a block device).
    public var sourceDirectory: String
    /// The RDMA device `rdma` devices use (nil: the first here).
    public var rdmaDevice: String?
    /// How long each device keeps a pin batch and writes into it (short like O_DIRECT, long like RDMA).
    public var pinDuration: Duration
    /// The first `longPinDevices` devices keep each pin this long instead: for a share of pins
    /// that outlive a lease-break time.
    public var longPinDuration: Duration
    public var longPinDevices: Int
    /// Pages per pin batch.
    public var pagesPerPin: ClosedRange<Int>
    /// The term of simulated devices' pins. Short-term pins last a random time between a
    /// twentieth of `pinDuration` and all of it (O_DIRECT-like: microseconds to a millisecond).
    public var term: PinTerm
    /// Devices mirror their ranges instead of pinning them (policy `odp`; simulated only).
    public var onDemandPaging: Bool
    public var seed: UInt64

    public init(
        devices: Int = 4, pinDuration: Duration = .milliseconds(2), longPinDuration: Duration = .milliseconds(100),
        longPinDevices: Int = 0, pagesPerPin: ClosedRange<Int> = 1...8, seed: UInt64 = 1,
        kind: DeviceKind = .simulated, term: PinTerm = .longTerm, onDemandPaging: Bool = false,
        sourceDirectory: String = DeviceKind.defaultSourceDirectory, rdmaDevice: String? = nil
    ) {
        self.devices = devices
        self.rdmaDevice = rdmaDevice
        self.term = term
        self.onDemandPaging = onDemandPaging
        self.kind = kind
        self.sourceDirectory = sourceDirectory
        self.pinDuration = pinDuration
        self.longPinDuration = longPinDuration
        self.longPinDevices = longPinDevices
        self.pagesPerPin = pagesPerPin
        self.seed = seed
    }
}

/// N devices on threads (`daxlab-dma-0`, `daxlab-dma-1`, ...). Each repeatedly picks a range of
/// one of the files, pins it, writes into every pinned block for its pin duration, and unpins
/// (`DMADevice`). A device whose long-term pins are refused (by the kernel on fs-dax, or by
/// policy `mainline`) stops (counted in `statistics.longTermRefusals`).
public final class DMAEngine: Sendable {
    public let dax: DAXFileSystem
    public let files: [FileID]
    public let configuration: DMAConfiguration
    public let statistics = DMAStatistics()
    public let devices: [DMADevice]
    private let running = ManagedAtomic<Bool>(false)
    private let threads = Locked<[JoinableThread]>([], rank: .dmaThreads)

    /// - Throws: for kernel devices, what `DMADevice.init` throws (io_uring or O_DIRECT refused).
    public init(
        dax: DAXFileSystem, files: [FileID], configuration: DMAConfiguration, observer: (any DMAObserver)? = nil
    ) throws(FSError) {
        self.dax = dax
        self.files = files
        self.configuration = configuration
        var devices: [DMADevice] = []
        for index in 0..<configuration.devices {
            devices.append(
                try DMADevice(
                    index: index, dax: dax, observer: observer, statistics: self.statistics, kind: configuration.kind,
                    term: configuration.term, onDemandPaging: configuration.onDemandPaging,
                    sourceDirectory: configuration.sourceDirectory, rdmaDevice: configuration.rdmaDevice))
        }
        self.devices = devices
    }

    /// Completed pin-write-unpin cycles of all devices.
    public var cycles: Int { self.devices.reduce(0) { $0 + $1.cycles.load(ordering: .relaxed) } }

    /// Starts the device threads.
    /// - Throws: when a thread cannot be started (the ones started are stopped again).
    public func start() throws {
        guard self.running.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged
        else { return }
        for device in self.devices {
            do {
                let thread = try JoinableThread.spawn(name: "daxlab-dma-\(device.index)") { self.run(device) }
                self.threads.withLock { $0.append(thread) }
            } catch {
                self.stop()
                throw error
            }
        }
    }

    /// Stops the devices and waits for them: every pin is dropped when this returns.
    public func stop() {
        self.running.store(false, ordering: .releasing)
        let threads = self.threads.withLock { threads in
            defer { threads.removeAll() }
            return threads
        }
        for thread in threads { thread.join() }
    }

    private func run(_ device: DMADevice) {
        var random = SplitMix64(seed: self.configuration.seed, stream: UInt64(device.index))
        let pinNanoseconds = (device.index < self.configuration.longPinDevices
            ? self.configuration.longPinDuration : self.configuration.pinDuration).nanoseconds
        let shortTerm = device.term == .shortTerm
        let span = self.configuration.pagesPerPin
        while self.running.load(ordering: .relaxed) {
            let file = self.files[random.next(below: self.files.count)]
            guard let size = try? self.dax.fs.stat(file).size, size >= pageSize else {
                sched_yield()
                continue
            }
            let filePages = size / pageSize
            let count = min(filePages, span.lowerBound + random.next(below: span.count))
            let first = random.next(below: filePages - count + 1)
            do { try device.pin(file, pages: first..<(first + count)) } catch {
                if error.code == .notSupported { return }  // long-term pins are refused here: stop
                continue
            }
            let held = shortTerm ? pinNanoseconds / 20 + UInt64(random.next(below: Int(pinNanoseconds))) : pinNanoseconds
            let deadline = MonotonicClock.now() + held
            repeat {
                device.transfer()
            } while MonotonicClock.now() < deadline && self.running.load(ordering: .relaxed)
            device.unpin()
        }
    }
}
