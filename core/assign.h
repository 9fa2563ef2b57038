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

/* One radix pass of those sorts: turns the counts of digits 0..top in start[] into each digit's
 * first output index. The running sum stays in a register (a chain through memory would cost a
 * store forwarding per digit). */
static inline void flp_radix_digit_starts(int32_t *start, uint64_t top) {
    int32_t sum = 0;
    for (uint64_t d = 0; d <= top; d++) {
        const int32_t count = start[d];
        start[d] = sum;
        sum += count;
    }
}

/* The greatest common divisor of a and b (>= 0, not both 0). */
int64_t flp_gcd(int64_t a, int64_t b);

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
