/* The backend-independent front end, on a host-memory fake backend (so the core suite covers
 * it under ASan/UBSan without a device): status names, variant validation, plan capacities and
 * workspace, what decode_plan uploads, what decode_run hands the backend, and that every bad
 * argument is refused with a message before anything reaches the backend. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/plan.h"
#include "tests/fake_backend.h"
#include "tests/test_util.h"

/* ---- a small decode problem ------------------------------------------------------------- */

enum { B = 3, HQ = 8, HKV = 2, D = 64, PAGE = 4, PAGES = 12 };

typedef struct fixture {
    flp_context *ctx;
    flp_plan *plan;
    flp_buffer *q_buf, *o_buf, *kv_buf, *lse_buf;
    int32_t kv_indptr[B + 1], kv_indices[PAGES], last[B];
    flp_decode_plan_args pa;
    flp_decode_run_args ra;
    flp_tensor lse;
} fixture;

static int setup(void **state) {
    fixture *f = calloc(1, sizeof *f);
    f->ctx = fake_context();
    flp_plan_desc pd = {.max_batch_size = 4,
                        .max_pages = PAGES,
                        .num_qo_heads = HQ,
                        .num_kv_heads = HKV,
                        .head_dim = D};
    assert_int_equal(flp_plan_create(f->ctx, &pd, &f->plan), FLP_OK);
    /* Requests of 5, 0 and 9 keys: pages {7, 3}, none, {0, 11, 5}. */
    int32_t indptr[B + 1] = {0, 2, 2, 5}, indices[5] = {7, 3, 0, 11, 5}, last[B] = {1, 0, 1};
    memcpy(f->kv_indptr, indptr, sizeof indptr);
    memcpy(f->kv_indices, indices, sizeof indices);
    memcpy(f->last, last, sizeof last);
    f->pa = (flp_decode_plan_args){.batch_size = B,
                                   .page_size = PAGE,
                                   .kv_indptr = f->kv_indptr,
                                   .kv_indices = f->kv_indices,
                                   .kv_last_page_len = f->last,
                                   .variant = {.head_dim = D, .q_dtype = FLP_DTYPE_BF16}};
    flp_buffer_desc bd = {B * HQ * D * 2};
    assert_int_equal(flp_buffer_create(f->ctx, &bd, &f->q_buf), FLP_OK);
    assert_int_equal(flp_buffer_create(f->ctx, &bd, &f->o_buf), FLP_OK);
    bd.size = 2 * PAGES * PAGE * HKV * D * 2; /* K and V interleaved per page */
    assert_int_equal(flp_buffer_create(f->ctx, &bd, &f->kv_buf), FLP_OK);
    bd.size = B * HQ * 4;
    assert_int_equal(flp_buffer_create(f->ctx, &bd, &f->lse_buf), FLP_OK);
    int64_t q_shape[3] = {B, HQ, D}, lse_shape[2] = {B, HQ};
    f->ra.q = flp_tensor_contiguous(f->q_buf, 0, FLP_DTYPE_BF16, 3, q_shape);
    f->ra.out = flp_tensor_contiguous(f->o_buf, 0, FLP_DTYPE_BF16, 3, q_shape);
    /* [pages, 2, page, Hkv, D] viewed as K = [:, 0] and V = [:, 1]. */
    flp_tensor k = {f->kv_buf,
                    0,
                    FLP_DTYPE_BF16,
                    4,
                    {PAGES, PAGE, HKV, D},
                    {2 * PAGE * HKV * D, HKV * D, D, 1}};
    f->ra.k_cache = k;
    f->ra.v_cache = k;
    f->ra.v_cache.offset = (size_t)PAGE * HKV * D * 2;
    f->lse = flp_tensor_contiguous(f->lse_buf, 0, FLP_DTYPE_F32, 2, lse_shape);
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fixture *f = *state;
    flp_plan_destroy(f->plan);
    flp_buffer_destroy(f->q_buf);
    flp_buffer_destroy(f->o_buf);
    flp_buffer_destroy(f->kv_buf);
    flp_buffer_destroy(f->lse_buf);
    flp_context_destroy(f->ctx);
    free(f);
    return 0;
}

static const int32_t *plan_words(const fixture *f, size_t offset) {
    return (const int32_t *)((const char *)f->plan->buffer->native + f->plan->base + offset);
}

/* ---- tests ------------------------------------------------------------------------------ */

static void test_status_strings(void **state) {
    (void)state;
    assert_string_equal(flp_status_string(FLP_OK), "FLP_OK");
    assert_string_equal(flp_status_string(FLP_ERROR_CAPACITY), "FLP_ERROR_CAPACITY");
    assert_string_equal(flp_status_string(FLP_ERROR_DEVICE_LOST), "FLP_ERROR_DEVICE_LOST");
    assert_string_equal(flp_status_string((flp_status)-99), "FLP_ERROR_UNKNOWN");
}

