/* Tests of the host page table (core/page_table.c): CSR export against hand-computed arrays,
 * locate, fork and copy-on-write, freeing, exhaustion leaving the table unchanged, bad ids and
 * NULL pointers, and a randomized test against a simple model that also simulates the device
 * KV data, so a page handed out while still held, or a missed copy-on-write, shows up as a
 * token whose stored value changed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "flashport/flashport.h"

#define POISON (-777)

static flp_page_table *make_table(int32_t num_pages, int32_t page_size, int32_t max_sequences) {
    flp_page_table_desc desc = {
        .num_pages = num_pages, .page_size = page_size, .max_sequences = max_sequences};
    flp_page_table *t = NULL;
    assert_int_equal(flp_page_table_create(&desc, &t), FLP_OK);
    assert_non_null(t);
    assert_string_equal(flp_page_table_last_error(t), "");
    return t;
}

static int32_t new_seq(flp_page_table *t) {
    int32_t id = POISON;
    assert_int_equal(flp_page_table_create_sequence(t, &id), FLP_OK);
    assert_true(id >= 0);
    return id;
}

static void append(flp_page_table *t, int32_t seq, int32_t n, int32_t want_src, int32_t want_dst) {
    int32_t src = POISON, dst = POISON;
    flp_status st = flp_page_table_append(t, seq, n, &src, &dst);
    if (st != FLP_OK)
        fail_msg("append %d to %d: %s", n, seq, flp_page_table_last_error(t));
    assert_int_equal(src, want_src);
    assert_int_equal(dst, want_dst);
}

/* Asserts seq's pages and length equal pages[num_pages], tokens. */
static void expect_pages(flp_page_table *t, int32_t seq, const int32_t *pages, int32_t num_pages,
                         int32_t tokens) {
    int32_t indptr[2] = {POISON, POISON}, last = POISON, idx[64];
    for (int i = 0; i < 64; i++)
        idx[i] = POISON;
    assert_int_equal(flp_page_table_export(t, &seq, 1, indptr, idx, 64, &last), FLP_OK);
    assert_int_equal(indptr[0], 0);
    assert_int_equal(indptr[1], num_pages);
    for (int32_t i = 0; i < num_pages; i++)
        assert_int_equal(idx[i], pages[i]);
    assert_int_equal(idx[num_pages], POISON);
    int32_t len = POISON;
    assert_int_equal(flp_page_table_sequence_length(t, seq, &len), FLP_OK);
    assert_int_equal(len, tokens);
}

/* The last error holds text exactly: name the value with its context ("all 3 sequences"), never a
 * bare number that any message could hold. */
static void expect_error_mentions(const flp_page_table *t, const char *text) {
    const char *msg = flp_page_table_last_error(t);
    if (!strstr(msg, text))
        fail_msg("last error \"%s\" does not mention \"%s\"", msg, text);
}

/* ---- create --------------------------------------------------------------------------- */

static void test_create_bad_desc(void **state) {
    (void)state;
    flp_page_table *t = (flp_page_table *)&t; /* poison: must become NULL */
    assert_int_equal(flp_page_table_create(NULL, &t), FLP_ERROR_INVALID_ARGUMENT);
    assert_null(t);
    flp_page_table_desc ok = {.num_pages = 8, .page_size = 16};
    assert_int_equal(flp_page_table_create(&ok, NULL), FLP_ERROR_INVALID_ARGUMENT);
    const flp_page_table_desc bad[] = {
        {.num_pages = 0, .page_size = 16},
        {.num_pages = -5, .page_size = 16},
        {.num_pages = 8, .page_size = 0},
        {.num_pages = 8, .page_size = -1},
        {.num_pages = 8, .page_size = FLP_MAX_PAGE_SIZE + 1},
        {.num_pages = 8, .page_size = 16, .max_sequences = -2},
        {.num_pages = INT32_MAX, .page_size = 2}, /* more tokens than int32 counts */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        t = (flp_page_table *)&t;
        assert_int_equal(flp_page_table_create(&bad[i], &t), FLP_ERROR_INVALID_ARGUMENT);
        assert_null(t);
    }
    /* Defaults: max_sequences 0 means 1024. */
    t = make_table(8, FLP_MAX_PAGE_SIZE, 0);
    assert_int_equal(flp_page_table_free_pages(t), 8);
    for (int32_t i = 0; i < 1024; i++)
        assert_int_equal(new_seq(t), i); /* lowest free id first */
    int32_t id = POISON;
    assert_int_equal(flp_page_table_create_sequence(t, &id), FLP_ERROR_CAPACITY);
    assert_int_equal(id, POISON);
    expect_error_mentions(
        t, "flp_page_table_create_sequence: all 1024 sequences (max_sequences) are live");
    flp_page_table_destroy(t);
    flp_page_table_destroy(NULL);
}

/* ---- append, export, locate ----------------------------------------------------------- */

