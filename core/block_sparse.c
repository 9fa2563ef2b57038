/* Block-sparse attention (flp_block_sparse_*): a BSR matrix run as a paged prefill batch, one
 * request per row block, its column blocks as its pages (block_cols keys per page); the causal
 * mask, the window and the per-block masks become one custom bit mask in the object's memory,
 * built on the host at plan time (docs/api.md, "Block-sparse attention"). */
#include "core/alloc.h"
#include "core/batch_args.h"
#include "core/object_memory.h"
#include "core/plan.h"
#include "core/prefill_region.h"
#include "core/tensor.h"
#include "core/variant.h"

#include <string.h>

/* The mask starts on this, after the plan's region. */
#define BSR_ALIGN FLP_WORKSPACE_ALIGN

struct flp_block_sparse {
    flp_context *ctx;
    flp_block_sparse_desc desc;
    flp_object_memory mem; /* the object's region: its own buffer or the caller's workspace */
    size_t mask_offset;    /* from base: the expanded mask */
    size_t mask_capacity;  /* bytes */
    size_t total;          /* bytes of the region */
    flp_plan *plan;        /* its region at base */
    /* what the last plan decided */
    bool planned;
    int32_t num_rows, num_cols;
    int64_t mask_bytes; /* 0: no mask */
    flp_dtype q_dtype, kv_dtype;
};

/* ---- creation -------------------------------------------------------------------------- */

static flp_status check_desc(flp_context *ctx, const char *fn, const flp_block_sparse_desc *d) {
    if (!d)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: desc is NULL", fn);
    if (d->max_rows < 1 || d->max_rows > FLP_MAX_QO_ROWS || d->max_blocks < 1)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: max_rows = %d must be in 1..%d and max_blocks = %d > 0", fn,
                        d->max_rows, FLP_MAX_QO_ROWS, d->max_blocks);
    if (d->block_rows < 1 || d->block_rows > d->max_rows)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: block_rows = %d must be in 1..max_rows (%d)", fn, d->block_rows,
                        d->max_rows);
    if (d->block_cols < 1 || d->block_cols > FLP_MAX_PAGE_SIZE)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: block_cols = %d must be in 1..%d", fn,
                        d->block_cols, FLP_MAX_PAGE_SIZE);
    return flp_check_workspace(ctx, fn, d->workspace, d->workspace_offset);
}

static int32_t max_row_blocks(const flp_block_sparse_desc *d) {
    return d->max_rows / d->block_rows;
}

/* The plan of the row blocks (workspace set by the caller). */
static flp_plan_desc plan_desc(const flp_block_sparse_desc *d) {
    flp_plan_desc p = {
        .max_batch_size = max_row_blocks(d),
        .max_qo_len = 1,
        .max_pages = d->max_blocks,
        .max_qo_rows = d->max_rows,
        .num_qo_heads = d->num_qo_heads,
        .num_kv_heads = d->num_kv_heads,
        .head_dim = d->head_dim,
        .decode_kernel = FLP_DECODE_KERNEL_VECTOR, /* no decode: no matrix decode region */
    };
    return p;
}

static flp_status compute_layout(flp_context *ctx, const char *fn, flp_block_sparse *b) {
    const flp_block_sparse_desc *d = &b->desc;
    flp_plan_desc p = plan_desc(d);
    size_t plan_bytes = 0;
    flp_status status = flp_plan_workspace_size(ctx, &p, &plan_bytes);
    if (status != FLP_OK) {
        flp_error_prefix(ctx, fn);
        return status;
    }
    /* each row block's bits start on a byte */
    const uint64_t bits =
        (uint64_t)d->max_blocks * (uint64_t)d->block_rows * (uint64_t)d->block_cols;
    b->mask_capacity = (size_t)(bits / 8) + (size_t)max_row_blocks(d) + 1;
    b->mask_offset = FLP_ALIGN_UP(plan_bytes, BSR_ALIGN);
    b->total = FLP_ALIGN_UP(b->mask_offset + b->mask_capacity, BSR_ALIGN);
    return FLP_OK;
}

flp_status flp_block_sparse_workspace_size(flp_context *ctx, const flp_block_sparse_desc *desc,
                                           size_t *bytes) {
    static const char *fn = "flp_block_sparse_workspace_size";
    flp_status status = flp_check_out_call(ctx, fn, "bytes", bytes);
    if (status == FLP_OK)
        status = check_desc(ctx, fn, desc);
    if (status != FLP_OK)
        return status;
    flp_block_sparse shape = {.desc = *desc};
    if ((status = compute_layout(ctx, fn, &shape)) == FLP_OK)
        *bytes = shape.total;
    return status;
}

