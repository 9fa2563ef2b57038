/* The float64 reference implementation of attention (docs/design.md section 3). Used by the tests
 * and the demo to check every backend; slow on purpose: one plain loop per definition. */
#ifndef FLP_CORE_REFERENCE_H
#define FLP_CORE_REFERENCE_H

#include "flashport/flashport.h"

/* One batch of ragged queries attending to ragged keys. Paged caches are first gathered with
 * flp_ref_gather_paged. Zero-initialise; the caller owns every array. */
typedef struct flp_ref_attention {
    int32_t batch_size, num_qo_heads, num_kv_heads, head_dim;
    const int32_t *qo_indptr; /* [batch_size + 1] rows of q per request */
    const int32_t *kv_indptr; /* [batch_size + 1] rows of k/v per request */
    const double *q;          /* [qo_indptr[batch_size], num_qo_heads, head_dim] */
    const double *k;          /* [kv_indptr[batch_size], num_kv_heads, head_dim] */
    const double *v;          /* [kv_indptr[batch_size], num_kv_heads, head_dim] */
    flp_mask_mode mask;
    const uint8_t *custom_mask; /* FLP_MASK_CUSTOM: packed bits, little-endian bit order */
    const int32_t *mask_indptr; /* [batch_size] byte offset of each request's [qo, kv] bits */
    bool use_window;
    int32_t window_left;
    double logits_soft_cap; /* 0 = off */
    double sm_scale;        /* 0 = 1/sqrt(head_dim) */
    flp_pos_encoding pos_encoding;
    flp_rope_params rope;         /* zero theta/scale mean 10000 / 1 */
    const int32_t *q_rope_offset; /* [batch_size] or NULL */
    const int32_t *k_rope_offset; /* [batch_size] or NULL */
    const double *alibi_slopes;   /* [num_qo_heads] or NULL = standard slopes */
} flp_ref_attention;

/* out [qo_indptr[B], Hq, D]; lse [qo_indptr[B], Hq] natural log, -inf with no kept key (its
 * out row is 0), may be NULL. FLP_ERROR_INVALID_ARGUMENT on inconsistent input. */
flp_status flp_ref_attention_run(const flp_ref_attention *a, double *out, double *lse);

/* Merge of two partial states over disjoint key sets (docs/design.md section 3). out may alias o_a.
 */
void flp_ref_merge_state(int32_t head_dim, const double *o_a, double s_a, const double *o_b,
                         double s_b, double *o_out, double *s_out);

/* Frequencies of the rotate-half pairs d = 0..head_dim/2-1: theta^(-2d/D) / scale with the
 * Llama 3.1 scaling when rope->llama31. Zero theta/scale mean the defaults. */
void flp_ref_rope_frequencies(const flp_rope_params *rope, int32_t head_dim, double *freq);

/* The standard ALiBi slopes as doubles. */
void flp_ref_alibi_slopes(int32_t num_heads, double *slopes);

/* Gathers a paged cache (floats as stored, already dequantised) into ragged rows:
 * cache NHD [num_pages, page_size, Hkv, D] or HND [num_pages, Hkv, page_size, D], contiguous;
 * out [kv_indptr_tokens[B], Hkv, D] with kv_indptr_tokens (computed, [B + 1]). */
flp_status flp_ref_gather_paged(int32_t batch_size, int32_t num_kv_heads, int32_t head_dim,
                                int32_t page_size, flp_kv_layout layout, int32_t num_pages,
                                const float *cache, const int32_t *kv_indptr,
                                const int32_t *kv_indices, const int32_t *kv_last_page_len,
                                int32_t *kv_token_indptr, double *out);

/* Largest |a - b| / max|b| over n elements (0 when both are all zero; infinity on NaN). */
double flp_ref_relative_error(const double *a, const double *b, size_t n);

#endif /* FLP_CORE_REFERENCE_H */
