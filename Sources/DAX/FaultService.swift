import Atomics
import CShims
import DaxFS
import DaxlabSupport
import Pmem

#if canImport(Glibc)
import Glibc
#endif

/// How a window's missing pages reach daxlab's fault path.
public enum WindowFaultMechanism: String, Sendable, Codable, CustomStringConvertible {
    /// The reservation is anonymous memory registered with userfaultfd: the CPU's faults and the
    /// kernel's (GUP for O_DIRECT and io_uring, `copy_to_user` for `read(2)`) are all served.
    case userfaultfd
    /// The reservation is `PROT_NONE` and a SIGSEGV handler serves the CPU's own loads and
    /// stores; the kernel's accesses to a page not touched yet fail with EFAULT.
    case signals

    public var description: String { self.rawValue }
}

/// The process's fault service: one thread that serves every window's faults, as the kernel's
/// page-fault handler serves a DAX mapping's. A fault reaches it either as a userfaultfd message
/// (the faulting thread, CPU or kernel, sleeps in the kernel until the service wakes it) or as a
/// request from the SIGSEGV handler (the faulting thread sleeps on a futex in the handler until
/// the service answers). Either way daxlab's fault path runs here, on an ordinary thread, never in
/// signal context.
///
/// A window is registered before its address is given out and removed when its address space
/// goes; the service enters a registration (under the registry's lock) before it serves a fault
/// in it, and the address space's teardown waits until no fault is being served there, so the
/// service never uses an address space that is gone.
final class FaultService: @unchecked Sendable {
    /// The service, started on the first window.
    static let shared = FaultService()

    /// The userfaultfd every window is registered with, or -1.
    let userfaultfd: Int32
    /// Why windows fall back to `.signals` (one line), where userfaultfd is refused.
    let refusal: String?
    /// The read end of the SIGSEGV handler's request pipe, or -1 when it could not be installed.
    private let requests: Int32
    private let startFailure: String?
    private let windows = Locked([Registration](), rank: .faultServiceWindows)
    /// The most memory mappings the process may have before the service drops window mappings,
    /// oldest region first: half of `vm.max_map_count` (the rest is the process's own).
    let mappingBudget: Int
    /// Regions with mappings, oldest first (the service's thread only).
    private var regions: [(window: Weak, region: Int)] = []
    private var oldestRegion = 0
    /// The process's mappings as last counted, plus what the service may have added since.
    private var estimatedMappings = 0
    /// Regions dropped to keep under the budget, ever.
    let droppedRegions = ManagedAtomic<Int>(0)
    /// Windows with pages fenced because their fault found no free block, each with its file
    /// system and how many calls had freed blocks there before the fault (the service's thread
    /// only), and the wake-up a call that frees blocks sends it (`spaceFreed`): an eventfd it
    /// polls, and a flag it reads between faults.
    private var spaceWaiters: [SpaceWaiter] = []
    private struct SpaceWaiter {
        weak var window: MappedWindow?
        weak var space: AddressSpace?
        let generation: UInt64
    }
    private let spaceEvents: Int32
    private let spaceWasFreed = ManagedAtomic<Bool>(false)
    /// Fences lifted because blocks were freed, ever.
    let liftedSpaceFences = ManagedAtomic<Int>(0)

    struct Weak {
        weak var window: MappedWindow?
    }

    /// One window in the service's table: a file's window, or a kernel pin's view.
    final class Registration: @unchecked Sendable {
        let window: MappedWindow
        /// A file's window's address space: used only between `enter` and `exit`, which its
        /// teardown waits out (`retire`).
        unowned(unsafe) let space: AddressSpace?
        /// A view's batch, which retires the registration before it goes.
        unowned(unsafe) let batch: PinBatch?
        /// The SIGSEGV handler's range slot (-1 for a view: only the kernel faults a view).
        let slot: Int32
        /// Faults being served in the window now (changed under the registry's lock; `retire`
        /// waits for 0).
        let serving = ManagedAtomic<Int>(0)
        var retired = false

        init(window: MappedWindow, space: AddressSpace?, batch: PinBatch?, slot: Int32) {
            self.window = window
            self.space = space
            self.batch = batch
            self.slot = slot
        }
    }

