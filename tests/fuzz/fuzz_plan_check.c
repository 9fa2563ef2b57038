/* Reading a plan back and the checks both plan targets make (fuzz_plan_check.h). */
#include "tests/fuzz/fuzz_plan_check.h"

#include "tests/fake_backend.h"

#include <math.h>
#include <string.h>

/* ---- the plan memory ---------------------------------------------------------------------- */

const uint8_t *plan_device_region(const flp_plan *plan) {
    return (const uint8_t *)plan->buffer->native + plan->base;
}

/* Zeroed memory for a check (never NULL: running out fails the check). */
static void *zeroed(size_t n, size_t size, const char *what) {
    void *p = calloc(n ? n : 1, size);
    FUZZ_CHECK(p, "out of memory for %s", what);
    return p;
}

static void *copy_of(const void *src, size_t n) {
    void *p = zeroed(n, 1, "a snapshot");
    if (n)
        memcpy(p, src, n);
    return p;
}

void take_snapshot(const flp_plan *plan, snapshot *s) {
    s->bytes = plan->layout.metadata_end;
    s->host = copy_of(plan->host, s->bytes);
    s->device = copy_of(plan_device_region(plan), s->bytes);
    const flp_prefill_layout *pl = &plan->prefill.layout;
    s->pf_bytes = pl->metadata_end - pl->info;
    s->pf_host = copy_of(plan->prefill.host, s->pf_bytes);
    s->pf_device = copy_of(plan_device_region(plan) + pl->info, s->pf_bytes);
    flp_plan_summarize(plan, &s->summary);
}

void free_snapshot(snapshot *s) {
    free(s->host);
    free(s->device);
    free(s->pf_host);
    free(s->pf_device);
}

/* ---- a plan call -------------------------------------------------------------------------- */

void check_message(flp_context *ctx, const char *fn, flp_status st, const outcome *o) {
    const char *msg = flp_context_last_error(ctx);
    if (st == FLP_OK) {
        FUZZ_CHECK(msg[0] == '\0', "an accepted plan left the message \"%s\"", msg);
        return;
    }
    const size_t len = strlen(fn);
    FUZZ_CHECK(strncmp(msg, fn, len) == 0 && strncmp(msg + len, ": ", 2) == 0,
               "\"%s\" does not name %s", msg, fn);
    for (int i = 0; i < o->num_frags; i++)
        FUZZ_CHECK(strstr(msg, o->frags[i]), "\"%s\" does not mention \"%s\"", msg, o->frags[i]);
}

/* ---- the layout --------------------------------------------------------------------------- */

void check_layout_parts(const layout_part *parts, size_t n, size_t end) {
    for (size_t i = 0; i < n; i++) {
        FUZZ_CHECK(parts[i].at % parts[i].align == 0, "%s at byte %zu, not %zu-aligned",
                   parts[i].name, parts[i].at, parts[i].align);
        const size_t next = i + 1 < n ? parts[i + 1].at : end;
        FUZZ_CHECK(parts[i].at + parts[i].bytes <= next, "%s [%zu, +%zu) runs into the next at %zu",
                   parts[i].name, parts[i].at, parts[i].bytes, next);
    }
}

void check_metadata_end(size_t metadata_end, size_t kv_indices, int32_t max_pages,
                        size_t partial_o) {
    FUZZ_CHECK(metadata_end >= kv_indices + sizeof(int32_t) * (size_t)max_pages &&
                   metadata_end <= partial_o,
               "metadata_end %zu", metadata_end);
}

/* ---- the info struct ---------------------------------------------------------------------- */

variant_model model_variant(const flp_variant *v) {
    variant_model m;
    m.q_dtype = v->q_dtype == FLP_DTYPE_DEFAULT ? FLP_DTYPE_F16 : v->q_dtype;
    m.kv_dtype = v->kv_dtype == FLP_DTYPE_DEFAULT ? m.q_dtype : v->kv_dtype;
    m.flags = (v->mask == FLP_MASK_CAUSAL ? FLP_FLAG_CAUSAL : 0u) |
              (v->use_window ? FLP_FLAG_WINDOW : 0u) |
              (v->logits_soft_cap > 0 ? FLP_FLAG_SOFTCAP : 0u) |
              (v->pos_encoding == FLP_POS_ALIBI ? FLP_FLAG_ALIBI : 0u) |
              (v->pos_encoding == FLP_POS_ROPE_LLAMA ? FLP_FLAG_ROPE : 0u);
    return m;
}

