/* Fault injection on the host fake backend (suite core, so it also runs under ASan/UBSan, where
 * LeakSanitizer reports anything a failed call left allocated). For every public entry point
 * that allocates, the seam of core/alloc.h fails each host and device allocation site of the
 * call in turn (site 0, 1, 2, ... until the call succeeds without reaching the injected one).
 * Every failure must return FLP_ERROR_OUT_OF_MEMORY with a message, write nothing to the call's
 * outputs (poisoned before), change nothing in the objects it was given, and leave them usable:
 * the same call with injection off then gives exactly what a run that never saw a failure
 * gives (a reference context or table, driven by the same calls). The number of sites each
 * call reaches is asserted too, so a site that stops going through the seam shows. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/alloc.h"
#include "core/plan.h"
#include "tests/fake_backend.h"
#include "tests/fault_walk.h"

/* ---- the walk (tests/fault_walk.h) ------------------------------------------------------- */

/* One entry point under the walk. Callbacks run with injection off except call. */
typedef struct walk {
    const char *name;
    void *state;
    void (*prepare)(void *state);    /* before each attempt: poison outputs, snapshot objects */
    flp_status (*call)(void *state); /* the walked call */
    /* After a failed attempt: nothing written, nothing changed, still usable. */
    void (*check_failed)(void *state);
    /* Where the failed call leaves its message (neither: page table creation, which has no
     * object to hold one yet). */
    const flp_context *ctx;
    const flp_page_table *table;
} walk;

static void walk_prepare(void *w) {
    ((const walk *)w)->prepare(((const walk *)w)->state);
}

static flp_status walk_call(void *w) {
    return ((const walk *)w)->call(((const walk *)w)->state);
}

static void walk_check_failed(void *w) {
    ((const walk *)w)->check_failed(((const walk *)w)->state);
}

static const char *walk_message(void *state) {
    const walk *w = state;
    return w->ctx ? flp_context_last_error(w->ctx) : flp_page_table_last_error(w->table);
}

/* Walks w; returns how many allocation sites the successful call reached. */
static int64_t walk_run(walk *w) {
    const fault_walk fw = {.name = w->name,
                           .max_sites = 64,
                           .state = w,
                           .prepare = walk_prepare,
                           .call = walk_call,
                           .message = w->ctx || w->table ? walk_message : NULL,
                           .check_failed = walk_check_failed};
    return fault_walk_run(&fw);
}

#define POISON_I32 0x7EADBEEF

static void poison_i32(int32_t *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        x[i] = POISON_I32;
}

static void expect_poisoned_i32(const int32_t *x, size_t n, const char *what) {
    for (size_t i = 0; i < n; i++)
        if (x[i] != POISON_I32)
            fail_msg("a failed call wrote %s[%zu] = %d", what, i, x[i]);
}

/* ---- the seam itself ----------------------------------------------------------------------- */

static void test_seam_counts_and_fails_once(void **state) {
    (void)state;
    flp_context *ctx = fake_context();
    flp_buffer_desc bd = {64};
    flp_buffer *buf = NULL;

    /* flp_buffer_create: one host site (the flp_buffer), one device site (the fake memory). */
    flp_fault_arm(FLP_FAULT_ALL, -1);
    assert_int_equal(flp_buffer_create(ctx, &bd, &buf), FLP_OK);
    flp_fault_report r = flp_fault_disarm();
    assert_int_equal(r.host, 1);
    assert_int_equal(r.device, 1);
    assert_false(r.fired);
    flp_buffer_destroy(buf);

    /* Counting one kind only: the other kind's sites are neither counted nor failed. */
    flp_fault_arm(FLP_FAULT_DEVICE, 0);
    assert_int_equal(flp_buffer_create(ctx, &bd, &buf), FLP_ERROR_OUT_OF_MEMORY);
    r = flp_fault_disarm();
    assert_int_equal(r.host, 0);
    assert_int_equal(r.device, 1);
    assert_true(r.fired);
    assert_int_equal(r.fired_kind, FLP_FAULT_DEVICE);
    assert_null(buf);
    assert_non_null(strstr(flp_context_last_error(ctx), "device memory"));

    /* Sites are numbered in the order reached, kinds together: 1 is the device site. */
    flp_fault_arm(FLP_FAULT_ALL, 1);
    assert_int_equal(flp_buffer_create(ctx, &bd, &buf), FLP_ERROR_OUT_OF_MEMORY);
    r = flp_fault_disarm();
    assert_int_equal(r.fired_kind, FLP_FAULT_DEVICE);

    /* One failure only: the site after it succeeds. */
    flp_fault_arm(FLP_FAULT_HOST, 0);
    void *a = flp_malloc(8), *b = flp_malloc(8);
    r = flp_fault_disarm();
    assert_null(a);
    assert_non_null(b);
    assert_int_equal(r.host, 2);
    assert_int_equal(r.fired_kind, FLP_FAULT_HOST);
    flp_free(b);

    /* Disarmed: nothing is counted, nothing fails. */
    void *c = flp_calloc(2, 8);
    assert_non_null(c);
    flp_free(c);
    assert_int_equal(flp_fault_peek().host, 2);
    flp_context_destroy(ctx);
}

/* ---- a decode and prefill problem on the fake backend ---------------------------------------- */

enum {
    HQ = 8,
    HKV = 2,
    D = 64,
    PAGE = 4,
    PAGES = 96,
    MAX_BATCH = 4,
    MAX_ROWS = 64,
};

/* Page tables of two decode batches: A (3 requests: 5, 0 and 9 keys) is planned first; B (300
 * and 9 keys: 4 items for a grid of 6, so the 300 keys are split into chunks) is walked. */
typedef struct decode_batch {
    int32_t batch, kv_indptr[MAX_BATCH + 1], kv_indices[PAGES], last[MAX_BATCH];
} decode_batch;

