/* The Vulkan backend on its own (suite vulkan): context and device info, the decode parameter
 * block's GLSL layout, buffers (round trips at odd offsets, a buffer larger than lavapipe's
 * 128 MiB storage-binding limit, range errors), interop with a caller's device (buffer wrap,
 * recording into a caller's command buffer and replaying it after re-plans), llvmpipe's loop
 * budget (the decode, the ragged state merge).
 *
 * Exits 77 (skipped) when no Vulkan device can be opened. The Khronos validation layer is on
 * (FLP_VULKAN_VALIDATION=1 unless the environment says otherwise; FLP_VULKAN_VALIDATION=0 turns it
 * off) for the library's instance and for the test's own; every test ends by requiring that
 * neither reported a message. Validation asked for with the layer missing fails the run (exit 1):
 * it is not a skip. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/decode_params.h"
#include "core/merge_params.h"
#include "core/prefill_params.h"
#include "core/plan.h" /* flp_plan_summarize: to confirm which plan splits its request */
#include "core/reference.h"
#include "flashport/flashport.h"
#include "flashport/flashport_vulkan.h"
#include "tests/test_util.h"

#include <volk.h>

#include "backend-vulkan/vk_shaders.h" /* the embedded SPIR-V */

static flp_context *g_ctx; /* the library's own device */
static char g_last_log[2048];

static void on_log(void *user, flp_log_level level, const char *message) {
    (void)user;
    (void)level;
    snprintf(g_last_log, sizeof g_last_log, "%s", message);
}

