/* Prefill / append attention on Vulkan: prefill.comp's tile shape from the device limits, the
 * persistent grid, the checks only this backend makes (shared memory, llvmpipe's loop budget)
 * and the recording of params update + prefill + merge. */
#include "vk_backend.h"

#include <string.h>

/* Threads per prefill workgroup on a GPU (at least the largest subgroup size). */
#define FLP_VK_PREFILL_THREADS 128u
/* On a CPU device (lavapipe) a workgroup of a few SIMD vectors: each barrier switches
 * coroutines, but more rows per pass share each K/V tile's loads and conversions. */
#define FLP_VK_PREFILL_CPU_THREADS 32u
/* Query-row elements one invocation keeps in registers (ROWS * HEAD_DIM / LANES): the query
 * and the f32 accumulator of each row. */
#define FLP_VK_PREFILL_ROW_ELEMENTS 64u
/* Elements of the head dim per lane aimed at (HEAD_DIM / LANES). */
#define FLP_VK_PREFILL_LANE_ELEMENTS 16u
/* K + V tile bytes (f32) aimed at per workgroup, less where the device has less. */
#define FLP_VK_PREFILL_TILE_BYTES 32768u
#define FLP_VK_PREFILL_MAX_BK 64u
/* Keys per online-softmax sub-block: one rescale of the accumulators per sub-block. */
#define FLP_VK_PREFILL_SB 8u
/* Resident workgroups aimed at per compute unit (GPU) / per CPU thread (lavapipe). */
#define FLP_VK_PREFILL_CTAS_PER_UNIT 2
#define FLP_VK_PREFILL_CPU_CTAS_PER_UNIT 8
#define FLP_VK_PREFILL_MERGE_THREADS 64u
/* prefill_merge.comp: an invocation per 8 columns of a row, at least one row per slice */
_Static_assert(FLP_VK_PREFILL_MERGE_THREADS >= FLP_MAX_HEAD_DIM / 8, "prefill merge slices");

/* The specialisation of prefill.comp for one device and head dim. */
typedef struct prefill_shape {
    uint32_t lanes;    /* invocations per query row (a power of two, <= min subgroup size) */
    uint32_t rows;     /* query rows per invocation */
    uint32_t groups;   /* row groups per workgroup */
    uint32_t bk;       /* keys per shared K/V tile */
    uint32_t sb;       /* keys per softmax sub-block */
    uint32_t threads;  /* lanes * groups */
    uint32_t prefetch; /* 1: the next tile's loads overlap the current tile's math */
    size_t shared_bytes;
} prefill_shape;

static size_t shape_shared_bytes(const prefill_shape *s, uint32_t head_dim) {
    /* f32 K and V tiles, the RoPE frequencies */
    return (size_t)s->bk * head_dim * 8 + (size_t)head_dim / 2 * sizeof(float);
}

/* FLP_OK with the shape, or FLP_ERROR_UNSUPPORTED when the device cannot hold even the smallest
 * one. head_dim is a multiple of 16. */
