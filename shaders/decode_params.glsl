// The plan information and the per-run parameter block: mirror core/decode_params.h field for
// field (std430: every 8-byte field is 8-aligned, so the C and GLSL offsets agree;
// tests/test_vulkan.c checks every member offset of both in the compiled SPIR-V against
// offsetof).
#ifndef FLP_DECODE_PARAMS_GLSL
#define FLP_DECODE_PARAMS_GLSL

// Flags, dtype codes and work-item fields, shared with C and CUDA.
#include "core/kernel_constants.h"

// flp_decode_plan_info: everything a (re-)plan decides, at the start of the plan memory. Read
// from there on every run, so a command buffer recorded once stays right after any re-plan.
layout(buffer_reference, std430, buffer_reference_align = 16) readonly buffer DecodePlanInfo {
    uint off_kv_indptr, off_kv_indices, off_kv_len, off_q_rope_offset;
    uint off_k_rope_offset, off_rope_freq, off_alibi_slopes, off_work_indptr;
    uint off_work_items, off_merge_info, off_partial_o, off_partial_lse;

    int batch_size, qo_len, num_qo_heads, num_kv_heads;
    int group_size, head_dim, page_size, num_ctas;
    uint flags;
    int window_left;
    int q_dtype, kv_dtype;
    float sm_scale, soft_cap, k_scale, v_scale;
    uint off_kv_begin;
    int chunk_size; // keys per chunk of a split request; 0x7fffffff when none is split
    uint off_user_params; // the run's user parameter values (variant_hooks.glsl)
    int reserved;
};

// flp_decode_params: what one run adds (the tensors), written into the plan's params slot by
// the run's own vkCmdUpdateBuffer.
layout(buffer_reference, std430, buffer_reference_align = 8) readonly buffer DecodeParams {
    uint64_t q, k, v, o;
    uint64_t lse; // 0: no lse output
    uint64_t plan; // the DecodePlanInfo
    int64_t q_stride_row, q_stride_head;
    int64_t o_stride_row, o_stride_head;
    int64_t k_stride_page, k_stride_slot, k_stride_head;
    int64_t v_stride_page, v_stride_slot, v_stride_head;
    int64_t lse_stride_row;
    uint64_t kv_indices; // i32 page ids: the plan's copy or the run's tensor
    int64_t num_pages;   // ids outside [0, num_pages) read as zeros
};

// The push constant block of every shader: where its DecodeParams copy lives (a shader that
// pushes more declares its own block, starting the same way, and defines FLP_PUSH_DECLARED).
#ifndef FLP_PUSH_DECLARED
layout(push_constant) uniform Push {
    uint64_t params;
} push;
#endif

// Typed views of device memory, reached by address (no descriptor and no
// maxStorageBufferRange limit: a KV pool may be far larger than a binding can be).
layout(buffer_reference, std430, buffer_reference_align = 16) buffer U4Ref {
    uvec4 v;
};
layout(buffer_reference, std430, buffer_reference_align = 8) buffer U2Ref {
    uvec2 v;
};
layout(buffer_reference, std430, buffer_reference_align = 4) readonly buffer I32Ref {
    int v[];
};
layout(buffer_reference, std430, buffer_reference_align = 4) buffer F32Ref {
    float v[];
};

// Plan arrays: offsets are in 4-byte words from the plan's base address.
I32Ref plan_ints(uint64_t plan, uint off_words) {
    return I32Ref(plan + 4ul * uint64_t(off_words));
}
F32Ref plan_floats(uint64_t plan, uint off_words) {
    return F32Ref(plan + 4ul * uint64_t(off_words));
}

// Decode work item `item` of the plan at `plan`: its request, KV head, keys and partial slot, as
// its two words name them (core/kernel_constants.h).
struct WorkItem {
    int b, g, kv_begin, kv_end;
    int slot; // < 0: write out/lse; else the partial-state slot for the merge
    int kv_len;
};

WorkItem work_item(uint64_t plan, DecodePlanInfo I, int item) {
    I32Ref work = I32Ref(uint64_t(plan_ints(plan, I.off_work_items)) +
                         4ul * uint64_t(item * FLP_WORK_ITEM_INTS));
    WorkItem w;
    w.b = work.v[FLP_WORK_REQUEST];
    // head_chunk = KV head * chunks + chunk
    int head_chunk = work.v[FLP_WORK_HEAD_CHUNK];
    I32Ref merge = plan_ints(plan, I.off_merge_info);
    int chunks = max(merge.v[2 * w.b + 1], 1);
    w.g = head_chunk / chunks;
    int c = head_chunk - w.g * chunks;
    w.kv_len = plan_ints(plan, I.off_kv_len).v[w.b];
    w.kv_begin = plan_ints(plan, I.off_kv_begin).v[w.b] + (chunks > 1 ? c * I.chunk_size : 0);
    w.kv_end = c + 1 == chunks ? w.kv_len : w.kv_begin + I.chunk_size;
    w.slot = chunks > 1 ? merge.v[2 * w.b] + head_chunk : -1;
    return w;
}

#endif
