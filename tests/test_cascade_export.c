/* Tests of flp_page_table_export_cascade (core/cascade_export.c), host only.
 *
 * Every export is checked three ways:
 * - invariants read off the output alone: for every sequence, its groups' pages, level by level,
 *   concatenate to exactly its page list from flp_page_table_export; each level's qo_indptr runs
 *   from 0 to the batch's rows, non-decreasing, keeping each sequence's rows in one group and the
 *   sequences in order; the last level has one group per sequence with its rows; shared pages
 *   lie wholly before the sequence's first query token; kv_last_page_len is page_size at shared
 *   levels and the true last-page length at the last; nothing past the groups is written;
 * - properties of the sharing: level 0 groups exactly the maximal runs of neighbours that share
 *   pages, each taking the run's longest common prefix; a sequence that shares nothing with its
 *   neighbours gets empty groups; with enough levels every page two neighbours share is shared;
 * - exact arrays against a model written from the header's description.
 * Fork trees built by hand (with hand-derived group shapes) and seeded random forests feed it;
 * bad arguments each give their status and a message naming the bad value. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "flashport/flashport.h"
#include "tests/test_util.h"

#define POISON (-777)
#define MAX_SEQS 48
#define MAX_LEVELS FLP_CASCADE_MAX_LEVELS
#define BIG_CAPACITY 8192 /* page ids per level, more than any test's batch holds */

/* What the current check is about ("tree, qo_lens NULL, 3 levels"), printed on failure. */
static char g_case[256];

static void set_case(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void set_case(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_case, sizeof g_case, fmt, ap);
    va_end(ap);
}

#define CHECK_EQ(got, want, ...)                                                                   \
    do {                                                                                           \
        const long long got_ = (long long)(got), want_ = (long long)(want);                        \
        if (got_ != want_) {                                                                       \
            char what_[256];                                                                       \
            snprintf(what_, sizeof what_, __VA_ARGS__);                                            \
            fail_msg("%s: %s: got %lld, want %lld", g_case, what_, got_, want_);                   \
        }                                                                                          \
    } while (0)

#define CHECK_TRUE(cond, ...)                                                                      \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            char what_[256];                                                                       \
            snprintf(what_, sizeof what_, __VA_ARGS__);                                            \
            fail_msg("%s: %s (%s is false)", g_case, what_, #cond);                                \
        }                                                                                          \
    } while (0)

/* ---- page table helpers --------------------------------------------------------------- */

static flp_page_table *make_table(int32_t num_pages, int32_t page_size) {
    const flp_page_table_desc desc = {
        .num_pages = num_pages, .page_size = page_size, .max_sequences = 64};
    flp_page_table *t = NULL;
    assert_int_equal(flp_page_table_create(&desc, &t), FLP_OK);
    assert_non_null(t);
    return t;
}

static int32_t new_seq(flp_page_table *t) {
    int32_t id = POISON;
    assert_int_equal(flp_page_table_create_sequence(t, &id), FLP_OK);
    assert_true(id >= 0);
    return id;
}

static int32_t fork_seq(flp_page_table *t, int32_t parent) {
    int32_t id = POISON;
    if (flp_page_table_fork(t, parent, &id) != FLP_OK)
        fail_msg("fork of %d: %s", parent, flp_page_table_last_error(t));
    assert_true(id >= 0);
    return id;
}

/* Appends n tokens to seq; *src and *dst get the copy-on-write pages (-1 when none). */
static void append_cow(flp_page_table *t, int32_t seq, int32_t n, int32_t *src, int32_t *dst) {
    *src = *dst = POISON;
    if (flp_page_table_append(t, seq, n, src, dst) != FLP_OK)
        fail_msg("append of %d tokens to %d: %s", n, seq, flp_page_table_last_error(t));
    assert_int_not_equal(*src, POISON);
    assert_int_not_equal(*dst, POISON);
}

/* Appends n tokens to seq, expecting no copy-on-write. */
static void append_plain(flp_page_table *t, int32_t seq, int32_t n) {
    int32_t src, dst;
    append_cow(t, seq, n, &src, &dst);
    assert_int_equal(src, -1);
    assert_int_equal(dst, -1);
}

static int32_t seq_length(const flp_page_table *t, int32_t seq) {
    int32_t len = POISON;
    assert_int_equal(flp_page_table_sequence_length(t, seq, &len), FLP_OK);
    return len;
}

/* Page id of seq's page index. */
static int32_t page_at(const flp_page_table *t, int32_t page_size, int32_t seq, int32_t index) {
    int32_t page = POISON, slot = POISON;
    assert_int_equal(flp_page_table_locate(t, seq, index * page_size, &page, &slot), FLP_OK);
    assert_int_equal(slot, 0);
    return page;
}

static void expect_error_mentions(const flp_page_table *t, const char *text) {
    const char *msg = flp_page_table_last_error(t);
    if (!strstr(msg, text))
        fail_msg("%s: last error \"%s\" does not mention \"%s\"", g_case, msg, text);
}

/* ---- a batch: the sequences as flp_page_table_export sees them ------------------------ */

typedef struct batch {
    int32_t n, page_size, total_rows;
    int32_t ids[MAX_SEQS];
    int32_t qo[MAX_SEQS]; /* query rows (qo_lens, or 1 each) */
    int32_t row_start[MAX_SEQS + 1];
    int32_t tokens[MAX_SEQS];
    int32_t indptr[MAX_SEQS + 1]; /* sequence i's pages: pages[indptr[i] .. indptr[i + 1]) */
    int32_t last_len[MAX_SEQS];
    int32_t pages[BIG_CAPACITY];
} batch;

static batch *load_batch(const flp_page_table *t, int32_t page_size, const int32_t *ids, int32_t n,
                         const int32_t *qo_lens) {
    assert_true(n >= 1 && n <= MAX_SEQS);
    batch *b = calloc(1, sizeof *b);
    assert_non_null(b);
    b->n = n;
    b->page_size = page_size;
    memcpy(b->ids, ids, (size_t)n * sizeof *ids);
    assert_int_equal(
        flp_page_table_export(t, ids, n, b->indptr, b->pages, BIG_CAPACITY, b->last_len), FLP_OK);
    b->row_start[0] = 0;
    for (int32_t i = 0; i < n; i++) {
        b->tokens[i] = seq_length(t, ids[i]);
        b->qo[i] = qo_lens ? qo_lens[i] : 1;
        b->row_start[i + 1] = b->row_start[i] + b->qo[i];
    }
    b->total_rows = b->row_start[n];
    return b;
}

static const int32_t *seq_pages(const batch *b, int32_t i) {
    return b->pages + b->indptr[i];
}

static int32_t seq_num_pages(const batch *b, int32_t i) {
    return b->indptr[i + 1] - b->indptr[i];
}

/* Whole pages of sequence i before its first query token. */
static int32_t shareable(const batch *b, int32_t i) {
    return (b->tokens[i] - b->qo[i]) / b->page_size;
}

/* Leading pages sequences i and i + 1 hold in common, all of them before both first queries. */
static int32_t lcp(const batch *b, int32_t i) {
    const int32_t limit =
        shareable(b, i) < shareable(b, i + 1) ? shareable(b, i) : shareable(b, i + 1);
    int32_t n = 0;
    while (n < limit && seq_pages(b, i)[n] == seq_pages(b, i + 1)[n])
        n++;
    return n;
}

/* ---- the export's arrays -------------------------------------------------------------- */

typedef struct levels_buf {
    int32_t qo_indptr[MAX_LEVELS][MAX_SEQS + 1];
    int32_t kv_indptr[MAX_LEVELS][MAX_SEQS + 1];
    int32_t last[MAX_LEVELS][MAX_SEQS];
    int32_t indices[MAX_LEVELS][BIG_CAPACITY];
    flp_cascade_export_level storage[MAX_LEVELS];
    flp_cascade_level levels[MAX_LEVELS];
    /* the model's answer only */
    int32_t num_groups[MAX_LEVELS];
    int32_t group_of[MAX_LEVELS][MAX_SEQS];
} levels_buf;

