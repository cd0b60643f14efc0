/// A file's name: the exact bytes it was given, as Linux file systems store names. Two names are
/// the same file only when their bytes are equal: `café` written with U+00E9 and with `e` +
/// U+0301 are two files, and bytes that are not UTF-8 are kept as they are.
///
/// A name is 1 to 255 bytes, holds no `/` and no NUL, and is not `.` or `..` (`validate`).
public struct FileName: Hashable, Comparable, Sendable, CustomStringConvertible,
    ExpressibleByStringLiteral, ExpressibleByStringInterpolation
{
    public let bytes: [UInt8]

    /// The UTF-8 bytes of `string`, exactly (no normalization).
    public init(_ string: String) { self.bytes = Array(string.utf8) }

    public init(bytes: [UInt8]) { self.bytes = bytes }

    public init(stringLiteral value: String) { self.init(value) }

    /// The name as text, when its bytes are valid UTF-8.
    public var string: String? { String(validating: self.bytes, as: UTF8.self) }

    /// Byte order, as `ls` sorts in the C locale.
    public static func < (lhs: FileName, rhs: FileName) -> Bool { lhs.bytes.lexicographicallyPrecedes(rhs.bytes) }

    /// The longest name the format holds, in bytes.
    public static let maximumLength = 255

    /// Why the format cannot hold this name, or nil when it can.
    public var problem: String? {
        if self.bytes.isEmpty { return "a name is 1 to 255 bytes; this one is empty" }
        if self.bytes.count > Self.maximumLength {
            return "a name is at most \(Self.maximumLength) bytes; this one is \(self.bytes.count)"
        }
        if self.bytes.contains(0) { return "a name cannot hold a NUL byte" }
        if self.bytes.contains(UInt8(ascii: "/")) { return "a name cannot hold '/' (the directory is flat)" }
        if self.bytes == [UInt8(ascii: ".")] || self.bytes == [UInt8(ascii: "."), UInt8(ascii: ".")] {
            return "'.' and '..' are not names"
        }
        return nil
    }

    /// The name for a person, escaped as `ls -b` does: backslash, space and every byte that is a
    /// control character or not part of valid UTF-8 become `\\`, `\ `, `\n`, `\t`, ... or `\ooo`,
    /// so a name can neither inject terminal escapes nor fake a line.
    public var escaped: String {
        var result = ""
        var index = 0
        let bytes = self.bytes
        while index < bytes.count {
            let byte = bytes[index]
            if byte < 0x80 {
                switch byte {
                case UInt8(ascii: "\\"): result += "\\\\"
                case UInt8(ascii: " "): result += "\\ "
                case 0x07: result += "\\a"
                case 0x08: result += "\\b"
                case 0x09: result += "\\t"
                case 0x0A: result += "\\n"
                case 0x0B: result += "\\v"
                case 0x0C: result += "\\f"
                case 0x0D: result += "\\r"
                case 0..<0x20, 0x7F: result += Self.octal(byte)
                default: result.unicodeScalars.append(Unicode.Scalar(byte))
                }
                index += 1
                continue
            }
            // A multi-byte sequence: kept when it is valid UTF-8 and not a C1 control character.
            let length = byte >= 0xF0 ? 4 : byte >= 0xE0 ? 3 : byte >= 0xC0 ? 2 : 1
            if length > 1, index + length <= bytes.count,
                let text = String(validating: bytes[index..<(index + length)], as: UTF8.self),
                let scalar = text.unicodeScalars.first, !(0x80...0x9F).contains(scalar.value)
            {
                result += text
                index += length
            } else {
                result += Self.octal(byte)
                index += 1
            }
        }
        return result
    }

    private static func octal(_ byte: UInt8) -> String {
        let digits = String(byte, radix: 8)
        return "\\" + String(repeating: "0", count: 3 - digits.count) + digits
    }

    /// The bytes as lowercase hex: exact, for machine-readable output.
    public var hex: String { self.bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined() }

    public var description: String { self.escaped }
}
