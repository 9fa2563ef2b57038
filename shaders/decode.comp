#version 460
// Batch decode over a paged KV cache (docs: /work/notes/decode_kernel_spec.md, the contract
// both backends implement). Workgroup c runs work items work_indptr[c] .. [c+1]-1 in order.
//
// Thread layout (all sizes are specialisation constants chosen by the host from the device
// limits, nothing assumes a subgroup or shared-memory size):
//   lane  in [0, LANES): the LANES threads that share one K/V row; lane l owns the 8-element
//         chunks l, l + LANES, ... of the head dim (NC chunks: NC even keeps the rotate-half
//         partner d + D/2 of every owned element in the same thread; NC = 1 fetches it from
//         lane l ^ LANES/2 by a shuffle). LANES divides the subgroup size: a row's dot product
//         is reduced with subgroup shuffles.
//   ty    in [0, ROWS): a query row (qi, query head) of the item's GQA group: all rows share
//         every K/V row loaded into shared memory.
//   tz    in [0, TOKEN_GROUPS): token groups, each with its own online-softmax state over
//         TOKENS_PER_GROUP tokens of each tile; merged across the workgroup at the end.
// Per tile of TILE tokens the whole workgroup loads K and V with coalesced 16-byte loads
// (8-byte for fp8) into registers, stores them to shared memory (fp8 widened to f16 there,
// once per element) and computes; the next tile's loads are issued before the computation on
// the current one, so global-memory latency overlaps the math.
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_buffer_reference : require
#extension GL_EXT_buffer_reference2 : require
#extension GL_EXT_shader_explicit_arithmetic_types_int64 : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_shuffle : require
#extension GL_EXT_control_flow_attributes : require

#include "decode_params.glsl"
#include "dtype.glsl"

layout(constant_id = FLP_SPEC_HEAD_DIM) const uint HEAD_DIM = 128;
layout(constant_id = FLP_SPEC_Q_DTYPE) const uint Q_DTYPE = FLP_DT_F16;
layout(constant_id = FLP_SPEC_KV_DTYPE) const uint KV_DTYPE = FLP_DT_F16;
layout(constant_id = FLP_SPEC_KV_BYTES) const uint KV_BYTES = 2; // bytes per KV element: 2 or 1 (fp8)
layout(constant_id = FLP_SPEC_LANES) const uint LANES = 8;
layout(constant_id = FLP_SPEC_ROWS) const uint ROWS = 4;
layout(constant_id = FLP_SPEC_DECODE_TOKEN_GROUPS) const uint TOKEN_GROUPS = 4;
layout(constant_id = FLP_SPEC_DECODE_TOKENS_PER_GROUP) const uint TOKENS_PER_GROUP = 4;
layout(constant_id = FLP_SPEC_DECODE_SMEM_U2) const uint SMEM_U2 = 4096; // uvec2 words of s_mem (host computed)
layout(local_size_x_id = FLP_SPEC_DECODE_THREADS) in;                     // = LANES * ROWS * TOKEN_GROUPS

const uint WG = LANES * ROWS * TOKEN_GROUPS;
const uint CHUNKS = HEAD_DIM / 8u;    // 8-element chunks per row
const uint NC = CHUNKS / LANES;       // chunks per thread (1 or even)
const uint HALF_NC = NC / 2u;
const uint E = NC * 8u;               // elements per thread
const uint TILE = TOKEN_GROUPS * TOKENS_PER_GROUP;
const uint TILE_CHUNKS = TILE * CHUNKS;
const uint LOAD_SLOTS = (TILE_CHUNKS + WG - 1u) / WG; // chunks of K (and of V) per thread
const uint TOKEN_U2 = CHUNKS * 2u + 1u; // shared row: 16-bit chunks, +1 so rows of a tile
                                        // fall on different banks
const uint TILE_U2 = TILE * TOKEN_U2;   // K tile; the V tile follows
const uint RED_ACC_U2 = TOKEN_GROUPS * ROWS * (HEAD_DIM / 2u); // reduction: acc pairs, then (m, l)

