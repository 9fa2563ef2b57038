/* Longest-processing-time-first assignment of work items to workgroups (docs/design.md 5.7),
 * shared by the decode and prefill schedulers. Deterministic: ties break by index. */
#include "core/assign.h"
#include "core/kernel_constants.h"

#include <stdbool.h>
#include <string.h>

/* count pieces of work of one cost: items index .. index + count - 1 (the assignment), or the
 * pieces of request index (the chunk choice). */
typedef struct flp_cost_run {
    int64_t cost;
    int32_t index;
    int32_t count;
} flp_cost_run;

/* Sorts runs[0..n) by decreasing cost, ties in the order they come in (stable). tmp: n
 * records. */
static void flp_sort_by_cost_desc(flp_cost_run *runs, flp_cost_run *tmp, int32_t n);

/* The loads of num_ctas workgroups, all 0 at first, that take pieces of work (longest first, for
 * the callers), each piece to the least loaded workgroup (ties: the lowest index). A tournament
 * tree over groups of workgroups (see flp_least_loaded_init): node i holds the least loaded
 * group below it, so a piece is the root's, and then the root's path is played again. */
typedef struct flp_least_loaded {
    int32_t group_size; /* workgroups that always have equal loads: see _init */
    int32_t num_groups; /* num_ctas / group_size */
    int32_t leaves;     /* a power of two >= num_groups: group g is node leaves + g */
    int64_t heaviest;   /* the largest load */
    int64_t *load;      /* [2 * leaves]: the load of node i's group */
    int32_t *group;     /* [2 * leaves]: node i's group */
} flp_least_loaded;

/* Scratch bytes of a flp_least_loaded over num_ctas (>= 1) workgroups (a multiple of 8). */
static size_t flp_least_loaded_bytes(int32_t num_ctas);

/* All loads 0. group_size divides num_ctas and every count given (see _add_runs), and with
 * group_size > 1 every cost is > 0. Then workgroups [g * group_size, (g + 1) * group_size) keep
 * equal loads: the least loaded such group takes group_size pieces of one cost, in workgroup
 * order, before any other workgroup takes one (a piece lifts its workgroup above the group's
 * others, ties go to the lowest index). So the tree holds groups and takes group_size pieces a
 * step: a request's pieces come one per KV head, which makes the head count's common divisor
 * with num_ctas a group size. scratch: flp_least_loaded_bytes(num_ctas) bytes, 8-byte
 * aligned. */
static void flp_least_loaded_init(flp_least_loaded *t, int32_t num_ctas, int32_t group_size,
                                  void *scratch);

/* Gives count pieces of this cost one at a time, each to the least loaded workgroup (ties: the
 * lowest index), and writes the workgroups chosen to picks [count] unless it is NULL. */
static void flp_least_loaded_add(flp_least_loaded *t, int64_t cost, int64_t count, int32_t *picks);

/* The same for the pieces of runs[0..n) in turn (runs of equal cost next to each other make one
 * count), picks [their total count] unless NULL; stops early, picks partly written, once the
 * heaviest load exceeds stop_above. */
static void flp_least_loaded_add_runs(flp_least_loaded *t, const flp_cost_run *runs, int32_t n,
                                      int64_t stop_above, int32_t *picks);

/* When at least 1 / this of the runs have the largest cost, they are set apart before the sort. */
#define LARGEST_SHARE 4

static void insertion_sort_by_cost_desc(flp_cost_run *runs, int32_t n) {
    for (int32_t i = 1; i < n; i++) {
        const flp_cost_run r = runs[i];
        int32_t j = i;
        for (; j > 0 && runs[j - 1].cost < r.cost; j--)
            runs[j] = runs[j - 1];
        runs[j] = r;
    }
}

/* A stable radix sort by decreasing cost, a digit a pass, over only the digits in which the costs
 * differ and only the digit values that can occur (plans sort thousands of items; qsort was a
 * tenth of a decode plan's host time). */
