/* Validation of tensor views against what a kernel expects. */
#ifndef FLP_CORE_TENSOR_H
#define FLP_CORE_TENSOR_H

#include "core/internal.h"

/* What a kernel expects of one tensor argument. shape entries < 0 match any extent. */
typedef struct flp_tensor_expect {
    const char *name; /* for messages: "q", "k_cache", ... */
    flp_dtype dtype;
    int ndim;
    int64_t shape[FLP_MAX_DIMS];
    bool vector_aligned; /* base and outer strides must allow 16-byte loads */
} flp_tensor_expect;

/* FLP_OK, or FLP_ERROR_INVALID_ARGUMENT with a message naming fn, the tensor and the bad
 * property (NULL buffer, other context, dtype, rank, extent, stride, span past the buffer's
 * end, alignment). */
flp_status flp_tensor_check(flp_context *ctx, const char *fn, const flp_tensor *t,
                            const flp_tensor_expect *expect);

/* Device address of element 0. */
uint64_t flp_tensor_address(const flp_tensor *t);

/* Page, slot and head strides (elements) of a 4-D paged cache view: NHD [pages, page_size,
 * heads, D] or HND [pages, heads, page_size, D]. */
void flp_paged_strides(const flp_tensor *cache, flp_kv_layout layout, int64_t *page, int64_t *slot,
                       int64_t *head);

#endif /* FLP_CORE_TENSOR_H */
