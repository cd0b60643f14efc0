import CShims
import DAX
import DaxFS
import Foundation
import Pmem
import Testing
import TestSupport

/// The Swift examples the documents show are compiled and run here, word for word: each lies in
/// this file between `// example: NAME` and `// end of example`, and `documentsShowTheseExamples`
/// holds every ```swift block of README.md and docs/*.md to one of them. Two differences are
/// allowed, and only these: a document's `import` lines (this file has its own), and the paths a
/// document writes as literals, which here are names of temporary paths (`documentedPaths`), so
/// the tests never touch a file of the reader's.
@Suite("The documents' Swift examples", .serialized, .timeLimit(.minutes(1)))
struct DocumentedExampleTests {
    /// A document's literal path, and the name its example uses here instead.
    static let documentedPaths = [
        "\"/dev/shm/x.pmem\"": "pmemFile",
        "\"/dev/shm/img\"": "image",
        "\"/var/tmp/tagged-blocks\"": "taggedBlocks",
    ]

    @Test("every Swift block of the README and docs/ is an example this file compiles and runs")
    func documentsShowTheseExamples() throws {
        let examples = try Self.examples()
        #expect(Set(examples.keys) == ["pmem", "file system", "dax", "kernel"], "the examples this file holds")
        var shown = 0
        for document in try Self.documents() {
            for block in try Self.swiftBlocks(of: document) {
                shown += 1
                let name = examples.first { $0.value == block }?.key
                #expect(name != nil, """
                    \((document as NSString).lastPathComponent) shows a Swift block that no test compiles; \
                    make it one of DocumentedExampleTests' examples, word for word:
                    \(block.joined(separator: "\n"))
                    """)
            }
        }
        #expect(shown >= 5, "the README's block and docs/api.md's four")
    }

    @Test("the Pmem example maps, copies, stores and persists")
    func pmem() throws {
        try withTemporaryPath("example-pmem") { pmemFile in
            let bytes = [UInt8](repeating: 0x3C, count: 4096)
            // example: pmem
            let mapping = try PmemMapping(path: pmemFile, options: .openOrCreate(size: 64 << 20))
            try bytes.withUnsafeBytes { try mapping.copy(to: 4096, from: $0.baseAddress!, count: $0.count) }
            mapping.pointer(at: 0).storeBytes(of: 42, as: UInt64.self)
            try mapping.persist(offset: 0, length: 8)       // pmem_persist on pmem, pmem_msync otherwise
            // end of example
            #expect(mapping.pointer(at: 0).load(as: UInt64.self) == 42)
            #expect(Array(UnsafeRawBufferPointer(start: mapping.pointer(at: 4096), count: 4096)) == bytes)
        }
    }

    @Test("the file system example formats, writes, punches, truncates, reads, and leaves a clean image")
    func fileSystem() throws {
        try withTemporaryPath("example-fs") { image in
            // example: file system
            _ = try FileSystem.format(path: image, size: 64 << 20)
            let fs = try FileSystem.mount(path: image)
            let id = try fs.create("data")                   // a FileID: inode number + generation
            try fs.write(id, offset: 0, bytes: [1, 2, 3])    // durable on return
            try fs.punchHole(id, offset: 0, length: 4096)
            try fs.truncate(id, size: 1 << 20)
            let bytes = try fs.read(id, offset: 0, count: 16)
            try fs.unmount()
            let report = try Fsck.run(path: image)  // report.isClean
            // end of example
            #expect(bytes == [UInt8](repeating: 0, count: 16), "the punched page reads zeros")
            #expect(report.isClean)
        }
    }

    @Test("the DAX example pins, writes as a device, truncates under sequester, and the blocks come back after the unpin")
    func dax() async {
        // The example holds a pin across calls that may throw, and a pin dropped without its
        // unpin stops the process: it runs in a child process of its own, so that a failure
        // there is this test's failure, not the end of the test run.
        await #expect(processExitsWith: .success, "the DAX example failed (its child process says why)") {
            try DocumentedExampleTests.runDAXExample()
        }
    }

    /// The DAX example and what its comments claim (`#require`: a failure ends the child with
    /// an error, which the parent sees).
    static func runDAXExample() throws {
        try withTemporaryPath("example-dax") { image in
            _ = try FileSystem.format(path: image, size: 8 << 20)
            try {
                // example: dax
                let fs = try FileSystem.mount(path: image)
                let dax = try DAXFileSystem(fs: fs, policy: .wait,   // attaches itself; the default policy
                                            times: PolicyTimes(waitTimeout: .seconds(5), leaseBreakTime: .seconds(45)))
                let file = try fs.create("buffer")
                try fs.truncate(file, size: 64 << 10)                 // 16 pages, all holes

                let space = try dax.open(file)                        // the file's address space
                let page0 = try space.fault(0, write: true)           // allocates, zeroes and maps a block
                let pins = try space.pin(0..<16, write: true, holder: nil)   // pin_user_pages(FOLL_LONGTERM)
                let data = [UInt8](repeating: 0x5A, count: 4096)
                let landed = try data.withUnsafeBytes { try pins.write(at: 3, from: $0.baseAddress!, count: 4096) }  // "DMA"
                try fs.truncate(file, size: 0, policy: .sequester)    // returns at once; busy blocks -> lost+found
                pins.unpin()                                          // the last unpin queues their release
                dax.waitForReclaims()                                 // the reclaimer thread has freed them
                // end of example
                try #require(page0.load(as: UInt64.self) == 0, "a faulted hole reads zeros")
                try #require(landed, "the device's write landed")
                try #require(fs.lostFoundBlocks == 0, "the sequestered blocks were freed after the unpin")
                try #require(dax.statistics.claimed.load(ordering: .relaxed) == 16, "the truncate sequestered all 16 pinned blocks")
                try fs.unmount()
            }()
            try #require(try Fsck.run(path: image).isClean)
        }
    }

    @Test("the kernel example: a real CPU fault through the window, and an io_uring READ_FIXED through a long-term pin",
          .enabled(if: KernelFacilities.ioUringRefusal == nil, "io_uring is refused here"))
    func kernel() throws {
        try withTemporaryPath("example-kernel") { image in
            try withTemporaryPath("example-tagged", in: "/var/tmp") { taggedBlocks in
                let tag = [UInt8](repeating: 0xC3, count: 4096)
                try #require(FileManager.default.createFile(atPath: taggedBlocks, contents: Data(tag)))
                _ = try FileSystem.format(path: image, size: 8 << 20)
                let fs = try FileSystem.mount(path: image)
                let dax = try DAXFileSystem(fs: fs, policy: .wait)
                let file = try fs.create("buffer")
                try fs.truncate(file, size: 64 << 10)
                let space = try dax.open(file)
                // example: kernel
                let window = try space.mapWindow()                    // reserved; pages map on first touch
                window.storeBytes(of: 7, toByteOffset: 5 * 4096, as: UInt8.self)   // a real fault: page 5 allocated
                let ring = try KernelRing(slots: 16)                  // io_uring with a sparse fixed-buffer table
                let kernelPins = try space.pin(0..<16, write: true, kernel: .longTerm(ring))  // FOLL_LONGTERM
                let source = open(taggedBlocks, O_RDONLY)  // what the "device" delivers
                let result = kernelPins.kernelWrite(at: 3) { address in   // inside the revocation fence
                    ring.readFixed(from: source, offset: 0, into: address, length: 4096, slot: kernelPins.kernelSlot!)
                }                                                     // bytes written, or -EFAULT once revoked
                kernelPins.unpin()                                    // unregisters the slot, then daxlab's pins
                // end of example
                close(source)
                #expect(result == 4096, "the kernel read the source into the pinned block")
                #expect(try fs.read(file, offset: 5 * 4096, count: 1) == [7], "the store through the window")
                #expect(try fs.read(file, offset: 3 * 4096, count: 4096) == tag, "the kernel's bytes")
                try fs.unmount()
            }
        }
    }

    // MARK: Reading the documents and this file

    /// The package's root, from this file's place in it.
    private static var root: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    }

    private static func documents() throws -> [String] {
        let docs = root.appendingPathComponent("docs")
        let names = try FileManager.default.contentsOfDirectory(atPath: docs.path).filter { $0.hasSuffix(".md") }.sorted()
        return [root.appendingPathComponent("README.md").path] + names.map { docs.appendingPathComponent($0).path }
    }

    /// The ```swift blocks of a document, each as its lines without `import`s, trailing spaces
    /// and blank lines at either end, the documented paths named as here.
    private static func swiftBlocks(of document: String) throws -> [[String]] {
        let lines = try String(contentsOfFile: document, encoding: .utf8).components(separatedBy: "\n")
        var blocks: [[String]] = []
        var current: [String]?
        for line in lines {
            if current == nil {
                if line.trimmingCharacters(in: .whitespaces) == "```swift" { current = [] }
            } else if line.trimmingCharacters(in: .whitespaces) == "```" {
                blocks.append(normalized(current!.filter { !$0.hasPrefix("import ") }))
                current = nil
            } else {
                current!.append(line)
            }
        }
        return blocks
    }

    /// This file's examples by name, each de-indented, its literal paths named as the tests do.
    private static func examples() throws -> [String: [String]] {
        let lines = try String(contentsOfFile: #filePath, encoding: .utf8).components(separatedBy: "\n")
        var examples: [String: [String]] = [:]
        var name: String?
        var body: [String] = []
        for line in lines {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if let current = name {
                if trimmed == "// end of example" {
                    let indent = body.filter { !$0.trimmingCharacters(in: .whitespaces).isEmpty }
                        .map { $0.prefix { $0 == " " }.count }.min() ?? 0
                    examples[current] = normalized(body.map { String($0.dropFirst(min(indent, $0.count))) })
                    name = nil
                } else {
                    body.append(line)
                }
            } else if trimmed.hasPrefix("// example: ") {
                name = String(trimmed.dropFirst("// example: ".count))
                body = []
            }
        }
        return examples
    }

    private static func normalized(_ lines: [String]) -> [String] {
        var result = lines.map { line -> String in
            var line = line
            while line.last == " " { line.removeLast() }
            for (literal, name) in documentedPaths { line = line.replacingOccurrences(of: literal, with: name) }
            return line
        }
        while result.first?.isEmpty == true { result.removeFirst() }
        while result.last?.isEmpty == true { result.removeLast() }
        return result
    }
}