static decode_batch batch_a(void) {
    decode_batch b = {
        .batch = 3, .kv_indptr = {0, 2, 2, 5}, .kv_indices = {7, 3, 0, 11, 5}, .last = {1, 0, 1}};
    return b;
}

static decode_batch batch_b(void) {
    decode_batch b = {.batch = 2, .kv_indptr = {0, 75, 78}, .last = {4, 1}};
    for (int32_t i = 0; i < 78; i++)
        b.kv_indices[i] = (i * 37) % PAGES; /* 78 distinct pages, shuffled */
    return b;
}

static flp_decode_plan_args decode_args(decode_batch *b) {
    flp_decode_plan_args a = {.batch_size = b->batch,
                              .page_size = PAGE,
                              .kv_indptr = b->kv_indptr,
                              .kv_indices = b->kv_indices,
                              .kv_last_page_len = b->last,
                              .variant = {.head_dim = D, .q_dtype = FLP_DTYPE_BF16}};
    return a;
}

/* Prefill: 3 and 5 query rows over 300 and 5 keys, causal (group 4: 6 items for a grid of 48,
 * so the 300-key items are split), ragged or paged. */
typedef struct prefill_batch {
    int32_t qo_indptr[3], kv_indptr[3], kv_indices[PAGES], last[2];
    flp_kv_storage storage;
} prefill_batch;

static prefill_batch prefill_ragged(void) {
    prefill_batch b = {.qo_indptr = {0, 3, 8}, .kv_indptr = {0, 300, 305}};
    b.storage = FLP_KV_RAGGED;
    return b;
}

static prefill_batch prefill_paged(void) {
    prefill_batch b = {.qo_indptr = {0, 3, 8}, .kv_indptr = {0, 75, 77}, .last = {4, 1}};
    b.storage = FLP_KV_PAGED;
    for (int32_t i = 0; i < 77; i++)
        b.kv_indices[i] = (i * 53 + 5) % PAGES;
    return b;
}

static flp_prefill_plan_args prefill_args(prefill_batch *b) {
    bool paged = b->storage == FLP_KV_PAGED;
    flp_prefill_plan_args a = {
        .batch_size = 2,
        .qo_indptr = b->qo_indptr,
        .kv_storage = b->storage,
        .page_size = paged ? PAGE : 0,
        .kv_indptr = b->kv_indptr,
        .kv_indices = paged ? b->kv_indices : NULL,
        .kv_last_page_len = paged ? b->last : NULL,
        .variant = {.head_dim = D, .q_dtype = FLP_DTYPE_BF16, .mask = FLP_MASK_CAUSAL}};
    return a;
}

/* The decode kernel plans are created with (the matrix walks set MATRIX for their duration). */
static flp_decode_kernel g_decode_kernel = FLP_DECODE_KERNEL_VECTOR;

static flp_plan_desc plan_desc(void) {
    flp_plan_desc pd = {.max_batch_size = MAX_BATCH,
                        .max_pages = PAGES,
                        .max_qo_rows = MAX_ROWS,
                        .num_qo_heads = HQ,
                        .num_kv_heads = HKV,
                        .head_dim = D,
                        .decode_kernel = g_decode_kernel};
    return pd;
}

/* Device tensors for the runs: q/out [MAX_ROWS, HQ, D] bf16, a paged pool K and V
 * [PAGES, PAGE, HKV, D], ragged K and V [305, HKV, D], lse [MAX_ROWS, HQ]. */
typedef struct tensors {
    flp_buffer *q, *out, *pool, *ragged, *lse;
} tensors;

static flp_buffer *new_buffer(flp_context *ctx, size_t bytes) {
    flp_buffer_desc bd = {bytes};
    flp_buffer *buf = NULL;
    assert_int_equal(flp_buffer_create(ctx, &bd, &buf), FLP_OK);
    memset(buf->native, 0, bytes);
    return buf;
}

static tensors tensors_create(flp_context *ctx) {
    size_t row = (size_t)HKV * D * 2;
    tensors t = {
        .q = new_buffer(ctx, (size_t)MAX_ROWS * HQ * D * 2),
        .out = new_buffer(ctx, (size_t)MAX_ROWS * HQ * D * 2),
        .pool = new_buffer(ctx, 2 * (size_t)PAGES * PAGE * row),
        .ragged = new_buffer(ctx, 2 * 305 * row),
        .lse = new_buffer(ctx, (size_t)MAX_ROWS * HQ * 4),
    };
    return t;
}

static void tensors_free(tensors *t) {
    flp_buffer_destroy(t->q);
    flp_buffer_destroy(t->out);
    flp_buffer_destroy(t->pool);
    flp_buffer_destroy(t->ragged);
    flp_buffer_destroy(t->lse);
}

static flp_decode_run_args decode_run_args(const tensors *t, int64_t rows) {
    int64_t q_shape[3] = {rows, HQ, D}, kv_shape[4] = {PAGES, PAGE, HKV, D};
    size_t half = (size_t)PAGES * PAGE * HKV * D * 2;
    flp_decode_run_args ra = {
        .q = flp_tensor_contiguous(t->q, 0, FLP_DTYPE_BF16, 3, q_shape),
        .out = flp_tensor_contiguous(t->out, 0, FLP_DTYPE_BF16, 3, q_shape),
        .k_cache = flp_tensor_contiguous(t->pool, 0, FLP_DTYPE_BF16, 4, kv_shape),
        .v_cache = flp_tensor_contiguous(t->pool, half, FLP_DTYPE_BF16, 4, kv_shape),
    };
    return ra;
}

