#include "tests/test_util.h"

#include "core/reference.h"

#include <ctype.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

static uint64_t g_seed;

void test_rng_init(test_rng *rng, uint64_t default_seed) {
    uint64_t seed = default_seed;
    const char *env = getenv("FLP_TEST_SEED");
    if (env && *env) {
        char *end = NULL;
        const unsigned long long v = strtoull(env, &end, 0);
        if (end && *end == '\0')
            seed = (uint64_t)v;
    }
    g_seed = seed;
    rng->state = seed;
}

uint64_t test_seed(void) {
    return g_seed;
}

uint64_t test_rng_next(test_rng *rng) {
    uint64_t z = (rng->state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

double test_rng_uniform(test_rng *rng, double lo, double hi) {
    /* 53 random bits -> [0, 1) */
    const double u = (double)(test_rng_next(rng) >> 11) * 0x1.0p-53;
    return lo + (hi - lo) * u;
}

int32_t test_rng_int(test_rng *rng, int32_t lo, int32_t hi) {
    const uint64_t span = (uint64_t)((int64_t)hi - (int64_t)lo) + 1u;
    return (int32_t)((int64_t)lo + (int64_t)(test_rng_next(rng) % span));
}

void test_fill_uniform_f32(test_rng *rng, float *x, size_t n) {
    for (size_t i = 0; i < n; ++i)
        x[i] = (float)test_rng_uniform(rng, -1.0, 1.0);
}

void test_fill_uniform_f64(test_rng *rng, double *x, size_t n) {
    for (size_t i = 0; i < n; ++i)
        x[i] = test_rng_uniform(rng, -1.0, 1.0);
}

double test_relative_error(const double *got, const double *want, size_t n, size_t *worst) {
    double max_diff = 0.0, max_ref = 0.0;
    size_t at = 0;
    for (size_t i = 0; i < n; ++i) {
        double diff;
        if (got[i] == want[i])
            diff = 0.0;
        else if (!isfinite(got[i]) || !isfinite(want[i])) /* NaN or unmatched infinity */
            diff = INFINITY;
        else
            diff = fabs(got[i] - want[i]);
        if (diff > max_diff) {
            max_diff = diff;
            at = i;
        }
        if (isfinite(want[i]) && fabs(want[i]) > max_ref)
            max_ref = fabs(want[i]);
    }
    if (worst)
        *worst = at;
    if (max_diff == 0.0)
        return 0.0;
    if (isinf(max_diff) || max_ref == 0.0)
        return INFINITY;
    return max_diff / max_ref;
}

void test_assert_relative_error_impl(const double *got, const double *want, size_t n, double tol,
                                     const char *what, const char *file, int line) {
    size_t worst = 0;
    const double err = test_relative_error(got, want, n, &worst);
    if (err <= tol)
        return;
    print_error("%s: relative error %.3e > %.3e (worst element %zu of %zu: got %.17g, want "
                "%.17g); seed %llu (replay with FLP_TEST_SEED=%llu)\n",
                what, err, tol, worst, n, n ? got[worst] : 0.0, n ? want[worst] : 0.0,
                (unsigned long long)g_seed, (unsigned long long)g_seed);
    _fail(file, line);
}

void test_assert_near_impl(double got, double want, double tol, const char *what, const char *file,
                           int line) {
    if (got == want || fabs(got - want) <= tol)
        return;
    print_error("%s = %.17g, want %.17g (tolerance %.3g); seed %llu\n", what, got, want, tol,
                (unsigned long long)g_seed);
    _fail(file, line);
}

/* ---- additions for the backend reference suites --------------------------------------------- */

uint64_t test_name_seed(const char *name) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *name; ++name)
        h = (h ^ (uint8_t)*name) * 0x100000001b3ull;
    return h;
}

