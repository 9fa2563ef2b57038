/* flashport-bench-mixed: one mixed serving step (decode requests and prefill chunks in one batch,
 * flp_mixed_plan / flp_mixed_run) against its two halves run apart, on the same data.
 *
 * usage: flashport-bench-mixed [--backend cuda|vulkan|auto] [--decode D] [--decode-len L]
 *                              [--prefill P] [--chunk C] [--cached K] [--iters N]
 *                              [--dtype bf16|f16] [--page-ids run|plan] [--headroom H]
 * Defaults: D = 32, L = 4096, P = 4, C = 512, K = 4096, 50 iters, bf16, page ids at run time
 * (--page-ids run: every plan gets kv_indices = NULL and each run a device tensor of them; plan:
 * the plans get the host page ids), H = 1 (every plan's capacities, requests, rows and pages,
 * are H times what its part of the step needs: a serving engine sizes its plans for its largest
 * step, so a plan's host time must not grow with room the batch leaves unused).
 *
 * The step: D decode requests (one query row each over L keys), then P prefill chunks (C new
 * query rows each over K cached keys and the C new ones: kv_len = K + C, causal). bf16 or f16
 * Q/K/V/O, head_dim 128, 32 query heads over 8 KV heads, pages of 16 tokens, NHD; every
 * request's pages lie in one K/V pool in a seeded random order. (With C = 1 the chunks are
 * one-row requests too, and the mixed plan runs them on the decode kernel.)
 *
 * - mixed: one plan (max_qo_rows = D + P * C, max_batch_size = D + P), flp_mixed_plan over the
 *   whole batch (decode requests first), flp_mixed_run;
 * - decode: the D decode requests through a plan of their own, flp_decode_plan / _run, on views
 *   of the first D rows of Q and of a second output;
 * - prefill: the P chunks through a third plan, flp_prefill_plan / _run over the paged cache,
 *   causal, on views of the rows after them;
 * - decode+prefill: the two separate runs queued back to back (one after the other on one
 *   stream), as a step that does not mix would run them.
 *
 * All of it is first checked against the float64 reference on a sample of query rows (the
 * first and last decode request; the first, middle and last row of the first and last prefill
 * chunk), both outputs poisoned (NaN) beforehand; the pool holds a random block repeated (never
 * zero), so the host keeps only that block. Then one line per implementation: the host time of
 * its plan call (median of 21; decode+prefill: both calls in turn), the time per run (median of 5
 * batches of --iters runs queued back to back), and on CUDA of the same runs replayed from a CUDA
 * graph (graph_us). The last line is the ratio of the times, decode+prefill over mixed. Exits 1
 * when a check fails, 2 on bad options, 77 when the backend has no device.
 *
 * e.g. flashport-bench-mixed --backend cuda
 *      flashport-bench-mixed --backend vulkan --decode 4 --decode-len 256 --prefill 2 --chunk 32
 *                            --cached 64 --iters 2 */
#include "bench/bench_check.h"
#include "bench/bench_util.h"
#include "flashport/flashport.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The seed of the pool's page order and of the random data. */
#define SEED 0x13198a2e03707344ull
/* Query rows checked against float64 at most: two decode requests of one row, two prefill
 * chunks of three rows. */
#define MAX_CHECKED 8

typedef struct bench_config {
    bench_paged_options opt; /* --backend, --dtype (of Q, K, V and O), --page-ids */
    int32_t decode;          /* D decode requests, one query row each */
    int32_t decode_len;      /* L keys of each decode request */
    int32_t prefill;         /* P prefill chunks */
    int32_t chunk;           /* C new query rows of each chunk */
    int32_t cached;          /* K cached keys before each chunk's rows */
    int32_t iters;
    int32_t headroom; /* H: plan capacities over what the step needs */
} bench_config;

/* ---- options --------------------------------------------------------------------------- */

static int64_t pages_for(int64_t tokens) {
    return (tokens + BENCH_PAGE_SIZE - 1) / BENCH_PAGE_SIZE;
}

