/* The compiled-kernel cache: a process-wide list in memory, one file per entry on disk.
 *
 * An entry file, FLP_KERNEL_CACHE_FORMAT/<key as 64 hex digits>.bin under the directory:
 *   magic         8 bytes  ENTRY_MAGIC
 *   key          32 bytes  the entry's key (a file renamed or copied under another name fails)
 *   image bytes   8 bytes  little-endian
 *   image hash   32 bytes  SHA-256 of the image
 *   image
 * and nothing after it. */
#include "core/kernel_cache.h"
#include "core/alloc.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char ENTRY_MAGIC[8] = {'f', 'l', 'p', 'k', 'e', 'r', 'n', '1'};
#define HEADER_BYTES (8 + FLP_SHA256_BYTES + 8 + FLP_SHA256_BYTES)

/* ---- keys ------------------------------------------------------------------------------ */

static void add_length(flp_sha256 *h, uint64_t n) {
    uint8_t bytes[8];
    for (int i = 0; i < 8; i++)
        bytes[i] = (uint8_t)(n >> (8 * i));
    flp_sha256_update(h, bytes, sizeof bytes);
}

void flp_kernel_key_begin(flp_kernel_key_builder *b) {
    flp_sha256_init(&b->sha);
    flp_kernel_key_add_text(b, "flashport kernel key", FLP_KERNEL_CACHE_FORMAT);
}

void flp_kernel_key_add(flp_kernel_key_builder *b, const char *label, const void *data,
                        size_t size) {
    const size_t label_bytes = label ? strlen(label) : 0;
    add_length(&b->sha, label_bytes);
    flp_sha256_update(&b->sha, label, label_bytes);
    add_length(&b->sha, size);
    flp_sha256_update(&b->sha, data, size);
}

void flp_kernel_key_add_text(flp_kernel_key_builder *b, const char *label, const char *text) {
    flp_kernel_key_add(b, label, text ? text : "", text ? strlen(text) : 0);
}

flp_kernel_key flp_kernel_key_end(flp_kernel_key_builder *b) {
    flp_kernel_key key;
    flp_sha256_final(&b->sha, key.hash);
    return key;
}

/* ---- where -------------------------------------------------------------------------------- */

static bool copy_text(char *dst, size_t size, const char *a, const char *b) {
    const int n = snprintf(dst, size, "%s%s", a, b);
    if (n < 0 || (size_t)n >= size) {
        if (size > 0)
            dst[0] = '\0';
        return false;
    }
    return true;
}

bool flp_kernel_cache_dir(const char *configured, char *dir, size_t size) {
    if (configured)
        return copy_text(dir, size, configured, "");
    /* secure_getenv: a set-user-id process takes no cache directory from its caller */
    const char *env = secure_getenv("FLP_CACHE_DIR");
    if (env)
        return copy_text(dir, size, env, "");
    const char *xdg = secure_getenv("XDG_CACHE_HOME");
    if (xdg && xdg[0] == '/') /* the XDG rule: a relative path is ignored */
        return copy_text(dir, size, xdg, "/flashport");
    const char *home = secure_getenv("HOME");
    if (home && home[0] == '/')
        return copy_text(dir, size, home, "/.cache/flashport");
    return copy_text(dir, size, "", "");
}

static void hex_of(const flp_kernel_key *key, char hex[2 * FLP_SHA256_BYTES + 1]) {
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < FLP_SHA256_BYTES; i++) {
        hex[2 * i] = digits[key->hash[i] >> 4];
        hex[2 * i + 1] = digits[key->hash[i] & 15];
    }
    hex[2 * FLP_SHA256_BYTES] = '\0';
}

bool flp_kernel_cache_entry_path(const char *dir, const flp_kernel_key *key, char *path,
                                 size_t size) {
    char hex[2 * FLP_SHA256_BYTES + 1];
    hex_of(key, hex);
    const int n = snprintf(path, size, "%s/" FLP_KERNEL_CACHE_FORMAT "/%s.bin", dir, hex);
    return n > 0 && (size_t)n < size;
}

/* ---- memory ------------------------------------------------------------------------------- */

typedef struct memory_entry {
    flp_kernel_key key;
    void *data;
    size_t size;
    struct memory_entry *next;
} memory_entry;

static pthread_mutex_t memory_lock = PTHREAD_MUTEX_INITIALIZER;
static memory_entry *memory_entries; /* newest first */

/* A copy of key's image from memory. */
static bool memory_find(const flp_kernel_key *key, void **data, size_t *size) {
    bool found = false;
    pthread_mutex_lock(&memory_lock);
    for (const memory_entry *e = memory_entries; e; e = e->next) {
        if (memcmp(e->key.hash, key->hash, sizeof key->hash) != 0)
            continue;
        void *copy = flp_malloc(e->size);
        if (copy) {
            memcpy(copy, e->data, e->size);
            *data = copy;
            *size = e->size;
            found = true;
        }
        break;
    }
    pthread_mutex_unlock(&memory_lock);
    return found;
}

