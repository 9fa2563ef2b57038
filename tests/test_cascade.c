/* The cascade reference suite (flashport.h, "cascade (shared-prefix) attention": flp_cascade_*
 * and flp_page_table_export_cascade), run once per backend:
 *
 *     test_cascade vulkan|cuda [cmocka test filter]
 *
 * Exits 77 (skipped) when the backend is not built or has no device. For Vulkan the Khronos
 * validation layer is on unless FLP_VULKAN_VALIDATION says otherwise, as in the other suites.
 *
 * Every case builds requests whose keys are split into levels: each non-last level cuts the
 * requests into runs (groups) that share that level's keys, and the last level holds each
 * request's own keys (on the decode kernel when every request has one query row and the case
 * says so). The float64 reference is plain attention of each request's rows over the
 * concatenation of its groups' keys, level 0 first, with the causal mask aligned to the end of
 * that concatenation (equal to the cascade's rule: only the last level is masked). Outputs are
 * poisoned first and every element must be written (test_qo_check); errors within the bounds of
 * the prefill suite for the dtypes (tests/test_util.c).
 *
 * Tests:
 * - case_*: the case table: GQA groups 1, 2, 4 and 8; head dims 64, 128 and 256; f16 and bf16;
 *   fp8 e4m3 KV with scales; NHD and HND; page sizes 1, 8 and 16; 1, 2, 3 and 8 levels; decode and
 *   prefill rows; shared groups with no keys and with more rows than keys (mask NONE); soft cap;
 *   page ids at plan and at run time; lse written or not;
 * - replan: one cascade planned for two batches in turn (within its capacities), each right;
 *   determinism: two runs give the same bits;
 * - page_table: sequences forked from a common prompt (a tree of three depths) exported by
 *   flp_page_table_export_cascade with 2 and 3 levels give plain attention over each sequence;
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

#define MAX_LEVELS FLP_CASCADE_MAX_LEVELS

/* ---- the case table -------------------------------------------------------------------------- */

typedef struct level_spec {
    int32_t requests_per_group;   /* non-last levels: a run of this many requests (0: all) */
    int32_t tokens_lo, tokens_hi; /* keys of each group (last level: each request, at least qo) */
} level_spec;

typedef struct cascade_case {
    const char *name;
    int32_t hq, hkv, d;
    flp_dtype q_dtype, kv_dtype;
    int32_t page_size;
    flp_kv_layout layout;
    flp_mask_mode mask;
    float soft_cap;
    int32_t requests, qo_hi; /* rows of each request in 1..qo_hi */
    bool decode_last;        /* the last level on the decode kernel (qo_hi must be 1) */
    bool pages_at_run, lse;
    int32_t num_levels;
    level_spec levels[MAX_LEVELS];
} cascade_case;

#define BF16 FLP_DTYPE_BF16
#define F16 FLP_DTYPE_F16
#define E4M3 FLP_DTYPE_E4M3
#define NHD FLP_KV_LAYOUT_NHD
#define HND FLP_KV_LAYOUT_HND
#define CAUSAL FLP_MASK_CAUSAL
#define NONE FLP_MASK_NONE

static const cascade_case cases[] = {
    {"decode_2_levels_bf16",
     8,
     2,
     128,
     BF16,
     BF16,
     16,
     NHD,
     CAUSAL,
     0,
     12,
     1,
     true,
     false,
     true,
     2,
     {{0, 300, 300}, {0, 1, 70}}},
    {"decode_3_levels_f16_hnd_run_ids",
     4,
     4,
     64,
     F16,
     F16,
     8,
     HND,
     CAUSAL,
     0,
     16,
     1,
     true,
     true,
     true,
     3,
     {{0, 100, 100}, {4, 0, 90}, {0, 1, 40}}},
    {"decode_prefill_kernel_gqa8",
     8,
     1,
     128,
     BF16,
     BF16,
     16,
     NHD,
     CAUSAL,
     0,
     9,
     1,
     false,
     false,
     true,
     2,
     {{3, 20, 260}, {0, 1, 33}}},
    {"prefill_3_levels_causal",
     8,
     2,
     128,
     BF16,
     BF16,
     16,
     NHD,
     CAUSAL,
     0,
     5,
     24,
     false,
     false,
     true,
     3,
     {{0, 200, 200}, {2, 5, 60}, {0, 24, 75}}},
    {"rows_beyond_keys_d256",
     4,
     2,
     256,
     BF16,
     BF16,
     16,
     NHD,
     NONE,
     0,
     10,
     4,
     false,
     true,
     true,
     2,
     {{0, 5, 5}, {0, 0, 20}}},
    {"e4m3_soft_cap",
     8,
     2,
     128,
     BF16,
     E4M3,
     16,
     NHD,
     CAUSAL,
     30.0f,
     8,
     1,
     true,
     false,
     true,
     2,
     {{0, 150, 150}, {0, 1, 50}}},
    {"page_1_no_lse",
     4,
     1,
     64,
     F16,
     F16,
     1,
     NHD,
     CAUSAL,
     0,
     6,
     3,
     false,
     false,
     false,
     2,
     {{2, 10, 40}, {0, 3, 20}}},
    {"one_level",
     8,
     2,
     128,
     F16,
     F16,
     16,
     NHD,
     CAUSAL,
     0,
     4,
     17,
     false,
     false,
     true,
     1,
     {{0, 17, 90}}},
    {"eight_levels",
     4,
     2,
     64,
     BF16,
     BF16,
     8,
     NHD,
     CAUSAL,
     0,
     8,
     1,
     true,
     false,
     true,
     8,
     {{0, 9, 30},
      {4, 0, 20},
      {2, 1, 20},
      {1, 0, 10},
      {0, 5, 5},
      {8, 16, 16},
      {2, 0, 9},
      {0, 1, 12}}},
};
#define CASE_COUNT (sizeof cases / sizeof cases[0])

