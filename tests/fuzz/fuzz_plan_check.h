/* Reading a plan back from the fake device, and the checks the decode_plan and prefill_plan
 * targets make alike: messages, snapshots a refusal must leave unchanged, the layout's parts,
 * the variant's fields of an info struct, work_indptr, the longest-first assignment of
 * docs/design.md 5.7, runs and their params slot, refused edge capacities. What differs between
 * the partitions (their info structs, schedules and launches) stays in each target. */
#ifndef FLP_TESTS_FUZZ_PLAN_CHECK_H
#define FLP_TESTS_FUZZ_PLAN_CHECK_H

#include "core/plan.h"
#include "tests/fuzz/fuzz_plan_draw.h"

/* ---- the plan memory ---------------------------------------------------------------------- */

/* The plan's region of device memory as uploaded: the fake device's buffers are host memory. */
const uint8_t *plan_device_region(const flp_plan *plan);

/* What a refused call must leave as it was: both mirrors, both uploaded regions, the summary. */
typedef struct snapshot {
    uint8_t *host, *device, *pf_host, *pf_device;
    size_t bytes, pf_bytes;
    flp_plan_summary summary;
} snapshot;

void take_snapshot(const flp_plan *plan, snapshot *s);
void free_snapshot(snapshot *s);

/* ---- a plan call -------------------------------------------------------------------------- */

/* The message a call of fn left with status st: none when accepted, else one that names fn and
 * contains every fragment of o. */
void check_message(flp_context *ctx, const char *fn, flp_status st, const outcome *o);

/* ---- the layout (docs/design.md 5.2) ------------------------------------------------------ */

/* A part of a region's layout: where it starts, what it needs and its alignment (bytes). */
typedef struct layout_part {
    const char *name;
    size_t at, bytes, align;
} layout_part;

/* parts[0, n), in their documented order: each aligned and ending before the next starts (the
 * last before end). */
void check_layout_parts(const layout_part *parts, size_t n, size_t end);

/* A region's metadata ends after kv_indices' room for max_pages ids and before its scratch. */
void check_metadata_end(size_t metadata_end, size_t kv_indices, int32_t max_pages,
                        size_t partial_o);

/* ---- the info struct ---------------------------------------------------------------------- */

/* What both planners make of a variant (docs/design.md 5.1): q's dtype (DEFAULT: F16), the K/V
 * dtype (DEFAULT: q's), and its FLP_FLAG_* bits but for the prefill-only ones (custom mask,
 * paged). */
typedef struct variant_model {
    flp_dtype q_dtype, kv_dtype;
    uint32_t flags;
} variant_model;

variant_model model_variant(const flp_variant *v);

/* The fields of the variant both info structs hold, as uploaded. */
typedef struct info_variant {
    uint32_t flags;
    int32_t window_left, q_dtype, kv_dtype;
    float sm_scale, soft_cap, k_scale, v_scale;
} info_variant;

#define INFO_VARIANT(p)                                                                            \
    ((info_variant){(p)->flags, (p)->window_left, (p)->q_dtype, (p)->kv_dtype, (p)->sm_scale,      \
                    (p)->soft_cap, (p)->k_scale, (p)->v_scale})

/* got against the variant v of a plan of head_dim, modelled as want: the flags, the window (-1:
 * none), the dtypes, sm_scale (0: 1/sqrt(head_dim)), the soft cap, the fp8 scales (1 unless the
 * K/V dtype is fp8). */
void check_info_variant(const info_variant *got, const flp_variant *v, int32_t head_dim,
                        const variant_model *want);

/* The uploaded ALiBi slopes [hq]: the caller's (given), or the standard ones of docs/design.md
 * 3 "Positions" when given is NULL. */
void check_uploaded_slopes(const float *uploaded, int32_t hq, const float *given);

/* ---- the schedule ------------------------------------------------------------------------- */

/* work_indptr [grid + 1]: from 0, never decreasing, at most max_items items; returns how many. */
int32_t check_work_indptr(const int32_t *indptr, int32_t grid, int32_t max_items);

/* items[0, k), each an item's words, by their word key_begin (insertion sort: k is small). */
void sort_by_key_begin(const int32_t **items, int32_t k, int key_begin);

/* A work item of the model (its words, as the schedule holds them) and its cost. */
#define MODEL_ITEM_MAX_INTS FLP_PREFILL_ITEM_INTS
_Static_assert(FLP_WORK_ITEM_INTS <= MODEL_ITEM_MAX_INTS, "a decode item fits a model_item");

typedef struct model_item {
    int32_t w[MODEL_ITEM_MAX_INTS];
    int64_t cost;
} model_item;

/* An item's words, as a failure message shows them. */
typedef void (*describe_item_fn)(const int32_t *w, char *text, size_t size);

/* 5.7: items by decreasing cost (ties: natural order), each to the least loaded of grid
 * workgroups (ties: lowest index), each workgroup's list in that order. want[0, n) in natural
 * order, item_ints words each; indptr and items as uploaded. */
void check_assignment(const model_item *want, int32_t n, int item_ints, int32_t grid,
                      const int32_t *indptr, const int32_t *items, describe_item_fn describe);

/* ---- runs --------------------------------------------------------------------------------- */

/* Buffers for runs: a few bytes serve views of any shape (broadcast), the custom mask (prefill
 * only) is real bytes. */
typedef struct run_buffers {
    flp_buffer *q, *out, *kv, *lse, *mask;
} run_buffers;

/* The fake context of a whole fuzzing run and its run buffers, mask_bytes of mask (none when
 * 0). */
flp_context *open_run_context(run_buffers *rb, size_t mask_bytes);

/* A view of buf whose outer strides are all 0: any shape fits a few bytes (the fake backend
 * computes nothing; the core checks shapes, dtypes and alignment). */
flp_tensor broadcast(flp_buffer *buf, flp_dtype dtype, int ndim, const int64_t *shape);

/* A run (status st) refused as docs/design.md 3/4 say, with a message containing mentions, and
 * nothing queued since queued (fake_runs_queued before it). */
void check_refused_run(flp_context *ctx, flp_status st, int queued, const char *mentions);

/* A run (status st) accepted and handed to the backend once since queued. */
void check_run_queued(flp_context *ctx, flp_status st, int queued);

/* The launch's params slot: in the plan's buffer, at params_slot of its region, 256-aligned. */
void check_params_slot(const flp_plan *plan, const flp_params_slot *slot, size_t params_slot);

/* ---- capacities at the edge --------------------------------------------------------------- */

/* After flp_plan_workspace_size returned st: whether it refused the capacities, which it may
 * only do with INVALID_ARGUMENT or CAPACITY and a message naming it. */
bool edge_caps_refused(flp_context *ctx, flp_status st);

#endif /* FLP_TESTS_FUZZ_PLAN_CHECK_H */
