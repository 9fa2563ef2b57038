/* Cascade attention (flp_cascade_*): one plan per level over the same queries, each level's
 * state written into a stacked scratch, then one ragged merge of the levels' states per row
 * (docs/api.md, "Cascade"). Everything here composes public pieces: a level is a prefill or
 * decode partition of its own flp_plan, the merge is flp_merge_states. */
#include "core/alloc.h"
#include "core/batch_args.h"
#include "core/object_memory.h"
#include "core/plan.h"
#include "core/prefill_region.h"
#include "core/tensor.h"
#include "core/variant.h"

#include <stdio.h>
#include <string.h>

/* Each level's plan region starts on this (flp_plan_desc.workspace_offset's rule). */
#define CASCADE_ALIGN FLP_WORKSPACE_ALIGN

/* The levels' states, row-major [rows, level, head, dim]: flp_merge_states with states_per_row =
 * num_levels folds each row's levels in level order. Queries and outputs are 16-bit. */
#define STATE_ELEMENT_BYTES 2

struct flp_cascade {
    flp_context *ctx;
    flp_cascade_desc desc;
    flp_object_memory mem; /* the cascade's region: its own buffer or the caller's workspace */
    size_t plan_offset[FLP_CASCADE_MAX_LEVELS]; /* [num_levels] from base */
    size_t states_o, states_lse;                /* from base */
    size_t total;                               /* bytes of the region */
    flp_plan *levels[FLP_CASCADE_MAX_LEVELS];   /* [num_levels] */
    /* what the last plan decided */
    bool planned;
    int32_t num_rows;
    flp_dtype q_dtype;
};

/* ---- creation -------------------------------------------------------------------------- */

static flp_status check_desc(flp_context *ctx, const char *fn, const flp_cascade_desc *d) {
    if (!d)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: desc is NULL", fn);
    if (d->num_levels < 1 || d->num_levels > FLP_CASCADE_MAX_LEVELS)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: num_levels = %d must be in 1..%d", fn,
                        d->num_levels, FLP_CASCADE_MAX_LEVELS);
    if (d->max_qo_rows < 1 || d->max_qo_rows > FLP_MAX_QO_ROWS)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT, "%s: max_qo_rows = %d must be in 1..%d",
                        fn, d->max_qo_rows, FLP_MAX_QO_ROWS);
    for (int32_t l = 0; l < d->num_levels; l++) {
        const flp_cascade_level_desc *level = &d->levels[l];
        if (level->max_groups < 1 || level->max_pages < 1)
            return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                            "%s: levels[%d]: max_groups = %d and max_pages = %d must be > 0", fn, l,
                            level->max_groups, level->max_pages);
        if (level->one_row_per_group && level->max_groups > d->max_qo_rows)
            return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                            "%s: levels[%d] has one row per group but max_groups = %d exceeds "
                            "max_qo_rows = %d",
                            fn, l, level->max_groups, d->max_qo_rows);
    }
    return flp_check_workspace(ctx, fn, d->workspace, d->workspace_offset);
}

/* Level l's plan capacities (workspace set by the caller). */
static flp_plan_desc level_plan_desc(const flp_cascade_desc *d, int32_t l) {
    const flp_cascade_level_desc *level = &d->levels[l];
    flp_plan_desc p = {
        .max_batch_size = level->max_groups,
        .max_qo_len = 1,
        .max_pages = level->max_pages,
        .max_qo_rows = level->one_row_per_group ? 0 : d->max_qo_rows,
        .num_qo_heads = d->num_qo_heads,
        .num_kv_heads = d->num_kv_heads,
        .head_dim = d->head_dim,
        /* the decode kernel proper: a one-row level is a decode step */
        .decode_kernel = FLP_DECODE_KERNEL_VECTOR,
    };
    return p;
}

