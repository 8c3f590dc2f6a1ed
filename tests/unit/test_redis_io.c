/*
 * tests/unit/test_redis_io.c: src/bus/redis_io.c, one asynchronous Redis
 * connection on a dx_loop run by the test's own thread, against
 *   - a real redis-server this program starts on a free port (plain, and
 *     TLS with a CA, server and client certificates made at test time with
 *     the openssl CLI; a missing redis-server or openssl fails the test);
 *   - a scripted server in this file (a Unix socket on the same loop) for
 *     what Redis will not do on demand: a reply fed one byte at a time
 *     (each byte read before the next is written: every split), a reply
 *     past the limits, a close in the middle of a reply.
 * Each run of the loop stops when the awaited state is reached (checked
 * every few ms) or fails after a generous bound.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include "bus/redis_io.h"
#include "net/transport.h"

#include <hiredis/hiredis.h>

#include <fcntl.h>
#include <linux/sockios.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>

#define WAIT_MS 20000

static dx_loop *loop;
static char dir[64];

/* ---- redis-server ---- */

typedef struct rsrv {
    pid_t pid;
    unsigned port;
} rsrv;

static unsigned free_port(void)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(s, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t len = sizeof a;
    assert_int_equal(getsockname(s, (struct sockaddr *)&a, &len), 0);
    close(s);
    return ntohs(a.sin_port);
}

/* tls: 0 plain, 1 TLS (clients need no certificate), 2 TLS + client certificates */
static void redis_start(rsrv *r, int tls)
{
    r->port = free_port();
    char port[16], path[3][128];
    snprintf(port, sizeof port, "%u", r->port);
    snprintf(path[0], sizeof path[0], "%s/srv.pem", dir);
    snprintf(path[1], sizeof path[1], "%s/srv.key", dir);
    snprintf(path[2], sizeof path[2], "%s/ca.pem", dir);
    r->pid = fork();
    assert_true(r->pid >= 0);
    if (r->pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        int devnull = open("/dev/null", O_WRONLY);
        dup2(devnull, 1);
        dup2(devnull, 2);
        if (tls)
            execlp("redis-server", "redis-server", "--port", "0", "--tls-port", port, "--bind", "127.0.0.1", "--dir",
                   dir, "--save", "", "--appendonly", "no", "--tls-cert-file", path[0], "--tls-key-file", path[1],
                   "--tls-ca-cert-file", path[2], "--tls-auth-clients", tls == 2 ? "yes" : "no", (char *)NULL);
        else
            execlp("redis-server", "redis-server", "--port", port, "--bind", "127.0.0.1", "--dir", dir, "--save", "",
                   "--appendonly", "no", (char *)NULL);
        _exit(127);
    }
    uint64_t until = dx_test_mono_ms() + WAIT_MS;
    for (;;) {
        int fd = dx_test_dial(r->port, 0);
        if (fd >= 0) {
            close(fd);
            return;
        }
        int st;
        if (waitpid(r->pid, &st, WNOHANG) == r->pid)
            fail_msg("redis-server exited at start (status %d): is it installed? (scripts/deps.sh test)", st);
        if (dx_test_mono_ms() > until)
            fail_msg("redis-server did not listen within 20 s");
        usleep(20000); /* polling for a child's listen, not synchronizing with our own loop */
    }
}

static void redis_stop(rsrv *r)
{
    if (r->pid > 0) {
        kill(r->pid, SIGTERM);
        waitpid(r->pid, NULL, 0);
        r->pid = 0;
    }
}

/* ---- the loop ---- */

static bool (*until_fn)(void);
static uint64_t until_deadline;

static void until_tick(dx_timer *t, void *ud)
{
    (void)t;
    (void)ud;
    if (until_fn() || dx_test_mono_ms() > until_deadline)
        dx_loop_stop(loop);
}

