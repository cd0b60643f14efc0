import DaxFS
import DaxlabSupport
import Foundation
import Testing
import TestSupport

@Suite("DaxFS semantics", .timeLimit(.minutes(2)))
struct SemanticsTests {
    @Test("truncate shrinks (freeing blocks, zeroing the tail) and grows (a hole)")
    func truncate() throws {
        try withFileSystem { fs, path in
            let id = try fs.create("t")
            let data = randomBytes(count: 5 * 4096 + 100, seed: 1)
            try fs.write(id, offset: 0, bytes: data)
            let freeBefore = fs.usage.freeBlocks
            try fs.truncate(id, size: 4096 + 10)
            #expect(try fs.stat(id).size == 4106)
            #expect(try fs.stat(id).blocks == 2)
            #expect(fs.usage.freeBlocks == freeBefore + 4)
            #expect(try fs.read(id, offset: 0, count: 10_000) == Array(data[..<4106]))
            try fs.truncate(id, size: 3 * 4096)
            let grown = try fs.read(id, offset: 0, count: 3 * 4096)
            #expect(Array(grown[..<4106]) == Array(data[..<4106]))
            #expect(grown[4106...].allSatisfy { $0 == 0 }, "bytes past the old end read as zeros")
            #expect(try fs.stat(id).blocks == 2, "growing allocates nothing")
            try fs.truncate(id, size: 0)
            #expect(try fs.stat(id).blocks == 0)
            let after = try remount(fs, path)
            #expect(try after.stat(after.lookup("t")).size == 0)
        }
    }

    @Test("truncating a file that uses indirect and double-indirect maps frees every block")
    func truncateBigSparseFile() throws {
        try withFileSystem { fs, _ in
            let id = try fs.create("big")
            let freeBefore = fs.usage.freeBlocks
            for page in [0, 11, 12, 500, 1035, 1036, 3000, 5000] {
                try fs.write(id, offset: page * 4096, bytes: [UInt8](repeating: UInt8(page % 251), count: 4096))
            }
            #expect(try fs.stat(id).blocks == 8)
            try fs.truncate(id, size: 1036 * 4096)  // drops the double-indirect tree (pages 1036+)
            #expect(try fs.stat(id).blocks == 5)
            try fs.truncate(id, size: 0)
            #expect(fs.usage.freeBlocks == freeBefore, "data and block-map blocks all returned")
        }
    }

    @Test("punch hole reads back zeros, keeps the size, frees whole blocks only")
    func punchHole() throws {
        try withFileSystem { fs, _ in
            let id = try fs.create("p")
            let data = randomBytes(count: 8 * 4096, seed: 2)
            try fs.write(id, offset: 0, bytes: data)
            try fs.punchHole(id, offset: 1000, length: 3 * 4096)  // partial, 2 whole, partial
            var expected = data
            for index in 1000..<(1000 + 3 * 4096) { expected[index] = 0 }
            #expect(try fs.read(id, offset: 0, count: data.count) == expected)
            #expect(try fs.stat(id).size == data.count)
            #expect(try fs.stat(id).blocks == 6)
            try fs.punchHole(id, offset: 7 * 4096, length: 1 << 30)  // to past the end
            #expect(try fs.stat(id).blocks == 5)
            #expect(try fs.stat(id).size == data.count)
            try fs.write(id, offset: 4096, bytes: [1, 2, 3])  // refills a hole with a zeroed block
            let page = try fs.read(id, offset: 4096, count: 4096)
            #expect(Array(page[..<3]) == [1, 2, 3] && page[3...].allSatisfy { $0 == 0 })
        }
    }

