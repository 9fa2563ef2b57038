/* Fuzz target: the prefill planner (flp_prefill_plan: core/prefill_plan.c, core/batch_args.c,
 * core/prefill_schedule.c, core/assign.c) on the fake host backend, against a model written
 * from docs/design.md (3 "Batches", "Paged KV", "Ragged KV", "Positions", "Logits and masks",
 * "GQA and packed rows"; 5.1, 5.2, 5.6, 5.7; 6) and flashport.h.
 *
 * The input is a plan with random capacities (max_batch_size, max_qo_rows, max_pages, KV heads,
 * GQA group 1..8, head dim; now and then a decode-only plan), which first gets a decode plan,
 * then a series of batches over ragged or paged KV (ragged queries with qo_len <= kv_len, empty
 * requests, prompts and appends, page sizes 1..128, NHD/HND, a quarter of the page tables with
 * pages and half of the empty ones given with kv_indices = NULL (the runs pass the page ids),
 * no/causal/custom masks, windows, mask offsets up to the int32 edge). Each batch is valid, or
 * broken in exactly one way chosen before it is drawn, so the documented outcome is
 * unambiguous:
 * - a broken batch is refused with the documented status (FLP_ERROR_CAPACITY for a capacity,
 *   FLP_ERROR_INVALID_ARGUMENT otherwise) and a message naming flp_prefill_plan, the argument
 *   and the value; the plan is unchanged (mirrors, device memory, summary) and still runs;
 * - a valid batch is accepted; the prefill region read back from the fake device holds the
 *   info struct and the batch's arrays (the page ids only when given: a plan given none uploads
 *   none), and a schedule where, for every (request, KV head), the items' packed-row ranges
 *   partition the request's rows into query tiles, and the items of a tile tile exactly the
 *   keys its rows can keep (the union over its rows of the keys the causal mask and the window
 *   allow, a custom mask clipping nothing): so every keepable (request, query token, query
 *   head, key) is covered exactly once and no key no row can keep is scheduled. Split tiles are
 *   chunks in key order writing consecutive partial slots, merged once by one merge item; the
 *   tile, split decision and bounds of 5.6 and the longest-first assignment of 5.7 hold;
 * - no prefill call touches the decode partition (5: each plan call replaces only its own);
 * - flp_prefill_run refuses K/V too small for the plan (for paged KV, the largest page id the
 *   plan holds; a plan given none takes caches of any size), a custom mask one byte short, a
 *   kv_indices tensor with ragged KV or a plan that holds the ids, and for a plan given none a
 *   missing (when there are pages), mistyped, short or overlapping one (fuzz_plan_check.h,
 *   check_run_page_ids); and hands the backend a launch whose schedule view is the uploaded
 *   schedule, whose page ids are the plan's copy or the run's tensor and whose num_pages is the
 *   caches' (both 0 with ragged KV).
 * Now and then the input is instead a set of capacities up to the limits plan creation accepts,
 * asked of flp_plan_workspace_size only (check_edge_caps).
 * Nothing of the library's own schedule code is reused: the model recomputes everything. */
#include "core/plan.h"
#include "core/prefill_schedule.h"
#include "tests/fake_backend.h"
#include "tests/fuzz/fuzz_input.h"
#include "tests/fuzz/fuzz_plan_check.h"
#include "tests/fuzz/fuzz_plan_draw.h"

#include <string.h>

#define FN "flp_prefill_plan"
#define GRID FAKE_PREFILL_GRID /* the fake backend's prefill grid */
#define MAX_BATCH 8            /* largest max_batch_size drawn */
#define ARR_BATCH (MAX_BATCH + 4)
#define MAX_ROWS 512 /* largest max_qo_rows drawn */
#define MAX_PAGES 256
#define ARR_PAGES (MAX_PAGES + 16)
#define MAX_HKV 4
#define MAX_GROUP 8
#define MAX_HQ (MAX_HKV * MAX_GROUP)
/* 5.6 "Bounds": items <= (max_qo_rows * group / 16 + max_batch_size) * Hkv + 2 * grid */
#define MAX_ITEMS ((MAX_ROWS * MAX_GROUP / 16 + MAX_BATCH) * MAX_HKV + 2 * GRID)
#define MAX_SLOTS (2 * GRID)
#define MAX_MERGES GRID
#define MAX_TILE 128   /* FLP_PREFILL_MAX_TILE: rows of a partial slot */
#define MIN_CHUNK 256  /* 5.6: a split chunk is at least 256 keys ... */
#define CHUNK_ALIGN 64 /* ... rounded up to a multiple of 64 */
#define ITEM_COST 32   /* 5.6: cost = keys + 32 */
#define MASK_BYTES 65536

/* ---- the capacities and one batch -------------------------------------------------------- */

typedef struct caps {
    int32_t max_batch, max_qo_rows, max_pages, hq, hkv, group, head_dim;
} caps;

typedef struct batch {
    int32_t batch_size;
    int32_t storage, page_size, layout; /* page_size and layout: paged only (else anything) */
    int32_t qo_indptr[ARR_BATCH + 1], kv_indptr[ARR_BATCH + 1], last[ARR_BATCH];
    int32_t indices[ARR_PAGES];
    int32_t mask_indptr[ARR_BATCH], q_off[ARR_BATCH], k_off[ARR_BATCH];
    float slopes[MAX_HQ];
    bool null_qo_indptr, null_kv_indptr, null_last, null_indices, with_mask_indptr, with_q_off,
        with_k_off, with_slopes, with_indices, with_last;
    flp_variant variant;
} batch;

/* Ways a batch is broken on purpose (one at a time). */
typedef enum defect {
    VALID,
    BAD_BATCH_SIZE,
    OVER_BATCH,
    NULL_QO_INDPTR,
    BAD_QO_INDPTR0,
    DECREASING_QO_INDPTR,
    OVER_QO_ROWS,
    BAD_STORAGE,
    NULL_KV_INDPTR,
    BAD_KV_INDPTR0,
    DECREASING_KV_INDPTR,
    RAGGED_WITH_INDICES,
    RAGGED_WITH_LAST,
    RAGGED_TOO_LONG,
    BAD_PAGE_SIZE,
    BAD_LAYOUT,
    OVER_PAGES,
    NULL_LAST,
    BAD_LAST,
    IDS_AT_RUN, /* no defect (once NULL_INDICES): paged, planned without its page ids, with pages */
    NEGATIVE_PAGE,
    QO_OVER_KV,
    CUSTOM_WITHOUT_OFFSETS,
    OFFSETS_WITHOUT_CUSTOM,
    NEGATIVE_MASK_OFFSET,
    MASK_BEYOND_INT32,
    OTHER_HEAD_DIM,
    BAD_WINDOW,
    BAD_SLOPE,
    NUM_DEFECTS
} defect;

static caps pick_caps(fuzz_input *in) {
    caps c;
    c.max_batch = 1 + pick(in, MAX_BATCH);
    const uint8_t rows = fuzz_u8(in);
    /* mostly room for long prompts, sometimes a small capacity, now and then decode only */
    c.max_qo_rows = rows < 8 ? 0 : rows < 64 ? 1 + pick(in, 32) : 1 + pick(in, MAX_ROWS);
    c.max_pages = fuzz_u8(in) % 2 ? 1 + pick(in, 24) : 1 + pick(in, MAX_PAGES);
    static const int32_t kv_heads[] = {1, 1, 2, 3, 4};
    c.hkv = kv_heads[fuzz_u8(in) % 5];
    c.group = 1 + pick(in, MAX_GROUP);
    c.hq = c.hkv * c.group;
    static const int32_t dims[] = {64, 128, 256};
    c.head_dim = dims[fuzz_u8(in) % 3];
    return c;
}

/* Prefill variants: no, causal and custom masks. */
static const variant_draw prefill_variants = {
    .mask_modes = 3, .soft_cap = 50.0f, .sm_scale = 0.125f};

