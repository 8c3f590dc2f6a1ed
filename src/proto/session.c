/*
 * src/proto/session.c: the WebSocket session state machine (see session.h).
 *
 * Layer: proto. Pure: bytes in, events and put() calls out; memory only
 * through the seams. Built on frame.c (framing and message tracking),
 * utf8.c and close.c.
 *
 * Memory: a message that arrives in one frame within one recv call is handed
 * to on_message straight from the caller's buffer. Otherwise its bytes gather
 * in `rx`, which is freed as soon as the message is delivered: an idle
 * session holds no buffer. A control frame split across reads gathers in rx
 * too, after the message bytes (ctl_len, at most 125).
 *
 * Compressed messages (permessage-deflate, deflate.c): a message whose
 * first frame has RSV1 is inflated as its payload arrives, in bounded
 * pieces, into rx; max_message counts the inflated bytes and is checked
 * while inflating (a few KB that would inflate to GBs cost at most
 * max_message plus a piece). Whole messages at least min_size long are
 * sent compressed; fragmented sends go uncompressed.
 *
 * Invariants:
 *  - state != OPEN means a close frame went out through put (or could not:
 *    FAILED while CLOSE_SENT) and nothing follows it;
 *  - rx_opcode != 0 exactly while a received data message is open;
 *  - tx_opcode != 0 exactly while an outgoing fragmented message is open.
 */
#include "proto/session.h"

#include "core/seams.h"
#include "proto/close.h"

#include <string.h>

void dx__session_init(dx__session *s, const dx__session_cfg *cfg, unsigned rsv_allowed)
{
    memset(s, 0, sizeof *s);
    s->cfg = cfg;
    s->rsv_allowed = (uint8_t)rsv_allowed;
}

/* Releases the receive buffer (not the dx__rxs: see rx_settle). */
static void rx_release(dx__session *s)
{
    dx__rxs *r = s->rx;
    if (!r)
        return;
    /* With the extension on, a small buffer goes back to the ctx for the
     * next message (inflated messages always need one). */
    if (!(r->buf && s->pmd && r->buf->cap <= DX_PMD_SPARE_MAX && dx__pmd_spare_give(s->pmd, r->buf)))
        dx__free(s->cfg->seams, r->buf);
    r->buf = NULL;
    r->ctl_len = 0;
}

/* Between frames, no message open, nothing buffered: the state holds
 * nothing a fresh one would not. */
static bool rx_idle(const dx__rxs *r)
{
    const dx_frame_decoder *d = &r->dec;
    return (d->state | d->hlen | d->msg_opcode | r->opcode | r->ctl_len) == 0 && !r->z && !r->buf;
}

/* A fresh receive state (between frames, no message open). */
static void rx_fresh(const dx__session *s, dx__rxs *r)
{
    memset(r, 0, sizeof *r);
    dx__frame_decoder_init(&r->dec, s->cfg->role, s->rsv_allowed, &s->cfg->limits);
}

/* The outermost dx__session_recv_ex ends: a receive state that is back
 * between messages (or on a session that ended) goes; one in progress on
 * the stack moves to the heap. Returns 0 or DX_ENOMEM (the state is then
 * dropped: the caller fails the session). */
static int rx_settle(dx__session *s, dx__rxs *stack)
{
    dx__rxs *r = s->rx;
    if (!r)
        return 0;
    bool ended = s->state == DX_CODEC_CLOSED || s->state == DX_CODEC_FAILED;
    if (ended || rx_idle(r)) {
        rx_release(s);
        if (r->heap)
            dx__free(s->cfg->seams, r);
        s->rx = NULL;
        return 0;
    }
    if (r != stack)
        return 0; /* already on the heap */
    dx__rxs *h = dx__alloc(s->cfg->seams, sizeof *h);
    if (!h) {
        rx_release(s);
        s->rx = NULL;
        return DX_ENOMEM;
    }
    *h = *r;
    h->heap = true;
    s->rx = h;
    return 0;
}

