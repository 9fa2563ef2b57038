/* Batch prefill / append attention on tensor cores (spec: core/prefill_params.h and
 * notes of the prefill kernel spec), FlashAttention-2 style:
 *
 * - one block per plan workgroup walks its work items in order; an item's packed query rows
 *   (GQA: the query heads of one KV head share every K/V tile) go in passes of T rows;
 * - the pass's Q tile sits in shared memory in the compute type (the q dtype; RoPE applied on
 *   the way in), K and V blocks of KN keys stream through two cp.async stages (16-byte copies,
 *   page ids looked up per row); fp8 and 16-bit K/V of another type land in a staging area and
 *   are converted (and K rotated by RoPE) into compute-type tiles in shared memory;
 * - every tile row of D elements is D/8 chunks of 16 bytes stored at chunk ^ (row & 7), so the
 *   8 row addresses of an ldmatrix hit 8 different bank groups;
 * - S = Q K^T and O += P V with mma.sync m16n8k16 (f32 accumulators); ldmatrix.x4 feeds Q and K,
 *   ldmatrix.x4.trans feeds V; the S accumulators become the A fragments of P in registers;
 * - online softmax in registers in log2 units (sm_scale * log2 e folded into one factor,
 *   ex2.approx), row maxima and sums over the 4 lanes of a row by shuffles;
 * - causal and window blocks that no row of the pass keeps are never loaded (the key range is
 *   clipped per pass); per-element masks run only on blocks that cross a boundary (or with a
 *   custom mask).
 * Everything a re-plan can change is read from the plan information in plan memory.
 *
 * Stages (methods of prefill_kernel; prefill_body at the end strings them together):
 *   next_item, next_pass                       the item; per pass of T rows its values and keys
 *   load_q, load_row_data                      Q tile (RoPE); positions and slopes of the rows
 *   per key block: load_kv, convert_kv_tile, issue_kv_copy (next block), compute_scores,
 *                  mask_scores, softmax_update, accumulate_pv
 *   reduce_row_sums, store_output              (WN > 1: share_warp_state, combine_warps) */
#ifndef FLP_CUDA_PREFILL_CUH
#define FLP_CUDA_PREFILL_CUH

#include "backend-cuda/kernels/merge_state.cuh"
#include "backend-cuda/kernels/prefill_config.h"
#include "core/prefill_params.h"

static_assert(sizeof(flp_prefill_params) == FLP_PREFILL_PARAMS_BYTES, "flp_prefill_params layout");
static_assert(sizeof(flp_prefill_plan_info) == 128, "flp_prefill_plan_info layout");

