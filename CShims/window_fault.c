// The SIGSEGV handler of daxlab's MMU windows, and the one it chains to.
#include "CShims.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <ucontext.h>

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
