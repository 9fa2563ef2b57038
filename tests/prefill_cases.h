/* The tables of the batch prefill / append reference suite (tests/test_prefill.c, docs/design.md
 * section 9): attention cases and KV-append cases. Included by test_prefill.c only: the tables
 * are static data.
 *
 * Shapes stay small (CI runs them on lavapipe, a CPU Vulkan driver, and through the CUDA kernel
 * emulator): tens of query rows and up to a few hundred keys, except the few "split" cases that
 * give a batch of one request a few query rows against ~1000-2000 keys, so that the plan splits
 * the KV into chunks (the batch does not fill the grid) and the merge kernel runs. Paged cases
 * get shuffled page ids with unused random pages in the pool unless they ask for sequential
 * pages. */
#ifndef FLP_TESTS_PREFILL_CASES_H
#define FLP_TESTS_PREFILL_CASES_H

#include "flashport/flashport.h"
#include "tests/case_kinds.h"

#define PREFILL_CASE_MAX_LIST 8

/* How the lengths of a case are made. */
typedef enum len_gen {
    LEN_LIST = 0, /* qo_lens[batch] and kv_lens[batch] as given (kv_lens ignored with .prompt) */
    LEN_RAGGED,   /* qo uniform in [qo_min, qo_max], kv = qo + uniform [0, extra_max] */
    LEN_SKEWED,   /* request batch/2 gets qo_max and qo_max + extra_max keys; the others qo in
                     [1, qo_min] and kv = qo + uniform [0, 20] */
} len_gen;

/* Layout options (bit flags). */
#define CASE_PADDED_QO 1u      /* q/out/lse with padded row and head strides at odd offsets */
#define CASE_PADDED_KV 2u      /* k/v with padding after every head vector and every row/slot */
#define CASE_INTERLEAVED_KV 4u /* K and V in one buffer: pages (or ragged rows) [n, 2, ...] */

typedef struct prefill_case {
    const char *name;
    int32_t batch;
    len_gen gen;
    int32_t qo_lens[PREFILL_CASE_MAX_LIST]; /* [batch], LEN_LIST */
    int32_t kv_lens[PREFILL_CASE_MAX_LIST]; /* [batch], LEN_LIST without .prompt */
    bool prompt;                            /* LEN_LIST: kv_len = qo_len */
    int32_t qo_min, qo_max, extra_max;      /* LEN_RAGGED / LEN_SKEWED */
    int32_t zero_every;                     /* > 0: every zero_every-th request has no query
                                               (alternately with and without keys) */
    bool ragged;                            /* KV storage: ragged rows, else paged */
    flp_kv_layout layout;                   /* paged */
    int32_t page_size;                      /* paged */
    int32_t num_qo_heads, num_kv_heads, head_dim;
    flp_dtype q_dtype, kv_dtype; /* kv_dtype DEFAULT = q_dtype */
    flp_mask_mode mask;
    bool mask_empty_rows; /* custom mask: every third row of a request keeps no key */
    bool use_window;
    int32_t window_left;
    float soft_cap;
    float sm_scale; /* 0 = default */
    alibi_kind alibi;
    rope_kind rope;
    bool rope_offsets; /* random per-request q/k RoPE offsets */
    float k_scale, v_scale;
    bool no_lse;
    unsigned layout_flags; /* CASE_* */
    bool sequential_pages;
    bool split; /* a long request in a batch that does not fill the grid: the plan splits it */
    bool pages_at_run; /* paged, planned with kv_indices = NULL: the runs pass them */
} prefill_case;

#define F16 FLP_DTYPE_F16
#define BF16 FLP_DTYPE_BF16
#define E4M3 FLP_DTYPE_E4M3
#define E5M2 FLP_DTYPE_E5M2
#define NHD FLP_KV_LAYOUT_NHD
#define HND FLP_KV_LAYOUT_HND
#define CAUSAL FLP_MASK_CAUSAL
#define CUSTOM FLP_MASK_CUSTOM

/* fp8 scales: stored values are the [-1, 1] inputs divided by the scale (so e4m3 scales stay
 * above 1/448, its largest finite value).
 *
 * Every (q dtype, KV dtype, head dim) triple is a kernel of its own, and lavapipe compiles each
 * in seconds: the tables use 10 of them (16-bit KV at every head dim for both Q dtypes; fp8 as
 * f16/e4m3/128, bf16/e4m3/64, f16/e5m2/128, bf16/e5m2/256) to keep CI's cold run short. Mind
 * this when adding cases. */
