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

/* A partial merge of split-KV chunk states of one output row: the largest lse so far (-inf
 * before any chunk that kept a key), the sum of the chunks' weights exp(lse - m) and their
 * weighted columns d..d+3 (not yet divided by the sum). */
struct chunk_merge4 {
    float m, sum, o[4];
};

FLP_DEV chunk_merge4 empty_chunk_merge4() {
    return chunk_merge4{neg_inf(), 0.0f, {0.0f, 0.0f, 0.0f, 0.0f}};
}

/* Rescales st to the larger max m_new (>= st.m, finite). */
FLP_DEV void rescale_chunk_merge4(chunk_merge4 &st, float m_new) {
    const float a = st.m == neg_inf() ? 0.0f : expf(st.m - m_new);
    st.sum *= a;
#pragma unroll
    for (int i = 0; i < 4; i++)
        st.o[i] *= a;
    st.m = m_new;
}

/* Folds chunks c = first, first + step, ... (< chunks) of one output row into st: chunk c's lse
 * at partial_lse[row(c)], columns d..d+3 at partial_o + row(c) * head_dim + d, row(c) =
 * first_row + c * row_stride. kMergeBatch chunks at a time, their lse and column loads issued
 * together (one memory round trip per batch, none waiting on another). A chunk that kept no key
 * (lse -inf) weighs 0; its columns, never written, are loaded but not used. */
FLP_DEV void fold_chunks4(const float *partial_lse, const float *partial_o, long long first_row,
                          long long row_stride, int chunks, int first, int step, int head_dim,
                          int d, chunk_merge4 &st) {
    for (int c0 = first; c0 < chunks; c0 += step * kMergeBatch) {
        float l[kMergeBatch];
        f32x4 v[kMergeBatch];
#pragma unroll
        for (int i = 0; i < kMergeBatch; i++) {
            const int c = c0 + i * step;
            const long long row =
                first_row + static_cast<long long>(c < chunks ? c : first) * row_stride;
            l[i] = c < chunks ? partial_lse[row] : neg_inf();
            v[i] = *reinterpret_cast<const f32x4 *>(partial_o + row * head_dim + d);
        }
        float bm = st.m;
#pragma unroll
        for (int i = 0; i < kMergeBatch; i++)
            bm = fmaxf(bm, l[i]);
        if (bm == neg_inf())
            continue;
        rescale_chunk_merge4(st, bm);
#pragma unroll
        for (int i = 0; i < kMergeBatch; i++) {
            const bool kept = l[i] != neg_inf();
            const float w = kept ? expf(l[i] - bm) : 0.0f;
            st.sum += w;
            st.o[0] = fmaf(w, kept ? v[i].x : 0.0f, st.o[0]);
            st.o[1] = fmaf(w, kept ? v[i].y : 0.0f, st.o[1]);
            st.o[2] = fmaf(w, kept ? v[i].z : 0.0f, st.o[2]);
            st.o[3] = fmaf(w, kept ? v[i].w : 0.0f, st.o[3]);
        }
    }
}

/* Folds state b into a (a first: the order is fixed by the caller). */
FLP_DEV void combine_chunk_merge4(chunk_merge4 &a, chunk_merge4 b) {
    const float m = fmaxf(a.m, b.m);
    if (m == neg_inf())
        return;
    rescale_chunk_merge4(a, m);
    rescale_chunk_merge4(b, m);
    a.sum += b.sum;
#pragma unroll
    for (int i = 0; i < 4; i++)
        a.o[i] += b.o[i];
}

/* The merged columns o and lse s of a fold (0 and -inf when no chunk kept a key). */
FLP_DEV void finish_chunk_merge4(const chunk_merge4 &st, float &s, float (&o)[4]) {
    const bool empty = st.m == neg_inf() || !(st.sum > 0.0f);
    const float inv = empty ? 0.0f : 1.0f / st.sum;
#pragma unroll
    for (int i = 0; i < 4; i++)
        o[i] = st.o[i] * inv;
    s = empty ? neg_inf() : st.m + logf(st.sum);
}

/* Merges the `chunks` states of one output row in chunk order (fold_chunks4 over all of them):
 * the merge operator applied to all chunks, equal to folding them pairwise up to rounding, and
 * dependent on the chunk order only. Gives lse s and columns o (-inf and 0 when no chunk kept a
 * key). */
FLP_DEV void merge_chunks4(const float *partial_lse, const float *partial_o, long long first_row,
                           long long row_stride, int chunks, int head_dim, int d, float &s,
                           float (&o)[4]) {
    chunk_merge4 st = empty_chunk_merge4();
    fold_chunks4(partial_lse, partial_o, first_row, row_stride, chunks, 0, 1, head_dim, d, st);
    finish_chunk_merge4(st, s, o);
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
