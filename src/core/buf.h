/*
 * src/core/buf.h: a growable byte buffer with a read cursor.
 *
 * Bytes are appended at the end and consumed from the front; consumed space is
 * reclaimed lazily (compacted when the buffer would otherwise grow). A buffer
 * owns its storage and frees it with the seams it was initialised with. A
 * zeroed dx_buf with `seams` NULL is a valid empty buffer using the default
 * seams. Capacity is bounded by the caller (`max`), never by a guess.
 */
#ifndef DX_CORE_BUF_H
#define DX_CORE_BUF_H

#include "duplex/duplex.h"

#include <stddef.h>
#include <stdint.h>

typedef struct dx_buf {
    uint8_t *data;           /* storage, or NULL when nothing was ever reserved */
    size_t off;              /* bytes already consumed at the front */
    size_t len;              /* readable bytes from data + off */
    size_t cap;              /* storage size */
    const dx_seams *seams;   /* allocator (NULL: default) */
} dx_buf;

/* An empty buffer that allocates through `seams` (NULL: default). */
void dx_buf_init(dx_buf *b, const dx_seams *seams);

/* Frees the storage; the buffer is empty and reusable afterwards. */
void dx_buf_deinit(dx_buf *b);

/* Readable bytes start here (valid until the next call that may grow); NULL
 * while nothing was ever reserved (len is 0 then). NULL + 0 is undefined. */
static inline uint8_t *dx_buf_head(const dx_buf *b) { return b->data ? b->data + b->off : NULL; }

/*
 * Makes room for `extra` more bytes at the tail without moving readable data
 * out of order. Returns 0, DX_ENOMEM, or DX_ELIMIT when len + extra > max
 * (max 0 means SIZE_MAX).
 */
int dx_buf_reserve(dx_buf *b, size_t extra, size_t max);

/* The writable tail after a successful dx_buf_reserve; commit with dx_buf_commit.
 * NULL while nothing was ever reserved (a reserve of 0 on an empty buffer). */
static inline uint8_t *dx_buf_tail(const dx_buf *b) { return b->data ? b->data + b->off + b->len : NULL; }
static inline void dx_buf_commit(dx_buf *b, size_t n) { b->len += n; }

/* Copies `len` bytes to the tail. Returns 0, DX_ENOMEM or DX_ELIMIT (see reserve). */
int dx_buf_append(dx_buf *b, const void *src, size_t len, size_t max);

/* Drops `n` bytes (n <= len) from the front. Emptying resets the cursor. */
void dx_buf_consume(dx_buf *b, size_t n);

/* Forgets all readable bytes but keeps the storage. */
static inline void dx_buf_clear(dx_buf *b) { b->off = b->len = 0; }

#endif