flp_status flp_block_sparse_create(flp_context *ctx, const flp_block_sparse_desc *desc,
                                   flp_block_sparse **out) {
    static const char *fn = "flp_block_sparse_create";
    flp_status status = flp_check_out_call(ctx, fn, "out", out);
    if (status != FLP_OK)
        return status;
    *out = NULL;
    if ((status = check_desc(ctx, fn, desc)) != FLP_OK)
        return status;
    flp_block_sparse *b = flp_calloc(1, sizeof *b);
    if (!b)
        return flp_fail(ctx, FLP_ERROR_OUT_OF_MEMORY, "%s: out of host memory", fn);
    b->ctx = ctx;
    b->desc = *desc;
    status = compute_layout(ctx, fn, b);
    if (status == FLP_OK)
        status = flp_object_memory_attach(ctx, fn, desc->workspace, desc->workspace_offset,
                                          b->total, "the block-sparse plan",
                                          "flp_block_sparse_workspace_size", &b->mem);
    if (status == FLP_OK) {
        flp_plan_desc p = plan_desc(desc);
        p.workspace = b->mem.buffer;
        p.workspace_offset = b->mem.base;
        if ((status = flp_plan_create(ctx, &p, &b->plan)) != FLP_OK)
            flp_error_prefix(ctx, fn);
    }
    if (status != FLP_OK) {
        flp_block_sparse_destroy(b);
        return status;
    }
    *out = b;
    return FLP_OK;
}

void flp_block_sparse_destroy(flp_block_sparse *b) {
    if (!b)
        return;
    flp_plan_destroy(b->plan);
    flp_object_memory_release(&b->mem);
    flp_free(b);
}

/* ---- plan ------------------------------------------------------------------------------ */

static flp_status check_call(flp_context *ctx, const char *fn, const flp_block_sparse *b,
                             const void *args) {
    return flp_check_object_call(ctx, fn, "bsr", b, b ? b->ctx : NULL, args);
}

static flp_status check_variant(flp_context *ctx, const char *fn, const flp_variant *v) {
    if (v->mask != FLP_MASK_NONE && v->mask != FLP_MASK_CAUSAL)
        return flp_fail(ctx, FLP_ERROR_UNSUPPORTED,
                        "%s: variant.mask = %d: block-sparse attention takes FLP_MASK_NONE or "
                        "FLP_MASK_CAUSAL (per-key masks go in block_mask)",
                        fn, (int)v->mask);
    if (v->pos_encoding != FLP_POS_NONE)
        return flp_fail(ctx, FLP_ERROR_UNSUPPORTED,
                        "%s: variant.pos_encoding = %d: a row block's keys are gathered from "
                        "scattered column blocks; apply RoPE to q and k before (FLP_POS_NONE)",
                        fn, (int)v->pos_encoding);
    return FLP_OK;
}

/* The BSR structure: shape, indptr and increasing in-range indices. */
static flp_status check_matrix(flp_context *ctx, const char *fn, const flp_block_sparse *b,
                               const flp_block_sparse_plan_args *a) {
    const flp_block_sparse_desc *d = &b->desc;
    if (a->num_rows < 1 || a->num_rows % d->block_rows != 0)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: num_rows = %d must be a positive multiple of block_rows = %d", fn,
                        a->num_rows, d->block_rows);
    if (a->num_rows > d->max_rows)
        return flp_fail(ctx, FLP_ERROR_CAPACITY, "%s: num_rows = %d exceeds max_rows = %d", fn,
                        a->num_rows, d->max_rows);
    if (a->num_cols < 0 || a->num_cols % d->block_cols != 0)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: num_cols = %d must be a multiple of block_cols = %d, >= 0", fn,
                        a->num_cols, d->block_cols);
    const int32_t row_blocks = a->num_rows / d->block_rows;
    const int32_t col_blocks = a->num_cols / d->block_cols;
    flp_status status =
        flp_check_indptr(ctx, fn, "indptr", a->indptr, row_blocks, d->max_blocks, "max_blocks");
    if (status != FLP_OK)
        return status;
    if (a->indptr[row_blocks] > 0 && !a->indices)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: indices is NULL with %d blocks", fn,
                        a->indptr[row_blocks]);
    for (int32_t i = 0; i < row_blocks; i++)
        for (int32_t t = a->indptr[i]; t < a->indptr[i + 1]; t++) {
            const int32_t j = a->indices[t];
            if (j < 0 || j >= col_blocks)
                return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                                "%s: indices[%d] = %d is outside the %d column blocks", fn, t, j,
                                col_blocks);
            if (t > a->indptr[i] && j <= a->indices[t - 1])
                return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                                "%s: indices[%d] = %d does not increase on indices[%d] = %d (row "
                                "block %d)",
                                fn, t, j, t - 1, a->indices[t - 1], i);
        }
    return FLP_OK;
}

