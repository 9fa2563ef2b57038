/* What the benchmarks share (see bench_util.h). */
#include "bench/bench_util.h"

#include "bench/bench_check.h"
#include "bench/cuda_graph.h"
#include "core/reference.h"
#include "tools/host_timing.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- options ------------------------------------------------------------------------------ */

_Noreturn void bench_usage_error(const char *format, ...) {
    va_list ap;
    va_start(ap, format);
    vfprintf(stderr, format, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(2);
}

void bench_require_values(int argc, char **argv) {
    if (argc % 2 == 0)
        bench_usage_error("%s: every option takes a value", argv[argc - 1]);
}

bool bench_backend_by_name(const char *name, flp_backend_kind *kind) {
    static const struct {
        const char *name;
        flp_backend_kind kind;
    } names[] = {
        {"cuda", FLP_BACKEND_CUDA}, {"vulkan", FLP_BACKEND_VULKAN}, {"auto", FLP_BACKEND_AUTO}};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (!strcmp(name, names[i].name)) {
            *kind = names[i].kind;
            return true;
        }
    }
    return false;
}

flp_backend_kind bench_parse_backend(const char *name) {
    flp_backend_kind kind;
    if (!bench_backend_by_name(name, &kind))
        bench_usage_error("--backend %s: expected cuda, vulkan or auto", name);
    return kind;
}

flp_backend_kind bench_backend_or_auto(const char *name) {
    flp_backend_kind kind = FLP_BACKEND_AUTO;
    bench_backend_by_name(name, &kind);
    return kind;
}

flp_dtype bench_dtype_by_name(const char *name, const flp_dtype *allowed, size_t count) {
    for (size_t i = 0; i < count; i++)
        if (!strcmp(name, flp_dtype_name(allowed[i])))
            return allowed[i];
    return FLP_DTYPE_DEFAULT;
}

bool bench_page_ids_by_name(const char *name, bool *at_run) {
    if (strcmp(name, "run") && strcmp(name, "plan"))
        return false;
    *at_run = !strcmp(name, "run");
    return true;
}

int32_t bench_parse_count(const char *option, const char *value) {
    char *end;
    long v = strtol(value, &end, 10);
    if (end == value || *end || v < 0 || v > INT32_MAX)
        bench_usage_error("%s %s: expected a count", option, value);
    return (int32_t)v;
}

/* Parses `value` into the count named `option`; false when no count has that name. */
static bool set_count(const bench_count_option *counts, size_t num_counts, const char *option,
                      const char *value) {
    for (size_t i = 0; i < num_counts; i++) {
        if (!strcmp(option, counts[i].name)) {
            *counts[i].value = bench_parse_count(option, value);
            return true;
        }
    }
    return false;
}

/* --dtype of the fixed-shape benchmarks: bf16 or f16. */
static flp_dtype parse_half_dtype(const char *name) {
    static const flp_dtype half[] = {FLP_DTYPE_BF16, FLP_DTYPE_F16};
    flp_dtype dtype = bench_dtype_by_name(name, half, sizeof half / sizeof half[0]);
    if (dtype == FLP_DTYPE_DEFAULT)
        bench_usage_error("--dtype %s: expected bf16 or f16", name);
    return dtype;
}

/* One OPTION VALUE pair into *o or the counts; false when the option (or its --page-ids value)
 * is unknown. */
static bool parse_paged_option(bench_paged_options *o, const bench_count_option *counts,
                               size_t num_counts, const char *option, const char *value) {
    if (!strcmp(option, "--backend"))
        o->backend = bench_parse_backend(value);
    else if (!strcmp(option, "--dtype"))
        o->dtype = parse_half_dtype(value);
    else if (!strcmp(option, "--page-ids"))
        return bench_page_ids_by_name(value, &o->page_ids_at_run);
    else
        return set_count(counts, num_counts, option, value);
    return true;
}

