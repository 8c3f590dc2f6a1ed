/*
 * src/proto/deflate.c: permessage-deflate (RFC 7692) negotiation and
 * compression state (see deflate.h).
 *
 * Layer: proto. Pure: strings and zlib, memory only through the ctx's
 * seams (every zlib allocation is counted in ctx->mem). Depends on
 * handshake.h for the parsed extension elements.
 *
 * Invariants:
 *  - ctx->rx_owner is the dx__pmd inflating on the shared decompressor, and
 *    only between dx__pmd_rx_begin and dx__pmd_rx_end or the end of the
 *    receive call (dx__pmd_rx_park): never across two receive calls;
 *  - a shared compressor is only used inside one dx__pmd_compress call and
 *    is reset before it returns, so it carries nothing between messages;
 *  - pm->rx is set while a peer keeping its context has sent a compressed
 *    message (kept), or while a message split across reads is inflating
 *    (freed at its end when the peer resets per message).
 */
#include "proto/deflate.h"

#include "core/seams.h"

#include <stdio.h>
#include <string.h>
#include <zlib.h>

enum { RX_IDLE = 0, RX_SHARED, RX_OWN };

struct dx__pmd_ctx {
    const dx_seams *seams;
    int level, mem_level;
    size_t min_size;
    size_t mem;                /* bytes allocated for zlib (headers included) */
    size_t reserved;           /* sum of the live connections' reserved costs */
    z_stream *shared_tx[16];   /* by window bits (9-15): no-context-takeover compressors */
    z_stream *shared_rx;       /* window 15: decompressor for peers that reset per message */
    dx__pmd *rx_owner;
    uint8_t *buf;              /* DX_PMD_CHUNK + 4: compressed output before it is framed */
    void *spare;               /* a session receive buffer kept between messages */
    dx__pmd_stats st;
};

struct dx__pmd {
    dx__pmd_ctx *ctx;
    z_stream *tx; /* own compressor (our context kept between messages) */
    z_stream *rx; /* own decompressor */
    dx__pmd_params p;
    size_t cost;  /* reserved in ctx->reserved */
    uint8_t role;
    uint8_t rx_state;
    bool rx_final; /* the peer ended the deflate stream (BFINAL) in this message */
};

/* ---- negotiation -------------------------------------------------------- */

typedef struct offer {
    bool snct, cnct;
    int sbits; /* 0: absent, else 8-15 */
    int cbits; /* 0: absent, -1: present without a value, else 8-15 */
} offer;

static bool name_is(const char *s, size_t n, const char *lit)
{
    return strlen(lit) == n && memcmp(s, lit, n) == 0;
}

static bool name_is_ci(const char *s, size_t n, const char *lit)
{
    if (strlen(lit) != n)
        return false;
    for (size_t i = 0; i < n; i++) {
        char a = s[i], b = lit[i];
        if (a >= 'A' && a <= 'Z')
            a = (char)(a - 'A' + 'a');
        if (a != b)
            return false;
    }
    return true;
}

/* "8" .. "15", no sign, no leading zero (RFC 7692 §7.1.2.1: 1*DIGIT in
 * 8-15; we refuse "08" as the ABNF's intent is a plain number). -1: bad. */
static int bits_value(const char *v, size_t n)
{
    if (!v || n == 0 || n > 2 || v[0] == '0')
        return -1;
    int x = 0;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            return -1;
        x = x * 10 + (v[i] - '0');
    }
    return x >= 8 && x <= 15 ? x : -1;
}

/* One element's parameters; NULL, or the reason it cannot be used.
 * `response`: client_max_window_bits needs a value (§7.1.2.2). */
