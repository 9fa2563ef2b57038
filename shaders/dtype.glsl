// Element conversions by bit manipulation: no bf16/fp8 (or even float16) extension needed.
// dtype arguments are flp_dtype values; callers pass specialisation constants, so every
// branch on them folds away.
#ifndef FLP_DTYPE_GLSL
#define FLP_DTYPE_GLSL

#include "core/kernel_constants.h"

float flp_f16_to_f32(uint h) {
    return unpackHalf2x16(h & 0xffffu).x; // exact: every f16 is an f32
}

float flp_bf16_to_f32(uint h) {
    return uintBitsToFloat((h & 0xffffu) << 16);
}

// fp8 e4m3fn: bias 7, no infinities, S.1111.111 is NaN, subnormals m * 2^-9.
float flp_e4m3_to_f32(uint v) {
    uint em = v & 0x7fu;
    uint sign = (v & 0x80u) << 24;
    if (em == 0x7fu)
        return uintBitsToFloat(sign | 0x7fc00000u);
    // normal: rebias the exponent 7 -> 127 in place; subnormal: exact small-integer scaling
    float mag = em < 8u ? float(em) * (1.0 / 512.0) : uintBitsToFloat((em << 20) + (120u << 23));
    return uintBitsToFloat(floatBitsToUint(mag) | sign);
}

// fp8 e5m2 is the upper byte of an f16.
float flp_e5m2_to_f32(uint v) {
    return unpackHalf2x16((v & 0xffu) << 8).x;
}

// f32 -> f16 bits, round to nearest even; overflow -> inf, NaN stays NaN.
uint flp_f32_to_f16(float f) {
    uint x = floatBitsToUint(f);
    uint sign = (x >> 16) & 0x8000u;
    uint ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u)
        return sign | (ax > 0x7f800000u ? 0x7e00u : 0x7c00u);
    if (ax >= 0x477ff000u) // >= 65520 rounds to infinity
        return sign | 0x7c00u;
    if (ax >= 0x38800000u) { // normal f16 (>= 2^-14): rebias, then round the 13 dropped bits
        uint r = ax - 0x38000000u;
        r += 0xfffu + ((r >> 13) & 1u);
        return sign | (r >> 13);
    }
    // subnormal f16: units of 2^-24; the scaling is exact and roundEven is the tie rule
    return sign | uint(roundEven(uintBitsToFloat(ax) * 16777216.0));
}

// f32 -> bf16 bits, round to nearest even; NaN stays (quiet) NaN.
uint flp_f32_to_bf16(float f) {
    uint x = floatBitsToUint(f);
    if ((x & 0x7fffffffu) > 0x7f800000u)
        return ((x >> 16) & 0x8000u) | 0x7fc0u;
    return (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
}

float flp_decode16(uint dtype, uint bits) {
    return dtype == FLP_DT_BF16 ? flp_bf16_to_f32(bits) : flp_f16_to_f32(bits);
}

uint flp_encode16(uint dtype, float f) {
    return dtype == FLP_DT_BF16 ? flp_f32_to_bf16(f) : flp_f32_to_f16(f);
}

// Two values as one 32-bit word, the first in the low half (little endian element order).
uint flp_pack16x2(uint dtype, float a, float b) {
    return flp_encode16(dtype, a) | (flp_encode16(dtype, b) << 16);
}

// fp8 widened to f16 on the way into shared memory (once per element, not once per row):
// 4 bytes of one word -> 4 f16 in two words, element order kept.
// e5m2 is the upper byte of an f16: exact.
uvec2 flp_e5m2x4_to_f16x4(uint w) {
    return uvec2(((w & 0xffu) << 8) | ((w & 0xff00u) << 16), ((w >> 8) & 0xff00u) | (w & 0xff000000u));
}

// e4m3fn: the bits s.eeee.mmm placed as f16 s.0eeee.mmm0000000 give the value times 2^-8
// exactly, subnormals included (the caller multiplies by FLP_E4M3_F16_SCALE, an exact power of
// two, in f32); NaN (s.1111.111) becomes an f16 NaN.
const float FLP_E4M3_F16_SCALE = 256.0;
uvec2 flp_e4m3x4_to_f16x4_scaled(uint w) {
    uvec4 b = (uvec4(w) >> uvec4(0u, 8u, 16u, 24u)) & 0xffu;
    uvec4 sign = (b & 0x80u) << 8;
    uvec4 h = sign | ((b & 0x7fu) << 7);
    h = mix(h, sign | 0x7e00u, equal(b & 0x7fu, uvec4(0x7fu)));
    return uvec2(h.x | (h.y << 16), h.z | (h.w << 16));
}

// 8 consecutive elements: 16-bit dtypes fill all four words, fp8 only w.xy.
void flp_decode8(uint dtype, uvec4 w, out float x[8]) {
    if (dtype == FLP_DT_E4M3 || dtype == FLP_DT_E5M2) {
        [[unroll]] for (uint i = 0u; i < 8u; i++) {
            uint byte_ = (w[i >> 2] >> (8u * (i & 3u))) & 0xffu;
            x[i] = dtype == FLP_DT_E4M3 ? flp_e4m3_to_f32(byte_) : flp_e5m2_to_f32(byte_);
        }
    } else {
        [[unroll]] for (uint i = 0u; i < 4u; i++) {
            x[2u * i] = flp_decode16(dtype, w[i] & 0xffffu);
            x[2u * i + 1u] = flp_decode16(dtype, w[i] >> 16);
        }
    }
}

#endif
