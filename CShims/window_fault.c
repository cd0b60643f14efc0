// The SIGSEGV handler of daxlab's windows. It runs no file-system code: a fault inside a window's
// address range is handed to the fault-service thread (through a pipe, as a pointer to a request
// on the faulting thread's stack), and the faulting thread sleeps on a futex until the service
// answers. A fault outside every window goes to the handler installed before, or to the default
// action.
#define _GNU_SOURCE
#include "CShims.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#define WINDOW_RANGES 4096

// Each range: its base (0: free) and length. Read by the handler without locks.
static _Atomic uintptr_t range_base[WINDOW_RANGES];
static _Atomic uintptr_t range_length[WINDOW_RANGES];
static int request_pipe[2] = {-1, -1};
static _Atomic pid_t service_thread;
static struct sigaction previous_segv;

static int in_window(uintptr_t address) {
    for (int slot = 0; slot < WINDOW_RANGES; slot++) {
        uintptr_t base = atomic_load_explicit(&range_base[slot], memory_order_acquire);
        if (base == 0 || address < base) {
            continue;
        }
        if (address - base < atomic_load_explicit(&range_length[slot], memory_order_acquire)) {
            return 1;
        }
    }
    return 0;
}

static int ask_service(void *address, int is_write) {
    CShims_fault_request request = {.address = address, .is_write = is_write, .verdict = 0};
    CShims_fault_request *pointer = &request;
    int saved = errno;
    ssize_t written;
    do {
        written = write(request_pipe[1], &pointer, sizeof(pointer));
    } while (written < 0 && errno == EINTR);
    if (written != sizeof(pointer)) {
        errno = saved;
        return CShims_FAULT_NOT_OURS;
    }
    while (atomic_load_explicit((_Atomic uint32_t *)&request.verdict, memory_order_acquire) == 0) {
        syscall(SYS_futex, &request.verdict, FUTEX_WAIT_PRIVATE, 0, NULL, NULL, 0);
    }
    errno = saved;
    return (int)request.verdict;
}

static void window_fault_handler(int signal_number, siginfo_t *info, void *context) {
    int is_write = 1;
#if defined(__x86_64__)
    ucontext_t *ucontext = context;
    is_write = (ucontext->uc_mcontext.gregs[REG_ERR] & 2) != 0;
#endif
    int decision = CShims_FAULT_NOT_OURS;
    if (in_window((uintptr_t)info->si_addr)
        && atomic_load_explicit(&service_thread, memory_order_acquire) != (pid_t)syscall(SYS_gettid)) {
        decision = ask_service(info->si_addr, is_write);
    }
    if (decision == CShims_FAULT_MAPPED) {
        return;
    }
    if (decision == CShims_FAULT_SIGBUS) {
        // As the kernel sends it: BUS_ADRERR with the faulting address.
        siginfo_t bus;
        memset(&bus, 0, sizeof(bus));
        bus.si_signo = SIGBUS;
        bus.si_code = BUS_ADRERR;
        bus.si_addr = info->si_addr;
        if (syscall(SYS_rt_tgsigqueueinfo, getpid(), (pid_t)syscall(SYS_gettid), SIGBUS, &bus) != 0) {
            raise(SIGBUS);
        }
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

int CShims_window_faults_start(void) {
    if (pipe2(request_pipe, O_CLOEXEC) != 0) {
        return -errno;
    }
    // The service reads without blocking (it polls); the handler's writes block if ever full.
    fcntl(request_pipe[0], F_SETFL, fcntl(request_pipe[0], F_GETFL) | O_NONBLOCK);
    struct sigaction action;
    memset(&action, 0, sizeof(action));
    action.sa_sigaction = window_fault_handler;
    // SA_ONSTACK: a stack overflow still reaches whoever set up an alternate stack for it.
    action.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
    sigemptyset(&action.sa_mask);
    if (sigaction(SIGSEGV, &action, &previous_segv) != 0) {
        return -errno;
    }
    return request_pipe[0];
}

int CShims_window_faults_on_service_thread(void) {
    return atomic_load_explicit(&service_thread, memory_order_acquire) == (pid_t)syscall(SYS_gettid);
}

void CShims_window_faults_served_by_this_thread(void) {
    atomic_store_explicit(&service_thread, (pid_t)syscall(SYS_gettid), memory_order_release);
}

int CShims_window_range_add(void *base, size_t length) {
    for (int slot = 0; slot < WINDOW_RANGES; slot++) {
        uintptr_t expected = 0;
        if (atomic_load_explicit(&range_base[slot], memory_order_relaxed) != 0) {
            continue;
        }
        // A free slot's length is 0 (remove clears it before the base), so a handler that sees
        // the base before the length below sees no range, never another window's.
        if (atomic_compare_exchange_strong_explicit(&range_base[slot], &expected, (uintptr_t)base,
                                                    memory_order_acq_rel, memory_order_relaxed)) {
            atomic_store_explicit(&range_length[slot], length, memory_order_release);
            return slot;
        }
    }
    return -ENOSPC;
}

void CShims_window_range_remove(int slot) {
    atomic_store_explicit(&range_length[slot], 0, memory_order_release);
    atomic_store_explicit(&range_base[slot], 0, memory_order_release);
}

int CShims_window_fault_requests(int fd, CShims_fault_request **requests, int capacity) {
    ssize_t count = read(fd, requests, (size_t)capacity * sizeof(*requests));
    return count < 0 ? -errno : (int)(count / (ssize_t)sizeof(*requests));
}

void CShims_window_fault_answer(CShims_fault_request *request, int verdict) {
    atomic_store_explicit((_Atomic uint32_t *)&request->verdict, (uint32_t)verdict, memory_order_release);
    syscall(SYS_futex, &request->verdict, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}
