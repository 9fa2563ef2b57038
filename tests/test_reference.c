/* Tests of the float64 reference (core/reference.c): the golden cases, small cases worked out by
 * hand, the merge operator, ALiBi slopes, RoPE frequencies and input validation. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/reference.h"
#include "tests/golden.h"
#include "tests/test_util.h"

static double *alloc_f64(size_t n) {
    double *p = malloc(sizeof(double) * (n ? n : 1));
    assert_non_null(p);
    return p;
}

static void poison(double *x, size_t n) {
    for (size_t i = 0; i < n; ++i)
        x[i] = NAN;
}

static void assert_all_nan(const double *x, size_t n) {
    for (size_t i = 0; i < n; ++i)
        assert_true(isnan(x[i]));
}

/* ---- (a) golden cases ------------------------------------------------------------------------ */

/* Mutable arrays so that each can be a cmocka test's (non-const) state. */
static char golden_names[][32] = {
    "decode_f16_nhd_d64",  "decode_bf16_hnd_d128_gqa4",   "decode_softcap_window",
    "decode_alibi_h12",    "decode_rope_llama31",         "decode_empty_and_page1_gqa7",
    "decode_d256",         "prefill_causal_ragged",       "append_causal_paged",
    "prefill_custom_mask", "prefill_window_softcap_d256", "append_rope_alibi_scale",
};
#define NUM_GOLDEN ((int)(sizeof(golden_names) / sizeof(golden_names[0])))

/* Every case of index.json is one of the tests below, so none is silently skipped. */
static void test_golden_index(void **state) {
    (void)state;
    int count = 0;
    const char *const *names = golden_case_names(&count);
    assert_int_equal(count, NUM_GOLDEN);
    for (int i = 0; i < count; ++i)
        assert_string_equal(names[i], golden_names[i]);
}

static void test_golden_case(void **state) {
    const char *name = *state;
    golden_case c;
    assert_true(golden_load(name, &c));
    const size_t Hq = (size_t)c.num_qo_heads, Hkv = (size_t)c.num_kv_heads, D = (size_t)c.head_dim,
                 nnz = (size_t)c.nnz;

    double *q = alloc_f64(nnz * Hq * D);
    for (size_t i = 0; i < nnz * Hq * D; ++i)
        q[i] = c.q[i];

    /* Keys and values as ragged rows: gathered from the pages, or converted. */
    int32_t *kv_tokens = calloc((size_t)c.batch + 1, sizeof(int32_t));
    assert_non_null(kv_tokens);
    size_t nnz_kv = 0;
    for (int32_t b = 0; b < c.batch; ++b)
        nnz_kv += (size_t)c.kv_lens[b];
    double *k = alloc_f64(nnz_kv * Hkv * D), *v = alloc_f64(nnz_kv * Hkv * D);
    poison(k, nnz_kv * Hkv * D);
    poison(v, nnz_kv * Hkv * D);
    if (c.paged) {
        assert_int_equal(flp_ref_gather_paged(c.batch, c.num_kv_heads, c.head_dim, c.page_size,
                                              c.kv_layout, c.num_pages, c.k, c.kv_indptr,
                                              c.kv_indices, c.kv_last_page_len, kv_tokens, k),
                         FLP_OK);
        assert_int_equal(flp_ref_gather_paged(c.batch, c.num_kv_heads, c.head_dim, c.page_size,
                                              c.kv_layout, c.num_pages, c.v, c.kv_indptr,
                                              c.kv_indices, c.kv_last_page_len, kv_tokens, v),
                         FLP_OK);
        for (int32_t b = 0; b < c.batch; ++b)
            assert_int_equal(kv_tokens[b + 1] - kv_tokens[b], c.kv_lens[b]);
    } else {
        memcpy(kv_tokens, c.kv_indptr, sizeof(int32_t) * ((size_t)c.batch + 1));
        for (size_t i = 0; i < nnz_kv * Hkv * D; ++i) {
            k[i] = c.k[i];
            v[i] = c.v[i];
        }
    }
    for (size_t i = 0; i < nnz_kv * Hkv * D; ++i)
        assert_false(isnan(k[i]) || isnan(v[i])); /* every gathered element written */

    /* The expected results use the standard ALiBi slopes in float64 (alibi_slopes NULL here);
     * the case's alibi_slopes file holds them rounded to float32, as kernels receive them, and is
     * checked below. */
    const flp_ref_attention a = {
        .batch_size = c.batch,
        .num_qo_heads = c.num_qo_heads,
        .num_kv_heads = c.num_kv_heads,
        .head_dim = c.head_dim,
        .qo_indptr = c.qo_indptr,
        .kv_indptr = kv_tokens,
        .q = q,
        .k = k,
        .v = v,
        .mask = c.custom_mask ? FLP_MASK_CUSTOM
                : c.causal    ? FLP_MASK_CAUSAL
                              : FLP_MASK_NONE,
        .custom_mask = c.mask,
        .mask_indptr = c.mask_indptr,
        .use_window = c.use_window,
        .window_left = c.window_left,
        .logits_soft_cap = c.logits_soft_cap,
        .sm_scale = c.sm_scale,
        .pos_encoding = c.rope    ? FLP_POS_ROPE_LLAMA
                        : c.alibi ? FLP_POS_ALIBI
                                  : FLP_POS_NONE,
        .rope = c.rope_params,
    };
    double *out = alloc_f64(nnz * Hq * D), *lse = alloc_f64(nnz * Hq);
    poison(out, nnz * Hq * D);
    poison(lse, nnz * Hq);
    assert_int_equal(flp_ref_attention_run(&a, out, lse), FLP_OK);

    /* Rows with no kept key: -inf lse and an exactly zero out row, on both sides. */
    size_t empty_rows = 0;
    for (size_t r = 0; r < nnz * Hq; ++r) {
        assert_false(isnan(lse[r]));
        if (c.lse[r] == -INFINITY) {
            empty_rows++;
            assert_true(lse[r] == -INFINITY);
            for (size_t d = 0; d < D; ++d)
                assert_true(out[r * D + d] == 0.0 && c.out[r * D + d] == 0.0);
        } else {
            assert_true(isfinite(lse[r]));
        }
    }
    if (strcmp(name, "decode_empty_and_page1_gqa7") == 0)
        assert_int_equal(empty_rows, Hq); /* the empty request's heads */
    assert_relative_error(out, c.out, nnz * Hq * D, 1e-9, name);
    assert_relative_error(lse, c.lse, nnz * Hq, 1e-9, name);

    /* The float32 slopes of the file give the same result up to their rounding (~6e-8). */
    if (c.alibi_slopes) {
        double *slopes = alloc_f64(Hq);
        for (size_t h = 0; h < Hq; ++h)
            slopes[h] = c.alibi_slopes[h];
        flp_ref_attention from_file = a;
        from_file.alibi_slopes = slopes;
        assert_int_equal(flp_ref_attention_run(&from_file, out, lse), FLP_OK);
        assert_relative_error(out, c.out, nnz * Hq * D, 1e-6, name);
        assert_relative_error(lse, c.lse, nnz * Hq, 1e-6, name);
        free(slopes);
    }

    free(q);
    free(k);
    free(v);
    free(out);
    free(lse);
    free(kv_tokens);
    golden_free(&c);
}

