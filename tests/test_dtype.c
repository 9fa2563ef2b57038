/* Exhaustive tests of the f32 <-> f16/bf16/e4m3/e5m2 conversions in core/dtype.c.
 *
 * Every 16-bit and 8-bit pattern is decoded and checked against an independent formula built
 * from the sign/exponent/mantissa fields with ldexp; every pattern round-trips; every midpoint
 * between adjacent representable values rounds to the even neighbour, and one f32 ulp either
 * side rounds down/up; random f32 values are checked against a brute-force nearest-value search
 * over the table of all representable values. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include <float.h>
#include <math.h>
#include <string.h>

#include "flashport/flashport.h"

/* ---- format descriptions -------------------------------------------------------------- */

typedef struct format {
    const char *name;
    flp_dtype dtype;
    int ebits, mbits, bias;
    bool ieee; /* all-ones exponent is inf/NaN; else e4m3fn: only S.1111.111 is NaN */
    uint32_t (*encode)(float);
    float (*decode)(uint32_t);
} format;

static uint32_t enc_f16(float x) {
    return flp_f32_to_f16(x);
}
static float dec_f16(uint32_t p) {
    return flp_f16_to_f32((uint16_t)p);
}
static uint32_t enc_bf16(float x) {
    return flp_f32_to_bf16(x);
}
static float dec_bf16(uint32_t p) {
    return flp_bf16_to_f32((uint16_t)p);
}
static uint32_t enc_e4m3(float x) {
    return flp_f32_to_e4m3(x);
}
static float dec_e4m3(uint32_t p) {
    return flp_e4m3_to_f32((uint8_t)p);
}
static uint32_t enc_e5m2(float x) {
    return flp_f32_to_e5m2(x);
}
static float dec_e5m2(uint32_t p) {
    return flp_e5m2_to_f32((uint8_t)p);
}

static const format FORMATS[] = {
    {"f16", FLP_DTYPE_F16, 5, 10, 15, true, enc_f16, dec_f16},
    {"bf16", FLP_DTYPE_BF16, 8, 7, 127, true, enc_bf16, dec_bf16},
    {"e4m3", FLP_DTYPE_E4M3, 4, 3, 7, false, enc_e4m3, dec_e4m3},
    {"e5m2", FLP_DTYPE_E5M2, 5, 2, 15, true, enc_e5m2, dec_e5m2},
};
#define NUM_FORMATS (sizeof FORMATS / sizeof FORMATS[0])

static uint32_t num_patterns(const format *f) {
    return 1u << (1 + f->ebits + f->mbits);
}
static uint32_t sign_bit(const format *f) {
    return 1u << (f->ebits + f->mbits);
}
static uint32_t exp_mask(const format *f) {
    return (1u << f->ebits) - 1u;
}
static uint32_t man_mask(const format *f) {
    return (1u << f->mbits) - 1u;
}
/* Largest finite positive pattern; every pattern 0..max_code is finite and ascending. */
static uint32_t max_code(const format *f) {
    if (f->ieee)
        return (exp_mask(f) << f->mbits) - 1u;
    return (exp_mask(f) << f->mbits) | (man_mask(f) - 1u);
}

/* The value of pattern p from its fields, independent of the library. NaN for NaN patterns. */
static double ref_decode(const format *f, uint32_t p) {
    uint32_t e = (p >> f->mbits) & exp_mask(f);
    uint32_t m = p & man_mask(f);
    bool neg = (p & sign_bit(f)) != 0;
    double mag;
    if (f->ieee && e == exp_mask(f)) {
        if (m != 0)
            return NAN;
        mag = INFINITY;
    } else if (!f->ieee && e == exp_mask(f) && m == man_mask(f)) {
        return NAN;
    } else if (e == 0) {
        mag = ldexp((double)m, 1 - f->bias - f->mbits);
    } else {
        mag = ldexp((double)(m + (1u << f->mbits)), (int)e - f->bias - f->mbits);
    }
    return neg ? -mag : mag;
}

