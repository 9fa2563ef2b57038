/* The launch contract: what the core hands a backend's run functions. Everything a backend
 * needs is here (the kernels' parameter block, the plan memory's place, the grids, the kernel
 * choice fixed by the plan's capacities and variant, and a read-only view of the schedule the
 * current plan decided), so no backend reads the plan object. The core has validated every
 * argument before it builds a launch; a backend checks only what is its own (device limits,
 * its kernels' shapes), once, before it queues anything. */
#ifndef FLP_CORE_LAUNCH_H
#define FLP_CORE_LAUNCH_H

#include "core/decode_params.h"
#include "core/prefill_params.h"
#include "core/prefill_schedule.h" /* flp_prefill_key_rule, flp_prefill_key_range */
#include "core/variant_program.h"  /* flp_user_param */

#include <stdbool.h>
#include <stddef.h>

struct flp_buffer;

/* Where a run's parameter block goes in plan memory: Vulkan writes each run's params into a
 * 256-byte slot of the plan buffer with a command recorded before the dispatch (so a recorded
 * command buffer carries them); CUDA passes them by value and ignores the slot. */
typedef struct flp_params_slot {
    struct flp_buffer *buffer; /* the plan's buffer (params.plan points into it) */
    uint64_t offset;           /* byte offset of the slot in buffer, a multiple of 256 */
} flp_params_slot;

/* The decode schedule of the plan as it is now (host mirror), valid for the call only. A run
 * recorded for later replay must not depend on it beyond the call: a re-plan changes it. */
typedef struct flp_decode_schedule_view {
    const int32_t *work_indptr; /* [num_ctas + 1] items of workgroup c: [work_indptr[c], [c+1]) */
    const int32_t *work_items;  /* [work_indptr[num_ctas] * FLP_WORK_ITEM_INTS] */
    const int32_t *merge_info;  /* [batch * 2] {first partial slot, chunks per KV head} */
    const int32_t *kv_begin;    /* [batch] the first key of the request's first chunk */
    const int32_t *kv_end;      /* [batch] kv_len */
    int32_t chunk_size;         /* flp_decode_plan_info.chunk_size */
    int32_t qo_len;             /* query tokens per request */
    uint32_t flags;             /* FLP_FLAG_* of the plan's variant */
} flp_decode_schedule_view;

typedef struct flp_decode_launch {
    flp_decode_params params; /* by value to the kernels */
    flp_params_slot slot;
    /* Grids, fixed by the plan's capacities. The merge grid has a workgroup per (request, query
     * head) pair of max_batch_size; it is always launched after the decode and returns at once
     * for requests that are not split, so a recorded run stays right when a re-plan splits. */
    int32_t num_ctas, merge_grid;
    /* Kernel choice and shape, fixed by the variant and capacities: a recorded run keeps its
     * kernel, so re-plans of a recorded plan must keep dtypes and head_dim. */
    int32_t q_dtype, kv_dtype, head_dim;
    int32_t group_size; /* query heads per KV head */
    int32_t max_qo_len; /* query tokens per request at most (the plan's capacity) */
    flp_decode_schedule_view schedule;
    /* The variant's snippets (NULL: none; then the rest is unused): the kernels compiled with
     * them, and the run's parameter values, written into user_slot (the plan information's
     * off_user_params) before the kernels run. */
    const struct flp_variant_program *program;
    flp_user_param user[FLP_SNIPPET_MAX_PARAMS];
    flp_params_slot user_slot;
} flp_decode_launch;

/* The prefill schedule of the plan as it is now (host mirror), valid for the call only. */
typedef struct flp_prefill_schedule_view {
    const int32_t *work_indptr; /* [num_ctas + 1] */
    const int32_t *work_items;  /* [work_indptr[num_ctas] * FLP_PREFILL_ITEM_INTS] */
    const int32_t *merge_items; /* [num_merge_items * FLP_MERGE_ITEM_INTS] */
    int32_t num_merge_items;
    const int32_t *qo_indptr;  /* [batch_size + 1] query tokens of each request */
    const int32_t *kv_len;     /* [batch_size] keys of each request */
    flp_prefill_key_rule keys; /* the rule the scheduler clipped items with */
} flp_prefill_schedule_view;

typedef struct flp_prefill_launch {
    flp_prefill_params params; /* by value to the kernels */
    flp_params_slot slot;
    /* Grids, fixed by the plan's capacities: the persistent prefill grid, and the merge grid
     * (FLP_PREFILL_MERGE_GRID_PER_ITEM per merge item of capacity; workgroup w takes the
     * (merge item, row slice) units w, w + merge_grid, ...; 0 when the plan cannot split). */
    int32_t num_ctas, merge_grid;
    /* Kernel choice. q_tile is a performance hint only (every kernel handles any item), so a
     * recorded run stays right after re-plans that pick another tile. */
    int32_t q_tile, q_dtype, kv_dtype, head_dim;
    /* What a backend needs to describe the caches beyond params (CUDA's tensor maps): pages
     * (paged) or rows (ragged) of k and v, and the page size (0 when ragged). */
    int64_t k_extent, v_extent;
    int32_t page_size, num_kv_heads;
    flp_prefill_schedule_view schedule;
    /* The variant's snippets, as for flp_decode_launch (NULL: none). */
    const struct flp_variant_program *program;
    flp_user_param user[FLP_SNIPPET_MAX_PARAMS];
    flp_params_slot user_slot;
} flp_prefill_launch;

#endif /* FLP_CORE_LAUNCH_H */
