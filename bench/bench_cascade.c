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
#include "bench/bench_util.h"
#include "flashport/flashport.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* The seed of the pool's page order and of the random data. */
#define SEED 0x243f6a8885a308d3ull
/* Requests checked against float64 at most: the first, a middle one, the last. */
#define MAX_CHECKED 3
/* Most levels this benchmark builds: shared, group, unique. */
#define MAX_LEVELS 3

typedef struct bench_config {
    bench_paged_options opt; /* --backend, --dtype (of Q, K, V and O), --page-ids */
    int32_t batch;           /* B requests, one query row each */
    int32_t shared;          /* S tokens every request shares (level 0) */
    int32_t groups;          /* G groups of the middle level; 0 = no middle level */
    int32_t group_len;       /* T tokens of each group */
    int32_t unique;          /* U tokens of each request's own (the last level) */
    int32_t iters;
} bench_config;

/* ---- options --------------------------------------------------------------------------- */

static void check_config(const bench_config *c) {
    if (c->batch < 1 || c->iters < 1 || c->unique < 1)
        bench_usage_error("--batch, --iters and --unique must be at least 1");
    if (c->shared < BENCH_PAGE_SIZE || c->shared % BENCH_PAGE_SIZE)
        bench_usage_error("--shared must be a positive multiple of the page size (16): plain "
                          "decode concatenates whole pages");
    if (c->groups > 0 && (c->group_len < BENCH_PAGE_SIZE || c->group_len % BENCH_PAGE_SIZE))
        bench_usage_error("--group-len must be a positive multiple of the page size (16)");
    if (c->groups > 0 && c->batch % c->groups)
        bench_usage_error("--batch must be a multiple of --groups");
    int64_t keys = (int64_t)c->shared + (c->groups ? c->group_len : 0) + c->unique;
    int64_t pages = (int64_t)c->batch * ((keys + BENCH_PAGE_SIZE - 1) / BENCH_PAGE_SIZE);
    if (pages > INT32_MAX)
        bench_usage_error("the plain decode batch would hold more than 2^31 - 1 pages");
}

static bench_config parse_args(int argc, char **argv) {
    bench_config c = {.batch = 64, .shared = 16384, .group_len = 0, .unique = 256, .iters = 50};
    const bench_count_option counts[] = {{"--batch", &c.batch},   {"--shared", &c.shared},
                                         {"--groups", &c.groups}, {"--group-len", &c.group_len},
                                         {"--unique", &c.unique}, {"--iters", &c.iters}};
    c.opt = bench_parse_paged_options(argc, argv, counts, sizeof counts / sizeof counts[0]);
    check_config(&c);
    return c;
}

/* ---- the pool and the page tables ------------------------------------------------------- */

