/* Run-time compilation of the Vulkan backend's shaders: their embedded GLSL (includes inlined
 * at build time) through glslang's C interface into SPIR-V, kept in the compiled-kernel cache
 * (core/kernel_cache.h). FLP_VULKAN_JIT=1 makes a context build every shader module this way
 * instead of from the SPIR-V compiled ahead of time (tests; variants with snippets will always
 * take this path). */
#ifndef FLP_VK_JIT_H
#define FLP_VK_JIT_H

#include "vk_backend.h"
#include "core/variant_program.h"

/* Whether the library was built with glslang (meson: the glslang dependency found). */
bool flp_vk_jit_available(void);

/* The shader's name in messages ("decode", "merge_states", ...; its source shaders/<name>.comp
 * but for decode_cpu_texel, decode_cpu.comp with FLP_TEXEL_KV). */
const char *flp_vk_shader_name(flp_vk_shader shader);

/* Whether FLP_VULKAN_JIT asks for run-time compiled shaders (read when a context opens). */
bool flp_vk_jit_requested(void);

/* The SPIR-V of shader, with program (a variant's snippets, spliced in where
 * shaders/variant_hooks.glsl marks; NULL: none): from the compiled-kernel cache (memory, then
 * ctx's directory), else compiled by glslang and stored. *code (free with flp_free) and *bytes.
 * FLP_ERROR_UNSUPPORTED when the library was built without glslang, FLP_ERROR_COMPILE with
 * glslang's log (a snippet's lines under its kind's name: "logits_transform:2:"),
 * FLP_ERROR_OUT_OF_MEMORY. Logs at FLP_LOG_INFO whether the module was compiled (and in how
 * long) or found in the cache. */
flp_status flp_vk_jit_spirv(flp_context *ctx, flp_vk_shader shader,
                            const flp_variant_program *program, void **code, size_t *bytes);

#endif /* FLP_VK_JIT_H */
