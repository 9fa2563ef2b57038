/* Batch decode over a paged KV cache on tensor cores: the same work items, plan information,
 * partial states and merge as the CUDA-core kernel (decode.cuh), with the dot products on
 * mma.sync m16n8k16. A decode row block (up to 8 query rows of one KV head) is too short to be
 * the m16 side of a tile, so the roles are turned around:
 *
 * - S^T = K Q^T: 16 keys are the M side (A, from shared memory by ldmatrix), the 8 query rows
 *   the N side (B, in registers for the whole item);
 * - O^T += V^T P^T: head dims are the M side (A: V by ldmatrix.trans), P^T the B side: the S^T
 *   accumulators (row = key) become B fragments (row = query) with one movmatrix.trans per 8
 *   keys;
 * - fp8 caches: ldmatrix moves raw bytes; a lane gets 4 consecutive elements of one key,
 *   turned into f16 pairs of the same values (exact; one cvt per pair for e4m3 from sm_89).
 *   For K the order of the head dims inside a k16 step does not matter as long as Q's
 *   fragment uses the same one (elements 4c..4c+3 of a 16-element chunk become k = 2c, 2c+1,
 *   2c+8, 2c+9). For V the dims are the M side: each 8 x 8 block of pairs is transposed with
 *   movmatrix, which puts the dims of the output rows in a known order (out_dim). The
 *   products are f16 x f16, so a bf16 query is rounded to f16 (|q| <= 65504,
 *   docs/kernels/decode.md);
 * - each warp takes a contiguous share of the item's keys and streams it through its own ring
 *   of cp.async stages (16 keys of K and V each; a __syncwarp after the wait, because ldmatrix
 *   reads the lines other lanes copied); K and V rows are stored with their 16-byte chunks
 *   swizzled so that the 8 rows of an ldmatrix hit 8 different bank groups;
 * - the online softmax runs on the accumulators (a lane holds 2 query rows x 2 keys per tile;
 *   row maxima over the 8 lanes of a row by shuffles, sums kept per lane until the end); the
 *   warps' states merge in shared memory in warp order (decode.cuh's store_output).
 * RoPE is not fused here: with RoPE on, the kernel runs decode.cuh's algorithm instead (the
 * host picks a kernel by the plan's capacities, so a re-plan may turn RoPE on under it). The
 * kernel exists for a 16-bit cache of the query dtype and for fp8 caches.
 *
 * Stages (methods of decode_mma_kernel; decode_mma_body strings them together):
 *   next_item (decode.cuh), item_keys               the item, this warp's keys and K/V bases
 *   load_row_data (decode.cuh)                      per block of 8 rows: positions, slopes
 *   start_ring                                      lookup_pages + issue_copies, STAGES - 1 deep
 *   load_q_fragments                                Q as B fragments, the rows' key bounds
 *   per stage: wait_stage, issue_copies (refill), lookup_pages (one stage ahead),
 *              compute_scores, mask_scores, softmax_update, accumulate_pv
 *   share_state, then decode.cuh's store_output     the warps' states, combined in warp order */
#ifndef FLP_CUDA_DECODE_MMA_CUH
#define FLP_CUDA_DECODE_MMA_CUH

#include "backend-cuda/kernels/decode.cuh"

