#version 460
// Batch prefill / append attention over a paged or ragged KV cache (the contract both backends
// implement: /work/notes/prefill_kernel_spec.md, core/prefill_params.h). Persistent
// workgroups: workgroup c runs work items work_indptr[c] .. [c+1]-1 in order; an item's packed
// query rows are processed in passes of this shader's own tile (BQ rows), whatever tile the
// plan had in mind.
//
// Thread layout (all sizes are specialisation constants chosen by the host from the device
// limits: nothing assumes a subgroup or shared-memory size):
//   lane in [0, LANES): the LANES consecutive invocations that share query rows; lane l owns
//        the 4-element columns l, l + LANES, ... of the head dim (NV of them, NV even, so the
//        rotate-half partner d + D/2 of every owned element is owned by the same lane). A
//        row's dot product is reduced over the LANES lanes with subgroup shuffles (LANES
//        divides the smallest subgroup size).
//   grp  in [0, GROUPS): row groups; group grp owns the ROWS query rows grp*ROWS + r of the
//        pass in registers (the query and the f32 accumulator), so every key and value read
//        from shared memory serves ROWS rows.
// Per KV tile of BK keys the whole workgroup loads K and V with 16-byte loads (8 for fp8),
// decodes them to f32 (fp8 and bf16 by bit manipulation, dtype.glsl), rotates K (RoPE) once
// per key, and stores both in shared memory; then every row group walks the tile in
// sub-blocks of SB keys: SB dot products per row, the masks, one online-softmax rescale per
// sub-block, and p * v. Key tiles that causal or window masks drop for every row of the pass
// are not loaded.
//
// Every loop with a trip count fixed at pipeline creation is unrolled except the sub-block
// loop (the bulk of the shader: unrolled, llvmpipe takes twice as long to compile it, ~8 s);
// the rolled loops (items, row passes, key tiles, sub-blocks) are what vk_prefill.c counts
// against llvmpipe's loop budget (it silently ends every loop of an invocation after 65535
// iterations in total).
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_buffer_reference : require
#extension GL_EXT_buffer_reference2 : require
#extension GL_EXT_shader_explicit_arithmetic_types_int64 : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_shuffle : require
#extension GL_EXT_control_flow_attributes : require

#include "prefill_params.glsl"
#include "dtype.glsl"

layout(constant_id = FLP_SPEC_HEAD_DIM) const uint HEAD_DIM = 128;
layout(constant_id = FLP_SPEC_Q_DTYPE) const uint Q_DTYPE = FLP_DT_F16;
layout(constant_id = FLP_SPEC_KV_DTYPE) const uint KV_DTYPE = FLP_DT_F16;
layout(constant_id = FLP_SPEC_KV_BYTES) const uint KV_BYTES = 2; // bytes per KV element: 2 or 1 (fp8)
layout(constant_id = FLP_SPEC_LANES) const uint LANES = 8;    // invocations per query row
layout(constant_id = FLP_SPEC_ROWS) const uint ROWS = 4;     // query rows per invocation
layout(constant_id = FLP_SPEC_PREFILL_GROUPS) const uint GROUPS = 16;  // row groups per workgroup
layout(constant_id = FLP_SPEC_PREFILL_BK) const uint BK = 32;      // keys per shared K/V tile
layout(constant_id = FLP_SPEC_PREFILL_SB) const uint SB = 8;       // keys per softmax sub-block (divides BK)
layout(local_size_x_id = FLP_SPEC_PREFILL_THREADS) in;                  // = LANES * GROUPS
// 1: the next tile's loads are issued before the current tile's math (GPUs: latency hiding for
// a few registers); 0: loaded when stored (CPU devices, where it buys nothing).
layout(constant_id = FLP_SPEC_PREFILL_PREFETCH) const uint PREFETCH = 1;