void dx__session_set_pmd(dx__session *s, dx__pmd *pmd)
{
    s->pmd = pmd;
    if (pmd)
        s->rsv_allowed |= DX_RSV1;
}

void dx__session_deinit(dx__session *s)
{
    rx_release(s);
    if (s->rx && s->rx->heap)
        dx__free(s->cfg->seams, s->rx);
    s->rx = NULL;
    dx__pmd_free(s->pmd);
    s->pmd = NULL;
}

/* Appends to the receive buffer (message bytes when ctl is false, else the
 * control tail). Only while receiving (s->rx set). */
static int rx_append(dx__session *s, const uint8_t *p, size_t len, bool ctl)
{
    dx__rxs *r = s->rx;
    size_t used = dx__session_rx_len(s) + r->ctl_len;
    if (len > SIZE_MAX - sizeof(dx__rxbuf) - used)
        return DX_ENOMEM;
    if (!r->buf && s->pmd && (r->buf = dx__pmd_spare_take(s->pmd)) != NULL)
        r->buf->len = 0; /* the ctx's kept buffer: no allocation */
    if (!r->buf || used + len > r->buf->cap) {
        size_t cap = r->buf ? r->buf->cap : 256;
        while (cap < used + len)
            cap = cap > SIZE_MAX / 2 ? used + len : cap * 2;
        /* Never hold more than the message limit allows plus a control frame. */
        uint64_t most = s->cfg->limits.max_message ? s->cfg->limits.max_message + DX_CONTROL_MAX : 0;
        if (most && cap > most && used + len <= most)
            cap = (size_t)most;
        dx__rxbuf *n = dx__realloc(s->cfg->seams, r->buf, sizeof *n + cap);
        if (!n)
            return DX_ENOMEM;
        if (!r->buf)
            n->len = 0;
        n->cap = cap;
        r->buf = n;
    }
    memcpy(r->buf->data + used, p, len);
    if (ctl)
        r->ctl_len = (uint8_t)(r->ctl_len + len);
    else
        r->buf->len += len;
    return 0;
}

/* ---- sending ------------------------------------------------------------ */

static int put_close(dx__session *s, unsigned code, const char *reason, size_t reason_len)
{
    uint8_t payload[DX_CONTROL_MAX];
    size_t n = dx__close_write(payload, code, reason, reason_len);
    int rc = s->cfg->put(s, DX__PUT_CLOSE, DX_OP_CLOSE, true, 0, payload, n);
    if (rc == 0)
        s->close_sent = (uint16_t)(code ? code : DX_CLOSE_NO_STATUS);
    return rc;
}

/* Frames of a compressed message (dx__pmd_compress's emit). */
typedef struct zsend {
    dx__session *s;
    unsigned opcode;
    bool sent; /* a frame went out */
} zsend;

static int zsend_emit(void *ud, bool first, bool fin, const uint8_t *data, size_t len)
{
    zsend *z = ud;
    int rc = z->s->cfg->put(z->s, DX__PUT_DATA, first ? z->opcode : DX_OP_CONT, fin, first ? DX_RSV1 : 0u, data,
                            len);
    if (rc == 0)
        z->sent = true;
    return rc;
}

/* A whole message, compressed when the extension is on and it is long
 * enough. A failure once a frame went out (or with a compressor that keeps
 * its context, which has taken the message in) leaves the peer's view
 * unrecoverable: the session fails (1011) unless the owner already did. */
static int send_whole(dx__session *s, int opcode, const void *data, size_t len)
{
    if (!s->pmd || !dx__pmd_want_compress(s->pmd, len))
        return s->cfg->put(s, DX__PUT_DATA, (unsigned)opcode, true, 0, data, len);
    zsend z = {s, (unsigned)opcode, false};
    int rc = dx__pmd_compress(s->pmd, data, len, zsend_emit, &z);
    unsigned bits;
    if (rc && (z.sent || !dx__pmd_tx_stateless(s->pmd, &bits)) && s->state == DX_CODEC_OPEN) {
        bool limit = rc == DX_ELIMIT; /* an owner's queue limit (the codec's max_output) */
        dx__session_fail(s, limit ? DX_EPOLICY : rc, limit ? DX_CLOSE_POLICY : DX_CLOSE_INTERNAL_ERROR,
                         "cannot send a compressed message");
    }
    return rc;
}

