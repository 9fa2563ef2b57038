/* The Vulkan backend's run-time shader compiles: embedded GLSL -> glslang -> SPIR-V, through the
 * compiled-kernel cache. The key is every input of the compile: the text (with the shader's
 * definitions spliced in after #version), glslang's version, the target environment and the
 * message flags. */
#include "vk_jit.h"
#include "vk_shaders.h"
#include "core/alloc.h"
#include "core/kernel_cache.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef FLP_HAVE_GLSLANG
#include <glslang/Include/glslang_c_interface.h>
#include <glslang/Public/resource_limits_c.h>
#include <glslang/build_info.h>

#include <pthread.h>
#endif

const char *flp_vk_shader_name(flp_vk_shader shader) {
    static const char *const names[FLP_VK_SHADER_COUNT] = {
        [FLP_VK_SHADER_DECODE] = "decode",
        [FLP_VK_SHADER_DECODE_CPU] = "decode_cpu",
        [FLP_VK_SHADER_DECODE_CPU_TEXEL] = "decode_cpu_texel",
        [FLP_VK_SHADER_DECODE_MERGE] = "decode_merge",
        [FLP_VK_SHADER_PREFILL] = "prefill",
        [FLP_VK_SHADER_PREFILL_MERGE] = "prefill_merge",
        [FLP_VK_SHADER_KV_APPEND] = "kv_append",
        [FLP_VK_SHADER_MERGE_STATES] = "merge_states",
    };
    return (unsigned)shader < FLP_VK_SHADER_COUNT ? names[shader] : "unknown shader";
}

bool flp_vk_jit_requested(void) {
    return flp_vk_env_on("FLP_VULKAN_JIT");
}

#ifndef FLP_HAVE_GLSLANG

bool flp_vk_jit_available(void) {
    return false;
}

flp_status flp_vk_jit_spirv(flp_context *ctx, flp_vk_shader shader,
                            const flp_variant_program *program, void **code, size_t *bytes) {
    (void)shader;
    (void)program;
    *code = NULL;
    *bytes = 0;
    return flp_fail(ctx, FLP_ERROR_UNSUPPORTED,
                    "Vulkan: this library was built without glslang (glslang-dev): no shader "
                    "can be compiled at run time");
}

#else

bool flp_vk_jit_available(void) {
    return true;
}

/* Each shader's GLSL and the definitions its ahead-of-time build gives glslangValidator
 * (shaders/meson.build). */
static const struct {
    const unsigned char *text;
    const unsigned long *size;
    const char *defines; /* lines spliced in after #version */
} SOURCES[FLP_VK_SHADER_COUNT] = {
    [FLP_VK_SHADER_DECODE] = {flp_glsl_decode, &flp_glsl_decode_size, ""},
    [FLP_VK_SHADER_DECODE_CPU] = {flp_glsl_decode_cpu, &flp_glsl_decode_cpu_size, ""},
    [FLP_VK_SHADER_DECODE_CPU_TEXEL] = {flp_glsl_decode_cpu, &flp_glsl_decode_cpu_size,
                                        "#define FLP_TEXEL_KV 1\n"},
    [FLP_VK_SHADER_DECODE_MERGE] = {flp_glsl_decode_merge, &flp_glsl_decode_merge_size, ""},
    [FLP_VK_SHADER_PREFILL] = {flp_glsl_prefill, &flp_glsl_prefill_size, ""},
    [FLP_VK_SHADER_PREFILL_MERGE] = {flp_glsl_prefill_merge, &flp_glsl_prefill_merge_size, ""},
    [FLP_VK_SHADER_KV_APPEND] = {flp_glsl_kv_append, &flp_glsl_kv_append_size, ""},
    [FLP_VK_SHADER_MERGE_STATES] = {flp_glsl_merge_states, &flp_glsl_merge_states_size, ""},
};

/* What every compile asks of glslang: Vulkan 1.2 semantics, SPIR-V 1.5. */
#define JIT_MESSAGES (GLSLANG_MSG_SPV_RULES_BIT | GLSLANG_MSG_VULKAN_RULES_BIT)
#define JIT_TARGET "vulkan1.2 spirv1.5 glsl450 compute"

/* glslang's process-wide state: initialised once, kept for the process's life (its finalize
 * is not safe while another library in the process may still use glslang). */
static pthread_once_t glslang_once = PTHREAD_ONCE_INIT;
static int glslang_ready;

