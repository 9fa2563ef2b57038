/* Launch shapes and parameters of the sm_90a prefill kernel (prefill_sm90.cuh), shared by the
 * kernel (nvcc and NVRTC) and the host code that launches it (cu_prefill_sm90.c). Plain C.
 *
 * A block is three warpgroups: warpgroup 0 produces (one warp issues the TMA copies of K/V
 * blocks into a ring of FLP_CU_PREFILL90_STAGES stages), warpgroups 1 and 2 consume (64 packed
 * query rows each of a pass of 128, both matrix products on wgmma). Shared memory, from a
 * 1024-byte aligned base (the 128-byte swizzle repeats every 1024 bytes):
 *   q       [2][D / 64][64][64]   compute type, one [64 rows] tile per consumer warpgroup
 *   k       [STAGES][D / 64][KN][64]
 *   v       [STAGES][D / 64][KN][64]
 *   barriers u64 [4][STAGES]      K full, V full, K empty, V empty
 *   freq    f32 [D / 2]           RoPE frequencies
 *   rows    i64 [KN]              element offsets of the rows being gathered
 *                                 (FLP_CU_KV_MAP_GATHER; -1: zeros); with fp8 K/V (never
 *                                 gathered), the raw ring's barriers: u64 [2][RAW_STAGES] full,
 *                                 empty
 * and with fp8 K/V, from the next 1024-byte boundary:
 *   raw     [RAW_STAGES][KN][D]   fp8 K and V tiles in turn (K0, V0, K1, ...) as TMA lands
 *                                 them, swizzled over D bytes (a row): 16-byte chunk c of
 *                                 row r at c ^ (r % 8) at D = 128 (128-byte swizzle), at
 *                                 (c ^ (r / 2 % 4)) of its 64 bytes at D = 64 (64-byte swizzle)
 * Every [rows][64] block is 128-byte rows with 16-byte chunk c of row r at c ^ (r % 8). */
#ifndef FLP_CUDA_PREFILL_SM90_CONFIG_H
#define FLP_CUDA_PREFILL_SM90_CONFIG_H

#include "core/prefill_params.h"

#define FLP_CU_PREFILL90_THREADS 384
#define FLP_CU_PREFILL90_ROWS 128 /* packed query rows per pass */
/* The smallest query tile the kernel takes by default (FLP_CUDA_PREFILL_KERNEL unset): a 64-row
 * tile leaves one consumer warpgroup's rows empty and still runs 1.3-1.5x faster than on the
 * sm_80 kernel (H100, 2026-12-07: 8 to 16 new rows per request over 4096-16384 keys); a 16-row
 * tile would leave 7/8 of the pass empty and stays on the sm_80 kernel. */
#define FLP_CU_PREFILL90_MIN_AUTO_TILE 64
#define FLP_CU_PREFILL90_KN(D) ((D) == 256 ? 64 : 128)
#define FLP_CU_PREFILL90_STAGES(D) ((D) == 64 ? 4 : 2)
#define FLP_CU_PREFILL90_Q_BYTES(D) (FLP_CU_PREFILL90_ROWS * (D)*2)
#define FLP_CU_PREFILL90_TILE_BYTES(D) (FLP_CU_PREFILL90_KN(D) * (D)*2)
#define FLP_CU_PREFILL90_BARRIER_BYTES(D) (4 * 8 * FLP_CU_PREFILL90_STAGES(D))
/* The 16-bit layout from the aligned base, and with the 1024 bytes of slack that let the kernel
 * align its base. */
#define FLP_CU_PREFILL90_LAYOUT_BYTES(D)                                                           \
    (FLP_CU_PREFILL90_Q_BYTES(D) +                                                                 \
     2 * FLP_CU_PREFILL90_STAGES(D) * FLP_CU_PREFILL90_TILE_BYTES(D) +                             \
     FLP_CU_PREFILL90_BARRIER_BYTES(D) + (D)*2 + 8 * FLP_CU_PREFILL90_KN(D))
#define FLP_CU_PREFILL90_SMEM_BYTES(D) (1024 + FLP_CU_PREFILL90_LAYOUT_BYTES(D))

/* fp8 K/V (head_dim 64 and 128): TMA lands raw tiles in a ring of RAW_STAGES (two key blocks
 * ahead), which the producer warpgroup's other three warps widen into the 16-bit stages. At
 * head_dim 128 the whole layout is the H100's 232,448 bytes a block may have. */
#define FLP_CU_PREFILL90_RAW_STAGES 4
#define FLP_CU_PREFILL90_FP8_HEAD_DIM_OK(D) ((D) == 64 || (D) == 128)
#define FLP_CU_PREFILL90_RAW_TILE_BYTES(D) (FLP_CU_PREFILL90_KN(D) * (D))
/* A raw row is the swizzle's span (TMA's box may not be narrower than the span without padding
 * each row to it): the address bits XORed into a 16-byte chunk's index, from the 128-byte
 * line's (bits 7-9) or 64-byte pair's (bits 7-8) index. */
#define FLP_CU_PREFILL90_RAW_SWIZZLE_MASK(D) ((D) == 128 ? 0x70u : 0x30u)
#define FLP_CU_PREFILL90_RAW_OFFSET(D) ((FLP_CU_PREFILL90_LAYOUT_BYTES(D) + 1023) / 1024 * 1024)
#define FLP_CU_PREFILL90_FP8_SMEM_BYTES(D)                                                         \
    (1024 + FLP_CU_PREFILL90_RAW_OFFSET(D) +                                                       \
     FLP_CU_PREFILL90_RAW_STAGES * FLP_CU_PREFILL90_RAW_TILE_BYTES(D))

/* A CUtensorMap (cuda.h), opaque here: 128 bytes, 64-byte aligned. */
#ifdef __cplusplus
typedef struct alignas(64) flp_tensor_map {
    uint64_t words[16];
} flp_tensor_map;
#else
typedef struct flp_tensor_map {
    _Alignas(64) uint64_t words[16];
} flp_tensor_map;
#endif

/* How the kernel's producer addresses K/V rows. */
#define FLP_CU_KV_MAP_RAGGED 0 /* 3-D maps (D, Hkv, rows): one box of KN rows */
#define FLP_CU_KV_MAP_PAGED 1  /* 4-D maps (D, Hkv, page_size, pages): boxes of box_rows */
#define FLP_CU_KV_MAP_GATHER                                                                       \
    2 /* paged, any page size: no maps, the producer warpgroup gathers                             \
         rows with cp.async */

/* The kernel's parameter block: the prefill parameters and the K/V tensor maps made for the run
 * (boxes of 64 elements x 1 head x box_rows rows, 128-byte swizzle). */
typedef struct flp_prefill90_params {
    flp_prefill_params base;
    int32_t kv_map_kind;  /* FLP_CU_KV_MAP_* */
    int32_t box_rows;     /* rows of a box: KN (ragged), min(page_size, KN) (paged) */
    int32_t reserved[22]; /* pads to the maps' 64-byte alignment */
    flp_tensor_map k_map, v_map;
} flp_prefill90_params;

#define FLP_PREFILL90_PARAMS_BYTES 512

#ifndef __cplusplus
_Static_assert(sizeof(flp_prefill90_params) == FLP_PREFILL90_PARAMS_BYTES,
               "flp_prefill90_params layout changed: update the kernel");
#endif

#endif /* FLP_CUDA_PREFILL_SM90_CONFIG_H */
