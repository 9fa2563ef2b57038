/* The sm_90a prefill kernel's host side: whether it applies, and its parameter block (the
 * prefill parameters and the K/V tensor maps, made for each run from its tensors: a captured
 * graph keeps the maps with the launch). */
#include "backend-cuda/cu_backend.h"
#include "backend-cuda/kernels/prefill_sm90_config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(sizeof(flp_tensor_map) == sizeof(CUtensorMap), "flp_tensor_map is a CUtensorMap");

/* FLP_CUDA_PREFILL_KERNEL: "auto" or unset, the sm_90a kernel for 64- and 128-row query tiles;
 * "sm90", for every tile where it can run (tests); "sm80", the sm_80 kernels everywhere (for
 * measuring them on a Hopper GPU). Any other value counts as unset. */
static const char *forced_kernel(void) {
    const char *e = getenv("FLP_CUDA_PREFILL_KERNEL");
    return e && (strcmp(e, "sm80") == 0 || strcmp(e, "sm90") == 0) ? e : "auto";
}

static bool is_fp8(int32_t dtype) {
    return dtype == FLP_DTYPE_E4M3 || dtype == FLP_DTYPE_E5M2;
}

const char *flp_cu_prefill90_unwanted(const flp_cu_state *st, int32_t q_dtype, int32_t kv_dtype,
                                      int32_t head_dim) {
    if (st->cc != 90)
        return "not an sm_90 device";
    if (!st->cu->cuTensorMapEncodeTiled)
        return "the driver makes no tensor maps";
    if (q_dtype != FLP_DTYPE_F16 && q_dtype != FLP_DTYPE_BF16)
        return "q not 16-bit";
    if (q_dtype != kv_dtype && !is_fp8(kv_dtype))
        return "K/V neither of the q dtype nor fp8";
    if (is_fp8(kv_dtype) && !FLP_CU_PREFILL90_FP8_HEAD_DIM_OK(head_dim))
        return "fp8 K/V at a head_dim other than 64 or 128 (no room for the raw ring)";
    if (strcmp(forced_kernel(), "sm80") == 0)
        return "FLP_CUDA_PREFILL_KERNEL=sm80";
    return NULL;
}

bool flp_cu_prefill90_every_tile(void) {
    return strcmp(forced_kernel(), "sm90") == 0;
}

void flp_cu_prefill90_kernel_name(int32_t q_dtype, int32_t kv_dtype, int32_t head_dim, char *buf,
                                  size_t size) {
    const char *q = q_dtype == FLP_DTYPE_F16 ? "f16" : "bf16";
    if (is_fp8(kv_dtype))
        snprintf(buf, size, "flp_prefill90_%s_%s_d%d", q,
                 kv_dtype == FLP_DTYPE_E4M3 ? "e4m3" : "e5m2", (int)head_dim);
    else
        snprintf(buf, size, "flp_prefill90_%s_d%d", q, (int)head_dim);
}

unsigned flp_cu_prefill90_smem_bytes(int32_t kv_dtype, int32_t head_dim) {
    return is_fp8(kv_dtype) ? (unsigned)FLP_CU_PREFILL90_FP8_SMEM_BYTES((int)head_dim)
                            : (unsigned)FLP_CU_PREFILL90_SMEM_BYTES((int)head_dim);
}

/* One cache (k or v) as TMA sees it: base address, extents innermost first (head_dim, heads,
 * rows or page slots, pages) and the element strides of all but the innermost. */
typedef struct cache_view {
    uint64_t address;
    int elem_bytes; /* 2, or 1 for fp8 */
    int rank;       /* 3 ragged, 4 paged */
    uint64_t dims[4];
    int64_t strides[3];
} cache_view;

static cache_view view_of(const flp_prefill_launch *launch, bool is_v) {
    const flp_prefill_params *p = &launch->params;
    cache_view c;
    memset(&c, 0, sizeof c);
    c.address = is_v ? p->v : p->k;
    c.elem_bytes = is_fp8(launch->kv_dtype) ? 1 : 2;
    c.dims[0] = (uint64_t)launch->head_dim;
    c.dims[1] = (uint64_t)launch->num_kv_heads;
    c.strides[0] = is_v ? p->v_stride_head : p->k_stride_head;
    c.strides[1] = is_v ? p->v_stride_slot : p->k_stride_slot;
    if (launch->page_size > 0) {
        c.rank = 4;
        c.dims[2] = (uint64_t)launch->page_size;
        c.dims[3] = (uint64_t)p->num_pages;
        c.strides[2] = is_v ? p->v_stride_page : p->k_stride_page;
    } else {
        c.rank = 3;
        c.dims[2] = (uint64_t)(is_v ? launch->v_extent : launch->k_extent);
    }
    return c;
}

/* Whether TMA can address c: the base 16-byte aligned, every stride a positive multiple of 16
 * bytes below 2^40, every extent at least 1 and below 2^31 (coordinates are signed 32-bit). */
static bool tma_addressable(const cache_view *c) {
    if (c->address % 16 != 0)
        return false;
    for (int i = 0; i < c->rank; i++)
        if (c->dims[i] < 1 || c->dims[i] >= (UINT64_C(1) << 31))
            return false;
    for (int i = 0; i < c->rank - 1; i++)
        if (c->strides[i] <= 0 || (c->strides[i] * c->elem_bytes) % 16 != 0 ||
            c->strides[i] * c->elem_bytes >= (INT64_C(1) << 40))
            return false;
    return true;
}

