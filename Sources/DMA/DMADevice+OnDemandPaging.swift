import DAX
import DaxFS

/// An on-demand-paging device (policy `odp`): it mirrors its range (`DeviceMirror`) instead of
/// pinning it. A truncate zaps its translations; its next write through one faults the range in
/// again (a device refault) and goes on with the new blocks, or finds the range gone and stops
/// writing until the unsubscribe.
extension DMADevice {
    /// Subscribes to `pages` of `file` and mirrors them (holes faulted in as new blocks).
    func mirror(_ file: FileID, pages: Range<Int>) throws(FSError) {
        let space: AddressSpace
        do {
            space = try self.dax.open(file)
        } catch {
            self.statistics.pinFailures.wrappingIncrement(ordering: .relaxed)
            throw error
        }
        let mirror = DeviceMirror(space: space, pages: pages)
        self.file = file
        self.mirrors += 1
        let blocks: [UInt32]
        do {
            blocks = try mirror.map()
        } catch {
            mirror.unsubscribe()
            self.statistics.pinFailures.wrappingIncrement(ordering: .relaxed)
            throw error
        }
        self.mirror = mirror
        self.remember(blocks)
        self.statistics.pins.wrappingIncrement(ordering: .relaxed)
        self.statistics.pinnedPages.wrappingIncrement(by: pages.count, ordering: .relaxed)
    }

    /// The mapping's id for the oracle (in place of a lease): the device and its mapping count.
    private var mappingID: UInt64 { LeaseStamp.make(number: UInt64(self.index), count: self.mirrors) }

    /// Takes `blocks` as the translations now, and tells the observer (a new cookie each). A
    /// translation zapped before the observer hears of it is never written through: its write
    /// faults first and comes back here.
    private func remember(_ blocks: [UInt32]) {
        guard let pages = self.mirror?.pages else { return }
        self.pinnedBlocks = blocks
        self.cookies = blocks.enumerated().map { index, block in
            self.observer?.didPin(self.file, page: pages.lowerBound + index, block: block, lease: self.mappingID) ?? 0
        }
    }

    /// Writes every mirrored page once; a zapped translation is faulted in again first.
    func transferThroughMirror() -> Int {
        guard let mirror = self.mirror else { return 0 }
        var landed = 0
        for index in 0..<mirror.pages.count {
            self.sequence += 1
            var written = false
            for _ in 0..<2 {
                let write = DMAWrite(
                    file: self.file, page: mirror.pages.lowerBound + index, device: self.index,
                    sequence: self.sequence, lease: self.mappingID, cookie: self.cookies[index])
                self.observer?.fill(self.buffer, for: write)
                let observer = self.observer
                written = mirror.write(at: index, from: self.buffer) { block in
                    observer?.didWrite(write, block: block, landed: true)
                }
                if written { break }
                // Zapped: fault the range in again, as a device's page-request handler does.
                self.statistics.deviceRefaults.wrappingIncrement(ordering: .relaxed)
                guard let blocks = try? mirror.map() else { return landed }  // the range is gone
                self.remember(blocks)
            }
            if written {
                landed += 1
                self.statistics.writes.wrappingIncrement(ordering: .relaxed)
            }
        }
        return landed
    }

    /// Ends the subscription.
    func unsubscribe() {
        guard let mirror = self.mirror else { return }
        mirror.unsubscribe()
        self.mirror = nil
        self.pinnedBlocks.removeAll(keepingCapacity: true)
        self.cycles.wrappingIncrement(ordering: .relaxed)
    }
}
