/* flashport_cuda.h: a caller's CUcontext, CUstream and device pointers. */
#include "backend-cuda/cu_backend.h"
#include "flashport/flashport_cuda.h"

flp_status flp_cuda_context_create(const flp_context_desc *desc, CUcontext cu_context,
                                   flp_context **out) {
    if (!out)
        return FLP_ERROR_INVALID_ARGUMENT;
    *out = NULL;
    flp_context_desc zero = {0};
    if (!desc)
        desc = &zero;
    if (desc->backend != FLP_BACKEND_AUTO && desc->backend != FLP_BACKEND_CUDA) {
        flp_log_raw(desc->log, desc->log_user_data, desc->log_level, FLP_LOG_ERROR,
                    "flp_cuda_context_create: desc->backend is %d, not AUTO or CUDA",
                    (int)desc->backend);
        return FLP_ERROR_INVALID_ARGUMENT;
    }
    if (!cu_context) {
        flp_log_raw(desc->log, desc->log_user_data, desc->log_level, FLP_LOG_ERROR,
                    "flp_cuda_context_create: cu_context is NULL (use flp_context_create for the "
                    "device's primary context)");
        return FLP_ERROR_INVALID_ARGUMENT;
    }
    return flp_context_create_on(desc, FLP_BACKEND_CUDA, cu_context, out);
}

static bool is_cuda(const flp_context *ctx) {
    return ctx && ctx->ops == &flp_cuda_ops && ctx->backend;
}

flp_status flp_cuda_set_stream(flp_context *ctx, CUstream stream) {
    if (!ctx)
        return FLP_ERROR_INVALID_ARGUMENT;
    flp_clear_error(ctx);
    if (!is_cuda(ctx))
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "flp_cuda_set_stream: the context is not a CUDA context");
    flp_cu_state *st = flp_cu_state_of(ctx);
    CUstream next = stream ? stream : st->own_stream;
    if (next == st->stream)
        return FLP_OK;
    flp_status status = flp_cu_enter(ctx, "flp_cuda_set_stream");
    if (status != FLP_OK)
        return status;
    CUresult r = CUDA_SUCCESS;
    if (stream) {
        CUcontext owner = NULL;
        r = st->cu->cuStreamGetCtx(stream, &owner);
        if (r != CUDA_SUCCESS) {
            flp_cu_leave(ctx);
            return flp_cu_fail(ctx, st->cu, r, "flp_cuda_set_stream: cuStreamGetCtx");
        }
        if (owner != st->context) {
            flp_cu_leave(ctx);
            return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                            "flp_cuda_set_stream: the stream belongs to another CUcontext");
        }
    }
    /* Work already queued on the old stream finishes before work on the new one starts. */
    r = flp_cu_sync_stream(st);
    flp_cu_leave(ctx);
    if (r != CUDA_SUCCESS)
        return flp_cu_fail(ctx, st->cu, r, "flp_cuda_set_stream: waiting for the previous stream");
    st->stream = next;
    return FLP_OK;
}

CUstream flp_cuda_get_stream(const flp_context *ctx) {
    if (!is_cuda(ctx))
        return NULL;
    return flp_cu_state_of(ctx)->stream;
}

flp_status flp_cuda_buffer_wrap(flp_context *ctx, uint64_t device_ptr, size_t size,
                                flp_buffer **out) {
    static const char *fn = "flp_cuda_buffer_wrap";
    if (!ctx)
        return FLP_ERROR_INVALID_ARGUMENT;
    flp_clear_error(ctx);
    if (!out)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: out is NULL", fn);
    *out = NULL;
    if (!is_cuda(ctx))
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: the context is not a CUDA context",
                        fn);
    if (device_ptr == 0 || size == 0)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: device_ptr 0x%llx, size %zu", fn,
                        (unsigned long long)device_ptr, size);
    if (device_ptr + size < device_ptr)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: range 0x%llx + %zu overflows", fn,
                        (unsigned long long)device_ptr, size);
    flp_cu_state *st = flp_cu_state_of(ctx);
    flp_status status = flp_cu_enter(ctx, fn);
    if (status != FLP_OK)
        return status;
    /* The range must lie inside one allocation the driver knows. */
    CUdeviceptr start = 0;
    size_t range = 0;
    CUresult r = st->cu->cuPointerGetAttribute(&start, CU_POINTER_ATTRIBUTE_RANGE_START_ADDR,
                                               (CUdeviceptr)device_ptr);
    if (r == CUDA_SUCCESS)
        r = st->cu->cuPointerGetAttribute(&range, CU_POINTER_ATTRIBUTE_RANGE_SIZE,
                                          (CUdeviceptr)device_ptr);
    flp_cu_leave(ctx);
    if (r != CUDA_SUCCESS) {
        char text[256];
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: 0x%llx is not CUDA device memory (cuPointerGetAttribute: %s)", fn,
                        (unsigned long long)device_ptr,
                        flp_cu_result_text(st->cu, r, text, sizeof text));
    }
    if (device_ptr + size > (uint64_t)start + range)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: [0x%llx, +%zu) runs past its allocation [0x%llx, +%zu)", fn,
                        (unsigned long long)device_ptr, size, (unsigned long long)start, range);
    /* Same allocation as flp_buffer_create: flp_buffer_destroy frees the struct. */
    flp_buffer *buf = flp_calloc(1, sizeof *buf);
    if (!buf)
        return flp_fail(ctx, FLP_ERROR_OUT_OF_MEMORY, "%s: out of host memory", fn);
    buf->ctx = ctx;
    buf->size = size;
    buf->device_address = device_ptr;
    buf->native = NULL;
    buf->wrapped = true;
    *out = buf;
    return FLP_OK;
}

uint64_t flp_cuda_buffer_device_ptr(const flp_buffer *buf) {
    if (!buf || !is_cuda(buf->ctx))
        return 0;
    return buf->device_address;
}