static void check_config(const bench_config *c) {
    if (c->decode < 1 || c->decode_len < 1 || c->prefill < 1 || c->chunk < 1 || c->iters < 1 ||
        c->headroom < 1)
        bench_usage_error("--decode, --decode-len, --prefill, --chunk, --iters and --headroom must "
                          "be at least 1");
    const int64_t kv_len = (int64_t)c->cached + c->chunk;
    const int64_t rows = (int64_t)c->decode + (int64_t)c->prefill * c->chunk;
    const int64_t pages =
        (int64_t)c->decode * pages_for(c->decode_len) + (int64_t)c->prefill * pages_for(kv_len);
    if (kv_len > INT32_MAX || rows * c->headroom > INT32_MAX || pages * c->headroom > INT32_MAX ||
        ((int64_t)c->decode + c->prefill) * c->headroom > INT32_MAX)
        bench_usage_error("the batch (times --headroom) would hold more than 2^31 - 1 keys, rows, "
                          "pages or requests");
}

static bench_config parse_args(int argc, char **argv) {
    bench_config c = {.decode = 32,
                      .decode_len = 4096,
                      .prefill = 4,
                      .chunk = 512,
                      .cached = 4096,
                      .iters = 50,
                      .headroom = 1};
    const bench_count_option counts[] = {
        {"--decode", &c.decode},    {"--decode-len", &c.decode_len}, {"--prefill", &c.prefill},
        {"--chunk", &c.chunk},      {"--cached", &c.cached},         {"--iters", &c.iters},
        {"--headroom", &c.headroom}};
    c.opt = bench_parse_paged_options(argc, argv, counts, sizeof counts / sizeof counts[0]);
    check_config(&c);
    return c;
}

/* ---- the batch and its page tables ------------------------------------------------------ */

/* The step's requests in batch order (the decode requests, then the prefill chunks) and the
 * pool's pages in logical order (each request's pages in turn). */
typedef struct batch_layout {
    int32_t requests, rows, num_pages;
    int32_t *qo_indptr;  /* [requests + 1] query rows of the whole batch */
    int32_t *kv_len;     /* [requests] keys */
    int32_t *first_page; /* [requests + 1] request r owns logical pages first_page[r] .. [r+1]-1 */
    int32_t *physical;   /* [num_pages] the pool page of each logical page (seeded permutation) */
} batch_layout;

static batch_layout make_batch_layout(const bench_config *c, uint64_t *rng) {
    batch_layout b = {.requests = c->decode + c->prefill};
    b.qo_indptr = bench_xmalloc(sizeof(int32_t) * (size_t)(b.requests + 1));
    b.kv_len = bench_xmalloc(sizeof(int32_t) * (size_t)b.requests);
    b.first_page = bench_xmalloc(sizeof(int32_t) * (size_t)(b.requests + 1));
    b.qo_indptr[0] = b.first_page[0] = 0;
    for (int32_t r = 0; r < b.requests; r++) {
        const bool is_decode = r < c->decode;
        b.kv_len[r] = is_decode ? c->decode_len : c->cached + c->chunk;
        b.qo_indptr[r + 1] = b.qo_indptr[r] + (is_decode ? 1 : c->chunk);
        b.first_page[r + 1] = b.first_page[r] + (int32_t)pages_for(b.kv_len[r]);
    }
    b.rows = b.qo_indptr[b.requests];
    b.num_pages = b.first_page[b.requests];
    b.physical = bench_shuffled_ids(b.num_pages, rng);
    return b;
}

static void free_batch_layout(batch_layout *b) {
    free(b->qo_indptr);
    free(b->kv_len);
    free(b->first_page);
    free(b->physical);
}

/* The page table of `count` consecutive requests from `first` on, as the plans take it (indptrs
 * from 0, page ids of the pool). */
static bench_page_table make_table(const batch_layout *b, int32_t first, int32_t count) {
    const int32_t row0 = b->qo_indptr[first], page0 = b->first_page[first];
    const int32_t pages = b->first_page[first + count] - page0;
    bench_page_table t = bench_alloc_page_table(count, pages);
    for (int32_t r = 0; r <= count; r++) {
        t.qo_indptr[r] = b->qo_indptr[first + r] - row0;
        t.kv_indptr[r] = b->first_page[first + r] - page0;
    }
    for (int32_t r = 0; r < count; r++) {
        const int32_t len = b->kv_len[first + r];
        t.last[r] = len - (int32_t)(pages_for(len) - 1) * BENCH_PAGE_SIZE;
    }
    for (int32_t i = 0; i < pages; i++)
        t.kv_indices[i] = b->physical[page0 + i];
    return t;
}

