/* Plan creation: capacities, memory layout, workspace. */
#include "core/plan.h"
#include "core/alloc.h"
#include "core/backend.h"
#include "core/batch_args.h"
#include "core/object_memory.h"
#include "core/prefill_schedule.h"
#include "core/decode_schedule.h"
#include "core/variant.h"

#include <string.h>

#define PLAN_ALIGN 256

static size_t take(size_t *cursor, size_t bytes, size_t align) {
    size_t at = FLP_ALIGN_UP(*cursor, align);
    *cursor = at + bytes;
    return at;
}

/* The layout of a prefill region with region->max_qo_rows and the capacities set, from
 * *cursor. */
static void prefill_layout(const flp_plan_desc *d, flp_prefill_region *r, size_t *cursor) {
    size_t i32 = sizeof(int32_t), batch = (size_t)d->max_batch_size;
    flp_prefill_layout *l = &r->layout;
    l->info = take(cursor, sizeof(flp_prefill_plan_info), PLAN_ALIGN);
    l->qo_indptr = take(cursor, i32 * (batch + 1), 16);
    l->kv_indptr = take(cursor, i32 * (batch + 1), 16);
    l->kv_len = take(cursor, i32 * batch, 16);
    l->q_rope_offset = take(cursor, i32 * batch, 16);
    l->k_rope_offset = take(cursor, i32 * batch, 16);
    l->mask_indptr = take(cursor, i32 * batch, 16);
    l->rope_freq = take(cursor, sizeof(float) * (size_t)(d->head_dim / 2), 16);
    l->alibi_slopes = take(cursor, sizeof(float) * (size_t)d->num_qo_heads, 16);
    l->work_indptr = take(cursor, i32 * ((size_t)r->ctas + 1), 16);
    /* the work items, then the page ids, last: an upload stops at the batch's last item */
    l->merge_items = take(cursor, i32 * FLP_MERGE_ITEM_INTS * (size_t)r->max_merges, 16);
    l->work_items = take(cursor, i32 * FLP_PREFILL_ITEM_INTS * (size_t)r->max_items, 16);
    l->kv_indices = take(cursor, i32 * (size_t)d->max_pages, 16);
    l->metadata_end = *cursor;
    size_t slot_rows = (size_t)r->max_slots * FLP_PREFILL_MAX_TILE;
    l->partial_o = take(cursor, sizeof(float) * slot_rows * (size_t)d->head_dim, PLAN_ALIGN);
    l->partial_lse = take(cursor, sizeof(float) * slot_rows, PLAN_ALIGN);
    l->params_slot = take(cursor, 256, PLAN_ALIGN);
    l->user_slot = take(cursor, FLP_USER_PARAMS_BYTES, PLAN_ALIGN);
    l->end = *cursor;
}

/* The decode region, then the prefill regions that exist (their capacities set); the regions'
 * layouts are written into them. With the matrix decode kernel the decode region keeps its
 * arrays but no partial-state scratch (its kernel never runs). */
static flp_plan_layout compute_layout(const flp_plan_desc *d, int32_t num_ctas, int32_t max_items,
                                      bool vector_decode, flp_prefill_region *prefill,
                                      flp_prefill_region *decode_rows) {
    flp_plan_layout l;
    size_t at = 0, i32 = sizeof(int32_t);
    size_t group = (size_t)(d->num_qo_heads / d->num_kv_heads);
    size_t rows_per_slot = (size_t)d->max_qo_len * group;
    size_t slots = vector_decode ? (size_t)max_items : 0;
    l.info = take(&at, sizeof(flp_decode_plan_info), PLAN_ALIGN);
    l.kv_indptr = take(&at, i32 * ((size_t)d->max_batch_size + 1), PLAN_ALIGN);
    l.kv_len = take(&at, i32 * (size_t)d->max_batch_size, 16);
    l.kv_begin = take(&at, i32 * (size_t)d->max_batch_size, 16);
    l.q_rope_offset = take(&at, i32 * (size_t)d->max_batch_size, 16);
    l.k_rope_offset = take(&at, i32 * (size_t)d->max_batch_size, 16);
    l.rope_freq = take(&at, sizeof(float) * (size_t)(d->head_dim / 2), 16);
    l.alibi_slopes = take(&at, sizeof(float) * (size_t)d->num_qo_heads, 16);
    l.work_indptr = take(&at, i32 * ((size_t)num_ctas + 1), 16);
    l.merge_info = take(&at, i32 * 2 * (size_t)d->max_batch_size, 16);
    l.work_items = take(&at, i32 * FLP_WORK_ITEM_INTS * (size_t)max_items, 16);
    l.kv_indices = take(&at, i32 * (size_t)d->max_pages, 16);
    l.metadata_end = at;
    l.partial_o =
        take(&at, sizeof(float) * slots * rows_per_slot * (size_t)d->head_dim, PLAN_ALIGN);
    l.partial_lse = take(&at, sizeof(float) * slots * rows_per_slot, PLAN_ALIGN);
    l.params_slot = take(&at, 256, PLAN_ALIGN);
    l.user_slot = take(&at, FLP_USER_PARAMS_BYTES, PLAN_ALIGN);
    if (prefill->max_qo_rows > 0)
        prefill_layout(d, prefill, &at);
    if (decode_rows->max_qo_rows > 0)
        prefill_layout(d, decode_rows, &at);
    l.total = FLP_ALIGN_UP(at, PLAN_ALIGN);
    return l;
}

