/* Batch prefill / append attention for Hopper (sm_90a), FlashAttention-3 style (spec:
 * core/prefill_params.h; shapes and shared memory: prefill_sm90_config.h):
 *
 * - warp specialisation: warpgroup 0 produces, warpgroups 1 and 2 consume; the producer gives
 *   its registers to the consumers (setmaxnreg);
 * - the producer's first warp walks the same work items and passes as the consumers and copies
 *   each K and V block of KN keys with the tensor memory accelerator into a ring of STAGES
 *   stages, each completing on its own "full" mbarrier (K and V apart, so S = Q K^T starts
 *   before V lands); consumers release K and V of a stage apart on their "empty" mbarriers (K
 *   once S is computed, V once P V is);
 * - a pass is 128 packed query rows (GQA: the query heads of one KV head share every K/V block);
 *   each consumer warpgroup loads its 64 rows of Q itself (16-byte loads, swizzled into shared
 *   memory) and runs S = Q K^T (wgmma, both operands in shared memory) and O += P V (wgmma, P
 *   from registers, V transposed from shared memory), with the online softmax in registers;
 * - overlap (FlashAttention-3's two schedules): a consumer warpgroup issues S_j = Q K_j^T and
 *   O += P_{j-1} V_{j-1} together and runs block j's softmax while the second product runs;
 *   the two consumer warpgroups take turns issuing their products (two named barriers passed
 *   back and forth), so that one's softmax runs under the other's products;
 * - paged K/V: the producer copies each page's rows of a block with its own TMA box (page ids
 *   read when the kernel runs), so pages never need to be contiguous; the key range of a pass is
 *   widened down to a box boundary and the extra keys masked; ids outside the caches and rows
 *   past the page list read as zeros (TMA fills out-of-range boxes with zeros). Page sizes
 *   TMA cannot box (below 8 or not a power of two): the whole producer warpgroup gathers the
 *   block's rows with 16-byte cp.async instead (produce_gather);
 * - V rows past the request's keys (the next request's rows, unused cache slots) are zeroed in
 *   shared memory before P V: their probability is 0, but 0 * NaN is not;
 * - persistent blocks: block c walks the plan's work lists c, c + gridDim.x, ... (the plan
 *   balances its lists longest first; the grid is at most one block per SM).
 *
 * - fp8 K/V (e4m3, e5m2; head_dim 64 and 128, ragged or in pages of at least 1024 bytes of a
 *   head): TMA lands the raw tiles (K and V in turn) in a ring of their own, and the producer
 *   warpgroup's three other warps widen each into the 16-bit stage the consumers read
 *   (fp8_widen.cuh: bit placement, the values over a power of two), then arrive on its full
 *   barrier; the per-tensor scales and that power of two fold into the logit and output scales.
 *   The consumers run as for 16-bit K/V.
 *
 * Variants: masks (causal, window, custom), soft cap, ALiBi, fused RoPE (Q rotated on its way
 * into shared memory, each K block rotated in place by both consumer warpgroups), sm_scale, LSE,
 * split items (partial states), 16-bit K/V of the q dtype, fp8 K/V with scales. Mixed 16-bit
 * types, fp8 at head_dim 256 and fp8 pages TMA cannot box run on the sm_80 kernel (the host does
 * not select this one for them).
 *
 * Stages (prefill90_kernel): produce_tile (producer; fp8: produce_raw, then widen_tiles in the
 * converter warps); load_q, load_row_data, rotate_k_tile,
 * issue_scores, zero_v_tail, issue_pv, mask_scores, softmax_scores, rescale_and_pack,
 * store_output (consumers; first_block and the key loop of consume run them in order). */
#ifndef FLP_CUDA_PREFILL_SM90_CUH
#define FLP_CUDA_PREFILL_SM90_CUH

#include "backend-cuda/kernels/fp8_widen.cuh"
#include "backend-cuda/kernels/merge_state.cuh"
#include "backend-cuda/kernels/prefill.cuh"
#include "backend-cuda/kernels/prefill_sm90_config.h"
#include "backend-cuda/kernels/ptx_sm90.cuh"

static_assert(sizeof(flp_prefill90_params) == FLP_PREFILL90_PARAMS_BYTES, "flp_prefill90_params");

