/* Kernel modules: the embedded fatbins (one per kernel unit, built for the architectures of
 * -Dnvcc_archs, FLP_CUDA_BUILT_ARCHS; sm_8x devices run an sm_80 image), each loaded when a
 * configuration first needs it, or, for devices they have no image for (or with
 * FLP_CUDA_FORCE_NVRTC=1), the embedded source compiled by NVRTC one configuration at a time.
 * Functions are fetched and configured once per context. */
#include "backend-cuda/cu_backend.h"
#include "backend-cuda/cu_embedded.h"
#include "backend-cuda/cu_nvrtc.h"
#include "backend-cuda/kernels/decode_config.h"
#include "backend-cuda/kernels/prefill_config.h"
#include "backend-cuda/kernels/prefill_sm90_config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifndef FLP_CUDA_BUILT_ARCHS /* "sm_80, sm_90a": backend-cuda/meson.build defines it */
#error FLP_CUDA_BUILT_ARCHS is not defined
#endif

static bool force_nvrtc(void) {
    const char *v = getenv("FLP_CUDA_FORCE_NVRTC");
    return v && strcmp(v, "1") == 0;
}

/* The name of the unit (backend-cuda/meson.build, kernels/units/<name>.cu) with family's
 * kernels for head_dim. */
static void unit_name(flp_cu_unit_family family, int32_t head_dim, char *buf, size_t size) {
    if (family == FLP_CU_UNIT_SHARED)
        snprintf(buf, size, "shared_kernels");
    else
        snprintf(buf, size, "%s_d%d", family == FLP_CU_UNIT_DECODE ? "decode" : "prefill",
                 (int)head_dim);
}

const flp_embedded_file *flp_cu_fatbin_of(flp_cu_unit_family family, int32_t head_dim) {
    char name[32];
    unit_name(family, head_dim, name, sizeof name);
    for (unsigned i = 0; i < flp_cuda_fatbins_count; i++)
        if (strcmp(flp_cuda_fatbins[i].name, name) == 0)
            return &flp_cuda_fatbins[i];
    return NULL;
}

/* The modules the functions of one configuration come from, by unit family: its head dim's
 * decode and prefill fatbins and the shared one, or one NVRTC module for all three. */
typedef struct config_modules {
    CUmodule of[FLP_CU_NUM_UNIT_FAMILIES];
} config_modules;

/* Loads the fatbin of family's kernels for head_dim on first use into *out. The first fatbin the
 * context loads decides between the fatbins and NVRTC (all are built for the same
 * architectures): a device they have no image for switches the context to NVRTC (*out NULL). */
static flp_status load_fatbin(flp_context *ctx, flp_cu_state *st, flp_cu_unit_family family,
                              int32_t head_dim, CUmodule *out) {
    *out = NULL;
    const flp_embedded_file *fatbin = flp_cu_fatbin_of(family, head_dim);
    if (!fatbin) {
        char name[32];
        unit_name(family, head_dim, name, sizeof name);
        return flp_fail(ctx, FLP_ERROR_UNSUPPORTED, "CUDA: the library embeds no fatbin %s", name);
    }
    if (!st->fatbin_modules) {
        st->fatbin_modules = flp_calloc(flp_cuda_fatbins_count, sizeof *st->fatbin_modules);
        if (!st->fatbin_modules)
            return flp_fail(ctx, FLP_ERROR_OUT_OF_MEMORY, "CUDA: out of host memory");
    }
    CUmodule *module = &st->fatbin_modules[fatbin - flp_cuda_fatbins];
    if (!*module) {
        CUresult r = FLP_CU_ALLOC(st->cu->cuModuleLoadData(module, fatbin->data));
        if (!st->fatbin_checked &&
            (r == CUDA_ERROR_NO_BINARY_FOR_GPU || r == CUDA_ERROR_INVALID_IMAGE ||
             r == CUDA_ERROR_UNSUPPORTED_PTX_VERSION)) {
            /* No image for this device, or images this (older) driver cannot read. */
            char text[256];
            flp_log(ctx, FLP_LOG_INFO,
                    "CUDA: the built-in kernels (" FLP_CUDA_BUILT_ARCHS ") do not load on sm_%d "
                    "(%s): compiling them with NVRTC",
                    st->cc, flp_cu_result_text(st->cu, r, text, sizeof text));
            *module = NULL;
            st->use_nvrtc = true;
            st->fatbin_checked = true;
            return FLP_OK;
        }
        if (r != CUDA_SUCCESS) {
            *module = NULL;
            return flp_cu_fail(ctx, st->cu, r,
                               "CUDA: cuModuleLoadData of the built-in %s kernels (%lu bytes "
                               "fatbin)",
                               fatbin->name, fatbin->size);
        }
        st->fatbin_checked = true;
    }
    *out = *module;
    return FLP_OK;
}

