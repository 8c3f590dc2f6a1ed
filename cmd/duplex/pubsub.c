/*
 * cmd/duplex/pubsub.c: `duplex pub URL TOPIC [MSG...]` and `duplex sub URL
 * TOPIC...`, a person's shell access to the gateway (GATEWAY.md).
 *
 * Layer: the CLI. WebSocket through the library's public client
 * (duplex/client.h); JSON through jansson, as the gateway itself; `pub`
 * over http(s):// through httpc.h, one keep-alive connection for every
 * message.
 *
 * pub over ws:// runs on a dx_loop; stdin lines come from a reader thread
 * that posts each line to the loop and waits on a semaphore while PUB_WINDOW
 * publishes are unacknowledged, so a fast producer waits for the gateway
 * instead of growing memory. sub runs on a dx_loop too; Ctrl-C reaches it
 * through a self-pipe, --timeout is a dx_timer.
 *
 * Exit statuses: 0 everything accepted (pub) / --count reached, Ctrl-C or
 * --timeout without --count (sub); 1 a refusal, an `err`, a connection that
 * failed or was closed by the server; 2 bad usage.
 */
#define _GNU_SOURCE
#include "cli.h"
#include "duplex/client.h"
#include "duplex/loop.h"
#include "httpc.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <jansson.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

enum { PS_OK = 0, PS_FAIL = 1 };

#define PS_SUBPROTOCOL "duplex.v1"
#define PUB_WINDOW 64             /* ws: publishes in flight before stdin waits */
#define SUB_MAX_MESSAGE (64u << 20)

/* ---- URLs ----------------------------------------------------------------- */

enum { U_HTTP, U_HTTPS, U_WS, U_WSS };

typedef struct ps_url {
    int scheme;
    char host[256];  /* without brackets */
    char hostport[300]; /* as in the URL: [::1]:8080 */
    char port[8];
    char path[2048]; /* path and query, "/" at least */
} ps_url;

/* scheme://host[:port][/path][?query] (IPv6 as [::1]). 0 or -1. */
static int url_parse(const char *in, ps_url *u)
{
    static const struct {
        const char *pfx;
        int scheme;
        const char *port;
    } schemes[] = {{"http://", U_HTTP, "80"}, {"https://", U_HTTPS, "443"}, {"ws://", U_WS, "80"},
                   {"wss://", U_WSS, "443"}};
    memset(u, 0, sizeof *u);
    const char *p = NULL;
    for (size_t i = 0; i < sizeof schemes / sizeof schemes[0]; i++)
        if (!strncasecmp(in, schemes[i].pfx, strlen(schemes[i].pfx))) {
            p = in + strlen(schemes[i].pfx);
            u->scheme = schemes[i].scheme;
            snprintf(u->port, sizeof u->port, "%s", schemes[i].port);
        }
    if (!p)
        return -1;
    size_t hp = strcspn(p, "/?#");
    if (hp == 0 || hp >= sizeof u->hostport)
        return -1;
    memcpy(u->hostport, p, hp);
    u->hostport[hp] = 0;
    const char *h = u->hostport, *colon;
    if (*h == '[') {
        const char *end = strchr(h, ']');
        if (!end || (size_t)(end - h - 1) >= sizeof u->host)
            return -1;
        memcpy(u->host, h + 1, (size_t)(end - h - 1));
        colon = end[1] == ':' ? end + 1 : NULL;
        if (end[1] && !colon)
            return -1;
    } else {
        colon = strchr(h, ':');
        size_t n = colon ? (size_t)(colon - h) : strlen(h);
        if (n == 0 || n >= sizeof u->host)
            return -1;
        memcpy(u->host, h, n);
    }
    if (colon) {
        unsigned long v;
        if (cli_parse_uint(colon + 1, 1, 65535, &v))
            return -1;
        snprintf(u->port, sizeof u->port, "%lu", v);
    }
    const char *rest = p + hp;
    size_t rl = strcspn(rest, "#");
    if (rl + 2 > sizeof u->path)
        return -1;
    if (*rest != '/')
        u->path[0] = '/';
    memcpy(u->path + (*rest != '/'), rest, rl);
    return 0;
}

/* The WebSocket URL for the JSON dialect: http(s) becomes ws(s), an empty
 * path (or "/") becomes /ws. */
static void url_ws(const ps_url *u, char *out, size_t cap)
{
    bool tls = u->scheme == U_HTTPS || u->scheme == U_WSS;
    const char *path = u->path;
    if (!strcmp(path, "/") || path[0] == '?' || (path[0] == '/' && path[1] == '?'))
        snprintf(out, cap, "%s://%s/ws%s", tls ? "wss" : "ws", u->hostport, path[0] == '?' ? path : path + 1);
    else
        snprintf(out, cap, "%s://%s%s", tls ? "wss" : "ws", u->hostport, path);
}

/* Appends `s` percent-encoded (RFC 3986 unreserved kept) to out. */
static void pct_encode(char *out, size_t cap, const char *s)
{
    size_t n = strlen(out);
    for (; *s && n + 4 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || strchr("-._~", c))
            out[n++] = (char)c;
        else
            n += (size_t)snprintf(out + n, cap - n, "%%%02X", c);
    }
    out[n] = 0;
}

/* ---- Ctrl-C through a self-pipe ---------------------------------------------- */

static int g_sig_pipe[2] = {-1, -1};
static volatile sig_atomic_t g_sigints;

