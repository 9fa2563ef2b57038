/* Launch shapes of the CUDA prefill kernels, shared by the kernels (nvcc and NVRTC) and the host
 * code that launches them, so both agree on block size and shared memory. Plain C preprocessor
 * only.
 *
 * A prefill kernel takes T packed query rows per pass (T = 16, 64 or 128: the plan's q_tile)
 * and walks the keys in blocks of KN (FLP_CU_PREFILL_KN). Its warps form a WM x WN grid: warp (wm,
 * wn) owns rows [wm * 16 * MT, (wm + 1) * 16 * MT) of the pass (MT m16 tiles) and keys [wn * KN /
 * WN, (wn + 1) * KN / WN) of every key block. WN > 1 (the 16-row kernel: short queries, speculative
 * decoding) splits each key block over warps whose softmax states are merged at the end of the pass
 * through shared memory. */
#ifndef FLP_CUDA_PREFILL_CONFIG_H
#define FLP_CUDA_PREFILL_CONFIG_H

#define FLP_CU_PREFILL_NUM_TILES 3
/* q_tile values with a kernel, in kernel-index order. */
#define FLP_CU_PREFILL_TILE(i) ((i) == 0 ? 16 : (i) == 1 ? 64 : 128)

#define FLP_CU_PREFILL_WM(D, T) ((T) == 16 ? 1 : (T) == 64 ? 4 : (D) == 256 ? 8 : 4)
#define FLP_CU_PREFILL_MT(D, T) ((T) == 128 && (D) != 256 ? 2 : 1)
#define FLP_CU_PREFILL_WN(D, T) ((T) == 16 ? ((D) == 256 ? 2 : 4) : 1)
/* Keys per block; staged head_dim 256 kernels with one warp per 16 rows take 16 (their
 * conversion pass needs the registers of a wider block's scores). */
#define FLP_CU_PREFILL_KN(D, T, staged) ((D) == 256 || ((D) == 128 && (T) == 128) ? 32 : 64)
#define FLP_CU_PREFILL_THREADS(D, T) (32 * FLP_CU_PREFILL_WM(D, T) * FLP_CU_PREFILL_WN(D, T))

/* Whether a (q dtype, kv dtype) pair stages K/V in their own type and converts them into the
 * compute type (the q dtype) in shared memory: fp8, or 16-bit types that differ. */
#define FLP_CU_PREFILL_STAGED(qdt, kvdt) ((qdt) != (kvdt))

/* Shared memory: the Q tile [T][D] (compute type), the K/V region, RoPE frequencies [D / 2],
 * the per-pass values (struct prefill_pass, at most FLP_CU_PREFILL_PASS_BYTES).
 * K/V region: direct: 2 stages x (K, V) x [KN][D] compute type; staged: 2 stages x (K, V) x
 * [KN][D] of the KV dtype, then one (K, V) pair of [KN][D] compute-type tiles. The WN > 1
 * merge area [WN][16][D + 2] f32 aliases the K/V region once the keys are done. */
#define FLP_CU_PREFILL_Q_BYTES(D, T) ((T) * (D)*2)
#define FLP_CU_PREFILL_KV_BYTES(D, T, kvb, staged)                                                 \
    ((staged)                                                                                      \
         ? 4 * FLP_CU_PREFILL_KN(D, T, 1) * (D) * (kvb) + 2 * FLP_CU_PREFILL_KN(D, T, 1) * (D)*2   \
         : 4 * FLP_CU_PREFILL_KN(D, T, 0) * (D)*2)
#define FLP_CU_PREFILL_MERGE_BYTES(D, T)                                                           \
    (FLP_CU_PREFILL_WN(D, T) > 1 ? FLP_CU_PREFILL_WN(D, T) * 16 * ((D) + 2) * 4 : 0)
#define FLP_CU_PREFILL_REGION_BYTES(D, T, kvb, staged)                                             \
    (FLP_CU_PREFILL_KV_BYTES(D, T, kvb, staged) > FLP_CU_PREFILL_MERGE_BYTES(D, T)                 \
         ? FLP_CU_PREFILL_KV_BYTES(D, T, kvb, staged)                                              \
         : FLP_CU_PREFILL_MERGE_BYTES(D, T))
#define FLP_CU_PREFILL_SMEM_BYTES(D, T, kvb, staged)                                               \
    (FLP_CU_PREFILL_Q_BYTES(D, T) + FLP_CU_PREFILL_REGION_BYTES(D, T, kvb, staged) + (D)*2 +       \
     FLP_CU_PREFILL_PASS_BYTES)
#define FLP_CU_PREFILL_PASS_BYTES 128

/* Merge of split prefill items, the KV append, and the public state merges (a warp per row and
 * head: kernels/state_merge.cuh). */
#define FLP_CU_PREFILL_MERGE_THREADS 128
#define FLP_CU_KV_APPEND_THREADS 256
#define FLP_CU_STATE_MERGE_THREADS 128

#endif /* FLP_CUDA_PREFILL_CONFIG_H */
