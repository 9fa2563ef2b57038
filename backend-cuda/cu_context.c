/* Opening a CUDA device (the primary context or a caller's CUcontext), its stream and info. */
#include "backend-cuda/cu_backend.h"
#include "backend-cuda/kernels/decode_config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

flp_status flp_cu_enter(flp_context *ctx, const char *what) {
    flp_cu_state *st = flp_cu_state_of(ctx);
    CUresult r = st->cu->cuCtxPushCurrent(st->context);
    if (r != CUDA_SUCCESS)
        return flp_cu_fail(ctx, st->cu, r, "%s: cuCtxPushCurrent", what);
    return FLP_OK;
}

void flp_cu_leave(flp_context *ctx) {
    flp_cu_state *st = flp_cu_state_of(ctx);
    CUcontext popped;
    st->cu->cuCtxPopCurrent(&popped); /* cannot fail after a successful push */
}

CUresult flp_cu_launch(const flp_cu_state *st, CUfunction f, unsigned grid, unsigned threads,
                       unsigned smem, void **args) {
    if (!st->dependent_launch)
        return st->cu->cuLaunchKernel(f, grid, 1, 1, threads, 1, 1, smem, st->stream, args, NULL);
    CUlaunchAttribute attr;
    memset(&attr, 0, sizeof attr);
    attr.id = CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
    attr.value.programmaticStreamSerializationAllowed = 1;
    CUlaunchConfig config;
    memset(&config, 0, sizeof config);
    config.gridDimX = grid;
    config.gridDimY = 1;
    config.gridDimZ = 1;
    config.blockDimX = threads;
    config.blockDimY = 1;
    config.blockDimZ = 1;
    config.sharedMemBytes = smem;
    config.hStream = st->stream;
    config.attrs = &attr;
    config.numAttrs = 1;
    return st->cu->cuLaunchKernelEx(&config, f, args, NULL);
}

CUresult flp_cu_sync_stream(flp_cu_state *st) {
    CUstreamCaptureStatus capture = CU_STREAM_CAPTURE_STATUS_NONE;
    CUresult r = st->cu->cuStreamIsCapturing(st->stream, &capture);
    if (r != CUDA_SUCCESS)
        return r;
    if (capture != CU_STREAM_CAPTURE_STATUS_NONE)
        return CUDA_SUCCESS;
    return st->cu->cuStreamSynchronize(st->stream);
}

/* Releases what open made (the context must not be current-pushed by us). */
static void release_state(flp_cu_state *st) {
    const flp_cu_driver *cu = st->cu;
    if (st->context && cu->cuCtxPushCurrent(st->context) == CUDA_SUCCESS) {
        if (st->own_stream) {
            cu->cuStreamSynchronize(st->own_stream);
            cu->cuStreamDestroy(st->own_stream);
        }
        CUcontext popped;
        cu->cuCtxPopCurrent(&popped);
    }
    if (st->retained_primary)
        cu->cuDevicePrimaryCtxRelease(st->device);
    flp_free(st);
}

static void cu_destroy(flp_context *ctx) {
    flp_cu_state *st = flp_cu_state_of(ctx);
    if (!st)
        return;
    if (flp_cu_enter(ctx, "flp_context_destroy") == FLP_OK) {
        /* Kernels still running must finish before their modules go. */
        CUresult r = flp_cu_sync_stream(st);
        if (r != CUDA_SUCCESS)
            flp_cu_fail(ctx, st->cu, r, "flp_context_destroy: waiting for the stream");
        if (st->stream != st->own_stream) {
            r = st->cu->cuStreamSynchronize(st->own_stream);
            if (r != CUDA_SUCCESS)
                flp_cu_fail(ctx, st->cu, r, "flp_context_destroy: cuStreamSynchronize");
        }
        flp_cu_modules_release(ctx);
        flp_cu_staging_release(st);
        flp_cu_leave(ctx);
    }
    release_state(st);
    ctx->backend = NULL;
}

static flp_status cu_synchronize(flp_context *ctx) {
    flp_cu_state *st = flp_cu_state_of(ctx);
    flp_status status = flp_cu_enter(ctx, "flp_context_synchronize");
    if (status != FLP_OK)
        return status;
    CUresult r = st->cu->cuStreamSynchronize(st->stream);
    flp_cu_leave(ctx);
    if (r != CUDA_SUCCESS)
        return flp_cu_fail(ctx, st->cu, r, "flp_context_synchronize: cuStreamSynchronize");
    return FLP_OK;
}

