/* Longest-first assignment of work items to the least loaded workgroup (docs/design.md 5.7). */
#ifndef FLP_CORE_ASSIGN_H
#define FLP_CORE_ASSIGN_H

#include <stddef.h>
#include <stdint.h>

/* The host sorts of the schedulers (core/assign.c, core/decode_chunk.c): arrays this short are
 * sorted by insertion (a radix pass costs its counters whatever the length), longer ones by a
 * stable radix sort of this many bits a digit. */
#define FLP_SORT_INSERTION_MAX 24
#define FLP_SORT_RADIX_BITS 8

/* count pieces of work of one cost: items index .. index + count - 1 (the assignment), or the
 * pieces of request index (the chunk choice). */
typedef struct flp_cost_run {
    int64_t cost;
    int32_t index;
    int32_t count;
} flp_cost_run;

/* Sorts runs[0..n) by decreasing cost, ties in the order they come in (stable). tmp: n
 * records. */
void flp_sort_by_cost_desc(flp_cost_run *runs, flp_cost_run *tmp, int32_t n);

/* The greatest common divisor of a and b (>= 0, not both 0). */
int64_t flp_gcd(int64_t a, int64_t b);

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
size_t flp_least_loaded_bytes(int32_t num_ctas);

/* All loads 0. group_size divides num_ctas and every count given (see _add_runs), and with
 * group_size > 1 every cost is > 0. Then workgroups [g * group_size, (g + 1) * group_size) keep
 * equal loads: the least loaded such group takes group_size pieces of one cost, in workgroup
 * order, before any other workgroup takes one (a piece lifts its workgroup above the group's
 * others, ties go to the lowest index). So the tree holds groups and takes group_size pieces a
 * step: a request's pieces come one per KV head, which makes the head count's common divisor
 * with num_ctas a group size. scratch: flp_least_loaded_bytes(num_ctas) bytes, 8-byte
 * aligned. */
void flp_least_loaded_init(flp_least_loaded *t, int32_t num_ctas, int32_t group_size,
                           void *scratch);

/* Gives count pieces of this cost one at a time, each to the least loaded workgroup (ties: the
 * lowest index), and writes the workgroups chosen to picks [count] unless it is NULL. */
void flp_least_loaded_add(flp_least_loaded *t, int64_t cost, int64_t count, int32_t *picks);

/* The same for the pieces of runs[0..n) in turn (runs of equal cost next to each other make one
 * count), picks [their total count] unless NULL; stops early, picks partly written, once the
 * heaviest load exceeds stop_above. */
void flp_least_loaded_add_runs(flp_least_loaded *t, const flp_cost_run *runs, int32_t n,
                               int64_t stop_above, int32_t *picks);

/* Host scratch bytes flp_assign_longest_first needs for n items over num_ctas workgroups (a
 * multiple of 8). */
size_t flp_assign_scratch_bytes(int32_t n, int32_t num_ctas);

/* items [n * item_ints] in natural order, cost [n]. Writes work_indptr [num_ctas + 1] and
 * work_items [n * item_ints]: workgroup c's items, longest first, at [work_indptr[c],
 * work_indptr[c + 1]). Each item goes to the least loaded workgroup (ties: lowest index) in
 * decreasing cost order (ties: lowest item index). scratch: flp_assign_scratch_bytes(n,
 * num_ctas) bytes, 8-byte aligned, from the caller, so this allocates nothing and cannot fail. */
void flp_assign_longest_first(const int32_t *items, int item_ints, const int64_t *cost, int32_t n,
                              int32_t num_ctas, int32_t *work_indptr, int32_t *work_items,
                              void *scratch);

#endif /* FLP_CORE_ASSIGN_H */
