/*
 * src/core/opts.h: copying an application's option struct whose size it
 * passes (the dx_*_new macros pass sizeof the struct they were compiled
 * against), so option structs can grow without breaking binaries.
 *
 * Layer: core. No I/O. Rule (Linux's copy_struct_from_user): an older
 * caller's smaller struct is copied and the rest zeroed (zero means the
 * default); a newer caller's larger struct is accepted only when every byte
 * this library does not know is zero (it asks for nothing we would ignore).
 */
#ifndef DX_CORE_OPTS_H
#define DX_CORE_OPTS_H

#include "duplex/duplex.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Copies src (src_size bytes; NULL: all zero) into dst (dst_size bytes).
 * Returns 0, or DX_EINVAL when src has non-zero bytes past dst_size. */
static inline int dx__opts_copy(void *dst, size_t dst_size, const void *src, size_t src_size)
{
    memset(dst, 0, dst_size);
    if (!src)
        return 0;
    const uint8_t *s = src;
    for (size_t i = dst_size; i < src_size; i++)
        if (s[i])
            return DX_EINVAL;
    memcpy(dst, src, src_size < dst_size ? src_size : dst_size);
    return 0;
}

#endif
