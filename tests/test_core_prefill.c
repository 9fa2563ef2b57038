/* The prefill and KV-append front ends on the host fake backend: the partition flp_prefill_plan
 * uploads (every keepable (row, key) pair of every request and KV head covered exactly once,
 * masked tiles never scheduled, split chunks and merge items consistent, capacities held over
 * random batches), what flp_prefill_run and flp_kv_append hand the backend, and refusals; the
 * decode kernel choice and the matrix decode kernel's prefill partition. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/plan.h"
#include "tests/fake_backend.h"
#include "tests/test_util.h"

enum { MAX_BATCH = 6, MAX_ROWS = 256, D = 64 };

typedef struct batch {
    int32_t batch_size, num_qo_heads, num_kv_heads;
    int32_t qo_indptr[MAX_BATCH + 1], kv_indptr[MAX_BATCH + 1]; /* ragged KV */
    flp_variant variant;
} batch;

static void random_batch(test_rng *rng, batch *b) {
    static const int32_t heads[][2] = {{4, 4}, {8, 2}, {6, 2}, {8, 1}};
    const int32_t *h = heads[test_rng_int(rng, 0, 3)];
    memset(b, 0, sizeof *b);
    b->num_qo_heads = h[0];
    b->num_kv_heads = h[1];
    b->batch_size = test_rng_int(rng, 1, MAX_BATCH);
    int32_t rows_left = MAX_ROWS / b->batch_size;
    for (int32_t r = 0; r < b->batch_size; r++) {
        int32_t qo = test_rng_int(rng, 0, 3) == 0 ? 0 : test_rng_int(rng, 1, rows_left);
        int32_t kv = qo + (test_rng_int(rng, 0, 1) ? 0 : test_rng_int(rng, 0, 1500));
        b->qo_indptr[r + 1] = b->qo_indptr[r] + qo;
        b->kv_indptr[r + 1] = b->kv_indptr[r] + kv;
    }
    b->variant.head_dim = D;
    b->variant.mask = test_rng_int(rng, 0, 1) ? FLP_MASK_CAUSAL : FLP_MASK_NONE;
    b->variant.use_window = test_rng_int(rng, 0, 2) == 0;
    b->variant.window_left = test_rng_int(rng, 0, 300);
}

static flp_plan *make_plan(flp_context *ctx, const batch *b) {
    flp_plan_desc pd = {.max_batch_size = MAX_BATCH,
                        .max_pages = 64,
                        .max_qo_rows = MAX_ROWS,
                        .num_qo_heads = b->num_qo_heads,
                        .num_kv_heads = b->num_kv_heads,
                        .head_dim = D};
    flp_plan *plan = NULL;
    assert_int_equal(flp_plan_create(ctx, &pd, &plan), FLP_OK);
    return plan;
}

static flp_status plan_batch(flp_context *ctx, flp_plan *plan, const batch *b) {
    flp_prefill_plan_args pa = {.batch_size = b->batch_size,
                                .qo_indptr = b->qo_indptr,
                                .kv_storage = FLP_KV_RAGGED,
                                .kv_indptr = b->kv_indptr,
                                .variant = b->variant};
    return flp_prefill_plan(ctx, plan, &pa);
}

/* The uploaded prefill region, read back from the fake device memory. */
static const int32_t *region(const flp_plan *plan) {
    return (const int32_t *)((const char *)plan->buffer->native + plan->base +
                             plan->prefill.layout.info);
}

/* Keys row p of request r may keep: [*lo, *hi). */
static void keepable(const batch *b, const flp_prefill_plan_info *info, int32_t r, int32_t p,
                     int32_t *lo, int32_t *hi) {
    int32_t qo = b->qo_indptr[r + 1] - b->qo_indptr[r], kv = b->kv_indptr[r + 1] - b->kv_indptr[r];
    int32_t pos = kv - qo + p / info->group_size;
    *hi = b->variant.mask == FLP_MASK_CAUSAL ? pos + 1 : kv;
    *lo = b->variant.use_window && pos - b->variant.window_left > 0 ? pos - b->variant.window_left
                                                                    : 0;
}

