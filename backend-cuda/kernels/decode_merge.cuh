/* Merge of split-KV partial states (decode kernel spec): block w handles request
 * b = w / num_qo_heads and query head h = w % num_qo_heads for all qo_len rows, and merges the
 * request's chunks (fold_chunks4, merge_state.cuh): with fewer output columns than threads, in
 * interleaved subsets by groups of threads, whose folds are then combined in group order (fixed:
 * the result does not depend on timing). */
#ifndef FLP_CUDA_DECODE_MERGE_CUH
#define FLP_CUDA_DECODE_MERGE_CUH

#include "backend-cuda/kernels/decode_config.h"
#include "backend-cuda/kernels/merge_state.cuh"
#include "core/decode_params.h"

namespace flp {

static_assert(sizeof(chunk_merge4) * FLP_CU_MERGE_THREADS == FLP_CU_MERGE_SMEM_BYTES,
              "merge shared memory");

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

    /* With fewer output columns than threads, G = 2, 4, ... groups of threads take every G-th
     * chunk each (G times the loads in flight), and the groups' folds are combined in group
     * order through shared memory. */
    const int units = qo_len * quads;
    int groups = 1;
    while (2 * groups * units <= FLP_CU_MERGE_THREADS)
        groups *= 2;
    chunk_merge4 *s_fold = reinterpret_cast<chunk_merge4 *>(dynamic_smem); /* [groups][units] */
    const int tid = static_cast<int>(threadIdx.x);
    for (int u0 = 0; u0 < units; u0 += FLP_CU_MERGE_THREADS / groups) {
        const int grp = tid / (FLP_CU_MERGE_THREADS / groups);
        const int u = u0 + tid % (FLP_CU_MERGE_THREADS / groups);
        const int qi = u / quads;
        const int d = (u - qi * quads) * 4;
        const int j = qi * group + hh;
        const long long first_row = static_cast<long long>(first_slot + g * chunks) * nrows + j;
        chunk_merge4 st = empty_chunk_merge4();
        if (u < units)
            fold_chunks4(partial_lse, partial_o, first_row, nrows, chunks, grp, groups, head_dim, d,
                         st);
        if (groups > 1) {
            s_fold[tid] = st;
            __syncthreads();
            if (grp == 0) {
                for (int k = 1; k < groups; k++)
                    combine_chunk_merge4(st, s_fold[k * (FLP_CU_MERGE_THREADS / groups) + tid]);
            }
            __syncthreads(); /* the folds are read before the next columns' overwrite them */
        }
        if (grp == 0 && u < units) {
            float s, o[4];
            finish_chunk_merge4(st, s, o);
            merge_store4<QDT>(p, static_cast<long long>(b) * qo_len + qi, h, d, o, s);
        }
    }
}

} // namespace flp

#endif /* FLP_CUDA_DECODE_MERGE_CUH */