/* clang-format off */
static const prefill_case prefill_cases[] = {
    /* ---- prompts and appends, both KV storages, head dims 64/128/256, GQA 1/3/4/6/8 ---- */
    {.name = "prompt_causal_f16_ragged_d64_g4", .batch = 3, .qo_lens = {5, 16, 33}, .prompt = true,
     .ragged = true, .num_qo_heads = 8, .num_kv_heads = 2, .head_dim = 64, .q_dtype = F16,
     .mask = CAUSAL},
    {.name = "prompt_causal_bf16_nhd_p16_d128_g1", .batch = 3, .qo_lens = {17, 40, 3},
     .prompt = true, .layout = NHD, .page_size = 16, .num_qo_heads = 4, .num_kv_heads = 4,
     .head_dim = 128, .q_dtype = BF16, .mask = CAUSAL, .sequential_pages = true},
    {.name = "append_causal_f16_hnd_p16_d128_g8", .batch = 3, .qo_lens = {4, 7, 1},
     .kv_lens = {20, 50, 9}, .layout = HND, .page_size = 16, .num_qo_heads = 8,
     .num_kv_heads = 1, .head_dim = 128, .q_dtype = F16, .mask = CAUSAL},
    {.name = "append_causal_bf16_nhd_p1_d64_g3", .batch = 3, .qo_lens = {3, 5, 2},
     .kv_lens = {10, 37, 2}, .layout = NHD, .page_size = 1, .num_qo_heads = 6, .num_kv_heads = 2,
     .head_dim = 64, .q_dtype = BF16, .mask = CAUSAL},
    {.name = "append_nomask_f16_hnd_p1_d256_g6", .batch = 2, .qo_lens = {2, 6},
     .kv_lens = {30, 6}, .layout = HND, .page_size = 1, .num_qo_heads = 6, .num_kv_heads = 1,
     .head_dim = 256, .q_dtype = F16},
    {.name = "prompt_causal_bf16_ragged_d256_g4", .batch = 2, .qo_lens = {24, 9}, .prompt = true,
     .ragged = true, .num_qo_heads = 8, .num_kv_heads = 2, .head_dim = 256, .q_dtype = BF16,
     .mask = CAUSAL},
    {.name = "append_nomask_bf16_ragged_d128_g1", .batch = 3, .qo_lens = {8, 1, 12},
     .kv_lens = {30, 1, 12}, .ragged = true, .num_qo_heads = 2, .num_kv_heads = 2,
     .head_dim = 128, .q_dtype = BF16},
    {.name = "append_causal_f16_nhd_p16_d256_g8", .batch = 2, .qo_lens = {5, 16},
     .kv_lens = {21, 40}, .layout = NHD, .page_size = 16, .num_qo_heads = 8, .num_kv_heads = 1,
     .head_dim = 256, .q_dtype = F16, .mask = CAUSAL},
    /* several query tiles of packed rows per request (150 tokens x group 4) */
    {.name = "long_prompt_causal_f16_nhd_g4", .batch = 1, .qo_lens = {150}, .prompt = true,
     .layout = NHD, .page_size = 16, .num_qo_heads = 4, .num_kv_heads = 1, .head_dim = 64,
     .q_dtype = F16, .mask = CAUSAL},
    {.name = "long_append_nomask_bf16_ragged_g3", .batch = 2, .qo_lens = {70, 3},
     .kv_lens = {130, 3}, .ragged = true, .num_qo_heads = 3, .num_kv_heads = 1, .head_dim = 64,
     .q_dtype = BF16},

    /* ---- empty requests, ragged and skewed batches ---- */
    {.name = "empty_requests_f16_nhd_p16", .batch = 6, .qo_lens = {0, 5, 0, 3, 0, 2},
     .kv_lens = {10, 5, 0, 20, 0, 7}, .layout = NHD, .page_size = 16, .num_qo_heads = 8,
     .num_kv_heads = 2, .head_dim = 64, .q_dtype = F16, .mask = CAUSAL},
    {.name = "empty_requests_bf16_ragged", .batch = 5, .qo_lens = {3, 0, 0, 6, 0},
     .kv_lens = {3, 9, 0, 11, 0}, .ragged = true, .num_qo_heads = 4, .num_kv_heads = 1,
     .head_dim = 128, .q_dtype = BF16, .mask = CAUSAL},
    {.name = "no_query_rows_at_all", .batch = 3, .qo_lens = {0, 0, 0}, .kv_lens = {0, 12, 0},
     .layout = HND, .page_size = 16, .num_qo_heads = 4, .num_kv_heads = 2, .head_dim = 64,
     .q_dtype = F16, .mask = CAUSAL},
    {.name = "skewed_f16_nhd_p16_g4", .batch = 12, .gen = LEN_SKEWED, .qo_min = 4, .qo_max = 48,
     .extra_max = 250, .zero_every = 5, .layout = NHD, .page_size = 16, .num_qo_heads = 4,
     .num_kv_heads = 1, .head_dim = 64, .q_dtype = F16, .mask = CAUSAL},
    {.name = "ragged_batch16_bf16_hnd_g4", .batch = 16, .gen = LEN_RAGGED, .qo_min = 1,
     .qo_max = 12, .extra_max = 40, .zero_every = 6, .layout = HND, .page_size = 16,
     .num_qo_heads = 8, .num_kv_heads = 2, .head_dim = 64, .q_dtype = BF16, .mask = CAUSAL},
    {.name = "ragged_batch10_f16_ragged_kv_g1", .batch = 10, .gen = LEN_RAGGED, .qo_min = 1,
     .qo_max = 20, .extra_max = 30, .zero_every = 4, .ragged = true, .num_qo_heads = 2,
     .num_kv_heads = 2, .head_dim = 64, .q_dtype = F16},

    /* ---- long KV, few query rows, batch 1: split into KV chunks + merge ---- */
    {.name = "split_qo4_kv2000_f16_nhd_d128", .batch = 1, .qo_lens = {4}, .kv_lens = {2000},
     .layout = NHD, .page_size = 16, .num_qo_heads = 8, .num_kv_heads = 2, .head_dim = 128,
     .q_dtype = F16, .mask = CAUSAL, .split = true},
    {.name = "split_ragged_bf16_window_alibi", .batch = 1, .qo_lens = {3}, .kv_lens = {1500},
     .ragged = true, .num_qo_heads = 4, .num_kv_heads = 1, .head_dim = 64, .q_dtype = BF16,
     .mask = CAUSAL, .use_window = true, .window_left = 700, .alibi = ALIBI_STANDARD,
     .split = true},
    {.name = "split_custom_mask_f16_hnd_p1", .batch = 1, .qo_lens = {3}, .kv_lens = {1200},
     .layout = HND, .page_size = 1, .num_qo_heads = 4, .num_kv_heads = 2, .head_dim = 64,
     .q_dtype = F16, .mask = CUSTOM, .mask_empty_rows = true, .split = true},
    {.name = "split_e4m3_bf16_rope_offsets", .batch = 2, .qo_lens = {2, 1}, .kv_lens = {1000, 40},
     .layout = NHD, .page_size = 16, .num_qo_heads = 8, .num_kv_heads = 1, .head_dim = 64,
     .q_dtype = BF16, .kv_dtype = E4M3, .mask = CAUSAL, .rope = ROPE_DEFAULT,
     .rope_offsets = true, .k_scale = 0.0125f, .v_scale = 0.01f, .split = true},
    /* 64 and 80 packed rows: 64- and 128-row query tiles, which the Hopper kernel takes (its
     * split items write their partial rows through the Q tile; the second warpgroup's rows
     * empty, then partly filled), at the two head dims beside 128 */
    {.name = "split_tile64_bf16_nhd_d64", .batch = 1, .qo_lens = {16}, .kv_lens = {1600},
     .layout = NHD, .page_size = 16, .num_qo_heads = 8, .num_kv_heads = 2, .head_dim = 64,
     .q_dtype = BF16, .mask = CAUSAL, .split = true},
    {.name = "split_rows80_ragged_f16_d256_nomask", .batch = 1, .qo_lens = {20},
     .kv_lens = {1400}, .ragged = true, .num_qo_heads = 8, .num_kv_heads = 2, .head_dim = 256,
     .q_dtype = F16, .split = true},
    /* fp8 K/V on the Hopper kernel (its raw ring and widening warps) at every q/fp8 pair, ragged
     * and paged (pages of 8 rows at head_dim 128: the smallest box it takes); large scales make
     * many stored values fp8 subnormals, which widen exactly */
    {.name = "hopper_e4m3_bf16_ragged_d128_split", .batch = 2, .qo_lens = {40, 17},
     .kv_lens = {1200, 300}, .ragged = true, .num_qo_heads = 8, .num_kv_heads = 2,
     .head_dim = 128, .q_dtype = BF16, .kv_dtype = E4M3, .mask = CAUSAL, .k_scale = 0.02f,
     .v_scale = 0.5f, .split = true},
    {.name = "hopper_e5m2_bf16_p16_d64_window", .batch = 2, .qo_lens = {24, 33},
     .kv_lens = {333, 90}, .layout = NHD, .page_size = 16, .num_qo_heads = 8, .num_kv_heads = 2,
     .head_dim = 64, .q_dtype = BF16, .kv_dtype = E5M2, .mask = CAUSAL, .use_window = true,
     .window_left = 50, .k_scale = 0.25f, .v_scale = 3.0f},
    {.name = "hopper_e5m2_f16_hnd_p8_d128_rope", .batch = 2, .qo_lens = {20, 37},
     .kv_lens = {260, 37}, .layout = HND, .page_size = 8, .num_qo_heads = 8, .num_kv_heads = 2,
     .head_dim = 128, .q_dtype = F16, .kv_dtype = E5M2, .mask = CAUSAL, .rope = ROPE_DEFAULT,
     .k_scale = 0.5f, .v_scale = 0.125f},
    {.name = "hopper_e4m3_f16_p16_d64_subnormal_cap_alibi", .batch = 1, .qo_lens = {33},
     .kv_lens = {200}, .layout = NHD, .page_size = 16, .num_qo_heads = 8, .num_kv_heads = 2,
     .head_dim = 64, .q_dtype = F16, .kv_dtype = E4M3, .mask = CAUSAL, .soft_cap = 5.0f,
     .alibi = ALIBI_STANDARD, .k_scale = 4.0f, .v_scale = 2.0f},
    {.name = "hopper_e4m3_bf16_p16_d128_subnormal", .batch = 1, .qo_lens = {40},
     .kv_lens = {300}, .layout = NHD, .page_size = 16, .num_qo_heads = 8, .num_kv_heads = 2,
     .head_dim = 128, .q_dtype = BF16, .kv_dtype = E4M3, .mask = CAUSAL, .k_scale = 4.0f,
     .v_scale = 4.0f},

    /* ---- masks: none / causal / custom, each with and without a sliding window ---- */
    {.name = "custom_mask_f16_ragged_g2", .batch = 3, .qo_lens = {6, 3, 9}, .kv_lens = {9, 3, 20},
     .ragged = true, .num_qo_heads = 4, .num_kv_heads = 2, .head_dim = 64, .q_dtype = F16,
     .mask = CUSTOM, .mask_empty_rows = true},
    {.name = "custom_mask_bf16_nhd_p1_d128", .batch = 3, .qo_lens = {1, 7, 4},
     .kv_lens = {13, 7, 30}, .layout = NHD, .page_size = 1, .num_qo_heads = 8, .num_kv_heads = 2,
     .head_dim = 128, .q_dtype = BF16, .mask = CUSTOM},
    {.name = "custom_mask_window_f16_hnd_p16", .batch = 4, .qo_lens = {10, 0, 5, 2},
     .kv_lens = {40, 6, 5, 70}, .layout = HND, .page_size = 16, .num_qo_heads = 8,
     .num_kv_heads = 1, .head_dim = 64, .q_dtype = F16, .mask = CUSTOM, .mask_empty_rows = true,
     .use_window = true, .window_left = 6},
    {.name = "custom_mask_prompt_bf16_ragged_d256", .batch = 2, .qo_lens = {20, 11},
     .prompt = true, .ragged = true, .num_qo_heads = 4, .num_kv_heads = 1, .head_dim = 256,
     .q_dtype = BF16, .mask = CUSTOM},
    {.name = "causal_window_f16_nhd_p16", .batch = 3, .qo_lens = {20, 5, 33},
     .kv_lens = {40, 5, 33}, .layout = NHD, .page_size = 16, .num_qo_heads = 8,
     .num_kv_heads = 2, .head_dim = 128, .q_dtype = F16, .mask = CAUSAL, .use_window = true,
     .window_left = 8},
    {.name = "causal_window0_bf16_ragged", .batch = 2, .qo_lens = {12, 4}, .kv_lens = {12, 30},
     .ragged = true, .num_qo_heads = 4, .num_kv_heads = 2, .head_dim = 64, .q_dtype = BF16,
     .mask = CAUSAL, .use_window = true, .window_left = 0},
    {.name = "nomask_window_bf16_ragged", .batch = 2, .qo_lens = {10, 4}, .kv_lens = {30, 4},
     .ragged = true, .num_qo_heads = 8, .num_kv_heads = 2, .head_dim = 64, .q_dtype = BF16,
     .use_window = true, .window_left = 3},
    {.name = "nomask_window_f16_hnd_p16_d256", .batch = 2, .qo_lens = {6, 18},
     .kv_lens = {50, 18}, .layout = HND, .page_size = 16, .num_qo_heads = 4, .num_kv_heads = 4,
     .head_dim = 256, .q_dtype = F16, .use_window = true, .window_left = 11},

    /* ---- variants: soft cap, ALiBi, RoPE, sm_scale, no lse ---- */
    {.name = "softcap_scale_f16_nhd_g1", .batch = 3, .qo_lens = {8, 3, 16}, .kv_lens = {30, 90, 16},
     .layout = NHD, .page_size = 16, .num_qo_heads = 4, .num_kv_heads = 4, .head_dim = 128,
     .q_dtype = F16, .mask = CAUSAL, .soft_cap = 2.0f, .sm_scale = 0.5f},
    {.name = "softcap_window_bf16_ragged_d256", .batch = 1, .qo_lens = {24}, .kv_lens = {40},
     .ragged = true, .num_qo_heads = 4, .num_kv_heads = 2, .head_dim = 256, .q_dtype = BF16,
     .mask = CAUSAL, .use_window = true, .window_left = 7, .soft_cap = 50.0f},
    {.name = "alibi_standard_h12_g3_ragged", .batch = 2, .qo_lens = {9, 14}, .kv_lens = {40, 14},
     .ragged = true, .num_qo_heads = 12, .num_kv_heads = 4, .head_dim = 64, .q_dtype = F16,
     .mask = CAUSAL, .alibi = ALIBI_STANDARD},
    {.name = "alibi_caller_bf16_hnd_nomask", .batch = 3, .qo_lens = {2, 6, 11},
     .kv_lens = {5, 64, 11}, .layout = HND, .page_size = 16, .num_qo_heads = 8,
     .num_kv_heads = 1, .head_dim = 128, .q_dtype = BF16, .alibi = ALIBI_CALLER},
    {.name = "alibi_custom_mask_f16_nhd_p1", .batch = 2, .qo_lens = {5, 3}, .kv_lens = {17, 8},
     .layout = NHD, .page_size = 1, .num_qo_heads = 6, .num_kv_heads = 2, .head_dim = 64,
     .q_dtype = F16, .mask = CUSTOM, .alibi = ALIBI_CALLER},
    {.name = "rope_default_f16_nhd", .batch = 2, .qo_lens = {8, 3}, .kv_lens = {30, 64},
     .layout = NHD, .page_size = 16, .num_qo_heads = 8, .num_kv_heads = 2, .head_dim = 128,
     .q_dtype = F16, .mask = CAUSAL, .rope = ROPE_DEFAULT},
    {.name = "rope_llama31_offsets_bf16_ragged", .batch = 3, .qo_lens = {7, 1, 20},
     .kv_lens = {25, 45, 20}, .ragged = true, .num_qo_heads = 8, .num_kv_heads = 2,
     .head_dim = 128, .q_dtype = BF16, .mask = CAUSAL, .rope = ROPE_LLAMA31, .rope_offsets = true},
    {.name = "rope_llama31_f16_hnd_p16", .batch = 2, .qo_lens = {16, 4}, .kv_lens = {100, 4},
     .layout = HND, .page_size = 16, .num_qo_heads = 4, .num_kv_heads = 1, .head_dim = 64,
     .q_dtype = F16, .mask = CAUSAL, .rope = ROPE_LLAMA31},
    {.name = "rope_scaled_offsets_f16_hnd_p1", .batch = 3, .qo_lens = {3, 9, 1},
     .kv_lens = {12, 9, 50}, .layout = HND, .page_size = 1, .num_qo_heads = 4, .num_kv_heads = 4,
     .head_dim = 64, .q_dtype = F16, .mask = CAUSAL, .rope = ROPE_SCALED, .rope_offsets = true},
    {.name = "rope_nomask_d256_bf16_nhd", .batch = 1, .qo_lens = {10}, .kv_lens = {37},
     .layout = NHD, .page_size = 16, .num_qo_heads = 2, .num_kv_heads = 1, .head_dim = 256,
     .q_dtype = BF16, .rope = ROPE_DEFAULT, .rope_offsets = true},
    {.name = "sm_scale_custom_f16_ragged", .batch = 2, .qo_lens = {7, 13}, .kv_lens = {33, 13},
     .ragged = true, .num_qo_heads = 8, .num_kv_heads = 2, .head_dim = 128, .q_dtype = F16,
     .mask = CAUSAL, .sm_scale = 0.3f},
    {.name = "no_lse_bf16_nhd", .batch = 3, .qo_lens = {4, 0, 9}, .kv_lens = {12, 3, 50},
     .layout = NHD, .page_size = 16, .num_qo_heads = 4, .num_kv_heads = 1, .head_dim = 64,
     .q_dtype = BF16, .mask = CAUSAL, .no_lse = true},

    /* ---- fp8 KV (compared against the dequantised values), scales != 1 ---- */
    {.name = "e4m3_f16_nhd_d128_causal", .batch = 3, .qo_lens = {5, 12, 1},
     .kv_lens = {20, 77, 150}, .layout = NHD, .page_size = 16, .num_qo_heads = 8,
     .num_kv_heads = 2, .head_dim = 128, .q_dtype = F16, .kv_dtype = E4M3, .mask = CAUSAL,
     .k_scale = 0.0125f, .v_scale = 0.003f},
    {.name = "e5m2_bf16_ragged_d256", .batch = 3, .qo_lens = {9, 2, 14}, .kv_lens = {9, 33, 40},
     .ragged = true, .num_qo_heads = 8, .num_kv_heads = 1, .head_dim = 256, .q_dtype = BF16,
     .kv_dtype = E5M2, .mask = CAUSAL, .k_scale = 0.25f, .v_scale = 3.0f},
    {.name = "e4m3_bf16_hnd_p1_d64_custom", .batch = 2, .qo_lens = {4, 6}, .kv_lens = {19, 6},
     .layout = HND, .page_size = 1, .num_qo_heads = 4, .num_kv_heads = 2, .head_dim = 64,
     .q_dtype = BF16, .kv_dtype = E4M3, .mask = CUSTOM, .k_scale = 0.02f, .v_scale = 0.5f},
    {.name = "e5m2_f16_nhd_window", .batch = 2, .qo_lens = {11, 3}, .kv_lens = {40, 90},
     .layout = NHD, .page_size = 16, .num_qo_heads = 4, .num_kv_heads = 2, .head_dim = 128,
     .q_dtype = F16, .kv_dtype = E5M2, .mask = CAUSAL, .use_window = true, .window_left = 12,
     .k_scale = 0.5f, .v_scale = 0.125f},
    /* k_scale / v_scale are documented as ignored for 16-bit KV. */
    {.name = "f16_kv_scale_ignored", .batch = 2, .qo_lens = {4, 8}, .kv_lens = {30, 8},
     .layout = NHD, .page_size = 16, .num_qo_heads = 8, .num_kv_heads = 2, .head_dim = 64,
     .q_dtype = F16, .mask = CAUSAL, .k_scale = 0.5f, .v_scale = 4.0f},

    /* ---- non-contiguous strides ---- */
    {.name = "padded_qo_kv_f16_ragged", .batch = 3, .qo_lens = {5, 9, 2}, .kv_lens = {19, 9, 40},
     .ragged = true, .num_qo_heads = 8, .num_kv_heads = 2, .head_dim = 128, .q_dtype = F16,
     .mask = CAUSAL, .layout_flags = CASE_PADDED_QO | CASE_PADDED_KV},
    {.name = "interleaved_ragged_bf16_g6", .batch = 2, .qo_lens = {7, 3}, .kv_lens = {21, 3},
     .ragged = true, .num_qo_heads = 6, .num_kv_heads = 1, .head_dim = 64, .q_dtype = BF16,
     .mask = CAUSAL, .layout_flags = CASE_INTERLEAVED_KV | CASE_PADDED_QO},
    {.name = "padded_interleaved_hnd_bf16", .batch = 4, .gen = LEN_RAGGED, .qo_min = 1,
     .qo_max = 10, .extra_max = 60, .layout = HND, .page_size = 16, .num_qo_heads = 12,
     .num_kv_heads = 4, .head_dim = 64, .q_dtype = BF16, .mask = CAUSAL,
     .layout_flags = CASE_PADDED_QO | CASE_PADDED_KV | CASE_INTERLEAVED_KV},
    {.name = "padded_e4m3_nhd_p1_custom", .batch = 2, .qo_lens = {6, 2}, .kv_lens = {25, 9},
     .layout = NHD, .page_size = 1, .num_qo_heads = 8, .num_kv_heads = 2, .head_dim = 128,
     .q_dtype = F16, .kv_dtype = E4M3, .mask = CUSTOM, .k_scale = 0.01f, .v_scale = 0.01f,
     .layout_flags = CASE_PADDED_QO | CASE_PADDED_KV},

    /* ---- few query rows per request (speculative decoding) with GQA 4 / 8 ---- */
    {.name = "spec_qo1to8_g8_f16_nhd", .batch = 4, .qo_lens = {1, 4, 8, 2},
     .kv_lens = {30, 77, 200, 9}, .layout = NHD, .page_size = 16, .num_qo_heads = 16,
     .num_kv_heads = 2, .head_dim = 128, .q_dtype = F16, .mask = CAUSAL},
    {.name = "spec_qo1to3_g4_bf16_hnd", .batch = 3, .qo_lens = {1, 2, 3}, .kv_lens = {3, 40, 120},
     .layout = HND, .page_size = 16, .num_qo_heads = 8, .num_kv_heads = 2, .head_dim = 64,
     .q_dtype = BF16, .mask = CAUSAL},
    {.name = "spec_tree_custom_g4_ragged", .batch = 3, .qo_lens = {8, 5, 6},
     .kv_lens = {60, 25, 6}, .ragged = true, .num_qo_heads = 8, .num_kv_heads = 2,
     .head_dim = 128, .q_dtype = F16, .mask = CUSTOM},
    {.name = "spec_ragged_batch_g8_bf16_p1", .batch = 8, .gen = LEN_RAGGED, .qo_min = 1,
     .qo_max = 8, .extra_max = 50, .layout = NHD, .page_size = 1, .num_qo_heads = 8,
     .num_kv_heads = 1, .head_dim = 64, .q_dtype = BF16, .mask = CAUSAL},

    /* ---- everything at once ---- */
    {.name = "combo_alibi_e4m3_window_custom", .batch = 3, .qo_lens = {4, 9, 2},
     .kv_lens = {4, 60, 100}, .layout = HND, .page_size = 16, .num_qo_heads = 8,
     .num_kv_heads = 2, .head_dim = 64, .q_dtype = BF16, .kv_dtype = E4M3, .mask = CUSTOM,
     .mask_empty_rows = true, .use_window = true, .window_left = 30, .soft_cap = 5.0f,
     .sm_scale = 0.2f, .alibi = ALIBI_CALLER, .k_scale = 0.01f, .v_scale = 0.02f,
     .layout_flags = CASE_INTERLEAVED_KV | CASE_PADDED_QO},
    {.name = "combo_rope_softcap_window_padded", .batch = 2, .qo_lens = {12, 3},
     .kv_lens = {40, 150}, .ragged = true, .num_qo_heads = 8, .num_kv_heads = 2, .head_dim = 128,
     .q_dtype = F16, .mask = CAUSAL, .use_window = true, .window_left = 20, .soft_cap = 10.0f,
     .rope = ROPE_LLAMA31, .rope_offsets = true,
     .layout_flags = CASE_PADDED_QO | CASE_PADDED_KV},

    /* ---- page ids at run time (the plan gets kv_indices = NULL) ---- */
    {.name = "pages_at_run_split_causal_f16", .batch = 2, .qo_lens = {4, 7}, .kv_lens = {1800, 30},
     .layout = NHD, .page_size = 16, .num_qo_heads = 8, .num_kv_heads = 2, .head_dim = 128,
     .q_dtype = F16, .mask = CAUSAL, .split = true, .pages_at_run = true},
    {.name = "pages_at_run_custom_e5m2_hnd_p1", .batch = 3, .qo_lens = {5, 0, 9},
     .kv_lens = {20, 7, 64}, .layout = HND, .page_size = 1, .num_qo_heads = 4, .num_kv_heads = 2,
     .head_dim = 64, .q_dtype = BF16, .kv_dtype = E5M2, .mask = CUSTOM, .k_scale = 0.5f,
     .v_scale = 0.25f, .pages_at_run = true},
};
/* clang-format on */

