import Foundation
import Testing
import TestSupport

@Suite("daxlab file system commands, end to end", .timeLimit(.minutes(10)))
struct FileSystemCLITests {
    private func json(_ text: String) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
    }

    @Test("mkfs, write, ls, read, truncate, punch, fallocate, rm, info, fsck")
    func fileRoundTrip() throws {
        try withTemporaryPath("cli-fs") { image in
            let made = try DaxlabBinary.run(["mkfs", image, "--size", "8M", "--json"])
            #expect(made.status == 0, "\(made.standardError)")
            #expect(try self.json(made.standardOutput)["created"] as? Bool == true)

            let payload = Data(randomBytes(count: 300_000, seed: 4))
            let input = image + ".in"
            defer { try? FileManager.default.removeItem(atPath: input) }
            try payload.write(to: URL(fileURLWithPath: input))
            #expect(try DaxlabBinary.run(["write", image, "data.bin", "--input", input]).status == 0)

            let read = Process()
            read.executableURL = URL(fileURLWithPath: DaxlabBinary.path)
            read.arguments = ["read", image, "data.bin"]
            let pipe = Pipe()
            read.standardOutput = pipe
            try read.run()
            let bytes = pipe.fileHandleForReading.readDataToEndOfFile()
            read.waitUntilExit()
            #expect(read.terminationStatus == 0)
            #expect(bytes == payload)

            #expect(try DaxlabBinary.run(["truncate", image, "data.bin", "100K"]).status == 0)
            #expect(try DaxlabBinary.run(["punch", image, "data.bin", "4K", "8K"]).status == 0)
            let listing = try DaxlabBinary.run(["ls", image, "--json"])
            let entries = try #require(try JSONSerialization.jsonObject(with: Data(listing.standardOutput.utf8)) as? [[String: Any]])
            #expect(entries.count == 1)
            #expect(entries.first?["size"] as? Int == 102_400)
            #expect(entries.first?["blocks"] as? Int == 23)  // 25 pages, 2 punched

            // fallocate's modes: zero-range gives the punched pages zeroed blocks back and grows
            // the file; --keep-size does not grow it; punch-hole is punch.
            let zero = try DaxlabBinary.run(
                ["fallocate", image, "data.bin", "--mode", "zero-range", "--offset", "4K", "--length", "104K"])
            #expect(zero.status == 0, "\(zero.standardError)")
            let zeroed = try #require(try JSONSerialization.jsonObject(
                with: Data(try DaxlabBinary.run(["ls", image, "--json"]).standardOutput.utf8)) as? [[String: Any]])
            #expect(zeroed.first?["size"] as? Int == 110_592, "grown to 4K + 104K")
            #expect(zeroed.first?["blocks"] as? Int == 27, "every page of 0..<108K has a block")
            let kept = try DaxlabBinary.run(
                ["fallocate", image, "data.bin", "--mode", "zero-range", "--offset", "200K", "--length", "4K", "--keep-size"])
            #expect(kept.status == 0)
            #expect(try DaxlabBinary.run(
                ["fallocate", image, "data.bin", "--mode", "punch-hole", "--offset", "8K", "--length", "4K"]).status == 0)
            let after = try #require(try JSONSerialization.jsonObject(
                with: Data(try DaxlabBinary.run(["ls", image, "--json"]).standardOutput.utf8)) as? [[String: Any]])
            #expect(after.first?["size"] as? Int == 110_592, "--keep-size and punch-hole keep the size")
            #expect(after.first?["blocks"] as? Int == 26)
            let readBack = try DaxlabBinary.run(["read", image, "data.bin"])
            #expect(readBack.status == 0)
            // (The first 4 KiB are the random data: only the zeroed range is compared.)
            #expect(readBack.standardOutput.utf8.suffix(106_496).allSatisfy { $0 == 0 }, "the zeroed range reads zeros")
            // collapse-range takes 8K out at 0 (the file shrinks by 8K); insert-range puts 4K of
            // hole back at 4K.
            #expect(try DaxlabBinary.run(
                ["fallocate", image, "data.bin", "--mode", "collapse-range", "--offset", "0", "--length", "8K"]).status == 0)
            #expect(try DaxlabBinary.run(
                ["fallocate", image, "data.bin", "--mode", "insert-range", "--offset", "4K", "--length", "4K"]).status == 0)
            let shifted = try #require(try JSONSerialization.jsonObject(
                with: Data(try DaxlabBinary.run(["ls", image, "--json"]).standardOutput.utf8)) as? [[String: Any]])
            #expect(shifted.first?["size"] as? Int == 110_592 - 8192 + 4096)
            for bad in [["--mode", "collapse-range", "--offset", "1000", "--length", "4K"],
                        ["--mode", "insert-range", "--offset", "10M", "--length", "4K"],
                        ["--mode", "zero-range", "--length", "0"],
                        ["--mode", "zero-range", "--offset", "-4K", "--length", "4K"]] {
                let result = try DaxlabBinary.run(["fallocate", image, "data.bin"] + bad)
                #expect(result.status == 2, "\(bad)")
                #expect(result.standardError.split(separator: "\n").count == 1, "\(bad): \(result.standardError)")
            }
            #expect(try DaxlabBinary.run(["fsck", image]).status == 0)

            let info = try self.json(try DaxlabBinary.run(["info", image, "--json"]).standardOutput)
            let fs = try #require(info["file_system"] as? [String: Any])
            #expect(fs["files"] as? Int == 1)
            #expect(fs["state"] as? String == "clean")

            let fsck = try DaxlabBinary.run(["fsck", image])
            #expect(fsck.status == 0)
            #expect(fsck.standardOutput.contains("clean"))

            #expect(try DaxlabBinary.run(["rm", image, "data.bin"]).status == 0)
            let missing = try DaxlabBinary.run(["read", image, "data.bin"])
            #expect(missing.status == 2)
            #expect(missing.standardError == "daxlab: error: data.bin: no such file\n")
        }
    }

    @Test("mkfs refuses an existing image without --force; fsck exit codes 1 and 2; --repair")
    func refusalsAndRepair() throws {
        try withTemporaryPath("cli-fsck") { image in
            #expect(try DaxlabBinary.run(["mkfs", image, "--size", "4M"]).status == 0)
            let again = try DaxlabBinary.run(["mkfs", image])
            #expect(again.status == 2)
            #expect(again.standardError.contains("already holds a daxlab file system"))
            #expect(try DaxlabBinary.run(["mkfs", image, "--force"]).status == 0)

            // Leak a block: set a bitmap bit no file uses (the last data block; the image's last
            // block is the backup superblock).
            let handle = try #require(FileHandle(forUpdatingAtPath: image))
            let info = try self.json(try DaxlabBinary.run(["info", image, "--json"]).standardOutput)
            let blocks = try #require((info["file_system"] as? [String: Any])?["blocks"] as? Int)
            let bitmapOffset = try self.bitmapOffset(image)
            try handle.seek(toOffset: UInt64(bitmapOffset + (blocks - 2) / 8))
            let byte = try #require(try handle.read(upToCount: 1)?.first)
            try handle.seek(toOffset: UInt64(bitmapOffset + (blocks - 2) / 8))
            try handle.write(contentsOf: Data([byte | UInt8(1 << ((blocks - 2) % 8))]))
            try handle.close()

            let mount = try DaxlabBinary.run(["ls", image])
            #expect(mount.status == 2)
            #expect(mount.standardError.contains("leaked"))
            let found = try self.json(try DaxlabBinary.run(["fsck", image, "--json"]).standardOutput)
            #expect(found["clean"] as? Bool == false)
            #expect(found["problem_count"] as? Int == 1)
            #expect(try DaxlabBinary.run(["fsck", image]).status == 1)
            let repaired = try DaxlabBinary.run(["fsck", image, "--repair"])
            #expect(repaired.status == 0, "\(repaired.standardOutput)")
            #expect(try DaxlabBinary.run(["fsck", image]).status == 0)
            #expect(try DaxlabBinary.run(["ls", image]).status == 0)

            // An unreadable image: exit 2 with one line.
            try Data(count: 4096).write(to: URL(fileURLWithPath: image))
            let unreadable = try DaxlabBinary.run(["fsck", image])
            #expect(unreadable.status == 2)
            #expect(unreadable.standardError.split(separator: "\n").count == 1)
            #expect(unreadable.standardError.contains("no daxlab file system"))
        }
    }

    /// Block 0's bitmap start field (offset 56), times the block size.
    private func bitmapOffset(_ image: String) throws -> Int {
        let handle = try #require(FileHandle(forReadingAtPath: image))
        defer { try? handle.close() }
        let header = try #require(try handle.read(upToCount: 64))
        let start = header[56..<64].reversed().reduce(0) { $0 << 8 | Int($1) }
        return start * 4096
    }

    @Test("crash campaign: 10 workloads of 800 operations (a new first seed each run), every crash recovers to a mountable, fsck-clean image holding every completed operation")
    func crashCampaign() throws {
        let environment = ProcessInfo.processInfo.environment
        let points = environment["DAXLAB_CRASH_POINTS"].flatMap(Int.init) ?? 24
        let seed = environment["DAXLAB_CRASH_SEED"].flatMap(UInt64.init) ?? UInt64.random(in: 1...1_000_000)
        let arguments = ["crash-test", "--points", String(points), "--ops", "800", "--seed", String(seed), "--seeds", "10", "--json"]
        let result = try DaxlabBinary.run(arguments, timeout: 560)
        let reproduce = "reproduce: daxlab \(arguments.joined(separator: " ")) (DAXLAB_CRASH_SEED=\(seed))"
        #expect(result.status == 0, "\(reproduce)\n\(result.standardOutput)\(result.standardError)")
        let report = try self.json(result.standardOutput)
        #expect(report["seeds"] as? [Int] == (0..<10).map { Int(seed) + $0 })
        #expect(report["points"] as? Int ?? 0 >= 10 * points, "\(reproduce)")
        #expect(report["recovered"] as? Int == report["points"] as? Int, "\(reproduce)")
        #expect((report["failures"] as? [String])?.isEmpty == true, "\(reproduce): \(report["failures"] ?? "")")
        #expect(report["replayed_transactions"] as? Int ?? 0 > 0, "some crashes land between commit and retire")
    }
}