static void radix_sort_by_cost_desc(flp_cost_run *runs, flp_cost_run *tmp, int32_t n) {
    if (n < 2)
        return;
    int64_t lo = INT64_MAX, hi = INT64_MIN;
    for (int32_t i = 0; i < n; i++) {
        lo = runs[i].cost < lo ? runs[i].cost : lo;
        hi = runs[i].cost > hi ? runs[i].cost : hi;
    }
    const uint64_t range = (uint64_t)hi - (uint64_t)lo,
                   digit_mask = (1u << FLP_SORT_RADIX_BITS) - 1;
    flp_cost_run *from = runs, *to = tmp;
    for (int shift = 0; shift < 64 && (range >> shift) != 0; shift += FLP_SORT_RADIX_BITS) {
        /* key hi - cost, in [0, range]: the largest cost first */
        const uint64_t top = (range >> shift) < digit_mask ? range >> shift : digit_mask;
        int32_t start[1u << FLP_SORT_RADIX_BITS];
        for (uint64_t d = 0; d <= top; d++)
            start[d] = 0;
        for (int32_t i = 0; i < n; i++)
            start[((uint64_t)hi - (uint64_t)from[i].cost) >> shift & digit_mask]++;
        flp_radix_digit_starts(start, top);
        for (int32_t i = 0; i < n; i++)
            to[start[((uint64_t)hi - (uint64_t)from[i].cost) >> shift & digit_mask]++] = from[i];
        flp_cost_run *t = from;
        from = to;
        to = t;
    }
    if (from != runs)
        for (int32_t i = 0; i < n; i++)
            runs[i] = from[i];
}

/* Moves the runs of cost hi to the front, in their order, and the others after them, in theirs;
 * returns how many cost hi. */
static int32_t partition_largest(flp_cost_run *runs, flp_cost_run *tmp, int32_t n, int64_t hi) {
    int32_t largest = 0, others = 0;
    for (int32_t i = 0; i < n; i++) {
        if (runs[i].cost == hi)
            runs[largest++] = runs[i];
        else
            tmp[others++] = runs[i];
    }
    for (int32_t i = 0; i < others; i++)
        runs[largest + i] = tmp[i];
    return largest;
}

static void flp_sort_by_cost_desc(flp_cost_run *runs, flp_cost_run *tmp, int32_t n) {
    if (n <= FLP_SORT_INSERTION_MAX) {
        insertion_sort_by_cost_desc(runs, n);
        return;
    }
    int64_t hi = INT64_MIN;
    int32_t largest = 0;
    for (int32_t i = 0; i < n; i++) {
        largest = runs[i].cost > hi ? 1 : largest + (runs[i].cost == hi);
        hi = runs[i].cost > hi ? runs[i].cost : hi;
    }
    /* A split's full chunks all have the largest cost: sorted with the rest, each would wait for
     * the counter the one before it incremented (a store forwarding each). */
    if (largest >= n / LARGEST_SHARE) {
        largest = partition_largest(runs, tmp, n, hi);
        runs += largest;
        n -= largest;
    }
    radix_sort_by_cost_desc(runs, tmp, n);
}

int64_t flp_gcd(int64_t a, int64_t b) {
    while (b != 0) {
        const int64_t r = a % b;
        a = b;
        b = r;
    }
    return a;
}

/* The load of a tree node without groups (padding leaves and the subtrees of only those): it
 * never wins, as the tree has a group. */
#define NO_GROUP_LOAD INT64_MAX

static int32_t leaf_count(int32_t num_groups) {
    int32_t leaves = 1;
    while (leaves < num_groups)
        leaves *= 2;
    return leaves;
}

static size_t flp_least_loaded_bytes(int32_t num_ctas) {
    /* loads, then groups, of 2 * leaves nodes: a multiple of 8 bytes, as leaves is even or 1 */
    return (sizeof(int64_t) + sizeof(int32_t)) * 2 * (size_t)leaf_count(num_ctas);
}

/* Node i's group from its children's: the right child holds the higher groups, so it wins only
 * when strictly less loaded, and ties keep the lower index. */
static void play_match(flp_least_loaded *t, size_t i) {
    const int64_t left = t->load[2 * i], right = t->load[2 * i + 1];
    const int32_t left_group = t->group[2 * i], right_group = t->group[2 * i + 1];
    const bool right_wins = right < left;
    t->load[i] = right_wins ? right : left;
    t->group[i] = right_wins ? right_group : left_group;
}

