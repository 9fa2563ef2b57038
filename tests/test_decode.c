/* The batch-decode reference suite (docs/design.md section 9), run once per backend:
 *
 *     test_decode vulkan|cuda [cmocka test filter]
 *
 * Exits 77 (skipped) when the backend is not built or has no device. For Vulkan the Khronos
 * validation layer is on (FLP_VULKAN_VALIDATION=1 unless the environment says otherwise; =0 turns
 * it off), a missing layer fails the run (exit 1), and any validation message fails the test
 * during which it appeared.
 *
 * Tests:
 * - the case table (tests/decode_cases.h) against the float64 reference (core/reference.h);
 * - the golden decode cases (tests/golden/) against their float64 outputs;
 * - determinism (same plan and inputs -> same bits), page ids passed at run time (a new table
 *   without a re-plan; an id outside the caches contained), re-planning within capacity with a
 *   caller workspace, capacity errors, a KV pool larger than lavapipe's 128 MiB binding limit;
 * - bad input: exact status, a message naming the bad thing, outputs untouched.
 *
 * Every check of an output poisons it first (0xFFFF: a NaN in f16 and bf16; lse: NaN) and
 * requires every element of the view to be written and every byte outside it untouched.
 *
 * Error bounds (test_error_bounds_for in test_util.c, with the measurements behind them):
 * max|out - ref| / max|ref| f16 2e-3, bf16 1.6e-2; per request sum|out - ref| / sum|ref| f16 5e-4,
 * bf16 4e-3 (systematic errors such as a wrong softmax scale or a dropped key stay under the max
 * bound, not under this one); |lse - ref| <= tol * max(1, |ref|), tol f16 1e-3, bf16 2e-3. fp8 KV
 * uses the bounds of its Q/O dtype, not looser ones: the reference is fed the exact dequantised
 * values (stored fp8 value times the scale, the same f32 product the kernels compute), so
 * quantisation error is not part of the comparison and what remains is f32 arithmetic and the
 * rounding of the output, as for 16-bit KV. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/plan.h" /* flp_plan_summarize: to confirm that split cases take the merge path */
#include "core/reference.h"
#include "flashport/flashport.h"
#include "flashport/flashport_vulkan.h"
#include "tests/decode_cases.h"
#include "tests/golden.h"
#include "tests/test_util.h"

static flp_context *g_ctx;

#define assert_ok(call) test_assert_ok(g_ctx, call)
#define expect_status(got, want, call, mentions)                                                   \
    test_expect_status(g_ctx, got, want, call, mentions)
#define MENTIONS TEST_MENTIONS

/* ---- a decode problem on the host ------------------------------------------------------------ */

typedef struct problem {
    char name[96];
    int32_t batch, qo_len, rows; /* rows = batch * qo_len */
    int32_t hq, hkv, d, page_size;
    flp_kv_layout layout;
    flp_dtype q_dtype, kv_dtype;
    int32_t num_pages;         /* host pool pages, ids 0..num_pages-1 */
    int32_t page_base;         /* device page id of host page 0 */
    int32_t device_pages;      /* pages of the device cache tensors (>= page_base + num_pages) */
    int32_t *kv_lens;          /* [batch] */
    int32_t *qo_indptr;        /* [batch + 1] rows of each request: b * qo_len */
    int32_t *kv_indptr;        /* [batch + 1] */
    int32_t *kv_indices;       /* [kv_indptr[batch]] host page ids */
    int32_t *dev_indices;      /* [kv_indptr[batch]] device page ids = host ids + page_base */
    int32_t *kv_last_page_len; /* [batch] */
    int32_t *q_rope_offset, *k_rope_offset; /* [batch] or NULL */
    float *alibi_slopes;                    /* [hq] caller slopes or NULL */
    float *q;                               /* [rows, hq, d] values of q_dtype */
    float *k_raw, *v_raw;   /* [num_pages, page_size, hkv, d] (NHD) or [.., hkv, page_size, d]
                               (HND): stored values of kv_dtype */
    float k_scale, v_scale; /* dequantisation factors (1 for 16-bit KV) */
    flp_variant variant;
    bool lse, rope_offsets;
    bool interleaved_kv, padded_qo;
    bool matrix;       /* the plan asks for FLP_DECODE_KERNEL_MATRIX (else _VECTOR) */
    bool pages_at_run; /* the plan gets kv_indices = NULL, the runs dev_problem.kv_indices */
} problem;

static void problem_free_batch(problem *p) {
    free(p->kv_lens);
    free(p->qo_indptr);
    free(p->kv_indptr);
    free(p->kv_indices);
    free(p->dev_indices);
    free(p->kv_last_page_len);
    free(p->q_rope_offset);
    free(p->k_rope_offset);
    free(p->q);
    p->kv_lens = p->qo_indptr = p->kv_indptr = p->kv_indices = p->dev_indices =
        p->kv_last_page_len = NULL;
    p->q_rope_offset = p->k_rope_offset = NULL;
    p->q = NULL;
}

static void problem_free(problem *p) {
    problem_free_batch(p);
    free(p->alibi_slopes);
    free(p->k_raw);
    free(p->v_raw);
    memset(p, 0, sizeof *p);
}

static size_t page_elems(const problem *p) {
    return (size_t)p->page_size * (size_t)p->hkv * (size_t)p->d;
}

static int32_t total_pages(const problem *p) {
    return p->kv_indptr[p->batch];
}

/* Sets the shape and variant; the batch comes from problem_set_batch. */
static void problem_init(problem *p, const char *name, int32_t hq, int32_t hkv, int32_t d,
                         flp_dtype q_dtype, flp_dtype kv_dtype, flp_kv_layout layout,
                         int32_t page_size, int32_t qo_len) {
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s", name);
    p->hq = hq;
    p->hkv = hkv;
    p->d = d;
    p->q_dtype = q_dtype;
    p->kv_dtype = kv_dtype == FLP_DTYPE_DEFAULT ? q_dtype : kv_dtype;
    p->layout = layout;
    p->page_size = page_size;
    p->qo_len = qo_len > 0 ? qo_len : 1;
    p->k_scale = p->v_scale = 1.0f;
    p->lse = true;
    p->variant.head_dim = d;
    p->variant.q_dtype = q_dtype;
    p->variant.kv_dtype = p->kv_dtype;
}

/* fp8 scales: the variant carries them; the host keeps the factor the kernels apply. */
static void problem_set_scales(problem *p, float k_scale, float v_scale) {
    p->variant.k_scale = k_scale;
    p->variant.v_scale = v_scale;
    if (test_is_fp8(p->kv_dtype)) {
        p->k_scale = k_scale > 0.0f ? k_scale : 1.0f;
        p->v_scale = v_scale > 0.0f ? v_scale : 1.0f;
    }
}

/* A new batch: lengths, page table and queries. The first call creates the host pool (the pages
 * the batch needs plus extra_pages unused random ones); later calls reuse it. Page ids are a
 * random permutation of the pool unless sequential. */
static void problem_set_batch(problem *p, test_rng *rng, int32_t batch, const int32_t *kv_lens,
                              int32_t extra_pages, bool sequential) {
    problem_free_batch(p);
    p->batch = batch;
    p->rows = batch * p->qo_len;
    p->kv_lens = test_xcalloc((size_t)batch, sizeof(int32_t));
    p->qo_indptr = test_xcalloc((size_t)batch + 1, sizeof(int32_t));
    p->kv_indptr = test_xcalloc((size_t)batch + 1, sizeof(int32_t));
    p->kv_last_page_len = test_xcalloc((size_t)batch, sizeof(int32_t));
    for (int32_t b = 0; b < batch; ++b) {
        const int32_t len = kv_lens[b];
        p->qo_indptr[b + 1] = p->qo_indptr[b] + p->qo_len;
        const int32_t pages = (len + p->page_size - 1) / p->page_size;
        p->kv_lens[b] = len;
        p->kv_indptr[b + 1] = p->kv_indptr[b] + pages;
        /* An empty request has no page; its last_page_len is unused (0 here). */
        p->kv_last_page_len[b] = pages ? len - (pages - 1) * p->page_size : 0;
    }
    const int32_t needed = p->kv_indptr[batch];
    if (!p->k_raw) {
        p->num_pages = needed + extra_pages;
        if (p->device_pages < p->page_base + p->num_pages)
            p->device_pages = p->page_base + p->num_pages;
        const size_t n = (size_t)p->num_pages * page_elems(p);
        p->k_raw = test_xcalloc(n, sizeof(float));
        p->v_raw = test_xcalloc(n, sizeof(float));
        test_fill_stored(rng, p->kv_dtype, p->k_scale, p->k_raw, n);
        test_fill_stored(rng, p->kv_dtype, p->v_scale, p->v_raw, n);
    }
    assert_true(needed <= p->num_pages);

    int32_t *perm = test_permutation(rng, p->num_pages, !sequential);
    p->kv_indices = test_xcalloc((size_t)needed, sizeof(int32_t));
    p->dev_indices = test_xcalloc((size_t)needed, sizeof(int32_t));
    for (int32_t i = 0; i < needed; ++i) {
        p->kv_indices[i] = perm[i];
        p->dev_indices[i] = perm[i] + p->page_base;
    }
    free(perm);

    if (p->rope_offsets)
        test_rope_offsets(rng, batch, &p->q_rope_offset, &p->k_rope_offset);
    const size_t nq = (size_t)p->rows * (size_t)p->hq * (size_t)p->d;
    p->q = test_xcalloc(nq, sizeof(float));
    test_fill_stored(rng, p->q_dtype, 1.0f, p->q, nq);
}

static void problem_from_case(problem *p, const decode_case *c, test_rng *rng) {
    problem_init(p, c->name, c->num_qo_heads, c->num_kv_heads, c->head_dim, c->q_dtype, c->kv_dtype,
                 c->layout, c->page_size, c->qo_len);
    flp_variant *v = &p->variant;
    v->mask = c->causal ? FLP_MASK_CAUSAL : FLP_MASK_NONE;
    v->use_window = c->use_window;
    v->window_left = c->use_window ? c->window_left : -1;
    v->logits_soft_cap = c->soft_cap;
    v->sm_scale = c->sm_scale;
    problem_set_scales(p, c->k_scale, c->v_scale);
    p->lse = !c->no_lse;
    p->interleaved_kv = (c->layout_flags & CASE_INTERLEAVED_KV) != 0;
    p->padded_qo = (c->layout_flags & CASE_PADDED_QO) != 0;
    p->matrix = c->matrix;
    p->pages_at_run = c->pages_at_run;
    test_variant_set_pos_encoding(v, c->alibi, c->rope, p->hq, rng, &p->alibi_slopes);
    if (c->rope != ROPE_OFF)
        p->rope_offsets = c->rope_offsets;

    int32_t lens[256];
    assert_true(c->batch > 0 && c->batch <= 256);
    for (int32_t b = 0; b < c->batch; ++b) {
        int32_t len;
        switch (c->gen) {
        case KV_RAGGED:
            len = test_rng_int(rng, c->gen_min, c->gen_max);
            break;
        case KV_SKEWED:
            len = b == c->batch / 2 ? c->gen_max : test_rng_int(rng, 1, c->gen_min);
            break;
        default:
            assert_true(c->batch <= DECODE_CASE_MAX_LIST);
            len = c->kv_lens[b];
            break;
        }
        if (c->zero_every > 0 && b % c->zero_every == c->zero_every - 1 && c->gen != KV_LIST)
            len = 0;
        /* A request with keys needs at least qo_len of them (its queries are its last keys). */
        if (len > 0 && len < p->qo_len)
            len = p->qo_len;
        lens[b] = len;
    }
    problem_set_batch(p, rng, c->batch, lens, test_rng_int(rng, 2, 9), c->sequential_pages);
}

