/* The batch-decode reference suite (DESIGN.md section 7), run once per backend:
 *
 *     test_decode vulkan|cuda [cmocka test filter]
 *
 * Exits 77 (skipped) when the backend is not built or has no device. For Vulkan the Khronos
 * validation layer is on (FLP_VULKAN_VALIDATION=1 unless the environment says otherwise) and any
 * validation message fails the test during which it appeared.
 *
 * Tests:
 * - the case table (tests/decode_cases.h) against the float64 reference (core/reference.h);
 * - the golden decode cases (tests/golden/) against their float64 outputs;
 * - determinism (same plan and inputs -> same bits), re-planning within capacity with a caller
 *   workspace, capacity errors, a KV pool larger than lavapipe's 128 MiB binding limit;
 * - bad input: exact status, a message naming the bad thing, outputs untouched.
 *
 * Every check of an output poisons it first (0xFFFF: a NaN in f16 and bf16; lse: NaN) and
 * requires every element of the view to be written and every byte outside it untouched.
 *
 * Tolerances on max|out - ref| / max|ref|: f16 2e-3, bf16 1.6e-2 (DESIGN.md). fp8 KV uses the
 * same ones as its Q/O dtype, not looser ones: the reference is fed the exact dequantised values
 * (stored fp8 value times the scale, the same f32 product the kernels compute), so quantisation
 * error is not part of the comparison and what remains is f32 arithmetic and the rounding of the
 * output, as for 16-bit KV. lse: |got - ref| <= tol * max(1, |ref|), tol 1e-3 (f16) / 1e-2
 * (bf16). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/plan.h" /* to confirm that split cases take the merge path */
#include "core/reference.h"
#include "flashport/flashport.h"
#include "flashport/flashport_vulkan.h"
#include "tests/decode_cases.h"
#include "tests/golden.h"
#include "tests/test_util.h"

#define POISON16 0xFFFFu     /* f16 / bf16 NaN */
#define POISON32 0xFFFFFFFFu /* f32 NaN */

/* ---- program state: one context for the whole run ------------------------------------------ */

static flp_backend_kind g_backend;
static const char *g_backend_name;
static flp_context *g_ctx;
static flp_device_info g_info;

/* Log records: error messages are failures unless the running test expects them. */
static bool g_expect_errors;
static int g_error_logs;
static char g_last_log[2048];
static uint32_t g_validation_before;
/* The last error messages of the running test, shown when validation messages appeared among
 * expected errors (which are not printed as they come). */
#define KEPT_ERRORS 8
static char g_errors[KEPT_ERRORS][512];

static void on_log(void *user, flp_log_level level, const char *message) {
    (void)user;
    snprintf(g_last_log, sizeof g_last_log, "%s", message);
    if (level >= FLP_LOG_ERROR) {
        snprintf(g_errors[g_error_logs % KEPT_ERRORS], sizeof g_errors[0], "%s", message);
        g_error_logs++;
        if (!g_expect_errors)
            fprintf(stderr, "[flashport error] %s\n", message);
    } else if (level == FLP_LOG_WARNING) {
        fprintf(stderr, "[flashport warning] %s\n", message);
    }
}

static uint32_t validation_count(void) {
    return g_backend == FLP_BACKEND_VULKAN ? flp_vulkan_validation_message_count(g_ctx) : 0;
}

static int setup_test(bool expect_errors) {
    g_expect_errors = expect_errors;
    g_error_logs = 0;
    g_validation_before = validation_count();
    return 0;
}

static int teardown_test(bool expect_errors) {
    int rc = 0;
    const uint32_t seen = validation_count();
    if (seen != g_validation_before) {
        print_error("ERROR: %u Vulkan validation message(s) during this test\n",
                    seen - g_validation_before);
        const int first = g_error_logs > KEPT_ERRORS ? g_error_logs - KEPT_ERRORS : 0;
        for (int i = first; i < g_error_logs; ++i)
            print_error("  logged: %s\n", g_errors[i % KEPT_ERRORS]);
        rc = -1;
    }
    if (!expect_errors && g_error_logs > 0) {
        print_error("ERROR: %d error(s) logged during this test (last: %s)\n", g_error_logs,
                    g_last_log);
        rc = -1;
    }
    g_expect_errors = false;
    return rc;
}

static int setup_good(void **state) {
    (void)state;
    return setup_test(false);
}
static int teardown_good(void **state) {
    (void)state;
    return teardown_test(false);
}
static int setup_bad(void **state) {
    (void)state;
    return setup_test(true);
}
static int teardown_bad(void **state) {
    (void)state;
    return teardown_test(true);
}

/* Fails the test with the status, its name and the context's message unless st is FLP_OK. */
#define assert_ok(call)                                                                            \
    do {                                                                                           \
        const flp_status st_ = (call);                                                             \
        if (st_ != FLP_OK)                                                                         \
            fail_msg("%s -> %s: %s", #call, flp_status_string(st_),                                \
                     flp_context_last_error(g_ctx));                                               \
    } while (0)

static void *xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    assert_non_null(p);
    return p;
}

/* A seed per test name, so that tests do not depend on each other's draws. */
static uint64_t name_seed(const char *name) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (const char *s = name; *s; ++s)
        h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

/* ---- dtypes ---------------------------------------------------------------------------------- */

static bool is_fp8(flp_dtype dt) {
    return dt == FLP_DTYPE_E4M3 || dt == FLP_DTYPE_E5M2;
}

static float round_to(flp_dtype dt, float x) {
    switch (dt) {
    case FLP_DTYPE_F16:
        return flp_f16_to_f32(flp_f32_to_f16(x));
    case FLP_DTYPE_BF16:
        return flp_bf16_to_f32(flp_f32_to_bf16(x));
    case FLP_DTYPE_E4M3:
        return flp_e4m3_to_f32(flp_f32_to_e4m3(x));
    case FLP_DTYPE_E5M2:
        return flp_e5m2_to_f32(flp_f32_to_e5m2(x));
    default:
        return x;
    }
}

static double load16(flp_dtype dt, uint16_t bits) {
    return dt == FLP_DTYPE_BF16 ? (double)flp_bf16_to_f32(bits) : (double)flp_f16_to_f32(bits);
}

/* Values in [-1, 1] divided by scale and rounded to dt: exactly what is stored. Never zero. */
static void fill_stored(test_rng *rng, flp_dtype dt, float scale, float *x, size_t n) {
    for (size_t i = 0; i < n; ++i) {
        float v;
        do {
            v = round_to(dt, (float)test_rng_uniform(rng, -1.0, 1.0) / scale);
        } while (v == 0.0f);
        x[i] = v;
    }
}

static double out_tolerance(flp_dtype q_dtype) {
    return q_dtype == FLP_DTYPE_BF16 ? 1.6e-2 : 2e-3;
}

static double lse_tolerance(flp_dtype q_dtype) {
    return q_dtype == FLP_DTYPE_BF16 ? 1e-2 : 1e-3;
}

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
} problem;

