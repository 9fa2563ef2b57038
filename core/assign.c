/* Longest-processing-time-first assignment of work items to workgroups (docs/design.md 5.7),
 * shared by the decode and prefill schedulers. Deterministic: ties break by index. */
#include "core/assign.h"

#include <stdbool.h>

typedef struct item_ref {
    int64_t cost;
    int32_t index;
} item_ref;

/* Sorts order[0..n) by decreasing cost, ties in increasing index (the order they come in): a
 * stable radix sort, 8 bits a pass, over only the bytes in which the costs differ (plans sort
 * thousands of items; qsort was a tenth of a decode plan's host time). tmp: n records. */
static void sort_by_cost_desc(item_ref *order, item_ref *tmp, int32_t n) {
    int64_t lo = INT64_MAX, hi = INT64_MIN;
    for (int32_t i = 0; i < n; i++) {
        lo = order[i].cost < lo ? order[i].cost : lo;
        hi = order[i].cost > hi ? order[i].cost : hi;
    }
    if (n < 2)
        return;
    const uint64_t range = (uint64_t)hi - (uint64_t)lo;
    item_ref *from = order, *to = tmp;
    for (int shift = 0; shift < 64 && (range >> shift) != 0; shift += 8) {
        int32_t start[257] = {0};
        for (int32_t i = 0; i < n; i++) /* key hi - cost: the largest cost first */
            start[(((uint64_t)hi - (uint64_t)from[i].cost) >> shift & 255u) + 1]++;
        for (int d = 0; d < 256; d++)
            start[d + 1] += start[d];
        for (int32_t i = 0; i < n; i++)
            to[start[((uint64_t)hi - (uint64_t)from[i].cost) >> shift & 255u]++] = from[i];
        item_ref *t = from;
        from = to;
        to = t;
    }
    if (from != order)
        for (int32_t i = 0; i < n; i++)
            order[i] = from[i];
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

static void assign(const int32_t *items, int item_ints, const int64_t *cost, int32_t n,
                   int32_t num_ctas, item_ref *order, item_ref *sort_tmp, int32_t *assigned,
                   cta_load *heap, int32_t *fill, int32_t *work_indptr, int32_t *work_items) {
    for (int32_t i = 0; i < n; i++)
        order[i] = (item_ref){cost[i], i};
    sort_by_cost_desc(order, sort_tmp, n);
    for (int32_t c = 0; c < num_ctas; c++)
        heap[c] = (cta_load){0, c};
    for (int32_t i = 0; i < n; i++) {
        assigned[order[i].index] = heap[0].cta;
        heap[0].load += order[i].cost;
        sift_down(heap, num_ctas, 0);
    }

    /* Per-workgroup lists, each in longest-first order. */
    for (int32_t c = 0; c <= num_ctas; c++)
        work_indptr[c] = 0;
    for (int32_t i = 0; i < n; i++)
        work_indptr[assigned[i] + 1]++;
    for (int32_t c = 0; c < num_ctas; c++)
        work_indptr[c + 1] += work_indptr[c];
    for (int32_t c = 0; c < num_ctas; c++)
        fill[c] = work_indptr[c];
    for (int32_t i = 0; i < n; i++) {
        int32_t src = order[i].index;
        int32_t dst = fill[assigned[src]]++;
        for (int k = 0; k < item_ints; k++)
            work_items[item_ints * dst + k] = items[item_ints * src + k];
    }
}

size_t flp_assign_scratch_bytes(int32_t n, int32_t num_ctas) {
    size_t count = n > 0 ? (size_t)n : 1, ctas = (size_t)num_ctas;
    /* the 8-byte-aligned records first (order, the sort's second copy, the heap), then the
     * int32 arrays */
    size_t bytes = 2 * sizeof(item_ref) * count + sizeof(cta_load) * ctas;
    bytes += sizeof(int32_t) * (count + ctas);
    return (bytes + 7) / 8 * 8;
}

void flp_assign_longest_first(const int32_t *items, int item_ints, const int64_t *cost, int32_t n,
                              int32_t num_ctas, int32_t *work_indptr, int32_t *work_items,
                              void *scratch) {
    size_t count = n > 0 ? (size_t)n : 1;
    item_ref *order = scratch;
    item_ref *sort_tmp = order + count;
    cta_load *heap = (cta_load *)(sort_tmp + count);
    int32_t *assigned = (int32_t *)(heap + num_ctas);
    int32_t *fill = assigned + count;
    assign(items, item_ints, cost, n, num_ctas, order, sort_tmp, assigned, heap, fill, work_indptr,
           work_items);
}
