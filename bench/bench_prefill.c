/* flashport-bench-prefill: prefill / append throughput (TFLOP/s), causal or without a mask.
 *
 * usage: flashport-bench-prefill [--backend cuda|vulkan|auto] [--cases LIST|default|quick]
 *            [--quick] [--qo-heads H] [--kv-heads H] [--head-dim D] [--page P] [--dtype bf16|f16]
 *            [--kv-dtype bf16|f16|e4m3|e5m2]
 *            [--budget-ms MS] [--max-iters N] [--check-rows N] [--seed S] [--copy-gbps X]
 *            [--mask causal|none] [--soft-cap X] [--soft-cap-as builtin|snippet]
 *            [--gemm-tflops X] [--peer FILE] [--dry-run]
 *            [--decode-kernel auto|vector|matrix]
 *
 * Cases (comma-separated; causal by default, --mask none for none; positions as in
 * docs/design.md section 3):
 *   single:N[:paged]        one prompt, qo_len = kv_len = N, ragged (contiguous) KV by default
 *   ragged:B:LO:HI[:ragged] B prompts, lengths drawn uniformly in [LO, HI] with --seed (the same
 *                           draw as peer_torch_prefill.py), paged KV by default
 *   spec:B:Q:L[:ragged]     speculative verification: B requests, Q new query rows each appended
 *                           to L keys (qo_len < kv_len), paged KV, through flp_prefill_*
 *   specdec:B:Q:L           the same shape through flp_decode_* (qo_len = Q <= 8, paged; the
 *                           plan's decode kernel as --decode-kernel asks, default auto; the
 *                           line names the kernel it ran on)
 * "default" (also as one item of a list: default,single:32768) is
 * single:1024,single:4096,single:8192,single:16384,single:8192:paged,
 * ragged:16:256:4096,spec:64:512:4608 (chunked prefill: 512 new tokens over 4096 cached),
 * spec:64:4:4096,specdec:64:4:4096; "quick" (also --quick: small budget) is a lavapipe-sized set.
 *
 * --soft-cap X: logits = X * tanh(logit / X) (default 0: off); an option the kernels compile out
 * for plans without any (backend-cuda/kernels/prefill.cuh), so this times their other copy.
 * --soft-cap-as snippet: the same soft cap as a variant snippet (docs/variants.md:
 * "return cap * tanh(logit / cap);" with a float parameter), to time a snippet variant against
 * the built-in it restates (where the backend's kernels take snippets).
 *
 * --kv-dtype: the K/V cache's dtype (default: --dtype); fp8 caches hold the values as stored
 * (scales 1), the float64 check reads the same stored values. GB/s count K/V bytes at its size.
 *
 * FLOPs = 4 * D * Hq * (kept keys summed over query rows); causal keeps kv_len - qo_len + i + 1
 * keys for row i, so a prompt counts half the square plus the diagonal; --mask none keeps all
 * kv_len keys. GB/s count every K, V,
 * Q and O byte once. Time: each run is queued back to back on the library's stream/queue and the
 * batch is closed by flp_context_synchronize (as flashport-bench-decode); the median of 5 batches
 * whose size fits --budget-ms (default 300) and --max-iters (default 100); 3 batches of one run
 * when a run takes over a fifth of the budget, 1 when it takes over the whole budget.
 *
 * Before timing, every case runs once on a poisoned output, which must come back finite
 * everywhere, and --check-rows (default 32) query rows (the first, the last, the rest at random)
 * x all heads are compared with a float64 computation done here over their kept keys; the error
 * per row is max|out - ref| / max|ref| over the row's heads, tolerance 1.6e-2 (bf16) / 2e-3
 * (f16). A mismatch prints FAIL, skips that case's timing and makes the exit status 1.
 *
 * FLP_BENCH_LOG=1 prints the library's log on stderr (the kernels each configuration runs on).
 * --peer FILE: lines "peer_prefill case=NAME mask=M sdpa=flash|cudnn ... tflops=X ... status=ok"
 * from peer_torch_prefill.py run in the same job; each case then reports its ratio to the best
 * mode of each SDPA backend with the same mask (specdec:* is compared with spec:*). A line
 * "peer_ceiling gemm_tflops=X" (the peer's --gemm) gives the CUDA matrix ceiling measured in the
 * same job, as --gemm-tflops X does (which wins); without either the ceiling is the nominal
 * CUDA_BF16_GEMM_TFLOPS and the line says gemm_source=nominal.
 * Output: one "flp_prefill key=value ..." line per case, then the rows of a markdown table. */
#include "bench/bench_check.h"
#include "bench/bench_util.h"
#include "tools/host_timing.h"
#include "core/reference.h"
#include "flashport/flashport.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Ceilings (docs/design.md section 10; the figures: bench/RESULTS.md) (H200; H100 the same for
 * matrix math). */
#define CUDA_BF16_GEMM_TFLOPS 782.0
#define VULKAN_COOPMAT_TFLOPS 178.0
#define VULKAN_FMA_TFLOPS 45.0

#define DEFAULT_CASES                                                                              \
    "single:1024,single:4096,single:8192,single:16384,single:8192:paged,ragged:16:256:4096,"       \
    "spec:64:512:4608,spec:64:4:4096,specdec:64:4:4096"
#define QUICK_CASES "single:64,single:96:paged,ragged:3:8:64,spec:4:4:80,specdec:4:4:80"

typedef struct bench_opts {
    flp_backend_kind backend;
    const char *cases;
    int32_t hq, hkv, head_dim, page;
    flp_dtype dtype, kv_dtype; /* kv_dtype: FLP_DTYPE_DEFAULT until parsed: dtype */
    double budget_ms;
    int max_iters, check_rows;
    uint64_t seed;
    double copy_gbps;
    double gemm_tflops;    /* CUDA matrix ceiling measured in the same job; 0: nominal */
    bool causal;           /* --mask causal (default) or none */
    double soft_cap;       /* --soft-cap: > 0 on, 0 off */
    bool soft_cap_snippet; /* --soft-cap-as snippet: the soft cap as a logits_transform */
    const char *peer_file;
    bool dry_run;
    flp_decode_kernel decode_kernel; /* specdec cases */
} bench_opts;

typedef enum case_kind { CASE_SINGLE, CASE_RAGGED, CASE_SPEC } case_kind;

