/* pin.c - keeps this library (tether/core.so) mapped for the life of the process once code
 * outside any lua_State may run in it: a signal handler (signal.c) or a thread (lane.c)
 * can outlive the state that loaded it, and dlclose at lua_close must not unmap them. */
#include "tether.h"

#include <dlfcn.h>
#include <pthread.h>

static pthread_once_t pin_once = PTHREAD_ONCE_INIT;

static void pin(void) {
  Dl_info info;
  /* RTLD_NOLOAD: only a reference to the copy already mapped; RTLD_NODELETE: never unmapped. */
  if (dladdr((void *)&tether_pin_library, &info) && info.dli_fname)
    (void)dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
}

void tether_pin_library(void) { pthread_once(&pin_once, pin); }
