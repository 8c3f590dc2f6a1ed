/*
 * src/proto/codec.c: the public sans-I/O codec (see duplex/codec.h).
 *
 * Layer: proto. Pure. A dx_codec is a session (session.c) with its own copy
 * of the configuration and an output buffer: frames the session puts are
 * encoded into `out` (masked with a fresh key per frame in the client role)
 * until the caller takes them.
 */
#include "duplex/codec.h"

#include "core/buf.h"
#include "core/opts.h"
#include "core/seams.h"
#include "proto/mask.h"
#include "proto/session.h"

#include <stddef.h>
#include <string.h>

#define KEY_POOL 64 /* mask keys drawn from the seams 16 at a time */

struct dx_codec {
    dx__session s; /* first: handlers find the codec from the session */
    dx__session_cfg scfg;
    dx_codec_callbacks cb;
    void *ud;
    size_t max_output;
    uint64_t pongs_dropped; /* automatic pongs refused by max_output */
    dx__pmd_ctx *pmd; /* permessage-deflate's shared state (this codec's alone), or NULL */
    dx_buf out;
    uint8_t key_pos; /* next unused byte in keys; KEY_POOL: empty */
    uint8_t keys[KEY_POOL];
};

static dx_codec *codec_of(dx__session *s) { return (dx_codec *)(void *)s; }

static void h_message(dx__session *s, int op, const uint8_t *p, size_t len)
{
    dx_codec *c = codec_of(s);
    if (c->cb.on_message)
        c->cb.on_message(c->ud, op, p, len);
}

static void h_fragment(dx__session *s, int op, const uint8_t *p, size_t len, int fin)
{
    dx_codec *c = codec_of(s);
    c->cb.on_fragment(c->ud, op, p, len, fin);
}

static void h_ping(dx__session *s, const uint8_t *p, size_t len)
{
    dx_codec *c = codec_of(s);
    if (c->cb.on_ping)
        c->cb.on_ping(c->ud, p, len);
}

static void h_pong(dx__session *s, const uint8_t *p, size_t len)
{
    dx_codec *c = codec_of(s);
    if (c->cb.on_pong)
        c->cb.on_pong(c->ud, p, len);
}

static void h_close(dx__session *s, unsigned code, const char *reason, size_t len)
{
    dx_codec *c = codec_of(s);
    if (c->cb.on_close)
        c->cb.on_close(c->ud, code, reason, len);
}

static void h_pong_dropped(dx__session *s) { codec_of(s)->pongs_dropped++; }

static int next_key(dx_codec *c, uint8_t key[4])
{
    if (c->key_pos + 4 > KEY_POOL) {
        if (dx__random(c->scfg.seams, c->keys, KEY_POOL))
            return DX_ERANDOM;
        c->key_pos = 0;
    }
    memcpy(key, c->keys + c->key_pos, 4);
    c->key_pos = (uint8_t)(c->key_pos + 4);
    return 0;
}

/* Encodes one frame into `out`. Data and pongs respect max_output (data is
 * refused, a pong dropped); pings and closes always go. */
static int h_put(dx__session *s, int kind, unsigned opcode, bool fin, unsigned rsv, const uint8_t *data,
                 size_t len)
{
    dx_codec *c = codec_of(s);
    bool masked = c->scfg.role == DX_ROLE_CLIENT;
    size_t hlen = dx__frame_header_size(len, masked);
    if (len > SIZE_MAX - hlen)
        return DX_ELIMIT;
    if ((kind == DX__PUT_DATA || kind == DX__PUT_PONG) && c->max_output &&
        (hlen + len > c->max_output || c->out.len > c->max_output - hlen - len))
        return DX_ELIMIT;
    uint8_t key[4];
    if (masked && next_key(c, key))
        return DX_ERANDOM;
    int rc = dx_buf_reserve(&c->out, hlen + len, 0);
    if (rc)
        return rc;
    uint8_t *p = dx_buf_tail(&c->out);
    p += dx__frame_header_write(p, opcode, fin, rsv, len, masked ? key : NULL);
    if (len) {
        if (masked)
            dx__mask_copy(p, data, len, key, 0);
        else
            memcpy(p, data, len);
    }
    dx_buf_commit(&c->out, hlen + len);
    return 0;
}

/* A negotiated window: 8-15 (0: 15, not named). */
static bool bits_ok(unsigned b) { return b == 0 || (b >= 8 && b <= 15); }

/* permessage-deflate for the codec (cfg->deflate set): its own ctx. */
static int codec_deflate(dx_codec *c, const dx_codec_config *cfg)
{
    const dx_deflate_info *d = cfg->deflate;
    dx_deflate_options o = cfg->deflate_opt ? *cfg->deflate_opt : (dx_deflate_options){0};
    if (!bits_ok(d->server_max_window_bits) || !bits_ok(d->client_max_window_bits) || o.level < 0 ||
        o.level > 9 || o.mem_level < 0 || o.mem_level > 9)
        return DX_EINVAL;
    dx__pmd_params p = {.server_nct = d->server_no_context_takeover != 0,
                        .client_nct = d->client_no_context_takeover != 0,
                        .server_bits = (uint8_t)(d->server_max_window_bits ? d->server_max_window_bits : 15),
                        .client_bits = (uint8_t)(d->client_max_window_bits ? d->client_max_window_bits : 15)};
    c->pmd = dx__pmd_ctx_new(cfg->seams, &o);
    dx__pmd *pm = c->pmd ? dx__pmd_new(c->pmd, cfg->role, &p) : NULL;
    if (!pm)
        return DX_ENOMEM;
    dx__session_set_pmd(&c->s, pm);
    return 0;
}