static bool is_nan_pattern(const format *f, uint32_t p) {
    return isnan(ref_decode(f, p));
}

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

/* xorshift64*: deterministic random numbers. */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rng_next(void) {
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}

/* ---- dtype size and name -------------------------------------------------------------- */

static void test_size_and_name(void **state) {
    (void)state;
    assert_int_equal(flp_dtype_size(FLP_DTYPE_F32), 4);
    assert_int_equal(flp_dtype_size(FLP_DTYPE_F16), 2);
    assert_int_equal(flp_dtype_size(FLP_DTYPE_BF16), 2);
    assert_int_equal(flp_dtype_size(FLP_DTYPE_E4M3), 1);
    assert_int_equal(flp_dtype_size(FLP_DTYPE_E5M2), 1);
    assert_int_equal(flp_dtype_size(FLP_DTYPE_I32), 4);
    assert_int_equal(flp_dtype_size(FLP_DTYPE_U8), 1);
    assert_int_equal(flp_dtype_size(FLP_DTYPE_DEFAULT), 0);
    assert_int_equal(flp_dtype_size((flp_dtype)99), 0);
    assert_int_equal(flp_dtype_size((flp_dtype)-1), 0);
    assert_string_equal(flp_dtype_name(FLP_DTYPE_F32), "f32");
    assert_string_equal(flp_dtype_name(FLP_DTYPE_F16), "f16");
    assert_string_equal(flp_dtype_name(FLP_DTYPE_BF16), "bf16");
    assert_string_equal(flp_dtype_name(FLP_DTYPE_E4M3), "e4m3");
    assert_string_equal(flp_dtype_name(FLP_DTYPE_E5M2), "e5m2");
    assert_string_equal(flp_dtype_name(FLP_DTYPE_I32), "i32");
    assert_string_equal(flp_dtype_name(FLP_DTYPE_U8), "u8");
    assert_string_equal(flp_dtype_name((flp_dtype)99), "invalid");
    assert_string_equal(flp_dtype_name((flp_dtype)-1), "invalid");
}

/* ---- exhaustive decode and round trip ------------------------------------------------- */

static void test_decode_exhaustive(void **state) {
    (void)state;
    for (size_t fi = 0; fi < NUM_FORMATS; fi++) {
        const format *f = &FORMATS[fi];
        uint32_t nan_count = 0;
        for (uint32_t p = 0; p < num_patterns(f); p++) {
            float got = f->decode(p);
            double want = ref_decode(f, p);
            if (isnan(want)) {
                nan_count++;
                if (!isnan(got))
                    fail_msg("%s: pattern 0x%x decodes to %g, want NaN", f->name, p, got);
                /* A decoded NaN is quiet and keeps its sign. */
                assert_true(f32_bits(got) & 0x00400000u);
                assert_int_equal(signbit(got) != 0, (p & sign_bit(f)) != 0);
                continue;
            }
            if ((double)got != want || (signbit(got) != 0) != (signbit(want) != 0))
                fail_msg("%s: pattern 0x%x decodes to %a, want %a", f->name, p, (double)got, want);
        }
        /* IEEE formats: 2 * (2^mbits - 1) NaNs; e4m3fn: exactly 0x7f and 0xff. */
        uint32_t want_nans = f->ieee ? 2u * man_mask(f) : 2u;
        assert_int_equal(nan_count, want_nans);
    }
    /* Spot values that are easy to check by hand. */
    assert_true(flp_f16_to_f32(0x3c00) == 1.0f);
    assert_true(flp_f16_to_f32(0x7bff) == 65504.0f);
    assert_true(flp_f16_to_f32(0x0001) == ldexpf(1.0f, -24));
    assert_true(flp_bf16_to_f32(0x3f80) == 1.0f);
    assert_true(flp_bf16_to_f32(0x0001) == ldexpf(1.0f, -133));
    assert_true(flp_e4m3_to_f32(0x7e) == 448.0f);
    assert_true(flp_e4m3_to_f32(0x01) == ldexpf(1.0f, -9));
    assert_true(flp_e4m3_to_f32(0x38) == 1.0f);
    assert_true(flp_e5m2_to_f32(0x7b) == 57344.0f);
    assert_true(flp_e5m2_to_f32(0x01) == ldexpf(1.0f, -16));
    assert_true(flp_e5m2_to_f32(0x3c) == 1.0f);
}

