#version 460
// The public state merges (flp_merge_state, flp_merge_state_in_place, flp_merge_states;
// core/merge_params.h): out = merge(a, b) on the rows the mask keeps (FLP_MERGE_MODE_PAIR), or
// row r of out = the states [begin, end) of a folded in order (FLP_MERGE_MODE_RAGGED). Natural-log
// lse; an empty state (lse -inf) weighs nothing, and only empty rows give o = 0 and lse = -inf.
//
// Workgroup = unit u = row * num_heads + head (a 3-D grid folded back: units may outnumber
// maxComputeWorkGroupCount[0]); invocation i handles elements d = i, i + WG, ... of the head.
// Element dtypes are run-time values (one pipeline for every combination): f32, f16 or bf16
// loaded as f32, stored rounded to nearest even through dtype.glsl's encoders, 16-bit elements
// through 16-bit storage so that a store touches no neighbour.
//
// In place (pair mode, out the same view as a or b): element d is read and written by one
// invocation only, but the row's lse is read by all of them and written by invocation 0, so
// every invocation reads both lse before the barrier that precedes any write.
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_buffer_reference : require
#extension GL_EXT_buffer_reference2 : require
#extension GL_EXT_shader_explicit_arithmetic_types_int64 : require
#extension GL_EXT_shader_explicit_arithmetic_types_int16 : require
#extension GL_EXT_shader_16bit_storage : require
#extension GL_EXT_control_flow_attributes : require

#include "dtype.glsl"
#include "merge_state.glsl"

layout(local_size_x_id = FLP_SPEC_STATE_MERGE_THREADS) in;
layout(constant_id = FLP_SPEC_STATE_MERGE_THREADS) const uint WG = 64;

// flp_merge_params (core/merge_params.h), written by the run's vkCmdUpdateBuffer.
layout(buffer_reference, std430, buffer_reference_align = 8) readonly buffer MergeParams {
    uint64_t o_a, lse_a;
    uint64_t o_b, lse_b;
    uint64_t o_out, lse_out;
    uint64_t mask;
    uint64_t indptr;
    int64_t o_a_stride_row, o_a_stride_head;
    int64_t o_b_stride_row, o_b_stride_head;
    int64_t out_stride_row, out_stride_head;
    int64_t lse_a_stride_row, lse_b_stride_row, lse_out_stride_row;
    int rows, num_heads, head_dim, mode;
    int num_states, states_per_row;
    int a_dtype, b_dtype, out_dtype;
    int reserved[1];
};

layout(push_constant) uniform Push {
    uint64_t params;
} push;

layout(buffer_reference, std430, buffer_reference_align = 4) buffer W32 {
    uint v;
};
layout(buffer_reference, std430, buffer_reference_align = 2) buffer W16 {
    uint16_t v;
};

uint64_t elem_bytes(uint dtype) {
    return dtype == FLP_DT_F32 ? 4ul : 2ul;
}

// Element e (an element offset) of the tensor at base.
float load_elem(uint dtype, uint64_t base, int64_t e) {
    uint64_t a = base + uint64_t(e) * elem_bytes(dtype);
    if (dtype == FLP_DT_F32)
        return uintBitsToFloat(W32(a).v);
    uint h = uint(W16(a).v);
    return dtype == FLP_DT_BF16 ? flp_bf16_to_f32(h) : flp_f16_to_f32(h);
}

void store_elem(uint dtype, uint64_t base, int64_t e, float x) {
    uint64_t a = base + uint64_t(e) * elem_bytes(dtype);
    uint bits = floatBitsToUint(x);
    if (dtype == FLP_DT_F32)
        W32(a).v = bits;
    else if (dtype == FLP_DT_BF16)
        W16(a).v = uint16_t(flp_f32_bits_to_bf16(bits));
    else
        W16(a).v = uint16_t(flp_f32_bits_to_f16(bits));
}

// The f32 at element offset e of the lse tensor at base.
float load_lse(uint64_t base, int64_t e) {
    return uintBitsToFloat(W32(base + 4ul * uint64_t(e)).v);
}

// Byte n of a u8 tensor (reads the aligned word holding it: no 8-bit storage needed).
uint load_byte(uint64_t base, int n) {
    uint64_t a = base + uint64_t(n);
    uint w = W32(a & ~3ul).v;
    return (w >> (uint(a & 3ul) * 8u)) & 0xffu;
}