static void problem_free_batch(problem *p) {
    free(p->kv_lens);
    free(p->kv_indptr);
    free(p->kv_indices);
    free(p->dev_indices);
    free(p->kv_last_page_len);
    free(p->q_rope_offset);
    free(p->k_rope_offset);
    free(p->q);
    p->kv_lens = p->kv_indptr = p->kv_indices = p->dev_indices = p->kv_last_page_len = NULL;
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
    if (is_fp8(p->kv_dtype)) {
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
    p->kv_lens = xcalloc((size_t)batch, sizeof(int32_t));
    p->kv_indptr = xcalloc((size_t)batch + 1, sizeof(int32_t));
    p->kv_last_page_len = xcalloc((size_t)batch, sizeof(int32_t));
    for (int32_t b = 0; b < batch; ++b) {
        const int32_t len = kv_lens[b];
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
        p->k_raw = xcalloc(n, sizeof(float));
        p->v_raw = xcalloc(n, sizeof(float));
        fill_stored(rng, p->kv_dtype, p->k_scale, p->k_raw, n);
        fill_stored(rng, p->kv_dtype, p->v_scale, p->v_raw, n);
    }
    assert_true(needed <= p->num_pages);

    int32_t *perm = xcalloc((size_t)p->num_pages, sizeof(int32_t));
    for (int32_t i = 0; i < p->num_pages; ++i)
        perm[i] = i;
    if (!sequential) {
        for (int32_t i = p->num_pages - 1; i > 0; --i) {
            const int32_t j = test_rng_int(rng, 0, i);
            const int32_t t = perm[i];
            perm[i] = perm[j];
            perm[j] = t;
        }
    }
    p->kv_indices = xcalloc((size_t)needed, sizeof(int32_t));
    p->dev_indices = xcalloc((size_t)needed, sizeof(int32_t));
    for (int32_t i = 0; i < needed; ++i) {
        p->kv_indices[i] = perm[i];
        p->dev_indices[i] = perm[i] + p->page_base;
    }
    free(perm);

    if (p->rope_offsets) {
        p->q_rope_offset = xcalloc((size_t)batch, sizeof(int32_t));
        p->k_rope_offset = xcalloc((size_t)batch, sizeof(int32_t));
        for (int32_t b = 0; b < batch; ++b) {
            p->q_rope_offset[b] = test_rng_int(rng, 0, 300);
            p->k_rope_offset[b] = test_rng_int(rng, 0, 300);
        }
    }
    const size_t nq = (size_t)p->rows * (size_t)p->hq * (size_t)p->d;
    p->q = xcalloc(nq, sizeof(float));
    fill_stored(rng, p->q_dtype, 1.0f, p->q, nq);
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
    if (c->alibi != ALIBI_OFF) {
        v->pos_encoding = FLP_POS_ALIBI;
        if (c->alibi == ALIBI_CALLER) {
            p->alibi_slopes = xcalloc((size_t)p->hq, sizeof(float));
            for (int32_t h = 0; h < p->hq; ++h)
                p->alibi_slopes[h] = (float)test_rng_uniform(rng, 0.01, 1.0);
        }
    }
    if (c->rope != ROPE_OFF) {
        v->pos_encoding = FLP_POS_ROPE_LLAMA;
        p->rope_offsets = c->rope_offsets;
        if (c->rope == ROPE_SCALED) {
            v->rope.theta = 10000.0f;
            v->rope.scale = 4.0f;
        } else if (c->rope == ROPE_LLAMA31) {
            v->rope.theta = 500000.0f;
            v->rope.scale = 1.0f;
            v->rope.llama31 = true;
            v->rope.llama31_factor = 8.0f;
            v->rope.llama31_low_freq_factor = 1.0f;
            v->rope.llama31_high_freq_factor = 4.0f;
            v->rope.llama31_original_max_position = 8192;
        }
    }

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
    a.kv_indices = p->dev_indices;
    a.kv_last_page_len = p->kv_last_page_len;
    a.q_rope_offset = p->q_rope_offset;
    a.k_rope_offset = p->k_rope_offset;
    a.alibi_slopes = p->alibi_slopes;
    a.variant = p->variant;
    return a;
}

/* The float64 reference on the dequantised inputs: out [rows, hq, d], lse [rows, hq]. */
static void problem_reference(const problem *p, double *out, double *lse) {
    const size_t n = (size_t)p->num_pages * page_elems(p);
    float *kd = xcalloc(n, sizeof(float)), *vd = xcalloc(n, sizeof(float));
    for (size_t i = 0; i < n; ++i) {
        kd[i] = p->k_raw[i] * p->k_scale; /* the f32 product the kernels compute */
        vd[i] = p->v_raw[i] * p->v_scale;
    }
    int64_t tokens = 0;
    for (int32_t b = 0; b < p->batch; ++b)
        tokens += p->kv_lens[b];
    const size_t kv_n = (size_t)tokens * (size_t)p->hkv * (size_t)p->d;
    double *k = xcalloc(kv_n, sizeof(double)), *v = xcalloc(kv_n, sizeof(double));
    int32_t *tok_indptr = xcalloc((size_t)p->batch + 1, sizeof(int32_t));
    int32_t *qo_indptr = xcalloc((size_t)p->batch + 1, sizeof(int32_t));
    const int32_t dummy_index = 0;
    const int32_t *indices = p->kv_indptr[p->batch] > 0 ? p->kv_indices : &dummy_index;
    assert_int_equal(flp_ref_gather_paged(p->batch, p->hkv, p->d, p->page_size, p->layout,
                                          p->num_pages, kd, p->kv_indptr, indices,
                                          p->kv_last_page_len, tok_indptr, k),
                     FLP_OK);
    assert_int_equal(flp_ref_gather_paged(p->batch, p->hkv, p->d, p->page_size, p->layout,
                                          p->num_pages, vd, p->kv_indptr, indices,
                                          p->kv_last_page_len, tok_indptr, v),
                     FLP_OK);
    for (int32_t b = 0; b < p->batch; ++b) {
        assert_int_equal(tok_indptr[b + 1] - tok_indptr[b], p->kv_lens[b]);
        qo_indptr[b + 1] = qo_indptr[b] + p->qo_len;
    }
    const size_t nq = (size_t)p->rows * (size_t)p->hq * (size_t)p->d;
    double *q = xcalloc(nq, sizeof(double));
    for (size_t i = 0; i < nq; ++i)
        q[i] = p->q[i];
    double *slopes = NULL;
    if (p->alibi_slopes) {
        slopes = xcalloc((size_t)p->hq, sizeof(double));
        for (int32_t h = 0; h < p->hq; ++h)
            slopes[h] = p->alibi_slopes[h];
    }
    flp_ref_attention a;
    memset(&a, 0, sizeof a);
    a.batch_size = p->batch;
    a.num_qo_heads = p->hq;
    a.num_kv_heads = p->hkv;
    a.head_dim = p->d;
    a.qo_indptr = qo_indptr;
    a.kv_indptr = tok_indptr;
    a.q = q;
    a.k = k;
    a.v = v;
    a.mask = p->variant.mask;
    a.use_window = p->variant.use_window;
    a.window_left = p->variant.window_left;
    a.logits_soft_cap = p->variant.logits_soft_cap;
    a.sm_scale = p->variant.sm_scale;
    a.pos_encoding = p->variant.pos_encoding;
    a.rope = p->variant.rope;
    a.q_rope_offset = p->q_rope_offset;
    a.k_rope_offset = p->k_rope_offset;
    a.alibi_slopes = slopes;
    assert_int_equal(flp_ref_attention_run(&a, out, lse), FLP_OK);
    free(kd);
    free(vd);
    free(k);
    free(v);
    free(tok_indptr);
    free(qo_indptr);
    free(q);
    free(slopes);
}

/* ---- device side ----------------------------------------------------------------------------- */

typedef struct dev_problem {
    flp_buffer *q_buf, *out_buf, *lse_buf, *k_buf, *v_buf; /* v_buf NULL when interleaved */
    size_t q_bytes, out_bytes, lse_bytes;                  /* buffer sizes */
    int32_t rows_capacity;
    flp_tensor q, out, lse, k, v;
} dev_problem;

/* Strides and offsets of q/out ([rows, hq, d], elements) and lse ([rows, hq] f32). Padded
 * layouts use row and head strides larger than dense (still multiples of 16 bytes) and offsets
 * that are 16-byte aligned but not 256-byte aligned. */
typedef struct qo_layout {
    int64_t row_stride, head_stride, lse_row_stride;
    size_t q_offset, out_offset, lse_offset; /* bytes */
} qo_layout;

static qo_layout get_qo_layout(const problem *p) {
    qo_layout l;
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

static flp_tensor tensor3(flp_buffer *buf, size_t offset, flp_dtype dt, int64_t n0, int64_t n1,
                          int64_t n2, int64_t s0, int64_t s1) {
    flp_tensor t;
    memset(&t, 0, sizeof t);
    t.buf = buf;
    t.offset = offset;
    t.dtype = dt;
    t.ndim = 3;
    t.shape[0] = n0;
    t.shape[1] = n1;
    t.shape[2] = n2;
    t.stride[0] = s0;
    t.stride[1] = s1;
    t.stride[2] = 1;
    return t;
}

/* The two middle dimensions of a page: NHD (page_size, hkv), HND (hkv, page_size). */
static void page_dims(const problem *p, int64_t *a, int64_t *b) {
    *a = p->layout == FLP_KV_LAYOUT_NHD ? p->page_size : p->hkv;
    *b = p->layout == FLP_KV_LAYOUT_NHD ? p->hkv : p->page_size;
}

/* Sets the q/out/lse views for the current batch (the buffers hold rows_capacity rows). */
static void dev_set_views(const problem *p, dev_problem *dv) {
    const qo_layout l = get_qo_layout(p);
    assert_true(p->rows <= dv->rows_capacity);
    dv->q = tensor3(dv->q_buf, l.q_offset, p->q_dtype, p->rows, p->hq, p->d, l.row_stride,
                    l.head_stride);
    dv->out = tensor3(dv->out_buf, l.out_offset, p->q_dtype, p->rows, p->hq, p->d, l.row_stride,
                      l.head_stride);
    memset(&dv->lse, 0, sizeof dv->lse);
    dv->lse.buf = dv->lse_buf;
    dv->lse.offset = l.lse_offset;
    dv->lse.dtype = FLP_DTYPE_F32;
    dv->lse.ndim = 2;
    dv->lse.shape[0] = p->rows;
    dv->lse.shape[1] = p->hq;
    dv->lse.stride[0] = l.lse_row_stride;
    dv->lse.stride[1] = 1;
}

/* Writes q (padding of the q buffer gets the poison NaN, so reading it would show). */
static void dev_write_q(const problem *p, dev_problem *dv) {
    const qo_layout l = get_qo_layout(p);
    uint16_t *staging = xcalloc(dv->q_bytes / 2, sizeof(uint16_t));
    for (size_t i = 0; i < dv->q_bytes / 2; ++i)
        staging[i] = POISON16;
    for (int32_t r = 0; r < p->rows; ++r)
        for (int32_t h = 0; h < p->hq; ++h) {
            const size_t at = l.q_offset / 2 + (size_t)r * (size_t)l.row_stride +
                              (size_t)h * (size_t)l.head_stride;
            const float *src = p->q + ((size_t)r * p->hq + h) * p->d;
            assert_int_equal(flp_convert_from_f32(p->q_dtype, src, staging + at, (size_t)p->d),
                             FLP_OK);
        }
    assert_ok(flp_buffer_write(g_ctx, dv->q_buf, 0, staging, dv->q_bytes));
    free(staging);
    dev_set_views(p, dv);
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

    flp_buffer_desc bd = {.size = buf_bytes};
    assert_ok(flp_buffer_create(g_ctx, &bd, &dv->k_buf));
    if (!p->interleaved_kv)
        assert_ok(flp_buffer_create(g_ctx, &bd, &dv->v_buf));

    uint8_t *ks = xcalloc(host_bytes, 1);
    uint8_t *vs = p->interleaved_kv ? ks : xcalloc(host_bytes, 1);
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

static void dev_create(const problem *p, int32_t rows_capacity, dev_problem *dv) {
    memset(dv, 0, sizeof *dv);
    const qo_layout l = get_qo_layout(p);
    const size_t es = flp_dtype_size(p->q_dtype);
    dv->rows_capacity = rows_capacity;
    /* Buffers end 64 bytes after the last row so writes past the view would show. */
    dv->q_bytes = l.q_offset + (size_t)rows_capacity * (size_t)l.row_stride * es + 64;
    dv->out_bytes = l.out_offset + (size_t)rows_capacity * (size_t)l.row_stride * es + 64;
    dv->lse_bytes = l.lse_offset + (size_t)rows_capacity * (size_t)l.lse_row_stride * 4 + 64;
    flp_buffer_desc bd = {.size = dv->q_bytes};
    assert_ok(flp_buffer_create(g_ctx, &bd, &dv->q_buf));
    bd.size = dv->out_bytes;
    assert_ok(flp_buffer_create(g_ctx, &bd, &dv->out_buf));
    bd.size = dv->lse_bytes;
    assert_ok(flp_buffer_create(g_ctx, &bd, &dv->lse_buf));
    dev_write_kv(p, dv);
    dev_write_q(p, dv);
}

static void dev_free(dev_problem *dv) {
    flp_buffer_destroy(dv->q_buf);
    flp_buffer_destroy(dv->out_buf);
    flp_buffer_destroy(dv->lse_buf);
    flp_buffer_destroy(dv->k_buf);
    flp_buffer_destroy(dv->v_buf);
    memset(dv, 0, sizeof *dv);
}

static void dev_poison(dev_problem *dv) {
    uint8_t *bytes = xcalloc(dv->out_bytes > dv->lse_bytes ? dv->out_bytes : dv->lse_bytes, 1);
    memset(bytes, 0xFF, dv->out_bytes > dv->lse_bytes ? dv->out_bytes : dv->lse_bytes);
    assert_ok(flp_buffer_write(g_ctx, dv->out_buf, 0, bytes, dv->out_bytes));
    assert_ok(flp_buffer_write(g_ctx, dv->lse_buf, 0, bytes, dv->lse_bytes));
    free(bytes);
}

static flp_decode_run_args run_args(const problem *p, const dev_problem *dv) {
    flp_decode_run_args r;
    memset(&r, 0, sizeof r);
    r.q = dv->q;
    r.k_cache = dv->k;
    r.v_cache = dv->v;
    r.out = dv->out;
    r.lse = p->lse ? &dv->lse : NULL;
    return r;
}

/* Raw contents of the output buffers after a run. */
typedef struct readback {
    uint16_t *out; /* [out_bytes / 2] */
    uint32_t *lse; /* [lse_bytes / 4] */
} readback;

static void read_outputs(const dev_problem *dv, readback *rb) {
    rb->out = xcalloc(dv->out_bytes / 2, sizeof(uint16_t));
    rb->lse = xcalloc(dv->lse_bytes / 4, sizeof(uint32_t));
    assert_ok(flp_buffer_read(g_ctx, dv->out_buf, 0, rb->out, dv->out_bytes));
    assert_ok(flp_buffer_read(g_ctx, dv->lse_buf, 0, rb->lse, dv->lse_bytes));
}

static void readback_free(readback *rb) {
    free(rb->out);
    free(rb->lse);
    rb->out = NULL;
    rb->lse = NULL;
}

static flp_plan *create_plan(const problem *p, int32_t max_batch, int32_t max_pages,
                             int32_t max_qo_len) {
    flp_plan_desc pd;
    memset(&pd, 0, sizeof pd);
    pd.max_batch_size = max_batch;
    pd.max_qo_len = max_qo_len;
    pd.max_pages = max_pages;
    pd.num_qo_heads = p->hq;
    pd.num_kv_heads = p->hkv;
    pd.head_dim = p->d;
    flp_plan *plan = NULL;
    assert_ok(flp_plan_create(g_ctx, &pd, &plan));
    assert_non_null(plan);
    return plan;
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
    dev_poison(dv);
    const flp_decode_run_args r = run_args(p, dv);
    assert_ok(flp_decode_run(g_ctx, plan, &r));
    assert_ok(flp_context_synchronize(g_ctx));
}

/* Long requests of a small batch must be split into KV chunks (DESIGN.md section 4) whenever the
 * batch does not fill the grid: checks the plan took the merge path, so split tests test it. */
static void expect_split(const problem *p, const flp_plan *plan) {
    if (plan->num_ctas <= p->batch * p->hkv) {
        print_message("note: %s: grid of %d workgroups, %d x %d items: no split expected\n",
                      p->name, plan->num_ctas, p->batch, p->hkv);
        return;
    }
    if (!plan->decode.needs_merge)
        fail_msg("%s: %d requests x %d KV heads on a grid of %d, yet the plan split nothing",
                 p->name, p->batch, p->hkv, plan->num_ctas);
}

/* Index of out element (r, h, d) in the out buffer (in 16-bit words). */
static size_t out_index(const problem *p, int32_t r, int32_t h, int32_t d) {
    const qo_layout l = get_qo_layout(p);
    return l.out_offset / 2 + (size_t)r * (size_t)l.row_stride + (size_t)h * (size_t)l.head_stride +
           (size_t)d;
}

static size_t lse_index(const problem *p, int32_t r, int32_t h) {
    const qo_layout l = get_qo_layout(p);
    return l.lse_offset / 4 + (size_t)r * (size_t)l.lse_row_stride + (size_t)h;
}

static double f32_of(uint32_t bits) {
    float f;
    memcpy(&f, &bits, sizeof f);
    return (double)f;
}

/* Checks a run's outputs against ref_out [rows, hq, d] / ref_lse [rows, hq]: every element of
 * the views written, nothing outside them touched, empty requests exactly 0 / -inf, errors
 * within the dtype tolerances. */
static void check_outputs(const problem *p, const readback *rb, size_t out_words, size_t lse_words,
                          const double *ref_out, const double *ref_lse, const char *what) {
    const size_t n = (size_t)p->rows * (size_t)p->hq * (size_t)p->d;
    double *got = xcalloc(n, sizeof(double));
    bool *in_view = xcalloc(out_words, sizeof(bool));
    for (int32_t r = 0; r < p->rows; ++r)
        for (int32_t h = 0; h < p->hq; ++h)
            for (int32_t d = 0; d < p->d; ++d) {
                const size_t at = out_index(p, r, h, d);
                const size_t i = ((size_t)r * p->hq + h) * p->d + d;
                in_view[at] = true;
                if (rb->out[at] == POISON16)
                    fail_msg("%s: %s: out[%d, %d, %d] was not written", p->name, what, r, h, d);
                got[i] = load16(p->q_dtype, rb->out[at]);
                if (isnan(got[i]))
                    fail_msg("%s: %s: out[%d, %d, %d] is NaN (0x%04x)", p->name, what, r, h, d,
                             rb->out[at]);
                if (p->kv_lens[r / p->qo_len] == 0 && got[i] != 0.0)
                    fail_msg("%s: %s: out[%d, %d, %d] = %g for an empty request (want 0)", p->name,
                             what, r, h, d, got[i]);
            }
    for (size_t i = 0; i < out_words; ++i)
        if (!in_view[i] && rb->out[i] != POISON16)
            fail_msg("%s: %s: out buffer word %zu outside the view was written (0x%04x)", p->name,
                     what, i, rb->out[i]);
    free(in_view);

    const double tol = out_tolerance(p->q_dtype);
    size_t worst = 0;
    const double err = test_relative_error(got, ref_out, n, &worst);
    if (!(err <= tol)) {
        const size_t d = worst % (size_t)p->d, h = worst / (size_t)p->d % (size_t)p->hq,
                     r = worst / ((size_t)p->d * (size_t)p->hq);
        fail_msg("%s: %s: out relative error %.3g > %.3g; worst out[%zu, %zu, %zu] (request %zu, "
                 "kv_len %d) = %.6g, reference %.6g (seed 0x%llx)",
                 p->name, what, err, tol, r, h, d, r / (size_t)p->qo_len,
                 p->kv_lens[r / (size_t)p->qo_len], got[worst], ref_out[worst],
                 (unsigned long long)test_seed());
    }
    free(got);
    if (getenv("FLP_TEST_VERBOSE"))
        print_message("  %s: %s: out error %.2e (tolerance %.1e)\n", p->name, what, err, tol);

    bool *lse_in_view = xcalloc(lse_words, sizeof(bool));
    if (p->lse) {
        const double ltol = lse_tolerance(p->q_dtype);
        for (int32_t r = 0; r < p->rows; ++r)
            for (int32_t h = 0; h < p->hq; ++h) {
                const size_t at = lse_index(p, r, h);
                lse_in_view[at] = true;
                if (rb->lse[at] == POISON32)
                    fail_msg("%s: %s: lse[%d, %d] was not written", p->name, what, r, h);
                const double g = f32_of(rb->lse[at]), want = ref_lse[(size_t)r * p->hq + h];
                if (isinf(want) && want < 0) {
                    if (!(isinf(g) && g < 0))
                        fail_msg("%s: %s: lse[%d, %d] = %g, want -inf (no key)", p->name, what, r,
                                 h, g);
                } else if (!(fabs(g - want) <= ltol * fmax(1.0, fabs(want)))) {
                    fail_msg("%s: %s: lse[%d, %d] = %.7g, reference %.7g (tolerance %.1g, seed "
                             "0x%llx)",
                             p->name, what, r, h, g, want, ltol, (unsigned long long)test_seed());
                }
            }
    }
    for (size_t i = 0; i < lse_words; ++i)
        if (!lse_in_view[i] && rb->lse[i] != POISON32)
            fail_msg("%s: %s: lse buffer word %zu was written (0x%08x) %s", p->name, what, i,
                     rb->lse[i], p->lse ? "outside the view" : "with lse off");
    free(lse_in_view);
}

/* Reads back and checks against the float64 reference of p. */
static void check_against_reference(const problem *p, const dev_problem *dv, const char *what) {
    const size_t n = (size_t)p->rows * (size_t)p->hq * (size_t)p->d;
    double *ref = xcalloc(n, sizeof(double));
    double *ref_lse = xcalloc((size_t)p->rows * (size_t)p->hq, sizeof(double));
    problem_reference(p, ref, ref_lse);
    readback rb;
    read_outputs(dv, &rb);
    check_outputs(p, &rb, dv->out_bytes / 2, dv->lse_bytes / 4, ref, ref_lse, what);
    readback_free(&rb);
    free(ref);
    free(ref_lse);
}

/* ---- 1. the case table ----------------------------------------------------------------------- */

static void test_case(void **state) {
    const decode_case *c = *state;
    test_rng rng;
    test_rng_init(&rng, name_seed(c->name));
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
    if (g.alibi) {
        v->pos_encoding = FLP_POS_ALIBI;
        if (g.alibi_slopes) {
            p.alibi_slopes = xcalloc((size_t)g.num_qo_heads, sizeof(float));
            memcpy(p.alibi_slopes, g.alibi_slopes, sizeof(float) * (size_t)g.num_qo_heads);
        }
    }
    if (g.rope) {
        v->pos_encoding = FLP_POS_ROPE_LLAMA;
        v->rope = g.rope_params;
    }
    /* The case's page table and pool as given. */
    p.batch = g.batch;
    p.rows = g.nnz;
    p.num_pages = p.device_pages = g.num_pages;
    const int32_t np = g.kv_indptr[g.batch];
    p.kv_lens = xcalloc((size_t)g.batch, sizeof(int32_t));
    p.kv_indptr = xcalloc((size_t)g.batch + 1, sizeof(int32_t));
    p.kv_last_page_len = xcalloc((size_t)g.batch, sizeof(int32_t));
    p.kv_indices = xcalloc((size_t)np, sizeof(int32_t));
    p.dev_indices = xcalloc((size_t)np, sizeof(int32_t));
    memcpy(p.kv_lens, g.kv_lens, sizeof(int32_t) * (size_t)g.batch);
    memcpy(p.kv_indptr, g.kv_indptr, sizeof(int32_t) * ((size_t)g.batch + 1));
    memcpy(p.kv_last_page_len, g.kv_last_page_len, sizeof(int32_t) * (size_t)g.batch);
    memcpy(p.kv_indices, g.kv_indices, sizeof(int32_t) * (size_t)np);
    memcpy(p.dev_indices, g.kv_indices, sizeof(int32_t) * (size_t)np);
    const size_t nq = (size_t)g.nnz * (size_t)g.num_qo_heads * (size_t)g.head_dim;
    p.q = xcalloc(nq, sizeof(float));
    memcpy(p.q, g.q, sizeof(float) * nq);
    p.k_raw = xcalloc(g.kv_elems, sizeof(float));
    p.v_raw = xcalloc(g.kv_elems, sizeof(float));
    memcpy(p.k_raw, g.k, sizeof(float) * g.kv_elems);
    memcpy(p.v_raw, g.v, sizeof(float) * g.kv_elems);

    dev_problem dv;
    dev_create(&p, p.rows, &dv);
    flp_plan *plan = create_plan_for(&p);
    plan_problem(&p, plan);
    run_problem(&p, &dv, plan);
    readback rb;
    read_outputs(&dv, &rb);
    check_outputs(&p, &rb, dv.out_bytes / 2, dv.lse_bytes / 4, g.out, g.lse, "golden");
    readback_free(&rb);
    flp_plan_destroy(plan);
    dev_free(&dv);
    problem_free(&p);
    golden_free(&g);
}

/* ---- 3. determinism -------------------------------------------------------------------------- */

static void test_determinism(void **state) {
    (void)state;
    test_rng rng;
    test_rng_init(&rng, name_seed("determinism"));
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

    readback first, again;
    run_problem(&p, &dv, plan);
    check_against_reference(&p, &dv, "first run");
    read_outputs(&dv, &first);
    for (int pass = 0; pass < 2; ++pass) {
        if (pass == 1)
            plan_problem(&p, plan); /* re-planning the same batch gives the same partition */
        run_problem(&p, &dv, plan);
        read_outputs(&dv, &again);
        for (size_t i = 0; i < dv.out_bytes / 2; ++i)
            if (first.out[i] != again.out[i])
                fail_msg("%s: out word %zu differs between runs: 0x%04x then 0x%04x",
                         pass ? "re-planned" : "same plan", i, first.out[i], again.out[i]);
        for (size_t i = 0; i < dv.lse_bytes / 4; ++i)
            if (first.lse[i] != again.lse[i])
                fail_msg("%s: lse word %zu differs between runs: 0x%08x then 0x%08x",
                         pass ? "re-planned" : "same plan", i, first.lse[i], again.lse[i]);
        readback_free(&again);
    }
    readback_free(&first);
    flp_plan_destroy(plan);
    dev_free(&dv);
    problem_free(&p);
}

/* ---- 4. re-planning within capacity, caller workspace, capacity errors ----------------------- */

#define WS_GUARD 256 /* bytes of guard pattern before and after the workspace range */
#define WS_PATTERN 0xA5

/* Checks the guards around the workspace are intact; returns whether its range was written. */
static bool check_workspace(flp_buffer *ws, size_t ws_size, const char *when) {
    const size_t total = WS_GUARD + ws_size + WS_GUARD;
    uint8_t *bytes = xcalloc(total, 1);
    assert_ok(flp_buffer_read(g_ctx, ws, 0, bytes, total));
    for (size_t i = 0; i < total; ++i)
        if ((i < WS_GUARD || i >= WS_GUARD + ws_size) && bytes[i] != WS_PATTERN)
            fail_msg("%s: workspace byte %zu outside [%d, %zu) was written", when, i, WS_GUARD,
                     WS_GUARD + ws_size);
    bool used = false;
    for (size_t i = WS_GUARD; i < WS_GUARD + ws_size && !used; ++i)
        used = bytes[i] != WS_PATTERN;
    free(bytes);
    return used;
}

static void test_replan_within_capacity(void **state) {
    (void)state;
    test_rng rng;
    test_rng_init(&rng, name_seed("replan"));
    problem p;
    problem_init(&p, "replan", 8, 2, 64, FLP_DTYPE_BF16, FLP_DTYPE_BF16, FLP_KV_LAYOUT_NHD, 16, 1);
    const int32_t max_batch = 8, max_pages = 64;
    const int32_t lens_a[] = {10, 200, 37};
    problem_set_batch(&p, &rng, 3, lens_a, 40, false); /* a pool of 60 pages */

    flp_plan_desc pd;
    memset(&pd, 0, sizeof pd);
    pd.max_batch_size = max_batch;
    pd.max_qo_len = 1;
    pd.max_pages = max_pages;
    pd.num_qo_heads = p.hq;
    pd.num_kv_heads = p.hkv;
    pd.head_dim = p.d;
    size_t ws_size = 0;
    assert_ok(flp_plan_workspace_size(g_ctx, &pd, &ws_size));
    assert_true(ws_size > 0);
    flp_buffer *ws = NULL;
    flp_buffer_desc bd = {.size = WS_GUARD + ws_size + WS_GUARD};
    assert_ok(flp_buffer_create(g_ctx, &bd, &ws));
    uint8_t *pattern = xcalloc(bd.size, 1);
    memset(pattern, WS_PATTERN, bd.size);
    assert_ok(flp_buffer_write(g_ctx, ws, 0, pattern, bd.size));
    free(pattern);
    pd.workspace = ws;
    pd.workspace_offset = WS_GUARD;
    flp_plan *plan = NULL;
    assert_ok(flp_plan_create(g_ctx, &pd, &plan));

    dev_problem dv;
    dev_create(&p, max_batch, &dv);

    /* A: 3 requests. */
    plan_problem(&p, plan);
    if (!check_workspace(ws, ws_size, "after plan A"))
        fail_msg("the plan did not write its caller workspace");
    run_problem(&p, &dv, plan);
    check_against_reference(&p, &dv, "batch A");
    check_workspace(ws, ws_size, "after run A");

    /* B: 6 requests over the same pool, one long (split), one empty; new page table. */
    const int32_t lens_b[] = {1, 0, 700, 64, 16, 3};
    problem_set_batch(&p, &rng, 6, lens_b, 0, false);
    assert_true(total_pages(&p) <= max_pages);
    dev_write_q(&p, &dv);
    plan_problem(&p, plan);
    run_problem(&p, &dv, plan);
    check_against_reference(&p, &dv, "batch B (re-planned)");
    check_workspace(ws, ws_size, "after run B");

    /* C: back to a small batch at full batch capacity. */
    const int32_t lens_c[] = {5, 9, 1, 33, 2, 17, 60, 8};
    problem_set_batch(&p, &rng, max_batch, lens_c, 0, false);
    dev_write_q(&p, &dv);
    plan_problem(&p, plan);
    run_problem(&p, &dv, plan);
    check_against_reference(&p, &dv, "batch C (re-planned)");
    check_workspace(ws, ws_size, "after run C");

    size_t ws_again = 0;
    assert_ok(flp_plan_workspace_size(g_ctx, &pd, &ws_again));
    assert_int_equal(ws_again, ws_size);

    flp_plan_destroy(plan);
    check_workspace(ws, ws_size, "after destroying the plan");
    flp_buffer_destroy(ws);
    dev_free(&dv);
    problem_free(&p);
}

static void expect_message(flp_status got, flp_status want, const char *call,
                           const char *const *keys);
#define KEYS(...) ((const char *const[]){__VA_ARGS__, NULL})

static void test_capacity(void **state) {
    (void)state;
    test_rng rng;
    test_rng_init(&rng, name_seed("capacity"));
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
    expect_message(flp_decode_plan(g_ctx, plan, &a), FLP_ERROR_CAPACITY, "batch 5 > max 4",
                   KEYS("batch"));
    /* 12 pages > max_pages 10 in one request */
    const int32_t indptr1[] = {0, 12};
    const int32_t last1[] = {16};
    a = plan_args(&p);
    a.batch_size = 1;
    a.kv_indptr = indptr1;
    a.kv_indices = p.dev_indices + p.kv_indptr[5];
    a.kv_last_page_len = last1;
    expect_message(flp_decode_plan(g_ctx, plan, &a), FLP_ERROR_CAPACITY, "12 pages > max 10",
                   KEYS("page"));
    /* qo_len 2 > max_qo_len 1 */
    a = plan_args(&p);
    a.batch_size = 2;
    a.qo_len = 2;
    a.variant.mask = FLP_MASK_CAUSAL;
    expect_message(flp_decode_plan(g_ctx, plan, &a), FLP_ERROR_CAPACITY, "qo_len 2 > max 1",
                   KEYS("qo_len"));

    /* After the failures the plan takes a valid batch at full capacity. */
    const int32_t ok_lens[] = {20, 30, 40, 40}; /* 10 pages */
    problem_set_batch(&p, &rng, 4, ok_lens, 0, false);
    assert_true(total_pages(&p) <= 10);
    dev_problem dv;
    dev_create(&p, p.rows, &dv);
    g_expect_errors = false; /* from here on an error is unexpected: print it */
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
    test_rng_init(&rng, name_seed("large_pool"));
    problem p;
    problem_init(&p, "large_pool", 8, 1, 128, FLP_DTYPE_F16, FLP_DTYPE_F16, FLP_KV_LAYOUT_NHD, 16,
                 1);
    p.interleaved_kv = true; /* one buffer: [pages, 2, 16, 1, 128] f16 = 8 KiB per page */
    const size_t page_bytes = 2 * page_elems(&p) * 2;
    const size_t pool_bytes = (size_t)160 << 20;
    if (g_info.max_buffer_bytes < pool_bytes) {
        print_message("skipped: max_buffer_bytes %zu < %zu\n", g_info.max_buffer_bytes, pool_bytes);
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

/* Lower-case copy for case-insensitive search. */
static bool contains_ci(const char *hay, const char *needle) {
    char h[4096], n[128];
    size_t i;
    for (i = 0; hay[i] && i + 1 < sizeof h; ++i)
        h[i] = (char)tolower((unsigned char)hay[i]);
    h[i] = '\0';
    for (i = 0; needle[i] && i + 1 < sizeof n; ++i)
        n[i] = (char)tolower((unsigned char)needle[i]);
    n[i] = '\0';
    return strstr(h, n) != NULL;
}

/* The call returned want, and (keys != NULL) the context's message is non-empty and contains
 * one of keys (case-insensitive). */
static void expect_message(flp_status got, flp_status want, const char *call,
                           const char *const *keys) {
    const char *msg = flp_context_last_error(g_ctx);
    if (got != want)
        fail_msg("%s: got %s, want %s (message: %s)", call, flp_status_string(got),
                 flp_status_string(want), msg);
    if (!keys)
        return;
    if (!msg || !*msg)
        fail_msg("%s: %s with an empty flp_context_last_error", call, flp_status_string(got));
    for (const char *const *k = keys; *k; ++k)
        if (contains_ci(msg, *k))
            return;
    fail_msg("%s: the message \"%s\" names none of the expected words (first: \"%s\")", call, msg,
             keys[0]);
}

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
    test_rng_init(&rng, name_seed("bad_input"));
    problem_init(&e->p, "bad_input", 4, 2, 64, FLP_DTYPE_F16, FLP_DTYPE_F16, FLP_KV_LAYOUT_NHD, 16,
                 1);
    const int32_t lens[] = {20, 35};
    problem_set_batch(&e->p, &rng, 2, lens, 3, false);
    dev_create(&e->p, e->p.rows, &e->dv);
    e->plan = create_plan_for(&e->p);
    plan_problem(&e->p, e->plan);
    dev_poison(&e->dv);
    e->pa = plan_args(&e->p);
    e->ra = run_args(&e->p, &e->dv);
}

/* The outputs still hold the poison. */
static void expect_untouched(const bad_env *e, const char *call) {
    readback rb;
    read_outputs(&e->dv, &rb);
    for (size_t i = 0; i < e->dv.out_bytes / 2; ++i)
        if (rb.out[i] != POISON16)
            fail_msg("%s: out word %zu was written by a failed call (0x%04x)", call, i, rb.out[i]);
    for (size_t i = 0; i < e->dv.lse_bytes / 4; ++i)
        if (rb.lse[i] != POISON32)
            fail_msg("%s: lse word %zu was written by a failed call", call, i);
    readback_free(&rb);
}

static void bad_expect(const bad_env *e, flp_status got, flp_status want, const char *call,
                       const char *const *keys) {
    expect_message(got, want, call, keys);
    expect_untouched(e, call);
}

/* After the failures: the context and plan still work (re-plan, run, correct). */
static void bad_env_finish(bad_env *e) {
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
               "bf16 q with an f16 variant", KEYS("dtype", "f16"));
    r = e.ra;
    r.q.dtype = FLP_DTYPE_F32;
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
               "f32 q with an f16 variant", KEYS("dtype", "f16", "f32"));
    bad_env_finish(&e);
}

static void test_bad_q_shape(void **state) {
    (void)state;
    bad_env e;
    bad_env_init(&e);
    flp_decode_run_args r = e.ra;
    r.q.shape[1] = e.p.hq - 1;
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
               "q with too few heads", KEYS("q", "head"));
    r = e.ra;
    r.q.shape[0] = e.p.rows - 1;
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
               "q with too few rows", KEYS("q", "row", "batch"));
    bad_env_finish(&e);
}

