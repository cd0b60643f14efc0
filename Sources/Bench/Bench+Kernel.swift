import CBenchShims
import CRing
import CShims
import DAX
import DaxFS
import DaxlabSupport

#if canImport(Glibc)
import Glibc
import Pmem
#endif

extension Bench {
    /// The kernel-in-the-loop rows: access through the real MMU window, kernel long-term pins
    /// through daxlab, and the kernel's own writes into pinned blocks, each against the same
    /// thing done on ordinary memory.
    func kernelRows() throws {
        do {
            try self.mappedRows()
        } catch let error as FSError where error.code == .notSupported {
            self.unavailable("fault.mapped_*", because: error.message)
        }
        guard CRing_create(2, 1).map({ CRing_destroy($0) }) != nil else {
            self.unavailable("kernel.read_fixed_anon", because: "io_uring: \(String(cString: strerror(errno)))")
            return
        }
        try self.kernelPinRow()
        try self.kernelWriteRow()
    }

    /// fault.mapped_hot against loads from an anonymous array of the same size with the same
    /// indices; fault.mapped_cold_write (SIGSEGV, daxlab's fault path, mmap) against the kernel's
    /// first-touch write fault on tmpfs, and against two floors of a userspace fault-and-map
    /// window in C: a SIGSEGV handler's, and a userfaultfd handler thread's (left out, with the
    /// reason, where userfaultfd is refused).
    private func mappedRows() throws {
        let pages = 512
        let (_, space) = try self.mappedFile("mapped-hot", pages: pages)
        let window = try space.mapWindow()
        let indices = Self.randomIndices(1 << 20, below: pages)
        var touched = 0
        for page in 0..<pages { touched &+= Int(window.load(fromByteOffset: page * pageSize, as: UInt8.self)) }
        blackHole(touched)
        let array = try mapMemory(
            "map an anonymous array", length: pages * pageSize, protection: PROT_READ | PROT_WRITE,
            flags: MAP_PRIVATE | MAP_ANONYMOUS)
        defer { munmap(array, pages * pageSize) }
        madvise(array, pages * pageSize, MADV_NOHUGEPAGE)  // 4 KiB pages, as the window's
        for page in 0..<pages { (array + page * pageSize).storeBytes(of: 1, as: UInt8.self) }
        let hot = indices.withUnsafeBufferPointer { indices in
            self.measure.interleave({ Self.pageLoads(window, indices, $0) }, { Self.pageLoads(array, indices, $0) })
        }
        self.add("fault.mapped_hot", unit: "ns/access", hot, baseline: "array.load", better: "lower",
                 target: .atMost(1.5))

        let file = try self.fs.create("mapped-cold")
        let coldSpace = try self.dax.open(file)
        let coldWindow = try coldSpace.mapWindow()
        let (fd, base) = try Self.tmpfsMapping(pages: 2048)
        defer { munmap(base, 2048 * pageSize); close(fd) }
        let cold = { Self.mappedColdWrite(self.fs, file, coldWindow, pages: 2048) }
        let firstTouch = self.measure.interleave(samples: cold, { Self.kernelFirstTouch(fd, base, pages: 2048) })
        self.add("fault.mapped_cold_write", unit: "ns/page", firstTouch, baseline: "kernel.tmpfs_first_touch",
                 better: "lower", target: .atMost(2))
        // The mechanism's own floors: C that only mmaps the tmpfs page, from a SIGSEGV handler
        // (the fallback's mechanism) and from a userfaultfd handler thread (the window's).
        let (floorFD, floorBase) = try Self.tmpfsMapping(pages: 2048)
        munmap(floorBase, 2048 * pageSize)
        defer { close(floorFD) }
        let signalFloor = self.measure.interleave(samples: cold, { max(0, CBenchShims_sigsegv_mmap_touch(floorFD, 2048)) })
        let probe = coldSpace.windowFaults == .userfaultfd ? CBenchShims_uffd_mmap_touch(floorFD, 1) : -Double(EPERM)
        if probe >= 0 {
            let uffdFloor = self.measure.interleave(samples: cold, { max(0, CBenchShims_uffd_mmap_touch(floorFD, 2048)) })
            self.add("fault.mapped_cold_write", unit: "ns/page", uffdFloor, baseline: "floor.uffd_mmap", better: "lower",
                     target: .atMost(1.25))
            self.setFloor(of: "fault.mapped_cold_write", baseline: "kernel.tmpfs_first_touch", rowOverBaseline: firstTouch,
                          rowOverFloor: uffdFloor)
        } else {
            self.unavailable("floor.uffd_mmap", because: AddressSpace.userfaultfdRefusal ?? "windows fault through SIGSEGV here")
            self.setFloor(of: "fault.mapped_cold_write", baseline: "kernel.tmpfs_first_touch", rowOverBaseline: firstTouch,
                          rowOverFloor: signalFloor)
        }
        self.add("fault.mapped_cold_write", unit: "ns/page", signalFloor, baseline: "floor.sigsegv_mmap", better: "lower")

        // Huge faults: 64 MiB of holes written in order through the window, one store per page.
        let hugeFile = try self.fs.create("mapped-cold-2m")
        let hugeWindow = try self.dax.open(hugeFile).mapWindow()
        let huge = self.measure.interleave(
            samples: { Self.mappedColdWrite(self.fs, hugeFile, hugeWindow, pages: Self.hugeColdPages, huge: true) },
            { Self.kernelFirstTouch(fd, base, pages: 2048) })
        self.add("fault.mapped_cold_write_2m", unit: "ns/page", huge, baseline: "kernel.tmpfs_first_touch",
                 better: "lower", target: .atMost(0.5))
    }