typedef struct bench_case {
    char name[64]; /* as given, without the storage suffix; the peer's case= key */
    case_kind kind;
    bool use_decode_api; /* specdec: flp_decode_plan/run with qo_len = Q */
    bool paged;
    int32_t batch;
    int32_t *qo_len; /* [batch] */
    int32_t *kv_len; /* [batch] */
    /* Derived layout. */
    int32_t *qo_indptr;     /* [batch + 1] */
    int32_t *kv_indptr;     /* [batch + 1]: pages (paged) or tokens (ragged) */
    int32_t *kv_indices;    /* [num_pages] (paged) */
    int32_t *last_page_len; /* [batch] (paged) */
    int32_t num_pages;
    int64_t rows, kv_tokens, kept_keys;
    size_t kv_elems; /* elements of one K (or V) tensor: pages*page*Hkv*D or tokens*Hkv*D */
} bench_case;

/* ---- random numbers ------------------------------------------------------------------- */

/* bench_splitmix64: peer_torch_prefill.py draws the ragged lengths with the same generator. */
static float uniform_pm1(uint64_t *state) { /* [-1, 1) */
    return (float)((double)(bench_splitmix64(state) >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

/* ---- a tiny thread pool: fn(arg, task) for task = 0..tasks-1 -------------------------- */

typedef struct parallel_job {
    void (*fn)(void *arg, int64_t task);
    void *arg;
    int64_t tasks;
    atomic_llong next;
} parallel_job;

static void *parallel_worker(void *p) {
    parallel_job *job = p;
    for (;;) {
        int64_t t = atomic_fetch_add(&job->next, 1);
        if (t >= job->tasks)
            return NULL;
        job->fn(job->arg, t);
    }
}

static void parallel_for(int64_t tasks, void (*fn)(void *, int64_t), void *arg) {
    enum { MAX_THREADS = 32 };
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    int n = cpus < 1 ? 1 : cpus > MAX_THREADS ? MAX_THREADS : (int)cpus;
    if ((int64_t)n > tasks)
        n = (int)(tasks < 1 ? 1 : tasks);
    parallel_job job = {fn, arg, tasks, 0};
    pthread_t threads[MAX_THREADS];
    int started = 0;
    for (int i = 1; i < n; i++)
        if (pthread_create(&threads[started], NULL, parallel_worker, &job) == 0)
            started++;
    parallel_worker(&job); /* this thread works too; with no extra thread it does everything */
    for (int i = 0; i < started; i++)
        pthread_join(threads[i], NULL);
}

/* ---- options and cases ---------------------------------------------------------------- */

/* FLP_BENCH_LOG=1: the library's log, every level, on stderr (which kernels ran, and why). */
static void log_to_stderr(void *user, flp_log_level level, const char *message) {
    (void)user;
    fprintf(stderr, "log[%d]: %s\n", (int)level, message);
}

static _Noreturn void usage_error(const char *what, const char *value) {
    bench_usage_error("flashport-bench-prefill: %s '%s' (see the comment at the top of "
                      "bench/bench_prefill.c)",
                      what, value);
}

/* A --dtype (16-bit only) or --kv-dtype (fp8 too) value. */
static flp_dtype parse_dtype(const char *v, bool fp8) {
    static const flp_dtype names[] = {FLP_DTYPE_BF16, FLP_DTYPE_F16, /* the 16-bit ones first */
                                      FLP_DTYPE_E4M3, FLP_DTYPE_E5M2};
    const size_t count = fp8 ? sizeof names / sizeof names[0] : 2;
    flp_dtype dtype = bench_dtype_by_name(v, names, count);
    if (dtype == FLP_DTYPE_DEFAULT)
        usage_error(
            fp8 ? "unknown kv dtype (bf16, f16, e4m3 or e5m2)" : "unknown dtype (bf16 or f16)", v);
    return dtype;
}

static bench_opts parse_args(int argc, char **argv) {
    bench_opts o = {.backend = FLP_BACKEND_AUTO,
                    .cases = DEFAULT_CASES,
                    .hq = 32,
                    .hkv = 8,
                    .head_dim = 128,
                    .page = 16,
                    .dtype = FLP_DTYPE_BF16,
                    .budget_ms = 300,
                    .max_iters = 100,
                    .check_rows = 32,
                    .seed = 1234,
                    .causal = true};
    bool budget_set = false, iters_set = false, cases_set = false;
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i];
        if (!strcmp(k, "--quick")) { /* options given explicitly win, in any order */
            if (!cases_set)
                o.cases = QUICK_CASES;
            if (!budget_set)
                o.budget_ms = 50;
            if (!iters_set)
                o.max_iters = 3;
            continue;
        }
        if (!strcmp(k, "--dry-run")) {
            o.dry_run = true;
            continue;
        }
        if (i + 1 >= argc)
            usage_error("missing value after", k);
        const char *v = argv[++i];
        if (!strcmp(k, "--backend")) {
            if (!bench_backend_by_name(v, &o.backend))
                usage_error("unknown backend", v);
        } else if (!strcmp(k, "--cases")) {
            o.cases = v;
            cases_set = true;
        } else if (!strcmp(k, "--qo-heads")) {
            o.hq = atoi(v);
        } else if (!strcmp(k, "--kv-heads")) {
            o.hkv = atoi(v);
        } else if (!strcmp(k, "--head-dim")) {
            o.head_dim = atoi(v);
        } else if (!strcmp(k, "--page")) {
            o.page = atoi(v);
        } else if (!strcmp(k, "--kv-dtype")) {
            o.kv_dtype = parse_dtype(v, true);
        } else if (!strcmp(k, "--dtype")) {
            o.dtype = parse_dtype(v, false);
        } else if (!strcmp(k, "--decode-kernel")) {
            o.decode_kernel = bench_parse_decode_kernel(v);
        } else if (!strcmp(k, "--budget-ms")) {
            o.budget_ms = atof(v);
            budget_set = true;
        } else if (!strcmp(k, "--max-iters")) {
            o.max_iters = atoi(v);
            iters_set = true;
        } else if (!strcmp(k, "--check-rows")) {
            o.check_rows = atoi(v);
        } else if (!strcmp(k, "--seed")) {
            o.seed = strtoull(v, NULL, 0);
        } else if (!strcmp(k, "--copy-gbps")) {
            o.copy_gbps = atof(v);
        } else if (!strcmp(k, "--gemm-tflops")) {
            o.gemm_tflops = atof(v);
            if (!(o.gemm_tflops > 0))
                usage_error("--gemm-tflops must be positive, not", v);
        } else if (!strcmp(k, "--mask")) {
            if (!strcmp(v, "causal"))
                o.causal = true;
            else if (!strcmp(v, "none"))
                o.causal = false;
            else
                usage_error("unknown mask (causal or none)", v);
        } else if (!strcmp(k, "--soft-cap")) {
            o.soft_cap = atof(v);
            if (!(o.soft_cap >= 0))
                usage_error("--soft-cap must be 0 (off) or positive, not", v);
        } else if (!strcmp(k, "--soft-cap-as")) {
            if (!strcmp(v, "snippet"))
                o.soft_cap_snippet = true;
            else if (strcmp(v, "builtin") != 0)
                usage_error("--soft-cap-as is builtin or snippet, not", v);
        } else if (!strcmp(k, "--peer")) {
            o.peer_file = v;
        } else {
            usage_error("unknown option", k);
        }
    }
    if (o.hq <= 0 || o.hkv <= 0 || o.hq % o.hkv != 0)
        usage_error("heads must be positive with kv-heads dividing qo-heads", "");
    if (o.head_dim <= 0 || o.head_dim > FLP_MAX_HEAD_DIM || o.page <= 0 ||
        o.page > FLP_MAX_PAGE_SIZE)
        usage_error("bad head dim or page size", "");
    if (o.kv_dtype == FLP_DTYPE_DEFAULT)
        o.kv_dtype = o.dtype;
    if (o.budget_ms <= 0 || o.max_iters < 1 || o.check_rows < 1)
        usage_error("budget, iterations and check rows must be positive", "");
    return o;
}

/* Keys that row i of a request of qo_len q and kv_len l keeps. */
static int64_t row_keys(const bench_opts *o, int32_t q, int32_t l, int64_t i) {
    return o->causal ? (int64_t)l - q + i + 1 : l;
}

/* Fills the derived layout of c. Paged pages are spread through the pool in a scattered order
 * (stride coprime with the pool size), as in a real cache. */
static void layout_case(bench_case *c, const bench_opts *o) {
    int32_t b_n = c->batch;
    c->qo_indptr = calloc((size_t)b_n + 1, sizeof(int32_t));
    c->kv_indptr = calloc((size_t)b_n + 1, sizeof(int32_t));
    c->last_page_len = calloc((size_t)b_n, sizeof(int32_t));
    c->rows = c->kv_tokens = c->kept_keys = 0;
    for (int32_t b = 0; b < b_n; b++) {
        int32_t q = c->qo_len[b], l = c->kv_len[b];
        c->qo_indptr[b + 1] = c->qo_indptr[b] + q;
        int32_t pages = (l + o->page - 1) / o->page;
        c->kv_indptr[b + 1] = c->kv_indptr[b] + (c->paged ? pages : l);
        c->last_page_len[b] = l - (pages - 1) * o->page;
        c->rows += q;
        c->kv_tokens += l;
        for (int32_t i = 0; i < q; i++)
            c->kept_keys += row_keys(o, q, l, i);
    }
    size_t row_elems = (size_t)o->hkv * (size_t)o->head_dim;
    if (c->paged) {
        c->num_pages = c->kv_indptr[b_n];
        c->kv_indices = malloc(sizeof(int32_t) * (size_t)(c->num_pages > 0 ? c->num_pages : 1));
        int64_t step = c->num_pages % 7919 == 0 ? 1 : 7919; /* 7919 is prime */
        for (int32_t i = 0; i < c->num_pages; i++)
            c->kv_indices[i] = (int32_t)(((int64_t)i * step) % c->num_pages);
        c->kv_elems = (size_t)c->num_pages * (size_t)o->page * row_elems;
    } else {
        c->num_pages = 0;
        c->kv_elems = (size_t)c->kv_tokens * row_elems;
    }
}

static bool parse_case(const char *spec, const bench_opts *o, bench_case *c) {
    char buf[128];
    if (strlen(spec) >= sizeof buf)
        return false;
    strcpy(buf, spec);
    char *fields[6];
    int n = 0;
    for (char *save = NULL, *t = strtok_r(buf, ":", &save); t && n < 6;
         t = strtok_r(NULL, ":", &save))
        fields[n++] = t;
    if (n == 0)
        return false;
    memset(c, 0, sizeof *c);
    bool has_storage =
        n > 1 && (!strcmp(fields[n - 1], "paged") || !strcmp(fields[n - 1], "ragged"));
    int params = n - 1 - (has_storage ? 1 : 0);
    long v[3] = {0, 0, 0};
    for (int i = 0; i < params && i < 3; i++) {
        char *end;
        v[i] = strtol(fields[1 + i], &end, 10);
        if (*end || v[i] <= 0 || v[i] > (1L << 24))
            return false;
    }
    const char *kind = fields[0];
    if (!strcmp(kind, "single") && params == 1) {
        c->kind = CASE_SINGLE;
        c->batch = 1;
        c->paged = false;
    } else if (!strcmp(kind, "ragged") && params == 3 && v[1] <= v[2]) {
        c->kind = CASE_RAGGED;
        c->batch = (int32_t)v[0];
        c->paged = true;
    } else if ((!strcmp(kind, "spec") || !strcmp(kind, "specdec")) && params == 3 && v[1] <= v[2]) {
        c->kind = CASE_SPEC;
        c->batch = (int32_t)v[0];
        c->paged = true;
        c->use_decode_api = !strcmp(kind, "specdec");
        if (c->use_decode_api && (v[1] > FLP_DECODE_MAX_QO_LEN || has_storage))
            return false;
    } else {
        return false;
    }
    if (has_storage)
        c->paged = !strcmp(fields[n - 1], "paged");
    /* name = the spec without the storage suffix (the peer's key) */
    snprintf(c->name, sizeof c->name, "%s", spec);
    if (has_storage)
        *strrchr(c->name, ':') = '\0';
    c->qo_len = malloc(sizeof(int32_t) * (size_t)c->batch);
    c->kv_len = malloc(sizeof(int32_t) * (size_t)c->batch);
    uint64_t state = o->seed;
    for (int32_t b = 0; b < c->batch; b++) {
        if (c->kind == CASE_SINGLE) {
            c->qo_len[b] = c->kv_len[b] = (int32_t)v[0];
        } else if (c->kind == CASE_RAGGED) {
            uint64_t span = (uint64_t)(v[2] - v[1] + 1);
            c->qo_len[b] = c->kv_len[b] = (int32_t)(v[1] + (long)(bench_splitmix64(&state) % span));
        } else {
            c->qo_len[b] = (int32_t)v[1];
            c->kv_len[b] = (int32_t)v[2];
        }
    }
    layout_case(c, o);
    return true;
}

static void free_case(bench_case *c) {
    free(c->qo_len);
    free(c->kv_len);
    free(c->qo_indptr);
    free(c->kv_indptr);
    free(c->kv_indices);
    free(c->last_page_len);
}

/* ---- peer results (peer_torch_prefill.py lines) --------------------------------------- */

typedef struct peer_entry {
    char case_name[64];
    char sdpa[16];
    double tflops;
} peer_entry;

static peer_entry *peers;
static int num_peers;

/* Value of "key=" in line (up to the next space) into out; false when absent. */
static bool line_field(const char *line, const char *key, char *out, size_t size) {
    size_t kl = strlen(key);
    for (const char *p = line; (p = strstr(p, key)) != NULL; p += kl) {
        if ((p != line && p[-1] != ' ') || p[kl] != '=')
            continue;
        p += kl + 1;
        size_t n = strcspn(p, " \n");
        if (n >= size)
            n = size - 1;
        memcpy(out, p, n);
        out[n] = '\0';
        return true;
    }
    return false;
}

/* The peer lines of path with this run's mask, and the same job's matrix ceiling unless
 * --gemm-tflops gave it. */
static void load_peers(const char *path, bench_opts *o) {
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "warning: cannot read peer file %s: no peer ratios\n", path);
        return;
    }
    char line[1024], status[32], tf[32], mask[16];
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "peer_ceiling ", 13) == 0 && o->gemm_tflops == 0 &&
            line_field(line, "gemm_tflops", tf, sizeof tf) && atof(tf) > 0)
            o->gemm_tflops = atof(tf);
        if (strncmp(line, "peer_prefill ", 13) != 0)
            continue;
        /* lines without mask= come from the causal-only peer */
        if (!line_field(line, "mask", mask, sizeof mask))
            strcpy(mask, "causal");
        if (strcmp(mask, o->causal ? "causal" : "none") != 0)
            continue;
        peer_entry e = {0};
        if (!line_field(line, "case", e.case_name, sizeof e.case_name) ||
            !line_field(line, "sdpa", e.sdpa, sizeof e.sdpa) ||
            !line_field(line, "status", status, sizeof status) || strcmp(status, "ok") != 0 ||
            !line_field(line, "tflops", tf, sizeof tf))
            continue;
        e.tflops = atof(tf);
        peer_entry *grown = realloc(peers, sizeof *peers * (size_t)(num_peers + 1));
        if (!grown)
            break;
        peers = grown;
        peers[num_peers++] = e;
    }
    fclose(f);
}

