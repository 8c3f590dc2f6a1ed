/*
 * tests/unit/server_fx.h: the fixture shared by test_server.c and
 * test_conn.c: a real dx_loop + dx_server in its own thread whose callbacks
 * record events (under a mutex, never asserting), waited for by the test
 * thread; a blocking client speaking WebSocket through the sans-I/O helpers
 * of src/proto; a plain HTTP client.
 */
#ifndef DX_SERVER_FX_H
#define DX_SERVER_FX_H

#include "testutil.h"

#include <sys/stat.h>
#include <sys/un.h>

#include "duplex/server.h"
#include "proto/frame.h"
#include "proto/handshake.h"
#include "proto/http.h"
#include "proto/mask.h"

#define WAIT_MS 15000 /* generous: only a broken server takes this long */

#define MAXEV 1024

#define MAXCL 16

/* ---- events recorded by the callbacks ------------------------------------------- */

enum { EV_UPGRADE = 1, EV_OPEN, EV_MESSAGE, EV_DRAIN, EV_CLOSE, EV_HTTP, EV_CMD_DONE };

typedef dx_test_ev ev; /* n: EV_CMD_DONE a count, EV_CLOSE the reason length */

typedef dx_test_peer cl;

typedef struct sfx {
    dx_loop *loop;
    dx_server *srv;
    pthread_t th;
    int running;
    unsigned port;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    ev evs[MAXEV];
    dx_test_rec rec; /* over mu, cv, evs */
    cl cls[MAXCL];
    size_t ncl;
    char dir[64];
    /* behaviour, set before the server starts */
    int upgrade_status;
    const char *select;
    int echo;
    /* what on_upgrade / on_open saw (written on the loop thread before the
     * event that announces them) */
    char path[128], query[128], origin[128], xtest[64], protos[128], remote[64];
    int has_query, has_origin, select_bad_rc, select_rc;
    char open_protocol[32];
    int open_user_ok;
    char open_remote[64];
    dx_conn *conns[MAXCL]; /* loop thread only */
    size_t shutdown_ret;
} sfx;

/* The oldest event of `type` not yet taken; waits for it. */
ev wait_ev(sfx *f, int type);

/* How many events of `type` were recorded (taken or not). */
size_t count_ev(sfx *f, int type);

/* Sends `size`-byte binary messages (byte i of message k is k + i) while
 * `more` says so; returns how many were accepted and the last result. */
long flood(dx_conn *c, size_t size, size_t stop_above, long cap, int *rc);

extern dx_http_req *held_req; /* loop thread only */

/* Runs fn(f, arg) on the loop's thread and waits for it. */
void on_loop(sfx *f, void (*fn)(sfx *f, void *arg), void *arg);

void do_shutdown(sfx *f, void *arg);

dx_server_stats stats(sfx *f);

size_t conns(sfx *f);

/* Polls until the server has no connection left. */
void wait_no_conns(sfx *f);

int sfx_setup(void **state);

/* Options every test starts from: callbacks to the recorder. */
dx_server_options base_opts(sfx *f);

void start(sfx *f, const dx_server_options *o);

int sfx_teardown(void **state);

void make_dir(sfx *f);

cl *cl_tcp(sfx *f, int rcvbuf);

cl *cl_unix(sfx *f, const char *path);

void cl_close(cl *c);

void cl_send(cl *c, const void *p, size_t len);

/* Reads until the peer's EOF (a reset counts as the end too). */
void cl_read_to_eof(cl *c);

typedef struct hs {
    int status;
    char protocol[32];
    char body[256];
} hs;

hs cl_handshake_opts(sfx *f, cl *c, const dx_ws_client_opts *o, const void *extra, size_t extra_len,
                            int bytewise);

hs cl_handshake(sfx *f, cl *c, const char *path);

size_t frame_bytes(uint8_t *out, unsigned opcode, bool fin, const void *data, size_t len, bool masked);

void cl_frame(cl *c, unsigned opcode, bool fin, const void *data, size_t len);

void cl_close_frame(cl *c, unsigned code, const char *reason);

typedef struct frm {
    int opcode;
    bool fin;
    uint8_t *data; /* malloc'd, NUL-terminated */
    size_t len;
} frm;

/* Reads one server frame (which must be unmasked). */
frm cl_read_frame(cl *c);

void expect_frame(cl *c, int opcode, const void *data, size_t len);

void expect_close(cl *c, unsigned code, const char *reason);

/* The server ends the TCP connection after the close handshake. */
void expect_eof(cl *c);

/* The usual ending: we close, the server echoes, then sends FIN. */
void close_normally(sfx *f, cl *c, unsigned code);

/* ---- HTTP helpers --------------------------------------------------------------- */

typedef struct http_res {
    int status;
    char head[2048];
    size_t head_len;
    char body[4096];
    size_t body_len;
    long content_length;
} http_res;

/* Sends `request` (with "Connection: close" added when it ends its head
 * there, so the server closes after answering) and reads to EOF. */
http_res http(sfx *f, const char *request);

#endif
