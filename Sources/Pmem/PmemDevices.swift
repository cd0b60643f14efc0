import CShims

/// One namespace of a pmem region, as `ndctl list` shows it.
public struct PmemNamespace: Sendable, Codable, Equatable {
    /// `namespace0.0`.
    public var name: String
    /// `fsdax`, `devdax`, `sector`, `raw` or `unknown`.
    public var mode: String
    /// Bytes usable through its device (a pfn, dax or btt device's size, else the namespace's).
    public var size: UInt64
    /// The mapping alignment of its pfn or dax device, when it has one.
    public var alignment: UInt64?
    /// `/dev/pmemX` (fsdax, raw), `/dev/pmemXs` (sector) or `/dev/daxX.Y` (devdax).
    public var devicePath: String?
    /// Active: enabled, or claimed by an enabled pfn, dax or btt device.
    public var enabled: Bool
}

/// A pmem region (an interleave set of NVDIMMs, or a legacy `memmap=` e820 range).
public struct PmemRegion: Sendable, Codable, Equatable {
    /// `region0`.
    public var name: String
    /// The bus provider: `ACPI.NFIT` for NVDIMMs, `e820` for `memmap=` ranges.
    public var provider: String
    /// `pmem` or `blk`.
    public var type: String
    public var size: UInt64
    public var alignment: UInt64
    /// Where a flushed store is durable: `cpu_cache` (eADR), `memory_controller` (ADR), `none`
    /// or `unknown`.
    public var persistenceDomain: String
    public var enabled: Bool
    public var namespaces: [PmemNamespace]
}

/// A device-dax instance as libdaxctl sees it, whether or not it sits behind an ndctl namespace.
public struct DAXDevice: Sendable, Codable, Equatable {
    /// `/dev/dax0.0`.
    public var devicePath: String
    public var size: UInt64
    public var alignment: UInt64
    /// `dax0`'s region id.
    public var regionID: Int32
    public var enabled: Bool
}

/// Everything discovery found. Empty is a normal answer: a machine without pmem.
public struct PmemInventory: Sendable, Codable, Equatable {
    public var regions: [PmemRegion]
    public var daxDevices: [DAXDevice]

    public var isEmpty: Bool { self.regions.isEmpty && self.daxDevices.isEmpty }
}

/// Finds pmem through libndctl (buses, regions, namespaces) and libdaxctl (dax devices).
public enum PmemDiscovery {
    /// Walks every nvdimm bus and every dax region on this machine.
    /// - Throws: `.discoveryFailed` when a library cannot even start (no sysfs, out of memory).
    public static func discover() throws(PmemError) -> PmemInventory {
        PmemInventory(regions: try self.ndctlRegions(), daxDevices: try self.daxctlDevices())
    }

    private static func ndctlRegions() throws(PmemError) -> [PmemRegion] {
        var context: OpaquePointer?
        let status = ndctl_new(&context)
        guard status == 0, let context else {
            throw PmemError(.discoveryFailed, detail: "libndctl could not start (error \(status))", errno: -status)
        }
        defer { ndctl_unref(context) }

        var regions: [PmemRegion] = []
        var bus = ndctl_bus_get_first(context)
        while let currentBus = bus {
            let provider = string(ndctl_bus_get_provider(currentBus)) ?? "unknown"
            var region = ndctl_region_get_first(currentBus)
            while let currentRegion = region {
                regions.append(self.describe(region: currentRegion, provider: provider))
                region = ndctl_region_get_next(currentRegion)
            }
            bus = ndctl_bus_get_next(currentBus)
        }
        return regions
    }

    private static func describe(region: OpaquePointer, provider: String) -> PmemRegion {
        var namespaces: [PmemNamespace] = []
        var namespace = ndctl_namespace_get_first(region)
        while let current = namespace {
            // Seeds (size 0, idle) are placeholders for the next namespace, not devices.
            if ndctl_namespace_get_size(current) > 0 {
                namespaces.append(self.describe(namespace: current))
            }
            namespace = ndctl_namespace_get_next(current)
        }
        return PmemRegion(
            name: string(ndctl_region_get_devname(region)) ?? "?",
            provider: provider,
            type: string(ndctl_region_get_type_name(region)) ?? "unknown",
            size: UInt64(ndctl_region_get_size(region)),
            alignment: UInt64(ndctl_region_get_align(region)),
            persistenceDomain: self.domainName(ndctl_region_get_persistence_domain(region)),
            enabled: ndctl_region_is_enabled(region) != 0,
            namespaces: namespaces)
    }