/* Best TFLOP/s of an SDPA backend over its modes for this case; 0 when none. */
static double peer_best(const bench_case *c, const char *sdpa) {
    char key[64];
    if (c->use_decode_api)
        snprintf(key, sizeof key, "spec%s", c->name + strlen("specdec"));
    else
        snprintf(key, sizeof key, "%s", c->name);
    double best = 0;
    for (int i = 0; i < num_peers; i++)
        if (!strcmp(peers[i].case_name, key) && !strcmp(peers[i].sdpa, sdpa) &&
            peers[i].tflops > best)
            best = peers[i].tflops;
    return best;
}

/* ---- device data ---------------------------------------------------------------------- */

/* Host copies keep every dtype's bits in 16-bit elements (fp8 in the low byte). */
static inline float bits_to_f32(flp_dtype dtype, uint16_t h) {
    if (dtype == FLP_DTYPE_E4M3)
        return flp_e4m3_to_f32((uint8_t)h);
    if (dtype == FLP_DTYPE_E5M2)
        return flp_e5m2_to_f32((uint8_t)h);
    if (dtype == FLP_DTYPE_BF16) {
        uint32_t u = (uint32_t)h << 16;
        float f;
        memcpy(&f, &u, sizeof f);
        return f;
    }
    return flp_f16_to_f32(h);
}

