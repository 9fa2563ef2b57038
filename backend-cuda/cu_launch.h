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
/* Which decode kernel of a configuration a launch uses: 0 (4 query rows in registers) when the
 * plan's capacity max_qo_len * group_size is <= 4, else 1 (8 rows, looping over blocks of 8). */
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

#endif /* FLP_CUDA_CU_LAUNCH_H */
