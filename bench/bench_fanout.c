/*
 * bench/bench_fanout.c: fan-out on one loop. One message to N (10,000)
 * connections of one dx_server, per loop iteration, as a gateway does for a
 * broadcast; reported per delivery (one message to one connection):
 *
 *   ns               wall time from the first send of a round until every
 *                    queue is empty (the kernel took everything), divided by
 *                    the round's deliveries;
 *   send_ns          the part spent in the send calls themselves (queueing),
 *                    before the loop's flush writes;
 *   writev           transport writes (each one sendmsg(2)) made by the
 *                    library, counted by the ws layer (dx__wsl.writes);
 *   allocs           calls to the loop's allocator (a counting dx_seams)
 *                    during the measured rounds;
 *   copied           payload bytes copied into send memory (arena or
 *                    backlog: dx__wsl.copied) per delivery; references
 *                    (dx_conn_send_msg) copy none.
 *
 * Rows: dx_conn_send_msg (one dx_msg shared by all connections) with 1 and
 * with 8 messages per iteration (8 per connection: one writev carries them
 * all), and dx_conn_send (a private copy per delivery) for comparison.
 *
 * The readers are raw sockets in one child process (N descriptors there, N
 * here: the fd limit is per process) that read and discard with epoll. The
 * loop is driven by an eventfd this program owns (dx__io): a round sends,
 * the loop's before-sleep flush writes, and the next wake-up checks that
 * every queue is empty before the next round. A few rounds warm the pools
 * first and are not counted.
 *
 * Run: make bench, or ./bench/bench_fanout [connections [rounds]].
 */
#define _GNU_SOURCE
#include "duplex/msg.h"
#include "duplex/server.h"
#include "ws/ws.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define WARMUP 3

typedef struct row {
    const char *api;  /* "msg" or "send" */
    size_t payload;
    int per_iter;
} row;

static const row rows[] = {
    {"msg", 64, 1}, {"msg", 64, 8}, {"msg", 1024, 1}, {"msg", 1024, 8}, {"send", 64, 1}, {"send", 64, 8},
    {"send", 1024, 1},
};
#define NROWS (sizeof rows / sizeof *rows)

typedef struct bench {
    dx_loop *loop;
    dx_server *srv;
    dx__io kick_io;
    int kfd;
    size_t n, nopen, rounds;
    dx_conn **conns;
    long allocs;            /* the loop allocator's calls */
    /* the running row */
    size_t row;
    size_t round;           /* 0..WARMUP+rounds */
    int sent;
    dx_msg *m[8];
    uint8_t *payload[8];
    uint64_t t0, t_sent, ns, send_ns;
    long allocs0, allocs_sum;
    uint64_t writes0, writes_sum, copied0, copied_sum;
    int failed;
} bench;

static bench B;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void *count_realloc(void *ud, void *ptr, size_t size)
{
    (void)ud;
    if (size == 0) {
        free(ptr);
        return NULL;
    }
    B.allocs++;
    return realloc(ptr, size);
}

static int seam_random(void *ud, void *buf, size_t len)
{
    return dx_seams_default()->random(ud, buf, len);
}

static uint64_t seam_now(void *ud)
{
    (void)ud;
    return now_ns();
}

static const dx_seams counting = {.realloc = count_realloc, .random = seam_random, .now_ns = seam_now};

static void kick(void)
{
    uint64_t one = 1;
    ssize_t r = write(B.kfd, &one, sizeof one);
    (void)r;
}

static dx__wsl *wsl(void) { return dx__conn_ep(B.conns[0])->wsl; }

static void row_begin(void)
{
    const row *r = &rows[B.row];
    for (int k = 0; k < r->per_iter; k++) {
        B.payload[k] = malloc(r->payload);
        for (size_t i = 0; i < r->payload; i++)
            B.payload[k][i] = (uint8_t)(k * 31 + (int)i);
        B.m[k] = dx_msg_new(DX_OP_BINARY, B.payload[k], r->payload, NULL);
        if (!B.m[k]) {
            fprintf(stderr, "bench_fanout: dx_msg_new failed\n");
            exit(1);
        }
    }
    B.round = 0;
    B.ns = B.send_ns = 0;
    B.allocs_sum = 0;
    B.writes_sum = B.copied_sum = 0;
}

