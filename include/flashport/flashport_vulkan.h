/* flashport Vulkan interop: a caller's VkDevice/VkQueue, VkBuffer and VkCommandBuffer. */
#ifndef FLASHPORT_VULKAN_H
#define FLASHPORT_VULKAN_H

#include "flashport.h"

#ifndef VK_NO_PROTOTYPES
#define VK_NO_PROTOTYPES
#endif
#include <vulkan/vulkan_core.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A caller's device. The device must be Vulkan 1.2 and created with the features
 * bufferDeviceAddress, storageBuffer16BitAccess, shaderInt64 and shaderInt16 enabled; the
 * queue must support compute; all must outlive the context. get_instance_proc_addr is the
 * loader's vkGetInstanceProcAddr (functions are loaded per device through volk, so the
 * caller's own Vulkan use is untouched). */
typedef struct flp_vulkan_device_desc {
    PFN_vkGetInstanceProcAddr get_instance_proc_addr;
    VkInstance instance;
    VkPhysicalDevice physical_device;
    VkDevice device;
    VkQueue queue;
    uint32_t queue_family_index;
} flp_vulkan_device_desc;

FLP_API flp_status flp_vulkan_context_create(const flp_context_desc *desc,
                                             const flp_vulkan_device_desc *device,
                                             flp_context **out);

/* Record later runs into the caller's command buffer (in the recording state) instead of
 * submitting them; NULL returns to the library's own queue. The caller submits and orders the
 * command buffer; the recorded commands stay valid while the plan and tensors live and are
 * re-planned within capacity, so a command buffer recorded once can be submitted many times. */
FLP_API flp_status flp_vulkan_set_command_buffer(flp_context *ctx, VkCommandBuffer cmd);

/* Wraps a caller's VkBuffer (created with STORAGE_BUFFER, TRANSFER_SRC/DST and
 * SHADER_DEVICE_ADDRESS usage, memory bound) of size bytes; the library does not free it. */
FLP_API flp_status flp_vulkan_buffer_wrap(flp_context *ctx, VkBuffer buffer, size_t size,
                                          flp_buffer **out);
FLP_API VkBuffer flp_vulkan_buffer_handle(const flp_buffer *buf);

/* Validation messages seen so far when the Khronos validation layer was enabled
 * (FLP_VULKAN_VALIDATION=1 in the environment); each is also logged at FLP_LOG_ERROR. */
FLP_API uint32_t flp_vulkan_validation_message_count(const flp_context *ctx);

#ifdef __cplusplus
}
#endif

#endif /* FLASHPORT_VULKAN_H */
