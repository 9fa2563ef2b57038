/* The decode scheduler: coverage, bounds, balance and determinism on random batches. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/assign.h"
#include "core/decode_chunk.h"
#include "core/decode_schedule.h"
#include "tests/test_util.h"

typedef struct schedule_case {
    int32_t batch, heads, ctas;
    int32_t *begin, *end;
    int32_t *work_indptr, *work_items, *merge_info;
    flp_decode_schedule out;
} schedule_case;

static void run_schedule(schedule_case *c, int32_t min_chunk, int32_t align) {
    int32_t max_items = flp_decode_max_items(c->batch, c->heads, c->ctas);
    c->work_indptr = calloc((size_t)c->ctas + 1, sizeof(int32_t));
    c->work_items = calloc((size_t)max_items * FLP_WORK_ITEM_INTS, sizeof(int32_t));
    c->merge_info = calloc((size_t)c->batch * 2, sizeof(int32_t));
    flp_decode_schedule_input in = {c->batch, c->heads,  c->ctas, c->begin,
                                    c->end,   min_chunk, align};
    c->out = (flp_decode_schedule){0, 0, 0, c->work_indptr, c->work_items, c->merge_info};
    assert_true(flp_decode_schedule_build(&in, &c->out));
    assert_true(c->out.num_items <= max_items);
}

static void free_case(schedule_case *c) {
    free(c->begin);
    free(c->end);
    free(c->work_indptr);
    free(c->work_items);
    free(c->merge_info);
}

/* Item i of items (c's schedule or a copy of its items) read as the kernels read it. */
static flp_decode_item item_of(const schedule_case *c, const int32_t *items, int32_t i) {
    return flp_decode_item_at(items, i, c->out.merge_info, c->begin, c->end, c->out.chunk_size);
}

/* Every (request, head) key range is covered exactly once, chunks are consecutive, partial
 * slots match merge_info and are unique, workgroup loads differ by at most one item's cost. */
static void check_schedule(const schedule_case *c) {
    const flp_decode_schedule *s = &c->out;
    assert_int_equal(s->work_indptr[0], 0);
    assert_int_equal(s->work_indptr[c->ctas], s->num_items);
    int32_t *covered = calloc((size_t)c->batch * (size_t)c->heads, sizeof(int32_t));
    bool *slot_used = calloc((size_t)s->num_partial_slots + 1, sizeof(bool));
    int64_t max_load = 0, min_load = INT64_MAX, max_cost = 0;
    for (int32_t cta = 0; cta < c->ctas; cta++) {
        assert_true(s->work_indptr[cta] <= s->work_indptr[cta + 1]);
        int64_t load = 0;
        for (int32_t i = s->work_indptr[cta]; i < s->work_indptr[cta + 1]; i++) {
            const int32_t *raw = s->work_items + FLP_WORK_ITEM_INTS * i;
            assert_in_range(raw[FLP_WORK_REQUEST], 0, c->batch - 1);
            int32_t chunks = s->merge_info[2 * raw[FLP_WORK_REQUEST] + 1];
            assert_true(chunks >= 1);
            assert_in_range(raw[FLP_WORK_HEAD_CHUNK], 0, c->heads * chunks - 1);
            const flp_decode_item it = item_of(c, s->work_items, i);
            int32_t b = it.request, g = it.kv_head;
            assert_in_range(g, 0, c->heads - 1);
            assert_true(it.kv_begin >= c->begin[b]);
            assert_true(it.kv_end <= c->end[b]);
            assert_true(it.kv_begin <= it.kv_end);
            covered[b * c->heads + g] += it.kv_end - it.kv_begin;
            if (chunks > 1) {
                /* a whole chunk but the last */
                int32_t chunk = (it.kv_begin - c->begin[b]) / s->chunk_size;
                assert_int_equal(it.kv_begin, c->begin[b] + chunk * s->chunk_size);
                if (chunk + 1 < chunks)
                    assert_int_equal(it.kv_end - it.kv_begin, s->chunk_size);
                assert_in_range(it.partial_slot, 0, s->num_partial_slots - 1);
                assert_false(slot_used[it.partial_slot]);
                slot_used[it.partial_slot] = true;
            } else {
                assert_int_equal(it.partial_slot, -1);
                assert_int_equal(it.kv_begin, c->begin[b]);
                assert_int_equal(it.kv_end, c->end[b]);
            }
            int64_t cost = it.kv_end - it.kv_begin + 16;
            load += cost;
            if (cost > max_cost)
                max_cost = cost;
        }
        if (load > max_load)
            max_load = load;
        if (load < min_load)
            min_load = load;
    }
    for (int32_t b = 0; b < c->batch; b++)
        for (int32_t g = 0; g < c->heads; g++)
            assert_int_equal(covered[b * c->heads + g], c->end[b] - c->begin[b]);
    for (int32_t i = 0; i < s->num_partial_slots; i++)
        assert_true(slot_used[i]);
    /* Greedy longest-first: the heaviest workgroup exceeds the lightest by at most one item. */
    assert_true(max_load - min_load <= max_cost);
    free(covered);
    free(slot_used);
}

