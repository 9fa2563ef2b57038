/* Batch decode front end: validates plan/run arguments, builds the partition and the launch. */
#include "core/backend.h"
#include "core/plan.h"
#include "core/posenc.h"
#include "core/decode_schedule.h"
#include "core/tensor.h"
#include "core/variant.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* A split chunk is at least this many keys: below it the merge costs more than it saves. */
#define DECODE_MIN_CHUNK 128

static flp_status check_plan_args(flp_context *ctx, const flp_plan *plan,
                                  const flp_decode_plan_args *a, int32_t qo_len,
                                  flp_variant *resolved) {
    static const char *fn = "flp_decode_plan";
    const flp_plan_desc *d = &plan->desc;
    if (a->batch_size <= 0)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: batch_size = %d must be > 0", fn,
                        a->batch_size);
    if (a->batch_size > d->max_batch_size)
        return flp_fail(ctx, FLP_ERROR_CAPACITY,
                        "%s: batch_size = %d exceeds the plan's max_batch_size = %d", fn,
                        a->batch_size, d->max_batch_size);
    if (qo_len < 1 || qo_len > FLP_DECODE_MAX_QO_LEN)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: qo_len = %d must be in 1..%d", fn,
                        qo_len, FLP_DECODE_MAX_QO_LEN);
    if (qo_len > d->max_qo_len)
        return flp_fail(ctx, FLP_ERROR_CAPACITY,
                        "%s: qo_len = %d exceeds the plan's max_qo_len = %d", fn, qo_len,
                        d->max_qo_len);
    if (a->page_size < 1 || a->page_size > FLP_MAX_PAGE_SIZE)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: page_size = %d must be in 1..%d", fn,
                        a->page_size, FLP_MAX_PAGE_SIZE);
    if (a->kv_layout != FLP_KV_LAYOUT_NHD && a->kv_layout != FLP_KV_LAYOUT_HND)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: kv_layout = %d is not NHD or HND", fn,
                        (int)a->kv_layout);
    char message[512];
    flp_status status = flp_variant_validate(&a->variant, message, sizeof message);
    if (status != FLP_OK)
        return flp_fail(ctx, status, "%s: %s", fn, message);
    if (a->variant.head_dim != d->head_dim)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: variant.head_dim = %d differs from the plan's head_dim = %d", fn,
                        a->variant.head_dim, d->head_dim);
    if (a->variant.mask == FLP_MASK_CUSTOM)
        return flp_fail(ctx, FLP_ERROR_UNSUPPORTED,
                        "%s: custom masks are a prefill feature; decode takes NONE or CAUSAL", fn);
    *resolved = flp_variant_resolved(&a->variant);

    if (!a->kv_indptr || !a->kv_last_page_len)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: %s is NULL", fn,
                        !a->kv_indptr ? "kv_indptr" : "kv_last_page_len");
    if (a->kv_indptr[0] != 0)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: kv_indptr[0] = %d must be 0", fn,
                        a->kv_indptr[0]);
    for (int32_t b = 0; b < a->batch_size; b++) {
        int32_t pages = a->kv_indptr[b + 1] - a->kv_indptr[b];
        if (a->kv_indptr[b + 1] < a->kv_indptr[b])
            return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                            "%s: kv_indptr decreases at request %d (%d then %d)", fn, b,
                            a->kv_indptr[b], a->kv_indptr[b + 1]);
        if (a->kv_indptr[b + 1] > d->max_pages)
            return flp_fail(ctx, FLP_ERROR_CAPACITY,
                            "%s: kv_indptr[%d] = %d pages exceed the plan's max_pages = %d", fn,
                            b + 1, a->kv_indptr[b + 1], d->max_pages);
        if (pages == 0)
            continue;
        int32_t last = a->kv_last_page_len[b];
        if (last < 1 || last > a->page_size)
            return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                            "%s: kv_last_page_len[%d] = %d must be in 1..page_size (%d)", fn, b,
                            last, a->page_size);
        int64_t kv_len = (int64_t)(pages - 1) * a->page_size + last;
        if (kv_len > INT32_MAX)
            return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                            "%s: request %d has %lld keys, more than 2^31 - 1", fn, b,
                            (long long)kv_len);
        if (kv_len < qo_len)
            return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                            "%s: request %d has %lld keys, fewer than qo_len = %d", fn, b,
                            (long long)kv_len, qo_len);
    }
    int32_t total_pages = a->kv_indptr[a->batch_size];
    if (total_pages > 0 && !a->kv_indices)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: kv_indices is NULL", fn);
    for (int32_t i = 0; i < total_pages; i++)
        if (a->kv_indices[i] < 0)
            return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                            "%s: kv_indices[%d] = %d is a negative page id", fn, i,
                            a->kv_indices[i]);
    if (a->alibi_slopes)
        for (int32_t h = 0; h < d->num_qo_heads; h++)
            if (!isfinite(a->alibi_slopes[h]))
                return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                                "%s: alibi_slopes[%d] = %g is not finite", fn, h,
                                (double)a->alibi_slopes[h]);
    return FLP_OK;
}

