// process_vm_readv(2) on the calling process: a copy the kernel makes, faulting the source in as
// a kernel access does (a _GNU_SOURCE function).
#include "CShims.h"

#include <errno.h>
#include <unistd.h>
#include <sys/uio.h>

long CShims_process_vm_readv_self(void *destination, const void *source, size_t length) {
    struct iovec local = {.iov_base = destination, .iov_len = length};
    struct iovec remote = {.iov_base = (void *)source, .iov_len = length};
    ssize_t copied = process_vm_readv(getpid(), &local, 1, &remote, 1, 0);
    return copied >= 0 ? (long)copied : -errno;
}