/* Query tokens and keys of each request, drawn: empty requests, decode-like and speculative
 * ones, prompts (qo_len == kv_len) and appends (qo_len < kv_len), some very long; with ragged
 * KV, at most one of the longest a request may be (3 "Batches": kv_len <= 2^30). Returns that
 * one's index, -1 when none. */
static int32_t pick_lengths(fuzz_input *in, const caps *c, const batch *b, int32_t *qo,
                            int32_t *kv) {
    int32_t rows_left = c->max_qo_rows, pages_left = c->max_pages, longest = -1;
    for (int32_t r = 0; r < b->batch_size; r++) {
        const uint8_t kind = fuzz_u8(in) % 8;
        int32_t q = kind == 0 ? 0 : kind < 4 ? 1 + pick(in, 8) : 1 + pick(in, MAX_ROWS);
        q = q > rows_left ? rows_left : q;
        const uint8_t extra = fuzz_u8(in);
        int32_t k = q + (extra < 64    ? 0
                         : extra < 128 ? pick(in, 20)
                         : extra < 224 ? pick(in, 700)
                                       : pick(in, 5000));
        if (kind == 0 && extra % 2)
            k = 0;
        if (b->storage == FLP_KV_RAGGED && extra >= 250 && longest < 0) {
            k = (1 << 30) - extra % 3; /* the others add at most 8 x 5512: kv_indptr fits */
            longest = r;
        }
        if (b->storage == FLP_KV_PAGED) { /* within the pages left */
            const int64_t room = (int64_t)pages_left * b->page_size;
            k = k > room ? (int32_t)room : k;
            q = q > k ? k : q;
            pages_left -= (k + b->page_size - 1) / b->page_size;
        }
        qo[r] = q;
        kv[r] = k;
        rows_left -= q;
    }
    return longest;
}

/* Draws a batch for c, broken as *d says (*d becomes VALID when that defect is impossible for
 * the batch), and the documented outcome of planning it. */
static void pick_batch(fuzz_input *in, const caps *c, defect *d, batch *b, outcome *o) {
    memset(b, 0, sizeof *b);
    memset(o, 0, sizeof *o);
    if (c->max_qo_rows == 0)
        *d = VALID;
    b->batch_size =
        *d == OVER_BATCH ? c->max_batch + 1 + fuzz_u8(in) % 4 : 1 + pick(in, c->max_batch);
    b->storage = fuzz_u8(in) % 2 ? FLP_KV_PAGED : FLP_KV_RAGGED;
    b->page_size = pick_page_size(in);
    b->layout = fuzz_u8(in) % 2;
    const bool paged = b->storage == FLP_KV_PAGED;
    /* defects of one storage only: the other storage falls back to a valid batch */
    if ((!paged && *d >= BAD_PAGE_SIZE && *d <= NEGATIVE_PAGE) ||
        (paged && *d >= RAGGED_WITH_INDICES && *d <= RAGGED_TOO_LONG))
        *d = VALID;
    if (!paged && fuzz_u8(in) % 4 == 0) { /* ragged ignores both */
        b->page_size = (int32_t)fuzz_i64(in);
        b->layout = (int32_t)fuzz_i64(in);
    }
    const int32_t ps = b->page_size;

    int32_t qo[ARR_BATCH], kv[ARR_BATCH];
    const int32_t longest = pick_lengths(in, c, b, qo, kv);
    pick_variant(in, c->head_dim, &prefill_variants, &b->variant);
    const bool custom = b->variant.mask == FLP_MASK_CUSTOM;
    /* the request a per-request defect hits: the first from a random start that fits it */
    int32_t target = -1;
    const int32_t start = pick(in, b->batch_size);
    for (int32_t i = 0; i < b->batch_size && target < 0; i++) {
        const int32_t r = (start + i) % b->batch_size;
        const bool fits = *d == QO_OVER_KV || *d == MASK_BEYOND_INT32 ? qo[r] > 0
                          : *d == BAD_LAST                            ? kv[r] > 0
                                                                      : true;
        target = fits ? r : -1;
    }
    if (target < 0) {
        *d = VALID;
        target = start;
    }
    if (*d == NEGATIVE_PAGE || *d == IDS_AT_RUN) { /* these need a page somewhere */
        int32_t keys = 0;
        for (int32_t r = 0; r < b->batch_size; r++)
            keys += kv[r];
        if (keys == 0)
            *d = VALID;
    }
    if (*d == QO_OVER_KV) /* 3 "Rows and keys": prefill requires qo_len <= kv_len */
        kv[target] = qo[target] - 1 - pick(in, qo[target]);
    if (*d == RAGGED_TOO_LONG && longest >= 0)
        target = longest; /* another growing by 2^30 would overflow kv_indptr */
    if ((*d == CUSTOM_WITHOUT_OFFSETS || *d == NEGATIVE_MASK_OFFSET || *d == MASK_BEYOND_INT32) &&
        !custom)
        b->variant.mask = FLP_MASK_CUSTOM;
    /* a request's mask bits must end within int32 bytes: fewer queries for the longest ones */
    for (int32_t r = 0; b->variant.mask == FLP_MASK_CUSTOM && r < b->batch_size; r++)
        if (((int64_t)qo[r] * kv[r] + 7) / 8 > INT32_MAX - 8)
            qo[r] = (int32_t)(((int64_t)INT32_MAX - 8) * 8 / kv[r]);
    if (*d == OFFSETS_WITHOUT_CUSTOM && custom)
        b->variant.mask = fuzz_u8(in) % 2 ? FLP_MASK_CAUSAL : FLP_MASK_NONE;

    /* the arrays */
    int32_t total_pages = 0;
    for (int32_t r = 0; r < b->batch_size; r++) {
        b->qo_indptr[r + 1] = b->qo_indptr[r] + qo[r];
        if (paged) {
            const int32_t pages = (kv[r] + ps - 1) / ps;
            b->kv_indptr[r + 1] = b->kv_indptr[r] + pages;
            b->last[r] = pages ? kv[r] - (pages - 1) * ps : (int32_t)fuzz_i64(in); /* ignored */
            total_pages += pages;
        } else {
            b->kv_indptr[r + 1] = b->kv_indptr[r] + kv[r];
        }
    }
    b->with_indices = paged;
    b->with_last = paged;
    for (int32_t i = 0; i < total_pages; i++)
        b->indices[i] = pick_page_id(in, c->max_pages);
    b->null_indices = paged && total_pages == 0 && fuzz_u8(in) % 2; /* nothing to read */
    b->with_mask_indptr = b->variant.mask == FLP_MASK_CUSTOM;
    /* mask offsets: packed one after another, anywhere, overlapping, or ending exactly at the
     * int32 edge (still valid: 3 "custom mask") */
    const uint8_t layout_kind = fuzz_u8(in) % 4;
    int64_t next = 0;
    for (int32_t r = 0; r < b->batch_size; r++) {
        const int64_t bytes = ((int64_t)qo[r] * kv[r] + 7) / 8;
        const uint8_t k = fuzz_u8(in);
        int64_t at = layout_kind == 0 ? next : layout_kind == 1 ? pick(in, 4096) : k % 7;
        if ((layout_kind == 3 && k < 32) || at + bytes > INT32_MAX)
            at = INT32_MAX - bytes;
        b->mask_indptr[r] = (int32_t)at;
        next = at + bytes;
    }
    const uint8_t extras = fuzz_u8(in);
    b->with_q_off = extras & 1;
    b->with_k_off = extras & 2;
    b->with_slopes = extras & 4;
    /* a quarter of the page tables with pages come without their ids (the runs pass them), but
     * not when the defect is in an id (extras' bits 3-4: the input reads as it did before) */
    if (paged && total_pages > 0 && *d != NEGATIVE_PAGE && (extras >> 3) % 4 == 1)
        b->null_indices = true;
    for (int32_t r = 0; r < b->batch_size; r++) {
        b->q_off[r] = (int32_t)fuzz_i64(in);
        b->k_off[r] = b->q_off[r] ^ 3;
    }
    for (int32_t h = 0; h < c->hq; h++)
        b->slopes[h] = b->with_slopes ? 0.25f / (float)(1 + h) + (float)(extras >> 6) : 0.0f;

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
    case NULL_QO_INDPTR:
        b->null_qo_indptr = true;
        mention(o, "qo_indptr is NULL");
        break;
    case BAD_QO_INDPTR0:
        break_indptr0(in, "qo_indptr", b->qo_indptr, o);
        break;
    case DECREASING_QO_INDPTR:
        decrease_indptr(in, "qo_indptr", b->qo_indptr, target, o);
        break;
    case OVER_QO_ROWS: /* more rows than the plan holds: the last request grows */
        over_indptr_end(in, "qo_indptr", b->qo_indptr, b->batch_size, "max_qo_rows", c->max_qo_rows,
                        o);
        break;
    case BAD_STORAGE:
        break_enum(in, "kv_storage", &b->storage, o);
        break;
    case NULL_KV_INDPTR:
        b->null_kv_indptr = true;
        mention(o, "kv_indptr is NULL");
        break;
    case BAD_KV_INDPTR0:
        break_indptr0(in, "kv_indptr", b->kv_indptr, o);
        break;
    case DECREASING_KV_INDPTR:
        decrease_indptr(in, "kv_indptr", b->kv_indptr, target, o);
        break;
    case RAGGED_WITH_INDICES:
        b->with_indices = true;
        mention(o, "kv_indices");
        break;
    case RAGGED_WITH_LAST:
        b->with_last = true;
        mention(o, "kv_last_page_len");
        break;
    case RAGGED_TOO_LONG: { /* 3 "Batches": kv_len <= 2^30 */
        const int32_t grow = (1 << 30) + 1 + pick(in, 1000) - kv[target];
        for (int32_t r = target; r < b->batch_size; r++)
            b->kv_indptr[r + 1] += grow;
        mention(o, "request %d", target);
        mention(o, "%d keys", kv[target] + grow);
        break;
    }
    case BAD_PAGE_SIZE:
        break_page_size(in, &b->page_size, o);
        break;
    case BAD_LAYOUT:
        break_enum(in, "kv_layout", &b->layout, o);
        break;
    case OVER_PAGES:
        over_indptr_end(in, "kv_indptr", b->kv_indptr, b->batch_size, "max_pages", c->max_pages, o);
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
        break_page_id(in, b->indices, total_pages, o);
        break;
    case QO_OVER_KV: {
        mention(o, "request %d", target);
        mention(o, "qo_len = %d", qo[target]);
        mention(o, "kv_len = %d", kv[target]);
        break;
    }
    case CUSTOM_WITHOUT_OFFSETS:
        b->with_mask_indptr = false;
        mention(o, "mask_indptr is NULL");
        break;
    case OFFSETS_WITHOUT_CUSTOM:
        b->with_mask_indptr = true;
        mention(o, "mask_indptr");
        break;
    case NEGATIVE_MASK_OFFSET:
        b->with_mask_indptr = true;
        b->mask_indptr[target] = pick_negative(in);
        mention(o, "mask_indptr[%d] = %d", target, b->mask_indptr[target]);
        break;
    case MASK_BEYOND_INT32: { /* the bits of the target end past byte 2^31 - 1 */
        const int64_t bytes = ((int64_t)qo[target] * kv[target] + 7) / 8;
        b->with_mask_indptr = true;
        b->mask_indptr[target] = (int32_t)(INT32_MAX - bytes + 1 + pick(in, (int32_t)bytes));
        mention(o, "request %d", target);
        mention(o, "%lld", (long long)(b->mask_indptr[target] + bytes));
        break;
    }
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
    /* 5.1: a plan without prefill capacity refuses every prefill batch (only valid ones are
     * drawn for it: which of two defects is reported first is not documented) */
    if (c->max_qo_rows == 0) {
        o->status = FLP_ERROR_CAPACITY;
        mention(o, "max_qo_rows = 0");
    }
}