const uint WG = LANES * GROUPS;
const uint BQ = GROUPS * ROWS;          // packed query rows per pass
const uint Q4 = HEAD_DIM / 4u;          // 4-element columns of a row
const uint NV = Q4 / LANES;             // columns per lane (even)
const uint HALF_NV = NV / 2u;
const uint CHUNKS = HEAD_DIM / 8u;      // 8-element chunks (one 16-byte load of 16-bit data)
const uint HALF_CHUNKS = CHUNKS / 2u;
const uint K_UNITS = BK * HALF_CHUNKS;  // K is loaded by rotate-half chunk pairs
const uint V_UNITS = BK * CHUNKS;
const uint K_SLOTS = (K_UNITS + WG - 1u) / WG;
const uint V_SLOTS = (V_UNITS + WG - 1u) / WG;

const float NEG_BIG = -1.0e30; // "no key yet": exp2(NEG_BIG - m) is 0 for any real m
const float LOG2E = 1.4426950408889634;
const float LN2 = 0.6931471805599453;

shared vec4 s_k[BK * Q4]; // K tile, f32, dequantised and rotated: [key][column]
shared vec4 s_v[BK * Q4]; // V tile, f32, dequantised (fp8 scale applied at the end)
shared float s_freq[HEAD_DIM / 2u];

uint tid_, lane_, grp_;

// Per-row state of this invocation's ROWS rows.
vec4 g_q[ROWS * NV];   // the query rows (rotated with RoPE), this lane's columns
vec4 g_acc[ROWS * NV]; // sum of p * v
float g_m[ROWS];       // running max of log2-domain logits
float g_l[ROWS];       // running sum of exp2(logit - g_m)

// The current item's KV addressing.
bool g_paged;
uint64_t g_kv_indices; // paged: address of the request's first page id
int64_t g_row_base;    // ragged: the request's first K/V row
int g_page_size, g_kv_head;

float neg_inf() {
    return uintBitsToFloat(0xff800000u);
}

// sin and cos of a possibly large angle: Cody-Waite reduction by 2*pi (two parts) first.
void sincos_reduced(float a, out float s, out float c) {
    precise float k = roundEven(a * 0.15915494309189535);
    precise float r = fma(-k, 6.28318548202514648, a);
    r = fma(-k, -1.7484555314695172e-7, r);
    s = sin(r);
    c = cos(r);
}

vec4 decode4(uint dtype, uvec2 w) {
    return vec4(flp_decode16(dtype, w.x & 0xffffu), flp_decode16(dtype, w.x >> 16),
                flp_decode16(dtype, w.y & 0xffffu), flp_decode16(dtype, w.y >> 16));
}

uvec2 encode4(uint dtype, vec4 x) {
    return uvec2(flp_pack16x2(dtype, x.x, x.y), flp_pack16x2(dtype, x.z, x.w));
}

// Element offset of (token t, this item's KV head, d = 0) in K (is_v false) or V.
int64_t kv_offset(PrefillParams P, int t, bool is_v) {
    int64_t sp = is_v ? P.v_stride_page : P.k_stride_page;
    int64_t ss = is_v ? P.v_stride_slot : P.k_stride_slot;
    int64_t sh = is_v ? P.v_stride_head : P.k_stride_head;
    int64_t head = int64_t(g_kv_head) * sh;
    if (!g_paged)
        return (g_row_base + int64_t(t)) * ss + head;
    int page = I32Ref(g_kv_indices).v[t / g_page_size];
    int slot = t % g_page_size;
    return int64_t(page) * sp + int64_t(slot) * ss + head;
}

// 8 KV elements (16 bytes, or 8 for fp8) at element offset off of the tensor at base.
uvec4 load_kv8(uint64_t base, int64_t off) {
    uint64_t a = base + uint64_t(off) * uint64_t(KV_BYTES);
    if (KV_BYTES == 1u)
        return uvec4(U2Ref(a).v, 0u, 0u);
    return U4Ref(a).v;
}

// The next tile's K and V words, loaded before the current tile is computed (PREFETCH) so
// that global-memory latency overlaps the math; or just before they are stored.
uvec4 g_kw[K_SLOTS * 2u]; // K: the chunk pair (d, d + D/2) of each unit
uvec4 g_vw[V_SLOTS];