static flp_decode_plan_args plan_args(const problem *p) {
    flp_decode_plan_args a;
    memset(&a, 0, sizeof a);
    a.batch_size = p->batch;
    a.qo_len = p->qo_len;
    a.page_size = p->page_size;
    a.kv_layout = p->layout;
    a.kv_indptr = p->kv_indptr;
    a.kv_indices = p->pages_at_run ? NULL : p->dev_indices;
    a.kv_last_page_len = p->kv_last_page_len;
    a.q_rope_offset = p->q_rope_offset;
    a.k_rope_offset = p->k_rope_offset;
    a.alibi_slopes = p->alibi_slopes;
    a.variant = p->variant;
    return a;
}

/* The float64 reference on the dequantised inputs: out [rows, hq, d], lse [rows, hq]. */
static void problem_reference(const problem *p, double *out, double *lse) {
    int32_t *tok_indptr = test_xcalloc((size_t)p->batch + 1, sizeof(int32_t));
    double *k = test_gather_paged_kv(p->batch, p->hkv, p->d, p->page_size, p->layout, p->num_pages,
                                     p->k_raw, p->k_scale, p->kv_indptr, p->kv_indices,
                                     p->kv_last_page_len, p->kv_lens, tok_indptr);
    double *v = test_gather_paged_kv(p->batch, p->hkv, p->d, p->page_size, p->layout, p->num_pages,
                                     p->v_raw, p->v_scale, p->kv_indptr, p->kv_indices,
                                     p->kv_last_page_len, p->kv_lens, tok_indptr);
    flp_ref_attention a;
    test_ref_attention_init(&a, &p->variant, p->batch, p->hq, p->hkv);
    a.qo_indptr = p->qo_indptr;
    a.kv_indptr = tok_indptr;
    a.k = k;
    a.v = v;
    a.q_rope_offset = p->q_rope_offset;
    a.k_rope_offset = p->k_rope_offset;
    test_ref_attention_run(&a, p->q, p->alibi_slopes, out, lse);
    free(tok_indptr);
    free(k);
    free(v);
}

/* ---- device side ----------------------------------------------------------------------------- */

typedef struct dev_problem {
    test_qo qo;                /* q, out, lse */
    flp_buffer *k_buf, *v_buf; /* v_buf NULL when interleaved */
    flp_tensor k, v;
    flp_buffer *idx_buf;   /* pages_at_run: the device page ids (NULL otherwise) */
    flp_tensor kv_indices; /* [total pages + 3] I32 at entry 5 of idx_buf: the run's page ids */
} dev_problem;

/* Strides and offsets of q/out ([rows, hq, d], elements) and lse ([rows, hq] f32). Padded
 * layouts use row and head strides larger than dense (still multiples of 16 bytes) and offsets
 * that are 16-byte aligned but not 256-byte aligned. */
static test_qo_layout get_qo_layout(const problem *p) {
    test_qo_layout l;
    const int64_t pad = 16 / (int64_t)flp_dtype_size(p->q_dtype); /* 16 bytes of elements */
    if (p->padded_qo) {
        l.head_stride = p->d + pad;
        l.row_stride = p->hq * l.head_stride + 2 * pad;
        l.lse_row_stride = ((p->hq + 3) / 4) * 4 + 4;
        l.q_offset = 48;
        l.out_offset = 80;
        l.lse_offset = 32;
    } else {
        l.head_stride = p->d;
        l.row_stride = (int64_t)p->hq * p->d;
        l.lse_row_stride = p->hq;
        l.q_offset = l.out_offset = l.lse_offset = 0;
    }
    return l;
}

/* The two middle dimensions of a page: NHD (page_size, hkv), HND (hkv, page_size). */
static void page_dims(const problem *p, int64_t *a, int64_t *b) {
    *a = p->layout == FLP_KV_LAYOUT_NHD ? p->page_size : p->hkv;
    *b = p->layout == FLP_KV_LAYOUT_NHD ? p->hkv : p->page_size;
}

/* Uploads the KV pool: host page i goes to device page page_base + i. Separate K and V buffers,
 * or one buffer of interleaved pages [pages, 2, <page>] (K then V). */
static void dev_write_kv(const problem *p, dev_problem *dv) {
    int64_t a, b;
    page_dims(p, &a, &b);
    const size_t es = flp_dtype_size(p->kv_dtype);
    const size_t pe = page_elems(p);
    const size_t page_stride = p->interleaved_kv ? 2 * pe : pe; /* elements */
    const size_t host_bytes = (size_t)p->num_pages * page_stride * es;
    const size_t base_bytes = (size_t)p->page_base * page_stride * es;
    const size_t buf_bytes = (size_t)p->device_pages * page_stride * es;

    dv->k_buf = test_buffer_new(g_ctx, buf_bytes);
    if (!p->interleaved_kv)
        dv->v_buf = test_buffer_new(g_ctx, buf_bytes);

    uint8_t *ks = test_xcalloc(host_bytes, 1);
    uint8_t *vs = p->interleaved_kv ? ks : test_xcalloc(host_bytes, 1);
    const size_t v_off = p->interleaved_kv ? pe : 0; /* elements */
    for (int32_t pg = 0; pg < p->num_pages; ++pg)
        for (int64_t i = 0; i < a; ++i)
            for (int64_t j = 0; j < b; ++j) {
                const size_t src = (size_t)pg * pe + (size_t)(i * b + j) * (size_t)p->d;
                const size_t dst = (size_t)pg * page_stride + (size_t)(i * b + j) * (size_t)p->d;
                assert_int_equal(
                    flp_convert_from_f32(p->kv_dtype, p->k_raw + src, ks + dst * es, (size_t)p->d),
                    FLP_OK);
                assert_int_equal(flp_convert_from_f32(p->kv_dtype, p->v_raw + src,
                                                      vs + (dst + v_off) * es, (size_t)p->d),
                                 FLP_OK);
            }
    assert_ok(flp_buffer_write(g_ctx, dv->k_buf, base_bytes, ks, host_bytes));
    if (!p->interleaved_kv)
        assert_ok(flp_buffer_write(g_ctx, dv->v_buf, base_bytes, vs, host_bytes));
    if (vs != ks)
        free(vs);
    free(ks);

    flp_tensor t;
    memset(&t, 0, sizeof t);
    t.buf = dv->k_buf;
    t.dtype = p->kv_dtype;
    t.ndim = 4;
    t.shape[0] = p->device_pages;
    t.shape[1] = a;
    t.shape[2] = b;
    t.shape[3] = p->d;
    t.stride[0] = (int64_t)page_stride;
    t.stride[1] = b * p->d;
    t.stride[2] = p->d;
    t.stride[3] = 1;
    dv->k = t;
    if (p->interleaved_kv) {
        t.offset = pe * es;
    } else {
        t.buf = dv->v_buf;
    }
    dv->v = t;
}

/* Entries of idx_buf before and after the page ids (an offset view with room to spare). */
#define IDX_LEAD 5
#define IDX_TAIL 3

/* Writes ids[n] as the run's page ids (entries past them hold -7: the kernels must not read
 * them). */
static void dev_write_page_ids(dev_problem *dv, const int32_t *ids, int32_t n) {
    const size_t entries = (size_t)n + IDX_LEAD + IDX_TAIL;
    int32_t *words = test_xcalloc(entries, sizeof(int32_t));
    for (size_t i = 0; i < entries; ++i)
        words[i] = -7;
    if (n > 0)
        memcpy(words + IDX_LEAD, ids, sizeof(int32_t) * (size_t)n);
    assert_ok(flp_buffer_write(g_ctx, dv->idx_buf, 0, words, entries * sizeof(int32_t)));
    free(words);
}

/* The run-time page table of a pages_at_run problem: a device copy of dev_indices. */
static void dev_create_page_ids(const problem *p, dev_problem *dv) {
    const int32_t n = total_pages(p);
    dv->idx_buf = test_buffer_new(g_ctx, sizeof(int32_t) * ((size_t)n + IDX_LEAD + IDX_TAIL));
    const int64_t shape[1] = {(int64_t)n + IDX_TAIL};
    dv->kv_indices =
        flp_tensor_contiguous(dv->idx_buf, IDX_LEAD * sizeof(int32_t), FLP_DTYPE_I32, 1, shape);
    dev_write_page_ids(dv, p->dev_indices, n);
}

static void dev_create(const problem *p, int32_t rows_capacity, dev_problem *dv) {
    memset(dv, 0, sizeof *dv);
    test_qo_create(&dv->qo, g_ctx, p->q_dtype, p->hq, p->d, rows_capacity, get_qo_layout(p));
    dev_write_kv(p, dv);
    test_qo_write(&dv->qo, p->q, p->rows);
    if (p->pages_at_run)
        dev_create_page_ids(p, dv);
}

static void dev_free(dev_problem *dv) {
    test_qo_free(&dv->qo);
    flp_buffer_destroy(dv->k_buf);
    flp_buffer_destroy(dv->v_buf);
    flp_buffer_destroy(dv->idx_buf);
    memset(dv, 0, sizeof *dv);
}

static flp_decode_run_args run_args(const problem *p, const dev_problem *dv) {
    flp_decode_run_args r;
    memset(&r, 0, sizeof r);
    r.q = dv->qo.q;
    r.k_cache = dv->k;
    r.v_cache = dv->v;
    r.out = dv->qo.out;
    r.lse = p->lse ? &dv->qo.lse : NULL;
    r.kv_indices = p->pages_at_run ? &dv->kv_indices : NULL;
    return r;
}

static flp_plan *create_plan(const problem *p, int32_t max_batch, int32_t max_pages,
                             int32_t max_qo_len) {
    flp_plan_desc pd = test_plan_desc_make(max_batch, max_pages, p->hq, p->hkv, p->d);
    pd.max_qo_len = max_qo_len;
    pd.decode_kernel = p->matrix ? FLP_DECODE_KERNEL_MATRIX : FLP_DECODE_KERNEL_VECTOR;
    return test_plan_create(g_ctx, &pd);
}

/* Capacities a bit above the problem. */
static flp_plan *create_plan_for(const problem *p) {
    const int32_t qo = p->qo_len < FLP_DECODE_MAX_QO_LEN ? p->qo_len + 1 : p->qo_len;
    return create_plan(p, p->batch + 2, total_pages(p) + 5, qo);
}

static void plan_problem(const problem *p, flp_plan *plan) {
    const flp_decode_plan_args a = plan_args(p);
    assert_ok(flp_decode_plan(g_ctx, plan, &a));
}

/* Poisons the outputs, runs and waits. */
static void run_problem(const problem *p, dev_problem *dv, const flp_plan *plan) {
    test_qo_poison(&dv->qo);
    const flp_decode_run_args r = run_args(p, dv);
    assert_ok(flp_decode_run(g_ctx, plan, &r));
    assert_ok(flp_context_synchronize(g_ctx));
}

/* Long requests of a small batch must be split into KV chunks (docs/design.md 5.5; the matrix
 * kernel uses the same cost model) whenever the batch does not fill the grid: checks the plan
 * took the merge path, so split tests test it. */
static void expect_split(const problem *p, const flp_plan *plan) {
    flp_plan_summary s;
    flp_plan_summarize(plan, &s);
    assert_int_equal(s.decode_matrix, p->matrix);
    const int32_t items = p->batch * p->hkv;
    /* the matrix kernel's split follows the same cost model, which splits these cases' long
     * requests whenever the grid has more workgroups than items */
    if (s.decode_ctas <= items) {
        print_message("note: %s: grid of %d workgroups, %d x %d items: no split expected\n",
                      p->name, s.decode_ctas, p->batch, p->hkv);
        return;
    }
    if (s.decode_partial_slots <= 0 || s.decode_items <= p->batch * p->hkv)
        fail_msg("%s: %d requests x %d KV heads on a grid of %d, yet the plan split nothing (%d "
                 "items, %d partial slots)",
                 p->name, p->batch, p->hkv, s.decode_ctas, s.decode_items, s.decode_partial_slots);
}

/* Checks a run's outputs against ref_out [rows, hq, d] / ref_lse [rows, hq] (test_qo_check). */
static void check_outputs(const problem *p, const dev_problem *dv, const test_readback *rb,
                          const double *ref_out, const double *ref_lse, const char *what) {
    const test_qo_requests req = {p->name, p->batch, p->qo_indptr, p->kv_lens, p->lse, p->kv_dtype};
    test_qo_check(&dv->qo, rb, &req, ref_out, ref_lse, what);
}

