/* The float64 reference implementation of attention (docs/design.md section 3): one plain loop per
 * definition, no tiling, no shortcuts. Every other implementation is checked against it, so it
 * favours being obviously right over being fast.
 *
 * Decisions the contract leaves open:
 * - A request with qo_len > kv_len is invalid unless kv_len == 0 (then each of its rows sees no
 *   key: out row 0, lse -inf).
 * - Order of the logit pipeline: sm_scale * dot(rope(q), rope(k)), then the soft cap, then
 *   ALiBi, then the masks (causal or custom, ANDed with the window).
 * - RoPE frequencies: base = theta^(-2d/D) / scale, then the Llama 3.1 rule is applied to base.
 *   (FlashInfer folds the Llama 3.1 factor into its rope_scale; here the two are separate and
 *   scale = 1 is the usual choice together with llama31.) No golden case combines llama31 with
 *   scale != 1; append_rope_alibi_scale (scale 2) and decode_rope_llama31 fix the rest.
 * - Standard ALiBi slopes are computed in float64; the golden results use exactly these. */
#include "core/reference.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- small helpers ------------------------------------------------------------------------ */

static bool indptr_valid(const int32_t *indptr, int32_t batch_size) {
    if (indptr[0] != 0)
        return false;
    for (int32_t b = 0; b < batch_size; ++b)
        if (indptr[b + 1] < indptr[b])
            return false;
    return true;
}

static bool rope_params_valid(const flp_rope_params *r) {
    if (!(r->theta >= 0.0f) || !(r->scale >= 0.0f) || isinf(r->theta) || isinf(r->scale))
        return false;
    if (r->llama31) {
        if (!(r->llama31_factor > 0.0f) || !(r->llama31_low_freq_factor > 0.0f) ||
            !(r->llama31_high_freq_factor > r->llama31_low_freq_factor) ||
            r->llama31_original_max_position <= 0)
            return false;
    }
    return true;
}

void flp_ref_rope_frequencies(const flp_rope_params *rope, int32_t head_dim, double *freq) {
    const double theta = rope->theta > 0.0f ? (double)rope->theta : 10000.0;
    const double scale = rope->scale > 0.0f ? (double)rope->scale : 1.0;
    const double pi = 3.14159265358979323846;
    for (int32_t d = 0; d < head_dim / 2; ++d) {
        double f = pow(theta, -2.0 * d / head_dim) / scale;
        if (rope->llama31) {
            const double factor = rope->llama31_factor;
            const double low = rope->llama31_low_freq_factor;
            const double high = rope->llama31_high_freq_factor;
            const double orig = rope->llama31_original_max_position;
            const double wavelen = 2.0 * pi / f;
            if (wavelen < orig / high) {
                /* high frequency: unchanged */
            } else if (wavelen > orig / low) {
                f /= factor;
            } else {
                const double smooth = (orig / wavelen - low) / (high - low);
                f = (1.0 - smooth) * f / factor + smooth * f;
            }
        }
        freq[d] = f;
    }
}

void flp_ref_alibi_slopes(int32_t num_heads, double *slopes) {
    if (num_heads <= 0)
        return;
    int32_t n = 1;
    while (n * 2 <= num_heads)
        n *= 2;
    for (int32_t k = 0; k < n; ++k)
        slopes[k] = exp2(-8.0 * (k + 1) / n);
    for (int32_t j = 0; j < num_heads - n; ++j)
        slopes[n + j] = exp2(-4.0 * (2 * j + 1) / n);
}

/* Rotate-half RoPE of one head vector x[D] at position pos, in place. */
static void rope_rotate(double *x, int32_t head_dim, const double *freq, double pos) {
    const int32_t half = head_dim / 2;
    for (int32_t d = 0; d < half; ++d) {
        const double angle = pos * freq[d];
        const double c = cos(angle), s = sin(angle);
        const double x0 = x[d], x1 = x[d + half];
        x[d] = x0 * c - x1 * s;
        x[d + half] = x1 * c + x0 * s;
    }
}

void flp_ref_merge_state(int32_t head_dim, const double *o_a, double s_a, const double *o_b,
                         double s_b, double *o_out, double *s_out) {
    const double m = s_a > s_b ? s_a : s_b;
    if (m == -INFINITY) {
        for (int32_t d = 0; d < head_dim; ++d)
            o_out[d] = 0.0;
        *s_out = -INFINITY;
        return;
    }
    const double w_a = exp(s_a - m), w_b = exp(s_b - m);
    const double inv = 1.0 / (w_a + w_b);
    for (int32_t d = 0; d < head_dim; ++d)
        o_out[d] = (w_a * o_a[d] + w_b * o_b[d]) * inv;
    *s_out = m + log(w_a + w_b);
}