#define HOST_I32(plan, field) ((int32_t *)((plan)->host + (plan)->layout.field))
#define HOST_F32(plan, field) ((float *)((plan)->host + (plan)->layout.field))

/* Writes the plan data into the host mirror; returns the decisions in st. */
static flp_status fill_plan_data(flp_context *ctx, flp_plan *plan, const flp_decode_plan_args *a,
                                 int32_t qo_len, const flp_variant *v, flp_decode_state *st) {
    const flp_plan_desc *d = &plan->desc;
    int32_t batch = a->batch_size;
    int32_t *kv_len = HOST_I32(plan, kv_len);
    int32_t total_pages = a->kv_indptr[batch];
    int32_t *kv_begin = malloc(sizeof(int32_t) * (size_t)batch); /* [batch] */
    if (!kv_begin)
        return flp_fail(ctx, FLP_ERROR_OUT_OF_MEMORY, "flp_decode_plan: host allocation");

    memcpy(HOST_I32(plan, kv_indptr), a->kv_indptr, sizeof(int32_t) * (size_t)(batch + 1));
    if (total_pages > 0)
        memcpy(HOST_I32(plan, kv_indices), a->kv_indices, sizeof(int32_t) * (size_t)total_pages);
    st->max_page_id = -1;
    for (int32_t i = 0; i < total_pages; i++)
        if (a->kv_indices[i] > st->max_page_id)
            st->max_page_id = a->kv_indices[i];

    for (int32_t b = 0; b < batch; b++) {
        int32_t pages = a->kv_indptr[b + 1] - a->kv_indptr[b];
        kv_len[b] = pages == 0 ? 0 : (pages - 1) * a->page_size + a->kv_last_page_len[b];
        /* The sliding window hides keys below pos(row 0) - window_left from every row: those
         * are never scheduled, so no tile or page of them is read. */
        int64_t lowest = v->use_window ? (int64_t)kv_len[b] - qo_len - v->window_left : 0;
        kv_begin[b] = lowest <= 0 ? 0 : (int32_t)lowest;
    }

    flp_decode_schedule_input in = {
        .batch_size = batch,
        .num_kv_heads = d->num_kv_heads,
        .num_ctas = plan->num_ctas,
        .kv_begin = kv_begin,
        .kv_end = kv_len,
        .min_chunk = DECODE_MIN_CHUNK,
        .chunk_align = a->page_size > 16 ? a->page_size : 16,
    };
    flp_decode_schedule sched = {
        .work_indptr = HOST_I32(plan, work_indptr),
        .work_items = HOST_I32(plan, work_items),
        .merge_info = HOST_I32(plan, merge_info),
    };
    bool built = flp_decode_schedule_build(&in, &sched);
    st->needs_merge = sched.num_partial_slots > 0;
    free(kv_begin);
    if (!built)
        return flp_fail(ctx, FLP_ERROR_OUT_OF_MEMORY, "flp_decode_plan: host allocation");

    int32_t *q_off = HOST_I32(plan, q_rope_offset), *k_off = HOST_I32(plan, k_rope_offset);
    for (int32_t b = 0; b < batch; b++) {
        q_off[b] = a->q_rope_offset ? a->q_rope_offset[b] : 0;
        k_off[b] = a->k_rope_offset ? a->k_rope_offset[b] : 0;
    }
    flp_rope_frequencies(&v->rope, d->head_dim, HOST_F32(plan, rope_freq));
    if (a->alibi_slopes)
        memcpy(HOST_F32(plan, alibi_slopes), a->alibi_slopes,
               sizeof(float) * (size_t)d->num_qo_heads);
    else
        flp_alibi_standard_slopes(d->num_qo_heads, HOST_F32(plan, alibi_slopes));
    return FLP_OK;
}

