/* The decode chunk size (docs/design.md 5.5): the split of long requests into KV chunks that
 * gives the shortest slowest workgroup, found by simulating the longest-first assignment of each
 * candidate; and that assignment for the chosen split. Pure host code, deterministic. */
#include "core/decode_chunk.h"
#include "core/assign.h"

#include <limits.h>
#include <stdbool.h>

/* The candidate chunks besides no split: the fair share of the grid divided by these (many
 * pieces for a batch too short to fill the grid), and the longest request divided by these
 * (even rounds of pieces for a batch of a little more than one item per workgroup). No
 * candidate is below the fair share over FLP_DECODE_MAX_SPLIT_DIVISOR, which bounds the item
 * count. Smallest chunk first: it is the best of the batches measured more often than not, and
 * a good time found early ends the other candidates' simulations early (64 requests of mixed
 * lengths: 4500 -> 3700 cycles of simulation). Among equal times the larger chunk wins whatever
 * the order; the order does decide which of two near candidates is simulated
 * (FLP_DECODE_NEAR_CANDIDATE): the earlier. */
static const int32_t SPLIT_DIVISORS[] = {FLP_DECODE_MAX_SPLIT_DIVISOR, 3, 2, 1};

/* ---- entries: a cost and a request in one word ---------------------------------------------
 *
 * cost (< 2^31) in the high half, 0x7fffffff - request in the low: entries in decreasing order
 * are by decreasing cost, ties by increasing request, the order of the assignment (5.7). */

#define COST_SHIFT 32

static int64_t entry_of(int64_t cost, int32_t request) {
    return (int64_t)((uint64_t)cost << COST_SHIFT) | (int64_t)(0x7fffffff - request);
}

static int64_t cost_of(int64_t entry) {
    return entry >> COST_SHIFT;
}

/* The same entry with cost + delta. */
static int64_t add_cost(int64_t entry, int64_t delta) {
    return (int64_t)((uint64_t)entry + ((uint64_t)delta << COST_SHIFT));
}

/* The keys given a piece in a round of the simulation (few, or nearly sorted after water filling)
 * are sorted by insertion up to this many. */
#define LOW_INSERTION_SORT_MAX 96

/* Ascending runs merged by a scan of their heads: up to this many. */
#define SORT_MERGE_MAX_RUNS 8

/* The starts of the non-decreasing runs of a[0..n) by a >> shift into start (start[runs] = n);
 * the run count, or SORT_MERGE_MAX_RUNS + 1 once there are more. */
static int32_t ascending_runs(const uint64_t *a, int32_t n, int shift, int32_t *start) {
    int32_t runs = 0;
    start[runs++] = 0;
    for (int32_t i = 1; i < n; i++)
        if ((a[i] >> shift) < (a[i - 1] >> shift)) {
            if (runs == SORT_MERGE_MAX_RUNS)
                return SORT_MERGE_MAX_RUNS + 1;
            start[runs++] = i;
        }
    start[runs] = n;
    return runs;
}

/* Merges the runs of a (ascending by >> shift, run r at [start[r], start[r + 1])) into out; of
 * equal keys, the earlier run's first: the merge is stable. */
static void merge_ascending_runs(const uint64_t *a, const int32_t *start, int32_t runs, int shift,
                                 uint64_t *out) {
    int32_t at[SORT_MERGE_MAX_RUNS];
    for (int32_t r = 0; r < runs; r++)
        at[r] = start[r];
    for (int32_t k = 0; k < start[runs]; k++) {
        int32_t best = -1;
        uint64_t least = 0;
        for (int32_t r = 0; r < runs; r++) {
            if (at[r] == start[r + 1])
                continue;
            const uint64_t key = a[at[r]] >> shift;
            if (best < 0 || key < least) {
                best = r;
                least = key;
            }
        }
        out[k] = a[at[best]++];
    }
}

/* Sorts a[0..n) by increasing a >> shift, ties in the order they come in (stable); tmp: n
 * words. By insertion up to insertion_max words (few out of place: the cheapest); a few
 * ascending runs (a batch of a few lengths, each repeated: the usual serving batch) merged by a
 * scan; else a radix sort over the digits in which the keys differ. */
