/* Prefill on CUDA: grid size from occupancy and the launches (the sm_90a kernel where it
 * applies, cu_prefill_sm90.c, else the sm_80 kernel of the plan's query tile) (the parameter block
 * by value, so a captured CUDA graph holds it; everything a re-plan changes is read by the kernels
 * from plan memory). The first run of a configuration loads its kernels. */
#include "backend-cuda/cu_backend.h"

int32_t flp_cu_prefill_grid_size(flp_context *ctx, int32_t head_dim) {
    return flp_cu_resident_grid(ctx, "CUDA prefill", head_dim, true);
}

flp_status flp_cu_prefill_run(flp_context *ctx, const flp_prefill_launch *launch) {
    static const char *fn = "flp_prefill_run";
    flp_cu_state *st = flp_cu_state_of(ctx);
    const flp_cu_config *cfg = NULL;
    flp_status status =
        flp_cu_enter_launch(ctx, fn, launch->q_dtype, launch->kv_dtype, launch->head_dim, &cfg);
    if (status != FLP_OK)
        return status;
    CUresult r;
    flp_prefill90_params params90;
    if (flp_cu_prefill90_params(ctx, st->cu, cfg, launch, &params90)) {
        /* persistent: at most one block per SM, each walking lists blockIdx.x + k * grid */
        const int32_t grid = launch->num_ctas < st->sm_count ? launch->num_ctas : st->sm_count;
        void *args90[] = {(void *)&params90};
        r = flp_cu_launch(st, cfg->prefill90, (unsigned)grid, FLP_CU_PREFILL90_THREADS,
                          cfg->prefill90_smem, args90);
        if (r != CUDA_SUCCESS) {
            flp_cu_leave(ctx);
            return flp_cu_fail(ctx, st->cu, r,
                               "%s: cuLaunchKernel(sm_90a prefill, %d blocks, %u bytes)", fn,
                               (int)grid, cfg->prefill90_smem);
        }
    } else {
        const int ti = flp_cu_prefill_tile_index(launch->q_tile);
        const unsigned threads =
            (unsigned)FLP_CU_PREFILL_THREADS((int)launch->head_dim, FLP_CU_PREFILL_TILE(ti));
        void *args[] = {(void *)&launch->params};
        r = flp_cu_launch(st, cfg->prefill[ti], (unsigned)launch->num_ctas, threads,
                          cfg->prefill_smem[ti], args);
        if (r != CUDA_SUCCESS) {
            flp_cu_leave(ctx);
            return flp_cu_fail(ctx, st->cu, r, "%s: cuLaunchKernel(prefill, %d blocks, %u bytes)",
                               fn, (int)launch->num_ctas, cfg->prefill_smem[ti]);
        }
    }
    /* Always (when the plan can split at all): the merge returns at once without merge
     * items. */
    if (launch->merge_grid > 0) {
        void *args[] = {(void *)&launch->params};
        r = flp_cu_launch(st, cfg->prefill_merge, (unsigned)launch->merge_grid,
                          FLP_CU_PREFILL_MERGE_THREADS, 0, args);
        if (r != CUDA_SUCCESS) {
            flp_cu_leave(ctx);
            return flp_cu_fail(ctx, st->cu, r, "%s: cuLaunchKernel(prefill merge, %d blocks)", fn,
                               (int)launch->merge_grid);
        }
    }
    flp_cu_leave(ctx);
    return FLP_OK;
}
