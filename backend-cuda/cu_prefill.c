/* Prefill on CUDA: grid size from occupancy, launch checks, and the launches (the parameter
 * block by value, so a captured CUDA graph holds it; everything a re-plan changes is read by
 * the kernels from plan memory). */
#include "backend-cuda/cu_backend.h"

/* The configuration whose occupancy sizes the grid of a head_dim: all dtype pairs of a head_dim
 * share block shapes and launch bounds (mixed-type pairs stage K/V and need more shared
 * memory, so fewer of their blocks may be resident at once: the persistent loop is correct for
 * any grid, blocks then run in waves). */
#define FLP_CU_GRID_Q FLP_DTYPE_BF16
#define FLP_CU_GRID_KV FLP_DTYPE_BF16

/* On failure: the (negative) flp_status, with the reason in ctx's last error. */
int32_t flp_cu_prefill_grid_size(flp_context *ctx, int32_t head_dim) {
    flp_cu_state *st = flp_cu_state_of(ctx);
    int index = flp_cu_config_index(FLP_CU_GRID_Q, FLP_CU_GRID_KV, head_dim);
    if (index < 0)
        return flp_fail(ctx, FLP_ERROR_UNSUPPORTED,
                        "CUDA prefill: head_dim %d has no kernel (64, 128, 256)", (int)head_dim);
    flp_status status = flp_cu_enter(ctx, "CUDA prefill grid");
    if (status != FLP_OK)
        return status;
    const flp_cu_config *cfg = NULL;
    status = flp_cu_config_get(ctx, index, &cfg);
    flp_cu_leave(ctx);
    if (status != FLP_OK)
        return status;
    /* Persistent blocks, all resident at once: SMs x resident tile-128 blocks. */
    return (int32_t)st->sm_count * (int32_t)cfg->prefill_max_blocks;
}

flp_status flp_cu_prefill_check(flp_context *ctx, const flp_prefill_launch *launch) {
    flp_status status = flp_cu_prefill_validate(ctx, launch);
    if (status != FLP_OK)
        return status;
    /* Load (or build) the kernels now rather than in run. */
    status = flp_cu_enter(ctx, "CUDA prefill");
    if (status != FLP_OK)
        return status;
    const flp_cu_config *cfg = NULL;
    status = flp_cu_config_get(
        ctx, flp_cu_config_index(launch->q_dtype, launch->kv_dtype, launch->head_dim), &cfg);
    flp_cu_leave(ctx);
    return status;
}

flp_status flp_cu_prefill_run(flp_context *ctx, const flp_prefill_launch *launch) {
    static const char *fn = "flp_prefill_run";
    flp_cu_state *st = flp_cu_state_of(ctx);
    int index = flp_cu_config_index(launch->q_dtype, launch->kv_dtype, launch->head_dim);
    if (index < 0)
        return flp_fail(ctx, FLP_ERROR_UNSUPPORTED, "%s: unchecked launch (no kernel)", fn);
    flp_status status = flp_cu_enter(ctx, fn);
    if (status != FLP_OK)
        return status;
    const flp_cu_config *cfg = NULL;
    status = flp_cu_config_get(ctx, index, &cfg); /* already loaded by prefill_check */
    if (status != FLP_OK) {
        flp_cu_leave(ctx);
        return status;
    }
    const int ti = flp_cu_prefill_tile_index(launch->q_tile);
    const unsigned threads =
        (unsigned)FLP_CU_PREFILL_THREADS((int)launch->head_dim, FLP_CU_PREFILL_TILE(ti));
    void *args[] = {(void *)&launch->params};
    CUresult r = st->cu->cuLaunchKernel(cfg->prefill[ti], (unsigned)launch->num_ctas, 1, 1, threads,
                                        1, 1, cfg->prefill_smem[ti], st->stream, args, NULL);
    if (r != CUDA_SUCCESS) {
        flp_cu_leave(ctx);
        return flp_cu_fail(ctx, st->cu, r, "%s: cuLaunchKernel(prefill, %d blocks, %u bytes)", fn,
                           (int)launch->num_ctas, cfg->prefill_smem[ti]);
    }
    /* Always (when the plan can split at all): the merge returns at once without merge
     * items. */
    if (launch->merge_grid > 0) {
        r = st->cu->cuLaunchKernel(cfg->prefill_merge, (unsigned)launch->merge_grid, 1, 1,
                                   FLP_CU_PREFILL_MERGE_THREADS, 1, 1, 0, st->stream, args, NULL);
        if (r != CUDA_SUCCESS) {
            flp_cu_leave(ctx);
            return flp_cu_fail(ctx, st->cu, r, "%s: cuLaunchKernel(prefill merge, %d blocks)", fn,
                               (int)launch->merge_grid);
        }
    }
    flp_cu_leave(ctx);
    return FLP_OK;
}
