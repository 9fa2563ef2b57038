/* Loading libcuda.so.1 and turning CUresults into flp_status with a message. */
#include "backend-cuda/cu_driver.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#define FLP_CU_STR_(x) #x
#define FLP_CU_STR(x) FLP_CU_STR_(x) /* expands cuda.h's macros first: "cuMemAlloc_v2" */

static flp_cu_driver driver;
static const flp_cu_driver *driver_ok;
static char driver_why[512] = "libcuda was not loaded";
static pthread_once_t driver_once = PTHREAD_ONCE_INIT;

static void load_driver(void) {
    static const char *const names[] = {"libcuda.so.1", "libcuda.so"};
    void *lib = NULL;
    char first_error[256] = "";
    for (size_t i = 0; i < sizeof names / sizeof names[0] && !lib; i++) {
        lib = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
        if (!lib && i == 0) {
            const char *e = dlerror();
            snprintf(first_error, sizeof first_error, "%s", e ? e : "unknown dlopen error");
        }
    }
    if (!lib) {
        snprintf(driver_why, sizeof driver_why,
                 "the NVIDIA driver library is not installed (dlopen libcuda.so.1: %s)",
                 first_error);
        return;
    }
    /* dlsym returns void *; a union converts to a function pointer without ISO C warnings.
     * Required functions fail the load when missing, optional ones stay NULL. */
#define FLP_CU_LOAD(fn, required)                                                                  \
    {                                                                                              \
        union {                                                                                    \
            void *p;                                                                               \
            __typeof__(fn) *f;                                                                     \
        } sym;                                                                                     \
        sym.p = dlsym(lib, FLP_CU_STR(fn));                                                        \
        if (!sym.p && (required)) {                                                                \
            snprintf(driver_why, sizeof driver_why,                                                \
                     "libcuda.so.1 has no %s: the NVIDIA driver is too old", FLP_CU_STR(fn));      \
            dlclose(lib);                                                                          \
            return;                                                                                \
        }                                                                                          \
        driver.fn = sym.p ? sym.f : NULL;                                                          \
    }
#define FLP_CU_LOAD_REQUIRED(fn) FLP_CU_LOAD(fn, true)
#define FLP_CU_LOAD_OPTIONAL(fn) FLP_CU_LOAD(fn, false)
    FLP_CU_DRIVER_FUNCTIONS(FLP_CU_LOAD_REQUIRED)
    FLP_CU_DRIVER_OPTIONAL_FUNCTIONS(FLP_CU_LOAD_OPTIONAL)
#undef FLP_CU_LOAD_OPTIONAL
#undef FLP_CU_LOAD_REQUIRED
#undef FLP_CU_LOAD
    driver_ok = &driver; /* the library stays loaded for the life of the process */
}

const flp_cu_driver *flp_cu_driver_load(const char **why) {
    pthread_once(&driver_once, load_driver);
    if (!driver_ok && why)
        *why = driver_why;
    return driver_ok;
}

const char *flp_cu_result_text(const flp_cu_driver *cu, CUresult r, char *buf, size_t size) {
    const char *name = NULL, *text = NULL;
    if (cu) {
        if (cu->cuGetErrorName(r, &name) != CUDA_SUCCESS)
            name = NULL;
        if (cu->cuGetErrorString(r, &text) != CUDA_SUCCESS)
            text = NULL;
    }
    if (name)
        snprintf(buf, size, "%s (%s)", name, text ? text : "no description");
    else
        snprintf(buf, size, "CUresult %d", (int)r);
    return buf;
}

flp_status flp_cu_status_of(CUresult r) {
    switch (r) {
    case CUDA_SUCCESS:
        return FLP_OK;
    case CUDA_ERROR_OUT_OF_MEMORY:
        return FLP_ERROR_OUT_OF_MEMORY;
    case CUDA_ERROR_NO_DEVICE:
    case CUDA_ERROR_STUB_LIBRARY:
    case CUDA_ERROR_DEVICE_UNAVAILABLE:
    case CUDA_ERROR_NOT_INITIALIZED:
    case CUDA_ERROR_NOT_SUPPORTED:
    case CUDA_ERROR_SYSTEM_DRIVER_MISMATCH:
    case CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE:
        return FLP_ERROR_UNSUPPORTED;
    /* Faults that leave the context unusable: every later call fails. */
    case CUDA_ERROR_ILLEGAL_ADDRESS:
    case CUDA_ERROR_MISALIGNED_ADDRESS:
    case CUDA_ERROR_INVALID_ADDRESS_SPACE:
    case CUDA_ERROR_INVALID_PC:
    case CUDA_ERROR_ILLEGAL_INSTRUCTION:
    case CUDA_ERROR_HARDWARE_STACK_ERROR:
    case CUDA_ERROR_LAUNCH_FAILED:
    case CUDA_ERROR_LAUNCH_TIMEOUT:
    case CUDA_ERROR_ECC_UNCORRECTABLE:
    case CUDA_ERROR_CONTEXT_IS_DESTROYED:
        return FLP_ERROR_DEVICE_LOST;
    default:
        return FLP_ERROR_BACKEND;
    }
}

flp_status flp_cu_fail(flp_context *ctx, const flp_cu_driver *cu, CUresult r, const char *what,
                       ...) {
    char where[512], result[256];
    va_list ap;
    va_start(ap, what);
    vsnprintf(where, sizeof where, what, ap);
    va_end(ap);
    return flp_fail(ctx, flp_cu_status_of(r), "%s: %s", where,
                    flp_cu_result_text(cu, r, result, sizeof result));
}
