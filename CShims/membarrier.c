// membarrier(2): the expedited private barrier behind the asymmetric fence.
#include "CShims.h"

#include <errno.h>
#include <unistd.h>
#include <linux/membarrier.h>
#include <sys/syscall.h>

int CShims_membarrier_register(void) {
    return syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0 ? 0 : -errno;
}

int CShims_membarrier_offers_private_expedited(void) {
    long commands = syscall(SYS_membarrier, MEMBARRIER_CMD_QUERY, 0, 0);
    return commands >= 0 && (commands & MEMBARRIER_CMD_PRIVATE_EXPEDITED) != 0;
}

int CShims_membarrier(void) {
    return syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) == 0 ? 0 : -errno;
}