/* The layout of the cascade's region: the levels' plans, then the states. */
static flp_status compute_layout(flp_context *ctx, const char *fn, flp_cascade *c) {
    const flp_cascade_desc *d = &c->desc;
    size_t at = 0;
    for (int32_t l = 0; l < d->num_levels; l++) {
        flp_plan_desc p = level_plan_desc(d, l);
        size_t bytes = 0;
        flp_status status = flp_plan_workspace_size(ctx, &p, &bytes);
        if (status != FLP_OK) {
            char what[64];
            snprintf(what, sizeof what, "%s: levels[%d]", fn, l);
            flp_error_prefix(ctx, what);
            return status;
        }
        c->plan_offset[l] = at;
        at = FLP_ALIGN_UP(at + bytes, CASCADE_ALIGN);
    }
    size_t slots = (size_t)d->max_qo_rows * (size_t)d->num_levels * (size_t)d->num_qo_heads;
    c->states_o = at;
    at = FLP_ALIGN_UP(at + slots * (size_t)d->head_dim * STATE_ELEMENT_BYTES, CASCADE_ALIGN);
    c->states_lse = at;
    at = FLP_ALIGN_UP(at + slots * sizeof(float), CASCADE_ALIGN);
    c->total = at;
    return FLP_OK;
}

flp_status flp_cascade_workspace_size(flp_context *ctx, const flp_cascade_desc *desc,
                                      size_t *bytes) {
    static const char *fn = "flp_cascade_workspace_size";
    flp_status status = flp_check_out_call(ctx, fn, "bytes", bytes);
    if (status == FLP_OK)
        status = check_desc(ctx, fn, desc);
    if (status != FLP_OK)
        return status;
    flp_cascade shape = {.desc = *desc};
    shape.desc.workspace = NULL;
    if ((status = compute_layout(ctx, fn, &shape)) == FLP_OK)
        *bytes = shape.total;
    return status;
}

static flp_status create_levels(flp_context *ctx, const char *fn, flp_cascade *c) {
    for (int32_t l = 0; l < c->desc.num_levels; l++) {
        flp_plan_desc p = level_plan_desc(&c->desc, l);
        p.workspace = c->mem.buffer;
        p.workspace_offset = c->mem.base + c->plan_offset[l];
        flp_status status = flp_plan_create(ctx, &p, &c->levels[l]);
        if (status != FLP_OK) {
            char what[64];
            snprintf(what, sizeof what, "%s: levels[%d]", fn, l);
            flp_error_prefix(ctx, what);
            return status;
        }
    }
    return FLP_OK;
}

flp_status flp_cascade_create(flp_context *ctx, const flp_cascade_desc *desc, flp_cascade **out) {
    static const char *fn = "flp_cascade_create";
    flp_status status = flp_check_out_call(ctx, fn, "out", out);
    if (status != FLP_OK)
        return status;
    *out = NULL;
    if ((status = check_desc(ctx, fn, desc)) != FLP_OK)
        return status;
    flp_cascade *c = flp_calloc(1, sizeof *c);
    if (!c)
        return flp_fail(ctx, FLP_ERROR_OUT_OF_MEMORY, "%s: out of host memory for the cascade", fn);
    c->ctx = ctx;
    c->desc = *desc;
    status = compute_layout(ctx, fn, c);
    if (status == FLP_OK)
        status =
            flp_object_memory_attach(ctx, fn, desc->workspace, desc->workspace_offset, c->total,
                                     "the cascade", "flp_cascade_workspace_size", &c->mem);
    if (status == FLP_OK)
        status = create_levels(ctx, fn, c);
    if (status != FLP_OK) {
        flp_cascade_destroy(c);
        return status;
    }
    *out = c;
    return FLP_OK;
}

void flp_cascade_destroy(flp_cascade *c) {
    if (!c)
        return;
    for (int32_t l = 0; l < FLP_CASCADE_MAX_LEVELS; l++)
        flp_plan_destroy(c->levels[l]);
    flp_object_memory_release(&c->mem);
    flp_free(c);
}

/* ---- plan ------------------------------------------------------------------------------ */

static flp_status check_call(flp_context *ctx, const char *fn, const flp_cascade *c,
                             const void *args) {
    return flp_check_object_call(ctx, fn, "cascade", c, c ? c->ctx : NULL, args);
}

