/* The walk of the fault-injection suites (test_fault_injection.c on the fake backend,
 * test_fault_injection_vulkan.c on Vulkan) over the allocation sites of one call, through the
 * seam of core/alloc.h: attempt n fails the n-th host or device allocation the call reaches
 * (kinds together), n = 0, 1, ... until the call succeeds without reaching the armed site.
 *
 * The walk checks what every failure owes (FLP_ERROR_OUT_OF_MEMORY and a message about memory)
 * and that the successful attempt reached exactly n sites, so a site that stops going through
 * the seam shows; the suites check the rest through the callbacks (cmocka: a failure ends the
 * test). */
#ifndef FLP_TESTS_FAULT_WALK_H
#define FLP_TESTS_FAULT_WALK_H

#include <stdint.h>

#include "flashport/flashport.h"

typedef struct fault_walk {
    const char *name;  /* the walked call, in failures */
    int64_t max_sites; /* a call that reaches more fails the walk */
    void *state;       /* passed to every callback */
    /* Before each attempt, injection off: poison outputs, take snapshots, open what the call
     * needs. */
    void (*prepare)(void *state);
    flp_status (*call)(void *state); /* the walked call, one site armed */
    /* Where a failed call left its message, read right after it; NULL (the callback): the call
     * has nowhere to leave one (a creation without an object yet), nothing is checked. */
    const char *(*message)(void *state);
    /* After a failed attempt, injection off: nothing written, nothing changed, still usable. */
    void (*check_failed)(void *state);
    /* After the successful attempt, injection off (may be NULL). */
    void (*check_done)(void *state);
    /* After every attempt and its checks (may be NULL): frees what prepare and the call made. */
    void (*finish)(void *state);
} fault_walk;

/* Walks w; returns how many allocation sites the successful call reached. */
int64_t fault_walk_run(const fault_walk *w);

#endif /* FLP_TESTS_FAULT_WALK_H */
