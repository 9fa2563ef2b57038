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
    /* The kernels load whole elements, and rows of vector-aligned tensors 16 bytes at a time:
     * the element's device address must allow it (a wrapped caller buffer may start anywhere). */
    const uint64_t align = e->vector_aligned ? 16 : esize;
    const uint64_t address = t->buf->device_address + t->offset;
    if (address % align != 0)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: %s starts at device address 0x%llx (buffer + offset %zu), not a "
                        "multiple of %llu bytes",
                        fn, e->name, (unsigned long long)address, t->offset,
                        (unsigned long long)align);
    if (e->vector_aligned) {
        int64_t per_vector = (int64_t)(16 / esize);
        for (int i = 0; i + 1 < e->ndim; i++)
            if (t->stride[i] % per_vector != 0)
                return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                                "%s: %s.stride[%d] = %lld is not a multiple of %lld elements "
                                "(16 bytes)",
                                fn, e->name, i, (long long)t->stride[i], (long long)per_vector);
    }
    /* Largest element offset. Each term is below 2^127; the sum stops growing as soon as it
     * passes the buffer's size (< 2^64), so it never wraps, whatever the shapes and strides. */
    bool empty = false, past_end = false;
    unsigned __int128 last = 0;
    for (int i = 0; i < e->ndim; i++) {
        if (t->shape[i] == 0)
            empty = true;
        else if (!past_end)
            last += (unsigned __int128)(t->shape[i] - 1) * (unsigned __int128)t->stride[i];
        past_end = past_end || last >= t->buf->size;
    }
    if (empty)
        return FLP_OK;
    if (past_end)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: %s reaches past the end of its buffer of %zu bytes (shape and "
                        "strides)",
                        fn, e->name, t->buf->size);
    unsigned __int128 end = (unsigned __int128)t->offset + (last + 1) * esize;
    if (end > t->buf->size)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: %s spans up to byte %llu past offset, beyond its buffer of %zu bytes",
                        fn, e->name, (unsigned long long)(end - t->offset), t->buf->size);
    return FLP_OK;
}

void flp_paged_strides(const flp_tensor *cache, flp_kv_layout layout, int64_t *page, int64_t *slot,
                       int64_t *head) {
    bool nhd = layout == FLP_KV_LAYOUT_NHD;
    *page = cache->stride[0];
    *slot = cache->stride[nhd ? 1 : 2];
    *head = cache->stride[nhd ? 2 : 1];
}

/* Bytes [*first, *end) of its buffer a checked view spans; *end == *first when it is empty.
 * Overlap is judged on these spans, with one refinement (interleaved_apart), so a view that
 * interleaves with another in a finer pattern is refused although no element is shared:
 * documented in docs/api.md. */
static void byte_span(const flp_tensor *t, uint64_t *first, uint64_t *end) {
    uint64_t last = 0;
    for (int i = 0; i < t->ndim; i++) {
        if (t->shape[i] == 0) {
            *first = *end = t->offset;
            return;
        }
        last += (uint64_t)(t->shape[i] - 1) * (uint64_t)t->stride[i];
    }
    *first = t->offset;
    *end = t->offset + (last + 1) * flp_dtype_size(t->dtype);
}

static bool overlap(uint64_t a0, uint64_t a1, uint64_t b0, uint64_t b1) {
    return a0 < b1 && b0 < a1;
}

/* Bytes one index of dimension 0 spans (dimensions 1.. of the view), 0 when empty. */
static uint64_t row_bytes(const flp_tensor *t) {
    uint64_t last = 0;
    for (int i = 1; i < t->ndim; i++) {
        if (t->shape[i] == 0)
            return 0;
        last += (uint64_t)(t->shape[i] - 1) * (uint64_t)t->stride[i];
    }
    return (last + 1) * flp_dtype_size(t->dtype);
}

/* Views that step through their buffer with the same stride on dimension 0, each index spanning
 * at most that stride, cannot meet when their spans are disjoint modulo the stride: K and V
 * pages interleaved in one [pages, 2, ...] tensor are the common case. */
static bool interleaved_apart(const flp_tensor *a, const flp_tensor *b) {
    uint64_t step = (uint64_t)a->stride[0] * flp_dtype_size(a->dtype);
    if (a->ndim < 2 || b->ndim < 2 || step == 0 ||
        step != (uint64_t)b->stride[0] * flp_dtype_size(b->dtype))
        return false;
    uint64_t ea = row_bytes(a), eb = row_bytes(b);
    if (ea > step || eb > step)
        return false;
    uint64_t ra = a->offset % step, rb = b->offset % step;
    return (rb + step - ra) % step >= ea && (ra + step - rb) % step >= eb;
}

static flp_status check_pair(flp_context *ctx, const char *fn, const flp_named_tensor *out,
                             const flp_named_tensor *other) {
    if (!out->t || !other->t || out->t->buf != other->t->buf)
        return FLP_OK;
    uint64_t a0, a1, b0, b1;
    byte_span(out->t, &a0, &a1);
    byte_span(other->t, &b0, &b1);
    if (!overlap(a0, a1, b0, b1) || interleaved_apart(out->t, other->t))
        return FLP_OK;
    return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                    "%s: %s (bytes %llu..%llu of its buffer) overlaps %s (bytes %llu..%llu): "
                    "outputs must not alias inputs or other outputs",
                    fn, out->name, (unsigned long long)a0, (unsigned long long)a1 - 1, other->name,
                    (unsigned long long)b0, (unsigned long long)b1 - 1);
}

flp_status flp_tensor_check_disjoint(flp_context *ctx, const char *fn,
                                     const flp_named_tensor *outputs, int num_outputs,
                                     const flp_named_tensor *inputs, int num_inputs) {
    for (int o = 0; o < num_outputs; o++) {
        for (int i = 0; i < num_inputs; i++) {
            flp_status status = check_pair(ctx, fn, &outputs[o], &inputs[i]);
            if (status != FLP_OK)
                return status;
        }
        for (int p = o + 1; p < num_outputs; p++) {
            flp_status status = check_pair(ctx, fn, &outputs[o], &outputs[p]);
            if (status != FLP_OK)
                return status;
        }
    }
    return FLP_OK;
}

flp_status flp_tensor_check_outside(flp_context *ctx, const char *fn, const flp_named_tensor *out,
                                    const flp_buffer *buffer, uint64_t begin, uint64_t end,
                                    const char *what) {
    if (!out->t || out->t->buf != buffer)
        return FLP_OK;
    uint64_t a0, a1;
    byte_span(out->t, &a0, &a1);
    if (!overlap(a0, a1, begin, end))
        return FLP_OK;
    return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                    "%s: %s (bytes %llu..%llu of its buffer) overlaps %s (bytes %llu..%llu)", fn,
                    out->name, (unsigned long long)a0, (unsigned long long)a1 - 1, what,
                    (unsigned long long)begin, (unsigned long long)end - 1);
}
