#version 460
// Batch decode over a paged KV cache for CPU Vulkan devices (Mesa's lavapipe/llvmpipe); the same
// contract as decode.comp (docs: /work/notes/decode_kernel_spec.md), shaped for how a CPU
// driver runs a compute shader rather than for a GPU:
//
// - llvmpipe runs the invocations of a workgroup as SIMD vectors (subgroup = vector width, 8
//   with AVX2) and every barrier switches coroutines. Here a workgroup is one subgroup of LANES
//   invocations: no shared memory, no barriers; K and V are read straight from memory (the
//   CPU's caches do what shared memory does on a GPU).
// - Lane l owns the 8-element chunks l, l + LANES, ... of the head dim (as in decode.comp). The
//   ROWS query rows of a pass (the GQA group x qo_len) all live in each lane's registers, so a
//   K or V element is loaded and converted once and used ROWS times.
// - llvmpipe executes both sides of every branch (masked): the key loop is branch-free
//   (selects), and costly variant features (RoPE) are compiled out where a pipeline does not
//   need them (FEATURES below).
// - Every loop whose trip count is known at pipeline creation is unrolled. This also matters
//   for correctness: llvmpipe (gallivm) ends every loop of an invocation once 65535 loop
//   iterations have run IN TOTAL since the invocation started (its infinite-loop guard, one
//   counter shared by all loops). The only loops left are the item loop, the row-pass loop and
//   the key loop, one iteration per STEP keys; vk_decode_cpu.c counts them from the plan
//   exactly as they run here and refuses a plan whose workgroup would exceed the budget.
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_buffer_reference : require
#extension GL_EXT_buffer_reference2 : require
#extension GL_EXT_shader_explicit_arithmetic_types_int64 : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_shuffle : require
#extension GL_KHR_shader_subgroup_ballot : require
#extension GL_EXT_control_flow_attributes : require

#ifdef FLP_TEXEL_KV
// K and V are read through uniform texel buffers (RGBA32UI views of their buffers, 16 bytes per
// texel): llvmpipe fetches texels for all lanes in straight-line code, while a load through an
// address goes lane by lane in a loop (measured on lavapipe: 1 ns vs 40 ns per lane and 16
// bytes). A row is then a byte offset from its buffer's start (32 bits: the views cover at
// most 2 GiB). The push constants add where the K and V tensors start in their buffers.
#define FLP_PUSH_DECLARED
layout(push_constant) uniform Push {
    uint64_t params;
    uint k_base, v_base; // byte offsets of k and v in their buffers
} push;
layout(set = 0, binding = 0) uniform usamplerBuffer k_texels;
layout(set = 1, binding = 0) uniform usamplerBuffer v_texels;
#define ROW_T uint
#else
#define ROW_T uint64_t // a row is its device address
#endif

#include "decode_params.glsl"
#include "dtype.glsl"

layout(constant_id = FLP_SPEC_HEAD_DIM) const uint HEAD_DIM = 128;
// Q/O and 16-bit KV dtypes (f16 or bf16) are read from the plan (both conversions are a few
// cheap ops: one pipeline serves both, which halves the pipelines lavapipe compiles, at about a
// second each); fp8 KV is specialised: KV_DTYPE is E4M3 or E5M2 then, unused otherwise.
layout(constant_id = FLP_SPEC_Q_DTYPE) const uint UNUSED_1 = 0;
layout(constant_id = FLP_SPEC_KV_DTYPE) const uint KV_DTYPE = FLP_DT_E4M3;
layout(constant_id = FLP_SPEC_KV_BYTES) const uint KV_BYTES = 2; // bytes per KV element: 2 or 1 (fp8)
layout(constant_id = FLP_SPEC_LANES) const uint LANES = 8;    // = the workgroup size, at most the subgroup
layout(constant_id = FLP_SPEC_ROWS) const uint ROWS = 4;     // query rows per pass, held in registers
layout(constant_id = FLP_SPEC_CPU_STEP) const uint STEP = 8;     // keys per iteration of the key loop
// The variant features (FLP_FLAG_* bits) compiled in. llvmpipe executes both sides of
// every branch (masked), so RoPE, for one, costs its sines and cosines on every key unless it is
// compiled out: a pipeline has only the features it may need, and still follows the plan's
// flags for those it has.
layout(constant_id = FLP_SPEC_CPU_FEATURES) const uint FEATURES = 31u;
// This pipeline leaves plans whose flags are all within DEFER to another pipeline recorded
// next to it (a command buffer recorded once must serve any later re-plan: it records a cheap
// pipeline and a full one, and exactly one of them runs). ~0u: none.
layout(constant_id = FLP_SPEC_CPU_DEFER) const uint DEFER = 0xffffffffu;
layout(local_size_x_id = FLP_SPEC_LANES) in;

