/* flashport-bench-decode: batch decode throughput over a paged KV cache.
 *
 * usage: flashport-bench-decode [--backend cuda|vulkan|auto] [--batch B] [--kv-len N]
 *                               [--lens LENxCOUNT,...] [--qo-heads H] [--kv-heads H]
 *                               [--head-dim D] [--page P] [--dtype bf16|f16]
 *                               [--kv-dtype bf16|f16|e4m3|e5m2] [--iters N] [--copy-gbps X]
 *                               [--decode-kernel auto|vector|matrix] [--page-ids run|plan]
 * --lens gives the request lengths as runs, e.g. 32768x1,512x63 (one request of 32768 keys,
 * then 63 of 512); without it, --batch requests of --kv-len keys. Prints one line per run: the
 * host time of flp_decode_plan (median of 21), the time per run (median of 5 timed batches of
 * --iters runs queued back to back, after one warm-up run), achieved GB/s counting each K/V/Q/O
 * byte once, and the fraction of --copy-gbps (the device's measured copy bandwidth, read + write)
 * when given, and on CUDA the time per run of the same runs replayed from a CUDA graph (graph_us),
 * and the kernel the plan chose (kernel=vector|matrix; --decode-kernel forces one, default auto).
 * --page-ids run (the default) plans with kv_indices = NULL and passes the page table to each
 * run as a device tensor (the serving path: the plan's host time does not grow with the
 * lengths); plan gives the plan the host page ids, which it checks and copies.
 * Results are first checked against the float64 reference on a sample of requests (the
 * longest, the shortest and some between): the cache holds a random block repeated, so the
 * host keeps only that block, and 256 x 16384 fits in host memory. */
#include "bench/bench_check.h"
#include "bench/bench_util.h"
#include "core/reference.h"
#include "flashport/flashport.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The seed of the random data (the cache holds BENCH_BLOCK_ELEMS of them repeated). */
#define SEED 0x9e3779b97f4a7c15ull
/* Requests checked against float64 at most. */
#define MAX_CHECKED 6

typedef struct bench_config {
    flp_backend_kind backend;
    int32_t batch, kv_len, hq, hkv, head_dim, page;
    const char *lens_text; /* --lens, or NULL */
    flp_dtype dtype, kv_dtype;
    int iters;
    double copy_gbps;
    flp_decode_kernel kernel;
    bool page_ids_at_run; /* --page-ids run */
} bench_config;

/* --dtype or --kv-dtype: bf16, f16, e4m3 or e5m2 (--dtype: bf16 or f16, checked later). */
static flp_dtype parse_dtype(const char *s) {
    static const flp_dtype names[] = {FLP_DTYPE_BF16, FLP_DTYPE_F16, FLP_DTYPE_E4M3,
                                      FLP_DTYPE_E5M2};
    flp_dtype dtype = bench_dtype_by_name(s, names, sizeof names / sizeof names[0]);
    if (dtype == FLP_DTYPE_DEFAULT)
        bench_usage_error("unknown dtype %s", s);
    return dtype;
}

static bench_config parse_args(int argc, char **argv) {
    bench_config c = {
        FLP_BACKEND_AUTO,       64,  4096, 32, 8, 128, 16, NULL, FLP_DTYPE_BF16, 0, 50, 0,
        FLP_DECODE_KERNEL_AUTO, true};
    bench_require_values(argc, argv);
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--backend"))
            c.backend = bench_backend_or_auto(v);
        else if (!strcmp(k, "--batch"))
            c.batch = atoi(v);
        else if (!strcmp(k, "--kv-len"))
            c.kv_len = atoi(v);
        else if (!strcmp(k, "--lens"))
            c.lens_text = v;
        else if (!strcmp(k, "--qo-heads"))
            c.hq = atoi(v);
        else if (!strcmp(k, "--kv-heads"))
            c.hkv = atoi(v);
        else if (!strcmp(k, "--head-dim"))
            c.head_dim = atoi(v);
        else if (!strcmp(k, "--page"))
            c.page = atoi(v);
        else if (!strcmp(k, "--dtype"))
            c.dtype = parse_dtype(v);
        else if (!strcmp(k, "--kv-dtype"))
            c.kv_dtype = parse_dtype(v);
        else if (!strcmp(k, "--iters"))
            c.iters = atoi(v);
        else if (!strcmp(k, "--copy-gbps"))
            c.copy_gbps = atof(v);
        else if (!strcmp(k, "--decode-kernel"))
            c.kernel = bench_parse_decode_kernel(v);
        else if (!strcmp(k, "--page-ids") && bench_page_ids_by_name(v, &c.page_ids_at_run))
            continue;
        else
            bench_usage_error("unknown option %s", k);
    }
    if (c.kv_dtype == FLP_DTYPE_DEFAULT)
        c.kv_dtype = c.dtype;
    if (c.dtype != FLP_DTYPE_BF16 && c.dtype != FLP_DTYPE_F16)
        bench_usage_error("--dtype: queries and outputs are bf16 or f16");
    if (c.iters < 1 || c.batch < 1 || c.page < 1)
        bench_usage_error("--iters, --batch and --page must be at least 1");
    return c;
}

