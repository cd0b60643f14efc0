import Pmem

/// The inode checks of `Checker`, and the repairs that salvage.
///
/// A record that fails its checksum is first tried for one flipped bit: CRC-32C has Hamming
/// distance 6 over a 4096-bit record, so when exactly one bit flip makes the checksum hold, that
/// is the original record, and no error of up to four bits can pass for one. A user file's record
/// damaged beyond that cannot be trusted, even where every field looks sane (a size, a pointer or
/// a name may be off by the damage): it keeps its readable blocks, bad pointers become holes, bad
/// fields get their only sane value, and the file is renamed `lost+found#N` so nobody mistakes
/// it for intact. (The root's and lost+found's records, which hold no user data, get their
/// checksum recomputed when their fields check out.) Only a record that says it is free is
/// cleared.
extension Checker {
    mutating func checkInode(_ number: Int) {
        let offset = self.geometry.inodeOffset(number)
        let label = "inode \(number)"
        let expected: InodeRecord.Kind =
            number == FileSystem.rootInode ? .rootDirectory : number == FileSystem.lostFoundInode ? .lostFound : .regular
        // Without repair nothing is written: a corrected copy of the record is checked instead.
        let scratch = UnsafeMutableRawPointer.allocate(byteCount: Geometry.inodeSize, alignment: 8)
        defer { scratch.deallocate() }
        var record = InodeRecord(self.media.base + offset)
        var checksumFailed = false
        if record.storedChecksum != record.computedChecksum {
            scratch.copyMemory(from: record.pointer, byteCount: Geometry.inodeSize)
            if let (byte, bit) = Self.singleBitError(in: scratch) {
                self.report(label, "checksum mismatch: bit \(bit) of byte \(byte) is flipped", action: "corrected that bit")
                if self.repair {
                    record.pointer.storeBytes(
                        of: record.pointer.load(fromByteOffset: byte, as: UInt8.self) ^ (1 << bit), toByteOffset: byte,
                        as: UInt8.self)
                    self.persist(offset, Geometry.inodeSize)
                } else {
                    scratch.storeBytes(of: scratch.load(fromByteOffset: byte, as: UInt8.self) ^ (1 << bit), toByteOffset: byte, as: UInt8.self)
                    record = InodeRecord(scratch)
                }
            } else {
                checksumFailed = true
            }
        }

        guard record.inUse else {
            self.checkFree(number, record, expected: expected, checksumFailed: checksumFailed)
            return
        }

        // The fields, each with the repair it gets.
        var issues: [String] = []
        var fixes: [(InodeRecord) -> Void] = []
        func issue(_ text: String, _ fix: @escaping (InodeRecord) -> Void) {
            issues.append(text)
            fixes.append(fix)
        }
        if record.kind != expected {
            issue("kind \((record.flags >> 8) & 0xFF) where \(expected) belongs") { $0.flags = 1 | expected.rawValue << 8 }
        } else if record.flags & ~0xFF01 != 0 {
            issue("reserved flag bits are set") { $0.flags &= 0xFF01 }
        }
        if !record.reservedBytesAreZero {
            issue("reserved bytes are set") { record in
                for (start, count) in InodeRecord.reservedSpans {
                    (record.pointer + start).initializeMemory(as: UInt8.self, repeating: 0, count: count)
                }
            }
        }
        var salvage = false
        if number >= FileSystem.firstUserInode {
            switch record.intent {
            case nil:
                issue("unknown intent word") { $0.intent = InodeRecord.Intent.none }
            case .truncate(let size)? where size > record.size:
                issue("truncate intent to \(size) is past the size \(record.size)") { $0.intent = InodeRecord.Intent.none }
            case .punch(let start, let end)? where start >= end || end > UInt64(FileSystem.maximumFileSize):
                issue("punch intent \(start)..<\(end) is not a range") { $0.intent = InodeRecord.Intent.none }
            case .orphan? where record.nameLength != 0:
                issue("an orphan keeps a name") { $0.intent = InodeRecord.Intent.none }
            default:
                break
            }
            switch record.intent {
            case .truncate?, .punch?: self.result.pendingOperations += 1
            case .orphan?: self.result.pendingOrphans += 1
            case .none?, nil: break
            }
            if record.intent != .orphan || record.nameLength != 0 {
                if let why = self.nameProblem(record) {
                    issues.append(why)
                    fixes.append { _ in }
                    salvage = true
                } else {
                    self.names[record.name] = number
                }
                self.result.files += 1
            }
        } else if record.intent != InodeRecord.Intent.none {
            issue("a reserved inode holds an intent") { $0.intent = InodeRecord.Intent.none }
        }

        let map = self.checkBlockMap(number, record, trusted: !checksumFailed)
        if map.badPointers > 0 {
            issues.append("\(map.badPointers) block pointer(s) bad: \(map.firstBad ?? "")")
            fixes.append { _ in }
            if number >= FileSystem.firstUserInode { salvage = true }
        }
        if map.emptyMaps > 0 {
            // (Nothing is lost: the file keeps its name.)
            issues.append("\(map.emptyMaps) block-map block(s) map nothing: \(map.firstEmpty ?? "")")
            fixes.append { _ in }
        }
        if record.size > UInt64(FileSystem.maximumFileSize) {
            // What the map still reaches: the end of the last page it maps.
            let mappedEnd = UInt64(map.lastPage.map { $0 + 1 } ?? 0) * UInt64(pageSize)
            issue("size \(record.size) exceeds the largest file") { $0.size = mappedEnd }
        }
        if checksumFailed, number >= FileSystem.firstUserInode {
            // More than one bit is wrong and no field shows which: nothing in the record can be
            // taken as the file's (a size, a pointer or a name may be off), so its readable
            // blocks are kept under lost+found#N.
            salvage = true
        }
        let reserved = self.checkReservation(number, record, issue: issue)
        let owned = map.dataBlocks + UInt64(reserved)
        if record.blocks != owned {
            let what = reserved > 0 ? "maps \(map.dataBlocks) and holds \(reserved) in reserve" : "maps \(map.dataBlocks)"
            issue("records \(record.blocks) data blocks but \(what)") { $0.blocks = owned }
        }
        if number == FileSystem.lostFoundInode { self.result.lostFoundBlocks = Int(map.dataBlocks) }

        // Report, and repair in place (the pointers were already fixed by the map walk).
        if checksumFailed && issues.isEmpty {
            self.report(
                label, "checksum mismatch of more than one bit, though every field and the block map check out",
                action: salvage ? "kept the readable blocks; the record cannot be trusted" : "recomputed the checksum")
        } else if checksumFailed {
            self.report(label, "checksum mismatch, and " + issues.joined(separator: "; "),
                        action: salvage ? "kept the readable blocks; fixed the rest" : "fixed each field")
        } else {
            for text in issues { self.report(label, text) }
        }
        guard self.repair, checksumFailed || !issues.isEmpty || map.pointersChanged else { return }
        let live = InodeRecord(self.media.base + offset)
        for fix in fixes { fix(live) }
        if salvage { self.toSalvage.append(number) }
        live.sealChecksum()
        self.persist(offset, Geometry.inodeSize)
    }