static void row_end(void)
{
    const row *r = &rows[B.row];
    double d = (double)B.rounds * (double)B.n * r->per_iter;
    printf("%-18s %8zu %10d %10.1f %10.1f %10.4f %10.4f %10.1f\n",
           r->api[0] == 'm' ? "dx_conn_send_msg" : "dx_conn_send", r->payload, r->per_iter, (double)B.ns / d,
           (double)B.send_ns / d, (double)B.writes_sum / d, (double)B.allocs_sum / d, (double)B.copied_sum / d);
    fflush(stdout);
    for (int k = 0; k < r->per_iter; k++) {
        dx_msg_unref(B.m[k]);
        free(B.payload[k]);
    }
}

static void round_send(void)
{
    const row *r = &rows[B.row];
    B.allocs0 = B.allocs;
    B.writes0 = wsl()->writes;
    B.copied0 = wsl()->copied;
    B.t0 = now_ns();
    for (int k = 0; k < r->per_iter; k++)
        for (size_t i = 0; i < B.n; i++) {
            int rc = r->api[0] == 'm' ? dx_conn_send_msg(B.conns[i], B.m[k])
                                      : dx_conn_send(B.conns[i], DX_OP_BINARY, B.payload[k], r->payload);
            if (rc && !B.failed) {
                fprintf(stderr, "bench_fanout: send failed: %s\n", dx_strerror(rc));
                B.failed = 1;
            }
        }
    B.t_sent = now_ns();
    B.sent = 1;
}

/* Every queue empty: the kernel has taken the round. */
static int drained(void)
{
    for (size_t i = 0; i < B.n; i++)
        if (dx_conn_buffered(B.conns[i]))
            return 0;
    return 1;
}

static void on_kick(dx__io *io, uint32_t events)
{
    (void)io;
    (void)events;
    uint64_t v;
    ssize_t rr = read(B.kfd, &v, sizeof v);
    (void)rr;
    if (B.failed) {
        dx_loop_stop(B.loop);
        return;
    }
    if (B.sent) {
        if (!drained()) {
            kick(); /* EPOLLOUT makes progress meanwhile */
            return;
        }
        uint64_t dt = now_ns() - B.t0;
        if (B.round >= WARMUP) {
            B.ns += dt;
            B.send_ns += B.t_sent - B.t0;
            B.allocs_sum += B.allocs - B.allocs0;
            B.writes_sum += wsl()->writes - B.writes0;
            B.copied_sum += wsl()->copied - B.copied0;
        }
        B.sent = 0;
        if (++B.round == WARMUP + B.rounds) {
            row_end();
            if (++B.row == NROWS) {
                dx_loop_stop(B.loop);
                return;
            }
            row_begin();
        }
    }
    round_send();
    kick();
}

static void on_open(dx_conn *c, void *ud)
{
    (void)ud;
    if (B.nopen < B.n)
        B.conns[B.nopen++] = c;
    if (B.nopen == B.n) {
        row_begin();
        kick();
    }
}

static void on_close(dx_conn *c, unsigned code, const char *reason, size_t len, void *ud)
{
    (void)c, (void)reason, (void)len, (void)ud;
    if (!B.failed && B.row < NROWS) {
        fprintf(stderr, "bench_fanout: a connection closed during the run (code %u)\n", code);
        B.failed = 1;
    }
}

