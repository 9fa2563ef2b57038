/* Prefill work partition: tiles, KV clipping, splitting and longest-first assignment. */
#include "core/prefill_schedule.h"
#include "core/assign.h"
#include "core/decode_chunk.h"

#include <limits.h>
#include <string.h>

/* Fixed cost of an item in key-equivalents (loading the query tile, writing the output). */
#define ITEM_OVERHEAD_KEYS 32

int32_t flp_prefill_choose_tile(int32_t batch_size, int32_t group_size, const int32_t *qo_len) {
    int64_t rows = 0, requests = 0;
    for (int32_t b = 0; b < batch_size; b++)
        if (qo_len[b] > 0) {
            rows += (int64_t)qo_len[b] * group_size;
            requests++;
        }
    int64_t average = requests > 0 ? rows / requests : 0;
    return average > 64 ? 128 : average > 16 ? 64 : 16;
}

int32_t flp_prefill_max_items(int32_t max_batch_size, int32_t max_qo_rows, int32_t num_kv_heads,
                              int32_t group_size, int32_t num_ctas) {
    /* Per KV head: sum over requests of ceil(rows / 16) <= rows / 16 + batch; splitting adds
     * at most num_ctas items (chunks are at least total / num_ctas keys long). */
    int64_t tiles = (int64_t)max_qo_rows * group_size / 16 + max_batch_size;
    int64_t n = tiles * num_kv_heads + 2 * (int64_t)num_ctas;
    return n > INT32_MAX / FLP_PREFILL_ITEM_INTS ? -1 : (int32_t)n;
}

int32_t flp_prefill_max_slots(int32_t num_ctas) {
    return 2 * num_ctas;
}

int32_t flp_prefill_max_merge_items(int32_t num_ctas) {
    return num_ctas;
}

void flp_prefill_key_range(const flp_prefill_key_rule *rule, int32_t qo_len, int32_t kv_len,
                           int32_t row_begin, int32_t row_end, int32_t *lo, int32_t *hi) {
    /* query token i sits at position kv_len - qo_len + i */
    int64_t first = (int64_t)kv_len - qo_len + row_begin / rule->group_size;
    int64_t last = (int64_t)kv_len - qo_len + (row_end - 1) / rule->group_size;
    int64_t h = rule->causal ? last + 1 : kv_len;
    int64_t l = rule->window_left >= 0 ? first - rule->window_left : 0;
    *hi = (int32_t)(h < kv_len ? h : kv_len);
    *lo = (int32_t)(l > 0 ? l : 0);
}

/* The unsplit items (request, head, tile) in natural order; returns their count. A request's
 * KV heads have the same tiles and keys: those of head 0 are worked out, the others copied. */
static int32_t tile_items(const flp_prefill_schedule_input *in, int32_t tile, int32_t *items) {
    int32_t n = 0;
    for (int32_t b = 0; b < in->batch_size; b++) {
        const int32_t rows = in->qo_len[b] * in->keys.group_size, first = n;
        for (int32_t r = 0; r < rows; r += tile) {
            int32_t *it = items + FLP_PREFILL_ITEM_INTS * n++;
            it[FLP_PITEM_REQUEST] = b;
            it[FLP_PITEM_KV_HEAD] = 0;
            it[FLP_PITEM_ROW_BEGIN] = r;
            it[FLP_PITEM_ROW_END] = rows - r < tile ? rows : r + tile;
            flp_prefill_key_range(&in->keys, in->qo_len[b], in->kv_len[b], r, it[FLP_PITEM_ROW_END],
                                  &it[FLP_PITEM_KV_BEGIN], &it[FLP_PITEM_KV_END]);
            it[FLP_PITEM_PARTIAL_SLOT] = -1;
        }
        const int32_t tiles = n - first;
        for (int32_t g = 1; g < in->num_kv_heads; g++)
            for (int32_t t = 0; t < tiles; t++) {
                int32_t *it = items + FLP_PREFILL_ITEM_INTS * n++;
                memcpy(it, items + FLP_PREFILL_ITEM_INTS * (first + t),
                       sizeof(int32_t) * FLP_PREFILL_ITEM_INTS);
                it[FLP_PITEM_KV_HEAD] = g;
            }
    }
    return n;
}

static int32_t keys_of(const int32_t *it) {
    return it[FLP_PITEM_KV_END] - it[FLP_PITEM_KV_BEGIN];
}

