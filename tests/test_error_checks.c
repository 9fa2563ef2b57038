/* The output checks of the reference suites (test_qo_check in tests/test_util.c) against the two
 * systematic errors that slipped past the max-relative bound alone: a softmax scale 2% off, and a
 * kernel that drops the last key of 129- and 130-key requests. The "kernel outputs" here are the
 * float64 reference (core/reference.h) of the wrong computation rounded to bf16; each must pass
 * the max-relative bound (that is the trap) and fail the per-request mean bound. The exact
 * reference rounded to f16 or bf16 must pass both with room to spare.
 *
 * The data use a fixed seed, not FLP_TEST_SEED: "max_rel alone accepts them" is a property of
 * these data, asserted below, not of every draw. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/reference.h"
#include "tests/test_util.h"

/* A decode-shaped batch like the suites' (GQA 8/2, head dim 128, inputs uniform in [-1, 1)
 * stored as bf16): requests of 129 and 130 keys next to short ones, whose large outputs set
 * max|ref| as in the suites' ragged batches. */
enum { HQ = 8, HKV = 2, D = 128, BATCH = 6 };
static const int32_t kv_lens[BATCH] = {129, 3, 130, 40, 1, 129};

typedef struct batch {
    int32_t qo_indptr[BATCH + 1], kv_indptr[BATCH + 1];
    float q[BATCH * HQ * D];
    double *k, *v; /* [kv_indptr[BATCH], HKV, D] */
} batch;

static void batch_make(batch *b) {
    test_rng rng = {0x5eed0e77u};
    b->qo_indptr[0] = b->kv_indptr[0] = 0;
    for (int32_t r = 0; r < BATCH; ++r) {
        b->qo_indptr[r + 1] = r + 1;
        b->kv_indptr[r + 1] = b->kv_indptr[r] + kv_lens[r];
    }
    const size_t kv = (size_t)b->kv_indptr[BATCH] * HKV * D;
    float *k = test_xcalloc(kv, sizeof(float)), *v = test_xcalloc(kv, sizeof(float));
    test_fill_stored(&rng, FLP_DTYPE_BF16, 1.0f, b->q, BATCH * HQ * D);
    test_fill_stored(&rng, FLP_DTYPE_BF16, 1.0f, k, kv);
    test_fill_stored(&rng, FLP_DTYPE_BF16, 1.0f, v, kv);
    b->k = test_f32_to_f64(k, kv);
    b->v = test_f32_to_f64(v, kv);
    free(k);
    free(v);
}

static void batch_free(batch *b) {
    free(b->k);
    free(b->v);
}

/* The reference with the softmax scale times scale_factor, and without the last key of every
 * 129- or 130-key request when drop_last_key: out [BATCH, HQ, D]. */
static void reference(const batch *b, double scale_factor, bool drop_last_key, double *out) {
    int32_t kv_indptr[BATCH + 1] = {0};
    const size_t row = (size_t)HKV * D;
    double *k = test_xcalloc((size_t)b->kv_indptr[BATCH] * row, sizeof(double));
    double *v = test_xcalloc((size_t)b->kv_indptr[BATCH] * row, sizeof(double));
    for (int32_t r = 0; r < BATCH; ++r) {
        const bool drop = drop_last_key && (kv_lens[r] == 129 || kv_lens[r] == 130);
        const int32_t keys = kv_lens[r] - (drop ? 1 : 0);
        kv_indptr[r + 1] = kv_indptr[r] + keys;
        memcpy(k + (size_t)kv_indptr[r] * row, b->k + (size_t)b->kv_indptr[r] * row,
               (size_t)keys * row * sizeof(double));
        memcpy(v + (size_t)kv_indptr[r] * row, b->v + (size_t)b->kv_indptr[r] * row,
               (size_t)keys * row * sizeof(double));
    }
    const flp_variant variant = {.head_dim = D, .q_dtype = FLP_DTYPE_BF16};
    flp_ref_attention a;
    test_ref_attention_init(&a, &variant, BATCH, HQ, HKV);
    a.sm_scale = scale_factor / sqrt((double)D);
    a.qo_indptr = b->qo_indptr;
    a.kv_indptr = kv_indptr;
    a.k = k;
    a.v = v;
    test_ref_attention_run(&a, b->q, NULL, out, NULL);
    free(k);
    free(v);
}

/* out rounded to dt, as a kernel writing dt would store it. */
static void round_to(flp_dtype dt, const double *out, double *rounded) {
    for (size_t i = 0; i < (size_t)BATCH * HQ * D; ++i)
        rounded[i] = test_round_to_dtype(dt, (float)out[i]);
}

static test_out_errors measure(const batch *b, const double *got, const double *ref) {
    const test_qo_requests req = {"error checks", BATCH, b->qo_indptr, kv_lens, false, 0};
    test_out_errors e;
    test_out_errors_measure(got, ref, HQ, D, &req, &e);
    return e;
}

