/*
 * src/ws/msg.c: prepared messages (see duplex/msg.h).
 *
 * Layer: ws. A dx_msg is a dx_rcbuf (src/core) holding one complete,
 * unmasked frame: the header encoded once, then the payload. Nothing else is
 * stored: the header's length and the opcode are read back from its first
 * two bytes (RFC 6455 §5.2). Send queues reference the rcbuf itself, so
 * dx_conn_send_msg costs one atomic increment, and the bytes written are
 * the ones encoded here.
 *
 * Invariants: the bytes never change after dx_msg_new returns; the payload
 * of a text message is valid UTF-8; every header has FIN set, no RSV bits,
 * no mask, and the minimal length encoding.
 */
#include "ws/ws.h"

#include "proto/frame.h"
#include "proto/utf8.h"

#include <string.h>

static dx_rcbuf *rb_of(const dx_msg *m) { return (dx_rcbuf *)(uintptr_t)m; }

/* Header bytes of an unmasked frame, from its second byte. */
static size_t header_len(const uint8_t *f)
{
    unsigned b = f[1] & 0x7Fu;
    return b == 126 ? 4 : b == 127 ? 10 : 2;
}

dx_msg *dx_msg_new(int opcode, const void *data, size_t len, int *err)
{
    int e = DX_EINVAL;
    if ((opcode != DX_OP_TEXT && opcode != DX_OP_BINARY) || (!data && len))
        goto fail;
    e = DX_EUTF8;
    if (opcode == DX_OP_TEXT && !dx__utf8_valid(data, len))
        goto fail;
    e = DX_ENOMEM;
    size_t hl = dx__frame_header_size(len, false);
    if (len > SIZE_MAX - DX_FRAME_HEADER_MAX)
        goto fail;
    dx_rcbuf *rb = dx_rcbuf_alloc(NULL, hl + len);
    if (!rb)
        goto fail;
    uint8_t *f = dx_rcbuf_mut(rb);
    (void)dx__frame_header_write(f, (unsigned)opcode, true, 0, len, NULL);
    if (len)
        memcpy(f + hl, data, len);
    if (err)
        *err = 0;
    return (dx_msg *)(void *)rb;
fail:
    if (err)
        *err = e;
    return NULL;
}

dx_msg *dx_msg_ref(dx_msg *m)
{
    dx_rcbuf_ref(rb_of(m));
    return m;
}

void dx_msg_unref(dx_msg *m)
{
    if (m)
        dx_rcbuf_unref(rb_of(m));
}

size_t dx_msg_len(const dx_msg *m)
{
    const dx_rcbuf *rb = rb_of(m);
    return dx_rcbuf_len(rb) - header_len(dx_rcbuf_data(rb));
}

dx_rcbuf *dx__msg_frame(const dx_msg *m, unsigned *opcode, size_t *hl)
{
    dx_rcbuf *rb = rb_of(m);
    const uint8_t *f = dx_rcbuf_data(rb);
    *opcode = f[0] & 0x0Fu;
    *hl = header_len(f);
    return rb;
}
