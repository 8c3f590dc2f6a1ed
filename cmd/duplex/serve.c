/*
 * cmd/duplex/serve.c: `duplex serve`: one loop and one server per worker
 * thread, all wired to one gateway (include/duplex/gateway.h: /ws, /sse,
 * /api/..., /metrics, /healthz, /echo), plus static files. This file only
 * runs the settings that config.c builds from the configuration file, the
 * DUPLEX_* environment and the flags (docs/configuration.md); the gateway
 * is in src/gateway.
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
 * that wait exits at once with status 1. SIGHUP (the same sigwait) reloads
 * the configuration (reload()): the gateway's policy and the TLS
 * certificates, from the main thread, while the workers run.
 */
#define _GNU_SOURCE
#include "cli.h"
#include "config.h"
#include "serve_procs.h"
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

typedef struct worker {
    int index;
    dx_loop *loop;
    dx_server *srv;
    pthread_t thread;
    atomic_bool done;
    int rc;
    bool server_stopped;   /* shutdown: the drain is over */
    uint64_t drain_end_ms; /* CLOCK_MONOTONIC */
} worker;

typedef struct app {
    serve_args args;        /* the command line, read again by each reload */
    serve_config cfg;       /* the configuration the process started with */
    serve_config *last;     /* the last one a reload applied (NULL: none yet) */
    dx_server_options opt;  /* working copies of cfg's, adjusted for the workers */
    dx_gateway_options gopt;
    dx_gateway *gw;
    size_t ncerts;
    dx_log log;
    int log_format;
    unsigned workers;
    unsigned reloads;
    atomic_bool stopping;
    /* --procs N: set in a child of the supervisor (serve_procs.c) */
    bool supervised;
    unsigned proc_slot;
    int ready_fd;
    char log_prefix[48]; /* "proc S pid P: " on each of the child's lines */
} app;

static app g_app; /* the process's configuration, set once before threads start */

/* --procs: the supervisor kills children still running this long after the
 * longest a child's own stop may take (drain + close timeout + 1.5 s). */
#define PROCS_STOP_MARGIN_MS 5000u

