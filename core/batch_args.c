/* Validation of a batch's host arrays: indptrs, paged KV, ALiBi slopes. */
#include "core/batch_args.h"

#include "core/tensor.h"

#include <math.h>

flp_status flp_check_batch_size(flp_context *ctx, const char *fn, int32_t batch_size,
                                int32_t max_batch_size) {
    if (batch_size <= 0)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: batch_size = %d must be > 0", fn,
                        batch_size);
    if (batch_size > max_batch_size)
        return flp_fail(ctx, FLP_ERROR_CAPACITY,
                        "%s: batch_size = %d exceeds the plan's max_batch_size = %d", fn,
                        batch_size, max_batch_size);
    return FLP_OK;
}

flp_status flp_check_indptr(flp_context *ctx, const char *fn, const char *name,
                            const int32_t *indptr, int32_t batch, int64_t limit,
                            const char *limit_name) {
    return flp_check_indptr_from(ctx, fn, name, indptr, batch, limit, limit_name, false);
}

flp_status flp_check_indptr_from(flp_context *ctx, const char *fn, const char *name,
                                 const int32_t *indptr, int32_t batch, int64_t limit,
                                 const char *limit_name, bool any_start) {
    if (!indptr)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: %s is NULL", fn, name);
    if (any_start ? indptr[0] < 0 : indptr[0] != 0)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: %s[0] = %d must be 0", fn, name,
                        indptr[0]);
    for (int32_t b = 0; b < batch; b++)
        if (indptr[b + 1] < indptr[b])
            return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                            "%s: %s decreases at request %d (%d then %d)", fn, name, b, indptr[b],
                            indptr[b + 1]);
    if (limit >= 0 && indptr[batch] > limit)
        return flp_fail(ctx, FLP_ERROR_CAPACITY, "%s: %s[%d] = %d exceeds the plan's %s = %lld", fn,
                        name, batch, indptr[batch], limit_name, (long long)limit);
    return FLP_OK;
}

/* Keys of each request from its pages and last-page length. */
static flp_status request_lengths(flp_context *ctx, const char *fn, const flp_paged_kv_args *kv,
                                  int32_t *kv_len) {
    for (int32_t b = 0; b < kv->batch_size; b++) {
        int32_t pages = kv->kv_indptr[b + 1] - kv->kv_indptr[b];
        if (pages == 0) {
            kv_len[b] = 0;
            continue;
        }
        int32_t last = kv->kv_last_page_len[b];
        if (last < 1 || last > kv->page_size)
            return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                            "%s: kv_last_page_len[%d] = %d must be in 1..page_size (%d)", fn, b,
                            last, kv->page_size);
        int64_t len = (int64_t)(pages - 1) * kv->page_size + last;
        if (len > FLP_MAX_KV_LEN)
            return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                            "%s: request %d has %lld keys, more than %d", fn, b, (long long)len,
                            FLP_MAX_KV_LEN);
        kv_len[b] = (int32_t)len;
    }
    return FLP_OK;
}

flp_status flp_check_paged_kv(flp_context *ctx, const char *fn, const flp_paged_kv_args *kv,
                              int32_t *kv_len, int32_t *max_page_id) {
    if (kv->page_size < 1 || kv->page_size > FLP_MAX_PAGE_SIZE)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: page_size = %d must be in 1..%d", fn,
                        kv->page_size, FLP_MAX_PAGE_SIZE);
    if (kv->layout != FLP_KV_LAYOUT_NHD && kv->layout != FLP_KV_LAYOUT_HND)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: kv_layout = %d is not NHD or HND", fn,
                        (int)kv->layout);
    flp_status status = flp_check_indptr_from(ctx, fn, "kv_indptr", kv->kv_indptr, kv->batch_size,
                                              kv->max_pages, "max_pages", kv->tail);
    if (status != FLP_OK)
        return status;
    if (!kv->kv_last_page_len)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: kv_last_page_len is NULL", fn);
    if ((status = request_lengths(ctx, fn, kv, kv_len)) != FLP_OK)
        return status;
    int32_t total_pages = kv->kv_indptr[kv->batch_size];
    *max_page_id = -1;
    if (!kv->kv_indices) /* the runs bring the page ids (flp_check_run_kv_indices) */
        return FLP_OK;
    /* One branch-free pass (it vectorises: plans of long batches walk every page id), then the
     * first negative id for the message if there is one. */
    int32_t lowest = 0, highest = -1;
    for (int32_t i = 0; i < total_pages; i++) {
        const int32_t id = kv->kv_indices[i];
        lowest = id < lowest ? id : lowest;
        highest = id > highest ? id : highest;
    }
    if (lowest < 0)
        for (int32_t i = 0; i < total_pages; i++)
            if (kv->kv_indices[i] < 0)
                return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                                "%s: kv_indices[%d] = %d is a negative page id", fn, i,
                                kv->kv_indices[i]);
    *max_page_id = highest;
    return FLP_OK;
}

flp_status flp_check_alibi_slopes(flp_context *ctx, const char *fn, const float *slopes,
                                  int32_t num_heads) {
    if (!slopes)
        return FLP_OK;
    for (int32_t h = 0; h < num_heads; h++)
        if (!isfinite(slopes[h]))
            return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                            "%s: alibi_slopes[%d] = %g is not finite", fn, h, (double)slopes[h]);
    return FLP_OK;
}

flp_status flp_check_run_kv_indices(flp_context *ctx, const char *fn, bool plan_has_pages,
                                    int32_t total_pages, const flp_tensor *kv_indices) {
    if (plan_has_pages) {
        if (kv_indices)
            return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                            "%s: kv_indices is given but the plan holds the page ids (plan with "
                            "kv_indices = NULL to pass them at run time)",
                            fn);
        return FLP_OK;
    }
    if (!kv_indices)
        return total_pages == 0
                   ? FLP_OK
                   : flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                              "%s: kv_indices is NULL but the plan was given no page ids (%d "
                              "pages to look up)",
                              fn, total_pages);
    flp_tensor_expect e = {"kv_indices", FLP_DTYPE_I32, 1, {-1}, false};
    flp_status status = flp_tensor_check(ctx, fn, kv_indices, &e);
    if (status != FLP_OK)
        return status;
    /* (flp_tensor_check already refused a stride other than 1: the last dimension) */
    if (kv_indices->shape[0] < total_pages)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: kv_indices has %lld entries, the plan's kv_indptr needs %d", fn,
                        (long long)kv_indices->shape[0], total_pages);
    return FLP_OK;
}
