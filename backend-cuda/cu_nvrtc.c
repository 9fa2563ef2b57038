/* NVRTC loading and compilation of the embedded kernel source. */
#include "backend-cuda/cu_nvrtc.h"
#include "backend-cuda/cu_embedded.h"
#include "backend-cuda/kernels/decode_config.h"
#include "core/alloc.h"
#include "core/internal.h" /* flp_report */

#include <nvrtc.h>

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef FLP_CUDA_PATH
#define FLP_CUDA_PATH "/usr/local/cuda"
#endif

#define FLP_NVRTC_FUNCTIONS(X)                                                                     \
    X(nvrtcGetErrorString)                                                                         \
    X(nvrtcVersion)                                                                                \
    X(nvrtcCreateProgram)                                                                          \
    X(nvrtcDestroyProgram)                                                                         \
    X(nvrtcCompileProgram)                                                                         \
    X(nvrtcGetProgramLogSize)                                                                      \
    X(nvrtcGetProgramLog)                                                                          \
    X(nvrtcGetPTXSize)                                                                             \
    X(nvrtcGetPTX)                                                                                 \
    X(nvrtcGetCUBINSize)                                                                           \
    X(nvrtcGetCUBIN)

typedef struct nvrtc_api {
#define FIELD(fn) __typeof__(fn) *fn;
    FLP_NVRTC_FUNCTIONS(FIELD)
#undef FIELD
    /* Optional (NVRTC 11.2+): the architectures this NVRTC can compile for. */
    __typeof__(nvrtcGetNumSupportedArchs) *nvrtcGetNumSupportedArchs;
    __typeof__(nvrtcGetSupportedArchs) *nvrtcGetSupportedArchs;
    int version; /* major * 1000 + minor * 10 */
} nvrtc_api;

static nvrtc_api api;
static const nvrtc_api *api_ok;
static char api_why[1024] = "libnvrtc was not loaded";
static pthread_once_t api_once = PTHREAD_ONCE_INIT;

static void *sym(void *lib, const char *name) {
    return dlsym(lib, name);
}