static void random_case(test_rng *rng, schedule_case *c, int32_t batch, int32_t heads, int32_t ctas,
                        int32_t max_len) {
    c->batch = batch;
    c->heads = heads;
    c->ctas = ctas;
    c->begin = calloc((size_t)batch, sizeof(int32_t));
    c->end = calloc((size_t)batch, sizeof(int32_t));
    for (int32_t b = 0; b < batch; b++) {
        c->end[b] = test_rng_int(rng, 0, max_len);
        c->begin[b] = test_rng_int(rng, 0, 3) == 0 ? test_rng_int(rng, 0, c->end[b]) : 0;
    }
}

static void test_random_batches(void **state) {
    (void)state;
    test_rng rng;
    test_rng_init(&rng, 0x5eed);
    for (int iter = 0; iter < 300; iter++) {
        schedule_case c;
        int32_t batch = test_rng_int(&rng, 1, 40);
        int32_t heads = test_rng_int(&rng, 1, 8);
        int32_t ctas = test_rng_int(&rng, 1, 300);
        random_case(&rng, &c, batch, heads, ctas, iter % 3 == 0 ? 20000 : 600);
        run_schedule(&c, 128, 16);
        check_schedule(&c);
        free_case(&c);
    }
}

/* The slowest workgroup's load over the mean load, loads counted as the scheduler does. */
static double load_imbalance(const schedule_case *c) {
    int64_t max_load = 0, sum = 0;
    for (int32_t cta = 0; cta < c->ctas; cta++) {
        int64_t load = 0;
        for (int32_t i = c->out.work_indptr[cta]; i < c->out.work_indptr[cta + 1]; i++) {
            const flp_decode_item it = item_of(c, c->work_items, i);
            load += it.kv_end - it.kv_begin + 16;
        }
        sum += load;
        if (load > max_load)
            max_load = load;
    }
    return (double)max_load * c->ctas / (double)sum;
}

/* lens: runs of (count, length), ended by a zero count. */
static void lengths_case(schedule_case *c, int32_t heads, int32_t ctas, const int32_t *runs) {
    int32_t batch = 0;
    for (const int32_t *r = runs; r[0] > 0; r += 2)
        batch += r[0];
    *c = (schedule_case){.batch = batch, .heads = heads, .ctas = ctas};
    c->begin = calloc((size_t)batch, sizeof(int32_t));
    c->end = calloc((size_t)batch, sizeof(int32_t));
    int32_t b = 0;
    for (const int32_t *r = runs; r[0] > 0; r += 2)
        for (int32_t i = 0; i < r[0]; i++)
            c->end[b++] = r[1];
}

/* A uniform batch that fills the grid is not split: the best candidate (chunk 4000) would shorten
 * the slowest workgroup by about 2%, less than the 3% a split must gain. */