    @Test("zero-range: the range reads zeros and has blocks; the size grows unless kept; against a model over random calls")
    func zeroRange() throws {
        try withFileSystem { fs, _ in
            let id = try fs.create("z")
            let data = randomBytes(count: 8 * 4096, seed: 5)
            try fs.write(id, offset: 0, bytes: data)
            try fs.zeroRange(id, offset: 1000, length: 3 * 4096)  // partial, 2 whole, partial
            var expected = data
            for index in 1000..<(1000 + 3 * 4096) { expected[index] = 0 }
            #expect(try fs.read(id, offset: 0, count: data.count) == expected)
            #expect(try fs.stat(id).blocks == 8, "the zeroed whole pages have (new) blocks, unlike a punch")
            try fs.zeroRange(id, offset: 7 * 4096 + 10, length: 3 * 4096)  // past the end: grows
            #expect(try fs.stat(id).size == 7 * 4096 + 10 + 3 * 4096)
            #expect(try fs.stat(id).blocks == 11)
            try fs.zeroRange(id, offset: 20 * 4096, length: 4096, keepSize: true)  // wholly past the end, kept
            #expect(try fs.stat(id).size == 7 * 4096 + 10 + 3 * 4096)
            #expect(throws: FSError.self) { try fs.zeroRange(id, offset: 0, length: 0) }

            // Random writes, punches and zero-ranges against a byte model.
            var model = try fs.read(id, offset: 0, count: Int(try fs.stat(id).size))
            var random = SplitMix64(seed: 11)
            for _ in 0..<200 {
                let offset = random.next(below: 40 * 4096)
                let length = 1 + random.next(below: 10 * 4096)
                switch random.next(below: 3) {
                case 0:
                    let bytes = randomBytes(count: length, seed: random.next())
                    try fs.write(id, offset: offset, bytes: bytes)
                    if model.count < offset + length { model += [UInt8](repeating: 0, count: offset + length - model.count) }
                    model.replaceSubrange(offset..<(offset + length), with: bytes)
                case 1:
                    try fs.punchHole(id, offset: offset, length: length)
                    let end = min(offset + length, model.count)
                    if end > offset { model.replaceSubrange(offset..<end, with: [UInt8](repeating: 0, count: end - offset)) }
                default:
                    let keep = random.next(below: 2) == 0
                    try fs.zeroRange(id, offset: offset, length: length, keepSize: keep)
                    let newSize = keep ? model.count : max(model.count, offset + length)
                    if model.count < newSize { model += [UInt8](repeating: 0, count: newSize - model.count) }
                    let end = min(offset + length, model.count)
                    if end > offset { model.replaceSubrange(offset..<end, with: [UInt8](repeating: 0, count: end - offset)) }
                }
                #expect(try fs.stat(id).size == model.count)
            }
            #expect(try fs.read(id, offset: 0, count: model.count) == model)
        }
    }

    @Test("collapse-range and insert-range move the tail by whole blocks, against a model; misaligned or out-of-range calls change nothing")
    func collapseAndInsert() throws {
        try withFileSystem { fs, path in
            let id = try fs.create("s")
            let data = randomBytes(count: 20 * 4096 + 100, seed: 9)
            try fs.write(id, offset: 0, bytes: data)
            try fs.collapseRange(id, offset: 4096, length: 3 * 4096)
            var model = data
            model.removeSubrange(4096..<(4 * 4096))
            #expect(try fs.read(id, offset: 0, count: model.count) == model)
            #expect(try fs.stat(id).size == model.count)
            #expect(try fs.stat(id).blocks == 18)
            try fs.insertRange(id, offset: 2 * 4096, length: 5 * 4096)
            model.insert(contentsOf: [UInt8](repeating: 0, count: 5 * 4096), at: 2 * 4096)
            #expect(try fs.read(id, offset: 0, count: model.count) == model)
            #expect(try fs.stat(id).blocks == 18, "insert opens holes: no new blocks")
            for bad in [{ try fs.collapseRange(id, offset: 100, length: 4096) },
                        { try fs.collapseRange(id, offset: 0, length: 4000) },
                        { try fs.collapseRange(id, offset: 4096, length: model.count) },  // reaches the end
                        { try fs.insertRange(id, offset: 1 << 20, length: 4096) },  // past the end
                        { try fs.insertRange(id, offset: 0, length: 0) }] {
                #expect(throws: FSError.self) { try bad() }
                #expect(try fs.read(id, offset: 0, count: model.count) == model, "a refused call changed the file")
            }
            // Random collapses and inserts, the tail crossing the indirect and double-indirect maps.
            var random = SplitMix64(seed: 3)
            try fs.write(id, offset: 1100 * 4096, bytes: [7, 7, 7])
            model += [UInt8](repeating: 0, count: 1100 * 4096 - model.count) + [7, 7, 7]
            for _ in 0..<40 {
                let pages = model.count / 4096
                if random.next(below: 2) == 0, pages >= 2 {
                    let first = random.next(below: pages - 1)
                    let length = 1 + random.next(below: min(16, pages - 1 - first))
                    try fs.collapseRange(id, offset: first * 4096, length: length * 4096)
                    model.removeSubrange((first * 4096)..<((first + length) * 4096))
                } else {
                    let first = random.next(below: pages)
                    let length = 1 + random.next(below: 16)
                    try fs.insertRange(id, offset: first * 4096, length: length * 4096)
                    model.insert(contentsOf: [UInt8](repeating: 0, count: length * 4096), at: first * 4096)
                }
                #expect(try fs.stat(id).size == model.count)
            }
            #expect(try fs.read(id, offset: 0, count: model.count) == model)
            try fs.unmount()
            let report = try Fsck.run(path: path)
            #expect(report.isClean, "\(report.result.problems.prefix(3))")
        }
    }

