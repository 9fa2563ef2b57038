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
#include "tests/case_kinds.h"

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

/* Removes directory dir and everything under it (a test's temporary directory); fails the
 * test when it cannot. */
void test_remove_tree(const char *dir);

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

/* Runs the reference on a (test_ref_attention_init plus indptrs, k, v and options) with q
 * [qo_indptr[batch_size], num_qo_heads, head_dim] and alibi_slopes [num_qo_heads] (or NULL)
 * given as floats; fails the test unless it succeeds. */
void test_ref_attention_run(struct flp_ref_attention *a, const float *q, const float *alibi_slopes,
                            double *out, double *lse);

/* New copies (free them) of n values; never NULL. */
int32_t *test_copy_i32(const int32_t *x, size_t n);
float *test_copy_f32(const float *x, size_t n);

/* A NULL-terminated list of message fragments for test_expect_status. */
#define TEST_MENTIONS(...) ((const char *const[]){__VA_ARGS__, NULL})

/* cmocka assertion: got == want and, when mentions is not NULL, flp_context_last_error(ctx)
 * contains every one of mentions exactly (case included). Each fragment should name the bad value
 * with its context ("batch_size = 5", "max_batch_size = 4"), not a bare number or word that any
 * message could hold. call names the call in the failure. FLP_TEST_VERBOSE prints each message. */
void test_expect_status(const flp_context *ctx, flp_status got, flp_status want, const char *call,
                        const char *const *mentions);

/* printf into one of 16 rotating static buffers of 256 bytes: for fragments with values computed
 * by the test, inside TEST_MENTIONS (at most 16 live at a time; not thread-safe). */
