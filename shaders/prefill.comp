#version 460
// Batch prefill / append attention over a paged or ragged KV cache (the contract both backends
// implement: docs/kernels/prefill.md, core/prefill_params.h). Persistent
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
//
// main, per work item (next_item) and pass of BQ rows (pass_row, load_q, init_state per row;
// clip_keys): per key tile issue_kv_copy and load_kv (K rotated by rope_k), then per sub-block
// compute_scores, reduce_scores, per row mask_scores and softmax_update, accumulate_pv; then
// store_output per row. The stages share the rows' state and the sub-block's scores as
// globals, not parameters: lavapipe (Mesa 22.3) inlines every function and copies array
// arguments element by element, which makes pipeline creation much slower.
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_buffer_reference : require
#extension GL_EXT_buffer_reference2 : require
#extension GL_EXT_shader_explicit_arithmetic_types_int64 : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_shuffle : require
#extension GL_EXT_control_flow_attributes : require

#include "prefill_params.glsl"
#include "dtype.glsl"
#include "merge_state.glsl"
#include "rope.glsl"
// the run's parameter values, in the plan's user slot
#define FLP_USER_PARAMS                                                                            \
    (PrefillParams(push.params).plan +                                                             \
     4ul * uint64_t(PrefillPlanInfo(PrefillParams(push.params).plan).off_user_params))
#include "variant_hooks.glsl"

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
const uint SCORES = ROWS * SB;          // a sub-block's scores of this invocation's rows

shared vec4 s_k[BK * Q4]; // K tile, f32, dequantised and rotated: [key][column]
shared vec4 s_v[BK * Q4]; // V tile, f32, dequantised (fp8 scale applied at the end)
shared float s_freq[HEAD_DIM / 2u];

uint tid_, lane_, grp_;

// Per-row state of this invocation's ROWS rows.
vec4 g_q[ROWS * NV];   // the query rows (rotated with RoPE), this lane's columns
vec4 g_acc[ROWS * NV]; // sum of p * v
float g_m[ROWS];       // running max of log2-domain logits
float g_l[ROWS];       // running sum of exp2(logit - g_m)
// The current sub-block: row r's score for key j at [r * SB + j]: its dot product, then its
// logit, then its weight p.
float g_s[SCORES];

// The current item's KV addressing.
bool g_paged;
uint64_t g_kv_indices; // paged: address of the request's first page id
uint64_t g_params_kv_indices; // paged: the run's page ids (PrefillParams.kv_indices)
int64_t g_row_base;    // ragged: the request's first K/V row
int g_page_size, g_kv_head;

// What the plan fixes for the whole run, read once: the variant's flags and the scalars of the
// logit transforms and masks, and the GQA group size.
struct Run {
    bool causal, window, softcap, alibi, rope, custom;
    bool softmax_off; // weights are the transformed logits, summed unnormalised
    float logit_scale; // sm_scale (times k_scale for fp8)
    float soft_cap;
    int window_left;
    int group;
};

// A work item: packed rows [row_begin, row_end) of request b and KV head g against keys
// [kv_begin, kv_end).
struct Item {
    int b, g, row_begin, row_end, kv_begin, kv_end;
    int slot; // < 0: write out/lse; else the partial-state slot for the merge
    int qo_begin, qo_len, kv_len;
    int q_rope, k_rope;     // RoPE position offsets of the request
    int64_t mask_bit_base;  // custom mask: the request's first bit
};

// One row of the current pass: packed row p = query token p / group, head p % group.
struct Row {
    bool ok;     // p < row_end (else the row repeats the item's first and is not written)
    int tok;     // query token within the request
    int head;    // query head
    int pos;     // position of the query token among the request's keys
    float slope; // ALiBi slope of the head
};