/* ---- (b) cases worked out by hand ------------------------------------------------------------ */

/* One request, one head, D = 2: q = (1, 2), keys (1, 0) and (0, 1), values (1, 0) and (0, 1),
 * sm_scale 1, so the logits are (1, 2) before the variants. */
static const double hand_q[2] = {1.0, 2.0};
static const double hand_k[4] = {1.0, 0.0, 0.0, 1.0};
static const double hand_v[4] = {1.0, 0.0, 0.0, 1.0};
static const int32_t hand_qo[2] = {0, 1};
static const int32_t hand_kv[2] = {0, 2};

static flp_ref_attention hand_problem(void) {
    flp_ref_attention a = {
        .batch_size = 1,
        .num_qo_heads = 1,
        .num_kv_heads = 1,
        .head_dim = 2,
        .qo_indptr = hand_qo,
        .kv_indptr = hand_kv,
        .q = hand_q,
        .k = hand_k,
        .v = hand_v,
        .sm_scale = 1.0,
    };
    return a;
}

/* Softmax over logits (l0, l1) with values e0, e1: out = (w0, w1), lse = log(e^l0 + e^l1). */
static void check_two_logits(const flp_ref_attention *a, double l0, double l1) {
    double out[2] = {NAN, NAN}, lse = NAN;
    assert_int_equal(flp_ref_attention_run(a, out, &lse), FLP_OK);
    const double w0 = exp(l0) / (exp(l0) + exp(l1));
    assert_near(out[0], w0, 1e-15);
    assert_near(out[1], 1.0 - w0, 1e-15);
    assert_near(lse, log(exp(l0) + exp(l1)), 1e-14);
}

static void test_hand_plain(void **state) {
    (void)state;
    flp_ref_attention a = hand_problem();
    check_two_logits(&a, 1.0, 2.0);
    /* out = (1/(1+e), e/(1+e)) and lse = 2 + log(1 + 1/e), written out. */
    double out[2], lse;
    assert_int_equal(flp_ref_attention_run(&a, out, &lse), FLP_OK);
    assert_near(out[0], 0.2689414213699951, 1e-15);
    assert_near(out[1], 0.7310585786300049, 1e-15);
    assert_near(lse, 2.3132616875182228, 1e-15);
    /* Default scale 1/sqrt(2). */
    a.sm_scale = 0.0;
    check_two_logits(&a, 1.0 / sqrt(2.0), 2.0 / sqrt(2.0));
    /* lse may be NULL. */
    a.sm_scale = 1.0;
    assert_int_equal(flp_ref_attention_run(&a, out, NULL), FLP_OK);
    assert_near(out[0], 0.2689414213699951, 1e-15);
}

