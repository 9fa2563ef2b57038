/* The mixed-batch reference suite (flashport.h, "mixed batches": flp_mixed_plan / flp_mixed_run),
 * run once per backend:
 *
 *     test_mixed vulkan|cuda [cmocka test filter]
 *
 * Exits 77 (skipped) when the backend is not built or has no device; Vulkan runs with the Khronos
 * validation layer, as the other suites.
 *
 * A batch is a list of requests, each a number of query rows over a number of keys in a paged
 * cache (pages in random order); the float64 reference is plain attention per request, its rows
 * the last keys. Outputs are poisoned first and every element must be written (test_qo_check,
 * the prefill suite's bounds).
 *
 * Tests:
 * - case_*: decode requests first then prefill chunks (the split the plan makes), prefill only
 *   (a stand-in decode request), decode only (a stand-in prefill request), one-row requests after
 *   a prefill chunk (they run on the prefill kernel), RoPE with offsets on HND pages with page
 *   ids at run time, caller ALiBi slopes with head dim 256 and no mask, a custom mask
 *   (everything on the prefill kernel), GQA 8 with head dim 64 f16 and no lse;
 * - replan_and_determinism: one plan re-planned through every case shape in turn (the decode
 *   side empty, full, both), each right, and a second run giving the same bits;
 * - bad_*: exact status, a message naming the bad value, outputs untouched (a run refused for a
 *   prefill-side tensor queues no decode either). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/plan.h" /* flp_plan_summarize: which kernel got which requests */
#include "core/reference.h"
#include "flashport/flashport.h"
#include "flashport/flashport_vulkan.h"
#include "tests/test_util.h"

static flp_context *g_ctx;

#define assert_ok(call) test_assert_ok(g_ctx, call)
#define MENTIONS TEST_MENTIONS

#define MAX_REQUESTS 16

/* A request: rows (1 = a decode step) over keys. */
typedef struct request_spec {
    int32_t rows, keys;
} request_spec;

typedef struct mixed_case {
    const char *name;
    int32_t hq, hkv, d;
    flp_dtype dtype;
    int32_t page_size;
    flp_kv_layout layout;
    flp_mask_mode mask;
    int pos; /* 0: none; 1: RoPE with offsets; 2: ALiBi with caller slopes */
    bool pages_at_run, lse;
    int32_t count;
    request_spec requests[MAX_REQUESTS];
} mixed_case;

#define NHD FLP_KV_LAYOUT_NHD
#define HND FLP_KV_LAYOUT_HND
#define BF16 FLP_DTYPE_BF16
#define F16 FLP_DTYPE_F16
#define CAUSAL FLP_MASK_CAUSAL

static const mixed_case cases[] = {
    {"decode_then_prefill",
     8,
     2,
     128,
     BF16,
     16,
     NHD,
     CAUSAL,
     0,
     false,
     true,
     9,
     {{1, 300}, {1, 1}, {1, 77}, {1, 129}, {1, 16}, {1, 200}, {17, 150}, {40, 40}, {5, 260}}},
    {"prefill_only",
     8,
     2,
     128,
     BF16,
     16,
     NHD,
     CAUSAL,
     0,
     false,
     true,
     3,
     {{33, 100}, {2, 90}, {64, 64}}},
    {"decode_only",
     8,
     2,
     128,
     BF16,
     16,
     NHD,
     CAUSAL,
     0,
     true,
     true,
     5,
     {{1, 50}, {1, 500}, {1, 33}, {1, 1}, {1, 260}}},
    {"ones_after_prefill",
     4,
     4,
     128,
     F16,
     8,
     NHD,
     CAUSAL,
     0,
     false,
     true,
     5,
     {{1, 40}, {9, 70}, {1, 300}, {1, 5}, {3, 3}}},
    {"rope_offsets_hnd_run_ids",
     8,
     2,
     128,
     F16,
     16,
     HND,
     CAUSAL,
     1,
     true,
     true,
     5,
     {{1, 90}, {1, 180}, {1, 41}, {20, 120}, {7, 64}}},
    {"custom_mask",
     8,
     2,
     64,
     BF16,
     16,
     NHD,
     FLP_MASK_CUSTOM,
     0,
     false,
     true,
     4,
     {{1, 60}, {1, 20}, {12, 50}, {4, 9}}},
    {"gqa8_d64_f16_no_lse",
     8,
     1,
     64,
     F16,
     16,
     NHD,
     CAUSAL,
     0,
     false,
     false,
     6,
     {{1, 1000}, {1, 128}, {1, 64}, {1, 5}, {100, 400}, {30, 30}}},
    {"alibi_d256",
     4,
     2,
     256,
     BF16,
     16,
     NHD,
     FLP_MASK_NONE,
     2,
     false,
     true,
     4,
     {{1, 70}, {1, 300}, {19, 45}, {2, 150}}},
};
#define CASE_COUNT (sizeof cases / sizeof cases[0])