/* ---- a cascade problem on the host ----------------------------------------------------------- */

typedef struct host_level {
    int32_t num_groups;
    int32_t *qo_indptr;        /* [num_groups + 1] */
    int32_t *kv_indptr;        /* [num_groups + 1] pages */
    int32_t *kv_indices;       /* [pages] */
    int32_t *kv_last_page_len; /* [num_groups] */
    int32_t *tokens;           /* [num_groups] keys of each group */
    int32_t *group_of;         /* [requests] the group holding each request's rows */
} host_level;

typedef struct problem {
    const cascade_case *c;
    int32_t requests, rows, num_pages;
    int32_t *qo_indptr; /* [requests + 1] */
    int32_t *kv_len;    /* [requests] keys over every level */
    float *q;           /* [rows, hq, d] values of q_dtype */
    float *k, *v;       /* [num_pages, page_size, hkv, d] stored values (before the scale) */
    float k_scale, v_scale;
    host_level levels[MAX_LEVELS];
} problem;

/* Pages from the pool's shuffled order, count pages for tokens keys. */
static void take_pages(const problem *p, const int32_t *order, int32_t *next, int32_t tokens,
                       int32_t *out, int32_t *last_len) {
    const int32_t ps = p->c->page_size, pages = (tokens + ps - 1) / ps;
    for (int32_t i = 0; i < pages; i++)
        out[i] = order[(*next)++];
    *last_len = tokens == 0 ? 1 : tokens - (pages - 1) * ps;
}

/* Groups of level l: runs of requests_per_group requests (the last level: one per request). */
static void level_groups(problem *p, int32_t l, test_rng *rng) {
    const cascade_case *c = p->c;
    const level_spec *s = &c->levels[l];
    const bool last = l + 1 == c->num_levels;
    const int32_t per =
        last ? 1 : (s->requests_per_group > 0 ? s->requests_per_group : p->requests);
    host_level *h = &p->levels[l];
    h->num_groups = (p->requests + per - 1) / per;
    h->qo_indptr = test_xcalloc((size_t)h->num_groups + 1, sizeof(int32_t));
    h->tokens = test_xcalloc((size_t)h->num_groups, sizeof(int32_t));
    h->group_of = test_xcalloc((size_t)p->requests, sizeof(int32_t));
    for (int32_t g = 0; g < h->num_groups; g++) {
        const int32_t end = (g + 1) * per < p->requests ? (g + 1) * per : p->requests;
        h->qo_indptr[g + 1] = p->qo_indptr[end];
        int32_t lo = s->tokens_lo;
        if (last && c->mask == CAUSAL) /* the causal rows' own keys */
            lo = lo > p->qo_indptr[g + 1] - p->qo_indptr[g] ? lo
                                                            : p->qo_indptr[g + 1] - p->qo_indptr[g];
        h->tokens[g] = test_rng_int(rng, lo, s->tokens_hi > lo ? s->tokens_hi : lo);
        for (int32_t r = g * per; r < end; r++)
            h->group_of[r] = g;
    }
}

static void problem_make(problem *p, const cascade_case *c, uint64_t seed) {
    memset(p, 0, sizeof *p);
    p->c = c;
    test_rng rng;
    test_rng_init(&rng, seed);
    p->requests = c->requests;
    p->qo_indptr = test_xcalloc((size_t)p->requests + 1, sizeof(int32_t));
    for (int32_t r = 0; r < p->requests; r++)
        p->qo_indptr[r + 1] = p->qo_indptr[r] + test_rng_int(&rng, 1, c->qo_hi);
    p->rows = p->qo_indptr[p->requests];
    int32_t pages = 0;
    for (int32_t l = 0; l < c->num_levels; l++) {
        level_groups(p, l, &rng);
        for (int32_t g = 0; g < p->levels[l].num_groups; g++)
            pages += (p->levels[l].tokens[g] + c->page_size - 1) / c->page_size;
    }
    p->num_pages = pages + 3; /* pages no level uses */
    int32_t *order = test_permutation(&rng, p->num_pages, true), next = 0;
    p->kv_len = test_xcalloc((size_t)p->requests, sizeof(int32_t));
    for (int32_t l = 0; l < c->num_levels; l++) {
        host_level *h = &p->levels[l];
        h->kv_indptr = test_xcalloc((size_t)h->num_groups + 1, sizeof(int32_t));
        h->kv_last_page_len = test_xcalloc((size_t)h->num_groups, sizeof(int32_t));
        h->kv_indices = test_xcalloc((size_t)pages + 1, sizeof(int32_t));
        for (int32_t g = 0; g < h->num_groups; g++) {
            const int32_t n = (h->tokens[g] + c->page_size - 1) / c->page_size;
            take_pages(p, order, &next, h->tokens[g], h->kv_indices + h->kv_indptr[g],
                       &h->kv_last_page_len[g]);
            h->kv_indptr[g + 1] = h->kv_indptr[g] + n;
        }
        for (int32_t r = 0; r < p->requests; r++)
            p->kv_len[r] += h->tokens[h->group_of[r]];
    }
    free(order);
    const bool fp8 = test_is_fp8(c->kv_dtype);
    p->k_scale = fp8 ? 0.37f : 1.0f;
    p->v_scale = fp8 ? 1.9f : 1.0f;
    const size_t q_n = (size_t)p->rows * c->hq * c->d;
    const size_t kv_n = (size_t)p->num_pages * c->page_size * c->hkv * c->d;
    p->q = test_xcalloc(q_n, sizeof(float));
    p->k = test_xcalloc(kv_n, sizeof(float));
    p->v = test_xcalloc(kv_n, sizeof(float));
    test_fill_stored(&rng, c->q_dtype, 1.0f, p->q, q_n);
    test_fill_stored(&rng, c->kv_dtype, p->k_scale, p->k, kv_n);
    test_fill_stored(&rng, c->kv_dtype, p->v_scale, p->v, kv_n);
}

