/* Vulkan suite (and, with the CUDA backend built, NVRTC): translated and wrapped snippets
 * (core/snippet.h) compile as GLSL with glslangValidator and as CUDA with NVRTC, against the
 * two snippet preludes (the GLSL side under the kernels' extensions), docs/variants.md's worked
 * examples among them, so that the text the checker lets through is one both backends take; a
 * snippet with an error both compilers see fails on both, their messages naming the snippet's
 * own line. Needs no device. NVRTC's part is skipped (said so) where libnvrtc cannot load. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "core/snippet.h"
#include "tests/test_util.h"

#ifdef FLP_TEST_NVRTC
#include "backend-cuda/cu_nvrtc.h"
#endif

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const flp_variant_param PARAMS[] = {
    {"cap", FLP_PARAM_FLOAT},          {"shift", FLP_PARAM_INT},
    {"sinks", FLP_PARAM_FLOAT_BUFFER}, {"buckets", FLP_PARAM_INT_BUFFER},
    {"bias", FLP_PARAM_FLOAT_BUFFER},  {"sigmoid_bias", FLP_PARAM_FLOAT},
};
#define NUM_PARAMS ((int)(sizeof PARAMS / sizeof *PARAMS))

typedef struct case_def {
    flp_snippet_kind kind;
    const char *body;
} case_def;

static const case_def GOOD[] = {
    {FLP_SNIPPET_LOGITS_TRANSFORM, "return cap * tanh(logit / cap);"},
    {FLP_SNIPPET_LOGITS_TRANSFORM,
     "int d = kv_pos - qo_pos + shift;\n"
     "float b = float(buckets[clamp(d, 0, 31)]);\n"
     "if (d > 100) { b = b * 0.5; } else b = min(b, 2);\n"
     "return logit + b + max(1, 0.5) + clamp(logit, 0, 1.5) + abs(d) + pow(2.0, 3) + exp2(1);"},
    {FLP_SNIPPET_LOGITS_MASK, "return kv_pos <= qo_pos && (kv_pos % 2 == 0 || request > 3);"},
    {FLP_SNIPPET_QUERY_TRANSFORM, "return q * (dim < 64 ? 2.0 : 1);"},
    {FLP_SNIPPET_OUTPUT_TRANSFORM,
     "float s = sinks[qo_head] - lse;\nreturn o * sigmoid(-s) + log(1.0 + sqrt(floor(1.5) + "
     "ceil(0.5))) * sin(0.0) * cos(0.0) + log2(exp(0.0));"},
};

/* docs/variants.md's worked examples, as the page shows them */
static const case_def EXAMPLES[] = {
    {FLP_SNIPPET_OUTPUT_TRANSFORM, "return o * sigmoid(lse - sinks[qo_head]);"},
    {FLP_SNIPPET_LOGITS_TRANSFORM,
     "int distance = qo_pos - kv_pos; /* >= 0 under the causal mask */\n"
     "int bucket = distance;\n"
     "if (distance >= 16)\n"
     "    bucket = min(16 + int(log(float(distance) / 16.0) / log(8.0) * 16.0), 31);\n"
     "return logit + bias[qo_head * 32 + bucket];"},
    {FLP_SNIPPET_LOGITS_TRANSFORM, "return logit + sigmoid_bias;"},
};

#define NUM_GOOD (sizeof GOOD / sizeof *GOOD)
#define NUM_CASES (NUM_GOOD + sizeof EXAMPLES / sizeof *EXAMPLES)

/* Case i of GOOD, then of EXAMPLES. */
static const case_def *good_case(size_t i) {
    return i < NUM_GOOD ? &GOOD[i] : &EXAMPLES[i - NUM_GOOD];
}

/* both compilers refuse this (two arguments to exp), on line 2 of the body, which both name
 * "logits_transform" */
static const case_def BAD = {FLP_SNIPPET_LOGITS_TRANSFORM, "float a = logit;\nreturn exp(a, 2.0);"};

static char *read_text(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot open %s", path);
    fseek(f, 0, SEEK_END);
    const long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = malloc((size_t)n + 1);
    assert_non_null(text);
    assert_int_equal(fread(text, 1, (size_t)n, f), (size_t)n);
    text[n] = '\0';
    fclose(f);
    return text;
}

/* The wrapped function of c. */
static char *wrapped(const case_def *c) {
    flp_snippet s;
    char message[512] = "";
    if (flp_snippet_translate(c->kind, c->body, PARAMS, NUM_PARAMS, &s, message, sizeof message) !=
        FLP_OK)
        fail_msg("refused: %s", message);
    char *text = NULL;
    assert_int_equal(flp_snippet_wrap(c->kind, &s, PARAMS, NUM_PARAMS, &text), FLP_OK);
    flp_snippet_free(&s);
    return text;
}

