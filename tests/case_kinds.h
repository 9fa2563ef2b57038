/* Kinds of positional encoding that the case tables of the reference suites
 * (tests/decode_cases.h, tests/prefill_cases.h) ask for; test_variant_set_pos_encoding
 * (tests/test_util.h) turns them into a variant. */
#ifndef FLP_TESTS_CASE_KINDS_H
#define FLP_TESTS_CASE_KINDS_H

typedef enum alibi_kind {
    ALIBI_OFF = 0,
    ALIBI_STANDARD, /* alibi_slopes = NULL: the library's standard slopes */
    ALIBI_CALLER,   /* random caller slopes in [0.01, 1] */
} alibi_kind;

typedef enum rope_kind {
    ROPE_OFF = 0,
    ROPE_DEFAULT, /* theta and scale left 0 = 10000 and 1 */
    ROPE_SCALED,  /* theta 10000, scale 4 */
    ROPE_LLAMA31, /* theta 500000, Llama 3.1 scaling: factor 8, low 1, high 4, original 8192 */
} rope_kind;

#endif /* FLP_TESTS_CASE_KINDS_H */
