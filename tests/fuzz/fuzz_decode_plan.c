/* Fuzz target: the decode planner (flp_decode_plan: core/decode.c, core/batch_args.c,
 * core/decode_schedule.c, core/assign.c) on the fake host backend, against a model written from
 * docs/design.md (3 "Batches", "Paged KV", "Positions"; 5.1, 5.2, 5.5, 5.7; 6) and flashport.h.
 *
 * The input is a plan with random capacities (max_batch_size, max_qo_len 1..8, max_pages, KV
 * heads, GQA group 1..8, head dim 64/128/256, sometimes a prefill region), then a series of paged
 * batches (page sizes 1..128, NHD/HND, empty, short and long requests, qo_len 1..8, causal,
 * windows, RoPE/ALiBi options, caller offsets and slopes; a quarter of the page tables with
 * pages and half of the empty ones planned with kv_indices = NULL: the runs pass the page ids).
 * Each batch is valid, or broken in exactly one way chosen before it is drawn, so the
 * documented outcome is unambiguous:
 * - a broken batch is refused with the documented status (FLP_ERROR_CAPACITY for a capacity,
 *   FLP_ERROR_UNSUPPORTED for what decode lacks, FLP_ERROR_INVALID_ARGUMENT otherwise) and a
 *   message naming flp_decode_plan, the argument and the value; the plan is unchanged (host
 *   mirror, device memory, summary) and its previous partition still runs;
 * - a valid batch is accepted, and the plan memory read back from the fake device (plain host
 *   memory) holds the info struct, the page table (its ids only when given: a plan given none
 *   uploads none), every kv_len, the offsets and slopes, and a schedule in which every key any
 *   row can keep, of every (request, KV head), is in exactly one work item (keys below pos(0) -
 *   window_left are never scheduled), split requests are chunks in key order with the partial
 *   slots merge_info names, the chunk is one 5.5 allows and every request longer than it (and
 *   no other) is split (which allowed chunk is fastest is test_decode_schedule.c's to check),
 *   the longest-first assignment of 5.7 holds, within the plan's item and scratch capacities;
 * - flp_decode_run then refuses caches with too few pages for the largest page id the plan
 *   holds and any kv_indices tensor; for a plan given no page ids it takes caches of any size
 *   and refuses a missing (when there are pages), mistyped, short or overlapping kv_indices
 *   (fuzz_plan_check.h, check_run_page_ids); and hands the backend a launch whose schedule view
 *   is the uploaded schedule, whose page ids are the plan's copy or the run's tensor and whose
 *   num_pages is the caches'.
 * Now and then the input is instead a set of capacities up to the limits plan creation accepts,
 * asked of flp_plan_workspace_size only (check_edge_caps).
 * Plans use the vector decode kernel (FLP_DECODE_KERNEL_VECTOR), whose schedule this models; the
 * matrix kernel's partition is a prefill partition (fuzz_prefill_plan.c models that schedule,
 * test_decode.c runs both kernels).
 * Nothing of the library's own schedule code is reused: the model recomputes everything. */
#include "core/plan.h"
#include "tests/fake_backend.h"
#include "tests/fuzz/fuzz_input.h"
#include "tests/fuzz/fuzz_plan_check.h"
#include "tests/fuzz/fuzz_plan_draw.h"

#include <string.h>

#define FN "flp_decode_plan"
#define GRID FAKE_DECODE_GRID     /* the fake backend's decode grid */
#define MAX_BATCH 16              /* largest max_batch_size drawn */
#define ARR_BATCH (MAX_BATCH + 4) /* requests a batch may hold: beyond capacity on purpose */
#define MAX_PAGES 384             /* largest max_pages drawn */
#define ARR_PAGES (MAX_PAGES + 16)
#define MAX_HKV 8
#define MAX_GROUP 8
#define MAX_HQ (MAX_HKV * MAX_GROUP)
#define SPLIT_DIVISOR 4 /* 5.5: no chunk below the fair share over 4 */
#define MAX_ITEMS (MAX_BATCH * MAX_HKV + SPLIT_DIVISOR * GRID) /* docs/design.md 5.5 "Bound" */
#define MIN_CHUNK 128 /* 5.5: a split chunk is at least 128 keys */
#define ITEM_COST 16  /* 5.5: cost = keys + 16 */

/* ---- the capacities and one batch -------------------------------------------------------- */

typedef struct caps {
    int32_t max_batch, max_qo_len, max_pages, max_qo_rows, hq, hkv, group, head_dim;
} caps;

typedef struct batch {
    int32_t batch_size, qo_len; /* qo_len as passed: 0 means 1 */
    int32_t page_size;
    int32_t layout;
    int32_t indptr[ARR_BATCH + 1], last[ARR_BATCH], indices[ARR_PAGES];
    int32_t q_off[ARR_BATCH], k_off[ARR_BATCH];
    float slopes[MAX_HQ];
    bool null_indptr, null_last, null_indices, with_q_off, with_k_off, with_slopes;
    flp_variant variant;
} batch;

/* Ways a batch is broken on purpose (one at a time). */
typedef enum defect {
    VALID,
    BAD_BATCH_SIZE,
    OVER_BATCH,
    BAD_QO_LEN,
    OVER_QO_LEN,
    BAD_PAGE_SIZE,
    BAD_LAYOUT,
    NULL_INDPTR,
    BAD_INDPTR0,
    DECREASING_INDPTR,
    OVER_PAGES,
    NULL_LAST,
    BAD_LAST,
    IDS_AT_RUN, /* no defect (once NULL_INDICES): planned without its page ids, with pages */
    NEGATIVE_PAGE,
    SHORT_REQUEST,
    CUSTOM_MASK,
    OTHER_HEAD_DIM,
    BAD_WINDOW,
    BAD_SLOPE,
    NUM_DEFECTS
} defect;