static void test_round_trip_exhaustive(void **state) {
    (void)state;
    for (size_t fi = 0; fi < NUM_FORMATS; fi++) {
        const format *f = &FORMATS[fi];
        for (uint32_t p = 0; p < num_patterns(f); p++) {
            uint32_t q = f->encode(f->decode(p));
            if (is_nan_pattern(f, p)) {
                if (!is_nan_pattern(f, q))
                    fail_msg("%s: NaN 0x%x re-encodes to non-NaN 0x%x", f->name, p, q);
                assert_int_equal(q & sign_bit(f), p & sign_bit(f));
                /* IEEE formats: the result is quiet (top mantissa bit set). */
                if (f->ieee)
                    assert_true(q & (1u << (f->mbits - 1)));
            } else if (q != p) {
                fail_msg("%s: pattern 0x%x round-trips to 0x%x", f->name, p, q);
            }
        }
    }
}

/* ---- rounding at every midpoint ------------------------------------------------------- */

static void check_encode(const format *f, float x, uint32_t want) {
    uint32_t got = f->encode(x);
    if (got != want)
        fail_msg("%s: encode(%a) = 0x%x, want 0x%x", f->name, (double)x, got, want);
}

static void test_midpoints_round_to_even(void **state) {
    (void)state;
    for (size_t fi = 0; fi < NUM_FORMATS; fi++) {
        const format *f = &FORMATS[fi];
        for (uint32_t p = 0; p < max_code(f); p++) {
            double lo = ref_decode(f, p), hi = ref_decode(f, p + 1);
            assert_true(lo < hi);
            double mid_d = (lo + hi) / 2;
            float mid = (float)mid_d;
            if ((double)mid != mid_d)
                fail_msg("%s: midpoint %a of 0x%x is not an f32", f->name, mid_d, p);
            uint32_t even = (p & 1u) ? p + 1 : p;
            float below = nextafterf(mid, 0.0f), above = nextafterf(mid, INFINITY);
            for (int neg = 0; neg < 2; neg++) {
                uint32_t s = neg ? sign_bit(f) : 0;
                float sg = neg ? -1.0f : 1.0f;
                check_encode(f, sg * (float)lo, s | p);
                check_encode(f, sg * mid, s | even);
                check_encode(f, sg * below, s | p);
                check_encode(f, sg * above, s | (p + 1));
            }
        }
    }
}

/* ---- overflow, subnormals, zeros, NaN ------------------------------------------------- */