/* What a shared level cannot give: positions (docs/api.md, "Cascade"). */
static flp_status check_variant(flp_context *ctx, const char *fn, const flp_variant *v) {
    if (v->mask != FLP_MASK_NONE && v->mask != FLP_MASK_CAUSAL)
        return flp_fail(ctx, FLP_ERROR_UNSUPPORTED,
                        "%s: variant.mask = %d: a cascade takes FLP_MASK_NONE or FLP_MASK_CAUSAL",
                        fn, (int)v->mask);
    if (v->pos_encoding != FLP_POS_NONE)
        return flp_fail(ctx, FLP_ERROR_UNSUPPORTED,
                        "%s: variant.pos_encoding = %d: the rows of a shared level sit at "
                        "different positions; apply RoPE to q and k before (FLP_POS_NONE)",
                        fn, (int)v->pos_encoding);
    if (v->use_window)
        return flp_fail(ctx, FLP_ERROR_UNSUPPORTED,
                        "%s: variant.use_window: the sliding window needs positions across "
                        "levels, which a cascade does not give",
                        fn);
    return FLP_OK;
}

/* Level l's rows and groups (the page tables are checked by the level's plan call). */
static flp_status check_level(flp_context *ctx, const char *fn, const flp_cascade *c, int32_t l,
                              const flp_cascade_plan_args *a) {
    const flp_cascade_level *level = &a->levels[l];
    const flp_cascade_level_desc *d = &c->desc.levels[l];
    if (level->num_groups < 1 || level->num_groups > d->max_groups)
        return flp_fail(ctx,
                        level->num_groups < 1 ? FLP_ERROR_INVALID_ARGUMENT : FLP_ERROR_CAPACITY,
                        "%s: levels[%d].num_groups = %d must be in 1..max_groups (%d)", fn, l,
                        level->num_groups, d->max_groups);
    char name[48];
    snprintf(name, sizeof name, "levels[%d].qo_indptr", l);
    flp_status status = flp_check_indptr(ctx, fn, name, level->qo_indptr, level->num_groups,
                                         a->num_rows, "num_rows");
    if (status != FLP_OK)
        return status;
    if (level->qo_indptr[level->num_groups] != a->num_rows)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: %s[%d] = %d: every level's groups must cover all num_rows = %d rows",
                        fn, name, level->num_groups, level->qo_indptr[level->num_groups],
                        a->num_rows);
    if (!d->one_row_per_group)
        return FLP_OK;
    for (int32_t g = 0; g < level->num_groups; g++)
        if (level->qo_indptr[g + 1] - level->qo_indptr[g] != 1)
            return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                            "%s: levels[%d] was created with one_row_per_group but group %d has "
                            "%d rows",
                            fn, l, g, level->qo_indptr[g + 1] - level->qo_indptr[g]);
    return FLP_OK;
}

static flp_status check_plan_args(flp_context *ctx, const char *fn, const flp_cascade *c,
                                  const flp_cascade_plan_args *a) {
    if (a->num_rows < 1 || a->num_rows > c->desc.max_qo_rows)
        return flp_fail(ctx, a->num_rows < 1 ? FLP_ERROR_INVALID_ARGUMENT : FLP_ERROR_CAPACITY,
                        "%s: num_rows = %d must be in 1..max_qo_rows (%d)", fn, a->num_rows,
                        c->desc.max_qo_rows);
    flp_status status = check_variant(ctx, fn, &a->variant);
    for (int32_t l = 0; l < c->desc.num_levels && status == FLP_OK; l++)
        status = check_level(ctx, fn, c, l, a);
    return status;
}

