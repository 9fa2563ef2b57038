/* Device buffers: cuMemAlloc'ed memory; host copies ordered on the context's stream. */
#include "backend-cuda/cu_backend.h"

flp_status flp_cu_buffer_create(flp_context *ctx, flp_buffer *buf) {
    flp_cu_state *st = flp_cu_state_of(ctx);
    flp_status status = flp_cu_enter(ctx, "flp_buffer_create");
    if (status != FLP_OK)
        return status;
    CUdeviceptr ptr = 0;
    CUresult r = FLP_CU_ALLOC(st->cu->cuMemAlloc(&ptr, buf->size));
    flp_cu_leave(ctx);
    if (r != CUDA_SUCCESS)
        return flp_cu_fail(ctx, st->cu, r, "flp_buffer_create: cuMemAlloc(%zu bytes)", buf->size);
    buf->device_address = (uint64_t)ptr;
    buf->native = NULL;
    buf->wrapped = false;
    return FLP_OK;
}

void flp_cu_buffer_destroy(flp_context *ctx, flp_buffer *buf) {
    flp_cu_state *st = flp_cu_state_of(ctx);
    if (buf->wrapped || buf->device_address == 0)
        return;
    if (flp_cu_enter(ctx, "flp_buffer_destroy") != FLP_OK)
        return;
    /* Work queued on the stream may still read the buffer: cuMemFree does not wait for a
     * non-blocking stream. */
    CUresult r = flp_cu_sync_stream(st);
    if (r != CUDA_SUCCESS)
        flp_cu_fail(ctx, st->cu, r, "flp_buffer_destroy: cuStreamSynchronize");
    r = st->cu->cuMemFree((CUdeviceptr)buf->device_address);
    if (r != CUDA_SUCCESS)
        flp_cu_fail(ctx, st->cu, r, "flp_buffer_destroy: cuMemFree");
    flp_cu_leave(ctx);
    buf->device_address = 0;
}

flp_status flp_cu_buffer_write(flp_context *ctx, flp_buffer *buf, size_t offset, const void *src,
                               size_t size) {
    flp_cu_state *st = flp_cu_state_of(ctx);
    flp_status status = flp_cu_enter(ctx, "flp_buffer_write");
    if (status != FLP_OK)
        return status;
    CUresult r = st->cu->cuMemcpyHtoDAsync((CUdeviceptr)(buf->device_address + offset), src, size,
                                           st->stream);
    if (r != CUDA_SUCCESS) {
        flp_cu_leave(ctx);
        return flp_cu_fail(ctx, st->cu, r, "flp_buffer_write: cuMemcpyHtoDAsync(%zu bytes)", size);
    }
    r = st->cu->cuStreamSynchronize(st->stream);
    flp_cu_leave(ctx);
    if (r != CUDA_SUCCESS)
        return flp_cu_fail(ctx, st->cu, r, "flp_buffer_write: cuStreamSynchronize");
    return FLP_OK;
}

/* Refuses while the stream captures a graph: a graph replays runs against whatever the last
 * plan uploaded; the plan itself is host work and must not become part of the graph. */
static flp_status refuse_during_capture(flp_context *ctx, flp_cu_state *st) {
    CUstreamCaptureStatus capture = CU_STREAM_CAPTURE_STATUS_NONE;
    CUresult r = st->cu->cuStreamIsCapturing(st->stream, &capture);
    if (r != CUDA_SUCCESS)
        return flp_cu_fail(ctx, st->cu, r, "cuStreamIsCapturing");
    if (capture != CU_STREAM_CAPTURE_STATUS_NONE)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "the context's stream is capturing a CUDA graph: plan before or after "
                        "the capture, not during it");
    return FLP_OK;
}

flp_status flp_cu_plan_upload_check(flp_context *ctx) {
    flp_cu_state *st = flp_cu_state_of(ctx);
    flp_status status = flp_cu_enter(ctx, "plan upload");
    if (status != FLP_OK)
        return status;
    status = refuse_during_capture(ctx, st);
    flp_cu_leave(ctx);
    return status;
}

flp_status flp_cu_plan_upload(flp_context *ctx, flp_buffer *buf, size_t offset, const void *src,
                              size_t size) {
    static const char *what = "plan upload";
    flp_cu_state *st = flp_cu_state_of(ctx);
    flp_status status = flp_cu_enter(ctx, what);
    if (status != FLP_OK)
        return status;
    /* checked again: the caller may have begun a capture on another thread since */
    status = refuse_during_capture(ctx, st);
    if (status != FLP_OK) {
        flp_cu_leave(ctx);
        return status;
    }
    /* The copy runs in stream order: runs queued earlier still read the previous plan, runs
     * queued later the new one, and the host waits for neither. src is copied before this
     * returns: into a pinned staging slot, or (no slot free) by the driver from pageable
     * memory. */
    const CUdeviceptr dst = (CUdeviceptr)(buf->device_address + offset);
    bool staged = false;
    CUresult r = flp_cu_staged_upload(st, dst, src, size, &staged);
    if (r == CUDA_SUCCESS && !staged)
        r = st->cu->cuMemcpyHtoDAsync(dst, src, size, st->stream);
    flp_cu_leave(ctx);
    if (r != CUDA_SUCCESS)
        return flp_cu_fail(ctx, st->cu, r, "%s: queuing the copy of %zu bytes", what, size);
    return FLP_OK;
}

flp_status flp_cu_buffer_read(flp_context *ctx, const flp_buffer *buf, size_t offset, void *dst,
                              size_t size) {
    flp_cu_state *st = flp_cu_state_of(ctx);
    flp_status status = flp_cu_enter(ctx, "flp_buffer_read");
    if (status != FLP_OK)
        return status;
    CUresult r = st->cu->cuMemcpyDtoHAsync(dst, (CUdeviceptr)(buf->device_address + offset), size,
                                           st->stream);
    if (r != CUDA_SUCCESS) {
        flp_cu_leave(ctx);
        return flp_cu_fail(ctx, st->cu, r, "flp_buffer_read: cuMemcpyDtoHAsync(%zu bytes)", size);
    }
    r = st->cu->cuStreamSynchronize(st->stream);
    flp_cu_leave(ctx);
    if (r != CUDA_SUCCESS)
        return flp_cu_fail(ctx, st->cu, r, "flp_buffer_read: cuStreamSynchronize");
    return FLP_OK;
}