#define PREFILL_CASE_COUNT (sizeof(prefill_cases) / sizeof(prefill_cases[0]))

/* KV append: new rows of src_dtype into caches of cache_dtype (bytes compared with the host
 * conversions of flashport.h). */
typedef struct append_case {
    const char *name;
    flp_kv_layout layout;
    int32_t page_size;
    int32_t num_kv_heads, head_dim;
    flp_dtype src_dtype, cache_dtype;
    float k_scale, v_scale; /* 0 = 1 */
    bool padded_src;        /* new rows with padded row and head strides */
    bool padded_cache;      /* caches with padding after every head vector and slot */
    bool interleaved_cache; /* K and V pages in one buffer [pages, 2, <page>] */
} append_case;

/* clang-format off */
static const append_case append_cases[] = {
    {.name = "f16_to_f16_nhd_p16", .layout = NHD, .page_size = 16, .num_kv_heads = 2,
     .head_dim = 64, .src_dtype = F16, .cache_dtype = F16},
    {.name = "bf16_to_bf16_hnd_p16", .layout = HND, .page_size = 16, .num_kv_heads = 2,
     .head_dim = 128, .src_dtype = BF16, .cache_dtype = BF16},
    {.name = "f16_to_bf16_nhd_p1", .layout = NHD, .page_size = 1, .num_kv_heads = 3,
     .head_dim = 64, .src_dtype = F16, .cache_dtype = BF16},
    {.name = "bf16_to_f16_hnd_p1_scale_ignored", .layout = HND, .page_size = 1, .num_kv_heads = 1,
     .head_dim = 256, .src_dtype = BF16, .cache_dtype = F16, .k_scale = 0.5f, .v_scale = 4.0f},
    {.name = "f16_to_e4m3_nhd_p16", .layout = NHD, .page_size = 16, .num_kv_heads = 2,
     .head_dim = 64, .src_dtype = F16, .cache_dtype = E4M3, .k_scale = 0.0125f, .v_scale = 0.003f},
    {.name = "bf16_to_e4m3_hnd_p1", .layout = HND, .page_size = 1, .num_kv_heads = 2,
     .head_dim = 128, .src_dtype = BF16, .cache_dtype = E4M3, .k_scale = 0.02f, .v_scale = 0.5f},
    {.name = "f16_to_e5m2_hnd_p16", .layout = HND, .page_size = 16, .num_kv_heads = 4,
     .head_dim = 64, .src_dtype = F16, .cache_dtype = E5M2, .k_scale = 0.25f, .v_scale = 3.0f},
    {.name = "bf16_to_e5m2_nhd_p1", .layout = NHD, .page_size = 1, .num_kv_heads = 1,
     .head_dim = 64, .src_dtype = BF16, .cache_dtype = E5M2, .k_scale = 0.1f, .v_scale = 0.7f},
    {.name = "e4m3_to_e4m3_copy_nhd_p16", .layout = NHD, .page_size = 16, .num_kv_heads = 2,
     .head_dim = 64, .src_dtype = E4M3, .cache_dtype = E4M3, .k_scale = 0.0125f,
     .v_scale = 0.5f},
    {.name = "padded_f16_to_e4m3_hnd_p16", .layout = HND, .page_size = 16, .num_kv_heads = 2,
     .head_dim = 128, .src_dtype = F16, .cache_dtype = E4M3, .k_scale = 0.05f, .v_scale = 0.05f,
     .padded_src = true, .padded_cache = true},
    {.name = "interleaved_bf16_nhd_p16", .layout = NHD, .page_size = 16, .num_kv_heads = 2,
     .head_dim = 64, .src_dtype = BF16, .cache_dtype = BF16, .padded_src = true,
     .interleaved_cache = true},
    {.name = "interleaved_padded_f16_to_e5m2_hnd_p1", .layout = HND, .page_size = 1,
     .num_kv_heads = 2, .head_dim = 64, .src_dtype = F16, .cache_dtype = E5M2, .k_scale = 0.3f,
     .v_scale = 0.3f, .padded_cache = true, .interleaved_cache = true},
};
/* clang-format on */

