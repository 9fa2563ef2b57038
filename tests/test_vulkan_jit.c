/* Vulkan suite: shaders compiled at run time (FLP_VULKAN_JIT=1, backend-vulkan/vk_jit.c) give
 * bit-identical results to the SPIR-V built ahead of time; the first context compiles them
 * with glslang and stores them in the compiled-kernel cache; a second "process" (the memory
 * cache emptied) takes them from disk without compiling; a corrupt entry is compiled again.
 * Exits 77 without a Vulkan device, and says so (passing) when the library has no glslang. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "core/kernel_cache.h"
#include "tests/test_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char g_log[1 << 16]; /* the messages of the context being tested, one per line */

static void on_log(void *user, flp_log_level level, const char *message) {
    (void)user;
    (void)level;
    const size_t used = strlen(g_log);
    snprintf(g_log + used, sizeof g_log - used, "%s\n", message);
}

#define assert_ok(ctx, call)                                                                       \
    do {                                                                                           \
        const flp_status st_ = (call);                                                             \
        if (st_ != FLP_OK)                                                                         \
            fail_msg("%s -> %s: %s", #call, flp_status_string(st_),                                \
                     ctx ? flp_context_last_error(ctx) : "");                                      \
    } while (0)

enum { ROWS = 64, PER_ROW = 4, HEADS = 2, D = 128 };
#define STATES (ROWS * PER_ROW)
#define IN_FLOATS ((size_t)STATES * HEADS * (D + 1))
#define OUT_FLOATS ((size_t)ROWS * HEADS * (D + 1))

/* A context with cache_dir; with jit, FLP_VULKAN_JIT=1 while it is created. NULL when the
 * library cannot compile shaders (the caller skips). */
static flp_context *open_context(const char *cache_dir, bool jit) {
    if (jit)
        setenv("FLP_VULKAN_JIT", "1", 1);
    g_log[0] = '\0';
    flp_context_desc desc = {.backend = FLP_BACKEND_VULKAN,
                             .log = on_log,
                             .log_level = FLP_LOG_INFO,
                             .cache_dir = cache_dir};
    flp_context *ctx = NULL;
    const flp_status st = flp_context_create(&desc, &ctx);
    unsetenv("FLP_VULKAN_JIT");
    if (jit && st == FLP_ERROR_UNSUPPORTED && strstr(g_log, "without glslang"))
        return NULL;
    assert_ok(NULL, st);
    return ctx;
}

/* flp_merge_states over the random states in on ctx: the merged rows' bytes in out. */
static void merge_on(flp_context *ctx, const float *in, float *out) {
    flp_buffer *src = NULL, *dst = NULL;
    const flp_buffer_desc src_desc = {sizeof(float) * IN_FLOATS},
                          dst_desc = {sizeof(float) * OUT_FLOATS};
    assert_ok(ctx, flp_buffer_create(ctx, &src_desc, &src));
    assert_ok(ctx, flp_buffer_create(ctx, &dst_desc, &dst));
    assert_ok(ctx, flp_buffer_write(ctx, src, 0, in, sizeof(float) * IN_FLOATS));
    uint8_t poison[sizeof(float) * OUT_FLOATS];
    memset(poison, 0xff, sizeof poison);
    assert_ok(ctx, flp_buffer_write(ctx, dst, 0, poison, sizeof poison));
    const size_t lse_in = sizeof(float) * STATES * HEADS * D;
    const size_t lse_out = sizeof(float) * ROWS * HEADS * D;
    int64_t o_shape[3] = {STATES, HEADS, D}, lse_shape[2] = {STATES, HEADS};
    int64_t out_shape[3] = {ROWS, HEADS, D}, out_lse_shape[2] = {ROWS, HEADS};
    flp_merge_states_args args = {
        .states = {flp_tensor_contiguous(src, 0, FLP_DTYPE_F32, 3, o_shape),
                   flp_tensor_contiguous(src, lse_in, FLP_DTYPE_F32, 2, lse_shape)},
        .states_per_row = PER_ROW,
        .out = {flp_tensor_contiguous(dst, 0, FLP_DTYPE_F32, 3, out_shape),
                flp_tensor_contiguous(dst, lse_out, FLP_DTYPE_F32, 2, out_lse_shape)},
    };
    assert_ok(ctx, flp_merge_states(ctx, &args));
    assert_ok(ctx, flp_buffer_read(ctx, dst, 0, out, sizeof(float) * OUT_FLOATS));
    for (size_t i = 0; i < OUT_FLOATS; i++) {
        uint32_t bits;
        memcpy(&bits, &out[i], sizeof bits);
        if (bits == 0xffffffffu)
            fail_msg("output float %zu was not written", i);
    }
    flp_buffer_destroy(src);
    flp_buffer_destroy(dst);
}

