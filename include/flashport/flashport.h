/* flashport: portable attention kernels for LLM inference (CUDA and Vulkan).
 *
 * Everything here is backend-neutral. Conventions (docs/api.md has the long form):
 * - every function returns flp_status (FLP_OK = 0, errors negative) unless it
 *   is a getter or a destroy; flp_context_last_error() gives the full message;
 * - parameter structs are zero-initialised by the caller, zero means the
 *   documented default, and a struct need only live for the call;
 * - nothing is queued or written when validation fails;
 * - the library never prints unless a log callback is set and never aborts.
 */
#ifndef FLASHPORT_H
#define FLASHPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define FLP_API __declspec(dllexport)
#elif defined(__GNUC__)
#define FLP_API __attribute__((visibility("default")))
#else
#define FLP_API
#endif

#define FLP_VERSION_MAJOR 0
#define FLP_VERSION_MINOR 1
#define FLP_VERSION_PATCH 0

#define FLP_MAX_DIMS 6
/* Decode accepts up to this many query tokens per request (speculative decoding). */
#define FLP_DECODE_MAX_QO_LEN 8
#define FLP_MAX_PAGE_SIZE 128
#define FLP_MAX_HEAD_DIM 256

/* ---- status --------------------------------------------------------------------------- */

typedef enum flp_status {
    FLP_OK = 0,
    FLP_ERROR_INVALID_ARGUMENT = -1,
    FLP_ERROR_UNSUPPORTED = -2,
    FLP_ERROR_OUT_OF_MEMORY = -3,
    FLP_ERROR_CAPACITY = -4,
    FLP_ERROR_COMPILE = -5,
    FLP_ERROR_BACKEND = -6,
    FLP_ERROR_DEVICE_LOST = -7,
} flp_status;

/* Name of a status ("FLP_ERROR_CAPACITY"); never NULL. Thread-safe. */
FLP_API const char *flp_status_string(flp_status status);

/* ---- dtypes --------------------------------------------------------------------------- */

typedef enum flp_dtype {
    FLP_DTYPE_DEFAULT = 0, /* only in flp_variant: "the documented default" */
    FLP_DTYPE_F32 = 1,
    FLP_DTYPE_F16 = 2,
    FLP_DTYPE_BF16 = 3,
    FLP_DTYPE_E4M3 = 4, /* fp8 e4m3fn: no infinities, 0x7f/0xff are NaN, max 448 */
    FLP_DTYPE_E5M2 = 5, /* fp8 e5m2: IEEE-like, max 57344 */
    FLP_DTYPE_I32 = 6,
    FLP_DTYPE_U8 = 7,
} flp_dtype;

/* Bytes per element, 0 for FLP_DTYPE_DEFAULT or an unknown value. Thread-safe. */
FLP_API size_t flp_dtype_size(flp_dtype dtype);
/* "f16", "bf16", ...; "invalid" for unknown values. Thread-safe. */
FLP_API const char *flp_dtype_name(flp_dtype dtype);

/* Conversions, round to nearest even; NaN stays NaN; overflow saturates to the largest finite
 * value for e4m3 (which has no infinity) and becomes infinity for f16/bf16/e5m2. Thread-safe. */
FLP_API uint16_t flp_f32_to_f16(float x);
FLP_API float flp_f16_to_f32(uint16_t h);
FLP_API uint16_t flp_f32_to_bf16(float x);
FLP_API float flp_bf16_to_f32(uint16_t h);
FLP_API uint8_t flp_f32_to_e4m3(float x);
FLP_API float flp_e4m3_to_f32(uint8_t v);
FLP_API uint8_t flp_f32_to_e5m2(float x);
FLP_API float flp_e5m2_to_f32(uint8_t v);
/* Convert n floats to dtype (F32, F16, BF16, E4M3, E5M2) into dst / back. Thread-safe. */
FLP_API flp_status flp_convert_from_f32(flp_dtype dtype, const float *src, void *dst, size_t n);
FLP_API flp_status flp_convert_to_f32(flp_dtype dtype, const void *src, float *dst, size_t n);

/* ---- context -------------------------------------------------------------------------- */

typedef enum flp_backend_kind {
    FLP_BACKEND_AUTO = 0, /* CUDA if a CUDA device is present, else a Vulkan GPU, else any
                             Vulkan device (lavapipe) */
    FLP_BACKEND_CUDA = 1,
    FLP_BACKEND_VULKAN = 2,
} flp_backend_kind;

typedef enum flp_log_level {
    FLP_LOG_DEBUG = 0,
    FLP_LOG_INFO = 1,
    FLP_LOG_WARNING = 2,
    FLP_LOG_ERROR = 3,
} flp_log_level;

/* Called from the thread that made the call that logs; message is valid for the call. */
typedef void (*flp_log_fn)(void *user_data, flp_log_level level, const char *message);

typedef struct flp_context flp_context;

/* Zero-initialise. */
typedef struct flp_context_desc {
    flp_backend_kind backend; /* default AUTO */
    int device_index;         /* index among the chosen backend's devices; AUTO: among the
                                 devices of the backend it picks. Default 0 */
    flp_log_fn log;           /* optional; NULL = silent */
    void *log_user_data;
    flp_log_level log_level; /* least severe level passed to log; default DEBUG */
    /* Directory of the compiled-kernel cache (kernels compiled at run time, kept across
     * processes; docs/design.md 8.3). NULL: the environment's FLP_CACHE_DIR when set, else
     * $XDG_CACHE_HOME/flashport, else $HOME/.cache/flashport. "" (here or in FLP_CACHE_DIR): no
     * disk cache, kernels are kept in memory only. At most 4095 bytes. */
    const char *cache_dir;
} flp_context_desc;

/* Creates a context on one device. desc may be NULL: all defaults (AUTO backend, device 0, no
 * log). AUTO tries CUDA, then a Vulkan GPU, then any Vulkan device; the backends it passes over
 * are logged at FLP_LOG_DEBUG. On failure *out is NULL and, when a log callback is set, the
 * reason is logged once at FLP_LOG_ERROR (there is no context to hold a last-error message). */
