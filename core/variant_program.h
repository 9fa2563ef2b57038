/* A variant's snippets as one program for the kernels (docs/variants.md, "How a snippet reaches
 * a kernel"): the plan's own copy of what the caller's flp_variant held, and the binding of a
 * run's parameter values into the block the kernels read. Pure host code. */
#ifndef FLP_CORE_VARIANT_PROGRAM_H
#define FLP_CORE_VARIANT_PROGRAM_H

#include "core/internal.h"
#include "core/snippet.h"
#include "core/tensor.h"

/* What the kernels read of parameter j: a scalar's bits (float bits, or the int as two's
 * complement) in the low word of value and count 0, or a buffer's device address in value and
 * its element count. The GLSL and CUDA views (uvec4 / a struct of the same 16 bytes) mirror it. */
typedef struct flp_user_param {
    uint64_t value;
    int64_t count;
} flp_user_param;

/* The block of a run's parameter values: FLP_SNIPPET_MAX_PARAMS entries, written into the plan's
 * user slot before the kernels run. */
#define FLP_USER_PARAMS_BYTES (FLP_SNIPPET_MAX_PARAMS * sizeof(flp_user_param))

typedef struct flp_variant_program {
    /* The text spliced into a kernel source (flp_malloc'd, NUL-terminated): a
     * "#define FLP_VARIANT_<KIND> 1" line per snippet the variant has
     * (FLP_VARIANT_LOGITS_TRANSFORM, FLP_VARIANT_LOGITS_MASK, FLP_VARIANT_QUERY_TRANSFORM,
     * FLP_VARIANT_OUTPUT_TRANSFORM), then each snippet's function as flp_snippet_wrap writes it. */
    char *text;
    uint8_t digest[32]; /* SHA-256 of text: the kernels' identity in the backends' caches */
    uint32_t kinds;     /* bit k: the variant has a snippet of flp_snippet_kind k */
    int32_t num_params;
    flp_variant_param_type param_types[FLP_SNIPPET_MAX_PARAMS];
    char param_names[FLP_SNIPPET_MAX_PARAMS][FLP_SNIPPET_MAX_NAME + 1];
} flp_variant_program;

/* Whether v has a snippet. */
bool flp_variant_has_snippets(const flp_variant *v);

/* v's snippet of each kind, indexed by flp_snippet_kind (NULL: none). */
void flp_variant_snippet_bodies(const flp_variant *v, const char *bodies[FLP_SNIPPET_NUM_KINDS]);

/* Clears v's snippet fields and parameter list (the caller's memory): for a plan's stored copy
 * of a variant whose program it keeps. */
void flp_variant_drop_snippets(flp_variant *v);

/* The program of a valid variant with snippets (flp_variant_validate passed), or *out = NULL
 * for a variant without. Fails ctx naming fn (FLP_ERROR_OUT_OF_MEMORY). */
flp_status flp_variant_program_build(flp_context *ctx, const char *fn, const flp_variant *v,
                                     flp_variant_program **out);
void flp_variant_program_free(flp_variant_program *program);

/* Whether two programs (either may be NULL: none) are the same kernels' program. */
bool flp_variant_program_same(const flp_variant_program *a, const flp_variant_program *b);

/* A run's values for program (NULL: the run must pass none, and block is left as it is) into
 * block[FLP_SNIPPET_MAX_PARAMS]: every declared parameter once, by name; a buffer 1-D,
 * contiguous, of at least one element, F32 for a float buffer and I32 for an int buffer, on
 * ctx's device. Unused entries are zero. FLP_ERROR_INVALID_ARGUMENT naming fn and the
 * parameter otherwise. */
flp_status flp_variant_program_bind(flp_context *ctx, const char *fn,
                                    const flp_variant_program *program,
                                    const flp_param_value *values, int32_t num_values,
                                    flp_user_param *block);

/* Appends the buffers among values[num_values] (checked by flp_variant_program_bind) to
 * inputs[*count] for the run's overlap checks (outputs must not overlap them). */
void flp_variant_param_inputs(const flp_param_value *values, int32_t num_values,
                              flp_named_tensor *inputs, int *count);

#endif /* FLP_CORE_VARIANT_PROGRAM_H */
