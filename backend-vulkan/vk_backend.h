/* The Vulkan backend's private state and the functions its files share. One flp_vk per
 * context (ctx->backend); everything Vulkan lives behind it, the core never sees it. */
#ifndef FLP_VK_BACKEND_H
#define FLP_VK_BACKEND_H

#include "core/alloc.h"
#include "core/backend.h"
#include "flashport/flashport_vulkan.h"

#include <volk.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* Command buffers the library's own queue keeps in flight before recycling the oldest. */
#define FLP_VK_SLOTS 8
/* Specialisation constants a pipeline key may hold. */
#define FLP_VK_MAX_SPEC 12

/* The instance-level functions the backend calls, loaded through the context's own
 * vkGetInstanceProcAddr so that volk's global pointers (which a host application may use)
 * are never repointed. */
typedef struct flp_vk_instance_fns {
    PFN_vkDestroyInstance DestroyInstance;
    PFN_vkEnumeratePhysicalDevices EnumeratePhysicalDevices;
    PFN_vkGetPhysicalDeviceProperties GetPhysicalDeviceProperties;
    PFN_vkGetPhysicalDeviceProperties2 GetPhysicalDeviceProperties2;
    PFN_vkGetPhysicalDeviceFeatures2 GetPhysicalDeviceFeatures2;
    PFN_vkGetPhysicalDeviceQueueFamilyProperties GetPhysicalDeviceQueueFamilyProperties;
    PFN_vkGetPhysicalDeviceMemoryProperties GetPhysicalDeviceMemoryProperties;
    PFN_vkGetPhysicalDeviceFormatProperties GetPhysicalDeviceFormatProperties;
    PFN_vkEnumerateDeviceExtensionProperties EnumerateDeviceExtensionProperties;
    PFN_vkCreateDevice CreateDevice;
    PFN_vkGetDeviceProcAddr GetDeviceProcAddr;
    PFN_vkCreateDebugUtilsMessengerEXT CreateDebugUtilsMessengerEXT;   /* NULL without */
    PFN_vkDestroyDebugUtilsMessengerEXT DestroyDebugUtilsMessengerEXT; /* validation */
} flp_vk_instance_fns;

/* A command buffer of the library's own queue: recorded, submitted with its fence. */
typedef struct flp_vk_slot {
    VkCommandBuffer cmd;
    VkFence fence;
    bool submitted; /* fence in use since its last reset */
} flp_vk_slot;

/* A command buffer being recorded: one of the slots, or the caller's (slot = -1). */
typedef struct flp_vk_recording {
    VkCommandBuffer cmd;
    int slot;
} flp_vk_recording;

typedef enum flp_vk_shader {
    FLP_VK_SHADER_DECODE = 0,     /* decode.comp: GPUs */
    FLP_VK_SHADER_DECODE_CPU = 1, /* decode_cpu.comp: CPU devices (lavapipe), K/V by address */
    FLP_VK_SHADER_DECODE_CPU_TEXEL = 2, /* decode_cpu.comp, K/V through texel buffers */
    FLP_VK_SHADER_DECODE_MERGE = 3,
    FLP_VK_SHADER_PREFILL = 4,
    FLP_VK_SHADER_PREFILL_MERGE = 5,
    FLP_VK_SHADER_KV_APPEND = 6,
    FLP_VK_SHADER_MERGE_STATES = 7, /* the public state merges */
    FLP_VK_SHADER_COUNT = 8,
} flp_vk_shader;

typedef struct flp_vk_pipeline_key {
    flp_vk_shader shader;
    bool full_subgroups; /* VK_PIPELINE_SHADER_STAGE_CREATE_REQUIRE_FULL_SUBGROUPS_BIT */
    uint32_t spec_count;
    uint32_t spec[FLP_VK_MAX_SPEC]; /* [spec_count] constant_id i = spec[i] */
    /* A variant's snippets (core/variant_program.h): its digest identifies the module (all
     * zeros: the shader as built), program is what a first use compiles (valid for the call
     * only; NULL in the cached entries). */
    uint8_t variant[32];
    const struct flp_variant_program *program;
} flp_vk_pipeline_key;

