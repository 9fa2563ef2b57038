/* The device limits decode and prefill launches share: the merge grid and llvmpipe's loop budget;
 * and the clamp of the attention grids. `what` names the kernel in messages ("decode",
 * "prefill"). */
#include "vk_backend.h"

flp_status flp_vk_check_merge_grid(flp_context *ctx, const char *what, int32_t merge_grid) {
    const VkPhysicalDeviceLimits *lim = &((const flp_vk *)ctx->backend)->facts.limits;
    /* the merge dispatches x * y workgroups (flp_vk_record_merge) */
    uint64_t max_merge =
        (uint64_t)lim->maxComputeWorkGroupCount[0] * lim->maxComputeWorkGroupCount[1];
    if ((uint64_t)merge_grid > max_merge)
        return flp_fail(ctx, FLP_ERROR_UNSUPPORTED,
                        "%s grid of %d workgroups exceeds what the device dispatches (%llu): plan "
                        "fewer requests or query heads",
                        what, merge_grid, (unsigned long long)max_merge);
    return FLP_OK;
}

flp_status flp_vk_check_workgroup_loops(flp_vk *vk, const char *what, int32_t cta, int32_t ctas,
                                        uint64_t iterations) {
    uint32_t budget = vk->facts.loop_budget;
    if (budget == 0 || iterations <= budget)
        return FLP_OK;
    return flp_fail(vk->ctx, FLP_ERROR_UNSUPPORTED,
                    "this %s plan is too large for the device: workgroup %d of %d would run %llu "
                    "loop iterations, and llvmpipe ends every loop of a shader invocation after "
                    "%u iterations in total (its infinite-loop guard); plan fewer or shorter "
                    "requests at a time",
                    what, (int)cta, (int)ctas, (unsigned long long)iterations, budget);
}

int32_t flp_vk_clamp_grid(const flp_vk *vk, int64_t grid) {
    int64_t max = vk->facts.limits.maxComputeWorkGroupCount[0];
    if (grid > max)
        grid = max;
    return grid > 0 ? (int32_t)grid : 1;
}