static caps pick_caps(fuzz_input *in) {
    caps c;
    c.max_batch = 1 + pick(in, MAX_BATCH);
    c.max_qo_len = pick(in, FLP_DECODE_MAX_QO_LEN + 1); /* 0: the default, 1 */
    /* few pages (the capacity is hit often) or many (long requests split) */
    c.max_pages = fuzz_u8(in) % 2 ? 1 + pick(in, 24) : 1 + pick(in, MAX_PAGES);
    static const int32_t kv_heads[] = {1, 1, 2, 3, 4, 8};
    c.hkv = kv_heads[fuzz_u8(in) % 6];
    c.group = 1 + pick(in, MAX_GROUP);
    c.hq = c.hkv * c.group;
    static const int32_t dims[] = {64, 128, 256};
    c.head_dim = dims[fuzz_u8(in) % 3];
    /* now and then a prefill region too: decode plans must leave it alone */
    c.max_qo_rows = fuzz_u8(in) % 4 == 0 ? 1 + pick(in, 64) : 0;
    return c;
}

/* Decode variants: no custom mask (6: UNSUPPORTED in decode, drawn as a defect only). */
static const variant_draw decode_variants = {.mask_modes = 2, .soft_cap = 30.0f, .sm_scale = 0.25f};

/* Draws a batch for c, broken as *d says (*d becomes VALID when c makes that defect impossible),
 * and the documented outcome of planning it. */
static void pick_batch(fuzz_input *in, const caps *c, defect *d, batch *b, outcome *o) {
    memset(b, 0, sizeof *b);
    memset(o, 0, sizeof *o);
    const int32_t max_qo = c->max_qo_len ? c->max_qo_len : 1;
    b->batch_size =
        *d == OVER_BATCH ? c->max_batch + 1 + fuzz_u8(in) % 4 : 1 + pick(in, c->max_batch);
    b->qo_len = pick(in, max_qo + 1); /* 0 = 1 */
    if (*d == SHORT_REQUEST && b->qo_len < 2) {
        if (max_qo < 2)
            *d = VALID; /* no request can have fewer keys than one query */
        else
            b->qo_len = 2 + pick(in, max_qo - 1);
    }
    const int32_t qo = b->qo_len ? b->qo_len : 1;
    b->page_size = pick_page_size(in);
    b->layout = fuzz_u8(in) % 2;
    const int32_t ps = b->page_size;

    /* pages per request: none, one or two, or a long run; every request with pages has at
     * least qo_len keys (docs/design.md 3 "Rows and keys") */
    int32_t pages[ARR_BATCH], budget = c->max_pages;
    for (int32_t r = 0; r < b->batch_size; r++) {
        const uint8_t kind = fuzz_u8(in) % 8;
        int32_t n = kind < 2 ? 0 : kind < 5 ? 1 + kind % 2 : 1 + pick(in, budget > 0 ? budget : 1);
        if (n > budget)
            n = budget;
        const uint8_t l = fuzz_u8(in);
        b->last[r] = l < 32 ? ps : l < 64 ? 1 : 1 + l % ps;
        if (n > 0 && (int64_t)(n - 1) * ps + b->last[r] < qo) {
            const int32_t need = (qo + ps - 1) / ps; /* whole pages for qo keys */
            n = need <= budget ? need : 0;
            b->last[r] = ps;
        }
        if (n == 0) /* ignored without pages: anything at all */
            b->last[r] = fuzz_u8(in) % 2 ? 0 : (int32_t)fuzz_i64(in);
        pages[r] = n;
        budget -= n;
    }
    /* the request a per-request defect hits: one with pages */
    int32_t target = pick(in, b->batch_size);
    const bool needs_pages =
        *d == BAD_LAST || *d == IDS_AT_RUN || *d == NEGATIVE_PAGE || *d == SHORT_REQUEST;
    if (needs_pages) {
        int32_t r = 0;
        while (r < b->batch_size && pages[(target + r) % b->batch_size] == 0)
            r++;
        if (r < b->batch_size) {
            target = (target + r) % b->batch_size;
        } else if ((qo + ps - 1) / ps <= c->max_pages) { /* no pages anywhere: all are free */
            pages[target] = (qo + ps - 1) / ps;
            b->last[target] = ps;
        } else {
            *d = VALID;
        }
    }
    if (*d == SHORT_REQUEST) {
        pages[target] = 1;
        b->last[target] = 1 + pick(in, (ps < qo - 1 ? ps : qo - 1));
    }
    for (int32_t r = 0; r < b->batch_size; r++)
        b->indptr[r + 1] = b->indptr[r] + pages[r];
    const int32_t total = b->indptr[b->batch_size];
    for (int32_t i = 0; i < total; i++)
        b->indices[i] = pick_page_id(in, c->max_pages);
    b->null_indices = total == 0 && fuzz_u8(in) % 2; /* no page to read */
    pick_variant(in, c->head_dim, &decode_variants, &b->variant);
    const uint8_t extras = fuzz_u8(in);
    b->with_q_off = extras & 1;
    b->with_k_off = extras & 2;
    b->with_slopes = extras & 4;
    /* a quarter of the page tables with pages come without their ids (the runs pass them), but
     * not when the defect is in an id (extras' bits 3-4: the input reads as it did before) */
    if (total > 0 && *d != NEGATIVE_PAGE && (extras >> 3) % 4 == 1)
        b->null_indices = true;
    for (int32_t r = 0; r < b->batch_size; r++) {
        b->q_off[r] = (int32_t)fuzz_i64(in);
        b->k_off[r] = b->q_off[r] ^ 5;
    }
    for (int32_t h = 0; h < c->hq; h++)
        b->slopes[h] = b->with_slopes ? 0.5f / (float)(1 + h) - (float)(extras >> 6) : 0.0f;

    /* the defect, on top of the valid batch, and what the documentation says of it */
    o->status = FLP_ERROR_INVALID_ARGUMENT;
    switch (*d) {
    case VALID:
    case NUM_DEFECTS:
        o->status = FLP_OK;
        break;
    case BAD_BATCH_SIZE:
        break_batch_size(in, &b->batch_size, o);
        break;
    case OVER_BATCH:
        over_batch_size(b->batch_size, c->max_batch, o);
        break;
    case BAD_QO_LEN: {
        const int32_t bad[] = {-1, FLP_DECODE_MAX_QO_LEN + 1, INT32_MIN, INT32_MAX, -8, 100};
        b->qo_len = bad[fuzz_u8(in) % 6];
        mention(o, "qo_len = %d", b->qo_len);
        break;
    }
    case OVER_QO_LEN:
        if (max_qo == FLP_DECODE_MAX_QO_LEN) {
            *d = VALID;
            o->status = FLP_OK;
            break;
        }
        b->qo_len = max_qo + 1 + pick(in, FLP_DECODE_MAX_QO_LEN - max_qo);
        o->status = FLP_ERROR_CAPACITY;
        mention(o, "qo_len = %d", b->qo_len);
        mention(o, "max_qo_len = %d", max_qo);
        break;
    case BAD_PAGE_SIZE:
        break_page_size(in, &b->page_size, o);
        break;
    case BAD_LAYOUT:
        break_enum(in, "kv_layout", &b->layout, o);
        break;
    case NULL_INDPTR:
        b->null_indptr = true;
        mention(o, "kv_indptr is NULL");
        break;
    case BAD_INDPTR0:
        break_indptr0(in, "kv_indptr", b->indptr, o);
        break;
    case DECREASING_INDPTR: {
        const int32_t r = pick(in, b->batch_size);
        decrease_indptr(in, "kv_indptr", b->indptr, r, o);
        break;
    }
    case OVER_PAGES:
        over_indptr_end(in, "kv_indptr", b->indptr, b->batch_size, "max_pages", c->max_pages, o);
        break;
    case NULL_LAST:
        b->null_last = true;
        mention(o, "kv_last_page_len is NULL");
        break;
    case BAD_LAST:
        break_last_page_len(in, ps, b->last, target, o);
        break;
    case IDS_AT_RUN: /* flashport.h: kv_indices = NULL, each run passes the page ids */
        b->null_indices = true;
        o->status = FLP_OK;
        break;
    case NEGATIVE_PAGE:
        break_page_id(in, b->indices, total, o);
        break;
    case SHORT_REQUEST: /* 3 "Rows and keys": kv_len >= qo_len for a request with pages */
        mention(o, "request %d", target);
        mention(o, "%d keys", b->last[target]);
        mention(o, "qo_len = %d", qo);
        break;
    case CUSTOM_MASK: /* 6: custom masks in decode are UNSUPPORTED */
        b->variant.mask = FLP_MASK_CUSTOM;
        o->status = FLP_ERROR_UNSUPPORTED;
        mention(o, "custom mask");
        break;
    case OTHER_HEAD_DIM:
        break_head_dim(in, c->head_dim, &b->variant, o);
        break;
    case BAD_WINDOW:
        break_window(in, &b->variant, o);
        break;
    case BAD_SLOPE:
        break_slope(in, c->hq, b->slopes, &b->with_slopes, o);
        break;
    }
}

