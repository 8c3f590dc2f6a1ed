/*
 * tests/common/utf8_ref.h: a slow, obviously correct UTF-8 reference for the
 * unit test and the fuzz target of src/proto/utf8.c (shared so both check the
 * validator against the same definition).
 */
#ifndef DX_TESTS_UTF8_REF_H
#define DX_TESTS_UTF8_REF_H

#include <stddef.h>
#include <stdint.h>

/*
 * Reference: decodes sequence by sequence from the definition (RFC 3629 §3:
 * lead byte gives the length, continuation bytes 10xxxxxx, then §3/§10: no
 * overlong form, no surrogate, nothing above U+10FFFF). A byte is "bad" as
 * soon as no completion of the sequence so far can be valid, which is where
 * a streaming validator must stop. It computes the range of code points the
 * prefix can still reach, independently of the validator's table.
 * Returns the index of the first bad byte, or len; *open is set when the
 * input ends inside a sequence (valid so far, but not a complete message).
 */
static inline size_t ref_check(const uint8_t *p, size_t len, int *open)
{
    *open = 0;
    size_t i = 0;
    while (i < len) {
        uint8_t b = p[i];
        int n;
        uint32_t v, min;
        if (b < 0x80) {
            i++;
            continue;
        } else if (b >= 0xC0 && b < 0xE0) {
            n = 2, v = b & 0x1F, min = 0x80;
        } else if (b >= 0xE0 && b < 0xF0) {
            n = 3, v = b & 0x0F, min = 0x800;
        } else if (b >= 0xF0 && b < 0xF8) {
            n = 4, v = b & 0x07, min = 0x10000;
        } else {
            return i; /* a continuation byte, or F8..FF (5- and 6-byte forms) */
        }
        for (int k = 0; k < n; k++) {
            if (k > 0) {
                if (i + (size_t)k >= len) {
                    *open = 1;
                    return len;
                }
                if ((p[i + k] & 0xC0) != 0x80)
                    return i + (size_t)k;
                v = v << 6 | (p[i + k] & 0x3Fu);
            }
            int rest = 6 * (n - 1 - k);
            uint32_t lo = v << rest, hi = lo | ((UINT32_C(1) << rest) - 1);
            if (hi < min || lo > 0x10FFFF || (lo >= 0xD800 && hi <= 0xDFFF))
                return i + (size_t)k;
        }
        i += (size_t)n;
    }
    return len;
}

#endif
