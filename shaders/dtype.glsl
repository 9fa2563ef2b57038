// Element conversions by bit manipulation: no bf16/fp8 (or even float16) extension needed. The
// one place for the shaders' dtype conversions. Encodings match core/dtype.c bit for bit: round
// to nearest even, subnormals exact, overflow to inf (f16, bf16, e5m2) or saturation to +-448
// (e4m3); NaN stays NaN with its sign and the top payload bits, quiet bit set.
// dtype arguments are flp_dtype values; callers pass specialisation constants, so every
// branch on them folds away.
#ifndef FLP_DTYPE_GLSL
#define FLP_DTYPE_GLSL

#include "core/kernel_constants.h"

// ---- decoding for arithmetic ----------------------------------------------------------------
// Values that feed the attention math: a NaN's payload does not matter there.

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

float flp_decode16(uint dtype, uint bits) {
    return dtype == FLP_DT_BF16 ? flp_bf16_to_f32(bits) : flp_f16_to_f32(bits);
}

// 4 consecutive 16-bit elements (f16 or bf16).
vec4 flp_decode4(uint dtype, uvec2 w) {
    return vec4(flp_decode16(dtype, w.x & 0xffffu), flp_decode16(dtype, w.x >> 16),
                flp_decode16(dtype, w.y & 0xffffu), flp_decode16(dtype, w.y >> 16));
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

// 8 16-bit elements whose dtype is known only at run time (decode_cpu.comp reads it from the
// plan): both conversions run and a select picks one per element, cheaper than a branch where
// both sides run anyway (CPU devices). With a dtype fixed at pipeline creation use flp_decode8
// instead: this form generates different (on NVIDIA slower) code there.
void flp_decode8_16(bool bf16, uvec4 w, out float x[8]) {
    [[unroll]] for (uint i = 0u; i < 4u; i++) {
        vec2 h = unpackHalf2x16(w[i]);
        x[2u * i] = bf16 ? uintBitsToFloat(w[i] << 16) : h.x;
        x[2u * i + 1u] = bf16 ? uintBitsToFloat(w[i] & 0xffff0000u) : h.y;
    }
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

// ---- exact decoding of bits ----------------------------------------------------------------
// Where the result is stored rather than computed with (kv_append.comp), f32 bits exactly as
// core/dtype.c gives them: subnormals by integer arithmetic (no flush to zero possible), NaN
// quiet with its payload, whatever the device's conversion instructions do.

uint flp_f16_bits_to_f32_bits(uint h) {
    uint sign = (h & 0x8000u) << 16;
    uint e = (h >> 10) & 0x1fu;
    uint m = h & 0x3ffu;
    if (e == 0x1fu)
        return m == 0u ? sign | 0x7f800000u : sign | 0x7fc00000u | (m << 13);
    if (e == 0u) {
        if (m == 0u)
            return sign;
        int msb = findMSB(m); // value m * 2^-24 = 1.f * 2^(msb - 24)
        return sign | (uint(msb + 103) << 23) | ((m << uint(23 - msb)) & 0x7fffffu);
    }
    return sign | ((e + 112u) << 23) | (m << 13);
}

uint flp_bf16_bits_to_f32_bits(uint h) {
    uint u = h << 16;
    if ((u & 0x7fffffffu) > 0x7f800000u)
        u |= 0x00400000u;
    return u;
}

// ---- encoding ------------------------------------------------------------------------------

// f32 bits -> f16 bits. Normal results by integer rounding of the 13 dropped bits; subnormal
// ones by an exact scaling to units of 2^-24 and roundEven (the same results as core/dtype.c's
// integer encoder, checked for all 2^32 inputs, at a fraction of the instructions: this encodes
// every attention output).
uint flp_f32_bits_to_f16(uint x) {
    uint sign = (x >> 16) & 0x8000u;
    uint ax = x & 0x7fffffffu;
    uint nan = 0x7e00u | ((ax >> 13) & 0x3ffu); // quiet, top payload bits kept
    if (ax >= 0x7f800000u)
        return sign | (ax > 0x7f800000u ? nan : 0x7c00u); // (a select, not a branch)
    if (ax >= 0x477ff000u) // >= 65520 rounds to infinity
        return sign | 0x7c00u;
    if (ax >= 0x38800000u) { // normal f16 (>= 2^-14): rebias, then round the 13 dropped bits
        uint r = ax - 0x38000000u;
        r += 0xfffu + ((r >> 13) & 1u);
        return sign | (r >> 13);
    }
    // subnormal f16: units of 2^-24; the scaling is exact and roundEven is the tie rule (an f32
    // subnormal gives 0, flushed or not)
    return sign | uint(roundEven(uintBitsToFloat(ax) * 16777216.0));
}

// f32 bits -> bf16 bits: the top half, rounded; NaN: quiet, sign and top payload bits kept.
uint flp_f32_bits_to_bf16(uint x) {
    if ((x & 0x7fffffffu) > 0x7f800000u)
        return (x >> 16) | 0x0040u;
    return (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
}

uint flp_f32_to_f16(float f) {
    return flp_f32_bits_to_f16(floatBitsToUint(f));
}

uint flp_f32_to_bf16(float f) {
    return flp_f32_bits_to_bf16(floatBitsToUint(f));
}

// x >> s rounded to nearest, ties to even; 1 <= s <= 31.
uint flp_shift_rne(uint x, uint s) {
    uint r = x >> s;
    uint rem = x & ((1u << s) - 1u);
    uint half_ = 1u << (s - 1u);
    if (rem > half_ || (rem == half_ && (r & 1u) != 0u))
        r++;
    return r;
}

// Magnitude code of the finite non-negative f32 bits a in a format with mbits mantissa bits and
// exponent bias `bias` (not range-checked; core/dtype.c's encode_magnitude).
uint flp_encode_magnitude(uint a, uint mbits, int bias) {
    int e32 = int(a >> 23);
    if (e32 - 127 + bias >= 1)
        return flp_shift_rne(a - (uint(127 - bias) << 23), 23u - mbits);
    if (e32 == 0)
        return 0u;
    uint sig = (a & 0x007fffffu) | 0x00800000u;
    int sh = 151 - bias - int(mbits) - e32;
    if (sh > 25)
        return 0u;
    return flp_shift_rne(sig, uint(sh));
}

// f32 bits -> e4m3fn: saturating (no infinity), NaN -> 0x7f with its sign.
uint flp_f32_bits_to_e4m3(uint u) {
    uint sign = (u >> 24) & 0x80u;
    uint a = u & 0x7fffffffu;
    if (a > 0x7f800000u)
        return sign | 0x7fu;
    if (a == 0x7f800000u)
        return sign | 0x7eu;
    return sign | min(flp_encode_magnitude(a, 3u, 7), 0x7eu);
}

// f32 bits -> e5m2: overflow -> inf; NaN quiet with its sign and top payload bit.
uint flp_f32_bits_to_e5m2(uint u) {
    uint sign = (u >> 24) & 0x80u;
    uint a = u & 0x7fffffffu;
    if (a > 0x7f800000u)
        return sign | 0x7eu | ((a >> 21) & 0x01u);
    if (a == 0x7f800000u)
        return sign | 0x7cu;
    return sign | min(flp_encode_magnitude(a, 2u, 15), 0x7cu);
}

uint flp_encode16(uint dtype, float f) {
    return dtype == FLP_DT_BF16 ? flp_f32_to_bf16(f) : flp_f32_to_f16(f);
}

// Two values as one 32-bit word, the first in the low half (little endian element order).
uint flp_pack16x2(uint dtype, float a, float b) {
    return flp_encode16(dtype, a) | (flp_encode16(dtype, b) << 16);
}

// 4 consecutive elements of a 16-bit dtype as two words.
uvec2 flp_encode4(uint dtype, vec4 x) {
    return uvec2(flp_pack16x2(dtype, x.x, x.y), flp_pack16x2(dtype, x.z, x.w));
}

// 8 consecutive elements of a 16-bit dtype as four words (one 16-byte store).
uvec4 flp_encode8(uint dtype, float x[8]) {
    uvec4 w;
    [[unroll]] for (uint i = 0u; i < 4u; i++)
        w[i] = flp_pack16x2(dtype, x[2u * i], x[2u * i + 1u]);
    return w;
}

#endif
