/* The functions of the snippet language (docs/variants.md) for CUDA, with the same overloads
 * and results as shaders/snippet_prelude.glsl: float arithmetic in float (never double), and
 * min/max/clamp of an int and a float in float, as GLSL converts the int (C++ would find those
 * calls ambiguous between the int and float overloads). A kernel that compiles user snippets
 * includes this before core/snippet.c's wrapper and defines FLP_USER_FLOAT(j), FLP_USER_INT(j),
 * FLP_USER_READ_FLOAT(j, i) and FLP_USER_READ_INT(j, i). */
#ifndef FLP_CUDA_SNIPPET_PRELUDE_CUH
#define FLP_CUDA_SNIPPET_PRELUDE_CUH

#define FLP_SNIPPET_FN __device__ __forceinline__

/* flp_<name>(float) as the float function of the CUDA math library */
#define FLP_SNIPPET_UNARY(name, math)                                                              \
    FLP_SNIPPET_FN float flp_##name(float x) {                                                     \
        return math(x);                                                                            \
    }
FLP_SNIPPET_UNARY(exp, expf)
FLP_SNIPPET_UNARY(exp2, exp2f)
FLP_SNIPPET_UNARY(log, logf)
FLP_SNIPPET_UNARY(log2, log2f)
FLP_SNIPPET_UNARY(sqrt, sqrtf)
FLP_SNIPPET_UNARY(floor, floorf)
FLP_SNIPPET_UNARY(ceil, ceilf)
FLP_SNIPPET_UNARY(sin, sinf)
FLP_SNIPPET_UNARY(cos, cosf)
FLP_SNIPPET_UNARY(abs, fabsf)
#undef FLP_SNIPPET_UNARY
/* clamped as in GLSL's prelude (the same value: tanh of |x| > 15 is 1 in float) */
FLP_SNIPPET_FN float flp_tanh(float x) {
    return tanhf(fminf(fmaxf(x, -15.0f), 15.0f));
}
FLP_SNIPPET_FN float flp_pow(float x, float y) {
    return powf(x, y);
}
FLP_SNIPPET_FN float flp_sigmoid(float x) {
    return 1.0f / (1.0f + expf(-x));
}
FLP_SNIPPET_FN int flp_abs(int x) {
    return x < 0 ? -x : x;
}

/* int when both are int, else float */
template <class A, class B> struct flp_snippet_common { typedef float type; };
template <> struct flp_snippet_common<int, int> { typedef int type; };
template <class A, class B>
FLP_SNIPPET_FN typename flp_snippet_common<A, B>::type flp_min(A a, B b) {
    typedef typename flp_snippet_common<A, B>::type T;
    return static_cast<T>(b) < static_cast<T>(a) ? static_cast<T>(b) : static_cast<T>(a);
}
template <class A, class B>
FLP_SNIPPET_FN typename flp_snippet_common<A, B>::type flp_max(A a, B b) {
    typedef typename flp_snippet_common<A, B>::type T;
    return static_cast<T>(a) < static_cast<T>(b) ? static_cast<T>(b) : static_cast<T>(a);
}
template <class A, class B, class C>
FLP_SNIPPET_FN typename flp_snippet_common<typename flp_snippet_common<A, B>::type, C>::type
flp_clamp(A x, B lo, C hi) {
    return flp_min(flp_max(x, lo), hi);
}

#endif /* FLP_CUDA_SNIPPET_PRELUDE_CUH */
