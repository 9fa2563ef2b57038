/* The batch prefill / append reference suite (docs/design.md section 9), run once per backend:
 *
 *     test_prefill vulkan|cuda [cmocka test filter]
 *
 * Exits 77 (skipped) when the backend is not built or has no device. For Vulkan the Khronos
 * validation layer is on (FLP_VULKAN_VALIDATION=1 unless the environment says otherwise; =0 turns
 * it off), a missing layer fails the run (exit 1), and any validation message fails the test
 * during which it appeared. FLP_PREFILL_CASES_SUBSET=N (or
 * N:K) runs only the table cases whose index is K (default 0) modulo N: for slow backends such as
 * the CUDA kernel emulator; CI's Vulkan run takes them all.
 *
 * Tests:
 * - the case table (tests/prefill_cases.h): ragged queries over ragged or paged (NHD / HND, page
 *   1 and 16) KV, prompts and appends, empty requests, skewed batches, split requests (merge),
 *   masks none / causal / custom each with and without the sliding window, soft cap, ALiBi,
 *   RoPE (Llama 3.1 too), sm_scale, lse, fp8 KV, non-contiguous strides; against the float64
 *   reference (core/reference.h) on float64 copies of the stored inputs;
 * - the golden prefill / append cases (tests/golden/);
 * - flp_single_prefill (custom mask included);
 * - flp_kv_append: cache bytes against the host conversions of flashport.h, everything outside
 *   the written slots untouched, out-of-range rows skipped; "append then attend";
 * - determinism, re-planning within capacity on a caller workspace, FLP_ERROR_CAPACITY;
 * - bad input: exact status, a message naming the bad value, outputs untouched.
 *
 * Every output is poisoned first (0xFFFF: NaN in f16 and bf16; lse: NaN) and every element of
 * its view must be written, every byte outside it untouched. Rows that keep no key must be
 * exactly 0 with lse -inf.
 *
 * Error bounds: those of test_decode.c (test_error_bounds_for in test_util.c), the max relative
 * error and the per-request mean error of out, and the lse error, per Q/O dtype. fp8 KV keeps
 * the bounds of its Q/O dtype: the reference is fed the exact dequantised values (stored fp8
 * value times the scale, the f32 product the kernels compute), so the quantisation itself is not
 * part of the comparison, only f32 arithmetic and the rounding of the output. */
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
#include "tests/golden.h"
#include "tests/prefill_cases.h"
#include "tests/test_util.h"

#define POISON8 0xFFu /* e4m3 / e5m2 NaN: KV padding */

static flp_context *g_ctx;

#define assert_ok(call) test_assert_ok(g_ctx, call)
#define expect_status(got, want, call, mentions)                                                   \
    test_expect_status(g_ctx, got, want, call, mentions)
#define MENTIONS TEST_MENTIONS

/* ---- KV tensor geometry ---------------------------------------------------------------------- *
 * A KV tensor is `units` units (pages, or rows of a ragged KV) of [a, b, D] vectors (paged NHD:
 * a = page_size, b = Hkv; HND: a = Hkv, b = page_size; ragged: a = Hkv, b = 1, and the tensor is
 * 3-D). Padded layouts add 16 bytes after every vector and every [b, D] block; interleaved ones
 * put the V unit right after the K unit in one buffer. The host keeps dense [units, a, b, D]. */

typedef struct kv_geometry {
    flp_dtype dtype;
    int ndim;                 /* 4 paged, 3 ragged */
    int64_t units, a, b, d;   /* dims */
    int64_t s_unit, s_a, s_b; /* strides in elements (s_b unused when ragged) */
    size_t v_offset;          /* bytes: V view in the K buffer (interleaved) or 0 */
    size_t buffer_bytes;      /* each of the K and V buffers (one when interleaved) */
    bool interleaved;
} kv_geometry;

static kv_geometry kv_geometry_make(flp_dtype dt, bool ragged, flp_kv_layout layout,
                                    int32_t page_size, int32_t hkv, int32_t d, int64_t units,
                                    bool padded, bool interleaved) {
    kv_geometry g;
    memset(&g, 0, sizeof g);
    const int64_t es = (int64_t)flp_dtype_size(dt), pad = padded ? 16 / es : 0;
    g.dtype = dt;
    g.ndim = ragged ? 3 : 4;
    g.units = units;
    g.d = d;
    if (ragged) {
        g.a = hkv;
        g.b = 1;
        g.s_a = d + pad;
        g.s_b = 0;
    } else {
        g.a = layout == FLP_KV_LAYOUT_NHD ? page_size : hkv;
        g.b = layout == FLP_KV_LAYOUT_NHD ? hkv : page_size;
        g.s_b = d + pad;
        g.s_a = g.b * g.s_b + pad;
    }
    const int64_t unit = g.a * g.s_a + pad;
    g.interleaved = interleaved;
    g.s_unit = interleaved ? 2 * unit : unit;
    g.v_offset = interleaved ? (size_t)(unit * es) : 0;
    g.buffer_bytes = (size_t)(units * g.s_unit * es) + 64;
    return g;
}

/* Element offset of vector (u, i, j) in a K (or, less v_offset, V) buffer. */
static size_t kv_vector_at(const kv_geometry *g, int64_t u, int64_t i, int64_t j) {
    return (size_t)(u * g->s_unit + i * g->s_a + j * g->s_b);
}

static flp_tensor kv_tensor(const kv_geometry *g, flp_buffer *buf, size_t offset) {
    flp_tensor t;
    memset(&t, 0, sizeof t);
    t.buf = buf;
    t.offset = offset;
    t.dtype = g->dtype;
    t.ndim = g->ndim;
    t.shape[0] = g->units;
    t.shape[1] = g->a;
    t.stride[0] = g->s_unit;
    t.stride[1] = g->s_a;
    if (g->ndim == 4) {
        t.shape[2] = g->b;
        t.stride[2] = g->s_b;
    }
    t.shape[g->ndim - 1] = g->d;
    t.stride[g->ndim - 1] = 1;
    return t;
}

/* Host image of a KV buffer: padding 0xFF (NaN in every KV dtype, so reading it shows), the
 * dense values k (and v, interleaved) converted to the dtype. */
static uint8_t *kv_image(const kv_geometry *g, const float *k, const float *v) {
    const size_t es = flp_dtype_size(g->dtype);
    uint8_t *img = test_xcalloc(g->buffer_bytes, 1);
    memset(img, POISON8, g->buffer_bytes);
    for (int64_t u = 0; u < g->units; ++u)
        for (int64_t i = 0; i < g->a; ++i)
            for (int64_t j = 0; j < g->b; ++j) {
                const size_t src = (size_t)(((u * g->a + i) * g->b + j) * g->d);
                const size_t at = kv_vector_at(g, u, i, j) * es;
                assert_int_equal(flp_convert_from_f32(g->dtype, k + src, img + at, (size_t)g->d),
                                 FLP_OK);
                if (v)
                    assert_int_equal(flp_convert_from_f32(g->dtype, v + src, img + at + g->v_offset,
                                                          (size_t)g->d),
                                     FLP_OK);
            }
    return img;
}

/* ---- a prefill problem on the host ----------------------------------------------------------- */

typedef struct problem {
    char name[96];
    int32_t batch, rows; /* rows = qo_indptr[batch] */
    int32_t hq, hkv, d;
    flp_dtype q_dtype, kv_dtype;
    bool ragged;
    flp_kv_layout layout;
    int32_t page_size;
    int32_t *qo_len, *kv_len;  /* [batch] */
    int32_t *qo_indptr;        /* [batch + 1] */
    int32_t *kv_indptr;        /* [batch + 1]: tokens (ragged) or pages (paged) */
    int32_t *kv_indices;       /* paged: [kv_indptr[batch]] page ids */
    int32_t *kv_last_page_len; /* paged: [batch] (0 for requests without pages) */
    int64_t units;             /* pool pages (paged) or k/v rows (ragged) */
    float *k_raw, *v_raw;      /* [units, a, b, d] stored values of kv_dtype */
    float *q;                  /* [rows, hq, d] stored values of q_dtype */
    int32_t *mask_indptr;      /* [batch] or NULL */
    uint8_t *mask;             /* [mask_bytes] packed bits */
    int32_t mask_bytes;        /* bytes the plan needs (end of the last request's bits) */
    bool mask_empty_rows;
    int32_t *q_rope_offset, *k_rope_offset; /* [batch] or NULL */
    bool rope_offsets;
    float *alibi_slopes;    /* [hq] caller slopes or NULL */
    float k_scale, v_scale; /* factors the kernels apply (1 for 16-bit KV) */
    flp_variant variant;
    bool lse, padded_qo, padded_kv, interleaved_kv;
    bool pages_at_run; /* paged: the plan gets kv_indices = NULL, the runs dev_problem's */
} problem;

static void problem_free_batch(problem *p) {
    free(p->qo_len);
    free(p->kv_len);
    free(p->qo_indptr);
    free(p->kv_indptr);
    free(p->kv_indices);
    free(p->kv_last_page_len);
    free(p->q);
    free(p->mask_indptr);
    free(p->mask);
    free(p->q_rope_offset);
    free(p->k_rope_offset);
    p->qo_len = p->kv_len = p->qo_indptr = p->kv_indptr = p->kv_indices = NULL;
    p->kv_last_page_len = p->mask_indptr = p->q_rope_offset = p->k_rope_offset = NULL;
    p->q = NULL;
    p->mask = NULL;
}

static void problem_free(problem *p) {
    problem_free_batch(p);
    free(p->k_raw);
    free(p->v_raw);
    free(p->alibi_slopes);
    memset(p, 0, sizeof *p);
}

static kv_geometry problem_geometry(const problem *p) {
    return kv_geometry_make(p->kv_dtype, p->ragged, p->layout, p->page_size, p->hkv, p->d, p->units,
                            p->padded_kv, p->interleaved_kv);
}

static size_t unit_elems(const problem *p) {
    return (size_t)(p->ragged ? 1 : p->page_size) * (size_t)p->hkv * (size_t)p->d;
}

/* Shape, variant and options of a case (lengths come from problem_set_batch). */
static void problem_from_case(problem *p, const prefill_case *c, test_rng *rng) {
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s", c->name);
    p->hq = c->num_qo_heads;
    p->hkv = c->num_kv_heads;
    p->d = c->head_dim;
    p->q_dtype = c->q_dtype;
    p->kv_dtype = c->kv_dtype == FLP_DTYPE_DEFAULT ? c->q_dtype : c->kv_dtype;
    p->ragged = c->ragged;
    p->layout = c->layout;
    p->page_size = c->ragged ? 0 : c->page_size;
    p->lse = !c->no_lse;
    p->padded_qo = (c->layout_flags & CASE_PADDED_QO) != 0;
    p->padded_kv = (c->layout_flags & CASE_PADDED_KV) != 0;
    p->interleaved_kv = (c->layout_flags & CASE_INTERLEAVED_KV) != 0;
    p->mask_empty_rows = c->mask_empty_rows;
    p->rope_offsets = c->rope_offsets;
    p->pages_at_run = c->pages_at_run && !c->ragged;
    flp_variant *v = &p->variant;
    v->head_dim = c->head_dim;
    v->q_dtype = p->q_dtype;
    v->kv_dtype = p->kv_dtype;
    v->mask = c->mask;
    v->use_window = c->use_window;
    v->window_left = c->use_window ? c->window_left : 0;
    v->logits_soft_cap = c->soft_cap;
    v->sm_scale = c->sm_scale;
    v->k_scale = c->k_scale;
    v->v_scale = c->v_scale;
    p->k_scale = test_is_fp8(p->kv_dtype) && c->k_scale > 0.0f ? c->k_scale : 1.0f;
    p->v_scale = test_is_fp8(p->kv_dtype) && c->v_scale > 0.0f ? c->v_scale : 1.0f;
    test_variant_set_pos_encoding(v, c->alibi, c->rope, p->hq, rng, &p->alibi_slopes);
}

/* Random packed bits for every request (about 70% kept; with mask_empty_rows every third row of
 * a request keeps nothing), each request at a byte offset with a small gap after the previous. */
static void problem_make_mask(problem *p, test_rng *rng) {
    p->mask_indptr = test_xcalloc((size_t)p->batch, sizeof(int32_t));
    int64_t cursor = test_rng_int(rng, 0, 3), end = 0;
    for (int32_t b = 0; b < p->batch; ++b) {
        p->mask_indptr[b] = (int32_t)cursor;
        const int64_t bits = (int64_t)p->qo_len[b] * p->kv_len[b];
        cursor += (bits + 7) / 8;
        if (p->qo_len[b] > 0 && cursor > end)
            end = cursor;
        cursor += test_rng_int(rng, 0, 2);
    }
    p->mask_bytes = (int32_t)end;
    p->mask = test_xcalloc((size_t)cursor + 1, 1);
    for (size_t i = 0; i < (size_t)cursor + 1; ++i) /* gaps get random bits: must not be read */
        p->mask[i] = (uint8_t)test_rng_next(rng);
    for (int32_t b = 0; b < p->batch; ++b)
        for (int32_t i = 0; i < p->qo_len[b]; ++i)
            for (int32_t t = 0; t < p->kv_len[b]; ++t) {
                const int64_t bit = (int64_t)p->mask_indptr[b] * 8 + (int64_t)i * p->kv_len[b] + t;
                const bool keep =
                    !(p->mask_empty_rows && i % 3 == 1) && test_rng_uniform(rng, 0.0, 1.0) < 0.7;
                if (keep)
                    p->mask[bit >> 3] |= (uint8_t)(1u << (bit & 7));
                else
                    p->mask[bit >> 3] &= (uint8_t) ~(1u << (bit & 7));
            }
}

