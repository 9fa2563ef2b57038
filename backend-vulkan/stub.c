/* Compiled when the Vulkan backend is not built: every entry point says so. It must compile
 * where no Vulkan headers are installed, so it then declares the few handle types of
 * flashport_vulkan.h itself, spelled exactly as vulkan_core.h spells them (the ABI stays the
 * same whether or not the headers were present). */
#include "core/backend.h"

#if defined(__has_include)
#if __has_include(<vulkan/vulkan_core.h>)
#define FLP_STUB_HAVE_VULKAN_HEADERS 1
#endif
#endif

#ifdef FLP_STUB_HAVE_VULKAN_HEADERS
#include "flashport/flashport_vulkan.h"
#else
/* vulkan_core.h: dispatchable handles are pointers; non-dispatchable ones are pointers on
 * 64-bit targets and uint64_t elsewhere. */
typedef struct VkCommandBuffer_T *VkCommandBuffer;
#if defined(__LP64__) || defined(_WIN64) || (defined(__x86_64__) && !defined(__ILP32__)) ||        \
    defined(_M_X64) || defined(__ia64) || defined(_M_IA64) || defined(__aarch64__) ||              \
    defined(__powerpc64__)
typedef struct VkBuffer_T *VkBuffer;
#define VK_NULL_HANDLE ((void *)0)
#else
typedef uint64_t VkBuffer;
#define VK_NULL_HANDLE 0ULL
#endif
typedef struct flp_vulkan_device_desc flp_vulkan_device_desc; /* opaque here */

FLP_API flp_status flp_vulkan_context_create(const flp_context_desc *desc,
                                             const flp_vulkan_device_desc *device,
                                             flp_context **out);
FLP_API flp_status flp_vulkan_set_command_buffer(flp_context *ctx, VkCommandBuffer cmd);
FLP_API flp_status flp_vulkan_buffer_wrap(flp_context *ctx, VkBuffer buffer, size_t size,
                                          flp_buffer **out);
FLP_API VkBuffer flp_vulkan_buffer_handle(const flp_buffer *buf);
FLP_API uint32_t flp_vulkan_validation_message_count(const flp_context *ctx);
#endif

#define NOT_BUILT "flashport was built without the Vulkan backend (meson -Dvulkan=enabled)"

flp_status flp_vulkan_backend_open(flp_context *ctx, int device_index, bool prefer_gpu,
                                   const void *vulkan_device_desc) {
    (void)device_index;
    (void)prefer_gpu;
    (void)vulkan_device_desc;
    return flp_fail(ctx, FLP_ERROR_UNSUPPORTED, NOT_BUILT);
}

flp_status flp_vulkan_context_create(const flp_context_desc *desc,
                                     const flp_vulkan_device_desc *device, flp_context **out) {
    (void)device;
    if (out)
        *out = NULL;
    if (desc)
        flp_log_raw(desc->log, desc->log_user_data, desc->log_level, FLP_LOG_ERROR, NOT_BUILT);
    return FLP_ERROR_UNSUPPORTED;
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