/* A shader module compiled with a variant's snippets. */
typedef struct flp_vk_variant_module {
    flp_vk_shader shader;
    uint8_t variant[32]; /* the program's digest */
    VkShaderModule module;
} flp_vk_variant_module;

typedef struct flp_vk_pipeline_entry {
    flp_vk_pipeline_key key;
    VkPipeline pipeline;
} flp_vk_pipeline_entry;

/* What the backend knows about its device beyond ctx->info. */
typedef struct flp_vk_device_facts {
    uint32_t api_version;
    VkPhysicalDeviceLimits limits;
    VkPhysicalDeviceMemoryProperties memory;
    uint32_t subgroup_size;     /* default subgroup size */
    uint32_t min_subgroup_size; /* = subgroup_size without subgroup size control */
    uint32_t max_subgroup_size;
    bool full_subgroups; /* computeFullSubgroups enabled: pipelines may require it */
    bool has_float16;
    uint32_t driver_id; /* VkDriverId */
    /* Loop iterations one shader invocation may run in total, all loops together, before the
     * driver ends them all (0 = no such limit). llvmpipe: 65535 (gallivm's infinite-loop
     * guard, LP_MAX_TGSI_LOOP_ITERATIONS). */
    uint32_t loop_budget;
    /* Decode with decode_cpu.comp (CPU devices; FLP_VULKAN_DECODE_KERNEL=gpu|cpu overrides). */
    bool cpu_decode;
    /* RGBA32UI uniform texel buffers work: decode_cpu.comp may read K/V through them. */
    bool texel_kv;
} flp_vk_device_facts;

/* Push constants of decode_cpu.comp's texel variant. */
typedef struct flp_vk_texel_push {
    uint64_t params;         /* device address of the run's flp_decode_params */
    uint32_t k_base, v_base; /* byte offsets of the K and V tensors in their buffers */
} flp_vk_texel_push;

typedef struct flp_vk {
    flp_context *ctx;

    /* instance and device */
    PFN_vkGetInstanceProcAddr get_instance_proc_addr;
    flp_vk_instance_fns ifn;
    struct VolkDeviceTable vk; /* device functions of this device only */
    bool owns_device;          /* false: the caller's instance/device/queue, never destroyed */
    VkInstance instance;
    VkPhysicalDevice physical_device;
    VkDevice device;
    VkQueue queue;
    uint32_t queue_family;
    flp_vk_device_facts facts;

    /* validation (FLP_VULKAN_VALIDATION=1) */
    VkDebugUtilsMessengerEXT messenger;
    atomic_uint validation_messages;

    /* host <-> device copies through one reused host-visible buffer */
    VkBuffer staging;
    VkDeviceMemory staging_memory;
    void *staging_map;
    size_t staging_size;

    /* the library's own queue, or the caller's command buffer */
    VkCommandPool pool;
    flp_vk_slot slots[FLP_VK_SLOTS];
    uint64_t next_slot; /* round robin: the next slot is always the oldest submitted one */
    VkCommandBuffer user_cmd;

    /* pipelines */
    VkShaderModule modules[FLP_VK_SHADER_COUNT];
    bool jit_shaders; /* FLP_VULKAN_JIT: modules from run-time compiles (vk_jit.c) */
    VkPipelineLayout pipeline_layout; /* push constants: one 64-bit address */
    flp_vk_pipeline_entry *pipelines; /* [pipeline_count] */
    uint32_t pipeline_count, pipeline_capacity;
    /* modules with variants' snippets, kept for the context's life like the pipelines */
    flp_vk_variant_module *variant_modules; /* [variant_module_count] */
    uint32_t variant_module_count, variant_module_capacity;

    /* texel views for decode_cpu.comp (vk_texel.c) */
    VkDescriptorSetLayout texel_set_layout; /* one uniform texel buffer */
    VkPipelineLayout texel_pipeline_layout; /* sets: K's buffer, V's buffer; flp_vk_texel_push */
    VkDescriptorPool *texel_pools;          /* [texel_pool_count] */
    uint32_t texel_pool_count;
    flp_buffer **texel_buffers; /* [texel_buffer_count] buffers with texel usage, by address */
    uint32_t texel_buffer_count, texel_buffer_capacity;
    pthread_mutex_t texel_lock; /* guards texel_buffers (buffers come and go on any thread) */
    bool texel_lock_ready;

    /* flp_kv_append_params of the append being run (vk_kv_append.c) */
    VkBuffer append_params;
    VkDeviceMemory append_params_memory;
    uint64_t append_params_address;

    /* flp_merge_params of the state merge being run (vk_merge.c) */
    VkBuffer merge_params;
    VkDeviceMemory merge_params_memory;
    uint64_t merge_params_address;
} flp_vk;

