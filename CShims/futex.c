// futex(2) wait and wake, for the pthread-free locks.
#include "CShims.h"

#include <errno.h>
#include <unistd.h>
#include <linux/futex.h>
#include <sys/syscall.h>

int CShims_futex_wait(void *word, uint32_t expected) {
    return syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, expected, NULL, NULL, 0) == 0 ? 0 : errno;
}

int CShims_futex_wake(void *word, int32_t count) {
    long woken = syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, count, NULL, NULL, 0);
    return woken < 0 ? -errno : (int)woken;
}
