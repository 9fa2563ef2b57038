/* Merge of split-KV partial states (decode kernel spec): block w handles request
 * b = w / num_qo_heads and query head h = w % num_qo_heads for all qo_len rows, and folds the
 * request's chunks in chunk order with the merge operator (natural-log states), so results do
 * not depend on timing. */
#ifndef FLP_CUDA_MERGE_CUH
#define FLP_CUDA_MERGE_CUH

#include "backend-cuda/kernels/common.cuh"
#include "core/decode_params.h"

namespace flp {

template <int QDT> FLP_DEV void merge_body(const flp_decode_params &p) {
    const flp_decode_plan_info *info = reinterpret_cast<const flp_decode_plan_info *>(p.plan);
    const int num_qo_heads = info->num_qo_heads;
    const int b = static_cast<int>(blockIdx.x) / num_qo_heads;
    const int h = static_cast<int>(blockIdx.x) - b * num_qo_heads;
    if (b >= info->batch_size)
        return;
    const int *plan_i = reinterpret_cast<const int *>(p.plan);
    const float *plan_f = reinterpret_cast<const float *>(p.plan);
    const int *merge_info = plan_i + info->off_merge_info;
    const int first_slot = merge_info[2 * b];
    const int chunks = merge_info[2 * b + 1];
    if (chunks <= 1)
        return;
    const float *partial_o = plan_f + info->off_partial_o;
    const float *partial_lse = plan_f + info->off_partial_lse;
    const int group = info->group_size;
    const int g = h / group;
    const int hh = h - g * group;
    const int head_dim = info->head_dim;
    const int qo_len = info->qo_len;
    const int nrows = qo_len * group;
    const int quads = head_dim / 4;
    float *lse_out = reinterpret_cast<float *>(p.lse); /* null: no lse output */

    for (int u = threadIdx.x; u < qo_len * quads; u += blockDim.x) {
        const int qi = u / quads;
        const int d = (u - qi * quads) * 4;
        const int j = qi * group + hh;
        float s = neg_inf();
        float o[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int c = 0; c < chunks; ++c) {
            const long long prow = static_cast<long long>(first_slot + g * chunks + c) * nrows + j;
            const float sc = partial_lse[prow];
            const f32x4 oc = *reinterpret_cast<const f32x4 *>(partial_o + prow * head_dim + d);
            const float mx = fmaxf(s, sc);
            if (mx == neg_inf())
                continue; /* both empty: o stays 0, s stays -inf */
            const float wa = expf(s - mx);
            const float wb = expf(sc - mx);
            const float wsum = wa + wb;
            o[0] = (wa * o[0] + wb * oc.x) / wsum;
            o[1] = (wa * o[1] + wb * oc.y) / wsum;
            o[2] = (wa * o[2] + wb * oc.z) / wsum;
            o[3] = (wa * o[3] + wb * oc.w) / wsum;
            s = mx + logf(wsum);
        }
        const long long row = static_cast<long long>(b) * qo_len + qi;
        unsigned char *op = reinterpret_cast<unsigned char *>(p.o) +
                            (row * p.o_stride_row + h * p.o_stride_head + d) * 2;
        u32x2 packed;
        packed.x = pack2_16bit<QDT>(o[0], o[1]);
        packed.y = pack2_16bit<QDT>(o[2], o[3]);
        *reinterpret_cast<u32x2 *>(op) = packed;
        if (lse_out && d == 0)
            lse_out[row * p.lse_stride_row + h] = s;
    }
}

} // namespace flp

#endif /* FLP_CUDA_MERGE_CUH */
