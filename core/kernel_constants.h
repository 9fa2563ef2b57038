/* Constants shared by the core (C), the CUDA kernels and the Vulkan shaders (GLSL reads this
 * file through #include as well): the dtype codes, the plan-info flags, the fields of the
 * schedule's work and merge items, and the specialisation-constant ids of the shaders. Only
 * #define lines and comments here, so that all three preprocessors take it as is.
 * tests/test_vulkan.c checks the shaders' SpecId decorations against the FLP_SPEC_* ids, and
 * core/variant.c checks the dtype codes against enum flp_dtype. */
#ifndef FLP_CORE_KERNEL_CONSTANTS_H
#define FLP_CORE_KERNEL_CONSTANTS_H

/* ---- dtype codes: the values of enum flp_dtype, for code that has no C enums -------------- */
#define FLP_DT_F32 1
#define FLP_DT_F16 2
#define FLP_DT_BF16 3
#define FLP_DT_E4M3 4
#define FLP_DT_E5M2 5

/* ---- plan-info flags (flp_decode_plan_info.flags, flp_prefill_plan_info.flags) ----------- */
#define FLP_FLAG_CAUSAL 1u       /* key j kept iff j <= pos(row) */
#define FLP_FLAG_WINDOW 2u       /* key j kept iff j >= pos(row) - window_left */
#define FLP_FLAG_SOFTCAP 4u      /* logit = soft_cap * tanh(logit / soft_cap) */
#define FLP_FLAG_ALIBI 8u        /* logit += slope[h] * (j - pos(row)) after the soft cap */
#define FLP_FLAG_ROPE 16u        /* rotate-half RoPE of q (at pos + q_off) and k (at j + k_off) */
#define FLP_FLAG_CUSTOM_MASK 32u /* prefill: key j kept only where bit (i, j) of the mask is 1 */
#define FLP_FLAG_PAGED 64u       /* prefill: KV through the page table, else ragged rows */
/* no softmax (flp_variant.softmax_off, Vulkan): a kept key weighs its logit after the logits
 * transform, out = sum of weight * v unnormalised, lse 0, split chunks summed */
#define FLP_FLAG_SOFTMAX_OFF 128u

/* ---- merges of split-KV chunks ----------------------------------------------------------- */
/* Chunks whose states the decode merges (CUDA merge_chunks4, shaders/decode_merge.comp) load at
 * once, so that their loads are in flight together rather than one after another. */
#define FLP_MERGE_BATCH 8

/* ---- decode work item: 2 int32 in plan memory ---------------------------------------------- */
/* Chunk c of KV head g of request b, for all query heads of g's group (and all qo_len rows):
 * FLP_WORK_HEAD_CHUNK = g * chunks + c, where chunks = merge_info[2b + 1] (the request's chunks per
 * KV head, 1 unsplit). Its keys are [kv_begin[b] + c * chunk_size, that + chunk_size), the last
 * chunk ending at kv_len[b] (chunk_size from the plan information; the one chunk of an unsplit
 * request is [kv_begin[b], kv_len[b])). A split request's item writes its fp32 partial state to
 * slot merge_info[2b] + FLP_WORK_HEAD_CHUNK for the merge; an unsplit one writes the final out/lse
 * rows. Two words: a plan writes and uploads thousands of items (host time). */
#define FLP_WORK_ITEM_INTS 2
#define FLP_WORK_REQUEST 0
#define FLP_WORK_HEAD_CHUNK 1

/* ---- prefill work item: 7 int32 ------------------------------------------------------------ */
/* Packed rows [row_begin, row_end) of one request and KV head against keys [kv_begin, kv_end)
 * (clipped by the scheduler to what causal and window masks can keep for these rows; masks are
 * still applied per row). Packed row p is query token p / group_size and query head
 * kv_head * group_size + p % group_size. partial_slot as for decode. An item with more rows than
 * a kernel's tile is processed in several passes of the tile. */
#define FLP_PREFILL_ITEM_INTS 7
#define FLP_PITEM_REQUEST 0
#define FLP_PITEM_KV_HEAD 1
#define FLP_PITEM_ROW_BEGIN 2
#define FLP_PITEM_ROW_END 3
#define FLP_PITEM_KV_BEGIN 4
#define FLP_PITEM_KV_END 5
#define FLP_PITEM_PARTIAL_SLOT 6

/* Packed rows of one prefill item at most (and rows of one partial-state slot). */
#define FLP_PREFILL_MAX_TILE 128

/* ---- prefill merge item: 6 int32 ----------------------------------------------------------- */
/* Packed rows [row_begin, row_end) of one request and KV head were split into `chunks` KV
 * chunks whose partial states are in slots first_slot .. first_slot + chunks - 1 (chunk order =
 * key order); the merge folds them in that order. */
#define FLP_MERGE_ITEM_INTS 6
#define FLP_MITEM_REQUEST 0
#define FLP_MITEM_KV_HEAD 1
#define FLP_MITEM_ROW_BEGIN 2
#define FLP_MITEM_ROW_END 3
#define FLP_MITEM_FIRST_SLOT 4
#define FLP_MITEM_CHUNKS 5

/* ---- Vulkan specialisation-constant ids ---------------------------------------------------- */
/* Shared by the attention shaders (decode.comp, decode_cpu.comp, prefill.comp) */
#define FLP_SPEC_HEAD_DIM 0
#define FLP_SPEC_Q_DTYPE 1
#define FLP_SPEC_KV_DTYPE 2
#define FLP_SPEC_KV_BYTES 3 /* bytes per KV element: 2, or 1 for fp8 */
#define FLP_SPEC_LANES 4
#define FLP_SPEC_ROWS 5
/* decode.comp */
#define FLP_SPEC_DECODE_TOKEN_GROUPS 6
#define FLP_SPEC_DECODE_TOKENS_PER_GROUP 7
#define FLP_SPEC_DECODE_SMEM_U2 8
#define FLP_SPEC_DECODE_THREADS 9
#define FLP_SPEC_DECODE_COUNT 10
/* decode_cpu.comp */
#define FLP_SPEC_CPU_STEP 6
#define FLP_SPEC_CPU_FEATURES 7
#define FLP_SPEC_CPU_DEFER 8
#define FLP_SPEC_CPU_COUNT 9
/* prefill.comp */
#define FLP_SPEC_PREFILL_GROUPS 6
#define FLP_SPEC_PREFILL_BK 7
#define FLP_SPEC_PREFILL_SB 8
#define FLP_SPEC_PREFILL_THREADS 9
#define FLP_SPEC_PREFILL_PREFETCH 10
#define FLP_SPEC_PREFILL_COUNT 11
/* decode_merge.comp and prefill_merge.comp (HEAD_DIM and Q_DTYPE as above) */
#define FLP_SPEC_MERGE_THREADS 2
#define FLP_SPEC_MERGE_COUNT 3
/* kv_append.comp */
#define FLP_SPEC_APPEND_THREADS 0
#define FLP_SPEC_APPEND_COUNT 1
/* merge_states.comp */
#define FLP_SPEC_STATE_MERGE_THREADS 0
#define FLP_SPEC_STATE_MERGE_COUNT 1

/* ---- the public state merges (core/merge_params.h) ------------------------------------------ */
#define FLP_MERGE_MODE_PAIR 0
#define FLP_MERGE_MODE_RAGGED 1

#endif /* FLP_CORE_KERNEL_CONSTANTS_H */