/* ---- a problem on the host ------------------------------------------------------------------- */

typedef struct problem {
    const mixed_case *c;
    int32_t batch, rows, num_pages;
    int32_t qo_indptr[MAX_REQUESTS + 1], kv_len[MAX_REQUESTS];
    int32_t kv_indptr[MAX_REQUESTS + 1], kv_last_page_len[MAX_REQUESTS];
    int32_t *kv_indices; /* [kv_indptr[batch]] */
    int32_t *q_rope_offset, *k_rope_offset;
    float *alibi_slopes;
    uint8_t *mask;
    int32_t mask_indptr[MAX_REQUESTS];
    int64_t mask_bytes;
    float *q, *k, *v; /* stored values; k/v [num_pages, ...] in the case's layout */
    flp_variant variant;
} problem;

static void problem_make(problem *p, const mixed_case *c, uint64_t seed) {
    memset(p, 0, sizeof *p);
    p->c = c;
    p->batch = c->count;
    test_rng rng;
    test_rng_init(&rng, seed);
    for (int32_t b = 0; b < c->count; b++) {
        const request_spec *r = &c->requests[b];
        const int32_t pages = (r->keys + c->page_size - 1) / c->page_size;
        p->qo_indptr[b + 1] = p->qo_indptr[b] + r->rows;
        p->kv_len[b] = r->keys;
        p->kv_indptr[b + 1] = p->kv_indptr[b] + pages;
        p->kv_last_page_len[b] = pages > 0 ? r->keys - (pages - 1) * c->page_size : 1;
    }
    p->rows = p->qo_indptr[p->batch];
    p->num_pages = p->kv_indptr[p->batch] + 5;
    p->kv_indices = test_permutation(&rng, p->num_pages, true);
    memset(&p->variant, 0, sizeof p->variant);
    p->variant.head_dim = c->d;
    p->variant.q_dtype = c->dtype;
    p->variant.kv_dtype = c->dtype;
    p->variant.mask = c->mask;
    if (c->pos == 1) {
        test_variant_set_pos_encoding(&p->variant, ALIBI_OFF, ROPE_DEFAULT, c->hq, &rng, NULL);
        test_rope_offsets(&rng, p->batch, &p->q_rope_offset, &p->k_rope_offset);
    }
    if (c->pos == 2)
        test_variant_set_pos_encoding(&p->variant, ALIBI_CALLER, ROPE_OFF, c->hq, &rng,
                                      &p->alibi_slopes);
    if (c->mask == FLP_MASK_CUSTOM) {
        for (int32_t b = 0; b < p->batch; b++) {
            p->mask_indptr[b] = (int32_t)p->mask_bytes;
            p->mask_bytes += ((int64_t)c->requests[b].rows * c->requests[b].keys + 7) / 8;
        }
        p->mask = test_xcalloc((size_t)p->mask_bytes + 1, 1);
        for (int64_t i = 0; i < p->mask_bytes; i++)
            p->mask[i] = (uint8_t)test_rng_int(&rng, 0, 255);
    }
    const size_t q_n = (size_t)p->rows * c->hq * c->d;
    const size_t kv_n = (size_t)p->num_pages * c->page_size * c->hkv * c->d;
    p->q = test_xcalloc(q_n, sizeof(float));
    p->k = test_xcalloc(kv_n, sizeof(float));
    p->v = test_xcalloc(kv_n, sizeof(float));
    test_fill_stored(&rng, c->dtype, 1.0f, p->q, q_n);
    test_fill_stored(&rng, c->dtype, 1.0f, p->k, kv_n);
    test_fill_stored(&rng, c->dtype, 1.0f, p->v, kv_n);
}

