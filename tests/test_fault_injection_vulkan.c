/* Fault injection on the Vulkan backend (suite vulkan: lavapipe in CI), with the Khronos
 * validation layer on. For context creation and for the first buffer, plan, plan upload, decode
 * run, prefill run and KV append of a context, the seam of core/alloc.h fails each host and
 * device allocation site in turn (instance, device, command pool and buffers, fences, pipeline
 * layouts, staging buffer, buffers and their memory, shader modules, pipelines, texel views,
 * descriptor pools and sets, and every host allocation on the way).
 *
 * Each attempt runs on a fresh context, so every attempt meets the same lazily created state
 * and the walk reaches every site of the call. A failure must return FLP_ERROR_OUT_OF_MEMORY
 * with a message and write nothing to the call's outputs; the validation layer must report
 * nothing (no leaked Vulkan object at device or instance destruction); the call retried with
 * injection off must give the reference result; and the context must then still run a small
 * decode that matches the float64 reference (core/reference.h).
 *
 * Exits 77 (skipped) when no Vulkan device can be opened. */
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
#include "core/reference.h"
#include "flashport/flashport.h"
#include "flashport/flashport_vulkan.h"

/* ---- the log: failures are expected, validation messages never ----------------------------- */

static struct {
    int errors, validation;
    char last[2048];
} g_log;

static void on_log(void *user, flp_log_level level, const char *message) {
    (void)user;
    if (level < FLP_LOG_ERROR)
        return;
    g_log.errors++;
    snprintf(g_log.last, sizeof g_log.last, "%s", message);
    if (strncmp(message, "Vulkan validation", 17) == 0) {
        g_log.validation++;
        fprintf(stderr, "%s\n", message);
    }
}

static flp_context_desc context_desc(flp_backend_kind kind) {
    flp_context_desc desc = {.backend = kind, .log = on_log, .log_level = FLP_LOG_ERROR};
    return desc;
}

static flp_context *open_context(void) {
    flp_context_desc desc = context_desc(FLP_BACKEND_VULKAN);
    flp_context *ctx = NULL;
    if (flp_context_create(&desc, &ctx) != FLP_OK)
        fail_msg("flp_context_create without injection: %s", g_log.last);
    return ctx;
}

static void expect_no_validation_message(const flp_context *ctx, const char *when) {
    if (g_log.validation != 0 || (ctx && flp_vulkan_validation_message_count(ctx) != 0))
        fail_msg("%s: the validation layer reported %d message(s)", when, g_log.validation);
}

/* A failed call: FLP_ERROR_OUT_OF_MEMORY, a message about memory, nothing for the layer. */
static void expect_out_of_memory(const flp_context *ctx, flp_status st, const char *call,
                                 int64_t site, const flp_fault_report *r) {
    const char *kind = r->fired_kind == FLP_FAULT_HOST ? "host" : "device";
    if (st != FLP_ERROR_OUT_OF_MEMORY)
        fail_msg("%s: %s allocation site %lld failed, the call returned %s (%s)", call, kind,
                 (long long)site, flp_status_string(st), g_log.last);
    const char *message = ctx ? flp_context_last_error(ctx) : g_log.last;
    if (!strcasestr(message, "memory"))
        fail_msg("%s: %s allocation site %lld: the message does not say so: \"%s\"", call, kind,
                 (long long)site, message);
    expect_no_validation_message(ctx, call);
}

/* ---- a small decode and a small prefill with their float64 references ---------------------- */

enum { B = 2, HQ = 4, HKV = 2, D = 64, PAGE = 4, POOL = 8, TOKENS = 27 };
enum { PF_QO = 3, PF_KV = 7, APPEND_ROWS = 3 };

#define POOL_ELEMS ((size_t)POOL * PAGE * HKV * D)
#define POOL_BYTES (POOL_ELEMS * 2)
#define Q_ELEMS ((size_t)B * HQ * D)

/* Request 0: pages 5, 1 (7 keys); request 1: pages 0, 7, 2, 6, 3 (20 keys). */
static const int32_t kv_indptr[B + 1] = {0, 2, 7}, kv_indices[7] = {5, 1, 0, 7, 2, 6, 3};
static const int32_t kv_last[B] = {3, 4};

static struct {
    uint16_t q[Q_ELEMS], k[POOL_ELEMS], v[POOL_ELEMS];         /* bf16 bits */
    uint16_t pf_q[PF_QO * HQ * D], pf_kv[2 * PF_KV * HKV * D]; /* prefill q; k then v */
    uint16_t rows[2 * APPEND_ROWS * HKV * D];                  /* new K then V rows */
    double decode_ref[Q_ELEMS], prefill_ref[PF_QO * HQ * D];
} g;

