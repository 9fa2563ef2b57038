/* Small helpers shared by the cmocka tests: a seeded random generator, random fills and a
 * relative-error assertion that names the seed, so any failure can be replayed.
 *
 * Include after cmocka's prerequisites (<stdarg.h>, <stddef.h>, <setjmp.h>, <cmocka.h>) or on
 * its own: this header needs only the standard headers below. Not thread-safe (the seed of the
 * last test_rng_init is global). */
#ifndef FLP_TESTS_TEST_UTIL_H
#define FLP_TESTS_TEST_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* splitmix64: tiny, fast, deterministic across platforms. */
typedef struct test_rng {
    uint64_t state;
} test_rng;

/* Seeds rng with default_seed, or with the environment variable FLP_TEST_SEED (decimal or 0x hex)
 * when set, so a failing run can be replayed. Remembers the seed for failure messages. */
void test_rng_init(test_rng *rng, uint64_t default_seed);
/* The seed given to the last test_rng_init (printed by the assertions below on failure). */
uint64_t test_seed(void);

uint64_t test_rng_next(test_rng *rng);
/* Uniform double in [lo, hi). */
double test_rng_uniform(test_rng *rng, double lo, double hi);
/* Uniform integer in [lo, hi] (inclusive; lo <= hi). */
int32_t test_rng_int(test_rng *rng, int32_t lo, int32_t hi);

/* Fill x[n] with uniform values in [-1, 1). */
void test_fill_uniform_f32(test_rng *rng, float *x, size_t n);
void test_fill_uniform_f64(test_rng *rng, double *x, size_t n);

/* max_i |got[i] - want[i]| / max_i |want[i]|, with the index of the largest difference in
 * *worst (may be NULL). Equal elements (equal infinities included) count 0; a NaN or an
 * unmatched infinity gives INFINITY. 0 when all are equal; INFINITY when want is all zero and
 * got is not. */
double test_relative_error(const double *got, const double *want, size_t n, size_t *worst);

/* cmocka assertion: fails the current test unless test_relative_error(got, want, n) <= tol,
 * printing what, the error, the worst element and the seed. */
#define assert_relative_error(got, want, n, tol, what)                                             \
    test_assert_relative_error_impl((got), (want), (n), (tol), (what), __FILE__, __LINE__)
void test_assert_relative_error_impl(const double *got, const double *want, size_t n, double tol,
                                     const char *what, const char *file, int line);

/* cmocka assertion: |got - want| <= tol (cmocka 1.1.5 has no assert_double_equal). Equal
 * infinities pass; NaN fails. */
#define assert_near(got, want, tol)                                                                \
    test_assert_near_impl((got), (want), (tol), #got, __FILE__, __LINE__)
void test_assert_near_impl(double got, double want, double tol, const char *what, const char *file,
                           int line);

#endif /* FLP_TESTS_TEST_UTIL_H */
