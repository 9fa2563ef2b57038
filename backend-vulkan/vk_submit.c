/* The library's own queue: each run is recorded into a command buffer of a small ring and
 * submitted with a fence, without waiting; a slot is recycled once its fence has signalled.
 * After flp_vulkan_set_command_buffer, runs are recorded into the caller's command buffer. */
#include "vk_backend.h"

flp_status flp_vk_submit_init(flp_vk *vk) {
    VkCommandPoolCreateInfo pi = {
        .sType = VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO,
        .flags =
            VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT | VK_COMMAND_POOL_CREATE_TRANSIENT_BIT,
        .queueFamilyIndex = vk->queue_family,
    };
    VkResult r = FLP_VK_ALLOC(VK_ERROR_OUT_OF_DEVICE_MEMORY,
                              vk->vk.vkCreateCommandPool(vk->device, &pi, NULL, &vk->pool));
    if (r != VK_SUCCESS) {
        vk->pool = VK_NULL_HANDLE;
        return flp_vk_fail(vk->ctx, r, "vkCreateCommandPool");
    }
    VkCommandBuffer cmds[FLP_VK_SLOTS];
    VkCommandBufferAllocateInfo ai = {
        .sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO,
        .commandPool = vk->pool,
        .level = VK_COMMAND_BUFFER_LEVEL_PRIMARY,
        .commandBufferCount = FLP_VK_SLOTS,
    };
    r = FLP_VK_ALLOC(VK_ERROR_OUT_OF_DEVICE_MEMORY,
                     vk->vk.vkAllocateCommandBuffers(vk->device, &ai, cmds));
    if (r != VK_SUCCESS)
        return flp_vk_fail(vk->ctx, r, "vkAllocateCommandBuffers");
    for (int i = 0; i < FLP_VK_SLOTS; i++)
        vk->slots[i].cmd = cmds[i];
    VkFenceCreateInfo fi = {.sType = VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
    for (int i = 0; i < FLP_VK_SLOTS; i++) {
        r = FLP_VK_ALLOC(VK_ERROR_OUT_OF_HOST_MEMORY,
                         vk->vk.vkCreateFence(vk->device, &fi, NULL, &vk->slots[i].fence));
        if (r != VK_SUCCESS) {
            vk->slots[i].fence = VK_NULL_HANDLE;
            return flp_vk_fail(vk->ctx, r, "vkCreateFence");
        }
    }
    return FLP_OK;
}

void flp_vk_submit_destroy(flp_vk *vk) {
    if (!vk->device)
        return;
    for (int i = 0; i < FLP_VK_SLOTS; i++) {
        if (vk->slots[i].fence)
            vk->vk.vkDestroyFence(vk->device, vk->slots[i].fence, NULL);
        vk->slots[i].fence = VK_NULL_HANDLE;
    }
    /* destroying the pool frees its command buffers */
    if (vk->pool)
        vk->vk.vkDestroyCommandPool(vk->device, vk->pool, NULL);
    vk->pool = VK_NULL_HANDLE;
}

/* Makes slot free: waits for its previous submission and resets its fence. */
static flp_status reclaim(flp_vk *vk, flp_vk_slot *slot) {
    if (!slot->submitted)
        return FLP_OK;
    VkResult r = vk->vk.vkWaitForFences(vk->device, 1, &slot->fence, VK_TRUE, UINT64_MAX);
    if (r != VK_SUCCESS)
        return flp_vk_fail(vk->ctx, r, "vkWaitForFences");
    r = vk->vk.vkResetFences(vk->device, 1, &slot->fence);
    if (r != VK_SUCCESS)
        return flp_vk_fail(vk->ctx, r, "vkResetFences");
    slot->submitted = false;
    return FLP_OK;
}

flp_status flp_vk_record_begin(flp_vk *vk, bool allow_user_cmd, flp_vk_recording *rec) {
    if (allow_user_cmd && vk->user_cmd) {
        rec->cmd = vk->user_cmd;
        rec->slot = -1;
        return FLP_OK;
    }
    /* Round robin: the next slot is the one submitted longest ago. */
    int index = (int)(vk->next_slot % FLP_VK_SLOTS);
    flp_vk_slot *slot = &vk->slots[index];
    flp_status st = reclaim(vk, slot);
    if (st != FLP_OK)
        return st;
    VkResult r = vk->vk.vkResetCommandBuffer(slot->cmd, 0);
    if (r != VK_SUCCESS)
        return flp_vk_fail(vk->ctx, r, "vkResetCommandBuffer");
    VkCommandBufferBeginInfo bi = {
        .sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO,
        .flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT,
    };
    r = vk->vk.vkBeginCommandBuffer(slot->cmd, &bi);
    if (r != VK_SUCCESS)
        return flp_vk_fail(vk->ctx, r, "vkBeginCommandBuffer");
    vk->next_slot++;
    rec->cmd = slot->cmd;
    rec->slot = index;
    return FLP_OK;
}

flp_status flp_vk_record_submit(flp_vk *vk, flp_vk_recording *rec, bool wait) {
    if (rec->slot < 0)
        return FLP_OK; /* the caller submits its own command buffer */
    flp_vk_slot *slot = &vk->slots[rec->slot];
    VkResult r = vk->vk.vkEndCommandBuffer(slot->cmd);
    if (r != VK_SUCCESS)
        return flp_vk_fail(vk->ctx, r, "vkEndCommandBuffer");
    VkSubmitInfo si = {
        .sType = VK_STRUCTURE_TYPE_SUBMIT_INFO,
        .commandBufferCount = 1,
        .pCommandBuffers = &slot->cmd,
    };
    r = vk->vk.vkQueueSubmit(vk->queue, 1, &si, slot->fence);
    if (r != VK_SUCCESS)
        return flp_vk_fail(vk->ctx, r, "vkQueueSubmit");
    slot->submitted = true;
    if (!wait)
        return FLP_OK;
    r = vk->vk.vkWaitForFences(vk->device, 1, &slot->fence, VK_TRUE, UINT64_MAX);
    if (r != VK_SUCCESS)
        return flp_vk_fail(vk->ctx, r, "vkWaitForFences");
    return FLP_OK;
}

flp_status flp_vk_wait_submitted(flp_vk *vk) {
    for (int i = 0; i < FLP_VK_SLOTS; i++) {
        const flp_vk_slot *slot = &vk->slots[i];
        if (!slot->submitted)
            continue;
        VkResult r = vk->vk.vkWaitForFences(vk->device, 1, &slot->fence, VK_TRUE, UINT64_MAX);
        if (r != VK_SUCCESS)
            return flp_vk_fail(vk->ctx, r, "vkWaitForFences");
    }
    return FLP_OK;
}

flp_status flp_vk_synchronize(flp_context *ctx) {
    return flp_vk_wait_submitted(ctx->backend);
}

void flp_vk_barrier(flp_vk *vk, VkCommandBuffer cmd, VkPipelineStageFlags src_stage,
                    VkAccessFlags src_access, VkPipelineStageFlags dst_stage,
                    VkAccessFlags dst_access) {
    VkMemoryBarrier mb = {
        .sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
        .srcAccessMask = src_access,
        .dstAccessMask = dst_access,
    };
    vk->vk.vkCmdPipelineBarrier(cmd, src_stage, dst_stage, 0, 1, &mb, 0, NULL, 0, NULL);
}

void flp_vk_record_params_update(flp_vk *vk, VkCommandBuffer cmd, VkBuffer buffer,
                                 VkDeviceSize offset, VkDeviceSize size, const void *data) {
    /* Earlier work may still read (or write) what this run touches, the params slot included:
     * the update waits for it. */
    flp_vk_barrier(vk, cmd, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT,
                   VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT,
                   VK_PIPELINE_STAGE_TRANSFER_BIT | VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT,
                   VK_ACCESS_TRANSFER_WRITE_BIT | VK_ACCESS_SHADER_READ_BIT |
                       VK_ACCESS_SHADER_WRITE_BIT);
    vk->vk.vkCmdUpdateBuffer(cmd, buffer, offset, size, data);
    flp_vk_barrier(vk, cmd, VK_PIPELINE_STAGE_TRANSFER_BIT, VK_ACCESS_TRANSFER_WRITE_BIT,
                   VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, VK_ACCESS_SHADER_READ_BIT);
}

void flp_vk_record_user_params(flp_vk *vk, VkCommandBuffer cmd, const flp_params_slot *slot,
                               const flp_user_param *user) {
    const flp_vk_buffer *plan = slot->buffer->native;
    flp_vk_record_params_update(vk, cmd, plan->buffer, slot->offset, FLP_USER_PARAMS_BYTES, user);
}

flp_status flp_vk_record_run_begin(flp_vk *vk, const flp_params_slot *slot, const void *params,
                                   size_t size, flp_vk_recording *rec, uint64_t *params_address) {
    flp_status st = flp_vk_record_begin(vk, true, rec);
    if (st != FLP_OK)
        return st;
    const flp_vk_buffer *plan = slot->buffer->native;
    flp_vk_record_params_update(vk, rec->cmd, plan->buffer, slot->offset, size, params);
    *params_address = slot->buffer->device_address + slot->offset;
    return FLP_OK;
}

void flp_vk_record_merge(flp_vk *vk, VkCommandBuffer cmd, VkPipeline merge, uint32_t grid,
                         const uint64_t *params_address) {
    flp_vk_barrier(vk, cmd, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, VK_ACCESS_SHADER_WRITE_BIT,
                   VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT,
                   VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT);
    /* grid workgroups as x * y: the shader folds (x, y) back into one index */
    uint32_t max_x = vk->facts.limits.maxComputeWorkGroupCount[0];
    uint32_t x = grid < max_x ? grid : max_x;
    uint32_t y = (grid + x - 1) / x;
    vk->vk.vkCmdBindPipeline(cmd, VK_PIPELINE_BIND_POINT_COMPUTE, merge);
    if (params_address)
        vk->vk.vkCmdPushConstants(cmd, vk->pipeline_layout, VK_SHADER_STAGE_COMPUTE_BIT, 0,
                                  sizeof *params_address, params_address);
    vk->vk.vkCmdDispatch(cmd, x, y, 1);
}

flp_status flp_vk_record_finish(flp_vk *vk, flp_vk_recording *rec) {
    /* Whatever comes next (copies, the caller's own work) sees the outputs. */
    flp_vk_barrier(vk, rec->cmd, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, VK_ACCESS_SHADER_WRITE_BIT,
                   VK_PIPELINE_STAGE_ALL_COMMANDS_BIT,
                   VK_ACCESS_MEMORY_READ_BIT | VK_ACCESS_MEMORY_WRITE_BIT);
    return flp_vk_record_submit(vk, rec, false);
}