/* Plans level l on its own plan. */
static flp_status plan_level(flp_context *ctx, flp_cascade *c, int32_t l,
                             const flp_cascade_plan_args *a) {
    const flp_cascade_level *level = &a->levels[l];
    flp_variant v = a->variant;
    if (l + 1 < c->desc.num_levels) /* every earlier level is seen whole */
        v.mask = FLP_MASK_NONE;
    flp_plan *plan = c->levels[l];
    if (c->desc.levels[l].one_row_per_group) {
        flp_decode_plan_args d = {
            .batch_size = level->num_groups,
            .qo_len = 1,
            .page_size = a->page_size,
            .kv_layout = a->kv_layout,
            .kv_indptr = level->kv_indptr,
            .kv_indices = level->kv_indices,
            .kv_last_page_len = level->kv_last_page_len,
            .variant = v,
        };
        return flp_decode_plan(ctx, plan, &d);
    }
    flp_prefill_plan_args p = {
        .batch_size = level->num_groups,
        .qo_indptr = level->qo_indptr,
        .kv_storage = FLP_KV_PAGED,
        .kv_indptr = level->kv_indptr,
        .kv_indices = level->kv_indices,
        .kv_last_page_len = level->kv_last_page_len,
        .page_size = a->page_size,
        .kv_layout = a->kv_layout,
        .variant = v,
    };
    /* positions exist in the last level only, where a causal mask needs them */
    const flp_prefill_plan_options o = {.rows_beyond_keys = v.mask == FLP_MASK_NONE};
    return flp_prefill_plan_internal(ctx, plan, &p, &o);
}

flp_status flp_cascade_plan(flp_context *ctx, flp_cascade *c, const flp_cascade_plan_args *args) {
    static const char *fn = "flp_cascade_plan";
    flp_status status = check_call(ctx, fn, c, args);
    if (status != FLP_OK)
        return status;
    if ((status = check_plan_args(ctx, fn, c, args)) != FLP_OK)
        return status;
    flp_variant resolved;
    status =
        flp_variant_check_for_plan(ctx, fn, &args->variant, c->desc.head_dim, false, &resolved);
    if (status != FLP_OK)
        return status;
    c->planned = false;
    for (int32_t l = 0; l < c->desc.num_levels; l++) {
        if ((status = plan_level(ctx, c, l, args)) != FLP_OK) {
            char what[64];
            snprintf(what, sizeof what, "%s: levels[%d]", fn, l);
            flp_error_prefix(ctx, what);
            return status;
        }
    }
    c->planned = true;
    c->num_rows = args->num_rows;
    c->q_dtype = resolved.q_dtype;
    return FLP_OK;
}

/* ---- run ------------------------------------------------------------------------------- */

/* Level l's state rows in the stacked scratch: o [rows, heads, dim], lse [rows, heads], each
 * row num_levels states apart. */
static flp_state level_state(const flp_cascade *c, int32_t l) {
    const flp_cascade_desc *d = &c->desc;
    const int64_t heads = d->num_qo_heads, dim = d->head_dim, levels = d->num_levels;
    flp_state s = {
        .o = {.buf = c->mem.buffer,
              .offset = c->mem.base + c->states_o + (size_t)(l * heads * dim) * STATE_ELEMENT_BYTES,
              .dtype = c->q_dtype,
              .ndim = 3,
              .shape = {c->num_rows, heads, dim},
              .stride = {levels * heads * dim, dim, 1}},
        .lse = {.buf = c->mem.buffer,
                .offset = c->mem.base + c->states_lse + (size_t)(l * heads) * sizeof(float),
                .dtype = FLP_DTYPE_F32,
                .ndim = 2,
                .shape = {c->num_rows, heads},
                .stride = {levels * heads, 1}},
    };
    return s;
}

