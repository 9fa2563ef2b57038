/* flp_kv_append: validates the new rows, the index tensors and the caches, then queues the
 * backend's append kernel. */
#include "core/backend.h"
#include "core/prefill_params.h"
#include "core/tensor.h"
#include "core/variant.h"

#include <math.h>
#include <string.h>

static const char *const FN = "flp_kv_append";

static bool is_kv_dtype(flp_dtype t) {
    return t == FLP_DTYPE_F16 || t == FLP_DTYPE_BF16 || flp_dtype_is_fp8((int32_t)t);
}

static flp_status check_caches(flp_context *ctx, const flp_kv_append_args *a) {
    if (a->kv_layout != FLP_KV_LAYOUT_NHD && a->kv_layout != FLP_KV_LAYOUT_HND)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: kv_layout = %d is not NHD or HND", FN,
                        (int)a->kv_layout);
    if (!is_kv_dtype(a->k_cache.dtype))
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: k_cache dtype %s is not f16, bf16, e4m3 or e5m2", FN,
                        flp_dtype_name(a->k_cache.dtype));
    if (a->k_cache.ndim != 4)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: k_cache.ndim = %d must be 4", FN,
                        a->k_cache.ndim);
    int64_t page_size = a->k_cache.shape[a->kv_layout == FLP_KV_LAYOUT_NHD ? 1 : 2];
    if (page_size < 1 || page_size > FLP_MAX_PAGE_SIZE)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: k_cache page size %lld must be in 1..%d", FN, (long long)page_size,
                        FLP_MAX_PAGE_SIZE);
    int64_t d = a->k_cache.shape[3];
    flp_status head_dim =
        d > INT32_MAX ? FLP_ERROR_INVALID_ARGUMENT : flp_head_dim_status((int32_t)d);
    if (head_dim != FLP_OK)
        return flp_fail(ctx, head_dim,
                        "%s: k_cache head_dim = %lld: supported head dims are " FLP_HEAD_DIMS_TEXT,
                        FN, (long long)d);
    flp_tensor_expect e = {"k_cache", a->k_cache.dtype, 4, {-1, -1, -1, d}, true};
    flp_status status = flp_tensor_check(ctx, FN, &a->k_cache, &e);
    if (status != FLP_OK)
        return status;
    e.name = "v_cache";
    memcpy(e.shape, a->k_cache.shape, sizeof e.shape);
    return flp_tensor_check(ctx, FN, &a->v_cache, &e);
}

static flp_status check_rows(flp_context *ctx, const flp_kv_append_args *a, int64_t heads,
                             int64_t d) {
    flp_dtype cache = a->k_cache.dtype, src = a->k.dtype;
    if (src != FLP_DTYPE_F16 && src != FLP_DTYPE_BF16 && src != cache)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: k dtype %s must be f16, bf16 or the cache dtype %s", FN,
                        flp_dtype_name(src), flp_dtype_name(cache));
    flp_tensor_expect e = {"k", src, 3, {-1, heads, d}, true};
    flp_status status = flp_tensor_check(ctx, FN, &a->k, &e);
    if (status != FLP_OK)
        return status;
    e.name = "v";
    e.shape[0] = a->k.shape[0];
    if ((status = flp_tensor_check(ctx, FN, &a->v, &e)) != FLP_OK)
        return status;
    if (a->k.shape[0] > INT32_MAX)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: %lld rows, more than 2^31 - 1", FN,
                        (long long)a->k.shape[0]);
    flp_tensor_expect idx = {"batch_indices", FLP_DTYPE_I32, 1, {a->k.shape[0]}, false};
    if ((status = flp_tensor_check(ctx, FN, &a->batch_indices, &idx)) != FLP_OK)
        return status;
    idx.name = "positions";
    if ((status = flp_tensor_check(ctx, FN, &a->positions, &idx)) != FLP_OK)
        return status;
    flp_tensor_expect indptr = {"kv_indptr", FLP_DTYPE_I32, 1, {-1}, false};
    if ((status = flp_tensor_check(ctx, FN, &a->kv_indptr, &indptr)) != FLP_OK)
        return status;
    if (a->kv_indptr.shape[0] < 2 || a->kv_indptr.stride[0] != 1)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: kv_indptr needs >= 2 contiguous entries (shape %lld, stride %lld)", FN,
                        (long long)a->kv_indptr.shape[0], (long long)a->kv_indptr.stride[0]);
    indptr.name = "kv_indices";
    if ((status = flp_tensor_check(ctx, FN, &a->kv_indices, &indptr)) != FLP_OK)
        return status;
    if (a->kv_indices.stride[0] != 1)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: kv_indices stride %lld must be 1", FN,
                        (long long)a->kv_indices.stride[0]);
    return FLP_OK;
}

