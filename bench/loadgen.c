/*
 * bench/loadgen.c: the end-to-end load generator of scripts/bench_echo.sh.
 * One thread, one epoll loop, N client connections to a WebSocket echo
 * server (ws://HOST:PORT/PATH) or, with --raw, to a plain TCP echo server.
 *
 * Layer: a benchmark tool. It uses the sans-I/O core for everything on the
 * wire (proto/handshake.h to build and check the opening handshake,
 * proto/frame.h to encode masked client frames and decode the server's,
 * proto/mask.h) and nothing above it (no src/net, no src/ws), so it measures
 * a server with code that is not the server's own I/O path.
 *
 * Invariants that keep it from being the bottleneck or lying:
 *  - no allocation after the connections are set up: every connection gets
 *    its output buffer (room for `depth` frames) and its timestamp ring once;
 *    reads land in one shared buffer and are verified in place, frame piece
 *    by frame piece, so no per-connection receive buffer exists;
 *  - every echoed byte is compared with what was sent: message i of a
 *    connection carries i in its first 8 bytes (ASCII, so text works too)
 *    and a fixed pseudo-random pattern after; lengths, opcodes and order are
 *    checked, and a mismatch counts an error and drops the connection;
 *  - latency is recorded in a log-linear histogram (16 sub-buckets per power
 *    of two, about 6% resolution), never as stored samples;
 *  - mask keys come from a xorshift generator seeded once from getrandom():
 *    a fresh key per frame as RFC 6455 §5.3 asks, without a syscall per
 *    message. Unpredictability protects intermediaries from cache poisoning,
 *    which is moot on loopback to our own servers.
 *
 * Output: one JSON line on stdout; progress and errors on stderr. Exit 0
 * when no error was counted, 1 otherwise, 2 on bad usage.
 */
#define _GNU_SOURCE /* accept4-era socket flags, IP_BIND_ADDRESS_NO_PORT, getopt_long */

#include "duplex/duplex.h"
#include "proto/frame.h"
#include "proto/handshake.h"
#include "proto/http.h"
#include "proto/mask.h"

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define RBUF_CAP (256u * 1024u)
#define HS_CAP 2048u
#define SEQ_BYTES 8u
#define MAX_EVENTS 512

enum mode { MODE_LOAD, MODE_IDLE, MODE_HANDSHAKES };

enum cstate {
    C_FREE = 0,   /* slot unused (handshake mode) or failed */
    C_CONNECTING, /* connect() in progress */
    C_HS_SENT,    /* upgrade request sent, waiting for the 101 */
    C_OPEN,       /* messages flow */
    C_CLOSING,    /* handshake mode: our close frame sent, waiting for the peer's */
    C_DONE        /* closed (load/idle: counted, not reused) */
};

struct conn {
    int fd;
    uint8_t state;
    bool want_out;     /* EPOLLOUT registered */
    bool in_control;   /* the frame being decoded is a control frame */
    unsigned idx;
    uint8_t *out;      /* pending output [out_off, out_len) of out_cap */
    size_t out_off, out_len, out_cap;
    char *hs;          /* the response head as it arrives */
    size_t hs_len;
    char key[25];      /* Sec-WebSocket-Key sent */
    uint64_t sent_seq, recv_seq;
    unsigned inflight;
    uint64_t msg_off;  /* bytes of the incoming message so far */
    uint64_t *ts;      /* send time of message seq at ts[seq % depth] */
    uint64_t t_start;  /* connect() time, for the handshake latency */
    dx_frame_decoder dec;
};

#define H_SUB 16u
#define H_BUCKETS (64u * H_SUB)

struct hist {
    uint64_t n, max;
    uint64_t b[H_BUCKETS];
};

static struct {
    /* settings */
    int mode;
    bool raw, text;
    char url[512];
    char host[256];
    char path[256];
    unsigned port;
    struct sockaddr_in dst;
    unsigned conns, depth, sources, max_pending, handshakes, concurrency;
    size_t size;
    double duration, warmup, rate, timeout;
    const char *ready_file;
    dx_ws_client_opts opts;
    /* runtime */
    int ep;
    uint8_t *rbuf, *pattern;
    uint64_t rng;
    struct conn *c;
    unsigned n_slots;
    unsigned started, opened, pending, finished, live;
    uint64_t t0, t_open, t_measure, t_end;
    bool all_open, measuring, stop;
    /* results */
    uint64_t msgs, bytes, total_msgs, hs_ok;
    struct hist lat, hs_lat;
    uint64_t err_connect, err_handshake, err_verify, err_closed, err_io;
    double measured_s, cpu_pct, connect_s;
} G;

