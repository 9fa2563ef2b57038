/* The SPIR-V of the compute shaders, generated from the shaders/ sources at build time and
 * embedded by tools/embed.py (16-byte aligned, so usable as uint32_t words). */
#ifndef FLP_VK_SHADERS_H
#define FLP_VK_SHADERS_H

extern const unsigned char flp_spv_decode[];
extern const unsigned long flp_spv_decode_size;
extern const unsigned char flp_spv_decode_cpu[];
extern const unsigned long flp_spv_decode_cpu_size;
extern const unsigned char flp_spv_decode_cpu_texel[];
extern const unsigned long flp_spv_decode_cpu_texel_size;
extern const unsigned char flp_spv_decode_merge[];
extern const unsigned long flp_spv_decode_merge_size;
extern const unsigned char flp_spv_prefill[];
extern const unsigned long flp_spv_prefill_size;
extern const unsigned char flp_spv_prefill_merge[];
extern const unsigned long flp_spv_prefill_merge_size;
extern const unsigned char flp_spv_kv_append[];
extern const unsigned long flp_spv_kv_append_size;
extern const unsigned char flp_spv_merge_states[];
extern const unsigned long flp_spv_merge_states_size;

/* The same shaders' GLSL, includes inlined (NUL-terminated texts), for run-time compiles
 * (vk_jit.c). */
extern const unsigned char flp_glsl_decode[];
extern const unsigned long flp_glsl_decode_size;
extern const unsigned char flp_glsl_decode_cpu[];
extern const unsigned long flp_glsl_decode_cpu_size;
extern const unsigned char flp_glsl_decode_merge[];
extern const unsigned long flp_glsl_decode_merge_size;
extern const unsigned char flp_glsl_prefill[];
extern const unsigned long flp_glsl_prefill_size;
extern const unsigned char flp_glsl_prefill_merge[];
extern const unsigned long flp_glsl_prefill_merge_size;
extern const unsigned char flp_glsl_kv_append[];
extern const unsigned long flp_glsl_kv_append_size;
extern const unsigned char flp_glsl_merge_states[];
extern const unsigned long flp_glsl_merge_states_size;

#endif /* FLP_VK_SHADERS_H */
