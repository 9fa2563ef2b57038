/* The decode chunk size (docs/design.md 5.5): the split of long requests into KV chunks that
 * gives the shortest slowest workgroup, found by simulating the longest-first assignment of each
 * candidate. Pure host code, deterministic. */
#include "core/decode_chunk.h"

#include <limits.h>
#include <stdbool.h>
#include <stdlib.h>

/* The candidate chunks besides no split: the fair share of the grid divided by these (many
 * pieces for a batch too short to fill the grid), and the longest request divided by these
 * (even rounds of pieces for a batch of a little more than one item per workgroup). No
 * candidate is below the fair share over FLP_DECODE_MAX_SPLIT_DIVISOR, which bounds the item
 * count. */
static const int32_t SPLIT_DIVISORS[] = {1, 2, 3, FLP_DECODE_MAX_SPLIT_DIVISOR};

size_t flp_decode_chunk_scratch_bytes(int32_t batch_size, int32_t num_ctas) {
    /* loads [num_ctas] and the non-full pieces' costs [batch_size], int64 */
    return sizeof(int64_t) * ((size_t)num_ctas + (size_t)(batch_size > 0 ? batch_size : 1));
}

static int by_value_desc(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x > y ? -1 : x < y;
}

static void sift_down(int64_t *heap, int32_t n, int32_t i) {
    for (;;) {
        int32_t least = i, l = 2 * i + 1, r = l + 1;
        if (l < n && heap[l] < heap[least])
            least = l;
        if (r < n && heap[r] < heap[least])
            least = r;
        if (least == i)
            return;
        int64_t t = heap[i];
        heap[i] = heap[least];
        heap[least] = t;
        i = least;
    }
}

static int32_t key_count(const flp_decode_schedule_input *in, int32_t b) {
    return in->kv_end[b] - in->kv_begin[b];
}

/* The slowest workgroup's cost when every request longer than chunk is cut into chunk-sized
 * pieces (the last one shorter) and the pieces are assigned longest first to the least loaded
 * workgroup: an estimate of flp_assign_longest_first's result (here a split piece also costs
 * FLP_DECODE_SPLIT_OVERHEAD). The full chunks all cost the same and come
 * first, so they are spread in closed form; the other pieces go through a heap of loads. */
static int64_t simulated_makespan(const flp_decode_schedule_input *in, int32_t chunk,
                                  int64_t *loads, int64_t *rest) {
    const int64_t heads = in->num_kv_heads, ctas = in->num_ctas;
    const int64_t full_cost = (int64_t)chunk + FLP_DECODE_ITEM_OVERHEAD + FLP_DECODE_SPLIT_OVERHEAD;
    int64_t full = 0;
    for (int32_t b = 0; b < in->batch_size; b++) {
        int32_t len = key_count(in, b);
        if (len > chunk) {
            full += (int64_t)(len / chunk) * heads;
            int64_t tail = len % chunk;
            rest[b] = tail > 0 ? tail + FLP_DECODE_ITEM_OVERHEAD + FLP_DECODE_SPLIT_OVERHEAD : 0;
        } else {
            rest[b] = (int64_t)len + FLP_DECODE_ITEM_OVERHEAD;
        }
    }
    qsort(rest, (size_t)in->batch_size, sizeof *rest, by_value_desc);
    /* full / ctas rounds of full chunks everywhere, one more on the first full % ctas */
    for (int64_t c = 0; c < ctas; c++)
        loads[c] = (full / ctas + (c < full % ctas)) * full_cost;
    for (int32_t c = (int32_t)(ctas / 2) - 1; c >= 0; c--)
        sift_down(loads, (int32_t)ctas, c);
    int64_t heaviest = full > 0 ? (full + ctas - 1) / ctas * full_cost : 0;
    /* Runs of equal costs (a request's heads, requests of one length). While a run holds a
     * piece for every workgroup and the loads differ by at most its cost, longest-first gives
     * each workgroup one: added to all at once, the heap stays ordered. */
    for (int32_t b = 0; b < in->batch_size && rest[b] > 0;) {
        int32_t e = b;
        while (e < in->batch_size && rest[e] == rest[b])
            e++;
        const int64_t cost = rest[b];
        int64_t pieces = (int64_t)(e - b) * heads;
        if (pieces >= ctas && heaviest - loads[0] <= cost) {
            const int64_t rounds = pieces / ctas;
            for (int64_t c = 0; c < ctas; c++)
                loads[c] += rounds * cost;
            heaviest += rounds * cost;
            pieces -= rounds * ctas;
        }
        for (; pieces > 0; pieces--) {
            loads[0] += cost;
            if (loads[0] > heaviest)
                heaviest = loads[0];
            sift_down(loads, (int32_t)ctas, 0);
        }
        b = e;
    }
    return heaviest;
}

