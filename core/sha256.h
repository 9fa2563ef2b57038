/* SHA-256 (FIPS 180-4): the compiled-kernel cache's keys and its entries' checksums
 * (core/kernel_cache.h). Incremental; no allocation. */
#ifndef FLP_CORE_SHA256_H
#define FLP_CORE_SHA256_H

#include <stddef.h>
#include <stdint.h>

#define FLP_SHA256_BYTES 32

typedef struct flp_sha256 {
    uint32_t state[8];
    uint64_t length;   /* bytes hashed so far */
    uint8_t block[64]; /* the partial block */
    size_t block_fill; /* its bytes */
} flp_sha256;

void flp_sha256_init(flp_sha256 *h);
void flp_sha256_update(flp_sha256 *h, const void *data, size_t size);
/* Writes the digest to out[FLP_SHA256_BYTES]; h must be initialised again before reuse. */
void flp_sha256_final(flp_sha256 *h, uint8_t out[FLP_SHA256_BYTES]);

/* The digest of data[size] in one call. */
void flp_sha256_of(const void *data, size_t size, uint8_t out[FLP_SHA256_BYTES]);

#endif /* FLP_CORE_SHA256_H */
