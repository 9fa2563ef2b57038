/* Internal object layouts and error helpers shared by the core and the backends. */
#ifndef FLP_CORE_INTERNAL_H
#define FLP_CORE_INTERNAL_H

#include "flashport/flashport.h"

#include <stdarg.h>

struct flp_backend_ops;

#define FLP_ERROR_MESSAGE_SIZE 2048
/* The longest compiled-kernel cache directory, with its NUL. */
#define FLP_CACHE_DIR_SIZE 4096

struct flp_context {
    const struct flp_backend_ops *ops;
    void *backend; /* backend-private state */
    flp_device_info info;
    flp_log_fn log;
    void *log_user_data;
    flp_log_level log_level;
    char last_error[FLP_ERROR_MESSAGE_SIZE];
    bool probing; /* FLP_BACKEND_AUTO is trying backends: failures log at DEBUG, not ERROR */
    char kernel_cache_dir[FLP_CACHE_DIR_SIZE]; /* "": no disk cache (core/kernel_cache.h) */
};

struct flp_buffer {
    flp_context *ctx;
    size_t size;
    uint64_t device_address; /* CUdeviceptr or VkDeviceAddress of byte 0 */
    void *native;            /* backend-private object */
    bool wrapped;            /* caller-owned memory: never freed by the library */
};

/* Records message as ctx's last error, logs it at FLP_LOG_ERROR (FLP_LOG_DEBUG while probing)
 * and returns status.
 * ctx may be NULL (then it only returns status). */
flp_status flp_fail(flp_context *ctx, flp_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Writes the reason to message[size] (may be NULL or 0 bytes, then nothing is written) and
 * returns status: for checks that report to a caller's buffer rather than to a context. */
flp_status flp_report(flp_status status, char *message, size_t size, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Logs through ctx's callback when one is set and level passes the threshold. */
void flp_log(const flp_context *ctx, flp_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Prefixes ctx's last error with "fn: " unless it starts so already: a backend's message names
 * its own step, the public entry point that failed is fn. */
void flp_error_prefix(flp_context *ctx, const char *fn);
/* Clears the last error (called at the start of each public entry point). */
void flp_clear_error(flp_context *ctx);

/* Log through a callback without a context (context creation). */
void flp_log_raw(flp_log_fn log, void *user, flp_log_level min_level, flp_log_level level,
                 const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* Allocates a context and opens one backend: used by flp_context_create (kind AUTO/CUDA/VULKAN)
 * and by the interop creators. interop: a CUcontext for CUDA, a const flp_vulkan_device_desc *
 * for Vulkan, or NULL for the library's own device. */
flp_status flp_context_create_on(const flp_context_desc *desc, flp_backend_kind kind,
                                 const void *interop, flp_context **out);

/* Whether dtype is one of the fp8 formats (e4m3, e5m2): the K/V dtypes stored as one byte
 * with a per-tensor scale. */
static inline bool flp_dtype_is_fp8(int32_t dtype) {
    return dtype == FLP_DTYPE_E4M3 || dtype == FLP_DTYPE_E5M2;
}

#define FLP_ALIGN_UP(x, a) ((((x) + (a)-1) / (a)) * (a))

#endif /* FLP_CORE_INTERNAL_H */