static void problem_free(problem *p) {
    free(p->kv_indices);
    free(p->q_rope_offset);
    free(p->k_rope_offset);
    free(p->alibi_slopes);
    free(p->mask);
    free(p->q);
    free(p->k);
    free(p->v);
    memset(p, 0, sizeof *p);
}

static void problem_reference(const problem *p, double *out, double *lse) {
    const mixed_case *c = p->c;
    int32_t tok_indptr[MAX_REQUESTS + 1];
    double *k = test_gather_paged_kv(p->batch, c->hkv, c->d, c->page_size, c->layout, p->num_pages,
                                     p->k, 1.0f, p->kv_indptr, p->kv_indices, p->kv_last_page_len,
                                     p->kv_len, tok_indptr);
    double *v = test_gather_paged_kv(p->batch, c->hkv, c->d, c->page_size, c->layout, p->num_pages,
                                     p->v, 1.0f, p->kv_indptr, p->kv_indices, p->kv_last_page_len,
                                     p->kv_len, tok_indptr);
    flp_ref_attention a;
    test_ref_attention_init(&a, &p->variant, p->batch, c->hq, c->hkv);
    a.qo_indptr = p->qo_indptr;
    a.kv_indptr = tok_indptr;
    a.k = k;
    a.v = v;
    a.custom_mask = p->mask;
    a.mask_indptr = p->mask ? p->mask_indptr : NULL;
    a.q_rope_offset = p->q_rope_offset;
    a.k_rope_offset = p->k_rope_offset;
    test_ref_attention_run(&a, p->q, p->alibi_slopes, out, lse);
    free(k);
    free(v);
}

/* ---- device side ----------------------------------------------------------------------------- */

typedef struct dev_problem {
    test_qo qo;
    flp_buffer *k_buf, *v_buf, *idx_buf, *mask_buf;
    flp_tensor k, v, idx, mask;
} dev_problem;

static void dev_create(const problem *p, int32_t rows_capacity, dev_problem *dv) {
    const mixed_case *c = p->c;
    memset(dv, 0, sizeof *dv);
    const test_qo_layout layout = {
        .row_stride = (int64_t)c->hq * c->d, .head_stride = c->d, .lse_row_stride = c->hq};
    test_qo_create(&dv->qo, g_ctx, c->dtype, c->hq, c->d, rows_capacity, layout);
    test_qo_write(&dv->qo, p->q, p->rows);
    const bool nhd = c->layout == NHD;
    const int64_t kv_shape[4] = {p->num_pages, nhd ? c->page_size : c->hkv,
                                 nhd ? c->hkv : c->page_size, c->d};
    const size_t kv_n = (size_t)p->num_pages * c->page_size * c->hkv * c->d;
    dv->k = test_tensor_upload(g_ctx, p->k, c->dtype, 4, kv_shape, kv_n, &dv->k_buf);
    dv->v = test_tensor_upload(g_ctx, p->v, c->dtype, 4, kv_shape, kv_n, &dv->v_buf);
    const int64_t idx_shape[1] = {p->kv_indptr[p->batch]};
    dv->idx = test_tensor_upload(g_ctx, p->kv_indices, FLP_DTYPE_I32, 1, idx_shape,
                                 (size_t)p->kv_indptr[p->batch], &dv->idx_buf);
    if (p->mask) {
        const int64_t mask_shape[1] = {p->mask_bytes};
        dv->mask = test_tensor_upload(g_ctx, p->mask, FLP_DTYPE_U8, 1, mask_shape,
                                      (size_t)p->mask_bytes, &dv->mask_buf);
    }
}

