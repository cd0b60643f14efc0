// CVerbs: libibverbs, as daxlab's RDMA devices use it. One port is one process's loopback RDMA
// path on one device: a protection domain, a completion queue and two reliable-connected queue
// pairs connected to each other over the port's own GID, so an RDMA WRITE posted on the first is
// executed by the device (soft-RoCE: the kernel's rdma_rxe) into a memory region registered in
// the same domain. Thin wrappers only; every function returns 0 (or a count) or -errno.
#ifndef CVERBS_H
#define CVERBS_H

#include <stddef.h>
#include <stdint.h>

typedef struct CVerbs_port CVerbs_port;

/// The names of the RDMA devices here, separated by single spaces, in `buffer` (`size` bytes).
/// Returns how many there are (0: none, as on a kernel without InfiniBand), or -errno.
int CVerbs_device_names(char *buffer, size_t size);

/// Opens device `name` (NULL: the first), port 1, with the pair of queue pairs connected and a
/// 4 KiB source buffer registered for the writes. Returns NULL with a one-line reason in
/// `reason` (`reason_size` bytes) and errno set.
CVerbs_port *CVerbs_open(const char *name, char *reason, size_t reason_size);
void CVerbs_close(CVerbs_port *port);

/// The device's name, and the GID index the queue pairs use.
const char *CVerbs_name(const CVerbs_port *port);
int CVerbs_gid_index(const CVerbs_port *port);

/// The 4 KiB (page-aligned) buffer RDMA WRITEs are sent from.
void *CVerbs_source(CVerbs_port *port);

/// Registers `length` bytes at `address` for local and remote writes (ibv_reg_mr, which pins the
/// pages with FOLL_LONGTERM), with IBV_ACCESS_ON_DEMAND too when `on_demand` is non-zero. Sets
/// `*region` (for CVerbs_deregister) and `*rkey`. Returns 0 or -errno (-EOPNOTSUPP: the kernel
/// will not pin these pages for long, as on fs-dax; -EFAULT: not mapped).
int CVerbs_register(CVerbs_port *port, void *address, size_t length, int on_demand, void **region, uint32_t *rkey);

/// ibv_dereg_mr: the kernel unpins the pages once the transfers in flight on them finish; later
/// writes to the region's rkey fail. Returns 0 or -errno.
int CVerbs_deregister(void *region);

/// An RDMA WRITE of `length` bytes of the source buffer to `remote` in the region with `rkey`,
/// posted and waited for (its work completion). Returns `length` once it has landed; -EFAULT when
/// the completion is a remote access error (no such region any more: nothing landed); -EIO for
/// any other error completion and -ETIMEDOUT after 30 s without one (the write may or may not
/// have landed: a retry-exceeded error can follow a write whose acknowledgement was lost);
/// -ENOTCONN when the port can no longer write. After an error the queue pairs are reset and
/// connected again, or destroyed if that fails: nothing posted executes after the return.
/// `*status` gets the completion's status (0 for success or none).
int CVerbs_write(CVerbs_port *port, uint64_t remote, uint32_t rkey, uint32_t length, int *status);

/// The device's answer to an on-demand-paging registration of one anonymous page: 0 (accepted),
/// or -errno (-EINVAL or -EOPNOTSUPP: the device has no ODP). `*capable` gets whether the device
/// advertises ODP for RC RDMA WRITEs (ibv_query_device_ex).
int CVerbs_probe_on_demand(CVerbs_port *port, int *capable);

#endif
