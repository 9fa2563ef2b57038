/* Dtype sizes and names, and exact conversions between f32 and the 16/8-bit float formats.
 *
 * All conversions are integer bit manipulation (no float arithmetic, so no dependence on the
 * FPU rounding mode or flush-to-zero flags). Encoding rounds to nearest, ties to even, and
 * handles subnormals exactly. NaN stays NaN: the sign and the top payload bits are kept and the
 * quiet bit is set, so an f32 signalling NaN never turns into an infinity.
 *
 * Formats (sign, exponent bits, mantissa bits, bias):
 *   f16  1.5.10 bias 15   IEEE: inf, NaN, max 65504
 *   bf16 1.8.7  bias 127  IEEE: inf, NaN, same exponent range as f32
 *   e5m2 1.5.2  bias 15   IEEE: inf, NaN, max 57344
 *   e4m3 1.4.3  bias 7    OCP "fn": no inf, S.1111.111 is NaN, max 448. Finite overflow and
 *                         +-inf saturate to +-448; NaN becomes 0x7f (0xff when negative).
 */
#include "flashport/flashport.h"

#include <string.h>

size_t flp_dtype_size(flp_dtype dtype) {
    switch (dtype) {
    case FLP_DTYPE_F32:
    case FLP_DTYPE_I32:
        return 4;
    case FLP_DTYPE_F16:
    case FLP_DTYPE_BF16:
        return 2;
    case FLP_DTYPE_E4M3:
    case FLP_DTYPE_E5M2:
    case FLP_DTYPE_U8:
        return 1;
    case FLP_DTYPE_DEFAULT:
        break;
    }
    return 0;
}

const char *flp_dtype_name(flp_dtype dtype) {
    switch (dtype) {
    case FLP_DTYPE_DEFAULT:
        return "default";
    case FLP_DTYPE_F32:
        return "f32";
    case FLP_DTYPE_F16:
        return "f16";
    case FLP_DTYPE_BF16:
        return "bf16";
    case FLP_DTYPE_E4M3:
        return "e4m3";
    case FLP_DTYPE_E5M2:
        return "e5m2";
    case FLP_DTYPE_I32:
        return "i32";
    case FLP_DTYPE_U8:
        return "u8";
    }
    return "invalid";
}

/* ---- bit helpers ---------------------------------------------------------------------- */

#define F32_SIGN 0x80000000u
#define F32_ABS 0x7fffffffu
#define F32_INF 0x7f800000u
#define F32_QUIET 0x00400000u

static uint32_t f32_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static float f32_from_bits(uint32_t u) {
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* x >> shift rounded to nearest, ties to even; 1 <= shift <= 31. */
static uint32_t shift_right_rne(uint32_t x, unsigned shift) {
    uint32_t r = x >> shift;
    uint32_t rem = x & ((1u << shift) - 1u);
    uint32_t half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (r & 1u)))
        r++;
    return r;
}

/* Magnitude code (exponent field << mbits | mantissa) of the finite, non-negative f32 with bits
 * abs in a format with mbits mantissa bits and exponent bias `bias` (a narrow format: bias <= 15,
 * mbits <= 10). The code is not range-checked: callers compare it with their largest finite
 * code. A mantissa carry moves into the exponent field by itself, as in IEEE encodings. */
static uint32_t encode_magnitude(uint32_t abs, unsigned mbits, int bias) {
    int exp32 = (int)(abs >> 23); /* biased f32 exponent field */
    if (exp32 - 127 + bias >= 1) {
        /* Normal in the target: re-bias the exponent, then round the mantissa. */
        uint32_t rebiased = abs - ((uint32_t)(127 - bias) << 23);
        return shift_right_rne(rebiased, 23u - mbits);
    }
    /* Subnormal (or zero) in the target: count in units of the smallest subnormal,
     * 2^(1 - bias - mbits). An f32 subnormal is far below half of that unit. */
    if (exp32 == 0)
        return 0;
    uint32_t significand = (abs & 0x007fffffu) | 0x00800000u; /* value = sig * 2^(exp32-150) */
    int shift = 151 - bias - (int)mbits - exp32;              /* >= 24 - mbits */
    if (shift > 25)
        return 0; /* below half the smallest subnormal (sig < 2^24 <= half) */
    return shift_right_rne(significand, (unsigned)shift);
}