float test_round_to_dtype(flp_dtype dt, float x) {
    if (dt == FLP_DTYPE_F16)
        return flp_f16_to_f32(flp_f32_to_f16(x));
    if (dt == FLP_DTYPE_BF16)
        return flp_bf16_to_f32(flp_f32_to_bf16(x));
    if (dt == FLP_DTYPE_E4M3)
        return flp_e4m3_to_f32(flp_f32_to_e4m3(x));
    if (dt == FLP_DTYPE_E5M2)
        return flp_e5m2_to_f32(flp_f32_to_e5m2(x));
    return x;
}

void test_fill_stored(test_rng *rng, flp_dtype dt, float scale, float *x, size_t n) {
    for (size_t i = 0; i < n; ++i) {
        float value = 0.0f;
        while (value == 0.0f) /* zeros would hide unwritten or skipped elements */
            value = test_round_to_dtype(dt, (float)test_rng_uniform(rng, -1.0, 1.0) / scale);
        x[i] = value;
    }
}

double test_f32_bits_to_double(uint32_t bits) {
    float f;
    memcpy(&f, &bits, sizeof f);
    return (double)f;
}

double *test_f32_to_f64(const float *x, size_t n) {
    double *out = calloc(n ? n : 1, sizeof(double));
    assert_non_null(out);
    for (size_t i = 0; i < n; ++i)
        out[i] = x[i];
    return out;
}

void test_ref_attention_init(struct flp_ref_attention *a, const flp_variant *variant,
                             int32_t batch_size, int32_t num_qo_heads, int32_t num_kv_heads) {
    memset(a, 0, sizeof *a);
    a->batch_size = batch_size;
    a->num_qo_heads = num_qo_heads;
    a->num_kv_heads = num_kv_heads;
    a->head_dim = variant->head_dim;
    a->mask = variant->mask;
    a->use_window = variant->use_window;
    a->window_left = variant->window_left;
    a->logits_soft_cap = variant->logits_soft_cap;
    a->sm_scale = variant->sm_scale;
    a->pos_encoding = variant->pos_encoding;
    a->rope = variant->rope;
}

bool test_contains_ci(const char *hay, const char *needle) {
    const size_t n = strlen(needle);
    for (; *hay; ++hay) {
        size_t i = 0;
        while (i < n && hay[i] &&
               tolower((unsigned char)hay[i]) == tolower((unsigned char)needle[i]))
            ++i;
        if (i == n)
            return true;
    }
    return n == 0;
}

void test_expect_status(const flp_context *ctx, flp_status got, flp_status want, const char *call,
                        const char *const *words) {
    const char *msg = ctx ? flp_context_last_error(ctx) : "";
    if (got != want)
        fail_msg("%s: returned %s, expected %s (message: \"%s\")", call, flp_status_string(got),
                 flp_status_string(want), msg);
    if (!words)
        return;
    if (!msg || !msg[0])
        fail_msg("%s: %s but flp_context_last_error is empty", call, flp_status_string(got));
    for (; *words; ++words)
        if (test_contains_ci(msg, *words))
            return;
    fail_msg("%s: the message \"%s\" names none of the expected words", call, msg);
}

/* ---- one backend context per test program ---------------------------------------------------- */

static struct {
    flp_backend_kind kind;
    const char *name;
    flp_context *ctx;
    uint32_t (*validation_count)(const flp_context *);
    bool expect_errors;
    int errors;                /* error records during the running test */
    uint32_t validation_start; /* validation messages when the running test began */
    char last[1024];           /* the last record */
    char kept[4][512];         /* the last error records, shown with validation messages */
} g_backend;

static void backend_log(void *user, flp_log_level level, const char *message) {
    (void)user;
    snprintf(g_backend.last, sizeof g_backend.last, "%s", message);
    if (level == FLP_LOG_WARNING) {
        fprintf(stderr, "[flashport warning] %s\n", message);
    } else if (level >= FLP_LOG_ERROR) {
        snprintf(g_backend.kept[g_backend.errors % 4], sizeof g_backend.kept[0], "%s", message);
        g_backend.errors++;
        if (!g_backend.expect_errors)
            fprintf(stderr, "[flashport error] %s\n", message);
    }
}

static uint32_t backend_validation_messages(void) {
    return g_backend.validation_count && g_backend.ctx ? g_backend.validation_count(g_backend.ctx)
                                                       : 0;
}