static flp_decode_plan_args args_of(const batch *b) {
    flp_decode_plan_args a = {
        .batch_size = b->batch_size,
        .qo_len = b->qo_len,
        .page_size = b->page_size,
        .kv_layout = (flp_kv_layout)b->layout,
        .kv_indptr = b->null_indptr ? NULL : b->indptr,
        .kv_indices = b->null_indices ? NULL : b->indices,
        .kv_last_page_len = b->null_last ? NULL : b->last,
        .q_rope_offset = b->with_q_off ? b->q_off : NULL,
        .k_rope_offset = b->with_k_off ? b->k_off : NULL,
        .alibi_slopes = b->with_slopes ? b->slopes : NULL,
        .variant = b->variant,
    };
    return a;
}

/* ---- what a valid batch means (the model) ------------------------------------------------- */

/* The decode partition docs/design.md 5.5 describes, per request. */
typedef struct model {
    int32_t batch_size, qo_len, page_size;
    int32_t max_page_id; /* the largest page id the plan holds, -1: none (or given none) */
    bool pages_at_run;   /* planned with kv_indices = NULL: each run passes the page ids */
    int32_t total_pages; /* kv_indptr[batch_size] */
    int32_t ids_max;     /* the largest page id of the batch, given or not, -1: none */
    int32_t kv_len[ARR_BATCH], begin[ARR_BATCH], chunks[ARR_BATCH];
    int64_t chunk; /* keys per chunk; INT64_MAX: nothing split */
    int32_t num_items;
    variant_model variant; /* dtypes and flags */
    flp_kv_layout layout;
} model;

static void model_batch(const batch *b, model *m) {
    memset(m, 0, sizeof *m);
    const flp_variant *v = &b->variant;
    m->batch_size = b->batch_size;
    m->qo_len = b->qo_len ? b->qo_len : 1;
    m->page_size = b->page_size;
    m->layout = (flp_kv_layout)b->layout;
    m->variant = model_variant(v);
    m->pages_at_run = b->null_indices;
    m->total_pages = b->indptr[b->batch_size];
    m->ids_max = -1;
    for (int32_t i = 0; i < m->total_pages; i++)
        m->ids_max = b->indices[i] > m->ids_max ? b->indices[i] : m->ids_max;
    m->max_page_id = m->pages_at_run ? -1 : m->ids_max;
    for (int32_t r = 0; r < b->batch_size; r++) {
        const int32_t pages = b->indptr[r + 1] - b->indptr[r];
        m->kv_len[r] = pages ? (pages - 1) * b->page_size + b->last[r] : 0;
        /* 5.5 "Key range": keys below pos(0) - window_left are seen by no row */
        const int64_t lowest =
            v->use_window ? (int64_t)m->kv_len[r] - m->qo_len - v->window_left : 0;
        m->begin[r] = lowest > 0 ? (int32_t)lowest : 0;
    }
}

/* An uploaded item read out as the kernels read it (core/kernel_constants.h), written here
 * from that text rather than with the core's helper: X_INTS words {request, KV head, kv_begin,
 * kv_end, partial slot}. */
enum { X_REQUEST, X_KV_HEAD, X_KV_BEGIN, X_KV_END, X_SLOT, X_INTS };
_Static_assert(X_INTS <= MODEL_ITEM_MAX_INTS, "a read-out item fits a model_item");

/* 5.5 "Split decision": the chunk the plan chose (read off its first split item; INT64_MAX when
 * nothing is split) must be one the rule allows: a multiple of max(page_size, 16), at least 128
 * keys and the fair share of the grid over 4, shorter than the longest request. Which of the
 * allowed chunks is fastest is the unit test's business (test_decode_schedule.c); here every
 * request longer than the chunk must be cut into chunk-sized items and no other. */
