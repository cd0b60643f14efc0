import CBenchShims
import DAX
import DaxFS
import DaxlabSupport

#if canImport(Glibc)
import Glibc
#endif

extension Bench {
    /// fault.hot against an array load and the kernel's read fault; fault.cold_write against
    /// the kernel's first-touch fault.
    func faultRows() throws {
        let pages = self.options.pages
        let (_, space) = try self.mappedFile("hot", pages: pages)
        let indices = Self.randomIndices(1 << 20, below: pages)
        let hot = indices.withUnsafeBufferPointer { indices in
            self.measure.nanosecondsPerUnit { count in
                var sum = 0
                for index in 0..<count { sum &+= Int(bitPattern: try! space.fault(indices[index & (indices.count - 1)], write: false)) }
                blackHole(sum)
            }
        }
        let table = Self.randomIndices(pages, below: 1 << 30).map { UInt32($0) }
        let array = indices.withUnsafeBufferPointer { indices in
            table.withUnsafeBufferPointer { table in
                self.measure.nanosecondsPerUnit { count in
                    var sum: UInt32 = 0
                    for index in 0..<count { sum &+= table[indices[index & (indices.count - 1)]] }
                    blackHole(sum)
                }
            }
        }
        self.add("fault.hot", unit: "ns/page", value: hot, baseline: "array.load", baselineValue: array, better: "lower",
                 target: ("<= 2.0", { $0 <= 2.0 }))
        let kernelRead = try self.kernelReadFault(pages: min(pages, 16384))
        self.add("fault.hot", unit: "ns/page", value: hot, baseline: "kernel.tmpfs_read_fault", baselineValue: kernelRead,
                 better: "lower", target: ("<= 0.025", { $0 <= 1.0 / 40 }))

        let cold = try self.coldWriteFault(pages: 2048)
        let firstTouch = try self.kernelFirstTouch(pages: 2048)
        self.add("fault.cold_write", unit: "ns/page", value: cold, baseline: "kernel.tmpfs_first_touch",
                 baselineValue: firstTouch, better: "lower", target: ("<= 0.5", { $0 <= 0.5 }))
    }

    /// Write faults on holes: allocate, zero, persist, map. The file is cut back to holes between
    /// repetitions (not timed).
    private func coldWriteFault(pages: Int) throws -> Double {
        let file = try self.fs.create("cold")
        try self.fs.truncate(file, size: pages * 4096)
        let space = self.dax.open(file)
        return self.measure.median {
            try! self.fs.truncate(file, size: 0)
            try! self.fs.truncate(file, size: pages * 4096)
            let start = MonotonicClock.now()
            for page in 0..<pages { _ = try! space.fault(page, write: true) }
            return Double(MonotonicClock.now() - start) / Double(pages)
        }
    }

    /// A tmpfs MAP_SHARED mapping whose pages are in the page cache but not mapped: the kernel's
    /// read fault maps each (madvise(DONTNEED) between repetitions unmaps them again).
    private func kernelReadFault(pages: Int) throws -> Double {
        let (fd, base) = try Self.tmpfsMapping(pages: pages)
        defer { munmap(base, pages * 4096); close(fd) }
        for page in 0..<pages { (base + page * 4096).storeBytes(of: 1, as: UInt8.self) }
        return self.measure.median {
            madvise(base, pages * 4096, MADV_DONTNEED)
            var sum = 0
            let start = MonotonicClock.now()
            for page in 0..<pages { sum &+= Int(base.load(fromByteOffset: page * 4096, as: UInt8.self)) }
            blackHole(sum)
            return Double(MonotonicClock.now() - start) / Double(pages)
        }
    }

    /// First-touch write faults on a new tmpfs page (the hole is punched again between repetitions).
    func kernelFirstTouch(pages: Int) throws -> Double {
        let (fd, base) = try Self.tmpfsMapping(pages: pages)
        defer { munmap(base, pages * 4096); close(fd) }
        return self.measure.median {
            madvise(base, pages * 4096, MADV_DONTNEED)
            _ = CBenchShims_punch_hole(fd, 0, pages * 4096)
            let start = MonotonicClock.now()
            for page in 0..<pages { (base + page * 4096).storeBytes(of: 1, as: UInt8.self) }
            return Double(MonotonicClock.now() - start) / Double(pages)
        }
    }

    /// An unlinked file on tmpfs of `pages` pages, mapped shared: the kernel baselines' memory.
    static func tmpfsMapping(pages: Int) throws(SystemCallError) -> (Int32, UnsafeMutableRawPointer) {
        let path = "/dev/shm/daxlab-bench-kernel-\(getpid())"
        let fd = try valueOrErrno("create \(path)") { open(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600) }
        unlink(path)
        do {
            try valueOrErrno("resize \(path)") { ftruncate(fd, off_t(pages * 4096)) }
            let base = try mapMemory(
                "map \(path)", length: pages * 4096, protection: PROT_READ | PROT_WRITE, flags: MAP_SHARED, descriptor: fd)
            return (fd, base)
        } catch {
            close(fd)
            throw error
        }
    }
}
