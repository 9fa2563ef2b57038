/* Mixed batches (flp_mixed_plan / flp_mixed_run): one plan's decode partition takes the leading
 * one-row requests, its prefill partition the rest, as the tail of the same batch (its qo_indptr
 * and kv_indptr start where the decode requests end and index the caller's rows and page ids in
 * place). Both partitions always hold a batch, so that every re-plan launches the same two
 * kernels on the same addresses: an empty side holds a stand-in request (docs/api.md, "Mixed
 * batches"). */
#include "core/alloc.h"
#include "core/batch_args.h"
#include "core/plan.h"
#include "core/prefill_region.h"

#include <string.h>

static const char *const FN = "flp_mixed_plan";

/* The whole batch, checked as one as flp_prefill_plan would (messages number the caller's
 * requests), over a paged cache and with query rows; qo_len and kv_len [batch]. */
static flp_status check_batch(flp_context *ctx, const flp_plan *plan,
                              const flp_prefill_plan_args *a, int32_t *qo_len, int32_t *kv_len) {
    if (a->kv_storage != FLP_KV_PAGED)
        return flp_fail(ctx, FLP_ERROR_UNSUPPORTED,
                        "%s: kv_storage = %d: a mixed batch is over a paged cache (FLP_KV_PAGED)",
                        FN, (int)a->kv_storage);
    flp_status status = flp_check_batch_size(ctx, FN, a->batch_size, plan->desc.max_batch_size);
    if (status != FLP_OK)
        return status;
    const flp_prefill_plan_options whole = {0};
    flp_prefill_batch pb;
    if ((status = flp_prefill_check_batch(ctx, FN, plan, a, &whole, &pb, qo_len, kv_len)) != FLP_OK)
        return status;
    if (a->qo_indptr[a->batch_size] == 0)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: the batch has no query rows (qo_indptr[%d] = 0)", FN, a->batch_size);
    return FLP_OK;
}

/* The leading requests of one query row (none with a custom mask: decode takes none). */
static int32_t decode_requests(const flp_prefill_plan_args *a) {
    int32_t d = 0;
    if (a->variant.mask == FLP_MASK_CUSTOM)
        return 0;
    while (d < a->batch_size && a->qo_indptr[d + 1] - a->qo_indptr[d] == 1)
        d++;
    return d;
}

/* The decode partition: requests [0, d), or with d = 0 a stand-in request with no keys on row 0
 * (its zeros are overwritten by the prefill, which runs after it). */
static flp_status plan_decode(flp_context *ctx, flp_plan *plan, const flp_prefill_plan_args *a,
                              int32_t d) {
    static const int32_t no_pages[2] = {0, 0}, one[1] = {1};
    flp_decode_plan_args p = {
        .batch_size = d > 0 ? d : 1,
        .qo_len = 1,
        .page_size = a->page_size,
        .kv_layout = a->kv_layout,
        .kv_indptr = d > 0 ? a->kv_indptr : no_pages,
        .kv_indices = a->kv_indices,
        .kv_last_page_len = d > 0 ? a->kv_last_page_len : one,
        .q_rope_offset = d > 0 ? a->q_rope_offset : NULL,
        .k_rope_offset = d > 0 ? a->k_rope_offset : NULL,
        .alibi_slopes = a->alibi_slopes,
        .variant = a->variant,
    };
    if (d == 0) /* the stand-in has no keys: any mask (a custom one included) is none */
        p.variant.mask = FLP_MASK_NONE;
    return flp_decode_plan(ctx, plan, &p);
}

/* The prefill partition: requests [d, batch) in place, or with d = batch a stand-in request with
 * no rows and no keys. */