void main() {
    MergeParams P = MergeParams(push.params);
    uint64_t u = (uint64_t(gl_WorkGroupID.z) * uint64_t(gl_NumWorkGroups.y) +
                  uint64_t(gl_WorkGroupID.y)) * uint64_t(gl_NumWorkGroups.x) +
                 uint64_t(gl_WorkGroupID.x);
    int num_heads = P.num_heads;
    if (u >= uint64_t(P.rows) * uint64_t(num_heads))
        return;
    int row = int(u / uint64_t(num_heads));
    int head = int(u % uint64_t(num_heads));
    int head_dim = P.head_dim;
    uint out_dtype = uint(P.out_dtype);
    int64_t out_base = int64_t(row) * P.out_stride_row + int64_t(head) * P.out_stride_head;
    bool want_lse = P.lse_out != 0ul;
    int64_t lse_out_off = int64_t(row) * P.lse_out_stride_row + int64_t(head);

    if (P.mode == FLP_MERGE_MODE_PAIR) {
        // the whole workgroup takes the same path: the barrier below is in uniform control flow
        if (P.mask != 0ul && load_byte(P.mask, row) == 0u)
            return;
        float sa = load_lse(P.lse_a, int64_t(row) * P.lse_a_stride_row + int64_t(head));
        float sb = load_lse(P.lse_b, int64_t(row) * P.lse_b_stride_row + int64_t(head));
        // in place, invocation 0 overwrites an lse the others have just read
        memoryBarrierBuffer();
        barrier();
        bool empty = sa == neg_inf() && sb == neg_inf();
        float m = max(sa, sb);
        float wa = empty ? 0.0 : exp(sa - m);
        float wb = empty ? 0.0 : exp(sb - m);
        float sum = wa + wb;
        uint a_dtype = uint(P.a_dtype), b_dtype = uint(P.b_dtype);
        int64_t a_base = int64_t(row) * P.o_a_stride_row + int64_t(head) * P.o_a_stride_head;
        int64_t b_base = int64_t(row) * P.o_b_stride_row + int64_t(head) * P.o_b_stride_head;
        for (int d = int(gl_LocalInvocationIndex); d < head_dim; d += int(WG)) {
            float o = 0.0;
            if (!empty) {
                float oa = load_elem(a_dtype, P.o_a, a_base + int64_t(d));
                float ob = load_elem(b_dtype, P.o_b, b_base + int64_t(d));
                o = (wa * oa + wb * ob) / sum;
            }
            store_elem(out_dtype, P.o_out, out_base + int64_t(d), o);
        }
        if (want_lse && gl_LocalInvocationIndex == 0u)
            W32(P.lse_out + 4ul * uint64_t(lse_out_off)).v =
                floatBitsToUint(empty ? neg_inf() : m + log(sum));
        return;
    }

    int num_states = P.num_states;
    int begin, end;
    if (P.indptr != 0ul) {
        // device-side entries, unchecked: clamped, and an empty range is an empty row
        begin = clamp(int(W32(P.indptr + 4ul * uint64_t(row)).v), 0, num_states);
        end = clamp(int(W32(P.indptr + 4ul * uint64_t(row + 1)).v), 0, num_states);
    } else {
        begin = row * P.states_per_row;
        end = begin + P.states_per_row;
    }
    uint a_dtype = uint(P.a_dtype);
    int64_t o_stride = P.o_a_stride_row, lse_stride = P.lse_a_stride_row;
    uint64_t o_head = P.o_a + uint64_t(int64_t(head) * P.o_a_stride_head) * elem_bytes(a_dtype);
    uint64_t lse_head = P.lse_a + 4ul * uint64_t(head);
    for (int d = int(gl_LocalInvocationIndex); d < head_dim; d += int(WG)) {
        // The online rescale, in state order (results do not depend on timing or on WG). Every
        // element folds the same lse sequence, so m and sum are the same in every pass of every
        // invocation: the pass of d = 0 writes the row's lse.
        float m = neg_inf(), sum = 0.0, acc = 0.0;
        for (int s = begin; s < end; s++) {
            float l = load_lse(lse_head, int64_t(s) * lse_stride);
            if (l == neg_inf())
                continue;
            float o = load_elem(a_dtype, o_head, int64_t(s) * o_stride + int64_t(d));
            if (l > m) {
                float c = m == neg_inf() ? 0.0 : exp(m - l);
                sum = sum * c + 1.0;
                acc = acc * c + o;
                m = l;
            } else {
                float w = exp(l - m);
                sum += w;
                acc += w * o;
            }
        }
        store_elem(out_dtype, P.o_out, out_base + int64_t(d), sum == 0.0 ? 0.0 : acc / sum);
        if (want_lse && d == 0)
            W32(P.lse_out + 4ul * uint64_t(lse_out_off)).v =
                floatBitsToUint(sum == 0.0 ? neg_inf() : m + log(sum));
    }
}
