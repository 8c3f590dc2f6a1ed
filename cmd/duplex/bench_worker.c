/*
 * cmd/duplex/bench_worker.c: one worker of `duplex bench`: a dx_loop on
 * the calling thread and its share of the client connections.
 *
 * Layer: CLI. Uses only the public headers (duplex/client.h); it measures
 * a server through the same client endpoint applications use.
 *
 * Invariants that keep it fast and honest:
 *  - no allocation per message on our side: a message is built in one
 *    per-worker scratch buffer (dx_conn_send copies it) and each connection
 *    has a ring of D send timestamps, allocated once;
 *  - every echo is verified: message i of a connection carries i in its
 *    first 8 bytes (letters, so text frames are valid UTF-8) and a fixed
 *    printable pattern after; opcode, length, order and every byte are
 *    compared. A mismatch counts err_verify and closes the connection;
 *  - latency goes into a histogram, never stored samples;
 *  - the public loop has no timer: a ticker thread posts `tick` with
 *    dx_loop_post every 10 ms (1 ms with --rate and --subscribe), at most
 *    one outstanding.
 *
 * --subscribe (gateway fan-out): the connections are raw-dialect
 * subscribers (URL?subscribe=TOPIC: the cheapest for the gateway and for
 * us, no JSON per delivery), and worker 0 also opens one JSON-dialect
 * connection (subprotocol duplex.v1) on URL that publishes at --rate with
 * {"op":"pub","id":N,...} and counts the acks and errs. Message n carries n
 * and its send time (CLOCK_MONOTONIC, one clock for every process of the
 * machine) in its first bytes (binary: two little-endian u64; text: two
 * 16-digit hex numbers), the fixed pattern after; every delivery is checked
 * (opcode, length, pattern) and its number against the next one that
 * subscriber expects: below is out of order (or a duplicate), above counts
 * the skipped ones missing. At the end worker 0 publishes in shared memory
 * how many it sent (sh->pub_final) and each subscriber still open must
 * have had them all.
 */
#define _GNU_SOURCE
#include "bench.h"
#include "cli.h"

#include "duplex/client.h"

#include <jansson.h>

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define SEQ_BYTES 8u
#define TICK_NS 10000000u     /* 10 ms: connect pacing, phases */
#define TICK_RATE_NS 1000000u /* 1 ms with --rate, so sends are spread */
#define DRAIN_GRACE_NS 2000000000ull /* wait this long for in-flight echoes at the end */
#define CLOSE_GRACE_NS 3000000000ull /* then this long for the close handshakes */
#define PUB_SUBPROTOCOL "duplex.v1"

enum { S_IDLE, S_CONNECTING, S_OPEN, S_CLOSING, S_DONE };

typedef struct bconn {
    struct worker *w;
    dx_client *cl;
    dx_conn *conn;
    uint64_t *ts;       /* send time of message seq at ts[seq % depth] */
    uint64_t sent, recv;
    uint8_t seq_out[SEQ_BYTES], seq_in[SEQ_BYTES]; /* next to send, next expected */
    uint64_t t_start;   /* connect started */
    unsigned inflight;
    unsigned index;     /* global index, picks the source address */
    uint8_t state;
    bool failed;        /* counted as an error already */
    bool ever_opened;
    bool sub_base;      /* --subscribe: the next expected number is known (opened before publishing) */
    char bind[20];
} bconn;

typedef struct worker {
    const bench_cfg *cfg;
    bench_shared *sh;
    bench_wstate *ws;
    dx_loop *loop;
    bconn *c;
    unsigned nslots;
    unsigned next_start;  /* next slot to connect (echo/rate/subscribe/idle) */
    unsigned pending;     /* connecting now */
    unsigned active;      /* slots not S_IDLE/S_DONE */
    uint64_t hs_started;  /* BM_HANDSHAKES */
    uint8_t *msg;         /* scratch message: pattern with the sequence in front */
    uint8_t *pattern;
    size_t seq_len;       /* min(size, SEQ_BYTES) */
    int opcode;
    uint64_t t0;
    bool measuring, stopping, closing, finished;
    uint64_t t_stop, t_close, t_win0;
    double cpu0;
    double credit;        /* BM_RATE: messages owed */
    uint64_t t_credit;
    unsigned rr;          /* BM_RATE: round-robin cursor */
    uint64_t win_from, win_to; /* the measurement window, refreshed by tick */
    uint64_t sent, received;   /* published to ws->c by tick (single writer) */
    pthread_t ticker;
    dx_seams seams;
    uint64_t rng;
    _Atomic int tick_pending, ticker_stop;
    dx_log log;
    /* --subscribe, worker 0: the publisher */
    dx_client *pub_cl;
    dx_conn *pub_conn;
    uint8_t pub_state;    /* S_IDLE: none (other workers) */
    uint64_t pub_seq;     /* publishes sent: the next sequence number */
    uint64_t pub_answered; /* acks and errs received */
    double pub_credit;
    uint64_t pub_t_credit;
    char *pub_frame;      /* scratch: one pub request */
    unsigned long errs_printed;
} worker;

uint64_t bench_now_ns(void)
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

static void inc(_Atomic uint64_t *a) { atomic_fetch_add_explicit(a, 1, memory_order_relaxed); }
static void dec(_Atomic uint64_t *a) { atomic_fetch_sub_explicit(a, 1, memory_order_relaxed); }

/* ---- histogram ----------------------------------------------------------------- */

static unsigned hist_index(uint64_t v)
{
    if (v < BH_SUB)
        return (unsigned)v;
    unsigned msb = 63u - (unsigned)__builtin_clzll(v); /* >= 4 */
    unsigned i = (msb - 3u) * BH_SUB + (unsigned)((v >> (msb - 4u)) & (BH_SUB - 1u));
    return i < BH_BUCKETS ? i : BH_BUCKETS - 1;
}

