/* Core suite: the snippet language's checker and translator (core/snippet.h,
 * docs/variants.md). Valid bodies translate to the expected common text with the inputs and
 * parameters they read; every construct outside the language is refused before any compiler,
 * with the snippet's own line and column; parameter lists and names are checked. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "core/snippet.h"
#include "tests/test_util.h"

#include <stdio.h>
#include <string.h>

static const flp_variant_param PARAMS[] = {
    {"cap", FLP_PARAM_FLOAT},
    {"shift", FLP_PARAM_INT},
    {"sinks", FLP_PARAM_FLOAT_BUFFER},
    {"bias_table", FLP_PARAM_FLOAT_BUFFER},
    {"buckets", FLP_PARAM_INT_BUFFER},
    {"matrix2", FLP_PARAM_INT}, /* names that only look like type names are fine */
    {"box", FLP_PARAM_FLOAT},
};
#define NUM_PARAMS ((int)(sizeof PARAMS / sizeof *PARAMS))

/* Translates body of kind with PARAMS and expects text, inputs and parameters read. */
static void expect_text(flp_snippet_kind kind, const char *body, const char *text,
                        uint32_t inputs_used, uint32_t params_used) {
    flp_snippet s;
    char message[512] = "";
    const flp_status status =
        flp_snippet_translate(kind, body, PARAMS, NUM_PARAMS, &s, message, sizeof message);
    if (status != FLP_OK)
        fail_msg("refused: %s", message);
    assert_string_equal(s.text, text);
    assert_int_equal(s.inputs_used, inputs_used);
    assert_int_equal(s.params_used, params_used);
    flp_snippet_free(&s);
    assert_null(s.text);
}

/* Bit of the input called name in kind's list. */
static uint32_t input_bit(flp_snippet_kind kind, const char *name) {
    int n = 0;
    const flp_snippet_input *in = flp_snippet_inputs(kind, &n);
    for (int i = 0; i < n; i++)
        if (strcmp(in[i].name, name) == 0)
            return 1u << i;
    fail_msg("%s is not an input of kind %d", name, (int)kind);
    return 0;
}

static void test_translations(void **state) {
    (void)state;
    const flp_snippet_kind lt = FLP_SNIPPET_LOGITS_TRANSFORM;
    /* soft cap: floats get f, functions flp_ */
    expect_text(lt, "return cap * tanh(logit / cap);", "return cap * flp_tanh(logit / cap);",
                input_bit(lt, "logit"), 1u << 0);
    expect_text(lt, "float t = 2.5e-1 * logit; return t + .5 + 1.f + 3;",
                "float t = 2.5e-1f * logit; return t + .5f + 1.f + 3;", input_bit(lt, "logit"), 0);
    /* a buffer read is a call; comments are spaces; lines stay */
    expect_text(lt,
                "// bias by distance\nint d = kv_pos - qo_pos; /* two\nlines */\n"
                "return logit + bias_table[clamp(d + shift, 0, 63)];",
                "                   \nint d = kv_pos - qo_pos;       \n        \n"
                "return logit + flp_read_bias_table(flp_clamp(d + shift, 0, 63));",
                input_bit(lt, "logit") | input_bit(lt, "kv_pos") | input_bit(lt, "qo_pos"),
                (1u << 1) | (1u << 3));
    /* a mask: bool, comparisons, logical operators, if/else, blocks, conversions */
    const flp_snippet_kind m = FLP_SNIPPET_LOGITS_MASK;
    expect_text(m,
                "if (kv_pos > qo_pos) { return false; } else return kv_pos % 4 != 3 && "
                "float(kv_len) >= 0.0 || !(request == 1);",
                "if (kv_pos > qo_pos) { return false; } else return kv_pos % 4 != 3 && "
                "float(kv_len) >= 0.0f || !(request == 1);",
                input_bit(m, "kv_pos") | input_bit(m, "qo_pos") | input_bit(m, "kv_len") |
                    input_bit(m, "request"),
                0);
    /* sinks through the output transform: lse, an int buffer, assignment operators, ternary */
    const flp_snippet_kind ot = FLP_SNIPPET_OUTPUT_TRANSFORM;
    expect_text(ot,
                "float s = sinks[qo_head]; s -= lse; s *= 1.0;\n"
                "return buckets[dim] > 0 ? o * sigmoid(-s) : o;",
                "float s = flp_read_sinks(qo_head); s -= lse; s *= 1.0f;\n"
                "return flp_read_buckets(dim) > 0 ? o * flp_sigmoid(-s) : o;",
                input_bit(ot, "qo_head") | input_bit(ot, "lse") | input_bit(ot, "dim") |
                    input_bit(ot, "o"),
                (1u << 2) | (1u << 4));
    /* comments between any two tokens; else if; names that only look like types */
    expect_text(lt,
                "float /*a*/ t // b\n = sinks /**/ [qo_pos]; if (t > 0.0) return t; else if "
                "(t < 0.0) return -t; else return exp /**/ (logit) + float(matrix2) * box;",
                "float       t     \n = flp_read_sinks      (qo_pos); if (t > 0.0f) return t; "
                "else if (t < 0.0f) return -t; else return flp_exp      (logit) + float(matrix2) "
                "* box;",
                input_bit(lt, "qo_pos") | input_bit(lt, "logit"),
                (1u << 2) | (1u << 5) | (1u << 6));
    /* comments may hold anything, non-ASCII included: a space per byte */
    expect_text(lt, "return logit; // caf\xc3\xa9", "return logit;         ",
                input_bit(lt, "logit"), 0);
    const flp_snippet_kind qt = FLP_SNIPPET_QUERY_TRANSFORM;
    expect_text(qt, "return q * (dim < 64 ? 2 : 1);", "return q * (dim < 64 ? 2 : 1);",
                input_bit(qt, "q") | input_bit(qt, "dim"), 0);
    expect_text(qt, "int x = 2147483647; return q;", "int x = 2147483647; return q;",
                input_bit(qt, "q"), 0);
}