static void model_split(const caps *c, const int32_t *items, int32_t n, model *m) {
    int64_t total = 0, longest = 0;
    for (int32_t r = 0; r < m->batch_size; r++) {
        const int64_t len = m->kv_len[r] - m->begin[r];
        total += (len + ITEM_COST) * c->hkv;
        longest = len > longest ? len : longest;
    }
    m->chunk = INT64_MAX;
    for (int32_t i = 0; i < n; i++) {
        const int32_t *it = items + X_INTS * i, r = it[X_REQUEST];
        if (it[X_SLOT] >= 0 && r >= 0 && r < m->batch_size && it[X_KV_BEGIN] == m->begin[r]) {
            m->chunk = (int64_t)it[X_KV_END] - it[X_KV_BEGIN];
            break;
        }
    }
    if (m->chunk != INT64_MAX) {
        const int64_t align = m->page_size > 16 ? m->page_size : 16;
        const int64_t fair = (total + GRID - 1) / GRID;
        FUZZ_CHECK(m->chunk % align == 0 && m->chunk >= MIN_CHUNK &&
                       m->chunk * SPLIT_DIVISOR >= fair && m->chunk < longest,
                   "chunk %lld: not a multiple of %lld, below %d or the fair share %lld / %d, or "
                   "not below the longest request's %lld keys",
                   (long long)m->chunk, (long long)align, MIN_CHUNK, (long long)fair, SPLIT_DIVISOR,
                   (long long)longest);
    }
    m->num_items = 0;
    for (int32_t r = 0; r < m->batch_size; r++) {
        const int64_t len = m->kv_len[r] - m->begin[r];
        m->chunks[r] = len > m->chunk ? (int32_t)((len + m->chunk - 1) / m->chunk) : 1;
        m->num_items += m->chunks[r] * c->hkv;
    }
}

/* ---- reading the plan back ----------------------------------------------------------------- */

/* The uploaded decode region's words, from its info struct. */
static const int32_t *device_words(const flp_plan *plan, uint32_t word_offset) {
    return (const int32_t *)(plan_device_region(plan) + plan->layout.info) + word_offset;
}

/* The prefill region is never touched by a decode call; the decode region only when accepted. */
static void check_unchanged(const flp_plan *plan, const snapshot *s, bool decode_too) {
    const flp_prefill_layout *pl = &plan->prefill.layout;
    if (s->pf_bytes > 0) { /* a plan without prefill capacity has no region (and no mirror) */
        FUZZ_CHECK(memcmp(s->pf_host, plan->prefill.host, s->pf_bytes) == 0,
                   "a decode plan call changed the prefill mirror");
        FUZZ_CHECK(memcmp(s->pf_device, plan_device_region(plan) + pl->info, s->pf_bytes) == 0,
                   "a decode plan call changed the uploaded prefill region");
    }
    if (!decode_too)
        return;
    FUZZ_CHECK(memcmp(s->host, plan->host, s->bytes) == 0, "a refused call changed the mirror");
    FUZZ_CHECK(memcmp(s->device, plan_device_region(plan), s->bytes) == 0,
               "a refused call changed the uploaded plan memory");
    flp_plan_summary now;
    flp_plan_summarize(plan, &now);
    FUZZ_CHECK(memcmp(&now, &s->summary, sizeof now) == 0,
               "a refused call changed the summary (items %d -> %d, slots %d -> %d)",
               s->summary.decode_items, now.decode_items, s->summary.decode_partial_slots,
               now.decode_partial_slots);
}

/* 5.2: the layout of the decode region, in its documented order, each array 16-byte aligned
 * and sized for the capacities, the scratch for max_items slots of max_qo_len x group rows. */
static void check_layout(const flp_plan *plan, const caps *c) {
    const flp_plan_layout *l = &plan->layout;
    const size_t i32 = 4, max_qo = (size_t)(c->max_qo_len ? c->max_qo_len : 1);
    const size_t items = (size_t)c->max_batch * (size_t)c->hkv + SPLIT_DIVISOR * GRID;
    const layout_part parts[] = {
        {"info", l->info, sizeof(flp_decode_plan_info), 256},
        {"kv_indptr", l->kv_indptr, i32 * ((size_t)c->max_batch + 1), 16},
        {"kv_len", l->kv_len, i32 * (size_t)c->max_batch, 16},
        {"kv_begin", l->kv_begin, i32 * (size_t)c->max_batch, 16},
        {"q_rope_offset", l->q_rope_offset, i32 * (size_t)c->max_batch, 16},
        {"k_rope_offset", l->k_rope_offset, i32 * (size_t)c->max_batch, 16},
        {"rope_freq", l->rope_freq, i32 * (size_t)c->head_dim / 2, 16},
        {"alibi_slopes", l->alibi_slopes, i32 * (size_t)c->hq, 16},
        {"work_indptr", l->work_indptr, i32 * (GRID + 1), 16},
        {"merge_info", l->merge_info, i32 * 2 * (size_t)c->max_batch, 16},
        {"work_items", l->work_items, i32 * FLP_WORK_ITEM_INTS * items, 16},
        {"kv_indices", l->kv_indices, i32 * (size_t)c->max_pages, 16},
        {"partial_o", l->partial_o, 4 * items * max_qo * (size_t)c->group * (size_t)c->head_dim,
         256},
        {"partial_lse", l->partial_lse, 4 * items * max_qo * (size_t)c->group, 256},
        {"params_slot", l->params_slot, 256, 256},
    };
    FUZZ_CHECK(plan->base % 256 == 0 && l->info == 0, "plan region at %zu, info at %zu", plan->base,
               l->info);
    check_layout_parts(parts, sizeof parts / sizeof parts[0], l->total);
    check_metadata_end(l->metadata_end, l->kv_indices, c->max_pages, l->partial_o);
    FUZZ_CHECK(plan->buffer->size >= plan->base + l->total, "the plan buffer is too small");
    FUZZ_CHECK(plan->num_ctas == GRID && plan->max_items >= 0 && (size_t)plan->max_items == items,
               "grid %d, max items %d (documented bound %zu)", plan->num_ctas, plan->max_items,
               items);
}

