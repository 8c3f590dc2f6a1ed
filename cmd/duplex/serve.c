/*
 * cmd/duplex/serve.c: `duplex serve`: one loop and one server per worker
 * thread, all wired to one gateway (include/duplex/gateway.h: /ws, /sse,
 * /api/..., /metrics, /healthz, /echo), plus static files. This file only
 * turns options into settings; the gateway is in src/gateway.
 *
 * Port sharing: the workers of one process share the port with SO_REUSEPORT
 * (each has its own listening socket). Before they bind, a probe socket
 * without SO_REUSEPORT binds the same address: if another process listens
 * there (reuseport or not), the probe fails with EADDRINUSE and serve exits 1
 * with one message, instead of silently splitting traffic with it. (Two
 * servers started within the same instant could both pass the probe.)
 *
 * Logging: every line, the library's and serve's own, goes through
 * cli_log_sink in one format with timestamps (--log-format text|json).
 *
 * Signals: SIGINT/SIGTERM are blocked in every thread and taken by the main
 * thread with sigwait: the workers stop accepting, send close 1012 to
 * gateway connections (SSE streams end) and 1001 to /echo ones, and stop once their connections are gone or the close timeout
 * (plus a second) has passed; the process exits 0. A second signal during
 * that wait exits at once with status 1.
 */
#define _GNU_SOURCE
#include "cli.h"
#include "duplex/gateway.h"
#include "duplex/server.h"

#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define MAX_CERTS 16

typedef struct worker {
    int index;
    dx_loop *loop;
    dx_server *srv;
    pthread_t thread;
    atomic_bool done;
    int rc;
} worker;

typedef struct app {
    dx_server_options opt;
    dx_gateway_options gopt;
    dx_gateway *gw;
    dx_tls_cert certs[MAX_CERTS];
    size_t ncerts;
    dx_log log;
    int log_format;
    unsigned workers;
    atomic_bool stopping;
} app;