const float NEG_BIG = -1.0e30; // "no key yet": exp2(NEG_BIG - m) is 0 for any real m
const float LOG2E = 1.4426950408889634;
const float LN2 = 0.6931471805599453;

// K/V tiles during the key loop; the cross-token-group reduction afterwards.
shared uvec2 s_mem[SMEM_U2];
shared float s_freq[HEAD_DIM / 2u];

// Per-thread state of the current row.
float g_q[E];   // the query row (rotated with RoPE); the scale is applied to the dot product
float g_acc[E]; // sum of p * v
float g_m;      // running max of log2-domain logits
float g_l;      // running sum of exp2(logit - g_m)

uint lane_, ty_, tz_, tid_;

// The current item's KV addressing (set per item) and the prefetched chunks of the next tile.
uint64_t g_kv_indices; // address of the request's first page id
int g_page_size, g_page_shift, g_kv_end; // g_page_shift: log2(page size), -1 if not a power of 2
uint64_t g_k_head, g_v_head; // address of element (page 0, slot 0, this KV head, d 0)
int g_k_sp, g_k_ss, g_v_sp, g_v_ss; // elements (< 2^31, checked by the host)
uvec4 g_kw[LOAD_SLOTS], g_vw[LOAD_SLOTS];

// Element index of chunk slot c (0..NC-1) of this thread.
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

// Rotate-half RoPE on a thread's chunk pair (c, c + HALF_NC) at position pos.
void rope_pair(inout float lo[8], inout float hi[8], uint c, int pos) {
    uint d0 = chunk_of(c) * 8u;
    [[unroll]] for (uint e = 0u; e < 8u; e++) {
        float s, co;
        sincos_reduced(float(pos) * s_freq[d0 + e], s, co);
        float a = lo[e], b = hi[e];
        lo[e] = a * co - b * s;
        hi[e] = b * co + a * s;
    }
}

// Rotate-half RoPE when each thread owns one chunk (NC = 1): the partner chunk (d +- D/2)
// belongs to lane ^ LANES/2. All lanes of the subgroup call this together.
void rope_shuffle(inout float x[8], int pos) {
    bool upper = lane_ >= LANES / 2u;
    uint d0 = (lane_ % (LANES / 2u)) * 8u;
    [[unroll]] for (uint e = 0u; e < 8u; e++) {
        float y = subgroupShuffleXor(x[e], LANES / 2u);
        float s, co;
        sincos_reduced(float(pos) * s_freq[d0 + e], s, co);
        x[e] = upper ? x[e] * co + y * s : x[e] * co - y * s;
    }
}

void load_q(uint64_t row_addr, bool ok, bool rope, int pos) {
    if (NC == 1u) {
        uvec4 w = uvec4(0u);
        if (ok)
            w = U4Ref(row_addr + 16ul * uint64_t(lane_)).v;
        float x[8];
        flp_decode8(Q_DTYPE, w, x);
        if (rope)
            rope_shuffle(x, pos);
        [[unroll]] for (uint e = 0u; e < 8u; e++)
            g_q[e] = x[e];
        return;
    }
    [[unroll]] for (uint c = 0u; c < HALF_NC; c++) {
        uvec4 wl = uvec4(0u), wh = uvec4(0u);
        if (ok) {
            wl = U4Ref(row_addr + 16ul * uint64_t(chunk_of(c))).v;
            wh = U4Ref(row_addr + 16ul * uint64_t(chunk_of(c + HALF_NC))).v;
        }
        float lo[8], hi[8];
        flp_decode8(Q_DTYPE, wl, lo);
        flp_decode8(Q_DTYPE, wh, hi);
        if (rope)
            rope_pair(lo, hi, c, pos);
        [[unroll]] for (uint e = 0u; e < 8u; e++) {
            g_q[c * 8u + e] = lo[e];
            g_q[(c + HALF_NC) * 8u + e] = hi[e];
        }
    }
}