static const char *parse_params(const dx_ws_ext_offer *e, bool response, offer *o)
{
    memset(o, 0, sizeof *o);
    for (size_t i = 0; i < e->n_params; i++) {
        const dx_ws_ext_param *pa = &e->params[i];
        if (name_is(pa->name, pa->name_len, "server_no_context_takeover") ||
            name_is(pa->name, pa->name_len, "client_no_context_takeover")) {
            bool *f = pa->name[0] == 's' ? &o->snct : &o->cnct;
            if (*f)
                return "repeated no_context_takeover parameter";
            if (pa->value)
                return "no_context_takeover parameter with a value";
            *f = true;
        } else if (name_is(pa->name, pa->name_len, "server_max_window_bits")) {
            if (o->sbits)
                return "repeated server_max_window_bits";
            int b = bits_value(pa->value, pa->value_len);
            if (b < 0)
                return "server_max_window_bits without a value in 8-15";
            o->sbits = b;
        } else if (name_is(pa->name, pa->name_len, "client_max_window_bits")) {
            if (o->cbits)
                return "repeated client_max_window_bits";
            if (!pa->value && !response) {
                o->cbits = -1;
                continue;
            }
            int b = bits_value(pa->value, pa->value_len);
            if (b < 0)
                return response ? "client_max_window_bits without a value in 8-15"
                                : "client_max_window_bits value not in 8-15";
            o->cbits = b;
        } else {
            return "unknown parameter";
        }
    }
    return NULL;
}

int dx__pmd_response(const dx__pmd_params *p, char *out, size_t cap)
{
    bool name_server_bits = p->named & DX_PMD_NAME_SBITS, name_client_bits = p->named & DX_PMD_NAME_CBITS;
    int n = snprintf(out, cap, "%s%s%s", DX_PMD_NAME, p->server_nct ? "; server_no_context_takeover" : "",
                     p->client_nct ? "; client_no_context_takeover" : "");
    if (n < 0 || (size_t)n >= cap)
        return DX_ENOSPC;
    size_t len = (size_t)n;
    if (name_server_bits) {
        n = snprintf(out + len, cap - len, "; server_max_window_bits=%u", p->server_bits);
        if (n < 0 || (size_t)n >= cap - len)
            return DX_ENOSPC;
        len += (size_t)n;
    }
    if (name_client_bits) {
        n = snprintf(out + len, cap - len, "; client_max_window_bits=%u", p->client_bits);
        if (n < 0 || (size_t)n >= cap - len)
            return DX_ENOSPC;
        len += (size_t)n;
    }
    return (int)len;
}

static unsigned opt_bits(unsigned v) { return v >= 8 && v <= 15 ? v : 15; }

int dx__pmd_server_accept(const dx_deflate_options *o, const dx_ws_ext_offer *exts, size_t n, bool force_nct,
                          dx__pmd_params *out, char *resp, size_t cap, const char **why)
{
    const char *reason = NULL;
    for (size_t i = 0; i < n; i++) {
        const dx_ws_ext_offer *e = &exts[i];
        if (!name_is_ci(e->name, e->name_len, DX_PMD_NAME))
            continue;
        offer f;
        const char *bad = parse_params(e, false, &f);
        if (bad) {
            reason = bad; /* §7: decline this offer, try the next */
            continue;
        }
        dx__pmd_params p = {0};
        p.server_nct = f.snct || o->server_no_context_takeover || force_nct;
        p.client_nct = f.cnct || o->client_no_context_takeover || force_nct;
        /* §7.1.2.1: the server uses at most what the client asked for,
         * and names it then. A smaller window of our own choosing needs no
         * announcement (the client inflates with whatever it allowed), and
         * naming it unasked, though allowed, is refused by some browsers. */
        unsigned sb = opt_bits(o->server_max_window_bits);
        if (f.sbits && (unsigned)f.sbits < sb)
            sb = (unsigned)f.sbits;
        p.server_bits = (uint8_t)sb;
        bool name_sb = f.sbits != 0;
        /* §7.1.2.2: client_max_window_bits may be answered only when
         * offered; its value limits the client's window (our inflater). */
        unsigned cb = 15;
        bool name_cb = false;
        if (f.cbits) {
            cb = opt_bits(o->client_max_window_bits);
            if (f.cbits > 0 && (unsigned)f.cbits < cb)
                cb = (unsigned)f.cbits;
            name_cb = cb < 15;
        }
        p.client_bits = (uint8_t)cb;
        p.named = (uint8_t)((name_sb ? DX_PMD_NAME_SBITS : 0) | (name_cb ? DX_PMD_NAME_CBITS : 0));
        if (dx__pmd_response(&p, resp, cap) < 0) {
            reason = "response does not fit";
            continue;
        }
        *out = p;
        if (why)
            *why = NULL;
        return 1;
    }
    if (why)
        *why = reason;
    return 0;
}