    /// A free (or reserved-but-missing) inode: it must be blank but for its generation.
    private mutating func checkFree(_ number: Int, _ record: InodeRecord, expected: InodeRecord.Kind, checksumFailed: Bool) {
        let label = "inode \(number)"
        let offset = self.geometry.inodeOffset(number)
        func reset(_ why: String) {
            self.report(label, why, action: number < FileSystem.firstUserInode ? "recreated it" : "cleared it")
            guard self.repair else { return }
            let live = InodeRecord(self.media.base + offset)
            if number < FileSystem.firstUserInode {
                live.initialize(
                    kind: expected, name: expected == .lostFound ? "lost+found" : FileName(bytes: []), now: FileSystem.now())
            } else {
                live.release()
            }
            live.sealChecksum()
            self.persist(offset, Geometry.inodeSize)
        }
        if number < FileSystem.firstUserInode { return reset("reserved \(expected) inode is missing") }
        let blank = UnsafeRawBufferPointer(start: record.pointer, count: Geometry.inodeSize).enumerated()
            .allSatisfy { index, byte in byte == 0 || (4..<8).contains(index) || (36..<40).contains(index) }
        if !blank {
            reset("free inode is not blank")
        } else if checksumFailed {
            reset("free inode's checksum does not match")
        }
    }