static flp_status check_desc(flp_context *ctx, const char *fn, const flp_plan_desc *d) {
    if (d->max_batch_size <= 0)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: max_batch_size = %d must be > 0", fn,
                        d->max_batch_size);
    if (d->max_qo_len < 0 || d->max_qo_len > FLP_DECODE_MAX_QO_LEN)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: max_qo_len = %d must be in 1..%d (0 = 1)", fn, d->max_qo_len,
                        FLP_DECODE_MAX_QO_LEN);
    if (d->max_pages <= 0)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: max_pages = %d must be > 0", fn,
                        d->max_pages);
    if (d->max_qo_rows < 0 || d->max_qo_rows > FLP_MAX_QO_ROWS)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: max_qo_rows = %d must be in 0..%d (0 = no prefill)", fn,
                        d->max_qo_rows, FLP_MAX_QO_ROWS);
    if (d->num_qo_heads <= 0 || d->num_kv_heads <= 0)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: num_qo_heads = %d and num_kv_heads = %d must be > 0", fn,
                        d->num_qo_heads, d->num_kv_heads);
    if (d->num_qo_heads % d->num_kv_heads != 0)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: num_qo_heads = %d is not a multiple of num_kv_heads = %d", fn,
                        d->num_qo_heads, d->num_kv_heads);
    flp_status head_dim = flp_head_dim_status(d->head_dim);
    if (head_dim != FLP_OK)
        return flp_fail(ctx, head_dim,
                        "%s: head_dim = %d: supported head dims are " FLP_HEAD_DIMS_TEXT, fn,
                        d->head_dim);
    if (d->max_batch_size > (1 << 24) || d->num_qo_heads > 4096 || d->max_pages > (1 << 30))
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: capacities too large (max_batch_size %d, num_qo_heads %d, "
                        "max_pages %d)",
                        fn, d->max_batch_size, d->num_qo_heads, d->max_pages);
    return flp_check_workspace(ctx, fn, d->workspace, d->workspace_offset);
}

/* The grid and capacities of a prefill region of max_qo_rows rows (what = which partition, for
 * messages); region is zeroed first. */
static flp_status prepare_prefill(flp_context *ctx, const char *fn, const flp_plan_desc *d,
                                  int32_t max_qo_rows, const char *what,
                                  flp_prefill_region *region) {
    memset(region, 0, sizeof *region);
    if (max_qo_rows == 0)
        return FLP_OK;
    if (!ctx->ops->prefill_grid_size)
        return flp_fail(ctx, FLP_ERROR_UNSUPPORTED, "%s: the %s backend has no prefill kernel (%s)",
                        fn, ctx->ops->name, what);
    int32_t ctas = ctx->ops->prefill_grid_size(ctx, d->head_dim);
    if (ctas < 0)
        return (flp_status)ctas;
    if (ctas == 0)
        return flp_fail(ctx, FLP_ERROR_BACKEND, "%s: backend reported a prefill grid of 0", fn);
    int32_t group = d->num_qo_heads / d->num_kv_heads;
    /* a request's packed rows (qo_len x group) are int32 in work items and the scheduler */
    if ((int64_t)max_qo_rows * group > INT32_MAX)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: %s: %d query rows with %d query heads per KV head: %lld packed rows "
                        "per request exceed int32",
                        fn, what, max_qo_rows, group, (long long)max_qo_rows * group);
    int32_t items =
        flp_prefill_max_items(d->max_batch_size, max_qo_rows, d->num_kv_heads, group, ctas);
    if (items < 0)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: %s: %d query rows with %d query heads are too many for one plan", fn,
                        what, max_qo_rows, d->num_qo_heads);
    region->max_qo_rows = max_qo_rows;
    region->ctas = ctas;
    region->max_items = items;
    region->max_slots = flp_prefill_max_slots(ctas);
    region->max_merges = flp_prefill_max_merge_items(ctas);
    return FLP_OK;
}

