/* What the library's plan-like objects (flp_plan, flp_cascade, flp_block_sparse) share: the
 * device memory they work in (their own buffer or bytes of a caller's workspace) and the
 * prologue of their calls. */
#ifndef FLP_CORE_OBJECT_MEMORY_H
#define FLP_CORE_OBJECT_MEMORY_H

#include "core/internal.h"

/* Byte alignment of a caller's workspace offset. */
#define FLP_WORKSPACE_ALIGN 256

typedef struct flp_object_memory {
    flp_buffer *buffer; /* the object's own, or the caller's workspace */
    bool owns_buffer;
    size_t base; /* byte offset of the object's bytes in buffer */
} flp_object_memory;

/* A desc's workspace fields: a buffer of another context, or an offset that is not a multiple
 * of FLP_WORKSPACE_ALIGN, is FLP_ERROR_INVALID_ARGUMENT (workspace NULL: FLP_OK). */
flp_status flp_check_workspace(flp_context *ctx, const char *fn, const flp_buffer *workspace,
                               size_t offset);

/* bytes of workspace from offset, or a new buffer of that size when workspace is NULL. Too few
 * bytes is FLP_ERROR_CAPACITY naming `what` (the object) and size_call (the call that sizes
 * it); a start that is not 16-byte aligned on the device (a wrapped buffer may start anywhere;
 * kernels read this memory 16 bytes at a time) FLP_ERROR_INVALID_ARGUMENT. */
flp_status flp_object_memory_attach(flp_context *ctx, const char *fn, flp_buffer *workspace,
                                    size_t offset, size_t bytes, const char *what,
                                    const char *size_call, flp_object_memory *out);

/* Frees the buffer when the object owns it. */
void flp_object_memory_release(flp_object_memory *m);

/* The prologue of an object's calls: clears the last error; a NULL object (called `name` in the
 * message) or args, or an object of another context, is FLP_ERROR_INVALID_ARGUMENT. */
flp_status flp_check_object_call(flp_context *ctx, const char *fn, const char *name,
                                 const void *object, const flp_context *object_ctx,
                                 const void *args);

/* The prologue of an object's create and workspace-size calls: clears the last error; a NULL
 * result pointer (called `name` in the message: "out", "bytes") is FLP_ERROR_INVALID_ARGUMENT. */
flp_status flp_check_out_call(flp_context *ctx, const char *fn, const char *name, const void *out);

#endif /* FLP_CORE_OBJECT_MEMORY_H */