static void sort_ascending(uint64_t *a, uint64_t *tmp, int32_t n, int shift,
                           int32_t insertion_max) {
    int32_t start[SORT_MERGE_MAX_RUNS + 1];
    const int32_t runs = n > insertion_max ? ascending_runs(a, n, shift, start) : 0;
    if (runs == 1)
        return;
    if (runs >= 2 && runs <= SORT_MERGE_MAX_RUNS) {
        merge_ascending_runs(a, start, runs, shift, tmp);
        for (int32_t i = 0; i < n; i++)
            a[i] = tmp[i];
        return;
    }
    if (n <= insertion_max) {
        for (int32_t i = 1; i < n; i++) {
            const uint64_t v = a[i];
            int32_t j = i;
            for (; j > 0 && (a[j - 1] >> shift) > (v >> shift); j--)
                a[j] = a[j - 1];
            a[j] = v;
        }
        return;
    }
    uint64_t lo = UINT64_MAX, hi = 0;
    for (int32_t i = 0; i < n; i++) {
        const uint64_t k = a[i] >> shift;
        lo = k < lo ? k : lo;
        hi = k > hi ? k : hi;
    }
    const uint64_t range = hi - lo, digit_mask = (1u << FLP_SORT_RADIX_BITS) - 1;
    uint64_t *from = a, *to = tmp;
    for (int s = 0; s < 64 && (range >> s) != 0; s += FLP_SORT_RADIX_BITS) {
        const uint64_t top = (range >> s) < digit_mask ? range >> s : digit_mask;
        int32_t start[1u << FLP_SORT_RADIX_BITS];
        for (uint64_t d = 0; d <= top; d++)
            start[d] = 0;
        for (int32_t i = 0; i < n; i++)
            start[((from[i] >> shift) - lo) >> s & digit_mask]++;
        flp_radix_digit_starts(start, top);
        for (int32_t i = 0; i < n; i++)
            to[start[((from[i] >> shift) - lo) >> s & digit_mask]++] = from[i];
        uint64_t *t = from;
        from = to;
        to = t;
    }
    if (from != a)
        for (int32_t i = 0; i < n; i++)
            a[i] = from[i];
}

/* Merges the decreasing a[0..na) and b[0..nb) (no entry in both) into out, decreasing. */
static void merge_decreasing(const int64_t *a, int32_t na, const int64_t *b, int32_t nb,
                             int64_t *out) {
    int32_t i = 0, j = 0, k = 0;
    while (i < na && j < nb) {
        const int64_t x = a[i], y = b[j];
        const bool take_a = x > y;
        out[k++] = take_a ? x : y;
        i += take_a;
        j += !take_a;
    }
    while (i < na)
        out[k++] = a[i++];
    while (j < nb)
        out[k++] = b[j++];
}

/* Runs merged in one pass, the largest head found by a scan: up to this many. */
#define SCAN_MERGE_MAX_RUNS 8

/* Merges the num_runs (at most SCAN_MERGE_MAX_RUNS) decreasing runs of a, run r at [start[r],
 * start[r + 1]) (no entry in two), into out, decreasing. */
static void merge_runs_by_scan(const int64_t *a, const int32_t *start, int32_t num_runs,
                               int64_t *out) {
    int32_t at[SCAN_MERGE_MAX_RUNS], end[SCAN_MERGE_MAX_RUNS];
    int64_t head[SCAN_MERGE_MAX_RUNS];
    for (int32_t r = 0; r < num_runs; r++) {
        at[r] = start[r];
        end[r] = start[r + 1];
        head[r] = at[r] < end[r] ? a[at[r]] : INT64_MIN;
    }
    const int32_t total = start[num_runs] - start[0];
    for (int32_t k = 0; k < total; k++) {
        int32_t best = 0;
        int64_t largest = head[0];
        for (int32_t r = 1; r < num_runs; r++) {
            const bool larger = head[r] > largest;
            largest = larger ? head[r] : largest;
            best = larger ? r : best;
        }
        out[k] = largest;
        const int32_t next = ++at[best];
        head[best] = next < end[best] ? a[next] : INT64_MIN;
    }
}

/* a[0..n) holds num_runs decreasing runs, run r at [start[r], start[r + 1]): merges them pairwise
 * (start rewritten) and returns the array, a or tmp, that holds them merged, decreasing. */
static int64_t *merge_runs(int64_t *a, int64_t *tmp, int32_t *start, int32_t num_runs) {
    while (num_runs > 1) {
        int32_t merged = 0;
        for (int32_t r = 0; r < num_runs; r += 2) {
            const int32_t lo = start[r], mid = start[r + 1];
            const int32_t hi = r + 1 < num_runs ? start[r + 2] : mid;
            merge_decreasing(a + lo, mid - lo, a + mid, hi - mid, tmp + lo);
            start[merged++] = lo;
        }
        start[merged] = start[num_runs];
        num_runs = merged;
        int64_t *t = a;
        a = tmp;
        tmp = t;
    }
    return a;
}

/* ---- the longest-first simulation -----------------------------------------------------------
 *
 * Pieces go, longest first, each to the least loaded of num_groups groups of workgroups (ties:
 * the lowest index). A group is group_size workgroups that always carry equal loads: a piece is
 * group_size items of one cost, which the least loaded group's workgroups take in turn (each
 * lifts its workgroup above the group's others, and ties go to the lowest index), as a
 * request's KV heads do when group_size divides the head count (and the grid).
 *
 * A group's key is its load (less a base) above its index bits: one comparison orders loads and
 * ties. The first pieces (every full chunk, all of one cost, larger than any other) go
 * round-robin; the next ones, to the groups that got one fewer of those, in index order. Then
 * the least keys (kept sorted) take the next pieces in turn, the smallest key the largest piece
 * (a round of longest-first), each as long as it is below every key given so far in that round.
 * After a long round the keys given are sorted and merged back for another; after a short one
 * the rest go one at a time to the least key, the root of a tournament tree, and the last few
 * pieces each to the least key found by a scan. A stretch of many pieces of one cost goes round
 * by round to the groups within one piece of the least loaded (water filling). Where only the
 * slowest workgroup matters (no picks), keys of equal loads may go in any order.
 *
 * Loads stay below 2^(62 - bits) above the base: the least load is at most the mean (the costs
 * sum below 2^60, over more than 2^(bits - 1) groups), and the loads lie within the largest cost
 * (below 2^31) of the least. */

