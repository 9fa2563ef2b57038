/* A variant's snippets as one program for the kernels, and a run's parameter values. */
#include "core/variant_program.h"
#include "core/alloc.h"
#include "core/sha256.h"
#include "core/tensor.h"

#include <stdio.h>
#include <string.h>

void flp_variant_snippet_bodies(const flp_variant *v, const char *bodies[FLP_SNIPPET_NUM_KINDS]) {
    bodies[FLP_SNIPPET_LOGITS_TRANSFORM] = v->logits_transform;
    bodies[FLP_SNIPPET_LOGITS_MASK] = v->logits_mask;
    bodies[FLP_SNIPPET_QUERY_TRANSFORM] = v->query_transform;
    bodies[FLP_SNIPPET_OUTPUT_TRANSFORM] = v->output_transform;
}

bool flp_variant_has_snippets(const flp_variant *v) {
    return v->logits_transform || v->logits_mask || v->query_transform || v->output_transform;
}

void flp_variant_drop_snippets(flp_variant *v) {
    v->logits_transform = v->logits_mask = v->query_transform = v->output_transform = NULL;
    v->params = NULL;
}

/* The kernels' switch for a kind: FLP_VARIANT_LOGITS_TRANSFORM, ... */
static void define_line(flp_snippet_kind kind, char *line, size_t size) {
    const char *name = flp_snippet_kind_name(kind);
    char upper[40];
    size_t n = 0;
    for (; name[n] && n + 1 < sizeof upper; n++)
        upper[n] = (char)(name[n] >= 'a' && name[n] <= 'z' ? name[n] - 'a' + 'A' : name[n]);
    upper[n] = '\0';
    snprintf(line, size, "#define FLP_VARIANT_%s 1\n", upper);
}

/* Appends text to *out (length *len), growing it; false when out of memory. */
static bool append(char **out, size_t *len, const char *text) {
    const size_t n = strlen(text);
    char *grown = flp_realloc(*out, *len + n + 1);
    if (!grown)
        return false;
    memcpy(grown + *len, text, n + 1);
    *out = grown;
    *len += n;
    return true;
}

flp_status flp_variant_program_build(flp_context *ctx, const char *fn, const flp_variant *v,
                                     flp_variant_program **out) {
    *out = NULL;
    if (!flp_variant_has_snippets(v))
        return FLP_OK;
    flp_variant_program *p = flp_calloc(1, sizeof *p);
    if (!p)
        return flp_fail(ctx, FLP_ERROR_OUT_OF_MEMORY, "%s: out of host memory", fn);
    const char *bodies[FLP_SNIPPET_NUM_KINDS];
    flp_variant_snippet_bodies(v, bodies);
    size_t len = 0;
    bool ok = true;
    flp_status status = FLP_OK;
    /* the switches first: a kernel's call sites test them after the functions are defined */
    for (int k = 0; k < FLP_SNIPPET_NUM_KINDS && ok; k++) {
        if (!bodies[k])
            continue;
        p->kinds |= 1u << k;
        char line[64];
        define_line((flp_snippet_kind)k, line, sizeof line);
        ok = append(&p->text, &len, line);
    }
    for (int k = 0; k < FLP_SNIPPET_NUM_KINDS && ok && status == FLP_OK; k++) {
        if (!bodies[k])
            continue;
        char why[400];
        flp_snippet snippet;
        status = flp_snippet_translate((flp_snippet_kind)k, bodies[k], v->params, v->num_params,
                                       &snippet, why, sizeof why);
        if (status != FLP_OK)
            break; /* validated before: only out of memory */
        char *function = NULL;
        status =
            flp_snippet_wrap((flp_snippet_kind)k, &snippet, v->params, v->num_params, &function);
        flp_snippet_free(&snippet);
        if (status == FLP_OK)
            ok = append(&p->text, &len, function);
        flp_free(function);
    }
    if (!ok || status != FLP_OK) {
        flp_variant_program_free(p);
        return flp_fail(ctx,
                        ok && status != FLP_ERROR_OUT_OF_MEMORY ? status : FLP_ERROR_OUT_OF_MEMORY,
                        "%s: out of host memory for the variant's snippets", fn);
    }
    flp_sha256_of(p->text, len, p->digest);
    p->num_params = v->num_params;
    for (int j = 0; j < v->num_params; j++) {
        p->param_types[j] = v->params[j].type;
        snprintf(p->param_names[j], sizeof p->param_names[j], "%s", v->params[j].name);
    }
    *out = p;
    return FLP_OK;
}

void flp_variant_program_free(flp_variant_program *program) {
    if (!program)
        return;
    flp_free(program->text);
    flp_free(program);
}