static void test_hand_soft_cap(void **state) {
    (void)state;
    flp_ref_attention a = hand_problem();
    a.logits_soft_cap = 1.0;
    check_two_logits(&a, tanh(1.0), tanh(2.0));
    a.logits_soft_cap = 4.0;
    a.sm_scale = 0.5; /* the cap acts on the scaled logit */
    check_two_logits(&a, 4.0 * tanh(0.125), 4.0 * tanh(0.25));
}

static void test_hand_alibi(void **state) {
    (void)state;
    flp_ref_attention a = hand_problem();
    a.pos_encoding = FLP_POS_ALIBI;
    /* The query sits at position 1: key 0 is one step back. Standard slope of 1 head: 2^-8. */
    check_two_logits(&a, 1.0 - 1.0 / 256.0, 2.0);
    const double slope = 0.5;
    a.alibi_slopes = &slope;
    check_two_logits(&a, 0.5, 2.0);
    /* ALiBi comes after the soft cap. */
    a.logits_soft_cap = 1.0;
    check_two_logits(&a, tanh(1.0) - 0.5, tanh(2.0));
}

static void test_hand_masks(void **state) {
    (void)state;
    /* Two query rows over the same two keys: row 0 at position 0, row 1 at position 1. */
    const double q[4] = {1.0, 2.0, 1.0, 2.0};
    const int32_t qo[2] = {0, 2};
    flp_ref_attention a = hand_problem();
    a.q = q;
    a.qo_indptr = qo;
    double out[4], lse[2];

    a.mask = FLP_MASK_CAUSAL; /* row 0 sees key 0 only, row 1 both */
    assert_int_equal(flp_ref_attention_run(&a, out, lse), FLP_OK);
    assert_near(out[0], 1.0, 1e-15);
    assert_near(out[1], 0.0, 1e-15);
    assert_near(lse[0], 1.0, 1e-15);
    assert_near(out[2], 0.2689414213699951, 1e-15);
    assert_near(lse[1], 2.3132616875182228, 1e-15);

    a.mask = FLP_MASK_NONE; /* window 0: each row sees only its own position */
    a.use_window = true;
    a.window_left = 0;
    assert_int_equal(flp_ref_attention_run(&a, out, lse), FLP_OK);
    /* row 0 without causal also sees key 1 (j > pos is not excluded by the window) */
    assert_near(out[0], 0.2689414213699951, 1e-15);
    assert_near(out[2], 0.0, 1e-15);
    assert_near(out[3], 1.0, 1e-15);
    assert_near(lse[1], 2.0, 1e-15);

    /* Custom bits, row-major [2, 2], little-endian: row 0 keeps key 1 (bit 1), row 1 keeps
     * nothing (bits 2, 3 clear). Bits past the matrix are set and must be ignored. The mask
     * starts at byte 1 of the buffer. */
    const uint8_t bits[2] = {0xff, 0xf2};
    const int32_t mask_indptr[1] = {1};
    a.use_window = false;
    a.mask = FLP_MASK_CUSTOM;
    a.custom_mask = bits;
    a.mask_indptr = mask_indptr;
    assert_int_equal(flp_ref_attention_run(&a, out, lse), FLP_OK);
    assert_true(out[0] == 0.0 && out[1] == 1.0);
    assert_near(lse[0], 2.0, 1e-15);
    assert_true(out[2] == 0.0 && out[3] == 0.0 && lse[1] == -INFINITY);

    /* The window still applies with a custom mask: row 0 keeps key 1 (bit 1) and key 0 (bit 0),
     * row 1 keeps key 0 (bit 2), which window 0 removes. */
    const uint8_t bits2[2] = {0x00, 0x07};
    a.custom_mask = bits2;
    a.use_window = true;
    a.window_left = 0;
    assert_int_equal(flp_ref_attention_run(&a, out, lse), FLP_OK);
    assert_near(out[0], 0.2689414213699951, 1e-15);
    assert_true(out[2] == 0.0 && out[3] == 0.0 && lse[1] == -INFINITY);
}

