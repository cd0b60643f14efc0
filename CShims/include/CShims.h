// CShims: the C floor of daxlab.
//
// This header re-exports libpmem, libndctl and libdaxctl to Swift, and adds prefixed wrappers
// only for what Swift cannot import or call directly: flag macros from headers that need
// _GNU_SOURCE, and statx(2). Nothing here decides anything; the Swift layers above do.
#ifndef CSHIMS_H
#define CSHIMS_H

#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>

#include <libpmem.h>
#include <ndctl/libndctl.h>
#include <daxctl/libdaxctl.h>

/// mmap(2) flags that glibc defines only under _GNU_SOURCE.
extern const int CShims_MAP_SYNC;
extern const int CShims_MAP_SHARED_VALIDATE;

/// statx(2) attribute bit: the file is currently accessed through DAX (Linux 5.8+).
extern const uint64_t CShims_STATX_ATTR_DAX;

/// statfs(2) f_type of tmpfs.
extern const long CShims_TMPFS_MAGIC;

/// major(3) and minor(3) of a dev_t (macros in glibc).
unsigned int CShims_dev_major(dev_t device);
unsigned int CShims_dev_minor(dev_t device);

/// fstatfs(2)'s f_type for fd (TMPFS_MAGIC, EXT4_SUPER_MAGIC, ...), or -1 with errno set.
long CShims_fstatfs_type(int fd);

/// sched_getcpu(3): the CPU the calling thread runs on now, or -1 (a _GNU_SOURCE function).
int CShims_sched_getcpu(void);

/// Binds the calling thread to `cpu` (sched_setaffinity); 0 or -errno.
int CShims_bind_to_cpu(int cpu);

/// Lets the calling thread run on every online CPU again; 0 or -errno.
int CShims_unbind_cpu(void);

/// Thread CPU time in ns (CLOCK_THREAD_CPUTIME_ID).
unsigned long long CShims_thread_cpu_ns(void);

/// statx(fd, "", AT_EMPTY_PATH) returning the attribute bits and the mask of bits the kernel
/// supports. Returns 0, or -1 with errno set.
int CShims_statx_attributes(int fd, uint64_t *attributes, uint64_t *attributes_mask);


// MARK: Kernel and library baselines for `daxlab bench` (thin wrappers; each returns 0 or -errno).

/// An io_uring instance with `entries` slots; NULL on failure (errno set).
void *CShims_uring_create(unsigned entries);
void CShims_uring_destroy(void *ring);
/// io_uring_register_buffers with one buffer, then io_uring_unregister_buffers: the kernel's
/// pin_user_pages + unpin of `length` bytes at `buffer`.
int CShims_uring_register_unregister(void *ring, void *buffer, size_t length);

/// process_vm_writev of `length` bytes from `source` to `destination` in this very process
/// (the kernel pins the destination page with GUP inside). Returns bytes written or -errno.
long CShims_process_vm_writev_self(void *destination, const void *source, size_t length);

/// fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE).
int CShims_punch_hole(int fd, long offset, long length);

/// A libpmemobj pool at `path` (created, `size` bytes); NULL on failure.
void *CShims_pmemobj_create(const char *path, size_t size);
void CShims_pmemobj_close(void *pool);
/// pmemobj_alloc of `size` bytes then pmemobj_free: one transactional allocation and free.
int CShims_pmemobj_alloc_free(void *pool, size_t size);

#endif