static uint64_t g_rng = 0x9E3779B97F4A7C15ull;

static uint16_t random_bf16(void) {
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    float x = (float)((double)(g_rng >> 11) / 9007199254740992.0 * 2.0 - 1.0);
    return flp_f32_to_bf16(x);
}

static void fill_random(uint16_t *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        x[i] = random_bf16();
}

static double *to_f64(const uint16_t *x, size_t n) {
    double *d = calloc(n, sizeof *d);
    assert_non_null(d);
    for (size_t i = 0; i < n; i++)
        d[i] = flp_bf16_to_f32(x[i]);
    return d;
}

static void problems_init(void) {
    fill_random(g.q, Q_ELEMS);
    fill_random(g.k, POOL_ELEMS);
    fill_random(g.v, POOL_ELEMS);
    fill_random(g.pf_q, sizeof g.pf_q / 2);
    fill_random(g.pf_kv, sizeof g.pf_kv / 2);
    fill_random(g.rows, sizeof g.rows / 2);

    /* decode: the paged K/V gathered into token rows */
    float *kf = calloc(POOL_ELEMS, sizeof *kf), *vf = calloc(POOL_ELEMS, sizeof *vf);
    double *kt = calloc((size_t)TOKENS * HKV * D, sizeof *kt);
    double *vt = calloc((size_t)TOKENS * HKV * D, sizeof *vt);
    assert_true(kf && vf && kt && vt);
    for (size_t i = 0; i < POOL_ELEMS; i++) {
        kf[i] = flp_bf16_to_f32(g.k[i]);
        vf[i] = flp_bf16_to_f32(g.v[i]);
    }
    int32_t tok_indptr[B + 1];
    assert_int_equal(flp_ref_gather_paged(B, HKV, D, PAGE, FLP_KV_LAYOUT_NHD, POOL, kf, kv_indptr,
                                          kv_indices, kv_last, tok_indptr, kt),
                     FLP_OK);
    assert_int_equal(flp_ref_gather_paged(B, HKV, D, PAGE, FLP_KV_LAYOUT_NHD, POOL, vf, kv_indptr,
                                          kv_indices, kv_last, tok_indptr, vt),
                     FLP_OK);
    double *q = to_f64(g.q, Q_ELEMS);
    int32_t qo_indptr[B + 1] = {0, 1, 2};
    flp_ref_attention a = {.batch_size = B,
                           .num_qo_heads = HQ,
                           .num_kv_heads = HKV,
                           .head_dim = D,
                           .qo_indptr = qo_indptr,
                           .kv_indptr = tok_indptr,
                           .q = q,
                           .k = kt,
                           .v = vt};
    assert_int_equal(flp_ref_attention_run(&a, g.decode_ref, NULL), FLP_OK);

    /* prefill: one request, 3 causal rows over 7 ragged keys */
    double *pq = to_f64(g.pf_q, sizeof g.pf_q / 2), *pkv = to_f64(g.pf_kv, sizeof g.pf_kv / 2);
    int32_t pf_qo[2] = {0, PF_QO}, pf_kv[2] = {0, PF_KV};
    flp_ref_attention p = {.batch_size = 1,
                           .num_qo_heads = HQ,
                           .num_kv_heads = HKV,
                           .head_dim = D,
                           .qo_indptr = pf_qo,
                           .kv_indptr = pf_kv,
                           .q = pq,
                           .k = pkv,
                           .v = pkv + (size_t)PF_KV * HKV * D,
                           .mask = FLP_MASK_CAUSAL};
    assert_int_equal(flp_ref_attention_run(&p, g.prefill_ref, NULL), FLP_OK);
    free(kf);
    free(vf);
    free(kt);
    free(vt);
    free(q);
    free(pq);
    free(pkv);
}

static flp_buffer *new_buffer(flp_context *ctx, size_t bytes) {
    flp_buffer_desc bd = {bytes};
    flp_buffer *buf = NULL;
    if (flp_buffer_create(ctx, &bd, &buf) != FLP_OK)
        fail_msg("flp_buffer_create(%zu): %s", bytes, flp_context_last_error(ctx));
    return buf;
}

static void upload(flp_context *ctx, flp_buffer *buf, size_t offset, const void *src, size_t n) {
    if (flp_buffer_write(ctx, buf, offset, src, n) != FLP_OK)
        fail_msg("flp_buffer_write: %s", flp_context_last_error(ctx));
}

