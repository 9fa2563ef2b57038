/* What the chosen device is and can do: ctx->info (public) and vk->facts (backend). */
#include "vk_backend.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* gallivm (llvmpipe, lavapipe) counts the loop iterations of a shader invocation with one
 * counter for all its loops and ends every loop once it reaches this (LP_MAX_TGSI_LOOP_ITERATIONS
 * in Mesa's lp_bld_limits.h; measured: a 100000-iteration loop stops after 65535). */
#define FLP_VK_LLVMPIPE_LOOP_BUDGET 65535u

/* Compute-unit count when the driver does not say: a mid-range GPU. The plan only uses it
 * to size the grid, so a wrong guess costs balance, never correctness. */
#define FLP_VK_DEFAULT_COMPUTE_UNITS 16

typedef struct device_extensions {
    bool sm_builtins_nv;        /* VK_NV_shader_sm_builtins: shaderSMCount */
    bool shader_core_amd;       /* VK_AMD_shader_core_properties: CU counts */
    bool subgroup_size_control; /* VK_EXT_subgroup_size_control: min/max subgroup size */
    bool maintenance4;          /* VK_KHR_maintenance4: maxBufferSize */
} device_extensions;

/* The extensions of the device that change what is queried. A failed listing fails the open:
 * guessing "none" would size kernels from the wrong limits. */
static flp_status list_extensions(flp_vk *vk, device_extensions *e) {
    memset(e, 0, sizeof *e);
    uint32_t n = 0;
    VkResult r = vk->ifn.EnumerateDeviceExtensionProperties(vk->physical_device, NULL, &n, NULL);
    if (r != VK_SUCCESS)
        return flp_vk_fail(vk->ctx, r, "vkEnumerateDeviceExtensionProperties");
    VkExtensionProperties *exts = flp_calloc(n ? n : 1, sizeof *exts);
    if (!exts)
        return flp_fail(vk->ctx, FLP_ERROR_OUT_OF_MEMORY,
                        "out of host memory listing device extensions");
    r = vk->ifn.EnumerateDeviceExtensionProperties(vk->physical_device, NULL, &n, exts);
    if (r == VK_SUCCESS || r == VK_INCOMPLETE) {
        for (uint32_t i = 0; i < n; i++) {
            const char *name = exts[i].extensionName;
            e->sm_builtins_nv |= strcmp(name, "VK_NV_shader_sm_builtins") == 0;
            e->shader_core_amd |= strcmp(name, "VK_AMD_shader_core_properties") == 0;
            e->subgroup_size_control |= strcmp(name, "VK_EXT_subgroup_size_control") == 0;
            e->maintenance4 |= strcmp(name, "VK_KHR_maintenance4") == 0;
        }
    }
    flp_free(exts);
    if (r != VK_SUCCESS && r != VK_INCOMPLETE)
        return flp_vk_fail(vk->ctx, r, "vkEnumerateDeviceExtensionProperties");
    return FLP_OK;
}

flp_status flp_vk_query_device(flp_vk *vk) {
    flp_vk_device_facts *f = &vk->facts;
    device_extensions ext;
    flp_status st = list_extensions(vk, &ext);
    if (st != FLP_OK)
        return st;
    bool v13 = f->api_version >= VK_API_VERSION_1_3;

    VkPhysicalDeviceVulkan11Properties p11 = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_1_PROPERTIES};
    VkPhysicalDeviceVulkan12Properties p12 = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_PROPERTIES};
    VkPhysicalDeviceVulkan13Properties p13 = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_3_PROPERTIES};
    VkPhysicalDeviceSubgroupSizeControlPropertiesEXT ssc = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_SIZE_CONTROL_PROPERTIES_EXT};
    VkPhysicalDeviceMaintenance4PropertiesKHR m4 = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MAINTENANCE_4_PROPERTIES_KHR};
    VkPhysicalDeviceShaderSMBuiltinsPropertiesNV sm = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_SM_BUILTINS_PROPERTIES_NV};
    VkPhysicalDeviceShaderCorePropertiesAMD amd = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_CORE_PROPERTIES_AMD};
    VkPhysicalDeviceProperties2 p2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2};

    /* every output struct starts with sType, pNext: append to the chain */
    void **tail = &p2.pNext;
#define CHAIN(s)                                                                                   \
    do {                                                                                           \
        *tail = &(s);                                                                              \
        tail = &(s).pNext;                                                                         \
    } while (0)
    CHAIN(p11);
    CHAIN(p12);
    if (v13) {
        CHAIN(p13);
    } else {
        if (ext.subgroup_size_control) {
            CHAIN(ssc);
        }
        if (ext.maintenance4) {
            CHAIN(m4);
        }
    }
    if (ext.sm_builtins_nv) {
        CHAIN(sm);
    }
    if (ext.shader_core_amd) {
        CHAIN(amd);
    }
