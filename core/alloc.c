/* The fault-injection seam's counters (core/alloc.h). Only reached while a test has armed it. */
#include "core/alloc.h"

atomic_uint flp_fault_armed;

static _Atomic int64_t fail_at = -1;
static _Atomic int64_t sequence; /* sites counted, all armed kinds together */
static _Atomic int64_t host_sites, device_sites;
static atomic_uint fired_kind; /* 0 until the failing site is reached */

bool flp_fault_count_site(unsigned kind) {
    atomic_fetch_add(kind == FLP_FAULT_HOST ? &host_sites : &device_sites, 1);
    /* One fetch_add numbers the site, so two threads never both take fail_at. */
    int64_t number = atomic_fetch_add(&sequence, 1);
    if (number != atomic_load(&fail_at))
        return false;
    atomic_store(&fired_kind, kind);
    return true;
}

void flp_fault_arm(unsigned mask, int64_t fail) {
    atomic_store(&flp_fault_armed, 0u); /* no site counts while the counters restart */
    atomic_store(&fail_at, fail < 0 ? -1 : fail);
    atomic_store(&sequence, 0);
    atomic_store(&host_sites, 0);
    atomic_store(&device_sites, 0);
    atomic_store(&fired_kind, 0u);
    atomic_store(&flp_fault_armed, mask & FLP_FAULT_ALL);
}

flp_fault_report flp_fault_peek(void) {
    flp_fault_report r = {
        .host = atomic_load(&host_sites),
        .device = atomic_load(&device_sites),
        .fired_kind = atomic_load(&fired_kind),
    };
    r.fired = r.fired_kind != 0;
    return r;
}

flp_fault_report flp_fault_disarm(void) {
    atomic_store(&flp_fault_armed, 0u);
    return flp_fault_peek();
}
