import DaxFS

/// One device write: where it goes and under which pin. What a `DMAObserver` fills and judges.
public struct DMAWrite: Sendable, Equatable {
    public var file: FileID
    public var page: Int
    /// The device's index in its engine.
    public var device: Int
    /// The device's write counter (1, 2, 3, ...).
    public var sequence: UInt64
    /// The lease the page was pinned under (`LeaseInfo.id`).
    public var lease: UInt64
    /// What the observer's `didPin` returned for this page of this pin.
    public var cookie: UInt64

    public init(file: FileID, page: Int, device: Int, sequence: UInt64, lease: UInt64, cookie: UInt64) {
        self.file = file
        self.page = page
        self.device = device
        self.sequence = sequence
        self.lease = lease
        self.cookie = cookie
    }
}

/// Sees every device pin and write, and says what each write carries: the race harness's oracle
/// hooks in here. The DMA engine knows nothing of what the payload means.
public protocol DMAObserver: AnyObject, Sendable {
    /// A device pinned `page` of `file` as `block`, under `lease`.
    /// - Returns: a cookie the device hands back (in `DMAWrite.cookie`) with every write into
    ///   that page under this pin.
    func didPin(_ file: FileID, page: Int, block: UInt32, lease: UInt64) -> UInt64

    /// Fills `buffer` (4096 bytes) with what `write` puts in the block.
    func fill(_ buffer: UnsafeMutableRawPointer, for write: DMAWrite)

    /// The write landed, or (`landed == false`) was refused because the lease was revoked. For a
    /// landed write this runs inside the pin's revocation fence: the block cannot change hands
    /// through a lease break before it returns.
    func didWrite(_ write: DMAWrite, block: UInt32, landed: Bool)
}
