/* NVRTC, loaded at run time (libnvrtc.so.13, .12, libnvrtc.so, then the toolkit the library
 * was built with): compiles the embedded kernel source for devices the ahead-of-time fatbin does
 * not cover. Needs no GPU and no CUDA context, so it is testable on any machine with NVRTC. */
#ifndef FLP_CUDA_CU_NVRTC_H
#define FLP_CUDA_CU_NVRTC_H

#include "flashport/flashport.h"

/* A compiled device image: a cubin, or PTX text (NUL-terminated) when the device is newer than
 * the NVRTC found (the driver then compiles the PTX). Free with flp_cuda_image_free. */
typedef struct flp_cuda_image {
    char *data;
    size_t size; /* bytes; PTX includes its terminating NUL */
    bool is_cubin;
    char target[24]; /* the -arch given to NVRTC: "sm_90a", "compute_90", ... */
} flp_cuda_image;

/* Whether libnvrtc can be loaded (once per process, thread-safe). When not, *why (may be
 * NULL) says why. *version (may be NULL) receives major * 1000 + minor * 10. */
bool flp_cuda_nvrtc_available(const char **why, int *version);

/* Compiles one self-contained CUDA source for compute capability cc (major * 10 + minor, e.g.
 * 90) with -std=c++17 and options[num_options]. FLP_ERROR_UNSUPPORTED when libnvrtc cannot be
 * loaded or knows no architecture <= cc, FLP_ERROR_COMPILE with NVRTC's log on a compile error;
 * the reason is written to message (may be NULL). Thread-safe. */
flp_status flp_cuda_nvrtc_compile_source(const char *source, const char *program_name, int cc,
                                         const char *const *options, int num_options,
                                         flp_cuda_image *out, char *message, size_t message_size);

/* Compiles the embedded kernel source (backend-cuda/kernels, includes inlined at build time)
 * for cc: the decode kernels of one configuration (q_dtype, kv_dtype as flp_dtype values,
 * head_dim) and the merge kernel of q_dtype; or, with head_dim 0, every kernel (slow: about a
 * minute). Kernels left out keep their names with empty bodies. */
flp_status flp_cuda_nvrtc_compile_for_arch(int cc, flp_dtype q_dtype, flp_dtype kv_dtype,
                                           int head_dim, flp_cuda_image *out, char *message,
                                           size_t message_size);

/* Frees image->data and zeroes image. Accepts an already freed or zeroed image. */
void flp_cuda_image_free(flp_cuda_image *image);

#endif /* FLP_CUDA_CU_NVRTC_H */
