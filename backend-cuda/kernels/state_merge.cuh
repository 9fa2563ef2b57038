/* The public state merges (core/merge_params.h): flp_merge_state, flp_merge_state_in_place and
 * flp_merge_states. One warp per (row, head) unit (grid-stride over units), lane l on elements
 * l, l + 32, ... of the head; any head_dim, any of f32 / f16 / bf16 per tensor, decided at run
 * time (one small kernel for every configuration, like the KV append).
 *
 * A pair merge may write in place (out the same view as a or b): every lane reads its elements
 * and the unit's two lse values before lane 0 writes the lse, after a __syncwarp; each element
 * is read and written by the same lane. Exponentials and logarithms are the accurate expf/logf
 * (the build does not use fast math), so the result does not depend on the device's
 * approximations; the order of a ragged fold is the states' order, so it is the same bits on
 * every run. */
#ifndef FLP_CUDA_STATE_MERGE_CUH
#define FLP_CUDA_STATE_MERGE_CUH

#include "backend-cuda/kernels/common.cuh"
#include "backend-cuda/kernels/prefill_config.h"
#include "core/merge_params.h"

namespace flp {

/* Element idx of a state's o (f32, f16 or bf16) as f32. */
FLP_DEV float load_state_element(unsigned long long base, long long idx, int dtype) {
    if (dtype == FLP_DT_F32)
        return reinterpret_cast<const float *>(base)[idx];
    return src16_to_f32(reinterpret_cast<const unsigned short *>(base)[idx], dtype);
}

/* x into element idx of out (its dtype; 16-bit: round to nearest even). */
FLP_DEV void store_state_element(unsigned long long base, long long idx, int dtype, float x) {
    if (dtype == FLP_DT_F32) {
        reinterpret_cast<float *>(base)[idx] = x;
        return;
    }
    const unsigned bits = dtype == FLP_DT_BF16 ? f32_to_bf16_bits(x) : f32_to_f16_bits(x);
    reinterpret_cast<unsigned short *>(base)[idx] = static_cast<unsigned short>(bits);
}

FLP_DEV float load_lse(unsigned long long base, long long idx) {
    return reinterpret_cast<const float *>(base)[idx];
}

/* The pair merge of unit (row, head): out = merge(a, b) where the mask keeps the row. */
FLP_DEV void merge_pair_unit(const flp_merge_params &p, int row, int head, int lane) {
    if (p.mask && reinterpret_cast<const unsigned char *>(p.mask)[row] == 0)
        return;
    const float sa = load_lse(p.lse_a, row * p.lse_a_stride_row + head);
    const float sb = load_lse(p.lse_b, row * p.lse_b_stride_row + head);
    const bool empty = sa == neg_inf() && sb == neg_inf();
    const float m = fmaxf(sa, sb);
    /* -inf - m = -inf: an empty state weighs exactly 0; two empty states give 0 and -inf */
    const float wa = empty ? 0.0f : expf(sa - m), wb = empty ? 0.0f : expf(sb - m);
    const float inv = empty ? 0.0f : 1.0f / (wa + wb);
    const long long a0 = row * p.o_a_stride_row + head * p.o_a_stride_head;
    const long long b0 = row * p.o_b_stride_row + head * p.o_b_stride_head;
    const long long o0 = row * p.out_stride_row + head * p.out_stride_head;
    /* the lse values are read by every lane before any write of this unit (in place) */
    __syncwarp();
    for (int d = lane; d < p.head_dim; d += 32) {
        const float oa = load_state_element(p.o_a, a0 + d, p.a_dtype);
        const float ob = load_state_element(p.o_b, b0 + d, p.b_dtype);
        /* empty: exactly +0, whatever the sign of the unused columns */
        store_state_element(p.o_out, o0 + d, p.out_dtype, empty ? 0.0f : (wa * oa + wb * ob) * inv);
    }
    if (lane == 0 && p.lse_out)
        reinterpret_cast<float *>(p.lse_out)[row * p.lse_out_stride_row + head] =
            empty ? neg_inf() : m + logf(wa + wb);
}

/* States [begin, end) of row `row` (clamped to [0, num_states]). */
FLP_DEV void ragged_range(const flp_merge_params &p, int row, int &begin, int &end) {
    long long b, e;
    if (p.indptr) {
        const int *indptr = reinterpret_cast<const int *>(p.indptr);
        b = indptr[row];
        e = indptr[row + 1];
    } else {
        b = static_cast<long long>(row) * p.states_per_row;
        e = b + p.states_per_row;
    }
    b = b < 0 ? 0 : (b > p.num_states ? p.num_states : b);
    e = e < b ? b : (e > p.num_states ? p.num_states : e);
    begin = static_cast<int>(b);
    end = static_cast<int>(e);
}

/* Elements of a head each lane folds at once: a block of 32 x this many elements per pass, so
 * that a state's loads of the block are in flight together. */
#define FLP_CU_RAGGED_MERGE_ELEMENTS 8

/* The ragged merge of unit (row, head): its states folded in order, each element with a running
 * maximum m, weight sum and weighted sum (rescaled when a larger lse comes). Lane l takes
 * elements l, l + 32, ... of each block of 32 x FLP_CU_RAGGED_MERGE_ELEMENTS; m and the sum are
 * the same for every element (they depend on the lse values alone). */
FLP_DEV void merge_ragged_unit(const flp_merge_params &p, int row, int head, int lane) {
    constexpr int E = FLP_CU_RAGGED_MERGE_ELEMENTS;
    int begin, end;
    ragged_range(p, row, begin, end);
    const long long o0 = row * p.out_stride_row + head * p.out_stride_head;
    float m = neg_inf(), sum = 0.0f;
    for (int d0 = 0; d0 < p.head_dim; d0 += 32 * E) {
        float acc[E];
#pragma unroll
        for (int k = 0; k < E; k++)
            acc[k] = 0.0f;
        m = neg_inf();
        sum = 0.0f;
        for (int s = begin; s < end; ++s) {
            const float l = load_lse(p.lse_a, s * p.lse_a_stride_row + head);
            if (l == neg_inf())
                continue;
            const long long s0 = s * p.o_a_stride_row + head * p.o_a_stride_head;
            float o[E];
#pragma unroll
            for (int k = 0; k < E; k++) {
                const int d = d0 + lane + 32 * k;
                o[k] = d < p.head_dim ? load_state_element(p.o_a, s0 + d, p.a_dtype) : 0.0f;
            }
            if (l > m) {
                const float c = m == neg_inf() ? 0.0f : expf(m - l);
                sum = fmaf(sum, c, 1.0f);
#pragma unroll
                for (int k = 0; k < E; k++)
                    acc[k] = fmaf(acc[k], c, o[k]);
                m = l;
            } else {
                const float w = expf(l - m);
                sum += w;
#pragma unroll
                for (int k = 0; k < E; k++)
                    acc[k] = fmaf(w, o[k], acc[k]);
            }
        }
#pragma unroll
        for (int k = 0; k < E; k++) {
            const int d = d0 + lane + 32 * k;
            if (d < p.head_dim)
                store_state_element(p.o_out, o0 + d, p.out_dtype,
                                    sum != 0.0f ? acc[k] / sum : 0.0f);
        }
    }
    /* sum is 0 only for a row of empty states (NaN, from a NaN lse, is carried through) */
    if (lane == 0 && p.lse_out)
        reinterpret_cast<float *>(p.lse_out)[row * p.lse_out_stride_row + head] =
            sum != 0.0f ? m + logf(sum) : neg_inf();
}

FLP_DEV void state_merge_body(const flp_merge_params &p) {
    const int lane = threadIdx.x & 31;
    const int warps = FLP_CU_STATE_MERGE_THREADS / 32;
    const long long units = static_cast<long long>(p.rows) * p.num_heads;
    const long long step = static_cast<long long>(gridDim.x) * warps;
    for (long long u = static_cast<long long>(blockIdx.x) * warps + (threadIdx.x >> 5); u < units;
         u += step) {
        const int row = static_cast<int>(u / p.num_heads);
        const int head = static_cast<int>(u - static_cast<long long>(row) * p.num_heads);
        if (p.mode == FLP_MERGE_MODE_PAIR)
            merge_pair_unit(p, row, head, lane);
        else
            merge_ragged_unit(p, row, head, lane);
    }
}

} // namespace flp

#endif /* FLP_CUDA_STATE_MERGE_CUH */
