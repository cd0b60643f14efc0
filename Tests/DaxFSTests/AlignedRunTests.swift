@_spi(Oracle) @testable import DaxFS
import DaxlabSupport
import Pmem
import Testing
import TestSupport

/// Aligned runs (FileSystem+AlignedRuns.swift): files that grow sequentially get 2 MiB ranges
/// backed by 2 MiB-aligned runs, and `alignedRun` says where.
@Suite("Aligned runs for huge faults", .serialized, .timeLimit(.minutes(3)))
struct AlignedRunTests {
    private static let runPages = Geometry.runBlocks
    private static let fileSize = 4 << 20

    /// What `alignedRun` must answer for the range holding `page`, worked out page by page from
    /// the block map.
    private func expectedRun(_ fs: FileSystem, _ id: FileID, page: Int) throws -> UInt32? {
        let first = page / Self.runPages * Self.runPages
        guard (first + Self.runPages) * pageSize <= (try fs.stat(id).size) else { return nil }
        let run = fs.currentBlock(id, page: first)
        guard run != 0, Int(run) % Self.runPages == 0 else { return nil }
        for offset in 1..<Self.runPages where fs.currentBlock(id, page: first + offset) != run + UInt32(offset) {
            return nil
        }
        return run
    }

    /// The query, asked as the DAX layer asks it: under the file's lock, shared.
    private func alignedRun(_ fs: FileSystem, _ id: FileID, page: Int) -> UInt32? {
        fs.invalidateLock(for: id).withReadLock { fs.alignedRun(id, page: page) }
    }

    /// Checks that both ranges of a 4 MiB file are aligned runs, distinct, and that the query
    /// gives the same answer for every page of a range.
    private func expectTwoRuns(_ fs: FileSystem, _ id: FileID, _ how: Comment) throws {
        let first = try #require(self.alignedRun(fs, id, page: 0), "range 0 not aligned (\(how))")
        let second = try #require(self.alignedRun(fs, id, page: 512), "range 1 not aligned (\(how))")
        #expect(first % 512 == 0 && second % 512 == 0, "\(how)")
        #expect(first != second, "\(how)")
        #expect(self.alignedRun(fs, id, page: 511) == first && self.alignedRun(fs, id, page: 1023) == second, "\(how)")
        #expect(fs.currentBlock(id, page: 300) == first + 300, "\(how)")
        #expect(fs.currentBlock(id, page: 1023) == second + 511, "\(how)")
        #expect(try self.expectedRun(fs, id, page: 0) == first && self.expectedRun(fs, id, page: 512) == second)
        #expect(self.alignedRun(fs, id, page: 1024) == nil, "past the end of file (\(how))")
    }

    /// Runs `body` on a fresh image of `size` bytes, then unmounts and checks it with fsck.
    private func withImage(size: Int = 64 << 20, _ body: (FileSystem, String) throws -> Void) throws {
        try withTemporaryPath("daxfs-runs") { path in
            _ = try FileSystem.format(path: path, size: size)
            let fs = try FileSystem.mount(path: path)
            try body(fs, path)
            if fs.isMounted { try fs.unmount() }
            let fsck = try Fsck.run(path: path)
            #expect(fsck.isClean, "\(fsck.result.problems)")
        }
    }

    @Test("a 4 MiB file written from offset 0 in 64 KiB writes gets an aligned run for each 2 MiB range")
    func sequentialWrites() throws {
        try self.withImage { fs, path in
            let id = try fs.create("seq")
            let data = randomBytes(count: Self.fileSize, seed: 7)
            for offset in stride(from: 0, to: Self.fileSize, by: 64 << 10) {
                try fs.write(id, offset: offset, bytes: Array(data[offset..<(offset + (64 << 10))]))
            }
            try self.expectTwoRuns(fs, id, "writes")
            #expect(fs.checkQuiesced().problems.isEmpty)
            #expect(fs.allocator.claims.isEmpty, "both runs are used up: nothing stays claimed")
            let again = try remount(fs, path)
            let reopened = try again.lookup("seq")
            try self.expectTwoRuns(again, reopened, "writes, after a remount")
            #expect(try again.read(reopened, offset: 0, count: Self.fileSize) == data)
            try again.unmount()
        }
    }

