/* A main for a fuzz target without libFuzzer: runs LLVMFuzzerTestOneInput on every file named on
 * the command line, and on every file of every directory named, in name order. So the corpus of
 * tests/fuzz/corpus is a regression test of the normal suites (any compiler, ASan/UBSan builds
 * included). A failed check aborts; an empty corpus fails too, so that a lost corpus is seen.
 *
 * -random=N also runs N inputs of random bytes (16 to 1024 of them, a fixed seed: the same inputs
 * every time). The corpus keeps the coverage libFuzzer found; these add the many values that
 * cover no new edge (a stride of -1, an offset 8 bytes past a vector) at no cost in files. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Runs the target on one file; returns 1 when it ran, 0 when the file could not be read. */
static int replay_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return 0;
    }
    size_t cap = 4096, n = 0;
    uint8_t *data = malloc(cap);
    size_t got;
    while (data && (got = fread(data + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            uint8_t *bigger = realloc(data, cap *= 2);
            if (!bigger)
                free(data);
            data = bigger;
        }
    }
    fclose(f);
    if (!data) {
        fprintf(stderr, "%s: out of memory\n", path);
        return 0;
    }
    LLVMFuzzerTestOneInput(data, n);
    free(data);
    return 1;
}

static int by_name(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Runs every regular file of dir in name order; returns how many ran, -1 on an unreadable one. */
static int replay_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) {
        perror(dir);
        return -1;
    }
    char **names = NULL;
    size_t count = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.')
            continue;
        char **more = realloc(names, (count + 1) * sizeof *names);
        if (!more)
            break;
        names = more;
        names[count++] = strdup(e->d_name);
    }
    closedir(d);
    qsort(names, count, sizeof *names, by_name);
    int ran = 0;
    for (size_t i = 0; i < count; ++i) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        struct stat st;
        if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
            if (!replay_file(path))
                ran = -1;
            else if (ran >= 0)
                ran++;
        }
        free(names[i]);
    }
    free(names);
    return ran;
}

/* splitmix64 */
static uint64_t next_random(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int replay_random(long count) {
    uint64_t state = 0x5eedf022u;
    uint8_t data[1024];
    for (long i = 0; i < count; ++i) {
        const size_t n = 16 + next_random(&state) % (sizeof data - 15);
        for (size_t j = 0; j < n; ++j)
            data[j] = (uint8_t)next_random(&state);
        LLVMFuzzerTestOneInput(data, n);
    }
    return (int)count;
}

int main(int argc, char **argv) {
    int total = 0;
    for (int i = 1; i < argc; ++i) {
        if (strncmp(argv[i], "-random=", 8) == 0) {
            total += replay_random(strtol(argv[i] + 8, NULL, 10));
            continue;
        }
        struct stat st;
        if (stat(argv[i], &st) != 0) {
            perror(argv[i]);
            return 1;
        }
        const int ran = S_ISDIR(st.st_mode) ? replay_dir(argv[i]) : replay_file(argv[i]);
        if (ran < 0 || (ran == 0 && !S_ISDIR(st.st_mode)))
            return 1;
        total += ran;
    }
    if (total == 0) {
        fprintf(stderr, "%s: no input to replay\n", argc ? argv[0] : "replay");
        return 1;
    }
    printf("%d input(s) replayed\n", total);
    return 0;
}
