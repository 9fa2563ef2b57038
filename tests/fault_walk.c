/* The walk over a call's allocation sites (fault_walk.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "core/alloc.h"
#include "tests/fault_walk.h"

/* A failed attempt: FLP_ERROR_OUT_OF_MEMORY, and a message (where the call has one) that says
 * the memory ran out. */
static void expect_out_of_memory(const fault_walk *w, int64_t site, const flp_fault_report *r,
                                 flp_status st) {
    const char *kind = r->fired_kind == FLP_FAULT_HOST ? "host" : "device";
    const char *message = w->message ? w->message(w->state) : NULL;
    if (st != FLP_ERROR_OUT_OF_MEMORY)
        fail_msg("%s: %s allocation site %lld failed, the call returned %s (%s)", w->name, kind,
                 (long long)site, flp_status_string(st), message ? message : "no message");
    if (w->message && (!message || !strcasestr(message, "memory")))
        fail_msg("%s: %s allocation site %lld failed, the message does not say so: \"%s\"", w->name,
                 kind, (long long)site, message ? message : "(none)");
}

int64_t fault_walk_run(const fault_walk *w) {
    for (int64_t n = 0; n <= w->max_sites; n++) {
        w->prepare(w->state);
        flp_fault_arm(FLP_FAULT_ALL, n);
        const flp_status st = w->call(w->state);
        const flp_fault_report r = flp_fault_disarm();
        if (r.fired) {
            expect_out_of_memory(w, n, &r, st);
            w->check_failed(w->state);
        } else {
            const char *message = w->message ? w->message(w->state) : NULL;
            if (st != FLP_OK)
                fail_msg("%s: failed with no injected failure: %s (%s)", w->name,
                         flp_status_string(st), message ? message : "no message");
            assert_int_equal(r.host + r.device, n);
            if (w->check_done)
                w->check_done(w->state);
        }
        if (w->finish)
            w->finish(w->state);
        if (!r.fired)
            return n;
    }
    fail_msg("%s: more than %lld allocation sites", w->name, (long long)w->max_sites);
    return -1;
}
