// CShims: the C floor of daxlab.
//
// This header re-exports libpmem, libndctl and libdaxctl to Swift, and adds prefixed wrappers
// only for what Swift cannot import or call directly: flag macros from headers that need
// _GNU_SOURCE, variadic calls, and statx(2). Nothing here decides anything; the Swift layers
// above do. The kernel and library baselines of `daxlab bench` live in CBenchShims.
#ifndef CSHIMS_H
#define CSHIMS_H

#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>
#include <pthread.h>

#include <libpmem.h>
#include <ndctl/libndctl.h>
#include <daxctl/libdaxctl.h>
#include <blkid/blkid.h>

/// mmap(2) flags that glibc defines only under _GNU_SOURCE.
extern const int CShims_MAP_SYNC;
extern const int CShims_MAP_SHARED_VALIDATE;

/// lseek(2) whences that glibc defines only under _GNU_SOURCE: the next data, the next hole.
extern const int CShims_SEEK_DATA;
extern const int CShims_SEEK_HOLE;

/// statx(2) attribute bit: the file is currently accessed through DAX (Linux 5.8+).
extern const uint64_t CShims_STATX_ATTR_DAX;

/// statfs(2) f_type of tmpfs.
extern const long CShims_TMPFS_MAGIC;
/// statfs(2) f_type of ramfs (an initramfs's root).
extern const long CShims_RAMFS_MAGIC;

/// major(3) and minor(3) of a dev_t (macros in glibc).
unsigned int CShims_dev_major(dev_t device);
unsigned int CShims_dev_minor(dev_t device);

/// fstatfs(2)'s f_type for fd (TMPFS_MAGIC, EXT4_SUPER_MAGIC, ...), or -1 with errno set.
long CShims_fstatfs_type(int fd);

/// sched_getcpu(3), 0 where it fails (a _GNU_SOURCE function).
int CShims_current_cpu_slow(void);

#if defined(__x86_64__) && defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 35))
#include <sys/rseq.h>
#define CSHIMS_RSEQ_CPU 1
#endif

/// The CPU the calling thread runs on now, the hint that spreads per-CPU structures (allocator
/// shards, lease slots, batch pools) so threads on different CPUs rarely share a cache line. A
/// hint: the thread may move at once. Inline, from the thread's rseq area, which the kernel keeps
/// current and glibc (2.35 and later) registers for every thread: one load, where sched_getcpu is
/// a call through the PLT that reads the same field (about 3.5 ns on the development VM, and the
/// pin path asks three times). Falls back to sched_getcpu where rseq is not registered.
static inline __attribute__((always_inline)) int CShims_current_cpu(void) {
#ifdef CSHIMS_RSEQ_CPU
    if (__rseq_size > 0) {
        char *thread;
        __asm__("mov %%fs:0, %0" : "=r"(thread));  // the thread pointer (x86-64: %fs base)
        const struct rseq *area = (const struct rseq *)(thread + __rseq_offset);
        int cpu = (int)__atomic_load_n(&area->cpu_id, __ATOMIC_RELAXED);
        if (cpu >= 0) return cpu;
    }
#endif
    return CShims_current_cpu_slow();
}

/// The calling thread's small index: 0, 1, 2, … in the order threads first ask, the lowest free
/// one, given back when the thread exits (a pthread key's destructor) and then reused, so live
/// threads never share one and a process's indices stay about as many as its live threads. Per-
/// thread structures (the batch pool's cells) index by it. Inline: one thread-local load once
/// assigned. Past 4096 live threads, and on a thread that is exiting, the answer is
/// `CSHIMS_NO_THREAD_INDEX`, which indexes nothing.
#define CSHIMS_NO_THREAD_INDEX 0x3FFFFFFF
extern __thread int CShims_thread_index_plus_one;
int CShims_thread_index_slow(void);
static inline __attribute__((always_inline)) int CShims_thread_index(void) {
    int value = CShims_thread_index_plus_one;
    return value > 0 ? value - 1 : CShims_thread_index_slow();
}

/// Whether `mutex`'s word says a thread may sleep on it (glibc's default mutex type: the word is 2
/// from the moment a locker that found it held decides to sleep, and stays 2 while a holder that
/// took it that way holds it). For a holder that took it uncontended, true means another thread
/// sleeps, or is about to, waiting for it: the state a test waits for before it acts on the sleeper.
static inline int CShims_mutex_has_waiters(pthread_mutex_t *mutex) {
    return __atomic_load_n(&mutex->__data.__lock, __ATOMIC_RELAXED) == 2;
}
/// One lock a thread holds, as the lock-order checker (DaxlabSupport's `LockOrder`) records it:
/// the lock's address, its rank's name (a static C string) and number, its index in its table
/// (-1 for a lock of its own), and whether its rank lets locks of that rank nest by index.
typedef struct {
    uintptr_t lock;
    const char *name;
    int32_t rank;
    int32_t index;
    int32_t nests_by_index;
} CShims_held_lock;