static void problem_free(problem *p) {
    for (int32_t l = 0; l < MAX_LEVELS; l++) {
        host_level *h = &p->levels[l];
        free(h->qo_indptr);
        free(h->kv_indptr);
        free(h->kv_indices);
        free(h->kv_last_page_len);
        free(h->tokens);
        free(h->group_of);
    }
    free(p->qo_indptr);
    free(p->kv_len);
    free(p->q);
    free(p->k);
    free(p->v);
    memset(p, 0, sizeof *p);
}

static flp_variant problem_variant(const problem *p) {
    const cascade_case *c = p->c;
    return test_variant_make(c->d, c->q_dtype, c->kv_dtype, c->mask, c->soft_cap, p->k_scale,
                             p->v_scale);
}

/* ---- the float64 reference ------------------------------------------------------------------- */

/* Request r's keys, level by level, as the kernels see them (stored value x scale), appended to
 * out [.., hkv, d] at token *at. */
static void gather_request(const problem *p, const float *raw, float scale, int32_t r, double *out,
                           int64_t *at) {
    const cascade_case *c = p->c;
    const size_t vec = (size_t)c->d, slot = (size_t)c->hkv * vec;
    for (int32_t l = 0; l < c->num_levels; l++) {
        const host_level *h = &p->levels[l];
        const int32_t g = h->group_of[r];
        for (int32_t t = 0; t < h->tokens[g]; t++) {
            const int32_t page = h->kv_indices[h->kv_indptr[g] + t / c->page_size];
            const size_t src = ((size_t)page * c->page_size + (size_t)(t % c->page_size)) * slot;
            for (size_t i = 0; i < slot; i++)
                out[(size_t)*at * slot + i] = (double)raw[src + i] * scale;
            (*at)++;
        }
    }
}

static void problem_reference(const problem *p, double *out, double *lse) {
    const cascade_case *c = p->c;
    int64_t total = 0;
    for (int32_t r = 0; r < p->requests; r++)
        total += p->kv_len[r];
    const size_t n = (size_t)(total > 0 ? total : 1) * c->hkv * c->d;
    double *k = test_xcalloc(n, sizeof(double)), *v = test_xcalloc(n, sizeof(double));
    int32_t *tok_indptr = test_xcalloc((size_t)p->requests + 1, sizeof(int32_t));
    int64_t at_k = 0, at_v = 0;
    for (int32_t r = 0; r < p->requests; r++) {
        gather_request(p, p->k, p->k_scale, r, k, &at_k);
        gather_request(p, p->v, p->v_scale, r, v, &at_v);
        tok_indptr[r + 1] = (int32_t)at_k;
    }
    const flp_variant variant = problem_variant(p);
    flp_ref_attention a;
    test_ref_attention_init(&a, &variant, p->requests, c->hq, c->hkv);
    a.qo_indptr = p->qo_indptr;
    a.kv_indptr = tok_indptr;
    a.k = k;
    a.v = v;
    test_ref_attention_run(&a, p->q, NULL, out, lse);
    free(k);
    free(v);
    free(tok_indptr);
}

/* ---- device side ----------------------------------------------------------------------------- */

typedef struct dev_problem {
    test_qo qo;
    flp_buffer *k_buf, *v_buf;
    flp_tensor k, v;
    flp_buffer *idx_buf[MAX_LEVELS];
    flp_tensor idx[MAX_LEVELS];
} dev_problem;

/* The pool as a contiguous NHD [pages, page_size, hkv, d] or HND [pages, hkv, page_size, d]. */
static flp_tensor pool_tensor(const problem *p, flp_buffer *buf) {
    const cascade_case *c = p->c;
    const bool nhd = c->layout == NHD;
    const int64_t shape[4] = {p->num_pages, nhd ? c->page_size : c->hkv,
                              nhd ? c->hkv : c->page_size, c->d};
    return flp_tensor_contiguous(buf, 0, c->kv_dtype, 4, shape);
}

