/* The snippet language's checker and translator (docs/variants.md): one pass over the tokens of
 * a body, each name classified (input, parameter, local, function, type, keyword) and each
 * token re-emitted in the form both backends compile:
 *   - float literals get an f suffix (C would compute in double; GLSL accepts the suffix);
 *   - a function f( becomes flp_f( (each backend's prelude defines flp_exp, flp_min, ... with
 *     the same overloads, so that mixed int/float calls resolve alike);
 *   - a buffer read name[i] becomes flp_read_name(i) (the prelude bounds-checks it);
 *   - comments become spaces, so that lines and columns stay where the user wrote them.
 * The compilers check types and that every path returns; what they would accept in only one of
 * the two languages is refused here. */
#include "core/snippet.h"
#include "core/alloc.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* ASCII classes (the <ctype.h> ones follow the locale: a Latin-1 letter would pass). */
static bool is_digit(char c) {
    return c >= '0' && c <= '9';
}
static bool is_lower(char c) {
    return c >= 'a' && c <= 'z';
}
static bool is_alpha(char c) {
    return is_lower(c) || (c >= 'A' && c <= 'Z');
}
static bool is_name_char(char c) {
    return is_alpha(c) || is_digit(c) || c == '_';
}

/* ---- the language's names ---------------------------------------------------------------- */

#define POSITIONS                                                                                  \
    {"qo_pos", FLP_PARAM_INT}, {"kv_pos", FLP_PARAM_INT}, {"request", FLP_PARAM_INT},              \
        {"qo_head", FLP_PARAM_INT}, {"kv_head", FLP_PARAM_INT}, {"qo_len", FLP_PARAM_INT}, {       \
        "kv_len", FLP_PARAM_INT                                                                    \
    }

static const flp_snippet_input LOGITS_TRANSFORM_INPUTS[] = {{"logit", FLP_PARAM_FLOAT}, POSITIONS};
static const flp_snippet_input LOGITS_MASK_INPUTS[] = {POSITIONS};
static const flp_snippet_input QUERY_TRANSFORM_INPUTS[] = {
    {"q", FLP_PARAM_FLOAT},     {"dim", FLP_PARAM_INT},     {"qo_pos", FLP_PARAM_INT},
    {"request", FLP_PARAM_INT}, {"qo_head", FLP_PARAM_INT}, {"qo_len", FLP_PARAM_INT},
    {"kv_len", FLP_PARAM_INT}};
static const flp_snippet_input OUTPUT_TRANSFORM_INPUTS[] = {
    {"o", FLP_PARAM_FLOAT},    {"lse", FLP_PARAM_FLOAT},   {"dim", FLP_PARAM_INT},
    {"qo_pos", FLP_PARAM_INT}, {"request", FLP_PARAM_INT}, {"qo_head", FLP_PARAM_INT},
    {"qo_len", FLP_PARAM_INT}, {"kv_len", FLP_PARAM_INT}};

#define COUNT(a) ((int)(sizeof(a) / sizeof *(a)))

const flp_snippet_input *flp_snippet_inputs(flp_snippet_kind kind, int *count) {
    switch (kind) {
    case FLP_SNIPPET_LOGITS_TRANSFORM:
        *count = COUNT(LOGITS_TRANSFORM_INPUTS);
        return LOGITS_TRANSFORM_INPUTS;
    case FLP_SNIPPET_LOGITS_MASK:
        *count = COUNT(LOGITS_MASK_INPUTS);
        return LOGITS_MASK_INPUTS;
    case FLP_SNIPPET_QUERY_TRANSFORM:
        *count = COUNT(QUERY_TRANSFORM_INPUTS);
        return QUERY_TRANSFORM_INPUTS;
    case FLP_SNIPPET_OUTPUT_TRANSFORM:
        *count = COUNT(OUTPUT_TRANSFORM_INPUTS);
        return OUTPUT_TRANSFORM_INPUTS;
    default:
        *count = 0;
        return NULL;
    }
}

