/* Device buffers: creation, destruction, host copies with range checks. */
#include "core/alloc.h"
#include "core/backend.h"

flp_status flp_buffer_create(flp_context *ctx, const flp_buffer_desc *desc, flp_buffer **out) {
    if (!ctx)
        return FLP_ERROR_INVALID_ARGUMENT;
    flp_clear_error(ctx);
    if (!desc || !out)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "flp_buffer_create: %s is NULL",
                        !desc ? "desc" : "out");
    *out = NULL;
    if (desc->size == 0)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "flp_buffer_create: size is 0");
    if (desc->size > ctx->info.max_buffer_bytes)
        return flp_fail(ctx, FLP_ERROR_OUT_OF_MEMORY,
                        "flp_buffer_create: size %zu exceeds the device's largest buffer (%zu "
                        "bytes)",
                        desc->size, ctx->info.max_buffer_bytes);
    flp_buffer *buf = flp_calloc(1, sizeof *buf);
    if (!buf)
        return flp_fail(ctx, FLP_ERROR_OUT_OF_MEMORY, "flp_buffer_create: out of host memory");
    buf->ctx = ctx;
    buf->size = desc->size;
    flp_status status = ctx->ops->buffer_create(ctx, buf);
    if (status != FLP_OK) {
        flp_free(buf);
        return status;
    }
    *out = buf;
    return FLP_OK;
}

void flp_buffer_destroy(flp_buffer *buf) {
    if (!buf)
        return;
    buf->ctx->ops->buffer_destroy(buf->ctx, buf);
    flp_free(buf);
}

size_t flp_buffer_size(const flp_buffer *buf) {
    return buf ? buf->size : 0;
}

static flp_status check_copy(flp_context *ctx, const char *fn, const flp_buffer *buf, size_t offset,
                             const void *host, size_t size) {
    if (!buf || !host)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: %s is NULL", fn,
                        !buf ? "buf" : "host pointer");
    if (buf->ctx != ctx)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: buf belongs to another context", fn);
    if (offset > buf->size || size > buf->size - offset)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: range [%zu, %zu + %zu) exceeds the buffer's %zu bytes", fn, offset,
                        offset, size, buf->size);
    return FLP_OK;
}

flp_status flp_buffer_write(flp_context *ctx, flp_buffer *buf, size_t offset, const void *src,
                            size_t size) {
    if (!ctx)
        return FLP_ERROR_INVALID_ARGUMENT;
    flp_clear_error(ctx);
    flp_status status = check_copy(ctx, "flp_buffer_write", buf, offset, src, size);
    if (status != FLP_OK || size == 0)
        return status;
    return ctx->ops->buffer_write(ctx, buf, offset, src, size);
}

flp_status flp_buffer_read(flp_context *ctx, const flp_buffer *buf, size_t offset, void *dst,
                           size_t size) {
    if (!ctx)
        return FLP_ERROR_INVALID_ARGUMENT;
    flp_clear_error(ctx);
    flp_status status = check_copy(ctx, "flp_buffer_read", buf, offset, dst, size);
    if (status != FLP_OK || size == 0)
        return status;
    return ctx->ops->buffer_read(ctx, buf, offset, dst, size);
}