static volatile sig_atomic_t g_signal;

static void on_signal(int sig) { g_signal = sig; }

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 + (double)ru.ru_stime.tv_sec +
           (double)ru.ru_stime.tv_usec * 1e-6;
}

static uint64_t xorshift(void)
{
    uint64_t x = G.rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return G.rng = x;
}

/* ---- histogram ---------------------------------------------------------- */

static unsigned hist_index(uint64_t v)
{
    if (v < H_SUB)
        return (unsigned)v;
    unsigned msb = 63u - (unsigned)__builtin_clzll(v); /* >= 4 */
    return (msb - 3u) * H_SUB + (unsigned)((v >> (msb - 4u)) & (H_SUB - 1u));
}

static void hist_add(struct hist *h, uint64_t v)
{
    h->b[hist_index(v)]++;
    h->n++;
    if (v > h->max)
        h->max = v;
}

/* The midpoint of the bucket holding the p-quantile (0 when empty). */
static double hist_quantile(const struct hist *h, double p)
{
    if (h->n == 0)
        return 0;
    uint64_t target = (uint64_t)(p * (double)h->n + 0.5);
    if (target < 1)
        target = 1;
    uint64_t acc = 0;
    for (unsigned i = 0; i < H_BUCKETS; i++) {
        acc += h->b[i];
        if (acc >= target) {
            if (i < H_SUB)
                return (double)i;
            unsigned m = i / H_SUB, sub = i % H_SUB;
            double lo = (double)((uint64_t)(H_SUB + sub) << (m - 1));
            double hi = (double)((uint64_t)(H_SUB + sub + 1) << (m - 1));
            return (lo + hi) / 2;
        }
    }
    return (double)h->max;
}

/* ---- payload ------------------------------------------------------------ */

static inline uint8_t seq_byte(uint64_t seq, uint64_t off)
{
    return (uint8_t)('a' + ((seq >> (5 * off)) & 31));
}

/* True when d[0..len) is what message `seq` holds at offset `off`. */
static bool payload_ok(uint64_t seq, const uint8_t *d, size_t len, uint64_t off)
{
    while (len && off < SEQ_BYTES) {
        if (*d != seq_byte(seq, off))
            return false;
        d++, len--, off++;
    }
    return len == 0 || memcmp(d, G.pattern + off, len) == 0;
}

/* ---- connection plumbing ------------------------------------------------ */

static void set_events(struct conn *c, bool out)
{
    struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0u), .data.ptr = c};
    epoll_ctl(G.ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = out;
}

static void conn_close(struct conn *c)
{
    if (c->fd >= 0) {
        close(c->fd); /* also removes it from the epoll set */
        c->fd = -1;
    }
    if (c->state == C_CONNECTING || c->state == C_HS_SENT)
        G.pending--;
    if (c->state == C_OPEN || c->state == C_CLOSING)
        G.live--;
    c->state = G.mode == MODE_HANDSHAKES ? C_FREE : C_DONE;
    c->out_off = c->out_len = 0;
    c->hs_len = 0;
    G.finished++;
}

static void conn_fail(struct conn *c, uint64_t *counter, const char *what)
{
    if (*counter < 3)
        fprintf(stderr, "loadgen: connection %u: %s\n", c->idx, what);
    (*counter)++;
    conn_close(c);
}

/* Writes pending output; a short write means the socket buffer is full, so
 * wait for EPOLLOUT rather than spend a syscall on the EAGAIN. */
static int conn_flush(struct conn *c)
{
    while (c->out_off < c->out_len) {
        size_t want = c->out_len - c->out_off;
        ssize_t n = send(c->fd, c->out + c->out_off, want, MSG_NOSIGNAL);
        if (n > 0) {
            c->out_off += (size_t)n;
            if ((size_t)n < want) {
                if (!c->want_out)
                    set_events(c, true);
                return 0;
            }
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!c->want_out)
                set_events(c, true);
            return 0;
        }
        return -1;
    }
    c->out_off = c->out_len = 0;
    if (c->want_out)
        set_events(c, false);
    return 0;
}

/* Room for `need` more output bytes (moving pending bytes to the front). */
static uint8_t *out_reserve(struct conn *c, size_t need)
{
    if (c->out_off == c->out_len)
        c->out_off = c->out_len = 0;
    if (c->out_len + need > c->out_cap && c->out_off > 0) {
        memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
        c->out_len -= c->out_off;
        c->out_off = 0;
    }
    if (c->out_len + need > c->out_cap)
        return NULL; /* cannot happen: out_cap holds `depth` frames */
    return c->out + c->out_len;
}

