/* Status names, the per-context last error, and logging. */
#include "core/internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *flp_status_string(flp_status status) {
    switch (status) {
    case FLP_OK:
        return "FLP_OK";
    case FLP_ERROR_INVALID_ARGUMENT:
        return "FLP_ERROR_INVALID_ARGUMENT";
    case FLP_ERROR_UNSUPPORTED:
        return "FLP_ERROR_UNSUPPORTED";
    case FLP_ERROR_OUT_OF_MEMORY:
        return "FLP_ERROR_OUT_OF_MEMORY";
    case FLP_ERROR_CAPACITY:
        return "FLP_ERROR_CAPACITY";
    case FLP_ERROR_COMPILE:
        return "FLP_ERROR_COMPILE";
    case FLP_ERROR_BACKEND:
        return "FLP_ERROR_BACKEND";
    case FLP_ERROR_DEVICE_LOST:
        return "FLP_ERROR_DEVICE_LOST";
    }
    return "FLP_ERROR_UNKNOWN";
}

static void emit(flp_log_fn log, void *user, flp_log_level min_level, flp_log_level level,
                 const char *fmt, va_list ap) {
    if (!log || level < min_level)
        return;
    char message[FLP_ERROR_MESSAGE_SIZE];
    vsnprintf(message, sizeof message, fmt, ap);
    log(user, level, message);
}

void flp_log_raw(flp_log_fn log, void *user, flp_log_level min_level, flp_log_level level,
                 const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    emit(log, user, min_level, level, fmt, ap);
    va_end(ap);
}

void flp_log(const flp_context *ctx, flp_log_level level, const char *fmt, ...) {
    if (!ctx)
        return;
    va_list ap;
    va_start(ap, fmt);
    emit(ctx->log, ctx->log_user_data, ctx->log_level, level, fmt, ap);
    va_end(ap);
}

flp_status flp_fail(flp_context *ctx, flp_status status, const char *fmt, ...) {
    if (!ctx)
        return status;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctx->last_error, sizeof ctx->last_error, fmt, ap);
    va_end(ap);
    /* While AUTO probes backends a failure is an answer, not an error: logged at DEBUG. */
    flp_log(ctx, ctx->probing ? FLP_LOG_DEBUG : FLP_LOG_ERROR, "%s: %s", flp_status_string(status),
            ctx->last_error);
    return status;
}

void flp_clear_error(flp_context *ctx) {
    if (ctx)
        ctx->last_error[0] = '\0';
}

void flp_error_prefix(flp_context *ctx, const char *fn) {
    size_t n = strlen(fn);
    if (!ctx || (strncmp(ctx->last_error, fn, n) == 0 && ctx->last_error[n] == ':'))
        return;
    /* "fn: " then as much of the old message as fits (the buffer ends with a NUL) */
    char message[FLP_ERROR_MESSAGE_SIZE];
    int used = snprintf(message, sizeof message, "%s: ", fn);
    if (used < 0 || (size_t)used >= sizeof message)
        return;
    size_t room = sizeof message - (size_t)used - 1;
    size_t len = strnlen(ctx->last_error, room);
    memcpy(message + used, ctx->last_error, len);
    message[(size_t)used + len] = '\0';
    memcpy(ctx->last_error, message, sizeof message);
}

flp_status flp_report(flp_status status, char *message, size_t size, const char *fmt, ...) {
    if (message && size) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(message, size, fmt, ap);
        va_end(ap);
    }
    return status;
}
