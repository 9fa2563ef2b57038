/* Batch decode over a paged KV cache (spec: docs of core/decode_params.h and the decode kernel
 * spec). One block of FLP_CU_DECODE_WARPS warps per plan workgroup; the block walks its work
 * items in order. For an item (request b, KV head g, keys [kv_begin, kv_end)):
 *
 * - the item's keys are split into one contiguous range per warp; each warp streams its K and V
 *   rows through a private shared-memory ring with cp.async (STAGES stages of STEPS steps in
 *   flight), so only wait_group orders a lane's copies with its own reads: no warp barrier;
 * - a token row of D elements is read by TPT = D/8 lanes, 8 elements (16 bytes of f16/bf16,
 *   8 of fp8) each; a warp step covers TPW = 32/TPT tokens;
 * - the query rows of the item (qo_len x group_size, in blocks of ROWS) sit in registers,
 *   pre-scaled by sm_scale * log2(e) (times the fp8 key scale), and share every loaded key;
 * - dot products are reduced with xor shuffles over the TPT lanes of a token; each lane group
 *   keeps an online softmax state (m in log2 units, l, acc[8]) per row, merged across groups
 *   with shuffles and across warps through shared memory in a fixed order (deterministic).
 * Page ids are looked up once per token row, one stage ahead of their use. The plan's decisions
 * (batch, lengths, flags, scales, the work partition) come from the plan information in plan
 * memory; the by-value parameters carry only the tensors.
 *
 * Stages (methods of decode_kernel; decode_body at the end strings them together):
 *   next_item                                  the item and this warp's keys
 *   load_row_data, load_q                      per block of ROWS rows: positions, slopes, queries
 *   start_kv_ring                              lookup_pages + issue_kv_copy of STAGES - 1 stages
 *   per stage: load_kv, issue_kv_copy (refill), lookup_pages (one stage ahead),
 *              compute_scores (convert_kv_tile of K), mask_scores, softmax_update,
 *              accumulate_pv (convert_kv_tile of V)
 *   merge_lane_groups, share_warp_state        the lane groups, then the warps' states
 *   store_output                               combine_warps (in warp order), normalise, write */
#ifndef FLP_CUDA_DECODE_CUH
#define FLP_CUDA_DECODE_CUH

#include "backend-cuda/kernels/merge_state.cuh"
#include "core/decode_item.h"
#include "core/decode_params.h"

/* The host compiles the same header as C: the layouts must agree byte for byte. */
static_assert(sizeof(flp_decode_params) == FLP_DECODE_PARAMS_BYTES, "flp_decode_params layout");
static_assert(sizeof(flp_decode_plan_info) == 128, "flp_decode_plan_info layout");