static void init_glslang(void) {
    glslang_ready = glslang_initialize_process();
}

/* The line of shaders/variant_hooks.glsl that a variant's program replaces. */
#define PROGRAM_MARKER "// @flp-variant-program@"

/* Where text[size] holds the marker line: its offset, or size when it has none. */
static size_t marker_at(const char *text, size_t size) {
    const size_t n = strlen(PROGRAM_MARKER);
    for (size_t at = 0; at + n <= size;) {
        if (memcmp(text + at, PROGRAM_MARKER, n) == 0)
            return at;
        const char *next = memchr(text + at, '\n', size - at);
        if (!next)
            break;
        at = (size_t)(next - text) + 1;
    }
    return size;
}

/* The source (flp_malloc'd): text with defines spliced in after its #version line and, given a
 * program, the program in place of the marker line (*no_marker when text has none). */
static char *source_of(const char *text, size_t size, const char *defines,
                       const flp_variant_program *program, bool *no_marker) {
    const char *line_end = memchr(text, '\n', size);
    const size_t head = line_end ? (size_t)(line_end - text) + 1 : size;
    size_t marker = size, marker_end = size;
    *no_marker = false;
    if (program) {
        marker = marker_at(text, size);
        if (marker == size) {
            *no_marker = true;
            return NULL;
        }
        const char *end = memchr(text + marker, '\n', size - marker);
        marker_end = end ? (size_t)(end - text) : size; /* the line break stays */
    }
    const size_t n = strlen(defines);
    const size_t p = program ? strlen(program->text) : 0;
    char *source = flp_malloc(size + n + p + 1);
    if (!source)
        return NULL;
    char *at = source;
    memcpy(at, text, head);
    at += head;
    memcpy(at, defines, n);
    at += n;
    memcpy(at, text + head, marker - head);
    at += marker - head;
    if (program) {
        memcpy(at, program->text, p);
        at += p;
        memcpy(at, text + marker_end, size - marker_end);
        at += size - marker_end;
    }
    *at = '\0';
    return source;
}

/* Whether code[bytes] can be a SPIR-V module: whole words, the magic number first. */
static bool is_spirv(const void *code, size_t bytes) {
    const uint32_t magic = 0x07230203u;
    return bytes >= 20 && bytes % 4 == 0 && memcmp(code, &magic, sizeof magic) == 0;
}

static double seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* glslang on source: FLP_OK with the SPIR-V in *code, *bytes, or the failure on ctx. */
static flp_status compile(flp_context *ctx, const char *name, const char *source, void **code,
                          size_t *bytes) {
    pthread_once(&glslang_once, init_glslang);
    if (!glslang_ready)
        return flp_fail(ctx, FLP_ERROR_BACKEND, "Vulkan: glslang_initialize_process failed");
    if (flp_fault_hit(FLP_FAULT_HOST))
        return flp_fail(ctx, FLP_ERROR_OUT_OF_MEMORY, "Vulkan: out of host memory compiling %s",
                        name);
    const glslang_input_t input = {
        .language = GLSLANG_SOURCE_GLSL,
        .stage = GLSLANG_STAGE_COMPUTE,
        .client = GLSLANG_CLIENT_VULKAN,
        .client_version = GLSLANG_TARGET_VULKAN_1_2,
        .target_language = GLSLANG_TARGET_SPV,
        .target_language_version = GLSLANG_TARGET_SPV_1_5,
        .code = source,
        .default_version = 450,
        .default_profile = GLSLANG_NO_PROFILE,
        .messages = GLSLANG_MSG_DEFAULT_BIT | JIT_MESSAGES,
        .resource = glslang_default_resource(),
    };
    glslang_shader_t *shader = glslang_shader_create(&input);
    glslang_program_t *program = shader ? glslang_program_create() : NULL;
    if (!shader || !program) {
        if (shader)
            glslang_shader_delete(shader);
        return flp_fail(ctx, FLP_ERROR_OUT_OF_MEMORY, "Vulkan: glslang could not start %s", name);
    }
    flp_status status = FLP_OK;
    if (!glslang_shader_preprocess(shader, &input) || !glslang_shader_parse(shader, &input)) {
        status = flp_fail(ctx, FLP_ERROR_COMPILE, "Vulkan: glslang refused %s:\n%s%s", name,
                          glslang_shader_get_info_log(shader),
                          glslang_shader_get_info_debug_log(shader));
    } else {
        glslang_program_add_shader(program, shader);
        if (!glslang_program_link(program, JIT_MESSAGES)) {
            status = flp_fail(ctx, FLP_ERROR_COMPILE, "Vulkan: glslang could not link %s:\n%s",
                              name, glslang_program_get_info_log(program));
        } else {
            glslang_program_SPIRV_generate(program, GLSLANG_STAGE_COMPUTE);
            const size_t words = glslang_program_SPIRV_get_size(program);
            *code = words ? flp_malloc(words * sizeof(unsigned int)) : NULL;
            if (!*code) {
                status = flp_fail(ctx, FLP_ERROR_OUT_OF_MEMORY,
                                  "Vulkan: out of host memory for the SPIR-V of %s", name);
            } else {
                glslang_program_SPIRV_get(program, *code);
                *bytes = words * sizeof(unsigned int);
            }
        }
    }
    glslang_program_delete(program);
    glslang_shader_delete(shader);
    return status;
}