static void test_append_export_locate(void **state) {
    (void)state;
    flp_page_table *t = make_table(16, 4, 8);
    int32_t a = new_seq(t), b = new_seq(t), c = new_seq(t);
    assert_int_equal(a, 0);
    assert_int_equal(b, 1);
    assert_int_equal(c, 2);
    append(t, a, 5, -1, -1); /* pages 0, 1 */
    append(t, b, 3, -1, -1); /* page 2 */
    append(t, a, 4, -1, -1); /* 9 tokens: 1 has room for 3, then page 3 */
    append(t, c, 0, -1, -1); /* no pages */
    assert_int_equal(flp_page_table_free_pages(t), 12);

    int32_t ids[3] = {a, b, c};
    int32_t indptr[4], indices[8], last[3];
    for (int i = 0; i < 4; i++)
        indptr[i] = POISON;
    for (int i = 0; i < 8; i++)
        indices[i] = POISON;
    for (int i = 0; i < 3; i++)
        last[i] = POISON;
    assert_int_equal(flp_page_table_export(t, ids, 3, indptr, indices, 8, last), FLP_OK);
    const int32_t want_indptr[4] = {0, 3, 4, 4};
    const int32_t want_indices[8] = {0, 1, 3, 2, POISON, POISON, POISON, POISON};
    const int32_t want_last[3] = {1, 3, 0};
    assert_memory_equal(indptr, want_indptr, sizeof indptr);
    assert_memory_equal(indices, want_indices, sizeof indices);
    assert_memory_equal(last, want_last, sizeof last);

    /* Another order, and a sequence listed twice. */
    int32_t ids2[3] = {b, a, b};
    assert_int_equal(flp_page_table_export(t, ids2, 3, indptr, indices, 8, last), FLP_OK);
    const int32_t want_indptr2[4] = {0, 1, 4, 5};
    const int32_t want_indices2[5] = {2, 0, 1, 3, 2};
    const int32_t want_last2[3] = {3, 1, 3};
    assert_memory_equal(indptr, want_indptr2, sizeof indptr);
    assert_memory_equal(indices, want_indices2, sizeof want_indices2);
    assert_memory_equal(last, want_last2, sizeof last);

    /* Too small a capacity writes nothing. */
    for (int i = 0; i < 8; i++)
        indices[i] = POISON;
    indptr[0] = indptr[1] = POISON;
    last[0] = POISON;
    assert_int_equal(flp_page_table_export(t, ids, 3, indptr, indices, 3, last),
                     FLP_ERROR_CAPACITY);
    expect_error_mentions(t, "flp_page_table_export: 4 pages exceed indices_capacity 3");
    assert_int_equal(indptr[0], POISON);
    assert_int_equal(indptr[1], POISON);
    assert_int_equal(last[0], POISON);
    for (int i = 0; i < 8; i++)
        assert_int_equal(indices[i], POISON);

    /* No sequences: indptr[0] = 0 only; kv_indices may be NULL when nothing is exported. */
    assert_int_equal(flp_page_table_export(t, NULL, 0, indptr, NULL, 0, NULL), FLP_OK);
    assert_string_equal(flp_page_table_last_error(t), ""); /* success clears the message */
    assert_int_equal(indptr[0], 0);
    assert_int_equal(indptr[1], POISON);
    assert_int_equal(flp_page_table_export(t, &c, 1, indptr, NULL, 0, last), FLP_OK);
    assert_int_equal(indptr[1], 0);
    assert_int_equal(last[0], 0);

    /* locate: token t lives in page pages[t / 4], slot t % 4. */
    const int32_t a_pages[3] = {0, 1, 3};
    for (int32_t tok = 0; tok < 9; tok++) {
        int32_t page = POISON, slot = POISON;
        assert_int_equal(flp_page_table_locate(t, a, tok, &page, &slot), FLP_OK);
        assert_int_equal(page, a_pages[tok / 4]);
        assert_int_equal(slot, tok % 4);
    }
    int32_t page = POISON, slot = POISON;
    assert_int_equal(flp_page_table_locate(t, a, 9, &page, &slot), FLP_ERROR_INVALID_ARGUMENT);
    expect_error_mentions(t, "flp_page_table_locate: token 9 out of range [0, 9) of sequence 0");
    assert_int_equal(flp_page_table_locate(t, a, -1, &page, &slot), FLP_ERROR_INVALID_ARGUMENT);
    expect_error_mentions(t, "token -1 out of range [0, 9) of sequence 0");
    assert_int_equal(flp_page_table_locate(t, c, 0, &page, &slot), FLP_ERROR_INVALID_ARGUMENT);
    expect_error_mentions(t, "token 0 out of range [0, 0) of sequence 2");
    assert_int_equal(page, POISON);
    assert_int_equal(slot, POISON);

    /* Filling a page exactly allocates nothing more; one token more takes the next page. */
    append(t, b, 1, -1, -1);
    const int32_t b_pages1[1] = {2};
    expect_pages(t, b, b_pages1, 1, 4);
    append(t, b, 1, -1, -1);
    const int32_t b_pages2[2] = {2, 4};
    expect_pages(t, b, b_pages2, 2, 5);
    /* A big append spanning several pages. */
    append(t, c, 9, -1, -1);
    const int32_t c_pages[3] = {5, 6, 7};
    expect_pages(t, c, c_pages, 3, 9);
    assert_int_equal(flp_page_table_free_pages(t), 8);
    flp_page_table_destroy(t);
}

