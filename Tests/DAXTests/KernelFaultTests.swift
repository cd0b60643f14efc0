import Atomics
import CShims
@testable import DAX
@_spi(Oracle) import DaxFS
import DaxlabSupport
import Foundation
import Testing
import TestSupport

/// A file the kernel reads from: `pages` pages, page `i` all of byte `first + i`. On a disk file
/// system, opened O_DIRECT (`direct`), or a memfd (the page cache: `read(2)` copies).
final class PatternSource: @unchecked Sendable {  // (immutable after init)
    let descriptor: Int32
    let pages: Int
    let first: UInt8

    init(pages: Int, first: UInt8, direct: Bool) throws {
        self.pages = pages
        self.first = first
        var bytes = [UInt8](repeating: 0, count: pages * 4096)
        for page in 0..<pages { bytes.replaceSubrange((page * 4096)..<((page + 1) * 4096), with: repeatElement(first &+ UInt8(page), count: 4096)) }
        if direct {
            let path = "\(KernelFacilities.directSourceDirectory)/.daxlab-test-\(getpid())-\(UUID().uuidString.prefix(8))"
            let writer = open(path, O_RDWR | O_CREAT | O_EXCL, 0o600)
            try #require(writer >= 0, "could not create \(path): errno \(errno)")
            defer { close(writer) }
            try #require(bytes.withUnsafeBytes { pwrite(writer, $0.baseAddress, $0.count, 0) } == bytes.count)
            fsync(writer)
            self.descriptor = open(path, O_RDONLY | CShims_O_DIRECT)
            unlink(path)
        } else {
            self.descriptor = CShims_memfd("daxlab-test")
            if self.descriptor >= 0 { _ = bytes.withUnsafeBytes { pwrite(self.descriptor, $0.baseAddress, $0.count, 0) } }
        }
        try #require(self.descriptor >= 0, "could not open a source file: errno \(errno)")
    }

    deinit { close(self.descriptor) }

    /// pread of `pages` pages from page `from` into `address`: the bytes read, or -errno.
    func read(into address: UnsafeMutableRawPointer, pages: Int, from: Int = 0) -> Int {
        let read = pread(self.descriptor, address, pages * 4096, off_t(from * 4096))
        return read < 0 ? -Int(errno) : read
    }

    /// Whether page `page` of `file` holds page `sourcePage` of this source.
    func landed(_ lab: Lab, page: Int, sourcePage: Int) throws -> Bool {
        try lab.fs.read(lab.file, offset: page * 4096, count: 4096).allSatisfy { $0 == self.first &+ UInt8(sourcePage) }
    }
}

let kernelFaultRefusal: String? = userfaultfdRefusal ?? directIORefusal