const char *flp_snippet_kind_name(flp_snippet_kind kind) {
    static const char *const names[FLP_SNIPPET_NUM_KINDS] = {"logits_transform", "logits_mask",
                                                             "query_transform", "output_transform"};
    return (unsigned)kind < FLP_SNIPPET_NUM_KINDS ? names[kind] : "snippet";
}

/* The functions a snippet may call (each backend's prelude defines flp_<name>). */
static const char *const FUNCTIONS[] = {"exp", "exp2", "log",   "log2",   "sqrt", "abs",
                                        "min", "max",  "clamp", "floor",  "ceil", "tanh",
                                        "sin", "cos",  "pow",   "sigmoid"};

/* The words a snippet uses as C and GLSL do. */
static const char *const TYPES[] = {"float", "int", "bool"};
static const char *const STATEMENT_WORDS[] = {"if", "else", "return", "true", "false"};

/* Every other keyword or reserved word of C, C++ and GLSL (all lowercase): never a name. */
static const char *const RESERVED[] = {
    "alignas",
    "alignof",
    "and",
    "asm",
    "atomic_uint",
    "attribute",
    "auto",
    "break",
    "buffer",
    "case",
    "catch",
    "centroid",
    "char",
    "class",
    "coherent",
    "common",
    "const",
    "consteval",
    "constexpr",
    "constinit",
    "continue",
    "default",
    "delete",
    "discard",
    "do",
    "double",
    "dvec2",
    "dvec3",
    "dvec4",
    "dynamic_cast",
    "enum",
    "explicit",
    "export",
    "extern",
    "filter",
    "fixed",
    "flat",
    "for",
    "friend",
    "goto",
    "half",
    "highp",
    "in",
    "inline",
    "inout",
    "input",
    "invariant",
    "ivec2",
    "ivec3",
    "ivec4",
    "layout",
    "long",
    "lowp",
    "mat2",
    "mat3",
    "mat4",
    "mediump",
    "mutable",
    "namespace",
    "new",
    "noexcept",
    "noinline",
    "noperspective",
    "not",
    "nullptr",
    "operator",
    "or",
    "out",
    "output",
    "partition",
    "patch",
    "precise",
    "precision",
    "private",
    "protected",
    "public",
    "readonly",
    "register",
    "resource",
    "restrict",
    "sample",
    "sampler",
    "shared",
    "short",
    "signed",
    "sizeof",
    "smooth",
    "static",
    "static_assert",
    "static_cast",
    "struct",
    "subroutine",
    "superp",
    "switch",
    "template",
    "this",
    "throw",
    "try",
    "typedef",
    "typeid",
    "typename",
    "uint",
    "uniform",
    "union",
    "unsigned",
    "using",
    "uvec2",
    "uvec3",
    "uvec4",
    "varying",
    "vec2",
    "vec3",
    "vec4",
    "virtual",
    "void",
    "volatile",
    "while",
    "writeonly",
    "xor",
    "const_cast",
    "reinterpret_cast",
    "thread_local",
    "decltype",
    "co_await",
    "co_return",
    "co_yield",
    "concept",
    "requires",
    "bitand",
    "bitor",
    "compl",
    "demote",
    "uint8_t",
    "int8_t",
    "int32_t",
    "uint32_t",
    "int64_t",
    "uint64_t",
    "size_t",
    "ptrdiff_t",
    "main",
    "active",
    "interface",
    "external",
    "cast",
    "packed",
    "and_eq",
    "not_eq",
    "or_eq",
    "xor_eq",
};

/* Names shaped like C or GLSL type names: any *_t (int16_t, float16_t, wchar_t, ...) and GLSL's
 * vectors and matrices (bvec2, i16vec4, u64vec3, mat2x3, dmat4, ...), many of which are keywords
 * only under the extensions the kernels enable. */
static bool type_like(const char *s, size_t len) {
    if (len >= 2 && s[len - 2] == '_' && s[len - 1] == 't')
        return true;
    size_t end = len;
    bool digit = false;
    while (end > 0 && (is_digit(s[end - 1]) || s[end - 1] == 'x')) {
        digit |= is_digit(s[end - 1]);
        end--;
    }
    return digit && end >= 3 &&
           (strncmp(s + end - 3, "vec", 3) == 0 || strncmp(s + end - 3, "mat", 3) == 0);
}