static void on_sigint(int sig)
{
    (void)sig;
    int saved = errno;
    if (g_sigints++ > 0)
        _exit(130); /* a second Ctrl-C: at once */
    if (g_sig_pipe[1] >= 0) {
        char c = 's';
        ssize_t r = write(g_sig_pipe[1], &c, 1);
        (void)r;
    }
    errno = saved;
}

static int sig_pipe_open(void)
{
    if (pipe2(g_sig_pipe, O_CLOEXEC | O_NONBLOCK) < 0)
        return -1;
    struct sigaction sa = {.sa_handler = on_sigint};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    return 0;
}

/* ---- pub: the settings ----------------------------------------------------------- */

enum { K_TEXT, K_JSON, K_BINARY };

typedef struct pub_opts {
    const char *url_arg, *topic, *api_key, *ca_file;
    char **msgs; /* argv's MSG..., or NULL: stdin lines */
    int n_msgs;
    int kind;
    int insecure;
    bool quiet;
    unsigned timeout_ms;
    int log_level;
    ps_url url;
} pub_opts;

typedef struct pub_stats {
    unsigned long long tried, accepted, failed;
} pub_stats;

/* One accepted publish, as `TOPIC OFFSET EPOCH` on stdout. */
static void pub_print(const pub_opts *o, const char *topic, json_int_t offset, const char *epoch)
{
    if (!o->quiet)
        printf("%s %" JSON_INTEGER_FORMAT " %s\n", topic, offset, epoch);
}

/* A stdin line without its end of line; false at EOF. *buf is getline's. */
static bool read_line(char **buf, size_t *cap, size_t *len)
{
    ssize_t n = getline(buf, cap, stdin);
    if (n < 0)
        return false;
    size_t l = (size_t)n;
    if (l && (*buf)[l - 1] == '\n')
        l--;
    if (l && (*buf)[l - 1] == '\r')
        l--;
    *len = l;
    return true;
}

/* ---- pub over HTTP ------------------------------------------------------------------ */

/* Publishes one message: POST BASE/api/publish?topic=T. Returns 0 accepted,
 * 1 refused (printed), -1 stop here (printed: no connection, or a status
 * that every next message would get too). A 429 is retried after its
 * Retry-After (1 s without one, at most 10 s), up to 5 times. */
static int http_publish(httpc *h, const pub_opts *o, const char *base, const void *data, size_t len, pub_stats *st)
{
    static const char *const ctype[] = {"text/plain; charset=utf-8", "application/json", "application/octet-stream"};
    char head[4096 + 1024];
    char target[3072];
    snprintf(target, sizeof target, "%s/api/publish?topic=", base);
    pct_encode(target, sizeof target, o->topic);
    char auth[1200] = "";
    if (o->api_key)
        snprintf(auth, sizeof auth, "Authorization: Bearer %s\r\n", o->api_key);
    int hn = snprintf(head, sizeof head,
                      "POST %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: duplex-pub/%s\r\n%sContent-Type: %s\r\n"
                      "Content-Length: %zu\r\n\r\n",
                      target, o->url.hostport, dx_version(), auth, ctype[o->kind], len);
    st->tried++;
    char why[512];
    httpc_answer a;
    for (int tries = 0;; tries++) {
        if (httpc_request(h, head, (size_t)hn, data, len, &a, why, sizeof why) < 0) {
            fprintf(stderr, "pub: %s: %s\n", o->url_arg, why);
            st->failed++;
            return -1;
        }
        if (a.status != 429 || tries == 5)
            break;
        unsigned wait_s = a.retry_after ? (a.retry_after < 10 ? a.retry_after : 10) : 1;
        fprintf(stderr, "pub: HTTP 429 (rate limited): retrying in %u s\n", wait_s);
        httpc_answer_free(&a);
        sleep(wait_s);
    }
    int result = 1;
    if (a.status == 200) {
        json_error_t je;
        json_t *j = json_loadb(a.body, a.body_len, 0, &je);
        json_t *jt = json_object_get(j, "topic"), *jo = json_object_get(j, "offset");
        json_t *jep = json_object_get(j, "epoch");
        if (json_is_integer(jo) && json_is_string(jep)) {
            pub_print(o, json_is_string(jt) ? json_string_value(jt) : o->topic, json_integer_value(jo),
                      json_string_value(jep));
            st->accepted++;
            result = 0;
        } else {
            fprintf(stderr, "pub: HTTP 200 without an offset and epoch: %.*s\n", (int)a.body_len, a.body);
            st->failed++;
        }
        json_decref(j);
    } else {
        size_t bl = a.body_len;
        while (bl && (a.body[bl - 1] == '\n' || a.body[bl - 1] == '\r'))
            bl--;
        fprintf(stderr, "pub: HTTP %d %s: %.*s\n", a.status, a.reason, (int)bl, a.body);
        st->failed++;
    }
    httpc_answer_free(&a);
    /* a wrong key, a forbidden topic, a wrong URL: the next would fail too */
    if (a.status == 401 || a.status == 403 || a.status == 404 || a.status == 405)
        return -1;
    return result;
}