FLP_API flp_status flp_context_create(const flp_context_desc *desc, flp_context **out);
/* Waits for queued work, frees everything the context owns. Accepts NULL. */
FLP_API void flp_context_destroy(flp_context *ctx);
/* The message of the last failed call on ctx ("" if none). Valid until the next call on ctx. */
FLP_API const char *flp_context_last_error(const flp_context *ctx);

/* What the context runs on. Thread-safe once filled. */
typedef struct flp_device_info {
    flp_backend_kind backend; /* CUDA or VULKAN, never AUTO */
    char backend_name[16];    /* "cuda" / "vulkan" */
    char device_name[256];
    char driver_info[128];
    bool is_software;               /* e.g. lavapipe */
    int compute_units;              /* SMs; for Vulkan the best estimate available */
    int subgroup_size;              /* warp / subgroup width */
    size_t shared_memory_per_group; /* bytes of shared memory one workgroup may use */
    size_t max_buffer_bytes;        /* largest single flp_buffer */
    uint64_t device_memory_bytes;   /* device-local memory */
    int compute_capability;         /* CUDA: major*10+minor; Vulkan: 0 */
} flp_device_info;

FLP_API flp_status flp_context_get_info(const flp_context *ctx, flp_device_info *out);

/* Blocks until all work queued on the context's stream or queue has finished. For a caller's
 * Vulkan command buffer (flashport_vulkan.h) the caller owns submission and this only waits for
 * the library's own submissions. */
FLP_API flp_status flp_context_synchronize(flp_context *ctx);

/* ---- buffers -------------------------------------------------------------------------- */

/* Device memory. Not thread-safe: use one buffer from one thread at a time. */
typedef struct flp_buffer flp_buffer;

typedef struct flp_buffer_desc {
    size_t size; /* bytes, > 0 */
} flp_buffer_desc;

FLP_API flp_status flp_buffer_create(flp_context *ctx, const flp_buffer_desc *desc,
                                     flp_buffer **out);
/* Accepts NULL. Wrapped buffers (flashport_cuda.h / flashport_vulkan.h) are not freed. */
FLP_API void flp_buffer_destroy(flp_buffer *buf);
FLP_API size_t flp_buffer_size(const flp_buffer *buf);
/* Host <-> device copies. Ordered after all work queued before on the context and blocking:
 * when they return, the copy is done. */
FLP_API flp_status flp_buffer_write(flp_context *ctx, flp_buffer *buf, size_t offset,
                                    const void *src, size_t size);
FLP_API flp_status flp_buffer_read(flp_context *ctx, const flp_buffer *buf, size_t offset,
                                   void *dst, size_t size);

/* ---- tensors -------------------------------------------------------------------------- */

/* A view of a buffer: element (i0, i1, ...) lives at byte
 * offset + (i0*stride[0] + i1*stride[1] + ...) * flp_dtype_size(dtype).
 * Strides are in elements. Kernels need the last dimension contiguous (stride 1). */
typedef struct flp_tensor {
    flp_buffer *buf;
    size_t offset; /* bytes */
    flp_dtype dtype;
    int ndim;
    int64_t shape[FLP_MAX_DIMS];  /* [ndim] */
    int64_t stride[FLP_MAX_DIMS]; /* [ndim], elements */
} flp_tensor;

/* A contiguous row-major view of buf at byte offset: shape[ndim]. */
FLP_API flp_tensor flp_tensor_contiguous(flp_buffer *buf, size_t offset, flp_dtype dtype, int ndim,
                                         const int64_t *shape);

/* ---- attention variants --------------------------------------------------------------- */

typedef enum flp_mask_mode {
    FLP_MASK_NONE = 0,
    FLP_MASK_CAUSAL = 1, /* key j kept for row i iff j <= kv_len - qo_len + i */
    FLP_MASK_CUSTOM = 2, /* packed bits per request (prefill only; docs/design.md section 3) */
} flp_mask_mode;

typedef enum flp_pos_encoding {
    FLP_POS_NONE = 0,
    FLP_POS_ROPE_LLAMA = 1, /* fused rotate-half RoPE on q and k inside the kernel */
    FLP_POS_ALIBI = 2,
} flp_pos_encoding;

typedef enum flp_kv_layout {
    FLP_KV_LAYOUT_NHD = 0, /* [pages, page_size, num_kv_heads, head_dim] */
    FLP_KV_LAYOUT_HND = 1, /* [pages, num_kv_heads, page_size, head_dim] */
} flp_kv_layout;

/* Llama RoPE: frequency of pair d is theta^(-2d/D) / scale, optionally with Llama 3.1 scaling. */
typedef struct flp_rope_params {
    float theta; /* default 10000 */
    float scale; /* default 1 */
    bool llama31;
    float llama31_factor;                  /* e.g. 8 (> 0 when llama31) */
    float llama31_low_freq_factor;         /* e.g. 1 */
    float llama31_high_freq_factor;        /* e.g. 4 (> low_freq_factor) */
    int32_t llama31_original_max_position; /* e.g. 8192 (> 0) */
} flp_rope_params;

/* A user parameter of a variant's snippets (docs/variants.md), declared by name: scalars are
 * bound by value, buffers are read-only arrays a snippet reads as name[index] (an index outside
 * the bound buffer reads 0). */
typedef enum flp_variant_param_type {
    FLP_PARAM_FLOAT = 0,
    FLP_PARAM_INT = 1,
    FLP_PARAM_FLOAT_BUFFER = 2,
    FLP_PARAM_INT_BUFFER = 3,
} flp_variant_param_type;

typedef struct flp_variant_param {
    const char *name; /* [a-z][a-z0-9_]*, at most 31 characters (docs/variants.md) */
    flp_variant_param_type type;
} flp_variant_param;