#define assert_ok(ctx, call)                                                                       \
    do {                                                                                           \
        const flp_status st_ = (call);                                                             \
        if (st_ != FLP_OK)                                                                         \
            fail_msg("%s -> %s: %s", #call, flp_status_string(st_), flp_context_last_error(ctx));  \
    } while (0)

static void *xmalloc(size_t size) {
    void *p = malloc(size ? size : 1);
    assert_non_null(p);
    return p;
}

static void fill_random_bytes(test_rng *rng, uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(test_rng_next(rng) >> 56);
}

static int teardown_check_validation(void **state) {
    (void)state;
    uint32_t n = flp_vulkan_validation_message_count(g_ctx);
    if (n != 0) {
        print_error("ERROR: %u Vulkan validation message(s) so far (last log: %s)\n", n,
                    g_last_log);
        return -1;
    }
    return 0;
}

/* ---- context and device info ------------------------------------------------------------ */

static bool is_pow2(int x) {
    return x > 0 && (x & (x - 1)) == 0;
}

static void test_context_info(void **state) {
    (void)state;
    flp_device_info info;
    assert_ok(g_ctx, flp_context_get_info(g_ctx, &info));
    assert_int_equal(info.backend, FLP_BACKEND_VULKAN);
    assert_string_equal(info.backend_name, "vulkan");
    assert_true(strlen(info.device_name) > 0);
    assert_true(strlen(info.driver_info) > 1);
    assert_true(is_pow2(info.subgroup_size));
    assert_true(info.shared_memory_per_group >= 16384); /* the Vulkan minimum */
    assert_true(info.max_buffer_bytes >= ((size_t)256 << 20));
    assert_true(info.device_memory_bytes > 0);
    assert_true(info.compute_units >= 1);
    assert_int_equal(info.compute_capability, 0);
    if (strstr(info.device_name, "llvmpipe")) {
        assert_true(info.is_software);
        assert_int_equal(info.subgroup_size, 8);
        assert_int_equal(info.shared_memory_per_group, 32768);
    }
    print_message("vulkan: %s (%s), %d compute units, subgroup %d, %zu B shared, max buffer "
                  "%zu MiB\n",
                  info.device_name, info.driver_info, info.compute_units, info.subgroup_size,
                  info.shared_memory_per_group, info.max_buffer_bytes >> 20);
}

static void test_context_errors(void **state) {
    (void)state;
    flp_context *ctx = (flp_context *)0x1;
    flp_context_desc desc = {.backend = FLP_BACKEND_VULKAN, .device_index = 1000, .log = on_log};
    g_last_log[0] = '\0';
    assert_int_equal(flp_context_create(&desc, &ctx), FLP_ERROR_INVALID_ARGUMENT);
    assert_null(ctx);
    /* no context holds the message: the log received it */
    if (!strstr(g_last_log, "device_index 1000 is out of range: ") ||
        !strstr(g_last_log, " Vulkan device(s) present"))
        fail_msg("the log \"%s\" does not name device_index 1000 as out of range", g_last_log);

    ctx = (flp_context *)0x1;
    assert_int_equal(flp_vulkan_context_create(&desc, NULL, &ctx), FLP_ERROR_INVALID_ARGUMENT);
    assert_null(ctx);
    flp_vulkan_device_desc empty = {0};
    assert_int_equal(flp_vulkan_context_create(&desc, &empty, &ctx), FLP_ERROR_INVALID_ARGUMENT);
    assert_null(ctx);

    assert_int_equal(flp_vulkan_set_command_buffer(NULL, VK_NULL_HANDLE),
                     FLP_ERROR_INVALID_ARGUMENT);
    assert_int_equal(flp_vulkan_validation_message_count(NULL), 0);
    assert_true(flp_vulkan_buffer_handle(NULL) == VK_NULL_HANDLE);
    flp_buffer *buf = (flp_buffer *)0x1;
    test_expect_status(g_ctx, flp_vulkan_buffer_wrap(g_ctx, VK_NULL_HANDLE, 64, &buf),
                       FLP_ERROR_INVALID_ARGUMENT, "wrap VK_NULL_HANDLE",
                       TEST_MENTIONS("flp_vulkan_buffer_wrap: buffer is VK_NULL_HANDLE"));
    assert_null(buf);
}

/* ---- the decode parameter block in the compiled shaders ----------------------------------- */

typedef struct c_field {
    const char *name;
    size_t offset;
} c_field;

#define FIELD(type, name)                                                                          \
    { #name, offsetof(type, name) }
static const c_field plan_info_fields[] = {
    FIELD(flp_decode_plan_info, off_kv_indptr),
    FIELD(flp_decode_plan_info, off_kv_indices),
    FIELD(flp_decode_plan_info, off_kv_len),
    FIELD(flp_decode_plan_info, off_q_rope_offset),
    FIELD(flp_decode_plan_info, off_k_rope_offset),
    FIELD(flp_decode_plan_info, off_rope_freq),
    FIELD(flp_decode_plan_info, off_alibi_slopes),
    FIELD(flp_decode_plan_info, off_work_indptr),
    FIELD(flp_decode_plan_info, off_work_items),
    FIELD(flp_decode_plan_info, off_merge_info),
    FIELD(flp_decode_plan_info, off_partial_o),
    FIELD(flp_decode_plan_info, off_partial_lse),
    FIELD(flp_decode_plan_info, batch_size),
    FIELD(flp_decode_plan_info, qo_len),
    FIELD(flp_decode_plan_info, num_qo_heads),
    FIELD(flp_decode_plan_info, num_kv_heads),
    FIELD(flp_decode_plan_info, group_size),
    FIELD(flp_decode_plan_info, head_dim),
    FIELD(flp_decode_plan_info, page_size),
    FIELD(flp_decode_plan_info, num_ctas),
    FIELD(flp_decode_plan_info, flags),
    FIELD(flp_decode_plan_info, window_left),
    FIELD(flp_decode_plan_info, q_dtype),
    FIELD(flp_decode_plan_info, kv_dtype),
    FIELD(flp_decode_plan_info, sm_scale),
    FIELD(flp_decode_plan_info, soft_cap),
    FIELD(flp_decode_plan_info, k_scale),
    FIELD(flp_decode_plan_info, v_scale),
    FIELD(flp_decode_plan_info, off_kv_begin),
    FIELD(flp_decode_plan_info, chunk_size),
    FIELD(flp_decode_plan_info, off_user_params),
    FIELD(flp_decode_plan_info, reserved),
};
static const c_field params_fields[] = {
    FIELD(flp_decode_params, q),
    FIELD(flp_decode_params, k),
    FIELD(flp_decode_params, v),
    FIELD(flp_decode_params, o),
    FIELD(flp_decode_params, lse),
    FIELD(flp_decode_params, plan),
    FIELD(flp_decode_params, q_stride_row),
    FIELD(flp_decode_params, q_stride_head),
    FIELD(flp_decode_params, o_stride_row),
    FIELD(flp_decode_params, o_stride_head),
    FIELD(flp_decode_params, k_stride_page),
    FIELD(flp_decode_params, k_stride_slot),
    FIELD(flp_decode_params, k_stride_head),
    FIELD(flp_decode_params, v_stride_page),
    FIELD(flp_decode_params, v_stride_slot),
    FIELD(flp_decode_params, v_stride_head),
    FIELD(flp_decode_params, lse_stride_row),
    FIELD(flp_decode_params, kv_indices),
    FIELD(flp_decode_params, num_pages),
};
static const c_field prefill_info_fields[] = {
    FIELD(flp_prefill_plan_info, off_qo_indptr),
    FIELD(flp_prefill_plan_info, off_kv_indptr),
    FIELD(flp_prefill_plan_info, off_kv_len),
    FIELD(flp_prefill_plan_info, off_q_rope_offset),
    FIELD(flp_prefill_plan_info, off_k_rope_offset),
    FIELD(flp_prefill_plan_info, off_mask_indptr),
    FIELD(flp_prefill_plan_info, off_rope_freq),
    FIELD(flp_prefill_plan_info, off_alibi_slopes),
    FIELD(flp_prefill_plan_info, off_work_indptr),
    FIELD(flp_prefill_plan_info, off_work_items),
    FIELD(flp_prefill_plan_info, off_merge_items),
    FIELD(flp_prefill_plan_info, off_kv_indices),
    FIELD(flp_prefill_plan_info, off_partial_o),
    FIELD(flp_prefill_plan_info, off_partial_lse),
    FIELD(flp_prefill_plan_info, batch_size),
    FIELD(flp_prefill_plan_info, num_qo_heads),
    FIELD(flp_prefill_plan_info, num_kv_heads),
    FIELD(flp_prefill_plan_info, group_size),
    FIELD(flp_prefill_plan_info, head_dim),
    FIELD(flp_prefill_plan_info, page_size),
    FIELD(flp_prefill_plan_info, num_ctas),
    FIELD(flp_prefill_plan_info, num_merge_items),
    FIELD(flp_prefill_plan_info, q_tile),
    FIELD(flp_prefill_plan_info, flags),
    FIELD(flp_prefill_plan_info, window_left),
    FIELD(flp_prefill_plan_info, q_dtype),
    FIELD(flp_prefill_plan_info, kv_dtype),
    FIELD(flp_prefill_plan_info, sm_scale),
    FIELD(flp_prefill_plan_info, soft_cap),
    FIELD(flp_prefill_plan_info, k_scale),
    FIELD(flp_prefill_plan_info, v_scale),
    FIELD(flp_prefill_plan_info, off_user_params),
};
static const c_field prefill_params_fields[] = {
    FIELD(flp_prefill_params, q),
    FIELD(flp_prefill_params, k),
    FIELD(flp_prefill_params, v),
    FIELD(flp_prefill_params, o),
    FIELD(flp_prefill_params, lse),
    FIELD(flp_prefill_params, plan),
    FIELD(flp_prefill_params, mask),
    FIELD(flp_prefill_params, q_stride_row),
    FIELD(flp_prefill_params, q_stride_head),
    FIELD(flp_prefill_params, o_stride_row),
    FIELD(flp_prefill_params, o_stride_head),
    FIELD(flp_prefill_params, k_stride_page),
    FIELD(flp_prefill_params, k_stride_slot),
    FIELD(flp_prefill_params, k_stride_head),
    FIELD(flp_prefill_params, v_stride_page),
    FIELD(flp_prefill_params, v_stride_slot),
    FIELD(flp_prefill_params, v_stride_head),
    FIELD(flp_prefill_params, lse_stride_row),
    FIELD(flp_prefill_params, kv_indices),
    FIELD(flp_prefill_params, num_pages),
};
static const c_field kv_append_fields[] = {
    FIELD(flp_kv_append_params, k),
    FIELD(flp_kv_append_params, v),
    FIELD(flp_kv_append_params, k_cache),
    FIELD(flp_kv_append_params, v_cache),
    FIELD(flp_kv_append_params, batch_indices),
    FIELD(flp_kv_append_params, positions),
    FIELD(flp_kv_append_params, kv_indptr),
    FIELD(flp_kv_append_params, kv_indices),
    FIELD(flp_kv_append_params, k_stride_row),
    FIELD(flp_kv_append_params, k_stride_head),
    FIELD(flp_kv_append_params, v_stride_row),
    FIELD(flp_kv_append_params, v_stride_head),
    FIELD(flp_kv_append_params, kc_stride_page),
    FIELD(flp_kv_append_params, kc_stride_slot),
    FIELD(flp_kv_append_params, kc_stride_head),
    FIELD(flp_kv_append_params, vc_stride_page),
    FIELD(flp_kv_append_params, vc_stride_slot),
    FIELD(flp_kv_append_params, vc_stride_head),
    FIELD(flp_kv_append_params, batch_indices_stride),
    FIELD(flp_kv_append_params, positions_stride),
    FIELD(flp_kv_append_params, nnz),
    FIELD(flp_kv_append_params, num_kv_heads),
    FIELD(flp_kv_append_params, head_dim),
    FIELD(flp_kv_append_params, page_size),
    FIELD(flp_kv_append_params, batch_size),
    FIELD(flp_kv_append_params, num_indices),
    FIELD(flp_kv_append_params, num_pages),
    FIELD(flp_kv_append_params, src_dtype),
    FIELD(flp_kv_append_params, cache_dtype),
    FIELD(flp_kv_append_params, k_inv_scale),
    FIELD(flp_kv_append_params, v_inv_scale),
    FIELD(flp_kv_append_params, reserved),
};
static const c_field merge_fields[] = {
    FIELD(flp_merge_params, o_a),
    FIELD(flp_merge_params, lse_a),
    FIELD(flp_merge_params, o_b),
    FIELD(flp_merge_params, lse_b),
    FIELD(flp_merge_params, o_out),
    FIELD(flp_merge_params, lse_out),
    FIELD(flp_merge_params, mask),
    FIELD(flp_merge_params, indptr),
    FIELD(flp_merge_params, o_a_stride_row),
    FIELD(flp_merge_params, o_a_stride_head),
    FIELD(flp_merge_params, o_b_stride_row),
    FIELD(flp_merge_params, o_b_stride_head),
    FIELD(flp_merge_params, out_stride_row),
    FIELD(flp_merge_params, out_stride_head),
    FIELD(flp_merge_params, lse_a_stride_row),
    FIELD(flp_merge_params, lse_b_stride_row),
    FIELD(flp_merge_params, lse_out_stride_row),
    FIELD(flp_merge_params, rows),
    FIELD(flp_merge_params, num_heads),
    FIELD(flp_merge_params, head_dim),
    FIELD(flp_merge_params, mode),
    FIELD(flp_merge_params, num_states),
    FIELD(flp_merge_params, states_per_row),
    FIELD(flp_merge_params, a_dtype),
    FIELD(flp_merge_params, b_dtype),
    FIELD(flp_merge_params, out_dtype),
    FIELD(flp_merge_params, reserved),
};
#undef FIELD
#define COUNT(a) (sizeof(a) / sizeof((a)[0]))
#define MAX_MEMBERS 64

enum { SPV_OP_NAME = 5, SPV_OP_MEMBER_NAME = 6, SPV_OP_MEMBER_DECORATE = 72 };
enum { SPV_DECORATION_OFFSET = 35 };

/* Walks the SPIR-V of one shader: finds the struct named struct_name and checks that each
 * member has the name and byte offset of the C field with the same index. */
static void check_spirv_layout(const unsigned char *bytes, unsigned long size, const char *shader,
                               const char *struct_name, const c_field *fields, size_t count) {
    assert_true(count < MAX_MEMBERS);
    assert_int_equal(size % 4, 0);
    const uint32_t *w = (const uint32_t *)(const void *)bytes;
    size_t n = size / 4;
    assert_true(n > 5);
    assert_int_equal(w[0], 0x07230203u); /* SPIR-V magic, host order */
    uint32_t struct_id = 0;
    for (size_t i = 5; i < n;) {
        uint32_t words = w[i] >> 16, op = w[i] & 0xffffu;
        assert_true(words > 0 && i + words <= n);
        if (op == SPV_OP_NAME && strcmp((const char *)&w[i + 2], struct_name) == 0)
            struct_id = w[i + 1];
        i += words;
    }
    if (!struct_id)
        fail_msg("%s: no struct named %s in the SPIR-V (debug names stripped?)", shader,
                 struct_name);
    const char *names[MAX_MEMBERS] = {0};
    long offsets[MAX_MEMBERS];
    for (size_t m = 0; m < MAX_MEMBERS; m++)
        offsets[m] = -1;
    uint32_t members = 0;
    for (size_t i = 5; i < n;) {
        uint32_t words = w[i] >> 16, op = w[i] & 0xffffu;
        if (op == SPV_OP_MEMBER_NAME && w[i + 1] == struct_id) {
            uint32_t m = w[i + 2];
            assert_true(m < MAX_MEMBERS);
            names[m] = (const char *)&w[i + 3];
            members = m + 1 > members ? m + 1 : members;
        } else if (op == SPV_OP_MEMBER_DECORATE && w[i + 1] == struct_id &&
                   w[i + 3] == SPV_DECORATION_OFFSET) {
            assert_true(w[i + 2] < MAX_MEMBERS);
            offsets[w[i + 2]] = (long)w[i + 4];
        }
        i += words;
    }
    if (members != count)
        fail_msg("%s: %s has %u members in GLSL, %zu in C", shader, struct_name, members, count);
    for (size_t m = 0; m < count; m++) {
        if (!names[m] || strcmp(names[m], fields[m].name) != 0)
            fail_msg("%s: %s member %zu is '%s' in GLSL, '%s' in C", shader, struct_name, m,
                     names[m] ? names[m] : "(unnamed)", fields[m].name);
        if (offsets[m] != (long)fields[m].offset)
            fail_msg("%s: %s.%s at byte %ld in GLSL, %zu in C", shader, struct_name, fields[m].name,
                     offsets[m], fields[m].offset);
    }
}

static void test_params_layout(void **state) {
    (void)state;
    const struct {
        const unsigned char *spv;
        unsigned long size;
        const char *name;
    } shaders[] = {
        {flp_spv_decode, flp_spv_decode_size, "decode.comp"},
        {flp_spv_decode_cpu, flp_spv_decode_cpu_size, "decode_cpu.comp"},
        {flp_spv_decode_cpu_texel, flp_spv_decode_cpu_texel_size, "decode_cpu.comp (texel)"},
        {flp_spv_decode_merge, flp_spv_decode_merge_size, "decode_merge.comp"},
    };
    for (size_t i = 0; i < COUNT(shaders); i++) {
        check_spirv_layout(shaders[i].spv, shaders[i].size, shaders[i].name, "DecodePlanInfo",
                           plan_info_fields, COUNT(plan_info_fields));
        check_spirv_layout(shaders[i].spv, shaders[i].size, shaders[i].name, "DecodeParams",
                           params_fields, COUNT(params_fields));
    }
    /* the last members end the structs (nothing after them that GLSL would not see) */
    assert_int_equal(offsetof(flp_decode_plan_info, reserved) + sizeof(int32_t),
                     sizeof(flp_decode_plan_info));
    assert_int_equal(offsetof(flp_decode_params, num_pages) + sizeof(int64_t),
                     sizeof(flp_decode_params));
}

static void test_prefill_params_layout(void **state) {
    (void)state;
    const struct {
        const unsigned char *spv;
        unsigned long size;
        const char *name;
    } shaders[] = {
        {flp_spv_prefill, flp_spv_prefill_size, "prefill.comp"},
        {flp_spv_prefill_merge, flp_spv_prefill_merge_size, "prefill_merge.comp"},
    };
    for (size_t i = 0; i < COUNT(shaders); i++) {
        check_spirv_layout(shaders[i].spv, shaders[i].size, shaders[i].name, "PrefillPlanInfo",
                           prefill_info_fields, COUNT(prefill_info_fields));
        check_spirv_layout(shaders[i].spv, shaders[i].size, shaders[i].name, "PrefillParams",
                           prefill_params_fields, COUNT(prefill_params_fields));
    }
    check_spirv_layout(flp_spv_kv_append, flp_spv_kv_append_size, "kv_append.comp",
                       "KvAppendParams", kv_append_fields, COUNT(kv_append_fields));
    assert_int_equal(offsetof(flp_prefill_plan_info, off_user_params) + sizeof(uint32_t),
                     sizeof(flp_prefill_plan_info));
    assert_int_equal(offsetof(flp_prefill_params, num_pages) + sizeof(int64_t),
                     sizeof(flp_prefill_params));
    assert_int_equal(offsetof(flp_kv_append_params, reserved) + sizeof(int32_t),
                     sizeof(flp_kv_append_params));
    check_spirv_layout(flp_spv_merge_states, flp_spv_merge_states_size, "merge_states.comp",
                       "MergeParams", merge_fields, COUNT(merge_fields));
    assert_int_equal(offsetof(flp_merge_params, reserved) + sizeof(int32_t),
                     sizeof(flp_merge_params));
}

/* A specialisation constant the host sets by id (core/kernel_constants.h FLP_SPEC_*). */
typedef struct spec_expect {
    const char *name; /* the GLSL constant's name */
    uint32_t id;
} spec_expect;

enum { SPV_OP_DECORATE = 71, SPV_DECORATION_SPEC_ID = 1, MAX_SPECS = 32 };

/* Every named specialisation constant of expect[count] carries its FLP_SPEC_* id, and every
 * SpecId in the module is one of them or the workgroup size's (workgroup_id). */
static void check_spec_ids(const unsigned char *spv, unsigned long size, const char *shader,
                           const spec_expect *expect, size_t count, uint32_t workgroup_id) {
    const uint32_t *w = (const uint32_t *)spv;
    size_t n = size / 4;
    uint32_t targets[MAX_SPECS], ids[MAX_SPECS];
    size_t decorated = 0;
    for (size_t i = 5; i < n; i += w[i] >> 16)
        if ((w[i] & 0xffffu) == SPV_OP_DECORATE && w[i + 2] == SPV_DECORATION_SPEC_ID) {
            assert_true(decorated < MAX_SPECS);
            targets[decorated] = w[i + 1];
            ids[decorated++] = w[i + 3];
        }
    bool matched[MAX_SPECS] = {false};
    for (size_t e = 0; e < count; e++) {
        bool found = false;
        for (size_t i = 5; i < n && !found; i += w[i] >> 16) {
            if ((w[i] & 0xffffu) != SPV_OP_NAME || strcmp((const char *)&w[i + 2], expect[e].name))
                continue;
            for (size_t d = 0; d < decorated; d++)
                if (targets[d] == w[i + 1]) {
                    if (ids[d] != expect[e].id)
                        fail_msg("%s: %s has SpecId %u, the host sets id %u", shader,
                                 expect[e].name, ids[d], expect[e].id);
                    matched[d] = found = true;
                }
        }
        if (!found)
            fail_msg("%s: no specialisation constant named %s", shader, expect[e].name);
    }
    for (size_t d = 0; d < decorated; d++)
        if (!matched[d] && ids[d] != workgroup_id)
            fail_msg("%s: SpecId %u is set by no FLP_SPEC_* id the host knows", shader, ids[d]);
}

static void test_spec_constant_ids(void **state) {
    (void)state;
    const spec_expect attention[] = {{"HEAD_DIM", FLP_SPEC_HEAD_DIM},
                                     {"KV_DTYPE", FLP_SPEC_KV_DTYPE},
                                     {"KV_BYTES", FLP_SPEC_KV_BYTES},
                                     {"LANES", FLP_SPEC_LANES},
                                     {"ROWS", FLP_SPEC_ROWS}};
    const spec_expect decode[] = {{"Q_DTYPE", FLP_SPEC_Q_DTYPE},
                                  {"TOKEN_GROUPS", FLP_SPEC_DECODE_TOKEN_GROUPS},
                                  {"TOKENS_PER_GROUP", FLP_SPEC_DECODE_TOKENS_PER_GROUP},
                                  {"SMEM_U2", FLP_SPEC_DECODE_SMEM_U2}};
    /* decode_cpu.comp reads q's dtype from the plan: its Q_DTYPE slot is a placeholder */
    const spec_expect cpu[] = {{"UNUSED_1", FLP_SPEC_Q_DTYPE},
                               {"STEP", FLP_SPEC_CPU_STEP},
                               {"FEATURES", FLP_SPEC_CPU_FEATURES},
                               {"DEFER", FLP_SPEC_CPU_DEFER}};
    const spec_expect prefill[] = {{"Q_DTYPE", FLP_SPEC_Q_DTYPE},
                                   {"GROUPS", FLP_SPEC_PREFILL_GROUPS},
                                   {"BK", FLP_SPEC_PREFILL_BK},
                                   {"SB", FLP_SPEC_PREFILL_SB},
                                   {"PREFETCH", FLP_SPEC_PREFILL_PREFETCH}};
    const spec_expect merge[] = {{"HEAD_DIM", FLP_SPEC_HEAD_DIM},
                                 {"Q_DTYPE", FLP_SPEC_Q_DTYPE},
                                 {"WG", FLP_SPEC_MERGE_THREADS}};
    const spec_expect append[] = {{"WG", FLP_SPEC_APPEND_THREADS}};
    const spec_expect state_merge[] = {{"WG", FLP_SPEC_STATE_MERGE_THREADS}};
    const struct {
        const unsigned char *spv;
        unsigned long size;
        const char *name;
        const spec_expect *own; /* besides the attention constants, when attention */
        size_t own_count;
        bool attention;
        uint32_t workgroup_id;
    } shaders[] = {
        {flp_spv_decode, flp_spv_decode_size, "decode.comp", decode, COUNT(decode), true,
         FLP_SPEC_DECODE_THREADS},
        {flp_spv_decode_cpu, flp_spv_decode_cpu_size, "decode_cpu.comp", cpu, COUNT(cpu), true,
         FLP_SPEC_LANES},
        {flp_spv_decode_cpu_texel, flp_spv_decode_cpu_texel_size, "decode_cpu.comp (texel)", cpu,
         COUNT(cpu), true, FLP_SPEC_LANES},
        {flp_spv_prefill, flp_spv_prefill_size, "prefill.comp", prefill, COUNT(prefill), true,
         FLP_SPEC_PREFILL_THREADS},
        {flp_spv_decode_merge, flp_spv_decode_merge_size, "decode_merge.comp", merge, COUNT(merge),
         false, FLP_SPEC_MERGE_THREADS},
        {flp_spv_prefill_merge, flp_spv_prefill_merge_size, "prefill_merge.comp", merge,
         COUNT(merge), false, FLP_SPEC_MERGE_THREADS},
        {flp_spv_kv_append, flp_spv_kv_append_size, "kv_append.comp", append, COUNT(append), false,
         FLP_SPEC_APPEND_THREADS},
        {flp_spv_merge_states, flp_spv_merge_states_size, "merge_states.comp", state_merge,
         COUNT(state_merge), false, FLP_SPEC_STATE_MERGE_THREADS},
    };
    for (size_t i = 0; i < COUNT(shaders); i++) {
        spec_expect all[MAX_SPECS];
        size_t count = 0;
        for (size_t e = 0; shaders[i].attention && e < COUNT(attention); e++)
            all[count++] = attention[e];
        for (size_t e = 0; e < shaders[i].own_count; e++)
            all[count++] = shaders[i].own[e];
        check_spec_ids(shaders[i].spv, shaders[i].size, shaders[i].name, all, count,
                       shaders[i].workgroup_id);
    }
}

/* ---- buffers ---------------------------------------------------------------------------- */

static void test_buffer_round_trips(void **state) {
    (void)state;
    test_rng rng;
    test_rng_init(&rng, 0x5eed0001);
    const size_t size = ((size_t)3 << 20) + 37; /* not a multiple of anything */
    flp_buffer *buf = NULL;
    assert_ok(g_ctx, flp_buffer_create(g_ctx, &(flp_buffer_desc){.size = size}, &buf));
    assert_int_equal(flp_buffer_size(buf), size);
    assert_true(flp_vulkan_buffer_handle(buf) != VK_NULL_HANDLE);

    uint8_t *mirror = xmalloc(size), *got = xmalloc(size), *chunk = xmalloc(size);
    fill_random_bytes(&rng, mirror, size);
    assert_ok(g_ctx, flp_buffer_write(g_ctx, buf, 0, mirror, size));
    for (int round = 0; round < 40; round++) {
        size_t offset = (size_t)test_rng_int(&rng, 0, (int32_t)(size - 1));
        size_t max = size - offset;
        size_t n = (size_t)test_rng_int(&rng, 1, (int32_t)(max < 70000 ? max : 70000));
        if (round % 2 == 0) {
            fill_random_bytes(&rng, chunk, n);
            assert_ok(g_ctx, flp_buffer_write(g_ctx, buf, offset, chunk, n));
            memcpy(mirror + offset, chunk, n);
        } else {
            memset(got, 0xA5, n + (n < max ? 1 : 0));
            assert_ok(g_ctx, flp_buffer_read(g_ctx, buf, offset, got, n));
            assert_memory_equal(got, mirror + offset, n);
            if (n < max) /* nothing past the range is written */
                assert_int_equal(got[n], 0xA5);
        }
    }
    memset(got, 0, size);
    assert_ok(g_ctx, flp_buffer_read(g_ctx, buf, 0, got, size));
    assert_memory_equal(got, mirror, size);
    flp_buffer_destroy(buf);
    free(mirror);
    free(got);
    free(chunk);
}

/* Larger than lavapipe's maxStorageBufferRange (128 MiB) and than the staging buffer, so the
 * copies go in chunks. */
static void test_buffer_beyond_binding_range(void **state) {
    (void)state;
    test_rng rng;
    test_rng_init(&rng, 0x5eed0002);
    const size_t size = ((size_t)160 << 20) + 4093;
    flp_buffer *buf = NULL;
    assert_ok(g_ctx, flp_buffer_create(g_ctx, &(flp_buffer_desc){.size = size}, &buf));
    uint8_t *data = xmalloc(size), *got = xmalloc(size);
    /* random words are slow to draw byte by byte: 8 bytes per draw */
    for (size_t i = 0; i + 8 <= size; i += 8) {
        uint64_t x = test_rng_next(&rng);
        memcpy(data + i, &x, 8);
    }
    fill_random_bytes(&rng, data + (size & ~(size_t)7), size & 7);
    assert_ok(g_ctx, flp_buffer_write(g_ctx, buf, 0, data, size));
    memset(got, 0, size);
    assert_ok(g_ctx, flp_buffer_read(g_ctx, buf, 0, got, size));
    assert_memory_equal(got, data, size);

    /* a small range straddling the 128 MiB mark, written and read on its own */
    const size_t at = ((size_t)128 << 20) - 3;
    uint8_t patch[11];
    fill_random_bytes(&rng, patch, sizeof patch);
    assert_ok(g_ctx, flp_buffer_write(g_ctx, buf, at, patch, sizeof patch));
    memcpy(data + at, patch, sizeof patch);
    uint8_t back[32];
    assert_ok(g_ctx, flp_buffer_read(g_ctx, buf, at - 10, back, sizeof back));
    assert_memory_equal(back, data + at - 10, sizeof back);
    /* the tail of the buffer */
    assert_ok(g_ctx, flp_buffer_read(g_ctx, buf, size - 5, back, 5));
    assert_memory_equal(back, data + size - 5, 5);
    flp_buffer_destroy(buf);
    free(data);
    free(got);
}

static void test_buffer_range_errors(void **state) {
    (void)state;
    const size_t size = 1000;
    flp_buffer *buf = NULL;
    assert_ok(g_ctx, flp_buffer_create(g_ctx, &(flp_buffer_desc){.size = size}, &buf));
    uint8_t data[1000], got[1001];
    for (size_t i = 0; i < size; i++)
        data[i] = (uint8_t)(i * 7 + 3);
    assert_ok(g_ctx, flp_buffer_write(g_ctx, buf, 0, data, size));

    uint8_t junk[16];
    memset(junk, 0xEE, sizeof junk);
    test_expect_status(g_ctx, flp_buffer_write(g_ctx, buf, 995, junk, 6),
                       FLP_ERROR_INVALID_ARGUMENT, "write 6 bytes at 995 of 1000",
                       TEST_MENTIONS("flp_buffer_write: range [995, 995 + 6) exceeds the buffer's "
                                     "1000 bytes"));
    test_expect_status(g_ctx, flp_buffer_write(g_ctx, buf, 1001, junk, 0),
                       FLP_ERROR_INVALID_ARGUMENT, "write 0 bytes at 1001 of 1000",
                       TEST_MENTIONS("range [1001, 1001 + 0) exceeds the buffer's 1000 bytes"));
    test_expect_status(g_ctx, flp_buffer_write(g_ctx, buf, SIZE_MAX, junk, 2),
                       FLP_ERROR_INVALID_ARGUMENT, "write at SIZE_MAX",
                       TEST_MENTIONS(test_str("range [%zu, %zu + 2) exceeds", SIZE_MAX, SIZE_MAX)));
    test_expect_status(g_ctx, flp_buffer_read(g_ctx, buf, 0, got, 1001), FLP_ERROR_INVALID_ARGUMENT,
                       "read 1001 bytes of 1000",
                       TEST_MENTIONS("flp_buffer_read: range [0, 0 + 1001) exceeds the buffer's "
                                     "1000 bytes"));
    test_expect_status(g_ctx, flp_buffer_read(g_ctx, buf, 999, got, SIZE_MAX),
                       FLP_ERROR_INVALID_ARGUMENT, "read SIZE_MAX bytes",
                       TEST_MENTIONS(test_str("range [999, 999 + %zu) exceeds", SIZE_MAX)));
    test_expect_status(g_ctx, flp_buffer_read(g_ctx, buf, 500, NULL, 1), FLP_ERROR_INVALID_ARGUMENT,
                       "read into NULL", TEST_MENTIONS("flp_buffer_read: host pointer is NULL"));

    /* nothing was written by the failed calls */
    assert_ok(g_ctx, flp_buffer_read(g_ctx, buf, 0, got, size));
    assert_memory_equal(got, data, size);
    /* the edge itself is fine */
    assert_ok(g_ctx, flp_buffer_write(g_ctx, buf, 995, junk, 5));
    assert_ok(g_ctx, flp_buffer_read(g_ctx, buf, 995, got, 5));
    assert_memory_equal(got, junk, 5);
    flp_buffer_destroy(buf);
}

static void test_command_buffer_mode_smoke(void **state) {
    (void)state;
    assert_ok(g_ctx, flp_vulkan_set_command_buffer(g_ctx, VK_NULL_HANDLE));
    /* own queue again: copies still work */
    flp_buffer *buf = NULL;
    assert_ok(g_ctx, flp_buffer_create(g_ctx, &(flp_buffer_desc){.size = 256}, &buf));
    uint8_t data[256], got[256];
    for (int i = 0; i < 256; i++)
        data[i] = (uint8_t)(255 - i);
    assert_ok(g_ctx, flp_buffer_write(g_ctx, buf, 0, data, sizeof data));
    assert_ok(g_ctx, flp_buffer_read(g_ctx, buf, 0, got, sizeof got));
    assert_memory_equal(got, data, sizeof data);
    assert_ok(g_ctx, flp_context_synchronize(g_ctx));
    flp_buffer_destroy(buf);
}

/* ---- interop: the test's own instance and device, through volk ------------------------- */

typedef struct caller_device {
    VkInstance instance;
    VkPhysicalDevice physical_device;
    VkDevice device;
    VkQueue queue;
    uint32_t queue_family;
    VkDebugUtilsMessengerEXT messenger;
    uint32_t messages;
    VkPhysicalDeviceMemoryProperties memory;
} caller_device;

static VKAPI_ATTR VkBool32 VKAPI_CALL on_caller_message(
    VkDebugUtilsMessageSeverityFlagBitsEXT severity, VkDebugUtilsMessageTypeFlagsEXT types,
    const VkDebugUtilsMessengerCallbackDataEXT *data, void *user) {
    (void)severity;
    (void)types;
    caller_device *cd = user;
    cd->messages++;
    fprintf(stderr, "[test instance validation] %s\n", data->pMessage);
    return VK_FALSE;
}

static bool layer_present(const char *name) {
    uint32_t n = 0;
    vkEnumerateInstanceLayerProperties(&n, NULL);
    VkLayerProperties *layers = calloc(n ? n : 1, sizeof *layers);
    assert_non_null(layers);
    vkEnumerateInstanceLayerProperties(&n, layers);
    bool found = false;
    for (uint32_t i = 0; i < n; i++)
        found |= strcmp(layers[i].layerName, name) == 0;
    free(layers);
    return found;
}

/* A Vulkan 1.2 instance and device with the features flashport needs; the validation layer
 * and a counting messenger when FLP_VULKAN_VALIDATION is on. */
static void caller_device_create(caller_device *cd) {
    memset(cd, 0, sizeof *cd);
    assert_int_equal(volkInitialize(), VK_SUCCESS);
    const char *layer = "VK_LAYER_KHRONOS_validation";
    const bool validation = test_vulkan_validation_requested();
    if (validation && !layer_present(layer))
        fail_msg("FLP_VULKAN_VALIDATION=%s asks for %s, which the loader does not list: the test's "
                 "own instance would run unchecked",
                 getenv("FLP_VULKAN_VALIDATION"), layer);
    const char *ext = VK_EXT_DEBUG_UTILS_EXTENSION_NAME;
    VkDebugUtilsMessengerCreateInfoEXT mi = {
        .sType = VK_STRUCTURE_TYPE_DEBUG_UTILS_MESSENGER_CREATE_INFO_EXT,
        .messageSeverity = VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT |
                           VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT,
        .messageType = VK_DEBUG_UTILS_MESSAGE_TYPE_GENERAL_BIT_EXT |
                       VK_DEBUG_UTILS_MESSAGE_TYPE_VALIDATION_BIT_EXT |
                       VK_DEBUG_UTILS_MESSAGE_TYPE_PERFORMANCE_BIT_EXT,
        .pfnUserCallback = on_caller_message,
        .pUserData = cd,
    };
    VkApplicationInfo app = {.sType = VK_STRUCTURE_TYPE_APPLICATION_INFO,
                             .apiVersion = VK_API_VERSION_1_2};
    VkInstanceCreateInfo ii = {
        .sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO,
        .pNext = validation ? &mi : NULL,
        .pApplicationInfo = &app,
        .enabledLayerCount = validation ? 1 : 0,
        .ppEnabledLayerNames = &layer,
        .enabledExtensionCount = validation ? 1 : 0,
        .ppEnabledExtensionNames = &ext,
    };
    assert_int_equal(vkCreateInstance(&ii, NULL, &cd->instance), VK_SUCCESS);
    volkLoadInstanceOnly(cd->instance);
    if (validation)
        assert_int_equal(vkCreateDebugUtilsMessengerEXT(cd->instance, &mi, NULL, &cd->messenger),
                         VK_SUCCESS);

    uint32_t count = 1;
    VkResult r = vkEnumeratePhysicalDevices(cd->instance, &count, &cd->physical_device);
    assert_true(r == VK_SUCCESS || r == VK_INCOMPLETE);
    assert_int_equal(count, 1);
    vkGetPhysicalDeviceMemoryProperties(cd->physical_device, &cd->memory);
    uint32_t nfam = 0;
    vkGetPhysicalDeviceQueueFamilyProperties(cd->physical_device, &nfam, NULL);
    VkQueueFamilyProperties fam[16];
    nfam = nfam > 16 ? 16 : nfam;
    vkGetPhysicalDeviceQueueFamilyProperties(cd->physical_device, &nfam, fam);
    cd->queue_family = UINT32_MAX;
    for (uint32_t i = 0; i < nfam && cd->queue_family == UINT32_MAX; i++)
        if (fam[i].queueFlags & VK_QUEUE_COMPUTE_BIT)
            cd->queue_family = i;
    assert_true(cd->queue_family != UINT32_MAX);

    float priority = 1.0f;
    VkDeviceQueueCreateInfo qi = {.sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO,
                                  .queueFamilyIndex = cd->queue_family,
                                  .queueCount = 1,
                                  .pQueuePriorities = &priority};
    VkPhysicalDeviceVulkan12Features f12 = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES,
        .bufferDeviceAddress = VK_TRUE};
    VkPhysicalDeviceVulkan11Features f11 = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_1_FEATURES,
        .pNext = &f12,
        .storageBuffer16BitAccess = VK_TRUE};
    VkPhysicalDeviceFeatures2 f2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2,
                                    .pNext = &f11,
                                    .features = {.shaderInt64 = VK_TRUE, .shaderInt16 = VK_TRUE}};
    VkDeviceCreateInfo di = {.sType = VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO,
                             .pNext = &f2,
                             .queueCreateInfoCount = 1,
                             .pQueueCreateInfos = &qi};
    assert_int_equal(vkCreateDevice(cd->physical_device, &di, NULL, &cd->device), VK_SUCCESS);
    volkLoadDevice(cd->device); /* the test is the host application: it may use the globals */
    vkGetDeviceQueue(cd->device, cd->queue_family, 0, &cd->queue);
}

