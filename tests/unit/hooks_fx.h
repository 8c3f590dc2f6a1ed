/*
 * tests/unit/hooks_fx.h: the fixture shared by test_server_hooks.c (pause
 * and resume, inline ext memory, admission limits) and test_upgrade.c
 * (deferred upgrade decisions, src/ws/upgrade.c).
 *
 * A real dx_loop + dx_server on 127.0.0.1 in its own thread; clients are
 * blocking sockets (bound to 127.0.0.2 / 127.0.0.3 where the source address
 * matters) speaking through the sans-I/O helpers of src/proto. Callbacks
 * record events and WARN log lines under a mutex and never assert; the
 * test thread waits for events (never for fixed sleeps). Work for the
 * loop's thread is posted with dx_loop_post and waited for; two such trips
 * are the barrier used to show that something did NOT happen.
 *
 * What the callbacks do: on_upgrade accepts, defers (the handle in f->h),
 * or answers inside (M_ANSWER_INSIDE: "/refuse" gets 418, else "p2") by
 * f->mode; on_open checks and fills the ext memory and records the
 * protocol and whether the user pointer is &user_marker; on_message counts
 * flood messages ("F" + a 4-byte index), runs "pause", "pauseresume",
 * "resume:N", else echoes; on_close answers a pending handle when
 * f->answer_on_close and checks the ext pattern.
 */
#ifndef DX_HOOKS_FX_H
#define DX_HOOKS_FX_H

#include "testutil.h"

#include "duplex/server.h"
#include "proto/frame.h"
#include "proto/handshake.h"
#include "proto/http.h"
#include "proto/mask.h"

#include <stdatomic.h>

#define WAIT_MS 15000
#define MAXEV 512
#define MAXC 16

enum { EV_UPGRADE = 1, EV_OPEN, EV_MESSAGE, EV_CLOSE };

typedef dx_test_ev ev; /* code: EV_OPEN whether the user pointer is &user_marker, EV_MESSAGE the connection's index */

enum { M_ACCEPT = 0, M_DEFER, M_ANSWER_INSIDE, M_FREE_INSIDE };

typedef struct fx {
    dx_loop *loop;
    dx_server *srv;
    pthread_t th;
    unsigned port;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    ev evs[MAXEV];
    dx_test_rec rec; /* over mu, cv, evs */
    char logs[64][256];
    size_t nlogs;
    /* behaviour */
    _Atomic int mode; /* set by the test thread, read by on_upgrade */
    size_t ext_size;
    /* loop thread only */
    dx_upgrade *h;
    dx_conn *conns[MAXC];
    int ext_zero_bad, ext_align_bad, ext_kept_bad;
    /* flood accounting (loop thread; read after a barrier) */
    long flood_got, flood_next, flood_order_bad;
    int pause_rc, resume_rc;
    _Atomic int answer_on_close;
    int close_answer_rc;
} fx;

/* A blocking raw client and what it has read but not consumed. */
typedef dx_test_peer cl;

/* The user pointer the deferred answers pass to dx_upgrade_accept. */
extern int user_marker;

/* The oldest event of `type` not yet taken (marked taken); waits for it. */
ev wait_ev(fx *f, int type);

/* Events of `type` recorded so far, taken or not. */
size_t count_ev(fx *f, int type);

/* Log lines containing `needle`. */
size_t count_log(fx *f, const char *needle);

/* Waits for a log line (WARN and up) containing `needle`. */
void wait_log(fx *f, const char *needle);

/* Runs fn(f, arg) on the loop's thread and waits for it. */
void on_loop(fx *f, void (*fn)(fx *f, void *arg), void *arg);

/* Two trips through the loop: whatever was already due has run. */
void barrier(fx *f);

/* The server's counters and its open connections, read on the loop. */
dx_server_stats stats(fx *f);

size_t conns(fx *f);

/* Polls until the server holds `want` connections. */
void wait_conns(fx *f, size_t want);

/* cmocka setup/teardown: a zeroed fixture; the teardown refuses a pending
 * deferred upgrade, stops the loop and frees everything. */
int fx_setup(void **state);

/* Options every test starts from: 127.0.0.1, an ephemeral port, the
 * recording callbacks, f->ext_size bytes of ext memory. */
dx_server_options opts(fx *f);

/* The loop (logging WARN and up to the recorder) and the server, started
 * on the loop's own thread. */
void start(fx *f, const dx_server_options *o);

/* For on_loop: free the server; shut it down (1001, "bye"). */
void do_free_server(fx *f, void *arg);

void do_shutdown(fx *f, void *arg);

int fx_teardown(void **state);

/* A blocking client connected from `src` (e.g. "127.0.0.2"; NULL: any),
 * 15 s send and receive timeouts; cl_free closes and frees it. */
cl *cl_new(fx *f, const char *src);

void cl_free(cl *c);

/* Sends all of p. */
void cl_send(cl *c, const void *p, size_t len);

/* True when the server ended the connection (EOF or reset) with nothing more sent. */
int cl_eof(cl *c);

/* A final masked frame (fixed key) into out; its length. cl_frame sends one
 * (len + 14 <= 256). */
size_t frame_bytes(uint8_t *out, unsigned opcode, const void *data, size_t len);

void cl_frame(cl *c, unsigned opcode, const void *data, size_t len);

/* Reads one unmasked server frame; returns its opcode, payload in out. */
int cl_read_frame(cl *c, char *out, size_t cap, size_t *len);

/* The next server frame is the text message s. */
void expect_text(cl *c, const char *s);

/* The upgrade request (plus `extra` bytes sent in the same write). */
void cl_request(fx *f, cl *c, const char *path, const void *extra, size_t extra_len);

/* Reads the response head; returns its status, head text in `head`. */
int cl_response(cl *c, char *head, size_t cap);

/* cl_new + cl_request + a 101 response. */
cl *cl_open(fx *f, const char *src, const char *path);

/* CPU time the loop's thread spends over one second of wall time: held
 * input must not keep waking epoll (level-triggered) in a busy loop. The
 * second is a measuring window, not a wait for an event; an idle loop uses
 * well under a millisecond of it, a spinning one most of it. */
long loop_cpu_ms_over_1s(fx *f);

/* ---- answers to a deferred upgrade (f->h), for on_loop ---------------------------- */

/* What do_accept saw and returned; do_refuse's status, headers and result. */
typedef struct answer {
    int rc, opens_during;
    char path[64], query[64], xtest[64], protos[64], remote[64];
    const char *protocol;
    int status;
    const char *headers;
} answer;

/* Reads the copied request into `answer`, tries a subprotocol the client
 * did not offer (must be DX_EINVAL, the handle still owed), then accepts
 * with a->protocol; counts the on_open fired inside the call. */
void do_accept(fx *f, void *arg);

/* dx_upgrade_refuse(f->h, a->status, a->headers) into a->rc. */
void do_refuse(fx *f, void *arg);

#endif
