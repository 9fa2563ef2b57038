/* flashport-bench-merge: the public state merges (flp_merge_state, flp_merge_states) on one
 * backend: time per call and GB/s (every o and lse byte read or written once), after a check of
 * sampled rows against float64.
 *
 *     flashport-bench-merge [--backend auto|cuda|vulkan] [--rows N] [--heads H] [--head-dim D]
 *                           [--states N] [--dtype f16|bf16|f32] [--iters N]
 *
 * Prints one line per operation: merge_state (two states into a third tensor) and merge_states
 * (--states states per row, default 4). Defaults: 8192 rows, 32 heads, D = 128, bf16. */
#include "bench/bench_check.h"
#include "bench/bench_util.h"
#include "core/reference.h"

#include <math.h>

typedef struct merge_config {
    flp_backend_kind backend;
    int32_t rows, heads, dim, states, iters;
    flp_dtype dtype;
} merge_config;

static flp_dtype parse_dtype(const char *s) {
    static const flp_dtype names[] = {FLP_DTYPE_F16, FLP_DTYPE_BF16, FLP_DTYPE_F32};
    flp_dtype dtype = bench_dtype_by_name(s, names, sizeof names / sizeof names[0]);
    if (dtype == FLP_DTYPE_DEFAULT)
        bench_usage_error("--dtype %s: expected f16, bf16 or f32", s);
    return dtype;
}

static merge_config parse_args(int argc, char **argv) {
    merge_config c = {FLP_BACKEND_AUTO, 8192, 32, 128, 4, 20, FLP_DTYPE_BF16};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v)
            bench_usage_error("%s needs a value", a);
        i++;
        if (!strcmp(a, "--backend"))
            c.backend = bench_backend_or_auto(v);
        else if (!strcmp(a, "--rows"))
            c.rows = atoi(v);
        else if (!strcmp(a, "--heads"))
            c.heads = atoi(v);
        else if (!strcmp(a, "--head-dim"))
            c.dim = atoi(v);
        else if (!strcmp(a, "--states"))
            c.states = atoi(v);
        else if (!strcmp(a, "--iters"))
            c.iters = atoi(v);
        else if (!strcmp(a, "--dtype"))
            c.dtype = parse_dtype(v);
        else
            bench_usage_error("unknown option %s", a);
    }
    if (c.rows < 1 || c.heads < 1 || c.dim < 1 || c.states < 1 || c.iters < 1)
        bench_usage_error("--rows, --heads, --head-dim, --states and --iters must be >= 1");
    return c;
}

/* n states of rows x heads x dim: o (dtype) and lse (finite, some -inf) on the device, and their
 * stored values on the host (o_host as f32, lse_host). */
typedef struct states {
    flp_buffer *o_buf, *lse_buf;
    flp_state view;
    float *o_host, *lse_host;
} states;

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

/* Uniform in [0, 1). */
static double next_uniform(void) {
    return (double)(bench_splitmix64(&rng_state) >> 11) / 9007199254740992.0;
}

static states make_states(flp_context *ctx, const merge_config *c, int64_t n) {
    states s;
    const size_t elems = (size_t)n * (size_t)c->heads * (size_t)c->dim;
    const size_t units = (size_t)n * (size_t)c->heads, esize = flp_dtype_size(c->dtype);
    s.o_host = malloc(elems * sizeof(float));
    s.lse_host = malloc(units * sizeof(float));
    void *stored = malloc(elems * esize);
    if (!s.o_host || !s.lse_host || !stored) {
        fprintf(stderr, "out of host memory\n");
        exit(1);
    }
    for (size_t i = 0; i < elems; i++)
        s.o_host[i] = (float)(2.0 * next_uniform() - 1.0);
    CHECK(flp_convert_from_f32(c->dtype, s.o_host, stored, elems));
    CHECK(flp_convert_to_f32(c->dtype, stored, s.o_host, elems));
    for (size_t i = 0; i < units; i++)
        s.lse_host[i] = i % 97 == 5 ? -INFINITY : (float)(40.0 * next_uniform() - 20.0);
    CHECK(flp_buffer_create(ctx, &(flp_buffer_desc){elems * esize}, &s.o_buf));
    CHECK(flp_buffer_create(ctx, &(flp_buffer_desc){units * sizeof(float)}, &s.lse_buf));
    CHECK(flp_buffer_write(ctx, s.o_buf, 0, stored, elems * esize));
    CHECK(flp_buffer_write(ctx, s.lse_buf, 0, s.lse_host, units * sizeof(float)));
    free(stored);
    int64_t o_shape[3] = {n, c->heads, c->dim}, lse_shape[2] = {n, c->heads};
    s.view.o = flp_tensor_contiguous(s.o_buf, 0, c->dtype, 3, o_shape);
    s.view.lse = flp_tensor_contiguous(s.lse_buf, 0, FLP_DTYPE_F32, 2, lse_shape);
    return s;
}

static void free_states(states *s) {
    flp_buffer_destroy(s->o_buf);
    flp_buffer_destroy(s->lse_buf);
    free(s->o_host);
    free(s->lse_host);
}