int dx__session_send_valid(dx__session *s, int opcode, const void *data, size_t len)
{
    if (opcode != DX_OP_TEXT && opcode != DX_OP_BINARY)
        return DX_EINVAL;
    if (s->state != DX_CODEC_OPEN)
        return DX_ECLOSED;
    if (s->tx_opcode)
        return DX_ESTATE;
    return send_whole(s, opcode, data, len);
}

int dx__session_send(dx__session *s, int opcode, const void *data, size_t len, int fragment, int fin)
{
    if (opcode != DX_OP_TEXT && opcode != DX_OP_BINARY)
        return DX_EINVAL;
    if (s->state != DX_CODEC_OPEN)
        return DX_ECLOSED;
    if (!fragment) {
        if (s->tx_opcode)
            return DX_ESTATE;
        if (opcode == DX_OP_TEXT && !dx__utf8_valid(data, len))
            return DX_EUTF8;
        return send_whole(s, opcode, data, len);
    }
    if (s->tx_opcode && s->tx_opcode != opcode)
        return DX_EINVAL;
    dx_utf8 v = s->tx_utf8;
    if (opcode == DX_OP_TEXT) {
        if (!s->tx_opcode)
            dx__utf8_init(&v);
        if (dx__utf8_feed(&v, data, len, NULL) || (fin && dx__utf8_finish(&v)))
            return DX_EUTF8;
    }
    unsigned frame_op = s->tx_opcode ? DX_OP_CONT : (unsigned)opcode;
    int rc = s->cfg->put(s, DX__PUT_DATA, frame_op, fin != 0, 0, data, len);
    if (rc)
        return rc;
    s->tx_utf8 = v; /* committed only once the frame went out */
    s->tx_opcode = fin ? 0 : (uint8_t)opcode;
    return 0;
}

int dx__session_control(dx__session *s, unsigned opcode, const void *data, size_t len)
{
    if (len > DX_CONTROL_MAX || (opcode != DX_OP_PING && opcode != DX_OP_PONG))
        return DX_EINVAL;
    if (s->state != DX_CODEC_OPEN)
        return DX_ECLOSED;
    int rc = s->cfg->put(s, opcode == DX_OP_PING ? DX__PUT_PING : DX__PUT_PONG, opcode, true, 0, data, len);
    return rc == DX_ELIMIT ? 0 : rc; /* control frames are not refused by queue limits */
}

int dx__session_close(dx__session *s, unsigned code, const char *reason, size_t reason_len)
{
    if (code == 0 ? reason_len != 0 : !dx_close_code_valid(code))
        return DX_EINVAL;
    if (reason_len > DX_CLOSE_REASON_MAX)
        return DX_EINVAL;
    if (reason_len && !dx__utf8_valid((const uint8_t *)reason, reason_len))
        return DX_EUTF8;
    if (s->state != DX_CODEC_OPEN)
        return DX_ECLOSED;
    int rc = put_close(s, code, reason, reason_len);
    if (rc)
        return rc;
    s->state = DX_CODEC_CLOSE_SENT;
    return 0;
}

/* ---- receiving ---------------------------------------------------------- */

static const char *fail_reason(int err)
{
    switch (err) {
    case DX_EPROTO:
        return "protocol error";
    case DX_EUTF8:
        return "invalid UTF-8";
    case DX_ETOOBIG:
        return "message too big";
    case DX_EPOLICY:
        return "too many fragments";
    default:
        return "internal error";
    }
}

void dx__session_fail(dx__session *s, int err, unsigned code, const char *reason)
{
    if (s->state == DX_CODEC_OPEN)
        (void)put_close(s, code, reason, reason ? strlen(reason) : 0);
    s->state = DX_CODEC_FAILED;
    s->err = (int16_t)err;
    rx_release(s);
}

