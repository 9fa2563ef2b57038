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
#include "core/kernel_cache.h"
#include "core/plan.h"
#include "core/reference.h"
#include "flashport/flashport.h"
#include "flashport/flashport_vulkan.h"
#include "tests/fault_walk.h"
#include "tests/test_util.h"

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

/* x[n]: bf16 bits of uniform values in [-1, 1). */
static void fill_random(test_rng *rng, uint16_t *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        x[i] = flp_f32_to_bf16((float)test_rng_uniform(rng, -1.0, 1.0));
}

static double *to_f64(const uint16_t *x, size_t n) {
    double *d = test_xcalloc(n, sizeof *d);
    for (size_t i = 0; i < n; i++)
        d[i] = flp_bf16_to_f32(x[i]);
    return d;
}

static void problems_init(void) {
    test_rng rng;
    test_rng_init(&rng, 0x9E3779B97F4A7C15ull);
    fill_random(&rng, g.q, Q_ELEMS);
    fill_random(&rng, g.k, POOL_ELEMS);
    fill_random(&rng, g.v, POOL_ELEMS);
    fill_random(&rng, g.pf_q, sizeof g.pf_q / 2);
    fill_random(&rng, g.pf_kv, sizeof g.pf_kv / 2);
    fill_random(&rng, g.rows, sizeof g.rows / 2);

    /* decode: the paged K/V gathered into token rows */
    float *kf = test_xcalloc(POOL_ELEMS, sizeof *kf), *vf = test_xcalloc(POOL_ELEMS, sizeof *vf);
    double *kt = test_xcalloc((size_t)TOKENS * HKV * D, sizeof *kt);
    double *vt = test_xcalloc((size_t)TOKENS * HKV * D, sizeof *vt);
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

static void upload(flp_context *ctx, flp_buffer *buf, size_t offset, const void *src, size_t n) {
    if (flp_buffer_write(ctx, buf, offset, src, n) != FLP_OK)
        fail_msg("flp_buffer_write: %s", flp_context_last_error(ctx));
}

/* The first n bytes of buf once the context's work is done (a new array: free it). */
static void *download(flp_context *ctx, const flp_buffer *buf, size_t n) {
    test_assert_ok(ctx, flp_context_synchronize(ctx));
    return test_buffer_read_all(ctx, buf, n);
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

/* Outputs are filled with this before a call (test_buffer_fill): a failed call leaves it. */
#define POISON_BYTE 0xFF

static void expect_poisoned(flp_context *ctx, const flp_buffer *buf, size_t n, const char *call) {
    uint8_t *bytes = download(ctx, buf, n);
    for (size_t i = 0; i < n; i++)
        if (bytes[i] != POISON_BYTE)
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
    p->q = test_buffer_new(ctx, Q_ELEMS * 2);
    p->out = test_buffer_new(ctx, Q_ELEMS * 2);
    p->pool = test_buffer_new(ctx, 2 * POOL_BYTES);
    upload(ctx, p->q, 0, g.q, sizeof g.q);
    upload(ctx, p->pool, 0, g.k, POOL_BYTES);
    upload(ctx, p->pool, POOL_BYTES, g.v, POOL_BYTES);
    test_buffer_fill(ctx, p->out, Q_ELEMS * 2, POISON_BYTE);
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
    /* After a failure, injection off: nothing written, nothing changed. */
    void (*check_failed)(attempt *a);
    /* Then the call retried with injection off must succeed and pass check_done (a call that
     * makes a new object is not retried: check_done takes its result). */
    bool retry;
    void (*check_done)(attempt *a); /* after the successful call */
    void (*teardown)(attempt *a);   /* frees what setup and the call made */
} vk_walk;

#define WALK_MAX_SITES 96

/* A vk_walk under the walk of fault_walk.h: each attempt on a context of its own. */
typedef struct vk_walk_state {
    const vk_walk *w;
    attempt a;
} vk_walk_state;

static void vk_prepare(void *state) {
    vk_walk_state *s = state;
    memset(&s->a, 0, sizeof s->a);
    g_log.validation = 0;
    /* with FLP_VULKAN_JIT, every attempt compiles its shaders again (the walk reaches every
     * site of the run-time compile; the tests that set it keep no disk cache either) */
    flp_kernel_cache_clear_memory();
    s->a.ctx = open_context();
    if (s->w->setup)
        s->w->setup(&s->a);
}

static flp_status vk_call(void *state) {
    vk_walk_state *s = state;
    return s->w->call(&s->a);
}

static const char *vk_message(void *state) {
    return flp_context_last_error(((vk_walk_state *)state)->a.ctx);
}

static void vk_check_failed(void *state) {
    vk_walk_state *s = state;
    expect_no_validation_message(s->a.ctx, s->w->name);
    s->w->check_failed(&s->a);
    if (!s->w->retry)
        return;
    if (s->w->call(&s->a) != FLP_OK)
        fail_msg("%s retried after a failure: %s", s->w->name, flp_context_last_error(s->a.ctx));
    s->w->check_done(&s->a);
}

static void vk_check_done(void *state) {
    vk_walk_state *s = state;
    s->w->check_done(&s->a);
}

/* After every attempt: the context still decodes, and closes without a validation message. */
static void vk_finish(void *state) {
    vk_walk_state *s = state;
    expect_decode_works(s->a.ctx, s->w->name);
    if (s->w->teardown)
        s->w->teardown(&s->a);
    expect_no_validation_message(s->a.ctx, s->w->name);
    flp_context_destroy(s->a.ctx);
    expect_no_validation_message(NULL, "flp_context_destroy");
}

static int64_t walk_run(const vk_walk *w) {
    vk_walk_state s = {.w = w};
    const fault_walk fw = {.name = w->name,
                           .max_sites = WALK_MAX_SITES,
                           .state = &s,
                           .prepare = vk_prepare,
                           .call = vk_call,
                           .message = vk_message,
                           .check_failed = vk_check_failed,
                           .check_done = vk_check_done,
                           .finish = vk_finish};
    return fault_walk_run(&fw);
}

/* Prints the allocation sites a walk found (what: the walked call) and fails unless there are
 * at least min_sites (the objects the call is known to make). */
static void expect_sites_at_least(const char *what, int64_t sites, int64_t min_sites) {
    printf("%s: %lld allocation sites\n", what, (long long)sites);
    if (sites < min_sites)
        fail_msg("%s: %lld allocation sites, at least %lld expected", what, (long long)sites,
                 (long long)min_sites);
}

/* ---- flp_context_create ---------------------------------------------------------------------- */

typedef struct create_state {
    flp_context_desc desc;
    flp_context *ctx;
} create_state;

static void create_prepare(void *state) {
    create_state *s = state;
    g_log.validation = 0;
    g_log.errors = 0;
    s->ctx = (flp_context *)&g_log; /* poison: must come back NULL */
}

static flp_status create_call(void *state) {
    create_state *s = state;
    return flp_context_create(&s->desc, &s->ctx);
}

/* A failed creation leaves its message in the log only. */
static const char *create_message(void *state) {
    (void)state;
    return g_log.last;
}

static void create_check_failed(void *state) {
    create_state *s = state;
    expect_no_validation_message(NULL, "flp_context_create");
    assert_null(s->ctx);
    if (g_log.errors != 1)
        fail_msg("a failed flp_context_create logged %d errors (want 1): last \"%s\"", g_log.errors,
                 g_log.last);
}

static void create_check_done(void *state) {
    create_state *s = state;
    expect_decode_works(s->ctx, "a context created after failures");
    expect_no_validation_message(s->ctx, "flp_context_create");
    flp_context_destroy(s->ctx);
    expect_no_validation_message(NULL, "flp_context_destroy");
}

/* Walks the creation of a context of kind; returns the sites of a successful one. */
static int64_t walk_context_create(flp_backend_kind kind) {
    create_state s = {.desc = context_desc(kind)};
    const fault_walk fw = {.name = "flp_context_create",
                           .max_sites = WALK_MAX_SITES,
                           .state = &s,
                           .prepare = create_prepare,
                           .call = create_call,
                           .message = create_message,
                           .check_failed = create_check_failed,
                           .check_done = create_check_done};
    return fault_walk_run(&fw);
}

static void test_context_create(void **state) {
    (void)state;
    /* at least: the context, the backend state, instance, device, command pool and buffers, a
     * fence per slot, pipeline layout, the KV append's parameter buffer and memory */
    expect_sites_at_least("flp_context_create (VULKAN)", walk_context_create(FLP_BACKEND_VULKAN),
                          20);
}

static void test_context_create_auto(void **state) {
    (void)state;
    /* AUTO probes a Vulkan GPU first (lavapipe has none: it fails after creating an instance),
     * then any device: running out of memory stops the probing instead of falling through */
    int64_t sites = walk_context_create(FLP_BACKEND_AUTO);
    /* AUTO ends on CUDA where a CUDA device is present (context, stream, ... : a few sites),
     * else on Vulkan (instance, device, pools, pipelines: dozens) */
    flp_context_desc desc = context_desc(FLP_BACKEND_AUTO);
    flp_context *ctx = NULL;
    assert_int_equal(flp_context_create(&desc, &ctx), FLP_OK);
    flp_device_info info;
    assert_int_equal(flp_context_get_info(ctx, &info), FLP_OK);
    flp_context_destroy(ctx);
    expect_sites_at_least("flp_context_create (AUTO)", sites,
                          info.backend == FLP_BACKEND_VULKAN ? 20 : 2);
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
    vk_walk w = {.name = "flp_buffer_create",
                 .call = buffer_call,
                 .check_failed = buffer_failed,
                 .check_done = buffer_done};
    /* the flp_buffer, its Vulkan part, VkBuffer, memory, binding, the texel-buffer list */
    expect_sites_at_least("flp_buffer_create", walk_run(&w), 5);
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
    a->workspace = test_buffer_new(a->ctx, a->workspace_bytes);
    test_buffer_fill(a->ctx, a->workspace, a->workspace_bytes, POISON_BYTE);
}

static void workspace_teardown(attempt *a) {
    flp_buffer_destroy(a->workspace);
}

static void test_plan_create_walk(void **state) {
    (void)state;
    vk_walk w = {.name = "flp_plan_create",
                 .call = plan_call,
                 .check_failed = plan_failed,
                 .check_done = plan_done};
    expect_sites_at_least("flp_plan_create", walk_run(&w), 8); /* the plan, two mirrors, a buffer */
    vk_walk ws = {.name = "flp_plan_create (workspace)",
                  .setup = workspace_setup,
                  .call = plan_call,
                  .check_failed = plan_failed,
                  .check_done = plan_done,
                  .teardown = workspace_teardown};
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
}

static void plan_teardown(attempt *a) {
    flp_plan_destroy(a->plan);
}

static void test_decode_plan(void **state) {
    (void)state;
    vk_walk w = {.name = "flp_decode_plan",
                 .setup = decode_plan_setup,
                 .call = decode_plan_call,
                 .check_failed = decode_plan_failed,
                 .retry = true,
                 .check_done = decode_plan_check,
                 .teardown = plan_teardown};
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
}

static void decode_run_done(attempt *a) {
    expect_reference(a->ctx, a->decode.out, g.decode_ref, Q_ELEMS, "flp_decode_run");
}

static void decode_run_teardown(attempt *a) {
    decode_close(&a->decode);
}

static void test_decode_run(void **state) {
    (void)state;
    vk_walk w = {.name = "flp_decode_run",
                 .setup = decode_run_setup,
                 .call = decode_run_call,
                 .check_failed = decode_run_failed,
                 .retry = true,
                 .check_done = decode_run_done,
                 .teardown = decode_run_teardown};
    /* shader modules and pipelines of the decode and the merge */
    expect_sites_at_least("first flp_decode_run", walk_run(&w), 4);
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
    a->q = test_buffer_new(a->ctx, sizeof g.pf_q);
    a->kv = test_buffer_new(a->ctx, sizeof g.pf_kv);
    a->out = test_buffer_new(a->ctx, sizeof g.pf_q);
    upload(a->ctx, a->q, 0, g.pf_q, sizeof g.pf_q);
    upload(a->ctx, a->kv, 0, g.pf_kv, sizeof g.pf_kv);
    test_buffer_fill(a->ctx, a->out, sizeof g.pf_q, POISON_BYTE);
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
}

static void prefill_teardown(attempt *a) {
    flp_plan_destroy(a->plan);
    flp_buffer_destroy(a->q);
    flp_buffer_destroy(a->kv);
    flp_buffer_destroy(a->out);
}

static void test_prefill_run(void **state) {
    (void)state;
    vk_walk w = {.name = "flp_prefill_run",
                 .setup = prefill_setup,
                 .call = prefill_call,
                 .check_failed = prefill_failed,
                 .retry = true,
                 .check_done = prefill_done,
                 .teardown = prefill_teardown};
    /* shader modules and pipelines of the prefill and the merge */
    expect_sites_at_least("first flp_prefill_run", walk_run(&w), 4);
}

/* ---- the first KV append ------------------------------------------------------------------- */

/* Rows 0..2 go to request 1 at positions 2, 9 and 19: pages 0 (slot 2), 2 (slot 1), 3 (slot
 * 3) of the decode pool. */
static const int32_t append_batch[APPEND_ROWS] = {1, 1, 1}, append_pos[APPEND_ROWS] = {2, 9, 19};

static void append_setup(attempt *a) {
    a->kv = test_buffer_new(a->ctx, 2 * POOL_BYTES);
    upload(a->ctx, a->kv, 0, g.k, POOL_BYTES);
    upload(a->ctx, a->kv, POOL_BYTES, g.v, POOL_BYTES);
    a->q = test_buffer_new(a->ctx, sizeof g.rows);
    upload(a->ctx, a->q, 0, g.rows, sizeof g.rows);
    /* batch_indices, positions, kv_indptr, kv_indices at 16-byte offsets */
    a->idx = test_buffer_new(a->ctx, 256);
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
    uint16_t *want = test_xcalloc(2 * POOL_ELEMS, sizeof *want);
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
}

static void append_teardown(attempt *a) {
    flp_buffer_destroy(a->kv);
    flp_buffer_destroy(a->q);
    flp_buffer_destroy(a->idx);
}

static void test_kv_append(void **state) {
    (void)state;
    vk_walk w = {.name = "flp_kv_append",
                 .setup = append_setup,
                 .call = append_call,
                 .check_failed = append_failed,
                 .retry = true,
                 .check_done = append_done,
                 .teardown = append_teardown};
    expect_sites_at_least("first flp_kv_append", walk_run(&w), 2); /* the module, the pipeline */
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
    /* test_plan_create_walk keeps the name meson filters by (test_util.h has a test_plan_create) */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_context_create),
        cmocka_unit_test(test_context_create_auto),
        cmocka_unit_test(test_buffer_create),
        {"test_plan_create", test_plan_create_walk, NULL, NULL, NULL},
        cmocka_unit_test(test_decode_plan),
        cmocka_unit_test(test_decode_run),
        cmocka_unit_test(test_prefill_run),
        cmocka_unit_test(test_kv_append),
    };
    return cmocka_run_group_tests_name("fault_injection-vulkan", tests, NULL, NULL);
}
