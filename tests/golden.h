/* Loader for the golden cases under tests/golden/ (an independent float64 implementation's cases;
 * format: tests/golden/README.md). */
#ifndef FLP_TESTS_GOLDEN_H
#define FLP_TESTS_GOLDEN_H

#include "flashport/flashport.h"

typedef struct golden_case {
    char name[64];
    int32_t batch, num_qo_heads, num_kv_heads, head_dim;
    flp_dtype dtype; /* F16 or BF16 */
    bool paged;      /* else ragged */
    bool causal, custom_mask, alibi;
    bool use_window;
    int32_t window_left;
    double logits_soft_cap, sm_scale; /* sm_scale 0 = default */
    bool rope;
    flp_rope_params rope_params;
    int32_t page_size, num_pages;        /* paged */
    flp_kv_layout kv_layout;             /* paged */
    int32_t *qo_lens, *kv_lens;          /* [batch] */
    int32_t *qo_indptr;                  /* [batch + 1] */
    int32_t *kv_indptr;                  /* [batch + 1]: pages (paged) or tokens (ragged) */
    int32_t *kv_indices, num_kv_indices; /* paged */
    int32_t *kv_last_page_len;           /* [batch], paged */
    int32_t *mask_indptr;                /* [batch], custom_mask */
    uint8_t *mask;
    size_t mask_bytes;
    float *q;            /* [nnz, Hq, D] */
    float *k, *v;        /* paged: cache [num_pages, ...layout...]; ragged: [nnz_kv, Hkv, D] */
    size_t kv_elems;     /* elements of k (and of v) */
    float *alibi_slopes; /* [Hq] or NULL */
    double *out;         /* [nnz, Hq, D] */
    double *lse;         /* [nnz, Hq] */
    int32_t nnz;         /* query rows */
} golden_case;

/* Directory of the cases: FLP_GOLDEN_DIR (set by meson) unless the environment overrides. */
const char *golden_dir(void);
/* Names of all cases (from index.json); *count receives how many. Static storage. */
const char *const *golden_case_names(int *count);
/* Loads one case; false with a message on stderr when a file is missing or malformed. */
bool golden_load(const char *name, golden_case *c);
void golden_free(golden_case *c);

#endif /* FLP_TESTS_GOLDEN_H */
