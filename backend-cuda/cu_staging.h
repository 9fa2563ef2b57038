/* The plan uploads' pinned staging (cu_staging.c), its sizes alone: the tests include this. */
#ifndef FLP_CUDA_CU_STAGING_H
#define FLP_CUDA_CU_STAGING_H

/* Pinned host memory that plan uploads copy from (cu_staging.c): from pageable memory the driver
 * stages every copy itself before cuMemcpyHtoDAsync returns. On an H100 host (2026-12-07, median
 * of 201 calls) that cost 4.9 us for 33 KB and 11.0 us for 128 KB, against 4.3 and 7.8 us
 * through a pinned slot (event query, memcpy into the slot, copy, event record); below about
 * 24 KB the call itself (2-3 us) dominates and the slot's extra steps cost 0.5 us more than the
 * pageable copy (3.2 against 3.7 us at 13.5 KB). So uploads of FLP_CU_STAGING_MIN_UPLOAD bytes
 * up to FLP_CU_STAGING_MAX_BYTES go through a slot, reused round-robin once the copy recorded
 * on its event has run; a slot still in use, or an upload of another size, takes the pageable
 * path: an upload never waits for the GPU. */
#define FLP_CU_STAGING_SLOTS 8
#define FLP_CU_STAGING_MIN_UPLOAD ((size_t)24 << 10)
#define FLP_CU_STAGING_MIN_BYTES ((size_t)64 << 10) /* the smallest slot */
#define FLP_CU_STAGING_MAX_BYTES ((size_t)1 << 20)

#endif /* FLP_CUDA_CU_STAGING_H */
