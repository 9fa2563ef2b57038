/* The Hopper (sm_90a) instructions of the sm_90a prefill kernel (prefill_sm90.cuh): mbarriers,
 * the tensor memory accelerator (TMA), warpgroup matrix products (wgmma), register reallocation
 * and named barriers. Compiled only where __CUDA_ARCH_FEAT_SM90_ALL is defined (sm_90a); the
 * CPU emulator never sees this file (it runs the sm_80 kernels). */
#ifndef FLP_CUDA_PTX_SM90_CUH
#define FLP_CUDA_PTX_SM90_CUH

#include "backend-cuda/kernels/ptx.cuh"
#include "core/decode_params.h" /* fixed-width types under nvcc and NVRTC, dtype codes */

namespace flp {

/* ---- mbarriers (shared-memory transaction barriers) ------------------------------------- */

FLP_DEV void mbar_init(unsigned bar, unsigned count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}

/* Makes barrier initialisation visible to the async proxy (TMA completes on the barriers). */
FLP_DEV void mbar_init_fence() {
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}

/* One arrival that also expects `bytes` more of transactions (the TMA copies that complete on
 * the barrier) in the current phase. */
FLP_DEV void mbar_arrive_expect_tx(unsigned bar, unsigned bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
                 : "memory");
}

/* An arrival on bar once every cp.async this thread issued before has completed (noinc: the
 * barrier's count includes these arrivals). */
FLP_DEV void mbar_arrive_cp_async(unsigned bar) {
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}

FLP_DEV void mbar_arrive(unsigned bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}

/* Waits until the phase of parity `parity` has completed (a fresh barrier counts its phase
 * "parity 1" as complete, so producers start waiting on parity 1 of their empty barriers). */
FLP_DEV void mbar_wait(unsigned bar, unsigned parity) {
    asm volatile("{\n.reg .pred done;\n"
                 "FLP_MBAR_WAIT:\n"
                 "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
                 "@!done bra FLP_MBAR_WAIT;\n}\n" ::"r"(bar),
                 "r"(parity)
                 : "memory");
}

/* ---- tensor memory accelerator ----------------------------------------------------------- */

/* A tile of a tensor map (a CUtensorMap, passed as a __grid_constant__ kernel parameter) at
 * element coordinates c0 (innermost) .. into shared memory at dst, completing `bytes` of
 * transactions on barrier bar. Coordinates outside the tensor, negative ones included, read as
 * zeros. */
FLP_DEV void tma_load_3d(unsigned dst, const void *map, unsigned bar, int c0, int c1, int c2) {
    asm volatile("cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
                 " [%0], [%1, {%3, %4, %5}], [%2];\n" ::"r"(dst),
                 "l"(map), "r"(bar), "r"(c0), "r"(c1), "r"(c2)
                 : "memory");
}

FLP_DEV void tma_load_4d(unsigned dst, const void *map, unsigned bar, int c0, int c1, int c2,
                         int c3) {
    asm volatile("cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
                 " [%0], [%1, {%3, %4, %5, %6}], [%2];\n" ::"r"(dst),
                 "l"(map), "r"(bar), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
                 : "memory");
}

FLP_DEV void tma_prefetch_map(const void *map) {
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(map) : "memory");
}

/* Orders this thread's ordinary shared-memory stores before later reads by the async proxy
 * (wgmma operands in shared memory). */
