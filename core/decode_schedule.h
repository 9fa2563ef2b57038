/* The decode work partition (docs/design.md 5.5): split long requests into KV chunks wherever
 * that makes the slowest workgroup finish sooner, then assign the work items longest-first to
 * the least loaded workgroup. Pure host code, deterministic. */
#ifndef FLP_CORE_DECODE_SCHEDULE_H
#define FLP_CORE_DECODE_SCHEDULE_H

#include "core/decode_item.h"
#include "core/decode_params.h"

#include <stdbool.h>
#include <stddef.h>

typedef struct flp_decode_schedule_input {
    int32_t batch_size;
    int32_t num_kv_heads;
    int32_t num_ctas; /* workgroups of the decode launch */
    /* 0 <= kv_begin[b] <= kv_end[b] <= FLP_MAX_KV_LEN (what flp_decode_plan admits) */
    const int32_t *kv_begin; /* [batch_size] first key any row can see (sliding window) */
    const int32_t *kv_end;   /* [batch_size] kv_len */
    int32_t min_chunk;       /* smallest KV chunk worth a work item, tokens */
    int32_t chunk_align;     /* chunk sizes are multiples of this, tokens */
} flp_decode_schedule_input;

typedef struct flp_decode_schedule {
    int32_t num_items;
    int32_t num_partial_slots;
    int32_t chunk_size;   /* tokens per chunk; INT32_MAX when nothing is split */
    int32_t *work_indptr; /* [num_ctas + 1], caller-owned */
    int32_t *work_items;  /* [max_items * FLP_WORK_ITEM_INTS], caller-owned */
    int32_t *merge_info;  /* [batch_size * 2], caller-owned */
} flp_decode_schedule;

/* Most work items any schedule of up to max_batch_size requests can produce; -1 when that
 * many items' words would not fit int32. */
int32_t flp_decode_max_items(int32_t max_batch_size, int32_t num_kv_heads, int32_t num_ctas);

/* Host scratch bytes flp_decode_schedule_build_in needs for in (a multiple of 8); SIZE_MAX when
 * the shape's items would not fit int32 (flp_decode_max_items < 0). */
size_t flp_decode_schedule_scratch_bytes(const flp_decode_schedule_input *in);

/* Fills out's arrays, sorting in scratch (flp_decode_schedule_scratch_bytes(in) bytes, 8-byte
 * aligned, from the caller): allocates nothing and cannot fail. */
void flp_decode_schedule_build_in(const flp_decode_schedule_input *in, flp_decode_schedule *out,
                                  void *scratch);

/* The same with scratch of its own: false, and out untouched, when that allocation fails. */
bool flp_decode_schedule_build(const flp_decode_schedule_input *in, flp_decode_schedule *out);

#endif /* FLP_CORE_DECODE_SCHEDULE_H */
