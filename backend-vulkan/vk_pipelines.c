/* Shader modules from the embedded SPIR-V and compute pipelines specialised by constants
 * (head dim, dtypes, tile shape from the device limits), created on first use and cached. */
#include "vk_backend.h"
#include "vk_jit.h"
#include "vk_shaders.h"

#include <string.h>

flp_status flp_vk_pipelines_init(flp_vk *vk) {
    vk->jit_shaders = flp_vk_jit_requested();
    if (vk->jit_shaders && !flp_vk_jit_available())
        return flp_fail(vk->ctx, FLP_ERROR_UNSUPPORTED,
                        "Vulkan: FLP_VULKAN_JIT is set but this library was built without "
                        "glslang (glslang-dev): its shaders cannot be compiled at run time");
    if (vk->jit_shaders)
        flp_log(vk->ctx, FLP_LOG_INFO, "Vulkan: FLP_VULKAN_JIT: shaders compiled at run time");
    /* Every pipeline reads one thing from push constants: the 64-bit device address of its
     * parameter block; all tensors are reached through addresses, so there are no sets. */
    VkPushConstantRange range = {
        .stageFlags = VK_SHADER_STAGE_COMPUTE_BIT,
        .offset = 0,
        .size = sizeof(uint64_t),
    };
    VkPipelineLayoutCreateInfo li = {
        .sType = VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO,
        .pushConstantRangeCount = 1,
        .pPushConstantRanges = &range,
    };
    VkResult r =
        FLP_VK_ALLOC(VK_ERROR_OUT_OF_HOST_MEMORY,
                     vk->vk.vkCreatePipelineLayout(vk->device, &li, NULL, &vk->pipeline_layout));
    if (r != VK_SUCCESS) {
        vk->pipeline_layout = VK_NULL_HANDLE;
        return flp_vk_fail(vk->ctx, r, "vkCreatePipelineLayout");
    }
    return FLP_OK;
}

void flp_vk_pipelines_destroy(flp_vk *vk) {
    if (!vk->device)
        return;
    for (uint32_t i = 0; i < vk->pipeline_count; i++)
        vk->vk.vkDestroyPipeline(vk->device, vk->pipelines[i].pipeline, NULL);
    flp_free(vk->pipelines);
    vk->pipelines = NULL;
    vk->pipeline_count = vk->pipeline_capacity = 0;
    for (uint32_t i = 0; i < vk->variant_module_count; i++)
        vk->vk.vkDestroyShaderModule(vk->device, vk->variant_modules[i].module, NULL);
    flp_free(vk->variant_modules);
    vk->variant_modules = NULL;
    vk->variant_module_count = vk->variant_module_capacity = 0;
    for (int i = 0; i < FLP_VK_SHADER_COUNT; i++) {
        if (vk->modules[i])
            vk->vk.vkDestroyShaderModule(vk->device, vk->modules[i], NULL);
        vk->modules[i] = VK_NULL_HANDLE;
    }
    if (vk->pipeline_layout)
        vk->vk.vkDestroyPipelineLayout(vk->device, vk->pipeline_layout, NULL);
    vk->pipeline_layout = VK_NULL_HANDLE;
}