/* The request lengths: --lens runs "LENxCOUNT,..." or --batch x --kv-len. */
static int32_t *request_lengths(bench_config *c) {
    if (!c->lens_text) {
        int32_t *lens = malloc(sizeof(int32_t) * (size_t)c->batch);
        for (int32_t b = 0; b < c->batch; b++)
            lens[b] = c->kv_len;
        return lens;
    }
    int32_t *lens = NULL, batch = 0;
    for (const char *at = c->lens_text; *at;) {
        char *end;
        long len = strtol(at, &end, 10), count = 1;
        if (end == at || len < 0 || len > 1L << 30) /* the library's FLP_MAX_KV_LEN */
            bench_usage_error("--lens %s: expected LENxCOUNT,...", c->lens_text);
        at = end;
        if (*at == 'x') {
            count = strtol(at + 1, &end, 10);
            if (end == at + 1 || count < 1 || count > 1 << 20)
                bench_usage_error("--lens %s: bad count", c->lens_text);
            at = end;
        }
        if (batch + count > 1 << 20)
            bench_usage_error("--lens %s: more than %d requests", c->lens_text, 1 << 20);
        int32_t *grown = realloc(lens, sizeof(int32_t) * (size_t)(batch + count));
        if (!grown) {
            fprintf(stderr, "--lens: out of host memory\n");
            exit(1);
        }
        lens = grown;
        for (long i = 0; i < count; i++)
            lens[batch++] = (int32_t)len;
        if (*at == ',')
            at++;
        else if (*at)
            bench_usage_error("--lens %s: unexpected '%c'", c->lens_text, *at);
    }
    if (batch == 0)
        bench_usage_error("--lens %s: no requests", c->lens_text);
    c->batch = batch;
    return lens;
}

/* The plan with its plan and run arguments, as the timed calls (and a CUDA graph) take them. */
typedef struct decode_call {
    flp_context *ctx;
    flp_plan *plan;
    const flp_decode_plan_args *plan_args;
    const flp_decode_run_args *run_args;
} decode_call;

static flp_status plan_decode(void *arg) {
    const decode_call *call = arg;
    return flp_decode_plan(call->ctx, call->plan, call->plan_args);
}

static flp_status run_decode(void *arg) {
    const decode_call *call = arg;
    return flp_decode_run(call->ctx, call->plan, call->run_args);
}

/* The sample checked against float64: the longest and shortest requests and some between. */
static int32_t sample_requests(const int32_t *lens, int32_t batch, int32_t *picked) {
    int32_t longest = 0, shortest = 0;
    for (int32_t b = 1; b < batch; b++) {
        longest = lens[b] > lens[longest] ? b : longest;
        shortest = lens[b] < lens[shortest] ? b : shortest;
    }
    const int32_t candidates[MAX_CHECKED] = {longest, shortest, 0, batch - 1, batch / 2, batch / 3};
    return bench_distinct(candidates, MAX_CHECKED, picked);
}

