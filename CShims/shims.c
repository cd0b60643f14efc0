#include "CShims.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <ucontext.h>
#include <pthread.h>
#include <sched.h>
#include <unistd.h>
#include <linux/futex.h>
#include <linux/magic.h>
#include <linux/membarrier.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/vfs.h>

const int CShims_MAP_SYNC = MAP_SYNC;
const int CShims_MAP_SHARED_VALIDATE = MAP_SHARED_VALIDATE;
const int CShims_SEEK_DATA = SEEK_DATA;
const int CShims_SEEK_HOLE = SEEK_HOLE;
const uint64_t CShims_STATX_ATTR_DAX = STATX_ATTR_DAX;
const long CShims_TMPFS_MAGIC = TMPFS_MAGIC;
const long CShims_RAMFS_MAGIC = RAMFS_MAGIC;

int CShims_statx_attributes(int fd, uint64_t *attributes, uint64_t *attributes_mask) {
    struct statx stx;
    if (statx(fd, "", AT_EMPTY_PATH, STATX_BASIC_STATS, &stx) != 0) {
        return -1;
    }
    *attributes = stx.stx_attributes;
    *attributes_mask = stx.stx_attributes_mask;
    return 0;
}

unsigned int CShims_dev_major(dev_t device) { return major(device); }
unsigned int CShims_dev_minor(dev_t device) { return minor(device); }

long CShims_fstatfs_type(int fd) {
    struct statfs buffer;
    if (fstatfs(fd, &buffer) != 0) {
        return -1;
    }
    return (long)buffer.f_type;
}

int CShims_current_cpu_slow(void) {
    int cpu = sched_getcpu();
    return cpu < 0 ? 0 : cpu;
}

__thread int CShims_thread_index_plus_one;

enum { thread_index_limit = 4096 };
static pthread_mutex_t thread_index_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned char thread_index_taken[thread_index_limit];
static pthread_key_t thread_index_key;
static pthread_once_t thread_index_once = PTHREAD_ONCE_INIT;

/// At the thread's exit: its index is free again, and the thread (in what is left of its exit)
/// has none.
static void thread_index_release(void *value) {
    int index = (int)(intptr_t)value - 1;
    pthread_mutex_lock(&thread_index_lock);
    thread_index_taken[index] = 0;
    pthread_mutex_unlock(&thread_index_lock);
    CShims_thread_index_plus_one = CSHIMS_NO_THREAD_INDEX + 1;
}

static int thread_index_key_made;

static void thread_index_key_create(void) {
    thread_index_key_made = pthread_key_create(&thread_index_key, thread_index_release) == 0;
}

/// CShims_thread_index's first call on a thread: the lowest free index, registered with the key
/// so that the thread's exit gives it back (none if there is no key: the process used up its
/// keys; or the key cannot hold it).
int CShims_thread_index_slow(void) {
    pthread_once(&thread_index_once, thread_index_key_create);
    int index = CSHIMS_NO_THREAD_INDEX;
    pthread_mutex_lock(&thread_index_lock);
    for (int i = 0; thread_index_key_made && i < thread_index_limit; i++) {
        if (thread_index_taken[i]) continue;
        if (pthread_setspecific(thread_index_key, (void *)(intptr_t)(i + 1)) == 0) {
            thread_index_taken[i] = 1;
            index = i;
        }
        break;
    }
    pthread_mutex_unlock(&thread_index_lock);
    CShims_thread_index_plus_one = index + 1;
    return index;
}

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

int CShims_bind_to_cpu(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return sched_setaffinity(0, sizeof(set), &set) == 0 ? 0 : -errno;
}

int CShims_unbind_cpu(void) {
    cpu_set_t set;
    CPU_ZERO(&set);
    long count = sysconf(_SC_NPROCESSORS_ONLN);
    for (long cpu = 0; cpu < count && cpu < CPU_SETSIZE; cpu++) {
        CPU_SET(cpu, &set);
    }
    return sched_setaffinity(0, sizeof(set), &set) == 0 ? 0 : -errno;
}

int CShims_fallocate(int fd, long offset, long length) {
    return fallocate(fd, 0, offset, length) == 0 ? 0 : -errno;
}

