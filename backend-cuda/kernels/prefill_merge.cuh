/* Merge of split prefill items (core/prefill_params.h). The work is cut into units of one merge
 * item and one slice of its rows (blockDim.x / (head_dim / 4) rows: a thread per 4 columns of a
 * row), and block w takes units w, w + gridDim.x, ... below num_merge_items x slices, so that a
 * plan with few merge items (one shared prompt split over the whole grid) still spreads its
 * merge over every block. For each 4 columns of a row it merges the item's chunks in chunk (key)
 * order (merge_chunks4, natural-log states; empty states give o = 0, s = -inf), so results do
 * not depend on timing, then writes out (round to nearest even) and lse like an unsplit item. */
#ifndef FLP_CUDA_PREFILL_MERGE_CUH
#define FLP_CUDA_PREFILL_MERGE_CUH

#include "backend-cuda/kernels/merge_state.cuh"
#include "core/prefill_params.h"

namespace flp {

template <int QDT> FLP_DEV void prefill_merge_body(const flp_prefill_params &p) {
    const flp_prefill_plan_info *info = reinterpret_cast<const flp_prefill_plan_info *>(p.plan);
    const int *plan_i = reinterpret_cast<const int *>(p.plan);
    const float *plan_f = reinterpret_cast<const float *>(p.plan);
    const int *qo_indptr = plan_i + info->off_qo_indptr;
    const int *merge_items = plan_i + info->off_merge_items;
    const float *partial_o = plan_f + info->off_partial_o;
    const float *partial_lse = plan_f + info->off_partial_lse;
    const int num_items = info->num_merge_items;
    const int group = info->group_size;
    const int head_dim = info->head_dim;
    const int quads = head_dim / 4;

    const int rows_per_slice = blockDim.x / quads; /* FLP_CU_PREFILL_MERGE_THREADS >= 256 / 4 */
    const int slices = (FLP_PREFILL_MAX_TILE + rows_per_slice - 1) / rows_per_slice;
    const long long units = static_cast<long long>(num_items) * slices;
    for (long long unit = blockIdx.x; unit < units; unit += gridDim.x) {
        const int item = static_cast<int>(unit / slices);
        const int slice = static_cast<int>(unit - static_cast<long long>(item) * slices);
        const int *mi = merge_items + item * FLP_MERGE_ITEM_INTS;
        const int rows = mi[FLP_MITEM_ROW_END] - mi[FLP_MITEM_ROW_BEGIN];
        const int r = slice * rows_per_slice + static_cast<int>(threadIdx.x) / quads;
        if (r >= rows || static_cast<int>(threadIdx.x) >= rows_per_slice * quads)
            continue;
        const int b = mi[FLP_MITEM_REQUEST];
        const int kvh = mi[FLP_MITEM_KV_HEAD];
        const int first_slot = mi[FLP_MITEM_FIRST_SLOT];
        const int chunks = mi[FLP_MITEM_CHUNKS];
        const int d = (static_cast<int>(threadIdx.x) % quads) * 4;
        float s, o[4];
        merge_chunks4(partial_lse, partial_o,
                      static_cast<long long>(first_slot) * FLP_PREFILL_MAX_TILE + r,
                      FLP_PREFILL_MAX_TILE, chunks, head_dim, d, s, o);
        const packed_row pr = unpack_row(mi[FLP_MITEM_ROW_BEGIN] + r, group, kvh);
        merge_store4<QDT>(p, static_cast<long long>(qo_indptr[b]) + pr.token, pr.head, d, o, s);
    }
}

} // namespace flp

#endif /* FLP_CUDA_PREFILL_MERGE_CUH */
