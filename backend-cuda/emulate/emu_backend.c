/* A "CUDA" backend for tests on machines without a GPU: buffers in host memory (device
 * addresses are host pointers), the real launch checks of the CUDA backend (cu_launch.c), and
 * the real kernels run by the SIMT emulator. Linked instead of the CUDA backend into the
 * emulated test programs (backend-cuda/meson.build), never into the library.
 *
 * Environment: FLP_EMU_GRID (decode blocks, default 24: small, so that blocks take several
 * work items and long requests are split), FLP_EMU_PREFILL_GRID (prefill blocks, default 8),
 * FLP_EMU_PREFILL_TILE (16, 64, 128 or "plan"; default: the three tile kernels in turn over
 * plans),
 * FLP_EMU_SEED (cp.async timing, default 1). */
#include "backend-cuda/cu_launch.h"
#include "backend-cuda/emulate/emu_launch.h"
#include "flashport/flashport_cuda.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EMU_SEEN 64

typedef struct emu_state {
    uint64_t runs;          /* varies the copy timing from run to run */
    uint64_t prefill_plans; /* plans seen: picks the tile kernel of the next new plan */
    int num_seen;
    uint64_t seen_plans[EMU_SEEN]; /* plan memory addresses and their tile kernels */
    int32_t seen_tiles[EMU_SEEN];
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

static flp_status emu_run(flp_context *ctx, const flp_decode_launch *launch) {
    emu_state *st = ctx->backend;
    flp_emu_decode(launch, env_u64("FLP_EMU_SEED", 1) * 1000003u + st->runs++);
    return FLP_OK;
}

static int32_t emu_prefill_grid(flp_context *ctx, int32_t head_dim) {
    if (flp_cu_config_index(FLP_DTYPE_BF16, FLP_DTYPE_BF16, head_dim) < 0)
        return flp_fail(ctx, FLP_ERROR_UNSUPPORTED, "CUDA prefill: head_dim %d has no kernel",
                        (int)head_dim);
    return (int32_t)env_u64("FLP_EMU_PREFILL_GRID", 8);
}

/* Every kernel handles any item with any tile (the tile is a hint), so the emulator spreads
 * the three tile kernels over plans to cover them all: each plan memory address gets the next
 * tile in turn when first seen and keeps it (same plan, same kernel: runs stay bit-for-bit
 * deterministic). FLP_EMU_PREFILL_TILE names one tile (16, 64, 128) or "plan" (the plan's
 * choice). */
static int32_t emu_pick_tile(emu_state *st, uint64_t plan_address) {
    static const int32_t tiles[3] = {16, 64, 128};
    for (int i = 0; i < st->num_seen; i++)
        if (st->seen_plans[i] == plan_address)
            return st->seen_tiles[i];
    const int32_t tile = tiles[st->prefill_plans++ % 3];
    const int slot = st->num_seen < EMU_SEEN ? st->num_seen++ : (int)(st->prefill_plans % EMU_SEEN);
    st->seen_plans[slot] = plan_address;
    st->seen_tiles[slot] = tile;
    return tile;
}

static flp_status emu_prefill_run(flp_context *ctx, const flp_prefill_launch *launch) {
    emu_state *st = ctx->backend;
    flp_prefill_launch copy = *launch;
    const char *tile = getenv("FLP_EMU_PREFILL_TILE");
    if (!tile || !*tile)
        copy.q_tile = emu_pick_tile(st, launch->params.plan);
    else if (strcmp(tile, "plan") != 0)
        copy.q_tile = (int32_t)strtol(tile, NULL, 10);
    flp_emu_prefill(&copy, env_u64("FLP_EMU_SEED", 1) * 1000003u + st->runs++);
    return FLP_OK;
}

static flp_status emu_kv_append(flp_context *ctx, const flp_kv_append_params *params) {
    (void)ctx;
    flp_emu_kv_append(params);
    return FLP_OK;
}

static flp_status emu_merge(flp_context *ctx, const flp_merge_params *params) {
    (void)ctx;
    flp_emu_merge(params);
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
    .decode_run = emu_run,
    .prefill_grid_size = emu_prefill_grid,
    .decode_matrix_min_rows = FLP_DECODE_MATRIX_MIN_ROWS,
    .prefill_run = emu_prefill_run,
    .kv_append_run = emu_kv_append,
    .merge_run = emu_merge,
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
