/* Fuzz target: tensor view validation (flp_tensor_check, core/tensor.h), the gate every run and
 * append entry point puts in front of a kernel. Random expectations and views (buffers, offsets,
 * dtypes, ranks, shapes, strides, from ordinary to INT64_MAX) on a context of the fake host
 * backend (tests/fake_backend.h: a buffer is malloc'ed memory of exactly its size) are checked
 * against the rules of docs/api.md "Tensors":
 * - accepted: the buffer belongs to the context, dtype and rank are the expected ones, every
 *   extent matches (or any when the expectation is -1) and is >= 0, strides are >= 0 with the
 *   last dimension contiguous, the first element's device address is a multiple of the element
 *   size (16 bytes when vector-aligned, with outer strides of whole 16-byte vectors), and the
 *   view lies within its buffer: its first and last bytes are read, so AddressSanitizer sees any
 *   view that does not;
 * - rejected: FLP_ERROR_INVALID_ARGUMENT with a message that starts with the call and names the
 *   tensor ("fuzz_call: k_cache.stride[1] = ...").
 * A view is accepted exactly when these rules say so: the model is exact in both directions. */
#include "core/tensor.h"
#include "tests/fake_backend.h"
#include "tests/fuzz/fuzz_input.h"

#include <string.h>

#define CALL "fuzz_call"

static const char *const names[] = {"q", "k", "k_cache", "out", "lse", "custom_mask"};
static const flp_dtype dtypes[] = {FLP_DTYPE_F32,  FLP_DTYPE_F16, FLP_DTYPE_BF16, FLP_DTYPE_E4M3,
                                   FLP_DTYPE_E5M2, FLP_DTYPE_I32, FLP_DTYPE_U8};

/* An extent: mostly small, sometimes 0, negative or huge. */
static int64_t pick_extent(fuzz_input *in) {
    const uint8_t b = fuzz_u8(in);
    return b < 192 ? 1 + b % 9 : fuzz_i64(in);
}

static flp_tensor_expect pick_expect(fuzz_input *in) {
    flp_tensor_expect e;
    memset(&e, 0, sizeof e);
    e.name = names[fuzz_u8(in) % 6];
    e.dtype = dtypes[fuzz_u8(in) % 7];
    e.ndim = 1 + fuzz_u8(in) % FLP_MAX_DIMS;
    for (int i = 0; i < e.ndim; ++i)
        e.shape[i] = fuzz_u8(in) % 2 ? -1 : 1 + fuzz_u8(in) % 8;
    e.vector_aligned = fuzz_u8(in) % 2;
    return e;
}

/* A view that mostly follows e (so acceptance is common), each property now and then broken. */
static flp_tensor pick_view(fuzz_input *in, const flp_tensor_expect *e, flp_buffer *buf,
                            flp_buffer *foreign) {
    flp_tensor t;
    memset(&t, 0, sizeof t);
    const uint8_t which = fuzz_u8(in);
    t.buf = which == 0 ? NULL : which == 1 ? foreign : buf;
    t.dtype = fuzz_u8(in) < 240 ? e->dtype : (flp_dtype)(fuzz_u8(in) % 10);
    t.ndim = fuzz_u8(in) < 240 ? e->ndim : (int)(fuzz_u8(in) % (FLP_MAX_DIMS + 1));
    for (int i = 0; i < FLP_MAX_DIMS; ++i)
        t.shape[i] = e->shape[i] >= 0 && fuzz_u8(in) < 224 ? e->shape[i] : pick_extent(in);
    /* strides: dense with a little padding, or anything */
    int64_t dense = 1;
    for (int i = t.ndim > 0 ? t.ndim - 1 : 0; i >= 0; --i) {
        const uint8_t b = fuzz_u8(in);
        if (b < 200) {
            t.stride[i] = i == t.ndim - 1 ? 1 : dense + b % 17;
            dense = t.stride[i] * (t.shape[i] > 0 && t.shape[i] < 64 ? t.shape[i] : 1);
        } else {
            t.stride[i] = fuzz_i64(in);
        }
    }
    /* offsets: whole vectors, a few bytes past one, anywhere in the buffer, or anything */
    const uint8_t b = fuzz_u8(in);
    t.offset = b < 112   ? (size_t)(b % 8) * 16
               : b < 176 ? (size_t)(b % 8) * 16 + (size_t)(fuzz_u8(in) % 16)
               : b < 232 ? (size_t)fuzz_range(in, 0, 4200)
                         : (size_t)fuzz_i64(in);
    return t;
}