static flp_status check_run_tensors(flp_context *ctx, const char *fn, const flp_cascade *c,
                                    const flp_cascade_run_args *a) {
    const flp_cascade_desc *d = &c->desc;
    flp_tensor_expect q = {"q", c->q_dtype, 3, {c->num_rows, d->num_qo_heads, d->head_dim}, true};
    flp_status status = flp_tensor_check(ctx, fn, &a->q, &q);
    if (status != FLP_OK)
        return status;
    q.name = "out";
    if ((status = flp_tensor_check(ctx, fn, &a->out, &q)) != FLP_OK)
        return status;
    if (a->lse) {
        flp_tensor_expect lse = {"lse", FLP_DTYPE_F32, 2, {c->num_rows, d->num_qo_heads}, false};
        if ((status = flp_tensor_check(ctx, fn, a->lse, &lse)) != FLP_OK)
            return status;
    }
    for (int32_t l = d->num_levels; l < FLP_CASCADE_MAX_LEVELS; l++)
        if (a->kv_indices[l])
            return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                            "%s: kv_indices[%d] is given but the cascade has %d levels", fn, l,
                            d->num_levels);
    /* the levels' runs check the caches and page ids against their plans */
    flp_named_tensor inputs[3 + FLP_CASCADE_MAX_LEVELS] = {
        {"q", &a->q}, {"k_cache", &a->k_cache}, {"v_cache", &a->v_cache}};
    static const char *const index_names[FLP_CASCADE_MAX_LEVELS] = {
        "kv_indices[0]", "kv_indices[1]", "kv_indices[2]", "kv_indices[3]",
        "kv_indices[4]", "kv_indices[5]", "kv_indices[6]", "kv_indices[7]"};
    for (int32_t l = 0; l < d->num_levels; l++)
        inputs[3 + l] = (flp_named_tensor){index_names[l], a->kv_indices[l]};
    const flp_named_tensor outputs[] = {{"out", &a->out}, {"lse", a->lse}};
    status = flp_tensor_check_disjoint(ctx, fn, outputs, 2, inputs, 3 + d->num_levels);
    for (int o = 0; o < 2 && status == FLP_OK; o++)
        status = flp_tensor_check_outside(ctx, fn, &outputs[o], c->mem.buffer, c->mem.base,
                                          c->mem.base + c->total, "the cascade's memory");
    return status;
}

/* Queues level l's attention into state s. */
static flp_status run_level(flp_context *ctx, const flp_cascade *c, int32_t l,
                            const flp_cascade_run_args *a, const flp_state *s) {
    const flp_tensor *lse = s->lse.buf ? &s->lse : NULL;
    if (c->desc.levels[l].one_row_per_group) {
        flp_decode_run_args d = {
            .q = a->q,
            .k_cache = a->k_cache,
            .v_cache = a->v_cache,
            .out = s->o,
            .lse = lse,
            .kv_indices = a->kv_indices[l],
        };
        return flp_decode_run(ctx, c->levels[l], &d);
    }
    flp_prefill_run_args p = {
        .q = a->q,
        .k = a->k_cache,
        .v = a->v_cache,
        .out = s->o,
        .lse = lse,
        .kv_indices = a->kv_indices[l],
    };
    return flp_prefill_run(ctx, c->levels[l], &p);
}

flp_status flp_cascade_run(flp_context *ctx, const flp_cascade *c,
                           const flp_cascade_run_args *args) {
    static const char *fn = "flp_cascade_run";
    flp_status status = check_call(ctx, fn, c, args);
    if (status != FLP_OK)
        return status;
    if (!c->planned)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: the cascade holds no plan (call flp_cascade_plan first)", fn);
    if ((status = check_run_tensors(ctx, fn, c, args)) != FLP_OK)
        return status;
    const int32_t levels = c->desc.num_levels;
    for (int32_t l = 0; l < levels && status == FLP_OK; l++) {
        /* one level is the whole attention: straight into the caller's output */
        flp_state s = {.o = args->out};
        if (args->lse)
            s.lse = *args->lse;
        if (levels > 1)
            s = level_state(c, l);
        if ((status = run_level(ctx, c, l, args, &s)) != FLP_OK) {
            char what[64];
            snprintf(what, sizeof what, "%s: levels[%d]", fn, l);
            flp_error_prefix(ctx, what);
        }
    }
    if (status != FLP_OK || levels == 1)
        return status;
    const flp_cascade_desc *d = &c->desc;
    const int64_t states = (int64_t)c->num_rows * levels;
    flp_merge_states_args m = {
        .states = {.o = flp_tensor_contiguous(
                       c->mem.buffer, c->mem.base + c->states_o, c->q_dtype, 3,
                       (const int64_t[]){states, d->num_qo_heads, d->head_dim}),
                   .lse = flp_tensor_contiguous(c->mem.buffer, c->mem.base + c->states_lse,
                                                FLP_DTYPE_F32, 2,
                                                (const int64_t[]){states, d->num_qo_heads})},
        .states_per_row = levels,
        .out = {.o = args->out},
    };
    if (args->lse)
        m.out.lse = *args->lse;
    if ((status = flp_merge_states(ctx, &m)) != FLP_OK)
        flp_error_prefix(ctx, fn);
    return status;
}
