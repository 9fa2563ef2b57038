/* Uniform texel buffer views of the library's buffers, for decode_cpu.comp on CPU devices:
 * llvmpipe fetches texels for a whole SIMD vector in straight-line code, while loads through a
 * device address go lane by lane in a loop (40x slower per 16 bytes, measured on lavapipe).
 *
 * On a device that decodes with decode_cpu.comp, every buffer the library creates also gets
 * UNIFORM_TEXEL_BUFFER usage and is listed here (a decode launch knows its K/V tensors only by
 * address). A buffer's RGBA32UI view and its descriptor set (one binding) are made on its first
 * use by a decode and live as long as the buffer, so command buffers recorded with them stay
 * valid. */
#include "vk_backend.h"

#define FLP_VK_TEXEL_FORMAT VK_FORMAT_R32G32B32A32_UINT
#define FLP_VK_TEXEL_BYTES 16u
/* Descriptor sets per pool; pools are added as buffers need them. */
#define FLP_VK_TEXEL_SETS_PER_POOL 64u

bool flp_vk_texel_supported(const flp_vk *vk) {
    return vk->facts.cpu_decode && vk->facts.texel_kv;
}

flp_status flp_vk_texel_init(flp_vk *vk) {
    if (pthread_mutex_init(&vk->texel_lock, NULL) != 0)
        return flp_fail(vk->ctx, FLP_ERROR_BACKEND, "pthread_mutex_init failed");
    vk->texel_lock_ready = true;
    if (!flp_vk_texel_supported(vk))
        return FLP_OK;
    VkDescriptorSetLayoutBinding binding = {
        .binding = 0,
        .descriptorType = VK_DESCRIPTOR_TYPE_UNIFORM_TEXEL_BUFFER,
        .descriptorCount = 1,
        .stageFlags = VK_SHADER_STAGE_COMPUTE_BIT,
    };
    VkDescriptorSetLayoutCreateInfo li = {
        .sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO,
        .bindingCount = 1,
        .pBindings = &binding,
    };
    VkResult r = FLP_VK_ALLOC(
        VK_ERROR_OUT_OF_HOST_MEMORY,
        vk->vk.vkCreateDescriptorSetLayout(vk->device, &li, NULL, &vk->texel_set_layout));
    if (r != VK_SUCCESS) {
        vk->texel_set_layout = VK_NULL_HANDLE;
        return flp_vk_fail(vk->ctx, r, "vkCreateDescriptorSetLayout");
    }
    /* set 0: K's buffer, set 1: V's buffer; push: params address + K and V byte offsets */
    VkDescriptorSetLayout sets[2] = {vk->texel_set_layout, vk->texel_set_layout};
    VkPushConstantRange range = {
        .stageFlags = VK_SHADER_STAGE_COMPUTE_BIT,
        .offset = 0,
        .size = sizeof(flp_vk_texel_push),
    };
    VkPipelineLayoutCreateInfo pi = {
        .sType = VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO,
        .setLayoutCount = 2,
        .pSetLayouts = sets,
        .pushConstantRangeCount = 1,
        .pPushConstantRanges = &range,
    };
    r = FLP_VK_ALLOC(
        VK_ERROR_OUT_OF_HOST_MEMORY,
        vk->vk.vkCreatePipelineLayout(vk->device, &pi, NULL, &vk->texel_pipeline_layout));
    if (r != VK_SUCCESS) {
        vk->texel_pipeline_layout = VK_NULL_HANDLE;
        return flp_vk_fail(vk->ctx, r, "vkCreatePipelineLayout");
    }
    return FLP_OK;
}

void flp_vk_texel_destroy(flp_vk *vk) {
    if (vk->device) {
        for (uint32_t i = 0; i < vk->texel_pool_count; i++)
            vk->vk.vkDestroyDescriptorPool(vk->device, vk->texel_pools[i], NULL);
        if (vk->texel_pipeline_layout)
            vk->vk.vkDestroyPipelineLayout(vk->device, vk->texel_pipeline_layout, NULL);
        if (vk->texel_set_layout)
            vk->vk.vkDestroyDescriptorSetLayout(vk->device, vk->texel_set_layout, NULL);
    }
    flp_free(vk->texel_pools);
    flp_free(vk->texel_buffers);
    vk->texel_pools = NULL;
    vk->texel_buffers = NULL;
    vk->texel_pool_count = vk->texel_buffer_count = vk->texel_buffer_capacity = 0;
    vk->texel_pipeline_layout = VK_NULL_HANDLE;
    vk->texel_set_layout = VK_NULL_HANDLE;
    if (vk->texel_lock_ready)
        pthread_mutex_destroy(&vk->texel_lock);
    vk->texel_lock_ready = false;
}