/* ---- attention ---------------------------------------------------------------------------- */

static flp_status validate(const flp_ref_attention *a, const double *out) {
    if (!a || !out || !a->qo_indptr || !a->kv_indptr || !a->q || !a->k || !a->v)
        return FLP_ERROR_INVALID_ARGUMENT;
    if (a->batch_size < 0 || a->num_qo_heads <= 0 || a->num_kv_heads <= 0 || a->head_dim <= 0 ||
        a->num_qo_heads % a->num_kv_heads != 0)
        return FLP_ERROR_INVALID_ARGUMENT;
    if (!indptr_valid(a->qo_indptr, a->batch_size) || !indptr_valid(a->kv_indptr, a->batch_size))
        return FLP_ERROR_INVALID_ARGUMENT;
    for (int32_t b = 0; b < a->batch_size; ++b) {
        const int32_t qo_len = a->qo_indptr[b + 1] - a->qo_indptr[b];
        const int32_t kv_len = a->kv_indptr[b + 1] - a->kv_indptr[b];
        if (kv_len > 0 && qo_len > kv_len)
            return FLP_ERROR_INVALID_ARGUMENT;
    }
    switch (a->mask) {
    case FLP_MASK_NONE:
    case FLP_MASK_CAUSAL:
        break;
    case FLP_MASK_CUSTOM:
        if (!a->custom_mask || !a->mask_indptr)
            return FLP_ERROR_INVALID_ARGUMENT;
        for (int32_t b = 0; b < a->batch_size; ++b)
            if (a->mask_indptr[b] < 0)
                return FLP_ERROR_INVALID_ARGUMENT;
        break;
    default:
        return FLP_ERROR_INVALID_ARGUMENT;
    }
    if (a->use_window && a->window_left < 0)
        return FLP_ERROR_INVALID_ARGUMENT;
    if (!(a->logits_soft_cap >= 0.0) || isinf(a->logits_soft_cap) || !(a->sm_scale >= 0.0) ||
        isinf(a->sm_scale))
        return FLP_ERROR_INVALID_ARGUMENT;
    switch (a->pos_encoding) {
    case FLP_POS_NONE:
    case FLP_POS_ALIBI:
        break;
    case FLP_POS_ROPE_LLAMA:
        if (a->head_dim % 2 != 0 || !rope_params_valid(&a->rope))
            return FLP_ERROR_INVALID_ARGUMENT;
        break;
    default:
        return FLP_ERROR_INVALID_ARGUMENT;
    }
    return FLP_OK;
}

/* Whether key j is kept for a query at position pos (row i of its request). */
static bool key_kept(const flp_ref_attention *a, int32_t b, int32_t i, int32_t j, int32_t pos,
                     int32_t kv_len) {
    if (a->mask == FLP_MASK_CAUSAL && j > pos)
        return false;
    if (a->mask == FLP_MASK_CUSTOM) {
        const size_t bit = (size_t)i * (size_t)kv_len + (size_t)j;
        const uint8_t byte = a->custom_mask[(size_t)a->mask_indptr[b] + bit / 8];
        if (!((byte >> (bit % 8)) & 1u))
            return false;
    }
    if (a->use_window && j < pos - a->window_left)
        return false;
    return true;
}

/* Attention of all rows of request b. Scratch: k_rot [kv_len, Hkv, D] when RoPE is on (NULL
 * otherwise), q_rot [D], logit [kv_len]. */