static app g_app; /* the process's configuration, set once before threads start */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: duplex serve [options]\n"
            "\n"
            "Serves the duplex gateway (docs/gateway.md) and HTTP on one port:\n"
            "  /ws        pub/sub WebSocket: JSON dialect (subprotocol duplex.v1) or raw\n"
            "             (?subscribe=a,b&publish=c&since=a:17)\n"
            "  /sse       Server-Sent Events (?subscribe=a,b, Last-Event-ID resume)\n"
            "  /api/...   publish, history, presence, disconnect (Authorization: Bearer KEY)\n"
            "  /metrics   Prometheus text;  /healthz  200 ok\n"
            "  /echo      every message echoed back with its opcode (conformance endpoint)\n"
            "  /...       static files from --static DIR (index.html for directories)\n"
            "\n"
            "options (sizes take K/M/G suffixes, times s/ms/m; defaults in brackets):\n"
            "  --host H               address to bind [:: and 0.0.0.0]\n"
            "  --port P               TCP port [8080]\n"
            "  --unix PATH            listen on a Unix socket instead\n"
            "  --workers N            threads, each with its own loop [number of cores]\n"
            "  --tls-cert F --tls-key F  serve TLS; repeat the pair for SNI (first is default)\n"
            "  --static DIR           directory of static files [none]\n"
            "  --max-message BYTES    largest message accepted, else close 1009 [1MiB]\n"
            "  --max-fragments N      frames per message, else close 1008 [1024]\n"
            "  --max-head BYTES       request head size, else 431 [8KiB]\n"
            "  --max-headers N        request header lines, else 431 [64]\n"
            "  --send-max BYTES       unsent bytes per connection before it is dropped with 1008\n"
            "                         [--sub-queue + 2 x --max-message + 64KiB: the gateway's budget acts first]\n"
            "  --send-high-water BYTES  queued bytes that arm on_drain [64KiB, at most --sub-queue / 4]\n"
            "  --handshake-timeout T  accept to upgrade, TLS included [10s]\n"
            "  --max-conns-per-ip N   live connections per client address (IPv6: per /64), 'off' for none;\n"
            "                         shared out among workers; over it: 503 + Retry-After (TLS: TCP close) [off]\n"
            "  --max-handshaking N    connections per worker not upgraded yet (TLS, request head, plain HTTP),\n"
            "                         'off' for none; over it: TCP close at accept [1024]\n"
            "  --close-timeout T      wait for the peer's close frame / EOF [5s]\n"
            "  --idle-timeout T       close 1001 after no frame for T [off]\n"
            "  --ping-interval T      heartbeat ping period, 'off' to disable [30s]\n"
            "  --pong-timeout T       drop a peer that does not answer a ping [10s]\n"
            "  --max-http-body BYTES  plain HTTP request body, else 413 [1MiB]\n"
            "  --http-keepalive T     idle wait for the next HTTP request on a connection, 'off' or 0 to close\n"
            "                         after each answer [5s]\n"
            "  --http-max-requests N  HTTP requests per connection [1000]\n"
            "gateway (defaults: GATEWAY.md \"With no configuration\"):\n"
            "  --api-key KEY          Bearer key for /api/* (or env DUPLEX_API_KEY); none: /api/* answers 403\n"
            "  --history N            messages retained per topic, 0 for none [1000]\n"
            "  --history-age T        retained for at most T, 'off' for no bound [10m]\n"
            "  --slow-policy P        disconnect (close 1013) or drop-oldest (JSON clients get a gap notice;\n"
            "                         raw and SSE clients are always disconnected) [disconnect]\n"
            "  --sub-queue BYTES      queued bytes past which a subscriber is slow [1MiB]\n"
            "  --max-subs N           subscriptions per connection, else err 4413 / HTTP 400 [100]\n"
            "  --sse-heartbeat T      comment line on an idle SSE stream [15s]\n"
            "  --demo                 publish a ticker on demo.ticker (for the demo page)\n"
            "  --demo-interval T      ticker period [1s]\n"
            "cluster (docs/gateway.md \"The Redis bus\"):\n"
            "  --redis URL            share topics, offsets, history and presence with every node using the\n"
            "                         same Redis: redis://[user:pass@]host[:port][/db] or\n"
            "                         unix:///path[?db=N&password=P] (or env DUPLEX_REDIS_URL)\n"
            "  --redis-pending-max B  publishes awaiting Redis, in payload bytes; past it → 503 [64MiB]\n"
            "  --presence-ttl T       a dead node's presence and user counts expire within T [15s]\n"
            "  --log-level L          error|warn|info|debug [info]\n"
            "  --log-format F         text (timestamp level message) or json (one object per line) [text]\n"
            "\n"
            "Once every worker listens, serve prints 'duplex: serving http://HOST:PORT/' on stdout.\n"
            "A port another process listens on is refused (exit 1). The first SIGINT/SIGTERM closes\n"
            "gateway connections with 1012 (/echo ones with 1001) and exits 0; a second one exits at\n"
            "once with status 1.\n"
            "  -h, --help             this text\n");
}

static void gw_log(void *ud, int level, const char *msg)
{
    cli_logf(ud, level, "%s", msg);
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    w->rc = dx_loop_run(w->loop);
    atomic_store(&w->done, true);
    return NULL;
}

static void shutdown_worker(void *arg)
{
    worker *w = arg;
    (void)dx_gateway_shutdown(g_app.gw, (unsigned)w->index); /* gateway connections: 1012 */
    size_t left = dx_server_shutdown(w->srv, DX_CLOSE_GOING_AWAY, "server shutting down");
    if (left == 0)
        dx_loop_stop(w->loop);
}

/* Runs on each worker's loop periodically during shutdown. */
static void check_worker(void *arg)
{
    worker *w = arg;
    if (dx_server_connections(w->srv) == 0)
        dx_loop_stop(w->loop);
}

/* 0 when a plain bind (no SO_REUSEPORT) of the address the library will
 * bind succeeds; else prints why and returns 1. Mirrors dx__listen_tcp's
 * choice: the host given, or "::" then "0.0.0.0". */