/* Every keepable (request, head, row, key) covered exactly once; rows inside their request. */
static void check_coverage(const batch *b, const flp_prefill_plan_info *info, const int32_t *items,
                           int32_t n) {
    for (int32_t r = 0; r < b->batch_size; r++) {
        int32_t rows = (b->qo_indptr[r + 1] - b->qo_indptr[r]) * info->group_size;
        int32_t kv = b->kv_indptr[r + 1] - b->kv_indptr[r];
        uint8_t *seen = calloc((size_t)rows * (size_t)kv + 1, 1); /* [rows][kv] per head */
        for (int32_t g = 0; g < b->num_kv_heads; g++) {
            memset(seen, 0, (size_t)rows * (size_t)kv + 1);
            for (int32_t i = 0; i < n; i++) {
                const int32_t *it = items + FLP_PREFILL_ITEM_INTS * i;
                if (it[FLP_PITEM_REQUEST] != r || it[FLP_PITEM_KV_HEAD] != g)
                    continue;
                assert_true(0 <= it[FLP_PITEM_ROW_BEGIN] &&
                            it[FLP_PITEM_ROW_BEGIN] < it[FLP_PITEM_ROW_END]);
                assert_true(it[FLP_PITEM_ROW_END] <= rows);
                assert_true(0 <= it[FLP_PITEM_KV_BEGIN] &&
                            it[FLP_PITEM_KV_BEGIN] <= it[FLP_PITEM_KV_END]);
                assert_true(it[FLP_PITEM_KV_END] <= kv);
                for (int32_t p = it[FLP_PITEM_ROW_BEGIN]; p < it[FLP_PITEM_ROW_END]; p++) {
                    int32_t lo, hi;
                    keepable(b, info, r, p, &lo, &hi);
                    for (int32_t t = it[FLP_PITEM_KV_BEGIN]; t < it[FLP_PITEM_KV_END]; t++)
                        if (t >= lo && t < hi)
                            seen[(size_t)p * (size_t)kv + (size_t)t]++;
                }
            }
            for (int32_t p = 0; p < rows; p++) {
                int32_t lo, hi;
                keepable(b, info, r, p, &lo, &hi);
                for (int32_t t = lo; t < hi; t++)
                    if (seen[(size_t)p * (size_t)kv + (size_t)t] != 1)
                        fail_msg("request %d head %d row %d key %d covered %d times (seed %llu)", r,
                                 g, p, t, seen[(size_t)p * (size_t)kv + (size_t)t],
                                 (unsigned long long)test_seed());
            }
        }
        free(seen);
    }
}

/* Split chunks: one slot each, tiles <= FLP_PREFILL_MAX_TILE rows, merge items name same-row
 * chunks in ascending contiguous key order. */
static void check_splits(const flp_plan *plan, const flp_prefill_plan_info *info,
                         const int32_t *items, int32_t n, const int32_t *merges) {
    int32_t slots = plan->prefill.max_slots;
    const int32_t **by_slot = calloc((size_t)slots, sizeof *by_slot);
    for (int32_t i = 0; i < n; i++) {
        const int32_t *it = items + FLP_PREFILL_ITEM_INTS * i;
        int32_t s = it[FLP_PITEM_PARTIAL_SLOT];
        assert_true(it[FLP_PITEM_ROW_END] - it[FLP_PITEM_ROW_BEGIN] <= info->q_tile);
        if (s < 0)
            continue;
        assert_true(s < slots);
        assert_null(by_slot[s]);
        by_slot[s] = it;
    }
    assert_true(info->num_merge_items <= plan->prefill.max_merges);
    for (int32_t m = 0; m < info->num_merge_items; m++) {
        const int32_t *mi = merges + FLP_MERGE_ITEM_INTS * m;
        assert_true(mi[FLP_MITEM_CHUNKS] >= 2);
        int32_t next_key = -1;
        for (int32_t c = 0; c < mi[FLP_MITEM_CHUNKS]; c++) {
            const int32_t *it = by_slot[mi[FLP_MITEM_FIRST_SLOT] + c];
            assert_non_null(it);
            assert_int_equal(it[FLP_PITEM_REQUEST], mi[FLP_MITEM_REQUEST]);
            assert_int_equal(it[FLP_PITEM_KV_HEAD], mi[FLP_MITEM_KV_HEAD]);
            assert_int_equal(it[FLP_PITEM_ROW_BEGIN], mi[FLP_MITEM_ROW_BEGIN]);
            assert_int_equal(it[FLP_PITEM_ROW_END], mi[FLP_MITEM_ROW_END]);
            if (next_key >= 0)
                assert_int_equal(it[FLP_PITEM_KV_BEGIN], next_key);
            next_key = it[FLP_PITEM_KV_END];
        }
    }
    free(by_slot);
}

static void test_partition_random_batches(void **state) {
    (void)state;
    flp_context *ctx = fake_context();
    test_rng rng;
    test_rng_init(&rng, 0x9e3779b97f4a7c15ull);
    int split_seen = 0;
    for (int trial = 0; trial < 300; trial++) {
        batch b;
        random_batch(&rng, &b);
        flp_plan *plan = make_plan(ctx, &b);
        assert_int_equal(plan_batch(ctx, plan, &b), FLP_OK);
        const int32_t *words = region(plan);
        const flp_prefill_plan_info *info = (const flp_prefill_plan_info *)words;
        assert_int_equal(info->batch_size, b.batch_size);
        assert_int_equal(info->group_size, b.num_qo_heads / b.num_kv_heads);
        assert_int_equal(info->num_ctas, FAKE_PREFILL_GRID);
        assert_true(info->q_tile == 16 || info->q_tile == 64 || info->q_tile == 128);
        assert_int_equal(info->flags & FLP_FLAG_PAGED, 0);
        const int32_t *indptr = words + info->off_work_indptr;
        assert_int_equal(indptr[0], 0);
        for (int32_t c = 0; c < FAKE_PREFILL_GRID; c++)
            assert_true(indptr[c] <= indptr[c + 1]);
        int32_t n = indptr[FAKE_PREFILL_GRID];
        assert_true(n <= plan->prefill.max_items);
        check_coverage(&b, info, words + info->off_work_items, n);
        check_splits(plan, info, words + info->off_work_items, n, words + info->off_merge_items);
        split_seen += info->num_merge_items > 0;
        flp_plan_destroy(plan);
    }
    assert_true(split_seen > 10); /* the random batches do exercise splitting */
    flp_context_destroy(ctx);
}