    @Test("a 4 MiB file filled by write faults in page order gets an aligned run for each 2 MiB range")
    func sequentialFaults() throws {
        try self.withImage { fs, path in
            let id = try fs.create("faulted")
            try fs.truncate(id, size: Self.fileSize)
            for page in 0..<(Self.fileSize / pageSize) {
                _ = try fs.invalidateLock(for: id).withReadLock { () throws(FSError) in
                    try fs.blockForFault(id, page: page, allocate: true)
                }
            }
            try self.expectTwoRuns(fs, id, "faults")
            #expect(fs.usage.reservedBlocks == 0, "the reservations came from the runs, and every page took its block")
            #expect(fs.checkQuiesced().problems.isEmpty)
            let again = try remount(fs, path)
            try self.expectTwoRuns(again, try again.lookup("faulted"), "faults, after a remount")
            #expect(again.mountReport.reclaimedReservedBlocks == 0)
            try again.unmount()
        }
    }

    @Test("fallocate of 4 MiB gets an aligned run for each 2 MiB range; a one-page punch breaks its range only")
    func fallocateAndPunch() throws {
        try self.withImage { fs, _ in
            let id = try fs.create("fallocated")
            try fs.fallocate(id, offset: 0, length: Self.fileSize)
            try self.expectTwoRuns(fs, id, "fallocate")
            let first = self.alignedRun(fs, id, page: 0)
            try fs.punchHole(id, offset: 700 * pageSize, length: pageSize)
            #expect(self.alignedRun(fs, id, page: 700) == nil)
            #expect(self.alignedRun(fs, id, page: 512) == nil)
            #expect(self.alignedRun(fs, id, page: 0) == first, "the other range keeps its run")
            // Writing the page again gives it a block, not the run's: the range stays unaligned.
            try fs.write(id, offset: 700 * pageSize, bytes: [1])
            #expect(try self.expectedRun(fs, id, page: 700) == self.alignedRun(fs, id, page: 700))
            #expect(fs.checkQuiesced().problems.isEmpty)
        }
    }

    @Test("small files and files written at random pages claim no run")
    func noClaimForSmallFiles() throws {
        try self.withImage { fs, _ in
            let small = try fs.create("small")
            try fs.truncate(small, size: 64 * pageSize)
            try fs.write(small, offset: 0, bytes: [UInt8](repeating: 1, count: 4 * pageSize))
            #expect(fs.allocator.claims.isEmpty, "a 4-page write to a 64-page file is no stream")
            let big = try fs.create("big")
            try fs.truncate(big, size: Self.fileSize)
            try fs.write(big, offset: 37 * pageSize, bytes: [1])
            #expect(fs.allocator.claims.isEmpty, "a page in the middle of a range claims nothing")
            #expect(self.alignedRun(fs, big, page: 0) == nil)
        }
    }

    @Test("on an image with no whole free run, files allocate as before and fsck is clean")
    func fragmentedImage() throws {
        try self.withImage { fs, path in
            let filler = try fs.create("filler")
            var size = 0
            while (try? fs.fallocate(filler, offset: size, length: 256 * pageSize)) != nil { size += 256 * pageSize }
            while (try? fs.fallocate(filler, offset: size, length: pageSize)) != nil { size += pageSize }
            for page in stride(from: 0, to: size / pageSize, by: 2) {
                try fs.punchHole(filler, offset: page * pageSize, length: pageSize)
            }
            #expect(!fs.allocator.hasWholeRun, "the punches left no whole run free")
            let free = fs.usage.freeBlocks
            #expect(free > 2000)

            let id = try fs.create("file")
            let data = randomBytes(count: Self.fileSize, seed: 3)
            for offset in stride(from: 0, to: Self.fileSize, by: 64 << 10) {
                try fs.write(id, offset: offset, bytes: Array(data[offset..<(offset + (64 << 10))]))
            }
            #expect(self.alignedRun(fs, id, page: 0) == nil && self.alignedRun(fs, id, page: 512) == nil)
            #expect(try fs.read(id, offset: 0, count: Self.fileSize) == data)
            #expect(fs.allocator.claims.isEmpty)
            #expect(fs.checkQuiesced().problems.isEmpty)
            _ = path
        }
    }

    @Test("a claimed run gives way when the image fills up: every free block can still be allocated")
    func claimsGiveWayWhenFull() throws {
        try self.withImage { fs, _ in
            let first = try fs.create("first")
            try fs.write(first, offset: 0, bytes: [UInt8](repeating: 1, count: 64 << 10))
            let claimed = try #require(fs.allocator.claims.first, "a 64 KiB write from offset 0 claims a run")
            #expect(claimed.owner == first.inode && claimed.unused == 512 - 16)
            #expect(fs.allocatorFreeBlocks == fs.usage.freeBlocks, "claimed blocks still count as free")

            let filler = try fs.create("filler")
            var size = 0
            while (try? fs.fallocate(filler, offset: size, length: 256 * pageSize)) != nil { size += 256 * pageSize }
            while (try? fs.fallocate(filler, offset: size, length: pageSize)) != nil { size += pageSize }
            #expect(fs.usage.freeBlocks <= 1, "only a page that needs a new map block may be left over")
            #expect(!fs.allocator.claims.contains { $0.owner == first.inode }, "the first file's claim gave way")
            #expect(fs.checkQuiesced().problems.isEmpty)
        }
    }

