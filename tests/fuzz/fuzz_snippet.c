/* Fuzz target: the snippet language's checker and translator (core/snippet.h,
 * docs/variants.md), the gate user text passes before any compiler sees it. The input is a
 * kind, a choice of user parameters, then the body's bytes. Checked against the documentation:
 * - the result is FLP_OK or FLP_ERROR_INVALID_ARGUMENT (never another status, never a crash);
 * - a refusal writes no text and says where: "<kind> line L, column C: ..." with L and C inside
 *   the body, or "<kind> has no return statement";
 * - an accepted body was printable ASCII outside its comments, and its translation is printable
 *   ASCII with the body's line breaks (messages count the body's own lines), balanced
 *   brackets, and none of what the language refuses: no [ ] (buffer reads became calls), no #,
 *   quotes, C++ digraphs, ++ -- << >> -> or %=; the inputs and parameters it reads are among
 *   the kind's and the list's;
 * - translating the same body twice gives the same text and the same bits. */
#include "core/snippet.h"
#include "tests/fuzz/fuzz_input.h"

#include <string.h>

static const flp_variant_param PARAMS[] = {
    {"cap", FLP_PARAM_FLOAT},
    {"shift", FLP_PARAM_INT},
    {"sinks", FLP_PARAM_FLOAT_BUFFER},
    {"buckets", FLP_PARAM_INT_BUFFER},
};

/* Whether the body has a byte outside printable ASCII and white space outside its comments
 * (it must then have been refused). */
static bool has_foreign_byte(const char *body) {
    for (const char *p = body; *p; p++) {
        if (p[0] == '/' && p[1] == '/') {
            p += strcspn(p, "\n");
            if (!*p)
                return false;
        } else if (p[0] == '/' && p[1] == '*') {
            const char *end = strstr(p + 2, "*/");
            if (!end)
                return false; /* refused for the open comment anyway */
            p = end + 1;
        } else if ((unsigned char)*p >= 0x7f ||
                   ((unsigned char)*p < 0x20 && *p != '\n' && *p != '\t' && *p != '\r')) {
            return true;
        }
    }
    return false;
}

static size_t count_char(const char *s, char c) {
    size_t n = 0;
    for (; *s; s++)
        n += *s == c;
    return n;
}

/* The refusal's place: "<kind> line L, column C: " with L, C inside body, or the no-return
 * message. */
static void check_refusal(flp_snippet_kind kind, const char *body, const char *message) {
    const char *name = flp_snippet_kind_name(kind);
    const size_t n = strlen(name);
    FUZZ_CHECK(strncmp(message, name, n) == 0, "message \"%s\" does not start with %s", message,
               name);
    if (strcmp(message + n, " has no return statement") == 0)
        return;
    int line = 0, column = 0;
    FUZZ_CHECK(sscanf(message + n, " line %d, column %d:", &line, &column) == 2,
               "message \"%s\" has no line and column", message);
    const size_t lines = count_char(body, '\n') + 1;
    FUZZ_CHECK(line >= 1 && (size_t)line <= lines && column >= 1 &&
                   (size_t)column <= strlen(body) + 1,
               "message \"%s\": line or column outside the body (%zu lines, %zu bytes)", message,
               lines, strlen(body));
}

static void check_translation(flp_snippet_kind kind, const char *body, const flp_snippet *s,
                              int num_params) {
    static const char *const refused[] = {
        "[", "]", "#", "\"", "'", "<%", "%>", "<:", ":>", "%:", "++", "--", "<<", ">>", "->", "%="};
    FUZZ_CHECK(!has_foreign_byte(body), "a body with bytes outside ASCII was accepted");
    for (const char *p = s->text; *p; p++)
        FUZZ_CHECK(*p == '\n' || *p == '\t' || *p == '\r' ||
                       ((unsigned char)*p >= 0x20 && (unsigned char)*p < 0x7f),
                   "the translation has byte 0x%02x", (unsigned char)*p);
    for (size_t i = 0; i < sizeof refused / sizeof *refused; i++)
        FUZZ_CHECK(!strstr(s->text, refused[i]), "the translation holds %s: \"%s\"", refused[i],
                   s->text);
    FUZZ_CHECK(count_char(s->text, '\n') == count_char(body, '\n'),
               "the translation has other line breaks than the body");
    FUZZ_CHECK(count_char(s->text, '(') == count_char(s->text, ')') &&
                   count_char(s->text, '{') == count_char(s->text, '}'),
               "unbalanced brackets in \"%s\"", s->text);
    int num_inputs = 0;
    flp_snippet_inputs(kind, &num_inputs);
    FUZZ_CHECK((s->inputs_used >> num_inputs) == 0 && (s->params_used >> num_params) == 0,
               "inputs 0x%x or parameters 0x%x beyond the kind's %d and the list's %d",
               s->inputs_used, s->params_used, num_inputs, num_params);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_input in = {data, size};
    const flp_snippet_kind kind = (flp_snippet_kind)(fuzz_u8(&in) % FLP_SNIPPET_NUM_KINDS);
    const int num_params = fuzz_u8(&in) % 5;
    char *body = malloc(in.size + 1);
    FUZZ_CHECK(body != NULL, "out of memory");
    memcpy(body, in.data, in.size);
    body[in.size] = '\0'; /* a NUL inside ends the body early, as for a C string */
    flp_snippet s = {0}, again = {0};
    char message[512] = "", message2[512] = "";
    const flp_status status =
        flp_snippet_translate(kind, body, PARAMS, num_params, &s, message, sizeof message);
    const flp_status status2 =
        flp_snippet_translate(kind, body, PARAMS, num_params, &again, message2, sizeof message2);
    FUZZ_CHECK(status == status2 && strcmp(message, message2) == 0,
               "two translations of one body differ (%d, %d)", (int)status, (int)status2);
    if (status == FLP_OK) {
        FUZZ_CHECK(s.text && again.text && strcmp(s.text, again.text) == 0 &&
                       s.inputs_used == again.inputs_used && s.params_used == again.params_used,
                   "two translations of one body differ");
        check_translation(kind, body, &s, num_params);
    } else {
        FUZZ_CHECK(status == FLP_ERROR_INVALID_ARGUMENT, "status %d", (int)status);
        FUZZ_CHECK(s.text == NULL, "a refusal left text");
        check_refusal(kind, body, message);
    }
    flp_snippet_free(&s);
    flp_snippet_free(&again);
    free(body);
    return 0;
}
