/* flashport-bench-cascade: shared-prefix (cascade) attention against plain batch decode on the
 * same data.
 *
 * usage: flashport-bench-cascade [--backend cuda|vulkan|auto] [--batch B] [--shared S]
 *                                [--groups G --group-len T] [--unique U] [--iters N]
 *                                [--dtype bf16|f16] [--page-ids run|plan]
 * Defaults: B = 64, S = 16384, G = 0 (no middle level), U = 256, 50 iters, bf16, page ids at run
 * time (--page-ids run: every plan gets kv_indices = NULL and each run a device tensor of them;
 * plan: the plans get the host page ids). --shared and --group-len are whole pages (multiples
 * of 16), since plain decode concatenates the parts' pages; B is a multiple of G.
 *
 * B decode requests (one query row each; bf16 or f16 Q/K/V/O, head_dim 128, 32 query heads over
 * 8 KV heads, pages of 16 tokens, NHD) attend to S tokens every request shares, then (G > 0) the
 * T tokens of their group (G groups, each a run of B / G consecutive requests), then U tokens of
 * their own. All of it lives in one K/V pool holding only those pages, in a seeded random order.
 *
 * - cascade: flp_cascade_* with one level per part: level 0 one group of all B rows and level 1
 *   (G > 0) G groups on the prefill kernel, the last level one group per request on the decode
 *   kernel;
 * - decode: flp_decode_* with each request's page list the concatenation of its parts.
 *
 * Both are first checked against the float64 reference on a sample of requests (the first, a
 * middle one and the last); the pool holds a random block repeated (never zero), so the host
 * keeps only that block. Then one line per implementation: the host time of its plan call
 * (median of 21), the time per run (median of 5 batches of --iters runs queued back to back),
 * and on CUDA of the same runs replayed from a CUDA graph (graph_us), with GB/s counting each
 * K/V byte the implementation must read once (cascade: the shared and group K/V once, plus every
 * request's own; decode: every request's full K/V), plus Q and O once. The last line is the
 * ratio of the times, plain decode over cascade. Exits 1 when a check fails, 2 on bad options,
 * 77 when the backend has no device.
 *
 * e.g. flashport-bench-cascade --backend cuda --batch 64 --shared 16384 --unique 256
 *      flashport-bench-cascade --backend vulkan --batch 8 --shared 512 --groups 2 --group-len 256
 *                              --unique 32 --iters 3 */
#include "bench/bench_check.h"
#include "bench/cuda_graph.h"
#include "core/reference.h"
#include "flashport/flashport.h"
#include "tools/host_timing.h"

#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The fixed shape. */
#define NUM_QO_HEADS 32
#define NUM_KV_HEADS 8
#define HEAD_DIM 128
#define PAGE_SIZE 16
#define GQA_GROUP (NUM_QO_HEADS / NUM_KV_HEADS)
#define Q_ROW_ELEMS ((size_t)NUM_QO_HEADS * HEAD_DIM)
#define KV_ROW_ELEMS ((size_t)NUM_KV_HEADS * HEAD_DIM)
#define PAGE_ELEMS ((size_t)PAGE_SIZE * KV_ROW_ELEMS)

/* The pool holds this many random elements repeated (odd, so that pages differ). */
#define BLOCK_ELEMS ((size_t)(1u << 22) + 1u)
/* Requests checked against float64 at most: the first, a middle one, the last. */
#define MAX_CHECKED 3
#define PLAN_SAMPLES 21
#define TIME_SAMPLES 5
/* Most levels this benchmark builds: shared, group, unique. */
#define MAX_LEVELS 3

typedef struct bench_config {
    flp_backend_kind backend;
    int32_t batch;     /* B requests, one query row each */
    int32_t shared;    /* S tokens every request shares (level 0) */
    int32_t groups;    /* G groups of the middle level; 0 = no middle level */
    int32_t group_len; /* T tokens of each group */
    int32_t unique;    /* U tokens of each request's own (the last level) */
    int iters;
    flp_dtype dtype; /* of Q, K, V and O */
    bool page_ids_at_run;
} bench_config;

/* ---- options --------------------------------------------------------------------------- */

