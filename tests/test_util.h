/* Small helpers shared by the cmocka tests: a seeded random generator, random fills and a
 * relative-error assertion that names the seed, so any failure can be replayed.
 *
 * Include after cmocka's prerequisites (<stdarg.h>, <stddef.h>, <setjmp.h>, <cmocka.h>) or on
 * its own: this header needs only the standard headers below. Not thread-safe (the seed of the
 * last test_rng_init is global). */
#ifndef FLP_TESTS_TEST_UTIL_H
#define FLP_TESTS_TEST_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "flashport/flashport.h"

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

/* ---- additions for the backend reference suites (test_prefill.c) ---------------------------- */

/* A seed derived from a test's name (FNV-1a), so that tests do not depend on each other's
 * draws. */
uint64_t test_name_seed(const char *name);

/* x rounded to dt (F16, BF16, E4M3, E5M2) through the library's host conversions; x for F32. */
float test_round_to_dtype(flp_dtype dt, float x);

/* x[n] = uniform [-1, 1) values divided by scale and rounded to dt: exactly what a tensor of dt
 * stores. Never zero. */
void test_fill_stored(test_rng *rng, flp_dtype dt, float scale, float *x, size_t n);

/* The float whose bits are given, as a double. */
double test_f32_bits_to_double(uint32_t bits);

/* A new array (free it) of the n floats of x as doubles; fails the test when out of memory. */
double *test_f32_to_f64(const float *x, size_t n);

struct flp_ref_attention;
/* Zero-fills a (core/reference.h) and sets the shape and everything the variant decides: mask
 * mode, window, soft cap, sm_scale, positional encoding and RoPE. The caller adds the arrays. */
void test_ref_attention_init(struct flp_ref_attention *a, const flp_variant *variant,
                             int32_t batch_size, int32_t num_qo_heads, int32_t num_kv_heads);

/* Whether needle occurs in hay, ignoring ASCII case. */
bool test_contains_ci(const char *hay, const char *needle);

/* A NULL-terminated list of words for test_expect_status. */
#define TEST_WORDS(...) ((const char *const[]){__VA_ARGS__, NULL})

/* cmocka assertion: got == want and, when words is not NULL, flp_context_last_error(ctx) is not
 * empty and contains one of words (ignoring case). call names the call in the failure. */
void test_expect_status(const flp_context *ctx, flp_status got, flp_status want, const char *call,
                        const char *const *words);

/* ---- one backend context per test program, with its log watched ----------------------------- */

/* Opens the backend named by argv[1] ("vulkan" or "cuda") with a log callback that keeps error
 * messages. For Vulkan it turns the Khronos validation layer on unless FLP_VULKAN_VALIDATION is
 * already set. validation_count (may be NULL) counts validation messages of a context (the
 * Vulkan suites pass flp_vulkan_validation_message_count); the watch below fails a test during
 * which it grew. Returns 0 with *ctx set; 77 (skip) when the backend is not built or has no
 * device; 2 on a usage error; 1 on another failure (each printed). */
int test_backend_open(int argc, char **argv, uint32_t (*validation_count)(const flp_context *),
                      flp_context **ctx);
flp_backend_kind test_backend_kind(void);
const char *test_backend_name(void);
/* Prints the device and fails (-1) when validation messages appeared while opening. */
int test_backend_report(void);

/* cmocka setup / teardown: "good" tests fail on any logged error, "bad" tests expect errors.
 * Both fail on any validation message that appeared during the test. */
int test_backend_setup_good(void **state);
int test_backend_teardown_good(void **state);
int test_backend_setup_bad(void **state);
int test_backend_teardown_bad(void **state);
/* Inside a test: from here on errors are expected (true) or fail the test and are printed
 * (false); the count of errors seen so far starts again from zero. */
void test_backend_expect_errors(bool expected);

#endif /* FLP_TESTS_TEST_UTIL_H */
