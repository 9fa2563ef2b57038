/* The public state merges (flp_merge_state, flp_merge_state_in_place, flp_merge_states):
 * validate the states, the mask or indptr and the overlaps, then queue the backend's merge
 * kernel (core/merge_params.h). */
#include "core/backend.h"
#include "core/merge_params.h"
#include "core/tensor.h"

#include <stdio.h>
#include <string.h>

static bool is_state_dtype(flp_dtype t) {
    return t == FLP_DTYPE_F32 || t == FLP_DTYPE_F16 || t == FLP_DTYPE_BF16;
}

/* The extents of one state: rows x num_heads x head_dim. */
typedef struct state_shape {
    int64_t rows, heads, dim;
} state_shape;

/* Checks state `name` (o and lse, lse optional when lse_optional) against shape; a shape extent
 * < 0 is taken from the state's o (and written back). */
static flp_status check_state(flp_context *ctx, const char *fn, const char *name,
                              const flp_state *s, bool lse_optional, state_shape *shape) {
    char o_name[48], lse_name[48];
    snprintf(o_name, sizeof o_name, "%s.o", name);
    snprintf(lse_name, sizeof lse_name, "%s.lse", name);
    if (!is_state_dtype(s->o.dtype))
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: %s.dtype %s is not f32, f16 or bf16",
                        fn, o_name, flp_dtype_name(s->o.dtype));
    flp_tensor_expect e = {o_name, s->o.dtype, 3, {shape->rows, shape->heads, shape->dim}, false};
    flp_status status = flp_tensor_check(ctx, fn, &s->o, &e);
    if (status != FLP_OK)
        return status;
    shape->rows = s->o.shape[0];
    shape->heads = s->o.shape[1];
    shape->dim = s->o.shape[2];
    if (lse_optional && !s->lse.buf)
        return FLP_OK;
    flp_tensor_expect l = {lse_name, FLP_DTYPE_F32, 2, {shape->rows, shape->heads}, false};
    return flp_tensor_check(ctx, fn, &s->lse, &l);
}

/* Limits of the kernels' indexing: rows and heads in int32, every element offset in int64. */
static flp_status check_extents(flp_context *ctx, const char *fn, const state_shape *s) {
    if (s->heads < 1 || s->dim < 1)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: num_heads = %lld and head_dim = %lld must be at least 1", fn,
                        (long long)s->heads, (long long)s->dim);
    if (s->rows > INT32_MAX || s->heads > INT32_MAX || s->dim > INT32_MAX ||
        s->rows * s->heads > INT32_MAX)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: %lld rows x %lld heads x %lld: rows x heads and head_dim must be "
                        "below 2^31",
                        fn, (long long)s->rows, (long long)s->heads, (long long)s->dim);
    return FLP_OK;
}

/* Whether two views are the same elements in the same order (an in-place merge). */
static bool same_view(const flp_tensor *a, const flp_tensor *b) {
    if (a->buf != b->buf || a->offset != b->offset || a->dtype != b->dtype || a->ndim != b->ndim)
        return false;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i] || a->stride[i] != b->stride[i])
            return false;
    return true;
}

static void set_state_a(flp_merge_params *p, const flp_state *s) {
    p->o_a = flp_tensor_address(&s->o);
    p->lse_a = flp_tensor_address(&s->lse);
    p->o_a_stride_row = s->o.stride[0];
    p->o_a_stride_head = s->o.stride[1];
    p->lse_a_stride_row = s->lse.stride[0];
    p->a_dtype = (int32_t)s->o.dtype;
}

static void set_state_b(flp_merge_params *p, const flp_state *s) {
    p->o_b = flp_tensor_address(&s->o);
    p->lse_b = flp_tensor_address(&s->lse);
    p->o_b_stride_row = s->o.stride[0];
    p->o_b_stride_head = s->o.stride[1];
    p->lse_b_stride_row = s->lse.stride[0];
    p->b_dtype = (int32_t)s->o.dtype;
}

