/* KV append on CUDA: one grid-stride launch, the parameter block by value. */
#include "backend-cuda/cu_backend.h"

/* Any configuration's module holds the append kernel: this one is loaded for prefill anyway
 * in the common case. */
#define FLP_CU_APPEND_CONFIG_Q FLP_DTYPE_BF16
#define FLP_CU_APPEND_CONFIG_KV FLP_DTYPE_BF16
#define FLP_CU_APPEND_CONFIG_D 128

flp_status flp_cu_kv_append_run(flp_context *ctx, const flp_kv_append_params *params) {
    static const char *fn = "flp_kv_append";
    flp_cu_state *st = flp_cu_state_of(ctx);
    const flp_cu_config *cfg = NULL;
    flp_status status =
        flp_cu_enter_config(ctx, fn,
                            flp_cu_config_index(FLP_CU_APPEND_CONFIG_Q, FLP_CU_APPEND_CONFIG_KV,
                                                FLP_CU_APPEND_CONFIG_D),
                            &cfg);
    if (status != FLP_OK)
        return status;
    const unsigned blocks = flp_cu_kv_append_grid(params);
    void *args[] = {(void *)params};
    CUresult r = flp_cu_launch(st, cfg->kv_append, blocks, FLP_CU_KV_APPEND_THREADS, 0, args);
    flp_cu_leave(ctx);
    if (r != CUDA_SUCCESS)
        return flp_cu_fail(ctx, st->cu, r, "%s: cuLaunchKernel(kv append, %u blocks)", fn, blocks);
    return FLP_OK;
}
