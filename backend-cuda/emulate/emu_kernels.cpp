/* The CUDA kernels (kernels/decode.cuh, kernels/decode_merge.cuh: the same source nvcc and NVRTC
 * compile) instantiated for the host and run by the SIMT emulator. */
#define FLP_CUDA_EMULATE_PTX "backend-cuda/emulate/emu_ptx.h"
#include "backend-cuda/kernels/decode.cuh"
#include "backend-cuda/kernels/decode_mma.cuh"
#include "backend-cuda/kernels/decode_merge.cuh"
#include "backend-cuda/kernels/kv_append.cuh"
#include "backend-cuda/kernels/prefill.cuh"
#include "backend-cuda/kernels/prefill_merge.cuh"
#include "backend-cuda/kernels/state_merge.cuh"

extern "C" {
#include "backend-cuda/cu_launch.h"
#include "backend-cuda/emulate/emu_launch.h"
}

#include <cstdio>
#include <cstdlib>

namespace flp {
/* The kernels' dynamic shared memory (extern __shared__ in common.cuh). */
alignas(16) u32x4 dynamic_smem[256 * 1024 / sizeof(u32x4)];
} // namespace flp

namespace {

using entry_fn = void (*)(const void *);

template <int Q, int KV, int D, int R> void decode_entry(const void *arg) {
    flp::decode_body<Q, KV, D, R>(*static_cast<const flp_decode_params *>(arg));
}

template <int Q, int KV, int D> void decode_mma_entry(const void *arg) {
    if constexpr (FLP_CU_DECODE_MMA_DTYPES(Q, KV))
        flp::decode_mma_body<Q, KV, D>(*static_cast<const flp_decode_params *>(arg));
    else
        std::abort(); /* flp_cu_decode_variant never picks it */
}

template <int Q> void merge_entry(const void *arg) {
    flp::merge_body<Q>(*static_cast<const flp_decode_params *>(arg));
}

entry_fn decode_table[FLP_CU_NUM_CONFIGS][FLP_CU_DECODE_NUM_KERNELS];

void add(int q, int kv, int d, entry_fn small, entry_fn large, entry_fn tensor) {
    const int index = flp_cu_config_index(q, kv, d);
    if (index < 0) {
        std::fprintf(stderr, "emulator: no configuration %d/%d/%d\n", q, kv, d);
        std::abort();
    }
    decode_table[index][FLP_CU_DECODE_CORES_SMALL] = small;
    decode_table[index][FLP_CU_DECODE_CORES_LARGE] = large;
    decode_table[index][FLP_CU_DECODE_TENSOR] = tensor;
}

#define FLP_EMU_ADD(Q, KV, D)                                                                      \
    add(Q, KV, D, decode_entry<Q, KV, D, FLP_CU_DECODE_ROWS_SMALL>,                                \
        decode_entry<Q, KV, D, FLP_CU_DECODE_ROWS_LARGE>, decode_mma_entry<Q, KV, D>)
#define FLP_EMU_ADD_KV(Q, KV)                                                                      \
    FLP_EMU_ADD(Q, KV, 64);                                                                        \
    FLP_EMU_ADD(Q, KV, 128);                                                                       \
    FLP_EMU_ADD(Q, KV, 256)
#define FLP_EMU_ADD_Q(Q)                                                                           \
    FLP_EMU_ADD_KV(Q, FLP_DT_F16);                                                                 \
    FLP_EMU_ADD_KV(Q, FLP_DT_BF16);                                                                \
    FLP_EMU_ADD_KV(Q, FLP_DT_E4M3);                                                                \
    FLP_EMU_ADD_KV(Q, FLP_DT_E5M2)

void fill_table() {
    if (decode_table[0][0])
        return;
    FLP_EMU_ADD_Q(FLP_DT_F16);
    FLP_EMU_ADD_Q(FLP_DT_BF16);
}

} // namespace

extern "C" void flp_emu_decode(const flp_decode_launch *launch, uint64_t seed) {
    fill_table();
    const flp_decode_params *p = &launch->params;
    const int index = flp_cu_config_index(launch->q_dtype, launch->kv_dtype, launch->head_dim);
    const int variant = flp_cu_decode_variant(launch);
    const size_t smem = flp_cu_decode_smem_bytes(launch->kv_dtype, launch->head_dim, variant);
    unsigned char *smem_base = reinterpret_cast<unsigned char *>(flp::dynamic_smem);
    flp_emu::launch(decode_table[index][variant], p, (unsigned)launch->num_ctas,
                    FLP_CU_DECODE_THREADS, smem_base, smem, sizeof flp::dynamic_smem, seed);
    entry_fn merge =
        launch->q_dtype == FLP_DT_BF16 ? merge_entry<FLP_DT_BF16> : merge_entry<FLP_DT_F16>;
    flp_emu::launch(merge, p, (unsigned)launch->merge_grid, FLP_CU_MERGE_THREADS, smem_base,
                    FLP_CU_MERGE_SMEM_BYTES, sizeof flp::dynamic_smem, seed + 1);
}