void check_info_variant(const info_variant *got, const flp_variant *v, int32_t head_dim,
                        const variant_model *want) {
    const bool fp8 = want->kv_dtype == FLP_DTYPE_E4M3 || want->kv_dtype == FLP_DTYPE_E5M2;
    const float sm = v->sm_scale > 0 ? v->sm_scale : (float)(1.0 / sqrt((double)head_dim));
    FUZZ_CHECK(got->flags == want->flags, "info flags %#x, model %#x", got->flags, want->flags);
    FUZZ_CHECK(got->window_left == (v->use_window ? v->window_left : -1), "info window_left %d",
               got->window_left);
    FUZZ_CHECK(got->q_dtype == (int32_t)want->q_dtype && got->kv_dtype == (int32_t)want->kv_dtype,
               "info dtypes %d/%d, model %d/%d", got->q_dtype, got->kv_dtype, want->q_dtype,
               want->kv_dtype);
    FUZZ_CHECK(got->sm_scale == sm && got->soft_cap == v->logits_soft_cap,
               "info sm_scale %g soft_cap %g", (double)got->sm_scale, (double)got->soft_cap);
    FUZZ_CHECK(got->k_scale == (fp8 && v->k_scale > 0 ? v->k_scale : 1.0f) &&
                   got->v_scale == (fp8 && v->v_scale > 0 ? v->v_scale : 1.0f),
               "info scales %g/%g", (double)got->k_scale, (double)got->v_scale);
}

/* The standard ALiBi slopes of docs/design.md 3 "Positions". */
static float standard_slope(int32_t hq, int32_t h) {
    int32_t n = 1;
    while (2 * n <= hq)
        n *= 2;
    return (float)exp2(h < n ? -8.0 * (h + 1) / n : -4.0 * (2 * (h - n) + 1) / n);
}

void check_uploaded_slopes(const float *uploaded, int32_t hq, const float *given) {
    for (int32_t h = 0; h < hq; h++) {
        const float want = given ? given[h] : standard_slope(hq, h);
        FUZZ_CHECK(fabsf(uploaded[h] - want) <= 1e-6f * fabsf(want), "alibi slope %d: %g, want %g",
                   h, (double)uploaded[h], (double)want);
    }
}

/* ---- the schedule ------------------------------------------------------------------------- */

int32_t check_work_indptr(const int32_t *indptr, int32_t grid, int32_t max_items) {
    FUZZ_CHECK(indptr[0] == 0, "work_indptr[0] = %d", indptr[0]);
    for (int32_t k = 0; k < grid; k++)
        FUZZ_CHECK(indptr[k] <= indptr[k + 1], "work_indptr decreases at %d (%d, %d)", k, indptr[k],
                   indptr[k + 1]);
    const int32_t n = indptr[grid];
    FUZZ_CHECK(n <= max_items, "%d items, capacity %d", n, max_items);
    return n;
}

void sort_by_key_begin(const int32_t **items, int32_t k, int key_begin) {
    for (int32_t i = 1; i < k; i++)
        for (int32_t j = i; j > 0 && items[j - 1][key_begin] > items[j][key_begin]; j--) {
            const int32_t *t = items[j];
            items[j] = items[j - 1];
            items[j - 1] = t;
        }
}

void check_assignment(const model_item *want, int32_t n, int item_ints, int32_t grid,
                      const int32_t *indptr, const int32_t *items, describe_item_fn describe) {
    /* order[k]: the item assigned k-th; cta_of[i]: item i's workgroup; fill[c]: where the next
     * item of workgroup c goes */
    int32_t *order = zeroed((size_t)n, sizeof(int32_t), "the assignment");
    int32_t *cta_of = zeroed((size_t)n, sizeof(int32_t), "the assignment");
    int32_t *fill = zeroed((size_t)grid, sizeof(int32_t), "the assignment");
    int32_t *count = zeroed((size_t)grid, sizeof(int32_t), "the assignment");
    int64_t *load = zeroed((size_t)grid, sizeof(int64_t), "the assignment");
    for (int32_t i = 0; i < n; i++) { /* insertion sort: stable on natural order */
        int32_t j = i;
        while (j > 0 && want[order[j - 1]].cost < want[i].cost) {
            order[j] = order[j - 1];
            j--;
        }
        order[j] = i;
    }
    for (int32_t k = 0; k < n; k++) {
        int32_t best = 0;
        for (int32_t c = 1; c < grid; c++)
            best = load[c] < load[best] ? c : best;
        cta_of[order[k]] = best;
        load[best] += want[order[k]].cost;
    }
    for (int32_t i = 0; i < n; i++)
        count[cta_of[i]]++;
    for (int32_t c = 0, at = 0; c < grid; c++) {
        FUZZ_CHECK(indptr[c + 1] - indptr[c] == count[c],
                   "workgroup %d has %d items, longest-first gives %d", c,
                   indptr[c + 1] - indptr[c], count[c]);
        fill[c] = at;
        at += count[c];
    }
    for (int32_t k = 0; k < n; k++) {
        const int32_t i = order[k], at = fill[cta_of[i]]++;
        const int32_t *got = items + (size_t)item_ints * (size_t)at;
        if (memcmp(got, want[i].w, sizeof(int32_t) * (size_t)item_ints) != 0) {
            char got_text[160], want_text[160];
            describe(got, got_text, sizeof got_text);
            describe(want[i].w, want_text, sizeof want_text);
            FUZZ_CHECK(false, "item %d of the schedule is %s, longest-first puts %s there", at,
                       got_text, want_text);
        }
    }
    free(order);
    free(cta_of);
    free(fill);
    free(count);
    free(load);
}