static void test_bad_out(void **state) {
    (void)state;
    bad_env e;
    bad_env_init(&e);
    flp_decode_run_args r = e.ra;
    r.out.dtype = FLP_DTYPE_BF16;
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
               "bf16 out with f16 q", KEYS("out"));
    r = e.ra;
    r.out.shape[0] = e.p.rows - 1;
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
               "out with fewer rows than q", KEYS("out"));
    r = e.ra;
    r.out.shape[1] = e.p.hq - 1;
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
               "out with fewer heads than q", KEYS("out"));
    r = e.ra;
    r.out.ndim = 2;
    r.out.shape[1] = e.p.hq * e.p.d;
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT, "2-d out",
               KEYS("out"));
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
               "caches with 1 KV head, plan 2", KEYS("head", "k_cache", "shape"));
    r = e.ra;
    r.k_cache.shape[3] = 32;
    r.v_cache.shape[3] = 32;
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
               "caches with head_dim 32, plan 64", KEYS("head_dim", "k_cache", "shape"));
    r = e.ra;
    r.k_cache.shape[1] = 8;
    r.v_cache.shape[1] = 8;
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
               "caches with page_size 8, plan 16", KEYS("page", "k_cache", "shape"));
    r = e.ra;
    r.v_cache.shape[2] = e.p.hkv - 1;
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
               "v_cache shape differs from k_cache", KEYS("v_cache", "v cache", "shape"));
    r = e.ra;
    r.k_cache.ndim = 3;
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT, "3-d k_cache",
               KEYS("k_cache", "k cache", "dim"));
    r = e.ra;
    r.k_cache.dtype = FLP_DTYPE_BF16;
    r.v_cache.dtype = FLP_DTYPE_BF16;
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
               "bf16 caches with an f16 variant", KEYS("dtype", "k_cache", "kv"));
    bad_env_finish(&e);
}