typedef struct groups {
    int32_t count;  /* groups */
    int bits;       /* group index bits of a key: 1 << bits leaves of the tree */
    int order_bits; /* keys are sorted by key >> order_bits: 0, or bits where ties do not matter */
    int64_t *key;   /* [count] sorted */
    int64_t *tmp;   /* [count] */
    int64_t *tree;  /* [2 << bits]: node i the least key below it; group g's at (1 << bits) + g */
} groups;

/* The key of a tree leaf without a group: it never wins. */
#define NO_GROUP INT64_MAX

/* Stretches of at least this many pieces, and of a piece per group, are water-filled: an
 * iteration costs a pass over the groups. */
#define WATER_FILL_MIN_PIECES 8

static bool water_fills(int64_t pieces, int32_t groups) {
    return pieces >= WATER_FILL_MIN_PIECES && pieces >= groups;
}

/* After a round, this few pieces go each to the least key found by a scan, not sorting. */
#define FEW_PIECES 4

static int index_bits(int32_t count) {
    int bits = 0;
    while (((int64_t)1 << bits) < count)
        bits++;
    return bits;
}

static size_t groups_bytes(int32_t count) {
    const size_t n = (size_t)(count > 0 ? count : 0);
    return sizeof(int64_t) * (2 * n + ((size_t)2 << index_bits(count)));
}

static void groups_init(groups *t, int32_t count, void *scratch) {
    int64_t *w = scratch;
    *t = (groups){.count = count,
                  .bits = index_bits(count),
                  .key = w,
                  .tmp = w + count,
                  .tree = w + 2 * (size_t)count};
    t->order_bits = t->bits;
}

/* The tree of the keys a[0..count) (in any order). */
static void tree_from_keys(groups *t, const int64_t *a) {
    const size_t leaves = (size_t)1 << t->bits;
    int64_t *tree = t->tree;
    for (size_t g = (size_t)t->count; g < leaves; g++)
        tree[leaves + g] = NO_GROUP;
    const int64_t group_mask = (int64_t)leaves - 1;
    for (int32_t i = 0; i < t->count; i++)
        tree[leaves + (size_t)(a[i] & group_mask)] = a[i];
    for (size_t i = leaves - 1; i >= 1; i--)
        tree[i] = tree[2 * i + 1] < tree[2 * i] ? tree[2 * i + 1] : tree[2 * i];
}

/* The keys of the tree, sorted, to t->key. */
static void keys_from_tree(groups *t) {
    const size_t leaves = (size_t)1 << t->bits;
    for (int32_t g = 0; g < t->count; g++)
        t->key[g] = t->tree[leaves + (size_t)g];
    sort_ascending((uint64_t *)t->key, (uint64_t *)t->tmp, t->count, t->order_bits,
                   FLP_SORT_INSERTION_MAX);
}

/* count pieces of cost c, each to the least key (the root), its path played again; picks
 * [count] gets the groups unless NULL. Returns the largest key given. */
static int64_t one_at_a_time(groups *t, int64_t c, int64_t count, int32_t *picks) {
    int64_t *tree = t->tree;
    const size_t leaves = (size_t)1 << t->bits;
    const int64_t add = c << t->bits, group_mask = (int64_t)leaves - 1;
    int64_t root = tree[1], largest = INT64_MIN;
    for (int64_t i = 0; i < count; i++) {
        if (picks)
            picks[i] = (int32_t)(root & group_mask);
        int64_t w = root + add;
        largest = w > largest ? w : largest;
        size_t node = leaves + (size_t)(root & group_mask);
        tree[node] = w;
        for (; node > 1; node >>= 1) {
            const int64_t sibling = tree[node ^ 1];
            w = sibling < w ? sibling : w;
            tree[node >> 1] = w;
        }
        root = w;
    }
    return largest;
}

/* a[0..n) sorted (by key >> order_bits); a[0..given) changed: sorts those and merges them back,
 * through tmp. */
static void merge_back(int64_t *a, int32_t given, int32_t n, int64_t *tmp, int order_bits) {
    for (int32_t i = 0; i < given; i++)
        tmp[i] = a[i];
    sort_ascending((uint64_t *)tmp, (uint64_t *)a, given, order_bits, LOW_INSERTION_SORT_MAX);
    int32_t i = 0, k = given, w = 0;
    while (i < given && k < n)
        a[w++] = tmp[i] < a[k] ? tmp[i++] : a[k++];
    while (i < given)
        a[w++] = tmp[i++];
}

