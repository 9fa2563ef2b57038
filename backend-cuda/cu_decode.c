/* Decode on CUDA: grid size from occupancy and the launches (the parameter block goes by value,
 * so a captured CUDA graph holds it). The first run of a configuration loads its kernels. */
#include "backend-cuda/cu_backend.h"
#include "backend-cuda/kernels/decode_config.h"

int32_t flp_cu_decode_grid_size(flp_context *ctx, int32_t head_dim) {
    return flp_cu_resident_grid(ctx, "CUDA decode", head_dim, false);
}

flp_status flp_cu_decode_run(flp_context *ctx, const flp_decode_launch *launch) {
    static const char *fn = "flp_decode_run";
    flp_cu_state *st = flp_cu_state_of(ctx);
    const flp_cu_config *cfg = NULL;
    flp_status status =
        flp_cu_enter_launch(ctx, fn, launch->q_dtype, launch->kv_dtype, launch->head_dim, &cfg);
    if (status != FLP_OK)
        return status;
    const int kernel = flp_cu_decode_variant(launch);
    /* By value: cuLaunchKernel copies the parameter block (a captured graph keeps the copy). */
    void *args[] = {(void *)&launch->params};
    CUresult r = flp_cu_launch(st, cfg->decode[kernel], (unsigned)launch->num_ctas,
                               FLP_CU_DECODE_THREADS, cfg->smem_bytes[kernel], args);
    if (r != CUDA_SUCCESS) {
        flp_cu_leave(ctx);
        return flp_cu_fail(ctx, st->cu, r, "%s: cuLaunchKernel(decode, %d blocks, %u bytes)", fn,
                           (int)launch->num_ctas, cfg->smem_bytes[kernel]);
    }
    /* Always: the merge returns at once for requests the current plan does not split. */
    r = flp_cu_launch(st, cfg->merge, (unsigned)launch->merge_grid, FLP_CU_MERGE_THREADS,
                      FLP_CU_MERGE_SMEM_BYTES, args);
    flp_cu_leave(ctx);
    if (r != CUDA_SUCCESS)
        return flp_cu_fail(ctx, st->cu, r, "%s: cuLaunchKernel(merge, %d blocks)", fn,
                           (int)launch->merge_grid);
    return FLP_OK;
}