static void caller_device_destroy(caller_device *cd) {
    vkDestroyDevice(cd->device, NULL);
    if (cd->messenger)
        vkDestroyDebugUtilsMessengerEXT(cd->instance, cd->messenger, NULL);
    vkDestroyInstance(cd->instance, NULL);
    assert_int_equal(cd->messages, 0);
}

static flp_context *caller_context(caller_device *cd) {
    flp_vulkan_device_desc dd = {
        .get_instance_proc_addr = vkGetInstanceProcAddr,
        .instance = cd->instance,
        .physical_device = cd->physical_device,
        .device = cd->device,
        .queue = cd->queue,
        .queue_family_index = cd->queue_family,
    };
    flp_context_desc desc = {.log = on_log};
    flp_context *ctx = NULL;
    flp_status st = flp_vulkan_context_create(&desc, &dd, &ctx);
    if (st != FLP_OK)
        fail_msg("flp_vulkan_context_create -> %s: %s", flp_status_string(st), g_last_log);
    return ctx;
}

/* A buffer of the caller's device with the usage flashport needs, on host-visible memory when
 * the device has some (returns whether it did). */
static bool caller_buffer_create(const caller_device *cd, size_t size, VkBuffer *vkbuf,
                                 VkDeviceMemory *mem) {
    VkBufferCreateInfo bi = {
        .sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO,
        .size = size,
        .usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | VK_BUFFER_USAGE_TRANSFER_SRC_BIT |
                 VK_BUFFER_USAGE_TRANSFER_DST_BIT | VK_BUFFER_USAGE_SHADER_DEVICE_ADDRESS_BIT,
    };
    assert_int_equal(vkCreateBuffer(cd->device, &bi, NULL, vkbuf), VK_SUCCESS);
    VkMemoryRequirements req;
    vkGetBufferMemoryRequirements(cd->device, *vkbuf, &req);
    int type = -1;
    bool host_visible = false;
    for (uint32_t i = 0; i < cd->memory.memoryTypeCount && !host_visible; i++) {
        if (!(req.memoryTypeBits & (1u << i)))
            continue;
        bool hv = (cd->memory.memoryTypes[i].propertyFlags &
                   (VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT)) ==
                  (VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT);
        if (type < 0 || hv) {
            type = (int)i;
            host_visible = hv;
        }
    }
    assert_true(type >= 0);
    VkMemoryAllocateFlagsInfo fi = {.sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_FLAGS_INFO,
                                    .flags = VK_MEMORY_ALLOCATE_DEVICE_ADDRESS_BIT};
    VkMemoryAllocateInfo ai = {.sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO,
                               .pNext = &fi,
                               .allocationSize = req.size,
                               .memoryTypeIndex = (uint32_t)type};
    assert_int_equal(vkAllocateMemory(cd->device, &ai, NULL, mem), VK_SUCCESS);
    assert_int_equal(vkBindBufferMemory(cd->device, *vkbuf, *mem, 0), VK_SUCCESS);
    return host_visible;
}

