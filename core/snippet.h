/* User variant snippets (docs/variants.md): a function body in the common subset of C and GLSL,
 * checked before any compiler sees it and translated into the one text that both backends'
 * kernel sources wrap (CUDA through NVRTC, Vulkan through glslang). Pure host code. */
#ifndef FLP_CORE_SNIPPET_H
#define FLP_CORE_SNIPPET_H

#include "core/internal.h"

/* What a snippet computes; each sees the inputs its kind lists (flp_snippet_inputs). */
typedef enum flp_snippet_kind {
    FLP_SNIPPET_LOGITS_TRANSFORM = 0, /* float: the logit that goes on to the softmax */
    FLP_SNIPPET_LOGITS_MASK = 1,      /* bool: whether the key is kept */
    FLP_SNIPPET_QUERY_TRANSFORM = 2,  /* float: a query element, before Q K^T */
    FLP_SNIPPET_OUTPUT_TRANSFORM = 3, /* float: an output element, after normalisation */
    FLP_SNIPPET_NUM_KINDS = 4,
} flp_snippet_kind;

/* The most user parameters a variant has, and the longest name of a parameter or local. */
#define FLP_SNIPPET_MAX_PARAMS 32
#define FLP_SNIPPET_MAX_NAME 31

typedef struct flp_snippet_input {
    const char *name;
    flp_variant_param_type type; /* FLP_PARAM_FLOAT or FLP_PARAM_INT */
} flp_snippet_input;

/* The inputs of kind, in their order (bit i of flp_snippet.inputs_used is input i); their
 * count in *count. */
const flp_snippet_input *flp_snippet_inputs(flp_snippet_kind kind, int *count);

/* The name of kind as the variant's field names it ("logits_transform", ...). */
const char *flp_snippet_kind_name(flp_snippet_kind kind);

/* A checked snippet. */
typedef struct flp_snippet {
    char *text;           /* the translated body (flp_malloc'd, NUL-terminated; lines kept) */
    uint32_t inputs_used; /* bit i: input i is read */
    uint32_t params_used; /* bit j: parameter j is read */
} flp_snippet;

/* Whether name may name a user parameter or a snippet local: 1 to FLP_SNIPPET_MAX_NAME
 * characters of [a-z0-9_], starting with a letter, no "__", not "flp_" or "gl_" first, no
 * keyword of C, C++ or GLSL and no input or function of the snippet language. When not, *why
 * (may be NULL) says why. */
bool flp_snippet_name_ok(const char *name, const char **why);

/* Checks the parameter list: at most FLP_SNIPPET_MAX_PARAMS, names that flp_snippet_name_ok
 * accepts, no two alike, known types. FLP_OK or FLP_ERROR_INVALID_ARGUMENT with the reason in
 * message (may be NULL). */
flp_status flp_snippet_check_params(const flp_variant_param *params, int num_params, char *message,
                                    size_t message_size);

/* Checks body (statements: declarations, assignments, if/else, blocks, return) of kind against
 * the language and translates it: FLP_OK with *out filled (free with flp_snippet_free), or
 * FLP_ERROR_INVALID_ARGUMENT with "<kind> line L, column C: <what>" in message (a name that is
 * neither an input, a parameter, a local declared before, a function nor a type; a token or
 * construct outside the language; brackets that do not match; no return), or
 * FLP_ERROR_OUT_OF_MEMORY. params as flp_snippet_check_params accepts them. */
flp_status flp_snippet_translate(flp_snippet_kind kind, const char *body,
                                 const flp_variant_param *params, int num_params, flp_snippet *out,
                                 char *message, size_t message_size);

void flp_snippet_free(flp_snippet *snippet);

/* The function both backends compile around a translated snippet, into *text (flp_malloc'd):
 *   #ifndef FLP_READS_<name>   (one reader per buffer, however many snippets read it)
 *   #define FLP_READS_<name>
 *   FLP_SNIPPET_FN <type> flp_read_<name>(int i) { return FLP_USER_READ_<FLOAT|INT>(j, i); }
 *   #endif                     for each buffer parameter j the body reads, then
 *   FLP_SNIPPET_FN <float|bool> flp_<kind name>(<the kind's inputs>) {
 *       <type> <name> = FLP_USER_<FLOAT|INT>(j);   for each scalar parameter j it reads
 *   #line 1 "<kind name>"
 *   <body>
 *   }
 * FLP_SNIPPET_FN and the FLP_USER_* macros are the kernel's (each backend's snippet prelude
 * defines the flp_<function>s; the kernel defines how parameter j is reached); #line makes the
 * compilers' messages name the kind and count the body's own lines (GLSL: under
 * GL_GOOGLE_cpp_style_line_directive, which GL_GOOGLE_include_directive brings).
 * FLP_ERROR_INVALID_ARGUMENT for a bad kind, snippet or parameter list, FLP_ERROR_OUT_OF_MEMORY. */
flp_status flp_snippet_wrap(flp_snippet_kind kind, const flp_snippet *snippet,
                            const flp_variant_param *params, int num_params, char **text);

#endif /* FLP_CORE_SNIPPET_H */
