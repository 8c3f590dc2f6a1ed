/*
 * src/proto/session.h: the WebSocket session state machine shared by the
 * public sans-I/O codec (codec.c) and the connections of src/ws.
 *
 * A session is the per-connection half: decoder state, the message being
 * received, close-handshake state. Everything that is the same for many
 * connections (limits, role, event handlers, how frames are written out)
 * lives in a dx__session_cfg that sessions point to, so an idle connection
 * pays only for its own state.
 *
 * Output: the session never encodes bytes itself; it asks its owner to
 * write a frame through cfg->put (the codec appends to a buffer; a socket
 * connection writes straight to the kernel first). Pure: no I/O here.
 */
#ifndef DX_PROTO_SESSION_H
#define DX_PROTO_SESSION_H

#include "duplex/codec.h"
#include "proto/deflate.h"
#include "proto/frame.h"
#include "proto/utf8.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct dx__session dx__session;

/* What a frame written through put is, so owners can apply their limits:
 * data may be refused (DX_ELIMIT), a pong may be dropped, a close must go. */
enum dx__put_kind { DX__PUT_DATA = 0, DX__PUT_PING, DX__PUT_PONG, DX__PUT_CLOSE };

typedef struct dx__session_cfg {
    dx_frame_limits limits;   /* max_frame, max_message (0: none) */
    /* Fragment allowance (0: none): frame n of a data message is refused
     * (1008) when n > max_fragments + payload / DX_CODEC_FRAGMENT_COST, payload
     * counting the message's bytes through frame n. See session.c. */
    size_t max_fragments;
    uint8_t role;             /* DX_ROLE_SERVER or DX_ROLE_CLIENT */
    bool auto_pong;           /* answer pings */
    const dx_seams *seams;    /* allocator for the receive buffer */
    /* Events; data is borrowed until the handler returns. on_message is
     * required unless on_fragment is set; the others may be NULL. */
    void (*on_message)(dx__session *s, int opcode, const uint8_t *data, size_t len);
    void (*on_fragment)(dx__session *s, int opcode, const uint8_t *data, size_t len, int fin);
    void (*on_ping)(dx__session *s, const uint8_t *data, size_t len);
    void (*on_pong)(dx__session *s, const uint8_t *data, size_t len);
    void (*on_close)(dx__session *s, unsigned code, const char *reason, size_t len);
    /* An automatic pong was refused by put (DX_ELIMIT) and dropped: the
     * owner counts it (the session keeps no counter). May be NULL. */
    void (*on_pong_dropped)(dx__session *s);
    /* Optional trace of each received frame, at its first payload bytes
     * (head: at most 16, unmasked) or at its header when it is empty. */
    void (*on_frame)(dx__session *s, const dx_frame_header *h, const uint8_t *head, size_t n);
    /* Writes one frame (the owner masks it in the client role); rsv is
     * DX_RSV1 on the first frame of a compressed message, else 0. Returns 0,
     * DX_ELIMIT (refused by the owner's queue limit: data is not sent, a
     * pong is dropped and counted), DX_ENOMEM or DX_ERANDOM. */
    int (*put)(dx__session *s, int kind, unsigned opcode, bool fin, unsigned rsv, const uint8_t *data,
               size_t len);
} dx__session_cfg;

/* The receive side of a frame or message in progress: the frame decoder,
 * the open message's counters and its bytes. A session between frames with
 * no message open has none (s->rx NULL): dx__session_recv_ex decodes with
 * one on its stack and moves it to the heap only when the input ends
 * mid-frame or mid-message (or a split control frame), and frees it as soon
 * as the session is back between messages. So an idle connection pays one
 * pointer for it, and whole frames (data or control) never allocate. */
typedef struct dx__rxs {
    dx_frame_decoder dec;
    struct dx__rxbuf *buf; /* received message bytes (then a split control payload), or NULL */
    uint64_t fragments;    /* frames of the open received message */
    uint64_t payload;      /* its payload bytes, the current frame's included */
    dx_utf8 utf8;          /* received text message */
    uint8_t opcode;        /* TEXT/BINARY while a received message is open */
    uint8_t ctl_len;       /* bytes of a split control payload after the message bytes */
    bool z;                /* the received message is compressed (RSV1 on its first frame) */
    bool heap;             /* allocated (through cfg->seams), not recv's stack copy */
} dx__rxs;