/* The largest relative error of out's sampled rows against the float64 fold of their states in
 * order: row r of ins[0] .. ins[count - 1] (pair), or rows r count .. r count + count - 1 of
 * ins[0] (ragged). */
static double check_out(flp_context *ctx, const merge_config *c, const states *out,
                        const states *const *ins, int count, bool ragged) {
    const size_t esize = flp_dtype_size(c->dtype), row = (size_t)c->heads * (size_t)c->dim;
    void *bits = malloc(row * esize);
    float *got = malloc(row * sizeof(float));
    double *want = malloc((size_t)c->dim * sizeof(double)),
           *o = malloc((size_t)c->dim * sizeof(double));
    double worst = 0.0;
    for (int32_t r = 0; r < c->rows; r += c->rows / 7 + 1) {
        CHECK(flp_buffer_read(ctx, out->o_buf, row * esize * (size_t)r, bits, row * esize));
        CHECK(flp_convert_to_f32(c->dtype, bits, got, row));
        for (int32_t h = 0; h < c->heads; h++) {
            double s = -INFINITY;
            for (int32_t d = 0; d < c->dim; d++)
                want[d] = 0.0;
            for (int k = 0; k < count; k++) {
                const states *in = ragged ? ins[0] : ins[k];
                const int64_t at = ragged ? (int64_t)r * count + k : (int64_t)r;
                const size_t unit = (size_t)at * (size_t)c->heads + (size_t)h;
                for (int32_t d = 0; d < c->dim; d++)
                    o[d] = in->o_host[unit * (size_t)c->dim + (size_t)d];
                flp_ref_merge_state(c->dim, want, s, o, in->lse_host[unit], want, &s);
            }
            double num = 0.0, den = 0.0;
            for (int32_t d = 0; d < c->dim; d++) {
                const double e =
                    fabs((double)got[(size_t)h * (size_t)c->dim + (size_t)d] - want[d]);
                num = e > num ? e : num;
                den = fabs(want[d]) > den ? fabs(want[d]) : den;
            }
            const double rel = den > 0.0 ? num / den : num;
            worst = rel > worst ? rel : worst;
        }
    }
    free(bits);
    free(got);
    free(want);
    free(o);
    return worst;
}

/* One merge call's context and arguments, as the timed calls take them. */
typedef struct merge_call {
    flp_context *ctx;
    const void *args; /* flp_merge_state_args or flp_merge_states_args */
} merge_call;

static flp_status call_pair(void *arg) {
    const merge_call *m = arg;
    flp_context *ctx = m->ctx;
    CHECK(flp_merge_state(ctx, m->args));
    return FLP_OK;
}

static flp_status call_ragged(void *arg) {
    const merge_call *m = arg;
    flp_context *ctx = m->ctx;
    CHECK(flp_merge_states(ctx, m->args));
    return FLP_OK;
}

static void report(const char *op, const flp_device_info *info, const merge_config *c,
                   int states_per_row, double seconds, double bytes, double err) {
    const double tol = bench_tolerance(c->dtype);
    printf("merge op=%s backend=%s device=\"%s\" rows=%d heads=%d D=%d dtype=%s states=%d "
           "time_us=%.1f GB/s=%.0f max_rel_err=%.1e %s\n",
           op, info->backend_name, info->device_name, c->rows, c->heads, c->dim,
           flp_dtype_name(c->dtype), states_per_row, seconds * 1e6, bytes / seconds * 1e-9, err,
           err <= tol ? "ok" : "FAILED");
}

int main(int argc, char **argv) {
    const merge_config c = parse_args(argc, argv);
    flp_context *ctx = NULL;
    flp_context_desc desc = {.backend = c.backend};
    if (flp_context_create(&desc, &ctx) != FLP_OK) {
        fprintf(stderr, "no device for this backend\n");
        return 1;
    }
    flp_device_info info;
    CHECK(flp_context_get_info(ctx, &info));
    const double unit_bytes = (double)c.heads * (c.dim * (double)flp_dtype_size(c.dtype) + 4.0);

    states a = make_states(ctx, &c, c.rows), b = make_states(ctx, &c, c.rows);
    states out = make_states(ctx, &c, c.rows);
    flp_merge_state_args pair = {a.view, b.view, out.view};
    const double t_pair = bench_queued_seconds(ctx, c.iters, call_pair, &(merge_call){ctx, &pair});
    const states *pair_in[2] = {&a, &b};
    report("merge_state", &info, &c, 2, t_pair, 3.0 * c.rows * unit_bytes,
           check_out(ctx, &c, &out, pair_in, 2, false));
    free_states(&a);
    free_states(&b);

    states many = make_states(ctx, &c, (int64_t)c.rows * c.states);
    flp_merge_states_args ragged = {
        .states = many.view, .states_per_row = c.states, .out = out.view};
    const double t_ragged =
        bench_queued_seconds(ctx, c.iters, call_ragged, &(merge_call){ctx, &ragged});
    const states *ragged_in[1] = {&many};
    report("merge_states", &info, &c, c.states, t_ragged, (c.states + 1.0) * c.rows * unit_bytes,
           check_out(ctx, &c, &out, ragged_in, c.states, true));
    free_states(&many);
    free_states(&out);
    flp_context_destroy(ctx);
    return 0;
}