static void test_overflow_boundaries(void **state) {
    (void)state;
    for (size_t fi = 0; fi < NUM_FORMATS; fi++) {
        const format *f = &FORMATS[fi];
        uint32_t maxc = max_code(f);
        double max = ref_decode(f, maxc);
        double ulp = max - ref_decode(f, maxc - 1);
        float mid = (float)(max + ulp / 2); /* halfway to the next (missing) value */
        assert_true((double)mid == max + ulp / 2);
        /* IEEE: the missing next value is infinity, whose "mantissa" is even. */
        uint32_t over = f->ieee ? (exp_mask(f) << f->mbits) : maxc;
        float inputs_max[] = {(float)max, nextafterf(mid, 0.0f)};
        float inputs_over[] = {mid, nextafterf(mid, INFINITY), (float)(2 * max), FLT_MAX, INFINITY};
        for (int neg = 0; neg < 2; neg++) {
            uint32_t s = neg ? sign_bit(f) : 0;
            float sg = neg ? -1.0f : 1.0f;
            for (size_t i = 0; i < sizeof inputs_max / sizeof inputs_max[0]; i++)
                check_encode(f, sg * inputs_max[i], s | maxc);
            for (size_t i = 0; i < sizeof inputs_over / sizeof inputs_over[0]; i++)
                check_encode(f, sg * inputs_over[i], s | over);
        }
    }
    /* The documented limits. */
    assert_int_equal(flp_f32_to_f16(65504.0f), 0x7bff);
    assert_int_equal(flp_f32_to_f16(65519.99f), 0x7bff);
    assert_int_equal(flp_f32_to_f16(65520.0f), 0x7c00);
    assert_int_equal(flp_f32_to_e4m3(448.0f), 0x7e);
    assert_int_equal(flp_f32_to_e4m3(464.0f), 0x7e);
    assert_int_equal(flp_f32_to_e4m3(1e6f), 0x7e);
    assert_int_equal(flp_f32_to_e4m3(-INFINITY), 0xfe);
    assert_int_equal(flp_f32_to_e5m2(57344.0f), 0x7b);
    assert_int_equal(flp_f32_to_e5m2(61440.0f), 0x7c);
    assert_int_equal(flp_f32_to_bf16(FLT_MAX), 0x7f80); /* FLT_MAX rounds past bf16's max */
    assert_int_equal(flp_f32_to_bf16(f32_from_bits(0x7f7f7fff)), 0x7f7f);
}

static void test_subnormals_and_zero(void **state) {
    (void)state;
    for (size_t fi = 0; fi < NUM_FORMATS; fi++) {
        const format *f = &FORMATS[fi];
        /* Signed zero. */
        check_encode(f, 0.0f, 0);
        check_encode(f, -0.0f, sign_bit(f));
        assert_true(f->decode(0) == 0.0f && !signbit(f->decode(0)));
        assert_true(f->decode(sign_bit(f)) == 0.0f && signbit(f->decode(sign_bit(f))));
        /* Smallest subnormal and the values around half of it. */
        float tiny = (float)ref_decode(f, 1);
        assert_true(tiny > 0.0f);
        check_encode(f, tiny, 1);
        check_encode(f, tiny / 2, 0);                              /* tie -> even (zero) */
        check_encode(f, nextafterf(tiny / 2, INFINITY), 1);        /* just above the tie */
        check_encode(f, -nextafterf(tiny / 2, 0.0f), sign_bit(f)); /* rounds to -0 */
        check_encode(f, 1.5f * tiny, 2);                           /* tie between 1 and 2 -> 2 */
        check_encode(f, 2.5f * tiny, 2);                           /* tie between 2 and 3 -> 2 */
        /* The f32 smallest subnormal underflows to a signed zero in every format. */
        check_encode(f, FLT_TRUE_MIN, 0);
        check_encode(f, -FLT_TRUE_MIN, sign_bit(f));
        /* Largest subnormal plus half a unit carries into the smallest normal. */
        uint32_t largest_sub = man_mask(f);
        float carry = (float)(ref_decode(f, largest_sub) + ref_decode(f, 1) / 2);
        check_encode(f, carry, largest_sub + 1);
    }
    /* bf16 subnormals are f32 subnormals: exact bit rounding there too. */
    assert_int_equal(flp_f32_to_bf16(f32_from_bits(0x00008000)), 0x0000);
    assert_int_equal(flp_f32_to_bf16(f32_from_bits(0x00008001)), 0x0001);
    assert_int_equal(flp_f32_to_bf16(f32_from_bits(0x00018000)), 0x0002);
    assert_int_equal(flp_f32_to_bf16(f32_from_bits(0x007fffff)), 0x0080);
}

