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

/* ---- conversions (sm_80 cvt) ---------------------------------------------------------- */

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