/* ---- fork and copy-on-write ----------------------------------------------------------- */

static void test_fork_shares_pages(void **state) {
    (void)state;
    flp_page_table *t = make_table(16, 4, 8);
    int32_t parent = new_seq(t);
    append(t, parent, 6, -1, -1);
    assert_int_equal(flp_page_table_free_pages(t), 14);
    int32_t child = POISON;
    assert_int_equal(flp_page_table_fork(t, parent, &child), FLP_OK);
    assert_int_equal(child, 1);
    assert_int_equal(flp_page_table_free_pages(t), 14); /* nothing allocated */
    const int32_t pages[2] = {0, 1};
    expect_pages(t, child, pages, 2, 6);
    expect_pages(t, parent, pages, 2, 6);
    int32_t grandchild = POISON;
    assert_int_equal(flp_page_table_fork(t, child, &grandchild), FLP_OK);
    assert_int_equal(flp_page_table_free_pages(t), 14);
    expect_pages(t, grandchild, pages, 2, 6);

    /* Forking an empty sequence gives an empty sequence. */
    int32_t empty = new_seq(t), empty_child = POISON;
    assert_int_equal(flp_page_table_fork(t, empty, &empty_child), FLP_OK);
    expect_pages(t, empty_child, NULL, 0, 0);
    flp_page_table_destroy(t);
}

static void test_copy_on_write(void **state) {
    (void)state;
    flp_page_table *t = make_table(16, 4, 8);
    int32_t parent = new_seq(t), child = POISON;
    append(t, parent, 6, -1, -1); /* [0, 1], page 1 holds 2 tokens */
    assert_int_equal(flp_page_table_fork(t, parent, &child), FLP_OK);

    /* The child writes into the shared partial page 1: it gets a copy (page 2). */
    append(t, child, 1, 1, 2);
    const int32_t child_pages[2] = {0, 2}, parent_pages[2] = {0, 1};
    expect_pages(t, child, child_pages, 2, 7);
    expect_pages(t, parent, parent_pages, 2, 6);
    assert_int_equal(flp_page_table_free_pages(t), 13);
    /* Page 1 is now the parent's alone: written in place. */
    append(t, parent, 1, -1, -1);
    expect_pages(t, parent, parent_pages, 2, 7);
    /* The child's copy is private too; it fills and spills into a new page. */
    append(t, child, 3, -1, -1);
    const int32_t child_pages2[3] = {0, 2, 3};
    expect_pages(t, child, child_pages2, 3, 10);
    assert_int_equal(flp_page_table_free_pages(t), 12);

    /* Appending zero tokens to a shared partial page copies nothing. */
    int32_t c2 = POISON;
    assert_int_equal(flp_page_table_fork(t, parent, &c2), FLP_OK);
    append(t, c2, 0, -1, -1);
    assert_int_equal(flp_page_table_free_pages(t), 12);
    /* Copy-on-write plus new pages in one append; copy_src/copy_dst may be NULL. */
    assert_int_equal(flp_page_table_append(t, c2, 6, NULL, NULL), FLP_OK); /* 13 tokens */
    const int32_t c2_pages[4] = {0, 4, 5, 6};
    expect_pages(t, c2, c2_pages, 4, 13);
    assert_int_equal(flp_page_table_free_pages(t), 9);

    /* Three holders of one partial page: the first two writers copy, the last writes in place. */
    int32_t s = new_seq(t), f1 = POISON, f2 = POISON;
    append(t, s, 2, -1, -1); /* page 7 */
    assert_int_equal(flp_page_table_fork(t, s, &f1), FLP_OK);
    assert_int_equal(flp_page_table_fork(t, s, &f2), FLP_OK);
    append(t, f1, 1, 7, 8);
    append(t, s, 1, 7, 9);
    append(t, f2, 1, -1, -1);
    const int32_t f2_pages[1] = {7};
    expect_pages(t, f2, f2_pages, 1, 3);

    /* A full shared last page is never written again: no copy, a fresh page. */
    int32_t full = new_seq(t), full_child = POISON;
    append(t, full, 4, -1, -1); /* page 10 */
    assert_int_equal(flp_page_table_fork(t, full, &full_child), FLP_OK);
    append(t, full_child, 1, -1, -1);
    const int32_t full_child_pages[2] = {10, 11};
    expect_pages(t, full_child, full_child_pages, 2, 5);
    flp_page_table_destroy(t);
}

