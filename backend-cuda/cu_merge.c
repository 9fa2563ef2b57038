/* The public state merges on CUDA: one grid-stride launch, the parameter block by value. */
#include "backend-cuda/cu_backend.h"
#include "backend-cuda/kernels/prefill_config.h"

/* Any configuration's module holds the merge kernel (the shared unit): this one is loaded for
 * prefill anyway in the common case, as for the KV append. */
#define FLP_CU_STATE_MERGE_CONFIG_Q FLP_DTYPE_BF16
#define FLP_CU_STATE_MERGE_CONFIG_KV FLP_DTYPE_BF16
#define FLP_CU_STATE_MERGE_CONFIG_D 128

flp_status flp_cu_merge_run(flp_context *ctx, const flp_merge_params *params) {
    static const char *fn = "state merge";
    flp_cu_state *st = flp_cu_state_of(ctx);
    const flp_cu_config *cfg = NULL;
    flp_status status = flp_cu_enter_config(ctx, fn,
                                            flp_cu_config_index(FLP_CU_STATE_MERGE_CONFIG_Q,
                                                                FLP_CU_STATE_MERGE_CONFIG_KV,
                                                                FLP_CU_STATE_MERGE_CONFIG_D),
                                            &cfg);
    if (status != FLP_OK)
        return status;
    const unsigned blocks = flp_cu_state_merge_grid(params);
    void *args[] = {(void *)params};
    CUresult r = flp_cu_launch(st, cfg->state_merge, blocks, FLP_CU_STATE_MERGE_THREADS, 0, args);
    flp_cu_leave(ctx);
    if (r != CUDA_SUCCESS)
        return flp_cu_fail(ctx, st->cu, r, "cuLaunchKernel(state merge, %u blocks)", blocks);
    return FLP_OK;
}
