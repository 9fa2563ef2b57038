// Rotate-half RoPE (FLP_FLAG_ROPE), shared by the attention shaders: element d < D/2 of a row at
// position pos and its partner d + D/2 turn together by the angle pos * freq[d]:
//   x[d] = x[d] cos - x[d + D/2] sin,   x[d + D/2] = x[d + D/2] cos + x[d] sin.
// Each shader walks its own layout of a row (chunks, columns, lanes) and calls these per pair.
#ifndef FLP_ROPE_GLSL
#define FLP_ROPE_GLSL

// sin and cos of a possibly large angle: Cody-Waite reduction by 2*pi (two parts) first.
void sincos_reduced(float a, out float s, out float c) {
    precise float k = roundEven(a * 0.15915494309189535);
    precise float r = fma(-k, 6.28318548202514648, a);
    r = fma(-k, -1.7484555314695172e-7, r);
    s = sin(r);
    c = cos(r);
}

// Rotates the pair (lo, hi) = (x[d], x[d + D/2]) by angle.
void rope_rotate(inout float lo, inout float hi, float angle) {
    float s, c;
    sincos_reduced(angle, s, c);
    float a = lo, b = hi;
    lo = a * c - b * s;
    hi = b * c + a * s;
}

// One element x of a pair whose partner y another lane holds (subgroup shuffles): upper says
// that x is the pair's upper element x[d + D/2].
float rope_rotate_one(float x, float y, bool upper, float angle) {
    float s, c;
    sincos_reduced(angle, s, c);
    return upper ? x * c + y * s : x * c - y * s;
}

#endif
