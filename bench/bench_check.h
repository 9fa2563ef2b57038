/* The benchmarks' one error policy: any failed flashport call prints the call, its status and
 * the context's last error, and exits 1. Needs a flp_context *ctx in scope. */
#ifndef FLP_BENCH_CHECK_H
#define FLP_BENCH_CHECK_H

#include "flashport/flashport.h"

#include <stdio.h>
#include <stdlib.h>

#define CHECK(call)                                                                                \
    do {                                                                                           \
        flp_status s_ = (call);                                                                    \
        if (s_ != FLP_OK) {                                                                        \
            fprintf(stderr, "%s: %s: %s\n", #call, flp_status_string(s_),                          \
                    flp_context_last_error(ctx));                                                  \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

#endif /* FLP_BENCH_CHECK_H */
