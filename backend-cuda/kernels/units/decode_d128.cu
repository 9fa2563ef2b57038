/* nvcc unit, compiled into its own fatbin in parallel with the others: the decode kernels of
 * head dim 128, every dtype pair (entry points: kernel_instances.cuh). */
#include "backend-cuda/kernels/kernel_instances.cuh"

FLP_DECODE_KERNELS(128)
