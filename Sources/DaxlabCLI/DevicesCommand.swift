import ArgumentParser
import DMA
import Pmem

/// `daxlab devices`: the pmem regions, namespaces and dax devices libndctl and libdaxctl find, and
/// the RDMA devices libibverbs lists.
struct DevicesCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "devices",
        abstract: "List persistent memory: regions, namespaces and device-dax devices.",
        discussion: """
            Found through libndctl (NVDIMM buses and memmap= e820 ranges) and libdaxctl. Each \
            namespace shows its mode (fsdax, devdax, sector, raw), size, alignment and device path; \
            each region its persistence domain. Finding nothing is normal on a machine without pmem: \
            the output then says how to get some. Last, the RDMA devices libibverbs lists (what \
            race --devices rdma uses; a soft-RoCE one is made with `rdma link add rxe0 type rxe \
            netdev lo` where the kernel has rdma_rxe).
            """
    )

    @Flag(name: .long, help: "Print one JSON object: {\"regions\": [...], \"dax_devices\": [...], \"rdma_devices\": [names]}.")
    var json = false

    /// What `--json` prints.
    struct Listing: Encodable {
        var regions: [PmemRegion]
        var daxDevices: [DAXDevice]
        var rdmaDevices: [String]
    }

    func run() throws {
        let inventory = try PmemDiscovery.discover()
        let rdma = RDMAPort.deviceNames
        if self.json {
            try Terminal.printJSON(Listing(regions: inventory.regions, daxDevices: inventory.daxDevices, rdmaDevices: rdma))
            return
        }
        defer {
            Output.print(rdma.isEmpty
                ? "RDMA devices: none (where the kernel has rdma_rxe: rdma link add rxe0 type rxe netdev lo)"
                : "RDMA devices: \(rdma.joined(separator: ", "))")
        }
        if inventory.isEmpty {
            Output.print(Self.nothingFound)
            return
        }
        for region in inventory.regions {
            Output.print(
                "\(region.name)  \(region.provider)  \(region.type)  \(ByteFormat.binary(region.size))"
                    + "  align \(ByteFormat.binary(region.alignment))  persistence \(region.persistenceDomain)"
                    + (region.enabled ? "" : "  (disabled)"))
            if region.namespaces.isEmpty { Output.print("  (no namespaces)") }
            for namespace in region.namespaces {
                let alignment = namespace.alignment.map { "  align \(ByteFormat.binary($0))" } ?? ""
                Output.print(
                    "  \(namespace.name)  \(namespace.mode)  \(ByteFormat.binary(namespace.size))\(alignment)"
                        + "  \(namespace.devicePath ?? "(no device)")" + (namespace.enabled ? "" : "  (disabled)"))
            }
        }
        let listed = Set(inventory.regions.flatMap { $0.namespaces.compactMap(\.devicePath) })
        for device in inventory.daxDevices where !listed.contains(device.devicePath) {
            Output.print(
                "dax region \(device.regionID)  \(device.devicePath)  \(ByteFormat.binary(device.size))"
                    + "  align \(ByteFormat.binary(device.alignment))")
        }
    }

    static let nothingFound = """
        No persistent memory found: no NVDIMM regions, memmap= ranges or dax devices.
        To get some:
          - emulated, no reboot: a file on tmpfs, e.g. `daxlab info /dev/shm/daxlab.pmem --create 256M`
            (PMEM_IS_PMEM_FORCE=1 makes libpmem treat it as pmem);
          - kernel pmem from RAM: boot with memmap=1G!4G (1 GiB at 4 GiB becomes /dev/pmem0), then
            `ndctl create-namespace -f -e namespace0.0 -m devdax` for /dev/dax0.0, or mkfs.ext4 and
            mount -o dax /dev/pmem0 for fs-dax;
          - real NVDIMMs: `ndctl create-namespace -m fsdax` or `-m devdax`.
        """
}
