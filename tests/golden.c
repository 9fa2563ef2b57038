/* Loader for the golden cases (tests/golden/README.md): a tiny JSON reader for case.json and
 * index.json, and raw little-endian array files checked against their declared shapes. */
#include "tests/golden.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the golden array files are little-endian; add byte swapping for this host"
#endif

#ifndef FLP_GOLDEN_DIR
#define FLP_GOLDEN_DIR "tests/golden"
#endif

/* ---- JSON ---------------------------------------------------------------------------------- */

typedef enum json_type {
    JSON_NULL,
    JSON_BOOL,
    JSON_NUMBER,
    JSON_STRING,
    JSON_ARRAY,
    JSON_OBJECT
} json_type;

typedef struct json_value {
    json_type type;
    bool boolean;
    double number;
    char *string;             /* JSON_STRING */
    struct json_value *items; /* [count] JSON_ARRAY elements or JSON_OBJECT values */
    char **keys;              /* [count] JSON_OBJECT keys */
    size_t count;
} json_value;

typedef struct json_parser {
    const char *s;
    size_t pos, len;
    int depth;
    const char *error;
} json_parser;

#define JSON_MAX_DEPTH 64

static void json_free(json_value *v) {
    if (!v)
        return;
    free(v->string);
    for (size_t i = 0; i < v->count; ++i) {
        json_free(&v->items[i]);
        if (v->keys)
            free(v->keys[i]);
    }
    free(v->items);
    free(v->keys);
    memset(v, 0, sizeof(*v));
}

static void json_skip_space(json_parser *p) {
    while (p->pos < p->len && (p->s[p->pos] == ' ' || p->s[p->pos] == '\t' ||
                               p->s[p->pos] == '\n' || p->s[p->pos] == '\r'))
        p->pos++;
}

static bool json_fail(json_parser *p, const char *error) {
    if (!p->error)
        p->error = error;
    return false;
}

static bool json_literal(json_parser *p, const char *word) {
    const size_t n = strlen(word);
    if (p->len - p->pos < n || memcmp(p->s + p->pos, word, n) != 0)
        return json_fail(p, "unknown literal");
    p->pos += n;
    return true;
}

