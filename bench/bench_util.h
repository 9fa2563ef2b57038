/* What the benchmarks share: the options they parse alike, the float64 check's tolerance, the
 * timing loops (plan host time, runs queued back to back, CUDA-graph replays), opening the
 * context, host memory and seeded random numbers, and the paged K/V pool of the two fixed-shape
 * benchmarks (cascade, mixed): its page tables, its device data and float64 reference rows.
 *
 * Every failure ends the program: exit 2 on a bad option, 1 on a failed flashport call (CHECK of
 * bench_check.h) or no host memory, 77 when the backend has no device. */
#ifndef FLP_BENCH_UTIL_H
#define FLP_BENCH_UTIL_H

#include "flashport/flashport.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- options ------------------------------------------------------------------------------ */

/* Prints the message (printf format) and a newline on stderr, and exits 2. */
_Noreturn void bench_usage_error(const char *format, ...);

/* Exits 2 ("OPTION: every option takes a value") unless argv[1..] pairs up as OPTION VALUE. */
void bench_require_values(int argc, char **argv);

/* cuda, vulkan or auto into *kind; false (and *kind unchanged) for any other name. */
bool bench_backend_by_name(const char *name, flp_backend_kind *kind);

/* --backend cuda|vulkan|auto; exits 2 on anything else. */
flp_backend_kind bench_parse_backend(const char *name);

/* --backend as the decode and merge benchmarks take it: a name other than cuda or vulkan is
 * auto. */
flp_backend_kind bench_backend_or_auto(const char *name);

/* The dtype named as flp_dtype_name names it, if it is one of allowed[count]; else
 * FLP_DTYPE_DEFAULT. */
flp_dtype bench_dtype_by_name(const char *name, const flp_dtype *allowed, size_t count);

/* --page-ids run|plan into *at_run (run: true); false (and *at_run unchanged) on anything else. */
bool bench_page_ids_by_name(const char *name, bool *at_run);

/* A whole number in [0, INT32_MAX]; exits 2 ("OPTION VALUE: expected a count") on anything
 * else. */
int32_t bench_parse_count(const char *option, const char *value);

/* An option that takes a count, and where it goes. */
typedef struct bench_count_option {
    const char *name; /* e.g. "--batch" */
    int32_t *value;
} bench_count_option;

/* The options the fixed-shape benchmarks share besides their counts. */
typedef struct bench_paged_options {
    flp_backend_kind backend;
    flp_dtype dtype; /* of Q, K, V and O: bf16 or f16 */
    bool page_ids_at_run;
} bench_paged_options;

/* The fixed-shape benchmarks' command line: every option takes a value; --backend
 * cuda|vulkan|auto (default auto), --dtype bf16|f16 (default bf16), --page-ids run|plan (default
 * run) and the counts[num_counts] (their defaults: the values they point to). Exits 2 on an
 * unknown option or a bad value. */
bench_paged_options bench_parse_paged_options(int argc, char **argv,
                                              const bench_count_option *counts, size_t num_counts);

/* ---- the float64 check -------------------------------------------------------------------- */

/* The largest relative error an output of this dtype may show against float64: f32 1e-5, bf16
 * 1.6e-2, any other (f16) 2e-3. */
double bench_tolerance(flp_dtype dtype);

/* Copies the distinct values of candidates[count] to picked, in order; returns how many. */
int32_t bench_distinct(const int32_t *candidates, int32_t count, int32_t *picked);

/* ---- context and timing ------------------------------------------------------------------- */

/* A context as desc asks, its device described in *info; exits 77 ("no device for this backend:
 * STATUS") when it cannot be created. */
flp_context *bench_open_context(const flp_context_desc *desc, flp_device_info *info);

/* One timed call (a plan or a run) of what arg describes. */
typedef flp_status (*bench_call)(void *arg);

/* Host calls timed for a plan's host time. */
#define BENCH_PLAN_SAMPLES 21
/* Batches (queued runs) or graph replays timed for a run's time. */
#define BENCH_TIME_SAMPLES 5

/* Host seconds of one plan call: the median of BENCH_PLAN_SAMPLES calls. */
double bench_plan_seconds(flp_context *ctx, bench_call plan, void *arg);

/* Seconds per run: the median of BENCH_TIME_SAMPLES batches of `iters` runs queued back to
 * back, after one warm-up run. */
double bench_queued_seconds(flp_context *ctx, int iters, bench_call run, void *arg);

/* Seconds per run of `iters` runs replayed from a CUDA graph (bench/cuda_graph.h), the median of
 * BENCH_TIME_SAMPLES replays; negative when ctx is not CUDA or the capture fails. */
double bench_graph_seconds(flp_context *ctx, int iters, bench_call run, void *arg);

/* ---- host memory and random numbers ------------------------------------------------------- */

/* malloc that exits 1 ("out of host memory") when it fails; 0 bytes is 1. */
void *bench_xmalloc(size_t bytes);

/* The next value of the xorshift64 generator at *state (non-zero). */
uint64_t bench_xorshift64(uint64_t *state);