/* Runs the loop until ok() (checked every 2 ms); fails the test past WAIT_MS. */
static void run_until(bool (*ok)(void), const char *what)
{
    until_fn = ok;
    until_deadline = dx_test_mono_ms() + WAIT_MS;
    dx_timer *t = dx_timer_new(loop, until_tick, NULL);
    assert_non_null(t);
    dx_timer_start(t, 2, 2);
    assert_int_equal(dx_loop_run(loop), 0);
    dx_timer_free(t);
    if (!ok())
        fail_msg("timed out waiting for %s", what);
}

/* ---- what a connection reports ---- */

#define MAXR 4096

typedef struct rec {
    int connects, disconnects;
    char why[256];
    int n;                 /* replies (or NULLs) received */
    int nulls;
    int kind[MAXR];        /* reply type, -1 for NULL */
    long long ival[MAXR];
    char sval[MAXR][32];
    int npush;
    char push[16][64];     /* "kind:arg" of push replies */
    dx__rio *io;
    int free_at;           /* free io from inside reply number free_at (1-based); 0 never */
    bool free_in_disc;
    bool freed;
} rec;

static rec R;

static void on_connect(dx__rio *io, void *ud)
{
    (void)io;
    ((rec *)ud)->connects++;
}

static void on_disconnect(dx__rio *io, const char *why, void *ud)
{
    rec *r = ud;
    assert_ptr_equal(io, r->io);
    r->disconnects++;
    snprintf(r->why, sizeof r->why, "%s", why);
    if (r->free_in_disc) {
        dx__rio_free(io);
        dx__rio_free(io); /* twice: still once */
        r->freed = true;
    }
}

static void on_reply(dx__rio *io, void *reply, void *pd)
{
    rec *r = pd;
    assert_false(r->freed && r->free_at == 0); /* nothing after a free from outside */
    redisReply *rep = reply;
    int i = r->n++;
    assert_true(i < MAXR);
    r->kind[i] = rep ? rep->type : -1;
    if (!rep) {
        r->nulls++;
    } else if (rep->type == REDIS_REPLY_INTEGER) {
        r->ival[i] = rep->integer;
    } else if (rep->type == REDIS_REPLY_STRING || rep->type == REDIS_REPLY_STATUS || rep->type == REDIS_REPLY_ERROR) {
        snprintf(r->sval[i], sizeof r->sval[i], "%.*s", (int)rep->len, rep->str);
    } else if (rep->type == REDIS_REPLY_ARRAY) {
        r->ival[i] = (long long)rep->elements;
    }
    if (r->free_at && r->n == r->free_at) {
        dx__rio_free(io);
        r->freed = true;
        /* a command now is refused */
        const char *argv[] = {"PING"};
        assert_int_equal(dx__rio_argv(io, on_reply, r, 1, argv, NULL), DX_EIO);
    }
}

static void on_push(dx__rio *io, void *reply, void *pd)
{
    (void)io;
    rec *r = pd;
    redisReply *rep = reply;
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_ARRAY);
    assert_true(r->npush < 16);
    snprintf(r->push[r->npush++], 64, "%.*s:%.*s", (int)rep->element[0]->len, rep->element[0]->str,
             rep->elements > 2 && rep->element[2]->type == REDIS_REPLY_STRING ? (int)rep->element[2]->len : 0,
             rep->elements > 2 && rep->element[2]->type == REDIS_REPLY_STRING ? rep->element[2]->str : "");
}

static dx__rio *rec_connect(rec *r, const dx__rio_opts *base)
{
    memset(r, 0, sizeof *r);
    dx__rio_opts o = *base;
    o.on_connect = on_connect;
    o.on_disconnect = on_disconnect;
    o.ud = r;
    int err = 0;
    char why[256];
    r->io = dx__rio_new(loop, &o, &err, why, sizeof why);
    if (!r->io)
        fail_msg("dx__rio_new: %s (%s)", why, dx_strerror(err));
    return r->io;
}