static flp_prefill_run_args prefill_run_args(const tensors *t, flp_kv_storage storage) {
    int64_t q_shape[3] = {8, HQ, D}, pool_shape[4] = {PAGES, PAGE, HKV, D};
    int64_t ragged_shape[3] = {305, HKV, D};
    bool paged = storage == FLP_KV_PAGED;
    flp_buffer *kv = paged ? t->pool : t->ragged;
    size_t half = paged ? (size_t)PAGES * PAGE * HKV * D * 2 : (size_t)305 * HKV * D * 2;
    const int64_t *kv_shape = paged ? pool_shape : ragged_shape;
    int kv_dims = paged ? 4 : 3;
    flp_prefill_run_args ra = {
        .q = flp_tensor_contiguous(t->q, 0, FLP_DTYPE_BF16, 3, q_shape),
        .out = flp_tensor_contiguous(t->out, 0, FLP_DTYPE_BF16, 3, q_shape),
        .k = flp_tensor_contiguous(kv, 0, FLP_DTYPE_BF16, kv_dims, kv_shape),
        .v = flp_tensor_contiguous(kv, half, FLP_DTYPE_BF16, kv_dims, kv_shape),
    };
    return ra;
}

/* ---- plan state: what a failed call must leave alone and a retry must reproduce ------------- */

/* Everything a plan's partitions consist of, copied. */
typedef struct plan_image {
    flp_plan_summary summary;
    bool decode_planned, prefill_planned;
    int32_t decode_batch, prefill_batch, decode_max_page, prefill_max_page;
    bool matrix_planned;                        /* the matrix decode region */
    uint8_t *host, *prefill_host, *matrix_host; /* the host mirrors */
    uint8_t *device;                            /* the plan's whole region of device memory */
    size_t host_bytes, prefill_bytes, matrix_bytes, device_bytes;
} plan_image;

static uint8_t *copy_bytes(const void *src, size_t n) {
    uint8_t *p = calloc(n ? n : 1, 1);
    assert_non_null(p);
    if (n)
        memcpy(p, src, n);
    return p;
}

static plan_image plan_image_take(const flp_plan *plan) {
    plan_image im;
    memset(&im, 0, sizeof im);
    flp_plan_summarize(plan, &im.summary);
    im.decode_planned = plan->decode.planned;
    im.prefill_planned = plan->prefill.state.planned;
    im.decode_batch = plan->decode.batch_size;
    im.prefill_batch = plan->prefill.state.batch_size;
    im.decode_max_page = plan->decode.max_page_id;
    im.prefill_max_page = plan->prefill.state.max_page_id;
    const flp_prefill_layout *pl = &plan->prefill.layout;
    im.host_bytes = plan->layout.metadata_end;
    im.prefill_bytes = pl->metadata_end - pl->info;
    im.device_bytes = plan->layout.total;
    const flp_prefill_layout *ml = &plan->decode_rows.layout;
    im.matrix_planned = plan->decode_rows.state.planned;
    im.matrix_bytes = ml->metadata_end - ml->info;
    im.host = copy_bytes(plan->host, im.host_bytes);
    im.prefill_host = copy_bytes(plan->prefill.host, im.prefill_bytes);
    im.matrix_host = copy_bytes(plan->decode_rows.host, im.matrix_bytes);
    im.device = copy_bytes((const uint8_t *)plan->buffer->native + plan->base, im.device_bytes);
    return im;
}

static void plan_image_free(plan_image *im) {
    free(im->host);
    free(im->prefill_host);
    free(im->matrix_host);
    free(im->device);
    memset(im, 0, sizeof *im);
}

static void expect_same_state(const plan_image *a, const plan_image *b, const char *when) {
    if (memcmp(&a->summary, &b->summary, sizeof a->summary) != 0 ||
        a->decode_planned != b->decode_planned || a->prefill_planned != b->prefill_planned ||
        a->decode_batch != b->decode_batch || a->prefill_batch != b->prefill_batch ||
        a->decode_max_page != b->decode_max_page || a->prefill_max_page != b->prefill_max_page)
        fail_msg("%s: the plan's partitions differ (decode planned %d/%d, items %d/%d; prefill "
                 "planned %d/%d, items %d/%d)",
                 when, a->decode_planned, b->decode_planned, a->summary.decode_items,
                 b->summary.decode_items, a->prefill_planned, b->prefill_planned,
                 a->summary.prefill_items, b->summary.prefill_items);
    assert_int_equal(a->host_bytes, b->host_bytes);
    assert_int_equal(a->prefill_bytes, b->prefill_bytes);
    if (memcmp(a->host, b->host, a->host_bytes) != 0)
        fail_msg("%s: the decode host mirror differs", when);
    if (memcmp(a->prefill_host, b->prefill_host, a->prefill_bytes) != 0)
        fail_msg("%s: the prefill host mirror differs", when);
    assert_int_equal(a->matrix_planned, b->matrix_planned);
    assert_int_equal(a->matrix_bytes, b->matrix_bytes);
    if (memcmp(a->matrix_host, b->matrix_host, a->matrix_bytes) != 0)
        fail_msg("%s: the matrix decode host mirror differs", when);
}

/* A failed call must leave the plan exactly as it was, device memory included. */
static void expect_unchanged(const plan_image *before, const plan_image *now, const char *call) {
    expect_same_state(before, now, call);
    assert_int_equal(before->device_bytes, now->device_bytes);
    if (memcmp(before->device, now->device, before->device_bytes) != 0)
        fail_msg("%s: a failed call changed the plan's device memory", call);
}

/* The partition a plan uploaded last, against a plan that never failed: the plan region from
 * the partition's start up to its kv_indices and the pages it uses (the rest of the region
 * holds scratch the kernels write, or older page ids). */
