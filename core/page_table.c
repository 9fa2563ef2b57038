/* Host bookkeeping of a paged KV pool (flp_page_table_* in flashport.h).
 *
 * Pages carry a reference count: 0 = free, n = held by n sequences (fork shares the parent's
 * pages instead of copying them). Free pages sit in a min-heap so allocation always takes the
 * lowest-numbered free page: the same sequence of calls gives the same page ids. Sequence ids
 * are handed out the same way (lowest free id first).
 *
 * Invariants, for every live sequence: num_pages == ceil(num_tokens / page_size), its pages
 * are distinct, and every page's refcount equals the number of live sequences holding it.
 *
 * Every call validates all arguments and checks capacity before it changes anything, so a
 * failed call leaves the table as it was. Failures write a message to last_error, which const
 * calls (locate, export, ...) update too: the message is bookkeeping, not table state.
 */
#include "core/page_table.h"
#include "core/alloc.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define PT_ERROR_SIZE 256
#define PT_DEFAULT_MAX_SEQUENCES 1024

typedef struct pt_sequence {
    bool live;
    int32_t num_tokens;
    int32_t num_pages;
    int32_t capacity; /* allocated entries of pages */
    int32_t *pages;   /* [capacity], the first num_pages are the sequence's pages in order */
} pt_sequence;

/* Min-heap of int32 ids (free pages, free sequence ids). */
typedef struct pt_heap {
    int32_t *items; /* [capacity] */
    int32_t count;
} pt_heap;

struct flp_page_table {
    int32_t num_pages;
    int32_t page_size;
    int32_t max_sequences;
    int32_t *refcount;      /* [num_pages], 0 = free */
    pt_heap free_pages;     /* capacity num_pages */
    pt_heap free_seq_ids;   /* capacity max_sequences */
    pt_sequence *sequences; /* [max_sequences], indexed by sequence id */
    char last_error[PT_ERROR_SIZE];
};

/* ---- errors --------------------------------------------------------------------------- */

flp_status flp_page_table_fail(const flp_page_table *table, flp_status status, const char *fmt,
                               ...) {
    /* The table itself is never const (it comes from malloc); only its error text changes. */
    char *buf = ((flp_page_table *)table)->last_error;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, PT_ERROR_SIZE, fmt, ap);
    va_end(ap);
    return status;
}

void flp_page_table_clear_error(const flp_page_table *table) {
    ((flp_page_table *)table)->last_error[0] = '\0';
}

/* ---- min-heap ------------------------------------------------------------------------- */

static void heap_push(pt_heap *h, int32_t v) {
    int32_t i = h->count++;
    while (i > 0) {
        int32_t parent = (i - 1) / 2;
        if (h->items[parent] <= v)
            break;
        h->items[i] = h->items[parent];
        i = parent;
    }
    h->items[i] = v;
}

static int32_t heap_pop(pt_heap *h) {
    int32_t top = h->items[0];
    int32_t last = h->items[--h->count];
    int32_t i = 0;
    for (;;) {
        int32_t child = 2 * i + 1;
        if (child >= h->count)
            break;
        if (child + 1 < h->count && h->items[child + 1] < h->items[child])
            child++;
        if (last <= h->items[child])
            break;
        h->items[i] = h->items[child];
        i = child;
    }
    if (h->count > 0)
        h->items[i] = last;
    return top;
}

/* ---- helpers -------------------------------------------------------------------------- */

static int32_t pages_for_tokens(int32_t num_tokens, int32_t page_size) {
    return (int32_t)(((int64_t)num_tokens + page_size - 1) / page_size);
}

/* Fails unless seq_id names a live sequence. */
static flp_status check_sequence(const flp_page_table *table, const char *what, int32_t seq_id) {
    if (seq_id < 0 || seq_id >= table->max_sequences)
        return flp_page_table_fail(table, FLP_ERROR_INVALID_ARGUMENT,
                                   "%s: sequence id %d out of range [0, %d)", what, seq_id,
                                   table->max_sequences);
    if (!table->sequences[seq_id].live)
        return flp_page_table_fail(table, FLP_ERROR_INVALID_ARGUMENT,
                                   "%s: sequence id %d is not live (freed or never created)", what,
                                   seq_id);
    return FLP_OK;
}

