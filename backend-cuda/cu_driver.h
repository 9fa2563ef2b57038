/* The CUDA driver API, loaded at run time from libcuda.so.1: nothing links against it, so one
 * library binary runs on machines without NVIDIA software. cuda.h is used for its types and
 * prototypes only; each entry point is looked up under the (versioned) name cuda.h maps it to,
 * e.g. cuMemAlloc -> cuMemAlloc_v2. */
#ifndef FLP_CUDA_CU_DRIVER_H
#define FLP_CUDA_CU_DRIVER_H

#include "core/alloc.h"
#include "core/internal.h"

#include <cuda.h>

/* Every driver function the backend calls. */
#define FLP_CU_DRIVER_FUNCTIONS(X)                                                                 \
    X(cuGetErrorName)                                                                              \
    X(cuGetErrorString)                                                                            \
    X(cuInit)                                                                                      \
    X(cuDriverGetVersion)                                                                          \
    X(cuDeviceGetCount)                                                                            \
    X(cuDeviceGet)                                                                                 \
    X(cuDeviceGetName)                                                                             \
    X(cuDeviceGetAttribute)                                                                        \
    X(cuDeviceTotalMem)                                                                            \
    X(cuDevicePrimaryCtxRetain)                                                                    \
    X(cuDevicePrimaryCtxRelease)                                                                   \
    X(cuCtxPushCurrent)                                                                            \
    X(cuCtxPopCurrent)                                                                             \
    X(cuCtxGetDevice)                                                                              \
    X(cuStreamCreate)                                                                              \
    X(cuStreamDestroy)                                                                             \
    X(cuStreamSynchronize)                                                                         \
    X(cuStreamIsCapturing)                                                                         \
    X(cuStreamGetCtx)                                                                              \
    X(cuMemAlloc)                                                                                  \
    X(cuMemFree)                                                                                   \
    X(cuMemcpyHtoDAsync)                                                                           \
    X(cuMemHostAlloc)                                                                              \
    X(cuMemFreeHost)                                                                               \
    X(cuEventCreate)                                                                               \
    X(cuEventDestroy)                                                                              \
    X(cuEventRecord)                                                                               \
    X(cuEventQuery)                                                                                \
    X(cuEventSynchronize)                                                                          \
    X(cuMemcpyDtoHAsync)                                                                           \
    X(cuPointerGetAttribute)                                                                       \
    X(cuModuleLoadData)                                                                            \
    X(cuModuleUnload)                                                                              \
    X(cuModuleGetFunction)                                                                         \
    X(cuModuleGetGlobal)                                                                           \
    X(cuFuncGetAttribute)                                                                          \
    X(cuFuncSetAttribute)                                                                          \
    X(cuOccupancyMaxActiveBlocksPerMultiprocessor)                                                 \
    X(cuLaunchKernel)

/* Driver functions the backend can do without (NULL when the driver lacks them): tensor maps
 * (CUDA 12 drivers) for the sm_90a prefill kernel; launches with attributes (programmatic
 * dependent launch, cu_context.c's flp_cu_launch). */
#define FLP_CU_DRIVER_OPTIONAL_FUNCTIONS(X) X(cuTensorMapEncodeTiled) X(cuLaunchKernelEx)

/* Fields are named as cuda.h spells the function after its macros (cuMemAlloc_v2), so
 * `cu->cuMemAlloc(...)` reads like the API and calls the versioned entry point. */
typedef struct flp_cu_driver {
#define FLP_CU_FIELD(fn) __typeof__(fn) *fn;
    FLP_CU_DRIVER_FUNCTIONS(FLP_CU_FIELD)
    FLP_CU_DRIVER_OPTIONAL_FUNCTIONS(FLP_CU_FIELD)
#undef FLP_CU_FIELD
} flp_cu_driver;

/* The process-wide driver table, loaded once (thread-safe). NULL when libcuda cannot be loaded
 * or lacks a function; *why (may be NULL) then says why. */
const flp_cu_driver *flp_cu_driver_load(const char **why);

/* A driver call that allocates (a context, stream, device memory, module): when the
 * fault-injection seam (core/alloc.h) fails this site, CUDA_ERROR_OUT_OF_MEMORY instead of the
 * call, so the failure takes the call's own error path. */
#define FLP_CU_ALLOC(call) (flp_fault_device() ? CUDA_ERROR_OUT_OF_MEMORY : (call))

/* "CUDA_ERROR_OUT_OF_MEMORY (out of memory)" for r, into buf. */
const char *flp_cu_result_text(const flp_cu_driver *cu, CUresult r, char *buf, size_t size);

/* The flp_status a failed CUresult maps to: out of memory, device lost (the context is
 * unusable after a fault), unsupported (no device/driver), or backend. */
flp_status flp_cu_status_of(CUresult r);

/* Fails ctx with the status of r and the message "<what>: <CUresult name> (<string>)". */
flp_status flp_cu_fail(flp_context *ctx, const flp_cu_driver *cu, CUresult r, const char *what, ...)
    __attribute__((format(printf, 4, 5)));

#endif /* FLP_CUDA_CU_DRIVER_H */
