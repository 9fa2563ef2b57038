/* Fuzz target: the host page table (flp_page_table_* in flashport.h) against a model written
 * from its documentation (docs/api.md "Page table", flashport.h):
 * - sequence ids and pages are handed out lowest first; a fork shares every page of its parent
 *   (reference counts), a page is free when no live sequence holds it;
 * - appending into a partially filled last page that another sequence holds copies it on write:
 *   the call returns (source, destination), the destination being the lowest free page, then the
 *   new tail pages in ascending order;
 * - every failure (bad id, bad argument, pool or sequence capacity) returns its status, writes
 *   no output and changes nothing; its message names the call; a success clears the message;
 * - export writes the CSR arrays of the listed sequences (repeats allowed) or nothing at all.
 * The input is a table shape followed by operations; after each one the whole table is read back
 * (lengths, free pages, export of every live sequence, locate) and compared with the model. */
#include "flashport/flashport.h"
#include "tests/fuzz/fuzz_input.h"

#include <string.h>

#define MAX_PAGES 64
#define MAX_SEQS 8
#define POISON (-777)

typedef struct model {
    int32_t num_pages, page_size, max_seqs;
    bool live[MAX_SEQS];
    int32_t tokens[MAX_SEQS];
    int32_t num_held[MAX_SEQS];         /* pages of each sequence */
    int32_t pages[MAX_SEQS][MAX_PAGES]; /* a sequence never holds a page twice */
    int32_t holders[MAX_PAGES];         /* live sequences holding each page */
} model;

static bool valid_id(const model *m, int32_t id) {
    return id >= 0 && id < m->max_seqs && m->live[id];
}

static int32_t free_pages(const model *m) {
    int32_t n = 0;
    for (int32_t p = 0; p < m->num_pages; ++p)
        n += m->holders[p] == 0;
    return n;
}

static int32_t lowest_free_page(const model *m) {
    for (int32_t p = 0; p < m->num_pages; ++p)
        if (m->holders[p] == 0)
            return p;
    return -1;
}

/* A sequence id to call with: mostly in range (live or not), sometimes far out of it. */
static int32_t pick_id(fuzz_input *in, const model *m) {
    const uint8_t b = fuzz_u8(in);
    if (b < 224)
        return b % m->max_seqs;
    const int32_t odd[] = {-1, m->max_seqs, INT32_MIN, INT32_MAX, 1000, -2};
    return odd[b % 6];
}

/* A token count: mostly around a page or two, sometimes far more than the pool, negative, or
 * next to INT32_MAX. */
static int32_t pick_tokens(fuzz_input *in, const model *m) {
    const uint8_t b = fuzz_u8(in);
    if (b < 200)
        return b % (2 * m->page_size + 2);
    if (b < 230)
        return (int32_t)fuzz_range(in, 0, (int64_t)m->num_pages * m->page_size + 8);
    const int32_t odd[] = {-1, INT32_MIN, INT32_MAX, INT32_MAX - 1, -100};
    return odd[b % 5];
}

/* The message of the last call: empty after a success, naming the call after a failure, with
 * every fragment of want (NULL-terminated) in it. */
static void expect_message(const flp_page_table *t, flp_status st, const char *fn,
                           const char *want) {
    const char *msg = flp_page_table_last_error(t);
    if (st == FLP_OK) {
        FUZZ_CHECK(msg[0] == '\0', "%s succeeded but left the message \"%s\"", fn, msg);
        return;
    }
    const size_t n = strlen(fn);
    FUZZ_CHECK(strncmp(msg, fn, n) == 0 && msg[n] == ':', "%s failed with \"%s\"", fn, msg);
    FUZZ_CHECK(!want || strstr(msg, want), "%s: \"%s\" does not mention \"%s\"", fn, msg, want);
}

/* What check_sequence says about a bad id. */
static const char *bad_id_text(const model *m, int32_t id, char *buf, size_t size) {
    if (id < 0 || id >= m->max_seqs)
        snprintf(buf, size, "sequence id %d out of range [0, %d)", id, m->max_seqs);
    else
        snprintf(buf, size, "sequence id %d is not live", id);
    return buf;
}