static int probe_port(const char *host, unsigned port)
{
    char portstr[16];
    snprintf(portstr, sizeof portstr, "%u", port);
    const char *tries[2] = {host, NULL};
    size_t ntries = 1;
    if (!host) {
        tries[0] = "::";
        tries[1] = "0.0.0.0";
        ntries = 2;
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    for (size_t t = 0; t < ntries; t++) {
        struct addrinfo *res = NULL;
        int gai = getaddrinfo(tries[t], portstr, &hints, &res);
        if (gai != 0) {
            if (host) {
                cli_logf(&g_app.log, DX_LOG_ERROR, "serve: cannot resolve --host '%s': %s", host, gai_strerror(gai));
                return 1;
            }
            continue;
        }
        for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
            int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
            if (fd < 0)
                continue;
            int one = 1;
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
            int rc = bind(fd, ai->ai_addr, ai->ai_addrlen);
            int e = errno;
            close(fd);
            if (rc == 0) {
                freeaddrinfo(res);
                return 0;
            }
            if (e == EADDRINUSE) {
                freeaddrinfo(res);
                cli_logf(&g_app.log, DX_LOG_ERROR,
                         "serve: port %u is already in use on %s (another server listens there); "
                         "choose another --port or stop that server",
                         port, host ? host : "this host");
                return 1;
            }
        }
        freeaddrinfo(res);
    }
    return 0; /* let the library report what fails */
}

/* A Unix socket path another server is accepting on: refuse it rather than
 * let the library replace the socket file. 0: free or stale. */
static int probe_unix(const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return 0;
    if (!S_ISSOCK(st.st_mode)) {
        cli_logf(&g_app.log, DX_LOG_ERROR, "serve: --unix %s exists and is not a socket", path);
        return 1;
    }
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sun.sun_path)
        return 0;
    strcpy(sun.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return 0;
    int rc = connect(fd, (struct sockaddr *)&sun, sizeof sun);
    close(fd);
    if (rc == 0) {
        cli_logf(&g_app.log, DX_LOG_ERROR, "serve: --unix %s is in use (another server accepts on it)", path);
        return 1;
    }
    return 0;
}

/* The URL a browser would use for the address bound. */
static void print_url(const dx_server_options *o, unsigned port, bool tls)
{
    if (o->unix_path) {
        printf("duplex: serving unix:%s (WebSocket echo at path /echo)\n", o->unix_path);
    } else {
        const char *h = o->host;
        if (!h || !strcmp(h, "0.0.0.0"))
            h = "127.0.0.1";
        else if (!strcmp(h, "::"))
            h = "::1";
        bool v6 = strchr(h, ':') != NULL;
        printf("duplex: serving %s://%s%s%s:%u/ (WebSocket echo at %s://%s%s%s:%u/echo)\n", tls ? "https" : "http",
               v6 ? "[" : "", h, v6 ? "]" : "", port, tls ? "wss" : "ws", v6 ? "[" : "", h, v6 ? "]" : "", port);
    }
    fflush(stdout);
}

static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return;
    rlim_t soft = rl.rlim_cur;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
            rl.rlim_cur = soft;
    }
    cli_logf(&g_app.log, DX_LOG_INFO, "serve: descriptors: soft limit %llu (was %llu), hard limit %llu",
            (unsigned long long)rl.rlim_cur, (unsigned long long)soft, (unsigned long long)rl.rlim_max);
}

enum {
    O_HOST = 256, O_PORT, O_UNIX, O_WORKERS, O_CERT, O_KEY, O_STATIC, O_MAXHEAD, O_MAXHDRS, O_PERIP, O_MAXHS,
    O_HTTPBODY, O_HTTPKA, O_HTTPREQS, O_APIKEY, O_HIST, O_HISTAGE, O_SLOW, O_SUBQ, O_MAXSUBS, O_SSEHB, O_DEMO,
    O_DEMOINT, O_REDIS, O_REDISPEND, O_PRESTTL
};

