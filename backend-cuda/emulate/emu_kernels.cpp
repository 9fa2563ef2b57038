/* The CUDA kernels (kernels/decode.cuh, kernels/merge.cuh: the same source nvcc and NVRTC
 * compile) instantiated for the host and run by the SIMT emulator. */
#define FLP_CUDA_EMULATE_PTX "backend-cuda/emulate/emu_ptx.h"
#include "backend-cuda/kernels/decode.cuh"
#include "backend-cuda/kernels/merge.cuh"

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

template <int Q> void merge_entry(const void *arg) {
    flp::merge_body<Q>(*static_cast<const flp_decode_params *>(arg));
}

entry_fn decode_table[FLP_CU_NUM_CONFIGS][2];

void add(int q, int kv, int d, entry_fn small, entry_fn large) {
    const int index = flp_cu_config_index(q, kv, d);
    if (index < 0) {
        std::fprintf(stderr, "emulator: no configuration %d/%d/%d\n", q, kv, d);
        std::abort();
    }
    decode_table[index][0] = small;
    decode_table[index][1] = large;
}

#define FLP_EMU_ADD(Q, KV, D)                                                                      \
    add(Q, KV, D, decode_entry<Q, KV, D, FLP_CU_DECODE_ROWS_SMALL>,                                \
        decode_entry<Q, KV, D, FLP_CU_DECODE_ROWS_LARGE>)
#define FLP_EMU_ADD_KV(Q, KV)                                                                      \
    FLP_EMU_ADD(Q, KV, 64);                                                                        \
    FLP_EMU_ADD(Q, KV, 128);                                                                       \
    FLP_EMU_ADD(Q, KV, 256)
#define FLP_EMU_ADD_Q(Q)                                                                           \
    FLP_EMU_ADD_KV(Q, FLP_CU_DT_F16);                                                              \
    FLP_EMU_ADD_KV(Q, FLP_CU_DT_BF16);                                                             \
    FLP_EMU_ADD_KV(Q, FLP_CU_DT_E4M3);                                                             \
    FLP_EMU_ADD_KV(Q, FLP_CU_DT_E5M2)

void fill_table() {
    if (decode_table[0][0])
        return;
    FLP_EMU_ADD_Q(FLP_CU_DT_F16);
    FLP_EMU_ADD_Q(FLP_CU_DT_BF16);
}

} // namespace

extern "C" void flp_emu_decode(const flp_decode_launch *launch, uint64_t seed) {
    fill_table();
    const flp_decode_params *p = &launch->params;
    const int index = flp_cu_config_index(launch->q_dtype, launch->kv_dtype, launch->head_dim);
    const int variant = flp_cu_decode_variant(launch);
    const int rows = variant ? FLP_CU_DECODE_ROWS_LARGE : FLP_CU_DECODE_ROWS_SMALL;
    const int kv_bytes =
        launch->kv_dtype == FLP_CU_DT_E4M3 || launch->kv_dtype == FLP_CU_DT_E5M2 ? 1 : 2;
    const size_t smem = FLP_CU_DECODE_SMEM_BYTES(kv_bytes, launch->head_dim, rows);
    unsigned char *smem_base = reinterpret_cast<unsigned char *>(flp::dynamic_smem);
    flp_emu::launch(decode_table[index][variant], p, (unsigned)launch->num_ctas,
                    FLP_CU_DECODE_THREADS, smem_base, smem, sizeof flp::dynamic_smem, seed);
    entry_fn merge = launch->q_dtype == FLP_CU_DT_BF16 ? merge_entry<FLP_CU_DT_BF16>
                                                       : merge_entry<FLP_CU_DT_F16>;
    flp_emu::launch(merge, p, (unsigned)launch->merge_grid, FLP_CU_MERGE_THREADS, smem_base, 0,
                    sizeof flp::dynamic_smem, seed + 1);
}
