/* flp_page_table_export_cascade: a cascade's levels from the pages that forked sequences share
 * (docs/api.md, "Cascade from a page table").
 *
 * Sequences that fork from one parent hold the parent's pages, by the same ids, until they
 * write past them: consecutive sequences (in the order given) sharing a page-id prefix share
 * those keys. Level k (k < num_levels - 1) cuts each group of level k - 1 into runs of
 * consecutive sequences that share more whole pages than the pages taken so far; a run takes
 * the shared pages beyond them, once for all its rows. A sequence in no run gets an empty group.
 * The last level holds each sequence's remaining pages. Only pages wholly before a sequence's
 * first query token are shared: every key some row must not see stays in the last level, where
 * the causal mask applies. */
#include "core/alloc.h"
#include "core/page_table.h"

static const char WHAT[] = "flp_page_table_export_cascade";

/* Whole pages of s before its first query token (qo_len of its last tokens are queries). */
static int32_t shareable_pages(const flp_sequence_view *s, int32_t qo_len) {
    return (s->num_tokens - qo_len) / s->page_size;
}

/* Leading pages a and b have in common, at most limit. */
static int32_t common_pages(const flp_sequence_view *a, const flp_sequence_view *b, int32_t limit) {
    int32_t n = 0;
    while (n < limit && a->pages[n] == b->pages[n])
        n++;
    return n;
}

static flp_status check_args(const flp_page_table *table, const int32_t *seq_ids, int32_t num_seqs,
                             const int32_t *qo_lens, int32_t num_levels,
                             const flp_cascade_export_level *storage,
                             const flp_cascade_level *levels) {
    if (num_seqs < 1)
        return flp_page_table_fail(table, FLP_ERROR_INVALID_ARGUMENT,
                                   "%s: num_seqs = %d must be > 0", WHAT, num_seqs);
    if (num_levels < 1 || num_levels > FLP_CASCADE_MAX_LEVELS)
        return flp_page_table_fail(table, FLP_ERROR_INVALID_ARGUMENT,
                                   "%s: num_levels = %d must be in 1..%d", WHAT, num_levels,
                                   FLP_CASCADE_MAX_LEVELS);
    if (!seq_ids || !storage || !levels)
        return flp_page_table_fail(table, FLP_ERROR_INVALID_ARGUMENT, "%s: %s is NULL", WHAT,
                                   !seq_ids   ? "seq_ids"
                                   : !storage ? "storage"
                                              : "levels");
    for (int32_t l = 0; l < num_levels; l++) {
        const flp_cascade_export_level *s = &storage[l];
        if (!s->qo_indptr || !s->kv_indptr || !s->kv_last_page_len ||
            (s->indices_capacity > 0 && !s->kv_indices) || s->indices_capacity < 0)
            return flp_page_table_fail(table, FLP_ERROR_INVALID_ARGUMENT,
                                       "%s: storage[%d] needs qo_indptr, kv_indptr, "
                                       "kv_last_page_len, and kv_indices for indices_capacity = "
                                       "%d >= 0",
                                       WHAT, l, s->indices_capacity);
    }
    int64_t rows = 0;
    for (int32_t i = 0; i < num_seqs; i++) {
        flp_sequence_view s;
        flp_status status = flp_page_table_view(table, WHAT, seq_ids[i], &s);
        if (status != FLP_OK)
            return status;
        const int32_t qo_len = qo_lens ? qo_lens[i] : 1;
        if (!qo_lens && s.num_tokens == 0)
            return flp_page_table_fail(table, FLP_ERROR_INVALID_ARGUMENT,
                                       "%s: seq_ids[%d] = %d has no tokens for its query row "
                                       "(qo_lens NULL: one row per sequence)",
                                       WHAT, i, seq_ids[i]);
        if (qo_len < 0 || qo_len > s.num_tokens)
            return flp_page_table_fail(table, FLP_ERROR_INVALID_ARGUMENT,
                                       "%s: qo_lens[%d] = %d must be in 0..%d (the tokens of "
                                       "sequence %d: queries are its last tokens)",
                                       WHAT, i, qo_len, s.num_tokens, seq_ids[i]);
        rows += qo_len;
    }
    if (rows > INT32_MAX)
        return flp_page_table_fail(table, FLP_ERROR_INVALID_ARGUMENT,
                                   "%s: %lld query rows in all, more than 2^31 - 1", WHAT,
                                   (long long)rows);
    return FLP_OK;
}

/* The export's working arrays, one allocation. */
typedef struct work {
    flp_sequence_view *seqs; /* [num_seqs] */
    int32_t *row_start;      /* [num_seqs + 1] */
    int32_t *shared;         /* [num_seqs] pages a sequence shares with the next (last: 0) */
    int32_t *taken;          /* [num_seqs] pages the levels so far hold for each */
    int32_t *next_taken;     /* [num_seqs] */
} work;

/* Level l of a shared-prefix level: runs within the groups of the level before. Returns
 * FLP_ERROR_CAPACITY when the pages exceed storage's capacity. */