static void replay_all(flp_least_loaded *t) {
    for (size_t i = (size_t)t->leaves - 1; i >= 1; i--)
        play_match(t, i);
}

static void flp_least_loaded_init(flp_least_loaded *t, int32_t num_ctas, int32_t group_size,
                                  void *scratch) {
    const int32_t num_groups = num_ctas / group_size, leaves = leaf_count(num_groups);
    int64_t *load = scratch;
    *t = (flp_least_loaded){.group_size = group_size,
                            .num_groups = num_groups,
                            .leaves = leaves,
                            .heaviest = 0,
                            .load = load,
                            .group = (int32_t *)(load + 2 * (size_t)leaves)};
    for (int32_t g = 0; g < leaves; g++) {
        t->load[leaves + g] = g < num_groups ? 0 : NO_GROUP_LOAD;
        t->group[leaves + g] = g;
    }
    replay_all(t);
}

/* The least loaded group: the root of the tree. */
typedef struct least {
    int64_t load;
    int32_t group;
} least;

static least root_of(const flp_least_loaded *t) {
    return (least){t->load[1], t->group[1]};
}

/* Adds cost to the least loaded group and replays its matches up to the root, which it returns.
 * The path's siblings do not change, so their loads can all be read at once and only the
 * comparisons chain: a conditional move for the load, a mask for the group (a branch would be
 * as good as random, and compilers turn two selects on one condition into one). */
static inline least add_to_least(flp_least_loaded *t, least root, int64_t cost) {
    int64_t *load = t->load;
    int32_t *group = t->group;
    int64_t winner_load = root.load + cost;
    int32_t winner = root.group;
    size_t node = (size_t)t->leaves + (size_t)root.group;
    load[node] = winner_load;
    for (; node > 1; node >>= 1) {
        const size_t sibling = node ^ 1;
        const int64_t sibling_load = load[sibling];
        const int32_t sibling_group = group[sibling];
        /* a left sibling (node odd) holds lower groups: it wins ties */
        const bool sibling_wins = sibling_load - (int64_t)(node & 1) < winner_load;
        winner ^= (winner ^ sibling_group) & -(int32_t)sibling_wins;
        winner_load = sibling_wins ? sibling_load : winner_load;
        load[node >> 1] = winner_load;
        group[node >> 1] = winner;
    }
    return (least){winner_load, winner};
}

/* Gives count pieces of cost one at a time, each to the least loaded group (the root kept in
 * registers from one to the next). */
static void add_one_at_a_time(flp_least_loaded *t, int64_t cost, int64_t count, int32_t *picks) {
    least root = root_of(t);
    int64_t heaviest = t->heaviest;
    for (int64_t i = 0; i < count; i++) {
        if (picks)
            picks[i] = root.group;
        heaviest = root.load + cost > heaviest ? root.load + cost : heaviest;
        root = add_to_least(t, root, cost);
    }
    t->heaviest = heaviest;
}

/* Equal loads and cost > 0: the pieces go round-robin from group 0, which is what one at a time
 * gives (each piece lifts its group above all that have none yet, ties go to the lowest
 * index). */
static void add_to_equal_loads(flp_least_loaded *t, int64_t cost, int64_t count, int32_t *picks) {
    const int64_t groups = t->num_groups, rounds = count / groups, rest = count % groups;
    for (int64_t g = 0; g < groups; g++)
        t->load[t->leaves + g] += (rounds + (g < rest)) * cost;
    t->heaviest += (rounds + (rest > 0)) * cost;
    replay_all(t);
    if (picks)
        for (int64_t i = 0; i < count; i++)
            picks[i] = (int32_t)(i % groups);
}

/* Loads within less than cost of each other: each piece lifts its group above all others, so
 * every round of num_groups pieces gives each group one, in the order of the first round (the
 * order of (load, index), which adding cost to all keeps). The first round goes one at a time,
 * the other whole rounds at once; returns the pieces given. */
