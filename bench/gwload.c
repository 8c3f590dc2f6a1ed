/*
 * bench/gwload.c: the load generator of the gateway fan-out benchmark
 * (scripts/bench_gateway.sh, docs/benchmarks.md "Gateway fan-out").
 *
 * Layer: a benchmark tool, libc only: it speaks just enough WebSocket and
 * HTTP/1.1 by hand to subscribe, publish and count, so it measures a server
 * with none of the server's own code.
 *
 *   gwload --port P [--host 127.0.0.1] [-c SUBS] [--procs N]
 *          [--sub-path /ws?subscribe=bench.t] [--pub-path /ws?publish=bench.t]
 *          [--mode batched|alone|api] [--batch K] [--rates 50,100,...]
 *          [--step-secs S] [--warmup W] [--server-pid PID] [--perf]
 *          [--api-key KEY] [--topic T] [--label NAME] [--sub-ports P1,P2,...]
 *
 * Readers: --procs child processes (forked before the publisher starts)
 * open SUBS subscriber connections between them, raw sockets on one epoll
 * each, and parse the server's frames in place. With --sub-ports the
 * subscribers are spread round robin over those ports (several gateway
 * nodes on one host: scripts/bench_cluster.sh), the publisher still goes to
 * --port. Every message is a binary
 * frame of 16 bytes: u32 sequence number, u32 step index, u64
 * CLOCK_MONOTONIC ns at send (little-endian). Per subscriber the sequence
 * must be exactly the previous + 1 (the first one 0): anything else counts
 * an order error. Latency (receipt - send) goes into a log-linear histogram
 * per step (16 sub-buckets per power of two, about 6% resolution). Counters
 * live in a MAP_SHARED region, one block per reader process, written only
 * by that process and read by the parent.
 *
 * Publisher (the parent): one raw-dialect connection (--pub-path), stepped
 * through --rates (msgs/s), each step --step-secs long:
 *   batched  k frames per write(), a write every k / rate seconds, k =
 *            --batch (16) but at least 4 writes a second (k = rate / 4);
 *   alone    one frame per write(), a write every 1 / rate seconds;
 *   api      POST /api/publish on one keep-alive connection, one request in
 *            flight, as fast as the server answers (rates ignored: one step).
 * The step ramp ends when deliveries/s stop rising (two steps in a row
 * without 5% more than the best step so far: one could be noise), when a
 * subscriber is closed, or when the deliveries of a step are not all in 3 s
 * after its end (the server or the readers fell behind). A last line
 * {"server":..,"mode":..,"stop":"why"} says which.
 *
 * Per step, after --warmup seconds of it, over the rest of the step: the
 * deliveries/s, the server's CPU (sum of /proc/PID/task/x/schedstat run
 * times, all threads) per delivery, the readers' CPU; with --perf, the
 * server's syscalls (perf stat -e raw_syscalls:sys_enter and the write-family
 * tracepoints, -p PID) over the whole step and its drain, per delivery.
 *
 * Output: one JSON line per step on stdout, progress on stderr. Exit 0 when
 * no error was counted (order errors, closed subscribers, bad frames,
 * failed publishes), 1 otherwise, 2 on bad usage or setup failure.
 */
#define _GNU_SOURCE /* clock_nanosleep, prctl, getopt_long */

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_STEPS 32
#define MAX_PROCS 16
#define NB 704 /* log-linear buckets: 16 exact, then 16 per power of two up to 2^46 ns */
#define PAYLOAD 16
#define PART_MAX 512 /* partial frame or handshake response kept per subscriber */
#define HS_INFLIGHT 256

/* One writer per field (its reader process); the parent reads. */
#define LOAD(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)
#define ADD(x, v) __atomic_store_n(&(x), LOAD(x) + (v), __ATOMIC_RELAXED)

typedef struct {
    uint64_t connected, failed, delivered, order_err, closed, bad, ready, done;
    uint64_t last_close_code;
    uint64_t step_delivered[MAX_STEPS];
    uint64_t hist[MAX_STEPS][NB];
} rstat;

typedef struct {
    volatile int stop;
    rstat r[MAX_PROCS];
} shared;

typedef struct {
    int fd;
    uint8_t state; /* 0 connecting, 1 request sent, 2 open, 3 gone */
    uint32_t next;
    uint16_t plen;
    uint8_t part[PART_MAX];
} rconn;

