import DaxlabSupport
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A file a command writes its results into (`bench --json` and `--plot`, `demo --report`).
///
/// Checked before the command spends minutes measuring, so a mistyped directory costs nothing;
/// and a regular file is replaced whole or not at all: the bytes go to a temporary file in the
/// same directory, which is renamed over the old one only once they are all written, so a
/// failed write (a full disk, a file-size limit) leaves the earlier report as it was. Anything
/// that is not a regular file (`/dev/stdout`, a pipe, a symbolic link) is written in place, as
/// the user named it.
struct OutputFile {
    let path: String

    init(_ path: String) { self.path = path }

    /// Fails, in one line, when the file cannot be written: a directory, a file without write
    /// permission, a missing or unwritable directory. Creates and changes nothing.
    func checkWritable() throws {
        guard !self.path.isEmpty else { throw self.failure("an empty path") }
        var info = stat()
        if stat(self.path, &info) == 0 {  // (through a symbolic link: where the bytes will go)
            if info.st_mode & S_IFMT == S_IFDIR { throw self.failure("it is a directory") }
            guard access(self.path, W_OK) == 0 else { throw self.failure(errno) }
            return
        }
        guard errno == ENOENT else { throw self.failure(errno) }
        if lstat(self.path, &info) == 0 { return }  // a dangling link: its write makes the target, or says why not
        let directory = PathComponents.directory(of: self.path)
        guard stat(directory, &info) == 0 else { throw self.failure("\(directory): \(String(cString: strerror(errno)))") }
        guard info.st_mode & S_IFMT == S_IFDIR else { throw self.failure("\(directory) is not a directory") }
        guard access(directory, W_OK | X_OK) == 0 else { throw self.failure("\(directory): \(String(cString: strerror(errno)))") }
    }

    /// Writes `bytes` as the file's whole content (see the type's note).
    func write(_ bytes: [UInt8]) throws {
        guard !self.path.isEmpty else { throw self.failure("an empty path") }
        var info = stat()
        let exists = lstat(self.path, &info) == 0
        guard !exists || info.st_mode & S_IFMT == S_IFREG else {
            try self.writeInPlace(bytes)
            return
        }
        let temporary = "\(PathComponents.directory(of: self.path))/.\(PathComponents.name(of: self.path)).daxlab-\(getpid()).tmp"
        unlink(temporary)  // (one left by a killed process that had this process's number)
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw self.failure(errno) }
        do {
            defer { close(fd) }
            try self.writeAll(fd, bytes)
            guard fsync(fd) == 0 else { throw self.failure(errno) }
        } catch {
            unlink(temporary)
            throw error
        }
        guard rename(temporary, self.path) == 0 else {
            let failure = self.failure(errno)
            unlink(temporary)
            throw failure
        }
    }

    private func writeInPlace(_ bytes: [UInt8]) throws {
        let fd = open(self.path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw self.failure(errno) }
        defer { close(fd) }
        try self.writeAll(fd, bytes)
    }

    private func writeAll(_ fd: Int32, _ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let written = bytes[offset...].withUnsafeBytes { Glibc.write(fd, $0.baseAddress!, $0.count) }
            if written < 0, errno == EINTR { continue }
            guard written > 0 else { throw self.failure(errno) }
            offset += written
        }
    }

    private func failure(_ error: Int32) -> CommandFailure { self.failure(String(cString: strerror(error))) }

    private func failure(_ reason: String) -> CommandFailure { CommandFailure("\(self.path): cannot write: \(reason)") }
}
