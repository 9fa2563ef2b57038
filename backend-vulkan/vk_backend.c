/* The Vulkan backend's entry: opens a device (the library's own or the caller's), fills the
 * backend function table, and tears everything down in reverse. */
#include "vk_backend.h"

/* Also the cleanup of a failed open, when ctx->backend is not set yet: everything here goes
 * through vk, never through the context. */
static void release(flp_vk *vk) {
    if (vk->device) {
        (void)flp_vk_wait_submitted(vk);
        if (vk->owns_device)
            (void)vk->vk.vkDeviceWaitIdle(vk->device);
        flp_vk_merge_destroy(vk);
        flp_vk_kv_append_destroy(vk);
        flp_vk_pipelines_destroy(vk);
        flp_vk_texel_destroy(vk);
        flp_vk_staging_destroy(vk);
        flp_vk_submit_destroy(vk);
    }
    flp_vk_close_device(vk);
    flp_free(vk);
}

static void vk_destroy(flp_context *ctx) {
    flp_vk *vk = ctx->backend;
    if (vk)
        release(vk);
    ctx->backend = NULL;
}

const flp_backend_ops flp_vk_ops = {
    .name = "vulkan",
    .destroy = vk_destroy,
    .buffer_create = flp_vk_buffer_create,
    .buffer_destroy = flp_vk_buffer_destroy,
    .buffer_write = flp_vk_buffer_write,
    .buffer_read = flp_vk_buffer_read,
    .synchronize = flp_vk_synchronize,
    .decode_grid_size = flp_vk_decode_grid_size,
    .decode_run = flp_vk_decode_run,
#ifdef FLP_HAVE_GLSLANG
    .decode_snippets = true, /* compiled at run time (vk_jit.c) */
    .prefill_snippets = true,
#endif
    .prefill_grid_size = flp_vk_prefill_grid_size,
    /* The prefill pipelines are 10-100x slower than the decode pipelines on decode batches
     * (bench/RESULTS.md, "the decode kernel choice"): AUTO keeps the vector kernel. */
    .decode_matrix_min_rows = 0,
    .prefill_run = flp_vk_prefill_run,
    .kv_append_run = flp_vk_kv_append_run,
    .merge_run = flp_vk_merge_run,
    .records_for_caller = flp_vk_records_for_caller,
};

flp_vk *flp_vk_from_context(const flp_context *ctx) {
    return ctx && ctx->ops == &flp_vk_ops ? ctx->backend : NULL;
}

flp_status flp_vulkan_backend_open(flp_context *ctx, int device_index, bool prefer_gpu,
                                   const void *vulkan_device_desc) {
    flp_vk *vk = flp_calloc(1, sizeof *vk);
    if (!vk)
        return flp_fail(ctx, FLP_ERROR_OUT_OF_MEMORY, "out of host memory");
    vk->ctx = ctx;
    atomic_init(&vk->validation_messages, 0u);
    flp_status st =
        vulkan_device_desc
            ? flp_vk_open_caller_device(vk, (const flp_vulkan_device_desc *)vulkan_device_desc)
            : flp_vk_open_own_device(vk, device_index, prefer_gpu);
    if (st == FLP_OK)
        st = flp_vk_submit_init(vk);
    if (st == FLP_OK)
        st = flp_vk_pipelines_init(vk);
    if (st == FLP_OK)
        st = flp_vk_texel_init(vk);
    if (st == FLP_OK)
        st = flp_vk_kv_append_init(vk);
    if (st == FLP_OK)
        st = flp_vk_merge_init(vk);
    if (st != FLP_OK) {
        release(vk);
        return st;
    }
    ctx->ops = &flp_vk_ops;
    ctx->backend = vk;
    flp_log(ctx, FLP_LOG_INFO, "Vulkan device: %s (%s), %d compute units, subgroup %d",
            ctx->info.device_name, ctx->info.driver_info, ctx->info.compute_units,
            ctx->info.subgroup_size);
    return FLP_OK;
}