/* ---- device data ------------------------------------------------------------------------ */

/* Q and the K/V pool, the two outputs (mixed, separate) on the device, and the separate runs'
 * views of the decode rows and of the prefill rows. */
typedef struct device_data {
    bench_pool_data in;
    flp_buffer *mixed_out_buf, *separate_out_buf;
    flp_tensor mixed_out;                                    /* [rows, Hq, D] */
    flp_tensor decode_q, decode_out, prefill_q, prefill_out; /* the separate runs' views */
} device_data;

static device_data make_device_data(flp_context *ctx, const bench_config *c, const batch_layout *b,
                                    uint64_t *rng) {
    const flp_dtype dtype = c->opt.dtype;
    const int32_t prefill_rows = b->rows - c->decode;
    device_data d = {.in = bench_make_pool_data(ctx, dtype, b->rows, b->num_pages, rng)};
    d.mixed_out_buf = bench_create_buffer(ctx, d.in.q_bytes);
    d.separate_out_buf = bench_create_buffer(ctx, d.in.q_bytes);
    d.mixed_out = bench_row_view(d.mixed_out_buf, dtype, 0, b->rows);
    d.decode_q = bench_row_view(d.in.q_buf, dtype, 0, c->decode);
    d.decode_out = bench_row_view(d.separate_out_buf, dtype, 0, c->decode);
    d.prefill_q = bench_row_view(d.in.q_buf, dtype, c->decode, prefill_rows);
    d.prefill_out = bench_row_view(d.separate_out_buf, dtype, c->decode, prefill_rows);
    return d;
}

/* Fills both outputs with all-ones bits (NaN in f16 and bf16), so that a row left unwritten
 * fails the check. */
static void poison_outputs(flp_context *ctx, const device_data *d) {
    void *bits = bench_xmalloc(d->in.q_bytes);
    memset(bits, 0xff, d->in.q_bytes);
    CHECK(flp_buffer_write(ctx, d->mixed_out_buf, 0, bits, d->in.q_bytes));
    CHECK(flp_buffer_write(ctx, d->separate_out_buf, 0, bits, d->in.q_bytes));
    free(bits);
}

static void free_device_data(device_data *d) {
    bench_free_pool_data(&d->in);
    flp_buffer_destroy(d->mixed_out_buf);
    flp_buffer_destroy(d->separate_out_buf);
}

/* ---- the implementations ---------------------------------------------------------------- */

/* Causal for every request: a decode request's one row sees all its keys either way, and the
 * mixed plan hands its decode requests the same variant. */
static flp_variant make_variant(const bench_config *c) {
    flp_variant v = {.head_dim = BENCH_HEAD_DIM,
                     .q_dtype = c->opt.dtype,
                     .kv_dtype = c->opt.dtype,
                     .mask = FLP_MASK_CAUSAL};
    return v;
}

/* A plan for max_batch requests, max_rows query rows and max_pages pages, times headroom. */
static flp_plan *create_plan(flp_context *ctx, int32_t headroom, int32_t max_batch,
                             int32_t max_rows, int32_t max_pages) {
    flp_plan_desc pd = {.max_batch_size = max_batch * headroom,
                        .max_pages = max_pages * headroom,
                        .max_qo_rows = max_rows * headroom,
                        .num_qo_heads = BENCH_QO_HEADS,
                        .num_kv_heads = BENCH_KV_HEADS,
                        .head_dim = BENCH_HEAD_DIM};
    flp_plan *plan;
    CHECK(flp_plan_create(ctx, &pd, &plan));
    return plan;
}

/* A paged prefill (or mixed) batch over table t. */
static flp_prefill_plan_args prefill_plan_args(const bench_config *c, const bench_page_table *t) {
    flp_prefill_plan_args a = {.batch_size = t->count,
                               .qo_indptr = t->qo_indptr,
                               .kv_storage = FLP_KV_PAGED,
                               .kv_indptr = t->kv_indptr,
                               .kv_indices = c->opt.page_ids_at_run ? NULL : t->kv_indices,
                               .kv_last_page_len = t->last,
                               .page_size = BENCH_PAGE_SIZE,
                               .kv_layout = FLP_KV_LAYOUT_NHD,
                               .variant = make_variant(c)};
    return a;
}