    private init() {
        self.mappingBudget = FaultService.readMaximumMappings() / 2
        let descriptor = CShims_uffd_open()
        if descriptor >= 0 {
            self.userfaultfd = descriptor
            self.refusal = nil
        } else {
            self.userfaultfd = -1
            let reason = String(cString: strerror(-descriptor))
            self.refusal = descriptor == -EPERM
                ? "userfaultfd is refused to this user (\(reason); vm.unprivileged_userfaultfd=0 and no access to "
                    + "/dev/userfaultfd): windows serve only the CPU's own faults, and the kernel's accesses to pages "
                    + "not touched yet (O_DIRECT, read(2), io_uring, RDMA registration) fail with EFAULT"
                : "userfaultfd is unavailable (\(reason)): windows serve only the CPU's own faults, and the kernel's "
                    + "accesses to pages not touched yet fail with EFAULT"
        }
        let events = CShims_event_open()
        self.spaceEvents = events >= 0 ? events : -1
        let pipe = CShims_window_faults_start()
        self.requests = pipe >= 0 ? pipe : -1
        self.startFailure = pipe >= 0 ? nil : "install the window fault handler: \(String(cString: strerror(-pipe)))"
        guard self.startFailure == nil else { return }
        do {
            _ = try JoinableThread.spawn(name: "daxlab-faults") { [self] in self.run() }
        } catch {
            fatalError("daxlab: could not start the window fault service: \(error)")
        }
    }

    /// The mechanism a new window gets when `wanted` is asked for (userfaultfd falls back to
    /// signals where it is refused).
    func mechanism(_ wanted: WindowFaultMechanism) -> WindowFaultMechanism {
        wanted == .userfaultfd && self.userfaultfd >= 0 ? .userfaultfd : .signals
    }

    /// Registers `window` of `space` before anyone is given its address.
    /// - Throws: `.io` when the handler could not be installed or the table is full.
    func register(_ window: MappedWindow, of space: AddressSpace) throws(FSError) -> Registration {
        if let startFailure { throw FSError(.io, startFailure) }
        let slot = CShims_window_range_add(window.base, window.pages * pageSize)
        guard slot >= 0 else { throw FSError(.io, "\(space.id): too many windows open in this process") }
        let registration = Registration(window: window, space: space, batch: nil, slot: slot)
        self.windows.withLock { $0.append(registration) }
        return registration
    }

    /// Registers `view`, the view of a kernel pin of `batch` served by userfaultfd, before the
    /// kernel is given its address; `batch` retires it before it lets the view go.
    func register(view: MappedWindow, of batch: PinBatch) throws(FSError) -> Registration {
        if let startFailure { throw FSError(.io, startFailure) }
        let registration = Registration(window: view, space: nil, batch: batch, slot: -1)
        self.windows.withLock { $0.append(registration) }
        return registration
    }

    /// Removes a registration and waits until no fault is being served in it.
    func retire(_ registration: Registration) {
        self.windows.withLock { windows in
            registration.retired = true
            windows.removeAll { $0 === registration }
        }
        if registration.slot >= 0 { CShims_window_range_remove(registration.slot) }
        // (On the service's own thread, the fault being served is this one's: the space's last
        // reference went during it. There is no other to wait for.)
        guard CShims_window_faults_on_service_thread() == 0 else { return }
        while registration.serving.load(ordering: .acquiring) != 0 { sched_yield() }
    }

    /// The registration whose window holds `address`, entered (call `exit` on it), or nil.
    private func enter(_ address: UInt) -> Registration? {
        self.windows.withLock { windows in
            guard let registration = windows.first(where: { $0.window.contains(address) }) else { return nil }
            registration.serving.wrappingIncrement(ordering: .acquiringAndReleasing)
            return registration
        }
    }

    // MARK: The service thread