    /// `count` loads of the first word of page `indices[i]` of `base`.
    private static func pageLoads(_ base: UnsafeMutableRawPointer, _ indices: UnsafeBufferPointer<Int>, _ count: Int) {
        var sum: UInt64 = 0
        for index in 0..<count {
            sum &+= base.load(fromByteOffset: indices[index & (indices.count - 1)] * pageSize, as: UInt64.self)
        }
        blackHole(sum)
    }

    /// Pages of the huge cold-write file (64 MiB).
    static let hugeColdPages = 16384

    /// One sample of stores through the window into holes: each is a fault (a userfaultfd
    /// round trip or a SIGSEGV), daxlab's fault path (a new zeroed, persisted block) and an mmap
    /// of it. The file is cut back to holes first (not timed; the truncate unmaps the window).
    /// With `huge` false, the last page of every 2 MiB range is written first (not timed), so
    /// that no range is all holes and every store is a 4 KiB fault; with `huge` true, each
    /// range's first store allocates the whole range as one aligned run and maps it (a huge
    /// fault), and the other 511 stores find it mapped.
    private static func mappedColdWrite(
        _ fs: FileSystem, _ file: FileID, _ window: UnsafeMutableRawPointer, pages: Int, huge: Bool = false
    ) -> Double {
        try! fs.truncate(file, size: 0)
        try! fs.truncate(file, size: pages * pageSize)
        let ranges = huge ? [] : Array(stride(from: 511, to: pages, by: 512))
        for page in ranges { try! fs.write(file, offset: page * pageSize, bytes: [1]) }
        let start = MonotonicClock.now()
        for page in 0..<pages { (window + page * pageSize).storeBytes(of: 1, as: UInt8.self) }
        return Double(MonotonicClock.now() - start) / Double(pages - ranges.count)
    }

    /// pin.kernel_longterm: a 512-page pin that the kernel pins too (view mapped, io_uring fixed
    /// buffer registered) and its unpin, per page, against registering and unregistering 512
    /// pages of anonymous memory.
    private func kernelPinRow() throws {
        let (_, space) = try self.mappedFile("kernel-pins", pages: 512)
        let ring = try KernelRing(slots: 2)
        let ours = { (count: Int) in
            for _ in 0..<max(1, count / 512) { try! space.pin(0..<512, write: true, kernel: .longTerm(ring)).unpin() }
        }
        guard let anonymous = self.kernelIOUringRegister(against: ours) else { return }
        self.add("pin.kernel_longterm", unit: "ns/page", anonymous, baseline: "kernel.io_uring_register",
                 better: "lower", target: .atMost(1.2))
    }

    /// dma.kernel_read_fixed: IORING_OP_READ_FIXED of 4 KiB from a memfd into a block pinned
    /// through daxlab (inside its revocation fence), against the same into a registered
    /// anonymous page.
    private func kernelWriteRow() throws {
        let source = CShims_memfd("daxlab-bench-source")
        guard source >= 0 else { throw SystemCallError("memfd_create", errno: -source) }
        defer { close(source) }
        try valueOrErrno("size the source") { ftruncate(source, pageSize) }
        let (_, space) = try self.mappedFile("kernel-writes", pages: 1)
        let ring = try KernelRing(slots: 2)

        guard let plain = CRing_create(8, 1) else { throw SystemCallError("io_uring_setup", errno: errno) }
        defer { CRing_destroy(plain) }
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: pageSize, alignment: pageSize)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 0, count: pageSize)
        let registered = CRing_update_buffer(plain, 0, buffer, pageSize)
        guard registered == 0 else { throw SystemCallError("register an anonymous buffer", errno: -registered) }
        let handle = try space.pin(0..<1, write: true, kernel: .longTerm(ring))
        let slot = handle.kernelSlot!
        let writes = self.measure.interleave({ count in
            for _ in 0..<count {
                _ = handle.kernelWrite(at: 0) { ring.readFixed(from: source, offset: 0, into: $0, length: pageSize, slot: slot) }
            }
        }, { count in
            for _ in 0..<count { _ = CRing_read_fixed(plain, source, 0, buffer, UInt32(pageSize), 0) }
        }, transform: { 1e9 / $0 })
        handle.unpin()
        self.add("dma.kernel_read_fixed", unit: "writes/s", writes, baseline: "kernel.read_fixed_anon",
                 better: "higher", target: .atLeast(0.8))
    }
}