/* ---- the whole table against the model --------------------------------------------------- */

static void check_table(const flp_page_table *t, const model *m) {
    FUZZ_CHECK(flp_page_table_free_pages(t) == free_pages(m), "free pages %d, model %d",
               flp_page_table_free_pages(t), free_pages(m));
    int32_t ids[MAX_SEQS], n = 0, total = 0;
    for (int32_t s = 0; s < m->max_seqs; ++s) {
        int32_t len = POISON;
        const flp_status st = flp_page_table_sequence_length(t, s, &len);
        FUZZ_CHECK((st == FLP_OK) == m->live[s], "sequence %d: length status %d, model live %d", s,
                   st, m->live[s]);
        if (!m->live[s]) {
            FUZZ_CHECK(len == POISON, "sequence %d: a failed length call wrote %d", s, len);
            continue;
        }
        FUZZ_CHECK(len == m->tokens[s], "sequence %d: %d tokens, model %d", s, len, m->tokens[s]);
        ids[n++] = s;
        total += m->num_held[s];
    }
    int32_t indptr[MAX_SEQS + 1], indices[MAX_SEQS * MAX_PAGES + 1], last[MAX_SEQS];
    const flp_status st =
        flp_page_table_export(t, ids, n, indptr, indices, MAX_SEQS * MAX_PAGES, last);
    FUZZ_CHECK(st == FLP_OK, "export of the live sequences: %d (%s)", st,
               flp_page_table_last_error(t));
    FUZZ_CHECK(indptr[0] == 0 && indptr[n] == total, "export indptr [0] %d, [n] %d, want %d",
               indptr[0], indptr[n], total);
    for (int32_t b = 0; b < n; ++b) {
        const int32_t s = ids[b], held = m->num_held[s];
        FUZZ_CHECK(indptr[b + 1] - indptr[b] == held, "sequence %d exports %d pages, model %d", s,
                   indptr[b + 1] - indptr[b], held);
        for (int32_t i = 0; i < held; ++i)
            FUZZ_CHECK(indices[indptr[b] + i] == m->pages[s][i],
                       "sequence %d page %d is %d, model %d", s, i, indices[indptr[b] + i],
                       m->pages[s][i]);
        const int32_t want_last = held ? m->tokens[s] - (held - 1) * m->page_size : 0;
        FUZZ_CHECK(last[b] == want_last, "sequence %d last_page_len %d, model %d", s, last[b],
                   want_last);
        /* a few tokens: the first, the middle and the last */
        const int32_t len = m->tokens[s];
        const int32_t probe[3] = {0, len / 2, len - 1};
        for (int k = 0; k < 3 && len > 0; ++k) {
            int32_t page = POISON, slot = POISON;
            FUZZ_CHECK(flp_page_table_locate(t, s, probe[k], &page, &slot) == FLP_OK,
                       "locate %d of %d", probe[k], s);
            FUZZ_CHECK(page == m->pages[s][probe[k] / m->page_size] &&
                           slot == probe[k] % m->page_size,
                       "token %d of sequence %d at (%d, %d), model (%d, %d)", probe[k], s, page,
                       slot, m->pages[s][probe[k] / m->page_size], probe[k] % m->page_size);
        }
    }
}

/* ---- operations -------------------------------------------------------------------------- */

static void op_create(flp_page_table *t, model *m) {
    int32_t id = POISON;
    const flp_status st = flp_page_table_create_sequence(t, &id);
    int32_t want = -1;
    for (int32_t s = 0; s < m->max_seqs && want < 0; ++s)
        if (!m->live[s])
            want = s;
    if (want < 0) {
        FUZZ_CHECK(st == FLP_ERROR_CAPACITY && id == POISON, "create with every id live: %d", st);
        char text[64];
        snprintf(text, sizeof text, "all %d sequences (max_sequences) are live", m->max_seqs);
        expect_message(t, st, "flp_page_table_create_sequence", text);
        return;
    }
    FUZZ_CHECK(st == FLP_OK && id == want, "create: status %d id %d, model id %d", st, id, want);
    expect_message(t, st, "flp_page_table_create_sequence", NULL);
    m->live[id] = true;
    m->tokens[id] = 0;
    m->num_held[id] = 0;
}

