// Softmax states and their merge, shared by the attention shaders and the merges (the GLSL
// counterpart of backend-cuda/kernels/merge_state.cuh):
// - in decode.comp, decode_cpu.comp and prefill.comp a row's state is (m, l, acc) in log2 units:
//   running max m of the logits (NEG_BIG: no key yet), l = sum exp2(x - m), acc = sum
//   exp2(x - m) v; output_scale and state_lse turn it into out and lse;
// - a split-KV chunk's partial state is (lse, o): its natural-log lse (-inf: no key kept) and
//   normalised output. prefill_merge.comp folds the chunks' states pairwise and decode_merge.comp
//   merges them all at once, both in chunk order (results do not depend on timing); an empty
//   state is the identity and is skipped.
#ifndef FLP_MERGE_STATE_GLSL
#define FLP_MERGE_STATE_GLSL

const float NEG_BIG = -1.0e30; // "no key yet": exp2(NEG_BIG - m) is 0 for any real m
const float LOG2E = 1.4426950408889634;
const float LN2 = 0.6931471805599453;

float neg_inf() {
    return uintBitsToFloat(0xff800000u);
}

// ---- log2-unit states of the attention shaders ----------------------------------------------

// The factor by which a state with max m enters a combination whose max is m_all (>= m): 0 for a
// state that has no key yet, whatever m_all is.
float state_weight(float m, float m_all) {
    return m > NEG_BIG ? exp2(m - m_all) : 0.0;
}

// Multiplier that normalises a row's accumulator (times scale: fp8's v_scale); exactly 0 for a
// row that kept no key.
float output_scale(float l, float scale) {
    return l > 0.0 ? scale / l : 0.0;
}

// The natural-log lse of a state; -inf for a row that kept no key.
float state_lse(float m, float l) {
    return l > 0.0 ? (m + log2(l)) * LN2 : neg_inf();
}

// ---- natural-log partial states of split-KV chunks ------------------------------------------

bool partial_is_empty(float lse) {
    return !(lse > NEG_BIG); // -inf (NaN would count as empty too)
}

// Folds the lse of a (non-empty) partial state into the running one (itself non-empty): the new
// lse, and the weights (wa, wb, wa + wb) that merge_o combines the outputs with.
vec3 merge_lse(inout float lse, float lse_b) {
    float m = max(lse, lse_b);
    float wa = exp(lse - m);
    float wb = exp(lse_b - m);
    lse = m + log(wa + wb);
    return vec3(wa, wb, wa + wb);
}

// The merged output columns, o the running state's and o_b the folded chunk's.
vec4 merge_o(vec3 w, vec4 o, vec4 o_b) {
    return (w.x * o + w.y * o_b) / w.z;
}

#endif
