/* The prefill work partition (docs/design.md 5.6): query tiles of packed rows per request and
 * KV head, KV ranges clipped to what the causal mask and the window can keep, KV split into
 * chunks when the batch does not fill the device, longest-first assignment. Pure host code,
 * deterministic. */
#ifndef FLP_CORE_PREFILL_SCHEDULE_H
#define FLP_CORE_PREFILL_SCHEDULE_H

#include "core/prefill_params.h"

#include <stdbool.h>
#include <stddef.h>

/* Which keys packed query rows can keep at most: the causal mask and the sliding window bound
 * them (a custom mask is applied per key by the kernels, never by the schedule). */
typedef struct flp_prefill_key_rule {
    int32_t group_size;  /* query heads per KV head: packed row p is query token p / group_size */
    bool causal;         /* keys above each row's position are never kept */
    int32_t window_left; /* < 0: no window; else keys below pos - window_left never kept */
} flp_prefill_key_rule;

/* The keys [*lo, *hi) that packed rows [row_begin, row_end) (row_end > row_begin) of a request
 * with qo_len query tokens and kv_len keys can keep under rule: the scheduler clips every work
 * item with it, and a backend that counts the work of a pass of fewer rows uses it too.
 * *lo >= *hi means none. */
void flp_prefill_key_range(const flp_prefill_key_rule *rule, int32_t qo_len, int32_t kv_len,
                           int32_t row_begin, int32_t row_end, int32_t *lo, int32_t *hi);

typedef struct flp_prefill_schedule_input {
    int32_t batch_size, num_kv_heads;
    int32_t num_ctas;      /* workgroups of the prefill launch */
    const int32_t *qo_len; /* [batch_size] query tokens per request */
    const int32_t *kv_len; /* [batch_size] keys per request, >= qo_len (the matrix decode
                              region also has kv_len = 0 with qo_len rows: rows without keys,
                              items with an empty, possibly negative, key range) */
    flp_prefill_key_rule keys;
    int32_t min_chunk;       /* smallest KV chunk worth a split, tokens */
    int32_t chunk_align;     /* split chunk sizes are multiples of this */
    int32_t max_items;       /* capacity of work_items (flp_prefill_max_items) */
    int32_t max_slots;       /* capacity of partial slots */
    int32_t max_merge_items; /* capacity of merge_items */
    /* Split by the decode scheduler's cost model (docs/design.md 5.5, core/decode_chunk.c) over
     * the tile items instead of the half-grid rule: the matrix decode region's batches, where
     * one long request among many short ones must be split although the items fill the grid. */
    bool split_by_cost;
} flp_prefill_schedule_input;

typedef struct flp_prefill_schedule {
    int32_t q_tile; /* packed rows per item: 16, 64 or 128 */
    int32_t num_items, num_partial_slots, num_merge_items;
    int32_t *work_indptr; /* [num_ctas + 1], caller-owned */
    int32_t *work_items;  /* [max_items * FLP_PREFILL_ITEM_INTS], caller-owned */
    int32_t *merge_items; /* [max_merge_items * FLP_MERGE_ITEM_INTS], caller-owned */
} flp_prefill_schedule;

/* Query tile for a batch: 128 packed rows when requests average more than 64, 64 when more
 * than 16, else 16 (decode-like and speculative batches). */
int32_t flp_prefill_choose_tile(int32_t batch_size, int32_t group_size, const int32_t *qo_len);

/* Capacities for plans of up to max_batch_size requests and max_qo_rows query rows. */
int32_t flp_prefill_max_items(int32_t max_batch_size, int32_t max_qo_rows, int32_t num_kv_heads,
                              int32_t group_size, int32_t num_ctas);
int32_t flp_prefill_max_slots(int32_t num_ctas);
int32_t flp_prefill_max_merge_items(int32_t num_ctas);
/* Merge workgroups launched per merge item of capacity. The merge's units are (item, slice of
 * 4 rows at D = 128), 32 per item: a grid of the capacity alone ran two units per workgroup of
 * 4 warps, one after the other; four times it runs them at once (13.2 -> 11.6 us for a
 * cascade's 16 items of 8 chunks under ncu on an H100). Fixed per plan, so graph-safe. */
#define FLP_PREFILL_MERGE_GRID_PER_ITEM 4

/* Host scratch bytes flp_prefill_schedule_build needs for in (a multiple of 8; it depends on
 * in's capacities and grid only). */
size_t flp_prefill_schedule_scratch_bytes(const flp_prefill_schedule_input *in);

/* Fills out, working in scratch (flp_prefill_schedule_scratch_bytes(in) bytes, 8-byte aligned,
 * from the caller): allocates nothing and cannot fail. */
void flp_prefill_schedule_build(const flp_prefill_schedule_input *in, flp_prefill_schedule *out,
                                void *scratch);

#endif /* FLP_CORE_PREFILL_SCHEDULE_H */