FLP_DEV void fence_proxy_async() {
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

/* ---- named barriers and register reallocation ------------------------------------------- */

FLP_DEV void named_barrier_sync(unsigned id, unsigned threads) {
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

/* Arrives on named barrier id without waiting (the waiting side calls named_barrier_sync with
 * the same thread count, which includes the arriving threads). */
FLP_DEV void named_barrier_arrive(unsigned id, unsigned threads) {
    asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

template <int REGS> FLP_DEV void regs_release() {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(REGS));
}

template <int REGS> FLP_DEV void regs_acquire() {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(REGS));
}

/* ---- warpgroup matrix products ------------------------------------------------------------ */

/* A shared-memory matrix descriptor for a tile stored in 128-byte swizzled rows (what TMA's
 * 128B swizzle writes; the tile 1024-byte aligned): start address, leading-dimension byte
 * offset (between 64-element column blocks of an N-major operand; unused for K-major ones) and
 * stride byte offset (between groups of 8 rows: 1024). */
FLP_DEV uint64_t smem_desc_sw128(unsigned addr, unsigned lead_bytes, unsigned stride_bytes) {
    return static_cast<uint64_t>((addr & 0x3FFFFu) >> 4) |
           (static_cast<uint64_t>(lead_bytes >> 4) << 16) |
           (static_cast<uint64_t>(stride_bytes >> 4) << 32) | (1ull << 62);
}

/* The descriptor of the tile `bytes` further on (the start address field, bits 0-13 in 16-byte
 * units, never carries: shared addresses stay below 256 KiB). */
FLP_DEV uint64_t smem_desc_advance(uint64_t desc, unsigned bytes) {
    return desc + (bytes >> 4);
}

/* Hides a value's origin from the compiler, so that what is derived from it is computed where
 * it is used instead of hoisted out of a loop and kept in (spilled) registers. */
FLP_DEV void opaque(uint64_t &x) {
    asm volatile("" : "+l"(x));
}

FLP_DEV void wgmma_fence() {
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
FLP_DEV void wgmma_commit() {
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N> FLP_DEV void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

/* Keeps the compiler from moving accesses of accumulator registers across a wgmma wait (the
 * asynchronous product writes them behind its back). */
template <int R> FLP_DEV void wgmma_fence_regs(float (&d)[R]) {
#pragma unroll
    for (int i = 0; i < R; i++)
        asm volatile("" : "+f"(d[i])::"memory");
}

/* The same for registers that an asynchronous product reads (P's A fragments). */
template <int R> FLP_DEV void wgmma_fence_regs(unsigned (&a)[R][4]) {
#pragma unroll
    for (int i = 0; i < R; i++)
        asm volatile("" : "+r"(a[i][0]), "+r"(a[i][1]), "+r"(a[i][2]), "+r"(a[i][3])::"memory");
}

/* Operand lists of m64nNk16 (N/2 f32 accumulators per thread), each built on the one of half
 * its size: the accumulator registers %0..%(N/2 - 1) and their "+f" constraints. */
#define FLP_WGMMA_F8(d, i)                                                                         \
    "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]),    \
        "+f"(d[i + 6]), "+f"(d[i + 7])
#define FLP_WGMMA_OUT64(d)                                                                         \
    FLP_WGMMA_F8(d, 0), FLP_WGMMA_F8(d, 8), FLP_WGMMA_F8(d, 16), FLP_WGMMA_F8(d, 24)
#define FLP_WGMMA_OUT128(d)                                                                        \
    FLP_WGMMA_OUT64(d), FLP_WGMMA_F8(d, 32), FLP_WGMMA_F8(d, 40), FLP_WGMMA_F8(d, 48),             \
        FLP_WGMMA_F8(d, 56)
#define FLP_WGMMA_OUT256(d)                                                                        \
    FLP_WGMMA_OUT128(d), FLP_WGMMA_F8(d, 64), FLP_WGMMA_F8(d, 72), FLP_WGMMA_F8(d, 80),            \
        FLP_WGMMA_F8(d, 88), FLP_WGMMA_F8(d, 96), FLP_WGMMA_F8(d, 104), FLP_WGMMA_F8(d, 112),      \
        FLP_WGMMA_F8(d, 120)
#define FLP_WGMMA_REGS64                                                                           \
    "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, "                                           \
    "%12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, "                                 \
    "%24, %25, %26, %27, %28, %29, %30, %31"
#define FLP_WGMMA_REGS128                                                                          \
    FLP_WGMMA_REGS64 ", "                                                                          \
                     "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, "                \
                     "%44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, "                \
                     "%56, %57, %58, %59, %60, %61, %62, %63"
#define FLP_WGMMA_REGS256                                                                          \
    FLP_WGMMA_REGS128 ", "                                                                         \
                      "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, "               \
                      "%76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, "               \
                      "%88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, "               \
                      "%100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "   \
                      "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, "   \
                      "%124, %125, %126, %127"
#define FLP_WGMMA_D64 "{" FLP_WGMMA_REGS64 "}, "
#define FLP_WGMMA_D128 "{" FLP_WGMMA_REGS128 "}, "
#define FLP_WGMMA_D256 "{" FLP_WGMMA_REGS256 "}, "
#define FLP_WGMMA_SS64 "%32, %33, p, 1, 1, 0, 0;\n"
#define FLP_WGMMA_SS_PRED64 "setp.ne.b32 p, %34, 0;\n"
#define FLP_WGMMA_RS64 "{%32, %33, %34, %35}, %36, p, 1, 1, 1;\n"
#define FLP_WGMMA_RS_PRED64 "setp.ne.b32 p, %37, 0;\n"
#define FLP_WGMMA_SS128 "%64, %65, p, 1, 1, 0, 0;\n"
#define FLP_WGMMA_SS_PRED128 "setp.ne.b32 p, %66, 0;\n"
#define FLP_WGMMA_RS128 "{%64, %65, %66, %67}, %68, p, 1, 1, 1;\n"
#define FLP_WGMMA_RS_PRED128 "setp.ne.b32 p, %69, 0;\n"
#define FLP_WGMMA_SS256 "%128, %129, p, 1, 1, 0, 0;\n"
#define FLP_WGMMA_SS_PRED256 "setp.ne.b32 p, %130, 0;\n"
#define FLP_WGMMA_RS256 "{%128, %129, %130, %131}, %132, p, 1, 1, 1;\n"
#define FLP_WGMMA_RS_PRED256 "setp.ne.b32 p, %133, 0;\n"

/* d (+)= A B for one m64nNk16 step of a warpgroup, f32 accumulators in the wgmma layout (warp w
 * of the group holds rows 16w..16w+15; d[4i..4i+3] as mma.sync's m16n8 tile i). ss: A (K-major)
 * and B (K-major, i.e. [N][K]) in shared memory; rs: A as this warp's m16k16 fragment in
 * registers (mma.sync's A layout), B in shared memory N-major ([K][N], transposed).
 * accumulate = 0 overwrites d. */
template <int DT, int N> struct wgmma_op;

#define FLP_WGMMA_OP(DT, TYPE, N)                                                                  \
    template <> struct wgmma_op<DT, N> {                                                           \
        FLP_DEV static void ss(float (&d)[N / 2], uint64_t a, uint64_t b, int accumulate) {        \
            asm volatile("{\n.reg .pred p;\n" FLP_WGMMA_SS_PRED##N                                 \
                         "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." TYPE "." TYPE           \
                         " " FLP_WGMMA_D##N FLP_WGMMA_SS##N "}\n"                                  \
                         : FLP_WGMMA_OUT##N(d)                                                     \
                         : "l"(a), "l"(b), "r"(accumulate));                                       \
        }                                                                                          \
        FLP_DEV static void rs(float (&d)[N / 2], const unsigned (&a)[4], uint64_t b,              \
                               int accumulate) {                                                   \
            asm volatile("{\n.reg .pred p;\n" FLP_WGMMA_RS_PRED##N                                 \
                         "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." TYPE "." TYPE           \
                         " " FLP_WGMMA_D##N FLP_WGMMA_RS##N "}\n"                                  \
                         : FLP_WGMMA_OUT##N(d)                                                     \
                         : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(accumulate));   \
        }                                                                                          \
    };
FLP_WGMMA_OP(FLP_DT_F16, "f16", 64)
FLP_WGMMA_OP(FLP_DT_F16, "f16", 128)
FLP_WGMMA_OP(FLP_DT_F16, "f16", 256)
FLP_WGMMA_OP(FLP_DT_BF16, "bf16", 64)
FLP_WGMMA_OP(FLP_DT_BF16, "bf16", 128)
FLP_WGMMA_OP(FLP_DT_BF16, "bf16", 256)
#undef FLP_WGMMA_OP

} // namespace flp

#endif /* FLP_CUDA_PTX_SM90_CUH */