/* The fatbin modules of head_dim's configurations, or none (and st->use_nvrtc) when the context
 * uses NVRTC: FLP_CUDA_FORCE_NVRTC=1, or no image for the device. */
static flp_status fatbin_modules_of(flp_context *ctx, flp_cu_state *st, int32_t head_dim,
                                    config_modules *modules) {
    memset(modules, 0, sizeof *modules);
    if (!st->fatbin_checked && force_nvrtc()) {
        flp_log(ctx, FLP_LOG_INFO, "CUDA: FLP_CUDA_FORCE_NVRTC=1: kernels come from NVRTC");
        st->use_nvrtc = true;
        st->fatbin_checked = true;
    }
    for (int family = 0; family < FLP_CU_NUM_UNIT_FAMILIES && !st->use_nvrtc; family++) {
        flp_status status =
            load_fatbin(ctx, st, (flp_cu_unit_family)family, head_dim, &modules->of[family]);
        if (status != FLP_OK)
            return status;
    }
    return FLP_OK;
}

/* NVRTC-compiles and loads the module of one configuration. */
static flp_status compile_config(flp_context *ctx, flp_cu_state *st, int index, CUmodule *out) {
    int32_t q, kv, d;
    flp_cu_config_of(index, &q, &kv, &d);
    char message[FLP_ERROR_MESSAGE_SIZE];
    flp_cuda_image image;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    flp_status status = flp_cuda_nvrtc_compile_for_arch(st->cc, (flp_dtype)q, (flp_dtype)kv, d,
                                                        &image, message, sizeof message);
    if (status != FLP_OK)
        return flp_fail(ctx, status,
                        "CUDA: NVRTC build of the %s/%s head_dim %d kernels for "
                        "sm_%d: %s",
                        flp_dtype_name((flp_dtype)q), flp_dtype_name((flp_dtype)kv), (int)d, st->cc,
                        message);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    CUresult r = FLP_CU_ALLOC(st->cu->cuModuleLoadData(out, image.data));
    flp_log(ctx, FLP_LOG_INFO,
            "CUDA: NVRTC built the %s/%s head_dim %d kernels for %s (%s) in %.1f s",
            flp_dtype_name((flp_dtype)q), flp_dtype_name((flp_dtype)kv), (int)d, image.target,
            image.is_cubin ? "cubin" : "PTX for the driver to compile",
            (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec));
    char target[sizeof image.target];
    memcpy(target, image.target, sizeof target);
    flp_cuda_image_free(&image);
    if (r != CUDA_SUCCESS) {
        *out = NULL;
        return flp_cu_fail(ctx, st->cu, r, "CUDA: cuModuleLoadData of the NVRTC %s image", target);
    }
    return FLP_OK;
}

static flp_status get_function(flp_context *ctx, flp_cu_state *st, CUmodule module,
                               const char *name, CUfunction *out) {
    CUresult r = st->cu->cuModuleGetFunction(out, module, name);
    if (r != CUDA_SUCCESS)
        return flp_cu_fail(ctx, st->cu, r, "CUDA: cuModuleGetFunction(%s)", name);
    return FLP_OK;
}

/* Lets kernel fn (called name in messages) use smem bytes of dynamic shared memory and returns
 * how many of its blocks of threads fit on one SM; fails when none does. */
