import DaxlabSupport
import Pmem

/// `daxlab fsck`: checks an unmounted image, and with `repair` fixes what it finds.
public enum Fsck {
    /// What fsck found (and, with repair, did).
    public struct Report: Sendable {
        public var path: String
        /// Problems found, each marked repaired or not; the superblock's and the log's come first.
        public var result: CheckResult
        /// Committed transactions that a mount would replay (without repair) or that were replayed.
        public var pendingLogTransactions: Int
        /// The image was left mounted (a crash, or a process killed while it had the image).
        public var wasDirty: Bool
        public var repaired: Bool
        /// After a repair: the check that followed it, which should be clean.
        public var afterRepair: CheckResult?
        /// With repair: truncates and punches finished, and orphans freed, as a mount would.
        public var finishedOperations = 0
        public var freedOrphans = 0

        /// Clean: nothing found, or everything found was repaired and the re-check is clean.
        public var isClean: Bool { self.afterRepair?.isClean ?? self.result.isClean }
    }

    /// Checks the image at `path`, taking its lock (a mounted image is refused). Without `repair`
    /// the image is opened read-only (a user with read permission may check it) and nothing is
    /// written; with it, the log is replayed, the superblock restored from its backup if need be,
    /// every repair `Checker` can prove is made, and the operations a crash interrupted finished.
    /// - Throws: `FSError` when the image cannot be read at all (no image, both superblocks
    ///   damaged, in use): fsck's exit status 2.
    public static func run(path: String, repair: Bool = false) throws(FSError) -> Report {
        let mapping: PmemMapping
        do {
            mapping = try PmemMapping(path: path, options: repair ? .existing : .readOnly)
        } catch {
            throw FSError(error)
        }
        try FileSystem.lockImage(mapping, shared: !repair)
        let media = Media(mapping: mapping)
        var superblockProblems: [FsckProblem] = []
        let (superblock, readState) = try Self.superblock(mapping, media: media, repair: repair, problems: &superblockProblems)
        let geometry = superblock.geometry
        var state = readState
        if state == nil {
            superblockProblems.append(FsckProblem(
                structure: "superblock", message: "invalid mount state word", repaired: repair,
                action: "set it to clean once the rest is consistent"))
            state = .mounted
            if repair {
                mapping.base.storeBytes(
                    of: Superblock.stateWord(.mounted, mounts: 0), toByteOffset: Superblock.stateOffset, as: UInt64.self)
                try media.persist(Superblock.stateOffset, 8)
            }
        }

        var logProblems: [FsckProblem] = []
        var recovery = try MetadataLog.recover(media: media, geometry: geometry, apply: false)
        for slot in recovery.invalidSlots {
            logProblems.append(FsckProblem(
                structure: "log", message: "slot \(slot) holds a committed transaction that points outside metadata",
                repaired: repair, action: "discarded it"))
            if repair { try MetadataLog.retire(offset: MetadataLog.slotOffset(slot, geometry), media: media) }
        }
        for slot in recovery.damagedSlots {
            logProblems.append(FsckProblem(
                structure: "log",
                message: "slot \(slot) holds a committed transaction whose records fail their checksum (damaged since "
                    + "it was committed): it cannot be replayed, so what it had begun to change stays half done",
                repaired: repair, action: "discarded it; what it left half done is listed below"))
            if repair { try MetadataLog.retire(offset: MetadataLog.slotOffset(slot, geometry), media: media) }
        }
        if repair {
            recovery = try MetadataLog.recover(media: media, geometry: geometry, apply: true)
        } else if recovery.replayed > 0 {
            logProblems.append(FsckProblem(
                structure: "log",
                message: "\(recovery.replayed) committed transaction(s) not yet replayed (mount or --repair replays them)",
                repaired: false))
            // The rest is checked as the replay will leave it: a file's read-only mapping is
            // private, so the replay changes this process's copy of the pages, never the image.
            // (A device-dax device is mapped read-only and shared: its pending changes stay
            // unapplied, and what they fix may be listed too.)
            if mapping.medium != .deviceDAX {
                _ = try MetadataLog.recover(media: media, geometry: geometry, apply: true)
            }
        }

        var result = Checker(media: media, geometry: geometry, repair: repair).check()
        if !repair, result.pendingOperations > 0 {
            logProblems.append(FsckProblem(
                structure: "intents",
                message: "\(result.pendingOperations) truncate(s) or punch(es) a crash interrupted "
                    + "(mount or --repair finishes them)",
                repaired: false))
        }
        if !repair, result.pendingOrphans > 0 {
            logProblems.append(FsckProblem(
                structure: "intents",
                message: "\(result.pendingOrphans) orphan(s): file(s) left without a name by an unlink, a rename over them "
                    + "or a write of a temporary a crash interrupted (mount or --repair frees them)",
                repaired: false))
        }
        result.problems.insert(contentsOf: superblockProblems + logProblems, at: 0)
        var report = Report(
            path: path, result: result, pendingLogTransactions: recovery.replayed, wasDirty: state == .mounted,
            repaired: repair, afterRepair: nil)
        guard repair else { return report }

        var after = Checker(media: media, geometry: geometry).check()
        if after.isClean {
            // Consistent again: finish what a crash interrupted (as mount does) and mark it clean.
            let fs = try FileSystem(repairedMapping: mapping)
            report.finishedOperations = fs.mountReport.finishedOperations
            report.freedOrphans = fs.mountReport.freedOrphans
            try fs.unmount()
            after = Checker(media: media, geometry: geometry).check()
        }
        report.afterRepair = after
        return report
    }

