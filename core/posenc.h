/* Positional-encoding tables the kernels read from plan memory: the RoPE frequency of every
 * rotate-half pair and the standard ALiBi slopes (semantics: docs/design.md, "Positions"). The
 * float64 reference (core/reference.c) computes its own, independently: it is the oracle these
 * are tested against. */
#ifndef FLP_CORE_POSENC_H
#define FLP_CORE_POSENC_H

#include "flashport/flashport.h"

/* freq[head_dim / 2]: pair d rotates by position * freq[d]; theta^(-2d/D) / scale, then the
 * Llama 3.1 rule when rope->llama31. Zero theta/scale mean the defaults (10000, 1). Computed in
 * double and rounded once to float. */
void flp_rope_frequencies(const flp_rope_params *rope, int32_t head_dim, float *freq);

/* A plan's tables for variant v (resolved): with RoPE, freq [head_dim / 2]; with ALiBi,
 * slopes [num_qo_heads], the caller's alibi_slopes or the standard ones. Neither otherwise: the
 * kernels read them under their flag only, and each costs a pow() or an exp2() per entry. */
void flp_posenc_tables(const flp_variant *v, const float *alibi_slopes, int32_t head_dim,
                       int32_t num_qo_heads, float *freq, float *slopes);

#endif /* FLP_CORE_POSENC_H */
