/* Decode on Vulkan: the grid size, decode.comp's tile shape for a GPU (decode_cpu.comp's lives
 * in vk_decode_cpu.c), the checks only this backend can make (its limits) and the recording of
 * params update + decode + merge. */
#include "vk_backend.h"

#include <string.h>

/* Threads per decode workgroup (at least the largest subgroup size). */
#define FLP_VK_DECODE_THREADS 128u
/* K + V tile bytes aimed at per workgroup (less when the device has less shared memory). */
#define FLP_VK_DECODE_TILE_BYTES 16384u
#define FLP_VK_MAX_TOKENS_PER_GROUP 8u
/* Chunks of K (and of V) a thread prefetches per tile. Measured on an H200 (bf16, D=128):
 * 2 slots keep the kernel near 106 registers, 4 need ~180 and halve the resident workgroups
 * (GQA-4 batch decode 1.7 TB/s vs 1.1 TB/s). */
#define FLP_VK_PREFETCH_SLOTS 2u
#define FLP_VK_MERGE_THREADS 64u

/* The specialisation of decode.comp for one device, head dim, dtype and row count. */
typedef struct decode_shape {
    uint32_t kv_bytes;         /* 2, or 1 for fp8 */
    uint32_t lanes;            /* threads per K/V row, divides the smallest subgroup size */
    uint32_t rows;             /* query rows per pass */
    uint32_t token_groups;     /* independent softmax states per workgroup */
    uint32_t tokens_per_group; /* tokens of a tile per token group */
    uint32_t smem_u2;          /* shared uvec2 words */
    uint32_t threads;          /* = lanes * rows * token_groups */
    size_t shared_bytes;       /* everything the shader declares shared */
} decode_shape;

/* Shared memory of a shape, mirroring decode.comp's declarations. */
static void shape_memory(decode_shape *s, uint32_t head_dim) {
    uint32_t chunks = head_dim / 8;
    uint32_t tile = s->token_groups * s->tokens_per_group;
    /* K and V tiles of 16-bit elements (fp8 is widened on the way in), rows padded by one */
    uint32_t tiles_u2 = 2 * tile * (chunks * 2 + 1);
    uint32_t reduce_u2 = s->token_groups * s->rows * (head_dim / 2 + 1);
    s->smem_u2 = tiles_u2 > reduce_u2 ? tiles_u2 : reduce_u2;
    s->shared_bytes = (size_t)s->smem_u2 * 8 + (size_t)head_dim / 2 * sizeof(float);
}

/* FLP_OK with the shape, or FLP_ERROR_UNSUPPORTED when even the smallest shape does not fit
 * the device's shared memory. */
