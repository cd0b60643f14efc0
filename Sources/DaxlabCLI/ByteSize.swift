import ArgumentParser

/// A size argument: a byte count with an optional binary suffix, `4096`, `64K`, `256M`, `1G`
/// (also `256MiB`, `256MB`; K, M, G, T are powers of 1024).
public struct ByteSize: ExpressibleByArgument, Sendable, Equatable, CustomStringConvertible {
    public var bytes: Int

    public init(bytes: Int) { self.bytes = bytes }

    public init?(argument: String) {
        guard let bytes = Self.parse(argument) else { return nil }
        self.bytes = bytes
    }

    /// The byte count `text` names, or nil when it is not a non-negative size that fits in an Int.
    public static func parse(_ text: String) -> Int? {
        var digits = Substring(text.trimmingSpaces())
        var suffix = ""
        while let last = digits.last, !last.isNumber {
            suffix.insert(last, at: suffix.startIndex)
            digits.removeLast()
        }
        guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && $0.isNumber }), let count = Int(digits) else {
            return nil
        }
        let shift: Int
        switch suffix.uppercased() {
        case "", "B": shift = 0
        case "K", "KB", "KIB": shift = 10
        case "M", "MB", "MIB": shift = 20
        case "G", "GB", "GIB": shift = 30
        case "T", "TB", "TIB": shift = 40
        default: return nil
        }
        let (bytes, overflow) = count.multipliedReportingOverflow(by: 1 << shift)
        return overflow ? nil : bytes
    }

    public var description: String { ByteFormat.binary(self.bytes) }

    public static var defaultCompletionKind: CompletionKind { .default }
}

extension String {
    fileprivate func trimmingSpaces() -> String {
        String(self.drop(while: \.isWhitespace).reversed().drop(while: \.isWhitespace).reversed())
    }
}