static void expect_same_upload(const flp_plan *a, const flp_plan *b, bool prefill, int32_t pages,
                               const char *when) {
    const flp_plan_layout *l = &a->layout;
    const flp_prefill_layout *pl = prefill ? &a->prefill.layout
                                   : a->decode_kernel == FLP_DECODE_KERNEL_MATRIX
                                       ? &a->decode_rows.layout
                                       : NULL;
    size_t start = pl ? pl->info : 0;
    size_t end = (pl ? pl->kv_indices : l->kv_indices) + sizeof(int32_t) * pages;
    const uint8_t *da = (const uint8_t *)a->buffer->native + a->base;
    const uint8_t *db = (const uint8_t *)b->buffer->native + b->base;
    if (memcmp(da + start, db + start, end - start) != 0)
        fail_msg("%s: the uploaded %s partition differs from a plan's that never failed", when,
                 prefill ? "prefill" : "decode");
}

/* A plan of plan_desc() on its own fake context, given decode batch A and a ragged prefill:
 * what every plan walk starts from, and its reference. */
typedef struct planned {
    flp_context *ctx;
    flp_plan *plan;
    tensors t;
    decode_batch a;
    prefill_batch ragged;
} planned;

static void planned_open(planned *p) {
    memset(p, 0, sizeof *p);
    p->ctx = fake_context();
    assert_non_null(p->ctx);
    flp_plan_desc pd = plan_desc();
    assert_int_equal(flp_plan_create(p->ctx, &pd, &p->plan), FLP_OK);
    p->t = tensors_create(p->ctx);
    p->a = batch_a();
    p->ragged = prefill_ragged();
    flp_decode_plan_args da = decode_args(&p->a);
    assert_int_equal(flp_decode_plan(p->ctx, p->plan, &da), FLP_OK);
    flp_prefill_plan_args pa = prefill_args(&p->ragged);
    assert_int_equal(flp_prefill_plan(p->ctx, p->plan, &pa), FLP_OK);
}

static void planned_close(planned *p) {
    flp_plan_destroy(p->plan);
    tensors_free(&p->t);
    flp_context_destroy(p->ctx);
}

/* The launches a run of the plan's current partitions hands the backend (a plan still usable
 * after a failure hands the same ones). */
static void run_both(planned *p, int64_t decode_rows, flp_kv_storage storage,
                     flp_decode_launch *decode, flp_prefill_launch *decode_matrix,
                     flp_prefill_launch *prefill) {
    flp_decode_run_args dr = decode_run_args(&p->t, decode_rows);
    memset(&fake_last_prefill, 0, sizeof fake_last_prefill);
    assert_int_equal(flp_decode_run(p->ctx, p->plan, &dr), FLP_OK);
    *decode = fake_last_decode;
    *decode_matrix = fake_last_prefill; /* what a matrix decode launched */
    flp_prefill_run_args pr = prefill_run_args(&p->t, storage);
    assert_int_equal(flp_prefill_run(p->ctx, p->plan, &pr), FLP_OK);
    *prefill = fake_last_prefill;
}

/* ---- flp_decode_plan and flp_prefill_plan ---------------------------------------------------- */

typedef struct plan_walk {
    planned p;
    flp_decode_plan_args decode;   /* the walked decode plan, or */
    flp_prefill_plan_args prefill; /* the walked prefill plan (batch_size > 0) */
    bool is_prefill;
    plan_image before;
    flp_decode_launch decode_launch; /* of the plan before the walk */
    flp_prefill_launch decode_matrix_launch, prefill_launch;
    int64_t decode_rows;
    flp_kv_storage storage;
} plan_walk;

static void plan_walk_prepare(void *state) {
    plan_walk *w = state;
    plan_image_free(&w->before);
    w->before = plan_image_take(w->p.plan);
}

static flp_status plan_walk_call(void *state) {
    plan_walk *w = state;
    return w->is_prefill ? flp_prefill_plan(w->p.ctx, w->p.plan, &w->prefill)
                         : flp_decode_plan(w->p.ctx, w->p.plan, &w->decode);
}

static void plan_walk_check_failed(void *state) {
    plan_walk *w = state;
    plan_image now = plan_image_take(w->p.plan);
    expect_unchanged(&w->before, &now, w->is_prefill ? "flp_prefill_plan" : "flp_decode_plan");
    plan_image_free(&now);
    /* still usable: both partitions it held run as before */
    flp_decode_launch d;
    flp_prefill_launch dm, f;
    run_both(&w->p, w->decode_rows, w->storage, &d, &dm, &f);
    if (memcmp(&d, &w->decode_launch, sizeof d) != 0 ||
        memcmp(&dm, &w->decode_matrix_launch, sizeof dm) != 0 ||
        memcmp(&f, &w->prefill_launch, sizeof f) != 0)
        fail_msg("the plan runs differently after a failed re-plan");
}

/* Walks one re-plan of a plan holding decode batch A and the ragged prefill, then compares
 * the result with a plan that made the same calls and never failed. */
static void walk_replan(bool prefill, prefill_batch *pb, int64_t expected_sites) {
    plan_walk w;
    memset(&w, 0, sizeof w);
    planned_open(&w.p);
    decode_batch b = batch_b();
    w.is_prefill = prefill;
    w.decode = decode_args(&b);
    if (prefill)
        w.prefill = prefill_args(pb);
    w.decode_rows = w.p.a.batch;
    w.storage = w.p.ragged.storage;
    run_both(&w.p, w.decode_rows, w.storage, &w.decode_launch, &w.decode_matrix_launch,
             &w.prefill_launch);
    walk wk = {prefill ? "flp_prefill_plan" : "flp_decode_plan",
               &w,
               plan_walk_prepare,
               plan_walk_call,
               plan_walk_check_failed,
               .ctx = w.p.ctx};
    assert_int_equal(walk_run(&wk), expected_sites);
    plan_image_free(&w.before);

    planned ref;
    planned_open(&ref);
    if (prefill) {
        flp_prefill_plan_args pa = prefill_args(pb);
        assert_int_equal(flp_prefill_plan(ref.ctx, ref.plan, &pa), FLP_OK);
    } else {
        assert_int_equal(flp_decode_plan(ref.ctx, ref.plan, &w.decode), FLP_OK);
    }
    plan_image got = plan_image_take(w.p.plan), want = plan_image_take(ref.plan);
    expect_same_state(&got, &want, "after the walk");
    int32_t pages =
        prefill ? (pb->storage == FLP_KV_PAGED ? pb->kv_indptr[2] : 0) : b.kv_indptr[b.batch];
    expect_same_upload(w.p.plan, ref.plan, prefill, pages, "after the walk");
    if (!prefill)
        assert_true(got.summary.decode_partial_slots > 0); /* the batch was split */
    else
        assert_true(got.summary.prefill_merge_items > 0);
    plan_image_free(&got);
    plan_image_free(&want);
    planned_close(&ref);
    planned_close(&w.p);
}

