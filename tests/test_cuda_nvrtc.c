/* Suite cuda, no GPU needed: the embedded kernel source compiles with NVRTC for sm_80 and
 * sm_90a, every kernel the host looks up is in the images, compile errors come back as
 * FLP_ERROR_COMPILE with the log, and devices newer than NVRTC get PTX. Covers the decode,
 * prefill (tiles 16/64/128), merge and KV-append kernels. Exits 77 (skipped)
 * only when libnvrtc cannot be loaded. FLP_TEST_NVRTC_FULL=1 also compiles the whole source
 * (every configuration at once, as nvcc does for the fatbin: about a minute). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "backend-cuda/cu_backend.h"
#include "backend-cuda/cu_embedded.h"
#include "backend-cuda/cu_nvrtc.h"
#include "backend-cuda/kernels/decode_config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MESSAGE_SIZE 16384

static const flp_dtype q_dtypes[] = {FLP_DTYPE_F16, FLP_DTYPE_BF16};
static const flp_dtype kv_dtypes[] = {FLP_DTYPE_F16, FLP_DTYPE_BF16, FLP_DTYPE_E4M3,
                                      FLP_DTYPE_E5M2};
static const int head_dims[] = {64, 128, 256};

/* Whether image holds the NUL-terminated symbol name (the ELF string table or a PTX .entry). */
static bool has_name(const flp_cuda_image *image, const char *name, bool terminated) {
    size_t n = strlen(name) + (terminated ? 1 : 0);
    for (size_t i = 0; i + n <= image->size; i++)
        if (memcmp(image->data + i, name, n) == 0)
            return true;
    return false;
}

/* Every kernel name the host can ask for must exist in any module (left-out configurations
 * keep empty kernels under their names). */
static void check_all_names(const flp_cuda_image *image, bool terminated) {
    char name[64];
    int found = 0;
    for (size_t q = 0; q < 2; q++) {
        assert_true(flp_cu_kernel_name(q_dtypes[q], FLP_DTYPE_F16, 64, 0, name, sizeof name));
        if (!has_name(image, name, terminated))
            fail_msg("%s is missing from the %s image", name, image->target);
        for (size_t kv = 0; kv < 4; kv++)
            for (size_t d = 0; d < 3; d++)
                for (int k = 0; k < FLP_CU_DECODE_NUM_KERNELS; k++) {
                    assert_true(flp_cu_decode_kernel_name(q_dtypes[q], kv_dtypes[kv], head_dims[d],
                                                          k, name, sizeof name));
                    if (!has_name(image, name, terminated))
                        fail_msg("%s is missing from the %s image", name, image->target);
                    found++;
                }
        /* Prefill: the merge, and tiles 16, 64, 128 of every configuration. */
        assert_true(
            flp_cu_prefill_kernel_name(q_dtypes[q], FLP_DTYPE_F16, 64, 0, name, sizeof name));
        if (!has_name(image, name, terminated))
            fail_msg("%s is missing from the %s image", name, image->target);
        for (size_t kv = 0; kv < 4; kv++)
            for (size_t d = 0; d < 3; d++)
                for (int t = 0; t < 3; t++) {
                    const int tile = t == 0 ? 16 : t == 1 ? 64 : 128;
                    assert_true(flp_cu_prefill_kernel_name(q_dtypes[q], kv_dtypes[kv], head_dims[d],
                                                           tile, name, sizeof name));
                    if (!has_name(image, name, terminated))
                        fail_msg("%s is missing from the %s image", name, image->target);
                    found++;
                }
    }
    if (!has_name(image, "flp_kv_append", terminated))
        fail_msg("flp_kv_append is missing from the %s image", image->target);
    assert_int_equal(found, 72 + 72);
}