static void dev_free(dev_problem *dv) {
    test_qo_free(&dv->qo);
    flp_buffer_destroy(dv->k_buf);
    flp_buffer_destroy(dv->v_buf);
    flp_buffer_destroy(dv->idx_buf);
    flp_buffer_destroy(dv->mask_buf);
    memset(dv, 0, sizeof *dv);
}

static flp_prefill_plan_args plan_args(const problem *p) {
    flp_prefill_plan_args a;
    memset(&a, 0, sizeof a);
    a.batch_size = p->batch;
    a.qo_indptr = p->qo_indptr;
    a.kv_storage = FLP_KV_PAGED;
    a.kv_indptr = p->kv_indptr;
    a.kv_indices = p->c->pages_at_run ? NULL : p->kv_indices;
    a.kv_last_page_len = p->kv_last_page_len;
    a.page_size = p->c->page_size;
    a.kv_layout = p->c->layout;
    a.mask_indptr = p->mask ? p->mask_indptr : NULL;
    a.q_rope_offset = p->q_rope_offset;
    a.k_rope_offset = p->k_rope_offset;
    a.alibi_slopes = p->alibi_slopes;
    a.variant = p->variant;
    return a;
}

static flp_prefill_run_args run_args(const problem *p, const dev_problem *dv) {
    flp_prefill_run_args r;
    memset(&r, 0, sizeof r);
    r.q = dv->qo.q;
    r.k = dv->k;
    r.v = dv->v;
    r.out = dv->qo.out;
    r.lse = p->c->lse ? &dv->qo.lse : NULL;
    r.custom_mask = p->mask ? &dv->mask : NULL;
    r.kv_indices = p->c->pages_at_run ? &dv->idx : NULL;
    return r;
}

static flp_plan *create_plan(int32_t hq, int32_t hkv, int32_t d, int32_t max_batch,
                             int32_t max_rows, int32_t max_pages) {
    flp_plan_desc pd = test_plan_desc_make(max_batch, max_pages, hq, hkv, d);
    pd.max_qo_rows = max_rows;
    return test_plan_create(g_ctx, &pd);
}

static void run_and_wait(const problem *p, const dev_problem *dv, const flp_plan *plan) {
    test_qo_poison(&dv->qo);
    const flp_prefill_run_args r = run_args(p, dv);
    assert_ok(flp_mixed_run(g_ctx, plan, &r));
    assert_ok(flp_context_synchronize(g_ctx));
}

static void check_against_reference(const problem *p, const dev_problem *dv, const char *what) {
    const mixed_case *c = p->c;
    double *ref = test_xcalloc((size_t)p->rows * c->hq * c->d, sizeof(double));
    double *ref_lse = test_xcalloc((size_t)p->rows * c->hq, sizeof(double));
    problem_reference(p, ref, ref_lse);
    test_readback rb = test_qo_read(&dv->qo);
    const test_qo_requests req = {c->name, p->batch, p->qo_indptr, p->kv_len, c->lse, c->dtype};
    test_qo_check(&dv->qo, &rb, &req, ref, ref_lse, what);
    test_readback_free(&rb);
    free(ref);
    free(ref_lse);
}

/* ---- tests ----------------------------------------------------------------------------------- */

/* The decode kernel took the leading one-row requests (every KV head of each is an item), or
 * only the stand-in (at most one item per KV head) when there are none; the prefill kernel has
 * work exactly when some request is left for it. */
