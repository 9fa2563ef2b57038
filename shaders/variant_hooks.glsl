// Where a variant's snippets (docs/variants.md) meet a kernel: the snippet language's functions,
// how a snippet reaches the run's parameter values, and the place of the variant's program.
// A kernel includes this after its parameter blocks, with FLP_USER_PARAMS defined as the
// uint64_t address of the run's flp_user_param block (core/variant_program.h: 16 bytes per
// parameter, a scalar's bits in .x, a buffer's address in .xy and its element count in .z).
// Compiled at run time for a variant with snippets (backend-vulkan/vk_jit.c), the marker line
// at the end of this file is replaced by the variant's program: a "#define FLP_VARIANT_<KIND> 1"
// per snippet, then the snippets' functions; the kernel calls them where it tests those names.
// Compiled ahead of time, the marker is a comment and no FLP_VARIANT_* is defined.
#ifndef FLP_VARIANT_HOOKS_GLSL
#define FLP_VARIANT_HOOKS_GLSL

#include "snippet_prelude.glsl"

layout(buffer_reference, std430, buffer_reference_align = 16) restrict readonly buffer FlpUserParams {
    uvec4 p[];
};
layout(buffer_reference, std430, buffer_reference_align = 4) readonly buffer FlpUserFloats {
    float v[];
};
layout(buffer_reference, std430, buffer_reference_align = 4) readonly buffer FlpUserInts {
    int v[];
};

uvec4 flp_user_param(int j) {
    return FlpUserParams(FLP_USER_PARAMS).p[j];
}

// Element i of buffer parameter j; 0 outside the bound buffer.
float flp_user_read_float(int j, int i) {
    uvec4 u = flp_user_param(j);
    float x = 0.0;
    if (uint(i) < u.z)
        x = FlpUserFloats(packUint2x32(u.xy)).v[i];
    return x;
}
int flp_user_read_int(int j, int i) {
    uvec4 u = flp_user_param(j);
    int x = 0;
    if (uint(i) < u.z)
        x = FlpUserInts(packUint2x32(u.xy)).v[i];
    return x;
}

#define FLP_USER_FLOAT(j) uintBitsToFloat(flp_user_param(j).x)
#define FLP_USER_INT(j) int(flp_user_param(j).x)
#define FLP_USER_READ_FLOAT(j, i) flp_user_read_float(j, i)
#define FLP_USER_READ_INT(j, i) flp_user_read_int(j, i)

#endif
// @flp-variant-program@ (the last line: vk_jit.c replaces it, once)
