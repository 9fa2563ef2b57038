/* Host stand-ins for what the kernels take from CUDA: the built-in variables and intrinsics
 * nvcc/NVRTC provide, and the PTX wrappers of kernels/ptx.cuh (same names and semantics, host
 * arithmetic). common.cuh includes this instead of ptx.cuh when FLP_CUDA_EMULATE_PTX names it;
 * everything else the emulator runs is the kernels' own code. */
#ifndef FLP_CUDA_EMU_PTX_H
#define FLP_CUDA_EMU_PTX_H

#include "backend-cuda/emulate/emu_simt.h"
#include "flashport/flashport.h" /* host f16/bf16 conversions, round to nearest even */

#include <cmath>
#include <cstdint>
#include <cstring>

#define __device__
#define __forceinline__ inline
#define __shared__
#define FLP_DEV inline

#define threadIdx (::flp_emu::thread_idx())
#define blockIdx (::flp_emu::block_idx())
#define blockDim (::flp_emu::block_dim())

inline void __syncthreads() {
    ::flp_emu::sync_threads();
}

inline float __shfl_xor_sync(unsigned mask, float value, int lane_mask) {
    (void)mask;
    uint32_t bits;
    std::memcpy(&bits, &value, 4);
    bits = ::flp_emu::shfl_xor(bits, lane_mask);
    std::memcpy(&value, &bits, 4);
    return value;
}

template <typename T> inline T __ldg(const T *p) {
    return *p;
}

inline float __int_as_float(int v) {
    float f;
    std::memcpy(&f, &v, 4);
    return f;
}

inline float __uint_as_float(unsigned v) {
    float f;
    std::memcpy(&f, &v, 4);
    return f;
}

inline int __float2int_rn(float x) {
    return (int)std::lrintf(x);
}

inline int min(int a, int b) {
    return a < b ? a : b;
}

/* Byte i of the result is byte (s >> 4i) & 7 of {y:x} (x bytes 0-3, y bytes 4-7). */
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
    const uint64_t both = (uint64_t)y << 32 | x;
    unsigned r = 0;
    for (int i = 0; i < 4; i++)
        r |= (unsigned)((both >> (8 * ((s >> (4 * i)) & 7u))) & 0xffu) << (8 * i);
    return r;
}

namespace flp {

inline float exp2_approx(float x) {
    return std::exp2(x);
}

inline float log2_approx(float x) {
    return std::log2(x);
}

inline float rcp_approx(float x) {
    return 1.0f / x;
}

inline unsigned smem_addr(const void *p) {
    return (unsigned)((const unsigned char *)p - ::flp_emu::dynamic_smem());
}

template <int BYTES> inline void cp_async(unsigned dst, const void *src, bool valid) {
    static_assert(BYTES == 16 || BYTES == 8, "cp.async of 8 or 16 bytes");
    ::flp_emu::cp_async(dst, src, valid, BYTES);
}

inline void cp_async_commit() {
    ::flp_emu::cp_async_commit();
}

template <int N> inline void cp_async_wait() {
    ::flp_emu::cp_async_wait(N);
}

inline void cp_async_wait_all() {
    ::flp_emu::cp_async_wait(-1);
}

inline void f16x2_to_f32(unsigned w, float &lo, float &hi) {
    lo = flp_f16_to_f32((uint16_t)(w & 0xffffu));
    hi = flp_f16_to_f32((uint16_t)(w >> 16));
}

inline unsigned pack_f16x2(float lo, float hi) {
    return (unsigned)flp_f32_to_f16(lo) | (unsigned)flp_f32_to_f16(hi) << 16;
}

inline unsigned pack_bf16x2(float lo, float hi) {
    return (unsigned)flp_f32_to_bf16(lo) | (unsigned)flp_f32_to_bf16(hi) << 16;
}

} // namespace flp

#endif /* FLP_CUDA_EMU_PTX_H */
