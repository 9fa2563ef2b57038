/* Context creation as a user meets it (suite vulkan: it needs some device, lavapipe at least):
 * FLP_BACKEND_AUTO probes backends quietly (a probe that finds nothing logs at DEBUG; a
 * successful creation logs no warning or error), NULL means all defaults, and a creation that
 * fails logs its reason once at ERROR. Exits 77 when no device can be opened at all. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "flashport/flashport.h"

/* What a log callback saw. */
typedef struct log_record {
    int count[FLP_LOG_ERROR + 1]; /* [level] messages */
    char last_error[1024];
    char all[8192]; /* every message, one per line, for failure reports */
} log_record;

static void record(void *user, flp_log_level level, const char *message) {
    log_record *r = user;
    if (level >= FLP_LOG_DEBUG && level <= FLP_LOG_ERROR)
        r->count[level]++;
    if (level == FLP_LOG_ERROR)
        snprintf(r->last_error, sizeof r->last_error, "%s", message);
    size_t used = strlen(r->all);
    snprintf(r->all + used, sizeof r->all - used, "[%d] %s\n", (int)level, message);
}

static void test_auto_logs_no_error_when_it_succeeds(void **state) {
    (void)state;
    log_record r = {0};
    flp_context_desc desc = {.backend = FLP_BACKEND_AUTO, .log = record, .log_user_data = &r};
    flp_context *ctx = NULL;
    assert_int_equal(flp_context_create(&desc, &ctx), FLP_OK);
    if (r.count[FLP_LOG_ERROR] || r.count[FLP_LOG_WARNING])
        fail_msg("a successful AUTO creation logged %d error(s), %d warning(s):\n%s",
                 r.count[FLP_LOG_ERROR], r.count[FLP_LOG_WARNING], r.all);
    flp_device_info info;
    assert_int_equal(flp_context_get_info(ctx, &info), FLP_OK);
    assert_true(info.backend == FLP_BACKEND_CUDA || info.backend == FLP_BACKEND_VULKAN);
    /* the choice is reported at INFO, naming the device */
    assert_true(r.count[FLP_LOG_INFO] >= 1);
    assert_non_null(strstr(r.all, info.device_name));
    assert_string_equal(flp_context_last_error(ctx), "");
    flp_context_destroy(ctx);
}

static void test_null_desc_means_defaults(void **state) {
    (void)state;
    flp_context *ctx = NULL;
    assert_int_equal(flp_context_create(NULL, &ctx), FLP_OK);
    assert_non_null(ctx);
    flp_device_info info;
    assert_int_equal(flp_context_get_info(ctx, &info), FLP_OK);
    assert_true(info.backend == FLP_BACKEND_CUDA || info.backend == FLP_BACKEND_VULKAN);
    flp_context_destroy(ctx);
}

static void test_failed_creation_logs_one_error(void **state) {
    (void)state;
    log_record r = {0};
    flp_context_desc desc = {.device_index = 4096, .log = record, .log_user_data = &r};
    flp_context *ctx = (flp_context *)&r; /* poison: must come back NULL */
    assert_int_not_equal(flp_context_create(&desc, &ctx), FLP_OK);
    assert_null(ctx);
    if (r.count[FLP_LOG_ERROR] != 1)
        fail_msg("a failed AUTO creation logged %d errors (want 1):\n%s", r.count[FLP_LOG_ERROR],
                 r.all);
    assert_non_null(strstr(r.last_error, "no usable device for backend AUTO"));
    assert_non_null(strstr(r.last_error, "4096"));
    /* the probes that failed on the way are there at DEBUG */
    assert_true(r.count[FLP_LOG_DEBUG] >= 2);
}

int main(void) {
    flp_context *probe = NULL;
    if (flp_context_create(NULL, &probe) != FLP_OK) {
        printf("skipped: no device for any backend\n");
        return 77;
    }
    flp_context_destroy(probe);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_auto_logs_no_error_when_it_succeeds),
        cmocka_unit_test(test_null_desc_means_defaults),
        cmocka_unit_test(test_failed_creation_logs_one_error),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
