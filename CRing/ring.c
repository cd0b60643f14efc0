#include "CRing.h"

#include <errno.h>
#include <liburing.h>
#include <stdlib.h>
#include <sys/uio.h>

void *CRing_create(unsigned entries, unsigned buffers) {
    struct io_uring *ring = malloc(sizeof(struct io_uring));
    if (ring == NULL) {
        return NULL;
    }
    int result = io_uring_queue_init(entries, ring, 0);
    if (result < 0) {
        free(ring);
        errno = -result;
        return NULL;
    }
    result = buffers == 0 ? 0 : io_uring_register_buffers_sparse(ring, buffers);
    if (result < 0) {
        io_uring_queue_exit(ring);
        free(ring);
        errno = -result;
        return NULL;
    }
    return ring;
}

void CRing_destroy(void *ring) {
    io_uring_queue_exit(ring);
    free(ring);
}

int CRing_update_buffer(void *ring, unsigned slot, void *address, size_t length) {
    struct iovec vector = {address, length};
    __u64 tag = 0;
    int result = io_uring_register_buffers_update_tag(ring, slot, &vector, &tag, 1);
    return result < 0 ? result : 0;
}

int CRing_read_fixed(void *ring, int fd, uint64_t offset, void *address, unsigned length, unsigned slot) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    if (sqe == NULL) {
        return -EBUSY;
    }
    io_uring_prep_read_fixed(sqe, fd, address, length, offset, (int)slot);
    int submitted = io_uring_submit(ring);
    if (submitted < 0) {
        return submitted;
    }
    struct io_uring_cqe *cqe;
    int waited;
    do {
        waited = io_uring_wait_cqe(ring, &cqe);
    } while (waited == -EINTR);
    if (waited < 0) {
        return waited;
    }
    int result = cqe->res;
    io_uring_cqe_seen(ring, cqe);
    return result;
}