static void test_free_releases_unshared(void **state) {
    (void)state;
    flp_page_table *t = make_table(16, 4, 8);
    int32_t parent = new_seq(t), child = POISON;
    append(t, parent, 6, -1, -1); /* [0, 1] */
    assert_int_equal(flp_page_table_fork(t, parent, &child), FLP_OK);
    append(t, child, 3, 1, 2); /* child [0, 2, 3], 9 tokens */
    assert_int_equal(flp_page_table_free_pages(t), 12);

    assert_int_equal(flp_page_table_free_sequence(t, parent), FLP_OK);
    assert_int_equal(flp_page_table_free_pages(t), 13); /* page 1 only; 0 is shared */
    const int32_t child_pages[3] = {0, 2, 3};
    expect_pages(t, child, child_pages, 3, 9);
    /* The freed id is invalid now, then reused (lowest first). */
    assert_int_equal(flp_page_table_free_sequence(t, parent), FLP_ERROR_INVALID_ARGUMENT);
    expect_error_mentions(
        t, "flp_page_table_free_sequence: sequence id 0 is not live (freed or never created)");
    int32_t len = POISON;
    assert_int_equal(flp_page_table_sequence_length(t, parent, &len), FLP_ERROR_INVALID_ARGUMENT);
    expect_error_mentions(t, "flp_page_table_sequence_length: sequence id 0 is not live");
    assert_int_equal(len, POISON);
    /* The released page 1 is the lowest free page: the next allocation takes it. */
    int32_t s = new_seq(t);
    assert_int_equal(s, 0);
    append(t, s, 1, -1, -1);
    const int32_t s_pages[1] = {1};
    expect_pages(t, s, s_pages, 1, 1);

    assert_int_equal(flp_page_table_free_sequence(t, child), FLP_OK);
    assert_int_equal(flp_page_table_free_sequence(t, s), FLP_OK);
    assert_int_equal(flp_page_table_free_pages(t), 16);
    flp_page_table_destroy(t);
}

/* ---- exhaustion ----------------------------------------------------------------------- */

/* Everything observable through the API. */
typedef struct snapshot {
    int32_t free_pages;
    int32_t lengths[16]; /* [max_sequences], -1 = not live */
    int32_t indptr[17];  /* [live + 1] */
    int32_t indices[64]; /* [indptr[live]] */
    int32_t last[16];    /* [live] */
} snapshot;

static void take_snapshot(flp_page_table *t, int32_t max_sequences, snapshot *s) {
    assert_true(max_sequences <= 16);
    memset(s, 0, sizeof *s);
    int32_t live[16], n = 0;
    s->free_pages = flp_page_table_free_pages(t);
    for (int32_t i = 0; i < max_sequences; i++) {
        if (flp_page_table_sequence_length(t, i, &s->lengths[i]) == FLP_OK)
            live[n++] = i;
        else
            s->lengths[i] = -1;
    }
    assert_int_equal(flp_page_table_export(t, live, n, s->indptr, s->indices, 64, s->last), FLP_OK);
}

static void test_exhaustion_changes_nothing(void **state) {
    (void)state;
    flp_page_table *t = make_table(4, 4, 3);
    int32_t a = new_seq(t), b = POISON;
    append(t, a, 10, -1, -1); /* pages 0..2, last page half full */
    assert_int_equal(flp_page_table_fork(t, a, &b), FLP_OK);
    assert_int_equal(flp_page_table_free_pages(t), 1);
    snapshot before, after;
    take_snapshot(t, 3, &before);

    int32_t src = POISON, dst = POISON;
    assert_int_equal(flp_page_table_append(t, b, 100, &src, &dst), FLP_ERROR_CAPACITY);
    expect_error_mentions(t, "100 tokens for sequence 1 need 26 free pages (page_size 4, one for "
                             "copy-on-write), only 1 of 4 are free");
    assert_int_equal(src, POISON);
    assert_int_equal(dst, POISON);
    take_snapshot(t, 3, &after);
    assert_memory_equal(&before, &after, sizeof before);
    /* 3 tokens: the copy-on-write page plus one new page = 2 pages, 1 free. */
    assert_int_equal(flp_page_table_append(t, b, 3, &src, &dst), FLP_ERROR_CAPACITY);
    expect_error_mentions(t, "3 tokens for sequence 1 need 2 free pages (page_size 4, one for "
                             "copy-on-write), only 1 of 4 are free");
    take_snapshot(t, 3, &after);
    assert_memory_equal(&before, &after, sizeof before);
    /* 2 tokens fit in the copy: exactly the one free page. */
    append(t, b, 2, 2, 3);
    assert_int_equal(flp_page_table_free_pages(t), 0);
    /* a's last page is now private: 2 tokens fit in place with no free page at all. */
    append(t, a, 2, -1, -1);
    take_snapshot(t, 3, &before);
    assert_int_equal(flp_page_table_append(t, a, 1, &src, &dst), FLP_ERROR_CAPACITY);
    expect_error_mentions(t, "1 tokens for sequence 0 need 1 free pages (page_size 4), only 0 of 4 "
                             "are free");
    take_snapshot(t, 3, &after);
    assert_memory_equal(&before, &after, sizeof before);

    /* max_sequences: create and fork fail with CAPACITY and change nothing. */
    int32_t c = new_seq(t), id = POISON;
    assert_int_equal(c, 2);
    take_snapshot(t, 3, &before);
    assert_int_equal(flp_page_table_create_sequence(t, &id), FLP_ERROR_CAPACITY);
    expect_error_mentions(t, "all 3 sequences (max_sequences) are live");
    assert_int_equal(flp_page_table_fork(t, a, &id), FLP_ERROR_CAPACITY);
    expect_error_mentions(t, "all 3 sequences (max_sequences) are live, cannot fork sequence 0");
    assert_int_equal(id, POISON);
    take_snapshot(t, 3, &after);
    assert_memory_equal(&before, &after, sizeof before);
    assert_int_equal(flp_page_table_free_sequence(t, a), FLP_OK);
    assert_int_equal(flp_page_table_fork(t, b, &id), FLP_OK);
    assert_int_equal(id, a); /* the freed id is reused */
    flp_page_table_destroy(t);
}

