/* What the build embeds into the library (tools/embed.py, backend-cuda/meson.build). */
#ifndef FLP_CUDA_CU_EMBEDDED_H
#define FLP_CUDA_CU_EMBEDDED_H

#include <stdint.h>

/* One embedded file (tools/embed.py --table). */
typedef struct flp_embedded_file {
    const char *name;
    const unsigned char *data;
    unsigned long size;
} flp_embedded_file;

/* The nvcc fatbins (-Dnvcc_archs), one per kernel unit, named as the unit:
 * backend-cuda/kernels/units/<name>.cu. */
extern const flp_embedded_file flp_cuda_fatbins[];
extern const unsigned flp_cuda_fatbins_count;
/* Every kernel in one source with its includes inlined, NUL-terminated, for NVRTC. */
extern const unsigned char flp_cuda_kernel_source[];
extern const unsigned long flp_cuda_kernel_source_size;

/* Kernel families: the units build decode and prefill kernels per head dim, and one unit the
 * kernels every configuration shares (merges, KV append). */
typedef enum flp_cu_unit_family {
    FLP_CU_UNIT_DECODE,
    FLP_CU_UNIT_PREFILL,
    FLP_CU_UNIT_SHARED,
} flp_cu_unit_family;
#define FLP_CU_NUM_UNIT_FAMILIES 3

/* The embedded fatbin of family's kernels for head_dim (not used for the shared kernels), or
 * NULL when none is embedded (cu_module.c). */
const flp_embedded_file *flp_cu_fatbin_of(flp_cu_unit_family family, int32_t head_dim);

#endif /* FLP_CUDA_CU_EMBEDDED_H */
