/* Resolving a table of symbols from a dlopen()ed library, for the test and benchmark programs
 * that drive libcuda themselves (tests/test_cuda.c, bench/cuda_graph.c). Header only. */
#ifndef FLP_TOOLS_DL_SYMBOLS_H
#define FLP_TOOLS_DL_SYMBOLS_H

#include <dlfcn.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

/* A function pointer to fill (its address, cast) and the symbol that fills it. */
typedef struct dl_symbol {
    void **slot;
    const char *name;
} dl_symbol;

/* Fills every slot from lib; on the first missing symbol prints "<who> has no <name>" to stderr
 * and returns false (slots before it are filled, the rest untouched). */
static inline bool dl_symbols_resolve(void *lib, const dl_symbol *syms, size_t n, const char *who) {
    for (size_t i = 0; i < n; i++) {
        void *p = dlsym(lib, syms[i].name);
        if (!p) {
            fprintf(stderr, "%s has no %s\n", who, syms[i].name);
            return false;
        }
        /* a data pointer into a function pointer's storage, as POSIX dlsym requires */
        memcpy(syms[i].slot, &p, sizeof p);
    }
    return true;
}

#endif /* FLP_TOOLS_DL_SYMBOLS_H */