/* The decode kernel desc asks for, AUTO resolved (docs/design.md 5.5). */
static flp_status resolve_decode_kernel(flp_context *ctx, const char *fn, const flp_plan_desc *d,
                                        flp_decode_kernel *kernel) {
    int64_t rows = (int64_t)d->max_qo_len * (d->num_qo_heads / d->num_kv_heads);
    switch (d->decode_kernel) {
    case FLP_DECODE_KERNEL_AUTO: {
        int32_t min_rows = ctx->ops->decode_matrix_min_rows;
        *kernel = min_rows > 0 && rows >= min_rows && ctx->ops->prefill_grid_size &&
                          (int64_t)d->max_batch_size * d->max_qo_len <= FLP_MAX_QO_ROWS
                      ? FLP_DECODE_KERNEL_MATRIX
                      : FLP_DECODE_KERNEL_VECTOR;
        return FLP_OK;
    }
    case FLP_DECODE_KERNEL_VECTOR:
    case FLP_DECODE_KERNEL_MATRIX:
        *kernel = d->decode_kernel;
        return FLP_OK;
    }
    return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                    "%s: decode_kernel = %d is not FLP_DECODE_KERNEL_AUTO, _VECTOR or _MATRIX", fn,
                    (int)d->decode_kernel);
}

/* What plan creation decides from desc and the device. */
typedef struct plan_shape {
    flp_plan_desc desc; /* max_qo_len resolved */
    int32_t num_ctas, max_items;
    flp_decode_kernel decode_kernel;
    flp_prefill_region prefill, decode_rows; /* capacities and layouts, no mirrors */
    flp_plan_layout layout;
} plan_shape;

/* Kernels find every array through the info structs' uint32 word offsets: the last one,
 * partial_lse, must start within 2^32 words of its info struct. */
static flp_status check_reach(flp_context *ctx, const char *fn, const plan_shape *s) {
    const size_t reach = (size_t)UINT32_MAX * sizeof(int32_t);
    const struct {
        const char *name;
        size_t span;
    } parts[] = {
        {"decode", s->layout.partial_lse - s->layout.info},
        {"prefill", s->prefill.layout.partial_lse - s->prefill.layout.info},
        {"matrix decode", s->decode_rows.layout.partial_lse - s->decode_rows.layout.info},
    };
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++)
        if (parts[i].span > reach)
            return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                            "%s: capacities too large: the plan's %s scratch would start %zu "
                            "bytes after its info struct, beyond the 16 GiB its uint32 word "
                            "offsets reach",
                            fn, parts[i].name, parts[i].span);
    return FLP_OK;
}

static flp_status prepare(flp_context *ctx, const char *fn, const flp_plan_desc *in,
                          plan_shape *s) {
    if (!in)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: desc is NULL", fn);
    flp_plan_desc *d = &s->desc;
    *d = *in;
    flp_status status = check_desc(ctx, fn, d);
    if (status != FLP_OK)
        return status;
    if (d->max_qo_len == 0)
        d->max_qo_len = 1;
    if ((status = resolve_decode_kernel(ctx, fn, d, &s->decode_kernel)) != FLP_OK)
        return status;
    /* The backend returns the grid, or a negative flp_status with its message set. */
    s->num_ctas = ctx->ops->decode_grid_size(ctx, d->head_dim);
    if (s->num_ctas < 0)
        return (flp_status)s->num_ctas;
    if (s->num_ctas == 0)
        return flp_fail(ctx, FLP_ERROR_BACKEND, "%s: backend reported a decode grid of 0", fn);
    s->max_items = flp_decode_max_items(d->max_batch_size, d->num_kv_heads, s->num_ctas);
    /* the decode merge grid has a workgroup per (request, query head) of the capacity */
    if (s->max_items < 0 || (int64_t)d->max_batch_size * d->num_qo_heads > INT32_MAX)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: max_batch_size = %d with %d query heads / %d KV heads is too large "
                        "for one plan (work items and merge grid are int32)",
                        fn, d->max_batch_size, d->num_qo_heads, d->num_kv_heads);
    status = prepare_prefill(ctx, fn, d, d->max_qo_rows, "max_qo_rows", &s->prefill);
    if (status != FLP_OK)
        return status;
    bool matrix = s->decode_kernel == FLP_DECODE_KERNEL_MATRIX;
    int64_t decode_rows = (int64_t)d->max_batch_size * d->max_qo_len;
    if (matrix && decode_rows > FLP_MAX_QO_ROWS)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: FLP_DECODE_KERNEL_MATRIX: max_batch_size x max_qo_len = %lld query "
                        "rows, more than %d",
                        fn, (long long)decode_rows, FLP_MAX_QO_ROWS);
    status = prepare_prefill(ctx, fn, d, matrix ? (int32_t)decode_rows : 0,
                             "FLP_DECODE_KERNEL_MATRIX", &s->decode_rows);
    if (status != FLP_OK)
        return status;
    s->decode_rows.split_by_cost = matrix;
    s->layout = compute_layout(d, s->num_ctas, s->max_items, !matrix, &s->prefill, &s->decode_rows);
    return check_reach(ctx, fn, s);
}

