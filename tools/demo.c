/* flashport-demo: one realistic batch decode on the best backend present (CUDA, else a Vulkan
 * GPU, else lavapipe), checked against the float64 reference, with its time and bandwidth.
 *
 * 32 requests with ragged lengths, GQA 32 query / 8 KV heads, head dim 128, bf16, page 16.
 * usage: flashport-demo [cuda|vulkan]   (default: auto) */
#include "tools/host_timing.h"
#include "core/reference.h"
#include "flashport/flashport.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { BATCH = 32, HQ = 32, HKV = 8, D = 128, PAGE = 16, REPEATS = 10 };

static uint64_t rng_state = 0x243f6a8885a308d3ull;
static double uniform(void) { /* splitmix64 -> [-1, 1) */
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (double)(z >> 11) / 9007199254740992.0 * 2.0 - 1.0;
}

#define CHECK(call)                                                                                \
    do {                                                                                           \
        flp_status s_ = (call);                                                                    \
        if (s_ != FLP_OK) {                                                                        \
            fprintf(stderr, "%s failed: %s: %s\n", #call, flp_status_string(s_),                   \
                    ctx ? flp_context_last_error(ctx) : "");                                       \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

/* Random values rounded to bf16, as floats (the exact values the device sees). */
static float *random_bf16_values(size_t n, uint16_t **bits) {
    float *f = malloc(n * sizeof *f);
    *bits = malloc(n * sizeof **bits);
    for (size_t i = 0; i < n; i++) {
        (*bits)[i] = flp_f32_to_bf16((float)uniform());
        f[i] = flp_bf16_to_f32((*bits)[i]);
    }
    return f;
}

int main(int argc, char **argv) {
    flp_context *ctx = NULL;
    flp_context_desc cd = {0};
    if (argc > 1 && strcmp(argv[1], "cuda") == 0)
        cd.backend = FLP_BACKEND_CUDA;
    else if (argc > 1 && strcmp(argv[1], "vulkan") == 0)
        cd.backend = FLP_BACKEND_VULKAN;
    flp_status st = flp_context_create(&cd, &ctx);
    if (st != FLP_OK) {
        fprintf(stderr, "no device: %s (set a log callback for details)\n", flp_status_string(st));
        return 1;
    }
    flp_device_info info;
    CHECK(flp_context_get_info(ctx, &info));

    /* Ragged lengths 300..2300 keys; pages shuffled through a pool with spare pages. */
    int32_t kv_indptr[BATCH + 1] = {0}, last_page_len[BATCH], kv_lens[BATCH];
    for (int b = 0; b < BATCH; b++) {
        kv_lens[b] = 300 + (int32_t)((uniform() + 1.0) * 1000.0);
        int32_t pages = (kv_lens[b] + PAGE - 1) / PAGE;
        kv_indptr[b + 1] = kv_indptr[b] + pages;
        last_page_len[b] = kv_lens[b] - (pages - 1) * PAGE;
    }
    int32_t used = kv_indptr[BATCH], num_pages = used + used / 8;
    int32_t *pool = malloc(sizeof(int32_t) * (size_t)num_pages);
    for (int32_t i = 0; i < num_pages; i++)
        pool[i] = i;
    for (int32_t i = num_pages - 1; i > 0; i--) { /* Fisher-Yates */
        int32_t j = (int32_t)((uniform() + 1.0) * 0.5 * (i + 1)) % (i + 1), t = pool[i];
        pool[i] = pool[j];
        pool[j] = t;
    }

    size_t q_elems = (size_t)BATCH * HQ * D, cache_elems = (size_t)num_pages * PAGE * HKV * D;
    uint16_t *q_bits, *k_bits, *v_bits;
    float *q = random_bf16_values(q_elems, &q_bits);
    float *k = random_bf16_values(cache_elems, &k_bits);
    float *v = random_bf16_values(cache_elems, &v_bits);

    flp_buffer *q_buf, *k_buf, *v_buf, *o_buf;
    flp_buffer_desc bd = {q_elems * 2};
    CHECK(flp_buffer_create(ctx, &bd, &q_buf));
    CHECK(flp_buffer_create(ctx, &bd, &o_buf));
    bd.size = cache_elems * 2;
    CHECK(flp_buffer_create(ctx, &bd, &k_buf));
    CHECK(flp_buffer_create(ctx, &bd, &v_buf));
    CHECK(flp_buffer_write(ctx, q_buf, 0, q_bits, q_elems * 2));
    CHECK(flp_buffer_write(ctx, k_buf, 0, k_bits, cache_elems * 2));
    CHECK(flp_buffer_write(ctx, v_buf, 0, v_bits, cache_elems * 2));

    flp_plan *plan;
    flp_plan_desc pd = {.max_batch_size = BATCH,
                        .max_pages = used,
                        .num_qo_heads = HQ,
                        .num_kv_heads = HKV,
                        .head_dim = D};
    CHECK(flp_plan_create(ctx, &pd, &plan));
    flp_decode_plan_args pa = {.batch_size = BATCH,
                               .page_size = PAGE,
                               .kv_layout = FLP_KV_LAYOUT_NHD,
                               .kv_indptr = kv_indptr,
                               .kv_indices = pool,
                               .kv_last_page_len = last_page_len,
                               .variant = {.head_dim = D, .q_dtype = FLP_DTYPE_BF16}};
    CHECK(flp_decode_plan(ctx, plan, &pa));
    int64_t q_shape[3] = {BATCH, HQ, D}, cache_shape[4] = {num_pages, PAGE, HKV, D};
    flp_decode_run_args ra = {
        .q = flp_tensor_contiguous(q_buf, 0, FLP_DTYPE_BF16, 3, q_shape),
        .k_cache = flp_tensor_contiguous(k_buf, 0, FLP_DTYPE_BF16, 4, cache_shape),
        .v_cache = flp_tensor_contiguous(v_buf, 0, FLP_DTYPE_BF16, 4, cache_shape),
        .out = flp_tensor_contiguous(o_buf, 0, FLP_DTYPE_BF16, 3, q_shape),
    };

    CHECK(flp_decode_run(ctx, plan, &ra)); /* warm-up: pipelines and modules load here */
    CHECK(flp_context_synchronize(ctx));
    double times[REPEATS];
    for (int r = 0; r < REPEATS; r++) {
        double t0 = timing_now_seconds();
        CHECK(flp_decode_run(ctx, plan, &ra));
        CHECK(flp_context_synchronize(ctx));
        times[r] = timing_now_seconds() - t0;
    }
    double median = timing_median(times, REPEATS);

    uint16_t *o_bits = malloc(q_elems * 2);
    CHECK(flp_buffer_read(ctx, o_buf, 0, o_bits, q_elems * 2));

    /* float64 reference on the gathered cache. */
    int32_t tok_indptr[BATCH + 1];
    size_t kv_tokens = 0;
    for (int b = 0; b < BATCH; b++)
        kv_tokens += (size_t)kv_lens[b];
    double *kg = malloc(sizeof(double) * kv_tokens * HKV * D);
    double *vg = malloc(sizeof(double) * kv_tokens * HKV * D);
    double *qd = malloc(sizeof(double) * q_elems), *ref = malloc(sizeof(double) * q_elems);
    double *got = malloc(sizeof(double) * q_elems);
    CHECK(flp_ref_gather_paged(BATCH, HKV, D, PAGE, FLP_KV_LAYOUT_NHD, num_pages, k, kv_indptr,
                               pool, last_page_len, tok_indptr, kg));
    CHECK(flp_ref_gather_paged(BATCH, HKV, D, PAGE, FLP_KV_LAYOUT_NHD, num_pages, v, kv_indptr,
                               pool, last_page_len, tok_indptr, vg));
    int32_t qo_indptr[BATCH + 1];
    for (int b = 0; b <= BATCH; b++)
        qo_indptr[b] = b;
    for (size_t i = 0; i < q_elems; i++) {
        qd[i] = q[i];
        got[i] = flp_bf16_to_f32(o_bits[i]);
    }
    flp_ref_attention ref_args = {.batch_size = BATCH,
                                  .num_qo_heads = HQ,
                                  .num_kv_heads = HKV,
                                  .head_dim = D,
                                  .qo_indptr = qo_indptr,
                                  .kv_indptr = tok_indptr,
                                  .q = qd,
                                  .k = kg,
                                  .v = vg};
    CHECK(flp_ref_attention_run(&ref_args, ref, NULL));
    double err = flp_ref_relative_error(got, ref, q_elems);

    double bytes = (double)kv_tokens * HKV * D * 2.0 * 2.0 + 2.0 * (double)q_elems * 2.0;
    printf("flashport-demo: batch decode, %d requests (%zu keys), GQA %d/%d, D=%d, bf16, page %d\n",
           BATCH, kv_tokens, HQ, HKV, D, PAGE);
    printf("backend: %s\ndevice:  %s%s\n", info.backend_name, info.device_name,
           info.is_software ? " (software)" : "");
    printf("time:    %.3f ms (median of %d)\nbandwidth: %.1f GB/s (K+V+Q+O bytes)\n", median * 1e3,
           REPEATS, bytes / median * 1e-9);
    printf("max |out - ref| / max |ref| = %.2e (bf16 tolerance 1.6e-2): %s\n", err,
           err <= 1.6e-2 ? "OK" : "FAILED");

    flp_plan_destroy(plan);
    flp_buffer_destroy(q_buf);
    flp_buffer_destroy(k_buf);
    flp_buffer_destroy(v_buf);
    flp_buffer_destroy(o_buf);
    flp_context_destroy(ctx);
    free(pool);
    free(q);
    free(k);
    free(v);
    free(q_bits);
    free(k_bits);
    free(v_bits);
    free(o_bits);
    free(kg);
    free(vg);
    free(qd);
    free(ref);
    free(got);
    return err <= 1.6e-2 ? 0 : 1;
}