flp_status flp_vk_jit_spirv(flp_context *ctx, flp_vk_shader shader,
                            const flp_variant_program *program, void **code, size_t *bytes) {
    *code = NULL;
    *bytes = 0;
    if ((unsigned)shader >= FLP_VK_SHADER_COUNT)
        return flp_fail(ctx, FLP_ERROR_BACKEND, "Vulkan: shader %d has no source", (int)shader);
    char name[96];
    snprintf(name, sizeof name, "%s%s", flp_vk_shader_name(shader),
             program ? " (with the variant's snippets)" : "");
    bool no_marker = false;
    char *source = source_of((const char *)SOURCES[shader].text, *SOURCES[shader].size,
                             SOURCES[shader].defines, program, &no_marker);
    if (no_marker)
        return flp_fail(ctx, FLP_ERROR_BACKEND,
                        "Vulkan: the %s shader has no place for a variant's snippets",
                        flp_vk_shader_name(shader));
    if (!source)
        return flp_fail(ctx, FLP_ERROR_OUT_OF_MEMORY, "Vulkan: out of host memory compiling %s",
                        name);
    char version[64];
    snprintf(version, sizeof version, "glslang %d.%d.%d%s", GLSLANG_VERSION_MAJOR,
             GLSLANG_VERSION_MINOR, GLSLANG_VERSION_PATCH, GLSLANG_VERSION_FLAVOR);
    flp_kernel_key_builder kb;
    flp_kernel_key_begin(&kb);
    flp_kernel_key_add_text(&kb, "compiler", version);
    flp_kernel_key_add_text(&kb, "target", JIT_TARGET);
    const unsigned messages = GLSLANG_MSG_DEFAULT_BIT | JIT_MESSAGES;
    flp_kernel_key_add(&kb, "messages", &messages, sizeof messages);
    flp_kernel_key_add_text(&kb, "source", source);
    const flp_kernel_key key = flp_kernel_key_end(&kb);
    if (flp_kernel_cache_find(ctx, ctx->kernel_cache_dir, &key, code, bytes)) {
        if (is_spirv(*code, *bytes)) {
            flp_log(ctx, FLP_LOG_INFO, "Vulkan: %s from the kernel cache", name);
            flp_free(source);
            return FLP_OK;
        }
        /* a whole, checksummed entry that is no SPIR-V module: compiled again, replaced */
        flp_log(ctx, FLP_LOG_DEBUG, "Vulkan: the cached %s is not SPIR-V: compiling again", name);
        flp_free(*code);
        *code = NULL;
        *bytes = 0;
    }
    const double t0 = seconds();
    flp_status status = compile(ctx, name, source, code, bytes);
    flp_free(source);
    if (status != FLP_OK)
        return status;
    flp_log(ctx, FLP_LOG_INFO, "Vulkan: %s compiled by %s in %.0f ms", name, version,
            1e3 * (seconds() - t0));
    /* out of host memory for the cache's copy: the call fails, as every allocation failure of
     * the library does (the fault-injection walks hold it to that) */
    status = flp_kernel_cache_store(ctx, ctx->kernel_cache_dir, &key, *code, *bytes);
    if (status != FLP_OK) {
        flp_free(*code);
        *code = NULL;
        *bytes = 0;
        return flp_fail(ctx, status, "Vulkan: out of host memory caching %s", name);
    }
    return FLP_OK;
}

#endif