/* The private part of an flp_buffer (buf->native). */
typedef struct flp_vk_buffer {
    VkBuffer buffer;
    VkDeviceMemory memory;   /* VK_NULL_HANDLE for a wrapped buffer */
    bool texel_usage;        /* created with UNIFORM_TEXEL_BUFFER usage and listed in vk_texel.c */
    VkBufferView texel_view; /* made on first use by the CPU decode kernel */
    VkDescriptorSet texel_set;
    VkDescriptorPool texel_pool; /* texel_set's */
} flp_vk_buffer;

/* vk_backend.c */
extern const flp_backend_ops flp_vk_ops;
/* ctx's backend state, or NULL when ctx is not a Vulkan context. */
flp_vk *flp_vk_from_context(const flp_context *ctx);

/* A Vulkan call that allocates (an object or memory): when the fault-injection seam
 * (core/alloc.h) fails this site, result instead of the call, a result the call itself may
 * return, so the failure takes the call's own error path. */
#define FLP_VK_ALLOC(result, call) (flp_fault_device() ? (result) : (call))

/* vk_error.c: maps a failed VkResult to a status and records "call failed: VK_ERROR_..." */
flp_status flp_vk_fail(flp_context *ctx, VkResult result, const char *call);
const char *flp_vk_result_name(VkResult result);

/* vk_instance_device.c */
flp_status flp_vk_open_own_device(flp_vk *vk, int device_index, bool prefer_gpu);
flp_status flp_vk_open_caller_device(flp_vk *vk, const flp_vulkan_device_desc *desc);
void flp_vk_close_device(flp_vk *vk);

/* vk_device_info.c: fills ctx->info and vk->facts for the chosen device. */
flp_status flp_vk_query_device(flp_vk *vk);

/* vk_memory.c */
flp_status flp_vk_buffer_create(flp_context *ctx, flp_buffer *buf);
void flp_vk_buffer_destroy(flp_context *ctx, flp_buffer *buf);
flp_status flp_vk_buffer_write(flp_context *ctx, flp_buffer *buf, size_t offset, const void *src,
                               size_t size);
flp_status flp_vk_buffer_read(flp_context *ctx, const flp_buffer *buf, size_t offset, void *dst,
                              size_t size);
/* Fills buf->native and buf->device_address for a caller's VkBuffer. */
flp_status flp_vk_buffer_adopt(flp_context *ctx, flp_buffer *buf, VkBuffer buffer);
void flp_vk_staging_destroy(flp_vk *vk);
/* A device-local buffer of the backend's own (storage, transfer destination, by address). */
flp_status flp_vk_small_buffer_create(flp_vk *vk, size_t size, VkBuffer *buffer,
                                      VkDeviceMemory *memory, uint64_t *address);
/* Frees what flp_vk_small_buffer_create made (either may be VK_NULL_HANDLE) and clears both. */
void flp_vk_small_buffer_destroy(flp_vk *vk, VkBuffer *buffer, VkDeviceMemory *memory);

/* vk_submit.c */
flp_status flp_vk_submit_init(flp_vk *vk);
void flp_vk_submit_destroy(flp_vk *vk);
/* Starts recording: into the caller's command buffer when one is set and allow_user_cmd,
 * else into a recycled command buffer of the library's own queue. */