/* Poisons everything; every level gets capacity page ids. */
static void buf_reset(levels_buf *b, int32_t capacity) {
    for (int32_t l = 0; l < MAX_LEVELS; l++) {
        for (int32_t i = 0; i <= MAX_SEQS; i++)
            b->qo_indptr[l][i] = b->kv_indptr[l][i] = POISON;
        for (int32_t i = 0; i < MAX_SEQS; i++)
            b->last[l][i] = b->group_of[l][i] = POISON;
        for (int32_t i = 0; i < BIG_CAPACITY; i++)
            b->indices[l][i] = POISON;
        b->storage[l] = (flp_cascade_export_level){.qo_indptr = b->qo_indptr[l],
                                                   .kv_indptr = b->kv_indptr[l],
                                                   .kv_indices = b->indices[l],
                                                   .indices_capacity = capacity,
                                                   .kv_last_page_len = b->last[l]};
        b->levels[l] = (flp_cascade_level){.num_groups = POISON};
        b->num_groups[l] = POISON;
    }
}

static levels_buf *buf_new(void) {
    levels_buf *b = malloc(sizeof *b);
    assert_non_null(b);
    buf_reset(b, BIG_CAPACITY);
    return b;
}

/* True when nothing of b was written since buf_reset. */
static bool buf_untouched(const levels_buf *b) {
    for (int32_t l = 0; l < MAX_LEVELS; l++) {
        if (b->levels[l].num_groups != POISON || b->levels[l].qo_indptr)
            return false;
        for (int32_t i = 0; i <= MAX_SEQS; i++)
            if (b->qo_indptr[l][i] != POISON || b->kv_indptr[l][i] != POISON)
                return false;
        for (int32_t i = 0; i < MAX_SEQS; i++)
            if (b->last[l][i] != POISON)
                return false;
        for (int32_t i = 0; i < BIG_CAPACITY; i++)
            if (b->indices[l][i] != POISON)
                return false;
    }
    return true;
}

/* ---- the model ------------------------------------------------------------------------ */

/* The levels as the header describes them: level l < L - 1 cuts each group of level l - 1
 * (level -1: one group of everything) into maximal runs of neighbours that share more whole
 * pages, before both first queries, than the run has taken; a run of two or more takes its
 * common pages beyond those, a lone sequence gets an empty group. The last level: the rest. */
static void model(const batch *b, int32_t num_levels, levels_buf *e) {
    buf_reset(e, BIG_CAPACITY);
    const int32_t n = b->n;
    int32_t taken[MAX_SEQS], prev[MAX_SEQS], share[MAX_SEQS];
    for (int32_t i = 0; i < n; i++) {
        taken[i] = 0;
        prev[i] = 0;
        share[i] = i + 1 < n ? lcp(b, i) : 0;
    }
    for (int32_t l = 0; l + 1 < num_levels; l++) {
        int32_t g = 0, pages = 0;
        e->qo_indptr[l][0] = 0;
        e->kv_indptr[l][0] = 0;
        for (int32_t i = 0; i < n;) {
            int32_t j = i, depth = taken[i];
            while (j + 1 < n && prev[j + 1] == prev[i] && share[j] > taken[i]) {
                depth = j == i || share[j] < depth ? share[j] : depth;
                j++;
            }
            for (int32_t p = taken[i]; p < depth; p++)
                e->indices[l][pages++] = seq_pages(b, i)[p];
            e->last[l][g] = b->page_size;
            e->qo_indptr[l][g + 1] = b->row_start[j + 1];
            e->kv_indptr[l][g + 1] = pages;
            for (int32_t k = i; k <= j; k++) {
                e->group_of[l][k] = g;
                taken[k] = depth;
            }
            g++;
            i = j + 1;
        }
        e->num_groups[l] = g;
        memcpy(prev, e->group_of[l], (size_t)n * sizeof *prev);
    }
    const int32_t l = num_levels - 1;
    int32_t pages = 0;
    e->qo_indptr[l][0] = 0;
    e->kv_indptr[l][0] = 0;
    for (int32_t i = 0; i < n; i++) {
        for (int32_t p = taken[i]; p < seq_num_pages(b, i); p++)
            e->indices[l][pages++] = seq_pages(b, i)[p];
        e->last[l][i] = b->last_len[i];
        e->qo_indptr[l][i + 1] = b->row_start[i + 1];
        e->kv_indptr[l][i + 1] = pages;
        e->group_of[l][i] = i;
    }
    e->num_groups[l] = n;
}

/* ---- the checks ----------------------------------------------------------------------- */

/* Checks got (an export of b in num_levels levels, capacities as its storage says) against
 * every invariant and the model. */