#define APPEND_CASE_COUNT (sizeof(append_cases) / sizeof(append_cases[0]))

/* flp_single_prefill: one request over a contiguous KV (ragged, batch 1). */
/* clang-format off */
static const prefill_case single_cases[] = {
    {.name = "causal_rope31_f16_d128_g4", .batch = 1, .qo_lens = {9}, .kv_lens = {40},
     .ragged = true, .num_qo_heads = 8, .num_kv_heads = 2, .head_dim = 128, .q_dtype = F16,
     .mask = CAUSAL, .rope = ROPE_LLAMA31},
    {.name = "custom_window_bf16_d64", .batch = 1, .qo_lens = {12}, .prompt = true,
     .ragged = true, .num_qo_heads = 4, .num_kv_heads = 4, .head_dim = 64, .q_dtype = BF16,
     .mask = CUSTOM, .mask_empty_rows = true, .use_window = true, .window_left = 4},
    {.name = "e5m2_alibi_no_lse_bf16_d256", .batch = 1, .qo_lens = {5}, .kv_lens = {30},
     .ragged = true, .num_qo_heads = 4, .num_kv_heads = 1, .head_dim = 256, .q_dtype = BF16,
     .kv_dtype = E5M2, .alibi = ALIBI_CALLER, .no_lse = true, .k_scale = 0.5f, .v_scale = 0.25f},
    {.name = "padded_softcap_f16_g3", .batch = 1, .qo_lens = {7}, .prompt = true, .ragged = true,
     .num_qo_heads = 6, .num_kv_heads = 2, .head_dim = 64, .q_dtype = F16, .mask = CAUSAL,
     .soft_cap = 3.0f, .layout_flags = CASE_PADDED_QO | CASE_PADDED_KV},
};
/* clang-format on */