static int want_n;
static bool got_n(void) { return R.n >= want_n; }
static bool got_disc(void) { return R.disconnects > 0; }
static bool got_disc_or_n(void) { return R.disconnects > 0 || R.n >= want_n; }
static bool got_push(void) { return R.npush >= 4; }

static void cmd(dx__rio *io, const char *fmt, const char *arg)
{
    assert_int_equal(dx__rio_fmt(io, on_reply, &R, fmt, arg), 0);
}

/* ---- against redis-server ---- */

static void test_pipelined_in_order(void **state)
{
    (void)state;
    rsrv s;
    redis_start(&s, 0);
    dx__rio_opts o = {.addr = "127.0.0.1", .port = (int)s.port};
    dx__rio *io = rec_connect(&R, &o);
    /* queued before the connection is up, answered in order */
    cmd(io, "DEL %s", "dx:io:n");
    for (int i = 0; i < 2000; i++)
        cmd(io, "INCR %s", "dx:io:n");
    want_n = 2001;
    run_until(got_n, "2001 replies");
    assert_int_equal(R.connects, 1);
    assert_int_equal(R.nulls, 0);
    for (int i = 1; i <= 2000; i++) {
        assert_int_equal(R.kind[i], REDIS_REPLY_INTEGER);
        assert_int_equal(R.ival[i], i);
    }
    assert_int_equal(dx__rio_pending(io), 0);
    /* a value larger than one read (several reads, one reply) */
    size_t big = 3u << 20;
    char *v = malloc(big);
    memset(v, 'x', big);
    v[big - 1] = 'y';
    assert_int_equal(dx__rio_fmt(io, on_reply, &R, "SET dx:io:big %b", v, big), 0);
    cmd(io, "STRLEN %s", "dx:io:big");
    cmd(io, "GETRANGE dx:io:big -1 %s", "-1");
    want_n = 2004;
    run_until(got_n, "the big value's replies");
    assert_int_equal(R.ival[2002], (long long)big);
    assert_string_equal(R.sval[2003], "y");
    free(v);
    dx__rio_free(io);
    redis_stop(&s);
}

static void test_free_inside_reply_callback(void **state)
{
    (void)state;
    rsrv s;
    redis_start(&s, 0);
    dx__rio_opts o = {.addr = "127.0.0.1", .port = (int)s.port};
    dx__rio *io = rec_connect(&R, &o);
    R.free_at = 2;
    for (int i = 0; i < 6; i++)
        cmd(io, "ECHO %s", "a");
    want_n = 6;
    run_until(got_n, "6 callbacks");
    /* the 2nd freed it: the 4 after it were called with NULL, in free */
    assert_int_equal(R.n, 6);
    assert_int_equal(R.nulls, 4);
    assert_int_equal(R.kind[0], REDIS_REPLY_STRING);
    assert_int_equal(R.kind[1], REDIS_REPLY_STRING);
    assert_int_equal(R.disconnects, 0);
    redis_stop(&s);
}

static void test_pubsub_push_handler(void **state)
{
    (void)state;
    rsrv s;
    redis_start(&s, 0);
    dx__rio_opts o = {.addr = "127.0.0.1", .port = (int)s.port};
    dx__rio *io = rec_connect(&R, &o);
    cmd(io, "CLIENT SETNAME %s", "dxsub"); /* before the subscribe: the FIFO's */
    const char *argv[] = {"SUBSCRIBE", "dx:io:a", "dx:io:b"};
    assert_int_equal(dx__rio_argv(io, on_push, &R, 3, argv, NULL), 0);
    cmd(io, "PING %s", "p"); /* in pub/sub mode: ["pong", "p"], the FIFO's */
    want_n = 2;
    run_until(got_n, "SETNAME and PING answered");
    assert_string_equal(R.sval[0], "OK");
    assert_int_equal(R.kind[1], REDIS_REPLY_ARRAY);
    /* the confirmations went to the push handler */
    assert_int_equal(R.npush, 2);
    static rec pub;
    dx__rio *p = rec_connect(&pub, &o);
    assert_int_equal(dx__rio_fmt(p, NULL, NULL, "PUBLISH dx:io:b %s", "hello"), 0);
    assert_int_equal(dx__rio_fmt(p, NULL, NULL, "PUBLISH dx:io:a %s", "world"), 0);
    run_until(got_push, "two messages");
    assert_string_equal(R.push[2], "message:hello");
    assert_string_equal(R.push[3], "message:world");
    assert_int_equal(R.n, 2); /* none of them went to the FIFO */
    dx__rio_free(p);
    dx__rio_free(io);
    redis_stop(&s);
}


