import CShims
@testable import DAX
@_spi(Oracle) import DaxFS
import DaxlabSupport
import Foundation
import Testing
import TestSupport

/// Whether this test process runs under ThreadSanitizer, whose own SIGBUS handler reports a bus
/// error and exits 66 instead of dying by the signal.
let underThreadSanitizer = dlsym(nil, "__tsan_init") != nil  // nil: RTLD_DEFAULT

/// Why windows cannot be served by userfaultfd here (the fault service says), or nil.
let userfaultfdRefusal = FaultService.shared.refusal

/// The mechanisms windows can have here: both where userfaultfd is granted, signals alone where not.
let windowMechanisms: [WindowFaultMechanism] = userfaultfdRefusal == nil ? [.userfaultfd, .signals] : [.signals]

/// Real MMU mappings of a file: CPU faults in its window enter daxlab's fault path, truncate and
/// punch unmap for real. Each test runs with userfaultfd and with the SIGSEGV fallback.
@Suite("The mapped window: real faults", .serialized, .timeLimit(.minutes(1)))
struct WindowTests {
    @Test("a store faults a hole in (a new block, mapped by the MMU); a load of a hole maps zeros and allocates nothing", arguments: windowMechanisms)
    func faultsThroughTheWindow(mechanism: WindowFaultMechanism) throws {
        let lab = try Lab(policy: .wait, pages: 4, windowFaults: mechanism)
        try lab.fs.truncate(lab.file, size: 8 * 4096)  // pages 4..<8 are holes
        let window = try lab.space.mapWindow()
        #expect(try lab.space.windowFaults == mechanism)
        #expect(window.load(fromByteOffset: 0, as: UInt8.self) == 0xAA, "page 0 is the file's data")
        #expect((window + 5 * 4096).load(as: UInt64.self) == 0, "a hole reads zeros")
        #expect(lab.fs.currentBlock(lab.file, page: 5) == 0, "a read fault allocates nothing")
        (window + 5 * 4096 + 100).storeBytes(of: 0x1234_5678, as: UInt32.self)  // the zero page: faults again
        #expect(lab.fs.currentBlock(lab.file, page: 5) != 0, "the store allocated a block")
        let bytes = try lab.fs.read(lab.file, offset: 5 * 4096 + 100, count: 4)
        #expect(bytes == [0x78, 0x56, 0x34, 0x12], "the store went through the MMU into the file's block")
        (window + 2 * 4096).storeBytes(of: 0x55, as: UInt8.self)
        #expect(try lab.fs.read(lab.file, offset: 2 * 4096, count: 1) == [0x55])
    }

