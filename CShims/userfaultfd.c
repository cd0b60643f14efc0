// userfaultfd for daxlab's windows: missing and write-protect faults of anonymous reservations,
// CPU and kernel faults alike, read by the fault-service thread.
#define _GNU_SOURCE
#include "CShims.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

int CShims_uffd_open(void) {
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (fd < 0 && errno == EPERM) {
        // /dev/userfaultfd (Linux 6.1): its permissions decide instead of the sysctl.
        int device = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
        if (device >= 0) {
            fd = ioctl(device, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
            int saved = errno;
            close(device);
            errno = saved;
        } else {
            errno = EPERM;
        }
    }
    if (fd < 0) {
        return -errno;
    }
    struct uffdio_api api = {.api = UFFD_API, .features = 0};
    if (ioctl(fd, UFFDIO_API, &api) != 0) {
        int saved = errno;
        close(fd);
        return -saved;
    }
    // A read of a hole maps zeros write-protected, so that the write after it is a fault too.
    if (!(api.features & UFFD_FEATURE_PAGEFAULT_FLAG_WP)) {
        close(fd);
        return -EOPNOTSUPP;
    }
    return fd;
}

int CShims_uffd_register(int fd, void *address, size_t length) {
    struct uffdio_register request = {
        .range = {.start = (uintptr_t)address, .len = length},
        .mode = UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP,
    };
    if (ioctl(fd, UFFDIO_REGISTER, &request) != 0) {
        return -errno;
    }
    uint64_t needed = (1ULL << _UFFDIO_COPY) | (1ULL << _UFFDIO_WAKE);
    return (request.ioctls & needed) == needed ? 0 : -EOPNOTSUPP;
}

int CShims_uffd_wake(int fd, void *address, size_t length) {
    struct uffdio_range range = {.start = (uintptr_t)address, .len = length};
    return ioctl(fd, UFFDIO_WAKE, &range) == 0 ? 0 : -errno;
}

int CShims_uffd_map_zeros(int fd, void *address) {
    static const char zeros[4096] __attribute__((aligned(4096)));
    struct uffdio_copy copy = {
        .dst = (uintptr_t)address, .src = (uintptr_t)zeros, .len = sizeof(zeros),
        .mode = UFFDIO_COPY_MODE_WP | UFFDIO_COPY_MODE_DONTWAKE,
    };
    return ioctl(fd, UFFDIO_COPY, &copy) == 0 ? 0 : -errno;
}

int CShims_uffd_read_faults(int fd, CShims_uffd_fault *faults, int capacity) {
    struct uffd_msg messages[64];
    if (capacity > 64) {
        capacity = 64;
    }
    ssize_t got = read(fd, messages, (size_t)capacity * sizeof(messages[0]));
    if (got < 0) {
        return -errno;
    }
    int count = 0;
    for (int index = 0; index < (int)(got / (ssize_t)sizeof(messages[0])); index++) {
        if (messages[index].event != UFFD_EVENT_PAGEFAULT) {
            continue;
        }
        uint64_t flags = messages[index].arg.pagefault.flags;
        faults[count].address = (void *)(uintptr_t)messages[index].arg.pagefault.address;
        faults[count].is_write = (flags & (UFFD_PAGEFAULT_FLAG_WRITE | UFFD_PAGEFAULT_FLAG_WP)) != 0;
        count++;
    }
    return count;
}