static void test_nan_inputs(void **state) {
    (void)state;
    const uint32_t nans[] = {0x7fc00000u, 0xffc00000u, 0x7f800001u, 0xff800001u,
                             0x7fbfffffu, 0x7fffffffu, 0x7f802000u, 0xffa00000u};
    for (size_t fi = 0; fi < NUM_FORMATS; fi++) {
        const format *f = &FORMATS[fi];
        for (size_t i = 0; i < sizeof nans / sizeof nans[0]; i++) {
            uint32_t q = f->encode(f32_from_bits(nans[i]));
            if (!is_nan_pattern(f, q))
                fail_msg("%s: f32 NaN 0x%08x encodes to non-NaN 0x%x", f->name, nans[i], q);
            assert_int_equal((q & sign_bit(f)) != 0, (nans[i] >> 31) != 0);
            if (f->ieee)
                assert_true(q & (1u << (f->mbits - 1))); /* quiet */
        }
        /* Infinity stays infinity (or saturates for e4m3). */
        uint32_t inf = f->ieee ? (exp_mask(f) << f->mbits) : max_code(f);
        check_encode(f, INFINITY, inf);
        check_encode(f, -INFINITY, sign_bit(f) | inf);
    }
    assert_int_equal(flp_f32_to_e4m3(NAN), 0x7f);
    assert_int_equal(flp_f32_to_e4m3(-NAN), 0xff);
}

/* ---- random values against a brute-force nearest search -------------------------------- */

/* The pattern nearest to x (ties to even), found by binary search over the ascending table of
 * all finite non-negative values; no bit tricks shared with the library. */
static uint32_t ref_encode(const format *f, const double *table, float x) {
    uint32_t s = signbit(x) ? sign_bit(f) : 0;
    double a = fabs((double)x);
    uint32_t maxc = max_code(f);
    if (a > table[maxc]) {
        double ulp = table[maxc] - table[maxc - 1];
        if (!f->ieee)
            return s | maxc;
        return s | (a >= table[maxc] + ulp / 2 ? exp_mask(f) << f->mbits : maxc);
    }
    uint32_t lo = 0, hi = maxc; /* table[lo] <= a <= table[hi] */
    while (hi - lo > 1) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (table[mid] <= a)
            lo = mid;
        else
            hi = mid;
    }
    double d_lo = a - table[lo], d_hi = table[hi] - a;
    if (d_lo < d_hi)
        return s | lo;
    if (d_hi < d_lo)
        return s | hi;
    return s | ((lo & 1u) ? hi : lo);
}

static void test_random_against_nearest(void **state) {
    (void)state;
    double *table = malloc(sizeof(double) << 16);
    assert_non_null(table);
    for (size_t fi = 0; fi < NUM_FORMATS; fi++) {
        const format *f = &FORMATS[fi];
        for (uint32_t p = 0; p <= max_code(f); p++)
            table[p] = ref_decode(f, p);
        /* f32 exponents from below the smallest subnormal to above the largest finite. */
        int emin = 1 - f->bias - f->mbits - 2, emax = (int)exp_mask(f) - f->bias + 1;
        if (emin < -149)
            emin = -149;
        if (emax > 127)
            emax = 127;
        for (int i = 0; i < 100000; i++) {
            uint64_t r = rng_next();
            int e = emin + (int)(r % (uint64_t)(emax - emin + 1));
            uint32_t man = (uint32_t)(r >> 32) & 0x007fffffu;
            if ((r >> 20) & 3u) /* favour values close to a midpoint: few low bits set */
                man &= ~((1u << (uint32_t)((r >> 8) % 23u)) - 1u);
            uint32_t bits = e < -126 ? (man >> (-126 - e)) | (1u << (23 + 126 + e))
                                     : ((uint32_t)(e + 127) << 23) | man;
            bits |= (uint32_t)(r & 1u) << 31;
            float x = f32_from_bits(bits);
            assert_false(isnan(x));
            uint32_t want = ref_encode(f, table, x);
            uint32_t got = f->encode(x);
            if (got != want)
                fail_msg("%s: encode(%a) = 0x%x, nearest is 0x%x", f->name, (double)x, got, want);
        }
    }
    free(table);
}