static void test_bad_heads(void **state) {
    (void)state;
    flp_plan_desc pd;
    memset(&pd, 0, sizeof pd);
    pd.max_batch_size = 4;
    pd.max_pages = 16;
    pd.num_qo_heads = 6;
    pd.num_kv_heads = 4;
    pd.head_dim = 64;
    flp_plan *plan = NULL;
    expect_message(flp_plan_create(g_ctx, &pd, &plan), FLP_ERROR_INVALID_ARGUMENT,
                   "6 query heads over 4 KV heads", KEYS("head"));
    assert_null(plan);
    pd.num_kv_heads = 0;
    expect_message(flp_plan_create(g_ctx, &pd, &plan), FLP_ERROR_INVALID_ARGUMENT, "0 KV heads",
                   KEYS("head"));
    assert_null(plan);
}

static void test_bad_page_ids(void **state) {
    (void)state;
    bad_env e;
    bad_env_init(&e);
    const int32_t n = total_pages(&e.p);
    int32_t *ids = xcalloc((size_t)n, sizeof(int32_t));
    /* A page id == pages in k_cache: the plan cannot know, the run must refuse. */
    memcpy(ids, e.p.dev_indices, sizeof(int32_t) * (size_t)n);
    ids[n - 1] = (int32_t)e.ra.k_cache.shape[0];
    flp_decode_plan_args a = e.pa;
    a.kv_indices = ids;
    assert_ok(flp_decode_plan(g_ctx, e.plan, &a));
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, &e.ra), FLP_ERROR_INVALID_ARGUMENT,
               "page id == pages of k_cache", KEYS("page", "kv_indices"));
    ids[n - 1] = 1 << 30;
    assert_ok(flp_decode_plan(g_ctx, e.plan, &a));
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, &e.ra), FLP_ERROR_INVALID_ARGUMENT, "page id 2^30",
               KEYS("page", "kv_indices"));
    /* Negative: refused by the plan. */
    memcpy(ids, e.p.dev_indices, sizeof(int32_t) * (size_t)n);
    ids[0] = -1;
    bad_expect(&e, flp_decode_plan(g_ctx, e.plan, &a), FLP_ERROR_INVALID_ARGUMENT, "page id -1",
               KEYS("page", "kv_indices"));
    free(ids);
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
               "kv_last_page_len 0", KEYS("last_page", "last page"));
    last[1] = e.p.page_size + 1;
    bad_expect(&e, flp_decode_plan(g_ctx, e.plan, &a), FLP_ERROR_INVALID_ARGUMENT,
               "kv_last_page_len > page_size", KEYS("last_page", "last page"));
    last[1] = -3;
    bad_expect(&e, flp_decode_plan(g_ctx, e.plan, &a), FLP_ERROR_INVALID_ARGUMENT,
               "kv_last_page_len -3", KEYS("last_page", "last page"));
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
               "kv_indptr[0] = 1", KEYS("kv_indptr", "indptr"));
    memcpy(indptr, e.p.kv_indptr, sizeof indptr);
    indptr[1] = indptr[2] + 1; /* decreasing */
    bad_expect(&e, flp_decode_plan(g_ctx, e.plan, &a), FLP_ERROR_INVALID_ARGUMENT,
               "decreasing kv_indptr", KEYS("kv_indptr", "indptr"));
    bad_env_finish(&e);
}