flp_status flp_vk_texel_register(flp_vk *vk, flp_buffer *buf) {
    flp_status st = FLP_OK;
    pthread_mutex_lock(&vk->texel_lock);
    if (vk->texel_buffer_count == vk->texel_buffer_capacity) {
        uint32_t capacity = vk->texel_buffer_capacity ? vk->texel_buffer_capacity * 2 : 16;
        flp_buffer **grown = flp_realloc(vk->texel_buffers, capacity * sizeof *grown);
        if (grown) {
            vk->texel_buffers = grown;
            vk->texel_buffer_capacity = capacity;
        } else {
            st = flp_fail(vk->ctx, FLP_ERROR_OUT_OF_MEMORY, "out of host memory");
        }
    }
    if (st == FLP_OK)
        vk->texel_buffers[vk->texel_buffer_count++] = buf;
    pthread_mutex_unlock(&vk->texel_lock);
    return st;
}

void flp_vk_texel_unregister(flp_vk *vk, flp_buffer *buf) {
    flp_vk_buffer *native = buf->native;
    pthread_mutex_lock(&vk->texel_lock);
    for (uint32_t i = 0; i < vk->texel_buffer_count; i++) {
        if (vk->texel_buffers[i] == buf) {
            vk->texel_buffers[i] = vk->texel_buffers[--vk->texel_buffer_count];
            break;
        }
    }
    pthread_mutex_unlock(&vk->texel_lock);
    if (native->texel_set)
        vk->vk.vkFreeDescriptorSets(vk->device, native->texel_pool, 1, &native->texel_set);
    if (native->texel_view)
        vk->vk.vkDestroyBufferView(vk->device, native->texel_view, NULL);
    native->texel_set = VK_NULL_HANDLE;
    native->texel_view = VK_NULL_HANDLE;
}

/* A descriptor set from the newest pool, or from a new one when it is full. */
static flp_status allocate_set(flp_vk *vk, VkDescriptorSet *set, VkDescriptorPool *pool) {
    if (vk->texel_pool_count > 0) {
        VkDescriptorSetAllocateInfo ai = {
            .sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO,
            .descriptorPool = vk->texel_pools[vk->texel_pool_count - 1],
            .descriptorSetCount = 1,
            .pSetLayouts = &vk->texel_set_layout,
        };
        VkResult r = FLP_VK_ALLOC(VK_ERROR_OUT_OF_DEVICE_MEMORY,
                                  vk->vk.vkAllocateDescriptorSets(vk->device, &ai, set));
        if (r == VK_SUCCESS) {
            *pool = ai.descriptorPool;
            return FLP_OK;
        }
        if (r != VK_ERROR_OUT_OF_POOL_MEMORY && r != VK_ERROR_FRAGMENTED_POOL)
            return flp_vk_fail(vk->ctx, r, "vkAllocateDescriptorSets");
    }
    VkDescriptorPool *grown =
        flp_realloc(vk->texel_pools, (vk->texel_pool_count + 1) * sizeof *vk->texel_pools);
    if (!grown)
        return flp_fail(vk->ctx, FLP_ERROR_OUT_OF_MEMORY, "out of host memory");
    vk->texel_pools = grown;
    VkDescriptorPoolSize size = {
        .type = VK_DESCRIPTOR_TYPE_UNIFORM_TEXEL_BUFFER,
        .descriptorCount = FLP_VK_TEXEL_SETS_PER_POOL,
    };
    VkDescriptorPoolCreateInfo pi = {
        .sType = VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO,
        .flags = VK_DESCRIPTOR_POOL_CREATE_FREE_DESCRIPTOR_SET_BIT,
        .maxSets = FLP_VK_TEXEL_SETS_PER_POOL,
        .poolSizeCount = 1,
        .pPoolSizes = &size,
    };
    VkDescriptorPool created;
    VkResult r = FLP_VK_ALLOC(VK_ERROR_OUT_OF_DEVICE_MEMORY,
                              vk->vk.vkCreateDescriptorPool(vk->device, &pi, NULL, &created));
    if (r != VK_SUCCESS)
        return flp_vk_fail(vk->ctx, r, "vkCreateDescriptorPool");
    vk->texel_pools[vk->texel_pool_count++] = created;
    VkDescriptorSetAllocateInfo ai = {
        .sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO,
        .descriptorPool = created,
        .descriptorSetCount = 1,
        .pSetLayouts = &vk->texel_set_layout,
    };
    r = FLP_VK_ALLOC(VK_ERROR_OUT_OF_DEVICE_MEMORY,
                     vk->vk.vkAllocateDescriptorSets(vk->device, &ai, set));
    if (r != VK_SUCCESS)
        return flp_vk_fail(vk->ctx, r, "vkAllocateDescriptorSets");
    *pool = created;
    return FLP_OK;
}