void bench_hist_add(bench_hist *h, uint64_t v)
{
    h->b[hist_index(v)]++;
    h->n++;
    h->sum += v;
    if (v > h->max)
        h->max = v;
}

void bench_hist_merge(bench_hist *into, const bench_hist *from)
{
    for (unsigned i = 0; i < BH_BUCKETS; i++)
        into->b[i] += from->b[i];
    into->n += from->n;
    into->sum += from->sum;
    if (from->max > into->max)
        into->max = from->max;
}

double bench_hist_quantile(const bench_hist *h, double p)
{
    if (h->n == 0)
        return 0;
    uint64_t target = (uint64_t)(p * (double)h->n + 0.5);
    if (target < 1)
        target = 1;
    uint64_t acc = 0;
    for (unsigned i = 0; i < BH_BUCKETS; i++) {
        acc += h->b[i];
        if (acc < target)
            continue;
        double mid;
        if (i < BH_SUB) {
            mid = (double)i;
        } else {
            unsigned m = i / BH_SUB, sub = i % BH_SUB;
            double lo = (double)((uint64_t)(BH_SUB + sub) << (m - 1));
            double hi = (double)((uint64_t)(BH_SUB + sub + 1) << (m - 1));
            mid = (lo + hi) / 2;
        }
        return mid > (double)h->max ? (double)h->max : mid;
    }
    return (double)h->max;
}

/* ---- payload ---------------------------------------------------------------------- */

/* A message's sequence number as 8 base-32 digits 'A'..'`' (ASCII, so a
 * text frame stays valid UTF-8), least significant first, kept per
 * connection as a counter: incrementing it is one step amortised, and
 * checking an echo is one 8-byte compare. */
#define SEQ_ZERO "AAAAAAAA"

static inline void seq_next(uint8_t e[SEQ_BYTES])
{
    for (unsigned i = 0; i < SEQ_BYTES && ++e[i] == 'A' + 32; i++)
        e[i] = 'A';
}

/* Builds the next message of `b` in the scratch buffer. */
static const uint8_t *make_msg(worker *w, const uint8_t seq[SEQ_BYTES])
{
    memcpy(w->msg, seq, w->seq_len);
    return w->msg;
}

static bool msg_ok(const worker *w, const uint8_t seq[SEQ_BYTES], const uint8_t *d, size_t len)
{
    if (len != w->cfg->size || memcmp(d, seq, w->seq_len) != 0)
        return false;
    return memcmp(d + w->seq_len, w->pattern + w->seq_len, len - w->seq_len) == 0;
}

/* ---- connections ------------------------------------------------------------------ */

static void conn_error(bconn *b, _Atomic uint64_t *counter, const char *what)
{
    worker *w = b->w;
    uint64_t before = atomic_fetch_add_explicit(counter, 1, memory_order_relaxed);
    if (before < 3)
        fprintf(stderr, "%sduplex bench: connection %u: %s\n", w->cfg->progress ? "\r\033[K" : "", b->index, what);
    b->failed = true;
    if (b->state == S_OPEN) {
        b->state = S_CLOSING;
        (void)dx_client_close(b->cl, DX_CLOSE_POLICY, "bench: check failed", 19);
    }
}

/* The window as of the last tick (the coordinator's times, copied so the
 * hot path reads no shared memory). */
static bool window_open(const worker *w, uint64_t now)
{
    return now >= w->win_from && now < w->win_to;
}

static int send_one(bconn *b, uint64_t now, bool in_win)
{
    worker *w = b->w;
    int rc = dx_conn_send(b->conn, w->opcode, make_msg(w, b->seq_out), w->cfg->size);
    if (rc != 0) {
        conn_error(b, &w->ws->c.err_send, dx_strerror(rc));
        return -1;
    }
    b->ts[b->sent % w->cfg->depth] = now;
    b->sent++;
    seq_next(b->seq_out);
    b->inflight++;
    w->sent++;
    if (in_win)
        w->ws->w_sent++;
    return 0;
}

static void top_up(bconn *b, uint64_t now, bool in_win)
{
    while (b->state == S_OPEN && !b->w->stopping && b->inflight < b->w->cfg->depth)
        if (send_one(b, now, in_win) < 0)
            return;
}

static void start_conn(worker *w, bconn *b);

static void on_open(dx_conn *c, void *ud)
{
    bconn *b = ud;
    worker *w = b->w;
    uint64_t now = bench_now_ns();
    b->conn = c;
    b->state = S_OPEN;
    b->ever_opened = true;
    w->pending--;
    inc(&w->ws->c.opened);
    inc(&w->ws->c.live);
    bench_hist_add(&w->ws->hs, now - b->t_start);
    switch (w->cfg->mode) {
    case BM_ECHO:
        top_up(b, now, window_open(w, now));
        break;
    case BM_SUBSCRIBE:
        /* subscribed at the 101: from here every publish must arrive */
        b->sub_base = atomic_load(&w->sh->t_measure) == 0;
        b->recv = 0;
        break;
    case BM_HANDSHAKES:
        inc(&w->ws->c.hs_ok);
        b->state = S_CLOSING;
        (void)dx_client_close(b->cl, DX_CLOSE_NORMAL, NULL, 0);
        break;
    default:
        break;
    }
}

/* ---- --subscribe: payloads and the publisher ------------------------------------------ */

#define SUB_HEAD_BINARY 16u /* u64 sequence, u64 send time, little-endian */
#define SUB_HEAD_TEXT 32u   /* the same as 16 + 16 hex digits */

