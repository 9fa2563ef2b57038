/* RoPE frequencies and ALiBi slopes (docs/design.md, "Positions"). */
#include "core/posenc.h"

#include <math.h>
#include <string.h>

#define POSENC_DEFAULT_THETA 10000.0
#define POSENC_PI 3.14159265358979323846

/* Llama 3.1 frequency scaling of one base frequency: wavelengths shorter than
 * original_max_position / high_freq_factor keep their frequency, longer than
 * original_max_position / low_freq_factor are slowed by factor, and those between are
 * interpolated linearly in original_max_position / wavelength. */
static double llama31_scaled(const flp_rope_params *r, double base) {
    const double original = (double)r->llama31_original_max_position;
    const double low = (double)r->llama31_low_freq_factor;
    const double high = (double)r->llama31_high_freq_factor;
    const double wavelength = 2.0 * POSENC_PI / base;
    if (wavelength < original / high)
        return base;
    if (wavelength > original / low)
        return base / (double)r->llama31_factor;
    const double t = (original / wavelength - low) / (high - low);
    return (1.0 - t) * base / (double)r->llama31_factor + t * base;
}

void flp_rope_frequencies(const flp_rope_params *rope, int32_t head_dim, float *freq) {
    const double theta = rope->theta > 0.0f ? (double)rope->theta : POSENC_DEFAULT_THETA;
    const double scale = rope->scale > 0.0f ? (double)rope->scale : 1.0;
    for (int32_t pair = 0; pair < head_dim / 2; pair++) {
        double base = pow(theta, -2.0 * pair / head_dim) / scale;
        freq[pair] = (float)(rope->llama31 ? llama31_scaled(rope, base) : base);
    }
}

flp_status flp_alibi_standard_slopes(int32_t num_heads, float *slopes) {
    if (num_heads <= 0 || !slopes)
        return FLP_ERROR_INVALID_ARGUMENT;
    /* n: the largest power of two <= num_heads; heads past n interleave the slopes of 2n */
    int32_t n = 1;
    while (n <= num_heads / 2)
        n *= 2;
    for (int32_t head = 0; head < num_heads; head++) {
        double exponent = head < n ? -8.0 * (head + 1) / n : -4.0 * (2 * (head - n) + 1) / n;
        slopes[head] = (float)exp2(exponent);
    }
    return FLP_OK;
}

void flp_posenc_tables(const flp_variant *v, const float *alibi_slopes, int32_t head_dim,
                       int32_t num_qo_heads, float *freq, float *slopes) {
    if (v->pos_encoding == FLP_POS_ROPE_LLAMA)
        flp_rope_frequencies(&v->rope, head_dim, freq);
    if (v->pos_encoding != FLP_POS_ALIBI)
        return;
    if (alibi_slopes)
        memcpy(slopes, alibi_slopes, sizeof(float) * (size_t)num_qo_heads);
    else
        flp_alibi_standard_slopes(num_qo_heads, slopes);
}