/* A run's value of one declared parameter (flp_*_run_args.params): every parameter the plan's
 * variant declares is given exactly once, by name. */
typedef struct flp_param_value {
    const char *name; /* as declared in flp_variant.params */
    float f;          /* FLP_PARAM_FLOAT */
    int32_t i;        /* FLP_PARAM_INT */
    /* FLP_PARAM_FLOAT_BUFFER (F32) or FLP_PARAM_INT_BUFFER (I32): 1-D, contiguous, at least one
     * element, on the context's device; read when the run executes (like every input) */
    const flp_tensor *buffer;
} flp_param_value;

/* One attention variant: plain data, validated by flp_variant_validate. Zero-initialise. */
typedef struct flp_variant {
    int32_t head_dim;      /* 64, 128 or 256 (required) */
    flp_dtype q_dtype;     /* F16 or BF16; DEFAULT = F16. Output has the same dtype */
    flp_dtype kv_dtype;    /* F16, BF16, E4M3, E5M2; DEFAULT = q_dtype */
    flp_mask_mode mask;    /* default NONE */
    bool use_window;       /* sliding window on/off (default off) */
    int32_t window_left;   /* with use_window: key j kept iff j >= pos(i) - window_left, >= 0 */
    float logits_soft_cap; /* > 0: logit = cap * tanh(logit / cap); 0 = off */
    float sm_scale;        /* > 0; 0 = 1/sqrt(head_dim) */
    flp_pos_encoding pos_encoding; /* default NONE */
    flp_rope_params rope;          /* used with FLP_POS_ROPE_LLAMA */
    /* fp8 KV: real value = stored value * scale. 0 = 1. Ignored for 16-bit KV. */
    float k_scale;
    float v_scale;
    /* User snippets (docs/variants.md): function bodies in the snippet language, NULL = none.
     * flp_variant_validate checks them (FLP_ERROR_INVALID_ARGUMENT with the snippet's line and
     * column); a plan copies them and compiles the kernels that take them (FLP_ERROR_COMPILE
     * with the compiler's log; FLP_ERROR_UNSUPPORTED where a backend's kernel does not take
     * them yet: docs/variants.md lists which do). */
    const char *logits_transform;
    const char *logits_mask;
    const char *query_transform;
    const char *output_transform;
    /* The snippets' user parameters: params[num_params], at most 32, names unique. */
    const flp_variant_param *params;
    int32_t num_params;
    /* No softmax (sigmoid attention, docs/variants.md): each kept key weighs its logit after the
     * logits transform, out = sum of weight * v (not normalised), lse is written as 0, split
     * chunks are summed. Taken where the call's kernels take snippets. */
    bool softmax_off;
} flp_variant;

/* FLP_OK, or FLP_ERROR_INVALID_ARGUMENT / FLP_ERROR_UNSUPPORTED with the reason written to
 * message (may be NULL). Thread-safe. */
FLP_API flp_status flp_variant_validate(const flp_variant *variant, char *message,
                                        size_t message_size);

/* The standard ALiBi slopes for num_heads heads (docs/design.md, "Positions") into
 * slopes[num_heads]. */
FLP_API flp_status flp_alibi_standard_slopes(int32_t num_heads, float *slopes);

/* ---- plans ---------------------------------------------------------------------------- */

/* A plan: the work partition for one batch shape, its device memory and scratch. Created once
 * with capacities; re-planning within them keeps every launch size and buffer address, so a
 * captured CUDA graph or a recorded Vulkan command buffer stays valid. Not thread-safe. */
typedef struct flp_plan flp_plan;

/* Which kernel runs flp_decode_*, fixed when the plan is created (docs/design.md 5.5). */
typedef enum flp_decode_kernel {
    /* CUDA: MATRIX when a request's query rows per KV head (max_qo_len x group size) reach
     * FLP_DECODE_MATRIX_MIN_ROWS, else VECTOR. Vulkan: VECTOR (its prefill pipelines are far
     * slower on decode batches). */
    FLP_DECODE_KERNEL_AUTO = 0,
    /* The decode kernel: the decode scheduler's work items, 8 query rows per pass over the
     * keys. CUDA: tensor cores (the rows are the narrow side of the matrix tiles) for a cache
     * of the query dtype or fp8, else CUDA cores; Vulkan: invocations. Best up to 8 rows per
     * KV head. */
    FLP_DECODE_KERNEL_VECTOR = 1,
    /* The prefill kernel over the decode batch: matrix products of 16-row query tiles (tensor
     * cores; on Vulkan the prefill pipeline); best for speculative decoding and large GQA
     * groups. */
    FLP_DECODE_KERNEL_MATRIX = 2,
} flp_decode_kernel;

/* FLP_DECODE_KERNEL_AUTO picks the matrix kernel from this many query rows per KV head (CUDA):
 * beyond the decode kernel's 8 rows per pass. */
#define FLP_DECODE_MATRIX_MIN_ROWS 9

typedef struct flp_plan_desc {
    int32_t max_batch_size; /* requests per plan (required, > 0) */
    int32_t max_qo_len;     /* decode: query tokens per request, 1..FLP_DECODE_MAX_QO_LEN;
                               default 1 */
    int32_t max_pages;      /* capacity of kv_indices (required, > 0) */
    int32_t max_qo_rows;    /* prefill: query rows of a batch (qo_indptr[batch_size]);
                               0 = the plan serves decode only */
    int32_t num_qo_heads;   /* required */
    int32_t num_kv_heads;   /* required, divides num_qo_heads */
    int32_t head_dim;       /* 64, 128 or 256 (required) */
    /* Optional caller workspace: the plan then uses bytes [workspace_offset,
     * workspace_offset + flp_plan_workspace_size) of it and allocates nothing. The buffer
     * must outlive the plan. NULL = the plan allocates its own. */
    flp_buffer *workspace;
    size_t workspace_offset; /* multiple of 256 */
    /* default AUTO; a MATRIX plan (AUTO included, when it picks MATRIX) holds a second prefill
     * region for the decode batch, with its own split-KV scratch (flp_plan_workspace_size
     * counts it): a prefill-only plan with a large GQA group may ask for VECTOR to save it. */
    flp_decode_kernel decode_kernel;
} flp_plan_desc;

