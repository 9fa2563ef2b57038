/* The block-sparse reference suite (flashport.h, "block-sparse attention": flp_block_sparse_*),
 * run once per backend:
 *
 *     test_block_sparse vulkan|cuda [cmocka test filter]
 *
 * Exits 77 (skipped) when the backend is not built or has no device; Vulkan runs with the Khronos
 * validation layer, as the other suites.
 *
 * Every case draws a random BSR matrix (each column block kept with a case's probability, some row
 * blocks empty), optional per-block mask bits, random q/k/v (never zero); the float64 reference
 * is dense attention of all M rows over all N keys with the bit mask the blocks, their bits, the
 * causal rule (key j for row i iff j <= N - M + i) and the window give. Outputs are poisoned first
 * and every element must be written (test_qo_check, the prefill suite's bounds); rows that keep
 * no key must be exactly 0 with lse -inf.
 *
 * Tests:
 * - case_*: GQA groups 1, 4 and 8; head dims 64, 128 and 256; f16, bf16, fp8 e4m3 KV with scales;
 *   block sizes 1 x 16, 16 x 16, 32 x 8, 8 x 4, 64 x 16; density 0.3 to 1; causal, window, soft
 *   cap, block masks; lse written or not; k/v with a padded row stride;
 * - replan_and_determinism: one object planned for two matrices in turn within its capacities,
 *   each right, and a second run giving the same bits;
 * - bad_*: exact status, a message naming the bad value, outputs untouched. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/reference.h"
#include "flashport/flashport.h"
#include "flashport/flashport_vulkan.h"
#include "tests/test_util.h"

static flp_context *g_ctx;

#define assert_ok(call) test_assert_ok(g_ctx, call)
#define MENTIONS TEST_MENTIONS

typedef struct bsr_case {
    const char *name;
    int32_t hq, hkv, d;
    flp_dtype q_dtype, kv_dtype;
    int32_t rows, cols, block_rows, block_cols;
    double density;  /* chance that a column block is kept */
    bool block_mask; /* per-block bits, each kept with chance 0.7 */
    flp_mask_mode mask;
    int32_t window_left; /* >= 0: the sliding window */
    float soft_cap;
    bool lse, padded_kv;
} bsr_case;

#define BF16 FLP_DTYPE_BF16
#define F16 FLP_DTYPE_F16
#define E4M3 FLP_DTYPE_E4M3

static const bsr_case cases[] = {
    {"basic_bf16", 8, 2, 128, BF16, BF16, 64, 128, 16, 16, 0.5, false, FLP_MASK_NONE, -1, 0, true,
     false},
    {"causal_block_mask_f16", 4, 4, 64, F16, F16, 96, 160, 32, 8, 0.6, true, FLP_MASK_CAUSAL, -1, 0,
     true, true},
    {"window_soft_cap_e4m3_d256", 8, 2, 256, BF16, E4M3, 40, 64, 8, 4, 0.7, false, FLP_MASK_CAUSAL,
     20, 30.0f, true, false},
    {"rows_of_one_gqa8", 8, 1, 128, BF16, BF16, 24, 256, 1, 16, 0.3, false, FLP_MASK_NONE, -1, 0,
     true, false},
    {"dense_no_lse", 4, 1, 64, F16, F16, 64, 96, 64, 16, 1.0, false, FLP_MASK_NONE, -1, 0, false,
     false},
};
#define CASE_COUNT (sizeof cases / sizeof cases[0])

/* ---- a problem on the host ------------------------------------------------------------------- */

typedef struct problem {
    const bsr_case *c;
    int32_t row_blocks, col_blocks, nnz;
    int32_t *indptr;     /* [row_blocks + 1] */
    int32_t *indices;    /* [nnz] */
    uint8_t *block_mask; /* [nnz R C bits] or NULL */
    float *q, *k, *v;    /* [rows, hq, d], [cols, hkv, d] stored values */
    float k_scale, v_scale;
} problem;