/* Reads back and checks against the float64 reference of p. */
static void check_against_reference(const problem *p, const dev_problem *dv, const char *what) {
    const size_t n = (size_t)p->rows * (size_t)p->hq * (size_t)p->d;
    double *ref = test_xcalloc(n, sizeof(double));
    double *ref_lse = test_xcalloc((size_t)p->rows * (size_t)p->hq, sizeof(double));
    problem_reference(p, ref, ref_lse);
    test_readback rb = test_qo_read(&dv->qo);
    check_outputs(p, dv, &rb, ref, ref_lse, what);
    test_readback_free(&rb);
    free(ref);
    free(ref_lse);
}

/* ---- 1. the case table ----------------------------------------------------------------------- */

static void test_case(void **state) {
    const decode_case *c = *state;
    test_rng rng;
    test_rng_init(&rng, test_name_seed(c->name));
    problem p;
    problem_from_case(&p, c, &rng);
    dev_problem dv;
    dev_create(&p, p.rows, &dv);
    flp_plan *plan = create_plan_for(&p);
    plan_problem(&p, plan);
    if (c->split)
        expect_split(&p, plan);
    run_problem(&p, &dv, plan);
    check_against_reference(&p, &dv, "run");
    flp_plan_destroy(plan);
    dev_free(&dv);
    problem_free(&p);
}

/* ---- 2. golden cases ------------------------------------------------------------------------- */

static void test_golden(void **state) {
    const char *name = *state;
    golden_case g;
    if (!golden_load(name, &g))
        fail_msg("cannot load golden case %s from %s", name, golden_dir());
    assert_true(g.paged);
    assert_false(g.custom_mask);
    for (int32_t b = 0; b < g.batch; ++b)
        assert_int_equal(g.qo_lens[b], 1);

    problem p;
    problem_init(&p, name, g.num_qo_heads, g.num_kv_heads, g.head_dim, g.dtype, g.dtype,
                 g.kv_layout, g.page_size, 1);
    flp_variant *v = &p.variant;
    v->mask = g.causal ? FLP_MASK_CAUSAL : FLP_MASK_NONE;
    v->use_window = g.use_window;
    v->window_left = g.use_window ? g.window_left : -1;
    v->logits_soft_cap = (float)g.logits_soft_cap;
    v->sm_scale = (float)g.sm_scale;
    test_variant_set_golden_pos_encoding(v, &g, &p.alibi_slopes);
    /* The case's page table and pool as given. */
    p.batch = g.batch;
    p.rows = g.nnz;
    p.num_pages = p.device_pages = g.num_pages;
    const size_t nb = (size_t)g.batch, np = (size_t)g.kv_indptr[g.batch];
    p.kv_lens = test_copy_i32(g.kv_lens, nb);
    p.qo_indptr = test_copy_i32(g.qo_indptr, nb + 1);
    p.kv_indptr = test_copy_i32(g.kv_indptr, nb + 1);
    p.kv_last_page_len = test_copy_i32(g.kv_last_page_len, nb);
    p.kv_indices = test_copy_i32(g.kv_indices, np);
    p.dev_indices = test_copy_i32(g.kv_indices, np);
    p.q = test_copy_f32(g.q, (size_t)g.nnz * (size_t)g.num_qo_heads * (size_t)g.head_dim);
    p.k_raw = test_copy_f32(g.k, g.kv_elems);
    p.v_raw = test_copy_f32(g.v, g.kv_elems);

    dev_problem dv;
    dev_create(&p, p.rows, &dv);
    flp_plan *plan = create_plan_for(&p);
    plan_problem(&p, plan);
    run_problem(&p, &dv, plan);
    test_readback rb = test_qo_read(&dv.qo);
    check_outputs(&p, &dv, &rb, g.out, g.lse, "golden");
    test_readback_free(&rb);
    flp_plan_destroy(plan);
    dev_free(&dv);
    problem_free(&p);
    golden_free(&g);
}

/* ---- 3. determinism -------------------------------------------------------------------------- */

static void test_determinism(void **state) {
    (void)state;
    test_rng rng;
    test_rng_init(&rng, test_name_seed("determinism"));
    problem p;
    problem_init(&p, "determinism", 8, 2, 128, FLP_DTYPE_F16, FLP_DTYPE_F16, FLP_KV_LAYOUT_NHD, 16,
                 1);
    p.variant.pos_encoding = FLP_POS_ALIBI;
    p.variant.logits_soft_cap = 20.0f;
    /* One long request (split into chunks and merged) among short ones. */
    const int32_t lens[] = {2000, 5, 300, 0};
    problem_set_batch(&p, &rng, 4, lens, 7, false);
    dev_problem dv;
    dev_create(&p, p.rows, &dv);
    flp_plan *plan = create_plan_for(&p);
    plan_problem(&p, plan);

    run_problem(&p, &dv, plan);
    check_against_reference(&p, &dv, "first run");
    test_readback first = test_qo_read(&dv.qo);
    for (int pass = 0; pass < 2; ++pass) {
        if (pass == 1)
            plan_problem(&p, plan); /* re-planning the same batch gives the same partition */
        run_problem(&p, &dv, plan);
        test_readback again = test_qo_read(&dv.qo);
        test_qo_expect_same_bits(&dv.qo, &first, &again, pass ? "re-planned" : "same plan");
        test_readback_free(&again);
    }
    test_readback_free(&first);
    flp_plan_destroy(plan);
    dev_free(&dv);
    problem_free(&p);
}

/* ---- 3b. page ids at run time ---------------------------------------------------------------- */

/* A problem whose plan gets no page ids: the runs pass them as a device tensor. */
static void problem_pages_at_run(problem *p, test_rng *rng, const char *name, int32_t batch,
                                 const int32_t *lens) {
    problem_init(p, name, 8, 2, 128, FLP_DTYPE_BF16, FLP_DTYPE_BF16, FLP_KV_LAYOUT_NHD, 16, 1);
    p->variant.mask = FLP_MASK_CAUSAL;
    p->pages_at_run = true;
    problem_set_batch(p, rng, batch, lens, 9, false);
}

/* The kernels read the page table when they run: a new table in the same tensor, without a
 * re-plan, gives the attention over the pages it names (here a permutation of the pool, so
 * every request sees other keys). This is what lets a captured CUDA graph or recorded command
 * buffer follow the cache from step to step. */
static void test_pages_at_run_follow_the_table(void **state) {
    (void)state;
    test_rng rng;
    test_rng_init(&rng, test_name_seed("pages at run: follow the table"));
    problem p;
    const int32_t lens[] = {1900, 33, 0, 260};
    problem_pages_at_run(&p, &rng, "pages at run", 4, lens);
    dev_problem dv;
    dev_create(&p, p.rows, &dv);
    flp_plan *plan = create_plan_for(&p);
    plan_problem(&p, plan);
    run_problem(&p, &dv, plan);
    check_against_reference(&p, &dv, "first table");

    int32_t *perm = test_permutation(&rng, p.num_pages, true);
    const int32_t n = total_pages(&p);
    for (int32_t i = 0; i < n; ++i) {
        p.kv_indices[i] = perm[p.kv_indices[i]];
        p.dev_indices[i] = p.kv_indices[i] + p.page_base;
    }
    free(perm);
    dev_write_page_ids(&dv, p.dev_indices, n);
    run_problem(&p, &dv, plan);
    check_against_reference(&p, &dv, "second table, same plan");
    flp_plan_destroy(plan);
    dev_free(&dv);
    problem_free(&p);
}

/* Element (row, head, d) of out in a readback of a problem with dense q/out. */
static uint16_t out_word(const problem *p, const test_readback *rb, int32_t row, int32_t h,
                         int32_t e) {
    return rb->out[((size_t)row * (size_t)p->hq + (size_t)h) * (size_t)p->d + (size_t)e];
}

/* A run-time page id outside [0, pages of the caches) is not followed: the run succeeds, reads
 * nothing outside the caches (compute-sanitizer checks that on CUDA), writes every row of the
 * request that holds it (wrong but finite values), and leaves the other requests bit for bit as
 * with a good table. */
static void bad_id_contained(bool matrix) {
    test_rng rng;
    test_rng_init(&rng, test_name_seed("pages at run: bad id"));
    problem p;
    const int32_t lens[] = {300, 2100, 70};
    problem_pages_at_run(&p, &rng, matrix ? "pages at run, bad id, matrix" : "pages at run, bad id",
                         3, lens);
    p.matrix = matrix;
    dev_problem dv;
    dev_create(&p, p.rows, &dv);
    flp_plan *plan = create_plan_for(&p);
    plan_problem(&p, plan);
    run_problem(&p, &dv, plan);
    check_against_reference(&p, &dv, "good table");
    test_readback good = test_qo_read(&dv.qo);

    const int32_t n = total_pages(&p), bad_request = 1;
    const int32_t first = p.kv_indptr[bad_request], last = p.kv_indptr[bad_request + 1] - 1;
    static const int32_t bad_ids[] = {-3, 1 << 30, INT32_MIN};
    for (size_t k = 0; k < sizeof bad_ids / sizeof bad_ids[0]; ++k) {
        int32_t *ids = test_copy_i32(p.dev_indices, (size_t)n);
        ids[first + (last - first) / 2] = bad_ids[k];
        ids[last] = (int32_t)dv.k.shape[0]; /* one past the last page */
        dev_write_page_ids(&dv, ids, n);
        free(ids);
        run_problem(&p, &dv, plan);
        test_readback got = test_qo_read(&dv.qo);
        for (int32_t b = 0; b < p.batch; ++b)
            for (int32_t r = p.qo_indptr[b]; r < p.qo_indptr[b + 1]; ++r)
                for (int32_t h = 0; h < p.hq; ++h)
                    for (int32_t e = 0; e < p.d; ++e) {
                        const uint16_t w = out_word(&p, &got, r, h, e);
                        if (b != bad_request && w != out_word(&p, &good, r, h, e))
                            fail_msg("bad id %d in request %d changed out[%d, %d, %d] of request "
                                     "%d",
                                     bad_ids[k], bad_request, r, h, e, b);
                        /* 16-bit floats: exponent all ones is inf or NaN (the poison too) */
                        if (b == bad_request && (w & 0x7C00u) == 0x7C00u &&
                            p.q_dtype == FLP_DTYPE_F16)
                            fail_msg("bad id %d: out[%d, %d, %d] = %#x is not finite", bad_ids[k],
                                     r, h, e, w);
                        if (b == bad_request && (w & 0x7F80u) == 0x7F80u &&
                            p.q_dtype == FLP_DTYPE_BF16)
                            fail_msg("bad id %d: out[%d, %d, %d] = %#x is not finite", bad_ids[k],
                                     r, h, e, w);
                    }
        test_readback_free(&got);
    }
    test_readback_free(&good);
    flp_plan_destroy(plan);
    dev_free(&dv);
    problem_free(&p);
}

/* on the decode kernel and on the matrix (prefill) kernel */
static void test_pages_at_run_bad_id_contained(void **state) {
    (void)state;
    bad_id_contained(false);
    bad_id_contained(true);
}

/* A skewed serving batch that fills the grid: as many requests per KV head as the grid has
 * workgroups, one of them 32 times longer than the others. The scheduler must split the long
 * one although the batch fills the grid (docs/design.md 5.5: one unsplit item would be the
 * slowest workgroup by far), and the merged rows must match the reference; in bf16 and in e4m3
 * with scales. */