/* A prompt: the causal mask keeps the lower triangle only, so bottom tiles read more keys. */
static void test_causal_clipping(void **state) {
    (void)state;
    flp_context *ctx = fake_context();
    batch b = {.batch_size = 1, .num_qo_heads = 4, .num_kv_heads = 4};
    b.qo_indptr[1] = 200;
    b.kv_indptr[1] = 200;
    b.variant = (flp_variant){.head_dim = D, .mask = FLP_MASK_CAUSAL};
    flp_plan *plan = make_plan(ctx, &b);
    assert_int_equal(plan_batch(ctx, plan, &b), FLP_OK);
    const int32_t *words = region(plan);
    const flp_prefill_plan_info *info = (const flp_prefill_plan_info *)words;
    assert_int_equal(info->q_tile, 128);
    const int32_t *items = words + info->off_work_items;
    for (int32_t i = 0; i < words[info->off_work_indptr + FAKE_PREFILL_GRID]; i++) {
        const int32_t *it = items + FLP_PREFILL_ITEM_INTS * i;
        if (it[FLP_PITEM_PARTIAL_SLOT] < 0 || it[FLP_PITEM_KV_END] < 200)
            assert_true(it[FLP_PITEM_KV_END] <= it[FLP_PITEM_ROW_END]); /* group 1: row = pos */
    }
    flp_plan_destroy(plan);
    flp_context_destroy(ctx);
}

/* What run hands the backend for a paged HND cache with a custom mask and lse. */
static void test_run_launch(void **state) {
    (void)state;
    flp_context *ctx = fake_context();
    enum { HQ = 4, HKV = 2, PAGE = 4, PAGES = 5, ROWS = 7 };
    flp_plan_desc pd = {.max_batch_size = 2,
                        .max_pages = 8,
                        .max_qo_rows = 16,
                        .num_qo_heads = HQ,
                        .num_kv_heads = HKV,
                        .head_dim = D};
    flp_plan *plan = NULL;
    assert_int_equal(flp_plan_create(ctx, &pd, &plan), FLP_OK);
    int32_t qo[3] = {0, 3, ROWS}, kv[3] = {0, 2, 5}, idx[5] = {4, 0, 1, 2, 3}, last[2] = {4, 1};
    int32_t mask_indptr[2] = {0, 3}; /* request 0: 3 x 8 bits; request 1: 4 x 9 bits */
    flp_prefill_plan_args pa = {.batch_size = 2,
                                .qo_indptr = qo,
                                .kv_storage = FLP_KV_PAGED,
                                .kv_indptr = kv,
                                .kv_indices = idx,
                                .kv_last_page_len = last,
                                .page_size = PAGE,
                                .kv_layout = FLP_KV_LAYOUT_HND,
                                .mask_indptr = mask_indptr,
                                .variant = {.head_dim = D, .mask = FLP_MASK_CUSTOM}};
    assert_int_equal(flp_prefill_plan(ctx, plan, &pa), FLP_OK);

    flp_buffer *buf = NULL;
    flp_buffer_desc bd = {1 << 20};
    assert_int_equal(flp_buffer_create(ctx, &bd, &buf), FLP_OK);
    int64_t q_shape[3] = {ROWS, HQ, D}, kv_shape[4] = {PAGES, HKV, PAGE, D},
            lse_shape[2] = {ROWS, HQ};
    int64_t mask_shape[1] = {3 + 5};
    flp_tensor lse = flp_tensor_contiguous(buf, 0x30000, FLP_DTYPE_F32, 2, lse_shape);
    flp_tensor mask = flp_tensor_contiguous(buf, 0x38000, FLP_DTYPE_U8, 1, mask_shape);
    flp_prefill_run_args ra = {
        .q = flp_tensor_contiguous(buf, 0, FLP_DTYPE_F16, 3, q_shape),
        .k = flp_tensor_contiguous(buf, 0x10000, FLP_DTYPE_F16, 4, kv_shape),
        .v = flp_tensor_contiguous(buf, 0x20000, FLP_DTYPE_F16, 4, kv_shape),
        .out = flp_tensor_contiguous(buf, 0x8000, FLP_DTYPE_F16, 3, q_shape),
        .lse = &lse,
        .custom_mask = &mask,
    };
    int before = fake_runs_queued;
    assert_int_equal(flp_prefill_run(ctx, plan, &ra), FLP_OK);
    assert_int_equal(fake_runs_queued, before + 1);
    const flp_prefill_launch *l = &fake_last_prefill;
    uint64_t base = buf->device_address;
    assert_true(l->params.q == base && l->params.o == base + 0x8000);
    assert_true(l->params.k == base + 0x10000 && l->params.v == base + 0x20000);
    assert_true(l->params.lse == base + 0x30000 && l->params.mask == base + 0x38000);
    assert_int_equal(l->params.k_stride_page, HKV * PAGE * D);
    assert_int_equal(l->params.k_stride_slot, D); /* HND: slot is dimension 2 */
    assert_int_equal(l->params.k_stride_head, PAGE * D);
    assert_int_equal(l->params.q_stride_row, HQ * D);
    assert_int_equal(l->params.lse_stride_row, HQ);
    assert_int_equal(l->num_ctas, FAKE_PREFILL_GRID);
    assert_int_equal(l->head_dim, D);
    assert_int_equal(l->q_dtype, FLP_DTYPE_F16);
    assert_true(l->slot.offset != plan->base + plan->layout.params_slot);
    assert_int_equal(l->slot.offset % 256, 0);
    /* the schedule view is the plan's host mirror as uploaded */
    assert_int_equal(l->schedule.num_merge_items, plan->prefill.state.num_merge_items);
    assert_int_equal(l->schedule.qo_indptr[1], 3);
    assert_int_equal(l->schedule.kv_len[1], (3 - 1) * PAGE + 1);
    assert_int_equal(l->schedule.keys.group_size, HQ / HKV);
    const flp_prefill_plan_info *info = (const flp_prefill_plan_info *)region(plan);
    assert_int_equal(l->params.plan,
                     plan->buffer->device_address + plan->base + plan->prefill.layout.info);
    assert_int_equal(info->flags & (FLP_FLAG_PAGED | FLP_FLAG_CUSTOM_MASK),
                     FLP_FLAG_PAGED | FLP_FLAG_CUSTOM_MASK);
    assert_int_equal(info->page_size, PAGE);

    /* Mask one byte short: 3 + ceil(4 * 9 / 8) = 8 bytes are needed. */
    mask.shape[0] = 7;
    assert_int_equal(flp_prefill_run(ctx, plan, &ra), FLP_ERROR_INVALID_ARGUMENT);
    assert_non_null(strstr(flp_context_last_error(ctx), "custom_mask has 7 bytes"));
    /* Page 4 is referenced: a cache of 4 pages is refused. */
    mask.shape[0] = 8;
    ra.k.shape[0] = ra.v.shape[0] = 4;
    assert_int_equal(flp_prefill_run(ctx, plan, &ra), FLP_ERROR_INVALID_ARGUMENT);
    assert_non_null(strstr(flp_context_last_error(ctx), "page 4"));
    assert_int_equal(fake_runs_queued, before + 1);
    flp_buffer_destroy(buf);
    flp_plan_destroy(plan);
    flp_context_destroy(ctx);
}

