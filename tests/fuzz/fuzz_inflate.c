/*
 * tests/fuzz/fuzz_inflate.c: permessage-deflate receiving (src/proto/
 * deflate.c through src/proto/session.c) under libFuzzer.
 *
 * Input: byte 0 picks the configuration, bytes 1-2 a split point, byte 3 a
 * fragment size, the rest is either (bit 0 clear) compressed payload the
 * target wraps into one message of frames of that size, RSV1 on the first,
 * or (bit 0 set) a raw stream of server frames (unmasked: we are the
 * client) as the peer sent them. Bit 1: the peer keeps its context
 * (server_no_context_takeover off); bits 2-3: max_message (64, 1000, 64 KiB,
 * 1 MiB); bit 4: text messages.
 * Invariants (abort() when broken):
 *  1. no message delivered is longer than max_message;
 *  2. the allocator never holds more than max_message plus a fixed bound
 *     (decompressor, rx slack), however much the input would inflate to;
 *  3. the stream fed whole and fed in two pieces gives the same messages
 *     and the same outcome;
 *  4. nothing leaks (every allocation is freed at the end).
 */
#include "proto/deflate.h"
#include "proto/frame.h"
#include "proto/session.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "invariant broken: %s (line %d)\n", #cond, __LINE__);                 \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* What the decompressor and the session may hold besides the message:
 * zlib's inflate state and 32 KiB window (twice: the shared one and a
 * parked copy), rx growth slack, a control frame. */
#define BOUND (256u * 1024u)

typedef struct acct {
    size_t cur, peak;
    long live;
} acct;

static void *a_realloc(void *ud, void *ptr, size_t size)
{
    acct *a = ud;
    size_t old = 0;
    uint8_t *base = ptr ? (uint8_t *)ptr - 16 : NULL;
    if (base)
        memcpy(&old, base, sizeof old);
    if (size == 0) {
        if (base) {
            a->cur -= old;
            a->live--;
            free(base);
        }
        return NULL;
    }
    uint8_t *n = realloc(base, size + 16);
    if (!n)
        return NULL;
    if (!base)
        a->live++;
    memcpy(n, &size, sizeof size);
    a->cur = a->cur - old + size;
    if (a->cur > a->peak)
        a->peak = a->cur;
    return n + 16;
}

static int a_random(void *ud, void *buf, size_t len)
{
    (void)ud;
    memset(buf, 7, len);
    return 0;
}

static uint64_t a_now(void *ud)
{
    (void)ud;
    return 0;
}

typedef struct run {
    dx__session s; /* first */
    dx__session_cfg cfg;
    uint64_t hash;
    size_t msgs;
    uint64_t max;
} run;

static void on_message(dx__session *s, int op, const uint8_t *p, size_t len)
{
    run *r = (run *)(void *)s;
    CHECK(len <= r->max);
    r->msgs++;
    r->hash = r->hash * 1099511628211u ^ (uint64_t)op ^ len;
    for (size_t i = 0; i < len; i += 61)
        r->hash = r->hash * 1099511628211u ^ p[i];
}

static int put(dx__session *s, int kind, unsigned opcode, bool fin, unsigned rsv, const uint8_t *data, size_t len)
{
    (void)s, (void)kind, (void)opcode, (void)fin, (void)rsv, (void)data, (void)len;
    return 0;
}

/* Feeds `in` (split at `split`) to a fresh client session; returns the
 * outcome. */
static int feed(uint8_t cfgb, uint8_t *in, size_t len, size_t split, run *r, acct *a)
{
    static const uint64_t maxes[4] = {64, 1000, 65536, 1u << 20};
    dx_seams seams = {.realloc = a_realloc, .random = a_random, .now_ns = a_now, .ud = a};
    memset(r, 0, sizeof *r);
    r->max = maxes[(cfgb >> 2) & 3];
    r->cfg = (dx__session_cfg){
        .limits = {.max_frame = r->max + 64, .max_message = r->max},
        .role = DX_ROLE_CLIENT,
        .auto_pong = true,
        .seams = &seams,
        .on_message = on_message,
        .put = put,
    };
    dx_deflate_options o = {.enable = 1};
    dx__pmd_ctx *ctx = dx__pmd_ctx_new(&seams, &o);
    CHECK(ctx);
    bool takeover = cfgb & 2;
    dx__pmd_params p = {.server_nct = !takeover, .client_nct = 1, .server_bits = 15, .client_bits = 15};
    dx__session_init(&r->s, &r->cfg, 0);
    dx__pmd *pm = dx__pmd_new(ctx, DX_ROLE_CLIENT, &p);
    CHECK(pm);
    dx__session_set_pmd(&r->s, pm);
    int rc = dx__session_recv(&r->s, in, split);
    if (rc == 0 && split < len)
        rc = dx__session_recv(&r->s, in + split, len - split);
    CHECK(a->peak <= r->max + BOUND);
    dx__session_deinit(&r->s);
    dx__pmd_ctx_free(ctx);
    CHECK(a->live == 0);
    return rc == DX_ECLOSED ? 0 : rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 4)
        return 0;
    uint8_t cfgb = data[0];
    size_t split = (size_t)data[1] << 8 | data[2];
    size_t frag = data[3] ? data[3] : 256;
    const uint8_t *body = data + 4;
    size_t blen = size - 4;
    /* Build the stream: raw, or the body wrapped into one message. */
    size_t cap = blen + (blen / frag + 1) * DX_FRAME_HEADER_MAX + 16;
    uint8_t *stream = malloc(cap);
    CHECK(stream);
    size_t n = 0;
    if (cfgb & 1) {
        memcpy(stream, body, blen);
        n = blen;
    } else {
        unsigned op = (cfgb & 16) ? DX_OP_TEXT : DX_OP_BINARY;
        size_t off = 0;
        bool first = true;
        do {
            size_t take = blen - off < frag ? blen - off : frag;
            n += dx__frame_header_write(stream + n, first ? op : DX_OP_CONT, off + take == blen,
                                        first ? DX_RSV1 : 0, take, NULL);
            memcpy(stream + n, body + off, take);
            n += take;
            off += take;
            first = false;
        } while (off < blen);
    }
    if (split > n)
        split = n;
    /* Whole, then split: the decoder unmasks nothing (unmasked frames), so
     * one copy serves both. */
    uint8_t *copy = malloc(n ? n : 1);
    CHECK(copy);
    memcpy(copy, stream, n);
    acct a1 = {0}, a2 = {0};
    run r1, r2;
    int rc1 = feed(cfgb, stream, n, n, &r1, &a1);
    int rc2 = feed(cfgb, copy, n, split, &r2, &a2);
    if (rc1 != rc2)
        fprintf(stderr, "whole: rc %d, %zu messages; split at %zu: rc %d, %zu messages\n", rc1, r1.msgs, split, rc2,
                r2.msgs);
    CHECK(rc1 == rc2);
    CHECK(r1.msgs == r2.msgs);
    CHECK(r1.hash == r2.hash);
    free(copy);
    free(stream);
    return 0;
}
