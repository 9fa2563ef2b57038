/* VkResult -> flp_status with a message naming the call and the result. */
#include "vk_backend.h"

const char *flp_vk_result_name(VkResult result) {
    switch (result) {
#define FLP_VK_RESULT(name)                                                                        \
    case name:                                                                                     \
        return #name;
        FLP_VK_RESULT(VK_SUCCESS)
        FLP_VK_RESULT(VK_NOT_READY)
        FLP_VK_RESULT(VK_TIMEOUT)
        FLP_VK_RESULT(VK_EVENT_SET)
        FLP_VK_RESULT(VK_EVENT_RESET)
        FLP_VK_RESULT(VK_INCOMPLETE)
        FLP_VK_RESULT(VK_ERROR_OUT_OF_HOST_MEMORY)
        FLP_VK_RESULT(VK_ERROR_OUT_OF_DEVICE_MEMORY)
        FLP_VK_RESULT(VK_ERROR_INITIALIZATION_FAILED)
        FLP_VK_RESULT(VK_ERROR_DEVICE_LOST)
        FLP_VK_RESULT(VK_ERROR_MEMORY_MAP_FAILED)
        FLP_VK_RESULT(VK_ERROR_LAYER_NOT_PRESENT)
        FLP_VK_RESULT(VK_ERROR_EXTENSION_NOT_PRESENT)
        FLP_VK_RESULT(VK_ERROR_FEATURE_NOT_PRESENT)
        FLP_VK_RESULT(VK_ERROR_INCOMPATIBLE_DRIVER)
        FLP_VK_RESULT(VK_ERROR_TOO_MANY_OBJECTS)
        FLP_VK_RESULT(VK_ERROR_FORMAT_NOT_SUPPORTED)
        FLP_VK_RESULT(VK_ERROR_FRAGMENTED_POOL)
        FLP_VK_RESULT(VK_ERROR_UNKNOWN)
        FLP_VK_RESULT(VK_ERROR_OUT_OF_POOL_MEMORY)
        FLP_VK_RESULT(VK_ERROR_INVALID_EXTERNAL_HANDLE)
        FLP_VK_RESULT(VK_ERROR_FRAGMENTATION)
        FLP_VK_RESULT(VK_ERROR_INVALID_OPAQUE_CAPTURE_ADDRESS)
        FLP_VK_RESULT(VK_PIPELINE_COMPILE_REQUIRED)
#undef FLP_VK_RESULT
    default:
        return "VkResult (unnamed)";
    }
}

flp_status flp_vk_fail(flp_context *ctx, VkResult result, const char *call) {
    flp_status status = FLP_ERROR_BACKEND;
    if (result == VK_ERROR_OUT_OF_HOST_MEMORY || result == VK_ERROR_OUT_OF_DEVICE_MEMORY)
        status = FLP_ERROR_OUT_OF_MEMORY;
    else if (result == VK_ERROR_DEVICE_LOST)
        status = FLP_ERROR_DEVICE_LOST;
    return flp_fail(ctx, status, "%s failed: %s (%d)", call, flp_vk_result_name(result),
                    (int)result);
}