int dx__pmd_client_offer(const dx_deflate_options *o, char *out, size_t cap)
{
    if ((o->server_max_window_bits && (o->server_max_window_bits < 8 || o->server_max_window_bits > 15)) ||
        (o->client_max_window_bits && (o->client_max_window_bits < 8 || o->client_max_window_bits > 15)))
        return DX_EINVAL;
    char sb[48] = "", cb[16] = "";
    if (o->server_max_window_bits)
        snprintf(sb, sizeof sb, "; server_max_window_bits=%u", o->server_max_window_bits);
    if (o->client_max_window_bits)
        snprintf(cb, sizeof cb, "=%u", o->client_max_window_bits);
    /* client_max_window_bits is always offered: the server may then limit
     * our window (we can compress with any of 9-15; 8: uncompressed). */
    int n = snprintf(out, cap, "%s%s%s%s; client_max_window_bits%s", DX_PMD_NAME,
                     o->server_no_context_takeover ? "; server_no_context_takeover" : "",
                     o->client_no_context_takeover ? "; client_no_context_takeover" : "", sb, cb);
    if (n < 0 || (size_t)n >= cap)
        return DX_ENOSPC;
    return n;
}

int dx__pmd_client_accept(const dx_deflate_options *o, const dx_ws_ext_offer *ext, dx__pmd_params *out,
                          const char **why)
{
    offer f;
    const char *bad = parse_params(ext, true, &f);
    if (!bad && o->server_no_context_takeover && !f.snct)
        bad = "server_no_context_takeover was offered but not answered"; /* §7.1.1.1 */
    if (!bad && o->server_max_window_bits && !f.sbits)
        bad = "server_max_window_bits was offered but not answered"; /* §7.1.2.1 */
    if (!bad && o->server_max_window_bits && (unsigned)f.sbits > o->server_max_window_bits)
        bad = "server_max_window_bits above the value offered";
    if (!bad && f.cbits > 0 && o->client_max_window_bits && (unsigned)f.cbits > o->client_max_window_bits)
        bad = "client_max_window_bits above the value offered";
    if (bad) {
        *why = bad;
        return DX_EEXTENSION;
    }
    dx__pmd_params p = {0};
    p.server_nct = f.snct;
    p.client_nct = f.cnct || o->client_no_context_takeover;
    p.server_bits = (uint8_t)(f.sbits ? f.sbits : 15);
    unsigned cb = f.cbits > 0 ? (unsigned)f.cbits : 15;
    if (o->client_max_window_bits && o->client_max_window_bits < cb)
        cb = o->client_max_window_bits;
    p.client_bits = (uint8_t)cb;
    *out = p;
    *why = NULL;
    return 0;
}

/* dx_deflate_options_parse (duplex/deflate.h): *o changes only on success. */
int dx_deflate_options_parse(dx_deflate_options *o, const char *params)
{
    if (!o || !params)
        return DX_EINVAL;
    char buf[512];
    const char *s = params + strspn(params, " \t");
    bool named = strncmp(s, DX_PMD_NAME, strlen(DX_PMD_NAME)) == 0 &&
                 (s[strlen(DX_PMD_NAME)] == '\0' || strchr(" \t;", s[strlen(DX_PMD_NAME)]));
    int n = named ? snprintf(buf, sizeof buf, "%s", s) : snprintf(buf, sizeof buf, "%s%s%s", DX_PMD_NAME,
                                                                   *s ? "; " : "", s);
    if (n < 0 || (size_t)n >= sizeof buf || strchr(buf, ','))
        return DX_EINVAL; /* one element only */
    dx_ws_ext_offer e;
    size_t ne = 0;
    if (dx__ws_ext_parse(buf, (size_t)n, &e, 1, &ne) || ne != 1)
        return DX_EINVAL;
    offer f;
    if (parse_params(&e, false, &f))
        return DX_EINVAL;
    o->enable = 1;
    o->server_no_context_takeover = f.snct;
    o->client_no_context_takeover = f.cnct;
    o->server_max_window_bits = (unsigned)f.sbits;
    o->client_max_window_bits = f.cbits > 0 ? (unsigned)f.cbits : 0;
    return 0;
}