static flp_status configure_kernel(flp_context *ctx, const flp_cu_driver *cu, CUfunction fn,
                                   const char *name, int threads, unsigned smem, int *blocks) {
    if (smem > ctx->info.shared_memory_per_group)
        return flp_fail(ctx, FLP_ERROR_UNSUPPORTED,
                        "CUDA: %s needs %u bytes of shared memory, the device allows %zu", name,
                        smem, ctx->info.shared_memory_per_group);
    CUresult r =
        cu->cuFuncSetAttribute(fn, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, (int)smem);
    if (r != CUDA_SUCCESS)
        return flp_cu_fail(ctx, cu, r,
                           "CUDA: cuFuncSetAttribute(%s, MAX_DYNAMIC_SHARED_SIZE_BYTES, %u)", name,
                           smem);
    *blocks = 0;
    r = cu->cuOccupancyMaxActiveBlocksPerMultiprocessor(blocks, fn, threads, smem);
    if (r != CUDA_SUCCESS)
        return flp_cu_fail(ctx, cu, r, "CUDA: cuOccupancyMaxActiveBlocksPerMultiprocessor(%s)",
                           name);
    if (*blocks < 1)
        return flp_fail(ctx, FLP_ERROR_UNSUPPORTED,
                        "CUDA: %s cannot be resident on this device (%d threads, %u bytes of "
                        "shared memory)",
                        name, threads, smem);
    return FLP_OK;
}

/* The sm_90a prefill kernel of a configuration, when it applies (flp_cu_config.prefill90):
 * the module says whether its image holds the kernel's body by a global it has only then. */
static flp_status setup_prefill90(flp_context *ctx, flp_cu_state *st, int32_t q, int32_t kv,
                                  int32_t d, CUmodule module, flp_cu_config *cfg) {
    cfg->prefill90 = NULL;
    const char *why_not = flp_cu_prefill90_unwanted(st, q, kv, d);
    if (why_not) {
        flp_log(ctx, FLP_LOG_DEBUG, "CUDA: %s/%s head_dim %d prefill on the sm_80 kernels: %s",
                flp_dtype_name((flp_dtype)q), flp_dtype_name((flp_dtype)kv), (int)d, why_not);
        return FLP_OK;
    }
    char name[64];
    snprintf(name, sizeof name, "flp_prefill90_present_d%d", (int)d);
    CUdeviceptr present = 0;
    size_t present_size = 0;
    CUresult r = st->cu->cuModuleGetGlobal(&present, &present_size, module, name);
    if (r != CUDA_SUCCESS) { /* an image for another architecture: the sm_80 kernels serve */
        char text[128];
        flp_log(ctx, FLP_LOG_INFO,
                "CUDA: head_dim %d prefill on the sm_80 kernels: the loaded image has no "
                "sm_90a kernel (%s)",
                (int)d, flp_cu_result_text(st->cu, r, text, sizeof text));
        return FLP_OK;
    }
    flp_cu_prefill90_kernel_name(q, kv, d, name, sizeof name);
    flp_status status = get_function(ctx, st, module, name, &cfg->prefill90);
    if (status != FLP_OK)
        return status;
    const unsigned smem = flp_cu_prefill90_smem_bytes(kv, d);
    if (smem > ctx->info.shared_memory_per_group) { /* the sm_80 kernels need less */
        flp_log(ctx, FLP_LOG_INFO,
                "CUDA: %s/%s head_dim %d prefill on the sm_80 kernels: the sm_90a kernel needs %u "
                "bytes of shared memory, the device allows %zu",
                flp_dtype_name((flp_dtype)q), flp_dtype_name((flp_dtype)kv), (int)d, smem,
                ctx->info.shared_memory_per_group);
        return FLP_OK;
    }
    int blocks = 0;
    status = configure_kernel(ctx, st->cu, cfg->prefill90, name, FLP_CU_PREFILL90_THREADS, smem,
                              &blocks);
    if (status != FLP_OK) {
        cfg->prefill90 = NULL;
        return status;
    }
    cfg->prefill90_smem = smem;
    cfg->prefill90_every_tile = flp_cu_prefill90_every_tile();
    flp_log(ctx, FLP_LOG_INFO, "CUDA: %s/%s head_dim %d prefill on the sm_90a kernel (%s)",
            flp_dtype_name((flp_dtype)q), flp_dtype_name((flp_dtype)kv), (int)d,
            cfg->prefill90_every_tile ? "every query tile" : "64- and 128-row query tiles");
    return FLP_OK;
}

