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
 * Everything a re-plan can change is read from the plan information in plan memory. */
#ifndef FLP_CUDA_PREFILL_CUH
#define FLP_CUDA_PREFILL_CUH

#include "backend-cuda/kernels/common.cuh"
#include "backend-cuda/kernels/prefill_config.h"
#include "core/prefill_params.h"

static_assert(sizeof(flp_prefill_params) == 144, "flp_prefill_params layout");
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

/* Rotate-half RoPE of the 8-element chunks lo (elements d0..d0+7 < D/2) and hi (d0 + D/2 ..)
 * at position pos. */
FLP_DEV void rope_pair8(float (&lo)[8], float (&hi)[8], float fpos, const float *freq) {
#pragma unroll
    for (int i = 0; i < 8; i++) {
        float sn, cs;
        sincos_rope(fpos * freq[i], sn, cs);
        const float a = lo[i], b = hi[i];
        lo[i] = fmaf(a, cs, -b * sn);
        hi[i] = fmaf(b, cs, a * sn);
    }
}

/* Per-pass values, kept in shared memory rather than registers: the key loop needs every
 * register for the accumulators (they are re-read after each barrier). */
struct prefill_pass {
    int b, kvh, row_begin, r0, r1, slot;
    int q_start, kv_len, pos0, kv_first;
    int kb, ke, pos_first, pos_last, k_pos_offset, pad;
    long long mask_base; /* bit index of the request's mask */
};

template <int DT>
FLP_DEV void mma_16816(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    if constexpr (DT == FLP_DT_BF16)
        mma_bf16_16816(d, a, b0, b1);
    else
        mma_f16_16816(d, a, b0, b1);
}