static int hex_digit(char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Appends the UTF-8 encoding of code point cp to buf at *n (buf has room for 4 more bytes). */
static void utf8_put(char *buf, size_t *n, unsigned cp) {
    if (cp < 0x80) {
        buf[(*n)++] = (char)cp;
    } else if (cp < 0x800) {
        buf[(*n)++] = (char)(0xc0 | (cp >> 6));
        buf[(*n)++] = (char)(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
        buf[(*n)++] = (char)(0xe0 | (cp >> 12));
        buf[(*n)++] = (char)(0x80 | ((cp >> 6) & 0x3f));
        buf[(*n)++] = (char)(0x80 | (cp & 0x3f));
    } else {
        buf[(*n)++] = (char)(0xf0 | (cp >> 18));
        buf[(*n)++] = (char)(0x80 | ((cp >> 12) & 0x3f));
        buf[(*n)++] = (char)(0x80 | ((cp >> 6) & 0x3f));
        buf[(*n)++] = (char)(0x80 | (cp & 0x3f));
    }
}

static bool json_hex4(json_parser *p, unsigned *out) {
    if (p->len - p->pos < 4)
        return json_fail(p, "short \\u escape");
    unsigned v = 0;
    for (int i = 0; i < 4; ++i) {
        const int d = hex_digit(p->s[p->pos++]);
        if (d < 0)
            return json_fail(p, "bad \\u escape");
        v = v * 16 + (unsigned)d;
    }
    *out = v;
    return true;
}

/* Parses a string starting at the opening quote into a new NUL-terminated buffer. */
static bool json_string(json_parser *p, char **out) {
    p->pos++; /* opening quote */
    /* The decoded string is never longer than the encoded one (a \u escape of 6 bytes decodes
     * to at most 3, a surrogate pair of 12 to 4). */
    size_t end = p->pos;
    while (end < p->len && p->s[end] != '"')
        end += (p->s[end] == '\\') ? 2 : 1;
    if (end >= p->len)
        return json_fail(p, "unterminated string");
    char *buf = malloc(end - p->pos + 1);
    if (!buf)
        return json_fail(p, "out of memory");
    size_t n = 0;
    while (p->s[p->pos] != '"') {
        const char c = p->s[p->pos++];
        if ((unsigned char)c < 0x20) {
            free(buf);
            return json_fail(p, "control character in string");
        }
        if (c != '\\') {
            buf[n++] = c;
            continue;
        }
        const char e = p->s[p->pos++];
        unsigned cp;
        switch (e) {
        case '"':
            buf[n++] = '"';
            break;
        case '\\':
            buf[n++] = '\\';
            break;
        case '/':
            buf[n++] = '/';
            break;
        case 'b':
            buf[n++] = '\b';
            break;
        case 'f':
            buf[n++] = '\f';
            break;
        case 'n':
            buf[n++] = '\n';
            break;
        case 'r':
            buf[n++] = '\r';
            break;
        case 't':
            buf[n++] = '\t';
            break;
        case 'u':
            if (!json_hex4(p, &cp)) {
                free(buf);
                return false;
            }
            if (cp >= 0xd800 && cp < 0xdc00 && p->len - p->pos >= 6 && p->s[p->pos] == '\\' &&
                p->s[p->pos + 1] == 'u') {
                unsigned lo;
                p->pos += 2;
                if (!json_hex4(p, &lo)) {
                    free(buf);
                    return false;
                }
                if (lo >= 0xdc00 && lo < 0xe000)
                    cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            }
            utf8_put(buf, &n, cp);
            break;
        default:
            free(buf);
            return json_fail(p, "bad escape");
        }
    }
    p->pos++; /* closing quote */
    buf[n] = '\0';
    *out = buf;
    return true;
}

static bool json_number(json_parser *p, double *out) {
    const size_t start = p->pos;
    const char *s = p->s;
    size_t i = p->pos;
    if (i < p->len && s[i] == '-')
        i++;
    if (i >= p->len || s[i] < '0' || s[i] > '9')
        return json_fail(p, "bad number");
    while (i < p->len && s[i] >= '0' && s[i] <= '9')
        i++;
    if (i < p->len && s[i] == '.') {
        i++;
        if (i >= p->len || s[i] < '0' || s[i] > '9')
            return json_fail(p, "bad number");
        while (i < p->len && s[i] >= '0' && s[i] <= '9')
            i++;
    }
    if (i < p->len && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < p->len && (s[i] == '+' || s[i] == '-'))
            i++;
        if (i >= p->len || s[i] < '0' || s[i] > '9')
            return json_fail(p, "bad number");
        while (i < p->len && s[i] >= '0' && s[i] <= '9')
            i++;
    }
    char tmp[64];
    if (i - start >= sizeof(tmp))
        return json_fail(p, "number too long");
    memcpy(tmp, s + start, i - start);
    tmp[i - start] = '\0';
    *out = strtod(tmp, NULL);
    p->pos = i;
    return true;
}

static bool json_value_parse(json_parser *p, json_value *v);

/* Parses an array or object body; the opening bracket is at p->pos. */
static bool json_container(json_parser *p, json_value *v, bool object) {
    const char close = object ? '}' : ']';
    v->type = object ? JSON_OBJECT : JSON_ARRAY;
    p->pos++;
    if (++p->depth > JSON_MAX_DEPTH)
        return json_fail(p, "nesting too deep");
    size_t cap = 0;
    json_skip_space(p);
    if (p->pos < p->len && p->s[p->pos] == close) {
        p->pos++;
        p->depth--;
        return true;
    }
    for (;;) {
        if (v->count == cap) {
            cap = cap ? cap * 2 : 8;
            json_value *items = realloc(v->items, cap * sizeof(*items));
            if (!items)
                return json_fail(p, "out of memory");
            v->items = items;
            if (object) {
                char **keys = realloc(v->keys, cap * sizeof(*keys));
                if (!keys)
                    return json_fail(p, "out of memory");
                v->keys = keys;
            }
        }
        json_value *item = &v->items[v->count];
        memset(item, 0, sizeof(*item));
        if (object) {
            v->keys[v->count] = NULL;
            json_skip_space(p);
            if (p->pos >= p->len || p->s[p->pos] != '"')
                return json_fail(p, "expected a key");
            v->count++; /* from here on json_free owns the slot */
            if (!json_string(p, &v->keys[v->count - 1]))
                return false;
            json_skip_space(p);
            if (p->pos >= p->len || p->s[p->pos] != ':')
                return json_fail(p, "expected ':'");
            p->pos++;
        } else {
            v->count++;
        }
        if (!json_value_parse(p, item))
            return false;
        json_skip_space(p);
        if (p->pos < p->len && p->s[p->pos] == ',') {
            p->pos++;
            continue;
        }
        if (p->pos < p->len && p->s[p->pos] == close) {
            p->pos++;
            p->depth--;
            return true;
        }
        return json_fail(p, object ? "expected ',' or '}'" : "expected ',' or ']'");
    }
}

static bool json_value_parse(json_parser *p, json_value *v) {
    json_skip_space(p);
    if (p->pos >= p->len)
        return json_fail(p, "unexpected end");
    switch (p->s[p->pos]) {
    case '{':
        return json_container(p, v, true);
    case '[':
        return json_container(p, v, false);
    case '"':
        v->type = JSON_STRING;
        return json_string(p, &v->string);
    case 't':
        v->type = JSON_BOOL;
        v->boolean = true;
        return json_literal(p, "true");
    case 'f':
        v->type = JSON_BOOL;
        return json_literal(p, "false");
    case 'n':
        v->type = JSON_NULL;
        return json_literal(p, "null");
    default:
        v->type = JSON_NUMBER;
        return json_number(p, &v->number);
    }
}

/* Parses a whole document; on failure *error says why (static string) and v is freed. */
static bool json_parse(const char *text, size_t len, json_value *v, const char **error,
                       size_t *error_pos) {
    json_parser p = {.s = text, .len = len};
    memset(v, 0, sizeof(*v));
    bool ok = json_value_parse(&p, v);
    if (ok) {
        json_skip_space(&p);
        if (p.pos != p.len)
            ok = json_fail(&p, "trailing characters");
    }
    if (!ok) {
        json_free(v);
        *error = p.error;
        *error_pos = p.pos;
    }
    return ok;
}

static const json_value *json_get(const json_value *obj, const char *key) {
    if (!obj || obj->type != JSON_OBJECT)
        return NULL;
    for (size_t i = 0; i < obj->count; ++i)
        if (strcmp(obj->keys[i], key) == 0)
            return &obj->items[i];
    return NULL;
}

/* ---- files --------------------------------------------------------------------------------- */

const char *golden_dir(void) {
    const char *env = getenv("FLP_GOLDEN_DIR");
    return (env && *env) ? env : FLP_GOLDEN_DIR;
}

static void report(const char *name, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void report(const char *name, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "golden %s: ", name);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* Reads a whole file; *size receives its length. NULL (and a message) on failure. */
static char *read_file(const char *path, size_t *size, const char *who) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        report(who, "cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    char *data = NULL;
    long len = -1;
    if (fseek(f, 0, SEEK_END) == 0)
        len = ftell(f);
    if (len < 0 || fseek(f, 0, SEEK_SET) != 0) {
        report(who, "cannot size %s", path);
        fclose(f);
        return NULL;
    }
    data = malloc((size_t)len + 1);
    if (!data || fread(data, 1, (size_t)len, f) != (size_t)len) {
        report(who, "cannot read %s", path);
        free(data);
        fclose(f);
        return NULL;
    }
    fclose(f);
    data[len] = '\0';
    *size = (size_t)len;
    return data;
}

static bool read_json(const char *path, json_value *v, const char *who) {
    size_t size = 0;
    char *text = read_file(path, &size, who);
    if (!text)
        return false;
    const char *error = NULL;
    size_t at = 0;
    const bool ok = json_parse(text, size, v, &error, &at);
    if (!ok)
        report(who, "%s: %s at byte %zu", path, error ? error : "parse error", at);
    free(text);
    return ok;
}

/* ---- index --------------------------------------------------------------------------------- */

#define GOLDEN_MAX_CASES 64

const char *const *golden_case_names(int *count) {
    static char names[GOLDEN_MAX_CASES][64];
    static const char *pointers[GOLDEN_MAX_CASES];
    static int loaded = -1; /* -1: not tried */
    if (loaded < 0) {
        loaded = 0;
        char path[4096];
        snprintf(path, sizeof(path), "%s/index.json", golden_dir());
        json_value index;
        if (read_json(path, &index, "index")) {
            const json_value *cases = json_get(&index, "cases");
            if (!cases || cases->type != JSON_ARRAY) {
                report("index", "%s has no \"cases\" array", path);
            } else {
                for (size_t i = 0; i < cases->count && loaded < GOLDEN_MAX_CASES; ++i) {
                    const json_value *n = &cases->items[i];
                    if (n->type != JSON_STRING || strlen(n->string) >= sizeof(names[0])) {
                        report("index", "case %zu of %s is not a short string", i, path);
                        continue;
                    }
                    snprintf(names[loaded], sizeof(names[0]), "%s", n->string);
                    pointers[loaded] = names[loaded];
                    loaded++;
                }
            }
            json_free(&index);
        }
    }
    if (count)
        *count = loaded;
    return pointers;
}

/* ---- one case ------------------------------------------------------------------------------ */

typedef struct loader {
    const char *name;
    const json_value *root;
    const json_value *arrays;
    char dir[4096];
} loader;

static bool get_number(const loader *l, const json_value *obj, const char *key, double *out) {
    const json_value *v = json_get(obj, key);
    if (!v || v->type != JSON_NUMBER) {
        report(l->name, "\"%s\" is missing or not a number", key);
        return false;
    }
    *out = v->number;
    return true;
}

static bool get_int(const loader *l, const json_value *obj, const char *key, int32_t *out) {
    double d;
    if (!get_number(l, obj, key, &d))
        return false;
    if (d != floor(d) || d < INT32_MIN || d > INT32_MAX) {
        report(l->name, "\"%s\" = %g is not a 32-bit integer", key, d);
        return false;
    }
    *out = (int32_t)d;
    return true;
}

static bool get_bool(const loader *l, const char *key, bool *out) {
    const json_value *v = json_get(l->root, key);
    if (!v || v->type != JSON_BOOL) {
        report(l->name, "\"%s\" is missing or not a boolean", key);
        return false;
    }
    *out = v->boolean;
    return true;
}

static const char *get_string(const loader *l, const char *key) {
    const json_value *v = json_get(l->root, key);
    if (!v || v->type != JSON_STRING) {
        report(l->name, "\"%s\" is missing or not a string", key);
        return NULL;
    }
    return v->string;
}

/* A JSON array of batch integers into a new int32 array. */
static bool get_int_list(const loader *l, const char *key, int32_t batch, int32_t **out) {
    const json_value *v = json_get(l->root, key);
    if (!v || v->type != JSON_ARRAY || v->count != (size_t)batch) {
        report(l->name, "\"%s\" is missing or not an array of %d numbers", key, batch);
        return false;
    }
    *out = calloc((size_t)batch + 1, sizeof(int32_t));
    if (!*out)
        return false;
    for (int32_t b = 0; b < batch; ++b) {
        const json_value *e = &v->items[b];
        if (e->type != JSON_NUMBER || e->number != floor(e->number) || e->number < 0 ||
            e->number > INT32_MAX) {
            report(l->name, "\"%s\"[%d] is not a non-negative integer", key, b);
            return false;
        }
        (*out)[b] = (int32_t)e->number;
    }
    return true;
}

/* Loads arrays.<key> into a new buffer of elem_size-byte elements; *count receives the element
 * count (the product of its shape), checked against the file size and against expected unless
 * expected is SIZE_MAX. */
static bool load_array(const loader *l, const char *key, size_t elem_size, size_t expected,
                       void **out, size_t *count) {
    const json_value *a = json_get(l->arrays, key);
    const json_value *file = json_get(a, "file");
    const json_value *shape = json_get(a, "shape");
    if (!file || file->type != JSON_STRING || !shape || shape->type != JSON_ARRAY) {
        report(l->name, "arrays.%s is missing or has no file/shape", key);
        return false;
    }
    if (strchr(file->string, '/')) {
        report(l->name, "arrays.%s.file must be a plain file name", key);
        return false;
    }
    size_t n = 1;
    for (size_t i = 0; i < shape->count; ++i) {
        const json_value *e = &shape->items[i];
        if (e->type != JSON_NUMBER || e->number < 0 || e->number != floor(e->number) ||
            e->number > 1e12) {
            report(l->name, "arrays.%s.shape[%zu] is not a size", key, i);
            return false;
        }
        n *= (size_t)e->number;
    }
    if (expected != SIZE_MAX && n != expected) {
        report(l->name, "arrays.%s has %zu elements, expected %zu", key, n, expected);
        return false;
    }
    char path[8192];
    snprintf(path, sizeof(path), "%s/%s", l->dir, file->string);
    size_t size = 0;
    char *data = read_file(path, &size, l->name);
    if (!data)
        return false;
    if (size != n * elem_size) {
        report(l->name, "%s has %zu bytes, its shape needs %zu", path, size, n * elem_size);
        free(data);
        return false;
    }
    *out = data;
    if (count)
        *count = n;
    return true;
}

static bool load_rope(const loader *l, golden_case *c) {
    const json_value *rope = json_get(l->root, "rope");
    if (!rope || rope->type == JSON_NULL)
        return true;
    if (rope->type != JSON_OBJECT) {
        report(l->name, "\"rope\" is neither null nor an object");
        return false;
    }
    double theta, scale;
    if (!get_number(l, rope, "theta", &theta) || !get_number(l, rope, "scale", &scale))
        return false;
    c->rope = true;
    c->rope_params.theta = (float)theta;
    c->rope_params.scale = (float)scale;
    const json_value *ll = json_get(rope, "llama31");
    if (ll && ll->type != JSON_NULL) {
        double factor, low, high;
        int32_t orig;
        if (!get_number(l, ll, "factor", &factor) || !get_number(l, ll, "low_freq_factor", &low) ||
            !get_number(l, ll, "high_freq_factor", &high) ||
            !get_int(l, ll, "original_max_position", &orig))
            return false;
        c->rope_params.llama31 = true;
        c->rope_params.llama31_factor = (float)factor;
        c->rope_params.llama31_low_freq_factor = (float)low;
        c->rope_params.llama31_high_freq_factor = (float)high;
        c->rope_params.llama31_original_max_position = orig;
    }
    return true;
}

static bool load_case(loader *l, golden_case *c) {
    const json_value *root = l->root;
    if (root->type != JSON_OBJECT) {
        report(l->name, "case.json is not an object");
        return false;
    }
    l->arrays = json_get(root, "arrays");
    if (!l->arrays || l->arrays->type != JSON_OBJECT) {
        report(l->name, "\"arrays\" is missing");
        return false;
    }
    int32_t window_left;
    if (!get_int(l, root, "batch", &c->batch) ||
        !get_int(l, root, "num_qo_heads", &c->num_qo_heads) ||
        !get_int(l, root, "num_kv_heads", &c->num_kv_heads) ||
        !get_int(l, root, "head_dim", &c->head_dim) ||
        !get_int(l, root, "window_left", &window_left) ||
        !get_number(l, root, "logits_soft_cap", &c->logits_soft_cap) ||
        !get_number(l, root, "sm_scale", &c->sm_scale) || !get_bool(l, "causal", &c->causal) ||
        !get_bool(l, "custom_mask", &c->custom_mask) || !get_bool(l, "alibi", &c->alibi) ||
        !load_rope(l, c))
        return false;
    if (c->batch < 0 || c->num_qo_heads <= 0 || c->num_kv_heads <= 0 || c->head_dim <= 0) {
        report(l->name, "bad sizes");
        return false;
    }
    c->use_window = window_left >= 0;
    c->window_left = window_left;

    const char *dtype = get_string(l, "dtype");
    const char *kv_kind = get_string(l, "kv_kind");
    if (!dtype || !kv_kind)
        return false;
    if (strcmp(dtype, "f16") == 0) {
        c->dtype = FLP_DTYPE_F16;
    } else if (strcmp(dtype, "bf16") == 0) {
        c->dtype = FLP_DTYPE_BF16;
    } else {
        report(l->name, "unknown dtype \"%s\"", dtype);
        return false;
    }
    if (strcmp(kv_kind, "paged") == 0) {
        c->paged = true;
    } else if (strcmp(kv_kind, "ragged") != 0) {
        report(l->name, "unknown kv_kind \"%s\"", kv_kind);
        return false;
    }

    const size_t B = (size_t)c->batch, Hq = (size_t)c->num_qo_heads, Hkv = (size_t)c->num_kv_heads,
                 D = (size_t)c->head_dim;
    void *p;
    if (!get_int_list(l, "qo_lens", c->batch, &c->qo_lens) ||
        !get_int_list(l, "kv_lens", c->batch, &c->kv_lens))
        return false;
    if (!load_array(l, "qo_indptr", 4, B + 1, &p, NULL))
        return false;
    c->qo_indptr = p;
    if (!load_array(l, "kv_indptr", 4, B + 1, &p, NULL))
        return false;
    c->kv_indptr = p;
    for (size_t b = 0; b < B; ++b) {
        if (c->qo_indptr[b + 1] - c->qo_indptr[b] != c->qo_lens[b] || c->qo_indptr[0] != 0) {
            report(l->name, "qo_indptr disagrees with qo_lens at request %zu", b);
            return false;
        }
    }
    c->nnz = c->qo_indptr[B];

    if (c->paged) {
        const char *layout = get_string(l, "kv_layout");
        if (!layout || !get_int(l, root, "page_size", &c->page_size) ||
            !get_int(l, root, "num_pages", &c->num_pages))
            return false;
        if (strcmp(layout, "NHD") == 0) {
            c->kv_layout = FLP_KV_LAYOUT_NHD;
        } else if (strcmp(layout, "HND") == 0) {
            c->kv_layout = FLP_KV_LAYOUT_HND;
        } else {
            report(l->name, "unknown kv_layout \"%s\"", layout);
            return false;
        }
        if (c->page_size <= 0 || c->num_pages < 0 || c->kv_indptr[0] != 0) {
            report(l->name, "bad page_size/num_pages/kv_indptr");
            return false;
        }
        size_t n;
        if (!load_array(l, "kv_indices", 4, (size_t)c->kv_indptr[B], &p, &n))
            return false;
        c->kv_indices = p;
        c->num_kv_indices = (int32_t)n;
        if (!load_array(l, "kv_last_page_len", 4, B, &p, NULL))
            return false;
        c->kv_last_page_len = p;
        for (size_t b = 0; b < B; ++b) {
            const int32_t pages = c->kv_indptr[b + 1] - c->kv_indptr[b];
            const int32_t kv_len =
                pages <= 0 ? 0 : (pages - 1) * c->page_size + c->kv_last_page_len[b];
            if (kv_len != c->kv_lens[b]) {
                report(l->name, "pages of request %zu hold %d tokens, kv_lens says %d", b, kv_len,
                       c->kv_lens[b]);
                return false;
            }
        }
        c->kv_elems = (size_t)c->num_pages * (size_t)c->page_size * Hkv * D;
        if (!load_array(l, "k_cache", 4, c->kv_elems, &p, NULL))
            return false;
        c->k = p;
        if (!load_array(l, "v_cache", 4, c->kv_elems, &p, NULL))
            return false;
        c->v = p;
    } else {
        for (size_t b = 0; b < B; ++b) {
            if (c->kv_indptr[b + 1] - c->kv_indptr[b] != c->kv_lens[b] || c->kv_indptr[0] != 0) {
                report(l->name, "kv_indptr disagrees with kv_lens at request %zu", b);
                return false;
            }
        }
        c->kv_elems = (size_t)c->kv_indptr[B] * Hkv * D;
        if (!load_array(l, "k", 4, c->kv_elems, &p, NULL))
            return false;
        c->k = p;
        if (!load_array(l, "v", 4, c->kv_elems, &p, NULL))
            return false;
        c->v = p;
    }

    const size_t nnz = (size_t)c->nnz;
    if (!load_array(l, "q", 4, nnz * Hq * D, &p, NULL))
        return false;
    c->q = p;
    if (!load_array(l, "out", 8, nnz * Hq * D, &p, NULL))
        return false;
    c->out = p;
    if (!load_array(l, "lse", 8, nnz * Hq, &p, NULL))
        return false;
    c->lse = p;
    if (json_get(l->arrays, "alibi_slopes")) {
        if (!load_array(l, "alibi_slopes", 4, Hq, &p, NULL))
            return false;
        c->alibi_slopes = p;
    }
    if (c->custom_mask) {
        size_t n;
        /* mask_indptr holds batch (or batch + 1) byte offsets. */
        if (!load_array(l, "mask_indptr", 4, SIZE_MAX, &p, &n))
            return false;
        c->mask_indptr = p;
        if (n < B) {
            report(l->name, "mask_indptr has %zu entries for %zu requests", n, B);
            return false;
        }
        if (!load_array(l, "custom_mask", 1, SIZE_MAX, &p, &c->mask_bytes))
            return false;
        c->mask = p;
        for (size_t b = 0; b < B; ++b) {
            const size_t bits = (size_t)c->qo_lens[b] * (size_t)c->kv_lens[b];
            if (c->mask_indptr[b] < 0 ||
                (size_t)c->mask_indptr[b] + (bits + 7) / 8 > c->mask_bytes) {
                report(l->name, "mask of request %zu runs past the %zu mask bytes", b,
                       c->mask_bytes);
                return false;
            }
        }
    }
    return true;
}

bool golden_load(const char *name, golden_case *c) {
    memset(c, 0, sizeof(*c));
    if (!name || strlen(name) >= sizeof(c->name) || strchr(name, '/')) {
        report(name ? name : "(null)", "bad case name");
        return false;
    }
    snprintf(c->name, sizeof(c->name), "%s", name);
    loader l = {.name = name};
    snprintf(l.dir, sizeof(l.dir), "%s/%s", golden_dir(), name);
    char path[8192];
    snprintf(path, sizeof(path), "%s/case.json", l.dir);
    json_value root;
    if (!read_json(path, &root, name))
        return false;
    l.root = &root;
    const bool ok = load_case(&l, c);
    json_free(&root);
    if (!ok)
        golden_free(c);
    return ok;
}

void golden_free(golden_case *c) {
    if (!c)
        return;
    free(c->qo_lens);
    free(c->kv_lens);
    free(c->qo_indptr);
    free(c->kv_indptr);
    free(c->kv_indices);
    free(c->kv_last_page_len);
    free(c->mask_indptr);
    free(c->mask);
    free(c->q);
    free(c->k);
    free(c->v);
    free(c->alibi_slopes);
    free(c->out);
    free(c->lse);
    memset(c, 0, sizeof(*c));
}