// The dtype of the shared tiles: fp8 arrives widened to f16.
uint tile_dtype() {
    return KV_BYTES == 1u ? FLP_DT_F16 : KV_DTYPE;
}

// 8 elements of chunk ch of tile token tt from the K (base 0) or V (base TILE_U2) tile.
void read_chunk(uint base, uint tt, uint ch, out float x[8]) {
    uint o = base + tt * TOKEN_U2 + ch * 2u;
    flp_decode8(tile_dtype(), uvec4(s_mem[o], s_mem[o + 1u]), x);
}

// Issues the loads of tile [base, base + TILE) into g_kw / g_vw: page ids first, then all
// K and V chunks, so every load of the tile is in flight at once. Zeros past g_kv_end.
void prefetch(int base) {
    int page[LOAD_SLOTS];
    [[unroll]] for (uint s = 0u; s < LOAD_SLOTS; s++) {
        uint i = tid_ + s * WG;
        int t = base + int(i / CHUNKS);
        page[s] = -1;
        if (i < TILE_CHUNKS && t < g_kv_end)
            page[s] = I32Ref(g_kv_indices).v[g_page_shift >= 0 ? t >> g_page_shift
                                                                : t / g_page_size];
    }
    [[unroll]] for (uint s = 0u; s < LOAD_SLOTS; s++) {
        uint i = tid_ + s * WG;
        int t = base + int(i / CHUNKS);
        int64_t d = int64_t((i % CHUNKS) * 8u);
        uvec4 kw = uvec4(0u), vw = uvec4(0u);
        if (page[s] >= 0) {
            int64_t pg = int64_t(page[s]);
            int slot = g_page_shift >= 0 ? t & (g_page_size - 1) : t % g_page_size;
            uint64_t ka = g_k_head + uint64_t(pg * int64_t(g_k_sp) + int64_t(slot * g_k_ss) + d) *
                                         uint64_t(KV_BYTES);
            uint64_t va = g_v_head + uint64_t(pg * int64_t(g_v_sp) + int64_t(slot * g_v_ss) + d) *
                                         uint64_t(KV_BYTES);
            if (KV_BYTES == 1u) {
                kw.xy = U2Ref(ka).v;
                vw.xy = U2Ref(va).v;
            } else {
                kw = U4Ref(ka).v;
                vw = U4Ref(va).v;
            }
        }
        g_kw[s] = kw;
        g_vw[s] = vw;
    }
}

uvec4 widen(uvec4 w) {
    if (KV_DTYPE == FLP_DT_E4M3)
        return uvec4(flp_e4m3x4_to_f16x4_scaled(w.x), flp_e4m3x4_to_f16x4_scaled(w.y));
    if (KV_DTYPE == FLP_DT_E5M2)
        return uvec4(flp_e5m2x4_to_f16x4(w.x), flp_e5m2x4_to_f16x4(w.y));
    return w;
}

// The prefetched tile into shared memory (the caller surrounds it with barriers).
void store_tile() {
    [[unroll]] for (uint s = 0u; s < LOAD_SLOTS; s++) {
        uint i = tid_ + s * WG;
        if (i < TILE_CHUNKS) {
            uint o = (i / CHUNKS) * TOKEN_U2 + (i % CHUNKS) * 2u;
            uvec4 kw = widen(g_kw[s]), vw = widen(g_vw[s]);
            s_mem[o] = kw.xy;
            s_mem[o + 1u] = kw.zw;
            s_mem[TILE_U2 + o] = vw.xy;
            s_mem[TILE_U2 + o + 1u] = vw.zw;
        }
    }
}

