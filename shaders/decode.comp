#version 460
// Batch decode over a paged KV cache (docs/kernels/decode.md; the contract
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
//
// main, per work item (next_item) and pass of ROWS rows (pass_row, load_q, init_state): per
// tile load_kv (the tile issue_kv_copy loaded into registers, into shared memory) and
// issue_kv_copy of the next; per token of the thread's token group compute_scores (reduced over
// the row's lanes by lane_sum), mask_scores, softmax_update, accumulate_pv; then
// combine_warps and store_output.
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_buffer_reference : require
#extension GL_EXT_buffer_reference2 : require
#extension GL_EXT_shader_explicit_arithmetic_types_int64 : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_shuffle : require
#extension GL_EXT_control_flow_attributes : require

#include "decode_params.glsl"
#include "dtype.glsl"
#include "merge_state.glsl"
#include "rope.glsl"
// the run's parameter values, in the plan's user slot
#define FLP_USER_PARAMS                                                                            \
    (DecodeParams(push.params).plan +                                                              \
     4ul * uint64_t(DecodePlanInfo(DecodeParams(push.params).plan).off_user_params))
#include "variant_hooks.glsl"

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
const uint E4 = E / 4u;               // ... in vec4s
const uint TILE = TOKEN_GROUPS * TOKENS_PER_GROUP;
const uint TILE_CHUNKS = TILE * CHUNKS;
const uint LOAD_SLOTS = (TILE_CHUNKS + WG - 1u) / WG; // chunks of K (and of V) per thread
const uint TOKEN_U2 = CHUNKS * 2u + 1u; // shared row: 16-bit chunks, +1 so rows of a tile
                                        // fall on different banks
const uint TILE_U2 = TILE * TOKEN_U2;   // K tile; the V tile follows
const uint RED_ACC_U2 = TOKEN_GROUPS * ROWS * (HEAD_DIM / 2u); // reduction: acc pairs, then (m, l)

// K/V tiles during the key loop; the cross-token-group reduction afterwards.
shared uvec2 s_mem[SMEM_U2];
shared float s_freq[HEAD_DIM / 2u];

// Per-thread state of the current row, element e at [e / 4][e % 4]: vec4s rather than floats
// (the same arithmetic element by element) because lavapipe keeps these arrays in memory
// through its first round of optimisation (functions inlined, loops unrolled) and pays for
// every access to them there: a quarter of the accesses, much less pipeline-creation time.
vec4 g_q[E4];   // the query row (rotated with RoPE); the scale is applied to the dot product
vec4 g_acc[E4]; // sum of p * v
float g_m;      // running max of log2-domain logits
float g_l;      // running sum of exp2(logit - g_m)

uint lane_, ty_, tz_, tid_;
bool g_softmax_off; // FLP_FLAG_SOFTMAX_OFF (set once in main)

// The current item's KV addressing (set per item) and the prefetched chunks of the next tile.
uint64_t g_kv_indices; // address of the request's first page id
uint64_t g_num_pages;  // pages of the caches: an id outside [0, g_num_pages) reads as zeros
int g_page_size, g_page_shift, g_kv_end; // g_page_shift: log2(page size), -1 if not a power of 2
uint64_t g_k_head, g_v_head; // address of element (page 0, slot 0, this KV head, d 0)
int g_k_sp, g_k_ss, g_v_sp, g_v_ss; // elements (< 2^31, checked by the host)
uvec4 g_kw[LOAD_SLOTS], g_vw[LOAD_SLOTS];

// What the plan fixes for the whole run, read once: the variant's flags and the logit scale
// (other parameters are re-read where they are used, see main).
struct Run {
    bool causal, window, softcap, alibi;
    bool softmax_off; // weights are the transformed logits, summed unnormalised
    float logit_scale; // sm_scale (times k_scale and the e4m3 widening factor for fp8)
};

// A work item: keys [kv_begin, kv_end) of request b for KV head g and all rows of its group.
struct Item {
    int b, g, kv_begin, kv_end;
    int slot; // < 0: write out/lse; else the partial-state slot for the merge
    int kv_len, k_rope;
    int qo_len, group, rows_total; // rows: qo_len x the GQA group
};