static flp_status plan_prefill(flp_context *ctx, flp_plan *plan, const flp_prefill_plan_args *a,
                               int32_t d) {
    const int32_t batch = a->batch_size;
    const int32_t end_rows[2] = {a->qo_indptr[batch], a->qo_indptr[batch]};
    const int32_t end_pages[2] = {a->kv_indptr[batch], a->kv_indptr[batch]}, one[1] = {1};
    const bool some = d < batch;
    flp_prefill_plan_args p = *a;
    p.batch_size = some ? batch - d : 1;
    p.qo_indptr = some ? a->qo_indptr + d : end_rows;
    p.kv_indptr = some ? a->kv_indptr + d : end_pages;
    p.kv_last_page_len = some ? a->kv_last_page_len + d : one;
    if (a->mask_indptr)
        p.mask_indptr = some ? a->mask_indptr + d : a->mask_indptr;
    p.q_rope_offset = some && a->q_rope_offset ? a->q_rope_offset + d : NULL;
    p.k_rope_offset = some && a->k_rope_offset ? a->k_rope_offset + d : NULL;
    const flp_prefill_plan_options o = {.tail = true};
    return flp_prefill_plan_internal(ctx, plan, &p, &o);
}

flp_status flp_mixed_plan(flp_context *ctx, flp_plan *plan, const flp_prefill_plan_args *args) {
    flp_status status = flp_plan_check_call(ctx, FN, plan, args);
    if (status != FLP_OK)
        return status;
    if (plan->prefill.max_qo_rows == 0)
        return flp_fail(ctx, FLP_ERROR_CAPACITY,
                        "%s: the plan was created with max_qo_rows = 0 (decode only)", FN);
    if ((status = flp_plan_check_upload(ctx, FN)) != FLP_OK)
        return status;
    if (args->batch_size < 1)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: batch_size = %d must be > 0", FN,
                        args->batch_size);
    int32_t *lens = flp_malloc(2 * sizeof(int32_t) * (size_t)args->batch_size);
    if (!lens)
        return flp_fail(ctx, FLP_ERROR_OUT_OF_MEMORY, "%s: out of host memory", FN);
    status = check_batch(ctx, plan, args, lens, lens + args->batch_size);
    flp_free(lens);
    if (status != FLP_OK)
        return status;
    const int32_t d = decode_requests(args);
    plan->mixed_planned = false;
    if ((status = plan_decode(ctx, plan, args, d)) != FLP_OK ||
        (status = plan_prefill(ctx, plan, args, d)) != FLP_OK) {
        flp_error_prefix(ctx, FN);
        return status;
    }
    plan->mixed_planned = true;
    plan->mixed_decode_rows = d > 0 ? d : 1;
    return FLP_OK;
}

/* The first rows rows of t (a view at the same address). */
static flp_tensor first_rows(const flp_tensor *t, int32_t rows) {
    flp_tensor v = *t;
    v.shape[0] = rows;
    return v;
}

flp_status flp_mixed_run(flp_context *ctx, const flp_plan *plan, const flp_prefill_run_args *args) {
    static const char *fn = "flp_mixed_run";
    flp_status status = flp_plan_check_call(ctx, fn, plan, args);
    if (status != FLP_OK)
        return status;
    if (!plan->mixed_planned)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: the plan holds no mixed batch (call flp_mixed_plan first)", fn);
    /* every check of both runs before anything is queued: no partial output on bad input */
    flp_user_param user[FLP_SNIPPET_MAX_PARAMS]; /* mixed plans take no snippets: unused */
    if ((status = flp_prefill_check_run(ctx, fn, plan, args, user)) != FLP_OK)
        return status;
    const int32_t rows = plan->mixed_decode_rows;
    const flp_tensor q = first_rows(&args->q, rows), out = first_rows(&args->out, rows);
    flp_tensor lse;
    if (args->lse)
        lse = first_rows(args->lse, rows);
    flp_decode_run_args d = {
        .q = q,
        .k_cache = args->k,
        .v_cache = args->v,
        .out = out,
        .lse = args->lse ? &lse : NULL,
        .kv_indices = args->kv_indices,
    };
    if ((status = flp_decode_run(ctx, plan, &d)) == FLP_OK)
        status = flp_prefill_run(ctx, plan, args);
    if (status != FLP_OK)
        flp_error_prefix(ctx, fn);
    return status;
}
