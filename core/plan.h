/* The plan object: capacities, device memory layout, host mirror of the plan data. */
#ifndef FLP_CORE_PLAN_H
#define FLP_CORE_PLAN_H

#include "core/internal.h"
#include "core/launch.h"
#include "core/tensor.h"
#include "core/variant_program.h"

/* Byte offsets of the prefill region (present when max_qo_rows > 0), from the start of the
 * plan's region, in the order of core/prefill_params.h: info, the int32 arrays with kv_indices
 * last (one upload of [info, kv_indices + used pages) carries a plan), then the scratch and the
 * params slot. */
typedef struct flp_prefill_layout {
    size_t info; /* flp_prefill_plan_info */
    size_t qo_indptr, kv_indptr, kv_len, q_rope_offset, k_rope_offset, mask_indptr;
    size_t rope_freq, alibi_slopes, work_indptr, work_items, merge_items, kv_indices;
    size_t metadata_end; /* end of kv_indices capacity */
    size_t partial_o, partial_lse;
    size_t params_slot; /* 256 bytes: Vulkan writes each run's flp_prefill_params here */
    size_t user_slot;   /* FLP_USER_PARAMS_BYTES: each run's user parameter values */
    size_t end;
} flp_prefill_layout;

/* Byte offsets from the start of the plan's region. The plan information comes first, then the
 * int32 arrays with kv_indices last, so one upload of [0, kv_indices + used pages) carries a
 * plan; the split-KV scratch and the params slot follow. */
typedef struct flp_plan_layout {
    size_t info; /* flp_decode_plan_info */
    size_t kv_indptr, kv_len, kv_begin, q_rope_offset, k_rope_offset, rope_freq, alibi_slopes;
    size_t work_indptr, merge_info, work_items, kv_indices;
    size_t metadata_end; /* end of kv_indices capacity */
    size_t partial_o, partial_lse;
    size_t params_slot; /* 256 bytes: Vulkan writes each run's flp_decode_params here */
    size_t user_slot;   /* FLP_USER_PARAMS_BYTES: each run's user parameter values */
    size_t total;       /* bytes of the whole region, prefill partitions included */
} flp_plan_layout;

/* What the last prefill plan decided (host side). */
typedef struct flp_prefill_state {
    bool planned;
    int32_t batch_size, total_rows, page_size, q_tile;
    flp_kv_storage kv_storage;
    flp_kv_layout kv_layout;
    flp_variant variant;       /* resolved */
    int32_t max_page_id;       /* paged: largest page id referenced, -1 when none */
    bool pages_at_run;         /* paged: planned without page ids, the runs pass kv_indices */
    int32_t total_pages;       /* paged: kv_indptr[batch_size] */
    int32_t total_kv_rows;     /* ragged: kv_indptr[batch_size] */
    int64_t mask_bytes;        /* custom mask: bytes the mask tensor must hold */
    flp_prefill_key_rule keys; /* how the schedule clipped items' keys */
    int32_t num_items, num_merge_items, num_partial_slots; /* of the schedule */
    /* the variant's snippets, the region's copy (NULL: none; variant's snippet fields NULL) */
    flp_variant_program *program;
} flp_prefill_state;

/* What the last decode plan decided (host side). */
typedef struct flp_decode_state {
    bool planned;
    int32_t batch_size, qo_len, page_size;
    flp_kv_layout kv_layout;
    flp_variant variant;       /* resolved */
    int32_t max_page_id;       /* largest page id referenced, -1 when none */
    bool pages_at_run;         /* planned without page ids: the runs pass kv_indices */
    int32_t total_pages;       /* kv_indptr[batch_size] */
    int32_t num_items;         /* work items of the schedule */
    int32_t num_partial_slots; /* > 0: some request is split into KV chunks */
    int32_t chunk_size;        /* keys per chunk of a split request, INT32_MAX: none split */
    /* the variant's snippets, the plan's copy (NULL: none; variant's snippet fields are NULL) */
    flp_variant_program *program;
} flp_decode_state;