dx_codec *dx_codec_new(const dx_codec_config *cfg, int *err)
{
    /* The config as it was before permessage-deflate's fields. */
    return dx_codec_new_sized(cfg, offsetof(dx_codec_config, deflate), err);
}

dx_codec *dx_codec_new_sized(const dx_codec_config *user, size_t cfg_size, int *err)
{
    int e = DX_EINVAL;
    dx_codec *c = NULL;
    dx_codec_config copy;
    const dx_codec_config *cfg = &copy;
    if (!user || dx__opts_copy(&copy, sizeof copy, user, cfg_size))
        goto out;
    if (cfg->role != DX_ROLE_SERVER && cfg->role != DX_ROLE_CLIENT)
        goto out;
    e = DX_ENOMEM;
    c = dx__alloc(cfg->seams, sizeof *c);
    if (!c)
        goto out;
    memset(c, 0, sizeof *c);
    size_t max_message = cfg->max_message ? cfg->max_message : DX_CODEC_DEFAULT_MAX_MESSAGE;
    size_t max_frame = cfg->max_frame && cfg->max_frame < max_message ? cfg->max_frame : max_message;
    c->scfg = (dx__session_cfg){
        .limits = {.max_frame = max_frame, .max_message = max_message},
        .max_fragments = cfg->max_fragments ? cfg->max_fragments : DX_CODEC_DEFAULT_MAX_FRAGMENTS,
        .role = (uint8_t)cfg->role,
        .auto_pong = !cfg->no_auto_pong,
        .seams = cfg->seams,
        .on_message = h_message,
        .on_fragment = cfg->cb.on_fragment ? h_fragment : NULL,
        .on_ping = h_ping,
        .on_pong = h_pong,
        .on_close = h_close,
        .on_pong_dropped = h_pong_dropped,
        .put = h_put,
    };
    c->cb = cfg->cb;
    c->ud = cfg->ud;
    c->max_output = cfg->max_output;
    dx_buf_init(&c->out, cfg->seams);
    c->key_pos = KEY_POOL;
    dx__session_init(&c->s, &c->scfg, cfg->rsv_allowed);
    if (cfg->deflate && (e = codec_deflate(c, cfg)) != 0) {
        dx_codec_free(c);
        c = NULL;
        goto out;
    }
    e = 0;
out:
    if (err)
        *err = e;
    return c;
}

void dx_codec_free(dx_codec *c)
{
    if (!c)
        return;
    dx__session_deinit(&c->s); /* its dx__pmd first, then the ctx */
    dx__pmd_ctx_free(c->pmd);
    dx_buf_deinit(&c->out);
    dx__free(c->scfg.seams, c);
}

int dx_codec_recv(dx_codec *c, uint8_t *data, size_t len) { return dx__session_recv(&c->s, data, len); }

int dx_codec_send(dx_codec *c, int opcode, const void *data, size_t len)
{
    return dx__session_send(&c->s, opcode, data, len, 0, 1);
}

int dx_codec_send_fragment(dx_codec *c, int opcode, const void *data, size_t len, int fin)
{
    return dx__session_send(&c->s, opcode, data, len, 1, fin);
}

int dx_codec_ping(dx_codec *c, const void *data, size_t len) { return dx__session_control(&c->s, DX_OP_PING, data, len); }
int dx_codec_pong(dx_codec *c, const void *data, size_t len) { return dx__session_control(&c->s, DX_OP_PONG, data, len); }

int dx_codec_close(dx_codec *c, unsigned code, const char *reason, size_t reason_len)
{
    return dx__session_close(&c->s, code, reason, reason_len);
}

const uint8_t *dx_codec_out(const dx_codec *c, size_t *len)
{
    *len = c->out.len;
    return c->out.len ? dx_buf_head(&c->out) : NULL;
}

void dx_codec_out_consume(dx_codec *c, size_t n)
{
    dx_buf_consume(&c->out, n);
    if (c->out.len == 0 && c->out.cap > 4096)
        dx_buf_deinit(&c->out); /* give a burst's memory back */
}

int dx_codec_state(const dx_codec *c) { return c->s.state; }
unsigned dx_codec_close_sent(const dx_codec *c) { return c->s.close_sent; }
unsigned dx_codec_close_received(const dx_codec *c) { return c->s.close_recv; }
int dx_codec_error(const dx_codec *c) { return c->s.err; }
uint64_t dx_codec_pongs_dropped(const dx_codec *c) { return c->pongs_dropped; }