// This thread's row of the current pass (rows of one pass share every K/V tile).
struct Row {
    int rr;          // row of the item: qi * group + hh
    bool ok;         // rr < rows_total (else the thread computes along and writes nothing)
    int h, r;        // query head; query row b * qo_len + qi
    int pos;         // position of the query token among the request's keys
    int q_pos;       // the position q is rotated at (RoPE)
    float slope;     // ALiBi slope of head h
    int window_left; // read per pass, like every parameter the key loop needs (registers)
    float soft_cap;
};

// Element index of chunk slot c (0..NC-1) of this thread.
uint chunk_of(uint c) {
    return lane_ + c * LANES;
}

// Rotate-half RoPE on a thread's chunk pair (c, c + HALF_NC) at position pos.
void rope_pair(inout float lo[8], inout float hi[8], uint c, int pos) {
    uint d0 = chunk_of(c) * 8u;
    [[unroll]] for (uint e = 0u; e < 8u; e++)
        rope_rotate(lo[e], hi[e], float(pos) * s_freq[d0 + e]);
}

// Rotate-half RoPE when each thread owns one chunk (NC = 1): the partner chunk (d +- D/2)
// belongs to lane ^ LANES/2. All lanes of the subgroup call this together.
void rope_shuffle(inout float x[8], int pos) {
    bool upper = lane_ >= LANES / 2u;
    uint d0 = (lane_ % (LANES / 2u)) * 8u;
    [[unroll]] for (uint e = 0u; e < 8u; e++) {
        float y = subgroupShuffleXor(x[e], LANES / 2u);
        x[e] = rope_rotate_one(x[e], y, upper, float(pos) * s_freq[d0 + e]);
    }
}

// load_rope_freq: the RoPE frequencies into shared memory (the caller adds the barrier).
void load_rope_freq(DecodeParams P, DecodePlanInfo I) {
    F32Ref freq = plan_floats(P.plan, I.off_rope_freq);
    for (uint i = tid_; i < HEAD_DIM / 2u; i += WG)
        s_freq[i] = freq.v[i];
}

// next_item: the fields of work item `item` and the KV addressing of its request and head.
Item next_item(DecodeParams P, DecodePlanInfo I, int item, bool rope) {
    WorkItem w = work_item(P.plan, I, item);
    Item it;
    it.b = w.b;
    it.g = w.g;
    it.kv_begin = w.kv_begin;
    it.kv_end = w.kv_end;
    it.slot = w.slot;
    it.kv_len = w.kv_len;
    g_kv_indices = P.kv_indices + 4ul * uint64_t(plan_ints(P.plan, I.off_kv_indptr).v[it.b]);
    g_kv_end = it.kv_end;
    g_k_head = P.k + uint64_t(int64_t(it.g) * P.k_stride_head) * uint64_t(KV_BYTES);
    g_v_head = P.v + uint64_t(int64_t(it.g) * P.v_stride_head) * uint64_t(KV_BYTES);
    it.k_rope = rope ? plan_ints(P.plan, I.off_k_rope_offset).v[it.b] : 0;
    it.qo_len = I.qo_len;
    it.group = I.group_size;
    it.rows_total = it.qo_len * it.group;
    return it;
}

// pass_row: this thread's row of the pass starting at item row row0.
Row pass_row(DecodeParams P, DecodePlanInfo I, Item it, int row0, bool alibi, bool rope) {
    Row row;
    row.rr = row0 + int(ty_);
    row.ok = row.rr < it.rows_total;
    int qi = row.ok ? row.rr / it.group : 0;
    int hh = row.ok ? row.rr % it.group : 0;
    row.h = it.g * it.group + hh;
    row.r = it.b * it.qo_len + qi;
    row.pos = it.kv_len - it.qo_len + qi;
    row.slope = 0.0;
    if (alibi && row.ok)
        row.slope = plan_floats(P.plan, I.off_alibi_slopes).v[row.h];
    int q_rope = rope ? plan_ints(P.plan, I.off_q_rope_offset).v[it.b] : 0;
    row.q_pos = row.pos + q_rope;
    row.window_left = I.window_left;
    row.soft_cap = I.soft_cap;
    return row;
}

// query_transform: the variant's snippet on this thread's chunk slot c (its 8 elements) of the
// row's query, before RoPE (nothing without one).
void query_transform(Item it, Row row, uint c, inout float x[8]) {
#ifdef FLP_VARIANT_QUERY_TRANSFORM
    [[unroll]] for (uint e = 0u; e < 8u; e++)
        x[e] = flp_query_transform(x[e], int(chunk_of(c) * 8u + e), row.pos, it.b, row.h,
                                   it.qo_len, it.kv_len);
#endif
}

