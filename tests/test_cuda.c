/* Suite cuda: the CUDA backend on a real device (exits 77, skipped, when flp_context_create
 * with FLP_BACKEND_CUDA says FLP_ERROR_UNSUPPORTED: no driver, no device, or a build without
 * the backend).
 *
 * - context info; buffer round trips of random bytes at odd offsets and sizes;
 * - interop through the driver (libcuda.so.1 loaded here too, no CUDA header needed): wrapping
 *   cuMemAlloc'ed memory (written by the library, read back by the driver, never freed by the
 *   library), a caller's stream, a context on the caller's CUcontext;
 * - decode with the built-in kernels and with NVRTC-built ones (FLP_CUDA_FORCE_NVRTC=1), both
 *   kernel shapes (4 and 8 query rows in registers) and split requests, against the float64
 *   reference;
 * - a run captured into a CUDA graph, replayed after a re-plan with other lengths and data; a
 *   plan during the capture refused; a re-plan ordered with the runs queued around it;
 * - bad arguments. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend-cuda/cu_staging.h"
#include "core/reference.h"
#include "flashport/flashport.h"
#include "flashport/flashport_cuda.h"
#include "tests/test_util.h"
#include "tools/dl_symbols.h"

/* ---- the few driver entry points the test calls itself (cuda.h types, declared here) ------ */

typedef int CUresult_t;
typedef int CUdevice_t;
typedef unsigned long long CUdeviceptr_t;
typedef struct CUgraph_st *CUgraph_t;
typedef struct CUgraphExec_st *CUgraphExec_t;

static struct {
    CUresult_t (*init)(unsigned);
    CUresult_t (*device_get)(CUdevice_t *, int);
    CUresult_t (*primary_retain)(CUcontext *, CUdevice_t);
    CUresult_t (*primary_release)(CUdevice_t);
    CUresult_t (*push)(CUcontext);
    CUresult_t (*pop)(CUcontext *);
    CUresult_t (*mem_alloc)(CUdeviceptr_t *, size_t);
    CUresult_t (*mem_free)(CUdeviceptr_t);
    CUresult_t (*memcpy_dtoh)(void *, CUdeviceptr_t, size_t);
    CUresult_t (*stream_create)(CUstream *, unsigned);
    CUresult_t (*stream_destroy)(CUstream);
    CUresult_t (*stream_sync)(CUstream);
    CUresult_t (*begin_capture)(CUstream, int);
    CUresult_t (*end_capture)(CUstream, CUgraph_t *);
    CUresult_t (*graph_instantiate)(CUgraphExec_t *, CUgraph_t, unsigned long long);
    CUresult_t (*graph_launch)(CUgraphExec_t, CUstream);
    CUresult_t (*graph_exec_destroy)(CUgraphExec_t);
    CUresult_t (*graph_destroy)(CUgraph_t);
} cu;

#define CU_STREAM_NON_BLOCKING_ 1u
#define CU_STREAM_CAPTURE_MODE_GLOBAL_ 0

static bool load_driver(void) {
    void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!lib)
        return false;
    const dl_symbol syms[] = {
        {(void **)&cu.init, "cuInit"},
        {(void **)&cu.device_get, "cuDeviceGet"},
        {(void **)&cu.primary_retain, "cuDevicePrimaryCtxRetain"},
        {(void **)&cu.primary_release, "cuDevicePrimaryCtxRelease_v2"},
        {(void **)&cu.push, "cuCtxPushCurrent_v2"},
        {(void **)&cu.pop, "cuCtxPopCurrent_v2"},
        {(void **)&cu.mem_alloc, "cuMemAlloc_v2"},
        {(void **)&cu.mem_free, "cuMemFree_v2"},
        {(void **)&cu.memcpy_dtoh, "cuMemcpyDtoH_v2"},
        {(void **)&cu.stream_create, "cuStreamCreate"},
        {(void **)&cu.stream_destroy, "cuStreamDestroy_v2"},
        {(void **)&cu.stream_sync, "cuStreamSynchronize"},
        {(void **)&cu.begin_capture, "cuStreamBeginCapture_v2"},
        {(void **)&cu.end_capture, "cuStreamEndCapture"},
        {(void **)&cu.graph_instantiate, "cuGraphInstantiateWithFlags"},
        {(void **)&cu.graph_launch, "cuGraphLaunch"},
        {(void **)&cu.graph_exec_destroy, "cuGraphExecDestroy"},
        {(void **)&cu.graph_destroy, "cuGraphDestroy"},
    };
    if (!dl_symbols_resolve(lib, syms, sizeof syms / sizeof syms[0], "libcuda.so.1"))
        return false;
    return cu.init(0) == 0;
}