static flp_prefill_run_args prefill_run_args(const bench_config *c, const device_data *d,
                                             const bench_page_table *t, flp_tensor q,
                                             flp_tensor out) {
    flp_prefill_run_args r = {.q = q,
                              .k = d->in.k_cache,
                              .v = d->in.v_cache,
                              .out = out,
                              .kv_indices = c->opt.page_ids_at_run ? &t->ids : NULL};
    return r;
}

static flp_decode_plan_args decode_plan_args(const bench_config *c, const bench_page_table *t) {
    flp_decode_plan_args a = {.batch_size = t->count,
                              .qo_len = 1,
                              .page_size = BENCH_PAGE_SIZE,
                              .kv_layout = FLP_KV_LAYOUT_NHD,
                              .kv_indptr = t->kv_indptr,
                              .kv_indices = c->opt.page_ids_at_run ? NULL : t->kv_indices,
                              .kv_last_page_len = t->last,
                              .variant = make_variant(c)};
    return a;
}

/* The three plans with their plan and run arguments, as the timed calls take them. */
typedef struct step_impl {
    flp_context *ctx;
    flp_plan *mixed, *decode, *prefill;
    flp_prefill_plan_args mixed_plan, prefill_plan;
    flp_decode_plan_args decode_plan;
    flp_prefill_run_args mixed_run, prefill_run;
    flp_decode_run_args decode_run;
} step_impl;

static void make_step(flp_context *ctx, const bench_config *c, const bench_page_table *all,
                      const bench_page_table *dec, const bench_page_table *pre,
                      const device_data *d, step_impl *out) {
    step_impl s = {.ctx = ctx};
    const int32_t h = c->headroom;
    s.mixed =
        create_plan(ctx, h, all->count, all->qo_indptr[all->count], all->kv_indptr[all->count]);
    s.decode = create_plan(ctx, h, dec->count, 0, dec->kv_indptr[dec->count]);
    s.prefill =
        create_plan(ctx, h, pre->count, pre->qo_indptr[pre->count], pre->kv_indptr[pre->count]);
    s.mixed_plan = prefill_plan_args(c, all);
    s.mixed_run = prefill_run_args(c, d, all, d->in.q, d->mixed_out);
    s.prefill_plan = prefill_plan_args(c, pre);
    s.prefill_run = prefill_run_args(c, d, pre, d->prefill_q, d->prefill_out);
    s.decode_plan = decode_plan_args(c, dec);
    s.decode_run = (flp_decode_run_args){.q = d->decode_q,
                                         .k_cache = d->in.k_cache,
                                         .v_cache = d->in.v_cache,
                                         .out = d->decode_out,
                                         .kv_indices = c->opt.page_ids_at_run ? &dec->ids : NULL};
    *out = s;
}

static void free_step(step_impl *s) {
    flp_plan_destroy(s->mixed);
    flp_plan_destroy(s->decode);
    flp_plan_destroy(s->prefill);
}

static flp_status plan_mixed(void *arg) {
    step_impl *s = arg;
    return flp_mixed_plan(s->ctx, s->mixed, &s->mixed_plan);
}

static flp_status plan_decode(void *arg) {
    step_impl *s = arg;
    return flp_decode_plan(s->ctx, s->decode, &s->decode_plan);
}

static flp_status plan_prefill(void *arg) {
    step_impl *s = arg;
    return flp_prefill_plan(s->ctx, s->prefill, &s->prefill_plan);
}

static flp_status plan_separate(void *arg) {
    flp_status st = plan_decode(arg);
    return st != FLP_OK ? st : plan_prefill(arg);
}

static flp_status run_mixed(void *arg) {
    const step_impl *s = arg;
    return flp_mixed_run(s->ctx, s->mixed, &s->mixed_run);
}

static flp_status run_decode(void *arg) {
    const step_impl *s = arg;
    return flp_decode_run(s->ctx, s->decode, &s->decode_run);
}

static flp_status run_prefill(void *arg) {
    const step_impl *s = arg;
    return flp_prefill_run(s->ctx, s->prefill, &s->prefill_run);
}

static flp_status run_separate(void *arg) {
    flp_status st = run_decode(arg);
    return st != FLP_OK ? st : run_prefill(arg);
}

