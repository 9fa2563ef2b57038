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
#define gridDim (::flp_emu::grid_dim())

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

/* A warp barrier (every lane of the warp arrives; orders their shared-memory accesses). */
inline void __syncwarp(unsigned mask = 0xffffffffu) {
    (void)mask;
    const uint32_t none = 0;
    uint32_t all[32];
    ::flp_emu::warp_exchange(&none, 1, all);
}

inline int __shfl_sync(unsigned mask, int value, int src_lane) {
    (void)mask;
    const uint32_t mine = (uint32_t)value;
    uint32_t all[32];
    ::flp_emu::warp_exchange(&mine, 1, all);
    return (int)all[src_lane & 31];
}

inline int __shfl_xor_sync(unsigned mask, int value, int lane_mask) {
    (void)mask;
    return (int)::flp_emu::shfl_xor((uint32_t)value, lane_mask);
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

inline int max(int a, int b) {
    return a > b ? a : b;
}

inline unsigned __float_as_uint(float v) {
    unsigned u;
    std::memcpy(&u, &v, 4);
    return u;
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

/* ---- tensor cores: the PTX ISA fragment layouts, computed from all lanes' registers ---------- */

inline unsigned emu_lane() {
    return ::flp_emu::thread_idx().x % 32;
}

/* 16 bits at byte offset off of shared memory. */
inline uint32_t emu_smem16(unsigned off) {
    uint16_t h;
    std::memcpy(&h, ::flp_emu::dynamic_smem() + off, 2);
    return h;
}

/* ldmatrix .x4 (.trans): lanes 8i..8i+7 hold the row addresses of matrix i. Without .trans,
 * r[i] of lane l holds elements 2(l%4), 2(l%4)+1 of row l/4; with .trans, element l/4 of rows
 * 2(l%4) and 2(l%4)+1 (low half first). */
inline void emu_ldmatrix(unsigned (&r)[4], unsigned addr, bool trans) {
    uint32_t all[32];
    ::flp_emu::warp_exchange(&addr, 1, all);
    const unsigned l = emu_lane();
    for (int i = 0; i < 4; i++) {
        if (!trans) {
            const unsigned row = all[8 * i + l / 4];
            r[i] = emu_smem16(row + (l % 4) * 4) | emu_smem16(row + (l % 4) * 4 + 2) << 16;
        } else {
            const unsigned row0 = all[8 * i + 2 * (l % 4)];
            const unsigned row1 = all[8 * i + 2 * (l % 4) + 1];
            r[i] = emu_smem16(row0 + (l / 4) * 2) | emu_smem16(row1 + (l / 4) * 2) << 16;
        }
    }
}

inline void ldmatrix_x4(unsigned (&r)[4], unsigned addr) {
    emu_ldmatrix(r, addr, false);
}

inline void ldmatrix_x4_trans(unsigned (&r)[4], unsigned addr) {
    emu_ldmatrix(r, addr, true);
}

/* mma.sync m16n8k16 row.col with f32 accumulators. A (16 x 16): a[0] = (row g, columns 2c,
 * 2c+1), a[1] = (g+8, 2c..), a[2] = (g, 2c+8..), a[3] = (g+8, 2c+8..); B (16 x 8): b0 = (rows
 * 2c, 2c+1, column g), b1 = (rows 2c+8.., g); D: d[0..1] = (g, 2c..2c+1), d[2..3] = (g+8, ..),
 * where g = lane / 4, c = lane % 4. Products are exact in f32; the sum is taken in double. */
inline void emu_mma(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1, bool bf16) {
    const uint32_t mine[6] = {a[0], a[1], a[2], a[3], b0, b1};
    uint32_t all[32 * 6];
    ::flp_emu::warp_exchange(mine, 6, all);
    auto half = [bf16](uint32_t w, int hi) {
        const uint16_t h = (uint16_t)(hi ? w >> 16 : w & 0xffffu);
        return (double)(bf16 ? flp_bf16_to_f32(h) : flp_f16_to_f32(h));
    };
    auto a_at = [&](int row, int k) {
        const int lane = (row % 8) * 4 + (k % 8) / 2;
        const int reg = (row >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0);
        return half(all[lane * 6 + reg], k % 2);
    };
    auto b_at = [&](int k, int col) {
        const int lane = col * 4 + (k % 8) / 2;
        return half(all[lane * 6 + 4 + (k >= 8 ? 1 : 0)], k % 2);
    };
    const int l = (int)emu_lane();
    for (int i = 0; i < 4; i++) {
        const int row = l / 4 + (i >= 2 ? 8 : 0);
        const int col = (l % 4) * 2 + (i % 2);
        double sum = 0.0;
        for (int k = 0; k < 16; k++)
            sum += a_at(row, k) * b_at(k, col);
        d[i] = (float)((double)d[i] + sum);
    }
}

/* movmatrix .trans: lane l gets elements (row 2(l%4), column l/4) and (row 2(l%4)+1, column
 * l/4) of the 8 x 8 matrix whose row r, columns 2c..2c+1 lane 4r + c holds. */
inline unsigned movmatrix_trans(unsigned x) {
    uint32_t all[32];
    ::flp_emu::warp_exchange(&x, 1, all);
    const unsigned l = emu_lane();
    auto element = [&](unsigned row, unsigned col) {
        const uint32_t w = all[row * 4 + col / 2];
        return col % 2 ? w >> 16 : w & 0xffffu;
    };
    return element(2 * (l % 4), l / 4) | element(2 * (l % 4) + 1, l / 4) << 16;
}

inline void mma_f16_16816(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    emu_mma(d, a, b0, b1, false);
}

inline void mma_bf16_16816(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    emu_mma(d, a, b0, b1, true);
}

inline unsigned mul_f16x2(unsigned a, unsigned b) {
    const float lo =
        flp_f16_to_f32((uint16_t)(a & 0xffffu)) * flp_f16_to_f32((uint16_t)(b & 0xffffu));
    const float hi = flp_f16_to_f32((uint16_t)(a >> 16)) * flp_f16_to_f32((uint16_t)(b >> 16));
    return (unsigned)flp_f32_to_f16(lo) | (unsigned)flp_f32_to_f16(hi) << 16;
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
