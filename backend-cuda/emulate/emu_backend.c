/* A "CUDA" backend for tests on machines without a GPU: buffers in host memory (device
 * addresses are host pointers), the real launch checks of the CUDA backend (cu_launch.c), and
 * the real kernels run by the SIMT emulator. Linked instead of the CUDA backend into the
 * emulated test programs (backend-cuda/meson.build), never into the library.
 *
 * Environment: FLP_EMU_GRID (decode blocks, default 24: small, so that blocks take several
 * work items and long requests are split), FLP_EMU_SEED (cp.async timing, default 1). */
#include "backend-cuda/cu_launch.h"
#include "backend-cuda/emulate/emu_launch.h"
#include "flashport/flashport_cuda.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct emu_state {
    uint64_t runs; /* varies the copy timing from run to run */
} emu_state;

static uint64_t env_u64(const char *name, uint64_t fallback) {
    const char *v = getenv(name);
    return v && *v ? strtoull(v, NULL, 0) : fallback;
}

static void emu_destroy(flp_context *ctx) {
    free(ctx->backend);
    ctx->backend = NULL;
}

static flp_status emu_buffer_create(flp_context *ctx, flp_buffer *buf) {
    void *p = NULL;
    /* Exactly the size asked for, so that AddressSanitizer sees any read past the end. */
    if (posix_memalign(&p, 256, buf->size) != 0)
        return flp_fail(ctx, FLP_ERROR_OUT_OF_MEMORY, "emulator: %zu bytes", buf->size);
    memset(p, 0xff, buf->size); /* device memory starts as NaNs: unwritten reads show */
    buf->native = p;
    buf->device_address = (uint64_t)(uintptr_t)p;
    buf->wrapped = false;
    return FLP_OK;
}

static void emu_buffer_destroy(flp_context *ctx, flp_buffer *buf) {
    (void)ctx;
    if (!buf->wrapped)
        free(buf->native);
}

static flp_status emu_write(flp_context *ctx, flp_buffer *buf, size_t offset, const void *src,
                            size_t size) {
    (void)ctx;
    memcpy((unsigned char *)(uintptr_t)buf->device_address + offset, src, size);
    return FLP_OK;
}

static flp_status emu_read(flp_context *ctx, const flp_buffer *buf, size_t offset, void *dst,
                           size_t size) {
    (void)ctx;
    memcpy(dst, (const unsigned char *)(uintptr_t)buf->device_address + offset, size);
    return FLP_OK;
}

static flp_status emu_sync(flp_context *ctx) {
    (void)ctx;
    return FLP_OK;
}

static int32_t emu_grid(flp_context *ctx, int32_t head_dim) {
    if (flp_cu_config_index(FLP_DTYPE_BF16, FLP_DTYPE_BF16, head_dim) < 0)
        return flp_fail(ctx, FLP_ERROR_UNSUPPORTED, "CUDA decode: head_dim %d has no kernel",
                        (int)head_dim);
    return (int32_t)env_u64("FLP_EMU_GRID", 24);
}

static flp_status emu_check(flp_context *ctx, const flp_decode_launch *launch) {
    return flp_cu_launch_validate(ctx, launch);
}

static flp_status emu_run(flp_context *ctx, const flp_decode_launch *launch) {
    emu_state *st = ctx->backend;
    flp_emu_decode(launch, env_u64("FLP_EMU_SEED", 1) * 1000003u + st->runs++);
    return FLP_OK;
}

static const flp_backend_ops emu_ops = {
    .name = "cuda",
    .destroy = emu_destroy,
    .buffer_create = emu_buffer_create,
    .buffer_destroy = emu_buffer_destroy,
    .buffer_write = emu_write,
    .buffer_read = emu_read,
    .synchronize = emu_sync,
    .decode_grid_size = emu_grid,
    .decode_check = emu_check,
    .decode_run = emu_run,
};

flp_status flp_cuda_backend_open(flp_context *ctx, int device_index, void *cu_context) {
    (void)cu_context;
    if (device_index != 0)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "emulator: device_index %d", device_index);
    emu_state *st = calloc(1, sizeof *st);
    if (!st)
        return flp_fail(ctx, FLP_ERROR_OUT_OF_MEMORY, "emulator: host allocation");
    ctx->backend = st;
    ctx->ops = &emu_ops;
    flp_device_info *info = &ctx->info;
    memset(info, 0, sizeof *info);
    info->backend = FLP_BACKEND_CUDA;
    snprintf(info->backend_name, sizeof info->backend_name, "cuda");
    snprintf(info->device_name, sizeof info->device_name, "CUDA kernels on the CPU emulator");
    snprintf(info->driver_info, sizeof info->driver_info, "flashport SIMT emulator");
    info->is_software = true;
    info->compute_units = 1;
    info->subgroup_size = 32;
    info->shared_memory_per_group = 227 * 1024;
    info->max_buffer_bytes = (size_t)1 << 36;
    info->device_memory_bytes = (uint64_t)1 << 36;
    info->compute_capability = 90;
    return FLP_OK;
}

/* flashport_cuda.h, for programs that reference it: no CUDA objects exist here. */
flp_status flp_cuda_set_stream(flp_context *ctx, CUstream stream) {
    (void)stream;
    return flp_fail(ctx, FLP_ERROR_UNSUPPORTED, "emulator: no CUDA streams");
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
    return flp_fail(ctx, FLP_ERROR_UNSUPPORTED, "emulator: no CUDA memory");
}

uint64_t flp_cuda_buffer_device_ptr(const flp_buffer *buf) {
    return buf ? buf->device_address : 0;
}

flp_status flp_cuda_context_create(const flp_context_desc *desc, CUcontext cu_context,
                                   flp_context **out) {
    (void)cu_context;
    return flp_context_create_on(desc, FLP_BACKEND_CUDA, NULL, out);
}