static void run_request(const flp_ref_attention *a, int32_t b, const double *freq,
                        const double *slopes, double *k_rot, double *q_rot, double *logit,
                        double *out, double *lse) {
    const int32_t Hq = a->num_qo_heads, Hkv = a->num_kv_heads, D = a->head_dim;
    const int32_t group = Hq / Hkv;
    const int32_t q0 = a->qo_indptr[b], qo_len = a->qo_indptr[b + 1] - q0;
    const int32_t k0 = a->kv_indptr[b], kv_len = a->kv_indptr[b + 1] - k0;
    const bool rope = a->pos_encoding == FLP_POS_ROPE_LLAMA;
    const bool alibi = a->pos_encoding == FLP_POS_ALIBI;
    const double sm_scale = a->sm_scale > 0.0 ? a->sm_scale : 1.0 / sqrt((double)D);
    const double cap = a->logits_soft_cap;
    const double *keys = a->k + (size_t)k0 * Hkv * D;

    if (rope) {
        const int32_t k_off = a->k_rope_offset ? a->k_rope_offset[b] : 0;
        memcpy(k_rot, keys, sizeof(double) * (size_t)kv_len * Hkv * D);
        for (int32_t j = 0; j < kv_len; ++j)
            for (int32_t h = 0; h < Hkv; ++h)
                rope_rotate(k_rot + ((size_t)j * Hkv + h) * D, D, freq, (double)j + k_off);
        keys = k_rot;
    }

    for (int32_t i = 0; i < qo_len; ++i) {
        const int32_t pos = kv_len - qo_len + i;
        const size_t row = (size_t)(q0 + i);
        for (int32_t h = 0; h < Hq; ++h) {
            const int32_t hk = h / group;
            double *o = out + (row * Hq + h) * D;
            memcpy(q_rot, a->q + (row * Hq + h) * D, sizeof(double) * D);
            if (rope) {
                const int32_t q_off = a->q_rope_offset ? a->q_rope_offset[b] : 0;
                rope_rotate(q_rot, D, freq, (double)pos + q_off);
            }
            double m = -INFINITY;
            for (int32_t j = 0; j < kv_len; ++j) {
                if (!key_kept(a, b, i, j, pos, kv_len)) {
                    logit[j] = -INFINITY;
                    continue;
                }
                const double *kj = keys + ((size_t)j * Hkv + hk) * D;
                double dot = 0.0;
                for (int32_t d = 0; d < D; ++d)
                    dot += q_rot[d] * kj[d];
                double l = sm_scale * dot;
                if (cap > 0.0)
                    l = cap * tanh(l / cap);
                if (alibi)
                    l += slopes[h] * (double)(j - pos);
                logit[j] = l;
                if (l > m)
                    m = l;
            }
            for (int32_t d = 0; d < D; ++d)
                o[d] = 0.0;
            if (m == -INFINITY) { /* no key kept (or no key at all) */
                if (lse)
                    lse[row * Hq + h] = -INFINITY;
                continue;
            }
            double sum = 0.0;
            for (int32_t j = 0; j < kv_len; ++j) {
                if (logit[j] == -INFINITY)
                    continue;
                const double w = exp(logit[j] - m);
                const double *vj = a->v + ((size_t)(k0 + j) * Hkv + hk) * D;
                sum += w;
                for (int32_t d = 0; d < D; ++d)
                    o[d] += w * vj[d];
            }
            for (int32_t d = 0; d < D; ++d)
                o[d] /= sum;
            if (lse)
                lse[row * Hq + h] = m + log(sum);
        }
    }
}

flp_status flp_ref_attention_run(const flp_ref_attention *a, double *out, double *lse) {
    flp_status st = validate(a, out);
    if (st != FLP_OK)
        return st;
    const int32_t Hq = a->num_qo_heads, Hkv = a->num_kv_heads, D = a->head_dim;
    const bool rope = a->pos_encoding == FLP_POS_ROPE_LLAMA;

    int32_t max_kv = 0;
    for (int32_t b = 0; b < a->batch_size; ++b) {
        const int32_t kv_len = a->kv_indptr[b + 1] - a->kv_indptr[b];
        if (kv_len > max_kv)
            max_kv = kv_len;
    }
    /* Every scratch array gets at least one element so a NULL from malloc means no memory. */
    double *freq = malloc(sizeof(double) * (size_t)(D / 2 + 1));
    double *slopes = malloc(sizeof(double) * (size_t)Hq);
    double *q_rot = malloc(sizeof(double) * (size_t)D);
    double *logit = malloc(sizeof(double) * (size_t)(max_kv + 1));
    double *k_rot = rope ? malloc(sizeof(double) * ((size_t)max_kv * Hkv * D + 1)) : NULL;
    if (!freq || !slopes || !q_rot || !logit || (rope && !k_rot)) {
        st = FLP_ERROR_OUT_OF_MEMORY;
        goto done;
    }
    if (rope)
        flp_ref_rope_frequencies(&a->rope, D, freq);
    if (a->pos_encoding == FLP_POS_ALIBI) {
        if (a->alibi_slopes)
            memcpy(slopes, a->alibi_slopes, sizeof(double) * (size_t)Hq);
        else
            flp_ref_alibi_slopes(Hq, slopes);
    }
    for (int32_t b = 0; b < a->batch_size; ++b)
        run_request(a, b, freq, slopes, k_rot, q_rot, logit, out, lse);
done:
    free(freq);
    free(slopes);
    free(q_rot);
    free(logit);
    free(k_rot);
    return st;
}

