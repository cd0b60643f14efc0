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

            Exit status: 0 success; 1 the command ran and found a problem; 2 bad arguments or an \
            unusable path (one line on stderr says which).
            """,
        version: DaxlabVersion.string,
        subcommands: [
            DevicesCommand.self, InfoCommand.self, MkfsCommand.self, FsckCommand.self, ListCommand.self,
            WriteCommand.self, ReadCommand.self, RemoveCommand.self, TruncateCommand.self, PunchCommand.self,
            CrashTestCommand.self, RaceCommand.self, DemoCommand.self, BenchCommand.self,
        ]
    )

    public init() {}
}

/// The version `daxlab --version` prints.
public enum DaxlabVersion {
    public static let string = "0.1.0"
}

/// Runs `daxlab` with `arguments` and exits with its status: 0 success, 1 a problem found by a
/// command that ran, 2 a usage error or an unusable path.
public func runDaxlab(_ arguments: [String] = Array(CommandLine.arguments.dropFirst())) -> Never {
    do {
        var command = try Daxlab.parseAsRoot(arguments)
        try command.run()
        exit(0)
    } catch let failure as PmemError {
        Terminal.error("\(failure)")
        exit(2)
    } catch let failure as FSError {
        Terminal.error("\(failure)")
        exit(2)
    } catch let failure as SystemCallError {
        Terminal.error("\(failure)")
        exit(2)
    } catch let failure as CommandFailure {
        Terminal.error(failure.message)
        exit(failure.status)
    } catch let status as ExitCode {
        exit(status.rawValue)
    } catch {
        let status = Daxlab.exitCode(for: error)
        let message = Daxlab.fullMessage(for: error)
        if status == .success {
            print(message)
            exit(0)
        }
        Terminal.writeStandardError(message + "\n")
        exit(2)
    }
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
