/* The compiled-kernel cache (docs/design.md 8.3): images a backend compiles at run time (a CUDA
 * cubin or PTX from NVRTC, a SPIR-V module from glslang), kept in memory for the process and on
 * disk across processes. An entry's key is a hash of everything that reached the compiler: the
 * caller adds each part (source, definitions, options, compiler and driver versions, device) to
 * a key builder. Entries are never trusted: a disk entry that fails any check is a miss. */
#ifndef FLP_CORE_KERNEL_CACHE_H
#define FLP_CORE_KERNEL_CACHE_H

#include "core/internal.h"
#include "core/sha256.h"

typedef struct flp_kernel_key {
    uint8_t hash[FLP_SHA256_BYTES];
} flp_kernel_key;

typedef struct flp_kernel_key_builder {
    flp_sha256 sha;
} flp_kernel_key_builder;

/* The disk format's version: a subdirectory of the cache directory, so that a library with
 * another format never reads these entries. */
#define FLP_KERNEL_CACHE_FORMAT "kernels-1"

/* The largest image an entry may hold (a larger header is corrupt). */
#define FLP_KERNEL_CACHE_MAX_IMAGE ((uint64_t)1 << 30)

void flp_kernel_key_begin(flp_kernel_key_builder *b);
/* Adds one part: its label and its bytes, each after its length, so that two different lists
 * of parts never run together into the same bytes. */
void flp_kernel_key_add(flp_kernel_key_builder *b, const char *label, const void *data,
                        size_t size);
/* The same for a NUL-terminated text (NULL counts as ""). */
void flp_kernel_key_add_text(flp_kernel_key_builder *b, const char *label, const char *text);
flp_kernel_key flp_kernel_key_end(flp_kernel_key_builder *b);

/* The disk directory of a context whose flp_context_desc.cache_dir is configured (may be NULL):
 * configured when not NULL; else the environment's FLP_CACHE_DIR when set; else
 * $XDG_CACHE_HOME/flashport (an absolute XDG_CACHE_HOME only), else $HOME/.cache/flashport
 * (an absolute HOME only); the environment as secure_getenv reads it.
 * An empty result (configured "" or FLP_CACHE_DIR="", or no home) means no disk cache. Written to
 * dir[size]; false when it does not fit (no disk cache). */
bool flp_kernel_cache_dir(const char *configured, char *dir, size_t size);

/* The disk side reads and writes entries only in a FLP_KERNEL_CACHE_FORMAT directory of the
 * process's user that nobody else may write to (an entry is code that will run), only regular
 * files, never through a link. */

/* The image of key: from the process's memory, else from the disk directory dir (NULL or "":
 * none), which then fills the memory too. On a hit, a copy in *data (free with flp_free) and its
 * bytes in *size. A disk entry that fails a check (header, key, size, checksum, a short read)
 * is a miss, logged at FLP_LOG_DEBUG on ctx (may be NULL); the next store replaces it. A copy
 * that cannot be allocated is a miss too. Thread-safe. */
bool flp_kernel_cache_find(const flp_context *ctx, const char *dir, const flp_kernel_key *key,
                           void **data, size_t *size);

/* Stores a copy of data[size] (size >= 1) under key in memory and, unless dir is NULL or "", on
 * disk: the entry is written to a temporary file of this call's own, then renamed over its name,
 * so that a reader or another process storing the same entry at once only ever sees a whole
 * file. Directories are created as needed (mode 0700). A directory or file that cannot be
 * written leaves the entry in memory only, logged at FLP_LOG_DEBUG: the next process compiles
 * again. FLP_ERROR_OUT_OF_MEMORY when the memory copy cannot be made, FLP_ERROR_INVALID_ARGUMENT
 * for an empty image or one over FLP_KERNEL_CACHE_MAX_IMAGE. Thread-safe. */
flp_status flp_kernel_cache_store(const flp_context *ctx, const char *dir,
                                  const flp_kernel_key *key, const void *data, size_t size);

/* Empties the process's memory cache (tests: a "second process" must find entries on disk). */
void flp_kernel_cache_clear_memory(void);

/* The path of key's entry under dir into path[size]; false when it does not fit. */
bool flp_kernel_cache_entry_path(const char *dir, const flp_kernel_key *key, char *path,
                                 size_t size);

#endif /* FLP_CORE_KERNEL_CACHE_H */