/// How many locks one thread may hold at once under the checker (far more than any path takes).
#define CSHIMS_HELD_LOCKS_LIMIT 32

/// The locks a thread holds, oldest first.
typedef struct {
    int32_t count;
    CShims_held_lock locks[CSHIMS_HELD_LOCKS_LIMIT];
} CShims_held_locks;

/// The calling thread's held locks (a thread-local, zeroed at the thread's start). Defined in
/// debug builds only: the checker does not exist in release builds.
CShims_held_locks *CShims_held_locks_of_thread(void);

/// Registers the process for MEMBARRIER_CMD_PRIVATE_EXPEDITED (membarrier(2), Linux 4.14); 0 or
/// -errno (-ENOSYS without the system call, -EINVAL without the command, -EPERM under a seccomp
/// filter that refuses it).
int CShims_membarrier_register(void);

/// Whether this kernel offers MEMBARRIER_CMD_PRIVATE_EXPEDITED (membarrier(MEMBARRIER_CMD_QUERY)):
/// 1 or 0.
int CShims_membarrier_offers_private_expedited(void);

/// membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED): every thread of this process that runs now
/// executes a full memory barrier before this returns (an IPI to each CPU running one; a thread
/// not running passed one at its context switch). The slow side of an asymmetric fence whose
/// fast side is `CShims_compiler_barrier`. 0 or -errno.
int CShims_membarrier(void);

/// A compiler barrier: no memory access moves across it at compile time, and the CPU is not
/// asked for anything (no fence instruction). The fast side of an asymmetric fence.
static inline __attribute__((always_inline)) void CShims_compiler_barrier(void) {
    __asm__ __volatile__("" ::: "memory");
}

/// Binds the calling thread to `cpu` (sched_setaffinity); 0 or -errno.
int CShims_bind_to_cpu(int cpu);

/// Lets the calling thread run on every online CPU again; 0 or -errno.
int CShims_unbind_cpu(void);

/// libblkid's safe probe of the first `length` bytes at `data` (copied into a memfd, so device-dax
/// devices, which cannot be read(2), are probed too) for a file system, partition table or RAID
/// signature, as mkfs.ext4 does before it formats. Returns 1 with the signature's type in
/// `type` (`length` bytes at most), 0 when none is found, -errno on failure.
int CShims_blkid_probe_bytes(const void *data, size_t length, char *type, size_t type_length);

/// fallocate(fd, 0, offset, length): allocates the file's blocks in the range (mode 0: no
/// zeroing of data already there, no size change past what `length` reaches). 0 or -errno
/// (-EOPNOTSUPP where the file system cannot).
int CShims_fallocate(int fd, long offset, long length);

/// fflush(stdout), then whether stdout has failed at any time: 0, or an errno (EIO when stdio
/// recorded an error but errno no longer says which).
int CShims_flush_stdout(void);

/// prctl(PR_SET_PDEATHSIG, signal): the calling thread's process gets `signal` when its parent
/// exits. 0 or -errno.
int CShims_die_with_parent(int signal);

/// open(2)'s O_DIRECT (a _GNU_SOURCE flag).
extern const int CShims_O_DIRECT;

/// memfd_create(name, MFD_CLOEXEC): an anonymous shmem file. The descriptor, or -errno.
int CShims_memfd(const char *name);

/// process_vm_readv(2) of `length` bytes from `source` to `destination`, both in this process:
/// the kernel copies, and faults the source in as its own accesses do (so a page only a SIGSEGV
/// handler would map fails with EFAULT instead of running the handler). Returns the bytes
/// copied (fewer than `length` when a fault stopped it part-way), or -errno.
long CShims_process_vm_readv_self(void *destination, const void *source, size_t length);

/// What the fault service decided about a window fault.
enum {
    /// The fault was not in a window: the previous SIGSEGV handler (or the default action) runs.
    CShims_FAULT_NOT_OURS = 0,
    /// The page is mapped now: the access is retried.
    CShims_FAULT_MAPPED = 1,
    /// The access is past the end of file (or found no space): SIGBUS, as the kernel does.
    CShims_FAULT_SIGBUS = 2,
};

