import ArgumentParser
import DaxFS
import DaxlabSupport
import Pmem

#if canImport(Glibc)
import Glibc
#endif

/// The `daxlab` command: a laboratory for the Linux DAX "DMA versus truncate" problem.
public struct Daxlab: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "daxlab",
        abstract: "A userspace laboratory for the Linux DAX \"DMA versus truncate\" problem on persistent memory.",
        discussion: """
            Paths may be a device-dax device (/dev/daxX.Y), a file on an fs-dax mount, or a file on \
            tmpfs (/dev/shm, emulated pmem; set PMEM_IS_PMEM_FORCE=1 to have libpmem treat it as pmem).

            Exit status: 0 success; 1 the command ran and found a problem (fsck, race verdicts); 2 bad \
            arguments, an unusable path or a failed operation (one line on stderr says which); 141 \
            the reader of stdout went away.
            """,
        version: DaxlabVersion.string,
        subcommands: [
            DevicesCommand.self, InfoCommand.self, MkfsCommand.self, FsckCommand.self, ListCommand.self,
            WriteCommand.self, ReadCommand.self, RemoveCommand.self, TruncateCommand.self, PunchCommand.self,
            FallocateCommand.self,
            CrashTestCommand.self, RaceCommand.self, DemoCommand.self, BenchCommand.self, MmapCheckCommand.self,
            RDMACheckCommand.self,
        ],
        // --help only: a file name such as "-dash" must not be read as -d -a -s -h.
        helpNames: [.long]
    )

    public init() {}
}

/// The version `daxlab --version` prints.
public enum DaxlabVersion {
    public static let string = "0.1.0"
}

/// Runs `daxlab` with `arguments` (by default the process's own, read as bytes: see
/// `RawArguments`) and exits with its status: 0 success, 1 a problem found by a command that ran,
/// 2 a usage error, an unusable path or a failed operation, each with one line on stderr. A
/// reader that went away (EPIPE) ends the command quietly with status 141, as SIGPIPE would.
public func runDaxlab(_ arguments: [String]? = nil) -> Never {
    Output.prepare()
    let arguments = arguments ?? RawArguments.current()
    if let complaint = negativeNumberComplaint(arguments) {
        Terminal.error(complaint)
        exit(2)
    }
    let status = runCommand(arguments)
    do { try Output.finish() } catch {
        if error.brokenPipe { exit(141) }
        Terminal.error(error.message)
        exit(2)
    }
    exit(status)
}

private func runCommand(_ arguments: [String]) -> Int32 {
    do {
        var command = try Daxlab.parseAsRoot(arguments)
        try command.run()
        return 0
    } catch let failure as PmemError {
        Terminal.error("\(failure)")
    } catch let failure as FSError {
        Terminal.error("\(failure)")
    } catch let failure as SystemCallError {
        Terminal.error("\(failure)")
    } catch let failure as Output.Failure {
        if failure.brokenPipe { return 141 }
        Terminal.error(failure.message)
    } catch let failure as CommandFailure {
        Terminal.error(failure.message)
        return failure.status
    } catch let status as ExitCode {
        return status.rawValue
    } catch {
        let status = Daxlab.exitCode(for: error)
        if status == .success {
            Output.print(Daxlab.fullMessage(for: error))
            return 0
        }
        // One line: what is wrong, and where help is.
        let message = Daxlab.message(for: error).split(separator: "\n").first.map(String.init) ?? "invalid arguments"
        let command = arguments.first { !$0.hasPrefix("-") }.map { " \($0)" } ?? ""
        let hint = arguments.contains { $0.hasPrefix("-") && !$0.hasPrefix("--") && $0.count > 2 }
            ? "; a name that starts with '-' goes after '--'" : ""
        Terminal.error(
            message.replacingOccurrences(of: "Error: ", with: "") + hint + " (see 'daxlab\(command) --help')")
    }
    return 2
}

/// `truncate` and `punch` take sizes and offsets, which the argument parser would read as
/// options when negative: say what is wrong instead.
private func negativeNumberComplaint(_ arguments: [String]) -> String? {
    guard let command = arguments.first, ["truncate", "punch", "fallocate"].contains(command) else { return nil }
    let values = arguments.dropFirst().prefix { $0 != "--" }
    guard let negative = values.first(where: { $0.count > 1 && $0.hasPrefix("-") && $0.dropFirst().first!.isNumber })
    else { return nil }
    let what = command == "truncate" ? "size" : "offset and length"
    return "\(command): \(what) \(negative) is negative; it must be 0 or more"
}

/// A failure a command reports with its own exit status and one line of text.
public struct CommandFailure: Error, CustomStringConvertible {
    public var message: String
    public var status: Int32
    public init(_ message: String, status: Int32 = 2) {
        self.message = message
        self.status = status
    }
    public var description: String { self.message }
}
