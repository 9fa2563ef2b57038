/* Kernel configurations, names and launch checks (no CUDA header needed). */
#include "backend-cuda/cu_launch.h"
#include "backend-cuda/kernels/decode_config.h"
#include "backend-cuda/kernels/prefill_config.h"
#include "core/plan.h"

#include <stdio.h>

static const int32_t q_dtypes[FLP_CU_NUM_Q] = {FLP_DTYPE_F16, FLP_DTYPE_BF16};
static const int32_t kv_dtypes[FLP_CU_NUM_KV] = {FLP_DTYPE_F16, FLP_DTYPE_BF16, FLP_DTYPE_E4M3,
                                                 FLP_DTYPE_E5M2};
static const int32_t head_dims[FLP_CU_NUM_HEAD_DIMS] = {64, 128, 256};

static int find(const int32_t *list, int n, int32_t v) {
    for (int i = 0; i < n; i++)
        if (list[i] == v)
            return i;
    return -1;
}

int flp_cu_config_index(int32_t q_dtype, int32_t kv_dtype, int32_t head_dim) {
    int q = find(q_dtypes, FLP_CU_NUM_Q, q_dtype);
    int kv = find(kv_dtypes, FLP_CU_NUM_KV, kv_dtype);
    int d = find(head_dims, FLP_CU_NUM_HEAD_DIMS, head_dim);
    if (q < 0 || kv < 0 || d < 0)
        return -1;
    return (q * FLP_CU_NUM_KV + kv) * FLP_CU_NUM_HEAD_DIMS + d;
}

void flp_cu_config_of(int index, int32_t *q, int32_t *kv, int32_t *d) {
    *d = head_dims[index % FLP_CU_NUM_HEAD_DIMS];
    *kv = kv_dtypes[index / FLP_CU_NUM_HEAD_DIMS % FLP_CU_NUM_KV];
    *q = q_dtypes[index / (FLP_CU_NUM_HEAD_DIMS * FLP_CU_NUM_KV)];
}

/* The dtype names the kernels are instantiated under (kernels/flashport_kernels.cu) of a
 * configuration; false when no kernel exists for it. */
static bool dtype_names(int32_t q_dtype, int32_t kv_dtype, int32_t head_dim, const char **q,
                        const char **kv) {
    static const char *const q_names[FLP_CU_NUM_Q] = {"f16", "bf16"};
    static const char *const kv_names[FLP_CU_NUM_KV] = {"f16", "bf16", "e4m3", "e5m2"};
    if (flp_cu_config_index(q_dtype, kv_dtype, head_dim) < 0)
        return false;
    *q = q_names[find(q_dtypes, FLP_CU_NUM_Q, q_dtype)];
    *kv = kv_names[find(kv_dtypes, FLP_CU_NUM_KV, kv_dtype)];
    return true;
}

bool flp_cu_kernel_name(int32_t q_dtype, int32_t kv_dtype, int32_t head_dim, int rows, char *buf,
                        size_t size) {
    const char *q, *kv;
    if (!dtype_names(q_dtype, kv_dtype, head_dim, &q, &kv))
        return false;
    if (rows == 0) {
        snprintf(buf, size, "flp_decode_merge_%s", q);
        return true;
    }
    if (rows != FLP_CU_DECODE_ROWS_SMALL && rows != FLP_CU_DECODE_ROWS_LARGE)
        return false;
    snprintf(buf, size, "flp_decode_%s_%s_d%d_r%d", q, kv, (int)head_dim, rows);
    return true;
}

int flp_cu_decode_variant(const flp_decode_launch *launch) {
    /* By capacity, not by the current plan: a captured launch keeps its kernel across re-plans
     * (both kernels handle any number of rows; this only picks the faster one). */
    const flp_plan *plan = launch->plan;
    const int64_t rows = (int64_t)plan->desc.max_qo_len * plan->group_size;
    return rows > FLP_CU_DECODE_ROWS_SMALL ? 1 : 0;
}

static bool misaligned(uint64_t address, uint64_t alignment) {
    return address % alignment != 0;
}

/* A stride in elements whose byte size is not a multiple of alignment. */
static bool bad_stride(int64_t stride, int64_t elem_bytes, int64_t alignment) {
    return (stride * elem_bytes) % alignment != 0;
}