static void test_bad_null(void **state) {
    (void)state;
    bad_env e;
    bad_env_init(&e);
    bad_expect(&e, flp_decode_run(NULL, e.plan, &e.ra), FLP_ERROR_INVALID_ARGUMENT, "run: ctx NULL",
               NULL);
    bad_expect(&e, flp_decode_run(g_ctx, NULL, &e.ra), FLP_ERROR_INVALID_ARGUMENT, "run: plan NULL",
               KEYS("plan"));
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, NULL), FLP_ERROR_INVALID_ARGUMENT,
               "run: args NULL", KEYS("args", "null"));
    bad_expect(&e, flp_decode_plan(NULL, e.plan, &e.pa), FLP_ERROR_INVALID_ARGUMENT,
               "plan: ctx NULL", NULL);
    bad_expect(&e, flp_decode_plan(g_ctx, NULL, &e.pa), FLP_ERROR_INVALID_ARGUMENT,
               "plan: plan NULL", KEYS("plan"));
    bad_expect(&e, flp_decode_plan(g_ctx, e.plan, NULL), FLP_ERROR_INVALID_ARGUMENT,
               "plan: args NULL", KEYS("args", "null"));
    flp_decode_plan_args a = e.pa;
    a.kv_indptr = NULL;
    bad_expect(&e, flp_decode_plan(g_ctx, e.plan, &a), FLP_ERROR_INVALID_ARGUMENT, "kv_indptr NULL",
               KEYS("kv_indptr"));
    a = e.pa;
    a.kv_indices = NULL;
    bad_expect(&e, flp_decode_plan(g_ctx, e.plan, &a), FLP_ERROR_INVALID_ARGUMENT,
               "kv_indices NULL", KEYS("kv_indices"));
    a = e.pa;
    a.kv_last_page_len = NULL;
    bad_expect(&e, flp_decode_plan(g_ctx, e.plan, &a), FLP_ERROR_INVALID_ARGUMENT,
               "kv_last_page_len NULL", KEYS("kv_last_page_len", "last_page"));
    flp_decode_run_args r = e.ra;
    r.q.buf = NULL;
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT, "q.buf NULL",
               KEYS("q.buf", "q:", "q ", "'q'", "buf"));
    r = e.ra;
    r.k_cache.buf = NULL;
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
               "k_cache.buf NULL", KEYS("k_cache", "k cache"));
    r = e.ra;
    r.out.buf = NULL;
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT, "out.buf NULL",
               KEYS("out"));
    flp_plan_desc pd;
    memset(&pd, 0, sizeof pd);
    pd.max_batch_size = 2;
    pd.max_pages = 4;
    pd.num_qo_heads = pd.num_kv_heads = 1;
    pd.head_dim = 64;
    flp_plan *plan = NULL;
    expect_message(flp_plan_create(g_ctx, NULL, &plan), FLP_ERROR_INVALID_ARGUMENT,
                   "plan_create: desc NULL", KEYS("desc", "null"));
    expect_message(flp_plan_create(g_ctx, &pd, NULL), FLP_ERROR_INVALID_ARGUMENT,
                   "plan_create: out NULL", KEYS("out", "null"));
    expect_message(flp_plan_create(NULL, &pd, &plan), FLP_ERROR_INVALID_ARGUMENT,
                   "plan_create: ctx NULL", NULL);
    bad_env_finish(&e);
}

