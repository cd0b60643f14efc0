import DaxFS
import Pmem

#if canImport(Glibc)
import Glibc
#endif

/// The CPU's accesses to windows, counted: a huge fault where a file's range is one aligned run
/// of the image (as `dax_iomap_pmd_fault` maps a PMD), a punch that splits it, and a hole read
/// then written (the zero page, then the `pfn_mkwrite` path).
extension WindowChecks {
    /// Page `page` of huge-fault's file.
    private static func hugePage(_ page: Int) -> [UInt8] { KernelSource.page(page, seed: 0x77) }

    /// A 4 MiB file written in order, read through its window: two faults, each a huge one.
    func hugeFault() throws -> Verdict {
        let pages = 2 * Self.hugePages
        let file = try self.fs.create("huge-fault")
        for chunk in stride(from: 0, to: pages, by: 16) {
            let bytes = (chunk..<(chunk + 16)).flatMap { Self.hugePage($0) }
            try self.fs.write(file, offset: chunk * pageSize, bytes: bytes)
        }
        guard self.fs.alignedRun(file, page: 0) != nil, self.fs.alignedRun(file, page: Self.hugePages) != nil else {
            return (.skip, "the allocator gave the 4 MiB file no two 2 MiB-aligned runs (free space too fragmented), "
                + "so no fault can map 2 MiB")
        }
        let window = try self.dax.open(file).mapWindow()
        let before = self.dax.statistics.windowFaultCounts
        let wrong = (0..<pages).filter { !Self.same(window + $0 * pageSize, Self.hugePage($0)) }
        let after = self.dax.statistics.windowFaultCounts
        let (faults, huge) = (after.served - before.served, after.huge - before.huge)
        try Self.require(
            wrong.isEmpty, "\(wrong.count) pages read wrong through the window, the first page \(wrong.first ?? 0)")
        try Self.require(
            faults == 2 && huge == 2,
            "reading 4 MiB took \(faults) faults, \(huge) of them huge; a huge fault maps 2 MiB, so 2 and 2")
        self.hugeMapping = (file, window)
        return (.pass, "a 4 MiB file written in order (two aligned runs) read through its window: 2 faults, "
            + "both huge (2 MiB each), every byte right")
    }

    /// A punch of one page inside huge-fault's mapping: only that page is unmapped (the kernel
    /// splits the PMD), so reading the whole file again faults once, for that page.
    func punchSplit() throws -> Verdict {
        guard let (file, window) = self.hugeMapping else { return (.skip, "huge-fault made no huge mapping to split") }
        if self.coarse { return try self.punchCoarse(file, window) }
        let punched = 300
        let pages = 2 * Self.hugePages
        let before = self.dax.statistics.windowFaultCounts
        try self.fs.punchHole(file, offset: punched * pageSize, length: pageSize)
        try Self.require(
            Self.same(window + punched * pageSize, [UInt8](repeating: 0, count: pageSize)),
            "the punched page does not read zeros through the window")
        let wrong = (0..<pages).filter { $0 != punched && !Self.same(window + $0 * pageSize, Self.hugePage($0)) }
        let after = self.dax.statistics.windowFaultCounts
        let (faults, huge) = (after.served - before.served, after.huge - before.huge)
        try Self.require(
            wrong.isEmpty, "\(wrong.count) pages beside the punched one read wrong, the first \(wrong.first ?? 0)")
        let blocks = try self.fs.stat(file).blocks
        try Self.require(blocks == pages - 1, "the file has \(blocks) blocks after the punch, not \(pages - 1)")
        try Self.require(
            faults == 1 && huge == 0,
            "reading the file after the punch took \(faults) faults (\(huge) huge): only the punched page should fault")
        return (.pass, "a punch of page \(punched) inside the huge mapping: zeros there through the window, the other "
            + "\(pages - 1) pages intact and still mapped (1 fault after it, the punched page's, 4 KiB)")
    }