namespace flp {

/* Registers per thread after the producer warpgroup hands its registers to the consumers.
 * setmaxnreg moves registers within the block's own allocation, 384 x 168 = 64512 (the
 * launch bound's count): 128 * 40 + 256 * 232 = 64512 and 128 * 24 + 256 * 240 = 64512.
 * Asking for more (128 * 32 + 256 * 240 = 65536) leaves the consumers' setmaxnreg.inc waiting
 * for registers that never come: the block hangs. head_dim 256's consumers hold a 64 x 256
 * output tile. */
template <int D> struct prefill90_regs {
    static constexpr int producer = D == 256 ? 24 : 40;
    static constexpr int consumer = D == 256 ? 240 : 232;
    /* the launch bound's per-thread count, rounded down to setmaxnreg's multiple of 8 */
    static constexpr int launched = 65536 / FLP_CU_PREFILL90_THREADS / 8 * 8;
    static_assert(128 * producer + 256 * consumer <= FLP_CU_PREFILL90_THREADS * launched,
                  "setmaxnreg counts exceed the block's registers");
};

/* Named barrier ids (0 is __syncthreads): one per consumer warpgroup, one for both, and the
 * two turns of the ping-pong (warpgroup wg waits on kBarTurnWg0 + wg, the other arrives). */
constexpr unsigned kBarConsumerWg0 = 1;
constexpr unsigned kBarConsumers = 3;
constexpr unsigned kBarTurnWg0 = 4;
constexpr unsigned kBarProducers = 6; /* the producer warpgroup, gathering */

/* One pass of an item: 128 packed rows [r0, r1) against keys [kb, ke); blocks of KN keys start
 * at kb_load (kb widened down to a box boundary for paged K/V). Producer and consumers compute
 * it the same way from plan memory. */
struct pass90 {
    int b, kvh, row_begin, r0, r1, slot;
    int q_start, kv_len, pos0, kv_first, num_pages_b;
    int kb, ke, kb_load, nblk;
};

/* A K/V tile's shape in shared memory as TMA fills it: atoms column blocks of atom_bytes, each
 * row_bytes a row; boxes of (atom elements x 1 head x box rows). */
struct tile_shape {
    int atoms, atom_bytes, atom_elements, row_bytes, tile_bytes;
};

template <int QDT, int KVDT, int D, bool OPTIONS> struct prefill90_kernel : prefill_flags<OPTIONS> {
    using flags = prefill_flags<OPTIONS>;
    using flags::alibi, flags::causal, flags::custom, flags::read_flags, flags::rope,
        flags::softcap, flags::window;
    static constexpr int KN = FLP_CU_PREFILL90_KN(D);
    static constexpr int STAGES = FLP_CU_PREFILL90_STAGES(D);
    static constexpr int ATOMS = D / 64; /* 64-element column blocks of a row */
    static constexpr int WG_ROWS = 64;
    static constexpr int Q_WG_BYTES = WG_ROWS * D * 2;
    static constexpr int TILE_BYTES = FLP_CU_PREFILL90_TILE_BYTES(D);
    static constexpr int ATOM_BYTES = KN * 128; /* one column block of a K/V tile */
    static constexpr int CPR = D / 8;           /* 16-byte chunks of a row */
    static_assert(D == 64 || D == 128 || D == 256, "head_dim 64, 128 or 256");
    /* fp8 K/V: the raw ring, and the warps that widen it */
    static constexpr bool FP8 = kv_traits<KVDT>::fp8;
    static_assert(FP8 || KVDT == QDT, "K/V of the q dtype, or fp8");
    static_assert(!FP8 || FLP_CU_PREFILL90_FP8_HEAD_DIM_OK(D), "fp8 K/V: head_dim 64 or 128");
    static constexpr int RAW_STAGES = FLP_CU_PREFILL90_RAW_STAGES;
    static constexpr int RAW_TILE_BYTES = FLP_CU_PREFILL90_RAW_TILE_BYTES(D);
    static constexpr int RAW_CHUNKS = RAW_TILE_BYTES / 16; /* 16-byte chunks of a raw tile */
    static constexpr int WIDEN_WARPS = 3;                  /* warps 1-3 of the producer warpgroup */
    /* a 16-bit stage: 64-element column blocks of 128-byte rows; a raw fp8 tile: whole rows */
    FLP_DEV static constexpr tile_shape wide_tile() {
        return tile_shape{ATOMS, ATOM_BYTES, 64, 128, TILE_BYTES};
    }
    FLP_DEV static constexpr tile_shape raw_tile() {
        return tile_shape{1, RAW_TILE_BYTES, D, D, RAW_TILE_BYTES};
    }
    static_assert(FLP_CU_PREFILL90_ROWS == 2 * WG_ROWS, "two consumer warpgroups per pass");

    using state_acc = float[D / 2]; /* O of the thread's 2 rows, wgmma layout */
    using scores = float[KN / 2];   /* S of the thread's 2 rows */

    const flp_prefill90_params &P;
    const flp_prefill_params &p;
    const flp_prefill_plan_info *info;
    unsigned smem_base; /* shared address, 1024-aligned */
    unsigned char *smem;

    bool paged;  /* paged K/V through 4-D tensor maps */
    bool gather; /* paged K/V gathered with cp.async */
    /* Plain logits are scaled inside the exponent (one FFMA per score): exp_scale = s_factor
     * then, 1 where mask_scores has scaled them already. */
    bool scale_in_exponent;
    float s_factor, cap_log2, exp_scale;
    float v_factor; /* what P V is multiplied by: fp8's value scale and widening factor */

    FLP_DEV explicit prefill90_kernel(const flp_prefill90_params &params)
        : P(params), p(params.base) {
        const unsigned raw = smem_addr(dynamic_smem);
        const unsigned pad = (1024u - (raw & 1023u)) & 1023u;
        smem_base = raw + pad;
        smem = reinterpret_cast<unsigned char *>(dynamic_smem) + pad;
        info = reinterpret_cast<const flp_prefill_plan_info *>(p.plan);
        read_flags(info->flags);
        paged = P.kv_map_kind == FLP_CU_KV_MAP_PAGED;
        gather = P.kv_map_kind == FLP_CU_KV_MAP_GATHER;
        const float soft_cap = info->soft_cap;
        s_factor = logit_factor(info->sm_scale, kv_factor<KVDT>(info->k_scale), softcap, soft_cap);
        v_factor = kv_factor<KVDT>(info->v_scale);
        cap_log2 = soft_cap * kLog2e;
        scale_in_exponent = !softcap && !alibi;
        /* at least the smallest normal: a zero scale (never after validation) would make
         * -inf * 0 = NaN of a masked score */
        exp_scale = scale_in_exponent ? fmaxf(s_factor, 1.17549435e-38f) : 1.0f;
    }

    /* ---- shared memory ----------------------------------------------------------------- */
    FLP_DEV unsigned q_addr(int wg) const {
        return smem_base + static_cast<unsigned>(wg * Q_WG_BYTES);
    }
    FLP_DEV unsigned k_addr(int s) const {
        return smem_base + static_cast<unsigned>(2 * Q_WG_BYTES + s * TILE_BYTES);
    }
    FLP_DEV unsigned v_addr(int s) const {
        return k_addr(STAGES) + static_cast<unsigned>(s * TILE_BYTES);
    }
    FLP_DEV unsigned bar_full_k(int s) const {
        return v_addr(STAGES) + static_cast<unsigned>(8 * s);
    }
    FLP_DEV unsigned bar_full_v(int s) const {
        return bar_full_k(STAGES) + static_cast<unsigned>(8 * s);
    }
    FLP_DEV unsigned bar_empty_k(int s) const {
        return bar_full_v(STAGES) + static_cast<unsigned>(8 * s);
    }
    FLP_DEV unsigned bar_empty_v(int s) const {
        return bar_empty_k(STAGES) + static_cast<unsigned>(8 * s);
    }
    FLP_DEV float *freq() const {
        return reinterpret_cast<float *>(at(bar_empty_v(STAGES)));
    }
    FLP_DEV long long *gather_rows() const { /* 8-byte aligned: freq has D / 2 floats */
        return reinterpret_cast<long long *>(freq() + D / 2);
    }
    /* fp8: the raw ring's barriers where gathering keeps its rows (fp8 is never gathered),
     * and the ring itself. */
    FLP_DEV unsigned bar_raw_full(int r) const {
        return smem_addr(gather_rows()) + static_cast<unsigned>(8 * r);
    }
    FLP_DEV unsigned bar_raw_empty(int r) const {
        return bar_raw_full(RAW_STAGES) + static_cast<unsigned>(8 * r);
    }
    FLP_DEV unsigned raw_addr(int r) const {
        return smem_base +
               static_cast<unsigned>(FLP_CU_PREFILL90_RAW_OFFSET(D) + r * RAW_TILE_BYTES);
    }
    /* Generic pointer of a shared address. */
    FLP_DEV unsigned char *at(unsigned addr) const {
        return smem + (addr - smem_base);
    }

    /* The RoPE frequencies into shared memory (all threads; visible after the caller's block
     * barrier). */
    FLP_DEV void load_freq() const {
        if (rope) {
            const float *rope_freq = plan_f(info->off_rope_freq);
            for (int i = threadIdx.x; i < D / 2; i += FLP_CU_PREFILL90_THREADS)
                freq()[i] = rope_freq[i];
        }
    }

    /* Thread 0: the barriers; the caller syncs the block afterwards. */
    FLP_DEV void init_barriers() const {
        /* full: the producer warp's one arrival with the tile's bytes, or, gathering, one
         * arrival per producer thread once its copies land, or, fp8, one per widening warp */
        const unsigned producers = FP8 ? WIDEN_WARPS : gather ? 128u : 1u;
        for (int s = 0; s < STAGES; s++) {
            mbar_init(bar_full_k(s), producers);
            mbar_init(bar_full_v(s), producers);
            mbar_init(bar_empty_k(s), 8); /* lane 0 of each consumer warp */
            mbar_init(bar_empty_v(s), 8);
        }
        if (FP8) {
            for (int r = 0; r < RAW_STAGES; r++) {
                mbar_init(bar_raw_full(r), 1); /* TMA: the tile's bytes */
                mbar_init(bar_raw_empty(r), WIDEN_WARPS);
            }
        }
        mbar_init_fence();
    }

    /* ---- the plan ------------------------------------------------------------------------ */
    FLP_DEV const int *plan_i(unsigned off) const {
        return reinterpret_cast<const int *>(p.plan) + off;
    }
    FLP_DEV float *plan_f(unsigned off) const {
        return reinterpret_cast<float *>(p.plan) + off;
    }

    /* The pass of rows [r0, r0 + 128) of work item wi. */
    FLP_DEV pass90 make_pass(const int *wi, int r0) const {
        pass90 ps;
        const int group = info->group_size;
        ps.b = wi[FLP_PITEM_REQUEST];
        ps.kvh = wi[FLP_PITEM_KV_HEAD];
        ps.row_begin = wi[FLP_PITEM_ROW_BEGIN];
        ps.r0 = r0;
        ps.r1 = min(r0 + FLP_CU_PREFILL90_ROWS, wi[FLP_PITEM_ROW_END]);
        ps.slot = wi[FLP_PITEM_PARTIAL_SLOT];
        const int *qo_indptr = plan_i(info->off_qo_indptr);
        ps.q_start = qo_indptr[ps.b];
        const int qo_len = qo_indptr[ps.b + 1] - ps.q_start;
        ps.kv_len = plan_i(info->off_kv_len)[ps.b];
        ps.pos0 = ps.kv_len - qo_len;
        const int *kv_indptr = plan_i(info->off_kv_indptr);
        ps.kv_first = kv_indptr[ps.b];
        ps.num_pages_b = kv_indptr[ps.b + 1] - ps.kv_first;
        int kb = wi[FLP_PITEM_KV_BEGIN], ke = wi[FLP_PITEM_KV_END];
        if (causal)
            ke = min(ke, ps.pos0 + (ps.r1 - 1) / group + 1);
        if (window)
            kb = max(kb, ps.pos0 + r0 / group - info->window_left);
        ps.kb = kb;
        ps.ke = ke;
        /* paged boxes start at multiples of box_rows (a power of two) */
        ps.kb_load = paged ? (kb & ~(P.box_rows - 1)) : kb;
        ps.nblk = ke > kb ? (ke - ps.kb_load + KN - 1) / KN : 0;
        return ps;
    }

    /* Calls fn(wi, r0) for every pass of the block's work lists, in order: work item wi, first
     * row r0 (make_pass gives the pass; the consumers make it again for the output, rather
     * than hold its fields in registers through the key loop). */
    template <class F> FLP_DEV void for_each_pass(F &&fn) const {
        const int *work_indptr = plan_i(info->off_work_indptr);
        const int *items = plan_i(info->off_work_items);
        for (int list = blockIdx.x; list < info->num_ctas; list += gridDim.x) {
            const int item_end = work_indptr[list + 1];
            for (int item = work_indptr[list]; item < item_end; ++item) {
                const int *wi = items + item * FLP_PREFILL_ITEM_INTS;
                const int row_end = wi[FLP_PITEM_ROW_END];
                for (int r0 = wi[FLP_PITEM_ROW_BEGIN]; r0 < row_end; r0 += FLP_CU_PREFILL90_ROWS)
                    fn(wi, r0);
            }
        }
    }

    /* ---- producer ------------------------------------------------------------------------ */

    /* produce_tile: one tile (K or V) of key block starting at t0 into tile dst of shape sh
     * (a 16-bit stage, or fp8's raw ring) through map, completing on bar. Lane 0 arms the
     * barrier with the tile's bytes first; every box, zero-filled or not, completes its full
     * size. */
    FLP_DEV void produce_tile(const pass90 &ps, int t0, unsigned dst, const flp_tensor_map &map,
                              unsigned bar, int lane, const tile_shape sh) const {
        if (lane == 0)
            mbar_arrive_expect_tx(bar, static_cast<unsigned>(sh.tile_bytes));
        __syncwarp();
        if (!paged) {
            if (lane < sh.atoms)
                tma_load_3d(dst + lane * sh.atom_bytes, &map, bar, lane * sh.atom_elements, ps.kvh,
                            ps.kv_first + t0);
            return;
        }
        const int rows = P.box_rows;
        const int pieces = KN / rows;
        const int page_size = info->page_size;
        const int *pages = reinterpret_cast<const int *>(p.kv_indices) + ps.kv_first;
        for (int i = lane; i < pieces * sh.atoms; i += 32) {
            const int piece = i / sh.atoms, a = i - piece * sh.atoms;
            const int t = t0 + piece * rows;
            const int pi = t / page_size;
            /* past the request's pages: a page id outside the caches, read as zeros */
            const int id = pi < ps.num_pages_b ? pages[pi] : -1;
            tma_load_4d(dst + a * sh.atom_bytes + piece * rows * sh.row_bytes, &map, bar,
                        a * sh.atom_elements, ps.kvh, t - pi * page_size, id);
        }
    }

    /* produce_gather: the K or V tile of key block t0 gathered by the producer warpgroup (tid:
     * 0-127) with 16-byte cp.async: first each row's element offset (page and slot; -1 past
     * the request's pages or for an id outside the caches: zeros), then consecutive threads on
     * consecutive chunks of a row. Each thread arrives on bar once its copies have landed. */
    FLP_DEV void produce_gather(const pass90 &ps, int t0, unsigned dst, bool is_v, unsigned bar,
                                int tid) const {
        const int page_size = info->page_size;
        const int *pages = reinterpret_cast<const int *>(p.kv_indices) + ps.kv_first;
        const long long stride_page = is_v ? p.v_stride_page : p.k_stride_page;
        const long long stride_slot = is_v ? p.v_stride_slot : p.k_stride_slot;
        const long long stride_head = is_v ? p.v_stride_head : p.k_stride_head;
        long long *rows = gather_rows();
        named_barrier_sync(kBarProducers, 128); /* the last tile's offsets are read */
        for (int r = tid; r < KN; r += 128) {
            const int t = t0 + r;
            const int pi = t / page_size;
            const int id = pi < ps.num_pages_b ? pages[pi] : -1;
            rows[r] = id >= 0 && id < p.num_pages
                          ? id * stride_page + (t - pi * page_size) * stride_slot
                          : -1;
        }
        named_barrier_sync(kBarProducers, 128);
        const unsigned char *base =
            reinterpret_cast<const unsigned char *>(is_v ? p.v : p.k) + stride_head * ps.kvh * 2;
        for (int u = tid; u < KN * CPR; u += 128) {
            const int row = u / CPR, c = u - row * CPR;
            const long long off = rows[row];
            const unsigned char *src = off >= 0 ? base + (off + c * 8) * 2 : base;
            cp_async<16>(dst + chunk_offset(KN, row, c), src, off >= 0);
        }
        mbar_arrive_cp_async(bar);
    }

    /* The producer: every key block of every pass, K then V, into the ring (TMA: the first
     * warp, tid = lane; gathering: the whole warpgroup). */
    FLP_DEV void produce(int tid) const {
        const int lane = tid & 31;
        int it = 0;
        for_each_pass([&](const int *wi, int r0) {
            const pass90 ps = make_pass(wi, r0);
            for (int j = 0; j < ps.nblk; ++j, ++it) {
                const int s = it % STAGES;
                const unsigned phase = static_cast<unsigned>(it / STAGES) & 1u;
                const int t0 = ps.kb_load + j * KN;
                mbar_wait(bar_empty_k(s), phase ^ 1u);
                if (gather)
                    produce_gather(ps, t0, k_addr(s), false, bar_full_k(s), tid);
                else
                    produce_tile(ps, t0, k_addr(s), P.k_map, bar_full_k(s), lane, wide_tile());
                mbar_wait(bar_empty_v(s), phase ^ 1u);
                if (gather)
                    produce_gather(ps, t0, v_addr(s), true, bar_full_v(s), tid);
                else
                    produce_tile(ps, t0, v_addr(s), P.v_map, bar_full_v(s), lane, wide_tile());
            }
        });
    }

    /* produce_raw (fp8, the producer's first warp): every key block's K and V tiles, in turn,
     * into the raw ring, each once the widening warps have freed its slot. */
    FLP_DEV void produce_raw(int lane) const {
        int n = 0; /* raw tiles so far: K of block it is 2 it, its V 2 it + 1 */
        for_each_pass([&](const int *wi, int r0) {
            const pass90 ps = make_pass(wi, r0);
            for (int j = 0; j < ps.nblk; ++j) {
                const int t0 = ps.kb_load + j * KN;
#pragma unroll
                for (int is_v = 0; is_v < 2; ++is_v, ++n) {
                    const int r = n % RAW_STAGES;
                    mbar_wait(bar_raw_empty(r), (static_cast<unsigned>(n / RAW_STAGES) & 1u) ^ 1u);
                    produce_tile(ps, t0, raw_addr(r), is_v ? P.v_map : P.k_map, bar_raw_full(r),
                                 lane, raw_tile());
                }
            }
        });
    }

    /* widen_tile: raw tile src (fp8, [KN][D] bytes, D-byte swizzle) into the 16-bit stage
     * tile dst, by the widening warps (u: thread among them). Consecutive threads take the same
     * 16-byte chunk of consecutive rows, so that eight of them read and write eight different
     * bank groups in both swizzled layouts. */
    FLP_DEV void widen_tile(unsigned src, unsigned dst, int u) const {
        const unsigned char *raw = at(src);
        unsigned char *wide = at(dst);
#pragma unroll 2
        for (int i = u; i < RAW_CHUNKS; i += 32 * WIDEN_WARPS) {
            const int row = i % KN, c = i / KN; /* raw chunk c: elements 16c..16c+15 */
            const unsigned a = static_cast<unsigned>(row * D + c * 16);
            const u32x4 w = *reinterpret_cast<const u32x4 *>(
                raw + (a ^ ((a >> 3) & FLP_CU_PREFILL90_RAW_SWIZZLE_MASK(D))));
            u32x4 lo, hi;
            widen_fp8x4<QDT, KVDT>(w.x, lo.x, lo.y);
            widen_fp8x4<QDT, KVDT>(w.y, lo.z, lo.w);
            widen_fp8x4<QDT, KVDT>(w.z, hi.x, hi.y);
            widen_fp8x4<QDT, KVDT>(w.w, hi.z, hi.w);
            *reinterpret_cast<u32x4 *>(wide + chunk_offset(KN, row, 2 * c)) = lo;
            *reinterpret_cast<u32x4 *>(wide + chunk_offset(KN, row, 2 * c + 1)) = hi;
        }
    }

    /* widen_tiles (fp8, producer warps 1-3; u: thread among them): every raw tile, once TMA
     * has landed it and its 16-bit stage is free, widened; the stage's writes made visible to
     * wgmma (the async proxy) before the warp arrives on its full barrier and frees the raw
     * slot. */
    FLP_DEV void widen_tiles(int u) const {
        const int lane = u & 31;
        int it = 0;
        for_each_pass([&](const int *wi, int r0) {
            const int nblk = make_pass(wi, r0).nblk;
            for (int j = 0; j < nblk; ++j, ++it) {
                const int s = it % STAGES;
                const unsigned phase = static_cast<unsigned>(it / STAGES) & 1u;
#pragma unroll
                for (int is_v = 0; is_v < 2; ++is_v) {
                    const int n = 2 * it + is_v, r = n % RAW_STAGES;
                    mbar_wait(bar_raw_full(r), static_cast<unsigned>(n / RAW_STAGES) & 1u);
                    mbar_wait(is_v ? bar_empty_v(s) : bar_empty_k(s), phase ^ 1u);
                    widen_tile(raw_addr(r), is_v ? v_addr(s) : k_addr(s), u);
                    fence_proxy_async();
                    __syncwarp();
                    if (lane == 0) {
                        mbar_arrive(is_v ? bar_full_v(s) : bar_full_k(s));
                        mbar_arrive(bar_raw_empty(r));
                    }
                }
            }
        });
    }

    /* ---- consumers ----------------------------------------------------------------------- */

    /* Offset of 16-byte chunk c of row `row` in a swizzled [rows][D] tile of `rows` rows. */
    FLP_DEV static unsigned chunk_offset(int rows, int row, int c) {
        return static_cast<unsigned>((c >> 3) * (rows * 128) + row * 128 +
                                     (((c & 7) ^ (row & 7)) << 4));
    }

    /* load_q: rows [r0 + 64 wg, + 64) of the pass into warpgroup wg's Q tile (zeros past r1;
     * RoPE applied), made visible to wgmma (the async proxy). t: thread in the warpgroup. The
     * loads of Q_BATCH units go out before any is stored, so that a pass waits for one memory
     * latency, not one per unit (ncu, H100: the store waiting on its load was 6% of the warp
     * samples where a block runs one pass of 16 key blocks). */
    static constexpr int Q_UNITS = WG_ROWS * (CPR / 2) / 128; /* units per thread */
    static constexpr int Q_BATCH = Q_UNITS < 4 ? Q_UNITS : 4;
    static_assert(WG_ROWS * (CPR / 2) % 128 == 0 && Q_UNITS % Q_BATCH == 0, "Q tile units");
    FLP_DEV void load_q(const pass90 &ps, int wg, int t) const {
        const int group = info->group_size;
        const int q_pos0 = ps.pos0 + (rope ? plan_i(info->off_q_rope_offset)[ps.b] : 0);
        unsigned char *q_tile = at(q_addr(wg));
#pragma unroll
        for (int first = 0; first < Q_UNITS; first += Q_BATCH) {
            u32x4 lo[Q_BATCH], hi[Q_BATCH];
            int token[Q_BATCH];
#pragma unroll
            for (int i = 0; i < Q_BATCH; i++) {
                const int u = t + (first + i) * 128;
                const int row = u / (CPR / 2), c = u - row * (CPR / 2);
                const int pr = ps.r0 + wg * WG_ROWS + row;
                lo[i] = hi[i] = u32x4{0u, 0u, 0u, 0u};
                token[i] = -1;
                if (pr < ps.r1) {
                    const packed_row q = unpack_row(pr, group, ps.kvh);
                    const unsigned char *qp =
                        reinterpret_cast<const unsigned char *>(p.q) +
                        (static_cast<long long>(ps.q_start + q.token) * p.q_stride_row +
                         static_cast<long long>(q.head) * p.q_stride_head + c * 8) *
                            2;
                    lo[i] = *reinterpret_cast<const u32x4 *>(qp);
                    hi[i] = *reinterpret_cast<const u32x4 *>(qp + D);
                    token[i] = q.token;
                }
            }
#pragma unroll
            for (int i = 0; i < Q_BATCH; i++) {
                const int u = t + (first + i) * 128;
                const int row = u / (CPR / 2), c = u - row * (CPR / 2);
                if (rope && token[i] >= 0)
                    rope_chunks(lo[i], hi[i], q_pos0 + token[i], c);
                *reinterpret_cast<u32x4 *>(q_tile + chunk_offset(WG_ROWS, row, c)) = lo[i];
                *reinterpret_cast<u32x4 *>(q_tile + chunk_offset(WG_ROWS, row, c + CPR / 2)) =
                    hi[i];
            }
        }
        fence_proxy_async();
    }

    /* Rotate-half RoPE of chunk c (elements 8c..8c+7) and its partner c + D/16 of a row at
     * position pos. */
    FLP_DEV void rope_chunks(u32x4 &lo, u32x4 &hi, int pos, int c) const {
        float a[8], bb[8];
        unpack8_16bit<QDT>(lo, a);
        unpack8_16bit<QDT>(hi, bb);
        rope_pair8(a, bb, static_cast<float>(pos), freq() + c * 8);
        lo = pack8_16bit<QDT>(a);
        hi = pack8_16bit<QDT>(bb);
    }

    /* rotate_k_tile: RoPE of the K block in stage s in place, by both consumer warpgroups (ct:
     * thread among the 256), visible to wgmma before either uses it. */
    FLP_DEV void rotate_k_tile(const pass90 &ps, int s, int t0, int ct) const {
        const int k_off = plan_i(info->off_k_rope_offset)[ps.b];
        unsigned char *kt = at(k_addr(s));
        for (int u = ct; u < KN * (CPR / 2); u += 256) {
            const int row = u / (CPR / 2);
            const int c = u - row * (CPR / 2);
            u32x4 *plo = reinterpret_cast<u32x4 *>(kt + chunk_offset(KN, row, c));
            u32x4 *phi = reinterpret_cast<u32x4 *>(kt + chunk_offset(KN, row, c + CPR / 2));
            u32x4 lo = *plo, hi = *phi;
            rope_chunks(lo, hi, t0 + row + k_off, c);
            *plo = lo;
            *phi = hi;
        }
        fence_proxy_async();
        named_barrier_sync(kBarConsumers, 256);
    }

    /* Position and ALiBi slope (log2 units) of the thread's rows hf = 0, 1 (rows past r1
     * repeat the last one). */
    FLP_DEV void load_row_data(const pass90 &ps, int row0, int (&pos)[2], float (&slope)[2]) const {
        const int group = info->group_size;
        const float *slopes = plan_f(info->off_alibi_slopes);
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
            int pr = ps.r0 + row0 + 8 * hf;
            pr = pr < ps.r1 ? pr : ps.r1 - 1;
            const packed_row q = unpack_row(pr, group, ps.kvh);
            pos[hf] = ps.pos0 + q.token;
            slope[hf] = alibi ? slopes[q.head] * kLog2e : 0.0f;
        }
    }