#define SINGLE_CASE_COUNT (sizeof(single_cases) / sizeof(single_cases[0]))

/* "Append then attend": each request's last qo_len tokens are written by flp_kv_append (rows of
 * q_dtype) into the paged pool, then the prefill attends over the pool. Paged only. */
/* clang-format off */
static const prefill_case attend_cases[] = {
    {.name = "f16_to_e4m3_hnd_p16", .batch = 3, .qo_lens = {4, 1, 9}, .kv_lens = {30, 17, 9},
     .layout = HND, .page_size = 16, .num_qo_heads = 8, .num_kv_heads = 2, .head_dim = 128,
     .q_dtype = F16, .kv_dtype = E4M3, .mask = CAUSAL, .k_scale = 0.0125f, .v_scale = 0.01f},
    {.name = "bf16_nhd_p1_interleaved_padded", .batch = 2, .qo_lens = {5, 3},
     .kv_lens = {20, 3}, .layout = NHD, .page_size = 1, .num_qo_heads = 4, .num_kv_heads = 1,
     .head_dim = 128, .q_dtype = BF16, .mask = CAUSAL,
     .layout_flags = CASE_INTERLEAVED_KV | CASE_PADDED_KV},
};
/* clang-format on */

#define ATTEND_CASE_COUNT (sizeof(attend_cases) / sizeof(attend_cases[0]))