/* A prefill partition: its part of plan memory, host mirror, grid and capacities, and what its
 * last plan decided. A plan holds the caller's (max_qo_rows > 0) and, when its decode runs on
 * the matrix kernel, a second one that holds the decode batch (docs/design.md 5.5). */
typedef struct flp_prefill_region {
    int32_t max_qo_rows; /* rows of a batch; 0 = no region (everything below is 0) */
    int32_t ctas, max_items, max_slots, max_merges;
    bool split_by_cost;        /* the matrix decode region: decode's split rule (5.5) */
    flp_prefill_layout layout; /* offsets from the start of the plan's region */
    uint8_t *host;             /* [layout.metadata_end - layout.info] mirror of the plan data */
    flp_prefill_state state;
} flp_prefill_region;

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
    flp_decode_kernel decode_kernel; /* resolved at creation: VECTOR or MATRIX */
    flp_prefill_region prefill;      /* flp_prefill_*; empty when max_qo_rows = 0 */
    flp_prefill_region decode_rows;  /* MATRIX decode: the decode batch as a prefill batch */
    /* flp_mixed_plan: both partitions hold one mixed batch, whose first decode_rows rows are the
     * decode partition's (1 when it holds a stand-in request, overwritten by the prefill) */
    bool mixed_planned;
    int32_t mixed_decode_rows;
};

/* A run's outputs must not overlap its inputs, each other, or the plan's own memory (a caller's
 * workspace may share their buffer): FLP_ERROR_INVALID_ARGUMENT naming both otherwise.
 * outputs[num_outputs], inputs[num_inputs], all checked by flp_tensor_check before. */
flp_status flp_plan_check_outputs(flp_context *ctx, const char *fn, const flp_plan *plan,
                                  const flp_named_tensor *outputs, int num_outputs,
                                  const flp_named_tensor *inputs, int num_inputs);

/* What the last plans decided, for tests and benchmarks (all 0 for a partition not planned). */
typedef struct flp_plan_summary {
    int32_t decode_ctas, prefill_ctas; /* grids fixed at creation (prefill: 0 without capacity) */
    bool decode_matrix;                /* decode runs on the matrix (prefill) kernel: its items
                                          and slots are those of that kernel's schedule */
    int32_t decode_items, decode_partial_slots;
    int32_t prefill_items, prefill_merge_items, prefill_partial_slots, prefill_q_tile;
} flp_plan_summary;
void flp_plan_summarize(const flp_plan *plan, flp_plan_summary *out);

/* Whether the backend can take a plan upload now (not while a CUDA graph is being captured on
 * the context's stream); a refusal's message is prefixed with fn. Plan calls ask first. */
flp_status flp_plan_check_upload(flp_context *ctx, const char *fn);

/* Uploads size bytes of host mirror src to plan memory at buffer offset `offset` through the
 * backend's plan_upload (stream-ordered, no wait) or, without one, flp_buffer_write; a failure's
 * message is prefixed with fn. */
flp_status flp_plan_upload(flp_context *ctx, const char *fn, const flp_plan *plan, size_t offset,
                           const void *src, size_t size);

/* A mirror's parts [0, head_end) (the batch and its schedule) and [tail_begin, tail_end) (page
 * ids given to the plan; none when equal) to plan memory at buffer offset `offset`, as
 * flp_plan_upload: in one copy when the gap between them is at most FLP_PLAN_UPLOAD_MAX_GAP
 * bytes, else in two, so that a plan never copies its unused work-item room. */
flp_status flp_plan_upload_parts(flp_context *ctx, const char *fn, const flp_plan *plan,
                                 size_t offset, const void *src, size_t head_end, size_t tail_begin,
                                 size_t tail_end);

/* The same into any buffer of the context (memory a plan-like object owns). */
flp_status flp_buffer_upload(flp_context *ctx, const char *fn, flp_buffer *buffer, size_t offset,
                             const void *src, size_t size);

/* The prologue of every plan/run entry point: clears the last error, checks the handles. */
flp_status flp_plan_check_call(flp_context *ctx, const char *fn, const flp_plan *plan,
                               const void *args);

#endif /* FLP_CORE_PLAN_H */