static flp_status shared_level(const flp_page_table *table, int32_t l, int32_t num_seqs, work *w,
                               const flp_cascade_export_level *s, flp_cascade_level *out) {
    int32_t groups = 0, pages = 0;
    s->qo_indptr[0] = 0;
    s->kv_indptr[0] = 0;
    for (int32_t first = 0; first < num_seqs;) {
        /* the run from first: neighbours that share more than they have taken, at one depth */
        int32_t end = first + 1, depth = INT32_MAX;
        while (end < num_seqs && w->taken[end] == w->taken[first] &&
               w->shared[end - 1] > w->taken[first]) {
            depth = w->shared[end - 1] < depth ? w->shared[end - 1] : depth;
            end++;
        }
        if (end == first + 1)
            depth = w->taken[first]; /* alone: an empty group */
        const int32_t count = depth - w->taken[first];
        if ((int64_t)pages + count > s->indices_capacity)
            return flp_page_table_fail(table, FLP_ERROR_CAPACITY,
                                       "%s: level %d needs more than indices_capacity = %d pages",
                                       WHAT, l, s->indices_capacity);
        for (int32_t p = w->taken[first]; p < depth; p++)
            s->kv_indices[pages++] = w->seqs[first].pages[p];
        s->kv_last_page_len[groups] = w->seqs[first].page_size; /* whole pages */
        s->qo_indptr[groups + 1] = w->row_start[end];
        s->kv_indptr[groups + 1] = pages;
        groups++;
        for (int32_t i = first; i < end; i++)
            w->next_taken[i] = depth;
        first = end;
    }
    for (int32_t i = 0; i < num_seqs; i++)
        w->taken[i] = w->next_taken[i];
    *out = (flp_cascade_level){.num_groups = groups,
                               .qo_indptr = s->qo_indptr,
                               .kv_indptr = s->kv_indptr,
                               .kv_indices = s->kv_indices,
                               .kv_last_page_len = s->kv_last_page_len};
    return FLP_OK;
}

/* The last level: each sequence's pages past those taken. */
static flp_status own_level(const flp_page_table *table, int32_t l, int32_t num_seqs, const work *w,
                            const flp_cascade_export_level *s, flp_cascade_level *out) {
    int32_t pages = 0;
    s->qo_indptr[0] = 0;
    s->kv_indptr[0] = 0;
    for (int32_t i = 0; i < num_seqs; i++) {
        const flp_sequence_view *q = &w->seqs[i];
        if ((int64_t)pages + q->num_pages - w->taken[i] > s->indices_capacity)
            return flp_page_table_fail(table, FLP_ERROR_CAPACITY,
                                       "%s: level %d needs more than indices_capacity = %d pages",
                                       WHAT, l, s->indices_capacity);
        for (int32_t p = w->taken[i]; p < q->num_pages; p++)
            s->kv_indices[pages++] = q->pages[p];
        s->kv_last_page_len[i] =
            q->num_pages > 0 ? q->num_tokens - (q->num_pages - 1) * q->page_size : q->page_size;
        s->qo_indptr[i + 1] = w->row_start[i + 1];
        s->kv_indptr[i + 1] = pages;
    }
    *out = (flp_cascade_level){.num_groups = num_seqs,
                               .qo_indptr = s->qo_indptr,
                               .kv_indptr = s->kv_indptr,
                               .kv_indices = s->kv_indices,
                               .kv_last_page_len = s->kv_last_page_len};
    return FLP_OK;
}

flp_status flp_page_table_export_cascade(const flp_page_table *table, const int32_t *seq_ids,
                                         int32_t num_seqs, const int32_t *qo_lens,
                                         int32_t num_levels,
                                         const flp_cascade_export_level *storage,
                                         flp_cascade_level *levels) {
    if (!table)
        return FLP_ERROR_INVALID_ARGUMENT;
    flp_page_table_clear_error(table);
    flp_status status = check_args(table, seq_ids, num_seqs, qo_lens, num_levels, storage, levels);
    if (status != FLP_OK)
        return status;
    const size_t n = (size_t)num_seqs;
    char *block = flp_malloc(sizeof(flp_sequence_view) * n + sizeof(int32_t) * (4 * n + 1));
    if (!block)
        return flp_page_table_fail(table, FLP_ERROR_OUT_OF_MEMORY,
                                   "%s: out of host memory for %d sequences", WHAT, num_seqs);
    work w = {.seqs = (flp_sequence_view *)block};
    w.row_start = (int32_t *)(w.seqs + n);
    w.shared = w.row_start + n + 1;
    w.taken = w.shared + n;
    w.next_taken = w.taken + n;
    w.row_start[0] = 0;
    for (int32_t i = 0; i < num_seqs; i++) {
        flp_page_table_view(table, WHAT, seq_ids[i], &w.seqs[i]); /* checked above */
        w.row_start[i + 1] = w.row_start[i] + (qo_lens ? qo_lens[i] : 1);
        w.taken[i] = 0;
    }
    for (int32_t i = 0; i < num_seqs; i++) {
        int32_t limit = 0;
        if (i + 1 < num_seqs) {
            const int32_t a = shareable_pages(&w.seqs[i], w.row_start[i + 1] - w.row_start[i]);
            const int32_t b =
                shareable_pages(&w.seqs[i + 1], w.row_start[i + 2] - w.row_start[i + 1]);
            limit = a < b ? a : b;
        }
        w.shared[i] = limit > 0 ? common_pages(&w.seqs[i], &w.seqs[i + 1], limit) : 0;
    }
    for (int32_t l = 0; l + 1 < num_levels && status == FLP_OK; l++)
        status = shared_level(table, l, num_seqs, &w, &storage[l], &levels[l]);
    if (status == FLP_OK)
        status = own_level(table, num_levels - 1, num_seqs, &w, &storage[num_levels - 1],
                           &levels[num_levels - 1]);
    flp_free(block);
    return status;
}
