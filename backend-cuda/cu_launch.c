/* Kernel configurations, names and launch checks (no CUDA header needed). */
#include "backend-cuda/cu_launch.h"
#include "backend-cuda/kernels/decode_config.h"
#include "backend-cuda/kernels/prefill_config.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const int32_t q_dtypes[FLP_CU_NUM_Q] = {FLP_DTYPE_F16, FLP_DTYPE_BF16};
static const int32_t kv_dtypes[FLP_CU_NUM_KV] = {FLP_DTYPE_F16, FLP_DTYPE_BF16, FLP_DTYPE_E4M3,
                                                 FLP_DTYPE_E5M2};
static const int32_t head_dims[FLP_CU_NUM_HEAD_DIMS] = {64, 128, 256};

static int find(const int32_t *list, int n, int32_t v) {
    for (int i = 0; i < n; i++)
        if (list[i] == v)
            return i;
    return -1;
}

int flp_cu_config_index(int32_t q_dtype, int32_t kv_dtype, int32_t head_dim) {
    int q = find(q_dtypes, FLP_CU_NUM_Q, q_dtype);
    int kv = find(kv_dtypes, FLP_CU_NUM_KV, kv_dtype);
    int d = find(head_dims, FLP_CU_NUM_HEAD_DIMS, head_dim);
    if (q < 0 || kv < 0 || d < 0)
        return -1;
    return (q * FLP_CU_NUM_KV + kv) * FLP_CU_NUM_HEAD_DIMS + d;
}

void flp_cu_config_of(int index, int32_t *q, int32_t *kv, int32_t *d) {
    *d = head_dims[index % FLP_CU_NUM_HEAD_DIMS];
    *kv = kv_dtypes[index / FLP_CU_NUM_HEAD_DIMS % FLP_CU_NUM_KV];
    *q = q_dtypes[index / (FLP_CU_NUM_HEAD_DIMS * FLP_CU_NUM_KV)];
}

/* The dtype names the kernels are instantiated under (kernels/flashport_kernels.cu) of a
 * configuration; false when no kernel exists for it. */
static bool dtype_names(int32_t q_dtype, int32_t kv_dtype, int32_t head_dim, const char **q,
                        const char **kv) {
    static const char *const q_names[FLP_CU_NUM_Q] = {"f16", "bf16"};
    static const char *const kv_names[FLP_CU_NUM_KV] = {"f16", "bf16", "e4m3", "e5m2"};
    if (flp_cu_config_index(q_dtype, kv_dtype, head_dim) < 0)
        return false;
    *q = q_names[find(q_dtypes, FLP_CU_NUM_Q, q_dtype)];
    *kv = kv_names[find(kv_dtypes, FLP_CU_NUM_KV, kv_dtype)];
    return true;
}

bool flp_cu_kernel_name(int32_t q_dtype, int32_t kv_dtype, int32_t head_dim, int rows, char *buf,
                        size_t size) {
    const char *q, *kv;
    if (!dtype_names(q_dtype, kv_dtype, head_dim, &q, &kv))
        return false;
    if (rows == 0) {
        snprintf(buf, size, "flp_decode_merge_%s", q);
        return true;
    }
    if (rows != FLP_CU_DECODE_ROWS_SMALL && rows != FLP_CU_DECODE_ROWS_LARGE)
        return false;
    snprintf(buf, size, "flp_decode_%s_%s_d%d_r%d", q, kv, (int)head_dim, rows);
    return true;
}

bool flp_cu_decode_kernel_name(int32_t q_dtype, int32_t kv_dtype, int32_t head_dim, int kernel,
                               char *buf, size_t size) {
    switch (kernel) {
    case FLP_CU_DECODE_CORES_SMALL:
        return flp_cu_kernel_name(q_dtype, kv_dtype, head_dim, FLP_CU_DECODE_ROWS_SMALL, buf, size);
    case FLP_CU_DECODE_CORES_LARGE:
        return flp_cu_kernel_name(q_dtype, kv_dtype, head_dim, FLP_CU_DECODE_ROWS_LARGE, buf, size);
    case FLP_CU_DECODE_TENSOR: {
        const char *q, *kv;
        if (!dtype_names(q_dtype, kv_dtype, head_dim, &q, &kv))
            return false;
        snprintf(buf, size, "flp_decode_%s_%s_d%d_m%d", q, kv, (int)head_dim,
                 FLP_CU_DECODE_ROWS_LARGE);
        return true;
    }
    default:
        return false;
    }
}