/* End (one past the last byte) of a non-empty view, exactly; false when it cannot be held in
 * 64 bits (then no buffer holds the view). */
static bool view_end(const flp_tensor *t, int ndim, uint64_t *end) {
    uint64_t last = 0;
    for (int i = 0; i < ndim; ++i) {
        uint64_t term;
        if (__builtin_mul_overflow((uint64_t)(t->shape[i] - 1), (uint64_t)t->stride[i], &term) ||
            __builtin_add_overflow(last, term, &last))
            return false;
    }
    uint64_t bytes;
    return !__builtin_add_overflow(last, 1, &last) &&
           !__builtin_mul_overflow(last, (uint64_t)flp_dtype_size(t->dtype), &bytes) &&
           !__builtin_add_overflow((uint64_t)t->offset, bytes, end);
}

/* The documented rules (docs/api.md "Tensors"): whether t is acceptable for e on ctx. */
static bool acceptable(const flp_context *ctx, const flp_tensor *t, const flp_tensor_expect *e,
                       bool *empty, uint64_t *end) {
    *empty = false;
    if (!t->buf || t->buf->ctx != ctx || t->dtype != e->dtype || t->ndim != e->ndim)
        return false;
    for (int i = 0; i < e->ndim; ++i) {
        if (t->shape[i] < 0 || (e->shape[i] >= 0 && t->shape[i] != e->shape[i]) || t->stride[i] < 0)
            return false;
        *empty |= t->shape[i] == 0;
    }
    if (t->stride[e->ndim - 1] != 1)
        return false;
    const uint64_t esize = flp_dtype_size(t->dtype), align = e->vector_aligned ? 16 : esize;
    if ((t->buf->device_address + t->offset) % align != 0)
        return false;
    for (int i = 0; e->vector_aligned && i + 1 < e->ndim; ++i)
        if (t->stride[i] % (int64_t)(16 / esize) != 0)
            return false;
    return *empty || (view_end(t, e->ndim, end) && *end <= t->buf->size);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static flp_context *ctx, *other; /* for the whole run: contexts are cheap but not free */
    if (!ctx) {
        ctx = fake_context();
        other = fake_context();
        FUZZ_CHECK(ctx && other, "fake_context");
    }
    fuzz_input in = {data, size};
    const uint8_t small = fuzz_u8(&in);
    const size_t bytes = small < 64 ? (size_t)small + 1 : (size_t)fuzz_range(&in, 1, 4096);
    flp_buffer *buf = NULL, *foreign = NULL;
    FUZZ_CHECK(flp_buffer_create(ctx, &(flp_buffer_desc){.size = bytes}, &buf) == FLP_OK,
               "buffer of %zu bytes", bytes);
    FUZZ_CHECK(flp_buffer_create(other, &(flp_buffer_desc){.size = bytes}, &foreign) == FLP_OK,
               "buffer of another context");
    for (int round = 0; round < 64 && fuzz_more(&in); ++round) {
        const flp_tensor_expect e = pick_expect(&in);
        const flp_tensor t = pick_view(&in, &e, buf, foreign);
        bool empty = false;
        uint64_t end = 0;
        const bool ok = acceptable(ctx, &t, &e, &empty, &end);
        const flp_status st = flp_tensor_check(ctx, CALL, &t, &e);
        const char *msg = flp_context_last_error(ctx);
        FUZZ_CHECK(st == (ok ? FLP_OK : FLP_ERROR_INVALID_ARGUMENT),
                   "%s [%d-D %s, vector %d] view [%d-D %s, offset %zu, buffer %zu]: status %d, "
                   "rules say %s (%s)",
                   e.name, e.ndim, flp_dtype_name(e.dtype), e.vector_aligned, t.ndim,
                   flp_dtype_name(t.dtype), t.offset, bytes, st, ok ? "accept" : "refuse", msg);
        if (ok && !empty) {
            /* AddressSanitizer reads these: the first and the last byte of the view */
            const volatile uint8_t *mem = t.buf->native;
            (void)mem[t.offset];
            (void)mem[end - 1];
        }
        if (!ok) {
            const size_t n = strlen(CALL ": "), len = strlen(e.name);
            FUZZ_CHECK(strncmp(msg, CALL ": ", n) == 0 && strncmp(msg + n, e.name, len) == 0 &&
                           (msg[n + len] == '.' || msg[n + len] == ' '),
                       "the message \"%s\" does not start with \"" CALL ": %s\"", msg, e.name);
        }
    }
    flp_buffer_destroy(buf);
    flp_buffer_destroy(foreign);
    return 0;
}