static void compile_one(int cc, const char *target, flp_dtype q, flp_dtype kv, int head_dim) {
    static char message[MESSAGE_SIZE];
    flp_cuda_image image;
    memset(&image, 0x5a, sizeof image); /* poisoned: the call must set every field */
    message[0] = '\0';
    flp_status status =
        flp_cuda_nvrtc_compile_for_arch(cc, q, kv, head_dim, &image, message, sizeof message);
    if (status != FLP_OK)
        fail_msg("NVRTC %s %s/%s d%d: %s: %s", target, flp_dtype_name(q), flp_dtype_name(kv),
                 head_dim, flp_status_string(status), message);
    assert_true(image.is_cubin);
    assert_string_equal(image.target, target);
    assert_non_null(image.data);
    assert_true(image.size > 1024);
    assert_memory_equal(image.data, "\177ELF", 4);
    check_all_names(&image, true);
    flp_cuda_image_free(&image);
    assert_null(image.data);
    assert_int_equal(image.size, 0);
}

/* Each architecture compiles configurations that together cover every q dtype, kv dtype and
 * head_dim. */
static void test_compile_sm80(void **state) {
    (void)state;
    compile_one(80, "sm_80", FLP_DTYPE_F16, FLP_DTYPE_F16, 64);
    compile_one(80, "sm_80", FLP_DTYPE_BF16, FLP_DTYPE_BF16, 128);
    compile_one(80, "sm_80", FLP_DTYPE_F16, FLP_DTYPE_E4M3, 256);
    compile_one(80, "sm_80", FLP_DTYPE_BF16, FLP_DTYPE_E5M2, 64);
}

static void test_compile_sm90a(void **state) {
    (void)state;
    compile_one(90, "sm_90a", FLP_DTYPE_BF16, FLP_DTYPE_BF16, 128);
    compile_one(90, "sm_90a", FLP_DTYPE_F16, FLP_DTYPE_BF16, 256);
    compile_one(90, "sm_90a", FLP_DTYPE_BF16, FLP_DTYPE_E4M3, 64);
    compile_one(90, "sm_90a", FLP_DTYPE_F16, FLP_DTYPE_E5M2, 128);
}

static void test_compile_full(void **state) {
    (void)state;
    const char *full = getenv("FLP_TEST_NVRTC_FULL");
    if (!full || strcmp(full, "1") != 0)
        skip();
    static char message[MESSAGE_SIZE];
    flp_cuda_image image;
    flp_status status = flp_cuda_nvrtc_compile_for_arch(90, FLP_DTYPE_DEFAULT, FLP_DTYPE_DEFAULT, 0,
                                                        &image, message, sizeof message);
    if (status != FLP_OK)
        fail_msg("full NVRTC compile: %s", message);
    check_all_names(&image, true);
    flp_cuda_image_free(&image);
}

/* A device newer than every architecture NVRTC knows gets PTX of the newest one. */
static void test_ptx_for_unknown_arch(void **state) {
    (void)state;
    static char message[MESSAGE_SIZE];
    flp_cuda_image image;
    flp_status status = flp_cuda_nvrtc_compile_for_arch(9990, FLP_DTYPE_BF16, FLP_DTYPE_BF16, 64,
                                                        &image, message, sizeof message);
    if (status != FLP_OK)
        fail_msg("PTX fallback: %s", message);
    assert_false(image.is_cubin);
    assert_memory_equal(image.target, "compute_", 8);
    assert_true(image.size > 1);
    assert_int_equal(image.data[image.size - 1], '\0'); /* cuModuleLoadData needs the NUL */
    assert_non_null(strstr(image.data, ".entry flp_decode_bf16_bf16_d64_r4"));
    assert_non_null(strstr(image.data, ".entry flp_prefill_bf16_bf16_d64_t128"));
    check_all_names(&image, false);
    flp_cuda_image_free(&image);
}

