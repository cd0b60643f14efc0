import ArgumentParser
import DaxFS

/// `daxlab mkfs`: an empty DaxFS on a file or a device-dax device.
struct MkfsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mkfs",
        abstract: "Create an empty daxlab file system.",
        discussion: """
            Creates PATH at --size (default 256M) when it does not exist, or formats an existing \
            file or /dev/daxX.Y device in place at its own size. Refuses, changing nothing, when \
            PATH already holds a daxlab image (or only its backup superblock), a signature \
            libblkid recognizes, or any non-zero byte in its first or last MiB, unless --force.
            """
    )

    @Argument(help: "The image: a file (created if missing) or a device-dax device.")
    var path: String

    @Option(name: .long, help: ArgumentHelp("Size of a new file (K, M, G suffixes); an existing one must match.",
                                            valueName: "SIZE"))
    var size: ByteSize?

    @Flag(name: .long, help: "Overwrite an existing image or non-empty target.")
    var force = false

    @Flag(name: .long, help: "Print one JSON object.")
    var json = false

    struct Report: Codable {
        var path: String
        var size: Int
        var created: Bool
        var blocks: Int
        var dataBlocks: Int
        var inodes: Int
        var logSlots: Int
    }

    func run() throws {
        let formatted = try FileSystem.format(path: self.path, size: self.size?.bytes, force: self.force)
        let g = formatted.geometry
        let report = Report(
            path: formatted.path, size: formatted.size, created: formatted.created, blocks: g.blockCount,
            dataBlocks: g.dataBlocks, inodes: g.inodeCount, logSlots: g.logSlotCount)
        if self.json { return try Terminal.printJSON(report) }
        Output.printLine(
            "\(report.path): daxlab file system, \(ByteFormat.binary(report.size))"
                + (report.created ? " (new file)" : "") + ": \(report.dataBlocks) data blocks of 4 KiB, "
                + "\(report.inodes) inodes, \(report.logSlots) log slots")
    }
}
