/* Batch decode front end: validates plan/run arguments, builds the partition and the launch. */
#include "core/alloc.h"
#include "core/backend.h"
#include "core/batch_args.h"
#include "core/decode_chunk.h"
#include "core/decode_schedule.h"
#include "core/plan.h"
#include "core/posenc.h"
#include "core/prefill_region.h"
#include "core/tensor.h"
#include "core/variant.h"

#include <string.h>

static const char *const FN = "flp_decode_plan";

static flp_status check_plan_args(flp_context *ctx, const flp_plan *plan,
                                  const flp_decode_plan_args *a, int32_t qo_len,
                                  flp_variant *resolved, int32_t *kv_len, int32_t *max_page_id) {
    const flp_plan_desc *d = &plan->desc;
    if (qo_len < 1 || qo_len > FLP_DECODE_MAX_QO_LEN)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: qo_len = %d must be in 1..%d", FN,
                        qo_len, FLP_DECODE_MAX_QO_LEN);
    if (qo_len > d->max_qo_len)
        return flp_fail(ctx, FLP_ERROR_CAPACITY,
                        "%s: qo_len = %d exceeds the plan's max_qo_len = %d", FN, qo_len,
                        d->max_qo_len);
    /* snippets: the vector kernel where the backend's takes them (the matrix kernel is the
     * prefill kernel's, which does not yet) */
    const bool takes_snippets =
        ctx->ops->decode_snippets && plan->decode_kernel == FLP_DECODE_KERNEL_VECTOR;
    flp_status status =
        flp_variant_check_for_plan(ctx, FN, &a->variant, d->head_dim, takes_snippets, resolved);
    if (status != FLP_OK)
        return status;
    if (a->variant.mask == FLP_MASK_CUSTOM)
        return flp_fail(ctx, FLP_ERROR_UNSUPPORTED,
                        "%s: custom masks are a prefill feature; decode takes NONE or CAUSAL", FN);
    flp_paged_kv_args kv = {
        .batch_size = a->batch_size,
        .page_size = a->page_size,
        .layout = a->kv_layout,
        .kv_indptr = a->kv_indptr,
        .kv_indices = a->kv_indices,
        .kv_last_page_len = a->kv_last_page_len,
        .max_pages = d->max_pages,
    };
    if ((status = flp_check_paged_kv(ctx, FN, &kv, kv_len, max_page_id)) != FLP_OK)
        return status;
    for (int32_t b = 0; b < a->batch_size; b++)
        if (kv_len[b] > 0 && kv_len[b] < qo_len)
            return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                            "%s: request %d has %d keys, fewer than qo_len = %d", FN, b, kv_len[b],
                            qo_len);
    return flp_check_alibi_slopes(ctx, FN, a->alibi_slopes, d->num_qo_heads);
}

#define HOST_I32(plan, field) ((int32_t *)((plan)->host + (plan)->layout.field))
#define HOST_F32(plan, field) ((float *)((plan)->host + (plan)->layout.field))

/* The call's host memory, taken in one allocation before anything is checked or changed, so
 * that a failed allocation leaves the plan exactly as it was. */
typedef struct decode_scratch {
    int32_t *kv_len;    /* [batch] keys of each request, from the checks */
    int32_t *qo_len;    /* [batch] matrix kernel: query rows of each request */
    int32_t *qo_indptr; /* [batch + 1] matrix kernel */
    void *schedule;     /* the kernel's scheduler scratch */
} decode_scratch;

/* The scheduler's input for batch requests with the key ranges [kv_begin, kv_end) (NULL when
 * only the scratch size is asked for: it depends on the shape alone). */
static flp_decode_schedule_input schedule_input(const flp_plan *plan, int32_t batch,
                                                int32_t page_size, const int32_t *kv_begin,
                                                const int32_t *kv_end) {
    flp_decode_schedule_input in = {
        .batch_size = batch,
        .num_kv_heads = plan->desc.num_kv_heads,
        .num_ctas = plan->num_ctas,
        .kv_begin = kv_begin,
        .kv_end = kv_end,
        .min_chunk = FLP_DECODE_MIN_CHUNK,
        .chunk_align = page_size > 16 ? page_size : 16,
    };
    return in;
}

