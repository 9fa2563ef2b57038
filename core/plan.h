/* The plan object: capacities, device memory layout, host mirror of the plan data. */
#ifndef FLP_CORE_PLAN_H
#define FLP_CORE_PLAN_H

#include "core/decode_params.h"
#include "core/internal.h"

/* Byte offsets from the start of the plan's region. The plan information comes first, then the
 * int32 arrays with kv_indices last, so one upload of [0, kv_indices + used pages) carries a
 * plan; the split-KV scratch and the params slot follow. */
typedef struct flp_plan_layout {
    size_t info; /* flp_decode_plan_info */
    size_t kv_indptr, kv_len, q_rope_offset, k_rope_offset, rope_freq, alibi_slopes;
    size_t work_indptr, merge_info, work_items, kv_indices;
    size_t metadata_end; /* end of kv_indices capacity */
    size_t partial_o, partial_lse;
    size_t params_slot; /* 256 bytes: Vulkan writes each run's flp_decode_params here */
    size_t total;       /* bytes of the whole region */
} flp_plan_layout;

/* What the last decode plan decided (host side). */
typedef struct flp_decode_state {
    bool planned;
    int32_t batch_size, qo_len, page_size;
    flp_kv_layout kv_layout;
    flp_variant variant; /* resolved */
    int32_t max_page_id; /* largest page id referenced, -1 when none */
    bool needs_merge;    /* some request is split into KV chunks */
} flp_decode_state;

struct flp_plan {
    flp_context *ctx;
    flp_plan_desc desc; /* capacities, max_qo_len resolved */
    flp_buffer *buffer; /* the plan's own or the caller's workspace */
    bool owns_buffer;
    size_t base; /* byte offset of the plan region in buffer */
    flp_plan_layout layout;
    int32_t group_size;
    int32_t num_ctas; /* decode grid, fixed at creation */
    int32_t max_items;
    uint8_t *host; /* [layout.metadata_end] host mirror of the plan data */
    flp_decode_state decode;
};

#endif /* FLP_CORE_PLAN_H */
