/* The KV append on Vulkan (kv_append.comp): one dispatch per call, its flp_kv_append_params
 * written by vkCmdUpdateBuffer into a small buffer the context owns (made when the backend
 * opens, so a run allocates nothing).
 *
 * One params slot, guarded by barriers: each recorded append first waits for all earlier compute
 * work (which includes the previous append's reads of the slot) before its update, and its
 * dispatch waits for the update. So several appends recorded into one command buffer (one per
 * layer), or submitted back to back, each read their own parameters. A ring of slots would
 * spare the wait only where nothing else orders the appends, but every run of this backend
 * already starts with that same barrier (a later append may overwrite K/V rows an earlier
 * attention run still reads), so a ring would buy nothing and would still need the barrier
 * once it wraps around. */
#include "vk_backend.h"

#include <string.h>

#define FLP_VK_APPEND_THREADS 64u
#define FLP_VK_APPEND_SLOT_BYTES 256u

_Static_assert(sizeof(flp_kv_append_params) <= FLP_VK_APPEND_SLOT_BYTES,
               "flp_kv_append_params no longer fits its slot");

flp_status flp_vk_kv_append_init(flp_vk *vk) {
    return flp_vk_small_buffer_create(vk, FLP_VK_APPEND_SLOT_BYTES, &vk->append_params,
                                      &vk->append_params_memory, &vk->append_params_address);
}

void flp_vk_kv_append_destroy(flp_vk *vk) {
    flp_vk_small_buffer_destroy(vk, &vk->append_params, &vk->append_params_memory);
}

flp_status flp_vk_kv_append_run(flp_context *ctx, const flp_kv_append_params *p) {
    flp_vk *vk = ctx->backend;
    const VkPhysicalDeviceLimits *lim = &vk->facts.limits;
    uint64_t units = (uint64_t)p->num_kv_heads * (uint64_t)(p->head_dim / 4);
    uint64_t x = (units + FLP_VK_APPEND_THREADS - 1) / FLP_VK_APPEND_THREADS;
    uint64_t y = (uint64_t)p->nnz < lim->maxComputeWorkGroupCount[1]
                     ? (uint64_t)p->nnz
                     : lim->maxComputeWorkGroupCount[1];
    uint64_t z = ((uint64_t)p->nnz + y - 1) / y;
    if (x > lim->maxComputeWorkGroupCount[0] || z > lim->maxComputeWorkGroupCount[2])
        return flp_fail(ctx, FLP_ERROR_UNSUPPORTED,
                        "KV append of %d rows x %d heads needs a %llux%llux%llu grid; the "
                        "device allows %ux%ux%u",
                        p->nnz, p->num_kv_heads, (unsigned long long)x, (unsigned long long)y,
                        (unsigned long long)z, lim->maxComputeWorkGroupCount[0],
                        lim->maxComputeWorkGroupCount[1], lim->maxComputeWorkGroupCount[2]);
    flp_vk_pipeline_key key = {.shader = FLP_VK_SHADER_KV_APPEND,
                               .spec_count = FLP_SPEC_APPEND_COUNT};
    key.spec[FLP_SPEC_APPEND_THREADS] = FLP_VK_APPEND_THREADS;
    VkPipeline pipeline;
    flp_status st = flp_vk_pipeline_get(vk, &key, &pipeline);
    if (st != FLP_OK)
        return st;

    flp_vk_recording rec;
    if ((st = flp_vk_record_begin(vk, true, &rec)) != FLP_OK)
        return st;
    VkCommandBuffer cmd = rec.cmd;
    /* Earlier work (the previous append reading the slot, attention runs reading the caches)
     * finishes before the update and the writes. */
    flp_vk_record_params_update(vk, cmd, vk->append_params, 0, sizeof *p, p);
    uint64_t address = vk->append_params_address;
    vk->vk.vkCmdBindPipeline(cmd, VK_PIPELINE_BIND_POINT_COMPUTE, pipeline);
    vk->vk.vkCmdPushConstants(cmd, vk->pipeline_layout, VK_SHADER_STAGE_COMPUTE_BIT, 0,
                              sizeof address, &address);
    vk->vk.vkCmdDispatch(cmd, (uint32_t)x, (uint32_t)y, (uint32_t)z);
    return flp_vk_record_finish(vk, &rec);
}
