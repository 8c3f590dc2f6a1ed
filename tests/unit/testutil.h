/*
 * tests/unit/testutil.h: seams and helpers shared by the unit tests.
 *
 *  - a counting allocator that can fail its Nth call (STYLE.md habit 4) and
 *    reports live allocations, so "no leak after failure" is checkable;
 *  - a deterministic random seam (xorshift from a seed);
 *  - a settable clock;
 *  - the monotonic clock in milliseconds, for bounded waits;
 *  - a do-nothing fd-watch callback;
 *  - a CLOCK_REALTIME deadline for pthread_cond_timedwait;
 *  - a quiet log, a seeded xorshift, and the raw-peer basics every socket
 *    test needs: dial 127.0.0.1, reset a socket, encode a masked client
 *    frame, the opening handshake's fixed headers;
 *  - a loop run on its own thread, and a call posted to it and waited for;
 *  - an event recorder: callbacks on the loop's thread record events under
 *    the fixture's mutex (never asserting), the test's thread waits for them.
 */
#ifndef DX_TESTUTIL_H
#define DX_TESTUTIL_H

/* The POSIX headers every socket test uses, then cmocka (which needs
 * setjmp.h, stdarg.h, stddef.h first). */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "duplex/duplex.h"
#include "duplex/loop.h"

typedef struct dx_test_seams {
    dx_seams seams;        /* pass &ts.seams to the code under test */
    long fail_at;          /* 1-based index of the allocation to fail; 0: never */
    long calls;            /* allocations (not frees) attempted so far */
    long live;             /* allocations not yet freed */
    uint64_t rng;          /* xorshift state */
    uint64_t now;          /* what now_ns returns */
} dx_test_seams;

/* Initialises `ts` with allocation that never fails, seed 1 and time 0. */
void dx_test_seams_init(dx_test_seams *ts);

/* Call first in main: when DX_TEST_FILTER is set (the TSan build sets it,
 * see tests/unit/CMakeLists.txt), only the tests whose names match that
 * cmocka pattern run. */
void dx_test_filter_from_env(void);

/* CLOCK_MONOTONIC in milliseconds: for the bounds of waits on real events. */
uint64_t dx_test_mono_ms(void);

/* A watch callback that does nothing (dx_watch_fn). */
void dx_test_noop_watch(dx_watch *w, int fd, unsigned events, void *ud);

/* *ts = CLOCK_REALTIME now + `ms` (for pthread_cond_timedwait). */
struct timespec;
void dx_test_deadline_in(struct timespec *ts, unsigned ms);

/* A log at DX_LOG_ERROR with no sink: the tests' provoked errors stay quiet. */
extern const dx_log dx_test_quiet_log;

/* One xorshift64 step of *state (never 0), returned. */
uint64_t dx_test_xorshift(uint64_t *state);

/* A seed from the environment variable `var` (strtoull, any base), else
 * from the time and the pid; never 0 (a zero seed becomes 1). */
uint64_t dx_test_seed_from_env(const char *var);

/* A blocking TCP connection to 127.0.0.1:port (SOCK_CLOEXEC); when rcvbuf
 * > 0, SO_RCVBUF is set to it before connecting. The fd; -1 when the
 * connect failed, -2 when no socket could be made. */
int dx_test_dial(unsigned port, int rcvbuf);

/* Closes `fd` with SO_LINGER {1, 0}: the peer sees an RST, not a FIN. */
void dx_test_close_rst(int fd);

/* A masked client frame (RFC 6455 section 5.2) with `key` into `out`
 * (room for len + 8); len < 65536. Returns its length. */
size_t dx_test_mask_frame(uint8_t *out, unsigned op, int fin, const void *payload, size_t len,
                          const uint8_t key[4]);

/* The opening handshake's headers after the request line and Host (the
 * RFC 6455 section 1.3 sample key), ending the head. */
#define DX_TEST_UPGRADE_HEADERS                                                                              \
    "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"          \
    "Sec-WebSocket-Version: 13\r\n\r\n"

/* A pthread start routine running dx_loop_run(loop) once. */
void *dx_test_loop_thread(void *loop);

/* Runs fn(arg) on the thread of `loop` (running elsewhere) through
 * dx_loop_post and waits for it to return; fails the test after 20 s. */
void dx_test_on_loop(dx_loop *loop, void (*fn)(void *arg), void *arg);

/* Defines `scope void name(T *f, void (*fn)(T *f, void *arg), void *arg)`,
 * a fixture's posted call: dx_test_on_loop(f->loop, ...) running fn(f,
 * arg). `scope` is static or empty. */