namespace flp {

/* This warp's keys of an item and where its head's K and V rows start. */
struct decode_mma_item {
    int wb, we;
    const unsigned char *k_head, *v_head;
};

/* A warp's ring and the page lookups of the next stage: lane l (mod 16) holds key l's. */
struct decode_mma_ring {
    unsigned base; /* shared-window address of the warp's ring */
    int nstages, slot_use, slot_fill;
    int pg, sl; /* page id (-1 past the warp's keys) and slot of key (lane % 16) */
};

/* The bounds of the two query rows a lane holds (2c, 2c+1 with c = lane % 4) and the keys every
 * row of the block keeps. */
struct decode_mma_rows {
    int lo[2], hi[2], pos[2];
    float slope[2];
    int lo_all, hi_all;
};

template <int QDT, int KVDT, int D>
struct decode_mma_kernel : decode_kernel<QDT, KVDT, D, FLP_CU_DECODE_ROWS_LARGE> {
    using base = decode_kernel<QDT, KVDT, D, FLP_CU_DECODE_ROWS_LARGE>;
    using KV = kv_traits<KVDT>;
    static constexpr int ROWS = FLP_CU_DECODE_ROWS_LARGE; /* the N side of the mma */
    static constexpr bool FP8 = KV::fp8;
    /* The mma's input type: the query dtype on a 16-bit cache, f16 on an fp8 cache. */
    static constexpr int CDT = FP8 ? FLP_DT_F16 : QDT;
    static constexpr int KT = FLP_CU_DECODE_MMA_KEYS;
    static constexpr int ROW_BYTES = D * KV::bytes;
    static constexpr int CPR = ROW_BYTES / 16;        /* 16-byte chunks per key row */
    static constexpr int TILE_BYTES = KT * ROW_BYTES; /* the K (or V) tile of a stage */
    static constexpr int STAGE_BYTES = FLP_CU_DECODE_MMA_STAGE_BYTES(KV::bytes, D);
    static constexpr int STAGES = FLP_CU_DECODE_MMA_STAGES(KV::bytes, D);
    static constexpr int MAIN_BYTES = FLP_CU_DECODE_MMA_MAIN_BYTES(KV::bytes, D);
    static constexpr int COPIES = TILE_BYTES / (16 * 32); /* 16-byte copies per lane and tile */
    static constexpr int KSTEPS = D / 16;                 /* k16 steps of S, m16 tiles of O^T */
    static constexpr int LOADS = CPR / 2;                 /* ldmatrix.x4 per tile */
    static_assert(STAGE_BYTES == 2 * TILE_BYTES, "stage layout");
    static_assert(KT == 16, "a stage is one m16 tile of keys");
    static_assert(32 % CPR == 0 && COPIES >= 1, "copies tile the stage");
    static_assert((D / 2) * 4 + ROWS * 8 <= FLP_CU_DECODE_AUX_BYTES, "aux area size");
    static_assert(MAIN_BYTES >= base::MAIN_BYTES, "room for decode.cuh's algorithm (RoPE)");

    /* The query rows as B fragments [k step][b0, b1] (zeros past the rows) and the S^T and
     * O^T accumulators. */
    using q_frag = unsigned[KSTEPS][2];
    using o_acc = float[KSTEPS][4];

    int g, c; /* lane / 4, lane % 4: the fragment coordinates */

    FLP_DEV explicit decode_mma_kernel(const flp_decode_params &params) : base(params, MAIN_BYTES) {
        g = this->lane >> 2;
        c = this->lane & 3;
        /* K and V go through to_f16x2 (their values), not load8 (e4m3 times 2^-8): the fp8
         * factors without the raw one. */
        const flp_decode_plan_info *info = this->plan_info();
        this->q_factor = logit_factor(info->sm_scale, kv_factor_f16<KVDT>(info->k_scale),
                                      this->softcap, info->soft_cap);
        this->v_factor = kv_factor_f16<KVDT>(info->v_scale);
    }

    /* Byte offset of chunk `chunk` of key row `key` in a K or V tile: the chunk index XORed
     * with bits of the row so that 8 consecutive rows at one chunk fall in 8 bank groups. */
    FLP_DEV static unsigned tile_offset(int key, int chunk) {
        const int swz = CPR >= 8 ? (key & 7) : ((key / (8 / CPR)) & (CPR - 1));
        return static_cast<unsigned>(key * ROW_BYTES + ((chunk ^ swz) << 4));
    }

    /* The head dim that accumulator row r (0-15) of O^T tile mt holds: the natural order on a
     * 16-bit cache; on fp8, the order movmatrix leaves (see the header). */
    FLP_DEV static int out_dim(int mt, int r) {
        if constexpr (FP8)
            return 16 * mt + 4 * ((r & 7) >> 1) + (r >= 8 ? 2 : 0) + (r & 1);
        else
            return 16 * mt + r;
    }

    FLP_DEV decode_mma_item item_keys(const decode_item &it) const {
        decode_mma_item w;
        w.wb = it.wb;
        w.we = it.we;
        w.k_head = reinterpret_cast<const unsigned char *>(this->p.k) +
                   it.g * this->p.k_stride_head * KV::bytes;
        w.v_head = reinterpret_cast<const unsigned char *>(this->p.v) +
                   it.g * this->p.v_stride_head * KV::bytes;
        return w;
    }