static flp_buffer *pool_upload(const problem *p, const float *raw) {
    const cascade_case *c = p->c;
    const size_t es = flp_dtype_size(c->kv_dtype), vec = (size_t)c->d;
    const size_t bytes = (size_t)p->num_pages * c->page_size * c->hkv * vec * es;
    uint8_t *img = test_xcalloc(bytes, 1);
    for (int32_t page = 0; page < p->num_pages; page++)
        for (int32_t s = 0; s < c->page_size; s++)
            for (int32_t h = 0; h < c->hkv; h++) {
                const size_t src = (((size_t)page * c->page_size + s) * c->hkv + h) * vec;
                const size_t dst =
                    c->layout == NHD ? src : (((size_t)page * c->hkv + h) * c->page_size + s) * vec;
                assert_int_equal(flp_convert_from_f32(c->kv_dtype, raw + src, img + dst * es, vec),
                                 FLP_OK);
            }
    flp_buffer *buf = test_buffer_new(g_ctx, bytes);
    assert_ok(flp_buffer_write(g_ctx, buf, 0, img, bytes));
    free(img);
    return buf;
}

static void dev_create(const problem *p, int32_t rows_capacity, dev_problem *dv) {
    const cascade_case *c = p->c;
    memset(dv, 0, sizeof *dv);
    const test_qo_layout layout = {
        .row_stride = (int64_t)c->hq * c->d, .head_stride = c->d, .lse_row_stride = c->hq};
    test_qo_create(&dv->qo, g_ctx, c->q_dtype, c->hq, c->d, rows_capacity, layout);
    test_qo_write(&dv->qo, p->q, p->rows);
    dv->k_buf = pool_upload(p, p->k);
    dv->v_buf = pool_upload(p, p->v);
    dv->k = pool_tensor(p, dv->k_buf);
    dv->v = pool_tensor(p, dv->v_buf);
    for (int32_t l = 0; l < c->num_levels && c->pages_at_run; l++) {
        const host_level *h = &p->levels[l];
        const int32_t pages = h->kv_indptr[h->num_groups];
        const int64_t shape[1] = {pages};
        dv->idx[l] = test_tensor_upload(g_ctx, h->kv_indices, FLP_DTYPE_I32, 1, shape,
                                        (size_t)pages, &dv->idx_buf[l]);
    }
}

static void dev_free(dev_problem *dv) {
    test_qo_free(&dv->qo);
    flp_buffer_destroy(dv->k_buf);
    flp_buffer_destroy(dv->v_buf);
    for (int32_t l = 0; l < MAX_LEVELS; l++)
        flp_buffer_destroy(dv->idx_buf[l]);
    memset(dv, 0, sizeof *dv);
}

/* Capacities: scale x the problem's (at least the problem's plus a little). */
static flp_cascade_desc cascade_desc(const problem *p, int32_t scale) {
    const cascade_case *c = p->c;
    flp_cascade_desc d;
    memset(&d, 0, sizeof d);
    d.num_levels = c->num_levels;
    d.max_qo_rows = p->rows * scale + 2;
    d.num_qo_heads = c->hq;
    d.num_kv_heads = c->hkv;
    d.head_dim = c->d;
    for (int32_t l = 0; l < c->num_levels; l++) {
        const host_level *h = &p->levels[l];
        d.levels[l].max_groups = h->num_groups * scale + (c->decode_last ? 0 : 1);
        d.levels[l].max_pages = h->kv_indptr[h->num_groups] * scale + 4;
        d.levels[l].one_row_per_group = c->decode_last && l + 1 == c->num_levels;
    }
    if (c->decode_last) /* a decode level has at most max_qo_rows groups */
        d.levels[c->num_levels - 1].max_groups = p->rows * scale;
    return d;
}

static flp_cascade_plan_args plan_args(const problem *p) {
    const cascade_case *c = p->c;
    flp_cascade_plan_args a;
    memset(&a, 0, sizeof a);
    a.num_rows = p->rows;
    a.page_size = c->page_size;
    a.kv_layout = c->layout;
    a.variant = problem_variant(p);
    for (int32_t l = 0; l < c->num_levels; l++) {
        const host_level *h = &p->levels[l];
        a.levels[l] = (flp_cascade_level){.num_groups = h->num_groups,
                                          .qo_indptr = h->qo_indptr,
                                          .kv_indptr = h->kv_indptr,
                                          .kv_indices = c->pages_at_run ? NULL : h->kv_indices,
                                          .kv_last_page_len = h->kv_last_page_len};
    }
    return a;
}

static flp_cascade_run_args run_args(const problem *p, const dev_problem *dv) {
    flp_cascade_run_args r;
    memset(&r, 0, sizeof r);
    r.q = dv->qo.q;
    r.k_cache = dv->k;
    r.v_cache = dv->v;
    r.out = dv->qo.out;
    r.lse = p->c->lse ? &dv->qo.lse : NULL;
    for (int32_t l = 0; l < p->c->num_levels && p->c->pages_at_run; l++)
        r.kv_indices[l] = &dv->idx[l];
    return r;
}

static void run_and_wait(const problem *p, const dev_problem *dv, const flp_cascade *cascade) {
    test_qo_poison(&dv->qo);
    const flp_cascade_run_args r = run_args(p, dv);
    assert_ok(flp_cascade_run(g_ctx, cascade, &r));
    assert_ok(flp_context_synchronize(g_ctx));
}

