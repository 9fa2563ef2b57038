/* Variant validation and defaults. */
#include "core/variant.h"
#include "core/snippet.h"
#include "core/variant_program.h"
#include "core/backend.h"
#include "core/prefill_params.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

/* Kernels and shaders read the dtype codes of core/kernel_constants.h: the flp_dtype values. */
_Static_assert(FLP_DT_F32 == FLP_DTYPE_F32 && FLP_DT_F16 == FLP_DTYPE_F16 &&
                   FLP_DT_BF16 == FLP_DTYPE_BF16 && FLP_DT_E4M3 == FLP_DTYPE_E4M3 &&
                   FLP_DT_E5M2 == FLP_DTYPE_E5M2,
               "core/kernel_constants.h dtype codes must equal enum flp_dtype");

flp_status flp_head_dim_status(int32_t head_dim) {
    if (head_dim == 64 || head_dim == 128 || head_dim == 256)
        return FLP_OK;
    if (head_dim > 0 && head_dim % 16 == 0 && head_dim <= FLP_MAX_HEAD_DIM)
        return FLP_ERROR_UNSUPPORTED;
    return FLP_ERROR_INVALID_ARGUMENT;
}

static bool finite_positive(float x) {
    return isfinite(x) && x > 0.0f;
}

/* The snippets and their parameters, each body checked by the snippet language's checker
 * (core/snippet.h). */
static flp_status check_snippets(const flp_variant *v, char *msg, size_t size) {
    char why[400];
    if (flp_snippet_check_params(v->params, v->num_params, why, sizeof why) != FLP_OK)
        return flp_report(FLP_ERROR_INVALID_ARGUMENT, msg, size, "variant.params: %s", why);
    const char *bodies[FLP_SNIPPET_NUM_KINDS];
    flp_variant_snippet_bodies(v, bodies);
    for (int k = 0; k < FLP_SNIPPET_NUM_KINDS; k++) {
        if (!bodies[k])
            continue;
        flp_snippet snippet;
        const flp_status status = flp_snippet_translate((flp_snippet_kind)k, bodies[k], v->params,
                                                        v->num_params, &snippet, why, sizeof why);
        if (status == FLP_ERROR_INVALID_ARGUMENT)
            return flp_report(status, msg, size, "variant.%s", why);
        if (status != FLP_OK)
            return flp_report(status, msg, size, "variant: %s", why);
        flp_snippet_free(&snippet);
    }
    return FLP_OK;
}

flp_status flp_variant_validate(const flp_variant *v, char *msg, size_t size) {
    if (msg && size)
        msg[0] = '\0';
    if (!v)
        return flp_report(FLP_ERROR_INVALID_ARGUMENT, msg, size, "variant is NULL");
    /* the snippets first: a bad one is reported even where something else is unsupported */
    const flp_status snippets = check_snippets(v, msg, size);
    if (snippets != FLP_OK)
        return snippets;
    flp_status head_dim = flp_head_dim_status(v->head_dim);
    if (head_dim != FLP_OK)
        return flp_report(head_dim, msg, size,
                          "variant.head_dim = %d: supported head dims are " FLP_HEAD_DIMS_TEXT,
                          v->head_dim);
    if (v->q_dtype != FLP_DTYPE_DEFAULT && v->q_dtype != FLP_DTYPE_F16 &&
        v->q_dtype != FLP_DTYPE_BF16)
        return flp_report(FLP_ERROR_INVALID_ARGUMENT, msg, size,
                          "variant.q_dtype = %s: queries and outputs are f16 or bf16",
                          flp_dtype_name(v->q_dtype));
    if (v->kv_dtype != FLP_DTYPE_DEFAULT && v->kv_dtype != FLP_DTYPE_F16 &&
        v->kv_dtype != FLP_DTYPE_BF16 && v->kv_dtype != FLP_DTYPE_E4M3 &&
        v->kv_dtype != FLP_DTYPE_E5M2)
        return flp_report(FLP_ERROR_INVALID_ARGUMENT, msg, size,
                          "variant.kv_dtype = %s: the KV cache is f16, bf16, e4m3 or e5m2",
                          flp_dtype_name(v->kv_dtype));
    if (v->mask != FLP_MASK_NONE && v->mask != FLP_MASK_CAUSAL && v->mask != FLP_MASK_CUSTOM)
        return flp_report(FLP_ERROR_INVALID_ARGUMENT, msg, size,
                          "variant.mask = %d is not a mask mode", (int)v->mask);
    if (v->use_window && v->window_left < 0)
        return flp_report(FLP_ERROR_INVALID_ARGUMENT, msg, size,
                          "variant.window_left = %d: must be >= 0 when use_window is set",
                          v->window_left);
    if (!isfinite(v->logits_soft_cap) || v->logits_soft_cap < 0.0f)
        return flp_report(FLP_ERROR_INVALID_ARGUMENT, msg, size,
                          "variant.logits_soft_cap = %g: must be 0 (off) or a positive number",
                          (double)v->logits_soft_cap);
    if (!isfinite(v->sm_scale) || v->sm_scale < 0.0f)
        return flp_report(FLP_ERROR_INVALID_ARGUMENT, msg, size,
                          "variant.sm_scale = %g: must be 0 (default 1/sqrt(head_dim)) or positive",
                          (double)v->sm_scale);
    if (v->pos_encoding != FLP_POS_NONE && v->pos_encoding != FLP_POS_ROPE_LLAMA &&
        v->pos_encoding != FLP_POS_ALIBI)
        return flp_report(FLP_ERROR_INVALID_ARGUMENT, msg, size,
                          "variant.pos_encoding = %d is not a positional encoding",
                          (int)v->pos_encoding);
    if (v->pos_encoding == FLP_POS_ROPE_LLAMA) {
        const flp_rope_params *r = &v->rope;
        if (!(r->theta == 0.0f || finite_positive(r->theta)) ||
            !(r->scale == 0.0f || finite_positive(r->scale)))
            return flp_report(
                FLP_ERROR_INVALID_ARGUMENT, msg, size,
                "variant.rope: theta = %g and scale = %g must be positive (0 = default)",
                (double)r->theta, (double)r->scale);
        if (r->llama31 &&
            (!finite_positive(r->llama31_factor) || !finite_positive(r->llama31_low_freq_factor) ||
             !finite_positive(r->llama31_high_freq_factor) ||
             r->llama31_high_freq_factor <= r->llama31_low_freq_factor ||
             r->llama31_original_max_position <= 0))
            return flp_report(FLP_ERROR_INVALID_ARGUMENT, msg, size,
                              "variant.rope llama31: factor = %g, low_freq_factor = %g, "
                              "high_freq_factor = %g, original_max_position = %d: all must be "
                              "positive and high_freq_factor > low_freq_factor",
                              (double)r->llama31_factor, (double)r->llama31_low_freq_factor,
                              (double)r->llama31_high_freq_factor,
                              r->llama31_original_max_position);
    }
    if (!(v->k_scale == 0.0f || finite_positive(v->k_scale)) ||
        !(v->v_scale == 0.0f || finite_positive(v->v_scale)))
        return flp_report(FLP_ERROR_INVALID_ARGUMENT, msg, size,
                          "variant.k_scale = %g, v_scale = %g: must be positive (0 = 1)",
                          (double)v->k_scale, (double)v->v_scale);
    /* whether a kernel takes snippets is the plan call's question */
    return FLP_OK;
}