static inline uint16_t f32_to_bits(flp_dtype dtype, float f) {
    if (dtype == FLP_DTYPE_E4M3)
        return flp_f32_to_e4m3(f);
    if (dtype == FLP_DTYPE_E5M2)
        return flp_f32_to_e5m2(f);
    if (dtype == FLP_DTYPE_BF16) { /* finite inputs only: round to nearest even */
        uint32_t u;
        memcpy(&u, &f, sizeof u);
        return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }
    return flp_f32_to_f16(f);
}

enum { FILL_CHUNK = 1 << 20 };

typedef struct fill_job {
    uint16_t *dst;
    size_t n;
    flp_dtype dtype;
    uint64_t seed;
} fill_job;

static void fill_chunk(void *arg, int64_t chunk) {
    const fill_job *j = arg;
    /* Each chunk has its own stream, so the data do not depend on the thread count. */
    uint64_t state = j->seed ^ ((uint64_t)chunk * 0xd1b54a32d192ed03ull);
    size_t begin = (size_t)chunk * FILL_CHUNK, end = begin + FILL_CHUNK;
    if (end > j->n)
        end = j->n;
    for (size_t i = begin; i < end; i++)
        j->dst[i] = f32_to_bits(j->dtype, uniform_pm1(&state));
}

/* n random values in [-1, 1) stored as dtype, uploaded to a new buffer; returns the host copy
 * (16-bit elements, see bits_to_f32). */
static uint16_t *random_buffer(flp_context *ctx, flp_dtype dtype, size_t n, uint64_t seed,
                               flp_buffer **out) {
    uint16_t *h = malloc(n * sizeof *h);
    if (!h) {
        fprintf(stderr, "out of host memory (%zu elements)\n", n);
        exit(1);
    }
    fill_job job = {h, n, dtype, seed};
    parallel_for((int64_t)((n + FILL_CHUNK - 1) / FILL_CHUNK), fill_chunk, &job);
    size_t esize = flp_dtype_size(dtype);
    flp_buffer_desc bd = {n * esize};
    CHECK(flp_buffer_create(ctx, &bd, out));
    if (esize == sizeof *h) {
        CHECK(flp_buffer_write(ctx, *out, 0, h, n * esize));
        return h;
    }
    uint8_t *bytes = malloc(n); /* fp8: the low bytes */
    if (!bytes) {
        fprintf(stderr, "out of host memory (%zu elements)\n", n);
        exit(1);
    }
    for (size_t i = 0; i < n; i++)
        bytes[i] = (uint8_t)h[i];
    CHECK(flp_buffer_write(ctx, *out, 0, bytes, n));
    free(bytes);
    return h;
}

/* ---- the float64 check of sampled rows -------------------------------------------------- */

typedef struct check_job {
    const bench_case *c;
    const bench_opts *o;
    const uint16_t *q, *k, *v; /* host copies of the pools */
    const int64_t *rows;       /* [n] sampled global query rows */
    double *ref;               /* [n, Hq, D] */
} check_job;