// load_q: this thread's elements of the row's query (zeros for a row past the end), through the
// variant's query transform, rotated.
void load_q(DecodeParams P, Item it, Row row, bool rope) {
    int64_t q_off = int64_t(row.r) * P.q_stride_row + int64_t(row.h) * P.q_stride_head;
    uint64_t row_addr = P.q + 2ul * uint64_t(q_off);
    if (NC == 1u) {
        uvec4 w = uvec4(0u);
        if (row.ok)
            w = U4Ref(row_addr + 16ul * uint64_t(lane_)).v;
        float x[8];
        flp_decode8(Q_DTYPE, w, x);
        query_transform(it, row, 0u, x);
        if (rope)
            rope_shuffle(x, row.q_pos);
        [[unroll]] for (uint i = 0u; i < 2u; i++)
            g_q[i] = vec4(x[4u * i], x[4u * i + 1u], x[4u * i + 2u], x[4u * i + 3u]);
        return;
    }
    [[unroll]] for (uint c = 0u; c < HALF_NC; c++) {
        uvec4 wl = uvec4(0u), wh = uvec4(0u);
        if (row.ok) {
            wl = U4Ref(row_addr + 16ul * uint64_t(chunk_of(c))).v;
            wh = U4Ref(row_addr + 16ul * uint64_t(chunk_of(c + HALF_NC))).v;
        }
        float lo[8], hi[8];
        flp_decode8(Q_DTYPE, wl, lo);
        flp_decode8(Q_DTYPE, wh, hi);
        query_transform(it, row, c, lo);
        query_transform(it, row, c + HALF_NC, hi);
        if (rope)
            rope_pair(lo, hi, c, row.q_pos);
        [[unroll]] for (uint i = 0u; i < 2u; i++) {
            g_q[2u * c + i] = vec4(lo[4u * i], lo[4u * i + 1u], lo[4u * i + 2u], lo[4u * i + 3u]);
            g_q[2u * (c + HALF_NC) + i] =
                vec4(hi[4u * i], hi[4u * i + 1u], hi[4u * i + 2u], hi[4u * i + 3u]);
        }
    }
}