/* A new batch over the problem's pool: the first call creates the pool (what the batch needs
 * plus extra_units unused random pages / rows); later calls reuse it. Page ids are a random
 * permutation of the pool unless sequential. */
static void problem_set_batch(problem *p, test_rng *rng, int32_t batch, const int32_t *qo_len,
                              const int32_t *kv_len, int32_t extra_units, bool sequential) {
    problem_free_batch(p);
    p->batch = batch;
    p->qo_len = test_xcalloc((size_t)batch, sizeof(int32_t));
    p->kv_len = test_xcalloc((size_t)batch, sizeof(int32_t));
    p->qo_indptr = test_xcalloc((size_t)batch + 1, sizeof(int32_t));
    p->kv_indptr = test_xcalloc((size_t)batch + 1, sizeof(int32_t));
    p->kv_last_page_len = test_xcalloc((size_t)batch, sizeof(int32_t));
    for (int32_t b = 0; b < batch; ++b) {
        assert_true(qo_len[b] >= 0 && qo_len[b] <= kv_len[b]);
        p->qo_len[b] = qo_len[b];
        p->kv_len[b] = kv_len[b];
        p->qo_indptr[b + 1] = p->qo_indptr[b] + qo_len[b];
        if (p->ragged) {
            p->kv_indptr[b + 1] = p->kv_indptr[b] + kv_len[b];
        } else {
            const int32_t pages = (kv_len[b] + p->page_size - 1) / p->page_size;
            p->kv_indptr[b + 1] = p->kv_indptr[b] + pages;
            p->kv_last_page_len[b] = pages ? kv_len[b] - (pages - 1) * p->page_size : 0;
        }
    }
    p->rows = p->qo_indptr[batch];
    const int32_t needed = p->kv_indptr[batch];
    if (!p->k_raw) {
        p->units = needed + extra_units;
        const size_t n = (size_t)p->units * unit_elems(p);
        p->k_raw = test_xcalloc(n, sizeof(float));
        p->v_raw = test_xcalloc(n, sizeof(float));
        test_fill_stored(rng, p->kv_dtype, p->k_scale, p->k_raw, n);
        test_fill_stored(rng, p->kv_dtype, p->v_scale, p->v_raw, n);
    }
    assert_true(needed <= p->units);
    if (!p->ragged) {
        int32_t *perm = test_permutation(rng, (int32_t)p->units, !sequential);
        p->kv_indices = test_xcalloc((size_t)needed, sizeof(int32_t));
        memcpy(p->kv_indices, perm, sizeof(int32_t) * (size_t)needed);
        free(perm);
    }
    if (p->rope_offsets)
        test_rope_offsets(rng, batch, &p->q_rope_offset, &p->k_rope_offset);
    const size_t nq = (size_t)p->rows * (size_t)p->hq * (size_t)p->d;
    p->q = test_xcalloc(nq, sizeof(float));
    test_fill_stored(rng, p->q_dtype, 1.0f, p->q, nq);
    if (p->variant.mask == FLP_MASK_CUSTOM)
        problem_make_mask(p, rng);
}

/* The lengths a case asks for (prefill_cases.h: len_gen, zero_every). */
static void case_lengths(const prefill_case *c, test_rng *rng, int32_t *qo, int32_t *kv) {
    int zeros = 0;
    for (int32_t b = 0; b < c->batch; ++b) {
        switch (c->gen) {
        case LEN_RAGGED:
            qo[b] = test_rng_int(rng, c->qo_min, c->qo_max);
            kv[b] = qo[b] + test_rng_int(rng, 0, c->extra_max);
            break;
        case LEN_SKEWED:
            if (b == c->batch / 2) {
                qo[b] = c->qo_max;
                kv[b] = c->qo_max + c->extra_max;
            } else {
                qo[b] = test_rng_int(rng, 1, c->qo_min);
                kv[b] = qo[b] + test_rng_int(rng, 0, 20);
            }
            break;
        default:
            assert_true(c->batch <= PREFILL_CASE_MAX_LIST);
            qo[b] = c->qo_lens[b];
            kv[b] = c->prompt ? c->qo_lens[b] : c->kv_lens[b];
            break;
        }
        if (c->gen != LEN_LIST && c->zero_every > 0 && b % c->zero_every == c->zero_every - 1) {
            qo[b] = 0; /* an empty request, alternately with and without keys */
            if (zeros++ % 2 == 1)
                kv[b] = 0;
        }
    }
}

static void problem_for_case(problem *p, const prefill_case *c, test_rng *rng) {
    problem_from_case(p, c, rng);
    int32_t *qo = test_xcalloc((size_t)c->batch, sizeof(int32_t));
    int32_t *kv = test_xcalloc((size_t)c->batch, sizeof(int32_t));
    case_lengths(c, rng, qo, kv);
    problem_set_batch(p, rng, c->batch, qo, kv, test_rng_int(rng, 2, 9), c->sequential_pages);
    free(qo);
    free(kv);
}

static flp_prefill_plan_args plan_args(const problem *p) {
    flp_prefill_plan_args a;
    memset(&a, 0, sizeof a);
    a.batch_size = p->batch;
    a.qo_indptr = p->qo_indptr;
    a.kv_storage = p->ragged ? FLP_KV_RAGGED : FLP_KV_PAGED;
    a.kv_indptr = p->kv_indptr;
    if (!p->ragged) {
        a.kv_indices = p->pages_at_run ? NULL : p->kv_indices;
        a.kv_last_page_len = p->kv_last_page_len;
        a.page_size = p->page_size;
        a.kv_layout = p->layout;
    }
    a.mask_indptr = p->mask_indptr;
    a.q_rope_offset = p->q_rope_offset;
    a.k_rope_offset = p->k_rope_offset;
    a.alibi_slopes = p->alibi_slopes;
    a.variant = p->variant;
    return a;
}

/* Dequantised pool as doubles in ragged token order: k/v [tokens, hkv, d]; tok_indptr [batch+1]. */
static double *gather_keys(const problem *p, const float *raw, float scale, int32_t *tok_indptr) {
    if (!p->ragged)
        return test_gather_paged_kv(p->batch, p->hkv, p->d, p->page_size, p->layout,
                                    (int32_t)p->units, raw, scale, p->kv_indptr, p->kv_indices,
                                    p->kv_last_page_len, p->kv_len, tok_indptr);
    const size_t n = (size_t)p->kv_indptr[p->batch] * (size_t)p->hkv * (size_t)p->d;
    double *out = test_xcalloc(n, sizeof(double));
    memcpy(tok_indptr, p->kv_indptr, sizeof(int32_t) * ((size_t)p->batch + 1));
    for (size_t i = 0; i < n; ++i)
        out[i] = raw[i] * scale; /* the f32 product the kernels compute */
    return out;
}

/* The float64 reference: out [rows, hq, d], lse [rows, hq]. */
static void problem_reference(const problem *p, double *out, double *lse) {
    int32_t *tok_indptr = test_xcalloc((size_t)p->batch + 1, sizeof(int32_t));
    double *k = gather_keys(p, p->k_raw, p->k_scale, tok_indptr);
    double *v = gather_keys(p, p->v_raw, p->v_scale, tok_indptr);
    flp_ref_attention a;
    test_ref_attention_init(&a, &p->variant, p->batch, p->hq, p->hkv);
    a.qo_indptr = p->qo_indptr;
    a.kv_indptr = tok_indptr;
    a.k = k;
    a.v = v;
    a.custom_mask = p->mask;
    a.mask_indptr = p->mask_indptr;
    a.q_rope_offset = p->q_rope_offset;
    a.k_rope_offset = p->k_rope_offset;
    test_ref_attention_run(&a, p->q, p->alibi_slopes, out, lse);
    free(tok_indptr);
    free(k);
    free(v);
}

/* ---- device side ----------------------------------------------------------------------------- */

/* q/out [rows, hq, d] and lse [rows, hq]: dense, or padded row / head strides (multiples of 16
 * bytes) at offsets that are 16-byte but not 256-byte aligned. */
static test_qo_layout get_qo_layout(const problem *p) {
    test_qo_layout l;
    memset(&l, 0, sizeof l);
    const int64_t pad = p->padded_qo ? 16 / (int64_t)flp_dtype_size(p->q_dtype) : 0;
    l.head_stride = p->d + pad;
    l.row_stride = p->hq * l.head_stride + 2 * pad;
    l.lse_row_stride = p->padded_qo ? p->hq + 5 : p->hq;
    if (p->padded_qo) {
        l.q_offset = 112;
        l.out_offset = 48;
        l.lse_offset = 16;
    }
    return l;
}

typedef struct dev_problem {
    test_qo qo;                           /* q, out, lse */
    flp_buffer *k_buf, *v_buf, *mask_buf; /* v_buf NULL: interleaved */
    size_t mask_buf_bytes;
    kv_geometry kv;
    flp_tensor k, v, mask;
    flp_buffer *idx_buf;   /* pages_at_run: the device page ids */
    flp_tensor kv_indices; /* pages_at_run: [total pages] I32, the run's page ids */
} dev_problem;

/* A contiguous I32 vector on the device, in a buffer of its own. */
static flp_tensor i32_tensor(flp_buffer **buf, const int32_t *values, int32_t n) {
    *buf = test_buffer_new(g_ctx, sizeof(int32_t) * (size_t)(n > 0 ? n : 1));
    if (n > 0)
        assert_ok(flp_buffer_write(g_ctx, *buf, 0, values, sizeof(int32_t) * (size_t)n));
    flp_tensor t;
    memset(&t, 0, sizeof t);
    t.buf = *buf;
    t.dtype = FLP_DTYPE_I32;
    t.ndim = 1;
    t.shape[0] = n;
    t.stride[0] = 1;
    return t;
}

/* Uploads q (buffer padding poisoned: reading it would show) and the custom mask; sets views. */
static void dev_write_batch(const problem *p, dev_problem *dv) {
    test_qo_write(&dv->qo, p->q, p->rows);
    memset(&dv->mask, 0, sizeof dv->mask);
    if (p->mask) {
        flp_buffer_destroy(dv->mask_buf);
        dv->mask_buf_bytes = (size_t)p->mask_bytes + 16;
        dv->mask_buf = test_buffer_new(g_ctx, dv->mask_buf_bytes);
        uint8_t *bytes = test_xcalloc(dv->mask_buf_bytes, 1);
        memset(bytes, 0xFF, dv->mask_buf_bytes); /* bits past the end: all set */
        memcpy(bytes, p->mask, (size_t)p->mask_bytes);
        assert_ok(flp_buffer_write(g_ctx, dv->mask_buf, 0, bytes, dv->mask_buf_bytes));
        free(bytes);
        dv->mask.buf = dv->mask_buf;
        dv->mask.dtype = FLP_DTYPE_U8;
        dv->mask.ndim = 1;
        dv->mask.shape[0] = p->mask_bytes;
        dv->mask.stride[0] = 1;
    }
}

/* Uploads the host pool (k_raw, v_raw) as the K/V tensors. */
static void dev_write_kv(const problem *p, dev_problem *dv) {
    const kv_geometry *g = &dv->kv;
    uint8_t *img = kv_image(g, p->k_raw, g->interleaved ? p->v_raw : NULL);
    assert_ok(flp_buffer_write(g_ctx, dv->k_buf, 0, img, g->buffer_bytes));
    free(img);
    if (!g->interleaved) {
        img = kv_image(g, p->v_raw, NULL);
        assert_ok(flp_buffer_write(g_ctx, dv->v_buf, 0, img, g->buffer_bytes));
        free(img);
    }
}

static void dev_create(const problem *p, int32_t rows_capacity, dev_problem *dv) {
    memset(dv, 0, sizeof *dv);
    test_qo_create(&dv->qo, g_ctx, p->q_dtype, p->hq, p->d, rows_capacity, get_qo_layout(p));
    dv->kv = problem_geometry(p);
    dv->k_buf = test_buffer_new(g_ctx, dv->kv.buffer_bytes);
    if (!dv->kv.interleaved)
        dv->v_buf = test_buffer_new(g_ctx, dv->kv.buffer_bytes);
    dv->k = kv_tensor(&dv->kv, dv->k_buf, 0);
    dv->v = dv->kv.interleaved ? kv_tensor(&dv->kv, dv->k_buf, dv->kv.v_offset)
                               : kv_tensor(&dv->kv, dv->v_buf, 0);
    dev_write_kv(p, dv);
    dev_write_batch(p, dv);
    if (p->pages_at_run)
        dv->kv_indices = i32_tensor(&dv->idx_buf, p->kv_indices, p->kv_indptr[p->batch]);
}

static void dev_free(dev_problem *dv) {
    test_qo_free(&dv->qo);
    flp_buffer_destroy(dv->k_buf);
    flp_buffer_destroy(dv->v_buf);
    flp_buffer_destroy(dv->mask_buf);
    flp_buffer_destroy(dv->idx_buf);
    memset(dv, 0, sizeof *dv);
}

static flp_prefill_run_args run_args(const problem *p, const dev_problem *dv) {
    flp_prefill_run_args r;
    memset(&r, 0, sizeof r);
    r.q = dv->qo.q;
    r.k = dv->k;
    r.v = dv->v;
    r.out = dv->qo.out;
    r.lse = p->lse ? &dv->qo.lse : NULL;
    r.custom_mask = p->mask ? &dv->mask : NULL;
    r.kv_indices = p->pages_at_run ? &dv->kv_indices : NULL;
    return r;
}

