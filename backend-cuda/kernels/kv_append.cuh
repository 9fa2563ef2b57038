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

/* One element from src (src_dtype) to the cache dtype, written at dst. */
FLP_DEV void append_element(const unsigned char *src, unsigned char *dst, int src_dtype,
                            int cache_dtype, float inv_scale) {
    if (src_dtype == cache_dtype) {
        if (dtype_is_fp8(cache_dtype))
            *dst = *src;
        else
            *reinterpret_cast<unsigned short *>(dst) =
                *reinterpret_cast<const unsigned short *>(src);
        return;
    }
    float x = src16_to_f32(*reinterpret_cast<const unsigned short *>(src), src_dtype);
    if (dtype_is_fp8(cache_dtype)) {
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
    const int src_bytes = dtype_bytes(p.src_dtype);
    const int cache_bytes = dtype_bytes(p.cache_dtype);
    const int *batch_indices = reinterpret_cast<const int *>(p.batch_indices);
    const int *positions = reinterpret_cast<const int *>(p.positions);
    const int *kv_indptr = reinterpret_cast<const int *>(p.kv_indptr);
    const int *kv_indices = reinterpret_cast<const int *>(p.kv_indices);
    const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
    for (long long e = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
         e += stride) {
        /* Element e: row r, KV head g, column d. */
        const long long r = e / per_row;
        const int rem = static_cast<int>(e - r * per_row);
        const int g = rem / D;
        const int d = rem - g * D;
        /* The row's cache page and slot; out-of-range rows are skipped. */
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
