/* The state merge reference suite (flashport.h, "merging attention states": flp_merge_state,
 * flp_merge_state_in_place, flp_merge_states), run once per backend:
 *
 *     test_merge vulkan|cuda [cmocka test filter]
 *
 * Exits 77 (skipped) when the backend is not built or has no device. For Vulkan the Khronos
 * validation layer is on (FLP_VULKAN_VALIDATION=1 unless the environment says otherwise; =0 turns
 * it off), a missing layer fails the run (exit 1), and any validation message fails the test
 * during which it appeared.
 *
 * Tests:
 * - pair_*: flp_merge_state over a case table: every o dtype (f32, f16, bf16) for a, b and out,
 *   all equal and mixed; head_dim 1, 7, 24, 64, 100, 128, 256; several rows and heads; dense,
 *   padded (row stride > heads x head stride, head stride > head_dim, views at an offset) and
 *   head-major (head stride > row stride) views; out.lse written or absent. Inputs: o uniform in
 *   [-1, 1) rounded to the dtype (never 0), lse uniform in [-20, 20], some -inf, equal lse pairs,
 *   a row where both states are -inf, rows where only one of them is; 66000 (row, head) units
 *   (more than one grid dimension of 65535 workgroups);
 * - exact_*: a -inf state merged with a finite one gives exactly the finite one's o (rounded to
 *   the out dtype) and lse; two -inf states give o = +0 (all bits zero) and lse = -inf;
 * - in_place_*: flp_merge_state with out == a, out == b, out.o == a.o with no lse written;
 *   flp_merge_state_in_place with and without a mask (at byte offset 3; bytes 0, 1, 0x80, ...:
 *   rows with a 0 byte bit for bit unchanged);
 * - states_per_row_* and indptr_*: flp_merge_states with 1, 2, 7 states per row, a ragged indptr
 *   (rows of 0, 1, 2, 3, 4, 5 and 37 states; a row of -inf states, a row of one finite state),
 *   the indptr at a byte offset in its buffer, indptr entries out of range
 *   (clamped to [0, num_states], end <= begin empty; INT32_MIN / INT32_MAX), no states at all;
 * - whole_*: a key set's attention split into chunks (each chunk's state from float64, stored in
 *   the tensor dtype) and merged by flp_merge_states (equal chunks; ragged chunks with empty
 *   ones) or by a chain of in-place flp_merge_state calls gives the state of the whole set;
 * - nan_lse: "a NaN makes its row NaN" (docs/api.md), pair and ragged, wherever the NaN sits;
 * - determinism (same call twice, same bits), rows = 0 (FLP_OK, nothing written);
 * - bad_*: exact status, a message naming the bad thing (in the caller's names: state / other
 *   for flp_merge_state_in_place), every buffer untouched; other == state refused.
 *
 * Every output buffer is poisoned first (0xFF bytes: NaN in f32, f16 and bf16); every element of
 * an output view must be written, every byte outside the views (each view sits in a buffer with
 * room before and after it) must stay as it was, and the inputs must be unchanged.
 *
 * Error bounds, against the float64 merge (flp_ref_merge_state folded in order) of the values as
 * stored, per element: |o - ref| <= u |ref| + t(n) A + 2^-24 with u the rounding of the output
 * dtype (f32 2^-24, f16 2^-11, bf16 2^-8), A = sum w_j |o_j| / sum w_j (the size of what the
 * weights combine: f32 arithmetic error scales with it, not with |ref|, which can cancel), and
 * t(n) = 1e-5 max(1, n / 4) for n states folded; |lse - ref| <= t(n) max(1, |ref|). Rows with at
 * most one finite state are exact. FLP_TEST_VERBOSE=1 prints the worst error / bound per check. */
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
#define expect_status(got, want, call, mentions)                                                   \
    test_expect_status(g_ctx, got, want, call, mentions)
#define MENTIONS TEST_MENTIONS

#define F32 FLP_DTYPE_F32
#define F16 FLP_DTYPE_F16
#define BF16 FLP_DTYPE_BF16

#define GUARD 64     /* bytes after the last element of every view */
#define POISON 0xFFu /* NaN in f32, f16 and bf16 */

/* ---- states on the device -------------------------------------------------------------------- */

typedef enum layout_kind {
    DENSE,      /* contiguous, at offset 0 */
    PADDED,     /* head stride dim + 3, row stride heads x (dim + 3) + 5, lse row stride heads + 3,
                   views at an offset */
    HEAD_MAJOR, /* heads outermost in memory: head stride rows x (dim + 1) + 2 > row stride */
} layout_kind;

/* A state o [rows, heads, dim] of dtype and lse [rows, heads] f32, each in a buffer of its own
 * with room before (offset) and after (GUARD) the view. The host keeps the values as stored and an
 * image of what the buffers hold as far as the test knows (padding: POISON). */
typedef struct dstate {
    flp_dtype dtype;
    int32_t rows, heads, dim;
    int64_t row_stride, head_stride, lse_row_stride; /* elements */
    size_t o_offset, lse_offset;                     /* bytes */
    size_t o_bytes, lse_bytes;
    flp_buffer *o_buf, *lse_buf;
    flp_state s;      /* the views */
    float *o;         /* [rows, heads, dim] */
    float *lse;       /* [rows, heads] */
    uint8_t *img_o;   /* [o_bytes] */
    uint8_t *img_lse; /* [lse_bytes] */
} dstate;

static size_t o_at(const dstate *d, int32_t r, int32_t h, int32_t k) {
    const int64_t e = (int64_t)r * d->row_stride + (int64_t)h * d->head_stride + k;
    return d->o_offset + (size_t)e * flp_dtype_size(d->dtype);
}

static size_t lse_at(const dstate *d, int32_t r, int32_t h) {
    return d->lse_offset + (size_t)((int64_t)r * d->lse_row_stride + h) * 4u;
}

static void dstate_create(dstate *d, flp_dtype dt, int32_t rows, int32_t heads, int32_t dim,
                          layout_kind layout) {
    memset(d, 0, sizeof *d);
    d->dtype = dt;
    d->rows = rows;
    d->heads = heads;
    d->dim = dim;
    switch (layout) {
    case DENSE:
        d->head_stride = dim;
        d->row_stride = (int64_t)heads * dim;
        d->lse_row_stride = heads;
        break;
    case PADDED:
        d->head_stride = dim + 3;
        d->row_stride = (int64_t)heads * (dim + 3) + 5;
        d->lse_row_stride = heads + 3;
        d->o_offset = 48;
        d->lse_offset = 20;
        break;
    case HEAD_MAJOR:
        d->row_stride = dim + 1;
        d->head_stride = (int64_t)rows * (dim + 1) + 2;
        d->lse_row_stride = heads + 1;
        d->o_offset = 16;
        d->lse_offset = 8;
        break;
    }
    const size_t es = flp_dtype_size(dt);
    const int64_t o_span =
        rows ? (rows - 1) * d->row_stride + (int64_t)(heads - 1) * d->head_stride + dim : 0;
    const int64_t lse_span = rows ? (rows - 1) * d->lse_row_stride + heads : 0;
    d->o_bytes = d->o_offset + (size_t)o_span * es + GUARD;
    d->lse_bytes = d->lse_offset + (size_t)lse_span * 4u + GUARD;
    d->o_buf = test_buffer_new(g_ctx, d->o_bytes);
    d->lse_buf = test_buffer_new(g_ctx, d->lse_bytes);
    flp_tensor *o = &d->s.o, *l = &d->s.lse;
    o->buf = d->o_buf;
    o->offset = d->o_offset;
    o->dtype = dt;
    o->ndim = 3;
    o->shape[0] = rows;
    o->shape[1] = heads;
    o->shape[2] = dim;
    o->stride[0] = d->row_stride;
    o->stride[1] = d->head_stride;
    o->stride[2] = 1;
    l->buf = d->lse_buf;
    l->offset = d->lse_offset;
    l->dtype = F32;
    l->ndim = 2;
    l->shape[0] = rows;
    l->shape[1] = heads;
    l->stride[0] = d->lse_row_stride;
    l->stride[1] = 1;
    d->o = test_xcalloc((size_t)rows * (size_t)heads * (size_t)dim, sizeof(float));
    d->lse = test_xcalloc((size_t)rows * (size_t)heads, sizeof(float));
    d->img_o = test_xcalloc(d->o_bytes, 1);
    d->img_lse = test_xcalloc(d->lse_bytes, 1);
    memset(d->img_o, POISON, d->o_bytes);
    memset(d->img_lse, POISON, d->lse_bytes);
}

static void dstate_free(dstate *d) {
    flp_buffer_destroy(d->o_buf);
    flp_buffer_destroy(d->lse_buf);
    free(d->o);
    free(d->lse);
    free(d->img_o);
    free(d->img_lse);
    memset(d, 0, sizeof *d);
}

static void write_images(const dstate *d) {
    assert_ok(flp_buffer_write(g_ctx, d->o_buf, 0, d->img_o, d->o_bytes));
    assert_ok(flp_buffer_write(g_ctx, d->lse_buf, 0, d->img_lse, d->lse_bytes));
}

/* Uploads the host values (padding: POISON, so reading it would show). */
static void dstate_upload(dstate *d) {
    memset(d->img_o, POISON, d->o_bytes);
    memset(d->img_lse, POISON, d->lse_bytes);
    for (int32_t r = 0; r < d->rows; ++r)
        for (int32_t h = 0; h < d->heads; ++h) {
            const float *src = d->o + ((size_t)r * d->heads + h) * d->dim;
            for (int32_t k = 0; k < d->dim; ++k)
                assert_int_equal(
                    flp_convert_from_f32(d->dtype, src + k, d->img_o + o_at(d, r, h, k), 1),
                    FLP_OK);
            memcpy(d->img_lse + lse_at(d, r, h), &d->lse[(size_t)r * d->heads + h], 4);
        }
    write_images(d);
}

/* Fills both buffers with POISON (an output). */
static void dstate_poison(dstate *d) {
    memset(d->img_o, POISON, d->o_bytes);
    memset(d->img_lse, POISON, d->lse_bytes);
    write_images(d);
}

/* Fails unless the buffers hold the images (an input, or an output of a failed call). */
static void expect_unchanged(const dstate *d, const char *what) {
    uint8_t *o = test_buffer_read_all(g_ctx, d->o_buf, d->o_bytes);
    uint8_t *l = test_buffer_read_all(g_ctx, d->lse_buf, d->lse_bytes);
    for (size_t i = 0; i < d->o_bytes; ++i)
        if (o[i] != d->img_o[i])
            fail_msg("%s: o buffer byte %zu changed: 0x%02x, was 0x%02x", what, i, o[i],
                     d->img_o[i]);
    for (size_t i = 0; i < d->lse_bytes; ++i)
        if (l[i] != d->img_lse[i])
            fail_msg("%s: lse buffer byte %zu changed: 0x%02x, was 0x%02x", what, i, l[i],
                     d->img_lse[i]);
    free(o);
    free(l);
}

/* Random values: o uniform in [-1, 1) as stored (never 0), lse uniform in [-20, 20] or, with
 * probability p_neg_inf, -inf. */
static void fill_state(dstate *d, test_rng *rng, double p_neg_inf) {
    test_fill_stored(rng, d->dtype, 1.0f, d->o, (size_t)d->rows * d->heads * d->dim);
    for (size_t i = 0; i < (size_t)d->rows * d->heads; ++i)
        d->lse[i] = test_rng_uniform(rng, 0.0, 1.0) < p_neg_inf
                        ? -INFINITY
                        : (float)test_rng_uniform(rng, -20.0, 20.0);
}

static float *o_row(const dstate *d, int32_t r, int32_t h) {
    return d->o + ((size_t)r * d->heads + h) * d->dim;
}

static float *lse_of(const dstate *d, int32_t r, int32_t h) {
    return &d->lse[(size_t)r * d->heads + h];
}

