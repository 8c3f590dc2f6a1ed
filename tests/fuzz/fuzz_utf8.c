/*
 * tests/fuzz/fuzz_utf8.c: differential fuzzing of src/proto/utf8.c.
 *
 * Input: byte 0 and 1 choose a two-way split point and a piece size; the
 * rest is the message. Invariants (abort() when broken):
 *  - the validator fed whole agrees with a reference decoder written here on
 *    the verdict, the exact index of the first bad byte, and finish();
 *  - fed in two pieces at the chosen split, and in pieces of the chosen
 *    size, it reports the same absolute index and the same finish();
 *  - dx__utf8_valid agrees; a failed validator stays failed.
 */
#include "proto/utf8.h"
#include "utf8_ref.h"

#include "duplex/duplex.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


/* Feeds p[0..len) in pieces of `step` bytes, except that the first piece
 * ends at `first` (when first <= len). Returns the absolute first-bad index
 * or len; *fin is finish()'s result when all was accepted. step >= 1. */
static size_t feed(const uint8_t *p, size_t len, size_t first, size_t step, int *fin)
{
    dx_utf8 v;
    dx__utf8_init(&v);
    size_t at = 0;
    bool first_piece = true;
    while (at < len || first_piece) {
        /* The first piece may be empty: feeding 0 bytes must be harmless. */
        size_t end = first_piece ? first : at + step;
        first_piece = false;
        if (end > len)
            end = len;
        size_t bad = (size_t)-1;
        int rc = dx__utf8_feed(&v, p + at, end - at, &bad);
        if (rc != 0) {
            if (rc != DX_EUTF8 || bad >= end - at)
                abort();
            size_t again = 7;
            if (dx__utf8_feed(&v, p, len, &again) != DX_EUTF8 || again != 0 || dx__utf8_finish(&v) == 0)
                abort(); /* must stay failed */
            return at + bad;
        }
        at = end;
    }
    *fin = dx__utf8_finish(&v);
    return len;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    size_t split = data[0], step = (size_t)(data[1] % 64) + 1;
    const uint8_t *p = data + 2;
    size_t len = size - 2;
    if (split > len)
        split = len;

    int open = 0;
    size_t want = ref_check(p, len, &open);
    int want_fin = open ? DX_EUTF8 : 0;

    int fin = 0;
    size_t got = feed(p, len, len, len ? len : 1, &fin); /* whole */
    if (got != want || (want == len && fin != want_fin))
        abort();
    got = feed(p, len, split, len ? len : 1, &fin); /* two pieces */
    if (got != want || (want == len && fin != want_fin))
        abort();
    got = feed(p, len, step, step, &fin); /* many pieces */
    if (got != want || (want == len && fin != want_fin))
        abort();
    if (dx__utf8_valid(p, len) != (want == len && !open))
        abort();
    return 0;
}