/* body is refused, the message holding each of the texts given (NULL-terminated). */
static void expect_refused(flp_snippet_kind kind, const char *body, ...) {
    flp_snippet s = {.text = (char *)1};
    char message[512] = "";
    const flp_status status =
        flp_snippet_translate(kind, body, PARAMS, NUM_PARAMS, &s, message, sizeof message);
    if (status != FLP_ERROR_INVALID_ARGUMENT)
        fail_msg("\"%s\": status %d, expected a refusal", body, (int)status);
    assert_null(s.text);
    va_list ap;
    va_start(ap, body);
    for (const char *want = va_arg(ap, const char *); want; want = va_arg(ap, const char *))
        if (!strstr(message, want))
            fail_msg("\"%s\": message \"%s\" lacks \"%s\"", body, message, want);
    va_end(ap);
}

static void test_refusals(void **state) {
    (void)state;
    const flp_snippet_kind lt = FLP_SNIPPET_LOGITS_TRANSFORM, m = FLP_SNIPPET_LOGITS_MASK;
    /* names outside the snippet's reach, with their line and column */
    expect_refused(lt, "float a = logit;\n  return a * secret;",
                   "logits_transform line 2, column 14", "secret is not an input", NULL);
    expect_refused(m, "return logit > 0.0;", "line 1, column 8",
                   "logit is not an input of logits_mask", NULL);
    expect_refused(lt, "return b; float b = 1.0;", "b is not an input", NULL); /* used before */
    /* constructs outside the language */
    expect_refused(lt, "for (int i = 0; i < 2; i = i + 1) {} return logit;", "for is outside",
                   NULL);
    expect_refused(lt, "while (true) {} return logit;", "while is outside", NULL);
    expect_refused(lt, "double x = 1.0; return logit;", "double is outside", NULL);
    expect_refused(lt, "int i = 0; i++; return logit;", "++ is outside", NULL);
    expect_refused(lt, "return logit * float(1 << 2);", "<< is outside", NULL);
    expect_refused(lt, "int i = 3 & 1; return logit;", "'&' is outside", NULL);
    expect_refused(lt, "int i = 3 | 1; return logit;", "'|' is outside", NULL);
    expect_refused(lt, "int i = 3 ^ 1; return logit;", "'^' is outside", NULL);
    expect_refused(lt, "int i = ~3; return logit;", "'~' is outside", NULL);
    expect_refused(lt, "#define X 1\nreturn logit;", "line 1, column 1", "'#' is outside", NULL);
    expect_refused(lt, "return logit.x;", "'.' is outside", NULL);
    expect_refused(lt, "return \"logit\";", "'\"' is outside", NULL);
    expect_refused(lt, "int i = 1; i %= 2; return logit;", "%= is outside", NULL);
    expect_refused(lt, "float caf\xc3\xa9 = 1.0; return logit;", "outside ASCII", NULL);
    /* numbers */
    expect_refused(lt, "return logit * 0x10;", "no hex", NULL);
    expect_refused(lt, "return logit * 1u;", "no hex, octal or u/l/d", NULL);
    expect_refused(lt, "return logit * 1.0lf;", "nothing else", NULL);
    expect_refused(lt, "return logit * 017;", "leading 0", NULL);
    expect_refused(lt, "return logit * 1e;", "exponent of this number has no digits", NULL);
    expect_refused(lt, "return logit * 2147483648;", "above 2147483647", NULL);
    expect_refused(lt, "return logit * 1.0.5;", "nothing else", NULL);
    /* brackets */
    expect_refused(lt, "return (logit;", "1 bracket is never closed", NULL);
    expect_refused(lt, "return logit);", ") does not match", NULL);
    expect_refused(lt, "return sinks[(qo_head];", "] does not match", NULL);
    expect_refused(lt, "/* open\nreturn logit;", "never closed", NULL);
    /* parameters used as what they are not, functions not called */
    expect_refused(lt, "return logit + sinks;", "sinks is a buffer: read it as sinks[index]", NULL);
    expect_refused(lt, "return logit + cap[0];", "cap is a scalar", NULL);
    expect_refused(lt, "float e = exp; return logit;", "exp is a function: call it", NULL);
    expect_refused(lt, "return foo(logit);", "foo is not an input", NULL);
    /* declarations */
    expect_refused(lt, "float logit = 1.0; return logit;", "the name a float declares",
                   "is an input", NULL);
    expect_refused(lt, "float cap = 1.0; return logit;", "declared already", NULL);
    expect_refused(lt, "float a = 1.0; int a = 2; return logit;", "declared already", NULL);
    expect_refused(lt, "float for = 1.0; return logit;", "keyword", NULL);
    expect_refused(lt, "float flp_x = 1.0; return logit;", "flp_ or gl_", NULL);
    expect_refused(lt, "float a__b = 1.0; return logit;", "__", NULL);
    expect_refused(lt, "float Big = 1.0; return logit;", "lowercase letter", NULL);
    expect_refused(lt, "float = 1.0; return logit;", "is missing", NULL);
    expect_refused(lt, "float exp = 1.0; return logit;", "function of the snippet language", NULL);
    /* C++ digraphs (<% %> <: :> %: are { } [ ] #): they would close the wrapper on CUDA */
    expect_refused(lt, "return logit; %> float g(float a) <% return a;", "%> is outside", NULL);
    expect_refused(lt, "float t<:2:>; return logit;", "a declaration is", NULL);
    expect_refused(lt, "return bias_table[0] + logit<:0:>;", "<: is outside", NULL);
    expect_refused(lt, "%:define X\nreturn logit;", "%: is outside", NULL);
    expect_refused(lt, "return logit; */", "*/ is outside", NULL);
    expect_refused(lt, "return logit >> 1;", ">> is outside", NULL);
    expect_refused(lt, "int i = 1; i--; return logit;", "-- is outside", NULL);
    expect_refused(lt, "return logit;\f", "character \\x0c", NULL);
    /* what C++ would take and GLSL would not: arrays, initialisers, local functions, labels,
     * brackets after a non-buffer, blocks in expressions */
    expect_refused(lt, "float t[2]; return logit;", "a declaration is \"float t = value;\"", NULL);
    expect_refused(lt, "float t(logit); return t;", "a declaration is", NULL);
    expect_refused(lt, "float t{logit}; return t;", "a declaration is", NULL);
    expect_refused(lt, "float g(float a); return logit;", "a declaration is", NULL);
    expect_refused(lt, "float t = {logit}; return t;", "{ opens a block", NULL);
    expect_refused(lt, "float here = 1.0; here: return logit;", ": belongs to a ? : expression",
                   NULL);
    expect_refused(lt, "return logit[0];", "[ only follows a buffer parameter", NULL);
    expect_refused(lt, "return (logit > 0.0 ? 1.0 : 2.0) : 3.0;", ": belongs to", NULL);
    /* names shaped like types, some keywords only under the kernels' extensions */
    expect_refused(lt, "float bvec2 = 1.0; return logit;", "shaped like a C or GLSL type", NULL);
    expect_refused(lt, "float mat2x3 = 1.0; return logit;", "shaped like", NULL);
    expect_refused(lt, "float i16vec4 = 1.0; return logit;", "shaped like", NULL);
    expect_refused(lt, "int int16_t = 1; return logit;", "shaped like", NULL);
    expect_refused(lt, "float interface = 1.0; return logit;", "keyword", NULL);
    expect_refused(lt, "float not_eq = 1.0; return logit;", "keyword", NULL);
    /* no return */
    expect_refused(lt, "float a = logit;", "logits_transform has no return statement", NULL);
    expect_refused(lt, "", "no return statement", NULL);
}

