/* Device memory and call prologue of the plan-like objects (core/object_memory.h). */
#include "core/object_memory.h"

flp_status flp_check_workspace(flp_context *ctx, const char *fn, const flp_buffer *workspace,
                               size_t offset) {
    if (!workspace)
        return FLP_OK;
    if (workspace->ctx != ctx)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: workspace belongs to another context",
                        fn);
    if (offset % FLP_WORKSPACE_ALIGN != 0)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: workspace_offset = %zu is not a multiple of %d", fn, offset,
                        FLP_WORKSPACE_ALIGN);
    return FLP_OK;
}

flp_status flp_object_memory_attach(flp_context *ctx, const char *fn, flp_buffer *workspace,
                                    size_t offset, size_t bytes, const char *what,
                                    const char *size_call, flp_object_memory *out) {
    *out = (flp_object_memory){0};
    if (!workspace) {
        flp_buffer_desc bd = {.size = bytes};
        flp_status status = flp_buffer_create(ctx, &bd, &out->buffer);
        out->owns_buffer = status == FLP_OK;
        return status;
    }
    size_t available = workspace->size > offset ? workspace->size - offset : 0;
    if (available < bytes)
        return flp_fail(ctx, FLP_ERROR_CAPACITY,
                        "%s: workspace has %zu bytes after offset %zu, %s needs %zu (%s)", fn,
                        available, offset, what, bytes, size_call);
    if ((workspace->device_address + offset) % 16 != 0)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: workspace + workspace_offset is device address 0x%llx, not a "
                        "multiple of 16 bytes",
                        fn, (unsigned long long)(workspace->device_address + offset));
    out->buffer = workspace;
    out->base = offset;
    return FLP_OK;
}

void flp_object_memory_release(flp_object_memory *m) {
    if (m->owns_buffer)
        flp_buffer_destroy(m->buffer);
    *m = (flp_object_memory){0};
}

flp_status flp_check_object_call(flp_context *ctx, const char *fn, const char *name,
                                 const void *object, const flp_context *object_ctx,
                                 const void *args) {
    if (!ctx)
        return FLP_ERROR_INVALID_ARGUMENT;
    flp_clear_error(ctx);
    if (!object || !args)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: %s is NULL", fn,
                        !object ? name : "args");
    if (object_ctx != ctx)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: %s belongs to another context", fn,
                        name);
    return FLP_OK;
}

flp_status flp_check_out_call(flp_context *ctx, const char *fn, const char *name, const void *out) {
    if (!ctx)
        return FLP_ERROR_INVALID_ARGUMENT;
    flp_clear_error(ctx);
    if (!out)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: %s is NULL", fn, name);
    return FLP_OK;
}
