/* Plan uploads through pinned host memory (cu_staging.h says why and from what size). */
#include "backend-cuda/cu_backend.h"

#include <string.h>

/* The slot size for an upload of size bytes: a power of two, so that a few growths cover the
 * plans of a serving loop. */
static size_t slot_size_for(size_t size) {
    size_t n = FLP_CU_STAGING_MIN_BYTES;
    while (n < size)
        n *= 2;
    return n;
}

/* Makes slot hold at least size bytes and own an event; false when the driver gives neither
 * (the caller then copies from pageable memory: running short of pinned memory must not fail a
 * plan). The slot's previous copy has run. */
static bool slot_ready(const flp_cu_driver *cu, flp_cu_staging_slot *slot, size_t size) {
    if (!slot->copied &&
        cu->cuEventCreate(&slot->copied, CU_EVENT_DISABLE_TIMING) != CUDA_SUCCESS) {
        slot->copied = NULL;
        return false;
    }
    if (slot->size >= size)
        return true;
    if (slot->host)
        cu->cuMemFreeHost(slot->host);
    slot->host = NULL;
    slot->size = 0;
    const size_t want = slot_size_for(size);
    void *host = NULL;
    if (FLP_CU_ALLOC(cu->cuMemHostAlloc(&host, want, 0)) != CUDA_SUCCESS)
        return false;
    slot->host = host;
    slot->size = want;
    return true;
}

CUresult flp_cu_staged_upload(flp_cu_state *st, CUdeviceptr dst, const void *src, size_t size,
                              bool *staged) {
    const flp_cu_driver *cu = st->cu;
    *staged = false;
    if (size < FLP_CU_STAGING_MIN_UPLOAD || size > FLP_CU_STAGING_MAX_BYTES)
        return CUDA_SUCCESS;
    flp_cu_staging_slot *slot = &st->staging[st->next_staging];
    if (slot->copied) {
        /* A copy still queued behind the GPU's work: the pageable path, not a wait. */
        const CUresult r = cu->cuEventQuery(slot->copied);
        if (r == CUDA_ERROR_NOT_READY)
            return CUDA_SUCCESS;
        if (r != CUDA_SUCCESS)
            return r;
    }
    if (!slot_ready(cu, slot, size))
        return CUDA_SUCCESS;
    memcpy(slot->host, src, size);
    CUresult r = cu->cuMemcpyHtoDAsync(dst, slot->host, size, st->stream);
    if (r != CUDA_SUCCESS)
        return r;
    r = cu->cuEventRecord(slot->copied, st->stream);
    if (r != CUDA_SUCCESS) {
        /* The copy is queued but untracked: it must have run before the slot is written
         * again. */
        cu->cuStreamSynchronize(st->stream);
        return r;
    }
    st->next_staging = (st->next_staging + 1) % FLP_CU_STAGING_SLOTS;
    *staged = true;
    return CUDA_SUCCESS;
}

void flp_cu_staging_release(flp_cu_state *st) {
    const flp_cu_driver *cu = st->cu;
    for (int i = 0; i < FLP_CU_STAGING_SLOTS; i++) {
        flp_cu_staging_slot *slot = &st->staging[i];
        if (slot->copied) {
            cu->cuEventSynchronize(slot->copied);
            cu->cuEventDestroy(slot->copied);
        }
        if (slot->host)
            cu->cuMemFreeHost(slot->host);
        memset(slot, 0, sizeof *slot);
    }
}
