/* Validation of the host arrays that describe a batch (docs/design.md, "Batches"): indptr
 * arrays, the paged-KV page table and caller ALiBi slopes. One validator for every plan call,
 * so decode and prefill accept exactly the same page tables and name errors the same way. */
#ifndef FLP_CORE_BATCH_ARGS_H
#define FLP_CORE_BATCH_ARGS_H

#include "core/internal.h"

/* Longest request the kernels address: keys, positions and packed-row arithmetic stay within
 * int32 with room for the GQA group. */
#define FLP_MAX_KV_LEN (1 << 30)
/* Query rows of one prefill batch at most (the plan capacity max_qo_rows). */
#define FLP_MAX_QO_ROWS (1 << 26)

/* 1 <= batch_size <= max_batch_size (the plan's capacity: FLP_ERROR_CAPACITY beyond it). */
flp_status flp_check_batch_size(flp_context *ctx, const char *fn, int32_t batch_size,
                                int32_t max_batch_size);

/* indptr[batch + 1]: starts at 0, never decreases, ends at most at limit (limit < 0: no limit;
 * exceeding it is FLP_ERROR_CAPACITY naming limit_name). name is the argument's name in
 * messages. */
flp_status flp_check_indptr(flp_context *ctx, const char *fn, const char *name,
                            const int32_t *indptr, int32_t batch, int64_t limit,
                            const char *limit_name);

/* The same where any_start lets indptr[0] be any value >= 0 (the tail of a caller's batch,
 * indexing its arrays in place). */
flp_status flp_check_indptr_from(flp_context *ctx, const char *fn, const char *name,
                                 const int32_t *indptr, int32_t batch, int64_t limit,
                                 const char *limit_name, bool any_start);

/* A paged KV cache as a plan call receives it (docs/design.md, "Paged KV"). */
typedef struct flp_paged_kv_args {
    int32_t batch_size;
    int32_t page_size;               /* 1..FLP_MAX_PAGE_SIZE */
    flp_kv_layout layout;            /* NHD or HND */
    const int32_t *kv_indptr;        /* [batch_size + 1] pages of each request */
    const int32_t *kv_indices;       /* [kv_indptr[batch_size]] page ids, >= 0; NULL: at run */
    const int32_t *kv_last_page_len; /* [batch_size] 1..page_size for requests with pages */
    int32_t max_pages;               /* the plan's capacity of kv_indices */
    /* kv_indptr may start above 0: the tail of a larger batch, whose kv_indices (from entry 0)
     * it indexes in place */
    bool tail;
} flp_paged_kv_args;

/* Checks a paged KV (every field, with messages naming the argument, request or entry) and
 * writes each request's keys into kv_len[batch_size] and the largest page id referenced (-1:
 * none, or kv_indices NULL: the runs bring the ids) into *max_page_id. */
flp_status flp_check_paged_kv(flp_context *ctx, const char *fn, const flp_paged_kv_args *kv,
                              int32_t *kv_len, int32_t *max_page_id);

/* A run's kv_indices argument against its plan: NULL when the plan holds the page ids
 * (plan_has_pages); otherwise a 1-D contiguous I32 tensor of at least total_pages entries
 * (NULL allowed only when there is no page to look up). */
flp_status flp_check_run_kv_indices(flp_context *ctx, const char *fn, bool plan_has_pages,
                                    int32_t total_pages, const flp_tensor *kv_indices);

/* slopes[num_heads] are finite (NULL: standard slopes, nothing to check). */
flp_status flp_check_alibi_slopes(flp_context *ctx, const char *fn, const float *slopes,
                                  int32_t num_heads);

#endif /* FLP_CORE_BATCH_ARGS_H */