static int32_t pages_for(int32_t tokens) {
    return (tokens + BENCH_PAGE_SIZE - 1) / BENCH_PAGE_SIZE;
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

static pool_layout make_pool_layout(const bench_config *c, uint64_t *rng) {
    pool_layout p = {.shared_pages = pages_for(c->shared),
                     .group_pages = c->groups ? pages_for(c->group_len) : 0,
                     .unique_pages = pages_for(c->unique)};
    int64_t pages = (int64_t)p.shared_pages + (int64_t)c->groups * p.group_pages +
                    (int64_t)c->batch * p.unique_pages;
    if (pages > INT32_MAX)
        bench_usage_error("the pool is too large");
    p.num_pages = (int32_t)pages;
    p.physical = bench_shuffled_ids(p.num_pages, rng);
    return p;
}

/* A table of `groups` groups of rows_per_group rows and pages_per_group pages each, its page ids
 * and last-page lengths not filled. */
static bench_page_table alloc_table(int32_t groups, int32_t rows_per_group,
                                    int32_t pages_per_group) {
    bench_page_table t = bench_alloc_page_table(groups, groups * pages_per_group);
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
static bench_page_table make_level(const pool_layout *p, int32_t groups, int32_t rows_per_group,
                                   int32_t first, int32_t pages, int32_t tokens) {
    bench_page_table t = alloc_table(groups, rows_per_group, pages);
    int32_t at = 0;
    for (int32_t g = 0; g < groups; g++) {
        append_pages(p, first + g * pages, pages, t.kv_indices, &at);
        t.last[g] = tokens - (pages - 1) * BENCH_PAGE_SIZE;
    }
    return t;
}

/* The cascade's levels into levels[]; returns how many (2, or 3 with groups). */
static int32_t make_levels(const bench_config *c, const pool_layout *p, bench_page_table *levels) {
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
static bench_page_table make_decode_table(const bench_config *c, const pool_layout *p) {
    int32_t per_request = p->shared_pages + p->group_pages + p->unique_pages;
    bench_page_table t = alloc_table(c->batch, 1, per_request);
    int32_t at = 0;
    for (int32_t b = 0; b < c->batch; b++) {
        append_pages(p, 0, p->shared_pages, t.kv_indices, &at);
        if (c->groups > 0)
            append_pages(p, group_first_page(p, b / (c->batch / c->groups)), p->group_pages,
                         t.kv_indices, &at);
        append_pages(p, unique_first_page(p, c->groups, b), p->unique_pages, t.kv_indices, &at);
        t.last[b] = c->unique - (p->unique_pages - 1) * BENCH_PAGE_SIZE;
    }
    return t;
}

/* ---- device data ------------------------------------------------------------------------ */

/* Q and the K/V pool, and the two outputs, on the device. */
typedef struct device_data {
    bench_pool_data in;
    flp_buffer *cascade_out_buf, *decode_out_buf;
    flp_tensor cascade_out, decode_out; /* [batch, BENCH_QO_HEADS, BENCH_HEAD_DIM] */
} device_data;

static device_data make_device_data(flp_context *ctx, const bench_config *c, const pool_layout *p,
                                    uint64_t *rng) {
    device_data d = {.in = bench_make_pool_data(ctx, c->opt.dtype, c->batch, p->num_pages, rng)};
    d.cascade_out_buf = bench_create_buffer(ctx, d.in.q_bytes);
    d.decode_out_buf = bench_create_buffer(ctx, d.in.q_bytes);
    d.cascade_out = bench_row_view(d.cascade_out_buf, c->opt.dtype, 0, c->batch);
    d.decode_out = bench_row_view(d.decode_out_buf, c->opt.dtype, 0, c->batch);
    return d;
}

static void free_device_data(device_data *d) {
    bench_free_pool_data(&d->in);
    flp_buffer_destroy(d->cascade_out_buf);
    flp_buffer_destroy(d->decode_out_buf);
}

/* ---- the two implementations ------------------------------------------------------------- */

static flp_variant make_variant(const bench_config *c) {
    flp_variant v = {.head_dim = BENCH_HEAD_DIM, .q_dtype = c->opt.dtype, .kv_dtype = c->opt.dtype};
    return v;
}

/* The cascade with its plan and run arguments, as the timed calls take them. */
typedef struct cascade_impl {
    flp_context *ctx;
    flp_cascade *cascade;
    flp_cascade_plan_args plan;
    flp_cascade_run_args run;
} cascade_impl;

static void make_cascade(flp_context *ctx, const bench_config *c, const bench_page_table *levels,
                         int32_t num_levels, const device_data *d, cascade_impl *out) {
    const bool ids_at_run = c->opt.page_ids_at_run;
    flp_cascade_desc desc = {.num_levels = num_levels,
                             .max_qo_rows = c->batch,
                             .num_qo_heads = BENCH_QO_HEADS,
                             .num_kv_heads = BENCH_KV_HEADS,
                             .head_dim = BENCH_HEAD_DIM};
    cascade_impl impl = {.ctx = ctx};
    impl.plan = (flp_cascade_plan_args){.num_rows = c->batch,
                                        .page_size = BENCH_PAGE_SIZE,
                                        .kv_layout = FLP_KV_LAYOUT_NHD,
                                        .variant = make_variant(c)};
    impl.run = (flp_cascade_run_args){
        .q = d->in.q, .k_cache = d->in.k_cache, .v_cache = d->in.v_cache, .out = d->cascade_out};
    for (int32_t l = 0; l < num_levels; l++) {
        const bench_page_table *t = &levels[l];
        desc.levels[l] = (flp_cascade_level_desc){.max_groups = t->count,
                                                  .max_pages = t->kv_indptr[t->count],
                                                  .one_row_per_group = l == num_levels - 1};
        impl.plan.levels[l] = (flp_cascade_level){.num_groups = t->count,
                                                  .qo_indptr = t->qo_indptr,
                                                  .kv_indptr = t->kv_indptr,
                                                  .kv_indices = ids_at_run ? NULL : t->kv_indices,
                                                  .kv_last_page_len = t->last};
        impl.run.kv_indices[l] = ids_at_run ? &t->ids : NULL;
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

static void make_decode(flp_context *ctx, const bench_config *c, const bench_page_table *t,
                        const device_data *d, decode_impl *out) {
    const bool ids_at_run = c->opt.page_ids_at_run;
    flp_plan_desc pd = {.max_batch_size = t->count,
                        .max_pages = t->kv_indptr[t->count],
                        .num_qo_heads = BENCH_QO_HEADS,
                        .num_kv_heads = BENCH_KV_HEADS,
                        .head_dim = BENCH_HEAD_DIM};
    decode_impl impl = {.ctx = ctx};
    impl.plan_args = (flp_decode_plan_args){.batch_size = t->count,
                                            .page_size = BENCH_PAGE_SIZE,
                                            .kv_layout = FLP_KV_LAYOUT_NHD,
                                            .kv_indptr = t->kv_indptr,
                                            .kv_indices = ids_at_run ? NULL : t->kv_indices,
                                            .kv_last_page_len = t->last,
                                            .variant = make_variant(c)};
    impl.run = (flp_decode_run_args){.q = d->in.q,
                                     .k_cache = d->in.k_cache,
                                     .v_cache = d->in.v_cache,
                                     .out = d->decode_out,
                                     .kv_indices = ids_at_run ? &t->ids : NULL};
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

/* ---- correctness ------------------------------------------------------------------------ */

static uint16_t *read_output(flp_context *ctx, const device_data *d, flp_buffer *out) {
    uint16_t *bits = bench_xmalloc(d->in.q_bytes);
    CHECK(flp_buffer_read(ctx, out, 0, bits, d->in.q_bytes));
    return bits;
}

/* The largest relative errors of the cascade's and plain decode's outputs (already run) on the
 * sampled requests (the first, a middle one and the last); returns how many were checked. */
static int32_t check_outputs(flp_context *ctx, const bench_config *c, const device_data *d,
                             const bench_page_table *full, double *cascade_err,
                             double *decode_err) {
    uint16_t *cascade_bits = read_output(ctx, d, d->cascade_out_buf);
    uint16_t *decode_bits = read_output(ctx, d, d->decode_out_buf);
    const int32_t len = c->shared + (c->groups ? c->group_len : 0) + c->unique;
    double *ref = bench_xmalloc(BENCH_Q_ROW_ELEMS * sizeof(double));
    const int32_t candidates[MAX_CHECKED] = {0, c->batch / 2, c->batch - 1};
    int32_t picked[MAX_CHECKED], checked = bench_distinct(candidates, MAX_CHECKED, picked);
    *cascade_err = *decode_err = 0.0;
    for (int32_t i = 0; i < checked; i++) {
        const size_t at = (size_t)picked[i] * BENCH_Q_ROW_ELEMS;
        bench_reference_row(ctx, &d->in, full, picked[i], picked[i], len, ref);
        double ce = bench_row_error(ctx, c->opt.dtype, cascade_bits + at, ref);
        double de = bench_row_error(ctx, c->opt.dtype, decode_bits + at, ref);
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
           c->groups ? c->group_len : 0, c->unique, num_levels, BENCH_QO_HEADS, BENCH_KV_HEADS,
           BENCH_HEAD_DIM, BENCH_PAGE_SIZE, flp_dtype_name(c->opt.dtype),
           c->opt.page_ids_at_run ? "run" : "plan", p->num_pages, c->iters);
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
    return 2.0 * (double)BENCH_KV_ROW_ELEMS * (double)flp_dtype_size(c->opt.dtype);
}

/* Each K/V byte the cascade reads once: the shared tokens, the groups', every request's own. */
static double cascade_bytes(const bench_config *c, const device_data *d) {
    double tokens =
        (double)c->shared + (double)c->groups * c->group_len + (double)c->batch * c->unique;
    return tokens * kv_token_bytes(c) + 2.0 * (double)d->in.q_bytes;
}

/* Plain decode reads every request's whole key list. */
static double decode_bytes(const bench_config *c, const device_data *d) {
    double per_request = (double)c->shared + (c->groups ? c->group_len : 0) + c->unique;
    return (double)c->batch * per_request * kv_token_bytes(c) + 2.0 * (double)d->in.q_bytes;
}

/* ---- main ------------------------------------------------------------------------------- */

int main(int argc, char **argv) {
    const bench_config c = parse_args(argc, argv);
    flp_device_info info;
    flp_context *ctx = bench_open_context(&(flp_context_desc){.backend = c.opt.backend}, &info);

    uint64_t rng = SEED;
    pool_layout pool = make_pool_layout(&c, &rng);
    bench_page_table levels[MAX_LEVELS];
    const int32_t num_levels = make_levels(&c, &pool, levels);
    bench_page_table full = make_decode_table(&c, &pool);
    print_header(&c, &info, &pool, num_levels);
    fflush(stdout);
    if (c.opt.page_ids_at_run) {
        for (int32_t l = 0; l < num_levels; l++)
            bench_upload_page_ids(ctx, &levels[l]);
        bench_upload_page_ids(ctx, &full);
    }
    device_data d = make_device_data(ctx, &c, &pool, &rng);

    cascade_impl cascade;
    decode_impl decode;
    make_cascade(ctx, &c, levels, num_levels, &d, &cascade);
    make_decode(ctx, &c, &full, &d, &decode);
    impl_result cascade_result = {.name = "cascade", .bytes = cascade_bytes(&c, &d)};
    impl_result decode_result = {.name = "decode", .bytes = decode_bytes(&c, &d)};
    cascade_result.plan_s = bench_plan_seconds(ctx, plan_cascade, &cascade);
    decode_result.plan_s = bench_plan_seconds(ctx, plan_decode, &decode);

    CHECK(run_cascade(&cascade));
    CHECK(run_decode(&decode));
    CHECK(flp_context_synchronize(ctx));
    const int32_t checked =
        check_outputs(ctx, &c, &d, &full, &cascade_result.err, &decode_result.err);
    const double tol = bench_tolerance(c.opt.dtype);
    printf("  checked=%d requests against float64 (tolerance %.1e)\n", checked, tol);

    cascade_result.queued_s = bench_queued_seconds(ctx, c.iters, run_cascade, &cascade);
    cascade_result.graph_s = bench_graph_seconds(ctx, c.iters, run_cascade, &cascade);
    decode_result.queued_s = bench_queued_seconds(ctx, c.iters, run_decode, &decode);
    decode_result.graph_s = bench_graph_seconds(ctx, c.iters, run_decode, &decode);
    print_result(&cascade_result, tol);
    print_result(&decode_result, tol);
    print_ratio(&cascade_result, &decode_result);

    flp_cascade_destroy(cascade.cascade);
    flp_plan_destroy(decode.plan);
    free_device_data(&d);
    for (int32_t l = 0; l < num_levels; l++)
        bench_free_page_table(&levels[l]);
    bench_free_page_table(&full);
    free(pool.physical);
    flp_context_destroy(ctx);
    return cascade_result.err <= tol && decode_result.err <= tol ? 0 : 1;
}
