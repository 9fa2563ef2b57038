/* The public state merges on Vulkan (merge_states.comp): one dispatch per call, its
 * flp_merge_params written by vkCmdUpdateBuffer into a small buffer the context owns (made when
 * the backend opens, so a run allocates nothing). One slot, ordered by the same barriers as the
 * KV append's (vk_kv_append.c): each merge's update waits for all earlier compute work, which
 * includes the previous merge's reads of the slot. */
#include "vk_backend.h"

/* One workgroup per (row, head): 64 invocations cover head dims up to 64 in one pass, and
 * wider heads in a few passes (the state loop runs once per pass). */
#define FLP_VK_STATE_MERGE_THREADS 64u
#define FLP_VK_MERGE_SLOT_BYTES 256u
/* The most (passes x states) of a ragged row on a device with a loop budget: the state loop's
 * and the pass loop's exit passes count too, and this leaves them room below llvmpipe's
 * 65535. */
#define FLP_VK_MERGE_MAX_STATE_STEPS 60000u

_Static_assert(sizeof(flp_merge_params) <= FLP_VK_MERGE_SLOT_BYTES,
               "flp_merge_params no longer fits its slot");

flp_status flp_vk_merge_init(flp_vk *vk) {
    return flp_vk_small_buffer_create(vk, FLP_VK_MERGE_SLOT_BYTES, &vk->merge_params,
                                      &vk->merge_params_memory, &vk->merge_params_address);
}

void flp_vk_merge_destroy(flp_vk *vk) {
    flp_vk_small_buffer_destroy(vk, &vk->merge_params, &vk->merge_params_memory);
}

/* llvmpipe silently ends an invocation's loops after loop_budget iterations in total. An
 * invocation runs passes = ceil(head_dim / threads) passes, and in ragged mode each pass runs
 * the row's state loop; indptr lives on the device, so any row may hold all the states. */
static flp_status check_loop_budget(flp_context *ctx, const flp_merge_params *p) {
    const flp_vk *vk = ctx->backend;
    uint64_t budget = vk->facts.loop_budget;
    if (budget == 0)
        return FLP_OK;
    uint64_t passes =
        ((uint64_t)p->head_dim + FLP_VK_STATE_MERGE_THREADS - 1) / FLP_VK_STATE_MERGE_THREADS;
    /* gallivm counts every pass through a loop's end, the exiting one included */
    if (p->mode != FLP_MERGE_MODE_RAGGED) {
        if (passes + 1 <= budget)
            return FLP_OK;
        return flp_fail(ctx, FLP_ERROR_UNSUPPORTED,
                        "state merge with head_dim = %d needs %llu passes of %u invocations, "
                        "and llvmpipe ends every loop of a shader invocation after %llu "
                        "iterations in total",
                        p->head_dim, (unsigned long long)passes, FLP_VK_STATE_MERGE_THREADS,
                        (unsigned long long)budget);
    }
    uint64_t states = p->indptr ? (uint64_t)p->num_states : (uint64_t)p->states_per_row;
    uint64_t steps = passes * states;
    uint64_t iterations = passes * (states + 2) + 1;
    if (steps <= FLP_VK_MERGE_MAX_STATE_STEPS && iterations <= budget)
        return FLP_OK;
    return flp_fail(ctx, FLP_ERROR_UNSUPPORTED,
                    "ragged merge of up to %llu states per row (%s) with head_dim = %d: one "
                    "invocation would run %llu passes x %llu states = %llu state steps, %llu loop "
                    "iterations in all (this device takes at most %u steps: llvmpipe ends every "
                    "loop of a shader invocation after %llu iterations in total); merge fewer "
                    "states per row at a time",
                    (unsigned long long)states,
                    p->indptr ? "num_states, with indptr" : "states_per_row", p->head_dim,
                    (unsigned long long)passes, (unsigned long long)states,
                    (unsigned long long)steps, (unsigned long long)iterations,
                    FLP_VK_MERGE_MAX_STATE_STEPS, (unsigned long long)budget);
}

flp_status flp_vk_merge_run(flp_context *ctx, const flp_merge_params *p) {
    flp_vk *vk = ctx->backend;
    const VkPhysicalDeviceLimits *lim = &vk->facts.limits;
    /* units folded into an x * y * z grid, x first (the shader returns on u >= units) */
    uint64_t units = (uint64_t)p->rows * (uint64_t)p->num_heads;
    uint64_t x =
        units < lim->maxComputeWorkGroupCount[0] ? units : lim->maxComputeWorkGroupCount[0];
    uint64_t rest = (units + x - 1) / x;
    uint64_t y = rest < lim->maxComputeWorkGroupCount[1] ? rest : lim->maxComputeWorkGroupCount[1];
    uint64_t z = (rest + y - 1) / y;
    if (z > lim->maxComputeWorkGroupCount[2])
        return flp_fail(ctx, FLP_ERROR_UNSUPPORTED,
                        "state merge of %d rows x %d heads needs a %llux%llux%llu grid; the "
                        "device allows %ux%ux%u",
                        p->rows, p->num_heads, (unsigned long long)x, (unsigned long long)y,
                        (unsigned long long)z, lim->maxComputeWorkGroupCount[0],
                        lim->maxComputeWorkGroupCount[1], lim->maxComputeWorkGroupCount[2]);
    flp_status st = check_loop_budget(ctx, p);
    if (st != FLP_OK)
        return st;
    flp_vk_pipeline_key key = {.shader = FLP_VK_SHADER_MERGE_STATES,
                               .spec_count = FLP_SPEC_STATE_MERGE_COUNT};
    key.spec[FLP_SPEC_STATE_MERGE_THREADS] = FLP_VK_STATE_MERGE_THREADS;
    VkPipeline pipeline;
    if ((st = flp_vk_pipeline_get(vk, &key, &pipeline)) != FLP_OK)
        return st;

    flp_vk_recording rec;
    if ((st = flp_vk_record_begin(vk, true, &rec)) != FLP_OK)
        return st;
    VkCommandBuffer cmd = rec.cmd;
    /* Earlier work (the previous merge reading the slot, the runs that wrote the states) finishes
     * before the update and the merge. */
    flp_vk_record_params_update(vk, cmd, vk->merge_params, 0, sizeof *p, p);
    uint64_t address = vk->merge_params_address;
    vk->vk.vkCmdBindPipeline(cmd, VK_PIPELINE_BIND_POINT_COMPUTE, pipeline);
    vk->vk.vkCmdPushConstants(cmd, vk->pipeline_layout, VK_SHADER_STAGE_COMPUTE_BIT, 0,
                              sizeof address, &address);
    vk->vk.vkCmdDispatch(cmd, (uint32_t)x, (uint32_t)y, (uint32_t)z);
    return flp_vk_record_finish(vk, &rec);
}
