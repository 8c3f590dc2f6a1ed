/*
 * src/proto/utf8.c: streaming UTF-8 validator (see utf8.h). Pure.
 *
 * State encodes what the next continuation byte must look like:
 * bits 0-7 low bound, 8-15 high bound, 16-17 continuation bytes still needed;
 * 0xFFFFFFFF is the failed state.
 */
#include "proto/utf8.h"

#include "duplex/duplex.h"

#define UTF8_FAILED 0xFFFFFFFFu

static uint32_t utf8_mk(unsigned need, unsigned lo, unsigned hi) { return (need << 16) | (hi << 8) | lo; }

int dx__utf8_feed(dx_utf8 *v, const uint8_t *p, size_t len, size_t *bad_at)
{
    uint32_t st = v->state;
    if (st == UTF8_FAILED) {
        if (bad_at)
            *bad_at = 0;
        return DX_EUTF8;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned c = p[i];
        if (st) {
            unsigned lo = st & 0xFF, hi = (st >> 8) & 0xFF, need = st >> 16;
            if (c < lo || c > hi)
                goto fail_at;
            need--;
            st = need ? utf8_mk(need, 0x80, 0xBF) : 0;
            continue;
        }
        if (c < 0x80)
            continue;
        if (c >= 0xC2 && c <= 0xDF)
            st = utf8_mk(1, 0x80, 0xBF);
        else if (c == 0xE0)
            st = utf8_mk(2, 0xA0, 0xBF);
        else if (c == 0xED)
            st = utf8_mk(2, 0x80, 0x9F);
        else if (c >= 0xE1 && c <= 0xEF)
            st = utf8_mk(2, 0x80, 0xBF);
        else if (c == 0xF0)
            st = utf8_mk(3, 0x90, 0xBF);
        else if (c >= 0xF1 && c <= 0xF3)
            st = utf8_mk(3, 0x80, 0xBF);
        else if (c == 0xF4)
            st = utf8_mk(3, 0x80, 0x8F);
        else
            goto fail_at;
        continue;
    fail_at:
        v->state = UTF8_FAILED;
        if (bad_at)
            *bad_at = i;
        return DX_EUTF8;
    }
    v->state = st;
    return 0;
}

int dx__utf8_finish(const dx_utf8 *v) { return v->state == 0 ? 0 : DX_EUTF8; }

bool dx__utf8_valid(const uint8_t *p, size_t len)
{
    dx_utf8 v;
    dx__utf8_init(&v);
    return dx__utf8_feed(&v, p, len, NULL) == 0 && dx__utf8_finish(&v) == 0;
}