static void test_bad_run_before_plan(void **state) {
    (void)state;
    bad_env e;
    bad_env_init(&e);
    flp_plan *fresh = create_plan_for(&e.p);
    bad_expect(&e, flp_decode_run(g_ctx, fresh, &e.ra), FLP_ERROR_INVALID_ARGUMENT,
               "run before any plan", KEYS("plan"));
    flp_plan_destroy(fresh);
    bad_env_finish(&e);
}

static void test_bad_lse(void **state) {
    (void)state;
    bad_env e;
    bad_env_init(&e);
    flp_tensor lse = e.dv.lse;
    flp_decode_run_args r = e.ra;
    r.lse = &lse;
    lse.dtype = FLP_DTYPE_F16;
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT, "f16 lse",
               KEYS("lse"));
    lse = e.dv.lse;
    lse.shape[1] = e.p.hq - 1;
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
               "lse with too few heads", KEYS("lse"));
    lse = e.dv.lse;
    lse.shape[0] = e.p.rows + 1;
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
               "lse with too many rows", KEYS("lse"));
    lse = e.dv.lse;
    lse.ndim = 1;
    lse.shape[0] = (int64_t)e.p.rows * e.p.hq;
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT, "1-d lse",
               KEYS("lse"));
    bad_env_finish(&e);
}

