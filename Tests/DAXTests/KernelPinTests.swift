import CShims
@testable import DAX
import DMA
@_spi(Oracle) import DaxFS
import Foundation
import Testing
import TestSupport

/// Why io_uring or O_DIRECT cannot be used here, or nil (TestSupport's probes).
let ioUringRefusal = KernelFacilities.ioUringRefusal
let directIORefusal = KernelFacilities.directIORefusal

/// One 4 KiB block of a single byte in a file the kernel reads from: a memfd, or for O_DIRECT an
/// unnamed file in /var/tmp.
final class TaggedSource {
    let descriptor: Int32
    private let buffer = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)

    init(direct: Bool = false) throws {
        if direct {
            let path = "\(DeviceKind.defaultSourceDirectory)/.daxlab-test-\(getpid())-\(UUID().uuidString.prefix(8))"
            self.descriptor = open(path, O_RDWR | O_CREAT | O_EXCL | CShims_O_DIRECT, 0o600)
            unlink(path)
        } else {
            self.descriptor = CShims_memfd("daxlab-test")
        }
        try #require(self.descriptor >= 0, "could not open a source file: errno \(errno)")
    }

    deinit {
        close(self.descriptor)
        self.buffer.deallocate()
    }

    /// Makes the block all `byte`.
    func fill(_ byte: UInt8) throws {
        self.buffer.initializeMemory(as: UInt8.self, repeating: byte, count: 4096)
        try #require(pwrite(self.descriptor, self.buffer, 4096, 0) == 4096)
    }

    /// IORING_OP_READ_FIXED of the block into `address` (inside `slot`'s buffer of `ring`).
    func readFixed(_ ring: KernelRing, into address: UnsafeMutableRawPointer, slot: Int) -> Int32 {
        ring.readFixed(from: self.descriptor, offset: 0, into: address, length: 4096, slot: slot)
    }

    /// An O_DIRECT read of the block into `address`: -errno on failure.
    func readDirect(into address: UnsafeMutableRawPointer) -> Int32 {
        let read = pread(self.descriptor, address, 4096, 0)
        return read < 0 ? -errno : Int32(read)
    }
}

/// How kernel pins' views can be faulted here: through userfaultfd (the kernel faults them in)
/// where it works, and the pinner's own mapping (the fallback) always.
let viewMechanisms: [WindowFaultMechanism] =
    KernelFacilities.userfaultfdRefusal == nil ? [.userfaultfd, .signals] : [.signals]

/// Whether every byte of `pages` pages of `file` is `byte`.
func holds(_ lab: Lab, _ file: FileID, pages: Int, _ byte: UInt8) throws -> Bool {
    try lab.fs.read(file, offset: 0, count: pages * 4096).allSatisfy { $0 == byte }
}

/// Creates a file of `pages` pages of 0x42 (the victim) and returns it with the page, if any,
/// that took `block`. Written a page at a time, as a small file grows: a write of 16 pages or
/// more at once would take a 2 MiB-aligned run (stream allocation) instead of the blocks freed
/// last.
func makeVictim(_ lab: Lab, pages: Int, taking block: UInt32) throws -> (file: FileID, page: Int?) {
    let file = try lab.fs.create("victim")
    for page in 0..<pages { try lab.fs.write(file, offset: page * 4096, bytes: [UInt8](repeating: 0x42, count: 4096)) }
    return (file, (0..<pages).first { lab.fs.currentBlock(file, page: $0) == block })
}

/// Binds the calling thread to the CPU it runs on, so the blocks it frees and allocates come
/// from one allocator shard: a block freed is the next one handed out (LIFO), as in the seed's
/// story. Undo with `CShims_unbind_cpu()`.
func stayOnThisCPU() {
    _ = CShims_bind_to_cpu(CShims_current_cpu())
}

