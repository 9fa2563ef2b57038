/* flp_prefill_plan: validates a batch, builds the prefill partition and uploads it. */
#include "core/alloc.h"
#include "core/backend.h"
#include "core/batch_args.h"
#include "core/decode_chunk.h"
#include "core/plan.h"
#include "core/posenc.h"
#include "core/prefill_region.h"
#include "core/prefill_schedule.h"
#include "core/variant.h"

#include <string.h>

/* A split chunk is at least this many keys: below it the merge costs more than it saves. */
#define PREFILL_MIN_CHUNK 256

static const char *const FN = "flp_prefill_plan";

static flp_status check_variant(flp_context *ctx, const char *fn, const flp_plan *plan,
                                const flp_prefill_plan_args *a, bool snippets,
                                flp_variant *resolved) {
    flp_status status =
        flp_variant_check_for_plan(ctx, fn, &a->variant, plan->desc.head_dim, snippets, resolved);
    if (status != FLP_OK)
        return status;
    bool custom = a->variant.mask == FLP_MASK_CUSTOM;
    if (custom && !a->mask_indptr)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: variant.mask is FLP_MASK_CUSTOM but mask_indptr is NULL", fn);
    if (!custom && a->mask_indptr)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: mask_indptr is given but variant.mask is not FLP_MASK_CUSTOM", fn);
    return flp_check_alibi_slopes(ctx, fn, a->alibi_slopes, plan->desc.num_qo_heads);
}

/* Keys of each request into kv_len[batch] and, paged, the largest page id into *max_page_id. */
static flp_status check_kv(flp_context *ctx, const char *fn, const flp_plan *plan,
                           const flp_prefill_plan_args *a, bool tail, int32_t *kv_len,
                           int32_t *max_page_id) {
    int32_t batch = a->batch_size;
    *max_page_id = -1;
    if (a->kv_storage == FLP_KV_RAGGED) {
        flp_status status = flp_check_indptr(ctx, fn, "kv_indptr", a->kv_indptr, batch, -1, "");
        if (status != FLP_OK)
            return status;
        if (a->kv_indices || a->kv_last_page_len)
            return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                            "%s: ragged KV takes no %s (must be NULL)", fn,
                            a->kv_indices ? "kv_indices" : "kv_last_page_len");
        for (int32_t b = 0; b < batch; b++) {
            kv_len[b] = a->kv_indptr[b + 1] - a->kv_indptr[b];
            if (kv_len[b] > FLP_MAX_KV_LEN)
                return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                                "%s: request %d has %d keys, more than %d", fn, b, kv_len[b],
                                FLP_MAX_KV_LEN);
        }
        return FLP_OK;
    }
    if (a->kv_storage != FLP_KV_PAGED)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: kv_storage = %d is not FLP_KV_PAGED or FLP_KV_RAGGED", fn,
                        (int)a->kv_storage);
    flp_paged_kv_args kv = {
        .batch_size = batch,
        .page_size = a->page_size,
        .layout = a->kv_layout,
        .kv_indptr = a->kv_indptr,
        .kv_indices = a->kv_indices,
        .kv_last_page_len = a->kv_last_page_len,
        .max_pages = plan->desc.max_pages,
        .tail = tail,
    };
    return flp_check_paged_kv(ctx, fn, &kv, kv_len, max_page_id);
}

/* Query lengths against keys, and the custom-mask extent. */
static flp_status check_rows(flp_context *ctx, const char *fn, const flp_prefill_plan_args *a,
                             const int32_t *qo_len, const int32_t *kv_len, bool rows_beyond_keys,
                             int64_t *mask_bytes) {
    *mask_bytes = 0;
    for (int32_t b = 0; b < a->batch_size; b++) {
        if (qo_len[b] > kv_len[b] && !rows_beyond_keys)
            return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                            "%s: request %d has qo_len = %d > kv_len = %d (queries are the last "
                            "qo_len keys of their request)",
                            fn, b, qo_len[b], kv_len[b]);
        if (!a->mask_indptr)
            continue;
        if (a->mask_indptr[b] < 0)
            return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: mask_indptr[%d] = %d is negative",
                            fn, b, a->mask_indptr[b]);
        int64_t end = a->mask_indptr[b] + ((int64_t)qo_len[b] * kv_len[b] + 7) / 8;
        if (end > INT32_MAX)
            return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                            "%s: request %d's mask bits end at byte %lld, beyond 2^31 - 1", fn, b,
                            (long long)end);
        if (qo_len[b] > 0 && end > *mask_bytes)
            *mask_bytes = end;
    }
    return FLP_OK;
}