static const char *o_host = "127.0.0.1";
static int o_port;
static int o_subs = 10000;
static int o_procs = 1;
static const char *o_sub_path = "/ws?subscribe=bench.t";
static const char *o_pub_path = "/ws?publish=bench.t";
static const char *o_mode = "batched";
static int o_batch = 16;
static double o_rates[MAX_STEPS];
static int o_nrates;
static double o_step_secs = 3;
static double o_warmup = 0.5;
static int o_server_pid;
static bool o_perf;
static const char *o_api_key = "";
static const char *o_topic = "bench.t";
static const char *o_label = "server";
#define MAX_PORTS 16
static int o_sub_ports[MAX_PORTS]; /* --sub-ports: subscribers spread over these; none: --port */
static int o_nsub_ports;

static shared *sh;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void sleep_until(uint64_t t)
{
    struct timespec ts = {(time_t)(t / 1000000000u), (long)(t % 1000000000u)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

static int bucket(uint64_t v)
{
    if (v < 16)
        return (int)v;
    int msb = 63 - __builtin_clzll(v);
    int i = (msb - 3) * 16 + (int)((v >> (msb - 4)) & 15);
    return i < NB ? i : NB - 1;
}

static double bucket_value(int i)
{
    if (i < 16)
        return i;
    int msb = i / 16 + 3;
    double lo = (double)((uint64_t)(16 + i % 16) << (msb - 4));
    return lo * (1 + 1.0 / 32); /* the middle of the bucket */
}

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get64(const uint8_t *p)
{
    return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

static int tcp_connect_to(int port, bool nonblock)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0), 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, o_host, &sa.sin_addr) != 1) {
        close(fd);
        return -1;
    }
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    return fd;
}

static int tcp_connect(bool nonblock)
{
    return tcp_connect_to(o_port, nonblock);
}