    @Test("a hole read through the window, then written with write(2), fallocate or a pin: the window shows the new block, not the zeros",
          arguments: windowMechanisms)
    func zerosGiveWayToANewBlock(mechanism: WindowFaultMechanism) throws {
        let lab = try Lab(policy: .wait, pages: 1, windowFaults: mechanism)
        try lab.fs.truncate(lab.file, size: 4 * 4096)
        let space = try lab.space
        let window = try space.mapWindow()
        for page in 1..<4 { #expect((window + page * 4096).load(as: UInt8.self) == 0, "page \(page) is a hole") }
        try lab.fs.write(lab.file, offset: 4096, bytes: [0x11])
        #expect((window + 4096).load(as: UInt8.self) == 0x11, "write(2) allocated the hole: the zeros must go")
        _ = try lab.fs.fallocate(lab.file, offset: 2 * 4096, length: 4096)
        try lab.fs.write(lab.file, offset: 2 * 4096, bytes: [0x22])  // (into the block fallocate made)
        #expect((window + 2 * 4096).load(as: UInt8.self) == 0x22)
        let handle = try space.pin(3..<4, write: true)
        handle.unpin()
        try lab.fs.write(lab.file, offset: 3 * 4096, bytes: [0x33])
        #expect((window + 3 * 4096).load(as: UInt8.self) == 0x33, "a pin's write fault allocated the hole")
        (window + 3 * 4096 + 1).storeBytes(of: 0x34, as: UInt8.self)
        #expect(try lab.fs.read(lab.file, offset: 3 * 4096 + 1, count: 1) == [0x34], "a store reaches the file")
    }

    @Test("a punched page reads zeros through the window afterwards; its old mapping is gone", arguments: windowMechanisms)
    func punchUnmaps(mechanism: WindowFaultMechanism) throws {
        let lab = try Lab(policy: .wait, pages: 4, windowFaults: mechanism)
        let window = try lab.space.mapWindow()
        #expect((window + 4096).load(as: UInt8.self) == 0xAA)
        try lab.fs.punchHole(lab.file, offset: 4096, length: 4096)
        #expect((window + 4096).load(as: UInt64.self) == 0, "the page faults again and finds a hole")
        #expect((window + 2 * 4096).load(as: UInt8.self) == 0xAA, "the neighbours keep their data")
    }

    @Test("an access past the end of file after a truncate raises SIGBUS, as the kernel does",
          .enabled(if: !underThreadSanitizer,
                   "ThreadSanitizer's SIGBUS handler turns the death into a report ('BUS on unknown address') and exit 66"),
          arguments: windowMechanisms)
    func sigbusPastEndOfFile(mechanism: WindowFaultMechanism) async {
        await #expect(processExitsWith: .signal(SIGBUS)) { [mechanism] in
            let lab = try Lab(policy: .wait, pages: 4, windowFaults: mechanism)
            unlink(lab.path)  // this process dies of the signal, before any cleanup: no leftover image
            let window = try lab.space.mapWindow()
            (window + 3 * 4096).storeBytes(of: 1, as: UInt8.self)
            try lab.fs.truncate(lab.file, size: 4096)
            // A store through the MMU to memory the compiler cannot see the end of: it happens.
            (window + 3 * 4096).storeBytes(of: 2, as: UInt8.self)
            Issue.record("the store past the end of file did not raise SIGBUS")
        }
    }

    @Test("a fault waits while another thread holds the file's lock, and goes on when it is released", arguments: windowMechanisms)
    func faultWaitsForTheLock(mechanism: WindowFaultMechanism) throws {
        let lab = try Lab(policy: .wait, pages: 4, windowFaults: mechanism)
        let window = try lab.space.mapWindow()
        let lock = lab.fs.invalidateLock(for: lab.file)
        lock.lockExclusive()
        let address = UInt(bitPattern: window + 2 * 4096)
        let touched = lab.background { UnsafeMutableRawPointer(bitPattern: address)!.storeBytes(of: 7, as: UInt8.self) }
        // The fault sleeps on the lock (its waiting bit is set) and has not stored.
        #expect(waitUntil(seconds: 30) { lock.hasWaiters }, "the fault never waited for the file's lock")
        #expect(!touched.isDone, "the fault went on while a truncate-like holder had the lock")
        lock.unlock()
        #expect(touched.wait(seconds: 10), "the fault did not go on once the lock was released")
        #expect(try lab.fs.read(lab.file, offset: 2 * 4096, count: 1) == [7])
    }

    @Test("Jan Kara's case through the MMU: a pinner faults another page while a truncate waits on its pin", arguments: windowMechanisms)
    func karaThroughTheWindow(mechanism: WindowFaultMechanism) throws {
        let lab = try Lab(policy: .wait, pages: 64, windowFaults: mechanism)
        let space = try lab.space
        let window = try space.mapWindow()
        let file = lab.file
        for round in 0..<20 {
            let handle = try space.pin(0..<1, write: true, kernel: .shortTerm)
            let sleeps = lab.dax.statistics.waits.load(ordering: .relaxed)
            let punched = lab.background { try? lab.fs.punchHole(file, offset: 0, length: 4096) }
            #expect(waitUntil(seconds: 10) { lab.dax.statistics.waits.load(ordering: .relaxed) > sleeps })
            // The punch sleeps on the pin without the lock: this fault of another page goes on.
            (window + (32 + round % 16) * 4096).storeBytes(of: UInt8(round), as: UInt8.self)
            handle.unpin()
            #expect(punched.wait(seconds: 10), "round \(round): deadlock")
            try lab.fs.write(file, offset: 0, bytes: [1])
        }
    }

