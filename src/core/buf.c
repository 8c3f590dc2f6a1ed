/*
 * src/core/buf.c: growable byte buffer (see buf.h).
 *
 * Layer: core. Invariant: off + len <= cap; data == NULL iff cap == 0.
 * Growth doubles (from 256 bytes) and clamps to the caller's max so that a
 * bounded buffer never holds more than its bound plus nothing.
 */
#include "core/buf.h"

#include "core/seams.h"

#include <string.h>

void dx_buf_init(dx_buf *b, const dx_seams *seams)
{
    memset(b, 0, sizeof *b);
    b->seams = seams;
}

void dx_buf_deinit(dx_buf *b)
{
    const dx_seams *s = b->seams;
    dx__free(s, b->data);
    dx_buf_init(b, s);
}

int dx_buf_reserve(dx_buf *b, size_t extra, size_t max)
{
    if (max == 0)
        max = SIZE_MAX;
    if (extra > max || b->len > max - extra)
        return DX_ELIMIT;
    size_t need = b->len + extra;
    /* Not b->off + need <= b->cap: with a huge extra that sum can wrap and
     * claim room that is not there. off <= cap always holds. */
    if (need <= b->cap - b->off)
        return 0;
    if (need <= b->cap) {
        /* Enough room once the consumed front is reclaimed. */
        memmove(b->data, b->data + b->off, b->len);
        b->off = 0;
        return 0;
    }
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? SIZE_MAX : cap * 2;
    if (cap > max)
        cap = max;
    uint8_t *p;
    if (b->off == 0) {
        p = dx__realloc(b->seams, b->data, cap);
        if (!p)
            return DX_ENOMEM;
    } else {
        p = dx__alloc(b->seams, cap);
        if (!p)
            return DX_ENOMEM;
        if (b->len)
            memcpy(p, b->data + b->off, b->len);
        dx__free(b->seams, b->data);
        b->off = 0;
    }
    b->data = p;
    b->cap = cap;
    return 0;
}

int dx_buf_append(dx_buf *b, const void *src, size_t len, size_t max)
{
    if (len == 0)
        return 0;
    int rc = dx_buf_reserve(b, len, max);
    if (rc)
        return rc;
    memcpy(dx_buf_tail(b), src, len);
    b->len += len;
    return 0;
}

void dx_buf_consume(dx_buf *b, size_t n)
{
    if (n >= b->len) {
        b->off = b->len = 0;
        return;
    }
    b->off += n;
    b->len -= n;
}
