#version 460
// Batch decode over a paged KV cache for CPU Vulkan devices (Mesa's lavapipe/llvmpipe); the same
// contract as decode.comp (docs/kernels/decode.md), shaped for how a CPU
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
// - Pipeline creation is slow on lavapipe (Mesa 22.3): it inlines every function, then optimises
//   and unrolls, and only then turns global (private) arrays into locals. The stages below share
//   their arrays as globals, and the large ones (queries, accumulators) are vec4 arrays so that
//   this first round sees a quarter of the accesses; the arithmetic is the same element by
//   element. (Arrays passed as parameters are copied element by element: much slower still.)
//
// main, per work item (next_item) and pass of ROWS rows (pass_row, load_q, init_state per row):
// per STEP keys step_rows (rows looked up a step before by issue_kv_copy), compute_scores, per
// row mask_scores and softmax_update, accumulate_pv; then store_output per row.
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
#include "merge_state.glsl"
// the run's parameter values, in the plan's user slot
#define FLP_USER_PARAMS                                                                            \
    (DecodeParams(push.params).plan +                                                              \
     4ul * uint64_t(DecodePlanInfo(DecodeParams(push.params).plan).off_user_params))
#include "variant_hooks.glsl"
#include "rope.glsl"

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
const uint E4 = E / 4u;                            // ... in vec4s
const uint FREQS = NC == 1u ? 8u : HALF_NC * 8u;   // RoPE frequencies a lane needs
const uint MAX_LOG2_LANES = 6u;                    // LANES <= 64

// Keys are handled STEP at a time; lane i looks up the rows of keys first + r * LANES + i
// (r < ROUNDS), so the page lookups and address arithmetic of a step run once, lane-parallel.
const uint ROUNDS = STEP / LANES; // the host makes STEP a multiple of LANES
const uint ROW_BYTES = HEAD_DIM * KV_BYTES;
const uint ROW_LINES = (ROW_BYTES + 63u) / 64u;

uint lane_;
float g_freq[FREQS]; // frequencies of this lane's rotate-half pairs (RoPE only)
bool g_q_bf16, g_kv_bf16; // the plan's dtypes: bf16, else f16

// The state of the pass's ROWS rows, all in this lane's registers (element e of a row at
// [e / 4][e % 4]).
vec4 g_q[ROWS][E4];   // this lane's elements of the queries (rotated)
vec4 g_acc[ROWS][E4]; // sum of p * v
float g_m[ROWS];      // running max of log2-domain logits
float g_l[ROWS];      // running sum of exp2(logit - g_m)

// The current step: the K and V rows of its keys, and per row and key the score: q . k, then
// the logit, then the weight p. g_kept: which keys the masks keep, for one row at a time.
ROW_T g_k_row[STEP], g_v_row[STEP];
float g_s[ROWS][STEP];
bool g_kept[STEP];

// What the plan fixes for the whole run, read once: the variant (flags, the scalars of the logit
// transforms and masks), the rows of an item and the KV layout.
struct Run {
    bool causal, window, softcap, alibi, rope;
    bool softmax_off;  // weights are the transformed logits, summed unnormalised
    float logit_scale; // sm_scale (times k_scale for fp8)
    float soft_cap;
    int window_left;
    int qo_len, group, rows_total; // rows of an item: qo_len x the GQA group
    int page_size, page_shift;     // page_shift: log2(page size), -1 if not a power of two
    int k_sp, k_ss, v_sp, v_ss;    // KV page and slot strides in elements (fit 32 bits)
    uint64_t num_pages;            // pages of the caches (page ids outside are not followed)
};

// A work item: keys [kv_begin, kv_end) of request b for KV head g and all rows of its group.
struct Item {
    int b, g, kv_begin, kv_end;
    int slot; // < 0: write out/lse; else the partial-state slot for the merge
    int kv_len;
    I32Ref pages;         // the request's page ids
    ROW_T k_head, v_head; // the row of page 0, slot 0 of the item's KV head
    int k_rope, q_rope;   // RoPE position offsets of the request
};

// One row of a pass: item row rr = qi * group + hh; rows past the item's end repeat its last
// row (valid addresses, results not written).
struct Row {
    int rr;
    int h, r;    // query head; query row b * qo_len + qi
    int pos;     // position of the query token among the request's keys
    float slope; // ALiBi slope of head h
};

// Element index of chunk slot c (0..NC-1) of this lane.
uint chunk_of(uint c) {
    return lane_ + c * LANES;
}