    /// Why inode `record`'s name cannot stand (invalid, or taken by an earlier inode), or nil.
    private func nameProblem(_ record: InodeRecord) -> String? {
        let length = record.nameLength
        let bytes = UnsafeRawBufferPointer(start: record.pointer + InodeRecord.nameOffset, count: 256)
        guard length <= InodeRecord.maximumNameLength, bytes[length...].allSatisfy({ $0 == 0 }) else {
            return "name length \(length) does not match its bytes"
        }
        let name = record.name
        if let problem = name.problem { return "invalid name \"\(name)\": \(problem)" }
        if let other = self.names[name] { return "name \"\(name)\" is also used by inode \(other)" }
        return nil
    }

    /// Renames every salvaged file `lost+found#N` (or `lost+found#N-2`, ... when that is taken).
    mutating func salvageNames() {
        for number in self.toSalvage {
            var name = FileName("lost+found#\(number)")
            var suffix = 2
            while self.names[name] != nil {
                name = FileName("lost+found#\(number)-\(suffix)")
                suffix += 1
            }
            self.names[name] = number
            let offset = self.geometry.inodeOffset(number)
            let live = InodeRecord(self.media.base + offset)
            live.setName(name)
            if live.intent == .orphan { live.intent = InodeRecord.Intent.none }
            live.sealChecksum()
            self.persist(offset, Geometry.inodeSize)
            self.report("inode \(number)", "its readable blocks are kept", action: "renamed it \"\(name)\"")
            self.result.salvagedFiles.append(name.escaped)
        }
    }

    /// The one bit whose flip makes `record`'s checksum hold, if there is exactly one.
    static func singleBitError(in record: UnsafeMutableRawPointer) -> (byte: Int, bit: Int)? {
        var found: (Int, Int)?
        for byte in 0..<Geometry.inodeSize {
            for bit in 0..<8 {
                let original = record.load(fromByteOffset: byte, as: UInt8.self)
                record.storeBytes(of: original ^ (1 << bit), toByteOffset: byte, as: UInt8.self)
                let holds = InodeRecord(record).storedChecksum == InodeRecord(record).computedChecksum
                record.storeBytes(of: original, toByteOffset: byte, as: UInt8.self)
                if holds {
                    if found != nil { return nil }
                    found = (byte, bit)
                }
            }
        }
        return found
    }

    /// Checks the blocks inode `number` holds in reserve for its write faults (after its map
    /// walk): each must be a data block that this file maps or nobody claims. Claims the
    /// unmapped ones for the file and returns how many; a bad reservation is an issue whose
    /// repair drops it (its unmapped blocks are then leaked, and the bitmap pass frees them).
    private mutating func checkReservation(
        _ number: Int, _ record: InodeRecord, issue: (String, @escaping (InodeRecord) -> Void) -> Void
    ) -> Int {
        if record.reservationCount == 0 && record.reservationIsWellFormed { return 0 }  // none
        var why: String?
        var unmapped: [UInt32] = []
        if !record.reservationIsWellFormed {
            why = "reservation count \(record.reservationCount) is over \(InodeRecord.maximumReservation) or has stray entries"
        } else {
            for block in record.reservation {
                if !self.geometry.isDataBlock(block) {
                    why = "reserved block \(block) is outside the data area"
                } else if self.owner[Int(block)] == Int32(number) {
                    continue  // mapped by this file
                } else if unmapped.contains(block) {
                    why = "reserved block \(block) is listed twice"
                } else if self.owner[Int(block)] != -1 {
                    why = "reserved block \(block) is also used by inode \(self.owner[Int(block)])"
                } else {
                    unmapped.append(block)
                }
                if why != nil { break }
            }
        }
        if let why {
            issue(why) { $0.reservation = [] }
            return 0
        }
        for block in unmapped { self.owner[Int(block)] = Int32(number) }
        return unmapped.count
    }

    /// What a block-map walk found.
    struct MapWalk {
        var dataBlocks: UInt64 = 0
        var badPointers = 0
        var firstBad: String?
        /// Map blocks that map nothing (freed under repair; nothing is lost).
        var emptyMaps = 0
        var firstEmpty: String?
        /// The last page a valid pointer maps.
        var lastPage: Int?
        /// Repair set some pointers to zero.
        var pointersChanged = false
    }