static int64_t add_whole_rounds(flp_least_loaded *t, int64_t cost, int64_t count, int32_t *picks) {
    const int64_t groups = t->num_groups, rounds = count / groups - 1;
    add_one_at_a_time(t, cost, groups, picks);
    for (int64_t g = 0; g < groups; g++)
        t->load[t->leaves + g] += rounds * cost;
    t->heaviest += rounds * cost;
    replay_all(t);
    if (picks)
        for (int64_t i = groups; i < groups + rounds * groups; i++)
            picks[i] = picks[i - groups];
    return groups + rounds * groups;
}

/* picks [count * group_size] holds count groups at the front: each becomes its group_size
 * workgroups in order, from the back so that no group is overwritten before it is read. */
static void groups_to_workgroups(int32_t *picks, int64_t count, int32_t group_size) {
    for (int64_t i = count - 1; i >= 0; i--) {
        const int32_t first = picks[i] * group_size;
        int32_t *to = picks + i * group_size;
        for (int32_t k = group_size - 1; k >= 0; k--)
            to[k] = first + k;
    }
}

/* count / group_size, without a division for the most common count: a division costs as much as
 * a piece through a small tree. */
static int64_t pieces_of(const flp_least_loaded *t, int64_t count) {
    return count == t->group_size ? 1 : count / t->group_size;
}

static void flp_least_loaded_add(flp_least_loaded *t, int64_t cost, int64_t count, int32_t *picks) {
    const int64_t pieces = pieces_of(t, count), spread = t->heaviest - t->load[1];
    int64_t done = 0;
    /* many pieces of one cost go in whole rounds where they can */
    if (pieces > 0 && spread == 0 && cost > 0) {
        add_to_equal_loads(t, cost, pieces, picks);
        done = pieces;
    } else if (pieces >= 2 * (int64_t)t->num_groups && spread < cost) {
        done = add_whole_rounds(t, cost, pieces, picks);
    }
    add_one_at_a_time(t, cost, pieces - done, picks ? picks + done : NULL);
    if (picks && t->group_size > 1)
        groups_to_workgroups(picks, pieces, t->group_size);
}

/* The piece count of runs[*r] and the runs after it of the same cost; moves *r past them. */
static int64_t equal_cost_count(const flp_cost_run *runs, int32_t n, int32_t *r) {
    const int64_t cost = runs[*r].cost;
    int64_t count = 0;
    for (; *r < n && runs[*r].cost == cost; ++*r)
        count += runs[*r].count;
    return count;
}

static void flp_least_loaded_add_runs(flp_least_loaded *t, const flp_cost_run *runs, int32_t n,
                                      int64_t stop_above, int32_t *picks) {
    for (int32_t r = 0; r < n && t->heaviest <= stop_above;) {
        const int64_t cost = runs[r].cost, count = equal_cost_count(runs, n, &r);
        flp_least_loaded_add(t, cost, count, picks);
        if (picks)
            picks += count;
    }
}

/* Consecutive items of equal cost (a request's KV heads) as runs: the sort and the assignment
 * then go a run, not an item, at a time. Returns the run count. */
static int32_t runs_of_equal_cost(const int64_t *cost, int32_t n, flp_cost_run *runs) {
    int32_t num_runs = 0;
    for (int32_t i = 0; i < n;) {
        int32_t end = i + 1;
        while (end < n && cost[end] == cost[i])
            end++;
        runs[num_runs++] = (flp_cost_run){cost[i], i, end - i};
        i = end;
    }
    return num_runs;
}

/* The group size for flp_least_loaded_init: a divisor of num_ctas and of the item count of every
 * cost (runs sorted), and 1 when a cost is not positive. Decode items come one per KV head, so they
 * go in groups of (a divisor of) the head count. */
static int32_t group_size_of(const flp_cost_run *runs, int32_t num_runs, int32_t num_ctas) {
    if (num_runs == 0 || runs[num_runs - 1].cost <= 0)
        return 1;
    int64_t group_size = num_ctas;
    for (int32_t r = 0; r < num_runs && group_size > 1;)
        group_size = flp_gcd(group_size, equal_cost_count(runs, num_runs, &r));
    return (int32_t)group_size;
}