static void test_jit_shaders(void **state) {
    (void)state;
    char dir[] = "/tmp/flp-vulkan-jit-XXXXXX";
    assert_non_null(mkdtemp(dir));
    test_rng rng;
    test_rng_init(&rng, 20261207);
    float *in = malloc(sizeof(float) * IN_FLOATS);
    float *want = malloc(sizeof(float) * OUT_FLOATS), *got = malloc(sizeof(float) * OUT_FLOATS);
    assert_non_null(in);
    assert_non_null(want);
    assert_non_null(got);
    for (size_t i = 0; i < IN_FLOATS; i++)
        in[i] = (float)test_rng_uniform(&rng, -2.0, 2.0);
    flp_kernel_cache_clear_memory();

    flp_context *ahead = open_context("", false);
    merge_on(ahead, in, want);
    flp_context_destroy(ahead);

    /* first JIT context: compiled, stored */
    flp_context *ctx = open_context(dir, true);
    if (!ctx) {
        print_message("this library was built without glslang: nothing to test\n");
        free(in);
        free(want);
        free(got);
        rmdir(dir);
        return;
    }
    merge_on(ctx, in, got);
    assert_memory_equal(got, want, sizeof(float) * OUT_FLOATS);
    if (!strstr(g_log, "merge_states compiled by glslang"))
        fail_msg("no compile logged:\n%s", g_log);
    flp_context_destroy(ctx);

    /* a second process: from the disk, no compile */
    flp_kernel_cache_clear_memory();
    ctx = open_context(dir, true);
    merge_on(ctx, in, got);
    assert_memory_equal(got, want, sizeof(float) * OUT_FLOATS);
    if (!strstr(g_log, "merge_states from the kernel cache") || strstr(g_log, "compiled by"))
        fail_msg("expected the entry from disk:\n%s", g_log);
    flp_context_destroy(ctx);

    /* every entry corrupted: compiled again, and right */
    char command[256];
    snprintf(command, sizeof command,
             "for f in %s/" FLP_KERNEL_CACHE_FORMAT "/*.bin; do printf x >> \"$f\"; done", dir);
    assert_int_equal(system(command), 0);
    flp_kernel_cache_clear_memory();
    ctx = open_context(dir, true);
    merge_on(ctx, in, got);
    assert_memory_equal(got, want, sizeof(float) * OUT_FLOATS);
    if (!strstr(g_log, "merge_states compiled by glslang"))
        fail_msg("a corrupt entry was not compiled again:\n%s", g_log);
    flp_context_destroy(ctx);

    test_remove_tree(dir);
    flp_kernel_cache_clear_memory();
    free(in);
    free(want);
    free(got);
}