static flp_prefill_plan_args args_of(const batch *b) {
    flp_prefill_plan_args a = {
        .batch_size = b->batch_size,
        .qo_indptr = b->null_qo_indptr ? NULL : b->qo_indptr,
        .kv_storage = (flp_kv_storage)b->storage,
        .kv_indptr = b->null_kv_indptr ? NULL : b->kv_indptr,
        .kv_indices = b->with_indices && !b->null_indices ? b->indices : NULL,
        .kv_last_page_len = b->with_last && !b->null_last ? b->last : NULL,
        .page_size = b->page_size,
        .kv_layout = (flp_kv_layout)b->layout,
        .mask_indptr = b->with_mask_indptr ? b->mask_indptr : NULL,
        .q_rope_offset = b->with_q_off ? b->q_off : NULL,
        .k_rope_offset = b->with_k_off ? b->k_off : NULL,
        .alibi_slopes = b->with_slopes ? b->slopes : NULL,
        .variant = b->variant,
    };
    return a;
}

/* ---- what a valid batch means (the model) ------------------------------------------------- */

typedef struct model {
    int32_t batch_size, total_rows, total_kv_rows;
    int32_t max_page_id; /* paged: the largest page id the plan holds, -1: none (or given none) */
    bool paged;
    bool pages_at_run;   /* paged, planned with kv_indices = NULL: each run passes the page ids */
    int32_t total_pages; /* paged: kv_indptr[batch_size]; ragged: 0 */
    int32_t ids_max;     /* paged: the largest page id of the batch, given or not, -1: none */
    int32_t qo[ARR_BATCH], kv[ARR_BATCH];
    int64_t mask_bytes; /* bytes the custom mask must hold */
    bool causal;
    int32_t window_left;   /* -1: none */
    variant_model variant; /* dtypes and flags, the custom mask's and paged KV's included */
    int32_t page_size;
    flp_kv_layout layout;
} model;

static void model_batch(const caps *c, const batch *b, model *m) {
    (void)c;
    memset(m, 0, sizeof *m);
    const flp_variant *v = &b->variant;
    m->batch_size = b->batch_size;
    m->paged = b->storage == FLP_KV_PAGED;
    m->page_size = b->page_size;
    m->layout = (flp_kv_layout)b->layout;
    m->causal = v->mask == FLP_MASK_CAUSAL;
    m->window_left = v->use_window ? v->window_left : -1;
    m->variant = model_variant(v);
    m->variant.flags |=
        (v->mask == FLP_MASK_CUSTOM ? FLP_FLAG_CUSTOM_MASK : 0u) | (m->paged ? FLP_FLAG_PAGED : 0u);
    m->total_rows = b->qo_indptr[b->batch_size];
    m->total_kv_rows = m->paged ? 0 : b->kv_indptr[b->batch_size];
    for (int32_t r = 0; r < b->batch_size; r++) {
        m->qo[r] = b->qo_indptr[r + 1] - b->qo_indptr[r];
        const int32_t n = b->kv_indptr[r + 1] - b->kv_indptr[r];
        m->kv[r] = !m->paged ? n : n ? (n - 1) * b->page_size + b->last[r] : 0;
        /* 3 "custom mask": request r's [qo_len, kv_len] bits from byte mask_indptr[r] */
        const int64_t end = b->mask_indptr[r] + ((int64_t)m->qo[r] * m->kv[r] + 7) / 8;
        if (b->with_mask_indptr && m->qo[r] > 0 && end > m->mask_bytes)
            m->mask_bytes = end;
    }
    m->pages_at_run = m->paged && b->null_indices;
    m->total_pages = m->paged ? b->kv_indptr[b->batch_size] : 0;
    m->ids_max = -1;
    for (int32_t i = 0; i < m->total_pages; i++)
        m->ids_max = b->indices[i] > m->ids_max ? b->indices[i] : m->ids_max;
    m->max_page_id = m->pages_at_run ? -1 : m->ids_max;
}

/* The keys packed rows [p0, p1) of request r can keep, [*lo, *hi): 3 "Positions" (query token
 * i at kv_len - qo_len + i, packed row p is token p / group), "Logits and masks" (causal: j <=
 * pos; window: j >= pos - window_left). Both bounds grow with the row, so the rows' union is
 * from the first row's lowest key to the last row's highest. */
