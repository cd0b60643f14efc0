import CBenchShims
import CRing
import CShims
import DAX
import DaxFS
import DaxlabSupport

#if canImport(Glibc)
import Glibc
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
    /// first-touch write fault on tmpfs.
    private func mappedRows() throws {
        let pages = 512
        let (_, space) = try self.mappedFile("mapped-hot", pages: pages)
        let window = try space.mapWindow()
        let indices = Self.randomIndices(1 << 20, below: pages)
        var touched = 0
        for page in 0..<pages { touched &+= Int(window.load(fromByteOffset: page * 4096, as: UInt8.self)) }
        blackHole(touched)
        let hot = Self.pageLoads(window, indices)
        let array = try mapMemory(
            "map an anonymous array", length: pages * 4096, protection: PROT_READ | PROT_WRITE,
            flags: MAP_PRIVATE | MAP_ANONYMOUS)
        defer { munmap(array, pages * 4096) }
        madvise(array, pages * 4096, MADV_NOHUGEPAGE)  // 4 KiB pages, as the window's
        for page in 0..<pages { (array + page * 4096).storeBytes(of: 1, as: UInt8.self) }
        let plain = Self.pageLoads(array, indices)
        self.add("fault.mapped_hot", unit: "ns/access", value: hot, baseline: "array.load", baselineValue: plain,
                 better: "lower", target: ("<= 1.5", { $0 <= 1.5 }))

        let cold = try self.mappedColdWrite(pages: 2048)
        let firstTouch = try self.kernelFirstTouch(pages: 2048)
        self.add("fault.mapped_cold_write", unit: "ns/page", value: cold, baseline: "kernel.tmpfs_first_touch",
                 baselineValue: firstTouch, better: "lower", target: ("<= 2", { $0 <= 2 }))
        // The mechanism's own floor: a C SIGSEGV handler that only mmaps the tmpfs page.
        let mechanism = try self.sigsegvMmapFloor(pages: 2048)
        self.add("fault.mapped_cold_write", unit: "ns/page", value: cold, baseline: "floor.sigsegv_mmap",
                 baselineValue: mechanism, better: "lower")
    }

    /// Stores into a PROT_NONE window whose SIGSEGV handler (C) mmaps the page of a tmpfs file:
    /// what any userspace fault-and-map window pays before a file system does anything.
    private func sigsegvMmapFloor(pages: Int) throws -> Double {
        let (fd, base) = try Self.tmpfsMapping(pages: pages)
        munmap(base, pages * 4096)
        defer { close(fd) }
        return self.measure.median { max(0, CBenchShims_sigsegv_mmap_touch(fd, pages)) }
    }

    /// ns per load of the first word of page `indices[i]` of `base`.
    private static func pageLoads(_ base: UnsafeMutableRawPointer, _ indices: [Int]) -> Double {
        indices.withUnsafeBufferPointer { indices in
            Measure(budget: 1).nanosecondsPerUnit { count in
                var sum: UInt64 = 0
                for index in 0..<count {
                    sum &+= base.load(fromByteOffset: indices[index & (indices.count - 1)] * 4096, as: UInt64.self)
                }
                blackHole(sum)
            }
        }
    }

    /// Stores through the window into holes: each is a CPU fault, daxlab's fault path (a new
    /// zeroed, persisted block) and an mmap of it. The file is cut back to holes between
    /// repetitions (not timed; the truncate unmaps the window).
    private func mappedColdWrite(pages: Int) throws -> Double {
        let file = try self.fs.create("mapped-cold")
        let space = self.dax.open(file)
        let window = try space.mapWindow()
        return self.measure.median {
            try! self.fs.truncate(file, size: 0)
            try! self.fs.truncate(file, size: pages * 4096)
            let start = MonotonicClock.now()
            for page in 0..<pages { (window + page * 4096).storeBytes(of: 1, as: UInt8.self) }
            return Double(MonotonicClock.now() - start) / Double(pages)
        }
    }

    /// pin.kernel_longterm: a 512-page pin that the kernel pins too (view mapped, io_uring fixed
    /// buffer registered) and its unpin, per page, against registering and unregistering 512
    /// pages of anonymous memory.
    private func kernelPinRow() throws {
        let (_, space) = try self.mappedFile("kernel-pins", pages: 512)
        let ring = try KernelRing(slots: 2)
        let ours = self.measure.nanosecondsPerUnit { count in
            for _ in 0..<max(1, count / 512) { try! space.pin(0..<512, write: true, kernel: .longTerm(ring)).unpin() }
        }
        guard let anonymous = self.kernelIOUringRegister() else { return }
        self.add("pin.kernel_longterm", unit: "ns/page", value: ours, baseline: "kernel.io_uring_register",
                 baselineValue: anonymous, better: "lower", target: ("<= 1.2", { $0 <= 1.2 }))
    }

    /// dma.kernel_read_fixed: IORING_OP_READ_FIXED of 4 KiB from a memfd into a block pinned
    /// through daxlab (inside its revocation fence), against the same into a registered
    /// anonymous page.
    private func kernelWriteRow() throws {
        let source = CShims_memfd("daxlab-bench-source")
        guard source >= 0 else { throw SystemCallError("memfd_create", errno: -source) }
        defer { close(source) }
        try valueOrErrno("size the source") { ftruncate(source, 4096) }
        let (_, space) = try self.mappedFile("kernel-writes", pages: 1)
        let ring = try KernelRing(slots: 2)
        let handle = try space.pin(0..<1, write: true, kernel: .longTerm(ring))
        let slot = handle.kernelSlot!
        let ours = self.measure.nanosecondsPerUnit { count in
            for _ in 0..<count {
                _ = handle.kernelWrite(at: 0) { ring.readFixed(from: source, offset: 0, into: $0, length: 4096, slot: slot) }
            }
        }
        handle.unpin()

        guard let plain = CRing_create(8, 1) else { throw SystemCallError("io_uring_setup", errno: errno) }
        defer { CRing_destroy(plain) }
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 0, count: 4096)
        let registered = CRing_update_buffer(plain, 0, buffer, 4096)
        guard registered == 0 else { throw SystemCallError("register an anonymous buffer", errno: -registered) }
        let anonymous = self.measure.nanosecondsPerUnit { count in
            for _ in 0..<count { _ = CRing_read_fixed(plain, source, 0, buffer, 4096, 0) }
        }
        self.add("dma.kernel_read_fixed", unit: "writes/s", value: 1e9 / ours, baseline: "kernel.read_fixed_anon",
                 baselineValue: 1e9 / anonymous, better: "higher", target: (">= 0.8", { $0 >= 0.8 }))
    }
}
