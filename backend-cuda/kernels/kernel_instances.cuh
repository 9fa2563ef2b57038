/* The kernels' entry points: every extern "C" __global__ kernel of flashport is stamped out by
 * the macros below. Each nvcc translation unit (decode_d64.cu, ..., shared_kernels.cu) expands
 * the subset it builds into its own fatbin, so that ninja compiles them in parallel;
 * flashport_kernels.cu (the source NVRTC compiles) includes every unit. Kernel names (looked up
 * by the host, cu_launch.c):
 *   flp_decode_<q>_<kv>_d<D>_r<R>  q in {f16, bf16}, kv in {f16, bf16, e4m3, e5m2},
 *                                  D in {64, 128, 256}, R (query rows in registers) in {4, 8}
 *   flp_decode_<q>_<kv>_d<D>_m8    the tensor-core decode kernel (empty for the pairs it does
 *                                  not take, FLP_CU_DECODE_MMA_DTYPES)
 *   flp_decode_merge_<q>
 *   flp_prefill_<q>_<kv>_d<D>_t<T>  T (packed query rows per pass) in {16, 64, 128}
 *   flp_prefill90_<q>_d<D>         the sm_90a kernel (K/V of the q dtype); its body is empty
 *                                  in images for other architectures, whose modules lack the
 *                                  global flp_prefill90_present_d<D>
 *   flp_prefill90_<q>_<kv>_d<D>    the same with fp8 K/V, kv in {e4m3, e5m2} (empty at D 256)
 *   flp_prefill_merge_<q>
 *   flp_kv_append
 *   flp_merge_states               the public state merges (any dtype, run-time codes)
 * Decode kernels take the flp_decode_params block by value, prefill kernels
 * flp_prefill_params, the append flp_kv_append_params, the state merge flp_merge_params.
 *
 * NVRTC compiles one configuration at a time to keep just-in-time compiles short: with
 * FLP_ONLY_Q, FLP_ONLY_KV (FLP_DT_* codes) and FLP_ONLY_HEAD_DIM defined, every other kernel
 * is emitted with an empty body (the names stay, the compile time goes). */
#ifndef FLP_CUDA_KERNEL_INSTANCES_CUH
#define FLP_CUDA_KERNEL_INSTANCES_CUH

#define FLP_KERNEL_SOURCE 1

#include "core/decode_params.h"
#include "backend-cuda/kernels/decode.cuh"
#include "backend-cuda/kernels/decode_mma.cuh"
#include "backend-cuda/kernels/decode_merge.cuh"
#include "backend-cuda/kernels/prefill.cuh"
#include "backend-cuda/kernels/prefill_merge.cuh"
#include "backend-cuda/kernels/prefill_sm90.cuh"
#include "backend-cuda/kernels/kv_append.cuh"
#include "backend-cuda/kernels/state_merge.cuh"

/* Minimum resident blocks per SM the register allocation must allow. */
#define FLP_DECODE_MIN_BLOCKS_4 3
#define FLP_DECODE_MIN_BLOCKS_8 2
#define FLP_DECODE_MMA_MIN_BLOCKS 2
/* Prefill: the register budget of 2 resident blocks (255 registers at 128 threads), 1 for the
 * 256-thread head_dim 256 tile-128 kernel. */
#define FLP_PREFILL_MIN_BLOCKS(D, T) (FLP_CU_PREFILL_THREADS(D, T) > 128 ? 1 : 2)

#if defined(FLP_ONLY_Q) && defined(FLP_ONLY_KV) && defined(FLP_ONLY_HEAD_DIM)
#define FLP_WANT_Q(QDT) ((QDT) == FLP_ONLY_Q)
#define FLP_WANT_CONFIG(QDT, KVDT, D)                                                              \
    ((QDT) == FLP_ONLY_Q && (KVDT) == FLP_ONLY_KV && (D) == FLP_ONLY_HEAD_DIM)
#else
#define FLP_WANT_Q(QDT) true
#define FLP_WANT_CONFIG(QDT, KVDT, D) true
#endif

