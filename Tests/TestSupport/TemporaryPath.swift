import Foundation

/// A unique path under a directory (tmpfs `/dev/shm` by default), removed, with anything created
/// under it, when `body` returns or throws.
public func withTemporaryPath<Result>(
    _ name: String = "daxlab-test", in directory: String = "/dev/shm",
    _ body: (String) throws -> Result
) throws -> Result {
    let path = "\(directory)/\(name)-\(getpid())-\(UUID().uuidString.prefix(8))"
    defer { try? FileManager.default.removeItem(atPath: path) }
    return try body(path)
}