int cmd_serve(int argc, char **argv)
{
    static const struct option own[] = {
        {"host", required_argument, 0, O_HOST},
        {"port", required_argument, 0, O_PORT},
        {"unix", required_argument, 0, O_UNIX},
        {"workers", required_argument, 0, O_WORKERS},
        {"tls-cert", required_argument, 0, O_CERT},
        {"tls-key", required_argument, 0, O_KEY},
        {"static", required_argument, 0, O_STATIC},
        {"max-head", required_argument, 0, O_MAXHEAD},
        {"max-headers", required_argument, 0, O_MAXHDRS},
        {"max-conns-per-ip", required_argument, 0, O_PERIP},
        {"max-handshaking", required_argument, 0, O_MAXHS},
        {"max-http-body", required_argument, 0, O_HTTPBODY},
        {"http-keepalive", required_argument, 0, O_HTTPKA},
        {"http-max-requests", required_argument, 0, O_HTTPREQS},
        {"api-key", required_argument, 0, O_APIKEY},
        {"history", required_argument, 0, O_HIST},
        {"history-age", required_argument, 0, O_HISTAGE},
        {"slow-policy", required_argument, 0, O_SLOW},
        {"sub-queue", required_argument, 0, O_SUBQ},
        {"max-subs", required_argument, 0, O_MAXSUBS},
        {"sse-heartbeat", required_argument, 0, O_SSEHB},
        {"demo", no_argument, 0, O_DEMO},
        {"demo-interval", required_argument, 0, O_DEMOINT},
        {"redis", required_argument, 0, O_REDIS},
        {"redis-pending-max", required_argument, 0, O_REDISPEND},
        {"presence-ttl", required_argument, 0, O_PRESTTL},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    app *a = &g_app;
    memset(a, 0, sizeof *a);
    dx_server_options *o = &a->opt;
    dx_gateway_options *g = &a->gopt;
    a->log.level = DX_LOG_INFO;
    a->log.sink = cli_log_sink;
    a->log.ud = &a->log_format;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    a->workers = ncpu > 0 ? (unsigned)ncpu : 1;
    const cli_common common = {
        .prefix = "serve", .cmd = "serve",
        .max_message = &o->max_message, .max_fragments = &o->max_fragments,
        .send_max = &o->send_max, .send_high_water = &o->send_high_water,
        .handshake_timeout_ms = &o->handshake_timeout_ms, .close_timeout_ms = &o->close_timeout_ms,
        .idle_timeout_ms = &o->idle_timeout_ms, .ping_interval_ms = &o->ping_interval_ms,
        .pong_timeout_ms = &o->pong_timeout_ms, .log_level = &a->log.level, .log_format = &a->log_format,
    };
    size_t nkeys = 0;
    unsigned long v;
    int ch;
    const char *name;
    optind = 1;
    while ((ch = cli_getopt(&common, argc, argv, "h", own, &name)) != -1) {
        switch (ch) {
        case CLI_BAD:
            return CLI_USAGE;
        case 'h':
            usage(stdout);
            return 0;
        case O_HOST:
            o->host = optarg;
            break;
        case O_PORT:
            if (cli_parse_uint(optarg, 1, 65535, &v))
                return cli_bad_value(&common, name, optarg);
            o->port = (unsigned)v;
            break;
        case O_UNIX:
            o->unix_path = optarg;
            break;
        case O_WORKERS:
            if (cli_parse_uint(optarg, 1, 256, &v))
                return cli_bad_value(&common, name, optarg);
            a->workers = (unsigned)v;
            break;
        case O_CERT:
            if (a->ncerts == MAX_CERTS)
                return cli_bad_value(&common, name, "more than 16 certificates");
            a->certs[a->ncerts++].cert_file = optarg;
            break;
        case O_KEY:
            if (nkeys == MAX_CERTS)
                return cli_bad_value(&common, name, "more than 16 keys");
            a->certs[nkeys++].key_file = optarg;
            break;
        case O_STATIC:
            o->static_dir = optarg;
            break;
        case O_MAXHEAD:
            if (cli_parse_size(optarg, &o->max_head) || o->max_head < 64 || o->max_head > (1u << 20))
                return cli_bad_value(&common, name, optarg);
            break;
        case O_MAXHDRS:
            if (cli_parse_uint(optarg, 1, 256, &v))
                return cli_bad_value(&common, name, optarg);
            o->max_headers = v;
            break;
        case O_PERIP:
            if (strcmp(optarg, "off") == 0)
                o->max_conns_per_ip = 0;
            else if (cli_parse_uint(optarg, 1, 1u << 30, &v))
                return cli_bad_value(&common, name, optarg);
            else
                o->max_conns_per_ip = v;
            break;
        case O_MAXHS:
            if (strcmp(optarg, "off") == 0)
                o->max_handshaking = (size_t)-1;
            else if (cli_parse_uint(optarg, 1, 1u << 30, &v))
                return cli_bad_value(&common, name, optarg);
            else
                o->max_handshaking = v;
            break;
        case O_HTTPBODY:
            if (cli_parse_size(optarg, &o->max_http_body) || !o->max_http_body)
                return cli_bad_value(&common, name, optarg);
            break;
        case O_HTTPKA:
            if (cli_parse_ms(optarg, &o->http_keepalive_ms))
                return cli_bad_value(&common, name, optarg);
            if (o->http_keepalive_ms == 0)
                o->http_keepalive_ms = (unsigned)-1; /* off */
            break;
        case O_HTTPREQS:
            if (cli_parse_uint(optarg, 1, 1u << 30, &v))
                return cli_bad_value(&common, name, optarg);
            o->http_max_requests = (unsigned)v;
            break;
        case O_APIKEY:
            if (!*optarg)
                return cli_bad_value(&common, name, "an empty key");
            g->api_key = optarg;
            break;
        case O_HIST:
            if (cli_parse_uint(optarg, 0, 1u << 24, &v))
                return cli_bad_value(&common, name, optarg);
            g->history_count = v ? v : (size_t)-1;
            break;
        case O_HISTAGE: {
            unsigned ms;
            if (strcmp(optarg, "off") == 0)
                g->history_age_ms = UINT64_MAX;
            else if (cli_parse_ms(optarg, &ms) || ms == 0)
                return cli_bad_value(&common, name, optarg);
            else
                g->history_age_ms = ms;
            break;
        }
        case O_SLOW:
            if (strcmp(optarg, "disconnect") == 0)
                g->slow_policy = DX_GW_SLOW_DISCONNECT;
            else if (strcmp(optarg, "drop-oldest") == 0)
                g->slow_policy = DX_GW_SLOW_DROP_OLDEST;
            else
                return cli_bad_value(&common, name, optarg);
            break;
        case O_SUBQ:
            if (cli_parse_size(optarg, &g->sub_queue) || g->sub_queue < 1024)
                return cli_bad_value(&common, name, optarg);
            break;
        case O_MAXSUBS:
            if (cli_parse_uint(optarg, 1, 100000, &v))
                return cli_bad_value(&common, name, optarg);
            g->max_subs = v;
            break;
        case O_SSEHB:
            if (cli_parse_ms(optarg, &g->sse_heartbeat_ms) || !g->sse_heartbeat_ms)
                return cli_bad_value(&common, name, optarg);
            break;
        case O_DEMO:
            g->demo = 1;
            break;
        case O_DEMOINT:
            if (cli_parse_ms(optarg, &g->demo_interval_ms) || !g->demo_interval_ms)
                return cli_bad_value(&common, name, optarg);
            break;
        /* cluster: the Redis bus (redis-bus branch) */
        case O_REDIS:
            if (!*optarg)
                return cli_bad_value(&common, name, "an empty URL");
            g->redis_url = optarg;
            break;
        case O_REDISPEND:
            if (cli_parse_size(optarg, &g->redis_pending_max) || g->redis_pending_max < 1024)
                return cli_bad_value(&common, name, optarg);
            break;
        case O_PRESTTL:
            if (cli_parse_ms(optarg, &g->presence_ttl_ms) || g->presence_ttl_ms < 300)
                return cli_bad_value(&common, name, optarg);
            break;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (!g->api_key) {
        const char *env = getenv("DUPLEX_API_KEY");
        if (env && *env)
            g->api_key = env;
    }
    if (!g->redis_url) { /* a Redis password kept out of argv */
        const char *env = getenv("DUPLEX_REDIS_URL");
        if (env && *env)
            g->redis_url = env;
    }
    if (optind < argc) {
        fprintf(stderr, "serve: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (a->ncerts != nkeys) {
        fprintf(stderr, "serve: --tls-cert and --tls-key must come in pairs (%zu certificates, %zu keys)\n",
                a->ncerts, nkeys);
        return 2;
    }
    /* Left 0 when not given: the gateway chooses them around its
     * subscriber budget (docs/gateway.md "Configuration and defaults"). */
    if (o->send_high_water && o->send_max && o->send_high_water > o->send_max) {
        fprintf(stderr, "serve: --send-high-water must not exceed --send-max\n");
        return 2;
    }
    if (o->static_dir) {
        struct stat st;
        if (stat(o->static_dir, &st) != 0) {
            fprintf(stderr, "serve: --static %s: %s\n", o->static_dir, strerror(errno));
            return 2;
        }
        if (!S_ISDIR(st.st_mode)) {
            fprintf(stderr, "serve: --static %s is not a directory (give the directory that holds it)\n",
                    o->static_dir);
            return 2;
        }
    }
    if (o->unix_path && o->host) {
        fprintf(stderr, "serve: --unix and --host do not go together\n");
        return 2;
    }
    o->tls = a->ncerts ? a->certs : NULL;
    o->n_tls = a->ncerts;
    if (o->unix_path && a->workers > 1)
        a->workers = 1; /* one listener for a Unix socket */
    /* SO_REUSEPORT only between this process's workers, after the probe. */
    o->reuse_port = a->workers > 1;
    if (o->unix_path ? probe_unix(o->unix_path) : probe_port(o->host, o->port ? o->port : 8080))
        return 1;
    /* Each worker counts its own connections; the kernel spreads a client's
     * connections over the workers, so each gets its share of the limit. */
    if (o->max_conns_per_ip)
        o->max_conns_per_ip = (o->max_conns_per_ip + a->workers - 1) / a->workers;

    /* Signals are taken by this thread only; workers inherit the mask. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    raise_nofile();

    g->max_message = o->max_message;
    g->log = gw_log;
    g->log_ud = &a->log;
    int gerr = 0;
    a->gw = dx_gateway_new(g, a->workers, &gerr);
    if (!a->gw) {
        cli_logf(&a->log, DX_LOG_ERROR, "serve: cannot create the gateway: %s", dx_strerror(gerr));
        return 1;
    }
    worker *ws = calloc(a->workers, sizeof *ws);
    if (!ws) {
        fprintf(stderr, "serve: out of memory\n");
        return 1;
    }
    dx_loop_options lo = {.log = &a->log};
    int status = 0;
    unsigned started = 0;
    for (unsigned i = 0; i < a->workers; i++) {
        worker *w = &ws[i];
        int err;
        w->index = (int)i;
        w->loop = dx_loop_new(&lo, &err);
        if (!w->loop) {
            cli_logf(&a->log, DX_LOG_ERROR, "serve: cannot create an event loop: %s", dx_strerror(err));
            status = 1;
            break;
        }
        o->instance = i;
        o->instances = a->workers;
        (void)dx_gateway_server_options(a->gw, i, o);
        w->srv = dx_server_new(w->loop, o, &err);
        if (!w->srv) {
            cli_logf(&a->log, DX_LOG_ERROR, "serve: cannot create the server: %s", dx_strerror(err));
            status = 1;
            break;
        }
        if ((err = dx_gateway_attach(a->gw, i, w->loop, w->srv)) != 0) {
            cli_logf(&a->log, DX_LOG_ERROR, "serve: cannot attach the gateway: %s", dx_strerror(err));
            status = 1;
            break;
        }
        if ((err = dx_server_start(w->srv)) != 0) {
            /* The library logged the address and the system's reason. */
            status = 1;
            break;
        }
        if (i == 0 && !o->unix_path)
            o->port = dx_server_port(w->srv); /* the others join the same port */
    }
    if (status == 0) {
        /* Printed only now that every worker listens: scripts wait for it. */
        if (o->unix_path)
            cli_logf(&a->log, DX_LOG_INFO, "serve: duplex %s listening on unix:%s (%s), 1 worker%s%s", dx_version(),
                     o->unix_path, a->ncerts ? "wss" : "ws", o->static_dir ? ", static files from " : "",
                     o->static_dir ? o->static_dir : "");
        else
            cli_logf(&a->log, DX_LOG_INFO, "serve: duplex %s listening on %s%s%s:%u (%s), %u worker%s%s%s",
                     dx_version(), o->host && strchr(o->host, ':') ? "[" : "", o->host ? o->host : "*",
                     o->host && strchr(o->host, ':') ? "]" : "", o->port, a->ncerts ? "wss" : "ws", a->workers,
                     a->workers == 1 ? "" : "s", o->static_dir ? ", static files from " : "",
                     o->static_dir ? o->static_dir : "");
        cli_logf(&a->log, DX_LOG_INFO,
                 "serve: gateway open for development: no authentication configured, anonymous clients may "
                 "subscribe and publish; HTTP API %s; history %zu messages / %s per topic; subscribers that fall behind: %s",
                 g->api_key ? "on (Bearer key set)" : "off (no --api-key)",
                 g->history_count == (size_t)-1 ? (size_t)0 : g->history_count ? g->history_count : 1000,
                 g->history_age_ms == UINT64_MAX ? "no age bound" : "an age bound (--history-age)",
                 g->slow_policy == DX_GW_SLOW_DROP_OLDEST ? "oldest dropped (JSON) / disconnected (raw, SSE)"
                                                          : "disconnected (1013)");
        print_url(o, o->port, a->ncerts != 0);
    }
    if (status == 0) {
        for (unsigned i = 0; i < a->workers; i++) {
            if (pthread_create(&ws[i].thread, NULL, worker_main, &ws[i]) != 0) {
                cli_logf(&a->log, DX_LOG_ERROR, "serve: cannot start worker %u", i);
                status = 1;
                break;
            }
            started++;
        }
    }
    if (status == 0) {
        int sig = 0;
        sigdelset(&set, SIGPIPE);
        sigwait(&set, &sig);
        atomic_store(&a->stopping, true);
        cli_logf(&a->log, DX_LOG_INFO, "serve: %s: closing connections with 1012 (gateway) and 1001 (echo) (up to %u ms); again to exit now",
                 strsignal(sig), o->close_timeout_ms ? o->close_timeout_ms : 5000u);
        for (unsigned i = 0; i < started; i++)
            dx_loop_post(ws[i].loop, shutdown_worker, &ws[i]);
        /* Each connection ends within the close timeout; poll the workers
         * until they are empty, then stop them. */
        unsigned limit_ms = (o->close_timeout_ms ? o->close_timeout_ms : 5000u) + 1000u;
        for (unsigned waited = 0; waited < limit_ms; waited += 50) {
            bool all = true;
            for (unsigned i = 0; i < started; i++)
                if (!atomic_load(&ws[i].done)) {
                    all = false;
                    dx_loop_post(ws[i].loop, check_worker, &ws[i]);
                }
            if (all)
                break;
            /* Waits 50 ms for a second signal, which forces the exit. */
            struct timespec ts = {0, 50 * 1000000L};
            int again = sigtimedwait(&set, NULL, &ts);
            if (again == SIGINT || again == SIGTERM) {
                cli_logf(&a->log, DX_LOG_WARN, "serve: %s again: exiting now without waiting for connections",
                         strsignal(again));
                _exit(1);
            }
        }
    }
    for (unsigned i = 0; i < started; i++) {
        dx_loop_stop(ws[i].loop);
        pthread_join(ws[i].thread, NULL);
    }
    dx_gateway_free(a->gw); /* before the servers: pending answers are given while they exist */
    a->gw = NULL;
    for (unsigned i = 0; i < a->workers; i++) {
        if (ws[i].srv)
            dx_server_free(ws[i].srv);
        if (ws[i].loop)
            dx_loop_free(ws[i].loop);
    }
    free(ws);
    if (status == 0)
        cli_logf(&a->log, DX_LOG_INFO, "serve: stopped");
    return status;
}
