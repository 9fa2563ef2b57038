/* The backend interface: the only way the core reaches a GPU. Each backend directory fills
 * one table; a backend that is not built compiles a stub whose open function returns
 * FLP_ERROR_UNSUPPORTED with a message, so the ABI never changes with build options. */
#ifndef FLP_CORE_BACKEND_H
#define FLP_CORE_BACKEND_H

#include "core/internal.h"
#include "core/launch.h"
#include "core/merge_params.h"

typedef struct flp_backend_ops {
    const char *name;
    /* Frees ctx->backend after waiting for queued work. */
    void (*destroy)(flp_context *ctx);
    /* buf->size is set; fill device_address and native. Memory content is undefined. */
    flp_status (*buffer_create)(flp_context *ctx, flp_buffer *buf);
    /* Frees what buffer_create or a wrap made (never the caller's memory of a wrap). */
    void (*buffer_destroy)(flp_context *ctx, flp_buffer *buf);
    /* Ordered after queued work, blocking. Ranges are already checked. */
    flp_status (*buffer_write)(flp_context *ctx, flp_buffer *buf, size_t offset, const void *src,
                               size_t size);
    flp_status (*buffer_read)(flp_context *ctx, const flp_buffer *buf, size_t offset, void *dst,
                              size_t size);
    flp_status (*synchronize)(flp_context *ctx);
    /* Workgroups of the decode kernel for this head_dim: a multiple of the compute units that
     * fills the device (the plan fixes it at creation, so launch sizes never change). */
    int32_t (*decode_grid_size)(flp_context *ctx, int32_t head_dim); /* < 0: flp_status */
    /* Checks what only the backend knows (device limits, its kernels' shapes), then queues the
     * decode kernel and the merge kernel (always: it skips unsplit requests). Queues nothing
     * when it fails. The launch is valid: the core checked every argument. */
    flp_status (*decode_run)(flp_context *ctx, const flp_decode_launch *launch);
    /* Whether decode_run takes launches with a variant program (snippets). */
    bool decode_snippets;
    /* Workgroups of the (persistent) prefill kernel for this head_dim, fixed at plan creation.
     * < 0: flp_status. */
    int32_t (*prefill_grid_size)(flp_context *ctx, int32_t head_dim);
    /* FLP_DECODE_KERNEL_AUTO runs decode on the prefill (matrix) kernel from this many query
     * rows per KV head; 0 = never (its prefill kernel does not pay for decode batches). */
    int32_t decode_matrix_min_rows;
    /* Like decode_run: backend checks, then the prefill kernel and the merge kernel (always,
     * when the plan can split). */
    flp_status (*prefill_run)(flp_context *ctx, const flp_prefill_launch *launch);
    /* Whether prefill_run takes launches with a variant program (snippets). */
    bool prefill_snippets;
    /* Queues the KV append (every argument validated by the core). */
    flp_status (*kv_append_run)(flp_context *ctx, const flp_kv_append_params *params);
    /* Queues a public state merge (core/merge_params.h; validated by the core, rows > 0). */
    flp_status (*merge_run)(flp_context *ctx, const flp_merge_params *params);
    /* Copies a plan's host mirror into its device memory in stream order: after the work
     * already queued on the context's stream/queue and before any queued later, without
     * waiting for the device; src may be reused on return. NULL = buffer_write (which waits
     * for the queue). */
    flp_status (*plan_upload)(flp_context *ctx, flp_buffer *buf, size_t offset, const void *src,
                              size_t size);
    /* Whether a plan may be uploaded now: FLP_OK, or the reason with the message set (CUDA: the
     * stream is capturing a graph). Plan calls ask before they change anything, so a refused
     * call leaves the previous plan in place. NULL = always. */
    flp_status (*plan_upload_check)(flp_context *ctx);
    /* Whether runs are recorded into a caller's command buffer that the caller submits later
     * (then work queued now has not run when synchronize returns). NULL = never. */
    bool (*records_for_caller)(const flp_context *ctx);
} flp_backend_ops;

/* Each opens a device of its backend and sets ctx->ops, ctx->backend and ctx->info.
 * device_index: index in the backend's device order (Vulkan: discrete GPUs, integrated,
 * virtual, other, CPU; within a kind, enumeration order). prefer_gpu (Vulkan, AUTO only):
 * fail with FLP_ERROR_UNSUPPORTED when only CPU devices exist. */
flp_status flp_cuda_backend_open(flp_context *ctx, int device_index, void *cu_context);
flp_status flp_vulkan_backend_open(flp_context *ctx, int device_index, bool prefer_gpu,
                                   const void *vulkan_device_desc);

#endif /* FLP_CORE_BACKEND_H */