static void test_compile_error_has_log(void **state) {
    (void)state;
    static char message[MESSAGE_SIZE];
    flp_cuda_image image;
    const char *source =
        "extern \"C\" __global__ void broken(float *p) { p[0] = undefined_name; }\n";
    flp_status status = flp_cuda_nvrtc_compile_source(source, "broken.cu", 80, NULL, 0, &image,
                                                      message, sizeof message);
    assert_int_equal(status, FLP_ERROR_COMPILE);
    assert_null(image.data);
    assert_non_null(strstr(message, "undefined_name"));
    assert_non_null(strstr(message, "broken.cu"));

    /* Extra options reach the compiler. */
    const char *options[] = {"-DFLP_TEST_VALUE=3"};
    const char *uses = "#if FLP_TEST_VALUE != 3\n#error FLP_TEST_VALUE\n#endif\n"
                       "extern \"C\" __global__ void k(float *p) { p[0] = FLP_TEST_VALUE; }\n";
    status = flp_cuda_nvrtc_compile_source(uses, "uses.cu", 80, options, 1, &image, message,
                                           sizeof message);
    if (status != FLP_OK)
        fail_msg("%s", message);
    assert_true(has_name(&image, "k", true));
    flp_cuda_image_free(&image);
}

static void test_bad_arguments(void **state) {
    (void)state;
    char message[256];
    flp_cuda_image image;
    assert_int_equal(
        flp_cuda_nvrtc_compile_source(NULL, "x.cu", 80, NULL, 0, &image, message, sizeof message),
        FLP_ERROR_INVALID_ARGUMENT);
    assert_int_equal(
        flp_cuda_nvrtc_compile_source("", "x.cu", 0, NULL, 0, &image, message, sizeof message),
        FLP_ERROR_INVALID_ARGUMENT);
    assert_int_equal(
        flp_cuda_nvrtc_compile_source("", "x.cu", 80, NULL, 2, &image, message, sizeof message),
        FLP_ERROR_INVALID_ARGUMENT);
    assert_int_equal(flp_cuda_nvrtc_compile_source("", "x.cu", 80, NULL, 0, NULL, NULL, 0),
                     FLP_ERROR_INVALID_ARGUMENT);
    flp_cuda_image_free(NULL);

    char name[64];
    assert_false(flp_cu_kernel_name(FLP_DTYPE_F32, FLP_DTYPE_F16, 128, 4, name, sizeof name));
    assert_false(flp_cu_kernel_name(FLP_DTYPE_F16, FLP_DTYPE_F16, 96, 4, name, sizeof name));
    assert_false(flp_cu_kernel_name(FLP_DTYPE_F16, FLP_DTYPE_F16, 128, 5, name, sizeof name));
    assert_false(flp_cu_decode_kernel_name(FLP_DTYPE_F16, FLP_DTYPE_F16, 128,
                                           FLP_CU_DECODE_NUM_KERNELS, name, sizeof name));
    assert_false(flp_cu_decode_kernel_name(FLP_DTYPE_F16, FLP_DTYPE_F16, 96, FLP_CU_DECODE_TENSOR,
                                           name, sizeof name));
    assert_true(flp_cu_decode_kernel_name(FLP_DTYPE_BF16, FLP_DTYPE_E4M3, 128, FLP_CU_DECODE_TENSOR,
                                          name, sizeof name));
    assert_string_equal(name, "flp_decode_bf16_e4m3_d128_m8");
    assert_int_equal(flp_cu_config_index(FLP_DTYPE_F16, FLP_DTYPE_I32, 128), -1);
}

/* Which decode kernel a launch gets: the tensor-core one for a cache of the query dtype or fp8,
 * whatever the rows; the CUDA-core ones (4 or 8 rows in registers) for mixed 16-bit dtypes or
 * under FLP_CUDA_DECODE_CORES=1 (read once per process). */
