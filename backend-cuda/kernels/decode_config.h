/* Launch configuration of the CUDA decode kernels, shared by the kernels (nvcc and NVRTC) and
 * the host code that launches them, so both agree on block size and shared memory. Plain C
 * preprocessor only. */
#ifndef FLP_CUDA_DECODE_CONFIG_H
#define FLP_CUDA_DECODE_CONFIG_H

/* dtype codes: the flp_dtype values (the host checks they match). */
#include "core/kernel_constants.h"

#define FLP_CU_DECODE_WARPS 4
#define FLP_CU_DECODE_THREADS (32 * FLP_CU_DECODE_WARPS)
/* KV elements each lane loads per token: 16 bytes of f16/bf16, 8 bytes of fp8. */
#define FLP_CU_DECODE_VEC 8
/* Steps (one token per lane group) held in each warp's shared-memory ring, over all stages. */
#define FLP_CU_DECODE_RING_STEPS 12
/* Shared memory after the ring/merge area: RoPE frequencies [head_dim / 2] and per-row data. */
#define FLP_CU_DECODE_AUX_BYTES 1024
#define FLP_CU_MERGE_THREADS 128
/* The merge's shared memory: one partial fold (struct chunk_merge4, 6 floats) per thread. */
#define FLP_CU_MERGE_SMEM_BYTES (FLP_CU_MERGE_THREADS * 6 * 4)

/* Query rows (query heads x query tokens) held in registers at once: kernels exist for 4 and
 * 8; the host picks 4 when qo_len * group_size <= 4. */
#define FLP_CU_DECODE_ROWS_SMALL 4
#define FLP_CU_DECODE_ROWS_LARGE 8

#define FLP_CU_MAX_(a, b) ((a) > (b) ? (a) : (b))
#define FLP_CU_MIN_(a, b) ((a) < (b) ? (a) : (b))
/* K and V rings of all warps. */
#define FLP_CU_DECODE_RING_BYTES(kv_bytes)                                                         \
    (FLP_CU_DECODE_WARPS * FLP_CU_DECODE_RING_STEPS * 32 * FLP_CU_DECODE_VEC * (kv_bytes)*2)
/* Cross-warp merge: acc [warps][rows][head_dim], then m and l [warps][rows] (f32). Reuses the
 * ring. */
#define FLP_CU_DECODE_MERGE_BYTES(head_dim, rows)                                                  \
    (FLP_CU_DECODE_WARPS * (rows) * ((head_dim) + 2) * 4)
/* Dynamic shared memory of one decode block. */
#define FLP_CU_DECODE_SMEM_BYTES(kv_bytes, head_dim, rows)                                         \
    (FLP_CU_MAX_(FLP_CU_DECODE_RING_BYTES(kv_bytes), FLP_CU_DECODE_MERGE_BYTES(head_dim, rows)) +  \
     FLP_CU_DECODE_AUX_BYTES)

/* The tensor-core decode kernel (decode_mma.cuh) exists for a 16-bit cache of the query dtype
 * and for fp8 caches; it does not fuse RoPE. */
#define FLP_CU_DECODE_MMA_DTYPES(q_dtype, kv_dtype)                                                \
    ((q_dtype) == (kv_dtype) || (kv_dtype) == FLP_DT_E4M3 || (kv_dtype) == FLP_DT_E5M2)
/* The tensor-core decode kernel: 8 query rows per pass; each warp streams its
 * keys in stages of FLP_CU_DECODE_MMA_KEYS (one m16 tile of K and one of V) through a ring of
 * about FLP_CU_DECODE_MMA_RING_BYTES per warp, 2 to 8 stages. */
#define FLP_CU_DECODE_MMA_KEYS 16
#define FLP_CU_DECODE_MMA_RING_BYTES 24576
#define FLP_CU_DECODE_MMA_STAGE_BYTES(kv_bytes, head_dim)                                          \
    (2 * FLP_CU_DECODE_MMA_KEYS * (head_dim) * (kv_bytes))
#define FLP_CU_DECODE_MMA_STAGES(kv_bytes, head_dim)                                               \
    FLP_CU_MAX_(2, FLP_CU_MIN_(8, FLP_CU_DECODE_MMA_RING_BYTES /                                   \
                                      FLP_CU_DECODE_MMA_STAGE_BYTES(kv_bytes, head_dim)))
#define FLP_CU_DECODE_MMA_MAIN_BYTES(kv_bytes, head_dim)                                           \
    FLP_CU_MAX_(FLP_CU_DECODE_WARPS *FLP_CU_DECODE_MMA_STAGES(kv_bytes, head_dim) *                \
                    FLP_CU_DECODE_MMA_STAGE_BYTES(kv_bytes, head_dim),                             \
                FLP_CU_DECODE_MERGE_BYTES(head_dim, FLP_CU_DECODE_ROWS_LARGE))
#define FLP_CU_DECODE_MMA_SMEM_BYTES(kv_bytes, head_dim)                                           \
    (FLP_CU_DECODE_MMA_MAIN_BYTES(kv_bytes, head_dim) + FLP_CU_DECODE_AUX_BYTES)

#endif /* FLP_CUDA_DECODE_CONFIG_H */
