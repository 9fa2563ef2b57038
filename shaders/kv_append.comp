#version 460
// KV append (docs/kernels/kv_append.md, core/prefill_params.h): row r of the new K/V goes to the
// slot of token positions[r] of request batch_indices[r] through the page table; rows out of
// range are skipped. Conversions are bit-exact with core/dtype.c (dtype.glsl: round to nearest
// even, subnormals exact, e4m3 saturating, NaN stays NaN with its sign and top payload bits).
//
// Invocation (x) = (KV head, 4-element quad of the head dim) of row r = z * Y + y (a 3-D grid:
// rows may outnumber maxComputeWorkGroupCount[1]). No loops. Caches of 8-bit elements are
// written by whole 32-bit words when a quad is word-aligned, else byte by byte with atomic
// and/or on the words (other invocations own the other bytes); 16-bit caches through 16-bit
// storage.
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_buffer_reference : require
#extension GL_EXT_buffer_reference2 : require
#extension GL_EXT_shader_explicit_arithmetic_types_int64 : require
#extension GL_EXT_shader_explicit_arithmetic_types_int16 : require
#extension GL_EXT_shader_16bit_storage : require
#extension GL_EXT_control_flow_attributes : require

#include "dtype.glsl"

layout(local_size_x_id = FLP_SPEC_APPEND_THREADS) in;
layout(constant_id = FLP_SPEC_APPEND_THREADS) const uint WG = 64;

// flp_kv_append_params (core/prefill_params.h), written by the run's vkCmdUpdateBuffer.
layout(buffer_reference, std430, buffer_reference_align = 8) readonly buffer KvAppendParams {
    uint64_t k, v;
    uint64_t k_cache, v_cache;
    uint64_t batch_indices, positions;
    uint64_t kv_indptr, kv_indices;
    int64_t k_stride_row, k_stride_head;
    int64_t v_stride_row, v_stride_head;
    int64_t kc_stride_page, kc_stride_slot, kc_stride_head;
    int64_t vc_stride_page, vc_stride_slot, vc_stride_head;
    int64_t batch_indices_stride, positions_stride;
    int nnz, num_kv_heads, head_dim, page_size;
    int batch_size, num_indices, num_pages;
    int src_dtype, cache_dtype;
    float k_inv_scale, v_inv_scale;
    int reserved[1];
};

layout(push_constant) uniform Push {
    uint64_t params;
} push;

layout(buffer_reference, std430, buffer_reference_align = 4) buffer W32 {
    uint v;
};
layout(buffer_reference, std430, buffer_reference_align = 8) buffer W64 {
    uvec2 v;
};
layout(buffer_reference, std430, buffer_reference_align = 2) buffer W16 {
    uint16_t v;
};

// One source element (its bits) converted to the cache dtype's bits.
uint convert(uint src_dtype, uint cache_dtype, uint bits, float inv_scale) {
    if (src_dtype == cache_dtype)
        return bits;
    uint f = src_dtype == FLP_DT_BF16 ? flp_bf16_bits_to_f32_bits(bits)
                                      : flp_f16_bits_to_f32_bits(bits);
    if (cache_dtype == FLP_DT_F16)
        return flp_f32_bits_to_f16(f);
    if (cache_dtype == FLP_DT_BF16)
        return flp_f32_bits_to_bf16(f);
    // fp8: value * (1 / scale), rounded to f32 first (as the host does); a NaN keeps its bits
    if ((f & 0x7fffffffu) <= 0x7f800000u)
        f = floatBitsToUint(uintBitsToFloat(f) * inv_scale);
    return cache_dtype == FLP_DT_E4M3 ? flp_f32_bits_to_e4m3(f) : flp_f32_bits_to_e5m2(f);
}

uint elem_bytes(uint dtype) {
    return dtype == FLP_DT_E4M3 || dtype == FLP_DT_E5M2 ? 1u : 2u;
}

// Byte n of the 8-bit elements at address a (reads the aligned word holding it).
uint load_byte(uint64_t a) {
    uint w = W32(a & ~3ul).v;
    return (w >> (uint(a & 3ul) * 8u)) & 0xffu;
}