static void test_hand_rope(void **state) {
    (void)state;
    /* D = 2: one pair with frequency f = theta^0 / scale. q = (0, 1) rotated to position p is
     * (-sin fp, cos fp), k = (1, 0) at j is (cos fj, sin fj): the dot is sin(f (j - p)). */
    const double q[2] = {0.0, 1.0};
    const double k[4] = {1.0, 0.0, 1.0, 0.0};
    flp_ref_attention a = hand_problem();
    a.q = q;
    a.k = k;
    a.pos_encoding = FLP_POS_ROPE_LLAMA;
    check_two_logits(&a, sin(-1.0), 0.0);
    /* Offsets: the query moves to 1 + 2 = 3, keys to j + 1. */
    const int32_t q_off = 2, k_off = 1;
    a.q_rope_offset = &q_off;
    a.k_rope_offset = &k_off;
    check_two_logits(&a, sin(1.0 - 3.0), sin(2.0 - 3.0));
    /* Scale 2 halves the frequency. */
    a.q_rope_offset = a.k_rope_offset = NULL;
    a.rope.scale = 2.0f;
    check_two_logits(&a, sin(-0.5), 0.0);
}

/* A request with no keys: every row has out 0 and lse -inf, even with qo_len > kv_len. */
static void test_empty_kv(void **state) {
    (void)state;
    const double q[6] = {0.3, -0.2, 0.7, 0.1, -0.9, 0.4};
    const int32_t qo[3] = {0, 2, 3};
    const int32_t kv[3] = {0, 0, 2};
    flp_ref_attention a = hand_problem();
    a.batch_size = 2;
    a.q = q;
    a.qo_indptr = qo;
    a.kv_indptr = kv;
    a.mask = FLP_MASK_CAUSAL;
    double out[6], lse[3];
    poison(out, 6);
    poison(lse, 3);
    assert_int_equal(flp_ref_attention_run(&a, out, lse), FLP_OK);
    for (int i = 0; i < 4; ++i)
        assert_true(out[i] == 0.0);
    assert_true(lse[0] == -INFINITY && lse[1] == -INFINITY);
    assert_true(isfinite(lse[2]) && isfinite(out[4]) && isfinite(out[5]));
}

/* ---- (c) merge ------------------------------------------------------------------------------- */

/* Attention over a random problem with a random base mask, then over the same keys split into
 * nchunks random disjoint subsets (each a custom mask ANDed with the base): merging the partial
 * states in any grouping gives the whole. Soft cap, ALiBi and RoPE on, to exercise positions. */
static void check_split(test_rng *rng, int nchunks, flp_pos_encoding pe) {
    enum { B = 2, HQ = 4, HKV = 2, D = 16 };
    const int32_t qo_lens[B] = {3, 1};
    const int32_t kv_lens[B] = {13, 7};
    int32_t qo[B + 1] = {0}, kv[B + 1] = {0}, mask_indptr[B];
    size_t mask_bytes = 0;
    for (int b = 0; b < B; ++b) {
        qo[b + 1] = qo[b] + qo_lens[b];
        kv[b + 1] = kv[b] + kv_lens[b];
        mask_indptr[b] = (int32_t)mask_bytes;
        mask_bytes += ((size_t)qo_lens[b] * kv_lens[b] + 7) / 8;
    }
    const size_t nq = (size_t)qo[B] * HQ * D, nk = (size_t)kv[B] * HKV * D;
    double *q = alloc_f64(nq), *k = alloc_f64(nk), *v = alloc_f64(nk);
    test_fill_uniform_f64(rng, q, nq);
    test_fill_uniform_f64(rng, k, nk);
    test_fill_uniform_f64(rng, v, nk);
    for (size_t i = 0; i < nq; ++i)
        q[i] *= 3.0; /* sharper softmax */

    uint8_t *base = calloc(mask_bytes, 1), *part = calloc(mask_bytes, 1);
    int32_t *chunk_of = calloc((size_t)kv[B], sizeof(int32_t));
    assert_non_null(base);
    assert_non_null(part);
    assert_non_null(chunk_of);
    for (int b = 0; b < B; ++b) {
        for (int32_t i = 0; i < qo_lens[b]; ++i) {
            for (int32_t j = 0; j < kv_lens[b]; ++j) {
                const size_t bit = (size_t)i * kv_lens[b] + j;
                if (test_rng_uniform(rng, 0.0, 1.0) < 0.7)
                    base[mask_indptr[b] + bit / 8] |= (uint8_t)(1u << (bit % 8));
            }
        }
        for (int32_t j = 0; j < kv_lens[b]; ++j)
            chunk_of[kv[b] + j] = test_rng_int(rng, 0, nchunks - 1);
    }

    flp_ref_attention a = {
        .batch_size = B,
        .num_qo_heads = HQ,
        .num_kv_heads = HKV,
        .head_dim = D,
        .qo_indptr = qo,
        .kv_indptr = kv,
        .q = q,
        .k = k,
        .v = v,
        .mask = FLP_MASK_CUSTOM,
        .custom_mask = base,
        .mask_indptr = mask_indptr,
        .logits_soft_cap = 2.5,
        .pos_encoding = pe,
        .rope = {.theta = 100.0f},
    };
    const size_t rows = (size_t)qo[B] * HQ;
    double *whole = alloc_f64(nq), *whole_lse = alloc_f64(rows);
    double *acc = alloc_f64(nq), *acc_lse = alloc_f64(rows);
    double *o = alloc_f64(nq), *s = alloc_f64(rows);
    assert_int_equal(flp_ref_attention_run(&a, whole, whole_lse), FLP_OK);

    a.custom_mask = part;
    for (int chunk = 0; chunk < nchunks; ++chunk) {
        memset(part, 0, mask_bytes);
        for (int b = 0; b < B; ++b)
            for (int32_t i = 0; i < qo_lens[b]; ++i)
                for (int32_t j = 0; j < kv_lens[b]; ++j) {
                    const size_t bit = (size_t)i * kv_lens[b] + j;
                    const size_t byte = mask_indptr[b] + bit / 8;
                    if (chunk_of[kv[b] + j] == chunk)
                        part[byte] |= base[byte] & (uint8_t)(1u << (bit % 8));
                }
        poison(o, nq);
        poison(s, rows);
        assert_int_equal(flp_ref_attention_run(&a, o, s), FLP_OK);
        if (chunk == 0) {
            memcpy(acc, o, sizeof(double) * nq);
            memcpy(acc_lse, s, sizeof(double) * rows);
        } else {
            for (size_t r = 0; r < rows; ++r) /* out aliases o_a */
                flp_ref_merge_state(D, acc + r * D, acc_lse[r], o + r * D, s[r], acc + r * D,
                                    &acc_lse[r]);
        }
    }
    assert_relative_error(acc, whole, nq, 1e-12, "merged out");
    assert_relative_error(acc_lse, whole_lse, rows, 1e-12, "merged lse");

    free(q);
    free(k);
    free(v);
    free(base);
    free(part);
    free(chunk_of);
    free(whole);
    free(whole_lse);
    free(acc);
    free(acc_lse);
    free(o);
    free(s);
}