/* count pieces of cost c (count >= 1) on the sorted keys a[0..n), as one at a time would give
 * them, in rounds: the low keys (of a load below the least + c) each take one, in order, before
 * any takes a second or any other key takes one; so whole rounds go at once, until another key
 * comes within c of the least or fewer pieces than low keys remain (those go to the first low
 * keys). picks [count] gets the groups unless NULL. Returns the largest key given. */
static int64_t water_fill(groups *t, int64_t c, int64_t count, int32_t *picks) {
    int64_t *a = t->key, largest = INT64_MIN;
    const int32_t n = t->count;
    const int bits = t->bits;
    const int64_t group_mask = ((int64_t)1 << bits) - 1;
    while (count > 0) {
        const int64_t least = a[0] >> bits;
        int32_t num_low = 1;
        while (num_low < n && (a[num_low] >> bits) - least < c)
            num_low++;
        if (count < num_low) {
            /* the first count low keys take one, and go after the other low keys */
            for (int32_t k = 0; k < count; k++) {
                if (picks)
                    *picks++ = (int32_t)(a[k] & group_mask);
                t->tmp[k] = a[k] + (c << bits);
            }
            largest = t->tmp[count - 1] > largest ? t->tmp[count - 1] : largest;
            for (int32_t k = (int32_t)count; k < num_low; k++)
                a[k - count] = a[k];
            for (int32_t k = 0; k < count; k++)
                a[num_low - count + k] = t->tmp[k];
            merge_back(a + num_low - count, (int32_t)count, n - (num_low - (int32_t)count), t->tmp,
                       t->order_bits);
            break;
        }
        /* Round r (from 0) lifts the low keys from below least + (r + 1) c: no other key comes
         * first while its load is at least least + (r + 1) c. */
        int64_t rounds = count / num_low;
        if (num_low < n && ((a[num_low] >> bits) - least) / c < rounds)
            rounds = ((a[num_low] >> bits) - least) / c;
        if (picks)
            for (int64_t r = 0; r < rounds; r++)
                for (int32_t k = 0; k < num_low; k++)
                    *picks++ = (int32_t)(a[k] & group_mask);
        for (int32_t k = 0; k < num_low; k++)
            a[k] += rounds * c << bits;
        largest = a[num_low - 1] > largest ? a[num_low - 1] : largest;
        count -= rounds * num_low;
        merge_back(a, num_low, n, t->tmp, t->order_bits);
    }
    return largest;
}

/* The pieces besides the full chunks, decreasing: entries of two decreasing lists, a and b (b
 * a stretch of c->unsplit, whose entries of one cost end where run_end says). */
typedef struct pieces {
    const int64_t *a, *a_end;
    const int64_t *b, *b_end;
    const int64_t *b_first;   /* run_end[i] for b_first[i] */
    const int32_t *b_run_end; /* the index past the last entry of b_first[i]'s cost */
} pieces;

static int64_t entries_left(const pieces *s) {
    return (s->a_end - s->a) + (s->b_end - s->b);
}

/* The cost of the next entry, or -1 for none. */
static inline int64_t next_cost(const pieces *s) {
    const int64_t x = s->a < s->a_end ? cost_of(*s->a) : -1;
    const int64_t y = s->b < s->b_end ? cost_of(*s->b) : -1;
    return x > y ? x : y;
}

static inline void skip_one(pieces *s) {
    if (s->a < s->a_end && (s->b == s->b_end || cost_of(*s->a) >= cost_of(*s->b)))
        s->a++;
    else
        s->b++;
}

/* Moves past the entries of cost c (the next cost); returns how many. */
static inline int64_t skip_cost(pieces *s, int64_t c) {
    int64_t n = 0;
    for (; s->a < s->a_end && cost_of(*s->a) == c; s->a++)
        n++;
    if (s->b < s->b_end && cost_of(*s->b) == c) {
        const int32_t i = (int32_t)(s->b - s->b_first), end = s->b_run_end[i];
        n += end - i;
        s->b = s->b_first + end;
    }
    return n;
}

/* The pieces of rest, after left pieces of cost c, through the tree; heaviest: the largest key
 * so far. picks gets the groups unless NULL. Returns the largest key, or, as soon as one exceeds
 * bound, one that does. */
static int64_t tree_longest_first(groups *t, pieces *rest, int64_t c, int64_t left, int32_t per,
                                  int64_t heaviest, int64_t bound, int32_t *picks) {
    for (;;) {
        int64_t largest;
        if (water_fills(left, t->count)) {
            keys_from_tree(t);
            largest = water_fill(t, c, left, picks);
            tree_from_keys(t, t->key);
        } else {
            largest = one_at_a_time(t, c, left, picks);
        }
        heaviest = largest > heaviest ? largest : heaviest;
        if (heaviest > bound)
            return heaviest;
        if (picks)
            picks += left;
        c = next_cost(rest);
        if (c < 0)
            return heaviest;
        left = skip_cost(rest, c) * per;
    }
}