namespace flp {
/* The body of a kernel, or nothing for a configuration left out (never instantiated). */
template <int QDT, int KVDT, int D, int R, bool WANT> struct decode_entry {
    FLP_DEV static void run(const flp_decode_params &p) {
        decode_body<QDT, KVDT, D, R>(p);
    }
};
template <int QDT, int KVDT, int D, int R> struct decode_entry<QDT, KVDT, D, R, false> {
    FLP_DEV static void run(const flp_decode_params &) {}
};
template <int QDT, int KVDT, int D, bool WANT> struct decode_mma_entry {
    FLP_DEV static void run(const flp_decode_params &p) {
        decode_mma_body<QDT, KVDT, D>(p);
    }
};
template <int QDT, int KVDT, int D> struct decode_mma_entry<QDT, KVDT, D, false> {
    FLP_DEV static void run(const flp_decode_params &) {}
};
template <int QDT, int KVDT, int D, int T, bool WANT> struct prefill_entry {
    FLP_DEV static void run(const flp_prefill_params &p) {
        prefill_body<QDT, KVDT, D, T>(p);
    }
};
template <int QDT, int KVDT, int D, int T> struct prefill_entry<QDT, KVDT, D, T, false> {
    FLP_DEV static void run(const flp_prefill_params &) {}
};
/* The sm_90a kernel exists only where the compiler targets sm_90a. */
template <int QDT, int KVDT, int D, bool WANT> struct prefill90_entry {
    FLP_DEV static void run(const flp_prefill90_params &p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
        prefill90_body<QDT, KVDT, D>(p);
#else
        (void)p;
#endif
    }
};
template <int QDT, int KVDT, int D> struct prefill90_entry<QDT, KVDT, D, false> {
    FLP_DEV static void run(const flp_prefill90_params &) {}
};
template <int QDT, bool WANT> struct prefill_merge_entry {
    FLP_DEV static void run(const flp_prefill_params &p) {
        prefill_merge_body<QDT>(p);
    }
};
template <int QDT> struct prefill_merge_entry<QDT, false> {
    FLP_DEV static void run(const flp_prefill_params &) {}
};
template <int QDT, bool WANT> struct merge_entry {
    FLP_DEV static void run(const flp_decode_params &p) {
        merge_body<QDT>(p);
    }
};
template <int QDT> struct merge_entry<QDT, false> {
    FLP_DEV static void run(const flp_decode_params &) {}
};
} // namespace flp

/* M(QN, QDT, KVN, KVDT, D) for every q and KV dtype pair (QN, KVN: the names' dtype parts). */
#define FLP_FOR_KV_DTYPES(M, QN, QDT, D)                                                           \
    M(QN, QDT, f16, FLP_DT_F16, D)                                                                 \
    M(QN, QDT, bf16, FLP_DT_BF16, D)                                                               \
    M(QN, QDT, e4m3, FLP_DT_E4M3, D)                                                               \
    M(QN, QDT, e5m2, FLP_DT_E5M2, D)
#define FLP_FOR_DTYPE_PAIRS(M, D)                                                                  \
    FLP_FOR_KV_DTYPES(M, f16, FLP_DT_F16, D)                                                       \
    FLP_FOR_KV_DTYPES(M, bf16, FLP_DT_BF16, D)

#define FLP_DECODE_KERNEL(QN, QDT, KVN, KVDT, D, R)                                                \
    extern "C" __global__ void __launch_bounds__(FLP_CU_DECODE_THREADS, FLP_DECODE_MIN_BLOCKS_##R) \
        flp_decode_##QN##_##KVN##_d##D##_r##R(const __grid_constant__ flp_decode_params p) {       \
        flp::wait_for_prior_grids();                                                               \
        flp::decode_entry<QDT, KVDT, D, R, FLP_WANT_CONFIG(QDT, KVDT, D)>::run(p);                 \
    }
#define FLP_DECODE_MMA_KERNEL(QN, QDT, KVN, KVDT, D)                                               \
    extern "C" __global__ void __launch_bounds__(FLP_CU_DECODE_THREADS, FLP_DECODE_MMA_MIN_BLOCKS) \
        flp_decode_##QN##_##KVN##_d##D##_m8(const __grid_constant__ flp_decode_params p) {         \
        flp::wait_for_prior_grids();                                                               \
        flp::decode_mma_entry<QDT, KVDT, D,                                                        \
                              FLP_WANT_CONFIG(QDT, KVDT, D) &&                                     \
                                  FLP_CU_DECODE_MMA_DTYPES(QDT, KVDT)>::run(p);                    \
    }
#define FLP_DECODE_KERNELS_QKV(QN, QDT, KVN, KVDT, D)                                              \
    FLP_DECODE_KERNEL(QN, QDT, KVN, KVDT, D, 4)                                                    \
    FLP_DECODE_KERNEL(QN, QDT, KVN, KVDT, D, 8)                                                    \
    FLP_DECODE_MMA_KERNEL(QN, QDT, KVN, KVDT, D)
/* The decode kernels of head dim D: every dtype pair, R = 4 and 8, and the tensor-core one. */
#define FLP_DECODE_KERNELS(D) FLP_FOR_DTYPE_PAIRS(FLP_DECODE_KERNELS_QKV, D)

#define FLP_PREFILL_KERNEL(QN, QDT, KVN, KVDT, D, T)                                               \
    extern "C" __global__ void __launch_bounds__(FLP_CU_PREFILL_THREADS(D, T),                     \
                                                 FLP_PREFILL_MIN_BLOCKS(D, T))                     \
        flp_prefill_##QN##_##KVN##_d##D##_t##T(const __grid_constant__ flp_prefill_params p) {     \
        flp::wait_for_prior_grids();                                                               \
        flp::prefill_entry<QDT, KVDT, D, T, FLP_WANT_CONFIG(QDT, KVDT, D)>::run(p);                \
    }