static void test_decode_plan(void **state) {
    (void)state;
    walk_replan(false, NULL, 1); /* one allocation: the call's scratch */
}

/* The same walk on a plan whose decode runs on the matrix kernel (its own prefill region). */
static void test_decode_plan_matrix(void **state) {
    (void)state;
    g_decode_kernel = FLP_DECODE_KERNEL_MATRIX;
    walk_replan(false, NULL, 1);
    g_decode_kernel = FLP_DECODE_KERNEL_VECTOR;
}

static void test_prefill_plan_paged(void **state) {
    (void)state;
    prefill_batch pb = prefill_paged();
    walk_replan(true, &pb, 1);
}

static void test_prefill_plan_ragged(void **state) {
    (void)state;
    prefill_batch pb = prefill_ragged();
    pb.qo_indptr[2] = 6; /* another ragged batch than the one planned before */
    walk_replan(true, &pb, 1);
}

/* ---- flp_plan_create, flp_plan_workspace_size, flp_buffer_create ----------------------------- */

typedef struct create_walk {
    flp_context *ctx;
    flp_plan_desc desc;
    flp_plan *plan;
    flp_buffer *buffer;
    size_t workspace_bytes;
} create_walk;

static flp_plan *const PLAN_POISON = (flp_plan *)(uintptr_t)0x7EAD;
static flp_buffer *const BUFFER_POISON = (flp_buffer *)(uintptr_t)0x7EAD;

static void plan_create_prepare(void *state) {
    ((create_walk *)state)->plan = PLAN_POISON;
}

static flp_status plan_create_call(void *state) {
    create_walk *w = state;
    return flp_plan_create(w->ctx, &w->desc, &w->plan);
}

/* The context must still serve allocations after a failed one. */
static void expect_context_usable(flp_context *ctx) {
    flp_buffer_desc bd = {256};
    flp_buffer *buf = NULL;
    assert_int_equal(flp_buffer_create(ctx, &bd, &buf), FLP_OK);
    flp_buffer_destroy(buf);
}

static void plan_create_check_failed(void *state) {
    create_walk *w = state;
    assert_null(w->plan); /* a handle output is NULL after any failure (flashport.h) */
    if (w->desc.workspace) {
        /* the caller's workspace is not written */
        const uint8_t *ws = w->desc.workspace->native;
        for (size_t i = 0; i < w->workspace_bytes; i++)
            if (ws[i] != 0xA5)
                fail_msg("a failed flp_plan_create wrote byte %zu of the workspace", i);
    }
    expect_context_usable(w->ctx);
}

/* The plan w made, planned with decode batch A and the paged prefill, against a plan of the
 * same calls from a context that never failed. */
static void expect_plan_like_reference(flp_plan *plan, flp_context *ctx) {
    decode_batch a = batch_a();
    prefill_batch pb = prefill_paged();
    flp_decode_plan_args da = decode_args(&a);
    flp_prefill_plan_args pa = prefill_args(&pb);
    assert_int_equal(flp_decode_plan(ctx, plan, &da), FLP_OK);
    assert_int_equal(flp_prefill_plan(ctx, plan, &pa), FLP_OK);

    flp_context *rctx = fake_context();
    flp_plan_desc pd = plan_desc();
    flp_plan *ref = NULL;
    assert_int_equal(flp_plan_create(rctx, &pd, &ref), FLP_OK);
    assert_int_equal(flp_decode_plan(rctx, ref, &da), FLP_OK);
    assert_int_equal(flp_prefill_plan(rctx, ref, &pa), FLP_OK);
    plan_image got = plan_image_take(plan), want = plan_image_take(ref);
    expect_same_state(&got, &want, "a plan created after failures");
    expect_same_upload(plan, ref, false, a.kv_indptr[a.batch], "a plan created after failures");
    expect_same_upload(plan, ref, true, pb.kv_indptr[2], "a plan created after failures");
    plan_image_free(&got);
    plan_image_free(&want);
    flp_plan_destroy(ref);
    flp_context_destroy(rctx);
}

static void test_plan_create_walk(void **state) {
    (void)state;
    create_walk w = {.ctx = fake_context(), .desc = plan_desc()};
    walk wk = {"flp_plan_create",        &w,          plan_create_prepare, plan_create_call,
               plan_create_check_failed, .ctx = w.ctx};
    /* the plan, its two host mirrors, the flp_buffer and its device memory */
    assert_int_equal(walk_run(&wk), 5);
    expect_plan_like_reference(w.plan, w.ctx);
    flp_plan_destroy(w.plan);
    flp_context_destroy(w.ctx);
}

