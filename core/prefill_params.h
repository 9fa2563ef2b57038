/* The prefill launch: plan information, per-run parameters and work items of the prefill and
 * append kernels, and the KV-append launch. Plain C with fixed-width types: the CUDA kernels
 * include it as is and shaders/prefill_params.glsl mirrors it field for field (std430; every
 * 8-byte field is 8-aligned). tests/test_vulkan.c compares the shaders' member offsets with
 * these structs. */
#ifndef FLP_CORE_PREFILL_PARAMS_H
#define FLP_CORE_PREFILL_PARAMS_H

#include "core/decode_params.h"

/* Query rows are "packed": packed row p of request b is query token p / group_size of the
 * request and query head kv_head * group_size + p % group_size, so the query heads that share a
 * KV head share every K/V tile (GQA). Work items (FLP_PITEM_*) and merge items (FLP_MITEM_*):
 * core/kernel_constants.h. */

/* Written by flp_prefill_plan at the start of the plan's prefill region and read by the kernels
 * from there (never from the launch), like flp_decode_plan_info.
 *
 * Prefill region (offsets in 4-byte words from this struct's address):
 *   qo_indptr     i32 [batch_size + 1]   first query row (token) of each request in q/out
 *   kv_indptr     i32 [batch_size + 1]   paged: first page in kv_indices; ragged: first k row
 *   kv_len        i32 [batch_size]       keys per request
 *   q_rope_offset i32 [batch_size]
 *   k_rope_offset i32 [batch_size]
 *   mask_indptr   i32 [batch_size]       custom mask: byte offset of request b's bits
 *   rope_freq     f32 [head_dim / 2]
 *   alibi_slopes  f32 [num_qo_heads]
 *   work_indptr   i32 [num_ctas + 1]     items of workgroup c: [work_indptr[c], [c+1])
 *   work_items    i32 [items * FLP_PREFILL_ITEM_INTS]
 *   merge_items   i32 [num_merge_items * FLP_MERGE_ITEM_INTS]
 *   kv_indices    i32 [kv_indptr[batch_size]] (paged, when the plan was given the page ids;
 *                 the kernels read page ids through flp_prefill_params.kv_indices)
 *   partial_o     f32 [slots][FLP_PREFILL_MAX_TILE][head_dim]  row r - row_begin of the item
 *   partial_lse   f32 [slots][FLP_PREFILL_MAX_TILE]            natural log, -inf: no key
 *
 * Token t of request b: paged: page kv_indices[kv_indptr[b] + t / page_size], slot
 * t % page_size, K element at k + page*k_stride_page + slot*k_stride_slot + g*k_stride_head + d;
 * ragged: k + (kv_indptr[b] + t)*k_stride_slot + g*k_stride_head + d (k_stride_page unused).
 * Query token i of request b (position kv_len - qo_len + i), head h: q + (qo_indptr[b] + i) *
 * q_stride_row + h*q_stride_head + d; out and lse likewise.
 * Custom mask bit of (i, j): bit index mask_indptr[b]*8 + i*kv_len + j of the mask bytes,
 * byte = index >> 3, bit = index & 7 (little-endian). */
typedef struct flp_prefill_plan_info {
    uint32_t off_qo_indptr, off_kv_indptr, off_kv_len, off_q_rope_offset;
    uint32_t off_k_rope_offset, off_mask_indptr, off_rope_freq, off_alibi_slopes;
    uint32_t off_work_indptr, off_work_items, off_merge_items, off_kv_indices;
    uint32_t off_partial_o, off_partial_lse;

    int32_t batch_size, num_qo_heads, num_kv_heads, group_size;
    int32_t head_dim, page_size, num_ctas, num_merge_items;
    int32_t q_tile; /* packed rows per item chosen by the plan (16, 64 or 128) */
    uint32_t flags;
    int32_t window_left;
    int32_t q_dtype, kv_dtype; /* flp_dtype values; out has q_dtype */
    float sm_scale, soft_cap, k_scale, v_scale;
    /* the region's user slot: each run's user parameter values (core/variant_program.h), read
     * by the kernels of a variant with snippets (Vulkan) */
    uint32_t off_user_params;
} flp_prefill_plan_info;

/* What one run adds: the tensors (by value, like flp_decode_params). Ragged KV: *_stride_page
 * is 0 and *_stride_slot is the row stride. */
typedef struct flp_prefill_params {
    uint64_t q, k, v, o;
    uint64_t lse;  /* 0: no lse output */
    uint64_t plan; /* the flp_prefill_plan_info */
    uint64_t mask; /* custom mask bytes; 0 without FLP_FLAG_CUSTOM_MASK */
    int64_t q_stride_row, q_stride_head;
    int64_t o_stride_row, o_stride_head;
    int64_t k_stride_page, k_stride_slot, k_stride_head;
    int64_t v_stride_page, v_stride_slot, v_stride_head;
    int64_t lse_stride_row; /* lse head stride is 1 */
    /* paged: i32 page ids, the plan's copy or the run's kv_indices tensor, and the pages of
     * k/v (ids outside [0, num_pages) are not followed), like flp_decode_params; ragged: 0 */
    uint64_t kv_indices;
    int64_t num_pages;
} flp_prefill_params;

/* The size both compilers must agree on (the C and CUDA static assertions). */
#define FLP_PREFILL_PARAMS_BYTES 160

/* The KV append: one launch, everything by value (nothing to re-plan). Row r of the new K/V
 * goes to request b = batch_indices[r], token position t = positions[r]: page
 * kv_indices[kv_indptr[b] + t / page_size], slot t % page_size. Rows with b outside
 * [0, batch_size), t < 0, kv_indptr[b] + t / page_size >= kv_indptr[b + 1] or >= num_indices,
 * or a page id outside [0, num_pages) are skipped. */
typedef struct flp_kv_append_params {
    uint64_t k, v;                       /* new rows [nnz, Hkv, D], src_dtype */
    uint64_t k_cache, v_cache;           /* cache_dtype */
    uint64_t batch_indices, positions;   /* i32 [nnz] */
    uint64_t kv_indptr, kv_indices;      /* i32 [batch_size + 1], i32 [num_indices] */
    int64_t k_stride_row, k_stride_head; /* new rows, elements */
    int64_t v_stride_row, v_stride_head;
    int64_t kc_stride_page, kc_stride_slot, kc_stride_head; /* caches, elements */
    int64_t vc_stride_page, vc_stride_slot, vc_stride_head;
    int64_t batch_indices_stride, positions_stride; /* elements */
    int32_t nnz, num_kv_heads, head_dim, page_size;
    int32_t batch_size, num_indices, num_pages;
    int32_t src_dtype, cache_dtype; /* flp_dtype values */
    float k_inv_scale, v_inv_scale; /* 1 / scale for fp8 caches, 1 otherwise */
    int32_t reserved[1];            /* pads to 8-byte multiple */
} flp_kv_append_params;

#ifndef __cplusplus
_Static_assert(sizeof(flp_prefill_plan_info) == 128,
               "flp_prefill_plan_info layout changed: update shaders/prefill_params.glsl and the "
               "kernels");
_Static_assert(sizeof(flp_prefill_params) == FLP_PREFILL_PARAMS_BYTES,
               "flp_prefill_params layout changed: update shaders/prefill_params.glsl and the "
               "kernels");
_Static_assert(sizeof(flp_kv_append_params) == 208,
               "flp_kv_append_params layout changed: update shaders/kv_append.comp and the "
               "kernels");
#endif

#endif /* FLP_CORE_PREFILL_PARAMS_H */