    /// Walks every pointer of inode `number`, claiming blocks. An entry of a map block that fails
    /// its check is corrected when one flipped bit explains it, else it is bad. Under repair a
    /// bad pointer (outside the data area, failing its check, past the end of file, a map block
    /// already claimed, or a data block already claimed where this record cannot be trusted)
    /// becomes a hole. A data block claimed by a trusted pointer and already claimed is noted for
    /// `cloneSharedBlocks`: each claimant keeps its own copy.
    /// - Parameter trusted: the record's checksum held (or one flipped bit was corrected).
    private mutating func checkBlockMap(_ number: Int, _ record: InodeRecord, trusted: Bool) -> MapWalk {
        let inodeOffset = self.geometry.inodeOffset(number)
        let pages = Int((min(record.size, UInt64(FileSystem.maximumFileSize)) + UInt64(pageSize) - 1)
            / UInt64(pageSize))
        var walk = MapWalk()
        let label = "inode \(number)"

        func bad(_ why: String, _ slot: PointerSlot) {
            walk.badPointers += 1
            if walk.firstBad == nil { walk.firstBad = why }
            guard self.repair else { return }
            walk.pointersChanged = true
            self.clear(slot)
        }

        /// Checks the pointer at `slot` (a field of the record, at its offset in the record, or
        /// an entry of a map block); returns the block when it is valid and now claimed.
        func visit(_ slot: PointerSlot, page: Int?, map firstPosition: UInt32? = nil) -> UInt32? {
            let map = firstPosition != nil
            let block: UInt32
            switch slot {
            case .record(let offset):
                block = record.pointer.load(fromByteOffset: offset - inodeOffset, as: UInt32.self)
            case .entry(let offset, let position):
                let raw = self.media.base.load(fromByteOffset: offset, as: UInt64.self)
                if let decoded = MapEntry.decode(raw, inode: number, position: position) {
                    block = decoded
                } else if let corrected = MapEntry.correctOneBit(raw, inode: number, position: position) {
                    let bit = (raw ^ corrected).trailingZeroBitCount
                    self.report(
                        label, "block-map entry \(Self.describe(position)) in block \(offset / pageSize): bit \(bit) is flipped",
                        action: "corrected that bit")
                    if self.repair {
                        self.media.base.storeBytes(of: corrected, toByteOffset: offset, as: UInt64.self)
                        self.persist(offset, MapEntry.size)
                    }
                    block = UInt32(truncatingIfNeeded: corrected)
                } else {
                    bad("block-map entry \(Self.describe(position)) in block \(offset / pageSize) fails its check", slot)
                    return nil
                }
            }
            guard block != 0 else { return nil }
            if !self.geometry.isDataBlock(block) {
                bad("pointer to block \(block) outside the data area", slot)
                return nil
            }
            if let page, page >= pages {
                bad("block \(block) mapped at page \(page), past the end of file", slot)
                return nil
            }
            if let firstPosition, !self.holdsEntries(block, of: number, from: firstPosition) {
                bad("block \(block) holds no entry of this file's map there (another file's or another level's)", slot)
                return nil
            }
            let owner = self.owner[Int(block)]
            if owner != -1 {
                let other = owner == Int32(number) ? "this file" : owner >= 0 ? "inode \(owner)" : "the metadata"
                guard !map, trusted, owner >= 0 else {
                    bad("block \(block) is also used by \(other)", slot)
                    return nil
                }
                // Both pointers check out: neither can be preferred, so each keeps a copy.
                self.shared.append(SharedClaim(inode: number, slot: slot, block: block, firstOwner: Int(owner)))
                walk.dataBlocks += 1
                return block
            }
            self.owner[Int(block)] = Int32(number)
            if !map {
                walk.dataBlocks += 1
                if let page { walk.lastPage = max(walk.lastPage ?? page, page) }
            }
            return block
        }

        /// A map block that maps nothing: a removal frees it with its last pointer, so only a
        /// file with reserved blocks may keep one, inside its size (its write faults need no log
        /// there; mount frees it). Repair frees it (the bitmap pass then finds it leaked).
        func checkNotEmpty(_ map: UInt32, entries: Int, firstPage: Int, slot: PointerSlot) {
            guard entries == 0, record.reservationCount == 0 || firstPage >= pages else { return }
            walk.emptyMaps += 1
            if walk.firstEmpty == nil { walk.firstEmpty = "block \(map)" }
            guard self.repair else { return }
            walk.pointersChanged = true
            self.owner[Int(map)] = -1
            self.clear(slot)
        }

        for index in 0..<InodeRecord.directCount {
            _ = visit(.record(inodeOffset + InodeRecord.directPointerOffset(index)), page: index)
        }
        let perBlock = MapEntry.perBlock
        let indirectSlot = PointerSlot.record(inodeOffset + InodeRecord.indirectOffset)
        if let map = visit(indirectSlot, page: nil, map: UInt32(BlockMapPath.indirectFirstPage)) {
            var entries = 0
            for index in 0..<perBlock {
                let page = BlockMapPath.indirectFirstPage + index
                let slot = PointerSlot.entry(self.geometry.entryOffset(map, index), position: UInt32(page))
                if visit(slot, page: page) != nil { entries += 1 }
            }
            checkNotEmpty(map, entries: entries, firstPage: BlockMapPath.indirectFirstPage, slot: indirectSlot)
        }
        let topSlot = PointerSlot.record(inodeOffset + InodeRecord.doubleIndirectOffset)
        if let top = visit(topSlot, page: nil, map: MapEntry.leafTag) {
            var leaves = 0
            for outer in 0..<perBlock {
                let leafSlot = FileSystem.leafSlot(self.geometry, top: top, outer)
                let first = BlockMapPath.doubleIndirectFirstPage + outer * perBlock
                guard let leaf = visit(leafSlot, page: nil, map: UInt32(first)) else { continue }
                var entries = 0
                for inner in 0..<perBlock {
                    let slot = PointerSlot.entry(self.geometry.entryOffset(leaf, inner), position: UInt32(first + inner))
                    if visit(slot, page: first + inner) != nil { entries += 1 }
                }
                checkNotEmpty(leaf, entries: entries, firstPage: first, slot: leafSlot)
                if entries > 0 || (record.reservationCount != 0 && first < pages) { leaves += 1 }
            }
            checkNotEmpty(top, entries: leaves, firstPage: BlockMapPath.doubleIndirectFirstPage, slot: topSlot)
        }
        return walk
    }

