/* flp_prefill_run (tensor checks, launch) and the single-request convenience call. */
#include "core/backend.h"
#include "core/batch_args.h"
#include "core/plan.h"
#include "core/prefill_region.h"
#include "core/prefill_schedule.h"
#include "core/tensor.h"

#include <string.h>

static flp_status check_kv_tensors(flp_context *ctx, const char *fn, const flp_plan *plan,
                                   const flp_prefill_run_args *a) {
    const flp_prefill_state *st = &plan->prefill.state;
    const flp_plan_desc *d = &plan->desc;
    flp_tensor_expect kv = {"k", st->variant.kv_dtype, 3, {-1, d->num_kv_heads, d->head_dim}, true};
    if (st->kv_storage == FLP_KV_PAGED) {
        bool nhd = st->kv_layout == FLP_KV_LAYOUT_NHD;
        kv.ndim = 4;
        kv.shape[1] = nhd ? st->page_size : d->num_kv_heads;
        kv.shape[2] = nhd ? d->num_kv_heads : st->page_size;
        kv.shape[3] = d->head_dim;
    }
    flp_status status = flp_tensor_check(ctx, fn, &a->k, &kv);
    if (status != FLP_OK)
        return status;
    kv.name = "v";
    kv.shape[0] = a->k.shape[0];
    if ((status = flp_tensor_check(ctx, fn, &a->v, &kv)) != FLP_OK)
        return status;
    if (st->kv_storage == FLP_KV_PAGED && st->max_page_id >= a->k.shape[0])
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: the plan's kv_indices reference page %d but k/v have %lld pages", fn,
                        st->max_page_id, (long long)a->k.shape[0]);
    if (st->kv_storage == FLP_KV_RAGGED && a->k.shape[0] < st->total_kv_rows)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: k/v have %lld rows, the plan's kv_indptr needs %d", fn,
                        (long long)a->k.shape[0], st->total_kv_rows);
    if (st->kv_storage == FLP_KV_RAGGED && a->kv_indices)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: kv_indices is given but the plan's KV is ragged", fn);
    if (st->kv_storage == FLP_KV_RAGGED)
        return FLP_OK;
    return flp_check_run_kv_indices(ctx, fn, !st->pages_at_run, st->total_pages, a->kv_indices);
}

static flp_status check_mask(flp_context *ctx, const char *fn, const flp_plan *plan,
                             const flp_tensor *mask) {
    const flp_prefill_state *st = &plan->prefill.state;
    bool custom = st->variant.mask == FLP_MASK_CUSTOM;
    if (!custom && mask)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: custom_mask is given but the plan's variant.mask is not "
                        "FLP_MASK_CUSTOM",
                        fn);
    if (!custom)
        return FLP_OK;
    if (!mask)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: the plan's variant.mask is FLP_MASK_CUSTOM but custom_mask is NULL",
                        fn);
    flp_tensor_expect e = {"custom_mask", FLP_DTYPE_U8, 1, {-1}, false};
    flp_status status = flp_tensor_check(ctx, fn, mask, &e);
    if (status != FLP_OK)
        return status;
    if (mask->shape[0] < st->mask_bytes)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: custom_mask has %lld bytes, the plan's mask_indptr and lengths need "
                        "%lld",
                        fn, (long long)mask->shape[0], (long long)st->mask_bytes);
    return FLP_OK;
}