/* The view of rows first, first + step, ... (count of them) of d. */
static flp_state row_subset(const dstate *d, int32_t first, int32_t step, int32_t count) {
    flp_state s = d->s;
    s.o.offset += (size_t)(first * d->row_stride) * flp_dtype_size(d->dtype);
    s.o.shape[0] = count;
    s.o.stride[0] = step * d->row_stride;
    s.lse.offset += (size_t)(first * d->lse_row_stride) * 4u;
    s.lse.shape[0] = count;
    s.lse.stride[0] = step * d->lse_row_stride;
    return s;
}

/* ---- the float64 reference ------------------------------------------------------------------- */

typedef struct expected {
    int32_t rows, heads, dim;
    double *o;   /* [rows, heads, dim] */
    double *mag; /* [rows, heads, dim]: sum w_j |o_j| / sum w_j */
    double *lse; /* [rows, heads] */
    int32_t *n;  /* [rows, heads]: states folded */
    bool *exact; /* [rows, heads]: at most one finite state */
    bool *nan;   /* [rows, heads]: a state has a NaN lse: o and lse NaN */
} expected;

static void expected_init(expected *e, int32_t rows, int32_t heads, int32_t dim) {
    const size_t rh = (size_t)rows * (size_t)heads;
    e->rows = rows;
    e->heads = heads;
    e->dim = dim;
    e->o = test_xcalloc(rh * (size_t)dim, sizeof(double));
    e->mag = test_xcalloc(rh * (size_t)dim, sizeof(double));
    e->lse = test_xcalloc(rh, sizeof(double));
    e->n = test_xcalloc(rh, sizeof(int32_t));
    e->exact = test_xcalloc(rh, sizeof(bool));
    e->nan = test_xcalloc(rh, sizeof(bool));
}

static void expected_free(expected *e) {
    free(e->o);
    free(e->mag);
    free(e->lse);
    free(e->n);
    free(e->exact);
    free(e->nan);
    memset(e, 0, sizeof *e);
}

/* Row-head rh of e = the states o[j] (dim values) with lse[j], j < n, folded in order with
 * flp_ref_merge_state from the empty state. */
static void expected_fold(expected *e, size_t rh, int32_t n, const float *const *o,
                          const float *lse) {
    const int32_t dim = e->dim;
    double *acc = e->o + rh * (size_t)dim, *mag = e->mag + rh * (size_t)dim;
    double *tmp = test_xcalloc((size_t)dim, sizeof(double));
    double s = -INFINITY, m = -INFINITY;
    int32_t finite = 0;
    for (int32_t k = 0; k < dim; ++k)
        acc[k] = mag[k] = 0.0;
    for (int32_t j = 0; j < n; ++j) {
        for (int32_t k = 0; k < dim; ++k)
            tmp[k] = o[j][k];
        flp_ref_merge_state(dim, acc, s, tmp, lse[j], acc, &s);
        if (lse[j] > -INFINITY || isnan(lse[j])) {
            finite++;
            m = fmax(m, lse[j]);
        }
    }
    if (finite > 0) {
        double sum = 0.0;
        for (int32_t j = 0; j < n; ++j) {
            if (!(lse[j] > -INFINITY))
                continue;
            const double w = exp((double)lse[j] - m);
            sum += w;
            for (int32_t k = 0; k < dim; ++k)
                mag[k] += w * fabs((double)o[j][k]);
        }
        for (int32_t k = 0; k < dim; ++k)
            mag[k] /= sum;
    }
    e->lse[rh] = s;
    e->n[rh] = n;
    e->exact[rh] = finite <= 1;
    for (int32_t j = 0; j < n; ++j)
        e->nan[rh] = e->nan[rh] || isnan(lse[j]);
    free(tmp);
}

/* out = merge(a, b) row by row. */
static void expected_pair(expected *e, const dstate *a, const dstate *b) {
    expected_init(e, a->rows, a->heads, a->dim);
    for (int32_t r = 0; r < a->rows; ++r)
        for (int32_t h = 0; h < a->heads; ++h) {
            const float *o[2] = {o_row(a, r, h), o_row(b, r, h)};
            const float lse[2] = {*lse_of(a, r, h), *lse_of(b, r, h)};
            expected_fold(e, (size_t)r * a->heads + h, 2, o, lse);
        }
}

/* Row r of out = states begin[r] .. end[r] - 1 of st (none when end <= begin). */
static void expected_ragged(expected *e, const dstate *st, int32_t rows, const int32_t *begin,
                            const int32_t *end) {
    expected_init(e, rows, st->heads, st->dim);
    const float **o = test_xcalloc((size_t)st->rows + 1, sizeof(float *));
    float *lse = test_xcalloc((size_t)st->rows + 1, sizeof(float));
    for (int32_t r = 0; r < rows; ++r)
        for (int32_t h = 0; h < st->heads; ++h) {
            const int32_t n = end[r] > begin[r] ? end[r] - begin[r] : 0;
            for (int32_t j = 0; j < n; ++j) {
                o[j] = o_row(st, begin[r] + j, h);
                lse[j] = *lse_of(st, begin[r] + j, h);
            }
            expected_fold(e, (size_t)r * st->heads + h, n, o, lse);
        }
    free(o);
    free(lse);
}

/* ---- output checks --------------------------------------------------------------------------- */

static double out_unit(flp_dtype dt) {
    return dt == F16 ? 0x1p-11 : dt == BF16 ? 0x1p-8 : 0x1p-24;
}

/* f32 arithmetic of a fold of n states, relative to A (o) or max(1, |lse|). */
static double arith_tol(int32_t n) {
    return 1e-5 * fmax(1.0, n / 4.0);
}