int CShims_blkid_probe_bytes(const void *data, size_t length, char *type, size_t type_length) {
    int fd = memfd_create("daxlab-probe", MFD_CLOEXEC);
    if (fd < 0) {
        return -errno;
    }
    size_t written = 0;
    while (written < length) {
        ssize_t count = write(fd, (const char *)data + written, length - written);
        if (count < 0) {
            int error = errno;
            close(fd);
            return -error;
        }
        written += (size_t)count;
    }
    int result = 0;
    blkid_probe probe = blkid_new_probe();
    if (probe == NULL) {
        close(fd);
        return -ENOMEM;
    }
    if (blkid_probe_set_device(probe, fd, 0, (blkid_loff_t)length) != 0) {
        result = -EIO;
    } else {
        blkid_probe_enable_superblocks(probe, 1);
        blkid_probe_set_superblocks_flags(probe, BLKID_SUBLKS_TYPE);
        blkid_probe_enable_partitions(probe, 1);
        blkid_probe_set_partitions_flags(probe, BLKID_PARTS_MAGIC);
        int found = blkid_do_safeprobe(probe);
        if (found == 0 || found == -2) {
            const char *value = NULL;
            if (blkid_probe_lookup_value(probe, "TYPE", &value, NULL) != 0 &&
                blkid_probe_lookup_value(probe, "PTTYPE", &value, NULL) != 0) {
                value = found == -2 ? "ambivalent" : "unknown";
            }
            snprintf(type, type_length, "%s", value);
            result = 1;
        } else if (found < 0) {
            result = -EIO;
        }
    }
    blkid_free_probe(probe);
    close(fd);
    return result;
}

int CShims_flush_stdout(void) {
    errno = 0;
    if (fflush(stdout) != 0 || ferror(stdout)) {
        return errno != 0 ? errno : EIO;
    }
    return 0;
}

int CShims_die_with_parent(int signal) {
    return prctl(PR_SET_PDEATHSIG, (unsigned long)signal, 0, 0, 0) == 0 ? 0 : -errno;
}

const int CShims_O_DIRECT = O_DIRECT;

int CShims_memfd(const char *name) {
    int fd = memfd_create(name, MFD_CLOEXEC);
    return fd >= 0 ? fd : -errno;
}

static CShims_window_fault_callback window_fault_callback;
static struct sigaction previous_segv;

static void window_fault_handler(int signal_number, siginfo_t *info, void *context) {
    int is_write = 1;
#if defined(__x86_64__)
    ucontext_t *ucontext = context;
    is_write = (ucontext->uc_mcontext.gregs[REG_ERR] & 2) != 0;
#endif
    int decision = window_fault_callback != NULL ? window_fault_callback(info->si_addr, is_write) : CShims_FAULT_NOT_OURS;
    if (decision == CShims_FAULT_MAPPED) {
        return;
    }
    if (decision == CShims_FAULT_SIGBUS) {
        raise(SIGBUS);
        return;
    }
    // Not a window: whoever handled SIGSEGV before us, or the default action (the access is
    // retried with it restored, and the process dies as it would have).
    if (previous_segv.sa_flags & SA_SIGINFO) {
        if (previous_segv.sa_sigaction != NULL) {
            previous_segv.sa_sigaction(signal_number, info, context);
            return;
        }
    } else if (previous_segv.sa_handler != SIG_DFL && previous_segv.sa_handler != SIG_IGN) {
        previous_segv.sa_handler(signal_number);
        return;
    }
    signal(SIGSEGV, SIG_DFL);
}

int CShims_install_window_fault_handler(CShims_window_fault_callback callback) {
    static int installed;
    window_fault_callback = callback;
    if (__atomic_exchange_n(&installed, 1, __ATOMIC_ACQ_REL)) {
        return 0;
    }
    struct sigaction action;
    memset(&action, 0, sizeof(action));
    action.sa_sigaction = window_fault_handler;
    action.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&action.sa_mask);
    return sigaction(SIGSEGV, &action, &previous_segv) == 0 ? 0 : -errno;
}

int CShims_set_thread_name(const char *name) {
    return prctl(PR_SET_NAME, (unsigned long)name, 0, 0, 0) == 0 ? 0 : -errno;
}

#if defined(__x86_64__)
#include <nmmintrin.h>

__attribute__((target("sse4.2")))
uint32_t CShims_crc32c_hardware(uint32_t crc, const void *bytes, size_t count) {
    const unsigned char *p = bytes;
    uint64_t wide = crc;
    for (; count >= 8; count -= 8, p += 8) {
        uint64_t word;
        memcpy(&word, p, 8);
        wide = _mm_crc32_u64(wide, word);
    }
    uint32_t narrow = (uint32_t)wide;
    for (; count > 0; count--, p++) narrow = _mm_crc32_u8(narrow, *p);
    return narrow;
}

int CShims_has_crc32c_instruction(void) { return __builtin_cpu_supports("sse4.2") ? 1 : 0; }
#else
uint32_t CShims_crc32c_hardware(uint32_t crc, const void *bytes, size_t count) {
    (void)bytes; (void)count;
    return crc;
}

int CShims_has_crc32c_instruction(void) { return 0; }
#endif

int CShims_futex_wait(void *word, uint32_t expected) {
    return syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, expected, NULL, NULL, 0) == 0 ? 0 : errno;
}

int CShims_futex_wake(void *word, int32_t count) {
    long woken = syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, count, NULL, NULL, 0);
    return woken < 0 ? -errno : (int)woken;
}