    @Test("fallocate maps zeroed blocks and grows the file")
    func fallocate() throws {
        try withFileSystem { fs, _ in
            let id = try fs.create("f")
            try fs.fallocate(id, offset: 4096, length: 3 * 4096)
            #expect(try fs.stat(id).size == 4 * 4096)
            #expect(try fs.stat(id).blocks == 3)
            #expect(try fs.read(id, offset: 0, count: 4 * 4096).allSatisfy { $0 == 0 })
        }
    }

    @Test("create, lookup, rename (replacing), unlink, and their errors")
    func namespace() throws {
        try withFileSystem { fs, path in
            let a = try fs.create("a")
            try fs.write(a, offset: 0, bytes: [7])
            #expect(throws: FSError.self) { try fs.create("a") }
            let b = try fs.create("b")
            try fs.write(b, offset: 0, bytes: [UInt8](repeating: 9, count: 50_000))
            let freeWithB = fs.usage.freeBlocks
            try fs.rename("a", to: "b")
            // 50,000 bytes: 13 data blocks, the 13th through the indirect map block.
            #expect(fs.usage.freeBlocks == freeWithB + 14, "the replaced file's blocks are freed")
            #expect(try fs.read(fs.lookup("b"), offset: 0, count: 10) == [7])
            #expect(throws: FSError.self) { try fs.lookup("a") }
            #expect(throws: FSError.self) { try fs.stat(b) }  // the replaced file's ID is stale
            let long = String(repeating: "n", count: 255)
            try fs.create(FileName(long))
            for bad in ["", String(repeating: "n", count: 256), "a/b", "x\u{0}y", ".", ".."] {
                do {
                    try fs.create(FileName(bad))
                    Issue.record("created \(bad.debugDescription)")
                } catch let error as FSError { #expect(error.code == .invalidName) }
            }
            try fs.unlink("b")
            do {
                try fs.unlink("b")
                Issue.record("unlinked twice")
            } catch let error as FSError { #expect(error.code == .notFound) }
            let after = try remount(fs, path)
            #expect(after.list().map(\.name) == [FileName(long)])
        }
    }

    @Test("thousands of files in the flat directory")
    func manyFiles() throws {
        try withFileSystem(size: 128 << 20) { fs, path in
            #expect(fs.usage.inodes == 4096)
            for index in 0..<3000 { try fs.create(FileName("file-\(index)-" + String(repeating: "x", count: index % 200))) }
            let after = try remount(fs, path)
            #expect(after.list().count == 3000)
            #expect(try after.lookup(FileName("file-2999-" + String(repeating: "x", count: 2999 % 200))).inode >= 2)
        }
    }

    @Test("running out of space fails cleanly and keeps earlier data")
    func noSpace() throws {
        try withFileSystem(size: 1 << 20) { fs, path in
            let id = try fs.create("fill")
            let free = fs.usage.freeBlocks
            do {
                try fs.write(id, offset: 0, bytes: [UInt8](repeating: 1, count: (free + 10) * 4096))
                Issue.record("wrote more than the image holds")
            } catch let error as FSError {
                #expect(error.code == .noSpace)
                // What was needed, and what there is (the whole write is one chunk here).
                #expect(free + 10 <= 256 && error.message.hasSuffix("need \(free + 10) new block(s), \(free) free"), "\(error.message)")
            }
            let after = try remount(fs, path)
            let stat = try after.stat(after.lookup("fill"))
            #expect(try after.read(after.lookup("fill"), offset: 0, count: stat.size).allSatisfy { $0 == 1 })
            try after.unmount()
            #expect(try Fsck.run(path: path).isClean)
        }
    }

    @Test("one mount at a time: a second mount, and fsck, get 'in use'")
    func exclusiveMount() throws {
        try withFileSystem { fs, path in
            for attempt in [{ _ = try FileSystem.mount(path: path) }, { _ = try Fsck.run(path: path) }] {
                do {
                    try attempt()
                    Issue.record("a second user got in")
                } catch let error as FSError { #expect(error.code == .inUse) }
            }
            try fs.unmount()
            _ = try FileSystem.mount(path: path)
        }
    }

    @Test("mkfs refuses an image or a non-empty target unless forced, changing nothing")
    func mkfsRefuses() throws {
        try withTemporaryPath("mkfs") { path in
            _ = try FileSystem.format(path: path, size: 2 << 20)
            let before = try Data(contentsOf: URL(fileURLWithPath: path))
            do {
                _ = try FileSystem.format(path: path)
                Issue.record("formatted over an image")
            } catch let error as FSError { #expect(error.code == .notEmpty) }
            #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == before)
            _ = try FileSystem.format(path: path, force: true)
        }
        try withTemporaryPath("mkfs") { path in
            var junk = Data(count: 2 << 20)
            junk[100] = 1
            try junk.write(to: URL(fileURLWithPath: path))
            do {
                _ = try FileSystem.format(path: path)
                Issue.record("formatted over data")
            } catch let error as FSError { #expect(error.code == .notEmpty) }
            #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == junk)
        }
    }

    @Test("threads create, write and truncate distinct files; fsck is clean", .timeLimit(.minutes(2)))
    func concurrentFiles() async throws {
        try await withTemporaryPath { path in
            _ = try FileSystem.format(path: path, size: 128 << 20)
            let fs = try FileSystem.mount(path: path)
            let threads = 8
            try await withThrowingTaskGroup(of: Void.self) { group in
                for thread in 0..<threads {
                    group.addTask {
                        var generator = SplitMix64(seed: UInt64(thread))
                        for round in 0..<40 {
                            let name = "t\(thread)-\(round % 5)"
                            let id = try fs.openOrCreate(FileName(name))
                            let size = Int(generator.next() % (300 << 10))
                            let data = randomBytes(count: size, seed: UInt64(thread * 1000 + round))
                            try fs.write(id, offset: 0, bytes: data)
                            try fs.truncate(id, size: size / 2)
                            #expect(try fs.read(id, offset: 0, count: size) == Array(data[..<(size / 2)]))
                            if round % 7 == 6 { try fs.unlink(FileName(name)) }
                        }
                    }
                }
                try await group.waitForAll()
            }
            try fs.unmount()
            let report = try Fsck.run(path: path)
            #expect(report.isClean, "\(report.result.problems.prefix(5))")
        }
    }
}

extension SemanticsTests {
    @Test("threads create, rename over, publish over and unlink a few shared names: every call succeeds or refuses with a namespace error, and the names and the image agree", .timeLimit(.minutes(2)))
    func concurrentNamespace() async throws {
        try await withTemporaryPath { path in
            _ = try FileSystem.format(path: path, size: 64 << 20)
            let fs = try FileSystem.mount(path: path)
            let names = (0..<4).map { FileName("n\($0)") }
            let done = Locked(0)
            try await withThrowingTaskGroup(of: Void.self) { group in
                for thread in 0..<4 {
                    group.addTask {
                        var random = SplitMix64(seed: UInt64(thread) &+ 17)
                        for _ in 0..<150 {
                            let a = names[random.next(below: names.count)]
                            let b = names[random.next(below: names.count)]
                            do throws(FSError) {
                                switch random.next(below: 4) {
                                case 0: try fs.write(try fs.openOrCreate(a), offset: 0, bytes: [UInt8(thread)])
                                case 1: try fs.rename(a, to: b)
                                case 2:
                                    let id = try fs.createUnnamed()
                                    try fs.write(id, offset: 0, bytes: [UInt8(thread), 1])
                                    do throws(FSError) { try fs.publish(id, as: b) } catch {
                                        try fs.discardUnnamed(id)
                                        throw error
                                    }
                                default: try fs.unlink(a)
                                }
                                done.withLock { $0 += 1 }
                            } catch where [.notFound, .busy, .exists].contains(error.code) {
                                // another thread got there first
                            } catch {
                                Issue.record("thread \(thread): \(error)")
                            }
                        }
                    }
                }
                try await group.waitForAll()
            }
            #expect(done.withLock { $0 } > 100, "most calls went through")
            // The names table and the inodes agree: every listed name looks up to a file that has it.
            for stat in fs.list() { #expect(try fs.lookup(stat.name) == stat.id) }
            try fs.unmount()
            let report = try Fsck.run(path: path)
            #expect(report.isClean, "\(report.result.problems.prefix(5))")
        }
    }
}

func withTemporaryPath<Result>(_ body: (String) async throws -> Result) async throws -> Result {
    let path = "/dev/shm/daxfs-\(getpid())-\(UUID().uuidString.prefix(8))"
    defer { try? FileManager.default.removeItem(atPath: path) }
    return try await body(path)
}