static void op_append(flp_page_table *t, model *m, fuzz_input *in) {
    const int32_t id = pick_id(in, m), n = pick_tokens(in, m);
    const bool outputs = fuzz_u8(in) % 4 != 0; /* copy_src/copy_dst may be NULL */
    int32_t src = POISON, dst = POISON;
    const flp_status st =
        flp_page_table_append(t, id, n, outputs ? &src : NULL, outputs ? &dst : NULL);
    static const char fn[] = "flp_page_table_append";
    char text[128];
    if (!valid_id(m, id)) {
        FUZZ_CHECK(st == FLP_ERROR_INVALID_ARGUMENT, "append to bad id %d: %d", id, st);
        expect_message(t, st, fn, bad_id_text(m, id, text, sizeof text));
    } else if (n < 0) {
        FUZZ_CHECK(st == FLP_ERROR_INVALID_ARGUMENT, "append %d tokens: %d", n, st);
        snprintf(text, sizeof text, "num_tokens %d is negative", n);
        expect_message(t, st, fn, text);
    } else {
        const int32_t ps = m->page_size, held = m->num_held[id], len = m->tokens[id];
        const int32_t last = held ? m->pages[id][held - 1] : -1;
        const bool cow = n > 0 && held * ps > len && m->holders[last] > 1;
        const int64_t tail = ((int64_t)len + n + ps - 1) / ps - held;
        const int64_t needed = tail + (cow ? 1 : 0);
        if (n > INT32_MAX - len || needed > free_pages(m)) {
            FUZZ_CHECK(st == FLP_ERROR_CAPACITY,
                       "append %d to %d tokens needing %lld of %d free "
                       "pages: %d",
                       n, len, (long long)needed, free_pages(m), st);
            if (n <= INT32_MAX - len) {
                snprintf(text, sizeof text, "only %d of %d are free", free_pages(m), m->num_pages);
                expect_message(t, st, fn, text);
            } else {
                expect_message(t, st, fn, "(int32 token count)");
            }
        } else {
            FUZZ_CHECK(st == FLP_OK, "append %d to sequence %d: %d (%s)", n, id, st,
                       flp_page_table_last_error(t));
            expect_message(t, st, fn, NULL);
            int32_t want_src = -1, want_dst = -1;
            if (cow) {
                want_src = last;
                want_dst = lowest_free_page(m);
                m->holders[want_dst] = 1;
                m->holders[last]--;
                m->pages[id][held - 1] = want_dst;
            }
            for (int64_t i = 0; i < tail; ++i) {
                const int32_t p = lowest_free_page(m);
                m->holders[p] = 1;
                m->pages[id][m->num_held[id]++] = p;
            }
            m->tokens[id] += n;
            if (outputs)
                FUZZ_CHECK(src == want_src && dst == want_dst,
                           "copy-on-write (%d, %d), model (%d, %d)", src, dst, want_src, want_dst);
            return;
        }
    }
    FUZZ_CHECK(src == POISON && dst == POISON, "a failed append wrote (%d, %d)", src, dst);
}

static void op_fork(flp_page_table *t, model *m, fuzz_input *in) {
    const int32_t parent = pick_id(in, m);
    const bool null_out = fuzz_u8(in) % 16 == 0;
    int32_t child = POISON;
    const flp_status st = flp_page_table_fork(t, parent, null_out ? NULL : &child);
    static const char fn[] = "flp_page_table_fork";
    char text[128];
    int32_t want = -1;
    for (int32_t s = 0; s < m->max_seqs && want < 0; ++s)
        if (!m->live[s])
            want = s;
    if (!valid_id(m, parent)) {
        FUZZ_CHECK(st == FLP_ERROR_INVALID_ARGUMENT, "fork of bad id %d: %d", parent, st);
        expect_message(t, st, fn, bad_id_text(m, parent, text, sizeof text));
    } else if (null_out) {
        FUZZ_CHECK(st == FLP_ERROR_INVALID_ARGUMENT, "fork into NULL: %d", st);
        expect_message(t, st, fn, "child_seq_id is NULL");
    } else if (want < 0) {
        FUZZ_CHECK(st == FLP_ERROR_CAPACITY, "fork with every id live: %d", st);
        snprintf(text, sizeof text,
                 "all %d sequences (max_sequences) are live, cannot fork "
                 "sequence %d",
                 m->max_seqs, parent);
        expect_message(t, st, fn, text);
    } else {
        FUZZ_CHECK(st == FLP_OK && child == want, "fork of %d: status %d child %d, model %d",
                   parent, st, child, want);
        expect_message(t, st, fn, NULL);
        m->live[child] = true;
        m->tokens[child] = m->tokens[parent];
        m->num_held[child] = m->num_held[parent];
        for (int32_t i = 0; i < m->num_held[parent]; ++i) {
            m->pages[child][i] = m->pages[parent][i];
            m->holders[m->pages[parent][i]]++;
        }
        return;
    }
    FUZZ_CHECK(child == POISON, "a failed fork wrote child %d", child);
}

