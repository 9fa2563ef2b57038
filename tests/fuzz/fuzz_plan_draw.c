/* Drawing plan batches from a fuzz input (fuzz_plan_draw.h). */
#include "tests/fuzz/fuzz_plan_draw.h"

#include <math.h>
#include <string.h>

void mention(outcome *o, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(o->frags[o->num_frags++], sizeof o->frags[0], fmt, ap);
    va_end(ap);
}

/* ---- draws -------------------------------------------------------------------------------- */

int32_t pick(fuzz_input *in, int32_t n) {
    uint32_t v = fuzz_u8(in);
    if (n > 200)
        v = v << 8 | fuzz_u8(in);
    return (int32_t)(v % (uint32_t)n);
}

int32_t pick_negative(fuzz_input *in) {
    const uint8_t b = fuzz_u8(in);
    return b % 3 == 0 ? -1 : b % 3 == 1 ? -1 - (int32_t)(b % 50) : INT32_MIN;
}

int32_t pick_page_size(fuzz_input *in) {
    static const int32_t sizes[] = {1,  2,  3,  4,  5,  7,  8,   15,  16,
                                    17, 31, 32, 33, 64, 65, 100, 127, 128};
    const uint8_t b = fuzz_u8(in);
    return b < 200 ? sizes[b % 18] : 1 + b % FLP_MAX_PAGE_SIZE;
}

int32_t pick_page_id(fuzz_input *in, int32_t max_pages) {
    const uint8_t k = fuzz_u8(in);
    return k < 16 ? 0 : k < 20 ? INT32_MAX - k % 4 : pick(in, 2 * max_pages);
}

void pick_variant(fuzz_input *in, int32_t head_dim, const variant_draw *draw, flp_variant *v) {
    memset(v, 0, sizeof *v);
    v->head_dim = head_dim;
    static const flp_dtype q[] = {FLP_DTYPE_DEFAULT, FLP_DTYPE_F16, FLP_DTYPE_BF16};
    static const flp_dtype kv[] = {FLP_DTYPE_DEFAULT, FLP_DTYPE_F16, FLP_DTYPE_BF16, FLP_DTYPE_E4M3,
                                   FLP_DTYPE_E5M2};
    v->q_dtype = q[fuzz_u8(in) % 3];
    v->kv_dtype = kv[fuzz_u8(in) % 5];
    v->mask = (flp_mask_mode)(fuzz_u8(in) % draw->mask_modes);
    const uint8_t w = fuzz_u8(in);
    v->use_window = w % 3 == 0;
    /* small windows clip long requests; huge ones clip nothing; 0 keeps a row's own key */
    v->window_left = w < 128   ? pick(in, 300)
                     : w < 192 ? pick(in, 4)
                     : w < 240 ? pick(in, 5000)
                               : INT32_MAX - w % 4;
    const uint8_t opts = fuzz_u8(in);
    v->logits_soft_cap = opts & 1 ? draw->soft_cap : 0.0f;
    v->sm_scale = opts & 2 ? draw->sm_scale : 0.0f;
    v->pos_encoding = (flp_pos_encoding)((opts >> 2) % 3);
    v->k_scale = opts & 32 ? 0.5f : 0.0f;
    v->v_scale = opts & 64 ? 2.0f : 0.0f;
}

/* ---- one argument broken ------------------------------------------------------------------ */

void break_batch_size(fuzz_input *in, int32_t *batch_size, outcome *o) {
    *batch_size = fuzz_u8(in) % 2 ? 0 : pick_negative(in);
    mention(o, "batch_size = %d", *batch_size);
}

void over_batch_size(int32_t batch_size, int32_t max_batch, outcome *o) {
    o->status = FLP_ERROR_CAPACITY;
    mention(o, "batch_size = %d", batch_size);
    mention(o, "max_batch_size = %d", max_batch);
}

void break_indptr0(fuzz_input *in, const char *indptr_name, int32_t *indptr, outcome *o) {
    indptr[0] = fuzz_u8(in) % 2 ? 1 + pick(in, 5) : pick_negative(in);
    mention(o, "%s[0] = %d", indptr_name, indptr[0]);
}

void decrease_indptr(fuzz_input *in, const char *indptr_name, int32_t *indptr, int32_t r,
                     outcome *o) {
    indptr[r + 1] = indptr[r] - 1 - pick(in, 3);
    mention(o, "%s", indptr_name);
    mention(o, "request %d", r);
    mention(o, "%d then %d", indptr[r], indptr[r + 1]);
}

void over_indptr_end(fuzz_input *in, const char *indptr_name, int32_t *indptr, int32_t batch_size,
                     const char *cap_name, int32_t cap, outcome *o) {
    indptr[batch_size] = cap + 1 + pick(in, 8);
    o->status = FLP_ERROR_CAPACITY;
    mention(o, "%s[%d] = %d", indptr_name, batch_size, indptr[batch_size]);
    mention(o, "%s = %d", cap_name, cap);
}

void break_enum(fuzz_input *in, const char *name, int32_t *value, outcome *o) {
    const int32_t bad[] = {2, -1, 7, INT32_MAX};
    *value = bad[fuzz_u8(in) % 4];
    mention(o, "%s = %d", name, *value);
}

void break_page_size(fuzz_input *in, int32_t *page_size, outcome *o) {
    const int32_t bad[] = {0, -1, FLP_MAX_PAGE_SIZE + 1, 256, INT32_MAX, INT32_MIN};
    *page_size = bad[fuzz_u8(in) % 6];
    mention(o, "page_size = %d", *page_size);
}

void break_last_page_len(fuzz_input *in, int32_t page_size, int32_t *last, int32_t r, outcome *o) {
    const int32_t bad[] = {0, -1, page_size + 1, INT32_MAX, INT32_MIN, page_size + 100};
    last[r] = bad[fuzz_u8(in) % 6];
    mention(o, "kv_last_page_len[%d] = %d", r, last[r]);
}

void break_page_id(fuzz_input *in, int32_t *indices, int32_t total, outcome *o) {
    const int32_t i = pick(in, total);
    indices[i] = pick_negative(in);
    mention(o, "kv_indices[%d] = %d", i, indices[i]);
}

void break_head_dim(fuzz_input *in, int32_t plan_head_dim, flp_variant *v, outcome *o) {
    const int32_t dims[] = {64, 128, 256, 96, 32, 240, 0, -64, 100, 512};
    int32_t dim = dims[fuzz_u8(in) % 10];
    if (dim == plan_head_dim)
        dim = plan_head_dim == 64 ? 128 : 64;
    v->head_dim = dim;
    if (dim > 0 && dim % 16 == 0 && dim <= 256 && dim != 64 && dim != 128 && dim != 256)
        o->status = FLP_ERROR_UNSUPPORTED;
    mention(o, "head_dim = %d", dim);
}

void break_window(fuzz_input *in, flp_variant *v, outcome *o) {
    v->use_window = true;
    v->window_left = pick_negative(in);
    mention(o, "window_left = %d", v->window_left);
}

void break_slope(fuzz_input *in, int32_t hq, float *slopes, bool *with_slopes, outcome *o) {
    const int32_t h = pick(in, hq);
    *with_slopes = true;
    const uint8_t k = fuzz_u8(in) % 3;
    slopes[h] = k == 0 ? NAN : k == 1 ? INFINITY : -INFINITY;
    mention(o, "alibi_slopes[%d]", h);
}
