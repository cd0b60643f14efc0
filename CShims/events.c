// An eventfd: a counter another thread bumps to wake a thread that polls it.
#include "CShims.h"

#include <errno.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <unistd.h>

int CShims_event_open(void) {
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    return fd >= 0 ? fd : -errno;
}

void CShims_event_signal(int fd) {
    uint64_t one = 1;
    (void)!write(fd, &one, sizeof(one));  // (EAGAIN: the counter is full, a wake-up is due anyway)
}

void CShims_event_drain(int fd) {
    uint64_t count;
    (void)!read(fd, &count, sizeof(count));  // (EAGAIN: nothing was signalled)
}