/* Device bytes a plan with these capacities needs (plan data and split-KV scratch). */
FLP_API flp_status flp_plan_workspace_size(flp_context *ctx, const flp_plan_desc *desc,
                                           size_t *bytes);
FLP_API flp_status flp_plan_create(flp_context *ctx, const flp_plan_desc *desc, flp_plan **out);
/* Accepts NULL. Does not wait: runs and (CUDA) plan uploads queued on the context's stream may
 * still use the plan's memory, so a caller's workspace may be reused only once they are done
 * (flp_context_synchronize). */
FLP_API void flp_plan_destroy(flp_plan *plan);
/* The kernel flp_decode_* runs on for this plan: FLP_DECODE_KERNEL_VECTOR or _MATRIX
 * (FLP_DECODE_KERNEL_AUTO for NULL). */
FLP_API flp_decode_kernel flp_plan_decode_kernel(const flp_plan *plan);

/* ---- batch decode over a paged KV cache ----------------------------------------------- */

/* Host copies of one step's batch. The page table is copied into the plan's device memory, so
 * run needs no page-table tensors and a captured graph replays with new tables. */
typedef struct flp_decode_plan_args {
    int32_t batch_size;       /* 1..max_batch_size */
    int32_t qo_len;           /* query tokens per request (all requests); default 1 */
    int32_t page_size;        /* 1..FLP_MAX_PAGE_SIZE */
    flp_kv_layout kv_layout;  /* default NHD */
    const int32_t *kv_indptr; /* [batch_size + 1], kv_indptr[0] = 0, non-decreasing */
    /* [kv_indptr[batch_size]] host page ids, checked and copied into the plan; or NULL: each
     * run passes them as a device tensor (flp_decode_run_args.kv_indices) and the plan reads
     * none, so its host time does not grow with the lengths (docs/api.md, "Page ids at run
     * time"). */
    const int32_t *kv_indices;
    const int32_t *kv_last_page_len; /* [batch_size], 1..page_size for requests with pages */
    /* Optional RoPE position offsets per request (NULL = 0): queries sit at
     * kv_len - qo_len + i + q_rope_offset[b], keys at j + k_rope_offset[b]. */
    const int32_t *q_rope_offset; /* [batch_size] or NULL */
    const int32_t *k_rope_offset; /* [batch_size] or NULL */
    const float *alibi_slopes;    /* [num_qo_heads] or NULL = standard slopes */
    flp_variant variant;
} flp_decode_plan_args;

/* Validates everything it can (lengths, page ids >= 0, variant), decides the partition and
 * uploads it. CUDA: the upload is queued on the context's stream and the call does not wait
 * for the device: runs queued before it use the previous partition, runs queued after it the
 * new one; refused while the stream captures a graph (plan outside the capture). Vulkan: blocks
 * until the upload is done; do not re-plan while runs that use the plan are still executing on
 * a caller's command buffer. */
FLP_API flp_status flp_decode_plan(flp_context *ctx, flp_plan *plan,
                                   const flp_decode_plan_args *args);

typedef struct flp_decode_run_args {
    flp_tensor q;          /* [batch_size * qo_len, num_qo_heads, head_dim], q_dtype */
    flp_tensor k_cache;    /* NHD [pages, page_size, num_kv_heads, head_dim] or HND, kv_dtype */
    flp_tensor v_cache;    /* same shape and dtype as k_cache, strides may differ */
    flp_tensor out;        /* same shape as q, q_dtype */
    const flp_tensor *lse; /* optional [batch_size * qo_len, num_qo_heads] f32, NULL = none */
    /* The page ids when the plan was given kv_indices = NULL: 1-D I32, contiguous, at least
     * kv_indptr[batch_size] entries, laid out by the plan's kv_indptr; read by the kernels when
     * they run (a captured graph reads whatever it holds at replay). An id outside [0, pages
     * of the caches) is not followed: nothing outside the caches is read, and the rows of the
     * request that holds it come out wrong (finite). NULL when the plan holds the page ids. */
    const flp_tensor *kv_indices;
    /* The values of the variant's user parameters: params[num_params], each declared one once
     * (NULL, 0 when the variant declares none). */
    const flp_param_value *params;
    int32_t num_params;
} flp_decode_run_args;

/* Launches the decode (and, for split requests, the merge) on the context's stream/queue.
 * Allocates nothing, synchronises nothing. Page ids the plan holds must be < pages of the
 * caches.
 * out and lse must not overlap q, the caches, kv_indices, each other or the plan's memory. */
FLP_API flp_status flp_decode_run(flp_context *ctx, const flp_plan *plan,
                                  const flp_decode_run_args *args);

/* ---- batch prefill / append over a ragged or paged KV ------------------------------------ */

typedef enum flp_kv_storage {
    FLP_KV_PAGED = 0,  /* k/v caches [pages, ...] addressed through the CSR page table */
    FLP_KV_RAGGED = 1, /* k/v [nnz_kv, num_kv_heads, head_dim], request b owns rows
                          kv_indptr[b] .. kv_indptr[b+1]-1 */
} flp_kv_storage;

/* Host copies of one step's batch (docs/design.md section 3). Request b has
 * qo_len = qo_indptr[b+1] - qo_indptr[b] query rows (0 allowed) and kv_len keys, with
 * qo_len <= kv_len; its query row i sits at position kv_len - qo_len + i (prompt: qo_len ==
 * kv_len; append / chunked prefill / speculative verification: qo_len < kv_len). */
