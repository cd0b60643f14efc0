/// A map from non-negative offsets to non-negative indices, for a transaction's lookups of its
/// staged records: open addressing with linear probing and a multiplicative hash, because a bulk
/// mapping looks up every map entry it stages, and a `Dictionary`'s SipHash cost more than the
/// rest of the lookup. Emptied in time proportional to what was inserted, so a transaction that
/// staged a few records does not clear a table a large one grew.
struct OffsetIndex {
    /// Keys by slot (`empty`: none), values beside them (`absent`: the key was removed).
    private var keys: [Int]
    private var values: [Int]
    /// The slots holding keys, to empty them.
    private var used: [Int] = []
    private var shift: Int

    private static let empty = -1
    private static let absent = -1

    /// - Parameter capacity: keys held before the table first grows.
    init(capacity: Int = 64) {
        let slots = max(16, (2 * capacity).nextPowerOfTwo)
        self.keys = [Int](repeating: Self.empty, count: slots)
        self.values = [Int](repeating: Self.absent, count: slots)
        self.shift = Int.bitWidth - slots.trailingZeroBitCount
        self.used.reserveCapacity(capacity)
    }

    /// The value stored for `key`; nil if none (or removed). Setting nil removes it.
    subscript(key: Int) -> Int? {
        get {
            precondition(key >= 0, "OffsetIndex: a negative key")
            var slot = self.home(key)
            while true {
                let found = self.keys[slot]
                if found == key { return self.values[slot] == Self.absent ? nil : self.values[slot] }
                if found == Self.empty { return nil }
                slot = (slot + 1) & (self.keys.count - 1)
            }
        }
        set {
            precondition(key >= 0 && (newValue ?? 0) >= 0, "OffsetIndex: a negative key or value")
            var slot = self.home(key)
            while true {
                let found = self.keys[slot]
                if found == key {
                    self.values[slot] = newValue ?? Self.absent
                    return
                }
                if found == Self.empty { break }
                slot = (slot + 1) & (self.keys.count - 1)
            }
            guard let newValue else { return }
            if 2 * (self.used.count + 1) > self.keys.count {
                self.grow()
                self[key] = newValue
                return
            }
            self.keys[slot] = key
            self.values[slot] = newValue
            self.used.append(slot)
        }
    }

    /// Every value present, in no particular order.
    var presentValues: [Int] { self.used.map { self.values[$0] }.filter { $0 != Self.absent } }

    /// Empties the table, keeping its size.
    mutating func removeAll() {
        for slot in self.used {
            self.keys[slot] = Self.empty
            self.values[slot] = Self.absent
        }
        self.used.removeAll(keepingCapacity: true)
    }

    private func home(_ key: Int) -> Int {
        Int(truncatingIfNeeded: (UInt(bitPattern: key) &* 0x9E37_79B9_7F4A_7C15) >> UInt(self.shift))
    }

    private mutating func grow() {
        let entries = self.used.map { (self.keys[$0], self.values[$0]) }
        self = OffsetIndex(capacity: self.keys.count)
        for (key, value) in entries where value != Self.absent { self[key] = value }
    }
}

extension Int {
    /// The least power of two at least this (1 for 0 or less).
    fileprivate var nextPowerOfTwo: Int { self <= 1 ? 1 : 1 << (Int.bitWidth - (self - 1).leadingZeroBitCount) }
}