// Element offset of (token t, this item's KV head, d = 0) in K (is_v false) or V.
int64_t kv_offset(PrefillParams P, int t, bool is_v) {
    int64_t sp = is_v ? P.v_stride_page : P.k_stride_page;
    int64_t ss = is_v ? P.v_stride_slot : P.k_stride_slot;
    int64_t sh = is_v ? P.v_stride_head : P.k_stride_head;
    int64_t head = int64_t(g_kv_head) * sh;
    if (!g_paged)
        return (g_row_base + int64_t(t)) * ss + head;
    int page = I32Ref(g_kv_indices).v[t / g_page_size];
    // an id outside the caches (only a run-time page table can hold one) is not followed: page
    // 0 instead, so the request's rows are wrong but nothing outside the caches is read
    page = uint64_t(uint(page)) < uint64_t(P.num_pages) ? page : 0;
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

// load_rope_freq: the RoPE frequencies into shared memory (the caller adds the barrier).
void load_rope_freq(PrefillPlanInfo I, uint64_t plan) {
    F32Ref freq = plan_floats(plan, I.off_rope_freq);
    [[unroll]] for (uint s = 0u; s < (HEAD_DIM / 2u + WG - 1u) / WG; s++) {
        uint i = tid_ + s * WG;
        if (i < HEAD_DIM / 2u)
            s_freq[i] = freq.v[i];
    }
}

// next_item: the fields of work item `item` and the KV addressing of its request and head.
Item next_item(PrefillPlanInfo I, uint64_t plan, int item, Run run) {
    I32Ref work = I32Ref(uint64_t(plan_ints(plan, I.off_work_items)) +
                         4ul * uint64_t(item * FLP_PREFILL_ITEM_INTS));
    Item it;
    it.b = work.v[FLP_PITEM_REQUEST];
    it.g = work.v[FLP_PITEM_KV_HEAD];
    it.row_begin = work.v[FLP_PITEM_ROW_BEGIN];
    it.row_end = work.v[FLP_PITEM_ROW_END];
    it.kv_begin = work.v[FLP_PITEM_KV_BEGIN];
    it.kv_end = work.v[FLP_PITEM_KV_END];
    it.slot = work.v[FLP_PITEM_PARTIAL_SLOT];
    I32Ref qo_indptr = plan_ints(plan, I.off_qo_indptr);
    it.qo_begin = qo_indptr.v[it.b];
    it.qo_len = qo_indptr.v[it.b + 1] - it.qo_begin;
    it.kv_len = plan_ints(plan, I.off_kv_len).v[it.b];
    int kv_start = plan_ints(plan, I.off_kv_indptr).v[it.b];
    g_kv_head = it.g;
    g_kv_indices = g_params_kv_indices + 4ul * uint64_t(kv_start);
    g_row_base = int64_t(kv_start);
    it.q_rope = run.rope ? plan_ints(plan, I.off_q_rope_offset).v[it.b] : 0;
    it.k_rope = run.rope ? plan_ints(plan, I.off_k_rope_offset).v[it.b] : 0;
    it.mask_bit_base =
        run.custom ? int64_t(plan_ints(plan, I.off_mask_indptr).v[it.b]) * 8l : 0l;
    return it;
}

// pass_row: row r of this invocation in the pass starting at packed row row0.
Row pass_row(PrefillPlanInfo I, uint64_t plan, Run run, Item it, int row0, uint r) {
    int p = row0 + int(grp_ * ROWS + r);
    Row row;
    row.ok = p < it.row_end;
    int pp = row.ok ? p : it.row_begin;
    row.tok = pp / run.group;
    row.head = it.g * run.group + pp % run.group;
    row.pos = it.kv_len - it.qo_len + row.tok;
    row.slope = run.alibi ? plan_floats(plan, I.off_alibi_slopes).v[row.head] : 0.0;
    return row;
}

// Query row r of this invocation: this lane's columns, through the variant's query transform,
// rotated at position pos.
void load_q_row(uint r, uint64_t row_addr, Item it, Row row, bool rope, int pos) {
    [[unroll]] for (uint c = 0u; c < NV; c++) {
        uvec2 w = uvec2(0u);
        if (row.ok)
            w = U2Ref(row_addr + 8ul * uint64_t(lane_ + c * LANES)).v;
        g_q[r * NV + c] = flp_decode4(Q_DTYPE, w);
#ifdef FLP_VARIANT_QUERY_TRANSFORM
        [[unroll]] for (uint e = 0u; e < 4u; e++)
            g_q[r * NV + c][e] =
                flp_query_transform(g_q[r * NV + c][e], int((lane_ + c * LANES) * 4u + e),
                                    row.pos, it.b, row.head, it.qo_len, it.kv_len);
#endif
    }
    if (!rope)
        return;
    [[unroll]] for (uint c = 0u; c < HALF_NV; c++) {
        uint d0 = (lane_ + c * LANES) * 4u; // < HEAD_DIM / 2: the partner is column c + HALF_NV
        vec4 lo = g_q[r * NV + c], hi = g_q[r * NV + c + HALF_NV];
        [[unroll]] for (uint e = 0u; e < 4u; e++)
            rope_rotate(lo[e], hi[e], float(pos) * s_freq[d0 + e]);
        g_q[r * NV + c] = lo;
        g_q[r * NV + c + HALF_NV] = hi;
    }
}

// load_q: query row r (zeros for a row past the end), rotated.
void load_q(PrefillParams P, Run run, Item it, uint r, Row row) {
    int64_t q_off = int64_t(it.qo_begin + row.tok) * P.q_stride_row +
                    int64_t(row.head) * P.q_stride_head;
    load_q_row(r, P.q + 2ul * uint64_t(q_off), it, row, run.rope, row.pos + it.q_rope);
}

// init_state: row r's online-softmax state with no key yet.
void init_state(uint r, bool softmax_off) {
    g_m[r] = softmax_off ? 0.0 : NEG_BIG;
    g_l[r] = 0.0;
    [[unroll]] for (uint c = 0u; c < NV; c++)
        g_acc[r * NV + c] = vec4(0.0);
}

// clip_keys: the keys [lo, hi) of the item that some row of the pass keeps (causal and window
// masks); tiles outside are not even loaded.
ivec2 clip_keys(Run run, Item it, int row0) {
    int last_row = min(row0 + int(BQ), it.row_end) - 1;
    int lo = it.kv_begin, hi = it.kv_end;
    if (run.causal)
        hi = min(hi, it.kv_len - it.qo_len + last_row / run.group + 1);
    if (run.window)
        lo = max(lo, it.kv_len - it.qo_len + row0 / run.group - run.window_left);
    return ivec2(lo, hi);
}

// The next tile's K and V words, loaded before the current tile is computed (PREFETCH) so
// that global-memory latency overlaps the math; or just before they are stored.
uvec4 g_kw[K_SLOTS * 2u]; // K: the chunk pair (d, d + D/2) of each unit
uvec4 g_vw[V_SLOTS];

// issue_kv_copy: loads tile [base, base + BK) into g_kw / g_vw: zeros from key hi on (their
// logits are masked, but V must stay finite: 0 * NaN is NaN).
void issue_kv_copy(PrefillParams P, int base, int hi) {
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

// rope_k: RoPE of the rotate-half chunk pair ch of a key at position pos (once per key, in
// load_kv).
void rope_k(inout float lo[8], inout float hi[8], uint ch, int pos) {
    [[unroll]] for (uint e = 0u; e < 8u; e++)
        rope_rotate(lo[e], hi[e], float(pos) * s_freq[ch * 8u + e]);
}

// load_kv: the fetched tile into shared memory: dequantised to f32, K rotated at key position
// + k_rope.
void load_kv(int base, bool rope, int k_rope) {
    [[unroll]] for (uint s = 0u; s < K_SLOTS; s++) {
        uint u = tid_ + s * WG;
        if (u < K_UNITS) {
            uint tt = u / HALF_CHUNKS;
            uint ch = u % HALF_CHUNKS;
            float lo[8], hi8[8];
            flp_decode8(KV_DTYPE, g_kw[2u * s], lo);
            flp_decode8(KV_DTYPE, g_kw[2u * s + 1u], hi8);
            if (rope)
                rope_k(lo, hi8, ch, base + int(tt) + k_rope);
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

// compute_scores: this lane's part of q . k for the SB keys of the sub-block at tile key sb
// and the ROWS rows: g_s[r * SB + j].
void compute_scores(uint sb) {
    [[unroll]] for (uint j = 0u; j < SB; j++) {
        vec4 kc[NV];
        [[unroll]] for (uint c = 0u; c < NV; c++)
            kc[c] = s_k[(sb + j) * Q4 + lane_ + c * LANES];
        [[unroll]] for (uint r = 0u; r < ROWS; r++) {
            float d = 0.0;
            [[unroll]] for (uint c = 0u; c < NV; c++)
                d += dot(g_q[r * NV + c], kc[c]);
            g_s[r * SB + j] = d;
        }
    }
}

// reduce_scores: the dot products summed over the row's lanes (xor butterfly: every lane ends
// with the same bits).
void reduce_scores() {
    [[unroll]] for (uint k = 0u; k < 6u; k++) {
        uint off = 1u << k;
        if (off < LANES) {
            [[unroll]] for (uint i = 0u; i < SCORES; i++)
                g_s[i] += subgroupShuffleXor(g_s[i], off);
        }
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

// mask_scores: row r's logits of the sub-block's keys t0 .. t0 + SB - 1 (scaled, soft-capped,
// ALiBi added, through the variant's logits transform; then in log2 units), then the masks (the
// pass's key range, causal, window, custom, the variant's): a dropped key's logit becomes -inf
// (branch-free: the variant's snippets also see keys the masks drop, their results unused).
void mask_scores(PrefillParams P, Run run, Item it, uint r, Row row, int t0, int hi) {
    uint bits = 0xffffffffu;
    if (run.custom)
        bits = mask_bits(P.mask,
                         it.mask_bit_base + int64_t(row.tok) * int64_t(it.kv_len) + int64_t(t0),
                         min(int(SB), hi - t0));
    [[unroll]] for (uint j = 0u; j < SB; j++) {
        int t = t0 + int(j);
        // precise: as in decode.comp's mask_scores (a snippet restating a built-in gives its bits)
        precise float y = g_s[r * SB + j] * run.logit_scale;
        if (run.softcap)
            y = run.soft_cap * flp_tanh(y / run.soft_cap);
        if (run.alibi)
            y += row.slope * float(t - row.pos);
#ifdef FLP_VARIANT_LOGITS_TRANSFORM
        y = flp_logits_transform(y, row.pos, t, it.b, row.head, it.g, it.qo_len, it.kv_len);
#endif
        float x = run.softmax_off ? y : y * LOG2E; // without the softmax: the key's weight
        bool kept = t < hi && (!run.causal || t <= row.pos) &&
                    (!run.window || t >= row.pos - run.window_left) &&
                    ((bits >> j) & 1u) != 0u;
#ifdef FLP_VARIANT_LOGITS_MASK
        kept = kept && flp_logits_mask(row.pos, t, it.b, row.head, it.g, it.qo_len, it.kv_len);
#endif
        g_s[r * SB + j] = kept ? x : (run.softmax_off ? 0.0 : neg_inf());
    }
}

// softmax_update: row r's new running max over the sub-block, one rescale of l and the
// accumulator (exp2(NEG_BIG - x) is 0; a sub-block with no kept key leaves the state as it is),
// and the keys' weights p = exp2(x - m) in place of their logits, summed into l.
void softmax_update(uint r, bool softmax_off) {
    if (softmax_off) { // the weights as they are (0 for a dropped key), summed unnormalised
        [[unroll]] for (uint j = 0u; j < SB; j++)
            g_l[r] += g_s[r * SB + j];
        return;
    }
    float mx = neg_inf();
    [[unroll]] for (uint j = 0u; j < SB; j++)
        mx = max(mx, g_s[r * SB + j]);
    float m_new = max(g_m[r], mx);
    float alpha = exp2(g_m[r] - m_new);
    g_m[r] = m_new;
    g_l[r] *= alpha;
    [[unroll]] for (uint c = 0u; c < NV; c++)
        g_acc[r * NV + c] *= alpha;
    [[unroll]] for (uint j = 0u; j < SB; j++) {
        float p = exp2(g_s[r * SB + j] - m_new);
        g_s[r * SB + j] = p;
        g_l[r] += p;
    }
}

// accumulate_pv: acc += p * v for the sub-block's keys (tile keys sb .. sb + SB - 1).
void accumulate_pv(uint sb) {
    [[unroll]] for (uint j = 0u; j < SB; j++) {
        vec4 vc[NV];
        [[unroll]] for (uint c = 0u; c < NV; c++)
            vc[c] = s_v[(sb + j) * Q4 + lane_ + c * LANES];
        [[unroll]] for (uint r = 0u; r < ROWS; r++)
            [[unroll]] for (uint c = 0u; c < NV; c++)
                g_acc[r * NV + c] += g_s[r * SB + j] * vc[c];
    }
}

// store_output: row r normalised, as out/lse or as the partial state of the item's slot.
void store_output(PrefillParams P, PrefillPlanInfo I, uint64_t plan, Item it, int row0,
                  float out_scale, uint r, Row row) {
    bool softmax_off = (I.flags & FLP_FLAG_SOFTMAX_OFF) != 0u;
    float inv = softmax_off ? out_scale : output_scale(g_l[r], out_scale);
    float lse = softmax_off ? 0.0 : state_lse(g_m[r], g_l[r]);
    if (it.slot < 0) {
        int64_t o_off = int64_t(it.qo_begin + row.tok) * P.o_stride_row +
                        int64_t(row.head) * P.o_stride_head;
        uint64_t o_row = P.o + 2ul * uint64_t(o_off);
        [[unroll]] for (uint c = 0u; c < NV; c++) {
            vec4 o = g_acc[r * NV + c] * inv;
#ifdef FLP_VARIANT_OUTPUT_TRANSFORM
            [[unroll]] for (uint e = 0u; e < 4u; e++)
                o[e] = flp_output_transform(o[e], lse, int((lane_ + c * LANES) * 4u + e), row.pos,
                                            it.b, row.head, it.qo_len, it.kv_len);
#endif
            U2Ref(o_row + 8ul * uint64_t(lane_ + c * LANES)).v = flp_encode4(Q_DTYPE, o);
        }
        if (P.lse != 0ul && lane_ == 0u) {
            int64_t l_off = int64_t(it.qo_begin + row.tok) * P.lse_stride_row + int64_t(row.head);
            F32Ref(P.lse + 4ul * uint64_t(l_off)).v[0] = lse;
        }
    } else {
        int prow = it.slot * FLP_PREFILL_MAX_TILE + (row0 + int(grp_ * ROWS + r) - it.row_begin);
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

void main() {
    PrefillParams P = PrefillParams(push.params);
    PrefillPlanInfo I = PrefillPlanInfo(P.plan); // what the last (re-)plan decided
    tid_ = gl_LocalInvocationIndex;
    lane_ = tid_ % LANES;
    grp_ = tid_ / LANES;

    uint flags = I.flags;
    Run run;
    run.causal = (flags & FLP_FLAG_CAUSAL) != 0u;
    run.window = (flags & FLP_FLAG_WINDOW) != 0u;
    run.softcap = (flags & FLP_FLAG_SOFTCAP) != 0u;
    run.alibi = (flags & FLP_FLAG_ALIBI) != 0u;
    run.rope = (flags & FLP_FLAG_ROPE) != 0u;
    run.custom = (flags & FLP_FLAG_CUSTOM_MASK) != 0u;
    run.softmax_off = (flags & FLP_FLAG_SOFTMAX_OFF) != 0u;
    g_paged = (flags & FLP_FLAG_PAGED) != 0u;
    bool fp8 = KV_BYTES == 1u;
    // fp8 scales are linear: k_scale folds into the logit scale, v_scale into the output
    run.logit_scale = I.sm_scale * (fp8 ? I.k_scale : 1.0);
    float out_scale = fp8 ? I.v_scale : 1.0;
    run.soft_cap = I.soft_cap;
    run.window_left = I.window_left;
    run.group = I.group_size;
    g_page_size = I.page_size;
    g_params_kv_indices = P.kv_indices;
    uint64_t plan = P.plan;

    if (run.rope)
        load_rope_freq(I, plan);
    barrier();

    int cta = int(gl_WorkGroupID.x);
    I32Ref work_indptr = plan_ints(plan, I.off_work_indptr);
    int item_end = work_indptr.v[cta + 1];
    for (int item = work_indptr.v[cta]; item < item_end; item++) {
        Item it = next_item(I, plan, item, run);
        for (int row0 = it.row_begin; row0 < it.row_end; row0 += int(BQ)) {
            Row rows[ROWS];
            [[unroll]] for (uint r = 0u; r < ROWS; r++) {
                rows[r] = pass_row(I, plan, run, it, row0, r);
                load_q(P, run, it, r, rows[r]);
                init_state(r, run.softmax_off);
            }
            ivec2 keys = clip_keys(run, it, row0); // [lo, hi): keys some row of the pass keeps

            if (PREFETCH != 0u && keys.x < keys.y)
                issue_kv_copy(P, keys.x, keys.y);
            for (int base = keys.x; base < keys.y; base += int(BK)) {
                barrier(); // the previous tile is no longer read
                if (PREFETCH == 0u)
                    issue_kv_copy(P, base, keys.y);
                load_kv(base, run.rope, it.k_rope);
                barrier();
                if (PREFETCH != 0u && base + int(BK) < keys.y)
                    issue_kv_copy(P, base + int(BK), keys.y); // in flight during the math below

                [[dont_unroll]] for (uint sb = 0u; sb < BK; sb += SB) {
                    compute_scores(sb);
                    reduce_scores();
                    [[unroll]] for (uint r = 0u; r < ROWS; r++) {
                        mask_scores(P, run, it, r, rows[r], base + int(sb), keys.y);
                        softmax_update(r, run.softmax_off); // g_s: the keys' weights from here
                    }
                    accumulate_pv(sb);
                }
            }

            [[unroll]] for (uint r = 0u; r < ROWS; r++)
                if (rows[r].ok)
                    store_output(P, I, plan, it, row0, out_scale, r, rows[r]);
        }
    }
}
