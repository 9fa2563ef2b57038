/* Every kernel of flashport in one translation unit: the source NVRTC compiles (includes inlined
 * at build time by inline_includes.py) for devices the embedded fatbins have no image for, or
 * with FLP_CUDA_FORCE_NVRTC=1, one configuration at a time (FLP_ONLY_*, kernel_instances.cuh).
 * It is the union of the nvcc units (units/): nvcc builds each of them ahead of time into its
 * own fatbin, in parallel. */
#include "backend-cuda/kernels/units/decode_d64.cu"
#include "backend-cuda/kernels/units/decode_d128.cu"
#include "backend-cuda/kernels/units/decode_d256.cu"
#include "backend-cuda/kernels/units/prefill_d64.cu"
#include "backend-cuda/kernels/units/prefill_d128.cu"
#include "backend-cuda/kernels/units/prefill_d256.cu"
#include "backend-cuda/kernels/units/shared_kernels.cu"