    /* load_q_fragments: query row g of the block (packed row rb + g) as B fragments in the
     * order the K fragments use, and the bounds of rows 2c, 2c+1 (row data from shared memory,
     * after the block's barrier). */
    FLP_DEV void load_q_fragments(const decode_item &it, const decode_mma_item &w, int rb,
                                  q_frag &qf, decode_mma_rows &rows) const {
        const int j = rb + g;
        if (j < this->nrows) {
            const packed_row pr = unpack_row(j, this->group, it.g);
            const long long row = static_cast<long long>(it.b) * this->qo_len + pr.token;
            const unsigned char *qp =
                reinterpret_cast<const unsigned char *>(this->p.q) +
                (row * this->p.q_stride_row + pr.head * this->p.q_stride_head) * 2;
#pragma unroll
            for (int ks = 0; ks < KSTEPS; ks++) {
                if constexpr (FP8) {
                    /* elements 16 ks + 4c .. 4c + 3 (k = 2c, 2c+1 and 2c+8, 2c+9) */
                    const u32x2 x = *reinterpret_cast<const u32x2 *>(qp + (16 * ks + 4 * c) * 2);
                    qf[ks][0] = to_f16x2(x.x);
                    qf[ks][1] = to_f16x2(x.y);
                } else {
                    qf[ks][0] = *reinterpret_cast<const unsigned *>(qp + (16 * ks + 2 * c) * 2);
                    qf[ks][1] = *reinterpret_cast<const unsigned *>(qp + (16 * ks + 2 * c + 8) * 2);
                }
            }
        } else {
#pragma unroll
            for (int ks = 0; ks < KSTEPS; ks++)
                qf[ks][0] = qf[ks][1] = 0u;
        }
#pragma unroll
        for (int i = 0; i < 2; i++) {
            const int r = 2 * c + i;
            rows.pos[i] = this->s_row_pos[r];
            rows.slope[i] = this->s_row_slope[r];
            this->row_key_bounds(w.wb, w.we, rows.pos[i], rb + r < this->nrows, rows.lo[i],
                                 rows.hi[i]);
        }
        /* Over the 4 lanes of a key row: every row of the block. */
        int lo_all = max(rows.lo[0], rows.lo[1]), hi_all = min(rows.hi[0], rows.hi[1]);
#pragma unroll
        for (int off = 1; off <= 2; off <<= 1) {
            lo_all = max(lo_all, __shfl_xor_sync(kFullMask, lo_all, off));
            hi_all = min(hi_all, __shfl_xor_sync(kFullMask, hi_all, off));
        }
        rows.lo_all = lo_all;
        rows.hi_all = hi_all;
    }

    /* Two query elements (a 16-bit pair) as an f16 pair. */
    FLP_DEV static unsigned to_f16x2(unsigned w) {
        if constexpr (QDT == FLP_DT_F16) {
            return w;
        } else {
            float lo, hi;
            bf16x2_to_f32(w, lo, hi);
            return pack_f16x2(lo, hi);
        }
    }

    /* Page id and slot of key (lane % 16) of stage `stage` (-1 past the warp's keys). */
    FLP_DEV void lookup_pages(const decode_item &it, const decode_mma_item &w, decode_mma_ring &rg,
                              int stage) const {
        const int t = w.wb + stage * KT + (this->lane & (KT - 1));
        if (t < w.we) {
            const unsigned ut = static_cast<unsigned>(t);
            const unsigned pi = this->page_pow2 ? ut >> this->page_shift : ut / this->page_size;
            rg.sl = static_cast<int>(ut - pi * this->page_size);
            rg.pg = this->checked_page(__ldg(it.pages + pi));
        } else {
            rg.pg = -1;
            rg.sl = 0;
        }
    }

