/* Drawing plan batches from a fuzz input, shared by the decode_plan and prefill_plan targets:
 * the small draws both make alike, and the defects of the arguments both planners check alike
 * (core/batch_args.c), each with the outcome docs/design.md documents for it.
 *
 * Every function reads the input in a fixed order: the targets' corpora depend on it (see
 * README.md here before changing one). */
#ifndef FLP_TESTS_FUZZ_PLAN_DRAW_H
#define FLP_TESTS_FUZZ_PLAN_DRAW_H

#include "flashport/flashport.h"
#include "tests/fuzz/fuzz_input.h"

/* The documented outcome of a call: a status and fragments its message must contain. */
typedef struct outcome {
    flp_status status;
    int num_frags;
    char frags[4][128];
} outcome;

/* Adds a fragment the message must contain. */
void mention(outcome *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- draws -------------------------------------------------------------------------------- */

/* A number in [0, n) from one byte, or two when n > 200 (n >= 1). */
int32_t pick(fuzz_input *in, int32_t n);

/* Something negative: -1, a small negative, INT32_MIN. */
int32_t pick_negative(fuzz_input *in);

/* A page size: mostly one of the sizes around powers of two up to 128, else any valid one. */
int32_t pick_page_size(fuzz_input *in);

/* A kv_indices entry: ids up to twice the capacity (ids are not bounded by it), repeats, now and
 * then the largest int32 ids (a run's cache must then have 2^31 pages). */
int32_t pick_page_id(fuzz_input *in, int32_t max_pages);

/* What a target's variants draw differently: the masks (from FLP_MASK_NONE up: 2 leaves out the
 * custom mask, which decode lacks) and the values the option bits turn on. */
typedef struct variant_draw {
    int mask_modes;
    float soft_cap, sm_scale;
} variant_draw;

/* A variant of head_dim: dtypes, mask, window, soft cap, scale, positional encoding, fp8
 * scales. */
void pick_variant(fuzz_input *in, int32_t head_dim, const variant_draw *draw, flp_variant *v);

/* ---- one argument broken, and what the documentation says of it -------------------------- *
 * Each sets the argument, adds the fragments the message must name and, for a capacity, sets
 * o->status to FLP_ERROR_CAPACITY (the caller sets FLP_ERROR_INVALID_ARGUMENT beforehand). */

/* batch_size 0 or negative. */
void break_batch_size(fuzz_input *in, int32_t *batch_size, outcome *o);
/* batch_size (already drawn above the capacity) against max_batch_size. */
void over_batch_size(int32_t batch_size, int32_t max_batch, outcome *o);
/* indptr[0] (indptr names the array) not 0. */
void break_indptr0(fuzz_input *in, const char *indptr_name, int32_t *indptr, outcome *o);
/* indptr[r + 1] below indptr[r]. */
void decrease_indptr(fuzz_input *in, const char *indptr_name, int32_t *indptr, int32_t r,
                     outcome *o);
/* indptr[batch_size] beyond the capacity (named cap_name) it counts. */
void over_indptr_end(fuzz_input *in, const char *indptr_name, int32_t *indptr, int32_t batch_size,
                     const char *cap_name, int32_t cap, outcome *o);
/* An enum argument (kv_layout, kv_storage) that names no value. */
void break_enum(fuzz_input *in, const char *name, int32_t *value, outcome *o);
/* page_size 0, negative or above FLP_MAX_PAGE_SIZE. */
void break_page_size(fuzz_input *in, int32_t *page_size, outcome *o);
/* last[r] outside [1, page_size]. */
void break_last_page_len(fuzz_input *in, int32_t page_size, int32_t *last, int32_t r, outcome *o);
/* One of indices[0, total) negative (total >= 1). */
void break_page_id(fuzz_input *in, int32_t *indices, int32_t total, outcome *o);
/* v->head_dim not the plan's: another supported dim is INVALID_ARGUMENT, other multiples of 16
 * up to 256 UNSUPPORTED (docs/design.md 3 "Head dims"), anything else INVALID_ARGUMENT. */
void break_head_dim(fuzz_input *in, int32_t plan_head_dim, flp_variant *v, outcome *o);
/* A window with a negative window_left. */
void break_window(fuzz_input *in, flp_variant *v, outcome *o);
/* One of the caller's slopes[0, hq) not finite. */
void break_slope(fuzz_input *in, int32_t hq, float *slopes, bool *with_slopes, outcome *o);

#endif /* FLP_TESTS_FUZZ_PLAN_DRAW_H */