/* ---- memory ---------------------------------------------------------------- */

#define ZHDR 16u /* room before each zlib block for its size (keeps 16-byte alignment) */

static voidpf z_alloc(voidpf opaque, uInt items, uInt size)
{
    dx__pmd_ctx *ctx = opaque;
    if (size && items > (SIZE_MAX - ZHDR) / size)
        return Z_NULL;
    size_t n = (size_t)items * size;
    uint8_t *p = dx__alloc(ctx->seams, n + ZHDR);
    if (!p)
        return Z_NULL;
    memcpy(p, &n, sizeof n);
    ctx->mem += n + ZHDR;
    return p + ZHDR;
}

static void z_free(voidpf opaque, voidpf addr)
{
    dx__pmd_ctx *ctx = opaque;
    if (!addr)
        return;
    uint8_t *p = (uint8_t *)addr - ZHDR;
    size_t n;
    memcpy(&n, p, sizeof n);
    ctx->mem -= n + ZHDR;
    dx__free(ctx->seams, p);
}

/* A z_stream struct, counted like zlib's own blocks. */
static z_stream *zs_alloc(dx__pmd_ctx *ctx)
{
    z_stream *z = z_alloc(ctx, 1, sizeof *z);
    if (!z)
        return NULL;
    memset(z, 0, sizeof *z);
    z->zalloc = z_alloc;
    z->zfree = z_free;
    z->opaque = ctx;
    return z;
}

static z_stream *deflater_new(dx__pmd_ctx *ctx, unsigned bits, int *err)
{
    z_stream *z = zs_alloc(ctx);
    if (!z) {
        *err = DX_ENOMEM;
        return NULL;
    }
    int r = deflateInit2(z, ctx->level, Z_DEFLATED, -(int)bits, ctx->mem_level, Z_DEFAULT_STRATEGY);
    if (r != Z_OK) {
        z_free(ctx, z);
        *err = r == Z_MEM_ERROR ? DX_ENOMEM : DX_EINTERNAL;
        return NULL;
    }
    return z;
}

/* zlib-based peers asked for window 8 compress with 9 (zlib cannot make
 * 8): inflate with at least 9, which accepts both. */
static z_stream *inflater_new(dx__pmd_ctx *ctx, unsigned bits, int *err)
{
    z_stream *z = zs_alloc(ctx);
    if (!z) {
        *err = DX_ENOMEM;
        return NULL;
    }
    int r = inflateInit2(z, -(int)(bits < 9 ? 9 : bits));
    if (r != Z_OK) {
        z_free(ctx, z);
        *err = r == Z_MEM_ERROR ? DX_ENOMEM : DX_EINTERNAL;
        return NULL;
    }
    return z;
}

static void deflater_free(dx__pmd_ctx *ctx, z_stream *z)
{
    if (z) {
        deflateEnd(z);
        z_free(ctx, z);
    }
}

static void inflater_free(dx__pmd_ctx *ctx, z_stream *z)
{
    if (z) {
        inflateEnd(z);
        z_free(ctx, z);
    }
}

size_t dx__pmd_deflate_cost(unsigned bits, int mem_level)
{
    /* zconf.h: deflate needs (1 << (windowBits+2)) + (1 << (memLevel+9))
     * bytes, plus its state struct (~5.8 KB) and ours. */
    return ((size_t)1 << (bits + 2)) + ((size_t)1 << (mem_level + 9)) + 6u * 1024u + 5u * ZHDR +
           sizeof(z_stream);
}

size_t dx__pmd_inflate_cost(unsigned bits)
{
    /* zconf.h: inflate needs 1 << windowBits, plus its state (~7.1 KB). */
    return ((size_t)1 << (bits < 9 ? 9 : bits)) + 7u * 1024u + 3u * ZHDR + sizeof(z_stream);
}