    private func run() {
        CShims_window_faults_served_by_this_thread()
        var descriptors = [
            pollfd(fd: self.requests, events: Int16(POLLIN), revents: 0),
            pollfd(fd: self.userfaultfd, events: Int16(POLLIN), revents: 0),
            pollfd(fd: self.spaceEvents, events: Int16(POLLIN), revents: 0),
        ]
        // (Only userfaultfd windows fence pages: without it there is no space wake-up to poll.)
        let count = nfds_t(self.userfaultfd < 0 ? 1 : self.spaceEvents < 0 ? 2 : 3)
        let faults = UnsafeMutablePointer<CShims_uffd_fault>.allocate(capacity: 64)
        let requests = UnsafeMutablePointer<UnsafeMutablePointer<CShims_fault_request>?>.allocate(capacity: 64)
        // After a fault, the service spins (reads without sleeping) for a while before it sleeps
        // in poll again: a thread faulting page after page sends its next fault within
        // microseconds, and waking a sleeping thread on another CPU costs tens of them in a VM.
        var lastFault = MonotonicClock.now()
        while true {
            var served = 0
            if count > 1 {
                let read = CShims_uffd_read_faults(self.userfaultfd, faults, 64)
                for index in 0..<max(0, Int(read)) {
                    self.serve(faults[index].address, write: faults[index].is_write != 0, request: nil)
                }
                served += max(0, Int(read))
            }
            let read = CShims_window_fault_requests(self.requests, requests, 64)
            for index in 0..<max(0, Int(read)) {
                guard let request = requests[index] else { continue }
                self.serve(request.pointee.address, write: request.pointee.is_write != 0, request: request)
            }
            served += max(0, Int(read))
            if self.spaceWasFreed.load(ordering: .relaxed), self.spaceWasFreed.exchange(false, ordering: .acquiring) {
                self.liftSpaceFences()
            }
            let now = MonotonicClock.now()
            if served > 0 {
                lastFault = now
            } else if now &- lastFault < Self.spinNanoseconds {
                CShims_cpu_relax()
            } else {
                _ = poll(&descriptors, count, -1)  // (EINTR: look again)
                if count > 2, descriptors[2].revents != 0 { CShims_event_drain(self.spaceEvents) }
                lastFault = MonotonicClock.now()
            }
        }
    }

    /// How long the service spins after a fault before it sleeps.
    static let spinNanoseconds: UInt64 = 50_000

    /// Serves one fault: a userfaultfd message (`request` nil: the faulting thread is woken when
    /// it is done) or a SIGSEGV handler's request (answered).
    private func serve(_ address: UnsafeMutableRawPointer?, write: Bool, request: UnsafeMutablePointer<CShims_fault_request>?) {
        let target = UInt(bitPattern: address)
        guard let registration = self.enter(target) else {
            // No window there (any more): the handler lets the previous handler have it; a
            // userfaultfd waiter retries and finds whatever is mapped there now.
            if let request { CShims_window_fault_answer(request, Int32(CShims_FAULT_NOT_OURS)) }
            else if self.userfaultfd >= 0 { _ = CShims_uffd_wake(self.userfaultfd, UnsafeMutableRawPointer(bitPattern: target & ~UInt(pageSize - 1)), pageSize) }
            return
        }
        defer { registration.serving.wrappingDecrement(ordering: .releasing) }
        let window = registration.window
        let page = (Int(target) - Int(bitPattern: window.base)) / pageSize
        if let batch = registration.batch {
            // (Only the pin's own I/O or registration faults its view, so the pin stands while
            // the fault is served.)
            _ = batch.serveViewFault(window, page: page)
            window.wake(page..<(page + 1))
            return
        }
        let space = registration.space!
        let generation = space.source.spaceGeneration
        let resolved = space.serveWindowFault(window, page: page, write: write, signalled: request != nil)
        // (A fence is a mapping too.)
        self.account(window, resolved ?? page..<(page + 1))
        if resolved == nil, request == nil, window.waitsForSpace { self.waitForSpace(window, of: space, since: generation) }
        if let request {
            CShims_window_fault_answer(request, Int32(resolved != nil ? CShims_FAULT_MAPPED : CShims_FAULT_SIGBUS))
        } else {
            window.wake(resolved ?? page..<(page + 1))
        }
    }
}

// MARK: Fences that wait for space

extension FaultService {
    /// A call of this process freed blocks on a file system whose fault found none: the service
    /// lifts the fences that fault left (any thread; the service does the work on its own).
    func spaceFreed() {
        self.spaceWasFreed.store(true, ordering: .releasing)
        if self.spaceEvents >= 0 { CShims_event_signal(self.spaceEvents) }
    }