flp_status flp_cu_launch_validate(flp_context *ctx, const flp_decode_launch *launch) {
    static const char *fn = "CUDA decode";
    const flp_decode_params *p = &launch->params;
    const flp_plan *plan = launch->plan;
    int index = flp_cu_config_index(launch->q_dtype, launch->kv_dtype, launch->head_dim);
    if (index < 0)
        return flp_fail(ctx, FLP_ERROR_UNSUPPORTED,
                        "%s: no kernel for q %s, kv %s, head_dim %d (q f16/bf16; kv "
                        "f16/bf16/e4m3/e5m2; head_dim 64/128/256)",
                        fn, flp_dtype_name((flp_dtype)launch->q_dtype),
                        flp_dtype_name((flp_dtype)launch->kv_dtype), (int)launch->head_dim);
    if (!plan || plan->group_size < 1 || plan->desc.max_qo_len < 1 ||
        plan->desc.max_qo_len > FLP_DECODE_MAX_QO_LEN || plan->desc.head_dim != launch->head_dim)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: the launch's plan (group size %d, max_qo_len %d, head_dim %d) does "
                        "not match head_dim %d",
                        fn, plan ? (int)plan->group_size : 0, plan ? (int)plan->desc.max_qo_len : 0,
                        plan ? (int)plan->desc.head_dim : 0, (int)launch->head_dim);
    if (launch->num_ctas < 1 || launch->merge_grid < 1)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: grid %d, merge grid %d", fn,
                        (int)launch->num_ctas, (int)launch->merge_grid);

    /* The kernels move 16 bytes of q/out and 16 (f16/bf16) or 8 (fp8) bytes of K/V per lane,
     * and 16 bytes of f32 partial state; a misaligned address faults (and loses the context). */
    const int64_t kv_bytes = (int64_t)flp_dtype_size((flp_dtype)launch->kv_dtype);
    const int64_t kv_align = kv_bytes * FLP_CU_DECODE_VEC;
    if (!p->q || !p->o || !p->k || !p->v || !p->plan)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: a tensor address is 0", fn);
    if (misaligned(p->q, 16) || misaligned(p->o, 16) || bad_stride(p->q_stride_row, 2, 16) ||
        bad_stride(p->q_stride_head, 2, 16) || bad_stride(p->o_stride_row, 2, 16) ||
        bad_stride(p->o_stride_head, 2, 16))
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: q/out must be 16-byte aligned with row and head strides of whole "
                        "16 bytes (q 0x%llx strides %lld %lld, out 0x%llx strides %lld %lld)",
                        fn, (unsigned long long)p->q, (long long)p->q_stride_row,
                        (long long)p->q_stride_head, (unsigned long long)p->o,
                        (long long)p->o_stride_row, (long long)p->o_stride_head);
    if (misaligned(p->k, (uint64_t)kv_align) || misaligned(p->v, (uint64_t)kv_align) ||
        bad_stride(p->k_stride_page, kv_bytes, kv_align) ||
        bad_stride(p->k_stride_slot, kv_bytes, kv_align) ||
        bad_stride(p->k_stride_head, kv_bytes, kv_align) ||
        bad_stride(p->v_stride_page, kv_bytes, kv_align) ||
        bad_stride(p->v_stride_slot, kv_bytes, kv_align) ||
        bad_stride(p->v_stride_head, kv_bytes, kv_align))
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: k_cache/v_cache must be %lld-byte aligned with page, slot and head "
                        "strides of whole %lld bytes",
                        fn, (long long)kv_align, (long long)kv_align);
    const uint64_t partial_o = p->plan + (plan->layout.partial_o - plan->layout.info);
    if (misaligned(p->plan, 16) || misaligned(partial_o, 16))
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: plan memory 0x%llx (partial outputs at 0x%llx) is not 16-byte "
                        "aligned",
                        fn, (unsigned long long)p->plan, (unsigned long long)partial_o);
    if (p->lse && misaligned(p->lse, 4))
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: lse address 0x%llx", fn,
                        (unsigned long long)p->lse);
    return FLP_OK;
}

/* ---- prefill ------------------------------------------------------------------------------ */

int flp_cu_prefill_tile_index(int32_t q_tile) {
    return q_tile <= 16 ? 0 : q_tile <= 64 ? 1 : 2;
}

bool flp_cu_prefill_kernel_name(int32_t q_dtype, int32_t kv_dtype, int32_t head_dim, int tile,
                                char *buf, size_t size) {
    const char *q, *kv;
    if (!dtype_names(q_dtype, kv_dtype, head_dim, &q, &kv))
        return false;
    if (tile == 0) {
        snprintf(buf, size, "flp_prefill_merge_%s", q);
        return true;
    }
    if (tile != 16 && tile != 64 && tile != 128)
        return false;
    snprintf(buf, size, "flp_prefill_%s_%s_d%d_t%d", q, kv, (int)head_dim, tile);
    return true;
}

unsigned flp_cu_prefill_smem_bytes(int32_t q_dtype, int32_t kv_dtype, int32_t head_dim, int tile) {
    const int kvb = (int)flp_dtype_size((flp_dtype)kv_dtype);
    const int staged = FLP_CU_PREFILL_STAGED(q_dtype, kv_dtype) ? 1 : 0;
    return (unsigned)FLP_CU_PREFILL_SMEM_BYTES((int)head_dim, tile, kvb, staged);
}