void main() {
    DecodeParams P = DecodeParams(push.params);
    DecodePlanInfo I = DecodePlanInfo(P.plan); // what the last (re-)plan decided
    uint tid = gl_LocalInvocationIndex;
    tid_ = tid;
    lane_ = tid % LANES;
    ty_ = (tid / LANES) % ROWS;
    tz_ = tid / (LANES * ROWS);

    // Parameters are read from P and I where they are used, not held in registers across the
    // key loop: registers decide how many workgroups an SM holds, and this kernel lives on that.
    uint flags = I.flags;
    bool causal = (flags & FLP_FLAG_CAUSAL) != 0u;
    bool window = (flags & FLP_FLAG_WINDOW) != 0u;
    bool softcap = (flags & FLP_FLAG_SOFTCAP) != 0u;
    bool alibi = (flags & FLP_FLAG_ALIBI) != 0u;
    bool rope = (flags & FLP_FLAG_ROPE) != 0u;
    bool fp8 = KV_BYTES == 1u;
    // fp8 scales are linear: k_scale folds into the logit scale, v_scale into the output (with
    // the exact 2^8 of e4m3's f16 widening)
    float widen_scale = KV_DTYPE == FLP_DT_E4M3 ? FLP_E4M3_F16_SCALE : 1.0;
    float logit_scale = I.sm_scale * (fp8 ? I.k_scale * widen_scale : 1.0);
    // KV strides fit 32 bits (decode_check refuses others); page * stride is 64-bit
    g_k_sp = int(P.k_stride_page);
    g_k_ss = int(P.k_stride_slot);
    g_v_sp = int(P.v_stride_page);
    g_v_ss = int(P.v_stride_slot);
    g_page_size = I.page_size;
    g_page_shift = bitCount(g_page_size) == 1 ? findLSB(g_page_size) : -1; // divisions are slow

    if (rope) {
        F32Ref freq = plan_floats(P.plan, I.off_rope_freq);
        for (uint i = tid; i < HEAD_DIM / 2u; i += WG)
            s_freq[i] = freq.v[i];
    }
    barrier();

    int cta = int(gl_WorkGroupID.x);
    int item_end = plan_ints(P.plan, I.off_work_indptr).v[cta + 1];
    for (int item = plan_ints(P.plan, I.off_work_indptr).v[cta]; item < item_end; item++) {
        I32Ref work = I32Ref(uint64_t(plan_ints(P.plan, I.off_work_items)) +
                             4ul * uint64_t(item * FLP_WORK_ITEM_INTS));
        int b = work.v[FLP_WORK_REQUEST];
        int g = work.v[FLP_WORK_KV_HEAD];
        int kv_begin = work.v[FLP_WORK_KV_BEGIN];
        int kv_end = work.v[FLP_WORK_KV_END];
        int slot = work.v[FLP_WORK_PARTIAL_SLOT];
        int kv_len = plan_ints(P.plan, I.off_kv_len).v[b];
        g_kv_indices = uint64_t(plan_ints(P.plan, I.off_kv_indices)) +
                       4ul * uint64_t(plan_ints(P.plan, I.off_kv_indptr).v[b]);
        g_kv_end = kv_end;
        g_k_head = P.k + uint64_t(int64_t(g) * P.k_stride_head) * uint64_t(KV_BYTES);
        g_v_head = P.v + uint64_t(int64_t(g) * P.v_stride_head) * uint64_t(KV_BYTES);
        int k_rope = rope ? plan_ints(P.plan, I.off_k_rope_offset).v[b] : 0;
        int qo_len = I.qo_len;
        int group = I.group_size;
        int rows_total = qo_len * group;

        // Passes of ROWS rows over the keys: one pass unless the group x qo_len is larger.
        for (int row0 = 0; row0 < rows_total; row0 += int(ROWS)) {
            int rr = row0 + int(ty_);
            bool row_ok = rr < rows_total;
            int qi = row_ok ? rr / group : 0;
            int hh = row_ok ? rr % group : 0;
            int h = g * group + hh;
            int r = b * qo_len + qi;
            int pos = kv_len - qo_len + qi;
            float slope = 0.0;
            if (alibi && row_ok)
                slope = plan_floats(P.plan, I.off_alibi_slopes).v[h];
            int q_rope = rope ? plan_ints(P.plan, I.off_q_rope_offset).v[b] : 0;
            int window_left = I.window_left;
            float soft_cap = I.soft_cap;

            int64_t q_off = int64_t(r) * P.q_stride_row + int64_t(h) * P.q_stride_head;
            load_q(P.q + 2ul * uint64_t(q_off), row_ok, rope, pos + q_rope);
            g_m = NEG_BIG;
            g_l = 0.0;
            [[unroll]] for (uint e = 0u; e < E; e++)
                g_acc[e] = 0.0;

            if (kv_begin < kv_end)
                prefetch(kv_begin);
            for (int base = kv_begin; base < kv_end; base += int(TILE)) {
                barrier(); // the previous tile (or reduction) is no longer read
                store_tile();
                barrier();
                if (base + int(TILE) < kv_end)
                    prefetch(base + int(TILE)); // in flight during the math below

                // This token group's tokens, one at a time (a rolled loop keeps registers low:
                // the occupancy, not the arithmetic, limits a memory-bound kernel).
                [[dont_unroll]] for (uint j = 0u; j < TOKENS_PER_GROUP; j++) {
                    uint tt = tz_ * TOKENS_PER_GROUP + j;
                    int t = base + int(tt);
                    float dot = 0.0;
                    if (NC == 1u) {
                        float x[8];
                        read_chunk(0u, tt, lane_, x);
                        if (rope)
                            rope_shuffle(x, t + k_rope);
                        [[unroll]] for (uint e = 0u; e < 8u; e++)
                            dot += g_q[e] * x[e];
                    }
                    [[unroll]] for (uint c = 0u; c < HALF_NC; c++) {
                        float lo[8], hi[8];
                        read_chunk(0u, tt, chunk_of(c), lo);
                        read_chunk(0u, tt, chunk_of(c + HALF_NC), hi);
                        if (rope)
                            rope_pair(lo, hi, c, t + k_rope);
                        [[unroll]] for (uint e = 0u; e < 8u; e++)
                            dot += g_q[c * 8u + e] * lo[e] + g_q[(c + HALF_NC) * 8u + e] * hi[e];
                    }
                    // xor butterfly: every lane ends with the same bits (a + b == b + a)
                    [[unroll]] for (uint off = LANES / 2u; off > 0u; off >>= 1u)
                        dot += subgroupShuffleXor(dot, off);
                    bool kept = t < kv_end && (!causal || t <= pos) &&
                                (!window || t >= pos - window_left);
                    if (!kept)
                        continue; // same for the LANES threads of the row
                    float x = dot * logit_scale;
                    if (softcap)
                        x = soft_cap * tanh(clamp(x / soft_cap, -15.0, 15.0));
                    if (alibi)
                        x += slope * float(t - pos);
                    x *= LOG2E;
                    if (x > g_m) { // new maximum: rescale what was summed so far
                        float alpha = g_m > NEG_BIG ? exp2(g_m - x) : 0.0;
                        g_l *= alpha;
                        [[unroll]] for (uint e = 0u; e < E; e++)
                            g_acc[e] *= alpha;
                        g_m = x;
                    }
                    float p = exp2(x - g_m);
                    g_l += p;
                    [[unroll]] for (uint c = 0u; c < NC; c++) {
                        float v[8];
                        read_chunk(TILE_U2, tt, chunk_of(c), v);
                        [[unroll]] for (uint e = 0u; e < 8u; e++)
                            g_acc[c * 8u + e] += p * v[e];
                    }
                }
            }

            // Merge the token groups' states in a fixed order (deterministic).
            if (TOKEN_GROUPS > 1u) {
                barrier(); // tiles are no longer read
                uint acc_base = (tz_ * ROWS + ty_) * (HEAD_DIM / 2u);
                [[unroll]] for (uint c = 0u; c < NC; c++)
                    [[unroll]] for (uint e = 0u; e < 8u; e += 2u)
                        s_mem[acc_base + (chunk_of(c) * 8u + e) / 2u] = floatBitsToUint(
                            vec2(g_acc[c * 8u + e], g_acc[c * 8u + e + 1u]));
                if (lane_ == 0u)
                    s_mem[RED_ACC_U2 + tz_ * ROWS + ty_] = floatBitsToUint(vec2(g_m, g_l));
                barrier();
                if (tz_ == 0u) {
                    float m_all = NEG_BIG;
                    for (uint z = 0u; z < TOKEN_GROUPS; z++)
                        m_all = max(m_all, uintBitsToFloat(s_mem[RED_ACC_U2 + z * ROWS + ty_].x));
                    float l_all = 0.0;
                    [[unroll]] for (uint e = 0u; e < E; e++)
                        g_acc[e] = 0.0;
                    for (uint z = 0u; z < TOKEN_GROUPS; z++) {
                        vec2 ml = uintBitsToFloat(s_mem[RED_ACC_U2 + z * ROWS + ty_]);
                        float w = ml.x > NEG_BIG ? exp2(ml.x - m_all) : 0.0;
                        l_all += ml.y * w;
                        uint zb = (z * ROWS + ty_) * (HEAD_DIM / 2u);
                        [[unroll]] for (uint c = 0u; c < NC; c++)
                            [[unroll]] for (uint e = 0u; e < 8u; e += 2u) {
                                vec2 a = uintBitsToFloat(
                                    s_mem[zb + (chunk_of(c) * 8u + e) / 2u]);
                                g_acc[c * 8u + e] += a.x * w;
                                g_acc[c * 8u + e + 1u] += a.y * w;
                            }
                    }
                    g_m = m_all;
                    g_l = l_all;
                }
            }

            if (tz_ == 0u && row_ok) {
                bool any = g_l > 0.0;
                float out_scale = fp8 ? I.v_scale * widen_scale : 1.0;
                float inv = any ? out_scale / g_l : 0.0; // no kept key: exactly 0
                float lse2 = g_m + log2(any ? g_l : 1.0);
                float lse = any ? lse2 * LN2 : uintBitsToFloat(0xff800000u);
                if (slot < 0) {
                    int64_t o_off =
                        int64_t(r) * P.o_stride_row + int64_t(h) * P.o_stride_head;
                    uint64_t o_row = P.o + 2ul * uint64_t(o_off);
                    [[unroll]] for (uint c = 0u; c < NC; c++) {
                        uvec4 w;
                        [[unroll]] for (uint i = 0u; i < 4u; i++)
                            w[i] = flp_pack16x2(Q_DTYPE, g_acc[c * 8u + 2u * i] * inv,
                                                g_acc[c * 8u + 2u * i + 1u] * inv);
                        U4Ref(o_row + 16ul * uint64_t(chunk_of(c))).v = w;
                    }
                    if (P.lse != 0ul && lane_ == 0u) {
                        int64_t l_off = int64_t(r) * P.lse_stride_row + int64_t(h);
                        F32Ref(P.lse + 4ul * uint64_t(l_off)).v[0] = lse;
                    }
                } else {
                    // partial row (slot, qi, hh) = slot * rows_total + rr
                    int prow = slot * rows_total + rr;
                    F32Ref p_row = plan_floats(P.plan, I.off_partial_o);
                    p_row = F32Ref(uint64_t(p_row) + 4ul * uint64_t(prow) * uint64_t(HEAD_DIM));
                    [[unroll]] for (uint c = 0u; c < NC; c++)
                        [[unroll]] for (uint e = 0u; e < 8u; e++)
                            p_row.v[chunk_of(c) * 8u + e] = g_acc[c * 8u + e] * inv;
                    if (lane_ == 0u)
                        plan_floats(P.plan, I.off_partial_lse).v[prow] = lse;
                }
            }
        }
    }
}