flp_status flp_prefill_check_batch(flp_context *ctx, const char *fn, const flp_plan *plan,
                                   const flp_prefill_plan_args *a,
                                   const flp_prefill_plan_options *o, flp_prefill_batch *batch,
                                   int32_t *qo_len, int32_t *kv_len) {
    batch->args = a;
    batch->qo_len = qo_len;
    batch->kv_len = kv_len;
    batch->program = NULL;
    flp_status status = check_variant(ctx, fn, plan, a, o->snippets, &batch->variant);
    if (status != FLP_OK)
        return status;
    status = flp_check_indptr_from(ctx, fn, "qo_indptr", a->qo_indptr, a->batch_size,
                                   plan->prefill.max_qo_rows, "max_qo_rows", o->tail);
    if (status != FLP_OK)
        return status;
    for (int32_t b = 0; b < a->batch_size; b++)
        qo_len[b] = a->qo_indptr[b + 1] - a->qo_indptr[b];
    status = check_kv(ctx, fn, plan, a, o->tail, kv_len, &batch->max_page_id);
    if (status != FLP_OK)
        return status;
    return check_rows(ctx, fn, a, qo_len, kv_len, o->rows_beyond_keys, &batch->mask_bytes);
}

#define PF_I32(region, field)                                                                      \
    ((int32_t *)((region)->host + (region)->layout.field - (region)->layout.info))
#define PF_F32(region, field) ((float *)PF_I32(region, field))

/* Per-request arrays, RoPE frequencies and ALiBi slopes into the region's host mirror. */
static void fill_arrays(const flp_plan *plan, flp_prefill_region *r, const flp_prefill_batch *pb) {
    const flp_prefill_plan_args *a = pb->args;
    int32_t batch = a->batch_size;
    bool paged = a->kv_storage == FLP_KV_PAGED;
    memcpy(PF_I32(r, qo_indptr), a->qo_indptr, sizeof(int32_t) * (size_t)(batch + 1));
    memcpy(PF_I32(r, kv_indptr), a->kv_indptr, sizeof(int32_t) * (size_t)(batch + 1));
    memcpy(PF_I32(r, kv_len), pb->kv_len, sizeof(int32_t) * (size_t)batch);
    int32_t *q_off = PF_I32(r, q_rope_offset), *k_off = PF_I32(r, k_rope_offset);
    int32_t *mask_off = PF_I32(r, mask_indptr);
    for (int32_t b = 0; b < batch; b++) {
        q_off[b] = a->q_rope_offset ? a->q_rope_offset[b] : 0;
        k_off[b] = a->k_rope_offset ? a->k_rope_offset[b] : 0;
        mask_off[b] = a->mask_indptr ? a->mask_indptr[b] : 0;
    }
    if (paged && a->kv_indices && a->kv_indptr[batch] > 0)
        memcpy(PF_I32(r, kv_indices), a->kv_indices, sizeof(int32_t) * (size_t)a->kv_indptr[batch]);
    flp_posenc_tables(&pb->variant, a->alibi_slopes, plan->desc.head_dim, plan->desc.num_qo_heads,
                      PF_F32(r, rope_freq), PF_F32(r, alibi_slopes));
}

/* The keys each row can keep at most, by the variant's causal mask and window. */
static flp_prefill_key_rule key_rule(const flp_plan *plan, const flp_variant *v) {
    flp_prefill_key_rule rule = {
        .group_size = plan->group_size,
        .causal = v->mask == FLP_MASK_CAUSAL,
        .window_left = v->use_window ? v->window_left : -1,
    };
    return rule;
}

/* The scheduler's input (v, qo_len and kv_len NULL when only the scratch size is asked for: it
 * depends on the region's capacities and grid alone). */