/* ---- paged gather ------------------------------------------------------------------------- */

flp_status flp_ref_gather_paged(int32_t batch_size, int32_t num_kv_heads, int32_t head_dim,
                                int32_t page_size, flp_kv_layout layout, int32_t num_pages,
                                const float *cache, const int32_t *kv_indptr,
                                const int32_t *kv_indices, const int32_t *kv_last_page_len,
                                int32_t *kv_token_indptr, double *out) {
    if (batch_size < 0 || num_kv_heads <= 0 || head_dim <= 0 || page_size <= 0 || num_pages < 0)
        return FLP_ERROR_INVALID_ARGUMENT;
    if (layout != FLP_KV_LAYOUT_NHD && layout != FLP_KV_LAYOUT_HND)
        return FLP_ERROR_INVALID_ARGUMENT;
    if (!kv_indptr || !kv_last_page_len || !kv_token_indptr ||
        (batch_size > 0 && kv_indptr[batch_size] > 0 && (!cache || !kv_indices || !out)))
        return FLP_ERROR_INVALID_ARGUMENT;
    if (!indptr_valid(kv_indptr, batch_size))
        return FLP_ERROR_INVALID_ARGUMENT;
    /* Validate everything before writing anything. */
    int64_t tokens = 0;
    for (int32_t b = 0; b < batch_size; ++b) {
        const int32_t pages = kv_indptr[b + 1] - kv_indptr[b];
        if (pages == 0)
            continue; /* an empty request: its last_page_len is unused */
        if (kv_last_page_len[b] < 1 || kv_last_page_len[b] > page_size)
            return FLP_ERROR_INVALID_ARGUMENT;
        for (int32_t p = kv_indptr[b]; p < kv_indptr[b + 1]; ++p)
            if (kv_indices[p] < 0 || kv_indices[p] >= num_pages)
                return FLP_ERROR_INVALID_ARGUMENT;
        tokens += (int64_t)(pages - 1) * page_size + kv_last_page_len[b];
        if (tokens > INT32_MAX)
            return FLP_ERROR_INVALID_ARGUMENT;
    }

    kv_token_indptr[0] = 0;
    for (int32_t b = 0; b < batch_size; ++b) {
        const int32_t pages = kv_indptr[b + 1] - kv_indptr[b];
        const int32_t kv_len = pages == 0 ? 0 : (pages - 1) * page_size + kv_last_page_len[b];
        kv_token_indptr[b + 1] = kv_token_indptr[b] + kv_len;
        for (int32_t t = 0; t < kv_len; ++t) {
            const size_t page = (size_t)kv_indices[kv_indptr[b] + t / page_size];
            const size_t slot = (size_t)(t % page_size);
            for (int32_t h = 0; h < num_kv_heads; ++h) {
                const size_t src = layout == FLP_KV_LAYOUT_NHD
                                       ? ((page * page_size + slot) * num_kv_heads + h) * head_dim
                                       : ((page * num_kv_heads + h) * page_size + slot) * head_dim;
                double *dst =
                    out + ((size_t)(kv_token_indptr[b] + t) * num_kv_heads + h) * head_dim;
                for (int32_t d = 0; d < head_dim; ++d)
                    dst[d] = cache[src + d];
            }
        }
    }
    return FLP_OK;
}

/* ---- comparison --------------------------------------------------------------------------- */

double flp_ref_relative_error(const double *a, const double *b, size_t n) {
    /* Equal elements (equal infinities included) differ by 0; any NaN, or an infinity that the
     * other side does not match, makes the error infinite. max|b| runs over finite b. */
    double max_diff = 0.0, max_ref = 0.0;
    for (size_t i = 0; i < n; ++i) {
        if (isnan(a[i]) || isnan(b[i]))
            return INFINITY;
        if (a[i] == b[i]) {
            if (isfinite(b[i]) && fabs(b[i]) > max_ref)
                max_ref = fabs(b[i]);
            continue;
        }
        if (!isfinite(a[i]) || !isfinite(b[i]))
            return INFINITY;
        const double diff = fabs(a[i] - b[i]);
        if (diff > max_diff)
            max_diff = diff;
        if (fabs(b[i]) > max_ref)
            max_ref = fabs(b[i]);
    }
    if (max_diff == 0.0)
        return 0.0;
    return max_ref > 0.0 ? max_diff / max_ref : INFINITY;
}
