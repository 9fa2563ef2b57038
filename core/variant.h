/* Variant validation and defaults resolution shared by the plan calls. */
#ifndef FLP_CORE_VARIANT_H
#define FLP_CORE_VARIANT_H

#include "flashport/flashport.h"

/* A copy of v with every zero default replaced by its value (dtypes, sm_scale, RoPE theta and
 * scale, fp8 scales). Call after flp_variant_validate succeeded. */
flp_variant flp_variant_resolved(const flp_variant *v);

#endif /* FLP_CORE_VARIANT_H */
