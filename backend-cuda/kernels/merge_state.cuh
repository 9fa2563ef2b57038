/* Softmax states and their merge, what the kernels share:
 * - inside the attention kernels (decode.cuh, prefill.cuh), a state is (m, l, acc) in log2
 *   units: running max m of the logits, l = sum 2^(s - m), acc = sum 2^(s - m) v; states of
 *   lane groups or warps are combined in a fixed order and normalised into out and lse;
 * - across split-KV chunks (decode_merge.cuh, prefill_merge.cuh), a state is the chunk's
 *   normalised output and natural-log lse, folded in chunk order, so results do not depend on
 *   timing. */
#ifndef FLP_CUDA_MERGE_STATE_CUH
#define FLP_CUDA_MERGE_STATE_CUH

#include "backend-cuda/kernels/common.cuh"
#include "core/kernel_constants.h"

namespace flp {

/* ---- log2-unit states of the attention kernels ------------------------------------------- */

/* What exp2 subtracts for a running max mx: mx itself, or 0 while no key is kept (mx = -inf),
 * so that exp2(-inf - 0) = 0 instead of exp2(-inf - (-inf)) = NaN. */
FLP_DEV float softmax_base(float mx) {
    return mx == neg_inf() ? 0.0f : mx;
}

/* Multiplier that normalises a row's accumulator: v_factor / l, 0 for a row that kept no key. */
FLP_DEV float output_scale(float l, float v_factor) {
    const bool empty = !(l > 0.0f);
    return empty ? 0.0f : v_factor / l;
}

/* The natural-log lse of a state (m in log2 units), -inf for a row that kept no key. */
FLP_DEV float state_lse(float m, float l) {
    const bool empty = !(l > 0.0f);
    return empty ? neg_inf() : (m + log2_approx(l)) * kLn2;
}

/* Combines NS states of one row, stored state after state (in the order they are folded: fixed,
 * so the result does not depend on timing): m[w * stride], l[w * stride] and N accumulator
 * columns at acc + w * acc_stride (16-byte aligned when N is a multiple of 4). Gives the
 * combined max mx, sum and accumulator o (mx -inf, sum and o 0 when no state kept a key). */
template <int NS, int N>
FLP_DEV void combine_states(const float *m, const float *l, int stride, const float *acc,
                            int acc_stride, float &mx, float &sum, float (&o)[N]) {
    float mw[NS];
    mx = neg_inf();
#pragma unroll
    for (int w = 0; w < NS; w++) {
        mw[w] = m[w * stride];
        mx = fmaxf(mx, mw[w]);
    }
#pragma unroll
    for (int i = 0; i < N; i++)
        o[i] = 0.0f;
    sum = 0.0f;
    if (mx == neg_inf())
        return;
#pragma unroll
    for (int w = 0; w < NS; w++) {
        const float f = exp2_approx(mw[w] - mx);
        sum = fmaf(l[w * stride], f, sum);
        const float *a = acc + w * acc_stride;
        if constexpr (N % 4 == 0) {
#pragma unroll
            for (int c = 0; c < N / 4; c++) {
                const f32x4 v = reinterpret_cast<const f32x4 *>(a)[c];
                o[4 * c] = fmaf(v.x, f, o[4 * c]);
                o[4 * c + 1] = fmaf(v.y, f, o[4 * c + 1]);
                o[4 * c + 2] = fmaf(v.z, f, o[4 * c + 2]);
                o[4 * c + 3] = fmaf(v.w, f, o[4 * c + 3]);
            }
        } else {
#pragma unroll
            for (int i = 0; i < N; i++)
                o[i] = fmaf(a[i], f, o[i]);
        }
    }
}

/* ---- natural-log states of split-KV chunks ---------------------------------------------- */

/* The merge batch FLP_MERGE_BATCH (core/kernel_constants.h): a request split into 33 chunks
 * merged in 30 us with one chunk at a time on an H100. */
constexpr int kMergeBatch = FLP_MERGE_BATCH;

/* Merges the `chunks` states of one output row in chunk order: chunk c's lse at
 * partial_lse[row(c)] and output columns d..d+3 at partial_o + row(c) * head_dim + d, row(c) =
 * first_row + c * row_stride. Two passes: the largest lse, then the weights exp(lse - max) and
 * the weighted sum: the merge operator applied to all chunks at once, equal to folding them
 * pairwise up to rounding, and dependent on the chunk order only. Gives lse s and columns o (-inf
 * and 0 when no chunk kept a key; the output of such a chunk is not read). */
FLP_DEV void merge_chunks4(const float *partial_lse, const float *partial_o, long long first_row,
                           long long row_stride, int chunks, int head_dim, int d, float &s,
                           float (&o)[4]) {
    float mx = neg_inf();
    for (int c0 = 0; c0 < chunks; c0 += kMergeBatch) {
#pragma unroll
        for (int i = 0; i < kMergeBatch; i++)
            if (c0 + i < chunks)
                mx = fmaxf(mx, partial_lse[first_row + (c0 + i) * row_stride]);
    }
#pragma unroll
    for (int i = 0; i < 4; i++)
        o[i] = 0.0f;
    s = neg_inf();
    if (mx == neg_inf())
        return;
    float sum = 0.0f;
    for (int c0 = 0; c0 < chunks; c0 += kMergeBatch) {
        float w[kMergeBatch];
        f32x4 v[kMergeBatch];
#pragma unroll
        for (int i = 0; i < kMergeBatch; i++) {
            const long long row = first_row + (c0 + i) * row_stride;
            w[i] = c0 + i < chunks ? expf(partial_lse[row] - mx) : 0.0f;
            v[i] = w[i] > 0.0f ? *reinterpret_cast<const f32x4 *>(partial_o + row * head_dim + d)
                               : f32x4{0.0f, 0.0f, 0.0f, 0.0f};
        }
#pragma unroll
        for (int i = 0; i < kMergeBatch; i++) {
            sum += w[i];
            o[0] = fmaf(w[i], v[i].x, o[0]);
            o[1] = fmaf(w[i], v[i].y, o[1]);
            o[2] = fmaf(w[i], v[i].z, o[2]);
            o[3] = fmaf(w[i], v[i].w, o[3]);
        }
    }
    const float inv = 1.0f / sum;
#pragma unroll
    for (int i = 0; i < 4; i++)
        o[i] *= inv;
    s = mx + logf(sum);
}

/* Writes the merged columns d..d+3 of output row `row`, query head h, rounded to the q dtype
 * QDT (p: flp_decode_params or flp_prefill_params), and the lse once per row and head (d == 0)
 * when p.lse is set. */
template <int QDT, class P>
FLP_DEV void merge_store4(const P &p, long long row, int h, int d, const float (&o)[4], float s) {
    float *lse_out = reinterpret_cast<float *>(p.lse); /* null: no lse output */
    unsigned char *op =
        reinterpret_cast<unsigned char *>(p.o) +
        (row * p.o_stride_row + static_cast<long long>(h) * p.o_stride_head + d) * 2;
    u32x2 packed;
    packed.x = pack2_16bit<QDT>(o[0], o[1]);
    packed.y = pack2_16bit<QDT>(o[2], o[3]);
    *reinterpret_cast<u32x2 *>(op) = packed;
    if (lse_out && d == 0)
        lse_out[row * p.lse_stride_row + h] = s;
}

} // namespace flp

#endif /* FLP_CUDA_MERGE_STATE_CUH */