/* Writes the plan data into the host mirror; returns the decisions in st. */
static void fill_plan_data(flp_plan *plan, const flp_decode_plan_args *a, int32_t qo_len,
                           const flp_variant *v, const decode_scratch *s, flp_decode_state *st) {
    const flp_plan_desc *d = &plan->desc;
    int32_t batch = a->batch_size;
    int32_t total_pages = a->kv_indptr[batch];
    const int32_t *kv_len = s->kv_len;

    memcpy(HOST_I32(plan, kv_indptr), a->kv_indptr, sizeof(int32_t) * (size_t)(batch + 1));
    memcpy(HOST_I32(plan, kv_len), kv_len, sizeof(int32_t) * (size_t)batch);
    if (total_pages > 0 && a->kv_indices)
        memcpy(HOST_I32(plan, kv_indices), a->kv_indices, sizeof(int32_t) * (size_t)total_pages);
    /* The sliding window hides keys below pos(row 0) - window_left from every row: those are
     * never scheduled, so no tile or page of them is read. */
    int32_t *kv_begin = HOST_I32(plan, kv_begin);
    if (v->use_window) {
        for (int32_t b = 0; b < batch; b++) {
            const int64_t lowest = (int64_t)kv_len[b] - qo_len - v->window_left;
            kv_begin[b] = lowest <= 0 ? 0 : (int32_t)lowest;
        }
    } else {
        memset(kv_begin, 0, sizeof(int32_t) * (size_t)batch);
    }

    flp_decode_schedule_input in = schedule_input(plan, batch, a->page_size, kv_begin, s->kv_len);
    flp_decode_schedule sched = {
        .work_indptr = HOST_I32(plan, work_indptr),
        .work_items = HOST_I32(plan, work_items),
        .merge_info = HOST_I32(plan, merge_info),
    };
    flp_decode_schedule_build_in(&in, &sched, s->schedule);
    st->num_items = sched.num_items;
    st->num_partial_slots = sched.num_partial_slots;
    st->chunk_size = sched.chunk_size;

    int32_t *q_off = HOST_I32(plan, q_rope_offset), *k_off = HOST_I32(plan, k_rope_offset);
    for (int32_t b = 0; b < batch; b++) {
        q_off[b] = a->q_rope_offset ? a->q_rope_offset[b] : 0;
        k_off[b] = a->k_rope_offset ? a->k_rope_offset[b] : 0;
    }
    flp_posenc_tables(v, a->alibi_slopes, d->head_dim, d->num_qo_heads, HOST_F32(plan, rope_freq),
                      HOST_F32(plan, alibi_slopes));
}

/* The plan information the kernels read from the plan memory (docs/design.md 5.2-5.4: everything
 * a re-plan may change lives in device memory owned by the plan, never in a launch). */
static void fill_plan_info(flp_plan *plan, const flp_decode_plan_args *a, int32_t qo_len,
                           const flp_variant *v, int32_t chunk_size) {
    const flp_plan_layout *l = &plan->layout;
    flp_decode_plan_info *p = (flp_decode_plan_info *)(plan->host + l->info);
    memset(p, 0, sizeof *p);
#define WORDS(field) ((uint32_t)((l->field - l->info) / sizeof(int32_t)))
    p->off_kv_indptr = WORDS(kv_indptr);
    p->off_kv_indices = WORDS(kv_indices);
    p->off_kv_len = WORDS(kv_len);
    p->off_kv_begin = WORDS(kv_begin);
    p->off_q_rope_offset = WORDS(q_rope_offset);
    p->off_k_rope_offset = WORDS(k_rope_offset);
    p->off_rope_freq = WORDS(rope_freq);
    p->off_alibi_slopes = WORDS(alibi_slopes);
    p->off_work_indptr = WORDS(work_indptr);
    p->off_work_items = WORDS(work_items);
    p->off_merge_info = WORDS(merge_info);
    p->off_partial_o = WORDS(partial_o);
    p->off_partial_lse = WORDS(partial_lse);
    p->off_user_params = WORDS(user_slot);
#undef WORDS
    p->batch_size = a->batch_size;
    p->qo_len = qo_len;
    p->num_qo_heads = plan->desc.num_qo_heads;
    p->num_kv_heads = plan->desc.num_kv_heads;
    p->group_size = plan->group_size;
    p->head_dim = plan->desc.head_dim;
    p->page_size = a->page_size;
    p->num_ctas = plan->num_ctas;
    p->chunk_size = chunk_size;
    FLP_SET_KERNEL_VARIANT(p, v);
}