/* Fails the connection (§7.1.7) for a receive error; returns err. */
static int fail_rx(dx__session *s, int err)
{
    dx__session_fail(s, err, (unsigned)dx_close_code_for_error(err), fail_reason(err));
    return err;
}

static int on_control(dx__session *s, unsigned opcode, const uint8_t *p, size_t len)
{
    const dx__session_cfg *cfg = s->cfg;
    if (opcode == DX_OP_PING) {
        if (s->state == DX_CODEC_OPEN && cfg->auto_pong) {
            /* §5.5.3: answer with the same payload. An owner whose queue is
             * full refuses it (a peer flooding pings and never reading):
             * the pong is dropped and counted. */
            int rc = cfg->put(s, DX__PUT_PONG, DX_OP_PONG, true, 0, p, len);
            if (rc == DX_ELIMIT) {
                if (cfg->on_pong_dropped)
                    cfg->on_pong_dropped(s);
            }
            else if (rc)
                return fail_rx(s, rc == DX_ENOMEM ? DX_ENOMEM : DX_EINTERNAL);
        }
        if (cfg->on_ping)
            cfg->on_ping(s, p, len);
        return 0;
    }
    if (opcode == DX_OP_PONG) {
        if (cfg->on_pong)
            cfg->on_pong(s, p, len);
        return 0;
    }
    /* DX_OP_CLOSE */
    uint16_t code;
    const uint8_t *reason;
    size_t reason_len;
    int rc = dx__close_parse(p, len, &code, &reason, &reason_len);
    if (rc)
        return fail_rx(s, rc);
    s->close_recv = code;
    if (s->state == DX_CODEC_OPEN) {
        /* §5.5.1: reply with a close frame, echoing the status code. */
        (void)put_close(s, code == DX_CLOSE_NO_STATUS ? 0 : code, NULL, 0);
    }
    s->state = DX_CODEC_CLOSED;
    if (cfg->on_close)
        cfg->on_close(s, code, (const char *)reason, reason_len);
    rx_release(s); /* after the handler: reason may point into rx */
    return 0;
}

/* Delivers a finished data message and releases the receive buffer. */
static int finish_message(dx__session *s, const uint8_t *p, size_t len)
{
    static const uint8_t empty[1];
    unsigned op = s->rx->opcode;
    s->rx->opcode = 0;
    if (s->rx->z) {
        /* The decompressor is done with this message before any handler
         * runs (a shared one goes back now). */
        s->rx->z = false;
        dx__pmd_rx_end(s->pmd);
    }
    if (op == DX_OP_TEXT && dx__utf8_finish(&s->rx->utf8))
        return fail_rx(s, DX_EUTF8); /* a character cut off at the end */
    if (!p)
        p = empty; /* handlers always get a valid pointer, even for 0 bytes */
    if (s->cfg->on_fragment)
        s->cfg->on_fragment(s, (int)op, p, len, 1);
    else
        s->cfg->on_message(s, (int)op, p, len);
    rx_release(s); /* an idle session holds no buffer */
    return 0;
}

/* A piece of an inflated message (dx__pmd_inflate's out): counted against
 * max_message before it is kept, so nothing past the limit is ever held. */
static int rx_inflated(void *ud, const uint8_t *p, size_t n)
{
    dx__session *s = ud;
    uint64_t max = s->cfg->limits.max_message;
    /* The first bad byte decides, however the output was cut: bytes up to
     * the limit are checked for UTF-8 first, the one past it is 1009. */
    bool over = max && n > max - dx__session_rx_len(s);
    size_t ok = over ? (size_t)(max - dx__session_rx_len(s)) : n;
    if (s->rx->opcode == DX_OP_TEXT && dx__utf8_feed(&s->rx->utf8, p, ok, NULL))
        return DX_EUTF8;
    if (over)
        return DX_ETOOBIG;
    return rx_append(s, p, n, false);
}