namespace flp {

template <int D, int T, bool STAGED> struct prefill_shape {
    static constexpr int WM = FLP_CU_PREFILL_WM(D, T);
    static constexpr int MT = FLP_CU_PREFILL_MT(D, T);
    static constexpr int WN = FLP_CU_PREFILL_WN(D, T);
    static constexpr int KN = FLP_CU_PREFILL_KN(D, T, STAGED);
    static constexpr int THREADS = FLP_CU_PREFILL_THREADS(D, T);
    static constexpr int KW = KN / WN; /* keys of a block per warp */
    static_assert(16 * MT * WM == T, "warps cover the tile rows");
    static_assert(KW % 16 == 0, "a warp takes whole k16 steps of keys");
    static_assert(WN == 1 || (WM == 1 && MT == 1), "key-split warps share one m16 tile");
};

/* Byte offset of 16-byte chunk `chunk` of row `row` in a swizzled [rows][D] 16-bit tile. */
template <int D> FLP_DEV unsigned swz(int row, int chunk) {
    return static_cast<unsigned>(row * (D * 2) + ((chunk ^ (row & 7)) << 4));
}

/* The swizzled offset of chunk 2*step + x of a row whose lane part is `lane_off` = swz(row, x)
 * (x in {0, 1}; row rows apart by multiples of 8 share it): chunk bits 1-2 of the step flip by
 * XOR, the rest adds, so per-step offsets are one XOR and an immediate. */
FLP_DEV unsigned swz_step(unsigned lane_off, int step) {
    return (lane_off ^ static_cast<unsigned>((step & 3) << 5)) +
           static_cast<unsigned>((step >> 2) << 7);
}

/* Per-pass values, kept in shared memory rather than registers: the key loop needs every
 * register for the accumulators (they are re-read after each barrier). */
struct prefill_pass {
    int b, kvh, row_begin, r0, r1, slot;
    int q_start, kv_len, pos0, kv_first;
    int kb, ke, pos_first, pos_last, k_pos_offset, pad;
    long long mask_base; /* bit index of the request's mask */
};

/* Query positions and ALiBi slopes (log2 units) of a thread's rows: [mt][half] = local row
 * wm * 16 * MT + mt * 16 + lg + 8 * half of the pass. */
template <int MT> struct prefill_rows {
    int pos[MT][2];
    float slope[MT][2];
};

/* The online softmax state of a thread's rows (log2 units, merge_state.cuh) in mma accumulator
 * layout: acc[mt][nt] holds columns nt * 8 + 2 * lc, + 1 of rows half 0 ([0], [1]) and half 1
 * ([2], [3]); m and l are per row (l of this lane's columns until reduce_row_sums). */
template <int MT, int D> struct prefill_state {
    float acc[MT][D / 8][4];
    float m[MT][2], l[MT][2];
};

/* Where a pass's finished rows go: out and lse, or the item's partial-state slot. */
template <int QDT, int D> struct prefill_output {
    const flp_prefill_params &p;
    int slot, row_begin, group, kvh, q_start;
    float *partial_o, *partial_lse, *lse_out;

    /* Writes one finished row pair (columns col, col + 1) of packed row pr. */
    FLP_DEV void store_pair(int pr, int col, float o0, float o1) const {
        if (slot < 0) {
            const packed_row row = unpack_row(pr, group, kvh);
            unsigned char *op = reinterpret_cast<unsigned char *>(p.o) +
                                (static_cast<long long>(q_start + row.token) * p.o_stride_row +
                                 static_cast<long long>(row.head) * p.o_stride_head + col) *
                                    2;
            *reinterpret_cast<unsigned *>(op) = pack2_16bit<QDT>(o0, o1);
        } else {
            /* one 8-byte store (col is even, the slots at least 16-byte aligned): a warp's store
             * then fills whole 32-byte sectors of 8 rows, where two 4-byte stores half-filled twice
             * as many */
            const long long prow =
                static_cast<long long>(slot) * FLP_PREFILL_MAX_TILE + (pr - row_begin);
            *reinterpret_cast<unsigned long long *>(partial_o + prow * D + col) =
                static_cast<unsigned long long>(__float_as_uint(o1)) << 32 | __float_as_uint(o0);
        }
    }

    FLP_DEV void store_lse(int pr, float lse) const {
        if (slot < 0) {
            if (lse_out) {
                const packed_row row = unpack_row(pr, group, kvh);
                lse_out[static_cast<long long>(q_start + row.token) * p.lse_stride_row + row.head] =
                    lse;
            }
        } else {
            partial_lse[static_cast<long long>(slot) * FLP_PREFILL_MAX_TILE + (pr - row_begin)] =
                lse;
        }
    }
};

/* The flags of the variant options that a plan may switch on and off at each re-plan (docs/
 * design.md 5.3) and that cost the key loop registers even when off: each prefill kernel holds
 * its passes twice, with these options read from the plan and with them compiled out, and picks
 * one per launch from the plan's flags (prefill_body, prefill90_body). The copy without them is
 * 9-26% faster on the sm_90a kernel and 50-60% on the sm_80 one (H100, bench/RESULTS.md
 * 2026-12-07 evening; at head_dim 128 on sm_90a its key loop has no spill); the choice is made
 * on the device, so a captured graph stays right after a re-plan that switches an option on. */
constexpr unsigned kOptionFlags =
    FLP_FLAG_WINDOW | FLP_FLAG_SOFTCAP | FLP_FLAG_ALIBI | FLP_FLAG_ROPE | FLP_FLAG_CUSTOM_MASK;

/* The variant options of a prefill plan (FLP_FLAG_*), read once by each prefill kernel (this
 * file's and prefill_sm90.cuh's); with OPTIONS false those of kOptionFlags are off (the plan
 * has none of them on). */
template <bool OPTIONS> struct prefill_flags {
    bool causal, window, softcap, alibi, rope, custom;

    FLP_DEV void read_flags(unsigned flags) {
        causal = (flags & FLP_FLAG_CAUSAL) != 0;
        window = OPTIONS && (flags & FLP_FLAG_WINDOW) != 0;
        softcap = OPTIONS && (flags & FLP_FLAG_SOFTCAP) != 0;
        alibi = OPTIONS && (flags & FLP_FLAG_ALIBI) != 0;
        rope = OPTIONS && (flags & FLP_FLAG_ROPE) != 0;
        custom = OPTIONS && (flags & FLP_FLAG_CUSTOM_MASK) != 0;
    }
};

/* Whether the plan (its flp_prefill_plan_info at plan_address) has an option of kOptionFlags
 * on: which copy of the passes a launch runs, the same for every thread. */
FLP_DEV bool plan_has_options(uint64_t plan_address) {
    return (reinterpret_cast<const flp_prefill_plan_info *>(plan_address)->flags & kOptionFlags) !=
           0;
}

/* Bit (query token i of the request, key t) of a custom mask (the address of its bytes): the
 * request's bits start at bit mask_base, rows of kv_len bits (little-endian within bytes). */
FLP_DEV bool mask_bit(uint64_t mask, long long mask_base, int i, int kv_len, int t) {
    const long long bit = mask_base + static_cast<long long>(i) * kv_len + t;
    return (reinterpret_cast<const unsigned char *>(mask)[bit >> 3] >> (bit & 7)) & 1;
}

/* The prefill kernel: its shape and shared-memory layout, the flags read once, and its stages.
 * Per-pass values are read from shared memory (ps) and plan arrays addressed from p.plan at
 * each use: the key loop needs every register for the accumulators. */
template <int QDT, int KVDT, int D, int T, bool OPTIONS>
struct prefill_kernel : prefill_flags<OPTIONS> {
    using flags = prefill_flags<OPTIONS>;
    using flags::alibi, flags::causal, flags::custom, flags::read_flags, flags::rope,
        flags::softcap, flags::window;
    using KV = kv_traits<KVDT>;
    static constexpr bool STAGED = FLP_CU_PREFILL_STAGED(QDT, KVDT);
    using SH = prefill_shape<D, T, STAGED>;
    static constexpr int WM = SH::WM, MT = SH::MT, WN = SH::WN, KN = SH::KN, KW = SH::KW;
    static constexpr int NT = SH::THREADS;
    static constexpr int CPR = D / 8;                   /* 16-byte chunks of a compute-type row */
    static constexpr int TILE_BYTES = KN * D * 2;       /* one compute-type K or V tile */
    static constexpr int RAW_ROW_BYTES = D * KV::bytes; /* a staged row in the KV dtype */
    static constexpr int RAW_CPR = RAW_ROW_BYTES / 16;  /* its 16-byte chunks */
    static constexpr int RAW_TILE_BYTES = KN * RAW_ROW_BYTES;
    static constexpr int Q_BYTES = FLP_CU_PREFILL_Q_BYTES(D, T);
    static constexpr int REGION_BYTES = FLP_CU_PREFILL_REGION_BYTES(D, T, KV::bytes, STAGED);
    static constexpr int LOAD_CPR = STAGED ? RAW_CPR : CPR; /* chunks copied per key row, tensor */
    static_assert(D == 64 || D == 128 || D == 256, "head_dim 64, 128 or 256");
    static_assert(STAGED || KV::bytes == 2, "direct K/V are 16-bit");
    static_assert(WN == 1 || FLP_CU_PREFILL_MERGE_BYTES(D, T) <= REGION_BYTES, "merge area");
    static_assert(sizeof(prefill_pass) <= FLP_CU_PREFILL_PASS_BYTES, "pass values");

