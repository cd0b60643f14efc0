@_spi(Oracle) @testable import DaxFS
import DaxlabSupport
import Foundation
import Pmem
import Synchronization
import Testing
import TestSupport

/// Counts persist points (barriers) of a mount.
private final class BarrierCounter: PersistObserver {
    let barriers = Atomic<Int>(0)
    func didFlush(offset: Int, length: Int) {}
    func didBarrier() { self.barriers.add(1, ordering: .relaxed) }
}

/// Write faults served from per-file reserved blocks (FileSystem+Reservation).
@Suite("Reserved blocks for write faults", .serialized, .timeLimit(.minutes(2)))
struct ReservationTests {
    /// A mounted 64 MiB image whose free blocks hold stale bytes (a deleted file's), with a
    /// 64-page hole file; the body gets the image's path too.
    private func withDirtyImage(
        observer: BarrierCounter? = nil, _ body: (FileSystem, FileID, String) throws -> Void
    ) throws {
        try withTemporaryPath("daxfs-reserve") { path in
            _ = try FileSystem.format(path: path, size: 64 << 20)
            let fs = try FileSystem.mount(path: path, persistence: nil, persistObserver: observer)
            let junk = try fs.create("junk")
            try fs.write(junk, offset: 0, bytes: [UInt8](repeating: 0xAB, count: 300 * 4096))
            try fs.unlink("junk")
            let id = try fs.create("r")
            try fs.truncate(id, size: 64 * 4096)
            try body(fs, id, path)
        }
    }

    @Test("a fault past the direct pages maps a reserved block with one persist point; the blocks are zeroed and counted")
    func fastFault() throws {
        let counter = BarrierCounter()
        try self.withDirtyImage(observer: counter) { fs, id, path in
            let freeBefore = fs.usage.freeBlocks
            // A transaction makes the indirect block; the fault that made it takes the reserve.
            _ = try fs.blockForFault(id, page: 12, allocate: true)
            let reserve = InodeRecord.maximumReservation
            #expect(try fs.stat(id).blocks == 1 + reserve, "the reserve is counted as the file's")
            #expect(fs.usage.reservedBlocks == reserve)
            var blocks: Set<UInt32> = []
            for page in 13..<(13 + reserve) {
                let before = counter.barriers.load(ordering: .relaxed)
                blocks.insert(try fs.blockForFault(id, page: page, allocate: true))
                #expect(counter.barriers.load(ordering: .relaxed) - before == 1, "page \(page): only the pointer is persisted")
            }
            #expect(blocks.count == reserve, "distinct blocks")
            #expect(try fs.stat(id).blocks == 1 + reserve, "mapping reserved blocks counts nothing new")
            let before = counter.barriers.load(ordering: .relaxed)
            _ = try fs.blockForFault(id, page: 13 + reserve, allocate: true)  // the reserve is spent: a new one
            #expect(counter.barriers.load(ordering: .relaxed) - before > 1)
            #expect(try fs.stat(id).blocks == 1 + 2 * reserve)
            #expect(fs.usage.reservedBlocks == reserve - 1, "the new reserve less the block just mapped")
            #expect(try fs.read(id, offset: 0, count: 64 * 4096).allSatisfy { $0 == 0 }, "faulted blocks read zeros, not the old file's bytes")
            for page in 12...(13 + reserve) {
                let block = try fs.blockForFault(id, page: page, allocate: false)
                let bytes = UnsafeRawBufferPointer(start: fs.mapping.base + Int(block) * 4096, count: 4096)
                #expect(bytes.allSatisfy { $0 == 0 }, "page \(page)'s block is zero on the media")
            }
            #expect(fs.checkQuiesced().problems.isEmpty, "the checker accepts a reservation while mounted")

            try fs.unmount()
            let fsck = try Fsck.run(path: path)
            #expect(fsck.isClean, "an image left with a reservation is consistent: \(fsck.result.problems)")
            let again = try FileSystem.mount(path: path)
            #expect(again.mountReport.reclaimedReservedBlocks == reserve - 1, "mount frees the unused reserve")
            let mapped = 2 + reserve  // pages 12 ... 13 + reserve
            #expect(again.usage.freeBlocks == freeBefore - 1 - mapped, "only the indirect block and the mapped pages stay allocated")
            #expect(try again.stat(again.lookup("r")).blocks == mapped)
            for page in 12...(13 + reserve) {
                #expect(try again.blockForFault(again.lookup("r"), page: page, allocate: false) != 0, "page \(page) stays mapped")
            }
            try again.unmount()
            #expect(try Fsck.run(path: path).isClean)
        }
    }