static flp_status prefill_shape_for(flp_vk *vk, uint32_t head_dim, prefill_shape *out) {
    const flp_vk_device_facts *f = &vk->facts;
    const VkPhysicalDeviceLimits *lim = &f->limits;
    prefill_shape s = {0};
    /* lanes: a power of two dividing head_dim / 8 (each lane owns an even number of 4-element
     * columns: rotate-half partners stay in one lane), at most the smallest subgroup */
    uint32_t chunks = head_dim / 8;
    uint32_t lanes = pow2_floor(head_dim / FLP_VK_PREFILL_LANE_ELEMENTS);
    uint32_t sg_min = pow2_floor(f->min_subgroup_size ? f->min_subgroup_size : 1);
    if (lanes > sg_min)
        lanes = sg_min;
    while (lanes > 1 && chunks % lanes != 0)
        lanes /= 2;
    s.lanes = lanes;
    uint32_t per_lane = head_dim / lanes;
    s.rows = FLP_VK_PREFILL_ROW_ELEMENTS / per_lane;
    if (s.rows < 1)
        s.rows = 1;
    if (s.rows > 8)
        s.rows = 8;

    uint32_t sg_max = pow2_ceil(f->max_subgroup_size ? f->max_subgroup_size : 1);
    uint32_t threads = f->cpu_decode ? FLP_VK_PREFILL_CPU_THREADS : FLP_VK_PREFILL_THREADS;
    if (threads < sg_max)
        threads = sg_max;
    uint32_t max_threads = lim->maxComputeWorkGroupInvocations;
    if (lim->maxComputeWorkGroupSize[0] < max_threads)
        max_threads = lim->maxComputeWorkGroupSize[0];
    while (threads > max_threads && threads / 2 >= lanes)
        threads /= 2;
    if (threads < lanes)
        threads = lanes;
    s.threads = threads;
    s.groups = threads / lanes;
    size_t limit = lim->maxComputeSharedMemorySize;
    size_t fixed = (size_t)head_dim / 2 * sizeof(float);
    size_t budget = limit > fixed ? limit - fixed : 0;
    if (budget > FLP_VK_PREFILL_TILE_BYTES)
        budget = FLP_VK_PREFILL_TILE_BYTES;
    size_t bk = budget / ((size_t)head_dim * 8);
    s.bk = bk > FLP_VK_PREFILL_MAX_BK ? FLP_VK_PREFILL_MAX_BK : pow2_floor(bk ? (uint32_t)bk : 1);
    s.sb = FLP_VK_PREFILL_SB < s.bk ? FLP_VK_PREFILL_SB : s.bk;
    s.prefetch = f->cpu_decode ? 0 : 1;
    s.shared_bytes = shape_shared_bytes(&s, head_dim);
    if (s.shared_bytes > limit)
        return flp_fail(vk->ctx, FLP_ERROR_UNSUPPORTED,
                        "prefill with head_dim %u needs %zu bytes of shared memory per "
                        "workgroup; the device allows %zu",
                        head_dim, s.shared_bytes, limit);
    *out = s;
    return FLP_OK;
}

int32_t flp_vk_prefill_grid_size(flp_context *ctx, int32_t head_dim) {
    (void)head_dim;
    flp_vk *vk = ctx->backend;
    int64_t per_unit =
        vk->facts.cpu_decode ? FLP_VK_PREFILL_CPU_CTAS_PER_UNIT : FLP_VK_PREFILL_CTAS_PER_UNIT;
    return flp_vk_clamp_grid(vk, (int64_t)ctx->info.compute_units * per_unit);
}

static flp_vk_pipeline_key prefill_key(const flp_vk *vk, const flp_prefill_launch *launch,
                                       const prefill_shape *s) {
    flp_vk_pipeline_key key = {.shader = FLP_VK_SHADER_PREFILL,
                               .spec_count = FLP_SPEC_PREFILL_COUNT};
    key.spec[FLP_SPEC_HEAD_DIM] = (uint32_t)launch->head_dim;
    key.spec[FLP_SPEC_Q_DTYPE] = (uint32_t)launch->q_dtype;
    key.spec[FLP_SPEC_KV_DTYPE] = (uint32_t)launch->kv_dtype;
    key.spec[FLP_SPEC_KV_BYTES] = (uint32_t)flp_dtype_size((flp_dtype)launch->kv_dtype);
    key.spec[FLP_SPEC_LANES] = s->lanes;
    key.spec[FLP_SPEC_ROWS] = s->rows;
    key.spec[FLP_SPEC_PREFILL_GROUPS] = s->groups;
    key.spec[FLP_SPEC_PREFILL_BK] = s->bk;
    key.spec[FLP_SPEC_PREFILL_SB] = s->sb;
    key.spec[FLP_SPEC_PREFILL_THREADS] = s->threads;
    key.spec[FLP_SPEC_PREFILL_PREFETCH] = s->prefetch;
    /* the row reduction assumes a row's lanes are consecutive invocations of one subgroup */
    key.full_subgroups = vk->facts.full_subgroups && s->threads % vk->facts.max_subgroup_size == 0;
    return key;
}