/* ---- runs --------------------------------------------------------------------------------- */

/* Entries of rb->ids beyond max_ids: run_page_ids starts a view up to an entry in and gives it
 * up to 3 entries to spare. */
#define IDS_SLACK 4

flp_context *open_run_context(run_buffers *rb, size_t mask_bytes, int32_t max_ids) {
    flp_context *ctx = fake_context();
    FUZZ_CHECK(ctx, "fake_context");
    flp_buffer_desc bd = {1024};
    FUZZ_CHECK(flp_buffer_create(ctx, &bd, &rb->q) == FLP_OK &&
                   flp_buffer_create(ctx, &bd, &rb->out) == FLP_OK &&
                   flp_buffer_create(ctx, &bd, &rb->kv) == FLP_OK &&
                   flp_buffer_create(ctx, &bd, &rb->lse) == FLP_OK,
               "run buffers");
    bd.size = sizeof(int32_t) * ((size_t)max_ids + IDS_SLACK);
    FUZZ_CHECK(flp_buffer_create(ctx, &bd, &rb->ids) == FLP_OK, "page ids buffer");
    rb->mask = NULL;
    if (mask_bytes > 0) {
        bd.size = mask_bytes;
        FUZZ_CHECK(flp_buffer_create(ctx, &bd, &rb->mask) == FLP_OK, "mask buffer");
    }
    return ctx;
}

flp_tensor broadcast(flp_buffer *buf, flp_dtype dtype, int ndim, const int64_t *shape) {
    flp_tensor t;
    memset(&t, 0, sizeof t);
    t.buf = buf;
    t.dtype = dtype;
    t.ndim = ndim;
    for (int i = 0; i < ndim; i++)
        t.shape[i] = shape[i];
    t.stride[ndim - 1] = 1;
    return t;
}

void check_refused_run(flp_context *ctx, flp_status st, int queued, const char *mentions) {
    FUZZ_CHECK(st == FLP_ERROR_INVALID_ARGUMENT && strstr(flp_context_last_error(ctx), mentions),
               "a run that should be refused naming \"%s\": %d (%s)", mentions, st,
               flp_context_last_error(ctx));
    FUZZ_CHECK(fake_runs_queued == queued, "a refused run reached the backend");
}

void check_run_queued(flp_context *ctx, flp_status st, int queued) {
    FUZZ_CHECK(st == FLP_OK, "run of the planned batch: %d (%s)", st, flp_context_last_error(ctx));
    FUZZ_CHECK(fake_runs_queued == queued + 1, "the run did not reach the backend once");
}

void check_params_slot(const flp_plan *plan, const flp_params_slot *slot, size_t params_slot) {
    FUZZ_CHECK(slot->buffer == plan->buffer && slot->offset == plan->base + params_slot &&
                   slot->offset % 256 == 0,
               "params slot at %llu", (unsigned long long)slot->offset);
}

/* ---- page ids at run time ----------------------------------------------------------------- */

int64_t run_cache_pages(bool pages_at_run, int32_t max_page_id, int32_t ids_max, uint8_t draw) {
    if (!pages_at_run)
        return (int64_t)max_page_id + 1;
    const int64_t fit = (int64_t)ids_max + 1;
    switch ((draw >> 1) % 4) {
    case 0:
        return fit;
    case 1:
        return fit / 2;
    case 2:
        return 0;
    default:
        return fit + (draw & 128 ? 1000 : 1);
    }
}