    /// The primary superblock, or with it damaged the backup in the image's last block; with
    /// `repair`, a damaged copy is rewritten from the intact one.
    private static func superblock(
        _ mapping: PmemMapping, media: Media, repair: Bool, problems: inout [FsckProblem]
    ) throws(FSError) -> (Superblock, Superblock.MountState?) {
        let backupBlock = Superblock.backupBlock(of: mapping)
        let primary = Result { () throws(FSError) in try Superblock.read(from: mapping) }
        let backup = Result { () throws(FSError) in try Superblock.read(from: mapping, block: backupBlock) }
        switch (primary, backup) {
        case (.success(let (superblock, state, _)), .success):
            return (superblock, state)
        case (.success(let (superblock, state, _)), .failure(let error)):
            problems.append(FsckProblem(
                structure: "superblock", message: "the backup in block \(backupBlock) is damaged (\(error.message))",
                repaired: repair, action: "rewrote it from the primary"))
            if repair { try Self.copySuperblock(media, from: 0, to: backupBlock) }
            return (superblock, state)
        case (.failure(let error), .success(let (superblock, _, _))):
            guard superblock.geometry.blockCount * pageSize == mapping.length else { throw error }
            problems.append(FsckProblem(
                structure: "superblock",
                message: "\(Superblock.withoutMkfsHint(error.message)); the backup in block \(backupBlock) is intact",
                repaired: repair, action: "restored it from the backup"))
            if repair {
                try Self.copySuperblock(media, from: backupBlock, to: 0)
                // The state word is not part of the backup: the image counts as not cleanly unmounted.
                mapping.base.storeBytes(
                    of: Superblock.stateWord(.mounted, mounts: 0), toByteOffset: Superblock.stateOffset, as: UInt64.self)
                try media.persist(Superblock.stateOffset, 8)
            }
            return (superblock, .mounted)
        case (.failure(let error), .failure):
            throw error
        }
    }

    /// Copies the checksummed part of a superblock from block `source` to block `target`.
    private static func copySuperblock(_ media: Media, from source: Int, to target: Int) throws(FSError) {
        let offset = target * pageSize
        (media.base + offset).copyMemory(from: media.base + source * pageSize, byteCount: Superblock.checksummedLength)
        try media.persist(offset, Superblock.checksummedLength)
    }
}