/* A source: head, the prelude, the parameter macros, the wrapped snippet, tail. */
static char *source_of(const char *head, const char *prelude, const char *macros,
                       const char *function, const char *tail) {
    const size_t n =
        strlen(head) + strlen(prelude) + strlen(macros) + strlen(function) + strlen(tail) + 8;
    char *s = malloc(n);
    assert_non_null(s);
    snprintf(s, n, "%s\n%s\n%s\n%s\n%s\n", head, prelude, macros, function, tail);
    return s;
}

/* glslangValidator on a compute shader of source: its exit status; its output in log. */
static int glslang(const char *source, char *log, size_t log_size) {
    char dir[] = "/tmp/flp-snippet-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[128], out[128], command[512];
    snprintf(path, sizeof path, "%s/snippet.comp", dir);
    snprintf(out, sizeof out, "%s/log.txt", dir);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs(source, f);
    fclose(f);
    snprintf(command, sizeof command,
             "'%s' --target-env vulkan1.2 -V -o %s/snippet.spv '%s' > '%s' 2>&1", FLP_GLSLANG, dir,
             path, out);
    const int status = system(command);
    char *text = read_text(out);
    snprintf(log, log_size, "%s", text);
    free(text);
    test_remove_tree(dir);
    return status;
}

/* with the extensions the kernels enable (under which more words are keywords) */
static const char GLSL_HEAD[] =
    "#version 460\n"
    "#extension GL_EXT_shader_explicit_arithmetic_types_int64 : require\n"
    "#extension GL_EXT_shader_explicit_arithmetic_types_int16 : require\n"
    "#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require\n"
    "#extension GL_EXT_buffer_reference : require\n"
    "#extension GL_KHR_shader_subgroup_basic : require\n"
    "#extension GL_GOOGLE_cpp_style_line_directive : require\n"
    "layout(local_size_x = 1) in;";
/* How the kernels reach parameter j: stand-ins, the same text for both languages. */
static const char USER_MACROS[] =
    "#define FLP_USER_FLOAT(j) (0.5f * float(j))\n#define FLP_USER_INT(j) (j)\n"
    "#define FLP_USER_READ_FLOAT(j, i) (float(i + j))\n#define FLP_USER_READ_INT(j, i) (i - j)";
static const char GLSL_TAIL[] = "void main() {}";

static void test_glsl(void **state) {
    (void)state;
    char *prelude = read_text(FLP_SOURCE_DIR "/shaders/snippet_prelude.glsl");
    char log[8192];
    for (size_t i = 0; i < NUM_CASES; i++) {
        char *function = wrapped(good_case(i));
        char *source = source_of(GLSL_HEAD, prelude, USER_MACROS, function, GLSL_TAIL);
        if (glslang(source, log, sizeof log) != 0)
            fail_msg("case %zu does not compile as GLSL:\n%s\n%s", i, log, source);
        free(source);
        free(function);
    }
    char *function = wrapped(&BAD);
    char *source = source_of(GLSL_HEAD, prelude, USER_MACROS, function, GLSL_TAIL);
    assert_int_not_equal(glslang(source, log, sizeof log), 0);
    if (!strstr(log, "logits_transform:2: "))
        fail_msg("glslang's message does not name line 2 of the logits_transform snippet:\n%s",
                 log);
    free(source);
    free(function);
    free(prelude);
}

#ifdef FLP_TEST_NVRTC
static const char CUDA_TAIL[] = "extern \"C\" __global__ void flp_snippet_probe() {}";

static void test_cuda(void **state) {
    (void)state;
    const char *why = NULL;
    if (!flp_cuda_nvrtc_available(&why, NULL)) {
        printf("NVRTC part skipped: %s\n", why ? why : "libnvrtc not found");
        return;
    }
    char *prelude = read_text(FLP_SOURCE_DIR "/backend-cuda/kernels/snippet_prelude.cuh");
    static char message[65536];
    for (size_t i = 0; i < NUM_CASES; i++) {
        char *function = wrapped(good_case(i));
        char *source = source_of("", prelude, USER_MACROS, function, CUDA_TAIL);
        flp_cuda_image image = {0};
        if (flp_cuda_nvrtc_compile_source(source, "snippet.cu", 80, NULL, 0, &image, message,
                                          sizeof message) != FLP_OK)
            fail_msg("case %zu does not compile with NVRTC:\n%s\n%s", i, message, source);
        flp_cuda_image_free(&image);
        free(source);
        free(function);
    }
    char *function = wrapped(&BAD);
    char *source = source_of("", prelude, USER_MACROS, function, CUDA_TAIL);
    flp_cuda_image image = {0};
    assert_int_equal(flp_cuda_nvrtc_compile_source(source, "snippet.cu", 80, NULL, 0, &image,
                                                   message, sizeof message),
                     FLP_ERROR_COMPILE);
    if (!strstr(message, "logits_transform(2): error"))
        fail_msg("NVRTC's message does not name line 2 of the logits_transform snippet:\n%s",
                 message);
    free(source);
    free(function);
    free(prelude);
}
#endif

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_glsl),
#ifdef FLP_TEST_NVRTC
        cmocka_unit_test(test_cuda),
#endif
    };
    return cmocka_run_group_tests_name("snippet_compile", tests, NULL, NULL);
}