static void *download(flp_context *ctx, const flp_buffer *buf, size_t n) {
    void *dst = calloc(n, 1);
    assert_non_null(dst);
    if (flp_context_synchronize(ctx) != FLP_OK || flp_buffer_read(ctx, buf, 0, dst, n) != FLP_OK)
        fail_msg("reading a buffer back: %s", flp_context_last_error(ctx));
    return dst;
}

/* out [rows, HQ, D] bf16 against ref: max |out - ref| / max |ref|, bf16 rounding and a little
 * accumulation. */
static void expect_reference(flp_context *ctx, const flp_buffer *out, const double *ref,
                             size_t elems, const char *what) {
    uint16_t *bits = download(ctx, out, elems * 2);
    double *got = to_f64(bits, elems);
    double err = flp_ref_relative_error(got, ref, elems);
    if (!(err <= 1e-2))
        fail_msg("%s: relative error %g against the float64 reference", what, err);
    free(bits);
    free(got);
}

static void poison(flp_context *ctx, flp_buffer *buf, size_t n) {
    uint8_t *ff = malloc(n);
    assert_non_null(ff);
    memset(ff, 0xFF, n);
    upload(ctx, buf, 0, ff, n);
    free(ff);
}

static void expect_poisoned(flp_context *ctx, const flp_buffer *buf, size_t n, const char *call) {
    uint8_t *bytes = download(ctx, buf, n);
    for (size_t i = 0; i < n; i++)
        if (bytes[i] != 0xFF)
            fail_msg("a failed %s wrote byte %zu of its output", call, i);
    free(bytes);
}

static flp_plan_desc decode_plan_desc(void) {
    flp_plan_desc pd = {.max_batch_size = B,
                        .max_pages = POOL,
                        .max_qo_rows = 8,
                        .num_qo_heads = HQ,
                        .num_kv_heads = HKV,
                        .head_dim = D};
    return pd;
}

static flp_decode_plan_args decode_args(void) {
    flp_decode_plan_args pa = {.batch_size = B,
                               .page_size = PAGE,
                               .kv_indptr = kv_indptr,
                               .kv_indices = kv_indices,
                               .kv_last_page_len = kv_last,
                               .variant = {.head_dim = D, .q_dtype = FLP_DTYPE_BF16}};
    return pa;
}

/* The decode problem on a context: q, out and the K/V pool uploaded, a plan (given or made). */
typedef struct decode_problem {
    flp_context *ctx;
    flp_buffer *q, *out, *pool;
    flp_plan *plan;
    bool owns_plan;
} decode_problem;

static flp_decode_run_args decode_run_args(const decode_problem *p) {
    int64_t q_shape[3] = {B, HQ, D}, kv_shape[4] = {POOL, PAGE, HKV, D};
    flp_decode_run_args ra = {
        .q = flp_tensor_contiguous(p->q, 0, FLP_DTYPE_BF16, 3, q_shape),
        .out = flp_tensor_contiguous(p->out, 0, FLP_DTYPE_BF16, 3, q_shape),
        .k_cache = flp_tensor_contiguous(p->pool, 0, FLP_DTYPE_BF16, 4, kv_shape),
        .v_cache = flp_tensor_contiguous(p->pool, POOL_BYTES, FLP_DTYPE_BF16, 4, kv_shape),
    };
    return ra;
}

static void decode_open(decode_problem *p, flp_context *ctx, flp_plan *plan) {
    memset(p, 0, sizeof *p);
    p->ctx = ctx;
    p->q = new_buffer(ctx, Q_ELEMS * 2);
    p->out = new_buffer(ctx, Q_ELEMS * 2);
    p->pool = new_buffer(ctx, 2 * POOL_BYTES);
    upload(ctx, p->q, 0, g.q, sizeof g.q);
    upload(ctx, p->pool, 0, g.k, POOL_BYTES);
    upload(ctx, p->pool, POOL_BYTES, g.v, POOL_BYTES);
    poison(ctx, p->out, Q_ELEMS * 2);
    p->owns_plan = plan == NULL;
    if (!plan) {
        flp_plan_desc pd = decode_plan_desc();
        if (flp_plan_create(ctx, &pd, &plan) != FLP_OK)
            fail_msg("flp_plan_create: %s", flp_context_last_error(ctx));
    }
    p->plan = plan;
    flp_decode_plan_args pa = decode_args();
    if (flp_decode_plan(ctx, plan, &pa) != FLP_OK)
        fail_msg("flp_decode_plan: %s", flp_context_last_error(ctx));
}

static void decode_close(decode_problem *p) {
    if (p->owns_plan)
        flp_plan_destroy(p->plan);
    flp_buffer_destroy(p->q);
    flp_buffer_destroy(p->out);
    flp_buffer_destroy(p->pool);
}