/* The matrix kernel's partition of a checked batch: the batch as a prefill batch of qo_len rows
 * per request (an empty request keeps its rows: the kernel writes them as rows without keys). */
static flp_status plan_matrix_batch(flp_context *ctx, flp_plan *plan, const flp_decode_plan_args *a,
                                    int32_t qo_len, const flp_variant *v, const decode_scratch *s,
                                    flp_decode_state *st) {
    int32_t batch = a->batch_size;
    for (int32_t b = 0; b <= batch; b++)
        s->qo_indptr[b] = b * qo_len;
    for (int32_t b = 0; b < batch; b++)
        s->qo_len[b] = qo_len;
    flp_prefill_plan_args pa = {
        .batch_size = batch,
        .qo_indptr = s->qo_indptr,
        .kv_storage = FLP_KV_PAGED,
        .page_size = a->page_size,
        .kv_layout = a->kv_layout,
        .kv_indptr = a->kv_indptr,
        .kv_indices = a->kv_indices,
        .kv_last_page_len = a->kv_last_page_len,
        .q_rope_offset = a->q_rope_offset,
        .k_rope_offset = a->k_rope_offset,
        .alibi_slopes = a->alibi_slopes,
        .variant = *v,
    };
    flp_prefill_batch pb = {
        .args = &pa,
        .variant = *v,
        .qo_len = s->qo_len,
        .kv_len = s->kv_len,
        .max_page_id = st->max_page_id,
    };
    flp_status status =
        flp_prefill_region_plan(ctx, FN, plan, &plan->decode_rows, &pb, s->schedule);
    st->num_items = plan->decode_rows.state.num_items;
    st->num_partial_slots = plan->decode_rows.state.num_partial_slots;
    return status;
}

/* The vector kernel's partition of a checked batch into the decode region. */
static flp_status plan_vector_batch(flp_context *ctx, flp_plan *plan, const flp_decode_plan_args *a,
                                    int32_t qo_len, const flp_variant *v, const decode_scratch *s,
                                    flp_decode_state *st) {
    fill_plan_data(plan, a, qo_len, v, s, st);
    fill_plan_info(plan, a, qo_len, v, st->chunk_size);
    /* The work items, then the page ids, come last: the upload covers the batch up to its last
     * work item and, given page ids, those, so it does not grow with the capacities. */
    const flp_plan_layout *l = &plan->layout;
    size_t items_end = l->work_items + sizeof(int32_t) * FLP_WORK_ITEM_INTS * (size_t)st->num_items;
    size_t pages = a->kv_indices ? sizeof(int32_t) * (size_t)a->kv_indptr[a->batch_size] : 0;
    return flp_plan_upload_parts(ctx, FN, plan, plan->base, plan->host, items_end, l->kv_indices,
                                 l->kv_indices + pages);
}

static flp_status plan_batch(flp_context *ctx, flp_plan *plan, const flp_decode_plan_args *args,
                             const decode_scratch *s) {
    int32_t qo_len = args->qo_len == 0 ? 1 : args->qo_len;
    flp_variant v;
    flp_decode_state st;
    memset(&st, 0, sizeof st);
    flp_status status = check_plan_args(ctx, plan, args, qo_len, &v, s->kv_len, &st.max_page_id);
    if (status != FLP_OK)
        return status;
    flp_variant_program *program = NULL;
    if ((status = flp_variant_program_build(ctx, FN, &v, &program)) != FLP_OK)
        return status;
    /* the plan keeps its own copy; the caller's strings may go once the call returns */
    flp_variant_drop_snippets(&v);
    /* The mirror changes from here on: until the upload succeeds the plan holds no decode
     * partition (a failed upload may have written part of the device copy). */
    plan->decode.planned = false;
    status = plan->decode_kernel == FLP_DECODE_KERNEL_MATRIX
                 ? plan_matrix_batch(ctx, plan, args, qo_len, &v, s, &st)
                 : plan_vector_batch(ctx, plan, args, qo_len, &v, s, &st);
    if (status != FLP_OK) {
        flp_variant_program_free(program);
        return status;
    }
    st.planned = true;
    st.batch_size = args->batch_size;
    st.qo_len = qo_len;
    st.page_size = args->page_size;
    st.kv_layout = args->kv_layout;
    st.pages_at_run = !args->kv_indices;
    st.total_pages = args->kv_indptr[args->batch_size];
    st.variant = v;
    flp_variant_program_free(plan->decode.program);
    st.program = program;
    plan->decode = st;
    return FLP_OK;
}