flp_status flp_page_table_view(const flp_page_table *table, const char *what, int32_t seq_id,
                               flp_sequence_view *out) {
    flp_status status = check_sequence(table, what, seq_id);
    if (status != FLP_OK)
        return status;
    const pt_sequence *seq = &table->sequences[seq_id];
    *out = (flp_sequence_view){.pages = seq->pages,
                               .num_pages = seq->num_pages,
                               .num_tokens = seq->num_tokens,
                               .page_size = table->page_size};
    return FLP_OK;
}

/* Makes room for at least `needed` page entries; the sequence's contents are unchanged. */
static flp_status reserve_pages(flp_page_table *table, pt_sequence *seq, int32_t needed,
                                const char *what) {
    if (needed <= seq->capacity)
        return FLP_OK;
    int32_t capacity = seq->capacity > 0 ? seq->capacity : 4;
    while (capacity < needed)
        capacity = capacity > table->num_pages / 2 ? table->num_pages : capacity * 2;
    int32_t *pages = flp_realloc(seq->pages, (size_t)capacity * sizeof *pages);
    if (!pages)
        return flp_page_table_fail(table, FLP_ERROR_OUT_OF_MEMORY,
                                   "%s: out of host memory for %d page ids", what, capacity);
    seq->pages = pages;
    seq->capacity = capacity;
    return FLP_OK;
}

static int32_t alloc_page(flp_page_table *table) {
    int32_t page = heap_pop(&table->free_pages);
    table->refcount[page] = 1;
    return page;
}

static void release_page(flp_page_table *table, int32_t page) {
    if (--table->refcount[page] == 0)
        heap_push(&table->free_pages, page);
}

/* ---- create / destroy ----------------------------------------------------------------- */

flp_status flp_page_table_create(const flp_page_table_desc *desc, flp_page_table **out) {
    /* No table exists yet to hold a message: failures only return the status. */
    if (!out)
        return FLP_ERROR_INVALID_ARGUMENT;
    *out = NULL;
    if (!desc || desc->num_pages <= 0 || desc->page_size < 1 ||
        desc->page_size > FLP_MAX_PAGE_SIZE || desc->max_sequences < 0)
        return FLP_ERROR_INVALID_ARGUMENT;
    /* Token counts are int32: the pool must not hold more than INT32_MAX tokens. */
    if ((int64_t)desc->num_pages * desc->page_size > INT32_MAX)
        return FLP_ERROR_INVALID_ARGUMENT;

    flp_page_table *table = flp_calloc(1, sizeof *table);
    if (!table)
        return FLP_ERROR_OUT_OF_MEMORY;
    table->num_pages = desc->num_pages;
    table->page_size = desc->page_size;
    table->max_sequences = desc->max_sequences > 0 ? desc->max_sequences : PT_DEFAULT_MAX_SEQUENCES;
    table->refcount = flp_calloc((size_t)table->num_pages, sizeof *table->refcount);
    table->free_pages.items = flp_malloc((size_t)table->num_pages * sizeof(int32_t));
    table->free_seq_ids.items = flp_malloc((size_t)table->max_sequences * sizeof(int32_t));
    table->sequences = flp_calloc((size_t)table->max_sequences, sizeof *table->sequences);
    if (!table->refcount || !table->free_pages.items || !table->free_seq_ids.items ||
        !table->sequences) {
        flp_page_table_destroy(table);
        return FLP_ERROR_OUT_OF_MEMORY;
    }
    /* An ascending array is already a valid min-heap. */
    for (int32_t i = 0; i < table->num_pages; i++)
        table->free_pages.items[i] = i;
    table->free_pages.count = table->num_pages;
    for (int32_t i = 0; i < table->max_sequences; i++)
        table->free_seq_ids.items[i] = i;
    table->free_seq_ids.count = table->max_sequences;
    *out = table;
    return FLP_OK;
}