/* Fills api from lib; false (with api_why) when a required function is missing. */
static bool bind(void *lib, const char *path) {
#define BIND(fn)                                                                                   \
    {                                                                                              \
        union {                                                                                    \
            void *p;                                                                               \
            __typeof__(fn) *f;                                                                     \
        } u;                                                                                       \
        u.p = sym(lib, #fn);                                                                       \
        if (!u.p) {                                                                                \
            snprintf(api_why, sizeof api_why, "%.400s has no %s", path, #fn);                      \
            return false;                                                                          \
        }                                                                                          \
        api.fn = u.f;                                                                              \
    }
    FLP_NVRTC_FUNCTIONS(BIND)
#undef BIND
    union {
        void *p;
        __typeof__(nvrtcGetNumSupportedArchs) *f;
    } n;
    union {
        void *p;
        __typeof__(nvrtcGetSupportedArchs) *f;
    } s;
    n.p = sym(lib, "nvrtcGetNumSupportedArchs");
    s.p = sym(lib, "nvrtcGetSupportedArchs");
    api.nvrtcGetNumSupportedArchs = n.p && s.p ? n.f : NULL;
    api.nvrtcGetSupportedArchs = n.p && s.p ? s.f : NULL;
    int major = 0, minor = 0;
    if (api.nvrtcVersion(&major, &minor) != NVRTC_SUCCESS) {
        snprintf(api_why, sizeof api_why, "%.400s: nvrtcVersion failed", path);
        return false;
    }
    api.version = major * 1000 + minor * 10;
    return true;
}

static void load_api(void) {
    char candidates[8][512];
    int count = 0;
    const char *env = getenv("FLP_NVRTC_LIBRARY");
    if (env && *env)
        snprintf(candidates[count++], sizeof candidates[0], "%s", env);
    static const char *const sonames[] = {"libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"};
    for (size_t i = 0; i < sizeof sonames / sizeof sonames[0]; i++)
        snprintf(candidates[count++], sizeof candidates[0], "%s", sonames[i]);
    /* The toolkit the library was built against, in case it is not on the loader's path. */
    snprintf(candidates[count++], sizeof candidates[0], "%s/lib64/libnvrtc.so", FLP_CUDA_PATH);
    snprintf(candidates[count++], sizeof candidates[0], "%s/lib/libnvrtc.so", FLP_CUDA_PATH);

    char first_error[512] = "";
    for (int i = 0; i < count; i++) {
        void *lib = dlopen(candidates[i], RTLD_NOW | RTLD_LOCAL);
        if (!lib) {
            const char *e = dlerror();
            if (!first_error[0])
                snprintf(first_error, sizeof first_error, "%s", e ? e : "unknown dlopen error");
            continue;
        }
        if (bind(lib, candidates[i])) {
            api_ok = &api; /* stays loaded for the life of the process */
            return;
        }
        dlclose(lib);
        return; /* api_why names the missing function */
    }
    snprintf(api_why, sizeof api_why,
             "NVRTC is not installed (tried FLP_NVRTC_LIBRARY, libnvrtc.so.13, libnvrtc.so.12, "
             "libnvrtc.so and " FLP_CUDA_PATH "/lib64: %.400s)",
             first_error);
}

static const nvrtc_api *get_api(const char **why) {
    pthread_once(&api_once, load_api);
    if (!api_ok && why)
        *why = api_why;
    return api_ok;
}

bool flp_cuda_nvrtc_available(const char **why, int *version) {
    const nvrtc_api *a = get_api(why);
    if (version)
        *version = a ? a->version : 0;
    return a != NULL;
}

/* The -arch for cc: a cubin for an architecture this NVRTC knows, else PTX of the newest one
 * below cc (the driver compiles it). sm_90 gets the arch-specific sm_90a, as in the fatbin. */
static flp_status choose_target(const nvrtc_api *a, int cc, flp_cuda_image *out, char *message,
                                size_t size) {
    int count = 0;
    int archs[128];
    if (a->nvrtcGetNumSupportedArchs && a->nvrtcGetNumSupportedArchs(&count) == NVRTC_SUCCESS &&
        count > 0 && count <= (int)(sizeof archs / sizeof archs[0]) &&
        a->nvrtcGetSupportedArchs(archs) == NVRTC_SUCCESS) {
        int best = 0;
        for (int i = 0; i < count; i++) {
            if (archs[i] == cc)
                best = cc;
            else if (archs[i] < cc && archs[i] > best && best != cc)
                best = archs[i];
        }
        if (best == 0)
            return flp_report(FLP_ERROR_UNSUPPORTED, message, size,
                              "NVRTC %d.%d compiles for no architecture at or below sm_%d",
                              a->version / 1000, a->version % 1000 / 10, cc);
        if (best != cc) {
            out->is_cubin = false;
            snprintf(out->target, sizeof out->target, "compute_%d", best);
            return FLP_OK;
        }
    }
    out->is_cubin = true;
    snprintf(out->target, sizeof out->target, "sm_%d%s", cc,
             cc == 90 && a->version >= 12000 ? "a" : "");
    return FLP_OK;
}

flp_status flp_cuda_nvrtc_compile_source(const char *source, const char *program_name, int cc,
                                         const char *const *options, int num_options,
                                         flp_cuda_image *out, char *message, size_t message_size) {
    if (!source || !out || cc <= 0 || num_options < 0 || (num_options > 0 && !options))
        return flp_report(FLP_ERROR_INVALID_ARGUMENT, message, message_size,
                          "flp_cuda_nvrtc_compile_source: bad argument (source %p, out %p, cc %d, "
                          "%d options)",
                          (const void *)source, (void *)out, cc, num_options);
    memset(out, 0, sizeof *out);
    const char *why = NULL;
    const nvrtc_api *a = get_api(&why);
    if (!a)
        return flp_report(FLP_ERROR_UNSUPPORTED, message, message_size, "%s", why);
    flp_status status = choose_target(a, cc, out, message, message_size);
    if (status != FLP_OK)
        return status;

    enum { MAX_OPTIONS = 32 };
    if (num_options > MAX_OPTIONS - 2)
        return flp_report(FLP_ERROR_INVALID_ARGUMENT, message, message_size,
                          "flp_cuda_nvrtc_compile_source: %d options (at most %d)", num_options,
                          MAX_OPTIONS - 2);
    char arch[40];
    snprintf(arch, sizeof arch, "-arch=%s", out->target);
    const char *all[MAX_OPTIONS];
    int n = 0;
    all[n++] = "--std=c++17";
    all[n++] = arch;
    for (int i = 0; i < num_options; i++)
        all[n++] = options[i];

    nvrtcProgram prog = NULL;
    /* A program allocation: the fault-injection seam may fail it as NVRTC would. */
    nvrtcResult r =
        flp_fault_device()
            ? NVRTC_ERROR_OUT_OF_MEMORY
            : a->nvrtcCreateProgram(&prog, source, program_name ? program_name : "source.cu", 0,
                                    NULL, NULL);
    if (r != NVRTC_SUCCESS)
        return flp_report(
            r == NVRTC_ERROR_OUT_OF_MEMORY ? FLP_ERROR_OUT_OF_MEMORY : FLP_ERROR_BACKEND, message,
            message_size, "nvrtcCreateProgram: %s", a->nvrtcGetErrorString(r));
    r = a->nvrtcCompileProgram(prog, n, all);
    if (r != NVRTC_SUCCESS) {
        size_t log_size = 0;
        char *log = NULL;
        if (a->nvrtcGetProgramLogSize(prog, &log_size) == NVRTC_SUCCESS && log_size > 0 &&
            (log = flp_malloc(log_size + 1)) != NULL) {
            if (a->nvrtcGetProgramLog(prog, log) != NVRTC_SUCCESS)
                log[0] = '\0';
            log[log_size] = '\0';
        }
        status = flp_report(r == NVRTC_ERROR_COMPILATION     ? FLP_ERROR_COMPILE
                            : r == NVRTC_ERROR_OUT_OF_MEMORY ? FLP_ERROR_OUT_OF_MEMORY
                                                             : FLP_ERROR_BACKEND,
                            message, message_size,
                            "NVRTC %d.%d compile of %s for %s failed (%s):\n%s", a->version / 1000,
                            a->version % 1000 / 10, program_name ? program_name : "source.cu",
                            out->target, a->nvrtcGetErrorString(r), log ? log : "(no log)");
        flp_free(log);
        a->nvrtcDestroyProgram(&prog);
        return status;
    }

    size_t size = 0;
    r = out->is_cubin ? a->nvrtcGetCUBINSize(prog, &size) : a->nvrtcGetPTXSize(prog, &size);
    if (r == NVRTC_SUCCESS && size > 0) {
        out->data = flp_malloc(size);
        if (!out->data) {
            a->nvrtcDestroyProgram(&prog);
            return flp_report(FLP_ERROR_OUT_OF_MEMORY, message, message_size,
                              "out of host memory for the NVRTC image (%zu bytes)", size);
        }
        r = out->is_cubin ? a->nvrtcGetCUBIN(prog, out->data) : a->nvrtcGetPTX(prog, out->data);
    }
    a->nvrtcDestroyProgram(&prog);
    if (r != NVRTC_SUCCESS || size == 0) {
        const char *call = out->is_cubin ? "nvrtcGetCUBIN" : "nvrtcGetPTX";
        flp_cuda_image_free(out);
        return flp_report(FLP_ERROR_BACKEND, message, message_size, "%s: %s", call,
                          r != NVRTC_SUCCESS ? a->nvrtcGetErrorString(r) : "empty image");
    }
    out->size = size;
    return FLP_OK;
}

flp_status flp_cuda_nvrtc_compile_for_arch(int cc, flp_dtype q_dtype, flp_dtype kv_dtype,
                                           int head_dim, flp_cuda_image *out, char *message,
                                           size_t message_size) {
    char defines[3][48];
    const char *options[3];
    int n = 0;
    if (head_dim != 0) {
        snprintf(defines[0], sizeof defines[0], "-DFLP_ONLY_Q=%d", (int)q_dtype);
        snprintf(defines[1], sizeof defines[1], "-DFLP_ONLY_KV=%d", (int)kv_dtype);
        snprintf(defines[2], sizeof defines[2], "-DFLP_ONLY_HEAD_DIM=%d", head_dim);
        for (n = 0; n < 3; n++)
            options[n] = defines[n];
    }
    return flp_cuda_nvrtc_compile_source((const char *)flp_cuda_kernel_source,
                                         "flashport_kernels.cu", cc, options, n, out, message,
                                         message_size);
}

void flp_cuda_image_free(flp_cuda_image *image) {
    if (!image)
        return;
    flp_free(image->data);
    memset(image, 0, sizeof *image);
}