// Loads tile [base, base + BK) into g_kw / g_vw: zeros from key hi on (their logits are
// masked, but V must stay finite: 0 * NaN is NaN).
void fetch_tile(PrefillParams P, int base, int hi) {
    [[unroll]] for (uint s = 0u; s < K_SLOTS; s++) {
        uint u = tid_ + s * WG;
        int t = base + int(u / HALF_CHUNKS);
        uvec4 wl = uvec4(0u), wh = uvec4(0u);
        if (u < K_UNITS && t < hi) {
            int64_t off = kv_offset(P, t, false) + int64_t((u % HALF_CHUNKS) * 8u);
            wl = load_kv8(P.k, off);
            wh = load_kv8(P.k, off + int64_t(HEAD_DIM / 2u));
        }
        g_kw[2u * s] = wl;
        g_kw[2u * s + 1u] = wh;
    }
    [[unroll]] for (uint s = 0u; s < V_SLOTS; s++) {
        uint u = tid_ + s * WG;
        int t = base + int(u / CHUNKS);
        uvec4 w = uvec4(0u);
        if (u < V_UNITS && t < hi)
            w = load_kv8(P.v, kv_offset(P, t, true) + int64_t((u % CHUNKS) * 8u));
        g_vw[s] = w;
    }
}

// The fetched tile into shared memory: dequantised to f32, K rotated at key position + k_rope.
void store_tile(int base, bool rope, int k_rope) {
    [[unroll]] for (uint s = 0u; s < K_SLOTS; s++) {
        uint u = tid_ + s * WG;
        if (u < K_UNITS) {
            uint tt = u / HALF_CHUNKS;
            uint ch = u % HALF_CHUNKS;
            float lo[8], hi8[8];
            flp_decode8(KV_DTYPE, g_kw[2u * s], lo);
            flp_decode8(KV_DTYPE, g_kw[2u * s + 1u], hi8);
            if (rope) {
                int t = base + int(tt);
                [[unroll]] for (uint e = 0u; e < 8u; e++) {
                    float sn, cs;
                    sincos_reduced(float(t + k_rope) * s_freq[ch * 8u + e], sn, cs);
                    float a = lo[e], b = hi8[e];
                    lo[e] = a * cs - b * sn;
                    hi8[e] = b * cs + a * sn;
                }
            }
            uint o = tt * Q4 + ch * 2u;
            s_k[o] = vec4(lo[0], lo[1], lo[2], lo[3]);
            s_k[o + 1u] = vec4(lo[4], lo[5], lo[6], lo[7]);
            s_k[o + Q4 / 2u] = vec4(hi8[0], hi8[1], hi8[2], hi8[3]);
            s_k[o + Q4 / 2u + 1u] = vec4(hi8[4], hi8[5], hi8[6], hi8[7]);
        }
    }
    [[unroll]] for (uint s = 0u; s < V_SLOTS; s++) {
        uint u = tid_ + s * WG;
        if (u < V_UNITS) {
            float x[8];
            flp_decode8(KV_DTYPE, g_vw[s], x);
            uint o = (u / CHUNKS) * Q4 + (u % CHUNKS) * 2u;
            s_v[o] = vec4(x[0], x[1], x[2], x[3]);
            s_v[o + 1u] = vec4(x[4], x[5], x[6], x[7]);
        }
    }
}

// Query row r of this invocation: this lane's columns, rotated at position pos.
void load_q_row(uint r, uint64_t row_addr, bool ok, bool rope, int pos) {
    [[unroll]] for (uint c = 0u; c < NV; c++) {
        uvec2 w = uvec2(0u);
        if (ok)
            w = U2Ref(row_addr + 8ul * uint64_t(lane_ + c * LANES)).v;
        g_q[r * NV + c] = decode4(Q_DTYPE, w);
    }
    if (!rope)
        return;
    [[unroll]] for (uint c = 0u; c < HALF_NV; c++) {
        uint d0 = (lane_ + c * LANES) * 4u; // < HEAD_DIM / 2: the partner is column c + HALF_NV
        vec4 lo = g_q[r * NV + c], hi = g_q[r * NV + c + HALF_NV];
        [[unroll]] for (uint e = 0u; e < 4u; e++) {
            float sn, cs;
            sincos_reduced(float(pos) * s_freq[d0 + e], sn, cs);
            float a = lo[e], b = hi[e];
            lo[e] = a * cs - b * sn;
            hi[e] = b * cs + a * sn;
        }
        g_q[r * NV + c] = lo;
        g_q[r * NV + c + HALF_NV] = hi;
    }
}