/* ---- correctness ------------------------------------------------------------------------ */

/* One query row checked: row `row` of request `request` (0-based within the request). */
typedef struct checked_row {
    int32_t request, row;
} checked_row;

/* Appends (request, row) to picked unless it is there already. */
static void pick(checked_row *picked, int32_t *n, int32_t request, int32_t row) {
    for (int32_t i = 0; i < *n; i++)
        if (picked[i].request == request && picked[i].row == row)
            return;
    picked[(*n)++] = (checked_row){request, row};
}

/* The rows checked: the first and last decode request; the first, middle and last row of the
 * first and last prefill chunk. */
static int32_t sample_rows(const bench_config *c, checked_row *picked) {
    int32_t n = 0;
    const int32_t chunks[2] = {c->decode, c->decode + c->prefill - 1};
    const int32_t rows[3] = {0, c->chunk / 2, c->chunk - 1};
    pick(picked, &n, 0, 0);
    pick(picked, &n, c->decode - 1, 0);
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 3; j++)
            pick(picked, &n, chunks[i], rows[j]);
    return n;
}

/* Row q_row of an output buffer read back against ref; the relative error. */
static double row_error(flp_context *ctx, flp_dtype dtype, const flp_buffer *out, int32_t q_row,
                        const double *ref) {
    uint16_t bits[BENCH_Q_ROW_ELEMS];
    CHECK(flp_buffer_read(ctx, out, (size_t)q_row * sizeof bits, bits, sizeof bits));
    return bench_row_error(ctx, dtype, bits, ref);
}

static double max_double(double a, double b) {
    return a > b ? a : b;
}

/* The largest relative errors (already run) of the mixed output and of the separate output's
 * decode and prefill rows on the sampled rows; returns how many rows were checked. */
static int32_t check_outputs(flp_context *ctx, const bench_config *c, const device_data *d,
                             const bench_page_table *all, double *mixed_err, double *decode_err,
                             double *prefill_err) {
    double *ref = bench_xmalloc(BENCH_Q_ROW_ELEMS * sizeof(double));
    checked_row picked[MAX_CHECKED];
    const int32_t checked = sample_rows(c, picked);
    *mixed_err = *decode_err = *prefill_err = 0.0;
    for (int32_t i = 0; i < checked; i++) {
        const int32_t r = picked[i].request;
        const int32_t q_row = all->qo_indptr[r] + picked[i].row;
        const int32_t qo_len = all->qo_indptr[r + 1] - all->qo_indptr[r];
        const int32_t kv_len =
            (all->kv_indptr[r + 1] - all->kv_indptr[r] - 1) * BENCH_PAGE_SIZE + all->last[r];
        /* causal: row i sits at kv_len - qo_len + i and keeps the keys up to it */
        bench_reference_row(ctx, &d->in, all, r, q_row, kv_len - qo_len + picked[i].row + 1, ref);
        const double me = row_error(ctx, c->opt.dtype, d->mixed_out_buf, q_row, ref);
        const double se = row_error(ctx, c->opt.dtype, d->separate_out_buf, q_row, ref);
        *mixed_err = max_double(*mixed_err, me);
        if (r < c->decode)
            *decode_err = max_double(*decode_err, se);
        else
            *prefill_err = max_double(*prefill_err, se);
    }
    free(ref);
    return checked;
}

/* ---- report ----------------------------------------------------------------------------- */

typedef struct impl_result {
    const char *name;
    double plan_s, queued_s, graph_s; /* graph_s < 0: no graph */
    double err;
    const char *kernel; /* the decode kernel of the plan, or NULL */
} impl_result;

static void print_header(const bench_config *c, const flp_device_info *info,
                         const batch_layout *b) {
    printf("mixed backend=%s device=\"%s\" decode=%dx%d prefill=%dx%d cached=%d kv_len=%d "
           "causal requests=%d rows=%d Hq=%d Hkv=%d D=%d page=%d layout=NHD dtype=%s "
           "page_ids=%s pool_pages=%d iters=%d headroom=%d\n",
           info->backend_name, info->device_name, c->decode, c->decode_len, c->prefill, c->chunk,
           c->cached, c->cached + c->chunk, b->requests, b->rows, BENCH_QO_HEADS, BENCH_KV_HEADS,
           BENCH_HEAD_DIM, BENCH_PAGE_SIZE, flp_dtype_name(c->opt.dtype),
           c->opt.page_ids_at_run ? "run" : "plan", b->num_pages, c->iters, c->headroom);
}

