import ArgumentParser
import Dispatch
import Foundation
import Pmem
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A private folder for scratch files (`mkdtemp`, mode 0700): nobody else can plant a link or a
/// file in it, so predictable names inside are safe. Removed with everything in it by `remove()`.
///
/// SIGINT and SIGTERM are requests to stop (`stopOnSignal`): the handler records the signal and
/// stops what is running (kills the child); the run notices at its next `checkSignal()`, throws,
/// and removes the folder as it unwinds. Only the run's own thread creates files in the folder,
/// so none can appear after it is removed (a handler that removed it itself would race with a
/// run still formatting or copying into it, and leave files behind).
final class ScratchDirectory: @unchecked Sendable {
    // `path` is set once; `signalSources` only touched on the creating thread.
    let path: String
    private var signalSources: [DispatchSourceSignal] = []
    /// The signal that asked the run to stop, or 0.
    private let signalled = Atomic<Int32>(0)

    /// How long the run has to stop after a signal before the handler removes the folder and
    /// exits by itself (a run stuck in a system call must not hang an interrupt).
    static let stopGrace: Double = 10

    /// Creates `<parent>/<prefix>XXXXXX`.
    /// - Throws: `CommandFailure` naming the folder and the errno.
    init(in parent: String, prefix: String) throws {
        var template = Array("\(parent)/\(prefix)XXXXXX".utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw CommandFailure("\(parent): cannot create a scratch folder: \(String(cString: strerror(errno)))")
        }
        self.path = String(cString: made)
    }

    /// On SIGINT or SIGTERM: records the signal, runs `onSignal` (stop the child), and leaves the
    /// rest to the run's next `checkSignal()`; after `stopGrace` seconds without an exit it removes
    /// the folder and exits with 128 + the signal itself.
    func stopOnSignal(_ onSignal: @escaping @Sendable () -> Void) {
        for number in [SIGINT, SIGTERM] {
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            let path = self.path
            source.setEventHandler { [self] in
                self.signalled.store(number, ordering: .sequentiallyConsistent)
                onSignal()
                DispatchQueue.global().asyncAfter(deadline: .now() + Self.stopGrace) {
                    ScratchDirectory.remove(path)
                    exit(128 + number)
                }
            }
            source.resume()
            self.signalSources.append(source)
        }
    }

    /// Throws `ExitCode(128 + signal)` once SIGINT or SIGTERM has asked the run to stop.
    func checkSignal() throws {
        let number = self.signalled.load(ordering: .sequentiallyConsistent)
        if number != 0 { throw ExitCode(128 + number) }
    }

    func remove() { Self.remove(self.path) }

    private static func remove(_ path: String) {
        if let entries = try? FileManager.default.contentsOfDirectory(atPath: path) {
            for entry in entries { unlink("\(path)/\(entry)") }
        }
        rmdir(path)
    }

    /// Copies `source` to a new file `target` in the folder (O_EXCL|O_NOFOLLOW, mode 0600).
    /// - Throws: `CommandFailure` naming the file and the errno.
    static func copy(_ source: String, to target: String) throws {
        let input = open(source, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard input >= 0 else { throw CommandFailure("\(source): cannot read: \(String(cString: strerror(errno)))") }
        defer { close(input) }
        let output = open(target, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard output >= 0 else { throw CommandFailure("\(target): cannot create: \(String(cString: strerror(errno)))") }
        defer { close(output) }
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: 1 << 20, alignment: pageSize)
        defer { buffer.deallocate() }
        while true {
            let count = read(input, buffer, 1 << 20)
            if count < 0, errno == EINTR { continue }
            guard count >= 0 else { throw CommandFailure("\(source): cannot read: \(String(cString: strerror(errno)))") }
            if count == 0 { return }
            var written = 0
            while written < count {
                let step = write(output, buffer + written, count - written)
                if step < 0, errno == EINTR { continue }
                guard step > 0 else { throw CommandFailure("\(target): cannot write: \(String(cString: strerror(errno)))") }
                written += step
            }
        }
    }
}

/// The image `race`, `demo` and `bench` format for their runs. Something already at `path` is
/// refused unless `force` (or `path` is the command's own default scratch path); removed
/// afterwards only when the command created it, never a file or device that was there before.
final class ScratchImage {
    let path: String
    /// Something was at `path` before the command and `--force` took it: formatted, never removed.
    private let preexisting: Bool
    /// Something was at `path` (the default path's leftover included): format it whatever it holds.
    private let existed: Bool
    /// A run left the image in place (threads stuck in a deadlock still hold it): the next run
    /// formats it again.
    private var leftBehind = false

