import Foundation
import Pmem
import Testing

@Suite("Device discovery")
struct DiscoveryTests {
    /// What sysfs says is there, independently of libndctl: regions on the nd bus, dax devices.
    private func sysfsEntries(_ directory: String, prefix: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).filter { $0.hasPrefix(prefix) }
    }

    @Test("discovery agrees with sysfs: empty on a machine without pmem, populated with it")
    func agreesWithSysfs() throws {
        let inventory = try PmemDiscovery.discover()
        let sysfsRegions = self.sysfsEntries("/sys/bus/nd/devices", prefix: "region")
        let sysfsDAX = self.sysfsEntries("/sys/bus/dax/devices", prefix: "dax")
        #expect(inventory.regions.count == sysfsRegions.count)
        #expect(Set(inventory.regions.map(\.name)) == Set(sysfsRegions))
        if sysfsRegions.isEmpty && sysfsDAX.isEmpty {
            #expect(inventory.isEmpty)
        }
        for region in inventory.regions {
            #expect(["cpu_cache", "memory_controller", "none", "unknown"].contains(region.persistenceDomain))
            for namespace in region.namespaces {
                #expect(["fsdax", "devdax", "sector", "raw", "unknown"].contains(namespace.mode))
                #expect(namespace.size > 0)
            }
        }
    }
}