flp_status flp_cu_prefill_validate(flp_context *ctx, const flp_prefill_launch *launch) {
    static const char *fn = "CUDA prefill";
    const flp_prefill_params *p = &launch->params;
    if (flp_cu_config_index(launch->q_dtype, launch->kv_dtype, launch->head_dim) < 0)
        return flp_fail(ctx, FLP_ERROR_UNSUPPORTED,
                        "%s: no kernel for q %s, kv %s, head_dim %d (q f16/bf16; kv "
                        "f16/bf16/e4m3/e5m2; head_dim 64/128/256)",
                        fn, flp_dtype_name((flp_dtype)launch->q_dtype),
                        flp_dtype_name((flp_dtype)launch->kv_dtype), (int)launch->head_dim);
    if (launch->num_ctas < 1 || launch->merge_grid < 0)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: grid %d, merge grid %d", fn,
                        (int)launch->num_ctas, (int)launch->merge_grid);
    if (!p->q || !p->o || !p->k || !p->v || !p->plan)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: a tensor address is 0", fn);
    /* q rows are read 16 bytes at a time, out written 4 (prefill) and 8 (merge) bytes at a time;
     * K/V rows are copied in 16-byte pieces by cp.async (a misaligned address faults). */
    if (misaligned(p->q, 16) || bad_stride(p->q_stride_row, 2, 16) ||
        bad_stride(p->q_stride_head, 2, 16) || misaligned(p->o, 8) ||
        bad_stride(p->o_stride_row, 2, 8) || bad_stride(p->o_stride_head, 2, 8))
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: q must be 16-byte aligned with row and head strides of whole 16 "
                        "bytes, out 8-byte aligned with strides of whole 8 bytes (q 0x%llx "
                        "strides %lld %lld, out 0x%llx strides %lld %lld)",
                        fn, (unsigned long long)p->q, (long long)p->q_stride_row,
                        (long long)p->q_stride_head, (unsigned long long)p->o,
                        (long long)p->o_stride_row, (long long)p->o_stride_head);
    const int64_t kvb = (int64_t)flp_dtype_size((flp_dtype)launch->kv_dtype);
    if (misaligned(p->k, 16) || misaligned(p->v, 16) || bad_stride(p->k_stride_page, kvb, 16) ||
        bad_stride(p->k_stride_slot, kvb, 16) || bad_stride(p->k_stride_head, kvb, 16) ||
        bad_stride(p->v_stride_page, kvb, 16) || bad_stride(p->v_stride_slot, kvb, 16) ||
        bad_stride(p->v_stride_head, kvb, 16))
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: k/v must be 16-byte aligned with page, slot and head strides of "
                        "whole 16 bytes (k 0x%llx, v 0x%llx)",
                        fn, (unsigned long long)p->k, (unsigned long long)p->v);
    if (misaligned(p->plan, 16))
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: plan memory 0x%llx is not 16-byte "
                        "aligned",
                        fn, (unsigned long long)p->plan);
    if (p->lse && misaligned(p->lse, 4))
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: lse address 0x%llx", fn,
                        (unsigned long long)p->lse);
    return FLP_OK;
}

static bool kv_append_dtype(int32_t dtype) {
    return dtype == FLP_DTYPE_F16 || dtype == FLP_DTYPE_BF16 || dtype == FLP_DTYPE_E4M3 ||
           dtype == FLP_DTYPE_E5M2;
}

flp_status flp_cu_kv_append_validate(flp_context *ctx, const flp_kv_append_params *params) {
    const bool src_16 = params->src_dtype == FLP_DTYPE_F16 || params->src_dtype == FLP_DTYPE_BF16;
    if (!kv_append_dtype(params->cache_dtype) ||
        !(src_16 || params->src_dtype == params->cache_dtype))
        return flp_fail(ctx, FLP_ERROR_UNSUPPORTED,
                        "CUDA kv append: new rows %s into a %s cache (rows f16/bf16 or the cache "
                        "dtype; caches f16/bf16/e4m3/e5m2)",
                        flp_dtype_name((flp_dtype)params->src_dtype),
                        flp_dtype_name((flp_dtype)params->cache_dtype));
    if (params->head_dim < 1 || params->num_kv_heads < 1 || params->page_size < 1 ||
        params->nnz < 0)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "CUDA kv append: head_dim %d, %d KV heads, page size %d, %d rows",
                        (int)params->head_dim, (int)params->num_kv_heads, (int)params->page_size,
                        (int)params->nnz);
    return FLP_OK;
}

unsigned flp_cu_kv_append_grid(const flp_kv_append_params *params) {
    const int64_t total = (int64_t)params->nnz * params->num_kv_heads * params->head_dim;
    int64_t blocks = (total + FLP_CU_KV_APPEND_THREADS - 1) / FLP_CU_KV_APPEND_THREADS;
    if (blocks > 4096) /* grid-stride beyond */
        blocks = 4096;
    return blocks < 1 ? 1u : (unsigned)blocks;
}