bench_paged_options bench_parse_paged_options(int argc, char **argv,
                                              const bench_count_option *counts, size_t num_counts) {
    bench_paged_options o = {
        .backend = FLP_BACKEND_AUTO, .dtype = FLP_DTYPE_BF16, .page_ids_at_run = true};
    bench_require_values(argc, argv);
    for (int i = 1; i + 1 < argc; i += 2)
        if (!parse_paged_option(&o, counts, num_counts, argv[i], argv[i + 1]))
            bench_usage_error("unknown option or value: %s %s", argv[i], argv[i + 1]);
    return o;
}

/* ---- the float64 check -------------------------------------------------------------------- */

double bench_tolerance(flp_dtype dtype) {
    if (dtype == FLP_DTYPE_F32)
        return 1e-5;
    return dtype == FLP_DTYPE_BF16 ? 1.6e-2 : 2e-3;
}

int32_t bench_distinct(const int32_t *candidates, int32_t count, int32_t *picked) {
    int32_t n = 0;
    for (int32_t i = 0; i < count; i++) {
        bool seen = false;
        for (int32_t j = 0; j < n; j++)
            seen |= picked[j] == candidates[i];
        if (!seen)
            picked[n++] = candidates[i];
    }
    return n;
}

/* ---- context and timing ------------------------------------------------------------------- */

flp_context *bench_open_context(const flp_context_desc *desc, flp_device_info *info) {
    flp_context *ctx = NULL;
    flp_status st = flp_context_create(desc, &ctx);
    if (st != FLP_OK) {
        fprintf(stderr, "no device for this backend: %s\n", flp_status_string(st));
        exit(77);
    }
    CHECK(flp_context_get_info(ctx, info));
    return ctx;
}

double bench_plan_seconds(flp_context *ctx, bench_call plan, void *arg) {
    double samples[BENCH_PLAN_SAMPLES];
    for (int s = 0; s < BENCH_PLAN_SAMPLES; s++) {
        double t0 = timing_now_seconds();
        CHECK(plan(arg));
        samples[s] = timing_now_seconds() - t0;
    }
    CHECK(flp_context_synchronize(ctx));
    return timing_median(samples, BENCH_PLAN_SAMPLES);
}

double bench_queued_seconds(flp_context *ctx, int iters, bench_call run, void *arg) {
    CHECK(run(arg));
    CHECK(flp_context_synchronize(ctx));
    double samples[BENCH_TIME_SAMPLES];
    for (int s = 0; s < BENCH_TIME_SAMPLES; s++) {
        double t0 = timing_now_seconds();
        for (int i = 0; i < iters; i++)
            CHECK(run(arg));
        CHECK(flp_context_synchronize(ctx));
        samples[s] = (timing_now_seconds() - t0) / iters;
    }
    return timing_median(samples, BENCH_TIME_SAMPLES);
}

double bench_graph_seconds(flp_context *ctx, int iters, bench_call run, void *arg) {
    bench_graph *graph = bench_graph_capture(ctx, iters, run, arg);
    double s = graph ? bench_graph_seconds_per_run(graph, BENCH_TIME_SAMPLES) : -1.0;
    bench_graph_destroy(graph);
    return s;
}

/* ---- host memory and random numbers ------------------------------------------------------- */

void *bench_xmalloc(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p) {
        fprintf(stderr, "out of host memory (%zu bytes)\n", bytes);
        exit(1);
    }
    return p;
}

uint64_t bench_xorshift64(uint64_t *state) {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    return *state;
}

uint64_t bench_splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

float bench_nonzero_uniform(uint64_t *state) {
    float x = (float)((double)(bench_xorshift64(state) >> 11) / 9007199254740992.0 * 2.0 - 1.0);
    return x != 0.0f ? x : 0.5f;
}

int32_t *bench_shuffled_ids(int32_t n, uint64_t *state) {
    int32_t *ids = bench_xmalloc(sizeof(int32_t) * (size_t)n);
    for (int32_t i = 0; i < n; i++)
        ids[i] = i;
    for (int32_t i = n - 1; i > 0; i--) {
        int32_t j = (int32_t)(bench_xorshift64(state) % (uint64_t)(i + 1)), t = ids[i];
        ids[i] = ids[j];
        ids[j] = t;
    }
    return ids;
}

