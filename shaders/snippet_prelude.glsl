// The functions of the snippet language (docs/variants.md) for GLSL, with the same overloads
// and results as backend-cuda/kernels/snippet_prelude.cuh. clamp is min(max(x, lo), hi) in
// both (GLSL leaves clamp with lo > hi undefined). A kernel that compiles user snippets
// includes this before core/snippet.c's wrapper and defines FLP_USER_FLOAT(j), FLP_USER_INT(j),
// FLP_USER_READ_FLOAT(j, i) and FLP_USER_READ_INT(j, i).
#ifndef FLP_SNIPPET_PRELUDE_GLSL
#define FLP_SNIPPET_PRELUDE_GLSL
#define FLP_SNIPPET_FN
float flp_exp(float x) { return exp(x); }
float flp_exp2(float x) { return exp2(x); }
float flp_log(float x) { return log(x); }
float flp_log2(float x) { return log2(x); }
float flp_sqrt(float x) { return sqrt(x); }
float flp_floor(float x) { return floor(x); }
float flp_ceil(float x) { return ceil(x); }
// tanh of |x| > 15 is 1 in float; some drivers compute tanh through exp and make it NaN there
float flp_tanh(float x) { return tanh(clamp(x, -15.0f, 15.0f)); }
float flp_sin(float x) { return sin(x); }
float flp_cos(float x) { return cos(x); }
float flp_pow(float x, float y) { return pow(x, y); }
float flp_sigmoid(float x) { return 1.0f / (1.0f + exp(-x)); }
float flp_abs(float x) { return abs(x); }
int flp_abs(int x) { return abs(x); }
float flp_min(float a, float b) { return min(a, b); }
int flp_min(int a, int b) { return min(a, b); }
float flp_max(float a, float b) { return max(a, b); }
int flp_max(int a, int b) { return max(a, b); }
float flp_clamp(float x, float lo, float hi) { return min(max(x, lo), hi); }
int flp_clamp(int x, int lo, int hi) { return min(max(x, lo), hi); }
#endif
