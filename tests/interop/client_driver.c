/*
 * tests/interop/client_driver.c: the duplex client against a real peer's
 * echo server, for tests/interop/client_peers.py.
 *
 * Uses only the public headers (duplex/duplex.h, server.h, client.h), like
 * any application would. Two modes:
 *
 *   client_driver echo URL [--ca FILE] [--insecure] [--label L] [--timeout S]
 *       connects; echoes text and binary messages of 0, 125, 126, 65535,
 *       65536 bytes and 4 MiB (the peer may fragment its echoes); asks
 *       for a reply the peer sends in three frames and checks it arrives
 *       as one message; sends a ping and waits for the pong (seen through the frame trace, which
 *       also checks that every frame we send is masked and none we receive
 *       is); closes with 4001 "bye" and expects the peer's close to carry
 *       4001.
 *   client_driver error URL --want TEXT [--err CODE] [--ca FILE] [--label L]
 *       expects the connection attempt to fail through on_error with a
 *       message containing TEXT (and error CODE, e.g. -22 for DX_ETLS), and
 *       never to open.
 *
 * With --deflate PARAMS (echo mode; tests/interop/deflate_peers.py) the
 * client offers permessage-deflate with those extension parameters
 * ("" for none: dx_deflate_options_parse) and --expect-deflate says what must
 * come of it: "refused" (the peer answers the offer with an HTTP error: the
 * attempt fails through on_error and never opens, as in error mode), "none"
 * (opens without the extension), "on" (negotiated, every parameter at its
 * default) or the parameters the response must carry ("server_no_context_takeover;
 * client_max_window_bits=12"). Then also: what dx_conn_deflate() reports
 * matches; the peer's own view agrees (the peer's deflate echo server
 * answers the text "negotiated?" with the parameters it accepted, as JSON);
 * every size is also echoed as compressible binary; the peer's data
 * frames came with RSV1 (compressed) and ours went with RSV1 when
 * negotiated, none either way when not.
 *
 * Output: "plan N", then one "ok - L: NAME" or "not ok - L: NAME: WHY" per
 * case. Exit status 0 only if every case passed. Bounded: a watchdog stops
 * the loop after --timeout seconds (default 60) and fails what is left.
 */
#define _GNU_SOURCE
#include "duplex/client.h"
#include "duplex/deflate.h"
#include "duplex/duplex.h"
#include "duplex/server.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const size_t SIZES[] = {0, 125, 126, 65535, 65536, 4u << 20};
#define NSIZES (sizeof SIZES / sizeof *SIZES)
/* text and binary of each size, a fragmented reply, ping, close, masking */
#define ECHO_PLAN (2 * NSIZES + 4)
/* with --deflate: compressible binary of each size too; negotiated as
 * expected, the peer agrees, RSV1 both ways */
#define DEFLATE_PLAN (NSIZES + 3)
#define NEGOTIATED_ASK "negotiated?"
/* The peer's echo servers answer this text with "alpha-", "beta-", "gamma"
 * as one message in three frames (text, continuation, continuation). */
#define FRAG_ASK "fragment-me"
#define FRAG_WANT "alpha-beta-gamma"

typedef struct drv {
    const char *label;
    dx_loop *loop;
    dx_client *cl;
    int mode_echo;
    const char *want;
    int want_err; /* 0: any */
    /* echo progress */
    size_t step;  /* index into nkinds*NSIZES: text, random binary, compressible binary */
    size_t nkinds; /* 2, or 3 with --deflate */
    /* permessage-deflate */
    int deflate;              /* offered */
    int want_deflate;         /* 1: negotiated as want_info, 0: not */
    dx_deflate_info want_info;
    int asked_peer;           /* 0 not yet, 1 waiting for the answer to NEGOTIATED_ASK, 2 done */
    dx_deflate_info got_info;
    int got_deflate;
    unsigned rsv1_in, rsv1_out, data_in, data_out;
    uint8_t *expect;
    size_t expect_len;
    int expect_op;
    int frag; /* 0 not asked, 1 waiting, 2 done */
    unsigned cont_in;
    int pinged, ponged, closing;
    unsigned close_code;
    int closed;
    unsigned out_unmasked, in_masked, out_frames;
    int reported, passed, failed;
    int opened;
    int done;
    atomic_int timed_out;
} drv;