/* Split chunk size: the keys of an even share of the device (at least min_chunk), so that no
 * item is longer than a fair share of the whole work; INT32_MAX when none is, or when the items
 * already fill at least half the workgroups (measured on H200: splitting a 1k prompt's 256
 * items over 264 workgroups costs more in partial writes and merges than the balance gains).
 * The bounds of flp_prefill_max_items/_slots/_merge_items follow: chunks <= total / chunk +
 * split items. */
static int32_t choose_chunk(const flp_prefill_schedule_input *in, const int32_t *items, int32_t n) {
    if (2 * (int64_t)n >= in->num_ctas)
        return INT32_MAX;
    int64_t total = 0, longest = 0;
    for (int32_t i = 0; i < n; i++) {
        int64_t keys = keys_of(items + FLP_PREFILL_ITEM_INTS * i);
        total += keys;
        longest = keys > longest ? keys : longest;
    }
    int64_t chunk = (total + in->num_ctas - 1) / in->num_ctas;
    if (chunk < in->min_chunk)
        chunk = in->min_chunk;
    int64_t align = in->chunk_align > 0 ? in->chunk_align : 1;
    chunk = (chunk + align - 1) / align * align;
    return chunk >= longest || chunk > INT32_MAX ? INT32_MAX : (int32_t)chunk;
}

/* What splitting every item longer than chunk needs: partial slots, merge items and items. */
static void split_needs(const int32_t *items, int32_t n, int32_t chunk, int64_t *slots,
                        int64_t *merges, int64_t *total) {
    *slots = *merges = 0;
    *total = n;
    for (int32_t i = 0; i < n; i++) {
        int64_t len = keys_of(items + FLP_PREFILL_ITEM_INTS * i);
        if (len > chunk) {
            int64_t chunks = (len + chunk - 1) / chunk;
            *slots += chunks;
            *merges += 1;
            *total += chunks - 1;
        }
    }
}

/* The decode scheduler's chunk (the cost model of core/decode_chunk.c) over the tile items, each
 * taken as a request of one head; grown (doubled) until the split fits the capacities. */
static int32_t choose_chunk_by_cost(const flp_prefill_schedule_input *in, const int32_t *items,
                                    int32_t n, int32_t *kv_begin, int32_t *kv_end,
                                    void *chunk_scratch) {
    for (int32_t i = 0; i < n; i++) {
        kv_begin[i] = items[FLP_PREFILL_ITEM_INTS * i + FLP_PITEM_KV_BEGIN];
        kv_end[i] = items[FLP_PREFILL_ITEM_INTS * i + FLP_PITEM_KV_END];
    }
    flp_decode_schedule_input d = {
        .batch_size = n,
        .num_kv_heads = 1,
        .num_ctas = in->num_ctas,
        .kv_begin = kv_begin,
        .kv_end = kv_end,
        .min_chunk = in->min_chunk,
        .chunk_align = in->chunk_align,
    };
    int64_t chunk = flp_decode_choose_chunk(&d, chunk_scratch);
    for (; chunk < INT32_MAX; chunk *= 2) {
        int64_t slots, merges, total;
        split_needs(items, n, (int32_t)chunk, &slots, &merges, &total);
        if (slots <= in->max_slots && merges <= in->max_merge_items && total <= in->max_items)
            break;
    }
    return chunk >= INT32_MAX ? INT32_MAX : (int32_t)chunk;
}

/* Expands items longer than chunk into chunk items writing partial slots, records the merges.
 * src has n items; dst receives the result. Returns the new count. */