/* Element offset of token t of request b, KV head 0, in the K/V pools. */
static size_t kv_offset(const bench_case *c, const bench_opts *o, int32_t b, int64_t t) {
    size_t row_elems = (size_t)o->hkv * (size_t)o->head_dim;
    if (!c->paged)
        return ((size_t)c->kv_indptr[b] + (size_t)t) * row_elems;
    int32_t page = c->kv_indices[c->kv_indptr[b] + t / o->page];
    return ((size_t)page * (size_t)o->page + (size_t)(t % o->page)) * row_elems;
}

static void check_row(void *arg, int64_t task) {
    const check_job *j = arg;
    const bench_case *c = j->c;
    const bench_opts *o = j->o;
    int64_t r = j->rows[task];
    int32_t b = 0;
    while (c->qo_indptr[b + 1] <= r)
        b++;
    int64_t i = r - c->qo_indptr[b];
    int64_t keys = row_keys(o, c->qo_len[b], c->kv_len[b], i);
    int32_t d_n = o->head_dim, group = o->hq / o->hkv;
    double scale = 1.0 / sqrt((double)d_n);
    double *logits = malloc(sizeof(double) * (size_t)(keys * group));
    double *qd = malloc(sizeof(double) * (size_t)(group * d_n));
    double *row = malloc(sizeof(double) * (size_t)d_n);
    double *out = j->ref + (size_t)task * (size_t)o->hq * (size_t)d_n;
    for (int32_t g = 0; g < o->hkv; g++) {
        for (int32_t h = 0; h < group; h++)
            for (int32_t d = 0; d < d_n; d++)
                qd[h * d_n + d] = bits_to_f32(
                    o->dtype, j->q[((size_t)r * o->hq + (size_t)(g * group + h)) * d_n + d]);
        for (int64_t t = 0; t < keys; t++) {
            const uint16_t *kr = j->k + kv_offset(c, o, b, t) + (size_t)g * d_n;
            for (int32_t d = 0; d < d_n; d++)
                row[d] = bits_to_f32(o->kv_dtype, kr[d]);
            for (int32_t h = 0; h < group; h++) {
                double s = 0;
                for (int32_t d = 0; d < d_n; d++)
                    s += qd[h * d_n + d] * row[d];
                logits[t * group + h] =
                    o->soft_cap > 0 ? o->soft_cap * tanh(s * scale / o->soft_cap) : s * scale;
            }
        }
        for (int32_t h = 0; h < group; h++) {
            double m = -INFINITY, sum = 0;
            for (int64_t t = 0; t < keys; t++)
                m = fmax(m, logits[t * group + h]);
            for (int64_t t = 0; t < keys; t++) {
                double p = exp(logits[t * group + h] - m);
                logits[t * group + h] = p;
                sum += p;
            }
            for (int64_t t = 0; t < keys; t++)
                logits[t * group + h] /= sum;
            memset(out + (size_t)(g * group + h) * d_n, 0, sizeof(double) * (size_t)d_n);
        }
        for (int64_t t = 0; t < keys; t++) {
            const uint16_t *vr = j->v + kv_offset(c, o, b, t) + (size_t)g * d_n;
            for (int32_t d = 0; d < d_n; d++)
                row[d] = bits_to_f32(o->kv_dtype, vr[d]);
            for (int32_t h = 0; h < group; h++) {
                double p = logits[t * group + h], *oh = out + (size_t)(g * group + h) * d_n;
                for (int32_t d = 0; d < d_n; d++)
                    oh[d] += p * row[d];
            }
        }
    }
    free(logits);
    free(qd);
    free(row);
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* min(want, rows) distinct rows, sorted: the first, the last, the last of request 0, the rest
 * at random. rows[] has room for want + 3. */
static int64_t sample_rows(const bench_case *c, int want, uint64_t seed, int64_t *rows) {
    if (c->rows <= want + 3) {
        for (int64_t r = 0; r < c->rows; r++)
            rows[r] = r;
        return c->rows;
    }
    int64_t n = 0;
    int64_t fixed[3] = {0, c->rows - 1, c->qo_indptr[1] - 1};
    uint64_t state = seed ^ 0x5851f42d4c957f2dull;
    for (int64_t k = 0; n < want; k++) {
        int64_t r = k < 3 ? fixed[k] : (int64_t)(bench_splitmix64(&state) % (uint64_t)c->rows);
        bool seen = false;
        for (int64_t i = 0; i < n && !seen; i++)
            seen = rows[i] == r;
        if (!seen)
            rows[n++] = r;
    }
    qsort(rows, (size_t)n, sizeof *rows, cmp_i64);
    return n;
}

typedef struct check_result {
    bool all_finite;
    double max_row_err; /* max over sampled rows of max|out - ref| / max|ref| over the row */
    int64_t rows_checked, worst_row;
} check_result;

static check_result check_case(flp_context *ctx, const bench_case *c, const bench_opts *o,
                               const flp_buffer *o_buf, const uint16_t *q, const uint16_t *k,
                               const uint16_t *v) {
    check_result res = {true, 0, 0, -1};
    size_t row_elems = (size_t)o->hq * (size_t)o->head_dim;
    size_t n = (size_t)c->rows * row_elems;
    uint16_t *got = malloc(n * sizeof *got);
    CHECK(flp_buffer_read(ctx, o_buf, 0, got, n * sizeof *got));
    for (size_t i = 0; i < n && res.all_finite; i++)
        res.all_finite = isfinite(bits_to_f32(o->dtype, got[i]));

    int64_t *rows = malloc(sizeof(int64_t) * (size_t)(o->check_rows + 3));
    int64_t count = sample_rows(c, o->check_rows, o->seed, rows);
    check_job job = {c, o, q, k, v, rows, malloc(sizeof(double) * (size_t)count * row_elems)};
    parallel_for(count, check_row, &job);
    double *g = malloc(sizeof(double) * row_elems);
    for (int64_t s = 0; s < count; s++) {
        for (size_t e = 0; e < row_elems; e++)
            g[e] = bits_to_f32(o->dtype, got[(size_t)rows[s] * row_elems + e]);
        double err = flp_ref_relative_error(g, job.ref + (size_t)s * row_elems, row_elems);
        if (!(err <= res.max_row_err)) { /* NaN counts as worse */
            res.max_row_err = err;
            res.worst_row = rows[s];
        }
    }
    res.rows_checked = count;
    free(g);
    free(job.ref);
    free(rows);
    free(got);
    return res;
}

/* ---- one case --------------------------------------------------------------------------- */

typedef struct case_run {
    flp_context *ctx;
    flp_plan *plan;
    bool decode;
    flp_prefill_run_args prefill;
    flp_decode_run_args dec;
} case_run;

static flp_status run_once(const case_run *r) {
    return r->decode ? flp_decode_run(r->ctx, r->plan, &r->dec)
                     : flp_prefill_run(r->ctx, r->plan, &r->prefill);
}

/* Seconds for `iters` runs queued back to back, closed by one synchronize. */
static double time_batch(const case_run *r, int iters, flp_status *st) {
    double t0 = timing_now_seconds();
    for (int i = 0; i < iters && *st == FLP_OK; i++)
        *st = run_once(r);
    if (*st == FLP_OK)
        *st = flp_context_synchronize(r->ctx);
    return timing_now_seconds() - t0;
}

typedef struct case_result {
    const char *status; /* "ok", "FAIL", "error" */
    char message[256];
    check_result check;
    double time_s;
    int iters, samples;
    const char *decode_kernel; /* specdec: "vector" or "matrix"; else "-" */
} case_result;

static void plan_case(const bench_case *c, const bench_opts *o, case_run *r, flp_status *st) {
    flp_context *ctx = r->ctx;
    static const flp_variant_param cap_param[] = {{"cap", FLP_PARAM_FLOAT}};
    const bool snippet = o->soft_cap_snippet && o->soft_cap > 0;
    flp_variant var = {.head_dim = o->head_dim,
                       .q_dtype = o->dtype,
                       .kv_dtype = o->kv_dtype,
                       .mask = o->causal ? FLP_MASK_CAUSAL : FLP_MASK_NONE,
                       .logits_soft_cap = snippet ? 0.0f : (float)o->soft_cap,
                       .logits_transform = snippet ? "return cap * tanh(logit / cap);" : NULL,
                       .params = snippet ? cap_param : NULL,
                       .num_params = snippet ? 1 : 0};
    flp_plan_desc pd = {.max_batch_size = c->batch,
                        .max_pages = c->paged ? c->num_pages : 1,
                        .num_qo_heads = o->hq,
                        .num_kv_heads = o->hkv,
                        .head_dim = o->head_dim,
                        .decode_kernel = o->decode_kernel};
    if (c->use_decode_api)
        pd.max_qo_len = c->qo_len[0];
    else
        pd.max_qo_rows = (int32_t)c->rows;
    *st = flp_plan_create(ctx, &pd, &r->plan);
    if (*st != FLP_OK)
        return;
    if (c->use_decode_api) {
        flp_decode_plan_args pa = {.batch_size = c->batch,
                                   .qo_len = c->qo_len[0],
                                   .page_size = o->page,
                                   .kv_indptr = c->kv_indptr,
                                   .kv_indices = c->kv_indices,
                                   .kv_last_page_len = c->last_page_len,
                                   .variant = var};
        *st = flp_decode_plan(ctx, r->plan, &pa);
    } else {
        flp_prefill_plan_args pa = {.batch_size = c->batch,
                                    .qo_indptr = c->qo_indptr,
                                    .kv_storage = c->paged ? FLP_KV_PAGED : FLP_KV_RAGGED,
                                    .kv_indptr = c->kv_indptr,
                                    .kv_indices = c->paged ? c->kv_indices : NULL,
                                    .kv_last_page_len = c->paged ? c->last_page_len : NULL,
                                    .page_size = c->paged ? o->page : 0,
                                    .variant = var};
        *st = flp_prefill_plan(ctx, r->plan, &pa);
    }
}

static case_result run_case(flp_context *ctx, const bench_case *c, const bench_opts *o,
                            flp_buffer *q_buf, flp_buffer *k_buf, flp_buffer *v_buf,
                            flp_buffer *o_buf, const uint16_t *q, const uint16_t *k,
                            const uint16_t *v) {
    case_result res = {.status = "error", .decode_kernel = "-"};
    case_run r = {.ctx = ctx, .decode = c->use_decode_api};
    flp_status st = FLP_OK;
    plan_case(c, o, &r, &st);
    if (st == FLP_OK && c->use_decode_api)
        res.decode_kernel = bench_decode_kernel_name(r.plan);
    if (st == FLP_OK) {
        int64_t q_shape[3] = {c->rows, o->hq, o->head_dim};
        int64_t kv_shape[4] = {c->num_pages, o->page, o->hkv, o->head_dim};
        int64_t kv_ragged[3] = {c->kv_tokens, o->hkv, o->head_dim};
        flp_tensor qt = flp_tensor_contiguous(q_buf, 0, o->dtype, 3, q_shape);
        flp_tensor ot = flp_tensor_contiguous(o_buf, 0, o->dtype, 3, q_shape);
        flp_tensor kt = c->paged ? flp_tensor_contiguous(k_buf, 0, o->kv_dtype, 4, kv_shape)
                                 : flp_tensor_contiguous(k_buf, 0, o->kv_dtype, 3, kv_ragged);
        flp_tensor vt = c->paged ? flp_tensor_contiguous(v_buf, 0, o->kv_dtype, 4, kv_shape)
                                 : flp_tensor_contiguous(v_buf, 0, o->kv_dtype, 3, kv_ragged);
        /* --soft-cap-as snippet: the cap's value for the snippet (ignored by the plans without) */
        const flp_param_value *values = NULL;
        int32_t num_values = 0;
        static flp_param_value cap_value = {.name = "cap"};
        if (o->soft_cap_snippet && o->soft_cap > 0) {
            cap_value.f = (float)o->soft_cap;
            values = &cap_value;
            num_values = 1;
        }
        r.prefill = (flp_prefill_run_args){
            .q = qt, .k = kt, .v = vt, .out = ot, .params = values, .num_params = num_values};
        r.dec = (flp_decode_run_args){.q = qt,
                                      .k_cache = kt,
                                      .v_cache = vt,
                                      .out = ot,
                                      .params = values,
                                      .num_params = num_values};

        /* Poison the output (all-ones bits: NaN in bf16 and f16), run once, check. */
        size_t o_bytes = (size_t)c->rows * (size_t)o->hq * (size_t)o->head_dim * 2;
        void *poison = malloc(o_bytes);
        memset(poison, 0xff, o_bytes);
        st = flp_buffer_write(ctx, o_buf, 0, poison, o_bytes);
        free(poison);
        if (st == FLP_OK)
            st = run_once(&r);
        if (st == FLP_OK)
            st = flp_context_synchronize(ctx);
    }
    if (st != FLP_OK) {
        snprintf(res.message, sizeof res.message, "%s: %s", flp_status_string(st),
                 flp_context_last_error(ctx));
        flp_plan_destroy(r.plan);
        return res;
    }
    res.check = check_case(ctx, c, o, o_buf, q, k, v);
    double tol = bench_tolerance(o->dtype);
    if (!res.check.all_finite || !(res.check.max_row_err <= tol)) {
        res.status = "FAIL";
        snprintf(res.message, sizeof res.message,
                 "%s; worst sampled row %lld has error %.2e (tolerance %.1e)",
                 res.check.all_finite ? "every output finite"
                                      : "output has non-finite values (unwritten rows?)",
                 (long long)res.check.worst_row, res.check.max_row_err, tol);
        flp_plan_destroy(r.plan);
        return res;
    }

    /* Warm up: one timed run estimates the cost; fast kernels get more warm-up (clocks). */
    double budget = o->budget_ms * 1e-3;
    double est = time_batch(&r, 1, &st);
    for (double warm = est; st == FLP_OK && warm < 0.05 && warm < budget / 4;) {
        int n = (int)fmin(20.0, fmax(1.0, 0.01 / fmax(est, 1e-6)));
        double t = time_batch(&r, n, &st);
        warm += t;
        est = t / n;
    }
    /* A run longer than the whole budget (Vulkan on long prompts) is timed once more. */
    int samples = est > budget ? 1 : est * 5 > budget ? 3 : 5;
    int iters = (int)fmin((double)o->max_iters, fmax(1.0, budget / (samples * fmax(est, 1e-7))));
    double times[5];
    for (int s = 0; s < samples && st == FLP_OK; s++)
        times[s] = time_batch(&r, iters, &st) / iters;
    if (st != FLP_OK) {
        snprintf(res.message, sizeof res.message, "%s: %s", flp_status_string(st),
                 flp_context_last_error(ctx));
        flp_plan_destroy(r.plan);
        return res;
    }
    res.time_s = timing_median(times, (size_t)samples);
    res.iters = iters;
    res.samples = samples;
    res.status = "ok";
    flp_plan_destroy(r.plan);
    return res;
}

/* ---- reporting -------------------------------------------------------------------------- */

typedef struct table_row {
    char text[400];
} table_row;

static double case_flop(const bench_case *c, const bench_opts *o) {
    return 4.0 * o->head_dim * o->hq * (double)c->kept_keys;
}

static double case_bytes(const bench_case *c, const bench_opts *o) {
    double e = (double)flp_dtype_size(o->dtype), kv_e = (double)flp_dtype_size(o->kv_dtype);
    return (double)c->kv_tokens * o->hkv * o->head_dim * 2.0 * kv_e +
           2.0 * (double)c->rows * o->hq * o->head_dim * e;
}

static const char *case_api_name(const bench_case *c) {
    return c->use_decode_api ? "decode" : "prefill";
}

static void describe_case(const bench_case *c, const bench_opts *o, char *out, size_t size) {
    const char *kv = c->paged ? (o->causal ? "paged" : "paged, no mask")
                              : (o->causal ? "ragged KV" : "ragged KV, no mask");
    if (c->kind == CASE_SINGLE)
        snprintf(out, size, "single prompt %d (%s)", c->qo_len[0], kv);
    else if (c->kind == CASE_RAGGED)
        snprintf(out, size, "%d prompts, %lld rows (%s)", c->batch, (long long)c->rows, kv);
    else
        snprintf(out, size, "spec B=%d qo=%d kv=%d (%s, %s API)", c->batch, c->qo_len[0],
                 c->kv_len[0], kv, case_api_name(c));
}

static void print_dry_run(const bench_case *c, const bench_opts *o) {
    printf("case=%s api=%s kv=%s B=%d rows=%lld kv_tokens=%lld kept_keys=%lld gflop=%.3f "
           "gbytes=%.4f lengths=",
           c->name, case_api_name(c), c->paged ? "paged" : "ragged", c->batch, (long long)c->rows,
           (long long)c->kv_tokens, (long long)c->kept_keys, case_flop(c, o) * 1e-9,
           case_bytes(c, o) * 1e-9);
    for (int32_t b = 0; b < c->batch && b < 64; b++)
        printf("%s%d/%d", b ? "," : "", c->qo_len[b], c->kv_len[b]);
    printf("%s\n", c->batch > 64 ? ",..." : "");
}

/* The case list with each item "default" or "quick" replaced by that set's cases (malloc'd). */
static char *expand_case_sets(const char *cases) {
    size_t cap = strlen(cases) + 1, len = 0;
    char *out = malloc(cap), *buf = strdup(cases);
    out[0] = '\0';
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        const char *item = !strcmp(t, "default") ? DEFAULT_CASES
                           : !strcmp(t, "quick") ? QUICK_CASES
                                                 : t;
        const size_t n = strlen(item);
        if (len + n + 2 > cap) {
            cap = 2 * (len + n + 2);
            out = realloc(out, cap);
        }
        if (len > 0)
            out[len++] = ',';
        memcpy(out + len, item, n + 1);
        len += n;
    }
    free(buf);
    return out;
}