static int pub_http(pub_opts *o)
{
    char base[2048];
    /* the URL's path is a prefix (a gateway behind a proxy at /duplex/): no query */
    size_t bl = strcspn(o->url.path, "?");
    while (bl && o->url.path[bl - 1] == '/')
        bl--;
    snprintf(base, sizeof base, "%.*s", (int)bl, o->url.path);
    httpc_target t = {.host = o->url.host, .port = o->url.port, .tls = o->url.scheme == U_HTTPS,
                      .insecure = o->insecure, .ca_file = o->ca_file, .timeout_ms = o->timeout_ms};
    httpc *h = httpc_new(&t);
    if (!h) {
        fprintf(stderr, "pub: out of memory\n");
        return PS_FAIL;
    }
    pub_stats st = {0};
    int rc = 0;
    if (o->msgs) {
        for (int i = 0; i < o->n_msgs && rc >= 0; i++)
            rc = http_publish(h, o, base, o->msgs[i], strlen(o->msgs[i]), &st);
    } else {
        char *line = NULL;
        size_t cap = 0, len;
        while (rc >= 0 && read_line(&line, &cap, &len)) {
            if (len)
                rc = http_publish(h, o, base, line, len, &st);
            fflush(stdout);
        }
        free(line);
    }
    fflush(stdout);
    httpc_free(h);
    return st.failed || rc < 0 ? PS_FAIL : PS_OK;
}

/* ---- pub over WebSocket (JSON dialect) ------------------------------------------- */

typedef struct pub_line {
    size_t len;
    char data[];
} pub_line;

typedef struct pub_ws {
    pub_opts *o;
    dx_loop *loop;
    dx_client *cl;
    dx_conn *conn;
    dx_log log;
    pub_stats st;
    unsigned long long next_id, answered;
    bool input_done;  /* every message was handed to send_msg */
    bool closing, closed_by_us, failed_conn;
    pthread_t reader;
    bool reader_started;
    _Atomic int reader_done;
    sem_t window;
} pub_ws;

static pub_ws g_pub; /* static: the reader thread may outlive the loop on an early exit */

static void pub_finish(pub_ws *p)
{
    if (!p->closing) {
        p->closing = true;
        p->closed_by_us = true;
        if (dx_client_close(p->cl, DX_CLOSE_NORMAL, NULL, 0) != 0)
            dx_loop_stop(p->loop);
    }
}

static void pub_maybe_done(pub_ws *p)
{
    if (p->input_done && p->answered == p->st.tried)
        pub_finish(p);
}

/* Sends one message as {"op":"pub","id":N,"topic":T,...}. A message that
 * cannot be put in the frame (not JSON, not UTF-8) fails here. */
