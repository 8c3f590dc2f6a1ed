/*
 * tests/unit/msg_fx.h: the fixture shared by test_msg.c and
 * test_msg_send.c: a dx_server on its own loop thread (plain or TLS), raw
 * blocking clients that speak just enough WebSocket, and the rounds of
 * shared and private sends the TLS test replays on both sides.
 */
#ifndef DX_MSG_FX_H
#define DX_MSG_FX_H

#include "testutil.h"

#include <openssl/ssl.h>
#include <stdatomic.h>
#include <poll.h>

#include "duplex/client.h"
#include "duplex/msg.h"
#include "duplex/server.h"
#include "ws/ws.h"

#define WAIT_MS 20000 /* generous: only a broken server takes this long */

#define MAXC 64

/* ---- the fixture: a server on its own thread ----------------------------------- */

typedef struct mfx {
    dx_test_seams ts;      /* the loop's allocator (live blocks counted) */
    dx_seams seams;        /* ts, counting the calls made on the loop's thread */
    pthread_t loop_tid;
    atomic_int tid_set;
    long loop_calls;
    long fail_loop_at;     /* > 0: the loop thread's allocation with this number fails */
    dx_loop *loop;
    dx_server *srv;
    pthread_t th;
    unsigned port;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    /* loop thread, read by the test under mu */
    dx_conn *conns[MAXC];
    size_t nopen;
    size_t nclosed;
    unsigned codes[MAXC];
    int small_sndbuf;      /* on_open shrinks the server socket's send buffer */
    /* messages received by the server (client-role test) */
    char got[256];
    size_t got_len;
    int got_op;
    /* TLS rounds: "go:K" makes the server send round K (tls_round) */
    dx_msg *pool[5];
    int rounds_mode;
} mfx;

/* Runs fn(f, arg) on the loop's thread and waits for it. */
void on_loop(mfx *f, void (*fn)(mfx *f, void *arg), void *arg);

/* Waits until *counter (under mu) reaches want. */
void wait_count(mfx *f, const size_t *counter, size_t want);

mfx *start_tls(size_t send_max, size_t high_water, unsigned close_timeout_ms, const dx_tls_cert *tls,
                      void (*prepare)(mfx *f));

mfx *start(size_t send_max, size_t high_water, unsigned close_timeout_ms);

/* stop() for a fixture with a message pool. */
void stop_pool(mfx *f);

void stop(mfx *f);

/* ---- raw clients ---------------------------------------------------------------- */

typedef struct rc {
    int fd;
    SSL_CTX *ctx;
    SSL *ssl;
    uint8_t buf[1 << 16];
    size_t off, len;
} rc;

void rc_send(rc *c, const void *p, size_t len);

rc *rc_open_ex(mfx *f, int rcvbuf, int tls);

rc *rc_open(mfx *f, int rcvbuf);
/* As rc_open, but NULL when the server ends the connection before its 101. */
rc *rc_try_open(mfx *f, int rcvbuf);

void rc_free(rc *c);

/* Reads one frame and checks it. */
void rc_expect(rc *c, int op, const void *data, size_t len, size_t piece);

/* A close frame with `code` (the server's). */
void rc_expect_close(rc *c, unsigned code);

uint8_t *pattern(size_t len, unsigned seed);

void open_clients(mfx *f, rc **cls, size_t n, int rcvbuf);

/* ---- sending to connections ------------------------------------------------------ */

typedef struct send_arg {
    dx_msg *m;
    size_t from, to;   /* connections [from, to) */
    int times;
    int rc[MAXC];
    size_t refs;       /* the frame's references after the sends */
    size_t seg_refs;   /* references held by queue segments */
    size_t copies;     /* queued bytes in memory of the connections' own */
    size_t buffered[MAXC];
} send_arg;

void do_send(mfx *f, void *p);

void do_count(mfx *f, void *p);

void do_stats(mfx *f, void *p);

#define ROUND_MAX 24

typedef struct item {
    int shared; /* pool index + 1, or 0: private */
    size_t len;
    unsigned seed;
} item;

/* Round k's sends, the same on both sides: shared messages of the pool and
 * private ones of any size (arena copies, direct writes). */
size_t round_items(unsigned k, item *out);

void make_pool(mfx *f);

#endif