typedef struct flp_prefill_plan_args {
    int32_t batch_size;       /* 1..max_batch_size */
    const int32_t *qo_indptr; /* [batch_size + 1], qo_indptr[0] = 0, non-decreasing */
    flp_kv_storage kv_storage;
    /* FLP_KV_PAGED: page indptr, like flp_decode_plan_args; FLP_KV_RAGGED: token indptr. */
    const int32_t *kv_indptr; /* [batch_size + 1], kv_indptr[0] = 0, non-decreasing */
    /* paged: [kv_indptr[batch_size]] host page ids, or NULL: the runs pass them
     * (flp_prefill_run_args.kv_indices), as for decode; ragged: NULL */
    const int32_t *kv_indices;
    const int32_t *kv_last_page_len; /* paged: [batch_size]; ragged: NULL */
    int32_t page_size;               /* paged: 1..FLP_MAX_PAGE_SIZE; ragged: ignored */
    flp_kv_layout kv_layout;         /* paged: NHD or HND; ragged: ignored */
    /* FLP_MASK_CUSTOM: byte offset of request b's row-major [qo_len, kv_len] bit matrix in the
     * run's custom_mask tensor (little-endian bit order). NULL otherwise. */
    const int32_t *mask_indptr;   /* [batch_size] or NULL */
    const int32_t *q_rope_offset; /* [batch_size] or NULL: see flp_decode_plan_args */
    const int32_t *k_rope_offset; /* [batch_size] or NULL */
    const float *alibi_slopes;    /* [num_qo_heads] or NULL = standard slopes */
    flp_variant variant;
} flp_prefill_plan_args;

/* Validates everything it can (lengths, qo_len <= kv_len, page ids, mask offsets, variant),
 * chooses the query tile, splits KV when the batch does not fill the device, assigns the work
 * and uploads it, as flp_decode_plan does (CUDA: in stream order without waiting; Vulkan:
 * blocking). A plan holds one decode and one prefill partition at a time (they do not replace
 * each other). */
FLP_API flp_status flp_prefill_plan(flp_context *ctx, flp_plan *plan,
                                    const flp_prefill_plan_args *args);

typedef struct flp_prefill_run_args {
    flp_tensor q; /* [qo_indptr[batch_size], num_qo_heads, head_dim], q_dtype */
    /* paged: NHD [pages, page_size, num_kv_heads, head_dim] or HND; ragged:
     * [kv_indptr[batch_size], num_kv_heads, head_dim]. kv_dtype */
    flp_tensor k;
    flp_tensor v;                  /* same shape and dtype as k, strides may differ */
    flp_tensor out;                /* same shape as q, q_dtype */
    const flp_tensor *lse;         /* optional [rows, num_qo_heads] f32, NULL = none */
    const flp_tensor *custom_mask; /* FLP_MASK_CUSTOM: 1-D U8 bytes; else NULL */
    /* paged KV planned with kv_indices = NULL: the page ids, as flp_decode_run_args.kv_indices
     * (1-D I32, contiguous, >= kv_indptr[batch_size] entries); else NULL */
    const flp_tensor *kv_indices;
    /* The values of the variant's user parameters, as flp_decode_run_args.params. */
    const flp_param_value *params;
    int32_t num_params;
} flp_prefill_run_args;

/* Launches the prefill (and the merge of split requests). Allocates nothing, synchronises
 * nothing: valid inside CUDA graph capture and recorded Vulkan command buffers. out and lse must
 * not overlap an input, each other or the plan's memory. */
FLP_API flp_status flp_prefill_run(flp_context *ctx, const flp_plan *plan,
                                   const flp_prefill_run_args *args);

/* One request over a contiguous (ragged) KV: q [qo_len, Hq, D], k/v [kv_len, Hkv, D],
 * qo_len <= kv_len. Creates a plan on the context's own memory, plans, runs, waits, and frees
 * it: for convenience and tests, not for serving loops. custom_mask: [qo_len * kv_len] bits. */
typedef struct flp_single_prefill_args {
    flp_tensor q, k, v, out;
    const flp_tensor *lse;         /* optional [qo_len, num_qo_heads] f32 */
    const flp_tensor *custom_mask; /* FLP_MASK_CUSTOM only */
    const float *alibi_slopes;     /* [num_qo_heads] or NULL */
    flp_variant variant;
} flp_single_prefill_args;

FLP_API flp_status flp_single_prefill(flp_context *ctx, const flp_single_prefill_args *args);

/* ---- mixed batches ---------------------------------------------------------------------- */

/* One serving step that mixes decode requests (one query row) with prefill chunks (append over
 * the cache), planned and run with one call each on one plan, which holds a decode and a prefill
 * partition (docs/api.md, "Mixed batches"). The arguments are flp_prefill_plan's and
 * flp_prefill_run's, over a paged cache. The leading requests of one query row run on the decode
 * kernel, the others on the prefill kernel: put the decode requests first. With a custom mask
 * every request runs on the prefill kernel. The plan needs max_qo_rows > 0; flp_decode_plan or
 * flp_prefill_plan on it afterwards replaces the mixed plan. Every re-plan keeps the launches and
 * addresses (both kernels always run), so a captured CUDA graph stays valid. */
FLP_API flp_status flp_mixed_plan(flp_context *ctx, flp_plan *plan,
                                  const flp_prefill_plan_args *args);
/* Queues both kernels (decode first). Allocates nothing, synchronises nothing. */
FLP_API flp_status flp_mixed_run(flp_context *ctx, const flp_plan *plan,
                                 const flp_prefill_run_args *args);

/* ---- merging attention states ---------------------------------------------------------- */

/* The attention of `rows` query rows and num_heads heads over one set of keys, as flp_*_run
 * writes it: the normalised output and the natural-log LSE of the kept logits (-inf: no key).
 * Attention over the union of disjoint key sets is the merge of their states (docs/api.md,
 * "Merging states"): m = max(s_a, s_b), w = exp(s - m), o = (w_a o_a + w_b o_b) / (w_a + w_b),
 * s = m + log(w_a + w_b). A state with lse = -inf contributes nothing; only empty states give
 * o = 0 and lse = -inf. lse must be finite or -inf (a NaN lse makes its row NaN). */