static void test_bad_arguments(void **state) {
    (void)state;
    flp_snippet s;
    char message[256];
    assert_int_equal(
        flp_snippet_translate(FLP_SNIPPET_LOGITS_MASK, NULL, NULL, 0, &s, message, sizeof message),
        FLP_ERROR_INVALID_ARGUMENT);
    assert_non_null(strstr(message, "logits_mask is NULL"));
    assert_int_equal(flp_snippet_translate((flp_snippet_kind)9, "return true;", NULL, 0, &s,
                                           message, sizeof message),
                     FLP_ERROR_INVALID_ARGUMENT);
    assert_non_null(strstr(message, "kind 9"));
    assert_int_equal(flp_snippet_translate(FLP_SNIPPET_LOGITS_MASK, "return true;", NULL, 0, NULL,
                                           message, sizeof message),
                     FLP_ERROR_INVALID_ARGUMENT);
    /* no message buffer: still refused, nothing written */
    assert_int_equal(
        flp_snippet_translate(FLP_SNIPPET_LOGITS_MASK, "return nope;", NULL, 0, &s, NULL, 0),
        FLP_ERROR_INVALID_ARGUMENT);
    assert_int_equal(
        flp_snippet_translate(FLP_SNIPPET_LOGITS_MASK, "return true;", NULL, 0, &s, NULL, 0),
        FLP_OK);
    flp_snippet_free(&s);
    flp_snippet_free(NULL);
}