static void verify(const batch *b, int32_t num_levels, const levels_buf *got) {
    levels_buf *want = buf_new();
    model(b, num_levels, want);
    const int32_t n = b->n, ps = b->page_size;
    int32_t pos[MAX_SEQS] = {0};      /* pages of sequence i seen so far, level by level */
    int32_t shared[MAX_SEQS] = {0};   /* pages of sequence i at shared levels */
    int32_t group_of[MAX_SEQS] = {0}; /* group of sequence i at the level being checked */
    int32_t members[MAX_SEQS] = {0};  /* sequences of each group of that level */
    for (int32_t l = 0; l < MAX_LEVELS; l++) {
        const flp_cascade_level *lv = &got->levels[l];
        if (l >= num_levels) {
            CHECK_EQ(lv->num_groups, POISON, "levels[%d], past num_levels, was written", l);
            continue;
        }
        const flp_cascade_export_level *st = &got->storage[l];
        const bool is_last = l == num_levels - 1;
        const int32_t groups = lv->num_groups;
        CHECK_TRUE(lv->qo_indptr == st->qo_indptr && lv->kv_indptr == st->kv_indptr &&
                       lv->kv_indices == st->kv_indices &&
                       lv->kv_last_page_len == st->kv_last_page_len,
                   "level %d points into storage[%d]", l, l);
        CHECK_TRUE(groups >= 1 && groups <= n, "level %d: %d groups for %d sequences", l, groups,
                   n);
        if (is_last)
            CHECK_EQ(groups, n, "last level %d: one group per sequence", l);
        CHECK_EQ(groups, want->num_groups[l], "level %d: groups (model)", l);

        /* qo_indptr: 0 .. rows, non-decreasing, nothing written past it */
        CHECK_EQ(st->qo_indptr[0], 0, "level %d: qo_indptr[0]", l);
        for (int32_t g = 0; g < groups; g++)
            CHECK_TRUE(st->qo_indptr[g] <= st->qo_indptr[g + 1],
                       "level %d: qo_indptr non-decreasing at group %d", l, g);
        CHECK_EQ(st->qo_indptr[groups], b->total_rows, "level %d: qo_indptr[%d] = rows", l, groups);
        for (int32_t g = groups + 1; g <= MAX_SEQS; g++)
            CHECK_EQ(got->qo_indptr[l][g], POISON, "level %d: qo_indptr[%d] written", l, g);
        /* kv_indptr: 0 .. pages <= capacity, non-decreasing */
        CHECK_EQ(st->kv_indptr[0], 0, "level %d: kv_indptr[0]", l);
        for (int32_t g = 0; g < groups; g++)
            CHECK_TRUE(st->kv_indptr[g] <= st->kv_indptr[g + 1],
                       "level %d: kv_indptr non-decreasing at group %d", l, g);
        const int32_t pages = st->kv_indptr[groups];
        CHECK_TRUE(pages <= st->indices_capacity, "level %d: %d pages within capacity %d", l, pages,
                   st->indices_capacity);
        for (int32_t g = groups + 1; g <= MAX_SEQS; g++)
            CHECK_EQ(got->kv_indptr[l][g], POISON, "level %d: kv_indptr[%d] written", l, g);
        for (int32_t p = pages; p < BIG_CAPACITY; p++)
            CHECK_EQ(got->indices[l][p], POISON, "level %d: kv_indices[%d] past the pages", l, p);
        /* kv_last_page_len */
        for (int32_t g = 0; g < groups; g++) {
            const int32_t len = st->kv_last_page_len[g];
            CHECK_TRUE(len >= 1 && len <= ps, "level %d: kv_last_page_len[%d] = %d in 1..%d", l, g,
                       len, ps);
            if (!is_last && st->kv_indptr[g + 1] > st->kv_indptr[g])
                CHECK_EQ(len, ps, "shared level %d: kv_last_page_len[%d] of whole pages", l, g);
        }
        for (int32_t g = groups; g < MAX_SEQS; g++)
            CHECK_EQ(got->last[l][g], POISON, "level %d: kv_last_page_len[%d] written", l, g);

        /* the model's exact arrays */
        for (int32_t g = 0; g <= groups; g++) {
            CHECK_EQ(st->qo_indptr[g], want->qo_indptr[l][g], "level %d: qo_indptr[%d] (model)", l,
                     g);
            CHECK_EQ(st->kv_indptr[g], want->kv_indptr[l][g], "level %d: kv_indptr[%d] (model)", l,
                     g);
        }
        for (int32_t p = 0; p < pages; p++)
            CHECK_EQ(st->kv_indices[p], want->indices[l][p], "level %d: kv_indices[%d] (model)", l,
                     p);
        for (int32_t g = 0; g < groups; g++)
            if (st->kv_indptr[g + 1] > st->kv_indptr[g])
                CHECK_EQ(st->kv_last_page_len[g], want->last[l][g],
                         "level %d: kv_last_page_len[%d] (model)", l, g);

        /* each sequence's group: the one holding its rows (sequences without rows: the
         * model's, which must agree with the row boundaries) */
        for (int32_t g = 0; g < groups; g++)
            members[g] = 0;
        for (int32_t i = 0; i < n; i++) {
            const int32_t r0 = b->row_start[i], r1 = b->row_start[i + 1];
            int32_t g = 0;
            if (b->qo[i] > 0) {
                while (g < groups && st->qo_indptr[g + 1] <= r0)
                    g++;
                CHECK_TRUE(g < groups, "level %d: row %d of sequence %d in no group", l, r0, i);
                CHECK_TRUE(r1 <= st->qo_indptr[g + 1],
                           "level %d: rows %d..%d of sequence %d split across groups", l, r0,
                           r1 - 1, i);
            } else {
                g = want->group_of[l][i];
                CHECK_TRUE(st->qo_indptr[g] <= r0 && r0 <= st->qo_indptr[g + 1],
                           "level %d: sequence %d (no rows) at row %d outside its group %d", l, i,
                           r0, g);
            }
            if (is_last)
                CHECK_EQ(g, i, "last level %d: group of sequence %d", l, i);
            if (i > 0)
                CHECK_TRUE(g >= group_of[i - 1], "level %d: sequence %d in group %d before %d", l,
                           i, g, group_of[i - 1]);
            group_of[i] = g;
            members[g]++;
            /* its pages continue the sequence's page list */
            for (int32_t p = st->kv_indptr[g]; p < st->kv_indptr[g + 1]; p++) {
                CHECK_TRUE(pos[i] < seq_num_pages(b, i),
                           "level %d: sequence %d gets more than its %d pages", l, i,
                           seq_num_pages(b, i));
                CHECK_EQ(st->kv_indices[p], seq_pages(b, i)[pos[i]],
                         "level %d: page %d of sequence %d (id %d)", l, pos[i], i, b->ids[i]);
                pos[i]++;
            }
            if (!is_last) {
                CHECK_TRUE(pos[i] <= shareable(b, i),
                           "level %d: sequence %d (%d tokens, %d queries, page size %d) shares %d "
                           "pages, not all before its first query",
                           l, i, b->tokens[i], b->qo[i], ps, pos[i]);
                shared[i] = pos[i];
            } else {
                CHECK_EQ(pos[i], seq_num_pages(b, i), "sequence %d: pages over all levels", i);
                const int32_t own = st->kv_indptr[i + 1] - st->kv_indptr[i];
                if (b->qo[i] > 0)
                    CHECK_TRUE(own >= 1, "last level: sequence %d with queries has no pages", i);
                if (own > 0)
                    CHECK_EQ(st->kv_last_page_len[i], b->last_len[i],
                             "last level: kv_last_page_len of sequence %d", i);
                CHECK_EQ(st->qo_indptr[i + 1] - st->qo_indptr[i], b->qo[i],
                         "last level: rows of sequence %d", i);
            }
        }
        /* a shared group with pages serves two sequences or more */
        if (!is_last)
            for (int32_t g = 0; g < groups; g++)
                if (st->kv_indptr[g + 1] > st->kv_indptr[g])
                    CHECK_TRUE(members[g] >= 2, "level %d: group %d has pages for %d sequence", l,
                               g, members[g]);
        /* level 0 (of two or more): the maximal runs of sharing neighbours, each taking its
         * longest common prefix */
        if (l == 0 && !is_last) {
            int32_t depth = 0;
            for (int32_t i = 0; i < n; i++) {
                const bool joined = i > 0 && group_of[i] == group_of[i - 1];
                if (i > 0)
                    CHECK_EQ(joined, lcp(b, i - 1) > 0,
                             "level 0: sequences %d and %d (sharing %d pages) in one group", i - 1,
                             i, lcp(b, i - 1));
                depth = !joined ? (i + 1 < n ? lcp(b, i) : 0)
                                : (lcp(b, i - 1) < depth ? lcp(b, i - 1) : depth);
                if (i + 1 == n || group_of[i + 1] != group_of[i]) {
                    if (!joined)
                        depth = 0; /* alone */
                    CHECK_EQ(shared[i], depth, "level 0: pages of the group of sequence %d", i);
                }
            }
        }
    }
    /* sharing: a sequence sharing nothing with its neighbours gets nothing at shared levels;
     * with at least as many shared levels as distinct sharing depths, every page two neighbours
     * share is shared */
    int32_t depths[MAX_SEQS], num_depths = 0;
    for (int32_t i = 0; i + 1 < n; i++) {
        const int32_t d = lcp(b, i);
        bool seen = d == 0;
        for (int32_t k = 0; k < num_depths && !seen; k++)
            seen = depths[k] == d;
        if (!seen)
            depths[num_depths++] = d;
    }
    for (int32_t i = 0; i < n; i++) {
        const int32_t left = i > 0 ? lcp(b, i - 1) : 0, right = i + 1 < n ? lcp(b, i) : 0;
        if (left == 0 && right == 0)
            CHECK_EQ(shared[i], 0, "sequence %d shares nothing: pages at shared levels", i);
        if (num_levels - 1 >= num_depths) {
            CHECK_TRUE(shared[i] >= left && shared[i] >= right,
                       "%d shared levels, %d depths: sequence %d shares %d pages, its neighbours "
                       "%d and %d",
                       num_levels - 1, num_depths, i, shared[i], left, right);
        }
    }
    free(want);
}

/* Exports ids in num_levels levels into buf (capacities BIG_CAPACITY) and verifies it; also
 * that the table is unchanged and a second export is identical. Returns the batch (free it). */
static batch *export_checked(const flp_page_table *t, int32_t page_size, const int32_t *ids,
                             int32_t n, const int32_t *qo_lens, int32_t num_levels,
                             levels_buf *buf) {
    batch *b = load_batch(t, page_size, ids, n, qo_lens);
    const int32_t free_pages = flp_page_table_free_pages(t);
    buf_reset(buf, BIG_CAPACITY);
    const flp_status st =
        flp_page_table_export_cascade(t, ids, n, qo_lens, num_levels, buf->storage, buf->levels);
    if (st != FLP_OK)
        fail_msg("%s: export failed (%s): %s", g_case, flp_status_string(st),
                 flp_page_table_last_error(t));
    assert_string_equal(flp_page_table_last_error(t), "");
    verify(b, num_levels, buf);

    assert_int_equal(flp_page_table_free_pages(t), free_pages);
    batch *again = load_batch(t, page_size, ids, n, qo_lens);
    assert_memory_equal(again->indptr, b->indptr, sizeof b->indptr);
    assert_memory_equal(again->pages, b->pages, sizeof b->pages);
    free(again);
    levels_buf *second = buf_new();
    assert_int_equal(flp_page_table_export_cascade(t, ids, n, qo_lens, num_levels, second->storage,
                                                   second->levels),
                     FLP_OK);
    assert_memory_equal(second->qo_indptr, buf->qo_indptr, sizeof buf->qo_indptr);
    assert_memory_equal(second->kv_indptr, buf->kv_indptr, sizeof buf->kv_indptr);
    assert_memory_equal(second->last, buf->last, sizeof buf->last);
    assert_memory_equal(second->indices, buf->indices, sizeof buf->indices);
    free(second);
    return b;
}

