/* Merge of split-KV partial states (decode kernel spec): block w handles request
 * b = w / num_qo_heads and query head h = w % num_qo_heads for all qo_len rows, and merges the
 * request's chunks in chunk order (merge_chunks4, merge_state.cuh). */
#ifndef FLP_CUDA_DECODE_MERGE_CUH
#define FLP_CUDA_DECODE_MERGE_CUH

#include "backend-cuda/kernels/merge_state.cuh"
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

    for (int u = threadIdx.x; u < qo_len * quads; u += blockDim.x) {
        const int qi = u / quads;
        const int d = (u - qi * quads) * 4;
        const int j = qi * group + hh;
        float s, o[4];
        const long long first_row = static_cast<long long>(first_slot + g * chunks) * nrows + j;
        merge_chunks4(partial_lse, partial_o, first_row, nrows, chunks, head_dim, d, s, o);
        merge_store4<QDT>(p, static_cast<long long>(b) * qo_len + qi, h, d, o, s);
    }
}

} // namespace flp

#endif /* FLP_CUDA_DECODE_MERGE_CUH */