const char *test_str(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- one backend context per test program, with its log watched ----------------------------- */

/* Opens the backend named by argv[1] ("vulkan" or "cuda") with a log callback that keeps error
 * messages. For Vulkan it turns the Khronos validation layer on unless FLP_VULKAN_VALIDATION is
 * already set (FLP_VULKAN_VALIDATION=0 runs without it). validation_count (may be NULL) counts
 * validation messages of a context (the Vulkan suites pass flp_vulkan_validation_message_count);
 * the watch below fails a test during which it grew. Returns 0 with *ctx set; 77 (skip) when the
 * backend is not built or has no device; 2 on a usage error; 1 on another failure, a missing
 * validation layer that was asked for included (each printed). */
int test_backend_open(int argc, char **argv, uint32_t (*validation_count)(const flp_context *),
                      flp_context **ctx);
flp_backend_kind test_backend_kind(void);

const char *test_backend_name(void);
/* Prints the device and fails (-1) when validation messages appeared while opening. */
int test_backend_report(void);
/* cmocka group setup / teardown of a backend suite: test_backend_report, then at the end the
 * context test_backend_open made is destroyed. */
int test_backend_group_setup(void **state);
int test_backend_group_teardown(void **state);
/* The device info that test_backend_report read. */
const flp_device_info *test_backend_info(void);

/* Whether FLP_VULKAN_VALIDATION asks for the Khronos validation layer (set, not empty, not "0"). */
bool test_vulkan_validation_requested(void);
/* After flp_context_create(desc) failed with FLP_ERROR_UNSUPPORTED: whether validation was asked
 * for and the same context opens without it, i.e. the layer (or its VK_EXT_debug_utils), not the
 * device, is missing. */
bool test_vulkan_validation_blocks(const flp_context_desc *desc);

/* cmocka setup / teardown: "good" tests fail on any logged error, "bad" tests expect errors.
 * Both fail on any validation message that appeared during the test. */
int test_backend_setup_good(void **state);
int test_backend_teardown_good(void **state);
int test_backend_setup_bad(void **state);
int test_backend_teardown_bad(void **state);
/* Inside a test: from here on errors are expected (true) or fail the test and are printed
 * (false); the count of errors seen so far starts again from zero. */
void test_backend_expect_errors(bool expected);

/* ---- shared by the backend reference suites (test_decode.c, test_prefill.c) ----------------- */

/* calloc that fails the test when out of memory; never returns NULL (n or size 0 count as 1). */
void *test_xcalloc(size_t n, size_t size);

/* cmocka assertion: call returned FLP_OK; else fails naming the call, the status and the
 * context's message. */
#define test_assert_ok(ctx, call) test_assert_ok_impl((ctx), (call), #call, __FILE__, __LINE__)
void test_assert_ok_impl(const flp_context *ctx, flp_status st, const char *call, const char *file,
                         int line);

bool test_is_fp8(flp_dtype dt);
/* A variant of head dim d, q and K/V dtypes, mask and soft cap (0: none); an fp8 K/V dtype takes
 * k_scale and v_scale, any other the default (0). */
flp_variant test_variant_make(int32_t d, flp_dtype q_dtype, flp_dtype kv_dtype, flp_mask_mode mask,
                              float soft_cap, float k_scale, float v_scale);
/* A 16-bit value (bf16 when dt is BF16, else f16) as a double. */
double test_half_to_double(flp_dtype dt, uint16_t bits);

/* A new array (free it) of 0..n-1, shuffled (Fisher-Yates) unless shuffle is false. */
int32_t *test_permutation(test_rng *rng, int32_t n, bool shuffle);

/* Random RoPE offsets in [0, 300] for batch requests: new arrays *q and *k (free them). */
void test_rope_offsets(test_rng *rng, int32_t batch, int32_t **q, int32_t **k);

/* Sets the positional encoding of v as a case table asks (tests/case_kinds.h); ALIBI_CALLER
 * also makes *alibi_slopes, a new array (free it) of num_qo_heads random slopes in [0.01, 1]. */
void test_variant_set_pos_encoding(flp_variant *v, alibi_kind alibi, rope_kind rope,
                                   int32_t num_qo_heads, test_rng *rng, float **alibi_slopes);

/* The variant's positional encoding from a golden case's (ALiBi with or without its slopes,
 * RoPE); *alibi_slopes as above, copied from the case. */
struct golden_case;
void test_variant_set_golden_pos_encoding(flp_variant *v, const struct golden_case *g,
                                          float **alibi_slopes);

/* A paged KV pool of stored values times scale (the f32 product the kernels compute), gathered
 * into ragged token order as doubles: a new array [tokens, num_kv_heads, head_dim] (free it),
 * tok_indptr [batch + 1] filled. Fails unless request b has kv_len[b] tokens. */
double *test_gather_paged_kv(int32_t batch, int32_t num_kv_heads, int32_t head_dim,
                             int32_t page_size, flp_kv_layout layout, int32_t num_pages,
                             const float *raw, float scale, const int32_t *kv_indptr,
                             const int32_t *kv_indices, const int32_t *kv_last_page_len,
                             const int32_t *kv_len, int32_t *tok_indptr);

/* A new buffer of bytes (16 when 0); fails the test unless created. */
flp_buffer *test_buffer_new(flp_context *ctx, size_t bytes);
/* A new buffer holding count values as a contiguous tensor of dtype dt and shape[ndim]
 * (*buf: the buffer, to destroy): I32 and U8 values are written as given, float values
 * (float *) converted to dt. */
flp_tensor test_tensor_upload(flp_context *ctx, const void *values, flp_dtype dt, int ndim,
                              const int64_t *shape, size_t count, flp_buffer **buf);
/* Sets the first bytes of buf to value. */
void test_buffer_fill(flp_context *ctx, flp_buffer *buf, size_t bytes, uint8_t value);
/* A new host copy (free it) of the first bytes of buf. */
void *test_buffer_read_all(flp_context *ctx, const flp_buffer *buf, size_t bytes);

/* A plan description of the given capacities and shape (the rest 0). */
flp_plan_desc test_plan_desc_make(int32_t max_batch_size, int32_t max_pages, int32_t num_qo_heads,
                                  int32_t num_kv_heads, int32_t head_dim);
/* flp_plan_create that fails the test unless it succeeds. */
flp_plan *test_plan_create(flp_context *ctx, const flp_plan_desc *pd);

/* A caller workspace for pd: a buffer of TEST_WS_GUARD + size + TEST_WS_GUARD bytes, all
 * TEST_WS_PATTERN, set in pd (offset TEST_WS_GUARD); *size gets the plan's workspace size. */
#define TEST_WS_GUARD 256
#define TEST_WS_PATTERN 0xA5u
flp_buffer *test_workspace_create(flp_context *ctx, flp_plan_desc *pd, size_t *size);
/* Fails when a byte of the guards around the workspace range changed; returns whether the
 * range itself was written. */
bool test_workspace_check(flp_context *ctx, const flp_buffer *ws, size_t size, const char *when);

/* ---- q, out and lse of an attention call on the device -------------------------------------- *
 * q/out [rows, heads, head_dim] of a 16-bit dtype and lse [rows, heads] f32, each in a buffer of
 * its own that ends 64 bytes after the last row of the capacity (so writes past a view show). */

#define TEST_POISON16 0xFFFFu     /* f16 / bf16 NaN */
#define TEST_POISON32 0xFFFFFFFFu /* f32 NaN */

typedef struct test_qo_layout {
    int64_t row_stride, head_stride, lse_row_stride; /* elements */
    size_t q_offset, out_offset, lse_offset;         /* bytes */
} test_qo_layout;

typedef struct test_qo {
    flp_context *ctx;
    flp_dtype dtype;
    int32_t heads, head_dim;
    int32_t rows_capacity;
    test_qo_layout layout;
    flp_buffer *q_buf, *out_buf, *lse_buf;
    size_t q_bytes, out_bytes, lse_bytes;
    flp_tensor q, out, lse; /* views of the rows of the last test_qo_write */
} test_qo;

void test_qo_create(test_qo *t, flp_context *ctx, flp_dtype dtype, int32_t heads, int32_t head_dim,
                    int32_t rows_capacity, test_qo_layout layout);
/* Uploads q [rows, heads, head_dim] (values of the dtype; the rest of the buffer gets the poison
 * NaN, so reading it would show) and sets the views to rows. */
void test_qo_write(test_qo *t, const float *q, int32_t rows);
/* Fills the out and lse buffers with 0xFF bytes. */
void test_qo_poison(const test_qo *t);
void test_qo_free(test_qo *t);

/* Raw contents of the output buffers. */
typedef struct test_readback {
    uint16_t *out; /* [out_bytes / 2] */
    uint32_t *lse; /* [lse_bytes / 4] */
} test_readback;

test_readback test_qo_read(const test_qo *t);
void test_readback_free(test_readback *rb);
/* Fails unless the outputs still hold the poison (call names the failed call). */
void test_qo_expect_untouched(const test_qo *t, const char *call);
/* Fails unless a and b are the same bits. */
void test_qo_expect_same_bits(const test_qo *t, const test_readback *a, const test_readback *b,
                              const char *when);
/* Attention sinks applied (docs/variants.md's example): sunk's out equals plain's scaled by
 * sigmoid(lse - sinks[head]) per row and head (within two roundings to the output dtype) and
 * its lse is plain's, for the first rows rows of dense q/out views. */
void test_qo_expect_sinks(const test_qo *t, const test_readback *plain, const test_readback *sunk,
                          const float *sinks, int32_t rows);

/* Whether the suite's backend runs variant snippets in its decode and prefill kernels (else
 * their plans refuse them): Vulkan where the library compiles shaders at run time. */
bool test_backend_takes_snippets(void);

/* test_expect_status, then test_qo_expect_untouched. */
void test_qo_expect_failed(const test_qo *t, flp_status got, flp_status want, const char *call,
                           const char *const *mentions);

/* The requests behind the rows of the views, for the checks and their messages. */
typedef struct test_qo_requests {
    const char *name; /* the problem, in messages */
    int32_t batch;
    const int32_t *qo_indptr; /* [batch + 1] rows of each request */
    const int32_t *kv_len;    /* [batch] */
    bool lse;                 /* lse was asked for (else the lse buffer must stay poisoned) */
    flp_dtype kv_dtype;       /* of the K/V cache (picks the bounds); 0: the output's dtype */
} test_qo_requests;

/* ---- error bounds of the reference suites (test_qo_check) ------------------------------------ */

/* What an output of dtype q_dtype over a KV cache of kv_dtype may differ from the float64
 * reference. max_rel alone misses systematic errors (a softmax scale 2% off, one key of a
 * request dropped) that stay under it everywhere; mean_rel, an average over each request,
 * sees them. test_util.c says where each number comes from. */
typedef struct test_error_bounds {
    double max_rel;  /* max|out - ref| / max|ref| over the whole output */
    double mean_rel; /* sum|out - ref| / sum|ref| over the rows of one request, every request */
    double lse;      /* |lse - ref| / max(1, |ref|), every element */
} test_error_bounds;

test_error_bounds test_error_bounds_for(flp_dtype q_dtype, flp_dtype kv_dtype);

/* What an output differs from its reference; got and ref [rows, heads, dim] (rows of req). */
typedef struct test_out_errors {
    double max_rel;      /* test_relative_error of the whole output */
    size_t max_at;       /* its worst element */
    double mean_rel;     /* sum|got - ref| / sum|ref| of the whole output */
    double req_mean_rel; /* the largest of that ratio over single requests (0 when none keeps a
                            key; INFINITY on a NaN or a nonzero row that should be 0) */
    int32_t req_mean_at; /* its request, -1 when none */
} test_out_errors;

void test_out_errors_measure(const double *got, const double *ref, int32_t heads, int32_t dim,
                             const test_qo_requests *req, test_out_errors *e);
/* |got - want| / max(1, |want|); 0 for equal infinities, INFINITY for NaN or unmatched ones. */
double test_lse_error(double got, double want);
/* Whether e is within b's max_rel (the old check) and mean_rel (the systematic one). */
bool test_out_within_max(const test_out_errors *e, const test_error_bounds *b);
bool test_out_within_mean(const test_out_errors *e, const test_error_bounds *b);

/* Checks a run's outputs against ref_out [rows, heads, d] / ref_lse [rows, heads]: every element
 * of the views written, nothing outside them touched, rows that keep no key (an empty request or
 * an lse of -inf) exactly 0 with lse -inf, errors within test_error_bounds_for(out dtype,
 * req->kv_dtype). */
void test_qo_check(const test_qo *t, const test_readback *rb, const test_qo_requests *req,
                   const double *ref_out, const double *ref_lse, const char *what);

/* ---- the list of tests of a program ---------------------------------------------------------- */

typedef struct test_list {
    struct CMUnitTest *tests;
    char **names;
    size_t count, capacity;
} test_list;

/* Adds the test prefix + name (setup / teardown: test_backend_*_bad when bad, else _good). */
void test_list_add(test_list *l, const char *prefix, const char *name, void (*fn)(void **),
                   bool bad, void *state);
/* Runs the group "<group>-<backend>" (cmocka filter argv[2] when given), frees the list and
 * returns the program's exit status. */
int test_list_run(test_list *l, const char *group, int argc, char **argv,
                  int (*group_setup)(void **), int (*group_teardown)(void **));

#endif /* FLP_TESTS_TEST_UTIL_H */