/* ---- bad arguments -------------------------------------------------------------------- */

static void test_bad_ids(void **state) {
    (void)state;
    flp_page_table *t = make_table(8, 4, 4);
    int32_t live = new_seq(t), dead = new_seq(t);
    append(t, live, 5, -1, -1);
    assert_int_equal(flp_page_table_free_sequence(t, dead), FLP_OK);
    const int32_t bad[] = {-1, 4, 1000, INT32_MIN, INT32_MAX, dead, 3 /* never created */};
    char why[64], want[128];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int32_t id = bad[i], out = POISON, page = POISON, slot = POISON, indptr[2] = {POISON};
        int32_t indices[4], last = POISON;
        /* each call names itself, the id and why it is refused */
        if (id >= 0 && id < 4)
            snprintf(why, sizeof why, "sequence id %d is not live (freed or never created)", id);
        else
            snprintf(why, sizeof why, "sequence id %d out of range [0, 4)", id);
        assert_int_equal(flp_page_table_append(t, id, 1, NULL, NULL), FLP_ERROR_INVALID_ARGUMENT);
        snprintf(want, sizeof want, "flp_page_table_append: %s", why);
        expect_error_mentions(t, want);
        assert_int_equal(flp_page_table_fork(t, id, &out), FLP_ERROR_INVALID_ARGUMENT);
        snprintf(want, sizeof want, "flp_page_table_fork: %s", why);
        expect_error_mentions(t, want);
        assert_int_equal(flp_page_table_free_sequence(t, id), FLP_ERROR_INVALID_ARGUMENT);
        snprintf(want, sizeof want, "flp_page_table_free_sequence: %s", why);
        expect_error_mentions(t, want);
        assert_int_equal(flp_page_table_sequence_length(t, id, &out), FLP_ERROR_INVALID_ARGUMENT);
        snprintf(want, sizeof want, "flp_page_table_sequence_length: %s", why);
        expect_error_mentions(t, want);
        assert_int_equal(flp_page_table_locate(t, id, 0, &page, &slot), FLP_ERROR_INVALID_ARGUMENT);
        snprintf(want, sizeof want, "flp_page_table_locate: %s", why);
        expect_error_mentions(t, want);
        int32_t ids[2] = {live, id};
        assert_int_equal(flp_page_table_export(t, ids, 2, indptr, indices, 4, &last),
                         FLP_ERROR_INVALID_ARGUMENT);
        snprintf(want, sizeof want, "flp_page_table_export: seq_ids[1] = %d is not a live sequence",
                 id);
        expect_error_mentions(t, want);
        assert_int_equal(out, POISON);
        assert_int_equal(page, POISON);
        assert_int_equal(indptr[0], POISON); /* nothing written before the bad id was seen */
    }
    /* Other bad values. */
    assert_int_equal(flp_page_table_append(t, live, -3, NULL, NULL), FLP_ERROR_INVALID_ARGUMENT);
    expect_error_mentions(t, "flp_page_table_append: num_tokens -3 is negative");
    int32_t indptr[2], indices[4], last;
    assert_int_equal(flp_page_table_export(t, &live, -1, indptr, indices, 4, &last),
                     FLP_ERROR_INVALID_ARGUMENT);
    expect_error_mentions(t, "flp_page_table_export: num_seqs -1 is negative");
    assert_int_equal(flp_page_table_export(t, &live, 1, indptr, indices, -7, &last),
                     FLP_ERROR_INVALID_ARGUMENT);
    expect_error_mentions(t, "flp_page_table_export: indices_capacity -7 is negative");
    int32_t len = POISON;
    assert_int_equal(flp_page_table_sequence_length(t, live, &len), FLP_OK);
    assert_int_equal(len, 5);
    assert_int_equal(flp_page_table_free_pages(t), 6);
    flp_page_table_destroy(t);
}