static flp_vk_pipeline_key merge_key(const flp_prefill_launch *launch) {
    flp_vk_pipeline_key key = {.shader = FLP_VK_SHADER_PREFILL_MERGE,
                               .spec_count = FLP_SPEC_MERGE_COUNT};
    key.spec[FLP_SPEC_HEAD_DIM] = (uint32_t)launch->head_dim;
    key.spec[FLP_SPEC_Q_DTYPE] = (uint32_t)launch->q_dtype;
    key.spec[FLP_SPEC_MERGE_THREADS] = FLP_VK_PREFILL_MERGE_THREADS;
    return key;
}

/* Loop iterations one invocation of workgroup cta runs, counted as gallivm counts them (every
 * pass through a loop's end, the exiting one included; see vk_decode_cpu.c): the item loop;
 * per item the row-pass loop; per pass the key-tile loop, over the keys the pass keeps (the
 * shader clips each pass's keys by the same rule the scheduler clipped the item with); per tile
 * the sub-block loop. */
static uint64_t cta_loop_iterations(const flp_prefill_launch *launch, const prefill_shape *s,
                                    int32_t cta) {
    const flp_prefill_schedule_view *v = &launch->schedule;
    int64_t bq = (int64_t)s->groups * s->rows;
    uint64_t n = (uint64_t)(v->work_indptr[cta + 1] - v->work_indptr[cta]) + 1;
    for (int32_t i = v->work_indptr[cta]; i < v->work_indptr[cta + 1]; i++) {
        const int32_t *item = v->work_items + (size_t)i * FLP_PREFILL_ITEM_INTS;
        int32_t b = item[FLP_PITEM_REQUEST];
        int32_t qo_len = v->qo_indptr[b + 1] - v->qo_indptr[b];
        int32_t row_end = item[FLP_PITEM_ROW_END];
        n += 1; /* the row-pass loop's exit */
        for (int32_t row = item[FLP_PITEM_ROW_BEGIN]; row < row_end; row += (int32_t)bq) {
            int32_t pass_end = row + bq < row_end ? row + (int32_t)bq : row_end;
            int32_t lo, hi;
            flp_prefill_key_range(&v->keys, qo_len, v->kv_len[b], row, pass_end, &lo, &hi);
            lo = lo > item[FLP_PITEM_KV_BEGIN] ? lo : item[FLP_PITEM_KV_BEGIN];
            hi = hi < item[FLP_PITEM_KV_END] ? hi : item[FLP_PITEM_KV_END];
            int64_t tiles = hi > lo ? ((int64_t)hi - lo + s->bk - 1) / s->bk : 0;
            /* the pass; the tile loop; per tile the sub-block loop (rolled: it is the bulk of
             * the shader, and llvmpipe compiles an unrolled one twice as long) */
            n += 1 + (uint64_t)tiles + 1 + (uint64_t)tiles * (s->bk / s->sb + 1);
        }
    }
    return n;
}

/* Row slices per merge item in prefill_merge.comp: an invocation per 8 columns of a row. */
static uint64_t merge_slices(int32_t head_dim) {
    uint64_t rows_per_slice = FLP_VK_PREFILL_MERGE_THREADS / ((uint64_t)head_dim / 8);
    return (FLP_PREFILL_MAX_TILE + rows_per_slice - 1) / rows_per_slice;
}

/* Loop iterations of the merge's workgroup w (stride: workgroups dispatched): the loop over
 * (merge item, row slice) units; per unit the loop over the item's chunks. */
static uint64_t merge_loop_iterations(const flp_prefill_launch *launch, uint32_t w,
                                      uint32_t stride) {
    const flp_prefill_schedule_view *v = &launch->schedule;
    const uint64_t slices = merge_slices(launch->head_dim);
    const uint64_t units = (uint64_t)v->num_merge_items * slices;
    uint64_t n = 1;
    for (uint64_t u = w; u < units; u += stride) {
        const int32_t *item = v->merge_items + u / slices * FLP_MERGE_ITEM_INTS;
        uint64_t chunks = item[FLP_MITEM_CHUNKS] > 0 ? (uint64_t)item[FLP_MITEM_CHUNKS] : 0;
        n += 1 + chunks + 1;
    }
    return n;
}

/* Checks the plan as it is now (a command buffer recorded with it and replayed after a re-plan
 * is not checked again: the re-plan does not reach the backend). */
