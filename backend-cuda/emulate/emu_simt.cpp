/* The fiber-based SIMT runtime of emu_simt.h. */
#include "emu_simt.h"

#include <ucontext.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <random>
#include <vector>

namespace flp_emu {
namespace {

constexpr size_t kStackBytes = 512 * 1024;

struct copy_op {
    unsigned dst;
    const void *src;
    bool valid;
    int bytes;
};

struct fiber {
    ucontext_t context;
    std::vector<unsigned char> stack;
    unsigned index = 0;
    bool done = false;
    uint64_t shuffles = 0; /* shuffles this thread has made */
    /* cp.async: copies not yet committed, and committed groups not yet performed. */
    std::vector<copy_op> open;
    std::deque<std::vector<copy_op>> groups;
};

struct block_state {
    void (*kernel)(const void *) = nullptr;
    const void *arg = nullptr;
    unsigned block_index = 0;
    unsigned grid = 0;
    unsigned threads = 0;
    std::vector<fiber> fibers;
    fiber *current = nullptr;
    ucontext_t scheduler;
    /* __syncthreads: arrivals in the current generation. */
    unsigned barrier_arrived = 0;
    uint64_t barrier_generation = 0;
    /* Shuffles, double-buffered by parity: slot values and total arrivals per warp. */
    std::vector<uint32_t> shuffle_values;  /* [warps][2][32][kExchangeWords] */
    std::vector<uint64_t> shuffle_arrived; /* [warps][2] */
    bool progressed = false;
    std::mt19937_64 rng;
    unsigned char *smem = nullptr;
    size_t smem_bytes = 0;
    size_t smem_capacity = 0;
};

block_state state;

void perform(const copy_op &c) {
    if ((size_t)c.dst + (size_t)c.bytes > state.smem_bytes) {
        std::fprintf(stderr, "emulator: cp.async to shared offset %u (+%d) past %zu bytes\n", c.dst,
                     c.bytes, state.smem_bytes);
        std::abort();
    }
    if (c.valid)
        std::memcpy(state.smem + c.dst, c.src, (size_t)c.bytes);
    else
        std::memset(state.smem + c.dst, 0, (size_t)c.bytes);
}

/* Back to the scheduler; returns when this fiber is resumed. */
void yield() {
    fiber *self = state.current;
    swapcontext(&self->context, &state.scheduler);
}

template <typename Cond> void wait_until(Cond cond) {
    while (!cond())
        yield();
    state.progressed = true;
}

void fiber_main() {
    fiber *self = state.current;
    state.kernel(state.arg);
    if (!self->open.empty() || !self->groups.empty()) {
        /* Copies left in flight at exit still land (harmless, as on the GPU). */
        for (auto &g : self->groups)
            for (auto &c : g)
                perform(c);
        for (auto &c : self->open)
            perform(c);
        self->groups.clear();
        self->open.clear();
    }
    self->done = true;
    state.progressed = true;
    /* returning resumes uc_link: the scheduler */
}

/* Out of line so that no local of the caller's loop lives across getcontext (which returns
 * twice: -Wclobbered). */
__attribute__((noinline)) void init_fiber(fiber &f, unsigned index) {
    f.index = index;
    f.done = false;
    f.shuffles = 0;
    f.open.clear();
    f.groups.clear();
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack.data();
    f.context.uc_stack.ss_size = f.stack.size();
    f.context.uc_link = &state.scheduler;
    makecontext(&f.context, fiber_main, 0);
}

void run_block() {
    const unsigned n = state.threads;
    for (unsigned i = 0; i < n; i++)
        init_fiber(state.fibers[i], i);
    state.barrier_arrived = 0;
    std::fill(state.shuffle_values.begin(), state.shuffle_values.end(), 0u);
    std::fill(state.shuffle_arrived.begin(), state.shuffle_arrived.end(), 0u);
    std::memset(state.smem, 0xff, state.smem_bytes);
    std::memset(state.smem + state.smem_bytes, 0xa5, state.smem_capacity - state.smem_bytes);
    for (;;) {
        bool all_done = true;
        state.progressed = false;
        for (unsigned i = 0; i < n; i++) {
            fiber &f = state.fibers[i];
            if (f.done)
                continue;
            all_done = false;
            state.current = &f;
            swapcontext(&state.scheduler, &f.context);
            state.current = nullptr;
        }
        if (all_done) {
            for (size_t i = state.smem_bytes; i < state.smem_capacity; i++)
                if (state.smem[i] != 0xa5) {
                    std::fprintf(stderr,
                                 "emulator: block %u wrote shared memory byte %zu, past the %zu "
                                 "bytes launched\n",
                                 state.block_index, i, state.smem_bytes);
                    std::abort();
                }
            return;
        }
        if (!state.progressed) {
            unsigned finished = 0;
            for (unsigned i = 0; i < n; i++)
                finished += state.fibers[i].done ? 1u : 0u;
            std::fprintf(stderr,
                         "emulator: deadlock in block %u: %u of %u threads finished, %u at the "
                         "block barrier (a barrier or shuffle not reached by every thread)\n",
                         state.block_index, finished, n, state.barrier_arrived);
            std::abort();
        }
    }
}

} // namespace

void launch(void (*kernel)(const void *arg), const void *arg, unsigned grid_dim, unsigned block_dim,
            unsigned char *smem, size_t smem_bytes, size_t smem_capacity, uint64_t seed) {
    if (block_dim == 0 || block_dim % 32 != 0 || block_dim > 1024 || !smem ||
        smem_bytes > smem_capacity) {
        std::fprintf(stderr, "emulator: unsupported launch (%u threads, %zu bytes smem)\n",
                     block_dim, smem_bytes);
        std::abort();
    }
    state.kernel = kernel;
    state.arg = arg;
    state.threads = block_dim;
    if (state.fibers.size() < block_dim) {
        state.fibers.resize(block_dim);
        for (auto &f : state.fibers)
            if (f.stack.empty())
                f.stack.resize(kStackBytes);
    }
    state.shuffle_values.assign((size_t)block_dim / 32 * 2 * 32 * kExchangeWords, 0u);
    state.shuffle_arrived.assign((size_t)block_dim / 32 * 2, 0u);
    state.smem = smem;
    state.smem_bytes = smem_bytes;
    state.smem_capacity = smem_capacity;
    state.rng.seed(seed);
    state.grid = grid_dim;
    for (unsigned b = 0; b < grid_dim; b++) {
        state.block_index = b;
        run_block();
    }
}

dim3 thread_idx() {
    return dim3{state.current->index, 0, 0};
}

dim3 block_idx() {
    return dim3{state.block_index, 0, 0};
}

dim3 grid_dim() {
    return dim3{state.grid, 1, 1};
}

dim3 block_dim() {
    return dim3{state.threads, 1, 1};
}

void sync_threads() {
    const uint64_t generation = state.barrier_generation;
    if (++state.barrier_arrived == state.threads) {
        state.barrier_arrived = 0;
        state.barrier_generation++;
        state.progressed = true;
        return;
    }
    wait_until([generation] { return state.barrier_generation != generation; });
}

void warp_exchange(const uint32_t *mine, int n, uint32_t *all) {
    if (n < 1 || n > kExchangeWords) {
        std::fprintf(stderr, "emulator: warp exchange of %d words\n", n);
        std::abort();
    }
    fiber *self = state.current;
    const unsigned warp = self->index / 32, lane = self->index % 32;
    const unsigned parity = (unsigned)(self->shuffles & 1);
    const uint64_t round = self->shuffles >> 1; /* uses of this parity before this one */
    self->shuffles++;
    uint32_t *values = &state.shuffle_values[((size_t)warp * 2 + parity) * 32 * kExchangeWords];
    uint64_t *arrived = &state.shuffle_arrived[(size_t)warp * 2 + parity];
    std::memcpy(values + lane * kExchangeWords, mine, (size_t)n * 4);
    ++*arrived;
    wait_until([arrived, round] { return *arrived >= 32 * (round + 1); });
    /* Read before yielding again: no lane can reuse this parity's slots until every lane has
     * reached the next exchange (of the other parity). */
    for (unsigned l = 0; l < 32; l++)
        std::memcpy(all + l * (unsigned)n, values + l * kExchangeWords, (size_t)n * 4);
}

uint32_t shfl_xor(uint32_t value, int lane_mask) {
    uint32_t all[32];
    warp_exchange(&value, 1, all);
    const unsigned lane = state.current->index % 32;
    return all[lane ^ ((unsigned)lane_mask & 31u)];
}

unsigned char *dynamic_smem() {
    return state.smem;
}

void cp_async(unsigned dst, const void *src, bool valid, int bytes) {
    copy_op c{dst, src, valid, bytes};
    if (state.rng() & 1)
        perform(c);
    else
        state.current->open.push_back(c);
}

void cp_async_commit() {
    fiber *self = state.current;
    self->groups.push_back(std::move(self->open));
    self->open.clear();
}

void cp_async_wait(int n) {
    fiber *self = state.current;
    if (n < 0) {
        cp_async_commit();
        n = 0;
    }
    while (self->groups.size() > (size_t)n) {
        for (auto &c : self->groups.front())
            perform(c);
        self->groups.pop_front();
    }
}

} // namespace flp_emu
