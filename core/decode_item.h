/* How a decode work item's two words (kernel_constants.h) read as a request, a KV head and a
 * key range: one definition for the host (tests, the Vulkan CPU loop, the loop budget) and the
 * CUDA decode kernel, which includes this header as is. Plain C with fixed-width types. */
#ifndef FLP_CORE_DECODE_ITEM_H
#define FLP_CORE_DECODE_ITEM_H

/* the fixed-width types, also under NVRTC, and the work item fields */
#include "core/decode_params.h"

#ifdef __CUDACC__
#define FLP_DECODE_ITEM_FN __host__ __device__ __forceinline__
#else
#define FLP_DECODE_ITEM_FN static inline
#endif

typedef struct flp_decode_item {
    int32_t request, kv_head;
    int32_t kv_begin, kv_end; /* keys [kv_begin, kv_end) */
    int32_t partial_slot;     /* -1: the item writes the final out/lse rows */
} flp_decode_item;

/* Item i of work_items, with the schedule's merge_info ([batch][2]: first partial slot,
 * chunks), its chunk_size and the requests' key ranges [kv_begin[b], kv_end[b]); the item's
 * request must be in range. */
FLP_DECODE_ITEM_FN flp_decode_item flp_decode_item_at(const int32_t *work_items, int32_t i,
                                                      const int32_t *merge_info,
                                                      const int32_t *kv_begin,
                                                      const int32_t *kv_end, int32_t chunk_size) {
    const int32_t *w = work_items + (int64_t)FLP_WORK_ITEM_INTS * i;
    const int32_t b = w[FLP_WORK_REQUEST], head_chunk = w[FLP_WORK_HEAD_CHUNK];
    const int32_t chunks = merge_info[2 * b + 1] > 1 ? merge_info[2 * b + 1] : 1;
    flp_decode_item it;
    it.request = b;
    it.kv_head = head_chunk / chunks;
    const int32_t c = head_chunk - it.kv_head * chunks;
    it.kv_begin = chunks > 1 ? kv_begin[b] + c * chunk_size : kv_begin[b];
    it.kv_end = c + 1 == chunks ? kv_end[b] : it.kv_begin + chunk_size;
    it.partial_slot = chunks > 1 ? merge_info[2 * b] + head_chunk : -1;
    return it;
}

#endif