static void test_null_pointers(void **state) {
    (void)state;
    int32_t id = POISON, page, slot, indptr[2], indices[4], last;
    /* NULL table. */
    assert_non_null(flp_page_table_last_error(NULL));
    assert_true(flp_page_table_free_pages(NULL) < 0);
    assert_int_equal(flp_page_table_create_sequence(NULL, &id), FLP_ERROR_INVALID_ARGUMENT);
    assert_int_equal(flp_page_table_append(NULL, 0, 1, NULL, NULL), FLP_ERROR_INVALID_ARGUMENT);
    assert_int_equal(flp_page_table_fork(NULL, 0, &id), FLP_ERROR_INVALID_ARGUMENT);
    assert_int_equal(flp_page_table_free_sequence(NULL, 0), FLP_ERROR_INVALID_ARGUMENT);
    assert_int_equal(flp_page_table_sequence_length(NULL, 0, &id), FLP_ERROR_INVALID_ARGUMENT);
    assert_int_equal(flp_page_table_locate(NULL, 0, 0, &page, &slot), FLP_ERROR_INVALID_ARGUMENT);
    assert_int_equal(flp_page_table_export(NULL, &id, 1, indptr, indices, 4, &last),
                     FLP_ERROR_INVALID_ARGUMENT);
    assert_int_equal(id, POISON);

    /* NULL outputs on a valid table. */
    flp_page_table *t = make_table(8, 4, 4);
    int32_t s = new_seq(t);
    append(t, s, 6, -1, -1);
    assert_int_equal(flp_page_table_create_sequence(t, NULL), FLP_ERROR_INVALID_ARGUMENT);
    expect_error_mentions(t, "flp_page_table_create_sequence: seq_id is NULL");
    assert_int_equal(flp_page_table_fork(t, s, NULL), FLP_ERROR_INVALID_ARGUMENT);
    expect_error_mentions(t, "flp_page_table_fork: child_seq_id is NULL");
    assert_int_equal(flp_page_table_sequence_length(t, s, NULL), FLP_ERROR_INVALID_ARGUMENT);
    expect_error_mentions(t, "flp_page_table_sequence_length: num_tokens is NULL");
    assert_int_equal(flp_page_table_locate(t, s, 0, NULL, &slot), FLP_ERROR_INVALID_ARGUMENT);
    expect_error_mentions(t, "flp_page_table_locate: page is NULL");
    assert_int_equal(flp_page_table_locate(t, s, 0, &page, NULL), FLP_ERROR_INVALID_ARGUMENT);
    expect_error_mentions(t, "flp_page_table_locate: slot is NULL");
    assert_int_equal(flp_page_table_export(t, NULL, 1, indptr, indices, 4, &last),
                     FLP_ERROR_INVALID_ARGUMENT);
    expect_error_mentions(t, "flp_page_table_export: seq_ids is NULL with num_seqs 1");
    assert_int_equal(flp_page_table_export(t, &s, 1, NULL, indices, 4, &last),
                     FLP_ERROR_INVALID_ARGUMENT);
    expect_error_mentions(t, "flp_page_table_export: kv_indptr is NULL");
    assert_int_equal(flp_page_table_export(t, &s, 1, indptr, NULL, 4, &last),
                     FLP_ERROR_INVALID_ARGUMENT);
    expect_error_mentions(t, "flp_page_table_export: kv_indices is NULL with 2 pages");
    assert_int_equal(flp_page_table_export(t, &s, 1, indptr, indices, 4, NULL),
                     FLP_ERROR_INVALID_ARGUMENT);
    expect_error_mentions(t, "flp_page_table_export: kv_last_page_len is NULL with num_seqs 1");
    /* None of the failures changed anything, and none created a sequence. */
    int32_t len = POISON;
    assert_int_equal(flp_page_table_sequence_length(t, s, &len), FLP_OK);
    assert_int_equal(len, 6);
    assert_int_equal(flp_page_table_free_pages(t), 6);
    assert_int_equal(new_seq(t), 1);
    flp_page_table_destroy(t);
}

/* ---- randomized model test ------------------------------------------------------------ */

#define MODEL_MAX_SEQ 10
#define MODEL_MAX_PAGES 48

typedef struct model {
    int32_t num_pages, page_size;
    bool live[MODEL_MAX_SEQ];
    int32_t *tags[MODEL_MAX_SEQ]; /* [num_pages * page_size]: the value stored for each token */
    int32_t len[MODEL_MAX_SEQ];
    int32_t *device; /* [num_pages * page_size]: simulated KV data, one tag per slot */
    int32_t next_tag;
} model;

static uint64_t rng_state;
static uint32_t rng(uint32_t n) {
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 0x2545f4914f6cdd1dull) >> 33) % n;
}

/* Pages of every live sequence (from export), their holder counts and the free list. */
typedef struct view {
    int32_t pages[MODEL_MAX_SEQ][MODEL_MAX_PAGES]; /* [seq][page index] */
    int32_t num_pages[MODEL_MAX_SEQ];
    int32_t last[MODEL_MAX_SEQ];
    int32_t holders[MODEL_MAX_PAGES]; /* live sequences holding each page */
    int32_t free_sorted[MODEL_MAX_PAGES];
    int32_t num_free;
} view;

