/* The public interop functions of flashport_vulkan.h. */
#include "vk_backend.h"

flp_status flp_vulkan_context_create(const flp_context_desc *desc,
                                     const flp_vulkan_device_desc *device, flp_context **out) {
    if (out)
        *out = NULL;
    if (!device || !out) {
        if (desc)
            flp_log_raw(desc->log, desc->log_user_data, desc->log_level, FLP_LOG_ERROR,
                        "flp_vulkan_context_create: %s is NULL", !device ? "device" : "out");
        return FLP_ERROR_INVALID_ARGUMENT;
    }
    return flp_context_create_on(desc, FLP_BACKEND_VULKAN, device, out);
}

flp_status flp_vulkan_set_command_buffer(flp_context *ctx, VkCommandBuffer cmd) {
    if (!ctx)
        return FLP_ERROR_INVALID_ARGUMENT;
    flp_clear_error(ctx);
    flp_vk *vk = flp_vk_from_context(ctx);
    if (!vk)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "flp_vulkan_set_command_buffer: the context is not a Vulkan context");
    vk->user_cmd = cmd;
    return FLP_OK;
}

bool flp_vk_records_for_caller(const flp_context *ctx) {
    const flp_vk *vk = ctx->backend;
    return vk && vk->user_cmd != VK_NULL_HANDLE;
}

flp_status flp_vulkan_buffer_wrap(flp_context *ctx, VkBuffer buffer, size_t size,
                                  flp_buffer **out) {
    if (out)
        *out = NULL;
    if (!ctx)
        return FLP_ERROR_INVALID_ARGUMENT;
    flp_clear_error(ctx);
    flp_vk *vk = flp_vk_from_context(ctx);
    if (!vk)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "flp_vulkan_buffer_wrap: the context is not a Vulkan context");
    if (!out || buffer == VK_NULL_HANDLE || size == 0)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "flp_vulkan_buffer_wrap: %s",
                        !out                       ? "out is NULL"
                        : buffer == VK_NULL_HANDLE ? "buffer is VK_NULL_HANDLE"
                                                   : "size is 0");
    flp_buffer *buf = flp_calloc(1, sizeof *buf);
    if (!buf)
        return flp_fail(ctx, FLP_ERROR_OUT_OF_MEMORY, "out of host memory");
    buf->ctx = ctx;
    buf->size = size;
    buf->wrapped = true;
    flp_status st = flp_vk_buffer_adopt(ctx, buf, buffer);
    if (st != FLP_OK) {
        flp_free(buf);
        return st;
    }
    *out = buf;
    return FLP_OK;
}

VkBuffer flp_vulkan_buffer_handle(const flp_buffer *buf) {
    if (!buf || !buf->native || !flp_vk_from_context(buf->ctx))
        return VK_NULL_HANDLE;
    return ((const flp_vk_buffer *)buf->native)->buffer;
}

uint32_t flp_vulkan_validation_message_count(const flp_context *ctx) {
    flp_vk *vk = flp_vk_from_context(ctx);
    return vk ? atomic_load(&vk->validation_messages) : 0;
}