static void problem_make(problem *p, const bsr_case *c, uint64_t seed) {
    memset(p, 0, sizeof *p);
    p->c = c;
    test_rng rng;
    test_rng_init(&rng, seed);
    p->row_blocks = c->rows / c->block_rows;
    p->col_blocks = c->cols / c->block_cols;
    p->indptr = test_xcalloc((size_t)p->row_blocks + 1, sizeof(int32_t));
    p->indices = test_xcalloc((size_t)p->row_blocks * p->col_blocks + 1, sizeof(int32_t));
    for (int32_t i = 0; i < p->row_blocks; i++) {
        /* every third row block of a sparse case keeps nothing */
        const bool empty = c->density < 1.0 && i % 3 == 1;
        for (int32_t j = 0; j < p->col_blocks && !empty; j++)
            if (test_rng_uniform(&rng, 0, 1) < c->density)
                p->indices[p->nnz++] = j;
        p->indptr[i + 1] = p->nnz;
    }
    if (c->block_mask) {
        const size_t bits = (size_t)p->nnz * c->block_rows * c->block_cols;
        p->block_mask = test_xcalloc(bits / 8 + 1, 1);
        for (size_t b = 0; b < bits; b++)
            if (test_rng_uniform(&rng, 0, 1) < 0.7)
                p->block_mask[b / 8] |= (uint8_t)(1u << (b % 8));
    }
    const bool fp8 = test_is_fp8(c->kv_dtype);
    p->k_scale = fp8 ? 0.45f : 1.0f;
    p->v_scale = fp8 ? 1.7f : 1.0f;
    const size_t q_n = (size_t)c->rows * c->hq * c->d, kv_n = (size_t)c->cols * c->hkv * c->d;
    p->q = test_xcalloc(q_n, sizeof(float));
    p->k = test_xcalloc(kv_n, sizeof(float));
    p->v = test_xcalloc(kv_n, sizeof(float));
    test_fill_stored(&rng, c->q_dtype, 1.0f, p->q, q_n);
    test_fill_stored(&rng, c->kv_dtype, p->k_scale, p->k, kv_n);
    test_fill_stored(&rng, c->kv_dtype, p->v_scale, p->v, kv_n);
}

static void problem_free(problem *p) {
    free(p->indptr);
    free(p->indices);
    free(p->block_mask);
    free(p->q);
    free(p->k);
    free(p->v);
    memset(p, 0, sizeof *p);
}

static flp_variant problem_variant(const problem *p) {
    const bsr_case *c = p->c;
    flp_variant v = test_variant_make(c->d, c->q_dtype, c->kv_dtype, c->mask, c->soft_cap,
                                      p->k_scale, p->v_scale);
    v.use_window = c->window_left >= 0;
    v.window_left = v.use_window ? c->window_left : 0;
    return v;
}

/* Whether row m keeps key n: its block is kept, the block's bit, causal and window allow. */
static bool keeps(const problem *p, int32_t m, int32_t n) {
    const bsr_case *c = p->c;
    const int32_t i = m / c->block_rows, j = n / c->block_cols;
    int32_t b = -1;
    for (int32_t t = p->indptr[i]; t < p->indptr[i + 1]; t++)
        if (p->indices[t] == j)
            b = t;
    if (b < 0)
        return false;
    if (p->block_mask) {
        const size_t bit =
            ((size_t)b * c->block_rows + (size_t)(m % c->block_rows)) * c->block_cols +
            (size_t)(n % c->block_cols);
        if (!(p->block_mask[bit / 8] >> (bit % 8) & 1))
            return false;
    }
    const int64_t pos = (int64_t)m + c->cols - c->rows;
    if (c->mask == FLP_MASK_CAUSAL && n > pos)
        return false;
    return c->window_left < 0 || n >= pos - c->window_left;
}