static void test_bad_head_dim(void **state) {
    (void)state;
    flp_plan_desc pd;
    memset(&pd, 0, sizeof pd);
    pd.max_batch_size = 2;
    pd.max_pages = 4;
    pd.num_qo_heads = 4;
    pd.num_kv_heads = 2;
    pd.head_dim = 96;
    flp_plan *plan = NULL;
    const flp_status st = flp_plan_create(g_ctx, &pd, &plan);
    if (st == FLP_OK) {
        flp_plan_destroy(plan);
        fail_msg("flp_plan_create with head_dim 96 succeeded");
    }
    expect_message(st, st == FLP_ERROR_UNSUPPORTED ? st : FLP_ERROR_INVALID_ARGUMENT,
                   "plan with head_dim 96", KEYS("head_dim", "96"));

    /* The variant's head_dim: 96 (unsupported) and 128 (plan says 64). */
    bad_env e;
    bad_env_init(&e);
    flp_decode_plan_args a = e.pa;
    a.variant.head_dim = 96;
    const flp_status st2 = flp_decode_plan(g_ctx, e.plan, &a);
    bad_expect(&e, st2, st2 == FLP_ERROR_UNSUPPORTED ? st2 : FLP_ERROR_INVALID_ARGUMENT,
               "variant head_dim 96", KEYS("head_dim", "96"));
    a.variant.head_dim = 128;
    bad_expect(&e, flp_decode_plan(g_ctx, e.plan, &a), FLP_ERROR_INVALID_ARGUMENT,
               "variant head_dim 128, plan 64", KEYS("head_dim"));
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
               "window_left -1 with use_window", KEYS("window"));
    a = e.pa;
    a.variant.logits_soft_cap = -1.0f;
    bad_expect(&e, flp_decode_plan(g_ctx, e.plan, &a), FLP_ERROR_INVALID_ARGUMENT, "soft cap -1",
               KEYS("cap"));
    a = e.pa;
    a.variant.sm_scale = -0.5f;
    bad_expect(&e, flp_decode_plan(g_ctx, e.plan, &a), FLP_ERROR_INVALID_ARGUMENT, "sm_scale -0.5",
               KEYS("scale"));
    a = e.pa;
    a.variant.q_dtype = FLP_DTYPE_E4M3;
    bad_expect(&e, flp_decode_plan(g_ctx, e.plan, &a), FLP_ERROR_INVALID_ARGUMENT, "e4m3 q_dtype",
               KEYS("dtype"));
    a = e.pa;
    a.variant.logits_transform = "return logit * 2.0;";
    bad_expect(&e, flp_decode_plan(g_ctx, e.plan, &a), FLP_ERROR_UNSUPPORTED,
               "logits_transform snippet", KEYS("snippet", "transform", "jit"));
    a = e.pa;
    a.variant.output_transform = "return x;";
    bad_expect(&e, flp_decode_plan(g_ctx, e.plan, &a), FLP_ERROR_UNSUPPORTED,
               "output_transform snippet", KEYS("snippet", "transform", "jit"));
    bad_env_finish(&e);
}

static void test_bad_page_size(void **state) {
    (void)state;
    bad_env e;
    bad_env_init(&e);
    flp_decode_plan_args a = e.pa;
    a.page_size = 0;
    bad_expect(&e, flp_decode_plan(g_ctx, e.plan, &a), FLP_ERROR_INVALID_ARGUMENT, "page_size 0",
               KEYS("page_size", "page size"));
    a.page_size = FLP_MAX_PAGE_SIZE + 1;
    bad_expect(&e, flp_decode_plan(g_ctx, e.plan, &a), FLP_ERROR_INVALID_ARGUMENT, "page_size 129",
               KEYS("page_size", "page size"));
    bad_env_finish(&e);
}

