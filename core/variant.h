/* Variant validation and defaults resolution shared by the plan calls. */
#ifndef FLP_CORE_VARIANT_H
#define FLP_CORE_VARIANT_H

#include "core/internal.h"

/* The one head-dim rule of the library: FLP_OK for the head dims every backend has kernels for
 * (64, 128, 256); FLP_ERROR_UNSUPPORTED for the other multiples of 16 up to FLP_MAX_HEAD_DIM
 * (they need the JIT path, not built yet); FLP_ERROR_INVALID_ARGUMENT for anything else. */
flp_status flp_head_dim_status(int32_t head_dim);
/* Said in every message that refuses a head dim. */
#define FLP_HEAD_DIMS_TEXT                                                                         \
    "64, 128 and 256 (other multiples of 16 up to 256 need the JIT path, not built yet)"

/* A plan call's variant: valid, with the plan's head_dim, and without snippets unless the
 * call's kernels take them on this backend (takes_snippets; else FLP_ERROR_UNSUPPORTED). Fails
 * ctx naming fn; on FLP_OK *resolved holds the variant with its defaults filled in
 * (flp_variant_resolved). */
flp_status flp_variant_check_for_plan(flp_context *ctx, const char *fn, const flp_variant *variant,
                                      int32_t plan_head_dim, bool takes_snippets,
                                      flp_variant *resolved);

/* A copy of v with every zero default replaced by its value (dtypes, sm_scale, RoPE theta and
 * scale, fp8 scales). Call after flp_variant_validate succeeded. */
flp_variant flp_variant_resolved(const flp_variant *v);

/* Writes what the kernels read of a resolved variant into a plan info struct (decode or
 * prefill: both have these fields): the flags (FLP_FLAG_* and, for custom masks,
 * FLP_FLAG_CUSTOM_MASK), window_left (-1 = off), dtypes, scales (fp8 scales 1 for
 * 16-bit KV). A macro because the two info structs are distinct types with the same fields. */
#define FLP_SET_KERNEL_VARIANT(info, v)                                                            \
    do {                                                                                           \
        bool fp8_ = flp_dtype_is_fp8((int32_t)(v)->kv_dtype);                                      \
        (info)->flags = flp_variant_kernel_flags(v);                                               \
        (info)->window_left = (v)->use_window ? (v)->window_left : -1;                             \
        (info)->q_dtype = (int32_t)(v)->q_dtype;                                                   \
        (info)->kv_dtype = (int32_t)(v)->kv_dtype;                                                 \
        (info)->sm_scale = (v)->sm_scale;                                                          \
        (info)->soft_cap = (v)->logits_soft_cap;                                                   \
        (info)->k_scale = fp8_ ? (v)->k_scale : 1.0f;                                              \
        (info)->v_scale = fp8_ ? (v)->v_scale : 1.0f;                                              \
    } while (0)

/* The kernel flags of a resolved variant (see FLP_SET_KERNEL_VARIANT). */
uint32_t flp_variant_kernel_flags(const flp_variant *v);

#endif /* FLP_CORE_VARIANT_H */