static void test_decode_kernel_choice(void **state) {
    (void)state;
    const char *cores_env = getenv("FLP_CUDA_DECODE_CORES");
    const bool cores = cores_env && strcmp(cores_env, "1") == 0;
    static const struct {
        int32_t q, kv, group, max_qo_len;
        bool tensor; /* without FLP_CUDA_DECODE_CORES */
    } cases[] = {
        {FLP_DTYPE_BF16, FLP_DTYPE_BF16, 4, 1, true}, {FLP_DTYPE_F16, FLP_DTYPE_F16, 8, 4, true},
        {FLP_DTYPE_BF16, FLP_DTYPE_E4M3, 1, 1, true}, {FLP_DTYPE_F16, FLP_DTYPE_E5M2, 4, 2, true},
        {FLP_DTYPE_F16, FLP_DTYPE_BF16, 4, 1, false}, {FLP_DTYPE_BF16, FLP_DTYPE_F16, 4, 2, false},
        {FLP_DTYPE_F16, FLP_DTYPE_E4M3, 16, 8, true},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        flp_decode_launch launch = {.q_dtype = cases[i].q,
                                    .kv_dtype = cases[i].kv,
                                    .head_dim = 128,
                                    .group_size = cases[i].group,
                                    .max_qo_len = cases[i].max_qo_len};
        const int rows = cases[i].group * cases[i].max_qo_len;
        const int expect = cases[i].tensor && !cores         ? FLP_CU_DECODE_TENSOR
                           : rows > FLP_CU_DECODE_ROWS_SMALL ? FLP_CU_DECODE_CORES_LARGE
                                                             : FLP_CU_DECODE_CORES_SMALL;
        if (flp_cu_decode_variant(&launch) != expect)
            fail_msg("case %zu: q %d kv %d rows %d: kernel %d, expected %d", i, (int)cases[i].q,
                     (int)cases[i].kv, rows, flp_cu_decode_variant(&launch), expect);
        /* the tensor-core kernel's shared memory holds the CUDA-core algorithm's (RoPE) */
        assert_true(flp_cu_decode_smem_bytes(cases[i].kv, 128, FLP_CU_DECODE_TENSOR) >=
                    flp_cu_decode_smem_bytes(cases[i].kv, 128, FLP_CU_DECODE_CORES_LARGE));
    }
}

/* What the build embedded: a fatbin for every kernel unit the host loads, and the source with
 * every quoted include inlined. */
static void test_embedded_artifacts(void **state) {
    (void)state;
    for (int family = 0; family < FLP_CU_NUM_UNIT_FAMILIES; family++)
        for (size_t d = 0; d < 3; d++)
            if (!flp_cu_fatbin_of((flp_cu_unit_family)family, head_dims[d]))
                fail_msg("no embedded fatbin for family %d, head_dim %d", family, head_dims[d]);
    assert_true(flp_cuda_fatbins_count >= 1);
    for (unsigned i = 0; i < flp_cuda_fatbins_count; i++) {
        const flp_embedded_file *f = &flp_cuda_fatbins[i];
        if (f->size <= 1024)
            fail_msg("fatbin %s has %lu bytes", f->name, f->size);
        const unsigned magic = (unsigned)f->data[0] | (unsigned)f->data[1] << 8 |
                               (unsigned)f->data[2] << 16 | (unsigned)f->data[3] << 24;
        if (magic != 0xBA55ED50u) /* fatbin container magic */
            fail_msg("fatbin %s starts with 0x%08x, not the fatbin magic", f->name, magic);
    }
    const char *source = (const char *)flp_cuda_kernel_source;
    assert_int_equal(strlen(source), flp_cuda_kernel_source_size);
    assert_non_null(strstr(source, "decode_body"));
    assert_non_null(strstr(source, "typedef struct flp_decode_params"));
    assert_null(strstr(source, "#include \""));
}

int main(void) {
    const char *why = NULL;
    int version = 0;
    if (!flp_cuda_nvrtc_available(&why, &version)) {
        printf("skipped: %s\n", why);
        return 77;
    }
    printf("NVRTC %d.%d\n", version / 1000, version % 1000 / 10);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_embedded_artifacts),    cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_compile_error_has_log), cmocka_unit_test(test_compile_sm80),
        cmocka_unit_test(test_compile_sm90a),         cmocka_unit_test(test_ptx_for_unknown_arch),
        cmocka_unit_test(test_compile_full),          cmocka_unit_test(test_decode_kernel_choice),
    };
    return cmocka_run_group_tests_name("cuda_nvrtc", tests, NULL, NULL);
}