static int fail_inflate(dx__session *s, int rc)
{
    if (rc == DX_EPROTO) {
        dx__session_fail(s, DX_EPROTO, DX_CLOSE_PROTOCOL_ERROR, "invalid compressed data");
        return DX_EPROTO;
    }
    return fail_rx(s, rc);
}

static int on_header(dx__session *s, const dx_frame_event *ev)
{
    const dx_frame_header *h = ev->hdr;
    if (s->cfg->on_frame && ev->end)
        s->cfg->on_frame(s, h, NULL, 0);
    if (h->opcode & 0x8) {
        s->rx->ctl_len = 0;
        return ev->end ? on_control(s, h->opcode, NULL, 0) : 0;
    }
    if (h->opcode != DX_OP_CONT) {
        s->rx->opcode = h->opcode;
        s->rx->fragments = 0;
        s->rx->payload = 0;
        dx__utf8_init(&s->rx->utf8);
        /* The decoder allows RSV1 only on a first frame, and only once the
         * extension was negotiated (else 1002). */
        s->rx->z = s->pmd && (h->rsv & DX_RSV1);
        if (s->rx->z) {
            int rc = dx__pmd_rx_begin(s->pmd);
            if (rc) {
                s->rx->z = false;
                return fail_rx(s, rc);
            }
        }
    }
    /* The fragment cost rule: each frame of a message costs
     * DX_CODEC_FRAGMENT_COST bytes, paid from an allowance of max_fragments
     * frames plus the message's own payload through this frame. A message
     * whose frames average DX_CODEC_FRAGMENT_COST bytes or more never hits
     * the cap, however many frames it has (Autobahn 9.3/9.4: 4 MiB in
     * 64-byte frames); an empty- or tiny-frame flood is refused after about
     * max_fragments frames; no message, however it is cut, has more than
     * max_fragments + max_message / DX_CODEC_FRAGMENT_COST frames. Not
     * dec.msg_len: the decoder has reset it when an empty final frame's
     * header is reported. */
    s->rx->fragments++;
    s->rx->payload += h->len;
    if (s->cfg->max_fragments &&
        s->rx->fragments > (uint64_t)s->cfg->max_fragments + s->rx->payload / DX_CODEC_FRAGMENT_COST)
        return fail_rx(s, DX_EPOLICY);
    if (ev->end && h->fin) {
        if (s->rx->z) {
            int rc = dx__pmd_inflate(s->pmd, NULL, 0, true, rx_inflated, s);
            if (rc)
                return fail_inflate(s, rc);
        }
        return finish_message(s, s->rx->buf ? s->rx->buf->data : NULL, dx__session_rx_len(s));
    }
    return 0;
}

static int on_data(dx__session *s, const dx_frame_event *ev)
{
    const dx_frame_header *h = ev->hdr;
    if (s->cfg->on_frame && ev->offset == 0)
        s->cfg->on_frame(s, h, ev->data, ev->len < 16 ? ev->len : 16);
    if (h->opcode & 0x8) {
        if (ev->offset == 0 && ev->end)
            return on_control(s, h->opcode, ev->data, ev->len); /* arrived whole */
        if (rx_append(s, ev->data, ev->len, true))
            return fail_rx(s, DX_ENOMEM);
        if (!ev->end)
            return 0;
        uint8_t ctl[DX_CONTROL_MAX];
        size_t n = s->rx->ctl_len;
        memcpy(ctl, s->rx->buf->data + s->rx->buf->len, n);
        s->rx->ctl_len = 0;
        if (s->rx->buf->len == 0)
            rx_release(s);
        return on_control(s, h->opcode, ctl, n);
    }
    bool last = ev->end && h->fin;
    if (s->rx->z) {
        /* Inflated in pieces into rx; the limit and UTF-8 are checked on
         * each piece (rx_inflated). */
        int rc = dx__pmd_inflate(s->pmd, ev->data, ev->len, last, rx_inflated, s);
        if (rc)
            return fail_inflate(s, rc);
        return last ? finish_message(s, s->rx->buf ? s->rx->buf->data : NULL, dx__session_rx_len(s)) : 0;
    }
    if (s->rx->opcode == DX_OP_TEXT && dx__utf8_feed(&s->rx->utf8, ev->data, ev->len, NULL))
        return fail_rx(s, DX_EUTF8); /* §8.1: fail at the first invalid byte */
    if (s->cfg->on_fragment) {
        if (last)
            return finish_message(s, ev->data, ev->len);
        s->cfg->on_fragment(s, s->rx->opcode, ev->data, ev->len, 0);
        return 0;
    }
    if (last && dx__session_rx_len(s) == 0 && ev->offset == 0 && h->opcode != DX_OP_CONT)
        return finish_message(s, ev->data, ev->len); /* zero-copy: the frame arrived whole */
    /* The decoder checked the message limit at the header, so rx stays
     * within max_message. */
    if (rx_append(s, ev->data, ev->len, false))
        return fail_rx(s, DX_ENOMEM);
    if (last)
        return finish_message(s, s->rx->buf->data, s->rx->buf->len);
    return 0;
}