    /* issue_scores: S = Q K^T of the warpgroup's 64 rows and the block in stage s, issued as
     * one group (the caller waits for it). */
    FLP_DEV void issue_scores(int wg, int s, scores &sc) const {
        /* opaque: 2 descriptors per call instead of 2 per k step held through the loop */
        uint64_t a0 = smem_desc_sw128(q_addr(wg), 16, 1024);
        uint64_t b0 = smem_desc_sw128(k_addr(s), 16, 1024);
        opaque(a0);
        opaque(b0);
        wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < D / 16; ks++) {
            const unsigned off =
                static_cast<unsigned>((ks & 3) << 5); /* 16 elements in a 128-byte row */
            const uint64_t a = smem_desc_advance(a0, (ks >> 2) * (WG_ROWS * 128) + off);
            const uint64_t b = smem_desc_advance(b0, (ks >> 2) * ATOM_BYTES + off);
            wgmma_op<QDT, KN>::ss(sc, a, b, ks > 0 ? 1 : 0);
        }
        wgmma_commit();
    }

    /* mask_scores: logits in log2 units where soft cap or ALiBi need them (otherwise the scale
     * is left to softmax_scores' exponent), then the key range, causal, window and custom
     * masks, per element only where the block crosses a boundary of the warpgroup's rows. One
     * unrolled loop per option, each behind its own flag test: a branch per element would cost
     * more than the matrix products. */
    FLP_DEV void mask_scores(const pass90 &ps, int t0, int lc, const int (&pos)[2],
                             const float (&slope)[2], int wg_pos_first, int wg_pos_last,
                             long long mask_base, scores &sc) const {
        const int window_left = info->window_left;
        bool interior = !custom && t0 >= ps.kb && t0 + KN <= ps.ke;
        if (causal)
            interior = interior && t0 + KN - 1 <= wg_pos_first;
        if (window)
            interior = interior && t0 >= wg_pos_last - window_left;
        /* key of element i of n8 tile nt: t0 + nt * 8 + 2 lc + (i & 1); row hf = i >> 1 */
        const int tl = t0 + lc * 2;
        if (!scale_in_exponent) {
#pragma unroll
            for (int e = 0; e < KN / 2; e++)
                sc[e] *= s_factor;
        }
        if (softcap) {
#pragma unroll
            for (int e = 0; e < KN / 2; e++)
                sc[e] = soft_cap_log2(sc[e], cap_log2);
        }
        if (alibi) {
#pragma unroll
            for (int e = 0; e < KN / 2; e++)
                sc[e] = alibi_bias(sc[e], slope[(e >> 1) & 1], tl + (e >> 2) * 8 + (e & 1),
                                   pos[(e >> 1) & 1]);
        }
        if (interior)
            return;
#pragma unroll
        for (int e = 0; e < KN / 2; e++) {
            const int hf = (e >> 1) & 1;
            const int t = tl + (e >> 2) * 8 + (e & 1);
            bool keep = t >= ps.kb && t < ps.ke;
            if (causal)
                keep = keep && t <= pos[hf];
            if (window)
                keep = keep && t >= pos[hf] - window_left;
            sc[e] = keep ? sc[e] : neg_inf();
        }
        if (custom) {
#pragma unroll
            for (int e = 0; e < KN / 2; e++) {
                const int hf = (e >> 1) & 1;
                const int t = tl + (e >> 2) * 8 + (e & 1);
                if (sc[e] != neg_inf() &&
                    !mask_bit(p.mask, mask_base, pos[hf] - ps.pos0, ps.kv_len, t))
                    sc[e] = neg_inf();
            }
        }
    }

    /* softmax_scores: new row maxima (over the 4 lanes of a row, in log2 units: raw maxima
     * times exp_scale, which is positive), scores turned into probabilities
     * 2^(s exp_scale - m) in place, l updated; alpha: the factor of the old state. */
    FLP_DEV void softmax_scores(scores &sc, float (&m)[2], float (&l)[2], float (&alpha)[2]) const {
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
            float mx = neg_inf();
#pragma unroll
            for (int nt = 0; nt < KN / 8; nt++)
                mx = fmaxf(mx, fmaxf(sc[nt * 4 + 2 * hf], sc[nt * 4 + 2 * hf + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(kFullMask, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(kFullMask, mx, 2));
            mx = fmaxf(m[hf], mx * exp_scale);
            const float mu = softmax_base(mx);
            alpha[hf] = exp2_approx(m[hf] - mu);
            m[hf] = mx;
            float sum = 0.0f;
#pragma unroll
            for (int nt = 0; nt < KN / 8; nt++) {
#pragma unroll
                for (int i = 2 * hf; i < 2 * hf + 2; i++) {
                    const float e = exp2_approx(fmaf(sc[nt * 4 + i], exp_scale, -mu));
                    sc[nt * 4 + i] = e;
                    sum += e;
                }
            }
            l[hf] = fmaf(l[hf], alpha[hf], sum);
        }
    }

    /* rescale_and_pack: O scaled by alpha (once the previous P V has landed in it) and the
     * probabilities packed as P's A fragments. */
    FLP_DEV static void rescale_and_pack(const scores &sc, const float (&alpha)[2], state_acc &o,
                                         unsigned (&pa)[KN / 16][4]) {
#pragma unroll
        for (int nt = 0; nt < D / 8; nt++) {
            o[nt * 4 + 0] *= alpha[0];
            o[nt * 4 + 1] *= alpha[0];
            o[nt * 4 + 2] *= alpha[1];
            o[nt * 4 + 3] *= alpha[1];
        }
#pragma unroll
        for (int kp = 0; kp < KN / 16; kp++) {
            pa[kp][0] = pack2_16bit<QDT>(sc[8 * kp + 0], sc[8 * kp + 1]);
            pa[kp][1] = pack2_16bit<QDT>(sc[8 * kp + 2], sc[8 * kp + 3]);
            pa[kp][2] = pack2_16bit<QDT>(sc[8 * kp + 4], sc[8 * kp + 5]);
            pa[kp][3] = pack2_16bit<QDT>(sc[8 * kp + 6], sc[8 * kp + 7]);
        }
    }

    /* zero_v_tail: V rows of stage s past the request's keys set to zero by both consumer
     * warpgroups (ct: thread index among the 256 consumers), visible to wgmma before either
     * uses the stage. */
    FLP_DEV void zero_v_tail(const pass90 &ps, int s, int t0, int ct) const {
        const int first = max(ps.kv_len - t0, 0); /* first row to clear */
        unsigned char *vt = at(v_addr(s));
        for (int u = first * CPR + ct; u < KN * CPR; u += 256) {
            const int row = u / CPR;
            const int c = u - row * CPR;
            *reinterpret_cast<u32x4 *>(vt + chunk_offset(KN, row, c)) = u32x4{0u, 0u, 0u, 0u};
        }
        fence_proxy_async();
        named_barrier_sync(kBarConsumers, 256);
    }

    /* issue_pv: O += P V with the block in stage s (V read N-major: column blocks of 64
     * elements ATOM_BYTES apart, groups of 8 keys 1024 bytes apart), issued as one group. */
    FLP_DEV void issue_pv(int s, const unsigned (&pa)[KN / 16][4], state_acc &o) const {
        uint64_t b0 = smem_desc_sw128(v_addr(s), ATOM_BYTES, 1024);
        opaque(b0);
        wgmma_fence();
#pragma unroll
        for (int kp = 0; kp < KN / 16; kp++) {
            const uint64_t b = smem_desc_advance(b0, kp * 16 * 128);
            wgmma_op<QDT, D>::rs(o, pa[kp], b, 1);
        }
        wgmma_commit();
    }

    FLP_DEV prefill_output<QDT, D> output(const pass90 &ps) const {
        return prefill_output<QDT, D>{p,
                                      ps.slot,
                                      ps.row_begin,
                                      info->group_size,
                                      ps.kvh,
                                      ps.q_start,
                                      plan_f(info->off_partial_o),
                                      plan_f(info->off_partial_lse),
                                      reinterpret_cast<float *>(p.lse)};
    }

    /* store_partial: the warpgroup's rows of a split item, normalised, into the item's f32
     * partial slot, through the free Q tile (16-byte stores of whole rows, where the
     * accumulator layout's own stores are 8 bytes of 8 rows each: ncu, H100, they were a fifth
     * of the warp samples where a block runs one pass of 16 key blocks). The tile holds half a
     * row of f32 per row, so two rounds of D / 2 columns; 16-byte chunk c of a row at c ^ (row
     * % 8), so that the accumulator's 8 rows x 4 lanes and a warp's 16-byte reads of whole rows
     * both meet every bank once. A warp's rows here are other warps' rows of Q; that is safe:
     * every warp waited for its share of the pass's last S = Q K^T before the turn barrier of
     * the last P V, which all four warps of the warpgroup must reach before any passes it.
     * t: thread in the warpgroup; local: its first row in the tile. */
    static constexpr int PARTIAL_COLS = D / 2;                 /* f32 columns per round */
    static constexpr int PARTIAL_CHUNKS = PARTIAL_COLS / 4;    /* 16-byte chunks per row */
    static constexpr int PARTIAL_ROW_BYTES = PARTIAL_COLS * 4; /* a row of the tile */
    static_assert(WG_ROWS * PARTIAL_ROW_BYTES == Q_WG_BYTES, "a round fills the Q tile");
    static_assert(PARTIAL_CHUNKS % 8 == 0 && WG_ROWS * PARTIAL_CHUNKS % 128 == 0,
                  "partial chunks: the swizzle stays within a row");
    FLP_DEV void store_partial(const pass90 &ps, int wg, int t, int local, int lc,
                               const state_acc &o, const float (&scale)[2],
                               unsigned char *tile) const {
        float *partial =
            plan_f(info->off_partial_o) + (static_cast<long long>(ps.slot) * FLP_PREFILL_MAX_TILE +
                                           (ps.r0 + wg * WG_ROWS - ps.row_begin)) *
                                              D;
        const int rows = min(WG_ROWS, ps.r1 - ps.r0 - wg * WG_ROWS); /* rows with a query */
#pragma unroll
        for (int round = 0; round < 2; round++) {
            if (round > 0) /* the last round's reads are done */
                named_barrier_sync(kBarConsumerWg0 + wg, 128);
#pragma unroll
            for (int hf = 0; hf < 2; hf++) {
                const int row = local + 8 * hf;
#pragma unroll
                for (int n = 0; n < D / 16; n++) {
                    const int nt = round * (D / 16) + n;
                    const int chunk = n * 2 + (lc >> 1);
                    *reinterpret_cast<f32x2 *>(tile + row * PARTIAL_ROW_BYTES +
                                               ((chunk ^ (row & 7)) << 4) + (lc & 1) * 8) =
                        f32x2{o[nt * 4 + 2 * hf] * scale[hf], o[nt * 4 + 2 * hf + 1] * scale[hf]};
                }
            }
            named_barrier_sync(kBarConsumerWg0 + wg, 128);
#pragma unroll
            for (int u = t; u < WG_ROWS * PARTIAL_CHUNKS; u += 128) {
                const int row = u / PARTIAL_CHUNKS, c = u - row * PARTIAL_CHUNKS;
                if (row < rows)
                    *reinterpret_cast<u32x4 *>(partial + row * D + round * PARTIAL_COLS + c * 4) =
                        *reinterpret_cast<const u32x4 *>(tile + row * PARTIAL_ROW_BYTES +
                                                         ((c ^ (row & 7)) << 4));
            }
        }
    }

    /* store_output: the warpgroup's rows normalised into out and lse (through its Q tile, so
     * that out gets 16-byte stores of whole rows), or the item's f32 partial slot. t: thread in
     * the warpgroup; row0: its first row in the pass. */
    FLP_DEV void store_output(const pass90 &ps, int wg, int t, int row0, int lc, const state_acc &o,
                              const float (&m)[2], float (&l)[2]) const {
        /* The thread's indices pass an empty asm, so that the compiler cannot hoist this
         * stage's addresses above the key loop (and keep them there in spilled registers). */
        asm volatile("" : "+r"(t), "+r"(row0), "+r"(lc));
        const prefill_output<QDT, D> out = output(ps);
        float scale[2];
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
            l[hf] += __shfl_xor_sync(kFullMask, l[hf], 1);
            l[hf] += __shfl_xor_sync(kFullMask, l[hf], 2);
            scale[hf] = output_scale(l[hf], v_factor);
            const int pr = ps.r0 + row0 + 8 * hf;
            if (lc == 0 && pr < ps.r1)
                out.store_lse(pr, state_lse(m[hf], l[hf]));
        }
        /* the Q tile is free: every product of the pass has completed */
        unsigned char *tile = at(q_addr(wg));
        const int local = row0 - wg * WG_ROWS;
        if (ps.slot >= 0) {
            store_partial(ps, wg, t, local, lc, o, scale, tile);
            return;
        }
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
#pragma unroll
            for (int nt = 0; nt < D / 8; nt++)
                *reinterpret_cast<unsigned *>(tile + chunk_offset(WG_ROWS, local + 8 * hf, nt) +
                                              lc * 4) =
                    pack2_16bit<QDT>(o[nt * 4 + 2 * hf] * scale[hf],
                                     o[nt * 4 + 2 * hf + 1] * scale[hf]);
        }
        named_barrier_sync(kBarConsumerWg0 + wg, 128);
        const int group = info->group_size;
        for (int u = t; u < WG_ROWS * CPR; u += 128) {
            const int row = u / CPR;
            const int c = u - row * CPR;
            const int pr = ps.r0 + wg * WG_ROWS + row;
            if (pr >= ps.r1)
                continue;
            const packed_row q = unpack_row(pr, group, ps.kvh);
            unsigned char *op = reinterpret_cast<unsigned char *>(p.o) +
                                (static_cast<long long>(ps.q_start + q.token) * p.o_stride_row +
                                 static_cast<long long>(q.head) * p.o_stride_head + c * 8) *
                                    2;
            *reinterpret_cast<u32x4 *>(op) =
                *reinterpret_cast<const u32x4 *>(tile + chunk_offset(WG_ROWS, row, c));
        }
    }

    /* The ping-pong: warpgroup wg issues its products only in its turn and then hands the
     * turn to the other (each waits on its own barrier, which the other arrives on). */
    FLP_DEV static void turn_begin(int wg) {
        named_barrier_sync(kBarTurnWg0 + static_cast<unsigned>(wg), 256);
    }
    FLP_DEV static void turn_end(int wg) {
        named_barrier_arrive(kBarTurnWg0 + static_cast<unsigned>(wg ^ 1), 256);
    }

    /* One arrival per consumer warp on an empty barrier (its count is the 8 warps). */
    FLP_DEV static void release(unsigned bar, int lane) {
        __syncwarp();
        if (lane == 0)
            mbar_arrive(bar);
    }

    /* wait_k: K of block t0 (ring position it, stage s) landed, rotated (RoPE) where asked. */
    FLP_DEV void wait_k(const pass90 &ps, int s, int it, int t0, int ct) const {
        mbar_wait(bar_full_k(s), static_cast<unsigned>(it / STAGES) & 1u);
        if (gather) /* cp.async wrote through the generic proxy; wgmma reads the async one */
            fence_proxy_async();
        if (rope) /* the same decision in both warpgroups */
            rotate_k_tile(ps, s, t0, ct);
    }

    /* first_block: S of the pass's first block (ring position it) alone, its softmax and P. */
    FLP_DEV void first_block(const pass90 &ps, int wg, int it, int lc, const int (&pos)[2],
                             const float (&slope)[2], int wg_pos_first, int wg_pos_last,
                             long long mask_base, int ct, float (&m)[2], float (&l)[2],
                             state_acc &o, unsigned (&pa)[KN / 16][4]) const {
        const int s = it % STAGES;
        wait_k(ps, s, it, ps.kb_load, ct);
        scores sc;
        turn_begin(wg);
        issue_scores(wg, s, sc);
        turn_end(wg);
        wgmma_wait<0>();
        wgmma_fence_regs(sc);
        release(bar_empty_k(s), ct & 31);
        float alpha[2];
        mask_scores(ps, ps.kb_load, lc, pos, slope, wg_pos_first, wg_pos_last, mask_base, sc);
        softmax_scores(sc, m, l, alpha);
        rescale_and_pack(sc, alpha, o, pa);
    }

    /* wait_v: V of block t0 (ring position it, stage s) landed; rows past the request
     * zeroed (the same decision in both warpgroups). */
    FLP_DEV void wait_v(const pass90 &ps, int s, int it, int t0, int ct) const {
        mbar_wait(bar_full_v(s), static_cast<unsigned>(it / STAGES) & 1u);
        if (gather)
            fence_proxy_async();
        if (t0 + KN > ps.kv_len)
            zero_v_tail(ps, s, t0, ct);
    }

    /* wait_pv: the issued P V has landed in O; P's registers are free again. */
    FLP_DEV static void wait_pv(unsigned (&pa)[KN / 16][4], state_acc &o) {
        wgmma_wait<0>();
        wgmma_fence_regs(o);
        wgmma_fence_regs(pa);
    }

    /* A consumer warpgroup (wg 0 or 1 of the consumers): every pass, its 64 rows. */
    FLP_DEV void consume(int wg) const {
        const int t = threadIdx.x - 128 * (wg + 1); /* thread in the warpgroup */
        const int warp = t >> 5, lane = t & 31;
        const int lg = lane >> 2, lc = lane & 3;
        const int row0 = wg * WG_ROWS + warp * 16 + lg; /* the thread's first row in the pass */
        const int group = info->group_size;
        const int ct = t + 128 * wg; /* thread among the 256 consumers */
        if (wg == 1)
            turn_end(wg); /* warpgroup 0 issues first */
        int it = 0;
        for_each_pass([&](const int *wi, int r0) {
            const pass90 ps = make_pass(wi, r0);
            named_barrier_sync(kBarConsumerWg0 + wg, 128); /* last pass done with the Q tile */
            load_q(ps, wg, t);
            named_barrier_sync(kBarConsumerWg0 + wg, 128); /* Q tile complete */
            int pos[2];
            float slope[2];
            load_row_data(ps, row0, pos, slope);
            /* the positions of this warpgroup's first and last rows (mask_scores' test for a
             * block inside every row's keys) */
            const int wr0 = ps.r0 + wg * WG_ROWS;
            const int wr1 = min(wr0 + WG_ROWS, ps.r1);
            const int wg_pos_first = ps.pos0 + wr0 / group;
            const int wg_pos_last = ps.pos0 + (max(wr1, wr0 + 1) - 1) / group;
            const long long mask_base =
                custom ? static_cast<long long>(plan_i(info->off_mask_indptr)[ps.b]) * 8 : 0;

            state_acc o;
#pragma unroll
            for (int i = 0; i < D / 2; i++)
                o[i] = 0.0f;
            float m[2] = {neg_inf(), neg_inf()}, l[2] = {0.0f, 0.0f};

            /* Block j: S_j issued with P_{j-1} V_{j-1}, the softmax of S_j while the latter
             * runs. Both warpgroups run every block of the pass, including one past the keys
             * of this warpgroup's rows (masked whole, P = 0): no branch around the products,
             * which ptxas would otherwise serialise, and the shared barriers and the turns
             * stay matched. */
            if (ps.nblk > 0) {
                unsigned pa[KN / 16][4];
                first_block(ps, wg, it, lc, pos, slope, wg_pos_first, wg_pos_last, mask_base, ct, m,
                            l, o, pa);
                ++it;
                for (int j = 1; j < ps.nblk; ++j, ++it) {
                    const int s = it % STAGES, sp = (it - 1) % STAGES;
                    const int t0 = ps.kb_load + j * KN;
                    wait_k(ps, s, it, t0, ct);
                    wait_v(ps, sp, it - 1, t0 - KN, ct);
                    scores sc;
                    turn_begin(wg);
                    issue_scores(wg, s, sc);
                    issue_pv(sp, pa, o);
                    turn_end(wg);
                    wgmma_wait<1>();
                    wgmma_fence_regs(sc);
                    release(bar_empty_k(s), lane);
                    float alpha[2];
                    mask_scores(ps, t0, lc, pos, slope, wg_pos_first, wg_pos_last, mask_base, sc);
                    softmax_scores(sc, m, l, alpha);
                    wait_pv(pa, o);
                    release(bar_empty_v(sp), lane);
                    rescale_and_pack(sc, alpha, o, pa);
                }
                const int sl = (it - 1) % STAGES; /* the last block's P V */
                wait_v(ps, sl, it - 1, ps.kb_load + (ps.nblk - 1) * KN, ct);
                turn_begin(wg);
                issue_pv(sl, pa, o);
                turn_end(wg);
                wait_pv(pa, o);
                release(bar_empty_v(sl), lane);
            }
            store_output(make_pass(wi, r0), wg, t, row0, lc, o, m, l);
        });
        if (wg == 0)
            turn_begin(wg); /* takes warpgroup 1's last hand-over: no arrival left pending */
    }
};