flp_status flp_vk_record_begin(flp_vk *vk, bool allow_user_cmd, flp_vk_recording *rec);
/* Ends and submits an own recording (blocking when wait); nothing for the caller's. */
flp_status flp_vk_record_submit(flp_vk *vk, flp_vk_recording *rec, bool wait);
/* Waits for every submission of the library's own queue. */
flp_status flp_vk_wait_submitted(flp_vk *vk);
/* The same for a context whose backend is open (ctx->backend set). */
flp_status flp_vk_synchronize(flp_context *ctx);
/* A global memory barrier. */
void flp_vk_barrier(flp_vk *vk, VkCommandBuffer cmd, VkPipelineStageFlags src_stage,
                    VkAccessFlags src_access, VkPipelineStageFlags dst_stage,
                    VkAccessFlags dst_access);
/* Records an update of a run's parameters (vkCmdUpdateBuffer of size bytes at offset of
 * buffer) between the barriers that order it after earlier compute work and before this run's
 * shaders. */
void flp_vk_record_params_update(flp_vk *vk, VkCommandBuffer cmd, VkBuffer buffer,
                                 VkDeviceSize offset, VkDeviceSize size, const void *data);
/* Starts recording an attention run (flp_vk_record_begin, the caller's command buffer allowed)
 * with the update of its parameter block (size bytes at params) in the plan's params slot;
 * *params_address: the slot's device address, for the shaders' push constant. */
flp_status flp_vk_record_run_begin(flp_vk *vk, const flp_params_slot *slot, const void *params,
                                   size_t size, flp_vk_recording *rec, uint64_t *params_address);
/* Records a merge of split partial states after the attention dispatch that wrote them: grid
 * workgroups as an x * y grid (x within maxComputeWorkGroupCount[0]); params_address, unless
 * NULL, is pushed again after binding merge. */
void flp_vk_record_merge(flp_vk *vk, VkCommandBuffer cmd, VkPipeline merge, uint32_t grid,
                         const uint64_t *params_address);
/* Records the barrier that makes a run's outputs visible to whatever comes next, then submits
 * (flp_vk_record_submit without waiting). */
flp_status flp_vk_record_finish(flp_vk *vk, flp_vk_recording *rec);

/* vk_pipelines.c */
flp_status flp_vk_pipelines_init(flp_vk *vk);
void flp_vk_pipelines_destroy(flp_vk *vk);
/* The pipeline layout a shader's pipelines use. */
VkPipelineLayout flp_vk_pipeline_layout_of(const flp_vk *vk, flp_vk_shader shader);
/* Sets key's variant to program's (NULL: none). */
void flp_vk_key_set_variant(flp_vk_pipeline_key *key, const struct flp_variant_program *program);
/* Records the update of a run's user parameter values (flp_user_param[FLP_SNIPPET_MAX_PARAMS])
 * into the plan's user slot, ordered like the params update. */
void flp_vk_record_user_params(flp_vk *vk, VkCommandBuffer cmd, const flp_params_slot *slot,
                               const flp_user_param *user);
/* The pipeline of key, created (and cached) on first use; a key with a variant compiles the
 * shader with key->program first (vk_jit.c; FLP_ERROR_UNSUPPORTED without glslang). */
flp_status flp_vk_pipeline_get(flp_vk *vk, const flp_vk_pipeline_key *key, VkPipeline *out);

/* vk_texel.c: texel buffer views of the library's buffers for decode_cpu.comp */
bool flp_vk_texel_supported(const flp_vk *vk);
flp_status flp_vk_texel_init(flp_vk *vk);
void flp_vk_texel_destroy(flp_vk *vk);
flp_status flp_vk_texel_register(flp_vk *vk, flp_buffer *buf);
void flp_vk_texel_unregister(flp_vk *vk, flp_buffer *buf);
/* The descriptor set of the buffer holding address and the address's byte offset in it; set is
 * VK_NULL_HANDLE (and FLP_OK) when no texel view can serve it (a wrapped buffer, ...). */
flp_status flp_vk_texel_source(flp_vk *vk, uint64_t address, VkDescriptorSet *set,
                               uint32_t *offset);