static void test_buffer_wrap(void **state) {
    (void)state;
    caller_device cd;
    caller_device_create(&cd);
    flp_context *ctx = caller_context(&cd);
    flp_device_info info;
    assert_ok(ctx, flp_context_get_info(ctx, &info));
    assert_int_equal(info.backend, FLP_BACKEND_VULKAN);

    /* the caller's buffer, on host-visible memory when there is some (to look inside) */
    const size_t size = 65536 + 12;
    VkBuffer vkbuf;
    VkDeviceMemory mem;
    bool host_visible = caller_buffer_create(&cd, size, &vkbuf, &mem);

    flp_buffer *buf = NULL;
    assert_ok(ctx, flp_vulkan_buffer_wrap(ctx, vkbuf, size, &buf));
    assert_non_null(buf);
    assert_true(flp_vulkan_buffer_handle(buf) == vkbuf);
    assert_int_equal(flp_buffer_size(buf), size);

    test_rng rng;
    test_rng_init(&rng, 0x5eed0003);
    uint8_t *data = xmalloc(size), *got = xmalloc(size);
    fill_random_bytes(&rng, data, size);
    assert_ok(ctx, flp_buffer_write(ctx, buf, 0, data, size));
    assert_ok(ctx, flp_buffer_read(ctx, buf, 7, got, size - 9));
    assert_memory_equal(got, data + 7, size - 9);
    if (host_visible) { /* the library wrote the caller's memory itself */
        void *map = NULL;
        assert_int_equal(vkMapMemory(cd.device, mem, 0, VK_WHOLE_SIZE, 0, &map), VK_SUCCESS);
        assert_memory_equal(map, data, size);
        vkUnmapMemory(cd.device, mem);
    }
    assert_int_equal(flp_buffer_write(ctx, buf, size - 1, data, 2), FLP_ERROR_INVALID_ARGUMENT);

    /* destroying the wrapper and the context leaves the caller's objects alive */
    flp_buffer_destroy(buf);
    assert_int_equal(flp_vulkan_validation_message_count(ctx), 0);
    flp_context_destroy(ctx);
    vkDestroyBuffer(cd.device, vkbuf, NULL);
    vkFreeMemory(cd.device, mem, NULL);
    caller_device_destroy(&cd);
    free(data);
    free(got);
}