static void test_no_split_for_uniform_batch(void **state) {
    (void)state;
    static const int32_t uniform[] = {64, 4096, 0};
    schedule_case c;
    lengths_case(&c, 8, 264, uniform);
    run_schedule(&c, 128, 16);
    assert_int_equal(c.out.num_partial_slots, 0);
    assert_int_equal(c.out.num_items, 64 * 8);
    check_schedule(&c);
    free_case(&c);
}

/* Skewed serving batches: a few long requests among many short ones, and batches of a little
 * more than one item per workgroup. The long requests are split although the batch fills the
 * grid, and the slowest workgroup carries at most 10% more than the mean, on a grid of the
 * CUDA backend's size (2 x 132 SMs) and of the Vulkan backend's (4 x 132). */
static void test_skewed_batches_are_balanced(void **state) {
    (void)state;
    static const int32_t batches[][7] = {
        {1, 32768, 63, 512, 0}, {2, 65536, 254, 256, 0},   {1, 131072, 7, 1024, 0},  {40, 4096, 0},
        {100, 3000, 0},         {1, 100000, 200, 3000, 0}, {3, 20000, 5, 7, 120, 33}};
    static const int32_t grids[] = {264, 528};
    for (size_t i = 0; i < sizeof batches / sizeof *batches; i++)
        for (size_t g = 0; g < 2; g++) {
            schedule_case c;
            lengths_case(&c, 8, grids[g], batches[i]);
            run_schedule(&c, 128, 16);
            check_schedule(&c);
            /* the batches that fill the grid unsplit are split all the same */
            if ((int64_t)c.batch * c.heads >= c.ctas)
                assert_int_not_equal(c.out.chunk_size, INT32_MAX);
            double imbalance = load_imbalance(&c);
            print_message("batch %zu, %d workgroups: %d items, chunk %d, max/mean load %.3f\n", i,
                          grids[g], c.out.num_items, c.out.chunk_size, imbalance);
            assert_true(imbalance <= 1.1);
            free_case(&c);
        }
}

static void test_long_request_is_split(void **state) {
    (void)state;
    schedule_case c = {0};
    c.batch = 1;
    c.heads = 2;
    c.ctas = 132;
    c.begin = calloc(1, sizeof(int32_t));
    c.end = calloc(1, sizeof(int32_t));
    c.end[0] = 32768;
    run_schedule(&c, 128, 16);
    assert_true(c.out.merge_info[1] > 1);
    /* Enough items to occupy every workgroup, but at most a small multiple of them. */
    assert_true(c.out.num_items >= c.ctas / 2);
    assert_true(c.out.num_items <= 2 * c.ctas);
    check_schedule(&c);
    free_case(&c);
}

static void test_deterministic(void **state) {
    (void)state;
    test_rng rng;
    test_rng_init(&rng, 99);
    schedule_case a, b;
    random_case(&rng, &a, 9, 4, 100, 5000);
    b = a;
    b.begin = malloc(sizeof(int32_t) * 9);
    b.end = malloc(sizeof(int32_t) * 9);
    memcpy(b.begin, a.begin, sizeof(int32_t) * 9);
    memcpy(b.end, a.end, sizeof(int32_t) * 9);
    run_schedule(&a, 128, 16);
    run_schedule(&b, 128, 16);
    assert_int_equal(a.out.num_items, b.out.num_items);
    assert_memory_equal(a.work_items, b.work_items,
                        sizeof(int32_t) * FLP_WORK_ITEM_INTS * (size_t)a.out.num_items);
    assert_memory_equal(a.work_indptr, b.work_indptr, sizeof(int32_t) * 101);
    free_case(&a);
    free_case(&b);
}

static void test_empty_requests_get_an_item(void **state) {
    (void)state;
    schedule_case c = {0};
    c.batch = 3;
    c.heads = 2;
    c.ctas = 4;
    c.begin = calloc(3, sizeof(int32_t));
    c.end = calloc(3, sizeof(int32_t));
    c.end[1] = 1000;
    run_schedule(&c, 128, 16);
    /* Empty requests still need their output rows written (zeros, lse -inf). */
    int found_empty = 0;
    for (int32_t i = 0; i < c.out.num_items; i++) {
        const int32_t *it = c.work_items + FLP_WORK_ITEM_INTS * i;
        if (it[FLP_WORK_REQUEST] != 1)
            found_empty++;
    }
    assert_int_equal(found_empty, 2 * 2);
    check_schedule(&c);
    free_case(&c);
}