/* Dense float64 attention with the whole [rows, cols] bit mask. */
static void problem_reference(const problem *p, double *out, double *lse) {
    const bsr_case *c = p->c;
    const size_t bits = (size_t)c->rows * c->cols;
    uint8_t *mask = test_xcalloc(bits / 8 + 1, 1);
    for (int32_t m = 0; m < c->rows; m++)
        for (int32_t n = 0; n < c->cols; n++)
            if (keeps(p, m, n)) {
                const size_t bit = (size_t)m * c->cols + (size_t)n;
                mask[bit / 8] |= (uint8_t)(1u << (bit % 8));
            }
    const size_t kv_n = (size_t)c->cols * c->hkv * c->d;
    double *k = test_xcalloc(kv_n, sizeof(double)), *v = test_xcalloc(kv_n, sizeof(double));
    for (size_t i = 0; i < kv_n; i++) {
        k[i] = (double)p->k[i] * p->k_scale;
        v[i] = (double)p->v[i] * p->v_scale;
    }
    const flp_variant variant = problem_variant(p);
    flp_ref_attention a;
    test_ref_attention_init(&a, &variant, 1, c->hq, c->hkv);
    const int32_t qo_indptr[2] = {0, c->rows}, kv_indptr[2] = {0, c->cols}, mask_indptr[1] = {0};
    a.qo_indptr = qo_indptr;
    a.kv_indptr = kv_indptr;
    a.k = k;
    a.v = v;
    a.mask = FLP_MASK_CUSTOM; /* the causal rule and the window are in the bits */
    a.use_window = false;
    a.custom_mask = mask;
    a.mask_indptr = mask_indptr;
    test_ref_attention_run(&a, p->q, NULL, out, lse);
    free(mask);
    free(k);
    free(v);
}

/* ---- device side ----------------------------------------------------------------------------- */

typedef struct dev_problem {
    test_qo qo;
    flp_buffer *k_buf, *v_buf;
    flp_tensor k, v;
} dev_problem;

/* [cols, hkv, d], rows padded by 8 elements when the case says so. */
static flp_tensor kv_upload(const problem *p, const float *x, flp_buffer **buf) {
    const bsr_case *c = p->c;
    const size_t es = flp_dtype_size(c->kv_dtype), row = (size_t)c->hkv * c->d;
    const size_t stride = row + (c->padded_kv ? 16 / es : 0);
    const size_t bytes = ((size_t)c->cols * stride + 1) * es;
    uint8_t *img = test_xcalloc(bytes, 1);
    memset(img, 0xFF, bytes); /* NaN padding: reading it would show */
    for (int32_t n = 0; n < c->cols; n++)
        assert_int_equal(flp_convert_from_f32(c->kv_dtype, x + (size_t)n * row,
                                              img + (size_t)n * stride * es, row),
                         FLP_OK);
    *buf = test_buffer_new(g_ctx, bytes);
    assert_ok(flp_buffer_write(g_ctx, *buf, 0, img, bytes));
    free(img);
    flp_tensor t;
    memset(&t, 0, sizeof t);
    t.buf = *buf;
    t.dtype = c->kv_dtype;
    t.ndim = 3;
    t.shape[0] = c->cols;
    t.shape[1] = c->hkv;
    t.shape[2] = c->d;
    t.stride[0] = (int64_t)stride;
    t.stride[1] = c->d;
    t.stride[2] = 1;
    return t;
}

static void dev_create(const problem *p, dev_problem *dv) {
    const bsr_case *c = p->c;
    memset(dv, 0, sizeof *dv);
    const test_qo_layout layout = {
        .row_stride = (int64_t)c->hq * c->d, .head_stride = c->d, .lse_row_stride = c->hq};
    test_qo_create(&dv->qo, g_ctx, c->q_dtype, c->hq, c->d, c->rows, layout);
    test_qo_write(&dv->qo, p->q, c->rows);
    dv->k = kv_upload(p, p->k, &dv->k_buf);
    dv->v = kv_upload(p, p->v, &dv->v_buf);
}

static void dev_free(dev_problem *dv) {
    test_qo_free(&dv->qo);
    flp_buffer_destroy(dv->k_buf);
    flp_buffer_destroy(dv->v_buf);
    memset(dv, 0, sizeof *dv);
}

static flp_block_sparse_desc bsr_desc(const problem *p, int32_t scale) {
    const bsr_case *c = p->c;
    flp_block_sparse_desc d;
    memset(&d, 0, sizeof d);
    d.max_rows = c->rows * scale;
    d.max_blocks = (p->nnz > 0 ? p->nnz : 1) * scale;
    d.block_rows = c->block_rows;
    d.block_cols = c->block_cols;
    d.num_qo_heads = c->hq;
    d.num_kv_heads = c->hkv;
    d.head_dim = c->d;
    return d;
}

static flp_block_sparse_plan_args plan_args(const problem *p) {
    flp_block_sparse_plan_args a;
    memset(&a, 0, sizeof a);
    a.num_rows = p->c->rows;
    a.num_cols = p->c->cols;
    a.indptr = p->indptr;
    a.indices = p->indices;
    a.block_mask = p->block_mask;
    a.variant = problem_variant(p);
    return a;
}