    /* issue_copies: the K and V rows of a stage (looked up last) into a ring slot, zeros past
     * the keys; commits one group, empty past the last stage, so that group counting stays
     * uniform. Every lane must call it (shuffles). */
    FLP_DEV void issue_copies(const decode_mma_item &w, const decode_mma_ring &rg, int stage,
                              int slot) const {
        if (stage < rg.nstages) {
            const int chunk = this->lane % CPR;
            const unsigned k_dst = rg.base + static_cast<unsigned>(slot * STAGE_BYTES);
            const unsigned v_dst = k_dst + TILE_BYTES;
#pragma unroll
            for (int i = 0; i < COPIES; i++) {
                const int key = this->lane / CPR + i * (32 / CPR);
                const int pg = __shfl_sync(kFullMask, rg.pg, key);
                const int sl = __shfl_sync(kFullMask, rg.sl, key);
                const bool valid = pg >= 0;
                const long long page = valid ? pg : 0;
                const unsigned off = tile_offset(key, chunk);
                cp_async<16>(k_dst + off,
                             w.k_head + page * this->k_page + sl * this->k_slot + chunk * 16,
                             valid);
                cp_async<16>(v_dst + off,
                             w.v_head + page * this->v_page + sl * this->v_slot + chunk * 16,
                             valid);
            }
        }
        cp_async_commit();
    }

    FLP_DEV void start_ring(const decode_item &it, const decode_mma_item &w,
                            decode_mma_ring &rg) const {
        rg.nstages = w.we > w.wb ? (w.we - w.wb + KT - 1) / KT : 0;
        rg.base = smem_addr(this->smem) + static_cast<unsigned>(this->warp * STAGES * STAGE_BYTES);
        lookup_pages(it, w, rg, 0);
#pragma unroll
        for (int s = 0; s < STAGES - 1; s++) {
            issue_copies(w, rg, s, s);
            lookup_pages(it, w, rg, s + 1);
        }
        rg.slot_use = 0;
        rg.slot_fill = STAGES - 1;
    }

    /* wait_stage: this lane's copies of the stage about to be used have landed, then every
     * lane's (ldmatrix reads rows other lanes copied). */
    FLP_DEV static void wait_stage() {
        cp_async_wait<STAGES - 2>();
        __syncwarp();
    }

    FLP_DEV static void next_slot(decode_mma_ring &rg) {
        rg.slot_use = rg.slot_use + 1 == STAGES ? 0 : rg.slot_use + 1;
        rg.slot_fill = rg.slot_fill + 1 == STAGES ? 0 : rg.slot_fill + 1;
    }

    /* The shared address this lane gives ldmatrix .x4 number j of a tile: matrices (keys 0-7,
     * chunk 2j), (keys 8-15, chunk 2j), (keys 0-7, chunk 2j+1), (keys 8-15, chunk 2j+1). */
    FLP_DEV unsigned k_lane_offset(int j) const {
        const int l = this->lane;
        return tile_offset((l & 7) + (l & 8), 2 * j + (l >> 4));
    }

    /* ldmatrix .x4.trans over a 16-bit V tile: matrices (keys 0-7, chunk 2j), (keys 0-7, chunk
     * 2j+1), (keys 8-15, chunk 2j), (keys 8-15, chunk 2j+1), the A fragment of O^T tile j. */
    FLP_DEV unsigned v_lane_offset(int j) const {
        const int l = this->lane;
        return tile_offset((l & 7) + ((l >> 4) << 3), 2 * j + ((l >> 3) & 1));
    }

