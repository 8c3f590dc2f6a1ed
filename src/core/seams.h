/*
 * src/core/seams.h: internal helpers over the public dx_seams.
 *
 * Every allocation in the library goes through dx__alloc/dx__realloc/dx__free
 * with the seams of the object that owns the memory, so a test allocator can
 * fail any single call (STYLE.md habit 4).
 */
#ifndef DX_CORE_SEAMS_H
#define DX_CORE_SEAMS_H

#include "duplex/duplex.h"

static inline const dx_seams *dx__seams(const dx_seams *s)
{
    return s ? s : dx_seams_default();
}

static inline void *dx__realloc(const dx_seams *s, void *ptr, size_t size)
{
    s = dx__seams(s);
    return s->realloc(s->ud, ptr, size);
}

static inline void *dx__alloc(const dx_seams *s, size_t size)
{
    return dx__realloc(s, NULL, size ? size : 1);
}

static inline void dx__free(const dx_seams *s, void *ptr)
{
    if (ptr)
        (void)dx__realloc(s, ptr, 0);
}

static inline int dx__random(const dx_seams *s, void *buf, size_t len)
{
    s = dx__seams(s);
    return s->random(s->ud, buf, len);
}

static inline uint64_t dx__now_ns(const dx_seams *s)
{
    s = dx__seams(s);
    return s->now_ns(s->ud);
}

#endif
