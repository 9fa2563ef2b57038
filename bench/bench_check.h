/* The benchmarks' one error policy: any failed flashport call prints the call, its status and
 * the context's last error, and exits 1. Needs a flp_context *ctx in scope. */
#ifndef FLP_BENCH_CHECK_H
#define FLP_BENCH_CHECK_H

#include "flashport/flashport.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(call)                                                                                \
    do {                                                                                           \
        flp_status s_ = (call);                                                                    \
        if (s_ != FLP_OK) {                                                                        \
            fprintf(stderr, "%s: %s: %s\n", #call, flp_status_string(s_),                          \
                    flp_context_last_error(ctx));                                                  \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

/* --decode-kernel auto|vector|matrix; exits 2 on anything else. */
static inline flp_decode_kernel bench_parse_decode_kernel(const char *s) {
    if (!strcmp(s, "auto"))
        return FLP_DECODE_KERNEL_AUTO;
    if (!strcmp(s, "vector"))
        return FLP_DECODE_KERNEL_VECTOR;
    if (!strcmp(s, "matrix"))
        return FLP_DECODE_KERNEL_MATRIX;
    fprintf(stderr, "--decode-kernel %s: expected auto, vector or matrix\n", s);
    exit(2);
}

/* The name of the kernel a plan runs decode on. */
static inline const char *bench_decode_kernel_name(const flp_plan *plan) {
    return flp_plan_decode_kernel(plan) == FLP_DECODE_KERNEL_MATRIX ? "matrix" : "vector";
}

#endif /* FLP_BENCH_CHECK_H */