static void mask_key(uint8_t key[4])
{
    uint32_t k = (uint32_t)(xorshift() >> 16);
    memcpy(key, &k, 4);
}

/* Queues message number c->sent_seq. */
static int put_message(struct conn *c, uint64_t now)
{
    size_t hlen = G.raw ? 0 : dx__frame_header_size(G.size, true);
    uint8_t *p = out_reserve(c, hlen + G.size);
    if (!p)
        return -1;
    uint8_t key[4];
    if (!G.raw) {
        mask_key(key);
        p += dx__frame_header_write(p, G.text ? DX_OP_TEXT : DX_OP_BINARY, true, 0, G.size, key);
    }
    memcpy(p, G.pattern, G.size);
    for (uint64_t i = 0; i < SEQ_BYTES && i < G.size; i++)
        p[i] = seq_byte(c->sent_seq, i);
    if (!G.raw)
        dx__mask(p, G.size, key, 0);
    c->out_len += hlen + G.size;
    c->ts[c->sent_seq % G.depth] = now;
    c->sent_seq++;
    c->inflight++;
    return 0;
}

static int put_close(struct conn *c)
{
    uint8_t *p = out_reserve(c, DX_FRAME_HEADER_MAX + 2);
    if (!p)
        return -1;
    uint8_t key[4];
    mask_key(key);
    size_t h = dx__frame_header_write(p, DX_OP_CLOSE, true, 0, 2, key);
    p[h] = (uint8_t)(DX_CLOSE_NORMAL >> 8);
    p[h + 1] = (uint8_t)(DX_CLOSE_NORMAL & 0xFF);
    dx__mask(p + h, 2, key, 0);
    c->out_len += h + 2;
    return 0;
}

/* Keeps `depth` messages in flight on an open connection. */
static int top_up(struct conn *c, uint64_t now)
{
    if (G.mode != MODE_LOAD || G.stop || c->state != C_OPEN)
        return 0;
    while (c->inflight < G.depth)
        if (put_message(c, now) < 0)
            return -1;
    return conn_flush(c);
}

static void message_done(struct conn *c, uint64_t now)
{
    if (c->msg_off != G.size || c->inflight == 0) {
        conn_fail(c, &G.err_verify, "echo of the wrong length or unsolicited");
        return;
    }
    uint64_t lat = now - c->ts[c->recv_seq % G.depth];
    c->recv_seq++;
    c->inflight--;
    c->msg_off = 0;
    G.total_msgs++;
    if (G.measuring) {
        G.msgs++;
        G.bytes += G.size;
        hist_add(&G.lat, lat);
    }
}

/* The connection is open: what the mode does next. */
static void on_open(struct conn *c, uint64_t now)
{
    c->state = C_OPEN;
    G.pending--;
    G.live++;
    G.opened++;
    hist_add(&G.hs_lat, now - c->t_start);
    if (!G.raw)
        dx__frame_decoder_init(&c->dec, DX_ROLE_CLIENT, 0, NULL);
    if (G.mode == MODE_HANDSHAKES) {
        if (G.raw) {
            /* The TCP floor of a handshake: connect, one request-sized
             * message echoed (as a request and its 101), close; counted
             * once the echo is back (consume). */
            if (put_message(c, now) < 0 || conn_flush(c) < 0)
                conn_fail(c, &G.err_io, "write failed");
            return;
        }
        G.hs_ok++;
        if (put_close(c) < 0 || conn_flush(c) < 0) {
            conn_fail(c, &G.err_io, "write failed");
            return;
        }
        c->state = C_CLOSING;
        return;
    }
    if (top_up(c, now) < 0)
        conn_fail(c, &G.err_io, "write failed");
}