/* ---- ctx --------------------------------------------------------------------- */

dx__pmd_ctx *dx__pmd_ctx_new(const dx_seams *seams, const dx_deflate_options *o)
{
    dx__pmd_ctx *ctx = dx__alloc(seams, sizeof *ctx);
    if (!ctx)
        return NULL;
    memset(ctx, 0, sizeof *ctx);
    ctx->seams = seams;
    ctx->level = o->level >= 1 && o->level <= 9 ? o->level : DX_PMD_DEFAULT_LEVEL;
    ctx->mem_level = o->mem_level >= 1 && o->mem_level <= 9 ? o->mem_level : DX_PMD_DEFAULT_MEM_LEVEL;
    ctx->min_size = o->min_size ? o->min_size : DX_PMD_DEFAULT_MIN_SIZE;
    return ctx;
}

void dx__pmd_ctx_free(dx__pmd_ctx *ctx)
{
    if (!ctx)
        return;
    for (size_t i = 0; i < 16; i++)
        deflater_free(ctx, ctx->shared_tx[i]);
    inflater_free(ctx, ctx->shared_rx);
    dx__free(ctx->seams, ctx->buf);
    dx__free(ctx->seams, ctx->spare);
    dx__free(ctx->seams, ctx);
}

size_t dx__pmd_ctx_mem(const dx__pmd_ctx *ctx) { return ctx ? ctx->mem : 0; }
size_t dx__pmd_ctx_reserved(const dx__pmd_ctx *ctx) { return ctx ? ctx->reserved : 0; }

void dx__pmd_reserve(dx__pmd *pm, size_t cost)
{
    pm->ctx->reserved += cost - pm->cost;
    pm->cost = cost;
}
const dx__pmd_stats *dx__pmd_ctx_stats(const dx__pmd_ctx *ctx) { return &ctx->st; }
int dx__pmd_ctx_mem_level(const dx__pmd_ctx *ctx) { return ctx->mem_level; }

void *dx__pmd_spare_take(dx__pmd *pm)
{
    void *b = pm->ctx->spare;
    pm->ctx->spare = NULL;
    return b;
}

bool dx__pmd_spare_give(dx__pmd *pm, void *buf)
{
    if (pm->ctx->spare)
        return false;
    pm->ctx->spare = buf;
    return true;
}

/* ---- a connection ------------------------------------------------------------- */

dx__pmd *dx__pmd_new(dx__pmd_ctx *ctx, int role, const dx__pmd_params *p)
{
    dx__pmd *pm = dx__alloc(ctx->seams, sizeof *pm);
    if (!pm)
        return NULL;
    memset(pm, 0, sizeof *pm);
    pm->ctx = ctx;
    pm->p = *p;
    pm->role = (uint8_t)role;
    return pm;
}

void dx__pmd_free(dx__pmd *pm)
{
    if (!pm)
        return;
    dx__pmd_ctx *ctx = pm->ctx;
    if (ctx->rx_owner == pm) {
        inflateReset(ctx->shared_rx);
        ctx->rx_owner = NULL;
    }
    deflater_free(ctx, pm->tx);
    inflater_free(ctx, pm->rx);
    ctx->reserved -= pm->cost;
    dx__free(ctx->seams, pm);
}

const dx__pmd_params *dx__pmd_params_of(const dx__pmd *pm) { return &pm->p; }

static bool tx_nct(const dx__pmd *pm) { return pm->role == DX_ROLE_SERVER ? pm->p.server_nct : pm->p.client_nct; }
static bool rx_nct(const dx__pmd *pm) { return pm->role == DX_ROLE_SERVER ? pm->p.client_nct : pm->p.server_nct; }
static unsigned tx_bits(const dx__pmd *pm)
{
    return pm->role == DX_ROLE_SERVER ? pm->p.server_bits : pm->p.client_bits;
}
static unsigned rx_bits(const dx__pmd *pm)
{
    return pm->role == DX_ROLE_SERVER ? pm->p.client_bits : pm->p.server_bits;
}

