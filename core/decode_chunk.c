/* The decode chunk size (docs/design.md 5.5): the split of long requests into KV chunks that
 * gives the shortest slowest workgroup, found by simulating the longest-first assignment of each
 * candidate. Pure host code, deterministic. */
#include "core/decode_chunk.h"
#include "core/assign.h"

#include <limits.h>
#include <stdbool.h>

/* The candidate chunks besides no split: the fair share of the grid divided by these (many
 * pieces for a batch too short to fill the grid), and the longest request divided by these
 * (even rounds of pieces for a batch of a little more than one item per workgroup). No
 * candidate is below the fair share over FLP_DECODE_MAX_SPLIT_DIVISOR, which bounds the item
 * count. */
static const int32_t SPLIT_DIVISORS[] = {1, 2, 3, FLP_DECODE_MAX_SPLIT_DIVISOR};

size_t flp_decode_chunk_scratch_bytes(int32_t batch_size, int32_t num_ctas) {
    /* the non-full pieces' costs [batch_size] and the sort's second copy, then the loads */
    size_t batch = (size_t)(batch_size > 0 ? batch_size : 1);
    return 2 * sizeof(flp_cost_run) * batch + flp_least_loaded_bytes(num_ctas);
}

static int32_t key_count(const flp_decode_schedule_input *in, int32_t b) {
    return in->kv_end[b] - in->kv_begin[b];
}

/* The slowest workgroup's cost when every request longer than chunk is cut into chunk-sized
 * pieces (the last one shorter) and the pieces are assigned longest first to the least loaded
 * workgroup: an estimate of flp_assign_longest_first's result (here a split piece also costs
 * FLP_DECODE_SPLIT_OVERHEAD). The full chunks all cost the same and come first; the other
 * pieces go in runs of equal costs (a request's heads, requests of one length).
 *
 * Only a time of at most bound matters to the caller: any result above bound says the time is
 * above it, found as soon as the mean load or the slowest workgroup so far exceeds bound. */
static int64_t simulated_makespan(const flp_decode_schedule_input *in, int32_t chunk, int64_t bound,
                                  flp_cost_run *rest, flp_cost_run *sort_tmp, void *loads_scratch) {
    const int32_t heads = in->num_kv_heads;
    const int64_t full_cost = (int64_t)chunk + FLP_DECODE_ITEM_OVERHEAD + FLP_DECODE_SPLIT_OVERHEAD;
    int64_t full = 0, total = 0;
    int32_t num_runs = 0; /* of the other pieces, consecutive requests of one cost together */
    for (int32_t b = 0; b < in->batch_size; b++) {
        int32_t len = key_count(in, b);
        int64_t cost;
        if (len > chunk) {
            full += (int64_t)(len / chunk) * heads;
            int64_t tail = len % chunk;
            cost = tail > 0 ? tail + FLP_DECODE_ITEM_OVERHEAD + FLP_DECODE_SPLIT_OVERHEAD : 0;
        } else {
            cost = (int64_t)len + FLP_DECODE_ITEM_OVERHEAD;
        }
        total += cost * heads;
        if (cost > 0 && num_runs > 0 && rest[num_runs - 1].cost == cost)
            rest[num_runs - 1].count += heads;
        else if (cost > 0)
            rest[num_runs++] = (flp_cost_run){cost, b, heads};
    }
    total += full * full_cost;
    /* the slowest workgroup carries at least the mean load */
    const int64_t mean = (total + in->num_ctas - 1) / in->num_ctas;
    if (mean > bound)
        return mean;
    /* Every count is a multiple of the head count, so the loads go in groups (assign.h). */
    flp_least_loaded loads;
    flp_least_loaded_init(&loads, in->num_ctas, (int32_t)flp_gcd(in->num_ctas, heads),
                          loads_scratch);
    flp_least_loaded_add(&loads, full_cost, full, NULL);
    if (loads.heaviest > bound)
        return loads.heaviest;
    flp_sort_by_cost_desc(rest, sort_tmp, num_runs);
    flp_least_loaded_add_runs(&loads, rest, num_runs, bound, NULL);
    return loads.heaviest;
}

/* The most a time can be and still be FLP_DECODE_SPLIT_MIN_GAIN_PERCENT below base (>= 0),
 * without products that could overflow. */
static int64_t most_that_gains(int64_t base) {
    const int64_t keep = 100 - FLP_DECODE_SPLIT_MIN_GAIN_PERCENT;
    return base / 100 * keep + base % 100 * keep / 100;
}

int32_t flp_decode_choose_chunk(const flp_decode_schedule_input *in, void *scratch) {
    const size_t batch = (size_t)(in->batch_size > 0 ? in->batch_size : 1);
    flp_cost_run *rest = scratch, *sort_tmp = rest + batch;
    void *loads = sort_tmp + batch;
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
    const int64_t unsplit_time =
        simulated_makespan(in, INT32_MAX, INT64_MAX, rest, sort_tmp, loads);
    /* A split must gain more than the merge's fixed cost, which the pieces' costs leave out. */
    const int64_t most = most_that_gains(unsplit_time);
    int64_t best_time = unsplit_time;
    /* No schedule beats the mean load (splitting only adds cost): when no split can gain the
     * required share, none is simulated. */
    if (total / in->num_ctas > most)
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
        /* A time above the best so far cannot win, and one above most cannot be taken (nor,
         * were it the least, could any other): such candidates are not simulated to the end. */
        const int64_t bound = best_time < most ? best_time : most;
        int64_t time = simulated_makespan(in, (int32_t)chunk, bound, rest, sort_tmp, loads);
        /* the largest chunk among equals: fewer pieces to merge */
        if (time <= bound && (time < best_time || (time == best_time && chunk > best))) {
            best_time = time;
            best = (int32_t)chunk;
        }
    }
    if (best_time > most)
        return INT32_MAX;
    return best;
}