static int upgrade_request(char *buf, size_t cap, const char *path)
{
    return snprintf(buf, cap,
                    "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                    path, o_host, o_port);
}

/* ---- readers ------------------------------------------------------------- */

/* Bytes of the frame starting at p (n bytes known): 0 = more header bytes
 * needed; -1 = a frame this benchmark never expects (masked, or too big to
 * keep). */
static long frame_need(const uint8_t *p, size_t n)
{
    if (n < 2)
        return 0;
    if (p[1] & 0x80)
        return -1;
    size_t len = p[1] & 0x7f;
    if (len <= 125)
        return (long)(2 + len);
    if (len == 126) {
        if (n < 4)
            return 0;
        len = (size_t)p[2] << 8 | p[3];
        return 4 + len <= PART_MAX ? (long)(4 + len) : -1;
    }
    return -1;
}

static void conn_gone(rstat *st, rconn *c, int ep)
{
    if (c->state == 3)
        return;
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->state = 3;
    ADD(st->closed, 1);
}

static void frame(rstat *st, rconn *c, int ep, const uint8_t *p, uint64_t now)
{
    int op = p[0] & 0x0f;
    size_t hl = (p[1] & 0x7f) == 126 ? 4 : 2;
    size_t len = (p[1] & 0x7f) == 126 ? ((size_t)p[2] << 8 | p[3]) : (p[1] & 0x7f);
    const uint8_t *pl = p + hl;
    if ((p[0] & 0x80) && op == 2 && len == PAYLOAD) {
        uint32_t seq = get32(pl), step = get32(pl + 4);
        uint64_t t = get64(pl + 8);
        if (seq != c->next)
            ADD(st->order_err, 1);
        c->next = seq + 1;
        ADD(st->delivered, 1);
        if (step < MAX_STEPS) {
            ADD(st->step_delivered[step], 1);
            ADD(st->hist[step][bucket(now > t ? now - t : 0)], 1);
        }
        return;
    }
    if (op == 9 && len <= 125) { /* ping: pong with the same payload, mask key 0 */
        uint8_t pong[2 + 4 + 125] = {0x8a, (uint8_t)(0x80 | len), 0, 0, 0, 0};
        memcpy(pong + 6, pl, len);
        if (write(c->fd, pong, 6 + len) < 0) {
        }
        return;
    }
    if (op == 8) {
        __atomic_store_n(&st->last_close_code, len >= 2 ? ((uint64_t)pl[0] << 8 | pl[1]) : 1005, __ATOMIC_RELAXED);
        conn_gone(st, c, ep);
        return;
    }
    if (op == 10)
        return;
    ADD(st->bad, 1);
}

/* Feeds n bytes of the stream of c: completes a kept partial frame first,
 * then walks whole frames in place, keeps the tail. */
static void feed(rstat *st, rconn *c, int ep, const uint8_t *p, size_t n, uint64_t now)
{
    while (c->plen > 0 && n > 0) {
        long need = frame_need(c->part, c->plen);
        if (need < 0)
            goto bad;
        size_t want = need == 0 ? 1 : (size_t)need - c->plen;
        if (want > n)
            want = n;
        memcpy(c->part + c->plen, p, want);
        c->plen = (uint16_t)(c->plen + want);
        p += want;
        n -= want;
        need = frame_need(c->part, c->plen);
        if (need < 0)
            goto bad;
        if (need > 0 && (size_t)need == c->plen) {
            c->plen = 0;
            frame(st, c, ep, c->part, now);
            if (c->state == 3)
                return;
        }
    }
    while (n > 0) {
        long need = frame_need(p, n);
        if (need < 0)
            goto bad;
        if (need == 0 || (size_t)need > n)
            break;
        frame(st, c, ep, p, now);
        if (c->state == 3)
            return;
        p += need;
        n -= (size_t)need;
    }
    if (n > 0) {
        memcpy(c->part, p, n); /* n < PART_MAX: frame_need bounds a frame */
        c->plen = (uint16_t)n;
    }
    return;
bad:
    ADD(st->bad, 1);
    conn_gone(st, c, ep);
}

static void reader_main(int id, int n)
{
    rstat *st = &sh->r[id];
    rconn *cs = calloc((size_t)n, sizeof *cs);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    static uint8_t buf[1 << 16];
    char req[512];
    int reqlen = upgrade_request(req, sizeof req, o_sub_path);
    if (!cs || ep < 0)
        _exit(2);
    int started = 0, inflight = 0, opened = 0, failed = 0;
    struct epoll_event evs[512];
    uint64_t deadline = now_ns() + 60ull * 1000000000u;
    /* connect: at most HS_INFLIGHT handshakes at a time */
    while (opened + failed < n) {
        while (started < n && inflight < HS_INFLIGHT) {
            rconn *c = &cs[started];
            /* subscriber number id + started * procs over all readers */
            int g = id + started * o_procs;
            c->fd = o_nsub_ports ? tcp_connect_to(o_sub_ports[g % o_nsub_ports], true) : tcp_connect(true);
            if (c->fd < 0) {
                c->state = 3;
                failed++;
                started++;
                continue;
            }
            int rcv = 64 * 1024;
            setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv);
            struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.ptr = c};
            epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
            started++;
            inflight++;
        }
        if (now_ns() > deadline)
            break;
        int k = epoll_wait(ep, evs, 512, 1000);
        for (int i = 0; i < k; i++) {
            rconn *c = evs[i].data.ptr;
            if (c->state == 0 && (evs[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
                if (evs[i].events & (EPOLLERR | EPOLLHUP) || write(c->fd, req, (size_t)reqlen) != reqlen) {
                    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                    close(c->fd);
                    c->state = 3;
                    failed++;
                    inflight--;
                    continue;
                }
                c->state = 1;
                struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
            } else if (c->state == 1 && (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))) {
                ssize_t r = read(c->fd, c->part + c->plen, PART_MAX - 1 - c->plen);
                if (r <= 0) {
                    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                    close(c->fd);
                    c->state = 3;
                    failed++;
                    inflight--;
                    continue;
                }
                c->plen = (uint16_t)(c->plen + r);
                c->part[c->plen] = 0;
                char *end = strstr((char *)c->part, "\r\n\r\n");
                if (!end) {
                    if (c->plen >= PART_MAX - 1) {
                        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                        close(c->fd);
                        c->state = 3;
                        failed++;
                        inflight--;
                    }
                    continue;
                }
                inflight--;
                if (strncmp((char *)c->part, "HTTP/1.1 101", 12) != 0) {
                    if (failed == 0)
                        fprintf(stderr, "gwload: reader %d: handshake refused: %.*s\n", id,
                                (int)strcspn((char *)c->part, "\r\n"), (char *)c->part);
                    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                    close(c->fd);
                    c->state = 3;
                    failed++;
                    continue;
                }
                size_t used = (size_t)(end + 4 - (char *)c->part), rest = c->plen - used;
                uint8_t tail[PART_MAX];
                memcpy(tail, c->part + used, rest);
                c->plen = 0;
                c->state = 2;
                opened++;
                if (rest)
                    feed(st, c, ep, tail, rest, now_ns());
            }
        }
    }
    __atomic_store_n(&st->connected, (uint64_t)opened, __ATOMIC_RELAXED);
    __atomic_store_n(&st->failed, (uint64_t)(n - opened), __ATOMIC_RELAXED);
    __atomic_store_n(&st->ready, 1, __ATOMIC_RELEASE);
    while (!sh->stop) {
        int k = epoll_wait(ep, evs, 512, 100);
        uint64_t now = now_ns();
        for (int i = 0; i < k; i++) {
            rconn *c = evs[i].data.ptr;
            if (c->state != 2)
                continue;
            ssize_t r = read(c->fd, buf, sizeof buf);
            if (r > 0)
                feed(st, c, ep, buf, (size_t)r, now);
            else if (r == 0 || (errno != EAGAIN && errno != EINTR))
                conn_gone(st, c, ep);
        }
    }
    __atomic_store_n(&st->done, 1, __ATOMIC_RELEASE);
    _exit(0);
}