static void op_free(flp_page_table *t, model *m, fuzz_input *in) {
    const int32_t id = pick_id(in, m);
    const flp_status st = flp_page_table_free_sequence(t, id);
    char text[128];
    if (!valid_id(m, id)) {
        FUZZ_CHECK(st == FLP_ERROR_INVALID_ARGUMENT, "free of bad id %d: %d", id, st);
        expect_message(t, st, "flp_page_table_free_sequence",
                       bad_id_text(m, id, text, sizeof text));
        return;
    }
    FUZZ_CHECK(st == FLP_OK, "free of %d: %d", id, st);
    expect_message(t, st, "flp_page_table_free_sequence", NULL);
    for (int32_t i = 0; i < m->num_held[id]; ++i)
        m->holders[m->pages[id][i]]--;
    m->live[id] = false;
    m->num_held[id] = 0;
    m->tokens[id] = 0;
}

static void op_locate(flp_page_table *t, const model *m, fuzz_input *in) {
    const int32_t id = pick_id(in, m);
    const int32_t len = valid_id(m, id) ? m->tokens[id] : 0;
    const int32_t token = (int32_t)fuzz_range(in, -2, (int64_t)len + 1);
    const uint8_t nulls = fuzz_u8(in) % 16; /* 1: page NULL, 2: slot NULL */
    int32_t page = POISON, slot = POISON;
    const flp_status st =
        flp_page_table_locate(t, id, token, nulls == 1 ? NULL : &page, nulls == 2 ? NULL : &slot);
    static const char fn[] = "flp_page_table_locate";
    char text[128];
    if (!valid_id(m, id)) {
        FUZZ_CHECK(st == FLP_ERROR_INVALID_ARGUMENT, "locate in bad id %d: %d", id, st);
        expect_message(t, st, fn, bad_id_text(m, id, text, sizeof text));
    } else if (token < 0 || token >= len) {
        FUZZ_CHECK(st == FLP_ERROR_INVALID_ARGUMENT, "locate token %d of %d: %d", token, len, st);
        snprintf(text, sizeof text, "token %d out of range [0, %d) of sequence %d", token, len, id);
        expect_message(t, st, fn, text);
    } else if (nulls == 1 || nulls == 2) {
        FUZZ_CHECK(st == FLP_ERROR_INVALID_ARGUMENT, "locate into NULL: %d", st);
        expect_message(t, st, fn, nulls == 1 ? "page is NULL" : "slot is NULL");
    } else {
        FUZZ_CHECK(st == FLP_OK && page == m->pages[id][token / m->page_size] &&
                       slot == token % m->page_size,
                   "locate %d of %d: status %d (%d, %d)", token, id, st, page, slot);
        expect_message(t, st, fn, NULL);
        return;
    }
    FUZZ_CHECK(page == POISON && slot == POISON, "a failed locate wrote (%d, %d)", page, slot);
}

