import ArgumentParser
import DaxFS

/// `daxlab fsck`: check, and optionally repair, an unmounted image.
struct FsckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fsck",
        abstract: "Check a daxlab file system (and repair it with --repair).",
        discussion: """
            Checks the superblock, the log, every inode and name, every block map against the \
            allocation bitmap (no block owned twice, none leaked, sizes against maps) and \
            lost+found. The image must not be mounted.

            Exit status: 0 clean (or fully repaired); 1 inconsistencies found (listed); 2 the image \
            cannot be read.
            """
    )

    @Argument(help: "The image.")
    var path: String

    @Flag(name: .long, help: "Replay the log and fix what is found: leaked blocks, bad pointers, bad inodes.")
    var repair = false

    @Flag(name: .long, help: "Print one JSON object.")
    var json = false

    struct Report: Codable {
        var path: String
        var clean: Bool
        var repaired: Bool
        var wasDirty: Bool
        var pendingLogTransactions: Int
        var files: Int
        var usedDataBlocks: Int
        var freeDataBlocks: Int
        var lostFoundBlocks: Int
        var problemCount: Int
        var problems: [FsckProblem]
    }

    func run() throws {
        let outcome = try Fsck.run(path: self.path, repair: self.repair)
        let final = outcome.afterRepair ?? outcome.result
        let report = Report(
            path: outcome.path, clean: outcome.isClean, repaired: outcome.repaired, wasDirty: outcome.wasDirty,
            pendingLogTransactions: outcome.pendingLogTransactions, files: final.files,
            usedDataBlocks: final.usedDataBlocks, freeDataBlocks: final.freeDataBlocks,
            lostFoundBlocks: final.lostFoundBlocks, problemCount: outcome.result.problemCount,
            problems: outcome.result.problems)
        if self.json {
            try Terminal.printJSON(report)
        } else {
            for problem in report.problems {
                print((problem.repaired ? "repaired: " : "") + problem.description)
            }
            if outcome.result.unlistedProblems > 0 { print("... and \(outcome.result.unlistedProblems) more") }
            let verdict =
                outcome.isClean
                ? (report.problemCount > 0 ? "repaired \(report.problemCount) problem(s); now clean" : "clean")
                : "\(report.problemCount) problem(s)" + (self.repair ? " remain" : "; run with --repair to fix")
            print(
                "\(report.path): \(verdict): \(report.files) files, \(report.usedDataBlocks) blocks used, "
                    + "\(report.freeDataBlocks) free" + (report.wasDirty ? " (was not cleanly unmounted)" : ""))
        }
        if !outcome.isClean { throw ExitCode(1) }
    }
}