    /// `window` has pages fenced for want of space (the service's thread): they are lifted when
    /// its file system frees blocks after `generation` (its count of frees before the fault; at
    /// once if it did since), so that their next fault, the kernel's or the CPU's, tries to
    /// allocate again, as a DAX file's does.
    /// (A window waiting already keeps its older count: its earlier fence waits for a free
    /// since then, and a later one is lifted with it, to fault and wait again if need be.)
    fileprivate func waitForSpace(_ window: MappedWindow, of space: AddressSpace, since generation: UInt64) {
        self.spaceWaiters.removeAll { $0.window == nil }
        let waiting = self.spaceWaiters.first { $0.window === window }
        if waiting == nil { self.spaceWaiters.append(SpaceWaiter(window: window, space: space, generation: generation)) }
        space.source.notifyWhenSpaceFrees(since: waiting?.generation ?? generation) { FaultService.shared.spaceFreed() }
    }

    /// Lifts the space fences of the windows whose file system freed blocks since their fault
    /// (the service's thread); the others wait on, asking again to be told (the wake-up that
    /// brought the service here may have been a free their fault had counted already, which took
    /// their file system's request with it).
    fileprivate func liftSpaceFences() {
        var waiting: [SpaceWaiter] = []
        for waiter in self.spaceWaiters {
            guard let window = waiter.window, let space = waiter.space else { continue }
            guard space.source.spaceGeneration != waiter.generation else {
                waiting.append(waiter)
                space.source.notifyWhenSpaceFrees(since: waiter.generation) { FaultService.shared.spaceFreed() }
                continue
            }
            self.liftedSpaceFences.wrappingIncrement(by: window.liftSpaceFences(), ordering: .relaxed)
        }
        self.spaceWaiters = waiting
    }
}

// MARK: The mapping budget

extension FaultService {
    /// `vm.max_map_count` (65530 where it cannot be read).
    static func readMaximumMappings() -> Int {
        let descriptor = open("/proc/sys/vm/max_map_count", O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { return 65530 }
        defer { close(descriptor) }
        var bytes = [UInt8](repeating: 0, count: 32)
        let got = bytes.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
        guard got > 0, let value = Int(String(decoding: bytes[..<got].prefix { $0 >= 0x30 && $0 <= 0x39 }, as: UTF8.self)), value > 0
        else { return 65530 }
        return value
    }

    /// The process's memory mappings now (the lines of /proc/self/maps).
    static func countMappings() -> Int {
        let descriptor = open("/proc/self/maps", O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { return 0 }
        defer { close(descriptor) }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 16, alignment: 8)
        defer { buffer.deallocate() }
        var lines = 0
        while true {
            let got = read(descriptor, buffer.baseAddress, buffer.count)
            guard got > 0 else { break }
            for index in 0..<got where buffer[index] == UInt8(ascii: "\n") { lines += 1 }
        }
        return lines
    }

    /// After the service mapped `pages` of `window`: queues their region, and keeps the process's
    /// mappings under the budget. A mapping splits the reservation's VMA around it (up to two
    /// more VMAs) unless the kernel merges it with a neighbour whose offsets follow on, so the
    /// estimate grows by two per fault, and is replaced by a count when it reaches the budget;
    /// if the count is over it too, the oldest regions are dropped (each becomes one VMA again)
    /// until a quarter of the budget is free.
    func account(_ window: MappedWindow, _ pages: Range<Int>) {
        if window.queueRegion(of: pages.lowerBound) { self.regions.append((Weak(window: window), pages.lowerBound / MappedWindow.regionPages)) }
        self.estimatedMappings += 2
        guard self.estimatedMappings >= self.mappingBudget else { return }
        self.estimatedMappings = Self.countMappings()
        while self.estimatedMappings >= self.mappingBudget * 3 / 4, self.oldestRegion < self.regions.count {
            // A batch of the oldest regions, then a count.
            for _ in 0..<64 where self.oldestRegion < self.regions.count {
                let (reference, region) = self.regions[self.oldestRegion]
                self.oldestRegion += 1
                guard let oldest = reference.window, oldest !== window || region != pages.lowerBound / MappedWindow.regionPages else { continue }
                oldest.drop(region: region)
                self.droppedRegions.wrappingIncrement(ordering: .relaxed)
            }
            self.estimatedMappings = Self.countMappings()
        }
        if self.oldestRegion > 4096, self.oldestRegion * 2 > self.regions.count {
            self.regions.removeFirst(self.oldestRegion)
            self.oldestRegion = 0
        }
    }
}