int main(int argc, char **argv) {
    bench_opts o = parse_args(argc, argv);

    /* Parse every case first: a typo fails before any device work. */
    bench_case *cases = NULL;
    int num_cases = 0;
    char *list = expand_case_sets(o.cases);
    for (char *save = NULL, *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        cases = realloc(cases, sizeof *cases * (size_t)(num_cases + 1));
        if (!parse_case(t, &o, &cases[num_cases]))
            usage_error("bad case", t);
        num_cases++;
    }
    free(list);
    if (num_cases == 0)
        usage_error("no cases in", o.cases);
    if (o.dry_run) {
        for (int i = 0; i < num_cases; i++) {
            print_dry_run(&cases[i], &o);
            free_case(&cases[i]);
        }
        free(cases);
        return 0;
    }
    if (o.peer_file)
        load_peers(o.peer_file, &o);

    flp_context_desc cd = {.backend = o.backend};
    const char *log_env = getenv("FLP_BENCH_LOG");
    if (log_env && strcmp(log_env, "1") == 0) {
        cd.log = log_to_stderr;
        cd.log_level = FLP_LOG_DEBUG;
    }
    flp_device_info info;
    flp_context *ctx = bench_open_context(&cd, &info);
    bool is_cuda = info.backend == FLP_BACKEND_CUDA;
    const char *mask_name = o.causal ? "causal" : "none";
    const double gemm_ceiling = o.gemm_tflops > 0 ? o.gemm_tflops : CUDA_BF16_GEMM_TFLOPS;
    const char *gemm_source = o.gemm_tflops > 0 ? "same_job" : "nominal";
    printf("prefill bench: backend=%s device=\"%s\" driver=\"%s\" Hq=%d Hkv=%d D=%d page=%d "
           "dtype=%s kv_dtype=%s mask=%s soft_cap=%g budget_ms=%.0f max_iters=%d check_rows=%d "
           "seed=%llu\n",
           info.backend_name, info.device_name, info.driver_info, o.hq, o.hkv, o.head_dim, o.page,
           flp_dtype_name(o.dtype), flp_dtype_name(o.kv_dtype), mask_name, o.soft_cap, o.budget_ms,
           o.max_iters, o.check_rows, (unsigned long long)o.seed);

    /* One pool per tensor, sized for the largest case and filled once; cases use a prefix. */
    size_t max_q = 1, max_kv = 1;
    for (int i = 0; i < num_cases; i++) {
        size_t qn = (size_t)cases[i].rows * (size_t)o.hq * (size_t)o.head_dim;
        max_q = qn > max_q ? qn : max_q;
        max_kv = cases[i].kv_elems > max_kv ? cases[i].kv_elems : max_kv;
    }
    double t0 = timing_now_seconds();
    flp_buffer *q_buf, *k_buf, *v_buf, *o_buf;
    uint16_t *q = random_buffer(ctx, o.dtype, max_q, o.seed * 3 + 1, &q_buf);
    uint16_t *k = random_buffer(ctx, o.kv_dtype, max_kv, o.seed * 3 + 2, &k_buf);
    uint16_t *v = random_buffer(ctx, o.kv_dtype, max_kv, o.seed * 3 + 3, &v_buf);
    flp_buffer_desc bd = {max_q * 2};
    CHECK(flp_buffer_create(ctx, &bd, &o_buf));
    printf("inputs: %.2f GB on the device, %.1f s to fill\n",
           (max_q * 2 * 2 + max_kv * 2 * flp_dtype_size(o.kv_dtype)) * 1e-9,
           timing_now_seconds() - t0);

    table_row *table = calloc((size_t)num_cases, sizeof *table);
    int failures = 0;
    for (int i = 0; i < num_cases; i++) {
        const bench_case *c = &cases[i];
        double t_case = timing_now_seconds();
        case_result res = run_case(ctx, c, &o, q_buf, k_buf, v_buf, o_buf, q, k, v);
        double flop = case_flop(c, &o), bytes = case_bytes(c, &o);
        printf("flp_prefill case=%s mask=%s soft_cap=%g%s api=%s decode_kernel=%s backend=%s kv=%s "
               "B=%d rows=%lld kept_keys=%lld Hq=%d Hkv=%d D=%d dtype=%s kv_dtype=%s gflop=%.3f",
               c->name, mask_name, o.soft_cap,
               o.soft_cap_snippet && o.soft_cap > 0 ? " soft_cap_as=snippet" : "", case_api_name(c),
               res.decode_kernel, info.backend_name, c->paged ? "paged" : "ragged", c->batch,
               (long long)c->rows, (long long)c->kept_keys, o.hq, o.hkv, o.head_dim,
               flp_dtype_name(o.dtype), flp_dtype_name(o.kv_dtype), flop * 1e-9);
        char desc[128], ceil_text[64] = "", peer_text[64] = "";
        describe_case(c, &o, desc, sizeof desc);
        if (strcmp(res.status, "ok") == 0) {
            double tflops = flop / res.time_s * 1e-12, gbps = bytes / res.time_s * 1e-9;
            printf(" iters=%dx%d time_us=%.1f tflops=%.4g gbps=%.4g", res.samples, res.iters,
                   res.time_s * 1e6, tflops, gbps);
            if (o.copy_gbps > 0)
                printf(" of_copy=%.3f", gbps / o.copy_gbps);
            if (is_cuda) {
                printf(" of_bf16_gemm=%.3f gemm_tflops=%.0f gemm_source=%s", tflops / gemm_ceiling,
                       gemm_ceiling, gemm_source);
                snprintf(ceil_text, sizeof ceil_text, "%.3f of %.0f%s", tflops / gemm_ceiling,
                         gemm_ceiling, o.gemm_tflops > 0 ? "" : " (nominal)");
            } else {
                printf(" of_coopmat=%.3f of_fp32_fma=%.3f", tflops / VULKAN_COOPMAT_TFLOPS,
                       tflops / VULKAN_FMA_TFLOPS);
                snprintf(ceil_text, sizeof ceil_text, "%.3f of %.0f / %.3f of %.0f",
                         tflops / VULKAN_COOPMAT_TFLOPS, VULKAN_COOPMAT_TFLOPS,
                         tflops / VULKAN_FMA_TFLOPS, VULKAN_FMA_TFLOPS);
            }
            double p_cudnn = peer_best(c, "cudnn"), p_flash = peer_best(c, "flash");
            if (p_cudnn > 0)
                printf(" vs_cudnn=%.2f", tflops / p_cudnn);
            if (p_flash > 0)
                printf(" vs_flash=%.2f", tflops / p_flash);
            char rc[16] = "", rf[16] = "";
            if (p_cudnn > 0)
                snprintf(rc, sizeof rc, "%.2f", tflops / p_cudnn);
            if (p_flash > 0)
                snprintf(rf, sizeof rf, "%.2f", tflops / p_flash);
            snprintf(peer_text, sizeof peer_text, "%s | %s", rc, rf);
            snprintf(table[i].text, sizeof table[i].text,
                     "| flashport %s | %s | %.1f | %.4g | %.4g | %s | %s |",
                     is_cuda ? "CUDA" : "Vulkan", desc, res.time_s * 1e6, tflops, gbps, ceil_text,
                     peer_text);
        } else {
            failures++;
            snprintf(table[i].text, sizeof table[i].text, "| flashport %s | %s | %s | | | | | |",
                     is_cuda ? "CUDA" : "Vulkan", desc, res.status);
        }
        if (res.check.rows_checked > 0)
            printf(" check_rows=%lld max_row_err=%.1e", (long long)res.check.rows_checked,
                   res.check.max_row_err);
        printf(" wall_s=%.2f status=%s\n", timing_now_seconds() - t_case, res.status);
        if (strcmp(res.status, "ok") != 0)
            printf("%s case=%s: %s\n", res.status, c->name, res.message);
        fflush(stdout);
    }

    printf("\nmarkdown rows (implementation | case | time us | TFLOP/s | GB/s | of ceiling | "
           "vs cuDNN | vs flash):\n");
    for (int i = 0; i < num_cases; i++)
        printf("%s\n", table[i].text);

    flp_buffer_destroy(q_buf);
    flp_buffer_destroy(k_buf);
    flp_buffer_destroy(v_buf);
    flp_buffer_destroy(o_buf);
    flp_context_destroy(ctx);
    for (int i = 0; i < num_cases; i++)
        free_case(&cases[i]);
    free(cases);
    free(table);
    free(peers);
    free(q);
    free(k);
    free(v);
    return failures ? 1 : 0;
}