/* The view and set of buf, made on first use. */
static flp_status ensure_view(flp_vk *vk, flp_buffer *buf) {
    flp_vk_buffer *native = buf->native;
    if (native->texel_set)
        return FLP_OK;
    VkBufferViewCreateInfo vi = {
        .sType = VK_STRUCTURE_TYPE_BUFFER_VIEW_CREATE_INFO,
        .buffer = native->buffer,
        .format = FLP_VK_TEXEL_FORMAT,
        .offset = 0,
        .range = VK_WHOLE_SIZE,
    };
    VkResult r =
        FLP_VK_ALLOC(VK_ERROR_OUT_OF_HOST_MEMORY,
                     vk->vk.vkCreateBufferView(vk->device, &vi, NULL, &native->texel_view));
    if (r != VK_SUCCESS) {
        native->texel_view = VK_NULL_HANDLE;
        return flp_vk_fail(vk->ctx, r, "vkCreateBufferView");
    }
    flp_status st = allocate_set(vk, &native->texel_set, &native->texel_pool);
    if (st != FLP_OK) {
        native->texel_set = VK_NULL_HANDLE;
        vk->vk.vkDestroyBufferView(vk->device, native->texel_view, NULL);
        native->texel_view = VK_NULL_HANDLE;
        return st;
    }
    VkWriteDescriptorSet w = {
        .sType = VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET,
        .dstSet = native->texel_set,
        .dstBinding = 0,
        .descriptorCount = 1,
        .descriptorType = VK_DESCRIPTOR_TYPE_UNIFORM_TEXEL_BUFFER,
        .pTexelBufferView = &native->texel_view,
    };
    vk->vk.vkUpdateDescriptorSets(vk->device, 1, &w, 0, NULL);
    return FLP_OK;
}

flp_status flp_vk_texel_source(flp_vk *vk, uint64_t address, VkDescriptorSet *set,
                               uint32_t *offset) {
    *set = VK_NULL_HANDLE;
    *offset = 0;
    if (!flp_vk_texel_supported(vk))
        return FLP_OK;
    flp_buffer *found = NULL;
    pthread_mutex_lock(&vk->texel_lock);
    for (uint32_t i = 0; i < vk->texel_buffer_count && !found; i++) {
        flp_buffer *b = vk->texel_buffers[i];
        if (address >= b->device_address && address - b->device_address < b->size)
            found = b;
    }
    pthread_mutex_unlock(&vk->texel_lock);
    if (!found)
        return FLP_OK; /* a wrapped buffer, for instance: the kernel loads by address */
    /* the whole buffer in one view, offsets in 32 bits, rows on 16-byte texels */
    uint64_t texels = found->size / FLP_VK_TEXEL_BYTES;
    uint64_t start = address - found->device_address;
    if (texels > vk->facts.limits.maxTexelBufferElements || found->size > INT32_MAX ||
        start % FLP_VK_TEXEL_BYTES != 0)
        return FLP_OK;
    flp_status st = ensure_view(vk, found);
    if (st != FLP_OK)
        return st;
    *set = ((flp_vk_buffer *)found->native)->texel_set;
    *offset = (uint32_t)start;
    return FLP_OK;
}
