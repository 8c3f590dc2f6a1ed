/*
 * src/core/rcbuf.h: a reference-counted, immutable byte buffer.
 *
 * Used for broadcast: a frame is encoded once and every subscriber holds a
 * reference. The count is atomic, so references may be taken and dropped on
 * any thread; the bytes must not change once a second reference exists.
 * The last dx_rcbuf_unref frees it with the seams it was created with.
 */
#ifndef DX_CORE_RCBUF_H
#define DX_CORE_RCBUF_H

#include "duplex/duplex.h"

#include <stddef.h>
#include <stdint.h>

typedef struct dx_rcbuf dx_rcbuf;

/* A buffer holding a copy of `len` bytes at `src` (src may be NULL: zeroed
 * contents, to be filled through dx_rcbuf_mut before sharing). Reference count
 * 1. NULL when out of memory. */
dx_rcbuf *dx_rcbuf_new(const dx_seams *seams, const void *src, size_t len);

/* A buffer of `len` bytes left uninitialised, to be filled through
 * dx_rcbuf_mut before sharing (no zeroing pass over a large payload).
 * Reference count 1. NULL when out of memory. */
dx_rcbuf *dx_rcbuf_alloc(const dx_seams *seams, size_t len);

/* Takes one more reference; returns `rb`. */
dx_rcbuf *dx_rcbuf_ref(dx_rcbuf *rb);

/* Drops one reference; the last one frees. NULL is ignored. */
void dx_rcbuf_unref(dx_rcbuf *rb);

const uint8_t *dx_rcbuf_data(const dx_rcbuf *rb);
size_t dx_rcbuf_len(const dx_rcbuf *rb);
size_t dx_rcbuf_refs(const dx_rcbuf *rb);

/* Writable bytes: only while the caller holds the sole reference. */
uint8_t *dx_rcbuf_mut(dx_rcbuf *rb);

#endif