/* Fetches the functions of a configuration from its modules, raises their shared-memory limit
 * and measures their occupancy. */
static flp_status setup_config(flp_context *ctx, flp_cu_state *st, int index,
                               const config_modules *modules, flp_cu_config *cfg) {
    int32_t q, kv, d;
    flp_cu_config_of(index, &q, &kv, &d);
    const flp_cu_driver *cu = st->cu;
    char name[64];
    flp_cu_kernel_name(q, kv, d, 0, name, sizeof name);
    flp_status status = get_function(ctx, st, modules->of[FLP_CU_UNIT_SHARED], name, &cfg->merge);
    if (status != FLP_OK)
        return status;
    int max_blocks = 0;
    for (int i = 0; i < FLP_CU_DECODE_NUM_KERNELS; i++) {
        flp_cu_decode_kernel_name(q, kv, d, i, name, sizeof name);
        status = get_function(ctx, st, modules->of[FLP_CU_UNIT_DECODE], name, &cfg->decode[i]);
        if (status != FLP_OK)
            return status;
        const unsigned smem = flp_cu_decode_smem_bytes(kv, d, i);
        int blocks = 0;
        status =
            configure_kernel(ctx, cu, cfg->decode[i], name, FLP_CU_DECODE_THREADS, smem, &blocks);
        if (status != FLP_OK)
            return status;
        cfg->smem_bytes[i] = smem;
        max_blocks = i == 0 || blocks < max_blocks ? blocks : max_blocks;
    }
    cfg->max_blocks = max_blocks;

    /* Prefill: three tile kernels, their merge, the KV append. */
    flp_cu_prefill_kernel_name(q, kv, d, 0, name, sizeof name);
    status = get_function(ctx, st, modules->of[FLP_CU_UNIT_SHARED], name, &cfg->prefill_merge);
    if (status == FLP_OK)
        status = get_function(ctx, st, modules->of[FLP_CU_UNIT_SHARED], "flp_kv_append",
                              &cfg->kv_append);
    if (status == FLP_OK)
        status = get_function(ctx, st, modules->of[FLP_CU_UNIT_SHARED], "flp_merge_states",
                              &cfg->state_merge);
    if (status != FLP_OK)
        return status;
    for (int i = 0; i < FLP_CU_PREFILL_NUM_TILES; i++) {
        const int tile = FLP_CU_PREFILL_TILE(i);
        flp_cu_prefill_kernel_name(q, kv, d, tile, name, sizeof name);
        status = get_function(ctx, st, modules->of[FLP_CU_UNIT_PREFILL], name, &cfg->prefill[i]);
        if (status != FLP_OK)
            return status;
        const unsigned smem = flp_cu_prefill_smem_bytes(q, kv, d, tile);
        const int threads = FLP_CU_PREFILL_THREADS((int)d, tile);
        int blocks = 0;
        status = configure_kernel(ctx, cu, cfg->prefill[i], name, threads, smem, &blocks);
        if (status != FLP_OK)
            return status;
        cfg->prefill_smem[i] = smem;
        if (tile == 128)
            cfg->prefill_max_blocks = blocks;
    }
    return setup_prefill90(ctx, st, q, kv, d, modules->of[FLP_CU_UNIT_PREFILL], cfg);
}