/* A decode with a variant snippet on ctx (2 requests, GQA 4, head dim 64, f16): out's bits. */
enum { V_BATCH = 2, V_HQ = 4, V_D = 64, V_PAGE = 16, V_PAGES = 6 };
static void snippet_decode_on(flp_context *ctx, uint16_t *out) {
    test_rng rng;
    test_rng_init(&rng, 20261208);
    const size_t q_elems = (size_t)V_BATCH * V_HQ * V_D, kv_elems = (size_t)V_PAGES * V_PAGE * V_D;
    float *host = malloc(sizeof(float) * (q_elems + 2 * kv_elems));
    assert_non_null(host);
    for (size_t i = 0; i < q_elems + 2 * kv_elems; i++)
        host[i] = (float)test_rng_uniform(&rng, -1.0, 1.0);
    const int64_t q_shape[3] = {V_BATCH, V_HQ, V_D}, kv_shape[4] = {V_PAGES, V_PAGE, 1, V_D};
    flp_buffer *q_buf = NULL, *k_buf = NULL, *v_buf = NULL;
    const size_t out_bytes = sizeof(uint16_t) * q_elems;
    flp_buffer *dst = test_buffer_new(ctx, out_bytes);
    test_buffer_fill(ctx, dst, out_bytes, 0xff);
    flp_plan_desc pd = {.max_batch_size = V_BATCH,
                        .max_pages = V_PAGES,
                        .num_qo_heads = V_HQ,
                        .num_kv_heads = 1,
                        .head_dim = V_D};
    flp_plan *plan = NULL;
    assert_ok(ctx, flp_plan_create(ctx, &pd, &plan));
    static const flp_variant_param params[] = {{"cap", FLP_PARAM_FLOAT}};
    const int32_t kv_indptr[] = {0, 2, 6}, kv_indices[] = {5, 0, 3, 1, 4, 2}, last[] = {4, 2};
    flp_decode_plan_args pa = {
        .batch_size = V_BATCH,
        .page_size = V_PAGE,
        .kv_indptr = kv_indptr,
        .kv_indices = kv_indices,
        .kv_last_page_len = last,
        .variant = {.head_dim = V_D,
                    .logits_transform = "return cap * tanh(logit / cap);",
                    .params = params,
                    .num_params = 1},
    };
    assert_ok(ctx, flp_decode_plan(ctx, plan, &pa));
    const flp_param_value values[] = {{.name = "cap", .f = 0.5f}};
    flp_decode_run_args ra = {
        .q = test_tensor_upload(ctx, host, FLP_DTYPE_F16, 3, q_shape, q_elems, &q_buf),
        .k_cache =
            test_tensor_upload(ctx, host + q_elems, FLP_DTYPE_F16, 4, kv_shape, kv_elems, &k_buf),
        .v_cache = test_tensor_upload(ctx, host + q_elems + kv_elems, FLP_DTYPE_F16, 4, kv_shape,
                                      kv_elems, &v_buf),
        .out = flp_tensor_contiguous(dst, 0, FLP_DTYPE_F16, 3, q_shape),
        .params = values,
        .num_params = 1,
    };
    assert_ok(ctx, flp_decode_run(ctx, plan, &ra));
    uint16_t *got = test_buffer_read_all(ctx, dst, out_bytes);
    memcpy(out, got, out_bytes);
    free(got);
    for (size_t i = 0; i < q_elems; i++)
        if (out[i] == 0xffffu)
            fail_msg("output element %zu was not written", i);
    flp_plan_destroy(plan);
    flp_buffer_destroy(q_buf);
    flp_buffer_destroy(k_buf);
    flp_buffer_destroy(v_buf);
    flp_buffer_destroy(dst);
    free(host);
}

/* A variant's kernels: compiled by the first context, found on disk by a second "process". */
static void test_variant_disk_cache(void **state) {
    (void)state;
#ifndef FLP_TEST_VULKAN_SNIPPETS
    print_message("this library was built without glslang: its plans refuse snippets "
                  "(test_decode checks that)\n");
    return;
#endif
    char dir[] = "/tmp/flp-vulkan-jit-XXXXXX";
    assert_non_null(mkdtemp(dir));
    flp_kernel_cache_clear_memory();
    flp_context *ctx = open_context(dir, false);
    uint16_t first[V_BATCH * V_HQ * V_D], second[V_BATCH * V_HQ * V_D];
    g_log[0] = '\0';
    snippet_decode_on(ctx, first);
    if (!strstr(g_log, "(with the variant's snippets) compiled by glslang"))
        fail_msg("no compile of the variant's kernels logged:\n%s", g_log);
    flp_context_destroy(ctx);
    flp_kernel_cache_clear_memory();
    ctx = open_context(dir, false);
    g_log[0] = '\0';
    snippet_decode_on(ctx, second);
    if (!strstr(g_log, "(with the variant's snippets) from the kernel cache") ||
        strstr(g_log, "compiled by"))
        fail_msg("expected the variant's kernels from disk:\n%s", g_log);
    assert_memory_equal(first, second, sizeof first);
    flp_context_destroy(ctx);
    test_remove_tree(dir);
    flp_kernel_cache_clear_memory();
}

int main(void) {
    unsetenv("FLP_VULKAN_JIT");
    flp_context *probe = NULL;
    flp_context_desc desc = {.backend = FLP_BACKEND_VULKAN};
    if (flp_context_create(&desc, &probe) != FLP_OK) {
        fprintf(stderr, "skipped: no Vulkan device could be opened\n");
        return 77;
    }
    flp_context_destroy(probe);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_jit_shaders),
        cmocka_unit_test(test_variant_disk_cache),
    };
    return cmocka_run_group_tests_name("vulkan_jit", tests, NULL, NULL);
}