static flp_block_sparse_run_args run_args(const problem *p, const dev_problem *dv) {
    flp_block_sparse_run_args r;
    memset(&r, 0, sizeof r);
    r.q = dv->qo.q;
    r.k = dv->k;
    r.v = dv->v;
    r.out = dv->qo.out;
    r.lse = p->c->lse ? &dv->qo.lse : NULL;
    return r;
}

static void run_and_wait(const problem *p, const dev_problem *dv, const flp_block_sparse *bsr) {
    test_qo_poison(&dv->qo);
    const flp_block_sparse_run_args r = run_args(p, dv);
    assert_ok(flp_block_sparse_run(g_ctx, bsr, &r));
    assert_ok(flp_context_synchronize(g_ctx));
}

static void check_against_reference(const problem *p, const dev_problem *dv, const char *what) {
    const bsr_case *c = p->c;
    double *ref = test_xcalloc((size_t)c->rows * c->hq * c->d, sizeof(double));
    double *ref_lse = test_xcalloc((size_t)c->rows * c->hq, sizeof(double));
    problem_reference(p, ref, ref_lse);
    /* the row blocks as the requests of the checks */
    int32_t *qo_indptr = test_xcalloc((size_t)p->row_blocks + 1, sizeof(int32_t));
    int32_t *kv_len = test_xcalloc((size_t)p->row_blocks, sizeof(int32_t));
    for (int32_t i = 0; i < p->row_blocks; i++) {
        qo_indptr[i + 1] = (i + 1) * c->block_rows;
        kv_len[i] = (p->indptr[i + 1] - p->indptr[i]) * c->block_cols;
    }
    test_readback rb = test_qo_read(&dv->qo);
    const test_qo_requests req = {c->name, p->row_blocks, qo_indptr, kv_len, c->lse, c->kv_dtype};
    test_qo_check(&dv->qo, &rb, &req, ref, ref_lse, what);
    test_readback_free(&rb);
    free(qo_indptr);
    free(kv_len);
    free(ref);
    free(ref_lse);
}

/* ---- tests ----------------------------------------------------------------------------------- */

static void test_case(void **state) {
    const bsr_case *c = *state;
    problem p;
    problem_make(&p, c, test_name_seed(c->name));
    dev_problem dv;
    dev_create(&p, &dv);
    const flp_block_sparse_desc desc = bsr_desc(&p, 1);
    flp_block_sparse *bsr = NULL;
    assert_ok(flp_block_sparse_create(g_ctx, &desc, &bsr));
    const flp_block_sparse_plan_args a = plan_args(&p);
    assert_ok(flp_block_sparse_plan(g_ctx, bsr, &a));
    run_and_wait(&p, &dv, bsr);
    check_against_reference(&p, &dv, "flp_block_sparse_run");
    flp_block_sparse_destroy(bsr);
    dev_free(&dv);
    problem_free(&p);
}

static void test_replan_and_determinism(void **state) {
    (void)state;
    problem a, b;
    problem_make(&a, &cases[1], 21);
    bsr_case smaller = cases[1];
    smaller.rows = 64;
    smaller.density = 0.9;
    problem_make(&b, &smaller, 22);
    flp_block_sparse_desc desc = bsr_desc(&a, 2);
    flp_block_sparse *bsr = NULL;
    assert_ok(flp_block_sparse_create(g_ctx, &desc, &bsr));
    const problem *order[3] = {&a, &b, &a};
    for (int i = 0; i < 3; i++) {
        dev_problem dv;
        dev_create(order[i], &dv);
        const flp_block_sparse_plan_args pa = plan_args(order[i]);
        assert_ok(flp_block_sparse_plan(g_ctx, bsr, &pa));
        run_and_wait(order[i], &dv, bsr);
        check_against_reference(order[i], &dv, test_str("re-plan %d", i));
        test_readback first = test_qo_read(&dv.qo);
        run_and_wait(order[i], &dv, bsr);
        test_readback second = test_qo_read(&dv.qo);
        test_qo_expect_same_bits(&dv.qo, &first, &second, "a second run");
        test_readback_free(&first);
        test_readback_free(&second);
        dev_free(&dv);
    }
    flp_block_sparse_destroy(bsr);
    problem_free(&a);
    problem_free(&b);
}