static size_t sub_head(const bench_cfg *cfg)
{
    return cfg->text ? SUB_HEAD_TEXT : SUB_HEAD_BINARY;
}

static void put_u64le(uint8_t *p, uint64_t v)
{
    for (unsigned i = 0; i < 8; i++, v >>= 8)
        p[i] = (uint8_t)v;
}

static uint64_t get_u64le(const uint8_t *p)
{
    uint64_t v = 0;
    for (unsigned i = 8; i-- > 0;)
        v = v << 8 | p[i];
    return v;
}

static void put_hex16(uint8_t *p, uint64_t v)
{
    for (unsigned i = 16; i-- > 0; v >>= 4)
        p[i] = (uint8_t)"0123456789abcdef"[v & 15];
}

static bool get_hex16(const uint8_t *p, uint64_t *out)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < 16; i++) {
        uint8_t c = p[i];
        unsigned d = c >= '0' && c <= '9' ? (unsigned)(c - '0') : c >= 'a' && c <= 'f' ? (unsigned)(c - 'a' + 10) : 16u;
        if (d == 16)
            return false;
        v = v << 4 | d;
    }
    *out = v;
    return true;
}

/* Message n's payload in w->msg: n and `ts` in front of the pattern. */
static void sub_stamp(worker *w, uint64_t n, uint64_t ts)
{
    if (w->cfg->text) {
        put_hex16(w->msg, n);
        put_hex16(w->msg + 16, ts);
    } else {
        put_u64le(w->msg, n);
        put_u64le(w->msg + 8, ts);
    }
}

/* A delivery's number and send time; false when it is not one of ours. */
static bool sub_unstamp(const worker *w, int opcode, const uint8_t *d, size_t len, uint64_t *n, uint64_t *ts)
{
    const bench_cfg *cfg = w->cfg;
    size_t h = sub_head(cfg);
    if (opcode != w->opcode || len != cfg->size || memcmp(d + h, w->pattern + h, len - h) != 0)
        return false;
    if (!cfg->text) {
        *n = get_u64le(d);
        *ts = get_u64le(d + 8);
        return true;
    }
    return get_hex16(d, n) && get_hex16(d + 16, ts);
}

/* An error of the run that is not one subscriber's (the publisher's, the
 * end-of-run check): counted, the first few printed. */
static void run_error(worker *w, _Atomic uint64_t *counter, uint64_t n, const char *what)
{
    atomic_fetch_add_explicit(counter, n, memory_order_relaxed);
    if (w->errs_printed++ < 3)
        fprintf(stderr, "%sduplex bench: %s\n", w->cfg->progress ? "\r\033[K" : "", what);
}

static void pub_on_open(dx_conn *c, void *ud)
{
    worker *w = ud;
    const char *proto = dx_conn_protocol(c);
    w->pub_conn = c;
    w->pub_state = S_OPEN;
    if (!proto || strcmp(proto, PUB_SUBPROTOCOL)) {
        run_error(w, &w->ws->c.err_publish, 1, "publisher: the server did not accept subprotocol " PUB_SUBPROTOCOL
                                               " (is the URL a duplex gateway's /ws?)");
        w->pub_state = S_CLOSING;
        (void)dx_client_close(w->pub_cl, DX_CLOSE_NORMAL, NULL, 0);
        atomic_store(&w->sh->abort_run, 1);
    }
}

static void pub_on_message(dx_conn *c, int opcode, const uint8_t *data, size_t len, void *ud)
{
    (void)c;
    worker *w = ud;
    /* the gateway's ack, as it writes it: counted without parsing (this
     * connection runs at the publish rate); anything else goes to jansson */
    static const char ack[] = "{\"op\":\"ack\",\"id\":";
    if (opcode == DX_OP_TEXT && len > sizeof ack - 1 && memcmp(data, ack, sizeof ack - 1) == 0) {
        w->pub_answered++;
        w->ws->pub_acked++;
        return;
    }
    json_error_t je;
    json_t *j = opcode == DX_OP_TEXT ? json_loadb((const char *)data, len, 0, &je) : NULL;
    const char *op = json_string_value(json_object_get(j, "op"));
    bool has_id = json_is_integer(json_object_get(j, "id"));
    if (op && !strcmp(op, "ack") && has_id) {
        w->pub_answered++;
        w->ws->pub_acked++;
    } else if (op && !strcmp(op, "err")) {
        const char *reason = json_string_value(json_object_get(j, "reason"));
        char why[300];
        snprintf(why, sizeof why, "publisher: err %lld %s", (long long)json_integer_value(json_object_get(j, "code")),
                 reason ? reason : "");
        if (has_id)
            w->pub_answered++;
        run_error(w, &w->ws->c.err_publish, 1, why);
    } else if (!op) {
        run_error(w, &w->ws->c.err_publish, 1, "publisher: a message that is not a JSON-dialect object");
    }
    json_decref(j);
}

static void pub_on_close(dx_conn *c, unsigned code, const char *reason, size_t len, void *ud)
{
    (void)c;
    worker *w = ud;
    w->pub_conn = NULL;
    if (w->pub_state != S_CLOSING && !w->closing) {
        char why[200];
        snprintf(why, sizeof why, "publisher: closed by the server: code %u%s%.*s", code, len ? ", " : "",
                 (int)(len > 120 ? 120 : len), reason);
        run_error(w, &w->ws->c.err_closed, 1, why);
    }
    w->pub_state = S_CLOSING;
}