    private static func describe(namespace: OpaquePointer) -> PmemNamespace {
        let mode = ndctl_namespace_get_mode(namespace)
        var alignment: UInt64?
        var devicePath: String?
        // A namespace claimed by a pfn, dax or btt device offers that device's size: the raw size
        // less the info block and, with map=dev, the struct pages (as `ndctl list` reports).
        var size = UInt64(ndctl_namespace_get_size(namespace))
        if mode == NDCTL_NS_MODE_DEVDAX, let dax = ndctl_namespace_get_dax(namespace) {
            alignment = UInt64(ndctl_dax_get_align(dax))
            if ndctl_dax_get_size(dax) > 0 { size = UInt64(ndctl_dax_get_size(dax)) }
            if let daxRegion = ndctl_dax_get_daxctl_region(dax), let device = daxctl_dev_get_first(daxRegion),
                let name = string(daxctl_dev_get_devname(device))
            {
                devicePath = "/dev/" + name
            }
        } else if mode == NDCTL_NS_MODE_FSDAX, let pfn = ndctl_namespace_get_pfn(namespace) {
            alignment = UInt64(ndctl_pfn_get_align(pfn))
            if ndctl_pfn_get_size(pfn) > 0 { size = UInt64(ndctl_pfn_get_size(pfn)) }
            devicePath = string(ndctl_pfn_get_block_device(pfn)).map { "/dev/" + $0 }
        } else if mode == NDCTL_NS_MODE_SECTOR, let btt = ndctl_namespace_get_btt(namespace) {
            if ndctl_btt_get_size(btt) > 0 { size = UInt64(ndctl_btt_get_size(btt)) }
            devicePath = string(ndctl_btt_get_block_device(btt)).map { "/dev/" + $0 }
        }
        if devicePath == nil, let block = string(ndctl_namespace_get_block_device(namespace)), !block.isEmpty {
            devicePath = "/dev/" + block
        }
        return PmemNamespace(
            name: string(ndctl_namespace_get_devname(namespace)) ?? "?",
            mode: self.modeName(mode),
            size: size,
            alignment: alignment,
            devicePath: devicePath,
            // Active: enabled itself, or through the pfn, dax or btt device that claims it.
            enabled: ndctl_namespace_is_active(namespace))
    }

    private static func daxctlDevices() throws(PmemError) -> [DAXDevice] {
        var context: OpaquePointer?
        let status = daxctl_new(&context)
        guard status == 0, let context else {
            throw PmemError(.discoveryFailed, detail: "libdaxctl could not start (error \(status))", errno: -status)
        }
        defer { daxctl_unref(context) }

        var devices: [DAXDevice] = []
        var region = daxctl_region_get_first(context)
        while let currentRegion = region {
            var device = daxctl_dev_get_first(currentRegion)
            while let current = device {
                if let name = string(daxctl_dev_get_devname(current)), daxctl_dev_get_size(current) > 0 {
                    devices.append(
                        DAXDevice(
                            devicePath: "/dev/" + name,
                            size: UInt64(daxctl_dev_get_size(current)),
                            alignment: UInt64(daxctl_dev_get_align(current)),
                            regionID: daxctl_region_get_id(currentRegion),
                            enabled: daxctl_dev_is_enabled(current) != 0))
                }
                device = daxctl_dev_get_next(current)
            }
            region = daxctl_region_get_next(currentRegion)
        }
        return devices
    }

    static func modeName(_ mode: ndctl_namespace_mode) -> String {
        switch mode {
        case NDCTL_NS_MODE_FSDAX: "fsdax"
        case NDCTL_NS_MODE_DEVDAX: "devdax"
        case NDCTL_NS_MODE_SECTOR: "sector"
        case NDCTL_NS_MODE_RAW: "raw"
        default: "unknown"
        }
    }

    static func domainName(_ domain: ndctl_persistence_domain) -> String {
        switch domain {
        case PERSISTENCE_CPU_CACHE: "cpu_cache"
        case PERSISTENCE_MEM_CTRL: "memory_controller"
        case PERSISTENCE_NONE: "none"
        default: "unknown"
        }
    }

    private static func string(_ pointer: UnsafePointer<CChar>?) -> String? {
        pointer.map { String(cString: $0) }
    }
}
