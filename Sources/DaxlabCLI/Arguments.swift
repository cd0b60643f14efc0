import ArgumentParser
import DaxFS

/// The command line as bytes. Swift's `CommandLine.arguments` decodes each argument as UTF-8
/// and turns invalid bytes into U+FFFD, which would merge distinct file names. daxlab reads the
/// raw argv instead and keeps every byte: a byte that is not part of valid UTF-8 becomes the
/// private-use scalar U+10FF00 + byte, which no valid argument produces (an argument holding
/// such a scalar has its bytes escaped the same way). `FileName(argument:)` turns them back.
enum RawArguments {
    static let escapeBase: UInt32 = 0x10_FF00

    /// The arguments after the program name, each decoded without loss.
    static func current() -> [String] {
        (1..<Int(CommandLine.argc)).map { index in
            guard let pointer = CommandLine.unsafeArgv[index] else { return "" }
            var length = 0
            while pointer[length] != 0 { length += 1 }
            return Self.decode(UnsafeBufferPointer(start: UnsafeRawPointer(pointer).assumingMemoryBound(to: UInt8.self), count: length))
        }
    }

    /// `bytes` as a String: valid UTF-8 as it is, anything else escaped byte by byte.
    static func decode<Bytes: Collection<UInt8>>(_ bytes: Bytes) -> String {
        let array = Array(bytes)
        if let text = String(validating: array, as: UTF8.self),
            !text.unicodeScalars.contains(where: { $0.value >= Self.escapeBase && $0.value <= Self.escapeBase + 0xFF })
        {
            return text
        }
        var result = String.UnicodeScalarView()
        var index = 0
        while index < array.count {
            let byte = array[index]
            let length = byte < 0x80 ? 1 : byte >= 0xF0 ? 4 : byte >= 0xE0 ? 3 : byte >= 0xC0 ? 2 : 0
            if length > 0, index + length <= array.count,
                let text = String(validating: array[index..<(index + length)], as: UTF8.self),
                let scalar = text.unicodeScalars.first,
                !(scalar.value >= Self.escapeBase && scalar.value <= Self.escapeBase + 0xFF)
            {
                result.append(scalar)
                index += length
            } else {
                result.append(Unicode.Scalar(Self.escapeBase + UInt32(byte))!)
                index += 1
            }
        }
        return String(result)
    }

    /// The bytes an argument stood for (the inverse of `decode`).
    static func bytes(of argument: String) -> [UInt8] {
        var bytes: [UInt8] = []
        for scalar in argument.unicodeScalars {
            if scalar.value >= Self.escapeBase, scalar.value <= Self.escapeBase + 0xFF {
                bytes.append(UInt8(scalar.value - Self.escapeBase))
            } else {
                bytes.append(contentsOf: String(scalar).utf8)
            }
        }
        return bytes
    }
}

extension FileName: ExpressibleByArgument {
    /// A file name argument: its exact bytes (see `RawArguments`); any name is accepted here and
    /// the file system says whether it can hold it.
    public init?(argument: String) {
        self.init(bytes: RawArguments.bytes(of: argument))
    }

    public var defaultValueDescription: String { self.escaped }
}
