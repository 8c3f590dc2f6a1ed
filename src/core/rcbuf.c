/*
 * src/core/rcbuf.c: reference-counted immutable buffer (see rcbuf.h).
 *
 * Layer: core. One allocation per buffer: header and bytes together.
 */
#include "core/rcbuf.h"

#include "core/seams.h"

#include <stdatomic.h>
#include <string.h>

struct dx_rcbuf {
    atomic_size_t refs;
    const dx_seams *seams;
    size_t len;
    uint8_t data[];
};

dx_rcbuf *dx_rcbuf_alloc(const dx_seams *seams, size_t len)
{
    if (len > SIZE_MAX - sizeof(dx_rcbuf))
        return NULL;
    dx_rcbuf *rb = dx__alloc(seams, sizeof *rb + len);
    if (!rb)
        return NULL;
    atomic_init(&rb->refs, 1);
    rb->seams = seams;
    rb->len = len;
    return rb;
}

dx_rcbuf *dx_rcbuf_new(const dx_seams *seams, const void *src, size_t len)
{
    dx_rcbuf *rb = dx_rcbuf_alloc(seams, len);
    if (!rb)
        return NULL;
    if (src && len)
        memcpy(rb->data, src, len);
    else if (len)
        memset(rb->data, 0, len);
    return rb;
}

dx_rcbuf *dx_rcbuf_ref(dx_rcbuf *rb)
{
    atomic_fetch_add_explicit(&rb->refs, 1, memory_order_relaxed);
    return rb;
}

void dx_rcbuf_unref(dx_rcbuf *rb)
{
    if (!rb)
        return;
    if (atomic_fetch_sub_explicit(&rb->refs, 1, memory_order_acq_rel) == 1)
        dx__free(rb->seams, rb);
}

const uint8_t *dx_rcbuf_data(const dx_rcbuf *rb) { return rb->data; }
size_t dx_rcbuf_len(const dx_rcbuf *rb) { return rb->len; }
size_t dx_rcbuf_refs(const dx_rcbuf *rb) { return atomic_load_explicit(&rb->refs, memory_order_relaxed); }
uint8_t *dx_rcbuf_mut(dx_rcbuf *rb) { return rb->data; }