static void pub_on_error(dx_client *cl, int err, const char *what, void *ud)
{
    (void)cl;
    worker *w = ud;
    if (w->closing)
        return;
    char why[300];
    snprintf(why, sizeof why, "publisher: %s", what);
    run_error(w, (err == DX_EHANDSHAKE || err == DX_EHTTP) ? &w->ws->c.handshake_failed : &w->ws->c.connect_failed,
              1, why);
    atomic_store(&w->sh->abort_run, 1); /* nothing to measure without it */
}

static void pub_on_done(dx_client *cl, void *ud)
{
    (void)cl;
    worker *w = ud;
    w->pub_state = S_DONE;
}

static int pub_start(worker *w)
{
    const bench_cfg *cfg = w->cfg;
    static const char *const protos[] = {PUB_SUBPROTOCOL};
    size_t cap = 128 + strlen(cfg->topic) + 4 * (cfg->size / 3 + 1);
    w->pub_frame = malloc(cap);
    if (!w->pub_frame)
        return DX_ENOMEM;
    dx_client_options o = {0};
    o.url = cfg->url;
    o.protocols = protos;
    o.n_protocols = 1;
    o.insecure = cfg->insecure;
    o.ca_file = cfg->ca_file;
    o.deflate = cfg->deflate;
    o.connect_timeout_ms = (unsigned)(cfg->timeout * 1000);
    o.send_max = 2 * PUB_MAX_INFLIGHT * cap;
    o.send_high_water = o.send_max / 2;
    o.cb = (dx_client_callbacks){.on_open = pub_on_open, .on_message = pub_on_message, .on_close = pub_on_close,
                                 .on_error = pub_on_error, .on_done = pub_on_done};
    o.ud = w;
    int err = 0;
    w->pub_cl = dx_client_new(w->loop, &o, &err);
    if (!w->pub_cl)
        return err;
    w->pub_state = S_CONNECTING;
    return dx_client_connect(w->pub_cl);
}

/* One publish: {"op":"pub","id":n+1,"topic":T,"b64":...} (binary) or
 * "data":... (text: hex digits and letters, nothing to escape). */
static void pub_one(worker *w, uint64_t now, bool in_win)
{
    const bench_cfg *cfg = w->cfg;
    sub_stamp(w, w->pub_seq, now);
    char *f = w->pub_frame;
    int k = sprintf(f, "{\"op\":\"pub\",\"id\":%llu,\"topic\":\"%s\",\"%s\":\"", (unsigned long long)w->pub_seq + 1,
                    cfg->topic, cfg->text ? "data" : "b64");
    size_t n = (size_t)k;
    if (cfg->text) {
        memcpy(f + n, w->msg, cfg->size);
        n += cfg->size;
    } else {
        cli_base64(w->msg, cfg->size, f + n);
        n += strlen(f + n);
    }
    memcpy(f + n, "\"}", 2);
    n += 2;
    int rc = dx_conn_send(w->pub_conn, DX_OP_TEXT, f, n);
    if (rc != 0) {
        char why[100];
        snprintf(why, sizeof why, "publisher: send: %s", dx_strerror(rc));
        run_error(w, &w->ws->c.err_send, 1, why);
        return;
    }
    w->pub_seq++;
    w->sent++;
    if (in_win)
        w->ws->w_sent++;
}

/* Publishes what --rate owes since the last tick. */
static void pub_sends(worker *w, uint64_t now)
{
    if (w->pub_t_credit == 0) {
        w->pub_t_credit = now;
        w->pub_credit = 1; /* the first one at once */
    }
    w->pub_credit += w->cfg->rate * (double)(now - w->pub_t_credit) * 1e-9;
    w->pub_t_credit = now;
    bool in_win = window_open(w, now);
    while (w->pub_credit >= 1 && w->pub_state == S_OPEN) {
        w->pub_credit -= 1;
        if (w->pub_seq - w->pub_answered >= PUB_MAX_INFLIGHT)
            w->ws->late++;
        else
            pub_one(w, now, in_win);
    }
    double cap = w->cfg->rate * 0.05 + 1; /* at most 50 ms of backlog after a stall */
    if (w->pub_credit > cap)
        w->pub_credit = cap;
}

/* A subscriber's delivery: ours, in order, none skipped. */
static void sub_message(bconn *b, int opcode, const uint8_t *data, size_t len, uint64_t now, bool in_win)
{
    worker *w = b->w;
    uint64_t n, ts;
    w->received++;
    if (!sub_unstamp(w, opcode, data, len, &n, &ts)) {
        char why[96];
        snprintf(why, sizeof why, "a %s message of %zu bytes that the bench did not publish",
                 opcode == DX_OP_TEXT ? "text" : "binary", len);
        conn_error(b, &w->ws->c.err_verify, why);
        return;
    }
    if (!b->sub_base) { /* opened while publishing: starts where it joined */
        b->sub_base = true;
        b->recv = n;
    }
    if (n < b->recv) {
        char why[96];
        snprintf(why, sizeof why, "message %llu after %llu: out of order or twice", (unsigned long long)n,
                 (unsigned long long)b->recv - 1);
        conn_error(b, &w->ws->c.err_order, why);
        return;
    }
    if (n > b->recv) {
        char why[96];
        snprintf(why, sizeof why, "messages %llu to %llu missing", (unsigned long long)b->recv,
                 (unsigned long long)n - 1);
        atomic_fetch_add_explicit(&w->ws->c.err_missing, n - b->recv - 1, memory_order_relaxed);
        conn_error(b, &w->ws->c.err_missing, why); /* counts the last one */
        return;
    }
    b->recv = n + 1;
    if (in_win) {
        w->ws->w_received++;
        w->ws->w_bytes += len;
        bench_hist_add(&w->ws->lat, now > ts ? now - ts : 0);
    }
}