template <int QDT, int KVDT, int D, int T> FLP_DEV void prefill_body(const flp_prefill_params &p) {
    using KV = kv_traits<KVDT>;
    using SH = prefill_shape<D, T, FLP_CU_PREFILL_STAGED(QDT, KVDT)>;
    constexpr int WM = SH::WM, MT = SH::MT, WN = SH::WN, KN = SH::KN, KW = SH::KW;
    constexpr int NT = SH::THREADS;
    constexpr bool STAGED = FLP_CU_PREFILL_STAGED(QDT, KVDT);
    constexpr int CPR = D / 8;                   /* 16-byte chunks of a compute-type row */
    constexpr int TILE_BYTES = KN * D * 2;       /* one compute-type K or V tile */
    constexpr int RAW_ROW_BYTES = D * KV::bytes; /* a staged row in the KV dtype */
    constexpr int RAW_CPR = RAW_ROW_BYTES / 16;  /* its 16-byte chunks */
    constexpr int RAW_TILE_BYTES = KN * RAW_ROW_BYTES;
    constexpr int Q_BYTES = FLP_CU_PREFILL_Q_BYTES(D, T);
    constexpr int REGION_BYTES = FLP_CU_PREFILL_REGION_BYTES(D, T, KV::bytes, STAGED);
    constexpr int LOAD_CPR = STAGED ? RAW_CPR : CPR; /* chunks copied per key row and tensor */
    static_assert(D == 64 || D == 128 || D == 256, "head_dim 64, 128 or 256");
    static_assert(STAGED || KV::bytes == 2, "direct K/V are 16-bit");
    static_assert(WN == 1 || FLP_CU_PREFILL_MERGE_BYTES(D, T) <= REGION_BYTES, "merge area");
    static_assert(sizeof(prefill_pass) <= FLP_CU_PREFILL_PASS_BYTES, "pass values");

    unsigned char *smem = reinterpret_cast<unsigned char *>(dynamic_smem);
    unsigned char *s_q = smem;                                                /* [T][D] */
    unsigned char *s_region = smem + Q_BYTES;                                 /* K/V stages */
    float *s_freq = reinterpret_cast<float *>(smem + Q_BYTES + REGION_BYTES); /* [D / 2] */
    const unsigned s_q_addr = smem_addr(s_q);
    const unsigned s_region_addr = smem_addr(s_region);
    /* Compute-type K and V tiles of stage s (staged kernels: one pair after the raw stages). */
    auto k_tile = [&](int s) -> unsigned {
        return STAGED ? static_cast<unsigned>(4 * RAW_TILE_BYTES)
                      : static_cast<unsigned>(s * 2 * TILE_BYTES);
    };
    auto v_tile = [&](int s) -> unsigned { return k_tile(s) + TILE_BYTES; };

    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int wm = warp % WM;
    const int wn = warp / WM;
    const int lg = lane >> 2; /* row of the mma fragments within 8 */
    const int lc = lane & 3;  /* column pair of the mma fragments */

    const flp_prefill_plan_info *info = reinterpret_cast<const flp_prefill_plan_info *>(p.plan);
    /* Plan arrays are addressed from p.plan (a kernel parameter) at each use, not held in
     * registers across the key loop. */
    auto plan_i = [&](unsigned off) { return reinterpret_cast<const int *>(p.plan) + off; };
    auto plan_f = [&](unsigned off) { return reinterpret_cast<float *>(p.plan) + off; };
    prefill_pass *ps = reinterpret_cast<prefill_pass *>(s_freq + D / 2);

    const unsigned flags = info->flags;
    const bool causal = (flags & FLP_FLAG_CAUSAL) != 0;
    const bool window = (flags & FLP_FLAG_WINDOW) != 0;
    const bool softcap = (flags & FLP_FLAG_SOFTCAP) != 0;
    const bool alibi = (flags & FLP_FLAG_ALIBI) != 0;
    const bool rope = (flags & FLP_FLAG_ROPE) != 0;
    const bool custom = (flags & FLP_FLAG_CUSTOM_MASK) != 0;

    /* fp8 K/V decode to raw * raw_factor * scale: the key factor goes into the logit scale,
     * the value factor into the output. Scores are in log2 units. */
    const float sm_scale = info->sm_scale, soft_cap = info->soft_cap;
    const float k_factor =
        KV::fp8 ? (info->k_scale != 0.0f ? info->k_scale : 1.0f) * KV::raw_factor : 1.0f;
    const float s_factor = softcap ? sm_scale * k_factor / soft_cap : sm_scale * k_factor * kLog2e;
    const float cap_log2 = soft_cap * kLog2e;

    if (rope) {
        const float *rope_freq = plan_f(info->off_rope_freq);
        for (int i = tid; i < D / 2; i += NT)
            s_freq[i] = rope_freq[i];
        /* visible after the first pass's barriers */
    }

    const int item_end = plan_i(info->off_work_indptr)[blockIdx.x + 1];
    for (int item = plan_i(info->off_work_indptr)[blockIdx.x]; item < item_end; ++item) {
        const int *wi = plan_i(info->off_work_items) + item * FLP_PREFILL_ITEM_INTS;
        const int row_end = wi[FLP_PITEM_ROW_END];
        for (int r0 = wi[FLP_PITEM_ROW_BEGIN]; r0 < row_end; r0 += T) {
            __syncthreads(); /* the previous pass is done with every shared tile */
            if (tid == 0) {
                const int b = wi[FLP_PITEM_REQUEST];
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
                /* Keys any row of the pass keeps. */
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
            __syncthreads(); /* pass values visible */

            {
                /* Q tile: rows past r1 are zeros (computed, never written). */
                const int group = info->group_size;
                const int kvh = ps->kvh, r1 = ps->r1, q_start = ps->q_start;
                const int q_pos0 = ps->pos0 + (rope ? plan_i(info->off_q_rope_offset)[ps->b] : 0);
                for (int u = tid; u < T * (CPR / 2); u += NT) {
                    const int row = u / (CPR / 2);
                    const int c = u - row * (CPR / 2);
                    const int pr = r0 + row;
                    u32x4 lo = {0u, 0u, 0u, 0u}, hi = {0u, 0u, 0u, 0u};
                    if (pr < r1) {
                        const int qi = pr / group;
                        const int h = kvh * group + (pr - qi * group);
                        const unsigned char *qp =
                            reinterpret_cast<const unsigned char *>(p.q) +
                            (static_cast<long long>(q_start + qi) * p.q_stride_row +
                             static_cast<long long>(h) * p.q_stride_head + c * 8) *
                                2;
                        lo = *reinterpret_cast<const u32x4 *>(qp);
                        hi = *reinterpret_cast<const u32x4 *>(qp + D);
                        if (rope) {
                            float a[8], bb[8];
                            unpack8_16bit<QDT>(lo, a);
                            unpack8_16bit<QDT>(hi, bb);
                            rope_pair8(a, bb, static_cast<float>(q_pos0 + qi), s_freq + c * 8);
                            lo = pack8_16bit<QDT>(a);
                            hi = pack8_16bit<QDT>(bb);
                        }
                    }
                    *reinterpret_cast<u32x4 *>(s_q + swz<D>(row, c)) = lo;
                    *reinterpret_cast<u32x4 *>(s_q + swz<D>(row, c + CPR / 2)) = hi;
                }
            }

            /* This thread's rows: [mt][half] = local row wm*16*MT + mt*16 + lg + 8*half. */
            int row_pos[MT][2];
            float row_slope[MT][2];
            {
                const int group = info->group_size;
                const int r1 = ps->r1, pos0 = ps->pos0, kvh = ps->kvh;
                const float *slopes = plan_f(info->off_alibi_slopes);
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
#pragma unroll
                    for (int hf = 0; hf < 2; hf++) {
                        int pr = r0 + wm * 16 * MT + mt * 16 + lg + 8 * hf;
                        pr = pr < r1 ? pr : r1 - 1;
                        const int qi = pr / group;
                        row_pos[mt][hf] = pos0 + qi;
                        row_slope[mt][hf] =
                            alibi ? slopes[kvh * group + (pr - qi * group)] * kLog2e : 0.0f;
                    }
                }
            }
            const int nblk = ps->ke > ps->kb ? (ps->ke - ps->kb + KN - 1) / KN : 0;

            /* Queues the copies of key block j into stage s (zeros past ke) and commits. */
            auto issue = [&](int j, int s) {
                const int t0 = ps->kb + j * KN;
                const int ke = ps->ke;
                const bool paged = (info->flags & FLP_FLAG_PAGED) != 0;
                const unsigned page_size = static_cast<unsigned>(info->page_size);
                const int *pages = plan_i(info->off_kv_indices) + ps->kv_first;
                const long long first_row = ps->kv_first;
                const unsigned char *k_head = reinterpret_cast<const unsigned char *>(p.k) +
                                              p.k_stride_head * ps->kvh * KV::bytes;
                const unsigned char *v_head = reinterpret_cast<const unsigned char *>(p.v) +
                                              p.v_stride_head * ps->kvh * KV::bytes;
                const unsigned k_dst =
                    s_region_addr +
                    (STAGED ? static_cast<unsigned>(s * 2 * RAW_TILE_BYTES) : k_tile(s));
                const unsigned v_dst =
                    k_dst + static_cast<unsigned>(STAGED ? RAW_TILE_BYTES : TILE_BYTES);
#pragma unroll 1
                for (int u = tid; u < KN * LOAD_CPR; u += NT) {
                    const int row = u / LOAD_CPR;
                    const int ch = u - row * LOAD_CPR;
                    const int t = t0 + row;
                    const bool valid = t < ke;
                    long long k_off = 0, v_off = 0;
                    if (valid) {
                        if (paged) {
                            const unsigned ut = static_cast<unsigned>(t);
                            const unsigned pi = ut / page_size;
                            const long long page = pages[pi];
                            const long long sl = static_cast<long long>(ut - pi * page_size);
                            k_off = page * p.k_stride_page + sl * p.k_stride_slot;
                            v_off = page * p.v_stride_page + sl * p.v_stride_slot;
                        } else {
                            const long long r = first_row + t;
                            k_off = r * p.k_stride_slot;
                            v_off = r * p.v_stride_slot;
                        }
                    }
                    const unsigned dst = STAGED
                                             ? static_cast<unsigned>(row * RAW_ROW_BYTES + ch * 16)
                                             : swz<D>(row, ch);
                    /* Invalid rows copy nothing (zeros) from a mapped address. */
                    cp_async<16>(k_dst + dst, k_head + (k_off * KV::bytes + ch * 16), valid);
                    cp_async<16>(v_dst + dst, v_head + (v_off * KV::bytes + ch * 16), valid);
                }
                cp_async_commit();
            };

            float acc[MT][D / 8][4];
            float m[MT][2], l[MT][2];
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
#pragma unroll
                for (int hf = 0; hf < 2; hf++) {
                    m[mt][hf] = neg_inf();
                    l[mt][hf] = 0.0f;
                }
#pragma unroll
                for (int nt = 0; nt < D / 8; nt++) {
#pragma unroll
                    for (int i = 0; i < 4; i++)
                        acc[mt][nt][i] = 0.0f;
                }
            }

            if (nblk > 0)
                issue(0, 0);
            for (int j = 0; j < nblk; ++j) {
                const int s = j & 1;
                cp_async_wait<0>();
                __syncthreads(); /* block j landed for everyone; block j-1 is consumed */
                const int t0 = ps->kb + j * KN;
                if constexpr (STAGED) {
                    /* Convert the staged rows into compute-type tiles (K rotated by RoPE). */
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
                        *reinterpret_cast<u32x4 *>(kt + swz<D>(row, c + CPR / 2)) =
                            pack8_16bit<QDT>(bb);
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
                    if (rope) {
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
                            rope_pair8(a, bb, static_cast<float>(t0 + row + ps->k_pos_offset),
                                       s_freq + c * 8);
                            *plo = pack8_16bit<QDT>(a);
                            *phi = pack8_16bit<QDT>(bb);
                        }
                    }
                }
                if (j + 1 < nblk)
                    issue(j + 1, s ^ 1); /* overlaps this block's math */
                if (STAGED || rope)
                    __syncthreads(); /* converted / rotated tiles visible */

                const unsigned kt_addr = s_region_addr + k_tile(s);
                const unsigned vt_addr = s_region_addr + v_tile(s);
                const int key0 = wn * KW; /* this warp's first key row in the tile */

                /* S = Q K^T for this warp's rows and keys. */
                float sc[MT][KW / 8][4];
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
                const unsigned k_lane =
                    swz<D>(key0 + ((lane >> 4) << 3) + (lane & 7), (lane >> 3) & 1);
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

                /* Logits in log2 units, masks where the block crosses a boundary. */
                const int ke = ps->ke;
                const int window_left = info->window_left;
                const bool interior = t0 + KN <= ke && (!causal || t0 + KN - 1 <= ps->pos_first) &&
                                      (!window || t0 >= ps->pos_last - window_left) && !custom;
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
#pragma unroll
                    for (int nt = 0; nt < KW / 8; nt++) {
#pragma unroll
                        for (int i = 0; i < 4; i++) {
                            const int hf = i >> 1;
                            const int t = t0 + key0 + nt * 8 + lc * 2 + (i & 1);
                            float x = softcap ? cap_log2 * tanh_fast(sc[mt][nt][i] * s_factor)
                                              : sc[mt][nt][i] * s_factor;
                            if (alibi)
                                x = fmaf(row_slope[mt][hf], static_cast<float>(t - row_pos[mt][hf]),
                                         x);
                            if (!interior) {
                                const int pos = row_pos[mt][hf];
                                bool keep = t < ke;
                                if (causal)
                                    keep = keep && t <= pos;
                                if (window)
                                    keep = keep && t >= pos - window_left;
                                if (custom && keep) {
                                    const long long bit =
                                        ps->mask_base +
                                        static_cast<long long>(pos - ps->pos0) * ps->kv_len + t;
                                    keep = (reinterpret_cast<const unsigned char *>(
                                                p.mask)[bit >> 3] >>
                                            (bit & 7)) &
                                           1;
                                }
                                x = keep ? x : neg_inf();
                            }
                            sc[mt][nt][i] = x;
                        }
                    }
                }

                /* Online softmax: new row maxima, rescale, probabilities. */
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
#pragma unroll
                    for (int hf = 0; hf < 2; hf++) {
                        float mx = m[mt][hf];
#pragma unroll
                        for (int nt = 0; nt < KW / 8; nt++)
                            mx = fmaxf(mx, fmaxf(sc[mt][nt][2 * hf], sc[mt][nt][2 * hf + 1]));
                        mx = fmaxf(mx, __shfl_xor_sync(kFullMask, mx, 1));
                        mx = fmaxf(mx, __shfl_xor_sync(kFullMask, mx, 2));
                        const float mu = mx == neg_inf() ? 0.0f : mx;
                        const float alpha = exp2_approx(m[mt][hf] - mu);
                        m[mt][hf] = mx;
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
                        l[mt][hf] = fmaf(l[mt][hf], alpha, sum);
#pragma unroll
                        for (int nt = 0; nt < D / 8; nt++) {
                            acc[mt][nt][2 * hf] *= alpha;
                            acc[mt][nt][2 * hf + 1] *= alpha;
                        }
                    }
                }

                /* O += P V: the S accumulators of keys 16kp..16kp+15 are P's A fragment. */
                const unsigned v_lane =
                    swz<D>(key0 + (((lane >> 3) & 1) << 3) + (lane & 7), lane >> 4);
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
                            mma_16816<QDT>(acc[mt][2 * dp], pa[mt], vf[0], vf[1]);
                            mma_16816<QDT>(acc[mt][2 * dp + 1], pa[mt], vf[2], vf[3]);
                        }
                    }
                }
            }

            /* Full row sums over the 4 lanes of a row. */
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
#pragma unroll
                for (int hf = 0; hf < 2; hf++) {
                    l[mt][hf] += __shfl_xor_sync(kFullMask, l[mt][hf], 1);
                    l[mt][hf] += __shfl_xor_sync(kFullMask, l[mt][hf], 2);
                }
            }

            const int slot = ps->slot, row_begin = ps->row_begin, r1 = ps->r1;
            const int group = info->group_size, kvh = ps->kvh, q_start = ps->q_start;
            float *partial_o = plan_f(info->off_partial_o);
            float *partial_lse = plan_f(info->off_partial_lse);
            float *lse_out = reinterpret_cast<float *>(p.lse);
            const float v_factor =
                KV::fp8 ? (info->v_scale != 0.0f ? info->v_scale : 1.0f) * KV::raw_factor : 1.0f;
            /* Writes one finished row pair (columns col, col+1) of packed row pr. */
            auto store_pair = [&](int pr, int col, float o0, float o1) {
                if (slot < 0) {
                    const int qi = pr / group;
                    const int h = kvh * group + (pr - qi * group);
                    unsigned char *op = reinterpret_cast<unsigned char *>(p.o) +
                                        (static_cast<long long>(q_start + qi) * p.o_stride_row +
                                         static_cast<long long>(h) * p.o_stride_head + col) *
                                            2;
                    *reinterpret_cast<unsigned *>(op) = pack2_16bit<QDT>(o0, o1);
                } else {
                    const long long prow =
                        static_cast<long long>(slot) * FLP_PREFILL_MAX_TILE + (pr - row_begin);
                    partial_o[prow * D + col] = o0;
                    partial_o[prow * D + col + 1] = o1;
                }
            };
            auto store_lse = [&](int pr, float lse) {
                if (slot < 0) {
                    if (lse_out) {
                        const int qi = pr / group;
                        const int h = kvh * group + (pr - qi * group);
                        lse_out[static_cast<long long>(q_start + qi) * p.lse_stride_row + h] = lse;
                    }
                } else {
                    partial_lse[static_cast<long long>(slot) * FLP_PREFILL_MAX_TILE +
                                (pr - row_begin)] = lse;
                }
            };

            if constexpr (WN == 1) {
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
#pragma unroll
                    for (int hf = 0; hf < 2; hf++) {
                        const int pr = r0 + wm * 16 * MT + mt * 16 + lg + 8 * hf;
                        if (pr >= r1)
                            continue;
                        const bool empty = !(l[mt][hf] > 0.0f); /* no key kept */
                        const float scale = empty ? 0.0f : v_factor / l[mt][hf];
#pragma unroll
                        for (int nt = 0; nt < D / 8; nt++)
                            store_pair(pr, nt * 8 + lc * 2, acc[mt][nt][2 * hf] * scale,
                                       acc[mt][nt][2 * hf + 1] * scale);
                        if (lc == 0)
                            store_lse(pr, empty ? neg_inf()
                                                : (m[mt][hf] + log2_approx(l[mt][hf])) * kLn2);
                    }
                }
            } else {
                /* Merge the key-split warps in warp order through shared memory. */
                float *s_acc = reinterpret_cast<float *>(s_region); /* [WN][16][D] */
                float *s_m = s_acc + WN * 16 * D;                   /* [WN][16] */
                float *s_l = s_m + WN * 16;                         /* [WN][16] */
                __syncthreads(); /* every warp is done with the K/V tiles */
#pragma unroll
                for (int hf = 0; hf < 2; hf++) {
                    const int row = lg + 8 * hf;
#pragma unroll
                    for (int nt = 0; nt < D / 8; nt++) {
                        float *dst = s_acc + (wn * 16 + row) * D + nt * 8 + lc * 2;
                        dst[0] = acc[0][nt][2 * hf];
                        dst[1] = acc[0][nt][2 * hf + 1];
                    }
                    if (lc == 0) {
                        s_m[wn * 16 + row] = m[0][hf];
                        s_l[wn * 16 + row] = l[0][hf];
                    }
                }
                __syncthreads();
                for (int u = tid; u < 16 * (D / 2); u += NT) {
                    const int row = u / (D / 2);
                    const int col = (u - row * (D / 2)) * 2;
                    const int pr = r0 + row;
                    if (pr >= r1)
                        continue;
                    float mx = neg_inf();
#pragma unroll
                    for (int w = 0; w < WN; w++)
                        mx = fmaxf(mx, s_m[w * 16 + row]);
                    float sum = 0.0f, o0 = 0.0f, o1 = 0.0f;
                    if (mx != neg_inf()) {
#pragma unroll
                        for (int w = 0; w < WN; w++) {
                            const float f = exp2_approx(s_m[w * 16 + row] - mx);
                            sum = fmaf(s_l[w * 16 + row], f, sum);
                            o0 = fmaf(s_acc[(w * 16 + row) * D + col], f, o0);
                            o1 = fmaf(s_acc[(w * 16 + row) * D + col + 1], f, o1);
                        }
                    }
                    const bool empty = !(sum > 0.0f);
                    const float scale = empty ? 0.0f : v_factor / sum;
                    store_pair(pr, col, o0 * scale, o1 * scale);
                    if (col == 0)
                        store_lse(pr, empty ? neg_inf() : (mx + log2_approx(sum)) * kLn2);
                }
            }
        }
    }
}

} // namespace flp

#endif /* FLP_CUDA_PREFILL_CUH */
