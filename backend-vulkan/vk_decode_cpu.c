/* decode_cpu.comp, the decode kernel for CPU devices (lavapipe): its specialisation, its grid
 * and the count of loop iterations its invocations run, checked against the driver's budget
 * (llvmpipe silently ends every loop of an invocation after 65535 iterations in total). */
#include "vk_backend.h"
#include "core/decode_schedule.h"

/* Query rows x elements per lane held in registers per pass (q and the accumulators): more
 * rows read each K/V element for more rows, but make a bigger shader. On lavapipe (AVX2, D=128,
 * GQA 4) 64 (4 rows) runs 1.1-1.3x faster than 32 (2 passes of 2 rows); 128 is 1.25x faster
 * again at GQA 8 but doubles the time llvmpipe takes to compile a pipeline (about 1.3 s at
 * 64, paid once per pipeline and Mesa shader cache), which the test suites feel most. */
#define FLP_VK_CPU_ROW_ELEMENTS 64u
/* Keys per iteration of the key loop (unrolled in the shader): 16 runs about 8% faster than 8
 * on lavapipe but compiles much slower; the loop budget allows 65535 iterations. */
#define FLP_VK_CPU_STEP 8u
/* Workgroups (one subgroup each) per CPU thread: 16 balanced best on lavapipe (8: 1.3x slower
 * at batch 64), and the work of a balanced plan is spread thin enough that a workgroup's share
 * stays within the loop budget (about 1M keys per workgroup) for any KV cache that fits
 * lavapipe's 2 GiB buffers. */
#define FLP_VK_CPU_WORKGROUPS_PER_UNIT 16

/* Variant features decode_cpu.comp compiles in (FEATURES): RoPE (sines and cosines of every
 * key: 3x the time of a decode without it on lavapipe) only in the pipelines that may need it;
 * the masks, ALiBi, the soft cap and the softmax switch always (about 10%; fewer pipelines to
 * compile). */
#define FLP_VK_CPU_ALL                                                                             \
    (FLP_FLAG_CAUSAL | FLP_FLAG_WINDOW | FLP_FLAG_ALIBI | FLP_FLAG_SOFTCAP | FLP_FLAG_ROPE |       \
     FLP_FLAG_SOFTMAX_OFF)
#define FLP_VK_CPU_NO_ROPE (FLP_VK_CPU_ALL & ~FLP_FLAG_ROPE)
#define FLP_VK_CPU_NO_DEFER 0xffffffffu

int32_t flp_vk_cpu_decode_grid_size(const flp_context *ctx) {
    return ctx->info.compute_units * FLP_VK_CPU_WORKGROUPS_PER_UNIT;
}

flp_vk_cpu_shape flp_vk_cpu_shape_for(const flp_vk *vk, uint32_t head_dim, int32_t kv_dtype,
                                      uint32_t rows_needed) {
    const flp_vk_device_facts *f = &vk->facts;
    flp_vk_cpu_shape s;
    s.kv_bytes = (uint32_t)flp_dtype_size((flp_dtype)kv_dtype);
    /* one subgroup per workgroup: lanes <= the smallest subgroup, and each lane owns whole
     * 8-element chunks (head_dim / 8 of them, a power of two) */
    uint32_t lanes = pow2_floor(f->min_subgroup_size ? f->min_subgroup_size : 1);
    uint32_t chunks = head_dim / 8;
    if (lanes > chunks)
        lanes = chunks;
    uint32_t max_threads = f->limits.maxComputeWorkGroupSize[0];
    if (f->limits.maxComputeWorkGroupInvocations < max_threads)
        max_threads = f->limits.maxComputeWorkGroupInvocations;
    while (lanes > max_threads)
        lanes /= 2;
    s.lanes = lanes;
    uint32_t per_lane = head_dim / lanes;
    uint32_t rows =
        pow2_floor(FLP_VK_CPU_ROW_ELEMENTS / per_lane ? FLP_VK_CPU_ROW_ELEMENTS / per_lane : 1);
    /* a power of two: fewer pipelines (a GQA group of 3 runs as 4 rows, one of them idle) */
    uint32_t needed = pow2_ceil(rows_needed ? rows_needed : 1);
    s.rows = rows < needed ? rows : needed;
    /* the shader looks up a step's keys one per lane: a multiple of the lanes */
    s.step = FLP_VK_CPU_STEP > lanes ? FLP_VK_CPU_STEP / lanes * lanes : lanes;
    return s;
}

