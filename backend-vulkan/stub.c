/* Compiled when the Vulkan backend is not built: every entry point says so. */
#include "core/backend.h"
#include "flashport/flashport_vulkan.h"

#define NOT_BUILT "flashport was built without the Vulkan backend (meson -Dvulkan=enabled)"

flp_status flp_vulkan_backend_open(flp_context *ctx, int device_index, bool prefer_gpu,
                                   const void *vulkan_device_desc) {
    (void)device_index;
    (void)prefer_gpu;
    (void)vulkan_device_desc;
    return flp_fail(ctx, FLP_ERROR_UNSUPPORTED, NOT_BUILT);
}

flp_status flp_vulkan_set_command_buffer(flp_context *ctx, VkCommandBuffer cmd) {
    (void)cmd;
    return flp_fail(ctx, FLP_ERROR_UNSUPPORTED, NOT_BUILT);
}

flp_status flp_vulkan_buffer_wrap(flp_context *ctx, VkBuffer buffer, size_t size,
                                  flp_buffer **out) {
    (void)buffer;
    (void)size;
    if (out)
        *out = NULL;
    return flp_fail(ctx, FLP_ERROR_UNSUPPORTED, NOT_BUILT);
}

VkBuffer flp_vulkan_buffer_handle(const flp_buffer *buf) {
    (void)buf;
    return VK_NULL_HANDLE;
}

uint32_t flp_vulkan_validation_message_count(const flp_context *ctx) {
    (void)ctx;
    return 0;
}