static void decode_run_and_check(decode_problem *p, const char *what) {
    flp_decode_run_args ra = decode_run_args(p);
    if (flp_decode_run(p->ctx, p->plan, &ra) != FLP_OK)
        fail_msg("%s: flp_decode_run: %s", what, flp_context_last_error(p->ctx));
    expect_reference(p->ctx, p->out, g.decode_ref, Q_ELEMS, what);
}

/* The context still works: the small decode matches the reference. */
static void expect_decode_works(flp_context *ctx, const char *when) {
    decode_problem p;
    decode_open(&p, ctx, NULL);
    decode_run_and_check(&p, when);
    decode_close(&p);
}

/* ---- the walk: one fresh context per attempt ------------------------------------------------ */

typedef struct attempt {
    flp_context *ctx;
    decode_problem decode;
    flp_buffer *buffer, *workspace, *q, *kv, *out, *idx;
    flp_plan *plan;
    size_t workspace_bytes;
} attempt;

typedef struct vk_walk {
    const char *name;
    void (*setup)(attempt *a); /* the state before the call, injection off (may be NULL) */
    flp_status (*call)(attempt *a);
    /* After a failure, injection off: nothing written, the call retried gives the reference. */
    void (*check_failed)(attempt *a);
    void (*check_done)(attempt *a); /* after the successful call */
    void (*teardown)(attempt *a);   /* frees what setup and the call made */
} vk_walk;

#define WALK_MAX_SITES 96

static int64_t walk_run(const vk_walk *w) {
    for (int64_t n = 0; n <= WALK_MAX_SITES; n++) {
        attempt a;
        memset(&a, 0, sizeof a);
        g_log.validation = 0;
        a.ctx = open_context();
        if (w->setup)
            w->setup(&a);
        flp_fault_arm(FLP_FAULT_ALL, n);
        flp_status st = w->call(&a);
        flp_fault_report r = flp_fault_disarm();
        if (r.fired) {
            expect_out_of_memory(a.ctx, st, w->name, n, &r);
            w->check_failed(&a);
        } else {
            if (st != FLP_OK)
                fail_msg("%s failed with no injected failure: %s", w->name,
                         flp_context_last_error(a.ctx));
            assert_int_equal(r.host + r.device, n);
            w->check_done(&a);
        }
        expect_decode_works(a.ctx, w->name);
        if (w->teardown)
            w->teardown(&a);
        expect_no_validation_message(a.ctx, w->name);
        flp_context_destroy(a.ctx);
        expect_no_validation_message(NULL, "flp_context_destroy");
        if (!r.fired)
            return n;
    }
    fail_msg("%s: more than %d allocation sites", w->name, WALK_MAX_SITES);
    return -1;
}

/* ---- flp_context_create ---------------------------------------------------------------------- */

/* Walks the creation of a context of kind; returns the sites of a successful one. */
static int64_t walk_context_create(flp_backend_kind kind) {
    for (int64_t n = 0; n <= WALK_MAX_SITES; n++) {
        g_log.validation = 0;
        g_log.errors = 0;
        flp_context_desc desc = context_desc(kind);
        flp_context *ctx = (flp_context *)&g_log; /* poison: must come back NULL */
        flp_fault_arm(FLP_FAULT_ALL, n);
        flp_status st = flp_context_create(&desc, &ctx);
        flp_fault_report r = flp_fault_disarm();
        if (r.fired) {
            expect_out_of_memory(NULL, st, "flp_context_create", n, &r);
            assert_null(ctx);
            if (g_log.errors != 1)
                fail_msg("a failed flp_context_create logged %d errors (want 1): last \"%s\"",
                         g_log.errors, g_log.last);
            continue;
        }
        if (st != FLP_OK)
            fail_msg("flp_context_create failed with no injected failure: %s", g_log.last);
        assert_int_equal(r.host + r.device, n);
        expect_decode_works(ctx, "a context created after failures");
        expect_no_validation_message(ctx, "flp_context_create");
        flp_context_destroy(ctx);
        expect_no_validation_message(NULL, "flp_context_destroy");
        return n;
    }
    fail_msg("flp_context_create: more than %d allocation sites", WALK_MAX_SITES);
    return -1;
}

static void test_context_create(void **state) {
    (void)state;
    int64_t sites = walk_context_create(FLP_BACKEND_VULKAN);
    /* at least: the context, the backend state, instance, device, command pool and buffers, a
     * fence per slot, pipeline layout, the KV append's parameter buffer and memory */
    printf("flp_context_create (VULKAN): %lld allocation sites\n", (long long)sites);
    assert_true(sites >= 20);
}