static void expect_routing(const problem *p, const flp_plan *plan) {
    int32_t d = 0;
    while (p->c->mask != FLP_MASK_CUSTOM && d < p->batch && p->c->requests[d].rows == 1)
        d++;
    flp_plan_summary s;
    flp_plan_summarize(plan, &s);
    if (d > 0)
        assert_true(s.decode_items >= d * p->c->hkv);
    else
        assert_true(s.decode_items <= p->c->hkv);
    assert_true((s.prefill_items > 0) == (d < p->batch));
}

static void test_case(void **state) {
    const mixed_case *c = *state;
    problem p;
    problem_make(&p, c, test_name_seed(c->name));
    dev_problem dv;
    dev_create(&p, p.rows, &dv);
    flp_plan *plan = create_plan(c->hq, c->hkv, c->d, p.batch, p.rows, p.kv_indptr[p.batch] + 1);
    const flp_prefill_plan_args a = plan_args(&p);
    assert_ok(flp_mixed_plan(g_ctx, plan, &a));
    expect_routing(&p, plan);
    run_and_wait(&p, &dv, plan);
    check_against_reference(&p, &dv, "flp_mixed_run");
    flp_plan_destroy(plan);
    dev_free(&dv);
    problem_free(&p);
}

/* The cases of one head shape (8 / 2 / 128) in turn on one plan; each run twice. */
static void test_replan_and_determinism(void **state) {
    (void)state;
    const mixed_case *order[] = {&cases[0], &cases[1], &cases[2], &cases[0], &cases[2], &cases[1]};
    flp_plan *plan = create_plan(8, 2, 128, MAX_REQUESTS, 512, 256);
    for (size_t i = 0; i < sizeof order / sizeof order[0]; i++) {
        problem p;
        problem_make(&p, order[i], 100 + i);
        dev_problem dv;
        dev_create(&p, p.rows, &dv);
        const flp_prefill_plan_args a = plan_args(&p);
        assert_ok(flp_mixed_plan(g_ctx, plan, &a));
        run_and_wait(&p, &dv, plan);
        check_against_reference(&p, &dv, test_str("re-plan %zu (%s)", i, order[i]->name));
        test_readback first = test_qo_read(&dv.qo);
        run_and_wait(&p, &dv, plan);
        test_readback second = test_qo_read(&dv.qo);
        test_qo_expect_same_bits(&dv.qo, &first, &second, "a second run");
        test_readback_free(&first);
        test_readback_free(&second);
        dev_free(&dv);
        problem_free(&p);
    }
    flp_plan_destroy(plan);
}

static void expect(flp_status got, flp_status want, const char *call, const char *const *mentions) {
    test_expect_status(g_ctx, got, want, call, mentions);
}