    /// Whether map block `block` can be inode `number`'s map whose entry `i` has position
    /// `firstPosition + i`: it maps nothing, or one of its entries checks out there (or would
    /// with one bit corrected). A pointer to any other block (another file's map, a map of
    /// another level, data) is bad, and the block is left to whoever it belongs to.
    private func holdsEntries(_ block: UInt32, of number: Int, from firstPosition: UInt32) -> Bool {
        let base = self.media.base + Int(block) * pageSize
        var empty = true
        for index in 0..<MapEntry.perBlock {
            let raw = base.load(fromByteOffset: index * MapEntry.size, as: UInt64.self)
            guard raw != 0 else { continue }
            empty = false
            let position = firstPosition + UInt32(index)
            if MapEntry.decode(raw, inode: number, position: position) != nil
                || MapEntry.correctOneBit(raw, inode: number, position: position) != nil
            {
                return true
            }
        }
        return empty
    }

    /// An entry's position in words: the page it maps, or which leaf pointer it is.
    static func describe(_ position: UInt32) -> String {
        position & MapEntry.leafTag != 0 ? "for leaf \(position & ~MapEntry.leafTag)" : "for page \(position)"
    }

    /// Under repair, makes `slot` a hole on the media: an entry at once (persisted), a record
    /// field in the live record (its inode is resealed and persisted after its walk).
    private func clear(_ slot: PointerSlot) {
        guard self.repair else { return }
        switch slot {
        case .record(let offset):
            self.media.base.storeBytes(of: 0, toByteOffset: offset, as: UInt32.self)
        case .entry(let offset, _):
            self.media.base.storeBytes(of: 0, toByteOffset: offset, as: UInt64.self)
            self.persist(offset, MapEntry.size)
        }
    }
}