static bool in_list(const char *const *list, int n, const char *s, size_t len) {
    for (int i = 0; i < n; i++)
        if (strlen(list[i]) == len && strncmp(list[i], s, len) == 0)
            return true;
    return false;
}

/* Whether s[0..len) is an input of any kind. */
static bool is_any_input(const char *s, size_t len) {
    for (int k = 0; k < FLP_SNIPPET_NUM_KINDS; k++) {
        int n = 0;
        const flp_snippet_input *in = flp_snippet_inputs((flp_snippet_kind)k, &n);
        for (int i = 0; i < n; i++)
            if (strlen(in[i].name) == len && strncmp(in[i].name, s, len) == 0)
                return true;
    }
    return false;
}

static const char *name_problem(const char *s, size_t len) {
    if (len == 0)
        return "is empty";
    if (len > FLP_SNIPPET_MAX_NAME)
        return "is longer than 31 characters";
    if (!is_lower(s[0]))
        return "does not start with a lowercase letter";
    for (size_t i = 0; i < len; i++)
        if (!is_lower(s[i]) && !is_digit(s[i]) && s[i] != '_')
            return "has a character other than a-z, 0-9 and _";
    for (size_t i = 0; i + 1 < len; i++)
        if (s[i] == '_' && s[i + 1] == '_')
            return "contains \"__\" (reserved in GLSL)";
    if ((len >= 4 && strncmp(s, "flp_", 4) == 0) || (len >= 3 && strncmp(s, "gl_", 3) == 0))
        return "starts with flp_ or gl_ (reserved for the kernels)";
    if (in_list(RESERVED, COUNT(RESERVED), s, len) || in_list(TYPES, COUNT(TYPES), s, len) ||
        in_list(STATEMENT_WORDS, COUNT(STATEMENT_WORDS), s, len))
        return "is a keyword of C, C++ or GLSL";
    if (type_like(s, len))
        return "is shaped like a C or GLSL type name (*_t, vecN, matN, matNxM)";
    if (in_list(FUNCTIONS, COUNT(FUNCTIONS), s, len))
        return "is a function of the snippet language";
    if (is_any_input(s, len))
        return "is an input of the snippets";
    return NULL;
}

bool flp_snippet_name_ok(const char *name, const char **why) {
    const char *problem = name ? name_problem(name, strlen(name)) : "is NULL";
    if (why)
        *why = problem;
    return problem == NULL;
}

flp_status flp_snippet_check_params(const flp_variant_param *params, int num_params, char *message,
                                    size_t message_size) {
    if (num_params < 0 || num_params > FLP_SNIPPET_MAX_PARAMS)
        return flp_report(FLP_ERROR_INVALID_ARGUMENT, message, message_size,
                          "%d user parameters: 0 to %d", num_params, FLP_SNIPPET_MAX_PARAMS);
    if (num_params > 0 && !params)
        return flp_report(FLP_ERROR_INVALID_ARGUMENT, message, message_size,
                          "%d user parameters but params is NULL", num_params);
    for (int i = 0; i < num_params; i++) {
        const char *why = NULL;
        if (!flp_snippet_name_ok(params[i].name, &why))
            return flp_report(FLP_ERROR_INVALID_ARGUMENT, message, message_size,
                              "user parameter %d (\"%s\") %s", i,
                              params[i].name ? params[i].name : "", why);
        if ((unsigned)params[i].type > FLP_PARAM_INT_BUFFER)
            return flp_report(FLP_ERROR_INVALID_ARGUMENT, message, message_size,
                              "user parameter %d (%s): type %d is unknown", i, params[i].name,
                              (int)params[i].type);
        for (int j = 0; j < i; j++)
            if (strcmp(params[i].name, params[j].name) == 0)
                return flp_report(FLP_ERROR_INVALID_ARGUMENT, message, message_size,
                                  "user parameters %d and %d are both named %s", j, i,
                                  params[i].name);
    }
    return FLP_OK;
}

/* ---- the translation ----------------------------------------------------------------------- */