static flp_plan *create_plan(const problem *p, int32_t max_batch, int32_t max_qo_rows,
                             int32_t max_pages) {
    flp_plan_desc pd = test_plan_desc_make(max_batch, max_pages, p->hq, p->hkv, p->d);
    pd.max_qo_rows = max_qo_rows;
    return test_plan_create(g_ctx, &pd);
}

/* Capacities a little above the problem's. */
static flp_plan *create_plan_for(const problem *p) {
    const int32_t pages = p->ragged ? 1 : p->kv_indptr[p->batch] + 3;
    return create_plan(p, p->batch + 2, p->rows + 5, pages);
}

static void plan_problem(const problem *p, flp_plan *plan) {
    const flp_prefill_plan_args a = plan_args(p);
    assert_ok(flp_prefill_plan(g_ctx, plan, &a));
}

/* Poisons the outputs, runs, waits. */
static void run_problem(const problem *p, const dev_problem *dv, const flp_plan *plan) {
    test_qo_poison(&dv->qo);
    const flp_prefill_run_args r = run_args(p, dv);
    assert_ok(flp_prefill_run(g_ctx, plan, &r));
    assert_ok(flp_context_synchronize(g_ctx));
}

/* Checks the outputs against ref_out [rows, hq, d] / ref_lse [rows, hq] (test_qo_check). */
static void check_outputs(const problem *p, const dev_problem *dv, const test_readback *rb,
                          const double *ref_out, const double *ref_lse, const char *what) {
    const test_qo_requests req = {p->name, p->batch, p->qo_indptr, p->kv_len, p->lse, p->kv_dtype};
    test_qo_check(&dv->qo, rb, &req, ref_out, ref_lse, what);
}

static void check_against_reference(const problem *p, const dev_problem *dv, const char *what) {
    double *ref = test_xcalloc((size_t)p->rows * p->hq * p->d, sizeof(double));
    double *ref_lse = test_xcalloc((size_t)p->rows * p->hq, sizeof(double));
    problem_reference(p, ref, ref_lse);
    test_readback rb = test_qo_read(&dv->qo);
    check_outputs(p, dv, &rb, ref, ref_lse, what);
    test_readback_free(&rb);
    free(ref);
    free(ref_lse);
}

/* A split case must take the merge path (docs/design.md 5.6): a long item is cut into KV
 * chunks when the unsplit items fill less than half the grid, and the cases' long requests
 * (>= 1000 keys against a chunk of at most half of them, see test_case) are always longer than a
 * chunk. When the plan split nothing, its items are the unsplit ones. */
static void expect_split(const problem *p, const flp_plan *plan) {
    flp_plan_summary s;
    flp_plan_summarize(plan, &s);
    if (s.prefill_merge_items > 0 && s.prefill_partial_slots > s.prefill_merge_items)
        return; /* split: each merge item combines at least two chunks */
    if (2 * s.prefill_items >= s.prefill_ctas) {
        print_message("note: %s: %d items on a grid of %d workgroups: no split expected\n", p->name,
                      s.prefill_items, s.prefill_ctas);
        return;
    }
    fail_msg("%s: %d items on a grid of %d workgroups, yet the plan split nothing (%d merge items, "
             "%d partial slots)",
             p->name, s.prefill_items, s.prefill_ctas, s.prefill_merge_items,
             s.prefill_partial_slots);
}

/* Plans, runs and checks p on a fresh plan; split: the plan must split a request. */
static void solve_and_check(const problem *p, bool split, const char *what) {
    dev_problem dv;
    dev_create(p, p->rows, &dv);
    flp_plan *plan = create_plan_for(p);
    plan_problem(p, plan);
    if (split)
        expect_split(p, plan);
    run_problem(p, &dv, plan);
    check_against_reference(p, &dv, what);
    flp_plan_destroy(plan);
    dev_free(&dv);
}

/* ---- 1. the case table ----------------------------------------------------------------------- */

static void test_case(void **state) {
    const prefill_case *c = *state;
    test_rng rng;
    test_rng_init(&rng, test_name_seed(c->name));
    problem p;
    problem_for_case(&p, c, &rng);
    if (c->split) /* the split rule needs one long item next to a short batch (header comment) */
        assert_true(p.batch <= 2 && p.kv_len[0] >= 1000);
    solve_and_check(&p, c->split, "run");
    problem_free(&p);
}

/* ---- 2. golden cases ------------------------------------------------------------------------- */