/* ---- the server's counters ------------------------------------------------- */

static uint64_t task_ns(int pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", pid);
    DIR *d = opendir(path);
    if (!d)
        return 0;
    uint64_t sum = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char p[320];
        snprintf(p, sizeof p, "/proc/%d/task/%s/schedstat", pid, e->d_name);
        FILE *f = fopen(p, "r");
        unsigned long long v;
        if (f && fscanf(f, "%llu", &v) == 1)
            sum += v;
        if (f)
            fclose(f);
    }
    closedir(d);
    return sum;
}

typedef struct {
    int pid;
    char file[64];
} perf_run;

static void perf_start(perf_run *pr)
{
    pr->pid = 0;
    if (!o_perf || !o_server_pid)
        return;
    snprintf(pr->file, sizeof pr->file, "/tmp/gwload-perf.%d", (int)getpid());
    char pidarg[16];
    snprintf(pidarg, sizeof pidarg, "%d", o_server_pid);
    int pid = fork();
    if (pid == 0) {
        int nul = open("/dev/null", O_RDWR);
        dup2(nul, 1);
        dup2(nul, 2);
        execlp("perf", "perf", "stat", "-x,", "-o", pr->file, "-e",
               "raw_syscalls:sys_enter,syscalls:sys_enter_sendmsg,syscalls:sys_enter_writev,"
               "syscalls:sys_enter_write,syscalls:sys_enter_sendto",
               "-p", pidarg, (char *)NULL);
        _exit(127);
    }
    pr->pid = pid > 0 ? pid : 0;
    struct timespec ts = {0, 400000000}; /* perf attaches; the server is idle meanwhile */
    nanosleep(&ts, NULL);
}

/* Stops perf; total syscalls and write-family ones, -1 when unknown. */
static void perf_stop(perf_run *pr, double *all, double *writes)
{
    *all = *writes = -1;
    if (!pr->pid)
        return;
    kill(pr->pid, SIGINT);
    int status;
    waitpid(pr->pid, &status, 0);
    FILE *f = fopen(pr->file, "r");
    if (!f)
        return;
    char line[256];
    double w = 0;
    int nw = 0;
    while (fgets(line, sizeof line, f)) {
        double v;
        char *comma = strchr(line, ',');
        if (!comma || sscanf(line, "%lf", &v) != 1)
            continue;
        if (strstr(line, "raw_syscalls:sys_enter"))
            *all = v;
        else if (strstr(line, "syscalls:sys_enter_")) {
            w += v;
            nw++;
        }
    }
    fclose(f);
    unlink(pr->file);
    if (nw)
        *writes = w;
}

/* ---- publisher --------------------------------------------------------------- */

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint32_t xr(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)rng;
}

static uint32_t g_seq;

/* One masked binary frame of PAYLOAD bytes: 22 bytes at out. */
static void put_frame(uint8_t *out, uint32_t step, uint64_t t)
{
    uint8_t pl[PAYLOAD];
    put32(pl, g_seq++);
    put32(pl + 4, step);
    put32(pl + 8, (uint32_t)t);
    put32(pl + 12, (uint32_t)(t >> 32));
    uint32_t key = xr();
    out[0] = 0x82;
    out[1] = 0x80 | PAYLOAD;
    memcpy(out + 2, &key, 4);
    for (int i = 0; i < PAYLOAD; i++)
        out[6 + i] = pl[i] ^ out[2 + (i & 3)];
}