static void test_plan_refusals(void **state) {
    (void)state;
    flp_context *ctx = fake_context();
    batch b = {.batch_size = 2, .num_qo_heads = 4, .num_kv_heads = 2};
    int32_t qo[3] = {0, 5, 9}, kv[3] = {0, 5, 8};
    memcpy(b.qo_indptr, qo, sizeof qo);
    memcpy(b.kv_indptr, kv, sizeof kv);
    b.variant = (flp_variant){.head_dim = D};
    flp_plan *plan = make_plan(ctx, &b);
    assert_int_equal(plan_batch(ctx, plan, &b), FLP_ERROR_INVALID_ARGUMENT);
    assert_non_null(strstr(flp_context_last_error(ctx), "request 1 has qo_len = 4 > kv_len = 3"));
    b.kv_indptr[2] = 12;
    b.qo_indptr[1] = 10;
    assert_int_equal(plan_batch(ctx, plan, &b), FLP_ERROR_INVALID_ARGUMENT);
    assert_non_null(strstr(flp_context_last_error(ctx), "qo_indptr decreases at request 1"));
    b.qo_indptr[1] = 5;
    b.qo_indptr[2] = MAX_ROWS + 1;
    b.kv_indptr[2] = MAX_ROWS + 10;
    assert_int_equal(plan_batch(ctx, plan, &b), FLP_ERROR_CAPACITY);
    assert_non_null(strstr(flp_context_last_error(ctx), "max_qo_rows"));
    flp_plan_destroy(plan);

    /* A decode-only plan refuses prefill. */
    flp_plan_desc pd = {
        .max_batch_size = 2, .max_pages = 4, .num_qo_heads = 4, .num_kv_heads = 2, .head_dim = D};
    assert_int_equal(flp_plan_create(ctx, &pd, &plan), FLP_OK);
    b.qo_indptr[2] = 9;
    assert_int_equal(plan_batch(ctx, plan, &b), FLP_ERROR_CAPACITY);
    assert_non_null(strstr(flp_context_last_error(ctx), "max_qo_rows = 0"));
    flp_plan_destroy(plan);
    flp_context_destroy(ctx);
}

/* The decode kernel a plan resolves: AUTO picks MATRIX from FLP_DECODE_MATRIX_MIN_ROWS query
 * rows per KV head; an unknown value is refused naming it. */