static void test_connect_refused_from_the_loop(void **state)
{
    (void)state;
    char path[128];
    snprintf(path, sizeof path, "%s/nobody.sock", dir);
    dx__rio_opts o = {.unix_path = path};
    dx__rio *io = rec_connect(&R, &o);
    cmd(io, "PING%s", "");
    assert_int_equal(R.disconnects, 0); /* not from inside dx__rio_new */
    run_until(got_disc, "the disconnect");
    assert_int_equal(R.nulls, 1);
    assert_non_null(strstr(R.why, "connect to Redis failed"));
    assert_false(dx__rio_up(io));
    assert_int_equal(dx__rio_fmt(io, on_reply, &R, "PING"), DX_EIO);
    dx__rio_free(io);
}

static void test_every_allocation_fails_once(void **state)
{
    (void)state;
    rsrv s;
    redis_start(&s, 0);
    for (long i = 1;; i++) {
        dx_test_seams ts;
        dx_test_seams_init(&ts);
        ts.fail_at = i;
        dx__rio_opts o = {.addr = "127.0.0.1", .port = (int)s.port, .seams = &ts.seams,
                          .on_connect = on_connect, .on_disconnect = on_disconnect, .ud = &R};
        memset(&R, 0, sizeof R);
        int err = 0;
        dx__rio *io = dx__rio_new(loop, &o, &err, NULL, 0);
        if (!io) {
            assert_int_equal(err, DX_ENOMEM);
            assert_int_equal(ts.live, 0);
            continue;
        }
        R.io = io;
        int ok = 0;
        for (int k = 0; k < 600; k++) { /* past the FIFO's and the buffer's first sizes */
            int rc = dx__rio_fmt(io, on_reply, &R, "PING");
            assert_true(rc == 0 || rc == DX_ENOMEM);
            ok += rc == 0;
        }
        want_n = ok;
        run_until(got_disc_or_n, "the replies");
        assert_int_equal(R.disconnects, 0);
        assert_int_equal(R.nulls, 0);
        for (int k = 0; k < ok; k++)
            assert_string_equal(R.sval[k], "PONG");
        dx__rio_free(io);
        assert_int_equal(ts.live, 0);
        if (ts.calls < i)
            break; /* no allocation failed: every one was tried */
    }
    redis_stop(&s);
}

/* ---- the scripted server ---- */

typedef struct script {
    int lfd, fd;
    dx_watch *lw, *w;
    const char *out;        /* what to send once `need` bytes came */
    size_t outlen, sent;
    size_t need, got;
    bool one_byte;          /* each byte once the previous one was read */
    bool close_after;       /* close once everything is sent */
} script;

static script S;

static void sc_close(void)
{
    dx_watch_free(S.w);
    S.w = NULL;
    if (S.fd >= 0)
        close(S.fd);
    S.fd = -1;
}

