/* Launch checks the decode and prefill kernels share: dtypes, grid sizes, the params slot in
 * the plan buffer and llvmpipe's loop budget; and the clamp of their grid sizes. `what` names the
 * kernel in messages ("decode", "prefill"). */
#include "vk_backend.h"

flp_status flp_vk_check_dtypes(flp_context *ctx, const char *what, int32_t q_dtype,
                               int32_t kv_dtype) {
    if (q_dtype != FLP_DTYPE_F16 && q_dtype != FLP_DTYPE_BF16)
        return flp_fail(ctx, FLP_ERROR_UNSUPPORTED,
                        "the Vulkan %s kernel takes f16 or bf16 queries, not %s", what,
                        flp_dtype_name((flp_dtype)q_dtype));
    if (kv_dtype != FLP_DTYPE_F16 && kv_dtype != FLP_DTYPE_BF16 && kv_dtype != FLP_DTYPE_E4M3 &&
        kv_dtype != FLP_DTYPE_E5M2)
        return flp_fail(ctx, FLP_ERROR_UNSUPPORTED,
                        "the Vulkan %s kernel takes f16, bf16, e4m3 or e5m2 KV, not %s", what,
                        flp_dtype_name((flp_dtype)kv_dtype));
    return FLP_OK;
}

flp_status flp_vk_check_grids(flp_context *ctx, const char *what, int32_t num_ctas,
                              const char *merge_what, int32_t merge_grid, int32_t min_merge_grid) {
    const flp_vk *vk = ctx->backend;
    const VkPhysicalDeviceLimits *lim = &vk->facts.limits;
    if (num_ctas < 1 || (uint32_t)num_ctas > lim->maxComputeWorkGroupCount[0])
        return flp_fail(ctx, FLP_ERROR_UNSUPPORTED,
                        "%s grid of %d workgroups is outside 1..%u (maxComputeWorkGroupCount)",
                        what, num_ctas, lim->maxComputeWorkGroupCount[0]);
    /* the merge dispatches x * y workgroups (flp_vk_record_merge) */
    uint64_t max_merge =
        (uint64_t)lim->maxComputeWorkGroupCount[0] * lim->maxComputeWorkGroupCount[1];
    if (merge_grid < min_merge_grid || (uint64_t)merge_grid > max_merge)
        return flp_fail(ctx, FLP_ERROR_UNSUPPORTED, "%s of %d workgroups is outside %d..%llu",
                        merge_what, merge_grid, min_merge_grid, (unsigned long long)max_merge);
    return FLP_OK;
}

flp_status flp_vk_check_params_slot(flp_context *ctx, const char *what,
                                    const flp_buffer *plan_buffer, uint64_t slot_offset,
                                    size_t params_size) {
    if (!plan_buffer || !plan_buffer->native || plan_buffer->ctx != ctx)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s launch without a plan buffer of this context", what);
    if (slot_offset % 8 != 0 || slot_offset + params_size > plan_buffer->size)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "params slot at byte %llu of a %zu-byte plan buffer (needs %zu bytes, "
                        "8-byte aligned)",
                        (unsigned long long)slot_offset, plan_buffer->size, params_size);
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
