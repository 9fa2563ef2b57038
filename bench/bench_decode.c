/* flashport-bench-decode: batch decode throughput over a paged KV cache.
 *
 * usage: flashport-bench-decode [--backend cuda|vulkan|auto] [--batch B] [--kv-len N]
 *                               [--qo-heads H] [--kv-heads H] [--head-dim D] [--page P]
 *                               [--dtype bf16|f16] [--kv-dtype bf16|f16|e4m3|e5m2]
 *                               [--iters N] [--copy-gbps X]
 * Prints one line per configuration: time per run (median of 5 timed batches of --iters runs
 * queued back to back), achieved GB/s counting each K/V/Q/O byte once, and the fraction of
 * --copy-gbps (the device's measured copy bandwidth, read + write) when given. Results are
 * first checked against the float64 reference on a few requests. */
#include "bench/bench_check.h"
#include "tools/host_timing.h"
#include "core/reference.h"
#include "flashport/flashport.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct bench_config {
    flp_backend_kind backend;
    int32_t batch, kv_len, hq, hkv, head_dim, page;
    flp_dtype dtype, kv_dtype;
    int iters;
    double copy_gbps;
} bench_config;

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static float uniform(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((double)(rng >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static flp_dtype parse_dtype(const char *s) {
    if (!strcmp(s, "bf16"))
        return FLP_DTYPE_BF16;
    if (!strcmp(s, "f16"))
        return FLP_DTYPE_F16;
    if (!strcmp(s, "e4m3"))
        return FLP_DTYPE_E4M3;
    if (!strcmp(s, "e5m2"))
        return FLP_DTYPE_E5M2;
    fprintf(stderr, "unknown dtype %s\n", s);
    exit(2);
}

static bench_config parse_args(int argc, char **argv) {
    bench_config c = {FLP_BACKEND_AUTO, 64, 4096, 32, 8, 128, 16, FLP_DTYPE_BF16, 0, 50, 0};
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--backend"))
            c.backend = !strcmp(v, "cuda")     ? FLP_BACKEND_CUDA
                        : !strcmp(v, "vulkan") ? FLP_BACKEND_VULKAN
                                               : FLP_BACKEND_AUTO;
        else if (!strcmp(k, "--batch"))
            c.batch = atoi(v);
        else if (!strcmp(k, "--kv-len"))
            c.kv_len = atoi(v);
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
        else {
            fprintf(stderr, "unknown option %s\n", k);
            exit(2);
        }
    }
    if (c.kv_dtype == FLP_DTYPE_DEFAULT)
        c.kv_dtype = c.dtype;
    return c;
}

/* Random device data of dtype; returns the host values as stored (dequantised floats). */
static float *upload_random(flp_context *ctx, flp_buffer *buf, flp_dtype dtype, size_t n) {
    float *f = malloc(n * sizeof *f);
    size_t esize = flp_dtype_size(dtype);
    void *raw = malloc(n * esize);
    for (size_t i = 0; i < n; i++)
        f[i] = uniform();
    CHECK(flp_convert_from_f32(dtype, f, raw, n));
    CHECK(flp_convert_to_f32(dtype, raw, f, n));
    CHECK(flp_buffer_write(ctx, buf, 0, raw, n * esize));
    free(raw);
    return f;
}

/* Compares the first `check` requests with the float64 reference; returns the error. */
static double check_against_reference(flp_context *ctx, const bench_config *c, flp_buffer *o_buf,
                                      const float *q, const float *k, const float *v,
                                      int32_t num_pages, const int32_t *kv_indptr,
                                      const int32_t *indices, const int32_t *last, int32_t check) {
    size_t row = (size_t)c->hq * c->head_dim, kv_row = (size_t)c->hkv * c->head_dim;
    size_t n = (size_t)check * row, tokens = (size_t)check * (size_t)c->kv_len;
    uint16_t *o_bits = malloc(n * 2);
    double *got = malloc(n * sizeof(double)), *ref = malloc(n * sizeof(double));
    double *qd = malloc(n * sizeof(double));
    double *kd = malloc(tokens * kv_row * sizeof(double)),
           *vd = malloc(tokens * kv_row * sizeof(double));
    int32_t *tok = malloc(sizeof(int32_t) * (size_t)(check + 1));
    int32_t *qo = malloc(sizeof(int32_t) * (size_t)(check + 1));
    CHECK(flp_buffer_read(ctx, o_buf, 0, o_bits, n * 2));
    float *o_f = malloc(n * sizeof(float));
    CHECK(flp_convert_to_f32(c->dtype, o_bits, o_f, n));
    for (size_t i = 0; i < n; i++) {
        got[i] = o_f[i];
        qd[i] = q[i];
    }
    for (int32_t b = 0; b <= check; b++)
        qo[b] = b;
    CHECK(flp_ref_gather_paged(check, c->hkv, c->head_dim, c->page, FLP_KV_LAYOUT_NHD, num_pages, k,
                               kv_indptr, indices, last, tok, kd));
    CHECK(flp_ref_gather_paged(check, c->hkv, c->head_dim, c->page, FLP_KV_LAYOUT_NHD, num_pages, v,
                               kv_indptr, indices, last, tok, vd));
    flp_ref_attention ra = {.batch_size = check,
                            .num_qo_heads = c->hq,
                            .num_kv_heads = c->hkv,
                            .head_dim = c->head_dim,
                            .qo_indptr = qo,
                            .kv_indptr = tok,
                            .q = qd,
                            .k = kd,
                            .v = vd};
    CHECK(flp_ref_attention_run(&ra, ref, NULL));
    double err = flp_ref_relative_error(got, ref, n);
    free(o_bits);
    free(o_f);
    free(got);
    free(ref);
    free(qd);
    free(kd);
    free(vd);
    free(tok);
    free(qo);
    return err;
}

int main(int argc, char **argv) {
    bench_config c = parse_args(argc, argv);
    flp_context *ctx = NULL;
    flp_context_desc cd = {.backend = c.backend};
    flp_status st = flp_context_create(&cd, &ctx);
    if (st != FLP_OK) {
        fprintf(stderr, "no device for this backend: %s\n", flp_status_string(st));
        return 77;
    }
    flp_device_info info;
    CHECK(flp_context_get_info(ctx, &info));

    int32_t pages_per_req = (c.kv_len + c.page - 1) / c.page;
    int32_t num_pages = pages_per_req * c.batch;
    int32_t *kv_indptr = malloc(sizeof(int32_t) * (size_t)(c.batch + 1));
    int32_t *last = malloc(sizeof(int32_t) * (size_t)c.batch);
    int32_t *indices = malloc(sizeof(int32_t) * (size_t)num_pages);
    for (int32_t b = 0; b <= c.batch; b++)
        kv_indptr[b] = b * pages_per_req;
    for (int32_t b = 0; b < c.batch; b++)
        last[b] = c.kv_len - (pages_per_req - 1) * c.page;
    /* Pages in a scattered order, as in a real pool (a stride coprime with the pool size). */
    int32_t step = 7919 % num_pages == 0 ? 1 : 7919;
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
    float *q = upload_random(ctx, q_buf, c.dtype, q_elems);
    float *k = upload_random(ctx, k_buf, c.kv_dtype, cache_elems);
    float *v = upload_random(ctx, v_buf, c.kv_dtype, cache_elems);

    flp_plan *plan;
    flp_plan_desc pd = {.max_batch_size = c.batch,
                        .max_pages = num_pages,
                        .num_qo_heads = c.hq,
                        .num_kv_heads = c.hkv,
                        .head_dim = c.head_dim};
    CHECK(flp_plan_create(ctx, &pd, &plan));
    flp_decode_plan_args pa = {
        .batch_size = c.batch,
        .page_size = c.page,
        .kv_indptr = kv_indptr,
        .kv_indices = indices,
        .kv_last_page_len = last,
        .variant = {.head_dim = c.head_dim, .q_dtype = c.dtype, .kv_dtype = c.kv_dtype}};
    CHECK(flp_decode_plan(ctx, plan, &pa));
    int64_t q_shape[3] = {c.batch, c.hq, c.head_dim};
    int64_t cache_shape[4] = {num_pages, c.page, c.hkv, c.head_dim};
    flp_decode_run_args ra = {
        .q = flp_tensor_contiguous(q_buf, 0, c.dtype, 3, q_shape),
        .k_cache = flp_tensor_contiguous(k_buf, 0, c.kv_dtype, 4, cache_shape),
        .v_cache = flp_tensor_contiguous(v_buf, 0, c.kv_dtype, 4, cache_shape),
        .out = flp_tensor_contiguous(o_buf, 0, c.dtype, 3, q_shape),
    };
    CHECK(flp_decode_run(ctx, plan, &ra));
    CHECK(flp_context_synchronize(ctx));
    int32_t check = c.batch; /* every request: a partial check hides unwritten rows */
    double err = check_against_reference(ctx, &c, o_buf, q, k, v, num_pages, kv_indptr, indices,
                                         last, check);
    double tol = c.dtype == FLP_DTYPE_BF16 ? 1.6e-2 : 2e-3;
    if (c.kv_dtype == FLP_DTYPE_E4M3 || c.kv_dtype == FLP_DTYPE_E5M2)
        tol = 6e-2;

    double samples[5];
    for (int s = 0; s < 5; s++) {
        double t0 = timing_now_seconds();
        for (int i = 0; i < c.iters; i++)
            CHECK(flp_decode_run(ctx, plan, &ra));
        CHECK(flp_context_synchronize(ctx));
        samples[s] = (timing_now_seconds() - t0) / c.iters;
    }
    double t = timing_median(samples, 5);
    double bytes =
        (double)c.batch * c.kv_len * c.hkv * c.head_dim * 2.0 * (double)flp_dtype_size(c.kv_dtype) +
        2.0 * (double)q_bytes;
    double gbps = bytes / t * 1e-9;
    printf("decode backend=%s device=\"%s\" B=%d kv_len=%d Hq=%d Hkv=%d D=%d page=%d dtype=%s "
           "kv=%s time_us=%.1f GB/s=%.0f",
           info.backend_name, info.device_name, c.batch, c.kv_len, c.hq, c.hkv, c.head_dim, c.page,
           flp_dtype_name(c.dtype), flp_dtype_name(c.kv_dtype), t * 1e6, gbps);
    if (c.copy_gbps > 0)
        printf(" of_copy=%.2f", gbps / c.copy_gbps);
    printf(" max_rel_err=%.1e %s\n", err, err <= tol ? "ok" : "WRONG");

    flp_plan_destroy(plan);
    flp_buffer_destroy(q_buf);
    flp_buffer_destroy(o_buf);
    flp_buffer_destroy(k_buf);
    flp_buffer_destroy(v_buf);
    flp_context_destroy(ctx);
    free(q);
    free(k);
    free(v);
    free(kv_indptr);
    free(last);
    free(indices);
    return err <= tol ? 0 : 1;
}