void flp_page_table_destroy(flp_page_table *table) {
    if (!table)
        return;
    if (table->sequences) {
        for (int32_t i = 0; i < table->max_sequences; i++)
            flp_free(table->sequences[i].pages);
    }
    flp_free(table->sequences);
    flp_free(table->free_seq_ids.items);
    flp_free(table->free_pages.items);
    flp_free(table->refcount);
    flp_free(table);
}

const char *flp_page_table_last_error(const flp_page_table *table) {
    if (!table)
        return "flp_page_table_last_error: table is NULL";
    return table->last_error;
}

/* ---- sequences ------------------------------------------------------------------------ */

flp_status flp_page_table_create_sequence(flp_page_table *table, int32_t *seq_id) {
    if (!table)
        return FLP_ERROR_INVALID_ARGUMENT;
    flp_page_table_clear_error(table);
    if (!seq_id)
        return flp_page_table_fail(table, FLP_ERROR_INVALID_ARGUMENT,
                                   "flp_page_table_create_sequence: seq_id is NULL");
    if (table->free_seq_ids.count == 0)
        return flp_page_table_fail(
            table, FLP_ERROR_CAPACITY,
            "flp_page_table_create_sequence: all %d sequences (max_sequences) are live",
            table->max_sequences);
    int32_t id = heap_pop(&table->free_seq_ids);
    pt_sequence *seq = &table->sequences[id];
    seq->live = true;
    seq->num_tokens = 0;
    seq->num_pages = 0;
    *seq_id = id;
    return FLP_OK;
}

flp_status flp_page_table_append(flp_page_table *table, int32_t seq_id, int32_t num_tokens,
                                 int32_t *copy_src, int32_t *copy_dst) {
    static const char what[] = "flp_page_table_append";
    if (!table)
        return FLP_ERROR_INVALID_ARGUMENT;
    flp_page_table_clear_error(table);
    flp_status st = check_sequence(table, what, seq_id);
    if (st != FLP_OK)
        return st;
    pt_sequence *seq = &table->sequences[seq_id];
    if (num_tokens < 0)
        return flp_page_table_fail(table, FLP_ERROR_INVALID_ARGUMENT,
                                   "%s: num_tokens %d is negative", what, num_tokens);
    if (num_tokens > INT32_MAX - seq->num_tokens)
        return flp_page_table_fail(
            table, FLP_ERROR_CAPACITY,
            "%s: sequence %d with %d tokens cannot take %d more (int32 token count)", what, seq_id,
            seq->num_tokens, num_tokens);

    int32_t room = seq->num_pages * table->page_size - seq->num_tokens; /* slots in last page */
    int32_t last = seq->num_pages > 0 ? seq->pages[seq->num_pages - 1] : -1;
    /* The partial last page gets written: when another sequence also holds it, this sequence
     * takes a private copy first (the caller copies the device data). */
    bool copy_on_write = num_tokens > 0 && room > 0 && table->refcount[last] > 1;
    int32_t new_tail_pages =
        pages_for_tokens(seq->num_tokens + num_tokens, table->page_size) - seq->num_pages;
    int32_t needed = new_tail_pages + (copy_on_write ? 1 : 0);
    if (needed > table->free_pages.count)
        return flp_page_table_fail(
            table, FLP_ERROR_CAPACITY,
            "%s: %d tokens for sequence %d need %d free pages (page_size %d%s), only "
            "%d of %d are free",
            what, num_tokens, seq_id, needed, table->page_size,
            copy_on_write ? ", one for copy-on-write" : "", table->free_pages.count,
            table->num_pages);
    st = reserve_pages(table, seq, seq->num_pages + new_tail_pages, what);
    if (st != FLP_OK)
        return st;

    /* Nothing can fail from here on. */
    int32_t src = -1, dst = -1;
    if (copy_on_write) {
        src = last;
        dst = alloc_page(table);
        release_page(table, src); /* refcount > 1: stays held by the other sequences */
        seq->pages[seq->num_pages - 1] = dst;
    }
    for (int32_t i = 0; i < new_tail_pages; i++)
        seq->pages[seq->num_pages++] = alloc_page(table);
    seq->num_tokens += num_tokens;
    if (copy_src)
        *copy_src = src;
    if (copy_dst)
        *copy_dst = dst;
    return FLP_OK;
}

