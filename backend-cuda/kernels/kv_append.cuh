/* KV append (core/prefill_params.h, flp_kv_append_params): row r of the new K/V goes to token
 * positions[r] of request batch_indices[r] through the page table; rows whose request,
 * position or page id is out of range are skipped. Elements are converted to the cache dtype
 * with the exact integer encoders of core/dtype.c (round to nearest even, subnormals exact,
 * e4m3 saturating to +-448, NaN stays NaN), so the bytes equal the host conversion's. One
 * thread per element, grid-stride. */
#ifndef FLP_CUDA_KV_APPEND_CUH
#define FLP_CUDA_KV_APPEND_CUH

#include "backend-cuda/kernels/common.cuh"
#include "core/prefill_params.h"

namespace flp {

/* x >> shift rounded to nearest, ties to even; 1 <= shift <= 31. */
FLP_DEV unsigned shift_right_rne(unsigned x, unsigned shift) {
    unsigned r = x >> shift;
    const unsigned rem = x & ((1u << shift) - 1u);
    const unsigned half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (r & 1u)))
        r++;
    return r;
}

/* Magnitude code of the finite non-negative f32 bits abs in a narrow format (mbits mantissa
 * bits, exponent bias `bias`), not range-checked (core/dtype.c encode_magnitude). */
FLP_DEV unsigned encode_magnitude(unsigned abs, unsigned mbits, int bias) {
    const int exp32 = static_cast<int>(abs >> 23);
    if (exp32 - 127 + bias >= 1)
        return shift_right_rne(abs - (static_cast<unsigned>(127 - bias) << 23), 23u - mbits);
    if (exp32 == 0)
        return 0;
    const unsigned significand = (abs & 0x007fffffu) | 0x00800000u;
    const int shift = 151 - bias - static_cast<int>(mbits) - exp32;
    if (shift > 25)
        return 0;
    return shift_right_rne(significand, static_cast<unsigned>(shift));
}

/* An f32 in a narrow IEEE format with 5 exponent bits (bias 15) and MBITS mantissa bits (f16:
 * 10, e5m2: 2): round to nearest even, overflow to infinity, NaN quiet with its top mantissa
 * bits kept (core/dtype.c). */
template <unsigned MBITS> FLP_DEV unsigned f32_to_e5_bits(float x) {
    constexpr unsigned kBits = 6 + MBITS;
    constexpr unsigned kInf = 0x1fu << MBITS;
    constexpr unsigned kQuietNan = kInf | (1u << (MBITS - 1u));
    const unsigned u = __float_as_uint(x);
    const unsigned sign = (u >> (32u - kBits)) & (1u << (kBits - 1u));
    const unsigned abs = u & 0x7fffffffu;
    if (abs > 0x7f800000u)
        return sign | kQuietNan | ((abs >> (23u - MBITS)) & ((1u << MBITS) - 1u));
    if (abs == 0x7f800000u)
        return sign | kInf;
    unsigned code = encode_magnitude(abs, MBITS, 15);
    if (code >= kInf)
        code = kInf;
    return sign | code;
}

FLP_DEV unsigned f32_to_f16_bits(float x) {
    return f32_to_e5_bits<10>(x);
}

FLP_DEV unsigned f32_to_bf16_bits(float x) {
    const unsigned u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return ((u >> 16) | 0x0040u) & 0xffffu;
    return ((u + 0x7fffu + ((u >> 16) & 1u)) >> 16) & 0xffffu;
}

FLP_DEV unsigned f32_to_e4m3_bits(float x) {
    const unsigned u = __float_as_uint(x);
    const unsigned sign = (u >> 24) & 0x80u;
    const unsigned abs = u & 0x7fffffffu;
    if (abs > 0x7f800000u)
        return sign | 0x7fu;
    if (abs == 0x7f800000u)
        return sign | 0x7eu;
    unsigned code = encode_magnitude(abs, 3, 7);
    if (code > 0x7eu)
        code = 0x7eu;
    return sign | code;
}

FLP_DEV unsigned f32_to_e5m2_bits(float x) {
    return f32_to_e5_bits<2>(x);
}

/* A 16-bit source element as f32 (exact; NaN keeps its payload with the quiet bit set, as
 * core/dtype.c decodes it). */