/* The most locals a snippet declares. */
#define MAX_LOCALS 64
/* The deepest nesting of brackets. */
#define MAX_DEPTH 64

typedef struct translator {
    flp_snippet_kind kind;
    const char *body;
    const flp_snippet_input *inputs;
    int num_inputs;
    const flp_variant_param *params;
    int num_params;
    const char *locals[MAX_LOCALS]; /* into body; lengths in local_len */
    size_t local_len[MAX_LOCALS];
    int num_locals;
    char stack[MAX_DEPTH]; /* open brackets: ( { [ */
    int depth;
    int open_questions; /* ? still waiting for their : */
    enum {
        LAST_STATEMENT_START, /* nothing yet, ;, {, } or else: a statement or block may start */
        LAST_CLOSE_PAREN,     /* ): a block may start (after if (...)), or an operator follow */
        LAST_BUFFER,          /* a buffer parameter's name: [ must follow */
        LAST_OTHER,
    } last;
    char *out;
    size_t out_len, out_cap;
    bool out_of_memory;
    flp_snippet *result;
    char *message;
    size_t message_size;
} translator;

static void emit(translator *t, const char *s, size_t n) {
    if (t->out_of_memory)
        return;
    if (t->out_len + n + 1 > t->out_cap) {
        size_t cap = t->out_cap ? 2 * t->out_cap : 256;
        while (cap < t->out_len + n + 1)
            cap *= 2;
        char *grown = flp_realloc(t->out, cap);
        if (!grown) {
            t->out_of_memory = true;
            return;
        }
        t->out = grown;
        t->out_cap = cap;
    }
    memcpy(t->out + t->out_len, s, n);
    t->out_len += n;
    t->out[t->out_len] = '\0';
}

static void emit_text(translator *t, const char *s) {
    emit(t, s, strlen(s));
}

/* Line and column (from 1) of p in the body. */
static void position(const translator *t, const char *p, int *line, int *column) {
    *line = 1;
    *column = 1;
    for (const char *c = t->body; c < p; c++) {
        if (*c == '\n') {
            ++*line;
            *column = 1;
        } else {
            ++*column;
        }
    }
}

static flp_status fail_at(translator *t, const char *p, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static flp_status fail_at(translator *t, const char *p, const char *fmt, ...) {
    if (t->message && t->message_size > 0) {
        int line = 0, column = 0;
        position(t, p, &line, &column);
        const int n =
            snprintf(t->message, t->message_size,
                     "%s line %d, column %d: ", flp_snippet_kind_name(t->kind), line, column);
        if (n >= 0 && (size_t)n < t->message_size) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(t->message + n, t->message_size - (size_t)n, fmt, ap);
            va_end(ap);
        }
    }
    return FLP_ERROR_INVALID_ARGUMENT;
}

/* The first character at or after p that is neither white space nor in a closed comment. */
static const char *skip_gap(const char *p) {
    for (;;) {
        while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')
            p++;
        if (p[0] == '/' && p[1] == '/') {
            p += strcspn(p, "\n");
        } else if (p[0] == '/' && p[1] == '*') {
            const char *end = strstr(p + 2, "*/");
            if (!end)
                return p; /* the main loop reports it */
            p = end + 2;
        } else {
            return p;
        }
    }
}

/* Emits [p, end) (white space and comments only) as comment() would: spaces and newlines. */
static void emit_gap(translator *t, const char *p, const char *end) {
    for (; p < end; p++)
        emit(t, *p == '\n' ? "\n" : " ", 1);
}

/* A comment at p (// to the line's end, or a closed block comment): emitted as spaces and its
 * newlines; returns the character after it, or NULL for an unclosed block comment. */
static const char *comment(translator *t, const char *p) {
    const bool line_comment = p[1] == '/';
    const char *end = line_comment ? p + strcspn(p, "\n") : strstr(p + 2, "*/");
    if (!end)
        return NULL;
    if (!line_comment)
        end += 2;
    for (const char *c = p; c < end; c++)
        emit(t, *c == '\n' ? "\n" : " ", 1);
    return end;
}