    @Test("a window over a file whose blocks are never consecutive, larger than vm.max_map_count pages: every page right, the mappings under the budget",
          .enabled(if: !underThreadSanitizer, "72,000 faults under ThreadSanitizer take minutes; the concurrent windows test runs the service under it"))
    func noMappingCeiling() throws {
        let service = FaultService.shared
        let pages = FaultService.readMaximumMappings() + 6_470  // past the kernel's ceiling, whatever it is here
        let lab = try Lab(policy: .wait, pages: 0, size: (2 * pages + 8_192) * 4096)
        // A file of twice as many pages, every other one punched, then the file under test
        // written into the holes: its blocks alternate with the other file's.
        let other = try lab.fs.create("other")
        let chunk = [UInt8](repeating: 0xEE, count: 256 * 4096)
        for start in stride(from: 0, to: 2 * pages, by: 256) {
            try lab.fs.write(other, offset: start * 4096, bytes: Array(chunk.prefix(min(256, 2 * pages - start) * 4096)))
        }
        for page in stride(from: 1, to: 2 * pages, by: 2) { try lab.fs.punchHole(other, offset: page * 4096, length: 4096) }
        for page in 0..<pages { try lab.fs.write(lab.file, offset: page * 4096, bytes: [UInt8(truncatingIfNeeded: page), 0x5A]) }
        let blocks = (0..<pages).map { lab.fs.currentBlock(lab.file, page: $0) }
        let runs = zip(blocks, blocks.dropFirst()).filter { $0.1 != $0.0 &+ 1 }.count
        #expect(runs > pages * 9 / 10, "the file's blocks are consecutive after all (\(runs) breaks): the test proves nothing")
        let dropped = service.droppedRegions.load(ordering: .relaxed)
        let window = try lab.space.mapWindow()
        var wrong = 0
        for page in 0..<pages where (window + page * 4096).load(as: UInt16.self) != UInt16(UInt8(truncatingIfNeeded: page)) | 0x5A00 {
            wrong += 1
        }
        #expect(wrong == 0, "\(wrong) pages read wrong through the window")
        let mappings = FaultService.countMappings()
        #expect(mappings < service.mappingBudget + 1024, "\(mappings) mappings, the budget is \(service.mappingBudget)")
        #expect(service.droppedRegions.load(ordering: .relaxed) > dropped, "nothing was dropped: the budget never acted")
        // A dropped page faults back in with its data.
        #expect((window + 4096).load(as: UInt16.self) == 0x5A01)
    }
}