/* Group g of level l of buf holds rows [r0, r1) and pages[num_pages]. */
static void expect_group(const levels_buf *buf, int32_t l, int32_t g, int32_t r0, int32_t r1,
                         const int32_t *pages, int32_t num_pages) {
    const flp_cascade_level *lv = &buf->levels[l];
    CHECK_TRUE(g < lv->num_groups, "level %d has group %d", l, g);
    CHECK_EQ(lv->qo_indptr[g], r0, "level %d group %d: first row", l, g);
    CHECK_EQ(lv->qo_indptr[g + 1], r1, "level %d group %d: row end", l, g);
    CHECK_EQ(lv->kv_indptr[g + 1] - lv->kv_indptr[g], num_pages, "level %d group %d: pages", l, g);
    for (int32_t p = 0; p < num_pages; p++)
        CHECK_EQ(lv->kv_indices[lv->kv_indptr[g] + p], pages[p], "level %d group %d: page %d", l, g,
                 p);
}

/* ---- a tree of forks ------------------------------------------------------------------ */

/* page size 16; root: a 100-token prompt (pages 0..5 whole, page 6 with 4 tokens); children
 * c0..c3 forked from it append 12, 3, 40 and 28 tokens, each copying the shared partial page 6
 * on write; c0 (112 tokens, 7 whole pages) forks g00 (+5) and g01 (+20), no copy; c2 (140
 * tokens) forks g20 (+9, copies page 8) and g21 (no tokens of its own), then appends 4 (copies
 * page 8 again, which g21 still holds). */
enum { C0, G00, G01, C1, C2, G20, G21, C3, TREE_SEQS };

typedef struct tree {
    flp_page_table *t;
    int32_t root;
    int32_t seq[TREE_SEQS]; /* ids, in tree order */
    int32_t root_pages[7];
} tree;

#define TREE_PS 16

static void build_tree(tree *tr) {
    flp_page_table *t = make_table(256, TREE_PS);
    tr->t = t;
    tr->root = new_seq(t);
    append_plain(t, tr->root, 100);
    for (int32_t p = 0; p < 7; p++)
        tr->root_pages[p] = page_at(t, TREE_PS, tr->root, p);
    const int32_t children[4] = {C0, C1, C2, C3}, adds[4] = {12, 3, 40, 28};
    for (int32_t k = 0; k < 4; k++)
        tr->seq[children[k]] = fork_seq(t, tr->root);
    for (int32_t k = 0; k < 4; k++) {
        const int32_t c = tr->seq[children[k]];
        int32_t src, dst;
        append_cow(t, c, adds[k], &src, &dst);
        assert_int_equal(src, tr->root_pages[6]); /* the root still holds it */
        assert_true(dst >= 0 && dst != src);
        assert_int_equal(page_at(t, TREE_PS, c, 6), dst);
        assert_int_equal(page_at(t, TREE_PS, tr->root, 6), tr->root_pages[6]);
        for (int32_t p = 0; p < 6; p++)
            assert_int_equal(page_at(t, TREE_PS, c, p), tr->root_pages[p]);
    }
    tr->seq[G00] = fork_seq(t, tr->seq[C0]);
    tr->seq[G01] = fork_seq(t, tr->seq[C0]);
    append_plain(t, tr->seq[G00], 5);  /* c0's last page is full: a fresh page */
    append_plain(t, tr->seq[G01], 20); /* two fresh pages */
    tr->seq[G20] = fork_seq(t, tr->seq[C2]);
    tr->seq[G21] = fork_seq(t, tr->seq[C2]);
    const int32_t c2_page8 = page_at(t, TREE_PS, tr->seq[C2], 8);
    int32_t src, dst;
    append_cow(t, tr->seq[G20], 9, &src, &dst);
    assert_int_equal(src, c2_page8);
    append_cow(t, tr->seq[C2], 4, &src, &dst);
    assert_int_equal(src, c2_page8); /* g21 holds it still */
    assert_true(dst >= 0 && dst != c2_page8);
    const int32_t tokens[TREE_SEQS] = {112, 117, 132, 103, 144, 149, 140, 128};
    for (int32_t i = 0; i < TREE_SEQS; i++)
        assert_int_equal(seq_length(t, tr->seq[i]), tokens[i]);
}

static void test_tree_one_level(void **state) {
    (void)state;
    tree tr;
    build_tree(&tr);
    levels_buf *buf = buf_new();
    const int32_t qo[TREE_SEQS] = {0, 2, 17, 3, 1, 5, 9, 28};
    for (int32_t v = 0; v < 2; v++) {
        set_case("tree, 1 level, qo_lens %s", v ? "given" : "NULL");
        const int32_t *qo_lens = v ? qo : NULL;
        batch *b = export_checked(tr.t, TREE_PS, tr.seq, TREE_SEQS, qo_lens, 1, buf);
        /* one level: the plain export, one group per sequence */
        CHECK_EQ(buf->levels[0].num_groups, TREE_SEQS, "groups");
        for (int32_t i = 0; i < TREE_SEQS; i++)
            expect_group(buf, 0, i, b->row_start[i], b->row_start[i + 1], seq_pages(b, i),
                         seq_num_pages(b, i));
        free(b);
    }
    free(buf);
    flp_page_table_destroy(tr.t);
}

static void test_tree_two_levels(void **state) {
    (void)state;
    tree tr;
    build_tree(&tr);
    levels_buf *buf = buf_new();

    /* One query each: every sequence holds the root's 6 whole pages, shared by all. */
    set_case("tree, 2 levels, qo_lens NULL");
    batch *b = export_checked(tr.t, TREE_PS, tr.seq, TREE_SEQS, NULL, 2, buf);
    CHECK_EQ(buf->levels[0].num_groups, 1, "level 0 groups");
    expect_group(buf, 0, 0, 0, TREE_SEQS, tr.root_pages, 6);
    for (int32_t i = 0; i < TREE_SEQS; i++)
        expect_group(buf, 1, i, i, i + 1, seq_pages(b, i) + 6, seq_num_pages(b, i) - 6);
    free(b);

    /* Queries of several rows; c0's first query is past its 7 whole pages, but the others' are
     * not: still the 6 root pages for all. */
    const int32_t qo[TREE_SEQS] = {0, 2, 17, 3, 1, 5, 9, 28};
    set_case("tree, 2 levels, qo_lens {0, 2, 17, 3, 1, 5, 9, 28}");
    b = export_checked(tr.t, TREE_PS, tr.seq, TREE_SEQS, qo, 2, buf);
    CHECK_EQ(buf->levels[0].num_groups, 1, "level 0 groups");
    expect_group(buf, 0, 0, 0, 65, tr.root_pages, 6);
    free(b);

    /* c1 all queries (103 rows): it shares nothing, splitting level 0 in two runs that each take
     * their longest common prefix: c0 and its children 7 pages (the root's 6 and c0's copy of page
     * 6), c2, its children and c3 the root's 6. */
    const int32_t qo2[TREE_SEQS] = {0, 2, 17, 103, 1, 5, 9, 28};
    set_case("tree, 2 levels, c1 all queries");
    b = export_checked(tr.t, TREE_PS, tr.seq, TREE_SEQS, qo2, 2, buf);
    CHECK_EQ(buf->levels[0].num_groups, 3, "level 0 groups");
    expect_group(buf, 0, 0, 0, 19, seq_pages(b, C0), 7);
    expect_group(buf, 0, 1, 19, 122, NULL, 0);
    expect_group(buf, 0, 2, 122, 165, tr.root_pages, 6);
    expect_group(buf, 1, C1, 19, 122, seq_pages(b, C1), 7); /* all its own */
    free(b);

    /* Every token a query: nothing shareable, one empty group per sequence at level 0. */
    int32_t all[TREE_SEQS];
    for (int32_t i = 0; i < TREE_SEQS; i++)
        all[i] = seq_length(tr.t, tr.seq[i]);
    set_case("tree, 2 levels, every token a query");
    b = export_checked(tr.t, TREE_PS, tr.seq, TREE_SEQS, all, 2, buf);
    CHECK_EQ(buf->levels[0].num_groups, TREE_SEQS, "level 0 groups");
    for (int32_t i = 0; i < TREE_SEQS; i++) {
        expect_group(buf, 0, i, b->row_start[i], b->row_start[i + 1], NULL, 0);
        expect_group(buf, 1, i, b->row_start[i], b->row_start[i + 1], seq_pages(b, i),
                     seq_num_pages(b, i));
    }
    free(b);

    /* The root itself (99 tokens before its query: 6 whole pages) joins its children. */
    int32_t with_root[TREE_SEQS + 1];
    with_root[0] = tr.root;
    memcpy(with_root + 1, tr.seq, sizeof tr.seq);
    set_case("tree with its root, 2 levels");
    b = export_checked(tr.t, TREE_PS, with_root, TREE_SEQS + 1, NULL, 2, buf);
    CHECK_EQ(buf->levels[0].num_groups, 1, "level 0 groups");
    expect_group(buf, 0, 0, 0, TREE_SEQS + 1, tr.root_pages, 6);
    expect_group(buf, 1, 0, 0, 1, tr.root_pages + 6, 1);
    free(b);
    free(buf);
    flp_page_table_destroy(tr.t);
}