const uint CHUNKS = HEAD_DIM / 8u; // 8-element chunks per row
const uint NC = CHUNKS / LANES;    // chunks per lane (1 or even)
const uint HALF_NC = NC / 2u;
const uint E = NC * 8u;                            // elements per lane
const uint FREQS = NC == 1u ? 8u : HALF_NC * 8u;   // RoPE frequencies a lane needs
const uint MAX_LOG2_LANES = 6u;                    // LANES <= 64

const float NEG_BIG = -1.0e30; // "no key yet"
const float LOG2E = 1.4426950408889634;
const float LN2 = 0.6931471805599453;

uint lane_;
float g_freq[FREQS]; // frequencies of this lane's rotate-half pairs (RoPE only)

// Element index of chunk slot c (0..NC-1) of this lane.
uint chunk_of(uint c) {
    return lane_ + c * LANES;
}

// sin and cos of a possibly large angle: Cody-Waite reduction by 2*pi (two parts) first.
void sincos_reduced(float a, out float s, out float c) {
    precise float k = roundEven(a * 0.15915494309189535);
    precise float r = fma(-k, 6.28318548202514648, a);
    r = fma(-k, -1.7484555314695172e-7, r);
    s = sin(r);
    c = cos(r);
}

// Rotate-half RoPE of this lane's elements of a row at position pos. With NC even the partner
// d + D/2 of chunk slot c is slot c + HALF_NC of the same lane; with NC = 1 it belongs to lane
// ^ LANES/2 (all lanes call this together).
void rope_lane(inout float x[E], int pos) {
    if (NC == 1u) {
        bool upper = lane_ >= LANES / 2u;
        [[unroll]] for (uint e = 0u; e < 8u; e++) {
            float y = subgroupShuffleXor(x[e], LANES / 2u);
            float s, co;
            sincos_reduced(float(pos) * g_freq[e], s, co);
            x[e] = upper ? x[e] * co + y * s : x[e] * co - y * s;
        }
    } else {
        [[unroll]] for (uint i = 0u; i < HALF_NC * 8u; i++) {
            float s, co;
            sincos_reduced(float(pos) * g_freq[i], s, co);
            float a = x[i], b = x[i + HALF_NC * 8u];
            x[i] = a * co - b * s;
            x[i + HALF_NC * 8u] = b * co + a * s;
        }
    }
}

bool g_q_bf16, g_kv_bf16; // the plan's dtypes: bf16, else f16

// 8 16-bit elements (element order kept), bf16 or f16.
void decode8_16(bool bf16, uvec4 w, out float x[8]) {
    [[unroll]] for (uint i = 0u; i < 4u; i++) {
        vec2 h = unpackHalf2x16(w[i]);
        x[2u * i] = bf16 ? uintBitsToFloat(w[i] << 16) : h.x;
        x[2u * i + 1u] = bf16 ? uintBitsToFloat(w[i] & 0xffff0000u) : h.y;
    }
}

// 16 bytes as two 64-bit loads: llvmpipe loads a vector component by component, lane by lane,
// so 8-byte components halve the loads.
layout(buffer_reference, std430, buffer_reference_align = 16) readonly buffer U64x2Ref {
    u64vec2 v;
};
layout(buffer_reference, std430, buffer_reference_align = 8) readonly buffer U64Ref {
    uint64_t v;
};
layout(buffer_reference, std430, buffer_reference_align = 4) readonly buffer U32Ref {
    uint v;
};

uvec4 load16(uint64_t addr) {
    u64vec2 w = U64x2Ref(addr).v;
    return uvec4(unpackUint2x32(w.x), unpackUint2x32(w.y));
}