/* The pieces of rest (the first entry's first used pieces given already) on the sorted keys;
 * heaviest: the largest key so far. picks gets the groups unless NULL. Returns the largest key,
 * or, as soon as one exceeds bound, one that does. */
static int64_t sorted_longest_first(groups *t, pieces *rest, int64_t used, int32_t per,
                                    int64_t heaviest, int64_t bound, int32_t *picks) {
    int64_t *a = t->key;
    const int32_t n = t->count;
    const int bits = t->bits;
    const int64_t group_mask = ((int64_t)1 << bits) - 1;
    int64_t c = 0, add = 0, left = 0; /* the current stretch: left pieces of cost c */
    int32_t given = 0;                /* keys a[0..given) have taken a piece in this round */
    int64_t least_given = INT64_MAX;
    for (;;) {
        if (left == 0) {
            c = next_cost(rest);
            if (c < 0)
                break;
            add = c << bits;
            left = skip_cost(rest, c) * per - used;
            used = 0;
            if (given == 0 && water_fills(left, n)) {
                const int64_t largest = water_fill(t, c, left, picks);
                heaviest = largest > heaviest ? largest : heaviest;
                if (heaviest > bound)
                    return heaviest;
                if (picks)
                    picks += left;
                left = 0;
                continue;
            }
        }
        if (given < n && a[given] < least_given) {
            const int64_t key = a[given] + add;
            if (picks)
                *picks++ = (int32_t)(a[given] & group_mask);
            a[given++] = key;
            least_given = key < least_given ? key : least_given;
            heaviest = key > heaviest ? key : heaviest;
            if (heaviest > bound)
                return heaviest;
            left--;
            continue;
        }
        /* The round ends. The last few pieces go each to the least key, found by a scan. */
        if (left + entries_left(rest) * per <= FEW_PIECES) {
            for (; left > 0 || (c = next_cost(rest)) >= 0; left--) {
                if (left == 0)
                    left = skip_cost(rest, c) * per;
                int32_t least = 0;
                for (int32_t k = 1; k < n; k++)
                    least = a[k] < a[least] ? k : least;
                if (picks)
                    *picks++ = (int32_t)(a[least] & group_mask);
                a[least] += c << bits;
                heaviest = a[least] > heaviest ? a[least] : heaviest;
            }
            return heaviest;
        }
        /* The rest one at a time through a tree: sorting the keys given and merging them back
         * for another round costs more than a path per piece unless the round was long. */
        if (given <= LOW_INSERTION_SORT_MAX || given < n / 2) {
            tree_from_keys(t, a);
            return tree_longest_first(t, rest, c, left, per, heaviest, bound, picks);
        }
        merge_back(a, given, n, t->tmp, t->order_bits);
        given = 0;
        least_given = INT64_MAX;
    }
    return heaviest;
}

/* The longest-first assignment over t's groups of: full pieces of full_cost (more than any
 * other), then per pieces of the cost of each entry of rest in turn. Returns the largest load,
 * or, as soon as a load exceeds bound, one that does. picks [entries * per] gets the groups of
 * the rest pieces unless NULL (the full pieces go round-robin: piece i to group i % count). */
static int64_t longest_first(groups *t, int64_t full_cost, int64_t full, pieces *rest, int32_t per,
                             int64_t bound, int32_t *picks) {
    const int64_t count = t->count, rounds = full / count, extra = full % count;
    const int64_t level = rounds * full_cost, total = entries_left(rest) * per;
    int64_t heaviest = full == 0 ? 0 : level + (extra > 0 ? full_cost : 0);
    if (total == 0 || heaviest > bound)
        return heaviest;
    /* The groups [extra, count) carry level, the least: they take the next pieces in turn. */
    const int64_t spare = count - extra, first = next_cost(rest);
    heaviest = level + first > heaviest ? level + first : heaviest;
    if (picks)
        for (int64_t p = 0; p < (total < spare ? total : spare); p++)
            picks[p] = (int32_t)(extra + p);
    if (heaviest > bound || total <= spare)
        return heaviest;
    /* The keys, relative to level, sorted: the spare groups' by (cost, index), then the extra
     * groups'. In index order the spare groups' costs decrease: reversed, then (where ties
     * matter) each block of equal costs put back in index order. */
    const int bits = t->bits;
    int64_t *key = t->key;
    t->order_bits = picks ? 0 : bits;
    for (int64_t g = extra; g < count;) {
        const int64_t c = next_cost(rest) << bits;
        int64_t k = 0;
        for (; k < per && g < count; k++, g++)
            key[count - 1 - g] = c | g;
        if (k == per)
            skip_one(rest);
    }
    if (picks)
        for (int64_t start = 0; start < spare;) {
            int64_t end = start + 1;
            while (end < spare && key[end] >> bits == key[start] >> bits)
                end++;
            for (int64_t i = start, j = end - 1; i < j; i++, j--) {
                const int64_t v = key[i];
                key[i] = key[j];
                key[j] = v;
            }
            start = end;
        }
    for (int64_t g = 0; g < extra; g++)
        key[spare + g] = full_cost << bits | g;
    /* bound and the largest key, as keys */
    const int64_t high = (heaviest - level) << bits | (((int64_t)1 << bits) - 1);
    const int64_t key_bound = bound - level >= ((int64_t)1 << (62 - bits))
                                  ? INT64_MAX
                                  : (bound - level) << bits | (((int64_t)1 << bits) - 1);
    const int64_t largest = sorted_longest_first(t, rest, spare % per, per, high, key_bound,
                                                 picks ? picks + spare : NULL);
    return level + (largest >> bits);
}

