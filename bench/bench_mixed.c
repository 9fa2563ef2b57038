/* flashport-bench-mixed: one mixed serving step (decode requests and prefill chunks in one batch,
 * flp_mixed_plan / flp_mixed_run) against its two halves run apart, on the same data.
 *
 * usage: flashport-bench-mixed [--backend cuda|vulkan|auto] [--decode D] [--decode-len L]
 *                              [--prefill P] [--chunk C] [--cached K] [--iters N]
 *                              [--dtype bf16|f16] [--page-ids run|plan]
 * Defaults: D = 32, L = 4096, P = 4, C = 512, K = 4096, 50 iters, bf16, page ids at run time
 * (--page-ids run: every plan gets kv_indices = NULL and each run a device tensor of them; plan:
 * the plans get the host page ids).
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
/* Query rows checked against float64 at most: two decode requests of one row, two prefill
 * chunks of three rows. */
#define MAX_CHECKED 8
#define PLAN_SAMPLES 21
#define TIME_SAMPLES 5

typedef struct bench_config {
    flp_backend_kind backend;
    int32_t decode;     /* D decode requests, one query row each */
    int32_t decode_len; /* L keys of each decode request */
    int32_t prefill;    /* P prefill chunks */
    int32_t chunk;      /* C new query rows of each chunk */
    int32_t cached;     /* K cached keys before each chunk's rows */
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

static int64_t pages_for(int64_t tokens) {
    return (tokens + PAGE_SIZE - 1) / PAGE_SIZE;
}

static void check_config(const bench_config *c) {
    if (c->decode < 1 || c->decode_len < 1 || c->prefill < 1 || c->chunk < 1 || c->iters < 1)
        usage_error("--decode, --decode-len, --prefill, --chunk and --iters must be at least 1");
    const int64_t kv_len = (int64_t)c->cached + c->chunk;
    const int64_t rows = (int64_t)c->decode + (int64_t)c->prefill * c->chunk;
    const int64_t pages =
        (int64_t)c->decode * pages_for(c->decode_len) + (int64_t)c->prefill * pages_for(kv_len);
    if (kv_len > INT32_MAX || rows > INT32_MAX || pages > INT32_MAX ||
        (int64_t)c->decode + c->prefill > INT32_MAX)
        usage_error("the batch would hold more than 2^31 - 1 keys, rows, pages or requests");
}

static bench_config parse_args(int argc, char **argv) {
    bench_config c = {.backend = FLP_BACKEND_AUTO,
                      .decode = 32,
                      .decode_len = 4096,
                      .prefill = 4,
                      .chunk = 512,
                      .cached = 4096,
                      .iters = 50,
                      .dtype = FLP_DTYPE_BF16,
                      .page_ids_at_run = true};
    if (argc % 2 == 0)
        usage_error("%s: every option takes a value", argv[argc - 1]);
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--backend"))
            c.backend = parse_backend(v);
        else if (!strcmp(k, "--decode"))
            c.decode = parse_count(k, v);
        else if (!strcmp(k, "--decode-len"))
            c.decode_len = parse_count(k, v);
        else if (!strcmp(k, "--prefill"))
            c.prefill = parse_count(k, v);
        else if (!strcmp(k, "--chunk"))
            c.chunk = parse_count(k, v);
        else if (!strcmp(k, "--cached"))
            c.cached = parse_count(k, v);
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

static uint64_t rng = 0x13198a2e03707344ull;

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

static batch_layout make_batch_layout(const bench_config *c) {
    batch_layout b = {.requests = c->decode + c->prefill};
    b.qo_indptr = xmalloc(sizeof(int32_t) * (size_t)(b.requests + 1));
    b.kv_len = xmalloc(sizeof(int32_t) * (size_t)b.requests);
    b.first_page = xmalloc(sizeof(int32_t) * (size_t)(b.requests + 1));
    b.qo_indptr[0] = b.first_page[0] = 0;
    for (int32_t r = 0; r < b.requests; r++) {
        const bool is_decode = r < c->decode;
        b.kv_len[r] = is_decode ? c->decode_len : c->cached + c->chunk;
        b.qo_indptr[r + 1] = b.qo_indptr[r] + (is_decode ? 1 : c->chunk);
        b.first_page[r + 1] = b.first_page[r] + (int32_t)pages_for(b.kv_len[r]);
    }
    b.rows = b.qo_indptr[b.requests];
    b.num_pages = b.first_page[b.requests];
    b.physical = xmalloc(sizeof(int32_t) * (size_t)b.num_pages);
    for (int32_t i = 0; i < b.num_pages; i++)
        b.physical[i] = i;
    for (int32_t i = b.num_pages - 1; i > 0; i--) { /* Fisher-Yates */
        int32_t j = (int32_t)(next_u64() % (uint64_t)(i + 1)), t = b.physical[i];
        b.physical[i] = b.physical[j];
        b.physical[j] = t;
    }
    return b;
}

static void free_batch_layout(batch_layout *b) {
    free(b->qo_indptr);
    free(b->kv_len);
    free(b->first_page);
    free(b->physical);
}

/* The CSR page table of `count` consecutive requests from `first` on, as the plans take it
 * (indptrs from 0, page ids of the pool). */
typedef struct page_table {
    int32_t batch;
    int32_t *qo_indptr;  /* [batch + 1] */
    int32_t *kv_indptr;  /* [batch + 1] */
    int32_t *kv_indices; /* [kv_indptr[batch]] */
    int32_t *last;       /* [batch] tokens on each request's last page */
    /* the page ids on the device (--page-ids run) */
    flp_buffer *ids_buf;
    flp_tensor ids;
} page_table;

static page_table make_table(const batch_layout *b, int32_t first, int32_t count) {
    page_table t = {.batch = count};
    const int32_t row0 = b->qo_indptr[first], page0 = b->first_page[first];
    const int32_t pages = b->first_page[first + count] - page0;
    t.qo_indptr = xmalloc(sizeof(int32_t) * (size_t)(count + 1));
    t.kv_indptr = xmalloc(sizeof(int32_t) * (size_t)(count + 1));
    t.kv_indices = xmalloc(sizeof(int32_t) * (size_t)pages);
    t.last = xmalloc(sizeof(int32_t) * (size_t)count);
    for (int32_t r = 0; r <= count; r++) {
        t.qo_indptr[r] = b->qo_indptr[first + r] - row0;
        t.kv_indptr[r] = b->first_page[first + r] - page0;
    }
    for (int32_t r = 0; r < count; r++) {
        const int32_t len = b->kv_len[first + r];
        t.last[r] = len - (int32_t)(pages_for(len) - 1) * PAGE_SIZE;
    }
    for (int32_t i = 0; i < pages; i++)
        t.kv_indices[i] = b->physical[page0 + i];
    return t;
}

static void upload_ids(flp_context *ctx, page_table *t) {
    const int32_t n = t->kv_indptr[t->batch];
    const int64_t shape[1] = {n};
    flp_buffer_desc bd = {sizeof(int32_t) * (size_t)n};
    CHECK(flp_buffer_create(ctx, &bd, &t->ids_buf));
    CHECK(flp_buffer_write(ctx, t->ids_buf, 0, t->kv_indices, bd.size));
    t->ids = flp_tensor_contiguous(t->ids_buf, 0, FLP_DTYPE_I32, 1, shape);
}

static void free_table(page_table *t) {
    flp_buffer_destroy(t->ids_buf);
    free(t->qo_indptr);
    free(t->kv_indptr);
    free(t->kv_indices);
    free(t->last);
}

/* ---- device data ------------------------------------------------------------------------ */

/* Q, the K/V pool and the two outputs (mixed, separate) on the device, with views of the decode
 * rows and of the prefill rows; Q and the pool's random block as stored (dequantised) on the
 * host. */
typedef struct device_data {
    flp_buffer *q_buf, *k_buf, *v_buf, *mixed_out_buf, *separate_out_buf;
    flp_tensor q, k_cache, v_cache, mixed_out;
    flp_tensor decode_q, decode_out, prefill_q, prefill_out; /* the separate runs' views */
    float *q_host;                                           /* [rows, NUM_QO_HEADS, HEAD_DIM] */
    float *k_block, *v_block;                                /* [min(pool elements, BLOCK_ELEMS)] */
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

/* Rows [first, first + rows) of a [rows, NUM_QO_HEADS, HEAD_DIM] buffer. */
static flp_tensor row_view(flp_buffer *buf, flp_dtype dtype, int32_t first, int32_t rows) {
    const int64_t shape[3] = {rows, NUM_QO_HEADS, HEAD_DIM};
    const size_t offset = (size_t)first * Q_ROW_ELEMS * flp_dtype_size(dtype);
    return flp_tensor_contiguous(buf, offset, dtype, 3, shape);
}

static device_data make_device_data(flp_context *ctx, const bench_config *c,
                                    const batch_layout *b) {
    device_data d = {0};
    const size_t esize = flp_dtype_size(c->dtype), q_elems = (size_t)b->rows * Q_ROW_ELEMS;
    d.q_bytes = q_elems * esize;
    d.pool_elems = (size_t)b->num_pages * PAGE_ELEMS;
    d.q_buf = create_buffer(ctx, d.q_bytes);
    d.mixed_out_buf = create_buffer(ctx, d.q_bytes);
    d.separate_out_buf = create_buffer(ctx, d.q_bytes);
    d.k_buf = create_buffer(ctx, d.pool_elems * esize);
    d.v_buf = create_buffer(ctx, d.pool_elems * esize);
    d.q_host = upload_random(ctx, d.q_buf, c->dtype, q_elems, q_elems);
    d.k_block = upload_random(ctx, d.k_buf, c->dtype, d.pool_elems, BLOCK_ELEMS);
    d.v_block = upload_random(ctx, d.v_buf, c->dtype, d.pool_elems, BLOCK_ELEMS);
    const int64_t pool_shape[4] = {b->num_pages, PAGE_SIZE, NUM_KV_HEADS, HEAD_DIM};
    d.q = row_view(d.q_buf, c->dtype, 0, b->rows);
    d.mixed_out = row_view(d.mixed_out_buf, c->dtype, 0, b->rows);
    d.decode_q = row_view(d.q_buf, c->dtype, 0, c->decode);
    d.decode_out = row_view(d.separate_out_buf, c->dtype, 0, c->decode);
    d.prefill_q = row_view(d.q_buf, c->dtype, c->decode, b->rows - c->decode);
    d.prefill_out = row_view(d.separate_out_buf, c->dtype, c->decode, b->rows - c->decode);
    d.k_cache = flp_tensor_contiguous(d.k_buf, 0, c->dtype, 4, pool_shape);
    d.v_cache = flp_tensor_contiguous(d.v_buf, 0, c->dtype, 4, pool_shape);
    return d;
}

/* Fills both outputs with all-ones bits (NaN in f16 and bf16), so that a row left unwritten
 * fails the check. */
static void poison_outputs(flp_context *ctx, const device_data *d) {
    void *bits = xmalloc(d->q_bytes);
    memset(bits, 0xff, d->q_bytes);
    CHECK(flp_buffer_write(ctx, d->mixed_out_buf, 0, bits, d->q_bytes));
    CHECK(flp_buffer_write(ctx, d->separate_out_buf, 0, bits, d->q_bytes));
    free(bits);
}

static void free_device_data(device_data *d) {
    flp_buffer_destroy(d->q_buf);
    flp_buffer_destroy(d->k_buf);
    flp_buffer_destroy(d->v_buf);
    flp_buffer_destroy(d->mixed_out_buf);
    flp_buffer_destroy(d->separate_out_buf);
    free(d->q_host);
    free(d->k_block);
    free(d->v_block);
}

/* ---- the implementations ---------------------------------------------------------------- */

/* Causal for every request: a decode request's one row sees all its keys either way, and the
 * mixed plan hands its decode requests the same variant. */
static flp_variant make_variant(const bench_config *c) {
    flp_variant v = {
        .head_dim = HEAD_DIM, .q_dtype = c->dtype, .kv_dtype = c->dtype, .mask = FLP_MASK_CAUSAL};
    return v;
}

static flp_plan *create_plan(flp_context *ctx, int32_t max_batch, int32_t max_rows,
                             int32_t max_pages) {
    flp_plan_desc pd = {.max_batch_size = max_batch,
                        .max_pages = max_pages,
                        .max_qo_rows = max_rows,
                        .num_qo_heads = NUM_QO_HEADS,
                        .num_kv_heads = NUM_KV_HEADS,
                        .head_dim = HEAD_DIM};
    flp_plan *plan;
    CHECK(flp_plan_create(ctx, &pd, &plan));
    return plan;
}

/* A paged prefill (or mixed) batch over table t. */
static flp_prefill_plan_args prefill_plan_args(const bench_config *c, const page_table *t) {
    flp_prefill_plan_args a = {.batch_size = t->batch,
                               .qo_indptr = t->qo_indptr,
                               .kv_storage = FLP_KV_PAGED,
                               .kv_indptr = t->kv_indptr,
                               .kv_indices = c->page_ids_at_run ? NULL : t->kv_indices,
                               .kv_last_page_len = t->last,
                               .page_size = PAGE_SIZE,
                               .kv_layout = FLP_KV_LAYOUT_NHD,
                               .variant = make_variant(c)};
    return a;
}

static flp_prefill_run_args prefill_run_args(const bench_config *c, const device_data *d,
                                             const page_table *t, flp_tensor q, flp_tensor out) {
    flp_prefill_run_args r = {.q = q,
                              .k = d->k_cache,
                              .v = d->v_cache,
                              .out = out,
                              .kv_indices = c->page_ids_at_run ? &t->ids : NULL};
    return r;
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

static void make_step(flp_context *ctx, const bench_config *c, const page_table *all,
                      const page_table *dec, const page_table *pre, const device_data *d,
                      step_impl *out) {
    step_impl s = {.ctx = ctx};
    s.mixed = create_plan(ctx, all->batch, all->qo_indptr[all->batch], all->kv_indptr[all->batch]);
    s.decode = create_plan(ctx, dec->batch, 0, dec->kv_indptr[dec->batch]);
    s.prefill =
        create_plan(ctx, pre->batch, pre->qo_indptr[pre->batch], pre->kv_indptr[pre->batch]);
    s.mixed_plan = prefill_plan_args(c, all);
    s.mixed_run = prefill_run_args(c, d, all, d->q, d->mixed_out);
    s.prefill_plan = prefill_plan_args(c, pre);
    s.prefill_run = prefill_run_args(c, d, pre, d->prefill_q, d->prefill_out);
    s.decode_plan =
        (flp_decode_plan_args){.batch_size = dec->batch,
                               .qo_len = 1,
                               .page_size = PAGE_SIZE,
                               .kv_layout = FLP_KV_LAYOUT_NHD,
                               .kv_indptr = dec->kv_indptr,
                               .kv_indices = c->page_ids_at_run ? NULL : dec->kv_indices,
                               .kv_last_page_len = dec->last,
                               .variant = make_variant(c)};
    s.decode_run = (flp_decode_run_args){.q = d->decode_q,
                                         .k_cache = d->k_cache,
                                         .v_cache = d->v_cache,
                                         .out = d->decode_out,
                                         .kv_indices = c->page_ids_at_run ? &dec->ids : NULL};
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

/* Keys and values of KV head h for request r's first `len` tokens, gathered through its page
 * list in the whole batch's table: kd, vd [len, HEAD_DIM]. */
static void gather_head(const device_data *d, const page_table *all, int32_t r, int32_t h,
                        int32_t len, double *kd, double *vd) {
    const size_t block_elems = d->pool_elems < BLOCK_ELEMS ? d->pool_elems : BLOCK_ELEMS;
    for (int32_t t = 0; t < len; t++) {
        size_t page = (size_t)all->kv_indices[all->kv_indptr[r] + t / PAGE_SIZE];
        size_t base =
            page * PAGE_ELEMS + (size_t)(t % PAGE_SIZE) * KV_ROW_ELEMS + (size_t)h * HEAD_DIM;
        for (size_t e = 0; e < HEAD_DIM; e++) {
            kd[(size_t)t * HEAD_DIM + e] = d->k_block[(base + e) % block_elems];
            vd[(size_t)t * HEAD_DIM + e] = d->v_block[(base + e) % block_elems];
        }
    }
}

/* The float64 attention of query row `q_row` (of the whole batch) over the first `len` keys of
 * request r, the keys the causal mask keeps for it: ref [Q_ROW_ELEMS]. One KV head (and its
 * GQA_GROUP query heads) at a time, so the host holds one head's keys. */
static void reference_row(flp_context *ctx, const device_data *d, const page_table *all, int32_t r,
                          int32_t q_row, int32_t len, double *ref) {
    double *kd = xmalloc((size_t)len * HEAD_DIM * sizeof(double));
    double *vd = xmalloc((size_t)len * HEAD_DIM * sizeof(double));
    double qd[GQA_GROUP * HEAD_DIM];
    const int32_t qo[2] = {0, 1}, kv[2] = {0, len};
    for (int32_t h = 0; h < NUM_KV_HEADS; h++) {
        const size_t head_at = (size_t)h * GQA_GROUP * HEAD_DIM;
        for (size_t i = 0; i < GQA_GROUP * HEAD_DIM; i++)
            qd[i] = d->q_host[(size_t)q_row * Q_ROW_ELEMS + head_at + i];
        gather_head(d, all, r, h, len, kd, vd);
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

/* Row q_row of an output buffer read back against ref; the relative error. */
static double row_error(flp_context *ctx, flp_dtype dtype, const flp_buffer *out, int32_t q_row,
                        const double *ref) {
    uint16_t bits[Q_ROW_ELEMS];
    float got_f[Q_ROW_ELEMS];
    double got[Q_ROW_ELEMS];
    CHECK(flp_buffer_read(ctx, out, (size_t)q_row * sizeof bits, bits, sizeof bits));
    CHECK(flp_convert_to_f32(dtype, bits, got_f, Q_ROW_ELEMS));
    for (size_t i = 0; i < Q_ROW_ELEMS; i++)
        got[i] = got_f[i];
    return flp_ref_relative_error(got, ref, Q_ROW_ELEMS);
}

static double max_double(double a, double b) {
    return a > b ? a : b;
}

/* The largest relative errors (already run) of the mixed output and of the separate output's
 * decode and prefill rows on the sampled rows; returns how many rows were checked. */
static int32_t check_outputs(flp_context *ctx, const bench_config *c, const device_data *d,
                             const page_table *all, double *mixed_err, double *decode_err,
                             double *prefill_err) {
    double *ref = xmalloc(Q_ROW_ELEMS * sizeof(double));
    checked_row picked[MAX_CHECKED];
    const int32_t checked = sample_rows(c, picked);
    *mixed_err = *decode_err = *prefill_err = 0.0;
    for (int32_t i = 0; i < checked; i++) {
        const int32_t r = picked[i].request;
        const int32_t q_row = all->qo_indptr[r] + picked[i].row;
        const int32_t qo_len = all->qo_indptr[r + 1] - all->qo_indptr[r];
        const int32_t kv_len =
            (all->kv_indptr[r + 1] - all->kv_indptr[r] - 1) * PAGE_SIZE + all->last[r];
        /* causal: row i sits at kv_len - qo_len + i and keeps the keys up to it */
        reference_row(ctx, d, all, r, q_row, kv_len - qo_len + picked[i].row + 1, ref);
        const double me = row_error(ctx, c->dtype, d->mixed_out_buf, q_row, ref);
        const double se = row_error(ctx, c->dtype, d->separate_out_buf, q_row, ref);
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
           "page_ids=%s pool_pages=%d iters=%d\n",
           info->backend_name, info->device_name, c->decode, c->decode_len, c->prefill, c->chunk,
           c->cached, c->cached + c->chunk, b->requests, b->rows, NUM_QO_HEADS, NUM_KV_HEADS,
           HEAD_DIM, PAGE_SIZE, flp_dtype_name(c->dtype), c->page_ids_at_run ? "run" : "plan",
           b->num_pages, c->iters);
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
    flp_context *ctx = NULL;
    flp_context_desc cd = {.backend = c.backend};
    flp_status st = flp_context_create(&cd, &ctx);
    if (st != FLP_OK) {
        fprintf(stderr, "no device for this backend: %s\n", flp_status_string(st));
        return 77;
    }
    flp_device_info info;
    CHECK(flp_context_get_info(ctx, &info));

    batch_layout batch = make_batch_layout(&c);
    page_table all = make_table(&batch, 0, batch.requests);
    page_table dec = make_table(&batch, 0, c.decode);
    page_table pre = make_table(&batch, c.decode, c.prefill);
    print_header(&c, &info, &batch);
    fflush(stdout);
    if (c.page_ids_at_run) {
        upload_ids(ctx, &all);
        upload_ids(ctx, &dec);
        upload_ids(ctx, &pre);
    }
    device_data d = make_device_data(ctx, &c, &batch);

    step_impl step;
    make_step(ctx, &c, &all, &dec, &pre, &d, &step);
    impl_result mixed = {.name = "mixed"}, decode = {.name = "decode"};
    impl_result prefill = {.name = "prefill"}, both = {.name = "decode+prefill"};
    mixed.plan_s = plan_seconds(ctx, plan_mixed, &step);
    decode.plan_s = plan_seconds(ctx, plan_decode, &step);
    prefill.plan_s = plan_seconds(ctx, plan_prefill, &step);
    both.plan_s = plan_seconds(ctx, plan_separate, &step);
    mixed.kernel = bench_decode_kernel_name(step.mixed);
    decode.kernel = bench_decode_kernel_name(step.decode);

    poison_outputs(ctx, &d);
    CHECK(run_mixed(&step));
    CHECK(run_separate(&step));
    CHECK(flp_context_synchronize(ctx));
    const int32_t checked = check_outputs(ctx, &c, &d, &all, &mixed.err, &decode.err, &prefill.err);
    both.err = max_double(decode.err, prefill.err);
    const double tol = c.dtype == FLP_DTYPE_BF16 ? 1.6e-2 : 2e-3;
    printf("  checked=%d query rows of the first and last decode request and prefill chunk "
           "against float64 (tolerance %.1e)\n",
           checked, tol);

    const struct {
        impl_result *result;
        bench_call run;
    } timed[4] = {
        {&mixed, run_mixed}, {&decode, run_decode}, {&prefill, run_prefill}, {&both, run_separate}};
    for (int i = 0; i < 4; i++) {
        timed[i].result->queued_s = queued_seconds(ctx, c.iters, timed[i].run, &step);
        timed[i].result->graph_s = graph_seconds(ctx, c.iters, timed[i].run, &step);
        print_result(timed[i].result, tol);
        fflush(stdout);
    }
    print_ratio(&mixed, &both);

    free_step(&step);
    free_device_data(&d);
    free_table(&all);
    free_table(&dec);
    free_table(&pre);
    free_batch_layout(&batch);
    flp_context_destroy(ctx);
    return mixed.err <= tol && both.err <= tol ? 0 : 1;
}
