/* The decode scheduler's split decision (docs/design.md 5.5): which KV chunk size, if any, makes
 * the slowest workgroup finish first, and the longest-first assignment of the chosen split. */
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
/* A candidate chunk within 1/this of one already simulated is not simulated: in batches of
 * many lengths the fair share and the longest request give near chunks of near times (256
 * random lengths: 7 simulations of 256 pieces each, 4 of them within 0.3% of each other). */
#define FLP_DECODE_NEAR_CANDIDATE 8
/* The smallest candidate chunk is the fair share of the grid divided by this: a schedule has at
 * most batch x heads + this x grid items. */
#define FLP_DECODE_MAX_SPLIT_DIVISOR 4

/* Host scratch bytes flp_decode_choose_chunk needs (a multiple of 8). */
size_t flp_decode_chunk_scratch_bytes(int32_t batch_size, int32_t num_ctas);

/* The chunk size (tokens, a multiple of chunk_align, at least min_chunk) that every request
 * longer than it is cut into, or INT32_MAX for no split: the candidate with the shortest
 * simulated slowest workgroup (ties to the larger chunk) if that beats no split by
 * FLP_DECODE_SPLIT_MIN_GAIN_PERCENT. scratch: 8-byte aligned,
 * flp_decode_chunk_scratch_bytes bytes. The pieces' costs sum below 2^60 and num_ctas is below
 * 2^28 (the item capacities of flp_decode_max_items and flp_prefill_max_items keep them so). */
int32_t flp_decode_choose_chunk(const flp_decode_schedule_input *in, void *scratch);

/* The chunk choice and the longest-first assignment of its items (docs/design.md 5.7), for
 * flp_decode_schedule_build_in to write out. The items of one cost go in natural order
 * (request, KV head, chunk), and a piece is group_size consecutive items of that order, which go
 * to the group_size workgroups [group * group_size, (group + 1) * group_size) in turn.
 *
 * Longest first, the items are: full_pieces pieces of chunk keys (every full chunk of a split
 * request, and every request of exactly chunk keys), piece i to group i % num_groups; then, for
 * each rest[i] in turn, the KV heads' last (or only) item of request FLP_DECODE_REST_REQUEST(
 * rest[i]), heads / group_size pieces, to groups picks[...] in turn. */
typedef struct flp_decode_choice {
    int32_t chunk; /* INT32_MAX when nothing is split */
    int32_t group_size;
    int32_t num_groups; /* num_ctas / group_size */
    int64_t full_pieces;
    int32_t num_rest;
    const int64_t *rest;   /* [num_rest] */
    const int32_t *picks;  /* [num_rest * heads / group_size] */
    const int32_t *chunks; /* [batch_size] each request's items per KV head */
} flp_decode_choice;

/* A rest entry's request. */
#define FLP_DECODE_REST_REQUEST(entry) ((int32_t)(0x7fffffff - ((entry)&0xffffffff)))

/* Host scratch bytes flp_decode_choose_and_assign needs (a multiple of 8). */
size_t flp_decode_choice_scratch_bytes(const flp_decode_schedule_input *in);

/* Fills out, whose arrays lie in scratch (8-byte aligned, flp_decode_choice_scratch_bytes(in)
 * bytes). */
void flp_decode_choose_and_assign(const flp_decode_schedule_input *in, void *scratch,
                                  flp_decode_choice *out);

#endif /* FLP_CORE_DECODE_CHUNK_H */