static void keepable(const model *m, int32_t group, int32_t r, int32_t p0, int32_t p1, int64_t *lo,
                     int64_t *hi) {
    const int64_t first = (int64_t)m->kv[r] - m->qo[r] + p0 / group;
    const int64_t last = (int64_t)m->kv[r] - m->qo[r] + (p1 - 1) / group;
    *lo = m->window_left >= 0 && first - m->window_left > 0 ? first - m->window_left : 0;
    *hi = m->causal && last + 1 < m->kv[r] ? last + 1 : m->kv[r];
}

/* ---- reading the plan back ----------------------------------------------------------------- */

/* The uploaded prefill region. */
static const uint8_t *prefill_region(const flp_plan *plan) {
    return plan_device_region(plan) + plan->prefill.layout.info;
}

static const int32_t *words(const flp_plan *plan, uint32_t word_offset) {
    return (const int32_t *)prefill_region(plan) + word_offset;
}

/* The decode partition is never touched by a prefill call; the prefill one only when accepted.
 * The summary's decode fields never change; the prefill ones only when accepted. */
static void check_unchanged(const flp_plan *plan, const snapshot *s, bool prefill_too) {
    FUZZ_CHECK(memcmp(s->host, plan->host, s->bytes) == 0,
               "a prefill plan call changed the decode mirror");
    FUZZ_CHECK(memcmp(s->device, plan_device_region(plan), s->bytes) == 0,
               "a prefill plan call changed the uploaded decode partition");
    flp_plan_summary now;
    flp_plan_summarize(plan, &now);
    FUZZ_CHECK(now.decode_ctas == s->summary.decode_ctas &&
                   now.decode_items == s->summary.decode_items &&
                   now.decode_partial_slots == s->summary.decode_partial_slots,
               "a prefill plan call changed the decode summary");
    if (!prefill_too || s->pf_bytes == 0)
        return;
    FUZZ_CHECK(memcmp(s->pf_host, plan->prefill.host, s->pf_bytes) == 0,
               "a refused call changed the prefill mirror");
    FUZZ_CHECK(memcmp(s->pf_device, prefill_region(plan), s->pf_bytes) == 0,
               "a refused call changed the uploaded prefill region");
    FUZZ_CHECK(memcmp(&now, &s->summary, sizeof now) == 0,
               "a refused call changed the summary (items %d -> %d, merges %d -> %d)",
               s->summary.prefill_items, now.prefill_items, s->summary.prefill_merge_items,
               now.prefill_merge_items);
}

static int32_t doc_max_items(const caps *c) {
    return (c->max_qo_rows * c->group / 16 + c->max_batch) * c->hkv + 2 * GRID;
}

/* 5.2: the prefill region after the decode one, its arrays in the documented order, each
 * 16-byte aligned and sized for the capacities, then 2 x grid slots of 128 rows of scratch. */
static void check_layout(const flp_plan *plan, const caps *c) {
    const flp_prefill_layout *l = &plan->prefill.layout;
    if (c->max_qo_rows == 0) {
        FUZZ_CHECK(l->info == 0 && l->end == 0 && plan->prefill.ctas == 0,
                   "a decode-only plan has a prefill region");
        return;
    }
    const size_t i32 = 4, batch = (size_t)c->max_batch;
    const size_t items = (size_t)doc_max_items(c);
    const layout_part parts[] = {
        {"info", l->info, sizeof(flp_prefill_plan_info), 256},
        {"qo_indptr", l->qo_indptr, i32 * (batch + 1), 16},
        {"kv_indptr", l->kv_indptr, i32 * (batch + 1), 16},
        {"kv_len", l->kv_len, i32 * batch, 16},
        {"q_rope_offset", l->q_rope_offset, i32 * batch, 16},
        {"k_rope_offset", l->k_rope_offset, i32 * batch, 16},
        {"mask_indptr", l->mask_indptr, i32 * batch, 16},
        {"rope_freq", l->rope_freq, i32 * (size_t)c->head_dim / 2, 16},
        {"alibi_slopes", l->alibi_slopes, i32 * (size_t)c->hq, 16},
        {"work_indptr", l->work_indptr, i32 * (GRID + 1), 16},
        {"merge_items", l->merge_items, i32 * FLP_MERGE_ITEM_INTS * MAX_MERGES, 16},
        {"work_items", l->work_items, i32 * FLP_PREFILL_ITEM_INTS * items, 16},
        {"kv_indices", l->kv_indices, i32 * (size_t)c->max_pages, 16},
        {"partial_o", l->partial_o, 4 * (size_t)MAX_SLOTS * MAX_TILE * (size_t)c->head_dim, 256},
        {"partial_lse", l->partial_lse, 4 * (size_t)MAX_SLOTS * MAX_TILE, 256},
        {"params_slot", l->params_slot, 256, 256},
    };
    FUZZ_CHECK(l->info >= plan->layout.params_slot + 256,
               "the prefill region at %zu overlaps the decode region", l->info);
    check_layout_parts(parts, sizeof parts / sizeof parts[0], l->end);
    check_metadata_end(l->metadata_end, l->kv_indices, c->max_pages, l->partial_o);
    FUZZ_CHECK(l->end <= plan->layout.total && plan->buffer->size >= plan->base + l->end,
               "the plan's buffer is too small for the prefill region");
    FUZZ_CHECK(plan->prefill.ctas == GRID && plan->prefill.max_items == (int32_t)items &&
                   plan->prefill.max_slots == MAX_SLOTS && plan->prefill.max_merges == MAX_MERGES,
               "prefill capacities: grid %d items %d slots %d merges %d (documented %zu items)",
               plan->prefill.ctas, plan->prefill.max_items, plan->prefill.max_slots,
               plan->prefill.max_merges, items);
}

static void check_info(const flp_plan *plan, const caps *c, const batch *b, const model *m) {
    const flp_prefill_plan_info *p = (const flp_prefill_plan_info *)prefill_region(plan);
    const flp_prefill_layout *l = &plan->prefill.layout;
#define WORDS_OK(field) (p->off_##field * 4u == l->field - l->info)
    FUZZ_CHECK(WORDS_OK(qo_indptr) && WORDS_OK(kv_indptr) && WORDS_OK(kv_len) &&
                   WORDS_OK(q_rope_offset) && WORDS_OK(k_rope_offset) && WORDS_OK(mask_indptr) &&
                   WORDS_OK(rope_freq) && WORDS_OK(alibi_slopes) && WORDS_OK(work_indptr) &&
                   WORDS_OK(work_items) && WORDS_OK(merge_items) && WORDS_OK(kv_indices) &&
                   WORDS_OK(partial_o) && WORDS_OK(partial_lse),
               "the info struct's array offsets differ from the layout");
#undef WORDS_OK
    FUZZ_CHECK(
        p->batch_size == m->batch_size && p->num_qo_heads == c->hq && p->num_kv_heads == c->hkv &&
            p->group_size == c->group && p->head_dim == c->head_dim &&
            p->page_size == (m->paged ? m->page_size : 0) && p->num_ctas == GRID,
        "info: batch %d heads %d/%d group %d dim %d page %d grid %d", p->batch_size,
        p->num_qo_heads, p->num_kv_heads, p->group_size, p->head_dim, p->page_size, p->num_ctas);
    const info_variant got = INFO_VARIANT(p);
    check_info_variant(&got, &b->variant, c->head_dim, &m->variant);

    const int32_t *qo_indptr = words(plan, p->off_qo_indptr);
    const int32_t *kv_indptr = words(plan, p->off_kv_indptr);
    const int32_t *kv_len = words(plan, p->off_kv_len);
    const int32_t *q_off = words(plan, p->off_q_rope_offset);
    const int32_t *k_off = words(plan, p->off_k_rope_offset);
    const int32_t *mask = words(plan, p->off_mask_indptr);
    const int32_t *indices = words(plan, p->off_kv_indices);
    const float *slopes = (const float *)words(plan, p->off_alibi_slopes);
    for (int32_t r = 0; r <= b->batch_size; r++)
        FUZZ_CHECK(qo_indptr[r] == b->qo_indptr[r] && kv_indptr[r] == b->kv_indptr[r],
                   "indptr[%d] uploaded %d/%d, given %d/%d", r, qo_indptr[r], kv_indptr[r],
                   b->qo_indptr[r], b->kv_indptr[r]);
    for (int32_t r = 0; r < b->batch_size; r++) {
        FUZZ_CHECK(kv_len[r] == m->kv[r], "kv_len[%d] uploaded %d, model %d", r, kv_len[r],
                   m->kv[r]);
        FUZZ_CHECK(q_off[r] == (b->with_q_off ? b->q_off[r] : 0) &&
                       k_off[r] == (b->with_k_off ? b->k_off[r] : 0) &&
                       mask[r] == (b->with_mask_indptr ? b->mask_indptr[r] : 0),
                   "offsets of request %d: rope %d/%d mask %d", r, q_off[r], k_off[r], mask[r]);
    }
    for (int32_t i = 0; !m->pages_at_run && i < m->total_pages; i++)
        FUZZ_CHECK(indices[i] == b->indices[i], "kv_indices[%d] uploaded %d, given %d", i,
                   indices[i], b->indices[i]);
    if (m->variant.flags & FLP_FLAG_ALIBI) /* read under the flag only: else not made */
        check_uploaded_slopes(slopes, c->hq, b->with_slopes ? b->slopes : NULL);
}

