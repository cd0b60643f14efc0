#if canImport(Glibc)
import Glibc
#endif

/// The geometry of a device-dax character device, read from sysfs (`/sys/dev/char/M:m/`).
public struct DeviceDAXGeometry: Sendable, Equatable {
    /// The device's size in bytes.
    public var size: Int
    /// The device's mapping alignment in bytes (4 KiB, 2 MiB or 1 GiB).
    public var alignment: Int

    public init(size: Int, alignment: Int) {
        self.size = size
        self.alignment = alignment
    }

    /// Checks that the device can be mapped whole, and at the size asked for.
    /// - Parameters:
    ///   - requestedSize: the size the caller expects, or nil to take the device's own.
    ///   - path: the device path, for the error.
    /// - Throws: `.unalignedDevice` when the size is not a multiple of the alignment (or either is
    ///   zero), `.deviceSizeMismatch` when `requestedSize` differs from the device's size.
    public func validate(requestedSize: Int?, path: String) throws(PmemError) {
        guard self.size > 0, self.alignment > 0, self.size % self.alignment == 0 else {
            throw PmemError(
                .unalignedDevice, path: path,
                detail: "device-dax size \(self.size) is not a multiple of its alignment \(self.alignment)")
        }
        if let requestedSize, requestedSize != self.size {
            throw PmemError(
                .deviceSizeMismatch, path: path,
                detail: "device-dax is \(self.size) bytes, not \(requestedSize) (a device is always mapped whole)")
        }
    }
}

/// sysfs facts about character devices; the analogue of libpmem's `util_ddax_region_find`.
enum DeviceDAXSysfs {
    /// Whether the character device `major:minor` belongs to the dax subsystem.
    static func isDeviceDAX(major: UInt32, minor: UInt32) -> Bool {
        let link = "/sys/dev/char/\(major):\(minor)/subsystem"
        guard let target = realpath(link, nil) else { return false }
        defer { free(target) }
        let resolved = String(cString: target)
        return resolved.hasSuffix("/dax")
    }

    /// The size and alignment of the device-dax device `major:minor`, or nil when sysfs lacks them.
    static func geometry(major: UInt32, minor: UInt32) -> DeviceDAXGeometry? {
        let directory = "/sys/dev/char/\(major):\(minor)"
        guard let size = readInteger(directory + "/size") else { return nil }
        // Kernels since 5.10 give each dax device an `align`; older ones only the region's.
        let alignment = readInteger(directory + "/align") ?? readInteger(directory + "/device/align") ?? pageSize
        return DeviceDAXGeometry(size: size, alignment: alignment)
    }

    /// The first line of a sysfs attribute as a decimal or 0x-prefixed integer.
    static func readInteger(_ path: String) -> Int? {
        guard let text = readFirstLine(path) else { return nil }
        if text.hasPrefix("0x") { return Int(text.dropFirst(2), radix: 16) }
        return Int(text)
    }

    static func readFirstLine(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 256)
        let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard count > 0 else { return nil }
        let line = buffer[..<count].split(separator: UInt8(ascii: "\n")).first ?? []
        return String(decoding: line, as: UTF8.self).trimmingCharacters(in: " \t")
    }
}

extension String {
    fileprivate func trimmingCharacters(in set: String) -> String {
        let drop = Set(set)
        return String(self.drop(while: { drop.contains($0) }).reversed().drop(while: { drop.contains($0) }).reversed())
    }
}
