#include "tests/test_util.h"

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdlib.h>

#include <cmocka.h>

static uint64_t g_seed;

void test_rng_init(test_rng *rng, uint64_t default_seed) {
    uint64_t seed = default_seed;
    const char *env = getenv("FLP_TEST_SEED");
    if (env && *env) {
        char *end = NULL;
        const unsigned long long v = strtoull(env, &end, 0);
        if (end && *end == '\0')
            seed = (uint64_t)v;
    }
    g_seed = seed;
    rng->state = seed;
}

uint64_t test_seed(void) {
    return g_seed;
}

uint64_t test_rng_next(test_rng *rng) {
    uint64_t z = (rng->state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

double test_rng_uniform(test_rng *rng, double lo, double hi) {
    /* 53 random bits -> [0, 1) */
    const double u = (double)(test_rng_next(rng) >> 11) * 0x1.0p-53;
    return lo + (hi - lo) * u;
}

int32_t test_rng_int(test_rng *rng, int32_t lo, int32_t hi) {
    const uint64_t span = (uint64_t)((int64_t)hi - (int64_t)lo) + 1u;
    return (int32_t)((int64_t)lo + (int64_t)(test_rng_next(rng) % span));
}

void test_fill_uniform_f32(test_rng *rng, float *x, size_t n) {
    for (size_t i = 0; i < n; ++i)
        x[i] = (float)test_rng_uniform(rng, -1.0, 1.0);
}

void test_fill_uniform_f64(test_rng *rng, double *x, size_t n) {
    for (size_t i = 0; i < n; ++i)
        x[i] = test_rng_uniform(rng, -1.0, 1.0);
}

double test_relative_error(const double *got, const double *want, size_t n, size_t *worst) {
    double max_diff = 0.0, max_ref = 0.0;
    size_t at = 0;
    for (size_t i = 0; i < n; ++i) {
        double diff;
        if (got[i] == want[i])
            diff = 0.0;
        else if (!isfinite(got[i]) || !isfinite(want[i])) /* NaN or unmatched infinity */
            diff = INFINITY;
        else
            diff = fabs(got[i] - want[i]);
        if (diff > max_diff) {
            max_diff = diff;
            at = i;
        }
        if (isfinite(want[i]) && fabs(want[i]) > max_ref)
            max_ref = fabs(want[i]);
    }
    if (worst)
        *worst = at;
    if (max_diff == 0.0)
        return 0.0;
    if (isinf(max_diff) || max_ref == 0.0)
        return INFINITY;
    return max_diff / max_ref;
}

void test_assert_relative_error_impl(const double *got, const double *want, size_t n, double tol,
                                     const char *what, const char *file, int line) {
    size_t worst = 0;
    const double err = test_relative_error(got, want, n, &worst);
    if (err <= tol)
        return;
    print_error("%s: relative error %.3e > %.3e (worst element %zu of %zu: got %.17g, want "
                "%.17g); seed %llu (replay with FLP_TEST_SEED=%llu)\n",
                what, err, tol, worst, n, n ? got[worst] : 0.0, n ? want[worst] : 0.0,
                (unsigned long long)g_seed, (unsigned long long)g_seed);
    _fail(file, line);
}

void test_assert_near_impl(double got, double want, double tol, const char *what, const char *file,
                           int line) {
    if (got == want || fabs(got - want) <= tol)
        return;
    print_error("%s = %.17g, want %.17g (tolerance %.3g); seed %llu\n", what, got, want, tol,
                (unsigned long long)g_seed);
    _fail(file, line);
}