static void pub_send(pub_ws *p, const char *data, size_t len)
{
    const pub_opts *o = p->o;
    p->st.tried++;
    unsigned long long id = ++p->next_id;
    json_t *v = NULL;
    const char *field = "data";
    json_error_t je;
    if (o->kind == K_JSON) {
        v = json_loadb(data, len, JSON_DECODE_ANY, &je);
        if (!v)
            fprintf(stderr, "pub: message %llu is not JSON: %s\n", id, je.text);
    } else if (o->kind == K_TEXT) {
        v = json_stringn(data, len);
        if (!v)
            fprintf(stderr, "pub: message %llu is not UTF-8 text (use --kind binary)\n", id);
    } else {
        char *b = malloc(4 * (len / 3 + 1) + 1);
        if (b) {
            cli_base64((const uint8_t *)data, len, b);
            v = json_string(b);
            free(b);
        }
        field = "b64";
    }
    json_t *req = v ? json_pack("{s:s,s:I,s:s,s:o}", "op", "pub", "id", (json_int_t)id, "topic", o->topic, field, v)
                    : NULL;
    char *text = req ? json_dumps(req, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    json_decref(req);
    int rc = text ? dx_client_send(p->cl, DX_OP_TEXT, text, strlen(text)) : DX_EINVAL;
    free(text);
    if (rc != 0) {
        if (v)
            fprintf(stderr, "pub: cannot send message %llu: %s\n", id, dx_strerror(rc));
        p->st.failed++;
        p->answered++;
        if (p->reader_started)
            sem_post(&p->window);
    }
}

static void pub_post_line(void *arg)
{
    pub_line *l = arg;
    if (!g_pub.closing)
        pub_send(&g_pub, l->data, l->len);
    free(l);
}

static void pub_post_eof(void *arg)
{
    (void)arg;
    g_pub.input_done = true;
    pub_maybe_done(&g_pub);
}

static void *pub_reader(void *arg)
{
    pub_ws *p = arg;
    char *line = NULL;
    size_t cap = 0, len;
    while (read_line(&line, &cap, &len)) {
        if (!len)
            continue;
        sem_wait(&p->window);
        pub_line *l = malloc(sizeof *l + len + 1);
        if (!l)
            break;
        l->len = len;
        memcpy(l->data, line, len);
        l->data[len] = 0;
        while (dx_loop_post_ex(p->loop, pub_post_line, free, l) == DX_ELIMIT)
            nanosleep(&(struct timespec){0, 1000000}, NULL);
    }
    free(line);
    while (dx_loop_post(p->loop, pub_post_eof, NULL) == DX_ELIMIT)
        nanosleep(&(struct timespec){0, 1000000}, NULL);
    atomic_store(&p->reader_done, 1);
    return NULL;
}

static void pub_on_open(dx_conn *c, void *ud)
{
    pub_ws *p = ud;
    p->conn = c;
    const char *proto = dx_conn_protocol(c);
    if (!proto || strcmp(proto, PS_SUBPROTOCOL)) {
        fprintf(stderr, "pub: the server did not accept the %s subprotocol (is %s a duplex gateway's /ws?)\n",
                PS_SUBPROTOCOL, p->o->url_arg);
        p->failed_conn = true;
        pub_finish(p);
        return;
    }
    if (p->o->msgs) {
        for (int i = 0; i < p->o->n_msgs; i++)
            pub_send(p, p->o->msgs[i], strlen(p->o->msgs[i]));
        p->input_done = true;
        pub_maybe_done(p);
        return;
    }
    if (pthread_create(&p->reader, NULL, pub_reader, p) != 0) {
        fprintf(stderr, "pub: cannot start a thread\n");
        p->failed_conn = true;
        pub_finish(p);
        return;
    }
    p->reader_started = true;
}

static void pub_on_message(dx_conn *c, int opcode, const uint8_t *data, size_t len, void *ud)
{
    (void)c;
    pub_ws *p = ud;
    json_error_t je;
    json_t *j = opcode == DX_OP_TEXT ? json_loadb((const char *)data, len, 0, &je) : NULL;
    const char *op = json_string_value(json_object_get(j, "op"));
    json_t *jid = json_object_get(j, "id");
    if (!op) {
        fprintf(stderr, "pub: unexpected %s message from the server: %.*s\n", opcode == DX_OP_TEXT ? "text" : "binary",
                (int)(len > 200 ? 200 : len), opcode == DX_OP_TEXT ? (const char *)data : "");
    } else if (!strcmp(op, "ack") && json_is_integer(jid)) {
        json_t *jo = json_object_get(j, "offset"), *je2 = json_object_get(j, "epoch");
        p->answered++;
        if (json_is_integer(jo) && json_is_string(je2)) {
            pub_print(p->o, p->o->topic, json_integer_value(jo), json_string_value(je2));
            p->st.accepted++;
        } else {
            fprintf(stderr, "pub: ack %" JSON_INTEGER_FORMAT " without an offset and epoch\n",
                    json_integer_value(jid));
            p->st.failed++;
        }
        if (p->reader_started)
            sem_post(&p->window);
    } else if (!strcmp(op, "err")) {
        json_t *code = json_object_get(j, "code");
        const char *reason = json_string_value(json_object_get(j, "reason"));
        if (json_is_integer(jid))
            fprintf(stderr, "pub: message %" JSON_INTEGER_FORMAT " refused: err %" JSON_INTEGER_FORMAT " %s\n",
                    json_integer_value(jid), json_integer_value(code), reason ? reason : "");
        else
            fprintf(stderr, "pub: err %" JSON_INTEGER_FORMAT " %s\n", json_integer_value(code), reason ? reason : "");
        if (json_is_integer(jid)) {
            p->answered++;
            p->st.failed++;
            if (p->reader_started)
                sem_post(&p->window);
        }
    }
    /* anything else (a msg of a user: topic, say) is not ours to print */
    json_decref(j);
    fflush(stdout);
    pub_maybe_done(p);
}

static void pub_on_close(dx_conn *c, unsigned code, const char *reason, size_t len, void *ud)
{
    (void)c;
    pub_ws *p = ud;
    p->conn = NULL;
    if (!p->closed_by_us) {
        fprintf(stderr, "pub: connection closed by the server: code %u (%s)%s%.*s\n", code,
                dx_close_code_name(code), len ? ": " : "", (int)len, reason);
        p->failed_conn = true;
        p->closing = true;
    }
}

static void pub_on_error(dx_client *cl, int err, const char *what, void *ud)
{
    (void)cl;
    (void)err;
    pub_ws *p = ud;
    fprintf(stderr, "pub: cannot connect to %s: %s\n", p->o->url_arg, what);
    p->failed_conn = true;
}

static void pub_on_done(dx_client *cl, void *ud)
{
    (void)cl;
    pub_ws *p = ud;
    dx_loop_stop(p->loop);
}

static int pub_ws_run(pub_opts *o)
{
    pub_ws *p = &g_pub;
    memset(p, 0, sizeof *p);
    p->o = o;
    p->log = (dx_log){.level = o->log_level, .sink = cli_log_sink};
    char url[4096];
    url_ws(&o->url, url, sizeof url);
    if (sem_init(&p->window, 0, PUB_WINDOW) != 0)
        return PS_FAIL;
    int err = 0;
    dx_loop_options lo = {.log = &p->log};
    p->loop = dx_loop_new(&lo, &err);
    if (!p->loop) {
        fprintf(stderr, "pub: cannot create an event loop: %s\n", dx_strerror(err));
        return PS_FAIL;
    }
    static const char *const protos[] = {PS_SUBPROTOCOL};
    dx_client_options co = {0};
    co.url = url;
    co.protocols = protos;
    co.n_protocols = 1;
    co.insecure = o->insecure;
    co.ca_file = o->ca_file;
    co.connect_timeout_ms = o->timeout_ms;
    co.send_max = 64u << 20; /* MSG arguments all go at once */
    co.cb = (dx_client_callbacks){.on_open = pub_on_open, .on_message = pub_on_message, .on_close = pub_on_close,
                                  .on_error = pub_on_error, .on_done = pub_on_done};
    co.ud = p;
    p->cl = dx_client_new(p->loop, &co, &err);
    if (!p->cl) {
        fprintf(stderr, "pub: %s: %s\n", url, dx_strerror(err));
        dx_loop_free(p->loop);
        return err == DX_EINVAL ? CLI_USAGE : PS_FAIL;
    }
    dx_client_connect(p->cl);
    dx_loop_run(p->loop);
    fflush(stdout);
    int status = p->failed_conn || p->st.failed || p->answered != p->st.tried || !p->input_done ? PS_FAIL : PS_OK;
    if (p->answered != p->st.tried && !p->failed_conn)
        fprintf(stderr, "pub: %llu of %llu messages not answered\n", p->st.tried - p->answered, p->st.tried);
    /* The reader may still block on stdin (the server closed early): then
     * the loop stays allocated (reachable through g_pub) and exit ends it. */
    if (!p->reader_started || atomic_load(&p->reader_done)) {
        if (p->reader_started)
            pthread_join(p->reader, NULL);
        dx_client_free(p->cl);
        dx_loop_free(p->loop);
        p->cl = NULL;
        p->loop = NULL;
    }
    return status;
}

/* ---- sub ----------------------------------------------------------------------------- */

typedef struct sub_since {
    const char *spec;   /* as given */
    int topic;          /* index into topics, -1 until matched */
    json_int_t offset;
    const char *epoch;  /* points into spec */
} sub_since;

typedef struct sub_app {
    const char *url_arg, *ca_file;
    char **topics;
    int n_topics;
    sub_since *since;
    int n_since;
    bool json, quiet;
    int insecure, log_level;
    unsigned long count;     /* 0: no limit */
    unsigned timeout_ms;     /* 0: none */
    size_t max_message;
    ps_url url;

    dx_loop *loop;
    dx_client *cl;
    dx_log log;
    dx_timer *timer;
    dx_watch *sig_watch;
    unsigned long got;
    int acked;
    bool closing, ever_open;
    int status;
} sub_app;

static void sub_close(sub_app *s, int status)
{
    if (status > s->status)
        s->status = status;
    if (s->closing)
        return;
    s->closing = true;
    if (dx_client_close(s->cl, DX_CLOSE_NORMAL, NULL, 0) != 0)
        dx_loop_stop(s->loop);
}

static void sub_on_signal(dx_watch *w, int fd, unsigned events, void *ud)
{
    (void)w;
    (void)events;
    char buf[16];
    while (read(fd, buf, sizeof buf) > 0) {
    }
    sub_close(ud, PS_OK);
}

static void sub_on_timer(dx_timer *t, void *ud)
{
    (void)t;
    sub_app *s = ud;
    if (s->count) {
        fprintf(stderr, "sub: timed out after %u ms with %lu of %lu messages\n", s->timeout_ms, s->got, s->count);
        sub_close(s, PS_FAIL);
    } else {
        sub_close(s, PS_OK);
    }
}

static void sub_on_open(dx_conn *c, void *ud)
{
    sub_app *s = ud;
    s->ever_open = true;
    const char *proto = dx_conn_protocol(c);
    if (!proto || strcmp(proto, PS_SUBPROTOCOL)) {
        fprintf(stderr, "sub: the server did not accept the %s subprotocol (is %s a duplex gateway's /ws?)\n",
                PS_SUBPROTOCOL, s->url_arg);
        sub_close(s, PS_FAIL);
        return;
    }
    for (int i = 0; i < s->n_topics; i++) {
        json_t *req = json_pack("{s:s,s:I,s:s}", "op", "sub", "id", (json_int_t)(i + 1), "topic", s->topics[i]);
        for (int k = 0; req && k < s->n_since; k++)
            if (s->since[k].topic == i)
                json_object_set_new(req, "since",
                                    json_pack("{s:I,s:s}", "offset", s->since[k].offset, "epoch", s->since[k].epoch));
        char *text = req ? json_dumps(req, JSON_COMPACT) : NULL;
        json_decref(req);
        int rc = text ? dx_conn_send(c, DX_OP_TEXT, text, strlen(text)) : DX_ENOMEM;
        free(text);
        if (rc) {
            fprintf(stderr, "sub: cannot send the subscription to %s: %s\n", s->topics[i], dx_strerror(rc));
            sub_close(s, PS_FAIL);
            return;
        }
    }
}

/* One msg as `TOPIC OFFSET DATA`: text as is, json compact, binary "b64:..." */
static void sub_print_msg(json_t *j)
{
    const char *topic = json_string_value(json_object_get(j, "topic"));
    json_t *off = json_object_get(j, "offset"), *data = json_object_get(j, "data");
    const char *b64 = json_string_value(json_object_get(j, "b64"));
    const char *kind = json_string_value(json_object_get(j, "kind"));
    printf("%s %" JSON_INTEGER_FORMAT " ", topic ? topic : "?", json_integer_value(off));
    if (b64) {
        printf("b64:%s", b64);
    } else if (json_is_string(data) && !(kind && !strcmp(kind, "json"))) {
        fwrite(json_string_value(data), 1, json_string_length(data), stdout);
    } else if (data) {
        char *t = json_dumps(data, JSON_COMPACT | JSON_ENCODE_ANY);
        if (t)
            fputs(t, stdout);
        free(t);
    }
    putchar('\n');
}

static void sub_on_message(dx_conn *c, int opcode, const uint8_t *data, size_t len, void *ud)
{
    (void)c;
    sub_app *s = ud;
    if (s->closing)
        return;
    json_error_t je;
    json_t *j = opcode == DX_OP_TEXT ? json_loadb((const char *)data, len, 0, &je) : NULL;
    const char *op = json_string_value(json_object_get(j, "op"));
    json_t *jid = json_object_get(j, "id");
    json_int_t id = json_is_integer(jid) ? json_integer_value(jid) : 0;
    const char *topic = id >= 1 && id <= s->n_topics ? s->topics[id - 1] : NULL;
    if (!op) {
        fprintf(stderr, "sub: unexpected %s message from the server (%zu bytes)\n",
                opcode == DX_OP_TEXT ? "text" : "binary", len);
    } else if (!strcmp(op, "msg")) {
        if (s->json) {
            fwrite(data, 1, len, stdout);
            putchar('\n');
        } else {
            sub_print_msg(j);
        }
        fflush(stdout);
        if (s->count && ++s->got >= s->count)
            sub_close(s, PS_OK);
    } else if (!strcmp(op, "ack") && topic) {
        s->acked++;
        if (!s->quiet) {
            json_t *rec = json_object_get(j, "recovered");
            const char *epoch = json_string_value(json_object_get(j, "epoch"));
            fprintf(stderr, "sub: subscribed to %s (offset %" JSON_INTEGER_FORMAT ", epoch \"%s\"%s)\n", topic,
                    json_integer_value(json_object_get(j, "offset")), epoch ? epoch : "",
                    json_is_true(rec) ? ", recovered" : "");
            for (int k = 0; k < s->n_since; k++)
                if (s->since[k].topic == id - 1 && !json_is_true(rec))
                    fprintf(stderr, "sub: %s: cannot resume after offset %" JSON_INTEGER_FORMAT
                                    " of epoch \"%s\": live messages only\n",
                            topic, s->since[k].offset, s->since[k].epoch);
        }
    } else if (!strcmp(op, "gap")) {
        const char *gt = json_string_value(json_object_get(j, "topic"));
        fprintf(stderr, "sub: gap on %s: offsets %" JSON_INTEGER_FORMAT " to %" JSON_INTEGER_FORMAT
                        " will not arrive\n",
                gt ? gt : "?", json_integer_value(json_object_get(j, "from")),
                json_integer_value(json_object_get(j, "to")));
    } else if (!strcmp(op, "err")) {
        const char *reason = json_string_value(json_object_get(j, "reason"));
        json_int_t code = json_integer_value(json_object_get(j, "code"));
        if (topic) {
            fprintf(stderr, "sub: cannot subscribe to %s: err %" JSON_INTEGER_FORMAT " %s\n", topic, code,
                    reason ? reason : "");
            sub_close(s, PS_FAIL);
        } else {
            fprintf(stderr, "sub: err %" JSON_INTEGER_FORMAT " %s\n", code, reason ? reason : "");
        }
    }
    json_decref(j);
}

static void sub_on_close(dx_conn *c, unsigned code, const char *reason, size_t len, void *ud)
{
    (void)c;
    sub_app *s = ud;
    if (!s->closing) {
        fprintf(stderr, "sub: connection closed by the server: code %u (%s)%s%.*s\n", code, dx_close_code_name(code),
                len ? ": " : "", (int)len, reason);
        s->closing = true;
        s->status = PS_FAIL;
    }
}

static void sub_on_error(dx_client *cl, int err, const char *what, void *ud)
{
    (void)cl;
    (void)err;
    sub_app *s = ud;
    fprintf(stderr, "sub: cannot connect to %s: %s\n", s->url_arg, what);
    s->status = PS_FAIL;
}

static void sub_on_done(dx_client *cl, void *ud)
{
    (void)cl;
    sub_app *s = ud;
    dx_loop_stop(s->loop);
}

static int sub_run(sub_app *s)
{
    char url[4096];
    url_ws(&s->url, url, sizeof url);
    s->log = (dx_log){.level = s->log_level, .sink = cli_log_sink};
    int err = 0, status = PS_FAIL;
    dx_loop_options lo = {.log = &s->log};
    s->loop = dx_loop_new(&lo, &err);
    if (!s->loop) {
        fprintf(stderr, "sub: cannot create an event loop: %s\n", dx_strerror(err));
        return PS_FAIL;
    }
    static const char *const protos[] = {PS_SUBPROTOCOL};
    dx_client_options co = {0};
    co.url = url;
    co.protocols = protos;
    co.n_protocols = 1;
    co.insecure = s->insecure;
    co.ca_file = s->ca_file;
    co.max_message = s->max_message;
    co.cb = (dx_client_callbacks){.on_open = sub_on_open, .on_message = sub_on_message, .on_close = sub_on_close,
                                  .on_error = sub_on_error, .on_done = sub_on_done};
    co.ud = s;
    s->cl = dx_client_new(s->loop, &co, &err);
    if (!s->cl) {
        fprintf(stderr, "sub: %s: %s\n", url, dx_strerror(err));
        status = err == DX_EINVAL ? CLI_USAGE : PS_FAIL;
        goto out;
    }
    if (sig_pipe_open() == 0)
        s->sig_watch = dx_watch_new(s->loop, g_sig_pipe[0], DX_WATCH_READ, sub_on_signal, s, NULL);
    if (s->timeout_ms) {
        s->timer = dx_timer_new(s->loop, sub_on_timer, s);
        if (s->timer)
            dx_timer_start(s->timer, s->timeout_ms, 0);
    }
    dx_client_connect(s->cl);
    dx_loop_run(s->loop);
    fflush(stdout);
    status = s->status;
out:
    if (s->cl)
        dx_client_free(s->cl);
    dx_timer_free(s->timer);
    dx_watch_free(s->sig_watch);
    dx_loop_free(s->loop);
    return status;
}

/* ---- the command lines ------------------------------------------------------------ */

static void pub_usage(FILE *f)
{
    fprintf(f,
            "usage: duplex pub [options] URL TOPIC [MSG...]\n"
            "\n"
            "Publishes each MSG (without MSG: each line of stdin; empty lines are skipped)\n"
            "on TOPIC of a duplex gateway, and prints `TOPIC OFFSET EPOCH` per accepted message.\n"
            "  http://HOST:PORT[/PREFIX]  POST PREFIX/api/publish?topic=TOPIC, one keep-alive\n"
            "                             connection, Authorization: Bearer KEY (https: TLS)\n"
            "  ws://HOST:PORT[/PATH]      the JSON dialect (subprotocol duplex.v1) on PATH [/ws]:\n"
            "                             {\"op\":\"pub\",...} per message, waiting for each ack (wss: TLS)\n"
            "\n"
            "options:\n"
            "      --api-key KEY      HTTP: the gateway's API key [env DUPLEX_API_KEY]\n"
            "      --kind K           json | text | binary [text]: HTTP Content-Type\n"
            "                         application/json, text/plain; charset=utf-8,\n"
            "                         application/octet-stream; JSON dialect: data as a JSON\n"
            "                         value (a JSON string is then published as text), data as\n"
            "                         a string, b64\n"
            "  -q, --quiet            print nothing for accepted messages\n"
            "      --timeout T        connect and answer timeout [10s]\n"
            "  -k, --insecure         https/wss: do not verify the certificate (tests only)\n"
            "      --ca FILE          https/wss: trust these PEM CAs\n"
            "      --log-level L      library log: error|warn|info|debug [warn]\n"
            "  -h, --help             this text\n"
            "\n"
            "Options may follow the operands; `--` ends them (a message beginning with '-').\n"
            "Errors (HTTP status and body, err frames) go to stderr. 401, 403, 404 and 405\n"
            "stop at once (the next messages would fail too); a 429 is sent again after\n"
            "its Retry-After; other refusals go on.\n"
            "Exit 0 when every message was accepted, 1 otherwise, 2 on bad usage.\n");
}

static void sub_usage(FILE *f)
{
    fprintf(f,
            "usage: duplex sub [options] URL TOPIC...\n"
            "\n"
            "Subscribes to each TOPIC (patterns: `*` one segment, `>` the rest) through the\n"
            "JSON dialect (subprotocol duplex.v1) of a duplex gateway at URL (ws://, wss://;\n"
            "http(s):// means the same; path [/ws]) and prints each message as one line:\n"
            "  TOPIC OFFSET DATA      text as is, json as compact JSON, binary as b64:BASE64\n"
            "Notices (subscribed, resumed or not, gaps, errors) go to stderr.\n"
            "\n"
            "options:\n"
            "      --json             print each msg object as the server sent it, one per line\n"
            "      --since TOPIC:OFFSET:EPOCH\n"
            "                         resume TOPIC after OFFSET of EPOCH (repeatable, one per\n"
            "                         TOPIC): every message after OFFSET arrives, then live ones\n"
            "  -n, --count N          exit 0 after N messages\n"
            "      --timeout T        stop after T: exit 1 if --count is not reached, else 0\n"
            "  -q, --quiet            no notices on stderr for subscriptions\n"
            "      --max-message BYTES  largest message accepted [64MiB]\n"
            "  -k, --insecure         wss: do not verify the certificate (tests only)\n"
            "      --ca FILE          wss: trust these PEM CAs\n"
            "      --log-level L      library log: error|warn|info|debug [warn]\n"
            "  -h, --help             this text\n"
            "\n"
            "Exit 0 on --count reached, Ctrl-C (or SIGTERM) or --timeout without --count;\n"
            "1 when the connection fails or the server closes it (code and reason printed)\n"
            "or refuses a subscription; 2 on bad usage.\n");
}

enum { O_API_KEY = 256, O_KIND, O_TIMEOUT, O_JSON, O_SINCE };

static int parse_url_arg(const char *cmd, const char *arg, ps_url *u)
{
    if (url_parse(arg, u) < 0) {
        fprintf(stderr, "%s: bad URL '%s' (want http://HOST:PORT, https://, ws:// or wss://)\n", cmd, arg);
        return CLI_USAGE;
    }
    return 0;
}

int cmd_pub(int argc, char **argv)
{
    static const struct option own[] = {
        {"api-key", required_argument, 0, O_API_KEY}, {"kind", required_argument, 0, O_KIND},
        {"quiet", no_argument, 0, 'q'},               {"timeout", required_argument, 0, O_TIMEOUT},
        {"help", no_argument, 0, 'h'},                {0, 0, 0, 0},
    };
    pub_opts o = {.kind = K_TEXT, .timeout_ms = 10000, .log_level = DX_LOG_WARN, .api_key = getenv("DUPLEX_API_KEY")};
    const cli_common common = {.prefix = "pub", .cmd = "pub", .insecure = &o.insecure, .ca_file = &o.ca_file,
                               .log_level = &o.log_level};
    const char *name;
    int ch;
    optind = 1;
    while ((ch = cli_getopt(&common, argc, argv, "qkh", own, &name)) != -1) {
        switch (ch) {
        case CLI_BAD:
            return CLI_USAGE;
        case 'h':
            pub_usage(stdout);
            return 0;
        case 'q':
            o.quiet = true;
            break;
        case O_API_KEY:
            o.api_key = optarg;
            break;
        case O_KIND:
            if (!strcmp(optarg, "text"))
                o.kind = K_TEXT;
            else if (!strcmp(optarg, "json"))
                o.kind = K_JSON;
            else if (!strcmp(optarg, "binary"))
                o.kind = K_BINARY;
            else
                return cli_bad_value(&common, name, optarg);
            break;
        case O_TIMEOUT:
            if (cli_parse_ms(optarg, &o.timeout_ms) || !o.timeout_ms)
                return cli_bad_value(&common, name, optarg);
            break;
        default:
            pub_usage(stderr);
            return CLI_USAGE;
        }
    }
    if (argc - optind < 2) {
        fprintf(stderr, "pub: want URL and TOPIC (see duplex pub --help)\n");
        return CLI_USAGE;
    }
    o.url_arg = argv[optind];
    o.topic = argv[optind + 1];
    if (o.api_key && (!*o.api_key || strpbrk(o.api_key, "\r\n"))) {
        fprintf(stderr, "pub: the API key is empty or has a line break\n");
        return CLI_USAGE;
    }
    int rc = parse_url_arg("pub", o.url_arg, &o.url);
    if (rc)
        return rc;
    if (argc - optind > 2) {
        o.msgs = argv + optind + 2;
        o.n_msgs = argc - optind - 2;
    }
    signal(SIGPIPE, SIG_IGN);
    if (o.url.scheme == U_HTTP || o.url.scheme == U_HTTPS)
        return pub_http(&o);
    return pub_ws_run(&o);
}

/* --since TOPIC:OFFSET[:EPOCH]: TOPIC may hold ':' (user:bob), so the spec
 * is matched against the subscribed topics, the longest first. */
static int since_match(sub_app *s, sub_since *sc)
{
    size_t best = 0;
    for (int i = 0; i < s->n_topics; i++) {
        size_t tl = strlen(s->topics[i]);
        if (tl <= best || strncmp(sc->spec, s->topics[i], tl) || sc->spec[tl] != ':')
            continue;
        const char *p = sc->spec + tl + 1;
        char *end;
        errno = 0;
        unsigned long long off = strtoull(p, &end, 10);
        if (end == p || errno || off >= (1ull << 53) || (*end && *end != ':'))
            continue;
        best = tl;
        sc->topic = i;
        sc->offset = (json_int_t)off;
        sc->epoch = *end ? end + 1 : "";
    }
    return best ? 0 : -1;
}

int cmd_sub(int argc, char **argv)
{
    static const struct option own[] = {
        {"json", no_argument, 0, O_JSON},  {"since", required_argument, 0, O_SINCE},
        {"count", required_argument, 0, 'n'}, {"timeout", required_argument, 0, O_TIMEOUT},
        {"quiet", no_argument, 0, 'q'},    {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    static sub_app S;
    sub_app *s = &S;
    *s = (sub_app){.log_level = DX_LOG_WARN, .max_message = SUB_MAX_MESSAGE};
    s->since = calloc((size_t)argc, sizeof *s->since);
    if (!s->since)
        return PS_FAIL;
    const cli_common common = {.prefix = "sub", .cmd = "sub", .insecure = &s->insecure, .ca_file = &s->ca_file,
                               .log_level = &s->log_level, .max_message = &s->max_message};
    const char *name;
    int ch, status = CLI_USAGE;
    unsigned long v;
    optind = 1;
    while ((ch = cli_getopt(&common, argc, argv, "n:qkh", own, &name)) != -1) {
        switch (ch) {
        case CLI_BAD:
            goto out;
        case 'h':
            sub_usage(stdout);
            status = 0;
            goto out;
        case 'q':
            s->quiet = true;
            break;
        case O_JSON:
            s->json = true;
            break;
        case O_SINCE:
            s->since[s->n_since++] = (sub_since){.spec = optarg, .topic = -1};
            break;
        case 'n':
            if (cli_parse_uint(optarg, 1, ULONG_MAX, &v)) {
                status = cli_bad_value(&common, name, optarg);
                goto out;
            }
            s->count = v;
            break;
        case O_TIMEOUT:
            if (cli_parse_ms(optarg, &s->timeout_ms) || !s->timeout_ms) {
                status = cli_bad_value(&common, name, optarg);
                goto out;
            }
            break;
        default:
            sub_usage(stderr);
            goto out;
        }
    }
    if (argc - optind < 2) {
        fprintf(stderr, "sub: want URL and at least one TOPIC (see duplex sub --help)\n");
        goto out;
    }
    s->url_arg = argv[optind];
    if ((status = parse_url_arg("sub", s->url_arg, &s->url)) != 0)
        goto out;
    status = CLI_USAGE;
    s->topics = argv + optind + 1;
    s->n_topics = argc - optind - 1;
    for (int k = 0; k < s->n_since; k++) {
        if (since_match(s, &s->since[k]) < 0) {
            fprintf(stderr, "sub: --since '%s' is not TOPIC:OFFSET:EPOCH for a TOPIC subscribed to\n",
                    s->since[k].spec);
            goto out;
        }
        for (int m = 0; m < k; m++)
            if (s->since[m].topic == s->since[k].topic) {
                fprintf(stderr, "sub: two --since for %s\n", s->topics[s->since[k].topic]);
                goto out;
            }
    }
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);
    status = sub_run(s);
out:
    free(s->since);
    s->since = NULL;
    return status;
}