bool dx__pmd_want_compress(const dx__pmd *pm, size_t len)
{
    /* Window 8: zlib's raw deflate cannot make it (deflateInit2 refuses
     * -8), and a 9-bit window could reach past what the peer keeps: such
     * messages go uncompressed, which RSV1 being per message allows. */
    return len > 0 && len >= pm->ctx->min_size && tx_bits(pm) > 8;
}

bool dx__pmd_tx_stateless(const dx__pmd *pm, unsigned *bits)
{
    *bits = tx_bits(pm);
    return tx_nct(pm);
}

static uint8_t *out_buf(dx__pmd_ctx *ctx)
{
    if (!ctx->buf)
        ctx->buf = dx__alloc(ctx->seams, DX_PMD_CHUNK + 4);
    return ctx->buf;
}

static z_stream *shared_deflater(dx__pmd_ctx *ctx, unsigned bits, int *err)
{
    if (!ctx->shared_tx[bits])
        ctx->shared_tx[bits] = deflater_new(ctx, bits, err);
    return ctx->shared_tx[bits];
}

static const uint8_t TAIL[4] = {0x00, 0x00, 0xff, 0xff};

int dx__pmd_compress(dx__pmd *pm, const uint8_t *in, size_t len, dx__pmd_emit emit, void *ud)
{
    dx__pmd_ctx *ctx = pm->ctx;
    unsigned bits = tx_bits(pm);
    bool nct = tx_nct(pm);
    int err = DX_ENOMEM;
    z_stream *z = nct ? shared_deflater(ctx, bits, &err) : pm->tx ? pm->tx : (pm->tx = deflater_new(ctx, bits, &err));
    uint8_t *buf = out_buf(ctx);
    if (!z || !buf)
        return err;
    const size_t cap = DX_PMD_CHUNK + 4;
    size_t have = 0, wire = 0;
    bool first = true;
    int rc = 0;
    z->next_in = (Bytef *)(uintptr_t)in;
    z->avail_in = 0;
    size_t left = len;
    for (;;) {
        /* avail_in is a uInt: feed a large message in slices. */
        if (z->avail_in == 0 && left) {
            uInt take = left > (1u << 30) ? (1u << 30) : (uInt)left;
            z->avail_in = take;
            left -= take;
        }
        z->next_out = buf + have;
        z->avail_out = (uInt)(cap - have);
        int r = deflate(z, Z_SYNC_FLUSH);
        if (r != Z_OK && r != Z_BUF_ERROR) {
            rc = r == Z_MEM_ERROR ? DX_ENOMEM : DX_EINTERNAL;
            goto out;
        }
        have = cap - z->avail_out;
        if (z->avail_out == 0 || z->avail_in || left) {
            /* More output may follow: the last 4 bytes may be the tail, so
             * they stay for the next frame. */
            if (have > 4) {
                rc = emit(ud, first, false, buf, have - 4);
                wire += have - 4;
                first = false;
                if (rc)
                    goto out;
                memmove(buf, buf + have - 4, 4);
                have = 4;
            }
            continue;
        }
        break;
    }
    /* Everything flushed: the output ends with the empty stored block of
     * Z_SYNC_FLUSH, whose 00 00 ff ff is not sent (§7.2.1). */
    if (have < 4 || memcmp(buf + have - 4, TAIL, 4) != 0) {
        rc = DX_EINTERNAL;
        goto out;
    }
    rc = emit(ud, first, true, buf, have - 4);
    wire += have - 4;
    if (rc == 0) {
        ctx->st.msgs_out++;
        ctx->st.raw_out += len;
        ctx->st.wire_out += wire;
    }
out:
    if (nct || rc)
        deflateReset(z); /* §7.2.1: no context kept (or a message half made) */
    return rc;
}