/* picks[i]: the workgroup of the i-th item in longest-first order. */
static void pick_workgroups(const flp_cost_run *runs, int32_t num_runs, int32_t num_ctas,
                            void *loads_scratch, int32_t *picks) {
    flp_least_loaded loads;
    flp_least_loaded_init(&loads, num_ctas, group_size_of(runs, num_runs, num_ctas), loads_scratch);
    flp_least_loaded_add_runs(&loads, runs, num_runs, INT64_MAX, picks);
}

/* Copies the items in longest-first order (runs[0..num_runs), the i-th to workgroup picks[i]) to
 * their workgroups' lists. Inlined for the decode and prefill item sizes: a copy of known size
 * is a few moves, a loop of unknown length per item took twice as long (and a call to the C
 * library's memmove per prefill item, a quarter of a 64-request prefill plan). */
static inline void gather_items(const int32_t *items, int item_ints, const flp_cost_run *runs,
                                int32_t num_runs, const int32_t *picks, int32_t *fill,
                                int32_t *work_items) {
    for (int32_t r = 0; r < num_runs; r++) {
        for (int32_t src = runs[r].index; src < runs[r].index + runs[r].count; src++) {
            const int32_t dst = fill[*picks++]++;
            memcpy(work_items + (size_t)item_ints * (size_t)dst,
                   items + (size_t)item_ints * (size_t)src, sizeof(int32_t) * (size_t)item_ints);
        }
    }
}

static void assign(const int32_t *items, int item_ints, const int64_t *cost, int32_t n,
                   int32_t num_ctas, flp_cost_run *runs, flp_cost_run *sort_tmp,
                   void *loads_scratch, int32_t *picks, int32_t *fill, int32_t *work_indptr,
                   int32_t *work_items) {
    const int32_t num_runs = runs_of_equal_cost(cost, n, runs);
    flp_sort_by_cost_desc(runs, sort_tmp, num_runs);
    pick_workgroups(runs, num_runs, num_ctas, loads_scratch, picks);

    /* Per-workgroup lists, each in longest-first order. */
    for (int32_t c = 0; c <= num_ctas; c++)
        work_indptr[c] = 0;
    for (int32_t i = 0; i < n; i++)
        work_indptr[picks[i] + 1]++;
    for (int32_t c = 0; c < num_ctas; c++)
        work_indptr[c + 1] += work_indptr[c];
    for (int32_t c = 0; c < num_ctas; c++)
        fill[c] = work_indptr[c];
    if (item_ints == FLP_WORK_ITEM_INTS)
        gather_items(items, FLP_WORK_ITEM_INTS, runs, num_runs, picks, fill, work_items);
    else if (item_ints == FLP_PREFILL_ITEM_INTS)
        gather_items(items, FLP_PREFILL_ITEM_INTS, runs, num_runs, picks, fill, work_items);
    else
        gather_items(items, item_ints, runs, num_runs, picks, fill, work_items);
}

size_t flp_assign_scratch_bytes(int32_t n, int32_t num_ctas) {
    size_t count = n > 0 ? (size_t)n : 1, ctas = (size_t)num_ctas;
    /* the 8-byte-aligned parts first (the runs, the sort's second copy, the loads), then the
     * int32 arrays */
    size_t bytes = 2 * sizeof(flp_cost_run) * count + flp_least_loaded_bytes(num_ctas);
    bytes += sizeof(int32_t) * (count + ctas);
    return (bytes + 7) / 8 * 8;
}

void flp_assign_longest_first(const int32_t *items, int item_ints, const int64_t *cost, int32_t n,
                              int32_t num_ctas, int32_t *work_indptr, int32_t *work_items,
                              void *scratch) {
    size_t count = n > 0 ? (size_t)n : 1;
    flp_cost_run *runs = scratch;
    flp_cost_run *sort_tmp = runs + count;
    char *loads_scratch = (char *)(sort_tmp + count);
    int32_t *picks = (int32_t *)(loads_scratch + flp_least_loaded_bytes(num_ctas));
    int32_t *fill = picks + count;
    assign(items, item_ints, cost, n, num_ctas, runs, sort_tmp, loads_scratch, picks, fill,
           work_indptr, work_items);
}