/* Received bytes of an open connection; returns -1 when it was closed. */
static int consume(struct conn *c, uint8_t *p, size_t len, uint64_t now)
{
    if (G.raw) {
        while (len) {
            if (c->inflight == 0) {
                conn_fail(c, &G.err_verify, "bytes nobody asked for");
                return -1;
            }
            size_t take = G.size - c->msg_off;
            if (take > len)
                take = len;
            if (!payload_ok(c->recv_seq, p, take, c->msg_off)) {
                conn_fail(c, &G.err_verify, "echoed bytes differ from the sent ones");
                return -1;
            }
            c->msg_off += take;
            p += take;
            len -= take;
            if (c->msg_off == G.size) {
                message_done(c, now);
                if (c->fd < 0)
                    return -1;
                if (G.mode == MODE_HANDSHAKES) {
                    G.hs_ok++;
                    conn_close(c); /* the floor's cycle is complete */
                    return -1;
                }
            }
        }
        return 0;
    }
    while (len) {
        dx_frame_event ev;
        size_t used = dx__frame_decode(&c->dec, p, len, &ev);
        p += used;
        len -= used;
        switch (ev.type) {
        case DX_FRAME_NEED_MORE:
            break;
        case DX_FRAME_ERROR:
            conn_fail(c, &G.err_verify, "the server broke the framing");
            return -1;
        case DX_FRAME_HEADER: {
            unsigned op = ev.hdr->opcode;
            c->in_control = (op & 0x8) != 0;
            if (op == DX_OP_CLOSE) {
                if (c->state == C_CLOSING) {
                    conn_close(c); /* the handshake cycle is complete */
                } else {
                    conn_fail(c, &G.err_closed, "the server sent a close frame");
                }
                return -1;
            }
            if (c->in_control)
                break; /* ping/pong: payload skipped below */
            if (c->state != C_OPEN || G.mode != MODE_LOAD) {
                conn_fail(c, &G.err_verify, "data frame nobody asked for");
                return -1;
            }
            if ((op != DX_OP_CONT && op != (G.text ? DX_OP_TEXT : DX_OP_BINARY)) ||
                c->msg_off + ev.hdr->len > G.size) {
                conn_fail(c, &G.err_verify, "echo with the wrong opcode or length");
                return -1;
            }
            if (ev.end && ev.hdr->fin) {
                message_done(c, now);
                if (c->fd < 0)
                    return -1;
            }
            break;
        }
        case DX_FRAME_DATA:
            if (c->in_control)
                break;
            if (!payload_ok(c->recv_seq, ev.data, ev.len, c->msg_off)) {
                conn_fail(c, &G.err_verify, "echoed bytes differ from the sent ones");
                return -1;
            }
            c->msg_off += ev.len;
            if (ev.end && ev.hdr->fin) {
                message_done(c, now);
                if (c->fd < 0)
                    return -1;
            }
            break;
        }
    }
    return 0;
}

/* Reads the 101; bytes after the head go to consume(). */
static void read_handshake(struct conn *c, uint64_t now)
{
    ssize_t n = recv(c->fd, c->hs + c->hs_len, HS_CAP - c->hs_len, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        conn_fail(c, &G.err_handshake, "closed during the handshake");
        return;
    }
    c->hs_len += (size_t)n;
    dx_http_header hdrs[32];
    dx_http_response resp;
    int r = dx__http_parse_response(c->hs, c->hs_len, &resp, hdrs, 32, HS_CAP);
    if (r == DX_EAGAIN)
        return;
    if (r < 0) {
        conn_fail(c, &G.err_handshake, dx_strerror(r));
        return;
    }
    const char *proto = NULL;
    size_t proto_len = 0, n_exts = 0;
    dx_ws_ext_offer exts[4];
    int e = dx__ws_client_check(&resp, c->key, &G.opts, &proto, &proto_len, exts, 4, &n_exts);
    if (e < 0) {
        conn_fail(c, &G.err_handshake, dx_strerror(e));
        return;
    }
    size_t rest = c->hs_len - (size_t)r;
    memcpy(G.rbuf, c->hs + r, rest);
    c->hs_len = 0;
    on_open(c, now);
    if (c->fd >= 0 && rest && consume(c, G.rbuf, rest, now) == 0)
        top_up(c, now);
}

static void on_readable(struct conn *c, uint64_t now)
{
    if (c->state == C_HS_SENT) {
        read_handshake(c, now);
        return;
    }
    for (;;) {
        ssize_t n = recv(c->fd, G.rbuf, RBUF_CAP, 0);
        if (n > 0) {
            if (consume(c, G.rbuf, (size_t)n, now) < 0)
                return;
            if ((size_t)n < RBUF_CAP)
                break;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (c->state == C_CLOSING)
            conn_close(c); /* the server ended TCP after its close frame */
        else
            conn_fail(c, &G.err_closed, n == 0 ? "closed by the server" : strerror(errno));
        return;
    }
    if (top_up(c, now) < 0)
        conn_fail(c, &G.err_io, "write failed");
}

static void on_connected(struct conn *c, uint64_t now)
{
    int err = 0;
    socklen_t el = sizeof err;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0 || err) {
        conn_fail(c, &G.err_connect, err ? strerror(err) : "connect failed");
        return;
    }
    if (G.raw) {
        set_events(c, false);
        on_open(c, now);
        return;
    }
    int len = dx__ws_client_request((char *)c->out, c->out_cap, &G.opts, NULL, c->key);
    if (len < 0) {
        conn_fail(c, &G.err_handshake, dx_strerror(len));
        return;
    }
    c->out_off = 0;
    c->out_len = (size_t)len;
    c->state = C_HS_SENT;
    set_events(c, false);
    if (conn_flush(c) < 0)
        conn_fail(c, &G.err_io, "write failed");
}