static void test_context_create_auto(void **state) {
    (void)state;
    /* AUTO probes a Vulkan GPU first (lavapipe has none: it fails after creating an instance),
     * then any device: running out of memory stops the probing instead of falling through */
    int64_t sites = walk_context_create(FLP_BACKEND_AUTO);
    printf("flp_context_create (AUTO): %lld allocation sites\n", (long long)sites);
    /* AUTO ends on CUDA where a CUDA device is present (context, stream, ... : a few sites),
     * else on Vulkan (instance, device, pools, pipelines: dozens) */
    flp_context_desc desc = context_desc(FLP_BACKEND_AUTO);
    flp_context *ctx = NULL;
    assert_int_equal(flp_context_create(&desc, &ctx), FLP_OK);
    flp_device_info info;
    assert_int_equal(flp_context_get_info(ctx, &info), FLP_OK);
    flp_context_destroy(ctx);
    assert_true(sites >= (info.backend == FLP_BACKEND_VULKAN ? 20 : 2));
}

/* ---- flp_buffer_create, flp_plan_create --------------------------------------------------------
 */

static flp_status buffer_call(attempt *a) {
    a->buffer = (flp_buffer *)(uintptr_t)0x7EAD;
    flp_buffer_desc bd = {4096};
    return flp_buffer_create(a->ctx, &bd, &a->buffer);
}

static void buffer_failed(attempt *a) {
    assert_null(a->buffer);
}

static void buffer_done(attempt *a) {
    uint8_t in[4096], *out;
    for (int i = 0; i < 4096; i++)
        in[i] = (uint8_t)(i * 13 + 1);
    upload(a->ctx, a->buffer, 0, in, sizeof in);
    out = download(a->ctx, a->buffer, sizeof in);
    assert_memory_equal(in, out, sizeof in);
    free(out);
    flp_buffer_destroy(a->buffer);
}

static void test_buffer_create(void **state) {
    (void)state;
    vk_walk w = {"flp_buffer_create", NULL, buffer_call, buffer_failed, buffer_done, NULL};
    int64_t sites = walk_run(&w);
    /* the flp_buffer, its Vulkan part, VkBuffer, memory, binding, the texel-buffer list */
    printf("flp_buffer_create: %lld allocation sites\n", (long long)sites);
    assert_true(sites >= 5);
}

static flp_status plan_call(attempt *a) {
    a->plan = (flp_plan *)(uintptr_t)0x7EAD;
    flp_plan_desc pd = decode_plan_desc();
    pd.workspace = a->workspace;
    pd.workspace_offset = 0;
    return flp_plan_create(a->ctx, &pd, &a->plan);
}

static void plan_failed(attempt *a) {
    assert_null(a->plan);
    if (a->workspace) /* the caller's workspace is not written */
        expect_poisoned(a->ctx, a->workspace, a->workspace_bytes, "flp_plan_create");
}

static void plan_done(attempt *a) {
    decode_problem p;
    decode_open(&p, a->ctx, a->plan);
    decode_run_and_check(&p, "a plan created after failures");
    decode_close(&p);
    flp_plan_destroy(a->plan);
}

static void workspace_setup(attempt *a) {
    flp_plan_desc pd = decode_plan_desc();
    assert_int_equal(flp_plan_workspace_size(a->ctx, &pd, &a->workspace_bytes), FLP_OK);
    a->workspace = new_buffer(a->ctx, a->workspace_bytes);
    poison(a->ctx, a->workspace, a->workspace_bytes);
}

static void workspace_teardown(attempt *a) {
    flp_buffer_destroy(a->workspace);
}

static void test_plan_create(void **state) {
    (void)state;
    vk_walk w = {"flp_plan_create", NULL, plan_call, plan_failed, plan_done, NULL};
    int64_t sites = walk_run(&w);
    printf("flp_plan_create: %lld allocation sites\n", (long long)sites);
    assert_true(sites >= 8); /* the plan, two mirrors and a buffer */
    vk_walk ws = {"flp_plan_create (workspace)",
                  workspace_setup,
                  plan_call,
                  plan_failed,
                  plan_done,
                  workspace_teardown};
    assert_int_equal(walk_run(&ws), 3); /* the plan and its two mirrors */
}

/* ---- flp_decode_plan: the context's first upload makes the staging buffer ------------------ */

static void decode_plan_setup(attempt *a) {
    flp_plan_desc pd = decode_plan_desc();
    assert_int_equal(flp_plan_create(a->ctx, &pd, &a->plan), FLP_OK);
}

static flp_status decode_plan_call(attempt *a) {
    flp_decode_plan_args pa = decode_args();
    return flp_decode_plan(a->ctx, a->plan, &pa);
}