/* Whether cp.async's 16-byte copies can gather c's rows: the base and every stride 16-byte
 * aligned. */
static bool rows_16_byte_aligned(const cache_view *c) {
    if (c->address % 16 != 0)
        return false;
    for (int i = 0; i < c->rank - 1; i++)
        if ((c->strides[i] * c->elem_bytes) % 16 != 0)
            return false;
    return true;
}

/* The map of a cache: boxes of 128 bytes of a row (64 16-bit elements, or a whole fp8 row of
 * head_dim 64 or 128 bytes) x 1 head x box_rows (x 1 page), swizzled over the box's row (128
 * bytes, or 64 for fp8 at head_dim 64: prefill_sm90_config.h), zeros outside the tensor. */
static CUresult encode_map(const flp_cu_driver *cu, int32_t dtype, const cache_view *c,
                           int box_rows, flp_tensor_map *map) {
    cuuint64_t dims[4];
    cuuint64_t strides[3];
    const bool fp8 = c->elem_bytes == 1;
    cuuint32_t box[4] = {fp8 ? (cuuint32_t)c->dims[0] : 64, 1, (cuuint32_t)box_rows, 1};
    cuuint32_t element_strides[4] = {1, 1, 1, 1};
    for (int i = 0; i < c->rank; i++)
        dims[i] = c->dims[i];
    for (int i = 0; i < c->rank - 1; i++)
        strides[i] = (cuuint64_t)c->strides[i] * (cuuint64_t)c->elem_bytes;
    const CUtensorMapDataType type = fp8                      ? CU_TENSOR_MAP_DATA_TYPE_UINT8
                                     : dtype == FLP_DTYPE_F16 ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16
                                                              : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
    const CUtensorMapSwizzle swizzle =
        fp8 && c->dims[0] == 64 ? CU_TENSOR_MAP_SWIZZLE_64B : CU_TENSOR_MAP_SWIZZLE_128B;
    return cu->cuTensorMapEncodeTiled(
        (CUtensorMap *)map, type, (cuuint32_t)c->rank, (void *)(uintptr_t)c->address, dims, strides,
        box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle,
        CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
}

bool flp_cu_prefill90_params(flp_context *ctx, const flp_cu_driver *cu, const flp_cu_config *cfg,
                             const flp_prefill_launch *launch, flp_prefill90_params *out) {
    if (!cfg->prefill90 ||
        (launch->q_tile < FLP_CU_PREFILL90_MIN_AUTO_TILE && !cfg->prefill90_every_tile))
        return false;
    const int kn = FLP_CU_PREFILL90_KN((int)launch->head_dim);
    int box_rows = kn;
    const cache_view k = view_of(launch, false), v = view_of(launch, true);
    if (launch->page_size > 0) {
        /* a box never crosses a page; boxes under 8 rows would break the 1024-byte swizzle
         * alignment of their destinations: such pages are gathered with cp.async */
        const int32_t ps = launch->page_size;
        const bool fp8 = is_fp8(launch->kv_dtype);
        /* a raw fp8 box lands whole rows: it keeps the swizzle's 1024-byte alignment from
         * 1024 bytes of a page (16 rows at head_dim 64, 8 at 128); fp8 is never gathered */
        if (fp8 && (ps & (ps - 1)) == 0 && (int64_t)(ps < kn ? ps : kn) * launch->head_dim < 1024) {
            flp_log(ctx, FLP_LOG_DEBUG,
                    "CUDA prefill: fp8 pages of %d rows under 1024 bytes, on the sm_80 kernel",
                    (int)ps);
            return false;
        }
        if (ps < 8 || (ps & (ps - 1)) != 0) {
            if (fp8) {
                flp_log(ctx, FLP_LOG_DEBUG,
                        "CUDA prefill: fp8 pages of %d rows TMA cannot box, on the sm_80 kernel",
                        (int)ps);
                return false;
            }
            if (!rows_16_byte_aligned(&k) || !rows_16_byte_aligned(&v)) {
                flp_log(ctx, FLP_LOG_DEBUG,
                        "CUDA prefill: K/V rows not 16-byte aligned, on the sm_80 kernel");
                return false;
            }
            memset(out, 0, sizeof *out);
            out->base = launch->params;
            out->kv_map_kind = FLP_CU_KV_MAP_GATHER;
            out->box_rows = 1;
            return true;
        }
        box_rows = ps < kn ? ps : kn;
    }
    if (!tma_addressable(&k) || !tma_addressable(&v)) {
        flp_log(ctx, FLP_LOG_DEBUG,
                "CUDA prefill: K/V strides or addresses TMA cannot take, on the sm_80 kernel");
        return false;
    }
    memset(out, 0, sizeof *out);
    out->base = launch->params;
    out->kv_map_kind = launch->page_size > 0 ? FLP_CU_KV_MAP_PAGED : FLP_CU_KV_MAP_RAGGED;
    out->box_rows = box_rows;
    CUresult r = encode_map(cu, launch->q_dtype, &k, box_rows, &out->k_map);
    if (r == CUDA_SUCCESS)
        r = encode_map(cu, launch->q_dtype, &v, box_rows, &out->v_map);
    if (r != CUDA_SUCCESS) {
        char text[128];
        flp_log(ctx, FLP_LOG_DEBUG, "CUDA prefill: cuTensorMapEncodeTiled: %s, on the sm_80 kernel",
                flp_cu_result_text(cu, r, text, sizeof text));
        return false;
    }
    return true;
}