static void test_skewed_batch_fills_grid(void **state) {
    (void)state;
    static const flp_dtype kv_dtypes[] = {FLP_DTYPE_BF16, FLP_DTYPE_E4M3};
    for (size_t k = 0; k < sizeof kv_dtypes / sizeof kv_dtypes[0]; ++k) {
        test_rng rng;
        test_rng_init(&rng, test_name_seed("skewed batch") + k);
        problem p;
        problem_init(&p, k ? "skewed batch, e4m3" : "skewed batch, bf16", 4, 2, 128, FLP_DTYPE_BF16,
                     kv_dtypes[k], FLP_KV_LAYOUT_NHD, 16, 1);
        if (k)
            problem_set_scales(&p, 0.5f, 1.5f);
        flp_plan *probe = create_plan(&p, 1, 1, 1);
        flp_plan_summary s;
        flp_plan_summarize(probe, &s);
        flp_plan_destroy(probe);
        const int32_t batch = (s.decode_ctas + p.hkv - 1) / p.hkv;
        int32_t *lens = test_xcalloc((size_t)batch, sizeof(int32_t));
        for (int32_t b = 0; b < batch; ++b)
            lens[b] = 48 + b % 17;
        lens[batch / 2] = 32 * 64;
        problem_set_batch(&p, &rng, batch, lens, 3, false);
        free(lens);
        dev_problem dv;
        dev_create(&p, p.rows, &dv);
        flp_plan *plan = create_plan_for(&p);
        plan_problem(&p, plan);
        flp_plan_summarize(plan, &s);
        if (s.decode_partial_slots <= 0 || s.decode_items <= batch * p.hkv)
            fail_msg("%s: %d requests x %d KV heads fill the grid of %d, and the long request "
                     "was not split (%d items, %d partial slots)",
                     p.name, batch, p.hkv, s.decode_ctas, s.decode_items, s.decode_partial_slots);
        run_problem(&p, &dv, plan);
        check_against_reference(&p, &dv, "skewed batch");
        flp_plan_destroy(plan);
        dev_free(&dv);
        problem_free(&p);
    }
}

/* ---- 4. re-planning within capacity, caller workspace, capacity errors ----------------------- */

static void test_replan_within_capacity(void **state) {
    (void)state;
    test_rng rng;
    test_rng_init(&rng, test_name_seed("replan"));
    problem p;
    problem_init(&p, "replan", 8, 2, 64, FLP_DTYPE_BF16, FLP_DTYPE_BF16, FLP_KV_LAYOUT_NHD, 16, 1);
    const int32_t max_batch = 8, max_pages = 64;
    const int32_t lens_a[] = {10, 200, 37};
    problem_set_batch(&p, &rng, 3, lens_a, 40, false); /* a pool of 60 pages */

    flp_plan_desc pd = test_plan_desc_make(max_batch, max_pages, p.hq, p.hkv, p.d);
    pd.max_qo_len = 1;
    size_t ws_size = 0;
    flp_buffer *ws = test_workspace_create(g_ctx, &pd, &ws_size);
    flp_plan *plan = test_plan_create(g_ctx, &pd);

    dev_problem dv;
    dev_create(&p, max_batch, &dv);

    /* A: 3 requests. */
    plan_problem(&p, plan);
    if (!test_workspace_check(g_ctx, ws, ws_size, "after plan A"))
        fail_msg("the plan did not write its caller workspace");
    run_problem(&p, &dv, plan);
    check_against_reference(&p, &dv, "batch A");
    test_workspace_check(g_ctx, ws, ws_size, "after run A");

    /* B: 6 requests over the same pool, one long (split), one empty; new page table. */
    const int32_t lens_b[] = {1, 0, 700, 64, 16, 3};
    problem_set_batch(&p, &rng, 6, lens_b, 0, false);
    assert_true(total_pages(&p) <= max_pages);
    test_qo_write(&dv.qo, p.q, p.rows);
    plan_problem(&p, plan);
    run_problem(&p, &dv, plan);
    check_against_reference(&p, &dv, "batch B (re-planned)");
    test_workspace_check(g_ctx, ws, ws_size, "after run B");

    /* C: back to a small batch at full batch capacity. */
    const int32_t lens_c[] = {5, 9, 1, 33, 2, 17, 60, 8};
    problem_set_batch(&p, &rng, max_batch, lens_c, 0, false);
    test_qo_write(&dv.qo, p.q, p.rows);
    plan_problem(&p, plan);
    run_problem(&p, &dv, plan);
    check_against_reference(&p, &dv, "batch C (re-planned)");
    test_workspace_check(g_ctx, ws, ws_size, "after run C");

    size_t ws_again = 0;
    assert_ok(flp_plan_workspace_size(g_ctx, &pd, &ws_again));
    assert_int_equal(ws_again, ws_size);

    flp_plan_destroy(plan);
    test_workspace_check(g_ctx, ws, ws_size, "after destroying the plan");
    flp_buffer_destroy(ws);
    dev_free(&dv);
    problem_free(&p);
}

static void test_capacity(void **state) {
    (void)state;
    test_rng rng;
    test_rng_init(&rng, test_name_seed("capacity"));
    problem p;
    problem_init(&p, "capacity", 4, 1, 64, FLP_DTYPE_F16, FLP_DTYPE_F16, FLP_KV_LAYOUT_NHD, 16, 1);
    const int32_t lens[] = {20, 30, 40, 50, 60, 16 * 12};
    problem_set_batch(&p, &rng, 6, lens, 4, false);
    flp_plan *plan = create_plan(&p, 4, 10, 1);

    /* batch 5 > max_batch_size 4 (10 pages: within max_pages) */
    flp_decode_plan_args a = plan_args(&p);
    a.batch_size = 5;
    const int32_t indptr5[] = {0, 2, 4, 6, 8, 10};
    const int32_t last5[] = {4, 16, 8, 2, 12};
    a.kv_indptr = indptr5;
    a.kv_last_page_len = last5;
    expect_status(
        flp_decode_plan(g_ctx, plan, &a), FLP_ERROR_CAPACITY, "batch 5 > max 4",
        MENTIONS("flp_decode_plan: batch_size = 5 exceeds the plan's max_batch_size = 4"));
    /* 12 pages > max_pages 10 in one request */
    const int32_t indptr1[] = {0, 12};
    const int32_t last1[] = {16};
    a = plan_args(&p);
    a.batch_size = 1;
    a.kv_indptr = indptr1;
    a.kv_indices = p.dev_indices + p.kv_indptr[5];
    a.kv_last_page_len = last1;
    expect_status(flp_decode_plan(g_ctx, plan, &a), FLP_ERROR_CAPACITY, "12 pages > max 10",
                  MENTIONS("kv_indptr[1] = 12 exceeds the plan's max_pages = 10"));
    /* qo_len 2 > max_qo_len 1 */
    a = plan_args(&p);
    a.batch_size = 2;
    a.qo_len = 2;
    a.variant.mask = FLP_MASK_CAUSAL;
    expect_status(flp_decode_plan(g_ctx, plan, &a), FLP_ERROR_CAPACITY, "qo_len 2 > max 1",
                  MENTIONS("qo_len = 2 exceeds the plan's max_qo_len = 1"));

    /* After the failures the plan takes a valid batch at full capacity. */
    const int32_t ok_lens[] = {20, 30, 40, 40}; /* 10 pages */
    problem_set_batch(&p, &rng, 4, ok_lens, 0, false);
    assert_true(total_pages(&p) <= 10);
    dev_problem dv;
    dev_create(&p, p.rows, &dv);
    test_backend_expect_errors(false); /* from here on an error fails the test */
    plan_problem(&p, plan);
    run_problem(&p, &dv, plan);
    check_against_reference(&p, &dv, "after capacity errors");
    flp_plan_destroy(plan);
    dev_free(&dv);
    problem_free(&p);
}

/* ---- 5. a KV pool larger than a 128 MiB storage-buffer binding ------------------------------ */

static void test_large_pool(void **state) {
    (void)state;
    test_rng rng;
    test_rng_init(&rng, test_name_seed("large_pool"));
    problem p;
    problem_init(&p, "large_pool", 8, 1, 128, FLP_DTYPE_F16, FLP_DTYPE_F16, FLP_KV_LAYOUT_NHD, 16,
                 1);
    p.interleaved_kv = true; /* one buffer: [pages, 2, 16, 1, 128] f16 = 8 KiB per page */
    const size_t page_bytes = 2 * page_elems(&p) * 2;
    const size_t pool_bytes = (size_t)160 << 20;
    if (test_backend_info()->max_buffer_bytes < pool_bytes) {
        print_message("skipped: max_buffer_bytes %zu < %zu\n",
                      test_backend_info()->max_buffer_bytes, pool_bytes);
        skip();
    }
    p.device_pages = (int32_t)(pool_bytes / page_bytes); /* 20480 */
    const int32_t lens[] = {300, 1000};
    const int32_t used = (300 + 15) / 16 + (1000 + 15) / 16; /* 82 */
    const int32_t extra = 6;
    /* Host pages land at the end of the buffer: all beyond the first 128 MiB. */
    p.page_base = p.device_pages - used - extra - 3;
    assert_true((size_t)p.page_base * page_bytes > ((size_t)128 << 20));
    problem_set_batch(&p, &rng, 2, lens, extra, false);
    assert_int_equal(p.num_pages, used + extra);

    dev_problem dv;
    dev_create(&p, p.rows, &dv);
    assert_true(flp_buffer_size(dv.k_buf) == (size_t)p.device_pages * page_bytes);
    flp_plan *plan = create_plan_for(&p);
    plan_problem(&p, plan);
    expect_split(&p, plan); /* the merge reads scratch too: cover it with the big pool */
    run_problem(&p, &dv, plan);
    check_against_reference(&p, &dv, "pages beyond 128 MiB");
    flp_plan_destroy(plan);
    dev_free(&dv);
    problem_free(&p);
}

/* ---- 6. bad input ---------------------------------------------------------------------------- */

/* A small valid problem with a plan, poisoned outputs and valid arguments to break. */
typedef struct bad_env {
    problem p;
    dev_problem dv;
    flp_plan *plan;
    flp_decode_plan_args pa;
    flp_decode_run_args ra;
} bad_env;

static void bad_env_init(bad_env *e) {
    test_rng rng;
    test_rng_init(&rng, test_name_seed("bad_input"));
    problem_init(&e->p, "bad_input", 4, 2, 64, FLP_DTYPE_F16, FLP_DTYPE_F16, FLP_KV_LAYOUT_NHD, 16,
                 1);
    const int32_t lens[] = {20, 35};
    problem_set_batch(&e->p, &rng, 2, lens, 3, false);
    dev_create(&e->p, e->p.rows, &e->dv);
    e->plan = create_plan_for(&e->p);
    plan_problem(&e->p, e->plan);
    test_qo_poison(&e->dv.qo);
    e->pa = plan_args(&e->p);
    e->ra = run_args(&e->p, &e->dv);
}

static void bad_expect(const bad_env *e, flp_status got, flp_status want, const char *call,
                       const char *const *mentions) {
    test_qo_expect_failed(&e->dv.qo, got, want, call, mentions);
}

/* After the failures: the context and plan still work (re-plan, run, correct). */
static void bad_env_finish(bad_env *e) {
    test_backend_expect_errors(false);
    assert_ok(flp_decode_plan(g_ctx, e->plan, &e->pa));
    run_problem(&e->p, &e->dv, e->plan);
    check_against_reference(&e->p, &e->dv, "valid run after bad input");
    flp_plan_destroy(e->plan);
    dev_free(&e->dv);
    problem_free(&e->p);
}

static void test_bad_q_dtype(void **state) {
    (void)state;
    bad_env e;
    bad_env_init(&e);
    flp_decode_run_args r = e.ra;
    r.q.dtype = FLP_DTYPE_BF16; /* the variant says f16 */
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
               "bf16 q with an f16 variant",
               MENTIONS("flp_decode_run: q.dtype is bf16, expected f16"));
    r = e.ra;
    r.q.dtype = FLP_DTYPE_F32;
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
               "f32 q with an f16 variant",
               MENTIONS("flp_decode_run: q.dtype is f32, expected f16"));
    bad_env_finish(&e);
}