    using rows = prefill_rows<MT>;
    using state = prefill_state<MT, D>;
    using scores = float[MT][KW / 8][4]; /* S of this warp's rows and keys, mma layout */

    const flp_prefill_params &p;
    const flp_prefill_plan_info *info;
    unsigned char *s_q;      /* [T][D] Q tile, compute type, swizzled */
    unsigned char *s_region; /* K/V stages; the WN > 1 merge area once the keys are done */
    float *s_freq;           /* [D / 2] RoPE frequencies */
    prefill_pass *ps;        /* the pass's values */
    unsigned s_q_addr, s_region_addr;

    int tid, lane, warp;
    int wm, wn; /* this warp's rows and keys in the WM x WN warp grid */
    int lg, lc; /* row within 8 and column pair of the mma fragments */

    float s_factor, cap_log2;

    /* Reads the flags and scales once and the RoPE frequencies into shared memory (visible
     * after the first pass's barriers). */
    FLP_DEV explicit prefill_kernel(const flp_prefill_params &params) : p(params) {
        unsigned char *smem = reinterpret_cast<unsigned char *>(dynamic_smem);
        s_q = smem;
        s_region = smem + Q_BYTES;
        s_freq = reinterpret_cast<float *>(smem + Q_BYTES + REGION_BYTES);
        s_q_addr = smem_addr(s_q);
        s_region_addr = smem_addr(s_region);

        tid = threadIdx.x;
        lane = tid & 31;
        warp = tid >> 5;
        wm = warp % WM;
        wn = warp / WM;
        lg = lane >> 2;
        lc = lane & 3;

        info = reinterpret_cast<const flp_prefill_plan_info *>(p.plan);
        ps = reinterpret_cast<prefill_pass *>(s_freq + D / 2);

        read_flags(info->flags);

        /* Scores in log2 units; the fp8 key factor goes into the logit scale. */
        const float soft_cap = info->soft_cap;
        s_factor = logit_factor(info->sm_scale, kv_factor<KVDT>(info->k_scale), softcap, soft_cap);
        cap_log2 = soft_cap * kLog2e;

        if (rope) {
            const float *rope_freq = plan_f(info->off_rope_freq);
            for (int i = tid; i < D / 2; i += NT)
                s_freq[i] = rope_freq[i];
        }
    }

    FLP_DEV const int *plan_i(unsigned off) const {
        return reinterpret_cast<const int *>(p.plan) + off;
    }
    FLP_DEV float *plan_f(unsigned off) const {
        return reinterpret_cast<float *>(p.plan) + off;
    }

    /* Compute-type K and V tiles of stage s (staged kernels: one pair after the raw stages), as
     * offsets in the K/V region. */
    FLP_DEV static unsigned k_tile(int s) {
        return STAGED ? static_cast<unsigned>(4 * RAW_TILE_BYTES)
                      : static_cast<unsigned>(s * 2 * TILE_BYTES);
    }
    FLP_DEV static unsigned v_tile(int s) {
        return k_tile(s) + TILE_BYTES;
    }