/* Longest-first written plainly, the oracle of the assignment: items by decreasing cost (ties:
 * lower index), each to the least loaded workgroup found by a scan (ties: lower index), each
 * workgroup's list in that order. */
typedef struct ranked_item {
    int64_t cost;
    int32_t index;
} ranked_item;

static int by_cost_desc_then_index(const void *a, const void *b) {
    const ranked_item *x = a, *y = b;
    if (x->cost != y->cost)
        return x->cost > y->cost ? -1 : 1;
    return x->index < y->index ? -1 : x->index > y->index;
}

static void reference_longest_first(const int32_t *items, int item_ints, const int64_t *cost,
                                    int32_t n, int32_t ctas, int32_t *work_indptr,
                                    int32_t *work_items) {
    ranked_item *order = malloc(sizeof(ranked_item) * ((size_t)n + 1));
    int32_t *owner = malloc(sizeof(int32_t) * ((size_t)n + 1));
    int64_t *load = calloc((size_t)ctas, sizeof(int64_t));
    int32_t *fill = calloc((size_t)ctas, sizeof(int32_t));
    for (int32_t i = 0; i < n; i++)
        order[i] = (ranked_item){cost[i], i};
    qsort(order, (size_t)n, sizeof *order, by_cost_desc_then_index);
    for (int32_t k = 0; k < n; k++) {
        int32_t least = 0;
        for (int32_t c = 1; c < ctas; c++)
            if (load[c] < load[least])
                least = c;
        owner[k] = least;
        load[least] += order[k].cost;
    }
    memset(work_indptr, 0, sizeof(int32_t) * ((size_t)ctas + 1));
    for (int32_t k = 0; k < n; k++)
        work_indptr[owner[k] + 1]++;
    for (int32_t c = 0; c < ctas; c++)
        work_indptr[c + 1] += work_indptr[c];
    for (int32_t k = 0; k < n; k++) {
        int32_t dst = work_indptr[owner[k]] + fill[owner[k]]++;
        memcpy(work_items + (size_t)item_ints * (size_t)dst,
               items + (size_t)item_ints * (size_t)order[k].index,
               sizeof(int32_t) * (size_t)item_ints);
    }
    free(order);
    free(owner);
    free(load);
    free(fill);
}

/* Random costs of several shapes: runs of equal costs (KV heads), many ties and zeros, a wide
 * spread with small costs after large ones, one cost for all. */
static void random_costs(test_rng *rng, int64_t *cost, int32_t n, int shape) {
    int32_t heads = test_rng_int(rng, 1, 8);
    for (int32_t i = 0; i < n; i++) {
        switch (shape) {
        case 0:
            cost[i] = i % heads == 0 ? test_rng_int(rng, 16, 40000) : cost[i - 1];
            break;
        case 1:
            cost[i] = test_rng_int(rng, 0, 20);
            break;
        case 2:
            cost[i] = i < 200 ? (int64_t)test_rng_int(rng, 1000, 100000) : test_rng_int(rng, 1, 40);
            break;
        default:
            cost[i] = 4112;
            break;
        }
    }
}