    /* compute_scores: S^T of the stage's 16 keys and the block's 8 rows, in log2 units (and
     * scaled for the soft cap): s[0..1] key g, rows 2c, 2c+1; s[2..3] key g+8. */
    FLP_DEV void compute_scores(const decode_mma_ring &rg, const q_frag &qf, float (&s)[4]) const {
        const unsigned k_tile = rg.base + static_cast<unsigned>(rg.slot_use * STAGE_BYTES);
        /* two accumulators, even and odd k steps: two dependent mma chains of half the length */
        float s1[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        s[0] = s[1] = s[2] = s[3] = 0.0f;
#pragma unroll
        for (int j = 0; j < LOADS; j++) {
            unsigned r[4];
            ldmatrix_x4(r, k_tile + k_lane_offset(j));
            if constexpr (FP8) {
                /* chunks 2j and 2j+1 are k steps 2j and 2j+1 */
                unsigned a[4], b[4];
                KV::to_f16x2(r[0], a[0], a[2]);
                KV::to_f16x2(r[1], a[1], a[3]);
                KV::to_f16x2(r[2], b[0], b[2]);
                KV::to_f16x2(r[3], b[1], b[3]);
                mma_f16_16816(s, a, qf[2 * j][0], qf[2 * j][1]);
                mma_f16_16816(s1, b, qf[2 * j + 1][0], qf[2 * j + 1][1]);
            } else if (j % 2 == 0) {
                mma_16816<CDT>(s, r, qf[j][0], qf[j][1]);
            } else {
                mma_16816<CDT>(s1, r, qf[j][0], qf[j][1]);
            }
        }
#pragma unroll
        for (int i = 0; i < 4; i++)
            s[i] = (s[i] + s1[i]) * this->q_factor;
    }

    /* mask_scores: soft cap and ALiBi, then the causal, window and warp-range bounds, only on a
     * stage that crosses one. */
    FLP_DEV void mask_scores(const decode_mma_rows &rows, int t0, float (&s)[4]) const {
        if (this->softcap || this->alibi) {
#pragma unroll
            for (int i = 0; i < 4; i++) {
                float x = s[i];
                if (this->softcap)
                    x = soft_cap_log2(x, this->cap_log2);
                if (this->alibi)
                    x = alibi_bias(x, rows.slope[i & 1], t0 + g + (i >> 1) * 8, rows.pos[i & 1]);
                s[i] = x;
            }
        }
        if (t0 < rows.lo_all || t0 + KT - 1 > rows.hi_all) {
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int t = t0 + g + (i >> 1) * 8;
                s[i] = (t < rows.lo[i & 1] || t > rows.hi[i & 1]) ? neg_inf() : s[i];
            }
        }
    }

    /* softmax_update: the running max of rows 2c, 2c+1 over the stage (the 8 lanes of a row by
     * shuffles), the rescale of l and the accumulators, scores into probabilities 2^(s - m). */
    FLP_DEV static void softmax_update(float (&m)[2], float (&l)[2], o_acc &o, float (&s)[4]) {
#pragma unroll
        for (int i = 0; i < 2; i++) {
            float mx = fmaxf(m[i], fmaxf(s[i], s[i + 2]));
#pragma unroll
            for (int off = 4; off < 32; off <<= 1)
                mx = fmaxf(mx, __shfl_xor_sync(kFullMask, mx, off));
            const float ms = softmax_base(mx);
            const float alpha = exp2_approx(m[i] - ms);
            m[i] = mx;
            s[i] = exp2_approx(s[i] - ms);
            s[i + 2] = exp2_approx(s[i + 2] - ms);
            l[i] = fmaf(l[i], alpha, s[i] + s[i + 2]);
#pragma unroll
            for (int mt = 0; mt < KSTEPS; mt++) {
                o[mt][i] *= alpha;
                o[mt][i + 2] *= alpha;
            }
        }
    }

    /* accumulate_pv: O^T += V^T P^T over the stage's 16 keys. */
    FLP_DEV void accumulate_pv(const decode_mma_ring &rg, const float (&s)[4], o_acc &o) const {
        /* P^T as B fragments: (key g, rows 2c..2c+1) transposed into (keys 2c..2c+1, row g) */
        const unsigned b0 = movmatrix_trans(pack2_16bit<CDT>(s[0], s[1]));
        const unsigned b1 = movmatrix_trans(pack2_16bit<CDT>(s[2], s[3]));
        const unsigned v_tile =
            rg.base + static_cast<unsigned>(rg.slot_use * STAGE_BYTES + TILE_BYTES);
#pragma unroll
        for (int j = 0; j < LOADS; j++) {
            unsigned r[4];
            if constexpr (FP8) {
                /* keys g, g+8 x elements 4c..4c+3 of chunks 2j, 2j+1; each 8 x 8 block of
                 * pairs transposed gives (dims out_dim, keys 2c..2c+1) */
                ldmatrix_x4(r, v_tile + k_lane_offset(j));
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    unsigned lo0, hi0, lo1, hi1;
                    KV::to_f16x2(r[2 * h], lo0, hi0);
                    KV::to_f16x2(r[2 * h + 1], lo1, hi1);
                    const unsigned a[4] = {movmatrix_trans(lo0), movmatrix_trans(hi0),
                                           movmatrix_trans(lo1), movmatrix_trans(hi1)};
                    mma_f16_16816(o[2 * j + h], a, b0, b1);
                }
            } else {
                ldmatrix_x4_trans(r, v_tile + v_lane_offset(j));
                mma_16816<CDT>(o[j], r, b0, b1);
            }
        }
    }

