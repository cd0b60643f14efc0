#include "CBenchShims.h"

#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <libpmemobj.h>
#include <stdlib.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

void *CBenchShims_uring_create(unsigned entries) {
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
    return ring;
}

void CBenchShims_uring_destroy(void *ring) {
    io_uring_queue_exit(ring);
    free(ring);
}

int CBenchShims_uring_register_unregister(void *ring, void *buffer, size_t length) {
    struct iovec vector = {buffer, length};
    int result = io_uring_register_buffers(ring, &vector, 1);
    if (result < 0) {
        return result;
    }
    return io_uring_unregister_buffers(ring);
}

long CBenchShims_process_vm_writev_self(void *destination, const void *source, size_t length) {
    struct iovec local = {(void *)source, length};
    struct iovec remote = {destination, length};
    ssize_t written = process_vm_writev(getpid(), &local, 1, &remote, 1, 0);
    return written < 0 ? -errno : written;
}

int CBenchShims_punch_hole(int fd, long offset, long length) {
    return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) == 0 ? 0 : -errno;
}

void *CBenchShims_pmemobj_create(const char *path, size_t size) {
    return pmemobj_create(path, "daxlab-bench", size, 0600);
}

void CBenchShims_pmemobj_close(void *pool) { pmemobj_close(pool); }

int CBenchShims_pmemobj_alloc_free(void *pool, size_t size) {
    PMEMoid oid;
    if (pmemobj_alloc(pool, &oid, size, 0, NULL, NULL) != 0) {
        return -errno;
    }
    pmemobj_free(&oid);
    return 0;
}

unsigned long long CBenchShims_thread_cpu_ns(void) {
    struct timespec time;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &time);
    return (unsigned long long)time.tv_sec * 1000000000ULL + (unsigned long long)time.tv_nsec;
}