// Four consecutive elements of a row at address a.
uvec4 load4(uint dtype, uint64_t a) {
    uvec4 x;
    if (elem_bytes(dtype) == 1u) {
        if ((a & 3ul) == 0ul) {
            uint w = W32(a).v;
            return (uvec4(w) >> uvec4(0u, 8u, 16u, 24u)) & 0xffu;
        }
        [[unroll]] for (uint e = 0u; e < 4u; e++)
            x[e] = load_byte(a + uint64_t(e));
        return x;
    }
    if ((a & 7ul) == 0ul) {
        uvec2 w = W64(a).v;
        return uvec4(w.x & 0xffffu, w.x >> 16, w.y & 0xffffu, w.y >> 16);
    }
    [[unroll]] for (uint e = 0u; e < 4u; e++)
        x[e] = uint(W16(a + 2ul * uint64_t(e)).v);
    return x;
}

void store4(uint dtype, uint64_t a, uvec4 x) {
    if (elem_bytes(dtype) == 1u) {
        if ((a & 3ul) == 0ul) {
            W32(a).v = x.x | (x.y << 8) | (x.z << 16) | (x.w << 24);
            return;
        }
        [[unroll]] for (uint e = 0u; e < 4u; e++) {
            uint64_t b = a + uint64_t(e);
            uint shift = uint(b & 3ul) * 8u;
            W32 w = W32(b & ~3ul);
            atomicAnd(w.v, ~(0xffu << shift));
            atomicOr(w.v, x[e] << shift);
        }
        return;
    }
    if ((a & 7ul) == 0ul) {
        W64(a).v = uvec2(x.x | (x.y << 16), x.z | (x.w << 16));
        return;
    }
    [[unroll]] for (uint e = 0u; e < 4u; e++)
        W16(a + 2ul * uint64_t(e)).v = uint16_t(x[e]);
}

void main() {
    KvAppendParams P = KvAppendParams(push.params);
    int r = int(gl_WorkGroupID.z * gl_NumWorkGroups.y + gl_WorkGroupID.y);
    int quads = P.head_dim / 4;
    int unit = int(gl_WorkGroupID.x * WG + gl_LocalInvocationIndex);
    if (r >= P.nnz || unit >= P.num_kv_heads * quads)
        return;
    int g = unit / quads;
    int d0 = (unit % quads) * 4;

    int b = int(W32(P.batch_indices + 4ul * uint64_t(int64_t(r) * P.batch_indices_stride)).v);
    int t = int(W32(P.positions + 4ul * uint64_t(int64_t(r) * P.positions_stride)).v);
    if (b < 0 || b >= P.batch_size || t < 0)
        return;
    int first = int(W32(P.kv_indptr + 4ul * uint64_t(b)).v);
    int next = int(W32(P.kv_indptr + 4ul * uint64_t(b + 1)).v);
    int64_t idx = int64_t(first) + int64_t(t / P.page_size);
    if (idx < 0l || idx >= int64_t(next) || idx >= int64_t(P.num_indices))
        return;
    int page = int(W32(P.kv_indices + 4ul * uint64_t(idx)).v);
    if (page < 0 || page >= P.num_pages)
        return;
    int slot = t % P.page_size;

    uint src_dtype = uint(P.src_dtype), cache_dtype = uint(P.cache_dtype);
    uint64_t sb = uint64_t(elem_bytes(src_dtype)), cb = uint64_t(elem_bytes(cache_dtype));
    [[unroll]] for (uint which = 0u; which < 2u; which++) {
        bool is_v = which == 1u;
        int64_t src_off = int64_t(r) * (is_v ? P.v_stride_row : P.k_stride_row) +
                          int64_t(g) * (is_v ? P.v_stride_head : P.k_stride_head) + int64_t(d0);
        int64_t dst_off = int64_t(page) * (is_v ? P.vc_stride_page : P.kc_stride_page) +
                          int64_t(slot) * (is_v ? P.vc_stride_slot : P.kc_stride_slot) +
                          int64_t(g) * (is_v ? P.vc_stride_head : P.kc_stride_head) + int64_t(d0);
        uvec4 x = load4(src_dtype, (is_v ? P.v : P.k) + uint64_t(src_off) * sb);
        float inv_scale = is_v ? P.v_inv_scale : P.k_inv_scale;
        [[unroll]] for (uint e = 0u; e < 4u; e++)
            x[e] = convert(src_dtype, cache_dtype, x[e], inv_scale);
        store4(cache_dtype, (is_v ? P.v_cache : P.k_cache) + uint64_t(dst_off) * cb, x);
    }
}
