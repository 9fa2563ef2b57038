/* Planning and launching a prefill partition of a plan (flp_prefill_region): the caller's
 * prefill partition, and the one that holds a decode batch when decode runs on the matrix
 * kernel (docs/design.md 5.5). */
#ifndef FLP_CORE_PREFILL_REGION_H
#define FLP_CORE_PREFILL_REGION_H

#include "core/plan.h"

/* A batch whose arguments have been validated for a region. */
typedef struct flp_prefill_batch {
    const flp_prefill_plan_args *args;
    flp_variant variant;            /* resolved */
    const int32_t *qo_len, *kv_len; /* [batch_size] */
    int32_t max_page_id;            /* paged: largest page id referenced, -1 when none */
    int64_t mask_bytes;             /* custom mask: bytes the mask tensor must hold */
    /* the variant's snippets (NULL: none); flp_prefill_region_plan takes it over on success */
    flp_variant_program *program;
} flp_prefill_batch;

/* Host scratch bytes flp_prefill_region_plan needs for a batch of batch_size (8-byte
 * multiple). */
size_t flp_prefill_region_scratch_bytes(const flp_plan *plan, const flp_prefill_region *r,
                                        int32_t batch_size);

/* Fills r's host mirror with the batch and its schedule, uploads it and records the decisions in
 * r->state; fn names the public call in an upload failure's message. scratch: 8-byte aligned,
 * flp_prefill_region_scratch_bytes bytes. On failure r holds no partition. */
flp_status flp_prefill_region_plan(flp_context *ctx, const char *fn, flp_plan *plan,
                                   flp_prefill_region *r, const flp_prefill_batch *batch,
                                   void *scratch);

/* The launch of a run of r's current partition over tensors the caller has checked against
 * r->state (custom_mask may be NULL). */
void flp_prefill_region_launch(const flp_plan *plan, const flp_prefill_region *r,
                               const flp_prefill_run_args *args, const flp_user_param *user,
                               flp_prefill_launch *launch);

/* flp_prefill_run's checks of args against the plan's prefill partition (fn names the call),
 * the user parameters' values bound into user[FLP_SNIPPET_MAX_PARAMS]. */
flp_status flp_prefill_check_run(flp_context *ctx, const char *fn, const flp_plan *plan,
                                 const flp_prefill_run_args *args, flp_user_param *user);

/* What a caller inside the library may ask of a prefill plan beyond flp_prefill_plan. */
typedef struct flp_prefill_plan_options {
    /* a request may have more query rows than keys, for a caller whose variant gives rows no
     * position (mask NONE or a custom mask it built, no window, RoPE or ALiBi): every row sees
     * its request's keys, as the mask allows (cascade levels, block-sparse rows) */
    bool rows_beyond_keys;
    /* the batch is the tail of the caller's: qo_indptr and kv_indptr may start above 0 and index
     * the caller's rows and page ids in place (mixed batches) */
    bool tail;
    /* the caller's runs take the variant's snippets (else a variant with one is refused) */
    bool snippets;
} flp_prefill_plan_options;

/* flp_prefill_plan's checks of a batch (variant, mask_indptr, ALiBi slopes, qo_indptr, the KV,
 * rows against keys and the custom mask's extent), messages naming fn; fills batch with the
 * resolved variant, qo_len [batch_size] and kv_len [batch_size]. */
flp_status flp_prefill_check_batch(flp_context *ctx, const char *fn, const flp_plan *plan,
                                   const flp_prefill_plan_args *args,
                                   const flp_prefill_plan_options *options,
                                   flp_prefill_batch *batch, int32_t *qo_len, int32_t *kv_len);

/* flp_prefill_plan for a caller inside the library that has checked the handles. */
flp_status flp_prefill_plan_internal(flp_context *ctx, flp_plan *plan,
                                     const flp_prefill_plan_args *args,
                                     const flp_prefill_plan_options *options);

#endif /* FLP_CORE_PREFILL_REGION_H */
