/* Device helpers shared by the CUDA kernels. Self-contained: no system or CUDA headers (NVRTC on
 * users' machines has none); only what nvcc and NVRTC both provide built in (threadIdx,
 * __shfl_xor_sync, __syncthreads, the math library) and the PTX wrappers of ptx.cuh. */
#ifndef FLP_CUDA_COMMON_CUH
#define FLP_CUDA_COMMON_CUH

#include "backend-cuda/kernels/decode_config.h"
#ifdef FLP_CUDA_EMULATE_PTX
/* The CPU emulator (backend-cuda/emulate/) brings host versions of the PTX wrappers. */
#include FLP_CUDA_EMULATE_PTX
#else
#include "backend-cuda/kernels/ptx.cuh"
#endif

namespace flp {

struct alignas(16) u32x4 {
    unsigned int x, y, z, w;
};
struct alignas(8) u32x2 {
    unsigned int x, y;
};
struct alignas(16) f32x4 {
    float x, y, z, w;
};
struct alignas(8) f32x2 {
    float x, y;
};

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr unsigned kFullMask = 0xffffffffu;

FLP_DEV float neg_inf() {
    return __int_as_float(0xff800000);
}

/* tanh through 2^x: absolute error a few 1e-7 (what matters once it scales a logit). */
FLP_DEV float tanh_fast(float x) {
    float e = exp2_approx(2.0f * kLog2e * fabsf(x)); /* +inf for large |x|: result 1 */
    float t = 1.0f - 2.0f * rcp_approx(e + 1.0f);
    return copysignf(t, x);
}

/* sin and cos of an f32 angle: Cody-Waite reduction by pi/2 in three parts and minimax
 * polynomials on [-pi/4, pi/4]. Measured against double: <= 7e-8 absolute for |x| <= 2.6e5 and
 * 1.1e-7 up to 1e6 (RoPE positions times frequencies <= 1); no local memory, unlike sincosf's
 * slow path for large arguments. */
FLP_DEV void sincos_rope(float x, float &s, float &c) {
    float j = rintf(x * 0.636619772367581343f);
    int q = __float2int_rn(j);
    float r = fmaf(j, -1.57079625129699707031e+00f, x);
    r = fmaf(j, -7.54978941586159635335e-08f, r);
    r = fmaf(j, -5.39030252995776476554e-15f, r);
    float r2 = r * r;
    float ps = fmaf(r2, -1.9515295891e-4f, 8.3321608736e-3f);
    ps = fmaf(ps, r2, -1.6666654611e-1f);
    float sn = fmaf(ps * r2, r, r);
    float pc = fmaf(r2, 2.443315711809948e-5f, -1.388731625493765e-3f);
    pc = fmaf(pc, r2, 4.166664568298827e-2f);
    pc = fmaf(pc, r2, -0.5f);
    float cs = fmaf(pc, r2, 1.0f);
    /* x = q*pi/2 + r: sin x = {sn, cs, -sn, -cs}[q&3], cos x = {cs, -sn, -cs, sn}[q&3]. */
    float s0 = (q & 1) ? cs : sn;
    float c0 = (q & 1) ? sn : cs;
    s = (q & 2) ? -s0 : s0;
    c = ((q + 1) & 2) ? -c0 : c0;
}

/* ---- rotate-half RoPE ------------------------------------------------------------------- */
/* Element d of a row at angle pos * freq[d mod D/2] becomes x_d cos - x_{d+D/2} sin (first
 * half) or x_d cos + x_{d-D/2} sin (second half); `partner` is x_{d +- D/2}. */
FLP_DEV float rope_element(float x, float partner, bool first_half, float sn, float cs) {
    return fmaf(x, cs, (first_half ? -partner : partner) * sn);
}

/* RoPE of the 8 elements x of one half of a row (first_half: they lie below D/2), given their 8
 * partners in the other half; freq points at the frequencies of these elements' pairs. */
FLP_DEV void rope_half8(float (&x)[8], const float (&partner)[8], bool first_half, float fpos,
                        const float *freq) {
#pragma unroll
    for (int i = 0; i < 8; i++) {
        float sn, cs;
        sincos_rope(fpos * freq[i], sn, cs);
        x[i] = rope_element(x[i], partner[i], first_half, sn, cs);
    }
}

/* RoPE of both halves at once: lo = elements d0..d0+7 (< D/2), hi = d0 + D/2 .. (one sincos per
 * pair). */
FLP_DEV void rope_pair8(float (&lo)[8], float (&hi)[8], float fpos, const float *freq) {
#pragma unroll
    for (int i = 0; i < 8; i++) {
        float sn, cs;
        sincos_rope(fpos * freq[i], sn, cs);
        const float a = lo[i], b = hi[i];
        lo[i] = rope_element(a, b, true, sn, cs);
        hi[i] = rope_element(b, a, false, sn, cs);
    }
}

/* ---- logits in log2 units --------------------------------------------------------------- */
/* The factor that turns q.k of raw keys (k_factor: kv_factor of the keys) into the logit in log2
 * units, or with a soft cap into logit / cap: the cap (times log2 e, soft_cap_log2) then
 * multiplies the tanh. */
FLP_DEV float logit_factor(float sm_scale, float k_factor, bool softcap, float soft_cap) {
    return softcap ? sm_scale * k_factor / soft_cap : sm_scale * k_factor * kLog2e;
}

/* Soft cap of a logit already divided by the cap (cap_log2 = cap * log2 e). */
FLP_DEV float soft_cap_log2(float x, float cap_log2) {
    return cap_log2 * tanh_fast(x);
}

/* ALiBi: slope (log2 units) times the distance of key position t from query position pos. */
FLP_DEV float alibi_bias(float x, float slope, int t, int pos) {
    return fmaf(slope, static_cast<float>(t - pos), x);
}

/* Packed query row j of a KV head kvh (core/prefill_params.h): query token j / group, query
 * head kvh * group + j % group. */
struct packed_row {
    int token, head;
};
FLP_DEV packed_row unpack_row(int j, int group, int kvh) {
    const int qi = j / group;
    return packed_row{qi, kvh * group + (j - qi * group)};
}

/* ---- conversions (bit manipulation and sm_80 cvt) ---------------------------------------- */

FLP_DEV void bf16x2_to_f32(unsigned w, float &lo, float &hi) {
    lo = __uint_as_float(w << 16);
    hi = __uint_as_float(w & 0xffff0000u);
}

/* Four e4m3 bytes as two f16x2 words (bytes 0-1 in lo, 2-3 in hi) holding the values times
 * 2^-8 exactly, subnormals included: the 7 magnitude bits shifted into an f16 (bias 15 against
 * 7) give that (the caller folds 2^8 into its scale). NaN encodings (0x7f/0xff) decode to
 * 480 * 2^-8: a cache never holds them. */
FLP_DEV void e4m3x4_to_f16x2_div256(unsigned w, unsigned &lo, unsigned &hi) {
    const unsigned a = __byte_perm(w, 0u, 0x4140); /* [b0, 0, b1, 0] */
    const unsigned b = __byte_perm(w, 0u, 0x4342); /* [b2, 0, b3, 0] */
    lo = ((a & 0x007f007fu) << 7) | ((a & 0x00800080u) << 8);
    hi = ((b & 0x007f007fu) << 7) | ((b & 0x00800080u) << 8);
}

/* Four e4m3 bytes as two f16x2 words of their values (every e4m3 value is an f16, so exact):
 * one cvt per pair where the device has it (sm_89), else the shift above and a product by 2^8. */
FLP_DEV void e4m3x4_to_f16x2(unsigned w, unsigned &lo, unsigned &hi) {
#ifdef FLP_HAVE_CVT_E4M3X2
    lo = cvt_f16x2_e4m3x2(w & 0xffffu);
    hi = cvt_f16x2_e4m3x2(w >> 16);
#else
    constexpr unsigned k256 = 0x5c005c00u; /* 2^8 in both f16 halves */
    e4m3x4_to_f16x2_div256(w, lo, hi);
    lo = mul_f16x2(lo, k256);
    hi = mul_f16x2(hi, k256);
#endif
}

/* Four e5m2 bytes as two f16x2 words: an e5m2 byte is the high byte of the f16 of the same
 * value. */
FLP_DEV void e5m2x4_to_f16x2(unsigned w, unsigned &lo, unsigned &hi) {
    lo = __byte_perm(w, 0u, 0x1404); /* [0, b0, 0, b1] */
    hi = __byte_perm(w, 0u, 0x3424); /* [0, b2, 0, b3] */
}

/* Four e4m3 bytes to floats scaled by 2^-8 (e4m3x4_to_f16x2_div256). */
FLP_DEV void e4m3x4_to_f32_div256(unsigned w, float (&f)[4]) {
    unsigned lo, hi;
    e4m3x4_to_f16x2_div256(w, lo, hi);
    f16x2_to_f32(lo, f[0], f[1]);
    f16x2_to_f32(hi, f[2], f[3]);
}

/* Four e5m2 bytes to floats. */
FLP_DEV void e5m2x4_to_f32(unsigned w, float (&f)[4]) {
    unsigned lo, hi;
    e5m2x4_to_f16x2(w, lo, hi);
    f16x2_to_f32(lo, f[0], f[1]);
    f16x2_to_f32(hi, f[2], f[3]);
}

/* 8 elements of a 16-bit dtype (f16 or bf16) in 16 bytes <-> floats. */
template <int DT> FLP_DEV void unpack8_16bit(const u32x4 &r, float (&f)[8]) {
    static_assert(DT == FLP_DT_F16 || DT == FLP_DT_BF16, "16-bit dtype");
    if constexpr (DT == FLP_DT_BF16) {
        bf16x2_to_f32(r.x, f[0], f[1]);
        bf16x2_to_f32(r.y, f[2], f[3]);
        bf16x2_to_f32(r.z, f[4], f[5]);
        bf16x2_to_f32(r.w, f[6], f[7]);
    } else {
        f16x2_to_f32(r.x, f[0], f[1]);
        f16x2_to_f32(r.y, f[2], f[3]);
        f16x2_to_f32(r.z, f[4], f[5]);
        f16x2_to_f32(r.w, f[6], f[7]);
    }
}

template <int DT> FLP_DEV unsigned pack2_16bit(float lo, float hi) {
    static_assert(DT == FLP_DT_F16 || DT == FLP_DT_BF16, "16-bit dtype");
    if constexpr (DT == FLP_DT_BF16)
        return pack_bf16x2(lo, hi);
    else
        return pack_f16x2(lo, hi);
}

template <int DT> FLP_DEV u32x4 pack8_16bit(const float (&f)[8]) {
    u32x4 r;
    r.x = pack2_16bit<DT>(f[0], f[1]);
    r.y = pack2_16bit<DT>(f[2], f[3]);
    r.z = pack2_16bit<DT>(f[4], f[5]);
    r.w = pack2_16bit<DT>(f[6], f[7]);
    return r;
}

/* mma.sync m16n8k16 with inputs of the 16-bit dtype DT (ptx.cuh: fragment layouts). */
template <int DT>
FLP_DEV void mma_16816(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    static_assert(DT == FLP_DT_F16 || DT == FLP_DT_BF16, "16-bit dtype");
    if constexpr (DT == FLP_DT_BF16)
        mma_bf16_16816(d, a, b0, b1);
    else
        mma_f16_16816(d, a, b0, b1);
}

/* KV dtype traits: bytes per element, the 8-element chunk a lane loads per token, and the
 * factor the raw decode must be multiplied by (besides the fp8 per-tensor scale). */
template <int DT> struct kv_traits;

template <> struct kv_traits<FLP_DT_F16> {
    static constexpr int bytes = 2;
    static constexpr bool fp8 = false;
    static constexpr float raw_factor = 1.0f;
    FLP_DEV static void load8(const unsigned char *p, float (&f)[8]) {
        unpack8_16bit<FLP_DT_F16>(*reinterpret_cast<const u32x4 *>(p), f);
    }
};

template <> struct kv_traits<FLP_DT_BF16> {
    static constexpr int bytes = 2;
    static constexpr bool fp8 = false;
    static constexpr float raw_factor = 1.0f;
    FLP_DEV static void load8(const unsigned char *p, float (&f)[8]) {
        unpack8_16bit<FLP_DT_BF16>(*reinterpret_cast<const u32x4 *>(p), f);
    }
};

template <> struct kv_traits<FLP_DT_E4M3> {
    static constexpr int bytes = 1;
    static constexpr bool fp8 = true;
    static constexpr float raw_factor = 256.0f;
    /* Four elements as two f16x2 words of their values (raw_factor is load8's only). */
    FLP_DEV static void to_f16x2(unsigned w, unsigned &lo, unsigned &hi) {
        e4m3x4_to_f16x2(w, lo, hi);
    }
    FLP_DEV static void load8(const unsigned char *p, float (&f)[8]) {
        const u32x2 r = *reinterpret_cast<const u32x2 *>(p);
        float a[4], b[4];
        e4m3x4_to_f32_div256(r.x, a);
        e4m3x4_to_f32_div256(r.y, b);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            f[i] = a[i];
            f[4 + i] = b[i];
        }
    }
};

