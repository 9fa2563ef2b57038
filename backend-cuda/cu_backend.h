/* State of a CUDA context and the functions the backend's files share. */
#ifndef FLP_CUDA_CU_BACKEND_H
#define FLP_CUDA_CU_BACKEND_H

#include "backend-cuda/cu_driver.h"
#include "backend-cuda/cu_launch.h"
#include "backend-cuda/cu_staging.h"
#include "backend-cuda/kernels/prefill_sm90_config.h"
#include "backend-cuda/kernels/prefill_config.h"
#include "core/backend.h"

/* The kernels of one configuration, ready to launch. */
typedef struct flp_cu_config {
    bool ready;
    CUmodule nvrtc_module;                        /* NULL when the functions come from the fatbin */
    CUfunction decode[FLP_CU_DECODE_NUM_KERNELS]; /* by FLP_CU_DECODE_* (cu_launch.h) */
    CUfunction merge;                             /* merge kernel of the q dtype */
    unsigned int smem_bytes[FLP_CU_DECODE_NUM_KERNELS]; /* dynamic shared memory of decode[i] */
    int max_blocks; /* resident decode blocks per SM, the smallest over decode[] */
    /* Prefill kernels of tiles 16, 64, 128 (kernels/prefill_config.h), their merge, and the
     * KV append (the same in every module). */
    CUfunction prefill[FLP_CU_PREFILL_NUM_TILES];
    unsigned int prefill_smem[FLP_CU_PREFILL_NUM_TILES];
    int prefill_max_blocks; /* resident tile-128 prefill blocks per SM */
    CUfunction prefill_merge;
    CUfunction kv_append;
    CUfunction state_merge; /* the public state merges (flp_merge_*) */
    /* The sm_90a prefill kernel (kernels/prefill_sm90.cuh): NULL where the module has no image
     * of it, the device is not sm_90, the driver makes no tensor maps, the pair is not 16-bit of
     * one dtype, or FLP_CUDA_PREFILL_KERNEL=sm80 (cu_prefill_sm90.c). */
    CUfunction prefill90;
    unsigned int prefill90_smem;
    bool prefill90_every_tile; /* FLP_CUDA_PREFILL_KERNEL=sm90: for every query tile */
} flp_cu_config;

typedef struct flp_cu_staging_slot {
    void *host;     /* [size] pinned; NULL until first used */
    size_t size;    /* a power of two in [FLP_CU_STAGING_MIN_BYTES, FLP_CU_STAGING_MAX_BYTES] */
    CUevent copied; /* recorded after the slot's last copy; NULL until first used */
} flp_cu_staging_slot;

typedef struct flp_cu_state {
    const flp_cu_driver *cu;
    CUdevice device;
    CUcontext context;
    bool retained_primary; /* the device's primary context, released on destroy */
    CUstream own_stream;   /* non-blocking, created by the library */
    CUstream stream;       /* where work goes: own_stream or the caller's */
    int cc;                /* compute capability, major * 10 + minor */
    int sm_count;
    /* Kernels go out as programmatic dependent launches (sm_90+, cuLaunchKernelEx present,
     * FLP_CUDA_PDL not 0): each may be scheduled while the kernel before it in the stream
     * drains, and waits (griddepcontrol.wait) before touching memory. */
    bool dependent_launch;
    /* Modules: the embedded fatbins (one per kernel unit, loaded on first use), or
     * per-configuration NVRTC builds when they have no image for this device (or
     * FLP_CUDA_FORCE_NVRTC=1). fatbin_checked: that choice is made. */
    bool fatbin_checked;
    bool use_nvrtc;
    CUmodule *fatbin_modules; /* [flp_cuda_fatbins_count], NULL until the first load */
    flp_cu_config configs[FLP_CU_NUM_CONFIGS];
    flp_cu_staging_slot staging[FLP_CU_STAGING_SLOTS];
    int next_staging; /* the slot the next upload tries */
} flp_cu_state;

/* The backend's function table (cu_context.c); also identifies CUDA contexts. */
extern const flp_backend_ops flp_cuda_ops;

static inline flp_cu_state *flp_cu_state_of(const flp_context *ctx) {
    return (flp_cu_state *)ctx->backend;
}

/* Makes ctx's CUcontext current on the calling thread until flp_cu_leave (driver calls need
 * it; the caller's own current context is restored afterwards). what names the entry point. */
flp_status flp_cu_enter(flp_context *ctx, const char *what);
void flp_cu_leave(flp_context *ctx);

/* Waits for the work queued on the current stream, unless a caller is capturing that stream
 * into a graph (synchronising would invalidate the capture). The context must be current. */
CUresult flp_cu_sync_stream(flp_cu_state *st);

/* Launches f on the context's stream (as cuLaunchKernel; a programmatic dependent launch where
 * st->dependent_launch). Every kernel of flashport begins with wait_for_prior_grids (ptx.cuh),
 * so it reads and writes nothing before the work queued ahead of it has finished. */
