/* Decode work partition: KV splitting (core/decode_chunk.c chooses the chunk) and longest-first
 * assignment. */
#include "core/decode_schedule.h"
#include "core/alloc.h"
#include "core/assign.h"
#include "core/decode_chunk.h"

#include <limits.h>
#include <stdint.h>

int32_t flp_decode_max_items(int32_t max_batch_size, int32_t num_kv_heads, int32_t num_ctas) {
    /* Each request contributes at most len/chunk + 1 items per KV head, and the chunk is at
     * least total/(num_ctas x FLP_DECODE_MAX_SPLIT_DIVISOR), so items <= batch x heads +
     * FLP_DECODE_MAX_SPLIT_DIVISOR x num_ctas. -1 when the items' words would not fit int32
     * (plan creation refuses such capacities). */
    int64_t n =
        (int64_t)max_batch_size * num_kv_heads + (int64_t)FLP_DECODE_MAX_SPLIT_DIVISOR * num_ctas;
    return n > INT32_MAX / FLP_WORK_ITEM_INTS ? -1 : (int32_t)n;
}

static void build(const flp_decode_schedule_input *in, int32_t chunk, int32_t *items, int64_t *cost,
                  flp_decode_schedule *out) {
    int32_t n = 0, slots = 0;
    for (int32_t b = 0; b < in->batch_size; b++) {
        int32_t begin = in->kv_begin[b], end = in->kv_end[b];
        int32_t len = end - begin;
        int32_t chunks = len <= chunk ? 1 : (int32_t)(((int64_t)len + chunk - 1) / chunk);
        out->merge_info[2 * b] = chunks > 1 ? slots : 0;
        out->merge_info[2 * b + 1] = chunks;
        for (int32_t g = 0; g < in->num_kv_heads; g++) {
            for (int32_t c = 0; c < chunks; c++) {
                int32_t *it = items + FLP_WORK_ITEM_INTS * n;
                int32_t lo = chunks > 1 ? begin + c * chunk : begin;
                int32_t hi = chunks > 1 && c + 1 < chunks ? lo + chunk : end;
                it[FLP_WORK_REQUEST] = b;
                it[FLP_WORK_KV_HEAD] = g;
                it[FLP_WORK_KV_BEGIN] = lo;
                it[FLP_WORK_KV_END] = hi;
                it[FLP_WORK_PARTIAL_SLOT] = chunks > 1 ? slots + g * chunks + c : -1;
                cost[n] = (int64_t)(hi - lo) + FLP_DECODE_ITEM_OVERHEAD;
                n++;
            }
        }
        if (chunks > 1)
            slots += in->num_kv_heads * chunks;
    }
    out->num_items = n;
    out->num_partial_slots = slots;
}

size_t flp_decode_schedule_scratch_bytes(const flp_decode_schedule_input *in) {
    int32_t bound = flp_decode_max_items(in->batch_size, in->num_kv_heads, in->num_ctas);
    if (bound < 0)
        return SIZE_MAX;
    size_t max_items = (size_t)bound;
    /* cost [max_items] int64, the assignment's scratch, items [max_items], the chunk choice's
     * scratch (8-byte multiples) */
    size_t items = sizeof(int32_t) * FLP_WORK_ITEM_INTS * max_items;
    return sizeof(int64_t) * max_items +
           flp_assign_scratch_bytes((int32_t)max_items, in->num_ctas) + (items + 7) / 8 * 8 +
           flp_decode_chunk_scratch_bytes(in->batch_size, in->num_ctas);
}

void flp_decode_schedule_build_in(const flp_decode_schedule_input *in, flp_decode_schedule *out,
                                  void *scratch) {
    int32_t max_items = flp_decode_max_items(in->batch_size, in->num_kv_heads, in->num_ctas);
    int64_t *cost = scratch;
    char *assign_scratch = (char *)(cost + max_items);
    int32_t *items =
        (int32_t *)(assign_scratch + flp_assign_scratch_bytes(max_items, in->num_ctas));
    size_t items_bytes = sizeof(int32_t) * FLP_WORK_ITEM_INTS * (size_t)max_items;
    void *chunk_scratch = (char *)items + (items_bytes + 7) / 8 * 8;
    int32_t chunk = flp_decode_choose_chunk(in, chunk_scratch);
    out->chunk_size = chunk;
    /* Items in natural order (request, head, chunk) into the scratch list, then assigned. */
    build(in, chunk, items, cost, out);
    flp_assign_longest_first(items, FLP_WORK_ITEM_INTS, cost, out->num_items, in->num_ctas,
                             out->work_indptr, out->work_items, assign_scratch);
}

bool flp_decode_schedule_build(const flp_decode_schedule_input *in, flp_decode_schedule *out) {
    void *scratch = flp_malloc(flp_decode_schedule_scratch_bytes(in));
    if (!scratch)
        return false;
    flp_decode_schedule_build_in(in, out, scratch);
    flp_free(scratch);
    return true;
}