// Rotate-half RoPE of this lane's elements of a row at position pos. With NC even the partner
// d + D/2 of chunk slot c is slot c + HALF_NC of the same lane; with NC = 1 it belongs to lane
// ^ LANES/2 (all lanes call this together).
void rope_lane(inout float x[E], int pos) {
    if (NC == 1u) {
        bool upper = lane_ >= LANES / 2u;
        [[unroll]] for (uint e = 0u; e < 8u; e++) {
            float y = subgroupShuffleXor(x[e], LANES / 2u);
            x[e] = rope_rotate_one(x[e], y, upper, float(pos) * g_freq[e]);
        }
    } else {
        [[unroll]] for (uint i = 0u; i < HALF_NC * 8u; i++)
            rope_rotate(x[i], x[i + HALF_NC * 8u], float(pos) * g_freq[i]);
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
        flp_decode8_16(g_q_bf16, load16(row_addr + 16ul * uint64_t(chunk_of(c))), t);
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

// load_kv: this lane's elements of a K or V row, as stored (fp8 values without their scale).
void load_kv(bool v, ROW_T row, out float x[E]) {
    [[unroll]] for (uint c = 0u; c < NC; c++) {
        float t[8];
        uvec4 w = kv_chunk(v, row, chunk_of(c) * 8u * KV_BYTES);
        if (KV_BYTES == 1u)
            flp_decode8(KV_DTYPE, w, t);
        else
            flp_decode8_16(g_kv_bf16, w, t);
        [[unroll]] for (uint e = 0u; e < 8u; e++)
            x[c * 8u + e] = t[e];
    }
}

// This lane's K and V rows for the keys of the step starting at first (keys past kv_end: the
// last key again).
void lane_rows(Run run, Item it, int first, out ROW_T k_row[ROUNDS], out ROW_T v_row[ROUNDS]) {
    [[unroll]] for (uint r = 0u; r < ROUNDS; r++) {
        int tok = min(first + int(r * LANES + lane_), it.kv_end - 1);
        int page = it.pages.v[run.page_shift >= 0 ? tok >> run.page_shift : tok / run.page_size];
        // an id outside the caches (only a run-time page table can hold one) is not followed:
        // page 0 instead, so the request's rows are wrong but nothing outside is read
        page = uint64_t(uint(page)) < run.num_pages ? page : 0;
        int pslot = run.page_shift >= 0 ? tok & (run.page_size - 1) : tok % run.page_size;
#ifdef FLP_TEXEL_KV
        // offsets below 2 GiB (the host checks the buffers): 32-bit arithmetic
        k_row[r] = it.k_head + uint(page * run.k_sp + pslot * run.k_ss) * KV_BYTES;
        v_row[r] = it.v_head + uint(page * run.v_sp + pslot * run.v_ss) * KV_BYTES;
#else
        k_row[r] = it.k_head +
                   uint64_t(int64_t(page) * run.k_sp + int64_t(pslot * run.k_ss)) * KV_BYTES;
        v_row[r] = it.v_head +
                   uint64_t(int64_t(page) * run.v_sp + int64_t(pslot * run.v_ss)) * KV_BYTES;
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

// Keeps the touches: slot is never below -1, which no compiler can know.
void keep_touches(DecodeParams P, int slot) {
    if (slot < -1 && g_sink == 0x5eedu)
        F32Ref(P.o).v[0] = 0.0;
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

// load_rope_freq: the frequencies of this lane's rotate-half pairs into registers (zeros
// without RoPE).
void load_rope_freq(DecodePlanInfo I, uint64_t plan, bool rope) {
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
}

// next_item: the fields of work item `item` and the KV addressing of its request and head.
Item next_item(DecodeParams P, DecodePlanInfo I, uint64_t plan, int item, bool rope) {
    WorkItem w = work_item(plan, I, item);
    Item it;
    it.b = w.b;
    it.g = w.g;
    it.kv_begin = w.kv_begin;
    it.kv_end = w.kv_end;
    it.slot = w.slot;
    it.kv_len = w.kv_len;
    it.pages = I32Ref(P.kv_indices + 4ul * uint64_t(plan_ints(plan, I.off_kv_indptr).v[it.b]));
#ifdef FLP_TEXEL_KV
    it.k_head = push.k_base + uint(int64_t(it.g) * P.k_stride_head) * KV_BYTES;
    it.v_head = push.v_base + uint(int64_t(it.g) * P.v_stride_head) * KV_BYTES;
#else
    it.k_head = P.k + uint64_t(int64_t(it.g) * P.k_stride_head) * uint64_t(KV_BYTES);
    it.v_head = P.v + uint64_t(int64_t(it.g) * P.v_stride_head) * uint64_t(KV_BYTES);
#endif
    it.k_rope = rope ? plan_ints(plan, I.off_k_rope_offset).v[it.b] : 0;
    it.q_rope = rope ? plan_ints(plan, I.off_q_rope_offset).v[it.b] : 0;
    return it;
}

// pass_row: row j of the pass starting at item row row0.
Row pass_row(DecodePlanInfo I, uint64_t plan, Run run, Item it, int row0, uint j) {
    Row row;
    row.rr = min(row0 + int(j), run.rows_total - 1);
    int qi = row.rr / run.group;
    row.h = it.g * run.group + row.rr % run.group;
    row.r = it.b * run.qo_len + qi;
    row.pos = it.kv_len - run.qo_len + qi;
    row.slope = run.alibi ? plan_floats(plan, I.off_alibi_slopes).v[row.h] : 0.0;
    return row;
}

// load_q: this lane's elements of row j's query, rotated.
void load_q(DecodeParams P, Run run, Item it, uint j, Row row) {
    int64_t q_off = int64_t(row.r) * P.q_stride_row + int64_t(row.h) * P.q_stride_head;
    float x[E];
    load_q_lane(P.q + 2ul * uint64_t(q_off), x);
#ifdef FLP_VARIANT_QUERY_TRANSFORM
    [[unroll]] for (uint c = 0u; c < NC; c++)
        [[unroll]] for (uint e = 0u; e < 8u; e++)
            x[c * 8u + e] = flp_query_transform(x[c * 8u + e], int(chunk_of(c) * 8u + e), row.pos,
                                                it.b, row.h, run.qo_len, it.kv_len);
#endif
    if (run.rope)
        rope_lane(x, row.pos + it.q_rope);
    [[unroll]] for (uint i = 0u; i < E4; i++)
        g_q[j][i] = vec4(x[4u * i], x[4u * i + 1u], x[4u * i + 2u], x[4u * i + 3u]);
}

// init_state: row j's online-softmax state with no key yet.
void init_state(uint j, bool softmax_off) {
    [[unroll]] for (uint i = 0u; i < E4; i++)
        g_acc[j][i] = vec4(0.0);
    g_m[j] = softmax_off ? 0.0 : NEG_BIG;
    g_l[j] = 0.0;
}

// issue_kv_copy: this lane's rows of the step starting at key first, looked up and touched a step
// before they are read.
void issue_kv_copy(Run run, Item it, int first, out ROW_T k_row[ROUNDS], out ROW_T v_row[ROUNDS]) {
    lane_rows(run, it, first, k_row, v_row);
    g_sink ^= touch_rows(k_row, v_row);
}

// step_rows: the K and V rows of every key of the step, from the lanes that looked them up.
void step_rows(ROW_T k_rows[ROUNDS], ROW_T v_rows[ROUNDS]) {
    [[unroll]] for (uint t = 0u; t < STEP; t++) {
        g_k_row[t] = step_row(k_rows, t);
        g_v_row[t] = step_row(v_rows, t);
    }
}

// compute_scores: this lane's part of q . k for the step's keys (K rotated at the key's
// position; keys past kv_end repeat the last one) and every row.
void compute_scores(Run run, Item it, int base) {
    [[unroll]] for (uint t = 0u; t < STEP; t++) {
        float x[E];
        load_kv(false, g_k_row[t], x);
        if (run.rope)
            rope_lane(x, min(base + int(t), it.kv_end - 1) + it.k_rope);
        [[unroll]] for (uint j = 0u; j < ROWS; j++) {
            float dot = 0.0;
            [[unroll]] for (uint e = 0u; e < E; e++)
                dot += g_q[j][e / 4u][e % 4u] * x[e];
            g_s[j][t] = dot;
        }
    }
}

// mask_scores: row j's dot products summed over the lanes (uniform across lanes from here on,
// so every select below is branch-free for llvmpipe), its logits in log2 units (scaled,
// soft-capped, ALiBi added, through the variant's logits transform), and which keys the masks
// keep (the item's end, causal, window, the variant's mask). The variant's snippets also see the
// keys the other masks drop (their results are not used).
void mask_scores(Run run, Item it, int base, uint j, Row row) {
    [[unroll]] for (uint t = 0u; t < STEP; t++) {
        int tok = base + int(t);
        g_kept[t] = tok < it.kv_end && (!run.causal || tok <= row.pos) &&
                    (!run.window || tok >= row.pos - run.window_left);
#ifdef FLP_VARIANT_LOGITS_MASK
        g_kept[t] = g_kept[t] &&
                    flp_logits_mask(row.pos, tok, it.b, row.h, it.g, run.qo_len, it.kv_len);
#endif
        // precise: as in decode.comp's mask_scores
        precise float x = lane_sum(g_s[j][t]) * run.logit_scale;
        if (run.softcap)
            x = run.soft_cap * flp_tanh(x / run.soft_cap);
        if (run.alibi)
            x += row.slope * float(tok - row.pos);
#ifdef FLP_VARIANT_LOGITS_TRANSFORM
        x = flp_logits_transform(x, row.pos, tok, it.b, row.h, it.g, run.qo_len, it.kv_len);
#endif
        g_s[j][t] = run.softmax_off ? x : x * LOG2E; // without the softmax: the key's weight
    }
}

// softmax_update: row j's new running max over the step's kept keys, one rescale of l and the
// accumulator, and the keys' weights p (0 for a dropped key) in place of their logits, summed
// into l.
void softmax_update(uint j, bool softmax_off) {
    if (softmax_off) { // the weights as they are, summed unnormalised (m stays 0)
        [[unroll]] for (uint t = 0u; t < STEP; t++) {
            g_s[j][t] = g_kept[t] ? g_s[j][t] : 0.0;
            g_l[j] += g_s[j][t];
        }
        return;
    }
    float m_new = g_m[j];
    [[unroll]] for (uint t = 0u; t < STEP; t++)
        m_new = g_kept[t] ? max(m_new, g_s[j][t]) : m_new;
    // exp2(0) need not be exactly 1 on every driver: rescale only on a change
    float alpha = m_new > g_m[j] ? exp2(g_m[j] - m_new) : 1.0;
    g_m[j] = m_new;
    float sum = 0.0;
    [[unroll]] for (uint t = 0u; t < STEP; t++) {
        g_s[j][t] = g_kept[t] ? exp2(g_s[j][t] - m_new) : 0.0;
        sum += g_s[j][t];
    }
    g_l[j] = g_l[j] * alpha + sum;
    [[unroll]] for (uint i = 0u; i < E4; i++)
        g_acc[j][i] *= alpha;
}

// accumulate_pv: acc += p * v for the step's keys and every row.
void accumulate_pv() {
    [[unroll]] for (uint t = 0u; t < STEP; t++) {
        float x[E];
        load_kv(true, g_v_row[t], x);
        [[unroll]] for (uint j = 0u; j < ROWS; j++)
            [[unroll]] for (uint i = 0u; i < E4; i++)
                g_acc[j][i] +=
                    g_s[j][t] * vec4(x[4u * i], x[4u * i + 1u], x[4u * i + 2u], x[4u * i + 3u]);
    }
}

// store_output: row j normalised, as out/lse or as the partial state of the item's slot.
void store_output(DecodeParams P, DecodePlanInfo I, uint64_t plan, Run run, Item it,
                  float out_scale, uint j, Row row) {
    float inv = run.softmax_off ? out_scale : output_scale(g_l[j], out_scale);
    float lse = run.softmax_off ? 0.0 : state_lse(g_m[j], g_l[j]);
    if (it.slot < 0) {
        int64_t o_off = int64_t(row.r) * P.o_stride_row + int64_t(row.h) * P.o_stride_head;
        uint64_t o_row = P.o + 2ul * uint64_t(o_off);
        [[unroll]] for (uint c = 0u; c < NC; c++) {
            float x[8];
            [[unroll]] for (uint e = 0u; e < 8u; e++)
                x[e] = g_acc[j][2u * c + e / 4u][e % 4u] * inv;
#ifdef FLP_VARIANT_OUTPUT_TRANSFORM
            [[unroll]] for (uint e = 0u; e < 8u; e++)
                x[e] = flp_output_transform(x[e], lse, int(chunk_of(c) * 8u + e), row.pos, it.b,
                                            row.h, run.qo_len, it.kv_len);
#endif
            U4Ref(o_row + 16ul * uint64_t(chunk_of(c))).v =
                flp_encode8(g_q_bf16 ? FLP_DT_BF16 : FLP_DT_F16, x);
        }
        if (P.lse != 0ul && lane_ == 0u) {
            int64_t l_off = int64_t(row.r) * P.lse_stride_row + int64_t(row.h);
            F32Ref(P.lse + 4ul * uint64_t(l_off)).v[0] = lse;
        }
    } else {
        // partial row (slot, qi, hh) = slot * rows_total + rr
        int prow = it.slot * run.rows_total + row.rr;
        F32Ref p_row = F32Ref(uint64_t(plan_floats(plan, I.off_partial_o)) +
                              4ul * uint64_t(prow) * uint64_t(HEAD_DIM));
        [[unroll]] for (uint c = 0u; c < NC; c++)
            [[unroll]] for (uint e = 0u; e < 8u; e++)
                p_row.v[chunk_of(c) * 8u + e] = g_acc[j][2u * c + e / 4u][e % 4u] * inv;
        if (lane_ == 0u)
            plan_floats(plan, I.off_partial_lse).v[prow] = lse;
    }
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
    Run run;
    run.causal = (flags & FLP_FLAG_CAUSAL) != 0u;
    run.window = (flags & FLP_FLAG_WINDOW) != 0u;
    run.softcap = (flags & FLP_FLAG_SOFTCAP) != 0u;
    run.alibi = (flags & FLP_FLAG_ALIBI) != 0u;
    run.rope = (flags & FLP_FLAG_ROPE) != 0u;
    run.softmax_off = (flags & FLP_FLAG_SOFTMAX_OFF) != 0u;
    bool fp8 = KV_BYTES == 1u;
    run.logit_scale = I.sm_scale * (fp8 ? I.k_scale : 1.0);
    float out_scale = fp8 ? I.v_scale : 1.0;
    run.soft_cap = I.soft_cap;
    run.window_left = I.window_left;
    run.page_size = I.page_size;
    run.page_shift = bitCount(run.page_size) == 1 ? findLSB(run.page_size) : -1; // divisions are slow
    // KV page and slot strides fit 32 bits (the host checks); page * stride may not
    run.k_sp = int(P.k_stride_page);
    run.k_ss = int(P.k_stride_slot);
    run.v_sp = int(P.v_stride_page);
    run.v_ss = int(P.v_stride_slot);
    run.num_pages = uint64_t(P.num_pages);
    run.qo_len = I.qo_len;
    run.group = I.group_size;
    run.rows_total = run.qo_len * run.group;
    uint64_t plan = P.plan;

    load_rope_freq(I, plan, run.rope);

    g_sink = 0u;
    int cta = int(gl_WorkGroupID.x);
    I32Ref work_indptr = plan_ints(plan, I.off_work_indptr);
    int item_begin = work_indptr.v[cta];
    int item_end = mine ? work_indptr.v[cta + 1] : item_begin;
    for (int item = item_begin; item < item_end; item++) {
        Item it = next_item(P, I, plan, item, run.rope);
        for (int row0 = 0; row0 < run.rows_total; row0 += int(ROWS)) {
            Row rows[ROWS];
            [[unroll]] for (uint j = 0u; j < ROWS; j++) {
                rows[j] = pass_row(I, plan, run, it, row0, j);
                load_q(P, run, it, j, rows[j]);
                init_state(j, run.softmax_off);
            }

            // The key loop: STEP keys per iteration (keys past kv_end load the last key again
            // and are masked). The rows of the next step are looked up and touched one
            // iteration ahead.
            ROW_T k_next[ROUNDS], v_next[ROUNDS];
            issue_kv_copy(run, it, it.kv_begin, k_next, v_next);
            for (int base = it.kv_begin; base < it.kv_end; base += int(STEP)) {
                ROW_T k_rows[ROUNDS], v_rows[ROUNDS];
                [[unroll]] for (uint r = 0u; r < ROUNDS; r++) {
                    k_rows[r] = k_next[r];
                    v_rows[r] = v_next[r];
                }
                issue_kv_copy(run, it, base + int(STEP), k_next, v_next);
                step_rows(k_rows, v_rows);
                compute_scores(run, it, base);
                [[unroll]] for (uint j = 0u; j < ROWS; j++) {
                    mask_scores(run, it, base, j, rows[j]);
                    softmax_update(j, run.softmax_off); // g_s: the keys' weights from here on
                }
                accumulate_pv();
            }
            keep_touches(P, it.slot);

            [[unroll]] for (uint j = 0u; j < ROWS; j++)
                if (row0 + int(j) < run.rows_total)
                    store_output(P, I, plan, run, it, out_scale, j, rows[j]);
        }
    }
}