static void ok(drv *d, const char *name)
{
    d->reported++;
    d->passed++;
    printf("ok - %s: %s\n", d->label, name);
    fflush(stdout);
}

static void notok(drv *d, const char *name, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void notok(drv *d, const char *name, const char *fmt, ...)
{
    char why[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    d->reported++;
    d->failed++;
    printf("not ok - %s: %s: %s\n", d->label, name, why);
    fflush(stdout);
}

/* Message k of nkinds per size: kind 0 text (valid UTF-8, multi-byte), 1
 * random binary, 2 compressible binary (JSON-like records). */
static uint8_t *make_msg(size_t k, size_t nkinds, size_t *len, int *op)
{
    size_t n = SIZES[k / nkinds];
    uint8_t *p = malloc(n ? n : 1);
    if (!p)
        return NULL;
    if (k % nkinds == 2) {
        size_t i = 0;
        for (unsigned rec = 0; i < n; rec++) {
            char line[96];
            int w = snprintf(line, sizeof line, "{\"id\":%u,\"user\":\"user-%u\",\"ok\":%s},", rec, rec % 97,
                             rec % 3 ? "true" : "false");
            for (int j = 0; j < w && i < n; j++)
                p[i++] = (uint8_t)line[j];
        }
        *op = DX_OP_BINARY;
    } else if (k % nkinds == 0) {
        /* "é" (2 bytes) repeated, an ASCII letter to fill an odd length */
        for (size_t i = 0; i + 1 < n; i += 2) {
            p[i] = 0xc3;
            p[i + 1] = 0xa9;
        }
        if (n % 2)
            p[n - 1] = 'z';
        *op = DX_OP_TEXT;
    } else {
        uint32_t x = 0x9e3779b9u ^ (uint32_t)k;
        for (size_t i = 0; i < n; i++) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            p[i] = (uint8_t)x;
        }
        *op = DX_OP_BINARY;
    }
    *len = n;
    return p;
}

static void case_name(const drv *d, size_t k, char *buf, size_t cap)
{
    static const char *const kinds[] = {"text", "binary", "compressible binary"};
    snprintf(buf, cap, "echo %s of %zu bytes", kinds[k % d->nkinds], SIZES[k / d->nkinds]);
}

static void params_of(const dx_deflate_info *i, char *buf, size_t cap)
{
    snprintf(buf, cap, "server_no_context_takeover=%d client_no_context_takeover=%d server_max_window_bits=%u "
                       "client_max_window_bits=%u",
             i->server_no_context_takeover, i->client_no_context_takeover, i->server_max_window_bits,
             i->client_max_window_bits);
}

static int same_info(const dx_deflate_info *a, const dx_deflate_info *b)
{
    return !a->server_no_context_takeover == !b->server_no_context_takeover &&
           !a->client_no_context_takeover == !b->client_no_context_takeover &&
           a->server_max_window_bits == b->server_max_window_bits &&
           a->client_max_window_bits == b->client_max_window_bits;
}

/* The peer's JSON answer to NEGOTIATED_ASK ({"server_no_context_takeover":true,
 * "client_max_window_bits":12} or null) as a dx_deflate_info; the window
 * bits not named are 15 (RFC 7692 section 7.1.2). Returns 0 for null. */
static int peer_info(const uint8_t *data, size_t len, dx_deflate_info *out)
{
    char buf[512];
    size_t n = len < sizeof buf - 1 ? len : sizeof buf - 1;
    memcpy(buf, data, n);
    buf[n] = 0;
    if (strncmp(buf, "null", 4) == 0)
        return 0;
    *out = (dx_deflate_info){.server_max_window_bits = 15, .client_max_window_bits = 15};
    out->server_no_context_takeover = strstr(buf, "\"server_no_context_takeover\"") != NULL;
    out->client_no_context_takeover = strstr(buf, "\"client_no_context_takeover\"") != NULL;
    const char *p = strstr(buf, "\"server_max_window_bits\":");
    if (p)
        out->server_max_window_bits = (unsigned)atoi(p + strlen("\"server_max_window_bits\":"));
    p = strstr(buf, "\"client_max_window_bits\":");
    if (p && p[strlen("\"client_max_window_bits\":")] != 't') /* true: no value, 15 */
        out->client_max_window_bits = (unsigned)atoi(p + strlen("\"client_max_window_bits\":"));
    return 1;
}

static void send_next(drv *d)
{
    if (d->deflate && !d->asked_peer) {
        d->asked_peer = 1;
        int rc = dx_client_send(d->cl, DX_OP_TEXT, NEGOTIATED_ASK, strlen(NEGOTIATED_ASK));
        if (rc == 0)
            return;
        d->asked_peer = 2;
        notok(d, "the peer agrees on the parameters", "dx_client_send: %s", dx_strerror(rc));
    }
    while (d->step < d->nkinds * NSIZES) {
        free(d->expect);
        d->expect = make_msg(d->step, d->nkinds, &d->expect_len, &d->expect_op);
        char name[64];
        case_name(d, d->step, name, sizeof name);
        if (!d->expect) {
            notok(d, name, "out of memory");
            d->step++;
            continue;
        }
        int rc = dx_client_send(d->cl, d->expect_op, d->expect, d->expect_len);
        if (rc == 0)
            return; /* wait for the echo */
        notok(d, name, "dx_client_send: %s", dx_strerror(rc));
        d->step++;
    }
    free(d->expect);
    d->expect = NULL;
    if (!d->frag) {
        d->frag = 1;
        d->cont_in = 0;
        int rc = dx_client_send(d->cl, DX_OP_TEXT, FRAG_ASK, strlen(FRAG_ASK));
        if (rc == 0)
            return;
        d->frag = 2;
        notok(d, "fragmented message reassembled", "dx_client_send: %s", dx_strerror(rc));
    }
    if (!d->pinged) {
        d->pinged = 1;
        int rc = dx_client_send(d->cl, DX_OP_PING, "interop", 7);
        if (rc != 0) {
            notok(d, "ping answered by a pong", "dx_client_send(PING): %s", dx_strerror(rc));
            d->ponged = -1;
        } else {
            return; /* the pong (on_frame) continues */
        }
    }
    if (!d->closing) {
        d->closing = 1;
        int rc = dx_client_close(d->cl, 4001, "bye", 3);
        if (rc != 0)
            notok(d, "close 4001 echoed", "dx_client_close: %s", dx_strerror(rc));
    }
}

static void on_open(dx_conn *c, void *ud)
{
    drv *d = ud;
    d->opened = 1;
    if (!d->mode_echo) {
        notok(d, "connection refused with an error", "the connection opened");
        dx_client_close(d->cl, 1000, NULL, 0);
        return;
    }
    if (d->deflate) {
        d->got_deflate = dx_conn_deflate(c, &d->got_info);
        char got[200], want[200];
        params_of(&d->got_info, got, sizeof got);
        params_of(&d->want_info, want, sizeof want);
        printf("# %s: dx_conn_deflate: %d %s\n", d->label, d->got_deflate, d->got_deflate ? got : "");
        const char *name = "negotiated as expected (dx_conn_deflate)";
        if (d->got_deflate != d->want_deflate)
            notok(d, name, "dx_conn_deflate says %d, expected %d", d->got_deflate, d->want_deflate);
        else if (d->want_deflate && !same_info(&d->got_info, &d->want_info))
            notok(d, name, "got %s, expected %s", got, want);
        else
            ok(d, name);
    }
    send_next(d);
}

static void on_message(dx_conn *c, int opcode, const uint8_t *data, size_t len, void *ud)
{
    (void)c;
    drv *d = ud;
    if (d->mode_echo && d->asked_peer == 1) {
        d->asked_peer = 2;
        const char *name = "the peer agrees on the parameters";
        dx_deflate_info peer;
        int has = opcode == DX_OP_TEXT && peer_info(data, len, &peer);
        char a[200], b[200];
        if (has)
            params_of(&peer, a, sizeof a);
        params_of(&d->got_info, b, sizeof b);
        if (opcode != DX_OP_TEXT)
            notok(d, name, "the answer to \"%s\" came with opcode %d", NEGOTIATED_ASK, opcode);
        else if (has != d->got_deflate)
            notok(d, name, "peer says %.*s, we say %s", (int)(len > 200 ? 200 : len), data,
                  d->got_deflate ? b : "not negotiated");
        else if (has && !same_info(&peer, &d->got_info))
            notok(d, name, "peer: %s; us: %s", a, b);
        else
            ok(d, name);
        send_next(d);
        return;
    }
    if (d->mode_echo && d->frag == 1) {
        d->frag = 2;
        const char *name = "fragmented message reassembled";
        if (opcode != DX_OP_TEXT || len != strlen(FRAG_WANT) || memcmp(data, FRAG_WANT, len) != 0)
            notok(d, name, "got opcode %d, %zu bytes \"%.*s\"", opcode, len, (int)(len > 40 ? 40 : len), data);
        else if (d->cont_in < 2)
            notok(d, name, "the reply came in %u continuation frames, expected 2", d->cont_in);
        else
            ok(d, name);
        send_next(d);
        return;
    }
    if (!d->mode_echo || d->step >= d->nkinds * NSIZES || !d->expect) {
        notok(d, "no unexpected messages", "got a message (opcode %d, %zu bytes) nobody asked for", opcode, len);
        return;
    }
    char name[64];
    case_name(d, d->step, name, sizeof name);
    if (opcode != d->expect_op)
        notok(d, name, "got opcode %d, sent %d", opcode, d->expect_op);
    else if (len != d->expect_len)
        notok(d, name, "got %zu bytes, sent %zu", len, d->expect_len);
    else if (len && memcmp(data, d->expect, len) != 0)
        notok(d, name, "content differs");
    else
        ok(d, name);
    d->step++;
    send_next(d);
}

static void on_frame(dx_conn *c, int dir, unsigned opcode, int fin, unsigned rsv, uint64_t len, int masked,
                     const uint8_t *head, size_t head_len, void *ud)
{
    (void)c, (void)fin, (void)len;
    drv *d = ud;
    unsigned data = opcode == DX_OP_TEXT || opcode == DX_OP_BINARY;
    if (dir == '>') {
        d->out_frames++;
        d->out_unmasked += !masked;
        d->data_out += data;
        d->rsv1_out += data && (rsv & DX_RSV1);
    } else {
        d->in_masked += masked != 0;
        d->cont_in += opcode == DX_OP_CONT;
        d->data_in += data;
        d->rsv1_in += data && (rsv & DX_RSV1);
    }
    if (dir == '<' && opcode == DX_OP_PONG && d->pinged && !d->ponged) {
        d->ponged = 1;
        if (head_len == 7 && memcmp(head, "interop", 7) == 0)
            ok(d, "ping answered by a pong");
        else
            notok(d, "ping answered by a pong", "pong payload differs (%zu bytes)", head_len);
        send_next(d); /* on to the close */
    }
}

static void on_close(dx_conn *c, unsigned code, const char *reason, size_t len, void *ud)
{
    (void)c;
    drv *d = ud;
    d->closed = 1;
    d->close_code = code;
    if (!d->mode_echo)
        return;
    if (!d->closing) {
        notok(d, "close 4001 echoed", "the peer closed first with %u (%.*s)", code, (int)len, reason);
        return;
    }
    if (code == 4001)
        ok(d, "close 4001 echoed");
    else
        notok(d, "close 4001 echoed", "on_close code %u, expected 4001", code);
}

static void on_error(dx_client *cl, int err, const char *what, void *ud)
{
    (void)cl;
    drv *d = ud;
    printf("# %s: on_error(%d %s): %s\n", d->label, err, dx_strerror(err), what);
    if (d->mode_echo) {
        notok(d, "connects", "%s", what);
        return;
    }
    if (d->want_err && err != d->want_err)
        notok(d, "connection refused with an error", "error %d (%s), expected %d: %s", err, dx_strerror(err),
              d->want_err, what);
    else if (!strstr(what, d->want))
        notok(d, "connection refused with an error", "message \"%s\" does not contain \"%s\"", what, d->want);
    else
        ok(d, "connection refused with an error");
}

static void on_done(dx_client *cl, void *ud)
{
    (void)cl;
    drv *d = ud;
    d->done = 1;
    dx_loop_stop(d->loop);
}

typedef struct watchdog {
    drv *d;
    unsigned seconds;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int finished;
} watchdog;

static void *watch(void *p)
{
    watchdog *w = p;
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += w->seconds;
    pthread_mutex_lock(&w->mu);
    while (!w->finished) {
        if (pthread_cond_timedwait(&w->cv, &w->mu, &dl) != 0) {
            atomic_store(&w->d->timed_out, 1);
            dx_loop_stop(w->d->loop);
            break;
        }
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

static int usage(void)
{
    fprintf(stderr, "usage: client_driver echo|error URL [--ca FILE] [--insecure] [--want TEXT] [--err CODE]\n"
                    "                     [--label L] [--timeout SECONDS]\n"
                    "                     [--deflate PARAMS --expect-deflate refused|none|on|PARAMS]\n");
    return 2;
}

int main(int argc, char **argv)
{
    if (argc < 3)
        return usage();
    drv d = {.label = "client"};
    if (strcmp(argv[1], "echo") == 0)
        d.mode_echo = 1;
    else if (strcmp(argv[1], "error") != 0)
        return usage();
    const char *url = argv[2];
    const char *ca = NULL;
    int insecure = 0;
    unsigned timeout = 60;
    const char *deflate = NULL, *expect_deflate = NULL;
    for (int i = 3; i < argc; i++) {
        if (strcmp(argv[i], "--insecure") == 0)
            insecure = 1;
        else if (i + 1 < argc && strcmp(argv[i], "--ca") == 0)
            ca = argv[++i];
        else if (i + 1 < argc && strcmp(argv[i], "--want") == 0)
            d.want = argv[++i];
        else if (i + 1 < argc && strcmp(argv[i], "--err") == 0)
            d.want_err = atoi(argv[++i]);
        else if (i + 1 < argc && strcmp(argv[i], "--label") == 0)
            d.label = argv[++i];
        else if (i + 1 < argc && strcmp(argv[i], "--timeout") == 0)
            timeout = (unsigned)atoi(argv[++i]);
        else if (i + 1 < argc && strcmp(argv[i], "--deflate") == 0)
            deflate = argv[++i];
        else if (i + 1 < argc && strcmp(argv[i], "--expect-deflate") == 0)
            expect_deflate = argv[++i];
        else
            return usage();
    }
    dx_deflate_options dopt = {0};
    d.nkinds = 2;
    if (deflate) {
        if (!d.mode_echo || !expect_deflate)
            return usage();
        if (dx_deflate_options_parse(&dopt, deflate) != 0) {
            fprintf(stderr, "client_driver: bad --deflate parameters \"%s\"\n", deflate);
            return 2;
        }
        if (strcmp(expect_deflate, "refused") == 0) {
            d.mode_echo = 0; /* the attempt must fail: error mode */
            d.want = "";
        } else if (strcmp(expect_deflate, "none") != 0) {
            dx_deflate_options w = {0};
            if (dx_deflate_options_parse(&w, strcmp(expect_deflate, "on") == 0 ? "" : expect_deflate) != 0) {
                fprintf(stderr, "client_driver: bad --expect-deflate \"%s\"\n", expect_deflate);
                return 2;
            }
            d.want_deflate = 1;
            d.want_info = (dx_deflate_info){
                .server_no_context_takeover = w.server_no_context_takeover,
                .client_no_context_takeover = w.client_no_context_takeover,
                .server_max_window_bits = w.server_max_window_bits ? w.server_max_window_bits : 15,
                .client_max_window_bits = w.client_max_window_bits ? w.client_max_window_bits : 15,
            };
        }
        d.deflate = d.mode_echo;
        if (d.deflate)
            d.nkinds = 3;
    }
    if (!d.mode_echo && !d.want)
        return usage();
    int plan = d.mode_echo ? (int)(ECHO_PLAN + (d.deflate ? DEFLATE_PLAN : 0)) : 2;
    printf("plan %d\n", plan);
    fflush(stdout);

    static const dx_log log = {.sink = NULL, .ud = NULL, .level = DX_LOG_WARN};
    dx_loop_options lo = {.log = &log};
    int err = 0;
    d.loop = dx_loop_new(&lo, &err);
    if (!d.loop) {
        printf("not ok - %s: loop: %s\n", d.label, dx_strerror(err));
        return 1;
    }
    dx_client_options o = {
        .url = url,
        .ca_file = ca,
        .insecure = insecure,
        .connect_timeout_ms = 10000,
        .max_message = 8u << 20,
        .send_max = 16u << 20,
        .cb = {.on_open = on_open, .on_message = on_message, .on_close = on_close, .on_error = on_error,
               .on_done = on_done, .on_frame = on_frame},
        .ud = &d,
        .deflate = dopt,
    };
    d.cl = dx_client_new(d.loop, &o, &err);
    if (!d.cl) {
        printf("not ok - %s: dx_client_new: %s\n", d.label, dx_strerror(err));
        dx_loop_free(d.loop);
        return 1;
    }
    watchdog w = {.d = &d, .seconds = timeout};
    pthread_mutex_init(&w.mu, NULL);
    pthread_cond_init(&w.cv, NULL);
    pthread_t th;
    if (pthread_create(&th, NULL, watch, &w) != 0) {
        printf("not ok - %s: cannot start the watchdog\n", d.label);
        return 1;
    }
    int rc = dx_client_connect(d.cl);
    if (rc != 0)
        notok(&d, "connects", "dx_client_connect: %s", dx_strerror(rc));
    else
        (void)dx_loop_run(d.loop);
    pthread_mutex_lock(&w.mu);
    w.finished = 1;
    pthread_cond_signal(&w.cv);
    pthread_mutex_unlock(&w.mu);
    pthread_join(th, NULL);

    if (atomic_load(&d.timed_out))
        printf("# %s: timed out after %u s\n", d.label, timeout);
    if (d.mode_echo) {
        if (d.opened && d.out_unmasked == 0 && d.in_masked == 0 && d.out_frames > 0)
            ok(&d, "client frames masked, server frames not");
        else
            notok(&d, "client frames masked, server frames not", "%u unmasked sent of %u, %u masked received",
                  d.out_unmasked, d.out_frames, d.in_masked);
        if (d.deflate) {
            /* negotiated: the peers compress every message (threshold 0) and so do we
             * for messages of min_size (64) bytes and more; not: no RSV1 at all */
            const char *name = d.got_deflate ? "RSV1 (compressed) on data frames both ways"
                                             : "no RSV1 on any data frame (no extension)";
            printf("# %s: data frames in %u (RSV1 %u), out %u (RSV1 %u)\n", d.label, d.data_in, d.rsv1_in,
                   d.data_out, d.rsv1_out);
            if (d.got_deflate ? d.rsv1_in > 0 && d.rsv1_out > 0 : d.rsv1_in + d.rsv1_out == 0)
                ok(&d, name);
            else
                notok(&d, name, "data frames in %u (RSV1 %u), out %u (RSV1 %u)", d.data_in, d.rsv1_in, d.data_out,
                      d.rsv1_out);
        }
    } else {
        if (!d.opened && d.done)
            ok(&d, "never opens, on_done follows");
        else
            notok(&d, "never opens, on_done follows", "opened=%d done=%d", d.opened, d.done);
    }
    /* whatever was planned and not reported failed (timeout, lost connection) */
    while (d.reported < plan)
        notok(&d, "planned case", "not reached%s", atomic_load(&d.timed_out) ? " (timed out)" : "");
    dx_client_free(d.cl);
    dx_loop_free(d.loop);
    free(d.expect);
    pthread_mutex_destroy(&w.mu);
    pthread_cond_destroy(&w.cv);
    return d.failed ? 1 : 0;
}