/// A SIGSEGV in a window, handed to the fault-service thread: the faulting thread sleeps until
/// `verdict` is set (`CShims_window_fault_answer`).
typedef struct {
    void *address;
    int32_t is_write;
    uint32_t verdict;
} CShims_fault_request;

/// Installs the process's SIGSEGV handler (call once). A fault inside a range added with
/// `CShims_window_range_add` is written, as a `CShims_fault_request *`, to a pipe whose read end
/// this returns (or -errno); any other fault goes to the handler installed before, or to the
/// default action. The handler itself runs no daxlab code.
int CShims_window_faults_start(void);

/// Marks the calling thread as the fault service: a SIGSEGV on it is never handed to itself.
void CShims_window_faults_served_by_this_thread(void);

/// Whether the calling thread is the fault service.
int CShims_window_faults_on_service_thread(void);

/// Adds a window's address range for the handler; the slot, or -ENOSPC.
int CShims_window_range_add(void *base, size_t length);
void CShims_window_range_remove(int slot);

/// Reads up to `capacity` requests from the pipe (non-blocking or after a poll): how many, or -errno.
int CShims_window_fault_requests(int fd, CShims_fault_request **requests, int capacity);

/// Answers a request (a `CShims_FAULT_*`) and wakes its thread.
void CShims_window_fault_answer(CShims_fault_request *request, int verdict);

/// A userfaultfd (close-on-exec, non-blocking) with the API handshake done and write-protect
/// faults of anonymous memory available. Tries userfaultfd(2), then /dev/userfaultfd. The
/// descriptor, or -errno (EPERM: refused to this user; EOPNOTSUPP: no write-protect faults).
int CShims_uffd_open(void);

/// Registers anonymous memory for missing and write-protect faults. 0 or -errno.
int CShims_uffd_register(int fd, void *address, size_t length);

/// UFFDIO_WAKE: wakes the threads (CPU or kernel) waiting on faults in the range. 0 or -errno.
int CShims_uffd_wake(int fd, void *address, size_t length);

/// UFFDIO_COPY of a page of zeros, write-protected, at `address`, without waking its waiters
/// (the caller wakes them): a read of a hole; the write after it is a write-protect fault. 0 or
/// -errno (EEXIST: a page is there).
int CShims_uffd_map_zeros(int fd, void *address);

/// One page fault read from a userfaultfd.
typedef struct {
    void *address;
    int32_t is_write;
} CShims_uffd_fault;

/// Reads pending page-fault messages (other events are skipped): how many, or -errno (EAGAIN:
/// none).
int CShims_uffd_read_faults(int fd, CShims_uffd_fault *faults, int capacity);

/// An eventfd (close-on-exec, non-blocking) a thread polls to be woken: the descriptor, or -errno.
int CShims_event_open(void);
/// Wakes the thread polling `fd` (makes it readable).
void CShims_event_signal(int fd);
/// Consumes the wake-ups signalled so far (`fd` is not readable afterwards, until the next).
void CShims_event_drain(int fd);

/// Names the calling thread (prctl PR_SET_NAME, which keeps the first 15 bytes); 0 or -errno.
int CShims_set_thread_name(const char *name);

/// statx(fd, "", AT_EMPTY_PATH) returning the attribute bits and the mask of bits the kernel
/// supports. Returns 0, or -1 with errno set.
int CShims_statx_attributes(int fd, uint64_t *attributes, uint64_t *attributes_mask);

/// CRC-32C (Castagnoli) of `count` bytes continuing the raw register `crc` (no pre- or
/// post-inversion: the caller does those), with SSE4.2's crc32 instruction. Only call it when
/// `CShims_has_crc32c_instruction()` says 1.
uint32_t CShims_crc32c_hardware(uint32_t crc, const void *bytes, size_t count);

/// Whether this CPU has the crc32 instruction (x86-64 SSE4.2); 0 elsewhere.
int CShims_has_crc32c_instruction(void);

/// FUTEX_WAIT_PRIVATE on the 32-bit word at `word`: sleeps while it holds `expected`, until a
/// wake-up (or a signal, or at once when it no longer holds it). Returns 0, or the errno
/// (EAGAIN, EINTR: the caller looks again either way).
int CShims_futex_wait(void *word, uint32_t expected);

/// FUTEX_WAKE_PRIVATE: wakes up to `count` threads sleeping on `word`. Returns how many woke,
/// or -errno.
int CShims_futex_wake(void *word, int32_t count);

/// A spin-wait hint (x86 `pause`), for loops that poll a word another CPU will change.
static inline void CShims_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

#endif