/* ---- the chunk choice -------------------------------------------------------------------- */

typedef struct chooser {
    const flp_decode_schedule_input *in;
    int32_t per;        /* pieces per request: heads / group_size */
    int64_t *order;     /* [batch] entries (keys, request), decreasing */
    int64_t *unsplit;   /* [batch] the pieces without a split */
    int32_t *run_end;   /* [batch] of unsplit */
    int64_t *rest;      /* [batch] the chosen split's pieces besides the full chunks */
    int64_t *tails;     /* [batch] */
    int64_t *tails_tmp; /* [batch] */
    int32_t *bands;     /* [batch + 1] */
    groups groups;
} chooser;

static size_t batch_of(const flp_decode_schedule_input *in) {
    return (size_t)(in->batch_size > 0 ? in->batch_size : 1);
}

/* Scratch of a chooser over num_groups groups (a multiple of 8 bytes); with num_groups < 0, the
 * offset of its groups. */
static size_t chooser_bytes(size_t batch, int32_t num_groups) {
    return sizeof(int64_t) * 5 * batch + (sizeof(int32_t) * (2 * batch + 1) + 7) / 8 * 8 +
           (num_groups < 0 ? 0 : groups_bytes(num_groups));
}

static void chooser_init(chooser *c, const flp_decode_schedule_input *in, int32_t group_size,
                         void *scratch) {
    const size_t batch = batch_of(in);
    int64_t *w = scratch;
    c->in = in;
    c->per = in->num_kv_heads / group_size;
    c->order = w;
    c->unsplit = w + batch;
    c->rest = w + 2 * batch;
    c->tails = w + 3 * batch;
    c->tails_tmp = w + 4 * batch;
    c->run_end = (int32_t *)(w + 5 * batch);
    c->bands = c->run_end + batch;
    groups_init(&c->groups, in->num_ctas / group_size, (char *)scratch + chooser_bytes(batch, -1));
}

size_t flp_decode_chunk_scratch_bytes(int32_t batch_size, int32_t num_ctas) {
    /* the most groups: group size 1 */
    return chooser_bytes((size_t)(batch_size > 0 ? batch_size : 1), num_ctas);
}

static int32_t key_count(const flp_decode_schedule_input *in, int32_t b) {
    return in->kv_end[b] - in->kv_begin[b];
}

/* The most a time can be and still be FLP_DECODE_SPLIT_MIN_GAIN_PERCENT below base (>= 0),
 * without products that could overflow. */
static int64_t most_that_gains(int64_t base) {
    const int64_t keep = 100 - FLP_DECODE_SPLIT_MIN_GAIN_PERCENT;
    return base / 100 * keep + base % 100 * keep / 100;
}

/* The requests longer than chunk cut into pieces: the full ones, and the tails (the last piece
 * of each, shorter than chunk; none where chunk divides the keys). */
typedef struct cut_result {
    int32_t requests;  /* cut: the first of c->order */
    int32_t num_tails; /* in c->tails, in bands: decreasing between c->bands[i] and [i + 1] */
    int32_t num_bands;
    int64_t full;     /* full chunks per KV head */
    int64_t cost;     /* the pieces' cost per KV head, less that of the requests unsplit */
    int64_t top_tail; /* the largest tail entry (0 for none) */
} cut_result;

/* Cuts the requests longer than chunk, the tails' entries of cost keys +
 * FLP_DECODE_ITEM_OVERHEAD + tail_overhead (as the full chunks'); chunks [batch] gets each cut
 * request's pieces unless NULL. */