static void test_merge_split(void **state) {
    (void)state;
    test_rng rng;
    test_rng_init(&rng, 0x5eed0001u);
    for (int rep = 0; rep < 4; ++rep) {
        check_split(&rng, 2, FLP_POS_NONE);
        check_split(&rng, 3, FLP_POS_ALIBI);
        check_split(&rng, 3, FLP_POS_ROPE_LLAMA);
    }
}

static void test_merge_special(void **state) {
    (void)state;
    const double a[3] = {0.5, -1.0, 2.0}, b[3] = {1.5, 3.0, -2.0};
    double o[3] = {NAN, NAN, NAN}, s = NAN;
    flp_ref_merge_state(3, a, -INFINITY, b, -INFINITY, o, &s);
    assert_true(o[0] == 0.0 && o[1] == 0.0 && o[2] == 0.0 && s == -INFINITY);
    /* One empty side: the other state unchanged. */
    flp_ref_merge_state(3, a, 0.75, b, -INFINITY, o, &s);
    assert_true(o[0] == a[0] && o[1] == a[1] && o[2] == a[2] && s == 0.75);
    flp_ref_merge_state(3, a, -INFINITY, b, -2.0, o, &s);
    assert_true(o[0] == b[0] && o[1] == b[1] && o[2] == b[2] && s == -2.0);
    /* Equal weights: the mean, lse + log 2. */
    flp_ref_merge_state(3, a, 1.0, b, 1.0, o, &s);
    assert_near(o[0], 1.0, 1e-15);
    assert_near(o[1], 1.0, 1e-15);
    assert_near(o[2], 0.0, 1e-15);
    assert_near(s, 1.0 + log(2.0), 1e-15);
    /* Huge lse values do not overflow. */
    flp_ref_merge_state(3, a, 1000.0, b, 1000.0 + log(3.0), o, &s);
    assert_near(o[0], 0.25 * 0.5 + 0.75 * 1.5, 1e-13);
    assert_near(s, 1000.0 + log(4.0), 1e-12);
}

/* ---- (d) ALiBi slopes ------------------------------------------------------------------------ */