/* ---- array conversions ---------------------------------------------------------------- */

#define N_CONVERT 1001

static float random_float(void) {
    uint64_t r = rng_next();
    /* Magnitudes 2^-20 .. 2^20 with random mantissa and sign: never zero. */
    double m = 1.0 + (double)(r >> 11) / 9007199254740992.0;
    int e = (int)((r >> 3) % 41u) - 20;
    return (float)((r & 1u) ? -ldexp(m, e) : ldexp(m, e));
}

static void test_convert_arrays(void **state) {
    (void)state;
    static float src[N_CONVERT], back[N_CONVERT];
    /* +1: an odd offset makes the 16-bit element stores unaligned; +1 more: a guard byte. */
    static unsigned char dst[N_CONVERT * 4 + 2];
    for (int i = 0; i < N_CONVERT; i++)
        src[i] = random_float();
    src[7] = INFINITY;
    src[8] = -NAN;
    src[9] = 1e9f;
    const flp_dtype dtypes[] = {FLP_DTYPE_F32, FLP_DTYPE_F16, FLP_DTYPE_BF16, FLP_DTYPE_E4M3,
                                FLP_DTYPE_E5M2};
    for (size_t di = 0; di < sizeof dtypes / sizeof dtypes[0]; di++) {
        flp_dtype dt = dtypes[di];
        size_t es = flp_dtype_size(dt);
        unsigned char *out = dst + 1;
        /* Two different poisons: an element equal to the right answer under both was written. */
        const unsigned char poisons[2] = {0xa5, 0x5a};
        for (int pi = 0; pi < 2; pi++) {
            memset(dst, poisons[pi], sizeof dst);
            assert_int_equal(flp_convert_from_f32(dt, src, out, N_CONVERT), FLP_OK);
            assert_int_equal(dst[0], poisons[pi]);              /* nothing before the array */
            assert_int_equal(out[N_CONVERT * es], poisons[pi]); /* nothing after it */
            for (int i = 0; i < N_CONVERT; i++) {
                uint32_t got = 0, want;
                memcpy(&got, out + i * es, es);
                switch (dt) {
                case FLP_DTYPE_F32:
                    want = f32_bits(src[i]);
                    break;
                case FLP_DTYPE_F16:
                    want = flp_f32_to_f16(src[i]);
                    break;
                case FLP_DTYPE_BF16:
                    want = flp_f32_to_bf16(src[i]);
                    break;
                case FLP_DTYPE_E4M3:
                    want = flp_f32_to_e4m3(src[i]);
                    break;
                default:
                    want = flp_f32_to_e5m2(src[i]);
                    break;
                }
                if (got != want)
                    fail_msg("%s element %d: 0x%x, want 0x%x", flp_dtype_name(dt), i, got, want);
            }
            /* Back to f32, poisoned with two different NaN-free patterns. */
            const float back_poisons[2] = {-12345.678f, 98765.4321f};
            for (int i = 0; i < N_CONVERT; i++)
                back[i] = back_poisons[pi];
            assert_int_equal(flp_convert_to_f32(dt, out, back, N_CONVERT), FLP_OK);
            for (int i = 0; i < N_CONVERT; i++) {
                uint32_t code = 0;
                memcpy(&code, out + i * es, es);
                float want;
                switch (dt) {
                case FLP_DTYPE_F32:
                    want = f32_from_bits(code);
                    break;
                case FLP_DTYPE_F16:
                    want = flp_f16_to_f32((uint16_t)code);
                    break;
                case FLP_DTYPE_BF16:
                    want = flp_bf16_to_f32((uint16_t)code);
                    break;
                case FLP_DTYPE_E4M3:
                    want = flp_e4m3_to_f32((uint8_t)code);
                    break;
                default:
                    want = flp_e5m2_to_f32((uint8_t)code);
                    break;
                }
                if (f32_bits(back[i]) != f32_bits(want))
                    fail_msg("%s back element %d: %a, want %a", flp_dtype_name(dt), i,
                             (double)back[i], (double)want);
            }
        }
        /* f32 is the identity; f16 keeps 11 significant bits in its normal range. */
        if (dt == FLP_DTYPE_F32)
            assert_memory_equal(back, src, sizeof src);
        if (dt == FLP_DTYPE_F16) {
            for (int i = 0; i < N_CONVERT; i++) {
                float a = fabsf(src[i]);
                if (a >= 0x1p-14f && a <= 65504.0f)
                    assert_true(fabsf(back[i] - src[i]) <= a * 0x1p-11f);
            }
        }
    }
}

