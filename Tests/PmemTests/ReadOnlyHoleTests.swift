import Foundation
import Pmem
import Testing
import TestSupport

/// A read-only mapping reads a file's holes as zeros without asking the file system for pages
/// (on tmpfs each read of a hole through the file would add a page to it, and a full tmpfs
/// answers with a SIGBUS).
@Suite("Read-only mappings of sparse files")
struct ReadOnlyHoleTests {
    private static let size = 1 << 20
    /// Data pages of the sparse file: the first, two in the middle, the last.
    private static let dataPages = [0, 64, 65, 255]

    /// What data page `page` is filled with: never 0.
    private static func byte(_ page: Int) -> UInt8 { UInt8(page % 251 + 1) }

    /// A sparse file on tmpfs with `dataPages` written (each with its `byte`) and holes
    /// elsewhere, including at its end; `body` gets its path.
    private func sparseFile(_ body: (String) throws -> Void) throws {
        try withTemporaryPath("sparse") { path in
            let fd = open(path, O_RDWR | O_CREAT | O_EXCL, 0o600)
            try #require(fd >= 0)
            defer { close(fd) }
            try #require(ftruncate(fd, off_t(Self.size)) == 0)
            for page in Self.dataPages {
                let bytes = [UInt8](repeating: Self.byte(page), count: pageSize)
                try #require(pwrite(fd, bytes, bytes.count, off_t(page * pageSize)) == bytes.count)
            }
            guard try PmemMapping(path: path, options: .readOnly).medium == .tmpfs else {
                try Test.cancel("/dev/shm is not tmpfs here: only tmpfs gives a hole a page when it is read")
            }
            try body(path)
        }
    }

    private func allocatedBytes(_ path: String) -> Int {
        var status = stat()
        return stat(path, &status) == 0 ? Int(status.st_blocks) * 512 : -1
    }

    /// Page `page` of `mapping` holds `byte` throughout.
    private func expectPage(_ mapping: PmemMapping, _ page: Int, _ byte: UInt8, sourceLocation: SourceLocation = #_sourceLocation) {
        let bytes = UnsafeRawBufferPointer(start: mapping.pointer(at: page * pageSize), count: pageSize)
        #expect(bytes.allSatisfy { $0 == byte }, "page \(page)", sourceLocation: sourceLocation)
    }

    @Test("holes read as zeros and the file system gives the file no page for them")
    func holesReadAsZerosWithoutPages() throws {
        try self.sparseFile { path in
            let allocated = self.allocatedBytes(path)
            #expect(allocated == Self.dataPages.count * pageSize)
            let mapping = try PmemMapping(path: path, options: .readOnly)
            #expect(mapping.isReadOnly)
            for page in 0..<(Self.size / pageSize) {
                self.expectPage(mapping, page, Self.dataPages.contains(page) ? Self.byte(page) : 0)
            }
            #expect(self.allocatedBytes(path) == allocated, "reading the holes added pages to the file")
            // A store into a hole stays in this process's copy.
            mapping.pointer(at: 3 * pageSize).storeBytes(of: 0xAB, as: UInt8.self)
            #expect(mapping.pointer(at: 3 * pageSize).load(as: UInt8.self) == 0xAB)
            #expect(self.allocatedBytes(path) == allocated, "a private store into a hole reached the file")
            let reopened = try PmemMapping(path: path, options: .readOnly)
            self.expectPage(reopened, 3, 0)
        }
    }

    @Test("remapPrivateCopy maps the file afresh: a hole filled since reads its data, private stores go")
    func remapReadsWhatWasWrittenSince() throws {
        try self.sparseFile { path in
            let mapping = try PmemMapping(path: path, options: .readOnly)
            mapping.pointer(at: 0).storeBytes(of: 0xEE, as: UInt8.self)
            // A writer fills the hole at page 100 after the mapping was made.
            let fd = open(path, O_WRONLY)
            try #require(fd >= 0)
            let bytes = [UInt8](repeating: 0x5A, count: pageSize)
            #expect(pwrite(fd, bytes, bytes.count, off_t(100 * pageSize)) == bytes.count)
            close(fd)
            self.expectPage(mapping, 100, 0)  // the zero pages mapped over the hole at mapping time
            try mapping.remapPrivateCopy()
            self.expectPage(mapping, 100, 0x5A)
            self.expectPage(mapping, 0, Self.byte(0))
            self.expectPage(mapping, 99, 0)
            self.expectPage(mapping, 254, 0)
            self.expectPage(mapping, 255, Self.byte(255))
            #expect(self.allocatedBytes(path) == (Self.dataPages.count + 1) * pageSize)
        }
    }

    @Test("readOnlyView of a sparse read-write mapping reads its holes without the file system")
    func readOnlyViewOfSparseMapping() throws {
        try self.sparseFile { path in
            let allocated = self.allocatedBytes(path)
            let mapping = try PmemMapping(path: path, options: MapOptions(allocation: .sparse))
            #expect(!mapping.isReadOnly)
            let view = try mapping.readOnlyView()
            #expect(view.isReadOnly && view !== mapping && view.length == mapping.length && view.path == path)
            #expect(view.descriptor != mapping.descriptor)
            for page in 0..<(Self.size / pageSize) {
                self.expectPage(view, page, Self.dataPages.contains(page) ? Self.byte(page) : 0)
            }
            #expect(self.allocatedBytes(path) == allocated, "reading the view's holes added pages to the file")
            #expect(try view.readOnlyView() === view)
        }
    }

    @Test("a file with no holes, and a file that is all hole, read as they are")
    func noHolesAndAllHole() throws {
        try withTemporaryPath("dense") { path in
            let data = randomBytes(count: 64 << 10, seed: 11)
            try Data(data).write(to: URL(fileURLWithPath: path))
            let mapping = try PmemMapping(path: path, options: .readOnly)
            #expect(Array(UnsafeRawBufferPointer(start: mapping.base, count: mapping.length)) == data)
        }
        try withTemporaryPath("empty") { path in
            #expect(FileManager.default.createFile(atPath: path, contents: nil))
            #expect(truncate(path, 64 << 10) == 0)
            let mapping = try PmemMapping(path: path, options: .readOnly)
            #expect(UnsafeRawBufferPointer(start: mapping.base, count: mapping.length).allSatisfy { $0 == 0 })
            #expect(self.allocatedBytes(path) == 0)
        }
    }
}