template <> struct kv_traits<FLP_DT_E5M2> {
    static constexpr int bytes = 1;
    static constexpr bool fp8 = true;
    static constexpr float raw_factor = 1.0f;
    FLP_DEV static void to_f16x2(unsigned w, unsigned &lo, unsigned &hi) {
        e5m2x4_to_f16x2(w, lo, hi);
    }
    FLP_DEV static void load8(const unsigned char *p, float (&f)[8]) {
        const u32x2 r = *reinterpret_cast<const u32x2 *>(p);
        float a[4], b[4];
        e5m2x4_to_f32(r.x, a);
        e5m2x4_to_f32(r.y, b);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            f[i] = a[i];
            f[4 + i] = b[i];
        }
    }
};

/* What raw decoded K or V values of dtype DT are multiplied by: the fp8 per-tensor scale (0
 * means 1) times the raw decode's factor; 1 for 16-bit types. Kernels fold the key factor into
 * the logit scale and the value factor into the output. */
/* The same for values decoded by to_f16x2 (no raw factor). */
template <int DT> FLP_DEV float kv_factor_f16(float scale) {
    return kv_traits<DT>::fp8 ? (scale != 0.0f ? scale : 1.0f) : 1.0f;
}

template <int DT> FLP_DEV float kv_factor(float scale) {
    return kv_factor_f16<DT>(scale) * kv_traits<DT>::raw_factor; /* raw_factor 1 for 16-bit */
}

/* ---- run-time dtype codes and exact encoders (the KV append) ------------------------------ */

FLP_DEV bool dtype_is_fp8(int dt) {
    return dt == FLP_DT_E4M3 || dt == FLP_DT_E5M2;
}

FLP_DEV int dtype_bytes(int dt) {
    return dtype_is_fp8(dt) ? 1 : 2;
}

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

/* Dynamic shared memory of every kernel (one declaration, so the kernels agree on its type). */
extern __shared__ u32x4 dynamic_smem[];

} // namespace flp

#endif /* FLP_CUDA_COMMON_CUH */
