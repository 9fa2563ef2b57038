/* nvcc unit, compiled into its own fatbin in parallel with the others: the prefill kernels of
 * head dim 64, every dtype pair (entry points: kernel_instances.cuh). */
#include "backend-cuda/kernels/kernel_instances.cuh"

FLP_PREFILL_KERNELS(64)