static void raise_nofile(size_t want)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < want) {
        rl.rlim_cur = rl.rlim_max < want ? rl.rlim_max : want;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* The child: n raw WebSocket clients that read and discard. Exits when all
 * have seen EOF (the server freed them) or after a long bound. */
static void readers(unsigned port, size_t n, int ready_fd)
{
    raise_nofile(n + 64);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    static const char req[] = "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                              "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    size_t open = 0;
    for (size_t i = 0; i < n; i++) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) < 0 ||
            send(fd, req, sizeof req - 1, MSG_NOSIGNAL) != (ssize_t)(sizeof req - 1)) {
            fprintf(stderr, "bench_fanout: reader %zu: %s\n", i, strerror(errno));
            _exit(1);
        }
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
        open++;
    }
    char c = 1;
    ssize_t w = write(ready_fd, &c, 1);
    (void)w;
    static uint8_t buf[1 << 16];
    struct epoll_event evs[256];
    uint64_t deadline = now_ns() + 600ull * 1000000000u;
    while (open && now_ns() < deadline) {
        int k = epoll_wait(ep, evs, 256, 1000);
        for (int i = 0; i < k; i++) {
            ssize_t r = recv(evs[i].data.fd, buf, sizeof buf, MSG_DONTWAIT);
            if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
                close(evs[i].data.fd);
                open--;
            }
        }
    }
    _exit(0);
}

int main(int argc, char **argv)
{
    B.n = argc > 1 ? strtoul(argv[1], NULL, 10) : 10000;
    B.rounds = argc > 2 ? strtoul(argv[2], NULL, 10) : 20;
    raise_nofile(B.n + 64);
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < B.n + 64) {
        size_t n = rl.rlim_cur > 128 ? rl.rlim_cur - 64 : 64;
        fprintf(stderr, "bench_fanout: descriptor limit %llu: %zu connections instead of %zu\n",
                (unsigned long long)rl.rlim_cur, n, B.n);
        B.n = n;
    }
    B.conns = calloc(B.n, sizeof *B.conns);
    static const dx_log quiet = {.level = DX_LOG_WARN};
    dx_loop_options lo = {.seams = &counting, .log = &quiet};
    int err;
    B.loop = dx_loop_new(&lo, &err);
    dx_server_options o = {.host = "127.0.0.1", .port = DX_PORT_EPHEMERAL, .ping_interval_ms = (unsigned)-1};
    o.send_max = 64u << 20; /* the readers may lag a round; nobody is a slow consumer here */
    o.handshake_timeout_ms = 60000;
    o.cb.on_open = on_open;
    o.cb.on_close = on_close;
    B.srv = B.loop ? dx_server_new(B.loop, &o, &err) : NULL;
    if (!B.srv || dx_server_start(B.srv)) {
        fprintf(stderr, "bench_fanout: cannot start the server: %s\n", dx_strerror(err));
        return 1;
    }
    B.kfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    B.kick_io = (dx__io){.fd = B.kfd, .cb = on_kick};
    if (B.kfd < 0 || dx__io_start(B.loop, &B.kick_io, EPOLLIN)) {
        fprintf(stderr, "bench_fanout: eventfd: %s\n", strerror(errno));
        return 1;
    }
    int pfd[2];
    if (pipe(pfd))
        return 1;
    pid_t pid = fork();
    if (pid == 0) {
        close(pfd[0]);
        readers(dx_server_port(B.srv), B.n, pfd[1]);
    }
    close(pfd[1]);
    printf("fan-out: one loop, %zu connections (readers: one process of raw sockets), %zu rounds after %d "
           "warm-up, per delivery\n",
           B.n, B.rounds, WARMUP);
    printf("%-18s %8s %10s %10s %10s %10s %10s %10s\n", "api", "payload", "msgs/iter", "ns", "send_ns", "writev",
           "allocs", "copied");
    fflush(stdout);
    (void)dx_loop_run(B.loop);
    dx__io_stop(B.loop, &B.kick_io);
    close(B.kfd);
    dx_server_free(B.srv); /* the readers see EOF and exit */
    dx_loop_free(B.loop);
    int st = 0;
    waitpid(pid, &st, 0);
    close(pfd[0]);
    free(B.conns);
    if (B.failed) {
        fprintf(stderr, "bench_fanout: failed\n");
        return 1;
    }
    return 0;
}
