/* Context creation (backend choice), info, synchronisation. */
#include "core/alloc.h"
#include "core/backend.h"
#include "core/kernel_cache.h"

#include <stdio.h>
#include <string.h>

static flp_status open_backend(flp_context *ctx, flp_backend_kind kind, int device_index,
                               const void *interop, bool prefer_gpu) {
    if (kind == FLP_BACKEND_CUDA)
        return flp_cuda_backend_open(ctx, device_index, (void *)interop);
    return flp_vulkan_backend_open(ctx, device_index, prefer_gpu, interop);
}

/* AUTO: CUDA if a CUDA device is present, else a Vulkan GPU, else any Vulkan device. */
static flp_status open_auto(flp_context *ctx, int device_index) {
    char reasons[FLP_ERROR_MESSAGE_SIZE] = "";
    static const struct {
        flp_backend_kind kind;
        bool prefer_gpu;
        const char *what;
    } order[] = {
        {FLP_BACKEND_CUDA, false, "CUDA"},
        {FLP_BACKEND_VULKAN, true, "Vulkan GPU"},
        {FLP_BACKEND_VULKAN, false, "Vulkan (any device)"},
    };
    flp_status status = FLP_ERROR_UNSUPPORTED;
    for (size_t i = 0; i < sizeof order / sizeof order[0]; i++) {
        ctx->probing = true;
        status = open_backend(ctx, order[i].kind, device_index, NULL, order[i].prefer_gpu);
        ctx->probing = false;
        if (status == FLP_OK)
            return FLP_OK;
        flp_log(ctx, FLP_LOG_DEBUG, "backend AUTO: %s not used: %s", order[i].what,
                ctx->last_error);
        size_t used = strlen(reasons);
        /* Each reason is cut to a share of the message so that all three fit. */
        snprintf(reasons + used, sizeof reasons - used, "%s%s: %.600s", used ? "; " : "",
                 order[i].what, ctx->last_error);
        /* Running out of memory does not mean the backend is absent: falling through to the
         * next one would hide it (and move a GPU machine onto a CPU device). */
        if (status == FLP_ERROR_OUT_OF_MEMORY)
            return flp_fail(ctx, status, "backend AUTO stopped, out of memory (%s)", reasons);
    }
    return flp_fail(ctx, status, "no usable device for backend AUTO (%s)", reasons);
}

flp_status flp_context_create_on(const flp_context_desc *desc, flp_backend_kind kind,
                                 const void *interop, flp_context **out) {
    if (!out)
        return FLP_ERROR_INVALID_ARGUMENT;
    *out = NULL;
    flp_context_desc zero = {0};
    if (!desc)
        desc = &zero;
    if (kind != FLP_BACKEND_AUTO && kind != FLP_BACKEND_CUDA && kind != FLP_BACKEND_VULKAN) {
        flp_log_raw(desc->log, desc->log_user_data, desc->log_level, FLP_LOG_ERROR,
                    "flp_context_create: backend %d is not AUTO, CUDA or VULKAN", (int)kind);
        return FLP_ERROR_INVALID_ARGUMENT;
    }
    if (desc->device_index < 0) {
        flp_log_raw(desc->log, desc->log_user_data, desc->log_level, FLP_LOG_ERROR,
                    "flp_context_create: device_index %d is negative", desc->device_index);
        return FLP_ERROR_INVALID_ARGUMENT;
    }
    if (desc->cache_dir && strlen(desc->cache_dir) >= FLP_CACHE_DIR_SIZE) {
        flp_log_raw(desc->log, desc->log_user_data, desc->log_level, FLP_LOG_ERROR,
                    "flp_context_create: cache_dir is %zu bytes, longer than %d",
                    strlen(desc->cache_dir), FLP_CACHE_DIR_SIZE - 1);
        return FLP_ERROR_INVALID_ARGUMENT;
    }
    flp_context *ctx = flp_calloc(1, sizeof *ctx);
    if (!ctx) {
        /* no context yet to hold the message: the callback still hears it */
        flp_log_raw(desc->log, desc->log_user_data, desc->log_level, FLP_LOG_ERROR,
                    "flp_context_create: out of host memory for the context");
        return FLP_ERROR_OUT_OF_MEMORY;
    }
    ctx->log = desc->log;
    ctx->log_user_data = desc->log_user_data;
    ctx->log_level = desc->log_level;
    if (!flp_kernel_cache_dir(desc->cache_dir, ctx->kernel_cache_dir, sizeof ctx->kernel_cache_dir))
        flp_log(ctx, FLP_LOG_DEBUG,
                "flashport: the default kernel cache directory is longer than %d bytes: "
                "compiled kernels are kept in memory only",
                FLP_CACHE_DIR_SIZE - 1);

    flp_status status = kind == FLP_BACKEND_AUTO
                            ? open_auto(ctx, desc->device_index)
                            : open_backend(ctx, kind, desc->device_index, interop, false);
    if (status != FLP_OK) {
        flp_free(ctx);
        return status;
    }
    flp_log(ctx, FLP_LOG_INFO, "flashport: %s backend on %s", ctx->info.backend_name,
            ctx->info.device_name);
    ctx->last_error[0] = '\0';
    *out = ctx;
    return FLP_OK;
}

flp_status flp_context_create(const flp_context_desc *desc, flp_context **out) {
    return flp_context_create_on(desc, desc ? desc->backend : FLP_BACKEND_AUTO, NULL, out);
}

void flp_context_destroy(flp_context *ctx) {
    if (!ctx)
        return;
    if (ctx->ops && ctx->ops->destroy)
        ctx->ops->destroy(ctx);
    flp_free(ctx);
}

const char *flp_context_last_error(const flp_context *ctx) {
    return ctx ? ctx->last_error : "ctx is NULL";
}

flp_status flp_context_get_info(const flp_context *ctx, flp_device_info *out) {
    if (!ctx || !out)
        return FLP_ERROR_INVALID_ARGUMENT;
    *out = ctx->info;
    return FLP_OK;
}

flp_status flp_context_synchronize(flp_context *ctx) {
    if (!ctx)
        return FLP_ERROR_INVALID_ARGUMENT;
    flp_clear_error(ctx);
    return ctx->ops->synchronize(ctx);
}