/* vk_decode_cpu.c: decode_cpu.comp's specialisation and the loop budget of its invocations */
typedef struct flp_vk_cpu_shape {
    uint32_t kv_bytes; /* 2, or 1 for fp8 */
    uint32_t lanes; /* invocations per workgroup (one subgroup); lane l owns chunks l + i*lanes */
    uint32_t rows;  /* query rows per pass, in registers */
    uint32_t step;  /* keys per key-loop iteration */
} flp_vk_cpu_shape;
int32_t flp_vk_cpu_decode_grid_size(const flp_context *ctx);
flp_vk_cpu_shape flp_vk_cpu_shape_for(const flp_vk *vk, uint32_t head_dim, int32_t kv_dtype,
                                      uint32_t rows_needed);
/* The pipelines (FEATURES, DEFER specialisation constants) that decode a plan with these
 * flags: 1, or 2 in a caller's command buffer (a cheap and a full one, exactly one of which
 * works after any re-plan). Returns the count. */
int flp_vk_cpu_pipelines(const flp_vk *vk, uint32_t flags, uint32_t features[2], uint32_t defer[2]);
/* FLP_ERROR_UNSUPPORTED when a workgroup of the plan would run more loop iterations than the
 * driver allows one invocation (facts.loop_budget; llvmpipe would silently stop early). */
flp_status flp_vk_cpu_check_budget(flp_vk *vk, const flp_decode_launch *launch,
                                   const flp_vk_cpu_shape *s);

/* vk_launch_check.c: the device limits decode and prefill launches share; what names the kernel
 * in messages ("decode", "prefill") */
/* The merge grid within what flp_vk_record_merge can dispatch (an x * y grid). */
flp_status flp_vk_check_merge_grid(flp_context *ctx, const char *what, int32_t merge_grid);
/* FLP_ERROR_UNSUPPORTED when workgroup cta (of ctas) of a plan would run more loop iterations
 * than the driver allows one invocation (facts.loop_budget, 0 = no limit; llvmpipe would
 * silently stop early). */
flp_status flp_vk_check_workgroup_loops(flp_vk *vk, const char *what, int32_t cta, int32_t ctas,
                                        uint64_t iterations);
/* grid within 1..maxComputeWorkGroupCount[0] (the attention kernels' grids are 1-D). */
int32_t flp_vk_clamp_grid(const flp_vk *vk, int64_t grid);

/* vk_decode.c */
int32_t flp_vk_decode_grid_size(flp_context *ctx, int32_t head_dim);
flp_status flp_vk_decode_run(flp_context *ctx, const flp_decode_launch *launch);

/* vk_prefill.c */
int32_t flp_vk_prefill_grid_size(flp_context *ctx, int32_t head_dim);
flp_status flp_vk_prefill_run(flp_context *ctx, const flp_prefill_launch *launch);
/* Whether runs go to a caller's command buffer (flp_vulkan_set_command_buffer). */
bool flp_vk_records_for_caller(const flp_context *ctx);

/* vk_kv_append.c */
flp_status flp_vk_kv_append_init(flp_vk *vk);
void flp_vk_kv_append_destroy(flp_vk *vk);
flp_status flp_vk_kv_append_run(flp_context *ctx, const flp_kv_append_params *params);

/* vk_merge.c */
flp_status flp_vk_merge_init(flp_vk *vk);
void flp_vk_merge_destroy(flp_vk *vk);
flp_status flp_vk_merge_run(flp_context *ctx, const flp_merge_params *params);

/* Whether the switch in environment variable name is on: set, not empty and not "0"
 * (FLP_VULKAN_VALIDATION, FLP_VULKAN_JIT). */
static inline bool flp_vk_env_on(const char *name) {
    const char *env = getenv(name);
    return env && env[0] && strcmp(env, "0") != 0;
}

/* Powers of two around x (x >= 1): the largest <= x and the smallest >= x. */
static inline uint32_t pow2_floor(uint32_t x) {
    uint32_t p = 1;
    while (p * 2 <= x)
        p *= 2;
    return p;
}

static inline uint32_t pow2_ceil(uint32_t x) {
    uint32_t p = 1;
    while (p < x)
        p *= 2;
    return p;
}

#endif /* FLP_VK_BACKEND_H */
