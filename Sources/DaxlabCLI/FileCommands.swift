import ArgumentParser
import DaxFS
import Foundation

/// Mounts `path`, runs `body`, and unmounts, also when `body` throws.
func withMountedImage<Result>(_ path: String, _ body: (FileSystem) throws -> Result) throws -> Result {
    let fs = try FileSystem.mount(path: path)
    do {
        let result = try body(fs)
        try fs.unmount()
        return result
    } catch {
        try? fs.unmount()
        throw error
    }
}

struct ListCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ls", abstract: "List the files of an image: name, size, blocks.")

    @Argument(help: "The image.") var path: String
    @Flag(name: .long, help: "Print one JSON array of {name, size, blocks, inode, generation}.") var json = false

    struct Entry: Codable {
        var name: String
        var size: Int
        var blocks: Int
        var inode: Int
        var generation: UInt32
    }

    func run() throws {
        let files = try withMountedImage(self.path) { $0.list() }
        let entries = files.map {
            Entry(name: $0.name, size: $0.size, blocks: $0.blocks, inode: $0.id.inode, generation: $0.id.generation)
        }
        if self.json { return try Terminal.printJSON(entries) }
        for entry in entries {
            print("\(String(entry.size).leftPadded(12))  \(String(entry.blocks).leftPadded(8))  \(entry.name)")
        }
    }
}

struct WriteCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "write",
        abstract: "Write a file into an image from stdin or --input (creating or overwriting it).")

    @Argument(help: "The image.") var path: String
    @Argument(help: "The file's name (1-255 bytes, no '/').") var name: String
    @Option(name: .long, help: ArgumentHelp("Read the data from FILE instead of stdin.", valueName: "FILE"))
    var input: String?

    func run() throws {
        let data: Data
        if let input {
            guard let contents = FileManager.default.contents(atPath: input) else {
                throw CommandFailure("\(input): cannot read")
            }
            data = contents
        } else {
            data = FileHandle.standardInput.readDataToEndOfFile()
        }
        try withMountedImage(self.path) { fs in
            let id = try fs.openOrCreate(self.name)
            try fs.truncate(id, size: 0)
            try fs.write(id, offset: 0, bytes: [UInt8](data))
        }
    }
}

struct ReadCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "read", abstract: "Copy a file out of an image to stdout.")

    @Argument(help: "The image.") var path: String
    @Argument(help: "The file's name.") var name: String

    func run() throws {
        let bytes = try withMountedImage(self.path) { fs in
            let id = try fs.lookup(self.name)
            return try fs.read(id, offset: 0, count: fs.stat(id).size)
        }
        FileHandle.standardOutput.write(Data(bytes))
    }
}

struct RemoveCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "rm", abstract: "Remove a file from an image.")

    @Argument(help: "The image.") var path: String
    @Argument(help: "The file's name.") var name: String

    func run() throws { try withMountedImage(self.path) { try $0.unlink(self.name) } }
}

struct TruncateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "truncate", abstract: "Set a file's size (shrinking frees blocks; growing adds a hole).")

    @Argument(help: "The image.") var path: String
    @Argument(help: "The file's name.") var name: String
    @Argument(help: "The new size (K, M, G suffixes).") var size: ByteSize

    func run() throws {
        try withMountedImage(self.path) { fs in try fs.truncate(fs.lookup(self.name), size: self.size.bytes) }
    }
}

struct PunchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "punch", abstract: "Punch a hole in a file: the range reads back as zeros; whole blocks are freed.")

    @Argument(help: "The image.") var path: String
    @Argument(help: "The file's name.") var name: String
    @Argument(help: "Where the hole starts (K, M, G suffixes).") var offset: ByteSize
    @Argument(help: "How long it is.") var length: ByteSize

    func run() throws {
        try withMountedImage(self.path) { fs in
            try fs.punchHole(fs.lookup(self.name), offset: self.offset.bytes, length: self.length.bytes)
        }
    }
}

extension String {
    func leftPadded(_ width: Int) -> String {
        self.count >= width ? self : String(repeating: " ", count: width - self.count) + self
    }
}