    /// `punchSplit` on a 2 MiB-granular window: the device cannot split a mapping, so the punch
    /// unmaps the whole range, whose other pages (no aligned run any more) the window can no
    /// longer map: the kernel's access fails with EFAULT; the other range stays mapped.
    private func punchCoarse(_ file: FileID, _ window: UnsafeMutableRawPointer) throws -> Verdict {
        let punched = 300
        let before = self.dax.statistics.windowFaultCounts
        try self.fs.punchHole(file, offset: punched * pageSize, length: pageSize)
        try Self.require(
            Self.same(window + punched * pageSize, [UInt8](repeating: 0, count: pageSize)),
            "the punched page does not read zeros through the window")
        let source = try KernelSource.buffered(in: self.bufferedDirectory, pages: 1, seed: 0x19)
        let read = source.read(into: window + 5 * pageSize, pages: 1)
        try Self.require(
            read == -Int(EFAULT),
            "a pread into page 5, in the punched range (no aligned run now): \(Self.describe(read)), not EFAULT")
        try Self.require(
            try self.fs.read(file, offset: 5 * pageSize, count: pageSize) == Self.hugePage(5),
            "page 5 changed in the file")
        let wrong = (Self.hugePages..<(2 * Self.hugePages)).filter { !Self.same(window + $0 * pageSize, Self.hugePage($0)) }
        try Self.require(wrong.isEmpty, "\(wrong.count) pages of the other range read wrong")
        let after = self.dax.statistics.windowFaultCounts
        try Self.require(
            after.huge == before.huge, "the other range was mapped again (\(after.huge - before.huge) huge faults)")
        return (.pass, "a punch of page \(punched): zeros there through the window; the rest of its 2 MiB range is "
            + "no aligned run now, which a device aligned to 2 MiB cannot map (EFAULT for the kernel, the file intact); "
            + "the other range still mapped")
    }

    /// A load of a hole through the window, then a store to it (on a 2 MiB-granular window, in a
    /// range of holes, which the store allocates whole).
    func holeThenWrite() throws -> Verdict {
        let file = try self.fs.create("hole-then-write")
        if !self.coarse { try self.fs.write(file, offset: 0, bytes: [UInt8](repeating: 0xAA, count: pageSize)) }
        let written = self.coarse ? 0 : 1
        try self.fs.truncate(file, size: (self.coarse ? Self.hugePages : 2) * pageSize)
        let hole = try self.dax.open(file).mapWindow() + pageSize
        let before = self.dax.statistics.windowFaultCounts.served
        try Self.require(
            Self.same(hole, [UInt8](repeating: 0, count: pageSize)),
            "a load of the hole read something other than zeros")
        let afterLoad = try self.fs.stat(file).blocks
        try Self.require(
            afterLoad == written, "the load of a hole allocated (the file has \(afterLoad) blocks, not \(written))")
        let bytes = KernelSource.page(1, seed: 0x48)
        bytes.withUnsafeBytes { hole.copyMemory(from: $0.baseAddress!, byteCount: pageSize) }
        let afterStore = try self.fs.stat(file).blocks
        let allocated = self.coarse ? Self.hugePages : 2
        try Self.require(
            afterStore == allocated,
            "the store into the hole left \(afterStore) blocks, not \(allocated)")
        try Self.require(
            try self.fs.read(file, offset: pageSize, count: pageSize) == bytes,
            "the file system does not read what the store wrote")
        let faults = self.dax.statistics.windowFaultCounts.served - before
        try Self.require(
            faults == 2,
            "the load and the store took \(faults) faults, not 2 (the zeros mapped, then the write-protect fault)")
        let what = self.coarse ? "allocated its whole 2 MiB range (\(allocated) blocks)" : "allocated a block"
        return (.pass, "a load of a hole read zeros and allocated nothing; the store after it faulted again, "
            + "\(what), and the file system reads what it wrote (2 faults)")
    }
}
