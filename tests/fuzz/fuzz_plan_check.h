/* Reading a plan back from the fake device, and the checks the decode_plan and prefill_plan
 * targets make alike: messages, snapshots a refusal must leave unchanged, the layout's parts,
 * the variant's fields of an info struct, work_indptr, the longest-first assignment of
 * docs/design.md 5.7, runs and their params slot, the page ids a run passes (or may not),
 * refused edge capacities. What differs between the partitions (their info structs, schedules
 * and launches) stays in each target. */
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
 * only) and the page ids a run passes to a plan given none (ids) are real bytes. */
typedef struct run_buffers {
    flp_buffer *q, *out, *kv, *lse, *mask, *ids;
} run_buffers;

/* The fake context of a whole fuzzing run and its run buffers, mask_bytes of mask (none when
 * 0), ids for views of up to max_ids page ids (run_page_ids). */
flp_context *open_run_context(run_buffers *rb, size_t mask_bytes, int32_t max_ids);

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

/* ---- page ids at run time ----------------------------------------------------------------- */

/* The pages of the caches for a run: the largest page id the plan holds (max_page_id) + 1; for a
 * plan given none (pages_at_run), anything (flashport.h: the kernels do not follow an id beyond
 * the caches), by draw's bits 1-2 and 7: as many as the batch's ids (ids_max the largest, -1:
 * none) need, half as many, none, or more. */
int64_t run_cache_pages(bool pages_at_run, int32_t max_page_id, int32_t ids_max, uint8_t draw);

/* A good kv_indices view for a run (1-D I32, contiguous) in rb->ids, with total_pages (<=
 * max_ids) entries or 3 more (draw's bit 1), from entry 0 or 1 (bit 0). The fake backend reads
 * no page id: the view's contents do not matter. */
flp_tensor run_page_ids(const run_buffers *rb, int32_t total_pages, uint8_t draw);

/* A run of a target's current partition: args, the target's run arguments (all valid), with
 * ids (NULL: none) as their kv_indices. */
typedef flp_status (*run_with_ids_fn)(flp_context *ctx, const flp_plan *plan, const void *args,
                                      const flp_tensor *ids);

/* A paged run's kv_indices against its plan (flashport.h, flp_decode_run_args.kv_indices):
 * - a plan that holds the page ids refuses any tensor;
 * - a plan given none (pages_at_run) refuses NULL when its kv_indptr has pages to look up
 *   (total_pages > 0), a view of another dtype (U8 or F32 by draw's bit 1) or rank, a strided
 *   one or one without its buffer (one of the four, by draw's bits 2-3), and one an entry short
 *   and one overlapping out (the run's out, when it is not empty);
 * each refusal with FLP_ERROR_INVALID_ARGUMENT, a message naming kv_indices, nothing queued.
 * Returns the kv_indices an accepted run passes: NULL for a plan that holds the ids (or, when
 * draw's bit 4 says so, one given none without pages), else ids, set to run_page_ids(rb,
 * total_pages, draw). */
const flp_tensor *check_run_page_ids(flp_context *ctx, const flp_plan *plan, run_with_ids_fn run,
                                     const void *args, const flp_tensor *out, const run_buffers *rb,
                                     bool pages_at_run, int32_t total_pages, uint8_t draw,
                                     flp_tensor *ids);

/* A plan given no page ids uploads none: bytes [at, at + 4 * max_pages) of a region's device
 * copy, its kv_indices, are now (after the plan call) as they were before it (a snapshot). */
void check_ids_not_uploaded(const uint8_t *before, const uint8_t *now, size_t at,
                            int32_t max_pages);

/* ---- capacities at the edge --------------------------------------------------------------- */

/* After flp_plan_workspace_size returned st: whether it refused the capacities, which it may
 * only do with INVALID_ARGUMENT or CAPACITY and a message naming it. */
bool edge_caps_refused(flp_context *ctx, flp_status st);

#endif /* FLP_TESTS_FUZZ_PLAN_CHECK_H */