/* --subscribe, after the end: every subscriber still open has every
 * message the publisher sent (sh->pub_final, once pub_done). */
static bool subs_caught_up(const worker *w)
{
    if (!atomic_load(&w->sh->pub_done))
        return false;
    uint64_t fin = atomic_load(&w->sh->pub_final);
    for (unsigned i = 0; i < w->nslots; i++) {
        const bconn *b = &w->c[i];
        if (b->state == S_OPEN && !b->failed && b->sub_base && b->recv < fin)
            return false;
    }
    return true;
}

static void subs_count_missing(worker *w)
{
    if (!atomic_load(&w->sh->pub_done))
        return;
    uint64_t fin = atomic_load(&w->sh->pub_final);
    for (unsigned i = 0; i < w->nslots; i++) {
        bconn *b = &w->c[i];
        if (b->state == S_OPEN && !b->failed && b->recv < fin && (b->sub_base || fin > 0)) {
            uint64_t from = b->sub_base ? b->recv : 0;
            char why[120];
            snprintf(why, sizeof why, "connection %u: messages %llu to %llu never arrived", b->index,
                     (unsigned long long)from, (unsigned long long)fin - 1);
            run_error(w, &w->ws->c.err_missing, fin - from, why);
        }
    }
}

/* --idle --subscribe: a publish made elsewhere, counted; a payload that
 * starts with IDLE_STAMP and a decimal CLOCK_MONOTONIC time in ns (the
 * publisher's clock: the same machine) gives the publish-to-delivery time. */
#define IDLE_STAMP "dxts "
static void idle_delivery(bconn *b, const uint8_t *data, size_t len, uint64_t now)
{
    worker *w = b->w;
    b->recv++;
    w->received++;
    size_t k = sizeof IDLE_STAMP - 1;
    if (len > k && len < k + 21 && memcmp(data, IDLE_STAMP, k) == 0) {
        uint64_t ts = 0;
        size_t i = k;
        for (; i < len && data[i] >= '0' && data[i] <= '9'; i++)
            ts = ts * 10u + (uint64_t)(data[i] - '0');
        if (i == len && ts <= now)
            bench_hist_add(&w->ws->lat, now - ts);
    }
}

static void on_message(dx_conn *c, int opcode, const uint8_t *data, size_t len, void *ud)
{
    (void)c;
    bconn *b = ud;
    worker *w = b->w;
    if (b->state != S_OPEN)
        return;
    uint64_t now = bench_now_ns();
    bool in_win = window_open(w, now);
    if (w->cfg->mode == BM_SUBSCRIBE) {
        sub_message(b, opcode, data, len, now, in_win);
        return;
    }
    if (w->cfg->idle_sub) {
        idle_delivery(b, data, len, now);
        return;
    }
    if (w->cfg->mode != BM_ECHO && w->cfg->mode != BM_RATE) {
        conn_error(b, &w->ws->c.err_verify, "a message nobody asked for");
        return;
    }
    if (b->inflight == 0) {
        conn_error(b, &w->ws->c.err_verify, "an echo of a message never sent");
        return;
    }
    if (opcode != w->opcode || !msg_ok(w, b->seq_in, data, len)) {
        char why[96];
        snprintf(why, sizeof why, "echo %llu differs from what was sent (%s, %zu bytes)",
                 (unsigned long long)b->recv, opcode == DX_OP_TEXT ? "text" : "binary", len);
        conn_error(b, &w->ws->c.err_verify, why);
        return;
    }
    uint64_t lat = now - b->ts[b->recv % w->cfg->depth];
    b->recv++;
    seq_next(b->seq_in);
    b->inflight--;
    w->received++;
    if (in_win) {
        w->ws->w_received++;
        w->ws->w_bytes += len;
        bench_hist_add(&w->ws->lat, lat);
    }
    if (w->cfg->mode == BM_ECHO)
        top_up(b, now, in_win);
}

static void on_close(dx_conn *c, unsigned code, const char *reason, size_t len, void *ud)
{
    (void)c;
    bconn *b = ud;
    worker *w = b->w;
    bool expected = b->state == S_CLOSING || w->closing;
    if (b->state == S_OPEN || b->state == S_CLOSING)
        dec(&w->ws->c.live);
    b->conn = NULL;
    if (!expected && !b->failed) {
        char why[200];
        snprintf(why, sizeof why, "closed by the server: code %u%s%.*s", code, len ? ", " : "",
                 (int)(len > 120 ? 120 : len), reason);
        conn_error(b, &w->ws->c.err_closed, why);
    } else if (code != DX_CLOSE_NORMAL && w->cfg->mode != BM_HANDSHAKES && !b->failed && w->closing) {
        /* our close 1000 answered with something else, or the connection lost */
        char why[64];
        snprintf(why, sizeof why, "close ended with code %u", code);
        conn_error(b, &w->ws->c.err_closed, why);
    }
    b->state = S_CLOSING; /* on_done follows */
}

static void on_error(dx_client *cl, int err, const char *what, void *ud)
{
    (void)cl;
    bconn *b = ud;
    worker *w = b->w;
    if (w->closing && w->cfg->mode != BM_HANDSHAKES)
        return; /* abandoned by us at the end; counted as never opened */
    _Atomic uint64_t *ctr = (err == DX_EHANDSHAKE || err == DX_EHTTP) ? &w->ws->c.handshake_failed
                                                                       : &w->ws->c.connect_failed;
    conn_error(b, ctr, what);
}

static void restart_slot(void *arg)
{
    bconn *b = arg;
    worker *w = b->w;
    if (!w->closing && !w->finished && w->hs_started < w->ws->n)
        start_conn(w, b);
    else
        b->state = S_DONE;
}