/* Prints the message (printf format) and exits 2. */
static _Noreturn void usage_error(const char *format, ...) {
    va_list ap;
    va_start(ap, format);
    vfprintf(stderr, format, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(2);
}

static flp_dtype parse_dtype(const char *s) {
    if (!strcmp(s, "bf16"))
        return FLP_DTYPE_BF16;
    if (!strcmp(s, "f16"))
        return FLP_DTYPE_F16;
    usage_error("--dtype %s: expected bf16 or f16", s);
}

static flp_backend_kind parse_backend(const char *s) {
    if (!strcmp(s, "cuda"))
        return FLP_BACKEND_CUDA;
    if (!strcmp(s, "vulkan"))
        return FLP_BACKEND_VULKAN;
    if (!strcmp(s, "auto"))
        return FLP_BACKEND_AUTO;
    usage_error("--backend %s: expected cuda, vulkan or auto", s);
}

static int32_t parse_count(const char *option, const char *s) {
    char *end;
    long v = strtol(s, &end, 10);
    if (end == s || *end || v < 0 || v > INT32_MAX)
        usage_error("%s %s: expected a count", option, s);
    return (int32_t)v;
}

static void check_config(const bench_config *c) {
    if (c->batch < 1 || c->iters < 1 || c->unique < 1)
        usage_error("--batch, --iters and --unique must be at least 1");
    if (c->shared < PAGE_SIZE || c->shared % PAGE_SIZE)
        usage_error("--shared must be a positive multiple of the page size (16): plain decode "
                    "concatenates whole pages");
    if (c->groups > 0 && (c->group_len < PAGE_SIZE || c->group_len % PAGE_SIZE))
        usage_error("--group-len must be a positive multiple of the page size (16)");
    if (c->groups > 0 && c->batch % c->groups)
        usage_error("--batch must be a multiple of --groups");
    int64_t keys = (int64_t)c->shared + (c->groups ? c->group_len : 0) + c->unique;
    int64_t pages = (int64_t)c->batch * ((keys + PAGE_SIZE - 1) / PAGE_SIZE);
    if (pages > INT32_MAX)
        usage_error("the plain decode batch would hold more than 2^31 - 1 pages");
}

static bench_config parse_args(int argc, char **argv) {
    bench_config c = {.backend = FLP_BACKEND_AUTO,
                      .batch = 64,
                      .shared = 16384,
                      .group_len = 0,
                      .unique = 256,
                      .iters = 50,
                      .dtype = FLP_DTYPE_BF16,
                      .page_ids_at_run = true};
    if (argc % 2 == 0)
        usage_error("%s: every option takes a value", argv[argc - 1]);
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--backend"))
            c.backend = parse_backend(v);
        else if (!strcmp(k, "--batch"))
            c.batch = parse_count(k, v);
        else if (!strcmp(k, "--shared"))
            c.shared = parse_count(k, v);
        else if (!strcmp(k, "--groups"))
            c.groups = parse_count(k, v);
        else if (!strcmp(k, "--group-len"))
            c.group_len = parse_count(k, v);
        else if (!strcmp(k, "--unique"))
            c.unique = parse_count(k, v);
        else if (!strcmp(k, "--iters"))
            c.iters = parse_count(k, v);
        else if (!strcmp(k, "--dtype"))
            c.dtype = parse_dtype(v);
        else if (!strcmp(k, "--page-ids") && (!strcmp(v, "run") || !strcmp(v, "plan")))
            c.page_ids_at_run = !strcmp(v, "run");
        else
            usage_error("unknown option or value: %s %s", k, v);
    }
    check_config(&c);
    return c;
}

/* ---- host memory and random data -------------------------------------------------------- */

static void *xmalloc(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p) {
        fprintf(stderr, "out of host memory (%zu bytes)\n", bytes);
        exit(1);
    }
    return p;
}

static uint64_t rng = 0x243f6a8885a308d3ull;