static void check_info(const flp_plan *plan, const caps *c, const batch *b, const model *m) {
    const flp_decode_plan_info *p = (const flp_decode_plan_info *)plan_device_region(plan);
    const flp_plan_layout *l = &plan->layout;
#define WORDS_OK(field) (p->off_##field * 4u == l->field - l->info)
    FUZZ_CHECK(WORDS_OK(kv_indptr) && WORDS_OK(kv_indices) && WORDS_OK(kv_len) &&
                   WORDS_OK(q_rope_offset) && WORDS_OK(k_rope_offset) && WORDS_OK(rope_freq) &&
                   WORDS_OK(alibi_slopes) && WORDS_OK(work_indptr) && WORDS_OK(work_items) &&
                   WORDS_OK(merge_info) && WORDS_OK(partial_o) && WORDS_OK(partial_lse),
               "the info struct's array offsets differ from the layout");
#undef WORDS_OK
    FUZZ_CHECK(p->batch_size == m->batch_size && p->qo_len == m->qo_len &&
                   p->num_qo_heads == c->hq && p->num_kv_heads == c->hkv &&
                   p->group_size == c->group && p->head_dim == c->head_dim &&
                   p->page_size == m->page_size && p->num_ctas == GRID,
               "info: batch %d qo %d heads %d/%d group %d dim %d page %d grid %d", p->batch_size,
               p->qo_len, p->num_qo_heads, p->num_kv_heads, p->group_size, p->head_dim,
               p->page_size, p->num_ctas);
    const info_variant got = INFO_VARIANT(p);
    check_info_variant(&got, &b->variant, c->head_dim, &m->variant);

    /* the batch's arrays, copied */
    const int32_t *kv_indptr = device_words(plan, p->off_kv_indptr);
    const int32_t *kv_len = device_words(plan, p->off_kv_len);
    const int32_t *indices = device_words(plan, p->off_kv_indices);
    const int32_t *q_off = device_words(plan, p->off_q_rope_offset);
    const int32_t *k_off = device_words(plan, p->off_k_rope_offset);
    const float *slopes = (const float *)device_words(plan, p->off_alibi_slopes);
    for (int32_t r = 0; r <= b->batch_size; r++)
        FUZZ_CHECK(kv_indptr[r] == b->indptr[r], "kv_indptr[%d] uploaded %d, given %d", r,
                   kv_indptr[r], b->indptr[r]);
    for (int32_t r = 0; r < b->batch_size; r++) {
        FUZZ_CHECK(kv_len[r] == m->kv_len[r], "kv_len[%d] uploaded %d, model %d", r, kv_len[r],
                   m->kv_len[r]);
        FUZZ_CHECK(q_off[r] == (b->with_q_off ? b->q_off[r] : 0) &&
                       k_off[r] == (b->with_k_off ? b->k_off[r] : 0),
                   "rope offsets of request %d: %d/%d", r, q_off[r], k_off[r]);
    }
    for (int32_t i = 0; !m->pages_at_run && i < m->total_pages; i++)
        FUZZ_CHECK(indices[i] == b->indices[i], "kv_indices[%d] uploaded %d, given %d", i,
                   indices[i], b->indices[i]);
    if (m->variant.flags & FLP_FLAG_ALIBI) /* read under the flag only: else not made */
        check_uploaded_slopes(slopes, c->hq, b->with_slopes ? b->slopes : NULL);
}

/* A decode work item for a message: (request, KV head, [keys), slot). */
static int32_t expanded[MAX_ITEMS][X_INTS];

/* Reads the n uploaded items into expanded, with the uploaded merge_info, kv_begin and chunk
 * size; checks each item's words are in range first. */
static void expand_items(const int32_t *items, int32_t n, const int32_t *merge,
                         const int32_t *kv_begin, const int32_t *kv_len, int32_t chunk_size,
                         const caps *c, const model *m) {
    for (int32_t i = 0; i < n; i++) {
        const int32_t *w = items + FLP_WORK_ITEM_INTS * i;
        const int32_t r = w[FLP_WORK_REQUEST], head_chunk = w[FLP_WORK_HEAD_CHUNK];
        FUZZ_CHECK(r >= 0 && r < m->batch_size, "item %d: request %d", i, r);
        const int32_t chunks = merge[2 * r + 1] > 1 ? merge[2 * r + 1] : 1;
        FUZZ_CHECK(head_chunk >= 0 && head_chunk < c->hkv * chunks,
                   "item %d: head-chunk %d, %d KV heads x %d chunks", i, head_chunk, c->hkv,
                   chunks);
        const int32_t g = head_chunk / chunks, k = head_chunk % chunks;
        int32_t *x = expanded[i];
        x[X_REQUEST] = r;
        x[X_KV_HEAD] = g;
        x[X_KV_BEGIN] = kv_begin[r] + (chunks > 1 ? k * chunk_size : 0);
        x[X_KV_END] = k + 1 == chunks ? kv_len[r] : x[X_KV_BEGIN] + chunk_size;
        x[X_SLOT] = chunks > 1 ? merge[2 * r] + head_chunk : -1;
    }
}

static void describe_item(const int32_t *w, char *text, size_t size) {
    snprintf(text, size, "(%d, %d, [%d, %d), slot %d)", w[0], w[1], w[2], w[3], w[4]);
}