static int write_all(int fd, const void *p, size_t n)
{
    const uint8_t *b = p;
    while (n > 0) {
        ssize_t w = write(fd, b, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        b += w;
        n -= (size_t)w;
    }
    return 0;
}

static int pub_fd = -1;
static uint64_t pub_errors;

static int pub_open_ws(void)
{
    int fd = tcp_connect(false);
    if (fd < 0)
        return -1;
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char req[512], resp[1024];
    int n = upgrade_request(req, sizeof req, o_pub_path);
    if (write_all(fd, req, (size_t)n) != 0)
        goto fail;
    size_t have = 0;
    while (have < sizeof resp - 1) {
        ssize_t r = read(fd, resp + have, sizeof resp - 1 - have);
        if (r <= 0)
            goto fail;
        have += (size_t)r;
        resp[have] = 0;
        if (strstr(resp, "\r\n\r\n"))
            break;
    }
    if (strncmp(resp, "HTTP/1.1 101", 12) != 0) {
        fprintf(stderr, "gwload: publisher refused: %.*s\n", (int)strcspn(resp, "\r\n"), resp);
        goto fail;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
fail:
    close(fd);
    return -1;
}

/* The server may send pings or a close to the publisher: drained, not read. */
static void pub_drain(void)
{
    uint8_t b[4096];
    while (read(pub_fd, b, sizeof b) > 0) {
    }
}

/* Blocking-with-timeout write on the non-blocking publisher socket. */
static int pub_write(const uint8_t *p, size_t n)
{
    uint64_t limit = now_ns() + 5000000000ull;
    while (n > 0) {
        ssize_t w = write(pub_fd, p, n);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN && now_ns() < limit) {
            pub_drain();
            struct timespec ts = {0, 50000};
            nanosleep(&ts, NULL);
            continue;
        }
        return -1;
    }
    return 0;
}

/* One POST /api/publish and its answer; 0 on a 2xx. */
static char api_in[8192];
static size_t api_have;
static int api_publish(uint32_t step)
{
    char req[512];
    uint64_t t = now_ns();
    uint8_t pl[PAYLOAD];
    put32(pl, g_seq++);
    put32(pl + 4, step);
    put32(pl + 8, (uint32_t)t);
    put32(pl + 12, (uint32_t)(t >> 32));
    int n = snprintf(req, sizeof req,
                     "POST /api/publish?topic=%s HTTP/1.1\r\nHost: %s:%d\r\nAuthorization: Bearer %s\r\n"
                     "Content-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n",
                     o_topic, o_host, o_port, o_api_key, PAYLOAD);
    memcpy(req + n, pl, PAYLOAD);
    if (write_all(pub_fd, req, (size_t)n + PAYLOAD) != 0)
        return -1;
    for (;;) {
        api_in[api_have] = 0;
        char *end = strstr(api_in, "\r\n\r\n");
        if (end) {
            size_t head = (size_t)(end + 4 - api_in);
            char *cl = strcasestr(api_in, "\r\nContent-Length:");
            size_t body = cl && cl < end ? strtoul(cl + 17, NULL, 10) : 0;
            if (api_have >= head + body) {
                bool ok = strncmp(api_in, "HTTP/1.1 2", 10) == 0;
                if (!ok && pub_errors == 0)
                    fprintf(stderr, "gwload: /api/publish: %.*s\n", (int)strcspn(api_in, "\r\n"), api_in);
                memmove(api_in, api_in + head + body, api_have - head - body);
                api_have -= head + body;
                return ok ? 0 : -1;
            }
        }
        if (api_have >= sizeof api_in - 1)
            return -1;
        ssize_t r = read(pub_fd, api_in + api_have, sizeof api_in - 1 - api_have);
        if (r <= 0)
            return -1;
        api_have += (size_t)r;
    }
}

/* ---- the steps ------------------------------------------------------------------ */

typedef struct {
    uint64_t delivered, closed, order_err, bad, reader_ns;
} totals;

static int reader_pids[MAX_PROCS];

static totals sum_readers(void)
{
    totals t = {0};
    for (int i = 0; i < o_procs; i++) {
        t.delivered += LOAD(sh->r[i].delivered);
        t.closed += LOAD(sh->r[i].closed);
        t.order_err += LOAD(sh->r[i].order_err);
        t.bad += LOAD(sh->r[i].bad);
        t.reader_ns += task_ns(reader_pids[i]);
    }
    return t;
}

static uint64_t subs_open;

/* Frames per write in batched mode: --batch, but at least 4 writes a
 * second, so a low rate still publishes within a step (2/s: 1, 10/s: 2,
 * 64/s and more: 16). */
static int batch_for(double rate)
{
    int k = (int)(rate / 4);
    return k < 1 ? 1 : k > o_batch ? o_batch : k;
}

/* Publishes step `step` at `rate` msgs/s for o_step_secs (api mode: as fast
 * as answered). Fills the window figures. Returns messages published. */
static uint64_t run_step(uint32_t step, double rate, uint64_t *w_t0, uint64_t *w_t1, totals *a, totals *b,
                         uint64_t *srv0, uint64_t *srv1, uint64_t *pub_in_window)
{
    bool api = strcmp(o_mode, "api") == 0, alone = strcmp(o_mode, "alone") == 0;
    int k = alone || api ? 1 : batch_for(rate);
    uint8_t out[22 * 256];
    uint64_t t0 = now_ns(), len = (uint64_t)(o_step_secs * 1e9), warm = (uint64_t)(o_warmup * 1e9);
    uint64_t sent = 0, sent_at_w0 = 0;
    bool in_window = false;
    for (;;) {
        uint64_t t = now_ns();
        if (!in_window && t >= t0 + warm) {
            in_window = true;
            *w_t0 = t;
            *a = sum_readers();
            *srv0 = o_server_pid ? task_ns(o_server_pid) : 0;
            sent_at_w0 = sent;
        }
        if (t >= t0 + len)
            break;
        if (api) {
            if (api_publish(step) != 0) {
                pub_errors++;
                break;
            }
            sent++;
            continue;
        }
        /* the write that carries messages sent .. sent+k-1 is due when the
         * last of them is */
        uint64_t due = t0 + (uint64_t)((double)(sent + (uint64_t)k) * 1e9 / rate);
        if (due > t) {
            uint64_t wake = due;
            if (wake > t0 + len)
                wake = t0 + len;
            if (!in_window && wake > t0 + warm)
                wake = t0 + warm;
            sleep_until(wake);
            continue;
        }
        uint64_t ts = now_ns();
        for (int i = 0; i < k; i++)
            put_frame(out + 22 * i, step, ts);
        if (pub_write(out, 22 * (size_t)k) != 0) {
            pub_errors++;
            fprintf(stderr, "gwload: publisher write failed (%s)\n", strerror(errno));
            break;
        }
        sent += (uint64_t)k;
    }
    *w_t1 = now_ns();
    *b = sum_readers();
    *srv1 = o_server_pid ? task_ns(o_server_pid) : 0;
    if (!in_window) {
        *w_t0 = *w_t1;
        *a = *b;
        *srv0 = *srv1;
    }
    *pub_in_window = sent - sent_at_w0;
    return sent;
}

static double pct(const uint64_t *h, uint64_t n, double q)
{
    if (n == 0)
        return -1;
    uint64_t want = (uint64_t)(q * (double)n), acc = 0;
    if (want >= n)
        want = n - 1;
    for (int i = 0; i < NB; i++) {
        acc += h[i];
        if (acc > want)
            return bucket_value(i);
    }
    return bucket_value(NB - 1);
}

static void parse_rates(const char *s)
{
    o_nrates = 0;
    while (*s && o_nrates < MAX_STEPS) {
        char *end;
        double v = strtod(s, &end);
        if (end == s || v <= 0) {
            fprintf(stderr, "gwload: bad --rates\n");
            exit(2);
        }
        o_rates[o_nrates++] = v;
        s = *end == ',' ? end + 1 : end;
    }
}

static void usage(void)
{
    fprintf(stderr, "usage: gwload --port P [--host H] [-c SUBS] [--procs N] [--sub-path PATH] [--pub-path PATH]\n"
                    "  [--mode batched|alone|api] [--batch K] [--rates R1,R2,...] [--step-secs S] [--warmup W]\n"
                    "  [--server-pid PID] [--perf] [--api-key KEY] [--topic T] [--label NAME]\n"
                    "  [--sub-ports P1,P2,...]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"host", 1, 0, 'h'},       {"port", 1, 0, 'p'},      {"subs", 1, 0, 'c'},      {"procs", 1, 0, 'P'},
        {"sub-path", 1, 0, 's'},   {"pub-path", 1, 0, 'u'},  {"mode", 1, 0, 'm'},      {"batch", 1, 0, 'k'},
        {"rates", 1, 0, 'r'},      {"step-secs", 1, 0, 't'}, {"warmup", 1, 0, 'w'},    {"server-pid", 1, 0, 'S'},
        {"perf", 0, 0, 'f'},       {"api-key", 1, 0, 'K'},   {"topic", 1, 0, 'T'},     {"label", 1, 0, 'L'},
        {"sub-ports", 1, 0, 'A'},  {0, 0, 0, 0}};
    parse_rates("100,1000");
    int ch;
    while ((ch = getopt_long(argc, argv, "c:", opts, NULL)) != -1) {
        switch (ch) {
        case 'h': o_host = optarg; break;
        case 'p': o_port = atoi(optarg); break;
        case 'c': o_subs = atoi(optarg); break;
        case 'P': o_procs = atoi(optarg); break;
        case 's': o_sub_path = optarg; break;
        case 'u': o_pub_path = optarg; break;
        case 'm': o_mode = optarg; break;
        case 'k': o_batch = atoi(optarg); break;
        case 'r': parse_rates(optarg); break;
        case 't': o_step_secs = atof(optarg); break;
        case 'w': o_warmup = atof(optarg); break;
        case 'S': o_server_pid = atoi(optarg); break;
        case 'f': o_perf = true; break;
        case 'K': o_api_key = optarg; break;
        case 'T': o_topic = optarg; break;
        case 'L': o_label = optarg; break;
        case 'A':
            for (const char *q = optarg; *q;) {
                char *end;
                long v = strtol(q, &end, 10);
                if (end == q || v <= 0 || v > 65535 || o_nsub_ports == MAX_PORTS)
                    usage();
                o_sub_ports[o_nsub_ports++] = (int)v;
                q = *end == ',' ? end + 1 : end;
                if (*end && *end != ',')
                    usage();
            }
            break;
        default: usage();
        }
    }
    bool api = strcmp(o_mode, "api") == 0;
    if (o_port <= 0 || o_subs < 0 || o_procs < 1 || o_procs > MAX_PROCS || o_batch < 1 || o_batch > 256 ||
        o_step_secs <= o_warmup || (!api && strcmp(o_mode, "batched") && strcmp(o_mode, "alone")))
        usage();
    if (o_subs == 0)
        o_procs = 1;
    signal(SIGPIPE, SIG_IGN);
    prctl(PR_SET_TIMERSLACK, 1UL);
    sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED)
        return 2;

    int per = o_subs / o_procs;
    for (int i = 0; i < o_procs; i++) {
        int n = per + (i < o_subs % o_procs ? 1 : 0);
        int pid = fork();
        if (pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGTERM);
            reader_main(i, n);
        }
        if (pid < 0)
            return 2;
        reader_pids[i] = pid;
    }
    int rc = 0;
    uint64_t setup_deadline = now_ns() + 90ull * 1000000000u;
    for (;;) {
        int ready = 0;
        for (int i = 0; i < o_procs; i++)
            ready += __atomic_load_n(&sh->r[i].ready, __ATOMIC_ACQUIRE) ? 1 : 0;
        if (ready == o_procs)
            break;
        if (now_ns() > setup_deadline) {
            fprintf(stderr, "gwload: readers not ready after 90 s\n");
            rc = 2;
            goto out;
        }
        struct timespec ts = {0, 20000000};
        nanosleep(&ts, NULL);
    }
    uint64_t failed = 0;
    for (int i = 0; i < o_procs; i++) {
        subs_open += LOAD(sh->r[i].connected);
        failed += LOAD(sh->r[i].failed);
    }
    fprintf(stderr, "gwload: %s: %llu subscribers open (%llu failed)\n", o_label, (unsigned long long)subs_open,
            (unsigned long long)failed);
    if (failed) {
        rc = 2;
        goto out;
    }
    if (api) {
        pub_fd = tcp_connect(false);
        struct timeval tv = {5, 0};
        setsockopt(pub_fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        setsockopt(pub_fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    } else {
        pub_fd = pub_open_ws();
    }
    if (pub_fd < 0) {
        fprintf(stderr, "gwload: cannot open the publisher\n");
        rc = 2;
        goto out;
    }
    struct timespec settle = {0, 300000000};
    nanosleep(&settle, NULL);

    double best = 0;
    int flat = 0;
    int nsteps = api ? 1 : o_nrates;
    uint64_t published = 0;
    for (int s = 0; s < nsteps; s++) {
        perf_run pr;
        perf_start(&pr);
        totals before = sum_readers(), a = {0}, b = {0}, after;
        uint64_t w0 = 0, w1 = 0, c0 = 0, c1 = 0, pubw = 0;
        uint64_t sent = run_step((uint32_t)s, o_rates[s], &w0, &w1, &a, &b, &c0, &c1, &pubw);
        published += sent;
        /* drain: every delivery of the step, or 3 s */
        uint64_t want = published * subs_open, lim = now_ns() + 3000000000ull;
        for (;;) {
            after = sum_readers();
            if (after.delivered >= want || now_ns() > lim)
                break;
            struct timespec ts = {0, 2000000};
            nanosleep(&ts, NULL);
        }
        uint64_t missing = after.delivered >= want ? 0 : want - after.delivered;
        double sys_all, sys_w;
        perf_stop(&pr, &sys_all, &sys_w);
        double win = (double)(w1 - w0) / 1e9;
        double dels = (double)(b.delivered - a.delivered);
        double dps = win > 0 ? dels / win : 0;
        double pps = win > 0 ? (double)pubw / win : 0;
        uint64_t step_n = 0, hist[NB] = {0};
        for (int i = 0; i < o_procs; i++) {
            step_n += LOAD(sh->r[i].step_delivered[s]);
            for (int j = 0; j < NB; j++)
                hist[j] += LOAD(sh->r[i].hist[s][j]);
        }
        double step_dels = (double)(after.delivered - before.delivered);
        uint64_t order = after.order_err - before.order_err, closed = after.closed - before.closed,
                 bad = after.bad - before.bad;
        printf("{\"server\":\"%s\",\"mode\":\"%s\",\"batch\":%d,\"subs\":%llu,\"step\":%d,\"target_per_s\":%.0f,"
               "\"pub_per_s\":%.0f,\"deliv_per_s\":%.0f,\"offered_deliv_per_s\":%.0f,\"published\":%llu,"
               "\"step_deliveries\":%llu,\"missing\":%llu,\"srv_cpu_pct\":%.0f,\"srv_ns_per_deliv\":%.1f,"
               "\"srv_us_per_pub\":%.2f,\"rd_cpu_pct\":%.0f,\"sys_per_deliv\":%.4f,\"wsys_per_deliv\":%.4f,"
               "\"sys_per_pub\":%.2f,\"p50_us\":%.0f,\"p99_us\":%.0f,\"order_err\":%llu,\"closed\":%llu,\"bad\":%llu,"
               "\"pub_errors\":%llu}\n",
               o_label, o_mode, api || !strcmp(o_mode, "alone") ? 1 : batch_for(o_rates[s]), (unsigned long long)subs_open, s,
               api ? 0 : o_rates[s], pps, dps, pps * (double)subs_open, (unsigned long long)sent,
               (unsigned long long)step_n, (unsigned long long)missing,
               win > 0 ? 100.0 * (double)(c1 - c0) / (win * 1e9) : 0, dels > 0 ? (double)(c1 - c0) / dels : -1,
               pubw ? (double)(c1 - c0) / (double)pubw / 1e3 : -1,
               win > 0 ? 100.0 * (double)(b.reader_ns - a.reader_ns) / (win * 1e9) : 0,
               sys_all >= 0 && step_dels > 0 ? sys_all / step_dels : -1,
               sys_w >= 0 && step_dels > 0 ? sys_w / step_dels : -1, sys_all >= 0 && sent ? sys_all / (double)sent : -1,
               pct(hist, step_n, 0.50) / 1e3,
               pct(hist, step_n, 0.99) / 1e3, (unsigned long long)order, (unsigned long long)closed,
               (unsigned long long)bad, (unsigned long long)pub_errors);
        fflush(stdout);
        fprintf(stderr, "gwload: %s %s step %d: %.0f pub/s, %.0f deliveries/s, missing %llu\n", o_label, o_mode, s,
                pps, dps, (unsigned long long)missing);
        if (order || closed || bad || pub_errors)
            rc = 1;
        const char *stop = NULL;
        if (order || closed || bad || pub_errors)
            stop = "errors";
        else if (missing)
            stop = "behind: the step's deliveries were not all in 3 s after it";
        else if (dps < best * 1.05 && ++flat >= 2)
            stop = "flat: two steps without 5% more deliveries/s than the best";
        else if (s == nsteps - 1)
            stop = "last rate";
        if (dps >= best * 1.05)
            flat = 0;
        if (dps > best)
            best = dps;
        if (stop) {
            printf("{\"server\":\"%s\",\"mode\":\"%s\",\"stop\":\"%s\"}\n", o_label, o_mode, stop);
            fflush(stdout);
            break;
        }
        nanosleep(&settle, NULL);
    }
out:
    sh->stop = 1;
    for (int i = 0; i < o_procs; i++) {
        int status;
        uint64_t lim = now_ns() + 3000000000ull;
        while (waitpid(reader_pids[i], &status, WNOHANG) == 0) {
            if (now_ns() > lim) {
                kill(reader_pids[i], SIGKILL);
                waitpid(reader_pids[i], &status, 0);
                break;
            }
            struct timespec ts = {0, 10000000};
            nanosleep(&ts, NULL);
        }
    }
    if (pub_fd >= 0)
        close(pub_fd);
    return rc;
}