/* 5.6 "Query tile": from the average packed rows per non-empty request, above 64 -> 128, above
 * 16 -> 64, else 16. The documentation does not say whether the average is the exact fraction
 * or its integer part (64.5 is above 64, its integer part is not): either reading is accepted
 * (the tile is a performance hint; every kernel handles any item). */
static bool tile_allowed(const caps *c, const model *m, int32_t tile) {
    int64_t rows = 0, requests = 0;
    for (int32_t r = 0; r < m->batch_size; r++)
        if (m->qo[r] > 0) {
            rows += (int64_t)m->qo[r] * c->group;
            requests++;
        }
    const int32_t exact = rows > 64 * requests ? 128 : rows > 16 * requests ? 64 : 16;
    const int64_t whole = requests ? rows / requests : 0;
    const int32_t truncated = whole > 64 ? 128 : whole > 16 ? 64 : 16;
    return tile == exact || tile == truncated;
}

/* A prefill work item for a message: (request, KV head, rows [), keys [), slot). */
static void describe_item(const int32_t *w, char *text, size_t size) {
    snprintf(text, size, "(%d, %d, rows [%d, %d), keys [%d, %d), slot %d)", w[0], w[1], w[2], w[3],
             w[4], w[5], w[6]);
}

/* The uploaded schedule against the model: tiles, coverage, clipping, splits, slots, merges,
 * capacities, assignment. */