    /* This warp's first key row in a key block. */
    FLP_DEV int key0() const {
        return wn * KW;
    }

    /* The work items of this block: [first_item(), end_item()). */
    FLP_DEV int first_item() const {
        return plan_i(info->off_work_indptr)[blockIdx.x];
    }
    FLP_DEV int end_item() const {
        return plan_i(info->off_work_indptr)[blockIdx.x + 1];
    }

    /* next_item: the fields of work item `item` (FLP_PITEM_*). */
    FLP_DEV const int *next_item(int item) const {
        return plan_i(info->off_work_items) + item * FLP_PREFILL_ITEM_INTS;
    }

    /* The values of the pass of rows [r0, r0 + T) of item wi into shared memory (thread 0),
     * with the keys any row of the pass keeps. Call between barriers. */
    FLP_DEV void next_pass(const int *wi, int r0) const {
        if (tid == 0) {
            const int b = wi[FLP_PITEM_REQUEST];
            const int row_end = wi[FLP_PITEM_ROW_END];
            const int r1 = min(r0 + T, row_end);
            const int group = info->group_size;
            const int q_start = plan_i(info->off_qo_indptr)[b];
            const int qo_len = plan_i(info->off_qo_indptr)[b + 1] - q_start;
            const int kv_len = plan_i(info->off_kv_len)[b];
            const int pos0 = kv_len - qo_len;
            ps->b = b;
            ps->kvh = wi[FLP_PITEM_KV_HEAD];
            ps->row_begin = wi[FLP_PITEM_ROW_BEGIN];
            ps->r0 = r0;
            ps->r1 = r1;
            ps->slot = wi[FLP_PITEM_PARTIAL_SLOT];
            ps->q_start = q_start;
            ps->kv_len = kv_len;
            ps->pos0 = pos0;
            ps->kv_first = plan_i(info->off_kv_indptr)[b];
            const int pos_first = pos0 + r0 / group;
            const int pos_last = pos0 + (r1 - 1) / group;
            int kb = wi[FLP_PITEM_KV_BEGIN], ke = wi[FLP_PITEM_KV_END];
            if (causal)
                ke = min(ke, pos_last + 1);
            if (window)
                kb = max(kb, pos_first - info->window_left);
            ps->kb = kb;
            ps->ke = ke;
            ps->pos_first = pos_first;
            ps->pos_last = pos_last;
            ps->k_pos_offset = rope ? plan_i(info->off_k_rope_offset)[b] : 0;
            ps->mask_base =
                custom ? static_cast<long long>(plan_i(info->off_mask_indptr)[b]) * 8 : 0;
        }
    }

    /* load_q: the pass's Q tile into shared memory, RoPE applied; rows past r1 are zeros
     * (computed, never written). */
    FLP_DEV void load_q(int r0) const {
        const int group = info->group_size;
        const int kvh = ps->kvh, r1 = ps->r1, q_start = ps->q_start;
        const int q_pos0 = ps->pos0 + (rope ? plan_i(info->off_q_rope_offset)[ps->b] : 0);
        for (int u = tid; u < T * (CPR / 2); u += NT) {
            const int row = u / (CPR / 2);
            const int c = u - row * (CPR / 2);
            const int pr = r0 + row;
            u32x4 lo = {0u, 0u, 0u, 0u}, hi = {0u, 0u, 0u, 0u};
            if (pr < r1) {
                const packed_row q = unpack_row(pr, group, kvh);
                const unsigned char *qp =
                    reinterpret_cast<const unsigned char *>(p.q) +
                    (static_cast<long long>(q_start + q.token) * p.q_stride_row +
                     static_cast<long long>(q.head) * p.q_stride_head + c * 8) *
                        2;
                lo = *reinterpret_cast<const u32x4 *>(qp);
                hi = *reinterpret_cast<const u32x4 *>(qp + D);
                if (rope) {
                    float a[8], bb[8];
                    unpack8_16bit<QDT>(lo, a);
                    unpack8_16bit<QDT>(hi, bb);
                    rope_pair8(a, bb, static_cast<float>(q_pos0 + q.token), s_freq + c * 8);
                    lo = pack8_16bit<QDT>(a);
                    hi = pack8_16bit<QDT>(bb);
                }
            }
            *reinterpret_cast<u32x4 *>(s_q + swz<D>(row, c)) = lo;
            *reinterpret_cast<u32x4 *>(s_q + swz<D>(row, c + CPR / 2)) = hi;
        }
    }

    /* Positions and ALiBi slopes of this thread's rows (rows past r1 repeat the last one). */
    FLP_DEV void load_row_data(int r0, rows &rw) const {
        const int group = info->group_size;
        const int r1 = ps->r1, pos0 = ps->pos0, kvh = ps->kvh;
        const float *slopes = plan_f(info->off_alibi_slopes);
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
#pragma unroll
            for (int hf = 0; hf < 2; hf++) {
                int pr = r0 + wm * 16 * MT + mt * 16 + lg + 8 * hf;
                pr = pr < r1 ? pr : r1 - 1;
                const packed_row q = unpack_row(pr, group, kvh);
                rw.pos[mt][hf] = pos0 + q.token;
                rw.slope[mt][hf] = alibi ? slopes[q.head] * kLog2e : 0.0f;
            }
        }
    }