#define DX_TEST_ON_LOOP_DEFINE(scope, name, T)                                                               \
    typedef struct name##_call {                                                                             \
        T *f;                                                                                                \
        void (*fn)(T * f, void *arg);                                                                        \
        void *arg;                                                                                           \
    } name##_call;                                                                                           \
    static void name##_tramp(void *p)                                                                        \
    {                                                                                                        \
        name##_call *c = p;                                                                                  \
        c->fn(c->f, c->arg);                                                                                 \
    }                                                                                                        \
    scope void name(T *f, void (*fn)(T * f, void *arg), void *arg)                                           \
    {                                                                                                        \
        name##_call c = {f, fn, arg};                                                                        \
        dx_test_on_loop(f->loop, name##_tramp, &c);                                                          \
    }

/* A self-signed P-256 certificate for CN=`cn` made by the openssl command
 * in `dir`: its paths (under 128 bytes) into crt and key. Fails the test
 * when openssl fails. */
void dx_test_self_signed(const char *dir, const char *cn, char crt[128], char key[128]);

/* rm -rf `dir`: 0, or -1 when the command failed. */
int dx_test_rm_rf(const char *dir);

/* ---- a blocking raw peer ---------------------------------------------------------- */

/* A blocking socket and what was read from it but not consumed yet. */
typedef struct dx_test_peer {
    int fd;
    uint8_t *buf; /* malloc'd (NULL until the first read), grown as needed */
    size_t len, cap;
} dx_test_peer;

/* Sends all of p on the blocking `fd`; fails the test on an error. */
void dx_test_send_all(int fd, const void *p, size_t len);

/* SO_RCVTIMEO and SO_SNDTIMEO of `fd` set to `ms`: a stuck peer fails. */
void dx_test_io_timeouts(int fd, unsigned ms);

/* One recv into the buffer (grown first when full): > 0 bytes, 0 at EOF,
 * -1 on error (errno). */
ssize_t dx_test_peer_fill(dx_test_peer *c);

/* Reads until n bytes are buffered; fails the test at EOF or an error. */
void dx_test_peer_need(dx_test_peer *c, size_t n);

/* Drops the first n buffered bytes. */
void dx_test_peer_consume(dx_test_peer *c, size_t n);

/* Reads to the end: 1 when the other side ended (EOF or reset), 0 when a
 * read failed otherwise (a timeout). What was read stays buffered. */
int dx_test_peer_eof(dx_test_peer *c);

/* Reads until the buffer holds an HTTP head (up to the blank line);
 * returns its length; fails the test at EOF or an error. */
size_t dx_test_peer_head(dx_test_peer *c);

/* ---- event recorder ------------------------------------------------------------ */

/* One recorded event; a fixture uses the fields its callbacks need. */
typedef struct dx_test_ev {
    int type;      /* the fixture's event kind, > 0 */
    int taken;     /* returned by dx_test_rec_wait already */
    uint64_t id;   /* a connection id */
    int opcode;
    int rc;        /* a result or an error code */
    unsigned code; /* a close code, or a count */
    long n;        /* a count */
    char *data;    /* NUL-terminated copy of the bytes given to dx_test_rec_add (NULL if out of memory) */
    size_t len;
} dx_test_ev;

/* Events in the fixture's array `evs` (room for `cap`), guarded by the
 * fixture's mutex and condition variable (which it may use for its own
 * waits too). */
typedef struct dx_test_rec {
    pthread_mutex_t *mu;
    pthread_cond_t *cv;
    dx_test_ev *evs;
    size_t nev, cap;
    unsigned wait_ms;                /* how long dx_test_rec_wait waits */
    const char *(*name)(int type);   /* names a type in the timeout message; may be NULL */
} dx_test_rec;

/* Sets `r` up over the caller's mutex, condvar and array; none is copied. */
void dx_test_rec_init(dx_test_rec *r, pthread_mutex_t *mu, pthread_cond_t *cv, dx_test_ev *evs, size_t cap,
                      unsigned wait_ms);

/* Appends *e (not taken) with a copy of data[0..len), wakes the waiters.
 * Takes the mutex; past `cap` events the event is dropped. */
void dx_test_rec_add(dx_test_rec *r, const dx_test_ev *e, const void *data, size_t len);

/* The oldest event of `type` not yet taken, marked taken; waits for it and
 * fails the test after wait_ms. Its data stays owned by the recorder. */
dx_test_ev dx_test_rec_wait(dx_test_rec *r, int type);

/* Events of `type` recorded so far, taken or not. */
size_t dx_test_rec_count(dx_test_rec *r, int type);

/* Marks every event of `type` recorded so far as taken. */
void dx_test_rec_drain(dx_test_rec *r, int type);

/* Frees the data copies (the loop has stopped); the array stays the caller's. */
void dx_test_rec_free(dx_test_rec *r);

#endif