/* ---- recording into a caller's command buffer ------------------------------------------- */

/* Whether the last decode plan split a request into KV chunks (the merge has work). */
static bool decode_split(const flp_plan *plan) {
    flp_plan_summary s;
    flp_plan_summarize(plan, &s);
    return s.decode_partial_slots > 0;
}

static int32_t decode_grid(const flp_plan *plan) {
    flp_plan_summary s;
    flp_plan_summarize(plan, &s);
    return s.decode_ctas;
}

/* A GQA problem over a shared paged pool; the query/output buffers hold CMD_MAX_BATCH rows so
 * that one recording serves every batch size up to the plan's capacity. */
enum {
    CMD_HQ = 8,
    CMD_HKV = 2,
    CMD_D = 64,
    CMD_PAGE = 16,
    CMD_MAX_BATCH = 8,
    CMD_POOL_PAGES = 256, /* 4096 tokens */
};
#define CMD_ROW_ELEMS ((size_t)CMD_HQ * CMD_D)
#define CMD_POOL_ELEMS ((size_t)CMD_POOL_PAGES * CMD_PAGE * CMD_HKV * CMD_D)

/* One step's batch: lengths, page table (a fresh random permutation of the pool) and variant. */
typedef struct cmd_batch {
    int32_t batch_size;
    int32_t kv_indptr[CMD_MAX_BATCH + 1]; /* pages */
    int32_t kv_indices[CMD_POOL_PAGES];
    int32_t last_page_len[CMD_MAX_BATCH];
    flp_variant variant;
} cmd_batch;

typedef struct cmd_problem {
    flp_buffer *q, *k, *v, *out_own, *out_cmd, *lse_own, *lse_cmd;
    size_t v_offset; /* bytes: V's place in its buffer (K is at 0 of its own) */
    float qf[CMD_MAX_BATCH * CMD_ROW_ELEMS]; /* [max batch, Hq, D], as stored (f16) */
    float *kf, *vf;                          /* [pool pages, page, Hkv, D], as stored */
} cmd_problem;

static flp_buffer *upload_f16(flp_context *ctx, const float *x, size_t n) {
    uint16_t *bits = xmalloc(n * 2);
    for (size_t i = 0; i < n; i++)
        bits[i] = flp_f32_to_f16(x[i]);
    flp_buffer *buf = NULL;
    assert_ok(ctx, flp_buffer_create(ctx, &(flp_buffer_desc){.size = n * 2}, &buf));
    assert_ok(ctx, flp_buffer_write(ctx, buf, 0, bits, n * 2));
    free(bits);
    return buf;
}

static void fill_f16_values(test_rng *rng, float *x, size_t n) {
    for (size_t i = 0; i < n; i++) {
        do
            x[i] = flp_f16_to_f32(flp_f32_to_f16((float)test_rng_uniform(rng, -1.0, 1.0)));
        while (x[i] == 0.0f);
    }
}

static flp_buffer *create_buffer(flp_context *ctx, size_t size) {
    flp_buffer *buf = NULL;
    assert_ok(ctx, flp_buffer_create(ctx, &(flp_buffer_desc){.size = size}, &buf));
    return buf;
}

/* All bytes 0xFF: NaN as f16 and as f32, so an element left unwritten fails every check. */
static void poison(flp_context *ctx, flp_buffer *buf) {
    size_t size = flp_buffer_size(buf);
    uint8_t *ff = xmalloc(size);
    memset(ff, 0xFF, size);
    assert_ok(ctx, flp_buffer_write(ctx, buf, 0, ff, size));
    free(ff);
}