/* The plan's device copy is its mirror, which is a never-failed plan's mirror; it decodes. */
static void decode_plan_check(attempt *a) {
    const flp_plan *plan = a->plan;
    size_t uploaded = plan->layout.kv_indices + sizeof(int32_t) * (size_t)kv_indptr[B];
    uint8_t *device = download(a->ctx, plan->buffer, plan->base + uploaded);
    if (memcmp(device + plan->base, plan->host, uploaded) != 0)
        fail_msg("the plan's device memory is not what it planned");
    free(device);
    flp_plan_desc pd = decode_plan_desc();
    flp_plan *ref = NULL;
    assert_int_equal(flp_plan_create(a->ctx, &pd, &ref), FLP_OK);
    flp_decode_plan_args pa = decode_args();
    assert_int_equal(flp_decode_plan(a->ctx, ref, &pa), FLP_OK);
    assert_int_equal(ref->layout.metadata_end, plan->layout.metadata_end);
    if (memcmp(ref->host, plan->host, plan->layout.metadata_end) != 0)
        fail_msg("the plan differs from one that never failed");
    flp_plan_destroy(ref);
    decode_problem p;
    decode_open(&p, a->ctx, NULL);
    flp_plan *own = p.plan;
    p.plan = a->plan; /* runs on the walked plan (decode_open planned its own) */
    decode_run_and_check(&p, "a plan planned after failures");
    p.plan = own;
    decode_close(&p);
}

static void decode_plan_failed(attempt *a) {
    /* nothing was planned before: the plan still holds no decode partition */
    flp_plan_summary s;
    flp_plan_summarize(a->plan, &s);
    assert_int_equal(s.decode_items, 0);
    assert_false(a->plan->decode.planned);
    assert_int_equal(decode_plan_call(a), FLP_OK);
    decode_plan_check(a);
}

static void plan_teardown(attempt *a) {
    flp_plan_destroy(a->plan);
}

static void test_decode_plan(void **state) {
    (void)state;
    vk_walk w = {"flp_decode_plan",  decode_plan_setup, decode_plan_call,
                 decode_plan_failed, decode_plan_check, plan_teardown};
    /* the call's scratch; the staging buffer: VkBuffer, memory, binding, mapping */
    assert_int_equal(walk_run(&w), 5);
}

/* ---- the first decode run: pipelines, texel views, descriptor sets ------------------------- */

static void decode_run_setup(attempt *a) {
    decode_open(&a->decode, a->ctx, NULL);
}

static flp_status decode_run_call(attempt *a) {
    flp_decode_run_args ra = decode_run_args(&a->decode);
    return flp_decode_run(a->ctx, a->decode.plan, &ra);
}

static void decode_run_failed(attempt *a) {
    expect_poisoned(a->ctx, a->decode.out, Q_ELEMS * 2, "flp_decode_run");
    decode_run_and_check(&a->decode, "flp_decode_run retried after a failure");
}

static void decode_run_done(attempt *a) {
    expect_reference(a->ctx, a->decode.out, g.decode_ref, Q_ELEMS, "flp_decode_run");
}

static void decode_run_teardown(attempt *a) {
    decode_close(&a->decode);
}

static void test_decode_run(void **state) {
    (void)state;
    vk_walk w = {"flp_decode_run",  decode_run_setup, decode_run_call,
                 decode_run_failed, decode_run_done,  decode_run_teardown};
    int64_t sites = walk_run(&w);
    printf("first flp_decode_run: %lld allocation sites\n", (long long)sites);
    assert_true(sites >= 4); /* shader modules and pipelines of the decode and the merge */
}

/* ---- the first prefill run ----------------------------------------------------------------- */

static flp_prefill_run_args prefill_run_args(const attempt *a) {
    int64_t q_shape[3] = {PF_QO, HQ, D}, kv_shape[3] = {PF_KV, HKV, D};
    flp_prefill_run_args ra = {
        .q = flp_tensor_contiguous(a->q, 0, FLP_DTYPE_BF16, 3, q_shape),
        .out = flp_tensor_contiguous(a->out, 0, FLP_DTYPE_BF16, 3, q_shape),
        .k = flp_tensor_contiguous(a->kv, 0, FLP_DTYPE_BF16, 3, kv_shape),
        .v = flp_tensor_contiguous(a->kv, (size_t)PF_KV * HKV * D * 2, FLP_DTYPE_BF16, 3, kv_shape),
    };
    return ra;
}

