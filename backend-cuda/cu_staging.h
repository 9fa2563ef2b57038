/* The plan uploads' pinned staging (cu_staging.c), its sizes alone: the tests include this. */
#ifndef FLP_CUDA_CU_STAGING_H
#define FLP_CUDA_CU_STAGING_H

/* Pinned host memory that plan uploads copy from (cu_staging.c): from pageable memory the driver
 * stages every copy itself before cuMemcpyHtoDAsync returns (5.6 us for a 33 KB decode plan on
 * an H100 host against about 2.4 us from pinned memory). A slot is reused round-robin once the
 * copy recorded on its event has run; a slot still in use, or an upload above the largest slot,
 * takes the pageable path: an upload never waits for the GPU. */
#define FLP_CU_STAGING_SLOTS 8
#define FLP_CU_STAGING_MIN_BYTES ((size_t)64 << 10)
#define FLP_CU_STAGING_MAX_BYTES ((size_t)1 << 20)

#endif /* FLP_CUDA_CU_STAGING_H */
