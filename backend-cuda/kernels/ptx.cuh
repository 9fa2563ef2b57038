/* Every inline-PTX instruction the kernels use, in one small header (sm_80+). Nothing else in
 * the kernels is target-specific, so the host emulator (backend-cuda/emulate/) substitutes this
 * one file to run the real kernel code on a CPU. */
#ifndef FLP_CUDA_PTX_CUH
#define FLP_CUDA_PTX_CUH

#define FLP_DEV __device__ __forceinline__

namespace flp {

/* 2^x; -inf gives +0, max relative error about 2^-22. */
FLP_DEV float exp2_approx(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

FLP_DEV float log2_approx(float x) {
    float y;
    asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

FLP_DEV float rcp_approx(float x) {
    float y;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

/* Waits until the kernels queued before this one on the stream have finished and their memory
 * is visible: the kernels go out as programmatic dependent launches on sm_90+ (cu_context.c,
 * flp_cu_launch), which may start a kernel while the one before it drains. Every kernel entry
 * calls it first (kernel_instances.cuh); without such a launch, and before sm_90, it is a no-op. */
FLP_DEV void wait_for_prior_grids() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

/* ---- shared memory and asynchronous copies --------------------------------------------- */

FLP_DEV unsigned smem_addr(const void *p) {
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

/* Copies BYTES (16 or 8) from global to shared memory asynchronously; !valid writes zeros and
 * reads nothing (src must still be a mapped address). */
template <int BYTES> FLP_DEV void cp_async(unsigned dst, const void *src, bool valid) {
    const int src_size = valid ? BYTES : 0;
    if constexpr (BYTES == 16) {
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
                     "r"(src_size)
                     : "memory");
    } else {
        static_assert(BYTES == 8, "cp.async of 8 or 16 bytes");
        asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" ::"r"(dst), "l"(src),
                     "r"(src_size)
                     : "memory");
    }
}

FLP_DEV void cp_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}

/* Waits until at most N of this thread's committed groups are pending. */
template <int N> FLP_DEV void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

FLP_DEV void cp_async_wait_all() {
    asm volatile("cp.async.wait_all;\n" ::: "memory");
}

/* ---- tensor cores (sm_80 mma.sync, ldmatrix) ---------------------------------------------- */

/* ldmatrix .x4: lanes 8i..8i+7 give the shared addresses of the 8 rows (16 bytes each) of
 * matrix i; r[i] of lane l gets elements 2(l%4), 2(l%4)+1 of row l/4 of matrix i. */
FLP_DEV void ldmatrix_x4(unsigned (&r)[4], unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

/* The same with each matrix transposed: r[i] of lane l gets elements (row 2(l%4), column l/4)
 * and (row 2(l%4)+1, column l/4) of matrix i. */
FLP_DEV void ldmatrix_x4_trans(unsigned (&r)[4], unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

/* d = a * b + d, m16n8k16, f32 accumulators (PTX fragment layouts: g = lane / 4, c = lane % 4;
 * a[0] rows g, columns 2c..2c+1; a[1] row g+8; a[2] row g, columns 2c+8..; a[3] row g+8, columns
 * 2c+8..; b[0] rows (k) 2c..2c+1, column g; b[1] rows 2c+8..; d[0..1] row g, columns 2c..2c+1;
 * d[2..3] row g+8). */
FLP_DEV void mma_f16_16816(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
                 "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

FLP_DEV void mma_bf16_16816(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
                 "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* movmatrix .trans: an 8 x 8 b16 matrix held in the fragment layout (lane l: row l/4, columns
 * 2(l%4) and 2(l%4)+1) transposed across the warp: lane l gets (rows 2(l%4), 2(l%4)+1; column
 * l/4), low half first. */
FLP_DEV unsigned movmatrix_trans(unsigned x) {
    unsigned r;
    asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(r) : "r"(x));
    return r;
}

/* ---- conversions (sm_80 cvt) ---------------------------------------------------------- */

/* f16x2 product, rounded to nearest even. */
FLP_DEV unsigned mul_f16x2(unsigned a, unsigned b) {
    unsigned r;
    asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
    return r;
}

/* prmt.b32 with a zero second operand: selector nibbles pick bytes of a, bit 3 of a nibble
 * replicates the picked byte's sign bit instead. */
FLP_DEV unsigned byte_spread(unsigned a, unsigned selector) {
    unsigned r;
    asm("prmt.b32 %0, %1, 0, %2;" : "=r"(r) : "r"(a), "r"(selector));
    return r;
}

/* a * b in both bf16 halves (fma with -0: the product, sign of zero kept). */
FLP_DEV unsigned mul_bf16x2(unsigned a, unsigned b) {
    unsigned r;
    asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(0x80008000u));
    return r;
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
/* Two e4m3 values (the low 16 bits of w) as an f16x2 of the same values, exact (sm_89 cvt). */
FLP_DEV unsigned cvt_f16x2_e4m3x2(unsigned w) {
    unsigned r;
    asm("{\n .reg .b16 t;\n cvt.u16.u32 t, %1;\n cvt.rn.f16x2.e4m3x2 %0, t;\n}" : "=r"(r) : "r"(w));
    return r;
}
#define FLP_HAVE_CVT_E4M3X2 1
#endif

FLP_DEV void f16x2_to_f32(unsigned w, float &lo, float &hi) {
    asm("{\n .reg .b16 l, h;\n mov.b32 {l, h}, %2;\n cvt.f32.f16 %0, l;\n cvt.f32.f16 %1, h;\n}"
        : "=f"(lo), "=f"(hi)
        : "r"(w));
}

/* Round to nearest even; the first argument lands in the low half. */
FLP_DEV unsigned pack_f16x2(float lo, float hi) {
    unsigned r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

FLP_DEV unsigned pack_bf16x2(float lo, float hi) {
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

} // namespace flp

#endif /* FLP_CUDA_PTX_CUH */
