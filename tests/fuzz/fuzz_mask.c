/*
 * tests/fuzz/fuzz_mask.c: differential fuzzing of src/proto/mask.c.
 *
 * Input: 4 key bytes, a phase byte, a split byte, an alignment byte, then the
 * payload. Invariants (abort() when broken): dx__mask_copy and dx__mask, whole
 * and in two pieces chained by the returned phase, at the chosen alignment,
 * equal RFC 6455 §5.3 applied byte by byte; masking twice is the identity;
 * dx__mask0 (whole small frames, phase 0) equals dx__mask from phase 0.
 */
#include "proto/mask.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 7)
        return 0;
    const uint8_t *key = data;
    size_t off = data[4] & 3, align = data[6] & 31;
    const uint8_t *src = data + 7;
    size_t len = size - 7;
    size_t cut = len ? ((size_t)data[5] * 7) % (len + 1) : 0;

    uint8_t *want = malloc(len + 1), *buf = malloc(len + 32);
    if (!want || !buf)
        abort();
    for (size_t i = 0; i < len; i++)
        want[i] = src[i] ^ key[(off + i) & 3];
    size_t next = (off + len) & 3;

    uint8_t *d = buf + align;
    if (dx__mask_copy(d, src, len, key, off) != next || memcmp(d, want, len) != 0)
        abort();
    if (dx__mask(d, len, key, off) != next || memcmp(d, src, len) != 0)
        abort(); /* twice is the identity */
    size_t ph = dx__mask(d, cut, key, off);
    if (ph != ((off + cut) & 3))
        abort();
    if (dx__mask(d + cut, len - cut, key, ph) != next || memcmp(d, want, len) != 0)
        abort();
    /* dx__mask0 against dx__mask, phase 0, in place at the same alignment. */
    memcpy(d, src, len);
    dx__mask0(d, len, key);
    for (size_t i = 0; i < len; i++)
        if (d[i] != (src[i] ^ key[i & 3]))
            abort();
    free(want);
    free(buf);
    return 0;
}