int flp_vk_cpu_pipelines(const flp_vk *vk, uint32_t flags, uint32_t features[2],
                         uint32_t defer[2]) {
    /* the pair: without RoPE, and with it for the plans the first leaves to it */
    const uint32_t pair_features[2] = {FLP_VK_CPU_NO_ROPE, FLP_VK_CPU_ALL};
    const uint32_t pair_defer[2] = {FLP_VK_CPU_NO_DEFER, FLP_VK_CPU_NO_ROPE};
    if (vk->user_cmd) { /* recorded once, replayed after any re-plan: both */
        for (int i = 0; i < 2; i++) {
            features[i] = pair_features[i];
            defer[i] = pair_defer[i];
        }
        return 2;
    }
    int i = (flags & FLP_FLAG_ROPE) ? 1 : 0; /* the library's queue: the one that works */
    features[0] = pair_features[i];
    defer[0] = pair_defer[i];
    return 1;
}

/* Loop iterations one invocation of workgroup cta runs, counted as gallivm counts them: every
 * pass through a loop's end, the last (exiting) pass included (a loop's body runs once even
 * when its condition fails at once). The shader's loops: the item loop; per item the row-pass
 * loop; per pass the key loop (STEP keys per iteration). Loops with trip counts fixed at
 * pipeline creation are unrolled and do not count. When the counter runs out, the pass that
 * emptied it ends its loop and every later pass ends its loop too, so a workgroup whose count
 * is at most the budget loses nothing (its last pass is the item loop's exit anyway). Measured
 * on lavapipe (tests/test_vulkan.c test_loop_budget): a key loop of 65535 iterations completes,
 * 65536 loses its last. */
static uint64_t cta_loop_iterations(const flp_decode_launch *launch, const flp_vk_cpu_shape *s,
                                    int32_t cta) {
    const flp_decode_schedule_view *sv = &launch->schedule;
    const int32_t *work_indptr = sv->work_indptr;
    int64_t rows_total = (int64_t)launch->schedule.qo_len * launch->group_size;
    int64_t passes = (rows_total + s->rows - 1) / s->rows;
    uint64_t n = (uint64_t)(work_indptr[cta + 1] - work_indptr[cta]) + 1;
    for (int32_t i = work_indptr[cta]; i < work_indptr[cta + 1]; i++) {
        const flp_decode_item item = flp_decode_item_at(sv->work_items, i, sv->merge_info,
                                                        sv->kv_begin, sv->kv_end, sv->chunk_size);
        int64_t keys = (int64_t)item.kv_end - item.kv_begin;
        int64_t steps = keys > 0 ? (keys + s->step - 1) / s->step : 0;
        n += (uint64_t)(passes + 1 + passes * (steps + 1));
    }
    return n;
}

/* Checks the plan as it is now: a command buffer recorded with it and replayed after a re-plan
 * is not checked again (flp_decode_plan does not reach the backend). */
flp_status flp_vk_cpu_check_budget(flp_vk *vk, const flp_decode_launch *launch,
                                   const flp_vk_cpu_shape *s) {
    if (vk->facts.loop_budget == 0)
        return FLP_OK;
    for (int32_t cta = 0; cta < launch->num_ctas; cta++) {
        flp_status st = flp_vk_check_workgroup_loops(vk, "decode", cta, launch->num_ctas,
                                                     cta_loop_iterations(launch, s, cta));
        if (st != FLP_OK)
            return st;
    }
    return FLP_OK;
}