static void test_decode_kernel_choice(void **state) {
    (void)state;
    flp_context *ctx = fake_context();
    static const struct {
        int32_t hq, hkv, max_qo_len;
        flp_decode_kernel asked;
        bool matrix;
    } cases[] = {
        {8, 2, 1, FLP_DECODE_KERNEL_AUTO, false},  {8, 2, 2, FLP_DECODE_KERNEL_AUTO, false},
        {8, 1, 1, FLP_DECODE_KERNEL_AUTO, false},  {8, 1, 2, FLP_DECODE_KERNEL_AUTO, true},
        {9, 1, 1, FLP_DECODE_KERNEL_AUTO, true},   {8, 1, 1, FLP_DECODE_KERNEL_VECTOR, false},
        {4, 4, 1, FLP_DECODE_KERNEL_MATRIX, true}, {7, 1, 2, FLP_DECODE_KERNEL_AUTO, true},
        {7, 1, 1, FLP_DECODE_KERNEL_AUTO, false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        flp_plan_desc pd = {.max_batch_size = 3,
                            .max_qo_len = cases[i].max_qo_len,
                            .max_pages = 8,
                            .num_qo_heads = cases[i].hq,
                            .num_kv_heads = cases[i].hkv,
                            .head_dim = D,
                            .decode_kernel = cases[i].asked};
        flp_plan *plan = NULL;
        assert_int_equal(flp_plan_create(ctx, &pd, &plan), FLP_OK);
        flp_plan_summary s;
        flp_plan_summarize(plan, &s);
        if (s.decode_matrix != cases[i].matrix)
            fail_msg("case %zu: %d/%d heads, max_qo_len %d, asked %d: decode_matrix %d", i,
                     cases[i].hq, cases[i].hkv, cases[i].max_qo_len, (int)cases[i].asked,
                     (int)s.decode_matrix);
        assert_int_equal(s.decode_ctas, cases[i].matrix ? FAKE_PREFILL_GRID : FAKE_DECODE_GRID);
        flp_plan_destroy(plan);
    }
    flp_plan_desc pd = {.max_batch_size = 3,
                        .max_pages = 8,
                        .num_qo_heads = 4,
                        .num_kv_heads = 4,
                        .head_dim = D,
                        .decode_kernel = (flp_decode_kernel)7};
    flp_plan *plan = NULL;
    assert_int_equal(flp_plan_create(ctx, &pd, &plan), FLP_ERROR_INVALID_ARGUMENT);
    assert_non_null(strstr(flp_context_last_error(ctx), "decode_kernel = 7"));
    assert_null(plan);
    flp_context_destroy(ctx);
}

/* A decode batch on the matrix kernel: its own prefill partition (qo_len rows per request, the
 * decode page table), launched through the prefill kernel; a prefill plan on the same plan
 * object leaves it alone; the regions do not overlap. */
static void test_matrix_decode_partition(void **state) {
    (void)state;
    flp_context *ctx = fake_context();
    enum { HQ = 8, HKV = 2, PAGE = 4, PAGES = 6, QO = 3, B = 2 };
    flp_plan_desc pd = {.max_batch_size = 4,
                        .max_qo_len = 4,
                        .max_pages = 8,
                        .max_qo_rows = 32,
                        .num_qo_heads = HQ,
                        .num_kv_heads = HKV,
                        .head_dim = D,
                        .decode_kernel = FLP_DECODE_KERNEL_MATRIX};
    flp_plan *plan = NULL;
    assert_int_equal(flp_plan_create(ctx, &pd, &plan), FLP_OK);
    size_t bytes = 0;
    assert_int_equal(flp_plan_workspace_size(ctx, &pd, &bytes), FLP_OK);
    assert_int_equal(bytes, plan->layout.total);
    /* decode region (no partial scratch), prefill region, matrix decode region, in order */
    assert_int_equal(plan->layout.partial_lse, plan->layout.partial_o);
    assert_true(plan->layout.params_slot < plan->prefill.layout.info);
    assert_true(plan->prefill.layout.end <= plan->decode_rows.layout.info);
    assert_true(plan->decode_rows.layout.end <= plan->layout.total);
    assert_int_equal(plan->decode_rows.max_qo_rows, 4 * 4);

    int32_t kv[B + 1] = {0, 2, 5}, idx[5] = {5, 0, 3, 1, 2}, last[B] = {3, 4};
    flp_decode_plan_args da = {.batch_size = B,
                               .qo_len = QO,
                               .page_size = PAGE,
                               .kv_indptr = kv,
                               .kv_indices = idx,
                               .kv_last_page_len = last,
                               .variant = {.head_dim = D, .mask = FLP_MASK_CAUSAL}};
    assert_int_equal(flp_decode_plan(ctx, plan, &da), FLP_OK);
    const flp_prefill_region *r = &plan->decode_rows;
    assert_true(r->state.planned);
    assert_int_equal(r->state.total_rows, B * QO);
    assert_int_equal(r->state.max_page_id, 5);
    /* the uploaded partition, read back from the fake device */
    const uint8_t *dev = (const uint8_t *)plan->buffer->native + plan->base;
    const flp_prefill_plan_info *info = (const flp_prefill_plan_info *)(dev + r->layout.info);
    const int32_t *words = (const int32_t *)info;
    for (int32_t b = 0; b <= B; b++)
        assert_int_equal(words[info->off_qo_indptr + b], b * QO);
    assert_int_equal(words[info->off_kv_len + 1], 2 * PAGE + 4);
    for (int32_t i = 0; i < 5; i++)
        assert_int_equal(words[info->off_kv_indices + i], idx[i]);
    assert_int_equal(info->flags & (FLP_FLAG_PAGED | FLP_FLAG_CAUSAL),
                     FLP_FLAG_PAGED | FLP_FLAG_CAUSAL);
    assert_int_equal(info->group_size, HQ / HKV);

    /* a prefill plan on the same object replaces only its own partition */
    int32_t qo1[2] = {0, 2}, kv1[2] = {0, 1}, idx1[1] = {4}, last1[1] = {2};
    flp_prefill_plan_args pa = {.batch_size = 1,
                                .qo_indptr = qo1,
                                .kv_storage = FLP_KV_PAGED,
                                .kv_indptr = kv1,
                                .kv_indices = idx1,
                                .kv_last_page_len = last1,
                                .page_size = PAGE,
                                .variant = {.head_dim = D}};
    assert_int_equal(flp_prefill_plan(ctx, plan, &pa), FLP_OK);
    assert_int_equal(words[info->off_qo_indptr + 1], QO);
    assert_int_equal(words[info->off_kv_indices], idx[0]);

    flp_buffer *buf = NULL;
    flp_buffer_desc bd = {1 << 20};
    assert_int_equal(flp_buffer_create(ctx, &bd, &buf), FLP_OK);
    int64_t q_shape[3] = {B * QO, HQ, D}, kv_shape[4] = {PAGES, PAGE, HKV, D};
    flp_decode_run_args ra = {
        .q = flp_tensor_contiguous(buf, 0, FLP_DTYPE_F16, 3, q_shape),
        .k_cache = flp_tensor_contiguous(buf, 0x10000, FLP_DTYPE_F16, 4, kv_shape),
        .v_cache = flp_tensor_contiguous(buf, 0x20000, FLP_DTYPE_F16, 4, kv_shape),
        .out = flp_tensor_contiguous(buf, 0x8000, FLP_DTYPE_F16, 3, q_shape),
    };
    int before = fake_runs_queued;
    fake_last_decode.num_ctas = -1;
    assert_int_equal(flp_decode_run(ctx, plan, &ra), FLP_OK);
    assert_int_equal(fake_runs_queued, before + 1);
    assert_int_equal(fake_last_decode.num_ctas, -1); /* the vector kernel never ran */
    const flp_prefill_launch *l = &fake_last_prefill;
    assert_int_equal(l->params.plan, plan->buffer->device_address + plan->base + r->layout.info);
    assert_int_equal(l->slot.offset, plan->base + r->layout.params_slot);
    assert_int_equal(l->params.o, buf->device_address + 0x8000);
    assert_int_equal(l->params.k_stride_slot, HKV * D); /* NHD */
    assert_int_equal(l->num_ctas, FAKE_PREFILL_GRID);
    assert_int_equal(l->schedule.qo_indptr[2], B * QO);
    /* decode's run checks hold: 5 pages do not hold page id 5 */
    ra.k_cache.shape[0] = ra.v_cache.shape[0] = 5;
    assert_int_equal(flp_decode_run(ctx, plan, &ra), FLP_ERROR_INVALID_ARGUMENT);
    assert_non_null(strstr(flp_context_last_error(ctx), "flp_decode_run"));
    assert_non_null(strstr(flp_context_last_error(ctx), "page 5"));
    assert_int_equal(fake_runs_queued, before + 1);
    flp_buffer_destroy(buf);
    flp_plan_destroy(plan);
    flp_context_destroy(ctx);
}

/* A skewed decode batch on the matrix kernel (one long request among many short ones, more
 * items than half the grid, where the prefill rule would split nothing) is split by decode's
 * cost model: the long request is cut into chunks covering its keys once per head, in key
 * order, and the workgroups' loads (keys + 32 per item) end within 25% of their mean. */
static void test_matrix_decode_skewed_split(void **state) {
    (void)state;
    flp_context *ctx = fake_context();
    enum { HQ = 8, HKV = 2, PAGE = 16, B = 30, LONG = 4000, SHORT = 100 };
    int32_t kv[B + 1], last[B], idx[512];
    kv[0] = 0;
    for (int32_t b = 0; b < B; b++) {
        int32_t len = b == 0 ? LONG : SHORT;
        kv[b + 1] = kv[b] + (len + PAGE - 1) / PAGE;
        last[b] = len - (kv[b + 1] - kv[b] - 1) * PAGE;
    }
    for (int32_t i = 0; i < kv[B]; i++)
        idx[i] = i;
    flp_plan_desc pd = {.max_batch_size = B,
                        .max_pages = 512,
                        .num_qo_heads = HQ,
                        .num_kv_heads = HKV,
                        .head_dim = D,
                        .decode_kernel = FLP_DECODE_KERNEL_MATRIX};
    flp_plan *plan = NULL;
    assert_int_equal(flp_plan_create(ctx, &pd, &plan), FLP_OK);
    assert_true(2 * B * HKV >= plan->decode_rows.ctas); /* the prefill rule would not split */
    flp_decode_plan_args da = {.batch_size = B,
                               .page_size = PAGE,
                               .kv_indptr = kv,
                               .kv_indices = idx,
                               .kv_last_page_len = last,
                               .variant = {.head_dim = D}};
    assert_int_equal(flp_decode_plan(ctx, plan, &da), FLP_OK);
    const flp_prefill_region *r = &plan->decode_rows;
    const int32_t *words =
        (const int32_t *)((const char *)plan->buffer->native + plan->base + r->layout.info);
    const flp_prefill_plan_info *info = (const flp_prefill_plan_info *)words;
    const int32_t *indptr = words + info->off_work_indptr, *items = words + info->off_work_items;
    const int32_t *merges = words + info->off_merge_items;
    const int32_t ctas = r->ctas, n = indptr[ctas];
    assert_int_equal(info->num_merge_items, HKV);
    for (int32_t m = 0; m < info->num_merge_items; m++)
        assert_int_equal(merges[FLP_MERGE_ITEM_INTS * m + FLP_MITEM_REQUEST], 0);
    /* keys of every (request, head) covered once; the long request's chunks in slot order */
    int32_t covered[B][HKV] = {{0}};
    double total = 0.0, worst = 0.0;
    for (int32_t c = 0; c < ctas; c++) {
        double load = 0.0;
        for (int32_t i = indptr[c]; i < indptr[c + 1]; i++) {
            const int32_t *it = items + FLP_PREFILL_ITEM_INTS * i;
            int32_t keys = it[FLP_PITEM_KV_END] - it[FLP_PITEM_KV_BEGIN];
            covered[it[FLP_PITEM_REQUEST]][it[FLP_PITEM_KV_HEAD]] += keys;
            load += keys + 32;
            if (it[FLP_PITEM_REQUEST] == 0)
                assert_true(it[FLP_PITEM_PARTIAL_SLOT] >= 0);
            else
                assert_int_equal(it[FLP_PITEM_PARTIAL_SLOT], -1);
        }
        total += load;
        worst = load > worst ? load : worst;
    }
    for (int32_t b = 0; b < B; b++)
        for (int32_t g = 0; g < HKV; g++)
            assert_int_equal(covered[b][g], b == 0 ? LONG : SHORT);
    assert_true(n > B * HKV);
    if (worst > 1.25 * total / ctas)
        fail_msg("slowest workgroup %.0f, mean %.1f over %d", worst, total / ctas, ctas);
    flp_plan_destroy(plan);
    flp_context_destroy(ctx);
}

static void test_kv_append_params(void **state) {
    (void)state;
    flp_context *ctx = fake_context();
    enum { NNZ = 5, HKV = 2, PAGE = 16, PAGES = 3 };
    flp_buffer *buf = NULL;
    flp_buffer_desc bd = {1 << 20};
    assert_int_equal(flp_buffer_create(ctx, &bd, &buf), FLP_OK);
    int64_t rows[3] = {NNZ, HKV, D}, cache[4] = {PAGES, PAGE, HKV, D}, n[1] = {NNZ}, ip[1] = {3},
            ix[1] = {3};
    flp_kv_append_args a = {
        .k = flp_tensor_contiguous(buf, 0, FLP_DTYPE_BF16, 3, rows),
        .v = flp_tensor_contiguous(buf, 0x4000, FLP_DTYPE_BF16, 3, rows),
        .batch_indices = flp_tensor_contiguous(buf, 0x8000, FLP_DTYPE_I32, 1, n),
        .positions = flp_tensor_contiguous(buf, 0x8100, FLP_DTYPE_I32, 1, n),
        .kv_indptr = flp_tensor_contiguous(buf, 0x8200, FLP_DTYPE_I32, 1, ip),
        .kv_indices = flp_tensor_contiguous(buf, 0x8300, FLP_DTYPE_I32, 1, ix),
        .k_cache = flp_tensor_contiguous(buf, 0x10000, FLP_DTYPE_E4M3, 4, cache),
        .v_cache = flp_tensor_contiguous(buf, 0x20000, FLP_DTYPE_E4M3, 4, cache),
        .kv_layout = FLP_KV_LAYOUT_NHD,
        .k_scale = 0.5f,
    };
    int before = fake_runs_queued;
    assert_int_equal(flp_kv_append(ctx, &a), FLP_OK);
    assert_int_equal(fake_runs_queued, before + 1);
    const flp_kv_append_params *p = &fake_last_append;
    assert_int_equal(p->nnz, NNZ);
    assert_int_equal(p->page_size, PAGE);
    assert_int_equal(p->batch_size, 2);
    assert_int_equal(p->num_indices, 3);
    assert_int_equal(p->num_pages, PAGES);
    assert_int_equal(p->kc_stride_slot, HKV * D);
    assert_int_equal(p->kc_stride_head, D);
    assert_int_equal(p->src_dtype, FLP_DTYPE_BF16);
    assert_int_equal(p->cache_dtype, FLP_DTYPE_E4M3);
    assert_near(p->k_inv_scale, 2.0, 0);
    assert_near(p->v_inv_scale, 1.0, 0);

    /* Refusals name the bad value and queue nothing. */
    flp_kv_append_args bad = a;
    bad.k.dtype = FLP_DTYPE_F32;
    assert_int_equal(flp_kv_append(ctx, &bad), FLP_ERROR_INVALID_ARGUMENT);
    assert_non_null(strstr(flp_context_last_error(ctx), "k dtype f32"));
    bad = a;
    bad.positions.shape[0] = NNZ - 1;
    assert_int_equal(flp_kv_append(ctx, &bad), FLP_ERROR_INVALID_ARGUMENT);
    assert_non_null(strstr(flp_context_last_error(ctx), "positions"));
    bad = a;
    bad.v_scale = -1.0f;
    assert_int_equal(flp_kv_append(ctx, &bad), FLP_ERROR_INVALID_ARGUMENT);
    assert_non_null(strstr(flp_context_last_error(ctx), "v_scale"));
    bad = a;
    bad.kv_layout = (flp_kv_layout)7;
    assert_int_equal(flp_kv_append(ctx, &bad), FLP_ERROR_INVALID_ARGUMENT);
    assert_non_null(strstr(flp_context_last_error(ctx), "kv_layout = 7"));
    assert_int_equal(fake_runs_queued, before + 1);
    flp_buffer_destroy(buf);
    flp_context_destroy(ctx);
}

/* A plan uploads its batch up to the last work item it made, and the page ids it was given in
 * a second copy when the unused room between them exceeds 16 KiB: room it does not use stays as
 * it was on the device (poisoned here), and what it uses reads back right. */
static void test_upload_stops_at_last_item(void **state) {
    (void)state;
    flp_context *ctx = fake_context();
    enum { HQ = 8, HKV = 2, PAGE = 16, ROWS = 5 };
    flp_plan_desc pd = {.max_batch_size = 64,
                        .max_pages = 4096,
                        .max_qo_rows = 4096,
                        .num_qo_heads = HQ,
                        .num_kv_heads = HKV,
                        .head_dim = D};
    flp_plan *plan = NULL;
    assert_int_equal(flp_plan_create(ctx, &pd, &plan), FLP_OK);
    const flp_prefill_layout *l = &plan->prefill.layout;
    uint8_t *dev = (uint8_t *)plan->buffer->native + plan->base;
    memset(dev + l->info, 0xab, l->metadata_end - l->info);

    int32_t qo[2] = {0, ROWS}, kv[2] = {0, 3}, idx[3] = {4000, 7, 123}, last[1] = {9};
    flp_prefill_plan_args pa = {.batch_size = 1,
                                .qo_indptr = qo,
                                .kv_storage = FLP_KV_PAGED,
                                .kv_indptr = kv,
                                .kv_indices = idx,
                                .kv_last_page_len = last,
                                .page_size = PAGE,
                                .variant = {.head_dim = D, .mask = FLP_MASK_CAUSAL}};
    assert_int_equal(flp_prefill_plan(ctx, plan, &pa), FLP_OK);
    const flp_prefill_plan_info *info = (const flp_prefill_plan_info *)(dev + l->info);
    const int32_t *words = (const int32_t *)info;
    const int32_t items = plan->prefill.state.num_items;
    assert_true(items >= HKV);
    const size_t items_end = l->work_items + sizeof(int32_t) * FLP_PREFILL_ITEM_INTS * items;
    assert_true(l->kv_indices - items_end > (size_t)16 << 10); /* the two-copy path */
    /* the used items and the page ids as the mirror holds them */
    const uint8_t *mirror = plan->prefill.host;
    assert_memory_equal(dev + l->info, mirror, items_end - l->info);
    for (int32_t i = 0; i < 3; i++)
        assert_int_equal(words[info->off_kv_indices + i], idx[i]);
    /* the room between untouched */
    for (size_t at = items_end; at < l->kv_indices; at++)
        if (dev[at] != 0xab)
            fail_msg("byte %zu of the unused work-item room was uploaded", at - l->info);
    flp_plan_destroy(plan);
    flp_context_destroy(ctx);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_partition_random_batches),
        cmocka_unit_test(test_causal_clipping),
        cmocka_unit_test(test_run_launch),
        cmocka_unit_test(test_plan_refusals),
        cmocka_unit_test(test_decode_kernel_choice),
        cmocka_unit_test(test_matrix_decode_partition),
        cmocka_unit_test(test_matrix_decode_skewed_split),
        cmocka_unit_test(test_kv_append_params),
        cmocka_unit_test(test_upload_stops_at_last_item),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