const flp_backend_ops flp_cuda_ops = {
    .name = "cuda",
    .destroy = cu_destroy,
    .buffer_create = flp_cu_buffer_create,
    .buffer_destroy = flp_cu_buffer_destroy,
    .buffer_write = flp_cu_buffer_write,
    .plan_upload = flp_cu_plan_upload,
    .plan_upload_check = flp_cu_plan_upload_check,
    .buffer_read = flp_cu_buffer_read,
    .synchronize = cu_synchronize,
    .decode_grid_size = flp_cu_decode_grid_size,
    .decode_run = flp_cu_decode_run,
    .prefill_grid_size = flp_cu_prefill_grid_size,
    .decode_matrix_min_rows = FLP_DECODE_MATRIX_MIN_ROWS,
    .prefill_run = flp_cu_prefill_run,
    .kv_append_run = flp_cu_kv_append_run,
    .merge_run = flp_cu_merge_run,
};

static CUresult attribute(const flp_cu_driver *cu, CUdevice dev, CUdevice_attribute a, int *v) {
    return cu->cuDeviceGetAttribute(v, a, dev);
}

/* Fills ctx->info; the context is current. */
static flp_status fill_info(flp_context *ctx, flp_cu_state *st) {
    const flp_cu_driver *cu = st->cu;
    flp_device_info *info = &ctx->info;
    memset(info, 0, sizeof *info);
    info->backend = FLP_BACKEND_CUDA;
    snprintf(info->backend_name, sizeof info->backend_name, "cuda");
    CUresult r = cu->cuDeviceGetName(info->device_name, (int)sizeof info->device_name, st->device);
    if (r != CUDA_SUCCESS)
        return flp_cu_fail(ctx, cu, r, "CUDA backend: cuDeviceGetName");
    int major = 0, minor = 0, sms = 0, warp = 0, smem = 0, driver = 0;
    static const struct {
        CUdevice_attribute attr;
        const char *name;
    } attrs[] = {
        {CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, "COMPUTE_CAPABILITY_MAJOR"},
        {CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, "COMPUTE_CAPABILITY_MINOR"},
        {CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, "MULTIPROCESSOR_COUNT"},
        {CU_DEVICE_ATTRIBUTE_WARP_SIZE, "WARP_SIZE"},
        {CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
         "MAX_SHARED_MEMORY_PER_BLOCK_OPTIN"},
    };
    int *values[] = {&major, &minor, &sms, &warp, &smem};
    for (size_t i = 0; i < sizeof attrs / sizeof attrs[0]; i++) {
        r = attribute(cu, st->device, attrs[i].attr, values[i]);
        if (r != CUDA_SUCCESS)
            return flp_cu_fail(ctx, cu, r, "CUDA backend: cuDeviceGetAttribute(%s)", attrs[i].name);
    }
    size_t total = 0;
    r = cu->cuDeviceTotalMem(&total, st->device);
    if (r != CUDA_SUCCESS)
        return flp_cu_fail(ctx, cu, r, "CUDA backend: cuDeviceTotalMem");
    if (cu->cuDriverGetVersion(&driver) != CUDA_SUCCESS)
        driver = 0;
    st->cc = major * 10 + minor;
    st->sm_count = sms;
    const char *pdl = getenv("FLP_CUDA_PDL");
    st->dependent_launch = st->cc >= 90 && cu->cuLaunchKernelEx && !(pdl && !strcmp(pdl, "0"));
    snprintf(info->driver_info, sizeof info->driver_info, "CUDA driver %d.%d, sm_%d", driver / 1000,
             driver % 1000 / 10, st->cc);
    info->is_software = false;
    info->compute_units = sms;
    info->subgroup_size = warp;
    info->shared_memory_per_group = (size_t)smem;
    info->max_buffer_bytes = total;
    info->device_memory_bytes = total;
    info->compute_capability = st->cc;
    if (st->cc < 80)
        return flp_fail(ctx, FLP_ERROR_UNSUPPORTED,
                        "CUDA backend: %s has compute capability %d.%d; the kernels need 8.0 "
                        "(Ampere) or newer",
                        info->device_name, major, minor);
    if (sms <= 0 || warp != 32)
        return flp_fail(ctx, FLP_ERROR_UNSUPPORTED,
                        "CUDA backend: %s reports %d multiprocessors and warp size %d",
                        info->device_name, sms, warp);
    return FLP_OK;
}

