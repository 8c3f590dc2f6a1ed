/*
 * src/proto/close.c: close frame payloads (see close.h).
 *
 * Layer: proto. Pure. The status code rules live in core (dx_close_code_valid)
 * so the sending side and the receiving side apply the same table.
 */
#include "proto/close.h"

#include "duplex/duplex.h"
#include "proto/utf8.h"

#include <string.h>

int dx__close_parse(const uint8_t *p, size_t len, uint16_t *code, const uint8_t **reason, size_t *reason_len)
{
    *code = DX_CLOSE_NO_STATUS;
    *reason = p;
    *reason_len = 0;
    if (len == 0)
        return 0; /* §5.5.1: the body is optional */
    if (len == 1 || len > 125)
        return DX_EPROTO; /* a code is two bytes; control payloads are <= 125 */
    unsigned c = ((unsigned)p[0] << 8) | p[1];
    if (!dx_close_code_valid(c))
        return DX_EPROTO; /* §7.4: 1004-1006, 1015, unassigned ranges */
    if (!dx__utf8_valid(p + 2, len - 2))
        return DX_EUTF8; /* §5.5.1: the reason is UTF-8; §8.1: fail with 1007 */
    *code = (uint16_t)c;
    *reason = p + 2;
    *reason_len = len - 2;
    return 0;
}

/* The longest prefix of s[0..len) that does not end inside a UTF-8 sequence. */
static size_t utf8_cut(const char *s, size_t len)
{
    if (len == 0)
        return 0;
    size_t i = len;
    /* Walk back over at most 3 continuation bytes to the sequence's lead. */
    while (i > 0 && len - i < 4 && ((unsigned char)s[i - 1] & 0xC0u) == 0x80u)
        i--;
    if (i == 0)
        return len;
    unsigned char lead = (unsigned char)s[i - 1];
    size_t want = lead < 0x80 ? 1 : lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
    return (len - (i - 1) >= want) ? len : i - 1;
}

size_t dx__close_write(uint8_t *out, unsigned code, const char *reason, size_t reason_len)
{
    if (code == 0)
        return 0;
    out[0] = (uint8_t)(code >> 8);
    out[1] = (uint8_t)code;
    if (!reason)
        return 2;
    if (reason_len > DX_CLOSE_REASON_MAX)
        reason_len = utf8_cut(reason, DX_CLOSE_REASON_MAX);
    memcpy(out + 2, reason, reason_len);
    return 2 + reason_len;
}
