/* A small SIMT runtime for running the CUDA kernels on a CPU (tests only, never shipped):
 * every thread of a block is a fiber (ucontext) of one OS thread; __syncthreads and warp
 * shuffles are barriers among fibers with CUDA's semantics (a shuffle waits for all 32 lanes of
 * the warp, a block barrier for every thread), so a kernel that relies on lock-step execution
 * it is not given, or that diverges around a barrier, deadlocks and is reported. cp.async copies
 * are performed either at issue or as late as cp.async.wait_group allows, chosen at random, so
 * reading a stage before waiting for it, or refilling a slot still in use, shows up as wrong
 * results. Blocks run one after another. */
#ifndef FLP_CUDA_EMU_SIMT_H
#define FLP_CUDA_EMU_SIMT_H

#include <cstddef>
#include <cstdint>

namespace flp_emu {

struct dim3 {
    unsigned x, y, z;
};

/* Runs kernel(arg) for every block of grid_dim blocks of block_dim threads with smem_bytes of
 * dynamic shared memory at smem (the kernels' extern shared array of smem_capacity bytes):
 * the launched part is poisoned with 0xff before each block, the rest filled with a canary that
 * must be intact after it. seed drives the cp.async timing. Aborts the process with a message
 * on a deadlock or a write past the launched shared memory. */
void launch(void (*kernel)(const void *arg), const void *arg, unsigned grid_dim, unsigned block_dim,
            unsigned char *smem, size_t smem_bytes, size_t smem_capacity, uint64_t seed);

/* The calling fiber's indices (valid inside a kernel). */
dim3 thread_idx();
dim3 block_idx();
dim3 block_dim();
dim3 grid_dim();

/* __syncthreads(). */
void sync_threads();
/* __shfl_xor_sync over the full warp for a 32-bit value. */
uint32_t shfl_xor(uint32_t value, int lane_mask);

/* A warp-collective exchange (what ldmatrix and mma.sync do among lanes): every lane of the
 * warp gives n (<= kExchangeWords) words and receives all 32 lanes' words, all[lane * n + i],
 * once every lane has arrived. */
constexpr int kExchangeWords = 8;
void warp_exchange(const uint32_t *mine, int n, uint32_t *all);

/* Base of the block's dynamic shared memory. */
unsigned char *dynamic_smem();

/* cp.async of bytes from global src to shared offset dst (zeros when !valid), commit_group,
 * wait_group n (n < 0: wait_all, which also commits). */
void cp_async(unsigned dst, const void *src, bool valid, int bytes);
void cp_async_commit();
void cp_async_wait(int n);

} // namespace flp_emu

#endif /* FLP_CUDA_EMU_SIMT_H */