CUresult flp_cu_launch(const flp_cu_state *st, CUfunction f, unsigned grid, unsigned threads,
                       unsigned smem, void **args);

/* cu_memory.c */
flp_status flp_cu_buffer_create(flp_context *ctx, flp_buffer *buf);
void flp_cu_buffer_destroy(flp_context *ctx, flp_buffer *buf);
flp_status flp_cu_plan_upload(flp_context *ctx, flp_buffer *buf, size_t offset, const void *src,
                              size_t size);
flp_status flp_cu_plan_upload_check(flp_context *ctx);
flp_status flp_cu_buffer_write(flp_context *ctx, flp_buffer *buf, size_t offset, const void *src,
                               size_t size);
flp_status flp_cu_buffer_read(flp_context *ctx, const flp_buffer *buf, size_t offset, void *dst,
                              size_t size);

/* cu_staging.c */
/* Queues a copy of src to dst on the stream through a staging slot; *staged false (and
 * CUDA_SUCCESS) when no slot can take it now, nothing queued. The context must be current. */
CUresult flp_cu_staged_upload(flp_cu_state *st, CUdeviceptr dst, const void *src, size_t size,
                              bool *staged);
/* Waits for the staged copies and frees the slots (the context must be current). */
void flp_cu_staging_release(flp_cu_state *st);

/* cu_module.c */
/* The kernels of configuration index, loading (or NVRTC-compiling) them on first use. The
 * context must be current (flp_cu_enter). */
flp_status flp_cu_config_get(flp_context *ctx, int index, const flp_cu_config **out);
/* Unloads every module (the context must be current). */
void flp_cu_modules_release(flp_context *ctx);
/* Makes ctx current (flp_cu_enter, what naming the entry point) and gets configuration index;
 * on FLP_OK the context stays current until the caller's flp_cu_leave, on failure it is left. */
flp_status flp_cu_enter_config(flp_context *ctx, const char *what, int index,
                               const flp_cu_config **out);
/* The grid size of a head_dim's decode (prefill false) or prefill kernels: SMs x resident blocks
 * per SM, or on failure the (negative) flp_status with the reason in ctx's last error (what:
 * "CUDA decode", ...). The occupancy of one configuration stands for all of the head_dim: they
 * share block shapes and launch bounds (prefill's mixed-type pairs stage K/V and need more shared
 * memory, so fewer of their blocks may be resident at once: its persistent loop is correct for
 * any grid, blocks then run in waves). */
#define FLP_CU_GRID_Q FLP_DTYPE_BF16
#define FLP_CU_GRID_KV FLP_DTYPE_BF16
int32_t flp_cu_resident_grid(flp_context *ctx, const char *what, int32_t head_dim, bool prefill);
/* flp_cu_enter_config for the configuration of a checked launch run by fn ("flp_decode_run",
 * ...); fails if the launch has no kernel. */
flp_status flp_cu_enter_launch(flp_context *ctx, const char *fn, int32_t q_dtype, int32_t kv_dtype,
                               int32_t head_dim, const flp_cu_config **out);

/* cu_decode.c */
int32_t flp_cu_decode_grid_size(flp_context *ctx, int32_t head_dim);
flp_status flp_cu_decode_run(flp_context *ctx, const flp_decode_launch *launch);

/* cu_prefill.c */
int32_t flp_cu_prefill_grid_size(flp_context *ctx, int32_t head_dim);
flp_status flp_cu_prefill_run(flp_context *ctx, const flp_prefill_launch *launch);

/* cu_prefill_sm90.c */
/* Why the sm_90a prefill kernel may not serve the (q, kv) dtype pair on this device, or NULL
 * when it may. */
const char *flp_cu_prefill90_unwanted(const flp_cu_state *st, int32_t q_dtype, int32_t kv_dtype,
                                      int32_t head_dim);
void flp_cu_prefill90_kernel_name(int32_t q_dtype, int32_t kv_dtype, int32_t head_dim, char *buf,
                                  size_t size);
/* The kernel's dynamic shared memory (fp8 K/V add the raw ring). */
unsigned flp_cu_prefill90_smem_bytes(int32_t kv_dtype, int32_t head_dim);
bool flp_cu_prefill90_every_tile(void);
/* The sm_90a kernel's parameter block for launch into *out; false when the kernel does not
 * apply to it (no such kernel, another query tile, pages TMA cannot box, caches TMA cannot
 * address): the sm_80 kernel runs it instead. */
bool flp_cu_prefill90_params(flp_context *ctx, const flp_cu_driver *cu, const flp_cu_config *cfg,
                             const flp_prefill_launch *launch, flp_prefill90_params *out);

/* cu_kv_append.c */
flp_status flp_cu_kv_append_run(flp_context *ctx, const flp_kv_append_params *params);

/* cu_merge.c */
flp_status flp_cu_merge_run(flp_context *ctx, const flp_merge_params *params);

#endif /* FLP_CUDA_CU_BACKEND_H */