flp_buffer *bench_create_buffer(flp_context *ctx, size_t bytes) {
    flp_buffer *buf;
    flp_buffer_desc bd = {bytes};
    CHECK(flp_buffer_create(ctx, &bd, &buf));
    return buf;
}

float *bench_upload_random(flp_context *ctx, flp_buffer *buf, flp_dtype dtype, size_t n,
                           size_t block_elems, uint64_t *state) {
    const size_t esize = flp_dtype_size(dtype), count = n < block_elems ? n : block_elems;
    float *block = bench_xmalloc(count * sizeof *block);
    void *raw = bench_xmalloc(count * esize);
    for (size_t i = 0; i < count; i++)
        block[i] = bench_nonzero_uniform(state);
    CHECK(flp_convert_from_f32(dtype, block, raw, count));
    CHECK(flp_convert_to_f32(dtype, raw, block, count));
    for (size_t at = 0; at < n; at += count) {
        size_t len = n - at < count ? n - at : count;
        CHECK(flp_buffer_write(ctx, buf, at * esize, raw, len * esize));
    }
    free(raw);
    return block;
}

/* ---- the fixed-shape paged K/V pool (cascade, mixed) -------------------------------------- */

bench_page_table bench_alloc_page_table(int32_t count, int32_t pages) {
    bench_page_table t = {.count = count};
    t.qo_indptr = bench_xmalloc(sizeof(int32_t) * (size_t)(count + 1));
    t.kv_indptr = bench_xmalloc(sizeof(int32_t) * (size_t)(count + 1));
    t.kv_indices = bench_xmalloc(sizeof(int32_t) * (size_t)pages);
    t.last = bench_xmalloc(sizeof(int32_t) * (size_t)count);
    return t;
}

void bench_upload_page_ids(flp_context *ctx, bench_page_table *t) {
    const int32_t n = t->kv_indptr[t->count];
    const int64_t shape[1] = {n};
    t->ids_buf = bench_create_buffer(ctx, sizeof(int32_t) * (size_t)n);
    CHECK(flp_buffer_write(ctx, t->ids_buf, 0, t->kv_indices, sizeof(int32_t) * (size_t)n));
    t->ids = flp_tensor_contiguous(t->ids_buf, 0, FLP_DTYPE_I32, 1, shape);
}

void bench_free_page_table(bench_page_table *t) {
    flp_buffer_destroy(t->ids_buf);
    free(t->qo_indptr);
    free(t->kv_indptr);
    free(t->kv_indices);
    free(t->last);
}

bench_pool_data bench_make_pool_data(flp_context *ctx, flp_dtype dtype, int32_t rows,
                                     int32_t num_pages, uint64_t *state) {
    bench_pool_data d = {0};
    const size_t esize = flp_dtype_size(dtype), q_elems = (size_t)rows * BENCH_Q_ROW_ELEMS;
    d.q_bytes = q_elems * esize;
    d.pool_elems = (size_t)num_pages * BENCH_PAGE_ELEMS;
    d.q_buf = bench_create_buffer(ctx, d.q_bytes);
    d.k_buf = bench_create_buffer(ctx, d.pool_elems * esize);
    d.v_buf = bench_create_buffer(ctx, d.pool_elems * esize);
    d.q_host = bench_upload_random(ctx, d.q_buf, dtype, q_elems, q_elems, state);
    d.k_block = bench_upload_random(ctx, d.k_buf, dtype, d.pool_elems, BENCH_BLOCK_ELEMS, state);
    d.v_block = bench_upload_random(ctx, d.v_buf, dtype, d.pool_elems, BENCH_BLOCK_ELEMS, state);
    const int64_t pool_shape[4] = {num_pages, BENCH_PAGE_SIZE, BENCH_KV_HEADS, BENCH_HEAD_DIM};
    d.q = bench_row_view(d.q_buf, dtype, 0, rows);
    d.k_cache = flp_tensor_contiguous(d.k_buf, 0, dtype, 4, pool_shape);
    d.v_cache = flp_tensor_contiguous(d.v_buf, 0, dtype, 4, pool_shape);
    return d;
}

