import ArgumentParser
import DaxFS
import Foundation
import Pmem

/// Mounts `path` (read-only for the commands that only read: a user with read permission may
/// run them, and several may at once), runs `body`, and unmounts, also when `body` throws.
func withMountedImage<Result>(_ path: String, readOnly: Bool = false, _ body: (FileSystem) throws -> Result) throws -> Result {
    let fs = try FileSystem.mount(path: path, readOnly: readOnly)
    do {
        let result = try body(fs)
        try fs.unmount()
        return result
    } catch {
        try? fs.unmount()
        throw error
    }
}

/// How much of a file `read` and `write` hold in memory at once.
let streamChunk = 4 << 20

struct ListCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ls", abstract: "List the files of an image: size, blocks, name.",
        discussion: """
            Names are printed escaped as `ls -b` does (\\\\ for a backslash, '\\ ' for a space, \\n, \\t, \\ooo for \
            control characters and bytes that are not UTF-8), so a name cannot inject terminal escapes or \
            fake a line. --json gives each name both escaped and as hex bytes (name_hex).
            """)

    @Argument(help: "The image.") var path: String
    @Flag(name: .long, help: "Print one JSON array of {name, name_hex, size, blocks, inode, generation}.") var json = false

    struct Entry: Codable {
        var name: String
        var nameHex: String
        var size: Int
        var blocks: Int
        var inode: Int
        var generation: UInt32
    }

    func run() throws {
        let files = try withMountedImage(self.path, readOnly: true) { $0.list() }
        let entries = files.map {
            Entry(name: $0.name.escaped, nameHex: $0.name.hex, size: $0.size, blocks: $0.blocks, inode: $0.id.inode,
                  generation: $0.id.generation)
        }
        if self.json { return try Terminal.printJSON(entries) }
        for entry in entries {
            Output.print("\(String(entry.size).leftPadded(12))  \(String(entry.blocks).leftPadded(8))  \(entry.name)")
        }
    }
}

struct WriteCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "write",
        abstract: "Write a file into an image from stdin or --input (creating or replacing it).",
        discussion: """
            All or nothing: the data goes into a new unnamed file, which then takes the name in one \
            transaction, replacing a file of that name. If the data cannot all be written (no space, \
            a read error, a crash), an existing file keeps its old content. The data is streamed in \
            4 MiB chunks, so memory stays small whatever its size. A name is any 1 to 255 bytes \
            without '/' or NUL; one that starts with '-' goes after '--'.
            """)

    @Argument(help: "The image.") var path: String
    @Argument(help: "The file's name (1-255 bytes, no '/').") var name: FileName
    @Option(name: .long, help: ArgumentHelp("Read the data from FILE instead of stdin.", valueName: "FILE"))
    var input: String?

    func run() throws {
        try FileSystem.validate(name: self.name)
        // The input is opened, and its first chunk read, before the image is touched.
        let input = try InputStream(path: self.input)
        defer { input.close() }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: streamChunk, alignment: pageSize)
        defer { buffer.deallocate() }
        var count = try input.read(into: buffer)
        try withMountedImage(self.path) { fs in
            let previous = try? fs.stat(fs.lookup(self.name))
            let unnamed = try fs.createUnnamed()
            var offset = 0
            do {
                while count > 0 {
                    try fs.write(unnamed, offset: offset, bytes: UnsafeRawBufferPointer(rebasing: buffer[..<count]))
                    offset += count
                    guard count == buffer.count else { break }
                    count = try input.read(into: buffer)
                }
                try fs.publish(unnamed, as: self.name)
            } catch {
                try? fs.discardUnnamed(unnamed)
                let kept = previous.map { "the existing \($0.size)-byte file was kept" } ?? "no file was created"
                throw CommandFailure("\(self.name): \(Self.describe(error)) after \(offset) bytes; \(kept)")
            }
        }
    }

    private static func describe(_ error: any Error) -> String {
        if let failure = error as? CommandFailure { return failure.message }
        return "\(error)"
    }
}

struct ReadCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "read", abstract: "Copy a file out of an image to stdout (streamed in 4 MiB chunks).")

    @Argument(help: "The image.") var path: String
    @Argument(help: "The file's name.") var name: FileName

    func run() throws {
        try Output.checkOpen()
        try withMountedImage(self.path, readOnly: true) { fs in
            let id = try fs.lookup(self.name)
            let size = try fs.stat(id).size
            var offset = 0
            while offset < size {
                let bytes = try fs.read(id, offset: offset, count: min(streamChunk, size - offset))
                guard !bytes.isEmpty else { break }
                try Self.emit(bytes)
                offset += bytes.count
            }
        }
    }

    private static func emit(_ bytes: [UInt8]) throws(Output.Failure) {
        var failure: Output.Failure?
        bytes.withUnsafeBytes { buffer in
            do throws(Output.Failure) { try Output.write(buffer) } catch { failure = error }
        }
        if let failure { throw failure }
    }
}

struct RemoveCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rm", abstract: "Remove a file from an image (whole, or not at all across a crash).")

    @Argument(help: "The image.") var path: String
    @Argument(help: "The file's name.") var name: FileName

    func run() throws { try withMountedImage(self.path) { try $0.unlink(self.name) } }
}

