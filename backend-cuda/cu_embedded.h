/* What the build embeds into the library (tools/embed.py, backend-cuda/meson.build). */
#ifndef FLP_CUDA_CU_EMBEDDED_H
#define FLP_CUDA_CU_EMBEDDED_H

/* The nvcc fatbin of backend-cuda/kernels/flashport_kernels.cu (sm_80, sm_90a). */
extern const unsigned char flp_cuda_fatbin[];
extern const unsigned long flp_cuda_fatbin_size;
/* The same source with its includes inlined, NUL-terminated, for NVRTC. */
extern const unsigned char flp_cuda_kernel_source[];
extern const unsigned long flp_cuda_kernel_source_size;

#endif /* FLP_CUDA_CU_EMBEDDED_H */