static void check_schedule(const flp_plan *plan, const caps *c, const model *m) {
    const flp_prefill_plan_info *p = (const flp_prefill_plan_info *)prefill_region(plan);
    const int32_t *indptr = words(plan, p->off_work_indptr);
    const int32_t *items = words(plan, p->off_work_items);
    const int32_t *merges = words(plan, p->off_merge_items);
    const int32_t tile = p->q_tile;
    FUZZ_CHECK((tile == 16 || tile == 64 || tile == 128) && tile_allowed(c, m, tile),
               "query tile %d for the batch's average rows", tile);
    const int32_t n = check_work_indptr(indptr, GRID, doc_max_items(c));
    for (int32_t i = 0; i < n; i++) {
        const int32_t *it = items + FLP_PREFILL_ITEM_INTS * i;
        const int32_t r = it[FLP_PITEM_REQUEST];
        FUZZ_CHECK(r >= 0 && r < m->batch_size && it[FLP_PITEM_KV_HEAD] >= 0 &&
                       it[FLP_PITEM_KV_HEAD] < c->hkv,
                   "item %d: request %d, KV head %d", i, r, it[FLP_PITEM_KV_HEAD]);
        FUZZ_CHECK(0 <= it[FLP_PITEM_ROW_BEGIN] &&
                       it[FLP_PITEM_ROW_BEGIN] < it[FLP_PITEM_ROW_END] &&
                       it[FLP_PITEM_ROW_END] <= m->qo[r] * c->group &&
                       it[FLP_PITEM_ROW_END] - it[FLP_PITEM_ROW_BEGIN] <= MAX_TILE,
                   "item %d: packed rows [%d, %d) of request %d (%d rows)", i,
                   it[FLP_PITEM_ROW_BEGIN], it[FLP_PITEM_ROW_END], r, m->qo[r] * c->group);
    }

    /* The model's tiles: per (request, KV head), packed rows [t, t + tile) and the keys their
     * rows can keep; then 5.6 "Split decision" over them. */
    static model_item tiles[MAX_ITEMS];
    int32_t num_tiles = 0;
    int64_t total = 0, longest = 0;
    for (int32_t r = 0; r < m->batch_size; r++)
        for (int32_t g = 0; g < c->hkv; g++)
            for (int32_t t = 0; t < m->qo[r] * c->group; t += tile) {
                FUZZ_CHECK(num_tiles < MAX_ITEMS, "more tiles than any plan holds");
                model_item *x = &tiles[num_tiles++];
                const int32_t end = t + tile < m->qo[r] * c->group ? t + tile : m->qo[r] * c->group;
                int64_t lo, hi;
                keepable(m, c->group, r, t, end, &lo, &hi);
                const int32_t w[FLP_PREFILL_ITEM_INTS] = {r,           g,           t, end,
                                                          (int32_t)lo, (int32_t)hi, -1};
                memcpy(x->w, w, sizeof w);
                total += hi - lo;
                longest = hi - lo > longest ? hi - lo : longest;
            }
    int64_t chunk = INT64_MAX;
    if (2 * num_tiles < GRID) {
        chunk = (total + GRID - 1) / GRID;
        chunk = chunk < MIN_CHUNK ? MIN_CHUNK : chunk;
        chunk = (chunk + CHUNK_ALIGN - 1) / CHUNK_ALIGN * CHUNK_ALIGN;
        chunk = chunk >= longest ? INT64_MAX : chunk;
    }

    /* Every item belongs to one model tile (same request, head and packed rows): the tiles
     * partition each request's rows, so the items of a tile are the only ones of its rows. */
    static int32_t tile_of[MAX_ITEMS], first_item[MAX_ITEMS + 1], by_tile[MAX_ITEMS];
    int32_t base[ARR_BATCH * MAX_HKV];
    for (int32_t r = 0, x = 0; r < m->batch_size; r++)
        for (int32_t g = 0; g < c->hkv; g++) {
            base[r * c->hkv + g] = x;
            x += (m->qo[r] * c->group + tile - 1) / tile;
        }
    memset(first_item, 0, sizeof(int32_t) * (size_t)(num_tiles + 1));
    for (int32_t i = 0; i < n; i++) {
        const int32_t *it = items + FLP_PREFILL_ITEM_INTS * i;
        const int32_t x = base[it[FLP_PITEM_REQUEST] * c->hkv + it[FLP_PITEM_KV_HEAD]] +
                          it[FLP_PITEM_ROW_BEGIN] / tile;
        FUZZ_CHECK(it[FLP_PITEM_ROW_BEGIN] % tile == 0 && x < num_tiles &&
                       memcmp(it, tiles[x].w, 4 * sizeof(int32_t)) == 0,
                   "item %d: request %d head %d packed rows [%d, %d) are not a query tile of %d "
                   "rows",
                   i, it[0], it[1], it[2], it[3], tile);
        tile_of[i] = x;
        first_item[x + 1]++;
    }
    for (int32_t x = 0; x < num_tiles; x++)
        first_item[x + 1] += first_item[x];
    for (int32_t i = 0; i < n; i++)
        by_tile[first_item[tile_of[i]]++] = i;
    for (int32_t x = num_tiles; x > 0; x--) /* back to the starts */
        first_item[x] = first_item[x - 1];
    first_item[0] = 0;

    /* Each tile's items tile exactly the keys its rows can keep, in key order, as many as the
     * split decision says: each keepable (row, key) is in exactly one item, and no key that no
     * row of the tile can keep is scheduled. */
    static model_item want[MAX_ITEMS];
    static int32_t slot_owner[MAX_SLOTS], tile_slot[MAX_ITEMS], tile_chunks[MAX_ITEMS];
    static bool merged[MAX_ITEMS];
    for (int32_t q = 0; q < MAX_SLOTS; q++)
        slot_owner[q] = -1;
    int32_t num_want = 0, split_tiles = 0, slots_end = 0;
    for (int32_t x = 0; x < num_tiles; x++) {
        const int32_t *t = tiles[x].w;
        const int64_t keys = (int64_t)t[FLP_PITEM_KV_END] - t[FLP_PITEM_KV_BEGIN];
        const int32_t chunks = keys > chunk ? (int32_t)((keys + chunk - 1) / chunk) : 1;
        const int32_t k = first_item[x + 1] - first_item[x];
        FUZZ_CHECK(k == chunks,
                   "request %d head %d rows [%d, %d) (keys [%d, %d)): %d items, model %d "
                   "(chunk %lld)",
                   t[0], t[1], t[2], t[3], t[4], t[5], k, chunks, (long long)chunk);
        const int32_t *mine[MAX_ITEMS];
        for (int32_t i = 0; i < k; i++)
            mine[i] = items + FLP_PREFILL_ITEM_INTS * by_tile[first_item[x] + i];
        sort_by_key_begin(mine, k, FLP_PITEM_KV_BEGIN);
        int32_t next = t[FLP_PITEM_KV_BEGIN];
        tile_slot[x] = k > 1 ? mine[0][FLP_PITEM_PARTIAL_SLOT] : -1;
        tile_chunks[x] = k;
        merged[x] = false;
        for (int32_t i = 0; i < k; i++) {
            const int32_t *it = mine[i];
            FUZZ_CHECK(it[FLP_PITEM_KV_BEGIN] == next,
                       "request %d head %d rows [%d, %d) (qo %d kv %d): item %d starts at key "
                       "%d, keys from %d are uncovered, covered twice or never keepable",
                       t[0], t[1], t[2], t[3], m->qo[t[0]], m->kv[t[0]], i, it[FLP_PITEM_KV_BEGIN],
                       next);
            next = it[FLP_PITEM_KV_END];
            const int64_t len = (int64_t)it[FLP_PITEM_KV_END] - it[FLP_PITEM_KV_BEGIN];
            const int32_t slot = it[FLP_PITEM_PARTIAL_SLOT];
            if (k == 1) {
                FUZZ_CHECK(slot < 0, "an unsplit tile writes partial slot %d", slot);
            } else {
                FUZZ_CHECK(len > 0 && (i + 1 == k ? len <= chunk : len == chunk),
                           "chunk %d of a split tile has %lld keys, chunk %lld", i, (long long)len,
                           (long long)chunk);
                /* consecutive slots in key order, each written once, inside the scratch */
                FUZZ_CHECK(slot >= 0 && slot < MAX_SLOTS && slot_owner[slot] < 0 &&
                               slot == tile_slot[x] + i,
                           "chunk %d of request %d head %d rows [%d, %d): slot %d", i, t[0], t[1],
                           t[2], t[3], slot);
                slot_owner[slot] = x;
                slots_end = slot + 1 > slots_end ? slot + 1 : slots_end;
            }
            model_item *w = &want[num_want++];
            memcpy(w->w, it, sizeof(int32_t) * FLP_PREFILL_ITEM_INTS);
            w->cost = len + ITEM_COST;
        }
        FUZZ_CHECK(next == t[FLP_PITEM_KV_END],
                   "request %d head %d rows [%d, %d): keys [%d, %d) not covered", t[0], t[1], t[2],
                   t[3], next, t[FLP_PITEM_KV_END]);
        split_tiles += k > 1;
    }
    FUZZ_CHECK(n == num_want, "%d items, the model's tiles and chunks are %d", n, num_want);

    /* Merge items: one per split tile, naming its rows, its first slot and all its chunks. */
    const int32_t num_merges = p->num_merge_items;
    FUZZ_CHECK(num_merges == split_tiles && num_merges <= MAX_MERGES,
               "%d merge items for %d split tiles", num_merges, split_tiles);
    for (int32_t i = 0; i < num_merges; i++) {
        const int32_t *mi = merges + FLP_MERGE_ITEM_INTS * i;
        const int32_t first = mi[FLP_MITEM_FIRST_SLOT];
        const int32_t x = first >= 0 && first < MAX_SLOTS ? slot_owner[first] : -1;
        FUZZ_CHECK(x >= 0 && !merged[x] && memcmp(tiles[x].w, mi, 4 * sizeof(int32_t)) == 0 &&
                       first == tile_slot[x] && mi[FLP_MITEM_CHUNKS] == tile_chunks[x],
                   "merge item %d (request %d head %d rows [%d, %d), slots %d + %d) is not the "
                   "merge of one split tile, once",
                   i, mi[0], mi[1], mi[2], mi[3], first, mi[FLP_MITEM_CHUNKS]);
        merged[x] = true;
    }

    flp_plan_summary s;
    flp_plan_summarize(plan, &s);
    FUZZ_CHECK(s.prefill_ctas == GRID && s.prefill_items == n &&
                   s.prefill_merge_items == num_merges && s.prefill_q_tile == tile,
               "summary: grid %d items %d merges %d tile %d", s.prefill_ctas, s.prefill_items,
               s.prefill_merge_items, s.prefill_q_tile);
    FUZZ_CHECK(s.prefill_partial_slots >= slots_end && s.prefill_partial_slots <= MAX_SLOTS &&
                   (slots_end > 0 || s.prefill_partial_slots == 0),
               "summary: %d partial slots, %d used", s.prefill_partial_slots, slots_end);
    check_assignment(want, num_want, FLP_PREFILL_ITEM_INTS, GRID, indptr, items, describe_item);
}

/* ---- runs ------------------------------------------------------------------------------- */

/* A run refused as 3/4 say, with nothing queued. */
static void expect_refused_run(flp_context *ctx, const flp_plan *plan,
                               const flp_prefill_run_args *ra, const char *mentions) {
    const int queued = fake_runs_queued;
    check_refused_run(ctx, flp_prefill_run(ctx, plan, ra), queued, mentions);
}

/* A run with ids as its kv_indices (check_run_page_ids). */
static flp_status run_with_ids(flp_context *ctx, const flp_plan *plan, const void *args,
                               const flp_tensor *ids) {
    flp_prefill_run_args ra = *(const flp_prefill_run_args *)args;
    ra.kv_indices = ids;
    return flp_prefill_run(ctx, plan, &ra);
}

/* Runs the plan's current prefill partition (the last accepted batch, m) and checks the
 * launch. draw: lse or not (bit 0), the caches' pages (bits 1-2 and 7, run_cache_pages), the
 * page ids (bits 3-7, check_run_page_ids). */
