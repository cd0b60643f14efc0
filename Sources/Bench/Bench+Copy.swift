import Atomics
import CBenchShims
import CShims
import DAX
import DaxFS
import DaxlabSupport
import Pmem

#if canImport(Glibc)
import Glibc
#endif

extension Bench {
    /// dma.copy: a device writing 2 MiB through its pin handle (non-temporal copies into the 512
    /// pinned blocks, one drain); against pmem_memcpy_persist of a 2 MiB chunk into a mapping of
    /// its own on the same medium (next to the image).
    func copyRow() throws {
        let (_, space) = try self.mappedFile("copy", pages: 512)
        let source = UnsafeMutableRawPointer.allocate(byteCount: 2 << 20, alignment: pageSize)
        defer { source.deallocate() }
        source.initializeMemory(as: UInt8.self, repeating: 0x33, count: 2 << 20)
        let scratch = "\(PathComponents.directory(of: self.path))/daxlab-bench-copy-\(getpid())"
        unlink(scratch)
        defer { unlink(scratch) }
        let target = try PmemMapping(path: scratch, options: MapOptions(disposition: .createNew, size: 2 << 20))
        let handle = try space.pin(0..<512, write: true)
        let gigabytes = Double(2 << 20) / 1e9
        let copy = self.measure.interleave({ count in
            for _ in 0..<count { _ = try? handle.writeAll(from: source) }
        }, { count in
            for _ in 0..<count { pmem_memcpy_persist(target.base, source, 2 << 20) }
        }, transform: { gigabytes / ($0 / 1e9) })
        handle.unpin()
        self.add("dma.copy", unit: "GB/s", copy, baseline: "pmem.memcpy_persist", better: "higher", target: .atLeast(0.9))
    }
}