static flp_prefill_schedule_input schedule_input(const flp_plan *plan, const flp_prefill_region *r,
                                                 int32_t batch, const flp_variant *v,
                                                 const int32_t *qo_len, const int32_t *kv_len) {
    flp_prefill_schedule_input in = {
        .batch_size = batch,
        .num_kv_heads = plan->desc.num_kv_heads,
        .num_ctas = r->ctas,
        .qo_len = qo_len,
        .kv_len = kv_len,
        .keys = v ? key_rule(plan, v) : (flp_prefill_key_rule){.group_size = plan->group_size},
        .min_chunk = r->split_by_cost ? FLP_DECODE_MIN_CHUNK : PREFILL_MIN_CHUNK,
        .chunk_align = 64,
        .max_items = r->max_items,
        .max_slots = r->max_slots,
        .max_merge_items = r->max_merges,
        .split_by_cost = r->split_by_cost,
    };
    return in;
}

size_t flp_prefill_region_scratch_bytes(const flp_plan *plan, const flp_prefill_region *r,
                                        int32_t batch_size) {
    flp_prefill_schedule_input shape = schedule_input(plan, r, batch_size, NULL, NULL, NULL);
    return flp_prefill_schedule_scratch_bytes(&shape);
}

static void fill_schedule(const flp_plan *plan, flp_prefill_region *r, const flp_prefill_batch *pb,
                          void *scratch, flp_prefill_schedule *sched) {
    flp_prefill_schedule_input in =
        schedule_input(plan, r, pb->args->batch_size, &pb->variant, pb->qo_len, pb->kv_len);
    sched->work_indptr = PF_I32(r, work_indptr);
    sched->work_items = PF_I32(r, work_items);
    sched->merge_items = PF_I32(r, merge_items);
    flp_prefill_schedule_build(&in, sched, scratch);
}

static void fill_info(const flp_plan *plan, flp_prefill_region *r, const flp_prefill_batch *pb,
                      const flp_prefill_schedule *sched) {
    const flp_prefill_plan_args *a = pb->args;
    const flp_prefill_layout *l = &r->layout;
    flp_prefill_plan_info *p = (flp_prefill_plan_info *)r->host;
    memset(p, 0, sizeof *p);
#define WORDS(field) ((uint32_t)((l->field - l->info) / sizeof(int32_t)))
    p->off_qo_indptr = WORDS(qo_indptr);
    p->off_kv_indptr = WORDS(kv_indptr);
    p->off_kv_len = WORDS(kv_len);
    p->off_q_rope_offset = WORDS(q_rope_offset);
    p->off_k_rope_offset = WORDS(k_rope_offset);
    p->off_mask_indptr = WORDS(mask_indptr);
    p->off_rope_freq = WORDS(rope_freq);
    p->off_alibi_slopes = WORDS(alibi_slopes);
    p->off_work_indptr = WORDS(work_indptr);
    p->off_work_items = WORDS(work_items);
    p->off_merge_items = WORDS(merge_items);
    p->off_kv_indices = WORDS(kv_indices);
    p->off_partial_o = WORDS(partial_o);
    p->off_partial_lse = WORDS(partial_lse);
    p->off_user_params = WORDS(user_slot);
#undef WORDS
    p->batch_size = a->batch_size;
    p->num_qo_heads = plan->desc.num_qo_heads;
    p->num_kv_heads = plan->desc.num_kv_heads;
    p->group_size = plan->group_size;
    p->head_dim = plan->desc.head_dim;
    p->page_size = a->kv_storage == FLP_KV_PAGED ? a->page_size : 0;
    p->num_ctas = r->ctas;
    p->num_merge_items = sched->num_merge_items;
    p->q_tile = sched->q_tile;
    FLP_SET_KERNEL_VARIANT(p, &pb->variant);
    if (a->kv_storage == FLP_KV_PAGED)
        p->flags |= FLP_FLAG_PAGED;
}