int dx__session_recv(dx__session *s, uint8_t *data, size_t len)
{
    size_t used;
    return dx__session_recv_ex(s, data, len, &used);
}

static int recv_frames(dx__session *s, uint8_t *data, size_t len, size_t *used);

static bool rx_live(const dx__session *s)
{
    return s->state == DX_CODEC_OPEN || s->state == DX_CODEC_CLOSE_SENT;
}

/* The path of a session between messages (no receive state) fed whole,
 * unfragmented data frames, the common case: each is checked, unmasked and
 * delivered straight from the caller's buffer (dx__frame_whole), with no
 * receive state at all. Returns the bytes consumed; stops at the first
 * frame that is not such a frame (recv_frames takes it from there, with
 * the same results: dx__frame_whole's contract), when a handler holds the
 * session, ends it, or leaves a receive state (a nested recv that stopped
 * mid-frame). *rc: a failure (invalid UTF-8). */
static size_t recv_whole(dx__session *s, uint8_t *data, size_t len, int *rc)
{
    const dx__session_cfg *cfg = s->cfg;
    const dx_frame_limits *lim = &cfg->limits;
    uint64_t a = lim->max_frame - 1, b = lim->max_message - 1;
    dx_frame_fast ff = {.max1 = a < b ? a : b, /* a zero limit (none) wraps to UINT64_MAX */
                        .mbit = cfg->role == DX_ROLE_SERVER ? 0x80u : 0,
                        .ok = true};
    size_t off = 0;
    s->depth++;
    while (off < len && !s->hold && !s->rx && rx_live(s)) {
        uint8_t *p;
        size_t n;
        unsigned op;
        size_t fl = dx__frame_whole(&ff, data + off, len - off, &p, &n, &op);
        if (!fl)
            break;
        off += fl;
        if (op == DX_OP_TEXT && !dx__utf8_valid(p, n)) {
            *rc = fail_rx(s, DX_EUTF8); /* §8.1 */
            break;
        }
        if (cfg->on_fragment)
            cfg->on_fragment(s, (int)op, p, n, 1);
        else
            cfg->on_message(s, (int)op, p, n);
    }
    s->depth--;
    return off;
}