static void test_tree_three_levels(void **state) {
    (void)state;
    tree tr;
    build_tree(&tr);
    levels_buf *buf = buf_new();

    /* One query each. Level 0: the root's 6 pages for all. Level 1: g00 and g01 share c0's copy
     * of page 6 (c0's own query sits in it: c0 alone); c2, g20 and g21 share c2's copy of page 6
     * and page 7 (page 8 differs or holds a query); c1 and c3 alone. */
    set_case("tree, 3 levels, qo_lens NULL");
    batch *b = export_checked(tr.t, TREE_PS, tr.seq, TREE_SEQS, NULL, 3, buf);
    CHECK_EQ(buf->levels[0].num_groups, 1, "level 0 groups");
    expect_group(buf, 0, 0, 0, TREE_SEQS, tr.root_pages, 6);
    CHECK_EQ(buf->levels[1].num_groups, 5, "level 1 groups");
    expect_group(buf, 1, 0, 0, 1, NULL, 0);                 /* c0 */
    expect_group(buf, 1, 1, 1, 3, seq_pages(b, C0) + 6, 1); /* g00, g01 */
    expect_group(buf, 1, 2, 3, 4, NULL, 0);                 /* c1 */
    expect_group(buf, 1, 3, 4, 7, seq_pages(b, C2) + 6, 2); /* c2, g20, g21 */
    expect_group(buf, 1, 4, 7, 8, NULL, 0);                 /* c3 */
    const int32_t own_from[TREE_SEQS] = {6, 7, 7, 6, 8, 8, 8, 6};
    for (int32_t i = 0; i < TREE_SEQS; i++)
        expect_group(buf, 2, i, i, i + 1, seq_pages(b, i) + own_from[i],
                     seq_num_pages(b, i) - own_from[i]);
    free(b);

    /* Several rows; c0 has none, so its 7 whole pages all lie before its (absent) queries: it
     * joins its children at level 1. */
    const int32_t qo[TREE_SEQS] = {0, 2, 17, 3, 1, 5, 9, 28};
    set_case("tree, 3 levels, qo_lens {0, 2, 17, 3, 1, 5, 9, 28}");
    b = export_checked(tr.t, TREE_PS, tr.seq, TREE_SEQS, qo, 3, buf);
    expect_group(buf, 0, 0, 0, 65, tr.root_pages, 6);
    CHECK_EQ(buf->levels[1].num_groups, 4, "level 1 groups");
    expect_group(buf, 1, 0, 0, 19, seq_pages(b, C0) + 6, 1);  /* c0, g00, g01 */
    expect_group(buf, 1, 1, 19, 22, NULL, 0);                 /* c1 */
    expect_group(buf, 1, 2, 22, 37, seq_pages(b, C2) + 6, 2); /* c2, g20, g21 */
    expect_group(buf, 1, 3, 37, 65, NULL, 0);                 /* c3 */
    free(b);

    /* Deeper than the tree: the levels past the grandchildren hold one empty group per
     * sequence, and the last level the same pages as with 3 levels. */
    for (int32_t levels = 4; levels <= MAX_LEVELS; levels++) {
        for (int32_t v = 0; v < 2; v++) {
            set_case("tree, %d levels, qo_lens %s", levels, v ? "given" : "NULL");
            levels_buf *three = buf_new();
            batch *b3 = export_checked(tr.t, TREE_PS, tr.seq, TREE_SEQS, v ? qo : NULL, 3, three);
            b = export_checked(tr.t, TREE_PS, tr.seq, TREE_SEQS, v ? qo : NULL, levels, buf);
            for (int32_t l = 0; l < 2; l++) {
                CHECK_EQ(buf->levels[l].num_groups, three->levels[l].num_groups, "level %d", l);
                for (int32_t g = 0; g <= three->levels[l].num_groups; g++)
                    CHECK_EQ(buf->qo_indptr[l][g], three->qo_indptr[l][g], "level %d", l);
            }
            for (int32_t l = 2; l < levels - 1; l++) {
                CHECK_EQ(buf->levels[l].num_groups, TREE_SEQS, "level %d groups", l);
                for (int32_t i = 0; i < TREE_SEQS; i++)
                    expect_group(buf, l, i, b->row_start[i], b->row_start[i + 1], NULL, 0);
            }
            const flp_cascade_level *last = &buf->levels[levels - 1];
            for (int32_t i = 0; i < TREE_SEQS; i++)
                expect_group(buf, levels - 1, i, b->row_start[i], b->row_start[i + 1],
                             three->levels[2].kv_indices + three->levels[2].kv_indptr[i],
                             three->levels[2].kv_indptr[i + 1] - three->levels[2].kv_indptr[i]);
            CHECK_EQ(last->kv_indptr[TREE_SEQS], three->levels[2].kv_indptr[TREE_SEQS],
                     "last level pages");
            free(b3);
            free(b);
            free(three);
        }
    }
    free(buf);
    flp_page_table_destroy(tr.t);
}

/* Orders where sharing sequences are not neighbours: still exact, they just do not share. */
static void test_order_matters(void **state) {
    (void)state;
    tree tr;
    build_tree(&tr);
    levels_buf *buf = buf_new();

    /* g00 and g01 share c0's page 6 but c1 sits between them: only the root's pages are shared,
     * each keeps c0's page 6 at the last level. */
    const int32_t ids[3] = {tr.seq[G00], tr.seq[C1], tr.seq[G01]};
    set_case("g00, c1, g01, 3 levels");
    batch *b = export_checked(tr.t, TREE_PS, ids, 3, NULL, 3, buf);
    expect_group(buf, 0, 0, 0, 3, tr.root_pages, 6);
    CHECK_EQ(buf->levels[1].num_groups, 3, "level 1 groups");
    for (int32_t i = 0; i < 3; i++) {
        expect_group(buf, 1, i, i, i + 1, NULL, 0);
        expect_group(buf, 2, i, i, i + 1, seq_pages(b, i) + 6, seq_num_pages(b, i) - 6);
    }
    CHECK_EQ(buf->levels[2].kv_indices[0], buf->levels[2].kv_indices[buf->levels[2].kv_indptr[2]],
             "g00 and g01 each hold c0's page 6");
    free(b);

    /* The tree reversed: the same runs, mirrored. */
    int32_t rev[TREE_SEQS];
    for (int32_t i = 0; i < TREE_SEQS; i++)
        rev[i] = tr.seq[TREE_SEQS - 1 - i];
    set_case("tree reversed, 3 levels");
    b = export_checked(tr.t, TREE_PS, rev, TREE_SEQS, NULL, 3, buf);
    CHECK_EQ(buf->levels[1].num_groups, 5, "level 1 groups");
    expect_group(buf, 1, 1, 1, 4, seq_pages(b, 1) + 6, 2); /* g21, g20, c2 */
    expect_group(buf, 1, 3, 5, 7, seq_pages(b, 5) + 6, 1); /* g01, g00 */
    free(b);

    /* Two unrelated families interleaved: nobody's neighbour shares with it. */
    flp_page_table *t = tr.t;
    const int32_t ra = new_seq(t), rb = new_seq(t);
    append_plain(t, ra, 70);
    append_plain(t, rb, 50);
    const int32_t a1 = fork_seq(t, ra), a2 = fork_seq(t, ra);
    const int32_t b1 = fork_seq(t, rb), b2 = fork_seq(t, rb);
    const int32_t mixed[4] = {a1, b1, a2, b2};
    for (int32_t levels = 2; levels <= 4; levels++) {
        set_case("families interleaved, %d levels", levels);
        b = export_checked(t, TREE_PS, mixed, 4, NULL, levels, buf);
        for (int32_t l = 0; l + 1 < levels; l++) {
            CHECK_EQ(buf->levels[l].num_groups, 4, "level %d groups", l);
            CHECK_EQ(buf->levels[l].kv_indptr[4], 0, "level %d pages", l);
        }
        for (int32_t i = 0; i < 4; i++)
            expect_group(buf, levels - 1, i, i, i + 1, seq_pages(b, i), seq_num_pages(b, i));
        free(b);
    }
    /* Grouped by family, each pair shares its root's whole pages before the query. */
    const int32_t grouped[4] = {a1, a2, b1, b2};
    set_case("families grouped, 2 levels");
    b = export_checked(t, TREE_PS, grouped, 4, NULL, 2, buf);
    CHECK_EQ(buf->levels[0].num_groups, 2, "level 0 groups");
    expect_group(buf, 0, 0, 0, 2, seq_pages(b, 0), 4); /* 69 tokens before the query */
    expect_group(buf, 0, 1, 2, 4, seq_pages(b, 2), 3); /* 49 */
    free(b);
    free(buf);
    flp_page_table_destroy(t);
}