/* One request's output against the float64 reference; returns the relative error. */
static double check_request(flp_context *ctx, const bench_config *c, int32_t b,
                            const uint16_t *o_bits, const float *q, const float *k_block,
                            const float *v_block, const int32_t *kv_indptr, const int32_t *indices,
                            int32_t len) {
    const size_t row = (size_t)c->hq * c->head_dim, kv_row = (size_t)c->hkv * c->head_dim;
    const size_t tokens = (size_t)len, page_elems = (size_t)c->page * kv_row;
    double *kd = malloc((tokens ? tokens : 1) * kv_row * sizeof(double));
    double *vd = malloc((tokens ? tokens : 1) * kv_row * sizeof(double));
    for (size_t t = 0; t < tokens; t++) {
        size_t page = (size_t)indices[kv_indptr[b] + (int32_t)(t / (size_t)c->page)];
        size_t base = page * page_elems + (t % (size_t)c->page) * kv_row;
        for (size_t e = 0; e < kv_row; e++) {
            kd[t * kv_row + e] = k_block[(base + e) % BENCH_BLOCK_ELEMS];
            vd[t * kv_row + e] = v_block[(base + e) % BENCH_BLOCK_ELEMS];
        }
    }
    double *qd = malloc(row * sizeof(double)), *ref = malloc(row * sizeof(double));
    double *got = malloc(row * sizeof(double));
    float *o_f = malloc(row * sizeof(float));
    CHECK(flp_convert_to_f32(c->dtype, o_bits + (size_t)b * row, o_f, row));
    for (size_t i = 0; i < row; i++) {
        qd[i] = q[(size_t)b * row + i];
        got[i] = o_f[i];
    }
    int32_t qo[2] = {0, 1}, kv[2] = {0, len};
    flp_ref_attention ra = {.batch_size = 1,
                            .num_qo_heads = c->hq,
                            .num_kv_heads = c->hkv,
                            .head_dim = c->head_dim,
                            .qo_indptr = qo,
                            .kv_indptr = kv,
                            .q = qd,
                            .k = kd,
                            .v = vd};
    CHECK(flp_ref_attention_run(&ra, ref, NULL));
    double err = flp_ref_relative_error(got, ref, row);
    free(kd);
    free(vd);
    free(qd);
    free(ref);
    free(got);
    free(o_f);
    return err;
}

