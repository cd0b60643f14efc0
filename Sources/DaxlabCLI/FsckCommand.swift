import ArgumentParser
import DaxFS

/// `daxlab fsck`: check, and optionally repair, an unmounted image.
struct FsckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fsck",
        abstract: "Check a daxlab file system (and repair it with --repair).",
        discussion: """
            Checks the superblock and its backup, the log, every inode and name, every block map \
            against the allocation bitmap (no block owned twice, none leaked, sizes against maps) \
            and lost+found. The image must not be mounted; without --repair it is opened read-only.

            --repair restores a damaged superblock from its backup, corrects an inode with one \
            flipped bit, recomputes the checksum of one whose fields all check out, keeps the \
            readable blocks of a damaged file and renames it lost+found#N, rewrites bitmap bits, \
            and finishes what a crash interrupted. Each repair says what it did.

            Exit status: 0 clean (or fully repaired); 1 inconsistencies found (listed); 2 the image \
            cannot be read.
            """
    )

    @Argument(help: "The image.")
    var path: String

    @Flag(name: .long, help: "Replay the log and fix what can be proven, keeping data (see the discussion).")
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
        /// Truncates and punches a crash left for mount (or --repair) to finish.
        var pendingOperations: Int
        /// Orphans (files without a name) a crash left for mount (or --repair) to free.
        var pendingOrphans: Int
        /// With --repair: files renamed lost+found#N, their readable blocks kept.
        var salvagedFiles: [String]
        var finishedOperations: Int
        var freedOrphans: Int
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
            lostFoundBlocks: final.lostFoundBlocks, pendingOperations: outcome.result.pendingOperations,
            pendingOrphans: outcome.result.pendingOrphans,
            salvagedFiles: outcome.result.salvagedFiles, finishedOperations: outcome.finishedOperations,
            freedOrphans: outcome.freedOrphans, problemCount: outcome.result.problemCount,
            problems: outcome.result.problems)
        if self.json {
            try Terminal.printJSON(report)
        } else {
            for problem in report.problems {
                Output.printLine(problem.description)
            }
            if outcome.result.unlistedProblems > 0 { Output.print("... and \(outcome.result.unlistedProblems) more") }
            if self.repair {
                // What the repair did besides the problems listed (what a crash left for mount).
                let done = [
                    (report.pendingLogTransactions, "committed log transaction(s) replayed"),
                    (report.finishedOperations, "interrupted truncate(s) or punch(es) finished"),
                    (report.freedOrphans, "orphan(s) freed (files left without a name: unlinked, renamed over, or unpublished temporaries)"),
                ].filter { $0.0 > 0 }.map { "\($0.0) \($0.1)" }
                if !done.isEmpty { Output.print(done.joined(separator: "; ")) }
            }
            let verdict =
                outcome.isClean
                ? (report.problemCount > 0 ? "repaired \(report.problemCount) problem(s); now clean" : "clean")
                : "\(report.problemCount) problem(s)" + (self.repair ? " remain" : "; run with --repair to fix")
            Output.printLine(
                "\(report.path): \(verdict): \(report.files) files, \(report.usedDataBlocks) blocks used, "
                    + "\(report.freeDataBlocks) free" + (report.wasDirty ? " (was not cleanly unmounted)" : ""))
        }
        if !outcome.isClean { throw ExitCode(1) }
    }
}
