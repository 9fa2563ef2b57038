/* fp8 K/V values widened to the 16-bit compute type by bit placement, four at a time: what the
 * sm_90a prefill kernel's converter warps run on every fp8 K and V tile (prefill_sm90.cuh). The
 * results hold the values divided by kv_traits<KVDT>::raw_factor (2^8 for e4m3, 1 for e5m2),
 * exactly, subnormals included: kv_factor<KVDT> (common.cuh) is the factor the kernel folds into
 * its logit and output scales.
 *
 * A byte s|magnitude is spread with its sign replicated into the byte above it (prmt), shifted
 * so that the magnitude's exponent and mantissa bits land on the 16-bit type's, and masked:
 *   f16  <- e4m3: magnitude << 7, exponent bias 15 against 7: the value times 2^-8;
 *   f16  <- e5m2: the byte is the f16's high byte: the value;
 *   bf16 <- e4m3: magnitude << 4, bias 127 against 7: times 2^-120, then times 2^112 (a bf16x2
 *                 product, exact: bf16 subnormals in, normals out): times 2^-8;
 *   bf16 <- e5m2: magnitude << 5, bias 127 against 15: times 2^-112, times 2^112: the value.
 * NaN and infinity encodings are not kept (a cache never holds them). Checked over every byte
 * value against the formats' definitions when written. */
#ifndef FLP_CUDA_FP8_WIDEN_CUH
#define FLP_CUDA_FP8_WIDEN_CUH

#include "backend-cuda/kernels/common.cuh"

namespace flp {

/* The bit placement of fp8 dtype KVDT into the 16-bit dtype QDT (see above). */
template <int QDT, int KVDT> struct fp8_widen_bits;
template <> struct fp8_widen_bits<FLP_DT_F16, FLP_DT_E4M3> {
    static constexpr int shift = 7;
    static constexpr unsigned mask = 0xbf80bf80u;
};
template <> struct fp8_widen_bits<FLP_DT_BF16, FLP_DT_E4M3> {
    static constexpr int shift = 4;
    static constexpr unsigned mask = 0x87f087f0u;
};
template <> struct fp8_widen_bits<FLP_DT_BF16, FLP_DT_E5M2> {
    static constexpr int shift = 5;
    static constexpr unsigned mask = 0x8fe08fe0u;
};

constexpr unsigned kBf16x2Pow2_112 = 0x77807780u; /* 2^112 in both halves */

/* One 16-bit pair from the two bytes that selector spreads (sign-replicated). */
template <int QDT, int KVDT> FLP_DEV unsigned widen_pair(unsigned w, unsigned selector) {
    using B = fp8_widen_bits<QDT, KVDT>;
    const unsigned x = (byte_spread(w, selector) << B::shift) & B::mask;
    if constexpr (QDT == FLP_DT_BF16)
        return mul_bf16x2(x, kBf16x2Pow2_112);
    else
        return x;
}

/* Four fp8 bytes of w as two 16-bit pairs (bytes 0-1 in lo, 2-3 in hi). */
template <int QDT, int KVDT> FLP_DEV void widen_fp8x4(unsigned w, unsigned &lo, unsigned &hi) {
    static_assert(kv_traits<KVDT>::fp8, "fp8 K/V");
    if constexpr (QDT == FLP_DT_F16 && KVDT == FLP_DT_E5M2) {
        e5m2x4_to_f16x2(w, lo, hi);
    } else {
        lo = widen_pair<QDT, KVDT>(w, 0x9180u); /* [b0, sign b0, b1, sign b1] */
        hi = widen_pair<QDT, KVDT>(w, 0xb3a2u); /* [b2, sign b2, b3, sign b3] */
    }
}

} // namespace flp

#endif /* FLP_CUDA_FP8_WIDEN_CUH */