/// Whether this kernel's io_uring buffer registration may retry a fault (it pins with
/// `FAULT_FLAG_ALLOW_RETRY` from 6.10 on; before, a userfaultfd page fails with EFAULT).
let registrationRetriesFaults: Bool = {
    var name = utsname()
    uname(&name)
    let release = withUnsafeBytes(of: name.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    let numbers = release.split(whereSeparator: { !$0.isNumber }).prefix(2).compactMap { Int($0) }
    guard numbers.count == 2 else { return false }
    return numbers[0] > 6 || (numbers[0] == 6 && numbers[1] >= 10)
}()

/// Windows served by userfaultfd: the kernel's own accesses (GUP for O_DIRECT and io_uring,
/// `copy_to_user` for `read(2)`) fault pages in through daxlab's fault path, as they do on a DAX
/// file; past the end of file they fail with EFAULT, and the process goes on.
@Suite("Windows the kernel faults", .serialized, .timeLimit(.minutes(1)))
struct KernelFaultTests {
    @Test("an O_DIRECT pread into an untouched window returns the full length, and the data is in the file (holes allocated)",
          .enabled(if: kernelFaultRefusal == nil, "needs userfaultfd and O_DIRECT on a disk file system here"))
    func directReadIntoAnUntouchedWindow() throws {
        let lab = try Lab(policy: .wait, pages: 4)
        try lab.fs.truncate(lab.file, size: 8 * 4096)  // pages 4..<8 are holes
        let source = try PatternSource(pages: 8, first: 1, direct: true)
        let window = try lab.space.mapWindow()
        #expect(source.read(into: window, pages: 8) == 8 * 4096, "the kernel's GUP of an untouched window failed")
        for page in 0..<8 { #expect(try source.landed(lab, page: page, sourcePage: page), "page \(page)") }
        #expect(lab.fs.currentBlock(lab.file, page: 6) != 0, "the kernel's write fault allocated the hole")
        #expect((window + 5 * 4096).load(as: UInt8.self) == 6, "the CPU sees what the kernel wrote")
    }

    @Test("a buffered read(2) into an untouched window (copy_to_user) returns the full length",
          .enabled(if: userfaultfdRefusal == nil, "needs userfaultfd"))
    func bufferedReadIntoAnUntouchedWindow() throws {
        let lab = try Lab(policy: .wait, pages: 4)
        let source = try PatternSource(pages: 4, first: 0x31, direct: false)
        let window = try lab.space.mapWindow()
        #expect(source.read(into: window + 4096, pages: 2) == 2 * 4096)
        #expect(try source.landed(lab, page: 1, sourcePage: 0))
        #expect(try source.landed(lab, page: 2, sourcePage: 1))
        #expect(try lab.fs.read(lab.file, offset: 0, count: 1) == [0xAA], "page 0 untouched")
    }

    @Test("a read of a hole maps zeros write-protected: the kernel's write after it faults again and allocates",
          .enabled(if: kernelFaultRefusal == nil, "needs userfaultfd and O_DIRECT on a disk file system here"))
    func kernelWriteAfterAHoleRead() throws {
        let lab = try Lab(policy: .wait, pages: 1)
        try lab.fs.truncate(lab.file, size: 2 * 4096)
        let window = try lab.space.mapWindow()
        #expect((window + 4096).load(as: UInt64.self) == 0, "a hole reads zeros")
        #expect(lab.fs.currentBlock(lab.file, page: 1) == 0, "the read allocated nothing")
        let source = try PatternSource(pages: 1, first: 0x44, direct: true)
        #expect(source.read(into: window + 4096, pages: 1) == 4096)
        #expect(lab.fs.currentBlock(lab.file, page: 1) != 0, "the write-protect fault allocated the block")
        #expect(try source.landed(lab, page: 1, sourcePage: 0), "the kernel's write went to the file, not to the zeros")
    }

    @Test("io_uring registers an untouched window range (the kernel's long-term GUP faults it in), and READ_FIXED lands in the file",
          .enabled(if: kernelFaultRefusal == nil && ioUringRefusal == nil, "needs userfaultfd, io_uring and O_DIRECT here"),
          .enabled(if: registrationRetriesFaults, "this kernel (before 6.10) registers io_uring buffers without retrying a fault: a userfaultfd page fails with EFAULT"))
    func ioUringRegistersAnUntouchedWindow() throws {
        let lab = try Lab(policy: .wait, pages: 4)
        let ring = try KernelRing(slots: 1)
        let window = try lab.space.mapWindow()
        try ring.register(slot: 0, address: window, length: 4 * 4096)
        defer { ring.clear(0) }
        let source = try PatternSource(pages: 1, first: 0x55, direct: true)
        #expect(ring.readFixed(from: source.descriptor, offset: 0, into: window + 2 * 4096, length: 4096, slot: 0) == 4096)
        #expect(try source.landed(lab, page: 2, sourcePage: 0))
    }

    @Test("the kernel's access past the end of file fails with EFAULT and the process goes on; once the file grows it succeeds",
          .enabled(if: kernelFaultRefusal == nil, "needs userfaultfd and O_DIRECT on a disk file system here"))
    func kernelAccessPastTheEnd() throws {
        let lab = try Lab(policy: .wait, pages: 2)
        let window = try lab.space.mapWindow()
        let source = try PatternSource(pages: 1, first: 0x66, direct: true)
        #expect(source.read(into: window + 3 * 4096, pages: 1) == -Int(EFAULT), "past the end of file")
        #expect(source.read(into: window + 3 * 4096, pages: 1) == -Int(EFAULT), "still past it")
        try lab.fs.truncate(lab.file, size: 4 * 4096)
        #expect(source.read(into: window + 3 * 4096, pages: 1) == 4096, "the file grew over the page: it faults in")
        #expect(try source.landed(lab, page: 3, sourcePage: 0))
        // The same after a truncate that cut a mapped page off, and a write that grows it back.
        try lab.fs.truncate(lab.file, size: 4096)
        #expect(source.read(into: window + 3 * 4096, pages: 1) == -Int(EFAULT))
        try lab.fs.write(lab.file, offset: 4 * 4096, bytes: [1])
        #expect(source.read(into: window + 3 * 4096, pages: 1) == 4096)
    }

    @Test("the kernel's write fault on a full file system fails with EFAULT, and again while nothing is freed; once blocks are freed the same read faults in and lands in the file",
          .enabled(if: userfaultfdRefusal == nil, "needs userfaultfd"))
    func kernelAccessWithoutSpace() throws {
        let lab = try Lab(policy: .wait, pages: 1, size: 4 << 20)
        try lab.fs.truncate(lab.file, size: 2 * 4096)  // page 1: a hole
        // Every block taken: a big file page by page, then single pages of files needing no map block.
        let filler = try lab.fs.create("filler")
        var page = 0
        while (try? lab.fs.write(filler, offset: page * 4096, bytes: [9])) != nil { page += 1 }
        var crumbs = 0
        while lab.fs.usage.freeBlocks > 0, crumbs < 64 {
            let crumb = try lab.fs.create(FileName("crumb-\(crumbs)"))
            try lab.fs.write(crumb, offset: 0, bytes: [1])
            crumbs += 1
        }
        try #require(lab.fs.usage.freeBlocks == 0, "could not fill the image")

        let window = try lab.space.mapWindow()
        let source = try PatternSource(pages: 1, first: 0x77, direct: false)
        #expect(source.read(into: window + 4096, pages: 1) == -Int(EFAULT), "a hole with no block for it")
        #expect(source.read(into: window + 4096, pages: 1) == -Int(EFAULT), "still no block: the page stays fenced")
        let lifted = FaultService.shared.liftedSpaceFences.load(ordering: .relaxed)
        try lab.fs.truncate(filler, size: 0)
        #expect(waitUntil(seconds: 30) { FaultService.shared.liftedSpaceFences.load(ordering: .relaxed) > lifted },
                "freeing blocks did not lift the fence")
        #expect(source.read(into: window + 4096, pages: 1) == 4096, "blocks were freed: the kernel's fault allocates")
        #expect(try source.landed(lab, page: 1, sourcePage: 0))
        #expect(lab.fs.currentBlock(lab.file, page: 1) != 0)
    }

    @Test("with a block free but a fault needing two (a data block and a map block), the fence holds: the kernel's retry does not come back to the service until blocks are freed",
          .enabled(if: userfaultfdRefusal == nil, "needs userfaultfd"))
    func kernelAccessWithTooLittleSpace() throws {
        let lab = try Lab(policy: .wait, pages: 1, size: 4 << 20)
        try lab.fs.truncate(lab.file, size: 30 * 4096)  // page 20: a hole past the direct pointers
        let filler = try lab.fs.create("filler")
        var page = 0
        while (try? lab.fs.write(filler, offset: page * 4096, bytes: [9])) != nil { page += 1 }
        var crumbs = 0
        while lab.fs.usage.freeBlocks > 0, crumbs < 64 {
            try lab.fs.write(try lab.fs.create(FileName("crumb-\(crumbs)")), offset: 0, bytes: [1])
            crumbs += 1
        }
        try #require(crumbs > 0 || lab.fs.usage.freeBlocks == 0)
        if crumbs > 0 { try lab.fs.unlink(FileName("crumb-0")) } else { try lab.fs.truncate(filler, size: (page - 1) * 4096) }
        try #require(lab.fs.usage.freeBlocks == 1, "could not leave exactly one block free")

        let window = try lab.space.mapWindow()
        let source = try PatternSource(pages: 1, first: 0x78, direct: false)
        // One fault served, not a loop of faults and lifts (the failed allocation gives back what
        // it took, which frees nothing anyone waits for).
        var served = lab.dax.statistics.windowFaults.load(ordering: .relaxed)
        #expect(source.read(into: window + 20 * 4096, pages: 1) == -Int(EFAULT), "a hole needing two blocks, one free")
        #expect(lab.dax.statistics.windowFaults.load(ordering: .relaxed) - served == 1, "the fence was lifted with nothing freed")
        served = lab.dax.statistics.windowFaults.load(ordering: .relaxed)
        #expect(source.read(into: window + 20 * 4096, pages: 1) == -Int(EFAULT))
        #expect(lab.dax.statistics.windowFaults.load(ordering: .relaxed) == served,
                "the fence was lifted with nothing freed: the kernel's access went back to the service")
        try lab.fs.truncate(filler, size: 0)
        #expect(waitUntil(seconds: 30) { source.read(into: window + 20 * 4096, pages: 1) == 4096 }, "blocks were freed: the page faults in")
        #expect(try source.landed(lab, page: 20, sourcePage: 0))
    }

    @Test("without userfaultfd (the fallback) the kernel cannot fault a window: EFAULT until the CPU has touched the page",
          .enabled(if: directIORefusal == nil, "needs O_DIRECT on a disk file system here"))
    func signalsFallbackLosesKernelFaults() throws {
        let lab = try Lab(policy: .wait, pages: 2, windowFaults: .signals)
        let window = try lab.space.mapWindow()
        #expect(try lab.space.windowFaults == .signals)
        let source = try PatternSource(pages: 1, first: 0x77, direct: true)
        #expect(source.read(into: window, pages: 1) == -Int(EFAULT), "the fallback serves only the CPU's faults")
        window.storeBytes(of: 1, as: UInt8.self)  // the CPU's fault maps the page
        #expect(source.read(into: window, pages: 1) == 4096)
        #expect(try source.landed(lab, page: 0, sourcePage: 0))
    }

    @Test("a SIGSEGV outside every window still kills the process with SIGSEGV",
          .enabled(if: !underThreadSanitizer, "ThreadSanitizer reports the SEGV itself and exits 66"))
    func straySegfaultStillKills() async {
        await #expect(processExitsWith: .signal(SIGSEGV)) {
            let lab = try Lab(policy: .wait, pages: 1)
            unlink(lab.path)
            _ = try lab.space.mapWindow()  // the handler is installed
            let stray = try mapMemory("map a guard page", length: 4096, protection: PROT_NONE, flags: MAP_PRIVATE | MAP_ANONYMOUS)
            stray.storeBytes(of: 1, as: UInt8.self)
            Issue.record("a store to a PROT_NONE page outside every window did not kill the process")
        }
    }

    @Test("a store just past a window's last page is no window's: SIGSEGV, as outside any mapping",
          .enabled(if: !underThreadSanitizer, "ThreadSanitizer reports the SEGV itself and exits 66"))
    func pastTheWindowIsNotTheWindow() async {
        await #expect(processExitsWith: .signal(SIGSEGV)) {
            let lab = try Lab(policy: .wait, pages: 1)
            unlink(lab.path)
            let window = try lab.space.mapWindow()
            (window + FileSystem.maximumFileSize).storeBytes(of: 1, as: UInt8.self)
            Issue.record("a store past the window's end landed in memory that was mapped")
        }
    }

    @Test("windows of several files on two file systems, opened and faulted from several threads at once", arguments: windowMechanisms)
    func concurrentWindows(mechanism: WindowFaultMechanism) throws {
        let labs = [try Lab(policy: .wait, pages: 64, windowFaults: mechanism), try Lab(policy: .wait, pages: 64, windowFaults: mechanism)]
        let files = try labs.flatMap { lab in
            try (0..<3).map { index -> (Lab, FileID) in
                let file = try lab.fs.create("f\(index)")
                try lab.fs.truncate(file, size: 64 * 4096)
                return (lab, file)
            }
        }
        let failures = Locked(0)
        let threads = (0..<files.count).map { index in
            let (lab, file) = files[index]
            return lab.background {
                do {
                    // Every thread opens every window (the first creates it), then writes its own file.
                    for (otherLab, other) in files { _ = try otherLab.dax.open(other).mapWindow() }
                    let window = try lab.dax.open(file).mapWindow()
                    for page in 0..<64 { (window + page * 4096 + index).storeBytes(of: UInt8(page), as: UInt8.self) }
                    for page in 0..<64 where (window + page * 4096 + index).load(as: UInt8.self) != UInt8(page) {
                        failures.withLock { $0 += 1 }
                    }
                } catch {
                    failures.withLock { $0 += 1 }
                }
            }
        }
        for thread in threads { #expect(thread.wait(seconds: 50), "a window fault hung") }
        #expect(failures.withLock { $0 } == 0)
        for index in 0..<files.count {
            let (lab, file) = files[index]
            for page in [0, 31, 63] {
                #expect(try lab.fs.read(file, offset: page * 4096 + index, count: 1) == [UInt8(page)])
            }
        }
    }

    /// What the other thread does to the file in `collision`.
    enum CollisionStep: String, CaseIterable, Codable {
        case punch, zeroRange, truncateAndAllocate, collapse
    }

    @Test("xfstests' t_mmap_collision through the public API: O_DIRECT preads into a 4-page window while the file is changed under them",
          .enabled(if: kernelFaultRefusal == nil, "needs userfaultfd and O_DIRECT on a disk file system here"),
          arguments: CollisionStep.allCases)
    func collision(step: CollisionStep) throws {
        let lab = try Lab(policy: .wait, pages: 4)
        let source = try PatternSource(pages: 4, first: 0x21, direct: true)
        let window = UInt(bitPattern: try lab.space.mapWindow())
        let file = lab.file
        let readers = 2
        let preadsPerReader = 400
        let done = ManagedAtomic<Int>(0)
        let short = ManagedAtomic<Int>(0)
        let failed = ManagedAtomic<Int>(0)
        let changes = ManagedAtomic<Int>(0)
        let lastErrno = ManagedAtomic<Int>(0)
        let completed = ManagedAtomic<Int>(0)
        let threads = (0..<readers).map { _ in
            lab.background {
                for _ in 0..<preadsPerReader {
                    let read = source.read(into: UnsafeMutableRawPointer(bitPattern: window)!, pages: 4)
                    if read < 0 { failed.wrappingIncrement(ordering: .relaxed); lastErrno.store(-read, ordering: .relaxed) }
                    else if read != 4 * 4096 { short.wrappingIncrement(ordering: .relaxed) }
                    completed.wrappingIncrement(ordering: .relaxed)
                }
                done.wrappingIncrement(ordering: .relaxed)
            }
        }
        // The file changes until both readers are done, once per finished pread: the other
        // reader's pread is in flight then. A change in a tight loop would starve the preads
        // (each change unmaps the pages their faults just mapped), not test them.
        var errors: [FSError] = []
        while done.load(ordering: .relaxed) < readers {
            let before = completed.load(ordering: .relaxed)
            do throws(FSError) {
                switch step {
                case .punch: try lab.fs.punchHole(file, offset: 0, length: 4 * 4096)
                case .zeroRange: try lab.fs.zeroRange(file, offset: 0, length: 4 * 4096, keepSize: true)
                case .truncateAndAllocate:
                    try lab.fs.truncate(file, size: 0)
                    _ = try lab.fs.fallocate(file, offset: 0, length: 4 * 4096)
                case .collapse:
                    _ = try lab.fs.fallocate(file, offset: 0, length: 4 * 4096)
                    try lab.fs.collapseRange(file, offset: 0, length: 4096)
                    _ = try lab.fs.fallocate(file, offset: 3 * 4096, length: 4096)
                }
                changes.wrappingIncrement(ordering: .relaxed)
            } catch {
                errors.append(error)
                break
            }
            while completed.load(ordering: .relaxed) == before, done.load(ordering: .relaxed) < readers { sched_yield() }
        }
        for thread in threads { #expect(thread.wait(seconds: 50), "\(step): a pread hung") }
        #expect(errors.isEmpty, "\(step): \(errors.prefix(3))")
        #expect(changes.load(ordering: .relaxed) > 0)
        if step == .punch || step == .zeroRange {
            // The size never changes: every page faults back in, every pread is whole.
            #expect(failed.load(ordering: .relaxed) == 0, "\(step): \(failed.load(ordering: .relaxed)) preads failed, the last with errno \(lastErrno.load(ordering: .relaxed))")
            #expect(short.load(ordering: .relaxed) == 0, "\(step): \(short.load(ordering: .relaxed)) preads were short")
        }
        try lab.fs.unmount()
        let fsck = try Fsck.run(path: lab.path)
        #expect(fsck.isClean, "\(step): \(fsck.result.problems.prefix(3))")
    }
}