namespace flp {

/* A work item as the block sees it: request b, KV head g, and the keys [wb, we) of this warp. */
struct decode_item {
    int b, g, partial_slot, kv_len;
    int wb, we;
    const int *pages;                     /* the request's page ids */
    const unsigned char *k_base, *v_base; /* this lane's chunk of head g's K and V rows */
    int k_pos_offset, q_pos_offset;       /* RoPE position offsets */
};

/* The query rows of a row block in registers (pre-scaled; a row past the group is zeros) and
 * the keys [lo, hi] each keeps: the warp's range clipped by the causal and window bounds. */
template <int ROWS> struct decode_query {
    float q[ROWS][FLP_CU_DECODE_VEC];
    int lo[ROWS], hi[ROWS];
    int lo_all, hi_all; /* keys every row keeps: stages inside need no per-key masks */
};

/* The online softmax state of a lane group, per row (log2 units, merge_state.cuh). */
template <int ROWS> struct decode_state { float m[ROWS], l[ROWS], acc[ROWS][FLP_CU_DECODE_VEC]; };

/* A warp's cp.async ring: STAGES slots of STEPS steps for K and for V. A lane copies and reads
 * only its own chunk of each step, so cp.async.wait_group orders everything. */
template <int STEPS> struct decode_ring {
    unsigned char *k, *v; /* this lane's chunk of the warp's K and V rings */
    unsigned k_s, v_s;    /* the same as shared-window addresses */
    int nstages;          /* stages of the warp's keys */
    int slot_use, slot_fill;
    int pg[STEPS], sl[STEPS]; /* page id (-1 past the keys) and slot of the next stage's tokens */
};

/* The decode kernel: its shape, the plan's decisions read once, and its stages. */
template <int QDT, int KVDT, int D, int ROWS> struct decode_kernel {
    using KV = kv_traits<KVDT>;
    static constexpr int VEC = FLP_CU_DECODE_VEC;
    static constexpr int TPT = D / VEC;             /* lanes per token row */
    static constexpr int TPW = 32 / TPT;            /* tokens per warp step */
    static constexpr int CHUNK = VEC * KV::bytes;   /* bytes a lane copies per token and tensor */
    static constexpr int STEPS = ROWS == 8 ? 2 : 4; /* steps per stage (one softmax update each) */
    static constexpr int STAGES = FLP_CU_DECODE_RING_STEPS / STEPS;
    static constexpr int NW = FLP_CU_DECODE_WARPS;
    static constexpr int NT = FLP_CU_DECODE_THREADS;
    static constexpr int STEP_BYTES = 32 * CHUNK;
    static constexpr int RING_BYTES = FLP_CU_DECODE_RING_STEPS * STEP_BYTES; /* per warp, tensor */
    static constexpr int MAIN_BYTES =
        FLP_CU_MAX_(FLP_CU_DECODE_RING_BYTES(KV::bytes), FLP_CU_DECODE_MERGE_BYTES(D, ROWS));
    static_assert(D == 64 || D == 128 || D == 256, "head_dim 64, 128 or 256");
    static_assert(TPT * TPW == 32, "token rows tile the warp");
    static_assert(STAGES >= 2 && STAGES * STEPS == FLP_CU_DECODE_RING_STEPS, "ring shape");
    static_assert(2 * NW * RING_BYTES == FLP_CU_DECODE_RING_BYTES(KV::bytes), "ring size");
    static_assert(MAIN_BYTES % 16 == 0, "aux area alignment");
    static_assert((D / 2) * 4 + ROWS * 8 <= FLP_CU_DECODE_AUX_BYTES, "aux area size");

    using query = decode_query<ROWS>;
    using state = decode_state<ROWS>;
    using ring = decode_ring<STEPS>;
    using scores = float[STEPS][ROWS]; /* a stage's scores: [step][row] */

    const flp_decode_params &p;
    unsigned char *smem;
    /* Cross-warp merge area (aliases the rings once they are drained). */
    float *s_acc;       /* [NW][ROWS][D] */
    float *s_m, *s_l;   /* [NW][ROWS] */
    float *s_freq;      /* [D / 2] RoPE frequencies */
    int *s_row_pos;     /* [ROWS] position of each row of the block */
    float *s_row_slope; /* [ROWS] ALiBi slope, log2 units */

    int tid, lane, warp;
    int grp; /* token of the step this lane works on */
    int d0;  /* first element of the row this lane holds */

    /* Plan arrays (offsets in words from the plan information). */
    const int *kv_indptr, *kv_len_of, *q_rope_offset, *k_rope_offset;
    const int *kv_indices;        /* the plan's copy or the run's tensor (flp_decode_params) */
    unsigned long long num_pages; /* ids outside [0, num_pages) are not followed */
    const float *alibi_slopes;
    const int *work_indptr, *work_items;
    float *partial_o, *partial_lse;

    unsigned flags;
    bool rope, softcap, alibi;
    int window_left;
    int group, qo_len, nrows;
    unsigned page_size, page_shift;
    bool page_pow2; /* power-of-two pages (the usual case) map tokens to pages with a shift */
    float q_factor, cap_log2, v_factor;
    float *lse_out;                           /* null: no lse output */
    long long k_page, k_slot, v_page, v_slot; /* strides in bytes */

    /* The plan's decisions live in plan memory (re-plans keep a captured launch valid); they
     * are read once here. aux_offset: where the area after the rings and the merge area starts
     * (a kernel built on this one may have rings of another size). */
    FLP_DEV explicit decode_kernel(const flp_decode_params &params, int aux_offset = MAIN_BYTES)
        : p(params) {
        smem = reinterpret_cast<unsigned char *>(dynamic_smem);
        s_acc = reinterpret_cast<float *>(smem);
        s_m = s_acc + NW * ROWS * D;
        s_l = s_m + NW * ROWS;
        s_freq = reinterpret_cast<float *>(smem + aux_offset);
        s_row_pos = reinterpret_cast<int *>(s_freq + D / 2);
        s_row_slope = reinterpret_cast<float *>(s_row_pos + ROWS);

        tid = threadIdx.x;
        lane = tid & 31;
        warp = tid >> 5;
        grp = lane / TPT;
        d0 = (lane % TPT) * VEC;

        const flp_decode_plan_info *info = plan_info();
        const int *plan_i = reinterpret_cast<const int *>(p.plan);
        const float *plan_f = reinterpret_cast<const float *>(p.plan);
        float *plan_w = reinterpret_cast<float *>(p.plan);
        kv_indptr = plan_i + info->off_kv_indptr;
        kv_indices = reinterpret_cast<const int *>(p.kv_indices);
        num_pages = static_cast<unsigned long long>(p.num_pages);
        kv_len_of = plan_i + info->off_kv_len;
        q_rope_offset = plan_i + info->off_q_rope_offset;
        k_rope_offset = plan_i + info->off_k_rope_offset;
        alibi_slopes = plan_f + info->off_alibi_slopes;
        work_indptr = plan_i + info->off_work_indptr;
        work_items = plan_i + info->off_work_items;
        partial_o = plan_w + info->off_partial_o;
        partial_lse = plan_w + info->off_partial_lse;

        flags = info->flags;
        rope = (flags & FLP_FLAG_ROPE) != 0;
        softcap = (flags & FLP_FLAG_SOFTCAP) != 0;
        alibi = (flags & FLP_FLAG_ALIBI) != 0;
        window_left = info->window_left;
        load_rope_freq();

        group = info->group_size;
        qo_len = info->qo_len;
        nrows = qo_len * group;
        page_size = static_cast<unsigned>(info->page_size);
        page_pow2 = (page_size & (page_size - 1)) == 0;
        page_shift = 0;
        while (page_pow2 && (1u << page_shift) < page_size)
            ++page_shift;
        const float sm_scale = info->sm_scale, soft_cap = info->soft_cap;
        /* Scores are kept in log2 units; the key factor goes into the query, the value factor
         * into the output. */
        q_factor = logit_factor(sm_scale, kv_factor<KVDT>(info->k_scale), softcap, soft_cap);
        cap_log2 = soft_cap * kLog2e;
        v_factor = kv_factor<KVDT>(info->v_scale);
        lse_out = reinterpret_cast<float *>(p.lse);

        k_page = p.k_stride_page * KV::bytes;
        k_slot = p.k_stride_slot * KV::bytes;
        v_page = p.v_stride_page * KV::bytes;
        v_slot = p.v_stride_slot * KV::bytes;
    }

    /* The keys [lo, hi] of the warp's range [wb, we) that a query row at position pos keeps:
     * clipped by the causal and window bounds (valid: a row of the group; rows past it keep
     * the warp's range only, so that its zero-filled tail does not count). */
    FLP_DEV void row_key_bounds(int wb, int we, int pos, bool valid, int &lo, int &hi) const {
        lo = wb;
        hi = we - 1;
        if (!valid)
            return;
        if (flags & FLP_FLAG_CAUSAL)
            hi = min(hi, pos);
        if (flags & FLP_FLAG_WINDOW) {
            const long long first_kept = static_cast<long long>(pos) - window_left;
            if (first_kept > lo)
                lo = static_cast<int>(first_kept);
        }
    }

    FLP_DEV const flp_decode_plan_info *plan_info() const {
        return reinterpret_cast<const flp_decode_plan_info *>(p.plan);
    }

    /* RoPE frequencies into shared memory (visible after the first row block's barrier). */
    FLP_DEV void load_rope_freq() const {
        if (rope) {
            const float *rope_freq =
                reinterpret_cast<const float *>(p.plan) + plan_info()->off_rope_freq;
            for (int i = tid; i < D / 2; i += NT)
                s_freq[i] = rope_freq[i];
        }
    }

    /* The work items of this block: [first_item(), end_item()). */
    FLP_DEV int first_item() const {
        return work_indptr[blockIdx.x];
    }
    FLP_DEV int end_item() const {
        return work_indptr[blockIdx.x + 1];
    }

    /* next_item: work item `item` and this warp's share of its keys (contiguous ranges). */
    FLP_DEV decode_item next_item(int item) const {
        /* The arrays are found again per item: held for the whole kernel they would take
         * registers from the key loop. */
        const flp_decode_plan_info *info = plan_info();
        const int *plan_i = reinterpret_cast<const int *>(p.plan);
        const flp_decode_item di =
            flp_decode_item_at(work_items, item, plan_i + info->off_merge_info,
                               plan_i + info->off_kv_begin, kv_len_of, info->chunk_size);
        decode_item it;
        it.b = di.request;
        it.g = di.kv_head;
        it.kv_len = kv_len_of[it.b];
        it.partial_slot = di.partial_slot;
        it.pages = kv_indices + kv_indptr[it.b];
        const long long n = di.kv_end > di.kv_begin ? di.kv_end - di.kv_begin : 0;
        it.wb = di.kv_begin + static_cast<int>(n * warp / NW);
        it.we = di.kv_begin + static_cast<int>(n * (warp + 1) / NW);
        it.k_base = reinterpret_cast<const unsigned char *>(p.k) +
                    (it.g * p.k_stride_head + d0) * KV::bytes;
        it.v_base = reinterpret_cast<const unsigned char *>(p.v) +
                    (it.g * p.v_stride_head + d0) * KV::bytes;
        it.k_pos_offset = rope ? k_rope_offset[it.b] : 0;
        it.q_pos_offset = rope ? q_rope_offset[it.b] : 0;
        return it;
    }

    /* Position and ALiBi slope of each row of the block starting at packed row rb, into shared
     * memory (rows past the group repeat the last one). */
    FLP_DEV void load_row_data(const decode_item &it, int rb) const {
        if (tid < ROWS) {
            const int j = rb + tid < nrows ? rb + tid : nrows - 1;
            const packed_row pr = unpack_row(j, group, it.g);
            s_row_pos[tid] = it.kv_len - qo_len + pr.token;
            s_row_slope[tid] = alibi ? alibi_slopes[pr.head] * kLog2e : 0.0f;
        }
    }

    /* load_q: this lane's chunk of the block's query rows (RoPE, then scaled by q_factor) and
     * the keys each row keeps. */
    FLP_DEV void load_q(const decode_item &it, int rb, query &q) const {
#pragma unroll
        for (int r = 0; r < ROWS; r++) {
            const int j = rb + r;
            if (j < nrows) {
                const packed_row pr = unpack_row(j, group, it.g);
                const long long row = static_cast<long long>(it.b) * qo_len + pr.token;
                const unsigned char *qp =
                    reinterpret_cast<const unsigned char *>(p.q) +
                    (row * p.q_stride_row + pr.head * p.q_stride_head + d0) * 2;
                float x[VEC];
                unpack8_16bit<QDT>(*reinterpret_cast<const u32x4 *>(qp), x);
                const int pos = it.kv_len - qo_len + pr.token;
                if (rope) {
                    /* The partner elements d +- D/2 are in memory: read them too. */
                    constexpr int HALF = D / 2;
                    const bool first = d0 < HALF;
                    float y[VEC];
                    unpack8_16bit<QDT>(
                        *reinterpret_cast<const u32x4 *>(qp + (first ? HALF : -HALF) * 2), y);
                    rope_half8(x, y, first, static_cast<float>(pos + it.q_pos_offset),
                               s_freq + (d0 & (HALF - 1)));
                }
#pragma unroll
                for (int i = 0; i < VEC; i++)
                    q.q[r][i] = x[i] * q_factor;
                row_key_bounds(it.wb, it.we, pos, true, q.lo[r], q.hi[r]);
            } else {
                /* A row past the group: zero query, never written. */
#pragma unroll
                for (int i = 0; i < VEC; i++)
                    q.q[r][i] = 0.0f;
                row_key_bounds(it.wb, it.we, 0, false, q.lo[r], q.hi[r]);
            }
        }
        q.lo_all = q.lo[0];
        q.hi_all = q.hi[0];
#pragma unroll
        for (int r = 1; r < ROWS; r++) {
            q.lo_all = q.lo[r] > q.lo_all ? q.lo[r] : q.lo_all;
            q.hi_all = q.hi[r] < q.hi_all ? q.hi[r] : q.hi_all;
        }
    }

    FLP_DEV static void init_state(state &st) {
#pragma unroll
        for (int r = 0; r < ROWS; r++) {
            st.m[r] = neg_inf();
            st.l[r] = 0.0f;
#pragma unroll
            for (int i = 0; i < VEC; i++)
                st.acc[r][i] = 0.0f;
        }
    }

    /* A page id as the copies take it: -1 (keys read as zeros) for an id outside the caches,
     * which only a run-time page table can hold (the plan checks the ids it is given). */
    FLP_DEV int checked_page(int id) const {
        return static_cast<unsigned long long>(static_cast<unsigned>(id)) < num_pages ? id : -1;
    }

    /* Page id (or -1 past the warp's keys) and slot of each step's token of a stage. */
    FLP_DEV void lookup_pages(const decode_item &it, ring &rg, int stage) const {
#pragma unroll
        for (int s = 0; s < STEPS; s++) {
            const int t = it.wb + (stage * STEPS + s) * TPW + grp;
            if (t < it.we) {
                const unsigned ut = static_cast<unsigned>(t);
                const unsigned pi = page_pow2 ? ut >> page_shift : ut / page_size;
                rg.sl[s] = static_cast<int>(ut - pi * page_size);
                rg.pg[s] = checked_page(__ldg(it.pages + pi));
            } else {
                rg.pg[s] = -1;
                rg.sl[s] = 0;
            }
        }
    }

    /* issue_kv_copy: queues the copies of a stage (looked up last) into a ring slot, zeros past
     * the keys, and commits one group, empty past the last stage, so that group counting stays
     * uniform. */
    FLP_DEV void issue_kv_copy(const decode_item &it, const ring &rg, int stage, int slot) const {
        if (stage < rg.nstages) {
#pragma unroll
            for (int s = 0; s < STEPS; s++) {
                const bool valid = rg.pg[s] >= 0;
                const long long page = valid ? rg.pg[s] : 0;
                const unsigned dst = static_cast<unsigned>((slot * STEPS + s) * STEP_BYTES);
                cp_async<CHUNK>(rg.k_s + dst, it.k_base + page * k_page + rg.sl[s] * k_slot, valid);
                cp_async<CHUNK>(rg.v_s + dst, it.v_base + page * v_page + rg.sl[s] * v_slot, valid);
            }
        }
        cp_async_commit();
    }

    /* The warp's ring for the row block, with the first STAGES - 1 stages in flight. */
    FLP_DEV void start_kv_ring(const decode_item &it, ring &rg) const {
        const int nsteps = it.we > it.wb ? (it.we - it.wb + TPW - 1) / TPW : 0;
        rg.nstages = (nsteps + STEPS - 1) / STEPS;
        rg.k = smem + warp * 2 * RING_BYTES + lane * CHUNK;
        rg.v = rg.k + RING_BYTES;
        rg.k_s = smem_addr(rg.k);
        rg.v_s = rg.k_s + RING_BYTES;
        lookup_pages(it, rg, 0);
#pragma unroll
        for (int s = 0; s < STAGES - 1; s++) {
            issue_kv_copy(it, rg, s, s);
            lookup_pages(it, rg, s + 1);
        }
        rg.slot_use = 0;
        rg.slot_fill = STAGES - 1;
    }

    /* load_kv: waits until this lane's copies of the stage about to be used have landed (the
     * STAGES - 2 stages issued after it may still be in flight). */
    FLP_DEV static void load_kv() {
        cp_async_wait<STAGES - 2>();
    }

    FLP_DEV static void next_slot(ring &rg) {
        rg.slot_use = rg.slot_use + 1 == STAGES ? 0 : rg.slot_use + 1;
        rg.slot_fill = rg.slot_fill + 1 == STAGES ? 0 : rg.slot_fill + 1;
    }

    /* This lane's token of step 0 of a stage (step s: + s * TPW). */
    FLP_DEV int stage_token(const decode_item &it, int stage) const {
        return it.wb + stage * STEPS * TPW + grp;
    }

    /* Rotate-half RoPE of the K chunk a lane holds; the partner elements d +- D/2 are held by
     * lane ^ (TPT/2) of the same token group. Every lane of the warp must call it (shuffles). */
    FLP_DEV void rope_k(float (&x)[VEC], int pos) const {
        constexpr int HALF = D / 2;
        float y[VEC];
#pragma unroll
        for (int i = 0; i < VEC; i++)
            y[i] = __shfl_xor_sync(kFullMask, x[i], TPT / 2);
        rope_half8(x, y, d0 < HALF, static_cast<float>(pos), s_freq + (d0 & (HALF - 1)));
    }

    /* convert_kv_tile: this lane's 8 elements of step s of a K or V stage in the ring, decoded
     * to f32 (the fp8 factor is folded elsewhere); K rotated by RoPE at position pos. */
    FLP_DEV void convert_kv_tile(const unsigned char *stage, int s, bool is_k, int pos,
                                 float (&x)[VEC]) const {
        KV::load8(stage + s * STEP_BYTES, x);
        if (is_k && rope)
            rope_k(x, pos);
    }

    /* compute_scores: q . k of every row and step's key of the stage (K converted from the
     * ring), summed over the TPT lanes of a token with xor shuffles. */
    FLP_DEV void compute_scores(const decode_item &it, const query &q, const ring &rg, int t0,
                                scores &sc) const {
        const unsigned char *k_stage = rg.k + rg.slot_use * STEPS * STEP_BYTES;
#pragma unroll
        for (int s = 0; s < STEPS; s++) {
            float kf[VEC];
            convert_kv_tile(k_stage, s, true, t0 + s * TPW + it.k_pos_offset, kf);
#pragma unroll
            for (int r = 0; r < ROWS; r++) {
                float a = q.q[r][0] * kf[0];
#pragma unroll
                for (int i = 1; i < VEC; i++)
                    a = fmaf(q.q[r][i], kf[i], a);
                sc[s][r] = a;
            }
        }
#pragma unroll
        for (int off = TPT / 2; off >= 1; off >>= 1) {
#pragma unroll
            for (int s = 0; s < STEPS; s++) {
#pragma unroll
                for (int r = 0; r < ROWS; r++)
                    sc[s][r] += __shfl_xor_sync(kFullMask, sc[s][r], off);
            }
        }
    }

    /* mask_scores: soft cap and ALiBi, then the causal, window and warp-range masks, only where
     * the stage crosses a bound: the stage's tokens are [t0 - grp, t0 - grp + STEPS * TPW) for
     * the warp. */
    FLP_DEV void mask_scores(const query &q, int t0, scores &sc) const {
        if (softcap || alibi) {
#pragma unroll
            for (int s = 0; s < STEPS; s++) {
                const int t = t0 + s * TPW;
#pragma unroll
                for (int r = 0; r < ROWS; r++) {
                    float x = sc[s][r];
                    if (softcap)
                        x = soft_cap_log2(x, cap_log2);
                    if (alibi)
                        x = alibi_bias(x, s_row_slope[r], t, s_row_pos[r]);
                    sc[s][r] = x;
                }
            }
        }
        const int stage_first = t0 - grp;
        if (stage_first < q.lo_all || stage_first + STEPS * TPW - 1 > q.hi_all) {
#pragma unroll
            for (int s = 0; s < STEPS; s++) {
                const int t = t0 + s * TPW;
#pragma unroll
                for (int r = 0; r < ROWS; r++)
                    sc[s][r] = (t < q.lo[r] || t > q.hi[r]) ? neg_inf() : sc[s][r];
            }
        }
    }

    /* softmax_update: new running max per row over the stage, rescale of l and acc (one per
     * stage), scores turned into probabilities 2^(s - m). */
    FLP_DEV static void softmax_update(state &st, scores &sc) {
#pragma unroll
        for (int r = 0; r < ROWS; r++) {
            float mx = st.m[r];
#pragma unroll
            for (int s = 0; s < STEPS; s++)
                mx = fmaxf(mx, sc[s][r]);
            const float ms = softmax_base(mx);
            const float alpha = exp2_approx(st.m[r] - ms);
            st.m[r] = mx;
            float sum = 0.0f;
#pragma unroll
            for (int s = 0; s < STEPS; s++) {
                sc[s][r] = exp2_approx(sc[s][r] - ms);
                sum += sc[s][r];
            }
            st.l[r] = fmaf(st.l[r], alpha, sum);
#pragma unroll
            for (int i = 0; i < VEC; i++)
                st.acc[r][i] *= alpha;
        }
    }

    /* accumulate_pv: acc += p * v for every step's value row of the stage (V converted from the
     * ring). */
    FLP_DEV void accumulate_pv(state &st, const scores &sc, const ring &rg) const {
        const unsigned char *v_stage = rg.v + rg.slot_use * STEPS * STEP_BYTES;
#pragma unroll
        for (int s = 0; s < STEPS; s++) {
            float vf[VEC];
            convert_kv_tile(v_stage, s, false, 0, vf);
#pragma unroll
            for (int r = 0; r < ROWS; r++) {
#pragma unroll
                for (int i = 0; i < VEC; i++)
                    st.acc[r][i] = fmaf(sc[s][r], vf[i], st.acc[r][i]);
            }
        }
    }

    /* merge_lane_groups: the TPW lane groups of the warp (each saw other tokens) merge their
     * states with an xor butterfly; afterwards every group holds the warp's state. */
    FLP_DEV static void merge_lane_groups(state &st) {
#pragma unroll
        for (int off = TPT; off < 32; off <<= 1) {
#pragma unroll
            for (int r = 0; r < ROWS; r++) {
                const float mo = __shfl_xor_sync(kFullMask, st.m[r], off);
                const float lo_other = __shfl_xor_sync(kFullMask, st.l[r], off);
                const float mx = fmaxf(st.m[r], mo);
                const float ms = softmax_base(mx);
                const float wa = exp2_approx(st.m[r] - ms);
                const float wb = exp2_approx(mo - ms);
                st.l[r] = st.l[r] * wa + lo_other * wb;
#pragma unroll
                for (int i = 0; i < VEC; i++) {
                    const float ao = __shfl_xor_sync(kFullMask, st.acc[r][i], off);
                    st.acc[r][i] = st.acc[r][i] * wa + ao * wb;
                }
                st.m[r] = mx;
            }
        }
    }

    /* The warp's state into the merge area (lane group 0 writes acc, lane 0 m and l). Call
     * between barriers: the area aliases the rings. */
    FLP_DEV void share_warp_state(const state &st) const {
        if (grp == 0) {
#pragma unroll
            for (int r = 0; r < ROWS; r++) {
                f32x4 *dst = reinterpret_cast<f32x4 *>(s_acc + (warp * ROWS + r) * D + d0);
                dst[0] = f32x4{st.acc[r][0], st.acc[r][1], st.acc[r][2], st.acc[r][3]};
                dst[1] = f32x4{st.acc[r][4], st.acc[r][5], st.acc[r][6], st.acc[r][7]};
            }
        }
        if (lane == 0) {
#pragma unroll
            for (int r = 0; r < ROWS; r++) {
                s_m[warp * ROWS + r] = st.m[r];
                s_l[warp * ROWS + r] = st.l[r];
            }
        }
    }

    /* combine_warps: the warps' states of row r, columns dd..dd+7, folded in warp order
     * (deterministic). */
    FLP_DEV void combine_warps(int r, int dd, float &mx, float &sum, float (&o)[VEC]) const {
        combine_states<NW, VEC>(s_m + r, s_l + r, ROWS, s_acc + r * D + dd, ROWS * D, mx, sum, o);
    }

    /* store_output: one row chunk per thread: combine the warps, normalise, then write out (and
     * lse), or the f32 partial state for the merge. */
    FLP_DEV void store_output(const decode_item &it, int rb) const {
        for (int u = tid; u < ROWS * TPT; u += NT) {
            const int r = u / TPT;
            const int dd = (u % TPT) * VEC;
            const int j = rb + r;
            if (j >= nrows)
                continue;
            float o[VEC], mx, sum;
            combine_warps(r, dd, mx, sum, o);
            const float scale = output_scale(sum, v_factor);
#pragma unroll
            for (int i = 0; i < VEC; i++)
                o[i] *= scale;
            const float lse = state_lse(mx, sum);
            const packed_row pr = unpack_row(j, group, it.g);
            if (it.partial_slot < 0) {
                const long long row = static_cast<long long>(it.b) * qo_len + pr.token;
                unsigned char *op = reinterpret_cast<unsigned char *>(p.o) +
                                    (row * p.o_stride_row + pr.head * p.o_stride_head + dd) * 2;
                *reinterpret_cast<u32x4 *>(op) = pack8_16bit<QDT>(o);
                if (lse_out && dd == 0)
                    lse_out[row * p.lse_stride_row + pr.head] = lse;
            } else {
                const long long prow = static_cast<long long>(it.partial_slot) * nrows + j;
                f32x4 *po = reinterpret_cast<f32x4 *>(partial_o + prow * D + dd);
                po[0] = f32x4{o[0], o[1], o[2], o[3]};
                po[1] = f32x4{o[4], o[5], o[6], o[7]};
                if (dd == 0)
                    partial_lse[prow] = lse;
            }
        }
    }
};

/* The decode kernel's body: the algorithm, stage by stage. */
template <int QDT, int KVDT, int D, int ROWS> FLP_DEV void decode_body(const flp_decode_params &p) {
    using K = decode_kernel<QDT, KVDT, D, ROWS>;
    const K kern(p); /* reads the plan, RoPE frequencies into shared memory */
    const int item_end = kern.end_item();
    for (int item = kern.first_item(); item < item_end; ++item) {
        const decode_item it = kern.next_item(item);
        /* The item's query rows (qo_len x group) in blocks of ROWS, each against all its keys. */
        for (int rb = 0; rb < kern.nrows; rb += ROWS) {
            kern.load_row_data(it, rb);
            __syncthreads(); /* row data and frequencies visible; last block's merge reads done */
            typename K::query q;
            kern.load_q(it, rb, q);
            typename K::state st;
            K::init_state(st);

            typename K::ring rg;
            kern.start_kv_ring(it, rg);
            for (int stage = 0; stage < rg.nstages; ++stage) {
                K::load_kv();
                /* Refill the slot consumed last stage (its values are already used) and look up
                 * the pages of the stage after. */
                kern.issue_kv_copy(it, rg, stage + K::STAGES - 1, rg.slot_fill);
                kern.lookup_pages(it, rg, stage + K::STAGES);
                const int t0 = kern.stage_token(it, stage);
                typename K::scores sc;
                kern.compute_scores(it, q, rg, t0, sc);
                kern.mask_scores(q, t0, sc);
                K::softmax_update(st, sc);
                kern.accumulate_pv(st, sc, rg);
                K::next_slot(rg);
            }
            cp_async_wait_all(); /* no copy may land in the ring once it is the merge area */

            K::merge_lane_groups(st);
            __syncthreads(); /* every warp is done with its ring */
            kern.share_warp_state(st);
            __syncthreads(); /* merge area complete */
            kern.store_output(it, rb);
        }
    }
}

} // namespace flp

#endif /* FLP_CUDA_DECODE_CUH */