/* A number at p: decimal digits, then for a float a fraction and/or an exponent and an
 * optional f. Emitted with an f when it is a float. Returns the character after it, or NULL
 * (the reason already written). */
static const char *number(translator *t, const char *p) {
    const char *s = p;
    bool is_float = false;
    t->last = LAST_OTHER;
    while (is_digit(*p))
        p++;
    if (*p == '.') {
        is_float = true;
        p++;
        while (is_digit(*p))
            p++;
    }
    if (*p == 'e' || *p == 'E') {
        const char *e = p + 1;
        if (*e == '+' || *e == '-')
            e++;
        if (!is_digit(*e)) {
            fail_at(t, s, "the exponent of this number has no digits");
            return NULL;
        }
        is_float = true;
        p = e;
        while (is_digit(*p))
            p++;
    }
    const bool suffix = is_float && (*p == 'f' || *p == 'F');
    const size_t digits = (size_t)(p - s);
    p += suffix;
    if (is_name_char(*p) || *p == '.') {
        fail_at(t, s,
                "a number may be decimal digits with a fraction, an exponent and an f, "
                "nothing else (no hex, octal or u/l/d suffixes)");
        return NULL;
    }
    if (!is_float) {
        if (digits > 1 && s[0] == '0') {
            fail_at(t, s, "an integer with a leading 0 (octal in C, not in GLSL)");
            return NULL;
        }
        if (digits > 10 || (digits == 10 && strncmp(s, "2147483647", 10) > 0)) {
            fail_at(t, s, "an integer above 2147483647");
            return NULL;
        }
    }
    emit(t, s, digits);
    if (is_float)
        emit(t, "f", 1);
    return p;
}

static int find_param(const translator *t, const char *s, size_t len) {
    for (int i = 0; i < t->num_params; i++)
        if (strlen(t->params[i].name) == len && strncmp(t->params[i].name, s, len) == 0)
            return i;
    return -1;
}

static int find_input(const translator *t, const char *s, size_t len) {
    for (int i = 0; i < t->num_inputs; i++)
        if (strlen(t->inputs[i].name) == len && strncmp(t->inputs[i].name, s, len) == 0)
            return i;
    return -1;
}

static bool is_local(const translator *t, const char *s, size_t len) {
    for (int i = 0; i < t->num_locals; i++)
        if (t->local_len[i] == len && strncmp(t->locals[i], s, len) == 0)
            return true;
    return false;
}