static flp_status decode_shape_for(flp_vk *vk, uint32_t head_dim, int32_t kv_dtype,
                                   uint32_t rows_needed, decode_shape *out) {
    const flp_vk_device_facts *f = &vk->facts;
    const size_t limit = f->limits.maxComputeSharedMemorySize;
    decode_shape s = {.kv_bytes = (uint32_t)flp_dtype_size((flp_dtype)kv_dtype)};
    uint32_t chunks = head_dim / 8;
    /* each lane owns >= 2 chunks so rotate-half partners stay in one thread */
    s.lanes = pow2_floor(chunks / 2);
    uint32_t sg_min = pow2_floor(f->min_subgroup_size ? f->min_subgroup_size : 1);
    if (s.lanes > sg_min)
        s.lanes = sg_min;
    uint32_t sg_max = pow2_ceil(f->max_subgroup_size ? f->max_subgroup_size : 1);
    uint32_t threads = FLP_VK_DECODE_THREADS > sg_max ? FLP_VK_DECODE_THREADS : sg_max;
    uint32_t max_threads = f->limits.maxComputeWorkGroupInvocations;
    if (f->limits.maxComputeWorkGroupSize[0] < max_threads)
        max_threads = f->limits.maxComputeWorkGroupSize[0];
    while (threads > max_threads && threads / 2 >= s.lanes)
        threads /= 2;
    size_t budget = limit / 2 < FLP_VK_DECODE_TILE_BYTES ? limit / 2 : FLP_VK_DECODE_TILE_BYTES;
    for (;;) {
        s.threads = threads;
        s.rows = pow2_ceil(rows_needed ? rows_needed : 1);
        if (s.rows > threads / s.lanes)
            s.rows = threads / s.lanes;
        s.token_groups = threads / (s.lanes * s.rows);
        size_t per_token = (size_t)head_dim * 2 * 2; /* K and V, 16-bit in shared memory */
        size_t tpg = budget / (s.token_groups * per_token);
        if (tpg > FLP_VK_MAX_TOKENS_PER_GROUP)
            tpg = FLP_VK_MAX_TOKENS_PER_GROUP;
        /* prefetch registers: at most FLP_VK_PREFETCH_SLOTS chunks of K (and V) per thread */
        while (tpg > 1 && tpg * s.token_groups * chunks > FLP_VK_PREFETCH_SLOTS * threads)
            tpg--;
        s.tokens_per_group = tpg ? (uint32_t)tpg : 1;
        shape_memory(&s, head_dim);
        while (s.shared_bytes > limit && s.tokens_per_group > 1) {
            s.tokens_per_group--;
            shape_memory(&s, head_dim);
        }
        if (s.shared_bytes <= limit)
            break;
        /* fewer threads: smaller reduction scratch (keeping whole subgroups) */
        if (threads / 2 < s.lanes || threads / 2 < sg_max || threads == s.lanes)
            return flp_fail(vk->ctx, FLP_ERROR_UNSUPPORTED,
                            "decode with head_dim %u needs %zu bytes of shared memory per "
                            "workgroup; the device allows %zu",
                            head_dim, s.shared_bytes, limit);
        threads /= 2;
    }
    *out = s;
    return FLP_OK;
}

int32_t flp_vk_decode_grid_size(flp_context *ctx, int32_t head_dim) {
    (void)head_dim;
    flp_vk *vk = ctx->backend;
    /* Enough resident workgroups per unit to keep memory busy on a GPU. */
    return flp_vk_clamp_grid(vk, vk->facts.cpu_decode ? flp_vk_cpu_decode_grid_size(ctx)
                                                      : (int64_t)ctx->info.compute_units * 4);
}

static flp_vk_pipeline_key decode_key(const flp_vk *vk, const flp_decode_launch *launch,
                                      const decode_shape *s) {
    flp_vk_pipeline_key key = {.shader = FLP_VK_SHADER_DECODE, .spec_count = FLP_SPEC_DECODE_COUNT};
    key.spec[FLP_SPEC_HEAD_DIM] = (uint32_t)launch->head_dim;
    key.spec[FLP_SPEC_Q_DTYPE] = (uint32_t)launch->q_dtype;
    key.spec[FLP_SPEC_KV_DTYPE] = (uint32_t)launch->kv_dtype;
    key.spec[FLP_SPEC_KV_BYTES] = s->kv_bytes;
    key.spec[FLP_SPEC_LANES] = s->lanes;
    key.spec[FLP_SPEC_ROWS] = s->rows;
    key.spec[FLP_SPEC_DECODE_TOKEN_GROUPS] = s->token_groups;
    key.spec[FLP_SPEC_DECODE_TOKENS_PER_GROUP] = s->tokens_per_group;
    key.spec[FLP_SPEC_DECODE_SMEM_U2] = s->smem_u2;
    key.spec[FLP_SPEC_DECODE_THREADS] = s->threads;
    key.full_subgroups = vk->facts.full_subgroups && s->threads % vk->facts.max_subgroup_size == 0;
    return key;
}