flp_status flp_prefill_check_run(flp_context *ctx, const char *fn, const flp_plan *plan,
                                 const flp_prefill_run_args *a, flp_user_param *user) {
    const flp_prefill_state *st = &plan->prefill.state;
    const flp_plan_desc *d = &plan->desc;
    flp_tensor_expect q = {
        "q", st->variant.q_dtype, 3, {st->total_rows, d->num_qo_heads, d->head_dim}, true};
    flp_status status = flp_tensor_check(ctx, fn, &a->q, &q);
    if (status != FLP_OK)
        return status;
    flp_tensor_expect out = q;
    out.name = "out";
    if ((status = flp_tensor_check(ctx, fn, &a->out, &out)) != FLP_OK)
        return status;
    if ((status = check_kv_tensors(ctx, fn, plan, a)) != FLP_OK)
        return status;
    if (a->lse) {
        flp_tensor_expect lse = {"lse", FLP_DTYPE_F32, 2, {st->total_rows, d->num_qo_heads}, false};
        if ((status = flp_tensor_check(ctx, fn, a->lse, &lse)) != FLP_OK)
            return status;
    }
    if (a->custom_mask && a->custom_mask->stride[0] != 1)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: custom_mask stride = %lld must be 1",
                        fn, (long long)a->custom_mask->stride[0]);
    if ((status = check_mask(ctx, fn, plan, a->custom_mask)) != FLP_OK)
        return status;
    status = flp_variant_program_bind(ctx, fn, st->program, a->params, a->num_params, user);
    if (status != FLP_OK)
        return status;
    const flp_named_tensor outputs[] = {{"out", &a->out}, {"lse", a->lse}};
    flp_named_tensor inputs[5 + FLP_SNIPPET_MAX_PARAMS] = {{"q", &a->q},
                                                           {"k", &a->k},
                                                           {"v", &a->v},
                                                           {"custom_mask", a->custom_mask},
                                                           {"kv_indices", a->kv_indices}};
    int num_inputs = 5;
    flp_variant_param_inputs(a->params, a->num_params, inputs, &num_inputs);
    return flp_plan_check_outputs(ctx, fn, plan, outputs, 2, inputs, num_inputs);
}

/* An int32 array of a region's host mirror, at its layout offset. */
static const int32_t *mirror(const flp_prefill_region *r, size_t offset) {
    return (const int32_t *)(r->host + (offset - r->layout.info));
}

void flp_prefill_region_launch(const flp_plan *plan, const flp_prefill_region *r,
                               const flp_prefill_run_args *a, const flp_user_param *user,
                               flp_prefill_launch *launch) {
    const flp_prefill_state *st = &r->state;
    const flp_prefill_layout *l = &r->layout;
    memset(launch, 0, sizeof *launch);
    if (st->program && user) {
        launch->program = st->program;
        memcpy(launch->user, user, sizeof launch->user);
        launch->user_slot.buffer = plan->buffer;
        launch->user_slot.offset = plan->base + l->user_slot;
    }
    flp_prefill_params *p = &launch->params;
    p->plan = plan->buffer->device_address + plan->base + l->info;
    p->q = flp_tensor_address(&a->q);
    p->o = flp_tensor_address(&a->out);
    p->k = flp_tensor_address(&a->k);
    p->v = flp_tensor_address(&a->v);
    p->q_stride_row = a->q.stride[0];
    p->q_stride_head = a->q.stride[1];
    p->o_stride_row = a->out.stride[0];
    p->o_stride_head = a->out.stride[1];
    if (st->kv_storage == FLP_KV_PAGED) {
        flp_paged_strides(&a->k, st->kv_layout, &p->k_stride_page, &p->k_stride_slot,
                          &p->k_stride_head);
        flp_paged_strides(&a->v, st->kv_layout, &p->v_stride_page, &p->v_stride_slot,
                          &p->v_stride_head);
        p->kv_indices = a->kv_indices ? flp_tensor_address(a->kv_indices)
                                      : plan->buffer->device_address + plan->base + l->kv_indices;
        p->num_pages = a->k.shape[0];
        launch->page_size = st->page_size;
    } else {
        p->k_stride_slot = a->k.stride[0];
        p->k_stride_head = a->k.stride[1];
        p->v_stride_slot = a->v.stride[0];
        p->v_stride_head = a->v.stride[1];
    }
    if (a->lse) {
        p->lse = flp_tensor_address(a->lse);
        p->lse_stride_row = a->lse->stride[0];
    }
    if (a->custom_mask)
        p->mask = flp_tensor_address(a->custom_mask);
    launch->slot.buffer = plan->buffer;
    launch->slot.offset = plan->base + l->params_slot;
    launch->num_ctas = r->ctas;
    launch->merge_grid = r->max_merges * FLP_PREFILL_MERGE_GRID_PER_ITEM;
    launch->q_tile = st->q_tile;
    launch->q_dtype = (int32_t)st->variant.q_dtype;
    launch->kv_dtype = (int32_t)st->variant.kv_dtype;
    launch->head_dim = plan->desc.head_dim;
    launch->num_kv_heads = plan->desc.num_kv_heads;
    launch->k_extent = a->k.shape[0];
    launch->v_extent = a->v.shape[0];
    flp_prefill_schedule_view *view = &launch->schedule;
    view->work_indptr = mirror(r, l->work_indptr);
    view->work_items = mirror(r, l->work_items);
    view->merge_items = mirror(r, l->merge_items);
    view->num_merge_items = st->num_merge_items;
    view->qo_indptr = mirror(r, l->qo_indptr);
    view->kv_len = mirror(r, l->kv_len);
    view->keys = st->keys;
}