/// The kernel's own pins and writes into daxlab's blocks: io_uring fixed buffers (long-term pins,
/// IORING_OP_READ_FIXED) and O_DIRECT reads (short-term pins). Each race is made to happen on
/// purpose: the pin is held until the truncate has reached its decision.
@Suite("Kernel pins and kernel writes", .serialized, .timeLimit(.minutes(2)))
struct KernelPinTests {
    @Test("the kernel reproduces the seed's bug: a READ_FIXED through a long-term pin lands in another file's block once none freed it",
          .enabled(if: ioUringRefusal == nil, "io_uring is refused here (seccomp, io_uring_disabled or an old kernel)"))
    func kernelReproducesTheBug() throws {
        stayOnThisCPU()
        defer { _ = CShims_unbind_cpu() }
        let lab = try Lab(policy: .none, pages: 4)
        let ring = try KernelRing(slots: 4)
        let source = try TaggedSource()
        let (victim, page) = try holding(try lab.space.pin(0..<1, write: true, kernel: .longTerm(ring))) { (handle: borrowing PinHandle) throws -> (file: FileID, page: Int?) in
            let block = handle.block(at: 0)
            let kernelSlot = handle.kernelSlot
            let slot = try #require(kernelSlot)
            try source.fill(0xD1)
            let written = handle.kernelWrite(at: 0) { source.readFixed(ring, into: $0, slot: slot) }
            #expect(written == 4096)
            #expect(try holds(lab, lab.file, pages: 1, 0xD1), "the kernel wrote the file's page through its pin")

            try lab.fs.truncate(lab.file, size: 0)
            #expect(lab.fs.isFreeForAllocation(block), "none freed the block the kernel holds")
            let (victim, page) = try makeVictim(lab, pages: 32, taking: block)
            try source.fill(0xD2)
            let again = handle.kernelWrite(at: 0) { source.readFixed(ring, into: $0, slot: slot) }
            #expect(again == 4096,
                    "the kernel's pin outlived the truncate and its unmap")
            return (file: victim, page: page)
        }
        let taken = try #require(page, "the victim took the freed block")
        let bytes = try lab.fs.read(victim, offset: taken * 4096, count: 4096)
        #expect(bytes.allSatisfy { $0 == 0xD2 }, "the kernel wrote into the victim's block: the seed's bug")
    }

    /// The truncate runs on another thread and the test waits for its decision (it returned, or
    /// it sleeps on the pin) before the victim allocates and the kernel writes.
    @Test("a long-term kernel pin across a truncate: the kernel's write reaches another file only under none",
          .enabled(if: ioUringRefusal == nil, "io_uring is refused here (seccomp, io_uring_disabled or an old kernel)"),
          arguments: TruncatePolicy.allCases.filter { $0 != .mainline })  // (mainline refuses the pin: MainlineTests)
    func kernelWriteAcrossTruncate(policy: TruncatePolicy) throws {
        stayOnThisCPU()
        defer { _ = CShims_unbind_cpu() }
        let lab = try Lab(policy: policy, times: PolicyTimes(leaseBreakTime: .seconds(60)))
        let ring = try KernelRing(slots: 4)
        let source = try TaggedSource()
        let file = lab.file
        let statistics = lab.dax.statistics
        var truncated: Finished?
        let (victim, page) = try holding(try lab.space.pin(1..<2, write: true, kernel: .longTerm(ring))) { (handle: borrowing PinHandle) throws -> (file: FileID, page: Int?) in
            let block = handle.block(at: 0)
            let kernelSlot = handle.kernelSlot
            let slot = try #require(kernelSlot)
            let sleepsBefore = statistics.waits.load(ordering: .relaxed)
            let running = lab.background { _ = try? lab.fs.truncate(file, size: 0) }
            truncated = running
            try #require(waitUntil(seconds: 20) {
                running.isDone || statistics.waits.load(ordering: .relaxed) > sleepsBefore
            }, "\(policy): the truncate neither returned nor slept on the pin")
            let (victim, page) = try makeVictim(lab, pages: 32, taking: block)
            try source.fill(0xD2)
            let written = handle.kernelWrite(at: 0) { source.readFixed(ring, into: $0, slot: slot) }
            #expect(written == 4096)
            return (file: victim, page: page)
        }
        #expect(truncated?.wait(seconds: 20) == true, "\(policy): the truncate did not finish after the unpin")
        let intact = try holds(lab, victim, pages: 32, 0x42)
        if policy.isProtective {
            #expect(page == nil, "\(policy): the pinned block was handed to another file")
            #expect(intact, "\(policy): the kernel's write reached another file")
        } else {
            #expect(page != nil && !intact, "none: the kernel corrupts the victim")
        }
    }

    /// A kernel pin checks its pages once daxlab's pins are taken, under the file's lock: by one
    /// comparison of the invalidation sequence when no invalidation ran since the pin began, page
    /// by page when one did. The hook runs a punch (under none, which does not wait for pins)
    /// between daxlab's pins and that check.
    @Test("an invalidation between daxlab's pins and the kernel's fails the kernel pin if it hit the range (nothing stays pinned), and not if it missed",
          .enabled(if: ioUringRefusal == nil, "io_uring is refused here (seccomp, io_uring_disabled or an old kernel)"),
          arguments: [1, 3])
    func invalidationBeforeTheKernelPin(punchedPage: Int) throws {
        #if DAXLAB_TEST_HOOKS
        let lab = try Lab(policy: .none, pages: 4)
        let space = try lab.space
        let ring = try KernelRing(slots: 2)
        for page in 0..<4 { _ = try space.fault(page, write: true) }
        let before = (0..<4).map { lab.fs.currentBlock(lab.file, page: $0) }
        let sequenceBefore = space.sequence.load(ordering: .relaxed)
        let fired = Box(false)
        space.kernelPinHook = {
            guard !fired.value else { return }
            fired.value = true
            #expect(lab.dax.pins.pinCount(before[0]) == 1 && lab.dax.pins.pinCount(before[1]) == 1, "daxlab's pins are taken")
            try? lab.fs.punchHole(lab.file, offset: punchedPage * 4096, length: 4096)
        }
        defer { space.kernelPinHook = nil }
        let inside = punchedPage < 2
        do {
            let handle = try space.pin(0..<2, write: true, kernel: .longTerm(ring))
            #expect(!inside, "the pin of a range the punch invalidated succeeded")
            #expect(handle.block(at: 0) == before[0] && handle.block(at: 1) == before[1])
            let slot = handle.kernelSlot
            #expect(slot != nil, "the kernel pinned the range")
            handle.unpin()
        } catch {
            #expect(inside, "the pin failed though the punch missed its range: \(error)")
            #expect(error.code == .busy)
        }
        #expect(fired.value, "the hook ran")
        let sequenceAfter = space.sequence.load(ordering: .relaxed)
        #expect(sequenceAfter == sequenceBefore + 2, "the punch invalidated once: the page-by-page check ran")
        for index in 0..<2 { #expect(lab.dax.pins.pinCount(before[index]) == 0, "page \(index): a pin was left") }
        #expect(ring.freeSlots == 2, "the slot went back to the ring")
        #expect(space.leaseList.isEmpty)
        #else
        try Test.cancel(testHooksMissing)
        #endif
    }

    @Test("lease-break revokes a long-term kernel pin for real: a later READ_FIXED fails (EFAULT) and lands nowhere",
          .enabled(if: ioUringRefusal == nil, "io_uring is refused here (seccomp, io_uring_disabled or an old kernel)"))
    func revocationDefusesTheKernelPin() throws {
        stayOnThisCPU()
        defer { _ = CShims_unbind_cpu() }
        let lab = try Lab(policy: .leaseBreak, times: PolicyTimes(leaseBreakTime: .milliseconds(50)))
        let ring = try KernelRing(slots: 4)
        let source = try TaggedSource()
        let holder = Holder()  // ignores the break, as hardware in the middle of a transfer does
        let (victim, page) = try holding(
            try lab.space.pin(2..<4, write: true, holder: holder, kernel: .longTerm(ring))
        ) { (handle: borrowing PinHandle) throws -> (file: FileID, page: Int?) in
            let block = handle.block(at: 0)
            let kernelSlot = handle.kernelSlot
            let slot = try #require(kernelSlot)
            try lab.fs.truncate(lab.file, size: 4096)
            #expect(holder.breaks.value == 1)
            let revoked = handle.isRevoked
            #expect(revoked)
            #expect(lab.dax.statistics.revocations.load(ordering: .relaxed) == 1)
            let (victim, page) = try makeVictim(lab, pages: 32, taking: block)
            try source.fill(0xD2)
            let written = handle.kernelWrite(at: 0) { source.readFixed(ring, into: $0, slot: slot) }
            #expect(written == -EFAULT,
                    "the kernel refused the write into the revoked range")
            return (file: victim, page: page)
        }
        #expect(ring.freeSlots == 4, "the slot went back to the ring, once")
        #expect(page != nil, "the victim took the revoked pin's block (so a landed write would show)")
        #expect(try holds(lab, victim, pages: 32, 0x42), "nothing landed in the victim's blocks")
    }

    /// A revocation replaces a long-term pin's fixed buffer before it waits for the writes in
    /// flight; the slot itself stays taken until the pin is dropped, after that wait. A READ_FIXED
    /// submitted in between, after the revocation and before the slot is emptied, must already
    /// find the slot pointing elsewhere. The revocation hook holds the revoker there while the
    /// device submits: the pin and the slot are still held and the block is still the file's,
    /// so a write that landed would show in it.
    @Test("a READ_FIXED on a revoked slot, before the revoker drops the pin, fails (EFAULT) and lands nowhere",
          .enabled(if: ioUringRefusal == nil, "io_uring is refused here (seccomp, io_uring_disabled or an old kernel)"))
    func revokedSlotRefusesBeforeTheDrop() throws {
        #if DAXLAB_TEST_HOOKS
        let lab = try Lab(policy: .leaseBreak, pages: 4, times: PolicyTimes(leaseBreakTime: .milliseconds(50)))
        let ring = try KernelRing(slots: 4)
        let source = try TaggedSource()
        try source.fill(0xD3)
        let space = try lab.space
        let file = lab.file
        let base = lab.fs.mapping.base
        let holder = Holder()  // ignores the break, as hardware in the middle of a transfer does
        let revoking = DispatchSemaphore(value: 0)
        let resume = DispatchSemaphore(value: 0)
        let fired = Box(false)
        space.revocationHook = {
            guard !fired.value else { return }
            fired.value = true
            revoking.signal()
            _ = resume.wait(timeout: .now() + 60)
        }
        defer { space.revocationHook = nil }
        try holding(try space.pin(1..<2, write: true, holder: holder, kernel: .longTerm(ring))) { handle in
            let block = handle.block(at: 0)
            let kernelSlot = handle.kernelSlot
            let slot = try #require(kernelSlot)
            let truncated = lab.background { _ = try? lab.fs.truncate(file, size: 0) }
            let revoked = revoking.wait(timeout: .now() + 30) == .success
            var resumed = false
            defer { if !resumed { resume.signal() } }
            try #require(revoked, "the truncate never revoked the pin")
            // Revoked (the bit set, the slot's buffer replaced, the view unmapped); the pin, the
            // slot and the block are still held.
            let isRevoked = handle.isRevoked
            #expect(isRevoked)
            #expect(ring.freeSlots == 3, "the slot is still taken")
            #expect(lab.dax.pins.pinCount(block) == 1, "the pin is not dropped yet")
            #expect(lab.fs.currentBlock(file, page: 1) == block, "the block is still the file's")
            let written = handle.kernelWrite(at: 0) { source.readFixed(ring, into: $0, slot: slot) }
            #expect(written == -EFAULT, "the kernel wrote through the revoked slot (\(written))")
            let page = UnsafeRawBufferPointer(start: base + Int(block) * 4096, count: 4096)
            #expect(page.allSatisfy { $0 == 0xAA }, "the READ_FIXED landed in the revoked pin's block")
            resumed = true
            resume.signal()
            #expect(truncated.wait(seconds: 30), "the truncate did not finish after the revocation")
            #expect(lab.dax.statistics.revocations.load(ordering: .relaxed) == 1)
            #expect(ring.freeSlots == 4, "the revoker dropped the kernel's pin and gave the slot back")
            #expect(lab.dax.pins.pinCount(block) == 0, "the revoker dropped the pin")
        }
        #expect(ring.freeSlots == 4, "the slot went back to the ring, once")
        #expect(space.leaseList.isEmpty)
        #else
        try Test.cancel(testHooksMissing)
        #endif
    }

    @Test("a short-term kernel pin: O_DIRECT lands in the pinned block; after none's truncate it faults (EFAULT) instead of landing in the reused block",
          .enabled(if: directIORefusal == nil, "O_DIRECT from a disk file in /var/tmp is refused here"),
          arguments: viewMechanisms)
    func shortTermPin(mechanism: WindowFaultMechanism) throws {
        stayOnThisCPU()
        defer { _ = CShims_unbind_cpu() }
        let lab = try Lab(policy: .none, pages: 4, windowFaults: mechanism)
        let source = try TaggedSource(direct: true)
        let (victim, page) = try holding(try lab.space.pin(0..<1, write: true, kernel: .shortTerm)) { (handle: borrowing PinHandle) throws -> (file: FileID, page: Int?) in
            let block = handle.block(at: 0)
            try source.fill(0xD1)
            let written = handle.kernelWrite(at: 0) { source.readDirect(into: $0) }
            #expect(written == 4096)
            #expect(try holds(lab, lab.file, pages: 1, 0xD1), "the O_DIRECT read landed in the file's block")
            try lab.fs.truncate(lab.file, size: 0)
            let (victim, page) = try makeVictim(lab, pages: 32, taking: block)
            try source.fill(0xD2)
            let again = handle.kernelWrite(at: 0) { source.readDirect(into: $0) }
            #expect(again == -EFAULT,
                    "the truncate unmapped the pin's view: the kernel's GUP faults")
            return (file: victim, page: page)
        }
        #expect(page != nil, "the victim took the freed block (so a landed write would show)")
        #expect(try holds(lab, victim, pages: 32, 0x42), "nothing landed in the victim's blocks")
    }

    @Test("a short-term kernel pin whose page a refused truncate unmapped faults it in again, as GUP does",
          .enabled(if: directIORefusal == nil, "O_DIRECT from a disk file in /var/tmp is refused here"),
          arguments: viewMechanisms)
    func shortTermRefault(mechanism: WindowFaultMechanism) throws {
        let lab = try Lab(policy: .fail, pages: 4, windowFaults: mechanism)
        let source = try TaggedSource(direct: true)
        let faults = lab.dax.statistics.viewFaults
        try holding(try lab.space.pin(1..<2, write: true, kernel: .shortTerm)) { (handle: borrowing PinHandle) throws -> Void in
            try source.fill(0xD4)
            #expect(handle.kernelWrite(at: 0) { source.readDirect(into: $0) } == 4096)
            let before = faults.load(ordering: .relaxed)
            #expect(throws: FSError.self) { try lab.fs.truncate(lab.file, size: 0) }  // EBUSY, after unmapping
            try source.fill(0xD3)
            let written = handle.kernelWrite(at: 0) { source.readDirect(into: $0) }
            #expect(written == 4096)
            if mechanism == .userfaultfd {
                #expect(faults.load(ordering: .relaxed) == before + 1, "the kernel faulted the unmapped page through userfaultfd")
            }
        }
        #expect(try lab.fs.read(lab.file, offset: 4096, count: 4096).allSatisfy { $0 == 0xD3 })
    }

    /// With userfaultfd nothing of a kernel pin's view is mapped when the pin is taken (unless it
    /// maps the pinned blocks already): the kernel's own GUP faults each page in as it reaches
    /// it, once, as an O_DIRECT read into a fresh DAX mapping does.
    @Test("the kernel faults a short-term pin's view in through userfaultfd: each page once, as its I/O reaches it",
          .enabled(if: directIORefusal == nil && KernelFacilities.userfaultfdRefusal == nil,
                   "needs O_DIRECT from a disk file in /var/tmp and userfaultfd"))
    func shortTermViewFaults() throws {
        let lab = try Lab(policy: .wait, pages: 4)
        let source = try TaggedSource(direct: true)
        let faults = lab.dax.statistics.viewFaults
        let before = faults.load(ordering: .relaxed)
        try holding(try lab.space.pin(0..<3, write: true, kernel: .shortTerm)) { (handle: borrowing PinHandle) throws -> Void in
            #expect(faults.load(ordering: .relaxed) == before, "the pin itself mapped nothing")
            try source.fill(0xC1)
            #expect(handle.kernelWrite(at: 2) { source.readDirect(into: $0) } == 4096)
            #expect(faults.load(ordering: .relaxed) == before + 1, "the I/O faulted its page in")
            #expect(handle.kernelWrite(at: 2) { source.readDirect(into: $0) } == 4096)
            #expect(faults.load(ordering: .relaxed) == before + 1, "a second I/O finds the page mapped")
            #expect(handle.kernelWrite(at: 0) { source.readDirect(into: $0) } == 4096)
            #expect(faults.load(ordering: .relaxed) == before + 2)
        }
        #expect(try lab.fs.read(lab.file, offset: 0, count: 4096).allSatisfy { $0 == 0xC1 })
        #expect(try lab.fs.read(lab.file, offset: 8192, count: 4096).allSatisfy { $0 == 0xC1 })
        // The next pin of the same blocks keeps what the view maps, as a process's mapping stays.
        try holding(try lab.space.pin(0..<3, write: true, kernel: .shortTerm)) { (handle: borrowing PinHandle) throws -> Void in
            #expect(handle.kernelWrite(at: 2) { source.readDirect(into: $0) } == 4096)
        }
        #expect(faults.load(ordering: .relaxed) == before + 2, "a page the view kept faulted again")
    }

    /// A long-term pin's registration is the kernel's GUP of the whole view: with userfaultfd it
    /// faults every page in, outside the file's lock (a fault takes it).
    @Test("a long-term pin's io_uring registration faults its view in through userfaultfd, and READ_FIXED lands in the file",
          .enabled(if: ioUringRefusal == nil && KernelFacilities.userfaultfdRefusal == nil, "needs io_uring and userfaultfd"),
          .enabled(if: registrationRetriesFaults, "this kernel (before 6.10) registers io_uring buffers without retrying a fault: the pinner maps the view itself"))
    func longTermViewFaults() throws {
        let lab = try Lab(policy: .wait, pages: 4)
        let ring = try KernelRing(slots: 2)
        let source = try TaggedSource()
        let faults = lab.dax.statistics.viewFaults
        let before = faults.load(ordering: .relaxed)
        try holding(try lab.space.pin(0..<4, write: true, kernel: .longTerm(ring))) { (handle: borrowing PinHandle) throws -> Void in
            #expect(faults.load(ordering: .relaxed) == before + 4, "the registration faulted each page in")
            let kernelSlot = handle.kernelSlot
            let slot = try #require(kernelSlot)
            try source.fill(0xC2)
            #expect(handle.kernelWrite(at: 3) { source.readFixed(ring, into: $0, slot: slot) } == 4096)
        }
        #expect(try lab.fs.read(lab.file, offset: 3 * 4096, count: 4096).allSatisfy { $0 == 0xC2 })
        #expect(ring.freeSlots == 2)
    }

    /// A revoker holds no file lock, so a short-term pin's refault can pass its revocation check
    /// just before the revoked bit is set and map the view page just after the revoker unmapped
    /// it. The refault must see the revocation once it has mapped and leave nothing mapped: else
    /// the write (and the device's next one, before the revoker's last unmap) lands through that
    /// page, and the kernel's pin of it outlives the revocation. The interleaving is made on
    /// purpose: the first attempt reports EFAULT (as an I/O on the unmapped page does), and the
    /// refault's hook, past its check, waits until the revoker has set the bit and unmapped.
    @Test("a refault that maps a short-term pin's page just after a lease-break revocation unmapped it refuses the write",
          .enabled(if: directIORefusal == nil, "O_DIRECT from a disk file in /var/tmp is refused here"),
          arguments: viewMechanisms)
    func refaultRacingRevocation(mechanism: WindowFaultMechanism) throws {
        #if DAXLAB_TEST_HOOKS
        // A break time long enough for this thread to reach the refault's check before it ends.
        let lab = try Lab(
            policy: .leaseBreak, pages: 4, times: PolicyTimes(leaseBreakTime: .seconds(2)), windowFaults: mechanism)
        let source = try TaggedSource(direct: true)
        try source.fill(0xE1)
        let space = try lab.space
        let revoked = DispatchSemaphore(value: 0)
        let hookRan = Box(false)
        space.revocationHook = { revoked.signal() }
        space.refaultHook = {
            hookRan.value = true
            _ = revoked.wait(timeout: .now() + 30)
        }
        defer {
            space.refaultHook = nil
            space.revocationHook = nil
        }
        let (first, punch) = try holding(try space.pin(1..<2, write: true, kernel: .shortTerm)) {
            (handle: borrowing PinHandle) throws -> (Int32, Finished) in
            // The punch unmaps the page, finds it pinned, drops the file's lock for the lease's
            // break time, then revokes the pin.
            let punch = lab.background { _ = try? lab.fs.punchHole(lab.file, offset: 4096, length: 4096) }
            #expect(waitUntil(seconds: 30) { lab.dax.statistics.truncatesWaited.load(ordering: .relaxed) == 1 })
            // With userfaultfd the kernel's GUP faults the unmapped page and the fault service
            // refaults it; without, the first attempt reports EFAULT (as an I/O on the unmapped
            // page does) and the pin's retry refaults it.
            var attempts = 0
            let first = handle.kernelWrite(at: 0) { address in
                attempts += 1
                return attempts == 1 && mechanism == .signals ? -EFAULT : source.readDirect(into: address)
            }
            return (first, punch)
        }
        #expect(hookRan.value, "the refault's check came after the revocation: the race was not made")
        #expect(first == -EFAULT, "the refault mapped the page after the revocation, and the write landed (\(first))")
        #expect(punch.wait(seconds: 30), "the punch never finished")
        #expect(lab.dax.statistics.revocations.load(ordering: .relaxed) == 1)
        #else
        try Test.cancel(testHooksMissing)
        #endif
    }
}
