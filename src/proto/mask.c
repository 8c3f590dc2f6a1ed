/*
 * src/proto/mask.c: masking (see mask.h). Pure: no I/O, no allocation.
 */
#include "proto/mask.h"

size_t dx__mask_copy(uint8_t *dst, const uint8_t *src, size_t len, const uint8_t key[4], size_t off)
{
    for (size_t i = 0; i < len; i++)
        dst[i] = src[i] ^ key[(off + i) & 3];
    return (off + len) & 3;
}

size_t dx__mask(uint8_t *p, size_t len, const uint8_t key[4], size_t off)
{
    return dx__mask_copy(p, p, len, key, off);
}