/* The uploaded schedule against the model: coverage, splits, slots, capacities, assignment. */
static void check_schedule(const flp_plan *plan, const caps *c, const model *accepted) {
    const flp_decode_plan_info *p = (const flp_decode_plan_info *)plan_device_region(plan);
    const int32_t *indptr = device_words(plan, p->off_work_indptr);
    const int32_t *merge = device_words(plan, p->off_merge_info);
    const int32_t *kv_begin = device_words(plan, p->off_kv_begin);
    const int32_t *kv_len = device_words(plan, p->off_kv_len);
    const int32_t max_items = c->max_batch * c->hkv + SPLIT_DIVISOR * GRID;
    const int32_t n = check_work_indptr(indptr, GRID, max_items);
    static model split;
    split = *accepted;
    model *m = &split;
    for (int32_t r = 0; r < m->batch_size; r++)
        FUZZ_CHECK(kv_begin[r] == m->begin[r] && kv_len[r] == m->kv_len[r],
                   "request %d: uploaded keys [%d, %d), model [%d, %d)", r, kv_begin[r], kv_len[r],
                   m->begin[r], m->kv_len[r]);
    expand_items(device_words(plan, p->off_work_items), n, merge, kv_begin, kv_len, p->chunk_size,
                 c, m);
    const int32_t *items = &expanded[0][0];
    model_split(c, items, n, m);
    FUZZ_CHECK(n == m->num_items, "%d items, the model splits into %d (chunk %lld)", n,
               m->num_items, (long long)m->chunk);

    /* Per (request, KV head): its items, in key order, tile exactly [begin, kv_len): every key
     * a row can keep is in one item, no key below the window's reach is scheduled. want: the
     * items in the model's natural order (request, head, chunk) with their uploaded slots. */
    static model_item want[MAX_ITEMS];
    static bool slot_used[MAX_ITEMS];
    memset(slot_used, 0, sizeof slot_used);
    int32_t num_want = 0, slots_end = 0;
    for (int32_t r = 0; r < m->batch_size; r++) {
        const int32_t chunks = m->chunks[r];
        if (chunks > 1)
            FUZZ_CHECK(merge[2 * r + 1] == chunks, "merge_info[%d] = {%d, %d}, model %d chunks", r,
                       merge[2 * r], merge[2 * r + 1], chunks);
        else
            FUZZ_CHECK(merge[2 * r + 1] <= 1, "merge_info[%d] = {%d, %d} for an unsplit request", r,
                       merge[2 * r], merge[2 * r + 1]);
        for (int32_t g = 0; g < c->hkv; g++) {
            const int32_t *mine[MAX_ITEMS];
            int32_t k = 0;
            for (int32_t i = 0; i < n; i++) {
                const int32_t *it = items + X_INTS * i;
                if (it[X_REQUEST] == r && it[X_KV_HEAD] == g) {
                    FUZZ_CHECK(k < chunks, "request %d head %d: more than %d items", r, g, chunks);
                    mine[k++] = it;
                }
            }
            FUZZ_CHECK(k == chunks, "request %d head %d: %d items, model %d", r, g, k, chunks);
            sort_by_key_begin(mine, k, X_KV_BEGIN);
            int32_t next = m->begin[r];
            for (int32_t i = 0; i < k; i++) {
                const int32_t *it = mine[i];
                FUZZ_CHECK(it[X_KV_BEGIN] == next,
                           "request %d head %d (kv_len %d, window from %d): chunk %d starts at "
                           "key %d, keys from %d are uncovered or covered twice",
                           r, g, m->kv_len[r], m->begin[r], i, it[X_KV_BEGIN], next);
                next = it[X_KV_END];
                const int64_t keys = (int64_t)it[X_KV_END] - it[X_KV_BEGIN];
                if (k == 1) {
                    FUZZ_CHECK(it[X_SLOT] < 0, "unsplit request %d head %d writes partial slot %d",
                               r, g, it[X_SLOT]);
                } else {
                    FUZZ_CHECK(keys > 0 && (i + 1 == k ? keys <= m->chunk : keys == m->chunk),
                               "request %d head %d chunk %d has %lld keys, chunk %lld", r, g, i,
                               (long long)keys, (long long)m->chunk);
                    const int32_t slot = it[X_SLOT];
                    FUZZ_CHECK(slot == merge[2 * r] + g * k + i,
                               "request %d head %d chunk %d: slot %d, merge_info says %d", r, g, i,
                               slot, merge[2 * r] + g * k + i);
                    FUZZ_CHECK(slot >= 0 && slot < max_items && !slot_used[slot],
                               "request %d head %d chunk %d: slot %d reused or beyond the "
                               "scratch's %d",
                               r, g, i, slot, max_items);
                    slot_used[slot] = true;
                    slots_end = slot + 1 > slots_end ? slot + 1 : slots_end;
                }
                model_item *w = &want[num_want++];
                memcpy(w->w, it, sizeof(int32_t) * X_INTS);
                w->cost = keys + ITEM_COST;
            }
            FUZZ_CHECK(next == m->kv_len[r], "request %d head %d: keys [%d, %d) not covered", r, g,
                       next, m->kv_len[r]);
        }
    }
    flp_plan_summary s;
    flp_plan_summarize(plan, &s);
    FUZZ_CHECK(s.decode_ctas == GRID && s.decode_items == n, "summary: grid %d, items %d",
               s.decode_ctas, s.decode_items);
    FUZZ_CHECK(s.decode_partial_slots >= slots_end && s.decode_partial_slots <= max_items &&
                   (slots_end > 0 || s.decode_partial_slots == 0),
               "summary: %d partial slots, %d used", s.decode_partial_slots, slots_end);
    check_assignment(want, num_want, X_INTS, GRID, indptr, items, describe_item);
}

/* ---- runs ------------------------------------------------------------------------------- */

/* A run with ids as its kv_indices (check_run_page_ids). */
static flp_status run_with_ids(flp_context *ctx, const flp_plan *plan, const void *args,
                               const flp_tensor *ids) {
    flp_decode_run_args ra = *(const flp_decode_run_args *)args;
    ra.kv_indices = ids;
    return flp_decode_run(ctx, plan, &ra);
}

/* Runs the plan's current partition (the last accepted batch, m) and checks the launch. draw:
 * lse or not (bit 0), the caches' pages (bits 1-2 and 7, run_cache_pages), the page ids (bits
 * 3-7, check_run_page_ids). */
