/// What kind of storage backs a mapping. Decides nothing by itself; it is what `daxlab info`
/// reports and what tests use to know which paths they exercised.
public enum Medium: String, Sendable, Codable, CaseIterable, CustomStringConvertible {
    /// A device-dax character device (`/dev/daxX.Y`): persistent memory with no file system and
    /// no page cache; mapped whole.
    case deviceDAX = "devdax"
    /// A regular file on a file system mounted with `-o dax` (the file is in DAX state): loads and
    /// stores reach the media directly.
    case fsDAX = "fsdax"
    /// A regular file on tmpfs (`/dev/shm`): ordinary RAM, daxlab's emulated pmem.
    case tmpfs = "tmpfs"
    /// A regular file on any other file system: page cache, made durable with msync.
    case file = "file"

    public var description: String {
        switch self {
        case .deviceDAX: "device-dax character device"
        case .fsDAX: "file on an fs-dax mount"
        case .tmpfs: "tmpfs file (emulated pmem)"
        case .file: "plain file (page cache)"
        }
    }
}
