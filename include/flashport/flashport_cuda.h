/* flashport CUDA interop: a caller's CUcontext, CUstream and device pointers.
 * Needs no CUDA header: the handle types are declared the way cuda.h declares them. */
#ifndef FLASHPORT_CUDA_H
#define FLASHPORT_CUDA_H

#include "flashport.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct CUctx_st *CUcontext;
typedef struct CUstream_st *CUstream;

/* Creates a CUDA context object on the caller's CUcontext (which must outlive it) instead of
 * retaining the device's primary context. desc->backend must be AUTO or CUDA. */
FLP_API flp_status flp_cuda_context_create(const flp_context_desc *desc, CUcontext cu_context,
                                           flp_context **out);

/* Queue later runs, copies and synchronisation on the caller's stream (NULL = the library's
 * own stream). The stream must outlive its use. Not thread-safe with other calls on ctx. */
FLP_API flp_status flp_cuda_set_stream(flp_context *ctx, CUstream stream);
FLP_API CUstream flp_cuda_get_stream(const flp_context *ctx);

/* Wraps size bytes of device memory at device_ptr (a CUdeviceptr) as a buffer that the library
 * does not free. */
FLP_API flp_status flp_cuda_buffer_wrap(flp_context *ctx, uint64_t device_ptr, size_t size,
                                        flp_buffer **out);
/* The CUdeviceptr of a CUDA buffer (0 for other backends). */
FLP_API uint64_t flp_cuda_buffer_device_ptr(const flp_buffer *buf);

#ifdef __cplusplus
}
#endif

#endif /* FLASHPORT_CUDA_H */