static void sc_event(dx_watch *w, int fd, unsigned ev, void *ud)
{
    (void)w;
    (void)ud;
    if (ev & DX_WATCH_READ) {
        char buf[4096];
        ssize_t n = read(fd, buf, sizeof buf);
        if (n > 0)
            S.got += (size_t)n;
        else if (n == 0 || errno != EAGAIN) {
            sc_close();
            return;
        }
    }
    if (S.got < S.need || S.sent >= S.outlen)
        return;
    if (S.one_byte) {
        int unread = 0;
        if (ioctl(fd, SIOCOUTQ, &unread) == 0 && unread > 0)
            return; /* the previous byte is not read yet */
        if (write(fd, S.out + S.sent, 1) == 1)
            S.sent++;
    } else {
        ssize_t n = write(fd, S.out + S.sent, S.outlen - S.sent);
        if (n > 0)
            S.sent += (size_t)n;
    }
    if (S.sent >= S.outlen && S.close_after)
        sc_close();
}

static void sc_accept(dx_watch *w, int fd, unsigned ev, void *ud)
{
    (void)w;
    (void)ev;
    (void)ud;
    int c = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (c < 0)
        return;
    assert_int_equal(S.fd, -1);
    S.fd = c;
    S.w = dx_watch_new(loop, c, DX_WATCH_READ | DX_WATCH_WRITE, sc_event, NULL, NULL);
    assert_non_null(S.w);
}

