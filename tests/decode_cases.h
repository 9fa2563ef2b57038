/* The table of batch-decode cases of the reference suite (tests/test_decode.c, docs/design.md
 * section 9). Included by test_decode.c only: the table is static data.
 *
 * Shapes stay small (CI runs them on lavapipe, a CPU Vulkan driver), but a few requests are long
 * (1000-3000 keys with a batch of 1-2) so that the plan splits them into KV chunks and the merge
 * kernel runs. Every case gets shuffled page ids with unused random pages in the pool unless it
 * asks for sequential pages. */
#ifndef FLP_TESTS_DECODE_CASES_H
#define FLP_TESTS_DECODE_CASES_H

#include "flashport/flashport.h"
#include "tests/case_kinds.h"

#define DECODE_CASE_MAX_LIST 8

/* How the KV lengths of a case are made. */
typedef enum kv_len_gen {
    KV_LIST = 0, /* kv_lens[batch] as given */
    KV_RAGGED,   /* uniform in [gen_min, gen_max] */
    KV_SKEWED,   /* request batch/2 gets gen_max keys, the others 1..gen_min */
} kv_len_gen;

/* Layout options (bit flags). */
#define CASE_INTERLEAVED_KV 1u /* K and V pages in one buffer: [pages, 2, <page>] */
#define CASE_PADDED_QO 2u      /* q/out/lse with padded row and head strides at odd offsets */

typedef struct decode_case {
    const char *name;
    int32_t batch;
    kv_len_gen gen;
    int32_t kv_lens[DECODE_CASE_MAX_LIST]; /* [batch], KV_LIST */
    int32_t gen_min, gen_max;              /* KV_RAGGED / KV_SKEWED */
    int32_t zero_every;                    /* > 0: every zero_every-th request is empty */
    int32_t num_qo_heads, num_kv_heads, head_dim;
    flp_dtype q_dtype, kv_dtype; /* kv_dtype DEFAULT = q_dtype */
    flp_kv_layout layout;
    int32_t page_size;
    int32_t qo_len; /* 0 = 1 */
    bool causal;
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
    bool split;        /* long requests of a small batch: the plan must split them (when the batch
                          does not fill the grid) */
    bool matrix;       /* FLP_DECODE_KERNEL_MATRIX (the prefill kernel); else _VECTOR */
    bool pages_at_run; /* planned with kv_indices = NULL, the runs pass them as a tensor */
} decode_case;

#define F16 FLP_DTYPE_F16
#define BF16 FLP_DTYPE_BF16
#define E4M3 FLP_DTYPE_E4M3
#define E5M2 FLP_DTYPE_E5M2
#define NHD FLP_KV_LAYOUT_NHD
#define HND FLP_KV_LAYOUT_HND

/* fp8 scales: stored values are the [-1, 1] inputs divided by the scale (so e4m3 scales stay
 * above 1/448, its largest finite value). */
