// CBenchShims: the kernel's and libraries' own paths that `daxlab bench` measures daxlab
// against (liburing buffer registration, libpmemobj, process_vm_writev, a SIGSEGV-and-mmap window, a
// userfaultfd-and-mmap window). Linked only by the Bench target, so the
// file system and the DAX layer do not carry these libraries.
#ifndef CBENCHSHIMS_H
#define CBENCHSHIMS_H

#include <stddef.h>
#include <stdint.h>

/// io_uring_register_buffers with one buffer, then io_uring_unregister_buffers, on a ring made by
/// CRing_create(entries, 0): the kernel's pin_user_pages + unpin of `length` bytes at `buffer`.
/// 0 or -errno.
int CBenchShims_uring_register_unregister(void *ring, void *buffer, size_t length);

/// process_vm_writev of `length` bytes from `source` to `destination` in this very process
/// (the kernel pins the destination page with GUP inside). Returns bytes written or -errno.
long CBenchShims_process_vm_writev_self(void *destination, const void *source, size_t length);

/// fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE); 0 or -errno.
int CBenchShims_punch_hole(int fd, long offset, long length);

/// The floor of a userspace fault-and-map window: reserves `pages` pages PROT_NONE, installs a
/// SIGSEGV handler (the previous one is restored before returning) that mmaps the faulting page
/// of `fd` (MAP_SHARED | MAP_FIXED) and returns, then stores one byte into each page. The pages
/// of `fd` are punched out first (untimed), so each store also allocates. Returns the ns per
/// page of the stores, or -errno.
double CBenchShims_sigsegv_mmap_touch(int fd, size_t pages);

/// The same floor with userfaultfd delivering the faults: reserves `pages` pages of anonymous
/// memory registered with a userfaultfd (UFFDIO_REGISTER_MODE_MISSING), whose handler thread
/// polls it, mmaps the faulting page of `fd` over each missing page (MAP_SHARED | MAP_FIXED |
/// MAP_POPULATE) and wakes the faulting thread (UFFDIO_WAKE); then stores one byte into each
/// page, in order. The pages of `fd` are punched out first (untimed), so each store also
/// allocates. Returns the ns per page of the stores, or -errno: userfaultfd(2) refused (EPERM
/// where /dev/userfaultfd is no way in either, ENOSYS), or a failure of the handler's.
double CBenchShims_uffd_mmap_touch(int fd, size_t pages);

/// A libpmemobj pool at `path` (created, `size` bytes); NULL on failure.
void *CBenchShims_pmemobj_create(const char *path, size_t size);
void CBenchShims_pmemobj_close(void *pool);
/// pmemobj_alloc of `size` bytes then pmemobj_free: one transactional allocation and free. 0 or -errno.
int CBenchShims_pmemobj_alloc_free(void *pool, size_t size);
/// pmemobj_zalloc (zeroed, as a daxlab block is) of `size` bytes then pmemobj_free. 0 or -errno.
int CBenchShims_pmemobj_zalloc_free(void *pool, size_t size);

/// The persist work of `count` block allocations and frees at the floor, with libpmem's own
/// primitives: a 4-byte pointer stored and persisted, the pointer cleared and persisted, and the
/// 4 KiB block zeroed with non-temporal stores (`blocks` holds `batch` blocks, used in turn). No
/// bookkeeping at all. Two arrangements of the zeroing: `underWriteBack` 0 drains it once per
/// `batch` blocks; 1 zeroes each block between the first pointer's flush and its drain, so that
/// the stores overlap the pointer's write-back (as daxlab's fault does). Which is faster depends
/// on the CPU: the bench measures both and takes the faster as the floor.
void CBenchShims_persist_floor(uint32_t *slot, char *blocks, size_t batch, uint32_t value, size_t count,
                               int underWriteBack);

/// Thread CPU time in ns (CLOCK_THREAD_CPUTIME_ID).
unsigned long long CBenchShims_thread_cpu_ns(void);

#endif
