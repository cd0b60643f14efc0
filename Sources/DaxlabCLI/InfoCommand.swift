import ArgumentParser
import DaxFS
import Pmem

/// `daxlab info <path>`: what the Pmem layer knows of a path.
struct InfoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "info",
        abstract: "Show what a pmem path is: medium, size, alignment, is-pmem, how it persists.",
        discussion: """
            PATH is a device-dax device, a file on an fs-dax mount, or a file on tmpfs or another \
            file system. It is mapped read-write through libpmem and nothing is written to it; \
            the daxlab file system in a file is read through a read-only mapping of it.
            """
    )

    @Argument(help: "A /dev/daxX.Y device or a file.")
    var path: String

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Create the file at SIZE (mode 0600) when it does not exist; an existing file must be SIZE.",
            valueName: "SIZE"))
    var create: ByteSize?

    @Flag(name: .long, help: "Print one JSON object.")
    var json = false

    struct Report: Codable {
        var path: String
        var medium: Medium
        var mediumDescription: String
        var size: Int
        var alignment: Int
        var isPmem: Bool
        var persistence: PersistenceStrategy
        var mapSync: Bool
        /// The kernel's `VmFlags` for the mapping (`sf` is MAP_SYNC), when /proc/self/smaps has them.
        var vmFlags: [String]?
        var autoFlush: Bool
        var created: Bool
        /// The daxlab file system on it, when there is one.
        var fileSystem: ImageSummary?
        /// Why the file system could not be read, when it is damaged.
        var fileSystemError: String?
    }

    /// The image as daxlab maps it for writing when this user may write it (nothing is written,
    /// no hole is filled), and read-only when the user may only read it.
    private func map() throws(PmemError) -> PmemMapping {
        if let create = self.create { return try PmemMapping(path: self.path, options: .openOrCreate(size: create.bytes)) }
        do {
            return try PmemMapping(path: self.path, options: MapOptions(allocation: .sparse))
        } catch {
            guard error.code == .permissionDenied else { throw error }
            return try PmemMapping(path: self.path, options: .readOnly)
        }
    }

    func run() throws {
        let mapping = try self.map()
        var report = Report(
            path: mapping.path, medium: mapping.medium, mediumDescription: mapping.medium.description,
            size: mapping.length, alignment: mapping.alignment, isPmem: mapping.isPmem,
            persistence: mapping.persistence, mapSync: mapping.synchronousFaults, vmFlags: mapping.kernelFlags,
            autoFlush: PmemMapping.platformHasAutoFlush, created: mapping.created)
        // Holes of a file read as zero pages there, not as pages taken from the file system under it.
        let view = try mapping.readOnlyView()
        do {
            report.fileSystem = try ImageSummary.read(from: view)
        } catch where error.code == .notAnImage {
        } catch {
            report.fileSystemError = error.description
        }
        if self.json {
            try Terminal.printJSON(report)
            if report.fileSystemError != nil { throw ExitCode(1) }
            return
        }
        Output.printLine(report.path + (report.created ? "  (created)" : ""))
        Output.print("  medium       \(report.mediumDescription)")
        Output.print("  size         \(report.size) bytes (\(ByteFormat.binary(report.size)))")
        Output.print("  alignment    \(ByteFormat.binary(report.alignment))")
        Output.print(
            "  is pmem      \(report.isPmem ? "yes" : "no")"
                + (report.isPmem || report.medium == .deviceDAX ? "" : "  (PMEM_IS_PMEM_FORCE=1 treats it as pmem)"))
        Output.print(
            "  persistence  \(report.persistence == .pmem ? "CPU cache flush (pmem_persist)" : "msync (pmem_msync)")")
        Output.print("  MAP_SYNC     \(report.mapSync ? "yes (synchronous faults)" : "no")")
        if let flags = report.vmFlags { Output.print("  VmFlags      \(flags.joined(separator: " "))") }
        Output.print("  eADR         \(report.autoFlush ? "yes (caches are in the persistence domain)" : "no")")
        if let fs = report.fileSystem {
            Output.print("file system    daxlab, \(fs.state) (mounted \(fs.mounts) times), uuid \(fs.uuid)")
            Output.print("  blocks       \(fs.blocks) of 4 KiB; data from block \(fs.dataStart)")
            Output.print("  data         \(fs.dataBlocks - fs.freeDataBlocks) used, \(fs.freeDataBlocks) free")
            Output.print("  files        \(fs.files) of \(fs.inodes) inodes")
            Output.print("  log          \(fs.logSlots) slots, \(fs.pendingLogTransactions) committed transactions to replay")
        } else if let failure = report.fileSystemError {
            Output.printLine("file system    damaged: \(failure)")
        } else {
            Output.print("file system    none (daxlab mkfs creates one)")
        }
        if report.fileSystemError != nil { throw ExitCode(1) }
    }
}
