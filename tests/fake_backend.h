/* A host-memory backend for the core tests: buffers are malloc'ed (device address = host
 * pointer), copies are memcpy, runs record their launch instead of computing. Lets the core
 * suite check what the front end validates, uploads and hands a backend, under ASan/UBSan and
 * without a device. buffer_create is a device allocation site of the fault-injection seam
 * (core/alloc.h): failed there, it returns FLP_ERROR_OUT_OF_MEMORY like a real shortage. Not
 * thread-safe. */
#ifndef FLP_TESTS_FAKE_BACKEND_H
#define FLP_TESTS_FAKE_BACKEND_H

#include "core/backend.h"

#define FAKE_DECODE_GRID 6
#define FAKE_PREFILL_GRID 48

/* Launches queued so far (decode, prefill and append together) and the last of each kind. */
extern int fake_runs_queued;
extern flp_decode_launch fake_last_decode;
extern flp_prefill_launch fake_last_prefill;
extern flp_kv_append_params fake_last_append;

/* A context on the fake backend; free with flp_context_destroy. */
flp_context *fake_context(void);

#endif /* FLP_TESTS_FAKE_BACKEND_H */