    /* Key blocks of the pass (its clipped key range [kb, ke) in blocks of KN). */
    FLP_DEV int num_blocks() const {
        return ps->ke > ps->kb ? (ps->ke - ps->kb + KN - 1) / KN : 0;
    }

    FLP_DEV static void init_state(state &st) {
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
#pragma unroll
            for (int hf = 0; hf < 2; hf++) {
                st.m[mt][hf] = neg_inf();
                st.l[mt][hf] = 0.0f;
            }
#pragma unroll
            for (int nt = 0; nt < D / 8; nt++) {
#pragma unroll
                for (int i = 0; i < 4; i++)
                    st.acc[mt][nt][i] = 0.0f;
            }
        }
    }

    /* issue_kv_copy: queues the copies of key block j into stage s (zeros past ke; page ids
     * looked up per row) and commits. Staged kernels copy raw rows, direct ones swizzled
     * compute-type rows. */
    FLP_DEV void issue_kv_copy(int j, int s) const {
        const int t0 = ps->kb + j * KN;
        const int ke = ps->ke;
        const bool paged = (info->flags & FLP_FLAG_PAGED) != 0;
        const unsigned page_size = static_cast<unsigned>(info->page_size);
        const int *pages = reinterpret_cast<const int *>(p.kv_indices) + ps->kv_first;
        const unsigned long long num_pages = static_cast<unsigned long long>(p.num_pages);
        const long long first_row = ps->kv_first;
        const unsigned char *k_head =
            reinterpret_cast<const unsigned char *>(p.k) + p.k_stride_head * ps->kvh * KV::bytes;
        const unsigned char *v_head =
            reinterpret_cast<const unsigned char *>(p.v) + p.v_stride_head * ps->kvh * KV::bytes;
        const unsigned k_dst =
            s_region_addr + (STAGED ? static_cast<unsigned>(s * 2 * RAW_TILE_BYTES) : k_tile(s));
        const unsigned v_dst = k_dst + static_cast<unsigned>(STAGED ? RAW_TILE_BYTES : TILE_BYTES);
#pragma unroll 1
        for (int u = tid; u < KN * LOAD_CPR; u += NT) {
            const int row = u / LOAD_CPR;
            const int ch = u - row * LOAD_CPR;
            const int t = t0 + row;
            bool valid = t < ke;
            long long k_off = 0, v_off = 0;
            if (valid) {
                if (paged) {
                    const unsigned ut = static_cast<unsigned>(t);
                    const unsigned pi = ut / page_size;
                    const int id = pages[pi];
                    /* an id outside the caches (only a run-time page table can hold one) is
                     * not followed: its row reads as zeros */
                    valid = static_cast<unsigned long long>(static_cast<unsigned>(id)) < num_pages;
                    const long long page = valid ? id : 0;
                    const long long sl = static_cast<long long>(ut - pi * page_size);
                    k_off = page * p.k_stride_page + sl * p.k_stride_slot;
                    v_off = page * p.v_stride_page + sl * p.v_stride_slot;
                } else {
                    const long long r = first_row + t;
                    k_off = r * p.k_stride_slot;
                    v_off = r * p.v_stride_slot;
                }
            }
            const unsigned dst =
                STAGED ? static_cast<unsigned>(row * RAW_ROW_BYTES + ch * 16) : swz<D>(row, ch);
            /* Invalid rows copy nothing (zeros) from a mapped address. */
            cp_async<16>(k_dst + dst, k_head + (k_off * KV::bytes + ch * 16), valid);
            cp_async<16>(v_dst + dst, v_head + (v_off * KV::bytes + ch * 16), valid);
        }
        cp_async_commit();
    }

    /* RoPE of the K tile of stage s in place (direct kernels). */
    FLP_DEV void rope_k_tile(int s, int t0) const {
        unsigned char *kt = s_region + k_tile(s);
#pragma unroll 1
        for (int u = tid; u < KN * (CPR / 2); u += NT) {
            const int row = u / (CPR / 2);
            const int c = u - row * (CPR / 2);
            u32x4 *plo = reinterpret_cast<u32x4 *>(kt + swz<D>(row, c));
            u32x4 *phi = reinterpret_cast<u32x4 *>(kt + swz<D>(row, c + CPR / 2));
            float a[8], bb[8];
            unpack8_16bit<QDT>(*plo, a);
            unpack8_16bit<QDT>(*phi, bb);
            rope_pair8(a, bb, static_cast<float>(t0 + row + ps->k_pos_offset), s_freq + c * 8);
            *plo = pack8_16bit<QDT>(a);
            *phi = pack8_16bit<QDT>(bb);
        }
    }

    /* convert_kv_tile: the staged rows of stage s (KV dtype) into the compute-type K and V
     * tiles, K rotated by RoPE; direct kernels only rotate K in place, when RoPE is on. */
    FLP_DEV void convert_kv_tile(int s, int t0) const {
        if constexpr (STAGED) {
            const unsigned char *raw_k = s_region + s * 2 * RAW_TILE_BYTES;
            const unsigned char *raw_v = raw_k + RAW_TILE_BYTES;
#pragma unroll 1
            for (int u = tid; u < KN * (CPR / 2); u += NT) {
                const int row = u / (CPR / 2);
                const int c = u - row * (CPR / 2);
                float a[8], bb[8];
                KV::load8(raw_k + row * RAW_ROW_BYTES + c * 8 * KV::bytes, a);
                KV::load8(raw_k + row * RAW_ROW_BYTES + (c * 8 + D / 2) * KV::bytes, bb);
                if (rope)
                    rope_pair8(a, bb, static_cast<float>(t0 + row + ps->k_pos_offset),
                               s_freq + c * 8);
                unsigned char *kt = s_region + k_tile(s);
                *reinterpret_cast<u32x4 *>(kt + swz<D>(row, c)) = pack8_16bit<QDT>(a);
                *reinterpret_cast<u32x4 *>(kt + swz<D>(row, c + CPR / 2)) = pack8_16bit<QDT>(bb);
            }
#pragma unroll 1
            for (int u = tid; u < KN * CPR; u += NT) {
                const int row = u / CPR;
                const int c = u - row * CPR;
                float a[8];
                KV::load8(raw_v + row * RAW_ROW_BYTES + c * 8 * KV::bytes, a);
                *reinterpret_cast<u32x4 *>(s_region + v_tile(s) + swz<D>(row, c)) =
                    pack8_16bit<QDT>(a);
            }
        } else {
            if (rope)
                rope_k_tile(s, t0);
        }
    }

    /* load_kv: waits for key block j (the only group in flight) and a block barrier: the block
     * landed for every thread, and block j - 1 is consumed, so its stage may be refilled.
     * Returns the block's first key. */
    FLP_DEV int load_kv(int j) const {
        cp_async_wait<0>();
        __syncthreads();
        return ps->kb + j * KN;
    }

    /* compute_scores: S = Q K^T for this warp's rows and keys of the block in stage s. */
    FLP_DEV void compute_scores(int s, scores &sc) const {
        const unsigned kt_addr = s_region_addr + k_tile(s);
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
#pragma unroll
            for (int nt = 0; nt < KW / 8; nt++) {
#pragma unroll
                for (int i = 0; i < 4; i++)
                    sc[mt][nt][i] = 0.0f;
            }
        }
        /* ldmatrix lane offsets (tiles are [rows][D], rows 16 apart add 16 rows). */
        const unsigned q_lane = swz<D>(wm * 16 * MT + (lane & 15), lane >> 4);
        const unsigned k_lane = swz<D>(key0() + ((lane >> 4) << 3) + (lane & 7), (lane >> 3) & 1);
