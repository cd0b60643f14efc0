#if canImport(Glibc)
import Glibc
#endif

/// The kernel's own view of one mapping: the `VmFlags` line of `/proc/self/smaps`.
///
/// This is how daxlab knows, rather than guesses, what a mapping got: `sf` (VM_SYNC) says the
/// kernel grants synchronous faults (MAP_SYNC), `sh` that it is shared, `dd`/`hg` and so on as in
/// proc(5).
enum KernelMappingFlags {
    /// The two-letter flags of the mapping that starts at `address`, or nil when
    /// `/proc/self/smaps` cannot be read or has no mapping starting there.
    static func flags(ofMappingAt address: UnsafeRawPointer) -> [String]? {
        guard let file = fopen("/proc/self/smaps", "r") else { return nil }
        defer { fclose(file) }
        let start = String(UInt(bitPattern: address), radix: 16) + "-"
        var line: UnsafeMutablePointer<CChar>? = nil
        var capacity = 0
        defer { free(line) }
        var inMapping = false
        while getline(&line, &capacity, file) > 0, let line {
            let text = String(cString: line)
            // A mapping's header is "start-end perms offset dev inode [path]"; its fields follow.
            if let first = text.utf8.first, Self.isHexDigit(first), text.contains("-") {
                inMapping = Self.hasPrefix(text, start)
                continue
            }
            if inMapping && text.hasPrefix("VmFlags:") {
                return text.dropFirst("VmFlags:".count).split(whereSeparator: { $0 == " " || $0 == "\n" })
                    .map(String.init)
            }
        }
        return nil
    }

    /// Whether `text` begins with `prefix`, where smaps may pad the address with leading zeros.
    private static func hasPrefix(_ text: String, _ prefix: String) -> Bool {
        let trimmed = text.drop(while: { $0 == "0" })
        return trimmed.hasPrefix(prefix)
    }

    private static func isHexDigit(_ byte: UInt8) -> Bool {
        (byte >= 0x30 && byte <= 0x39) || (byte >= 0x61 && byte <= 0x66)
    }
}