/* Decodes a narrow IEEE-style value given its fields; the caller handles inf/NaN. */
static float decode_finite(uint32_t sign, uint32_t exp_field, uint32_t mantissa, unsigned mbits,
                           int bias) {
    if (exp_field == 0) {
        if (mantissa == 0)
            return f32_from_bits(sign);
        /* Subnormal: normalise so the leading 1 becomes the implicit bit. */
        int e = 1;
        while (!(mantissa & (1u << mbits))) {
            mantissa <<= 1;
            e--;
        }
        mantissa &= (1u << mbits) - 1u;
        int exp32 = e - bias + 127; /* e <= 0 here; still >= 1 for every narrow format */
        return f32_from_bits(sign | ((uint32_t)exp32 << 23) | (mantissa << (23u - mbits)));
    }
    uint32_t exp32 = exp_field + (uint32_t)(127 - bias);
    return f32_from_bits(sign | (exp32 << 23) | (mantissa << (23u - mbits)));
}

/* ---- f16 ------------------------------------------------------------------------------ */

uint16_t flp_f32_to_f16(float x) {
    uint32_t u = f32_bits(x);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t abs = u & F32_ABS;
    if (abs > F32_INF) /* NaN: keep the top payload bits, set the quiet bit */
        return (uint16_t)(sign | 0x7e00u | ((abs >> 13) & 0x03ffu));
    if (abs == F32_INF)
        return (uint16_t)(sign | 0x7c00u);
    uint32_t code = encode_magnitude(abs, 10, 15);
    if (code >= 0x7c00u) /* rounded past 65504 */
        code = 0x7c00u;
    return (uint16_t)(sign | code);
}

float flp_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp_field = (h >> 10) & 0x1fu;
    uint32_t mantissa = h & 0x03ffu;
    if (exp_field == 0x1fu) {
        if (mantissa == 0)
            return f32_from_bits(sign | F32_INF);
        return f32_from_bits(sign | F32_INF | F32_QUIET | (mantissa << 13));
    }
    return decode_finite(sign, exp_field, mantissa, 10, 15);
}

/* ---- bf16 ----------------------------------------------------------------------------- */

uint16_t flp_f32_to_bf16(float x) {
    uint32_t u = f32_bits(x);
    if ((u & F32_ABS) > F32_INF)
        return (uint16_t)((u >> 16) | 0x0040u);
    /* bf16 is the top half of f32: round the low 16 bits away. A carry out of the mantissa
     * moves into the exponent, and from the largest finite value into infinity, as RNE wants;
     * f32 subnormals map onto bf16 subnormals the same way. */
    uint32_t rounded = u + 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(rounded >> 16);
}

float flp_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    if ((u & F32_ABS) > F32_INF)
        u |= F32_QUIET;
    return f32_from_bits(u);
}

/* ---- fp8 e4m3fn ----------------------------------------------------------------------- */

#define E4M3_MAX_CODE 0x7eu /* 448 */
#define E4M3_NAN 0x7fu

uint8_t flp_f32_to_e4m3(float x) {
    uint32_t u = f32_bits(x);
    uint8_t sign = (uint8_t)((u >> 24) & 0x80u);
    uint32_t abs = u & F32_ABS;
    if (abs > F32_INF)
        return (uint8_t)(sign | E4M3_NAN);
    if (abs == F32_INF)
        return (uint8_t)(sign | E4M3_MAX_CODE);
    uint32_t code = encode_magnitude(abs, 3, 7);
    if (code > E4M3_MAX_CODE) /* saturate: e4m3fn has no infinity */
        code = E4M3_MAX_CODE;
    return (uint8_t)(sign | code);
}

float flp_e4m3_to_f32(uint8_t v) {
    uint32_t sign = (uint32_t)(v & 0x80u) << 24;
    if ((v & 0x7fu) == E4M3_NAN)
        return f32_from_bits(sign | F32_INF | F32_QUIET);
    return decode_finite(sign, (v >> 3) & 0x0fu, v & 0x07u, 3, 7);
}

/* ---- fp8 e5m2 ------------------------------------------------------------------------- */

