@_spi(Oracle) import DaxFS

/// Counting the blocks a run lost, once every thread has stopped and the reclaimer is idle.
extension RaceHarness {
    /// Blocks lost after everything stopped: allocated on the media but used by no file, free on
    /// the media but never returned to the allocator (a deferred block whose release was lost),
    /// or still held in lost+found with no pin left.
    func countLeaks() -> Int {
        let check = self.fs.checkQuiesced()
        return max(0, check.freeDataBlocks - self.fs.allocatorFreeBlocks) + check.lostFoundBlocks
    }
}