#pragma unroll
        for (int ks = 0; ks < D / 16; ks++) {
            unsigned qa[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
                ldmatrix_x4(qa[mt], s_q_addr + mt * 16 * (D * 2) + swz_step(q_lane, ks));
#pragma unroll
            for (int np = 0; np < KW / 16; np++) {
                unsigned kf[4];
                ldmatrix_x4(kf, kt_addr + np * 16 * (D * 2) + swz_step(k_lane, ks));
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    mma_16816<QDT>(sc[mt][2 * np], qa[mt], kf[0], kf[1]);
                    mma_16816<QDT>(sc[mt][2 * np + 1], qa[mt], kf[2], kf[3]);
                }
            }
        }
    }

    /* mask_scores: logits in log2 units (scale, soft cap, ALiBi), then the key range, causal,
     * window and custom masks, per element only where the block crosses a boundary. */
    FLP_DEV void mask_scores(int t0, const rows &rw, scores &sc) const {
        const int ke = ps->ke;
        const int window_left = info->window_left;
        /* A block every row of the pass keeps whole needs no per-element masks (a custom mask
         * always does). */
        bool interior = !custom && t0 + KN <= ke;
        if (causal)
            interior = interior && t0 + KN - 1 <= ps->pos_first;
        if (window)
            interior = interior && t0 >= ps->pos_last - window_left;
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
#pragma unroll
            for (int nt = 0; nt < KW / 8; nt++) {
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    const int hf = i >> 1;
                    const int t = t0 + key0() + nt * 8 + lc * 2 + (i & 1);
                    float x = sc[mt][nt][i] * s_factor;
                    if (softcap)
                        x = soft_cap_log2(x, cap_log2);
                    if (alibi)
                        x = alibi_bias(x, rw.slope[mt][hf], t, rw.pos[mt][hf]);
                    if (!interior) {
                        const int pos = rw.pos[mt][hf];
                        bool keep = t < ke;
                        if (causal)
                            keep = keep && t <= pos;
                        if (window)
                            keep = keep && t >= pos - window_left;
                        if (custom && keep)
                            keep = mask_bit(p.mask, ps->mask_base, pos - ps->pos0, ps->kv_len, t);
                        x = keep ? x : neg_inf();
                    }
                    sc[mt][nt][i] = x;
                }
            }
        }
    }

    /* softmax_update: new row maxima (over the 4 lanes of a row), rescale of l and acc,
     * scores turned into probabilities 2^(s - m). */
    FLP_DEV static void softmax_update(state &st, scores &sc) {
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
#pragma unroll
            for (int hf = 0; hf < 2; hf++) {
                float mx = st.m[mt][hf];
#pragma unroll
                for (int nt = 0; nt < KW / 8; nt++)
                    mx = fmaxf(mx, fmaxf(sc[mt][nt][2 * hf], sc[mt][nt][2 * hf + 1]));
                mx = fmaxf(mx, __shfl_xor_sync(kFullMask, mx, 1));
                mx = fmaxf(mx, __shfl_xor_sync(kFullMask, mx, 2));
                const float mu = softmax_base(mx);
                const float alpha = exp2_approx(st.m[mt][hf] - mu);
                st.m[mt][hf] = mx;
                float sum = 0.0f;
#pragma unroll
                for (int nt = 0; nt < KW / 8; nt++) {
#pragma unroll
                    for (int i = 2 * hf; i < 2 * hf + 2; i++) {
                        const float e = exp2_approx(sc[mt][nt][i] - mu);
                        sc[mt][nt][i] = e;
                        sum += e;
                    }
                }
                st.l[mt][hf] = fmaf(st.l[mt][hf], alpha, sum);
#pragma unroll
                for (int nt = 0; nt < D / 8; nt++) {
                    st.acc[mt][nt][2 * hf] *= alpha;
                    st.acc[mt][nt][2 * hf + 1] *= alpha;
                }
            }
        }
    }

    /* accumulate_pv: O += P V with the block in stage s; the S accumulators of keys
     * 16kp..16kp+15 are P's A fragment. */
    FLP_DEV void accumulate_pv(state &st, const scores &sc, int s) const {
        const unsigned vt_addr = s_region_addr + v_tile(s);
        const unsigned v_lane = swz<D>(key0() + (((lane >> 3) & 1) << 3) + (lane & 7), lane >> 4);
#pragma unroll
        for (int kp = 0; kp < KW / 16; kp++) {
            unsigned pa[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                pa[mt][0] = pack2_16bit<QDT>(sc[mt][2 * kp][0], sc[mt][2 * kp][1]);
                pa[mt][1] = pack2_16bit<QDT>(sc[mt][2 * kp][2], sc[mt][2 * kp][3]);
                pa[mt][2] = pack2_16bit<QDT>(sc[mt][2 * kp + 1][0], sc[mt][2 * kp + 1][1]);
                pa[mt][3] = pack2_16bit<QDT>(sc[mt][2 * kp + 1][2], sc[mt][2 * kp + 1][3]);
            }
#pragma unroll
            for (int dp = 0; dp < D / 16; dp++) {
                unsigned vf[4];
                ldmatrix_x4_trans(vf, vt_addr + kp * 16 * (D * 2) + swz_step(v_lane, dp));
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    mma_16816<QDT>(st.acc[mt][2 * dp], pa[mt], vf[0], vf[1]);
                    mma_16816<QDT>(st.acc[mt][2 * dp + 1], pa[mt], vf[2], vf[3]);
                }
            }
        }
    }

    /* Full row sums over the 4 lanes of a row. */
    FLP_DEV static void reduce_row_sums(state &st) {
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
#pragma unroll
            for (int hf = 0; hf < 2; hf++) {
                st.l[mt][hf] += __shfl_xor_sync(kFullMask, st.l[mt][hf], 1);
                st.l[mt][hf] += __shfl_xor_sync(kFullMask, st.l[mt][hf], 2);
            }
        }
    }

    /* Merge area of the key-split warps (WN > 1): acc [WN][16][D], m and l [WN][16]. */
    FLP_DEV float *merge_acc() const {
        return reinterpret_cast<float *>(s_region);
    }
    FLP_DEV float *merge_m() const {
        return merge_acc() + WN * 16 * D;
    }
    FLP_DEV float *merge_l() const {
        return merge_m() + WN * 16;
    }

    /* The warp's state of the pass's 16 rows into the merge area (WN > 1), between barriers:
     * the area aliases the K/V tiles. */
    FLP_DEV void share_warp_state(const state &st) const {
        float *s_acc = merge_acc(), *s_m = merge_m(), *s_l = merge_l();
        __syncthreads(); /* every warp is done with the K/V tiles */
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
            const int row = lg + 8 * hf;
#pragma unroll
            for (int nt = 0; nt < D / 8; nt++) {
                float *dst = s_acc + (wn * 16 + row) * D + nt * 8 + lc * 2;
                dst[0] = st.acc[0][nt][2 * hf];
                dst[1] = st.acc[0][nt][2 * hf + 1];
            }
            if (lc == 0) {
                s_m[wn * 16 + row] = st.m[0][hf];
                s_l[wn * 16 + row] = st.l[0][hf];
            }
        }
        __syncthreads(); /* merge area complete */
    }

    /* combine_warps: the key-split warps' states of row `row`, columns col and col + 1, folded
     * in warp order (deterministic). */
    FLP_DEV void combine_warps(int row, int col, float &mx, float &sum, float (&o)[2]) const {
        combine_states<WN, 2>(merge_m() + row, merge_l() + row, 16, merge_acc() + row * D + col,
                              16 * D, mx, sum, o);
    }

    FLP_DEV prefill_output<QDT, D> output() const {
        return prefill_output<QDT, D>{p,
                                      ps->slot,
                                      ps->row_begin,
                                      info->group_size,
                                      ps->kvh,
                                      ps->q_start,
                                      plan_f(info->off_partial_o),
                                      plan_f(info->off_partial_lse),
                                      reinterpret_cast<float *>(p.lse)};
    }

    /* store_output: normalise the pass's rows and write out and lse, or the f32 partial state
     * of the item's slot. One m16 tile split over key warps (WN > 1) is first combined through
     * shared memory, then written by all threads. */
    FLP_DEV void store_output(const state &st, int r0) const {
        const prefill_output<QDT, D> out = output();
        const int r1 = ps->r1;
        const float v_factor = kv_factor<KVDT>(info->v_scale);
        if constexpr (WN == 1) {
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
#pragma unroll
                for (int hf = 0; hf < 2; hf++) {
                    const int pr = r0 + wm * 16 * MT + mt * 16 + lg + 8 * hf;
                    if (pr >= r1)
                        continue;
                    const float scale = output_scale(st.l[mt][hf], v_factor);
#pragma unroll
                    for (int nt = 0; nt < D / 8; nt++)
                        out.store_pair(pr, nt * 8 + lc * 2, st.acc[mt][nt][2 * hf] * scale,
                                       st.acc[mt][nt][2 * hf + 1] * scale);
                    if (lc == 0)
                        out.store_lse(pr, state_lse(st.m[mt][hf], st.l[mt][hf]));
                }
            }
        } else {
            share_warp_state(st);
            for (int u = tid; u < 16 * (D / 2); u += NT) {
                const int row = u / (D / 2);
                const int col = (u - row * (D / 2)) * 2;
                const int pr = r0 + row;
                if (pr >= r1)
                    continue;
                float mx, sum, o[2];
                combine_warps(row, col, mx, sum, o);
                const float scale = output_scale(sum, v_factor);
                out.store_pair(pr, col, o[0] * scale, o[1] * scale);
                if (col == 0)
                    out.store_lse(pr, state_lse(mx, sum));
            }
        }
    }
};