/* Whether the keys need a bit mask: per-block bits, the causal mask or the window. */
static bool needs_mask(const flp_block_sparse_plan_args *a) {
    return a->block_mask || a->variant.mask == FLP_MASK_CAUSAL || a->variant.use_window;
}

/* Bytes of the expanded mask, each row block's [R, blocks x C] bits from a byte; its start into
 * mask_indptr [row blocks] unless NULL. */
static int64_t mask_bytes(const flp_block_sparse *b, const flp_block_sparse_plan_args *a,
                          int32_t *mask_indptr) {
    const int32_t row_blocks = a->num_rows / b->desc.block_rows;
    int64_t at = 0;
    for (int32_t i = 0; i < row_blocks; i++) {
        if (mask_indptr)
            mask_indptr[i] = (int32_t)at;
        const int64_t keys = (int64_t)(a->indptr[i + 1] - a->indptr[i]) * b->desc.block_cols;
        at += (keys * b->desc.block_rows + 7) / 8;
    }
    return at;
}

/* The expanded mask into bits (zeroed): row r of row block i keeps key t C + c (column block
 * indices[indptr[i] + t]) when its block bit, the causal rule and the window allow. */
static void expand_mask(const flp_block_sparse *b, const flp_block_sparse_plan_args *a,
                        const int32_t *mask_indptr, uint8_t *bits) {
    const int32_t R = b->desc.block_rows, C = b->desc.block_cols;
    const int32_t row_blocks = a->num_rows / R;
    const flp_variant *v = &a->variant;
    const int64_t shift = (int64_t)a->num_cols - a->num_rows; /* row m sits at key m + shift */
    for (int32_t i = 0; i < row_blocks; i++) {
        uint8_t *out = bits + mask_indptr[i];
        const int32_t first = a->indptr[i], blocks = a->indptr[i + 1] - first;
        const int64_t keys = (int64_t)blocks * C;
        for (int32_t r = 0; r < R; r++) {
            const int64_t pos = (int64_t)i * R + r + shift;
            for (int32_t t = 0; t < blocks; t++)
                for (int32_t c = 0; c < C; c++) {
                    const int64_t key = (int64_t)a->indices[first + t] * C + c;
                    bool keep = v->mask != FLP_MASK_CAUSAL || key <= pos;
                    keep = keep && (!v->use_window || key >= pos - v->window_left);
                    if (a->block_mask) {
                        const int64_t src = ((int64_t)(first + t) * R + r) * C + c;
                        keep = keep && (a->block_mask[src >> 3] >> (src & 7) & 1);
                    }
                    const int64_t dst = r * keys + (int64_t)t * C + c;
                    out[dst >> 3] |= (uint8_t)(keep << (dst & 7));
                }
        }
    }
}

/* Host arrays of a plan: qo_indptr [row_blocks + 1], last page lengths and mask offsets
 * [row_blocks], then the mask bits. */
typedef struct plan_scratch {
    int32_t *qo_indptr, *last_len, *mask_indptr;
    uint8_t *bits;
} plan_scratch;

static flp_status plan_rows(flp_context *ctx, const char *fn, flp_block_sparse *b,
                            const flp_block_sparse_plan_args *a, plan_scratch *s, int64_t bytes) {
    const int32_t R = b->desc.block_rows, row_blocks = a->num_rows / R;
    for (int32_t i = 0; i <= row_blocks; i++)
        s->qo_indptr[i] = i * R;
    for (int32_t i = 0; i < row_blocks; i++)
        s->last_len[i] = b->desc.block_cols;
    flp_variant v = a->variant;
    v.mask = bytes > 0 ? FLP_MASK_CUSTOM : FLP_MASK_NONE;
    v.use_window = false; /* in the mask */
    flp_prefill_plan_args p = {
        .batch_size = row_blocks,
        .qo_indptr = s->qo_indptr,
        .kv_storage = FLP_KV_PAGED,
        .kv_indptr = a->indptr,
        .kv_indices = a->indices,
        .kv_last_page_len = s->last_len,
        .page_size = b->desc.block_cols,
        .kv_layout = FLP_KV_LAYOUT_NHD,
        .mask_indptr = bytes > 0 ? s->mask_indptr : NULL,
        .variant = v,
    };
    /* the positions are in the mask: a row block may have more rows than keys, or none */
    const flp_prefill_plan_options o = {.rows_beyond_keys = true};
    flp_status status = flp_prefill_plan_internal(ctx, b->plan, &p, &o);
    if (status != FLP_OK) {
        flp_error_prefix(ctx, fn);
        return status;
    }
    if (bytes > 0)
        status = flp_buffer_upload(ctx, fn, b->mem.buffer, b->mem.base + b->mask_offset, s->bits,
                                   (size_t)bytes);
    return status;
}

