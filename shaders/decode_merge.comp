#version 460
// Merge of split-KV partial states (docs/kernels/merge.md): workgroup w handles request
// b = w / num_qo_heads and query head h = w % num_qo_heads for all qo_len rows, merging the
// request's chunks in chunk order (all at once, two passes), and writes out/lse as the decode
// kernel does for unsplit rows. The grid may be 2-D (x * y >= capacity); extra workgroups
// fall on b >= batch_size and return.
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_buffer_reference : require
#extension GL_EXT_buffer_reference2 : require
#extension GL_EXT_shader_explicit_arithmetic_types_int64 : require
#extension GL_EXT_control_flow_attributes : require

#include "decode_params.glsl"
#include "dtype.glsl"
#include "merge_state.glsl"
// the run's parameter values, in the plan's user slot
#define FLP_USER_PARAMS                                                                            \
    (DecodeParams(push.params).plan +                                                              \
     4ul * uint64_t(DecodePlanInfo(DecodeParams(push.params).plan).off_user_params))
#include "variant_hooks.glsl"

layout(constant_id = FLP_SPEC_HEAD_DIM) const uint HEAD_DIM = 128;
layout(constant_id = FLP_SPEC_Q_DTYPE) const uint Q_DTYPE = FLP_DT_F16;
layout(local_size_x_id = FLP_SPEC_MERGE_THREADS) in;
layout(constant_id = FLP_SPEC_MERGE_THREADS) const uint WG = 64;

const uint QUADS = HEAD_DIM / 4u; // each thread merges 4 consecutive elements of a row

void main() {
    DecodeParams P = DecodeParams(push.params);
    DecodePlanInfo I = DecodePlanInfo(P.plan); // what the last (re-)plan decided
    uint w = gl_WorkGroupID.y * gl_NumWorkGroups.x + gl_WorkGroupID.x;
    int num_qo_heads = I.num_qo_heads;
    int b = int(w / uint(num_qo_heads));
    int h = int(w % uint(num_qo_heads));
    if (b >= I.batch_size)
        return;
    uint64_t plan = P.plan;
    I32Ref merge_info = plan_ints(plan, I.off_merge_info);
    int first = merge_info.v[2 * b];
    int chunks = merge_info.v[2 * b + 1];
    if (chunks <= 1)
        return;
    int qo_len = I.qo_len;
    int group = I.group_size;
    int g = h / group;
    int hh = h % group;
    F32Ref partial_lse = plan_floats(plan, I.off_partial_lse);
    uint64_t partial_o = uint64_t(plan_floats(plan, I.off_partial_o));
    bool want_lse = P.lse != 0ul;

    for (uint idx = gl_LocalInvocationIndex; idx < uint(qo_len) * QUADS; idx += WG) {
        int qi = int(idx / QUADS);
        uint d0 = (idx % QUADS) * 4u;
        // The merge operator over all chunks at once, in chunk order (docs/kernels/merge.md):
        // the largest lse, then the weighted sum; FLP_MERGE_BATCH chunks at a time so that
        // their loads are in flight together. Empty states (lse -inf) weigh nothing.
        int row0 = ((first + g * chunks) * qo_len + qi) * group + hh;
        int row_stride = qo_len * group;
        float m = NEG_BIG;
        for (int c0 = 0; c0 < chunks; c0 += FLP_MERGE_BATCH)
            [[unroll]] for (int i = 0; i < FLP_MERGE_BATCH; i++)
                if (c0 + i < chunks) {
                    float sb = partial_lse.v[row0 + (c0 + i) * row_stride];
                    if (!partial_is_empty(sb))
                        m = max(m, sb);
                }
        // without the softmax the chunks' unnormalised sums add (their lse is 0: weights 1)
        bool sum_only = (I.flags & FLP_FLAG_SOFTMAX_OFF) != 0u;
        bool any = m > NEG_BIG;
        float s = 0.0, sum = 0.0;
        vec4 o = vec4(0.0);
        for (int c0 = 0; any && c0 < chunks; c0 += FLP_MERGE_BATCH) {
            float wt[FLP_MERGE_BATCH];
            vec4 ob[FLP_MERGE_BATCH];
            [[unroll]] for (int i = 0; i < FLP_MERGE_BATCH; i++) {
                wt[i] = 0.0;
                ob[i] = vec4(0.0);
                if (c0 + i < chunks) {
                    int prow = row0 + (c0 + i) * row_stride;
                    float sb = partial_lse.v[prow];
                    if (!partial_is_empty(sb)) {
                        wt[i] = sum_only ? 1.0 : exp(sb - m);
                        F32Ref row = F32Ref(partial_o + 4ul * (uint64_t(prow) * uint64_t(HEAD_DIM) +
                                                               d0));
                        ob[i] = vec4(row.v[0], row.v[1], row.v[2], row.v[3]);
                    }
                }
            }
            [[unroll]] for (int i = 0; i < FLP_MERGE_BATCH; i++) {
                sum += wt[i];
                o += wt[i] * ob[i];
            }
        }
        if (any && !sum_only) {
            o /= sum;
            s = m + log(sum);
        }
        int r = b * qo_len + qi;
#ifdef FLP_VARIANT_OUTPUT_TRANSFORM
        // the variant's output transform, here for split rows (the decode kernel's for the rest)
        int kv_len = plan_ints(plan, I.off_kv_len).v[b];
        float row_lse = any ? s : neg_inf();
        [[unroll]] for (int k = 0; k < 4; k++)
            o[k] = flp_output_transform(o[k], row_lse, int(d0) + k, kv_len - qo_len + qi, b, h,
                                        qo_len, kv_len);
#endif
        int64_t o_off = int64_t(r) * P.o_stride_row + int64_t(h) * P.o_stride_head + int64_t(d0);
        U2Ref(P.o + 2ul * uint64_t(o_off)).v = flp_encode4(Q_DTYPE, o);
        if (want_lse && d0 == 0u) {
            int64_t l_off = int64_t(r) * P.lse_stride_row + int64_t(h);
            F32Ref(P.lse + 4ul * uint64_t(l_off)).v[0] = any ? s : neg_inf();
        }
    }
}