int dx__session_recv_ex(dx__session *s, uint8_t *data, size_t len, size_t *used)
{
    size_t off = 0;
    int rc = 0;
    if (!s->rx && !s->pmd && !s->cfg->on_frame && rx_live(s)) {
        off = recv_whole(s, data, len, &rc);
        if (off == len || rc || s->hold || !rx_live(s)) {
            *used = s->hold ? off : len; /* unless held: what is not decoded is ignored */
            return rc ? rc : s->state == DX_CODEC_FAILED && s->err ? s->err : 0;
        }
    }
    /* Between messages the receive state lives on this stack frame; the
     * call that made it settles it (rx_settle) before it returns. */
    dx__rxs stack;
    bool mine = false;
    if (!s->rx && s->state != DX_CODEC_CLOSED && s->state != DX_CODEC_FAILED) {
        rx_fresh(s, &stack);
        s->rx = &stack;
        mine = true;
    }
    s->depth++;
    rc = recv_frames(s, data + off, len - off, used);
    *used += off;
    /* A compressed message still open on the shared decompressor keeps a
     * copy of its own until it ends: the shared one serves others. */
    if (s->pmd) {
        bool dead = s->state == DX_CODEC_CLOSED || s->state == DX_CODEC_FAILED;
        bool z = s->rx && s->rx->z;
        if (dx__pmd_rx_park(s->pmd, dead || !z) && !dead) {
            s->rx->z = false;
            rc = fail_rx(s, DX_ENOMEM);
        }
    }
    if ((--s->depth == 0 || mine) && rx_settle(s, &stack) && s->state != DX_CODEC_CLOSED &&
        s->state != DX_CODEC_FAILED)
        rc = fail_rx(s, DX_ENOMEM);
    return rc;
}

/* A whole unfragmented message that arrived in one frame (dx__frame_whole):
 * what on_header then on_data do for it, straight from the caller's
 * buffer. The fragment allowance cannot refuse a one-frame message
 * (max_fragments is 0, none, or at least 1). */
static int whole_message(dx__session *s, unsigned op, const uint8_t *p, size_t len)
{
    /* rx_fragments and rx_payload count an open message's frames: the next
     * message's first frame resets them, so they are left alone here. */
    if (op == DX_OP_TEXT && !dx__utf8_valid(p, len)) {
        s->rx->opcode = (uint8_t)op;
        return fail_rx(s, DX_EUTF8); /* §8.1 */
    }
    if (s->cfg->on_fragment)
        s->cfg->on_fragment(s, (int)op, p, len, 1);
    else
        s->cfg->on_message(s, (int)op, p, len);
    if (s->rx->buf)
        rx_release(s);
    return 0;
}

static int recv_frames(dx__session *s, uint8_t *data, size_t len, size_t *used)
{
    *used = len; /* unless held: what is not decoded is ignored */
    if (s->state == DX_CODEC_CLOSED || s->state == DX_CODEC_FAILED)
        return DX_ECLOSED;
    size_t off = 0;
    /* The fast path skips the per-frame trace: taken only without one. */
    bool fast = s->cfg->on_frame == NULL;
    dx_frame_fast ff;
    dx__frame_fast_init(&s->rx->dec, &ff);
    while (s->state == DX_CODEC_OPEN || s->state == DX_CODEC_CLOSE_SENT) {
        if (s->hold) {
            *used = off;
            return 0;
        }
        if (off == len)
            return 0; /* all decoded (dx__frame_decode would say NEED_MORE) */
        uint8_t *p;
        size_t n;
        unsigned op;
        size_t fl = fast ? dx__frame_whole(&ff, data + off, len - off, &p, &n, &op) : 0;
        if (fl) {
            off += fl;
            int rc = whole_message(s, op, p, n);
            if (rc)
                return rc;
            continue;
        }
        dx_frame_event ev;
        off += dx__frame_decode(&s->rx->dec, data + off, len - off, &ev);
        dx__frame_fast_init(&s->rx->dec, &ff);
        int rc = 0;
        switch (ev.type) {
        case DX_FRAME_NEED_MORE:
            return 0;
        case DX_FRAME_ERROR:
            return fail_rx(s, ev.err);
        case DX_FRAME_HEADER:
            rc = on_header(s, &ev);
            break;
        case DX_FRAME_DATA:
            rc = on_data(s, &ev);
            break;
        }
        if (rc)
            return rc;
    }
    /* The peer's close frame ended the session during this call; bytes after
     * it are ignored (§5.5.1). A handler may also have failed it. */
    return s->state == DX_CODEC_FAILED && s->err ? s->err : 0;
}