// This lane's elements of a 16-bit row (q) at row_addr.
void load_q_lane(uint64_t row_addr, out float x[E]) {
    [[unroll]] for (uint c = 0u; c < NC; c++) {
        float t[8];
        decode8_16(g_q_bf16, load16(row_addr + 16ul * uint64_t(chunk_of(c))), t);
        [[unroll]] for (uint e = 0u; e < 8u; e++)
            x[c * 8u + e] = t[e];
    }
}

// The 8 elements (16 or 8 bytes) at byte offset off of a K (v = false) or V row.
uvec4 kv_chunk(bool v, ROW_T row, uint off) {
#ifdef FLP_TEXEL_KV
    uint at = row + off;
    uvec4 t = v ? texelFetch(v_texels, int(at >> 4)) : texelFetch(k_texels, int(at >> 4));
    if (KV_BYTES == 1u)
        return uvec4((at & 8u) != 0u ? t.zw : t.xy, 0u, 0u);
    return t;
#else
    uint64_t a = row + uint64_t(off);
    if (KV_BYTES == 1u)
        return uvec4(unpackUint2x32(U64Ref(a).v), 0u, 0u);
    return load16(a);
#endif
}

// This lane's elements of a K or V row, as stored (fp8 values without their scale).
void load_kv_lane(bool v, ROW_T row, out float x[E]) {
    [[unroll]] for (uint c = 0u; c < NC; c++) {
        float t[8];
        uvec4 w = kv_chunk(v, row, chunk_of(c) * 8u * KV_BYTES);
        if (KV_BYTES == 1u)
            flp_decode8(KV_DTYPE, w, t);
        else
            decode8_16(g_kv_bf16, w, t);
        [[unroll]] for (uint e = 0u; e < 8u; e++)
            x[c * 8u + e] = t[e];
    }
}

// Keys are handled STEP at a time; lane i looks up the rows of keys first + r * LANES + i
// (r < ROUNDS), so the page lookups and address arithmetic of a step run once, lane-parallel.
const uint ROUNDS = STEP / LANES; // the host makes STEP a multiple of LANES
const uint ROW_BYTES = HEAD_DIM * KV_BYTES;
const uint ROW_LINES = (ROW_BYTES + 63u) / 64u;

// This lane's K and V rows for the keys of the step starting at first (keys past kv_end: the
// last key again). k_head / v_head: the row of page 0, slot 0 of the item's KV head; strides
// in elements.
void lane_rows(I32Ref pages, int page_size, int page_shift, int first, int kv_end, ROW_T k_head,
               ROW_T v_head, int k_sp, int k_ss, int v_sp, int v_ss, out ROW_T k_row[ROUNDS],
               out ROW_T v_row[ROUNDS]) {
    [[unroll]] for (uint r = 0u; r < ROUNDS; r++) {
        int tok = min(first + int(r * LANES + lane_), kv_end - 1);
        int page = pages.v[page_shift >= 0 ? tok >> page_shift : tok / page_size];
        int pslot = page_shift >= 0 ? tok & (page_size - 1) : tok % page_size;
#ifdef FLP_TEXEL_KV
        // offsets below 2 GiB (the host checks the buffers): 32-bit arithmetic
        k_row[r] = k_head + uint(page * k_sp + pslot * k_ss) * KV_BYTES;
        v_row[r] = v_head + uint(page * v_sp + pslot * v_ss) * KV_BYTES;
#else
        k_row[r] = k_head + uint64_t(int64_t(page) * k_sp + int64_t(pslot * k_ss)) * KV_BYTES;
        v_row[r] = v_head + uint64_t(int64_t(page) * v_sp + int64_t(pslot * v_ss)) * KV_BYTES;
#endif
    }
}

// Reads one word of every 64-byte line of this lane's rows, back to back, so that the misses
// of a whole step overlap (a software prefetch; GLSL has none). The caller folds the words into
// g_sink, which is (never) written, so the reads stay.
uint g_sink;
uint touch_rows(ROW_T k_row[ROUNDS], ROW_T v_row[ROUNDS]) {
    uint w = 0u;
    [[unroll]] for (uint r = 0u; r < ROUNDS; r++)
        [[unroll]] for (uint i = 0u; i < ROW_LINES; i++) {
            w ^= kv_chunk(false, k_row[r], 64u * i).x;
            w ^= kv_chunk(true, v_row[r], 64u * i).x;
        }
    return w;
}

