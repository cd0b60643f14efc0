// The floor of a window whose faults userfaultfd delivers: a handler thread that mmaps the
// faulting page of a file and wakes the faulting thread (CBenchShims_uffd_mmap_touch).
#include "CBenchShims.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>

struct uffd_floor {
    int uffd;
    int stop[2];  // a pipe: a byte on it ends the handler
    char *window;
    int fd;
    int error;  // the handler's first failure (an errno), 0 if none
    int closed;  // the handler closed `uffd` (a failure: the faults go on as plain anonymous ones)
};

/// Ends the handler on a failure it cannot go on from: records it and closes the userfaultfd,
/// which wakes every thread waiting on a fault and unregisters the range, so the measuring thread
/// is never left asleep.
static void *uffd_floor_fail(struct uffd_floor *floor, int error) {
    if (floor->error == 0) floor->error = error;
    close(floor->uffd);
    floor->closed = 1;
    return NULL;
}

/// A userfaultfd: the system call, or where it is refused (EPERM: vm.unprivileged_userfaultfd is
/// 0 and the process lacks CAP_SYS_PTRACE) /dev/userfaultfd's USERFAULTFD_IOC_NEW, which the
/// device's permissions govern instead. Non-blocking: poll(2) on a blocking userfaultfd answers
/// POLLERR at once. The descriptor, or -errno (the system call's).
static int uffd_open(void) {
    int uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (uffd >= 0) return uffd;
    int error = errno;
#ifdef USERFAULTFD_IOC_NEW
    if (error == EPERM) {
        int device = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
        if (device >= 0) {
            uffd = ioctl(device, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
            close(device);
            if (uffd >= 0) return uffd;
        }
    }
#endif
    return -error;
}

/// The handler: each missing-page fault gets the file's page mapped over it (MAP_FIXED, which
/// replaces the registered page; MAP_POPULATE fills its page-table entry), then a wake-up for the
/// faulting thread, whose retried access finds the mapping.
static void *uffd_floor_handler(void *argument) {
    struct uffd_floor *floor = argument;
    struct pollfd descriptors[2] = {{.fd = floor->uffd, .events = POLLIN}, {.fd = floor->stop[0], .events = POLLIN}};
    struct uffd_msg messages[16];
    // As daxlab's fault service does: after a fault, read without sleeping for 50 µs before
    // sleeping in poll again (so the floor and the row pay the same wake-ups).
    struct timespec last;
    clock_gettime(CLOCK_MONOTONIC, &last);
    for (;;) {
        ssize_t got = read(floor->uffd, messages, sizeof(messages));
        if (got < 0 && errno == EAGAIN) {
            struct timespec now;
            clock_gettime(CLOCK_MONOTONIC, &now);
            long idle = (now.tv_sec - last.tv_sec) * 1000000000L + (now.tv_nsec - last.tv_nsec);
            if (idle < 50000) {
                __builtin_ia32_pause();
                continue;
            }
            if (poll(descriptors, 2, -1) < 0) {
                if (errno == EINTR) continue;
                return uffd_floor_fail(floor, errno);
            }
            if (descriptors[1].revents != 0) return NULL;
            if ((descriptors[0].revents & (POLLERR | POLLHUP | POLLNVAL)) != 0) return uffd_floor_fail(floor, EIO);
            clock_gettime(CLOCK_MONOTONIC, &last);
            continue;
        }
        if (got < 0) {
            if (errno == EINTR) continue;
            return uffd_floor_fail(floor, errno);
        }
        clock_gettime(CLOCK_MONOTONIC, &last);
        for (size_t index = 0; index < (size_t)got / sizeof(messages[0]); index++) {
            if (messages[index].event != UFFD_EVENT_PAGEFAULT) continue;
            char *page = (char *)(uintptr_t)(messages[index].arg.pagefault.address & ~(uint64_t)4095);
            struct uffdio_range range = {.start = (uintptr_t)page, .len = 4096};
            if (mmap(page, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED | MAP_POPULATE, floor->fd,
                     page - floor->window) == MAP_FAILED) {
                // Let the toucher go on (a zero page), and report the failure.
                if (floor->error == 0) floor->error = errno;
                struct uffdio_zeropage zero = {.range = range, .mode = 0};
                ioctl(floor->uffd, UFFDIO_ZEROPAGE, &zero);
                continue;
            }
            ioctl(floor->uffd, UFFDIO_WAKE, &range);
        }
    }
}

double CBenchShims_uffd_mmap_touch(int fd, size_t pages) {
    size_t length = pages * 4096;
    if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, (off_t)length) != 0) return -errno;
    struct uffd_floor floor = {.uffd = uffd_open(), .fd = fd};
    if (floor.uffd < 0) return floor.uffd;
    double result = 0;
    struct uffdio_api api = {.api = UFFD_API, .features = 0};
    if (ioctl(floor.uffd, UFFDIO_API, &api) != 0 || pipe2(floor.stop, O_CLOEXEC) != 0) {
        result = -errno;
        close(floor.uffd);
        return result;
    }
    floor.window = mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    pthread_t handler;
    int started = -1;
    if (floor.window == MAP_FAILED) {
        result = -errno;
        floor.window = NULL;
        goto out;
    }
    madvise(floor.window, length, MADV_NOHUGEPAGE);
    struct uffdio_register registration = {
        .range = {.start = (uintptr_t)floor.window, .len = length}, .mode = UFFDIO_REGISTER_MODE_MISSING};
    if (ioctl(floor.uffd, UFFDIO_REGISTER, &registration) != 0) {
        result = -errno;
        goto out;
    }
    started = pthread_create(&handler, NULL, uffd_floor_handler, &floor);
    if (started != 0) {
        result = -started;
        goto out;
    }
    struct timespec start, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (size_t page = 0; page < pages; page++) {
        ((volatile char *)floor.window)[page * 4096] = 1;
    }
    clock_gettime(CLOCK_MONOTONIC, &end);
    result = ((end.tv_sec - start.tv_sec) * 1e9 + (end.tv_nsec - start.tv_nsec)) / (double)pages;
out:
    if (started == 0) {
        char byte = 0;
        (void)!write(floor.stop[1], &byte, 1);
        pthread_join(handler, NULL);
        if (floor.error != 0) result = -floor.error;
    }
    if (floor.window != NULL) munmap(floor.window, length);
    close(floor.stop[0]);
    close(floor.stop[1]);
    if (!floor.closed) close(floor.uffd);
    return result;
}
