import DaxFS
import DaxlabSupport

/// A deterministic mixed workload and the in-memory model of what it leaves, for the crash
/// campaign: a child process runs the workload on an image and is killed at a chosen persist
/// point; the parent replays the same operations on the model and checks the recovered image
/// against it.
public struct CrashWorkload: Sendable {
    /// One file-system operation.
    public enum Operation: Sendable, Equatable {
        case create(String)
        case write(String, offset: Int, count: Int, fill: UInt64)
        case truncate(String, size: Int)
        case punch(String, offset: Int, length: Int)
        case fallocate(String, offset: Int, length: Int)
        case rename(String, to: String)
        case unlink(String)

        /// The names whose content the operation may change.
        public var names: [String] {
            switch self {
            case .create(let name), .write(let name, _, _, _), .truncate(let name, _), .punch(let name, _, _),
                .fallocate(let name, _, _), .unlink(let name):
                [name]
            case .rename(let source, let target): [source, target]
            }
        }
    }

    /// The files the workload expects: name to content.
    public typealias Model = [String: [UInt8]]

    private var generator: SplitMix64
    public private(set) var model: Model = [:]

    public init(seed: UInt64) { self.generator = SplitMix64(seed: seed) }

    private static let names = (0..<10).map { "file-\($0)" }
    private static let page = 4096

    /// The next operation, chosen from the model's state (not applied yet).
    public mutating func next() -> Operation {
        let existing = self.model.keys.sorted()
        func pick() -> String { existing[Int(self.generator.next() % UInt64(existing.count))] }
        let roll = existing.isEmpty ? 0 : self.generator.next() % 100
        switch roll {
        case 0..<10:
            let free = Self.names.filter { self.model[$0] == nil }
            if free.isEmpty { return .unlink(pick()) }
            return .create(free[Int(self.generator.next() % UInt64(free.count))])
        case 10..<50:
            let offset = Int(self.generator.next() % UInt64(48 * Self.page))
            let count = 1 + Int(self.generator.next() % UInt64(12 * Self.page))
            return .write(pick(), offset: offset, count: count, fill: self.generator.next())
        case 50..<62:
            return .truncate(pick(), size: Int(self.generator.next() % UInt64(56 * Self.page)))
        case 62..<74:
            let offset = Int(self.generator.next() % UInt64(48 * Self.page))
            return .punch(pick(), offset: offset, length: 1 + Int(self.generator.next() % UInt64(16 * Self.page)))
        case 74..<82:
            let offset = Int(self.generator.next() % UInt64(40 * Self.page))
            return .fallocate(pick(), offset: offset, length: 1 + Int(self.generator.next() % UInt64(8 * Self.page)))
        case 82..<91:
            return .rename(pick(), to: Self.names[Int(self.generator.next() % UInt64(Self.names.count))])
        default:
            return .unlink(pick())
        }
    }

    /// The bytes a write operation writes.
    public static func data(count: Int, fill: UInt64) -> [UInt8] {
        var generator = SplitMix64(seed: fill)
        var bytes = [UInt8](repeating: 0, count: count)
        for index in stride(from: 0, to: count, by: 8) {
            var word = generator.next()
            for byte in index..<min(index + 8, count) {
                bytes[byte] = UInt8(truncatingIfNeeded: word)
                word >>= 8
            }
        }
        return bytes
    }

    /// Applies `operation` to the model, as the file system applies it to the image.
    public mutating func apply(_ operation: Operation) {
        switch operation {
        case .create(let name):
            self.model[name] = []
        case .write(let name, let offset, let count, let fill):
            var content = self.model[name]!
            if content.count < offset + count { content += [UInt8](repeating: 0, count: offset + count - content.count) }
            content.replaceSubrange(offset..<(offset + count), with: Self.data(count: count, fill: fill))
            self.model[name] = content
        case .truncate(let name, let size):
            var content = self.model[name]!
            if size < content.count { content.removeSubrange(size...) } else {
                content += [UInt8](repeating: 0, count: size - content.count)
            }
            self.model[name] = content
        case .punch(let name, let offset, let length):
            var content = self.model[name]!
            let end = min(offset + length, content.count)
            if end > offset {
                content.replaceSubrange(offset..<end, with: [UInt8](repeating: 0, count: end - offset))
            }
            self.model[name] = content
        case .fallocate(let name, let offset, let length):
            var content = self.model[name]!
            if content.count < offset + length {
                content += [UInt8](repeating: 0, count: offset + length - content.count)
            }
            self.model[name] = content
        case .rename(let source, let target):
            guard source != target else { return }
            self.model[target] = self.model.removeValue(forKey: source)
        case .unlink(let name):
            self.model.removeValue(forKey: name)
        }
    }

    /// Performs `operation` on a mounted file system.
    public static func perform(_ operation: Operation, on fs: FileSystem) throws(FSError) {
        switch operation {
        case .create(let name):
            try fs.create(name)
        case .write(let name, let offset, let count, let fill):
            try fs.write(fs.lookup(name), offset: offset, bytes: Self.data(count: count, fill: fill))
        case .truncate(let name, let size):
            try fs.truncate(fs.lookup(name), size: size)
        case .punch(let name, let offset, let length):
            try fs.punchHole(fs.lookup(name), offset: offset, length: length)
        case .fallocate(let name, let offset, let length):
            try fs.fallocate(fs.lookup(name), offset: offset, length: length)
        case .rename(let source, let target):
            try fs.rename(source, to: target)
        case .unlink(let name):
            try fs.unlink(name)
        }
    }

    /// Checks a recovered, mounted image against the model after `completed` operations, with
    /// `inFlight` the operation the crash interrupted (its files may hold either state).
    /// - Returns: what differs, empty when the image matches.
    public static func compare(
        _ fs: FileSystem, expected: Model, inFlight: Operation?
    ) -> [String] {
        var differences: [String] = []
        let loose = Set(inFlight?.names ?? [])
        let present = Dictionary(uniqueKeysWithValues: fs.list().map { ($0.name, $0) })
        for (name, content) in expected where !loose.contains(name) {
            guard let stat = present[name] else {
                differences.append("\(name): missing")
                continue
            }
            guard let actual = try? fs.read(stat.id, offset: 0, count: stat.size + 1), actual == content else {
                differences.append("\(name): content differs (size \(stat.size), expected \(content.count))")
                continue
            }
        }
        for name in present.keys where expected[name] == nil && !loose.contains(name) {
            differences.append("\(name): present but should not exist")
        }
        return differences
    }
}