static void test_plan_create_in_workspace(void **state) {
    (void)state;
    create_walk w = {.ctx = fake_context(), .desc = plan_desc()};
    assert_int_equal(flp_plan_workspace_size(w.ctx, &w.desc, &w.workspace_bytes), FLP_OK);
    flp_buffer_desc bd = {w.workspace_bytes};
    flp_buffer *ws = NULL;
    assert_int_equal(flp_buffer_create(w.ctx, &bd, &ws), FLP_OK);
    memset(ws->native, 0xA5, w.workspace_bytes);
    w.desc.workspace = ws;
    walk wk = {"flp_plan_create (workspace)", &w,          plan_create_prepare, plan_create_call,
               plan_create_check_failed,      .ctx = w.ctx};
    /* the plan and its two host mirrors: no device memory */
    assert_int_equal(walk_run(&wk), 3);
    assert_ptr_equal(w.plan->buffer, ws);
    expect_plan_like_reference(w.plan, w.ctx);
    flp_plan_destroy(w.plan);
    flp_buffer_destroy(ws);
    flp_context_destroy(w.ctx);
}

static void workspace_size_prepare(void *state) {
    ((create_walk *)state)->workspace_bytes = (size_t)POISON_I32;
}

static flp_status workspace_size_call(void *state) {
    create_walk *w = state;
    return flp_plan_workspace_size(w->ctx, &w->desc, &w->workspace_bytes);
}

static void no_failure_expected(void *state) {
    (void)state;
    fail_msg("a call without allocation sites failed one");
}

static void test_plan_workspace_size(void **state) {
    (void)state;
    create_walk w = {.ctx = fake_context(), .desc = plan_desc()};
    walk wk = {"flp_plan_workspace_size", &w,          workspace_size_prepare, workspace_size_call,
               no_failure_expected,       .ctx = w.ctx};
    assert_int_equal(walk_run(&wk), 0); /* sizes only: allocates nothing */
    flp_plan *plan = NULL;
    assert_int_equal(flp_plan_create(w.ctx, &w.desc, &plan), FLP_OK);
    assert_int_equal(w.workspace_bytes, plan->layout.total);
    flp_plan_destroy(plan);
    flp_context_destroy(w.ctx);
}

static void buffer_create_prepare(void *state) {
    ((create_walk *)state)->buffer = BUFFER_POISON;
}

static flp_status buffer_create_call(void *state) {
    create_walk *w = state;
    flp_buffer_desc bd = {1000};
    return flp_buffer_create(w->ctx, &bd, &w->buffer);
}

static void buffer_create_check_failed(void *state) {
    create_walk *w = state;
    assert_null(w->buffer);
    expect_context_usable(w->ctx);
}

static void test_buffer_create_walk(void **state) {
    (void)state;
    create_walk w = {.ctx = fake_context()};
    walk wk = {"flp_buffer_create",        &w,          buffer_create_prepare, buffer_create_call,
               buffer_create_check_failed, .ctx = w.ctx};
    assert_int_equal(walk_run(&wk), 2); /* the flp_buffer, the device memory */
    assert_int_equal(flp_buffer_size(w.buffer), 1000);
    uint8_t in[1000], out[1000];
    for (int i = 0; i < 1000; i++)
        in[i] = (uint8_t)(i * 7);
    assert_int_equal(flp_buffer_write(w.ctx, w.buffer, 0, in, sizeof in), FLP_OK);
    assert_int_equal(flp_buffer_read(w.ctx, w.buffer, 0, out, sizeof out), FLP_OK);
    assert_memory_equal(in, out, sizeof in);
    flp_buffer_destroy(w.buffer);
    flp_context_destroy(w.ctx);
}

/* ---- runs ------------------------------------------------------------------------------------ */

typedef struct run_walk {
    flp_context *ctx;
    planned *p;
    int which; /* 0 decode, 1 prefill, 2 KV append, 3 single prefill */
    flp_kv_append_args append;
    flp_single_prefill_args single;
    int runs_before;
} run_walk;

static void run_prepare(void *state) {
    run_walk *w = state;
    w->runs_before = fake_runs_queued;
}

static flp_status run_call(void *state) {
    run_walk *w = state;
    if (w->which == 0) {
        flp_decode_run_args dr = decode_run_args(&w->p->t, w->p->a.batch);
        return flp_decode_run(w->ctx, w->p->plan, &dr);
    }
    if (w->which == 1) {
        flp_prefill_run_args pr = prefill_run_args(&w->p->t, FLP_KV_RAGGED);
        return flp_prefill_run(w->ctx, w->p->plan, &pr);
    }
    if (w->which == 2)
        return flp_kv_append(w->ctx, &w->append);
    return flp_single_prefill(w->ctx, &w->single);
}

static void run_check_failed(void *state) {
    run_walk *w = state;
    /* nothing was queued (so no output can be written) */
    assert_int_equal(fake_runs_queued, w->runs_before);
    expect_context_usable(w->ctx);
}

/* New rows k/v [3, HKV, D] into the paged pool through a page table in device tensors. */
static flp_kv_append_args append_args(const tensors *t) {
    int64_t rows_shape[3] = {3, HKV, D}, n3[1] = {3}, n2[1] = {2}, n4[1] = {4};
    int64_t pool_shape[4] = {PAGES, PAGE, HKV, D};
    size_t rows = (size_t)3 * HKV * D * 2, half = (size_t)PAGES * PAGE * HKV * D * 2;
    flp_kv_append_args a = {
        .k = flp_tensor_contiguous(t->q, 0, FLP_DTYPE_BF16, 3, rows_shape),
        .v = flp_tensor_contiguous(t->q, rows, FLP_DTYPE_BF16, 3, rows_shape),
        .batch_indices = flp_tensor_contiguous(t->lse, 0, FLP_DTYPE_I32, 1, n3),
        .positions = flp_tensor_contiguous(t->lse, 16, FLP_DTYPE_I32, 1, n3),
        .kv_indptr = flp_tensor_contiguous(t->lse, 32, FLP_DTYPE_I32, 1, n2),
        .kv_indices = flp_tensor_contiguous(t->lse, 48, FLP_DTYPE_I32, 1, n4),
        .k_cache = flp_tensor_contiguous(t->pool, 0, FLP_DTYPE_BF16, 4, pool_shape),
        .v_cache = flp_tensor_contiguous(t->pool, half, FLP_DTYPE_BF16, 4, pool_shape),
        .kv_layout = FLP_KV_LAYOUT_NHD,
    };
    return a;
}