int dx__pmd_compress_once(dx__pmd_ctx *ctx, unsigned bits, const uint8_t *in, size_t len, size_t hdr_room,
                          void *(*alloc)(void *ud, size_t size), void *ud, uint8_t **out, size_t *out_len)
{
    int err = DX_ENOMEM;
    z_stream *z = shared_deflater(ctx, bits, &err);
    if (!z)
        return err;
    if (len > (1u << 30))
        return DX_ELIMIT; /* one slice only here; larger messages compress per connection */
    size_t bound = deflateBound(z, (uLong)len) + 16; /* + the sync flush's empty block */
    uint8_t *buf = alloc(ud, hdr_room + bound);
    if (!buf)
        return DX_ENOMEM;
    z->next_in = (Bytef *)(uintptr_t)in;
    z->avail_in = (uInt)len;
    z->next_out = buf + hdr_room;
    z->avail_out = (uInt)bound;
    int r = deflate(z, Z_SYNC_FLUSH);
    size_t have = bound - z->avail_out;
    int rc = 0;
    if ((r != Z_OK && r != Z_BUF_ERROR) || z->avail_in || z->avail_out == 0)
        rc = r == Z_MEM_ERROR ? DX_ENOMEM : DX_EINTERNAL;
    else if (have < 4 || memcmp(buf + hdr_room + have - 4, TAIL, 4) != 0)
        rc = DX_EINTERNAL;
    deflateReset(z);
    *out = buf; /* the caller frees it on error too */
    if (rc)
        return rc;
    *out_len = have - 4;
    ctx->st.msgs_out++;
    ctx->st.raw_out += len;
    ctx->st.wire_out += have - 4;
    return 0;
}

/* ---- receiving ------------------------------------------------------------------ */

int dx__pmd_rx_begin(dx__pmd *pm)
{
    dx__pmd_ctx *ctx = pm->ctx;
    int err = DX_ENOMEM;
    pm->rx_final = false;
    if (pm->rx) {
        pm->rx_state = RX_OWN;
        return 0;
    }
    if (rx_nct(pm) && !ctx->rx_owner) {
        if (!ctx->shared_rx && !(ctx->shared_rx = inflater_new(ctx, 15, &err)))
            return err;
        ctx->rx_owner = pm;
        pm->rx_state = RX_SHARED;
        return 0;
    }
    /* The peer keeps its context (or the shared one is taken): a
     * decompressor of our own, with the window the peer may use. */
    if (!(pm->rx = inflater_new(ctx, rx_nct(pm) ? 15 : rx_bits(pm), &err)))
        return err;
    pm->rx_state = RX_OWN;
    return 0;
}

int dx__pmd_inflate(dx__pmd *pm, const uint8_t *in, size_t len, bool last, dx__pmd_out out, void *ud)
{
    dx__pmd_ctx *ctx = pm->ctx;
    z_stream *z = pm->rx_state == RX_SHARED ? ctx->shared_rx : pm->rx;
    if (!z)
        return DX_EINTERNAL;
    uint8_t obuf[4096];
    ctx->st.wire_in += len;
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1 && !last)
            break;
        if (pm->rx_final)
            break; /* after a final block nothing more is inflated */
        const uint8_t *p = pass ? TAIL : in; /* §7.2.2: append 00 00 ff ff */
        size_t left = pass ? 4 : len;
        z->next_in = (Bytef *)(uintptr_t)p;
        z->avail_in = 0;
        for (;;) {
            if (z->avail_in == 0 && left) {
                uInt take = left > (1u << 30) ? (1u << 30) : (uInt)left;
                z->avail_in = take;
                left -= take;
            }
            z->next_out = obuf;
            z->avail_out = sizeof obuf;
            int r = inflate(z, Z_SYNC_FLUSH);
            size_t got = sizeof obuf - z->avail_out;
            if (got) {
                ctx->st.raw_in += got;
                int rc = out(ud, obuf, got);
                if (rc)
                    return rc;
            }
            if (r == Z_STREAM_END) {
                pm->rx_final = true; /* BFINAL: the rest of the message is ignored */
                break;
            }
            if (r == Z_MEM_ERROR)
                return DX_ENOMEM;
            if (r != Z_OK && r != Z_BUF_ERROR)
                return DX_EPROTO; /* Z_DATA_ERROR, Z_NEED_DICT: not a raw deflate stream */
            if (z->avail_out == 0)
                continue; /* more output may be pending */
            if (z->avail_in == 0 && left == 0)
                break;
            if (r == Z_BUF_ERROR && got == 0)
                return DX_EPROTO; /* input left, room for output, no progress */
        }
    }
    return 0;
}