/// Huge faults: a 2 MiB range of a file that is one aligned run of the image is mapped whole by
/// one fault, as `dax_iomap_pmd_fault` maps a PMD.
@Suite("Huge faults", .serialized, .timeLimit(.minutes(1)))
struct HugeFaultTests {
    /// A lab whose file is 4 MiB written in order (two aligned runs).
    private func sequentialFile(_ mechanism: WindowFaultMechanism, granularity: Int? = nil) throws -> Lab {
        let lab = try Lab(policy: .sequester, pages: 0, windowFaults: mechanism, windowGranularity: granularity)
        for chunk in 0..<64 {
            let bytes = (0..<16 * 4096).map { UInt8(truncatingIfNeeded: (chunk * 16 + $0 / 4096) &* 7 &+ 1) }
            try lab.fs.write(lab.file, offset: chunk * 16 * 4096, bytes: bytes)
        }
        #expect(lab.fs.alignedRun(lab.file, page: 0) != nil && lab.fs.alignedRun(lab.file, page: 512) != nil,
                "the file system gave the file no aligned runs: nothing here tests a huge fault")
        return lab
    }

    private func expected(_ page: Int) -> UInt8 { UInt8(truncatingIfNeeded: page &* 7 &+ 1) }

    @Test("a 4 MiB file written in order is mapped by two faults of 2 MiB each", arguments: windowMechanisms)
    func twoFaultsMapFourMebibytes(mechanism: WindowFaultMechanism) throws {
        let lab = try self.sequentialFile(mechanism)
        let window = try lab.space.mapWindow()
        let faults = lab.dax.statistics.windowFaults.load(ordering: .relaxed)
        var wrong = 0
        for page in 0..<1024 where (window + page * 4096 + 99).load(as: UInt8.self) != self.expected(page) { wrong += 1 }
        #expect(wrong == 0)
        #expect(lab.dax.statistics.windowFaults.load(ordering: .relaxed) - faults == 2, "one fault per 2 MiB")
        #expect(lab.dax.statistics.hugeFaults.load(ordering: .relaxed) == 2)
    }

    @Test("stores through the window into a file of holes allocate each 2 MiB range at once, as one aligned run",
          arguments: windowMechanisms)
    func coldWritesFaultWholeRuns(mechanism: WindowFaultMechanism) throws {
        let lab = try Lab(policy: .sequester, pages: 0, windowFaults: mechanism)
        try lab.fs.truncate(lab.file, size: 1024 * 4096)
        let window = try lab.space.mapWindow()
        for page in 0..<1024 { (window + page * 4096).storeBytes(of: self.expected(page), as: UInt8.self) }
        #expect(lab.dax.statistics.hugeFaults.load(ordering: .relaxed) == 2)
        #expect(lab.dax.statistics.windowFaults.load(ordering: .relaxed) == 2, "the stores after each range's first faulted")
        #expect(lab.fs.alignedRun(lab.file, page: 0) != nil && lab.fs.alignedRun(lab.file, page: 1023) != nil)
        for page in [0, 1, 511, 512, 1023] {
            #expect(try lab.fs.read(lab.file, offset: page * 4096, count: 1) == [self.expected(page)], "page \(page)")
        }
    }

    @Test("a punch of one page inside a huge mapping splits it: zeros there, the rest intact; a pin in the range keeps its block",
          arguments: windowMechanisms)
    func punchSplitsAHugeMapping(mechanism: WindowFaultMechanism) throws {
        let lab = try self.sequentialFile(mechanism)
        let space = try lab.space
        let window = try space.mapWindow()
        _ = (window + 4096).load(as: UInt8.self)  // the first range, mapped whole
        #expect(lab.dax.statistics.hugeFaults.load(ordering: .relaxed) == 1)
        try holding(try space.pin(10..<20, write: true)) { handle in
            let pinned = (0..<handle.count).map { handle.block(at: $0) }
            try lab.fs.punchHole(lab.file, offset: 300 * 4096, length: 4096)
            #expect((window + 300 * 4096).load(as: UInt64.self) == 0, "the punched page reads zeros")
            var wrong = 0
            for page in 0..<512 where page != 300 && (window + page * 4096 + 99).load(as: UInt8.self) != self.expected(page) {
                wrong += 1
            }
            #expect(wrong == 0, "\(wrong) pages of the split range read wrong")
            #expect((10..<20).map { lab.fs.currentBlock(lab.file, page: $0) } == pinned, "the pinned pages keep their blocks")
            var byte: UInt8 = 0xD5
            #expect(try handle.write(at: 5, from: &byte, count: 1), "the device's write was refused")
        }
        #expect((window + 15 * 4096).load(as: UInt8.self) == 0xD5, "the device's write is seen through the window")
    }

    @Test("a window over a device aligned to 2 MiB maps aligned runs whole and nothing smaller: zeros for a hole, EFAULT for a block outside a run, nothing allocated",
          .enabled(if: userfaultfdRefusal == nil, "needs userfaultfd (the kernel's EFAULT is the check)"))
    func twoMebibyteGranularity() throws {
        let lab = try self.sequentialFile(.userfaultfd, granularity: 2 << 20)
        let space = try lab.space
        let window = try space.mapWindow()
        #expect(space.windowGranularity == 2 << 20)
        var wrong = 0
        for page in 0..<1024 where (window + page * 4096 + 99).load(as: UInt8.self) != self.expected(page) { wrong += 1 }
        #expect(wrong == 0)
        #expect(lab.dax.statistics.hugeFaults.load(ordering: .relaxed) == 2, "each 2 MiB by one huge fault")

        // A punch unmaps the whole first range; what is left of it is no aligned run.
        try lab.fs.punchHole(lab.file, offset: 300 * 4096, length: 4096)
        #expect((window + 300 * 4096).load(as: UInt64.self) == 0, "the punched page reads zeros")
        let source = try PatternSource(pages: 1, first: 0x61, direct: false)
        #expect(source.read(into: window + 5 * 4096, pages: 1) == -Int(EFAULT), "a block outside a run cannot be mapped: EFAULT")
        #expect(try lab.fs.read(lab.file, offset: 5 * 4096 + 99, count: 1) == [self.expected(5)], "the file still holds it")
        #expect(source.read(into: window + 300 * 4096, pages: 1) == -Int(EFAULT), "a write into a hole outside a run: EFAULT")
        #expect(lab.fs.currentBlock(lab.file, page: 300) == 0, "and nothing was allocated for it")
        let faults = lab.dax.statistics.windowFaults.load(ordering: .relaxed)
        #expect((window + 700 * 4096 + 99).load(as: UInt8.self) == self.expected(700), "the second range stays mapped")
        #expect(lab.dax.statistics.windowFaults.load(ordering: .relaxed) == faults)

        // Holes the file grew by become one aligned run at the first store.
        try lab.fs.truncate(lab.file, size: 2048 * 4096)
        (window + 1500 * 4096).storeBytes(of: 0x5A, as: UInt8.self)
        #expect(lab.dax.statistics.hugeFaults.load(ordering: .relaxed) == 3)
        #expect(try lab.fs.read(lab.file, offset: 1500 * 4096, count: 1) == [0x5A])
        #expect(lab.fs.alignedRun(lab.file, page: 1024) != nil)
    }

    @Test("on a 2 MiB-granular window a refused page is mapped again once writes complete its range as one aligned run",
          .enabled(if: userfaultfdRefusal == nil, "needs userfaultfd"))
    func refusalLiftedWhenRunCompletes() throws {
        let lab = try Lab(policy: .sequester, pages: 0, windowFaults: .userfaultfd, windowGranularity: 2 << 20)
        // Pages 0..<16 written in order (the start of an aligned run), the rest of 2 MiB holes.
        try lab.fs.write(lab.file, offset: 0, bytes: (0..<16 * 4096).map { UInt8(truncatingIfNeeded: ($0 / 4096) &* 7 &+ 1) })
        try lab.fs.truncate(lab.file, size: 512 * 4096)
        let window = try lab.space.mapWindow()
        let source = try PatternSource(pages: 1, first: 0x61, direct: false)
        // The range is no run yet: the kernel's access to page 5 (it has a block) is refused, and fenced.
        #expect(source.read(into: window + 5 * 4096, pages: 1) == -Int(EFAULT))
        // The rest written in order: if the allocator continued the run, the range is one aligned run now.
        for chunk in 1..<32 {
            try lab.fs.write(lab.file, offset: chunk * 16 * 4096, bytes: (0..<16 * 4096).map { UInt8(truncatingIfNeeded: (chunk * 16 + $0 / 4096) &* 7 &+ 1) })
        }
        try #require(lab.fs.alignedRun(lab.file, page: 0) != nil, "the allocator did not complete the run: nothing tested")
        // A huge fault could map it now; the kernel's pread into page 5 should succeed.
        #expect(source.read(into: window + 5 * 4096, pages: 1) == 4096, "page 5 still fenced: EFAULT for a mappable range")
        // Any other page faulting the range (here page 6) maps it whole and clears the fence.
        #expect(source.read(into: window + 6 * 4096, pages: 1) == 4096)
        #expect(source.read(into: window + 5 * 4096, pages: 1) == 4096)
    }


    @Test("a window refuses a granularity other than 4 KiB and 2 MiB, and a pin's view anything but 4 KiB")
    func granularitiesRefused() throws {
        let lab = try Lab(policy: .sequester, pages: 1)
        let mapping = try lab.space.mapping
        #expect(throws: FSError.self) { try MappedWindow(pages: 512, mapping: mapping, faults: .userfaultfd, granularity: 1 << 30) }
        #expect(throws: FSError.self) { try MappedWindow(pages: 512, mapping: mapping, tracked: true, granularity: 2 << 20) }
        #expect(try MappedWindow(pages: 512, mapping: mapping, faults: .userfaultfd, granularity: 2 << 20).granularity == 2 << 20)
    }
}