static void test_golden(void **state) {
    const char *name = *state;
    golden_case g;
    if (!golden_load(name, &g))
        fail_msg("cannot load golden case %s from %s", name, golden_dir());
    problem p;
    memset(&p, 0, sizeof p);
    snprintf(p.name, sizeof p.name, "golden %s", name);
    p.batch = g.batch;
    p.rows = g.nnz;
    p.hq = g.num_qo_heads;
    p.hkv = g.num_kv_heads;
    p.d = g.head_dim;
    p.q_dtype = p.kv_dtype = g.dtype;
    p.ragged = !g.paged;
    p.layout = g.kv_layout;
    p.page_size = g.paged ? g.page_size : 0;
    p.k_scale = p.v_scale = 1.0f;
    p.lse = true;
    flp_variant *v = &p.variant;
    v->head_dim = g.head_dim;
    v->q_dtype = v->kv_dtype = g.dtype;
    v->mask = g.custom_mask ? FLP_MASK_CUSTOM : g.causal ? FLP_MASK_CAUSAL : FLP_MASK_NONE;
    v->use_window = g.use_window;
    v->window_left = g.use_window ? g.window_left : 0;
    v->logits_soft_cap = (float)g.logits_soft_cap;
    v->sm_scale = (float)g.sm_scale;
    test_variant_set_golden_pos_encoding(v, &g, &p.alibi_slopes);
    const size_t nb = (size_t)g.batch;
    p.qo_len = test_copy_i32(g.qo_lens, nb);
    p.kv_len = test_copy_i32(g.kv_lens, nb);
    p.qo_indptr = test_copy_i32(g.qo_indptr, nb + 1);
    p.kv_indptr = test_copy_i32(g.kv_indptr, nb + 1);
    if (g.paged) {
        p.kv_indices = test_copy_i32(g.kv_indices, (size_t)g.num_kv_indices);
        p.kv_last_page_len = test_copy_i32(g.kv_last_page_len, nb);
    }
    if (g.custom_mask) {
        p.mask_indptr = test_copy_i32(g.mask_indptr, nb);
        p.mask = test_xcalloc(g.mask_bytes, 1);
        memcpy(p.mask, g.mask, g.mask_bytes);
        p.mask_bytes = (int32_t)g.mask_bytes;
    }
    p.units = g.paged ? g.num_pages : g.kv_indptr[g.batch];
    assert_int_equal((size_t)p.units * unit_elems(&p), g.kv_elems);
    p.q = test_copy_f32(g.q, (size_t)g.nnz * (size_t)p.hq * (size_t)p.d);
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

/* ---- 3. flp_single_prefill ------------------------------------------------------------------- */

static void test_single(void **state) {
    const prefill_case *c = *state;
    assert_true(c->ragged && c->batch == 1);
    test_rng rng;
    test_rng_init(&rng, test_name_seed(c->name));
    problem p;
    problem_from_case(&p, c, &rng);
    int32_t qo = 0, kv = 0;
    case_lengths(c, &rng, &qo, &kv);
    problem_set_batch(&p, &rng, 1, &qo, &kv, 0, false); /* k/v exactly [kv_len, hkv, d] */
    if (p.mask && p.mask_indptr[0] > 0) { /* single prefill reads the bits from byte 0 */
        memmove(p.mask, p.mask + p.mask_indptr[0], (size_t)(p.mask_bytes - p.mask_indptr[0]));
        p.mask_bytes -= p.mask_indptr[0];
        p.mask_indptr[0] = 0;
    }
    dev_problem dv;
    dev_create(&p, p.rows, &dv);
    test_qo_poison(&dv.qo);
    flp_single_prefill_args a;
    memset(&a, 0, sizeof a);
    a.q = dv.qo.q;
    a.k = dv.k;
    a.v = dv.v;
    a.out = dv.qo.out;
    a.lse = p.lse ? &dv.qo.lse : NULL;
    a.custom_mask = p.mask ? &dv.mask : NULL;
    a.alibi_slopes = p.alibi_slopes;
    a.variant = p.variant;
    assert_ok(flp_single_prefill(g_ctx, &a));
    check_against_reference(&p, &dv, "flp_single_prefill");
    dev_free(&dv);
    problem_free(&p);
}

/* ---- 4. flp_kv_append ------------------------------------------------------------------------ */

/* Expected cache bits of one new value x (a value of the source dtype, as float) or, when the
 * source already has the cache dtype, its bits. */
static uint16_t append_convert(flp_dtype src, flp_dtype cache, uint16_t src_bits, float x,
                               float inv_scale) {
    if (src == cache)
        return src_bits;
    switch (cache) {
    case FLP_DTYPE_F16:
        return flp_f32_to_f16(x);
    case FLP_DTYPE_BF16:
        return flp_f32_to_bf16(x);
    case FLP_DTYPE_E4M3: {
        const float y = x * inv_scale; /* the f32 product the kernels compute */
        return flp_f32_to_e4m3(y);
    }
    default: {
        const float y = x * inv_scale;
        return flp_f32_to_e5m2(y);
    }
    }
}

/* New rows for a KV append: [nnz, hkv, d] in a buffer (both K and V), dense or padded. */
typedef struct append_src {
    flp_buffer *buf;
    flp_tensor k, v;
    uint16_t *k_bits, *v_bits; /* [nnz * hkv * d] bits of each value (fp8: low byte) */
    float *k_val, *v_val;      /* the values as float */
} append_src;

/* Source values: ordinary ones, and every 7th large (saturates e4m3 after the scale) or every
 * 11th tiny (fp8 subnormals). */
static float append_value(test_rng *rng, size_t i) {
    float x = (float)test_rng_uniform(rng, -1.0, 1.0);
    if (i % 7 == 3)
        x *= 600.0f;
    else if (i % 11 == 5)
        x *= 1e-3f;
    return x == 0.0f ? 0.5f : x;
}

static void append_src_create(append_src *s, test_rng *rng, flp_dtype dt, int32_t nnz, int32_t hkv,
                              int32_t d, bool padded, bool specials) {
    memset(s, 0, sizeof *s);
    const size_t es = flp_dtype_size(dt), n = (size_t)nnz * hkv * d;
    const int64_t pad = padded ? 16 / (int64_t)es : 0;
    const int64_t head_stride = d + pad, row_stride = hkv * head_stride + pad;
    const size_t half = ((size_t)nnz * (size_t)row_stride * es + 64 + 255) / 256 * 256;
    uint8_t *img = test_xcalloc(2 * half, 1);
    memset(img, POISON8, 2 * half);
    s->k_bits = test_xcalloc(n, sizeof(uint16_t));
    s->v_bits = test_xcalloc(n, sizeof(uint16_t));
    s->k_val = test_xcalloc(n, sizeof(float));
    s->v_val = test_xcalloc(n, sizeof(float));
    for (int which = 0; which < 2; ++which) {
        uint16_t *bits = which ? s->v_bits : s->k_bits;
        float *val = which ? s->v_val : s->k_val;
        for (size_t i = 0; i < n; ++i) {
            if (test_is_fp8(dt)) {
                uint8_t byte;
                do
                    byte = (uint8_t)test_rng_next(rng);
                while ((byte & 0x7F) == 0 ||
                       (dt == FLP_DTYPE_E4M3 ? (byte & 0x7F) == 0x7F : (byte & 0x7C) == 0x7C));
                bits[i] = byte;
                val[i] = dt == FLP_DTYPE_E4M3 ? flp_e4m3_to_f32(byte) : flp_e5m2_to_f32(byte);
            } else {
                const float x = append_value(rng, specials ? i : 0);
                bits[i] = dt == FLP_DTYPE_BF16 ? flp_f32_to_bf16(x) : flp_f32_to_f16(x);
                val[i] = (float)test_half_to_double(dt, bits[i]);
            }
            const size_t r = i / ((size_t)hkv * d), h = i / (size_t)d % (size_t)hkv,
                         e = i % (size_t)d;
            const size_t at =
                which * half + (r * (size_t)row_stride + h * (size_t)head_stride + e) * es;
            if (es == 1)
                img[at] = (uint8_t)bits[i];
            else
                memcpy(img + at, &bits[i], 2);
        }
    }
    s->buf = test_buffer_new(g_ctx, 2 * half);
    assert_ok(flp_buffer_write(g_ctx, s->buf, 0, img, 2 * half));
    free(img);
    flp_tensor t;
    memset(&t, 0, sizeof t);
    t.buf = s->buf;
    t.dtype = dt;
    t.ndim = 3;
    t.shape[0] = nnz;
    t.shape[1] = hkv;
    t.shape[2] = d;
    t.stride[0] = row_stride;
    t.stride[1] = head_stride;
    t.stride[2] = 1;
    s->k = t;
    t.offset = half;
    s->v = t;
}

static void append_src_free(append_src *s) {
    flp_buffer_destroy(s->buf);
    free(s->k_bits);
    free(s->v_bits);
    free(s->k_val);
    free(s->v_val);
    memset(s, 0, sizeof *s);
}

/* The slot (page, a, b indices) of (request, head, position) in a paged pool, or false. */
typedef struct page_table {
    int32_t batch;
    int32_t *indptr;  /* [batch + 1] */
    int32_t *indices; /* [num_indices] */
    int32_t num_indices, num_pages, page_size;
} page_table;

static bool locate(const page_table *t, int32_t b, int32_t pos, int32_t *page) {
    if (b < 0 || b >= t->batch || pos < 0)
        return false;
    const int64_t entry = (int64_t)t->indptr[b] + pos / t->page_size;
    if (entry >= t->indptr[b + 1] || entry >= t->num_indices)
        return false;
    *page = t->indices[entry];
    return *page >= 0 && *page < t->num_pages;
}

static void test_append_case(void **state) {
    const append_case *c = *state;
    test_rng rng;
    test_rng_init(&rng, test_name_seed(c->name));
    const int32_t hkv = c->num_kv_heads, d = c->head_dim, ps = c->page_size;
    const size_t es = flp_dtype_size(c->cache_dtype);

    /* Requests 0-2 own random pages; request 3 owns page id num_pages (out of range), request 4
     * page id -3; two valid entries follow the last request's, so a row past its pages would
     * find a real page if the bound were not checked. */
    const int32_t own[3] = {ps == 1 ? 6 : 2, ps == 1 ? 3 : 1, ps == 1 ? 8 : 3};
    const int32_t valid_pages = own[0] + own[1] + own[2];
    const int32_t num_pages = valid_pages + 2 + 3;
    page_table pt = {.batch = 5, .num_pages = num_pages, .page_size = ps};
    pt.indptr = test_xcalloc(6, sizeof(int32_t));
    pt.num_indices = valid_pages + 2 + 2;
    pt.indices = test_xcalloc((size_t)pt.num_indices, sizeof(int32_t));
    int32_t *perm = test_permutation(&rng, num_pages, true);
    for (int32_t b = 0; b < 3; ++b)
        pt.indptr[b + 1] = pt.indptr[b] + own[b];
    pt.indptr[4] = pt.indptr[3] + 1;
    pt.indptr[5] = pt.indptr[4] + 1;
    for (int32_t i = 0; i < valid_pages; ++i)
        pt.indices[i] = perm[i];
    pt.indices[valid_pages] = num_pages;
    pt.indices[valid_pages + 1] = -3;
    pt.indices[valid_pages + 2] = perm[valid_pages];
    pt.indices[valid_pages + 3] = perm[valid_pages + 1];
    free(perm);

    /* Rows: about half the slots of requests 0-2 (distinct), and rows that must be skipped. */
    const int32_t max_rows = valid_pages * ps + 16;
    int32_t *bi = test_xcalloc((size_t)max_rows, sizeof(int32_t));
    int32_t *pos = test_xcalloc((size_t)max_rows, sizeof(int32_t));
    int32_t nnz = 0;
    for (int32_t b = 0; b < 3; ++b)
        for (int32_t t = 0; t < own[b] * ps; ++t)
            if (test_rng_int(&rng, 0, 1) || t == 0) {
                bi[nnz] = b;
                pos[nnz++] = t;
            }
    const int32_t skipped[][2] = {
        {-1, 0}, {5, 0}, {0, -1}, {2, -ps},    {0, own[0] * ps}, {1, own[1] * ps}, {2, 1 << 30},
        {3, 0},  {4, 0}, {4, ps}, {3, ps - 1}, {INT32_MIN, 0},   {1, INT32_MIN},
    };
    for (size_t i = 0; i < sizeof skipped / sizeof skipped[0]; ++i) {
        bi[nnz] = skipped[i][0];
        pos[nnz++] = skipped[i][1];
    }
    assert_true(nnz <= max_rows);
    for (int32_t i = nnz - 1; i > 0; --i) { /* rows in random order */
        const int32_t j = test_rng_int(&rng, 0, i);
        int32_t t = bi[i];
        bi[i] = bi[j];
        bi[j] = t;
        t = pos[i];
        pos[i] = pos[j];
        pos[j] = t;
    }

    append_src src;
    append_src_create(&src, &rng, c->src_dtype, nnz, hkv, d, c->padded_src, true);
    const kv_geometry g = kv_geometry_make(c->cache_dtype, false, c->layout, ps, hkv, d, num_pages,
                                           c->padded_cache, c->interleaved_cache);
    /* Caches hold random bytes everywhere (padding included): the whole buffers are compared. */
    const size_t bytes = g.buffer_bytes;
    uint8_t *want_k = test_xcalloc(bytes, 1),
            *want_v = g.interleaved ? want_k : test_xcalloc(bytes, 1);
    for (size_t i = 0; i < bytes; ++i)
        want_k[i] = (uint8_t)test_rng_next(&rng);
    for (size_t i = 0; i < bytes && !g.interleaved; ++i)
        want_v[i] = (uint8_t)test_rng_next(&rng);
    flp_buffer *k_cache = test_buffer_new(g_ctx, bytes),
               *v_cache = g.interleaved ? NULL : test_buffer_new(g_ctx, bytes);
    assert_ok(flp_buffer_write(g_ctx, k_cache, 0, want_k, bytes));
    if (v_cache)
        assert_ok(flp_buffer_write(g_ctx, v_cache, 0, want_v, bytes));

    flp_buffer *b_bi, *b_pos, *b_indptr, *b_indices;
    flp_kv_append_args a;
    memset(&a, 0, sizeof a);
    a.k = src.k;
    a.v = src.v;
    a.batch_indices = i32_tensor(&b_bi, bi, nnz);
    a.positions = i32_tensor(&b_pos, pos, nnz);
    a.kv_indptr = i32_tensor(&b_indptr, pt.indptr, pt.batch + 1);
    a.kv_indices = i32_tensor(&b_indices, pt.indices, pt.num_indices);
    a.k_cache = kv_tensor(&g, k_cache, 0);
    a.v_cache = g.interleaved ? kv_tensor(&g, k_cache, g.v_offset) : kv_tensor(&g, v_cache, 0);
    a.kv_layout = c->layout;
    a.k_scale = c->k_scale;
    a.v_scale = c->v_scale;

    /* nnz = 0 writes nothing */
    flp_kv_append_args none = a;
    none.k.shape[0] = none.v.shape[0] = 0;
    none.batch_indices.shape[0] = none.positions.shape[0] = 0;
    assert_ok(flp_kv_append(g_ctx, &none));

    assert_ok(flp_kv_append(g_ctx, &a));
    assert_ok(flp_context_synchronize(g_ctx));

    const bool fp8 = test_is_fp8(c->cache_dtype);
    const float k_inv = fp8 && c->k_scale > 0.0f ? 1.0f / c->k_scale : 1.0f;
    const float v_inv = fp8 && c->v_scale > 0.0f ? 1.0f / c->v_scale : 1.0f;
    int32_t written = 0;
    for (int32_t r = 0; r < nnz; ++r) {
        int32_t page;
        if (!locate(&pt, bi[r], pos[r], &page))
            continue;
        ++written;
        const int32_t slot = pos[r] % ps;
        for (int32_t h = 0; h < hkv; ++h) {
            const int64_t i = c->layout == FLP_KV_LAYOUT_NHD ? slot : h;
            const int64_t j = c->layout == FLP_KV_LAYOUT_NHD ? h : slot;
            const size_t at = kv_vector_at(&g, page, i, j) * es;
            for (int32_t e = 0; e < d; ++e) {
                const size_t s = ((size_t)r * hkv + h) * d + e;
                const uint16_t kb = append_convert(c->src_dtype, c->cache_dtype, src.k_bits[s],
                                                   src.k_val[s], k_inv);
                const uint16_t vb = append_convert(c->src_dtype, c->cache_dtype, src.v_bits[s],
                                                   src.v_val[s], v_inv);
                memcpy(want_k + at + (size_t)e * es, &kb, es); /* little-endian */
                memcpy(want_v + at + g.v_offset + (size_t)e * es, &vb, es);
            }
        }
    }
    assert_true(written > 0 && written < nnz);

    for (int which = 0; which < (g.interleaved ? 1 : 2); ++which) {
        uint8_t *got = test_buffer_read_all(g_ctx, which ? v_cache : k_cache, bytes);
        const uint8_t *want = which ? want_v : want_k;
        for (size_t i = 0; i < bytes; ++i)
            if (got[i] != want[i]) {
                const size_t elem = i / es;
                const int64_t unit = (int64_t)elem / g.s_unit;
                fail_msg("%s: %s cache byte %zu (page %lld, element %lld of the page) is 0x%02x, "
                         "want 0x%02x (%s)",
                         c->name, which ? "v" : (g.interleaved ? "k/v" : "k"), i, (long long)unit,
                         (long long)((int64_t)elem - unit * g.s_unit), got[i], want[i],
                         memcmp(got, want, bytes) ? "written wrongly or where it must not be"
                                                  : "?");
            }
        free(got);
    }
    flp_buffer_destroy(k_cache);
    flp_buffer_destroy(v_cache);
    flp_buffer_destroy(b_bi);
    flp_buffer_destroy(b_pos);
    flp_buffer_destroy(b_indptr);
    flp_buffer_destroy(b_indices);
    if (want_v != want_k)
        free(want_v);
    free(want_k);
    append_src_free(&src);
    free(bi);
    free(pos);
    free(pt.indptr);
    free(pt.indices);
}

/* ---- 5. append, then attend ------------------------------------------------------------------ */

/* Each request's last qo_len tokens are written by flp_kv_append (new rows of q's dtype) into a
 * pool that holds older random keys; then the prefill over the pool must see them. */
static void test_append_then_attend(void **state) {
    const prefill_case *c = *state;
    assert_false(c->ragged);
    test_rng rng;
    test_rng_init(&rng, test_name_seed(c->name));
    problem p;
    problem_for_case(&p, c, &rng);
    dev_problem dv;
    dev_create(&p, p.rows, &dv); /* the pool before the append */

    int32_t *bi = test_xcalloc((size_t)p.rows, sizeof(int32_t));
    int32_t *pos = test_xcalloc((size_t)p.rows, sizeof(int32_t));
    for (int32_t b = 0; b < p.batch; ++b)
        for (int32_t i = 0; i < p.qo_len[b]; ++i) {
            bi[p.qo_indptr[b] + i] = b;
            pos[p.qo_indptr[b] + i] = p.kv_len[b] - p.qo_len[b] + i;
        }
    append_src src;
    append_src_create(&src, &rng, p.q_dtype, p.rows, p.hkv, p.d, false, false);
    flp_buffer *b_bi, *b_pos, *b_indptr, *b_indices;
    flp_kv_append_args a;
    memset(&a, 0, sizeof a);
    a.k = src.k;
    a.v = src.v;
    a.batch_indices = i32_tensor(&b_bi, bi, p.rows);
    a.positions = i32_tensor(&b_pos, pos, p.rows);
    a.kv_indptr = i32_tensor(&b_indptr, p.kv_indptr, p.batch + 1);
    a.kv_indices = i32_tensor(&b_indices, p.kv_indices, p.kv_indptr[p.batch]);
    a.k_cache = dv.k;
    a.v_cache = dv.v;
    a.kv_layout = p.layout;
    a.k_scale = p.variant.k_scale;
    a.v_scale = p.variant.v_scale;

    /* The host pool as the append leaves it. */
    const float k_inv = 1.0f / p.k_scale, v_inv = 1.0f / p.v_scale;
    const size_t row = (size_t)p.hkv * p.d;
    for (int32_t r = 0; r < p.rows; ++r) {
        const int32_t b = bi[r];
        const int32_t page = p.kv_indices[p.kv_indptr[b] + pos[r] / p.page_size];
        const int32_t slot = pos[r] % p.page_size;
        for (int32_t h = 0; h < p.hkv; ++h)
            for (int32_t e = 0; e < p.d; ++e) {
                const size_t at = p.layout == FLP_KV_LAYOUT_NHD
                                      ? (((size_t)page * p.page_size + slot) * p.hkv + h) * p.d + e
                                      : (((size_t)page * p.hkv + h) * p.page_size + slot) * p.d + e;
                const size_t s = (size_t)r * row + (size_t)h * p.d + e;
                p.k_raw[at] = test_round_to_dtype(p.kv_dtype, src.k_val[s] * k_inv);
                p.v_raw[at] = test_round_to_dtype(p.kv_dtype, src.v_val[s] * v_inv);
            }
    }
    flp_plan *plan = create_plan_for(&p);
    plan_problem(&p, plan);
    assert_ok(flp_kv_append(g_ctx, &a));
    run_problem(&p, &dv, plan);
    check_against_reference(&p, &dv, "attend after append");

    flp_plan_destroy(plan);
    flp_buffer_destroy(b_bi);
    flp_buffer_destroy(b_pos);
    flp_buffer_destroy(b_indptr);
    flp_buffer_destroy(b_indices);
    append_src_free(&src);
    free(bi);
    free(pos);
    dev_free(&dv);
    problem_free(&p);
}

/* ---- 6. determinism, re-planning, capacity --------------------------------------------------- */

static void test_determinism(void **state) {
    (void)state;
    /* a long request (split, merged) among short and empty ones */
    const prefill_case c = determinism_case;
    test_rng rng;
    test_rng_init(&rng, test_name_seed(c.name));
    problem p;
    problem_for_case(&p, &c, &rng);
    dev_problem dv;
    dev_create(&p, p.rows, &dv);
    flp_plan *plan = create_plan_for(&p);
    plan_problem(&p, plan);
    expect_split(&p, plan); /* the merge's order is part of what must not change */
    run_problem(&p, &dv, plan);
    check_against_reference(&p, &dv, "first run");
    test_readback first = test_qo_read(&dv.qo);
    for (int pass = 0; pass < 2; ++pass) {
        if (pass == 1)
            plan_problem(&p, plan); /* the same batch re-planned: the same partition */
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

static void test_replan_within_capacity(void **state) {
    (void)state;
    const prefill_case c = replan_case;
    test_rng rng;
    test_rng_init(&rng, test_name_seed(c.name));
    problem p;
    problem_from_case(&p, &c, &rng);
    const int32_t max_batch = 8, max_rows = 64, max_pages = 96;
    const int32_t qo_a[] = {5, 30, 2}, kv_a[] = {5, 200, 37};
    problem_set_batch(&p, &rng, 3, qo_a, kv_a, 80, false); /* a pool of 96 pages */

    flp_plan_desc pd = test_plan_desc_make(max_batch, max_pages, p.hq, p.hkv, p.d);
    pd.max_qo_rows = max_rows;
    size_t ws_size = 0;
    flp_buffer *ws = test_workspace_create(g_ctx, &pd, &ws_size);
    flp_plan *plan = test_plan_create(g_ctx, &pd);
    dev_problem dv;
    dev_create(&p, max_rows, &dv);

    plan_problem(&p, plan);
    run_problem(&p, &dv, plan);
    check_against_reference(&p, &dv, "batch A");

    /* B: more requests, one long (split), empty ones, a new page table over the same pool */
    const int32_t qo_b[] = {1, 0, 4, 20, 0, 3}, kv_b[] = {1, 9, 1300, 64, 0, 3};
    problem_set_batch(&p, &rng, 6, qo_b, kv_b, 0, false);
    assert_true(p.kv_indptr[p.batch] <= max_pages);
    dev_write_batch(&p, &dv);
    plan_problem(&p, plan);
    expect_split(&p, plan);
    run_problem(&p, &dv, plan);
    check_against_reference(&p, &dv, "batch B (re-planned)");

    /* C: full batch and query-row capacity */
    const int32_t qo_c[] = {8, 8, 8, 8, 8, 8, 8, 8}, kv_c[] = {8, 20, 9, 100, 33, 8, 60, 16};
    problem_set_batch(&p, &rng, max_batch, qo_c, kv_c, 0, false);
    assert_int_equal(p.rows, max_rows);
    dev_write_batch(&p, &dv);
    plan_problem(&p, plan);
    run_problem(&p, &dv, plan);
    check_against_reference(&p, &dv, "batch C (re-planned, at capacity)");
    test_workspace_check(g_ctx, ws, ws_size, "after three plans and runs");

    flp_plan_destroy(plan);
    flp_buffer_destroy(ws);
    dev_free(&dv);
    problem_free(&p);
}

static void test_capacity(void **state) {
    (void)state;
    const prefill_case c = capacity_case;
    test_rng rng;
    test_rng_init(&rng, test_name_seed(c.name));
    problem p;
    problem_from_case(&p, &c, &rng);
    const int32_t qo[] = {8, 7, 5, 1}, kv[] = {40, 50, 70, 16}; /* 21 rows, 3 + 4 + 5 + 1 pages */
    problem_set_batch(&p, &rng, 4, qo, kv, 4, false);
    flp_plan *plan = create_plan(&p, 3, 20, 13);

    flp_prefill_plan_args a = plan_args(&p);
    expect_status(
        flp_prefill_plan(g_ctx, plan, &a), FLP_ERROR_CAPACITY, "batch 4 > max 3",
        MENTIONS("flp_prefill_plan: batch_size = 4 exceeds the plan's max_batch_size = 3"));
    a.batch_size = 3;
    const int32_t rows21[] = {0, 8, 15, 21}; /* 21 rows > max_qo_rows 20 */
    const int32_t qo_ok[] = {0, 8, 15, 20};
    a.qo_indptr = rows21;
    expect_status(flp_prefill_plan(g_ctx, plan, &a), FLP_ERROR_CAPACITY, "21 rows > max 20",
                  MENTIONS("qo_indptr[3] = 21 exceeds the plan's max_qo_rows = 20"));
    a.qo_indptr = qo_ok;
    const int32_t pages14[] = {0, 4, 8, 14}; /* 14 pages > max_pages 13 */
    const int32_t ids14[14] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13};
    const int32_t last14[] = {16, 16, 16};
    a.kv_indptr = pages14;
    a.kv_indices = ids14;
    a.kv_last_page_len = last14;
    expect_status(flp_prefill_plan(g_ctx, plan, &a), FLP_ERROR_CAPACITY, "14 pages > max 13",
                  MENTIONS("kv_indptr[3] = 14 exceeds the plan's max_pages = 13"));
    flp_plan *decode_only = create_plan(&p, 8, 0, 64);
    a = plan_args(&p);
    expect_status(flp_prefill_plan(g_ctx, decode_only, &a), FLP_ERROR_CAPACITY,
                  "prefill on a plan with max_qo_rows 0",
                  MENTIONS("the plan was created with max_qo_rows = 0 (decode only)"));
    flp_plan_destroy(decode_only);

    /* the plan still takes a batch at its capacities */
    test_backend_expect_errors(false);
    const int32_t qo2[] = {8, 7, 5}, kv2[] = {40, 50, 90}; /* 20 rows, 3 + 4 + 6 = 13 pages */
    problem_set_batch(&p, &rng, 3, qo2, kv2, 0, false);
    assert_int_equal(p.rows, 20);
    assert_int_equal(p.kv_indptr[3], 13);
    dev_problem dv;
    dev_create(&p, p.rows, &dv);
    plan_problem(&p, plan);
    run_problem(&p, &dv, plan);
    check_against_reference(&p, &dv, "at capacity after capacity errors");
    flp_plan_destroy(plan);
    dev_free(&dv);
    problem_free(&p);
}

/* ---- 7. bad input ---------------------------------------------------------------------------- */

/* A small valid problem with a plan, poisoned outputs and arguments to break. */
typedef struct bad_env {
    problem p;
    dev_problem dv;
    flp_plan *plan;
    flp_prefill_plan_args pa;
    flp_prefill_run_args ra;
} bad_env;

static void bad_env_init(bad_env *e, flp_mask_mode mask, bool ragged) {
    prefill_case c = bad_input_case;
    c.mask = mask;
    c.ragged = ragged;
    test_rng rng;
    test_rng_init(&rng, test_name_seed(c.name));
    test_backend_expect_errors(true);
    problem_for_case(&e->p, &c, &rng);
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

/* The plan and context still work after the failures. */
static void bad_env_finish(bad_env *e) {
    test_backend_expect_errors(false);
    assert_ok(flp_prefill_plan(g_ctx, e->plan, &e->pa));
    run_problem(&e->p, &e->dv, e->plan);
    check_against_reference(&e->p, &e->dv, "valid run after bad input");
    flp_plan_destroy(e->plan);
    dev_free(&e->dv);
    problem_free(&e->p);
}

static void test_bad_lengths(void **state) {
    (void)state;
    for (int ragged = 0; ragged < 2; ++ragged) {
        bad_env e;
        bad_env_init(&e, FLP_MASK_CAUSAL, ragged);
        flp_prefill_plan_args a = e.pa;
        const int32_t qo_long[] = {0, 3, 3 + 10}; /* request 1: 10 queries over 9 keys */
        a.qo_indptr = qo_long;
        bad_expect(&e, flp_prefill_plan(g_ctx, e.plan, &a), FLP_ERROR_INVALID_ARGUMENT,
                   "qo_len 10 > kv_len 9",
                   MENTIONS("flp_prefill_plan: request 1 has qo_len = 10 > kv_len = 9"));
        const int32_t qo_first[] = {1, 3, 8};
        a.qo_indptr = qo_first;
        bad_expect(&e, flp_prefill_plan(g_ctx, e.plan, &a), FLP_ERROR_INVALID_ARGUMENT,
                   "qo_indptr[0] = 1", MENTIONS("qo_indptr[0] = 1 must be 0"));
        const int32_t qo_down[] = {0, 5, 3};
        a.qo_indptr = qo_down;
        bad_expect(&e, flp_prefill_plan(g_ctx, e.plan, &a), FLP_ERROR_INVALID_ARGUMENT,
                   "qo_indptr decreasing", MENTIONS("qo_indptr decreases at request 1 (5 then 3)"));
        a = e.pa;
        a.qo_indptr = NULL;
        bad_expect(&e, flp_prefill_plan(g_ctx, e.plan, &a), FLP_ERROR_INVALID_ARGUMENT,
                   "qo_indptr NULL", MENTIONS("flp_prefill_plan: qo_indptr is NULL"));
        int32_t kv[3];
        memcpy(kv, e.p.kv_indptr, sizeof kv);
        a = e.pa;
        a.kv_indptr = kv;
        kv[1] = kv[2] + 1;
        bad_expect(
            &e, flp_prefill_plan(g_ctx, e.plan, &a), FLP_ERROR_INVALID_ARGUMENT,
            "kv_indptr decreasing",
            MENTIONS(test_str("kv_indptr decreases at request 1 (%d then %d)", kv[1], kv[2])));
        memcpy(kv, e.p.kv_indptr, sizeof kv);
        kv[0] = 1;
        bad_expect(&e, flp_prefill_plan(g_ctx, e.plan, &a), FLP_ERROR_INVALID_ARGUMENT,
                   "kv_indptr[0] = 1", MENTIONS("kv_indptr[0] = 1 must be 0"));
        a = e.pa;
        a.batch_size = 0;
        bad_expect(&e, flp_prefill_plan(g_ctx, e.plan, &a), FLP_ERROR_INVALID_ARGUMENT,
                   "batch_size 0", MENTIONS("flp_prefill_plan: batch_size = 0 must be > 0"));
        a = e.pa;
        a.kv_storage = (flp_kv_storage)5;
        bad_expect(&e, flp_prefill_plan(g_ctx, e.plan, &a), FLP_ERROR_INVALID_ARGUMENT,
                   "kv_storage 5", MENTIONS("kv_storage = 5 is not FLP_KV_PAGED or FLP_KV_RAGGED"));
        bad_env_finish(&e);
    }
}

static void test_bad_page_table(void **state) {
    (void)state;
    bad_env e;
    bad_env_init(&e, FLP_MASK_CAUSAL, false);
    flp_prefill_plan_args a = e.pa;
    int32_t last[2] = {e.p.kv_last_page_len[0], e.p.kv_last_page_len[1]};
    a.kv_last_page_len = last;
    last[1] = 0;
    bad_expect(&e, flp_prefill_plan(g_ctx, e.plan, &a), FLP_ERROR_INVALID_ARGUMENT,
               "kv_last_page_len 0",
               MENTIONS("kv_last_page_len[1] = 0 must be in 1..page_size (16)"));
    last[1] = e.p.page_size + 1;
    bad_expect(&e, flp_prefill_plan(g_ctx, e.plan, &a), FLP_ERROR_INVALID_ARGUMENT,
               "kv_last_page_len 17 > page_size 16",
               MENTIONS("kv_last_page_len[1] = 17 must be in 1..page_size (16)"));
    a = e.pa;
    a.kv_last_page_len = NULL;
    bad_expect(&e, flp_prefill_plan(g_ctx, e.plan, &a), FLP_ERROR_INVALID_ARGUMENT,
               "kv_last_page_len NULL", MENTIONS("flp_prefill_plan: kv_last_page_len is NULL"));
    a = e.pa;
    a.page_size = 0;
    bad_expect(&e, flp_prefill_plan(g_ctx, e.plan, &a), FLP_ERROR_INVALID_ARGUMENT, "page_size 0",
               MENTIONS("flp_prefill_plan: page_size = 0 must be in 1..128"));
    const int32_t n = e.p.kv_indptr[e.p.batch];
    int32_t *ids = test_xcalloc((size_t)n, sizeof(int32_t));
    memcpy(ids, e.p.kv_indices, sizeof(int32_t) * (size_t)n);
    a = e.pa;
    a.kv_indices = ids;
    ids[n - 1] = -2;
    bad_expect(&e, flp_prefill_plan(g_ctx, e.plan, &a), FLP_ERROR_INVALID_ARGUMENT,
               "negative page id",
               MENTIONS(test_str("kv_indices[%d] = -2 is a negative page id", n - 1)));
    /* page id == pages of the caches: the plan cannot know, the run refuses */
    ids[n - 1] = (int32_t)e.ra.k.shape[0];
    assert_ok(flp_prefill_plan(g_ctx, e.plan, &a));
    bad_expect(&e, flp_prefill_run(g_ctx, e.plan, &e.ra), FLP_ERROR_INVALID_ARGUMENT,
               "page id == pages of k",
               MENTIONS(test_str("kv_indices reference page %d but k/v have %d pages",
                                 (int)e.ra.k.shape[0], (int)e.ra.k.shape[0])));
    free(ids);
    bad_env_finish(&e);
}

/* The run's kv_indices against the plan (as for decode): required when a paged plan got no page
 * ids, refused when the plan holds them or the KV is ragged, and checked for its length. */
static void test_bad_run_page_ids(void **state) {
    (void)state;
    bad_env e;
    bad_env_init(&e, FLP_MASK_CAUSAL, false);
    const int32_t n = e.p.kv_indptr[e.p.batch];
    flp_buffer *idx = NULL;
    flp_tensor ids = i32_tensor(&idx, e.p.kv_indices, n);
    flp_prefill_run_args r = e.ra;
    r.kv_indices = &ids;
    bad_expect(&e, flp_prefill_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
               "kv_indices with a plan that holds them",
               MENTIONS("flp_prefill_run: kv_indices is given but the plan holds the page ids"));
    flp_prefill_plan_args a = e.pa;
    a.kv_indices = NULL;
    assert_ok(flp_prefill_plan(g_ctx, e.plan, &a));
    bad_expect(&e, flp_prefill_run(g_ctx, e.plan, &e.ra), FLP_ERROR_INVALID_ARGUMENT,
               "no kv_indices with a plan that has none",
               MENTIONS(test_str("kv_indices is NULL but the plan was given no page ids (%d pages "
                                 "to look up)",
                                 n)));
    flp_tensor t = ids;
    t.shape[0] = n - 1;
    r.kv_indices = &t;
    bad_expect(
        &e, flp_prefill_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT, "short kv_indices",
        MENTIONS(test_str("kv_indices has %d entries, the plan's kv_indptr needs %d", n - 1, n)));
    r.kv_indices = &ids;
    assert_ok(flp_prefill_run(g_ctx, e.plan, &r));
    assert_ok(flp_context_synchronize(g_ctx));
    check_against_reference(&e.p, &e.dv, "run-time page ids");
    test_qo_poison(&e.dv.qo);
    flp_buffer_destroy(idx);
    bad_env_finish(&e);

    bad_env_init(&e, FLP_MASK_CAUSAL, true);
    int32_t one = 0;
    flp_tensor stray = i32_tensor(&idx, &one, 1);
    r = e.ra;
    r.kv_indices = &stray;
    bad_expect(&e, flp_prefill_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
               "kv_indices with ragged KV",
               MENTIONS("flp_prefill_run: kv_indices is given but the plan's KV is ragged"));
    flp_buffer_destroy(idx);
    bad_env_finish(&e);
}

static void test_bad_mask(void **state) {
    (void)state;
    bad_env e;
    bad_env_init(&e, FLP_MASK_CUSTOM, false);
    flp_prefill_plan_args a = e.pa;
    a.mask_indptr = NULL;
    bad_expect(&e, flp_prefill_plan(g_ctx, e.plan, &a), FLP_ERROR_INVALID_ARGUMENT,
               "custom mask without mask_indptr",
               MENTIONS("variant.mask is FLP_MASK_CUSTOM but mask_indptr is NULL"));
    a = e.pa;
    a.variant.mask = FLP_MASK_CAUSAL;
    bad_expect(&e, flp_prefill_plan(g_ctx, e.plan, &a), FLP_ERROR_INVALID_ARGUMENT,
               "mask_indptr without FLP_MASK_CUSTOM",
               MENTIONS("mask_indptr is given but variant.mask is not FLP_MASK_CUSTOM"));
    int32_t offsets[2] = {e.p.mask_indptr[0], -1};
    a = e.pa;
    a.mask_indptr = offsets;
    bad_expect(&e, flp_prefill_plan(g_ctx, e.plan, &a), FLP_ERROR_INVALID_ARGUMENT,
               "mask_indptr -1", MENTIONS("mask_indptr[1] = -1 is negative"));
    /* at run: missing or short mask tensor */
    flp_prefill_run_args r = e.ra;
    r.custom_mask = NULL;
    bad_expect(
        &e, flp_prefill_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
        "custom mask plan, custom_mask NULL",
        MENTIONS(
            "flp_prefill_run: the plan's variant.mask is FLP_MASK_CUSTOM but custom_mask is NULL"));
    flp_tensor shortm = e.dv.mask;
    shortm.shape[0] = e.p.mask_bytes - 1;
    r.custom_mask = &shortm;
    bad_expect(
        &e, flp_prefill_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
        "custom_mask one byte short",
        MENTIONS(test_str("custom_mask has %d bytes, the plan's mask_indptr and lengths need %d",
                          e.p.mask_bytes - 1, e.p.mask_bytes)));
    shortm = e.dv.mask;
    shortm.dtype = FLP_DTYPE_I32;
    shortm.shape[0] = e.p.mask_bytes / 4;
    bad_expect(&e, flp_prefill_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
               "custom_mask of i32", MENTIONS("custom_mask.dtype is i32, expected u8"));
    /* a plan without the custom mask refuses a mask tensor */
    a = e.pa;
    a.variant.mask = FLP_MASK_CAUSAL;
    a.mask_indptr = NULL;
    assert_ok(flp_prefill_plan(g_ctx, e.plan, &a));
    bad_expect(&e, flp_prefill_run(g_ctx, e.plan, &e.ra), FLP_ERROR_INVALID_ARGUMENT,
               "custom_mask with a causal plan",
               MENTIONS("custom_mask is given but the plan's variant.mask is not FLP_MASK_CUSTOM"));
    bad_env_finish(&e);
}

static void test_bad_tensors(void **state) {
    (void)state;
    bad_env e;
    bad_env_init(&e, FLP_MASK_CAUSAL, false);
    flp_prefill_run_args r = e.ra;
    r.q.dtype = FLP_DTYPE_BF16;
    bad_expect(&e, flp_prefill_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
               "bf16 q with an f16 variant",
               MENTIONS("flp_prefill_run: q.dtype is bf16, expected f16"));
    r = e.ra;
    r.q.shape[0] = e.p.rows - 1;
    bad_expect(&e, flp_prefill_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
               "q one row short",
               MENTIONS("q.shape is [7, 4, 64], expected [8, 4, 64]", "at dimension 0"));
    r = e.ra;
    r.q.shape[1] = e.p.hq - 1;
    bad_expect(&e, flp_prefill_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
               "q with 3 heads, plan 4",
               MENTIONS("q.shape is [8, 3, 64], expected [8, 4, 64]", "at dimension 1"));
    r = e.ra;
    r.q.stride[2] = 2;
    r.q.shape[2] = e.p.d / 2;
    bad_expect(&e, flp_prefill_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
               "q head_dim 32 with stride 2",
               MENTIONS("q.shape is [8, 4, 32], expected [8, 4, 64]", "at dimension 2"));
    r = e.ra;
    r.out.dtype = FLP_DTYPE_BF16;
    bad_expect(&e, flp_prefill_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT, "bf16 out",
               MENTIONS("out.dtype is bf16, expected f16"));
    r = e.ra;
    r.out.shape[0] = e.p.rows - 1;
    bad_expect(&e, flp_prefill_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
               "out one row short",
               MENTIONS("out.shape is [7, 4, 64], expected [8, 4, 64]", "at dimension 0"));
    r = e.ra;
    r.out.offset = e.dv.qo.out_bytes - 32;
    bad_expect(
        &e, flp_prefill_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT, "out past its buffer",
        MENTIONS(test_str("out spans up to byte %zu past offset, beyond its buffer of %zu bytes",
                          (size_t)e.p.rows * e.p.hq * e.p.d * 2, e.dv.qo.out_bytes)));
    r = e.ra;
    r.k.shape[2] = r.v.shape[2] = e.p.hkv - 1;
    bad_expect(&e, flp_prefill_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
               "k/v with 1 KV head, plan 2",
               MENTIONS(test_str("k.shape is [%d, 16, 1, 64], expected [-1, 16, 2, 64]",
                                 (int)e.ra.k.shape[0]),
                        "at dimension 2"));
    r = e.ra;
    r.k.shape[1] = r.v.shape[1] = 8;
    bad_expect(&e, flp_prefill_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
               "k/v page size 8, plan 16",
               MENTIONS(test_str("k.shape is [%d, 8, 2, 64], expected [-1, 16, 2, 64]",
                                 (int)e.ra.k.shape[0]),
                        "at dimension 1"));
    r = e.ra;
    r.k.shape[3] = r.v.shape[3] = 32;
    bad_expect(&e, flp_prefill_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
               "k/v head_dim 32, plan 64",
               MENTIONS(test_str("k.shape is [%d, 16, 2, 32], expected [-1, 16, 2, 64]",
                                 (int)e.ra.k.shape[0]),
                        "at dimension 3"));
    r = e.ra;
    r.v.shape[2] = e.p.hkv - 1;
    bad_expect(&e, flp_prefill_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
               "v shape differs from k",
               MENTIONS(test_str("v.shape is [%d, 16, 1, 64], expected [%d, 16, 2, 64]",
                                 (int)e.ra.k.shape[0], (int)e.ra.k.shape[0]),
                        "at dimension 2"));
    r = e.ra;
    r.k.dtype = r.v.dtype = FLP_DTYPE_BF16;
    bad_expect(&e, flp_prefill_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
               "bf16 k/v with an f16 variant", MENTIONS("k.dtype is bf16, expected f16"));
    r = e.ra;
    r.k.ndim = 3;
    bad_expect(&e, flp_prefill_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
               "3-D k for a paged plan", MENTIONS("flp_prefill_run: k.ndim is 3, expected 4"));
    flp_tensor lse = e.dv.qo.lse;
    r = e.ra;
    r.lse = &lse;
    lse.shape[1] = e.p.hq + 1;
    bad_expect(&e, flp_prefill_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
               "lse with 5 heads",
               MENTIONS("lse.shape is [8, 5], expected [8, 4]", "at dimension 1"));
    lse = e.dv.qo.lse;
    lse.shape[0] = e.p.rows - 1;
    bad_expect(&e, flp_prefill_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
               "lse one row short",
               MENTIONS("lse.shape is [7, 4], expected [8, 4]", "at dimension 0"));
    lse = e.dv.qo.lse;
    lse.dtype = FLP_DTYPE_F16;
    bad_expect(&e, flp_prefill_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT, "f16 lse",
               MENTIONS("lse.dtype is f16, expected f32"));
    bad_env_finish(&e);

    /* ragged: too few k/v rows for the plan's kv_indptr */
    bad_env_init(&e, FLP_MASK_NONE, true);
    r = e.ra;
    r.k.shape[0] = r.v.shape[0] = e.p.kv_indptr[e.p.batch] - 1;
    bad_expect(&e, flp_prefill_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
               "ragged k/v one row short",
               MENTIONS(test_str("k/v have %d rows, the plan's kv_indptr needs %d",
                                 e.p.kv_indptr[e.p.batch] - 1, e.p.kv_indptr[e.p.batch])));
    r = e.ra;
    r.k = e.dv.k;
    r.k.ndim = 4;
    r.k.shape[2] = 1;
    r.k.shape[3] = e.p.d;
    r.k.stride[2] = e.p.d;
    r.k.stride[3] = 1;
    bad_expect(&e, flp_prefill_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
               "4-D k for a ragged plan", MENTIONS("flp_prefill_run: k.ndim is 4, expected 3"));
    bad_env_finish(&e);
}

static void test_bad_calls(void **state) {
    (void)state;
    bad_env e;
    bad_env_init(&e, FLP_MASK_CAUSAL, false);
    bad_expect(&e, flp_prefill_run(NULL, e.plan, &e.ra), FLP_ERROR_INVALID_ARGUMENT,
               "run: ctx NULL", NULL);
    bad_expect(&e, flp_prefill_run(g_ctx, NULL, &e.ra), FLP_ERROR_INVALID_ARGUMENT,
               "run: plan NULL", MENTIONS("flp_prefill_run: plan is NULL"));
    bad_expect(&e, flp_prefill_run(g_ctx, e.plan, NULL), FLP_ERROR_INVALID_ARGUMENT,
               "run: args NULL", MENTIONS("flp_prefill_run: args is NULL"));
    bad_expect(&e, flp_prefill_plan(g_ctx, NULL, &e.pa), FLP_ERROR_INVALID_ARGUMENT,
               "plan: plan NULL", MENTIONS("flp_prefill_plan: plan is NULL"));
    bad_expect(&e, flp_prefill_plan(g_ctx, e.plan, NULL), FLP_ERROR_INVALID_ARGUMENT,
               "plan: args NULL", MENTIONS("flp_prefill_plan: args is NULL"));
    flp_prefill_plan_args a = e.pa;
    a.variant.head_dim = 128;
    bad_expect(&e, flp_prefill_plan(g_ctx, e.plan, &a), FLP_ERROR_INVALID_ARGUMENT,
               "variant head_dim 128, plan 64",
               MENTIONS("variant.head_dim = 128 differs from the plan's head_dim = 64"));
    a = e.pa;
    a.variant.q_dtype = FLP_DTYPE_E4M3;
    bad_expect(&e, flp_prefill_plan(g_ctx, e.plan, &a), FLP_ERROR_INVALID_ARGUMENT, "e4m3 q_dtype",
               MENTIONS("variant.q_dtype = e4m3: queries and outputs are f16 or bf16"));
    a = e.pa;
    a.variant.use_window = true;
    a.variant.window_left = -1;
    bad_expect(&e, flp_prefill_plan(g_ctx, e.plan, &a), FLP_ERROR_INVALID_ARGUMENT,
               "window_left -1",
               MENTIONS("variant.window_left = -1: must be >= 0 when use_window is set"));
    /* a plan that holds no prefill partition */
    flp_plan *fresh = create_plan_for(&e.p);
    bad_expect(
        &e, flp_prefill_run(g_ctx, fresh, &e.ra), FLP_ERROR_INVALID_ARGUMENT, "run before plan",
        MENTIONS("flp_prefill_run: the plan holds no prefill plan (call flp_prefill_plan first)"));
    flp_plan_destroy(fresh);
    /* flp_single_prefill: NULL args, more queries than keys, custom mask without bits */
    expect_status(flp_single_prefill(g_ctx, NULL), FLP_ERROR_INVALID_ARGUMENT, "single: args NULL",
                  MENTIONS("flp_single_prefill: args is NULL"));
    flp_single_prefill_args s;
    memset(&s, 0, sizeof s);
    s.q = e.dv.qo.q; /* 8 rows */
    s.k = e.dv.k;
    s.k.ndim = 3; /* 4 "keys": the first page viewed as [slot, head, d] rows */
    s.k.shape[0] = 4;
    s.k.shape[1] = e.p.hkv;
    s.k.shape[2] = e.p.d;
    s.k.stride[0] = e.dv.k.stride[1];
    s.k.stride[1] = e.dv.k.stride[2];
    s.k.stride[2] = 1;
    s.v = s.k;
    s.v.buf = e.dv.v.buf;
    s.out = e.dv.qo.out;
    s.variant = e.p.variant;
    bad_expect(&e, flp_single_prefill(g_ctx, &s), FLP_ERROR_INVALID_ARGUMENT,
               "single: 8 queries over 4 keys", MENTIONS("request 0 has qo_len = 8 > kv_len = 4"));
    s.k.shape[0] = s.v.shape[0] = 16;
    s.variant.mask = FLP_MASK_CUSTOM;
    bad_expect(&e, flp_single_prefill(g_ctx, &s), FLP_ERROR_INVALID_ARGUMENT,
               "single: custom mask without custom_mask",
               MENTIONS("variant.mask is FLP_MASK_CUSTOM but custom_mask is NULL"));
    bad_env_finish(&e);
}

static void test_bad_plan_desc(void **state) {
    (void)state;
    flp_plan_desc pd = test_plan_desc_make(2, 4, 4, 2, 64);
    pd.max_qo_rows = -1;
    flp_plan *plan = NULL;
    expect_status(flp_plan_create(g_ctx, &pd, &plan), FLP_ERROR_INVALID_ARGUMENT, "max_qo_rows -1",
                  MENTIONS("flp_plan_create: max_qo_rows = -1 must be in 0.."));
    assert_null(plan);
}

/* flp_kv_append's host checks: status, message, and the caches untouched. */
typedef struct bad_append {
    append_src src;
    flp_buffer *cache_buf, *idx[4];
    size_t cache_bytes;
    flp_kv_append_args a;
} bad_append;

static void bad_append_expect(const bad_append *e, const flp_kv_append_args *a, const char *call,
                              const char *const *mentions) {
    expect_status(flp_kv_append(g_ctx, a), FLP_ERROR_INVALID_ARGUMENT, call, mentions);
    assert_ok(flp_context_synchronize(g_ctx));
    uint8_t *bytes = test_buffer_read_all(g_ctx, e->cache_buf, e->cache_bytes);
    for (size_t i = 0; i < e->cache_bytes; ++i)
        if (bytes[i] != 0x3C)
            fail_msg("%s: cache byte %zu was written by a failed call", call, i);
    free(bytes);
}

static void test_bad_append(void **state) {
    (void)state;
    test_rng rng;
    test_rng_init(&rng, test_name_seed("bad_append"));
    bad_append e;
    memset(&e, 0, sizeof e);
    const int32_t hkv = 2, d = 64, ps = 16, pages = 4, nnz = 5;
    append_src_create(&e.src, &rng, FLP_DTYPE_F16, nnz, hkv, d, false, false);
    const kv_geometry g =
        kv_geometry_make(FLP_DTYPE_E4M3, false, FLP_KV_LAYOUT_NHD, ps, hkv, d, pages, false, true);
    e.cache_bytes = g.buffer_bytes;
    e.cache_buf = test_buffer_new(g_ctx, e.cache_bytes);
    test_buffer_fill(g_ctx, e.cache_buf, e.cache_bytes, 0x3C);
    const int32_t bi[] = {0, 0, 1, 1, 1}, pos[] = {0, 1, 0, 1, 2}, indptr[] = {0, 1, 2},
                  indices[] = {3, 1};
    flp_kv_append_args *a = &e.a;
    a->k = e.src.k;
    a->v = e.src.v;
    a->batch_indices = i32_tensor(&e.idx[0], bi, nnz);
    a->positions = i32_tensor(&e.idx[1], pos, nnz);
    a->kv_indptr = i32_tensor(&e.idx[2], indptr, 3);
    a->kv_indices = i32_tensor(&e.idx[3], indices, 2);
    a->k_cache = kv_tensor(&g, e.cache_buf, 0);
    a->v_cache = kv_tensor(&g, e.cache_buf, g.v_offset);
    a->kv_layout = FLP_KV_LAYOUT_NHD;
    a->k_scale = 0.01f;
    a->v_scale = 0.02f;

    flp_kv_append_args b = *a;
    b.k.dtype = b.v.dtype = FLP_DTYPE_F32;
    bad_append_expect(
        &e, &b, "f32 new rows",
        MENTIONS("flp_kv_append: k dtype f32 must be f16, bf16 or the cache dtype e4m3"));
    b = *a;
    b.k.shape[1] = b.v.shape[1] = 1;
    bad_append_expect(&e, &b, "new rows with 1 head, cache 2",
                      MENTIONS("k.shape is [5, 1, 64], expected [-1, 2, 64]", "at dimension 1"));
    b = *a;
    b.v.shape[0] = nnz - 1;
    bad_append_expect(&e, &b, "v with fewer rows than k",
                      MENTIONS("v.shape is [4, 2, 64], expected [5, 2, 64]", "at dimension 0"));
    b = *a;
    b.positions.shape[0] = nnz - 1;
    bad_append_expect(&e, &b, "positions one short",
                      MENTIONS("positions.shape is [4], expected [5]", "at dimension 0"));
    b = *a;
    b.batch_indices.dtype = FLP_DTYPE_F32;
    bad_append_expect(&e, &b, "f32 batch_indices",
                      MENTIONS("batch_indices.dtype is f32, expected i32"));
    b = *a;
    b.kv_indptr.shape[0] = 1;
    bad_append_expect(&e, &b, "kv_indptr of 1 entry",
                      MENTIONS("kv_indptr needs >= 2 contiguous entries (shape 1, stride 1)"));
    b = *a;
    b.kv_indices.stride[0] = 2;
    b.kv_indices.shape[0] = 1;
    bad_append_expect(&e, &b, "kv_indices stride 2",
                      MENTIONS("kv_indices.stride[0] = 2: the last dimension must be contiguous"));
    b = *a;
    b.k_cache.ndim = 3;
    bad_append_expect(&e, &b, "3-D k_cache", MENTIONS("flp_kv_append: k_cache.ndim = 3 must be 4"));
    b = *a;
    b.v_cache.shape[2] = 1;
    bad_append_expect(
        &e, &b, "v_cache shape differs",
        MENTIONS("v_cache.shape is [4, 16, 1, 64], expected [4, 16, 2, 64]", "at dimension 2"));
    b = *a;
    b.k_cache.dtype = b.v_cache.dtype = FLP_DTYPE_I32;
    bad_append_expect(&e, &b, "i32 caches",
                      MENTIONS("k_cache dtype i32 is not f16, bf16, e4m3 or e5m2"));
    b = *a;
    b.k_scale = -1.0f;
    bad_append_expect(&e, &b, "k_scale -1",
                      MENTIONS("k_scale = -1 must be finite and >= 0 (0 = 1)"));
    b = *a;
    b.v_scale = NAN;
    bad_append_expect(&e, &b, "v_scale NaN",
                      MENTIONS("v_scale = nan must be finite and >= 0 (0 = 1)"));
    b = *a;
    b.kv_layout = (flp_kv_layout)7;
    bad_append_expect(&e, &b, "kv_layout 7", MENTIONS("kv_layout = 7 is not NHD or HND"));
    b = *a;
    b.k.buf = NULL;
    bad_append_expect(&e, &b, "k.buf NULL", MENTIONS("flp_kv_append: k.buf is NULL"));
    expect_status(flp_kv_append(g_ctx, NULL), FLP_ERROR_INVALID_ARGUMENT, "args NULL",
                  MENTIONS("flp_kv_append: args is NULL"));

    /* the valid call writes */
    test_backend_expect_errors(false);
    assert_ok(flp_kv_append(g_ctx, a));
    assert_ok(flp_context_synchronize(g_ctx));
    uint8_t *bytes = test_buffer_read_all(g_ctx, e.cache_buf, e.cache_bytes);
    size_t changed = 0;
    for (size_t i = 0; i < e.cache_bytes; ++i)
        changed += bytes[i] != 0x3C;
    free(bytes);
    assert_true(changed > 0);
    for (int i = 0; i < 4; ++i)
        flp_buffer_destroy(e.idx[i]);
    flp_buffer_destroy(e.cache_buf);
    append_src_free(&e.src);
}

/* ---- variant snippets (docs/variants.md) ------------------------------------------------------
 */

/* Paged f16, GQA 4, a prompt, a chunk appended to a long context and one row over many keys (the
 * plan splits it on the test devices, so the merge's part of a variant runs too). */
static test_rng snippet_problem(problem *p, const char *name) {
    test_rng rng;
    test_rng_init(&rng, test_name_seed(name));
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s", name);
    p->hq = 4;
    p->hkv = 1; /* few work items: the plan splits the long request over the grid */
    p->d = 64;
    p->q_dtype = p->kv_dtype = FLP_DTYPE_F16;
    p->layout = FLP_KV_LAYOUT_NHD;
    p->page_size = 16;
    p->lse = true;
    p->k_scale = p->v_scale = 1.0f;
    p->variant = (flp_variant){.head_dim = 64, .q_dtype = FLP_DTYPE_F16};
    const int32_t qo[] = {37, 20, 1}, kv[] = {37, 420, 2600};
    problem_set_batch(p, &rng, 3, qo, kv, 3, false);
    return rng;
}

/* Plans p with variant v, runs with the parameter values, waits: the outputs' contents. */
static test_readback run_with(const problem *p, dev_problem *dv, const flp_variant *v,
                              const flp_param_value *params, int32_t num_params) {
    flp_plan *plan = create_plan_for(p);
    flp_prefill_plan_args a = plan_args(p);
    a.variant = *v;
    assert_ok(flp_prefill_plan(g_ctx, plan, &a));
    expect_split(p, plan);
    test_qo_poison(&dv->qo);
    flp_prefill_run_args r = run_args(p, dv);
    r.params = params;
    r.num_params = num_params;
    assert_ok(flp_prefill_run(g_ctx, plan, &r));
    assert_ok(flp_context_synchronize(g_ctx));
    flp_plan_destroy(plan);
    return test_qo_read(&dv->qo);
}

/* A test's start where the backend may take no snippets: there it checks that the plan refuses
 * the variant, frees p and answers false (the test ends); else true. */
static bool snippets_run_here(problem *p, const flp_variant *snippet) {
    if (test_backend_takes_snippets())
        return true;
    flp_plan *plan = create_plan_for(p);
    flp_prefill_plan_args a = plan_args(p);
    a.variant = *snippet;
    test_backend_expect_errors(true);
    expect_status(flp_prefill_plan(g_ctx, plan, &a), FLP_ERROR_UNSUPPORTED, "snippet plan",
                  MENTIONS("do not take variant snippets"));
    test_backend_expect_errors(false);
    flp_plan_destroy(plan);
    problem_free(p);
    return false;
}

/* p's built-in variant against the float64 reference, and the snippet variant restating it: bit
 * for bit the same outputs. Frees p. */
static void expect_snippet_equals_builtin(problem *p, const flp_variant *snippet,
                                          const flp_param_value *params, int32_t num_params) {
    if (!snippets_run_here(p, snippet))
        return;
    dev_problem dv;
    dev_create(p, p->rows, &dv);
    test_readback want = run_with(p, &dv, &p->variant, NULL, 0);
    double *ref = test_xcalloc((size_t)p->rows * p->hq * p->d, sizeof(double));
    double *ref_lse = test_xcalloc((size_t)p->rows * p->hq, sizeof(double));
    problem_reference(p, ref, ref_lse);
    check_outputs(p, &dv, &want, ref, ref_lse, "built-in variant");
    test_readback got = run_with(p, &dv, snippet, params, num_params);
    test_qo_expect_same_bits(&dv.qo, &want, &got, p->name);
    test_readback_free(&want);
    test_readback_free(&got);
    free(ref);
    free(ref_lse);
    dev_free(&dv);
    problem_free(p);
}

static void test_snippet_soft_cap(void **state) {
    (void)state;
    problem p;
    snippet_problem(&p, "prefill: soft cap as a logits_transform");
    p.variant.logits_soft_cap = 0.3f;
    p.variant.mask = FLP_MASK_CAUSAL;
    static const flp_variant_param params[] = {{"cap", FLP_PARAM_FLOAT}};
    flp_variant v = {.head_dim = 64, .q_dtype = FLP_DTYPE_F16, .mask = FLP_MASK_CAUSAL};
    v.logits_transform = "return cap * tanh(logit / cap);";
    v.params = params;
    v.num_params = 1;
    const flp_param_value values[] = {{.name = "cap", .f = 0.3f}};
    expect_snippet_equals_builtin(&p, &v, values, 1);
}

static void test_snippet_causal_alibi(void **state) {
    (void)state;
    problem p;
    test_rng rng = snippet_problem(&p, "prefill: causal mask and ALiBi as snippets");
    p.alibi_slopes = test_xcalloc((size_t)p.hq, sizeof(float));
    for (int32_t h = 0; h < p.hq; h++)
        p.alibi_slopes[h] = (float)test_rng_uniform(&rng, 0.01, 0.5);
    p.variant.pos_encoding = FLP_POS_ALIBI;
    p.variant.mask = FLP_MASK_CAUSAL;
    static const flp_variant_param params[] = {{"slopes", FLP_PARAM_FLOAT_BUFFER}};
    flp_variant v = {.head_dim = 64, .q_dtype = FLP_DTYPE_F16};
    v.logits_transform = "return logit + slopes[qo_head] * float(kv_pos - qo_pos);";
    v.logits_mask = "return kv_pos <= qo_pos;";
    v.params = params;
    v.num_params = 1;
    flp_buffer *buf = NULL;
    const int64_t shape[] = {p.hq};
    const flp_tensor slopes =
        test_tensor_upload(g_ctx, p.alibi_slopes, FLP_DTYPE_F32, 1, shape, (size_t)p.hq, &buf);
    const flp_param_value values[] = {{.name = "slopes", .buffer = &slopes}};
    expect_snippet_equals_builtin(&p, &v, values, 1);
    flp_buffer_destroy(buf);
}

/* The packed custom mask restated as a snippet reading two int buffers (the language has no bit
 * operations: one int per (row, key), and each request's first entry). */
static void test_snippet_custom_mask(void **state) {
    (void)state;
    problem p;
    test_rng rng = snippet_problem(&p, "prefill: the custom mask as a logits_mask");
    p.variant.mask = FLP_MASK_CUSTOM;
    problem_make_mask(&p, &rng);
    static const flp_variant_param params[] = {{"first", FLP_PARAM_INT_BUFFER},
                                               {"keep", FLP_PARAM_INT_BUFFER}};
    flp_variant v = {.head_dim = 64, .q_dtype = FLP_DTYPE_F16};
    v.logits_mask = "int i = qo_pos - (kv_len - qo_len);\n"
                    "return keep[first[request] + i * kv_len + kv_pos] != 0;";
    v.params = params;
    v.num_params = 2;
    int32_t first[3], total = 0;
    for (int32_t b = 0; b < p.batch; b++) {
        first[b] = total;
        total += p.qo_len[b] * p.kv_len[b];
    }
    int32_t *keep = test_xcalloc((size_t)total, sizeof(int32_t));
    for (int32_t b = 0; b < p.batch; b++)
        for (int32_t i = 0; i < p.qo_len[b] * p.kv_len[b]; i++) {
            const int64_t bit = (int64_t)p.mask_indptr[b] * 8 + i;
            keep[first[b] + i] = (p.mask[bit >> 3] >> (bit & 7)) & 1;
        }
    flp_buffer *fbuf = NULL, *kbuf = NULL;
    const int64_t fshape[] = {p.batch}, kshape[] = {total};
    const flp_tensor ft = test_tensor_upload(g_ctx, first, FLP_DTYPE_I32, 1, fshape, 3, &fbuf);
    const flp_tensor kt =
        test_tensor_upload(g_ctx, keep, FLP_DTYPE_I32, 1, kshape, (size_t)total, &kbuf);
    const flp_param_value values[] = {{.name = "keep", .buffer = &kt},
                                      {.name = "first", .buffer = &ft}};
    /* the snippet's plan has no custom mask: its run passes none */
    uint8_t *mask = p.mask;
    int32_t *mask_indptr = p.mask_indptr;
    if (snippets_run_here(&p, &v)) {
        dev_problem dv;
        dev_create(&p, p.rows, &dv);
        test_readback want = run_with(&p, &dv, &p.variant, NULL, 0);
        p.mask = NULL;
        p.mask_indptr = NULL;
        p.variant.mask = FLP_MASK_NONE;
        test_readback got = run_with(&p, &dv, &v, values, 2);
        p.mask = mask;
        p.mask_indptr = mask_indptr;
        test_qo_expect_same_bits(&dv.qo, &want, &got, p.name);
        test_readback_free(&want);
        test_readback_free(&got);
        dev_free(&dv);
        problem_free(&p);
    }
    free(keep);
    flp_buffer_destroy(fbuf);
    flp_buffer_destroy(kbuf);
}

/* Attention sinks as an output transform: every row (split ones included) scaled by
 * sigmoid(lse - sink[head]), lse unchanged. */
static void test_snippet_sinks(void **state) {
    (void)state;
    problem p;
    test_rng rng = snippet_problem(&p, "prefill: attention sinks as an output_transform");
    p.variant.mask = FLP_MASK_CAUSAL;
    static const flp_variant_param params[] = {{"sinks", FLP_PARAM_FLOAT_BUFFER}};
    flp_variant v = p.variant;
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
    const flp_tensor t =
        test_tensor_upload(g_ctx, sinks, FLP_DTYPE_F32, 1, shape, (size_t)p.hq, &buf);
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

/* A query transform and a parameter value missing at run. */
static void test_snippet_query_transform(void **state) {
    (void)state;
    problem p;
    snippet_problem(&p, "prefill: a query_transform doubling q");
    p.variant.sm_scale = 2.0f / 8.0f; /* 2q . k * s == q . k * 2s exactly */
    flp_variant v = {.head_dim = 64, .q_dtype = FLP_DTYPE_F16};
    v.query_transform = "return q * 2.0;";
    expect_snippet_equals_builtin(&p, &v, NULL, 0);
}

/* Sigmoid attention (softmax off) with the causal mask: each kept key weighed by
 * sigmoid(logit + b), summed (split chunks added in the merge); lse 0. Against float64. */
static void test_snippet_sigmoid(void **state) {
    (void)state;
    problem p;
    snippet_problem(&p, "prefill: sigmoid attention (softmax off)");
    static const flp_variant_param params[] = {{"b", FLP_PARAM_FLOAT}};
    flp_variant v = p.variant;
    v.mask = FLP_MASK_CAUSAL;
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
    int32_t *tok_indptr = test_xcalloc((size_t)p.batch + 1, sizeof(int32_t));
    double *k = gather_keys(&p, p.k_raw, p.k_scale, tok_indptr);
    double *vv = gather_keys(&p, p.v_raw, p.v_scale, tok_indptr);
    const size_t n = (size_t)p.rows * (size_t)p.hq * (size_t)p.d;
    double *want = test_xcalloc(n, sizeof(double)), *out = test_xcalloc(n, sizeof(double));
    const int32_t group = p.hq / p.hkv;
    const double scale = 1.0 / sqrt((double)p.d);
    for (int32_t b = 0; b < p.batch; b++)
        for (int32_t i = 0; i < p.qo_len[b]; i++) {
            const int32_t r = p.qo_indptr[b] + i, pos = p.kv_len[b] - p.qo_len[b] + i;
            for (int32_t h = 0; h < p.hq; h++) {
                const size_t l = (size_t)r * (size_t)p.hq + (size_t)h;
                const float *q = p.q + l * (size_t)p.d;
                for (int32_t t = 0; t <= pos; t++) {
                    const size_t at =
                        ((size_t)(tok_indptr[b] + t) * (size_t)p.hkv + (size_t)(h / group)) *
                        (size_t)p.d;
                    double dot = 0.0;
                    for (int32_t e = 0; e < p.d; e++)
                        dot += (double)q[e] * k[at + (size_t)e];
                    const double w = 1.0 / (1.0 + exp(-(dot * scale + bias)));
                    for (int32_t e = 0; e < p.d; e++)
                        want[l * (size_t)p.d + (size_t)e] += w * vv[at + (size_t)e];
                }
                assert_int_equal(got.lse[l], 0u);
                for (int32_t e = 0; e < p.d; e++)
                    out[l * (size_t)p.d + (size_t)e] =
                        test_half_to_double(p.q_dtype, got.out[l * (size_t)p.d + (size_t)e]);
            }
        }
    assert_relative_error(out, want, n, 2e-3, "sigmoid attention vs the float64 sum");
    free(want);
    free(out);
    free(k);
    free(vv);
    free(tok_indptr);
    test_readback_free(&got);
    dev_free(&dv);
    problem_free(&p);
}

static void test_bad_snippet_run(void **state) {
    (void)state;
    problem p;
    snippet_problem(&p, "prefill: bad snippet runs");
    static const flp_variant_param params[] = {{"cap", FLP_PARAM_FLOAT}};
    flp_variant v = p.variant;
    v.logits_transform = "return cap * logit;";
    v.params = params;
    v.num_params = 1;
    if (!snippets_run_here(&p, &v))
        return;
    dev_problem dv;
    dev_create(&p, p.rows, &dv);
    flp_plan *plan = create_plan_for(&p);
    flp_prefill_plan_args a = plan_args(&p);
    a.variant = v;
    assert_ok(flp_prefill_plan(g_ctx, plan, &a));
    flp_prefill_run_args r = run_args(&p, &dv);
    test_qo_poison(&dv.qo);
    test_qo_expect_failed(&dv.qo, flp_prefill_run(g_ctx, plan, &r), FLP_ERROR_INVALID_ARGUMENT,
                          "no values",
                          MENTIONS("flp_prefill_run: num_params = 0, but the plan's "
                                   "variant declares 1 parameter"));
    const flp_param_value wrong[] = {{.name = "cap", .i = 3, .buffer = &dv.k}};
    r.params = wrong;
    r.num_params = 1;
    test_qo_expect_failed(&dv.qo, flp_prefill_run(g_ctx, plan, &r), FLP_ERROR_INVALID_ARGUMENT,
                          "a buffer for a float",
                          MENTIONS("params[0] (\"cap\") is a float parameter: it takes a value, "
                                   "not a buffer"));
    flp_variant broken = p.variant;
    broken.output_transform = "return lse > 0.0;"; /* a bool where a float is due */
    a.variant = broken;
    assert_ok(flp_prefill_plan(g_ctx, plan, &a));
    r = run_args(&p, &dv);
    test_qo_expect_failed(&dv.qo, flp_prefill_run(g_ctx, plan, &r), FLP_ERROR_COMPILE,
                          "a snippet glslang refuses", MENTIONS("output_transform:1:"));
    flp_plan_destroy(plan);
    dev_free(&dv);
    problem_free(&p);
}

/* ---- main ------------------------------------------------------------------------------------ */

/* FLP_PREFILL_CASES_SUBSET = "N" or "N:K": table cases with index % N == K. */
static bool case_selected(size_t index) {
    const char *env = getenv("FLP_PREFILL_CASES_SUBSET");
    if (!env || !*env)
        return true;
    long n = 1, k = 0;
    if (sscanf(env, "%ld:%ld", &n, &k) < 1 || n < 1)
        return true;
    return (long)(index % (size_t)n) == k % n;
}

int main(int argc, char **argv) {
    const int rc = test_backend_open(argc, argv, flp_vulkan_validation_message_count, &g_ctx);
    if (rc != 0)
        return rc;
    test_list l = {0};
    size_t selected = 0;
    for (size_t i = 0; i < PREFILL_CASE_COUNT; ++i)
        if (case_selected(i)) {
            test_list_add(&l, "case_", prefill_cases[i].name, test_case, false,
                          (void *)&prefill_cases[i]);
            selected++;
        }
    if (selected < PREFILL_CASE_COUNT)
        printf("FLP_PREFILL_CASES_SUBSET: %zu of %zu table cases\n", selected,
               (size_t)PREFILL_CASE_COUNT);
    int num_golden = 0;
    const char *const *golden = golden_case_names(&num_golden);
    int golden_prefill = 0;
    for (int i = 0; i < num_golden; ++i)
        if (strncmp(golden[i], "decode_", 7) != 0) {
            test_list_add(&l, "golden_", golden[i], test_golden, false, (void *)golden[i]);
            golden_prefill++;
        }
    if (golden_prefill == 0) {
        fprintf(stderr, "no prefill golden case found in %s/index.json\n", golden_dir());
        return 1;
    }
    for (size_t i = 0; i < SINGLE_CASE_COUNT; ++i)
        test_list_add(&l, "single_", single_cases[i].name, test_single, false,
                      (void *)&single_cases[i]);
    for (size_t i = 0; i < APPEND_CASE_COUNT; ++i)
        test_list_add(&l, "append_", append_cases[i].name, test_append_case, false,
                      (void *)&append_cases[i]);
    for (size_t i = 0; i < ATTEND_CASE_COUNT; ++i)
        test_list_add(&l, "append_then_attend_", attend_cases[i].name, test_append_then_attend,
                      false, (void *)&attend_cases[i]);
    test_list_add(&l, "", "determinism", test_determinism, false, NULL);
    test_list_add(&l, "", "replan_within_capacity", test_replan_within_capacity, false, NULL);
    test_list_add(&l, "", "capacity", test_capacity, true, NULL);
    test_list_add(&l, "", "bad_lengths", test_bad_lengths, true, NULL);
    test_list_add(&l, "", "bad_page_table", test_bad_page_table, true, NULL);
    test_list_add(&l, "", "bad_run_page_ids", test_bad_run_page_ids, true, NULL);
    test_list_add(&l, "", "bad_mask", test_bad_mask, true, NULL);
    test_list_add(&l, "", "bad_tensors", test_bad_tensors, true, NULL);
    test_list_add(&l, "", "bad_calls", test_bad_calls, true, NULL);
    test_list_add(&l, "", "bad_plan_desc", test_bad_plan_desc, true, NULL);
    test_list_add(&l, "", "bad_append", test_bad_append, true, NULL);
    test_list_add(&l, "", "snippet_soft_cap", test_snippet_soft_cap, false, NULL);
    test_list_add(&l, "", "snippet_causal_alibi", test_snippet_causal_alibi, false, NULL);
    test_list_add(&l, "", "snippet_custom_mask", test_snippet_custom_mask, false, NULL);
    test_list_add(&l, "", "snippet_sinks", test_snippet_sinks, false, NULL);
    test_list_add(&l, "", "snippet_query_transform", test_snippet_query_transform, false, NULL);
    test_list_add(&l, "", "snippet_sigmoid", test_snippet_sigmoid, false, NULL);
    test_list_add(&l, "", "bad_snippet_run", test_bad_snippet_run, true, NULL);
    return test_list_run(&l, "prefill", argc, argv, test_backend_group_setup,
                         test_backend_group_teardown);
}