static void on_done(dx_client *cl, void *ud)
{
    (void)cl;
    bconn *b = ud;
    worker *w = b->w;
    if (b->state == S_CONNECTING)
        w->pending--;
    b->state = S_DONE;
    w->active--;
    if (w->cfg->mode == BM_HANDSHAKES && !w->closing && w->hs_started < w->ws->n) {
        /* next cycle on this slot, once the callback stack has unwound */
        if (dx_loop_post(w->loop, restart_slot, b) != 0)
            conn_error(b, &w->ws->c.connect_failed, "out of memory");
    }
}

static void start_conn(worker *w, bconn *b)
{
    const bench_cfg *cfg = w->cfg;
    if (!b->cl) {
        dx_client_options o = {0};
        o.url = cfg->mode == BM_SUBSCRIBE || cfg->idle_sub ? cfg->sub_url : cfg->url;
        o.insecure = cfg->insecure;
        o.ca_file = cfg->ca_file;
        o.deflate = cfg->deflate;
        o.bind_addr = b->bind[0] ? b->bind : NULL;
        o.connect_timeout_ms = (unsigned)(cfg->timeout * 1000);
        if (cfg->mode == BM_IDLE)
            o.ping_interval_ms = (unsigned)-1; /* held without traffic: no heartbeat from our side either */
        size_t frame = cfg->size + 14;
        o.max_message = cfg->size > (1u << 20) ? cfg->size : 0;
        if (cfg->mode == BM_SUBSCRIBE || cfg->idle_sub)
            o.max_message = 64u << 20;
        size_t want = 2 * (size_t)cfg->depth * frame;
        o.send_max = want > (1u << 20) ? want : 0;
        o.send_high_water = o.send_max ? o.send_max / 2 : 0;
        o.cb = (dx_client_callbacks){.on_open = on_open, .on_message = on_message, .on_close = on_close,
                                     .on_error = on_error, .on_done = on_done};
        o.ud = b;
        int err = 0;
        b->cl = dx_client_new(w->loop, &o, &err);
        if (!b->cl) {
            conn_error(b, &w->ws->c.connect_failed, dx_strerror(err));
            b->state = S_DONE;
            if (cfg->mode == BM_HANDSHAKES)
                w->hs_started++;
            return;
        }
    }
    b->t_start = bench_now_ns();
    b->state = S_CONNECTING;
    b->sent = b->recv = 0;
    memcpy(b->seq_out, SEQ_ZERO, SEQ_BYTES);
    memcpy(b->seq_in, SEQ_ZERO, SEQ_BYTES);
    b->inflight = 0;
    b->failed = false;
    int rc = dx_client_connect(b->cl);
    if (rc != 0) {
        conn_error(b, &w->ws->c.connect_failed, dx_strerror(rc));
        b->state = S_DONE;
        if (cfg->mode == BM_HANDSHAKES)
            w->hs_started++;
        return;
    }
    w->pending++;
    w->active++;
    inc(&w->ws->c.started);
    if (cfg->mode == BM_HANDSHAKES)
        w->hs_started++;
}

/* Connects while the rate, the pending bound and the target allow. */
static void start_more(worker *w, uint64_t now)
{
    const bench_cfg *cfg = w->cfg;
    double per_worker_rate = cfg->connect_rate / cfg->procs;
    double allowed = per_worker_rate * (double)(now - w->t0) * 1e-9 + 1;
    if (cfg->mode == BM_HANDSHAKES) {
        /* the first cycle of each slot; on_done starts the next ones */
        for (unsigned i = 0; i < w->nslots && w->hs_started < w->ws->n; i++)
            if (w->c[i].state == S_IDLE)
                start_conn(w, &w->c[i]);
        return;
    }
    while (w->next_start < w->nslots && w->pending < cfg->max_pending && (double)w->next_start < allowed)
        start_conn(w, &w->c[w->next_start++]);
}

/* BM_RATE: sends what is owed, round robin over open connections. */
static void rate_sends(worker *w, uint64_t now)
{
    uint64_t live = atomic_load_explicit(&w->ws->c.live, memory_order_relaxed);
    if (w->t_credit == 0 || live == 0) {
        w->t_credit = now;
        return;
    }
    w->credit += w->cfg->rate * (double)live * (double)(now - w->t_credit) * 1e-9;
    w->t_credit = now;
    unsigned scanned = 0;
    while (w->credit >= 1 && scanned < w->nslots) {
        bconn *b = &w->c[w->rr];
        w->rr = (w->rr + 1) % w->nslots;
        if (b->state != S_OPEN) {
            scanned++;
            continue;
        }
        scanned = 0;
        w->credit -= 1;
        if (b->inflight >= w->cfg->depth)
            w->ws->late++;
        else
            (void)send_one(b, now, window_open(w, now));
    }
    if (w->credit > (double)live * 4)
        w->credit = (double)live * 4; /* do not burst after a stall */
}

static uint64_t inflight_total(const worker *w)
{
    uint64_t n = 0;
    for (unsigned i = 0; i < w->nslots; i++)
        if (w->c[i].state == S_OPEN)
            n += w->c[i].inflight;
    return n;
}

static void close_all(worker *w)
{
    w->closing = true;
    for (unsigned i = 0; i < w->nslots; i++) {
        bconn *b = &w->c[i];
        if (b->state == S_OPEN) {
            b->state = S_CLOSING;
            (void)dx_client_close(b->cl, DX_CLOSE_NORMAL, NULL, 0);
        } else if (b->state == S_CONNECTING) {
            b->state = S_CLOSING;
            (void)dx_client_close(b->cl, DX_CLOSE_NORMAL, NULL, 0);
        }
    }
    if (w->pub_state == S_OPEN || w->pub_state == S_CONNECTING) {
        w->pub_state = S_CLOSING;
        (void)dx_client_close(w->pub_cl, DX_CLOSE_NORMAL, NULL, 0);
    }
}