/* Identical forks share all whole pages before their first query; the page holding a query
 * stays at the last level. */
static void test_identical_forks(void **state) {
    (void)state;
    flp_page_table *t = make_table(64, TREE_PS);
    levels_buf *buf = buf_new();
    const int32_t x = new_seq(t);
    append_plain(t, x, 50); /* pages 0..2 whole, 3 with 2 tokens */
    const int32_t f1 = fork_seq(t, x), f2 = fork_seq(t, x);
    const int32_t ids[3] = {f1, x, f2};
    const int32_t x_pages[4] = {0, 1, 2, 3};
    /* qo_len: whole pages before the first query */
    const int32_t cases[][2] = {{1, 3},  {2, 3},  {3, 2},  {18, 2}, {19, 1},
                                {34, 1}, {35, 0}, {50, 0}, {0, 3}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const int32_t q = cases[c][0], want = cases[c][1];
        const int32_t qo[3] = {q, q, q};
        set_case("identical forks of 50 tokens, qo_len %d", q);
        batch *b = export_checked(t, TREE_PS, ids, 3, qo, 2, buf);
        CHECK_EQ(buf->levels[0].num_groups, want > 0 ? 1 : 3, "level 0 groups");
        if (want > 0)
            expect_group(buf, 0, 0, 0, 3 * q, x_pages, want);
        for (int32_t i = 0; i < 3; i++) {
            expect_group(buf, 1, i, i * q, (i + 1) * q, x_pages + want, 4 - want);
            CHECK_EQ(buf->levels[1].kv_last_page_len[i], 2, "last page of %d", i);
        }
        free(b);
    }
    /* One id listed twice is the same as two identical forks. */
    const int32_t twice[2] = {x, x};
    set_case("one sequence listed twice");
    batch *b = export_checked(t, TREE_PS, twice, 2, NULL, 2, buf);
    expect_group(buf, 0, 0, 0, 2, x_pages, 3);
    free(b);

    /* A page-aligned sequence without queries shares every page: its last level is empty,
     * and the shared level's last page (page_size) is its true last-page length. */
    const int32_t y = new_seq(t);
    append_plain(t, y, 48);
    const int32_t fy = fork_seq(t, y);
    const int32_t pair[2] = {y, fy}, none[2] = {0, 0};
    set_case("aligned identical forks without queries");
    b = export_checked(t, TREE_PS, pair, 2, none, 2, buf);
    expect_group(buf, 0, 0, 0, 0, seq_pages(b, 0), 3);
    expect_group(buf, 1, 0, 0, 0, NULL, 0);
    expect_group(buf, 1, 1, 0, 0, NULL, 0);
    free(b);

    /* Page size 1: every token before the first query is a whole page. */
    flp_page_table *t1 = make_table(64, 1);
    const int32_t s = new_seq(t1);
    append_plain(t1, s, 10);
    const int32_t s1 = fork_seq(t1, s);
    append_plain(t1, s1, 3);
    const int32_t ids1[2] = {s, s1}, qo1[2] = {4, 2};
    set_case("page size 1");
    b = export_checked(t1, 1, ids1, 2, qo1, 2, buf);
    expect_group(buf, 0, 0, 0, 6, seq_pages(b, 0), 6); /* min(10 - 4, 13 - 2) */
    free(b);
    flp_page_table_destroy(t1);
    free(buf);
    flp_page_table_destroy(t);
}

/* ---- capacity ------------------------------------------------------------------------- */

/* Exact capacities succeed; one page less at level l fails with FLP_ERROR_CAPACITY naming
 * the level. */
static void check_capacities(const flp_page_table *t, const batch *b, const int32_t *qo_lens,
                             int32_t num_levels, levels_buf *buf, bool null_when_empty) {
    levels_buf *want = buf_new();
    model(b, num_levels, want);
    int32_t need[MAX_LEVELS];
    for (int32_t l = 0; l < num_levels; l++)
        need[l] = want->kv_indptr[l][want->num_groups[l]];
    free(want);
    buf_reset(buf, 0);
    for (int32_t l = 0; l < num_levels; l++) {
        buf->storage[l].indices_capacity = need[l];
        if (need[l] == 0 && null_when_empty)
            buf->storage[l].kv_indices = NULL; /* nothing to write: NULL is fine */
    }
    const flp_status st = flp_page_table_export_cascade(t, b->ids, b->n, qo_lens, num_levels,
                                                        buf->storage, buf->levels);
    if (st != FLP_OK)
        fail_msg("%s: exact capacities: %s", g_case, flp_page_table_last_error(t));
    verify(b, num_levels, buf);
    for (int32_t l = 0; l < num_levels; l++) {
        if (need[l] == 0)
            continue;
        buf_reset(buf, 0);
        for (int32_t k = 0; k < num_levels; k++)
            buf->storage[k].indices_capacity = need[k] + (k == l ? -1 : 0);
        CHECK_EQ(flp_page_table_export_cascade(t, b->ids, b->n, qo_lens, num_levels, buf->storage,
                                               buf->levels),
                 FLP_ERROR_CAPACITY, "level %d with %d of its %d pages", l, need[l] - 1, need[l]);
        char text[160];
        snprintf(text, sizeof text,
                 "flp_page_table_export_cascade: level %d needs more than indices_capacity = %d "
                 "pages",
                 l, need[l] - 1);
        expect_error_mentions(t, text);
        /* the storage holds only the pages it has room for */
        for (int32_t k = 0; k < num_levels; k++)
            for (int32_t p = buf->storage[k].indices_capacity; p < BIG_CAPACITY; p++)
                CHECK_EQ(buf->indices[k][p], POISON, "level %d: kv_indices[%d] past capacity", k,
                         p);
    }
}

