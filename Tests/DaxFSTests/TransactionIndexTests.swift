@testable import DaxFS
import DaxlabSupport
import Testing
import TestSupport

/// The indices a transaction keeps to find its staged records (a bulk mapping stages hundreds),
/// and the merging of set-bits records, checked against plain models over many seeds.
@Suite("Transaction indices")
struct TransactionIndexTests {
    static let seeds: [UInt64] = [1, 2, 3, 0x5eed, 0xdead_beef]

    @Test("OffsetIndex agrees with a Dictionary through inserts, updates, removals, growth and emptying", arguments: seeds)
    func offsetIndexIsADictionary(seed: UInt64) {
        var random = SplitMix64(seed: seed)
        var index = OffsetIndex(capacity: 4)  // (small: it grows many times)
        var model: [Int: Int] = [:]
        for step in 0..<20_000 {
            // Keys cluster as a transaction's offsets do (8-byte words of a few blocks), plus strays.
            let key = random.next() % 4 == 0 ? Int(random.next() % 1_000_000_000) : Int(random.next() % 4096) * 8
            switch random.next() % 10 {
            case 0..<6:
                let value = Int(random.next() % 100_000)
                index[key] = value
                model[key] = value
            case 6..<8:
                index[key] = nil
                model[key] = nil
            case 8:
                if random.next() % 200 == 0 {
                    index.removeAll()
                    model.removeAll()
                }
            default: break
            }
            guard index[key] == model[key] else {
                Issue.record("seed \(seed), step \(step): key \(key) reads \(String(describing: index[key])), the model \(String(describing: model[key]))")
                return
            }
        }
        #expect(index.presentValues.sorted() == model.values.sorted(), "seed \(seed)")
        for (key, value) in model where index[key] != value {
            Issue.record("seed \(seed): key \(key) reads \(String(describing: index[key])), the model \(value)")
            return
        }
    }

    @Test("set and clear of one bitmap word's bits in any order, in one transaction: the bits the last change left", arguments: seeds)
    func setBitsMergeKeepsOrder(seed: UInt64) throws {
        try withFileSystem(size: 8 << 20) { fs, _ in
            var random = SplitMix64(seed: seed)
            let blocks = try #require(fs.allocator.allocate(256, hint: 0))
            var model = [UInt32: Bool]()
            _ = try fs.log.transaction { (tx) throws(FSError) in
                for _ in 0..<2000 {
                    let block = blocks[Int(random.next() % UInt64(blocks.count))]
                    if random.next() % 2 == 0 {
                        tx.setAllocated(block)
                        model[block] = true
                    } else {
                        tx.setFree(block, toAllocator: false)
                        model[block] = false
                    }
                }
            }
            for (block, allocated) in model where Bitmap(base: fs.media.base, geometry: fs.geometry).isAllocated(block) != allocated {
                Issue.record("seed \(seed): block \(block) is \(Bitmap(base: fs.media.base, geometry: fs.geometry).isAllocated(block) ? "set" : "clear"), its last change \(allocated ? "set" : "cleared") it")
                return
            }
        }
    }

    @Test("a run of 512 blocks marked allocated stages one record per bitmap word, not one per block")
    func runOfBitsStagesAWordARecord() throws {
        try withFileSystem(size: 16 << 20) { fs, _ in
            // 512 free blocks from a multiple of 64: eight whole bitmap words.
            let first = UInt32((fs.geometry.dataStart + fs.geometry.blockCount) / 2 / 64 * 64)
            #expect((first..<(first + 512)).allSatisfy { !Bitmap(base: fs.media.base, geometry: fs.geometry).isAllocated($0) })
            var used = 0
            _ = try fs.log.transaction { (tx) throws(FSError) in
                let before = tx.remainingCapacity
                for block in first..<(first + 512) { tx.setAllocated(block) }
                used = before - tx.remainingCapacity
                for block in first..<(first + 512) { tx.setFree(block, toAllocator: false) }
            }
            #expect(used == 8 * (LogRecord.headerSize + 8), "\(used) bytes of records for 8 words")
        }
    }
}