void dx__pmd_rx_end(dx__pmd *pm)
{
    dx__pmd_ctx *ctx = pm->ctx;
    ctx->st.msgs_in++;
    if (pm->rx_state == RX_SHARED) {
        inflateReset(ctx->shared_rx);
        ctx->rx_owner = NULL;
    } else if (pm->rx_state == RX_OWN) {
        if (rx_nct(pm)) {
            inflater_free(ctx, pm->rx); /* an idle connection holds no decompressor */
            pm->rx = NULL;
        } else if (pm->rx_final) {
            inflateReset(pm->rx); /* the peer ended its stream: it starts a new one */
        }
    }
    pm->rx_state = RX_IDLE;
    pm->rx_final = false;
}

int dx__pmd_rx_park(dx__pmd *pm, bool failed)
{
    dx__pmd_ctx *ctx = pm->ctx;
    if (pm->rx_state != RX_SHARED)
        return 0;
    int rc = 0;
    if (!failed) {
        /* The message goes on in a later read: it keeps a copy of the
         * shared decompressor's state, which then serves others. */
        z_stream *z = zs_alloc(ctx);
        if (z && inflateCopy(z, ctx->shared_rx) == Z_OK) {
            pm->rx = z;
            pm->rx_state = RX_OWN;
        } else {
            if (z)
                z_free(ctx, z);
            rc = DX_ENOMEM;
        }
    }
    inflateReset(ctx->shared_rx);
    ctx->rx_owner = NULL;
    if (rc || failed)
        pm->rx_state = RX_IDLE;
    return rc;
}

/* ---- the handshake's half for the codec's users (duplex/deflate.h) ---------- */

static void info_of(const dx__pmd_params *p, dx_deflate_info *i)
{
    *i = (dx_deflate_info){.server_no_context_takeover = p->server_nct,
                           .client_no_context_takeover = p->client_nct,
                           .server_max_window_bits = p->server_bits,
                           .client_max_window_bits = p->client_bits};
}

int dx_deflate_client_offer(const dx_deflate_options *o, char *out, size_t cap)
{
    if (!o || !out)
        return DX_EINVAL;
    return dx__pmd_client_offer(o, out, cap);
}

int dx_deflate_server_accept(const dx_deflate_options *o, const char *offers, char *resp, size_t cap,
                             dx_deflate_info *info)
{
    if (!o || !offers || !resp || !info)
        return DX_EINVAL;
    dx_ws_ext_offer exts[DX_WS_DEFAULT_MAX_EXTS];
    size_t n = 0;
    if (dx__ws_ext_parse(offers, strlen(offers), exts, DX_WS_DEFAULT_MAX_EXTS, &n))
        return DX_EEXTENSION;
    char r[DX__PMD_RESPONSE_MAX];
    dx__pmd_params p;
    if (!dx__pmd_server_accept(o, exts, n, false, &p, r, sizeof r, NULL))
        return 0;
    size_t len = strlen(r);
    if (len >= cap)
        return DX_ENOSPC;
    memcpy(resp, r, len + 1);
    info_of(&p, info);
    return 1;
}

int dx_deflate_client_check(const dx_deflate_options *o, const char *response, dx_deflate_info *info)
{
    if (!o || !response || !info)
        return DX_EINVAL;
    dx_ws_ext_offer exts[4];
    size_t n = 0;
    if (dx__ws_ext_parse(response, strlen(response), exts, 4, &n))
        return DX_EEXTENSION;
    if (n == 0)
        return 0;
    /* We offered one extension, once (RFC 6455 §9.1: nothing else may come). */
    if (n > 1 || !name_is_ci(exts[0].name, exts[0].name_len, DX_PMD_NAME))
        return DX_EEXTENSION;
    dx__pmd_params p;
    const char *why;
    if (dx__pmd_client_accept(o, &exts[0], &p, &why))
        return DX_EEXTENSION;
    info_of(&p, info);
    return 1;
}