/* A name at p, of len characters. Returns the character after what it consumed, or NULL. */
static const char *name(translator *t, const char *p, size_t len) {
    const char *next = skip_gap(p + len);
    t->last = LAST_OTHER;
    if (in_list(TYPES, COUNT(TYPES), p, len)) {
        emit(t, p, len);
        if (*next == '(')
            return p + len; /* a conversion: float(x) in C++ and GLSL alike */
        /* a declaration: the type, then a new local's name */
        const char *n = next;
        size_t n_len = 0;
        while (is_name_char(n[n_len]))
            n_len++;
        const char *why = n_len == 0 ? "is missing" : name_problem(n, n_len);
        if (!why && (find_param(t, n, n_len) >= 0 || is_local(t, n, n_len)))
            why = "is declared already (a parameter or an earlier local)";
        if (why) {
            fail_at(t, n, "the name a %.*s declares %s", (int)len, p, why);
            return NULL;
        }
        if (t->num_locals == MAX_LOCALS) {
            fail_at(t, n, "more than %d locals", MAX_LOCALS);
            return NULL;
        }
        /* one name, then its value or the end: no arrays, initialiser lists or functions */
        const char *after = skip_gap(n + n_len);
        if ((unsigned char)*after >= 0x80) {
            fail_at(t, after, "a character outside ASCII");
            return NULL;
        }
        if (*after != '=' && *after != ';') {
            fail_at(t, after, "a declaration is \"%.*s %.*s = value;\" or \"%.*s %.*s;\"", (int)len,
                    p, (int)n_len, n, (int)len, p, (int)n_len, n);
            return NULL;
        }
        t->locals[t->num_locals] = n;
        t->local_len[t->num_locals++] = n_len;
        emit_gap(t, p + len, n);
        emit(t, n, n_len);
        return n + n_len;
    }
    if (in_list(STATEMENT_WORDS, COUNT(STATEMENT_WORDS), p, len)) {
        if (len == 4 && strncmp(p, "else", 4) == 0)
            t->last = LAST_STATEMENT_START;
        emit(t, p, len);
        return p + len;
    }
    if (in_list(FUNCTIONS, COUNT(FUNCTIONS), p, len)) {
        if (*next != '(') {
            fail_at(t, p, "%.*s is a function: call it", (int)len, p);
            return NULL;
        }
        emit_text(t, "flp_");
        emit(t, p, len);
        return p + len;
    }
    const int input = find_input(t, p, len);
    if (input >= 0) {
        t->result->inputs_used |= 1u << input;
        emit(t, p, len);
        return p + len;
    }
    const int param = find_param(t, p, len);
    if (param >= 0) {
        t->result->params_used |= 1u << param;
        const bool buffer = t->params[param].type == FLP_PARAM_FLOAT_BUFFER ||
                            t->params[param].type == FLP_PARAM_INT_BUFFER;
        if (buffer != (*next == '[')) {
            fail_at(t, p,
                    buffer ? "%.*s is a buffer: read it as %.*s[index]"
                           : "%.*s is a scalar: it has no elements",
                    (int)len, p, (int)len, p);
            return NULL;
        }
        if (buffer) {
            t->last = LAST_BUFFER;
            emit_text(t, "flp_read_");
            emit(t, p, len);
        } else {
            emit(t, p, len);
        }
        return p + len;
    }
    if (is_local(t, p, len)) {
        emit(t, p, len);
        return p + len;
    }
    if (in_list(RESERVED, COUNT(RESERVED), p, len)) {
        fail_at(t, p, "%.*s is outside the snippet language (docs/variants.md)", (int)len, p);
        return NULL;
    }
    fail_at(t, p,
            "%.*s is not an input of %s, a user parameter, a local declared before it or a "
            "function",
            (int)len, p, flp_snippet_kind_name(t->kind));
    return NULL;
}

/* The operators and punctuation of the language, longest first. */
static const char *const PUNCTUATION[] = {
    "<=", ">=", "==", "!=", "&&", "||", "+=", "-=", "*=", "/=", "(", ")", "{", "}", "[",
    "]",  ";",  ",",  "?",  ":",  "+",  "-",  "*",  "/",  "%",  "<", ">", "!", "="};

/* Punctuation at p, with its brackets matched. Returns the character after it, or NULL. */
static const char *punctuation(translator *t, const char *p) {
    /* refused before the table: their first characters are in it (the digraphs <% %> <: :>
     * %: are C++'s { } [ ] #, which would slip past the bracket matching) */
    static const char *const refused[] = {"++", "--", "<<", ">>", "%=", "->",
                                          "<%", "%>", "<:", ":>", "%:", "*/"};
    for (int i = 0; i < COUNT(refused); i++)
        if (strncmp(p, refused[i], 2) == 0) {
            fail_at(t, p, "%s is outside the snippet language (docs/variants.md)", refused[i]);
            return NULL;
        }
    for (int i = 0; i < COUNT(PUNCTUATION); i++) {
        const size_t n = strlen(PUNCTUATION[i]);
        if (strncmp(p, PUNCTUATION[i], n) != 0)
            continue;
        const char c = p[0];
        const int last = t->last;
        t->last = c == ';' || c == '{' || c == '}' ? LAST_STATEMENT_START
                  : c == ')'                       ? LAST_CLOSE_PAREN
                                                   : LAST_OTHER;
        if ((c == '[') != (last == LAST_BUFFER)) {
            fail_at(t, p,
                    c == '[' ? "[ only follows a buffer parameter (name[index])"
                             : "a buffer parameter's name is followed by [index]");
            return NULL;
        }
        if (c == '{' && last != LAST_STATEMENT_START && last != LAST_CLOSE_PAREN) {
            fail_at(t, p, "{ opens a block, where a statement may start");
            return NULL;
        }
        if (c == '?')
            t->open_questions++;
        if (c == ':' && t->open_questions-- == 0) {
            fail_at(t, p, ": belongs to a ? : expression (no labels)");
            return NULL;
        }
        if (n == 1 && (c == '(' || c == '{' || c == '[')) {
            if (t->depth == MAX_DEPTH) {
                fail_at(t, p, "brackets nested deeper than %d", MAX_DEPTH);
                return NULL;
            }
            t->stack[t->depth++] = c;
            emit(t, c == '[' ? "(" : p, 1); /* a buffer read is a call */
            return p + 1;
        }
        if (n == 1 && (c == ')' || c == '}' || c == ']')) {
            const char open = c == ')' ? '(' : c == '}' ? '{' : '[';
            if (t->depth == 0 || t->stack[t->depth - 1] != open) {
                fail_at(t, p, "%c does not match an open %c", c, open);
                return NULL;
            }
            t->depth--;
            emit(t, c == ']' ? ")" : p, 1);
            return p + 1;
        }
        emit(t, p, n);
        return p + n;
    }
    if ((unsigned char)*p < 0x20 || *p == 0x7f)
        fail_at(t, p, "character \\x%02x is outside the snippet language", (unsigned char)*p);
    else
        fail_at(t, p, "'%c' is outside the snippet language (docs/variants.md)", *p);
    return NULL;
}