flp_status flp_prefill_region_plan(flp_context *ctx, const char *fn, flp_plan *plan,
                                   flp_prefill_region *r, const flp_prefill_batch *pb,
                                   void *scratch) {
    const flp_prefill_plan_args *a = pb->args;
    /* The mirror changes from here on: until the upload succeeds the region holds no
     * partition (a failed upload may have written part of the device copy). */
    r->state.planned = false;
    fill_arrays(plan, r, pb);
    flp_prefill_schedule sched;
    fill_schedule(plan, r, pb, scratch, &sched);
    fill_info(plan, r, pb, &sched);
    const flp_prefill_layout *l = &r->layout;
    bool paged = a->kv_storage == FLP_KV_PAGED;
    /* The work items, then the page ids, come last: the upload covers the batch up to its last
     * work item and, given page ids, those (a plan without them uploads none), so it does not
     * grow with the capacities. */
    bool copied_pages = paged && a->kv_indices;
    size_t items_end =
        l->work_items + sizeof(int32_t) * FLP_PREFILL_ITEM_INTS * (size_t)sched.num_items;
    size_t pages = copied_pages ? sizeof(int32_t) * (size_t)a->kv_indptr[a->batch_size] : 0;
    flp_status status =
        flp_plan_upload_parts(ctx, fn, plan, plan->base + l->info, r->host, items_end - l->info,
                              l->kv_indices - l->info, l->kv_indices + pages - l->info);
    if (status != FLP_OK)
        return status;
    flp_prefill_state st;
    memset(&st, 0, sizeof st);
    st.planned = true;
    st.batch_size = a->batch_size;
    st.total_rows = a->qo_indptr[a->batch_size];
    st.page_size = paged ? a->page_size : 0;
    st.q_tile = sched.q_tile;
    st.kv_storage = a->kv_storage;
    st.kv_layout = paged ? a->kv_layout : FLP_KV_LAYOUT_NHD;
    st.variant = pb->variant;
    st.max_page_id = pb->max_page_id;
    st.pages_at_run = paged && !a->kv_indices;
    st.total_pages = paged ? a->kv_indptr[a->batch_size] : 0;
    st.mask_bytes = pb->mask_bytes;
    st.total_kv_rows = paged ? 0 : a->kv_indptr[a->batch_size];
    st.keys = key_rule(plan, &pb->variant);
    st.num_items = sched.num_items;
    st.num_merge_items = sched.num_merge_items;
    st.num_partial_slots = sched.num_partial_slots;
    /* the region keeps its own copy of the snippets; the caller's strings may go */
    flp_variant_drop_snippets(&st.variant);
    flp_variant_program_free(r->state.program);
    st.program = pb->program;
    r->state = st;
    return FLP_OK;
}

flp_status flp_prefill_plan_internal(flp_context *ctx, flp_plan *plan,
                                     const flp_prefill_plan_args *args,
                                     const flp_prefill_plan_options *options) {
    flp_status status;
    if (plan->prefill.max_qo_rows == 0)
        return flp_fail(ctx, FLP_ERROR_CAPACITY,
                        "%s: the plan was created with max_qo_rows = 0 (decode only)", FN);
    status = flp_check_batch_size(ctx, FN, args->batch_size, plan->desc.max_batch_size);
    if (status != FLP_OK)
        return status;
    if ((status = flp_plan_check_upload(ctx, FN)) != FLP_OK)
        return status;
    /* The call's host memory, taken in one allocation before anything is checked or changed,
     * so that a failed allocation leaves the plan exactly as it was: qo_len and kv_len
     * [batch], then the scheduler's scratch. */
    size_t batch = (size_t)args->batch_size;
    size_t lens = FLP_ALIGN_UP(2 * sizeof(int32_t) * batch, 8);
    size_t bytes = lens + flp_prefill_region_scratch_bytes(plan, &plan->prefill, args->batch_size);
    char *scratch = flp_malloc(bytes);
    if (!scratch)
        return flp_fail(ctx, FLP_ERROR_OUT_OF_MEMORY,
                        "%s: out of host memory for %zu bytes of scratch", FN, bytes);
    int32_t *qo_len = (int32_t *)scratch, *kv_len = qo_len + batch;
    flp_prefill_batch pb;
    status = flp_prefill_check_batch(ctx, FN, plan, args, options, &pb, qo_len, kv_len);
    if (status == FLP_OK)
        status = flp_variant_program_build(ctx, FN, &pb.variant, &pb.program);
    if (status == FLP_OK) {
        status = flp_prefill_region_plan(ctx, FN, plan, &plan->prefill, &pb, scratch + lens);
        if (status != FLP_OK)
            flp_variant_program_free(pb.program);
    }
    flp_free(scratch);
    return status;
}

flp_status flp_prefill_plan(flp_context *ctx, flp_plan *plan, const flp_prefill_plan_args *args) {
    flp_status status = flp_plan_check_call(ctx, FN, plan, args);
    if (status != FLP_OK)
        return status;
    plan->mixed_planned = false;
    const flp_prefill_plan_options plain = {.snippets = ctx->ops->prefill_snippets};
    return flp_prefill_plan_internal(ctx, plan, args, &plain);
}
