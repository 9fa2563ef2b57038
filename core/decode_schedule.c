/* Decode work partition: KV splitting and longest-first assignment (core/decode_chunk.c chooses
 * the chunk and each piece's workgroups), written out here as work lists. */
#include "core/decode_schedule.h"
#include "core/alloc.h"
#include "core/decode_chunk.h"

#include <limits.h>
#include <stdint.h>

int32_t flp_decode_max_items(int32_t max_batch_size, int32_t num_kv_heads, int32_t num_ctas) {
    /* Each request contributes at most len/chunk + 1 items per KV head, and the chunk is at
     * least total/(num_ctas x FLP_DECODE_MAX_SPLIT_DIVISOR), so items <= batch x heads +
     * FLP_DECODE_MAX_SPLIT_DIVISOR x num_ctas. -1 when the items' words would not fit int32
     * (plan creation refuses such capacities). */
    int64_t n =
        (int64_t)max_batch_size * num_kv_heads + (int64_t)FLP_DECODE_MAX_SPLIT_DIVISOR * num_ctas;
    return n > INT32_MAX / FLP_WORK_ITEM_INTS ? -1 : (int32_t)n;
}

size_t flp_decode_schedule_scratch_bytes(const flp_decode_schedule_input *in) {
    if (flp_decode_max_items(in->batch_size, in->num_kv_heads, in->num_ctas) < 0)
        return SIZE_MAX;
    /* the chunk choice and assignment, then per group of workgroups: its first item's index and
     * its pieces (8-byte multiples) */
    return flp_decode_choice_scratch_bytes(in) +
           (2 * sizeof(int32_t) * (size_t)in->num_ctas + 7) / 8 * 8;
}

/* Writes item (request b, head_chunk = KV head * chunks + chunk) at work_items[at]. */
static inline void put_item(int32_t *work_items, int32_t at, int32_t b, int32_t head_chunk) {
    int32_t *it = work_items + (size_t)FLP_WORK_ITEM_INTS * (size_t)at;
    it[FLP_WORK_REQUEST] = b;
    it[FLP_WORK_HEAD_CHUNK] = head_chunk;
}

void flp_decode_schedule_build_in(const flp_decode_schedule_input *in, flp_decode_schedule *out,
                                  void *scratch) {
    flp_decode_choice ch;
    flp_decode_choose_and_assign(in, scratch, &ch);
    const int32_t heads = in->num_kv_heads, group_size = ch.group_size, groups = ch.num_groups;
    const int32_t chunk = ch.chunk, per = heads / group_size;
    /* next[g]: where group g's next piece puts its first workgroup's item; pieces[g]: its
     * pieces, each workgroup's item count */
    int32_t *next = (int32_t *)((char *)scratch + flp_decode_choice_scratch_bytes(in));
    int32_t *pieces = next + in->num_ctas;
    out->chunk_size = chunk;

    /* Partial slots: request b's head g, chunk c at merge_info[2b] + g * chunks + c. */
    int32_t slots = 0;
    for (int32_t b = 0; b < in->batch_size; b++) {
        const int32_t chunks = ch.chunks[b];
        out->merge_info[2 * b] = chunks > 1 ? slots : 0;
        out->merge_info[2 * b + 1] = chunks;
        if (chunks > 1)
            slots += heads * chunks;
    }
    out->num_partial_slots = slots;

    /* Each workgroup's items: the pieces of its group, in longest-first order. */
    const int64_t full_rounds = ch.full_pieces / groups, full_extra = ch.full_pieces % groups;
    for (int32_t g = 0; g < groups; g++)
        pieces[g] = (int32_t)(full_rounds + (g < full_extra));
    const int64_t rest_pieces = (int64_t)ch.num_rest * per;
    for (int64_t p = 0; p < rest_pieces; p++)
        pieces[ch.picks[p]]++;
    int32_t items = 0;
    for (int32_t g = 0; g < groups; g++) {
        next[g] = items;
        for (int32_t k = 0; k < group_size; k++) {
            out->work_indptr[g * group_size + k] = items;
            items += pieces[g];
        }
    }
    out->work_indptr[in->num_ctas] = items;
    out->num_items = items;

    /* The full chunks (and requests of chunk keys), natural order, round-robin over the
     * groups: piece i to group i % groups. A request's full chunks are whole pieces (the group
     * size divides the head count). */
    int32_t *work_items = out->work_items;
    if (ch.full_pieces > 0) {
        int32_t group = 0;
        for (int32_t b = 0; b < in->batch_size; b++) {
            const int32_t len = in->kv_end[b] - in->kv_begin[b];
            const int32_t chunks = ch.chunks[b];
            const int32_t full =
                chunks > 1 ? chunks - (len < (int64_t)chunks * chunk) : (len == chunk);
            /* head * chunks + c over the full chunks c < full of every head */
            const int32_t skip = chunks - full;
            int32_t c = 0, head_chunk = 0;
            for (int32_t left = full * per; left > 0; left--) {
                int32_t at = next[group];
                const int32_t stride = pieces[group];
                next[group] = at + 1;
                group = group + 1 == groups ? 0 : group + 1;
                for (int32_t k = 0; k < group_size; k++, at += stride) {
                    put_item(work_items, at, b, head_chunk);
                    const bool next_head = c + 1 == full;
                    c = next_head ? 0 : c + 1;
                    head_chunk += next_head ? 1 + skip : 1;
                }
            }
        }
    }
    /* Then each request's last (or only) item of every head, longest first: a piece is
     * group_size heads, to the group's workgroups in turn (their lists stride items apart). */
    const int32_t *picks = ch.picks;
    for (int32_t i = 0; i < ch.num_rest; i++) {
        const int32_t b = FLP_DECODE_REST_REQUEST(ch.rest[i]);
        const int32_t chunks = ch.chunks[b];
        /* head * chunks + chunks - 1 */
        int32_t head_chunk = chunks - 1;
        for (int32_t head = 0; head < heads;) {
            const int32_t group = *picks++, stride = pieces[group];
            int32_t at = next[group];
            next[group] = at + 1;
            for (int32_t k = 0; k < group_size; k++, head++, at += stride, head_chunk += chunks)
                put_item(work_items, at, b, head_chunk);
        }
    }
}

bool flp_decode_schedule_build(const flp_decode_schedule_input *in, flp_decode_schedule *out) {
    void *scratch = flp_malloc(flp_decode_schedule_scratch_bytes(in));
    if (!scratch)
        return false;
    flp_decode_schedule_build_in(in, out, scratch);
    flp_free(scratch);
    return true;
}