/* The plan information the kernels read from the plan memory (DESIGN.md section 4: everything
 * a re-plan may change lives in device memory owned by the plan, never in a launch). */
static void fill_plan_info(flp_plan *plan, const flp_decode_plan_args *a, int32_t qo_len,
                           const flp_variant *v) {
    const flp_plan_layout *l = &plan->layout;
    flp_decode_plan_info *p = (flp_decode_plan_info *)(plan->host + l->info);
    memset(p, 0, sizeof *p);
#define WORDS(field) ((uint32_t)((l->field - l->info) / sizeof(int32_t)))
    p->off_kv_indptr = WORDS(kv_indptr);
    p->off_kv_indices = WORDS(kv_indices);
    p->off_kv_len = WORDS(kv_len);
    p->off_q_rope_offset = WORDS(q_rope_offset);
    p->off_k_rope_offset = WORDS(k_rope_offset);
    p->off_rope_freq = WORDS(rope_freq);
    p->off_alibi_slopes = WORDS(alibi_slopes);
    p->off_work_indptr = WORDS(work_indptr);
    p->off_work_items = WORDS(work_items);
    p->off_merge_info = WORDS(merge_info);
    p->off_partial_o = WORDS(partial_o);
    p->off_partial_lse = WORDS(partial_lse);
#undef WORDS
    p->batch_size = a->batch_size;
    p->qo_len = qo_len;
    p->num_qo_heads = plan->desc.num_qo_heads;
    p->num_kv_heads = plan->desc.num_kv_heads;
    p->group_size = plan->group_size;
    p->head_dim = plan->desc.head_dim;
    p->page_size = a->page_size;
    p->num_ctas = plan->num_ctas;
    FLP_SET_KERNEL_VARIANT(p, v);
}

flp_status flp_decode_plan(flp_context *ctx, flp_plan *plan, const flp_decode_plan_args *args) {
    flp_status status = flp_plan_check_call(ctx, "flp_decode_plan", plan, args);
    if (status != FLP_OK)
        return status;
    int32_t qo_len = args->qo_len == 0 ? 1 : args->qo_len;
    flp_variant v;
    status = check_plan_args(ctx, plan, args, qo_len, &v);
    if (status != FLP_OK)
        return status;

    flp_decode_state st;
    memset(&st, 0, sizeof st);
    plan->decode.planned = false; /* the mirror is about to change */
    status = fill_plan_data(ctx, plan, args, qo_len, &v, &st);
    if (status != FLP_OK)
        return status;
    fill_plan_info(plan, args, qo_len, &v);
    size_t end =
        plan->layout.kv_indices + sizeof(int32_t) * (size_t)args->kv_indptr[args->batch_size];
    status = flp_buffer_write(ctx, plan->buffer, plan->base, plan->host, end);
    if (status != FLP_OK)
        return status;
    st.planned = true;
    st.batch_size = args->batch_size;
    st.qo_len = qo_len;
    st.page_size = args->page_size;
    st.kv_layout = args->kv_layout;
    st.variant = v;
    plan->decode = st;
    return FLP_OK;
}