static void test_alibi_slopes(void **state) {
    (void)state;
    double s[16];
    flp_ref_alibi_slopes(8, s);
    for (int k = 0; k < 8; ++k)
        assert_true(s[k] == 1.0 / (double)(2 << k)); /* 1/2, 1/4, ..., 1/256 exactly */
    flp_ref_alibi_slopes(12, s);
    for (int k = 0; k < 8; ++k)
        assert_true(s[k] == 1.0 / (double)(2 << k));
    /* 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5 */
    assert_near(s[8], 0.70710678118654752, 1e-16);
    assert_near(s[9], 0.35355339059327376, 1e-16);
    assert_near(s[10], 0.17677669529663688, 1e-16);
    assert_near(s[11], 0.08838834764831844, 1e-16);
    flp_ref_alibi_slopes(1, s);
    assert_true(s[0] == 1.0 / 256.0);
    flp_ref_alibi_slopes(4, s);
    assert_true(s[0] == 0.25 && s[3] == 1.0 / 256.0);

    /* The golden ALiBi case stores the standard slopes rounded to float32. */
    golden_case c;
    assert_true(golden_load("decode_alibi_h12", &c));
    assert_non_null(c.alibi_slopes);
    flp_ref_alibi_slopes(12, s);
    for (int h = 0; h < 12; ++h)
        assert_true((float)s[h] == c.alibi_slopes[h]);
    golden_free(&c);
}

/* ---- (e) RoPE frequencies -------------------------------------------------------------------- */

static void test_rope_frequencies(void **state) {
    (void)state;
    enum { D = 128 };
    double plain[D / 2], f[D / 2];
    flp_rope_params r = {0}; /* defaults: theta 10000, scale 1 */
    flp_ref_rope_frequencies(&r, D, plain);
    assert_true(plain[0] == 1.0);
    for (int d = 0; d < D / 2; ++d)
        assert_near(plain[d], pow(10000.0, -2.0 * d / D), 1e-15 * plain[d]);
    r.scale = 4.0f;
    flp_ref_rope_frequencies(&r, D, f);
    for (int d = 0; d < D / 2; ++d)
        assert_near(f[d], plain[d] / 4.0, 1e-15 * plain[d]);

    /* Llama 3.1 (theta 500000, factor 8, low 1, high 4, original 8192): wavelengths below
     * 8192/4 = 2048 keep their frequency, above 8192 are divided by 8, in between blend. */
    const flp_rope_params base = {.theta = 500000.0f, .scale = 1.0f};
    flp_rope_params ll = base;
    ll.llama31 = true;
    ll.llama31_factor = 8.0f;
    ll.llama31_low_freq_factor = 1.0f;
    ll.llama31_high_freq_factor = 4.0f;
    ll.llama31_original_max_position = 8192;
    flp_ref_rope_frequencies(&base, D, plain);
    flp_ref_rope_frequencies(&ll, D, f);
    int kept = 0, divided = 0, blended = 0;
    for (int d = 0; d < D / 2; ++d) {
        const double wavelen = 2.0 * 3.14159265358979323846 / plain[d];
        if (wavelen < 2048.0) {
            assert_true(f[d] == plain[d]);
            kept++;
        } else if (wavelen > 8192.0) {
            assert_near(f[d], plain[d] / 8.0, 1e-15 * plain[d]);
            divided++;
        } else {
            assert_true(f[d] < plain[d] && f[d] > plain[d] / 8.0);
            blended++;
        }
        if (d > 0)
            assert_true(f[d] < f[d - 1]); /* still strictly decreasing */
    }
    assert_true(kept > 0 && divided > 0 && blended > 0);
    /* The blend is continuous at its ends: smooth = 0 gives freq/8, smooth = 1 gives freq. */
    for (int d = 0; d < D / 2; ++d) {
        const double wavelen = 2.0 * 3.14159265358979323846 / plain[d];
        if (wavelen >= 2048.0 && wavelen <= 8192.0) {
            const double smooth = (8192.0 / wavelen - 1.0) / 3.0;
            assert_true(smooth >= 0.0 && smooth <= 1.0);
            assert_near(f[d], plain[d] * (smooth + (1.0 - smooth) / 8.0), 1e-15 * plain[d]);
        }
    }
}

/* ---- (f) bad inputs -------------------------------------------------------------------------- */

static void expect_invalid(const flp_ref_attention *a) {
    double out[4], lse[2];
    poison(out, 4);
    poison(lse, 2);
    assert_int_equal(flp_ref_attention_run(a, out, lse), FLP_ERROR_INVALID_ARGUMENT);
    assert_all_nan(out, 4); /* nothing written on a failed validation */
    assert_all_nan(lse, 2);
}

