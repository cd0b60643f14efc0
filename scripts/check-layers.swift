// Checks the package's module graph against its layering (run by `make check-layers`, part of
// `make test`): reads `swift package dump-package` on stdin and the targets' sources, and fails
// when
//   - a target depends on a module it never imports (an edge the layer does not use),
//   - a target imports a module of the package, or a product, it does not depend on (an edge
//     that only works because SwiftPM leaks transitive modules),
//   - a library target depends on a target above it in the layer order.
// Usage: swift package dump-package | swift scripts/check-layers.swift
import Foundation

/// Bottom to top, as Package.swift's comment draws them. A library target may depend only on
/// targets before it.
let layers = [
    "CShims", "CRing", "CVerbs", "DaxlabSupport", "Pmem", "DaxFS", "CrashCampaign", "DAX", "DMA", "Race", "CBenchShims", "Bench",
    "CDaxlab", "LibDaxlab", "DaxlabCLI", "daxlab",
]

struct Manifest: Decodable {
    struct Target: Decodable {
        var name: String
        var type: String
        var path: String?
        var dependencies: [[String: [Dependency?]]]
    }
    enum Dependency: Decodable {
        case name(String)
        case other
        init(from decoder: Decoder) throws {
            let container = try decoder.singleValueContainer()
            if let name = try? container.decode(String.self) { self = .name(name) } else { self = .other }
        }
    }
    var targets: [Target]
}

let input = FileHandle.standardInput.readDataToEndOfFile()
let manifest: Manifest
do { manifest = try JSONDecoder().decode(Manifest.self, from: input) } catch {
    FileHandle.standardError.write(Data("check-layers: cannot read dump-package output: \(error)\n".utf8))
    exit(2)
}
let targets = Dictionary(uniqueKeysWithValues: manifest.targets.map { ($0.name, $0) })
var problems: [String] = []

/// The modules a target's sources import (Swift `import`, any attributes before it) or, for a C
/// target, the C targets its sources include.
func imports(of target: Manifest.Target) -> Set<String> {
    let folder = target.path ?? (target.type == "test" ? "Tests/\(target.name)" : "Sources/\(target.name)")
    guard let files = FileManager.default.enumerator(atPath: folder) else { return [] }
    var found: Set<String> = []
    for case let file as String in files where file.hasSuffix(".swift") {
        guard let text = try? String(contentsOfFile: "\(folder)/\(file)", encoding: .utf8) else { continue }
        for line in text.split(separator: "\n") {
            let words = line.split(separator: " ").filter { !$0.hasPrefix("@") }
            if words.count >= 2, words[0] == "import" { found.insert(String(words[1])) }
        }
    }
    return found
}

for target in manifest.targets {
    // Each entry is {"byName" | "target" | "product": [name, package?, ...]}: the module is the name.
    let dependencies = target.dependencies.compactMap { entry -> String? in
        guard case .name(let name)? = entry.values.first?.first else { return nil }
        return name
    }
    let used = imports(of: target)
    guard target.type != "system" else { continue }
    for dependency in dependencies where !used.contains(dependency) {
        if targets[dependency]?.type == "executable" { continue }  // built for the tests to run, not imported
        problems.append("\(target.name) depends on \(dependency) but never imports it")
    }
    let packageModules = Set(manifest.targets.map(\.name))
    for module in used.sorted() where packageModules.contains(module) && !dependencies.contains(module) && module != target.name {
        problems.append("\(target.name) imports \(module) without depending on it")
    }
    let isTestSide = target.type == "test" || (target.path ?? "").hasPrefix("Tests/")
    if isTestSide {
        continue
    } else if let rank = layers.firstIndex(of: target.name) {
        for dependency in dependencies {
            if let other = layers.firstIndex(of: dependency), other >= rank {
                problems.append("\(target.name) depends on \(dependency), which is not below it")
            }
        }
    } else {
        problems.append("\(target.name) has no place in the layer order (scripts/check-layers.swift)")
    }
}

if problems.isEmpty {
    print("check-layers: \(manifest.targets.count) targets, every dependency used and in layer order")
} else {
    for problem in problems { print("check-layers: \(problem)") }
    exit(1)
}