/* The next value of the splitmix64 generator at *state (peer_torch_prefill.py has it too). */
uint64_t bench_splitmix64(uint64_t *state);

/* Uniform in [-1, 1) from bench_xorshift64, never zero (a zeroed page would hide a wrong page
 * id). */
float bench_nonzero_uniform(uint64_t *state);

/* 0 .. n - 1 in a random order (Fisher-Yates over bench_xorshift64): ids [n]. */
int32_t *bench_shuffled_ids(int32_t n, uint64_t *state);

/* A buffer of `bytes` bytes on ctx. */
flp_buffer *bench_create_buffer(flp_context *ctx, size_t bytes);

/* A K/V cache holds this many random elements repeated (bench_upload_random; odd, so that pages
 * and rows differ). */
#define BENCH_BLOCK_ELEMS ((size_t)(1u << 22) + 1u)

/* min(n, block_elems) bench_nonzero_uniform values rounded to dtype, repeated into the n elements
 * of buf (element i holds block[i % block_elems]); returns the block as stored (dequantised):
 * [min(n, block_elems)]. */
float *bench_upload_random(flp_context *ctx, flp_buffer *buf, flp_dtype dtype, size_t n,
                           size_t block_elems, uint64_t *state);

/* ---- the fixed-shape paged K/V pool (cascade, mixed) -------------------------------------- */

/* The fixed shape: 32 query heads over 8 KV heads, head_dim 128, pages of 16 tokens (NHD). */
#define BENCH_QO_HEADS 32
#define BENCH_KV_HEADS 8
#define BENCH_HEAD_DIM 128
#define BENCH_PAGE_SIZE 16
#define BENCH_GQA_GROUP (BENCH_QO_HEADS / BENCH_KV_HEADS)
#define BENCH_Q_ROW_ELEMS ((size_t)BENCH_QO_HEADS * BENCH_HEAD_DIM)
#define BENCH_KV_ROW_ELEMS ((size_t)BENCH_KV_HEADS * BENCH_HEAD_DIM)
#define BENCH_PAGE_ELEMS ((size_t)BENCH_PAGE_SIZE * BENCH_KV_ROW_ELEMS)

/* A CSR page table over `count` groups of consecutive query rows (a cascade level's groups, or a
 * batch's requests), its page ids those of the pool. */
typedef struct bench_page_table {
    int32_t count;
    int32_t *qo_indptr;  /* [count + 1] */
    int32_t *kv_indptr;  /* [count + 1] */
    int32_t *kv_indices; /* [kv_indptr[count]] */
    int32_t *last;       /* [count] tokens on each group's last page */
    /* the page ids on the device (--page-ids run; bench_upload_page_ids) */
    flp_buffer *ids_buf;
    flp_tensor ids;
} bench_page_table;

/* A table of `count` groups over `pages` pages, its arrays allocated and not filled. */
bench_page_table bench_alloc_page_table(int32_t count, int32_t pages);

/* Copies t's page ids to the device: t->ids [kv_indptr[count]] i32. */
void bench_upload_page_ids(flp_context *ctx, bench_page_table *t);

void bench_free_page_table(bench_page_table *t);

/* Q and the K/V pool on the device, filled with bench_upload_random (Q, then K, then V); Q and
 * the pool's random block as stored (dequantised) on the host. */
typedef struct bench_pool_data {
    flp_buffer *q_buf, *k_buf, *v_buf;
    flp_tensor q;                /* [rows, BENCH_QO_HEADS, BENCH_HEAD_DIM] */
    flp_tensor k_cache, v_cache; /* [pages, BENCH_PAGE_SIZE, BENCH_KV_HEADS, BENCH_HEAD_DIM] */
    float *q_host;               /* [rows, BENCH_QO_HEADS, BENCH_HEAD_DIM] */
    float *k_block, *v_block;    /* [min(pool_elems, BENCH_BLOCK_ELEMS)] */
    size_t q_bytes, pool_elems;
} bench_pool_data;

bench_pool_data bench_make_pool_data(flp_context *ctx, flp_dtype dtype, int32_t rows,
                                     int32_t num_pages, uint64_t *state);

void bench_free_pool_data(bench_pool_data *d);

/* Rows [first, first + rows) of a [*, BENCH_QO_HEADS, BENCH_HEAD_DIM] buffer of dtype. */
flp_tensor bench_row_view(flp_buffer *buf, flp_dtype dtype, int32_t first, int32_t rows);

/* The float64 attention of Q's row q_row over the first `len` keys of group g of table t:
 * ref [BENCH_Q_ROW_ELEMS]. One KV head (and its BENCH_GQA_GROUP query heads) at a time, so the
 * host holds one head's keys. */
void bench_reference_row(flp_context *ctx, const bench_pool_data *d, const bench_page_table *t,
                         int32_t g, int32_t q_row, int32_t len, double *ref);

/* The relative error of one output row, bits [BENCH_Q_ROW_ELEMS] of dtype, against ref. */
double bench_row_error(flp_context *ctx, flp_dtype dtype, const uint16_t *bits, const double *ref);

#endif /* FLP_BENCH_UTIL_H */