flp_status flp_decode_plan(flp_context *ctx, flp_plan *plan, const flp_decode_plan_args *args) {
    flp_status status = flp_plan_check_call(ctx, FN, plan, args);
    if (status != FLP_OK)
        return status;
    plan->mixed_planned = false;
    status = flp_check_batch_size(ctx, FN, args->batch_size, plan->desc.max_batch_size);
    if (status != FLP_OK)
        return status;
    if ((status = flp_plan_check_upload(ctx, FN)) != FLP_OK)
        return status;
    int32_t batch = args->batch_size;
    size_t arrays = FLP_ALIGN_UP(sizeof(int32_t) * (3 * (size_t)batch + 1), 8);
    size_t schedule;
    if (plan->decode_kernel == FLP_DECODE_KERNEL_MATRIX) {
        schedule = flp_prefill_region_scratch_bytes(plan, &plan->decode_rows, batch);
    } else {
        flp_decode_schedule_input shape = schedule_input(plan, batch, 0, NULL, NULL);
        schedule = flp_decode_schedule_scratch_bytes(&shape);
    }
    size_t bytes = arrays + schedule;
    char *scratch = flp_malloc(bytes);
    if (!scratch)
        return flp_fail(ctx, FLP_ERROR_OUT_OF_MEMORY,
                        "%s: out of host memory for %zu bytes of scratch", FN, bytes);
    int32_t *i32 = (int32_t *)scratch;
    decode_scratch s = {i32, i32 + batch, i32 + 2 * batch, scratch + arrays};
    status = plan_batch(ctx, plan, args, &s);
    flp_free(scratch);
    return status;
}

/* Shapes the run's tensors must have, from the plan; the user parameters' values into
 * user[FLP_SNIPPET_MAX_PARAMS]. */
static flp_status check_run_tensors(flp_context *ctx, const flp_plan *plan,
                                    const flp_decode_run_args *a, flp_user_param *user) {
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
    status = flp_check_run_kv_indices(ctx, fn, !st->pages_at_run, st->total_pages, a->kv_indices);
    if (status != FLP_OK)
        return status;
    if (a->lse) {
        flp_tensor_expect lse = {"lse", FLP_DTYPE_F32, 2, {rows, d->num_qo_heads}, false};
        if ((status = flp_tensor_check(ctx, fn, a->lse, &lse)) != FLP_OK)
            return status;
    }
    status = flp_variant_program_bind(ctx, fn, st->program, a->params, a->num_params, user);
    if (status != FLP_OK)
        return status;
    const flp_named_tensor outputs[] = {{"out", &a->out}, {"lse", a->lse}};
    flp_named_tensor inputs[4 + FLP_SNIPPET_MAX_PARAMS] = {{"q", &a->q},
                                                           {"k_cache", &a->k_cache},
                                                           {"v_cache", &a->v_cache},
                                                           {"kv_indices", a->kv_indices}};
    int num_inputs = 4;
    flp_variant_param_inputs(a->params, a->num_params, inputs, &num_inputs);
    return flp_plan_check_outputs(ctx, fn, plan, outputs, 2, inputs, num_inputs);
}

/* The launch of a checked run: the tensors' addresses and strides, the plan memory, the grids,
 * the kernel choice and a view of the current schedule. */
