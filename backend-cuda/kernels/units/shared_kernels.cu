/* nvcc unit, compiled into its own fatbin in parallel with the others: the kernels every
 * configuration shares, the decode and prefill merges and the KV append (entry points:
 * kernel_instances.cuh). */
#include "backend-cuda/kernels/kernel_instances.cuh"

FLP_SHARED_KERNELS