/* The problems of the fixed tests of test_prefill.c. */
/* clang-format off */
/* determinism: a long request (split and merged) among short and empty ones; one KV head keeps
 * the unsplit items (5) under half of even lavapipe's grid of 16, so the split happens there too */
static const prefill_case determinism_case = {
    .name = "determinism", .batch = 4, .qo_lens = {3, 40, 0, 7}, .kv_lens = {1800, 40, 5, 300},
    .layout = NHD, .page_size = 16, .num_qo_heads = 8, .num_kv_heads = 1, .head_dim = 64,
    .q_dtype = F16, .mask = CAUSAL, .soft_cap = 20.0f, .alibi = ALIBI_STANDARD};
/* re-planning and capacity: shape and variant only, the tests set the batches (one KV head: the
 * long request of the re-plan's second batch is split on grids of 16 and up) */
static const prefill_case replan_case = {
    .name = "replan", .layout = HND, .page_size = 16, .num_qo_heads = 6, .num_kv_heads = 1,
    .head_dim = 128, .q_dtype = BF16, .mask = CAUSAL};
static const prefill_case capacity_case = {
    .name = "capacity", .layout = NHD, .page_size = 16, .num_qo_heads = 4, .num_kv_heads = 1,
    .head_dim = 64, .q_dtype = F16, .mask = CAUSAL};
/* bad input: the tests choose the mask and the KV storage */
static const prefill_case bad_input_case = {
    .name = "bad_input", .batch = 2, .qo_lens = {3, 5}, .kv_lens = {20, 9}, .layout = NHD,
    .page_size = 16, .num_qo_heads = 4, .num_kv_heads = 2, .head_dim = 64, .q_dtype = F16,
    .mask = CAUSAL};
/* clang-format on */

#undef F16
#undef BF16
#undef E4M3
#undef E5M2
#undef NHD
#undef HND
#undef CAUSAL
#undef CUSTOM

#endif /* FLP_TESTS_PREFILL_CASES_H */