static flp_status get_module(flp_vk *vk, flp_vk_shader shader, VkShaderModule *out) {
    static const struct {
        const unsigned char *code;
        const unsigned long *size;
    } spirv[FLP_VK_SHADER_COUNT] = {
        [FLP_VK_SHADER_DECODE] = {flp_spv_decode, &flp_spv_decode_size},
        [FLP_VK_SHADER_DECODE_CPU] = {flp_spv_decode_cpu, &flp_spv_decode_cpu_size},
        [FLP_VK_SHADER_DECODE_CPU_TEXEL] = {flp_spv_decode_cpu_texel,
                                            &flp_spv_decode_cpu_texel_size},
        [FLP_VK_SHADER_DECODE_MERGE] = {flp_spv_decode_merge, &flp_spv_decode_merge_size},
        [FLP_VK_SHADER_PREFILL] = {flp_spv_prefill, &flp_spv_prefill_size},
        [FLP_VK_SHADER_PREFILL_MERGE] = {flp_spv_prefill_merge, &flp_spv_prefill_merge_size},
        [FLP_VK_SHADER_KV_APPEND] = {flp_spv_kv_append, &flp_spv_kv_append_size},
        [FLP_VK_SHADER_MERGE_STATES] = {flp_spv_merge_states, &flp_spv_merge_states_size},
    };
    if (!vk->modules[shader]) {
        /* FLP_VULKAN_JIT: the same shader compiled from its GLSL at run time (vk_jit.c) */
        void *jit_code = NULL;
        size_t jit_bytes = 0;
        if (vk->jit_shaders) {
            const flp_status status =
                flp_vk_jit_spirv(vk->ctx, shader, NULL, &jit_code, &jit_bytes);
            if (status != FLP_OK)
                return status;
        }
        VkShaderModuleCreateInfo mi = {
            .sType = VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO,
            .codeSize = jit_code ? jit_bytes : *spirv[shader].size,
            .pCode = jit_code ? jit_code : (const uint32_t *)(const void *)spirv[shader].code,
        };
        VkResult r =
            FLP_VK_ALLOC(VK_ERROR_OUT_OF_HOST_MEMORY,
                         vk->vk.vkCreateShaderModule(vk->device, &mi, NULL, &vk->modules[shader]));
        flp_free(jit_code);
        if (r != VK_SUCCESS) {
            vk->modules[shader] = VK_NULL_HANDLE;
            return flp_vk_fail(vk->ctx, r, "vkCreateShaderModule");
        }
    }
    *out = vk->modules[shader];
    return FLP_OK;
}

VkPipelineLayout flp_vk_pipeline_layout_of(const flp_vk *vk, flp_vk_shader shader) {
    return shader == FLP_VK_SHADER_DECODE_CPU_TEXEL ? vk->texel_pipeline_layout
                                                    : vk->pipeline_layout;
}

/* The module of shader compiled with a variant's program (digest key->variant), compiled on
 * first use. */
static flp_status get_variant_module(flp_vk *vk, const flp_vk_pipeline_key *key,
                                     VkShaderModule *out) {
    for (uint32_t i = 0; i < vk->variant_module_count; i++) {
        const flp_vk_variant_module *m = &vk->variant_modules[i];
        if (m->shader == key->shader && memcmp(m->variant, key->variant, sizeof m->variant) == 0) {
            *out = m->module;
            return FLP_OK;
        }
    }
    if (!key->program)
        return flp_fail(vk->ctx, FLP_ERROR_BACKEND,
                        "Vulkan: a variant's pipeline without its "
                        "program");
    if (vk->variant_module_count == vk->variant_module_capacity) {
        uint32_t capacity = vk->variant_module_capacity ? vk->variant_module_capacity * 2 : 4;
        flp_vk_variant_module *grown = flp_realloc(vk->variant_modules, capacity * sizeof *grown);
        if (!grown)
            return flp_fail(vk->ctx, FLP_ERROR_OUT_OF_MEMORY, "out of host memory");
        vk->variant_modules = grown;
        vk->variant_module_capacity = capacity;
    }
    void *code = NULL;
    size_t bytes = 0;
    flp_status status = flp_vk_jit_spirv(vk->ctx, key->shader, key->program, &code, &bytes);
    if (status != FLP_OK)
        return status;
    VkShaderModuleCreateInfo mi = {
        .sType = VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO,
        .codeSize = bytes,
        .pCode = code,
    };
    VkShaderModule module = VK_NULL_HANDLE;
    VkResult r = FLP_VK_ALLOC(VK_ERROR_OUT_OF_HOST_MEMORY,
                              vk->vk.vkCreateShaderModule(vk->device, &mi, NULL, &module));
    flp_free(code);
    if (r != VK_SUCCESS)
        return flp_vk_fail(vk->ctx, r, "vkCreateShaderModule");
    flp_vk_variant_module *m = &vk->variant_modules[vk->variant_module_count++];
    m->shader = key->shader;
    memcpy(m->variant, key->variant, sizeof m->variant);
    m->module = module;
    *out = module;
    return FLP_OK;
}