    /// Checks `path` for `daxlab <command>`.
    /// - Throws: `CommandFailure` (exit 2) when something is at `path` and neither `force` is set
    ///   nor `path` is `defaultPath`.
    init(_ path: String, command: String, force: Bool, defaultPath: String) throws {
        var status = stat()
        let exists = lstat(path, &status) == 0
        if exists && !force && path != defaultPath {
            let what = status.st_mode & S_IFMT == S_IFREG ? "a file of \(status.st_size) bytes" : "something that is not a file"
            throw CommandFailure(
                "\(path): exists (\(what)); daxlab \(command) formats its image (use --force to overwrite it)")
        }
        self.path = path
        self.existed = exists
        self.preexisting = exists && path != defaultPath
    }

    /// The `force` to format with: an image that was absent is formatted only while it holds
    /// nothing, so a file that appeared since the check is refused, not overwritten.
    var formatForce: Bool { self.existed || self.leftBehind }

    /// A device-dax device (formatted whole whatever the size asked; never removed).
    var isDevice: Bool {
        var status = stat()
        return stat(self.path, &status) == 0 && status.st_mode & S_IFMT == S_IFCHR
    }

    /// Whether `remove` removes the image: this command created it, and it is no device.
    var removable: Bool { !self.preexisting && !self.isDevice }

    /// After a run: removes the image when this command created it.
    func remove() {
        guard self.removable else { return }
        unlink(self.path)
    }

    /// After a run that could not release the image: keeps it, and lets the next run format it.
    func leave() { self.leftBehind = true }
}

/// A child process started with posix_spawn in daxlab's own process group (so a Ctrl-C reaches
/// it too), its stdout discarded and its stderr collected.
struct Subprocess {
    let pid: pid_t
    private let errors: Int32

    /// Starts `executable` with `arguments` (argv[0] included).
    /// - Throws: `CommandFailure` with the errno when it cannot be started.
    init(_ executable: String, _ arguments: [String]) throws {
        var pipe: [Int32] = [0, 0]
        guard Glibc.pipe(&pipe) == 0 else {
            throw CommandFailure("cannot start \(executable): pipe: \(String(cString: strerror(errno)))")
        }
        _ = fcntl(pipe[0], F_SETFD, FD_CLOEXEC)
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, pipe[1], STDERR_FILENO)
        var argv = arguments.map { strdup($0) }
        defer { for pointer in argv { free(pointer) } }
        argv.append(nil)
        var pid = pid_t()
        let status = posix_spawn(&pid, executable, &actions, nil, argv, environ)
        close(pipe[1])
        guard status == 0 else {
            close(pipe[0])
            throw CommandFailure("cannot start \(executable): \(String(cString: strerror(status)))")
        }
        self.pid = pid
        self.errors = pipe[0]
    }

    /// Waits for the child. - Returns: its exit status, or 128 + the signal that killed it, and
    /// what it wrote on stderr.
    func wait() -> (status: Int32, errors: String) {
        var collected: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: pageSize)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(self.errors, $0.baseAddress!, $0.count) }
            if count < 0, errno == EINTR { continue }
            if count <= 0 { break }
            collected += chunk[..<count]
        }
        close(self.errors)
        var status: Int32 = 0
        while waitpid(self.pid, &status, 0) < 0, errno == EINTR {}
        let signalled = status & 0x7F
        let code = signalled == 0 ? (status >> 8) & 0xFF : 128 + signalled
        return (code, String(decoding: collected, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
    }
}