flp_status flp_page_table_fork(flp_page_table *table, int32_t parent_seq_id,
                               int32_t *child_seq_id) {
    static const char what[] = "flp_page_table_fork";
    if (!table)
        return FLP_ERROR_INVALID_ARGUMENT;
    flp_page_table_clear_error(table);
    flp_status st = check_sequence(table, what, parent_seq_id);
    if (st != FLP_OK)
        return st;
    if (!child_seq_id)
        return flp_page_table_fail(table, FLP_ERROR_INVALID_ARGUMENT, "%s: child_seq_id is NULL",
                                   what);
    if (table->free_seq_ids.count == 0)
        return flp_page_table_fail(
            table, FLP_ERROR_CAPACITY,
            "%s: all %d sequences (max_sequences) are live, cannot fork sequence %d", what,
            table->max_sequences, parent_seq_id);
    /* The child's id is the heap top; reserve its page list before taking the id. */
    int32_t id = table->free_seq_ids.items[0];
    const pt_sequence *parent = &table->sequences[parent_seq_id];
    pt_sequence *child = &table->sequences[id];
    st = reserve_pages(table, child, parent->num_pages, what);
    if (st != FLP_OK)
        return st;

    heap_pop(&table->free_seq_ids);
    child->live = true;
    child->num_tokens = parent->num_tokens;
    child->num_pages = parent->num_pages;
    for (int32_t i = 0; i < parent->num_pages; i++) {
        child->pages[i] = parent->pages[i];
        table->refcount[parent->pages[i]]++;
    }
    *child_seq_id = id;
    return FLP_OK;
}

flp_status flp_page_table_free_sequence(flp_page_table *table, int32_t seq_id) {
    if (!table)
        return FLP_ERROR_INVALID_ARGUMENT;
    flp_page_table_clear_error(table);
    flp_status st = check_sequence(table, "flp_page_table_free_sequence", seq_id);
    if (st != FLP_OK)
        return st;
    pt_sequence *seq = &table->sequences[seq_id];
    for (int32_t i = 0; i < seq->num_pages; i++)
        release_page(table, seq->pages[i]);
    flp_free(seq->pages);
    memset(seq, 0, sizeof *seq);
    heap_push(&table->free_seq_ids, seq_id);
    return FLP_OK;
}

/* ---- queries -------------------------------------------------------------------------- */

flp_status flp_page_table_sequence_length(const flp_page_table *table, int32_t seq_id,
                                          int32_t *num_tokens) {
    static const char what[] = "flp_page_table_sequence_length";
    if (!table)
        return FLP_ERROR_INVALID_ARGUMENT;
    flp_page_table_clear_error(table);
    flp_status st = check_sequence(table, what, seq_id);
    if (st != FLP_OK)
        return st;
    if (!num_tokens)
        return flp_page_table_fail(table, FLP_ERROR_INVALID_ARGUMENT, "%s: num_tokens is NULL",
                                   what);
    *num_tokens = table->sequences[seq_id].num_tokens;
    return FLP_OK;
}

int32_t flp_page_table_free_pages(const flp_page_table *table) {
    if (!table)
        return (int32_t)FLP_ERROR_INVALID_ARGUMENT; /* negative: no table */
    return table->free_pages.count;
}