#define assert_cu(call)                                                                            \
    do {                                                                                           \
        const CUresult_t r_ = (call);                                                              \
        if (r_ != 0)                                                                               \
            fail_msg("%s -> CUresult %d", #call, r_);                                              \
    } while (0)

/* ---- program state ---------------------------------------------------------------------- */

static flp_context *g_ctx;
static CUcontext g_primary; /* device 0's primary context, retained by the test */
static CUdevice_t g_device;
static bool g_driver;

#define assert_ok(ctx, call)                                                                       \
    do {                                                                                           \
        const flp_status st_ = (call);                                                             \
        if (st_ != FLP_OK)                                                                         \
            fail_msg("%s -> %s: %s", #call, flp_status_string(st_), flp_context_last_error(ctx));  \
    } while (0)

/* ---- context and buffers ----------------------------------------------------------------- */

static void test_info(void **state) {
    (void)state;
    flp_device_info info;
    assert_ok(g_ctx, flp_context_get_info(g_ctx, &info));
    assert_int_equal(info.backend, FLP_BACKEND_CUDA);
    assert_string_equal(info.backend_name, "cuda");
    assert_true(strlen(info.device_name) > 0);
    assert_true(strlen(info.driver_info) > 0);
    assert_false(info.is_software);
    assert_true(info.compute_units > 0);
    assert_int_equal(info.subgroup_size, 32);
    assert_true(info.shared_memory_per_group >= 48 * 1024);
    assert_true(info.compute_capability >= 80);
    assert_true(info.device_memory_bytes > ((uint64_t)1 << 30));
    assert_true(info.max_buffer_bytes > 0);
    printf("%s (%s), %d SMs, %zu bytes shared memory per block, cc %d\n", info.device_name,
           info.driver_info, info.compute_units, info.shared_memory_per_group,
           info.compute_capability);
    assert_ok(g_ctx, flp_context_synchronize(g_ctx));
}

static void fill_bytes(test_rng *rng, uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(test_rng_next(rng) >> 56);
}

static void test_buffer_round_trip(void **state) {
    (void)state;
    test_rng rng;
    test_rng_init(&rng, 0xc0da01);
    const size_t sizes[] = {1, 7, 4096 + 13, ((size_t)1 << 20) + 5};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        const size_t n = sizes[s];
        flp_buffer *buf = NULL;
        flp_buffer_desc desc = {n};
        assert_ok(g_ctx, flp_buffer_create(g_ctx, &desc, &buf));
        assert_int_equal(flp_buffer_size(buf), n);
        assert_true(flp_cuda_buffer_device_ptr(buf) != 0);
        uint8_t *src = malloc(n), *dst = malloc(n);
        assert_non_null(src);
        assert_non_null(dst);
        fill_bytes(&rng, src, n);
        assert_ok(g_ctx, flp_buffer_write(g_ctx, buf, 0, src, n));
        memset(dst, 0xa5, n);
        assert_ok(g_ctx, flp_buffer_read(g_ctx, buf, 0, dst, n));
        assert_memory_equal(dst, src, n);
        /* Random sub-ranges at odd offsets: write new bytes, read an overlapping range. */
        for (int round = 0; round < 8 && n > 1; round++) {
            size_t off = (size_t)test_rng_int(&rng, 0, (int32_t)(n - 1));
            size_t len = (size_t)test_rng_int(&rng, 1, (int32_t)(n - off));
            fill_bytes(&rng, src + off, len);
            assert_ok(g_ctx, flp_buffer_write(g_ctx, buf, off, src + off, len));
            size_t roff = off / 2, rlen = n - roff < len + 3 ? n - roff : len + 3;
            memset(dst, 0x5a, n);
            assert_ok(g_ctx, flp_buffer_read(g_ctx, buf, roff, dst, rlen));
            assert_memory_equal(dst, src + roff, rlen);
        }
        free(src);
        free(dst);
        flp_buffer_destroy(buf);
    }
}

static void test_buffer_errors(void **state) {
    (void)state;
    flp_buffer *buf = NULL;
    flp_buffer_desc desc = {64};
    assert_ok(g_ctx, flp_buffer_create(g_ctx, &desc, &buf));
    uint8_t bytes[80] = {0};
    test_expect_status(g_ctx, flp_buffer_write(g_ctx, buf, 60, bytes, 8),
                       FLP_ERROR_INVALID_ARGUMENT, "write 8 bytes at 60 of 64",
                       TEST_MENTIONS("flp_buffer_write: range [60, 60 + 8) exceeds the buffer's 64 "
                                     "bytes"));
    test_expect_status(g_ctx, flp_buffer_read(g_ctx, buf, 0, bytes, 65), FLP_ERROR_INVALID_ARGUMENT,
                       "read 65 bytes of 64",
                       TEST_MENTIONS("flp_buffer_read: range [0, 0 + 65) exceeds the buffer's 64 "
                                     "bytes"));
    flp_buffer_desc zero = {0};
    flp_buffer *none = (flp_buffer *)1;
    assert_int_equal(flp_buffer_create(g_ctx, &zero, &none), FLP_ERROR_INVALID_ARGUMENT);
    assert_null(none);
    /* A buffer too large for the device fails cleanly (not a crash). */
    flp_buffer_desc huge = {(size_t)1 << 62};
    assert_true(flp_buffer_create(g_ctx, &huge, &none) != FLP_OK);
    assert_null(none);
    flp_buffer_destroy(buf);
    flp_buffer_destroy(NULL);
}

/* ---- interop ------------------------------------------------------------------------------ */

static void test_wrap(void **state) {
    (void)state;
    const size_t n = 3000;
    CUdeviceptr_t ptr = 0;
    assert_cu(cu.push(g_primary));
    assert_cu(cu.mem_alloc(&ptr, n));
    CUcontext popped;
    assert_cu(cu.pop(&popped));

    flp_buffer *buf = NULL;
    assert_ok(g_ctx, flp_cuda_buffer_wrap(g_ctx, ptr + 16, n - 16, &buf));
    assert_int_equal(flp_cuda_buffer_device_ptr(buf), ptr + 16);
    assert_int_equal(flp_buffer_size(buf), n - 16);
    test_rng rng;
    test_rng_init(&rng, 0x3a9);
    uint8_t src[3000], dst[3000];
    fill_bytes(&rng, src, sizeof src);
    assert_ok(g_ctx, flp_buffer_write(g_ctx, buf, 5, src, n - 16 - 5));
    /* The bytes landed at the caller's address: read them with the driver. */
    memset(dst, 0, sizeof dst);
    assert_cu(cu.push(g_primary));
    assert_cu(cu.memcpy_dtoh(dst, ptr + 21, n - 21));
    assert_cu(cu.pop(&popped));
    assert_memory_equal(dst, src, n - 21);
    flp_buffer_destroy(buf); /* must not free the caller's memory */

    /* Wrapping far past the allocation (beyond any rounding of its size), a null pointer or
     * zero bytes: refused. */
    buf = (flp_buffer *)1;
    const size_t far = n + ((size_t)64 << 20);
    test_expect_status(
        g_ctx, flp_cuda_buffer_wrap(g_ctx, ptr, far, &buf), FLP_ERROR_INVALID_ARGUMENT,
        "wrap past the allocation",
        TEST_MENTIONS(test_str("flp_cuda_buffer_wrap: [0x%llx, +%zu) runs past its "
                               "allocation [0x%llx, +",
                               (unsigned long long)ptr, far, (unsigned long long)ptr)));
    assert_null(buf);
    test_expect_status(g_ctx, flp_cuda_buffer_wrap(g_ctx, 0, 16, &buf), FLP_ERROR_INVALID_ARGUMENT,
                       "wrap a null pointer",
                       TEST_MENTIONS("flp_cuda_buffer_wrap: device_ptr 0x0, size 16"));
    test_expect_status(g_ctx, flp_cuda_buffer_wrap(g_ctx, ptr, 0, &buf), FLP_ERROR_INVALID_ARGUMENT,
                       "wrap 0 bytes",
                       TEST_MENTIONS(test_str("flp_cuda_buffer_wrap: device_ptr 0x%llx, size 0",
                                              (unsigned long long)ptr)));
    test_expect_status(g_ctx, flp_cuda_buffer_wrap(g_ctx, ptr, 16, NULL),
                       FLP_ERROR_INVALID_ARGUMENT, "wrap into NULL",
                       TEST_MENTIONS("flp_cuda_buffer_wrap: out is NULL"));

    assert_cu(cu.push(g_primary));
    assert_cu(cu.mem_free(ptr)); /* still ours: the library did not free it */
    assert_cu(cu.pop(&popped));
}

static void test_caller_stream(void **state) {
    (void)state;
    CUstream own = flp_cuda_get_stream(g_ctx);
    assert_non_null(own);
    CUstream stream = NULL;
    CUcontext popped;
    assert_cu(cu.push(g_primary));
    assert_cu(cu.stream_create(&stream, CU_STREAM_NON_BLOCKING_));
    assert_cu(cu.pop(&popped));

    assert_ok(g_ctx, flp_cuda_set_stream(g_ctx, stream));
    assert_ptr_equal(flp_cuda_get_stream(g_ctx), stream);
    flp_buffer *buf = NULL;
    flp_buffer_desc desc = {1 << 16};
    assert_ok(g_ctx, flp_buffer_create(g_ctx, &desc, &buf));
    uint8_t src[1 << 16], dst[1 << 16];
    test_rng rng;
    test_rng_init(&rng, 0x57);
    fill_bytes(&rng, src, sizeof src);
    assert_ok(g_ctx, flp_buffer_write(g_ctx, buf, 0, src, sizeof src));
    memset(dst, 0, sizeof dst);
    assert_ok(g_ctx, flp_buffer_read(g_ctx, buf, 0, dst, sizeof dst));
    assert_memory_equal(dst, src, sizeof src);
    assert_ok(g_ctx, flp_context_synchronize(g_ctx));
    flp_buffer_destroy(buf);

    /* Back to the library's stream before the caller's goes away. */
    assert_ok(g_ctx, flp_cuda_set_stream(g_ctx, NULL));
    assert_ptr_equal(flp_cuda_get_stream(g_ctx), own);
    assert_cu(cu.push(g_primary));
    assert_cu(cu.stream_destroy(stream));
    assert_cu(cu.pop(&popped));
}

static void test_caller_context(void **state) {
    (void)state;
    flp_context_desc desc = {.backend = FLP_BACKEND_CUDA};
    flp_context *ctx = NULL;
    flp_status st = flp_cuda_context_create(&desc, g_primary, &ctx);
    if (st != FLP_OK)
        fail_msg("flp_cuda_context_create -> %s", flp_status_string(st));
    flp_device_info a, b;
    assert_ok(ctx, flp_context_get_info(ctx, &a));
    assert_ok(g_ctx, flp_context_get_info(g_ctx, &b));
    assert_string_equal(a.device_name, b.device_name);
    flp_buffer *buf = NULL;
    flp_buffer_desc bd = {333};
    assert_ok(ctx, flp_buffer_create(ctx, &bd, &buf));
    uint8_t src[333], dst[333];
    test_rng rng;
    test_rng_init(&rng, 0x91);
    fill_bytes(&rng, src, sizeof src);
    assert_ok(ctx, flp_buffer_write(ctx, buf, 0, src, sizeof src));
    assert_ok(ctx, flp_buffer_read(ctx, buf, 0, dst, sizeof dst));
    assert_memory_equal(dst, src, sizeof src);
    flp_buffer_destroy(buf);
    flp_context_destroy(ctx);
    /* The caller's context is still alive and usable. */
    CUdeviceptr_t p = 0;
    CUcontext popped;
    assert_cu(cu.push(g_primary));
    assert_cu(cu.mem_alloc(&p, 64));
    assert_cu(cu.mem_free(p));
    assert_cu(cu.pop(&popped));
}

static void test_bad_arguments(void **state) {
    (void)state;
    assert_int_equal(flp_cuda_set_stream(NULL, NULL), FLP_ERROR_INVALID_ARGUMENT);
    assert_null(flp_cuda_get_stream(NULL));
    assert_int_equal(flp_cuda_buffer_device_ptr(NULL), 0);
    flp_buffer *buf = (flp_buffer *)1;
    assert_int_equal(flp_cuda_buffer_wrap(NULL, 256, 16, &buf), FLP_ERROR_INVALID_ARGUMENT);
    flp_context *ctx = (flp_context *)1;
    flp_context_desc vk = {.backend = FLP_BACKEND_VULKAN};
    assert_int_equal(flp_cuda_context_create(&vk, g_primary, &ctx), FLP_ERROR_INVALID_ARGUMENT);
    assert_null(ctx);
    ctx = (flp_context *)1;
    assert_int_equal(flp_cuda_context_create(NULL, NULL, &ctx), FLP_ERROR_INVALID_ARGUMENT);
    assert_null(ctx);
    assert_int_equal(flp_cuda_context_create(NULL, g_primary, NULL), FLP_ERROR_INVALID_ARGUMENT);
    flp_context_desc far = {.backend = FLP_BACKEND_CUDA, .device_index = 4096};
    assert_int_equal(flp_context_create(&far, &ctx), FLP_ERROR_INVALID_ARGUMENT);
    assert_null(ctx);
}

/* ---- decode ---------------------------------------------------------------------------- */

enum { HQ = 8, HKV = 2, D = 128, PAGE = 16, MAX_BATCH = 4, MAX_QO = 2, POOL = 256 };

/* A paged bf16 problem with capacity MAX_BATCH x MAX_QO rows and a POOL-page cache. */
typedef struct problem {
    int32_t batch, qo_len;
    int32_t kv_indptr[MAX_BATCH + 1], kv_indices[POOL], last[MAX_BATCH];
    float *q, *k, *v; /* stored (bf16-rounded) values: q [MAX_BATCH*MAX_QO, HQ, D], caches */
} problem;

static size_t q_elems(void) {
    return (size_t)MAX_BATCH * MAX_QO * HQ * D;
}
static size_t cache_elems(void) {
    return (size_t)POOL * PAGE * HKV * D;
}

static void round_bf16(float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        x[i] = flp_bf16_to_f32(flp_f32_to_bf16(x[i]));
}

static void problem_init(problem *p, test_rng *rng, int32_t batch, int32_t qo_len,
                         const int32_t *kv_lens) {
    memset(p, 0, sizeof *p);
    p->batch = batch;
    p->qo_len = qo_len;
    p->q = malloc(sizeof(float) * q_elems());
    p->k = malloc(sizeof(float) * cache_elems());
    p->v = malloc(sizeof(float) * cache_elems());
    assert_true(p->q && p->k && p->v);
    test_fill_uniform_f32(rng, p->q, q_elems());
    test_fill_uniform_f32(rng, p->k, cache_elems());
    test_fill_uniform_f32(rng, p->v, cache_elems());
    round_bf16(p->q, q_elems());
    round_bf16(p->k, cache_elems());
    round_bf16(p->v, cache_elems());
    int32_t order[POOL]; /* pages in shuffled order */
    for (int32_t i = 0; i < POOL; i++)
        order[i] = i;
    for (int32_t i = POOL - 1; i > 0; i--) {
        int32_t j = test_rng_int(rng, 0, i), t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    int32_t used = 0;
    for (int32_t b = 0; b < batch; b++) {
        int32_t pages = (kv_lens[b] + PAGE - 1) / PAGE;
        p->kv_indptr[b + 1] = p->kv_indptr[b] + pages;
        for (int32_t i = 0; i < pages; i++, used++)
            p->kv_indices[used] = order[used];
        p->last[b] = pages ? kv_lens[b] - (pages - 1) * PAGE : 0;
    }
    assert_true(used <= POOL);
}

static void problem_free(problem *p) {
    free(p->q);
    free(p->k);
    free(p->v);
}

/* Float64 reference: out [batch*qo_len, HQ, D] (causal when qo_len > 1). */
static void problem_reference(const problem *p, double *out) {
    int32_t token_indptr[MAX_BATCH + 1];
    double *k = malloc(sizeof(double) * cache_elems());
    double *v = malloc(sizeof(double) * cache_elems());
    double *q = malloc(sizeof(double) * q_elems());
    assert_true(k && v && q);
    assert_int_equal(flp_ref_gather_paged(p->batch, HKV, D, PAGE, FLP_KV_LAYOUT_NHD, POOL, p->k,
                                          p->kv_indptr, p->kv_indices, p->last, token_indptr, k),
                     FLP_OK);
    assert_int_equal(flp_ref_gather_paged(p->batch, HKV, D, PAGE, FLP_KV_LAYOUT_NHD, POOL, p->v,
                                          p->kv_indptr, p->kv_indices, p->last, token_indptr, v),
                     FLP_OK);
    for (size_t i = 0; i < q_elems(); i++)
        q[i] = p->q[i];
    int32_t qo_indptr[MAX_BATCH + 1];
    for (int32_t b = 0; b <= p->batch; b++)
        qo_indptr[b] = b * p->qo_len;
    flp_ref_attention a = {.batch_size = p->batch,
                           .num_qo_heads = HQ,
                           .num_kv_heads = HKV,
                           .head_dim = D,
                           .qo_indptr = qo_indptr,
                           .kv_indptr = token_indptr,
                           .q = q,
                           .k = k,
                           .v = v,
                           .mask = p->qo_len > 1 ? FLP_MASK_CAUSAL : FLP_MASK_NONE};
    assert_int_equal(flp_ref_attention_run(&a, out, NULL), FLP_OK);
    free(k);
    free(v);
    free(q);
}

/* Device side: buffers sized for the capacity (a captured run keeps their addresses). */
typedef struct device {
    flp_context *ctx;
    flp_buffer *q, *k, *v, *o;
    flp_plan *plan;
} device;

static void device_create(device *dv, flp_context *ctx, int32_t max_qo_len) {
    memset(dv, 0, sizeof *dv);
    dv->ctx = ctx;
    flp_buffer_desc qd = {q_elems() * 2}, kd = {cache_elems() * 2};
    assert_ok(ctx, flp_buffer_create(ctx, &qd, &dv->q));
    assert_ok(ctx, flp_buffer_create(ctx, &qd, &dv->o));
    assert_ok(ctx, flp_buffer_create(ctx, &kd, &dv->k));
    assert_ok(ctx, flp_buffer_create(ctx, &kd, &dv->v));
    flp_plan_desc pd = {.max_batch_size = MAX_BATCH,
                        .max_qo_len = max_qo_len,
                        .max_pages = POOL,
                        .num_qo_heads = HQ,
                        .num_kv_heads = HKV,
                        .head_dim = D};
    assert_ok(ctx, flp_plan_create(ctx, &pd, &dv->plan));
}

static void device_free(device *dv) {
    flp_plan_destroy(dv->plan);
    flp_buffer_destroy(dv->q);
    flp_buffer_destroy(dv->o);
    flp_buffer_destroy(dv->k);
    flp_buffer_destroy(dv->v);
}

static void write_bf16(flp_context *ctx, flp_buffer *buf, const float *x, size_t n) {
    uint16_t *h = malloc(n * 2);
    assert_non_null(h);
    assert_int_equal(flp_convert_from_f32(FLP_DTYPE_BF16, x, h, n), FLP_OK);
    assert_ok(ctx, flp_buffer_write(ctx, buf, 0, h, n * 2));
    free(h);
}

/* The run arguments of problem p writing to out. */
static flp_decode_run_args device_run_args(const device *dv, const problem *p, flp_buffer *out) {
    int64_t rows = (int64_t)p->batch * p->qo_len;
    int64_t qs[3] = {rows, HQ, D}, ks[4] = {POOL, PAGE, HKV, D};
    flp_decode_run_args ra = {
        .q = flp_tensor_contiguous(dv->q, 0, FLP_DTYPE_BF16, 3, qs),
        .k_cache = flp_tensor_contiguous(dv->k, 0, FLP_DTYPE_BF16, 4, ks),
        .v_cache = flp_tensor_contiguous(dv->v, 0, FLP_DTYPE_BF16, 4, ks),
        .out = flp_tensor_contiguous(out, 0, FLP_DTYPE_BF16, 3, qs),
    };
    return ra;
}

/* The plan arguments of problem p (causal when it has several query tokens per request). */
static flp_decode_plan_args problem_plan_args(const problem *p) {
    flp_decode_plan_args pa = {
        .batch_size = p->batch,
        .qo_len = p->qo_len,
        .page_size = PAGE,
        .kv_indptr = p->kv_indptr,
        .kv_indices = p->kv_indices,
        .kv_last_page_len = p->last,
        .variant = {.head_dim = D,
                    .q_dtype = FLP_DTYPE_BF16,
                    .mask = p->qo_len > 1 ? FLP_MASK_CAUSAL : FLP_MASK_NONE}};
    return pa;
}

/* Uploads the problem's data, plans it and (unless run is false) runs it. */
static void device_plan(device *dv, const problem *p, bool run) {
    flp_context *ctx = dv->ctx;
    write_bf16(ctx, dv->q, p->q, q_elems());
    write_bf16(ctx, dv->k, p->k, cache_elems());
    write_bf16(ctx, dv->v, p->v, cache_elems());
    uint16_t poison[MAX_BATCH * MAX_QO * HQ * D];
    memset(poison, 0xff, sizeof poison); /* bf16 NaN */
    assert_ok(ctx, flp_buffer_write(ctx, dv->o, 0, poison, sizeof poison));
    const flp_decode_plan_args pa = problem_plan_args(p);
    assert_ok(ctx, flp_decode_plan(ctx, dv->plan, &pa));
    if (run) {
        const flp_decode_run_args ra = device_run_args(dv, p, dv->o);
        assert_ok(ctx, flp_decode_run(ctx, dv->plan, &ra));
    }
}

/* Reads the output of problem p from out and compares it with the reference (bf16 tolerance). */
static void output_check(flp_context *ctx, flp_buffer *out, const problem *p, const char *what) {
    const size_t n = (size_t)p->batch * p->qo_len * HQ * D;
    uint16_t *h = malloc(n * 2);
    double *got = malloc(sizeof(double) * n), *want = malloc(sizeof(double) * q_elems());
    assert_true(h && got && want);
    assert_ok(ctx, flp_context_synchronize(ctx));
    assert_ok(ctx, flp_buffer_read(ctx, out, 0, h, n * 2));
    for (size_t i = 0; i < n; i++)
        got[i] = flp_bf16_to_f32(h[i]);
    problem_reference(p, want);
    assert_relative_error(got, want, n, 1.6e-2, what);
    free(h);
    free(got);
    free(want);
}

static void device_check(device *dv, const problem *p, const char *what) {
    output_check(dv->ctx, dv->o, p, what);
}

/* A re-plan is ordered with the runs on the stream (the CUDA upload does not wait for the
 * device): runs queued before it still use the previous partition, runs queued after it the new
 * one. Many runs of batch a keep the device busy while batch b is planned; their output must be
 * a's, and the run queued after the re-plan must give b's. Both batches share the data. */
static void test_plan_in_stream_order(void **state) {
    (void)state;
    test_rng rng;
    test_rng_init(&rng, 0x0de7);
    const int32_t lens_a[2] = {3000, 900}, lens_b[4] = {40, 2000, 0, 1500};
    problem a, b;
    problem_init(&a, &rng, 2, 1, lens_a);
    problem_init(&b, &rng, 4, 1, lens_b);
    memcpy(b.q, a.q, sizeof(float) * q_elems());
    memcpy(b.k, a.k, sizeof(float) * cache_elems());
    memcpy(b.v, a.v, sizeof(float) * cache_elems());
    device dv;
    device_create(&dv, g_ctx, 1);
    flp_buffer *out_b;
    flp_buffer_desc od = {q_elems() * 2};
    assert_ok(g_ctx, flp_buffer_create(g_ctx, &od, &out_b));
    device_plan(&dv, &a, true); /* data, plan a, one run (loads the kernels) */
    assert_ok(g_ctx, flp_context_synchronize(g_ctx));
    const flp_decode_run_args run_a = device_run_args(&dv, &a, dv.o);
    for (int i = 0; i < 200; i++)
        assert_ok(g_ctx, flp_decode_run(g_ctx, dv.plan, &run_a));
    const flp_decode_plan_args pb = problem_plan_args(&b);
    assert_ok(g_ctx, flp_decode_plan(g_ctx, dv.plan, &pb));
    const flp_decode_run_args run_b = device_run_args(&dv, &b, out_b);
    assert_ok(g_ctx, flp_decode_run(g_ctx, dv.plan, &run_b));
    output_check(g_ctx, dv.o, &a, "runs queued before the re-plan");
    output_check(g_ctx, out_b, &b, "the run queued after the re-plan");
    flp_buffer_destroy(out_b);
    device_free(&dv);
    problem_free(&a);
    problem_free(&b);
}

/* Re-plans back to back, each followed by runs, never waiting for the device. Two plans over
 * the same data: the narrow one's uploads (a few KB) are below FLP_CU_STAGING_MIN_UPLOAD and go
 * from pageable memory; the wide one's per-request arrays are copied at its capacity of
 * WIDE_BATCH requests (six arrays of 4 or 8 bytes a request: 112 KB), so its uploads go through the
 * pinned staging slots, more re-plans than there are slots, or (all slots' copies still queued)
 * from pageable memory (cu_staging.c). Batches a and b alternate; the runs after re-plan i of a
 * plan write that plan's output i, which must be the batch planned i-th. */
static void test_replans_in_stream_order(void **state) {
    (void)state;
    enum { REPLANS = 3 * FLP_CU_STAGING_SLOTS, RUNS_EACH = 20, WIDE_BATCH = 4096 };
    test_rng rng;
    test_rng_init(&rng, 0x57a9);
    const int32_t lens_a[2] = {2500, 700}, lens_b[4] = {64, 1800, 0, 1300};
    problem p[2];
    problem_init(&p[0], &rng, 2, 1, lens_a);
    problem_init(&p[1], &rng, 4, 1, lens_b);
    memcpy(p[1].q, p[0].q, sizeof(float) * q_elems());
    memcpy(p[1].k, p[0].k, sizeof(float) * cache_elems());
    memcpy(p[1].v, p[0].v, sizeof(float) * cache_elems());
    device dv;
    device_create(&dv, g_ctx, 1);
    device_plan(&dv, &p[0], true); /* the data, and the kernels loaded */
    flp_plan *wide;
    const flp_plan_desc wd = {.max_batch_size = WIDE_BATCH,
                              .max_qo_len = 1,
                              .max_pages = POOL,
                              .num_qo_heads = HQ,
                              .num_kv_heads = HKV,
                              .head_dim = D};
    assert_ok(g_ctx, flp_plan_create(g_ctx, &wd, &wide));
    flp_plan *plans[2] = {dv.plan, wide};
    assert_ok(g_ctx, flp_context_synchronize(g_ctx));
    flp_buffer *out[2][REPLANS];
    const flp_buffer_desc od = {q_elems() * 2};
    uint16_t *poison = malloc(q_elems() * 2);
    assert_non_null(poison);
    memset(poison, 0xff, q_elems() * 2); /* bf16 NaN */
    for (int w = 0; w < 2; w++)
        for (int i = 0; i < REPLANS; i++) {
            assert_ok(g_ctx, flp_buffer_create(g_ctx, &od, &out[w][i]));
            assert_ok(g_ctx, flp_buffer_write(g_ctx, out[w][i], 0, poison, q_elems() * 2));
        }
    for (int i = 0; i < REPLANS; i++)
        for (int w = 0; w < 2; w++) {
            const problem *x = &p[(i + w) % 2];
            const flp_decode_plan_args pa = problem_plan_args(x);
            assert_ok(g_ctx, flp_decode_plan(g_ctx, plans[w], &pa));
            const flp_decode_run_args ra = device_run_args(&dv, x, out[w][i]);
            for (int r = 0; r < RUNS_EACH; r++)
                assert_ok(g_ctx, flp_decode_run(g_ctx, plans[w], &ra));
        }
    char what[64];
    for (int w = 0; w < 2; w++)
        for (int i = 0; i < REPLANS; i++) {
            snprintf(what, sizeof what, "the runs after re-plan %d of the %s plan", i,
                     w ? "wide" : "narrow");
            output_check(g_ctx, out[w][i], &p[(i + w) % 2], what);
            flp_buffer_destroy(out[w][i]);
        }
    free(poison);
    flp_plan_destroy(wide);
    device_free(&dv);
    problem_free(&p[0]);
    problem_free(&p[1]);
}

/* Both kernel shapes: max_qo_len 1 x group 4 uses 4 rows in registers, max_qo_len 2 uses 8;
 * request 0 is long enough to be split (merge kernel), request 2 is empty. */
static void decode_all_shapes(flp_context *ctx, const char *label) {
    test_rng rng;
    test_rng_init(&rng, 0xdec0de);
    const int32_t kv_lens[3] = {2900, 77, 0};
    char what[128];
    for (int32_t qo_len = 1; qo_len <= MAX_QO; qo_len++) {
        problem p;
        problem_init(&p, &rng, 3, qo_len, kv_lens);
        device dv;
        device_create(&dv, ctx, qo_len);
        device_plan(&dv, &p, true);
        snprintf(what, sizeof what, "%s, qo_len %d", label, qo_len);
        device_check(&dv, &p, what);
        device_free(&dv);
        problem_free(&p);
    }
}

static void test_decode_builtin(void **state) {
    (void)state;
    decode_all_shapes(g_ctx, "fatbin kernels");
}

/* Whether some libnvrtc the backend would try can be loaded. */
static bool nvrtc_installed(void) {
    static const char *const names[] = {"libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so",
                                        "/usr/local/cuda/lib64/libnvrtc.so"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        void *lib = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
        if (lib) {
            dlclose(lib);
            return true;
        }
    }
    return false;
}

static void test_decode_nvrtc(void **state) {
    (void)state;
    setenv("FLP_CUDA_FORCE_NVRTC", "1", 1);
    flp_context_desc desc = {.backend = FLP_BACKEND_CUDA};
    flp_context *ctx = NULL;
    flp_status st = flp_context_create(&desc, &ctx);
    if (st != FLP_OK)
        fail_msg("context with FLP_CUDA_FORCE_NVRTC: %s", flp_status_string(st));
    /* Plan creation compiles the kernels: skip (not fail) where NVRTC is not installed. */
    flp_plan *plan = NULL;
    flp_plan_desc pd = {.max_batch_size = 1,
                        .max_pages = 1,
                        .num_qo_heads = HQ,
                        .num_kv_heads = HKV,
                        .head_dim = D};
    st = flp_plan_create(ctx, &pd, &plan);
    unsetenv("FLP_CUDA_FORCE_NVRTC");
    if (st != FLP_OK && !nvrtc_installed()) {
        printf("NVRTC unavailable, skipping: %s\n", flp_context_last_error(ctx));
        flp_context_destroy(ctx);
        skip();
    }
    assert_ok(ctx, st);
    flp_plan_destroy(plan);
    decode_all_shapes(ctx, "NVRTC kernels");
    flp_context_destroy(ctx);
}

/* A caller-created non-blocking stream that the library's context then uses (as an engine
 * capturing graphs does); caller_stream_end gives the context its own stream back. */
static CUstream caller_stream_begin(void) {
    CUstream stream = NULL;
    CUcontext popped;
    assert_cu(cu.push(g_primary));
    assert_cu(cu.stream_create(&stream, CU_STREAM_NON_BLOCKING_));
    assert_cu(cu.pop(&popped));
    assert_ok(g_ctx, flp_cuda_set_stream(g_ctx, stream));
    return stream;
}

static void caller_stream_end(CUstream stream) {
    CUcontext popped;
    assert_ok(g_ctx, flp_cuda_set_stream(g_ctx, NULL));
    assert_cu(cu.push(g_primary));
    assert_cu(cu.stream_destroy(stream));
    assert_cu(cu.pop(&popped));
}

/* A graph captured from one run on a caller stream, instantiated for replays. */
typedef struct captured_graph {
    CUgraph_t graph;
    CUgraphExec_t exec;
} captured_graph;

/* Ends the capture begun on stream, checks the captured run's status and instantiates the graph.
 * Graph calls take the calling thread's current context: the library pushes its own only around
 * its calls, so the caller makes it current here as an engine would (popped by graph_destroy). */
static captured_graph capture_end(CUstream stream, flp_status run) {
    captured_graph g = {NULL, NULL};
    assert_cu(cu.end_capture(stream, &g.graph));
    assert_ok(g_ctx, run);
    assert_cu(cu.push(g_primary));
    assert_cu(cu.graph_instantiate(&g.exec, g.graph, 0));
    return g;
}

static void graph_replay(const captured_graph *g, CUstream stream) {
    assert_cu(cu.graph_launch(g->exec, stream));
    assert_cu(cu.stream_sync(stream));
}

static void graph_destroy(captured_graph *g) {
    CUcontext popped;
    assert_cu(cu.graph_exec_destroy(g->exec));
    assert_cu(cu.graph_destroy(g->graph));
    assert_cu(cu.pop(&popped));
}

/* A run captured into a CUDA graph stays right after a re-plan within capacity: new batch,
 * lengths, pages and data, replayed without recapture. */
static void test_graph_replay(void **state) {
    (void)state;
    CUstream stream = caller_stream_begin();

    test_rng rng;
    test_rng_init(&rng, 0x6a7);
    const int32_t lens_a[3] = {100, 700, 5}, lens_b[4] = {1200, 1, 0, 300};
    problem a, b;
    problem_init(&a, &rng, 3, 1, lens_a);
    problem_init(&b, &rng, 4, 1, lens_b);
    device dv;
    device_create(&dv, g_ctx, 1);
    device_plan(&dv, &a, true); /* warm up: loads the kernels outside the capture */
    device_check(&dv, &a, "direct run before capture");

    device_plan(&dv, &a, false);
    assert_cu(cu.begin_capture(stream, CU_STREAM_CAPTURE_MODE_GLOBAL_));
    int64_t qs[3] = {(int64_t)a.batch, HQ, D}, ks[4] = {POOL, PAGE, HKV, D};
    flp_decode_run_args ra = {
        .q = flp_tensor_contiguous(dv.q, 0, FLP_DTYPE_BF16, 3, qs),
        .k_cache = flp_tensor_contiguous(dv.k, 0, FLP_DTYPE_BF16, 4, ks),
        .v_cache = flp_tensor_contiguous(dv.v, 0, FLP_DTYPE_BF16, 4, ks),
        .out = flp_tensor_contiguous(dv.o, 0, FLP_DTYPE_BF16, 3, qs),
    };
    const flp_status captured = flp_decode_run(g_ctx, dv.plan, &ra);
    /* planning is host work: refused while the stream captures, nothing queued into the graph */
    const flp_decode_plan_args pb = problem_plan_args(&b);
    assert_int_equal(flp_decode_plan(g_ctx, dv.plan, &pb), FLP_ERROR_INVALID_ARGUMENT);
    assert_non_null(strstr(flp_context_last_error(g_ctx), "flp_decode_plan: "));
    assert_non_null(strstr(flp_context_last_error(g_ctx), "capturing a CUDA graph"));
    captured_graph g = capture_end(stream, captured);
    /* the refused plan changed nothing: the plan still runs batch a */
    assert_ok(g_ctx, flp_decode_run(g_ctx, dv.plan, &ra));
    device_check(&dv, &a, "the plan refused during the capture");

    graph_replay(&g, stream);
    device_check(&dv, &a, "graph replay, captured plan");

    device_plan(&dv, &b, false); /* re-plan and new data; no recapture */
    graph_replay(&g, stream);
    device_check(&dv, &b, "graph replay after a re-plan");

    graph_destroy(&g);
    device_free(&dv);
    problem_free(&a);
    problem_free(&b);
    caller_stream_end(stream);
}

/* ---- prefill under graph capture ------------------------------------------------------ */

enum { PF_ROWS = 512, PF_KV = 4096, PF_BATCH = 4 };

/* A ragged causal bf16 prefill batch: q [PF_ROWS, HQ, D], k/v [PF_KV, HKV, D] (stored values). */
typedef struct prefill_problem {
    int32_t batch;
    int32_t qo_indptr[PF_BATCH + 1], kv_indptr[PF_BATCH + 1];
    float q[PF_ROWS * HQ * D], k[PF_KV * HKV * D], v[PF_KV * HKV * D];
} prefill_problem;

static void prefill_problem_init(prefill_problem *p, test_rng *rng, int32_t batch,
                                 const int32_t *qo, const int32_t *kv) {
    p->batch = batch;
    p->qo_indptr[0] = p->kv_indptr[0] = 0;
    for (int32_t b = 0; b < batch; b++) {
        p->qo_indptr[b + 1] = p->qo_indptr[b] + qo[b];
        p->kv_indptr[b + 1] = p->kv_indptr[b] + kv[b];
    }
    assert_true(p->qo_indptr[batch] <= PF_ROWS && p->kv_indptr[batch] <= PF_KV);
    test_fill_uniform_f32(rng, p->q, sizeof p->q / sizeof p->q[0]);
    test_fill_uniform_f32(rng, p->k, sizeof p->k / sizeof p->k[0]);
    test_fill_uniform_f32(rng, p->v, sizeof p->v / sizeof p->v[0]);
    round_bf16(p->q, sizeof p->q / sizeof p->q[0]);
    round_bf16(p->k, sizeof p->k / sizeof p->k[0]);
    round_bf16(p->v, sizeof p->v / sizeof p->v[0]);
}

/* Uploads p, poisons out and plans it with the soft cap (0: off; the run is captured or launched
 * by the caller). */
static void prefill_upload_and_plan(device *dv, const prefill_problem *p, float soft_cap) {
    flp_context *ctx = dv->ctx;
    write_bf16(ctx, dv->q, p->q, sizeof p->q / sizeof p->q[0]);
    write_bf16(ctx, dv->k, p->k, sizeof p->k / sizeof p->k[0]);
    write_bf16(ctx, dv->v, p->v, sizeof p->v / sizeof p->v[0]);
    static uint16_t poison[PF_ROWS * HQ * D];
    memset(poison, 0xff, sizeof poison); /* bf16 NaN */
    assert_ok(ctx, flp_buffer_write(ctx, dv->o, 0, poison, sizeof poison));
    flp_prefill_plan_args pa = {.batch_size = p->batch,
                                .qo_indptr = p->qo_indptr,
                                .kv_storage = FLP_KV_RAGGED,
                                .kv_indptr = p->kv_indptr,
                                .variant = {.head_dim = D,
                                            .q_dtype = FLP_DTYPE_BF16,
                                            .mask = FLP_MASK_CAUSAL,
                                            .logits_soft_cap = soft_cap}};
    assert_ok(ctx, flp_prefill_plan(ctx, dv->plan, &pa));
}

static flp_prefill_run_args prefill_run_args(const device *dv, const prefill_problem *p) {
    int64_t qs[3] = {p->qo_indptr[p->batch], HQ, D}, ks[3] = {PF_KV, HKV, D};
    return (flp_prefill_run_args){
        .q = flp_tensor_contiguous(dv->q, 0, FLP_DTYPE_BF16, 3, qs),
        .k = flp_tensor_contiguous(dv->k, 0, FLP_DTYPE_BF16, 3, ks),
        .v = flp_tensor_contiguous(dv->v, 0, FLP_DTYPE_BF16, 3, ks),
        .out = flp_tensor_contiguous(dv->o, 0, FLP_DTYPE_BF16, 3, qs),
    };
}

static void prefill_check(device *dv, const prefill_problem *p, float soft_cap, const char *what) {
    size_t rows = (size_t)p->qo_indptr[p->batch], n = rows * HQ * D;
    size_t nq = sizeof p->q / sizeof p->q[0], nk = sizeof p->k / sizeof p->k[0];
    uint16_t *h = malloc(n * 2);
    double *got = malloc(sizeof(double) * n), *want = malloc(sizeof(double) * n);
    double *q = malloc(sizeof(double) * nq), *k = malloc(sizeof(double) * nk),
           *v = malloc(sizeof(double) * nk);
    assert_true(h && got && want && q && k && v);
    assert_ok(dv->ctx, flp_context_synchronize(dv->ctx));
    assert_ok(dv->ctx, flp_buffer_read(dv->ctx, dv->o, 0, h, n * 2));
    for (size_t i = 0; i < n; i++)
        got[i] = flp_bf16_to_f32(h[i]);
    for (size_t i = 0; i < nq; i++)
        q[i] = p->q[i];
    for (size_t i = 0; i < nk; i++) {
        k[i] = p->k[i];
        v[i] = p->v[i];
    }
    flp_ref_attention a = {.batch_size = p->batch,
                           .num_qo_heads = HQ,
                           .num_kv_heads = HKV,
                           .head_dim = D,
                           .qo_indptr = p->qo_indptr,
                           .kv_indptr = p->kv_indptr,
                           .q = q,
                           .k = k,
                           .v = v,
                           .mask = FLP_MASK_CAUSAL,
                           .logits_soft_cap = soft_cap};
    assert_int_equal(flp_ref_attention_run(&a, want, NULL), FLP_OK);
    assert_relative_error(got, want, n, 1.6e-2, what);
    if (soft_cap > 0) {
        /* the check can tell a run that ignored the cap: the outputs without it are far off */
        double *uncapped = malloc(sizeof(double) * n);
        assert_non_null(uncapped);
        a.logits_soft_cap = 0;
        assert_int_equal(flp_ref_attention_run(&a, uncapped, NULL), FLP_OK);
        assert_true(test_relative_error(uncapped, want, n, NULL) > 10 * 1.6e-2);
        free(uncapped);
    }
    free(h);
    free(got);
    free(want);
    free(q);
    free(k);
    free(v);
}

/* A prefill run captured into a graph stays right after a re-plan that changes the batch, picks
 * another query tile (the captured kernel handles any item) and splits a long request (the
 * captured merge launch combines it), and after re-plans that switch a variant option (the soft
 * cap) on and off again: the kernel picks its copy of the passes with or without the options
 * from the plan at each launch (kernels/prefill.cuh, kOptionFlags). */
static void test_prefill_graph_replay(void **state) {
    (void)state;
    CUstream stream = caller_stream_begin();

    test_rng rng;
    test_rng_init(&rng, 0x9f11);
    static prefill_problem a, b;
    const int32_t qo_a[2] = {300, 40}, kv_a[2] = {300, 1000};
    const int32_t qo_b[4] = {2, 3, 0, 1}, kv_b[4] = {2500, 10, 7, 1};
    prefill_problem_init(&a, &rng, 2, qo_a, kv_a);
    prefill_problem_init(&b, &rng, 4, qo_b, kv_b);
    device dv;
    memset(&dv, 0, sizeof dv);
    dv.ctx = g_ctx;
    flp_buffer_desc qd = {sizeof a.q / 2}, kd = {sizeof a.k / 2};
    assert_ok(g_ctx, flp_buffer_create(g_ctx, &qd, &dv.q));
    assert_ok(g_ctx, flp_buffer_create(g_ctx, &qd, &dv.o));
    assert_ok(g_ctx, flp_buffer_create(g_ctx, &kd, &dv.k));
    assert_ok(g_ctx, flp_buffer_create(g_ctx, &kd, &dv.v));
    flp_plan_desc pd = {.max_batch_size = PF_BATCH,
                        .max_pages = 1,
                        .max_qo_rows = PF_ROWS,
                        .num_qo_heads = HQ,
                        .num_kv_heads = HKV,
                        .head_dim = D};
    assert_ok(g_ctx, flp_plan_create(g_ctx, &pd, &dv.plan));

    prefill_upload_and_plan(&dv, &a, 0); /* warm up: loads the kernels outside the capture */
    flp_prefill_run_args ra = prefill_run_args(&dv, &a);
    assert_ok(g_ctx, flp_prefill_run(g_ctx, dv.plan, &ra));
    prefill_check(&dv, &a, 0, "prefill: direct run before capture");

    prefill_upload_and_plan(&dv, &a, 0);
    assert_cu(cu.begin_capture(stream, CU_STREAM_CAPTURE_MODE_GLOBAL_));
    captured_graph g = capture_end(stream, flp_prefill_run(g_ctx, dv.plan, &ra));
    graph_replay(&g, stream);
    prefill_check(&dv, &a, 0, "prefill: graph replay, captured plan");

    /* b has fewer rows: the captured run's q/out views are larger than b needs, which is what
     * an engine capturing at capacity does; only b's rows are checked. */
    prefill_upload_and_plan(&dv, &b, 0);
    graph_replay(&g, stream);
    prefill_check(&dv, &b, 0, "prefill: graph replay after a re-plan (other tile, split)");

    /* A soft cap small enough to change every output by far more than the tolerance. */
    const float cap = 0.1f;
    prefill_upload_and_plan(&dv, &a, cap);
    graph_replay(&g, stream);
    prefill_check(&dv, &a, cap, "prefill: graph replay after a re-plan that sets a soft cap");
    prefill_upload_and_plan(&dv, &b, 0);
    graph_replay(&g, stream);
    prefill_check(&dv, &b, 0, "prefill: graph replay after a re-plan that drops the soft cap");

    graph_destroy(&g);
    device_free(&dv);
    caller_stream_end(stream);
}

static void on_log(void *user, flp_log_level level, const char *message) {
    (void)user;
    if (level >= FLP_LOG_INFO)
        fprintf(stderr, "[flashport] %s\n", message);
}

int main(void) {
    flp_context_desc desc = {.backend = FLP_BACKEND_CUDA, .log = on_log, .log_level = FLP_LOG_INFO};
    flp_status st = flp_context_create(&desc, &g_ctx);
    if (st == FLP_ERROR_UNSUPPORTED) {
        printf("skipped: no CUDA backend or device\n");
        return 77;
    }
    if (st != FLP_OK) {
        fprintf(stderr, "flp_context_create(CUDA) failed: %s\n", flp_status_string(st));
        return 1;
    }
    g_driver = load_driver();
    if (!g_driver || cu.device_get(&g_device, 0) != 0 ||
        cu.primary_retain(&g_primary, g_device) != 0) {
        fprintf(stderr, "the CUDA context opened but the test cannot use libcuda.so.1 itself\n");
        flp_context_destroy(g_ctx);
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_info),
        cmocka_unit_test(test_buffer_round_trip),
        cmocka_unit_test(test_buffer_errors),
        cmocka_unit_test(test_wrap),
        cmocka_unit_test(test_caller_stream),
        cmocka_unit_test(test_caller_context),
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_decode_builtin),
        cmocka_unit_test(test_decode_nvrtc),
        cmocka_unit_test(test_graph_replay),
        cmocka_unit_test(test_plan_in_stream_order),
        cmocka_unit_test(test_replans_in_stream_order),
        cmocka_unit_test(test_prefill_graph_replay),
    };
    int failed = cmocka_run_group_tests_name("cuda", tests, NULL, NULL);
    flp_context_destroy(g_ctx);
    cu.primary_release(g_device);
    return failed ? 1 : 0;
}