static void check_run(flp_context *ctx, const flp_plan *plan, const caps *c, const model *m,
                      const run_buffers *rb, uint8_t draw) {
    if (m->mask_bytes > MASK_BYTES)
        return; /* a mask that large would need a real buffer of its size (contiguous bytes) */
    const bool with_lse = draw & 1;
    const int64_t pages = run_cache_pages(m->pages_at_run, m->max_page_id, m->ids_max, draw);
    const int64_t q_shape[3] = {m->total_rows, c->hq, c->head_dim};
    const int64_t lse_shape[2] = {m->total_rows, c->hq}, mask_shape[1] = {m->mask_bytes};
    const bool nhd = m->layout == FLP_KV_LAYOUT_NHD;
    const int64_t paged_shape[4] = {pages, nhd ? m->page_size : c->hkv, nhd ? c->hkv : m->page_size,
                                    c->head_dim};
    const int64_t ragged_shape[3] = {m->total_kv_rows, c->hkv, c->head_dim};
    flp_tensor lse = broadcast(rb->lse, FLP_DTYPE_F32, 2, lse_shape);
    flp_tensor mask = flp_tensor_contiguous(rb->mask, 0, FLP_DTYPE_U8, 1, mask_shape);
    const bool custom = (m->variant.flags & FLP_FLAG_CUSTOM_MASK) != 0;
    flp_prefill_run_args ra = {
        .q = broadcast(rb->q, m->variant.q_dtype, 3, q_shape),
        .k = m->paged ? broadcast(rb->kv, m->variant.kv_dtype, 4, paged_shape)
                      : broadcast(rb->kv, m->variant.kv_dtype, 3, ragged_shape),
        .out = broadcast(rb->out, m->variant.q_dtype, 3, q_shape),
        .lse = with_lse ? &lse : NULL,
        .custom_mask = custom ? &mask : NULL,
    };
    ra.v = ra.k;
    /* the page ids a plan given none needs, for the refusals of other arguments */
    flp_tensor ids = run_page_ids(rb, m->total_pages, (uint8_t)(draw >> 3));
    ra.kv_indices = m->pages_at_run ? &ids : NULL;
    char text[64];
    if (m->paged && m->max_page_id >= 0) { /* 3 "Paged KV": the plan's ids below the pages */
        ra.k.shape[0] = ra.v.shape[0] = m->max_page_id;
        snprintf(text, sizeof text, "page %d", m->max_page_id);
        expect_refused_run(ctx, plan, &ra, text);
        ra.k.shape[0] = ra.v.shape[0] = pages;
    }
    if (!m->paged && m->total_kv_rows > 0) { /* 4: ragged k/v [>= kv_indptr[B], Hkv, D] */
        ra.k.shape[0] = ra.v.shape[0] = m->total_kv_rows - 1;
        snprintf(text, sizeof text, "%d", m->total_kv_rows);
        expect_refused_run(ctx, plan, &ra, text);
        ra.k.shape[0] = ra.v.shape[0] = m->total_kv_rows;
    }
    if (custom && m->mask_bytes > 0) { /* 4: custom_mask [>= bytes the plan computed] */
        mask.shape[0] = m->mask_bytes - 1;
        snprintf(text, sizeof text, "%lld", (long long)m->mask_bytes);
        expect_refused_run(ctx, plan, &ra, text);
        mask.shape[0] = m->mask_bytes;
    }
    if (m->paged) {
        ra.kv_indices =
            check_run_page_ids(ctx, plan, run_with_ids, &ra, &ra.out, rb, m->pages_at_run,
                               m->total_pages, (uint8_t)(draw >> 3), &ids);
    } else { /* page ids mean nothing to ragged KV */
        ra.kv_indices = &ids;
        expect_refused_run(ctx, plan, &ra, "kv_indices is given but the plan's KV is ragged");
        ra.kv_indices = NULL;
    }
    const int queued = fake_runs_queued;
    check_run_queued(ctx, flp_prefill_run(ctx, plan, &ra), queued);
    const flp_prefill_launch *l = &fake_last_prefill;
    const flp_prefill_layout *pl = &plan->prefill.layout;
    const flp_prefill_plan_info *p = (const flp_prefill_plan_info *)prefill_region(plan);
    FUZZ_CHECK(l->params.plan == plan->buffer->device_address + plan->base + pl->info,
               "params.plan is not the prefill info struct");
    FUZZ_CHECK(l->params.q == rb->q->device_address && l->params.o == rb->out->device_address &&
                   l->params.k == rb->kv->device_address &&
                   l->params.lse == (with_lse ? rb->lse->device_address : 0) &&
                   l->params.mask == (custom ? rb->mask->device_address : 0),
               "launch addresses");
    /* paged: the page ids are the run's tensor, else the plan's copy, ids beyond the caches'
     * pages not followed; ragged: neither */
    const uint64_t plan_ids = plan->buffer->device_address + plan->base + pl->kv_indices;
    const uint64_t want_ids = !m->paged       ? 0
                              : ra.kv_indices ? rb->ids->device_address + ids.offset
                                              : plan_ids;
    const int64_t want_pages = m->paged ? pages : 0;
    FUZZ_CHECK(l->params.kv_indices == want_ids && l->params.num_pages == want_pages,
               "launch page ids at %#llx of %lld pages, want %#llx of %lld",
               (unsigned long long)l->params.kv_indices, (long long)l->params.num_pages,
               (unsigned long long)want_ids, (long long)want_pages);
    check_params_slot(plan, &l->slot, pl->params_slot);
    FUZZ_CHECK(l->num_ctas == GRID &&
                   l->merge_grid == MAX_MERGES * FLP_PREFILL_MERGE_GRID_PER_ITEM &&
                   l->q_tile == p->q_tile && l->q_dtype == (int32_t)m->variant.q_dtype &&
                   l->kv_dtype == (int32_t)m->variant.kv_dtype && l->head_dim == c->head_dim,
               "launch: grids %d/%d tile %d dtypes %d/%d dim %d", l->num_ctas, l->merge_grid,
               l->q_tile, l->q_dtype, l->kv_dtype, l->head_dim);
    const flp_prefill_schedule_view *v = &l->schedule;
    const int32_t n = words(plan, p->off_work_indptr)[GRID];
    FUZZ_CHECK(memcmp(v->work_indptr, words(plan, p->off_work_indptr), 4 * (GRID + 1)) == 0 &&
                   memcmp(v->work_items, words(plan, p->off_work_items),
                          4 * FLP_PREFILL_ITEM_INTS * (size_t)n) == 0,
               "the launch's work items differ from the uploaded ones");
    FUZZ_CHECK(v->num_merge_items == p->num_merge_items &&
                   memcmp(v->merge_items, words(plan, p->off_merge_items),
                          4 * FLP_MERGE_ITEM_INTS * (size_t)p->num_merge_items) == 0,
               "the launch's merge items differ from the uploaded ones");
    FUZZ_CHECK(
        memcmp(v->qo_indptr, words(plan, p->off_qo_indptr), 4 * (size_t)(m->batch_size + 1)) == 0 &&
            memcmp(v->kv_len, words(plan, p->off_kv_len), 4 * (size_t)m->batch_size) == 0,
        "the launch's qo_indptr / kv_len differ from the uploaded ones");
    FUZZ_CHECK(v->keys.group_size == c->group && v->keys.causal == m->causal &&
                   v->keys.window_left == m->window_left,
               "the launch's key rule (group %d causal %d window %d)", v->keys.group_size,
               v->keys.causal, v->keys.window_left);
}

/* ---- capacities at the edge ----------------------------------------------------------------- */

/* Prefill capacities up to what plan creation accepts (max_qo_rows 2^26, 4096 heads, 2^30
 * pages), asked of flp_plan_workspace_size only (nothing is allocated). A refusal is fine; an
 * accepted plan must be one the documentation can describe:
 * - every request within max_qo_rows has its packed rows (qo_len x group, 3 "GQA and packed
 *   rows") in the int32 row fields of work items (3 "Every index array is int32"), and the
 *   5.6 bound of items is counted by int32 work_indptr entries;
 * - its size holds the decode and prefill regions of 5.2 (lower bounds: the parts without their
 *   alignment), and each region's arrays are found through its info struct's uint32 word
 *   offsets, so each partial_lse starts within 2^32 words. */