/* A q view over a buffer twice the size of q's (so that stretched strides stay inside it). */
static flp_buffer *big_q_buffer(const bad_env *e) {
    flp_buffer *big = NULL;
    flp_buffer_desc bd = {.size = e->dv.q_bytes * 2};
    assert_ok(flp_buffer_create(g_ctx, &bd, &big));
    return big;
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
               "q with last-dim stride 2", KEYS("stride", "contiguous"));
    r = e.ra;
    r.q.buf = big;
    r.q.stride[0] += 4; /* 8 bytes more than dense: not a multiple of 16 bytes */
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
               "q row stride not a multiple of 16 bytes", KEYS("stride", "align"));
    flp_buffer_destroy(big);
    r = e.ra;
    r.q.offset = 2; /* 2-byte aligned only (the view still fits: the buffer has 64 spare bytes) */
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
               "q offset 2 bytes", KEYS("align", "offset"));
    r = e.ra;
    r.out.offset = e.dv.out_bytes - 16; /* the view runs past the end of its buffer */
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
               "out past the end of its buffer",
               KEYS("buffer", "bound", "range", "exceed", "size", "past"));
    r = e.ra;
    r.k_cache.shape[0] = e.ra.k_cache.shape[0] + 1;
    r.v_cache.shape[0] = e.ra.v_cache.shape[0] + 1;
    bad_expect(&e, flp_decode_run(g_ctx, e.plan, &r), FLP_ERROR_INVALID_ARGUMENT,
               "k_cache one page larger than its buffer",
               KEYS("buffer", "bound", "range", "exceed", "size", "past"));
    bad_env_finish(&e);
}

static void test_bad_workspace(void **state) {
    (void)state;
    flp_plan_desc pd;
    memset(&pd, 0, sizeof pd);
    pd.max_batch_size = 4;
    pd.max_pages = 16;
    pd.num_qo_heads = 4;
    pd.num_kv_heads = 2;
    pd.head_dim = 64;
    size_t size = 0;
    assert_ok(flp_plan_workspace_size(g_ctx, &pd, &size));
    flp_buffer *ws = NULL;
    flp_buffer_desc bd = {.size = size + 512};
    assert_ok(flp_buffer_create(g_ctx, &bd, &ws));
    flp_plan *plan = NULL;
    pd.workspace = ws;
    pd.workspace_offset = 100;
    expect_message(flp_plan_create(g_ctx, &pd, &plan), FLP_ERROR_INVALID_ARGUMENT,
                   "workspace_offset 100", KEYS("workspace"));
    assert_null(plan);
    pd.workspace_offset = 768; /* 768 + size > size + 512 */
    const flp_status st = flp_plan_create(g_ctx, &pd, &plan);
    expect_message(st, st == FLP_ERROR_CAPACITY ? st : FLP_ERROR_INVALID_ARGUMENT,
                   "workspace too small", KEYS("workspace"));
    assert_null(plan);
    pd.workspace = NULL;
    pd.workspace_offset = 0;
    pd.max_qo_len = FLP_DECODE_MAX_QO_LEN + 1;
    expect_message(flp_plan_create(g_ctx, &pd, &plan), FLP_ERROR_INVALID_ARGUMENT, "max_qo_len 9",
                   KEYS("qo_len"));
    assert_null(plan);
    flp_buffer_destroy(ws);
}

/* ---- main ------------------------------------------------------------------------------------ */

static int group_setup(void **state) {
    (void)state;
    if (flp_context_get_info(g_ctx, &g_info) != FLP_OK) {
        print_error("flp_context_get_info failed: %s\n", flp_context_last_error(g_ctx));
        return -1;
    }
    print_message("%s: %s (%s), %d compute units, subgroup %d, max buffer %zu MiB\n",
                  g_info.backend_name, g_info.device_name, g_info.driver_info, g_info.compute_units,
                  g_info.subgroup_size, g_info.max_buffer_bytes >> 20);
    if (validation_count() > 0) {
        print_error("ERROR: %u Vulkan validation message(s) while creating the context (last "
                    "log: %s)\n",
                    validation_count(), g_last_log);
        return -1;
    }
    return 0;
}

static int group_teardown(void **state) {
    (void)state;
    flp_context_destroy(g_ctx);
    g_ctx = NULL;
    return 0;
}

#define GOOD(f)                                                                                    \
    { #f, f, setup_good, teardown_good, NULL }
#define BAD(f)                                                                                     \
    { #f, f, setup_bad, teardown_bad, NULL }

int main(int argc, char **argv) {
    if (argc < 2 || (strcmp(argv[1], "vulkan") != 0 && strcmp(argv[1], "cuda") != 0)) {
        fprintf(stderr, "usage: %s vulkan|cuda [test name filter]\n", argv[0]);
        return 2;
    }
    g_backend_name = argv[1];
    g_backend = strcmp(argv[1], "vulkan") == 0 ? FLP_BACKEND_VULKAN : FLP_BACKEND_CUDA;
    if (g_backend == FLP_BACKEND_VULKAN)
        setenv("FLP_VULKAN_VALIDATION", "1", 0);

    flp_context_desc desc;
    memset(&desc, 0, sizeof desc);
    desc.backend = g_backend;
    desc.log = on_log;
    desc.log_level = FLP_LOG_WARNING;
    g_expect_errors = true; /* a missing backend is reported below, not as an error */
    const flp_status st = flp_context_create(&desc, &g_ctx);
    g_expect_errors = false;
    if (st == FLP_ERROR_UNSUPPORTED) {
        printf("skipped: no %s backend or device: %s\n", g_backend_name,
               g_last_log[0] ? g_last_log : "(no message)");
        return 77;
    }
    if (st != FLP_OK) {
        fprintf(stderr, "flp_context_create(%s) failed: %s: %s\n", g_backend_name,
                flp_status_string(st), g_last_log);
        return 1;
    }

    static const struct CMUnitTest fixed[] = {
        GOOD(test_determinism),      GOOD(test_replan_within_capacity),
        BAD(test_capacity),          GOOD(test_large_pool),
        BAD(test_bad_q_dtype),       BAD(test_bad_q_shape),
        BAD(test_bad_out),           BAD(test_bad_kv_shape),
        BAD(test_bad_heads),         BAD(test_bad_page_ids),
        BAD(test_bad_last_page_len), BAD(test_bad_kv_indptr),
        BAD(test_bad_null),          BAD(test_bad_run_before_plan),
        BAD(test_bad_lse),           BAD(test_bad_head_dim),
        BAD(test_bad_variant),       BAD(test_bad_page_size),
        BAD(test_bad_tensor_layout), BAD(test_bad_workspace),
    };
    const size_t num_fixed = sizeof fixed / sizeof fixed[0];
    int num_golden = 0;
    const char *const *golden = golden_case_names(&num_golden);
    const size_t max_tests = DECODE_CASE_COUNT + (size_t)num_golden + num_fixed;
    struct CMUnitTest *tests = calloc(max_tests, sizeof *tests);
    char **names = calloc(max_tests, sizeof *names);
    if (!tests || !names) {
        flp_context_destroy(g_ctx);
        return 1;
    }
    size_t n = 0;
    for (size_t i = 0; i < DECODE_CASE_COUNT; ++i, ++n) {
        names[n] = malloc(strlen(decode_cases[i].name) + 8);
        if (!names[n])
            return 1;
        sprintf(names[n], "case_%s", decode_cases[i].name);
        tests[n] = (struct CMUnitTest){names[n], test_case, setup_good, teardown_good,
                                       (void *)&decode_cases[i]};
    }
    for (int i = 0; i < num_golden; ++i) {
        if (strncmp(golden[i], "decode_", 7) != 0)
            continue;
        names[n] = malloc(strlen(golden[i]) + 8);
        if (!names[n])
            return 1;
        sprintf(names[n], "golden_%s", golden[i]);
        tests[n] = (struct CMUnitTest){names[n], test_golden, setup_good, teardown_good,
                                       (void *)golden[i]};
        n++;
    }
    if (n == DECODE_CASE_COUNT) {
        fprintf(stderr, "no decode_* golden case found in %s/index.json\n", golden_dir());
        flp_context_destroy(g_ctx);
        return 1;
    }
    for (size_t i = 0; i < num_fixed; ++i)
        tests[n++] = fixed[i];
    if (argc > 2)
        cmocka_set_test_filter(argv[2]);

    char group[64];
    snprintf(group, sizeof group, "decode-%s", g_backend_name);
    const int failed = _cmocka_run_group_tests(group, tests, n, group_setup, group_teardown);
    for (size_t i = 0; i < max_tests; ++i)
        free(names[i]);
    free(names);
    free(tests);
    return failed ? 1 : 0;
}