flp_status flp_cu_config_get(flp_context *ctx, int index, const flp_cu_config **out) {
    flp_cu_state *st = flp_cu_state_of(ctx);
    flp_cu_config *cfg = &st->configs[index];
    if (cfg->ready) {
        *out = cfg;
        return FLP_OK;
    }
    int32_t q, kv, d;
    flp_cu_config_of(index, &q, &kv, &d);
    config_modules modules;
    flp_status status = fatbin_modules_of(ctx, st, d, &modules);
    if (status != FLP_OK)
        return status;
    CUmodule nvrtc_module = NULL;
    if (st->use_nvrtc) {
        status = compile_config(ctx, st, index, &nvrtc_module);
        if (status != FLP_OK)
            return status;
        for (int family = 0; family < FLP_CU_NUM_UNIT_FAMILIES; family++)
            modules.of[family] = nvrtc_module;
    }
    flp_cu_config fresh;
    memset(&fresh, 0, sizeof fresh);
    status = setup_config(ctx, st, index, &modules, &fresh);
    if (status != FLP_OK) {
        if (nvrtc_module)
            st->cu->cuModuleUnload(nvrtc_module);
        return status;
    }
    fresh.nvrtc_module = nvrtc_module;
    fresh.ready = true;
    *cfg = fresh;
    *out = cfg;
    return FLP_OK;
}

void flp_cu_modules_release(flp_context *ctx) {
    flp_cu_state *st = flp_cu_state_of(ctx);
    for (int i = 0; i < FLP_CU_NUM_CONFIGS; i++) {
        if (st->configs[i].nvrtc_module)
            st->cu->cuModuleUnload(st->configs[i].nvrtc_module);
        memset(&st->configs[i], 0, sizeof st->configs[i]);
    }
    if (st->fatbin_modules) {
        for (unsigned i = 0; i < flp_cuda_fatbins_count; i++)
            if (st->fatbin_modules[i])
                st->cu->cuModuleUnload(st->fatbin_modules[i]);
        flp_free(st->fatbin_modules);
        st->fatbin_modules = NULL;
    }
    st->fatbin_checked = false;
    st->use_nvrtc = false;
}

flp_status flp_cu_enter_config(flp_context *ctx, const char *what, int index,
                               const flp_cu_config **out) {
    flp_status status = flp_cu_enter(ctx, what);
    if (status != FLP_OK)
        return status;
    status = flp_cu_config_get(ctx, index, out);
    if (status != FLP_OK)
        flp_cu_leave(ctx);
    return status;
}

int32_t flp_cu_resident_grid(flp_context *ctx, const char *what, int32_t head_dim, bool prefill) {
    int index = flp_cu_config_index(FLP_CU_GRID_Q, FLP_CU_GRID_KV, head_dim);
    if (index < 0)
        return flp_fail(ctx, FLP_ERROR_UNSUPPORTED, "%s: head_dim %d has no kernel (64, 128, 256)",
                        what, (int)head_dim);
    char label[64];
    snprintf(label, sizeof label, "%s grid", what);
    const flp_cu_config *cfg = NULL;
    flp_status status = flp_cu_enter_config(ctx, label, index, &cfg);
    if (status != FLP_OK)
        return status;
    flp_cu_leave(ctx);
    /* Decode: every block resident at once, the plan balances work over exactly these blocks.
     * Prefill: persistent blocks, all resident at once (SMs x resident tile-128 blocks). */
    const int per_sm = prefill ? cfg->prefill_max_blocks : cfg->max_blocks;
    return (int32_t)flp_cu_state_of(ctx)->sm_count * (int32_t)per_sm;
}

flp_status flp_cu_enter_launch(flp_context *ctx, const char *fn, int32_t q_dtype, int32_t kv_dtype,
                               int32_t head_dim, const flp_cu_config **out) {
    int index = flp_cu_config_index(q_dtype, kv_dtype, head_dim);
    /* the core's checks admit only dtypes and head dims that have kernels */
    if (index < 0)
        return flp_fail(ctx, FLP_ERROR_BACKEND, "%s: no kernel for a validated launch", fn);
    /* the first run of a configuration loads (or NVRTC-builds) its kernels */
    return flp_cu_enter_config(ctx, fn, index, out);
}