/* Export of a list chosen by the input (repeats and bad ids included) with a chosen capacity. */
static void op_export(flp_page_table *t, const model *m, fuzz_input *in) {
    const int32_t n = (int32_t)fuzz_range(in, -1, MAX_SEQS);
    int32_t ids[MAX_SEQS];
    int64_t total = 0;
    int32_t bad = -1; /* first bad id's position */
    for (int32_t b = 0; b < n; ++b) {
        ids[b] = pick_id(in, m);
        if (!valid_id(m, ids[b]) && bad < 0)
            bad = b;
        total += valid_id(m, ids[b]) ? m->num_held[ids[b]] : 0;
    }
    const int32_t capacity = (int32_t)fuzz_range(in, -1, (int64_t)total + 2);
    const uint8_t nulls = fuzz_u8(in) % 32; /* 1..4: one pointer NULL */
    int32_t indptr[MAX_SEQS + 1], indices[MAX_SEQS * MAX_PAGES + 2], last[MAX_SEQS];
    for (size_t i = 0; i < sizeof indptr / sizeof indptr[0]; ++i)
        indptr[i] = POISON;
    for (size_t i = 0; i < sizeof indices / sizeof indices[0]; ++i)
        indices[i] = POISON;
    for (size_t i = 0; i < sizeof last / sizeof last[0]; ++i)
        last[i] = POISON;
    const flp_status st =
        flp_page_table_export(t, nulls == 1 ? NULL : ids, n, nulls == 2 ? NULL : indptr,
                              nulls == 3 ? NULL : indices, capacity, nulls == 4 ? NULL : last);
    static const char fn[] = "flp_page_table_export";
    char text[128];
    flp_status want = FLP_OK;
    text[0] = '\0';
    /* the library's order of checks (flashport.h documents each failure, not their order) */
    if (n < 0) {
        want = FLP_ERROR_INVALID_ARGUMENT;
        snprintf(text, sizeof text, "num_seqs %d is negative", n);
    } else if (capacity < 0) {
        want = FLP_ERROR_INVALID_ARGUMENT;
        snprintf(text, sizeof text, "indices_capacity %d is negative", capacity);
    } else if (nulls == 2) {
        want = FLP_ERROR_INVALID_ARGUMENT;
        snprintf(text, sizeof text, "kv_indptr is NULL");
    } else if (n > 0 && (nulls == 1 || nulls == 4)) {
        want = FLP_ERROR_INVALID_ARGUMENT;
        snprintf(text, sizeof text, "%s is NULL", nulls == 1 ? "seq_ids" : "kv_last_page_len");
    } else if (bad >= 0) {
        want = FLP_ERROR_INVALID_ARGUMENT;
        snprintf(text, sizeof text, "seq_ids[%d] = %d is not a live sequence", bad, ids[bad]);
    } else if (total > capacity) {
        want = FLP_ERROR_CAPACITY;
        snprintf(text, sizeof text, "%lld pages exceed indices_capacity %d", (long long)total,
                 capacity);
    } else if (total > 0 && nulls == 3) {
        want = FLP_ERROR_INVALID_ARGUMENT;
        snprintf(text, sizeof text, "kv_indices is NULL");
    }
    FUZZ_CHECK(st == want, "export of %d ids (capacity %d, nulls %d): %d, model %d (%s)", n,
               capacity, nulls, st, want, flp_page_table_last_error(t));
    expect_message(t, st, fn, want == FLP_OK ? NULL : text);
    if (st != FLP_OK) { /* nothing written */
        for (size_t i = 0; i < sizeof indptr / sizeof indptr[0]; ++i)
            FUZZ_CHECK(indptr[i] == POISON, "a failed export wrote indptr[%zu]", i);
        for (size_t i = 0; i < sizeof indices / sizeof indices[0]; ++i)
            FUZZ_CHECK(indices[i] == POISON, "a failed export wrote indices[%zu]", i);
        for (size_t i = 0; i < sizeof last / sizeof last[0]; ++i)
            FUZZ_CHECK(last[i] == POISON, "a failed export wrote last[%zu]", i);
        return;
    }
    FUZZ_CHECK(indptr[0] == 0, "indptr[0] = %d", indptr[0]);
    for (int32_t b = 0; b < n; ++b) {
        const int32_t s = ids[b], held = m->num_held[s];
        FUZZ_CHECK(indptr[b + 1] - indptr[b] == held, "entry %d (sequence %d): %d pages, model %d",
                   b, s, indptr[b + 1] - indptr[b], held);
        for (int32_t i = 0; i < held; ++i)
            FUZZ_CHECK(indices[indptr[b] + i] == m->pages[s][i], "entry %d page %d: %d, model %d",
                       b, i, indices[indptr[b] + i], m->pages[s][i]);
        FUZZ_CHECK(last[b] == (held ? m->tokens[s] - (held - 1) * m->page_size : 0),
                   "entry %d last_page_len %d", b, last[b]);
    }
    for (int32_t i = indptr[n]; i < (int32_t)(sizeof indices / sizeof indices[0]); ++i)
        FUZZ_CHECK(indices[i] == POISON, "export wrote indices[%d] past its %d pages", i,
                   indptr[n]);
    for (int32_t b = n; b < MAX_SEQS; ++b)
        FUZZ_CHECK(last[b] == POISON && indptr[b + 1] == POISON, "export wrote entry %d of %d", b,
                   n);
}