flp_status flp_snippet_translate(flp_snippet_kind kind, const char *body,
                                 const flp_variant_param *params, int num_params, flp_snippet *out,
                                 char *message, size_t message_size) {
    if (!out)
        return flp_report(FLP_ERROR_INVALID_ARGUMENT, message, message_size, "out is NULL");
    *out = (flp_snippet){0};
    if ((unsigned)kind >= FLP_SNIPPET_NUM_KINDS)
        return flp_report(FLP_ERROR_INVALID_ARGUMENT, message, message_size,
                          "snippet kind %d is unknown", (int)kind);
    if (!body)
        return flp_report(FLP_ERROR_INVALID_ARGUMENT, message, message_size, "%s is NULL",
                          flp_snippet_kind_name(kind));
    const flp_status checked = flp_snippet_check_params(params, num_params, message, message_size);
    if (checked != FLP_OK)
        return checked;
    translator t = {.kind = kind,
                    .body = body,
                    .params = params,
                    .num_params = num_params,
                    .result = out,
                    .message = message,
                    .message_size = message_size};
    t.inputs = flp_snippet_inputs(kind, &t.num_inputs);
    bool has_return = false;
    const char *p = body;
    while (p && *p) {
        const char c = *p;
        if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
            emit(&t, c == '\n' ? "\n" : " ", 1);
            p++;
        } else if (c == '/' && (p[1] == '/' || p[1] == '*')) {
            const char *after = comment(&t, p);
            if (!after)
                fail_at(&t, p, "a comment that is never closed");
            p = after;
        } else if (is_digit(c) || (c == '.' && is_digit(p[1]))) {
            p = number(&t, p);
        } else if (is_alpha(c) || c == '_') {
            size_t len = 0;
            while (is_name_char(p[len]))
                len++;
            has_return |= len == 6 && strncmp(p, "return", 6) == 0;
            p = name(&t, p, len);
        } else if ((unsigned char)c >= 0x80) {
            fail_at(&t, p, "a character outside ASCII");
            p = NULL;
        } else {
            p = punctuation(&t, p);
        }
    }
    flp_status status = FLP_OK;
    if (!p)
        status = FLP_ERROR_INVALID_ARGUMENT;
    else if (t.depth > 0)
        status = fail_at(&t, p, "%d bracket%s never closed (the innermost: %c)", t.depth,
                         t.depth == 1 ? " is" : "s are", t.stack[t.depth - 1]);
    else if (!has_return)
        status = flp_report(FLP_ERROR_INVALID_ARGUMENT, message, message_size,
                            "%s has no return statement", flp_snippet_kind_name(kind));
    else if (t.out_of_memory || !t.out)
        status = flp_report(FLP_ERROR_OUT_OF_MEMORY, message, message_size,
                            "out of host memory translating %s", flp_snippet_kind_name(kind));
    if (status != FLP_OK) {
        flp_free(t.out);
        *out = (flp_snippet){0};
        return status;
    }
    out->text = t.out;
    return FLP_OK;
}

