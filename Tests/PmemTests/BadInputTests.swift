import Foundation
import Pmem
import Testing
import TestSupport

@Suite("Bad input gets its error code and changes nothing")
struct BadInputTests {
    private func expectCode(
        _ code: PmemError.Code, path: String, options: MapOptions = .existing,
        sourceLocation: SourceLocation = #_sourceLocation
    ) {
        do {
            _ = try PmemMapping(path: path, options: options)
            Issue.record("mapping \(path) succeeded; expected \(code)", sourceLocation: sourceLocation)
        } catch {
            #expect(error.code == code, "\(error)", sourceLocation: sourceLocation)
            #expect(error.description.hasPrefix(path), "the message names the path", sourceLocation: sourceLocation)
            #expect(!error.description.contains("\n"), "one line", sourceLocation: sourceLocation)
        }
    }

    @Test func missingPath() {
        self.expectCode(.notFound, path: "/dev/shm/daxlab-no-such-file-\(getpid())")
        self.expectCode(.notFound, path: "/dev/shm/no-such-dir-\(getpid())/x", options: .create(size: 4096))
    }

    @Test func directory() {
        self.expectCode(.isDirectory, path: "/dev/shm")
        self.expectCode(.isDirectory, path: "/dev/shm", options: .openOrCreate(size: 4096))
    }

    @Test("size 0 and sizes that are not a multiple of 4096")
    func invalidSizes() throws {
        try withTemporaryPath { path in
            self.expectCode(.invalidSize, path: path, options: .create(size: 0))
            self.expectCode(.invalidSize, path: path, options: .create(size: 1000))
            #expect(!FileManager.default.fileExists(atPath: path), "a refused create leaves no file")

            #expect(FileManager.default.createFile(atPath: path, contents: Data()))
            self.expectCode(.invalidSize, path: path)  // an empty file
            try Data(repeating: 7, count: 5000).write(to: URL(fileURLWithPath: path))
            self.expectCode(.invalidSize, path: path)  // 5000 bytes
        }
    }

    @Test("an existing file of another size is refused and left untouched")
    func sizeMismatchKeepsData() throws {
        try withTemporaryPath { path in
            let original = Data(randomBytes(count: 8192, seed: 3))
            try original.write(to: URL(fileURLWithPath: path))
            self.expectCode(.sizeMismatch, path: path, options: .openOrCreate(size: 16384))
            self.expectCode(.sizeMismatch, path: path, options: MapOptions(size: 4096))
            #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == original)
        }
    }

    @Test("createNew refuses an existing file and leaves it untouched")
    func alreadyExists() throws {
        try withTemporaryPath { path in
            let original = Data(randomBytes(count: 4096, seed: 5))
            try original.write(to: URL(fileURLWithPath: path))
            self.expectCode(.alreadyExists, path: path, options: .create(size: 4096))
            #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == original)
        }
    }

    @Test("character devices that are not device-dax, and FIFOs")
    func unsupportedFileTypes() throws {
        self.expectCode(.unsupportedFileType, path: "/dev/null")
        try withTemporaryPath { path in
            #expect(mkfifo(path, 0o600) == 0)
            self.expectCode(.unsupportedFileType, path: path)
        }
    }

    @Test("a file the process may not open")
    func permissionDenied() throws {
        guard getuid() != 0 else {
            // Root bypasses file modes; CLITests checks this case as an unprivileged child.
            return
        }
        try withTemporaryPath { path in
            #expect(FileManager.default.createFile(atPath: path, contents: Data(count: 4096)))
            #expect(chmod(path, 0) == 0)
            self.expectCode(.permissionDenied, path: path)
        }
    }

    @Test("device-dax geometry: unaligned devices and size mismatches")
    func deviceDAXGeometry() throws {
        let twoMiB = 2 << 20
        try DeviceDAXGeometry(size: 512 * twoMiB, alignment: twoMiB).validate(requestedSize: nil, path: "/dev/dax0.0")
        try DeviceDAXGeometry(size: 512 * twoMiB, alignment: twoMiB)
            .validate(requestedSize: 512 * twoMiB, path: "/dev/dax0.0")
        #expect(throws: PmemError.self) {
            try DeviceDAXGeometry(size: 512 * twoMiB + 4096, alignment: twoMiB)
                .validate(requestedSize: nil, path: "/dev/dax0.0")
        }
        do {
            try DeviceDAXGeometry(size: 512 * twoMiB + 4096, alignment: twoMiB)
                .validate(requestedSize: nil, path: "/dev/dax0.0")
        } catch {
            #expect(error.code == .unalignedDevice)
        }
        do {
            try DeviceDAXGeometry(size: 512 * twoMiB, alignment: twoMiB)
                .validate(requestedSize: 256 << 20, path: "/dev/dax0.0")
            Issue.record("a size mismatch was accepted")
        } catch {
            #expect(error.code == .deviceSizeMismatch)
            #expect(error.description.contains("1073741824"))
        }
    }
}