bool flp_variant_program_same(const flp_variant_program *a, const flp_variant_program *b) {
    if (!a || !b)
        return a == b;
    /* the parameters' declarations reach the kernels through the text (their indices) */
    return memcmp(a->digest, b->digest, sizeof a->digest) == 0 && a->num_params == b->num_params &&
           memcmp(a->param_types, b->param_types, sizeof a->param_types) == 0;
}

static const char *type_text(flp_variant_param_type type) {
    switch (type) {
    case FLP_PARAM_FLOAT:
        return "float";
    case FLP_PARAM_INT:
        return "int";
    case FLP_PARAM_FLOAT_BUFFER:
        return "float buffer";
    case FLP_PARAM_INT_BUFFER:
        return "int buffer";
    }
    return "?";
}

/* Parameter j's entry from its value (the value's name already matched). */
static flp_status bind_one(flp_context *ctx, const char *fn, const flp_variant_program *p, int j,
                           int32_t index, const flp_param_value *value, flp_user_param *entry) {
    const flp_variant_param_type type = p->param_types[j];
    const bool buffer = type == FLP_PARAM_FLOAT_BUFFER || type == FLP_PARAM_INT_BUFFER;
    if (!buffer) {
        if (value->buffer)
            return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                            "%s: params[%d] (\"%s\") is a %s parameter: it takes a value, not a "
                            "buffer",
                            fn, index, p->param_names[j], type_text(type));
        uint32_t bits;
        if (type == FLP_PARAM_FLOAT)
            memcpy(&bits, &value->f, sizeof bits);
        else
            memcpy(&bits, &value->i, sizeof bits);
        entry->value = bits;
        entry->count = 0;
        return FLP_OK;
    }
    if (!value->buffer)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: params[%d] (\"%s\") is a %s parameter: its buffer is NULL", fn, index,
                        p->param_names[j], type_text(type));
    char name[64];
    snprintf(name, sizeof name, "params[%d] (\"%s\")", index, p->param_names[j]);
    const flp_tensor_expect expect = {
        .name = name,
        .dtype = type == FLP_PARAM_FLOAT_BUFFER ? FLP_DTYPE_F32 : FLP_DTYPE_I32,
        .ndim = 1,
        .shape = {-1},
    };
    flp_status status = flp_tensor_check(ctx, fn, value->buffer, &expect);
    if (status != FLP_OK)
        return status;
    const flp_tensor *t = value->buffer;
    if (t->shape[0] < 1 || t->stride[0] != 1)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: %s must be contiguous with at least one element (shape [%lld], "
                        "stride [%lld])",
                        fn, name, (long long)t->shape[0], (long long)t->stride[0]);
    entry->value = flp_tensor_address(t);
    /* the kernels index with 32-bit ints: more elements than that are never reached */
    entry->count = t->shape[0] < INT32_MAX ? t->shape[0] : INT32_MAX;
    return FLP_OK;
}

void flp_variant_param_inputs(const flp_param_value *values, int32_t num_values,
                              flp_named_tensor *inputs, int *count) {
    for (int32_t i = 0; i < num_values; i++)
        if (values[i].buffer)
            inputs[(*count)++] = (flp_named_tensor){values[i].name, values[i].buffer};
}

flp_status flp_variant_program_bind(flp_context *ctx, const char *fn,
                                    const flp_variant_program *program,
                                    const flp_param_value *values, int32_t num_values,
                                    flp_user_param *block) {
    const int32_t declared = program ? program->num_params : 0;
    if (num_values < 0 || (num_values > 0 && !values))
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: num_params = %d with params %s", fn,
                        num_values, values ? "given" : "NULL");
    if (num_values != declared)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: num_params = %d, but the plan's variant declares %d parameter%s "
                        "(each is given once)",
                        fn, num_values, declared, declared == 1 ? "" : "s");
    if (!program)
        return FLP_OK; /* no values, and no block to fill (runs without snippets skip it) */
    memset(block, 0, FLP_USER_PARAMS_BYTES);
    bool seen[FLP_SNIPPET_MAX_PARAMS] = {false};
    for (int32_t i = 0; i < num_values; i++) {
        const char *name = values[i].name;
        if (!name)
            return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: params[%d].name is NULL", fn, i);
        int j = 0;
        while (j < declared && strcmp(program->param_names[j], name) != 0)
            j++;
        if (j == declared)
            return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                            "%s: params[%d].name = \"%.40s\" is not a parameter of the plan's "
                            "variant",
                            fn, i, name);
        if (seen[j])
            return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                            "%s: params[%d] gives \"%s\" a second time", fn, i, name);
        seen[j] = true;
        flp_status status = bind_one(ctx, fn, program, j, i, &values[i], &block[j]);
        if (status != FLP_OK)
            return status;
    }
    return FLP_OK;
}