static void print_result(const impl_result *r, double tol) {
    printf("  %-14s plan_us=%.1f time_us=%.1f", r->name, r->plan_s * 1e6, r->queued_s * 1e6);
    if (r->graph_s > 0)
        printf(" graph_us=%.1f", r->graph_s * 1e6);
    printf(" max_rel_err=%.1e %s", r->err, r->err <= tol ? "ok" : "WRONG");
    if (r->kernel)
        printf(" decode_kernel=%s", r->kernel);
    printf("\n");
}

static void print_ratio(const impl_result *mixed, const impl_result *both) {
    printf("  (decode+prefill)/mixed time=%.2fx", both->queued_s / mixed->queued_s);
    if (mixed->graph_s > 0 && both->graph_s > 0)
        printf(" graph=%.2fx", both->graph_s / mixed->graph_s);
    printf(" plan=%.2fx\n", both->plan_s / mixed->plan_s);
}

/* ---- main ------------------------------------------------------------------------------- */

int main(int argc, char **argv) {
    const bench_config c = parse_args(argc, argv);
    flp_device_info info;
    flp_context *ctx = bench_open_context(&(flp_context_desc){.backend = c.opt.backend}, &info);

    uint64_t rng = SEED;
    batch_layout batch = make_batch_layout(&c, &rng);
    bench_page_table all = make_table(&batch, 0, batch.requests);
    bench_page_table dec = make_table(&batch, 0, c.decode);
    bench_page_table pre = make_table(&batch, c.decode, c.prefill);
    print_header(&c, &info, &batch);
    fflush(stdout);
    if (c.opt.page_ids_at_run) {
        bench_upload_page_ids(ctx, &all);
        bench_upload_page_ids(ctx, &dec);
        bench_upload_page_ids(ctx, &pre);
    }
    device_data d = make_device_data(ctx, &c, &batch, &rng);

    step_impl step;
    make_step(ctx, &c, &all, &dec, &pre, &d, &step);
    impl_result mixed = {.name = "mixed"}, decode = {.name = "decode"};
    impl_result prefill = {.name = "prefill"}, both = {.name = "decode+prefill"};
    mixed.plan_s = bench_plan_seconds(ctx, plan_mixed, &step);
    decode.plan_s = bench_plan_seconds(ctx, plan_decode, &step);
    prefill.plan_s = bench_plan_seconds(ctx, plan_prefill, &step);
    both.plan_s = bench_plan_seconds(ctx, plan_separate, &step);
    mixed.kernel = bench_decode_kernel_name(step.mixed);
    decode.kernel = bench_decode_kernel_name(step.decode);

    poison_outputs(ctx, &d);
    CHECK(run_mixed(&step));
    CHECK(run_separate(&step));
    CHECK(flp_context_synchronize(ctx));
    const int32_t checked = check_outputs(ctx, &c, &d, &all, &mixed.err, &decode.err, &prefill.err);
    both.err = max_double(decode.err, prefill.err);
    const double tol = bench_tolerance(c.opt.dtype);
    printf("  checked=%d query rows of the first and last decode request and prefill chunk "
           "against float64 (tolerance %.1e)\n",
           checked, tol);

    const struct {
        impl_result *result;
        bench_call run;
    } timed[4] = {
        {&mixed, run_mixed}, {&decode, run_decode}, {&prefill, run_prefill}, {&both, run_separate}};
    for (int i = 0; i < 4; i++) {
        timed[i].result->queued_s = bench_queued_seconds(ctx, c.iters, timed[i].run, &step);
        timed[i].result->graph_s = bench_graph_seconds(ctx, c.iters, timed[i].run, &step);
        print_result(timed[i].result, tol);
        fflush(stdout);
    }
    print_ratio(&mixed, &both);

    free_step(&step);
    free_device_data(&d);
    bench_free_page_table(&all);
    bench_free_page_table(&dec);
    bench_free_page_table(&pre);
    free_batch_layout(&batch);
    flp_context_destroy(ctx);
    return mixed.err <= tol && both.err <= tol ? 0 : 1;
}
