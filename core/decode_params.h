/* The decode launch: the plan information and per-run parameters every decode kernel reads.
 * Plain C with fixed-width types so that the CUDA kernels include it as is and
 * shaders/decode_params.glsl mirrors it field for field (GLSL reads both through buffer
 * references, std430 rules: every 8-byte field is 8-aligned, so C and GLSL agree). Keep them in
 * sync: tests/test_vulkan.c compares the shaders' member offsets with these structs. */
#ifndef FLP_CORE_DECODE_PARAMS_H
#define FLP_CORE_DECODE_PARAMS_H

#if defined(__CUDACC_RTC__)
/* NVRTC has no system headers at run time on users' machines: declare what we use. */
typedef unsigned int uint32_t;
typedef int int32_t;
typedef unsigned long long uint64_t;
typedef long long int64_t;
#else
#include <stdint.h>
#endif

/* Flags, dtype codes and the fields of work items (FLP_WORK_*). */
#include "core/kernel_constants.h"

/* Everything a plan decides, written by flp_decode_plan at the start of the plan memory and read
 * by the kernels from there (never from the launch), so that a CUDA graph or a Vulkan command
 * buffer recorded once stays right after any re-plan within the plan's capacities.
 *
 * Plan memory (offsets in 4-byte words from this struct's address):
 *   kv_indptr     i32 [batch_size + 1]     page-list start of each request
 *   kv_indices    i32 [kv_indptr[batch]]   page ids when the plan was given them (the kernels
 *                                          read page ids through flp_decode_params.kv_indices)
 *   kv_len        i32 [batch_size]         tokens per request
 *   kv_begin      i32 [batch_size]         first key any row of the request can see (the
 *                                          sliding window; 0 without one): chunks start here
 *   q_rope_offset i32 [batch_size]         added to query positions for RoPE
 *   k_rope_offset i32 [batch_size]         added to key positions for RoPE
 *   rope_freq     f32 [head_dim / 2]       frequency of pair d (scaling already applied)
 *   alibi_slopes  f32 [num_qo_heads]
 *   work_indptr   i32 [num_ctas + 1]       items of workgroup c: [work_indptr[c], [c+1])
 *   work_items    i32 [num_items * FLP_WORK_ITEM_INTS] (kernel_constants.h says how an
 *                                          item names its keys and partial slot)
 *   merge_info    i32 [batch_size * 2]     {first partial slot, chunks}; chunks <= 1: no merge
 *   partial_o     f32 [slots][qo_len][group_size][head_dim]
 *   partial_lse   f32 [slots][qo_len][group_size]
 * Partial slot of request b, KV head g, chunk c = merge_info[2b] + g * chunks + c.
 * A query/output row r is request r / qo_len, row-in-request r % qo_len; its position is
 * kv_len - qo_len + r % qo_len. The merge writes out/lse of request b, query head h, row i from
 * the chunks' partials of its KV head h / group_size, in chunk order (deterministic). */
typedef struct flp_decode_plan_info {
    uint32_t off_kv_indptr, off_kv_indices, off_kv_len, off_q_rope_offset;
    uint32_t off_k_rope_offset, off_rope_freq, off_alibi_slopes, off_work_indptr;
    uint32_t off_work_items, off_merge_info, off_partial_o, off_partial_lse;

    int32_t batch_size, qo_len, num_qo_heads, num_kv_heads;
    int32_t group_size, head_dim, page_size, num_ctas;
    uint32_t flags;
    int32_t window_left;
    int32_t q_dtype, kv_dtype; /* flp_dtype values; out has q_dtype */
    float sm_scale, soft_cap, k_scale, v_scale;
    uint32_t off_kv_begin;
    int32_t chunk_size; /* keys per chunk of a split request; INT32_MAX when none is split */
    /* the plan's user slot: each run's user parameter values (core/variant_program.h:
     * flp_user_param [FLP_SNIPPET_MAX_PARAMS]), read by the kernels of a variant with snippets
     * (Vulkan; the CUDA kernels take none yet) */
    uint32_t off_user_params;
    int32_t reserved; /* pads to 128 bytes */
} flp_decode_plan_info;

/* What one run adds: the tensors. Captured by value (a CUDA kernel argument; Vulkan writes it
 * into the plan's params slot with vkCmdUpdateBuffer inside the recorded commands). Addresses
 * are CUdeviceptr / VkDeviceAddress of each tensor's first element; strides in elements. */
typedef struct flp_decode_params {
    uint64_t q, k, v, o;
    uint64_t lse;  /* 0: no lse output */
    uint64_t plan; /* the flp_decode_plan_info */
    int64_t q_stride_row, q_stride_head;
    int64_t o_stride_row, o_stride_head;
    int64_t k_stride_page, k_stride_slot, k_stride_head;
    int64_t v_stride_page, v_stride_slot, v_stride_head;
    int64_t lse_stride_row; /* lse head stride is 1 */
    /* i32 page ids of the batch, indexed by kv_indptr: the plan's copy above, or the run's
     * kv_indices tensor when the plan was given none (docs/design.md 5.4). */
    uint64_t kv_indices;
    /* Pages of k/v: an id outside [0, num_pages) is not followed (CUDA reads zeros for its
     * keys, Vulkan page 0), so a bad run-time page table cannot make a kernel read outside the
     * caches. */
    int64_t num_pages;
} flp_decode_params;

/* The size both compilers must agree on (the C and CUDA static assertions). */
#define FLP_DECODE_PARAMS_BYTES 152

#ifndef __cplusplus
_Static_assert(sizeof(flp_decode_plan_info) == 128, "flp_decode_plan_info layout changed: update "
                                                    "shaders/decode_params.glsl and the kernels");
_Static_assert(sizeof(flp_decode_params) == FLP_DECODE_PARAMS_BYTES,
               "flp_decode_params layout changed: update "
               "shaders/decode_params.glsl and the kernels");
#endif

#endif /* FLP_CORE_DECODE_PARAMS_H */
