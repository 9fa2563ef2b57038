/* Decode work partition: KV splitting and longest-first assignment. */
#include "core/scheduler.h"

#include <limits.h>
#include <stdlib.h>

/* A work item's cost in token-equivalents: its keys plus a fixed overhead (loading the query,
 * writing the output), so that many empty items do not all land on one workgroup. */
#define ITEM_OVERHEAD_TOKENS 16

int32_t flp_decode_max_items(int32_t max_batch_size, int32_t num_kv_heads, int32_t num_ctas) {
    /* Each request contributes at most len/chunk + 1 items per KV head, and the chunk is at
     * least total/num_ctas, so items <= num_ctas + batch * heads. */
    return max_batch_size * num_kv_heads + num_ctas;
}

static int32_t choose_chunk(const flp_decode_schedule_input *in) {
    int64_t base_items = (int64_t)in->batch_size * in->num_kv_heads;
    if (base_items >= in->num_ctas)
        return INT32_MAX;
    int64_t total = 0;
    for (int32_t b = 0; b < in->batch_size; b++)
        total += (int64_t)(in->kv_end[b] - in->kv_begin[b]) * in->num_kv_heads;
    int64_t chunk = (total + in->num_ctas - 1) / in->num_ctas;
    if (chunk < in->min_chunk)
        chunk = in->min_chunk;
    int64_t align = in->chunk_align > 0 ? in->chunk_align : 1;
    chunk = (chunk + align - 1) / align * align;
    return chunk > INT32_MAX ? INT32_MAX : (int32_t)chunk;
}

typedef struct item_ref {
    int64_t cost;
    int32_t index;
} item_ref;

static int by_cost_desc(const void *a, const void *b) {
    const item_ref *x = a, *y = b;
    if (x->cost != y->cost)
        return x->cost > y->cost ? -1 : 1;
    return x->index < y->index ? -1 : (x->index > y->index); /* stable: deterministic */
}

/* Min-heap of workgroups keyed by (load, index). */
typedef struct cta_load {
    int64_t load;
    int32_t cta;
} cta_load;

static bool lighter(cta_load a, cta_load b) {
    return a.load != b.load ? a.load < b.load : a.cta < b.cta;
}

static void sift_down(cta_load *heap, int32_t n, int32_t i) {
    for (;;) {
        int32_t smallest = i, l = 2 * i + 1, r = l + 1;
        if (l < n && lighter(heap[l], heap[smallest]))
            smallest = l;
        if (r < n && lighter(heap[r], heap[smallest]))
            smallest = r;
        if (smallest == i)
            return;
        cta_load t = heap[i];
        heap[i] = heap[smallest];
        heap[smallest] = t;
        i = smallest;
    }
}

static void build(const flp_decode_schedule_input *in, int32_t chunk, int32_t *items,
                  item_ref *order, int32_t *assigned, cta_load *heap, int32_t *fill,
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
                order[n].cost = (int64_t)(hi - lo) + ITEM_OVERHEAD_TOKENS;
                order[n].index = n;
                n++;
            }
        }
        if (chunks > 1)
            slots += in->num_kv_heads * chunks;
    }
    out->num_items = n;
    out->num_partial_slots = slots;

    /* Longest first, each to the least loaded workgroup (ties: lowest index). */
    qsort(order, (size_t)n, sizeof *order, by_cost_desc);
    for (int32_t c = 0; c < in->num_ctas; c++)
        heap[c] = (cta_load){0, c};
    for (int32_t i = 0; i < n; i++) {
        assigned[order[i].index] = heap[0].cta;
        heap[0].load += order[i].cost;
        sift_down(heap, in->num_ctas, 0);
    }

    /* Per-workgroup lists, each in longest-first order. */
    for (int32_t c = 0; c <= in->num_ctas; c++)
        out->work_indptr[c] = 0;
    for (int32_t i = 0; i < n; i++)
        out->work_indptr[assigned[i] + 1]++;
    for (int32_t c = 0; c < in->num_ctas; c++)
        out->work_indptr[c + 1] += out->work_indptr[c];
    for (int32_t c = 0; c < in->num_ctas; c++)
        fill[c] = out->work_indptr[c];
    for (int32_t i = 0; i < n; i++) {
        int32_t src = order[i].index;
        int32_t dst = fill[assigned[src]]++;
        for (int k = 0; k < FLP_WORK_ITEM_INTS; k++)
            out->work_items[FLP_WORK_ITEM_INTS * dst + k] = items[FLP_WORK_ITEM_INTS * src + k];
    }
}

bool flp_decode_schedule_build(const flp_decode_schedule_input *in, flp_decode_schedule *out) {
    int32_t chunk = choose_chunk(in);
    out->chunk_size = chunk;

    /* Items in natural order (request, head, chunk) into a temporary list. */
    int32_t max_items = flp_decode_max_items(in->batch_size, in->num_kv_heads, in->num_ctas);
    int32_t *items = malloc(sizeof(int32_t) * FLP_WORK_ITEM_INTS * (size_t)max_items);
    item_ref *order = malloc(sizeof(item_ref) * (size_t)max_items);
    int32_t *assigned = malloc(sizeof(int32_t) * (size_t)max_items);
    cta_load *heap = malloc(sizeof(cta_load) * (size_t)in->num_ctas);
    int32_t *fill = malloc(sizeof(int32_t) * (size_t)in->num_ctas);
    bool ok = items && order && assigned && heap && fill;
    if (ok)
        build(in, chunk, items, order, assigned, heap, fill, out);
    free(items);
    free(order);
    free(assigned);
    free(heap);
    free(fill);
    return ok;
}