static void test_convert_bad_arguments(void **state) {
    (void)state;
    float src[4] = {1.5f, -2.25f, 3.0f, 0.375f};
    unsigned char dst[16];
    float fdst[4];
    const flp_dtype bad[] = {FLP_DTYPE_DEFAULT, FLP_DTYPE_I32, FLP_DTYPE_U8, (flp_dtype)99,
                             (flp_dtype)-3};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memset(dst, 0xcc, sizeof dst);
        memset(fdst, 0xcc, sizeof fdst);
        assert_int_equal(flp_convert_from_f32(bad[i], src, dst, 4), FLP_ERROR_INVALID_ARGUMENT);
        assert_int_equal(flp_convert_to_f32(bad[i], dst, fdst, 4), FLP_ERROR_INVALID_ARGUMENT);
        assert_int_equal(flp_convert_from_f32(bad[i], src, dst, 0), FLP_ERROR_INVALID_ARGUMENT);
        for (size_t j = 0; j < sizeof dst; j++)
            assert_int_equal(dst[j], 0xcc);
        for (size_t j = 0; j < sizeof fdst; j++)
            assert_int_equal(((unsigned char *)fdst)[j], 0xcc);
    }
    /* NULL pointers with n > 0. */
    assert_int_equal(flp_convert_from_f32(FLP_DTYPE_F16, NULL, dst, 4), FLP_ERROR_INVALID_ARGUMENT);
    assert_int_equal(flp_convert_from_f32(FLP_DTYPE_F16, src, NULL, 4), FLP_ERROR_INVALID_ARGUMENT);
    assert_int_equal(flp_convert_to_f32(FLP_DTYPE_BF16, NULL, fdst, 4), FLP_ERROR_INVALID_ARGUMENT);
    assert_int_equal(flp_convert_to_f32(FLP_DTYPE_BF16, dst, NULL, 4), FLP_ERROR_INVALID_ARGUMENT);
    /* A size whose byte count overflows is rejected before anything is touched. */
    assert_int_equal(flp_convert_from_f32(FLP_DTYPE_F32, src, dst, SIZE_MAX),
                     FLP_ERROR_INVALID_ARGUMENT);
    assert_int_equal(flp_convert_to_f32(FLP_DTYPE_E4M3, dst, fdst, SIZE_MAX),
                     FLP_ERROR_INVALID_ARGUMENT);
    /* n == 0 needs no pointers. */
    assert_int_equal(flp_convert_from_f32(FLP_DTYPE_E5M2, NULL, NULL, 0), FLP_OK);
    assert_int_equal(flp_convert_to_f32(FLP_DTYPE_E5M2, NULL, NULL, 0), FLP_OK);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_size_and_name),
        cmocka_unit_test(test_decode_exhaustive),
        cmocka_unit_test(test_round_trip_exhaustive),
        cmocka_unit_test(test_midpoints_round_to_even),
        cmocka_unit_test(test_overflow_boundaries),
        cmocka_unit_test(test_subnormals_and_zero),
        cmocka_unit_test(test_nan_inputs),
        cmocka_unit_test(test_random_against_nearest),
        cmocka_unit_test(test_convert_arrays),
        cmocka_unit_test(test_convert_bad_arguments),
    };
    return cmocka_run_group_tests_name("dtype", tests, NULL, NULL);
}