flp_status flp_page_table_locate(const flp_page_table *table, int32_t seq_id, int32_t token,
                                 int32_t *page, int32_t *slot) {
    static const char what[] = "flp_page_table_locate";
    if (!table)
        return FLP_ERROR_INVALID_ARGUMENT;
    flp_page_table_clear_error(table);
    flp_status st = check_sequence(table, what, seq_id);
    if (st != FLP_OK)
        return st;
    const pt_sequence *seq = &table->sequences[seq_id];
    if (token < 0 || token >= seq->num_tokens)
        return flp_page_table_fail(table, FLP_ERROR_INVALID_ARGUMENT,
                                   "%s: token %d out of range [0, %d) of sequence %d", what, token,
                                   seq->num_tokens, seq_id);
    if (!page || !slot)
        return flp_page_table_fail(table, FLP_ERROR_INVALID_ARGUMENT, "%s: %s is NULL", what,
                                   !page ? "page" : "slot");
    *page = seq->pages[token / table->page_size];
    *slot = token % table->page_size;
    return FLP_OK;
}

flp_status flp_page_table_export(const flp_page_table *table, const int32_t *seq_ids,
                                 int32_t num_seqs, int32_t *kv_indptr, int32_t *kv_indices,
                                 int32_t indices_capacity, int32_t *kv_last_page_len) {
    static const char what[] = "flp_page_table_export";
    if (!table)
        return FLP_ERROR_INVALID_ARGUMENT;
    flp_page_table_clear_error(table);
    if (num_seqs < 0)
        return flp_page_table_fail(table, FLP_ERROR_INVALID_ARGUMENT, "%s: num_seqs %d is negative",
                                   what, num_seqs);
    if (indices_capacity < 0)
        return flp_page_table_fail(table, FLP_ERROR_INVALID_ARGUMENT,
                                   "%s: indices_capacity %d is negative", what, indices_capacity);
    if (!kv_indptr)
        return flp_page_table_fail(table, FLP_ERROR_INVALID_ARGUMENT, "%s: kv_indptr is NULL",
                                   what);
    if (num_seqs > 0 && (!seq_ids || !kv_last_page_len))
        return flp_page_table_fail(table, FLP_ERROR_INVALID_ARGUMENT,
                                   "%s: %s is NULL with num_seqs %d", what,
                                   !seq_ids ? "seq_ids" : "kv_last_page_len", num_seqs);
    /* Validate every id and count the pages before writing anything. A sequence may be listed
     * more than once; its pages are then exported more than once. */
    int64_t total = 0;
    for (int32_t b = 0; b < num_seqs; b++) {
        if (seq_ids[b] < 0 || seq_ids[b] >= table->max_sequences ||
            !table->sequences[seq_ids[b]].live)
            return flp_page_table_fail(table, FLP_ERROR_INVALID_ARGUMENT,
                                       "%s: seq_ids[%d] = %d is not a live sequence", what, b,
                                       seq_ids[b]);
        total += table->sequences[seq_ids[b]].num_pages;
    }
    if (total > indices_capacity)
        return flp_page_table_fail(table, FLP_ERROR_CAPACITY,
                                   "%s: %lld pages exceed indices_capacity %d", what,
                                   (long long)total, indices_capacity);
    if (total > 0 && !kv_indices)
        return flp_page_table_fail(table, FLP_ERROR_INVALID_ARGUMENT,
                                   "%s: kv_indices is NULL with %lld pages", what,
                                   (long long)total);

    int32_t at = 0;
    kv_indptr[0] = 0;
    for (int32_t b = 0; b < num_seqs; b++) {
        const pt_sequence *seq = &table->sequences[seq_ids[b]];
        for (int32_t i = 0; i < seq->num_pages; i++)
            kv_indices[at++] = seq->pages[i];
        kv_indptr[b + 1] = at;
        kv_last_page_len[b] =
            seq->num_tokens - (seq->num_pages > 0 ? (seq->num_pages - 1) * table->page_size : 0);
    }
    return FLP_OK;
}
