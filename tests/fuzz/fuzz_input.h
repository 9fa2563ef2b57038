/* Reading a fuzz input as a stream of small decisions, and the check that ends a run. Shared by
 * the targets of tests/fuzz. An exhausted input reads as zeros, so every input is a valid
 * program (libFuzzer only has to find the interesting ones). */
#ifndef FLP_TESTS_FUZZ_INPUT_H
#define FLP_TESTS_FUZZ_INPUT_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct fuzz_input {
    const uint8_t *data;
    size_t size;
} fuzz_input;

static inline bool fuzz_more(const fuzz_input *in) {
    return in->size > 0;
}

static inline uint8_t fuzz_u8(fuzz_input *in) {
    if (in->size == 0)
        return 0;
    in->size--;
    return *in->data++;
}

static inline uint64_t fuzz_u64(fuzz_input *in) {
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i)
        v = v << 8 | fuzz_u8(in);
    return v;
}

/* Uniform enough in [lo, hi] (lo <= hi): 4 bytes modulo the span. */
static inline int64_t fuzz_range(fuzz_input *in, int64_t lo, int64_t hi) {
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i)
        v = v << 8 | fuzz_u8(in);
    return lo + (int64_t)(v % (uint64_t)(hi - lo + 1));
}

/* An int64 that is mostly small (a few negative), sometimes an edge (powers of two and their
 * neighbours, INT64_MIN/MAX): what sign and overflow checks get wrong. */
static inline int64_t fuzz_i64(fuzz_input *in) {
    const uint8_t kind = fuzz_u8(in);
    if (kind < 160)
        return (int64_t)(kind % 44) - 4;
    if (kind < 200)
        return (int64_t)fuzz_range(in, 0, 1 << 20);
    if (kind < 236) {
        const int shift = fuzz_u8(in) % 63;
        const int64_t near = (int64_t)1 << shift;
        return near + (int64_t)(fuzz_u8(in) % 5) - 2;
    }
    switch (kind % 6) {
    case 0:
        return INT64_MAX;
    case 1:
        return INT64_MAX - (int64_t)(fuzz_u8(in) % 16);
    case 2:
        return INT64_MIN;
    case 3:
        return -1;
    case 4:
        return -(int64_t)(fuzz_u8(in) % 1000) - 1;
    default:
        return (int64_t)fuzz_u64(in);
    }
}

/* Reports a broken property and aborts: libFuzzer records the input as a crash, the corpus
 * replay fails its test. */
static void fuzz_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4), noreturn, unused));
static void fuzz_fail(const char *file, int line, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s:%d: fuzz check failed: ", file, line);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    abort();
}

#define FUZZ_CHECK(cond, ...)                                                                      \
    do {                                                                                           \
        if (!(cond))                                                                               \
            fuzz_fail(__FILE__, __LINE__, __VA_ARGS__);                                            \
    } while (0)

#endif /* FLP_TESTS_FUZZ_INPUT_H */