/* One request: q [5, HQ, D] over ragged k/v [40, HKV, D]. */
static flp_single_prefill_args single_args(const tensors *t) {
    int64_t q_shape[3] = {5, HQ, D}, kv_shape[3] = {40, HKV, D};
    flp_single_prefill_args a = {
        .q = flp_tensor_contiguous(t->q, 0, FLP_DTYPE_BF16, 3, q_shape),
        .out = flp_tensor_contiguous(t->out, 0, FLP_DTYPE_BF16, 3, q_shape),
        .k = flp_tensor_contiguous(t->ragged, 0, FLP_DTYPE_BF16, 3, kv_shape),
        .v =
            flp_tensor_contiguous(t->ragged, (size_t)40 * HKV * D * 2, FLP_DTYPE_BF16, 3, kv_shape),
        .variant = {.head_dim = D, .q_dtype = FLP_DTYPE_BF16, .mask = FLP_MASK_CAUSAL},
    };
    return a;
}

/* Runs allocate nothing on the fake backend (the walk finds no site) and hand the backend what
 * they handed it before. */
static void test_runs(void **state) {
    (void)state;
    planned p;
    planned_open(&p);
    run_walk w = {.ctx = p.ctx, .p = &p, .append = append_args(&p.t)};
    static const char *const names[3] = {"flp_decode_run", "flp_prefill_run", "flp_kv_append"};
    for (w.which = 0; w.which < 3; w.which++) {
        assert_int_equal(run_call(&w), FLP_OK);
        flp_decode_launch d = fake_last_decode;
        flp_prefill_launch f = fake_last_prefill;
        flp_kv_append_params k = fake_last_append;
        walk wk = {names[w.which], &w, run_prepare, run_call, run_check_failed, .ctx = w.ctx};
        assert_int_equal(walk_run(&wk), 0);
        assert_memory_equal(&d, &fake_last_decode, sizeof d);
        assert_memory_equal(&f, &fake_last_prefill, sizeof f);
        assert_memory_equal(&k, &fake_last_append, sizeof k);
    }
    planned_close(&p);
}

/* The single-request call plans on a temporary plan: every site of its creation and of the
 * plan call fails in turn, and nothing is queued or left allocated. */
static void test_single_prefill(void **state) {
    (void)state;
    planned p;
    planned_open(&p);
    run_walk w = {.ctx = p.ctx, .p = &p, .which = 3, .single = single_args(&p.t)};
    walk wk = {"flp_single_prefill", &w, run_prepare, run_call, run_check_failed, .ctx = w.ctx};
    /* the temporary plan (plan, two mirrors, flp_buffer, device memory), the plan's scratch */
    assert_int_equal(walk_run(&wk), 6);
    assert_int_equal(fake_runs_queued, w.runs_before + 1);
    flp_prefill_launch got = fake_last_prefill;

    planned ref;
    planned_open(&ref);
    flp_single_prefill_args ra = single_args(&ref.t);
    assert_int_equal(flp_single_prefill(ref.ctx, &ra), FLP_OK);
    flp_prefill_launch want = fake_last_prefill;
    /* the same kernel choice and grids (addresses differ between contexts) */
    assert_int_equal(got.num_ctas, want.num_ctas);
    assert_int_equal(got.merge_grid, want.merge_grid);
    assert_int_equal(got.q_tile, want.q_tile);
    assert_int_equal(got.head_dim, want.head_dim);
    assert_int_equal(got.params.q_stride_row, want.params.q_stride_row);
    assert_int_equal(got.params.k_stride_slot, want.params.k_stride_slot);
    planned_close(&ref);
    planned_close(&p);
}

/* ---- the page table -------------------------------------------------------------------------- */

enum { PT_PAGES = 16, PT_PAGE = 4, PT_SEQS = 8 };

/* What a table exports for every live sequence of ids[n], and its free pages. */
typedef struct table_export {
    int32_t indptr[PT_SEQS + 1], indices[4 * PT_PAGES], last[PT_SEQS], free_pages;
} table_export;

static table_export export_of(const flp_page_table *t, const int32_t *ids, int32_t n) {
    table_export e;
    memset(&e, 0, sizeof e);
    assert_int_equal(flp_page_table_export(t, ids, n, e.indptr, e.indices, 4 * PT_PAGES, e.last),
                     FLP_OK);
    e.free_pages = flp_page_table_free_pages(t);
    return e;
}

typedef struct table_walk {
    flp_page_table *table;
    int which; /* 0 create, 1 create_sequence, 2 append, 3 fork, 4 free_sequence, 5 export */
    int32_t ids[PT_SEQS], num_ids;
    table_export before;
    int32_t out[3]; /* the call's outputs: seq id, or copy_src / copy_dst, poisoned */
    flp_page_table *created;
    table_export exported;
} table_walk;

static void table_prepare(void *state) {
    table_walk *w = state;
    poison_i32(w->out, 3);
    w->created = (flp_page_table *)(uintptr_t)0x7EAD;
    if (w->table)
        w->before = export_of(w->table, w->ids, w->num_ids);
}

static flp_status table_call(void *state) {
    table_walk *w = state;
    flp_page_table_desc desc = {PT_PAGES, PT_PAGE, PT_SEQS};
    switch (w->which) {
    case 0:
        return flp_page_table_create(&desc, &w->created);
    case 1:
        return flp_page_table_create_sequence(w->table, &w->out[0]);
    case 2: /* sequence 1 (a fork of 0, sharing its partial last page) grows by 12 tokens */
        return flp_page_table_append(w->table, 1, 12, &w->out[0], &w->out[1]);
    case 3:
        return flp_page_table_fork(w->table, 0, &w->out[0]);
    case 4:
        return flp_page_table_free_sequence(w->table, 1);
    default:
        return flp_page_table_export(w->table, w->ids, w->num_ids, w->exported.indptr,
                                     w->exported.indices, 4 * PT_PAGES, w->exported.last);
    }
}

