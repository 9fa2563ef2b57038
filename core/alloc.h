/* Host allocation wrappers and the fault-injection seam.
 *
 * Every host allocation of the library (core/ but the float64 reference, backend-vulkan/,
 * backend-cuda/) goes through flp_malloc, flp_calloc or flp_realloc and is released with
 * flp_free; every device allocation site (a Vulkan object or memory, a CUDA context, stream,
 * allocation or module, an NVRTC program, a test backend's buffer) asks flp_fault_device() first
 * and, when it answers true, fails exactly as that call fails on its own: the same result code
 * through the same mapping and message.
 *
 * A test arms the seam (flp_fault_arm): from then on each site reached is counted, host and
 * device in one sequence (or only the kinds the test names), and the site numbered fail_at
 * fails, once. Walking fail_at = 0, 1, 2, ... over one call makes each of its sites fail in
 * turn; the walk ends when the call succeeds without reaching fail_at.
 *
 * Always compiled in, free when off: while disarmed a site costs one relaxed atomic load and a
 * branch predicted not taken. Internal (hidden visibility): tests link the static library. */
#ifndef FLP_CORE_ALLOC_H
#define FLP_CORE_ALLOC_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

/* Kinds of allocation site, as bits of a mask. */
enum {
    FLP_FAULT_HOST = 1u << 0,   /* flp_malloc / flp_calloc / flp_realloc */
    FLP_FAULT_DEVICE = 1u << 1, /* flp_fault_device() */
    FLP_FAULT_ALL = FLP_FAULT_HOST | FLP_FAULT_DEVICE,
};

/* The kinds being counted; 0 while disarmed. */
extern atomic_uint flp_fault_armed;

/* Counts one site of kind (armed only); true when it is the one to fail. */
bool flp_fault_count_site(unsigned kind);

static inline bool flp_fault_hit(unsigned kind) {
    if (__builtin_expect((atomic_load_explicit(&flp_fault_armed, memory_order_relaxed) & kind) != 0,
                         0))
        return flp_fault_count_site(kind);
    return false;
}

static inline void *flp_malloc(size_t size) {
    return flp_fault_hit(FLP_FAULT_HOST) ? NULL : malloc(size);
}

static inline void *flp_calloc(size_t count, size_t size) {
    return flp_fault_hit(FLP_FAULT_HOST) ? NULL : calloc(count, size);
}

/* Like realloc: on failure (injected or not) ptr is left as it was. */
static inline void *flp_realloc(void *ptr, size_t size) {
    return flp_fault_hit(FLP_FAULT_HOST) ? NULL : realloc(ptr, size);
}

static inline void flp_free(void *ptr) {
    free(ptr);
}

/* Asked by a device allocation site before it allocates: true = fail as the call would. */
static inline bool flp_fault_device(void) {
    return flp_fault_hit(FLP_FAULT_DEVICE);
}

/* ---- test control ----------------------------------------------------------------------- */

/* What the seam saw since the last flp_fault_arm. */
typedef struct flp_fault_report {
    int64_t host, device; /* sites counted, of each kind */
    bool fired;           /* the site numbered fail_at was reached (and failed) */
    unsigned fired_kind;  /* its kind (FLP_FAULT_HOST or FLP_FAULT_DEVICE), 0 when not fired */
} flp_fault_report;

/* Counts the sites of the kinds in mask from now, numbering them 0, 1, ... in the order they
 * are reached (every kind of mask in one sequence); site fail_at fails, later ones do not.
 * fail_at < 0: count only. Replaces an earlier arm. Sites on other threads count too. */
void flp_fault_arm(unsigned mask, int64_t fail_at);
/* Stops counting; returns what was seen since flp_fault_arm. */
flp_fault_report flp_fault_disarm(void);
/* What was seen so far, armed or not. */
flp_fault_report flp_fault_peek(void);

#endif /* FLP_CORE_ALLOC_H */