static int serve_run(app *a);

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
            "  --procs N              processes on the one port (SO_REUSEPORT), each with --workers threads,\n"
            "                         supervised: signals forwarded, a crashed one restarted; topics are per\n"
            "                         process unless --redis joins them [1: no supervisor]\n"
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
            "  --deflate[=PARAMS]     permessage-deflate (RFC 7692) [on]; PARAMS: what the server asks for, e.g.\n"
            "                         --deflate='server_no_context_takeover; client_max_window_bits=10'\n"
            "                         (server_no_context_takeover, client_no_context_takeover,\n"
            "                         server_max_window_bits=8-15, client_max_window_bits=8-15; docs/deflate.md)\n"
            "  --no-deflate           no compression (offers are declined)\n"
            "  --deflate-min-size BYTES  messages shorter go uncompressed [64]\n"
            "  --deflate-mem-budget BYTES  zlib memory per worker; past it new connections get\n"
            "                         no_context_takeover, then no compression [64MiB]\n"
            "  --log-level L          error|warn|info|debug [info]\n"
            "  --log-format F         text (timestamp level message) or json (one object per line) [text]\n"
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
            "  --max-inflight N       publishes per connection awaiting sequencing before reading pauses [256]\n"
            "limits (reloaded by SIGHUP; docs/security.md; 'off' for none):\n"
            "  --origin O             allowed browser Origin, repeatable: https://app.example.com or\n"
            "                         https://*.example.com (subdomains); none: Origin must match Host\n"
            "  --allow-no-origin on|off  requests without Origin (non-browser clients) [on]\n"
            "  --conns-per-user N     live gateway connections per authenticated user, else 429 [off]\n"
            "  --conns-per-ip N       live gateway connections per address (IPv6: /64), else 429 [1000]\n"
            "  --handshakes-per-ip R  /ws and /sse requests per second per address, else 429 + Retry-After [200]\n"
            "  --handshake-burst N    their bucket size [1000; = --handshakes-per-ip when that is given]\n"
            "  --msg-rate R           messages per second per connection [1000]\n"
            "  --msg-burst N          its bucket size [= --msg-rate]\n"
            "  --rate-policy P        over --msg-rate: pause (stop reading), refuse (JSON err 4429; raw:\n"
            "                         close 1008) or close (1008) [pause]\n"
            "  --max-topic BYTES      topic name or pattern length, at most 200, else 4400 / 400 [200]\n"
            "  --max-api-body BYTES   /api/publish body, else 413 [--max-message]\n"
            "  --drain T              on SIGTERM, time for queued messages to go out before the 1012 [10s]\n"
            "  --reconnect-hint T     retry delay in the 1012 close reason (\"retry=MS\") [2s]\n"
            "  --namespace P[,k=v...] settings of the topics starting with P (the longest prefix wins;\n"
            "                         repeatable): history=N|off, history-age=T|off, publish=on|off,\n"
            "                         presence=on|off, slow-policy=P, rate=R, burst=N, rate-policy=P,\n"
            "                         max-message=BYTES; e.g. --namespace 'news.,publish=off,history=50'\n"
            "cluster (docs/gateway.md \"The Redis bus\"):\n"
            "  --redis URL            share topics, offsets, history and presence with every node using the\n"
            "                         same Redis: redis://[user:pass@]host[:port][/db], rediss://...\n"
            "                         (TLS) or unix:///path[?db=N&password=P] (or env DUPLEX_REDIS); URL1,URL2,...\n"
            "                         (or --redis repeated): topics sharded over independent servers\n"
            "                         (the same list, in the same order, on every node)\n"
            "  --redis-cluster        the --redis URLs are seed nodes of a Redis Cluster (Redis 7: sharded\n"
            "                         pub/sub, topics routed by hash slot)\n"
            "  --redis-pending-max B  publishes awaiting Redis, in payload bytes; past it → 503 [64MiB]\n"
            "  --presence-ttl T       a dead node's presence and user counts expire within T [15s]\n"
            "  --redis-tls-ca F       rediss://: CA file the Redis certificate must chain to [system store]\n"
            "  --redis-tls-cert F     rediss://: client certificate for tls-auth-clients (with --redis-tls-key)\n"
            "  --redis-tls-key F      rediss://: the client certificate's private key\n"
            "authentication (reloaded by SIGHUP; docs/gateway.md \"Authentication\", docs/security.md):\n"
            "  --api-keys-file F      file of 'name key' lines for /api/* (re-read on reload)\n"
            "  --jwt-secret S | --jwt-key PEM | --jwks FILE   JWT authentication (one key source)\n"
            "  --jwt-audience A, --jwt-issuer I, --jwt-leeway T [30s], --refresh-grace T [off],\n"
            "  --token-cookie NAME, --anonymous on|off, --anonymous-publish on|off\n"
            "configuration:\n"
            "  --config FILE          YAML configuration file (or env DUPLEX_CONFIG); every key also has a flag\n"
            "                         and an environment variable DUPLEX_<FLAG>: flag > env > file > default\n"
            "  --check-config         print the effective configuration (secrets masked) and exit; exits 2 on\n"
            "                         an unknown key or a bad value, naming file:line: key\n"
            "  --help-config          every configuration key with its flag, variable, default and reloadability\n"
            "\n"
            "Once every worker listens, serve prints 'duplex: serving http://HOST:PORT/' on stdout.\n"
            "A port another process listens on is refused (exit 1). SIGHUP reloads the configuration (the\n"
            "policy and the TLS certificates; a bad one is refused and the current one stays; keys that need\n"
            "a restart keep their values). The first SIGINT/SIGTERM drains: /healthz answers 503, new\n"
            "requests 503, each gateway connection gets 1012 \"retry=MS\" once its queue is out (all by\n"
            "--drain), /echo ones 1001; then serve exits 0. A second one exits at once with status 1.\n"
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

/* Drain first (the gateway's connections get 1012 "retry=MS" once their
 * queues are out, /healthz answers 503 "draining", the listener stays up
 * so a balancer can see that), then the server's shutdown (the listener,
 * /echo: 1001). */
static void server_stop(worker *w)
{
    if (w->server_stopped)
        return;
    w->server_stopped = true;
    if (dx_server_shutdown(w->srv, DX_CLOSE_GOING_AWAY, "server shutting down") == 0)
        dx_loop_stop(w->loop);
}

static void shutdown_worker(void *arg)
{
    worker *w = arg;
    if (dx_gateway_shutdown(g_app.gw, (unsigned)w->index) == 0)
        server_stop(w);
}

/* Runs on each worker's loop periodically during shutdown. */
static void check_worker(void *arg)
{
    worker *w = arg;
    if (!w->server_stopped) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        uint64_t now = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
        if (dx_gateway_shutdown(g_app.gw, (unsigned)w->index) == 0 || now >= w->drain_end_ms)
            server_stop(w);
        return;
    }
    if (dx_server_connections(w->srv) == 0)
        dx_loop_stop(w->loop);
}

