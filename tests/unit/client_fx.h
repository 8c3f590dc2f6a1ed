/*
 * tests/unit/client_fx.h: the fixture shared by test_client.c and
 * test_client_proxy.c: a dx_server and a dx_client on one dx_loop running in
 * its own thread, events recorded under a mutex by the callbacks (which never
 * assert) and waited for by the test thread with a generous deadline, and
 * work posted to the loop thread with run().
 */
#ifndef DX_CLIENT_FX_H
#define DX_CLIENT_FX_H

#include "testutil.h"

#include <fcntl.h>
#include <poll.h>
#include <stdatomic.h>

#include "duplex/client.h"
#include "duplex/server.h"

#define WAIT_MS 20000 /* generous: only a broken client takes this long */

#define MAXEV 4096

/* ---- events ------------------------------------------------------------------- */

enum {
    S_UPGRADE = 1, S_OPEN, S_MSG, S_CLOSE,
    C_OPEN, C_MSG, C_CLOSE, C_ERROR, C_RECONNECT, C_DONE, C_PONG,
};

/* rc: C_ERROR's err; code: the close code, C_RECONNECT's delay; n:
 * C_RECONNECT's attempt; data: the message, reason or what. */
typedef dx_test_ev ev;

typedef struct fx {
    dx_loop *loop;
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    ev *evs;
    dx_test_rec rec; /* over mu, cv, evs */

    /* server, set before L_server_start */
    dx_server *srv;
    const char *s_host;
    unsigned s_port_want; /* 0: ephemeral */
    const dx_tls_cert *s_tls;
    int upgrade_status;
    const char *select;
    unsigned port;        /* bound */
    int s_rc;
    /* what on_upgrade saw */
    char up_path[128], up_origin[128], up_xtest[64], up_xother[64], up_protos[128], up_remote[64];
    int up_has_origin;

    /* client */
    dx_client *cl;
    dx_client_options copt;
    int c_new_err, c_connect_rc;
    char c_protocol[32];
    int c_open_conn_ok;
    int free_in_done;   /* on_done frees the client */
    int free_in_sclose; /* the server's on_close frees the server */

    /* frame trace counters: [0] client, [1] server; [dir '>'=0 '<'=1][masked] */
    unsigned frames[2][2][2];
    unsigned c_pongs_in;
    char c_first_text_head[17];
} fx;

/* The oldest event of `type` not yet taken; waits for it (fails after WAIT_MS). */
ev wait_ev(fx *f, int type);

/* Marks every event of `type` so far as taken. */
void drain_ev(fx *f, int type);

size_t count_ev(fx *f, int type);

/* Waits until a frame counter reaches `want`. */
void wait_count(fx *f, const unsigned *counter, unsigned want, const char *what);

/* Waits `ms` while events keep arriving (to check that nothing more comes). */
void settle(unsigned ms);

void copy_str(char *dst, size_t cap, const char *s, size_t len);

/* Runs fn(f, arg) on the loop's thread and waits for it. */
void run(fx *f, void (*fn)(fx *, void *), void *arg);

void default_client(fx *f, const char *url);

int fx_setup(void **state);

/* Stops the loop first, then frees: dx_loop_run returns only after its
 * deferred frees ran, so no dead connection still points at the endpoints. */
int fx_teardown(void **state);

/* ---- loop-side actions --------------------------------------------------------------- */
void L_server_start(fx *f, void *arg);

void L_accept_all(fx *f, void *arg);

void L_server_free(fx *f, void *arg);

void L_client_start(fx *f, void *arg);

void L_client_connect(fx *f, void *arg);

typedef struct send_arg {
    int opcode;
    const void *data;
    size_t len;
    int rc;
} send_arg;

typedef struct close_arg {
    unsigned code;
    const char *reason;
    int rc;
} close_arg;

void L_stats(fx *f, void *arg);

int csend(fx *f, int opcode, const void *data, size_t len);

int cclose(fx *f, unsigned code, const char *reason);

void start_server(fx *f);

void start_client(fx *f);

/* Expects exactly one error then on_done; returns the error's text (owned by the event list). */
ev expect_error(fx *f, int err, const char *needle);

uint8_t *pattern(size_t n, unsigned seed);

/* A port on 127.0.0.1 that nothing listens on (bound then closed). */
unsigned dead_port(void);

int listener(int backlog, unsigned *port);

#endif