static flp_vk_pipeline_key decode_cpu_key(const flp_decode_launch *launch,
                                          const flp_vk_cpu_shape *s, bool texel, uint32_t features,
                                          uint32_t defer) {
    flp_vk_pipeline_key key = {
        .shader = texel ? FLP_VK_SHADER_DECODE_CPU_TEXEL : FLP_VK_SHADER_DECODE_CPU,
        .spec_count = FLP_SPEC_CPU_COUNT,
    };
    /* q and 16-bit KV dtypes come from the plan (decode_cpu.comp); fp8 KV is specialised */
    key.spec[FLP_SPEC_HEAD_DIM] = (uint32_t)launch->head_dim;
    key.spec[FLP_SPEC_Q_DTYPE] = 0;
    key.spec[FLP_SPEC_KV_DTYPE] = s->kv_bytes == 1 ? (uint32_t)launch->kv_dtype : 0;
    key.spec[FLP_SPEC_KV_BYTES] = s->kv_bytes;
    key.spec[FLP_SPEC_LANES] = s->lanes;
    key.spec[FLP_SPEC_ROWS] = s->rows;
    key.spec[FLP_SPEC_CPU_STEP] = s->step;
    key.spec[FLP_SPEC_CPU_FEATURES] = features;
    key.spec[FLP_SPEC_CPU_DEFER] = defer;
    return key; /* one (partial) subgroup per workgroup: no full-subgroup requirement */
}

static flp_vk_pipeline_key merge_key(const flp_vk *vk, const flp_decode_launch *launch) {
    flp_vk_pipeline_key key = {.shader = FLP_VK_SHADER_DECODE_MERGE,
                               .spec_count = FLP_SPEC_MERGE_COUNT};
    key.spec[FLP_SPEC_HEAD_DIM] = (uint32_t)launch->head_dim;
    key.spec[FLP_SPEC_Q_DTYPE] = (uint32_t)launch->q_dtype;
    /* on a CPU device one SIMD vector: the merge returns at once for most workgroups */
    uint32_t threads = FLP_VK_MERGE_THREADS;
    if (vk->facts.cpu_decode && vk->facts.min_subgroup_size < threads)
        threads = vk->facts.min_subgroup_size ? vk->facts.min_subgroup_size : 1;
    key.spec[FLP_SPEC_MERGE_THREADS] = threads;
    return key;
}

/* How a launch is recorded: the decode pipeline and, for decode_cpu.comp's texel variant, the
 * K and V descriptor sets and its push constants. */
typedef struct decode_recipe {
    flp_vk_pipeline_key keys[2]; /* [key_count] dispatched in order */
    int key_count;
    VkDescriptorSet sets[2]; /* K's and V's buffer (texel variant only) */
    flp_vk_texel_push push;  /* texel variant only; push.params is set when recording */
} decode_recipe;

/* The checks only this backend makes (its limits, its kernels' shapes) and the choice of how to
 * record the launch. */
static flp_status prepare(flp_context *ctx, const flp_decode_launch *launch,
                          decode_recipe *recipe) {
    flp_vk *vk = ctx->backend;
    const flp_decode_params *p = &launch->params;
    flp_status st = flp_vk_check_merge_grid(ctx, "decode merge", launch->merge_grid);
    if (st != FLP_OK)
        return st;
    /* the shader keeps page and slot strides in 32 bits (registers are what limit it) */
    const int64_t strides[4] = {p->k_stride_page, p->k_stride_slot, p->v_stride_page,
                                p->v_stride_slot};
    for (int i = 0; i < 4; i++)
        if (strides[i] < INT32_MIN || strides[i] > INT32_MAX)
            return flp_fail(ctx, FLP_ERROR_UNSUPPORTED,
                            "the Vulkan decode kernel needs KV page and slot strides below 2^31 "
                            "elements; got %lld",
                            (long long)strides[i]);
    /* The kernel shape is fixed by the plan's capacities, not by the current plan, so that
     * every run of a plan (and every replay of a recorded one after a re-plan) uses one
     * pipeline: the same reduction order, hence the same bits. */
    uint32_t rows = (uint32_t)launch->group_size * (uint32_t)launch->max_qo_len;
    if (vk->facts.cpu_decode) {
        flp_vk_cpu_shape shape =
            flp_vk_cpu_shape_for(vk, (uint32_t)launch->head_dim, launch->kv_dtype, rows);
        st = flp_vk_cpu_check_budget(vk, launch, &shape);
        if (st == FLP_OK)
            st = flp_vk_texel_source(vk, p->k, &recipe->sets[0], &recipe->push.k_base);
        if (st == FLP_OK)
            st = flp_vk_texel_source(vk, p->v, &recipe->sets[1], &recipe->push.v_base);
        if (st != FLP_OK)
            return st;
        bool texel = recipe->sets[0] && recipe->sets[1];
        uint32_t features[2], defer[2];
        recipe->key_count = flp_vk_cpu_pipelines(vk, launch->schedule.flags, features, defer);
        for (int i = 0; i < recipe->key_count; i++)
            recipe->keys[i] = decode_cpu_key(launch, &shape, texel, features[i], defer[i]);
        return FLP_OK;
    }
    decode_shape shape = {0};
    st = decode_shape_for(vk, (uint32_t)launch->head_dim, launch->kv_dtype, rows, &shape);
    if (st != FLP_OK)
        return st;
    recipe->keys[0] = decode_key(vk, launch, &shape);
    recipe->key_count = 1;
    return FLP_OK;
}