    @Test("a one-page punch of a reserved block persists only the cleared pointer; each later fault zeroes one punched block under its own pointer's persist")
    func fastPunch() throws {
        let counter = BarrierCounter()
        try self.withDirtyImage(observer: counter) { fs, id, path in
            let reserve = InodeRecord.maximumReservation
            for page in 12..<16 { _ = try fs.blockForFault(id, page: page, allocate: true) }  // 3 of the reserve mapped
            try fs.write(id, offset: 14 * 4096, bytes: [UInt8](repeating: 0x5A, count: 2 * 4096))
            let punched: Set<UInt32> = [
                try fs.blockForFault(id, page: 14, allocate: false), try fs.blockForFault(id, page: 15, allocate: false),
            ]
            let owned = try fs.stat(id).blocks
            for page in 14..<16 {
                let before = counter.barriers.load(ordering: .relaxed)
                try fs.punchHole(id, offset: page * 4096, length: 4096)
                #expect(counter.barriers.load(ordering: .relaxed) - before == 1, "page \(page): the cleared pointer only")
                #expect(try fs.blockForFault(id, page: page, allocate: false) == 0)
            }
            #expect(try fs.read(id, offset: 14 * 4096, count: 2 * 4096).allSatisfy { $0 == 0 }, "holes read zeros")
            #expect(try fs.stat(id).blocks == owned, "still the file's, in reserve")
            #expect(fs.usage.reservedBlocks == reserve - 3 + 2)
            #expect(fs.checkQuiesced().problems.isEmpty)

            // Every fault is one persist point: its pointer, with one punched block's zeroing
            // drained at the same barrier. A punched block comes back only zeroed.
            var reused: [UInt32] = []
            var page = 30
            for _ in 0..<(reserve - 3 + 2) {
                let before = counter.barriers.load(ordering: .relaxed)
                let block = try fs.blockForFault(id, page: page, allocate: true)
                #expect(counter.barriers.load(ordering: .relaxed) - before == 1, "page \(page): one persist point")
                if punched.contains(block) {
                    reused.append(block)
                    #expect(
                        UnsafeRawBufferPointer(start: fs.mapping.base + Int(block) * 4096, count: 4096).allSatisfy { $0 == 0 },
                        "page \(page) got a punched block not zeroed")
                }
                page += 1
            }
            #expect(Set(reused) == punched, "the punched blocks come back once zeroed")
            #expect(reused.count == punched.count)
            #expect(fs.usage.reservedBlocks == 0)
            #expect(try fs.read(id, offset: 30 * 4096, count: (page - 30) * 4096).allSatisfy { $0 == 0 })

            // A punched block not yet zeroed when the image is unmounted: the next mount frees it.
            let last = page - 1
            try fs.punchHole(id, offset: last * 4096, length: 4096)
            try fs.unmount()
            #expect(try Fsck.run(path: path).isClean)
            let remounted = try FileSystem.mount(path: path)
            #expect(remounted.mountReport.reclaimedReservedBlocks == 1)
            #expect(try remounted.read(remounted.lookup("r"), offset: last * 4096, count: 4096).allSatisfy { $0 == 0 })
            try remounted.unmount()
        }
    }

    @Test("a fault that finds no zeroed reserved block scrubs every punched one with one drain before its pointer")
    func batchScrub() throws {
        let counter = BarrierCounter()
        try self.withDirtyImage(observer: counter) { fs, id, _ in
            let reserve = InodeRecord.maximumReservation
            // Page 12 makes the map block; 13 takes the reservation; the rest maps all of it.
            for page in 12..<(13 + reserve) { _ = try fs.blockForFault(id, page: page, allocate: true) }
            #expect(fs.usage.reservedBlocks == 0)
            try fs.write(id, offset: 20 * 4096, bytes: [UInt8](repeating: 0x5A, count: 3 * 4096))
            var punched: Set<UInt32> = []
            for page in 20..<23 {
                punched.insert(try fs.blockForFault(id, page: page, allocate: false))
                try fs.punchHole(id, offset: page * 4096, length: 4096)
            }
            #expect(fs.usage.reservedBlocks == 3)
            var before = counter.barriers.load(ordering: .relaxed)
            var reused = [try fs.blockForFault(id, page: 50, allocate: true)]
            #expect(counter.barriers.load(ordering: .relaxed) - before == 2, "the scrub's drain, then the pointer")
            for page in 51..<53 {
                before = counter.barriers.load(ordering: .relaxed)
                reused.append(try fs.blockForFault(id, page: page, allocate: true))
                #expect(counter.barriers.load(ordering: .relaxed) - before == 1, "page \(page): already scrubbed")
            }
            #expect(Set(reused) == punched, "the punched blocks come back once zeroed, before a new reservation")
            #expect(try fs.read(id, offset: 50 * 4096, count: 3 * 4096).allSatisfy { $0 == 0 })
            #expect(fs.usage.reservedBlocks == 0)
            #expect(fs.checkQuiesced().problems.isEmpty)
        }
    }

    @Test("reserved blocks leave the reservation with their page (punch, collapse, truncate); unlink frees the rest")
    func blocksLeave() throws {
        try self.withDirtyImage { fs, id, path in
            let freeBefore = fs.usage.freeBlocks
            for page in 12..<30 { _ = try fs.blockForFault(id, page: page, allocate: true) }
            try fs.punchHole(id, offset: 15 * 4096, length: 2 * 4096)
            #expect(fs.checkQuiesced().problems.isEmpty)
            try fs.collapseRange(id, offset: 20 * 4096, length: 4096)
            #expect(fs.checkQuiesced().problems.isEmpty)
            try fs.truncate(id, size: 25 * 4096)
            #expect(fs.checkQuiesced().problems.isEmpty)
            // The freed blocks went back to the allocator, not into the reserve: faults after them
            // still get blocks nobody maps.
            for page in 15..<17 { _ = try fs.blockForFault(id, page: page, allocate: true) }
            #expect(fs.checkQuiesced().problems.isEmpty)
            #expect(try fs.read(id, offset: 0, count: 25 * 4096).allSatisfy { $0 == 0 })
            try fs.unlink("r")
            #expect(fs.usage.freeBlocks == freeBefore, "unlink returns the mapped and the reserved blocks")
            #expect(fs.usage.reservedBlocks == 0)
            #expect(fs.checkQuiesced().problems.isEmpty)
            try fs.unmount()
            #expect(try Fsck.run(path: path).isClean)
        }
    }

    @Test("concurrent faults on two files (some on the same pages) each get one block per page, all distinct")
    func concurrentFaults() throws {
        try self.withDirtyImage { fs, id, path in
            let other = try fs.create("s")
            try fs.truncate(other, size: 400 * 4096)
            try fs.truncate(id, size: 400 * 4096)
            let seen = Locked<[FileID: [Int: UInt32]]>([:])
            let failures = Locked<[String]>([])
            let threads = try (0..<4).map { index in
                try JoinableThread.spawn(name: "fault-\(index)") {
                    let file = index % 2 == 0 ? id : other
                    // Threads 0 and 2 share file r and walk its pages in opposite orders; so do 1 and 3.
                    let pages = index < 2 ? Array(12..<400) : Array((12..<400).reversed())
                    for page in pages {
                        do throws(FSError) {
                            let block = try fs.invalidateLock(for: file).withReadLock { () throws(FSError) in
                                try fs.blockForFault(file, page: page, allocate: true)
                            }
                            seen.withLock { map in
                                if let earlier = map[file]?[page], earlier != block {
                                    failures.withLock { $0.append("\(file) page \(page): \(earlier) then \(block)") }
                                }
                                map[file, default: [:]][page] = block
                            }
                        } catch {
                            failures.withLock { $0.append("\(error)") }
                        }
                    }
                }
            }
            for thread in threads { thread.join() }
            #expect(failures.withLock { $0.isEmpty }, "\(failures.withLock { $0.prefix(3) })")
            let all = seen.withLock { $0.values.flatMap { $0.values } }
            #expect(all.count == 2 * 388)
            #expect(Set(all).count == all.count, "no block mapped twice")
            #expect(fs.checkQuiesced().problems.isEmpty)
            try fs.unmount()
            #expect(try Fsck.run(path: path).isClean)
        }
    }

    @Test("two files of one fault stripe churn (fault, write, punch) from two threads: every fault maps a zeroed block the other file does not hold")
    func stripeChurn() throws {
        try self.withDirtyImage { fs, id, path in
            // A second file whose inode shares r's stripe: their reserves live in one FaultStripe.
            var other = try fs.create("s0")
            var made = 1
            while other.inode % FileSystem.faultStripes != id.inode % FileSystem.faultStripes {
                other = try fs.create(FileName("s\(made)"))
                made += 1
            }
            try fs.truncate(other, size: 64 * 4096)
            let failures = Locked<[String]>([])
            let cycles = 4 * FileSystem.reservationSize
            let threads = try [id, other].enumerated().map { index, file in
                try JoinableThread.spawn(name: "churn-\(index)") {
                    let page = 20 + index
                    let fill = [UInt8](repeating: UInt8(0xA0 + index), count: 4096)
                    for cycle in 0..<cycles {
                        do throws(FSError) {
                            let block = try fs.invalidateLock(for: file).withReadLock { () throws(FSError) in
                                try fs.blockForFault(file, page: page, allocate: true)
                            }
                            let bytes = UnsafeRawBufferPointer(start: fs.mapping.base + Int(block) * 4096, count: 4096)
                            if !bytes.allSatisfy({ $0 == 0 }) {
                                failures.withLock { $0.append("\(file) cycle \(cycle): block \(block) not zeroed") }
                            }
                            try fs.write(file, offset: page * 4096, bytes: fill)
                            try fs.punchHole(file, offset: page * 4096, length: 4096)
                        } catch {
                            failures.withLock { $0.append("\(error)") }
                        }
                    }
                }
            }
            for thread in threads { thread.join() }
            #expect(failures.withLock { $0.isEmpty }, "\(failures.withLock { $0.prefix(3) })")
            #expect(fs.usage.reservedBlocks == 2 * FileSystem.reservationSize, "every block back in its file's reserve")
            #expect(fs.checkQuiesced().problems.isEmpty)
            try fs.unmount()
            #expect(try Fsck.run(path: path).isClean)
        }
    }

    @Test("a scrub whose zeroing fails part-way keeps the blocks before the failure, drops the failed one, and leaves the rest punched")
    func partialScrub() {
        var stripe = FileSystem.FaultStripe()
        let inode = 3 + FileSystem.faultStripes  // the second slot of stripe 3
        for block: UInt32 in [100, 101, 102, 103] { stripe.putPunched(inode, block) }
        #expect(!stripe.hasZeroed(inode))
        #expect(stripe.unusedCount(inode) == 4)
        stripe.scrubbed(inode, count: 1, dropNext: true)  // 100 zeroed, 101 failed
        #expect(stripe.unusedCount(inode) == 3)
        #expect(stripe.punchedBlocks(inode) == [102, 103], "not zeroed yet: not handed out")
        #expect(stripe.takeZeroed(inode) == 100)
        #expect(!stripe.hasZeroed(inode))
        stripe.scrubbed(inode, count: 2, dropNext: false)  // the next scrub
        #expect(stripe.punchedBlocks(inode).isEmpty)
        #expect(stripe.unusedCount(inode) == 2)
        #expect(stripe.unusedCount(3) == 0, "another inode of the stripe holds nothing")
    }

    @Test("a file does not reserve when free space is short: faults then take a transaction each")
    func noReserveWhenShort() throws {
        try withFileSystem(size: 1 << 20) { fs, path in
            let id = try fs.create("r")
            try fs.truncate(id, size: 40 * 4096)
            for page in 12..<40 { _ = try fs.blockForFault(id, page: page, allocate: true) }
            #expect(try fs.stat(id).blocks == 28, "no block held in reserve")
            try fs.unmount()
            #expect(try Fsck.run(path: path).isClean)
        }
    }

    @Test("reserves stay under 1/64 of the free space however many files take one; a full image strands no more, and remount frees them")
    func fullImage() throws {
        try withFileSystem(size: 16 << 20) { fs, path in
            let free = fs.usage.freeBlocks
            for index in 0..<40 {
                let id = try fs.create(FileName("f\(index)"))
                try fs.truncate(id, size: 16 * 4096)
                for page in 12..<14 { _ = try fs.blockForFault(id, page: page, allocate: true) }
            }
            let reserved = fs.usage.reservedBlocks
            #expect(reserved > 0, "some files reserved")
            #expect(reserved <= free / FileSystem.reservationHeadroom, "\(reserved) reserved of \(free) free")
            // Fill the image: the writes get every block but the reserves.
            let big = try fs.create("big")
            var offset = 0
            let chunk = [UInt8](repeating: 7, count: 64 * 4096)
            while true {
                do throws(FSError) {
                    try fs.write(big, offset: offset, bytes: chunk)
                    offset += chunk.count
                } catch {
                    #expect(error.code == .noSpace)
                    break
                }
            }
            // Single pages until the last block (and map blocks) are gone.
            while (try? fs.write(big, offset: offset, bytes: [UInt8](repeating: 7, count: 4096))) != nil { offset += 4096 }
            #expect(fs.usage.freeBlocks == 0)
            #expect(fs.usage.reservedBlocks == reserved, "the reserves are what a full image strands")
            #expect(fs.checkQuiesced().problems.isEmpty)
            try fs.unmount()
            let again = try FileSystem.mount(path: path)
            #expect(again.mountReport.reclaimedReservedBlocks == reserved)
            #expect(again.usage.freeBlocks == reserved)
            #expect(again.usage.reservedBlocks == 0)
            try again.unmount()
            #expect(try Fsck.run(path: path).isClean)
        }
    }

    @Test("a reservation naming a block outside the data area is damage: mount refuses, fsck --repair drops it")
    func damagedReservation() throws {
        try self.withDirtyImage { fs, id, path in
            for page in 12..<16 { _ = try fs.blockForFault(id, page: page, allocate: true) }
            try fs.unmount()
            let mapping = try PmemMapping(path: path, options: .existing)
            let record = InodeRecord(mapping.base + fs.geometry.inodeOffset(id.inode))
            var reservation = record.reservation
            #expect(reservation.count == InodeRecord.maximumReservation)
            reservation[0] = 1  // a log block
            record.reservation = reservation
            record.sealChecksum()
            try mapping.persist(offset: fs.geometry.inodeOffset(id.inode), length: 512)
            #expect(throws: FSError.self) { try FileSystem.mount(path: path) }
            let repaired = try Fsck.run(path: path, repair: true)
            #expect(repaired.result.problems.contains { $0.message.contains("reserved block 1") })
            #expect(repaired.isClean)
            let again = try FileSystem.mount(path: path)
            #expect(try again.stat(again.lookup("r")).blocks == 4)
            try again.unmount()
        }
    }
}
