/// The granule every daxlab size is a multiple of, under one name in every layer: the x86-64
/// base page (what the MMU maps, what `mmap` and `pin_user_pages` work in), and so the file
/// system's block, which is one page by design (a block maps as one page of a file's window and
/// is pinned as one). The media's own alignment (a device-dax device's 2 MiB) is the mapping's
/// `alignment`, not this.
///
/// Inlinable and computed, so every use compiles to the constant, as a literal would: a stored
/// global of another module is a load behind an addressor, and the fault and pin paths multiply
/// by it.
@inlinable public var pageSize: Int { 4096 }
