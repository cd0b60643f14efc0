import Pmem

/// `daxlab fsck`: checks an unmounted image, and with `repair` fixes what it finds.
public enum Fsck {
    /// What fsck found (and, with repair, did).
    public struct Report: Sendable {
        public var path: String
        /// Problems found, each marked repaired or not; the log's state comes first.
        public var result: CheckResult
        /// Committed transactions that a mount would replay (without repair) or that were replayed.
        public var pendingLogTransactions: Int
        /// The image was left mounted (a crash, or a process killed while it had the image).
        public var wasDirty: Bool
        public var repaired: Bool
        /// After a repair: the check that followed it, which should be clean.
        public var afterRepair: CheckResult?

        /// Clean: nothing found, or everything found was repaired and the re-check is clean.
        public var isClean: Bool { self.afterRepair?.isClean ?? self.result.isClean }
    }

    /// Checks the image at `path` (taking its lock, so a mounted image is refused).
    /// - Throws: `FSError` when the image cannot be read at all (no image, superblock damage,
    ///   in use): fsck's exit status 2.
    public static func run(path: String, repair: Bool = false) throws(FSError) -> Report {
        let mapping: PmemMapping
        do { mapping = try PmemMapping(path: path) } catch { throw FSError(error) }
        try FileSystem.lockImage(mapping)
        let (superblock, state, _) = try Superblock.read(from: mapping)
        let geometry = superblock.geometry
        let media = Media(mapping: mapping)

        var logProblems: [FsckProblem] = []
        var recovery = try MetadataLog.recover(media: media, geometry: geometry, apply: false)
        for slot in recovery.invalidSlots {
            logProblems.append(FsckProblem(
                structure: "log", message: "slot \(slot) holds a committed transaction that points outside metadata",
                repaired: repair))
            if repair { try MetadataLog.retire(offset: MetadataLog.slotOffset(slot, geometry), media: media) }
        }
        if repair {
            recovery = try MetadataLog.recover(media: media, geometry: geometry, apply: true)
        } else if recovery.replayed > 0 {
            logProblems.append(FsckProblem(
                structure: "log",
                message: "\(recovery.replayed) committed transaction(s) not yet replayed (mount or --repair replays them)",
                repaired: false))
        }

        var result = Checker(media: media, geometry: geometry, repair: repair).check()
        result.problems.insert(contentsOf: logProblems, at: 0)
        var afterRepair: CheckResult?
        if repair {
            afterRepair = Checker(media: media, geometry: geometry).check()
            if afterRepair?.isClean == true, state == .mounted {
                // Consistent again: mark it clean so the next mount does not call it dirty.
                mapping.base.storeBytes(
                    of: Superblock.stateWord(.clean, mounts: 0), toByteOffset: Superblock.stateOffset, as: UInt64.self)
                try media.persist(Superblock.stateOffset, 8)
            }
        }
        return Report(
            path: path, result: result, pendingLogTransactions: recovery.replayed, wasDirty: state == .mounted,
            repaired: repair, afterRepair: afterRepair)
    }
}