flp_status flp_vk_decode_run(flp_context *ctx, const flp_decode_launch *launch) {
    flp_vk *vk = ctx->backend;
    decode_recipe recipe = {0};
    flp_status st = prepare(ctx, launch, &recipe);
    if (st != FLP_OK)
        return st;
    /* Pipelines first (creation, and a variant's compile, may fail): nothing is recorded before
     * every check passed. */
    flp_vk_pipeline_key mk = merge_key(vk, launch);
    flp_vk_key_set_variant(&mk, launch->program);
    for (int i = 0; i < recipe.key_count; i++)
        flp_vk_key_set_variant(&recipe.keys[i], launch->program);
    VkPipeline decode[2], merge;
    for (int i = 0; i < recipe.key_count; i++)
        if ((st = flp_vk_pipeline_get(vk, &recipe.keys[i], &decode[i])) != FLP_OK)
            return st;
    if ((st = flp_vk_pipeline_get(vk, &mk, &merge)) != FLP_OK)
        return st;

    flp_vk_recording rec;
    uint64_t params_address;
    if ((st = flp_vk_record_run_begin(vk, &launch->slot, &launch->params, sizeof(flp_decode_params),
                                      &rec, &params_address)) != FLP_OK)
        return st;
    VkCommandBuffer cmd = rec.cmd;
    if (launch->program)
        flp_vk_record_user_params(vk, cmd, &launch->user_slot, launch->user);
    if (recipe.keys[0].shader == FLP_VK_SHADER_DECODE_CPU_TEXEL) {
        recipe.push.params = params_address;
        vk->vk.vkCmdBindDescriptorSets(cmd, VK_PIPELINE_BIND_POINT_COMPUTE,
                                       vk->texel_pipeline_layout, 0, 2, recipe.sets, 0, NULL);
        vk->vk.vkCmdPushConstants(cmd, vk->texel_pipeline_layout, VK_SHADER_STAGE_COMPUTE_BIT, 0,
                                  sizeof recipe.push, &recipe.push);
    } else {
        vk->vk.vkCmdPushConstants(cmd, vk->pipeline_layout, VK_SHADER_STAGE_COMPUTE_BIT, 0,
                                  sizeof params_address, &params_address);
    }
    /* Two pipelines sharing one layout (decode_cpu.comp in a caller's command buffer): only
     * one of them finds work, so they need no barrier between them. */
    for (int i = 0; i < recipe.key_count; i++) {
        vk->vk.vkCmdBindPipeline(cmd, VK_PIPELINE_BIND_POINT_COMPUTE, decode[i]);
        vk->vk.vkCmdDispatch(cmd, (uint32_t)launch->num_ctas, 1, 1);
    }

    /* The merge always follows: a re-plan may split a request of a run recorded unsplit (it
     * returns at once for requests that are not split). Its layout's push constant again: the
     * texel variant used another layout. */
    flp_vk_record_merge(vk, cmd, merge, (uint32_t)launch->merge_grid, &params_address);
    return flp_vk_record_finish(vk, &rec);
}