static void prefill_setup(attempt *a) {
    a->q = new_buffer(a->ctx, sizeof g.pf_q);
    a->kv = new_buffer(a->ctx, sizeof g.pf_kv);
    a->out = new_buffer(a->ctx, sizeof g.pf_q);
    upload(a->ctx, a->q, 0, g.pf_q, sizeof g.pf_q);
    upload(a->ctx, a->kv, 0, g.pf_kv, sizeof g.pf_kv);
    poison(a->ctx, a->out, sizeof g.pf_q);
    flp_plan_desc pd = decode_plan_desc();
    assert_int_equal(flp_plan_create(a->ctx, &pd, &a->plan), FLP_OK);
    int32_t qo_indptr[2] = {0, PF_QO}, kv[2] = {0, PF_KV};
    flp_prefill_plan_args pa = {
        .batch_size = 1,
        .qo_indptr = qo_indptr,
        .kv_storage = FLP_KV_RAGGED,
        .kv_indptr = kv,
        .variant = {.head_dim = D, .q_dtype = FLP_DTYPE_BF16, .mask = FLP_MASK_CAUSAL},
    };
    assert_int_equal(flp_prefill_plan(a->ctx, a->plan, &pa), FLP_OK);
}

static flp_status prefill_call(attempt *a) {
    flp_prefill_run_args ra = prefill_run_args(a);
    return flp_prefill_run(a->ctx, a->plan, &ra);
}

static void prefill_done(attempt *a) {
    expect_reference(a->ctx, a->out, g.prefill_ref, sizeof g.prefill_ref / sizeof(double),
                     "flp_prefill_run");
}

static void prefill_failed(attempt *a) {
    expect_poisoned(a->ctx, a->out, sizeof g.pf_q, "flp_prefill_run");
    assert_int_equal(prefill_call(a), FLP_OK);
    prefill_done(a);
}

static void prefill_teardown(attempt *a) {
    flp_plan_destroy(a->plan);
    flp_buffer_destroy(a->q);
    flp_buffer_destroy(a->kv);
    flp_buffer_destroy(a->out);
}

static void test_prefill_run(void **state) {
    (void)state;
    vk_walk w = {"flp_prefill_run", prefill_setup, prefill_call,
                 prefill_failed,    prefill_done,  prefill_teardown};
    int64_t sites = walk_run(&w);
    printf("first flp_prefill_run: %lld allocation sites\n", (long long)sites);
    assert_true(sites >= 4); /* shader modules and pipelines of the prefill and the merge */
}

/* ---- the first KV append ------------------------------------------------------------------- */

/* Rows 0..2 go to request 1 at positions 2, 9 and 19: pages 0 (slot 2), 2 (slot 1), 3 (slot
 * 3) of the decode pool. */
static const int32_t append_batch[APPEND_ROWS] = {1, 1, 1}, append_pos[APPEND_ROWS] = {2, 9, 19};

static void append_setup(attempt *a) {
    a->kv = new_buffer(a->ctx, 2 * POOL_BYTES);
    upload(a->ctx, a->kv, 0, g.k, POOL_BYTES);
    upload(a->ctx, a->kv, POOL_BYTES, g.v, POOL_BYTES);
    a->q = new_buffer(a->ctx, sizeof g.rows);
    upload(a->ctx, a->q, 0, g.rows, sizeof g.rows);
    /* batch_indices, positions, kv_indptr, kv_indices at 16-byte offsets */
    a->idx = new_buffer(a->ctx, 256);
    upload(a->ctx, a->idx, 0, append_batch, sizeof append_batch);
    upload(a->ctx, a->idx, 16, append_pos, sizeof append_pos);
    upload(a->ctx, a->idx, 32, kv_indptr, sizeof kv_indptr);
    upload(a->ctx, a->idx, 48, kv_indices, sizeof kv_indices);
}

static flp_status append_call(attempt *a) {
    int64_t rows[3] = {APPEND_ROWS, HKV, D}, n[1] = {APPEND_ROWS}, np[1] = {B + 1}, ni[1] = {7};
    int64_t pool[4] = {POOL, PAGE, HKV, D};
    size_t half = (size_t)APPEND_ROWS * HKV * D * 2;
    flp_kv_append_args args = {
        .k = flp_tensor_contiguous(a->q, 0, FLP_DTYPE_BF16, 3, rows),
        .v = flp_tensor_contiguous(a->q, half, FLP_DTYPE_BF16, 3, rows),
        .batch_indices = flp_tensor_contiguous(a->idx, 0, FLP_DTYPE_I32, 1, n),
        .positions = flp_tensor_contiguous(a->idx, 16, FLP_DTYPE_I32, 1, n),
        .kv_indptr = flp_tensor_contiguous(a->idx, 32, FLP_DTYPE_I32, 1, np),
        .kv_indices = flp_tensor_contiguous(a->idx, 48, FLP_DTYPE_I32, 1, ni),
        .k_cache = flp_tensor_contiguous(a->kv, 0, FLP_DTYPE_BF16, 4, pool),
        .v_cache = flp_tensor_contiguous(a->kv, POOL_BYTES, FLP_DTYPE_BF16, 4, pool),
        .kv_layout = FLP_KV_LAYOUT_NHD,
    };
    return flp_kv_append(a->ctx, &args);
}