static void start_conn(struct conn *c, uint64_t now)
{
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    c->state = C_CONNECTING;
    c->t_start = now;
    c->sent_seq = c->recv_seq = 0;
    c->inflight = 0;
    c->msg_off = 0;
    c->out_off = c->out_len = 0;
    c->hs_len = 0;
    c->want_out = true;
    G.started++;
    G.pending++;
    if (c->fd < 0) {
        conn_fail(c, &G.err_connect, strerror(errno));
        return;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (G.sources > 1) {
        /* Spread the 4-tuples over 127.0.0.1..sources so ephemeral ports
         * (and TIME_WAIT) do not run out; the port is chosen at connect(). */
        struct sockaddr_in src = {.sin_family = AF_INET};
        src.sin_addr.s_addr = htonl(0x7F000001u + (G.started % G.sources));
        setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (bind(c->fd, (struct sockaddr *)&src, sizeof src) < 0) {
            conn_fail(c, &G.err_connect, strerror(errno));
            return;
        }
    }
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.ptr = c};
    if (epoll_ctl(G.ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) {
        conn_fail(c, &G.err_connect, strerror(errno));
        return;
    }
    if (connect(c->fd, (struct sockaddr *)&G.dst, sizeof G.dst) < 0 && errno != EINPROGRESS) {
        conn_fail(c, &G.err_connect, strerror(errno));
        return;
    }
}

/* ---- setup -------------------------------------------------------------- */

static void usage(FILE *f)
{
    fputs("usage: loadgen [options] URL\n"
          "  URL                ws://HOST:PORT/PATH, or tcp://HOST:PORT with --raw (IPv4, loopback)\n"
          "  -c, --conns N      connections (default 100)\n"
          "  -d, --depth D      messages in flight per connection (default 1)\n"
          "  -s, --size S       message payload bytes (default 16)\n"
          "  -t, --duration T   measured seconds (default 4); idle: seconds to hold\n"
          "  -w, --warmup W     seconds of load before measuring (default 1)\n"
          "      --raw          plain TCP: the same payload bytes, no framing\n"
          "      --text         text messages (default binary)\n"
          "      --idle         open N connections and hold them, no traffic\n"
          "      --ready-file F idle: create F once every connection is open\n"
          "      --handshakes N open and close N connections (handshake + close\n"
          "                     handshake; with --raw: connect, one --size message\n"
          "                     echoed, close), --concurrency K at a time (default 8)\n"
          "      --sources K    source addresses 127.0.0.1..K (default: 1 per 4000 conns)\n"
          "      --rate R       connects per second (default 20000)\n"
          "      --max-pending P  connects + handshakes in progress (default 256)\n"
          "      --timeout S    give up on connecting after S seconds (default 30)\n"
          "Prints one JSON line. Exit 0 without errors, 1 with, 2 on bad usage.\n",
          f);
}

static int parse_url(const char *url)
{
    const char *p;
    if (strncmp(url, "ws://", 5) == 0)
        p = url + 5;
    else if (strncmp(url, "tcp://", 6) == 0)
        p = url + 6;
    else
        return -1;
    const char *colon = strchr(p, ':');
    if (!colon || (size_t)(colon - p) >= sizeof G.host)
        return -1;
    memcpy(G.host, p, (size_t)(colon - p));
    G.host[colon - p] = '\0';
    char *end;
    unsigned long port = strtoul(colon + 1, &end, 10);
    if (port == 0 || port > 65535)
        return -1;
    G.port = (unsigned)port;
    snprintf(G.path, sizeof G.path, "%s", *end == '/' ? end : "/");
    if (*end && *end != '/')
        return -1;
    G.dst.sin_family = AF_INET;
    G.dst.sin_port = htons((uint16_t)port);
    if (strcmp(G.host, "localhost") == 0)
        snprintf(G.host, sizeof G.host, "127.0.0.1");
    if (inet_pton(AF_INET, G.host, &G.dst.sin_addr) != 1)
        return -1;
    return 0;
}

static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) {
        fprintf(stderr, "loadgen: out of memory\n");
        exit(1);
    }
    return p;
}