/* Requests of the given lengths over a random permutation of the pool's pages. */
static void make_batch(test_rng *rng, const int32_t *lens, int32_t batch_size, flp_variant variant,
                       cmd_batch *out) {
    memset(out, 0, sizeof *out);
    out->batch_size = batch_size;
    out->variant = variant;
    int32_t perm[CMD_POOL_PAGES];
    for (int32_t i = 0; i < CMD_POOL_PAGES; i++)
        perm[i] = i;
    for (int32_t i = CMD_POOL_PAGES - 1; i > 0; i--) {
        int32_t j = test_rng_int(rng, 0, i), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    for (int32_t b = 0; b < batch_size; b++) {
        int32_t pages = (lens[b] + CMD_PAGE - 1) / CMD_PAGE;
        out->kv_indptr[b + 1] = out->kv_indptr[b] + pages;
        assert_true(out->kv_indptr[b + 1] <= CMD_POOL_PAGES);
        out->last_page_len[b] = pages ? lens[b] - (pages - 1) * CMD_PAGE : 0;
    }
    for (int32_t i = 0; i < out->kv_indptr[batch_size]; i++)
        out->kv_indices[i] = perm[i];
}

static void plan_batch(flp_context *ctx, flp_plan *plan, const cmd_batch *batch) {
    flp_decode_plan_args pa = {
        .batch_size = batch->batch_size,
        .page_size = CMD_PAGE,
        .kv_indptr = batch->kv_indptr,
        .kv_indices = batch->kv_indices,
        .kv_last_page_len = batch->last_page_len,
        .variant = batch->variant,
    };
    assert_ok(ctx, flp_decode_plan(ctx, plan, &pa));
}

/* Decodes batch_size rows of the problem's q into out (and lse). */
static void decode_into(flp_context *ctx, const flp_plan *plan, const cmd_problem *p,
                        int32_t batch_size, flp_buffer *out, flp_buffer *lse) {
    int64_t qshape[3] = {batch_size, CMD_HQ, CMD_D};
    int64_t kshape[4] = {CMD_POOL_PAGES, CMD_PAGE, CMD_HKV, CMD_D};
    int64_t lshape[2] = {batch_size, CMD_HQ};
    flp_tensor lse_t = flp_tensor_contiguous(lse, 0, FLP_DTYPE_F32, 2, lshape);
    flp_decode_run_args args = {
        .q = flp_tensor_contiguous(p->q, 0, FLP_DTYPE_F16, 3, qshape),
        .k_cache = flp_tensor_contiguous(p->k, 0, FLP_DTYPE_F16, 4, kshape),
        .v_cache = flp_tensor_contiguous(p->v, p->v_offset, FLP_DTYPE_F16, 4, kshape),
        .out = flp_tensor_contiguous(out, 0, FLP_DTYPE_F16, 3, qshape),
        .lse = &lse_t,
    };
    assert_ok(ctx, flp_decode_run(ctx, plan, &args));
}

/* out ([batch, Hq, D] f16 bits) and lse ([batch, Hq]) against the float64 reference. */
static void check_against_reference(const cmd_problem *p, const cmd_batch *batch,
                                    const uint16_t *out, const float *lse, const char *what) {
    const int32_t nb = batch->batch_size;
    const size_t rows = (size_t)nb * CMD_ROW_ELEMS;
    int32_t tokens_indptr[CMD_MAX_BATCH + 1], qo_indptr[CMD_MAX_BATCH + 1];
    for (int32_t b = 0; b <= nb; b++)
        qo_indptr[b] = b;
    size_t max_tokens = (size_t)batch->kv_indptr[nb] * CMD_PAGE;
    double *k = xmalloc(sizeof(double) * max_tokens * CMD_HKV * CMD_D);
    double *v = xmalloc(sizeof(double) * max_tokens * CMD_HKV * CMD_D);
    assert_int_equal(flp_ref_gather_paged(nb, CMD_HKV, CMD_D, CMD_PAGE, FLP_KV_LAYOUT_NHD,
                                          CMD_POOL_PAGES, p->kf, batch->kv_indptr,
                                          batch->kv_indices, batch->last_page_len, tokens_indptr,
                                          k),
                     FLP_OK);
    assert_int_equal(flp_ref_gather_paged(nb, CMD_HKV, CMD_D, CMD_PAGE, FLP_KV_LAYOUT_NHD,
                                          CMD_POOL_PAGES, p->vf, batch->kv_indptr,
                                          batch->kv_indices, batch->last_page_len, tokens_indptr,
                                          v),
                     FLP_OK);
    double *q = xmalloc(sizeof(double) * rows);
    double *want = xmalloc(sizeof(double) * rows), *have = xmalloc(sizeof(double) * rows);
    double want_lse[CMD_MAX_BATCH * CMD_HQ];
    for (size_t i = 0; i < rows; i++)
        q[i] = p->qf[i];
    const flp_variant *var = &batch->variant;
    flp_ref_attention a = {
        .batch_size = nb,
        .num_qo_heads = CMD_HQ,
        .num_kv_heads = CMD_HKV,
        .head_dim = CMD_D,
        .qo_indptr = qo_indptr,
        .kv_indptr = tokens_indptr,
        .q = q,
        .k = k,
        .v = v,
        .use_window = var->use_window,
        .window_left = var->window_left,
        .logits_soft_cap = var->logits_soft_cap,
        .sm_scale = var->sm_scale,
        .pos_encoding = var->pos_encoding,
        .rope = var->rope,
    };
    assert_int_equal(flp_ref_attention_run(&a, want, want_lse), FLP_OK);
    for (size_t i = 0; i < rows; i++)
        have[i] = flp_f16_to_f32(out[i]);
    assert_relative_error(have, want, rows, 2e-3, what);
    for (int32_t i = 0; i < nb * CMD_HQ; i++) {
        if (isinf(want_lse[i]) && want_lse[i] < 0) {
            if (!(isinf(lse[i]) && lse[i] < 0))
                fail_msg("%s: lse[%d] = %g, want -inf (seed 0x%llx)", what, i, (double)lse[i],
                         (unsigned long long)test_seed());
        } else if (!(fabs(lse[i] - want_lse[i]) <= 1e-4 * (1.0 + fabs(want_lse[i])))) {
            fail_msg("%s: lse[%d] = %.7g, want %.7g (seed 0x%llx)", what, i, (double)lse[i],
                     want_lse[i], (unsigned long long)test_seed());
        }
    }
    free(q);
    free(k);
    free(v);
    free(want);
    free(have);
}

/* How run_replans sets up its context and K/V. */
typedef enum replans_config {
    REPLANS_DEFAULT,    /* the device's own kernel choice, K/V in library buffers */
    REPLANS_WRAPPED_KV, /* K/V in one caller VkBuffer, wrapped (CPU kernel: loads by address) */
    REPLANS_GPU_KERNEL, /* decode.comp forced (FLP_VULKAN_DECODE_KERNEL=gpu): CI on lavapipe
                           covers the GPU kernel too */
} replans_config;

/* Records one decode into the caller's command buffer, then re-plans several times within the
 * plan's capacities (other batch sizes and lengths, fresh page tables, an empty request, going
 * from no split to split requests, other variant flags and scales) and submits the SAME command
 * buffer after each re-plan without re-recording: every result matches the float64 reference
 * and equals the library's own-queue run bit for bit, and rows past the batch stay untouched. */
static void run_replans(replans_config config) {
    caller_device cd;
    caller_device_create(&cd);
    /* the kernel choice is read when a context is made: set it for this one, then put back */
    const char *env = getenv("FLP_VULKAN_DECODE_KERNEL");
    char *saved = env ? strdup(env) : NULL;
    if (config == REPLANS_GPU_KERNEL)
        setenv("FLP_VULKAN_DECODE_KERNEL", "gpu", 1);
    flp_context *ctx = caller_context(&cd);
    if (saved)
        setenv("FLP_VULKAN_DECODE_KERNEL", saved, 1);
    else
        unsetenv("FLP_VULKAN_DECODE_KERNEL");
    free(saved);
    test_rng rng;
    test_rng_init(&rng, 0x5eed0004);
    cmd_problem *p = calloc(1, sizeof *p);
    assert_non_null(p);
    p->kf = xmalloc(sizeof(float) * CMD_POOL_ELEMS);
    p->vf = xmalloc(sizeof(float) * CMD_POOL_ELEMS);
    fill_f16_values(&rng, p->qf, CMD_MAX_BATCH * CMD_ROW_ELEMS);
    fill_f16_values(&rng, p->kf, CMD_POOL_ELEMS);
    fill_f16_values(&rng, p->vf, CMD_POOL_ELEMS);
    p->q = upload_f16(ctx, p->qf, CMD_MAX_BATCH * CMD_ROW_ELEMS);
    VkBuffer kv_vkbuf = VK_NULL_HANDLE;
    VkDeviceMemory kv_mem = VK_NULL_HANDLE;
    if (config == REPLANS_WRAPPED_KV) { /* K then V in one caller buffer */
        (void)caller_buffer_create(&cd, 2 * CMD_POOL_ELEMS * 2, &kv_vkbuf, &kv_mem);
        flp_buffer *kv = NULL;
        assert_ok(ctx, flp_vulkan_buffer_wrap(ctx, kv_vkbuf, 2 * CMD_POOL_ELEMS * 2, &kv));
        uint16_t *bits = xmalloc(2 * CMD_POOL_ELEMS * 2);
        for (size_t i = 0; i < CMD_POOL_ELEMS; i++) {
            bits[i] = flp_f32_to_f16(p->kf[i]);
            bits[CMD_POOL_ELEMS + i] = flp_f32_to_f16(p->vf[i]);
        }
        assert_ok(ctx, flp_buffer_write(ctx, kv, 0, bits, 2 * CMD_POOL_ELEMS * 2));
        free(bits);
        p->k = p->v = kv;
        p->v_offset = CMD_POOL_ELEMS * 2;
    } else {
        p->k = upload_f16(ctx, p->kf, CMD_POOL_ELEMS);
        p->v = upload_f16(ctx, p->vf, CMD_POOL_ELEMS);
    }
    const size_t out_bytes = CMD_MAX_BATCH * CMD_ROW_ELEMS * 2;
    const size_t lse_bytes = CMD_MAX_BATCH * CMD_HQ * sizeof(float);
    p->out_own = create_buffer(ctx, out_bytes);
    p->out_cmd = create_buffer(ctx, out_bytes);
    p->lse_own = create_buffer(ctx, lse_bytes);
    p->lse_cmd = create_buffer(ctx, lse_bytes);

    flp_plan *plan = NULL;
    flp_plan_desc pd = {.max_batch_size = CMD_MAX_BATCH,
                        .max_pages = CMD_POOL_PAGES,
                        .num_qo_heads = CMD_HQ,
                        .num_kv_heads = CMD_HKV,
                        .head_dim = CMD_D};
    assert_ok(ctx, flp_plan_create(ctx, &pd, &plan));

    /* Round 0 is recorded: short requests (at most the scheduler's minimum chunk, 128 keys)
     * are never split, whatever the device. Later rounds: more requests with an empty one and a
     * sliding window with RoPE; one long request (split wherever the grid has more workgroups
     * than its 2 work items); a full batch mixing a split request with short ones under a soft
     * cap, another scale and ALiBi. */
    const flp_variant base = {.head_dim = CMD_D, .q_dtype = FLP_DTYPE_F16};
    flp_variant windowed = base, capped = base;
    windowed.use_window = true;
    windowed.window_left = 90;
    windowed.pos_encoding = FLP_POS_ROPE_LLAMA;
    capped.logits_soft_cap = 3.0f;
    capped.sm_scale = 0.3f;
    capped.pos_encoding = FLP_POS_ALIBI;
    static const int32_t lens0[] = {37, 128, 1};
    static const int32_t lens1[] = {300, 0, 17, 250, 64, 401, 99};
    static const int32_t lens2[] = {3000};
    static const int32_t lens3[] = {5, 2600, 33, 160, 1, 77, 300, 16};
    const struct {
        const int32_t *lens;
        int32_t batch_size;
        flp_variant variant;
    } rounds[] = {
        {lens0, 3, base},
        {lens1, 7, windowed},
        {lens2, 1, base},
        {lens3, 8, capped},
    };

    VkCommandPool pool;
    VkCommandPoolCreateInfo pi = {.sType = VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO,
                                  .queueFamilyIndex = cd.queue_family};
    assert_int_equal(vkCreateCommandPool(cd.device, &pi, NULL, &pool), VK_SUCCESS);
    VkCommandBuffer cmd;
    VkCommandBufferAllocateInfo cai = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO,
                                       .commandPool = pool,
                                       .level = VK_COMMAND_BUFFER_LEVEL_PRIMARY,
                                       .commandBufferCount = 1};
    assert_int_equal(vkAllocateCommandBuffers(cd.device, &cai, &cmd), VK_SUCCESS);
    VkFence fence;
    VkFenceCreateInfo fci = {.sType = VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
    assert_int_equal(vkCreateFence(cd.device, &fci, NULL, &fence), VK_SUCCESS);

    uint16_t *own = xmalloc(out_bytes), *via_cmd = xmalloc(out_bytes);
    float *own_lse = xmalloc(lse_bytes), *cmd_lse = xmalloc(lse_bytes);
    const int32_t recorded_batch = rounds[0].batch_size;
    bool split_seen = false;
    for (size_t round = 0; round < sizeof rounds / sizeof rounds[0]; round++) {
        cmd_batch batch;
        make_batch(&rng, rounds[round].lens, rounds[round].batch_size, rounds[round].variant,
                   &batch);
        plan_batch(ctx, plan, &batch);
        if (round == 0)
            assert_false(decode_split(plan));
        if (round == 2 && decode_grid(plan) > CMD_HKV) /* more workgroups than work items */
            assert_true(decode_split(plan));
        split_seen |= decode_split(plan);
        char what[96];

        /* the library's own queue */
        poison(ctx, p->out_own);
        poison(ctx, p->lse_own);
        decode_into(ctx, plan, p, batch.batch_size, p->out_own, p->lse_own);
        assert_ok(ctx, flp_buffer_read(ctx, p->out_own, 0, own, out_bytes));
        assert_ok(ctx, flp_buffer_read(ctx, p->lse_own, 0, own_lse, lse_bytes));
        snprintf(what, sizeof what, "round %zu (batch %d), own queue", round, batch.batch_size);
        check_against_reference(p, &batch, own, own_lse, what);

        if (round == 0) { /* recorded once */
            VkCommandBufferBeginInfo bi = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO};
            assert_int_equal(vkBeginCommandBuffer(cmd, &bi), VK_SUCCESS);
            assert_ok(ctx, flp_vulkan_set_command_buffer(ctx, cmd));
            /* The one-shot call frees its plan on return: refused while recording. */
            flp_single_prefill_args one = {0};
            test_expect_status(ctx, flp_single_prefill(ctx, &one), FLP_ERROR_UNSUPPORTED,
                               "flp_single_prefill while recording",
                               TEST_MENTIONS("flp_single_prefill: the context records into a "
                                             "caller's command buffer"));
            decode_into(ctx, plan, p, recorded_batch, p->out_cmd, p->lse_cmd);
            assert_ok(ctx, flp_vulkan_set_command_buffer(ctx, VK_NULL_HANDLE));
            assert_int_equal(vkEndCommandBuffer(cmd), VK_SUCCESS);
        }
        poison(ctx, p->out_cmd);
        poison(ctx, p->lse_cmd);
        VkSubmitInfo si = {.sType = VK_STRUCTURE_TYPE_SUBMIT_INFO,
                           .commandBufferCount = 1,
                           .pCommandBuffers = &cmd};
        assert_int_equal(vkQueueSubmit(cd.queue, 1, &si, fence), VK_SUCCESS);
        assert_int_equal(vkWaitForFences(cd.device, 1, &fence, VK_TRUE, UINT64_MAX), VK_SUCCESS);
        assert_int_equal(vkResetFences(cd.device, 1, &fence), VK_SUCCESS);
        assert_ok(ctx, flp_buffer_read(ctx, p->out_cmd, 0, via_cmd, out_bytes));
        assert_ok(ctx, flp_buffer_read(ctx, p->lse_cmd, 0, cmd_lse, lse_bytes));
        snprintf(what, sizeof what, "round %zu (batch %d), recorded command buffer", round,
                 batch.batch_size);
        check_against_reference(p, &batch, via_cmd, cmd_lse, what);
        /* the same pipeline and partition: the same bits; and nothing past the batch */
        size_t used = (size_t)batch.batch_size * CMD_ROW_ELEMS * 2;
        size_t used_lse = (size_t)batch.batch_size * CMD_HQ * sizeof(float);
        assert_memory_equal(via_cmd, own, used);
        assert_memory_equal(cmd_lse, own_lse, used_lse);
        for (size_t i = used; i < out_bytes; i++)
            assert_int_equal(((const uint8_t *)via_cmd)[i], 0xFF);
        for (size_t i = used_lse; i < lse_bytes; i++)
            assert_int_equal(((const uint8_t *)cmd_lse)[i], 0xFF);
    }
    if (decode_grid(plan) > CMD_HKV)
        assert_true(split_seen);
    assert_int_equal(flp_vulkan_validation_message_count(ctx), 0);

    vkDestroyFence(cd.device, fence, NULL);
    vkDestroyCommandPool(cd.device, pool, NULL);
    flp_plan_destroy(plan);
    if (p->v == p->k) /* one wrapped buffer holds both */
        p->v = NULL;
    flp_buffer *buffers[] = {p->q, p->k, p->v, p->out_own, p->out_cmd, p->lse_own, p->lse_cmd};
    for (size_t i = 0; i < sizeof buffers / sizeof buffers[0]; i++)
        flp_buffer_destroy(buffers[i]);
    flp_context_destroy(ctx);
    if (kv_vkbuf) {
        vkDestroyBuffer(cd.device, kv_vkbuf, NULL);
        vkFreeMemory(cd.device, kv_mem, NULL);
    }
    caller_device_destroy(&cd);
    free(own);
    free(via_cmd);
    free(own_lse);
    free(cmd_lse);
    free(p->kf);
    free(p->vf);
    free(p);
}