static void check_edge_caps(flp_context *ctx, fuzz_input *in) {
    static const int32_t rows_table[] = {1 << 20, 1 << 24,       (1 << 25) + 1, 1 << 26,
                                         3 << 22, (1 << 23) + 5, 100000,        1 << 25};
    static const int32_t kv_heads[] = {1, 2, 8, 64, 512, 4096};
    static const int32_t groups[] = {1, 8, 32, 64, 128, 4096};
    static const int32_t pages[] = {1, 1 << 20, 1 << 30};
    static const int32_t dims[] = {64, 128, 256};
    const uint8_t k = fuzz_u8(in);
    const int32_t rows = k < 160 ? rows_table[k % 8] : 1 + (int32_t)fuzz_range(in, 0, 1 << 26);
    const int32_t hkv = kv_heads[fuzz_u8(in) % 6];
    int32_t group = groups[fuzz_u8(in) % 6];
    group = (int64_t)hkv * group > 4096 ? 4096 / hkv : group;
    /* one read per statement: an initializer list's order of evaluation is unspecified */
    const int32_t max_batch = 1 + pick(in, 64);
    const int32_t max_pages = pages[fuzz_u8(in) % 3];
    const int32_t head_dim = dims[fuzz_u8(in) % 3];
    flp_plan_desc pd = {.max_batch_size = max_batch,
                        .max_pages = max_pages,
                        .max_qo_rows = rows,
                        .num_qo_heads = hkv * group,
                        .num_kv_heads = hkv,
                        .head_dim = head_dim,
                        .decode_kernel = FLP_DECODE_KERNEL_VECTOR};
    size_t bytes = 0;
    if (edge_caps_refused(ctx, flp_plan_workspace_size(ctx, &pd, &bytes)))
        return;
    /* the documented parts, in 64 bits */
    const uint64_t b = (uint64_t)pd.max_batch_size, d = (uint64_t)pd.head_dim;
    const uint64_t g = (uint64_t)group, hq = (uint64_t)pd.num_qo_heads, p = (uint64_t)pd.max_pages;
    const uint64_t d_items = b * (uint64_t)hkv + FAKE_DECODE_GRID; /* 5.5, max_qo_len 1 */
    const uint64_t d_meta = sizeof(flp_decode_plan_info) + 4 * (b + 1) + 12 * b + 2 * d + 4 * hq +
                            4 * (FAKE_DECODE_GRID + 1) + 8 * b + 4 * FLP_WORK_ITEM_INTS * d_items +
                            4 * p;
    const uint64_t d_partial = 4 * d_items * g * d;
    const uint64_t items = ((uint64_t)rows * g / 16 + b) * (uint64_t)hkv + 2 * GRID;
    const uint64_t meta = sizeof(flp_prefill_plan_info) + 8 * (b + 1) + 16 * b + 2 * d + 4 * hq +
                          4 * (GRID + 1) + 4 * FLP_PREFILL_ITEM_INTS * items +
                          4 * FLP_MERGE_ITEM_INTS * MAX_MERGES + 4 * p;
    const uint64_t partial = 4 * (uint64_t)MAX_SLOTS * MAX_TILE * d;
    const uint64_t need = d_meta + d_partial + 4 * d_items * g + 256 + meta + partial +
                          4 * (uint64_t)MAX_SLOTS * MAX_TILE + 256;
    FUZZ_CHECK((uint64_t)rows * g <= INT32_MAX,
               "capacities (max_qo_rows %d, group %d) accepted: a request within them has "
               "%llu packed rows, beyond the int32 row fields of work items",
               rows, group, (unsigned long long)((uint64_t)rows * g));
    FUZZ_CHECK(items <= INT32_MAX, "capacities accepted with up to %llu prefill items",
               (unsigned long long)items);
    FUZZ_CHECK(bytes >= need,
               "capacities (batch %d, rows %d, heads %d/%d, dim %d, pages %d) accepted with %zu "
               "bytes, the documented layout needs at least %llu",
               pd.max_batch_size, rows, pd.num_qo_heads, hkv, pd.head_dim, pd.max_pages, bytes,
               (unsigned long long)need);
    FUZZ_CHECK((d_meta + d_partial) / 4 <= UINT32_MAX && (meta + partial) / 4 <= UINT32_MAX,
               "capacities (batch %d, rows %d, heads %d/%d, dim %d, pages %d) accepted: an array "
               "lies beyond its info struct's uint32 word offsets",
               pd.max_batch_size, rows, pd.num_qo_heads, hkv, pd.head_dim, pd.max_pages);
}

/* ---- the target --------------------------------------------------------------------------- */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static flp_context *ctx;
    static run_buffers rb;
    if (!ctx) /* for the whole run */
        ctx = open_run_context(&rb, MASK_BYTES, ARR_PAGES);
    fuzz_input in = {data, size};
    if (fuzz_u8(&in) < 12) { /* now and then, capacities at the edge (nothing allocated) */
        check_edge_caps(ctx, &in);
        return 0;
    }
    const caps c = pick_caps(&in);
    flp_plan_desc pd = {.max_batch_size = c.max_batch,
                        .max_pages = c.max_pages,
                        .max_qo_rows = c.max_qo_rows,
                        .num_qo_heads = c.hq,
                        .num_kv_heads = c.hkv,
                        .head_dim = c.head_dim,
                        .decode_kernel = FLP_DECODE_KERNEL_VECTOR};
    flp_plan *plan = NULL;
    flp_status st = flp_plan_create(ctx, &pd, &plan);
    FUZZ_CHECK(st == FLP_OK, "plan_create(batch %d, rows %d, pages %d, heads %d/%d, dim %d): %s",
               c.max_batch, c.max_qo_rows, c.max_pages, c.hq, c.hkv, c.head_dim,
               flp_context_last_error(ctx));
    check_layout(plan, &c);
    /* a decode partition first: no prefill call may touch it */
    const int32_t d_indptr[2] = {0, 1}, d_indices[1] = {0}, d_last[1] = {3};
    const flp_decode_plan_args da = {.batch_size = 1,
                                     .page_size = 16,
                                     .kv_indptr = d_indptr,
                                     .kv_indices = d_indices,
                                     .kv_last_page_len = d_last,
                                     .variant = {.head_dim = c.head_dim}};
    FUZZ_CHECK(flp_decode_plan(ctx, plan, &da) == FLP_OK, "decode plan: %s",
               flp_context_last_error(ctx));
    static const flp_prefill_run_args no_args;
    FUZZ_CHECK(flp_prefill_run(ctx, plan, &no_args) == FLP_ERROR_INVALID_ARGUMENT,
               "a run before any prefill plan: %s", flp_context_last_error(ctx));

    static batch b;
    static model accepted; /* the plan's current prefill partition */
    bool planned = false;
    for (int round = 0; round < 10 && fuzz_more(&in); round++) {
        const uint8_t k = fuzz_u8(&in);
        defect d = k < 96 ? VALID : (defect)(1 + k % (NUM_DEFECTS - 1));
        outcome o;
        pick_batch(&in, &c, &d, &b, &o);
        snapshot before;
        take_snapshot(plan, &before);
        const flp_prefill_plan_args args = args_of(&b);
        const int queued = fake_runs_queued;
        st = flp_prefill_plan(ctx, plan, &args);
        FUZZ_CHECK(st == o.status,
                   "round %d, defect %d: status %d, documented %d (%s); batch %d, %s KV", round,
                   (int)d, st, o.status, flp_context_last_error(ctx), b.batch_size,
                   b.storage == FLP_KV_PAGED ? "paged" : "ragged");
        check_message(ctx, FN, st, &o);
        FUZZ_CHECK(fake_runs_queued == queued, "a plan call queued a run");
        check_unchanged(plan, &before, st != FLP_OK);
        if (st == FLP_OK && b.storage == FLP_KV_PAGED && b.null_indices)
            check_ids_not_uploaded(before.pf_device, prefill_region(plan),
                                   plan->prefill.layout.kv_indices - plan->prefill.layout.info,
                                   c.max_pages);
        free_snapshot(&before);
        if (st == FLP_OK) {
            model_batch(&c, &b, &accepted);
            check_info(plan, &c, &b, &accepted);
            check_schedule(plan, &c, &accepted);
            planned = true;
        }
        if (planned)
            check_run(ctx, plan, &c, &accepted, &rb, fuzz_u8(&in));
    }
    flp_plan_destroy(plan);
    return 0;
}