flp_status flp_block_sparse_plan(flp_context *ctx, flp_block_sparse *b,
                                 const flp_block_sparse_plan_args *args) {
    static const char *fn = "flp_block_sparse_plan";
    flp_status status = check_call(ctx, fn, b, args);
    if (status != FLP_OK)
        return status;
    flp_variant resolved;
    if ((status = check_variant(ctx, fn, &args->variant)) != FLP_OK ||
        (status = flp_variant_check_for_plan(ctx, fn, &args->variant, b->desc.head_dim, false,
                                             &resolved)) != FLP_OK ||
        (status = check_matrix(ctx, fn, b, args)) != FLP_OK)
        return status;
    const size_t row_blocks = (size_t)(args->num_rows / b->desc.block_rows);
    const size_t arrays = FLP_ALIGN_UP(sizeof(int32_t) * (3 * row_blocks + 1), 8);
    /* within max_blocks the mask fits its capacity (compute_layout) */
    const int64_t bytes = needs_mask(args) ? mask_bytes(b, args, NULL) : 0;
    char *host = flp_calloc(1, arrays + (size_t)bytes);
    if (!host)
        return flp_fail(ctx, FLP_ERROR_OUT_OF_MEMORY,
                        "%s: out of host memory for %lld bytes of mask", fn, (long long)bytes);
    plan_scratch s = {.qo_indptr = (int32_t *)host};
    s.last_len = s.qo_indptr + row_blocks + 1;
    s.mask_indptr = s.last_len + row_blocks;
    s.bits = (uint8_t *)host + arrays;
    if (bytes > 0) {
        mask_bytes(b, args, s.mask_indptr);
        expand_mask(b, args, s.mask_indptr, s.bits);
    }
    b->planned = false;
    status = plan_rows(ctx, fn, b, args, &s, bytes);
    flp_free(host);
    if (status != FLP_OK)
        return status;
    b->planned = true;
    b->num_rows = args->num_rows;
    b->num_cols = args->num_cols;
    b->mask_bytes = bytes;
    b->q_dtype = resolved.q_dtype;
    b->kv_dtype = resolved.kv_dtype;
    return FLP_OK;
}

/* ---- run ------------------------------------------------------------------------------- */

/* k or v [N, Hkv, D] as the paged cache [N / C, C, Hkv, D] the plan reads. */
static flp_tensor as_pages(const flp_tensor *t, int32_t block_cols) {
    flp_tensor p = *t;
    p.ndim = 4;
    p.shape[0] = t->shape[0] / block_cols;
    p.shape[1] = block_cols;
    p.shape[2] = t->shape[1];
    p.shape[3] = t->shape[2];
    p.stride[0] = t->stride[0] * block_cols;
    p.stride[1] = t->stride[0];
    p.stride[2] = t->stride[1];
    p.stride[3] = t->stride[2];
    return p;
}

flp_status flp_block_sparse_run(flp_context *ctx, const flp_block_sparse *b,
                                const flp_block_sparse_run_args *args) {
    static const char *fn = "flp_block_sparse_run";
    flp_status status = check_call(ctx, fn, b, args);
    if (status != FLP_OK)
        return status;
    if (!b->planned)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: nothing planned (call flp_block_sparse_plan first)", fn);
    const flp_block_sparse_desc *d = &b->desc;
    flp_tensor_expect kv = {"k", b->kv_dtype, 3, {b->num_cols, d->num_kv_heads, d->head_dim}, true};
    if ((status = flp_tensor_check(ctx, fn, &args->k, &kv)) != FLP_OK)
        return status;
    kv.name = "v";
    if ((status = flp_tensor_check(ctx, fn, &args->v, &kv)) != FLP_OK)
        return status;
    const flp_tensor k = as_pages(&args->k, d->block_cols), v = as_pages(&args->v, d->block_cols);
    flp_tensor mask = flp_tensor_contiguous(b->mem.buffer, b->mem.base + b->mask_offset,
                                            FLP_DTYPE_U8, 1, (const int64_t[]){b->mask_bytes});
    flp_prefill_run_args p = {
        .q = args->q,
        .k = k,
        .v = v,
        .out = args->out,
        .lse = args->lse,
        .custom_mask = b->mask_bytes > 0 ? &mask : NULL,
    };
    if ((status = flp_prefill_run(ctx, b->plan, &p)) != FLP_OK)
        flp_error_prefix(ctx, fn);
    return status;
}
