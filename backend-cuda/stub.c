/* Compiled when the CUDA backend is not built: every entry point says so. */
#include "core/backend.h"
#include "flashport/flashport_cuda.h"

#define NOT_BUILT "flashport was built without the CUDA backend (meson -Dcuda=enabled)"

flp_status flp_cuda_backend_open(flp_context *ctx, int device_index, void *cu_context) {
    (void)device_index;
    (void)cu_context;
    return flp_fail(ctx, FLP_ERROR_UNSUPPORTED, NOT_BUILT);
}

/* Goes through the core so the caller's log callback hears why (the stub's open fails). */
flp_status flp_cuda_context_create(const flp_context_desc *desc, CUcontext cu_context,
                                   flp_context **out) {
    return flp_context_create_on(desc, FLP_BACKEND_CUDA, cu_context, out);
}

flp_status flp_cuda_set_stream(flp_context *ctx, CUstream stream) {
    (void)stream;
    return flp_fail(ctx, FLP_ERROR_UNSUPPORTED, NOT_BUILT);
}

CUstream flp_cuda_get_stream(const flp_context *ctx) {
    (void)ctx;
    return NULL;
}

flp_status flp_cuda_buffer_wrap(flp_context *ctx, uint64_t device_ptr, size_t size,
                                flp_buffer **out) {
    (void)device_ptr;
    (void)size;
    if (out)
        *out = NULL;
    return flp_fail(ctx, FLP_ERROR_UNSUPPORTED, NOT_BUILT);
}

uint64_t flp_cuda_buffer_device_ptr(const flp_buffer *buf) {
    (void)buf;
    return 0;
}
