#version 460
// Merge of the split-KV partial states of prefill items (docs/kernels/merge.md). The work is cut
// into units of one merge item {b, g, row_begin, row_end, first_slot, chunks} and one slice of
// its rows (WG / (HEAD_DIM / 8) rows: an invocation per 8 columns of a row); workgroup w takes
// units w, w + N, ... (N = workgroups dispatched, at least the launch's merge_grid) below
// num_merge_items x SLICES, so that few merge items (one shared prompt split over the whole
// grid) still spread over every workgroup. For every packed row and 8-element chunk of the head
// dim it combines the chunks' states in chunk order with the merge operator (an empty state, lse
// -inf, is its identity) and writes out / lse as the prefill kernel does for unsplit rows.
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_buffer_reference : require
#extension GL_EXT_buffer_reference2 : require
#extension GL_EXT_shader_explicit_arithmetic_types_int64 : require
#extension GL_EXT_control_flow_attributes : require

#include "prefill_params.glsl"
#include "dtype.glsl"
#include "merge_state.glsl"
// the run's parameter values, in the plan's user slot
#define FLP_USER_PARAMS                                                                            \
    (PrefillParams(push.params).plan +                                                             \
     4ul * uint64_t(PrefillPlanInfo(PrefillParams(push.params).plan).off_user_params))
#include "variant_hooks.glsl"

layout(constant_id = FLP_SPEC_HEAD_DIM) const uint HEAD_DIM = 128;
layout(constant_id = FLP_SPEC_Q_DTYPE) const uint Q_DTYPE = FLP_DT_F16;
layout(local_size_x_id = FLP_SPEC_MERGE_THREADS) in;
layout(constant_id = FLP_SPEC_MERGE_THREADS) const uint WG = 64;

const uint CHUNKS = HEAD_DIM / 8u;
const uint ROWS_PER_SLICE = WG / CHUNKS; // WG >= HEAD_DIM / 8 (vk_prefill.c)
const uint SLICES = (uint(FLP_PREFILL_MAX_TILE) + ROWS_PER_SLICE - 1u) / ROWS_PER_SLICE;

void main() {
    PrefillParams P = PrefillParams(push.params);
    PrefillPlanInfo I = PrefillPlanInfo(P.plan); // what the last (re-)plan decided
    uint64_t plan = P.plan;
    int n_items = I.num_merge_items;
    int group = I.group_size;
    uint64_t partial_o = uint64_t(plan_floats(plan, I.off_partial_o));
    F32Ref partial_lse = plan_floats(plan, I.off_partial_lse);
    I32Ref qo_indptr = plan_ints(plan, I.off_qo_indptr);
    bool want_lse = P.lse != 0ul;
    // without the softmax the chunks' unnormalised sums add (their lse is 0)
    bool sum_only = (I.flags & FLP_FLAG_SOFTMAX_OFF) != 0u;
    int stride = int(gl_NumWorkGroups.x * gl_NumWorkGroups.y);
    int w = int(gl_WorkGroupID.y * gl_NumWorkGroups.x + gl_WorkGroupID.x);

    uint units = uint(n_items) * SLICES; // merge items <= the grid's capacity: far below 2^32
    uint pr_in_slice = gl_LocalInvocationIndex / CHUNKS;
    uint d0 = (gl_LocalInvocationIndex % CHUNKS) * 8u;
    for (uint unit = uint(w); unit < units; unit += uint(stride)) {
        int item = int(unit / SLICES);
        int pr = int((unit % SLICES) * ROWS_PER_SLICE + pr_in_slice);
        I32Ref mi = I32Ref(uint64_t(plan_ints(plan, I.off_merge_items)) +
                           4ul * uint64_t(item * FLP_MERGE_ITEM_INTS));
        int b = mi.v[FLP_MITEM_REQUEST];
        int g = mi.v[FLP_MITEM_KV_HEAD];
        int row_begin = mi.v[FLP_MITEM_ROW_BEGIN];
        int row_end = mi.v[FLP_MITEM_ROW_END];
        int first = mi.v[FLP_MITEM_FIRST_SLOT];
        int chunks = mi.v[FLP_MITEM_CHUNKS];
        int qo_begin = qo_indptr.v[b];
        // pr: the row within the item (and within every slot)
        if (pr_in_slice < ROWS_PER_SLICE && pr < row_end - row_begin) {
            bool any = false; // an empty state (lse -inf) is the merge's identity
            float s = 0.0;
            vec4 o[2] = vec4[2](vec4(0.0), vec4(0.0)); // the chunk's 8 columns
            for (int c = 0; c < chunks; c++) {
                int prow = (first + c) * FLP_PREFILL_MAX_TILE + pr;
                float sb = partial_lse.v[prow];
                if (partial_is_empty(sb))
                    continue; // no key in this chunk
                F32Ref row =
                    F32Ref(partial_o + 4ul * (uint64_t(prow) * uint64_t(HEAD_DIM) + d0));
                vec4 ob[2] = vec4[2](vec4(row.v[0], row.v[1], row.v[2], row.v[3]),
                                     vec4(row.v[4], row.v[5], row.v[6], row.v[7]));
                if (!any) {
                    s = sb;
                    o = ob;
                    any = true;
                    continue;
                }
                if (sum_only) {
                    o[0] += ob[0];
                    o[1] += ob[1];
                    continue;
                }
                vec3 w = merge_lse(s, sb);
                o[0] = merge_o(w, o[0], ob[0]);
                o[1] = merge_o(w, o[1], ob[1]);
            }
            int p = row_begin + pr;
            int i = qo_begin + p / group;
            int h = g * group + p % group;
#ifdef FLP_VARIANT_OUTPUT_TRANSFORM
            // the variant's output transform, here for split rows (the prefill kernel's for the
            // rest)
            int qo_len = qo_indptr.v[b + 1] - qo_begin;
            int kv_len = plan_ints(plan, I.off_kv_len).v[b];
            float row_lse = any ? s : neg_inf();
            [[unroll]] for (uint k = 0u; k < 8u; k++)
                o[k / 4u][k % 4u] =
                    flp_output_transform(o[k / 4u][k % 4u], row_lse, int(d0 + k),
                                         kv_len - qo_len + p / group, b, h, qo_len, kv_len);
#endif
            int64_t o_off = int64_t(i) * P.o_stride_row + int64_t(h) * P.o_stride_head + int64_t(d0);
            U4Ref(P.o + 2ul * uint64_t(o_off)).v =
                uvec4(flp_encode4(Q_DTYPE, o[0]), flp_encode4(Q_DTYPE, o[1]));
            if (want_lse && d0 == 0u) {
                int64_t l_off = int64_t(i) * P.lse_stride_row + int64_t(h);
                F32Ref(P.lse + 4ul * uint64_t(l_off)).v[0] = any ? s : neg_inf();
            }
        }
    }
}