static void test_assignment_matches_reference(void **state) {
    (void)state;
    test_rng rng;
    test_rng_init(&rng, 0x1a57);
    static const int32_t grids[] = {1, 2, 3, 7, 132, 264, 528, 1000};
    for (int iter = 0; iter < 400; iter++) {
        int32_t n = test_rng_int(&rng, 0, iter % 10 == 0 ? 3000 : 400);
        int32_t ctas = iter % 2 ? grids[iter / 2 % 8] : test_rng_int(&rng, 1, 1100);
        int item_ints = test_rng_int(&rng, 1, 7);
        int64_t *cost = malloc(sizeof(int64_t) * ((size_t)n + 1));
        int32_t *items = malloc(sizeof(int32_t) * ((size_t)n * (size_t)item_ints + 1));
        random_costs(&rng, cost, n, iter % 4);
        for (int32_t i = 0; i < n * item_ints; i++)
            items[i] = i;
        int32_t *got_indptr = calloc((size_t)ctas + 1, sizeof(int32_t));
        int32_t *want_indptr = calloc((size_t)ctas + 1, sizeof(int32_t));
        int32_t *got = calloc((size_t)n * (size_t)item_ints + 1, sizeof(int32_t));
        int32_t *want = calloc((size_t)n * (size_t)item_ints + 1, sizeof(int32_t));
        void *scratch = malloc(flp_assign_scratch_bytes(n, ctas));
        flp_assign_longest_first(items, item_ints, cost, n, ctas, got_indptr, got, scratch);
        reference_longest_first(items, item_ints, cost, n, ctas, want_indptr, want);
        assert_memory_equal(got_indptr, want_indptr, sizeof(int32_t) * ((size_t)ctas + 1));
        assert_memory_equal(got, want, sizeof(int32_t) * (size_t)n * (size_t)item_ints);
        free(cost);
        free(items);
        free(got_indptr);
        free(want_indptr);
        free(got);
        free(want);
        free(scratch);
    }
}

/* Item a comes before item b in the order the scheduler makes them: request, KV head, chunk. */
static int by_natural_order(const void *a, const void *b) {
    const int32_t *x = a, *y = b;
    static const int fields[] = {FLP_WORK_REQUEST, FLP_WORK_HEAD_CHUNK};
    for (size_t f = 0; f < sizeof fields / sizeof *fields; f++)
        if (x[fields[f]] != y[fields[f]])
            return x[fields[f]] < y[fields[f]] ? -1 : 1;
    return 0;
}

/* The decode schedule's assignment of its own items, put back in natural order, is the
 * reference longest-first assignment of them. */
static void test_schedule_matches_reference(void **state) {
    (void)state;
    test_rng rng;
    test_rng_init(&rng, 0x5ced);
    static const int32_t grids[] = {1, 5, 132, 264, 528, 1000};
    for (int iter = 0; iter < 120; iter++) {
        schedule_case c;
        int32_t batch = test_rng_int(&rng, 1, iter % 4 == 0 ? 300 : 64);
        random_case(&rng, &c, batch, test_rng_int(&rng, 1, 16), grids[iter % 6],
                    iter % 3 == 0 ? 200000 : 20000);
        run_schedule(&c, FLP_DECODE_MIN_CHUNK, 16);
        const int32_t n = c.out.num_items;
        int32_t *items = malloc(sizeof(int32_t) * FLP_WORK_ITEM_INTS * ((size_t)n + 1));
        int64_t *cost = malloc(sizeof(int64_t) * ((size_t)n + 1));
        memcpy(items, c.work_items, sizeof(int32_t) * FLP_WORK_ITEM_INTS * (size_t)n);
        qsort(items, (size_t)n, sizeof(int32_t) * FLP_WORK_ITEM_INTS, by_natural_order);
        for (int32_t i = 0; i < n; i++) {
            const flp_decode_item it = item_of(&c, items, i);
            cost[i] = it.kv_end - it.kv_begin + FLP_DECODE_ITEM_OVERHEAD;
        }
        int32_t *want_indptr = calloc((size_t)c.ctas + 1, sizeof(int32_t));
        int32_t *want = calloc((size_t)n * FLP_WORK_ITEM_INTS + 1, sizeof(int32_t));
        reference_longest_first(items, FLP_WORK_ITEM_INTS, cost, n, c.ctas, want_indptr, want);
        assert_memory_equal(c.work_indptr, want_indptr, sizeof(int32_t) * ((size_t)c.ctas + 1));
        assert_memory_equal(c.work_items, want, sizeof(int32_t) * FLP_WORK_ITEM_INTS * (size_t)n);
        free(items);
        free(cost);
        free(want_indptr);
        free(want);
        free_case(&c);
    }
}