typedef struct flp_state {
    flp_tensor o;   /* [rows, num_heads, head_dim] F16, BF16 or F32 */
    flp_tensor lse; /* [rows, num_heads] F32 */
} flp_state;

/* out = merge(a, b). a, b and out may each have their own o dtype. out.lse.buf NULL: no lse is
 * written. out may be a or b exactly (the same views: an in-place merge); otherwise outputs
 * overlap no input and no other output. */
typedef struct flp_merge_state_args {
    flp_state a, b, out;
} flp_merge_state_args;

FLP_API flp_status flp_merge_state(flp_context *ctx, const flp_merge_state_args *args);

/* state = merge(state, other) on the rows whose mask byte is non-zero (mask NULL: every row);
 * the other rows are left as they are. */
typedef struct flp_merge_state_in_place_args {
    flp_state state;        /* read and written */
    flp_state other;        /* same shape; must not overlap state */
    const flp_tensor *mask; /* optional [rows] U8 */
} flp_merge_state_in_place_args;

FLP_API flp_status flp_merge_state_in_place(flp_context *ctx,
                                            const flp_merge_state_in_place_args *args);

/* Row r of out = the merge of states begin .. end - 1 of `states`, folded in that order:
 * [begin, end) = [indptr[r], indptr[r + 1]), or [r n, (r + 1) n) for n = states_per_row when
 * indptr is NULL. Device-side indptr entries cannot be checked before the launch: they are
 * clamped to [0, num_states], and a row with end <= begin comes out empty (o = 0, lse = -inf). */
typedef struct flp_merge_states_args {
    flp_state states;         /* o [num_states, num_heads, head_dim], lse [num_states, num_heads] */
    const flp_tensor *indptr; /* [rows + 1] I32, contiguous; or NULL */
    int32_t states_per_row;   /* indptr NULL: > 0, num_states = rows x states_per_row; else 0 */
    flp_state out;            /* o [rows, num_heads, head_dim]; lse [rows, num_heads] or buf NULL */
} flp_merge_states_args;

FLP_API flp_status flp_merge_states(flp_context *ctx, const flp_merge_states_args *args);

/* ---- cascade (shared-prefix) attention ------------------------------------------------- */

/* Attention over KV split into levels (docs/api.md, "Cascade"): level l holds num_groups KV
 * sets, each a paged KV of its own pages, and gives each group a contiguous range of query rows
 * (every row belongs to one group of every level). Row r attends the concatenation of its groups'
 * keys, level 0 first: e.g. level 0, one system prompt shared by every request; level 1, a prefix
 * per group of requests; level 2, each request's own tokens. Each level runs as one batch over its
 * groups (a shared prefix is read once for all the rows that share it) and the levels' states are
 * merged by their LSE, in level order. Positions matter only in the last level: FLP_MASK_CAUSAL
 * applies there, row i of a group sitting at kv_len - qo_len + i of that group's keys, and every
 * earlier level is seen whole. */
#define FLP_CASCADE_MAX_LEVELS 8

typedef struct flp_cascade_level_desc {
    int32_t max_groups; /* groups (KV sets) of the level, > 0 */
    int32_t max_pages;  /* capacity of the level's kv_indices, > 0 */
    /* true: every group of the level has exactly one query row (a decode step over each
     * request's own tokens), and the level runs on the decode kernel (flp_decode_*); false:
     * any rows per group, on the prefill kernel. Fixed at creation, so that re-plans launch the
     * same kernels (CUDA graphs). */
    bool one_row_per_group;
} flp_cascade_level_desc;

typedef struct flp_cascade_desc {
    int32_t num_levels;  /* 1..FLP_CASCADE_MAX_LEVELS; every plan gives this many */
    int32_t max_qo_rows; /* query rows of a batch, > 0 */
    int32_t num_qo_heads, num_kv_heads, head_dim;          /* as flp_plan_desc */
    flp_cascade_level_desc levels[FLP_CASCADE_MAX_LEVELS]; /* [num_levels] */
    /* Optional caller workspace, as flp_plan_desc: bytes [workspace_offset, workspace_offset +
     * flp_cascade_workspace_size) (the levels' plans and the per-level states). */
    flp_buffer *workspace;
    size_t workspace_offset; /* multiple of 256 */
} flp_cascade_desc;

/* Not thread-safe; like a plan, re-planning within the capacities keeps every launch and
 * address, so a captured CUDA graph or a recorded Vulkan command buffer stays valid. */
typedef struct flp_cascade flp_cascade;

FLP_API flp_status flp_cascade_workspace_size(flp_context *ctx, const flp_cascade_desc *desc,
                                              size_t *bytes);
FLP_API flp_status flp_cascade_create(flp_context *ctx, const flp_cascade_desc *desc,
                                      flp_cascade **out);
/* Accepts NULL. Does not wait, as flp_plan_destroy. */
FLP_API void flp_cascade_destroy(flp_cascade *cascade);

/* One level of a batch: its groups' query rows and page table (host arrays). */
typedef struct flp_cascade_level {
    int32_t num_groups;       /* 1..max_groups */
    const int32_t *qo_indptr; /* [num_groups + 1]: 0 .. num_rows, non-decreasing */
    const int32_t *kv_indptr; /* [num_groups + 1] page indptr, as flp_decode_plan_args */
    /* [kv_indptr[num_groups]] host page ids, or NULL: each run passes them
     * (flp_cascade_run_args.kv_indices[level]) */
    const int32_t *kv_indices;
    const int32_t *kv_last_page_len; /* [num_groups], 1..page_size for groups with pages */
} flp_cascade_level;

