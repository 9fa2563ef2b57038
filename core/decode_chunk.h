/* The decode scheduler's split decision (docs/design.md 5.5): which KV chunk size, if any, makes
 * the slowest workgroup finish first. */
#ifndef FLP_CORE_DECODE_CHUNK_H
#define FLP_CORE_DECODE_CHUNK_H

#include "core/decode_schedule.h"

#include <stddef.h>
#include <stdint.h>

/* A split chunk is at least this many keys: below it the merge costs more than it saves. */
#define FLP_DECODE_MIN_CHUNK 128

/* A work item's fixed cost in token-equivalents (loading the query rows, writing the output),
 * so that many empty items do not all land on one workgroup. */
#define FLP_DECODE_ITEM_OVERHEAD 16
/* What a split piece costs on top (writing its partial state, reading it again in the merge),
 * in token-equivalents: it keeps a split that gains nothing from being chosen. */
#define FLP_DECODE_SPLIT_OVERHEAD 8
/* A split is taken only when it shortens the slowest workgroup by at least this much: the merge
 * kernel's pass over the split requests costs something the pieces do not show. */
#define FLP_DECODE_SPLIT_MIN_GAIN_PERCENT 3
/* The smallest candidate chunk is the fair share of the grid divided by this: a schedule has at
 * most batch x heads + this x grid items. */
#define FLP_DECODE_MAX_SPLIT_DIVISOR 4

/* Host scratch bytes flp_decode_choose_chunk needs (a multiple of 8). */
size_t flp_decode_chunk_scratch_bytes(int32_t batch_size, int32_t num_ctas);

/* The chunk size (tokens, a multiple of chunk_align, at least min_chunk) that every request
 * longer than it is cut into, or INT32_MAX for no split: the candidate with the shortest
 * simulated slowest workgroup (ties to the larger chunk) if that beats no split by
 * FLP_DECODE_SPLIT_MIN_GAIN_PERCENT. scratch: 8-byte aligned,
 * flp_decode_chunk_scratch_bytes bytes. */
int32_t flp_decode_choose_chunk(const flp_decode_schedule_input *in, void *scratch);

#endif /* FLP_CORE_DECODE_CHUNK_H */