static void test_bad_q_shape(void **state) {
    (void)state;
    bad_env e;
    bad_env_init(&e);
    flp_decode_run_args r = e.ra;
    r.q.shape[1] = e.p.hq - 1;
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
               "q with too few heads",
               MENTIONS("q.shape is [2, 3, 64], expected [2, 4, 64]", "at dimension 1"));
    r = e.ra;
    r.q.shape[0] = e.p.rows - 1;
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
               "q with too few rows",
               MENTIONS("q.shape is [1, 4, 64], expected [2, 4, 64]", "at dimension 0"));
    bad_env_finish(&e);
}

static void test_bad_out(void **state) {
    (void)state;
    bad_env e;
    bad_env_init(&e);
    flp_decode_run_args r = e.ra;
    r.out.dtype = FLP_DTYPE_BF16;
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
               "bf16 out with f16 q", MENTIONS("out.dtype is bf16, expected f16"));
    r = e.ra;
    r.out.shape[0] = e.p.rows - 1;
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
               "out with fewer rows than q",
               MENTIONS("out.shape is [1, 4, 64], expected [2, 4, 64]", "at dimension 0"));
    r = e.ra;
    r.out.shape[1] = e.p.hq - 1;
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
               "out with fewer heads than q",
               MENTIONS("out.shape is [2, 3, 64], expected [2, 4, 64]", "at dimension 1"));
    r = e.ra;
    r.out.ndim = 2;
    r.out.shape[1] = e.p.hq * e.p.d;
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT, "2-d out",
               MENTIONS("out.ndim is 2, expected 3"));
    bad_env_finish(&e);
}

static void test_bad_kv_shape(void **state) {
    (void)state;
    bad_env e;
    bad_env_init(&e);
    /* NHD [pages, page_size, hkv, d]; the views shrink so they stay inside the buffer. */
    flp_decode_run_args r = e.ra;
    r.k_cache.shape[2] = e.p.hkv - 1;
    r.v_cache.shape[2] = e.p.hkv - 1;
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
               "caches with 1 KV head, plan 2",
               MENTIONS(test_str("k_cache.shape is [%d, 16, 1, 64], expected [-1, 16, 2, 64]",
                                 (int)e.ra.k_cache.shape[0]),
                        "at dimension 2"));
    r = e.ra;
    r.k_cache.shape[3] = 32;
    r.v_cache.shape[3] = 32;
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
               "caches with head_dim 32, plan 64",
               MENTIONS(test_str("k_cache.shape is [%d, 16, 2, 32], expected [-1, 16, 2, 64]",
                                 (int)e.ra.k_cache.shape[0]),
                        "at dimension 3"));
    r = e.ra;
    r.k_cache.shape[1] = 8;
    r.v_cache.shape[1] = 8;
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
               "caches with page_size 8, plan 16",
               MENTIONS(test_str("k_cache.shape is [%d, 8, 2, 64], expected [-1, 16, 2, 64]",
                                 (int)e.ra.k_cache.shape[0]),
                        "at dimension 1"));
    r = e.ra;
    r.v_cache.shape[2] = e.p.hkv - 1;
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
               "v_cache shape differs from k_cache",
               MENTIONS(test_str("v_cache.shape is [%d, 16, 1, 64], expected [%d, 16, 2, 64]",
                                 (int)e.ra.k_cache.shape[0], (int)e.ra.k_cache.shape[0]),
                        "at dimension 2"));
    r = e.ra;
    r.k_cache.ndim = 3;
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT, "3-d k_cache",
               MENTIONS("k_cache.ndim is 3, expected 4"));
    r = e.ra;
    r.k_cache.dtype = FLP_DTYPE_BF16;
    r.v_cache.dtype = FLP_DTYPE_BF16;
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
               "bf16 caches with an f16 variant", MENTIONS("k_cache.dtype is bf16, expected f16"));
    bad_env_finish(&e);
}

static void test_bad_heads(void **state) {
    (void)state;
    flp_plan_desc pd = test_plan_desc_make(4, 16, 6, 4, 64);
    flp_plan *plan = NULL;
    expect_status(flp_plan_create(g_ctx, &pd, &plan), FLP_ERROR_INVALID_ARGUMENT,
                  "6 query heads over 4 KV heads",
                  MENTIONS("num_qo_heads = 6 is not a multiple of num_kv_heads = 4"));
    assert_null(plan);
    pd.num_kv_heads = 0;
    expect_status(flp_plan_create(g_ctx, &pd, &plan), FLP_ERROR_INVALID_ARGUMENT, "0 KV heads",
                  MENTIONS("num_qo_heads = 6 and num_kv_heads = 0 must be > 0"));
    assert_null(plan);
}

static void test_bad_page_ids(void **state) {
    (void)state;
    bad_env e;
    bad_env_init(&e);
    const int32_t n = total_pages(&e.p);
    int32_t *ids = test_xcalloc((size_t)n, sizeof(int32_t));
    /* A page id == pages in k_cache: the plan cannot know, the run must refuse. */
    memcpy(ids, e.p.dev_indices, sizeof(int32_t) * (size_t)n);
    ids[n - 1] = (int32_t)e.ra.k_cache.shape[0];
    flp_decode_plan_args a = e.pa;
    a.kv_indices = ids;
    assert_ok(flp_decode_plan(g_ctx, e.plan, &a));
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, &e.ra), FLP_ERROR_INVALID_ARGUMENT,
               "page id == pages of k_cache",
               MENTIONS(test_str("kv_indices reference page %d but k_cache/v_cache have %d pages",
                                 (int)e.ra.k_cache.shape[0], (int)e.ra.k_cache.shape[0])));
    ids[n - 1] = 1 << 30;
    assert_ok(flp_decode_plan(g_ctx, e.plan, &a));
    bad_expect(
        &e, flp_decode_run(g_ctx, e.plan, &e.ra), FLP_ERROR_INVALID_ARGUMENT, "page id 2^30",
        MENTIONS(test_str("kv_indices reference page 1073741824 but k_cache/v_cache have %d pages",
                          (int)e.ra.k_cache.shape[0])));
    /* Negative: refused by the plan. */
    memcpy(ids, e.p.dev_indices, sizeof(int32_t) * (size_t)n);
    ids[0] = -1;
    bad_expect(&e, flp_decode_plan(g_ctx, e.plan, &a), FLP_ERROR_INVALID_ARGUMENT, "page id -1",
               MENTIONS("flp_decode_plan: kv_indices[0] = -1 is a negative page id"));
    free(ids);
    bad_env_finish(&e);
}

/* The run's kv_indices against the plan: required when the plan got none, refused when it holds
 * them, checked for dtype, rank, stride and length. */
static void test_bad_run_page_ids(void **state) {
    (void)state;
    bad_env e;
    bad_env_init(&e);
    flp_decode_run_args r = e.ra;
    const int32_t n = total_pages(&e.p);
    flp_buffer *idx = test_buffer_new(g_ctx, sizeof(int32_t) * ((size_t)n + 8));
    const int64_t shape[1] = {n};
    flp_tensor ids = flp_tensor_contiguous(idx, 0, FLP_DTYPE_I32, 1, shape);
    assert_ok(flp_buffer_write(g_ctx, idx, 0, e.p.dev_indices, sizeof(int32_t) * (size_t)n));
    r.kv_indices = &ids;
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
               "kv_indices with a plan that holds them",
               MENTIONS("flp_decode_run: kv_indices is given but the plan holds the page ids"));

    flp_decode_plan_args a = e.pa;
    a.kv_indices = NULL;
    assert_ok(flp_decode_plan(g_ctx, e.plan, &a));
    r = e.ra;
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
               "no kv_indices with a plan that has none",
               MENTIONS(test_str("flp_decode_run: kv_indices is NULL but the plan was given no "
                                 "page ids (%d pages to look up)",
                                 n)));
    flp_tensor t = ids;
    r.kv_indices = &t;
    t.shape[0] = n - 1;
    bad_expect(
        &e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT, "short kv_indices",
        MENTIONS(test_str("kv_indices has %d entries, the plan's kv_indptr needs %d", n - 1, n)));
    t = ids;
    t.dtype = FLP_DTYPE_F32;
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT, "f32 kv_indices",
               MENTIONS("kv_indices"));
    t = ids;
    t.ndim = 2;
    t.shape[1] = 1;
    t.stride[1] = 1;
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT, "2-D kv_indices",
               MENTIONS("kv_indices"));
    t = ids;
    t.shape[0] = n / 2;
    t.stride[0] = 2;
    if (n / 2 > 0)
        bad_expect(&e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
                   "strided kv_indices", MENTIONS("kv_indices"));
    t = ids;
    t.buf = NULL;
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
               "kv_indices.buf NULL", MENTIONS("kv_indices.buf is NULL"));
    /* out may not overlap the page ids (a kernel would read what it overwrote) */
    flp_tensor over = e.ra.q;
    r.kv_indices = &over;
    over.dtype = FLP_DTYPE_I32;
    over.ndim = 1;
    over.shape[0] = n;
    over.stride[0] = 1;
    over.buf = e.ra.out.buf;
    over.offset = e.ra.out.offset;
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
               "kv_indices overlaps out", MENTIONS("kv_indices", "out"));
    /* the good tensor runs (bad_env_finish re-plans with host ids and checks the results) */
    r.kv_indices = &ids;
    assert_ok(flp_decode_run(g_ctx, e.plan, &r));
    assert_ok(flp_context_synchronize(g_ctx));
    check_against_reference(&e.p, &e.dv, "run-time page ids");
    test_qo_poison(&e.dv.qo);
    flp_buffer_destroy(idx);
    bad_env_finish(&e);
}

static void test_bad_last_page_len(void **state) {
    (void)state;
    bad_env e;
    bad_env_init(&e);
    int32_t last[2] = {e.p.kv_last_page_len[0], e.p.kv_last_page_len[1]};
    flp_decode_plan_args a = e.pa;
    a.kv_last_page_len = last;
    last[1] = 0;
    bad_expect(&e, flp_decode_plan(g_ctx, e.plan, &a), FLP_ERROR_INVALID_ARGUMENT,
               "kv_last_page_len 0",
               MENTIONS("kv_last_page_len[1] = 0 must be in 1..page_size (16)"));
    last[1] = e.p.page_size + 1;
    bad_expect(&e, flp_decode_plan(g_ctx, e.plan, &a), FLP_ERROR_INVALID_ARGUMENT,
               "kv_last_page_len > page_size",
               MENTIONS("kv_last_page_len[1] = 17 must be in 1..page_size (16)"));
    last[1] = -3;
    bad_expect(&e, flp_decode_plan(g_ctx, e.plan, &a), FLP_ERROR_INVALID_ARGUMENT,
               "kv_last_page_len -3",
               MENTIONS("kv_last_page_len[1] = -3 must be in 1..page_size (16)"));
    bad_env_finish(&e);
}

static void test_bad_kv_indptr(void **state) {
    (void)state;
    bad_env e;
    bad_env_init(&e);
    flp_decode_plan_args a = e.pa;
    int32_t indptr[3];
    memcpy(indptr, e.p.kv_indptr, sizeof indptr);
    a.kv_indptr = indptr;
    indptr[0] = 1;
    bad_expect(&e, flp_decode_plan(g_ctx, e.plan, &a), FLP_ERROR_INVALID_ARGUMENT,
               "kv_indptr[0] = 1", MENTIONS("kv_indptr[0] = 1 must be 0"));
    memcpy(indptr, e.p.kv_indptr, sizeof indptr);
    indptr[1] = indptr[2] + 1; /* decreasing */
    bad_expect(
        &e, flp_decode_plan(g_ctx, e.plan, &a), FLP_ERROR_INVALID_ARGUMENT, "decreasing kv_indptr",
        MENTIONS(test_str("kv_indptr decreases at request 1 (%d then %d)", indptr[1], indptr[2])));
    bad_env_finish(&e);
}