static void expect_params_refused(const flp_variant_param *params, int n, const char *want) {
    char message[256] = "";
    assert_int_equal(flp_snippet_check_params(params, n, message, sizeof message),
                     FLP_ERROR_INVALID_ARGUMENT);
    if (!strstr(message, want))
        fail_msg("message \"%s\" lacks \"%s\"", message, want);
}

static void test_parameters(void **state) {
    (void)state;
    assert_int_equal(flp_snippet_check_params(PARAMS, NUM_PARAMS, NULL, 0), FLP_OK);
    assert_int_equal(flp_snippet_check_params(NULL, 0, NULL, 0), FLP_OK);
    expect_params_refused(NULL, 2, "params is NULL");
    expect_params_refused(PARAMS, -1, "-1 user parameters");
    flp_variant_param many[FLP_SNIPPET_MAX_PARAMS + 1];
    char names[FLP_SNIPPET_MAX_PARAMS + 1][8];
    for (int i = 0; i <= FLP_SNIPPET_MAX_PARAMS; i++) {
        snprintf(names[i], sizeof names[i], "p%d", i);
        many[i] = (flp_variant_param){names[i], FLP_PARAM_INT};
    }
    assert_int_equal(flp_snippet_check_params(many, FLP_SNIPPET_MAX_PARAMS, NULL, 0), FLP_OK);
    expect_params_refused(many, FLP_SNIPPET_MAX_PARAMS + 1, "33 user parameters: 0 to 32");
    const flp_variant_param twice[] = {{"a", FLP_PARAM_INT}, {"a", FLP_PARAM_FLOAT}};
    expect_params_refused(twice, 2, "user parameters 0 and 1 are both named a");
    const flp_variant_param typed[] = {{"a", (flp_variant_param_type)7}};
    expect_params_refused(typed, 1, "type 7 is unknown");
    const flp_variant_param unnamed[] = {{NULL, FLP_PARAM_INT}};
    expect_params_refused(unnamed, 1, "is NULL");
    const flp_variant_param input[] = {{"logit", FLP_PARAM_FLOAT}};
    expect_params_refused(input, 1, "input of the snippets");
    const flp_variant_param reserved[] = {{"uniform", FLP_PARAM_FLOAT}};
    expect_params_refused(reserved, 1, "keyword");
    const flp_variant_param long_name[] = {{"a234567890123456789012345678901x", FLP_PARAM_INT}};
    expect_params_refused(long_name, 1, "longer than 31");
    const flp_variant_param digit[] = {{"9a", FLP_PARAM_INT}};
    expect_params_refused(digit, 1, "lowercase letter");
    const flp_variant_param dash[] = {{"a-b", FLP_PARAM_INT}};
    expect_params_refused(dash, 1, "a-z, 0-9 and _");
    /* the bits of flp_snippet.params_used follow the list */
    flp_snippet s;
    assert_int_equal(flp_snippet_translate(FLP_SNIPPET_LOGITS_TRANSFORM, "return logit * p31;",
                                           many, FLP_SNIPPET_MAX_PARAMS, &s, NULL, 0),
                     FLP_OK);
    assert_int_equal(s.params_used, 1u << 31);
    flp_snippet_free(&s);
    const char *why = NULL;
    assert_true(flp_snippet_name_ok("bias_2", &why));
    assert_null(why);
    assert_false(flp_snippet_name_ok(NULL, &why));
    assert_non_null(why);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_translations),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_parameters),
    };
    return cmocka_run_group_tests_name("snippet", tests, NULL, NULL);
}
