import Foundation

/// What a run of the `daxlab` binary printed and how it exited.
public struct ProcessResult: Sendable {
    public var status: Int32
    public var standardOutput: String
    public var standardError: String
}

/// The built `daxlab` executable: beside the test bundle in the build folder (SwiftPM builds it
/// because the CLI tests depend on it), or `$DAXLAB_BINARY`.
public enum DaxlabBinary {
    public static var path: String {
        if let explicit = ProcessInfo.processInfo.environment["DAXLAB_BINARY"] { return explicit }
        let testBinary = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? ""
        return URL(fileURLWithPath: testBinary).deletingLastPathComponent().appendingPathComponent("daxlab").path
    }

    /// Runs `daxlab` with `arguments`, an environment of the test's own plus `environment`, and
    /// an optional prefix command (`["setpriv", "--reuid=65534", ...]`); waits at most `timeout`.
    public static func run(
        _ arguments: [String], environment: [String: String] = [:], prefix: [String] = [],
        timeout: TimeInterval = 60
    ) throws -> ProcessResult {
        // The child decides is-pmem for itself unless `environment` forces it.
        try runProcess(
            prefix + [self.path] + arguments, environment: environment, removing: ["PMEM_IS_PMEM_FORCE"],
            timeout: timeout)
    }

    /// A copy of the binary in a fresh folder under /tmp that every user may enter and run
    /// (for tests that drop privileges: the build folder may be in a 0700 folder).
    /// - Returns: the copy's path; the caller removes its folder.
    public static func copyForEveryone() throws -> String {
        let folder = "/tmp/daxlab-binary-\(getpid())-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: false)
        let copy = folder + "/daxlab"
        try FileManager.default.copyItem(atPath: self.path, toPath: copy)
        guard chmod(folder, 0o755) == 0, chmod(copy, 0o755) == 0 else {
            throw CocoaError(.fileWriteNoPermission, userInfo: [NSFilePathErrorKey: folder])
        }
        return copy
    }

    public struct TimedOut: Error, CustomStringConvertible {
        public var command: String
        public var seconds: TimeInterval
        public var description: String { "\(self.command) did not finish in \(self.seconds) s" }
    }
}

/// Runs `command` (its first element an absolute path, or a name looked up in PATH through
/// /usr/bin/env) with the test's environment less `removing`, plus `environment`; waits at most
/// `timeout` and kills it after that.
public func runProcess(
    _ command: [String], environment: [String: String] = [:], removing: Set<String> = [],
    timeout: TimeInterval = 60
) throws -> ProcessResult {
    let process = Process()
    let direct = command[0].hasPrefix("/")
    process.executableURL = URL(fileURLWithPath: direct ? command[0] : "/usr/bin/env")
    process.arguments = direct ? Array(command.dropFirst()) : command
    var merged = ProcessInfo.processInfo.environment
    for key in removing { merged.removeValue(forKey: key) }
    for (key, value) in environment { merged[key] = value }
    process.environment = merged
    let output = Pipe()
    let error = Pipe()
    process.standardOutput = output
    process.standardError = error
    process.standardInput = FileHandle.nullDevice
    try process.run()
    // Read both pipes while the child runs, so a full pipe cannot stall it.
    let group = DispatchGroup()
    nonisolated(unsafe) var outputData = Data()
    nonisolated(unsafe) var errorData = Data()
    DispatchQueue.global().async(group: group) { outputData = output.fileHandleForReading.readDataToEndOfFile() }
    DispatchQueue.global().async(group: group) { errorData = error.fileHandleForReading.readDataToEndOfFile() }
    let deadline = Date().addingTimeInterval(timeout)
    while process.isRunning, Date() < deadline { usleep(10_000) }
    if process.isRunning {
        // SIGKILL: the child may have inherited a mask that blocks SIGTERM.
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        throw DaxlabBinary.TimedOut(command: command.joined(separator: " "), seconds: timeout)
    }
    process.waitUntilExit()
    group.wait()
    return ProcessResult(
        status: process.terminationStatus,
        standardOutput: String(decoding: outputData, as: UTF8.self),
        standardError: String(decoding: errorData, as: UTF8.self))
}