static void test_bad_null(void **state) {
    (void)state;
    bad_env e;
    bad_env_init(&e);
    bad_expect(&e, flp_decode_run(NULL, e.plan, &e.ra), FLP_ERROR_INVALID_ARGUMENT, "run: ctx NULL",
               NULL);
    bad_expect(&e, flp_decode_run(g_ctx, NULL, &e.ra), FLP_ERROR_INVALID_ARGUMENT, "run: plan NULL",
               MENTIONS("flp_decode_run: plan is NULL"));
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, NULL), FLP_ERROR_INVALID_ARGUMENT,
               "run: args NULL", MENTIONS("flp_decode_run: args is NULL"));
    bad_expect(&e, flp_decode_plan(NULL, e.plan, &e.pa), FLP_ERROR_INVALID_ARGUMENT,
               "plan: ctx NULL", NULL);
    bad_expect(&e, flp_decode_plan(g_ctx, NULL, &e.pa), FLP_ERROR_INVALID_ARGUMENT,
               "plan: plan NULL", MENTIONS("flp_decode_plan: plan is NULL"));
    bad_expect(&e, flp_decode_plan(g_ctx, e.plan, NULL), FLP_ERROR_INVALID_ARGUMENT,
               "plan: args NULL", MENTIONS("flp_decode_plan: args is NULL"));
    flp_decode_plan_args a = e.pa;
    a.kv_indptr = NULL;
    bad_expect(&e, flp_decode_plan(g_ctx, e.plan, &a), FLP_ERROR_INVALID_ARGUMENT, "kv_indptr NULL",
               MENTIONS("flp_decode_plan: kv_indptr is NULL"));
    a = e.pa;
    a.kv_last_page_len = NULL;
    bad_expect(&e, flp_decode_plan(g_ctx, e.plan, &a), FLP_ERROR_INVALID_ARGUMENT,
               "kv_last_page_len NULL", MENTIONS("flp_decode_plan: kv_last_page_len is NULL"));
    flp_decode_run_args r = e.ra;
    r.q.buf = NULL;
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT, "q.buf NULL",
               MENTIONS("flp_decode_run: q.buf is NULL"));
    r = e.ra;
    r.k_cache.buf = NULL;
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
               "k_cache.buf NULL", MENTIONS("flp_decode_run: k_cache.buf is NULL"));
    r = e.ra;
    r.out.buf = NULL;
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT, "out.buf NULL",
               MENTIONS("flp_decode_run: out.buf is NULL"));
    flp_plan_desc pd = test_plan_desc_make(2, 4, 1, 1, 64);
    flp_plan *plan = NULL;
    expect_status(flp_plan_create(g_ctx, NULL, &plan), FLP_ERROR_INVALID_ARGUMENT,
                  "plan_create: desc NULL", MENTIONS("flp_plan_create: desc is NULL"));
    expect_status(flp_plan_create(g_ctx, &pd, NULL), FLP_ERROR_INVALID_ARGUMENT,
                  "plan_create: out NULL", MENTIONS("flp_plan_create: out is NULL"));
    expect_status(flp_plan_create(NULL, &pd, &plan), FLP_ERROR_INVALID_ARGUMENT,
                  "plan_create: ctx NULL", NULL);
    bad_env_finish(&e);
}

static void test_bad_run_before_plan(void **state) {
    (void)state;
    bad_env e;
    bad_env_init(&e);
    flp_plan *fresh = create_plan_for(&e.p);
    bad_expect(
        &e, flp_decode_run(g_ctx, fresh, &e.ra), FLP_ERROR_INVALID_ARGUMENT, "run before any plan",
        MENTIONS("flp_decode_run: the plan holds no decode plan (call flp_decode_plan first)"));
    flp_plan_destroy(fresh);
    bad_env_finish(&e);
}

static void test_bad_lse(void **state) {
    (void)state;
    bad_env e;
    bad_env_init(&e);
    flp_tensor lse = e.dv.qo.lse;
    flp_decode_run_args r = e.ra;
    r.lse = &lse;
    lse.dtype = FLP_DTYPE_F16;
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT, "f16 lse",
               MENTIONS("lse.dtype is f16, expected f32"));
    lse = e.dv.qo.lse;
    lse.shape[1] = e.p.hq - 1;
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
               "lse with too few heads",
               MENTIONS("lse.shape is [2, 3], expected [2, 4]", "at dimension 1"));
    lse = e.dv.qo.lse;
    lse.shape[0] = e.p.rows + 1;
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
               "lse with too many rows",
               MENTIONS("lse.shape is [3, 4], expected [2, 4]", "at dimension 0"));
    lse = e.dv.qo.lse;
    lse.ndim = 1;
    lse.shape[0] = (int64_t)e.p.rows * e.p.hq;
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT, "1-d lse",
               MENTIONS("lse.ndim is 1, expected 2"));
    bad_env_finish(&e);
}

static void test_bad_head_dim(void **state) {
    (void)state;
    flp_plan_desc pd = test_plan_desc_make(2, 4, 4, 2, 96);
    flp_plan *plan = NULL;
    const flp_status st = flp_plan_create(g_ctx, &pd, &plan);
    if (st == FLP_OK) {
        flp_plan_destroy(plan);
        fail_msg("flp_plan_create with head_dim 96 succeeded");
    }
    expect_status(
        st, st == FLP_ERROR_UNSUPPORTED ? st : FLP_ERROR_INVALID_ARGUMENT, "plan with head_dim 96",
        MENTIONS("flp_plan_create: head_dim = 96: supported head dims are 64, 128 and 256"));

    /* The variant's head_dim: 96 (unsupported) and 128 (plan says 64). */
    bad_env e;
    bad_env_init(&e);
    flp_decode_plan_args a = e.pa;
    a.variant.head_dim = 96;
    const flp_status st2 = flp_decode_plan(g_ctx, e.plan, &a);
    bad_expect(
        &e, st2, st2 == FLP_ERROR_UNSUPPORTED ? st2 : FLP_ERROR_INVALID_ARGUMENT,
        "variant head_dim 96",
        MENTIONS(
            "flp_decode_plan: variant.head_dim = 96: supported head dims are 64, 128 and 256"));
    a.variant.head_dim = 128;
    bad_expect(&e, flp_decode_plan(g_ctx, e.plan, &a), FLP_ERROR_INVALID_ARGUMENT,
               "variant head_dim 128, plan 64",
               MENTIONS("variant.head_dim = 128 differs from the plan's head_dim = 64"));
    bad_env_finish(&e);
}

static void test_bad_variant(void **state) {
    (void)state;
    bad_env e;
    bad_env_init(&e);
    flp_decode_plan_args a = e.pa;
    a.variant.use_window = true;
    a.variant.window_left = -1;
    bad_expect(&e, flp_decode_plan(g_ctx, e.plan, &a), FLP_ERROR_INVALID_ARGUMENT,
               "window_left -1 with use_window",
               MENTIONS("variant.window_left = -1: must be >= 0 when use_window is set"));
    a = e.pa;
    a.variant.logits_soft_cap = -1.0f;
    bad_expect(&e, flp_decode_plan(g_ctx, e.plan, &a), FLP_ERROR_INVALID_ARGUMENT, "soft cap -1",
               MENTIONS("variant.logits_soft_cap = -1: must be 0 (off) or a positive number"));
    a = e.pa;
    a.variant.sm_scale = -0.5f;
    bad_expect(
        &e, flp_decode_plan(g_ctx, e.plan, &a), FLP_ERROR_INVALID_ARGUMENT, "sm_scale -0.5",
        MENTIONS("variant.sm_scale = -0.5: must be 0 (default 1/sqrt(head_dim)) or positive"));
    a = e.pa;
    a.variant.q_dtype = FLP_DTYPE_E4M3;
    bad_expect(&e, flp_decode_plan(g_ctx, e.plan, &a), FLP_ERROR_INVALID_ARGUMENT, "e4m3 q_dtype",
               MENTIONS("variant.q_dtype = e4m3: queries and outputs are f16 or bf16"));
    a = e.pa;
    a.variant.output_transform = "return x;";
    bad_expect(&e, flp_decode_plan(g_ctx, e.plan, &a), FLP_ERROR_INVALID_ARGUMENT,
               "output_transform snippet reading x",
               MENTIONS("variant.output_transform line 1, column 8: x is not an input of "
                        "output_transform"));
    a = e.pa;
    const flp_variant_param twice[] = {{"cap", FLP_PARAM_FLOAT}, {"cap", FLP_PARAM_INT}};
    a.variant.params = twice;
    a.variant.num_params = 2;
    bad_expect(&e, flp_decode_plan(g_ctx, e.plan, &a), FLP_ERROR_INVALID_ARGUMENT,
               "two parameters named cap",
               MENTIONS("variant.params: user parameters 0 and 1 are both named cap"));
    bad_env_finish(&e);
}

static void test_bad_page_size(void **state) {
    (void)state;
    bad_env e;
    bad_env_init(&e);
    flp_decode_plan_args a = e.pa;
    a.page_size = 0;
    bad_expect(&e, flp_decode_plan(g_ctx, e.plan, &a), FLP_ERROR_INVALID_ARGUMENT, "page_size 0",
               MENTIONS("flp_decode_plan: page_size = 0 must be in 1..128"));
    a.page_size = FLP_MAX_PAGE_SIZE + 1;
    bad_expect(&e, flp_decode_plan(g_ctx, e.plan, &a), FLP_ERROR_INVALID_ARGUMENT, "page_size 129",
               MENTIONS("flp_decode_plan: page_size = 129 must be in 1..128"));
    bad_env_finish(&e);
}

/* A q view over a buffer twice the size of q's (so that stretched strides stay inside it). */
static flp_buffer *big_q_buffer(const bad_env *e) {
    return test_buffer_new(g_ctx, e->dv.qo.q_bytes * 2);
}

static void test_bad_tensor_layout(void **state) {
    (void)state;
    bad_env e;
    bad_env_init(&e);
    flp_buffer *big = big_q_buffer(&e);
    flp_decode_run_args r = e.ra;
    r.q.buf = big;
    r.q.stride[2] = 2; /* every other element */
    r.q.stride[1] = 2 * (int64_t)e.p.d;
    r.q.stride[0] = 2 * (int64_t)e.p.d * e.p.hq;
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
               "q with last-dim stride 2",
               MENTIONS("q.stride[2] = 2: the last dimension must be contiguous"));
    r = e.ra;
    r.q.buf = big;
    r.q.stride[0] += 4; /* 8 bytes more than dense: not a multiple of 16 bytes */
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
               "q row stride not a multiple of 16 bytes",
               MENTIONS(test_str("q.stride[0] = %lld is not a multiple of 8 elements (16 bytes)",
                                 (long long)r.q.stride[0])));
    flp_buffer_destroy(big);
    r = e.ra;
    r.q.offset = 2; /* 2-byte aligned only (the view still fits: the buffer has 64 spare bytes) */
    bad_expect(
        &e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT, "q offset 2 bytes",
        MENTIONS("q starts at device address", "(buffer + offset 2), not a multiple of 16 bytes"));
    r = e.ra;
    r.out.offset = e.dv.qo.out_bytes - 16; /* the view runs past the end of its buffer */
    bad_expect(
        &e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
        "out past the end of its buffer",
        MENTIONS(test_str("out spans up to byte %zu past offset, beyond its buffer of %zu bytes",
                          (size_t)e.p.rows * e.p.hq * e.p.d * 2, e.dv.qo.out_bytes)));
    r = e.ra;
    r.k_cache.shape[0] = e.ra.k_cache.shape[0] + 1;
    r.v_cache.shape[0] = e.ra.v_cache.shape[0] + 1;
    bad_expect(
        &e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
        "k_cache one page larger than its buffer",
        MENTIONS(test_str(
            "k_cache spans up to byte %zu past offset, beyond its buffer of %zu bytes",
            (size_t)r.k_cache.shape[0] * page_elems(&e.p) * 2, flp_buffer_size(e.dv.k_buf))));
    bad_env_finish(&e);
}

