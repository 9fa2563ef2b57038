/* Buffers: device-local storage buffers reached by device address, a caller's VkBuffer
 * wrapped, and host <-> device copies through one reused staging buffer, in chunks. */
#include "vk_backend.h"

#include <string.h>

/* Largest staging buffer: copies of bigger ranges go in chunks of this size. */
#define FLP_VK_STAGING_BYTES ((size_t)16 << 20)

static int find_memory_type(const VkPhysicalDeviceMemoryProperties *m, uint32_t type_bits,
                            VkMemoryPropertyFlags required, VkMemoryPropertyFlags preferred) {
    for (int pass = 0; pass < 2; pass++) {
        VkMemoryPropertyFlags want = pass == 0 ? required | preferred : required;
        for (uint32_t i = 0; i < m->memoryTypeCount; i++)
            if ((type_bits & (1u << i)) && (m->memoryTypes[i].propertyFlags & want) == want)
                return (int)i;
    }
    return -1;
}

/* A VkBuffer with its own memory. */
static flp_status create_raw(flp_vk *vk, VkDeviceSize size, VkBufferUsageFlags usage,
                             VkMemoryPropertyFlags required, VkMemoryPropertyFlags preferred,
                             VkBuffer *buffer, VkDeviceMemory *memory) {
    *buffer = VK_NULL_HANDLE;
    *memory = VK_NULL_HANDLE;
    VkBufferCreateInfo bi = {
        .sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO,
        .size = size,
        .usage = usage,
        .sharingMode = VK_SHARING_MODE_EXCLUSIVE,
    };
    VkResult r = FLP_VK_ALLOC(VK_ERROR_OUT_OF_DEVICE_MEMORY,
                              vk->vk.vkCreateBuffer(vk->device, &bi, NULL, buffer));
    if (r != VK_SUCCESS) {
        *buffer = VK_NULL_HANDLE;
        return flp_vk_fail(vk->ctx, r, "vkCreateBuffer");
    }
    VkMemoryRequirements req;
    vk->vk.vkGetBufferMemoryRequirements(vk->device, *buffer, &req);
    int type = find_memory_type(&vk->facts.memory, req.memoryTypeBits, required, preferred);
    if (type < 0) {
        vk->vk.vkDestroyBuffer(vk->device, *buffer, NULL);
        *buffer = VK_NULL_HANDLE;
        return flp_fail(vk->ctx, FLP_ERROR_UNSUPPORTED,
                        "no Vulkan memory type with property flags 0x%x for a buffer "
                        "(allowed types 0x%x)",
                        (unsigned)required, (unsigned)req.memoryTypeBits);
    }
    bool device_address = (usage & VK_BUFFER_USAGE_SHADER_DEVICE_ADDRESS_BIT) != 0;
    VkMemoryAllocateFlagsInfo flags = {
        .sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_FLAGS_INFO,
        .flags = VK_MEMORY_ALLOCATE_DEVICE_ADDRESS_BIT,
    };
    VkMemoryAllocateInfo ai = {
        .sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO,
        .pNext = device_address ? &flags : NULL,
        .allocationSize = req.size,
        .memoryTypeIndex = (uint32_t)type,
    };
    const char *call = "vkAllocateMemory";
    r = FLP_VK_ALLOC(VK_ERROR_OUT_OF_DEVICE_MEMORY,
                     vk->vk.vkAllocateMemory(vk->device, &ai, NULL, memory));
    if (r == VK_SUCCESS) {
        call = "vkBindBufferMemory";
        /* binding may run out of memory too: a site of its own, to walk the cleanup of both */
        r = FLP_VK_ALLOC(VK_ERROR_OUT_OF_DEVICE_MEMORY,
                         vk->vk.vkBindBufferMemory(vk->device, *buffer, *memory, 0));
    } else {
        *memory = VK_NULL_HANDLE;
    }
    if (r != VK_SUCCESS) {
        vk->vk.vkDestroyBuffer(vk->device, *buffer, NULL);
        if (*memory)
            vk->vk.vkFreeMemory(vk->device, *memory, NULL);
        *buffer = VK_NULL_HANDLE;
        *memory = VK_NULL_HANDLE;
        return flp_vk_fail(vk->ctx, r, call);
    }
    return FLP_OK;
}

static uint64_t device_address(flp_vk *vk, VkBuffer buffer) {
    VkBufferDeviceAddressInfo ai = {
        .sType = VK_STRUCTURE_TYPE_BUFFER_DEVICE_ADDRESS_INFO,
        .buffer = buffer,
    };
    return (uint64_t)vk->vk.vkGetBufferDeviceAddress(vk->device, &ai);
}