/* The chunk choice written plainly (docs/design.md 5.5), the oracle of flp_decode_choose_chunk:
 * every candidate's pieces (a request's keys cut into chunks, each piece keys +
 * FLP_DECODE_ITEM_OVERHEAD, + FLP_DECODE_SPLIT_OVERHEAD when split, once per KV head) given
 * longest first, each to the least loaded workgroup found by a scan; the candidate of the
 * shortest slowest workgroup (ties: the larger chunk), if it beats no split by the required
 * share. Which of equal pieces or equal loads comes first does not change the slowest. */
static int by_cost_desc(const void *a, const void *b) {
    const int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x > y ? -1 : x < y;
}

static int64_t reference_makespan(const flp_decode_schedule_input *in, int64_t chunk,
                                  int64_t *pieces, int64_t *load) {
    int32_t n = 0;
    for (int32_t b = 0; b < in->batch_size; b++) {
        const int64_t len = in->kv_end[b] - in->kv_begin[b];
        for (int32_t g = 0; g < in->num_kv_heads; g++) {
            if (len <= chunk) {
                pieces[n++] = len + FLP_DECODE_ITEM_OVERHEAD;
                continue;
            }
            for (int64_t at = 0; at < len; at += chunk)
                pieces[n++] = (len - at < chunk ? len - at : chunk) + FLP_DECODE_ITEM_OVERHEAD +
                              FLP_DECODE_SPLIT_OVERHEAD;
        }
    }
    qsort(pieces, (size_t)n, sizeof *pieces, by_cost_desc);
    for (int32_t c = 0; c < in->num_ctas; c++)
        load[c] = 0;
    int64_t slowest = 0;
    for (int32_t i = 0; i < n; i++) {
        int32_t least = 0;
        for (int32_t c = 1; c < in->num_ctas; c++)
            if (load[c] < load[least])
                least = c;
        load[least] += pieces[i];
        slowest = load[least] > slowest ? load[least] : slowest;
    }
    return slowest;
}

static int32_t reference_chunk(const flp_decode_schedule_input *in) {
    int64_t total = 0, longest = 0, max_pieces = 0;
    for (int32_t b = 0; b < in->batch_size; b++) {
        const int64_t len = in->kv_end[b] - in->kv_begin[b];
        total += (len + FLP_DECODE_ITEM_OVERHEAD) * in->num_kv_heads;
        longest = len > longest ? len : longest;
    }
    const int64_t fair = (total + in->num_ctas - 1) / in->num_ctas;
    const int64_t smallest =
        (fair + FLP_DECODE_MAX_SPLIT_DIVISOR - 1) / FLP_DECODE_MAX_SPLIT_DIVISOR;
    const int64_t align = in->chunk_align > 0 ? in->chunk_align : 1;
    int64_t chunks[8]; /* fair share / 4, 3, 2, 1, then the longest request / 4, 3, 2, 1 */
    for (int i = 0; i < 8; i++) {
        const int64_t whole = i < 4 ? fair : longest, k = 4 - i % 4;
        int64_t chunk = (whole + k - 1) / k;
        chunk = chunk < smallest ? smallest : chunk;
        chunk = chunk < in->min_chunk ? in->min_chunk : chunk;
        chunks[i] = (chunk + align - 1) / align * align;
        if (chunks[i] < longest)
            max_pieces += total / chunks[i] + (int64_t)in->batch_size * in->num_kv_heads;
    }
    max_pieces += (int64_t)in->batch_size * in->num_kv_heads + 1;
    int64_t *pieces = malloc(sizeof(int64_t) * (size_t)max_pieces);
    int64_t *load = malloc(sizeof(int64_t) * (size_t)in->num_ctas);
    const int64_t unsplit = reference_makespan(in, INT64_MAX, pieces, load);
    const int64_t most = unsplit / 100 * (100 - FLP_DECODE_SPLIT_MIN_GAIN_PERCENT) +
                         unsplit % 100 * (100 - FLP_DECODE_SPLIT_MIN_GAIN_PERCENT) / 100;
    int64_t best = INT32_MAX, best_time = INT64_MAX;
    bool simulated[8] = {false};
    for (int i = 0; i < 8; i++) {
        if (chunks[i] >= longest)
            continue;
        /* not within 1/8 of an earlier candidate that was simulated */
        bool near = false;
        for (int j = 0; j < i; j++)
            near |= simulated[j] &&
                    llabs(chunks[i] - chunks[j]) * FLP_DECODE_NEAR_CANDIDATE <= chunks[j];
        if (near)
            continue;
        simulated[i] = true;
        const int64_t time = reference_makespan(in, chunks[i], pieces, load);
        if (time <= most && (time < best_time || (time == best_time && chunks[i] > best))) {
            best = chunks[i];
            best_time = time;
        }
    }
    free(pieces);
    free(load);
    return (int32_t)best;
}

