/* Longest-first assignment of work items to the least loaded workgroup (DESIGN.md section 4). */
#ifndef FLP_CORE_ASSIGN_H
#define FLP_CORE_ASSIGN_H

#include <stdbool.h>
#include <stdint.h>

/* items [n * item_ints] in natural order, cost [n]. Writes work_indptr [num_ctas + 1] and
 * work_items [n * item_ints]: workgroup c's items, longest first, at [work_indptr[c],
 * work_indptr[c + 1]). Each item goes to the least loaded workgroup (ties: lowest index) in
 * decreasing cost order (ties: lowest item index). False only when a host allocation fails. */
bool flp_assign_longest_first(const int32_t *items, int item_ints, const int64_t *cost, int32_t n,
                              int32_t num_ctas, int32_t *work_indptr, int32_t *work_items);

#endif /* FLP_CORE_ASSIGN_H */