static void test_caller_command_buffer_replans(void **state) {
    (void)state;
    run_replans(REPLANS_DEFAULT);
}

static void test_caller_command_buffer_replans_wrapped_kv(void **state) {
    (void)state;
    run_replans(REPLANS_WRAPPED_KV);
}

static void test_caller_command_buffer_replans_gpu_kernel(void **state) {
    (void)state;
    run_replans(REPLANS_GPU_KERNEL);
}

/* ---- llvmpipe's loop budget ------------------------------------------------------------ */

/* llvmpipe (lavapipe) ends every loop of a shader invocation once 65535 loop iterations have
 * run in total since the invocation started. The decode kernel used to lose the last work
 * items of a long-running workgroup that way (zero output rows, nothing reported). The CPU
 * kernel runs one loop iteration per 8 keys (vk_decode_cpu.c) and refuses plans that would
 * need more: requests of 65530 iterations (just within the budget, with the item, pass and
 * exit iterations) must decode correctly, one iteration more must fail with
 * FLP_ERROR_UNSUPPORTED and leave the output untouched. One request per workgroup, all of the
 * same length: no split shortens the slowest workgroup, so the scheduler leaves them whole.
 * Every page of a request is page 0 but the last, page 1, whose keys (16 q) dominate the
 * softmax: a workgroup that stops early gives a wrong row or none. */
enum { BUDGET_D = 64, BUDGET_PAGE = 16, BUDGET_STEP = 8, BUDGET_LOOP = 65535 };

static double dot64(const float *a, const float *b) {
    double s = 0.0;
    for (int d = 0; d < BUDGET_D; d++)
        s += (double)a[d] * b[d];
    return s;
}

static void test_loop_budget(void **state) {
    (void)state;
    flp_device_info info;
    assert_ok(g_ctx, flp_context_get_info(g_ctx, &info));
    const char *kernel = getenv("FLP_VULKAN_DECODE_KERNEL");
    if (!strstr(info.device_name, "llvmpipe") || (kernel && strcmp(kernel, "gpu") == 0)) {
        /* decode.comp on llvmpipe (a testing override) has no budget check: keep it small */
        print_message("not llvmpipe's CPU kernel: no loop budget to test\n");
        return;
    }
    test_rng rng;
    test_rng_init(&rng, 0x5eed0005);
    const int32_t steps_ok = BUDGET_LOOP - 5; /* + item, pass, key-loop exits */
    flp_plan_desc pd = {.max_batch_size = 1024,
                        .max_pages = 1,
                        .num_qo_heads = 1,
                        .num_kv_heads = 1,
                        .head_dim = BUDGET_D};
    flp_plan *plan = NULL;
    assert_ok(g_ctx, flp_plan_create(g_ctx, &pd, &plan));
    const int32_t batch = decode_grid(plan); /* one request per workgroup */
    assert_true(batch >= 1 && batch <= 1024);
    flp_plan_destroy(plan);
    const int32_t max_pages_per_request = (steps_ok + 1) * BUDGET_STEP / BUDGET_PAGE + 1;
    pd.max_pages = batch * max_pages_per_request;
    assert_ok(g_ctx, flp_plan_create(g_ctx, &pd, &plan));
    const int32_t max_pages = pd.max_pages;

    float q[1024 * BUDGET_D], pool[2][2][BUDGET_PAGE * BUDGET_D]; /* [page][k/v][slot, d] */
    fill_f16_values(&rng, q, BUDGET_D);
    for (int32_t b = 1; b < batch; b++) /* every request asks the same query */
        memcpy(q + (size_t)b * BUDGET_D, q, sizeof(float) * BUDGET_D);
    fill_f16_values(&rng, &pool[0][0][0], sizeof pool / sizeof(float));
    for (int t = 0; t < BUDGET_PAGE; t++)
        for (int d = 0; d < BUDGET_D; d++)
            pool[1][0][t * BUDGET_D + d] = flp_f16_to_f32(flp_f32_to_f16(16.0f * q[d]));
    float kv[2][2 * BUDGET_PAGE * BUDGET_D]; /* k and v caches [2 pages, page, 1, D] */
    for (int page = 0; page < 2; page++)
        for (int i = 0; i < BUDGET_PAGE * BUDGET_D; i++) {
            kv[0][page * BUDGET_PAGE * BUDGET_D + i] = pool[page][0][i];
            kv[1][page * BUDGET_PAGE * BUDGET_D + i] = pool[page][1][i];
        }
    flp_buffer *q_buf = upload_f16(g_ctx, q, (size_t)batch * BUDGET_D);
    flp_buffer *k_buf = upload_f16(g_ctx, kv[0], 2 * BUDGET_PAGE * BUDGET_D);
    flp_buffer *v_buf = upload_f16(g_ctx, kv[1], 2 * BUDGET_PAGE * BUDGET_D);
    const size_t out_bytes = (size_t)batch * BUDGET_D * 2;
    flp_buffer *out = create_buffer(g_ctx, out_bytes);
    int32_t *indptr = xmalloc(sizeof(int32_t) * (size_t)(batch + 1));
    int32_t *indices = xmalloc(sizeof(int32_t) * (size_t)max_pages);
    int32_t *last = xmalloc(sizeof(int32_t) * (size_t)batch);
    uint16_t *got = xmalloc(out_bytes);

    for (int round = 0; round < 2; round++) {
        int32_t steps = steps_ok + round; /* round 1: one loop iteration too many */
        int32_t keys = steps * BUDGET_STEP;
        int32_t pages0 = (keys + BUDGET_PAGE - 1) / BUDGET_PAGE;
        int32_t last0 = keys - (pages0 - 1) * BUDGET_PAGE; /* keys on the last page */
        for (int32_t b = 0; b < batch; b++) {
            indptr[b] = b * pages0;
            for (int32_t i = 0; i < pages0 - 1; i++)
                indices[indptr[b] + i] = 0;
            indices[indptr[b] + pages0 - 1] = 1; /* the dominant keys come last */
            last[b] = last0;
        }
        indptr[batch] = batch * pages0;
        flp_decode_plan_args pa = {
            .batch_size = batch,
            .page_size = BUDGET_PAGE,
            .kv_indptr = indptr,
            .kv_indices = indices,
            .kv_last_page_len = last,
            .variant = {.head_dim = BUDGET_D, .q_dtype = FLP_DTYPE_F16},
        };
        assert_ok(g_ctx, flp_decode_plan(g_ctx, plan, &pa));
        assert_false(decode_split(plan));
        int64_t qshape[3] = {batch, 1, BUDGET_D}, kshape[4] = {2, BUDGET_PAGE, 1, BUDGET_D};
        flp_decode_run_args ra = {
            .q = flp_tensor_contiguous(q_buf, 0, FLP_DTYPE_F16, 3, qshape),
            .k_cache = flp_tensor_contiguous(k_buf, 0, FLP_DTYPE_F16, 4, kshape),
            .v_cache = flp_tensor_contiguous(v_buf, 0, FLP_DTYPE_F16, 4, kshape),
            .out = flp_tensor_contiguous(out, 0, FLP_DTYPE_F16, 3, qshape),
        };
        poison(g_ctx, out);
        flp_status st = flp_decode_run(g_ctx, plan, &ra);
        char message[512];
        snprintf(message, sizeof message, "%s", flp_context_last_error(g_ctx));
        assert_ok(g_ctx, flp_context_synchronize(g_ctx));
        assert_ok(g_ctx, flp_buffer_read(g_ctx, out, 0, got, out_bytes));
        if (round == 1) {
            assert_int_equal(st, FLP_ERROR_UNSUPPORTED);
            /* the first workgroup, one iteration past the budget, and the budget */
            const char *want =
                test_str("this decode plan is too large for the device: workgroup 0 of %d would "
                         "run %d loop iterations, and llvmpipe ends every loop of a shader "
                         "invocation after %d iterations",
                         batch, BUDGET_LOOP + 1, BUDGET_LOOP);
            if (!strstr(message, want))
                fail_msg("the message \"%s\" does not mention \"%s\"", message, want);
            for (size_t i = 0; i < out_bytes / 2; i++)
                assert_int_equal(got[i], 0xFFFF); /* nothing was queued */
            break;
        }
        assert_ok(g_ctx, st);
        /* every request in closed form: page 0's keys (pages0 - 1) times, then last0 of page 1 */
        double scale = 1.0 / sqrt((double)BUDGET_D), m = -INFINITY;
        double s[2][BUDGET_PAGE];
        for (int page = 0; page < 2; page++)
            for (int t = 0; t < BUDGET_PAGE; t++) {
                s[page][t] = scale * dot64(q, &pool[page][0][t * BUDGET_D]);
                m = fmax(m, s[page][t]);
            }
        double want[BUDGET_D] = {0}, have[BUDGET_D], sum = 0.0;
        for (int page = 0; page < 2; page++)
            for (int t = 0; t < (page == 0 ? BUDGET_PAGE : last0); t++) {
                double w = exp(s[page][t] - m) * (page == 0 ? pages0 - 1 : 1);
                sum += w;
                for (int d = 0; d < BUDGET_D; d++)
                    want[d] += w * pool[page][1][t * BUDGET_D + d];
            }
        for (int d = 0; d < BUDGET_D; d++)
            want[d] /= sum;
        for (int32_t b = 0; b < batch; b++) {
            for (int d = 0; d < BUDGET_D; d++)
                have[d] = flp_f16_to_f32(got[b * BUDGET_D + d]);
            assert_relative_error(have, want, BUDGET_D, 2e-3, test_str("request %d", b));
        }
    }
    flp_plan_destroy(plan);
    flp_buffer_destroy(q_buf);
    flp_buffer_destroy(k_buf);
    flp_buffer_destroy(v_buf);
    flp_buffer_destroy(out);
    free(indptr);
    free(indices);
    free(last);
    free(got);
}