/* Shapes the run's tensors must have, from the plan. */
static flp_status check_run_tensors(flp_context *ctx, const flp_plan *plan,
                                    const flp_decode_run_args *a) {
    static const char *fn = "flp_decode_run";
    const flp_decode_state *st = &plan->decode;
    const flp_plan_desc *d = &plan->desc;
    int64_t rows = (int64_t)st->batch_size * st->qo_len;
    flp_tensor_expect q = {"q", st->variant.q_dtype, 3, {rows, d->num_qo_heads, d->head_dim}, true};
    flp_status status = flp_tensor_check(ctx, fn, &a->q, &q);
    if (status != FLP_OK)
        return status;
    flp_tensor_expect out = q;
    out.name = "out";
    if ((status = flp_tensor_check(ctx, fn, &a->out, &out)) != FLP_OK)
        return status;
    flp_tensor_expect kv = {"k_cache", st->variant.kv_dtype, 4, {-1, 0, 0, d->head_dim}, true};
    bool nhd = st->kv_layout == FLP_KV_LAYOUT_NHD;
    kv.shape[1] = nhd ? st->page_size : d->num_kv_heads;
    kv.shape[2] = nhd ? d->num_kv_heads : st->page_size;
    if ((status = flp_tensor_check(ctx, fn, &a->k_cache, &kv)) != FLP_OK)
        return status;
    kv.name = "v_cache";
    kv.shape[0] = a->k_cache.shape[0];
    if ((status = flp_tensor_check(ctx, fn, &a->v_cache, &kv)) != FLP_OK)
        return status;
    if (st->max_page_id >= a->k_cache.shape[0])
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: the plan's kv_indices reference page %d but k_cache/v_cache have "
                        "%lld pages",
                        fn, st->max_page_id, (long long)a->k_cache.shape[0]);
    if (a->lse) {
        flp_tensor_expect lse = {"lse", FLP_DTYPE_F32, 2, {rows, d->num_qo_heads}, false};
        if ((status = flp_tensor_check(ctx, fn, a->lse, &lse)) != FLP_OK)
            return status;
    }
    return FLP_OK;
}

flp_status flp_decode_run(flp_context *ctx, const flp_plan *plan, const flp_decode_run_args *args) {
    static const char *fn = "flp_decode_run";
    flp_status status = flp_plan_check_call(ctx, fn, plan, args);
    if (status != FLP_OK)
        return status;
    if (!plan->decode.planned)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: the plan holds no decode plan (call flp_decode_plan first)", fn);
    status = check_run_tensors(ctx, plan, args);
    if (status != FLP_OK)
        return status;

    flp_decode_launch launch;
    memset(&launch, 0, sizeof launch);
    flp_decode_params *p = &launch.params;
    p->plan = plan->buffer->device_address + plan->base + plan->layout.info;
    p->q = flp_tensor_address(&args->q);
    p->o = flp_tensor_address(&args->out);
    p->k = flp_tensor_address(&args->k_cache);
    p->v = flp_tensor_address(&args->v_cache);
    p->q_stride_row = args->q.stride[0];
    p->q_stride_head = args->q.stride[1];
    p->o_stride_row = args->out.stride[0];
    p->o_stride_head = args->out.stride[1];
    flp_kv_layout layout = plan->decode.kv_layout;
    flp_paged_strides(&args->k_cache, layout, &p->k_stride_page, &p->k_stride_slot,
                      &p->k_stride_head);
    flp_paged_strides(&args->v_cache, layout, &p->v_stride_page, &p->v_stride_slot,
                      &p->v_stride_head);
    if (args->lse) {
        p->lse = flp_tensor_address(args->lse);
        p->lse_stride_row = args->lse->stride[0];
    }
    launch.plan = plan;
    launch.plan_buffer = plan->buffer;
    launch.params_slot_offset = plan->base + plan->layout.params_slot;
    launch.num_ctas = plan->num_ctas;
    launch.merge_grid = plan->desc.max_batch_size * plan->desc.num_qo_heads;
    launch.q_dtype = (int32_t)plan->decode.variant.q_dtype;
    launch.kv_dtype = (int32_t)plan->decode.variant.kv_dtype;
    launch.head_dim = plan->desc.head_dim;
    status = ctx->ops->decode_check(ctx, &launch);
    if (status != FLP_OK)
        return status;
    return ctx->ops->decode_run(ctx, &launch);
}