static void fill_launch(const flp_plan *plan, const flp_decode_run_args *a,
                        const flp_user_param *user, flp_decode_launch *l) {
    const flp_decode_state *st = &plan->decode;
    memset(l, 0, sizeof *l);
    if (st->program) {
        l->program = st->program;
        memcpy(l->user, user, sizeof l->user);
        l->user_slot.buffer = plan->buffer;
        l->user_slot.offset = plan->base + plan->layout.user_slot;
    }
    flp_decode_params *p = &l->params;
    p->plan = plan->buffer->device_address + plan->base + plan->layout.info;
    p->q = flp_tensor_address(&a->q);
    p->o = flp_tensor_address(&a->out);
    p->k = flp_tensor_address(&a->k_cache);
    p->v = flp_tensor_address(&a->v_cache);
    p->q_stride_row = a->q.stride[0];
    p->q_stride_head = a->q.stride[1];
    p->o_stride_row = a->out.stride[0];
    p->o_stride_head = a->out.stride[1];
    flp_paged_strides(&a->k_cache, st->kv_layout, &p->k_stride_page, &p->k_stride_slot,
                      &p->k_stride_head);
    flp_paged_strides(&a->v_cache, st->kv_layout, &p->v_stride_page, &p->v_stride_slot,
                      &p->v_stride_head);
    if (a->lse) {
        p->lse = flp_tensor_address(a->lse);
        p->lse_stride_row = a->lse->stride[0];
    }
    p->kv_indices = a->kv_indices
                        ? flp_tensor_address(a->kv_indices)
                        : plan->buffer->device_address + plan->base + plan->layout.kv_indices;
    p->num_pages = a->k_cache.shape[0];
    l->slot.buffer = plan->buffer;
    l->slot.offset = plan->base + plan->layout.params_slot;
    l->num_ctas = plan->num_ctas;
    l->merge_grid = plan->desc.max_batch_size * plan->desc.num_qo_heads;
    l->q_dtype = (int32_t)st->variant.q_dtype;
    l->kv_dtype = (int32_t)st->variant.kv_dtype;
    l->head_dim = plan->desc.head_dim;
    l->group_size = plan->group_size;
    l->max_qo_len = plan->desc.max_qo_len;
    l->schedule.work_indptr = (const int32_t *)(plan->host + plan->layout.work_indptr);
    l->schedule.work_items = (const int32_t *)(plan->host + plan->layout.work_items);
    l->schedule.merge_info = (const int32_t *)(plan->host + plan->layout.merge_info);
    l->schedule.kv_begin = (const int32_t *)(plan->host + plan->layout.kv_begin);
    l->schedule.kv_end = (const int32_t *)(plan->host + plan->layout.kv_len);
    l->schedule.chunk_size = st->chunk_size;
    l->schedule.qo_len = st->qo_len;
    l->schedule.flags = flp_variant_kernel_flags(&st->variant);
}

flp_status flp_decode_run(flp_context *ctx, const flp_plan *plan, const flp_decode_run_args *args) {
    static const char *fn = "flp_decode_run";
    flp_status status = flp_plan_check_call(ctx, fn, plan, args);
    if (status != FLP_OK)
        return status;
    if (!plan->decode.planned)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: the plan holds no decode plan (call flp_decode_plan first)", fn);
    flp_user_param user[FLP_SNIPPET_MAX_PARAMS];
    status = check_run_tensors(ctx, plan, args, user);
    if (status != FLP_OK)
        return status;
    if (plan->decode_kernel == FLP_DECODE_KERNEL_MATRIX) {
        flp_prefill_run_args pa = {
            .q = args->q,
            .k = args->k_cache,
            .v = args->v_cache,
            .out = args->out,
            .lse = args->lse,
            .kv_indices = args->kv_indices,
        };
        flp_prefill_launch launch;
        flp_prefill_region_launch(plan, &plan->decode_rows, &pa, NULL, &launch);
        status = ctx->ops->prefill_run(ctx, &launch);
    } else {
        flp_decode_launch launch;
        fill_launch(plan, args, user, &launch);
        status = ctx->ops->decode_run(ctx, &launch);
    }
    if (status != FLP_OK)
        flp_error_prefix(ctx, fn);
    return status;
}
