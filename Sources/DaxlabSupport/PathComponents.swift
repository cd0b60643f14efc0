/// The two halves of a path as `dirname` and `basename` split it, for code that puts a file
/// beside another (a scratch file, a temporary one renamed over its target).
public enum PathComponents {
    /// The directory part: "." for a bare name, "/" for a name in the root.
    public static func directory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }

    /// The part after the last "/" (the whole path when there is none).
    public static func name(of path: String) -> String {
        path.lastIndex(of: "/").map { String(path[path.index(after: $0)...]) } ?? path
    }
}