static void test_bad_workspace(void **state) {
    (void)state;
    flp_plan_desc pd = test_plan_desc_make(4, 16, 4, 2, 64);
    size_t size = 0;
    assert_ok(flp_plan_workspace_size(g_ctx, &pd, &size));
    flp_buffer *ws = test_buffer_new(g_ctx, size + 512);
    flp_plan *plan = NULL;
    pd.workspace = ws;
    pd.workspace_offset = 100;
    expect_status(flp_plan_create(g_ctx, &pd, &plan), FLP_ERROR_INVALID_ARGUMENT,
                  "workspace_offset 100",
                  MENTIONS("flp_plan_create: workspace_offset = 100 is not a multiple of 256"));
    assert_null(plan);
    pd.workspace_offset = 768; /* 768 + size > size + 512 */
    const flp_status st = flp_plan_create(g_ctx, &pd, &plan);
    expect_status(st, st == FLP_ERROR_CAPACITY ? st : FLP_ERROR_INVALID_ARGUMENT,
                  "workspace too small",
                  MENTIONS(test_str("workspace has %zu bytes after offset 768, the plan needs %zu",
                                    size + 512 - 768, size)));
    assert_null(plan);
    pd.workspace = NULL;
    pd.workspace_offset = 0;
    pd.max_qo_len = FLP_DECODE_MAX_QO_LEN + 1;
    expect_status(flp_plan_create(g_ctx, &pd, &plan), FLP_ERROR_INVALID_ARGUMENT, "max_qo_len 9",
                  MENTIONS("flp_plan_create: max_qo_len = 9 must be in 1..8 (0 = 1)"));
    assert_null(plan);
    flp_buffer_destroy(ws);
}

/* ---- variant snippets (docs/variants.md) ------------------------------------------------------
 */

/* Two query rows per request (the rows' positions differ), GQA 4, and a long request that the
 * plan splits on the test devices, so that the merge kernel's part of a variant runs too. */
static test_rng snippet_problem(problem *p, const char *name) {
    test_rng rng;
    test_rng_init(&rng, test_name_seed(name));
    problem_init(p, name, 8, 2, 64, FLP_DTYPE_F16, FLP_DTYPE_F16, FLP_KV_LAYOUT_NHD, 16, 2);
    const int32_t lens[] = {2, 45, 611, 2900};
    problem_set_batch(p, &rng, 4, lens, 3, false);
    return rng;
}

/* Plans p with variant v, runs with the parameter values, waits: the outputs' contents. */
static test_readback run_with(const problem *p, dev_problem *dv, const flp_variant *v,
                              const flp_param_value *params, int32_t num_params) {
    flp_plan *plan = create_plan_for(p);
    flp_decode_plan_args a = plan_args(p);
    a.variant = *v;
    assert_ok(flp_decode_plan(g_ctx, plan, &a));
    expect_split(p, plan);
    test_qo_poison(&dv->qo);
    flp_decode_run_args r = run_args(p, dv);
    r.params = params;
    r.num_params = num_params;
    assert_ok(flp_decode_run(g_ctx, plan, &r));
    assert_ok(flp_context_synchronize(g_ctx));
    flp_plan_destroy(plan);
    return test_qo_read(&dv->qo);
}

/* Where the backend takes no snippets: the plan refuses the variant, naming why. */
static void expect_snippets_refused(const problem *p, const flp_variant *snippet) {
    flp_plan *plan = create_plan_for(p);
    flp_decode_plan_args a = plan_args(p);
    a.variant = *snippet;
    test_backend_expect_errors(true);
    expect_status(flp_decode_plan(g_ctx, plan, &a), FLP_ERROR_UNSUPPORTED, "snippet plan",
                  MENTIONS("do not take variant snippets"));
    test_backend_expect_errors(false);
    flp_plan_destroy(plan);
}

/* A test's start where the backend may take no snippets: there it checks the refusal, frees p
 * and answers false (the test ends); else true. */
static bool snippets_run_here(problem *p, const flp_variant *snippet) {
    if (test_backend_takes_snippets())
        return true;
    expect_snippets_refused(p, snippet);
    problem_free(p);
    return false;
}

/* p's built-in variant (p->variant) against the float64 reference, and the snippet variant that
 * restates it: bit for bit the same outputs (the kernel computes the same operations). */
static void expect_snippet_equals_builtin(problem *p, const flp_variant *snippet,
                                          const flp_param_value *params, int32_t num_params) {
    if (!test_backend_takes_snippets()) {
        expect_snippets_refused(p, snippet);
        return;
    }
    dev_problem dv;
    dev_create(p, p->rows, &dv);
    test_readback want = run_with(p, &dv, &p->variant, NULL, 0);
    const size_t n = (size_t)p->rows * (size_t)p->hq * (size_t)p->d;
    double *ref = test_xcalloc(n, sizeof(double));
    double *ref_lse = test_xcalloc((size_t)p->rows * (size_t)p->hq, sizeof(double));
    problem_reference(p, ref, ref_lse);
    check_outputs(p, &dv, &want, ref, ref_lse, "built-in variant");
    test_readback got = run_with(p, &dv, snippet, params, num_params);
    test_qo_expect_same_bits(&dv.qo, &want, &got, p->name);
    test_readback_free(&want);
    test_readback_free(&got);
    free(ref);
    free(ref_lse);
    dev_free(&dv);
}

/* The variant of p's shape with nothing set beyond it. */
static flp_variant plain_variant(const problem *p) {
    flp_variant v = {.head_dim = p->d, .q_dtype = p->q_dtype, .kv_dtype = p->kv_dtype};
    return v;
}

static void test_snippet_soft_cap(void **state) {
    (void)state;
    problem p;
    snippet_problem(&p, "soft cap as a logits_transform");
    p.variant.logits_soft_cap = 0.3f; /* below most logits here: the cap bites */
    static const flp_variant_param params[] = {{"cap", FLP_PARAM_FLOAT}};
    flp_variant v = plain_variant(&p);
    v.logits_transform = "return cap * tanh(logit / cap);";
    v.params = params;
    v.num_params = 1;
    const flp_param_value values[] = {{.name = "cap", .f = 0.3f}};
    expect_snippet_equals_builtin(&p, &v, values, 1);
    problem_free(&p);
}

static void test_snippet_alibi(void **state) {
    (void)state;
    problem p;
    test_rng rng = snippet_problem(&p, "ALiBi as a logits_transform reading a float buffer");
    p.alibi_slopes = test_xcalloc((size_t)p.hq, sizeof(float));
    for (int32_t h = 0; h < p.hq; h++)
        p.alibi_slopes[h] = (float)test_rng_uniform(&rng, 0.01, 0.5);
    p.variant.pos_encoding = FLP_POS_ALIBI;
    static const flp_variant_param params[] = {{"slopes", FLP_PARAM_FLOAT_BUFFER}};
    flp_variant v = plain_variant(&p);
    v.logits_transform = "return logit + slopes[qo_head] * float(kv_pos - qo_pos);";
    v.params = params;
    v.num_params = 1;
    flp_buffer *buf = NULL;
    const int64_t shape[] = {p.hq};
    const flp_tensor slopes =
        test_tensor_upload(g_ctx, p.alibi_slopes, FLP_DTYPE_F32, 1, shape, (size_t)p.hq, &buf);
    const flp_param_value values[] = {{.name = "slopes", .buffer = &slopes}};
    expect_snippet_equals_builtin(&p, &v, values, 1);
    flp_buffer_destroy(buf);
    problem_free(&p);
}

static void test_snippet_causal_mask(void **state) {
    (void)state;
    problem p;
    snippet_problem(&p, "causal as a logits_mask");
    p.variant.mask = FLP_MASK_CAUSAL;
    flp_variant v = plain_variant(&p);
    v.logits_mask = "return kv_pos <= qo_pos;";
    expect_snippet_equals_builtin(&p, &v, NULL, 0);
    problem_free(&p);
}

/* A sliding window as a mask: the plan does not know it (the built-in window's plan skips the
 * keys outside it, so the two sum in other orders): checked against the float64 reference of
 * the built-in window. */
static void test_snippet_window_mask(void **state) {
    (void)state;
    problem p;
    snippet_problem(&p, "a sliding window as a logits_mask with an int parameter");
    p.variant.use_window = true;
    p.variant.window_left = 300;
    static const flp_variant_param params[] = {{"w", FLP_PARAM_INT}};
    flp_variant v = plain_variant(&p);
    v.logits_mask = "return kv_pos >= qo_pos - w;";
    v.params = params;
    v.num_params = 1;
    if (!snippets_run_here(&p, &v))
        return;
    const flp_param_value values[] = {{.name = "w", .i = 300}};
    dev_problem dv;
    dev_create(&p, p.rows, &dv);
    test_readback got = run_with(&p, &dv, &v, values, 1);
    const size_t n = (size_t)p.rows * (size_t)p.hq * (size_t)p.d;
    double *ref = test_xcalloc(n, sizeof(double));
    double *ref_lse = test_xcalloc((size_t)p.rows * (size_t)p.hq, sizeof(double));
    problem_reference(&p, ref, ref_lse);
    check_outputs(&p, &dv, &got, ref, ref_lse, "window snippet vs the reference");
    test_readback_free(&got);
    free(ref);
    free(ref_lse);
    dev_free(&dv);
    problem_free(&p);
}

static void test_snippet_query_transform(void **state) {
    (void)state;
    problem p;
    snippet_problem(&p, "a query_transform doubling q");
    /* 2q . k * s == q . k * 2s exactly: doubling is exact in float */
    p.variant.sm_scale = 2.0f / 8.0f;
    flp_variant v = plain_variant(&p);
    v.query_transform = "return q * 2.0;";
    expect_snippet_equals_builtin(&p, &v, NULL, 0);
    problem_free(&p);
}

/* Attention sinks as an output transform: out scaled by sigmoid(lse - sink[head]) for every row,
 * split (merged) rows included; lse unchanged. */
static void test_snippet_sinks(void **state) {
    (void)state;
    problem p;
    test_rng rng = snippet_problem(&p, "attention sinks as an output_transform");
    static const flp_variant_param params[] = {{"sinks", FLP_PARAM_FLOAT_BUFFER}};
    flp_variant v = plain_variant(&p);
    v.output_transform = "return o * sigmoid(lse - sinks[qo_head]);";
    v.params = params;
    v.num_params = 1;
    if (!snippets_run_here(&p, &v))
        return;
    float sinks[8];
    for (int32_t h = 0; h < p.hq; h++)
        sinks[h] = (float)test_rng_uniform(&rng, -1.0, 4.0);
    flp_buffer *buf = NULL;
    const int64_t shape[] = {p.hq};
    const flp_tensor t = test_tensor_upload(g_ctx, sinks, FLP_DTYPE_F32, 1, shape, 8, &buf);
    const flp_param_value values[] = {{.name = "sinks", .buffer = &t}};
    dev_problem dv;
    dev_create(&p, p.rows, &dv);
    test_readback plain = run_with(&p, &dv, &p.variant, NULL, 0);
    test_readback sunk = run_with(&p, &dv, &v, values, 1);
    test_qo_expect_sinks(&dv.qo, &plain, &sunk, sinks, p.rows);
    test_readback_free(&plain);
    test_readback_free(&sunk);
    dev_free(&dv);
    flp_buffer_destroy(buf);
    problem_free(&p);
}

/* A mask reading an int buffer by request and KV head: the dropped (request, KV head) pairs keep
 * no key (out 0, lse -inf), the others are bit for bit the plain run's. */