flp_status flp_vk_small_buffer_create(flp_vk *vk, size_t size, VkBuffer *buffer,
                                      VkDeviceMemory *memory, uint64_t *address) {
    flp_status st =
        create_raw(vk, size,
                   VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | VK_BUFFER_USAGE_TRANSFER_DST_BIT |
                       VK_BUFFER_USAGE_SHADER_DEVICE_ADDRESS_BIT,
                   0, VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT, buffer, memory);
    if (st == FLP_OK)
        *address = device_address(vk, *buffer);
    return st;
}

void flp_vk_small_buffer_destroy(flp_vk *vk, VkBuffer *buffer, VkDeviceMemory *memory) {
    if (*buffer)
        vk->vk.vkDestroyBuffer(vk->device, *buffer, NULL);
    if (*memory)
        vk->vk.vkFreeMemory(vk->device, *memory, NULL);
    *buffer = VK_NULL_HANDLE;
    *memory = VK_NULL_HANDLE;
}

flp_status flp_vk_buffer_create(flp_context *ctx, flp_buffer *buf) {
    flp_vk *vk = ctx->backend;
    if (buf->size > ctx->info.max_buffer_bytes)
        return flp_fail(ctx, FLP_ERROR_OUT_OF_MEMORY,
                        "buffer of %zu bytes exceeds the largest Vulkan buffer of this device "
                        "(%zu bytes)",
                        buf->size, ctx->info.max_buffer_bytes);
    flp_vk_buffer *native = flp_calloc(1, sizeof *native);
    if (!native)
        return flp_fail(ctx, FLP_ERROR_OUT_OF_MEMORY, "out of host memory");
    VkBufferUsageFlags usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT |
                               VK_BUFFER_USAGE_TRANSFER_SRC_BIT | VK_BUFFER_USAGE_TRANSFER_DST_BIT |
                               VK_BUFFER_USAGE_SHADER_DEVICE_ADDRESS_BIT;
    /* the CPU decode kernel reads K/V through texel views (vk_texel.c) */
    native->texel_usage = flp_vk_texel_supported(vk);
    if (native->texel_usage)
        usage |= VK_BUFFER_USAGE_UNIFORM_TEXEL_BUFFER_BIT;
    flp_status st = create_raw(vk, buf->size, usage, 0, VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT,
                               &native->buffer, &native->memory);
    if (st != FLP_OK) {
        flp_free(native);
        return st;
    }
    buf->native = native;
    buf->device_address = device_address(vk, native->buffer);
    if (native->texel_usage && (st = flp_vk_texel_register(vk, buf)) != FLP_OK) {
        flp_vk_buffer_destroy(ctx, buf);
        return st;
    }
    return FLP_OK;
}

flp_status flp_vk_buffer_adopt(flp_context *ctx, flp_buffer *buf, VkBuffer buffer) {
    flp_vk *vk = ctx->backend;
    flp_vk_buffer *native = flp_calloc(1, sizeof *native);
    if (!native)
        return flp_fail(ctx, FLP_ERROR_OUT_OF_MEMORY, "out of host memory");
    native->buffer = buffer;
    buf->native = native;
    buf->device_address = device_address(vk, buffer);
    if (!buf->device_address) {
        flp_free(native);
        buf->native = NULL;
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "vkGetBufferDeviceAddress returned 0 for the wrapped VkBuffer (it needs "
                        "SHADER_DEVICE_ADDRESS usage and bound memory)");
    }
    return FLP_OK;
}

void flp_vk_buffer_destroy(flp_context *ctx, flp_buffer *buf) {
    flp_vk *vk = ctx->backend;
    flp_vk_buffer *native = buf->native;
    if (!native)
        return;
    if (native->memory) {
        /* Vulkan forbids freeing memory that queued work may still use. */
        (void)flp_vk_synchronize(ctx);
        if (native->texel_usage)
            flp_vk_texel_unregister(vk, buf);
        vk->vk.vkDestroyBuffer(vk->device, native->buffer, NULL);
        vk->vk.vkFreeMemory(vk->device, native->memory, NULL);
    }
    flp_free(native);
    buf->native = NULL;
}