FLP_DEV float src16_to_f32(unsigned h, int dtype) {
    if (dtype == FLP_DT_BF16) {
        unsigned u = h << 16;
        if ((u & 0x7fffffffu) > 0x7f800000u)
            u |= 0x00400000u;
        return __uint_as_float(u);
    }
    float lo, hi;
    f16x2_to_f32(h, lo, hi);
    if (lo != lo) /* NaN: the payload as core/dtype.c keeps it */
        return __uint_as_float(((h & 0x8000u) << 16) | 0x7fc00000u | ((h & 0x03ffu) << 13));
    return lo;
}

/* One element from src (src_dtype) to the cache dtype, written at dst. */
FLP_DEV void append_element(const unsigned char *src, unsigned char *dst, int src_dtype,
                            int cache_dtype, float inv_scale) {
    if (src_dtype == cache_dtype) {
        if (cache_dtype == FLP_DT_E4M3 || cache_dtype == FLP_DT_E5M2)
            *dst = *src;
        else
            *reinterpret_cast<unsigned short *>(dst) =
                *reinterpret_cast<const unsigned short *>(src);
        return;
    }
    float x = src16_to_f32(*reinterpret_cast<const unsigned short *>(src), src_dtype);
    if (cache_dtype == FLP_DT_E4M3 || cache_dtype == FLP_DT_E5M2) {
        /* IEEE f32 multiply, round to nearest (no contraction is possible: one operation).
         * NaN is kept as it is, so its sign and payload do not depend on the device. */
        if (x == x)
            x = x * inv_scale;
        *dst = static_cast<unsigned char>(cache_dtype == FLP_DT_E4M3 ? f32_to_e4m3_bits(x)
                                                                        : f32_to_e5m2_bits(x));
    } else {
        *reinterpret_cast<unsigned short *>(dst) = static_cast<unsigned short>(
            cache_dtype == FLP_DT_BF16 ? f32_to_bf16_bits(x) : f32_to_f16_bits(x));
    }
}

FLP_DEV void kv_append_body(const flp_kv_append_params &p) {
    const int D = p.head_dim;
    const long long per_row = static_cast<long long>(p.num_kv_heads) * D;
    const long long total = static_cast<long long>(p.nnz) * per_row;
    const int src_bytes = p.src_dtype == FLP_DT_E4M3 || p.src_dtype == FLP_DT_E5M2 ? 1 : 2;
    const int cache_bytes =
        p.cache_dtype == FLP_DT_E4M3 || p.cache_dtype == FLP_DT_E5M2 ? 1 : 2;
    const int *batch_indices = reinterpret_cast<const int *>(p.batch_indices);
    const int *positions = reinterpret_cast<const int *>(p.positions);
    const int *kv_indptr = reinterpret_cast<const int *>(p.kv_indptr);
    const int *kv_indices = reinterpret_cast<const int *>(p.kv_indices);
    const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
    for (long long e = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
         e += stride) {
        const long long r = e / per_row;
        const int rem = static_cast<int>(e - r * per_row);
        const int g = rem / D;
        const int d = rem - g * D;
        const int b = batch_indices[r * p.batch_indices_stride];
        const int t = positions[r * p.positions_stride];
        if (b < 0 || b >= p.batch_size || t < 0)
            continue;
        const long long idx = static_cast<long long>(kv_indptr[b]) + t / p.page_size;
        if (idx < 0 || idx >= kv_indptr[b + 1] || idx >= p.num_indices)
            continue;
        const int page = kv_indices[idx];
        if (page < 0 || page >= p.num_pages)
            continue;
        const long long sl = t % p.page_size;
        const unsigned char *ks = reinterpret_cast<const unsigned char *>(p.k) +
                                  (r * p.k_stride_row + g * p.k_stride_head + d) * src_bytes;
        const unsigned char *vs = reinterpret_cast<const unsigned char *>(p.v) +
                                  (r * p.v_stride_row + g * p.v_stride_head + d) * src_bytes;
        unsigned char *kd =
            reinterpret_cast<unsigned char *>(p.k_cache) +
            (page * p.kc_stride_page + sl * p.kc_stride_slot + g * p.kc_stride_head + d) *
                cache_bytes;
        unsigned char *vd =
            reinterpret_cast<unsigned char *>(p.v_cache) +
            (page * p.vc_stride_page + sl * p.vc_stride_slot + g * p.vc_stride_head + d) *
                cache_bytes;
        append_element(ks, kd, p.src_dtype, p.cache_dtype, p.k_inv_scale);
        append_element(vs, vd, p.src_dtype, p.cache_dtype, p.v_inv_scale);
    }
}

} // namespace flp

#endif /* FLP_CUDA_KV_APPEND_CUH */
