/* Core suite: SHA-256 against the FIPS 180-4 examples, and the compiled-kernel cache
 * (core/kernel_cache.h): keys change with every part, entries round-trip through memory and
 * disk, a "second process" (the memory emptied) finds them on disk, every kind of corrupt entry
 * is a miss and is rewritten, two processes storing one entry at once leave a whole file, an
 * unwritable directory keeps entries in memory, and contexts resolve their directory. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "core/kernel_cache.h"
#include "tests/test_util.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- SHA-256 ----------------------------------------------------------------------------- */

static void expect_digest(const void *data, size_t size, const char *hex) {
    uint8_t digest[FLP_SHA256_BYTES];
    flp_sha256_of(data, size, digest);
    char got[2 * FLP_SHA256_BYTES + 1];
    for (int i = 0; i < FLP_SHA256_BYTES; i++)
        snprintf(got + 2 * i, 3, "%02x", digest[i]);
    assert_string_equal(got, hex);
}

static void test_sha256_vectors(void **state) {
    (void)state;
    expect_digest("", 0, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    expect_digest("abc", 3, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *two_blocks = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    expect_digest(two_blocks, strlen(two_blocks),
                  "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    /* a million 'a', fed in uneven pieces */
    flp_sha256 h;
    flp_sha256_init(&h);
    char piece[997];
    memset(piece, 'a', sizeof piece);
    size_t left = 1000000;
    for (size_t n = 1; left > 0; n = n % (sizeof piece - 7) + 7) { /* 1 to 996 bytes */
        const size_t take = n < left ? n : left;
        flp_sha256_update(&h, piece, take);
        left -= take;
    }
    uint8_t digest[FLP_SHA256_BYTES];
    flp_sha256_final(&h, digest);
    static const uint8_t million_a[FLP_SHA256_BYTES] = {
        0xcd, 0xc7, 0x6e, 0x5c, 0x99, 0x14, 0xfb, 0x92, 0x81, 0xa1, 0xc7,
        0xe2, 0x84, 0xd7, 0x3e, 0x67, 0xf1, 0x80, 0x9a, 0x48, 0xa4, 0x97,
        0x20, 0x0e, 0x04, 0x6d, 0x39, 0xcc, 0xc7, 0x11, 0x2c, 0xd0};
    assert_memory_equal(digest, million_a, sizeof digest);
}

/* ---- keys -------------------------------------------------------------------------------- */

static flp_kernel_key key_of(const char *a, const char *b, const char *c) {
    flp_kernel_key_builder kb;
    flp_kernel_key_begin(&kb);
    flp_kernel_key_add_text(&kb, "source", a);
    flp_kernel_key_add_text(&kb, "options", b);
    flp_kernel_key_add_text(&kb, "compiler", c);
    return flp_kernel_key_end(&kb);
}

static bool same_key(flp_kernel_key x, flp_kernel_key y) {
    return memcmp(x.hash, y.hash, sizeof x.hash) == 0;
}

static void test_keys(void **state) {
    (void)state;
    const flp_kernel_key base = key_of("kernel body", "-DX=1", "nvrtc 13.0");
    assert_true(same_key(base, key_of("kernel body", "-DX=1", "nvrtc 13.0")));
    assert_false(same_key(base, key_of("kernel bodY", "-DX=1", "nvrtc 13.0")));
    assert_false(same_key(base, key_of("kernel body", "-DX=2", "nvrtc 13.0")));
    assert_false(same_key(base, key_of("kernel body", "-DX=1", "nvrtc 13.1")));
    /* parts do not run together: ("ab", "c") against ("a", "bc") */
    assert_false(same_key(key_of("ab", "c", ""), key_of("a", "bc", "")));
    /* a label is part of the key */
    flp_kernel_key_builder kb;
    flp_kernel_key_begin(&kb);
    flp_kernel_key_add_text(&kb, "source", "kernel body");
    flp_kernel_key_add_text(&kb, "defines", "-DX=1");
    flp_kernel_key_add_text(&kb, "compiler", "nvrtc 13.0");
    assert_false(same_key(base, flp_kernel_key_end(&kb)));
}

/* ---- the cache ---------------------------------------------------------------------------- */

/* A fresh directory under the system's temporary one. */
static void temp_dir(char *dir, size_t size) {
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, size, "%s/flp-kernel-cache-XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
    assert_non_null(mkdtemp(dir));
}

/* A random image of size bytes. */
static uint8_t *random_image(size_t size, uint32_t seed) {
    uint8_t *image = malloc(size);
    assert_non_null(image);
    for (size_t i = 0; i < size; i++) {
        seed = seed * 1664525u + 1013904223u;
        image[i] = (uint8_t)(seed >> 24);
    }
    return image;
}

static void expect_hit(const char *dir, const flp_kernel_key *key, const uint8_t *image,
                       size_t size) {
    void *data = NULL;
    size_t got = 0;
    assert_true(flp_kernel_cache_find(NULL, dir, key, &data, &got));
    assert_int_equal(got, size);
    assert_memory_equal(data, image, size);
    free(data);
}

static void expect_miss(const char *dir, const flp_kernel_key *key) {
    void *data = (void *)1;
    size_t got = 7;
    assert_false(flp_kernel_cache_find(NULL, dir, key, &data, &got));
}

static void test_memory_and_disk(void **state) {
    (void)state;
    char dir[512];
    temp_dir(dir, sizeof dir);
    flp_kernel_cache_clear_memory();
    const flp_kernel_key key = key_of("memory and disk", "", "");
    expect_miss(dir, &key);
    uint8_t *image = random_image(100003, 7);
    assert_int_equal(flp_kernel_cache_store(NULL, dir, &key, image, 100003), FLP_OK);
    expect_hit(dir, &key, image, 100003);
    /* the entry file is there, header plus image */
    char path[4096];
    assert_true(flp_kernel_cache_entry_path(dir, &key, path, sizeof path));
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_size, 80 + 100003); /* the header, the image */
    /* a second process: nothing in memory, the entry from disk */
    flp_kernel_cache_clear_memory();
    expect_hit(dir, &key, image, 100003);
    /* memory only (no directory): found while the process lives, gone after */
    const flp_kernel_key only_memory = key_of("memory only", "", "");
    assert_int_equal(flp_kernel_cache_store(NULL, NULL, &only_memory, image, 64), FLP_OK);
    expect_hit(NULL, &only_memory, image, 64);
    expect_hit("", &only_memory, image, 64);
    flp_kernel_cache_clear_memory();
    expect_miss(dir, &only_memory);
    /* a store replaces an entry of the same key, in memory and on disk */
    uint8_t *other = random_image(5000, 99);
    assert_int_equal(flp_kernel_cache_store(NULL, dir, &key, other, 5000), FLP_OK);
    expect_hit(dir, &key, other, 5000);
    flp_kernel_cache_clear_memory();
    expect_hit(dir, &key, other, 5000);
    /* bad images are refused */
    assert_int_equal(flp_kernel_cache_store(NULL, dir, &key, image, 0), FLP_ERROR_INVALID_ARGUMENT);
    assert_int_equal(flp_kernel_cache_store(NULL, dir, &key, NULL, 5), FLP_ERROR_INVALID_ARGUMENT);
    free(image);
    free(other);
    flp_kernel_cache_clear_memory();
    test_remove_tree(dir);
}

/* Rewrites the entry file of key with f applied to its bytes. */
typedef size_t (*corruption)(uint8_t *bytes, size_t size);

static size_t flip_image_byte(uint8_t *bytes, size_t size) {
    bytes[size - 17] ^= 0x40;
    return size;
}
static size_t flip_magic(uint8_t *bytes, size_t size) {
    bytes[3] ^= 1;
    return size;
}
static size_t flip_key(uint8_t *bytes, size_t size) {
    bytes[8 + 5] ^= 0x80;
    return size;
}
static size_t flip_length(uint8_t *bytes, size_t size) {
    bytes[8 + 32] ^= 1;
    return size;
}
static size_t huge_length(uint8_t *bytes, size_t size) {
    bytes[8 + 32 + 7] = 0x7f;
    return size;
}
static size_t truncate_image(uint8_t *bytes, size_t size) {
    (void)bytes;
    return size - 100;
}
static size_t truncate_header(uint8_t *bytes, size_t size) {
    (void)bytes;
    (void)size;
    return 20;
}
static size_t empty_file(uint8_t *bytes, size_t size) {
    (void)bytes;
    (void)size;
    return 0;
}
static size_t trailing_bytes(uint8_t *bytes, size_t size) {
    bytes[size] = 0x55;
    return size + 1;
}

static void rewrite_entry(const char *path, corruption f) {
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    uint8_t *bytes = malloc(1 << 20);
    assert_non_null(bytes);
    const size_t size = fread(bytes, 1, 1 << 20, fp);
    fclose(fp);
    const size_t kept = f(bytes, size);
    fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(bytes, 1, kept, fp), kept);
    fclose(fp);
    free(bytes);
}

static void test_corrupt_entries(void **state) {
    (void)state;
    const corruption corruptions[] = {flip_image_byte, flip_magic,  flip_key,
                                      flip_length,     huge_length, truncate_image,
                                      truncate_header, empty_file,  trailing_bytes};
    char dir[512];
    temp_dir(dir, sizeof dir);
    const flp_kernel_key key = key_of("corrupt entries", "", "");
    char path[4096];
    assert_true(flp_kernel_cache_entry_path(dir, &key, path, sizeof path));
    uint8_t *image = random_image(4000, 3);
    for (size_t i = 0; i < sizeof corruptions / sizeof *corruptions; i++) {
        flp_kernel_cache_clear_memory();
        assert_int_equal(flp_kernel_cache_store(NULL, dir, &key, image, 4000), FLP_OK);
        flp_kernel_cache_clear_memory();
        rewrite_entry(path, corruptions[i]);
        expect_miss(dir, &key); /* never trusted */
        /* rebuilt: the next store rewrites the entry, which a new process then finds */
        assert_int_equal(flp_kernel_cache_store(NULL, dir, &key, image, 4000), FLP_OK);
        flp_kernel_cache_clear_memory();
        expect_hit(dir, &key, image, 4000);
    }
    /* an entry renamed under another key's name is refused: the key is in the file */
    const flp_kernel_key other = key_of("another entry", "", "");
    char other_path[4096];
    assert_true(flp_kernel_cache_entry_path(dir, &other, other_path, sizeof other_path));
    assert_int_equal(rename(path, other_path), 0);
    flp_kernel_cache_clear_memory();
    expect_miss(dir, &other);
    free(image);
    test_remove_tree(dir);
}

/* Processes storing the same entry at once, each many times, while others read it: every read
 * is a whole entry (one of the images, checked by the reader against both), and no temporary
 * file is left behind. */
static void test_concurrent_processes(void **state) {
    (void)state;
    char dir[512];
    temp_dir(dir, sizeof dir);
    const flp_kernel_key key = key_of("concurrent", "", "");
    enum { WRITERS = 4, READERS = 2, ROUNDS = 40, SIZE = 300000 };
    /* an entry before the processes start: every read has a whole file to find */
    uint8_t *first = random_image(SIZE, 0);
    assert_int_equal(flp_kernel_cache_store(NULL, dir, &key, first, SIZE), FLP_OK);
    free(first);
    pid_t pids[WRITERS + READERS];
    for (int p = 0; p < WRITERS + READERS; p++) {
        pids[p] = fork();
        assert_true(pids[p] >= 0);
        if (pids[p] != 0)
            continue;
        /* the child: writers store their own image, readers check what they find */
        uint8_t *mine = random_image(SIZE, (uint32_t)(p % 2));
        uint8_t *theirs = random_image(SIZE, (uint32_t)(1 - p % 2));
        int bad = 0;
        for (int r = 0; r < ROUNDS; r++) {
            flp_kernel_cache_clear_memory();
            if (p < WRITERS) {
                bad |= flp_kernel_cache_store(NULL, dir, &key, mine, SIZE) != FLP_OK;
            } else {
                void *data = NULL;
                size_t size = 0;
                if (!flp_kernel_cache_find(NULL, dir, &key, &data, &size)) {
                    bad = 1; /* a whole entry is always there */
                    continue;
                }
                bad |= size != SIZE ||
                       (memcmp(data, mine, SIZE) != 0 && memcmp(data, theirs, SIZE) != 0);
                free(data);
            }
        }
        _exit(bad);
    }
    for (int p = 0; p < WRITERS + READERS; p++) {
        int status = 0;
        assert_int_equal(waitpid(pids[p], &status, 0), pids[p]);
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
    }
    flp_kernel_cache_clear_memory();
    void *data = NULL;
    size_t size = 0;
    assert_true(flp_kernel_cache_find(NULL, dir, &key, &data, &size));
    assert_int_equal(size, SIZE);
    free(data);
    char command[1200];
    snprintf(command, sizeof command, "test -z \"$(find '%s' -name '*.tmp')\"", dir);
    assert_int_equal(system(command), 0);
    flp_kernel_cache_clear_memory();
    test_remove_tree(dir);
}

static void test_unwritable_directory(void **state) {
    (void)state;
    flp_kernel_cache_clear_memory();
    char dir[512];
    temp_dir(dir, sizeof dir);
    /* a regular file where the directory should be */
    char blocked[600];
    snprintf(blocked, sizeof blocked, "%s/file", dir);
    FILE *fp = fopen(blocked, "wb");
    assert_non_null(fp);
    fclose(fp);
    char under_file[700];
    snprintf(under_file, sizeof under_file, "%s/cache", blocked);
    const flp_kernel_key key = key_of("unwritable", "", "");
    uint8_t *image = random_image(1000, 5);
    assert_int_equal(flp_kernel_cache_store(NULL, under_file, &key, image, 1000), FLP_OK);
    expect_hit(under_file, &key, image, 1000); /* from memory */
    flp_kernel_cache_clear_memory();
    expect_miss(under_file, &key);
    free(image);
    test_remove_tree(dir);
}

/* Entries are read and written only in a directory of this user nobody else may write to, and
 * only as regular files: a FIFO at an entry's path is a miss (it would block a read), as is a
 * symbolic link. */
static void test_untrusted_places(void **state) {
    (void)state;
    char dir[512];
    temp_dir(dir, sizeof dir);
    const flp_kernel_key key = key_of("untrusted", "", "");
    uint8_t *image = random_image(2000, 11);
    char path[4096], entries[700];
    assert_true(flp_kernel_cache_entry_path(dir, &key, path, sizeof path));
    snprintf(entries, sizeof entries, "%s/" FLP_KERNEL_CACHE_FORMAT, dir);
    flp_kernel_cache_clear_memory();
    assert_int_equal(flp_kernel_cache_store(NULL, dir, &key, image, 2000), FLP_OK);
    flp_kernel_cache_clear_memory();
    expect_hit(dir, &key, image, 2000);
    /* the entries' directory writable by others: neither read nor written */
    assert_int_equal(chmod(entries, 0777), 0);
    flp_kernel_cache_clear_memory();
    expect_miss(dir, &key);
    assert_int_equal(flp_kernel_cache_store(NULL, dir, &key, image, 2000), FLP_OK); /* memory */
    assert_int_equal(chmod(entries, 0700), 0);
    flp_kernel_cache_clear_memory();
    expect_hit(dir, &key, image, 2000); /* the earlier, trusted write */
    /* a FIFO at the entry's path: a miss at once, not a hang */
    assert_int_equal(unlink(path), 0);
    assert_int_equal(mkfifo(path, 0600), 0);
    flp_kernel_cache_clear_memory();
    expect_miss(dir, &key);
    /* a symbolic link to a valid entry: a miss */
    assert_int_equal(unlink(path), 0);
    const flp_kernel_key other = key_of("untrusted other", "", "");
    char other_path[4096];
    assert_true(flp_kernel_cache_entry_path(dir, &other, other_path, sizeof other_path));
    assert_int_equal(flp_kernel_cache_store(NULL, dir, &key, image, 2000), FLP_OK);
    assert_int_equal(rename(path, other_path), 0);
    assert_int_equal(symlink(other_path, path), 0);
    flp_kernel_cache_clear_memory();
    expect_miss(dir, &key);
    /* an image over the limit is refused before anything is read or written */
    assert_int_equal(
        flp_kernel_cache_store(NULL, dir, &key, image, (size_t)FLP_KERNEL_CACHE_MAX_IMAGE + 1),
        FLP_ERROR_INVALID_ARGUMENT);
    free(image);
    flp_kernel_cache_clear_memory();
    test_remove_tree(dir);
}

static void test_directory_choice(void **state) {
    (void)state;
    char *saved_home = getenv("HOME") ? strdup(getenv("HOME")) : NULL;
    char dir[FLP_CACHE_DIR_SIZE];
    assert_true(flp_kernel_cache_dir("/some/where", dir, sizeof dir));
    assert_string_equal(dir, "/some/where");
    assert_true(flp_kernel_cache_dir("", dir, sizeof dir));
    assert_string_equal(dir, "");
    setenv("FLP_CACHE_DIR", "/from/env", 1);
    assert_true(flp_kernel_cache_dir(NULL, dir, sizeof dir));
    assert_string_equal(dir, "/from/env");
    setenv("FLP_CACHE_DIR", "", 1);
    assert_true(flp_kernel_cache_dir(NULL, dir, sizeof dir));
    assert_string_equal(dir, "");
    unsetenv("FLP_CACHE_DIR");
    setenv("XDG_CACHE_HOME", "/xdg", 1);
    setenv("HOME", "/home/user", 1);
    assert_true(flp_kernel_cache_dir(NULL, dir, sizeof dir));
    assert_string_equal(dir, "/xdg/flashport");
    setenv("XDG_CACHE_HOME", "relative", 1); /* ignored, as the XDG rules say */
    assert_true(flp_kernel_cache_dir(NULL, dir, sizeof dir));
    assert_string_equal(dir, "/home/user/.cache/flashport");
    setenv("HOME", "relative/home", 1); /* a relative HOME is no home */
    unsetenv("XDG_CACHE_HOME");
    assert_true(flp_kernel_cache_dir(NULL, dir, sizeof dir));
    assert_string_equal(dir, "");
    unsetenv("HOME");
    assert_true(flp_kernel_cache_dir(NULL, dir, sizeof dir));
    assert_string_equal(dir, "");
    if (saved_home)
        setenv("HOME", saved_home, 1);
    free(saved_home);
    /* too long for the buffer: no disk cache */
    char small[8];
    assert_false(flp_kernel_cache_dir("/a/long/path", small, sizeof small));
    assert_string_equal(small, "");
}

/* A context refuses a cache_dir longer than its limit (the message names it) and accepts one
 * at the limit. */
static void test_context_cache_dir(void **state) {
    (void)state;
    char *long_dir = malloc(FLP_CACHE_DIR_SIZE + 1);
    assert_non_null(long_dir);
    memset(long_dir, 'x', FLP_CACHE_DIR_SIZE);
    long_dir[FLP_CACHE_DIR_SIZE] = '\0';
    flp_context_desc desc = {.backend = FLP_BACKEND_VULKAN, .cache_dir = long_dir};
    flp_context *ctx = (flp_context *)1;
    assert_int_equal(flp_context_create(&desc, &ctx), FLP_ERROR_INVALID_ARGUMENT);
    assert_null(ctx);
    /* at the limit: not refused for its length (the backend may still find no device) */
    long_dir[FLP_CACHE_DIR_SIZE - 1] = '\0';
    const flp_status st = flp_context_create(&desc, &ctx);
    assert_int_not_equal(st, FLP_ERROR_INVALID_ARGUMENT);
    if (st == FLP_OK)
        flp_context_destroy(ctx);
    free(long_dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sha256_vectors),       cmocka_unit_test(test_keys),
        cmocka_unit_test(test_memory_and_disk),      cmocka_unit_test(test_corrupt_entries),
        cmocka_unit_test(test_concurrent_processes), cmocka_unit_test(test_unwritable_directory),
        cmocka_unit_test(test_untrusted_places),     cmocka_unit_test(test_directory_choice),
        cmocka_unit_test(test_context_cache_dir),
    };
    return cmocka_run_group_tests_name("kernel_cache", tests, NULL, NULL);
}