typedef struct flp_cascade_plan_args {
    int32_t num_rows; /* query rows of the batch, 1..max_qo_rows */
    int32_t page_size;
    flp_kv_layout kv_layout;                          /* one K/V pool for every level */
    flp_cascade_level levels[FLP_CASCADE_MAX_LEVELS]; /* [num_levels] */
    /* mask NONE or CAUSAL; RoPE, ALiBi, the sliding window and custom masks depend on absolute
     * positions, which a shared level's rows do not share: FLP_ERROR_UNSUPPORTED (rotate q and k
     * before, as serving engines do). */
    flp_variant variant;
} flp_cascade_plan_args;

/* Validates everything (as flp_prefill_plan and flp_decode_plan do, per level) and plans every
 * level; uploads as they do (CUDA: stream-ordered, refused during a capture). On failure the
 * cascade holds no plan. */
FLP_API flp_status flp_cascade_plan(flp_context *ctx, flp_cascade *cascade,
                                    const flp_cascade_plan_args *args);

typedef struct flp_cascade_run_args {
    flp_tensor q;          /* [num_rows, num_qo_heads, head_dim], q_dtype */
    flp_tensor k_cache;    /* NHD [pages, page_size, num_kv_heads, head_dim] or HND, kv_dtype */
    flp_tensor v_cache;    /* same shape and dtype as k_cache */
    flp_tensor out;        /* same shape as q, q_dtype */
    const flp_tensor *lse; /* optional [num_rows, num_qo_heads] f32 */
    /* per level planned with kv_indices = NULL: its page ids (1-D I32); else NULL */
    const flp_tensor *kv_indices[FLP_CASCADE_MAX_LEVELS];
} flp_cascade_run_args;

/* Queues every level's attention and the merge of their states. Allocates nothing,
 * synchronises nothing. out and lse must not overlap an input, each other or the cascade's
 * memory. */
FLP_API flp_status flp_cascade_run(flp_context *ctx, const flp_cascade *cascade,
                                   const flp_cascade_run_args *args);

/* ---- block-sparse attention ------------------------------------------------------------ */

/* Attention of M query rows over N keys where only some R x C blocks of the [M, N] score matrix
 * are computed (docs/api.md, "Block-sparse attention"): a BSR matrix whose row block i (rows
 * [i R, (i + 1) R)) keeps the column blocks indices[indptr[i] .. indptr[i + 1]) (keys [j C,
 * (j + 1) C)), each optionally masked further by R x C bits. Runs on the paged prefill path with
 * the column blocks as pages, so K/V are read once per row block that keeps them. */
typedef struct flp_block_sparse_desc {
    int32_t max_rows;                             /* query rows M, > 0 */
    int32_t max_blocks;                           /* nonzero blocks, > 0 */
    int32_t block_rows;                           /* R, 1..max_rows */
    int32_t block_cols;                           /* C, 1..FLP_MAX_PAGE_SIZE */
    int32_t num_qo_heads, num_kv_heads, head_dim; /* as flp_plan_desc */
    /* optional caller workspace, as flp_plan_desc (flp_block_sparse_workspace_size bytes) */
    flp_buffer *workspace;
    size_t workspace_offset; /* multiple of 256 */
} flp_block_sparse_desc;

typedef struct flp_block_sparse flp_block_sparse;

FLP_API flp_status flp_block_sparse_workspace_size(flp_context *ctx,
                                                   const flp_block_sparse_desc *desc,
                                                   size_t *bytes);
FLP_API flp_status flp_block_sparse_create(flp_context *ctx, const flp_block_sparse_desc *desc,
                                           flp_block_sparse **out);
/* Accepts NULL. Does not wait, as flp_plan_destroy. */
FLP_API void flp_block_sparse_destroy(flp_block_sparse *bsr);

typedef struct flp_block_sparse_plan_args {
    int32_t num_rows; /* M: 1..max_rows, a multiple of block_rows */
    int32_t num_cols; /* N: keys, a multiple of block_cols */
    /* [M / R + 1]: indptr[0] = 0, non-decreasing, indptr[M / R] <= max_blocks */
    const int32_t *indptr;
    /* [indptr[M / R]] column blocks, increasing within a row block, each < N / C */
    const int32_t *indices;
    /* optional [indptr[M / R] x R x C] bits, little-endian bit order: bit (b R + r) C + c keeps
     * key c of block b for its row r; NULL keeps every key of the blocks */
    const uint8_t *block_mask;
    /* mask NONE or CAUSAL (key j kept for row i iff j <= N - M + i), the sliding window on the
     * same positions, soft cap, sm_scale, fp8 KV; RoPE and ALiBi are refused
     * (FLP_ERROR_UNSUPPORTED: rotate q and k before), as are custom masks (use block_mask). */
    flp_variant variant;
} flp_block_sparse_plan_args;

/* Validates everything and uploads the partition and the expanded mask, as flp_prefill_plan
 * (CUDA: stream-ordered, refused during a capture). On failure no plan is held. */
FLP_API flp_status flp_block_sparse_plan(flp_context *ctx, flp_block_sparse *bsr,
                                         const flp_block_sparse_plan_args *args);

typedef struct flp_block_sparse_run_args {
    flp_tensor q;          /* [M, num_qo_heads, head_dim], q_dtype */
    flp_tensor k;          /* [N, num_kv_heads, head_dim], kv_dtype, last dimension contiguous */
    flp_tensor v;          /* same shape and dtype as k */
    flp_tensor out;        /* same shape as q */
    const flp_tensor *lse; /* optional [M, num_qo_heads] f32 */
} flp_block_sparse_run_args;

/* Queues the attention. A row that keeps no key gets o = 0 and lse = -inf. Allocates nothing,
 * synchronises nothing. */
FLP_API flp_status flp_block_sparse_run(flp_context *ctx, const flp_block_sparse *bsr,
                                        const flp_block_sparse_run_args *args);

/* ---- appending new K/V rows to a paged cache ------------------------------------------- */