/* clang-format off */
static const decode_case decode_cases[] = {
    /* ---- shapes, dtypes, layouts, GQA groups 1/4/7/8 ---- */
    {.name = "f16_nhd_d64_g4", .batch = 4, .kv_lens = {7, 16, 33, 100}, .num_qo_heads = 8,
     .num_kv_heads = 2, .head_dim = 64, .q_dtype = F16, .layout = NHD, .page_size = 16,
     .sequential_pages = true},
    {.name = "bf16_hnd_d128_g1", .batch = 3, .kv_lens = {1, 50, 129}, .num_qo_heads = 4,
     .num_kv_heads = 4, .head_dim = 128, .q_dtype = BF16, .layout = HND, .page_size = 16},
    {.name = "f16_nhd_d256_g8", .batch = 2, .kv_lens = {65, 200}, .num_qo_heads = 8,
     .num_kv_heads = 1, .head_dim = 256, .q_dtype = F16, .layout = NHD, .page_size = 32},
    {.name = "bf16_hnd_d256_g4", .batch = 3, .kv_lens = {17, 90, 3}, .num_qo_heads = 8,
     .num_kv_heads = 2, .head_dim = 256, .q_dtype = BF16, .layout = HND, .page_size = 16},
    {.name = "bf16_nhd_d64_g7_page1", .batch = 5, .gen = KV_RAGGED, .gen_min = 1, .gen_max = 40,
     .num_qo_heads = 14, .num_kv_heads = 2, .head_dim = 64, .q_dtype = BF16, .layout = NHD,
     .page_size = 1},
    {.name = "f16_hnd_d128_g7_page1", .batch = 3, .kv_lens = {3, 0, 57}, .num_qo_heads = 7,
     .num_kv_heads = 1, .head_dim = 128, .q_dtype = F16, .layout = HND, .page_size = 1},
    {.name = "page5_bf16_hnd_g1", .batch = 4, .gen = KV_RAGGED, .gen_min = 1, .gen_max = 60,
     .num_qo_heads = 4, .num_kv_heads = 4, .head_dim = 64, .q_dtype = BF16, .layout = HND,
     .page_size = 5},
    {.name = "page128_f16_hnd_g4", .batch = 3, .kv_lens = {128, 129, 300}, .num_qo_heads = 16,
     .num_kv_heads = 4, .head_dim = 128, .q_dtype = F16, .layout = HND, .page_size = 128},
    {.name = "page64_f16_nhd_g8", .batch = 2, .kv_lens = {64, 190}, .num_qo_heads = 16,
     .num_kv_heads = 2, .head_dim = 64, .q_dtype = F16, .layout = NHD, .page_size = 64},

    /* ---- empty requests, ragged and skewed batches ---- */
    {.name = "empty_requests_bf16_hnd", .batch = 6, .kv_lens = {0, 12, 0, 1, 40, 0},
     .num_qo_heads = 8, .num_kv_heads = 2, .head_dim = 128, .q_dtype = BF16, .layout = HND,
     .page_size = 16},
    {.name = "all_empty_f16", .batch = 3, .kv_lens = {0, 0, 0}, .num_qo_heads = 4,
     .num_kv_heads = 1, .head_dim = 64, .q_dtype = F16, .layout = NHD, .page_size = 16},
    {.name = "skewed_many_short_f16", .batch = 24, .gen = KV_SKEWED, .gen_min = 20, .gen_max = 700,
     .zero_every = 5, .num_qo_heads = 4, .num_kv_heads = 1, .head_dim = 64, .q_dtype = F16,
     .layout = NHD, .page_size = 8},
    {.name = "ragged_batch40_bf16_hnd", .batch = 40, .gen = KV_RAGGED, .gen_min = 1, .gen_max = 60,
     .zero_every = 7, .num_qo_heads = 8, .num_kv_heads = 2, .head_dim = 64, .q_dtype = BF16,
     .layout = HND, .page_size = 16},

    /* ---- long requests: split into KV chunks + merge ---- */
    {.name = "split_f16_nhd_d128", .batch = 1, .kv_lens = {2500}, .num_qo_heads = 8,
     .num_kv_heads = 1, .head_dim = 128, .q_dtype = F16, .layout = NHD, .page_size = 16,
     .split = true},
    {.name = "split_bf16_hnd_d64_g8", .batch = 2, .kv_lens = {3000, 1200}, .num_qo_heads = 8,
     .num_kv_heads = 1, .head_dim = 64, .q_dtype = BF16, .layout = HND, .page_size = 64,
     .split = true},
    {.name = "split_f16_d256_page128", .batch = 1, .kv_lens = {1500}, .num_qo_heads = 2,
     .num_kv_heads = 2, .head_dim = 256, .q_dtype = F16, .layout = NHD, .page_size = 128,
     .split = true},

    /* ---- fp8 KV (compared against the dequantised values) ---- */
    {.name = "e4m3_f16_nhd_d128", .batch = 3, .kv_lens = {20, 77, 150}, .num_qo_heads = 8,
     .num_kv_heads = 2, .head_dim = 128, .q_dtype = F16, .kv_dtype = E4M3, .layout = NHD,
     .page_size = 16, .k_scale = 0.0125f, .v_scale = 0.003f},
    {.name = "e5m2_bf16_hnd_d64", .batch = 3, .kv_lens = {9, 33, 80}, .num_qo_heads = 8,
     .num_kv_heads = 1, .head_dim = 64, .q_dtype = BF16, .kv_dtype = E5M2, .layout = HND,
     .page_size = 16, .k_scale = 0.25f, .v_scale = 3.0f},
    {.name = "e4m3_bf16_split_d128", .batch = 1, .kv_lens = {2000}, .num_qo_heads = 4,
     .num_kv_heads = 1, .head_dim = 128, .q_dtype = BF16, .kv_dtype = E4M3, .layout = NHD,
     .page_size = 32, .k_scale = 0.02f, .v_scale = 0.5f, .split = true},
    {.name = "e5m2_f16_nhd_d256", .batch = 2, .kv_lens = {40, 90}, .num_qo_heads = 4,
     .num_kv_heads = 2, .head_dim = 256, .q_dtype = F16, .kv_dtype = E5M2, .layout = NHD,
     .page_size = 16, .k_scale = 0.5f, .v_scale = 0.125f},
    /* k_scale / v_scale are documented as ignored for 16-bit KV. */
    {.name = "f16_kv_scale_ignored", .batch = 2, .kv_lens = {30, 70}, .num_qo_heads = 8,
     .num_kv_heads = 2, .head_dim = 64, .q_dtype = F16, .layout = NHD, .page_size = 16,
     .k_scale = 0.5f, .v_scale = 4.0f},

    /* ---- variants ---- */
    {.name = "softcap_f16_g1", .batch = 3, .kv_lens = {30, 90, 5}, .num_qo_heads = 8,
     .num_kv_heads = 8, .head_dim = 128, .q_dtype = F16, .layout = NHD, .page_size = 16,
     .sm_scale = 0.5f, .soft_cap = 2.0f},
    {.name = "window_f16_g4", .batch = 4, .kv_lens = {3, 21, 90, 400}, .num_qo_heads = 8,
     .num_kv_heads = 2, .head_dim = 64, .q_dtype = F16, .layout = NHD, .page_size = 8,
     .use_window = true, .window_left = 20},
    {.name = "window0_bf16_hnd", .batch = 2, .kv_lens = {10, 50}, .num_qo_heads = 4,
     .num_kv_heads = 1, .head_dim = 128, .q_dtype = BF16, .layout = HND, .page_size = 16,
     .use_window = true, .window_left = 0},
    {.name = "window_split_bf16", .batch = 1, .kv_lens = {2000}, .num_qo_heads = 8,
     .num_kv_heads = 2, .head_dim = 128, .q_dtype = BF16, .layout = NHD, .page_size = 16,
     .use_window = true, .window_left = 700, .split = true},
    {.name = "alibi_standard_h12_g3", .batch = 2, .kv_lens = {40, 77}, .num_qo_heads = 12,
     .num_kv_heads = 4, .head_dim = 64, .q_dtype = F16, .layout = NHD, .page_size = 16,
     .alibi = ALIBI_STANDARD},
    {.name = "alibi_caller_bf16_hnd", .batch = 3, .kv_lens = {5, 64, 130}, .num_qo_heads = 8,
     .num_kv_heads = 1, .head_dim = 128, .q_dtype = BF16, .layout = HND, .page_size = 16,
     .alibi = ALIBI_CALLER},
    {.name = "alibi_split_g8", .batch = 1, .kv_lens = {1800}, .num_qo_heads = 16, .num_kv_heads = 2,
     .head_dim = 64, .q_dtype = F16, .layout = NHD, .page_size = 32, .alibi = ALIBI_STANDARD,
     .split = true},
    {.name = "rope_default_f16", .batch = 2, .kv_lens = {60, 200}, .num_qo_heads = 8,
     .num_kv_heads = 2, .head_dim = 128, .q_dtype = F16, .layout = NHD, .page_size = 16,
     .rope = ROPE_DEFAULT},
    {.name = "rope_scaled_bf16_hnd", .batch = 3, .kv_lens = {1, 45, 130}, .num_qo_heads = 4,
     .num_kv_heads = 4, .head_dim = 64, .q_dtype = BF16, .layout = HND, .page_size = 8,
     .rope = ROPE_SCALED},
    {.name = "rope_llama31_bf16", .batch = 2, .kv_lens = {300, 45}, .num_qo_heads = 8,
     .num_kv_heads = 2, .head_dim = 128, .q_dtype = BF16, .layout = NHD, .page_size = 16,
     .rope = ROPE_LLAMA31},
    {.name = "rope_offsets_f16", .batch = 3, .kv_lens = {17, 64, 99}, .num_qo_heads = 8,
     .num_kv_heads = 2, .head_dim = 128, .q_dtype = F16, .layout = NHD, .page_size = 16,
     .rope = ROPE_DEFAULT, .rope_offsets = true},
    {.name = "rope_offsets_split_f16_hnd", .batch = 1, .kv_lens = {1000}, .num_qo_heads = 4,
     .num_kv_heads = 1, .head_dim = 64, .q_dtype = F16, .layout = HND, .page_size = 16,
     .rope = ROPE_SCALED, .rope_offsets = true, .split = true},
    {.name = "sm_scale_custom_f16", .batch = 2, .kv_lens = {33, 80}, .num_qo_heads = 8,
     .num_kv_heads = 2, .head_dim = 128, .q_dtype = F16, .layout = NHD, .page_size = 16,
     .sm_scale = 0.3f},
    {.name = "no_lse_bf16", .batch = 3, .kv_lens = {12, 0, 50}, .num_qo_heads = 4,
     .num_kv_heads = 1, .head_dim = 64, .q_dtype = BF16, .layout = NHD, .page_size = 16,
     .no_lse = true},

    /* ---- several query tokens per request (speculative decoding) ---- */
    {.name = "causal_qo2_f16_g4", .batch = 3, .kv_lens = {2, 30, 100}, .num_qo_heads = 8,
     .num_kv_heads = 2, .head_dim = 128, .q_dtype = F16, .layout = NHD, .page_size = 16,
     .qo_len = 2, .causal = true},
    {.name = "causal_qo4_window_bf16_hnd", .batch = 4, .kv_lens = {4, 17, 64, 0}, .num_qo_heads = 8,
     .num_kv_heads = 1, .head_dim = 64, .q_dtype = BF16, .layout = HND, .page_size = 16,
     .qo_len = 4, .causal = true, .use_window = true, .window_left = 8},
    {.name = "causal_qo3_split_f16", .batch = 1, .kv_lens = {1500}, .num_qo_heads = 8,
     .num_kv_heads = 2, .head_dim = 128, .q_dtype = F16, .layout = NHD, .page_size = 16,
     .qo_len = 3, .causal = true, .split = true},
    {.name = "qo2_no_mask_f16", .batch = 2, .kv_lens = {10, 50}, .num_qo_heads = 4,
     .num_kv_heads = 2, .head_dim = 64, .q_dtype = F16, .layout = NHD, .page_size = 16,
     .qo_len = 2},

    /* ---- non-contiguous strides ---- */
    {.name = "interleaved_kv_nhd_f16", .batch = 3, .kv_lens = {19, 64, 140}, .num_qo_heads = 8,
     .num_kv_heads = 2, .head_dim = 128, .q_dtype = F16, .layout = NHD, .page_size = 16,
     .layout_flags = CASE_INTERLEAVED_KV},
    {.name = "interleaved_hnd_padded_bf16", .batch = 4, .gen = KV_RAGGED, .gen_min = 1,
     .gen_max = 90, .num_qo_heads = 12, .num_kv_heads = 4, .head_dim = 64, .q_dtype = BF16,
     .layout = HND, .page_size = 16, .layout_flags = CASE_INTERLEAVED_KV | CASE_PADDED_QO},
    {.name = "padded_e4m3_g7", .batch = 3, .kv_lens = {8, 70, 33}, .num_qo_heads = 14,
     .num_kv_heads = 2, .head_dim = 128, .q_dtype = F16, .kv_dtype = E4M3, .layout = NHD,
     .page_size = 32, .k_scale = 0.01f, .v_scale = 0.01f, .layout_flags = CASE_PADDED_QO},

    /* ---- everything at once ---- */
    {.name = "combo_alibi_e4m3_qo2", .batch = 3, .kv_lens = {4, 60, 700}, .num_qo_heads = 8,
     .num_kv_heads = 2, .head_dim = 64, .q_dtype = BF16, .kv_dtype = E4M3, .layout = HND,
     .page_size = 16, .qo_len = 2, .causal = true, .use_window = true, .window_left = 50,
     .soft_cap = 5.0f, .sm_scale = 0.2f, .alibi = ALIBI_CALLER, .k_scale = 0.01f, .v_scale = 0.02f,
     .layout_flags = CASE_INTERLEAVED_KV | CASE_PADDED_QO},
    {.name = "combo_rope_softcap_qo3", .batch = 2, .kv_lens = {40, 300}, .num_qo_heads = 8,
     .num_kv_heads = 2, .head_dim = 128, .q_dtype = F16, .layout = NHD, .page_size = 16,
     .qo_len = 3, .causal = true, .use_window = true, .window_left = 64, .soft_cap = 10.0f,
     .rope = ROPE_LLAMA31, .rope_offsets = true, .layout_flags = CASE_PADDED_QO},

    /* ---- the matrix kernel (FLP_DECODE_KERNEL_MATRIX): the same batches on the prefill kernel,
       from one query row per KV head to 64 ---- */
    {.name = "matrix_bf16_nhd_g4", .batch = 4, .kv_lens = {7, 16, 33, 100}, .num_qo_heads = 8,
     .num_kv_heads = 2, .head_dim = 128, .q_dtype = BF16, .layout = NHD, .page_size = 16,
     .matrix = true},
    {.name = "matrix_f16_hnd_d64_g1_page1", .batch = 3, .kv_lens = {3, 0, 57}, .num_qo_heads = 4,
     .num_kv_heads = 4, .head_dim = 64, .q_dtype = F16, .layout = HND, .page_size = 1,
     .matrix = true},
    {.name = "matrix_causal_qo4_g4_d256", .batch = 3, .kv_lens = {4, 90, 33}, .num_qo_heads = 8,
     .num_kv_heads = 2, .head_dim = 256, .q_dtype = F16, .layout = NHD, .page_size = 32,
     .qo_len = 4, .causal = true, .matrix = true},
    {.name = "matrix_causal_qo8_g8_bf16_hnd", .batch = 2, .kv_lens = {8, 150}, .num_qo_heads = 16,
     .num_kv_heads = 2, .head_dim = 128, .q_dtype = BF16, .layout = HND, .page_size = 16,
     .qo_len = 8, .causal = true, .matrix = true},
    {.name = "matrix_empty_requests_qo2", .batch = 5, .kv_lens = {0, 12, 0, 2, 40},
     .num_qo_heads = 8, .num_kv_heads = 2, .head_dim = 64, .q_dtype = BF16, .layout = NHD,
     .page_size = 16, .qo_len = 2, .causal = true, .matrix = true},
    {.name = "matrix_skewed_f16", .batch = 24, .gen = KV_SKEWED, .gen_min = 20, .gen_max = 700,
     .zero_every = 5, .num_qo_heads = 8, .num_kv_heads = 1, .head_dim = 64, .q_dtype = F16,
     .layout = NHD, .page_size = 8, .matrix = true},
    {.name = "matrix_split_qo3_f16", .batch = 1, .kv_lens = {2500}, .num_qo_heads = 8,
     .num_kv_heads = 2, .head_dim = 128, .q_dtype = F16, .layout = NHD, .page_size = 16,
     .qo_len = 3, .causal = true, .split = true, .matrix = true},
    {.name = "matrix_e4m3_bf16_split", .batch = 2, .kv_lens = {2000, 300}, .num_qo_heads = 8,
     .num_kv_heads = 2, .head_dim = 128, .q_dtype = BF16, .kv_dtype = E4M3, .layout = NHD,
     .page_size = 16, .k_scale = 0.02f, .v_scale = 0.5f, .split = true, .matrix = true},
    {.name = "matrix_e5m2_f16_hnd_qo2", .batch = 3, .kv_lens = {9, 33, 80}, .num_qo_heads = 8,
     .num_kv_heads = 1, .head_dim = 64, .q_dtype = F16, .kv_dtype = E5M2, .layout = HND,
     .page_size = 16, .qo_len = 2, .causal = true, .k_scale = 0.25f, .v_scale = 3.0f,
     .matrix = true},
    {.name = "matrix_window_alibi_qo2", .batch = 4, .kv_lens = {3, 21, 90, 400}, .num_qo_heads = 8,
     .num_kv_heads = 2, .head_dim = 64, .q_dtype = F16, .layout = NHD, .page_size = 8,
     .qo_len = 2, .causal = true, .use_window = true, .window_left = 20, .alibi = ALIBI_CALLER,
     .matrix = true},
    {.name = "matrix_rope_softcap_qo3_padded", .batch = 2, .kv_lens = {40, 300}, .num_qo_heads = 8,
     .num_kv_heads = 2, .head_dim = 128, .q_dtype = F16, .layout = NHD, .page_size = 16,
     .qo_len = 3, .causal = true, .soft_cap = 10.0f, .sm_scale = 0.3f, .rope = ROPE_LLAMA31,
     .rope_offsets = true, .layout_flags = CASE_PADDED_QO | CASE_INTERLEAVED_KV, .matrix = true},
    {.name = "matrix_no_lse_g7_page5", .batch = 3, .kv_lens = {12, 0, 50}, .num_qo_heads = 7,
     .num_kv_heads = 1, .head_dim = 64, .q_dtype = BF16, .layout = HND, .page_size = 5,
     .no_lse = true, .matrix = true},

    /* ---- page ids at run time (the plan gets kv_indices = NULL) ---- */
    {.name = "pages_at_run_split_bf16_nhd", .batch = 3, .kv_lens = {2600, 0, 45},
     .num_qo_heads = 8, .num_kv_heads = 2, .head_dim = 128, .q_dtype = BF16, .layout = NHD,
     .page_size = 16, .split = true, .pages_at_run = true},
    {.name = "pages_at_run_e4m3_hnd_page1", .batch = 4, .gen = KV_RAGGED, .gen_min = 1,
     .gen_max = 90, .num_qo_heads = 8, .num_kv_heads = 2, .head_dim = 64, .q_dtype = F16,
     .kv_dtype = E4M3, .layout = HND, .page_size = 1, .k_scale = 0.02f, .v_scale = 0.5f,
     .causal = true, .pages_at_run = true},
    {.name = "pages_at_run_qo4_causal_window", .batch = 3, .kv_lens = {7, 130, 61},
     .num_qo_heads = 16, .num_kv_heads = 2, .head_dim = 128, .q_dtype = F16, .layout = NHD,
     .page_size = 16, .qo_len = 4, .causal = true, .use_window = true, .window_left = 40,
     .pages_at_run = true},
    {.name = "pages_at_run_matrix_split_qo3", .batch = 2, .kv_lens = {2200, 90},
     .num_qo_heads = 8, .num_kv_heads = 2, .head_dim = 128, .q_dtype = BF16, .layout = NHD,
     .page_size = 16, .qo_len = 3, .causal = true, .split = true, .matrix = true,
     .pages_at_run = true},
    {.name = "pages_at_run_matrix_rope_hnd", .batch = 3, .kv_lens = {33, 0, 150},
     .num_qo_heads = 8, .num_kv_heads = 1, .head_dim = 64, .q_dtype = F16, .layout = HND,
     .page_size = 8, .qo_len = 2, .causal = true, .rope = ROPE_LLAMA31, .rope_offsets = true,
     .matrix = true, .pages_at_run = true},
};
/* clang-format on */

#define DECODE_CASE_COUNT (sizeof(decode_cases) / sizeof(decode_cases[0]))

#undef F16
#undef BF16
#undef E4M3
#undef E5M2
#undef NHD
#undef HND

#endif /* FLP_TESTS_DECODE_CASES_H */