static void sc_start(const char *out, size_t outlen, size_t need, bool one_byte, bool close_after, char *path)
{
    memset(&S, 0, sizeof S);
    S.fd = -1;
    S.out = out;
    S.outlen = outlen;
    S.need = need;
    S.one_byte = one_byte;
    S.close_after = close_after;
    snprintf(path, 128, "%s/script.sock", dir);
    unlink(path);
    S.lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
    assert_int_equal(bind(S.lfd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(S.lfd, 4), 0);
    S.lw = dx_watch_new(loop, S.lfd, DX_WATCH_READ, sc_accept, NULL, NULL);
    assert_non_null(S.lw);
}

static void sc_stop(void)
{
    sc_close();
    dx_watch_free(S.lw);
    close(S.lfd);
}

/* The formatted length of `n` PINGs: what the script waits for. */
#define PING_LEN 14 /* "*1\r\n$4\r\nPING\r\n" */

static const char SEVEN[] = "+OK\r\n"
                            ":42\r\n"
                            "$5\r\nhello\r\n"
                            "$-1\r\n"
                            "*3\r\n$1\r\na\r\n:-7\r\n*1\r\n+x\r\n"
                            "-ERR boom\r\n"
                            "$0\r\n\r\n";

static void test_reply_split_at_every_byte(void **state)
{
    (void)state;
    char path[128];
    sc_start(SEVEN, sizeof SEVEN - 1, 7 * PING_LEN, true, false, path);
    dx__rio_opts o = {.unix_path = path};
    dx__rio *io = rec_connect(&R, &o);
    for (int i = 0; i < 7; i++)
        cmd(io, "PING%s", "");
    want_n = 7;
    run_until(got_disc_or_n, "7 replies fed byte by byte");
    assert_int_equal(S.sent, sizeof SEVEN - 1);
    assert_int_equal(R.disconnects, 0);
    assert_int_equal(R.kind[0], REDIS_REPLY_STATUS);
    assert_string_equal(R.sval[0], "OK");
    assert_int_equal(R.ival[1], 42);
    assert_string_equal(R.sval[2], "hello");
    assert_int_equal(R.kind[3], REDIS_REPLY_NIL);
    assert_int_equal(R.kind[4], REDIS_REPLY_ARRAY);
    assert_int_equal(R.ival[4], 3);
    assert_int_equal(R.kind[5], REDIS_REPLY_ERROR);
    assert_string_equal(R.sval[5], "ERR boom");
    assert_int_equal(R.kind[6], REDIS_REPLY_STRING);
    assert_string_equal(R.sval[6], "");
    dx__rio_free(io);
    sc_stop();
}

static void over_limit(const char *out, size_t outlen, const dx__rio_opts *lim, const char *why)
{
    char path[128];
    sc_start(out, outlen, 3 * PING_LEN, false, false, path);
    dx__rio_opts o = *lim;
    o.unix_path = path;
    dx__rio *io = rec_connect(&R, &o);
    for (int i = 0; i < 3; i++)
        cmd(io, "PING%s", "");
    run_until(got_disc, "the drop");
    /* the first reply fits; the second is over: it and the third get NULL */
    assert_int_equal(R.n, 3);
    assert_int_equal(R.kind[0], REDIS_REPLY_STATUS);
    assert_int_equal(R.nulls, 2);
    assert_int_equal(R.disconnects, 1);
    if (!strstr(R.why, why))
        fail_msg("why: '%s', expected '%s' in it", R.why, why);
    assert_int_equal(dx__rio_fmt(io, on_reply, &R, "PING"), DX_EIO);
    dx__rio_free(io);
    sc_stop();
}

static void test_reply_over_the_limit_drops(void **state)
{
    (void)state;
    /* a bulk string of 100000 bytes (several reads) with reply_max 1000:
     * dropped as it comes */
    size_t n = 5 + 10 + 100000 + 2;
    char *out = malloc(n + 1);
    memcpy(out, "+OK\r\n$100000\r\n", 15);
    memset(out + 15, 'z', 100000);
    memcpy(out + 15 + 100000, "\r\n", 2);
    dx__rio_opts lim = {.reply_max = 1000};
    over_limit(out, n, &lim, "larger than 1000 bytes");
    /* complete within one read but still over */
    dx__rio_opts lim2 = {.reply_max = 20};
    static const char small[] = "+OK\r\n$30\r\n012345678901234567890123456789\r\n";
    over_limit(small, sizeof small - 1, &lim2, "the limit is 20");
    /* an array of too many elements */
    dx__rio_opts lim3 = {.elements_max = 10};
    static const char arr[] = "+OK\r\n*11\r\n:1\r\n:1\r\n:1\r\n:1\r\n:1\r\n:1\r\n:1\r\n:1\r\n:1\r\n:1\r\n:1\r\n";
    over_limit(arr, sizeof arr - 1, &lim3, "an array of 11 elements");
    /* a protocol error */
    static const char bad[] = "+OK\r\n?what\r\n";
    over_limit(bad, sizeof bad - 1, &(dx__rio_opts){0}, "protocol error");
    free(out);
}

static void test_out_limit_refuses(void **state)
{
    (void)state;
    char path[128];
    sc_start("", 0, (size_t)-1, false, false, path);
    dx__rio_opts o = {.unix_path = path, .out_max = 100};
    dx__rio *io = rec_connect(&R, &o);
    int ok = 0, refused = 0;
    for (int i = 0; i < 10; i++) {
        int rc = dx__rio_fmt(io, on_reply, &R, "PING");
        ok += rc == 0;
        refused += rc == DX_ELIMIT;
    }
    assert_int_equal(ok, 100 / PING_LEN);
    assert_int_equal(refused, 10 - ok);
    assert_int_equal(dx__rio_pending(io), (size_t)ok);
    dx__rio_free(io); /* the queued ones get NULL */
    assert_int_equal(R.nulls, ok);
    sc_stop();
}

static void test_server_closes_mid_reply(void **state)
{
    (void)state;
    static const char out[] = ":1\r\n$10\r\nhel";
    char path[128];
    sc_start(out, sizeof out - 1, 2 * PING_LEN, false, true, path);
    dx__rio_opts o = {.unix_path = path};
    dx__rio *io = rec_connect(&R, &o);
    cmd(io, "PING%s", "");
    cmd(io, "PING%s", "");
    run_until(got_disc, "the close");
    assert_int_equal(R.n, 2);
    assert_int_equal(R.ival[0], 1);
    assert_int_equal(R.kind[1], -1);
    assert_non_null(strstr(R.why, "Redis closed the connection"));
    dx__rio_free(io);
    sc_stop();
}

static void test_free_inside_disconnect_callback(void **state)
{
    (void)state;
    static const char out[] = ":1\r\n";
    char path[128];
    sc_start(out, sizeof out - 1, PING_LEN, false, true, path);
    dx__rio_opts o = {.unix_path = path};
    dx__rio *io = rec_connect(&R, &o);
    R.free_in_disc = true;
    cmd(io, "PING%s", "");
    cmd(io, "PING%s", "");
    cmd(io, "PING%s", "");
    run_until(got_disc, "the close");
    assert_true(R.freed); /* io is gone: not touched again (ASan) */
    assert_int_equal(R.n, 3);
    assert_int_equal(R.nulls, 2);
    (void)io;
    sc_stop();
}

static void test_free_inside_a_null_callback(void **state)
{
    (void)state;
    /* the owner fails a request on its NULL and drops the connection from
     * there (redis_conn.c's conn_drop): the rest get NULL inside that
     * free, and no disconnect callback comes */
    static const char out[] = ":1\r\n";
    char path[128];
    sc_start(out, sizeof out - 1, PING_LEN, false, true, path);
    dx__rio_opts o = {.unix_path = path};
    dx__rio *io = rec_connect(&R, &o);
    R.free_at = 2;
    for (int i = 0; i < 4; i++)
        cmd(io, "PING%s", "");
    want_n = 4;
    run_until(got_n, "4 callbacks");
    assert_int_equal(R.n, 4);
    assert_int_equal(R.ival[0], 1);
    assert_int_equal(R.nulls, 3);
    assert_int_equal(R.disconnects, 0);
    sc_stop();
}

/* ---- TLS ---- */

static void make_certs(void)
{
    char sh[2048];
    snprintf(sh, sizeof sh,
             "set -e; cd %s; "
             "K='-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes'; "
             "openssl req -x509 $K -keyout ca.key -out ca.pem -days 2 -subj /CN=dx-test-ca; "
             "openssl req -x509 $K -keyout other.key -out other.pem -days 2 -subj /CN=dx-other-ca; "
             "printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > ext.cnf; "
             "openssl req $K -keyout srv.key -out srv.csr -subj /CN=localhost; "
             "openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem -days 2 "
             "-extfile ext.cnf; "
             "openssl req $K -keyout cli.key -out cli.csr -subj /CN=dx-client; "
             "openssl x509 -req -in cli.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out cli.pem -days 2",
             dir);
    char cmdline[2200];
    snprintf(cmdline, sizeof cmdline, "(%s) >/dev/null 2>&1", sh);
    if (system(cmdline) != 0)
        fail_msg("openssl could not make the test certificates");
}

static dx__tls_ctx *tls_ctx(const char *ca, bool client_cert)
{
    char caf[160], cert[160], key[160], eb[256];
    snprintf(caf, sizeof caf, "%s/%s", dir, ca);
    snprintf(cert, sizeof cert, "%s/cli.pem", dir);
    snprintf(key, sizeof key, "%s/cli.key", dir);
    int err = 0;
    dx__tls_ctx *c = dx__tls_client_ctx_new(caf, 0, eb, sizeof eb, &err);
    if (!c)
        fail_msg("client context: %s", eb);
    if (client_cert && dx__tls_client_ctx_cert(c, cert, key, eb, sizeof eb) != 0)
        fail_msg("client certificate: %s", eb);
    return c;
}

static void tls_ping(unsigned port, dx__tls_ctx *c, const char *host, const char *expect_why)
{
    dx__rio_opts o = {.addr = "127.0.0.1", .port = (int)port, .tls = c, .tls_host = host};
    dx__rio *io = rec_connect(&R, &o);
    cmd(io, "PING%s", "");
    want_n = 1;
    if (expect_why) {
        run_until(got_disc, "the TLS failure");
        if (!strstr(R.why, expect_why))
            fail_msg("why: '%s', expected '%s' in it", R.why, expect_why);
        assert_int_equal(R.nulls, 1);
        assert_int_equal(R.connects, 0);
    } else {
        run_until(got_disc_or_n, "PONG over TLS");
        assert_int_equal(R.disconnects, 0);
        assert_int_equal(R.connects, 1);
        assert_string_equal(R.sval[0], "PONG");
        /* a reply of many TLS records, several reads with data buffered in
         * OpenSSL between them */
        size_t big = 2u << 20;
        char *v = malloc(big);
        memset(v, 'q', big);
        assert_int_equal(dx__rio_fmt(io, on_reply, &R, "SET dx:io:tls %b", v, big), 0);
        assert_int_equal(dx__rio_fmt(io, on_reply, &R, "GET dx:io:tls"), 0);
        for (int i = 0; i < 50; i++)
            cmd(io, "ECHO %s", "e");
        want_n = 53;
        run_until(got_disc_or_n, "the big value back over TLS");
        assert_int_equal(R.disconnects, 0);
        assert_int_equal(R.kind[2], REDIS_REPLY_STRING);
        assert_string_equal(R.sval[52], "e");
        free(v);
    }
    dx__rio_free(io);
}

static void test_tls(void **state)
{
    (void)state;
    make_certs();
    rsrv s;
    redis_start(&s, 1);
    dx__tls_ctx *good = tls_ctx("ca.pem", false), *other = tls_ctx("other.pem", false);
    tls_ping(s.port, good, "localhost", NULL);
    tls_ping(s.port, good, "127.0.0.1", NULL);
    tls_ping(s.port, other, "localhost", "certificate verify failed");
    tls_ping(s.port, good, "redis.example", "TLS handshake with Redis (redis.example) failed");
    redis_stop(&s);
    /* tls-auth-clients yes: with the client certificate only */
    redis_start(&s, 2);
    dx__tls_ctx *withcert = tls_ctx("ca.pem", true);
    tls_ping(s.port, withcert, "localhost", NULL);
    dx__rio_opts o = {.addr = "127.0.0.1", .port = (int)s.port, .tls = good, .tls_host = "localhost"};
    dx__rio *io = rec_connect(&R, &o);
    cmd(io, "PING%s", "");
    run_until(got_disc, "the refusal of a client with no certificate");
    assert_int_equal(R.nulls, 1);
    dx__rio_free(io);
    redis_stop(&s);
    dx__tls_ctx_free(good);
    dx__tls_ctx_free(other);
    dx__tls_ctx_free(withcert);
}

static int setup(void **state)
{
    (void)state;
    R = (rec){0};
    return 0;
}

int main(void)
{
    dx_test_filter_from_env();
    signal(SIGPIPE, SIG_IGN);
    snprintf(dir, sizeof dir, "/tmp/dx-redis-io-XXXXXX");
    if (!mkdtemp(dir))
        return 1;
    loop = dx_loop_new(NULL, NULL);
    if (!loop)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_pipelined_in_order, setup),
        cmocka_unit_test_setup(test_free_inside_reply_callback, setup),
        cmocka_unit_test_setup(test_pubsub_push_handler, setup),
        cmocka_unit_test_setup(test_connect_refused_from_the_loop, setup),
        cmocka_unit_test_setup(test_every_allocation_fails_once, setup),
        cmocka_unit_test_setup(test_reply_split_at_every_byte, setup),
        cmocka_unit_test_setup(test_reply_over_the_limit_drops, setup),
        cmocka_unit_test_setup(test_out_limit_refuses, setup),
        cmocka_unit_test_setup(test_server_closes_mid_reply, setup),
        cmocka_unit_test_setup(test_free_inside_disconnect_callback, setup),
        cmocka_unit_test_setup(test_free_inside_a_null_callback, setup),
        cmocka_unit_test_setup(test_tls, setup),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    dx_loop_free(loop);
    dx_test_rm_rf(dir);
    return rc;
}