/* Whether time is at least FLP_DECODE_SPLIT_MIN_GAIN_PERCENT below base (both >= 0), without
 * products that could overflow. */
static bool gains_enough(int64_t time, int64_t base) {
    const int64_t keep = 100 - FLP_DECODE_SPLIT_MIN_GAIN_PERCENT;
    return time <= base / 100 * keep + base % 100 * keep / 100;
}

int32_t flp_decode_choose_chunk(const flp_decode_schedule_input *in, void *scratch) {
    int64_t *loads = scratch, *rest = loads + in->num_ctas;
    int64_t total = 0;
    int32_t longest = 0;
    for (int32_t b = 0; b < in->batch_size; b++) {
        int32_t len = key_count(in, b);
        total += ((int64_t)len + FLP_DECODE_ITEM_OVERHEAD) * in->num_kv_heads;
        if (len > longest)
            longest = len;
    }
    const int64_t align = in->chunk_align > 0 ? in->chunk_align : 1;
    const int64_t fair = (total + in->num_ctas - 1) / in->num_ctas;
    const int64_t smallest =
        (fair + FLP_DECODE_MAX_SPLIT_DIVISOR - 1) / FLP_DECODE_MAX_SPLIT_DIVISOR;
    int32_t best = INT32_MAX;
    const int64_t unsplit_time = simulated_makespan(in, INT32_MAX, loads, rest);
    int64_t best_time = unsplit_time;
    /* No schedule beats the mean load (splitting only adds cost): when no split can gain the
     * required share, none is simulated. */
    if (!gains_enough(total / in->num_ctas, unsplit_time))
        return INT32_MAX;
    enum { CANDIDATES = 2 * sizeof SPLIT_DIVISORS / sizeof *SPLIT_DIVISORS };
    const size_t divisors = CANDIDATES / 2;
    int64_t tried[CANDIDATES]; /* chunks simulated so far: clamped candidates often coincide */
    size_t num_tried = 0;
    for (size_t i = 0; i < CANDIDATES; i++) {
        int64_t whole = i < divisors ? fair : longest, k = SPLIT_DIVISORS[i % divisors];
        int64_t chunk = (whole + k - 1) / k;
        if (chunk < smallest)
            chunk = smallest;
        if (chunk < in->min_chunk)
            chunk = in->min_chunk;
        chunk = (chunk + align - 1) / align * align;
        bool seen = chunk >= longest; /* splits nothing */
        for (size_t t = 0; t < num_tried; t++)
            seen |= tried[t] == chunk;
        if (seen)
            continue;
        tried[num_tried++] = chunk;
        int64_t time = simulated_makespan(in, (int32_t)chunk, loads, rest);
        /* the largest chunk among equals: fewer pieces to merge */
        if (time < best_time || (time == best_time && chunk > best)) {
            best_time = time;
            best = (int32_t)chunk;
        }
    }
    /* A split must gain more than the merge's fixed cost, which the pieces' costs leave out. */
    if (!gains_enough(best_time, unsplit_time))
        return INT32_MAX;
    return best;
}
