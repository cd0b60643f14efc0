// The lock-order checker's per-thread record of held locks (debug builds only: release builds
// define nothing here, and nothing in them calls it).
#include "CShims.h"

#ifdef DEBUG
// Thread-local and fixed in size: pushing and popping allocate nothing, so the checker may run in
// the window fault handler (a SIGSEGV on the faulting thread) as anywhere else.
static __thread CShims_held_locks held_locks;

CShims_held_locks *CShims_held_locks_of_thread(void) { return &held_locks; }
#endif