/* llvmpipe's loop budget and the ragged state merge (vk_merge.c): a row of states_per_row
 * states over head_dim = 129 (3 passes of 64 invocations) runs at most 60000 state steps, and
 * the last state of such a row is still folded in (it dominates the row: were the loop cut
 * short, o would come out near the other states' 100); one state more is refused before
 * anything is queued, and so is any indptr merge of more than 60000 / passes states, whatever
 * its rows hold (indptr lives on the device). */
static void test_merge_loop_budget(void **state) {
    (void)state;
    flp_device_info info;
    assert_ok(g_ctx, flp_context_get_info(g_ctx, &info));
    if (!strstr(info.device_name, "llvmpipe")) {
        print_message("not llvmpipe: no loop budget to test\n");
        return;
    }
    enum { D = 129, MAX_STATES = 20000 };
    const int32_t n = MAX_STATES + 1;
    float *o = xmalloc(sizeof(float) * (size_t)n * D), *lse = xmalloc(sizeof(float) * (size_t)n);
    float got_o[D], got_lse;
    flp_buffer *in = create_buffer(g_ctx, sizeof(float) * (size_t)n * (D + 1));
    flp_buffer *out = create_buffer(g_ctx, sizeof(float) * (D + 1));
    flp_buffer *indptr = create_buffer(g_ctx, sizeof(int32_t) * (size_t)(n + 1));
    int32_t *ip = xmalloc(sizeof(int32_t) * (size_t)(n + 1));
    for (int32_t i = 0; i <= n; i++)
        ip[i] = i; /* rows of one state each */
    assert_ok(g_ctx, flp_buffer_write(g_ctx, indptr, 0, ip, sizeof(int32_t) * (size_t)(n + 1)));
    for (int round = 0; round < 2; round++) {
        const int32_t states = MAX_STATES + round;
        for (int32_t s = 0; s < states; s++) {
            lse[s] = s == states - 1 ? 30.0f : 0.0f;
            for (int d = 0; d < D; d++)
                o[(size_t)s * D + d] = s == states - 1 ? (float)d - 64.0f : 100.0f;
        }
        const size_t lse_offset = sizeof(float) * (size_t)states * D;
        assert_ok(g_ctx, flp_buffer_write(g_ctx, in, 0, o, lse_offset));
        assert_ok(g_ctx,
                  flp_buffer_write(g_ctx, in, lse_offset, lse, sizeof(float) * (size_t)states));
        poison(g_ctx, out);
        int64_t o_shape[3] = {states, 1, D}, lse_shape[2] = {states, 1};
        int64_t out_shape[3] = {1, 1, D}, out_lse_shape[2] = {1, 1};
        flp_merge_states_args args = {
            .states = {flp_tensor_contiguous(in, 0, FLP_DTYPE_F32, 3, o_shape),
                       flp_tensor_contiguous(in, lse_offset, FLP_DTYPE_F32, 2, lse_shape)},
            .states_per_row = states,
            .out = {flp_tensor_contiguous(out, 0, FLP_DTYPE_F32, 3, out_shape),
                    flp_tensor_contiguous(out, sizeof(float) * D, FLP_DTYPE_F32, 2, out_lse_shape)},
        };
        flp_status st = flp_merge_states(g_ctx, &args);
        if (round == 0) {
            assert_ok(g_ctx, st);
            assert_ok(g_ctx, flp_buffer_read(g_ctx, out, 0, got_o, sizeof got_o));
            assert_ok(g_ctx, flp_buffer_read(g_ctx, out, sizeof got_o, &got_lse, sizeof got_lse));
            /* the others weigh (states - 1) e^-30 < 2e-9 of the last */
            for (int d = 0; d < D; d++)
                assert_near(got_o[d], (double)d - 64.0, 1e-5);
            assert_near(got_lse, 30.0, 1e-5);
            continue;
        }
        assert_int_equal(st, FLP_ERROR_UNSUPPORTED);
        const char *want = test_str("ragged merge of up to %d states per row (states_per_row) "
                                    "with head_dim = %d: one invocation would run 3 passes x %d "
                                    "states = %d state steps",
                                    states, D, states, 3 * states);
        if (!strstr(flp_context_last_error(g_ctx), want))
            fail_msg("the message \"%s\" does not mention \"%s\"", flp_context_last_error(g_ctx),
                     want);
        /* the same states in rows of one through indptr: refused just the same */
        int64_t rows_shape[1] = {states + 1};
        flp_tensor ip_tensor = flp_tensor_contiguous(indptr, 0, FLP_DTYPE_I32, 1, rows_shape);
        int64_t many_shape[3] = {states, 1, D}, many_lse_shape[2] = {states, 1};
        flp_buffer *many = create_buffer(g_ctx, sizeof(float) * (size_t)states * (D + 1));
        args.indptr = &ip_tensor;
        args.states_per_row = 0;
        args.out.o = flp_tensor_contiguous(many, 0, FLP_DTYPE_F32, 3, many_shape);
        args.out.lse = flp_tensor_contiguous(many, sizeof(float) * (size_t)states * D,
                                             FLP_DTYPE_F32, 2, many_lse_shape);
        assert_int_equal(flp_merge_states(g_ctx, &args), FLP_ERROR_UNSUPPORTED);
        want =
            test_str("ragged merge of up to %d states per row (num_states, with indptr)", states);
        if (!strstr(flp_context_last_error(g_ctx), want))
            fail_msg("the message \"%s\" does not mention \"%s\"", flp_context_last_error(g_ctx),
                     want);
        flp_buffer_destroy(many);
        /* nothing was queued */
        uint32_t words[D + 1];
        assert_ok(g_ctx, flp_buffer_read(g_ctx, out, 0, words, sizeof words));
        for (int i = 0; i <= D; i++)
            assert_int_equal(words[i], 0xFFFFFFFFu);
    }
    flp_buffer_destroy(in);
    flp_buffer_destroy(out);
    flp_buffer_destroy(indptr);
    free(o);
    free(lse);
    free(ip);
}

/* ---- main ------------------------------------------------------------------------------- */

int main(void) {
    setenv("FLP_VULKAN_VALIDATION", "1", 0); /* unless the environment says otherwise */
    flp_context_desc desc = {.backend = FLP_BACKEND_VULKAN, .log = on_log};
    flp_status st = flp_context_create(&desc, &g_ctx);
    /* FLP_ERROR_UNSUPPORTED is "no device" (a skip) or "no validation layer" (a failure). */
    if (st == FLP_ERROR_UNSUPPORTED && test_vulkan_validation_blocks(&desc)) {
        fprintf(stderr,
                "FAILED: the Vulkan device opens, but not with the Khronos validation layer that "
                "FLP_VULKAN_VALIDATION=%s asks for: %s\nInstall it (Debian/Ubuntu: "
                "vulkan-validationlayers), or set FLP_VULKAN_VALIDATION=0 to test without it.\n",
                getenv("FLP_VULKAN_VALIDATION"), g_last_log);
        return 1;
    }
    if (st == FLP_ERROR_UNSUPPORTED) {
        fprintf(stderr, "skipped: no Vulkan device could be opened (%s)\n", g_last_log);
        return 77;
    }
    if (st != FLP_OK) {
        fprintf(stderr, "flp_context_create(vulkan): %s: %s\n", flp_status_string(st), g_last_log);
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_context_info, teardown_check_validation),
        cmocka_unit_test_teardown(test_context_errors, teardown_check_validation),
        cmocka_unit_test_teardown(test_params_layout, teardown_check_validation),
        cmocka_unit_test_teardown(test_prefill_params_layout, teardown_check_validation),
        cmocka_unit_test_teardown(test_spec_constant_ids, teardown_check_validation),
        cmocka_unit_test_teardown(test_buffer_round_trips, teardown_check_validation),
        cmocka_unit_test_teardown(test_buffer_beyond_binding_range, teardown_check_validation),
        cmocka_unit_test_teardown(test_buffer_range_errors, teardown_check_validation),
        cmocka_unit_test_teardown(test_command_buffer_mode_smoke, teardown_check_validation),
        cmocka_unit_test_teardown(test_buffer_wrap, teardown_check_validation),
        cmocka_unit_test_teardown(test_caller_command_buffer_replans, teardown_check_validation),
        cmocka_unit_test_teardown(test_caller_command_buffer_replans_wrapped_kv,
                                  teardown_check_validation),
        cmocka_unit_test_teardown(test_caller_command_buffer_replans_gpu_kernel,
                                  teardown_check_validation),
        cmocka_unit_test_teardown(test_loop_budget, teardown_check_validation),
        cmocka_unit_test_teardown(test_merge_loop_budget, teardown_check_validation),
    };
    int failed = cmocka_run_group_tests_name("vulkan", tests, NULL, NULL);
    flp_context_destroy(g_ctx);
    return failed;
}