/* The sm_90a prefill kernel's roles by warpgroup. */
template <int QDT, int KVDT, int D, bool OPTIONS>
FLP_DEV void prefill90_roles(const flp_prefill90_params &params) {
    using K = prefill90_kernel<QDT, KVDT, D, OPTIONS>;
    const K kern(params);
    const int wg = threadIdx.x >> 7;
    if (threadIdx.x == 0) {
        kern.init_barriers();
        if (!kern.gather) { /* gathering, the maps are not made (zeros) */
            tma_prefetch_map(&params.k_map);
            tma_prefetch_map(&params.v_map);
        }
    }
    kern.load_freq();
    __syncthreads();
    if (wg == 0) {
        regs_release<prefill90_regs<D>::producer>();
        if constexpr (K::FP8) {
            if (threadIdx.x < 32)
                kern.produce_raw(threadIdx.x);
            else
                kern.widen_tiles(threadIdx.x - 32);
        } else if (kern.gather || threadIdx.x < 32) {
            kern.produce(threadIdx.x);
        }
    } else {
        regs_acquire<prefill90_regs<D>::consumer>();
        kern.consume(wg - 1);
    }
}

/* The sm_90a prefill kernel's body: the roles with the plan's options, or without any
 * (kOptionFlags, prefill.cuh). */
template <int QDT, int KVDT, int D>
FLP_DEV void prefill90_body(const flp_prefill90_params &params) {
    if (plan_has_options(params.base.plan))
        prefill90_roles<QDT, KVDT, D, true>(params);
    else
        prefill90_roles<QDT, KVDT, D, false>(params);
}

} // namespace flp

#endif /* FLP_CUDA_PREFILL_SM90_CUH */