static void test_bad(void **state) {
    (void)state;
    problem p;
    problem_make(&p, &cases[5], 9); /* custom mask: a mask tensor to get wrong */
    dev_problem dv;
    dev_create(&p, p.rows, &dv);
    flp_plan *plan = create_plan(8, 2, 64, p.batch, p.rows, p.kv_indptr[p.batch] + 1);
    const flp_prefill_run_args good_run = run_args(&p, &dv);
    test_qo_poison(&dv.qo);
    test_qo_expect_failed(&dv.qo, flp_mixed_run(g_ctx, plan, &good_run), FLP_ERROR_INVALID_ARGUMENT,
                          "flp_mixed_run", MENTIONS("holds no mixed batch"));
    const flp_prefill_plan_args good = plan_args(&p);
    flp_prefill_plan_args a = good;
    expect(flp_mixed_plan(g_ctx, plan, NULL), FLP_ERROR_INVALID_ARGUMENT, "flp_mixed_plan",
           MENTIONS("args is NULL"));
    a.kv_storage = FLP_KV_RAGGED;
    expect(flp_mixed_plan(g_ctx, plan, &a), FLP_ERROR_UNSUPPORTED, "flp_mixed_plan",
           MENTIONS("kv_storage = 1"));
    a = good;
    a.batch_size = 0;
    expect(flp_mixed_plan(g_ctx, plan, &a), FLP_ERROR_INVALID_ARGUMENT, "flp_mixed_plan",
           MENTIONS("batch_size = 0"));
    a = good;
    a.mask_indptr = NULL;
    expect(flp_mixed_plan(g_ctx, plan, &a), FLP_ERROR_INVALID_ARGUMENT, "flp_mixed_plan",
           MENTIONS("mask_indptr"));
    a = good;
    int32_t last[MAX_REQUESTS];
    memcpy(last, p.kv_last_page_len, sizeof last);
    last[3] = 1; /* request 3: 4 rows over fewer keys */
    a.kv_last_page_len = last;
    expect(flp_mixed_plan(g_ctx, plan, &a), FLP_ERROR_INVALID_ARGUMENT, "flp_mixed_plan",
           MENTIONS("request 3 has qo_len = 4", "kv_len = 1"));
    a = good;
    int32_t *ids = test_copy_i32(p.kv_indices, (size_t)p.kv_indptr[p.batch]);
    ids[p.kv_indptr[2]] = -7; /* a page of request 2 */
    a.kv_indices = ids;
    expect(flp_mixed_plan(g_ctx, plan, &a), FLP_ERROR_INVALID_ARGUMENT, "flp_mixed_plan",
           MENTIONS("-7"));
    free(ids);
    /* a good plan, then runs refused before anything is queued */
    assert_ok(flp_mixed_plan(g_ctx, plan, &good));
    flp_prefill_run_args r = good_run;
    flp_tensor short_mask = dv.mask;
    short_mask.shape[0] = p.mask_bytes - 1;
    r.custom_mask = &short_mask;
    test_qo_expect_failed(&dv.qo, flp_mixed_run(g_ctx, plan, &r), FLP_ERROR_INVALID_ARGUMENT,
                          "flp_mixed_run", MENTIONS("custom_mask"));
    r = good_run;
    r.q.shape[0] = p.rows - 1;
    test_qo_expect_failed(&dv.qo, flp_mixed_run(g_ctx, plan, &r), FLP_ERROR_INVALID_ARGUMENT,
                          "flp_mixed_run", MENTIONS("q"));
    /* another plan call replaces the mixed plan */
    flp_decode_plan_args d;
    memset(&d, 0, sizeof d);
    d.batch_size = 1;
    d.page_size = p.c->page_size;
    d.kv_indptr = p.kv_indptr;
    d.kv_indices = p.kv_indices;
    d.kv_last_page_len = p.kv_last_page_len;
    d.variant = p.variant;
    d.variant.mask = CAUSAL;
    assert_ok(flp_decode_plan(g_ctx, plan, &d));
    test_qo_expect_failed(&dv.qo, flp_mixed_run(g_ctx, plan, &good_run), FLP_ERROR_INVALID_ARGUMENT,
                          "flp_mixed_run", MENTIONS("holds no mixed batch"));
    flp_plan_destroy(plan);
    /* a decode-only plan cannot hold one */
    flp_plan_desc pd = test_plan_desc_make(4, 64, 8, 2, 64);
    plan = test_plan_create(g_ctx, &pd);
    expect(flp_mixed_plan(g_ctx, plan, &good), FLP_ERROR_CAPACITY, "flp_mixed_plan",
           MENTIONS("max_qo_rows = 0"));
    flp_plan_destroy(plan);
    dev_free(&dv);
    problem_free(&p);
}

int main(int argc, char **argv) {
    const int rc = test_backend_open(argc, argv, flp_vulkan_validation_message_count, &g_ctx);
    if (rc != 0)
        return rc;
    test_list l = {0};
    for (size_t i = 0; i < CASE_COUNT; ++i)
        test_list_add(&l, "case_", cases[i].name, test_case, false, (void *)&cases[i]);
    test_list_add(&l, "", "replan_and_determinism", test_replan_and_determinism, false, NULL);
    test_list_add(&l, "", "bad", test_bad, true, NULL);
    return test_list_run(&l, "mixed", argc, argv, test_backend_group_setup,
                         test_backend_group_teardown);
}
