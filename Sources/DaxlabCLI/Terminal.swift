import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Output helpers shared by the commands: one-line errors on stderr, JSON on stdout.
enum Terminal {
    /// Prints `daxlab: error: <message>` on stderr, on one line whatever the message holds (a path
    /// may hold a newline): control characters are written as escapes.
    static func error(_ message: String) {
        writeStandardError("daxlab: error: \(Self.oneLine(message))\n")
    }

    /// `text` with its control characters written as escapes (`\n`, `\r`, `\t`, `\xNN`), so that
    /// one line shows it whole.
    static func oneLine(_ text: String) -> String {
        guard text.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) else { return text }
        var line = ""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\n": line += "\\n"
            case "\r": line += "\\r"
            case "\t": line += "\\t"
            case _ where scalar.value < 0x20 || scalar.value == 0x7F:
                line += "\\x" + String(scalar.value, radix: 16, uppercase: true).leftPadded(to: 2)
            default: line.unicodeScalars.append(scalar)
            }
        }
        return line
    }

    static func writeStandardError(_ text: String) {
        var text = text
        text.withUTF8 { bytes in
            var offset = 0
            while offset < bytes.count {
                let written = write(STDERR_FILENO, bytes.baseAddress! + offset, bytes.count - offset)
                if written <= 0 { break }
                offset += written
            }
        }
    }

    /// Prints `value` as one JSON document with snake_case keys.
    static func printJSON<Value: Encodable>(_ value: Value) throws {
        Output.print(String(decoding: try Self.json(value), as: UTF8.self))
    }

    /// `value` as the commands print JSON: snake-case keys, sorted, indented.
    static func json<Value: Encodable>(_ value: Value) throws -> Data {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return try encoder.encode(value)
    }

    /// Whether stdout is a terminal (live progress lines) or a pipe or file (plain output).
    static var standardOutputIsTerminal: Bool { isatty(STDOUT_FILENO) == 1 }
}

/// Human-readable byte counts: `268435456 (256 MiB)`.
enum ByteFormat {
    static func binary(_ bytes: UInt64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var value = Double(bytes)
        var unit = 0
        while value >= 1024, unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        if unit == 0 { return "\(bytes) B" }
        let rounded = value.rounded()
        return rounded == value ? "\(Int(rounded)) \(units[unit])" : String(format: "%.1f %@", value, units[unit])
    }

    static func binary(_ bytes: Int) -> String { self.binary(UInt64(max(0, bytes))) }
}

extension String {
    /// Padded on the left with zeros to `width` characters.
    fileprivate func leftPadded(to width: Int) -> String {
        String(repeating: "0", count: max(0, width - self.count)) + self
    }
}