static void setup(void)
{
    G.rbuf = xcalloc(1, RBUF_CAP);
    G.pattern = xcalloc(1, G.size);
    if (getrandom(&G.rng, sizeof G.rng, 0) != (ssize_t)sizeof G.rng || G.rng == 0)
        G.rng = 0x9E3779B97F4A7C15u ^ (uint64_t)getpid();
    for (size_t i = 0; i < G.size; i++)
        G.pattern[i] = (uint8_t)(' ' + xorshift() % 95); /* printable ASCII: valid UTF-8 */
    G.n_slots = G.mode == MODE_HANDSHAKES ? G.concurrency : G.conns;
    G.c = xcalloc(G.n_slots, sizeof *G.c);
    size_t frame = dx__frame_header_size(G.size, true) + G.size;
    for (unsigned i = 0; i < G.n_slots; i++) {
        struct conn *c = &G.c[i];
        c->fd = -1;
        c->idx = i;
        c->out_cap = HS_CAP + (G.mode == MODE_LOAD ? (size_t)G.depth * frame : 0);
        c->out = xcalloc(1, c->out_cap);
        c->ts = xcalloc(G.depth, sizeof *c->ts);
        if (!G.raw)
            c->hs = xcalloc(1, HS_CAP);
    }
    G.opts = (dx_ws_client_opts){.host = G.host, .port = G.port, .path = G.path};
    G.ep = epoll_create1(EPOLL_CLOEXEC);
    if (G.ep < 0) {
        perror("loadgen: epoll_create1");
        exit(1);
    }
}

/* Starts connections allowed by the rate, the pending bound and the mode. */
static void start_more(uint64_t now)
{
    unsigned target = G.mode == MODE_HANDSHAKES ? G.handshakes : G.conns;
    double elapsed = (double)(now - G.t0) * 1e-9;
    while (G.started < target && G.pending < G.max_pending &&
           (double)G.started < G.rate * elapsed + 1) {
        struct conn *c = NULL;
        if (G.mode == MODE_HANDSHAKES) {
            for (unsigned i = 0; i < G.n_slots && !c; i++)
                if (G.c[i].state == C_FREE)
                    c = &G.c[i];
            if (!c)
                return;
        } else {
            c = &G.c[G.started];
        }
        start_conn(c, now);
    }
}

static void print_json(void)
{
    uint64_t errors = G.err_connect + G.err_handshake + G.err_verify + G.err_closed + G.err_io;
    const char *mode = G.mode == MODE_LOAD ? "load" : G.mode == MODE_IDLE ? "idle" : "handshakes";
    printf("{\"mode\":\"%s\",\"transport\":\"%s\",\"url\":\"%s\"", mode, G.raw ? "raw" : "ws", G.url);
    if (G.mode == MODE_LOAD) {
        double s = G.measured_s > 0 ? G.measured_s : 1e300; /* nothing measured: rates 0 */
        printf(",\"conns\":%u,\"open\":%u,\"depth\":%u,\"size\":%zu,\"seconds\":%.3f,\"msgs\":%llu,"
               "\"msgs_per_s\":%.0f,\"mb_per_s\":%.3f,\"lat_p50_us\":%.1f,\"lat_p99_us\":%.1f,"
               "\"lat_max_us\":%.1f,\"total_msgs\":%llu,\"cpu_pct\":%.1f",
               G.conns, G.opened, G.depth, G.size, G.measured_s, (unsigned long long)G.msgs,
               (double)G.msgs / s, (double)G.bytes / s / 1e6, hist_quantile(&G.lat, 0.50) / 1e3,
               hist_quantile(&G.lat, 0.99) / 1e3, (double)G.lat.max / 1e3, (unsigned long long)G.total_msgs,
               G.cpu_pct);
    } else if (G.mode == MODE_IDLE) {
        printf(",\"conns\":%u,\"open\":%u,\"connect_s\":%.3f,\"held_s\":%.3f,\"hs_p50_us\":%.1f,"
               "\"hs_p99_us\":%.1f",
               G.conns, G.opened, G.connect_s, G.measured_s, hist_quantile(&G.hs_lat, 0.50) / 1e3,
               hist_quantile(&G.hs_lat, 0.99) / 1e3);
    } else {
        double s = G.measured_s > 0 ? G.measured_s : 1;
        printf(",\"n\":%u,\"ok\":%llu,\"seconds\":%.3f,\"per_s\":%.0f,\"hs_p50_us\":%.1f,\"hs_p99_us\":%.1f,"
               "\"cpu_pct\":%.1f",
               G.handshakes, (unsigned long long)G.hs_ok, G.measured_s, (double)G.hs_ok / s,
               hist_quantile(&G.hs_lat, 0.50) / 1e3, hist_quantile(&G.hs_lat, 0.99) / 1e3, G.cpu_pct);
    }
    printf(",\"errors\":%llu,\"err_connect\":%llu,\"err_handshake\":%llu,\"err_verify\":%llu,"
           "\"err_closed\":%llu,\"err_io\":%llu}\n",
           (unsigned long long)errors, (unsigned long long)G.err_connect, (unsigned long long)G.err_handshake,
           (unsigned long long)G.err_verify, (unsigned long long)G.err_closed, (unsigned long long)G.err_io);
    fflush(stdout);
}

