/*
 * src/ws/msg.c: prepared messages (see duplex/msg.h).
 *
 * Layer: ws. A dx_msg holds a dx_rcbuf (src/core) with one complete,
 * unmasked frame: the header encoded once, then the payload. The header's
 * length and the opcode are read back from its first two bytes (RFC 6455
 * §5.2). Send queues reference the rcbuf itself, so dx_conn_send_msg costs
 * one atomic increment, and the bytes written are the ones encoded here.
 *
 * Compress once (permessage-deflate): a connection that negotiated no
 * context takeover for what it sends compresses each message independently,
 * so the compressed frame is the same for every such connection with the
 * same window. The first one that needs it builds it (RSV1 set) and
 * publishes it in `z[bits]` with a compare-exchange; a connection on
 * another thread that lost the race frees its copy and uses the winner's.
 * Queues reference it like the plain frame. It is freed with the message.
 *
 * Invariants: the frame bytes never change after dx_msg_new returns; the
 * payload of a text message is valid UTF-8; every plain header has FIN set,
 * no RSV bits, no mask, and the minimal length encoding; a published
 * compressed frame never changes either.
 */
#include "ws/ws.h"

#include "core/seams.h"
#include "proto/deflate.h"
#include "proto/frame.h"
#include "proto/utf8.h"

#include <stdatomic.h>
#include <string.h>

struct dx_msg {
    atomic_size_t refs;
    dx_rcbuf *frame;
    _Atomic(dx_rcbuf *) z[16]; /* compressed frames by window bits (9-15) */
};

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
    dx_msg *m = dx__alloc(NULL, sizeof *m);
    if (!m)
        goto fail;
    dx_rcbuf *rb = dx_rcbuf_alloc(NULL, hl + len);
    if (!rb) {
        dx__free(NULL, m);
        goto fail;
    }
    uint8_t *f = dx_rcbuf_mut(rb);
    (void)dx__frame_header_write(f, (unsigned)opcode, true, 0, len, NULL);
    if (len)
        memcpy(f + hl, data, len);
    atomic_init(&m->refs, 1);
    m->frame = rb;
    for (size_t i = 0; i < 16; i++)
        atomic_init(&m->z[i], NULL);
    if (err)
        *err = 0;
    return m;
fail:
    if (err)
        *err = e;
    return NULL;
}

dx_msg *dx_msg_ref(dx_msg *m)
{
    atomic_fetch_add_explicit(&m->refs, 1, memory_order_relaxed);
    return m;
}

void dx_msg_unref(dx_msg *m)
{
    if (!m || atomic_fetch_sub_explicit(&m->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (size_t i = 0; i < 16; i++)
        dx_rcbuf_unref(atomic_load_explicit(&m->z[i], memory_order_acquire));
    dx_rcbuf_unref(m->frame);
    dx__free(NULL, m);
}

size_t dx_msg_len(const dx_msg *m)
{
    return dx_rcbuf_len(m->frame) - header_len(dx_rcbuf_data(m->frame));
}

dx_rcbuf *dx__msg_frame(const dx_msg *m, unsigned *opcode, size_t *hl)
{
    const uint8_t *f = dx_rcbuf_data(m->frame);
    *opcode = f[0] & 0x0Fu;
    *hl = header_len(f);
    return m->frame;
}

size_t dx__msg_refs(const dx_msg *m) { return atomic_load_explicit(&m->refs, memory_order_relaxed); }

size_t dx__msg_zframe_hl(const dx_rcbuf *z) { return header_len(dx_rcbuf_data(z)); }

static void *tmp_alloc(void *ud, size_t size)
{
    (void)ud;
    return dx__alloc(NULL, size);
}

dx_rcbuf *dx__msg_zframe(dx_msg *m, dx__pmd_ctx *ctx, unsigned bits)
{
    if (bits < 9 || bits > 15)
        return NULL;
    dx_rcbuf *z = atomic_load_explicit(&m->z[bits], memory_order_acquire);
    if (z)
        return z;
    unsigned opcode;
    size_t hl;
    dx_rcbuf *f = dx__msg_frame(m, &opcode, &hl);
    uint8_t *tmp = NULL;
    size_t zlen = 0;
    int rc = dx__pmd_compress_once(ctx, bits, dx_rcbuf_data(f) + hl, dx_rcbuf_len(f) - hl, 0, tmp_alloc, NULL,
                                   &tmp, &zlen);
    if (rc) {
        dx__free(NULL, tmp);
        return NULL; /* the caller compresses through the session instead */
    }
    size_t zhl = dx__frame_header_size(zlen, false);
    z = dx_rcbuf_alloc(NULL, zhl + zlen);
    if (z) {
        uint8_t *d = dx_rcbuf_mut(z);
        (void)dx__frame_header_write(d, opcode, true, DX_RSV1, zlen, NULL);
        memcpy(d + zhl, tmp, zlen);
    }
    dx__free(NULL, tmp);
    if (!z)
        return NULL;
    dx_rcbuf *expected = NULL;
    if (!atomic_compare_exchange_strong_explicit(&m->z[bits], &expected, z, memory_order_acq_rel,
                                                 memory_order_acquire)) {
        dx_rcbuf_unref(z); /* another thread published first: same bytes */
        z = expected;
    }
    return z;
}
