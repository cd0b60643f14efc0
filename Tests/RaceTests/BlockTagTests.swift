import DaxFS
import Race
import Testing

@Suite("Block tags")
struct BlockTagTests {
    @Test("two devices writing one page at once leave whole tags of both: readEach accepts, read does not")
    func interleavedWrites() {
        let block = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
        let other = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { block.deallocate(); other.deallocate() }
        let file = FileID(inode: 2, generation: 1)
        BlockTag(file: file, page: 20, writer: 1, kind: .device, epoch: 3, stamp: 7).fill(block)
        BlockTag(file: file, page: 20, writer: 0, kind: .device, epoch: 3, stamp: 9).fill(other)
        block.advanced(by: 3584).copyMemory(from: other.advanced(by: 3584), byteCount: 512)
        #expect(BlockTag.read(block) == nil, "not one identical tag")
        let tags = BlockTag.readEach(block)
        #expect(tags?.count == 128)
        #expect(tags?.allSatisfy { $0.file == file && $0.page == 20 } == true)
        #expect(Set(tags?.map(\.writer) ?? []) == [0, 1])
        // A copy naming another page is not the file's own data.
        BlockTag(file: file, page: 21, writer: 0, kind: .device, epoch: 3, stamp: 9).fill(other)
        block.copyMemory(from: other, byteCount: 32)
        #expect(BlockTag.readEach(block)?.allSatisfy { $0.page == 20 } == false)
        // Half a tag (a torn 32-byte copy) is no tag at all.
        block.storeBytes(of: 0, toByteOffset: 64, as: UInt32.self)
        #expect(BlockTag.readEach(block) == nil)
    }
}