// The row of key t of the step, from the lane that looked it up.
ROW_T step_row(ROW_T rows[ROUNDS], uint t) {
#ifdef FLP_TEXEL_KV
    return subgroupBroadcast(rows[t / LANES], t % LANES);
#else
    uvec2 a = unpackUint2x32(rows[t / LANES]);
    return packUint2x32(uvec2(subgroupBroadcast(a.x, t % LANES), subgroupBroadcast(a.y, t % LANES)));
#endif
}

// Sum over the LANES lanes (xor butterfly: every lane ends with the same bits).
float lane_sum(float v) {
    [[unroll]] for (uint k = 0u; k < MAX_LOG2_LANES; k++) {
        uint off = 1u << k;
        if (off < LANES)
            v += subgroupShuffleXor(v, off);
    }
    return v;
}

void main() {
    DecodeParams P = DecodeParams(push.params);
    DecodePlanInfo I = DecodePlanInfo(P.plan); // what the last (re-)plan decided
    lane_ = gl_LocalInvocationIndex;

    g_q_bf16 = uint(I.q_dtype) == FLP_DT_BF16;
    g_kv_bf16 = uint(I.kv_dtype) == FLP_DT_BF16;
    uint flags = I.flags;
    bool mine = (flags & ~FEATURES) == 0u && (DEFER == 0xffffffffu || (flags & ~DEFER) != 0u);
    flags &= FEATURES; // constant-folds the features compiled out
    bool causal = (flags & FLP_FLAG_CAUSAL) != 0u;
    bool window = (flags & FLP_FLAG_WINDOW) != 0u;
    bool softcap = (flags & FLP_FLAG_SOFTCAP) != 0u;
    bool alibi = (flags & FLP_FLAG_ALIBI) != 0u;
    bool rope = (flags & FLP_FLAG_ROPE) != 0u;
    bool fp8 = KV_BYTES == 1u;
    float logit_scale = I.sm_scale * (fp8 ? I.k_scale : 1.0);
    float out_scale = fp8 ? I.v_scale : 1.0;
    float soft_cap = I.soft_cap;
    int window_left = I.window_left;
    int page_size = I.page_size;
    int page_shift = bitCount(page_size) == 1 ? findLSB(page_size) : -1; // divisions are slow
    // KV page and slot strides fit 32 bits (the host checks); page * stride may not
    int k_sp = int(P.k_stride_page), k_ss = int(P.k_stride_slot);
    int v_sp = int(P.v_stride_page), v_ss = int(P.v_stride_slot);
    int qo_len = I.qo_len;
    int group = I.group_size;
    int rows_total = qo_len * group;
    uint64_t plan = P.plan;

    [[unroll]] for (uint i = 0u; i < FREQS; i++)
        g_freq[i] = 0.0;
    if (rope) {
        F32Ref freq = plan_floats(plan, I.off_rope_freq);
        [[unroll]] for (uint i = 0u; i < FREQS; i++) {
            uint d = NC == 1u ? (lane_ % (LANES / 2u)) * 8u + i
                              : chunk_of(i / 8u) * 8u + i % 8u;
            g_freq[i] = freq.v[d];
        }
    }

    g_sink = 0u;
    int cta = int(gl_WorkGroupID.x);
    I32Ref work_indptr = plan_ints(plan, I.off_work_indptr);
    int item_begin = work_indptr.v[cta];
    int item_end = mine ? work_indptr.v[cta + 1] : item_begin;
    for (int item = item_begin; item < item_end; item++) {
        I32Ref work = I32Ref(uint64_t(plan_ints(plan, I.off_work_items)) +
                             4ul * uint64_t(item * FLP_WORK_ITEM_INTS));
        int b = work.v[FLP_WORK_REQUEST];
        int g = work.v[FLP_WORK_KV_HEAD];
        int kv_begin = work.v[FLP_WORK_KV_BEGIN];
        int kv_end = work.v[FLP_WORK_KV_END];
        int slot = work.v[FLP_WORK_PARTIAL_SLOT];
        int kv_len = plan_ints(plan, I.off_kv_len).v[b];
        I32Ref pages = I32Ref(uint64_t(plan_ints(plan, I.off_kv_indices)) +
                              4ul * uint64_t(plan_ints(plan, I.off_kv_indptr).v[b]));
#ifdef FLP_TEXEL_KV
        ROW_T k_head = push.k_base + uint(int64_t(g) * P.k_stride_head) * KV_BYTES;
        ROW_T v_head = push.v_base + uint(int64_t(g) * P.v_stride_head) * KV_BYTES;
#else
        ROW_T k_head = P.k + uint64_t(int64_t(g) * P.k_stride_head) * uint64_t(KV_BYTES);
        ROW_T v_head = P.v + uint64_t(int64_t(g) * P.v_stride_head) * uint64_t(KV_BYTES);
#endif
        int k_rope = rope ? plan_ints(plan, I.off_k_rope_offset).v[b] : 0;
        int q_rope = rope ? plan_ints(plan, I.off_q_rope_offset).v[b] : 0;

        for (int row0 = 0; row0 < rows_total; row0 += int(ROWS)) {
            // The pass's rows: row rr = qi * group + hh; rows past the end repeat the last one
            // (valid addresses, results not written).
            int rr_[ROWS], h_[ROWS], r_[ROWS], pos_[ROWS];
            float slope_[ROWS], q[ROWS][E], acc[ROWS][E], m[ROWS], l[ROWS];
            [[unroll]] for (uint j = 0u; j < ROWS; j++) {
                int rr = min(row0 + int(j), rows_total - 1);
                int qi = rr / group;
                rr_[j] = rr;
                h_[j] = g * group + rr % group;
                r_[j] = b * qo_len + qi;
                pos_[j] = kv_len - qo_len + qi;
                slope_[j] = alibi ? plan_floats(plan, I.off_alibi_slopes).v[h_[j]] : 0.0;
                int64_t q_off = int64_t(r_[j]) * P.q_stride_row + int64_t(h_[j]) * P.q_stride_head;
                float x[E];
                load_q_lane(P.q + 2ul * uint64_t(q_off), x);
                if (rope)
                    rope_lane(x, pos_[j] + q_rope);
                [[unroll]] for (uint e = 0u; e < E; e++) {
                    q[j][e] = x[e];
                    acc[j][e] = 0.0;
                }
                m[j] = NEG_BIG;
                l[j] = 0.0;
            }

            // The key loop: STEP keys per iteration (keys past kv_end load the last key again
            // and are masked). The rows of the next step are looked up and touched one
            // iteration ahead.
            ROW_T k_next[ROUNDS], v_next[ROUNDS];
            lane_rows(pages, page_size, page_shift, kv_begin, kv_end, k_head, v_head, k_sp, k_ss,
                      v_sp, v_ss, k_next, v_next);
            g_sink ^= touch_rows(k_next, v_next);
            for (int base = kv_begin; base < kv_end; base += int(STEP)) {
                float s[ROWS][STEP];
                int tok_[STEP];
                ROW_T k_rows[ROUNDS], v_rows[ROUNDS];
                [[unroll]] for (uint r = 0u; r < ROUNDS; r++) {
                    k_rows[r] = k_next[r];
                    v_rows[r] = v_next[r];
                }
                lane_rows(pages, page_size, page_shift, base + int(STEP), kv_end, k_head, v_head,
                          k_sp, k_ss, v_sp, v_ss, k_next, v_next);
                g_sink ^= touch_rows(k_next, v_next);
                ROW_T k_row[STEP], v_row[STEP];
                [[unroll]] for (uint t = 0u; t < STEP; t++) {
                    tok_[t] = base + int(t);
                    k_row[t] = step_row(k_rows, t);
                    v_row[t] = step_row(v_rows, t);
                }
                [[unroll]] for (uint t = 0u; t < STEP; t++) {
                    float x[E];
                    load_kv_lane(false, k_row[t], x);
                    if (rope)
                        rope_lane(x, min(tok_[t], kv_end - 1) + k_rope);
                    [[unroll]] for (uint j = 0u; j < ROWS; j++) {
                        float dot = 0.0;
                        [[unroll]] for (uint e = 0u; e < E; e++)
                            dot += q[j][e] * x[e];
                        s[j][t] = dot;
                    }
                }
                // Logits, the masks and the online softmax (uniform across lanes after the
                // reduction, so every select below is branch-free for llvmpipe).
                float p[ROWS][STEP];
                [[unroll]] for (uint j = 0u; j < ROWS; j++) {
                    float m_new = m[j];
                    bool kept[STEP];
                    [[unroll]] for (uint t = 0u; t < STEP; t++) {
                        int t_ = tok_[t];
                        kept[t] = t_ < kv_end && (!causal || t_ <= pos_[j]) &&
                                  (!window || t_ >= pos_[j] - window_left);
                        float x = lane_sum(s[j][t]) * logit_scale;
                        if (softcap)
                            x = soft_cap * tanh(clamp(x / soft_cap, -15.0, 15.0));
                        if (alibi)
                            x += slope_[j] * float(t_ - pos_[j]);
                        x *= LOG2E;
                        s[j][t] = x;
                        m_new = kept[t] ? max(m_new, x) : m_new;
                    }
                    // exp2(0) need not be exactly 1 on every driver: rescale only on a change
                    float alpha = m_new > m[j] ? exp2(m[j] - m_new) : 1.0;
                    m[j] = m_new;
                    float sum = 0.0;
                    [[unroll]] for (uint t = 0u; t < STEP; t++) {
                        p[j][t] = kept[t] ? exp2(s[j][t] - m_new) : 0.0;
                        sum += p[j][t];
                    }
                    l[j] = l[j] * alpha + sum;
                    [[unroll]] for (uint e = 0u; e < E; e++)
                        acc[j][e] *= alpha;
                }
                [[unroll]] for (uint t = 0u; t < STEP; t++) {
                    float x[E];
                    load_kv_lane(true, v_row[t], x);
                    [[unroll]] for (uint j = 0u; j < ROWS; j++)
                        [[unroll]] for (uint e = 0u; e < E; e++)
                            acc[j][e] += p[j][t] * x[e];
                }
            }

            // Keeps the touches: slot is never below -1, which no compiler can know.
            if (slot < -1 && g_sink == 0x5eedu)
                F32Ref(P.o).v[0] = 0.0;

            // The rows of this pass: out/lse, or the partial state for the merge.
            [[unroll]] for (uint j = 0u; j < ROWS; j++) {
                if (row0 + int(j) >= rows_total)
                    continue;
                bool any = l[j] > 0.0;
                float inv = any ? out_scale / l[j] : 0.0; // no kept key: exactly 0
                float lse = any ? (m[j] + log2(l[j])) * LN2 : uintBitsToFloat(0xff800000u);
                if (slot < 0) {
                    int64_t o_off = int64_t(r_[j]) * P.o_stride_row + int64_t(h_[j]) * P.o_stride_head;
                    uint64_t o_row = P.o + 2ul * uint64_t(o_off);
                    [[unroll]] for (uint c = 0u; c < NC; c++) {
                        uvec4 w;
                        [[unroll]] for (uint i = 0u; i < 4u; i++)
                            w[i] = flp_pack16x2(g_q_bf16 ? FLP_DT_BF16 : FLP_DT_F16,
                                                acc[j][c * 8u + 2u * i] * inv,
                                                acc[j][c * 8u + 2u * i + 1u] * inv);
                        U4Ref(o_row + 16ul * uint64_t(chunk_of(c))).v = w;
                    }
                    if (P.lse != 0ul && lane_ == 0u) {
                        int64_t l_off = int64_t(r_[j]) * P.lse_stride_row + int64_t(h_[j]);
                        F32Ref(P.lse + 4ul * uint64_t(l_off)).v[0] = lse;
                    }
                } else {
                    // partial row (slot, qi, hh) = slot * rows_total + rr
                    int prow = slot * rows_total + rr_[j];
                    F32Ref p_row = F32Ref(uint64_t(plan_floats(plan, I.off_partial_o)) +
                                          4ul * uint64_t(prow) * uint64_t(HEAD_DIM));
                    [[unroll]] for (uint c = 0u; c < NC; c++)
                        [[unroll]] for (uint e = 0u; e < 8u; e++)
                            p_row.v[chunk_of(c) * 8u + e] = acc[j][c * 8u + e] * inv;
                    if (lane_ == 0u)
                        plan_floats(plan, I.off_partial_lse).v[prow] = lse;
                }
            }
        }
    }
}