/* Batches of many shapes (lengths spread, skewed, equal, near equal; windows; 1 to 16 KV
 * heads; grids that share no factor with the heads and grids that do). */
static void test_chunk_choice_matches_reference(void **state) {
    (void)state;
    test_rng rng;
    test_rng_init(&rng, 0xc4c3);
    static const int32_t grids[] = {1, 3, 7, 33, 132, 264, 300, 528};
    for (int iter = 0; iter < 240; iter++) {
        const int32_t batch = test_rng_int(&rng, 1, iter % 8 == 0 ? 256 : 64);
        const int32_t heads = iter % 3 == 0 ? 8 : test_rng_int(&rng, 1, 16);
        const int32_t ctas = grids[iter % 8];
        const int32_t max_len = test_rng_int(&rng, 1, iter % 5 == 0 ? 200000 : 33000);
        int32_t *begin = calloc((size_t)batch, sizeof(int32_t));
        int32_t *end = calloc((size_t)batch, sizeof(int32_t));
        for (int32_t b = 0; b < batch; b++) {
            switch (iter % 4) {
            case 0: /* spread */
                end[b] = test_rng_int(&rng, 0, max_len);
                break;
            case 1: /* a few long among many short */
                end[b] = test_rng_int(&rng, 0, 15) == 0 ? test_rng_int(&rng, max_len / 2, max_len)
                                                        : test_rng_int(&rng, 0, 1024);
                break;
            case 2: /* few distinct lengths */
                end[b] = test_rng_int(&rng, 0, 4) * (max_len / 4);
                break;
            default: /* near equal */
                end[b] = max_len > 16 ? max_len - test_rng_int(&rng, 0, 16) : max_len;
                break;
            }
            begin[b] = test_rng_int(&rng, 0, 5) == 0 ? test_rng_int(&rng, 0, end[b]) : 0;
        }
        const int32_t min_chunk = iter % 7 == 0 ? test_rng_int(&rng, 1, 512) : FLP_DECODE_MIN_CHUNK;
        const int32_t align = iter % 5 == 0 ? test_rng_int(&rng, 1, 64) : 16;
        const flp_decode_schedule_input in = {batch, heads, ctas, begin, end, min_chunk, align};
        void *scratch = malloc(flp_decode_chunk_scratch_bytes(batch, ctas));
        assert_int_equal(flp_decode_choose_chunk(&in, scratch), reference_chunk(&in));
        free(scratch);
        free(begin);
        free(end);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_random_batches),
        cmocka_unit_test(test_no_split_for_uniform_batch),
        cmocka_unit_test(test_skewed_batches_are_balanced),
        cmocka_unit_test(test_long_request_is_split),
        cmocka_unit_test(test_deterministic),
        cmocka_unit_test(test_empty_requests_get_an_item),
        cmocka_unit_test(test_assignment_matches_reference),
        cmocka_unit_test(test_schedule_matches_reference),
        cmocka_unit_test(test_chunk_choice_matches_reference),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