static void test_bad_inputs(void **state) {
    (void)state;
    const flp_ref_attention good = hand_problem();
    double out[4], lse[2];
    assert_int_equal(flp_ref_attention_run(&good, out, lse), FLP_OK);
    assert_int_equal(flp_ref_attention_run(NULL, out, lse), FLP_ERROR_INVALID_ARGUMENT);
    assert_int_equal(flp_ref_attention_run(&good, NULL, lse), FLP_ERROR_INVALID_ARGUMENT);

    flp_ref_attention a;
    a = good, a.q = NULL, expect_invalid(&a);
    a = good, a.k = NULL, expect_invalid(&a);
    a = good, a.v = NULL, expect_invalid(&a);
    a = good, a.qo_indptr = NULL, expect_invalid(&a);
    a = good, a.kv_indptr = NULL, expect_invalid(&a);
    a = good, a.batch_size = -1, expect_invalid(&a);
    a = good, a.head_dim = 0, expect_invalid(&a);
    a = good, a.num_qo_heads = 0, expect_invalid(&a);
    a = good, a.num_kv_heads = 0, expect_invalid(&a);
    a = good, a.num_qo_heads = 3, a.num_kv_heads = 2, expect_invalid(&a); /* 3 % 2 != 0 */
    a = good, a.head_dim = 1, a.pos_encoding = FLP_POS_ROPE_LLAMA, expect_invalid(&a);
    a = good, a.pos_encoding = (flp_pos_encoding)7, expect_invalid(&a);
    a = good, a.mask = (flp_mask_mode)9, expect_invalid(&a);
    a = good, a.mask = FLP_MASK_CUSTOM, expect_invalid(&a); /* no bits */
    a = good, a.use_window = true, a.window_left = -1, expect_invalid(&a);
    a = good, a.logits_soft_cap = -1.0, expect_invalid(&a);
    a = good, a.logits_soft_cap = NAN, expect_invalid(&a);
    a = good, a.sm_scale = -0.5, expect_invalid(&a);
    a = good, a.pos_encoding = FLP_POS_ROPE_LLAMA, a.rope.llama31 = true, expect_invalid(&a);
    a = good, a.pos_encoding = FLP_POS_ROPE_LLAMA, a.rope.theta = -1.0f, expect_invalid(&a);

    const int32_t qo_bad_start[2] = {1, 1}, qo_decreasing[3] = {0, 1, 0};
    const int32_t qo_three[2] = {0, 3}; /* 3 rows over 2 keys */
    const int32_t kv_two[3] = {0, 2, 2};
    a = good, a.qo_indptr = qo_bad_start, expect_invalid(&a);
    a = good, a.batch_size = 2, a.qo_indptr = qo_decreasing, a.kv_indptr = kv_two;
    expect_invalid(&a);
    double out3[6];
    a = good, a.qo_indptr = qo_three;
    assert_int_equal(flp_ref_attention_run(&a, out3, NULL), FLP_ERROR_INVALID_ARGUMENT);
    const int32_t mask_neg[1] = {-1};
    const uint8_t bits[1] = {3};
    a = good, a.mask = FLP_MASK_CUSTOM, a.custom_mask = bits, a.mask_indptr = mask_neg;
    expect_invalid(&a);
}

static void test_gather_paged(void **state) {
    (void)state;
    enum { HKV = 2, D = 4, PS = 3, PAGES = 5 };
    test_rng rng;
    test_rng_init(&rng, 0x5eed0002u);
    float cache[PAGES * PS * HKV * D];
    test_fill_uniform_f32(&rng, cache, PAGES * PS * HKV * D);
    /* Request 0: pages 4, 1 with 2 tokens in the last (5 tokens); request 1: empty;
     * request 2: page 0 full (3 tokens). */
    const int32_t indptr[4] = {0, 2, 2, 3}, indices[3] = {4, 1, 0};
    const int32_t last[3] = {2, 0, 3};
    for (int layout = 0; layout < 2; ++layout) {
        int32_t tok[4] = {-1, -1, -1, -1};
        double out[8 * HKV * D];
        poison(out, 8 * HKV * D);
        assert_int_equal(flp_ref_gather_paged(3, HKV, D, PS, (flp_kv_layout)layout, PAGES, cache,
                                              indptr, indices, last, tok, out),
                         FLP_OK);
        assert_true(tok[0] == 0 && tok[1] == 5 && tok[2] == 5 && tok[3] == 8);
        const int32_t page_of[8] = {4, 4, 4, 1, 1, 0, 0, 0};
        const int32_t slot_of[8] = {0, 1, 2, 0, 1, 0, 1, 2};
        for (int t = 0; t < 8; ++t)
            for (int h = 0; h < HKV; ++h)
                for (int d = 0; d < D; ++d) {
                    const size_t p = (size_t)page_of[t], s = (size_t)slot_of[t];
                    const size_t src = layout == FLP_KV_LAYOUT_NHD
                                           ? ((p * PS + s) * HKV + h) * D + d
                                           : ((p * HKV + h) * PS + s) * D + d;
                    assert_true(out[((size_t)t * HKV + h) * D + d] == (double)cache[src]);
                }
    }

    int32_t tok[4];
    double out[8 * HKV * D];
    poison(out, 8 * HKV * D);
    const int32_t bad_index[3] = {4, 5, 0}, neg_index[3] = {4, -1, 0};
    const int32_t last_zero[3] = {0, 0, 3}, last_big[3] = {4, 0, 3};
    assert_int_equal(flp_ref_gather_paged(3, HKV, D, PS, FLP_KV_LAYOUT_NHD, PAGES, cache, indptr,
                                          bad_index, last, tok, out),
                     FLP_ERROR_INVALID_ARGUMENT);
    assert_int_equal(flp_ref_gather_paged(3, HKV, D, PS, FLP_KV_LAYOUT_NHD, PAGES, cache, indptr,
                                          neg_index, last, tok, out),
                     FLP_ERROR_INVALID_ARGUMENT);
    assert_int_equal(flp_ref_gather_paged(3, HKV, D, PS, FLP_KV_LAYOUT_NHD, PAGES, cache, indptr,
                                          indices, last_zero, tok, out),
                     FLP_ERROR_INVALID_ARGUMENT);
    assert_int_equal(flp_ref_gather_paged(3, HKV, D, PS, FLP_KV_LAYOUT_HND, PAGES, cache, indptr,
                                          indices, last_big, tok, out),
                     FLP_ERROR_INVALID_ARGUMENT);
    assert_int_equal(flp_ref_gather_paged(3, HKV, D, PS, (flp_kv_layout)2, PAGES, cache, indptr,
                                          indices, last, tok, out),
                     FLP_ERROR_INVALID_ARGUMENT);
    assert_int_equal(flp_ref_gather_paged(3, HKV, D, 0, FLP_KV_LAYOUT_NHD, PAGES, cache, indptr,
                                          indices, last, tok, out),
                     FLP_ERROR_INVALID_ARGUMENT);
    assert_int_equal(flp_ref_gather_paged(3, HKV, D, PS, FLP_KV_LAYOUT_NHD, PAGES, NULL, indptr,
                                          indices, last, tok, out),
                     FLP_ERROR_INVALID_ARGUMENT);
    assert_all_nan(out, 8 * HKV * D);
}

