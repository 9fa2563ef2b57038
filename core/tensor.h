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

/* A tensor argument with its name, for the overlap checks. t may be NULL (an absent optional
 * argument: skipped). */
typedef struct flp_named_tensor {
    const char *name;
    const flp_tensor *t;
} flp_named_tensor;

/* Outputs must not share a byte with an input or with each other (a kernel would read what it
 * already overwrote): FLP_OK, or FLP_ERROR_INVALID_ARGUMENT naming both tensors and the bytes
 * they share. Call after flp_tensor_check accepted every view. outputs[num_outputs],
 * inputs[num_inputs]. */
flp_status flp_tensor_check_disjoint(flp_context *ctx, const char *fn,
                                     const flp_named_tensor *outputs, int num_outputs,
                                     const flp_named_tensor *inputs, int num_inputs);

/* An output must not overlap bytes [begin, end) of buffer, which something else owns (what, in
 * the message: "the plan's memory"). */
flp_status flp_tensor_check_outside(flp_context *ctx, const char *fn, const flp_named_tensor *out,
                                    const flp_buffer *buffer, uint64_t begin, uint64_t end,
                                    const char *what);

/* Device address of element 0. */
uint64_t flp_tensor_address(const flp_tensor *t);

/* Page, slot and head strides (elements) of a 4-D paged cache view: NHD [pages, page_size,
 * heads, D] or HND [pages, heads, page_size, D]. */
void flp_paged_strides(const flp_tensor *cache, flp_kv_layout layout, int64_t *page, int64_t *slot,
                       int64_t *head);

#endif /* FLP_CORE_TENSOR_H */