struct dx__session {
    const dx__session_cfg *cfg;
    dx__rxs *rx;           /* a frame or message in progress (see dx__rxs), else NULL */
    dx__pmd *pmd;          /* permessage-deflate state when negotiated (owned), else NULL */
    dx_utf8 tx_utf8;       /* outgoing fragmented text message */
    int16_t err;           /* what failed the session (a DX_E* code), 0 if nothing */
    uint16_t close_sent;   /* our close code (DX_CLOSE_NO_STATUS: empty close), 0: none */
    uint16_t close_recv;   /* the peer's, likewise */
    uint8_t state;         /* enum dx_codec_state */
    uint8_t tx_opcode;     /* TEXT/BINARY while an outgoing fragmented message is open */
    uint8_t rsv_allowed;   /* RSV bits an extension negotiated (the decoder's, at each frame) */
    uint8_t depth;         /* dx__session_recv_ex calls on the stack (a handler may feed again) */
    bool hold;             /* set by the owner from a handler: dx__session_recv_ex stops after it */
};

/* The receive buffer, allocated only while a message or control frame is
 * split across reads. */
typedef struct dx__rxbuf {
    size_t len; /* message bytes */
    size_t cap;
    uint8_t data[];
} dx__rxbuf;

static inline size_t dx__session_rx_len(const dx__session *s) { return s->rx && s->rx->buf ? s->rx->buf->len : 0; }

/* Starts a session in state OPEN; rsv_allowed: extension-negotiated bits. */
void dx__session_init(dx__session *s, const dx__session_cfg *cfg, unsigned rsv_allowed);

/* Hands the session its permessage-deflate state (owned from now on, freed
 * by dx__session_deinit) and allows RSV1 on first frames (§6 of RFC 7692).
 * Call right after dx__session_init, before any byte is received. */
void dx__session_set_pmd(dx__session *s, dx__pmd *pmd);

/* Frees the receive buffer. The session must not be used afterwards but
 * dx__session_init may start it again. */
void dx__session_deinit(dx__session *s);

/* dx_codec_recv's contract (duplex/codec.h), for a session. */
int dx__session_recv(dx__session *s, uint8_t *data, size_t len);

/* The same, but stops as soon as a handler sets s->hold (e.g. a connection
 * paused from on_message): *used gets the bytes consumed, and the rest,
 * data[*used..len), must be fed again later, unchanged. The decoder keeps
 * its place, so any split is fine. */
int dx__session_recv_ex(dx__session *s, uint8_t *data, size_t len, size_t *used);

/* dx_codec_send / send_fragment / ping / pong / close contracts. `fragment`
 * 0 sends a whole message (fin ignored). Limits of the owner come back from
 * put as DX_ELIMIT. */
int dx__session_send(dx__session *s, int opcode, const void *data, size_t len, int fragment, int fin);
/* A whole message whose text was validated already (a dx_msg): compressed
 * when permessage-deflate says so, like dx__session_send. */
int dx__session_send_valid(dx__session *s, int opcode, const void *data, size_t len);
int dx__session_control(dx__session *s, unsigned opcode, const void *data, size_t len);
/* True when dx__session_send of a whole, valid message would write it as
 * one plain frame through put and change nothing else (open, no
 * fragmented send open, no compression): an owner may then write that
 * frame itself (the ws layer's send fast path). */
static inline bool dx__session_plain_send(const dx__session *s)
{
    return s->state == DX_CODEC_OPEN && s->tx_opcode == 0 && s->pmd == NULL;
}
int dx__session_close(dx__session *s, unsigned code, const char *reason, size_t reason_len);

/* Fails the session from outside (e.g. a limit only the owner knows):
 * queues a close frame with `code` and `reason` if none was sent yet and
 * moves to DX_CODEC_FAILED with error `err`. */
void dx__session_fail(dx__session *s, int err, unsigned code, const char *reason);

#endif