/* Mutated reference rounded to bf16 vs the exact reference: max_rel accepts, mean_rel rejects. */
static void expect_caught_by_mean_only(double scale_factor, bool drop_last_key, const char *what) {
    batch b;
    batch_make(&b);
    const size_t n = (size_t)BATCH * HQ * D;
    double *ref = test_xcalloc(n, sizeof(double)), *wrong = test_xcalloc(n, sizeof(double));
    double *got = test_xcalloc(n, sizeof(double));
    reference(&b, 1.0, false, ref);
    reference(&b, scale_factor, drop_last_key, wrong);
    round_to(FLP_DTYPE_BF16, wrong, got);
    const test_error_bounds bounds = test_error_bounds_for(FLP_DTYPE_BF16, FLP_DTYPE_BF16);
    const test_out_errors e = measure(&b, got, ref);
    print_message("%s: max_rel %.3g (bound %.3g), worst request %d: mean_rel %.3g (bound %.3g)\n",
                  what, e.max_rel, bounds.max_rel, e.req_mean_at, e.req_mean_rel, bounds.mean_rel);
    if (!test_out_within_max(&e, &bounds))
        fail_msg("%s: max_rel %.3g > %.3g: these data no longer show that max_rel misses it", what,
                 e.max_rel, bounds.max_rel);
    if (test_out_within_mean(&e, &bounds))
        fail_msg("%s: the mean check accepts it: worst request %d mean_rel %.3g <= %.3g", what,
                 e.req_mean_at, e.req_mean_rel, bounds.mean_rel);
    if (drop_last_key) /* the request that is off is one that lost a key */
        assert_true(kv_lens[e.req_mean_at] == 129 || kv_lens[e.req_mean_at] == 130);
    free(ref);
    free(wrong);
    free(got);
    batch_free(&b);
}

static void test_scale_off_by_2_percent(void **state) {
    (void)state;
    expect_caught_by_mean_only(1.02, false, "sm_scale x 1.02");
}

static void test_last_key_dropped(void **state) {
    (void)state;
    expect_caught_by_mean_only(1.0, true, "last key of 129/130-key requests dropped");
}

/* The exact reference rounded to the output dtype: both checks pass with room to spare (rounding
 * alone is about 0.36 of the mean bound, see test_error_bounds_for). */
static void test_rounding_alone_passes(void **state) {
    (void)state;
    batch b;
    batch_make(&b);
    const size_t n = (size_t)BATCH * HQ * D;
    double *ref = test_xcalloc(n, sizeof(double)), *got = test_xcalloc(n, sizeof(double));
    reference(&b, 1.0, false, ref);
    const flp_dtype dtypes[] = {FLP_DTYPE_F16, FLP_DTYPE_BF16};
    for (size_t i = 0; i < 2; ++i) {
        round_to(dtypes[i], ref, got);
        const test_error_bounds bounds = test_error_bounds_for(dtypes[i], dtypes[i]);
        const test_out_errors e = measure(&b, got, ref);
        if (!test_out_within_max(&e, &bounds) || !(e.req_mean_rel <= 0.5 * bounds.mean_rel))
            fail_msg("%s rounding: max_rel %.3g (bound %.3g), mean_rel %.3g (half the bound "
                     "%.3g)",
                     flp_dtype_name(dtypes[i]), e.max_rel, bounds.max_rel, e.req_mean_rel,
                     0.5 * bounds.mean_rel);
        assert_true(e.req_mean_rel > 0.0); /* rounding did change the values */
    }
    free(ref);
    free(got);
    batch_free(&b);
}

/* What the mean check reports: the worst request, zero for equal outputs, infinity for a NaN or
 * for a nonzero output where the reference is all zero (a request that keeps no key). */
static void test_mean_measure(void **state) {
    (void)state;
    const int32_t qo_indptr[3] = {0, 1, 2}, kv[2] = {5, 0};
    const double ref[8] = {0.5, -0.25, 1.0, 2.0, 0.0, 0.0, 0.0, 0.0};
    double got[8];
    memcpy(got, ref, sizeof got);
    const test_qo_requests req = {"measure", 2, qo_indptr, kv, false, 0};
    test_out_errors e;
    test_out_errors_measure(got, ref, 1, 4, &req, &e);
    assert_true(e.req_mean_rel == 0.0 && e.mean_rel == 0.0 && e.max_rel == 0.0);
    got[1] = -0.5; /* request 0: sum|diff| 0.25 over sum|ref| 3.75 */
    test_out_errors_measure(got, ref, 1, 4, &req, &e);
    assert_near(e.req_mean_rel, 0.25 / 3.75, 1e-15);
    assert_int_equal(e.req_mean_at, 0);
    got[6] = 1e-3; /* request 1 keeps no key: any output is infinitely off */
    test_out_errors_measure(got, ref, 1, 4, &req, &e);
    assert_true(isinf(e.req_mean_rel));
    assert_int_equal(e.req_mean_at, 1);
    got[6] = 0.0;
    got[2] = NAN;
    test_out_errors_measure(got, ref, 1, 4, &req, &e);
    assert_true(isinf(e.req_mean_rel) && isinf(e.max_rel));
    assert_int_equal(e.req_mean_at, 0);
    assert_near(test_lse_error(4.0, 4.002), 0.002 / 4.002, 1e-15);
    assert_near(test_lse_error(0.25, 0.5), 0.25, 1e-15);
    assert_true(test_lse_error(-INFINITY, -INFINITY) == 0.0);
    assert_true(isinf(test_lse_error(NAN, 1.0)));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scale_off_by_2_percent),
        cmocka_unit_test(test_last_key_dropped),
        cmocka_unit_test(test_rounding_alone_passes),
        cmocka_unit_test(test_mean_measure),
    };
    return cmocka_run_group_tests_name("error_checks", tests, NULL, NULL);
}