/* ---- bad input ------------------------------------------------------------------------------- */

static void expect(flp_status got, flp_status want, const char *call, const char *const *mentions) {
    test_expect_status(g_ctx, got, want, call, mentions);
}

static void test_bad_desc(void **state) {
    (void)state;
    problem p;
    problem_make(&p, &cases[0], 3);
    flp_block_sparse *bsr = NULL;
    flp_block_sparse_desc d = bsr_desc(&p, 1);
    size_t bytes = 0;
    expect(flp_block_sparse_create(g_ctx, NULL, &bsr), FLP_ERROR_INVALID_ARGUMENT,
           "flp_block_sparse_create", MENTIONS("desc is NULL"));
    expect(flp_block_sparse_workspace_size(g_ctx, &d, NULL), FLP_ERROR_INVALID_ARGUMENT,
           "flp_block_sparse_workspace_size", MENTIONS("bytes is NULL"));
    d.max_blocks = 0;
    expect(flp_block_sparse_create(g_ctx, &d, &bsr), FLP_ERROR_INVALID_ARGUMENT,
           "flp_block_sparse_create", MENTIONS("max_blocks = 0"));
    d = bsr_desc(&p, 1);
    d.block_rows = d.max_rows + 1;
    expect(flp_block_sparse_create(g_ctx, &d, &bsr), FLP_ERROR_INVALID_ARGUMENT,
           "flp_block_sparse_create", MENTIONS(test_str("block_rows = %d", d.max_rows + 1)));
    d = bsr_desc(&p, 1);
    d.block_cols = FLP_MAX_PAGE_SIZE + 1;
    expect(flp_block_sparse_workspace_size(g_ctx, &d, &bytes), FLP_ERROR_INVALID_ARGUMENT,
           "flp_block_sparse_workspace_size",
           MENTIONS(test_str("block_cols = %d", FLP_MAX_PAGE_SIZE + 1)));
    d = bsr_desc(&p, 1);
    d.num_kv_heads = 3;
    expect(flp_block_sparse_create(g_ctx, &d, &bsr), FLP_ERROR_INVALID_ARGUMENT,
           "flp_block_sparse_create", MENTIONS("num_kv_heads = 3"));
    d = bsr_desc(&p, 1);
    assert_ok(flp_block_sparse_workspace_size(g_ctx, &d, &bytes));
    flp_buffer *ws = test_buffer_new(g_ctx, bytes);
    d.workspace = ws;
    d.workspace_offset = 256;
    expect(flp_block_sparse_create(g_ctx, &d, &bsr), FLP_ERROR_CAPACITY, "flp_block_sparse_create",
           MENTIONS("flp_block_sparse_workspace_size"));
    d.workspace_offset = 0;
    assert_ok(flp_block_sparse_create(g_ctx, &d, &bsr)); /* exactly the size: fits */
    flp_block_sparse_destroy(bsr);
    flp_buffer_destroy(ws);
    flp_block_sparse_destroy(NULL);
    problem_free(&p);
}