uint8_t flp_f32_to_e5m2(float x) {
    uint32_t u = f32_bits(x);
    uint8_t sign = (uint8_t)((u >> 24) & 0x80u);
    uint32_t abs = u & F32_ABS;
    if (abs > F32_INF)
        return (uint8_t)(sign | 0x7eu | ((abs >> 21) & 0x01u));
    if (abs == F32_INF)
        return (uint8_t)(sign | 0x7cu);
    uint32_t code = encode_magnitude(abs, 2, 15);
    if (code >= 0x7cu) /* rounded past 57344 */
        code = 0x7cu;
    return (uint8_t)(sign | code);
}

float flp_e5m2_to_f32(uint8_t v) {
    uint32_t sign = (uint32_t)(v & 0x80u) << 24;
    uint32_t exp_field = (v >> 2) & 0x1fu;
    uint32_t mantissa = v & 0x03u;
    if (exp_field == 0x1fu) {
        if (mantissa == 0)
            return f32_from_bits(sign | F32_INF);
        return f32_from_bits(sign | F32_INF | F32_QUIET | (mantissa << 21));
    }
    return decode_finite(sign, exp_field, mantissa, 2, 15);
}

/* ---- arrays --------------------------------------------------------------------------- */

/* These have no context: failures only return the status. dst/src may be unaligned, so
 * elements travel through memcpy (compiled to plain loads/stores). */

static bool is_float_dtype(flp_dtype dtype) {
    return dtype == FLP_DTYPE_F32 || dtype == FLP_DTYPE_F16 || dtype == FLP_DTYPE_BF16 ||
           dtype == FLP_DTYPE_E4M3 || dtype == FLP_DTYPE_E5M2;
}

flp_status flp_convert_from_f32(flp_dtype dtype, const float *src, void *dst, size_t n) {
    if (!is_float_dtype(dtype))
        return FLP_ERROR_INVALID_ARGUMENT;
    if (n == 0)
        return FLP_OK;
    if (!src || !dst || n > SIZE_MAX / sizeof(float))
        return FLP_ERROR_INVALID_ARGUMENT;
    unsigned char *out = dst;
    switch (dtype) {
    case FLP_DTYPE_F32:
        memmove(dst, src, n * sizeof(float));
        break;
    case FLP_DTYPE_F16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h = flp_f32_to_f16(src[i]);
            memcpy(out + 2 * i, &h, 2);
        }
        break;
    case FLP_DTYPE_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h = flp_f32_to_bf16(src[i]);
            memcpy(out + 2 * i, &h, 2);
        }
        break;
    case FLP_DTYPE_E4M3:
        for (size_t i = 0; i < n; i++)
            out[i] = flp_f32_to_e4m3(src[i]);
        break;
    case FLP_DTYPE_E5M2:
        for (size_t i = 0; i < n; i++)
            out[i] = flp_f32_to_e5m2(src[i]);
        break;
    default:
        return FLP_ERROR_INVALID_ARGUMENT;
    }
    return FLP_OK;
}

flp_status flp_convert_to_f32(flp_dtype dtype, const void *src, float *dst, size_t n) {
    if (!is_float_dtype(dtype))
        return FLP_ERROR_INVALID_ARGUMENT;
    if (n == 0)
        return FLP_OK;
    if (!src || !dst || n > SIZE_MAX / sizeof(float))
        return FLP_ERROR_INVALID_ARGUMENT;
    const unsigned char *in = src;
    switch (dtype) {
    case FLP_DTYPE_F32:
        memmove(dst, src, n * sizeof(float));
        break;
    case FLP_DTYPE_F16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, in + 2 * i, 2);
            dst[i] = flp_f16_to_f32(h);
        }
        break;
    case FLP_DTYPE_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, in + 2 * i, 2);
            dst[i] = flp_bf16_to_f32(h);
        }
        break;
    case FLP_DTYPE_E4M3:
        for (size_t i = 0; i < n; i++)
            dst[i] = flp_e4m3_to_f32(in[i]);
        break;
    case FLP_DTYPE_E5M2:
        for (size_t i = 0; i < n; i++)
            dst[i] = flp_e5m2_to_f32(in[i]);
        break;
    default:
        return FLP_ERROR_INVALID_ARGUMENT;
    }
    return FLP_OK;
}