/* Opens the device (own primary context, or the caller's context) with the context current. */
static flp_status open_device(flp_context *ctx, flp_cu_state *st, int device_index,
                              CUcontext caller) {
    const flp_cu_driver *cu = st->cu;
    CUresult r;
    if (caller) {
        r = cu->cuCtxPushCurrent(caller);
        if (r != CUDA_SUCCESS)
            return flp_cu_fail(ctx, cu, r,
                               "flp_cuda_context_create: cuCtxPushCurrent of the caller's "
                               "CUcontext");
        r = cu->cuCtxGetDevice(&st->device);
        CUcontext popped;
        cu->cuCtxPopCurrent(&popped);
        if (r != CUDA_SUCCESS)
            return flp_cu_fail(ctx, cu, r, "flp_cuda_context_create: cuCtxGetDevice");
        st->context = caller;
        return FLP_OK;
    }
    int count = 0;
    r = cu->cuDeviceGetCount(&count);
    if (r != CUDA_SUCCESS)
        return flp_cu_fail(ctx, cu, r, "CUDA backend: cuDeviceGetCount");
    if (count == 0)
        return flp_fail(ctx, FLP_ERROR_UNSUPPORTED, "CUDA backend: no CUDA device");
    if (device_index >= count)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "CUDA backend: device_index %d, but there are %d CUDA devices",
                        device_index, count);
    r = cu->cuDeviceGet(&st->device, device_index);
    if (r != CUDA_SUCCESS)
        return flp_cu_fail(ctx, cu, r, "CUDA backend: cuDeviceGet(%d)", device_index);
    r = FLP_CU_ALLOC(cu->cuDevicePrimaryCtxRetain(&st->context, st->device));
    if (r != CUDA_SUCCESS) {
        st->context = NULL; /* nothing was retained: never pushed or released */
        return flp_cu_fail(ctx, cu, r, "CUDA backend: cuDevicePrimaryCtxRetain(device %d)",
                           device_index);
    }
    st->retained_primary = true;
    return FLP_OK;
}

flp_status flp_cuda_backend_open(flp_context *ctx, int device_index, void *cu_context) {
    const char *why = NULL;
    const flp_cu_driver *cu = flp_cu_driver_load(&why);
    if (!cu)
        return flp_fail(ctx, FLP_ERROR_UNSUPPORTED, "CUDA backend: %s", why);
    CUresult r = cu->cuInit(0);
    if (r != CUDA_SUCCESS) {
        char text[256];
        return flp_fail(ctx, FLP_ERROR_UNSUPPORTED, "CUDA backend: cuInit: %s",
                        flp_cu_result_text(cu, r, text, sizeof text));
    }
    if (device_index < 0)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "CUDA backend: device_index %d",
                        device_index);
    flp_cu_state *st = flp_calloc(1, sizeof *st);
    if (!st)
        return flp_fail(ctx, FLP_ERROR_OUT_OF_MEMORY, "CUDA backend: out of host memory");
    st->cu = cu;
    flp_status status = open_device(ctx, st, device_index, (CUcontext)cu_context);
    if (status != FLP_OK) {
        release_state(st);
        return status;
    }
    ctx->backend = st;
    ctx->ops = &flp_cuda_ops;
    status = flp_cu_enter(ctx, "CUDA backend");
    if (status == FLP_OK) {
        status = fill_info(ctx, st);
        if (status == FLP_OK) {
            r = FLP_CU_ALLOC(cu->cuStreamCreate(&st->own_stream, CU_STREAM_NON_BLOCKING));
            if (r != CUDA_SUCCESS) {
                st->own_stream = NULL; /* never synchronised or destroyed */
                status = flp_cu_fail(ctx, cu, r, "CUDA backend: cuStreamCreate");
            }
        }
        flp_cu_leave(ctx);
    }
    if (status != FLP_OK) {
        ctx->backend = NULL;
        ctx->ops = NULL;
        release_state(st);
        return status;
    }
    st->stream = st->own_stream;
    return FLP_OK;
}