int main(int argc, char **argv) {
    bench_config c = parse_args(argc, argv);
    int32_t *lens = request_lengths(&c);
    flp_device_info info;
    flp_context *ctx = bench_open_context(&(flp_context_desc){.backend = c.backend}, &info);

    int32_t *kv_indptr = malloc(sizeof(int32_t) * (size_t)(c.batch + 1));
    int32_t *last = malloc(sizeof(int32_t) * (size_t)c.batch);
    int64_t keys = 0;
    kv_indptr[0] = 0;
    for (int32_t b = 0; b < c.batch; b++) {
        int32_t pages = (int32_t)(((int64_t)lens[b] + c.page - 1) / c.page);
        if ((int64_t)kv_indptr[b] + pages > INT32_MAX)
            bench_usage_error("more than %d pages in the batch", INT32_MAX);
        kv_indptr[b + 1] = kv_indptr[b] + pages;
        last[b] = pages ? lens[b] - (pages - 1) * c.page : 0;
        keys += lens[b];
    }
    int32_t num_pages = kv_indptr[c.batch] > 0 ? kv_indptr[c.batch] : 1;
    int32_t *indices = malloc(sizeof(int32_t) * (size_t)num_pages);
    /* Pages in a scattered order, as in a real pool (a stride coprime with the pool size). */
    int32_t step = num_pages % 7919 == 0 ? 1 : 7919;
    for (int32_t i = 0; i < num_pages; i++)
        indices[i] = (int32_t)(((int64_t)i * step) % num_pages);

    size_t q_elems = (size_t)c.batch * c.hq * c.head_dim;
    size_t cache_elems = (size_t)num_pages * c.page * c.hkv * c.head_dim;
    size_t q_bytes = q_elems * flp_dtype_size(c.dtype);
    size_t cache_bytes = cache_elems * flp_dtype_size(c.kv_dtype);
    flp_buffer *q_buf, *o_buf, *k_buf, *v_buf;
    flp_buffer_desc bd = {q_bytes};
    CHECK(flp_buffer_create(ctx, &bd, &q_buf));
    CHECK(flp_buffer_create(ctx, &bd, &o_buf));
    bd.size = cache_bytes;
    CHECK(flp_buffer_create(ctx, &bd, &k_buf));
    CHECK(flp_buffer_create(ctx, &bd, &v_buf));
    flp_buffer *idx_buf;
    bd.size = sizeof(int32_t) * (size_t)num_pages;
    CHECK(flp_buffer_create(ctx, &bd, &idx_buf));
    CHECK(flp_buffer_write(ctx, idx_buf, 0, indices, bd.size));
    const int64_t idx_shape[1] = {num_pages};
    const flp_tensor idx_tensor = flp_tensor_contiguous(idx_buf, 0, FLP_DTYPE_I32, 1, idx_shape);
    uint64_t rng = SEED;
    float *q = bench_upload_random(ctx, q_buf, c.dtype, q_elems, q_elems, &rng);
    float *k_block =
        bench_upload_random(ctx, k_buf, c.kv_dtype, cache_elems, BENCH_BLOCK_ELEMS, &rng);
    float *v_block =
        bench_upload_random(ctx, v_buf, c.kv_dtype, cache_elems, BENCH_BLOCK_ELEMS, &rng);

    flp_plan *plan;
    flp_plan_desc pd = {.max_batch_size = c.batch,
                        .max_pages = num_pages,
                        .num_qo_heads = c.hq,
                        .num_kv_heads = c.hkv,
                        .head_dim = c.head_dim,
                        .decode_kernel = c.kernel};
    CHECK(flp_plan_create(ctx, &pd, &plan));
    flp_decode_plan_args pa = {
        .batch_size = c.batch,
        .page_size = c.page,
        .kv_indptr = kv_indptr,
        .kv_indices = c.page_ids_at_run ? NULL : indices,
        .kv_last_page_len = last,
        .variant = {.head_dim = c.head_dim, .q_dtype = c.dtype, .kv_dtype = c.kv_dtype}};
    int64_t q_shape[3] = {c.batch, c.hq, c.head_dim};
    int64_t cache_shape[4] = {num_pages, c.page, c.hkv, c.head_dim};
    flp_decode_run_args ra = {
        .q = flp_tensor_contiguous(q_buf, 0, c.dtype, 3, q_shape),
        .k_cache = flp_tensor_contiguous(k_buf, 0, c.kv_dtype, 4, cache_shape),
        .v_cache = flp_tensor_contiguous(v_buf, 0, c.kv_dtype, 4, cache_shape),
        .out = flp_tensor_contiguous(o_buf, 0, c.dtype, 3, q_shape),
        .kv_indices = c.page_ids_at_run ? &idx_tensor : NULL,
    };
    decode_call call = {ctx, plan, &pa, &ra};
    double plan_s = bench_plan_seconds(ctx, plan_decode, &call);
    CHECK(flp_decode_run(ctx, plan, &ra));
    CHECK(flp_context_synchronize(ctx));

    uint16_t *o_bits = malloc(q_bytes);
    CHECK(flp_buffer_read(ctx, o_buf, 0, o_bits, q_bytes));
    int32_t picked[MAX_CHECKED];
    int32_t checked = sample_requests(lens, c.batch, picked);
    double err = 0.0;
    for (int32_t i = 0; i < checked; i++) {
        double e = check_request(ctx, &c, picked[i], o_bits, q, k_block, v_block, kv_indptr,
                                 indices, lens[picked[i]]);
        err = e > err ? e : err;
    }
    double tol = bench_tolerance(c.dtype);
    if (c.kv_dtype == FLP_DTYPE_E4M3 || c.kv_dtype == FLP_DTYPE_E5M2)
        tol = 6e-2;

    double t = bench_queued_seconds(ctx, c.iters, run_decode, &call);
    /* CUDA only: the same runs replayed from a graph (no launch overhead on the host) */
    double graph_s = bench_graph_seconds(ctx, c.iters, run_decode, &call);
    double bytes = (double)keys * c.hkv * c.head_dim * 2.0 * (double)flp_dtype_size(c.kv_dtype) +
                   2.0 * (double)q_bytes;
    double gbps = bytes / t * 1e-9;
    printf("decode backend=%s device=\"%s\" lens=%s B=%d keys=%lld Hq=%d Hkv=%d D=%d page=%d "
           "dtype=%s kv=%s kernel=%s page_ids=%s plan_us=%.1f time_us=%.1f GB/s=%.0f",
           info.backend_name, info.device_name, c.lens_text ? c.lens_text : "uniform", c.batch,
           (long long)keys, c.hq, c.hkv, c.head_dim, c.page, flp_dtype_name(c.dtype),
           flp_dtype_name(c.kv_dtype), bench_decode_kernel_name(plan),
           c.page_ids_at_run ? "run" : "plan", plan_s * 1e6, t * 1e6, gbps);
    if (c.copy_gbps > 0)
        printf(" of_copy=%.2f", gbps / c.copy_gbps);
    if (graph_s > 0)
        printf(" graph_us=%.1f graph_GB/s=%.0f", graph_s * 1e6, bytes / graph_s * 1e-9);
    printf(" checked=%d max_rel_err=%.1e %s\n", checked, err, err <= tol ? "ok" : "WRONG");

    flp_plan_destroy(plan);
    flp_buffer_destroy(q_buf);
    flp_buffer_destroy(o_buf);
    flp_buffer_destroy(k_buf);
    flp_buffer_destroy(v_buf);
    flp_buffer_destroy(idx_buf);
    flp_context_destroy(ctx);
    free(q);
    free(k_block);
    free(v_block);
    free(o_bits);
    free(lens);
    free(kv_indptr);
    free(last);
    free(indices);
    return err <= tol ? 0 : 1;
}
