/* The merge operator on split-KV partial states (natural-log lse), four output columns at a
 * time, and the store of a merged state: what the decode merge (decode_merge.cuh) and the prefill merge
 * (prefill_merge.cuh) share. Chunks are folded in chunk order, so results do not depend on
 * timing. */
#ifndef FLP_CUDA_MERGE_STATE_CUH
#define FLP_CUDA_MERGE_STATE_CUH

#include "backend-cuda/kernels/common.cuh"

namespace flp {

/* Folds one chunk's state (lse sc, output columns oc[0..3]) into the running state (s, o). Two
 * empty states (-inf) leave it as it is (o 0, s -inf), and oc is then not read. OC: a pointer or
 * an array of 4 floats. */
template <class OC> FLP_DEV void merge_fold4(float &s, float (&o)[4], float sc, const OC &oc) {
    const float mx = fmaxf(s, sc);
    if (mx == neg_inf())
        return;
    const float wa = expf(s - mx);
    const float wb = expf(sc - mx);
    const float wsum = wa + wb;
#pragma unroll
    for (int i = 0; i < 4; i++)
        o[i] = (wa * o[i] + wb * oc[i]) / wsum;
    s = mx + logf(wsum);
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