/* ---- prefill, its merge, the KV append ---------------------------------------------------- */

namespace {

template <int Q, int KV, int D, int T> void prefill_entry(const void *arg) {
    flp::prefill_body<Q, KV, D, T>(*static_cast<const flp_prefill_params *>(arg));
}

template <int Q> void prefill_merge_entry(const void *arg) {
    flp::prefill_merge_body<Q>(*static_cast<const flp_prefill_params *>(arg));
}

void kv_append_entry(const void *arg) {
    flp::kv_append_body(*static_cast<const flp_kv_append_params *>(arg));
}

void state_merge_entry(const void *arg) {
    flp::state_merge_body(*static_cast<const flp_merge_params *>(arg));
}

entry_fn prefill_table[FLP_CU_NUM_CONFIGS][FLP_CU_PREFILL_NUM_TILES];

void add_prefill(int q, int kv, int d, entry_fn t16, entry_fn t64, entry_fn t128) {
    const int index = flp_cu_config_index(q, kv, d);
    prefill_table[index][0] = t16;
    prefill_table[index][1] = t64;
    prefill_table[index][2] = t128;
}

#define FLP_EMU_ADD_P(Q, KV, D)                                                                    \
    add_prefill(Q, KV, D, prefill_entry<Q, KV, D, 16>, prefill_entry<Q, KV, D, 64>,                \
                prefill_entry<Q, KV, D, 128>)
#define FLP_EMU_ADD_P_KV(Q, KV)                                                                    \
    FLP_EMU_ADD_P(Q, KV, 64);                                                                      \
    FLP_EMU_ADD_P(Q, KV, 128);                                                                     \
    FLP_EMU_ADD_P(Q, KV, 256)
#define FLP_EMU_ADD_P_Q(Q)                                                                         \
    FLP_EMU_ADD_P_KV(Q, FLP_DT_F16);                                                               \
    FLP_EMU_ADD_P_KV(Q, FLP_DT_BF16);                                                              \
    FLP_EMU_ADD_P_KV(Q, FLP_DT_E4M3);                                                              \
    FLP_EMU_ADD_P_KV(Q, FLP_DT_E5M2)

void fill_prefill_table() {
    if (prefill_table[0][0])
        return;
    FLP_EMU_ADD_P_Q(FLP_DT_F16);
    FLP_EMU_ADD_P_Q(FLP_DT_BF16);
}

} // namespace

extern "C" void flp_emu_prefill(const flp_prefill_launch *launch, uint64_t seed) {
    fill_prefill_table();
    const flp_prefill_params *p = &launch->params;
    const int index = flp_cu_config_index(launch->q_dtype, launch->kv_dtype, launch->head_dim);
    const int ti = flp_cu_prefill_tile_index(launch->q_tile);
    const int tile = FLP_CU_PREFILL_TILE(ti);
    const size_t smem =
        flp_cu_prefill_smem_bytes(launch->q_dtype, launch->kv_dtype, launch->head_dim, tile);
    unsigned char *smem_base = reinterpret_cast<unsigned char *>(flp::dynamic_smem);
    flp_emu::launch(prefill_table[index][ti], p, (unsigned)launch->num_ctas,
                    FLP_CU_PREFILL_THREADS(launch->head_dim, tile), smem_base, smem,
                    sizeof flp::dynamic_smem, seed);
    entry_fn merge = launch->q_dtype == FLP_DT_BF16 ? prefill_merge_entry<FLP_DT_BF16>
                                                    : prefill_merge_entry<FLP_DT_F16>;
    flp_emu::launch(merge, p, (unsigned)launch->merge_grid, FLP_CU_PREFILL_MERGE_THREADS, smem_base,
                    0, sizeof flp::dynamic_smem, seed + 1);
}

extern "C" void flp_emu_kv_append(const flp_kv_append_params *params) {
    unsigned char *smem_base = reinterpret_cast<unsigned char *>(flp::dynamic_smem);
    /* A small grid: the kernel is grid-stride (one fiber per element is slow). */
    flp_emu::launch(kv_append_entry, params, 2, FLP_CU_KV_APPEND_THREADS, smem_base, 0,
                    sizeof flp::dynamic_smem, 1);
}

extern "C" void flp_emu_merge(const flp_merge_params *params) {
    unsigned char *smem_base = reinterpret_cast<unsigned char *>(flp::dynamic_smem);
    /* The grid the CUDA backend launches (grid-stride beyond 4096 blocks). */
    flp_emu::launch(state_merge_entry, params, flp_cu_state_merge_grid(params),
                    FLP_CU_STATE_MERGE_THREADS, smem_base, 0, sizeof flp::dynamic_smem, 1);
}