static void table_check_failed(void *state) {
    table_walk *w = state;
    if (w->which == 0) {
        assert_null(w->created);
        return;
    }
    expect_poisoned_i32(w->out, 3, "an output");
    table_export now = export_of(w->table, w->ids, w->num_ids);
    if (memcmp(&now, &w->before, sizeof now) != 0)
        fail_msg("a failed page-table call changed what the table exports");
    /* still usable: a sequence comes and goes, and the table is as it was */
    int32_t id = -1;
    assert_int_equal(flp_page_table_create_sequence(w->table, &id), FLP_OK);
    assert_int_equal(flp_page_table_free_sequence(w->table, id), FLP_OK);
    now = export_of(w->table, w->ids, w->num_ids);
    assert_memory_equal(&now, &w->before, sizeof now);
}

/* Sequence 0 with 5 tokens (pages 0, 1; the second partial); with fork, sequence 1 shares
 * both. */
static flp_page_table *table_make(bool fork) {
    flp_page_table_desc desc = {PT_PAGES, PT_PAGE, PT_SEQS};
    flp_page_table *t = NULL;
    assert_int_equal(flp_page_table_create(&desc, &t), FLP_OK);
    int32_t id = -1;
    assert_int_equal(flp_page_table_create_sequence(t, &id), FLP_OK);
    assert_int_equal(flp_page_table_append(t, id, 5, NULL, NULL), FLP_OK);
    if (fork)
        assert_int_equal(flp_page_table_fork(t, 0, &id), FLP_OK);
    return t;
}

/* Walks call which on a table from table_make(fork) and compares the outcome with a table
 * that made the same calls without failing. */
static void walk_table(int which, bool fork, int64_t expected_sites) {
    static const char *const names[] = {
        "flp_page_table_create", "flp_page_table_create_sequence", "flp_page_table_append",
        "flp_page_table_fork",   "flp_page_table_free_sequence",   "flp_page_table_export"};
    table_walk w = {.which = which, .ids = {0, 1}, .num_ids = fork ? 2 : 1};
    if (which != 0)
        w.table = table_make(fork);
    walk wk = {names[which], &w, table_prepare, table_call, table_check_failed, .table = w.table};
    assert_int_equal(walk_run(&wk), expected_sites);

    table_walk ref = {.which = which, .ids = {0, 1}, .num_ids = w.num_ids};
    if (which != 0)
        ref.table = table_make(fork);
    table_prepare(&ref);
    assert_int_equal(table_call(&ref), FLP_OK);
    assert_memory_equal(w.out, ref.out, sizeof w.out);
    if (which == 0) { /* the new tables work alike */
        w.table = w.created;
        ref.table = ref.created;
        table_walk *both[2] = {&w, &ref};
        for (int i = 0; i < 2; i++) {
            int32_t id = -1;
            assert_int_equal(flp_page_table_create_sequence(both[i]->table, &id), FLP_OK);
            assert_int_equal(flp_page_table_append(both[i]->table, id, 9, NULL, NULL), FLP_OK);
            both[i]->num_ids = 1;
        }
    }
    if (which == 3) { /* the child joins the export */
        w.ids[w.num_ids++] = w.out[0];
        ref.ids[ref.num_ids++] = ref.out[0];
    }
    if (which == 4) /* sequence 1 is gone */
        w.num_ids = ref.num_ids = 1;
    table_export got = export_of(w.table, w.ids, w.num_ids);
    table_export want = export_of(ref.table, ref.ids, ref.num_ids);
    assert_memory_equal(&got, &want, sizeof got);
    if (which == 5)
        assert_memory_equal(&w.exported, &ref.exported, sizeof w.exported);
    if (which == 2) /* the append copied the shared page on write */
        assert_true(w.out[0] >= 0 && w.out[1] >= 0 && w.out[0] != w.out[1]);
    flp_page_table_destroy(w.table);
    flp_page_table_destroy(ref.table);
}

static void test_page_table_create(void **state) {
    (void)state;
    walk_table(0, false, 5); /* the table and its four arrays */
}

static void test_page_table_create_sequence(void **state) {
    (void)state;
    walk_table(1, false, 0);
}

static void test_page_table_append_copy_on_write(void **state) {
    (void)state;
    walk_table(2, true, 1); /* the sequence's page list grows */
}

static void test_page_table_fork(void **state) {
    (void)state;
    walk_table(3, false, 1); /* the child's page list */
}

static void test_page_table_free_sequence(void **state) {
    (void)state;
    walk_table(4, true, 0);
}

static void test_page_table_export(void **state) {
    (void)state;
    walk_table(5, true, 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_seam_counts_and_fails_once),
        cmocka_unit_test(test_buffer_create_walk),
        cmocka_unit_test(test_plan_create_walk),
        cmocka_unit_test(test_plan_create_in_workspace),
        cmocka_unit_test(test_plan_workspace_size),
        cmocka_unit_test(test_decode_plan),
        cmocka_unit_test(test_decode_plan_matrix),
        cmocka_unit_test(test_prefill_plan_paged),
        cmocka_unit_test(test_prefill_plan_ragged),
        cmocka_unit_test(test_runs),
        cmocka_unit_test(test_single_prefill),
        cmocka_unit_test(test_page_table_create),
        cmocka_unit_test(test_page_table_create_sequence),
        cmocka_unit_test(test_page_table_append_copy_on_write),
        cmocka_unit_test(test_page_table_fork),
        cmocka_unit_test(test_page_table_free_sequence),
        cmocka_unit_test(test_page_table_export),
    };
    return cmocka_run_group_tests_name("fault_injection", tests, NULL, NULL);
}