/* The prefill kernel's passes: the algorithm, stage by stage. */
template <int QDT, int KVDT, int D, int T, bool OPTIONS>
FLP_DEV void prefill_passes(const flp_prefill_params &p) {
    using K = prefill_kernel<QDT, KVDT, D, T, OPTIONS>;
    const K kern(p); /* reads the flags, RoPE frequencies into shared memory */
    const int item_end = kern.end_item();
    for (int item = kern.first_item(); item < item_end; ++item) {
        const int *wi = kern.next_item(item);
        const int row_end = wi[FLP_PITEM_ROW_END];
        /* The item's packed rows in passes of T, each against the keys it keeps. */
        for (int r0 = wi[FLP_PITEM_ROW_BEGIN]; r0 < row_end; r0 += T) {
            __syncthreads(); /* the previous pass is done with every shared tile */
            kern.next_pass(wi, r0);
            __syncthreads(); /* pass values visible */
            kern.load_q(r0);
            typename K::rows rw;
            kern.load_row_data(r0, rw);
            const int nblk = kern.num_blocks();
            typename K::state st;
            K::init_state(st);

            if (nblk > 0)
                kern.issue_kv_copy(0, 0);
            for (int j = 0; j < nblk; ++j) {
                const int s = j & 1; /* the stage of block j */
                const int t0 = kern.load_kv(j);
                kern.convert_kv_tile(s, t0);
                if (j + 1 < nblk)
                    kern.issue_kv_copy(j + 1, s ^ 1); /* overlaps this block's math */
                if (K::STAGED || kern.rope)
                    __syncthreads(); /* converted / rotated tiles visible */
                typename K::scores sc;
                kern.compute_scores(s, sc);
                kern.mask_scores(t0, rw, sc);
                K::softmax_update(st, sc);
                kern.accumulate_pv(st, sc, s);
            }

            K::reduce_row_sums(st);
            kern.store_output(st, r0);
        }
    }
}

/* The prefill kernel's body: the passes with the plan's options, or without any (kOptionFlags). */
template <int QDT, int KVDT, int D, int T> FLP_DEV void prefill_body(const flp_prefill_params &p) {
    if (plan_has_options(p.plan))
        prefill_passes<QDT, KVDT, D, T, true>(p);
    else
        prefill_passes<QDT, KVDT, D, T, false>(p);
}

} // namespace flp

#endif /* FLP_CUDA_PREFILL_CUH */