static int32_t split_items(const flp_prefill_schedule_input *in, int32_t chunk, const int32_t *src,
                           int32_t n, int32_t *dst, flp_prefill_schedule *out) {
    int32_t m = 0, slots = 0, merges = 0;
    for (int32_t i = 0; i < n; i++) {
        const int32_t *it = src + FLP_PREFILL_ITEM_INTS * i;
        int32_t len = keys_of(it);
        int32_t chunks = len <= chunk ? 1 : (int32_t)(((int64_t)len + chunk - 1) / chunk);
        if (chunks > 1 && (slots + chunks > in->max_slots || merges >= in->max_merge_items))
            chunks = 1; /* capacity guard: cannot happen with the documented bounds */
        for (int32_t c = 0; c < chunks; c++) {
            int32_t *o = dst + FLP_PREFILL_ITEM_INTS * m++;
            for (int k = 0; k < FLP_PREFILL_ITEM_INTS; k++)
                o[k] = it[k];
            if (chunks == 1)
                continue;
            o[FLP_PITEM_KV_BEGIN] = it[FLP_PITEM_KV_BEGIN] + c * chunk;
            if (c + 1 < chunks)
                o[FLP_PITEM_KV_END] = o[FLP_PITEM_KV_BEGIN] + chunk;
            o[FLP_PITEM_PARTIAL_SLOT] = slots + c;
        }
        if (chunks > 1) {
            int32_t *mi = out->merge_items + FLP_MERGE_ITEM_INTS * merges++;
            mi[FLP_MITEM_REQUEST] = it[FLP_PITEM_REQUEST];
            mi[FLP_MITEM_KV_HEAD] = it[FLP_PITEM_KV_HEAD];
            mi[FLP_MITEM_ROW_BEGIN] = it[FLP_PITEM_ROW_BEGIN];
            mi[FLP_MITEM_ROW_END] = it[FLP_PITEM_ROW_END];
            mi[FLP_MITEM_FIRST_SLOT] = slots;
            mi[FLP_MITEM_CHUNKS] = chunks;
            slots += chunks;
        }
    }
    out->num_partial_slots = slots;
    out->num_merge_items = merges;
    return m;
}

/* Scratch parts, each a multiple of 8 bytes: a list of cap work items, and the key ranges
 * kv_begin and kv_end [cap] of the split-by-cost choice. */
static size_t item_list_bytes(int32_t cap) {
    return (sizeof(int32_t) * FLP_PREFILL_ITEM_INTS * (size_t)cap + 7) / 8 * 8;
}

static size_t key_ranges_bytes(int32_t cap) {
    return (2 * sizeof(int32_t) * (size_t)cap + 7) / 8 * 8;
}

size_t flp_prefill_schedule_scratch_bytes(const flp_prefill_schedule_input *in) {
    int32_t cap = in->max_items > 0 ? in->max_items : 1;
    /* cost [cap] int64, the assignment's scratch, tiles and items, then (split by cost) the key
     * ranges and the chunk choice's scratch */
    size_t bytes = sizeof(int64_t) * (size_t)cap + flp_assign_scratch_bytes(cap, in->num_ctas) +
                   2 * item_list_bytes(cap);
    if (in->split_by_cost)
        bytes += key_ranges_bytes(cap) + flp_decode_chunk_scratch_bytes(cap, in->num_ctas);
    return bytes;
}

void flp_prefill_schedule_build(const flp_prefill_schedule_input *in, flp_prefill_schedule *out,
                                void *scratch) {
    out->q_tile = flp_prefill_choose_tile(in->batch_size, in->keys.group_size, in->qo_len);
    int32_t cap = in->max_items > 0 ? in->max_items : 1;
    size_t list = item_list_bytes(cap);
    int64_t *cost = scratch;
    char *assign_scratch = (char *)(cost + cap);
    int32_t *tiles = (int32_t *)(assign_scratch + flp_assign_scratch_bytes(cap, in->num_ctas));
    int32_t *items = (int32_t *)((char *)tiles + list);
    int32_t n = tile_items(in, out->q_tile, tiles);
    int32_t chunk;
    if (in->split_by_cost) {
        int32_t *kv_begin = (int32_t *)((char *)items + list), *kv_end = kv_begin + cap;
        void *chunk_scratch = (char *)kv_begin + key_ranges_bytes(cap);
        chunk = choose_chunk_by_cost(in, tiles, n, kv_begin, kv_end, chunk_scratch);
    } else {
        chunk = choose_chunk(in, tiles, n);
    }
    if (chunk == INT32_MAX) { /* nothing split: the tiles are the items */
        items = tiles;
        out->num_items = n;
        out->num_partial_slots = 0;
        out->num_merge_items = 0;
    } else {
        out->num_items = split_items(in, chunk, tiles, n, items, out);
    }
    for (int32_t i = 0; i < out->num_items; i++) {
        const int32_t *it = items + FLP_PREFILL_ITEM_INTS * i;
        /* Key tiles times row passes: a tensor-core tile costs the same for any row count. */
        cost[i] = (int64_t)keys_of(it) + ITEM_OVERHEAD_KEYS;
    }
    flp_assign_longest_first(items, FLP_PREFILL_ITEM_INTS, cost, out->num_items, in->num_ctas,
                             out->work_indptr, out->work_items, assign_scratch);
}