    @Test("unlink dissolves the file's claim")
    func unlinkDissolves() throws {
        try self.withImage { fs, _ in
            let id = try fs.create("gone")
            try fs.write(id, offset: 0, bytes: [UInt8](repeating: 1, count: 64 << 10))
            #expect(fs.allocator.claims.count == 1)
            let free = fs.allocatorFreeBlocks
            try fs.unlink("gone")
            #expect(fs.allocator.claims.isEmpty)
            #expect(fs.allocatorFreeBlocks > free)
            #expect(fs.allocatorFreeBlocks == fs.usage.freeBlocks)
        }
    }

    @Test("random writes, punches, truncates, fallocates and faults: fsck is clean and the query matches the block map after every step",
          arguments: [1, 2, 3, 4, 5] as [UInt64])
    func randomCampaign(seed: UInt64) throws {
        var random = SplitMix64(seed: seed)
        func below(_ bound: Int) -> Int { Int(random.next() % UInt64(bound)) }
        var aligned = 0
        try self.withImage(size: 32 << 20) { fs, _ in
            var files = try (0..<3).map { try fs.create(FileName("f\($0)")) }
            let maximum = 4 << 20
            for step in 0..<40 {
                let index = below(files.count)
                let id = files[index]
                let size = try fs.stat(id).size
                let what: String
                do throws(FSError) {
                    switch below(8) {
                    case 0, 1, 7:
                        let length = (1 + below(64)) * 16 << 10
                        what = "append \(length) at \(size)"
                        if size + length <= maximum {
                            try fs.write(id, offset: size, bytes: [UInt8](repeating: UInt8(step), count: length))
                        }
                    case 2:
                        let offset = below(maximum / pageSize) * pageSize
                        what = "write 3 pages at \(offset)"
                        try fs.write(id, offset: offset, bytes: [UInt8](repeating: 9, count: 3 * pageSize))
                    case 3:
                        let offset = below(max(1, size))
                        let length = 1 + below(600 * pageSize)
                        what = "punch \(offset) + \(length)"
                        try fs.punchHole(id, offset: offset, length: length)
                    case 4:
                        // To a 2 MiB boundary half the time (0 included), so appends start ranges afresh.
                        let newSize = below(2) == 0 ? below(size / (2 << 20) + 1) * (2 << 20) : below(max(1, size + (1 << 20)))
                        what = "truncate to \(newSize)"
                        try fs.truncate(id, size: newSize)
                    case 5:
                        let offset = below(2) * (2 << 20) + (below(4) == 0 ? (1 << 20) : 0)
                        what = "fallocate \(offset) + 2 MiB"
                        try fs.fallocate(id, offset: offset, length: 2 << 20)
                    default:
                        let start = below(1024)
                        what = "fault pages \(start) ..< \(start + 40)"
                        try fs.truncate(id, size: max(size, (start + 40) * pageSize))
                        for page in start..<(start + 40) {
                            _ = try fs.invalidateLock(for: id).withReadLock { () throws(FSError) in
                                try fs.blockForFault(id, page: page, allocate: true)
                            }
                        }
                    }
                } catch {
                    Issue.record("seed \(seed), step \(step): \(error)")
                    return
                }
                if below(15) == 0 {
                    try fs.unlink(FileName("f\(index)"))
                    files[index] = try fs.create(FileName("f\(index)"))
                }
                let check = fs.checkQuiesced()
                #expect(check.problems.isEmpty, "seed \(seed), step \(step) (\(what)): \(check.problems.prefix(3))")
                #expect(fs.allocatorFreeBlocks == check.freeDataBlocks, "seed \(seed), step \(step) (\(what))")
                for file in files {
                    let pages = Int(try fs.stat(file).size) / pageSize
                    for range in 0..<((pages + Self.runPages - 1) / Self.runPages + 1) {
                        let page = range * Self.runPages + below(Self.runPages)
                        let answer = self.alignedRun(fs, file, page: page)
                        #expect(answer == (try self.expectedRun(fs, file, page: page)),
                                "seed \(seed), step \(step) (\(what)): \(file) page \(page)")
                        if answer != nil { aligned += 1 }
                    }
                }
                if check.problems.isEmpty == false { return }
            }
        }
        #expect(aligned > 0, "seed \(seed): the campaign never made an aligned range")
    }
}