static void test_capacity(void **state) {
    (void)state;
    tree tr;
    build_tree(&tr);
    levels_buf *buf = buf_new();
    const int32_t qo[TREE_SEQS] = {0, 2, 17, 3, 1, 5, 9, 28};
    for (int32_t levels = 1; levels <= 4; levels++) {
        set_case("tree capacities, %d levels", levels);
        batch *b = load_batch(tr.t, TREE_PS, tr.seq, TREE_SEQS, qo);
        check_capacities(tr.t, b, qo, levels, buf, levels == 4);
        free(b);
    }
    /* By hand: 3 levels, one query each, need 6, 3 and the rest. */
    set_case("tree, 3 levels, level 0 one page short");
    buf_reset(buf, BIG_CAPACITY);
    buf->storage[0].indices_capacity = 5;
    assert_int_equal(
        flp_page_table_export_cascade(tr.t, tr.seq, TREE_SEQS, NULL, 3, buf->storage, buf->levels),
        FLP_ERROR_CAPACITY);
    expect_error_mentions(tr.t, "level 0 needs more than indices_capacity = 5 pages");
    set_case("tree, 3 levels, level 1 one page short");
    buf_reset(buf, BIG_CAPACITY);
    buf->storage[1].indices_capacity = 2;
    assert_int_equal(
        flp_page_table_export_cascade(tr.t, tr.seq, TREE_SEQS, NULL, 3, buf->storage, buf->levels),
        FLP_ERROR_CAPACITY);
    expect_error_mentions(tr.t, "level 1 needs more than indices_capacity = 2 pages");
    set_case("tree, 3 levels, last level short");
    buf_reset(buf, BIG_CAPACITY);
    buf->storage[2].indices_capacity = 3;
    assert_int_equal(
        flp_page_table_export_cascade(tr.t, tr.seq, TREE_SEQS, NULL, 3, buf->storage, buf->levels),
        FLP_ERROR_CAPACITY);
    expect_error_mentions(tr.t, "level 2 needs more than indices_capacity = 3 pages");
    /* a success afterwards clears the message */
    buf_reset(buf, BIG_CAPACITY);
    assert_int_equal(
        flp_page_table_export_cascade(tr.t, tr.seq, TREE_SEQS, NULL, 3, buf->storage, buf->levels),
        FLP_OK);
    assert_string_equal(flp_page_table_last_error(tr.t), "");
    free(buf);
    flp_page_table_destroy(tr.t);
}

/* ---- bad arguments -------------------------------------------------------------------- */

/* The call fails with status and a message holding text, writing nothing. */
static void expect_bad(const flp_page_table *t, const int32_t *ids, int32_t n,
                       const int32_t *qo_lens, int32_t num_levels,
                       const flp_cascade_export_level *storage, flp_cascade_level *levels,
                       const levels_buf *buf, flp_status status, const char *text) {
    set_case("bad arguments: %s", text);
    CHECK_EQ(flp_page_table_export_cascade(t, ids, n, qo_lens, num_levels, storage, levels), status,
             "status");
    expect_error_mentions(t, text);
    CHECK_TRUE(buf_untouched(buf), "a refused call wrote its outputs");
}

static void test_bad_arguments(void **state) {
    (void)state;
    flp_page_table *t = make_table(64, TREE_PS);
    const int32_t a = new_seq(t);
    append_plain(t, a, 40);
    const int32_t b = fork_seq(t, a);
    int32_t src, dst;
    append_cow(t, b, 10, &src, &dst);
    const int32_t empty = new_seq(t);
    const int32_t dead = new_seq(t);
    append_plain(t, dead, 5);
    assert_int_equal(flp_page_table_free_sequence(t, dead), FLP_OK);
    const int32_t ids[2] = {a, b};
    const int32_t bad = FLP_ERROR_INVALID_ARGUMENT;
    levels_buf *buf = buf_new();
    flp_cascade_export_level *st = buf->storage;
    flp_cascade_level *lv = buf->levels;

    assert_int_equal(flp_page_table_export_cascade(NULL, ids, 2, NULL, 2, st, lv), bad);
    assert_true(buf_untouched(buf));

    expect_bad(t, ids, 0, NULL, 2, st, lv, buf, bad,
               "flp_page_table_export_cascade: num_seqs = 0 must be > 0");
    expect_bad(t, ids, -3, NULL, 2, st, lv, buf, bad, "num_seqs = -3 must be > 0");
    expect_bad(t, ids, 2, NULL, 0, st, lv, buf, bad,
               "flp_page_table_export_cascade: num_levels = 0 must be in 1..8");
    expect_bad(t, ids, 2, NULL, 9, st, lv, buf, bad, "num_levels = 9 must be in 1..8");
    expect_bad(t, ids, 2, NULL, -1, st, lv, buf, bad, "num_levels = -1 must be in 1..8");
    expect_bad(t, NULL, 2, NULL, 2, st, lv, buf, bad,
               "flp_page_table_export_cascade: seq_ids is NULL");
    expect_bad(t, ids, 2, NULL, 2, NULL, lv, buf, bad, "storage is NULL");
    expect_bad(t, ids, 2, NULL, 2, st, NULL, buf, bad, "levels is NULL");

    /* storage missing an array, or a negative capacity */
    int32_t *saved = st[1].kv_indptr;
    st[1].kv_indptr = NULL;
    expect_bad(t, ids, 2, NULL, 2, st, lv, buf, bad, "storage[1] needs qo_indptr, kv_indptr");
    st[1].kv_indptr = saved;
    saved = st[0].kv_indices;
    st[0].kv_indices = NULL;
    expect_bad(t, ids, 2, NULL, 2, st, lv, buf, bad, "storage[0] needs");
    expect_error_mentions(t, "kv_indices for indices_capacity = 8192");
    st[0].kv_indices = saved;
    st[1].indices_capacity = -1;
    expect_bad(t, ids, 2, NULL, 2, st, lv, buf, bad, "storage[1] needs");
    expect_error_mentions(t, "indices_capacity = -1");
    st[1].indices_capacity = BIG_CAPACITY;
    /* a level past num_levels is not looked at */
    st[2].kv_indptr = NULL;
    set_case("storage past num_levels");
    assert_int_equal(flp_page_table_export_cascade(t, ids, 2, NULL, 2, st, lv), FLP_OK);
    buf_reset(buf, BIG_CAPACITY);

    /* sequences */
    char text[160];
    const int32_t with_dead[2] = {a, dead};
    snprintf(text, sizeof text,
             "flp_page_table_export_cascade: sequence id %d is not live (freed or never created)",
             dead);
    expect_bad(t, with_dead, 2, NULL, 2, st, lv, buf, bad, text);
    const int32_t far[2] = {a, 1000};
    expect_bad(t, far, 2, NULL, 2, st, lv, buf, bad, "sequence id 1000 out of range [0, 64)");
    const int32_t negative[2] = {-1, a};
    expect_bad(t, negative, 2, NULL, 2, st, lv, buf, bad, "sequence id -1 out of range");

    /* qo_lens: 0 .. the sequence's tokens */
    const int32_t qo_neg[2] = {1, -1};
    snprintf(text, sizeof text,
             "flp_page_table_export_cascade: qo_lens[1] = -1 must be in 0..50 (the tokens of "
             "sequence %d",
             b);
    expect_bad(t, ids, 2, qo_neg, 2, st, lv, buf, bad, text);
    const int32_t qo_big[2] = {41, 1};
    expect_bad(t, ids, 2, qo_big, 2, st, lv, buf, bad, "qo_lens[0] = 41 must be in 0..40");
    const int32_t qo_max[2] = {40, 50};
    set_case("qo_lens at their largest");
    batch *bt = export_checked(t, TREE_PS, ids, 2, qo_max, 2, buf);
    free(bt);
    buf_reset(buf, BIG_CAPACITY);
    /* qo_lens NULL is one query each: an empty sequence has no token for it */
    const int32_t with_empty[2] = {a, empty};
    expect_bad(t, with_empty, 2, NULL, 2, st, lv, buf, bad, "has no tokens for its query row");
    const int32_t qo_empty[2] = {1, 0};
    set_case("an empty sequence without queries");
    bt = export_checked(t, TREE_PS, with_empty, 2, qo_empty, 3, buf);
    free(bt);

    /* capacity: a (40 tokens) and b (50) share 2 pages before their queries (b's page 2 is its
     * copy): level 0 needs 2, the last level 1 + 2 */
    buf_reset(buf, BIG_CAPACITY);
    st[0].indices_capacity = 1;
    set_case("capacity at a shared level");
    assert_int_equal(flp_page_table_export_cascade(t, ids, 2, NULL, 2, st, lv), FLP_ERROR_CAPACITY);
    expect_error_mentions(
        t, "flp_page_table_export_cascade: level 0 needs more than indices_capacity = 1 pages");
    buf_reset(buf, BIG_CAPACITY);
    st[1].indices_capacity = 2;
    set_case("capacity at the last level");
    assert_int_equal(flp_page_table_export_cascade(t, ids, 2, NULL, 2, st, lv), FLP_ERROR_CAPACITY);
    expect_error_mentions(
        t, "flp_page_table_export_cascade: level 1 needs more than indices_capacity = 2 pages");
    buf_reset(buf, BIG_CAPACITY);
    st[0].indices_capacity = 2;
    st[1].indices_capacity = 3;
    set_case("exact capacities");
    assert_int_equal(flp_page_table_export_cascade(t, ids, 2, NULL, 2, st, lv), FLP_OK);
    assert_string_equal(flp_page_table_last_error(t), "");
    CHECK_EQ(lv[0].kv_indptr[1], 2, "level 0 pages");
    CHECK_EQ(lv[1].kv_indptr[2], 3, "level 1 pages");
    free(buf);
    flp_page_table_destroy(t);
}

