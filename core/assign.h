/* Longest-first assignment of work items to the least loaded workgroup (docs/design.md 5.7). */
#ifndef FLP_CORE_ASSIGN_H
#define FLP_CORE_ASSIGN_H

#include <stddef.h>
#include <stdint.h>

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