/* Writes row r of k/v (new tokens) into the paged caches at the slot of token positions[r] of
 * request batch_indices[r], through the page table kv_indptr/kv_indices (device tensors, so an
 * engine runs "append, then attend" per layer with no host round trip). 16-bit rows are
 * converted to the cache dtype (fp8 caches store value / k_scale or / v_scale, round to
 * nearest even, saturating). The caches must not overlap the new rows, the index tensors or
 * each other (K and V pages interleaved in one tensor are fine). Device-side index contents
 * cannot be validated before the launch: a row whose request, position or page id is out of
 * range is skipped (never written out of bounds). Queued on the context's stream/queue;
 * allocates nothing. */
typedef struct flp_kv_append_args {
    flp_tensor k;             /* [nnz, num_kv_heads, head_dim] F16 or BF16, or the cache dtype */
    flp_tensor v;             /* same shape as k */
    flp_tensor batch_indices; /* [nnz] I32: request of each row */
    flp_tensor positions;     /* [nnz] I32: token position of each row in its request */
    flp_tensor kv_indptr;     /* [batch_size + 1] I32, page indptr */
    flp_tensor kv_indices;    /* [>= kv_indptr[batch_size]] I32 page ids */
    flp_tensor k_cache;       /* NHD [pages, page_size, num_kv_heads, head_dim] or HND */
    flp_tensor v_cache;       /* same shape and dtype as k_cache */
    flp_kv_layout kv_layout;
    float k_scale, v_scale; /* fp8 caches: real = stored * scale; 0 = 1 */
} flp_kv_append_args;

FLP_API flp_status flp_kv_append(flp_context *ctx, const flp_kv_append_args *args);

/* ---- host page table ------------------------------------------------------------------ */

/* Host bookkeeping of a paged KV pool: which pages each sequence owns. Not thread-safe. */
typedef struct flp_page_table flp_page_table;

typedef struct flp_page_table_desc {
    int32_t num_pages;     /* pages in the pool (required, > 0) */
    int32_t page_size;     /* tokens per page, 1..FLP_MAX_PAGE_SIZE (required) */
    int32_t max_sequences; /* default 1024 */
} flp_page_table_desc;

/* The page table is host-only and needs no context. */
FLP_API flp_status flp_page_table_create(const flp_page_table_desc *desc, flp_page_table **out);
FLP_API void flp_page_table_destroy(flp_page_table *table);
/* The message of the last failed call on table ("" if none). */
FLP_API const char *flp_page_table_last_error(const flp_page_table *table);
/* A new empty sequence; its id is written to *seq_id. */
FLP_API flp_status flp_page_table_create_sequence(flp_page_table *table, int32_t *seq_id);
/* Appends num_tokens tokens, allocating pages as needed. A shared (forked) last page that would
 * be written is first copied on write: *copy_src, *copy_dst (optional) receive the page ids the
 * caller must copy (-1 when none). Fails with FLP_ERROR_CAPACITY, changing nothing, when the
 * pool has too few free pages. */
FLP_API flp_status flp_page_table_append(flp_page_table *table, int32_t seq_id, int32_t num_tokens,
                                         int32_t *copy_src, int32_t *copy_dst);
/* A new sequence sharing all of parent's pages by reference count (the prompt is stored once). */
FLP_API flp_status flp_page_table_fork(flp_page_table *table, int32_t parent_seq_id,
                                       int32_t *child_seq_id);
/* Drops the sequence and releases pages no other sequence holds. */
FLP_API flp_status flp_page_table_free_sequence(flp_page_table *table, int32_t seq_id);
FLP_API flp_status flp_page_table_sequence_length(const flp_page_table *table, int32_t seq_id,
                                                  int32_t *num_tokens);
FLP_API int32_t flp_page_table_free_pages(const flp_page_table *table);
/* Slot of token t of a sequence: page id and offset in page. */
FLP_API flp_status flp_page_table_locate(const flp_page_table *table, int32_t seq_id, int32_t token,
                                         int32_t *page, int32_t *slot);
/* CSR export for seq_ids[num_seqs]: kv_indptr[num_seqs + 1], kv_indices[capacity],
 * kv_last_page_len[num_seqs]. FLP_ERROR_CAPACITY when the pages exceed indices_capacity. */
FLP_API flp_status flp_page_table_export(const flp_page_table *table, const int32_t *seq_ids,
                                         int32_t num_seqs, int32_t *kv_indptr, int32_t *kv_indices,
                                         int32_t indices_capacity, int32_t *kv_last_page_len);

/* Caller-owned arrays for one level of flp_page_table_export_cascade. */
typedef struct flp_cascade_export_level {
    int32_t *qo_indptr;        /* [num_seqs + 1] */
    int32_t *kv_indptr;        /* [num_seqs + 1] */
    int32_t *kv_indices;       /* [indices_capacity] */
    int32_t indices_capacity;  /* >= 0 */
    int32_t *kv_last_page_len; /* [num_seqs] */
} flp_cascade_export_level;

/* The num_levels levels of a cascade over seq_ids[num_seqs], from the pages they share by
 * id, as flp_page_table_fork leaves them (docs/api.md, "Cascade from a page table"). Sequence i
 * has qo_lens[i] query rows (NULL: 1 each), its last qo_lens[i] tokens; rows follow the
 * sequences' order. Consecutive sequences that share whole pages before their first query token
 * share them in levels 0 .. num_levels - 2, the widest sharing first; the last level has one
 * group per sequence with the rest of its pages (a decode batch: one row per group). levels
 * [num_levels] gets the result, pointing into storage[num_levels]; page_size of the plan args
 * is the table's. FLP_ERROR_CAPACITY when a level's pages exceed its indices_capacity. */
FLP_API flp_status flp_page_table_export_cascade(const flp_page_table *table,
                                                 const int32_t *seq_ids, int32_t num_seqs,
                                                 const int32_t *qo_lens, int32_t num_levels,
                                                 const flp_cascade_export_level *storage,
                                                 flp_cascade_level *levels);

#ifdef __cplusplus
}
#endif

#endif /* FLASHPORT_H */