flp_status flp_prefill_run(flp_context *ctx, const flp_plan *plan,
                           const flp_prefill_run_args *args) {
    static const char *fn = "flp_prefill_run";
    flp_status status = flp_plan_check_call(ctx, fn, plan, args);
    if (status != FLP_OK)
        return status;
    if (!plan->prefill.state.planned)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: the plan holds no prefill plan (call flp_prefill_plan first)", fn);
    flp_user_param user[FLP_SNIPPET_MAX_PARAMS];
    status = flp_prefill_check_run(ctx, fn, plan, args, user);
    if (status != FLP_OK)
        return status;
    flp_prefill_launch launch;
    flp_prefill_region_launch(plan, &plan->prefill, args, user, &launch);
    status = ctx->ops->prefill_run(ctx, &launch);
    if (status != FLP_OK)
        flp_error_prefix(ctx, fn);
    return status;
}

/* Plans and runs one ragged request on a temporary plan, then waits and frees it. */
static flp_status single_prefill(flp_context *ctx, const flp_single_prefill_args *a) {
    static const char *fn = "flp_single_prefill";
    if (ctx->ops->records_for_caller && ctx->ops->records_for_caller(ctx))
        return flp_fail(ctx, FLP_ERROR_UNSUPPORTED,
                        "%s: the context records into a caller's command buffer, which would "
                        "run after the temporary plan is freed: use flp_prefill_plan/run",
                        fn);
    if (a->q.ndim != 3 || a->k.ndim != 3)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: q and k must be 3-D [len, heads, head_dim] (q.ndim = %d, k.ndim = %d)",
                        fn, a->q.ndim, a->k.ndim);
    int64_t qo_len = a->q.shape[0], kv_len = a->k.shape[0];
    if (qo_len < 1 || kv_len > FLP_MAX_KV_LEN || qo_len > FLP_MAX_QO_ROWS)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: q has %lld rows and k %lld: need 1 <= rows <= %d, keys <= %d", fn,
                        (long long)qo_len, (long long)kv_len, FLP_MAX_QO_ROWS, FLP_MAX_KV_LEN);
    flp_plan_desc desc = {
        .max_batch_size = 1,
        .max_pages = 1,
        .max_qo_rows = (int32_t)qo_len,
        .num_qo_heads = (int32_t)a->q.shape[1],
        .num_kv_heads = (int32_t)a->k.shape[1],
        .head_dim = a->variant.head_dim,
        .decode_kernel = FLP_DECODE_KERNEL_VECTOR, /* no decode here: no matrix decode region */
    };
    if (a->q.shape[1] > 4096 || a->k.shape[1] > 4096)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: more than 4096 heads", fn);
    flp_plan *plan = NULL;
    flp_status status = flp_plan_create(ctx, &desc, &plan);
    if (status != FLP_OK)
        return status;
    int32_t qo_indptr[2] = {0, (int32_t)qo_len}, kv_indptr[2] = {0, (int32_t)kv_len};
    int32_t mask_indptr[1] = {0};
    flp_prefill_plan_args pa = {
        .batch_size = 1,
        .qo_indptr = qo_indptr,
        .kv_storage = FLP_KV_RAGGED,
        .kv_indptr = kv_indptr,
        .mask_indptr = a->variant.mask == FLP_MASK_CUSTOM ? mask_indptr : NULL,
        .alibi_slopes = a->alibi_slopes,
        .variant = a->variant,
    };
    status = flp_prefill_plan(ctx, plan, &pa);
    if (status == FLP_OK) {
        flp_prefill_run_args ra = {
            .q = a->q,
            .k = a->k,
            .v = a->v,
            .out = a->out,
            .lse = a->lse,
            .custom_mask = a->custom_mask,
        };
        status = flp_prefill_run(ctx, plan, &ra);
    }
    if (status == FLP_OK)
        status = flp_context_synchronize(ctx);
    /* Keep the first failure's message: the plan is freed either way. */
    flp_plan_destroy(plan);
    return status;
}

flp_status flp_single_prefill(flp_context *ctx, const flp_single_prefill_args *args) {
    if (!ctx)
        return FLP_ERROR_INVALID_ARGUMENT;
    flp_clear_error(ctx);
    if (!args)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "flp_single_prefill: args is NULL");
    return single_prefill(ctx, args);
}