/* Copies the hot counters where the coordinator reads them. */
static void publish(worker *w)
{
    atomic_store_explicit(&w->ws->c.sent, w->sent, memory_order_relaxed);
    atomic_store_explicit(&w->ws->c.received, w->received, memory_order_relaxed);
}

static void finish(worker *w, uint64_t now)
{
    if (w->finished)
        return;
    w->finished = true;
    if (w->measuring) {
        uint64_t tm = atomic_load(&w->sh->t_measure), te = atomic_load(&w->sh->t_end);
        uint64_t end = now < te ? now : te;
        w->ws->window_s = end > tm ? (double)(end - tm) * 1e-9 : 0;
    }
    w->ws->t_all_done = now;
    publish(w);
    dx_loop_stop(w->loop);
}

static void tick(void *arg)
{
    worker *w = arg;
    atomic_store_explicit(&w->tick_pending, 0, memory_order_release);
    const bench_cfg *cfg = w->cfg;
    uint64_t now = bench_now_ns();
    bench_wstate *ws = w->ws;
    if (w->finished)
        return;

    if (!w->stopping)
        start_more(w, now);
    if (!atomic_load(&ws->connected)) {
        uint64_t settled = atomic_load(&ws->c.opened) + atomic_load(&ws->c.connect_failed) +
                           atomic_load(&ws->c.handshake_failed);
        if (cfg->mode != BM_HANDSHAKES && w->next_start >= w->nslots && w->pending == 0 && settled >= w->nslots &&
            w->pub_state != S_CONNECTING)
            atomic_store(&ws->connected, 1);
    }

    if (cfg->mode == BM_HANDSHAKES) {
        if (w->hs_started >= ws->n && w->active == 0)
            finish(w, now);
        else if (atomic_load(&w->sh->abort_run) && !w->closing) {
            w->stopping = true;
            close_all(w);
            w->t_close = now;
        } else if (w->closing && now - w->t_close > CLOSE_GRACE_NS)
            finish(w, now);
        return;
    }

    uint64_t tm = atomic_load(&w->sh->t_measure), te = atomic_load(&w->sh->t_end);
    if (tm) {
        w->win_from = tm;
        w->win_to = te;
    }
    publish(w);
    if (!w->measuring && tm && now >= tm && (!te || now < te)) {
        w->measuring = true;
        w->cpu0 = cpu_seconds();
        w->t_win0 = now;
    }
    if (cfg->mode == BM_RATE && !w->stopping)
        rate_sends(w, now);
    if (w->pub_state == S_OPEN && tm && !w->stopping)
        pub_sends(w, now);

    bool aborting = atomic_load(&w->sh->abort_run) != 0;
    if (!w->stopping && ((te && now >= te) || aborting)) {
        w->stopping = true; /* no new messages from here */
        w->t_stop = now;
        if (w->measuring)
            ws->cpu_s = cpu_seconds() - w->cpu0;
    }
    if (w->stopping && !w->closing && cfg->mode == BM_SUBSCRIBE) {
        /* the publisher waits for its answers, then says how many it sent;
         * the subscribers wait for all of them */
        bool late = now - w->t_stop > DRAIN_GRACE_NS;
        if (w->pub_state != S_IDLE && !atomic_load(&w->sh->pub_done) &&
            (w->pub_answered >= w->pub_seq || w->pub_state != S_OPEN || late || aborting)) {
            if (w->pub_answered < w->pub_seq && w->pub_state == S_OPEN) {
                char why[100];
                snprintf(why, sizeof why, "publisher: %llu publishes never answered",
                         (unsigned long long)(w->pub_seq - w->pub_answered));
                run_error(w, &w->ws->c.err_publish, w->pub_seq - w->pub_answered, why);
            }
            atomic_store(&w->sh->pub_final, w->pub_seq);
            atomic_store(&w->sh->pub_done, 1);
        }
        if (subs_caught_up(w) || aborting || now - w->t_stop > DRAIN_GRACE_NS + 1000000000ull) {
            if (!aborting)
                subs_count_missing(w);
            close_all(w);
            w->t_close = now;
        }
    } else if (w->stopping && !w->closing) {
        /* let the echoes in flight arrive, so the counts match the server's */
        if (inflight_total(w) == 0 || now - w->t_stop > DRAIN_GRACE_NS || aborting) {
            close_all(w);
            w->t_close = now;
        }
    }
    bool pub_gone = w->pub_state == S_IDLE || w->pub_state == S_DONE;
    if (w->closing && ((w->active == 0 && pub_gone) || now - w->t_close > CLOSE_GRACE_NS))
        finish(w, now);
    if (!w->stopping && w->active == 0 && w->next_start >= w->nslots && atomic_load(&ws->connected)) {
        /* every connection is gone before the end */
        w->stopping = w->closing = true;
        if (w->measuring)
            ws->cpu_s = cpu_seconds() - w->cpu0;
        finish(w, now);
    }
}

static void *ticker_main(void *arg)
{
    worker *w = arg;
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    while (!atomic_load(&w->ticker_stop)) {
        next.tv_nsec += w->cfg->mode == BM_RATE || w->cfg->mode == BM_SUBSCRIBE ? TICK_RATE_NS : TICK_NS;
        if (next.tv_nsec >= 1000000000L) {
            next.tv_nsec -= 1000000000L;
            next.tv_sec++;
        }
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
        if (!atomic_exchange(&w->tick_pending, 1))
            if (dx_loop_post(w->loop, tick, w) != 0)
                atomic_store(&w->tick_pending, 0);
    }
    return NULL;
}