static void check_against_reference(const problem *p, const dev_problem *dv, const char *what) {
    const cascade_case *c = p->c;
    double *ref = test_xcalloc((size_t)p->rows * c->hq * c->d, sizeof(double));
    double *ref_lse = test_xcalloc((size_t)p->rows * c->hq, sizeof(double));
    problem_reference(p, ref, ref_lse);
    test_readback rb = test_qo_read(&dv->qo);
    const test_qo_requests req = {c->name,   p->requests, p->qo_indptr,
                                  p->kv_len, c->lse,      c->kv_dtype};
    test_qo_check(&dv->qo, &rb, &req, ref, ref_lse, what);
    test_readback_free(&rb);
    free(ref);
    free(ref_lse);
}

/* ---- tests ----------------------------------------------------------------------------------- */

static void test_case(void **state) {
    const cascade_case *c = *state;
    problem p;
    problem_make(&p, c, test_name_seed(c->name));
    dev_problem dv;
    dev_create(&p, p.rows, &dv);
    const flp_cascade_desc desc = cascade_desc(&p, 1);
    flp_cascade *cascade = NULL;
    assert_ok(flp_cascade_create(g_ctx, &desc, &cascade));
    const flp_cascade_plan_args a = plan_args(&p);
    assert_ok(flp_cascade_plan(g_ctx, cascade, &a));
    run_and_wait(&p, &dv, cascade);
    check_against_reference(&p, &dv, "flp_cascade_run");
    flp_cascade_destroy(cascade);
    dev_free(&dv);
    problem_free(&p);
}

/* One cascade, two batches planned in turn within its capacities; the same bits twice. */
static void test_replan_and_determinism(void **state) {
    (void)state;
    const cascade_case *big = &cases[1], *small = &cases[1];
    problem a, b;
    problem_make(&a, big, 11);
    problem_make(&b, small, 12);
    const flp_cascade_desc desc = cascade_desc(&a, 2);
    flp_cascade *cascade = NULL;
    assert_ok(flp_cascade_create(g_ctx, &desc, &cascade));
    const problem *order[3] = {&a, &b, &a};
    for (int i = 0; i < 3; i++) {
        const problem *p = order[i];
        dev_problem dv;
        dev_create(p, desc.max_qo_rows, &dv);
        const flp_cascade_plan_args pa = plan_args(p);
        assert_ok(flp_cascade_plan(g_ctx, cascade, &pa));
        run_and_wait(p, &dv, cascade);
        check_against_reference(p, &dv, test_str("re-plan %d", i));
        test_readback first = test_qo_read(&dv.qo);
        run_and_wait(p, &dv, cascade);
        test_readback second = test_qo_read(&dv.qo);
        test_qo_expect_same_bits(&dv.qo, &first, &second, "a second run");
        test_readback_free(&first);
        test_readback_free(&second);
        dev_free(&dv);
    }
    flp_cascade_destroy(cascade);
    problem_free(&a);
    problem_free(&b);
}

/* ---- from a page table ----------------------------------------------------------------------- */

/* A tree of forks: a prompt, children that each add tokens, grandchildren that add more. Returns
 * the sequences in depth-first order (siblings adjacent) into seqs; their count. */
static int32_t fork_tree(flp_page_table *t, test_rng *rng, int32_t *seqs) {
    int32_t root = 0, n = 0;
    assert_int_equal(flp_page_table_create_sequence(t, &root), FLP_OK);
    assert_int_equal(flp_page_table_append(t, root, 137, NULL, NULL), FLP_OK);
    for (int32_t child = 0; child < 3; child++) {
        int32_t c = 0;
        assert_int_equal(flp_page_table_fork(t, root, &c), FLP_OK);
        /* the shared last page is copied on write: the copy keeps the prompt's keys (below) */
        assert_int_equal(flp_page_table_append(t, c, test_rng_int(rng, 20, 80), NULL, NULL),
                         FLP_OK);
        for (int32_t g = 0; g < 1 + child; g++) {
            int32_t gc = 0;
            assert_int_equal(flp_page_table_fork(t, c, &gc), FLP_OK);
            assert_int_equal(flp_page_table_append(t, gc, test_rng_int(rng, 1, 40), NULL, NULL),
                             FLP_OK);
            seqs[n++] = gc;
        }
        seqs[n++] = c;
    }
    return n;
}