static uint64_t next_u64(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* Uniform in [-1, 1), never zero (a zeroed page would hide a wrong page id). */
static float nonzero_uniform(void) {
    float x = (float)((double)(next_u64() >> 11) / 9007199254740992.0 * 2.0 - 1.0);
    return x != 0.0f ? x : 0.5f;
}

/* ---- the pool and the page tables ------------------------------------------------------- */

static int32_t pages_for(int32_t tokens) {
    return (tokens + PAGE_SIZE - 1) / PAGE_SIZE;
}

/* The pool's pages in logical order: the shared pages, each group's, each request's own.
 * physical maps a logical page to its pool page id (a seeded permutation). */
typedef struct pool_layout {
    int32_t shared_pages, group_pages, unique_pages; /* pages of one part */
    int32_t num_pages;
    int32_t *physical; /* [num_pages] */
} pool_layout;

static int32_t group_first_page(const pool_layout *p, int32_t g) {
    return p->shared_pages + g * p->group_pages;
}

static int32_t unique_first_page(const pool_layout *p, int32_t groups, int32_t b) {
    return p->shared_pages + groups * p->group_pages + b * p->unique_pages;
}

static pool_layout make_pool_layout(const bench_config *c) {
    pool_layout p = {.shared_pages = pages_for(c->shared),
                     .group_pages = c->groups ? pages_for(c->group_len) : 0,
                     .unique_pages = pages_for(c->unique)};
    int64_t pages = (int64_t)p.shared_pages + (int64_t)c->groups * p.group_pages +
                    (int64_t)c->batch * p.unique_pages;
    if (pages > INT32_MAX)
        usage_error("the pool is too large");
    p.num_pages = (int32_t)pages;
    p.physical = xmalloc(sizeof(int32_t) * (size_t)p.num_pages);
    for (int32_t i = 0; i < p.num_pages; i++)
        p.physical[i] = i;
    for (int32_t i = p.num_pages - 1; i > 0; i--) { /* Fisher-Yates */
        int32_t j = (int32_t)(next_u64() % (uint64_t)(i + 1)), t = p.physical[i];
        p.physical[i] = p.physical[j];
        p.physical[j] = t;
    }
    return p;
}

/* One CSR page table over groups of consecutive query rows: a cascade level, or the plain
 * decode batch (one group per request). The page ids are pool ids. */
typedef struct page_csr {
    int32_t groups;
    int32_t *qo_indptr;  /* [groups + 1] */
    int32_t *kv_indptr;  /* [groups + 1] */
    int32_t *kv_indices; /* [kv_indptr[groups]] */
    int32_t *last;       /* [groups] tokens on each group's last page */
    /* the page ids on the device (--page-ids run) */
    flp_buffer *ids_buf;
    flp_tensor ids;
} page_csr;

static page_csr alloc_csr(int32_t groups, int32_t rows_per_group, int32_t pages_per_group) {
    page_csr t = {.groups = groups};
    t.qo_indptr = xmalloc(sizeof(int32_t) * (size_t)(groups + 1));
    t.kv_indptr = xmalloc(sizeof(int32_t) * (size_t)(groups + 1));
    t.kv_indices = xmalloc(sizeof(int32_t) * (size_t)groups * (size_t)pages_per_group);
    t.last = xmalloc(sizeof(int32_t) * (size_t)groups);
    for (int32_t g = 0; g <= groups; g++) {
        t.qo_indptr[g] = g * rows_per_group;
        t.kv_indptr[g] = g * pages_per_group;
    }
    return t;
}

/* Appends `pages` logical pages from `first` on as pool ids at kv_indices[*at]. */
static void append_pages(const pool_layout *p, int32_t first, int32_t pages, int32_t *kv_indices,
                         int32_t *at) {
    for (int32_t i = 0; i < pages; i++)
        kv_indices[(*at)++] = p->physical[first + i];
}

/* A cascade level of `groups` groups of rows_per_group rows; group i owns `tokens` tokens on
 * the `pages` logical pages from first + i * pages on. */
static page_csr make_level(const pool_layout *p, int32_t groups, int32_t rows_per_group,
                           int32_t first, int32_t pages, int32_t tokens) {
    page_csr t = alloc_csr(groups, rows_per_group, pages);
    int32_t at = 0;
    for (int32_t g = 0; g < groups; g++) {
        append_pages(p, first + g * pages, pages, t.kv_indices, &at);
        t.last[g] = tokens - (pages - 1) * PAGE_SIZE;
    }
    return t;
}

/* The cascade's levels into levels[]; returns how many (2, or 3 with groups). */
static int32_t make_levels(const bench_config *c, const pool_layout *p, page_csr *levels) {
    int32_t n = 0;
    levels[n++] = make_level(p, 1, c->batch, 0, p->shared_pages, c->shared);
    if (c->groups > 0)
        levels[n++] = make_level(p, c->groups, c->batch / c->groups, group_first_page(p, 0),
                                 p->group_pages, c->group_len);
    levels[n++] =
        make_level(p, c->batch, 1, unique_first_page(p, c->groups, 0), p->unique_pages, c->unique);
    return n;
}

/* The plain decode batch: request b's pages are the shared ones, its group's, then its own. */
static page_csr make_decode_table(const bench_config *c, const pool_layout *p) {
    int32_t per_request = p->shared_pages + p->group_pages + p->unique_pages;
    page_csr t = alloc_csr(c->batch, 1, per_request);
    int32_t at = 0;
    for (int32_t b = 0; b < c->batch; b++) {
        append_pages(p, 0, p->shared_pages, t.kv_indices, &at);
        if (c->groups > 0)
            append_pages(p, group_first_page(p, b / (c->batch / c->groups)), p->group_pages,
                         t.kv_indices, &at);
        append_pages(p, unique_first_page(p, c->groups, b), p->unique_pages, t.kv_indices, &at);
        t.last[b] = c->unique - (p->unique_pages - 1) * PAGE_SIZE;
    }
    return t;
}

static void upload_ids(flp_context *ctx, page_csr *t) {
    const int32_t n = t->kv_indptr[t->groups];
    const int64_t shape[1] = {n};
    flp_buffer_desc bd = {sizeof(int32_t) * (size_t)n};
    CHECK(flp_buffer_create(ctx, &bd, &t->ids_buf));
    CHECK(flp_buffer_write(ctx, t->ids_buf, 0, t->kv_indices, bd.size));
    t->ids = flp_tensor_contiguous(t->ids_buf, 0, FLP_DTYPE_I32, 1, shape);
}

static void free_csr(page_csr *t) {
    flp_buffer_destroy(t->ids_buf);
    free(t->qo_indptr);
    free(t->kv_indptr);
    free(t->kv_indices);
    free(t->last);
}

/* ---- device data ------------------------------------------------------------------------ */

/* Q, the K/V pool and the two outputs on the device; Q and the pool's random block as stored
 * (dequantised) on the host. */
typedef struct device_data {
    flp_buffer *q_buf, *k_buf, *v_buf, *cascade_out_buf, *decode_out_buf;
    flp_tensor q, k_cache, v_cache, cascade_out, decode_out;
    float *q_host;            /* [batch, NUM_QO_HEADS, HEAD_DIM] */
    float *k_block, *v_block; /* [min(pool elements, BLOCK_ELEMS)] */
    size_t q_bytes, pool_elems;
} device_data;

static flp_buffer *create_buffer(flp_context *ctx, size_t bytes) {
    flp_buffer *buf;
    flp_buffer_desc bd = {bytes};
    CHECK(flp_buffer_create(ctx, &bd, &buf));
    return buf;
}

/* min(n, block_elems) random non-zero values rounded to dtype, repeated into the n elements of
 * buf (element i holds block[i % block_elems]); returns the block as stored. */
static float *upload_random(flp_context *ctx, flp_buffer *buf, flp_dtype dtype, size_t n,
                            size_t block_elems) {
    const size_t esize = flp_dtype_size(dtype), count = n < block_elems ? n : block_elems;
    float *block = xmalloc(count * sizeof *block);
    void *raw = xmalloc(count * esize);
    for (size_t i = 0; i < count; i++)
        block[i] = nonzero_uniform();
    CHECK(flp_convert_from_f32(dtype, block, raw, count));
    CHECK(flp_convert_to_f32(dtype, raw, block, count));
    for (size_t at = 0; at < n; at += count) {
        size_t len = n - at < count ? n - at : count;
        CHECK(flp_buffer_write(ctx, buf, at * esize, raw, len * esize));
    }
    free(raw);
    return block;
}

static device_data make_device_data(flp_context *ctx, const bench_config *c, const pool_layout *p) {
    device_data d = {0};
    const size_t esize = flp_dtype_size(c->dtype), q_elems = (size_t)c->batch * Q_ROW_ELEMS;
    d.q_bytes = q_elems * esize;
    d.pool_elems = (size_t)p->num_pages * PAGE_ELEMS;
    d.q_buf = create_buffer(ctx, d.q_bytes);
    d.cascade_out_buf = create_buffer(ctx, d.q_bytes);
    d.decode_out_buf = create_buffer(ctx, d.q_bytes);
    d.k_buf = create_buffer(ctx, d.pool_elems * esize);
    d.v_buf = create_buffer(ctx, d.pool_elems * esize);
    d.q_host = upload_random(ctx, d.q_buf, c->dtype, q_elems, q_elems);
    d.k_block = upload_random(ctx, d.k_buf, c->dtype, d.pool_elems, BLOCK_ELEMS);
    d.v_block = upload_random(ctx, d.v_buf, c->dtype, d.pool_elems, BLOCK_ELEMS);
    const int64_t q_shape[3] = {c->batch, NUM_QO_HEADS, HEAD_DIM};
    const int64_t pool_shape[4] = {p->num_pages, PAGE_SIZE, NUM_KV_HEADS, HEAD_DIM};
    d.q = flp_tensor_contiguous(d.q_buf, 0, c->dtype, 3, q_shape);
    d.cascade_out = flp_tensor_contiguous(d.cascade_out_buf, 0, c->dtype, 3, q_shape);
    d.decode_out = flp_tensor_contiguous(d.decode_out_buf, 0, c->dtype, 3, q_shape);
    d.k_cache = flp_tensor_contiguous(d.k_buf, 0, c->dtype, 4, pool_shape);
    d.v_cache = flp_tensor_contiguous(d.v_buf, 0, c->dtype, 4, pool_shape);
    return d;
}

static void free_device_data(device_data *d) {
    flp_buffer_destroy(d->q_buf);
    flp_buffer_destroy(d->k_buf);
    flp_buffer_destroy(d->v_buf);
    flp_buffer_destroy(d->cascade_out_buf);
    flp_buffer_destroy(d->decode_out_buf);
    free(d->q_host);
    free(d->k_block);
    free(d->v_block);
}

/* ---- the two implementations ------------------------------------------------------------- */

static flp_variant make_variant(const bench_config *c) {
    flp_variant v = {.head_dim = HEAD_DIM, .q_dtype = c->dtype, .kv_dtype = c->dtype};
    return v;
}

/* The cascade with its plan and run arguments, as the timed calls take them. */
typedef struct cascade_impl {
    flp_context *ctx;
    flp_cascade *cascade;
    flp_cascade_plan_args plan;
    flp_cascade_run_args run;
} cascade_impl;

static void make_cascade(flp_context *ctx, const bench_config *c, const page_csr *levels,
                         int32_t num_levels, const device_data *d, cascade_impl *out) {
    flp_cascade_desc desc = {.num_levels = num_levels,
                             .max_qo_rows = c->batch,
                             .num_qo_heads = NUM_QO_HEADS,
                             .num_kv_heads = NUM_KV_HEADS,
                             .head_dim = HEAD_DIM};
    cascade_impl impl = {.ctx = ctx};
    impl.plan = (flp_cascade_plan_args){.num_rows = c->batch,
                                        .page_size = PAGE_SIZE,
                                        .kv_layout = FLP_KV_LAYOUT_NHD,
                                        .variant = make_variant(c)};
    impl.run = (flp_cascade_run_args){
        .q = d->q, .k_cache = d->k_cache, .v_cache = d->v_cache, .out = d->cascade_out};
    for (int32_t l = 0; l < num_levels; l++) {
        const page_csr *t = &levels[l];
        desc.levels[l] = (flp_cascade_level_desc){.max_groups = t->groups,
                                                  .max_pages = t->kv_indptr[t->groups],
                                                  .one_row_per_group = l == num_levels - 1};
        impl.plan.levels[l] =
            (flp_cascade_level){.num_groups = t->groups,
                                .qo_indptr = t->qo_indptr,
                                .kv_indptr = t->kv_indptr,
                                .kv_indices = c->page_ids_at_run ? NULL : t->kv_indices,
                                .kv_last_page_len = t->last};
        impl.run.kv_indices[l] = c->page_ids_at_run ? &t->ids : NULL;
    }
    CHECK(flp_cascade_create(ctx, &desc, &impl.cascade));
    *out = impl;
}

static flp_status plan_cascade(void *arg) {
    cascade_impl *impl = arg;
    return flp_cascade_plan(impl->ctx, impl->cascade, &impl->plan);
}

static flp_status run_cascade(void *arg) {
    const cascade_impl *impl = arg;
    return flp_cascade_run(impl->ctx, impl->cascade, &impl->run);
}

/* Plain decode over the concatenated page lists. */
typedef struct decode_impl {
    flp_context *ctx;
    flp_plan *plan;
    flp_decode_plan_args plan_args;
    flp_decode_run_args run;
} decode_impl;

static void make_decode(flp_context *ctx, const bench_config *c, const page_csr *t,
                        const device_data *d, decode_impl *out) {
    flp_plan_desc pd = {.max_batch_size = t->groups,
                        .max_pages = t->kv_indptr[t->groups],
                        .num_qo_heads = NUM_QO_HEADS,
                        .num_kv_heads = NUM_KV_HEADS,
                        .head_dim = HEAD_DIM};
    decode_impl impl = {.ctx = ctx};
    impl.plan_args = (flp_decode_plan_args){.batch_size = t->groups,
                                            .page_size = PAGE_SIZE,
                                            .kv_layout = FLP_KV_LAYOUT_NHD,
                                            .kv_indptr = t->kv_indptr,
                                            .kv_indices = c->page_ids_at_run ? NULL : t->kv_indices,
                                            .kv_last_page_len = t->last,
                                            .variant = make_variant(c)};
    impl.run = (flp_decode_run_args){.q = d->q,
                                     .k_cache = d->k_cache,
                                     .v_cache = d->v_cache,
                                     .out = d->decode_out,
                                     .kv_indices = c->page_ids_at_run ? &t->ids : NULL};
    CHECK(flp_plan_create(ctx, &pd, &impl.plan));
    *out = impl;
}

static flp_status plan_decode(void *arg) {
    decode_impl *impl = arg;
    return flp_decode_plan(impl->ctx, impl->plan, &impl->plan_args);
}

static flp_status run_decode(void *arg) {
    const decode_impl *impl = arg;
    return flp_decode_run(impl->ctx, impl->plan, &impl->run);
}

/* ---- timing ----------------------------------------------------------------------------- */

typedef flp_status (*bench_call)(void *arg);

/* Host seconds of one plan call: the median of PLAN_SAMPLES calls. */
static double plan_seconds(flp_context *ctx, bench_call plan, void *arg) {
    double samples[PLAN_SAMPLES];
    for (int s = 0; s < PLAN_SAMPLES; s++) {
        double t0 = timing_now_seconds();
        CHECK(plan(arg));
        samples[s] = timing_now_seconds() - t0;
    }
    CHECK(flp_context_synchronize(ctx));
    return timing_median(samples, PLAN_SAMPLES);
}

/* Seconds per run: the median of TIME_SAMPLES batches of `iters` runs queued back to back,
 * after one warm-up run. */
static double queued_seconds(flp_context *ctx, int iters, bench_call run, void *arg) {
    CHECK(run(arg));
    CHECK(flp_context_synchronize(ctx));
    double samples[TIME_SAMPLES];
    for (int s = 0; s < TIME_SAMPLES; s++) {
        double t0 = timing_now_seconds();
        for (int i = 0; i < iters; i++)
            CHECK(run(arg));
        CHECK(flp_context_synchronize(ctx));
        samples[s] = (timing_now_seconds() - t0) / iters;
    }
    return timing_median(samples, TIME_SAMPLES);
}

/* Seconds per run of `iters` runs replayed from a CUDA graph; negative when ctx is not CUDA or
 * the capture fails. */
static double graph_seconds(flp_context *ctx, int iters, bench_call run, void *arg) {
    bench_graph *graph = bench_graph_capture(ctx, iters, run, arg);
    double s = graph ? bench_graph_seconds_per_run(graph, TIME_SAMPLES) : -1.0;
    bench_graph_destroy(graph);
    return s;
}

/* ---- correctness ------------------------------------------------------------------------ */

/* The requests checked: the first, a middle one and the last (without repeats). */
static int32_t sample_requests(int32_t batch, int32_t *picked) {
    const int32_t candidates[MAX_CHECKED] = {0, batch / 2, batch - 1};
    int32_t n = 0;
    for (int32_t i = 0; i < MAX_CHECKED; i++) {
        bool seen = false;
        for (int32_t j = 0; j < n; j++)
            seen |= picked[j] == candidates[i];
        if (!seen)
            picked[n++] = candidates[i];
    }
    return n;
}

/* Pool element `at` of one KV head's rows as stored: the block repeated. */
static double pool_value(const float *block, size_t block_elems, size_t at) {
    return block[at % block_elems];
}

/* Keys and values of KV head h for request b's `len` tokens, gathered through its page list in
 * the plain decode table: kd, vd [len, HEAD_DIM]. */
static void gather_head(const device_data *d, const page_csr *full, int32_t b, int32_t h,
                        int32_t len, double *kd, double *vd) {
    const size_t block_elems = d->pool_elems < BLOCK_ELEMS ? d->pool_elems : BLOCK_ELEMS;
    for (int32_t t = 0; t < len; t++) {
        size_t page = (size_t)full->kv_indices[full->kv_indptr[b] + t / PAGE_SIZE];
        size_t base =
            page * PAGE_ELEMS + (size_t)(t % PAGE_SIZE) * KV_ROW_ELEMS + (size_t)h * HEAD_DIM;
        for (size_t e = 0; e < HEAD_DIM; e++) {
            kd[(size_t)t * HEAD_DIM + e] = pool_value(d->k_block, block_elems, base + e);
            vd[(size_t)t * HEAD_DIM + e] = pool_value(d->v_block, block_elems, base + e);
        }
    }
}

/* The float64 attention of request b's query row over its whole key list: ref [Q_ROW_ELEMS].
 * One KV head (and its GQA_GROUP query heads) at a time, so the host holds one head's keys. */
static void reference_row(flp_context *ctx, const device_data *d, const page_csr *full, int32_t b,
                          int32_t len, double *ref) {
    double *kd = xmalloc((size_t)len * HEAD_DIM * sizeof(double));
    double *vd = xmalloc((size_t)len * HEAD_DIM * sizeof(double));
    double qd[GQA_GROUP * HEAD_DIM];
    const int32_t qo[2] = {0, 1}, kv[2] = {0, len};
    for (int32_t h = 0; h < NUM_KV_HEADS; h++) {
        const size_t head_at = (size_t)h * GQA_GROUP * HEAD_DIM;
        for (size_t i = 0; i < GQA_GROUP * HEAD_DIM; i++)
            qd[i] = d->q_host[(size_t)b * Q_ROW_ELEMS + head_at + i];
        gather_head(d, full, b, h, len, kd, vd);
        flp_ref_attention ra = {.batch_size = 1,
                                .num_qo_heads = GQA_GROUP,
                                .num_kv_heads = 1,
                                .head_dim = HEAD_DIM,
                                .qo_indptr = qo,
                                .kv_indptr = kv,
                                .q = qd,
                                .k = kd,
                                .v = vd};
        CHECK(flp_ref_attention_run(&ra, ref + head_at, NULL));
    }
    free(kd);
    free(vd);
}

/* Request b's row of an output read back (o_bits, dtype) against ref; the relative error. */
static double row_error(flp_context *ctx, flp_dtype dtype, const uint16_t *o_bits, int32_t b,
                        const double *ref) {
    float got_f[Q_ROW_ELEMS];
    double got[Q_ROW_ELEMS];
    CHECK(flp_convert_to_f32(dtype, o_bits + (size_t)b * Q_ROW_ELEMS, got_f, Q_ROW_ELEMS));
    for (size_t i = 0; i < Q_ROW_ELEMS; i++)
        got[i] = got_f[i];
    return flp_ref_relative_error(got, ref, Q_ROW_ELEMS);
}

static uint16_t *read_output(flp_context *ctx, const device_data *d, flp_buffer *out) {
    uint16_t *bits = xmalloc(d->q_bytes);
    CHECK(flp_buffer_read(ctx, out, 0, bits, d->q_bytes));
    return bits;
}

/* The largest relative errors of the cascade's and plain decode's outputs (already run) on the
 * sampled requests; returns how many requests were checked. */
static int32_t check_outputs(flp_context *ctx, const bench_config *c, const device_data *d,
                             const page_csr *full, double *cascade_err, double *decode_err) {
    uint16_t *cascade_bits = read_output(ctx, d, d->cascade_out_buf);
    uint16_t *decode_bits = read_output(ctx, d, d->decode_out_buf);
    const int32_t len = c->shared + (c->groups ? c->group_len : 0) + c->unique;
    double *ref = xmalloc(Q_ROW_ELEMS * sizeof(double));
    int32_t picked[MAX_CHECKED], checked = sample_requests(c->batch, picked);
    *cascade_err = *decode_err = 0.0;
    for (int32_t i = 0; i < checked; i++) {
        reference_row(ctx, d, full, picked[i], len, ref);
        double ce = row_error(ctx, c->dtype, cascade_bits, picked[i], ref);
        double de = row_error(ctx, c->dtype, decode_bits, picked[i], ref);
        *cascade_err = ce > *cascade_err ? ce : *cascade_err;
        *decode_err = de > *decode_err ? de : *decode_err;
    }
    free(ref);
    free(cascade_bits);
    free(decode_bits);
    return checked;
}

/* ---- report ----------------------------------------------------------------------------- */

typedef struct impl_result {
    const char *name;
    double plan_s, queued_s, graph_s; /* graph_s < 0: no graph */
    double bytes;                     /* bytes the implementation must move per run */
    double err;
} impl_result;

static void print_header(const bench_config *c, const flp_device_info *info, const pool_layout *p,
                         int32_t num_levels) {
    printf("cascade backend=%s device=\"%s\" B=%d shared=%d groups=%d group_len=%d unique=%d "
           "levels=%d Hq=%d Hkv=%d D=%d page=%d layout=NHD dtype=%s page_ids=%s pool_pages=%d "
           "iters=%d\n",
           info->backend_name, info->device_name, c->batch, c->shared, c->groups,
           c->groups ? c->group_len : 0, c->unique, num_levels, NUM_QO_HEADS, NUM_KV_HEADS,
           HEAD_DIM, PAGE_SIZE, flp_dtype_name(c->dtype), c->page_ids_at_run ? "run" : "plan",
           p->num_pages, c->iters);
}

static void print_result(const impl_result *r, double tol) {
    printf("  %-7s plan_us=%.1f time_us=%.1f GB/s=%.1f", r->name, r->plan_s * 1e6,
           r->queued_s * 1e6, r->bytes / r->queued_s * 1e-9);
    if (r->graph_s > 0)
        printf(" graph_us=%.1f graph_GB/s=%.1f", r->graph_s * 1e6, r->bytes / r->graph_s * 1e-9);
    printf(" max_rel_err=%.1e %s\n", r->err, r->err <= tol ? "ok" : "WRONG");
}

static void print_ratio(const impl_result *cascade, const impl_result *decode) {
    printf("  plain/cascade time=%.2fx", decode->queued_s / cascade->queued_s);
    if (cascade->graph_s > 0 && decode->graph_s > 0)
        printf(" graph=%.2fx", decode->graph_s / cascade->graph_s);
    printf("\n");
}

/* Bytes of K and V one token of the pool holds. */
static double kv_token_bytes(const bench_config *c) {
    return 2.0 * (double)KV_ROW_ELEMS * (double)flp_dtype_size(c->dtype);
}

/* Each K/V byte the cascade reads once: the shared tokens, the groups', every request's own. */
static double cascade_bytes(const bench_config *c, const device_data *d) {
    double tokens =
        (double)c->shared + (double)c->groups * c->group_len + (double)c->batch * c->unique;
    return tokens * kv_token_bytes(c) + 2.0 * (double)d->q_bytes;
}

/* Plain decode reads every request's whole key list. */
static double decode_bytes(const bench_config *c, const device_data *d) {
    double per_request = (double)c->shared + (c->groups ? c->group_len : 0) + c->unique;
    return (double)c->batch * per_request * kv_token_bytes(c) + 2.0 * (double)d->q_bytes;
}

/* ---- main ------------------------------------------------------------------------------- */

int main(int argc, char **argv) {
    const bench_config c = parse_args(argc, argv);
    flp_context *ctx = NULL;
    flp_context_desc cd = {.backend = c.backend};
    flp_status st = flp_context_create(&cd, &ctx);
    if (st != FLP_OK) {
        fprintf(stderr, "no device for this backend: %s\n", flp_status_string(st));
        return 77;
    }
    flp_device_info info;
    CHECK(flp_context_get_info(ctx, &info));

    pool_layout pool = make_pool_layout(&c);
    page_csr levels[MAX_LEVELS];
    const int32_t num_levels = make_levels(&c, &pool, levels);
    page_csr full = make_decode_table(&c, &pool);
    print_header(&c, &info, &pool, num_levels);
    fflush(stdout);
    if (c.page_ids_at_run) {
        for (int32_t l = 0; l < num_levels; l++)
            upload_ids(ctx, &levels[l]);
        upload_ids(ctx, &full);
    }
    device_data d = make_device_data(ctx, &c, &pool);

    cascade_impl cascade;
    decode_impl decode;
    make_cascade(ctx, &c, levels, num_levels, &d, &cascade);
    make_decode(ctx, &c, &full, &d, &decode);
    impl_result cascade_result = {.name = "cascade", .bytes = cascade_bytes(&c, &d)};
    impl_result decode_result = {.name = "decode", .bytes = decode_bytes(&c, &d)};
    cascade_result.plan_s = plan_seconds(ctx, plan_cascade, &cascade);
    decode_result.plan_s = plan_seconds(ctx, plan_decode, &decode);

    CHECK(run_cascade(&cascade));
    CHECK(run_decode(&decode));
    CHECK(flp_context_synchronize(ctx));
    const int32_t checked =
        check_outputs(ctx, &c, &d, &full, &cascade_result.err, &decode_result.err);
    const double tol = c.dtype == FLP_DTYPE_BF16 ? 1.6e-2 : 2e-3;
    printf("  checked=%d requests against float64 (tolerance %.1e)\n", checked, tol);

    cascade_result.queued_s = queued_seconds(ctx, c.iters, run_cascade, &cascade);
    cascade_result.graph_s = graph_seconds(ctx, c.iters, run_cascade, &cascade);
    decode_result.queued_s = queued_seconds(ctx, c.iters, run_decode, &decode);
    decode_result.graph_s = graph_seconds(ctx, c.iters, run_decode, &decode);
    print_result(&cascade_result, tol);
    print_result(&decode_result, tol);
    print_ratio(&cascade_result, &decode_result);

    flp_cascade_destroy(cascade.cascade);
    flp_plan_destroy(decode.plan);
    free_device_data(&d);
    for (int32_t l = 0; l < num_levels; l++)
        free_csr(&levels[l]);
    free_csr(&full);
    free(pool.physical);
    flp_context_destroy(ctx);
    return cascade_result.err <= tol && decode_result.err <= tol ? 0 : 1;
}