static void set_out(flp_merge_params *p, const flp_state *s, const state_shape *shape) {
    p->o_out = flp_tensor_address(&s->o);
    p->out_stride_row = s->o.stride[0];
    p->out_stride_head = s->o.stride[1];
    p->out_dtype = (int32_t)s->o.dtype;
    if (s->lse.buf) {
        p->lse_out = flp_tensor_address(&s->lse);
        p->lse_out_stride_row = s->lse.stride[0];
    }
    p->rows = (int32_t)shape->rows;
    p->num_heads = (int32_t)shape->heads;
    p->head_dim = (int32_t)shape->dim;
}

static flp_status launch(flp_context *ctx, const char *fn, const flp_merge_params *p) {
    if (p->rows == 0)
        return FLP_OK;
    if (!ctx->ops->merge_run)
        return flp_fail(ctx, FLP_ERROR_UNSUPPORTED, "%s: the %s backend has no state merge", fn,
                        ctx->ops->name);
    flp_status status = ctx->ops->merge_run(ctx, p);
    if (status != FLP_OK)
        flp_error_prefix(ctx, fn);
    return status;
}

/* The overlaps of a pair merge: an output view equal to a's (same role), or to b's when
 * b_in_place, is an in-place merge, which the kernels order (every invocation reads its elements
 * and its row's lse before the lse is written); any other overlap is refused. a, b and out name
 * the states in messages. */
static flp_status check_pair_overlaps(flp_context *ctx, const char *fn, const flp_state *a,
                                      const flp_state *b, const flp_state *out,
                                      const flp_tensor *mask, const char *const names[3],
                                      bool b_in_place) {
    const bool lse_out = out->lse.buf != NULL;
    const bool o_in_a = same_view(&out->o, &a->o);
    const bool o_in_b = b_in_place && same_view(&out->o, &b->o);
    const bool l_in_a = lse_out && same_view(&out->lse, &a->lse);
    const bool l_in_b = b_in_place && lse_out && same_view(&out->lse, &b->lse);
    /* n: out.o, out.lse, a.o, a.lse, b.o, b.lse under their names */
    const char *const owner[3] = {names[2], names[0], names[1]}, *const part[2] = {"o", "lse"};
    char n[6][48];
    for (int i = 0; i < 6; i++)
        snprintf(n[i], sizeof n[i], "%s.%s", owner[i / 2], part[i % 2]);
    const flp_named_tensor outputs[] = {{n[0], &out->o}, {n[1], lse_out ? &out->lse : NULL}};
    const flp_named_tensor inputs[] = {{n[2], o_in_a ? NULL : &a->o},
                                       {n[3], l_in_a ? NULL : &a->lse},
                                       {n[4], o_in_b ? NULL : &b->o},
                                       {n[5], l_in_b ? NULL : &b->lse},
                                       {"mask", mask}};
    return flp_tensor_check_disjoint(ctx, fn, outputs, 2, inputs, 5);
}

/* names: a, b and out in messages; b_in_place: out may be b's view (flp_merge_state). */
static flp_status merge_pair(flp_context *ctx, const char *fn, const flp_state *a,
                             const flp_state *b, const flp_state *out, const flp_tensor *mask,
                             const char *const names[3], bool b_in_place) {
    state_shape shape = {-1, -1, -1};
    flp_status status = check_state(ctx, fn, names[0], a, false, &shape);
    if (status == FLP_OK)
        status = check_extents(ctx, fn, &shape);
    if (status == FLP_OK)
        status = check_state(ctx, fn, names[1], b, false, &shape);
    if (status == FLP_OK)
        status = check_state(ctx, fn, names[2], out, true, &shape);
    if (status == FLP_OK && mask) {
        flp_tensor_expect e = {"mask", FLP_DTYPE_U8, 1, {shape.rows}, false};
        status = flp_tensor_check(ctx, fn, mask, &e);
    }
    if (status == FLP_OK)
        status = check_pair_overlaps(ctx, fn, a, b, out, mask, names, b_in_place);
    if (status != FLP_OK)
        return status;
    flp_merge_params p;
    memset(&p, 0, sizeof p);
    p.mode = FLP_MERGE_MODE_PAIR;
    set_state_a(&p, a);
    set_state_b(&p, b);
    set_out(&p, out, &shape);
    if (mask)
        p.mask = flp_tensor_address(mask);
    return launch(ctx, fn, &p);
}