static void cut_requests(chooser *c, int64_t chunk, int64_t tail_overhead, int32_t *chunks,
                         cut_result *out) {
    const int32_t batch = c->in->batch_size;
    const int64_t full_cost = chunk + FLP_DECODE_ITEM_OVERHEAD + tail_overhead;
    int64_t fulls = 0, delta = 0, band = INT64_MAX, band_full = 0, top = 0;
    int32_t k = 0, num_tails = 0, num_bands = 0;
    /* Requests of one full-chunk count are consecutive (a band), their tails decreasing: only a
     * new band costs a division. */
    for (; k < batch; k++) {
        const int64_t len = cost_of(c->order[k]);
        if (len <= chunk)
            break;
        if (len < band) {
            band_full = (int64_t)((uint32_t)len / (uint32_t)chunk);
            band = band_full * chunk;
            c->bands[num_bands++] = num_tails;
        }
        const int64_t tail = len - band;
        fulls += band_full;
        delta += band_full * full_cost - (len + FLP_DECODE_ITEM_OVERHEAD);
        if (tail > 0) {
            const int64_t entry =
                add_cost(c->order[k], tail_overhead + FLP_DECODE_ITEM_OVERHEAD - band);
            c->tails[num_tails++] = entry;
            top = entry > top ? entry : top;
            delta += tail + FLP_DECODE_ITEM_OVERHEAD + tail_overhead;
        }
        if (chunks)
            chunks[FLP_DECODE_REST_REQUEST(c->order[k])] = (int32_t)(band_full + (tail > 0));
    }
    c->bands[num_bands] = num_tails;
    *out = (cut_result){.requests = k,
                        .num_tails = num_tails,
                        .num_bands = num_bands,
                        .full = fulls,
                        .cost = delta,
                        .top_tail = top};
}

/* The tails, decreasing (in c->tails or c->tails_tmp). */
static const int64_t *sorted_tails(chooser *c, const cut_result *cut, bool ties_matter) {
    if (cut->num_bands > 2 && cut->num_bands <= SCAN_MERGE_MAX_RUNS) {
        merge_runs_by_scan(c->tails, c->bands, cut->num_bands, c->tails_tmp);
        return c->tails_tmp;
    }
    /* many bands: sorted by cost (a radix sort), unless ties between tails matter */
    if (!ties_matter && cut->num_bands > 2 && cut->num_tails > FLP_SORT_INSERTION_MAX) {
        uint64_t *tails = (uint64_t *)c->tails;
        for (int32_t i = 0; i < cut->num_tails; i++)
            tails[i] = ~tails[i];
        sort_ascending(tails, (uint64_t *)c->tails_tmp, cut->num_tails, COST_SHIFT,
                       FLP_SORT_INSERTION_MAX);
        for (int32_t i = 0; i < cut->num_tails; i++)
            tails[i] = ~tails[i];
        return c->tails;
    }
    return merge_runs(c->tails, c->tails_tmp, c->bands, cut->num_bands);
}

/* The simulated slowest workgroup of chunk (a time above bound says only that it is above). */
static int64_t candidate_time(chooser *c, int64_t chunk, int64_t unsplit_cost, int64_t bound) {
    const flp_decode_schedule_input *in = c->in;
    const int64_t full_cost = chunk + FLP_DECODE_ITEM_OVERHEAD + FLP_DECODE_SPLIT_OVERHEAD;
    cut_result cut;
    cut_requests(c, chunk, FLP_DECODE_SPLIT_OVERHEAD, NULL, &cut);
    /* The slowest workgroup carries at least the mean load, the full chunks' rounds, and those
     * and the largest other piece. */
    const int64_t total = (unsplit_cost + cut.cost) * in->num_kv_heads;
    const int64_t mean = (total + in->num_ctas - 1) / in->num_ctas;
    if (mean > bound)
        return mean;
    const int64_t full = cut.full * c->per, count = c->groups.count;
    const int64_t level = full / count * full_cost;
    if (level + (full % count > 0 ? full_cost : 0) > bound)
        return level + full_cost;
    const int64_t top_unsplit =
        cut.requests < in->batch_size ? cost_of(c->unsplit[cut.requests]) : 0;
    const int64_t top = cost_of(cut.top_tail) > top_unsplit ? cost_of(cut.top_tail) : top_unsplit;
    if (level + top > bound)
        return level + top;
    const int64_t *tails = sorted_tails(c, &cut, false);
    pieces rest = {tails,
                   tails + cut.num_tails,
                   c->unsplit + cut.requests,
                   c->unsplit + in->batch_size,
                   c->unsplit,
                   c->run_end};
    return longest_first(&c->groups, full_cost, full, &rest, c->per, bound, NULL);
}

/* The chunk (INT32_MAX: no split); the unsplit pieces in c->unsplit, their groups in
 * unsplit_picks unless NULL. */