/* Reads the table through export and checks every invariant against the model. */
static void check_table(flp_page_table *t, const model *m, view *v, int step) {
    int32_t ids[MODEL_MAX_SEQ], n = 0, total_tokens = 0;
    for (int32_t i = 0; i < MODEL_MAX_SEQ; i++) {
        int32_t len = POISON;
        flp_status st = flp_page_table_sequence_length(t, i, &len);
        if (m->live[i] != (st == FLP_OK))
            fail_msg("step %d: sequence %d live %d, table says %d", step, i, m->live[i], st);
        if (m->live[i]) {
            assert_int_equal(len, m->len[i]);
            ids[n++] = i;
            total_tokens += len;
        }
    }
    int32_t indptr[MODEL_MAX_SEQ + 1], indices[MODEL_MAX_SEQ * MODEL_MAX_PAGES],
        last[MODEL_MAX_SEQ];
    assert_int_equal(
        flp_page_table_export(t, ids, n, indptr, indices, MODEL_MAX_SEQ * MODEL_MAX_PAGES, last),
        FLP_OK);
    memset(v, 0, sizeof *v);
    int32_t exported_tokens = 0;
    for (int32_t b = 0; b < n; b++) {
        int32_t s = ids[b], np = indptr[b + 1] - indptr[b], ps = m->page_size;
        assert_int_equal(np, (m->len[s] + ps - 1) / ps);
        assert_int_equal(last[b], np ? m->len[s] - (np - 1) * ps : 0);
        exported_tokens += np ? (np - 1) * ps + last[b] : 0;
        v->num_pages[s] = np;
        v->last[s] = last[b];
        bool seen[MODEL_MAX_PAGES] = {false};
        for (int32_t i = 0; i < np; i++) {
            int32_t p = indices[indptr[b] + i];
            assert_true(p >= 0 && p < m->num_pages);
            assert_false(seen[p]); /* a sequence never holds a page twice */
            seen[p] = true;
            v->pages[s][i] = p;
            v->holders[p]++;
        }
        /* Every token reads back the value written for it, where export says it lives. */
        for (int32_t tok = 0; tok < m->len[s]; tok++) {
            int32_t page = POISON, slot = POISON;
            assert_int_equal(flp_page_table_locate(t, s, tok, &page, &slot), FLP_OK);
            assert_int_equal(page, v->pages[s][tok / ps]);
            assert_int_equal(slot, tok % ps);
            if (m->device[page * ps + slot] != m->tags[s][tok])
                fail_msg("step %d: seq %d token %d reads %d, wrote %d", step, s, tok,
                         m->device[page * ps + slot], m->tags[s][tok]);
        }
    }
    assert_int_equal(exported_tokens, total_tokens);
    /* A page is free exactly when no live sequence holds it. */
    for (int32_t p = 0; p < m->num_pages; p++)
        if (v->holders[p] == 0)
            v->free_sorted[v->num_free++] = p;
    assert_int_equal(flp_page_table_free_pages(t), v->num_free);
}

static void model_append(flp_page_table *t, model *m, const view *v, int32_t s, int32_t n,
                         int step) {
    int32_t ps = m->page_size, len = m->len[s], np = v->num_pages[s];
    bool partial = np * ps > len;
    bool cow = n > 0 && partial && v->holders[v->pages[s][np - 1]] > 1;
    int32_t new_pages = (len + n + ps - 1) / ps - np;
    int32_t needed = new_pages + (cow ? 1 : 0);
    int32_t src = POISON, dst = POISON;
    flp_status st = flp_page_table_append(t, s, n, &src, &dst);
    if (needed > v->num_free) {
        /* Must fail and change nothing: check_table after this verifies the latter. */
        if (st != FLP_ERROR_CAPACITY)
            fail_msg("step %d: append %d to %d needing %d of %d free pages gave %d", step, n, s,
                     needed, v->num_free, st);
        assert_int_equal(src, POISON);
        return;
    }
    if (st != FLP_OK)
        fail_msg("step %d: append %d to %d: %s", step, n, s, flp_page_table_last_error(t));
    /* Pages come lowest-numbered first: the copy target, then the new tail pages. */
    int32_t next_free = 0;
    if (cow) {
        assert_int_equal(src, v->pages[s][np - 1]);
        assert_int_equal(dst, v->free_sorted[next_free++]);
        memcpy(&m->device[dst * ps], &m->device[src * ps], (size_t)ps * sizeof(int32_t));
    } else {
        assert_int_equal(src, -1);
        assert_int_equal(dst, -1);
    }
    for (int32_t i = 0; i < new_pages; i++) {
        int32_t page = POISON, slot = POISON;
        assert_int_equal(flp_page_table_locate(t, s, (np + i) * ps, &page, &slot), FLP_OK);
        assert_int_equal(page, v->free_sorted[next_free++]);
    }
    /* Write the new tokens' values where the table says they go. */
    for (int32_t i = 0; i < n; i++) {
        int32_t page, slot;
        assert_int_equal(flp_page_table_locate(t, s, len + i, &page, &slot), FLP_OK);
        m->tags[s][len + i] = m->next_tag;
        m->device[page * ps + slot] = m->next_tag++;
    }
    m->len[s] += n;
}