flp_status flp_variant_check_for_plan(flp_context *ctx, const char *fn, const flp_variant *variant,
                                      int32_t plan_head_dim, bool takes_snippets,
                                      flp_variant *resolved) {
    char message[512];
    flp_status status = flp_variant_validate(variant, message, sizeof message);
    if (status != FLP_OK)
        return flp_fail(ctx, status, "%s: %s", fn, message);
    if (!takes_snippets && (flp_variant_has_snippets(variant) || variant->softmax_off))
        return flp_fail(ctx, FLP_ERROR_UNSUPPORTED,
                        "%s: the %s backend's kernels for this call do not take variant snippets "
                        "(logits_transform, logits_mask, query_transform, output_transform) or "
                        "softmax_off yet; docs/variants.md lists where they run",
                        fn, ctx->ops->name);
    if (variant->head_dim != plan_head_dim)
        return flp_fail(ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "%s: variant.head_dim = %d differs from the plan's head_dim = %d", fn,
                        variant->head_dim, plan_head_dim);
    *resolved = flp_variant_resolved(variant);
    return FLP_OK;
}

flp_variant flp_variant_resolved(const flp_variant *v) {
    flp_variant r = *v;
    if (r.q_dtype == FLP_DTYPE_DEFAULT)
        r.q_dtype = FLP_DTYPE_F16;
    if (r.kv_dtype == FLP_DTYPE_DEFAULT)
        r.kv_dtype = r.q_dtype;
    if (r.sm_scale == 0.0f)
        r.sm_scale = (float)(1.0 / sqrt((double)r.head_dim));
    if (r.rope.theta == 0.0f)
        r.rope.theta = 10000.0f;
    if (r.rope.scale == 0.0f)
        r.rope.scale = 1.0f;
    if (r.k_scale == 0.0f)
        r.k_scale = 1.0f;
    if (r.v_scale == 0.0f)
        r.v_scale = 1.0f;
    return r;
}

uint32_t flp_variant_kernel_flags(const flp_variant *v) {
    return (v->mask == FLP_MASK_CAUSAL ? FLP_FLAG_CAUSAL : 0u) |
           (v->use_window ? FLP_FLAG_WINDOW : 0u) |
           (v->logits_soft_cap > 0.0f ? FLP_FLAG_SOFTCAP : 0u) |
           (v->pos_encoding == FLP_POS_ALIBI ? FLP_FLAG_ALIBI : 0u) |
           (v->pos_encoding == FLP_POS_ROPE_LLAMA ? FLP_FLAG_ROPE : 0u) |
           (v->mask == FLP_MASK_CUSTOM ? FLP_FLAG_CUSTOM_MASK : 0u) |
           (v->softmax_off ? FLP_FLAG_SOFTMAX_OFF : 0u);
}
