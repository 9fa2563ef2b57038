/* The public state merges (flp_merge_state, flp_merge_state_in_place, flp_merge_states): one
 * launch each, everything by value. Plain C with fixed-width types: the CUDA kernel includes it
 * as is and shaders/merge_states.comp mirrors it field for field (std430, every 8-byte field
 * 8-aligned); tests/test_vulkan.c compares the shader's member offsets with this struct.
 *
 * Element e = (row * num_heads + head) * head_dim + d of out is one invocation's work:
 * - FLP_MERGE_MODE_PAIR: state a (o_a, lse_a) merged with state b (o_b, lse_b), for rows whose
 *   mask byte is non-zero (mask 0: every row; the other rows are not written);
 * - FLP_MERGE_MODE_RAGGED: states [begin, end) of o_a / lse_a folded in order, [begin, end) =
 *   indptr[row], indptr[row + 1] clamped to [0, num_states] (indptr 0: row * states_per_row,
 *   (row + 1) * states_per_row).
 * lse_out 0: no lse written. Element strides; the last dimension of every tensor is contiguous.
 */
#ifndef FLP_CORE_MERGE_PARAMS_H
#define FLP_CORE_MERGE_PARAMS_H

/* the fixed-width types, also where NVRTC has no system headers */
#include "core/decode_params.h"

typedef struct flp_merge_params {
    uint64_t o_a, lse_a;     /* pair: state a; ragged: every state */
    uint64_t o_b, lse_b;     /* pair: state b; ragged: 0 */
    uint64_t o_out, lse_out; /* lse_out may be 0 */
    uint64_t mask;           /* pair: u8 [rows] (contiguous), or 0 */
    uint64_t indptr;         /* ragged: i32 [rows + 1], or 0 */
    int64_t o_a_stride_row, o_a_stride_head;
    int64_t o_b_stride_row, o_b_stride_head;
    int64_t out_stride_row, out_stride_head;
    int64_t lse_a_stride_row, lse_b_stride_row, lse_out_stride_row; /* head stride 1 */
    int32_t rows, num_heads, head_dim, mode;                        /* mode: FLP_MERGE_MODE_* */
    int32_t num_states, states_per_row;                             /* ragged */
    int32_t a_dtype, b_dtype, out_dtype; /* FLP_DT_F32, FLP_DT_F16 or FLP_DT_BF16 */
    int32_t reserved[1];                 /* pads to an 8-byte multiple */
} flp_merge_params;

/* The size both compilers and the shader must agree on. */
#define FLP_MERGE_PARAMS_BYTES 176

#ifndef __cplusplus
_Static_assert(sizeof(flp_merge_params) == FLP_MERGE_PARAMS_BYTES,
               "flp_merge_params layout changed: update shaders/merge_states.comp and the kernel");
#endif

#endif /* FLP_CORE_MERGE_PARAMS_H */