/* The pool as it is after the append (appended is false: as it was before). */
static void expect_pool(attempt *a, bool appended, const char *what) {
    uint16_t *want = calloc(2 * POOL_ELEMS, sizeof *want);
    assert_non_null(want);
    memcpy(want, g.k, POOL_BYTES);
    memcpy(want + POOL_ELEMS, g.v, POOL_BYTES);
    for (int r = 0; appended && r < APPEND_ROWS; r++) {
        int32_t b = append_batch[r], pos = append_pos[r];
        int32_t page = kv_indices[kv_indptr[b] + pos / PAGE], slot = pos % PAGE;
        size_t at = ((size_t)page * PAGE + (size_t)slot) * HKV * D, row = (size_t)HKV * D;
        memcpy(want + at, g.rows + (size_t)r * row, row * 2);
        memcpy(want + POOL_ELEMS + at, g.rows + (size_t)(APPEND_ROWS + r) * row, row * 2);
    }
    uint16_t *got = download(a->ctx, a->kv, 2 * POOL_BYTES);
    if (memcmp(got, want, 2 * POOL_BYTES) != 0)
        fail_msg("%s: the K/V pool is not %s", what,
                 appended ? "the old pool with the new rows" : "as it was");
    free(got);
    free(want);
}

static void append_done(attempt *a) {
    expect_pool(a, true, "flp_kv_append");
}

static void append_failed(attempt *a) {
    expect_pool(a, false, "a failed flp_kv_append");
    assert_int_equal(append_call(a), FLP_OK);
    append_done(a);
}

static void append_teardown(attempt *a) {
    flp_buffer_destroy(a->kv);
    flp_buffer_destroy(a->q);
    flp_buffer_destroy(a->idx);
}

static void test_kv_append(void **state) {
    (void)state;
    vk_walk w = {"flp_kv_append", append_setup, append_call,
                 append_failed,   append_done,  append_teardown};
    int64_t sites = walk_run(&w);
    printf("first flp_kv_append: %lld allocation sites\n", (long long)sites);
    assert_true(sites >= 2); /* the shader module and the pipeline */
}

/* usage: test_fault_injection_vulkan [test name]: one walk per process when named (meson runs
 * them so: each walk opens dozens of devices, and one process per walk keeps a driver's
 * per-process state out of the results), all of them otherwise. */
int main(int argc, char **argv) {
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    setenv("FLP_VULKAN_VALIDATION", "1", 0);
    flp_context_desc desc = context_desc(FLP_BACKEND_VULKAN);
    flp_context *probe = NULL;
    flp_status st = flp_context_create(&desc, &probe);
    flp_context_destroy(probe);
    if (st == FLP_ERROR_UNSUPPORTED) {
        /* no device, or validation asked for and the layer missing: only the first skips */
        const char *asked = getenv("FLP_VULKAN_VALIDATION");
        bool validation = asked && asked[0] && strcmp(asked, "0") != 0;
        setenv("FLP_VULKAN_VALIDATION", "0", 1);
        flp_context_desc quiet = {.backend = FLP_BACKEND_VULKAN};
        bool opens = flp_context_create(&quiet, &probe) == FLP_OK;
        flp_context_destroy(probe);
        if (validation && opens) {
            fprintf(stderr,
                    "FAILED: the Vulkan device opens only without the validation layer "
                    "(Debian/Ubuntu: vulkan-validationlayers): %s\n",
                    g_log.last);
            return 1;
        }
        printf("skipped: no Vulkan device: %s\n", g_log.last);
        return 77;
    }
    if (st != FLP_OK) {
        fprintf(stderr, "flp_context_create: %s: %s\n", flp_status_string(st), g_log.last);
        return 1;
    }
    problems_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_context_create), cmocka_unit_test(test_context_create_auto),
        cmocka_unit_test(test_buffer_create),  cmocka_unit_test(test_plan_create),
        cmocka_unit_test(test_decode_plan),    cmocka_unit_test(test_decode_run),
        cmocka_unit_test(test_prefill_run),    cmocka_unit_test(test_kv_append),
    };
    return cmocka_run_group_tests_name("fault_injection-vulkan", tests, NULL, NULL);
}