static void test_relative_error_helper(void **state) {
    (void)state;
    const double want[3] = {1.0, -4.0, -INFINITY};
    const double same[3] = {1.0, -4.0, -INFINITY};
    const double off[3] = {1.0, -3.0, -INFINITY};
    const double inf_mismatch[3] = {1.0, -4.0, 0.0};
    const double nan_val[3] = {NAN, -4.0, -INFINITY};
    const double zeros[2] = {0.0, 0.0};
    assert_true(flp_ref_relative_error(same, want, 3) == 0.0);
    assert_near(flp_ref_relative_error(off, want, 3), 0.25, 1e-15);
    assert_true(isinf(flp_ref_relative_error(inf_mismatch, want, 3)));
    assert_true(isinf(flp_ref_relative_error(nan_val, want, 3)));
    assert_true(flp_ref_relative_error(zeros, zeros, 2) == 0.0);
    assert_true(isinf(flp_ref_relative_error(want, zeros, 2)));
    /* The test helper agrees and names the worst element. */
    size_t worst = 99;
    assert_near(test_relative_error(off, want, 3, &worst), 0.25, 1e-15);
    assert_int_equal(worst, 1);
    assert_true(isinf(test_relative_error(nan_val, want, 3, &worst)));
    assert_int_equal(worst, 0);
}

/* One test per golden case, named after it, with the name as its state. */
#define GOLDEN_TEST(i)                                                                             \
    { golden_names[i], test_golden_case, NULL, NULL, golden_names[i] }

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_golden_index),
        GOLDEN_TEST(0),
        GOLDEN_TEST(1),
        GOLDEN_TEST(2),
        GOLDEN_TEST(3),
        GOLDEN_TEST(4),
        GOLDEN_TEST(5),
        GOLDEN_TEST(6),
        GOLDEN_TEST(7),
        GOLDEN_TEST(8),
        GOLDEN_TEST(9),
        GOLDEN_TEST(10),
        GOLDEN_TEST(11),
        cmocka_unit_test(test_hand_plain),
        cmocka_unit_test(test_hand_soft_cap),
        cmocka_unit_test(test_hand_alibi),
        cmocka_unit_test(test_hand_masks),
        cmocka_unit_test(test_hand_rope),
        cmocka_unit_test(test_empty_kv),
        cmocka_unit_test(test_merge_split),
        cmocka_unit_test(test_merge_special),
        cmocka_unit_test(test_alibi_slopes),
        cmocka_unit_test(test_rope_frequencies),
        cmocka_unit_test(test_bad_inputs),
        cmocka_unit_test(test_gather_paged),
        cmocka_unit_test(test_relative_error_helper),
    };
    return cmocka_run_group_tests_name("reference", tests, NULL, NULL);
}