unsigned flp_cu_decode_smem_bytes(int32_t kv_dtype, int32_t head_dim, int kernel) {
    const int kv_bytes = (int)flp_dtype_size((flp_dtype)kv_dtype);
    if (kernel == FLP_CU_DECODE_TENSOR)
        return (unsigned)FLP_CU_DECODE_MMA_SMEM_BYTES(kv_bytes, (int)head_dim);
    const int rows =
        kernel == FLP_CU_DECODE_CORES_SMALL ? FLP_CU_DECODE_ROWS_SMALL : FLP_CU_DECODE_ROWS_LARGE;
    return (unsigned)FLP_CU_DECODE_SMEM_BYTES(kv_bytes, (int)head_dim, rows);
}

/* FLP_CUDA_DECODE_CORES=1: the CUDA-core decode kernels only (tests and benchmarks of both);
 * read once. */
static bool decode_cores_forced(void) {
    static atomic_int forced = -1;
    int v = atomic_load_explicit(&forced, memory_order_relaxed);
    if (v < 0) {
        const char *e = getenv("FLP_CUDA_DECODE_CORES");
        v = e && strcmp(e, "1") == 0;
        atomic_store_explicit(&forced, v, memory_order_relaxed);
    }
    return v != 0;
}

int flp_cu_decode_variant(const flp_decode_launch *launch) {
    /* By capacity, not by the current plan: a captured launch keeps its kernel across re-plans
     * (every kernel handles any number of rows, and the tensor-core one RoPE through the
     * CUDA-core algorithm; this only picks the faster one). */
    if (FLP_CU_DECODE_MMA_DTYPES(launch->q_dtype, launch->kv_dtype) && !decode_cores_forced())
        return FLP_CU_DECODE_TENSOR;
    const int64_t rows = (int64_t)launch->max_qo_len * launch->group_size;
    return rows > FLP_CU_DECODE_ROWS_SMALL ? FLP_CU_DECODE_CORES_LARGE : FLP_CU_DECODE_CORES_SMALL;
}

/* ---- prefill ------------------------------------------------------------------------------ */

int flp_cu_prefill_tile_index(int32_t q_tile) {
    return q_tile <= 16 ? 0 : q_tile <= 64 ? 1 : 2;
}

bool flp_cu_prefill_kernel_name(int32_t q_dtype, int32_t kv_dtype, int32_t head_dim, int tile,
                                char *buf, size_t size) {
    const char *q, *kv;
    if (!dtype_names(q_dtype, kv_dtype, head_dim, &q, &kv))
        return false;
    if (tile == 0) {
        snprintf(buf, size, "flp_prefill_merge_%s", q);
        return true;
    }
    if (tile != 16 && tile != 64 && tile != 128)
        return false;
    snprintf(buf, size, "flp_prefill_%s_%s_d%d_t%d", q, kv, (int)head_dim, tile);
    return true;
}

unsigned flp_cu_prefill_smem_bytes(int32_t q_dtype, int32_t kv_dtype, int32_t head_dim, int tile) {
    const int kvb = (int)flp_dtype_size((flp_dtype)kv_dtype);
    const int staged = FLP_CU_PREFILL_STAGED(q_dtype, kv_dtype) ? 1 : 0;
    return (unsigned)FLP_CU_PREFILL_SMEM_BYTES((int)head_dim, tile, kvb, staged);
}

unsigned flp_cu_state_merge_grid(const flp_merge_params *params) {
    const int64_t units = (int64_t)params->rows * params->num_heads;
    const int64_t per_block = FLP_CU_STATE_MERGE_THREADS / 32;
    int64_t blocks = (units + per_block - 1) / per_block;
    if (blocks > 4096) /* grid-stride beyond */
        blocks = 4096;
    return blocks < 1 ? 1u : (unsigned)blocks;
}

unsigned flp_cu_kv_append_grid(const flp_kv_append_params *params) {
    const int64_t total = (int64_t)params->nnz * params->num_kv_heads * params->head_dim;
    int64_t blocks = (total + FLP_CU_KV_APPEND_THREADS - 1) / FLP_CU_KV_APPEND_THREADS;
    if (blocks > 4096) /* grid-stride beyond */
        blocks = 4096;
    return blocks < 1 ? 1u : (unsigned)blocks;
}