static flp_status check_scales(flp_context *ctx, const flp_kv_append_args *a) {
    float scales[2] = {a->k_scale, a->v_scale};
    for (int i = 0; i < 2; i++)
        if (!isfinite(scales[i]) || scales[i] < 0.0f)
            return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                            "%s: %s = %g must be finite and >= 0 (0 = 1)", FN,
                            i == 0 ? "k_scale" : "v_scale", (double)scales[i]);
    return FLP_OK;
}

static void fill_params(const flp_kv_append_args *a, flp_kv_append_params *p) {
    bool nhd = a->kv_layout == FLP_KV_LAYOUT_NHD;
    bool fp8 = flp_dtype_is_fp8((int32_t)a->k_cache.dtype);
    memset(p, 0, sizeof *p);
    p->k = flp_tensor_address(&a->k);
    p->v = flp_tensor_address(&a->v);
    p->k_cache = flp_tensor_address(&a->k_cache);
    p->v_cache = flp_tensor_address(&a->v_cache);
    p->batch_indices = flp_tensor_address(&a->batch_indices);
    p->positions = flp_tensor_address(&a->positions);
    p->kv_indptr = flp_tensor_address(&a->kv_indptr);
    p->kv_indices = flp_tensor_address(&a->kv_indices);
    p->k_stride_row = a->k.stride[0];
    p->k_stride_head = a->k.stride[1];
    p->v_stride_row = a->v.stride[0];
    p->v_stride_head = a->v.stride[1];
    flp_paged_strides(&a->k_cache, a->kv_layout, &p->kc_stride_page, &p->kc_stride_slot,
                      &p->kc_stride_head);
    flp_paged_strides(&a->v_cache, a->kv_layout, &p->vc_stride_page, &p->vc_stride_slot,
                      &p->vc_stride_head);
    p->batch_indices_stride = a->batch_indices.stride[0];
    p->positions_stride = a->positions.stride[0];
    p->nnz = (int32_t)a->k.shape[0];
    p->num_kv_heads = (int32_t)a->k.shape[1];
    p->head_dim = (int32_t)a->k.shape[2];
    p->page_size = (int32_t)a->k_cache.shape[nhd ? 1 : 2];
    p->batch_size = (int32_t)(a->kv_indptr.shape[0] - 1);
    p->num_indices = (int32_t)a->kv_indices.shape[0];
    p->num_pages = (int32_t)a->k_cache.shape[0];
    p->src_dtype = (int32_t)a->k.dtype;
    p->cache_dtype = (int32_t)a->k_cache.dtype;
    p->k_inv_scale = fp8 && a->k_scale > 0.0f ? 1.0f / a->k_scale : 1.0f;
    p->v_inv_scale = fp8 && a->v_scale > 0.0f ? 1.0f / a->v_scale : 1.0f;
}

flp_status flp_kv_append(flp_context *ctx, const flp_kv_append_args *args) {
    if (!ctx)
        return FLP_ERROR_INVALID_ARGUMENT;
    flp_clear_error(ctx);
    if (!args)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: args is NULL", FN);
    flp_status status = check_caches(ctx, args);
    if (status != FLP_OK)
        return status;
    bool nhd = args->kv_layout == FLP_KV_LAYOUT_NHD;
    int64_t heads = args->k_cache.shape[nhd ? 2 : 1], d = args->k_cache.shape[3];
    if ((status = check_rows(ctx, args, heads, d)) != FLP_OK)
        return status;
    if ((status = check_scales(ctx, args)) != FLP_OK)
        return status;
    if (args->k_cache.shape[0] > INT32_MAX || args->kv_indices.shape[0] > INT32_MAX ||
        args->kv_indptr.shape[0] > INT32_MAX)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: pages or page-table entries beyond 2^31 - 1", FN);
    const flp_named_tensor outputs[] = {{"k_cache", &args->k_cache}, {"v_cache", &args->v_cache}};
    const flp_named_tensor inputs[] = {{"k", &args->k},
                                       {"v", &args->v},
                                       {"batch_indices", &args->batch_indices},
                                       {"positions", &args->positions},
                                       {"kv_indptr", &args->kv_indptr},
                                       {"kv_indices", &args->kv_indices}};
    if ((status = flp_tensor_check_disjoint(ctx, FN, outputs, 2, inputs, 6)) != FLP_OK)
        return status;
    if (args->k.shape[0] == 0)
        return FLP_OK;
    if (!ctx->ops->kv_append_run)
        return flp_fail(ctx, FLP_ERROR_UNSUPPORTED, "%s: the %s backend has no KV append", FN,
                        ctx->ops->name);
    flp_kv_append_params params;
    fill_params(args, &params);
    status = ctx->ops->kv_append_run(ctx, &params);
    if (status != FLP_OK)
        flp_error_prefix(ctx, FN);
    return status;
}
