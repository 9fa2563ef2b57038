/* Tensor views: construction and validation. */
#include "core/tensor.h"

#include <stdio.h>
#include <string.h>

flp_tensor flp_tensor_contiguous(flp_buffer *buf, size_t offset, flp_dtype dtype, int ndim,
                                 const int64_t *shape) {
    flp_tensor t;
    memset(&t, 0, sizeof t);
    t.buf = buf;
    t.offset = offset;
    t.dtype = dtype;
    if (ndim < 0 || ndim > FLP_MAX_DIMS || !shape)
        return t; /* ndim 0: rejected by every kernel's check */
    t.ndim = ndim;
    int64_t stride = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        t.shape[i] = shape[i];
        t.stride[i] = stride;
        stride *= shape[i];
    }
    return t;
}

uint64_t flp_tensor_address(const flp_tensor *t) {
    return t->buf->device_address + t->offset;
}

static void format_shape(char *out, size_t size, int ndim, const int64_t *shape) {
    size_t used = 0;
    out[0] = '\0';
    for (int i = 0; i < ndim && used < size; i++)
        used += (size_t)snprintf(out + used, size - used, "%s%lld", i ? ", " : "[",
                                 (long long)shape[i]);
    if (used < size)
        snprintf(out + used, size - used, "]");
}

flp_status flp_tensor_check(flp_context *ctx, const char *fn, const flp_tensor *t,
                            const flp_tensor_expect *e) {
    if (!t->buf)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: %s.buf is NULL", fn, e->name);
    if (t->buf->ctx != ctx)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: %s.buf belongs to another context",
                        fn, e->name);
    if (t->dtype != e->dtype)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: %s.dtype is %s, expected %s", fn,
                        e->name, flp_dtype_name(t->dtype), flp_dtype_name(e->dtype));
    if (t->ndim != e->ndim)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: %s.ndim is %d, expected %d", fn,
                        e->name, t->ndim, e->ndim);
    for (int i = 0; i < e->ndim; i++) {
        if (t->shape[i] < 0 || (e->shape[i] >= 0 && t->shape[i] != e->shape[i])) {
            char got[160], want[160];
            format_shape(got, sizeof got, t->ndim, t->shape);
            format_shape(want, sizeof want, e->ndim, e->shape);
            return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                            "%s: %s.shape is %s, expected %s (-1: any) at dimension %d", fn,
                            e->name, got, want, i);
        }
        if (t->stride[i] < 0)
            return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: %s.stride[%d] = %lld is negative",
                            fn, e->name, i, (long long)t->stride[i]);
    }
    if (t->stride[e->ndim - 1] != 1)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: %s.stride[%d] = %lld: the last dimension must be contiguous", fn,
                        e->name, e->ndim - 1, (long long)t->stride[e->ndim - 1]);
    size_t esize = flp_dtype_size(t->dtype);
    if (e->vector_aligned) {
        int64_t per_vector = (int64_t)(16 / esize);
        if (t->offset % 16 != 0)
            return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                            "%s: %s.offset = %zu is not a multiple of 16 bytes", fn, e->name,
                            t->offset);
        for (int i = 0; i + 1 < e->ndim; i++)
            if (t->stride[i] % per_vector != 0)
                return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                                "%s: %s.stride[%d] = %lld is not a multiple of %lld elements "
                                "(16 bytes)",
                                fn, e->name, i, (long long)t->stride[i], (long long)per_vector);
    }
    /* Largest element offset, computed without overflow for any sane buffer size. */
    bool empty = false;
    unsigned __int128 last = 0;
    for (int i = 0; i < e->ndim; i++) {
        if (t->shape[i] == 0)
            empty = true;
        else
            last += (unsigned __int128)(t->shape[i] - 1) * (unsigned __int128)t->stride[i];
    }
    if (!empty) {
        unsigned __int128 end = (unsigned __int128)t->offset + (last + 1) * esize;
        if (end > t->buf->size)
            return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                            "%s: %s spans up to byte %llu past offset, beyond its buffer of %zu "
                            "bytes",
                            fn, e->name, (unsigned long long)(end - t->offset), t->buf->size);
    }
    return FLP_OK;
}

void flp_paged_strides(const flp_tensor *cache, flp_kv_layout layout, int64_t *page, int64_t *slot,
                       int64_t *head) {
    bool nhd = layout == FLP_KV_LAYOUT_NHD;
    *page = cache->stride[0];
    *slot = cache->stride[nhd ? 1 : 2];
    *head = cache->stride[nhd ? 2 : 1];
}