static void test_variant_validation(void **state) {
    (void)state;
    char msg[256];
    flp_variant ok = {.head_dim = 128};
    assert_int_equal(flp_variant_validate(&ok, msg, sizeof msg), FLP_OK);
    /* parameters without snippets: declared, unused, accepted */
    const flp_variant_param cap[] = {{"cap", FLP_PARAM_FLOAT}};
    const flp_variant_param bad_name[] = {{"Cap", FLP_PARAM_FLOAT}};
    ok.params = cap;
    ok.num_params = 1;
    assert_int_equal(flp_variant_validate(&ok, msg, sizeof msg), FLP_OK);
    /* valid snippets are valid (whether a plan's kernels take them is the plan call's answer) */
    ok.logits_transform = "return logit * cap;";
    ok.logits_mask = "return kv_pos <= qo_pos;";
    assert_int_equal(flp_variant_validate(&ok, msg, sizeof msg), FLP_OK);
    struct {
        flp_variant v;
        flp_status want;
        const char *mentions;
    } bad[] = {
        {{.head_dim = 0}, FLP_ERROR_INVALID_ARGUMENT, "head_dim"},
        {{.head_dim = 96}, FLP_ERROR_UNSUPPORTED, "head_dim = 96"},
        {{.head_dim = 64, .q_dtype = FLP_DTYPE_E4M3}, FLP_ERROR_INVALID_ARGUMENT, "q_dtype"},
        {{.head_dim = 64, .kv_dtype = FLP_DTYPE_I32}, FLP_ERROR_INVALID_ARGUMENT, "kv_dtype"},
        {{.head_dim = 64, .use_window = true, .window_left = -1},
         FLP_ERROR_INVALID_ARGUMENT,
         "window_left = -1"},
        {{.head_dim = 64, .logits_soft_cap = -1}, FLP_ERROR_INVALID_ARGUMENT, "soft_cap"},
        {{.head_dim = 64, .sm_scale = -0.5f}, FLP_ERROR_INVALID_ARGUMENT, "sm_scale"},
        {{.head_dim = 64, .pos_encoding = FLP_POS_ROPE_LLAMA, .rope = {.llama31 = true}},
         FLP_ERROR_INVALID_ARGUMENT,
         "llama31"},
        {{.head_dim = 64, .k_scale = -1}, FLP_ERROR_INVALID_ARGUMENT, "k_scale"},
        {{.head_dim = 64, .logits_mask = "return logit > 0.0;"},
         FLP_ERROR_INVALID_ARGUMENT,
         "variant.logits_mask line 1, column 8: logit is not an input of logits_mask"},
        {{.head_dim = 64, .query_transform = "while (true) {} return q;"},
         FLP_ERROR_INVALID_ARGUMENT,
         "variant.query_transform line 1, column 1: while is outside the snippet language"},
        {{.head_dim = 64, .output_transform = "float y = o;"},
         FLP_ERROR_INVALID_ARGUMENT,
         "variant.output_transform has no return statement"},
        {{.head_dim = 64,
          .logits_transform = "return logit * cap[0];",
          .params = cap,
          .num_params = 1},
         FLP_ERROR_INVALID_ARGUMENT,
         "cap is a scalar"},
        {{.head_dim = 96, .logits_mask = "return nope;"},
         FLP_ERROR_INVALID_ARGUMENT,
         "nope is not an input"}, /* a bad snippet before an unsupported head_dim */
        {{.head_dim = 64, .params = cap, .num_params = -1},
         FLP_ERROR_INVALID_ARGUMENT,
         "variant.params: -1 user parameters"},
        {{.head_dim = 64, .params = NULL, .num_params = 1},
         FLP_ERROR_INVALID_ARGUMENT,
         "variant.params: 1 user parameters but params is NULL"},
        {{.head_dim = 64, .params = bad_name, .num_params = 1},
         FLP_ERROR_INVALID_ARGUMENT,
         "variant.params: user parameter 0 (\"Cap\") does not start with a lowercase letter"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(flp_variant_validate(&bad[i].v, msg, sizeof msg), bad[i].want);
        assert_non_null(strstr(msg, bad[i].mentions));
    }
    assert_int_equal(flp_variant_validate(NULL, NULL, 0), FLP_ERROR_INVALID_ARGUMENT);
}

static void test_alibi_standard_slopes(void **state) {
    (void)state;
    float s[12];
    assert_int_equal(flp_alibi_standard_slopes(12, s), FLP_OK);
    /* n = 8: heads 0..7 get 2^(-(k+1)), heads 8..11 get 2^(-(2j+1)/2). */
    assert_near(s[0], 0.5, 1e-7);
    assert_near(s[7], 1.0 / 256, 1e-9);
    assert_near(s[8], 0.70710678, 1e-7);
    assert_near(s[11], 0.0883883476, 1e-8); /* 2^-3.5 */
    assert_int_equal(flp_alibi_standard_slopes(0, s), FLP_ERROR_INVALID_ARGUMENT);
}

static void test_plan_desc_validation(void **state) {
    fixture *f = *state;
    flp_plan *plan = (flp_plan *)0x1;
    flp_plan_desc pd = {
        .max_batch_size = 4, .max_pages = 8, .num_qo_heads = 6, .num_kv_heads = 4, .head_dim = 64};
    assert_int_equal(flp_plan_create(f->ctx, &pd, &plan), FLP_ERROR_INVALID_ARGUMENT);
    assert_null(plan);
    assert_non_null(strstr(flp_context_last_error(f->ctx), "not a multiple of num_kv_heads"));
    pd.num_qo_heads = 8;
    pd.head_dim = 96;
    assert_int_equal(flp_plan_create(f->ctx, &pd, &plan), FLP_ERROR_UNSUPPORTED);
    pd.head_dim = 64;
    pd.max_batch_size = 0;
    assert_int_equal(flp_plan_create(f->ctx, &pd, &plan), FLP_ERROR_INVALID_ARGUMENT);
    pd.max_batch_size = 4;
    pd.max_qo_len = FLP_DECODE_MAX_QO_LEN + 1;
    assert_int_equal(flp_plan_create(f->ctx, &pd, &plan), FLP_ERROR_INVALID_ARGUMENT);
    assert_int_equal(flp_plan_create(f->ctx, NULL, &plan), FLP_ERROR_INVALID_ARGUMENT);
    assert_int_equal(flp_plan_create(NULL, &pd, &plan), FLP_ERROR_INVALID_ARGUMENT);
}

static void test_workspace(void **state) {
    fixture *f = *state;
    flp_plan_desc pd = {
        .max_batch_size = 4, .max_pages = 8, .num_qo_heads = 8, .num_kv_heads = 2, .head_dim = 64};
    size_t need = 0;
    assert_int_equal(flp_plan_workspace_size(f->ctx, &pd, &need), FLP_OK);
    assert_true(need > 0);
    flp_buffer *ws;
    flp_buffer_desc bd = {need + 512};
    assert_int_equal(flp_buffer_create(f->ctx, &bd, &ws), FLP_OK);
    pd.workspace = ws;
    pd.workspace_offset = 512;
    flp_plan *plan;
    assert_int_equal(flp_plan_create(f->ctx, &pd, &plan), FLP_OK);
    assert_ptr_equal(plan->buffer, ws);
    assert_int_equal(plan->base, 512);
    flp_plan_destroy(plan);    /* must not free the caller's workspace */
    pd.workspace_offset = 768; /* 256 bytes short */
    assert_int_equal(flp_plan_create(f->ctx, &pd, &plan), FLP_ERROR_CAPACITY);
    pd.workspace_offset = 100;
    assert_int_equal(flp_plan_create(f->ctx, &pd, &plan), FLP_ERROR_INVALID_ARGUMENT);
    flp_buffer_destroy(ws);
}

static void test_plan_uploads_page_table_and_schedule(void **state) {
    fixture *f = *state;
    assert_int_equal(flp_decode_plan(f->ctx, f->plan, &f->pa), FLP_OK);
    const flp_plan_layout *l = &f->plan->layout;
    assert_memory_equal(plan_words(f, l->kv_indptr), f->kv_indptr, sizeof f->kv_indptr);
    assert_memory_equal(plan_words(f, l->kv_indices), f->kv_indices, 5 * sizeof(int32_t));
    const int32_t *kv_len = plan_words(f, l->kv_len);
    assert_int_equal(kv_len[0], 5);
    assert_int_equal(kv_len[1], 0);
    assert_int_equal(kv_len[2], 9);
    const int32_t *indptr = plan_words(f, l->work_indptr);
    assert_int_equal(indptr[0], 0);
    assert_int_equal(indptr[f->plan->num_ctas], B * HKV); /* nothing split: short requests */
    /* ALiBi slopes, made only with ALiBi on: the standard ones, then the caller's */
    flp_decode_plan_args alibi = f->pa;
    alibi.variant.pos_encoding = FLP_POS_ALIBI;
    assert_int_equal(flp_decode_plan(f->ctx, f->plan, &alibi), FLP_OK);
    float slopes[HQ];
    flp_alibi_standard_slopes(HQ, slopes);
    assert_memory_equal(plan_words(f, l->alibi_slopes), slopes, sizeof slopes);
    for (int32_t h = 0; h < HQ; h++)
        slopes[h] = 0.25f * (float)(h + 1);
    alibi.alibi_slopes = slopes;
    assert_int_equal(flp_decode_plan(f->ctx, f->plan, &alibi), FLP_OK);
    assert_memory_equal(plan_words(f, l->alibi_slopes), slopes, sizeof slopes);
}

static void test_run_hands_backend_the_views(void **state) {
    fixture *f = *state;
    assert_int_equal(flp_decode_plan(f->ctx, f->plan, &f->pa), FLP_OK);
    f->ra.lse = &f->lse;
    int before = fake_runs_queued;
    assert_int_equal(flp_decode_run(f->ctx, f->plan, &f->ra), FLP_OK);
    assert_int_equal(fake_runs_queued, before + 1);
    const flp_decode_params *p = &fake_last_decode.params;
    assert_int_equal(p->q, f->q_buf->device_address);
    assert_int_equal(p->v, f->kv_buf->device_address + (uint64_t)PAGE * HKV * D * 2);
    assert_int_equal(p->k_stride_page, 2 * PAGE * HKV * D);
    assert_int_equal(p->k_stride_slot, HKV * D);
    assert_int_equal(p->k_stride_head, D);
    assert_int_equal(p->lse, f->lse_buf->device_address);
    assert_int_equal(p->plan, f->plan->buffer->device_address + f->plan->base);
    assert_int_equal(fake_last_decode.num_ctas, 6);
    assert_int_equal(fake_last_decode.head_dim, D);
    assert_int_equal(fake_last_decode.kv_dtype, FLP_DTYPE_BF16);
    /* Plan-dependent values live in the plan memory, not in the launch. */
    const flp_decode_plan_info *info = (const flp_decode_plan_info *)plan_words(f, 0);
    assert_int_equal(info->flags, 0);
    assert_true(info->sm_scale > 0.124f && info->sm_scale < 0.126f);
    assert_int_equal(info->group_size, HQ / HKV);
    assert_int_equal(info->batch_size, B);
    assert_int_equal(info->off_kv_indices * 4, f->plan->layout.kv_indices);

    /* HND: slot and head strides swap. */
    f->pa.kv_layout = FLP_KV_LAYOUT_HND;
    assert_int_equal(flp_decode_plan(f->ctx, f->plan, &f->pa), FLP_OK);
    int64_t shape[4] = {PAGES, HKV, PAGE, D};
    f->ra.k_cache = flp_tensor_contiguous(f->kv_buf, 0, FLP_DTYPE_BF16, 4, shape);
    f->ra.v_cache = f->ra.k_cache;
    assert_int_equal(flp_decode_run(f->ctx, f->plan, &f->ra), FLP_OK);
    assert_int_equal(fake_last_decode.params.k_stride_slot, D);
    assert_int_equal(fake_last_decode.params.k_stride_head, PAGE * D);
}

static void test_replan_keeps_launch_shape(void **state) {
    fixture *f = *state;
    assert_int_equal(flp_decode_plan(f->ctx, f->plan, &f->pa), FLP_OK);
    assert_int_equal(flp_decode_run(f->ctx, f->plan, &f->ra), FLP_OK);
    flp_decode_launch first = fake_last_decode;
    int32_t indptr[3] = {0, 4, 9}, last[2] = {4, 2};
    int32_t indices[9] = {1, 2, 3, 4, 5, 6, 8, 9, 10};
    flp_decode_plan_args pa = f->pa;
    pa.batch_size = 2;
    pa.kv_indptr = indptr;
    pa.kv_indices = indices;
    pa.kv_last_page_len = last;
    int64_t q_shape[3] = {2, HQ, D};
    flp_decode_run_args ra = f->ra;
    ra.q = flp_tensor_contiguous(f->q_buf, 0, FLP_DTYPE_BF16, 3, q_shape);
    ra.out = flp_tensor_contiguous(f->o_buf, 0, FLP_DTYPE_BF16, 3, q_shape);
    assert_int_equal(flp_decode_plan(f->ctx, f->plan, &pa), FLP_OK);
    assert_int_equal(flp_decode_run(f->ctx, f->plan, &ra), FLP_OK);
    assert_int_equal(fake_last_decode.num_ctas, first.num_ctas);
    assert_int_equal(fake_last_decode.merge_grid, first.merge_grid);
    assert_int_equal(fake_last_decode.params.plan, first.params.plan);
    assert_int_equal(fake_last_decode.slot.offset, first.slot.offset);
    assert_ptr_equal(fake_last_decode.slot.buffer, first.slot.buffer);
    const flp_decode_plan_info *info = (const flp_decode_plan_info *)plan_words(f, 0);
    assert_int_equal(info->batch_size, 2); /* a recorded run reads the new batch from here */
}

/* Each case breaks one argument; the call must fail with the status and a message naming it,
 * and queue nothing. */
typedef void (*breaker)(flp_decode_plan_args *pa, flp_decode_run_args *ra, int32_t *scratch);

static void bad_batch(flp_decode_plan_args *pa, flp_decode_run_args *ra, int32_t *s) {
    (void)ra, (void)s;
    pa->batch_size = 5;
}
static void bad_last_zero(flp_decode_plan_args *pa, flp_decode_run_args *ra, int32_t *s) {
    (void)ra;
    s[0] = 0, s[1] = 0, s[2] = 1;
    pa->kv_last_page_len = s;
}
static void bad_last_big(flp_decode_plan_args *pa, flp_decode_run_args *ra, int32_t *s) {
    (void)ra;
    s[0] = 1, s[1] = 0, s[2] = PAGE + 1;
    pa->kv_last_page_len = s;
}
static void bad_indptr_start(flp_decode_plan_args *pa, flp_decode_run_args *ra, int32_t *s) {
    (void)ra;
    s[0] = 1, s[1] = 2, s[2] = 2, s[3] = 5;
    pa->kv_indptr = s;
}
static void bad_indptr_order(flp_decode_plan_args *pa, flp_decode_run_args *ra, int32_t *s) {
    (void)ra;
    s[0] = 0, s[1] = 3, s[2] = 2, s[3] = 5;
    pa->kv_indptr = s;
}
static void bad_negative_page(flp_decode_plan_args *pa, flp_decode_run_args *ra, int32_t *s) {
    (void)ra;
    s[0] = 7, s[1] = -3, s[2] = 0, s[3] = 11, s[4] = 5;
    pa->kv_indices = s;
}
static void bad_null_indptr(flp_decode_plan_args *pa, flp_decode_run_args *ra, int32_t *s) {
    (void)ra, (void)s;
    pa->kv_indptr = NULL;
}
static void bad_head_dim(flp_decode_plan_args *pa, flp_decode_run_args *ra, int32_t *s) {
    (void)ra, (void)s;
    pa->variant.head_dim = 128;
}
static void bad_page_size(flp_decode_plan_args *pa, flp_decode_run_args *ra, int32_t *s) {
    (void)ra, (void)s;
    pa->page_size = 0;
}
static void bad_qo_len(flp_decode_plan_args *pa, flp_decode_run_args *ra, int32_t *s) {
    (void)ra, (void)s;
    pa->qo_len = 2; /* the plan was created with max_qo_len 1 */
}
static void bad_q_dtype(flp_decode_plan_args *pa, flp_decode_run_args *ra, int32_t *s) {
    (void)pa, (void)s;
    ra->q.dtype = FLP_DTYPE_F16;
}
static void bad_out_shape(flp_decode_plan_args *pa, flp_decode_run_args *ra, int32_t *s) {
    (void)pa, (void)s;
    ra->out.shape[1] = HQ / 2;
}
static void bad_k_heads(flp_decode_plan_args *pa, flp_decode_run_args *ra, int32_t *s) {
    (void)pa, (void)s;
    ra->k_cache.shape[2] = 1;
}
static void bad_v_pages(flp_decode_plan_args *pa, flp_decode_run_args *ra, int32_t *s) {
    (void)pa, (void)s;
    ra->v_cache.shape[0] = PAGES - 1;
}
static void bad_page_out_of_range(flp_decode_plan_args *pa, flp_decode_run_args *ra, int32_t *s) {
    (void)pa, (void)s;
    ra->k_cache.shape[0] = 11; /* page 11 is referenced */
    ra->v_cache.shape[0] = 11;
}
static void bad_stride(flp_decode_plan_args *pa, flp_decode_run_args *ra, int32_t *s) {
    (void)pa, (void)s;
    ra->k_cache.stride[3] = 2;
}
static void bad_unaligned(flp_decode_plan_args *pa, flp_decode_run_args *ra, int32_t *s) {
    (void)pa, (void)s;
    ra->q.offset = 2;
}
static void bad_span(flp_decode_plan_args *pa, flp_decode_run_args *ra, int32_t *s) {
    (void)pa, (void)s;
    ra->v_cache.offset += 16; /* the last page's V then ends past the buffer */
}
static void bad_null_buffer(flp_decode_plan_args *pa, flp_decode_run_args *ra, int32_t *s) {
    (void)pa, (void)s;
    ra->q.buf = NULL;
}

static void test_bad_arguments_are_refused(void **state) {
    fixture *f = *state;
    static const struct {
        const char *name;
        breaker breaks;
        bool at_plan;
        flp_status want;
        const char *mentions;
    } cases[] = {
        {"batch", bad_batch, true, FLP_ERROR_CAPACITY, "batch_size = 5"},
        {"last_page_len 0", bad_last_zero, true, FLP_ERROR_INVALID_ARGUMENT, "kv_last_page_len[0]"},
        {"last_page_len > page", bad_last_big, true, FLP_ERROR_INVALID_ARGUMENT,
         "kv_last_page_len[2] = 5"},
        {"indptr start", bad_indptr_start, true, FLP_ERROR_INVALID_ARGUMENT, "kv_indptr[0]"},
        {"indptr order", bad_indptr_order, true, FLP_ERROR_INVALID_ARGUMENT, "decreases"},
        {"negative page", bad_negative_page, true, FLP_ERROR_INVALID_ARGUMENT, "kv_indices[1]"},
        {"null indptr", bad_null_indptr, true, FLP_ERROR_INVALID_ARGUMENT, "kv_indptr is NULL"},
        {"head_dim", bad_head_dim, true, FLP_ERROR_INVALID_ARGUMENT, "head_dim"},
        {"page_size", bad_page_size, true, FLP_ERROR_INVALID_ARGUMENT, "page_size = 0"},
        {"qo_len", bad_qo_len, true, FLP_ERROR_CAPACITY, "max_qo_len"},
        {"q dtype", bad_q_dtype, false, FLP_ERROR_INVALID_ARGUMENT, "q.dtype is f16"},
        {"out shape", bad_out_shape, false, FLP_ERROR_INVALID_ARGUMENT, "out.shape"},
        {"k heads", bad_k_heads, false, FLP_ERROR_INVALID_ARGUMENT, "k_cache.shape"},
        {"v pages", bad_v_pages, false, FLP_ERROR_INVALID_ARGUMENT, "v_cache.shape"},
        {"page range", bad_page_out_of_range, false, FLP_ERROR_INVALID_ARGUMENT, "page 11"},
        {"stride", bad_stride, false, FLP_ERROR_INVALID_ARGUMENT, "contiguous"},
        {"alignment", bad_unaligned, false, FLP_ERROR_INVALID_ARGUMENT, "16 bytes"},
        {"span", bad_span, false, FLP_ERROR_INVALID_ARGUMENT, "beyond its buffer"},
        {"null buffer", bad_null_buffer, false, FLP_ERROR_INVALID_ARGUMENT, "q.buf is NULL"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        flp_decode_plan_args pa = f->pa;
        flp_decode_run_args ra = f->ra;
        int32_t scratch[8];
        cases[i].breaks(&pa, &ra, scratch);
        int before = fake_runs_queued;
        flp_status got = cases[i].at_plan ? flp_decode_plan(f->ctx, f->plan, &pa)
                                          : (flp_decode_plan(f->ctx, f->plan, &f->pa),
                                             flp_decode_run(f->ctx, f->plan, &ra));
        if (got != cases[i].want || !strstr(flp_context_last_error(f->ctx), cases[i].mentions))
            fail_msg("case %s: got %s \"%s\", want %s mentioning \"%s\"", cases[i].name,
                     flp_status_string(got), flp_context_last_error(f->ctx),
                     flp_status_string(cases[i].want), cases[i].mentions);
        assert_int_equal(fake_runs_queued, before);
    }
}

static void test_run_before_plan(void **state) {
    fixture *f = *state;
    flp_plan *fresh;
    flp_plan_desc pd = {.max_batch_size = 4,
                        .max_pages = PAGES,
                        .num_qo_heads = HQ,
                        .num_kv_heads = HKV,
                        .head_dim = D};
    assert_int_equal(flp_plan_create(f->ctx, &pd, &fresh), FLP_OK);
    assert_int_equal(flp_decode_run(f->ctx, fresh, &f->ra), FLP_ERROR_INVALID_ARGUMENT);
    assert_non_null(strstr(flp_context_last_error(f->ctx), "flp_decode_plan first"));
    assert_int_equal(flp_decode_run(f->ctx, NULL, &f->ra), FLP_ERROR_INVALID_ARGUMENT);
    assert_int_equal(flp_decode_run(f->ctx, fresh, NULL), FLP_ERROR_INVALID_ARGUMENT);
    assert_int_equal(flp_decode_run(NULL, fresh, &f->ra), FLP_ERROR_INVALID_ARGUMENT);
    flp_plan_destroy(fresh);
}

static void test_buffer_ranges(void **state) {
    fixture *f = *state;
    char bytes[16] = {0};
    assert_int_equal(flp_buffer_write(f->ctx, f->q_buf, B * HQ * D * 2 - 8, bytes, 16),
                     FLP_ERROR_INVALID_ARGUMENT);
    assert_non_null(strstr(flp_context_last_error(f->ctx), "exceeds"));
    assert_int_equal(flp_buffer_read(f->ctx, f->q_buf, 0, NULL, 16), FLP_ERROR_INVALID_ARGUMENT);
    flp_buffer *b = (flp_buffer *)0x1;
    flp_buffer_desc bd = {0};
    assert_int_equal(flp_buffer_create(f->ctx, &bd, &b), FLP_ERROR_INVALID_ARGUMENT);
    assert_null(b);
    bd.size = (size_t)1 << 31;
    assert_int_equal(flp_buffer_create(f->ctx, &bd, &b), FLP_ERROR_OUT_OF_MEMORY);
    flp_buffer_destroy(NULL);
    flp_plan_destroy(NULL);
    flp_context_destroy(NULL);
}

/* A decode run whose out shares bytes with an input, with lse or with the plan's memory is
 * refused naming both tensors; K and V interleaved per page (the fixture) are inputs and fine. */
static void test_outputs_must_not_alias(void **state) {
    fixture *f = *state;
    assert_int_equal(flp_decode_plan(f->ctx, f->plan, &f->pa), FLP_OK);
    int before = fake_runs_queued;
    flp_decode_run_args ra = f->ra;
    ra.out = ra.q; /* in place */
    assert_int_equal(flp_decode_run(f->ctx, f->plan, &ra), FLP_ERROR_INVALID_ARGUMENT);
    const char *msg = flp_context_last_error(f->ctx);
    if (!strstr(msg, "out (bytes 0..") || !strstr(msg, "overlaps q (bytes 0.."))
        fail_msg("aliasing out and q: \"%s\"", msg);

    /* lse inside out's bytes (an f32 view of the output buffer) */
    ra = f->ra;
    int64_t lse_shape[2] = {B, HQ};
    flp_tensor lse = flp_tensor_contiguous(f->o_buf, 64, FLP_DTYPE_F32, 2, lse_shape);
    ra.lse = &lse;
    assert_int_equal(flp_decode_run(f->ctx, f->plan, &ra), FLP_ERROR_INVALID_ARGUMENT);
    assert_non_null(strstr(flp_context_last_error(f->ctx), "overlaps lse"));

    /* out over the K/V pool: an output may not overwrite the cache it reads */
    ra = f->ra;
    ra.out.buf = f->kv_buf;
    assert_int_equal(flp_decode_run(f->ctx, f->plan, &ra), FLP_ERROR_INVALID_ARGUMENT);
    assert_non_null(strstr(flp_context_last_error(f->ctx), "overlaps k_cache"));
    assert_int_equal(fake_runs_queued, before);

    /* the interleaved K/V views of the fixture and a separate out buffer run */
    assert_int_equal(flp_decode_run(f->ctx, f->plan, &f->ra), FLP_OK);
    assert_int_equal(fake_runs_queued, before + 1);
}

/* A plan in a caller's workspace: an output in the same buffer must stay outside the plan's
 * bytes. */
static void test_outputs_outside_plan_memory(void **state) {
    fixture *f = *state;
    flp_plan_desc pd = {.max_batch_size = 4,
                        .max_pages = PAGES,
                        .num_qo_heads = HQ,
                        .num_kv_heads = HKV,
                        .head_dim = D};
    size_t need = 0;
    assert_int_equal(flp_plan_workspace_size(f->ctx, &pd, &need), FLP_OK);
    size_t out_bytes = (size_t)B * HQ * D * 2;
    flp_buffer *ws;
    flp_buffer_desc bd = {FLP_ALIGN_UP(need, 256) + out_bytes};
    assert_int_equal(flp_buffer_create(f->ctx, &bd, &ws), FLP_OK);
    pd.workspace = ws;
    flp_plan *plan;
    assert_int_equal(flp_plan_create(f->ctx, &pd, &plan), FLP_OK);
    assert_int_equal(flp_decode_plan(f->ctx, plan, &f->pa), FLP_OK);
    flp_decode_run_args ra = f->ra;
    int64_t q_shape[3] = {B, HQ, D};
    ra.out = flp_tensor_contiguous(ws, 256, FLP_DTYPE_BF16, 3, q_shape);
    assert_int_equal(flp_decode_run(f->ctx, plan, &ra), FLP_ERROR_INVALID_ARGUMENT);
    assert_non_null(strstr(flp_context_last_error(f->ctx), "overlaps the plan's memory"));
    ra.out.offset = FLP_ALIGN_UP(need, 256); /* after the plan: fine */
    assert_int_equal(flp_decode_run(f->ctx, plan, &ra), FLP_OK);
    flp_plan_destroy(plan);
    flp_buffer_destroy(ws);
}

/* Tensors are checked at their device address: a buffer that starts off a 16-byte boundary (a
 * wrapped caller allocation) cannot hold a q read with 16-byte loads, nor lse off 4 bytes. */
static void test_device_address_alignment(void **state) {
    fixture *f = *state;
    assert_int_equal(flp_decode_plan(f->ctx, f->plan, &f->pa), FLP_OK);
    const uint64_t real = f->q_buf->device_address;
    f->q_buf->device_address = real + 8;
    flp_status got = flp_decode_run(f->ctx, f->plan, &f->ra);
    f->q_buf->device_address = real;
    assert_int_equal(got, FLP_ERROR_INVALID_ARGUMENT);
    assert_non_null(strstr(flp_context_last_error(f->ctx), "q starts at device address"));
    assert_non_null(strstr(flp_context_last_error(f->ctx), "multiple of 16 bytes"));
    flp_decode_run_args ra = f->ra;
    flp_tensor lse = f->lse;
    ra.lse = &lse;
    const uint64_t lse_real = f->lse_buf->device_address;
    f->lse_buf->device_address = lse_real + 2;
    got = flp_decode_run(f->ctx, f->plan, &ra);
    f->lse_buf->device_address = lse_real;
    assert_int_equal(got, FLP_ERROR_INVALID_ARGUMENT);
    assert_non_null(strstr(flp_context_last_error(f->ctx), "lse starts at device address"));
    assert_non_null(strstr(flp_context_last_error(f->ctx), "multiple of 4 bytes"));
}

/* One head-dim rule everywhere: 64/128/256 run; other multiples of 16 up to 256 are
 * FLP_ERROR_UNSUPPORTED (the JIT path); anything else is invalid. */
static void test_head_dim_rule(void **state) {
    fixture *f = *state;
    flp_plan *plan = NULL;
    flp_plan_desc pd = {.max_batch_size = 1, .max_pages = 1, .num_qo_heads = 1, .num_kv_heads = 1};
    const struct {
        int32_t head_dim;
        flp_status want;
    } cases[] = {{64, FLP_OK},
                 {128, FLP_OK},
                 {256, FLP_OK},
                 {80, FLP_ERROR_UNSUPPORTED},
                 {16, FLP_ERROR_UNSUPPORTED},
                 {0, FLP_ERROR_INVALID_ARGUMENT},
                 {72, FLP_ERROR_INVALID_ARGUMENT},
                 {272, FLP_ERROR_INVALID_ARGUMENT}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char expect[32];
        snprintf(expect, sizeof expect, "head_dim = %d", cases[i].head_dim);
        pd.head_dim = cases[i].head_dim;
        assert_int_equal(flp_plan_create(f->ctx, &pd, &plan), cases[i].want);
        if (cases[i].want == FLP_OK) {
            flp_plan_destroy(plan);
        } else {
            assert_null(plan);
            assert_non_null(strstr(flp_context_last_error(f->ctx), expect));
        }
        char msg[256];
        flp_variant v = {.head_dim = cases[i].head_dim};
        assert_int_equal(flp_variant_validate(&v, msg, sizeof msg), cases[i].want);
        if (cases[i].want != FLP_OK)
            assert_non_null(strstr(msg, expect));
    }
    /* the KV append applies the same rule to its cache's last dimension */
    flp_buffer *buf;
    flp_buffer_desc bd = {1 << 16};
    assert_int_equal(flp_buffer_create(f->ctx, &bd, &buf), FLP_OK);
    int64_t cache_shape[4] = {2, 4, 1, 80}, row_shape[3] = {1, 1, 80}, idx_shape[1] = {1},
            indptr_shape[1] = {2};
    flp_kv_append_args a = {
        .k = flp_tensor_contiguous(buf, 0, FLP_DTYPE_F16, 3, row_shape),
        .v = flp_tensor_contiguous(buf, 256, FLP_DTYPE_F16, 3, row_shape),
        .batch_indices = flp_tensor_contiguous(buf, 512, FLP_DTYPE_I32, 1, idx_shape),
        .positions = flp_tensor_contiguous(buf, 528, FLP_DTYPE_I32, 1, idx_shape),
        .kv_indptr = flp_tensor_contiguous(buf, 544, FLP_DTYPE_I32, 1, indptr_shape),
        .kv_indices = flp_tensor_contiguous(buf, 560, FLP_DTYPE_I32, 1, idx_shape),
        .k_cache = flp_tensor_contiguous(buf, 4096, FLP_DTYPE_F16, 4, cache_shape),
        .v_cache = flp_tensor_contiguous(buf, 8192, FLP_DTYPE_F16, 4, cache_shape),
    };
    int before = fake_runs_queued;
    assert_int_equal(flp_kv_append(f->ctx, &a), FLP_ERROR_UNSUPPORTED);
    assert_non_null(strstr(flp_context_last_error(f->ctx), "k_cache head_dim = 80"));
    assert_int_equal(fake_runs_queued, before);
    flp_buffer_destroy(buf);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_status_strings),
        cmocka_unit_test(test_variant_validation),
        cmocka_unit_test(test_alibi_standard_slopes),
        cmocka_unit_test_setup_teardown(test_plan_desc_validation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_workspace, setup, teardown),
        cmocka_unit_test_setup_teardown(test_plan_uploads_page_table_and_schedule, setup, teardown),
        cmocka_unit_test_setup_teardown(test_run_hands_backend_the_views, setup, teardown),
        cmocka_unit_test_setup_teardown(test_replan_keeps_launch_shape, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_arguments_are_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_run_before_plan, setup, teardown),
        cmocka_unit_test_setup_teardown(test_buffer_ranges, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outputs_must_not_alias, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outputs_outside_plan_memory, setup, teardown),
        cmocka_unit_test_setup_teardown(test_device_address_alignment, setup, teardown),
        cmocka_unit_test_setup_teardown(test_head_dim_rule, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