// init_state: the online-softmax state of a row with no key yet (without the softmax: the sums,
// with m fixed at 0).
void init_state(bool softmax_off) {
    g_m = softmax_off ? 0.0 : NEG_BIG;
    g_l = 0.0;
    [[unroll]] for (uint i = 0u; i < E4; i++)
        g_acc[i] = vec4(0.0);
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

// A page id as the loads take it: -1 (zeros) for an id outside the caches, which only a
// run-time page table can hold (the plan checks the ids it is given).
int checked_page(int id) {
    return uint64_t(uint(id)) < g_num_pages ? id : -1;
}

// issue_kv_copy: issues the loads of tile [base, base + TILE) into g_kw / g_vw: page ids first,
// then all K and V chunks, so every load of the tile is in flight at once. Zeros past g_kv_end.
void issue_kv_copy(int base) {
    int page[LOAD_SLOTS];
    [[unroll]] for (uint s = 0u; s < LOAD_SLOTS; s++) {
        uint i = tid_ + s * WG;
        int t = base + int(i / CHUNKS);
        page[s] = -1;
        if (i < TILE_CHUNKS && t < g_kv_end)
            page[s] = checked_page(
                I32Ref(g_kv_indices).v[g_page_shift >= 0 ? t >> g_page_shift : t / g_page_size]);
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

// fp8 words widened to f16 for the shared tiles (16-bit words pass as they are).
uvec4 convert_kv_chunk(uvec4 w) {
    if (KV_DTYPE == FLP_DT_E4M3)
        return uvec4(flp_e4m3x4_to_f16x4_scaled(w.x), flp_e4m3x4_to_f16x4_scaled(w.y));
    if (KV_DTYPE == FLP_DT_E5M2)
        return uvec4(flp_e5m2x4_to_f16x4(w.x), flp_e5m2x4_to_f16x4(w.y));
    return w;
}

// load_kv: the prefetched tile into shared memory, fp8 widened (the caller surrounds it with
// barriers).
void load_kv() {
    [[unroll]] for (uint s = 0u; s < LOAD_SLOTS; s++) {
        uint i = tid_ + s * WG;
        if (i < TILE_CHUNKS) {
            uint o = (i / CHUNKS) * TOKEN_U2 + (i % CHUNKS) * 2u;
            uvec4 kw = convert_kv_chunk(g_kw[s]), vw = convert_kv_chunk(g_vw[s]);
            s_mem[o] = kw.xy;
            s_mem[o + 1u] = kw.zw;
            s_mem[TILE_U2 + o] = vw.xy;
            s_mem[TILE_U2 + o + 1u] = vw.zw;
        }
    }
}

// lane_sum: the row's dot product over its LANES threads (xor butterfly: every lane ends with
// the same bits, a + b == b + a).
float lane_sum(float dot) {
    [[unroll]] for (uint off = LANES / 2u; off > 0u; off >>= 1u)
        dot += subgroupShuffleXor(dot, off);
    return dot;
}

// compute_scores: q . k of tile token tt (K rotated at key position k_pos), reduced over the
// row's lanes.
float compute_scores(uint tt, bool rope, int k_pos) {
    float dot = 0.0;
    if (NC == 1u) {
        float x[8];
        read_chunk(0u, tt, lane_, x);
        if (rope)
            rope_shuffle(x, k_pos);
        [[unroll]] for (uint e = 0u; e < 8u; e++)
            dot += g_q[e / 4u][e % 4u] * x[e];
    }
    [[unroll]] for (uint c = 0u; c < HALF_NC; c++) {
        float lo[8], hi[8];
        read_chunk(0u, tt, chunk_of(c), lo);
        read_chunk(0u, tt, chunk_of(c + HALF_NC), hi);
        if (rope)
            rope_pair(lo, hi, c, k_pos);
        [[unroll]] for (uint e = 0u; e < 8u; e++)
            dot += g_q[2u * c + e / 4u][e % 4u] * lo[e] +
                   g_q[2u * (c + HALF_NC) + e / 4u][e % 4u] * hi[e];
    }
    return lane_sum(dot);
}

// mask_scores: whether key t is kept (the item's end, causal and window masks, the variant's
// mask) and, for a kept key only, its logit in log2 units: scaled, soft-capped, ALiBi added,
// through the variant's logits transform.
bool mask_scores(Run run, Item it, Row row, int t, inout float x) {
    bool kept = t < it.kv_end && (!run.causal || t <= row.pos) &&
                (!run.window || t >= row.pos - row.window_left);
#ifdef FLP_VARIANT_LOGITS_MASK
    if (kept)
        kept = flp_logits_mask(row.pos, t, it.b, row.h, it.g, it.qo_len, it.kv_len);
#endif
    if (kept) {
        // precise: computed as written (no contraction into fused multiply-adds), so that a
        // snippet restating a built-in option gives its bits exactly (the compilers would fuse
        // differently around a function call)
        precise float y = x * run.logit_scale;
        if (run.softcap)
            y = row.soft_cap * flp_tanh(y / row.soft_cap);
        if (run.alibi)
            y += row.slope * float(t - row.pos);
#ifdef FLP_VARIANT_LOGITS_TRANSFORM
        y = flp_logits_transform(y, row.pos, t, it.b, row.h, it.g, it.qo_len, it.kv_len);
#endif
        x = run.softmax_off ? y : y * LOG2E; // without the softmax: the key's weight
    }
    return kept;
}

// softmax_update: a kept key's logit x into the running max and sum, the accumulator rescaled
// when the maximum grows; returns the key's weight p.
float softmax_update(float x, bool softmax_off) {
    if (softmax_off) {
        g_l += x;
        return x;
    }
    if (x > g_m) { // new maximum: rescale what was summed so far
        float alpha = state_weight(g_m, x);
        g_l *= alpha;
        [[unroll]] for (uint i = 0u; i < E4; i++)
            g_acc[i] *= alpha;
        g_m = x;
    }
    float p = exp2(x - g_m);
    g_l += p;
    return p;
}

// accumulate_pv: acc += p * v of tile token tt.
void accumulate_pv(uint tt, float p) {
    [[unroll]] for (uint c = 0u; c < NC; c++) {
        float v[8];
        read_chunk(TILE_U2, tt, chunk_of(c), v);
        [[unroll]] for (uint i = 0u; i < 2u; i++)
            g_acc[2u * c + i] += p * vec4(v[4u * i], v[4u * i + 1u], v[4u * i + 2u], v[4u * i + 3u]);
    }
}

// combine_warps (token groups take the part CUDA's warps have): the token groups' states of
// each row, merged by token group 0 in a fixed order (deterministic) through shared memory.
// All threads call it (barriers).
void combine_warps() {
    barrier(); // tiles are no longer read
    uint acc_base = (tz_ * ROWS + ty_) * (HEAD_DIM / 2u);
    [[unroll]] for (uint c = 0u; c < NC; c++)
        [[unroll]] for (uint e = 0u; e < 8u; e += 4u) {
            vec4 a = g_acc[2u * c + e / 4u];
            s_mem[acc_base + (chunk_of(c) * 8u + e) / 2u] = floatBitsToUint(a.xy);
            s_mem[acc_base + (chunk_of(c) * 8u + e) / 2u + 1u] = floatBitsToUint(a.zw);
        }
    if (lane_ == 0u)
        s_mem[RED_ACC_U2 + tz_ * ROWS + ty_] = floatBitsToUint(vec2(g_m, g_l));
    barrier();
    if (tz_ == 0u) {
        float m_all = NEG_BIG;
        for (uint z = 0u; z < TOKEN_GROUPS; z++)
            m_all = max(m_all, uintBitsToFloat(s_mem[RED_ACC_U2 + z * ROWS + ty_].x));
        float l_all = 0.0;
        [[unroll]] for (uint i = 0u; i < E4; i++)
            g_acc[i] = vec4(0.0);
        for (uint z = 0u; z < TOKEN_GROUPS; z++) {
            vec2 ml = uintBitsToFloat(s_mem[RED_ACC_U2 + z * ROWS + ty_]);
            float w = g_softmax_off ? 1.0 : state_weight(ml.x, m_all);
            l_all += ml.y * w;
            uint zb = (z * ROWS + ty_) * (HEAD_DIM / 2u);
            [[unroll]] for (uint c = 0u; c < NC; c++)
                [[unroll]] for (uint e = 0u; e < 8u; e += 4u) {
                    uint o = zb + (chunk_of(c) * 8u + e) / 2u;
                    vec4 a = vec4(uintBitsToFloat(s_mem[o]), uintBitsToFloat(s_mem[o + 1u]));
                    g_acc[2u * c + e / 4u] += a * w;
                }
        }
        g_m = m_all;
        g_l = l_all;
    }
}

// store_output: the row normalised, as out/lse or as the partial state of the item's slot
// (token group 0's threads, rows of the item only).
void store_output(DecodeParams P, DecodePlanInfo I, Item it, Row row, float widen_scale) {
    if (tz_ == 0u && row.ok) {
        float out_scale = KV_BYTES == 1u ? I.v_scale * widen_scale : 1.0;
        float inv = g_softmax_off ? out_scale : output_scale(g_l, out_scale);
        float lse = g_softmax_off ? 0.0 : state_lse(g_m, g_l);
        if (it.slot < 0) {
            int64_t o_off = int64_t(row.r) * P.o_stride_row + int64_t(row.h) * P.o_stride_head;
            uint64_t o_row = P.o + 2ul * uint64_t(o_off);
            [[unroll]] for (uint c = 0u; c < NC; c++) {
                float x[8];
                [[unroll]] for (uint e = 0u; e < 8u; e++)
                    x[e] = g_acc[2u * c + e / 4u][e % 4u] * inv;
#ifdef FLP_VARIANT_OUTPUT_TRANSFORM
                [[unroll]] for (uint e = 0u; e < 8u; e++)
                    x[e] = flp_output_transform(x[e], lse, int(chunk_of(c) * 8u + e), row.pos,
                                                it.b, row.h, it.qo_len, it.kv_len);
#endif
                U4Ref(o_row + 16ul * uint64_t(chunk_of(c))).v = flp_encode8(Q_DTYPE, x);
            }
            if (P.lse != 0ul && lane_ == 0u) {
                int64_t l_off = int64_t(row.r) * P.lse_stride_row + int64_t(row.h);
                F32Ref(P.lse + 4ul * uint64_t(l_off)).v[0] = lse;
            }
        } else {
            // partial row (slot, qi, hh) = slot * rows_total + rr
            int prow = it.slot * it.rows_total + row.rr;
            F32Ref p_row = plan_floats(P.plan, I.off_partial_o);
            p_row = F32Ref(uint64_t(p_row) + 4ul * uint64_t(prow) * uint64_t(HEAD_DIM));
            [[unroll]] for (uint c = 0u; c < NC; c++)
                [[unroll]] for (uint e = 0u; e < 8u; e++)
                    p_row.v[chunk_of(c) * 8u + e] = g_acc[2u * c + e / 4u][e % 4u] * inv;
            if (lane_ == 0u)
                plan_floats(P.plan, I.off_partial_lse).v[prow] = lse;
        }
    }
}

void main() {
    DecodeParams P = DecodeParams(push.params);
    DecodePlanInfo I = DecodePlanInfo(P.plan); // what the last (re-)plan decided
    tid_ = gl_LocalInvocationIndex;
    lane_ = tid_ % LANES;
    ty_ = (tid_ / LANES) % ROWS;
    tz_ = tid_ / (LANES * ROWS);

    // Parameters are read from P and I where they are used, not held in registers across the
    // key loop: registers decide how many workgroups an SM holds, and this kernel lives on that.
    uint flags = I.flags;
    Run run;
    run.causal = (flags & FLP_FLAG_CAUSAL) != 0u;
    run.window = (flags & FLP_FLAG_WINDOW) != 0u;
    run.softcap = (flags & FLP_FLAG_SOFTCAP) != 0u;
    run.alibi = (flags & FLP_FLAG_ALIBI) != 0u;
    run.softmax_off = (flags & FLP_FLAG_SOFTMAX_OFF) != 0u;
    g_softmax_off = run.softmax_off;
    bool rope = (flags & FLP_FLAG_ROPE) != 0u;
    // fp8 scales are linear: k_scale folds into the logit scale, v_scale into the output (with
    // the exact 2^8 of e4m3's f16 widening)
    float widen_scale = KV_DTYPE == FLP_DT_E4M3 ? FLP_E4M3_F16_SCALE : 1.0;
    run.logit_scale = I.sm_scale * (KV_BYTES == 1u ? I.k_scale * widen_scale : 1.0);
    // KV strides fit 32 bits (the Vulkan backend refuses others at run); page * stride is 64-bit
    g_k_sp = int(P.k_stride_page);
    g_k_ss = int(P.k_stride_slot);
    g_v_sp = int(P.v_stride_page);
    g_v_ss = int(P.v_stride_slot);
    g_page_size = I.page_size;
    g_page_shift = bitCount(g_page_size) == 1 ? findLSB(g_page_size) : -1; // divisions are slow
    g_num_pages = uint64_t(P.num_pages);

    if (rope)
        load_rope_freq(P, I);
    barrier();

    int cta = int(gl_WorkGroupID.x);
    int item_end = plan_ints(P.plan, I.off_work_indptr).v[cta + 1];
    for (int item = plan_ints(P.plan, I.off_work_indptr).v[cta]; item < item_end; item++) {
        Item it = next_item(P, I, item, rope);
        // Passes of ROWS rows over the keys: one pass unless the group x qo_len is larger.
        for (int row0 = 0; row0 < it.rows_total; row0 += int(ROWS)) {
            Row row = pass_row(P, I, it, row0, run.alibi, rope);
            load_q(P, it, row, rope);
            init_state(run.softmax_off);

            if (it.kv_begin < it.kv_end)
                issue_kv_copy(it.kv_begin);
            for (int base = it.kv_begin; base < it.kv_end; base += int(TILE)) {
                barrier(); // the previous tile (or reduction) is no longer read
                load_kv();
                barrier();
                if (base + int(TILE) < it.kv_end)
                    issue_kv_copy(base + int(TILE)); // in flight during the math below

                // This token group's tokens, one at a time (a rolled loop keeps registers low:
                // the occupancy, not the arithmetic, limits a memory-bound kernel).
                [[dont_unroll]] for (uint j = 0u; j < TOKENS_PER_GROUP; j++) {
                    uint tt = tz_ * TOKENS_PER_GROUP + j;
                    int t = base + int(tt);
                    float x = compute_scores(tt, rope, t + it.k_rope);
                    if (mask_scores(run, it, row, t, x)) { // the same for the row's lanes
                        float p = softmax_update(x, run.softmax_off);
                        accumulate_pv(tt, p);
                    }
                }
            }

            if (TOKEN_GROUPS > 1u)
                combine_warps();
            store_output(P, I, it, row, widen_scale);
        }
    }
}