/* Keeps a copy of data under key (replacing an entry of the same key). */
static bool memory_store(const flp_kernel_key *key, const void *data, size_t size) {
    memory_entry *fresh = flp_malloc(sizeof *fresh);
    void *copy = flp_malloc(size);
    if (!fresh || !copy) {
        flp_free(fresh);
        flp_free(copy);
        return false;
    }
    memcpy(copy, data, size);
    *fresh = (memory_entry){.key = *key, .data = copy, .size = size};
    pthread_mutex_lock(&memory_lock);
    memory_entry **at = &memory_entries;
    while (*at && memcmp((*at)->key.hash, key->hash, sizeof key->hash) != 0)
        at = &(*at)->next;
    if (*at) { /* the same key twice (two threads compiled it): the older copy goes */
        memory_entry *old = *at;
        *at = old->next;
        flp_free(old->data);
        flp_free(old);
    }
    fresh->next = memory_entries;
    memory_entries = fresh;
    pthread_mutex_unlock(&memory_lock);
    return true;
}

void flp_kernel_cache_clear_memory(void) {
    pthread_mutex_lock(&memory_lock);
    memory_entry *e = memory_entries;
    memory_entries = NULL;
    pthread_mutex_unlock(&memory_lock);
    while (e) {
        memory_entry *next = e->next;
        flp_free(e->data);
        flp_free(e);
        e = next;
    }
}

/* ---- disk --------------------------------------------------------------------------------- */

/* Reads (or writes) exactly size bytes, again after an interrupted call; false on an error or
 * end of file. */
static bool transfer_all(int fd, uint8_t *p, size_t size, bool writing) {
    while (size > 0) {
        const ssize_t n = writing ? write(fd, p, size) : read(fd, p, size);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return false;
        p += n;
        size -= (size_t)n;
    }
    return true;
}

static bool read_all(int fd, void *buf, size_t size) {
    return transfer_all(fd, buf, size, false);
}

static bool write_all(int fd, const void *buf, size_t size) {
    return transfer_all(fd, (uint8_t *)buf, size, true); /* write() only reads it */
}

static void header_of(const flp_kernel_key *key, const void *data, size_t size,
                      uint8_t header[HEADER_BYTES]) {
    memcpy(header, ENTRY_MAGIC, 8);
    memcpy(header + 8, key->hash, FLP_SHA256_BYTES);
    for (int i = 0; i < 8; i++)
        header[8 + FLP_SHA256_BYTES + i] = (uint8_t)((uint64_t)size >> (8 * i));
    flp_sha256_of(data, size, header + 16 + FLP_SHA256_BYTES);
}

/* The reason entry file fd (of key) fails a check, or NULL with its image in *data, *size. */
static const char *read_entry(int fd, const flp_kernel_key *key, void **data, size_t *size) {
    uint8_t header[HEADER_BYTES];
    if (!read_all(fd, header, sizeof header))
        return "shorter than its header";
    if (memcmp(header, ENTRY_MAGIC, 8) != 0)
        return "not an entry of this format";
    if (memcmp(header + 8, key->hash, FLP_SHA256_BYTES) != 0)
        return "the key of another entry";
    uint64_t bytes = 0;
    for (int i = 0; i < 8; i++)
        bytes |= (uint64_t)header[8 + FLP_SHA256_BYTES + i] << (8 * i);
    struct stat st;
    if (bytes == 0 || bytes > FLP_KERNEL_CACHE_MAX_IMAGE)
        return "an image size out of range";
    if (fstat(fd, &st) != 0 || (uint64_t)st.st_size != HEADER_BYTES + bytes)
        return "a file size other than its header says";
    void *image = flp_malloc((size_t)bytes);
    if (!image)
        return "no memory to read it";
    uint8_t hash[FLP_SHA256_BYTES];
    if (!read_all(fd, image, (size_t)bytes)) {
        flp_free(image);
        return "a short read";
    }
    flp_sha256_of(image, (size_t)bytes, hash);
    if (memcmp(hash, header + 16 + FLP_SHA256_BYTES, sizeof hash) != 0) {
        flp_free(image);
        return "an image that fails its checksum";
    }
    *data = image;
    *size = (size_t)bytes;
    return NULL;
}

/* The reason the entries' directory under dir (FLP_KERNEL_CACHE_FORMAT) may not be trusted,
 * or NULL: it must be a directory of this user that nobody else may write to (an entry is code
 * that will run; its checksum finds corruption, not an entry planted by someone else). A
 * missing directory is "missing". */
