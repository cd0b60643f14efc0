import DMA
import DaxFS
import Pmem

#if canImport(Glibc)
import Glibc
#endif

/// The kernel's own accesses to windows: what a SIGSEGV handler cannot serve and userfaultfd
/// can. A DAX file's mapping is faulted by the kernel's fault handler whoever touches it; these
/// checks have the kernel touch untouched window pages and find daxlab's fault path behind them.
extension WindowChecks {
    /// A buffered `pread` (the kernel's `copy_to_user`) into an untouched window.
    func kernelRead() throws -> Verdict {
        if let reason = self.kernelFaultsRefusal { return (.skip, reason) }
        let source = try KernelSource.buffered(in: self.bufferedDirectory, pages: 8, seed: 0x31)
        let how = "a buffered pread from a file in \(self.bufferedDirectory)"
        return try self.kernelFill("kernel-read", source, how: how)
    }

    /// An O_DIRECT `pread` (GUP `FOLL_PIN`, then the block layer's DMA) into an untouched window.
    func kernelDirect() throws -> Verdict {
        if let reason = self.kernelFaultsRefusal { return (.skip, reason) }
        let source: KernelSource
        do {
            source = try KernelSource.direct(in: self.directDirectory, pages: 8, seed: 0x52)
        } catch let error as FSError where error.code == .notSupported || error.code == .notFound {
            return (.skip, "\(error.message) (--source-dir)")
        }
        let how = "an O_DIRECT pread from a file in \(self.directDirectory)"
        return try self.kernelFill("kernel-direct", source, how: how)
    }

    /// `source`'s pages read by the kernel into the untouched window of a file whose first half
    /// is written and second half holes: the read is whole, each page took one fault through
    /// daxlab, the holes got blocks, and the bytes are in the file and in the window. On a
    /// 2 MiB-granular window the file is 2 MiB of holes, which the first fault allocates and
    /// maps whole.
    private func kernelFill(_ name: FileName, _ source: KernelSource, how: String) throws -> Verdict {
        if self.coarse { return try self.kernelFillCoarse(name, source, how: how) }
        let pages = source.pages
        let file = try self.fs.create(name)
        try self.fs.write(file, offset: 0, bytes: [UInt8](repeating: 0xAA, count: pages / 2 * pageSize))
        try self.fs.truncate(file, size: pages * pageSize)
        let window = try self.dax.open(file).mapWindow()
        let before = self.dax.statistics.windowFaultCounts.served
        let read = source.read(into: window, pages: pages)
        let faults = self.dax.statistics.windowFaultCounts.served - before
        try Self.require(
            read == pages * pageSize,
            "\(how) into an untouched window: \(Self.describe(read)), not \(pages * pageSize) bytes")
        for page in 0..<pages {
            let expected = KernelSource.page(page, seed: source.seed)
            try Self.require(
                try self.fs.read(file, offset: page * pageSize, count: pageSize) == expected,
                "page \(page) of the file does not hold what the kernel read")
            try Self.require(
                Self.same(window + page * pageSize, expected),
                "the window's page \(page) does not show what the kernel wrote")
        }
        let blocks = try self.fs.stat(file).blocks
        try Self.require(
            blocks == pages, "the file has \(blocks) blocks after the kernel filled its holes, not \(pages)")
        try Self.require(
            faults == pages, "the kernel's read took \(faults) faults through daxlab, not one per page (\(pages))")
        return (.pass, "\(how) filled an untouched window of \(pages) pages (\(pages / 2) written, "
            + "\(pages / 2) holes): \(read) bytes, \(faults) faults served by daxlab, the holes allocated, "
            + "the bytes in the file")
    }

    /// `kernelFill` on a 2 MiB-granular window: one huge fault allocates and maps the range.
    private func kernelFillCoarse(_ name: FileName, _ source: KernelSource, how: String) throws -> Verdict {
        let pages = source.pages
        let file = try self.fs.create(name)
        try self.fs.truncate(file, size: Self.hugePages * pageSize)
        let window = try self.dax.open(file).mapWindow()
        let before = self.dax.statistics.windowFaultCounts
        let read = source.read(into: window, pages: pages)
        let after = self.dax.statistics.windowFaultCounts
        try Self.require(
            read == pages * pageSize,
            "\(how) into an untouched window of 2 MiB of holes: \(Self.describe(read)), not \(pages * pageSize) bytes")
        for page in 0..<pages {
            try Self.require(
                try self.fs.read(file, offset: page * pageSize, count: pageSize) == KernelSource.page(page, seed: source.seed),
                "page \(page) of the file does not hold what the kernel read")
        }
        let blocks = try self.fs.stat(file).blocks
        try Self.require(
            after.served - before.served == 1 && after.huge - before.huge == 1 && blocks == Self.hugePages,
            "the kernel's read took \(after.served - before.served) faults (\(after.huge - before.huge) huge) and left "
                + "\(blocks) blocks: one huge fault allocating the whole range (\(Self.hugePages) blocks) was expected")
        return (.pass, "\(how) into an untouched window of 2 MiB of holes: \(read) bytes, one huge fault allocated "
            + "and mapped the whole range, the bytes in the file")
    }

    /// The kernel's access to the window's page just past the end of file: userfaultfd has no
    /// "fail this fault" answer, so the fault service maps a fence there, and the kernel's access
    /// fails with EFAULT instead of hanging or landing in memory the file does not have.
    func pastEndOfFile() throws -> Verdict {
        if let reason = self.kernelFaultsRefusal { return (.skip, reason) }
        let source = try KernelSource.buffered(in: self.bufferedDirectory, pages: 1, seed: 0x66)
        let file = try self.fs.create("past-eof")
        // (On a 2 MiB-granular window, a whole range, so that the page past it begins one.)
        let size = self.coarse ? Self.hugePages : 2
        try self.fs.write(file, offset: 0, bytes: [UInt8](repeating: 0xAA, count: size * pageSize))
        let target = try self.dax.open(file).mapWindow() + size * pageSize
        for attempt in ["a pread", "a second pread"] {
            let read = source.read(into: target, pages: 1)
            try Self.require(
                read == -Int(EFAULT),
                "\(attempt) into the page past the end of file: \(Self.describe(read)), not EFAULT")
        }
        let status = try self.fs.stat(file)
        try Self.require(
            status.size == size * pageSize && status.blocks == size,
            "the failed preads changed the file (size \(status.size), \(status.blocks) blocks)")
        try self.fs.truncate(file, size: (self.coarse ? 2 * size : size + 1) * pageSize)
        let read = source.read(into: target, pages: 1)
        try Self.require(
            read == pageSize, "after the file grew over the page: \(Self.describe(read)), not \(pageSize) bytes")
        try Self.require(
            try self.fs.read(file, offset: size * pageSize, count: pageSize) == KernelSource.page(0, seed: source.seed),
            "the grown page does not hold what the kernel read")
        return (.pass, "a pread into the window's page past the end of file failed with EFAULT, twice, and the "
            + "process went on; once the file grew over the page, the same pread filled it")
    }
}