void flp_vk_key_set_variant(flp_vk_pipeline_key *key, const flp_variant_program *program) {
    if (!program)
        return;
    memcpy(key->variant, program->digest, sizeof key->variant);
    key->program = program;
}

static bool has_variant(const flp_vk_pipeline_key *key) {
    static const uint8_t none[32];
    return memcmp(key->variant, none, sizeof none) != 0;
}

static bool same_key(const flp_vk_pipeline_key *a, const flp_vk_pipeline_key *b) {
    return a->shader == b->shader && a->spec_count == b->spec_count &&
           a->full_subgroups == b->full_subgroups &&
           memcmp(a->spec, b->spec, a->spec_count * sizeof a->spec[0]) == 0 &&
           memcmp(a->variant, b->variant, sizeof a->variant) == 0;
}

static flp_status create_pipeline(flp_vk *vk, const flp_vk_pipeline_key *key, VkPipeline *out) {
    VkShaderModule module = VK_NULL_HANDLE;
    flp_status st = has_variant(key) ? get_variant_module(vk, key, &module)
                                     : get_module(vk, key->shader, &module);
    if (st != FLP_OK)
        return st;
    VkSpecializationMapEntry entries[FLP_VK_MAX_SPEC];
    for (uint32_t i = 0; i < key->spec_count; i++)
        entries[i] = (VkSpecializationMapEntry){
            .constantID = i,
            .offset = i * (uint32_t)sizeof(uint32_t),
            .size = sizeof(uint32_t),
        };
    VkSpecializationInfo si = {
        .mapEntryCount = key->spec_count,
        .pMapEntries = entries,
        .dataSize = key->spec_count * sizeof(uint32_t),
        .pData = key->spec,
    };
    VkComputePipelineCreateInfo ci = {
        .sType = VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO,
        .stage =
            {
                .sType = VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO,
                .flags = key->full_subgroups
                             ? VK_PIPELINE_SHADER_STAGE_CREATE_REQUIRE_FULL_SUBGROUPS_BIT
                             : 0,
                .stage = VK_SHADER_STAGE_COMPUTE_BIT,
                .module = module,
                .pName = "main",
                .pSpecializationInfo = &si,
            },
        .layout = flp_vk_pipeline_layout_of(vk, key->shader),
    };
    VkResult r = FLP_VK_ALLOC(
        VK_ERROR_OUT_OF_HOST_MEMORY,
        vk->vk.vkCreateComputePipelines(vk->device, VK_NULL_HANDLE, 1, &ci, NULL, out));
    if (r != VK_SUCCESS)
        return flp_vk_fail(vk->ctx, r, "vkCreateComputePipelines");
    return FLP_OK;
}

flp_status flp_vk_pipeline_get(flp_vk *vk, const flp_vk_pipeline_key *key, VkPipeline *out) {
    for (uint32_t i = 0; i < vk->pipeline_count; i++) {
        if (same_key(&vk->pipelines[i].key, key)) {
            *out = vk->pipelines[i].pipeline;
            return FLP_OK;
        }
    }
    if (vk->pipeline_count == vk->pipeline_capacity) {
        uint32_t capacity = vk->pipeline_capacity ? vk->pipeline_capacity * 2 : 8;
        flp_vk_pipeline_entry *grown = flp_realloc(vk->pipelines, capacity * sizeof *grown);
        if (!grown)
            return flp_fail(vk->ctx, FLP_ERROR_OUT_OF_MEMORY, "out of host memory");
        vk->pipelines = grown;
        vk->pipeline_capacity = capacity;
    }
    VkPipeline pipeline;
    flp_status st = create_pipeline(vk, key, &pipeline);
    if (st != FLP_OK)
        return st;
    flp_vk_pipeline_entry *e = &vk->pipelines[vk->pipeline_count++];
    memset(e, 0, sizeof *e);
    e->key = *key;
    e->key.program = NULL; /* the caller's, valid for its call only */
    e->pipeline = pipeline;
    *out = pipeline;
    return FLP_OK;
}
