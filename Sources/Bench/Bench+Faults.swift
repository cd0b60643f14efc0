import CBenchShims
import DAX
import DaxFS
import DaxlabSupport

#if canImport(Glibc)
import Glibc
import Pmem
#endif

extension Bench {
    /// fault.hot against an array load and the kernel's read fault; fault.cold_write against
    /// the kernel's first-touch fault.
    func faultRows() throws {
        let pages = self.options.pages
        let (_, space) = try self.mappedFile("hot", pages: pages)
        let indices = Self.randomIndices(1 << 20, below: pages)
        let table = Self.randomIndices(pages, below: 1 << 30).map { UInt32($0) }
        let (versusArray, versusKernel) = try indices.withUnsafeBufferPointer { indices in
            let mask = indices.count - 1
            let hot = { (count: Int) in
                var sum = 0
                for index in 0..<count { sum &+= Int(bitPattern: try! space.fault(indices[index & mask], write: false)) }
                blackHole(sum)
            }
            let versusArray = table.withUnsafeBufferPointer { table in
                self.measure.interleave(hot) { count in
                    var sum: UInt32 = 0
                    for index in 0..<count { sum &+= table[indices[index & mask]] }
                    blackHole(sum)
                }
            }
            let kernelPages = min(pages, 16384)
            let (fd, base) = try Self.tmpfsMapping(pages: kernelPages)
            defer { munmap(base, kernelPages * pageSize); close(fd) }
            for page in 0..<kernelPages { (base + page * pageSize).storeBytes(of: 1, as: UInt8.self) }
            let versusKernel = self.measure.interleave(hot, samples: { Self.kernelReadFault(base, pages: kernelPages) })
            return (versusArray, versusKernel)
        }
        self.add("fault.hot", unit: "ns/page", versusArray, baseline: "array.load", better: "lower", target: .atMost(2))
        self.add("fault.hot", unit: "ns/page", versusKernel, baseline: "kernel.tmpfs_read_fault", better: "lower",
                 target: .atMost(1.0 / 40))

        let file = try self.fs.create("cold")
        let coldSpace = try self.dax.open(file)
        let (fd, base) = try Self.tmpfsMapping(pages: 2048)
        defer { munmap(base, 2048 * pageSize); close(fd) }
        let cold = self.measure.interleave(
            samples: { Self.coldWriteFault(self.fs, file, coldSpace, pages: 2048) },
            { Self.kernelFirstTouch(fd, base, pages: 2048) })
        self.add("fault.cold_write", unit: "ns/page", cold, baseline: "kernel.tmpfs_first_touch", better: "lower",
                 target: .atMost(0.5))
    }

    /// One sample of write faults on holes: allocate, zero, persist, map. The file is cut back to
    /// holes first (not timed).
    static func coldWriteFault(_ fs: FileSystem, _ file: FileID, _ space: AddressSpace, pages: Int) -> Double {
        try! fs.truncate(file, size: 0)
        try! fs.truncate(file, size: pages * pageSize)
        let start = MonotonicClock.now()
        for page in 0..<pages { _ = try! space.fault(page, write: true) }
        return Double(MonotonicClock.now() - start) / Double(pages)
    }

    /// One sample of the kernel's read fault: a tmpfs MAP_SHARED mapping whose pages are in the
    /// page cache but not mapped (madvise(DONTNEED) unmaps them first, not timed).
    static func kernelReadFault(_ base: UnsafeMutableRawPointer, pages: Int) -> Double {
        madvise(base, pages * pageSize, MADV_DONTNEED)
        var sum = 0
        let start = MonotonicClock.now()
        for page in 0..<pages { sum &+= Int(base.load(fromByteOffset: page * pageSize, as: UInt8.self)) }
        blackHole(sum)
        return Double(MonotonicClock.now() - start) / Double(pages)
    }

    /// One sample of first-touch write faults on new tmpfs pages (the hole is punched again
    /// first, not timed).
    static func kernelFirstTouch(_ fd: Int32, _ base: UnsafeMutableRawPointer, pages: Int) -> Double {
        madvise(base, pages * pageSize, MADV_DONTNEED)
        _ = CBenchShims_punch_hole(fd, 0, pages * pageSize)
        let start = MonotonicClock.now()
        for page in 0..<pages { (base + page * pageSize).storeBytes(of: 1, as: UInt8.self) }
        return Double(MonotonicClock.now() - start) / Double(pages)
    }

    /// An unlinked file on tmpfs of `pages` pages, mapped shared: the kernel baselines' memory.
    static func tmpfsMapping(pages: Int) throws(SystemCallError) -> (Int32, UnsafeMutableRawPointer) {
        let path = "/dev/shm/daxlab-bench-kernel-\(getpid())"
        let fd = try valueOrErrno("create \(path)") { open(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600) }
        unlink(path)
        do {
            try valueOrErrno("resize \(path)") { ftruncate(fd, off_t(pages * pageSize)) }
            let base = try mapMemory(
                "map \(path)", length: pages * pageSize, protection: PROT_READ | PROT_WRITE, flags: MAP_SHARED, descriptor: fd)
            return (fd, base)
        } catch {
            close(fd)
            throw error
        }
    }
}
