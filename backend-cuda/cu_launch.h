/* The driver-free part of a CUDA launch: which kernel serves a launch, its block and grid
 * shapes. Shared by the backend and the host emulator (backend-cuda/emulate/), so it needs no
 * CUDA header. What the kernels assume of their arguments (16-byte aligned rows, element-aligned
 * lse, dtypes and head dims with a kernel) the core has checked before any launch reaches here
 * (docs/design.md, "Launch contract"). */
#ifndef FLP_CUDA_CU_LAUNCH_H
#define FLP_CUDA_CU_LAUNCH_H

#include "core/backend.h"

/* Kernel configurations: (q dtype, kv dtype, head_dim). */
#define FLP_CU_NUM_Q 2
#define FLP_CU_NUM_KV 4
#define FLP_CU_NUM_HEAD_DIMS 3
#define FLP_CU_NUM_CONFIGS (FLP_CU_NUM_Q * FLP_CU_NUM_KV * FLP_CU_NUM_HEAD_DIMS)

/* Index of a configuration, or -1 when no kernel exists for it. */
int flp_cu_config_index(int32_t q_dtype, int32_t kv_dtype, int32_t head_dim);
/* The configuration of an index (0 <= index < FLP_CU_NUM_CONFIGS). */
void flp_cu_config_of(int index, int32_t *q_dtype, int32_t *kv_dtype, int32_t *head_dim);
/* Name of a decode kernel ("flp_decode_bf16_e4m3_d128_r4") or, with rows 0, of the merge
 * kernel of q_dtype ("flp_decode_merge_bf16"), into buf; false for an unknown configuration. */
bool flp_cu_kernel_name(int32_t q_dtype, int32_t kv_dtype, int32_t head_dim, int rows, char *buf,
                        size_t size);
/* The decode kernels of a configuration (flp_cu_config.decode[]). */
enum {
    FLP_CU_DECODE_CORES_SMALL = 0, /* CUDA cores, 4 query rows in registers */
    FLP_CU_DECODE_CORES_LARGE = 1, /* CUDA cores, 8 rows, looping over blocks of 8 */
    FLP_CU_DECODE_TENSOR = 2,      /* tensor cores (kernels/decode_mma.cuh), blocks of 8 rows */
    FLP_CU_DECODE_NUM_KERNELS = 3
};
/* Name of decode kernel `kernel` of a configuration ("flp_decode_bf16_e4m3_d128_m8"); false
 * for an unknown configuration or kernel. */
bool flp_cu_decode_kernel_name(int32_t q_dtype, int32_t kv_dtype, int32_t head_dim, int kernel,
                               char *buf, size_t size);
/* Dynamic shared memory of decode kernel `kernel` of a configuration. */
unsigned flp_cu_decode_smem_bytes(int32_t kv_dtype, int32_t head_dim, int kernel);
/* Which decode kernel a launch uses, by the plan's dtypes and capacities (a captured launch keeps
 * it across re-plans): the tensor-core kernel for a 16-bit cache of the query dtype and for fp8
 * caches (it runs the CUDA-core algorithm itself when a re-plan turns RoPE on), unless the
 * environment sets FLP_CUDA_DECODE_CORES=1; otherwise the CUDA-core kernel with 4 rows in
 * registers when max_qo_len * group_size <= 4, else the one with 8. */
int flp_cu_decode_variant(const flp_decode_launch *launch);

/* ---- prefill, merge and KV append (kernels/prefill_config.h) ---- */

/* Kernel index (0, 1, 2: tiles 16, 64, 128) of a launch's q_tile hint. */
int flp_cu_prefill_tile_index(int32_t q_tile);
/* Name of a prefill kernel ("flp_prefill_bf16_e4m3_d128_t64") or, with tile 0, of the prefill
 * merge kernel of q_dtype ("flp_prefill_merge_bf16"); false for an unknown configuration. */
bool flp_cu_prefill_kernel_name(int32_t q_dtype, int32_t kv_dtype, int32_t head_dim, int tile,
                                char *buf, size_t size);
/* Dynamic shared memory of a prefill kernel. */
unsigned flp_cu_prefill_smem_bytes(int32_t q_dtype, int32_t kv_dtype, int32_t head_dim, int tile);
/* Blocks of a KV append launch (grid-stride kernel), >= 1. */
unsigned flp_cu_kv_append_grid(const flp_kv_append_params *params);
/* Blocks of a state-merge launch (a warp per row and head, grid-stride), >= 1. */
unsigned flp_cu_state_merge_grid(const flp_merge_params *params);

#endif /* FLP_CUDA_CU_LAUNCH_H */
