/// How long a pin is meant to last: the kernel's `FOLL_LONGTERM` distinction. A short-term pin
/// (`FOLL_PIN` for one I/O, O_DIRECT-like: microseconds to a millisecond) ends by itself; a
/// long-term one (RDMA-like: seconds, or as long as a registration lives) ends when its holder
/// says so. Policy `mainline` refuses long-term pins of DAX files, as the kernel does.
public enum PinTerm: String, Sendable, CaseIterable, CustomStringConvertible {
    case shortTerm = "short-term"
    case longTerm = "long-term"

    public var description: String { self.rawValue }

    /// The term a kernel pin implies; nil for daxlab's own pins (any term).
    static func implied(by kernel: KernelPin) -> PinTerm? {
        switch kernel {
        case .none: nil
        case .shortTerm: .shortTerm
        case .longTerm: .longTerm
        }
    }
}
