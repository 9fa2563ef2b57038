/* The emulator's entry point for the host backend (emu_backend.c). */
#ifndef FLP_CUDA_EMU_LAUNCH_H
#define FLP_CUDA_EMU_LAUNCH_H

#include "core/backend.h"

/* Runs a decode launch (and its merge) on the CPU, as the CUDA backend would on a GPU;
 * seed varies the timing of the emulated asynchronous copies. */
void flp_emu_decode(const flp_decode_launch *launch, uint64_t seed);

/* The same for a prefill launch (prefill kernel of the launch's tile, then the merge). */
void flp_emu_prefill(const flp_prefill_launch *launch, uint64_t seed);
/* A KV append. */
void flp_emu_kv_append(const flp_kv_append_params *params);
/* A public state merge. */
void flp_emu_merge(const flp_merge_params *params);

#endif /* FLP_CUDA_EMU_LAUNCH_H */
