/* flashport-bench-compile: run-time compile times per backend (docs/design.md 8.2, 8.3).
 *
 *   Vulkan (glslang, when the library has it): each shader compiled cold (the memory cache
 *   emptied, no disk cache), then read back from a disk cache (memory emptied) and from the
 *   memory cache; medians of --rounds (default 5). glslang's start-up, paid once per process,
 *   is measured apart (the first compile, minus a cold compile of the same shader after it).
 *   CUDA (NVRTC, when the CUDA backend is built and libnvrtc loads): one configuration's
 *   kernels (bf16, head dim 128) for sm_90a and sm_80, cold, once each (--no-nvrtc leaves it
 *   out). NVRTC builds do not go through the kernel cache yet.
 * No device is needed: SPIR-V and cubins are compiled, not loaded. */
#include "core/internal.h"
#include "core/kernel_cache.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifdef FLP_BENCH_VULKAN_JIT
#include "backend-vulkan/vk_jit.h"
#endif
#ifdef FLP_BENCH_NVRTC
#include "backend-cuda/cu_nvrtc.h"
#endif

#if defined(FLP_BENCH_VULKAN_JIT) || defined(FLP_BENCH_NVRTC)
static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return 1e3 * (double)t.tv_sec + 1e-6 * (double)t.tv_nsec;
}

#endif

#ifdef FLP_BENCH_VULKAN_JIT
static int compare_doubles(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *x, int n) {
    qsort(x, (size_t)n, sizeof *x, compare_doubles);
    return n % 2 ? x[n / 2] : 0.5 * (x[n / 2 - 1] + x[n / 2]);
}

enum { MAX_ROUNDS = 64 };

/* One flp_vk_jit_spirv of shader on ctx: its time in ms (the image's bytes in *bytes). */
static double jit_once(flp_context *ctx, flp_vk_shader shader, size_t *bytes) {
    void *code = NULL;
    const double t0 = now_ms();
    const flp_status st = flp_vk_jit_spirv(ctx, shader, NULL, &code, bytes);
    const double t = now_ms() - t0;
    if (st != FLP_OK) {
        fprintf(stderr, "flp_vk_jit_spirv(%s): %s: %s\n", flp_vk_shader_name(shader),
                flp_status_string(st), ctx->last_error);
        exit(1);
    }
    flp_free(code);
    return t;
}

static void bench_vulkan(int rounds) {
    /* a context struct is all flp_vk_jit_spirv reads: its log (none) and cache directory */
    static flp_context ctx;
    char dir[] = "/tmp/flp-bench-compile-XXXXXX";
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        exit(1);
    }
    size_t bytes = 0;
    flp_kernel_cache_clear_memory();
    ctx.kernel_cache_dir[0] = '\0';
    const double first = jit_once(&ctx, FLP_VK_SHADER_MERGE_STATES, &bytes);
    flp_kernel_cache_clear_memory();
    const double second = jit_once(&ctx, FLP_VK_SHADER_MERGE_STATES, &bytes);
    printf("compile backend=vulkan compiler=glslang startup_ms=%.1f\n", first - second);
    for (int s = 0; s < FLP_VK_SHADER_COUNT; s++) {
        double cold[MAX_ROUNDS], disk[MAX_ROUNDS], memory[MAX_ROUNDS];
        for (int r = 0; r < rounds; r++) {
            flp_kernel_cache_clear_memory();
            snprintf(ctx.kernel_cache_dir, sizeof ctx.kernel_cache_dir, "%s", "");
            cold[r] = jit_once(&ctx, (flp_vk_shader)s, &bytes);
        }
        snprintf(ctx.kernel_cache_dir, sizeof ctx.kernel_cache_dir, "%s", dir);
        flp_kernel_cache_clear_memory();
        jit_once(&ctx, (flp_vk_shader)s, &bytes); /* fills the disk cache */
        for (int r = 0; r < rounds; r++) {
            flp_kernel_cache_clear_memory();
            disk[r] = jit_once(&ctx, (flp_vk_shader)s, &bytes);
            memory[r] = jit_once(&ctx, (flp_vk_shader)s, &bytes);
        }
        printf("compile backend=vulkan shader=%s spirv_bytes=%zu cold_ms=%.2f disk_ms=%.3f "
               "memory_ms=%.3f\n",
               flp_vk_shader_name((flp_vk_shader)s), bytes, median(cold, rounds),
               median(disk, rounds), median(memory, rounds));
    }
    flp_kernel_cache_clear_memory();
    char command[128];
    snprintf(command, sizeof command, "rm -rf '%s'", dir);
    if (system(command) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
}
#endif

#ifdef FLP_BENCH_NVRTC
static void bench_nvrtc(void) {
    const char *why = NULL;
    int version = 0;
    if (!flp_cuda_nvrtc_available(&why, &version)) {
        printf("compile backend=cuda compiler=nvrtc skipped=\"%s\"\n", why ? why : "not found");
        return;
    }
    static const int ccs[] = {90, 80};
    for (size_t i = 0; i < sizeof ccs / sizeof *ccs; i++) {
        static char message[1 << 16];
        flp_cuda_image image = {0};
        const double t0 = now_ms();
        const flp_status st = flp_cuda_nvrtc_compile_for_arch(
            ccs[i], FLP_DTYPE_BF16, FLP_DTYPE_BF16, 128, &image, message, sizeof message);
        const double t = now_ms() - t0;
        if (st != FLP_OK) {
            fprintf(stderr, "NVRTC for cc %d: %s: %s\n", ccs[i], flp_status_string(st), message);
            exit(1);
        }
        printf("compile backend=cuda compiler=nvrtc version=%d.%d target=%s config=bf16_d128 "
               "image_bytes=%zu cold_ms=%.0f cached=no\n",
               version / 1000, version % 1000 / 10, image.target, image.size, t);
        flp_cuda_image_free(&image);
    }
}
#endif

int main(int argc, char **argv) {
    int rounds = 5;
    bool nvrtc = true;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--rounds") == 0 && i + 1 < argc) {
            rounds = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--no-nvrtc") == 0) {
            nvrtc = false;
        } else {
            fprintf(stderr, "usage: %s [--rounds N (1-64)] [--no-nvrtc]\n", argv[0]);
            return 2;
        }
    }
    if (rounds < 1 || rounds > 64) {
        fprintf(stderr, "--rounds %d: 1 to 64\n", rounds);
        return 2;
    }
#ifdef FLP_BENCH_VULKAN_JIT
    bench_vulkan(rounds);
#else
    printf("compile backend=vulkan skipped=\"built without glslang\"\n");
#endif
#ifdef FLP_BENCH_NVRTC
    if (nvrtc)
        bench_nvrtc();
#else
    (void)nvrtc;
    printf("compile backend=cuda skipped=\"CUDA backend not built\"\n");
#endif
    return 0;
}