static void test_page_table(void **state) {
    (void)state;
    static const cascade_case shape = {"page_table", 8,     2,      128, BF16,       BF16,
                                       16,           NHD,   CAUSAL, 0,   0,          1,
                                       true,         false, true,   2,   {{0, 0, 0}}};
    test_rng rng;
    test_rng_init(&rng, test_name_seed("page_table"));
    const flp_page_table_desc td = {.num_pages = 256, .page_size = shape.page_size};
    flp_page_table *table = NULL;
    assert_int_equal(flp_page_table_create(&td, &table), FLP_OK);
    int32_t seqs[16];
    const int32_t n = fork_tree(table, &rng, seqs);
    for (int32_t levels = 2; levels <= 3; levels++) {
        cascade_case c = shape;
        c.num_levels = levels;
        c.requests = n;
        problem p;
        memset(&p, 0, sizeof p);
        p.c = &c;
        p.requests = n;
        p.rows = n;
        p.num_pages = td.num_pages;
        p.k_scale = p.v_scale = 1.0f;
        p.qo_indptr = test_xcalloc((size_t)n + 1, sizeof(int32_t));
        p.kv_len = test_xcalloc((size_t)n, sizeof(int32_t));
        flp_cascade_export_level storage[MAX_LEVELS];
        flp_cascade_level out[MAX_LEVELS];
        for (int32_t l = 0; l < levels; l++) {
            host_level *h = &p.levels[l];
            h->qo_indptr = test_xcalloc((size_t)n + 1, sizeof(int32_t));
            h->kv_indptr = test_xcalloc((size_t)n + 1, sizeof(int32_t));
            h->kv_indices = test_xcalloc((size_t)td.num_pages, sizeof(int32_t));
            h->kv_last_page_len = test_xcalloc((size_t)n, sizeof(int32_t));
            storage[l] = (flp_cascade_export_level){h->qo_indptr, h->kv_indptr, h->kv_indices,
                                                    td.num_pages, h->kv_last_page_len};
        }
        assert_int_equal(flp_page_table_export_cascade(table, seqs, n, NULL, levels, storage, out),
                         FLP_OK);
        /* the shared level must share: one group holding every sequence's rows */
        assert_int_equal(out[0].num_groups, 1);
        assert_true(out[0].kv_indptr[1] >= 137 / 16);
        for (int32_t r = 0; r <= n; r++)
            p.qo_indptr[r] = r;
        for (int32_t l = 0; l < levels; l++) {
            host_level *h = &p.levels[l];
            h->num_groups = out[l].num_groups;
            h->tokens = test_xcalloc((size_t)h->num_groups, sizeof(int32_t));
            h->group_of = test_xcalloc((size_t)n, sizeof(int32_t));
            for (int32_t g = 0; g < h->num_groups; g++) {
                const int32_t pages = h->kv_indptr[g + 1] - h->kv_indptr[g];
                h->tokens[g] = pages == 0 ? 0 : (pages - 1) * td.page_size + h->kv_last_page_len[g];
                for (int32_t r = h->qo_indptr[g]; r < h->qo_indptr[g + 1]; r++)
                    h->group_of[r] = g;
            }
        }
        for (int32_t r = 0; r < n; r++) {
            for (int32_t l = 0; l < levels; l++)
                p.kv_len[r] += p.levels[l].tokens[p.levels[l].group_of[r]];
            int32_t len = 0;
            assert_int_equal(flp_page_table_sequence_length(table, seqs[r], &len), FLP_OK);
            assert_int_equal(p.kv_len[r], len);
        }
        const size_t kv_n = (size_t)p.num_pages * c.page_size * c.hkv * c.d;
        p.q = test_xcalloc((size_t)n * c.hq * c.d, sizeof(float));
        p.k = test_xcalloc(kv_n, sizeof(float));
        p.v = test_xcalloc(kv_n, sizeof(float));
        test_fill_stored(&rng, c.q_dtype, 1.0f, p.q, (size_t)n * c.hq * c.d);
        test_fill_stored(&rng, c.kv_dtype, 1.0f, p.k, kv_n);
        test_fill_stored(&rng, c.kv_dtype, 1.0f, p.v, kv_n);
        dev_problem dv;
        dev_create(&p, n, &dv);
        const flp_cascade_desc desc = cascade_desc(&p, 1);
        flp_cascade *cascade = NULL;
        assert_ok(flp_cascade_create(g_ctx, &desc, &cascade));
        const flp_cascade_plan_args a = plan_args(&p);
        assert_ok(flp_cascade_plan(g_ctx, cascade, &a));
        run_and_wait(&p, &dv, cascade);
        check_against_reference(&p, &dv, test_str("%d levels from the page table", levels));
        flp_cascade_destroy(cascade);
        dev_free(&dv);
        problem_free(&p);
    }
    flp_page_table_destroy(table);
}

/* ---- bad input ------------------------------------------------------------------------------- */

static void expect(flp_status got, flp_status want, const char *call, const char *const *mentions) {
    test_expect_status(g_ctx, got, want, call, mentions);
}