int test_backend_open(int argc, char **argv, uint32_t (*validation_count)(const flp_context *),
                      flp_context **ctx) {
    *ctx = NULL;
    const bool vulkan = argc >= 2 && strcmp(argv[1], "vulkan") == 0;
    if (argc < 2 || (!vulkan && strcmp(argv[1], "cuda") != 0)) {
        fprintf(stderr, "usage: %s vulkan|cuda [cmocka test filter]\n", argc ? argv[0] : "test");
        return 2;
    }
    g_backend.kind = vulkan ? FLP_BACKEND_VULKAN : FLP_BACKEND_CUDA;
    g_backend.name = argv[1];
    g_backend.validation_count = validation_count;
    if (vulkan)
        setenv("FLP_VULKAN_VALIDATION", "1", 0);
    flp_context_desc desc;
    memset(&desc, 0, sizeof desc);
    desc.backend = g_backend.kind;
    desc.log = backend_log;
    desc.log_level = FLP_LOG_WARNING;
    g_backend.expect_errors = true; /* a missing device is reported below */
    const flp_status st = flp_context_create(&desc, &g_backend.ctx);
    g_backend.expect_errors = false;
    if (st == FLP_ERROR_UNSUPPORTED) {
        printf("skipped: no %s backend or device: %s\n", g_backend.name,
               g_backend.last[0] ? g_backend.last : "(no message)");
        return 77;
    }
    if (st != FLP_OK) {
        fprintf(stderr, "flp_context_create(%s): %s: %s\n", g_backend.name, flp_status_string(st),
                g_backend.last);
        return 1;
    }
    *ctx = g_backend.ctx;
    return 0;
}

flp_backend_kind test_backend_kind(void) {
    return g_backend.kind;
}

const char *test_backend_name(void) {
    return g_backend.name ? g_backend.name : "";
}

int test_backend_report(void) {
    flp_device_info info;
    if (flp_context_get_info(g_backend.ctx, &info) != FLP_OK) {
        print_error("flp_context_get_info: %s\n", flp_context_last_error(g_backend.ctx));
        return -1;
    }
    print_message("%s: %s (%s), %d compute units, subgroup %d\n", info.backend_name,
                  info.device_name, info.driver_info, info.compute_units, info.subgroup_size);
    const uint32_t seen = backend_validation_messages();
    if (seen > 0) {
        print_error("ERROR: %u validation message(s) while opening the context (last log: %s)\n",
                    seen, g_backend.last);
        return -1;
    }
    return 0;
}

static int backend_begin(bool expect_errors) {
    g_backend.expect_errors = expect_errors;
    g_backend.errors = 0;
    g_backend.validation_start = backend_validation_messages();
    return 0;
}

static int backend_end(bool expect_errors) {
    int rc = 0;
    const uint32_t seen = backend_validation_messages() - g_backend.validation_start;
    if (seen > 0) {
        print_error("ERROR: %u validation message(s) during this test\n", seen);
        const int first = g_backend.errors > 4 ? g_backend.errors - 4 : 0;
        for (int i = first; i < g_backend.errors; ++i)
            print_error("  logged: %s\n", g_backend.kept[i % 4]);
        rc = -1;
    }
    if (!expect_errors && g_backend.errors > 0) {
        print_error("ERROR: %d error(s) logged during this test (last: %s)\n", g_backend.errors,
                    g_backend.last);
        rc = -1;
    }
    g_backend.expect_errors = false;
    return rc;
}

int test_backend_setup_good(void **state) {
    (void)state;
    return backend_begin(false);
}

int test_backend_teardown_good(void **state) {
    (void)state;
    return backend_end(false);
}

int test_backend_setup_bad(void **state) {
    (void)state;
    return backend_begin(true);
}

int test_backend_teardown_bad(void **state) {
    (void)state;
    return backend_end(g_backend.expect_errors);
}

void test_backend_expect_errors(bool expected) {
    g_backend.errors = 0;
    g_backend.expect_errors = expected;
}