struct TruncateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "truncate",
        abstract: "Set a file's size (shrinking frees blocks; growing adds a hole).",
        discussion: """
            SIZE is 0 to \(FileSystem.maximumFileSize) bytes (the largest file: 1 GiB + 2 MiB + 48 KiB), \
            with K, M, G suffixes. A truncate a crash interrupts is finished by the next mount.
            """)

    @Argument(help: "The image.") var path: String
    @Argument(help: "The file's name.") var name: FileName
    @Argument(help: "The new size (K, M, G suffixes).") var size: ByteSize

    func run() throws {
        try withMountedImage(self.path) { fs in try fs.truncate(fs.lookup(self.name), size: self.size.bytes) }
    }
}

struct PunchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "punch",
        abstract: "Punch a hole in a file: the range reads back as zeros; whole blocks are freed.",
        discussion: """
            OFFSET + LENGTH may reach at most \(FileSystem.maximumFileSize) bytes; the part past the \
            end of file is ignored. A punch a crash interrupts is finished by the next mount.
            """)

    @Argument(help: "The image.") var path: String
    @Argument(help: "The file's name.") var name: FileName
    @Argument(help: "Where the hole starts (K, M, G suffixes).") var offset: ByteSize
    @Argument(help: "How long it is.") var length: ByteSize

    func run() throws {
        try withMountedImage(self.path) { fs in
            try fs.punchHole(fs.lookup(self.name), offset: self.offset.bytes, length: self.length.bytes)
        }
    }
}

/// The modes of `daxlab fallocate`, named as util-linux's fallocate(1) names them.
enum FallocateMode: String, CaseIterable, ExpressibleByArgument {
    case allocate
    case punchHole = "punch-hole"
    case zeroRange = "zero-range"
    case collapseRange = "collapse-range"
    case insertRange = "insert-range"
}

struct FallocateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fallocate",
        abstract: "Allocate, punch or zero a range of a file, as fallocate(2) does.",
        discussion: """
            Modes: allocate (the default: zeroed blocks for every hole in the range; the file grows \
            to cover it unless --keep-size), punch-hole (the range reads zeros, whole blocks are \
            freed, the size stays: `daxlab punch` is the shorthand), zero-range (the range reads \
            zeros and has zeroed blocks; the file grows to cover it unless --keep-size), \
            collapse-range (the range leaves the file: the rest moves down and the file shrinks; \
            block-aligned, ending before the end of file), insert-range (a hole opens at --offset: \
            the rest moves up and the file grows; block-aligned, before the end of file). \
            OFFSET + LENGTH may reach at most \(FileSystem.maximumFileSize) bytes. A punch, \
            zero-range, collapse or insert a crash interrupts is finished by the next mount or was \
            never begun (each is all or nothing); \
            an allocation may be left in part, as fallocate(2)'s may.
            """)

    @Argument(help: "The image.") var path: String
    @Argument(help: "The file's name.") var name: FileName
    @Option(name: .long, help: "allocate, punch-hole, zero-range, collapse-range or insert-range.")
    var mode: FallocateMode = .allocate
    @Option(name: .long, help: "Where the range starts (K, M, G suffixes).") var offset = ByteSize(bytes: 0)
    @Option(name: .long, help: "How long it is.") var length: ByteSize
    @Flag(name: .customLong("keep-size"), help: "Do not grow the file (allocate: only the part inside the file gets blocks; zero-range; punch-hole always keeps the size; not with collapse-range or insert-range).")
    var keepSize = false

    func validate() throws {
        guard self.length.bytes > 0 else { throw ValidationError("--length must be more than 0") }
        // As fallocate(2): EINVAL for a collapse or an insert with KEEP_SIZE (each changes the size).
        if self.keepSize, self.mode == .collapseRange || self.mode == .insertRange {
            throw ValidationError("--keep-size cannot go with \(self.mode.rawValue): it always changes the size")
        }
    }

    func run() throws {
        try withMountedImage(self.path) { fs in
            let file = try fs.lookup(self.name)
            let (offset, length) = (self.offset.bytes, self.length.bytes)
            switch self.mode {
            case .allocate:
                let allocated = try fs.fallocate(file, offset: offset, length: length, keepSize: self.keepSize)
                if allocated < length {
                    Terminal.writeStandardError(
                        "daxlab: fallocate: --keep-size: the \(length - allocated) bytes past the end of file got no "
                            + "blocks (DaxFS maps none there)\n")
                }
            case .punchHole: try fs.punchHole(file, offset: offset, length: length)
            case .zeroRange: try fs.zeroRange(file, offset: offset, length: length, keepSize: self.keepSize)
            case .collapseRange: try fs.collapseRange(file, offset: offset, length: length)
            case .insertRange: try fs.insertRange(file, offset: offset, length: length)
            }
        }
    }
}

extension String {
    func leftPadded(_ width: Int) -> String {
        self.count >= width ? self : String(repeating: " ", count: width - self.count) + self
    }
}