#define FLP_PREFILL_KERNELS_QKV(QN, QDT, KVN, KVDT, D)                                             \
    FLP_PREFILL_KERNEL(QN, QDT, KVN, KVDT, D, 16)                                                  \
    FLP_PREFILL_KERNEL(QN, QDT, KVN, KVDT, D, 64)                                                  \
    FLP_PREFILL_KERNEL(QN, QDT, KVN, KVDT, D, 128)
#define FLP_PREFILL90_KERNEL(QN, QDT, D)                                                           \
    extern "C" __global__ void __launch_bounds__(FLP_CU_PREFILL90_THREADS, 1)                      \
        flp_prefill90_##QN##_d##D(const __grid_constant__ flp_prefill90_params p) {                \
        flp::wait_for_prior_grids();                                                               \
        flp::prefill90_entry<QDT, QDT, D, FLP_WANT_CONFIG(QDT, QDT, D)>::run(p);                   \
    }
#define FLP_PREFILL90_FP8_KERNEL(QN, QDT, KVN, KVDT, D)                                            \
    extern "C" __global__ void __launch_bounds__(FLP_CU_PREFILL90_THREADS, 1)                      \
        flp_prefill90_##QN##_##KVN##_d##D(const __grid_constant__ flp_prefill90_params p) {        \
        flp::wait_for_prior_grids();                                                               \
        flp::prefill90_entry<QDT, KVDT, D,                                                         \
                             FLP_WANT_CONFIG(QDT, KVDT, D) &&                                      \
                                 FLP_CU_PREFILL90_FP8_HEAD_DIM_OK(D)>::run(p);                     \
    }
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
/* Tells the host that this image holds the sm_90a kernels' bodies. */
#define FLP_PREFILL90_PRESENT(D) extern "C" __device__ int flp_prefill90_present_d##D = 1;
#else
#define FLP_PREFILL90_PRESENT(D)
#endif
/* The prefill kernels of head dim D: every dtype pair, T = 16, 64 and 128; the sm_90a kernels. */
#define FLP_PREFILL_KERNELS(D)                                                                     \
    FLP_FOR_DTYPE_PAIRS(FLP_PREFILL_KERNELS_QKV, D)                                                \
    FLP_PREFILL90_KERNEL(f16, FLP_DT_F16, D)                                                       \
    FLP_PREFILL90_KERNEL(bf16, FLP_DT_BF16, D)                                                     \
    FLP_PREFILL90_FP8_KERNEL(f16, FLP_DT_F16, e4m3, FLP_DT_E4M3, D)                                \
    FLP_PREFILL90_FP8_KERNEL(f16, FLP_DT_F16, e5m2, FLP_DT_E5M2, D)                                \
    FLP_PREFILL90_FP8_KERNEL(bf16, FLP_DT_BF16, e4m3, FLP_DT_E4M3, D)                              \
    FLP_PREFILL90_FP8_KERNEL(bf16, FLP_DT_BF16, e5m2, FLP_DT_E5M2, D)                              \
    FLP_PREFILL90_PRESENT(D)

#define FLP_MERGE_KERNELS_Q(QN, QDT)                                                               \
    extern "C" __global__ void __launch_bounds__(FLP_CU_MERGE_THREADS)                             \
        flp_decode_merge_##QN(const __grid_constant__ flp_decode_params p) {                       \
        flp::wait_for_prior_grids();                                                               \
        flp::merge_entry<QDT, FLP_WANT_Q(QDT)>::run(p);                                            \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(FLP_CU_PREFILL_MERGE_THREADS)                     \
        flp_prefill_merge_##QN(const __grid_constant__ flp_prefill_params p) {                     \
        flp::wait_for_prior_grids();                                                               \
        flp::prefill_merge_entry<QDT, FLP_WANT_Q(QDT)>::run(p);                                    \
    }
/* The kernels every configuration shares: the decode and prefill merges of both q dtypes, the
 * KV append and the state merge (they convert at run time, any dtype: one small kernel each). */
#define FLP_SHARED_KERNELS                                                                         \
    FLP_MERGE_KERNELS_Q(f16, FLP_DT_F16)                                                           \
    FLP_MERGE_KERNELS_Q(bf16, FLP_DT_BF16)                                                         \
    extern "C" __global__ void __launch_bounds__(FLP_CU_KV_APPEND_THREADS)                         \
        flp_kv_append(const __grid_constant__ flp_kv_append_params p) {                            \
        flp::wait_for_prior_grids();                                                               \
        flp::kv_append_body(p);                                                                    \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(FLP_CU_STATE_MERGE_THREADS)                       \
        flp_merge_states(const __grid_constant__ flp_merge_params p) {                             \
        flp::wait_for_prior_grids();                                                               \
        flp::state_merge_body(p);                                                                  \
    }

#endif /* FLP_CUDA_KERNEL_INSTANCES_CUH */
