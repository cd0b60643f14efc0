import DaxFS
import DaxlabSupport
import Pmem

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
        /// fallocate(FALLOC_FL_ZERO_RANGE), growing the file unless `keepSize`.
        case zeroRange(String, offset: Int, length: Int, keepSize: Bool)
        /// fallocate(FALLOC_FL_COLLAPSE_RANGE) and (FALLOC_FL_INSERT_RANGE), block-aligned.
        case collapseRange(String, offset: Int, length: Int)
        case insertRange(String, offset: Int, length: Int)
        case fallocate(String, offset: Int, length: Int)
        case rename(String, to: String)
        case unlink(String)
        /// A whole new content for a file, written under an unnamed inode and published over the
        /// name (what `daxlab write` does): all or nothing.
        case replace(String, count: Int, fill: UInt64)
        /// Write faults on `count` pages from `page` (inside the file), as the DAX layer takes
        /// them: each maps a zeroed block into a hole, most from the file's reserved blocks
        /// without a transaction of their own. The content does not change; each page that
        /// returned must still be mapped after a crash.
        case fault(String, page: Int, count: Int)
        /// `times` cycles of a write fault, a one-page write and a punch on one page past the
        /// direct pages (the alloc.block pattern), then a last fault. More cycles than a
        /// reservation holds, so the punches' blocks, which still hold the written bytes, are
        /// scrubbed and faulted in again: the page ends mapped and must read zeros.
        case churn(String, page: Int, times: Int, fill: UInt64)

        /// The names whose content the operation may change.
        public var names: [String] {
            switch self {
            case .create(let name), .write(let name, _, _, _), .truncate(let name, _), .punch(let name, _, _),
                .zeroRange(let name, _, _, _), .collapseRange(let name, _, _), .insertRange(let name, _, _),
                .fallocate(let name, _, _), .unlink(let name), .replace(let name, _, _), .fault(let name, _, _),
                .churn(let name, _, _, _):
                [name]
            case .rename(let source, let target): [source, target]
            }
        }

        /// Whether a crash must leave the operation not started or complete: every operation but
        /// the plain data writes (`write`, `fallocate`), which may land in part, as pwrite(2)'s do.
        public var isAtomic: Bool {
            switch self {
            case .write, .fallocate, .fault, .churn: false
            default: true
            }
        }
    }

    /// The files the workload expects: name to content.
    public typealias Model = [String: [UInt8]]

    private var generator: SplitMix64
    public internal(set) var model: Model = [:]
    /// Pages mapped by a completed `fault` since the last other operation on their file: a
    /// recovered image must still map every one.
    public internal(set) var faulted: [String: Set<Int>] = [:]

    public init(seed: UInt64) { self.generator = SplitMix64(seed: seed) }

    private static let names = (0..<10).map { "file-\($0)" }

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
        case 40..<44:
            // Collapse needs a block-aligned range ending before the end of file; insert, an
            // offset before it. A file too small for one gets a write instead.
            let name = pick()
            let pages = self.model[name]!.count / pageSize
            let collapse = self.generator.next() % 2 == 0
            if collapse, pages >= 2 {
                let offset = Int(self.generator.next() % UInt64(pages - 1))
                let length = 1 + Int(self.generator.next() % UInt64(pages - 1 - offset))
                return .collapseRange(name, offset: offset * pageSize, length: length * pageSize)
            }
            if !collapse, pages >= 1, pages < 64 {
                let offset = Int(self.generator.next() % UInt64(pages))
                return .insertRange(name, offset: offset * pageSize, length: (1 + Int(self.generator.next() % 8)) * pageSize)
            }
            return .write(name, offset: 0, count: 1 + Int(self.generator.next() % UInt64(4 * pageSize)), fill: self.generator.next())
        case 44..<50:
            let offset = Int(self.generator.next() % UInt64(52 * pageSize))
            let length = 1 + Int(self.generator.next() % UInt64(16 * pageSize))
            return .zeroRange(pick(), offset: offset, length: length, keepSize: self.generator.next() % 2 == 0)
        case 32..<40:
            let name = pick()
            let pages = self.model[name]!.count / pageSize
            guard pages > 0 else { return .truncate(name, size: Int(16 + self.generator.next() % 40) * pageSize) }
            // Past the direct pages where the file has them: the reserved-block path.
            let first = pages > 12 ? 12 : 0
            let page = first + Int(self.generator.next() % UInt64(pages - first))
            if roll == 39, first == 12 {
                return .churn(name, page: page, times: FileSystem.reservationSize + 1, fill: self.generator.next())
            }
            return .fault(name, page: page, count: 1 + Int(self.generator.next() % UInt64(min(8, pages - page))))
        case 10..<32:
            let offset = Int(self.generator.next() % UInt64(48 * pageSize))
            let count = 1 + Int(self.generator.next() % UInt64(12 * pageSize))
            return .write(pick(), offset: offset, count: count, fill: self.generator.next())
        case 50..<62:
            return .truncate(pick(), size: Int(self.generator.next() % UInt64(56 * pageSize)))
        case 62..<74:
            if let (name, pages) = self.faulted.min(by: { $0.key < $1.key }), self.generator.next() % 2 == 0 {
                // One page a fault mapped: a reserved block, whose punch is a persisted pointer
                // with no transaction.
                let sorted = pages.sorted()
                let page = sorted[Int(self.generator.next() % UInt64(sorted.count))]
                return .punch(name, offset: page * pageSize, length: pageSize)
            }
            let name = pick()
            let pages = self.model[name]!.count / pageSize
            if pages > 12, self.generator.next() % 3 == 0 {
                let page = 12 + Int(self.generator.next() % UInt64(pages - 12))
                return .punch(name, offset: page * pageSize, length: pageSize)
            }
            let offset = Int(self.generator.next() % UInt64(48 * pageSize))
            return .punch(name, offset: offset, length: 1 + Int(self.generator.next() % UInt64(16 * pageSize)))
        case 74..<82:
            let offset = Int(self.generator.next() % UInt64(40 * pageSize))
            return .fallocate(pick(), offset: offset, length: 1 + Int(self.generator.next() % UInt64(8 * pageSize)))
        case 82..<89:
            return .rename(pick(), to: Self.names[Int(self.generator.next() % UInt64(Self.names.count))])
        case 89..<94:
            let target = Self.names[Int(self.generator.next() % UInt64(Self.names.count))]
            return .replace(target, count: Int(self.generator.next() % UInt64(20 * pageSize)), fill: self.generator.next())
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
        if case .fault(let name, let page, let count) = operation {
            self.faulted[name, default: []].formUnion(page..<(page + count))
            return  // holes and zeroed blocks read alike
        }
        if case .churn(let name, let page, _, _) = operation {
            self.faulted[name, default: []].insert(page)
            self.model[name]!.replaceSubrange(
                page * pageSize..<((page + 1) * pageSize), with: [UInt8](repeating: 0, count: pageSize))
            return
        }
        for name in operation.names { self.faulted.removeValue(forKey: name) }
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
        case .collapseRange(let name, let offset, let length):
            self.model[name]!.removeSubrange(offset..<(offset + length))
        case .insertRange(let name, let offset, let length):
            self.model[name]!.insert(contentsOf: [UInt8](repeating: 0, count: length), at: offset)
        case .zeroRange(let name, let offset, let length, let keepSize):
            var content = self.model[name]!
            let newSize = keepSize ? content.count : max(content.count, offset + length)
            if content.count < newSize { content += [UInt8](repeating: 0, count: newSize - content.count) }
            let end = min(offset + length, content.count)
            if end > offset { content.replaceSubrange(offset..<end, with: [UInt8](repeating: 0, count: end - offset)) }
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
        case .replace(let name, let count, let fill):
            self.model[name] = Self.data(count: count, fill: fill)
        case .fault, .churn:
            break
        }
    }

    /// Performs `operation` on a mounted file system.
    public static func perform(_ operation: Operation, on fs: FileSystem) throws(FSError) {
        switch operation {
        case .create(let name):
            try fs.create(FileName(name))
        case .write(let name, let offset, let count, let fill):
            try fs.write(fs.lookup(FileName(name)), offset: offset, bytes: Self.data(count: count, fill: fill))
        case .truncate(let name, let size):
            try fs.truncate(fs.lookup(FileName(name)), size: size)
        case .punch(let name, let offset, let length):
            try fs.punchHole(fs.lookup(FileName(name)), offset: offset, length: length)
        case .collapseRange(let name, let offset, let length):
            try fs.collapseRange(fs.lookup(FileName(name)), offset: offset, length: length)
        case .insertRange(let name, let offset, let length):
            try fs.insertRange(fs.lookup(FileName(name)), offset: offset, length: length)
        case .zeroRange(let name, let offset, let length, let keepSize):
            try fs.zeroRange(fs.lookup(FileName(name)), offset: offset, length: length, keepSize: keepSize)
        case .fallocate(let name, let offset, let length):
            try fs.fallocate(fs.lookup(FileName(name)), offset: offset, length: length)
        case .rename(let source, let target):
            try fs.rename(FileName(source), to: FileName(target))
        case .unlink(let name):
            try fs.unlink(FileName(name))
        case .replace(let name, let count, let fill):
            let unnamed = try fs.createUnnamed()
            try fs.write(unnamed, offset: 0, bytes: Self.data(count: count, fill: fill))
            try fs.publish(unnamed, as: FileName(name))
        case .fault(let name, let page, let count):
            let id = try fs.lookup(FileName(name))
            for page in page..<(page + count) { _ = try fs.blockForFault(id, page: page, allocate: true) }
        case .churn(let name, let page, let times, let fill):
            let id = try fs.lookup(FileName(name))
            let bytes = Self.data(count: pageSize, fill: fill)
            for _ in 0..<times {
                _ = try fs.blockForFault(id, page: page, allocate: true)
                try fs.write(id, offset: page * pageSize, bytes: bytes)
                try fs.punchHole(id, offset: page * pageSize, length: pageSize)
            }
            _ = try fs.blockForFault(id, page: page, allocate: true)
        }
    }

    /// Checks a recovered, mounted image against the model after `completed` operations, with
    /// `inFlight` the operation the crash interrupted. An atomic one must be either not started
    /// or complete, over all the files it touches together; a plain data write may have landed
    /// in part, so its file is not compared.
    /// Every page in `faulted` (of a file `inFlight` does not touch) must be mapped.
    /// - Parameter before: the model before `inFlight`.
    /// - Returns: what differs, empty when the image matches.
    public static func compare(
        _ fs: FileSystem, before: Model, faulted: [String: Set<Int>] = [:], inFlight: Operation?
    ) -> [String] {
        var present: [String: [UInt8]] = [:]
        var differences: [String] = []
        for stat in fs.list() {
            guard let name = stat.name.string else {
                differences.append("\(stat.name): a name the workload never made")
                continue
            }
            guard let content = try? fs.read(stat.id, offset: 0, count: stat.size + 1) else {
                differences.append("\(name): cannot be read")
                continue
            }
            present[name] = content
        }
        let touched = Set(inFlight?.names ?? [])
        func matches(_ model: Model, _ names: Set<String>) -> Bool {
            names.allSatisfy { present[$0] == model[$0] }
        }
        for name in Set(before.keys).union(present.keys).subtracting(touched) where present[name] != before[name] {
            differences.append(
                before[name] == nil ? "\(name): present but should not exist"
                    : present[name] == nil ? "\(name): missing"
                    : "\(name): content differs (size \(present[name]!.count), expected \(before[name]!.count))")
        }
        for (name, pages) in faulted where !touched.contains(name) {
            guard let id = try? fs.lookup(FileName(name)) else { continue }  // (reported above)
            let holes = pages.filter { (try? fs.blockForFault(id, page: $0, allocate: false)) ?? 0 == 0 }
            if !holes.isEmpty {
                differences.append("\(name): pages \(holes.sorted()) were faulted in before the crash but are holes now")
            }
        }
        if let inFlight, inFlight.isAtomic {
            var after = CrashWorkload(seed: 0)
            after.model = before
            after.apply(inFlight)
            if !matches(before, touched) && !matches(after.model, touched) {
                differences.append("\(inFlight): neither not started nor complete after recovery")
            }
        }
        return differences
    }
}
