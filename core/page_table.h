/* What other core files may see of the host page table (core/page_table.c). */
#ifndef FLP_CORE_PAGE_TABLE_H
#define FLP_CORE_PAGE_TABLE_H

#include "flashport/flashport.h"

/* One live sequence, read-only; valid until the table next changes. */
typedef struct flp_sequence_view {
    const int32_t *pages; /* [num_pages] page ids, in token order */
    int32_t num_pages;    /* ceil(num_tokens / page_size) */
    int32_t num_tokens;
    int32_t page_size;
} flp_sequence_view;

/* The sequence seq_id, or FLP_ERROR_INVALID_ARGUMENT (message "what: ...") when it is not
 * live. */
flp_status flp_page_table_view(const flp_page_table *table, const char *what, int32_t seq_id,
                               flp_sequence_view *out);

/* Writes the table's last_error message and returns status. */
flp_status flp_page_table_fail(const flp_page_table *table, flp_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void flp_page_table_clear_error(const flp_page_table *table);

#endif /* FLP_CORE_PAGE_TABLE_H */