flp_status flp_plan_workspace_size(flp_context *ctx, const flp_plan_desc *desc, size_t *bytes) {
    static const char *fn = "flp_plan_workspace_size";
    flp_status status = flp_check_out_call(ctx, fn, "bytes", bytes);
    if (status != FLP_OK)
        return status;
    plan_shape shape;
    status = prepare(ctx, fn, desc, &shape);
    if (status == FLP_OK)
        *bytes = shape.layout.total;
    return status;
}

static flp_status alloc_region_mirror(flp_prefill_region *r) {
    size_t bytes = r->layout.metadata_end - r->layout.info;
    if (r->max_qo_rows == 0)
        return FLP_OK;
    r->host = flp_calloc(1, bytes);
    return r->host ? FLP_OK : FLP_ERROR_OUT_OF_MEMORY;
}

static flp_status alloc_mirrors(flp_context *ctx, const char *fn, flp_plan *plan) {
    plan->host = flp_calloc(1, plan->layout.metadata_end);
    if (!plan->host || alloc_region_mirror(&plan->prefill) != FLP_OK ||
        alloc_region_mirror(&plan->decode_rows) != FLP_OK)
        return flp_fail(ctx, FLP_ERROR_OUT_OF_MEMORY,
                        "%s: out of host memory for the plan's mirrors (%zu bytes of plan data)",
                        fn, plan->layout.total);
    return FLP_OK;
}

/* Points the plan at the caller's workspace or allocates its own buffer. */
static flp_status attach_memory(flp_context *ctx, const char *fn, flp_plan *plan) {
    flp_object_memory m;
    flp_status status =
        flp_object_memory_attach(ctx, fn, plan->desc.workspace, plan->desc.workspace_offset,
                                 plan->layout.total, "the plan", "flp_plan_workspace_size", &m);
    plan->buffer = m.buffer;
    plan->owns_buffer = m.owns_buffer;
    plan->base = m.base;
    return status;
}

flp_status flp_plan_create(flp_context *ctx, const flp_plan_desc *desc, flp_plan **out) {
    static const char *fn = "flp_plan_create";
    flp_status status = flp_check_out_call(ctx, fn, "out", out);
    if (status != FLP_OK)
        return status;
    *out = NULL;
    flp_plan *plan = flp_calloc(1, sizeof *plan);
    if (!plan)
        return flp_fail(ctx, FLP_ERROR_OUT_OF_MEMORY, "%s: out of host memory for the plan", fn);
    plan->ctx = ctx;
    plan_shape shape;
    status = prepare(ctx, fn, desc, &shape);
    if (status == FLP_OK) {
        plan->desc = shape.desc;
        plan->num_ctas = shape.num_ctas;
        plan->max_items = shape.max_items;
        plan->layout = shape.layout;
        plan->decode_kernel = shape.decode_kernel;
        plan->prefill = shape.prefill;
        plan->decode_rows = shape.decode_rows;
        plan->group_size = plan->desc.num_qo_heads / plan->desc.num_kv_heads;
        status = alloc_mirrors(ctx, fn, plan);
    }
    if (status == FLP_OK)
        status = attach_memory(ctx, fn, plan);
    if (status != FLP_OK) {
        flp_plan_destroy(plan);
        return status;
    }
    *out = plan;
    return FLP_OK;
}

