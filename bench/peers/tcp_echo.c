/*
 * bench/peers/tcp_echo.c: the transport's ceiling for scripts/bench_echo.sh.
 * A plain TCP echo server: one thread, one epoll loop (level-triggered),
 * non-blocking sockets, no framing. Whatever a connection sends comes back.
 *
 * Layer: a benchmark peer; depends on libc only (not on duplex), so it shows
 * what the kernel and loopback allow with the least work per byte.
 *
 * Invariants: reads land in one shared buffer and are written straight back;
 * only what the kernel refused is copied, into a per-connection queue, and
 * while a queue is non-empty that connection is not read (EPOLLIN off,
 * EPOLLOUT on), so memory stays bounded by one read per slow connection.
 * One read per readiness event: a second read would mostly cost an EAGAIN.
 *
 *   tcp_echo [--host 127.0.0.1] [--port 9000]     SIGTERM/SIGINT: exit 0
 */
#define _GNU_SOURCE /* accept4 */

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF_CAP (256u * 1024u)

struct pending {
    unsigned char *p;
    size_t off, len, cap;
};

static volatile sig_atomic_t g_stop;
static struct pending *g_pend; /* indexed by fd */
static size_t g_npend;
static int g_ep;

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

static void set_events(int fd, unsigned events)
{
    struct epoll_event ev = {.events = events, .data.fd = fd};
    epoll_ctl(g_ep, EPOLL_CTL_MOD, fd, &ev);
}

static void drop(int fd)
{
    if ((size_t)fd < g_npend) {
        free(g_pend[fd].p);
        g_pend[fd] = (struct pending){0};
    }
    close(fd);
}

/* Queues buf[0..len) for fd and stops reading it until the queue drains. */
static int queue(int fd, const unsigned char *buf, size_t len)
{
    struct pending *q = &g_pend[fd];
    if (q->len + len > q->cap) {
        size_t cap = q->len + len;
        unsigned char *p = realloc(q->p, cap);
        if (!p)
            return -1;
        q->p = p;
        q->cap = cap;
    }
    memcpy(q->p + q->len, buf, len);
    q->len += len;
    set_events(fd, EPOLLOUT);
    return 0;
}

static void on_writable(int fd)
{
    struct pending *q = &g_pend[fd];
    while (q->off < q->len) {
        ssize_t n = send(fd, q->p + q->off, q->len - q->off, MSG_NOSIGNAL);
        if (n > 0) {
            q->off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return;
        drop(fd);
        return;
    }
    q->off = q->len = 0;
    set_events(fd, EPOLLIN);
}

static void on_readable(int fd, unsigned char *buf)
{
    ssize_t n = recv(fd, buf, BUF_CAP, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        drop(fd);
        return;
    }
    size_t off = 0;
    while (off < (size_t)n) {
        ssize_t w = send(fd, buf + off, (size_t)n - off, MSG_NOSIGNAL);
        if (w > 0) {
            off += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN) {
            if (queue(fd, buf + off, (size_t)n - off) < 0)
                drop(fd);
            return;
        }
        drop(fd);
        return;
    }
}

static void on_accept(int lfd)
{
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return; /* EAGAIN, or EMFILE and friends: try again on the next event */
        if ((size_t)fd >= g_npend) {
            close(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
        if (epoll_ctl(g_ep, EPOLL_CTL_ADD, fd, &ev) < 0)
            close(fd);
    }
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1";
    unsigned port = 9000;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--host") == 0 && i + 1 < argc)
            host = argv[++i];
        else if (strcmp(argv[i], "--port") == 0 && i + 1 < argc)
            port = (unsigned)strtoul(argv[++i], NULL, 10);
        else {
            fprintf(stderr, "usage: tcp_echo [--host IPV4] [--port P]\n");
            return 2;
        }
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    g_npend = rl.rlim_cur > 1048576 ? 1048576 : (size_t)rl.rlim_cur;
    g_pend = calloc(g_npend, sizeof *g_pend);
    unsigned char *buf = malloc(BUF_CAP);
    if (!g_pend || !buf) {
        fprintf(stderr, "tcp_echo: out of memory\n");
        return 1;
    }

    struct sigaction sa = {.sa_handler = on_signal}; /* no SA_RESTART: epoll_wait returns EINTR */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) {
        fprintf(stderr, "tcp_echo: bad host %s\n", host);
        return 2;
    }
    if (bind(lfd, (struct sockaddr *)&a, sizeof a) < 0 || listen(lfd, 4096) < 0) {
        fprintf(stderr, "tcp_echo: %s:%u: %s\n", host, port, strerror(errno));
        return 1;
    }
    g_ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event lev = {.events = EPOLLIN, .data.fd = lfd};
    epoll_ctl(g_ep, EPOLL_CTL_ADD, lfd, &lev);
    fprintf(stderr, "tcp_echo: listening on %s:%u\n", host, port);

    struct epoll_event evs[512];
    while (!g_stop) {
        int n = epoll_wait(g_ep, evs, 512, -1);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == lfd)
                on_accept(lfd);
            else if (evs[i].events & EPOLLOUT)
                on_writable(fd);
            else if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))
                on_readable(fd, buf);
        }
    }
    fprintf(stderr, "tcp_echo: stopping\n");
    for (size_t fd = 0; fd < g_npend; fd++)
        free(g_pend[fd].p);
    free(g_pend);
    free(buf);
    close(g_ep);
    close(lfd);
    return 0;
}