static int fast_random(void *ud, void *buf, size_t len)
{
    uint64_t *st = ud, x = *st;
    uint8_t *p = buf;
    while (len) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        size_t n = len < 8 ? len : 8;
        memcpy(p, &x, n);
        p += n, len -= n;
    }
    *st = x;
    return 0;
}

static void *xcalloc(size_t n, size_t size)
{
    return calloc(n ? n : 1, size ? size : 1);
}

static bool loopback_host(const char *h)
{
    return !strncmp(h, "127.", 4) || !strcmp(h, "localhost");
}

int bench_worker_run(const bench_cfg *cfg, bench_shared *sh, unsigned index)
{
    worker W = {0}, *w = &W;
    int status = 1;
    w->cfg = cfg;
    w->sh = sh;
    w->ws = &sh->w[index];
    w->opcode = cfg->text ? DX_OP_TEXT : DX_OP_BINARY;
    w->seq_len = cfg->size < SEQ_BYTES ? cfg->size : SEQ_BYTES;
    w->log = (dx_log){.level = cfg->log_level};
    /* Mask keys and Sec-WebSocket-Key from a xorshift generator seeded once
     * from getrandom(): RFC 6455 §5.3 wants unpredictable masks to protect
     * intermediaries from cache poisoning by hostile scripts; a load
     * generator runs no one's scripts, and a getrandom() refill per 256
     * keys was 4% of its CPU. */
    w->seams = *dx_seams_default();
    w->seams.random = fast_random;
    w->seams.ud = &w->rng;
    if (getrandom(&w->rng, sizeof w->rng, 0) != (ssize_t)sizeof w->rng || w->rng == 0)
        w->rng = 0x9E3779B97F4A7C15u ^ (uint64_t)getpid() ^ bench_now_ns();
    dx_loop_options lo = {.log = &w->log, .seams = &w->seams};
    int err = 0;
    w->loop = dx_loop_new(&lo, &err);
    if (!w->loop) {
        fprintf(stderr, "duplex bench: cannot create an event loop: %s\n", dx_strerror(err));
        goto out;
    }
    w->nslots = cfg->mode == BM_HANDSHAKES ? cfg->concurrency : w->ws->n;
    if (cfg->mode == BM_HANDSHAKES && w->nslots > w->ws->n)
        w->nslots = w->ws->n ? w->ws->n : 1;
    w->c = xcalloc(w->nslots, sizeof *w->c);
    w->msg = xcalloc(1, cfg->size);
    w->pattern = xcalloc(1, cfg->size);
    if (!w->c || !w->msg || !w->pattern)
        goto oom;
    uint64_t x = 0x9E3779B97F4A7C15u;
    for (size_t i = 0; i < cfg->size; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        /* printable ASCII: valid UTF-8; --subscribe: letters, nothing to escape in JSON */
        w->pattern[i] = cfg->mode == BM_SUBSCRIBE ? (uint8_t)('a' + x % 26) : (uint8_t)(' ' + x % 95);
    }
    memcpy(w->msg, w->pattern, cfg->size);
    bool sources = cfg->sources > 0 && loopback_host(cfg->host);
    for (unsigned i = 0; i < w->nslots; i++) {
        bconn *b = &w->c[i];
        b->w = w;
        b->index = w->ws->first + i;
        if (cfg->mode == BM_ECHO || cfg->mode == BM_RATE) {
            b->ts = xcalloc(cfg->depth, sizeof *b->ts);
            if (!b->ts)
                goto oom;
        }
        if (sources) {
            uint32_t a = cfg->source_base + b->index % cfg->sources;
            snprintf(b->bind, sizeof b->bind, "%u.%u.%u.%u", a >> 24, (a >> 16) & 255u, (a >> 8) & 255u, a & 255u);
        }
    }
    w->t0 = bench_now_ns();
    w->ws->t_first_start = w->t0;
    w->win_from = w->win_to = UINT64_MAX; /* closed until the coordinator opens it */
    if (cfg->mode == BM_SUBSCRIBE && index == 0 && (err = pub_start(w)) != 0) {
        fprintf(stderr, "duplex bench: cannot start the publisher: %s\n", dx_strerror(err));
        goto out;
    }
    if (pthread_create(&w->ticker, NULL, ticker_main, w) != 0) {
        fprintf(stderr, "duplex bench: cannot start the ticker thread\n");
        goto out;
    }
    int rc = dx_loop_run(w->loop);
    atomic_store(&w->ticker_stop, 1);
    pthread_join(w->ticker, NULL);
    if (rc != 0)
        fprintf(stderr, "duplex bench: event loop failed: %s\n", dx_strerror(rc));
    for (unsigned i = 0; i < w->nslots; i++)
        if (w->cfg->mode != BM_HANDSHAKES && !w->c[i].ever_opened && !w->c[i].failed)
            w->ws->never_opened++;
    status = rc == 0 ? 0 : 1;
    goto out;
oom:
    fprintf(stderr, "duplex bench: out of memory\n");
out:
    if (w->c) {
        for (unsigned i = 0; i < w->nslots; i++) {
            if (w->c[i].cl)
                dx_client_free(w->c[i].cl);
            free(w->c[i].ts);
        }
    }
    if (w->pub_cl)
        dx_client_free(w->pub_cl);
    free(w->pub_frame);
    free(w->c);
    free(w->msg);
    free(w->pattern);
    if (w->loop)
        dx_loop_free(w->loop);
    w->ws->exit_status = status;
    atomic_store(&w->ws->done, 1);
    return status;
}