void flp_snippet_free(flp_snippet *snippet) {
    if (!snippet)
        return;
    flp_free(snippet->text);
    *snippet = (flp_snippet){0};
}

/* ---- the wrapper ------------------------------------------------------------------------- */

static const char *type_name(flp_variant_param_type type) {
    return type == FLP_PARAM_INT || type == FLP_PARAM_INT_BUFFER ? "int" : "float";
}

flp_status flp_snippet_wrap(flp_snippet_kind kind, const flp_snippet *snippet,
                            const flp_variant_param *params, int num_params, char **text) {
    if (!text)
        return FLP_ERROR_INVALID_ARGUMENT;
    *text = NULL;
    if ((unsigned)kind >= FLP_SNIPPET_NUM_KINDS || !snippet || !snippet->text ||
        flp_snippet_check_params(params, num_params, NULL, 0) != FLP_OK)
        return FLP_ERROR_INVALID_ARGUMENT;
    translator t = {.kind = kind};
    /* the readers of the buffers the body reads */
    for (int j = 0; j < num_params; j++) {
        const bool buffer =
            params[j].type == FLP_PARAM_FLOAT_BUFFER || params[j].type == FLP_PARAM_INT_BUFFER;
        if (!buffer || !(snippet->params_used >> j & 1u))
            continue;
        /* guarded: the snippets of one variant may read the same buffer */
        char line[256];
        snprintf(line, sizeof line,
                 "#ifndef FLP_READS_%s\n#define FLP_READS_%s\n"
                 "FLP_SNIPPET_FN %s flp_read_%s(int i) { return %s(%d, i); }\n#endif\n",
                 params[j].name, params[j].name, type_name(params[j].type), params[j].name,
                 params[j].type == FLP_PARAM_INT_BUFFER ? "FLP_USER_READ_INT"
                                                        : "FLP_USER_READ_FLOAT",
                 j);
        emit_text(&t, line);
    }
    /* the function: the kind's inputs as its parameters */
    emit_text(&t, "FLP_SNIPPET_FN ");
    emit_text(&t, kind == FLP_SNIPPET_LOGITS_MASK ? "bool" : "float");
    emit_text(&t, " flp_");
    emit_text(&t, flp_snippet_kind_name(kind));
    emit_text(&t, "(");
    int num_inputs = 0;
    const flp_snippet_input *inputs = flp_snippet_inputs(kind, &num_inputs);
    for (int i = 0; i < num_inputs; i++) {
        emit_text(&t, i ? ", " : "");
        emit_text(&t, type_name(inputs[i].type));
        emit_text(&t, " ");
        emit_text(&t, inputs[i].name);
    }
    emit_text(&t, ") {\n");
    /* the scalar parameters the body reads */
    for (int j = 0; j < num_params; j++) {
        if ((params[j].type != FLP_PARAM_FLOAT && params[j].type != FLP_PARAM_INT) ||
            !(snippet->params_used >> j & 1u))
            continue;
        char line[160];
        snprintf(line, sizeof line, "    %s %s = %s(%d);\n", type_name(params[j].type),
                 params[j].name,
                 params[j].type == FLP_PARAM_INT ? "FLP_USER_INT" : "FLP_USER_FLOAT", j);
        emit_text(&t, line);
    }
    /* the body, its lines numbered from 1 under the kind's name in the compilers' messages
     * ("logits_transform:2:" from glslang, "logits_transform(2):" from NVRTC) */
    emit_text(&t, "#line 1 \"");
    emit_text(&t, flp_snippet_kind_name(kind));
    emit_text(&t, "\"\n");
    emit_text(&t, snippet->text);
    emit_text(&t, "\n}\n");
    if (t.out_of_memory) {
        flp_free(t.out);
        return FLP_ERROR_OUT_OF_MEMORY;
    }
    *text = t.out;
    return FLP_OK;
}