flp_status flp_merge_state(flp_context *ctx, const flp_merge_state_args *args) {
    static const char *const fn = "flp_merge_state";
    if (!ctx)
        return FLP_ERROR_INVALID_ARGUMENT;
    flp_clear_error(ctx);
    if (!args)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: args is NULL", fn);
    static const char *const names[3] = {"a", "b", "out"};
    return merge_pair(ctx, fn, &args->a, &args->b, &args->out, NULL, names, true);
}

flp_status flp_merge_state_in_place(flp_context *ctx, const flp_merge_state_in_place_args *args) {
    static const char *const fn = "flp_merge_state_in_place";
    if (!ctx)
        return FLP_ERROR_INVALID_ARGUMENT;
    flp_clear_error(ctx);
    if (!args)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: args is NULL", fn);
    if (!args->state.lse.buf)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: state.lse.buf is NULL", fn);
    /* out = a = state; other (b) must not overlap state at all */
    static const char *const names[3] = {"state", "other", "state"};
    return merge_pair(ctx, fn, &args->state, &args->other, &args->state, args->mask, names, false);
}

/* The rows and the state ranges of flp_merge_states. */
static flp_status check_ranges(flp_context *ctx, const char *fn, const flp_merge_states_args *a,
                               int64_t num_states, int64_t *rows) {
    if (a->indptr) {
        if (a->states_per_row != 0)
            return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                            "%s: states_per_row = %d must be 0 when indptr is given", fn,
                            a->states_per_row);
        flp_tensor_expect e = {"indptr", FLP_DTYPE_I32, 1, {-1}, false};
        flp_status status = flp_tensor_check(ctx, fn, a->indptr, &e);
        if (status != FLP_OK)
            return status;
        if (a->indptr->shape[0] < 1 || a->indptr->shape[0] - 1 > INT32_MAX)
            return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                            "%s: indptr has %lld entries: rows + 1, with 0 <= rows < 2^31", fn,
                            (long long)a->indptr->shape[0]);
        *rows = a->indptr->shape[0] - 1;
        return FLP_OK;
    }
    if (a->states_per_row < 1)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: states_per_row = %d must be at least 1 without indptr", fn,
                        a->states_per_row);
    if (num_states % a->states_per_row != 0)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: %lld states are not a whole number of rows of states_per_row = %d", fn,
                        (long long)num_states, a->states_per_row);
    *rows = num_states / a->states_per_row;
    return FLP_OK;
}

flp_status flp_merge_states(flp_context *ctx, const flp_merge_states_args *args) {
    static const char *const fn = "flp_merge_states";
    if (!ctx)
        return FLP_ERROR_INVALID_ARGUMENT;
    flp_clear_error(ctx);
    if (!args)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: args is NULL", fn);
    state_shape in = {-1, -1, -1};
    flp_status status = check_state(ctx, fn, "states", &args->states, false, &in);
    if (status != FLP_OK)
        return status;
    if (in.rows > INT32_MAX)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: %lld states, more than 2^31 - 1", fn,
                        (long long)in.rows);
    int64_t rows = 0;
    if ((status = check_ranges(ctx, fn, args, in.rows, &rows)) != FLP_OK)
        return status;
    state_shape out = {rows, in.heads, in.dim};
    if ((status = check_extents(ctx, fn, &out)) != FLP_OK)
        return status;
    if ((status = check_state(ctx, fn, "out", &args->out, true, &out)) != FLP_OK)
        return status;
    const flp_named_tensor outputs[] = {{"out.o", &args->out.o},
                                        {"out.lse", args->out.lse.buf ? &args->out.lse : NULL}};
    const flp_named_tensor inputs[] = {
        {"states.o", &args->states.o}, {"states.lse", &args->states.lse}, {"indptr", args->indptr}};
    if ((status = flp_tensor_check_disjoint(ctx, fn, outputs, 2, inputs, 3)) != FLP_OK)
        return status;
    flp_merge_params p;
    memset(&p, 0, sizeof p);
    p.mode = FLP_MERGE_MODE_RAGGED;
    set_state_a(&p, &args->states);
    set_out(&p, &args->out, &out);
    p.num_states = (int32_t)in.rows;
    p.states_per_row = args->states_per_row;
    if (args->indptr)
        p.indptr = flp_tensor_address(args->indptr);
    return launch(ctx, fn, &p);
}