static void test_bad_desc(void **state) {
    (void)state;
    problem p;
    problem_make(&p, &cases[0], 5);
    flp_cascade *cascade = NULL;
    flp_cascade_desc d = cascade_desc(&p, 1);
    size_t bytes = 0;
    expect(flp_cascade_create(g_ctx, NULL, &cascade), FLP_ERROR_INVALID_ARGUMENT,
           "flp_cascade_create", MENTIONS("desc is NULL"));
    expect(flp_cascade_create(g_ctx, &d, NULL), FLP_ERROR_INVALID_ARGUMENT, "flp_cascade_create",
           MENTIONS("out is NULL"));
    expect(flp_cascade_workspace_size(g_ctx, &d, NULL), FLP_ERROR_INVALID_ARGUMENT,
           "flp_cascade_workspace_size", MENTIONS("bytes is NULL"));
    d.num_levels = 0;
    expect(flp_cascade_create(g_ctx, &d, &cascade), FLP_ERROR_INVALID_ARGUMENT,
           "flp_cascade_create", MENTIONS("num_levels = 0"));
    d.num_levels = MAX_LEVELS + 1;
    expect(flp_cascade_workspace_size(g_ctx, &d, &bytes), FLP_ERROR_INVALID_ARGUMENT,
           "flp_cascade_workspace_size", MENTIONS("num_levels = 9"));
    d = cascade_desc(&p, 1);
    d.max_qo_rows = 0;
    expect(flp_cascade_create(g_ctx, &d, &cascade), FLP_ERROR_INVALID_ARGUMENT,
           "flp_cascade_create", MENTIONS("max_qo_rows = 0"));
    d = cascade_desc(&p, 1);
    d.levels[1].max_pages = 0;
    expect(flp_cascade_create(g_ctx, &d, &cascade), FLP_ERROR_INVALID_ARGUMENT,
           "flp_cascade_create", MENTIONS("levels[1]", "max_pages = 0"));
    d = cascade_desc(&p, 1);
    d.levels[1].max_groups = d.max_qo_rows + 1;
    expect(flp_cascade_create(g_ctx, &d, &cascade), FLP_ERROR_INVALID_ARGUMENT,
           "flp_cascade_create",
           MENTIONS("levels[1]", test_str("max_groups = %d", d.max_qo_rows + 1)));
    d = cascade_desc(&p, 1);
    d.head_dim = 96;
    expect(flp_cascade_create(g_ctx, &d, &cascade), FLP_ERROR_UNSUPPORTED, "flp_cascade_create",
           MENTIONS("levels[0]", "head_dim = 96"));
    d = cascade_desc(&p, 1);
    d.num_kv_heads = 3;
    expect(flp_cascade_create(g_ctx, &d, &cascade), FLP_ERROR_INVALID_ARGUMENT,
           "flp_cascade_create", MENTIONS("num_kv_heads = 3"));
    d = cascade_desc(&p, 1);
    assert_ok(flp_cascade_workspace_size(g_ctx, &d, &bytes));
    flp_buffer *ws = test_buffer_new(g_ctx, bytes);
    d.workspace = ws;
    d.workspace_offset = 256;
    expect(flp_cascade_create(g_ctx, &d, &cascade), FLP_ERROR_CAPACITY, "flp_cascade_create",
           MENTIONS("flp_cascade_workspace_size"));
    d.workspace_offset = 100;
    expect(flp_cascade_create(g_ctx, &d, &cascade), FLP_ERROR_INVALID_ARGUMENT,
           "flp_cascade_create", MENTIONS("workspace_offset = 100"));
    assert_null(cascade);
    flp_buffer_destroy(ws);
    flp_cascade_destroy(NULL);
    problem_free(&p);
}

/* A planned cascade over cases[0] and its device problem, for the bad plan and run calls. */
typedef struct bad_env {
    problem p;
    dev_problem dv;
    flp_cascade *cascade;
    flp_cascade_plan_args a;
} bad_env;

static void bad_env_init(bad_env *e, const cascade_case *c) {
    problem_make(&e->p, c, 7);
    dev_create(&e->p, e->p.rows, &e->dv);
    const flp_cascade_desc desc = cascade_desc(&e->p, 1);
    assert_ok(flp_cascade_create(g_ctx, &desc, &e->cascade));
    e->a = plan_args(&e->p);
}

static void bad_env_free(bad_env *e) {
    flp_cascade_destroy(e->cascade);
    dev_free(&e->dv);
    problem_free(&e->p);
}

static void test_bad_plan(void **state) {
    (void)state;
    bad_env e;
    bad_env_init(&e, &cases[0]);
    flp_cascade_plan_args a = e.a;
    expect(flp_cascade_plan(g_ctx, NULL, &a), FLP_ERROR_INVALID_ARGUMENT, "flp_cascade_plan",
           MENTIONS("cascade is NULL"));
    expect(flp_cascade_plan(g_ctx, e.cascade, NULL), FLP_ERROR_INVALID_ARGUMENT, "flp_cascade_plan",
           MENTIONS("args is NULL"));
    a.num_rows = 0;
    expect(flp_cascade_plan(g_ctx, e.cascade, &a), FLP_ERROR_INVALID_ARGUMENT, "flp_cascade_plan",
           MENTIONS("num_rows = 0"));
    a.num_rows = e.p.rows + 3;
    expect(flp_cascade_plan(g_ctx, e.cascade, &a), FLP_ERROR_CAPACITY, "flp_cascade_plan",
           MENTIONS(test_str("num_rows = %d", e.p.rows + 3)));
    a = e.a;
    a.variant.pos_encoding = FLP_POS_ROPE_LLAMA;
    expect(flp_cascade_plan(g_ctx, e.cascade, &a), FLP_ERROR_UNSUPPORTED, "flp_cascade_plan",
           MENTIONS("variant.pos_encoding = 1"));
    a = e.a;
    a.variant.use_window = true;
    a.variant.window_left = 5;
    expect(flp_cascade_plan(g_ctx, e.cascade, &a), FLP_ERROR_UNSUPPORTED, "flp_cascade_plan",
           MENTIONS("variant.use_window"));
    a = e.a;
    a.variant.mask = FLP_MASK_CUSTOM;
    expect(flp_cascade_plan(g_ctx, e.cascade, &a), FLP_ERROR_UNSUPPORTED, "flp_cascade_plan",
           MENTIONS("variant.mask = 2"));
    a = e.a;
    a.variant.head_dim = 64;
    expect(flp_cascade_plan(g_ctx, e.cascade, &a), FLP_ERROR_INVALID_ARGUMENT, "flp_cascade_plan",
           MENTIONS("head_dim"));
    a = e.a;
    a.levels[0].num_groups = 2;
    expect(flp_cascade_plan(g_ctx, e.cascade, &a), FLP_ERROR_CAPACITY, "flp_cascade_plan",
           MENTIONS("levels[0].num_groups = 2"));
    a = e.a;
    int32_t qo_short[2] = {0, e.p.rows - 1};
    a.levels[0].qo_indptr = qo_short;
    expect(flp_cascade_plan(g_ctx, e.cascade, &a), FLP_ERROR_INVALID_ARGUMENT, "flp_cascade_plan",
           MENTIONS(test_str("levels[0].qo_indptr[1] = %d", e.p.rows - 1),
                    test_str("num_rows = %d", e.p.rows)));
    a = e.a;
    int32_t *qo_two = test_copy_i32(e.p.levels[1].qo_indptr, (size_t)e.p.rows + 1);
    qo_two[1] = 2; /* group 0 of a one-row level with two rows (group 1 with none) */
    a.levels[1].qo_indptr = qo_two;
    expect(flp_cascade_plan(g_ctx, e.cascade, &a), FLP_ERROR_INVALID_ARGUMENT, "flp_cascade_plan",
           MENTIONS("one_row_per_group", "group 0 has 2 rows"));
    free(qo_two);
    a = e.a;
    const host_level *own = &e.p.levels[1];
    int32_t *bad_ids = test_copy_i32(own->kv_indices, (size_t)own->kv_indptr[own->num_groups]);
    bad_ids[0] = -4;
    a.levels[1].kv_indices = bad_ids;
    expect(flp_cascade_plan(g_ctx, e.cascade, &a), FLP_ERROR_INVALID_ARGUMENT, "flp_cascade_plan",
           MENTIONS("levels[1]", "-4"));
    free(bad_ids);
    /* a failed plan leaves no plan: a run is refused */
    const flp_cascade_run_args r = run_args(&e.p, &e.dv);
    test_qo_poison(&e.dv.qo);
    test_qo_expect_failed(&e.dv.qo, flp_cascade_run(g_ctx, e.cascade, &r),
                          FLP_ERROR_INVALID_ARGUMENT, "flp_cascade_run", MENTIONS("holds no plan"));
    bad_env_free(&e);
}