static int32_t choose(chooser *c, int32_t *unsplit_picks) {
    const flp_decode_schedule_input *in = c->in;
    const int32_t batch = in->batch_size;
    int64_t unsplit_cost = 0;
    int32_t longest = 0;
    for (int32_t b = 0; b < batch; b++) {
        const int32_t len = key_count(in, b);
        unsplit_cost += (int64_t)len + FLP_DECODE_ITEM_OVERHEAD;
        if (len > longest)
            longest = len;
        /* complemented: sorted increasing is decreasing, ties by request */
        ((uint64_t *)c->order)[b] = ~(uint64_t)entry_of(len, b);
    }
    const int64_t total = unsplit_cost * in->num_kv_heads;
    sort_ascending((uint64_t *)c->order, (uint64_t *)c->tails, batch, COST_SHIFT,
                   FLP_SORT_INSERTION_MAX);
    for (int32_t i = 0; i < batch; i++) {
        c->order[i] = (int64_t) ~(uint64_t)c->order[i];
        c->unsplit[i] = add_cost(c->order[i], FLP_DECODE_ITEM_OVERHEAD);
    }
    for (int32_t i = batch - 1; i >= 0; i--)
        c->run_end[i] = i + 1 < batch && cost_of(c->order[i + 1]) == cost_of(c->order[i])
                            ? c->run_end[i + 1]
                            : i + 1;
    const int64_t align = in->chunk_align > 0 ? in->chunk_align : 1;
    const int64_t fair = (total + in->num_ctas - 1) / in->num_ctas;
    const int64_t smallest =
        (fair + FLP_DECODE_MAX_SPLIT_DIVISOR - 1) / FLP_DECODE_MAX_SPLIT_DIVISOR;
    int32_t best = INT32_MAX;
    pieces unsplit = {NULL, NULL, c->unsplit, c->unsplit + batch, c->unsplit, c->run_end};
    const int64_t unsplit_time =
        longest_first(&c->groups, 0, 0, &unsplit, c->per, INT64_MAX, unsplit_picks);
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
            seen |= (chunk > tried[t] ? chunk - tried[t] : tried[t] - chunk) *
                        FLP_DECODE_NEAR_CANDIDATE <=
                    tried[t];
        if (seen)
            continue;
        tried[num_tried++] = chunk;
        /* A time above the best so far cannot win, and one above most cannot be taken (nor,
         * were it the least, could any other): such candidates are not simulated to the end. */
        const int64_t bound = best_time < most ? best_time : most;
        int64_t time = candidate_time(c, chunk, unsplit_cost, bound);
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

int32_t flp_decode_choose_chunk(const flp_decode_schedule_input *in, void *scratch) {
    chooser c;
    chooser_init(&c, in, (int32_t)flp_gcd(in->num_ctas, in->num_kv_heads), scratch);
    return choose(&c, NULL);
}

/* ---- the assignment of the chosen split ---------------------------------------------------- */

size_t flp_decode_choice_scratch_bytes(const flp_decode_schedule_input *in) {
    const size_t batch = batch_of(in);
    const int32_t group_size = (int32_t)flp_gcd(in->num_ctas, in->num_kv_heads);
    const size_t picks = batch * (size_t)(in->num_kv_heads / group_size);
    /* the chooser, the picks without a split and with one, the chunks */
    return chooser_bytes(batch, in->num_ctas / group_size) +
           (sizeof(int32_t) * (2 * picks + batch) + 7) / 8 * 8;
}

void flp_decode_choose_and_assign(const flp_decode_schedule_input *in, void *scratch,
                                  flp_decode_choice *out) {
    const size_t batch = batch_of(in);
    const int32_t group_size = (int32_t)flp_gcd(in->num_ctas, in->num_kv_heads);
    chooser c;
    chooser_init(&c, in, group_size, scratch);
    const size_t picks = batch * (size_t)c.per;
    int32_t *unsplit_picks = (int32_t *)((char *)scratch + chooser_bytes(batch, c.groups.count));
    int32_t *split_picks = unsplit_picks + picks, *chunks = split_picks + picks;
    const int32_t chunk = choose(&c, unsplit_picks);
    *out = (flp_decode_choice){.chunk = chunk,
                               .group_size = group_size,
                               .num_groups = c.groups.count,
                               .full_pieces = 0,
                               .num_rest = in->batch_size,
                               .rest = c.unsplit,
                               .picks = unsplit_picks,
                               .chunks = chunks};
    for (int32_t b = 0; b < in->batch_size; b++)
        chunks[b] = 1;
    if (chunk == INT32_MAX)
        return;
    /* The assignment's costs: keys + FLP_DECODE_ITEM_OVERHEAD, so a request of chunk keys costs
     * what a full chunk does, and goes with them. */
    cut_result cut;
    cut_requests(&c, chunk, 0, chunks, &cut);
    int32_t first = cut.requests; /* the first request of fewer than chunk keys */
    for (; first < in->batch_size && cost_of(c.order[first]) == chunk; first++)
        cut.full++;
    const int32_t n = cut.num_tails + in->batch_size - first;
    merge_decreasing(sorted_tails(&c, &cut, true), cut.num_tails, c.unsplit + first,
                     in->batch_size - first, c.rest);
    out->full_pieces = cut.full * c.per;
    out->num_rest = n;
    out->rest = c.rest;
    out->picks = split_picks;
    pieces rest = {c.rest, c.rest + n, NULL, NULL, NULL, NULL};
    longest_first(&c.groups, (int64_t)chunk + FLP_DECODE_ITEM_OVERHEAD, out->full_pieces, &rest,
                  c.per, INT64_MAX, split_picks);
}