void bench_free_pool_data(bench_pool_data *d) {
    flp_buffer_destroy(d->q_buf);
    flp_buffer_destroy(d->k_buf);
    flp_buffer_destroy(d->v_buf);
    free(d->q_host);
    free(d->k_block);
    free(d->v_block);
}

flp_tensor bench_row_view(flp_buffer *buf, flp_dtype dtype, int32_t first, int32_t rows) {
    const int64_t shape[3] = {rows, BENCH_QO_HEADS, BENCH_HEAD_DIM};
    const size_t offset = (size_t)first * BENCH_Q_ROW_ELEMS * flp_dtype_size(dtype);
    return flp_tensor_contiguous(buf, offset, dtype, 3, shape);
}

/* Keys and values of KV head h for group g's first `len` tokens, gathered through its page list
 * in t: kd, vd [len, BENCH_HEAD_DIM]. */
static void gather_head(const bench_pool_data *d, const bench_page_table *t, int32_t g, int32_t h,
                        int32_t len, double *kd, double *vd) {
    const size_t block_elems =
        d->pool_elems < BENCH_BLOCK_ELEMS ? d->pool_elems : BENCH_BLOCK_ELEMS;
    for (int32_t i = 0; i < len; i++) {
        size_t page = (size_t)t->kv_indices[t->kv_indptr[g] + i / BENCH_PAGE_SIZE];
        size_t base = page * BENCH_PAGE_ELEMS + (size_t)(i % BENCH_PAGE_SIZE) * BENCH_KV_ROW_ELEMS +
                      (size_t)h * BENCH_HEAD_DIM;
        for (size_t e = 0; e < BENCH_HEAD_DIM; e++) {
            kd[(size_t)i * BENCH_HEAD_DIM + e] = d->k_block[(base + e) % block_elems];
            vd[(size_t)i * BENCH_HEAD_DIM + e] = d->v_block[(base + e) % block_elems];
        }
    }
}

void bench_reference_row(flp_context *ctx, const bench_pool_data *d, const bench_page_table *t,
                         int32_t g, int32_t q_row, int32_t len, double *ref) {
    double *kd = bench_xmalloc((size_t)len * BENCH_HEAD_DIM * sizeof(double));
    double *vd = bench_xmalloc((size_t)len * BENCH_HEAD_DIM * sizeof(double));
    double qd[BENCH_GQA_GROUP * BENCH_HEAD_DIM];
    const int32_t qo[2] = {0, 1}, kv[2] = {0, len};
    for (int32_t h = 0; h < BENCH_KV_HEADS; h++) {
        const size_t head_at = (size_t)h * BENCH_GQA_GROUP * BENCH_HEAD_DIM;
        for (size_t i = 0; i < BENCH_GQA_GROUP * BENCH_HEAD_DIM; i++)
            qd[i] = d->q_host[(size_t)q_row * BENCH_Q_ROW_ELEMS + head_at + i];
        gather_head(d, t, g, h, len, kd, vd);
        flp_ref_attention ra = {.batch_size = 1,
                                .num_qo_heads = BENCH_GQA_GROUP,
                                .num_kv_heads = 1,
                                .head_dim = BENCH_HEAD_DIM,
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

double bench_row_error(flp_context *ctx, flp_dtype dtype, const uint16_t *bits, const double *ref) {
    float got_f[BENCH_Q_ROW_ELEMS];
    double got[BENCH_Q_ROW_ELEMS];
    CHECK(flp_convert_to_f32(dtype, bits, got_f, BENCH_Q_ROW_ELEMS));
    for (size_t i = 0; i < BENCH_Q_ROW_ELEMS; i++)
        got[i] = got_f[i];
    return flp_ref_relative_error(got, ref, BENCH_Q_ROW_ELEMS);
}
