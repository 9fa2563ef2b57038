/* Timing runs replayed from a CUDA graph, for the benchmarks: the driver is loaded with dlopen,
 * so the benchmarks need no CUDA toolkit and run unchanged on other backends. */
#ifndef FLP_BENCH_CUDA_GRAPH_H
#define FLP_BENCH_CUDA_GRAPH_H

#include "flashport/flashport.h"

typedef struct bench_graph bench_graph;

/* Captures `runs` calls of run(arg) on ctx's CUDA stream into one graph. NULL when ctx is not
 * a CUDA context or the driver cannot capture (the reason goes to stderr). */
bench_graph *bench_graph_capture(flp_context *ctx, int runs, flp_status (*run)(void *arg),
                                 void *arg);

/* Seconds per run: the graph replayed `samples` times after one warm-up replay, the median
 * replay divided by its runs; a negative value when a replay fails. */
double bench_graph_seconds_per_run(bench_graph *g, int samples);

/* Accepts NULL. */
void bench_graph_destroy(bench_graph *g);

#endif /* FLP_BENCH_CUDA_GRAPH_H */