static void check_run(flp_context *ctx, const flp_plan *plan, const caps *c, const model *m,
                      const run_buffers *rb, uint8_t draw) {
    const bool with_lse = draw & 1;
    const int64_t pages = run_cache_pages(m->pages_at_run, m->max_page_id, m->ids_max, draw);
    const int64_t rows = (int64_t)m->batch_size * m->qo_len;
    const int64_t q_shape[3] = {rows, c->hq, c->head_dim}, lse_shape[2] = {rows, c->hq};
    const bool nhd = m->layout == FLP_KV_LAYOUT_NHD;
    int64_t kv_shape[4] = {pages, nhd ? m->page_size : c->hkv, nhd ? c->hkv : m->page_size,
                           c->head_dim};
    flp_tensor lse = broadcast(rb->lse, FLP_DTYPE_F32, 2, lse_shape);
    flp_decode_run_args ra = {
        .q = broadcast(rb->q, m->variant.q_dtype, 3, q_shape),
        .k_cache = broadcast(rb->kv, m->variant.kv_dtype, 4, kv_shape),
        .out = broadcast(rb->out, m->variant.q_dtype, 3, q_shape),
        .lse = with_lse ? &lse : NULL,
    };
    ra.v_cache = ra.k_cache;
    const int queued = fake_runs_queued;
    if (m->max_page_id >= 0) { /* 3 "Paged KV": the run checks the largest id the plan holds */
        kv_shape[0] = m->max_page_id;
        ra.k_cache.shape[0] = ra.v_cache.shape[0] = kv_shape[0];
        const flp_status st = flp_decode_run(ctx, plan, &ra);
        char page[32];
        snprintf(page, sizeof page, "page %d", m->max_page_id);
        check_refused_run(ctx, st, queued, page);
        ra.k_cache.shape[0] = ra.v_cache.shape[0] = pages;
    }
    flp_tensor ids;
    ra.kv_indices = check_run_page_ids(ctx, plan, run_with_ids, &ra, &ra.out, rb, m->pages_at_run,
                                       m->total_pages, (uint8_t)(draw >> 3), &ids);
    check_run_queued(ctx, flp_decode_run(ctx, plan, &ra), queued);
    const flp_decode_launch *l = &fake_last_decode;
    const flp_plan_layout *lay = &plan->layout;
    FUZZ_CHECK(l->params.plan == plan->buffer->device_address + plan->base + lay->info,
               "params.plan is not the plan's info struct");
    FUZZ_CHECK(l->params.q == rb->q->device_address && l->params.o == rb->out->device_address &&
                   l->params.k == rb->kv->device_address &&
                   l->params.lse == (with_lse ? rb->lse->device_address : 0),
               "launch addresses");
    /* the page ids: the run's tensor, else the plan's copy; ids beyond the caches' pages are
     * not followed */
    const uint64_t plan_ids = plan->buffer->device_address + plan->base + lay->kv_indices;
    const uint64_t want_ids = ra.kv_indices ? rb->ids->device_address + ids.offset : plan_ids;
    FUZZ_CHECK(l->params.kv_indices == want_ids && l->params.num_pages == pages,
               "launch page ids at %#llx of %lld pages, want %#llx (%s) of %lld",
               (unsigned long long)l->params.kv_indices, (long long)l->params.num_pages,
               (unsigned long long)want_ids, ra.kv_indices ? "the run's" : "the plan's",
               (long long)pages);
    check_params_slot(plan, &l->slot, lay->params_slot);
    FUZZ_CHECK(l->num_ctas == GRID && l->merge_grid == c->max_batch * c->hq,
               "grids %d / %d, want %d / %d", l->num_ctas, l->merge_grid, GRID,
               c->max_batch * c->hq);
    FUZZ_CHECK(l->q_dtype == (int32_t)m->variant.q_dtype &&
                   l->kv_dtype == (int32_t)m->variant.kv_dtype && l->head_dim == c->head_dim &&
                   l->group_size == c->group &&
                   l->max_qo_len == (c->max_qo_len ? c->max_qo_len : 1),
               "kernel choice: dtypes %d/%d dim %d group %d max_qo_len %d", l->q_dtype, l->kv_dtype,
               l->head_dim, l->group_size, l->max_qo_len);
    FUZZ_CHECK(l->schedule.qo_len == m->qo_len && l->schedule.flags == m->variant.flags,
               "view: qo_len %d flags %#x, model %d %#x", l->schedule.qo_len, l->schedule.flags,
               m->qo_len, m->variant.flags);
    const flp_decode_plan_info *p = (const flp_decode_plan_info *)plan_device_region(plan);
    const int32_t *indptr = device_words(plan, p->off_work_indptr);
    const int32_t *items = device_words(plan, p->off_work_items);
    FUZZ_CHECK(memcmp(l->schedule.work_indptr, indptr, sizeof(int32_t) * (GRID + 1)) == 0,
               "the launch's work_indptr differs from the uploaded one");
    FUZZ_CHECK(memcmp(l->schedule.work_items, items,
                      sizeof(int32_t) * FLP_WORK_ITEM_INTS * (size_t)indptr[GRID]) == 0,
               "the launch's work items differ from the uploaded ones");
    const int32_t batch = m->batch_size;
    FUZZ_CHECK(memcmp(l->schedule.merge_info, device_words(plan, p->off_merge_info),
                      sizeof(int32_t) * 2 * (size_t)batch) == 0 &&
                   memcmp(l->schedule.kv_begin, device_words(plan, p->off_kv_begin),
                          sizeof(int32_t) * (size_t)batch) == 0 &&
                   memcmp(l->schedule.kv_end, device_words(plan, p->off_kv_len),
                          sizeof(int32_t) * (size_t)batch) == 0 &&
                   l->schedule.chunk_size == p->chunk_size,
               "the launch's merge_info, key ranges or chunk size differ from the uploaded ones");
}

/* ---- capacities at the edge ----------------------------------------------------------------- */

/* Capacities up to what plan creation accepts (max_batch_size 2^24, 4096 heads, 2^30 pages),
 * asked of flp_plan_workspace_size only (nothing is allocated). A refusal is fine; an accepted
 * plan must be one the documentation can describe:
 * - its size holds the decode region of 5.2 sized by 5.5's bound of max_batch_size x Hkv +
 *   grid items (a lower bound: the parts without their alignment);
 * - that many items are counted by int32 work_indptr entries (3 "Every index array is int32");
 * - every array is found through the info struct's uint32 word offsets (5.2,
 *   flp_decode_plan_info), so partial_lse, the last one, starts within 2^32 words. */
