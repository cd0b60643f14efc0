// CRing: liburing, as the DAX layer uses it for the kernel's own pins and writes. A ring with a
// sparse fixed-buffer table: registering a window range in a slot is pin_user_pages(FOLL_WRITE |
// FOLL_LONGTERM) on its pages; IORING_OP_READ_FIXED into it is the kernel writing into them.
// Thin wrappers only; every function returns 0 (or a count) or -errno.
#ifndef CRING_H
#define CRING_H

#include <stddef.h>
#include <stdint.h>

/// An io_uring with `entries` slots and a sparse table of `buffers` fixed buffers (none for 0);
/// NULL with errno set (EPERM or ENOSYS where io_uring is refused).
void *CRing_create(unsigned entries, unsigned buffers);
void CRing_destroy(void *ring);

/// Registers `length` bytes at `address` in buffer slot `slot` (replacing what was there): the
/// kernel pins the pages. An empty slot (`address` NULL, `length` 0) unpins them.
int CRing_update_buffer(void *ring, unsigned slot, void *address, size_t length);

/// IORING_OP_READ_FIXED of `length` bytes at `offset` of `fd` into `address` (inside the buffer
/// in `slot`), submitted and waited for. Returns the bytes read, or -errno (-EFAULT: the slot no
/// longer holds that address).
int CRing_read_fixed(void *ring, int fd, uint64_t offset, void *address, unsigned length, unsigned slot);

#endif