    /* share_state: the warp's state into the merge area of decode.cuh ([warp][row][dim] f32, m
     * and l [warp][row]); l summed over the 8 lanes of a row first. Call between barriers: the
     * area aliases the rings. */
    FLP_DEV void share_state(const float (&m)[2], float (&l)[2], const o_acc &o) const {
#pragma unroll
        for (int i = 0; i < 2; i++) {
#pragma unroll
            for (int off = 4; off < 32; off <<= 1)
                l[i] += __shfl_xor_sync(kFullMask, l[i], off);
        }
        float *acc = this->s_acc + this->warp * ROWS * D;
#pragma unroll
        for (int mt = 0; mt < KSTEPS; mt++) {
#pragma unroll
            for (int i = 0; i < 4; i++)
                acc[(2 * c + (i & 1)) * D + out_dim(mt, g + (i >> 1) * 8)] = o[mt][i];
        }
        if (g == 0) {
#pragma unroll
            for (int i = 0; i < 2; i++) {
                this->s_m[this->warp * ROWS + 2 * c + i] = m[i];
                this->s_l[this->warp * ROWS + 2 * c + i] = l[i];
            }
        }
    }
};

/* The tensor-core decode kernel's body: the algorithm, stage by stage. */
template <int QDT, int KVDT, int D> FLP_DEV void decode_mma_body(const flp_decode_params &p) {
    using K = decode_mma_kernel<QDT, KVDT, D>;
    const K kern(p); /* reads the plan */
    if (kern.rope) {
        /* A re-plan turned RoPE on under a launch that picked this kernel: the CUDA-core
         * algorithm, in this kernel's (larger) shared memory. */
        decode_body<QDT, KVDT, D, FLP_CU_DECODE_ROWS_LARGE>(p);
        return;
    }
    const int item_end = kern.end_item();
    for (int item = kern.first_item(); item < item_end; ++item) {
        const decode_item it = kern.next_item(item);
        const decode_mma_item w = kern.item_keys(it);
        for (int rb = 0; rb < kern.nrows; rb += K::ROWS) {
            kern.load_row_data(it, rb);
            __syncthreads(); /* row data visible; the last block's merge reads done */
            /* The first stages' copies go out before the query loads, whose latency they hide. */
            decode_mma_ring rg;
            kern.start_ring(it, w, rg);
            typename K::q_frag qf;
            decode_mma_rows rows;
            kern.load_q_fragments(it, w, rb, qf, rows);
            float m[2] = {neg_inf(), neg_inf()}, l[2] = {0.0f, 0.0f};
            typename K::o_acc o;
#pragma unroll
            for (int mt = 0; mt < K::KSTEPS; mt++)
                o[mt][0] = o[mt][1] = o[mt][2] = o[mt][3] = 0.0f;

            for (int stage = 0; stage < rg.nstages; ++stage) {
                K::wait_stage();
                /* Refill the slot consumed last stage (every lane is past it: wait_stage's
                 * barrier) and look up the pages of the stage after. */
                kern.issue_copies(w, rg, stage + K::STAGES - 1, rg.slot_fill);
                kern.lookup_pages(it, w, rg, stage + K::STAGES);
                const int t0 = w.wb + stage * K::KT;
                float s[4];
                kern.compute_scores(rg, qf, s);
                kern.mask_scores(rows, t0, s);
                K::softmax_update(m, l, o, s);
                kern.accumulate_pv(rg, s, o);
                K::next_slot(rg);
            }
            cp_async_wait_all(); /* no copy may land in the ring once it is the merge area */
            __syncthreads();     /* every warp is done with its ring */
            kern.share_state(m, l, o);
            __syncthreads(); /* merge area complete */
            kern.store_output(it, rb);
        }
    }
}

} // namespace flp

#endif /* FLP_CUDA_DECODE_MMA_CUH */