static void test_bad_run(void **state) {
    (void)state;
    bad_env e;
    bad_env_init(&e, &cases[0]);
    assert_ok(flp_cascade_plan(g_ctx, e.cascade, &e.a));
    const flp_cascade_run_args good = run_args(&e.p, &e.dv);
    test_qo_poison(&e.dv.qo);
    flp_cascade_run_args r = good;
    test_qo_expect_failed(&e.dv.qo, flp_cascade_run(g_ctx, e.cascade, NULL),
                          FLP_ERROR_INVALID_ARGUMENT, "flp_cascade_run", MENTIONS("args is NULL"));
    r.q.shape[0] = e.p.rows - 1;
    test_qo_expect_failed(&e.dv.qo, flp_cascade_run(g_ctx, e.cascade, &r),
                          FLP_ERROR_INVALID_ARGUMENT, "flp_cascade_run", MENTIONS("q"));
    r = good;
    r.out.dtype = FLP_DTYPE_F16;
    test_qo_expect_failed(&e.dv.qo, flp_cascade_run(g_ctx, e.cascade, &r),
                          FLP_ERROR_INVALID_ARGUMENT, "flp_cascade_run", MENTIONS("out"));
    r = good;
    r.out = r.q; /* out over q */
    test_qo_expect_failed(&e.dv.qo, flp_cascade_run(g_ctx, e.cascade, &r),
                          FLP_ERROR_INVALID_ARGUMENT, "flp_cascade_run", MENTIONS("out", "q"));
    r = good;
    r.kv_indices[3] = &e.dv.qo.q;
    test_qo_expect_failed(&e.dv.qo, flp_cascade_run(g_ctx, e.cascade, &r),
                          FLP_ERROR_INVALID_ARGUMENT, "flp_cascade_run",
                          MENTIONS("kv_indices[3] is given", "2 levels"));
    r = good;
    r.kv_indices[0] = &e.dv.qo.q; /* planned with the page ids */
    test_qo_expect_failed(&e.dv.qo, flp_cascade_run(g_ctx, e.cascade, &r),
                          FLP_ERROR_INVALID_ARGUMENT, "flp_cascade_run", MENTIONS("levels[0]"));
    r = good;
    r.k_cache.shape[0] = 2; /* fewer pages than the plan references */
    r.v_cache.shape[0] = 2;
    test_qo_expect_failed(&e.dv.qo, flp_cascade_run(g_ctx, e.cascade, &r),
                          FLP_ERROR_INVALID_ARGUMENT, "flp_cascade_run", MENTIONS("levels[0]"));
    bad_env_free(&e);
}

int main(int argc, char **argv) {
    const int rc = test_backend_open(argc, argv, flp_vulkan_validation_message_count, &g_ctx);
    if (rc != 0)
        return rc;
    test_list l = {0};
    for (size_t i = 0; i < CASE_COUNT; ++i)
        test_list_add(&l, "case_", cases[i].name, test_case, false, (void *)&cases[i]);
    test_list_add(&l, "", "replan_and_determinism", test_replan_and_determinism, false, NULL);
    test_list_add(&l, "", "page_table", test_page_table, false, NULL);
    test_list_add(&l, "", "bad_desc", test_bad_desc, true, NULL);
    test_list_add(&l, "", "bad_plan", test_bad_plan, true, NULL);
    test_list_add(&l, "", "bad_run", test_bad_run, true, NULL);
    return test_list_run(&l, "cascade", argc, argv, test_backend_group_setup,
                         test_backend_group_teardown);
}
