/* The host-memory fake backend of the core tests (see fake_backend.h). */
#include "tests/fake_backend.h"
#include "core/alloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int fake_runs_queued;
flp_decode_launch fake_last_decode;
flp_prefill_launch fake_last_prefill;
flp_kv_append_params fake_last_append;

static void fake_destroy(flp_context *ctx) {
    (void)ctx;
}
static flp_status fake_buffer_create(flp_context *ctx, flp_buffer *buf) {
    /* A device allocation site: the fault-injection seam may fail it like a real shortage. */
    void *memory = flp_fault_device() ? NULL : malloc(buf->size);
    if (!memory)
        return flp_fail(ctx, FLP_ERROR_OUT_OF_MEMORY,
                        "fake backend: out of device memory for a buffer of %zu bytes", buf->size);
    buf->native = memory;
    buf->device_address = (uint64_t)(uintptr_t)memory;
    return FLP_OK;
}
static void fake_buffer_destroy(flp_context *ctx, flp_buffer *buf) {
    (void)ctx;
    free(buf->native);
}
static flp_status fake_write(flp_context *ctx, flp_buffer *buf, size_t off, const void *src,
                             size_t n) {
    (void)ctx;
    memcpy((char *)buf->native + off, src, n);
    return FLP_OK;
}
static flp_status fake_read(flp_context *ctx, const flp_buffer *buf, size_t off, void *dst,
                            size_t n) {
    (void)ctx;
    memcpy(dst, (const char *)buf->native + off, n);
    return FLP_OK;
}
static flp_status fake_sync(flp_context *ctx) {
    (void)ctx;
    return FLP_OK;
}
static int32_t fake_decode_grid(flp_context *ctx, int32_t head_dim) {
    (void)ctx;
    (void)head_dim;
    return FAKE_DECODE_GRID;
}
static flp_status fake_decode_run(flp_context *ctx, const flp_decode_launch *l) {
    (void)ctx;
    fake_runs_queued++;
    fake_last_decode = *l;
    return FLP_OK;
}
static int32_t fake_prefill_grid(flp_context *ctx, int32_t head_dim) {
    (void)ctx;
    (void)head_dim;
    return FAKE_PREFILL_GRID;
}
static flp_status fake_prefill_run(flp_context *ctx, const flp_prefill_launch *l) {
    (void)ctx;
    fake_runs_queued++;
    fake_last_prefill = *l;
    return FLP_OK;
}
static flp_status fake_kv_append(flp_context *ctx, const flp_kv_append_params *p) {
    (void)ctx;
    fake_runs_queued++;
    fake_last_append = *p;
    return FLP_OK;
}

static const flp_backend_ops fake_ops = {
    .name = "fake",
    .destroy = fake_destroy,
    .buffer_create = fake_buffer_create,
    .buffer_destroy = fake_buffer_destroy,
    .buffer_write = fake_write,
    .buffer_read = fake_read,
    .synchronize = fake_sync,
    .decode_grid_size = fake_decode_grid,
    .decode_run = fake_decode_run,
    .prefill_grid_size = fake_prefill_grid,
    .decode_matrix_min_rows = FLP_DECODE_MATRIX_MIN_ROWS,
    .prefill_run = fake_prefill_run,
    .kv_append_run = fake_kv_append,
};

flp_context *fake_context(void) {
    flp_context *ctx = calloc(1, sizeof *ctx);
    if (!ctx)
        return NULL;
    ctx->ops = &fake_ops;
    ctx->info.max_buffer_bytes = (size_t)1 << 30;
    snprintf(ctx->info.backend_name, sizeof ctx->info.backend_name, "fake");
    return ctx;
}