/* ---- the target -------------------------------------------------------------------------- */

/* A descriptor from the input; *valid says whether flp_page_table_create must accept it. */
static flp_page_table_desc pick_desc(fuzz_input *in, bool *valid) {
    flp_page_table_desc d;
    memset(&d, 0, sizeof d);
    d.num_pages = 1 + fuzz_u8(in) % MAX_PAGES;
    const int32_t sizes[] = {1, 2, 3, 4, 5, 7, 8, 16, FLP_MAX_PAGE_SIZE};
    d.page_size = sizes[fuzz_u8(in) % 9];
    d.max_sequences = 1 + fuzz_u8(in) % MAX_SEQS;
    *valid = true;
    switch (fuzz_u8(in) % 32) { /* now and then, one field out of range */
    case 1:
        d.num_pages = -(int32_t)(fuzz_u8(in) % 3);
        *valid = false;
        break;
    case 2:
        d.page_size = fuzz_u8(in) % 2 ? 0 : FLP_MAX_PAGE_SIZE + 1;
        *valid = false;
        break;
    case 3:
        d.max_sequences = -1;
        *valid = false;
        break;
    case 4:
        d.num_pages = INT32_MAX; /* more tokens than int32 counts */
        d.page_size = 2;
        *valid = false;
        break;
    default:
        break;
    }
    return d;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_input in = {data, size};
    bool valid = false;
    const flp_page_table_desc desc = pick_desc(&in, &valid);
    flp_page_table *t = (flp_page_table *)&valid; /* poison: a failure must set NULL */
    const flp_status st = flp_page_table_create(&desc, &t);
    if (!valid) {
        FUZZ_CHECK(st == FLP_ERROR_INVALID_ARGUMENT && t == NULL,
                   "create(%d pages of %d, %d sequences): %d", desc.num_pages, desc.page_size,
                   desc.max_sequences, st);
        return 0;
    }
    FUZZ_CHECK(st == FLP_OK && t != NULL, "create(%d pages of %d, %d sequences): %d",
               desc.num_pages, desc.page_size, desc.max_sequences, st);
    static model m; /* 2 KiB of pages: off the stack */
    memset(&m, 0, sizeof m);
    m.num_pages = desc.num_pages;
    m.page_size = desc.page_size;
    m.max_seqs = desc.max_sequences;
    for (int steps = 0; steps < 2000 && fuzz_more(&in); ++steps) {
        switch (fuzz_u8(&in) % 8) {
        case 0:
            op_create(t, &m);
            break;
        case 1:
        case 2:
            op_append(t, &m, &in);
            break;
        case 3:
            op_fork(t, &m, &in);
            break;
        case 4:
            op_free(t, &m, &in);
            break;
        case 5:
            op_locate(t, &m, &in);
            break;
        default:
            op_export(t, &m, &in);
            break;
        }
        check_table(t, &m);
    }
    for (int32_t s = 0; s < m.max_seqs; ++s)
        if (m.live[s])
            FUZZ_CHECK(flp_page_table_free_sequence(t, s) == FLP_OK, "final free of %d", s);
    FUZZ_CHECK(flp_page_table_free_pages(t) == m.num_pages, "%d of %d pages free at the end",
               flp_page_table_free_pages(t), m.num_pages);
    flp_page_table_destroy(t);
    return 0;
}