static void test_bad_plan_and_run(void **state) {
    (void)state;
    problem p;
    problem_make(&p, &cases[1], 4);
    dev_problem dv;
    dev_create(&p, &dv);
    const flp_block_sparse_desc desc = bsr_desc(&p, 1);
    flp_block_sparse *bsr = NULL;
    assert_ok(flp_block_sparse_create(g_ctx, &desc, &bsr));
    const flp_block_sparse_run_args good_run = run_args(&p, &dv);
    test_qo_poison(&dv.qo);
    test_qo_expect_failed(&dv.qo, flp_block_sparse_run(g_ctx, bsr, &good_run),
                          FLP_ERROR_INVALID_ARGUMENT, "flp_block_sparse_run",
                          MENTIONS("nothing planned"));
    const flp_block_sparse_plan_args good = plan_args(&p);
    flp_block_sparse_plan_args a = good;
    a.num_rows = p.c->rows - 1;
    expect(flp_block_sparse_plan(g_ctx, bsr, &a), FLP_ERROR_INVALID_ARGUMENT,
           "flp_block_sparse_plan",
           MENTIONS(test_str("num_rows = %d", p.c->rows - 1),
                    test_str("block_rows = %d", p.c->block_rows)));
    a = good;
    a.num_rows = p.c->rows + p.c->block_rows;
    expect(flp_block_sparse_plan(g_ctx, bsr, &a), FLP_ERROR_CAPACITY, "flp_block_sparse_plan",
           MENTIONS(test_str("max_rows = %d", p.c->rows)));
    a = good;
    a.num_cols = p.c->cols + 3;
    expect(flp_block_sparse_plan(g_ctx, bsr, &a), FLP_ERROR_INVALID_ARGUMENT,
           "flp_block_sparse_plan", MENTIONS(test_str("num_cols = %d", p.c->cols + 3)));
    a = good;
    int32_t *indices = test_copy_i32(p.indices, (size_t)p.nnz);
    indices[0] = p.col_blocks;
    a.indices = indices;
    expect(flp_block_sparse_plan(g_ctx, bsr, &a), FLP_ERROR_INVALID_ARGUMENT,
           "flp_block_sparse_plan", MENTIONS(test_str("indices[0] = %d", p.col_blocks)));
    memcpy(indices, p.indices, sizeof(int32_t) * (size_t)p.nnz);
    assert_true(p.indptr[1] >= 2); /* row block 0 keeps two blocks: swap them */
    indices[0] = p.indices[1];
    indices[1] = p.indices[0];
    expect(flp_block_sparse_plan(g_ctx, bsr, &a), FLP_ERROR_INVALID_ARGUMENT,
           "flp_block_sparse_plan", MENTIONS("does not increase", "row block 0"));
    free(indices);
    a = good;
    a.variant.pos_encoding = FLP_POS_ALIBI;
    expect(flp_block_sparse_plan(g_ctx, bsr, &a), FLP_ERROR_UNSUPPORTED, "flp_block_sparse_plan",
           MENTIONS("variant.pos_encoding = 2"));
    a = good;
    a.variant.mask = FLP_MASK_CUSTOM;
    expect(flp_block_sparse_plan(g_ctx, bsr, &a), FLP_ERROR_UNSUPPORTED, "flp_block_sparse_plan",
           MENTIONS("variant.mask = 2", "block_mask"));
    a = good;
    int32_t *indptr = test_copy_i32(p.indptr, (size_t)p.row_blocks + 1);
    indptr[p.row_blocks] = p.nnz + 1;
    a.indptr = indptr;
    expect(flp_block_sparse_plan(g_ctx, bsr, &a), FLP_ERROR_CAPACITY, "flp_block_sparse_plan",
           MENTIONS("max_blocks"));
    free(indptr);
    a = good;
    a.indices = NULL;
    expect(flp_block_sparse_plan(g_ctx, bsr, &a), FLP_ERROR_INVALID_ARGUMENT,
           "flp_block_sparse_plan", MENTIONS("indices is NULL"));
    /* runs against a good plan */
    assert_ok(flp_block_sparse_plan(g_ctx, bsr, &good));
    flp_block_sparse_run_args r = good_run;
    r.k.shape[0] = p.c->cols - 1;
    test_qo_expect_failed(&dv.qo, flp_block_sparse_run(g_ctx, bsr, &r), FLP_ERROR_INVALID_ARGUMENT,
                          "flp_block_sparse_run", MENTIONS("k"));
    r = good_run;
    r.v.dtype = FLP_DTYPE_BF16;
    test_qo_expect_failed(&dv.qo, flp_block_sparse_run(g_ctx, bsr, &r), FLP_ERROR_INVALID_ARGUMENT,
                          "flp_block_sparse_run", MENTIONS("v"));
    r = good_run;
    r.out = r.q;
    test_qo_expect_failed(&dv.qo, flp_block_sparse_run(g_ctx, bsr, &r), FLP_ERROR_INVALID_ARGUMENT,
                          "flp_block_sparse_run", MENTIONS("out"));
    flp_block_sparse_destroy(bsr);
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
    test_list_add(&l, "", "bad_desc", test_bad_desc, true, NULL);
    test_list_add(&l, "", "bad_plan_and_run", test_bad_plan_and_run, true, NULL);
    return test_list_run(&l, "block_sparse", argc, argv, test_backend_group_setup,
                         test_backend_group_teardown);
}