static int parse_args(int argc, char **argv)
{
    enum { O_RAW = 256, O_TEXT, O_IDLE, O_READY, O_HS, O_CONC, O_SOURCES, O_RATE, O_PENDING, O_TIMEOUT };
    static const struct option longopts[] = {
        {"conns", required_argument, NULL, 'c'},   {"depth", required_argument, NULL, 'd'},
        {"size", required_argument, NULL, 's'},    {"duration", required_argument, NULL, 't'},
        {"warmup", required_argument, NULL, 'w'},  {"raw", no_argument, NULL, O_RAW},
        {"text", no_argument, NULL, O_TEXT},       {"idle", no_argument, NULL, O_IDLE},
        {"ready-file", required_argument, NULL, O_READY},
        {"handshakes", required_argument, NULL, O_HS},
        {"concurrency", required_argument, NULL, O_CONC},
        {"sources", required_argument, NULL, O_SOURCES},
        {"rate", required_argument, NULL, O_RATE}, {"max-pending", required_argument, NULL, O_PENDING},
        {"timeout", required_argument, NULL, O_TIMEOUT},
        {"help", no_argument, NULL, 'h'},          {NULL, 0, NULL, 0}};
    G.conns = 100;
    G.depth = 1;
    G.size = 16;
    G.duration = 4;
    G.warmup = 1;
    G.rate = 20000;
    G.max_pending = 256;
    G.concurrency = 8;
    G.timeout = 30;
    int opt;
    while ((opt = getopt_long(argc, argv, "c:d:s:t:w:h", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c': G.conns = (unsigned)strtoul(optarg, NULL, 10); break;
        case 'd': G.depth = (unsigned)strtoul(optarg, NULL, 10); break;
        case 's': G.size = (size_t)strtoull(optarg, NULL, 10); break;
        case 't': G.duration = strtod(optarg, NULL); break;
        case 'w': G.warmup = strtod(optarg, NULL); break;
        case O_RAW: G.raw = true; break;
        case O_TEXT: G.text = true; break;
        case O_IDLE: G.mode = MODE_IDLE; break;
        case O_READY: G.ready_file = optarg; break;
        case O_HS:
            G.mode = MODE_HANDSHAKES;
            G.handshakes = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case O_CONC: G.concurrency = (unsigned)strtoul(optarg, NULL, 10); break;
        case O_SOURCES: G.sources = (unsigned)strtoul(optarg, NULL, 10); break;
        case O_RATE: G.rate = strtod(optarg, NULL); break;
        case O_PENDING: G.max_pending = (unsigned)strtoul(optarg, NULL, 10); break;
        case O_TIMEOUT: G.timeout = strtod(optarg, NULL); break;
        case 'h': usage(stdout); exit(0);
        default: return -1;
        }
    }
    if (optind != argc - 1 || strlen(argv[optind]) >= sizeof G.url)
        return -1;
    snprintf(G.url, sizeof G.url, "%s", argv[optind]);
    if (parse_url(G.url) < 0) {
        fprintf(stderr, "loadgen: bad URL %s (want ws://IPV4:PORT/PATH or tcp://IPV4:PORT)\n", G.url);
        return -1;
    }
    if (G.conns == 0 || G.depth == 0 || G.size == 0 || G.size > (64u << 20) || G.duration <= 0 ||
        G.warmup < 0 || G.rate <= 0 || G.max_pending == 0 || G.concurrency == 0 ||
        (G.mode == MODE_HANDSHAKES && G.handshakes == 0)) {
        fprintf(stderr, "loadgen: bad option value\n");
        return -1;
    }
    if (G.mode == MODE_HANDSHAKES && G.max_pending > G.concurrency)
        G.max_pending = G.concurrency;
    if (G.sources == 0) {
        unsigned n = G.mode == MODE_HANDSHAKES ? G.handshakes : G.conns;
        G.sources = 1 + n / 4000;
        if (G.sources > 16)
            G.sources = 16;
    }
    if (G.sources > 1 && (ntohl(G.dst.sin_addr.s_addr) >> 24) != 127) {
        fprintf(stderr, "loadgen: several source addresses need a loopback target; using one\n");
        G.sources = 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (parse_args(argc, argv) < 0) {
        usage(stderr);
        return 2;
    }
    raise_fd_limit();
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    setup();

    struct epoll_event evs[MAX_EVENTS];
    G.t0 = now_ns();
    uint64_t deadline_open = G.t0 + (uint64_t)(G.timeout * 1e9);
    double cpu0 = 0;
    bool done = false;
    while (!done) {
        uint64_t now = now_ns();
        unsigned target = G.mode == MODE_HANDSHAKES ? G.handshakes : G.conns;
        if (G.started < target)
            start_more(now);
        int timeout = G.started < target ? 1 : 50;
        int n = epoll_wait(G.ep, evs, MAX_EVENTS, timeout);
        if (n < 0 && errno != EINTR) {
            perror("loadgen: epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (c->fd < 0)
                continue; /* closed by an earlier event of this batch */
            now = now_ns();
            uint32_t e = evs[i].events;
            if (c->state == C_CONNECTING) {
                if (e & (EPOLLOUT | EPOLLERR | EPOLLHUP))
                    on_connected(c, now);
                continue;
            }
            if (e & (EPOLLIN | EPOLLERR | EPOLLHUP))
                on_readable(c, now);
            if (c->fd >= 0 && (e & EPOLLOUT) && conn_flush(c) < 0)
                conn_fail(c, &G.err_io, "write failed");
        }
        now = now_ns();
        if (g_signal) {
            if (!G.measuring && G.mode == MODE_IDLE && G.all_open)
                G.measured_s = (double)(now - G.t_open) * 1e-9;
            break;
        }

        if (G.mode == MODE_HANDSHAKES) {
            if (G.started >= G.handshakes && G.pending == 0 && G.live == 0) {
                G.measured_s = (double)(now - G.t0) * 1e-9;
                G.cpu_pct = 100 * cpu_seconds() / (G.measured_s > 0 ? G.measured_s : 1);
                done = true;
            } else if (now > deadline_open) {
                fprintf(stderr, "loadgen: handshakes did not finish in %.0f s\n", G.timeout);
                G.err_handshake += G.handshakes - G.hs_ok;
                G.measured_s = (double)(now - G.t0) * 1e-9;
                done = true;
            }
            continue;
        }

        if (!G.all_open) {
            if (G.started >= G.conns && G.pending == 0) {
                G.all_open = true;
                G.t_open = now;
                G.connect_s = (double)(now - G.t0) * 1e-9;
                G.t_measure = now + (uint64_t)(G.warmup * 1e9);
                if (G.mode == MODE_IDLE) {
                    G.t_measure = now;
                    if (G.ready_file) {
                        FILE *f = fopen(G.ready_file, "w");
                        if (f) {
                            fprintf(f, "%u\n", G.opened);
                            fclose(f);
                        }
                    }
                }
                G.t_end = G.t_measure + (uint64_t)(G.duration * 1e9);
                if (G.opened == 0) {
                    fprintf(stderr, "loadgen: no connection opened\n");
                    done = true;
                }
            } else if (now > deadline_open) {
                fprintf(stderr, "loadgen: only %u of %u connections opened in %.0f s\n", G.opened, G.conns,
                        G.timeout);
                G.err_connect += G.conns - G.opened;
                done = true;
            }
            continue;
        }
        if (G.mode == MODE_LOAD && !G.measuring && now >= G.t_measure && now < G.t_end) {
            /* warm-up over: count from here */
            G.measuring = true;
            G.msgs = G.bytes = 0;
            memset(&G.lat, 0, sizeof G.lat);
            cpu0 = cpu_seconds();
            G.t_measure = now;
        }
        if (now >= G.t_end) {
            G.measured_s = (double)(now - G.t_measure) * 1e-9;
            if (G.mode == MODE_LOAD)
                G.cpu_pct = 100 * (cpu_seconds() - cpu0) / (G.measured_s > 0 ? G.measured_s : 1);
            done = true;
        }
        if (!done && G.live == 0 && G.mode == MODE_LOAD) {
            fprintf(stderr, "loadgen: every connection is gone\n");
            if (G.measuring)
                G.measured_s = (double)(now - G.t_measure) * 1e-9;
            done = true;
        }
    }
    G.stop = true;
    G.measuring = false;
    for (unsigned i = 0; i < G.n_slots; i++)
        if (G.c[i].fd >= 0)
            close(G.c[i].fd);
    print_json();
    uint64_t errors = G.err_connect + G.err_handshake + G.err_verify + G.err_closed + G.err_io;
    return errors ? 1 : 0;
}