static flp_status check_budget(flp_vk *vk, const flp_prefill_launch *launch,
                               const prefill_shape *s) {
    uint32_t budget = vk->facts.loop_budget;
    if (budget == 0)
        return FLP_OK;
    for (int32_t cta = 0; cta < launch->num_ctas; cta++) {
        flp_status st = flp_vk_check_workgroup_loops(vk, "prefill", cta, launch->num_ctas,
                                                     cta_loop_iterations(launch, s, cta));
        if (st != FLP_OK)
            return st;
    }
    uint32_t max_x = vk->facts.limits.maxComputeWorkGroupCount[0];
    uint32_t grid = launch->merge_grid > 0 ? (uint32_t)launch->merge_grid : 1;
    uint32_t x = grid < max_x ? grid : max_x;
    uint32_t stride = x * ((grid + x - 1) / x);
    const uint64_t units =
        (uint64_t)launch->schedule.num_merge_items * merge_slices(launch->head_dim);
    for (uint32_t w = 0; w < grid && w < units; w++) {
        uint64_t n = merge_loop_iterations(launch, w, stride);
        if (n > budget)
            return flp_fail(vk->ctx, FLP_ERROR_UNSUPPORTED,
                            "this prefill plan is too large for the device: merge workgroup %u "
                            "would run %llu loop iterations, and llvmpipe ends every loop of a "
                            "shader invocation after %u iterations in total",
                            w, (unsigned long long)n, budget);
    }
    return FLP_OK;
}

/* The checks only this backend makes (shared memory, dispatch limits, llvmpipe's loop budget)
 * and the pipeline that runs the launch. */
static flp_status prepare(flp_context *ctx, const flp_prefill_launch *launch,
                          flp_vk_pipeline_key *key) {
    flp_vk *vk = ctx->backend;
    flp_status st = flp_vk_check_merge_grid(ctx, "prefill merge", launch->merge_grid);
    if (st != FLP_OK)
        return st;
    prefill_shape shape = {0};
    if ((st = prefill_shape_for(vk, (uint32_t)launch->head_dim, &shape)) != FLP_OK)
        return st;
    if ((st = check_budget(vk, launch, &shape)) != FLP_OK)
        return st;
    *key = prefill_key(vk, launch, &shape);
    return FLP_OK;
}

flp_status flp_vk_prefill_run(flp_context *ctx, const flp_prefill_launch *launch) {
    flp_vk *vk = ctx->backend;
    flp_vk_pipeline_key key;
    flp_status st = prepare(ctx, launch, &key);
    if (st != FLP_OK)
        return st;
    /* Pipelines first (creation, and a variant's compile, may fail): nothing is recorded before
     * every check passed. */
    flp_vk_pipeline_key mk = merge_key(launch);
    flp_vk_key_set_variant(&key, launch->program);
    flp_vk_key_set_variant(&mk, launch->program);
    VkPipeline prefill, merge;
    if ((st = flp_vk_pipeline_get(vk, &key, &prefill)) != FLP_OK)
        return st;
    if ((st = flp_vk_pipeline_get(vk, &mk, &merge)) != FLP_OK)
        return st;

    flp_vk_recording rec;
    uint64_t params_address;
    if ((st = flp_vk_record_run_begin(vk, &launch->slot, &launch->params,
                                      sizeof(flp_prefill_params), &rec, &params_address)) != FLP_OK)
        return st;
    VkCommandBuffer cmd = rec.cmd;
    if (launch->program)
        flp_vk_record_user_params(vk, cmd, &launch->user_slot, launch->user);
    vk->vk.vkCmdBindPipeline(cmd, VK_PIPELINE_BIND_POINT_COMPUTE, prefill);
    vk->vk.vkCmdPushConstants(cmd, vk->pipeline_layout, VK_SHADER_STAGE_COMPUTE_BIT, 0,
                              sizeof params_address, &params_address);
    vk->vk.vkCmdDispatch(cmd, (uint32_t)launch->num_ctas, 1, 1);

    /* The merge always follows (it finds no items when nothing is split): a recording stays
     * right when a later re-plan splits a request. */
    if (launch->merge_grid > 0)
        flp_vk_record_merge(vk, cmd, merge, (uint32_t)launch->merge_grid, NULL);
    return flp_vk_record_finish(vk, &rec);
}