/* More than 2^31 - 1 query rows in all: one long sequence listed three times. */
static void test_too_many_rows(void **state) {
    (void)state;
    const int32_t ps = FLP_MAX_PAGE_SIZE, tokens = INT32_MAX / 3 + 1; /* 715827883 */
    flp_page_table *t = make_table((tokens + ps - 1) / ps, ps);
    const int32_t s = new_seq(t);
    append_plain(t, s, tokens);
    const int32_t ids[3] = {s, s, s}, qo[3] = {tokens, tokens, tokens};
    levels_buf *buf = buf_new();
    set_case("too many rows");
    CHECK_EQ(flp_page_table_export_cascade(t, ids, 3, qo, 2, buf->storage, buf->levels),
             FLP_ERROR_INVALID_ARGUMENT, "status");
    expect_error_mentions(t, "flp_page_table_export_cascade: 2147483649 query rows in all");
    CHECK_TRUE(buf_untouched(buf), "a refused call wrote its outputs");
    free(buf);
    flp_page_table_destroy(t);
}

/* ---- random forests ------------------------------------------------------------------- */

/* Lexicographic order of page lists: sequences sharing a prefix become neighbours. */
static int32_t compare_pages(const batch *all, int32_t i, int32_t j) {
    const int32_t ni = seq_num_pages(all, i), nj = seq_num_pages(all, j);
    for (int32_t p = 0; p < ni && p < nj; p++)
        if (seq_pages(all, i)[p] != seq_pages(all, j)[p])
            return seq_pages(all, i)[p] < seq_pages(all, j)[p] ? -1 : 1;
    return ni < nj ? -1 : ni > nj ? 1 : 0;
}

static void random_trial(test_rng *rng, int32_t trial, levels_buf *buf, int32_t *stats) {
    static const int32_t page_sizes[] = {1, 2, 3, 4, 5, 8, 16, 32};
    const int32_t ps = page_sizes[test_rng_int(rng, 0, 7)];
    flp_page_table *t = make_table(2048, ps);
    int32_t live[MAX_SEQS], num_live = 0;
    const int32_t roots = test_rng_int(rng, 1, 3);
    for (int32_t r = 0; r < roots; r++) {
        live[num_live] = new_seq(t);
        if (test_rng_int(rng, 0, 4) > 0)
            append_plain(t, live[num_live], test_rng_int(rng, 0, 6 * ps + 3));
        num_live++;
    }
    const int32_t steps = test_rng_int(rng, 0, 40);
    for (int32_t k = 0; k < steps; k++) {
        const int32_t op = test_rng_int(rng, 0, 99), s = live[test_rng_int(rng, 0, num_live - 1)];
        if (op < 40 && num_live < 24) {
            live[num_live++] = fork_seq(t, s);
        } else if (op < 92) {
            assert_int_equal(
                flp_page_table_append(t, s, test_rng_int(rng, 0, 3 * ps + 2), NULL, NULL), FLP_OK);
        } else if (num_live > 1) {
            assert_int_equal(flp_page_table_free_sequence(t, s), FLP_OK);
            int32_t k2 = 0;
            while (live[k2] != s)
                k2++;
            live[k2] = live[--num_live];
        }
    }
    /* the batch: every live sequence in page order, a random order, or random picks (repeats
     * allowed) in page order */
    const int32_t mode = test_rng_int(rng, 0, 2);
    int32_t ids[MAX_SEQS], n = 0;
    if (mode == 2) {
        n = test_rng_int(rng, 1, MAX_SEQS / 2);
        for (int32_t i = 0; i < n; i++)
            ids[i] = live[test_rng_int(rng, 0, num_live - 1)];
    } else {
        n = num_live;
        memcpy(ids, live, (size_t)n * sizeof *ids);
    }
    if (mode == 1) {
        for (int32_t i = n - 1; i > 0; i--) {
            const int32_t j = test_rng_int(rng, 0, i), x = ids[i];
            ids[i] = ids[j];
            ids[j] = x;
        }
    } else {
        batch *all = load_batch(t, ps, ids, n, NULL);
        int32_t order[MAX_SEQS];
        for (int32_t i = 0; i < n; i++) {
            int32_t j = i;
            while (j > 0 && compare_pages(all, order[j - 1], i) > 0) {
                order[j] = order[j - 1];
                j--;
            }
            order[j] = i;
        }
        for (int32_t i = 0; i < n; i++)
            ids[i] = all->ids[order[i]];
        free(all);
    }
    /* queries: NULL (one each) when every sequence has a token, or a mix */
    int32_t qo[MAX_SEQS];
    bool all_nonempty = true;
    for (int32_t i = 0; i < n; i++) {
        const int32_t len = seq_length(t, ids[i]);
        all_nonempty = all_nonempty && len > 0;
        const int32_t kind = test_rng_int(rng, 0, 9);
        qo[i] = kind < 4   ? 1
                : kind < 6 ? 0
                : kind < 8 ? test_rng_int(rng, 0, len)
                : kind < 9 ? len
                           : test_rng_int(rng, 1, 3);
        if (qo[i] > len)
            qo[i] = len;
    }
    const bool qo_null = all_nonempty && test_rng_int(rng, 0, 2) == 0;
    const int32_t num_levels = test_rng_int(rng, 1, MAX_LEVELS);
    set_case("random trial %d (seed 0x%llx): page size %d, %d sequences, order %d, qo_lens %s, "
             "%d levels",
             trial, (unsigned long long)test_seed(), ps, n, mode, qo_null ? "NULL" : "given",
             num_levels);
    batch *b = export_checked(t, ps, ids, n, qo_null ? NULL : qo, num_levels, buf);
    for (int32_t l = 0; l + 1 < num_levels; l++)
        if (buf->levels[l].kv_indptr[buf->levels[l].num_groups] > 0)
            stats[l < 2 ? l : 2]++; /* shared pages at level 0, 1, deeper */
    if (trial % 4 == 0)
        check_capacities(t, b, qo_null ? NULL : qo, num_levels, buf, trial % 8 == 0);
    free(b);
    flp_page_table_destroy(t);
}

static void test_random_forests(void **state) {
    (void)state;
    test_rng rng;
    test_rng_init(&rng, 0xca5cadeull);
    levels_buf *buf = buf_new();
    int32_t stats[3] = {0, 0, 0};
    for (int32_t trial = 0; trial < 600; trial++)
        random_trial(&rng, trial, buf, stats);
    /* the draws reached sharing at level 0, 1 and deeper */
    for (int32_t k = 0; k < 3; k++)
        if (stats[k] < 10)
            fail_msg("seed 0x%llx: only %d trials shared pages at level %s",
                     (unsigned long long)test_seed(), stats[k],
                     k == 2 ? ">= 2"
                     : k    ? "1"
                            : "0");
    free(buf);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tree_one_level),    cmocka_unit_test(test_tree_two_levels),
        cmocka_unit_test(test_tree_three_levels), cmocka_unit_test(test_order_matters),
        cmocka_unit_test(test_identical_forks),   cmocka_unit_test(test_capacity),
        cmocka_unit_test(test_bad_arguments),     cmocka_unit_test(test_too_many_rows),
        cmocka_unit_test(test_random_forests),
    };
    return cmocka_run_group_tests_name("cascade_export", tests, NULL, NULL);
}
