/* Host timing helpers shared by the demo and the benchmarks. */
#ifndef FLP_TOOLS_HOST_TIMING_H
#define FLP_TOOLS_HOST_TIMING_H

#include <stdlib.h>
#include <time.h>

static inline double timing_now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static inline int timing_cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median of samples[n] (sorts them). */
static inline double timing_median(double *samples, size_t n) {
    qsort(samples, n, sizeof samples[0], timing_cmp_double);
    return samples[n / 2];
}

#endif /* FLP_TOOLS_HOST_TIMING_H */