static flp_status ensure_staging(flp_vk *vk) {
    if (vk->staging)
        return FLP_OK;
    size_t size = FLP_VK_STAGING_BYTES;
    if (size > vk->ctx->info.max_buffer_bytes)
        size = vk->ctx->info.max_buffer_bytes;
    /* cached memory keeps the host's reads fast; coherent needs no flush/invalidate */
    flp_status st =
        create_raw(vk, size, VK_BUFFER_USAGE_TRANSFER_SRC_BIT | VK_BUFFER_USAGE_TRANSFER_DST_BIT,
                   VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT,
                   VK_MEMORY_PROPERTY_HOST_CACHED_BIT, &vk->staging, &vk->staging_memory);
    if (st != FLP_OK)
        return st;
    VkResult r = FLP_VK_ALLOC(
        VK_ERROR_OUT_OF_HOST_MEMORY,
        vk->vk.vkMapMemory(vk->device, vk->staging_memory, 0, VK_WHOLE_SIZE, 0, &vk->staging_map));
    if (r != VK_SUCCESS) {
        vk->staging_map = NULL; /* undefined after a failure: never unmapped */
        flp_vk_staging_destroy(vk);
        return flp_vk_fail(vk->ctx, r, "vkMapMemory");
    }
    vk->staging_size = size;
    return FLP_OK;
}

void flp_vk_staging_destroy(flp_vk *vk) {
    if (vk->staging_map)
        vk->vk.vkUnmapMemory(vk->device, vk->staging_memory);
    if (vk->staging)
        vk->vk.vkDestroyBuffer(vk->device, vk->staging, NULL);
    if (vk->staging_memory)
        vk->vk.vkFreeMemory(vk->device, vk->staging_memory, NULL);
    vk->staging_map = NULL;
    vk->staging = VK_NULL_HANDLE;
    vk->staging_memory = VK_NULL_HANDLE;
    vk->staging_size = 0;
}

/* One chunk through the staging buffer, ordered after everything queued before (the first
 * barrier's scope reaches back over earlier submissions on the queue) and blocking. */
static flp_status copy_chunk(flp_vk *vk, VkBuffer buffer, size_t offset, size_t size, bool upload) {
    flp_vk_recording rec;
    flp_status st = flp_vk_record_begin(vk, false, &rec);
    if (st != FLP_OK)
        return st;
    flp_vk_barrier(vk, rec.cmd, VK_PIPELINE_STAGE_ALL_COMMANDS_BIT,
                   VK_ACCESS_MEMORY_READ_BIT | VK_ACCESS_MEMORY_WRITE_BIT,
                   VK_PIPELINE_STAGE_TRANSFER_BIT,
                   VK_ACCESS_TRANSFER_READ_BIT | VK_ACCESS_TRANSFER_WRITE_BIT);
    VkBufferCopy region = {
        .srcOffset = upload ? 0 : offset,
        .dstOffset = upload ? offset : 0,
        .size = size,
    };
    vk->vk.vkCmdCopyBuffer(rec.cmd, upload ? vk->staging : buffer, upload ? buffer : vk->staging, 1,
                           &region);
    flp_vk_barrier(vk, rec.cmd, VK_PIPELINE_STAGE_TRANSFER_BIT, VK_ACCESS_TRANSFER_WRITE_BIT,
                   VK_PIPELINE_STAGE_ALL_COMMANDS_BIT | VK_PIPELINE_STAGE_HOST_BIT,
                   VK_ACCESS_MEMORY_READ_BIT | VK_ACCESS_MEMORY_WRITE_BIT |
                       VK_ACCESS_HOST_READ_BIT);
    return flp_vk_record_submit(vk, &rec, true);
}

flp_status flp_vk_buffer_write(flp_context *ctx, flp_buffer *buf, size_t offset, const void *src,
                               size_t size) {
    flp_vk *vk = ctx->backend;
    flp_status st = ensure_staging(vk);
    const flp_vk_buffer *native = buf->native;
    for (size_t done = 0; st == FLP_OK && done < size;) {
        size_t n = size - done < vk->staging_size ? size - done : vk->staging_size;
        memcpy(vk->staging_map, (const char *)src + done, n);
        st = copy_chunk(vk, native->buffer, offset + done, n, true);
        done += n;
    }
    return st;
}

flp_status flp_vk_buffer_read(flp_context *ctx, const flp_buffer *buf, size_t offset, void *dst,
                              size_t size) {
    flp_vk *vk = ctx->backend;
    flp_status st = ensure_staging(vk);
    const flp_vk_buffer *native = buf->native;
    for (size_t done = 0; st == FLP_OK && done < size;) {
        size_t n = size - done < vk->staging_size ? size - done : vk->staging_size;
        st = copy_chunk(vk, native->buffer, offset + done, n, false);
        if (st == FLP_OK)
            memcpy((char *)dst + done, vk->staging_map, n);
        done += n;
    }
    return st;
}
