/* CUDA graph capture and replay for the benchmarks (cuda_graph.h). */
#include "bench/cuda_graph.h"
#include "flashport/flashport_cuda.h"
#include "tools/dl_symbols.h"
#include "tools/host_timing.h"

#include <dlfcn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The driver types the calls below use, declared the way cuda.h declares them. */
typedef int cu_result;
typedef struct CUgraph_st *cu_graph;
typedef struct CUgraphExec_st *cu_graph_exec;
#define CAPTURE_MODE_GLOBAL 0
#define MAX_SAMPLES 64

static struct {
    cu_result (*begin_capture)(CUstream, int);
    cu_result (*end_capture)(CUstream, cu_graph *);
    cu_result (*instantiate)(cu_graph_exec *, cu_graph, unsigned long long);
    cu_result (*launch)(cu_graph_exec, CUstream);
    cu_result (*synchronize)(CUstream);
    cu_result (*exec_destroy)(cu_graph_exec);
    cu_result (*graph_destroy)(cu_graph);
    cu_result (*stream_context)(CUstream, CUcontext *);
    cu_result (*push)(CUcontext);
    cu_result (*pop)(CUcontext *);
} cu;

struct bench_graph {
    CUstream stream;
    CUcontext context;
    cu_graph graph;
    cu_graph_exec exec;
    int runs;
};

static bool load_driver(void) {
    static int loaded; /* 0 not tried, 1 loaded, -1 failed */
    if (loaded)
        return loaded > 0;
    loaded = -1;
    void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!lib)
        return false; /* no driver: not a CUDA machine, nothing to say */
    const dl_symbol syms[] = {
        {(void **)&cu.begin_capture, "cuStreamBeginCapture_v2"},
        {(void **)&cu.end_capture, "cuStreamEndCapture"},
        {(void **)&cu.instantiate, "cuGraphInstantiateWithFlags"},
        {(void **)&cu.launch, "cuGraphLaunch"},
        {(void **)&cu.synchronize, "cuStreamSynchronize"},
        {(void **)&cu.exec_destroy, "cuGraphExecDestroy"},
        {(void **)&cu.graph_destroy, "cuGraphDestroy"},
        {(void **)&cu.stream_context, "cuStreamGetCtx"},
        {(void **)&cu.push, "cuCtxPushCurrent_v2"},
        {(void **)&cu.pop, "cuCtxPopCurrent_v2"},
    };
    if (!dl_symbols_resolve(lib, syms, sizeof syms / sizeof syms[0], "bench: libcuda.so.1")) {
        dlclose(lib);
        return false;
    }
    loaded = 1;
    return true;
}

bench_graph *bench_graph_capture(flp_context *ctx, int runs, flp_status (*run)(void *arg),
                                 void *arg) {
    CUstream stream = flp_cuda_get_stream(ctx);
    if (!stream || runs < 1 || !load_driver())
        return NULL;
    bench_graph *g = calloc(1, sizeof *g);
    if (!g)
        return NULL;
    g->stream = stream;
    g->runs = runs;
    cu_result r = cu.stream_context(stream, &g->context);
    if (r == 0)
        r = cu.begin_capture(stream, CAPTURE_MODE_GLOBAL);
    if (r != 0) {
        fprintf(stderr, "bench: stream capture could not start (CUresult %d)\n", r);
        free(g);
        return NULL;
    }
    flp_status status = FLP_OK;
    for (int i = 0; i < runs && status == FLP_OK; i++)
        status = run(arg);
    r = cu.end_capture(stream, &g->graph);
    if (status != FLP_OK || r != 0) {
        fprintf(stderr, "bench: capture failed (%s, CUresult %d): %s\n", flp_status_string(status),
                r, flp_context_last_error(ctx));
        if (r == 0)
            cu.graph_destroy(g->graph);
        free(g);
        return NULL;
    }
    /* instantiation and launches take the calling thread's current context */
    r = cu.push(g->context);
    if (r == 0) {
        r = cu.instantiate(&g->exec, g->graph, 0);
        CUcontext popped;
        cu.pop(&popped);
    }
    if (r != 0) {
        fprintf(stderr, "bench: cuGraphInstantiate failed (CUresult %d)\n", r);
        cu.graph_destroy(g->graph);
        free(g);
        return NULL;
    }
    return g;
}

double bench_graph_seconds_per_run(bench_graph *g, int samples) {
    double times[MAX_SAMPLES];
    if (samples < 1)
        samples = 1;
    if (samples > MAX_SAMPLES)
        samples = MAX_SAMPLES;
    cu_result r = cu.push(g->context);
    if (r != 0) {
        fprintf(stderr, "bench: cuCtxPushCurrent failed (CUresult %d)\n", r);
        return -1.0;
    }
    r = cu.launch(g->exec, g->stream);
    if (r == 0)
        r = cu.synchronize(g->stream);
    for (int s = 0; s < samples && r == 0; s++) {
        double t0 = timing_now_seconds();
        r = cu.launch(g->exec, g->stream);
        if (r == 0)
            r = cu.synchronize(g->stream);
        times[s] = timing_now_seconds() - t0;
    }
    CUcontext popped;
    cu.pop(&popped);
    if (r != 0) {
        fprintf(stderr, "bench: graph replay failed (CUresult %d)\n", r);
        return -1.0;
    }
    return timing_median(times, (size_t)samples) / g->runs;
}

void bench_graph_destroy(bench_graph *g) {
    if (!g)
        return;
    cu.exec_destroy(g->exec);
    cu.graph_destroy(g->graph);
    free(g);
}