static uint32_t load_bits(const uint8_t *p, size_t bytes) {
    if (bytes == 4) {
        uint32_t v;
        memcpy(&v, p, 4);
        return v;
    }
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

static double bits_value(flp_dtype dt, uint32_t bits) {
    return dt == F32 ? test_f32_bits_to_double(bits) : test_half_to_double(dt, (uint16_t)bits);
}

/* x (a float) as stored in dt: the bits a correctly rounded output holds. */
static uint32_t encode(flp_dtype dt, float x) {
    uint8_t b[4] = {0};
    assert_int_equal(flp_convert_from_f32(dt, &x, b, 1), FLP_OK);
    return load_bits(b, flp_dtype_size(dt));
}

static const char *dt_name(flp_dtype dt) {
    return flp_dtype_name(dt);
}

/* Checks d after a run that wrote its views: rows with keep[r] != 0 (keep may be NULL) and every
 * byte outside the written elements must still hold d's images (POISON, or the inputs of an
 * in-place merge); the written elements must match e (exactly where e->exact). lse_written: the
 * lse view was an output (else the whole lse buffer is unchanged). The images become what was
 * read. */
static void check_out(dstate *d, const expected *e, const uint8_t *keep, bool lse_written,
                      const char *what) {
    const size_t es = flp_dtype_size(d->dtype);
    const double u = out_unit(d->dtype);
    uint8_t *got = test_buffer_read_all(g_ctx, d->o_buf, d->o_bytes);
    uint8_t *got_lse = test_buffer_read_all(g_ctx, d->lse_buf, d->lse_bytes);
    bool *done = test_xcalloc(d->o_bytes, sizeof(bool));
    bool *done_lse = test_xcalloc(d->lse_bytes, sizeof(bool));
    double worst = 0.0, worst_lse = 0.0;
    for (int32_t r = 0; r < d->rows; ++r) {
        if (keep && keep[r]) { /* masked off: as it was */
            for (int32_t h = 0; h < d->heads; ++h) {
                for (int32_t k = 0; k < d->dim; ++k) {
                    const size_t at = o_at(d, r, h, k);
                    if (memcmp(got + at, d->img_o + at, es) != 0)
                        fail_msg("%s: out.o[%d, %d, %d] of a row whose mask byte is 0 changed: "
                                 "0x%x, was 0x%x (seed 0x%llx)",
                                 what, r, h, k, load_bits(got + at, es),
                                 load_bits(d->img_o + at, es), (unsigned long long)test_seed());
                }
                const size_t at = lse_at(d, r, h);
                if (memcmp(got_lse + at, d->img_lse + at, 4) != 0)
                    fail_msg("%s: out.lse[%d, %d] of a row whose mask byte is 0 changed: 0x%08x, "
                             "was 0x%08x",
                             what, r, h, load_bits(got_lse + at, 4), load_bits(d->img_lse + at, 4));
            }
            continue;
        }
        for (int32_t h = 0; h < d->heads; ++h) {
            const size_t rh = (size_t)r * d->heads + h;
            const double tol = arith_tol(e->n[rh]);
            if (e->nan[rh]) { /* "a NaN makes its row NaN" */
                for (int32_t k = 0; k < d->dim; ++k) {
                    const size_t at = o_at(d, r, h, k);
                    for (size_t b = 0; b < es; ++b)
                        done[at + b] = true;
                    const uint32_t bits = load_bits(got + at, es);
                    if (!isnan(bits_value(d->dtype, bits)) ||
                        memcmp(got + at, d->img_o + at, es) == 0)
                        fail_msg("%s: out.o[%d, %d, %d] (%s) = %.9g (0x%x), want NaN (written): a "
                                 "state of the row has a NaN lse",
                                 what, r, h, k, dt_name(d->dtype), bits_value(d->dtype, bits),
                                 bits);
                }
                if (lse_written) {
                    const size_t at = lse_at(d, r, h);
                    for (size_t b = 0; b < 4; ++b)
                        done_lse[at + b] = true;
                    const uint32_t bits = load_bits(got_lse + at, 4);
                    if (!isnan(test_f32_bits_to_double(bits)) ||
                        memcmp(got_lse + at, d->img_lse + at, 4) == 0)
                        fail_msg("%s: out.lse[%d, %d] = %.9g (0x%08x), want NaN (written): a state "
                                 "of the row has a NaN lse",
                                 what, r, h, test_f32_bits_to_double(bits), bits);
                }
                continue;
            }
            for (int32_t k = 0; k < d->dim; ++k) {
                const size_t at = o_at(d, r, h, k), i = rh * (size_t)d->dim + (size_t)k;
                for (size_t b = 0; b < es; ++b)
                    done[at + b] = true;
                const uint32_t bits = load_bits(got + at, es);
                const double g = bits_value(d->dtype, bits), want = e->o[i];
                if (isnan(g))
                    fail_msg("%s: out.o[%d, %d, %d] (%s) = NaN (0x%x): not written? (lse "
                             "reference %g, seed 0x%llx)",
                             what, r, h, k, dt_name(d->dtype), bits, e->lse[rh],
                             (unsigned long long)test_seed());
                if (e->exact[rh]) {
                    const uint32_t want_bits = encode(d->dtype, (float)want);
                    if (bits != want_bits)
                        fail_msg("%s: out.o[%d, %d, %d] (%s) = %.9g (0x%x), want exactly %.9g "
                                 "(0x%x): at most one state of the row has a finite lse (lse "
                                 "%g; seed 0x%llx)",
                                 what, r, h, k, dt_name(d->dtype), g, bits,
                                 bits_value(d->dtype, want_bits), want_bits, e->lse[rh],
                                 (unsigned long long)test_seed());
                    continue;
                }
                const double bound = u * fabs(want) + tol * e->mag[i] + 0x1p-24;
                const double err = fabs(g - want);
                if (!(err <= bound))
                    fail_msg("%s: out.o[%d, %d, %d] (%s) = %.9g, reference %.9g: error %.3g > "
                             "bound %.3g = %.3g |ref| + %.3g A + 2^-24 with A = sum w|o| / sum w "
                             "= %.3g (%d states; seed 0x%llx)",
                             what, r, h, k, dt_name(d->dtype), g, want, err, bound, u, tol,
                             e->mag[i], e->n[rh], (unsigned long long)test_seed());
                worst = fmax(worst, err / bound);
            }
            if (!lse_written)
                continue;
            const size_t at = lse_at(d, r, h);
            for (size_t b = 0; b < 4; ++b)
                done_lse[at + b] = true;
            const uint32_t bits = load_bits(got_lse + at, 4);
            const double g = test_f32_bits_to_double(bits), want = e->lse[rh];
            if (e->exact[rh]) {
                const uint32_t want_bits = encode(F32, (float)want);
                if (bits != want_bits)
                    fail_msg("%s: out.lse[%d, %d] = %.9g (0x%08x), want exactly %.9g: at most one "
                             "state of the row has a finite lse (seed 0x%llx)",
                             what, r, h, g, bits, want, (unsigned long long)test_seed());
                continue;
            }
            const double bound = tol * fmax(1.0, fabs(want));
            const double err = fabs(g - want);
            if (!(err <= bound))
                fail_msg("%s: out.lse[%d, %d] = %.9g, reference %.9g: error %.3g > %.3g (%d "
                         "states; seed 0x%llx)",
                         what, r, h, g, want, err, bound, e->n[rh],
                         (unsigned long long)test_seed());
            worst_lse = fmax(worst_lse, err / bound);
        }
    }
    for (size_t i = 0; i < d->o_bytes; ++i)
        if (!done[i] && got[i] != d->img_o[i])
            fail_msg("%s: out.o buffer byte %zu, not an element the call writes, changed: 0x%02x, "
                     "was 0x%02x",
                     what, i, got[i], d->img_o[i]);
    for (size_t i = 0; i < d->lse_bytes; ++i)
        if (!done_lse[i] && got_lse[i] != d->img_lse[i])
            fail_msg("%s: out.lse buffer byte %zu, not an element the call writes%s, changed: "
                     "0x%02x, was 0x%02x",
                     what, i, lse_written ? "" : " (no lse asked for)", got_lse[i], d->img_lse[i]);
    if (getenv("FLP_TEST_VERBOSE"))
        print_message("errors\t%s\t%s\to %.3f of the bound\tlse %.3f of the bound\n", what,
                      dt_name(d->dtype), worst, worst_lse);
    memcpy(d->img_o, got, d->o_bytes);
    memcpy(d->img_lse, got_lse, d->lse_bytes);
    free(got);
    free(got_lse);
    free(done);
    free(done_lse);
}

/* ---- 1. pair merges -------------------------------------------------------------------------- */

typedef struct pair_case {
    const char *name;
    flp_dtype a, b, out;
    int32_t rows, heads, dim;
    layout_kind la, lb, lout;
    bool lse; /* out.lse written */
} pair_case;

static const pair_case pair_cases[] = {
    {"f32_d64", F32, F32, F32, 6, 3, 64, DENSE, DENSE, DENSE, true},
    {"f16_d128", F16, F16, F16, 5, 2, 128, PADDED, PADDED, PADDED, true},
    {"bf16_d256", BF16, BF16, BF16, 4, 2, 256, HEAD_MAJOR, PADDED, HEAD_MAJOR, true},
    {"f32_bf16_to_f16_d100", F32, BF16, F16, 7, 3, 100, PADDED, DENSE, HEAD_MAJOR, true},
    {"f16_f32_to_bf16_d24", F16, F32, BF16, 9, 4, 24, DENSE, HEAD_MAJOR, PADDED, true},
    {"bf16_f16_to_f32_d1", BF16, F16, F32, 33, 5, 1, PADDED, PADDED, DENSE, true},
    {"f32_f16_to_f16_d128_no_lse", F32, F16, F16, 5, 2, 128, DENSE, PADDED, PADDED, false},
    {"f16_bf16_to_f32_d64_no_lse", F16, BF16, F32, 6, 4, 64, HEAD_MAJOR, DENSE, PADDED, false},
    {"bf16_bf16_to_f32_d7", BF16, BF16, F32, 8, 3, 7, PADDED, HEAD_MAJOR, PADDED, true},
    {"f16_f16_to_f32_d256", F16, F16, F32, 3, 2, 256, DENSE, DENSE, DENSE, true},
    {"f32_f32_to_bf16_d100", F32, F32, BF16, 4, 3, 100, PADDED, PADDED, DENSE, true},
    {"f16_f16_to_bf16_d64", F16, F16, BF16, 5, 2, 64, HEAD_MAJOR, HEAD_MAJOR, HEAD_MAJOR, true},
    {"bf16_f32_to_f32_d24", BF16, F32, F32, 5, 3, 24, DENSE, PADDED, HEAD_MAJOR, false},
    /* more (row, head) units than one grid dimension holds (65535 on many devices) */
    {"f16_f32_to_f32_d1_66000_units", F16, F32, F32, 33000, 2, 1, DENSE, PADDED, DENSE, true},
};
#define PAIR_CASE_COUNT (sizeof pair_cases / sizeof pair_cases[0])

/* Random a and b (fill_state, 15% -inf), then: row 1 both -inf, row 2 only a finite, row 3 only b
 * finite (each when the rows exist), and 10% of the other row-heads with equal lse. */
static void pair_fill(dstate *a, dstate *b, test_rng *rng) {
    fill_state(a, rng, 0.15);
    fill_state(b, rng, 0.15);
    for (int32_t r = 0; r < a->rows; ++r)
        for (int32_t h = 0; h < a->heads; ++h) {
            float *la = lse_of(a, r, h), *lb = lse_of(b, r, h);
            if (r == 1) {
                *la = *lb = -INFINITY;
            } else if (r == 2 || r == 3) {
                float *fin = r == 2 ? la : lb, *inf = r == 2 ? lb : la;
                *inf = -INFINITY;
                if (!(*fin > -INFINITY))
                    *fin = (float)test_rng_uniform(rng, -20.0, 20.0);
            } else if (*la > -INFINITY && test_rng_uniform(rng, 0.0, 1.0) < 0.1) {
                *lb = *la;
            }
        }
}

static flp_merge_state_args pair_args(const dstate *a, const dstate *b, const dstate *out,
                                      bool lse) {
    flp_merge_state_args args;
    memset(&args, 0, sizeof args);
    args.a = a->s;
    args.b = b->s;
    args.out = out->s;
    if (!lse)
        memset(&args.out.lse, 0, sizeof args.out.lse);
    return args;
}

static void test_pair(void **state) {
    const pair_case *c = *state;
    test_rng rng;
    test_rng_init(&rng, test_name_seed(c->name));
    dstate a, b, out;
    dstate_create(&a, c->a, c->rows, c->heads, c->dim, c->la);
    dstate_create(&b, c->b, c->rows, c->heads, c->dim, c->lb);
    dstate_create(&out, c->out, c->rows, c->heads, c->dim, c->lout);
    pair_fill(&a, &b, &rng);
    dstate_upload(&a);
    dstate_upload(&b);
    dstate_poison(&out);
    const flp_merge_state_args args = pair_args(&a, &b, &out, c->lse);
    assert_ok(flp_merge_state(g_ctx, &args));
    expected e;
    expected_pair(&e, &a, &b);
    check_out(&out, &e, NULL, c->lse, c->name);
    expect_unchanged(&a, "input a");
    expect_unchanged(&b, "input b");
    expected_free(&e);
    dstate_free(&a);
    dstate_free(&b);
    dstate_free(&out);
}

/* Every out dtype: row 0 a -inf / b finite, row 1 a finite / b -inf, row 2 both -inf, row 3 both
 * -inf with o of the largest magnitude: exactly the finite state (rounded), or o = +0, lse -inf. */
static void test_exact(void **state) {
    const flp_dtype *dts = *state;
    const flp_dtype da = dts[0], db = dts[1];
    test_rng rng;
    test_rng_init(&rng, test_name_seed(test_str("exact_%s_%s", dt_name(da), dt_name(db))));
    static const flp_dtype outs[3] = {F32, F16, BF16};
    for (int oi = 0; oi < 3; ++oi) {
        dstate a, b, out;
        dstate_create(&a, da, 4, 3, 40, PADDED);
        dstate_create(&b, db, 4, 3, 40, DENSE);
        dstate_create(&out, outs[oi], 4, 3, 40, PADDED);
        fill_state(&a, &rng, 0.0);
        fill_state(&b, &rng, 0.0);
        for (int32_t h = 0; h < 3; ++h) {
            *lse_of(&a, 0, h) = -INFINITY;
            *lse_of(&b, 1, h) = -INFINITY;
            *lse_of(&a, 2, h) = *lse_of(&b, 2, h) = -INFINITY;
            *lse_of(&a, 3, h) = *lse_of(&b, 3, h) = -INFINITY;
            for (int32_t k = 0; k < 40; ++k) {
                o_row(&a, 3, h)[k] = test_round_to_dtype(da, k % 2 ? 60000.0f : -60000.0f);
                o_row(&b, 3, h)[k] = test_round_to_dtype(db, k % 3 ? -1e-3f : 1e-3f);
            }
        }
        /* finite lse values far outside the random range: still exact */
        *lse_of(&b, 0, 0) = 88.5f;
        *lse_of(&a, 1, 0) = -1000.0f;
        dstate_upload(&a);
        dstate_upload(&b);
        dstate_poison(&out);
        const flp_merge_state_args args = pair_args(&a, &b, &out, true);
        assert_ok(flp_merge_state(g_ctx, &args));
        expected e;
        expected_pair(&e, &a, &b);
        for (size_t i = 0; i < (size_t)4 * 3; ++i)
            assert_true(e.exact[i]);
        char what[96];
        snprintf(what, sizeof what, "exact %s + %s -> %s", dt_name(da), dt_name(db),
                 dt_name(outs[oi]));
        check_out(&out, &e, NULL, true, what);
        /* the empty rows: +0, all bits zero */
        for (int32_t r = 2; r < 4; ++r)
            for (int32_t h = 0; h < 3; ++h)
                for (int32_t k = 0; k < 40; ++k)
                    for (size_t byte = 0; byte < flp_dtype_size(outs[oi]); ++byte)
                        assert_int_equal(out.img_o[o_at(&out, r, h, k) + byte], 0);
        expected_free(&e);
        dstate_free(&a);
        dstate_free(&b);
        dstate_free(&out);
    }
}

static const flp_dtype exact_f32_f16[2] = {F32, F16};
static const flp_dtype exact_bf16_f32[2] = {BF16, F32};
static const flp_dtype exact_f16_bf16[2] = {F16, BF16};

/* ---- 2. in place ----------------------------------------------------------------------------- */

typedef enum in_place_kind { OUT_IS_A, OUT_IS_B, OUT_O_IS_A_NO_LSE } in_place_kind;

typedef struct in_place_case {
    const char *name;
    in_place_kind kind;
    flp_dtype a, b;
    int32_t rows, heads, dim;
    layout_kind la, lb;
} in_place_case;

static const in_place_case in_place_cases[] = {
    {"out_is_a_f32_bf16_d100", OUT_IS_A, F32, BF16, 7, 3, 100, PADDED, DENSE},
    {"out_is_a_f16_f16_d256", OUT_IS_A, F16, F16, 3, 2, 256, DENSE, HEAD_MAJOR},
    {"out_is_b_f16_bf16_d64", OUT_IS_B, F16, BF16, 6, 4, 64, HEAD_MAJOR, PADDED},
    {"out_is_b_bf16_f32_d1", OUT_IS_B, BF16, F32, 20, 3, 1, DENSE, PADDED},
    {"out_o_is_a_no_lse_bf16_f32_d24", OUT_O_IS_A_NO_LSE, BF16, F32, 9, 3, 24, PADDED, PADDED},
};
#define IN_PLACE_CASE_COUNT (sizeof in_place_cases / sizeof in_place_cases[0])

static void test_in_place(void **state) {
    const in_place_case *c = *state;
    test_rng rng;
    test_rng_init(&rng, test_name_seed(c->name));
    dstate a, b;
    dstate_create(&a, c->a, c->rows, c->heads, c->dim, c->la);
    dstate_create(&b, c->b, c->rows, c->heads, c->dim, c->lb);
    pair_fill(&a, &b, &rng);
    dstate_upload(&a);
    dstate_upload(&b);
    expected e;
    expected_pair(&e, &a, &b);
    dstate *out = c->kind == OUT_IS_B ? &b : &a, *in = c->kind == OUT_IS_B ? &a : &b;
    const bool lse = c->kind != OUT_O_IS_A_NO_LSE;
    const flp_merge_state_args args = pair_args(&a, &b, out, lse);
    assert_ok(flp_merge_state(g_ctx, &args));
    check_out(out, &e, NULL, lse, c->name);
    expect_unchanged(in, "the input not written in place");
    expected_free(&e);
    dstate_free(&a);
    dstate_free(&b);
}

/* A U8 mask [rows] at byte offset 3 of a buffer whose other bytes are non-zero: rows 0 and 1 get
 * 0 and 1, the others 0, 1, 0x80 or another non-zero byte. keep[r] = the row stays as it is. */
static flp_tensor make_mask(test_rng *rng, int32_t rows, flp_buffer **buf, uint8_t *keep) {
    const size_t bytes = (size_t)rows + 16;
    uint8_t *img = test_xcalloc(bytes, 1);
    memset(img, 0xA5, bytes);
    for (int32_t r = 0; r < rows; ++r) {
        const int32_t pick = r < 2 ? r : test_rng_int(rng, 0, 3);
        img[3 + r] = pick == 0   ? 0
                     : pick == 1 ? 1
                     : pick == 2 ? 0x80
                                 : (uint8_t)test_rng_int(rng, 1, 255);
        keep[r] = img[3 + r] == 0;
    }
    *buf = test_buffer_new(g_ctx, bytes);
    assert_ok(flp_buffer_write(g_ctx, *buf, 0, img, bytes));
    free(img);
    flp_tensor m;
    memset(&m, 0, sizeof m);
    m.buf = *buf;
    m.offset = 3;
    m.dtype = FLP_DTYPE_U8;
    m.ndim = 1;
    m.shape[0] = rows;
    m.stride[0] = 1;
    return m;
}

/* flp_merge_state_in_place(state, other, mask or NULL). */
static void test_in_place_call(void **state) {
    const bool masked = *(const bool *)*state;
    test_rng rng;
    test_rng_init(&rng, test_name_seed(masked ? "in_place_call_mask" : "in_place_call"));
    const int32_t rows = 13, heads = 3, dim = 72;
    dstate st, other;
    dstate_create(&st, F16, rows, heads, dim, PADDED);
    dstate_create(&other, F32, rows, heads, dim, HEAD_MAJOR);
    pair_fill(&st, &other, &rng);
    dstate_upload(&st);
    dstate_upload(&other);
    expected e;
    expected_pair(&e, &st, &other);
    uint8_t keep[13] = {0};
    flp_buffer *mask_buf = NULL;
    flp_tensor mask;
    if (masked)
        mask = make_mask(&rng, rows, &mask_buf, keep);
    flp_merge_state_in_place_args args;
    memset(&args, 0, sizeof args);
    args.state = st.s;
    args.other = other.s;
    args.mask = masked ? &mask : NULL;
    assert_ok(flp_merge_state_in_place(g_ctx, &args));
    check_out(&st, &e, masked ? keep : NULL, true,
              masked ? "flp_merge_state_in_place with a mask" : "flp_merge_state_in_place");
    expect_unchanged(&other, "other");
    flp_buffer_destroy(mask_buf);
    expected_free(&e);
    dstate_free(&st);
    dstate_free(&other);
}

static const bool k_true = true, k_false = false;

/* ---- 3. flp_merge_states --------------------------------------------------------------------- */

static flp_tensor make_indptr(const int32_t *values, int32_t n, flp_buffer **buf) {
    /* at byte offset 8, 0x7FFFFFFF words around it */
    const size_t bytes = 8 + (size_t)n * 4 + 16;
    int32_t *img = test_xcalloc(bytes / 4, sizeof(int32_t));
    for (size_t i = 0; i < bytes / 4; ++i)
        img[i] = INT32_MAX;
    memcpy(img + 2, values, (size_t)n * 4);
    *buf = test_buffer_new(g_ctx, bytes);
    assert_ok(flp_buffer_write(g_ctx, *buf, 0, img, bytes));
    free(img);
    flp_tensor t;
    memset(&t, 0, sizeof t);
    t.buf = *buf;
    t.offset = 8;
    t.dtype = FLP_DTYPE_I32;
    t.ndim = 1;
    t.shape[0] = n;
    t.stride[0] = 1;
    return t;
}

typedef struct spr_case {
    const char *name;
    int32_t per_row, rows, heads, dim;
    flp_dtype states, out;
    layout_kind ls, lout;
    bool lse;
} spr_case;

static const spr_case spr_cases[] = {
    {"1_f16_to_f32_d64", 1, 7, 3, 64, F16, F32, PADDED, DENSE, true},
    {"2_bf16_to_f16_d24", 2, 6, 2, 24, BF16, F16, DENSE, PADDED, true},
    {"7_f32_to_bf16_d128", 7, 5, 3, 128, F32, BF16, HEAD_MAJOR, PADDED, false},
    {"7_f16_to_f16_d256", 7, 3, 2, 256, F16, F16, PADDED, HEAD_MAJOR, true},
    {"1_f32_to_f16_d2_66000_units", 1, 66000, 1, 2, F32, F16, DENSE, PADDED, true},
};
#define SPR_CASE_COUNT (sizeof spr_cases / sizeof spr_cases[0])

/* Random states (20% -inf) with the states of row 1 all -inf and, with 2 or more per row, row 2
 * holding one finite state. */
static void ragged_fill(dstate *st, test_rng *rng, const int32_t *begin, const int32_t *end,
                        int32_t rows) {
    fill_state(st, rng, 0.2);
    for (int32_t r = 1; r < rows && r < 3; ++r)
        for (int32_t j = begin[r]; j < end[r]; ++j)
            for (int32_t h = 0; h < st->heads; ++h)
                *lse_of(st, j, h) = r == 2 && j == end[r] - 1
                                        ? (float)test_rng_uniform(rng, -20.0, 20.0)
                                        : -INFINITY;
}

static void test_states_per_row(void **state) {
    const spr_case *c = *state;
    test_rng rng;
    test_rng_init(&rng, test_name_seed(c->name));
    const int32_t num = c->rows * c->per_row;
    int32_t *begin = test_xcalloc((size_t)c->rows, sizeof(int32_t));
    int32_t *end = test_xcalloc((size_t)c->rows, sizeof(int32_t));
    for (int32_t r = 0; r < c->rows; ++r) {
        begin[r] = r * c->per_row;
        end[r] = begin[r] + c->per_row;
    }
    dstate st, out;
    dstate_create(&st, c->states, num, c->heads, c->dim, c->ls);
    dstate_create(&out, c->out, c->rows, c->heads, c->dim, c->lout);
    ragged_fill(&st, &rng, begin, end, c->rows);
    dstate_upload(&st);
    dstate_poison(&out);
    flp_merge_states_args args;
    memset(&args, 0, sizeof args);
    args.states = st.s;
    args.states_per_row = c->per_row;
    args.out = out.s;
    if (!c->lse)
        memset(&args.out.lse, 0, sizeof args.out.lse);
    assert_ok(flp_merge_states(g_ctx, &args));
    expected e;
    expected_ragged(&e, &st, c->rows, begin, end);
    check_out(&out, &e, NULL, c->lse, c->name);
    expect_unchanged(&st, "states");
    expected_free(&e);
    dstate_free(&st);
    dstate_free(&out);
    free(begin);
    free(end);
}

/* flp_merge_states with indptr [rows + 1] (values as given: out-of-range entries included) over
 * num_states states; checks out against the ranges clamped to [0, num_states]. */
static void run_indptr(const char *name, test_rng *rng, const int32_t *indptr, int32_t rows,
                       int32_t num_states, int32_t heads, int32_t dim, flp_dtype dst,
                       flp_dtype dout, layout_kind ls, layout_kind lout, bool lse) {
    int32_t *begin = test_xcalloc((size_t)rows, sizeof(int32_t));
    int32_t *end = test_xcalloc((size_t)rows, sizeof(int32_t));
    for (int32_t r = 0; r < rows; ++r) {
        begin[r] = indptr[r] < 0 ? 0 : indptr[r] > num_states ? num_states : indptr[r];
        end[r] = indptr[r + 1] < 0 ? 0 : indptr[r + 1] > num_states ? num_states : indptr[r + 1];
    }
    dstate st, out;
    dstate_create(&st, dst, num_states, heads, dim, ls);
    dstate_create(&out, dout, rows, heads, dim, lout);
    ragged_fill(&st, rng, begin, end, rows);
    dstate_upload(&st);
    dstate_poison(&out);
    flp_buffer *ibuf = NULL;
    const flp_tensor it = make_indptr(indptr, rows + 1, &ibuf);
    flp_merge_states_args args;
    memset(&args, 0, sizeof args);
    args.states = st.s;
    args.indptr = &it;
    args.out = out.s;
    if (!lse)
        memset(&args.out.lse, 0, sizeof args.out.lse);
    assert_ok(flp_merge_states(g_ctx, &args));
    expected e;
    expected_ragged(&e, &st, rows, begin, end);
    check_out(&out, &e, NULL, lse, name);
    expect_unchanged(&st, "states");
    expected_free(&e);
    flp_buffer_destroy(ibuf);
    dstate_free(&st);
    dstate_free(&out);
    free(begin);
    free(end);
}

/* Rows of 1, 3 (all -inf: ragged_fill), 4 (one finite), 37, 2, 0, 5, 1 and 0 states, in CSR
 * order. */
static const int32_t ragged_counts[] = {1, 3, 4, 37, 2, 0, 5, 1, 0};
#define RAGGED_ROWS ((int32_t)(sizeof ragged_counts / sizeof ragged_counts[0]))

static void ragged_indptr(int32_t *indptr) {
    indptr[0] = 0;
    for (int32_t r = 0; r < RAGGED_ROWS; ++r)
        indptr[r + 1] = indptr[r] + ragged_counts[r];
}

static void test_indptr_f16_to_bf16(void **state) {
    (void)state;
    test_rng rng;
    test_rng_init(&rng, test_name_seed("indptr_f16_to_bf16"));
    int32_t indptr[RAGGED_ROWS + 1];
    ragged_indptr(indptr);
    run_indptr("indptr f16 -> bf16, d100", &rng, indptr, RAGGED_ROWS, indptr[RAGGED_ROWS], 2, 100,
               F16, BF16, PADDED, PADDED, true);
}

static void test_indptr_f32_to_f16_no_lse(void **state) {
    (void)state;
    test_rng rng;
    test_rng_init(&rng, test_name_seed("indptr_f32_to_f16_no_lse"));
    int32_t indptr[RAGGED_ROWS + 1];
    ragged_indptr(indptr);
    run_indptr("indptr f32 -> f16, d64, no lse", &rng, indptr, RAGGED_ROWS, indptr[RAGGED_ROWS], 3,
               64, F32, F16, DENSE, HEAD_MAJOR, false);
}

static void test_indptr_bf16_to_f32_d1(void **state) {
    (void)state;
    test_rng rng;
    test_rng_init(&rng, test_name_seed("indptr_bf16_to_f32_d1"));
    int32_t indptr[RAGGED_ROWS + 1];
    ragged_indptr(indptr);
    run_indptr("indptr bf16 -> f32, d1", &rng, indptr, RAGGED_ROWS, indptr[RAGGED_ROWS], 5, 1, BF16,
               F32, HEAD_MAJOR, DENSE, true);
}

/* Entries below 0, beyond num_states = 20 and decreasing: [0, 3), [3, 3), [3, 20), [20, 10),
 * [10, 2), [2, 20), [20, 18), [18, 0), [0, 0), [0, 0), [0, 7) after clamping. */
static void test_indptr_out_of_range(void **state) {
    (void)state;
    test_rng rng;
    test_rng_init(&rng, test_name_seed("indptr_out_of_range"));
    const int32_t indptr[] = {-5, 3, 3, 25, 10, 2, 40, 18, -1, -3, -1, 7};
    run_indptr("indptr out of range", &rng, indptr, 11, 20, 2, 32, F32, F16, DENSE, PADDED, true);
    const int32_t extreme[] = {INT32_MIN, INT32_MAX, 4, INT32_MIN, 6};
    run_indptr("indptr INT32_MIN / INT32_MAX", &rng, extreme, 4, 9, 2, 24, BF16, BF16, PADDED,
               DENSE, true);
}

/* No states at all: every row empty (o = 0, lse = -inf), the states never read. */
static void test_indptr_no_states(void **state) {
    (void)state;
    test_rng rng;
    test_rng_init(&rng, test_name_seed("indptr_no_states"));
    const int32_t indptr[] = {0, 0, 4, -2, 0};
    run_indptr("no states", &rng, indptr, 4, 0, 3, 48, F16, F32, PADDED, PADDED, true);
}

/* ---- 4. merges of chunks equal the whole ------------------------------------------------------
 */

/* Each (row, head) attends over its own n keys: logits x [rows, heads, n] uniform in [-15, 15],
 * values v [rows, heads, n, dim] uniform in [-1, 1). */
typedef struct keyset {
    int32_t rows, heads, dim, n;
    double *x, *v;
} keyset;

static void keyset_make(keyset *ks, test_rng *rng, int32_t rows, int32_t heads, int32_t dim,
                        int32_t n) {
    ks->rows = rows;
    ks->heads = heads;
    ks->dim = dim;
    ks->n = n;
    const size_t rhn = (size_t)rows * (size_t)heads * (size_t)n;
    ks->x = test_xcalloc(rhn, sizeof(double));
    ks->v = test_xcalloc(rhn * (size_t)dim, sizeof(double));
    for (size_t i = 0; i < rhn; ++i)
        ks->x[i] = test_rng_uniform(rng, -15.0, 15.0);
    test_fill_uniform_f64(rng, ks->v, rhn * (size_t)dim);
}

static void keyset_free(keyset *ks) {
    free(ks->x);
    free(ks->v);
}

/* The state of keys [j0, j1) of (r, h) in float64: o [dim], *lse; mag [dim] (may be NULL):
 * sum p_j |v_j| with p the softmax over the keys. */
static void key_state(const keyset *ks, int32_t r, int32_t h, int32_t j0, int32_t j1, double *o,
                      double *lse, double *mag) {
    const size_t base = ((size_t)r * ks->heads + h) * (size_t)ks->n;
    for (int32_t k = 0; k < ks->dim; ++k) {
        o[k] = 0.0;
        if (mag)
            mag[k] = 0.0;
    }
    if (j1 <= j0) {
        *lse = -INFINITY;
        return;
    }
    double m = -INFINITY, sum = 0.0;
    for (int32_t j = j0; j < j1; ++j)
        m = fmax(m, ks->x[base + j]);
    for (int32_t j = j0; j < j1; ++j) {
        const double w = exp(ks->x[base + j] - m);
        sum += w;
        const double *v = ks->v + (base + j) * (size_t)ks->dim;
        for (int32_t k = 0; k < ks->dim; ++k) {
            o[k] += w * v[k];
            if (mag)
                mag[k] += w * fabs(v[k]);
        }
    }
    for (int32_t k = 0; k < ks->dim; ++k) {
        o[k] /= sum;
        if (mag)
            mag[k] /= sum;
    }
    *lse = m + log(sum);
}

/* Stores the state of keys [cut[c], cut[c + 1]) of (r, h) as row `row` of st (rounded). */
static void store_chunk(dstate *st, int32_t row, const keyset *ks, int32_t r, int32_t h, int32_t j0,
                        int32_t j1) {
    double *o = test_xcalloc((size_t)ks->dim, sizeof(double));
    double lse;
    key_state(ks, r, h, j0, j1, o, &lse, NULL);
    for (int32_t k = 0; k < ks->dim; ++k)
        o_row(st, row, h)[k] = test_round_to_dtype(st->dtype, (float)o[k]);
    *lse_of(st, row, h) = (float)lse;
    free(o);
}

/* out against the whole key set's state: |o - whole| <= u_out |whole| + (u_in + t(chunks)) A +
 * 2^-24, A = sum p_j |v_j| (the chunks' rounding to the states' dtype is part of the difference),
 * |lse - whole| <= (2^-24 + t(chunks)) max(1, |whole|). */
static void check_whole(const dstate *out, const keyset *ks, flp_dtype states_dtype, int32_t chunks,
                        bool lse, const char *what) {
    uint8_t *got = test_buffer_read_all(g_ctx, out->o_buf, out->o_bytes);
    uint8_t *got_lse = test_buffer_read_all(g_ctx, out->lse_buf, out->lse_bytes);
    double *o = test_xcalloc((size_t)ks->dim, sizeof(double));
    double *mag = test_xcalloc((size_t)ks->dim, sizeof(double));
    const double u_out = out_unit(out->dtype), tol = arith_tol(chunks);
    const double u_in = states_dtype == F32 ? 0x1p-24 : out_unit(states_dtype);
    const size_t es = flp_dtype_size(out->dtype);
    double worst = 0.0, worst_lse = 0.0;
    for (int32_t r = 0; r < ks->rows; ++r)
        for (int32_t h = 0; h < ks->heads; ++h) {
            double want_lse;
            key_state(ks, r, h, 0, ks->n, o, &want_lse, mag);
            for (int32_t k = 0; k < ks->dim; ++k) {
                const double g = bits_value(out->dtype, load_bits(got + o_at(out, r, h, k), es));
                const double bound = u_out * fabs(o[k]) + (u_in + tol) * mag[k] + 0x1p-24;
                const double err = fabs(g - o[k]);
                if (!(err <= bound))
                    fail_msg("%s: out.o[%d, %d, %d] = %.9g, the whole set's %.9g: error %.3g > "
                             "%.3g (%d chunks; seed 0x%llx)",
                             what, r, h, k, g, o[k], err, bound, chunks,
                             (unsigned long long)test_seed());
                worst = fmax(worst, err / bound);
            }
            if (!lse)
                continue;
            const double g = test_f32_bits_to_double(load_bits(got_lse + lse_at(out, r, h), 4));
            const double bound = (0x1p-24 + tol) * fmax(1.0, fabs(want_lse));
            const double err = fabs(g - want_lse);
            if (!(err <= bound))
                fail_msg("%s: out.lse[%d, %d] = %.9g, the whole set's %.9g: error %.3g > %.3g "
                         "(seed 0x%llx)",
                         what, r, h, g, want_lse, err, bound, (unsigned long long)test_seed());
            worst_lse = fmax(worst_lse, err / bound);
        }
    if (getenv("FLP_TEST_VERBOSE"))
        print_message("errors\t%s: against the whole set\t%s\to %.3f of the bound\tlse %.3f of the "
                      "bound\n",
                      what, dt_name(out->dtype), worst, worst_lse);
    free(got);
    free(got_lse);
    free(o);
    free(mag);
}

typedef enum whole_kind { WHOLE_EQUAL, WHOLE_RAGGED, WHOLE_CHAIN } whole_kind;

typedef struct whole_case {
    const char *name;
    whole_kind kind;
    flp_dtype states, out;
    int32_t dim;
} whole_case;

static const whole_case whole_cases[] = {
    {"equal_f32_to_f32", WHOLE_EQUAL, F32, F32, 64},
    {"equal_bf16_to_f32", WHOLE_EQUAL, BF16, F32, 100},
    {"equal_f16_to_bf16", WHOLE_EQUAL, F16, BF16, 24},
    {"ragged_f16_to_f16", WHOLE_RAGGED, F16, F16, 64},
    {"ragged_f32_to_f32", WHOLE_RAGGED, F32, F32, 128},
    {"chain_f16_to_f32", WHOLE_CHAIN, F16, F32, 64},
    {"chain_bf16_to_f32", WHOLE_CHAIN, BF16, F32, 24},
};
#define WHOLE_CASE_COUNT (sizeof whole_cases / sizeof whole_cases[0])

enum { WHOLE_ROWS = 4, WHOLE_HEADS = 2, WHOLE_KEYS = 60, WHOLE_EQUAL_CHUNKS = 6, WHOLE_MAX = 10 };

static void test_whole(void **state) {
    const whole_case *c = *state;
    test_rng rng;
    test_rng_init(&rng, test_name_seed(c->name));
    keyset ks;
    keyset_make(&ks, &rng, WHOLE_ROWS, WHOLE_HEADS, c->dim, WHOLE_KEYS);
    /* chunk boundaries per row: cuts[r][0 .. count[r]] */
    int32_t count[WHOLE_ROWS], cuts[WHOLE_ROWS][WHOLE_MAX + 1];
    int32_t max_chunks = 0;
    for (int32_t r = 0; r < WHOLE_ROWS; ++r) {
        if (c->kind != WHOLE_RAGGED) {
            count[r] = c->kind == WHOLE_CHAIN ? 5 : WHOLE_EQUAL_CHUNKS;
            for (int32_t i = 0; i <= count[r]; ++i)
                cuts[r][i] = i * WHOLE_KEYS / count[r];
        } else if (r == 0) { /* empty chunks first, in the middle and last */
            const int32_t fixed[] = {0, 0, 17, 17, 40, WHOLE_KEYS, WHOLE_KEYS};
            count[r] = 6;
            memcpy(cuts[r], fixed, sizeof fixed);
        } else {
            count[r] = r == 1 ? 1 : test_rng_int(&rng, 2, WHOLE_MAX);
            cuts[r][0] = 0;
            cuts[r][count[r]] = WHOLE_KEYS;
            for (int32_t i = 1; i < count[r]; ++i)
                cuts[r][i] = test_rng_int(&rng, 0, WHOLE_KEYS);
            for (int32_t i = 1; i < count[r]; ++i) /* insertion sort */
                for (int32_t j = i; j > 1 && cuts[r][j - 1] > cuts[r][j]; --j) {
                    const int32_t t = cuts[r][j];
                    cuts[r][j] = cuts[r][j - 1];
                    cuts[r][j - 1] = t;
                }
        }
        max_chunks = count[r] > max_chunks ? count[r] : max_chunks;
    }
    int32_t indptr[WHOLE_ROWS + 1] = {0};
    for (int32_t r = 0; r < WHOLE_ROWS; ++r)
        indptr[r + 1] = indptr[r] + count[r];
    const int32_t num = indptr[WHOLE_ROWS];
    dstate st, out;
    dstate_create(&st, c->states, num, WHOLE_HEADS, c->dim, PADDED);
    dstate_create(&out, c->out, WHOLE_ROWS, WHOLE_HEADS, c->dim,
                  c->kind == WHOLE_CHAIN ? HEAD_MAJOR : PADDED);
    /* the states in CSR order (equal chunks: row r's chunk i is state r * chunks + i) */
    for (int32_t r = 0; r < WHOLE_ROWS; ++r)
        for (int32_t i = 0; i < count[r]; ++i)
            for (int32_t h = 0; h < WHOLE_HEADS; ++h)
                store_chunk(&st, indptr[r] + i, &ks, r, h, cuts[r][i], cuts[r][i + 1]);
    dstate_upload(&st);
    dstate_poison(&out);
    flp_buffer *ibuf = NULL;
    flp_tensor it;
    if (c->kind == WHOLE_CHAIN) {
        /* out = merge(chunk 0, chunk 1), then out = merge(out, chunk i) for even i and
         * merge(chunk i, out) for odd i, in place; chunk i: rows i, i + 5, ... of the states */
        const int32_t k = count[0];
        flp_merge_state_args args;
        memset(&args, 0, sizeof args);
        args.a = row_subset(&st, 0, k, WHOLE_ROWS);
        args.b = row_subset(&st, 1, k, WHOLE_ROWS);
        args.out = out.s;
        assert_ok(flp_merge_state(g_ctx, &args));
        for (int32_t i = 2; i < k; ++i) {
            const flp_state chunk = row_subset(&st, i, k, WHOLE_ROWS);
            args.a = i % 2 ? chunk : out.s;
            args.b = i % 2 ? out.s : chunk;
            assert_ok(flp_merge_state(g_ctx, &args));
        }
    } else {
        flp_merge_states_args args;
        memset(&args, 0, sizeof args);
        args.states = st.s;
        args.out = out.s;
        if (c->kind == WHOLE_EQUAL) {
            args.states_per_row = WHOLE_EQUAL_CHUNKS;
        } else {
            it = make_indptr(indptr, WHOLE_ROWS + 1, &ibuf);
            args.indptr = &it;
        }
        assert_ok(flp_merge_states(g_ctx, &args));
    }
    int32_t begin[WHOLE_ROWS], end[WHOLE_ROWS];
    for (int32_t r = 0; r < WHOLE_ROWS; ++r) {
        begin[r] = indptr[r];
        end[r] = indptr[r + 1];
    }
    expected e;
    expected_ragged(&e, &st, WHOLE_ROWS, begin, end);
    check_out(&out, &e, NULL, true, c->name);
    check_whole(&out, &ks, c->states, max_chunks, true, c->name);
    expect_unchanged(&st, "states");
    expected_free(&e);
    flp_buffer_destroy(ibuf);
    dstate_free(&st);
    dstate_free(&out);
    keyset_free(&ks);
}

/* ---- 5. NaN lse ------------------------------------------------------------------------------ */

/* Fills both buffers with byte (a NaN test's outputs: 0x11 is no NaN in any dtype). */
static void dstate_fill(dstate *d, uint8_t byte) {
    memset(d->img_o, byte, d->o_bytes);
    memset(d->img_lse, byte, d->lse_bytes);
    write_images(d);
}

/* "lse must be finite or -inf: a NaN makes its row NaN" (docs/api.md): a (row, head) with a NaN
 * lse among its states comes out NaN (o and lse), whatever the other states hold; the others are
 * unaffected. */
static void test_nan_lse(void **state) {
    (void)state;
    test_rng rng;
    test_rng_init(&rng, test_name_seed("nan_lse"));
    const int32_t rows = 5, heads = 2, dim = 40;
    dstate a, b, out;
    dstate_create(&a, F16, rows, heads, dim, PADDED);
    dstate_create(&b, F32, rows, heads, dim, DENSE);
    dstate_create(&out, BF16, rows, heads, dim, PADDED);
    fill_state(&a, &rng, 0.0);
    fill_state(&b, &rng, 0.0);
    *lse_of(&a, 0, 0) = NAN; /* with a finite b */
    *lse_of(&b, 1, 1) = NAN; /* with a -inf a */
    *lse_of(&a, 1, 1) = -INFINITY;
    *lse_of(&a, 3, 0) = *lse_of(&b, 3, 0) = NAN;
    *lse_of(&a, 4, 1) = NAN; /* larger than ... nothing: b finite and large */
    *lse_of(&b, 4, 1) = 19.0f;
    dstate_upload(&a);
    dstate_upload(&b);
    dstate_fill(&out, 0x11);
    const flp_merge_state_args pa = pair_args(&a, &b, &out, true);
    assert_ok(flp_merge_state(g_ctx, &pa));
    expected e;
    expected_pair(&e, &a, &b);
    check_out(&out, &e, NULL, true, "flp_merge_state with NaN lse values");
    expected_free(&e);

    /* ragged: 4 states per row; row 0 NaN first, row 1 NaN last, row 3 NaN among -inf states,
     * row 4 NaN after a larger finite lse */
    const int32_t per = 4;
    dstate st, so;
    dstate_create(&st, F32, rows * per, heads, dim, PADDED);
    dstate_create(&so, F16, rows, heads, dim, DENSE);
    fill_state(&st, &rng, 0.0);
    for (int32_t h = 0; h < heads; ++h) {
        *lse_of(&st, 0, h) = NAN;
        *lse_of(&st, 1 * per + 3, h) = NAN;
        for (int32_t j = 0; j < per; ++j)
            *lse_of(&st, 3 * per + j, h) = j == 2 ? NAN : -INFINITY;
        *lse_of(&st, 4 * per + 0, h) = 19.5f;
        *lse_of(&st, 4 * per + 1, h) = NAN;
    }
    dstate_upload(&st);
    dstate_fill(&so, 0x11);
    flp_merge_states_args ra;
    memset(&ra, 0, sizeof ra);
    ra.states = st.s;
    ra.states_per_row = per;
    ra.out = so.s;
    assert_ok(flp_merge_states(g_ctx, &ra));
    int32_t begin[5], end[5];
    for (int32_t r = 0; r < rows; ++r) {
        begin[r] = r * per;
        end[r] = begin[r] + per;
    }
    expected_ragged(&e, &st, rows, begin, end);
    check_out(&so, &e, NULL, true, "flp_merge_states with NaN lse values");
    expected_free(&e);
    dstate_free(&a);
    dstate_free(&b);
    dstate_free(&out);
    dstate_free(&st);
    dstate_free(&so);
}

/* ---- 6. determinism, rows = 0 ---------------------------------------------------------------- */

static void expect_same_bits(const dstate *d, const uint8_t *o, const uint8_t *lse,
                             const char *what) {
    for (size_t i = 0; i < d->o_bytes; ++i)
        if (o[i] != d->img_o[i])
            fail_msg("%s: out.o byte %zu differs between runs: 0x%02x then 0x%02x", what, i, o[i],
                     d->img_o[i]);
    for (size_t i = 0; i < d->lse_bytes; ++i)
        if (lse[i] != d->img_lse[i])
            fail_msg("%s: out.lse byte %zu differs between runs: 0x%02x then 0x%02x", what, i,
                     lse[i], d->img_lse[i]);
}

static void test_determinism(void **state) {
    (void)state;
    test_rng rng;
    test_rng_init(&rng, test_name_seed("determinism"));
    /* a pair merge */
    dstate a, b, out;
    dstate_create(&a, F16, 8, 4, 128, PADDED);
    dstate_create(&b, BF16, 8, 4, 128, DENSE);
    dstate_create(&out, F32, 8, 4, 128, PADDED);
    pair_fill(&a, &b, &rng);
    dstate_upload(&a);
    dstate_upload(&b);
    dstate_poison(&out);
    const flp_merge_state_args pa = pair_args(&a, &b, &out, true);
    expected e;
    expected_pair(&e, &a, &b);
    assert_ok(flp_merge_state(g_ctx, &pa));
    check_out(&out, &e, NULL, true, "determinism: first pair merge");
    uint8_t *o1 = test_xcalloc(out.o_bytes, 1), *l1 = test_xcalloc(out.lse_bytes, 1);
    memcpy(o1, out.img_o, out.o_bytes);
    memcpy(l1, out.img_lse, out.lse_bytes);
    dstate_poison(&out);
    assert_ok(flp_merge_state(g_ctx, &pa));
    check_out(&out, &e, NULL, true, "determinism: second pair merge");
    expect_same_bits(&out, o1, l1, "flp_merge_state twice");
    free(o1);
    free(l1);
    expected_free(&e);
    dstate_free(&a);
    dstate_free(&b);
    dstate_free(&out);

    /* 37 states per row */
    dstate st, so;
    const int32_t per = 37, rows = 3;
    int32_t begin[3], end[3];
    for (int32_t r = 0; r < rows; ++r) {
        begin[r] = r * per;
        end[r] = begin[r] + per;
    }
    dstate_create(&st, BF16, per * rows, 2, 64, DENSE);
    dstate_create(&so, F16, rows, 2, 64, PADDED);
    ragged_fill(&st, &rng, begin, end, rows);
    dstate_upload(&st);
    dstate_poison(&so);
    flp_merge_states_args ra;
    memset(&ra, 0, sizeof ra);
    ra.states = st.s;
    ra.states_per_row = per;
    ra.out = so.s;
    expected_ragged(&e, &st, rows, begin, end);
    assert_ok(flp_merge_states(g_ctx, &ra));
    check_out(&so, &e, NULL, true, "determinism: first 37-state merge");
    o1 = test_xcalloc(so.o_bytes, 1);
    l1 = test_xcalloc(so.lse_bytes, 1);
    memcpy(o1, so.img_o, so.o_bytes);
    memcpy(l1, so.img_lse, so.lse_bytes);
    dstate_poison(&so);
    assert_ok(flp_merge_states(g_ctx, &ra));
    check_out(&so, &e, NULL, true, "determinism: second 37-state merge");
    expect_same_bits(&so, o1, l1, "flp_merge_states twice");
    free(o1);
    free(l1);
    expected_free(&e);
    dstate_free(&st);
    dstate_free(&so);
}

/* rows = 0: FLP_OK, nothing written (the outputs stay poisoned). */
static void test_rows_zero(void **state) {
    (void)state;
    dstate a, b, out, st;
    dstate_create(&a, F16, 0, 2, 64, PADDED);
    dstate_create(&b, F32, 0, 2, 64, DENSE);
    dstate_create(&out, BF16, 0, 2, 64, HEAD_MAJOR);
    dstate_create(&st, F16, 6, 2, 64, DENSE);
    test_rng rng;
    test_rng_init(&rng, test_name_seed("rows_zero"));
    fill_state(&st, &rng, 0.0);
    dstate_poison(&a);
    dstate_poison(&b);
    dstate_poison(&out);
    dstate_upload(&st);
    const flp_merge_state_args pa = pair_args(&a, &b, &out, true);
    assert_ok(flp_merge_state(g_ctx, &pa));
    expect_unchanged(&out, "flp_merge_state, rows = 0");
    expect_unchanged(&a, "flp_merge_state, rows = 0: a");
    flp_merge_state_in_place_args ia;
    memset(&ia, 0, sizeof ia);
    ia.state = out.s;
    ia.other = a.s;
    uint8_t keep[1];
    flp_buffer *mask_buf = NULL;
    const flp_tensor mask = make_mask(&rng, 0, &mask_buf, keep);
    ia.mask = &mask;
    assert_ok(flp_merge_state_in_place(g_ctx, &ia));
    ia.mask = NULL;
    assert_ok(flp_merge_state_in_place(g_ctx, &ia));
    expect_unchanged(&out, "flp_merge_state_in_place, rows = 0");
    /* indptr of one entry */
    flp_buffer *ibuf = NULL;
    const int32_t one[1] = {0};
    const flp_tensor it = make_indptr(one, 1, &ibuf);
    flp_merge_states_args ra;
    memset(&ra, 0, sizeof ra);
    ra.states = st.s;
    ra.indptr = &it;
    ra.out = out.s;
    assert_ok(flp_merge_states(g_ctx, &ra));
    expect_unchanged(&out, "flp_merge_states, indptr [1]");
    /* no states, states_per_row 3 */
    ra.indptr = NULL;
    ra.states = a.s;
    ra.states_per_row = 3;
    assert_ok(flp_merge_states(g_ctx, &ra));
    expect_unchanged(&out, "flp_merge_states, 0 states");
    expect_unchanged(&st, "states");
    flp_buffer_destroy(ibuf);
    flp_buffer_destroy(mask_buf);
    dstate_free(&a);
    dstate_free(&b);
    dstate_free(&out);
    dstate_free(&st);
}

/* ---- 7. bad input ---------------------------------------------------------------------------- */

enum { BAD_ROWS = 4, BAD_HEADS = 2, BAD_DIM = 24, BAD_PER_ROW = 3 };

/* a (f16 padded), b (f32 dense), out (bf16 padded, poisoned); states (f16, 12 = 4 rows x 3) and
 * sout (f32, poisoned); indptr [5] of those 12 states; mask [4]. */
typedef struct bad_env {
    dstate a, b, out, st, sout;
    flp_buffer *ibuf, *mbuf;
    flp_tensor indptr, mask;
    flp_merge_state_args pa;
    flp_merge_state_in_place_args ia;
    flp_merge_states_args ra;
} bad_env;

static void bad_env_init(bad_env *e) {
    memset(e, 0, sizeof *e);
    test_rng rng;
    test_rng_init(&rng, test_name_seed("bad"));
    dstate_create(&e->a, F16, BAD_ROWS, BAD_HEADS, BAD_DIM, PADDED);
    dstate_create(&e->b, F32, BAD_ROWS, BAD_HEADS, BAD_DIM, DENSE);
    dstate_create(&e->out, BF16, BAD_ROWS, BAD_HEADS, BAD_DIM, PADDED);
    dstate_create(&e->st, F16, BAD_ROWS * BAD_PER_ROW, BAD_HEADS, BAD_DIM, PADDED);
    dstate_create(&e->sout, F32, BAD_ROWS, BAD_HEADS, BAD_DIM, DENSE);
    fill_state(&e->a, &rng, 0.0);
    fill_state(&e->b, &rng, 0.0);
    fill_state(&e->st, &rng, 0.0);
    dstate_upload(&e->a);
    dstate_upload(&e->b);
    dstate_upload(&e->st);
    dstate_poison(&e->out);
    dstate_poison(&e->sout);
    const int32_t indptr[BAD_ROWS + 1] = {0, 3, 6, 9, 12};
    e->indptr = make_indptr(indptr, BAD_ROWS + 1, &e->ibuf);
    uint8_t keep[BAD_ROWS];
    e->mask = make_mask(&rng, BAD_ROWS, &e->mbuf, keep);
    e->pa = pair_args(&e->a, &e->b, &e->out, true);
    e->ia.state = e->out.s; /* poisoned: a run would show */
    e->ia.other = e->b.s;
    e->ia.mask = &e->mask;
    e->ra.states = e->st.s;
    e->ra.states_per_row = BAD_PER_ROW;
    e->ra.out = e->sout.s;
}

static void bad_env_free(bad_env *e) {
    flp_buffer_destroy(e->ibuf);
    flp_buffer_destroy(e->mbuf);
    dstate_free(&e->a);
    dstate_free(&e->b);
    dstate_free(&e->out);
    dstate_free(&e->st);
    dstate_free(&e->sout);
}

/* The exact status, the message, and no buffer changed. */
static void bad_expect(const bad_env *e, flp_status got, const char *call,
                       const char *const *mentions) {
    expect_status(got, FLP_ERROR_INVALID_ARGUMENT, call, mentions);
    expect_unchanged(&e->out, call);
    expect_unchanged(&e->sout, call);
    expect_unchanged(&e->a, call);
    expect_unchanged(&e->b, call);
    expect_unchanged(&e->st, call);
}

#define BAD_PAIR(field_edit, call, ...)                                                            \
    do {                                                                                           \
        flp_merge_state_args x = e.pa;                                                             \
        field_edit;                                                                                \
        bad_expect(&e, flp_merge_state(g_ctx, &x), call, MENTIONS(__VA_ARGS__));                   \
    } while (0)

static void test_bad_pair(void **state) {
    (void)state;
    bad_env e;
    bad_env_init(&e);
    const char *fn = "flp_merge_state: ";
    bad_expect(&e, flp_merge_state(NULL, &e.pa), "ctx NULL", NULL);
    bad_expect(&e, flp_merge_state(g_ctx, NULL), "args NULL",
               MENTIONS("flp_merge_state: args is NULL"));
    /* dtypes */
    BAD_PAIR(x.a.o.dtype = FLP_DTYPE_I32, "a.o i32",
             test_str("%sa.o.dtype i32 is not f32, f16 or bf16", fn));
    BAD_PAIR(x.b.o.dtype = FLP_DTYPE_E4M3, "b.o e4m3",
             test_str("%sb.o.dtype e4m3 is not f32, f16 or bf16", fn));
    BAD_PAIR(x.out.o.dtype = FLP_DTYPE_U8, "out.o u8", "out.o.dtype u8 is not f32, f16 or bf16");
    BAD_PAIR(x.out.o.dtype = FLP_DTYPE_DEFAULT, "out.o default",
             "out.o.dtype default is not f32, f16 or bf16");
    BAD_PAIR(x.a.lse.dtype = F16, "a.lse f16", "a.lse.dtype is f16, expected f32");
    BAD_PAIR(x.b.lse.dtype = FLP_DTYPE_I32, "b.lse i32", "b.lse.dtype is i32, expected f32");
    BAD_PAIR(x.out.lse.dtype = BF16, "out.lse bf16", "out.lse.dtype is bf16, expected f32");
    /* ranks */
    BAD_PAIR(x.a.o.ndim = 2, "a.o 2-D", "a.o.ndim is 2, expected 3");
    BAD_PAIR(x.out.o.ndim = 4, "out.o 4-D", "out.o.ndim is 4, expected 3");
    BAD_PAIR(x.b.lse.ndim = 3, "b.lse 3-D", "b.lse.ndim is 3, expected 2");
    BAD_PAIR(x.out.lse.ndim = 1, "out.lse 1-D", "out.lse.ndim is 1, expected 2");
    /* shapes */
    BAD_PAIR(x.b.o.shape[0] = 3, "b rows 3", "b.o.shape is [3, 2, 24], expected [4, 2, 24]");
    BAD_PAIR(x.b.o.shape[2] = 23, "b head_dim 23", "b.o.shape is [4, 2, 23], expected [4, 2, 24]");
    BAD_PAIR(x.out.o.shape[1] = 1, "out heads 1", "out.o.shape is [4, 1, 24], expected [4, 2, 24]");
    BAD_PAIR(x.out.o.shape[0] = 3, "out rows 3", "out.o.shape is [3, 2, 24], expected [4, 2, 24]");
    BAD_PAIR(x.a.lse.shape[1] = 3, "a.lse heads 3", "a.lse.shape is [4, 3], expected [4, 2]");
    BAD_PAIR(x.b.lse.shape[0] = 3, "b.lse rows 3", "b.lse.shape is [3, 2], expected [4, 2]");
    BAD_PAIR(x.out.lse.shape[0] = 5, "out.lse rows 5", "out.lse.shape is [5, 2], expected [4, 2]");
    BAD_PAIR(x.a.o.shape[1] = -1, "a heads -1", "a.o.shape is [4, -1, 24]");
    /* strides */
    BAD_PAIR(x.a.o.stride[2] = 2, "a.o stride 2",
             "a.o.stride[2] = 2: the last dimension must be contiguous");
    BAD_PAIR(x.out.o.stride[2] = 0, "out.o stride 0",
             "out.o.stride[2] = 0: the last dimension must be contiguous");
    BAD_PAIR(x.b.lse.stride[1] = 2, "b.lse stride 2",
             "b.lse.stride[1] = 2: the last dimension must be contiguous");
    BAD_PAIR(x.b.o.stride[0] = -1, "b.o negative stride", "b.o.stride[0] = -1 is negative");
    /* zero extents */
    BAD_PAIR((x.a.o.shape[2] = x.b.o.shape[2] = x.out.o.shape[2] = 0), "head_dim 0",
             "num_heads = 2 and head_dim = 0 must be at least 1");
    BAD_PAIR((x.a.o.shape[1] = x.b.o.shape[1] = x.out.o.shape[1] = 0,
              x.a.lse.shape[1] = x.b.lse.shape[1] = x.out.lse.shape[1] = 0),
             "num_heads 0", "num_heads = 0 and head_dim = 24 must be at least 1");
    /* buffers */
    BAD_PAIR(x.a.o.buf = NULL, "a.o.buf NULL", "a.o.buf is NULL");
    BAD_PAIR(x.b.lse.buf = NULL, "b.lse.buf NULL (input lse is required)", "b.lse.buf is NULL");
    BAD_PAIR(x.out.o.buf = NULL, "out.o.buf NULL", "out.o.buf is NULL");
    BAD_PAIR(x.out.o.offset = e.out.o_bytes, "out.o past its buffer", "out.o spans up to byte",
             test_str("beyond its buffer of %zu bytes", e.out.o_bytes));
    BAD_PAIR(x.a.lse.offset += 2, "a.lse misaligned", "a.lse starts at device address",
             "not a multiple of 4 bytes");
    BAD_PAIR(x.b.o.offset += 2, "b.o (f32) misaligned", "b.o starts at device address",
             "not a multiple of 4 bytes");
    /* overlaps: out partially over an input, or over the other output */
    BAD_PAIR((x.out.o = e.a.s.o, x.out.o.offset += 2), "out.o one element into a.o", "out.o (bytes",
             "overlaps a.o");
    BAD_PAIR((x.out.o = e.a.s.o, x.out.o.dtype = BF16), "out.o over a.o as bf16", "overlaps a.o");
    BAD_PAIR((x.out.o = e.a.s.o, x.out.o.stride[0] -= 1), "out.o over a.o with another stride",
             "overlaps a.o");
    BAD_PAIR((x.out.lse = e.b.s.lse, x.out.lse.offset += 4), "out.lse one element into b.lse",
             "out.lse (bytes", "overlaps b.lse");
    BAD_PAIR((x.out.lse = e.a.s.lse, x.out.lse.stride[0] += 1, x.out.lse.shape[0] = 4),
             "out.lse over a.lse with another stride", "out.lse", "overlaps a.lse");
    BAD_PAIR((x.out.lse.buf = e.out.o_buf, x.out.lse.offset = e.out.o_offset), "out.lse in out.o",
             "out.o (bytes", "overlaps out.lse");
    BAD_PAIR((x.out.o = e.b.s.o, x.out.lse = e.a.s.lse, x.out.lse.offset += 4),
             "out.o in place of b, out.lse partly over a.lse", "out.lse (bytes", "overlaps a.lse");
    bad_env_free(&e);
}

#define BAD_IN_PLACE(field_edit, call, ...)                                                        \
    do {                                                                                           \
        flp_merge_state_in_place_args x = e.ia;                                                    \
        field_edit;                                                                                \
        bad_expect(&e, flp_merge_state_in_place(g_ctx, &x), call, MENTIONS(__VA_ARGS__));          \
    } while (0)

static void test_bad_in_place(void **state) {
    (void)state;
    bad_env e;
    bad_env_init(&e);
    bad_expect(&e, flp_merge_state_in_place(NULL, &e.ia), "ctx NULL", NULL);
    bad_expect(&e, flp_merge_state_in_place(g_ctx, NULL), "args NULL",
               MENTIONS("flp_merge_state_in_place: args is NULL"));
    BAD_IN_PLACE(x.state.lse.buf = NULL, "state.lse.buf NULL",
                 "flp_merge_state_in_place: state.lse.buf is NULL");
    BAD_IN_PLACE(x.state.o.dtype = FLP_DTYPE_E5M2, "state.o e5m2",
                 "state.o.dtype e5m2 is not f32, f16 or bf16");
    BAD_IN_PLACE(x.other.o.dtype = FLP_DTYPE_I32, "other.o i32",
                 "other.o.dtype i32 is not f32, f16 or bf16");
    BAD_IN_PLACE(x.other.lse.dtype = F16, "other.lse f16", "other.lse.dtype is f16, expected f32");
    BAD_IN_PLACE(x.other.o.shape[0] = 3, "other rows 3",
                 "other.o.shape is [3, 2, 24], expected [4, 2, 24]");
    BAD_IN_PLACE(x.other.lse.shape[1] = 1, "other.lse heads 1",
                 "other.lse.shape is [4, 1], expected [4, 2]");
    BAD_IN_PLACE(x.state.o.stride[2] = 3, "state.o stride 3",
                 "state.o.stride[2] = 3: the last dimension must be contiguous");
    BAD_IN_PLACE(x.other.o.buf = NULL, "other.o.buf NULL", "other.o.buf is NULL");
    BAD_IN_PLACE((x.state.o.shape[2] = x.other.o.shape[2] = 0), "head_dim 0",
                 "num_heads = 2 and head_dim = 0 must be at least 1");
    /* the mask */
    flp_tensor m = e.mask;
    BAD_IN_PLACE((m.dtype = FLP_DTYPE_I32, m.offset = 4, m.shape[0] = 4, x.mask = &m), "mask i32",
                 "mask.dtype is i32, expected u8");
    m = e.mask;
    BAD_IN_PLACE((m.shape[0] = 5, x.mask = &m), "mask [5]", "mask.shape is [5], expected [4]");
    m = e.mask;
    BAD_IN_PLACE((m.ndim = 2, m.shape[1] = 1, m.stride[1] = 1, x.mask = &m), "mask 2-D",
                 "mask.ndim is 2, expected 1");
    m = e.mask;
    BAD_IN_PLACE((m.stride[0] = 2, x.mask = &m), "mask stride 2",
                 "mask.stride[0] = 2: the last dimension must be contiguous");
    m = e.mask;
    BAD_IN_PLACE((m.buf = NULL, x.mask = &m), "mask.buf NULL", "mask.buf is NULL");
    m = e.mask;
    BAD_IN_PLACE((m.buf = e.out.lse_buf, m.offset = e.out.lse_offset, x.mask = &m),
                 "mask inside state.lse", "overlaps mask");
    bad_env_free(&e);
}

/* other partly over state: the message names the tensors the caller gave (state, other). */
static void test_bad_in_place_overlap(void **state) {
    (void)state;
    bad_env e;
    bad_env_init(&e);
    /* state = out (bf16, poisoned); other.o one element into state.o, other.lse elsewhere */
    BAD_IN_PLACE((x.other = e.b.s, x.other.o = e.out.s.o, x.other.o.offset += 2),
                 "other.o one element into state.o", "state.o", "other.o");
    BAD_IN_PLACE((x.other = e.b.s, x.other.lse = e.out.s.lse, x.other.lse.offset += 4),
                 "other.lse one element into state.lse", "state.lse", "other.lse");
    bad_env_free(&e);
}

/* other is state, wholly or in part, with the same views: documented as "must not overlap
 * state" (the in-place exception is flp_merge_state's out == a or b). */
static void test_bad_in_place_other_is_state(void **state) {
    (void)state;
    bad_env e;
    bad_env_init(&e);
    BAD_IN_PLACE(x.other = x.state, "other == state (the same views)", "other", "state");
    BAD_IN_PLACE((x.other = e.b.s, x.other.o = e.out.s.o), "other.o == state.o, other.lse apart",
                 "other.o", "state.o");
    BAD_IN_PLACE((x.other = e.b.s, x.other.lse = e.out.s.lse),
                 "other.lse == state.lse, other.o apart", "other.lse", "state.lse");
    bad_env_free(&e);
}

#define BAD_STATES(field_edit, call, ...)                                                          \
    do {                                                                                           \
        flp_merge_states_args x = e.ra;                                                            \
        field_edit;                                                                                \
        bad_expect(&e, flp_merge_states(g_ctx, &x), call, MENTIONS(__VA_ARGS__));                  \
    } while (0)

static void test_bad_merge_states(void **state) {
    (void)state;
    bad_env e;
    bad_env_init(&e);
    bad_expect(&e, flp_merge_states(NULL, &e.ra), "ctx NULL", NULL);
    bad_expect(&e, flp_merge_states(g_ctx, NULL), "args NULL",
               MENTIONS("flp_merge_states: args is NULL"));
    BAD_STATES(x.states.o.dtype = FLP_DTYPE_I32, "states.o i32",
               "flp_merge_states: states.o.dtype i32 is not f32, f16 or bf16");
    BAD_STATES(x.out.o.dtype = FLP_DTYPE_E4M3, "out.o e4m3",
               "out.o.dtype e4m3 is not f32, f16 or bf16");
    BAD_STATES(x.states.lse.dtype = BF16, "states.lse bf16",
               "states.lse.dtype is bf16, expected f32");
    BAD_STATES(x.states.lse.buf = NULL, "states.lse.buf NULL", "states.lse.buf is NULL");
    BAD_STATES(x.states.lse.shape[0] = 11, "states.lse [11, 2]",
               "states.lse.shape is [11, 2], expected [12, 2]");
    BAD_STATES(x.states.o.ndim = 2, "states.o 2-D", "states.o.ndim is 2, expected 3");
    /* states_per_row / indptr */
    BAD_STATES(x.states_per_row = 0, "states_per_row 0 without indptr",
               "flp_merge_states: states_per_row = 0 must be at least 1 without indptr");
    BAD_STATES(x.states_per_row = -3, "states_per_row -3",
               "states_per_row = -3 must be at least 1 without indptr");
    BAD_STATES(x.indptr = &e.indptr, "states_per_row 3 with indptr",
               "states_per_row = 3 must be 0 when indptr is given");
    BAD_STATES(x.states_per_row = 5, "12 states, 5 per row",
               "12 states are not a whole number of rows of states_per_row = 5");
    flp_tensor it = e.indptr;
    BAD_STATES((it.dtype = FLP_DTYPE_F32, x.indptr = &it, x.states_per_row = 0), "indptr f32",
               "indptr.dtype is f32, expected i32");
    it = e.indptr;
    BAD_STATES((it.dtype = FLP_DTYPE_U8, x.indptr = &it, x.states_per_row = 0), "indptr u8",
               "indptr.dtype is u8, expected i32");
    it = e.indptr;
    BAD_STATES((it.shape[0] = 0, x.indptr = &it, x.states_per_row = 0), "indptr of 0 entries",
               "indptr has 0 entries");
    it = e.indptr;
    BAD_STATES(
        (it.ndim = 2, it.shape[1] = 1, it.stride[1] = 1, x.indptr = &it, x.states_per_row = 0),
        "indptr 2-D", "indptr.ndim is 2, expected 1");
    it = e.indptr;
    BAD_STATES((it.stride[0] = 2, it.shape[0] = 3, x.indptr = &it, x.states_per_row = 0),
               "indptr stride 2", "indptr.stride[0] = 2: the last dimension must be contiguous");
    it = e.indptr;
    BAD_STATES((it.shape[0] = 6, x.indptr = &it, x.states_per_row = 0),
               "indptr of 6 entries for 4 out rows",
               "out.o.shape is [4, 2, 24], expected [5, 2, 24]");
    /* out against the rows */
    BAD_STATES(x.out.o.shape[0] = 5, "out rows 5",
               "out.o.shape is [5, 2, 24], expected [4, 2, 24]");
    BAD_STATES(x.out.o.shape[1] = 3, "out heads 3",
               "out.o.shape is [4, 3, 24], expected [4, 2, 24]");
    BAD_STATES(x.out.lse.shape[0] = 3, "out.lse rows 3",
               "out.lse.shape is [3, 2], expected [4, 2]");
    BAD_STATES(x.out.lse.stride[1] = 0, "out.lse stride 0",
               "out.lse.stride[1] = 0: the last dimension must be contiguous");
    BAD_STATES((x.states.o.shape[2] = x.out.o.shape[2] = 0), "head_dim 0",
               "num_heads = 2 and head_dim = 0 must be at least 1");
    /* overlaps */
    BAD_STATES((x.out.o = e.st.s.o, x.out.o.shape[0] = 4, x.out.o.offset += 2),
               "out.o inside states.o", "out.o (bytes", "overlaps states.o");
    BAD_STATES((x.out = row_subset(&e.st, 0, 1, 12), x.states_per_row = 1),
               "out == states (1 per row)", "out.o (bytes", "overlaps states.o");
    BAD_STATES((x.out.lse.buf = e.ibuf, x.out.lse.offset = 0, x.out.lse.stride[0] = 2,
                x.out.lse.shape[0] = 4, x.out.lse.shape[1] = 2, x.out.lse.stride[1] = 1,
                x.indptr = &e.indptr, x.states_per_row = 0),
               "out.lse over indptr", "out.lse (bytes", "overlaps indptr");
    BAD_STATES((x.out.lse = e.st.s.lse, x.out.lse.shape[0] = 4), "out.lse inside states.lse",
               "out.lse (bytes", "overlaps states.lse");
    bad_env_free(&e);
}

/* Buffers of another context. */
static void test_bad_other_context(void **state) {
    (void)state;
    flp_context_desc desc;
    memset(&desc, 0, sizeof desc);
    desc.backend = test_backend_kind();
    flp_context *other = NULL;
    if (flp_context_create(&desc, &other) != FLP_OK) {
        print_message("no second %s context: skipped\n", test_backend_name());
        skip();
    }
    bad_env e;
    bad_env_init(&e);
    flp_buffer *foreign = NULL;
    const flp_buffer_desc bd = {.size = 1 << 16};
    assert_int_equal(flp_buffer_create(other, &bd, &foreign), FLP_OK);
    BAD_PAIR(x.b.o.buf = foreign, "b.o in another context",
             "flp_merge_state: b.o.buf belongs to another context");
    BAD_PAIR(x.out.lse.buf = foreign, "out.lse in another context",
             "out.lse.buf belongs to another context");
    flp_tensor m = e.mask;
    m.buf = foreign;
    BAD_IN_PLACE(x.mask = &m, "mask in another context", "mask.buf belongs to another context");
    flp_tensor it = e.indptr;
    it.buf = foreign;
    BAD_STATES((x.indptr = &it, x.states_per_row = 0), "indptr in another context",
               "indptr.buf belongs to another context");
    BAD_STATES(x.states.o.buf = foreign, "states.o in another context",
               "states.o.buf belongs to another context");
    flp_buffer_destroy(foreign);
    flp_context_destroy(other);
    bad_env_free(&e);
}

/* ---- main ------------------------------------------------------------------------------------ */

int main(int argc, char **argv) {
    const int rc = test_backend_open(argc, argv, flp_vulkan_validation_message_count, &g_ctx);
    if (rc != 0)
        return rc;
    test_list l = {0};
    for (size_t i = 0; i < PAIR_CASE_COUNT; ++i)
        test_list_add(&l, "pair_", pair_cases[i].name, test_pair, false, (void *)&pair_cases[i]);
    test_list_add(&l, "exact_", "f32_f16", test_exact, false, (void *)exact_f32_f16);
    test_list_add(&l, "exact_", "bf16_f32", test_exact, false, (void *)exact_bf16_f32);
    test_list_add(&l, "exact_", "f16_bf16", test_exact, false, (void *)exact_f16_bf16);
    for (size_t i = 0; i < IN_PLACE_CASE_COUNT; ++i)
        test_list_add(&l, "in_place_", in_place_cases[i].name, test_in_place, false,
                      (void *)&in_place_cases[i]);
    test_list_add(&l, "in_place_", "call", test_in_place_call, false, (void *)&k_false);
    test_list_add(&l, "in_place_", "call_mask", test_in_place_call, false, (void *)&k_true);
    for (size_t i = 0; i < SPR_CASE_COUNT; ++i)
        test_list_add(&l, "states_per_row_", spr_cases[i].name, test_states_per_row, false,
                      (void *)&spr_cases[i]);
    test_list_add(&l, "indptr_", "f16_to_bf16", test_indptr_f16_to_bf16, false, NULL);
    test_list_add(&l, "indptr_", "f32_to_f16_no_lse", test_indptr_f32_to_f16_no_lse, false, NULL);
    test_list_add(&l, "indptr_", "bf16_to_f32_d1", test_indptr_bf16_to_f32_d1, false, NULL);
    test_list_add(&l, "indptr_", "out_of_range", test_indptr_out_of_range, false, NULL);
    test_list_add(&l, "indptr_", "no_states", test_indptr_no_states, false, NULL);
    for (size_t i = 0; i < WHOLE_CASE_COUNT; ++i)
        test_list_add(&l, "whole_", whole_cases[i].name, test_whole, false,
                      (void *)&whole_cases[i]);
    test_list_add(&l, "", "nan_lse", test_nan_lse, false, NULL);
    test_list_add(&l, "", "determinism", test_determinism, false, NULL);
    test_list_add(&l, "", "rows_zero", test_rows_zero, false, NULL);
    test_list_add(&l, "", "bad_pair", test_bad_pair, true, NULL);
    test_list_add(&l, "", "bad_in_place", test_bad_in_place, true, NULL);
    test_list_add(&l, "", "bad_in_place_overlap", test_bad_in_place_overlap, true, NULL);
    test_list_add(&l, "", "bad_in_place_other_is_state", test_bad_in_place_other_is_state, true,
                  NULL);
    test_list_add(&l, "", "bad_merge_states", test_bad_merge_states, true, NULL);
    test_list_add(&l, "", "bad_other_context", test_bad_other_context, true, NULL);
    return test_list_run(&l, "merge", argc, argv, test_backend_group_setup,
                         test_backend_group_teardown);
}