flp_tensor run_page_ids(const run_buffers *rb, int32_t total_pages, uint8_t draw) {
    const int64_t shape[1] = {(int64_t)total_pages + (draw & 2 ? 3 : 0)};
    const size_t first = draw & 1;
    FUZZ_CHECK((size_t)shape[0] + first <= rb->ids->size / sizeof(int32_t),
               "%d page ids do not fit the run buffers", total_pages);
    return flp_tensor_contiguous(rb->ids, sizeof(int32_t) * first, FLP_DTYPE_I32, 1, shape);
}

/* A run with ids refused, naming them (and what, when not NULL). */
static void refused_ids(flp_context *ctx, const flp_plan *plan, run_with_ids_fn run,
                        const void *args, const flp_tensor *ids, const char *mentions,
                        const char *what) {
    const int queued = fake_runs_queued;
    check_refused_run(ctx, run(ctx, plan, args, ids), queued, mentions);
    FUZZ_CHECK(!what || strstr(flp_context_last_error(ctx), what),
               "the refusal of kv_indices (%s) does not mention \"%s\"",
               flp_context_last_error(ctx), what);
}

const flp_tensor *check_run_page_ids(flp_context *ctx, const flp_plan *plan, run_with_ids_fn run,
                                     const void *args, const flp_tensor *out, const run_buffers *rb,
                                     bool pages_at_run, int32_t total_pages, uint8_t draw,
                                     flp_tensor *ids) {
    *ids = run_page_ids(rb, total_pages, draw);
    if (!pages_at_run) {
        refused_ids(ctx, plan, run, args, ids,
                    "kv_indices is given but the plan holds the page ids", NULL);
        return NULL;
    }
    char text[128];
    if (total_pages > 0) {
        snprintf(text, sizeof text,
                 "kv_indices is NULL but the plan was given no page ids (%d pages to look up)",
                 total_pages);
        refused_ids(ctx, plan, run, args, NULL, text, NULL);
    }
    /* one bad view a run: another dtype (same bytes or fewer), rank, a stride, no buffer */
    flp_tensor bad = *ids;
    switch ((draw >> 2) % 4) {
    case 0:
        bad.dtype = draw & 2 ? FLP_DTYPE_U8 : FLP_DTYPE_F32;
        refused_ids(ctx, plan, run, args, &bad, "kv_indices", "dtype");
        break;
    case 1:
        bad.ndim = 2;
        bad.shape[1] = 1;
        bad.stride[0] = bad.stride[1] = 1;
        refused_ids(ctx, plan, run, args, &bad, "kv_indices", "ndim");
        break;
    case 2:
        bad.shape[0] = total_pages / 2; /* within the buffer */
        bad.stride[0] = 2;
        refused_ids(ctx, plan, run, args, &bad, "kv_indices", "stride");
        break;
    default:
        bad.buf = NULL;
        refused_ids(ctx, plan, run, args, &bad, "kv_indices.buf is NULL", NULL);
        break;
    }
    if (total_pages > 0) {
        bad = *ids;
        bad.shape[0] = total_pages - 1;
        snprintf(text, sizeof text, "kv_indices has %d entries, the plan's kv_indptr needs %d",
                 total_pages - 1, total_pages);
        refused_ids(ctx, plan, run, args, &bad, text, NULL);
        bool out_empty = false;
        for (int i = 0; i < out->ndim; i++)
            out_empty = out_empty || out->shape[i] == 0;
        if (!out_empty && out->offset + sizeof(int32_t) * (size_t)total_pages <= out->buf->size) {
            /* ids under out: the kernels would read ids they overwrite */
            const int64_t shape[1] = {total_pages};
            bad = flp_tensor_contiguous(out->buf, out->offset, FLP_DTYPE_I32, 1, shape);
            refused_ids(ctx, plan, run, args, &bad, "kv_indices", "overlaps");
        }
    } else if (draw & 16) {
        return NULL; /* nothing to look up: no ids needed */
    }
    return ids;
}

void check_ids_not_uploaded(const uint8_t *before, const uint8_t *now, size_t at,
                            int32_t max_pages) {
    FUZZ_CHECK(memcmp(before + at, now + at, sizeof(int32_t) * (size_t)max_pages) == 0,
               "a plan given no page ids changed the uploaded kv_indices");
}

/* ---- capacities at the edge --------------------------------------------------------------- */

bool edge_caps_refused(flp_context *ctx, flp_status st) {
    if (st == FLP_OK)
        return false;
    const char *msg = flp_context_last_error(ctx);
    FUZZ_CHECK((st == FLP_ERROR_INVALID_ARGUMENT || st == FLP_ERROR_CAPACITY) &&
                   strncmp(msg, "flp_plan_workspace_size: ", 25) == 0,
               "capacities refused with %d (%s)", st, msg);
    return true;
}