static void note_restart(void *ud, const char *key, const char *was, const char *now)
{
    app *a = ud;
    cli_logf(&a->log, DX_LOG_WARN, "serve: reload: %s changed (%s -> %s): needs a restart; keeping %s", key, was,
             now, was);
}

/* The configuration now in force (the start's or the last reload's). */
static const serve_config *current(const app *a)
{
    return a->last ? a->last : &a->cfg;
}

/* SIGHUP, on the main thread: reads the configuration again (file,
 * environment, the same flags). A bad one is refused with one log line and
 * the current one stays. Keys that need a restart keep their old values
 * (one warning each). The TLS certificates are swapped for new handshakes
 * (dx_server_reload_tls), then the gateway's policy (dx_gateway_reload); if
 * the gateway refuses the policy, the previous certificates are put back. */
static void reload(app *a, worker *ws, unsigned n)
{
    char err[1024], why[512];
    const serve_config *cur = current(a);
    cli_logf(&a->log, DX_LOG_INFO, "serve: SIGHUP: reloading the configuration%s%s", cur->file ? " from " : "",
             cur->file ? cur->file : " (no --config file: environment and flags)");
    serve_config *nc = calloc(1, sizeof *nc);
    if (!nc) {
        cli_logf(&a->log, DX_LOG_ERROR, "serve: reload refused (out of memory); the current configuration stays");
        return;
    }
    if (cfg_build(nc, &a->args, err, sizeof err)) {
        cli_logf(&a->log, DX_LOG_ERROR, "serve: reload refused: %s; the current configuration stays", err);
        goto refused;
    }
    (void)cfg_restart_diffs(&a->cfg, nc, note_restart, a);
    bool tls = nc->ncerts && cur->ncerts;
    if (nc->ncerts != 0 && cur->ncerts == 0)
        cli_logf(&a->log, DX_LOG_WARN, "serve: reload: listen.tls: turning TLS on needs a restart; serving without");
    else if (nc->ncerts == 0 && cur->ncerts != 0)
        cli_logf(&a->log, DX_LOG_WARN,
                 "serve: reload: listen.tls: turning TLS off needs a restart; keeping the current certificates");
    for (unsigned i = 0; tls && i < n; i++) {
        if (dx_server_reload_tls(ws[i].srv, nc->certs, nc->ncerts, why, sizeof why) != 0) {
            cli_logf(&a->log, DX_LOG_ERROR, "serve: reload refused: listen.tls: %s; the current configuration stays",
                     why);
            for (unsigned j = 0; j < i; j++)
                (void)dx_server_reload_tls(ws[j].srv, cur->certs, cur->ncerts, NULL, 0);
            goto refused;
        }
    }
    /* the policy part comes from the new configuration; the rest is not
     * read by dx_gateway_reload */
    dx_gateway_options go = a->gopt;
    go.api_key = nc->go.api_key;
    go.auth = nc->go.auth;
    go.api_keys = nc->go.api_keys;
    go.n_api_keys = nc->go.n_api_keys;
    go.api_keys_file = nc->go.api_keys_file;
    go.origins = nc->go.origins;
    go.n_origins = nc->go.n_origins;
    go.allow_no_origin = nc->go.allow_no_origin;
    go.limits = nc->go.limits;
    go.namespaces = nc->go.namespaces;
    go.n_namespaces = nc->go.n_namespaces;
    go.drain_ms = nc->go.drain_ms;
    go.reconnect_hint_ms = nc->go.reconnect_hint_ms;
    if (dx_gateway_reload(a->gw, &go, why, sizeof why) != 0) {
        cli_logf(&a->log, DX_LOG_ERROR, "serve: reload refused: gateway policy: %s; the current configuration stays",
                 why);
        for (unsigned i = 0; tls && i < n; i++)
            (void)dx_server_reload_tls(ws[i].srv, cur->certs, cur->ncerts, NULL, 0);
        goto refused;
    }
    /* the gateway copied what it keeps; the previous reload's strings can go */
    if (a->last) {
        cfg_free(a->last);
        free(a->last);
    }
    a->last = nc;
    a->reloads++;
    cli_logf(&a->log, DX_LOG_INFO,
             "serve: reload %u done: gateway policy replaced for new connections and requests%s", a->reloads,
             tls ? "; TLS certificates replaced for new handshakes" : "");
    return;
refused:
    cfg_free(nc);
    free(nc);
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

/* A child's lines carry "proc S pid P: " so a log shows which process said what. */
static void proc_log_sink(void *ud, int level, const char *line, size_t len)
{
    char buf[8192];
    int k = snprintf(buf, sizeof buf, "%s%.*s", g_app.log_prefix, (int)len, line);
    if (k < 0)
        return;
    cli_log_sink(ud, level, buf, (size_t)k < sizeof buf ? (size_t)k : sizeof buf - 1);
}

/* serve_procs.c: the body of child `slot`. */
static int proc_child(void *ud, unsigned slot, int ready_fd)
{
    app *a = ud;
    a->supervised = true;
    a->proc_slot = slot;
    a->ready_fd = ready_fd;
    snprintf(a->log_prefix, sizeof a->log_prefix, "proc %u pid %d: ", slot, (int)getpid());
    a->log.sink = proc_log_sink;
    return serve_run(a);
}

static void proc_ready(void *ud)
{
    app *a = ud;
    cli_logf(&a->log, DX_LOG_INFO, "serve: all %u processes listen on port %u", a->cfg.procs,
             a->cfg.so.port ? a->cfg.so.port : 8080u);
    dx_server_options o = a->cfg.so;
    print_url(&o, o.port ? o.port : 8080u, a->cfg.ncerts != 0);
}

/* --procs N (N > 1): probe the address once here, then supervise N
 * processes that each run serve_run without a probe. */
static int serve_procs(app *a)
{
    a->log.level = a->cfg.log_level;
    a->log_format = a->cfg.log_format;
    if (a->cfg.so.unix_path) {
        fprintf(stderr, "serve: --procs %u needs a TCP port: a Unix socket (--unix) has one listener\n",
                a->cfg.procs);
        return CLI_USAGE;
    }
    if (!a->cfg.so.port)
        a->cfg.so.port = 8080; /* every child binds the same port */
    if (probe_port(a->cfg.so.host, a->cfg.so.port))
        return 1;
    raise_nofile(); /* the children inherit the raised limit */
    unsigned drain = a->cfg.go.drain_ms ? a->cfg.go.drain_ms : 10000u;
    unsigned close_ms = a->cfg.so.close_timeout_ms ? a->cfg.so.close_timeout_ms : 5000u;
    procs_options po = {.n = a->cfg.procs,
                        .stop_grace_ms = drain + close_ms + 1500u + PROCS_STOP_MARGIN_MS,
                        .log = &a->log,
                        .child = proc_child,
                        .ready = proc_ready,
                        .ud = a};
    return procs_supervise(&po);
}

int cmd_serve(int argc, char **argv)
{
    app *a = &g_app;
    memset(a, 0, sizeof *a);
    a->log.level = DX_LOG_INFO;
    a->log.sink = cli_log_sink;
    a->log.ud = &a->log_format;
    int rc = cfg_parse_args(&a->args, argc, argv);
    if (rc) {
        if (rc < 0)
            usage(stderr);
        cfg_args_free(&a->args);
        return CLI_USAGE;
    }
    if (a->args.help || a->args.help_config) {
        if (a->args.help)
            usage(stdout);
        else
            cfg_print_schema(stdout);
        cfg_args_free(&a->args);
        return 0;
    }
    char err[1024];
    if (cfg_build(&a->cfg, &a->args, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        cfg_free(&a->cfg);
        cfg_args_free(&a->args);
        return CLI_USAGE;
    }
    if (a->args.check) {
        cfg_print(&a->cfg, stdout);
        cfg_free(&a->cfg);
        cfg_args_free(&a->args);
        return 0;
    }
    rc = a->cfg.procs > 1 ? serve_procs(a) : serve_run(a);
    cfg_free(&a->cfg);
    if (a->last) {
        cfg_free(a->last);
        free(a->last);
    }
    cfg_args_free(&a->args);
    return rc;
}

/* Runs the configuration a->cfg until a signal stops it. */
static int serve_run(app *a)
{
    /* working copies: serve adjusts a few values for the workers */
    a->opt = a->cfg.so;
    a->gopt = a->cfg.go;
    a->workers = a->cfg.workers;
    a->log.level = a->cfg.log_level;
    a->log_format = a->cfg.log_format;
    a->ncerts = a->cfg.ncerts;
    dx_server_options *o = &a->opt;
    dx_gateway_options *g = &a->gopt;
    if (o->unix_path && a->workers > 1)
        a->workers = 1; /* one listener for a Unix socket */
    /* SO_REUSEPORT only between this process's workers (and, with --procs,
     * its siblings), after the probe: the supervisor probed before forking. */
    o->reuse_port = a->workers > 1 || a->supervised;
    if (!a->supervised && (o->unix_path ? probe_unix(o->unix_path) : probe_port(o->host, o->port ? o->port : 8080)))
        return 1;
    /* Each worker counts its own connections; the kernel spreads a client's
     * connections over the workers (of every process), so each gets its
     * share of the limit. */
    unsigned shares = a->workers * (a->supervised ? a->cfg.procs : 1u);
    if (o->max_conns_per_ip)
        o->max_conns_per_ip = (o->max_conns_per_ip + shares - 1) / shares;

    /* Signals are taken by this thread only; workers inherit the mask. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGHUP);
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
        bool jwt = g->auth.jwt_secret || g->auth.jwt_public_key || g->auth.jwks_file;
        if (jwt)
            cli_logf(&a->log, DX_LOG_INFO,
                     "serve: authentication: JWT (%s)%s%s%s%s; anonymous connections %s, anonymous publish %s",
                     g->auth.jwt_secret ? "HS256 secret" : g->auth.jwt_public_key ? "public key" : "JWKS",
                     g->auth.audience ? ", audience " : "", g->auth.audience ? g->auth.audience : "",
                     g->auth.issuer ? ", issuer " : "", g->auth.issuer ? g->auth.issuer : "",
                     g->auth.anonymous > 0 ? "allowed" : "refused (403)",
                     g->auth.anonymous_publish > 0 ? "on" : "off");
        cli_logf(&a->log, DX_LOG_INFO,
                 "serve: gateway %s; HTTP API %s; history %zu messages / %s per topic; subscribers that fall behind: %s",
                 jwt ? "with authentication"
                     : "open for development: no authentication configured, anonymous clients may subscribe and "
                       "publish",
                 g->api_key || g->api_keys_file ? "on (Bearer key set)" : "off (no --api-key)",
                 g->history_count == (size_t)-1 ? (size_t)0 : g->history_count ? g->history_count : 1000,
                 g->history_age_ms == UINT64_MAX ? "no age bound" : "an age bound (--history-age)",
                 g->slow_policy == DX_GW_SLOW_DROP_OLDEST ? "oldest dropped (JSON) / disconnected (raw, SSE)"
                                                          : "disconnected (1013)");
        if (!a->supervised)
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
    if (status == 0 && a->supervised) {
        procs_ready r = {.slot = a->proc_slot, .pid = (int32_t)getpid()};
        if (write(a->ready_fd, &r, sizeof r) != (ssize_t)sizeof r)
            cli_logf(&a->log, DX_LOG_WARN, "serve: cannot tell the supervisor this process is ready: %s",
                     strerror(errno));
    }
    if (status == 0) {
        int sig = 0;
        sigdelset(&set, SIGPIPE);
        for (;;) {
            sigwait(&set, &sig);
            if (sig != SIGHUP)
                break;
            reload(a, ws, started);
        }
        atomic_store(&a->stopping, true);
        cli_logf(&a->log, DX_LOG_INFO, "serve: %s: draining (/healthz answers 503): closing connections with 1012 "
                 "(gateway) and 1001 (echo): 1012 \"retry=%u\" once a connection's queue is out (up to %u ms), "
                 "then the close handshakes (up to %u ms); again to exit now",
                 strsignal(sig), g->reconnect_hint_ms ? g->reconnect_hint_ms : 2000u,
                 g->drain_ms ? g->drain_ms : 10000u, o->close_timeout_ms ? o->close_timeout_ms : 5000u);
        unsigned drain_ms = g->drain_ms ? g->drain_ms : 10000u;
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        for (unsigned i = 0; i < started; i++) {
            ws[i].drain_end_ms = (uint64_t)now.tv_sec * 1000u + (uint64_t)now.tv_nsec / 1000000u + drain_ms + 500u;
            dx_loop_post(ws[i].loop, shutdown_worker, &ws[i]);
        }
        /* The drain, then each connection ends within the close timeout;
         * poll the workers until they are empty, then stop them. */
        unsigned limit_ms = drain_ms + 500u + (o->close_timeout_ms ? o->close_timeout_ms : 5000u) + 1000u;
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