static void run_model(int32_t num_pages, int32_t page_size, uint64_t seed, int steps) {
    rng_state = seed;
    flp_page_table *t = make_table(num_pages, page_size, MODEL_MAX_SEQ);
    model m = {.num_pages = num_pages, .page_size = page_size, .next_tag = 1};
    size_t slots = (size_t)num_pages * (size_t)page_size;
    m.device = malloc(slots * sizeof(int32_t));
    assert_non_null(m.device);
    for (size_t i = 0; i < slots; i++)
        m.device[i] = -1 - (int32_t)i; /* never a tag */
    for (int i = 0; i < MODEL_MAX_SEQ; i++) {
        m.tags[i] = malloc(slots * sizeof(int32_t));
        assert_non_null(m.tags[i]);
    }
    static view v;
    int counts[5] = {0};
    for (int step = 0; step < steps; step++) {
        check_table(t, &m, &v, step);
        int32_t live_ids[MODEL_MAX_SEQ], num_live = 0;
        for (int32_t i = 0; i < MODEL_MAX_SEQ; i++)
            if (m.live[i])
                live_ids[num_live++] = i;
        uint32_t op = rng(100);
        if (num_live == 0 || op < 10) { /* create */
            int32_t id = POISON;
            flp_status st = flp_page_table_create_sequence(t, &id);
            if (num_live == MODEL_MAX_SEQ) {
                assert_int_equal(st, FLP_ERROR_CAPACITY);
                continue;
            }
            assert_int_equal(st, FLP_OK);
            int32_t want = 0;
            while (m.live[want])
                want++;
            assert_int_equal(id, want); /* lowest free id */
            m.live[id] = true;
            m.len[id] = 0;
            counts[0]++;
            continue;
        }
        int32_t s = live_ids[rng((uint32_t)num_live)];
        if (op < 65) { /* append: mostly small, sometimes more than the pool holds */
            int32_t n = rng(10) == 0 ? (int32_t)rng((uint32_t)slots + 1)
                                     : (int32_t)rng((uint32_t)(2 * page_size + 2));
            model_append(t, &m, &v, s, n, step);
            counts[1]++;
        } else if (op < 80) { /* fork */
            int32_t child = POISON;
            flp_status st = flp_page_table_fork(t, s, &child);
            if (num_live == MODEL_MAX_SEQ) {
                assert_int_equal(st, FLP_ERROR_CAPACITY);
                assert_int_equal(child, POISON);
                continue;
            }
            assert_int_equal(st, FLP_OK);
            assert_false(m.live[child]);
            m.live[child] = true;
            m.len[child] = m.len[s];
            memcpy(m.tags[child], m.tags[s], (size_t)m.len[s] * sizeof(int32_t));
            counts[2]++;
        } else if (op < 97) { /* free */
            assert_int_equal(flp_page_table_free_sequence(t, s), FLP_OK);
            m.live[s] = false;
            counts[3]++;
        } else { /* a bad call: must change nothing */
            int32_t dead = -1;
            for (int32_t i = 0; i < MODEL_MAX_SEQ && dead < 0; i++)
                if (!m.live[i])
                    dead = i;
            if (dead < 0)
                dead = MODEL_MAX_SEQ;
            assert_int_equal(flp_page_table_append(t, dead, 1, NULL, NULL),
                             FLP_ERROR_INVALID_ARGUMENT);
            assert_int_equal(flp_page_table_append(t, s, -1, NULL, NULL),
                             FLP_ERROR_INVALID_ARGUMENT);
            counts[4]++;
        }
    }
    check_table(t, &m, &v, steps);
    /* Every kind of operation ran. */
    for (int i = 0; i < 5; i++)
        assert_true(counts[i] > 0);
    for (int32_t i = 0; i < MODEL_MAX_SEQ; i++)
        if (m.live[i])
            assert_int_equal(flp_page_table_free_sequence(t, i), FLP_OK);
    assert_int_equal(flp_page_table_free_pages(t), num_pages);
    for (int i = 0; i < MODEL_MAX_SEQ; i++)
        free(m.tags[i]);
    free(m.device);
    flp_page_table_destroy(t);
}

static void test_randomized_model(void **state) {
    (void)state;
    run_model(MODEL_MAX_PAGES, 1, 0x1234567ull, 1500);
    run_model(MODEL_MAX_PAGES, 3, 0xabcdefull, 1500);
    run_model(MODEL_MAX_PAGES, 16, 0x5eed5eedull, 1500);
    run_model(7, 4, 0x77777ull, 1500); /* a tiny pool: exhaustion is frequent */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_bad_desc),
        cmocka_unit_test(test_append_export_locate),
        cmocka_unit_test(test_fork_shares_pages),
        cmocka_unit_test(test_copy_on_write),
        cmocka_unit_test(test_free_releases_unshared),
        cmocka_unit_test(test_exhaustion_changes_nothing),
        cmocka_unit_test(test_bad_ids),
        cmocka_unit_test(test_null_pointers),
        cmocka_unit_test(test_randomized_model),
    };
    return cmocka_run_group_tests_name("page_table", tests, NULL, NULL);
}