static const char *untrusted_dir(const char *entries) {
    struct stat st;
    if (stat(entries, &st) != 0)
        return "missing";
    if (!S_ISDIR(st.st_mode))
        return "not a directory";
    if (st.st_uid != geteuid())
        return "owned by another user";
    if (st.st_mode & (S_IWGRP | S_IWOTH))
        return "writable by its group or others";
    return NULL;
}

/* The directory of key's entry path (its last '/' cut). */
static void parent_of(const char *path, char parent[4096]) {
    memcpy(parent, path, strlen(path) + 1);
    *strrchr(parent, '/') = '\0';
}

static bool disk_find(const flp_context *ctx, const char *dir, const flp_kernel_key *key,
                      void **data, size_t *size) {
    char path[4096], parent[4096];
    if (!flp_kernel_cache_entry_path(dir, key, path, sizeof path))
        return false;
    parent_of(path, parent);
    const char *distrust = untrusted_dir(parent);
    if (distrust) {
        if (strcmp(distrust, "missing") != 0)
            flp_log(ctx, FLP_LOG_DEBUG, "kernel cache: %s is %s: not read", parent, distrust);
        return false;
    }
    /* not through a link, and never blocking (a FIFO put there would hang the open) */
    const int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0)
        return false; /* not there yet: the usual miss */
    struct stat st;
    const char *why = fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) ? "not a regular file"
                                                                  : read_entry(fd, key, data, size);
    close(fd);
    if (why)
        flp_log(ctx, FLP_LOG_DEBUG, "kernel cache: %s is %s: compiling again", path, why);
    return why == NULL;
}

/* Creates dir and its missing parents (mode 0700); 0 when it exists as a directory, else an
 * errno value. */
static int make_dirs(char *dir) {
    struct stat st;
    if (stat(dir, &st) == 0)
        return S_ISDIR(st.st_mode) ? 0 : ENOTDIR;
    for (char *p = dir + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        const int error = mkdir(dir, 0700) == 0 || errno == EEXIST ? 0 : errno;
        *p = '/';
        if (error)
            return error;
    }
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        return errno;
    return stat(dir, &st) == 0 && S_ISDIR(st.st_mode) ? 0 : ENOTDIR;
}

/* Temporary files of this process are numbered, so that two threads never share one. */
static atomic_uint temp_counter;

/* Writes key's entry under dir (path: the entry's path, or "" when too long): NULL, or why it
 * was not written (into why[size] when an errno value says it). */
static const char *disk_store(const char *dir, const flp_kernel_key *key, const void *data,
                              size_t size, char path[4096], char *why, size_t why_size) {
    path[0] = '\0';
    if (!flp_kernel_cache_entry_path(dir, key, path, 4096))
        return "the path is too long";
    char parent[4096];
    parent_of(path, parent);
    const int dir_error = make_dirs(parent);
    if (dir_error)
        return strerror_r(dir_error, why, why_size);
    const char *distrust = untrusted_dir(parent);
    if (distrust)
        return distrust;
    char temp[4096 + 64];
    snprintf(temp, sizeof temp, "%s.%ld.%u.tmp", path, (long)getpid(),
             atomic_fetch_add(&temp_counter, 1u));
    const int fd = open(temp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return strerror_r(errno, why, why_size);
    uint8_t header[HEADER_BYTES];
    header_of(key, data, size, header);
    const bool written = write_all(fd, header, sizeof header) && write_all(fd, data, size);
    int error = written ? 0 : errno ? errno : EIO; /* a write of 0 bytes sets no errno */
    if (close(fd) != 0 && !error)
        error = errno;
    if (!error && rename(temp, path) != 0)
        error = errno;
    if (error) {
        unlink(temp);
        return strerror_r(error, why, why_size);
    }
    return NULL;
}

/* ---- the cache ---------------------------------------------------------------------------- */

bool flp_kernel_cache_find(const flp_context *ctx, const char *dir, const flp_kernel_key *key,
                           void **data, size_t *size) {
    if (memory_find(key, data, size))
        return true;
    if (!dir || dir[0] == '\0' || !disk_find(ctx, dir, key, data, size))
        return false;
    memory_store(key, *data, *size); /* best effort: the caller has its copy either way */
    return true;
}

flp_status flp_kernel_cache_store(const flp_context *ctx, const char *dir,
                                  const flp_kernel_key *key, const void *data, size_t size) {
    if (!data || size == 0 || (uint64_t)size > FLP_KERNEL_CACHE_MAX_IMAGE)
        return FLP_ERROR_INVALID_ARGUMENT;
    if (!memory_store(key, data, size))
        return FLP_ERROR_OUT_OF_MEMORY;
    if (dir && dir[0] != '\0') {
        char path[4096], buf[128];
        const char *why = disk_store(dir, key, data, size, path, buf, sizeof buf);
        if (why)
            flp_log(ctx, FLP_LOG_DEBUG, "kernel cache: %s not written (%s): kept in memory only",
                    path[0] ? path : dir, why);
    }
    return FLP_OK;
}