void flp_plan_destroy(flp_plan *plan) {
    if (!plan)
        return;
    if (plan->owns_buffer)
        flp_buffer_destroy(plan->buffer);
    flp_free(plan->host);
    flp_variant_program_free(plan->decode.program);
    flp_variant_program_free(plan->prefill.state.program);
    flp_variant_program_free(plan->decode_rows.state.program);
    flp_free(plan->prefill.host);
    flp_free(plan->decode_rows.host);
    flp_free(plan);
}

flp_decode_kernel flp_plan_decode_kernel(const flp_plan *plan) {
    return plan ? plan->decode_kernel : FLP_DECODE_KERNEL_AUTO;
}

flp_status flp_plan_check_call(flp_context *ctx, const char *fn, const flp_plan *plan,
                               const void *args) {
    return flp_check_object_call(ctx, fn, "plan", plan, plan ? plan->ctx : NULL, args);
}

void flp_plan_summarize(const flp_plan *plan, flp_plan_summary *out) {
    memset(out, 0, sizeof *out);
    out->decode_matrix = plan->decode_kernel == FLP_DECODE_KERNEL_MATRIX;
    out->decode_ctas = out->decode_matrix ? plan->decode_rows.ctas : plan->num_ctas;
    out->prefill_ctas = plan->prefill.ctas;
    if (plan->decode.planned) {
        out->decode_items = plan->decode.num_items;
        out->decode_partial_slots = plan->decode.num_partial_slots;
    }
    const flp_prefill_state *pf = &plan->prefill.state;
    if (pf->planned) {
        out->prefill_items = pf->num_items;
        out->prefill_merge_items = pf->num_merge_items;
        out->prefill_partial_slots = pf->num_partial_slots;
        out->prefill_q_tile = pf->q_tile;
    }
}

flp_status flp_plan_check_outputs(flp_context *ctx, const char *fn, const flp_plan *plan,
                                  const flp_named_tensor *outputs, int num_outputs,
                                  const flp_named_tensor *inputs, int num_inputs) {
    flp_status status =
        flp_tensor_check_disjoint(ctx, fn, outputs, num_outputs, inputs, num_inputs);
    for (int o = 0; o < num_outputs && status == FLP_OK; o++)
        status = flp_tensor_check_outside(ctx, fn, &outputs[o], plan->buffer, plan->base,
                                          plan->base + plan->layout.total, "the plan's memory");
    return status;
}

flp_status flp_plan_check_upload(flp_context *ctx, const char *fn) {
    flp_status status = ctx->ops->plan_upload_check ? ctx->ops->plan_upload_check(ctx) : FLP_OK;
    if (status != FLP_OK)
        flp_error_prefix(ctx, fn);
    return status;
}

flp_status flp_buffer_upload(flp_context *ctx, const char *fn, flp_buffer *buffer, size_t offset,
                             const void *src, size_t size) {
    flp_status status = FLP_OK;
    if (!ctx->ops->plan_upload)
        status = flp_buffer_write(ctx, buffer, offset, src, size);
    else if (size > 0)
        status = ctx->ops->plan_upload(ctx, buffer, offset, src, size);
    if (status != FLP_OK)
        flp_error_prefix(ctx, fn);
    return status;
}

flp_status flp_plan_upload(flp_context *ctx, const char *fn, const flp_plan *plan, size_t offset,
                           const void *src, size_t size) {
    return flp_buffer_upload(ctx, fn, plan->buffer, offset, src, size);
}

/* The largest unused stretch a plan upload copies rather than split the copy in two: a copy
 * from pageable memory costs the CUDA driver about 2 us plus 0.1 us per KiB (H100 host,
 * 2026-12-07), so a gap of 16 KiB costs less than a second copy. */
#define FLP_PLAN_UPLOAD_MAX_GAP ((size_t)16 << 10)

flp_status flp_plan_upload_parts(flp_context *ctx, const char *fn, const flp_plan *plan,
                                 size_t offset, const void *src, size_t head_end, size_t tail_begin,
                                 size_t tail_end) {
    if (tail_end <= tail_begin || tail_begin <= head_end ||
        tail_begin - head_end <= FLP_PLAN_UPLOAD_MAX_GAP)
        return flp_plan_upload(ctx, fn, plan, offset, src,
                               tail_end > tail_begin ? tail_end : head_end);
    flp_status status = flp_plan_upload(ctx, fn, plan, offset, src, head_end);
    if (status == FLP_OK)
        status = flp_plan_upload(ctx, fn, plan, offset + tail_begin, (const char *)src + tail_begin,
                                 tail_end - tail_begin);
    return status;
}