static void check_edge_caps(flp_context *ctx, fuzz_input *in) {
    static const int32_t batches[] = {1 << 12, 1 << 15, 1 << 16, 1 << 18, 1 << 19,
                                      1 << 20, 1 << 22, 1 << 24, 3 << 20, 1000000};
    static const int32_t kv_heads[] = {1, 8, 32, 128, 512, 1024, 2048, 4096};
    static const int32_t groups[] = {1, 2, 8, 16, 64, 4096};
    static const int32_t pages[] = {1, 1 << 16, 1 << 20, 1 << 30};
    static const int32_t dims[] = {64, 128, 256};
    const uint8_t k = fuzz_u8(in);
    const int32_t batch = k < 160 ? batches[k % 10] : 1 + (int32_t)fuzz_range(in, 0, 1 << 24);
    const int32_t hkv = kv_heads[fuzz_u8(in) % 8];
    int32_t group = groups[fuzz_u8(in) % 6];
    group = (int64_t)hkv * group > 4096 ? 4096 / hkv : group;
    /* one read per statement: an initializer list's order of evaluation is unspecified */
    const int32_t max_qo_len = 1 + pick(in, FLP_DECODE_MAX_QO_LEN);
    const int32_t max_pages = pages[fuzz_u8(in) % 4];
    const int32_t head_dim = dims[fuzz_u8(in) % 3];
    flp_plan_desc pd = {.max_batch_size = batch,
                        .max_qo_len = max_qo_len,
                        .max_pages = max_pages,
                        .num_qo_heads = hkv * group,
                        .num_kv_heads = hkv,
                        .head_dim = head_dim,
                        .decode_kernel = FLP_DECODE_KERNEL_VECTOR};
    size_t bytes = 0;
    if (edge_caps_refused(ctx, flp_plan_workspace_size(ctx, &pd, &bytes)))
        return;
    /* the documented parts, in 64 bits (at most about 2^61 here) */
    const uint64_t b = (uint64_t)batch, items = b * (uint64_t)hkv + GRID;
    const uint64_t rows = (uint64_t)pd.max_qo_len * (uint64_t)group;
    const uint64_t meta = sizeof(flp_decode_plan_info) + 4 * (b + 1) + 4 * 4 * b +
                          2 * (uint64_t)pd.head_dim + 4 * (uint64_t)pd.num_qo_heads +
                          4 * (GRID + 1) + 8 * b + 4 * FLP_WORK_ITEM_INTS * items +
                          4 * (uint64_t)pd.max_pages;
    const uint64_t partial_o = 4 * items * rows * (uint64_t)pd.head_dim;
    const uint64_t need = meta + partial_o + 4 * items * rows + 256;
    FUZZ_CHECK(items <= INT32_MAX,
               "capacities (batch %d, %d KV heads) accepted: up to %llu work items, beyond the "
               "int32 work_indptr",
               batch, hkv, (unsigned long long)items);
    FUZZ_CHECK(bytes >= need,
               "capacities (batch %d, heads %d/%d, qo %d, dim %d, pages %d) accepted with %zu "
               "bytes, the documented layout needs at least %llu",
               batch, pd.num_qo_heads, hkv, pd.max_qo_len, pd.head_dim, pd.max_pages, bytes,
               (unsigned long long)need);
    FUZZ_CHECK((meta + partial_o) / 4 <= UINT32_MAX,
               "capacities (batch %d, heads %d/%d, qo %d, dim %d, pages %d) accepted: partial_lse "
               "starts at least %llu words after the info struct, beyond its uint32 offsets",
               batch, pd.num_qo_heads, hkv, pd.max_qo_len, pd.head_dim, pd.max_pages,
               (unsigned long long)((meta + partial_o) / 4));
}

/* ---- the target --------------------------------------------------------------------------- */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static flp_context *ctx;
    static run_buffers rb;
    if (!ctx) /* for the whole run */
        ctx = open_run_context(&rb, 0, ARR_PAGES);
    fuzz_input in = {data, size};
    if (fuzz_u8(&in) < 12) { /* now and then, capacities at the edge (nothing allocated) */
        check_edge_caps(ctx, &in);
        return 0;
    }
    const caps c = pick_caps(&in);
    flp_plan_desc pd = {.max_batch_size = c.max_batch,
                        .max_qo_len = c.max_qo_len,
                        .max_pages = c.max_pages,
                        .max_qo_rows = c.max_qo_rows,
                        .num_qo_heads = c.hq,
                        .num_kv_heads = c.hkv,
                        .head_dim = c.head_dim,
                        .decode_kernel = FLP_DECODE_KERNEL_VECTOR};
    flp_plan *plan = NULL;
    flp_status st = flp_plan_create(ctx, &pd, &plan);
    FUZZ_CHECK(st == FLP_OK, "plan_create(batch %d, qo %d, pages %d, heads %d/%d, dim %d): %s",
               c.max_batch, c.max_qo_len, c.max_pages, c.hq, c.hkv, c.head_dim,
               flp_context_last_error(ctx));
    check_layout(plan, &c);
    static const flp_decode_run_args no_args;
    FUZZ_CHECK(flp_decode_run(ctx, plan, &no_args) == FLP_ERROR_INVALID_ARGUMENT &&
                   strstr(flp_context_last_error(ctx), "no decode plan"),
               "a run before any decode plan: %s", flp_context_last_error(ctx));

    static batch b;
    static model accepted; /* the plan's current partition */
    bool planned = false;
    for (int round = 0; round < 12 && fuzz_more(&in); round++) {
        const uint8_t k = fuzz_u8(&in);
        defect d = k < 96 ? VALID : (defect)(1 + k % (NUM_DEFECTS - 1));
        outcome o;
        pick_batch(&in, &c, &d, &b, &o);
        snapshot before;
        take_snapshot(plan, &before);
        const flp_decode_plan_args args = args_of(&b);
        const int queued = fake_runs_queued;
        st = flp_decode_plan(ctx, plan, &args);
        FUZZ_CHECK(st == o.status,
                   "round %d, defect %d: status %d, documented %d (%s); batch %d, qo_len %d, "
                   "page size %d",
                   round, (int)d, st, o.status, flp_context_last_error(ctx), b.batch_size, b.qo_len,
                   b.page_size);
        check_message(ctx, FN, st, &o);
        FUZZ_CHECK(fake_runs_queued == queued, "a plan call queued a run");
        check_unchanged(plan, &before, st != FLP_OK);
        if (st == FLP_OK && b.null_indices)
            check_ids_not_uploaded(before.device, plan_device_region(plan), plan->layout.kv_indices,
                                   c.max_pages);
        free_snapshot(&before);
        if (st == FLP_OK) {
            model_batch(&b, &accepted);
            check_info(plan, &c, &b, &accepted);
            check_schedule(plan, &c, &accepted);
            planned = true;
        }
        if (planned) /* the current partition runs, whether this call was accepted or not */
            check_run(ctx, plan, &c, &accepted, &rb, fuzz_u8(&in));
    }
    flp_plan_destroy(plan);
    return 0;
}