#undef CHAIN
    vk->ifn.GetPhysicalDeviceProperties2(vk->physical_device, &p2);
    const VkPhysicalDeviceProperties *p = &p2.properties;

    f->limits = p->limits;
    vk->ifn.GetPhysicalDeviceMemoryProperties(vk->physical_device, &f->memory);
    f->subgroup_size = p11.subgroupSize ? p11.subgroupSize : 1;
    f->min_subgroup_size = f->max_subgroup_size = f->subgroup_size;
    uint64_t max_buffer = p11.maxMemoryAllocationSize;
    if (v13) {
        if (p13.minSubgroupSize)
            f->min_subgroup_size = p13.minSubgroupSize;
        if (p13.maxSubgroupSize)
            f->max_subgroup_size = p13.maxSubgroupSize;
        if (p13.maxBufferSize && p13.maxBufferSize < max_buffer)
            max_buffer = p13.maxBufferSize;
    } else {
        if (ext.subgroup_size_control && ssc.minSubgroupSize) {
            f->min_subgroup_size = ssc.minSubgroupSize;
            f->max_subgroup_size = ssc.maxSubgroupSize;
        }
        if (ext.maintenance4 && m4.maxBufferSize && m4.maxBufferSize < max_buffer)
            max_buffer = m4.maxBufferSize;
    }
    if (f->min_subgroup_size > f->subgroup_size)
        f->min_subgroup_size = f->subgroup_size;
    if (f->max_subgroup_size < f->subgroup_size)
        f->max_subgroup_size = f->subgroup_size;

    flp_device_info *info = &vk->ctx->info;
    memset(info, 0, sizeof *info);
    info->backend = FLP_BACKEND_VULKAN;
    snprintf(info->backend_name, sizeof info->backend_name, "vulkan");
    snprintf(info->device_name, sizeof info->device_name, "%s", p->deviceName);
    snprintf(info->driver_info, sizeof info->driver_info, "%.48s %.78s", p12.driverName,
             p12.driverInfo);
    info->is_software = p->deviceType == VK_PHYSICAL_DEVICE_TYPE_CPU;
    f->driver_id = (uint32_t)p12.driverID;
    f->loop_budget = p12.driverID == VK_DRIVER_ID_MESA_LLVMPIPE ? FLP_VK_LLVMPIPE_LOOP_BUDGET : 0;
    /* The decode kernel for the kind of device, unless the environment asks for the other
     * (tests run the GPU kernel on lavapipe this way). */
    const char *kernel = getenv("FLP_VULKAN_DECODE_KERNEL");
    if (kernel && strcmp(kernel, "gpu") == 0)
        f->cpu_decode = false;
    else if (kernel && strcmp(kernel, "cpu") == 0)
        f->cpu_decode = true;
    else
        f->cpu_decode = info->is_software;
    VkFormatProperties texel = {0};
    vk->ifn.GetPhysicalDeviceFormatProperties(vk->physical_device, VK_FORMAT_R32G32B32A32_UINT,
                                              &texel);
    f->texel_kv = (texel.bufferFeatures & VK_FORMAT_FEATURE_UNIFORM_TEXEL_BUFFER_BIT) &&
                  p->limits.maxTexelBufferElements > 0;
    info->subgroup_size = (int)f->subgroup_size;
    info->shared_memory_per_group = p->limits.maxComputeSharedMemorySize;
    info->max_buffer_bytes = (size_t)max_buffer;
    for (uint32_t i = 0; i < f->memory.memoryHeapCount; i++) {
        const VkMemoryHeap *heap = &f->memory.memoryHeaps[i];
        if ((heap->flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT) &&
            heap->size > info->device_memory_bytes)
            info->device_memory_bytes = heap->size;
    }
    int units = 0;
    if (ext.sm_builtins_nv && sm.shaderSMCount)
        units = (int)sm.shaderSMCount;
    else if (ext.shader_core_amd && amd.computeUnitsPerShaderArray)
        units = (int)(amd.shaderEngineCount * amd.shaderArraysPerEngineCount *
                      amd.computeUnitsPerShaderArray);
    else if (info->is_software) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        units = cpus > 0 ? (int)cpus : 1;
    }
    info->compute_units = units > 0 ? units : FLP_VK_DEFAULT_COMPUTE_UNITS;
    info->compute_capability = 0;
    return FLP_OK;
}