static void test_snippet_int_buffer_mask(void **state) {
    (void)state;
    problem p;
    snippet_problem(&p, "a logits_mask reading an int buffer by request and KV head");
    static const flp_variant_param params[] = {{"keep", FLP_PARAM_INT_BUFFER}};
    flp_variant v = plain_variant(&p);
    v.logits_mask = "return keep[request * 2 + kv_head] != 0;";
    v.params = params;
    v.num_params = 1;
    if (!snippets_run_here(&p, &v))
        return;
    const int32_t keep[8] = {1, 0, 0, 1, 1, 1, 0, 1}; /* [request][kv head] */
    flp_buffer *buf = NULL;
    const int64_t shape[] = {8};
    const flp_tensor t = test_tensor_upload(g_ctx, keep, FLP_DTYPE_I32, 1, shape, 8, &buf);
    const flp_param_value values[] = {{.name = "keep", .buffer = &t}};
    dev_problem dv;
    dev_create(&p, p.rows, &dv);
    test_readback plain = run_with(&p, &dv, &p.variant, NULL, 0);
    test_readback masked = run_with(&p, &dv, &v, values, 1);
    const int32_t group = p.hq / p.hkv;
    for (int32_t r = 0; r < p.rows; r++)
        for (int32_t h = 0; h < p.hq; h++) {
            const bool kept = keep[(r / p.qo_len) * 2 + h / group] != 0;
            const size_t l = (size_t)r * (size_t)p.hq + (size_t)h;
            if (kept)
                assert_int_equal(masked.lse[l], plain.lse[l]);
            else
                assert_true(isinf(test_f32_bits_to_double(masked.lse[l])) &&
                            test_f32_bits_to_double(masked.lse[l]) < 0);
            for (int32_t e = 0; e < p.d; e++) {
                const uint16_t w = out_word(&p, &masked, r, h, e);
                if (kept ? w != out_word(&p, &plain, r, h, e) : w != 0)
                    fail_msg("row %d head %d element %d: 0x%04x (request %s)", r, h, e, w,
                             kept ? "kept: differs from the plain run" : "masked: not 0");
            }
        }
    test_readback_free(&plain);
    test_readback_free(&masked);
    dev_free(&dv);
    flp_buffer_destroy(buf);
    problem_free(&p);
}

/* Sigmoid attention: softmax off, each key weighed by sigmoid(logit + b), the weighted values
 * summed (split rows' chunks added in the merge); lse 0. Against a float64 sum on the host. */
static void test_snippet_sigmoid(void **state) {
    (void)state;
    problem p;
    snippet_problem(&p, "sigmoid attention (softmax off)");
    static const flp_variant_param params[] = {{"b", FLP_PARAM_FLOAT}};
    flp_variant v = plain_variant(&p);
    v.logits_transform = "return sigmoid(logit + b);";
    v.params = params;
    v.num_params = 1;
    v.softmax_off = true;
    if (!snippets_run_here(&p, &v))
        return;
    const float bias = -1.5f;
    const flp_param_value values[] = {{.name = "b", .f = bias}};
    dev_problem dv;
    dev_create(&p, p.rows, &dv);
    test_readback got = run_with(&p, &dv, &v, values, 1);
    const size_t n = (size_t)p.rows * (size_t)p.hq * (size_t)p.d;
    double *want = test_xcalloc(n, sizeof(double)), *out = test_xcalloc(n, sizeof(double));
    const int32_t group = p.hq / p.hkv;
    const double scale = 1.0 / sqrt((double)p.d);
    for (int32_t r = 0; r < p.rows; r++) {
        const int32_t b = r / p.qo_len;
        for (int32_t h = 0; h < p.hq; h++) {
            const int32_t g = h / group;
            const float *q = p.q + ((size_t)r * (size_t)p.hq + (size_t)h) * (size_t)p.d;
            double *o = want + ((size_t)r * (size_t)p.hq + (size_t)h) * (size_t)p.d;
            for (int32_t t = 0; t < p.kv_lens[b]; t++) {
                const int32_t page = p.kv_indices[p.kv_indptr[b] + t / p.page_size];
                const size_t at =
                    (((size_t)page * (size_t)p.page_size + (size_t)(t % p.page_size)) *
                         (size_t)p.hkv +
                     (size_t)g) *
                    (size_t)p.d;
                double dot = 0.0;
                for (int32_t e = 0; e < p.d; e++)
                    dot += (double)q[e] * (double)p.k_raw[at + (size_t)e];
                const double w = 1.0 / (1.0 + exp(-(dot * scale + bias)));
                for (int32_t e = 0; e < p.d; e++)
                    o[e] += w * (double)p.v_raw[at + (size_t)e];
            }
            assert_int_equal(got.lse[(size_t)r * (size_t)p.hq + (size_t)h], 0u);
            for (int32_t e = 0; e < p.d; e++)
                out[((size_t)r * (size_t)p.hq + (size_t)h) * (size_t)p.d + (size_t)e] =
                    test_half_to_double(p.q_dtype, out_word(&p, &got, r, h, e));
        }
    }
    assert_relative_error(out, want, n, 2e-3, "sigmoid attention vs the float64 sum");
    free(want);
    free(out);
    test_readback_free(&got);
    dev_free(&dv);
    problem_free(&p);
}

/* Bad parameter values are refused at run with the parameter's name, nothing written; a snippet
 * the compiler refuses gives its log with the snippet's own line. */
static void test_bad_snippet_run(void **state) {
    (void)state;
    problem p;
    snippet_problem(&p, "bad snippet runs");
    static const flp_variant_param params[] = {{"cap", FLP_PARAM_FLOAT},
                                               {"bias", FLP_PARAM_FLOAT_BUFFER}};
    flp_variant v = plain_variant(&p);
    v.logits_transform = "return cap * tanh(logit / cap) + bias[qo_head];";
    v.params = params;
    v.num_params = 2;
    if (!snippets_run_here(&p, &v))
        return;
    dev_problem dv;
    dev_create(&p, p.rows, &dv);
    flp_plan *plan = create_plan_for(&p);
    flp_decode_plan_args a = plan_args(&p);
    a.variant = v;
    assert_ok(flp_decode_plan(g_ctx, plan, &a));
    float bias_values[8] = {0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f, 0.7f, 0.8f};
    flp_buffer *fbuf = NULL, *hbuf = NULL;
    const int64_t shape[] = {8}, shape2[] = {2, 4};
    const flp_tensor bias =
        test_tensor_upload(g_ctx, bias_values, FLP_DTYPE_F32, 1, shape, 8, &fbuf);
    const flp_tensor half =
        test_tensor_upload(g_ctx, bias_values, FLP_DTYPE_F16, 1, shape, 8, &hbuf);
    flp_tensor two_d = bias;
    two_d.ndim = 2;
    two_d.shape[0] = shape2[0];
    two_d.shape[1] = shape2[1];
    two_d.stride[0] = 4;
    two_d.stride[1] = 1;
    struct {
        flp_param_value values[3];
        int32_t n;
        const char *mention;
    } bad[] = {
        {{{.name = "cap", .f = 1.0f}},
         1,
         "num_params = 1, but the plan's variant declares 2 parameters"},
        {{{.name = "cap", .f = 1.0f}, {.name = "bias", .buffer = NULL}},
         2,
         "params[1] (\"bias\") is a float buffer parameter: its buffer is NULL"},
        {{{.name = "cap", .buffer = &bias}, {.name = "bias", .buffer = &bias}},
         2,
         "params[0] (\"cap\") is a float parameter: it takes a value, not a buffer"},
        {{{.name = "cap", .f = 1.0f}, {.name = "cap", .f = 2.0f}},
         2,
         "params[1] gives \"cap\" a second time"},
        {{{.name = "cap", .f = 1.0f}, {.name = "biass", .buffer = &bias}},
         2,
         "params[1].name = \"biass\" is not a parameter of the plan's variant"},
        {{{.name = "cap", .f = 1.0f}, {.name = NULL}}, 2, "params[1].name is NULL"},
        {{{.name = "cap", .f = 1.0f}, {.name = "bias", .buffer = &half}},
         2,
         "params[1] (\"bias\")"},
        {{{.name = "cap", .f = 1.0f}, {.name = "bias", .buffer = &two_d}},
         2,
         "params[1] (\"bias\")"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        test_qo_poison(&dv.qo);
        flp_decode_run_args r = run_args(&p, &dv);
        r.params = bad[i].values;
        r.num_params = bad[i].n;
        test_qo_expect_failed(&dv.qo, flp_decode_run(g_ctx, plan, &r), FLP_ERROR_INVALID_ARGUMENT,
                              bad[i].mention, MENTIONS(bad[i].mention));
    }
    /* the plan without the snippets takes no values */
    flp_decode_plan_args plain = plan_args(&p);
    assert_ok(flp_decode_plan(g_ctx, plan, &plain));
    flp_decode_run_args r = run_args(&p, &dv);
    const flp_param_value one[] = {{.name = "cap", .f = 1.0f}};
    r.params = one;
    r.num_params = 1;
    test_qo_poison(&dv.qo);
    test_qo_expect_failed(&dv.qo, flp_decode_run(g_ctx, plan, &r), FLP_ERROR_INVALID_ARGUMENT,
                          "values for a plan without snippets",
                          MENTIONS("num_params = 1, but the plan's variant declares 0 "
                                   "parameters"));
    /* an int returned where a bool is due: GLSL refuses it, on line 2 of the snippet */
    flp_variant broken = plain_variant(&p);
    broken.logits_mask = "int k = kv_pos;\nreturn k;";
    a.variant = broken;
    assert_ok(flp_decode_plan(g_ctx, plan, &a));
    r = run_args(&p, &dv);
    test_qo_poison(&dv.qo);
    test_qo_expect_failed(&dv.qo, flp_decode_run(g_ctx, plan, &r), FLP_ERROR_COMPILE,
                          "a snippet glslang refuses", MENTIONS("logits_mask:2:"));
    flp_plan_destroy(plan);
    flp_buffer_destroy(fbuf);
    flp_buffer_destroy(hbuf);
    dev_free(&dv);
    problem_free(&p);
}

/* ---- main ------------------------------------------------------------------------------------ */

#define GOOD(f) test_list_add(&l, "", #f, f, false, NULL)
#define BAD(f) test_list_add(&l, "", #f, f, true, NULL)

int main(int argc, char **argv) {
    const int rc = test_backend_open(argc, argv, flp_vulkan_validation_message_count, &g_ctx);
    if (rc != 0)
        return rc;
    test_list l = {0};
    for (size_t i = 0; i < DECODE_CASE_COUNT; ++i)
        test_list_add(&l, "case_", decode_cases[i].name, test_case, false,
                      (void *)&decode_cases[i]);
    int num_golden = 0;
    const char *const *golden = golden_case_names(&num_golden);
    for (int i = 0; i < num_golden; ++i)
        if (strncmp(golden[i], "decode_", 7) == 0)
            test_list_add(&l, "golden_", golden[i], test_golden, false, (void *)golden[i]);
    if (l.count == DECODE_CASE_COUNT) {
        fprintf(stderr, "no decode_* golden case found in %s/index.json\n", golden_dir());
        flp_context_destroy(g_ctx);
        return 1;
    }
    GOOD(test_determinism);
    GOOD(test_skewed_batch_fills_grid);
    GOOD(test_pages_at_run_follow_the_table);
    GOOD(test_pages_at_run_bad_id_contained);
    GOOD(test_replan_within_capacity);
    BAD(test_capacity);
    GOOD(test_large_pool);
    BAD(test_bad_q_dtype);
    BAD(test_bad_q_shape);
    BAD(test_bad_out);
    BAD(test_bad_kv_shape);
    BAD(test_bad_heads);
    BAD(test_bad_page_ids);
    BAD(test_bad_run_page_ids);
    BAD(test_bad_last_page_len);
    BAD(test_bad_kv_indptr);
    BAD(test_bad_null);
    BAD(test_bad_run_before_plan);
    BAD(test_bad_lse);
    BAD(test_bad_head_dim);
    BAD(test_bad_variant);
    BAD(test_bad_page_size);
    BAD(test_bad_tensor_layout);
    BAD(test_bad_workspace);
    GOOD(test_snippet_soft_cap);
    GOOD(test_snippet_alibi);
    GOOD(test_snippet_causal_mask);
    GOOD(test_snippet_window_mask);
    GOOD(test_snippet_query_transform);
    GOOD(test_snippet_sinks);
    GOOD(test_snippet_int_buffer_mask);
    GOOD(test_snippet_sigmoid);
    BAD(test_bad_snippet_run);
    return test_list_run(&l, "decode", argc, argv, test_backend_group_setup,
                         test_backend_group_teardown);
}
