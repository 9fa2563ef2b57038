// The prefill plan information and per-run parameter block: mirror core/prefill_params.h field
// for field (std430: every 8-byte field is 8-aligned, so the C and GLSL offsets agree;
// tests/test_vulkan.c checks every member offset in the compiled SPIR-V against offsetof).
// The address helpers (U4Ref, I32Ref, plan_ints, the push constant block) come from
// decode_params.glsl.
#ifndef FLP_PREFILL_PARAMS_GLSL
#define FLP_PREFILL_PARAMS_GLSL

#include "decode_params.glsl"

// flp_prefill_plan_info: what a (re-)plan decides, at the start of the plan's prefill region.
layout(buffer_reference, std430, buffer_reference_align = 16) readonly buffer PrefillPlanInfo {
    uint off_qo_indptr, off_kv_indptr, off_kv_len, off_q_rope_offset;
    uint off_k_rope_offset, off_mask_indptr, off_rope_freq, off_alibi_slopes;
    uint off_work_indptr, off_work_items, off_merge_items, off_kv_indices;
    uint off_partial_o, off_partial_lse;

    int batch_size, num_qo_heads, num_kv_heads, group_size;
    int head_dim, page_size, num_ctas, num_merge_items;
    int q_tile;
    uint flags;
    int window_left;
    int q_dtype, kv_dtype;
    float sm_scale, soft_cap, k_scale, v_scale;
    uint off_user_params; // the run's user parameter values (variant_hooks.glsl)
};

// flp_prefill_params: the run's tensors, written into the plan's params slot by the run's own
// vkCmdUpdateBuffer.
layout(buffer_reference, std430, buffer_reference_align = 8) readonly buffer PrefillParams {
    uint64_t q, k, v, o;
    uint64_t lse;  // 0: no lse output
    uint64_t plan; // the PrefillPlanInfo
    uint64_t mask; // custom mask bytes (FLP_FLAG_CUSTOM_MASK)
    int64_t q_stride_row, q_stride_head;
    int64_t o_stride_row, o_stride_head;
    int64_t k_stride_page, k_stride_slot, k_stride_head;
    int64_t v_stride_page, v_stride_slot, v_stride_head;
    int64_t lse_stride_row;
    uint64_t kv_indices; // i32 page ids: the plan's copy or the run's tensor
    int64_t num_pages;   // ids outside [0, num_pages) read as zeros
};

#endif
