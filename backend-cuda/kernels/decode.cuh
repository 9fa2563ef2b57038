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
 * memory; the by-value parameters carry only the tensors. */
#ifndef FLP_CUDA_DECODE_CUH
#define FLP_CUDA_DECODE_CUH

#include "backend-cuda/kernels/common.cuh"
#include "core/decode_params.h"

/* The host compiles the same header as C: the layouts must agree byte for byte. */
static_assert(sizeof(flp_decode_params) == 136, "flp_decode_params layout");
static_assert(sizeof(flp_decode_plan_info) == 128, "flp_decode_plan_info layout");

namespace flp {

/* Rotate-half RoPE of the 8 elements [d0, d0 + 8) a lane holds of a D-element row at position
 * pos; the partner elements d +- D/2 are held by lane ^ (TPT/2) of the same token group.
 * Every lane of the warp must call it (shuffles). */
template <int D> FLP_DEV void rope_rotate8(float (&x)[8], int pos, const float *s_freq, int d0) {
    constexpr int HALF = D / 2;
    constexpr int TPT = D / FLP_CU_DECODE_VEC;
    float y[8];
#pragma unroll
    for (int i = 0; i < 8; i++)
        y[i] = __shfl_xor_sync(kFullMask, x[i], TPT / 2);
    const bool first = d0 < HALF;
    const float fpos = static_cast<float>(pos);
    const float *freq = s_freq + (d0 & (HALF - 1));
#pragma unroll
    for (int i = 0; i < 8; i++) {
        float sn, cs;
        sincos_rope(fpos * freq[i], sn, cs);
        /* d < D/2: x*cos - x[d+D/2]*sin; d >= D/2: x*cos + x[d-D/2]*sin */
        x[i] = fmaf(x[i], cs, (first ? -y[i] : y[i]) * sn);
    }
}

template <int QDT, int KVDT, int D, int ROWS> FLP_DEV void decode_body(const flp_decode_params &p) {
    using KV = kv_traits<KVDT>;
    constexpr int VEC = FLP_CU_DECODE_VEC;
    constexpr int TPT = D / VEC;             /* lanes per token row */
    constexpr int TPW = 32 / TPT;            /* tokens per warp step */
    constexpr int CHUNK = VEC * KV::bytes;   /* bytes a lane copies per token and tensor */
    constexpr int STEPS = ROWS == 8 ? 2 : 4; /* steps per stage (one softmax update each) */
    constexpr int STAGES = FLP_CU_DECODE_RING_STEPS / STEPS;
    constexpr int NW = FLP_CU_DECODE_WARPS;
    constexpr int NT = FLP_CU_DECODE_THREADS;
    constexpr int STEP_BYTES = 32 * CHUNK;
    constexpr int RING_BYTES = FLP_CU_DECODE_RING_STEPS * STEP_BYTES; /* per warp and tensor */
    constexpr int MAIN_BYTES =
        FLP_CU_MAX_(FLP_CU_DECODE_RING_BYTES(KV::bytes), FLP_CU_DECODE_MERGE_BYTES(D, ROWS));
    static_assert(D == 64 || D == 128 || D == 256, "head_dim 64, 128 or 256");
    static_assert(TPT * TPW == 32, "token rows tile the warp");
    static_assert(STAGES >= 2 && STAGES * STEPS == FLP_CU_DECODE_RING_STEPS, "ring shape");
    static_assert(2 * NW * RING_BYTES == FLP_CU_DECODE_RING_BYTES(KV::bytes), "ring size");
    static_assert(MAIN_BYTES % 16 == 0, "aux area alignment");
    static_assert((D / 2) * 4 + ROWS * 8 <= FLP_CU_DECODE_AUX_BYTES, "aux area size");

    unsigned char *smem = reinterpret_cast<unsigned char *>(dynamic_smem);
    /* Cross-warp merge area (aliases the rings once they are drained). */
    float *s_acc = reinterpret_cast<float *>(smem);                   /* [NW][ROWS][D] */
    float *s_m = s_acc + NW * ROWS * D;                               /* [NW][ROWS] */
    float *s_l = s_m + NW * ROWS;                                     /* [NW][ROWS] */
    float *s_freq = reinterpret_cast<float *>(smem + MAIN_BYTES);     /* [D / 2] */
    int *s_row_pos = reinterpret_cast<int *>(s_freq + D / 2);         /* [ROWS] */
    float *s_row_slope = reinterpret_cast<float *>(s_row_pos + ROWS); /* [ROWS], log2 units */

    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int grp = lane / TPT;        /* token of the step this lane works on */
    const int d0 = (lane % TPT) * VEC; /* first element of the row this lane holds */

    /* The plan's decisions live in plan memory (re-plans keep a captured launch valid); read
     * them once. Offsets are in words from the plan information. */
    const flp_decode_plan_info *info = reinterpret_cast<const flp_decode_plan_info *>(p.plan);
    const int *plan_i = reinterpret_cast<const int *>(p.plan);
    const float *plan_f = reinterpret_cast<const float *>(p.plan);
    float *plan_w = reinterpret_cast<float *>(p.plan);
    const int *kv_indptr = plan_i + info->off_kv_indptr;
    const int *kv_indices = plan_i + info->off_kv_indices;
    const int *kv_len_of = plan_i + info->off_kv_len;
    const int *q_rope_offset = plan_i + info->off_q_rope_offset;
    const int *k_rope_offset = plan_i + info->off_k_rope_offset;
    const float *alibi_slopes = plan_f + info->off_alibi_slopes;
    const int *work_indptr = plan_i + info->off_work_indptr;
    const int *work_items = plan_i + info->off_work_items;
    float *partial_o = plan_w + info->off_partial_o;
    float *partial_lse = plan_w + info->off_partial_lse;

    const unsigned flags = info->flags;
    const bool rope = (flags & FLP_FLAG_ROPE) != 0;
    const bool softcap = (flags & FLP_FLAG_SOFTCAP) != 0;
    const bool alibi = (flags & FLP_FLAG_ALIBI) != 0;
    const int window_left = info->window_left;

    if (rope) {
        const float *rope_freq = plan_f + info->off_rope_freq;
        for (int i = tid; i < D / 2; i += NT)
            s_freq[i] = rope_freq[i];
        /* visible after the first row block's barrier */
    }

    const int group = info->group_size;
    const int qo_len = info->qo_len;
    const int nrows = qo_len * group;
    const unsigned page_size = static_cast<unsigned>(info->page_size);
    /* Power-of-two pages (the usual case) map tokens to pages with a shift. */
    const bool page_pow2 = (page_size & (page_size - 1)) == 0;
    unsigned page_shift = 0;
    while (page_pow2 && (1u << page_shift) < page_size)
        ++page_shift;
    const float sm_scale = info->sm_scale, soft_cap = info->soft_cap;
    const float k_scale = info->k_scale, v_scale = info->v_scale;
    /* fp8: values decode to raw * raw_factor * scale; the key factor goes into the query, the
     * value factor into the output. */
    const float k_factor = KV::fp8 ? (k_scale != 0.0f ? k_scale : 1.0f) * KV::raw_factor : 1.0f;
    const float v_factor = KV::fp8 ? (v_scale != 0.0f ? v_scale : 1.0f) * KV::raw_factor : 1.0f;
    /* Scores are kept in log2 units: s = logit * log2(e). With the soft cap the query carries
     * sm_scale / cap and the cap (times log2 e) multiplies the tanh. */
    const float q_factor = softcap ? sm_scale * k_factor / soft_cap : sm_scale * k_factor * kLog2e;
    const float cap_log2 = soft_cap * kLog2e;
    float *lse_out = reinterpret_cast<float *>(p.lse); /* null: no lse output */

    const long long k_page = p.k_stride_page * KV::bytes, k_slot = p.k_stride_slot * KV::bytes;
    const long long v_page = p.v_stride_page * KV::bytes, v_slot = p.v_stride_slot * KV::bytes;

    const int item_end = work_indptr[blockIdx.x + 1];
    for (int item = work_indptr[blockIdx.x]; item < item_end; ++item) {
        const int *wi = work_items + item * FLP_WORK_ITEM_INTS;
        const int b = wi[FLP_WORK_REQUEST];
        const int g = wi[FLP_WORK_KV_HEAD];
        const int kv_begin = wi[FLP_WORK_KV_BEGIN];
        const int kv_end = wi[FLP_WORK_KV_END];
        const int partial_slot = wi[FLP_WORK_PARTIAL_SLOT];
        const int kv_len = kv_len_of[b];
        const int *pages = kv_indices + kv_indptr[b];
        /* This warp's keys [wb, we). */
        const long long n = kv_end > kv_begin ? kv_end - kv_begin : 0;
        const int wb = kv_begin + static_cast<int>(n * warp / NW);
        const int we = kv_begin + static_cast<int>(n * (warp + 1) / NW);
        const unsigned char *k_base =
            reinterpret_cast<const unsigned char *>(p.k) + (g * p.k_stride_head + d0) * KV::bytes;
        const unsigned char *v_base =
            reinterpret_cast<const unsigned char *>(p.v) + (g * p.v_stride_head + d0) * KV::bytes;
        const int k_pos_offset = rope ? k_rope_offset[b] : 0;
        const int q_pos_offset = rope ? q_rope_offset[b] : 0;

        for (int rb = 0; rb < nrows; rb += ROWS) {
            if (tid < ROWS) {
                const int j = rb + tid < nrows ? rb + tid : nrows - 1;
                const int qi = j / group;
                s_row_pos[tid] = kv_len - qo_len + qi;
                s_row_slope[tid] =
                    alibi ? alibi_slopes[g * group + (j - qi * group)] * kLog2e : 0.0f;
            }
            __syncthreads(); /* row data and frequencies visible; last block's merge reads done */

            /* Query rows of this block and the key range each keeps. */
            float qv[ROWS][VEC];
            int lo[ROWS], hi[ROWS];
#pragma unroll
            for (int r = 0; r < ROWS; r++) {
                const int j = rb + r;
                if (j < nrows) {
                    const int qi = j / group;
                    const int h = g * group + (j - qi * group);
                    const long long row = static_cast<long long>(b) * qo_len + qi;
                    const unsigned char *qp = reinterpret_cast<const unsigned char *>(p.q) +
                                              (row * p.q_stride_row + h * p.q_stride_head + d0) * 2;
                    float x[VEC];
                    unpack8_16bit<QDT>(*reinterpret_cast<const u32x4 *>(qp), x);
                    const int pos = kv_len - qo_len + qi;
                    if (rope) {
                        constexpr int HALF = D / 2;
                        const bool first = d0 < HALF;
                        float y[VEC];
                        unpack8_16bit<QDT>(
                            *reinterpret_cast<const u32x4 *>(qp + (first ? HALF : -HALF) * 2), y);
                        const float fpos = static_cast<float>(pos + q_pos_offset);
                        const float *freq = s_freq + (d0 & (HALF - 1));
#pragma unroll
                        for (int i = 0; i < VEC; i++) {
                            float sn, cs;
                            sincos_rope(fpos * freq[i], sn, cs);
                            x[i] = fmaf(x[i], cs, (first ? -y[i] : y[i]) * sn);
                        }
                    }
#pragma unroll
                    for (int i = 0; i < VEC; i++)
                        qv[r][i] = x[i] * q_factor;
                    lo[r] = wb;
                    hi[r] = we - 1;
                    if (flags & FLP_FLAG_CAUSAL)
                        hi[r] = min(hi[r], pos);
                    if (flags & FLP_FLAG_WINDOW) {
                        const long long first_kept = static_cast<long long>(pos) - window_left;
                        if (first_kept > lo[r])
                            lo[r] = static_cast<int>(first_kept);
                    }
                } else {
                    /* A row past the group: zero query, never written; only the warp range
                     * applies (its zero-filled tail must not count). */
#pragma unroll
                    for (int i = 0; i < VEC; i++)
                        qv[r][i] = 0.0f;
                    lo[r] = wb;
                    hi[r] = we - 1;
                }
            }
            /* Keys every row keeps: stages inside [lo_all, hi_all] need no per-key masks. */
            int lo_all = lo[0], hi_all = hi[0];
#pragma unroll
            for (int r = 1; r < ROWS; r++) {
                lo_all = lo[r] > lo_all ? lo[r] : lo_all;
                hi_all = hi[r] < hi_all ? hi[r] : hi_all;
            }

            float m[ROWS], l[ROWS], acc[ROWS][VEC];
#pragma unroll
            for (int r = 0; r < ROWS; r++) {
                m[r] = neg_inf();
                l[r] = 0.0f;
#pragma unroll
                for (int i = 0; i < VEC; i++)
                    acc[r][i] = 0.0f;
            }

            const int nsteps = we > wb ? (we - wb + TPW - 1) / TPW : 0;
            const int nstages = (nsteps + STEPS - 1) / STEPS;
            unsigned char *ring_k = smem + warp * 2 * RING_BYTES + lane * CHUNK;
            unsigned char *ring_v = ring_k + RING_BYTES;
            const unsigned ring_k_s = smem_addr(ring_k);
            const unsigned ring_v_s = ring_k_s + RING_BYTES;

            /* Page id (or -1 past the range) and slot of each step's token of a stage. */
            int pg[STEPS], sl[STEPS];
            auto lookup = [&](int stage) {
#pragma unroll
                for (int s = 0; s < STEPS; s++) {
                    const int t = wb + (stage * STEPS + s) * TPW + grp;
                    if (t < we) {
                        const unsigned ut = static_cast<unsigned>(t);
                        const unsigned pi = page_pow2 ? ut >> page_shift : ut / page_size;
                        sl[s] = static_cast<int>(ut - pi * page_size);
                        pg[s] = __ldg(pages + pi);
                    } else {
                        pg[s] = -1;
                        sl[s] = 0;
                    }
                }
            };
            /* Queues the copies of a stage (zeros past the range) and commits one group, empty
             * past the last stage, so that group counting stays uniform. */
            auto issue = [&](int stage, int slot) {
                if (stage < nstages) {
#pragma unroll
                    for (int s = 0; s < STEPS; s++) {
                        const bool valid = pg[s] >= 0;
                        const long long page = valid ? pg[s] : 0;
                        const unsigned dst = static_cast<unsigned>((slot * STEPS + s) * STEP_BYTES);
                        cp_async<CHUNK>(ring_k_s + dst, k_base + page * k_page + sl[s] * k_slot,
                                        valid);
                        cp_async<CHUNK>(ring_v_s + dst, v_base + page * v_page + sl[s] * v_slot,
                                        valid);
                    }
                }
                cp_async_commit();
            };

            lookup(0);
#pragma unroll
            for (int s = 0; s < STAGES - 1; s++) {
                issue(s, s);
                lookup(s + 1);
            }
            int slot_use = 0, slot_fill = STAGES - 1;
            for (int stage = 0; stage < nstages; ++stage) {
                cp_async_wait<STAGES - 2>(); /* this lane's copies of `stage` have landed */
                /* Refill the slot consumed last iteration (its values are already used). */
                issue(stage + STAGES - 1, slot_fill);
                lookup(stage + STAGES);

                const unsigned char *k_stage = ring_k + slot_use * STEPS * STEP_BYTES;
                const unsigned char *v_stage = ring_v + slot_use * STEPS * STEP_BYTES;
                const int t0 = wb + stage * STEPS * TPW + grp;

                float sc[STEPS][ROWS];
#pragma unroll
                for (int s = 0; s < STEPS; s++) {
                    float kf[VEC];
                    KV::load8(k_stage + s * STEP_BYTES, kf);
                    if (rope)
                        rope_rotate8<D>(kf, t0 + s * TPW + k_pos_offset, s_freq, d0);
#pragma unroll
                    for (int r = 0; r < ROWS; r++) {
                        float a = qv[r][0] * kf[0];
#pragma unroll
                        for (int i = 1; i < VEC; i++)
                            a = fmaf(qv[r][i], kf[i], a);
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
                if (softcap || alibi) {
#pragma unroll
                    for (int s = 0; s < STEPS; s++) {
                        const int t = t0 + s * TPW;
#pragma unroll
                        for (int r = 0; r < ROWS; r++) {
                            float x = sc[s][r];
                            if (softcap)
                                x = cap_log2 * tanh_fast(x);
                            if (alibi)
                                x = fmaf(s_row_slope[r], static_cast<float>(t - s_row_pos[r]), x);
                            sc[s][r] = x;
                        }
                    }
                }
                /* Masks (causal, window, the warp's range) only where a stage crosses a bound:
                 * the stage's tokens are [t0 - grp, t0 - grp + STEPS * TPW) for the warp. */
                const int stage_first = t0 - grp;
                if (stage_first < lo_all || stage_first + STEPS * TPW - 1 > hi_all) {
#pragma unroll
                    for (int s = 0; s < STEPS; s++) {
                        const int t = t0 + s * TPW;
#pragma unroll
                        for (int r = 0; r < ROWS; r++)
                            sc[s][r] = (t < lo[r] || t > hi[r]) ? neg_inf() : sc[s][r];
                    }
                }
#pragma unroll
                for (int r = 0; r < ROWS; r++) {
                    float mx = m[r];
#pragma unroll
                    for (int s = 0; s < STEPS; s++)
                        mx = fmaxf(mx, sc[s][r]);
                    const float ms = mx == neg_inf() ? 0.0f : mx; /* no key kept yet */
                    const float alpha = exp2_approx(m[r] - ms);
                    m[r] = mx;
                    float sum = 0.0f;
#pragma unroll
                    for (int s = 0; s < STEPS; s++) {
                        sc[s][r] = exp2_approx(sc[s][r] - ms);
                        sum += sc[s][r];
                    }
                    l[r] = fmaf(l[r], alpha, sum);
#pragma unroll
                    for (int i = 0; i < VEC; i++)
                        acc[r][i] *= alpha;
                }
#pragma unroll
                for (int s = 0; s < STEPS; s++) {
                    float vf[VEC];
                    KV::load8(v_stage + s * STEP_BYTES, vf);
#pragma unroll
                    for (int r = 0; r < ROWS; r++) {
#pragma unroll
                        for (int i = 0; i < VEC; i++)
                            acc[r][i] = fmaf(sc[s][r], vf[i], acc[r][i]);
                    }
                }
                slot_use = slot_use + 1 == STAGES ? 0 : slot_use + 1;
                slot_fill = slot_fill + 1 == STAGES ? 0 : slot_fill + 1;
            }
            cp_async_wait_all(); /* no copy may land in the ring once it is the merge area */

            /* Merge the lane groups of the warp (xor butterfly over the token groups). */
#pragma unroll
            for (int off = TPT; off < 32; off <<= 1) {
#pragma unroll
                for (int r = 0; r < ROWS; r++) {
                    const float mo = __shfl_xor_sync(kFullMask, m[r], off);
                    const float lo_other = __shfl_xor_sync(kFullMask, l[r], off);
                    const float mx = fmaxf(m[r], mo);
                    const float ms = mx == neg_inf() ? 0.0f : mx;
                    const float wa = exp2_approx(m[r] - ms);
                    const float wb_ = exp2_approx(mo - ms);
                    l[r] = l[r] * wa + lo_other * wb_;
#pragma unroll
                    for (int i = 0; i < VEC; i++) {
                        const float ao = __shfl_xor_sync(kFullMask, acc[r][i], off);
                        acc[r][i] = acc[r][i] * wa + ao * wb_;
                    }
                    m[r] = mx;
                }
            }

            __syncthreads(); /* every warp is done with its ring */
            if (grp == 0) {
#pragma unroll
                for (int r = 0; r < ROWS; r++) {
                    f32x4 *dst = reinterpret_cast<f32x4 *>(s_acc + (warp * ROWS + r) * D + d0);
                    dst[0] = f32x4{acc[r][0], acc[r][1], acc[r][2], acc[r][3]};
                    dst[1] = f32x4{acc[r][4], acc[r][5], acc[r][6], acc[r][7]};
                }
            }
            if (lane == 0) {
#pragma unroll
                for (int r = 0; r < ROWS; r++) {
                    s_m[warp * ROWS + r] = m[r];
                    s_l[warp * ROWS + r] = l[r];
                }
            }
            __syncthreads(); /* merge area complete */

            /* Combine the warps (in warp order) and write one row chunk per thread. */
            for (int u = tid; u < ROWS * TPT; u += NT) {
                const int r = u / TPT;
                const int dd = (u % TPT) * VEC;
                const int j = rb + r;
                if (j >= nrows)
                    continue;
                float mw[NW];
                float mx = neg_inf();
#pragma unroll
                for (int w = 0; w < NW; w++) {
                    mw[w] = s_m[w * ROWS + r];
                    mx = fmaxf(mx, mw[w]);
                }
                float o[VEC];
#pragma unroll
                for (int i = 0; i < VEC; i++)
                    o[i] = 0.0f;
                float sum = 0.0f;
                if (mx != neg_inf()) {
#pragma unroll
                    for (int w = 0; w < NW; w++) {
                        const float f = exp2_approx(mw[w] - mx);
                        sum = fmaf(s_l[w * ROWS + r], f, sum);
                        const f32x4 *src =
                            reinterpret_cast<const f32x4 *>(s_acc + (w * ROWS + r) * D + dd);
                        const f32x4 a = src[0], c = src[1];
                        o[0] = fmaf(a.x, f, o[0]);
                        o[1] = fmaf(a.y, f, o[1]);
                        o[2] = fmaf(a.z, f, o[2]);
                        o[3] = fmaf(a.w, f, o[3]);
                        o[4] = fmaf(c.x, f, o[4]);
                        o[5] = fmaf(c.y, f, o[5]);
                        o[6] = fmaf(c.z, f, o[6]);
                        o[7] = fmaf(c.w, f, o[7]);
                    }
                }
                const bool empty = !(sum > 0.0f); /* no key kept: out 0, lse -inf */
                const float scale = empty ? 0.0f : v_factor / sum;
#pragma unroll
                for (int i = 0; i < VEC; i++)
                    o[i] *= scale;
                const float lse = empty ? neg_inf() : (mx + log2_approx(sum)) * kLn2;
                const int qi = j / group;
                const int h = g * group + (j - qi * group);
                if (partial_slot < 0) {
                    const long long row = static_cast<long long>(b) * qo_len + qi;
                    unsigned char *op = reinterpret_cast<unsigned char *>(p.o) +
                                        (row * p.o_stride_row + h * p.o_stride_head + dd) * 2;
                    *reinterpret_cast<u32x4 *>(op) = pack8_16bit<QDT>(o);
                    if (lse_out && dd == 0)
                        lse_out[row * p.lse_stride_row + h] = lse;
                } else {
                    const long long prow = static_cast<long long>(partial_slot) * nrows + j;
                    f32x4 *po = reinterpret_cast<f32x4 *>(partial_o + prow * D + dd);
                    po[0] = f32x4{o[0], o[1], o[2], o[3]};
                    po[1] = f32x4{o[4], o[5], o[6], o[7]};
                    if (dd == 0)
                        partial_lse[prow] = lse;
                }
            }
        }
    }
}

} // namespace flp

#endif /* FLP_CUDA_DECODE_CUH */