// Bits of the custom mask for keys t0 .. t0 + n - 1 of query token i (bit j = key t0 + j),
// n <= SB <= 24 (the bits then span at most two aligned words).
uint mask_bits(uint64_t mask, int64_t bit0, int n) {
    if (n <= 0)
        return 0u;
    uint64_t a = mask + uint64_t(bit0 >> 3);
    uint64_t aw = a & ~3ul;
    uint off = uint(a - aw) * 8u + uint(bit0 & 7l);
    uint w0 = uint(I32Ref(aw).v[0]);
    uint w1 = 0u;
    if (off + uint(n) > 32u)
        w1 = uint(I32Ref(aw + 4ul).v[0]);
    uint64_t both = (uint64_t(w1) << 32) | uint64_t(w0);
    return uint(both >> off);
}

void main() {
    PrefillParams P = PrefillParams(push.params);
    PrefillPlanInfo I = PrefillPlanInfo(P.plan); // what the last (re-)plan decided
    tid_ = gl_LocalInvocationIndex;
    lane_ = tid_ % LANES;
    grp_ = tid_ / LANES;

    uint flags = I.flags;
    bool causal = (flags & FLP_FLAG_CAUSAL) != 0u;
    bool window = (flags & FLP_FLAG_WINDOW) != 0u;
    bool softcap = (flags & FLP_FLAG_SOFTCAP) != 0u;
    bool alibi = (flags & FLP_FLAG_ALIBI) != 0u;
    bool rope = (flags & FLP_FLAG_ROPE) != 0u;
    bool custom = (flags & FLP_FLAG_CUSTOM_MASK) != 0u;
    g_paged = (flags & FLP_FLAG_PAGED) != 0u;
    bool fp8 = KV_BYTES == 1u;
    // fp8 scales are linear: k_scale folds into the logit scale, v_scale into the output
    float logit_scale = I.sm_scale * (fp8 ? I.k_scale : 1.0) * LOG2E;
    float out_scale = fp8 ? I.v_scale : 1.0;
    float soft_cap = I.soft_cap;
    int window_left = I.window_left;
    int group = I.group_size;
    g_page_size = I.page_size;
    uint64_t plan = P.plan;

    if (rope) {
        F32Ref freq = plan_floats(plan, I.off_rope_freq);
        [[unroll]] for (uint s = 0u; s < (HEAD_DIM / 2u + WG - 1u) / WG; s++) {
            uint i = tid_ + s * WG;
            if (i < HEAD_DIM / 2u)
                s_freq[i] = freq.v[i];
        }
    }
    barrier();

    int cta = int(gl_WorkGroupID.x);
    I32Ref work_indptr = plan_ints(plan, I.off_work_indptr);
    int item_end = work_indptr.v[cta + 1];
    for (int item = work_indptr.v[cta]; item < item_end; item++) {
        I32Ref work = I32Ref(uint64_t(plan_ints(plan, I.off_work_items)) +
                             4ul * uint64_t(item * FLP_PREFILL_ITEM_INTS));
        int b = work.v[FLP_PITEM_REQUEST];
        int g = work.v[FLP_PITEM_KV_HEAD];
        int row_begin = work.v[FLP_PITEM_ROW_BEGIN];
        int row_end = work.v[FLP_PITEM_ROW_END];
        int kv_begin = work.v[FLP_PITEM_KV_BEGIN];
        int kv_end = work.v[FLP_PITEM_KV_END];
        int slot = work.v[FLP_PITEM_PARTIAL_SLOT];
        I32Ref qo_indptr = plan_ints(plan, I.off_qo_indptr);
        int qo_begin = qo_indptr.v[b];
        int qo_len = qo_indptr.v[b + 1] - qo_begin;
        int kv_len = plan_ints(plan, I.off_kv_len).v[b];
        int kv_start = plan_ints(plan, I.off_kv_indptr).v[b];
        g_kv_head = g;
        g_kv_indices = uint64_t(plan_ints(plan, I.off_kv_indices)) + 4ul * uint64_t(kv_start);
        g_row_base = int64_t(kv_start);
        int q_rope = rope ? plan_ints(plan, I.off_q_rope_offset).v[b] : 0;
        int k_rope = rope ? plan_ints(plan, I.off_k_rope_offset).v[b] : 0;
        int64_t mask_bit_base =
            custom ? int64_t(plan_ints(plan, I.off_mask_indptr).v[b]) * 8l : 0l;

        for (int pass_row = row_begin; pass_row < row_end; pass_row += int(BQ)) {
            // This invocation's rows: packed row p = query token p / group, head p % group.
            int pos[ROWS], tok[ROWS], head[ROWS];
            bool ok[ROWS];
            float slope[ROWS];
            [[unroll]] for (uint r = 0u; r < ROWS; r++) {
                int p = pass_row + int(grp_ * ROWS + r);
                ok[r] = p < row_end;
                int pp = ok[r] ? p : row_begin;
                tok[r] = pp / group;
                head[r] = g * group + pp % group;
                pos[r] = kv_len - qo_len + tok[r];
                slope[r] = alibi ? plan_floats(plan, I.off_alibi_slopes).v[head[r]] : 0.0;
                int64_t q_off = int64_t(qo_begin + tok[r]) * P.q_stride_row +
                                int64_t(head[r]) * P.q_stride_head;
                load_q_row(r, P.q + 2ul * uint64_t(q_off), ok[r], rope, pos[r] + q_rope);
                g_m[r] = NEG_BIG;
                g_l[r] = 0.0;
                [[unroll]] for (uint c = 0u; c < NV; c++)
                    g_acc[r * NV + c] = vec4(0.0);
            }
            // Keys no row of this pass keeps are not even loaded.
            int last_row = min(pass_row + int(BQ), row_end) - 1;
            int lo = kv_begin, hi = kv_end;
            if (causal)
                hi = min(hi, kv_len - qo_len + last_row / group + 1);
            if (window)
                lo = max(lo, kv_len - qo_len + pass_row / group - window_left);

            if (PREFETCH != 0u && lo < hi)
                fetch_tile(P, lo, hi);
            for (int base = lo; base < hi; base += int(BK)) {
                barrier(); // the previous tile is no longer read
                if (PREFETCH == 0u)
                    fetch_tile(P, base, hi);
                store_tile(base, rope, k_rope);
                barrier();
                if (PREFETCH != 0u && base + int(BK) < hi)
                    fetch_tile(P, base + int(BK), hi); // in flight during the math below

                [[dont_unroll]] for (uint sb = 0u; sb < BK; sb += SB) {
                    int t0 = base + int(sb);
                    float s[ROWS * SB];
                    [[unroll]] for (uint j = 0u; j < SB; j++) {
                        vec4 kc[NV];
                        [[unroll]] for (uint c = 0u; c < NV; c++)
                            kc[c] = s_k[(sb + j) * Q4 + lane_ + c * LANES];
                        [[unroll]] for (uint r = 0u; r < ROWS; r++) {
                            float d = 0.0;
                            [[unroll]] for (uint c = 0u; c < NV; c++)
                                d += dot(g_q[r * NV + c], kc[c]);
                            s[r * SB + j] = d;
                        }
                    }
                    // xor butterfly over the row's lanes: every lane ends with the same bits
                    [[unroll]] for (uint k = 0u; k < 6u; k++) {
                        uint off = 1u << k;
                        if (off < LANES) {
                            [[unroll]] for (uint i = 0u; i < ROWS * SB; i++)
                                s[i] += subgroupShuffleXor(s[i], off);
                        }
                    }
                    [[unroll]] for (uint r = 0u; r < ROWS; r++) {
                        uint bits = 0xffffffffu;
                        if (custom)
                            bits = mask_bits(P.mask,
                                             mask_bit_base + int64_t(tok[r]) * int64_t(kv_len) +
                                                 int64_t(t0),
                                             min(int(SB), hi - t0));
                        float mx = neg_inf();
                        [[unroll]] for (uint j = 0u; j < SB; j++) {
                            int t = t0 + int(j);
                            float x = s[r * SB + j] * logit_scale; // log2 domain
                            if (softcap)
                                x = soft_cap * LOG2E *
                                    tanh(clamp(x * LN2 / soft_cap, -15.0, 15.0));
                            if (alibi)
                                x += slope[r] * LOG2E * float(t - pos[r]);
                            bool kept = t < hi && (!causal || t <= pos[r]) &&
                                        (!window || t >= pos[r] - window_left) &&
                                        ((bits >> j) & 1u) != 0u;
                            x = kept ? x : neg_inf();
                            s[r * SB + j] = x;
                            mx = max(mx, x);
                        }
                        // one rescale per sub-block (exp2(NEG_BIG - x) is 0; a sub-block with
                        // no kept key leaves the state as it is)
                        float m_new = max(g_m[r], mx);
                        float alpha = exp2(g_m[r] - m_new);
                        g_m[r] = m_new;
                        g_l[r] *= alpha;
                        [[unroll]] for (uint c = 0u; c < NV; c++)
                            g_acc[r * NV + c] *= alpha;
                    }
                    [[unroll]] for (uint j = 0u; j < SB; j++) {
                        vec4 vc[NV];
                        [[unroll]] for (uint c = 0u; c < NV; c++)
                            vc[c] = s_v[(sb + j) * Q4 + lane_ + c * LANES];
                        [[unroll]] for (uint r = 0u; r < ROWS; r++) {
                            float p = exp2(s[r * SB + j] - g_m[r]);
                            g_l[r] += p;
                            [[unroll]] for (uint c = 0u; c < NV; c++)
                                g_acc[r * NV + c] += p * vc[c];
                        }
                    }
                }
            }

            // The rows: final out/lse, or the partial state for the merge.
            [[unroll]] for (uint r = 0u; r < ROWS; r++) {
                if (!ok[r])
                    continue;
                bool any = g_l[r] > 0.0;
                float inv = any ? out_scale / g_l[r] : 0.0; // no kept key: exactly 0
                float lse = any ? (g_m[r] + log2(g_l[r])) * LN2 : neg_inf();
                if (slot < 0) {
                    int64_t o_off = int64_t(qo_begin + tok[r]) * P.o_stride_row +
                                    int64_t(head[r]) * P.o_stride_head;
                    uint64_t o_row = P.o + 2ul * uint64_t(o_off);
                    [[unroll]] for (uint c = 0u; c < NV; c++)
                        U2Ref(o_row + 8ul * uint64_t(lane_ + c * LANES)).v =
                            encode4(Q_DTYPE, g_acc[r * NV + c] * inv);
                    if (P.lse != 0ul && lane_ == 0u) {
                        int64_t l_off =
                            int64_t(qo_begin + tok[r]) * P.lse_stride_row + int64_t(head[r]);
                        F32Ref(P.lse + 4ul * uint64_t(l_off)).v[0] = lse;
                    }
                } else {
                    int prow = slot * FLP_PREFILL_MAX_TILE +
                               (pass_row + int(grp_ * ROWS + r) - row_begin);
                    F32Ref o_row = F32Ref(uint64_t(plan_floats(plan, I.off_partial_o)) +
                                          4ul * uint64_t(prow) * uint64_t(HEAD_DIM));
                    [[unroll]] for (uint c = 0u; c < NV; c++) {
                        vec4 x = g_acc[r * NV + c] * inv;
                        uint d0 = (lane_ + c * LANES) * 4u;
                        o_row.v[d0] = x.x;
                        o_row.v[d0 + 1u] = x.y;
                        o_row.v[d0 + 2u] = x.z;
                        o_row.v[d0 + 3u] = x.w;
                    }
                    if (lane_ == 0u)
                        plan_floats(plan, I.off_partial_lse).v[prow] = lse;
                }
            }
        }
    }
}
