/*
 * cmd/duplex/config.c: `duplex serve`'s settings from a YAML file, the
 * environment and flags (config.h, docs/configuration.md).
 *
 * Here: the schema (one row per key), values and their checks, the
 * environment and flags, building and printing. The YAML file is read by
 * config_yaml.c (config_int.h is what the two share).
 *
 * Layer: the CLI (public headers only).
 */
#define _GNU_SOURCE
#include "config_int.h"
#include "duplex/deflate.h"

#include "cli.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>


/* ---- the schema ------------------------------------------------------------ */

static const char *const slow_names[] = {"disconnect", "drop-oldest", NULL};
static const char *const rate_names[] = {"pause", "refuse", "close", NULL};
static const char *const level_names[] = {"error", "warn", "info", "debug", NULL};
static const char *const format_names[] = {"text", "json", NULL};

#define SO(f) W_SO, offsetof(dx_server_options, f)
#define GO(f) W_GO, offsetof(dx_gateway_options, f)
#define APP(f) W_APP, offsetof(serve_config, f)
#define NS(f) W_NS, offsetof(dx_gateway_namespace, f)
#define TLS(f) W_TLS, offsetof(dx_tls_cert, f)
#define KEY(f) W_KEY, offsetof(dx_gateway_api_key, f)
#define G30 1073741824.0

/* One row per key. Order: as printed by --check-config and --help-config. */
static const row schema[] = {
    /* listener */
    {"listen.host", K_STR, SO(host), ST_STR, 0, "host", ":: and 0.0.0.0", "address to bind", 0, 0, NULL, 0, 0},
    {"listen.port", K_NUM, SO(port), ST_UINT, 0, "port", "8080", "TCP port", 1, 65535, NULL, 0, 0},
    {"listen.unix", K_STR, SO(unix_path), ST_STR, 0, "unix", "none", "listen on a Unix socket instead", 0, 0, NULL,
     0, 0},
    {"listen.static", K_DIR, SO(static_dir), ST_STR, 0, "static", "none", "directory of static files", 0, 0, NULL,
     0, 0},
    {"listen.tls", K_SEQ, W_APP, 0, ST_NONE, R_RELOAD, NULL, "none",
     "TLS certificates: a list of {cert, key}; the first is the default, the others picked by SNI", 0, 0, NULL, 0,
     0},
    {"listen.tls[].cert", K_FILE, TLS(cert_file), ST_STR, R_RELOAD, "tls-cert", "none",
     "PEM certificate chain (flag: repeat --tls-cert/--tls-key pairs; env: comma-separated)", 0, 0, NULL, 0, 0},
    {"listen.tls[].key", K_FILE, TLS(key_file), ST_STR, R_RELOAD, "tls-key", "none", "PEM private key", 0, 0, NULL,
     0, 0},
    {"workers", K_NUM, APP(workers), ST_UINT, 0, "workers", "number of cores", "threads, each with its own loop", 1,
     256, NULL, 0, 0},
    {"procs", K_NUM, APP(procs), ST_UINT, 0, "procs", "1",
     "processes on the one port (SO_REUSEPORT), supervised; topics per process unless --redis", 1, 256, NULL, 0, 0},
    {"log.level", K_ENUM, APP(log_level), ST_INT, R_SHARED, "log-level", "info", "error|warn|info|debug", 0, 0,
     level_names, 0, 0},
    {"log.format", K_ENUM, APP(log_format), ST_INT, R_SHARED, "log-format", "text", "text|json", 0, 0,
     format_names, 0, 0},
    /* server limits */
    {"server.max_message", K_SIZE, SO(max_message), ST_SIZE, R_SHARED, "max-message", "1MiB",
     "largest message accepted, else close 1009", 1, (double)SIZE_MAX, NULL, 0, 0},
    {"server.max_fragments", K_NUM, SO(max_fragments), ST_SIZE, R_SHARED, "max-fragments", "1024",
     "frames per message, else close 1008", 1, G30, NULL, 0, 0},
    {"server.max_head", K_SIZE, SO(max_head), ST_SIZE, 0, "max-head", "8KiB", "request head size, else 431", 64,
     1048576, NULL, 0, 0},
    {"server.max_headers", K_NUM, SO(max_headers), ST_SIZE, 0, "max-headers", "64",
     "request header lines, else 431", 1, 256, NULL, 0, 0},
    {"server.send_max", K_SIZE, SO(send_max), ST_SIZE, R_SHARED, "send-max", "sub_queue + 2 x max_message + 64KiB",
     "unsent bytes per connection before it is dropped with 1008", 1, (double)SIZE_MAX, NULL, 0, 0},
    {"server.send_high_water", K_SIZE, SO(send_high_water), ST_SIZE, R_SHARED, "send-high-water",
     "64KiB, at most sub_queue / 4", "queued bytes that arm on_drain", 1, (double)SIZE_MAX, NULL, 0, 0},
    {"server.handshake_timeout", K_MS, SO(handshake_timeout_ms), ST_UINT, R_SHARED, "handshake-timeout", "10s",
     "accept to upgrade, TLS included", 1, 4294967294.0, NULL, 0, 0},
    {"server.close_timeout", K_MS, SO(close_timeout_ms), ST_UINT, R_SHARED, "close-timeout", "5s",
     "wait for the peer's close frame / EOF", 1, 4294967294.0, NULL, 0, 0},
    {"server.idle_timeout", K_MS, SO(idle_timeout_ms), ST_UINT, R_SHARED | R_OFF | R_ZERO, "idle-timeout", "off",
     "close 1001 after no frame for this long", 1, 4294967294.0, NULL, 0, 0},
    {"server.ping_interval", K_MS, SO(ping_interval_ms), ST_UINT, R_SHARED | R_OFF | R_ZERO, "ping-interval", "30s",
     "heartbeat ping period", 1, 4294967294.0, NULL, UINT32_MAX, UINT32_MAX},
    {"server.pong_timeout", K_MS, SO(pong_timeout_ms), ST_UINT, R_SHARED, "pong-timeout", "10s",
     "drop a peer that does not answer a ping", 1, 4294967294.0, NULL, 0, 0},
    {"server.max_conns_per_ip", K_NUM, SO(max_conns_per_ip), ST_SIZE, R_OFF, "max-conns-per-ip", "off",
     "live connections per client address, shared out among workers; over it: 503 (TLS: TCP close)", 1, G30, NULL,
     0, 0},
    {"server.max_handshaking", K_NUM, SO(max_handshaking), ST_SIZE, R_OFF, "max-handshaking", "1024",
     "connections per worker not upgraded yet; over it: TCP close at accept", 1, G30, NULL, SIZE_MAX, 0},
    {"server.max_http_body", K_SIZE, SO(max_http_body), ST_SIZE, 0, "max-http-body", "1MiB",
     "plain HTTP request body, else 413", 1, (double)SIZE_MAX, NULL, 0, 0},
    {"server.http_keepalive", K_MS, SO(http_keepalive_ms), ST_UINT, R_OFF | R_ZERO, "http-keepalive", "5s",
     "idle wait for the next HTTP request on a connection (off: close after each answer)", 1, 4294967294.0, NULL,
     UINT32_MAX, UINT32_MAX},
    {"server.http_max_requests", K_NUM, SO(http_max_requests), ST_UINT, 0, "http-max-requests", "1000",
     "HTTP requests per connection", 1, G30, NULL, 0, 0},
    /* gateway */
    {"gateway.history", K_NUM, GO(history_count), ST_SIZE, R_ZERO, "history", "1000",
     "messages retained per topic, 0 for none", 1, 16777216, NULL, 0, SIZE_MAX},
    {"gateway.history_age", K_MS, GO(history_age_ms), ST_U64, R_OFF, "history-age", "10m",
     "retained for at most this long, off for no bound", 1, 4294967294.0, NULL, UINT64_MAX, 0},
    {"gateway.slow_policy", K_ENUM, GO(slow_policy), ST_INT, 0, "slow-policy", "disconnect",
     "disconnect (close 1013) or drop-oldest (JSON: gap notice; raw, SSE: disconnect)", 0, 0, slow_names, 0, 0},
    {"gateway.sub_queue", K_SIZE, GO(sub_queue), ST_SIZE, 0, "sub-queue", "1MiB",
     "queued bytes past which a subscriber is slow", 1024, (double)SIZE_MAX, NULL, 0, 0},
    {"gateway.max_subs", K_NUM, GO(max_subs), ST_SIZE, 0, "max-subs", "100",
     "subscriptions per connection, else err 4413 / HTTP 400", 1, 100000, NULL, 0, 0},
    {"gateway.max_inflight", K_NUM, GO(max_inflight), ST_UINT, 0, "max-inflight", "256",
     "publishes per connection awaiting sequencing before its reading pauses", 1, 1048576, NULL, 0, 0},
    {"gateway.sse_heartbeat", K_MS, GO(sse_heartbeat_ms), ST_UINT, 0, "sse-heartbeat", "15s",
     "comment line on an idle SSE stream", 1, 4294967294.0, NULL, 0, 0},
    {"gateway.demo", K_BOOL, GO(demo), ST_INT, R_NOARG, "demo", "false", "publish a ticker on demo.ticker", 0, 0,
     NULL, 0, 0},
    {"gateway.demo_interval", K_MS, GO(demo_interval_ms), ST_UINT, 0, "demo-interval", "1s", "ticker period", 1,
     4294967294.0, NULL, 0, 0},
    /* the Redis bus (docs/gateway.md "The Redis bus") */
    {"cluster.redis", K_SECRET, GO(redis_url), ST_STR, R_JOIN, "redis", "none (one node)",
     "Redis URL shared by every node: redis://[user:pass@]host[:port][/db], rediss://... (TLS) or unix:///path[?db=N&password=P]; "
     "several, comma-separated (YAML: a list; flag: repeat), shard the topics over independent servers", 0, 0, NULL, 0, 0},
    {"cluster.redis_cluster", K_BOOL, GO(redis_cluster), ST_INT, R_NOARG, "redis-cluster", "false",
     "the --redis URLs are seed nodes of a Redis Cluster (Redis 7): topics routed by slot, sharded pub/sub", 0, 0,
     NULL, 0, 0},
    {"cluster.redis_pending_max", K_SIZE, GO(redis_pending_max), ST_SIZE, 0, "redis-pending-max", "64MiB",
     "payload bytes of publishes awaiting Redis; past it 503", 1024, (double)SIZE_MAX, NULL, 0, 0},
    {"cluster.presence_ttl", K_MS, GO(presence_ttl_ms), ST_UINT, 0, "presence-ttl", "15s",
     "a dead node's presence entries and user counts expire within this", 300, 4294967294.0, NULL, 0, 0},
    {"cluster.redis_tls_ca", K_FILE, GO(redis_tls_ca), ST_STR, 0, "redis-tls-ca", "system store",
     "rediss://: PEM CA certificates the Redis server's certificate must chain to", 0, 0, NULL, 0, 0},
    {"cluster.redis_tls_cert", K_FILE, GO(redis_tls_cert), ST_STR, 0, "redis-tls-cert", "none",
     "rediss://: PEM client certificate for Redis's tls-auth-clients (with --redis-tls-key)", 0, 0, NULL, 0, 0},
    {"cluster.redis_tls_key", K_FILE, GO(redis_tls_key), ST_STR, 0, "redis-tls-key", "none",
     "rediss://: the client certificate's PEM private key", 0, 0, NULL, 0, 0},
    /* permessage-deflate (docs/deflate.md) */
    {"compression.deflate", K_PMD, APP(deflate), ST_STR, R_OPTARG, "deflate", "on",
     "permessage-deflate: on, off (flag: --no-deflate), or the parameters the server asks for, e.g. "
     "\"server_no_context_takeover; client_max_window_bits=10\"", 0, 0, NULL, 0, 0},
    {"compression.min_size", K_SIZE, SO(deflate.min_size), ST_SIZE, 0, "deflate-min-size", "64",
     "messages shorter than this go uncompressed", 1, (double)SIZE_MAX, NULL, 0, 0},
    {"compression.mem_budget", K_SIZE, SO(deflate.mem_budget), ST_SIZE, 0, "deflate-mem-budget", "64MiB",
     "zlib memory per worker; past it new connections get no_context_takeover, then no compression", 1,
     (double)SIZE_MAX, NULL, 0, 0},
    {"gateway.drain", K_MS, GO(drain_ms), ST_UINT, R_RELOAD, "drain", "10s",
     "on shutdown: time queued messages get to flush before connections are closed", 1, 4294967294.0, NULL, 0, 0},
    {"gateway.reconnect_hint", K_MS, GO(reconnect_hint_ms), ST_UINT, R_RELOAD, "reconnect-hint", "2s",
     "retry delay put in the 1012 close reason (retry=MS)", 1, 4294967294.0, NULL, 0, 0},
    /* HTTP API keys */
    {"api.key", K_SECRET, GO(api_key), ST_STR, R_RELOAD, "api-key", "none",
     "Bearer key for /api/* (named \"default\"); none: /api/* answers 403", 0, 0, NULL, 0, 0},
    {"api.keys", K_SEQ, W_APP, 0, ST_NONE, R_RELOAD, NULL, "none", "named API keys: a list of {name, key}", 0, 0,
     NULL, 0, 0},
    {"api.keys[].name", K_STR, KEY(name), ST_STR, R_RELOAD, NULL, "none", "the name logs and metrics show", 0, 0,
     NULL, 0, 0},
    {"api.keys[].key", K_SECRET, KEY(key), ST_STR, R_RELOAD, NULL, "none", "the key", 0, 0, NULL, 0, 0},
    {"api.keys_file", K_FILE, GO(api_keys_file), ST_STR, R_RELOAD, "api-keys-file", "none",
     "file of \"name key\" lines, re-read on reload", 0, 0, NULL, 0, 0},
    /* authentication */
    {"auth.jwt_secret", K_SECRET, GO(auth.jwt_secret), ST_STR, R_RELOAD, "jwt-secret", "none",
     "HS256 shared secret", 0, 0, NULL, 0, 0},
    {"auth.jwt_key", K_FILE, GO(auth.jwt_public_key), ST_STR, R_RELOAD, "jwt-key", "none",
     "PEM public key file (RS256, ES256, EdDSA)", 0, 0, NULL, 0, 0},
    {"auth.jwks", K_FILE, GO(auth.jwks_file), ST_STR, R_RELOAD, "jwks", "none",
     "JSON Web Key Set file; the token's kid picks the key", 0, 0, NULL, 0, 0},
    {"auth.audience", K_STR, GO(auth.audience), ST_STR, R_RELOAD, "jwt-audience", "none (not checked)",
     "required aud", 0, 0, NULL, 0, 0},
    {"auth.issuer", K_STR, GO(auth.issuer), ST_STR, R_RELOAD, "jwt-issuer", "none (not checked)", "required iss", 0,
     0, NULL, 0, 0},
    {"auth.leeway", K_SECS, GO(auth.leeway_s), ST_UINT, R_RELOAD | R_ZERO, "jwt-leeway", "30s",
     "clock skew allowed on exp/nbf (whole seconds)", 0, 86400, NULL, 0, UINT32_MAX},
    {"auth.refresh_grace", K_MS, GO(auth.refresh_grace_ms), ST_UINT, R_RELOAD | R_OFF | R_ZERO, "refresh-grace",
     "off", "time after exp during which a refresh is still accepted", 1, 4294967294.0, NULL, 0, 0},
    {"auth.cookie", K_STR, GO(auth.cookie), ST_STR, R_RELOAD, "token-cookie", "none",
     "cookie holding the token", 0, 0, NULL, 0, 0},
    {"auth.anonymous", K_BOOL, GO(auth.anonymous), ST_INT, R_RELOAD | R_TRI, "anonymous",
     "true without a key, false with one", "anonymous connections allowed", 0, 0, NULL, 0, 0},
    {"auth.anonymous_publish", K_BOOL, GO(auth.anonymous_publish), ST_INT, R_RELOAD | R_TRI, "anonymous-publish",
     "true without a key, false with one", "anonymous connections may publish", 0, 0, NULL, 0, 0},
    /* origins */
    {"origins", K_LIST, W_APP, 0, ST_NONE, R_RELOAD, "origin", "none (Origin must match Host)",
     "allowed Origin values, exact or https://*.example.com (flag: repeat; env: comma-separated)", 0, 0, NULL, 0, 0},
    {"allow_no_origin", K_BOOL, GO(allow_no_origin), ST_INT, R_RELOAD | R_TRI, "allow-no-origin", "true",
     "requests without Origin (non-browser clients) allowed", 0, 0, NULL, 0, 0},
    /* limits */
    {"limits.conns_per_user", K_NUM, GO(limits.conns_per_user), ST_SIZE, R_RELOAD | R_OFF, "conns-per-user", "off",
     "live gateway connections per authenticated user, cluster-wide with --redis → 429", 1, G30, NULL, 0, 0},
    {"limits.conns_per_ip", K_NUM, GO(limits.conns_per_ip), ST_SIZE, R_RELOAD | R_OFF, "conns-per-ip", "1000",
     "live gateway connections per client address (IPv6: /64) → 429", 1, G30, NULL, SIZE_MAX, 0},
    {"limits.handshakes_per_ip", K_RATE, GO(limits.handshakes_per_ip), ST_DBL, R_RELOAD | R_OFF,
     "handshakes-per-ip", "200", "handshakes per second per client address → 429 + Retry-After", 0.001, 1e9,
     NULL, 0, 0},
    {"limits.handshake_burst", K_RATE, GO(limits.handshake_burst), ST_DBL, R_RELOAD, "handshake-burst",
     "= handshakes_per_ip", "handshake bucket size", 1, 1e9, NULL, 0, 0},
    {"limits.msg_rate", K_RATE, GO(limits.msg_rate), ST_DBL, R_RELOAD | R_OFF, "msg-rate", "1000",
     "messages per second per connection", 0.001, 1e9, NULL, 0, 0},
    {"limits.msg_burst", K_RATE, GO(limits.msg_burst), ST_DBL, R_RELOAD, "msg-burst", "= msg_rate",
     "message bucket size", 1, 1e9, NULL, 0, 0},
    {"limits.rate_policy", K_ENUM, GO(limits.rate_policy), ST_INT, R_RELOAD, "rate-policy", "pause",
     "over msg_rate: pause (stop reading), refuse (err 4429 / raw: close 1008), close (1008)", 0, 0, rate_names, 0,
     0},
    {"limits.max_topic", K_NUM, GO(limits.max_topic), ST_SIZE, R_RELOAD, "max-topic", "200",
     "bytes in a topic name or pattern → 4400 / 400", 1, 200, NULL, 0, 0},
    {"limits.max_api_body", K_SIZE, GO(limits.max_api_body), ST_SIZE, R_RELOAD, "max-api-body", "max_message",
     "bytes of an /api/publish body → 413", 1, (double)SIZE_MAX, NULL, 0, 0},
    /* namespaces (file only) */
    {"namespaces", K_SEQ, W_APP, 0, ST_NONE, R_RELOAD, NULL, "none",
     "per topic prefix settings: a list of mappings with a prefix; the longest matching prefix wins", 0, 0, NULL,
     0, 0},
    {"namespaces[].prefix", K_STR, NS(prefix), ST_STR, R_RELOAD | R_EMPTY, NULL, "required",
     "topic prefix, e.g. \"chat.\" (\"\" matches every topic)", 0, 0, NULL, 0, 0},
    {"namespaces[].history", K_NUM, NS(history_count), ST_SIZE, R_RELOAD | R_ZERO | R_OFF, NULL, "gateway.history",
     "messages retained per topic, 0 or off for none", 1, 16777216, NULL, SIZE_MAX, SIZE_MAX},
    {"namespaces[].history_age", K_MS, NS(history_age_ms), ST_U64, R_RELOAD | R_OFF, NULL, "gateway.history_age",
     "retained for at most this long, off for no bound", 1, 4294967294.0, NULL, UINT64_MAX, 0},
    {"namespaces[].publish", K_BOOL, NS(publish), ST_INT, R_RELOAD | R_TRI, NULL, "true (auth rules apply)",
     "clients may publish", 0, 0, NULL, 0, 0},
    {"namespaces[].presence", K_BOOL, NS(presence), ST_INT, R_RELOAD | R_TRI, NULL, "true", "presence tracked", 0,
     0, NULL, 0, 0},
    {"namespaces[].slow_policy", K_ENUM, NS(slow_policy), ST_INT, R_RELOAD | R_PLUS1, NULL, "gateway.slow_policy",
     "disconnect|drop-oldest", 0, 0, slow_names, 0, 0},
    {"namespaces[].msg_rate", K_RATE, NS(msg_rate), ST_DBL, R_RELOAD | R_OFF, NULL, "off",
     "publishes per second per connection into this namespace", 0.001, 1e9, NULL, 0, 0},
    {"namespaces[].msg_burst", K_RATE, NS(msg_burst), ST_DBL, R_RELOAD, NULL, "= msg_rate", "bucket size", 1, 1e9,
     NULL, 0, 0},
    {"namespaces[].rate_policy", K_ENUM, NS(rate_policy), ST_INT, R_RELOAD | R_PLUS1, NULL, "limits.rate_policy",
     "pause|refuse|close", 0, 0, rate_names, 0, 0},
    {"namespaces[].max_message", K_SIZE, NS(max_message), ST_SIZE, R_RELOAD, NULL, "server.max_message",
     "bytes of a message published into it", 1, (double)SIZE_MAX, NULL, 0, 0},
};
#define NROWS (sizeof schema / sizeof schema[0])

const row *cfg_find_row(const char *key)
{
    for (size_t i = 0; i < NROWS; i++)
        if (!strcmp(schema[i].key, key))
            return &schema[i];
    return NULL;
}

/* True when some row lies under `prefix` (a section such as "limits"). */
bool cfg_is_section(const char *prefix)
{
    size_t n = strlen(prefix);
    for (size_t i = 0; i < NROWS; i++)
        if (!strncmp(schema[i].key, prefix, n) && schema[i].key[n] == '.')
            return true;
    return false;
}

/* "DUPLEX_" + the flag in capitals, '-' as '_'. */
static void env_name(const row *r, char *out, size_t len)
{
    size_t k = (size_t)snprintf(out, len, "DUPLEX_");
    for (const char *p = r->flag; *p && k + 1 < len; p++)
        out[k++] = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
    out[k] = '\0';
}

/* ---- owned memory ---------------------------------------------------------- */

struct cfg_arena {
    cfg_arena *next;
    char s[];
};

static char *keep(serve_config *c, const char *s, size_t n)
{
    cfg_arena *a = malloc(sizeof *a + n + 1);
    if (!a)
        return NULL;
    memcpy(a->s, s, n);
    a->s[n] = '\0';
    a->next = c->arena;
    c->arena = a;
    return a->s;
}

void cfg_free(serve_config *c)
{
    while (c->arena) {
        cfg_arena *n = c->arena->next;
        free(c->arena);
        c->arena = n;
    }
    free(c->certs);
    free(c->origins);
    free(c->keys);
    free(c->ns);
    free(c->src);
    free(c->line);
    memset(c, 0, sizeof *c);
}

/* Grows *arr (elements of `size`) by one zeroed element; NULL on ENOMEM. */
void *cfg_push(void *arr, size_t *n, size_t size)
{
    char *p = realloc(*(void **)arr, (*n + 1) * size);
    if (!p)
        return NULL;
    memset(p + *n * size, 0, size);
    *(void **)arr = p;
    return p + (*n)++ * size;
}

/* ---- values ---------------------------------------------------------------- */


/* An error is one line: control characters a value brought (a YAML
 * scalar folded over lines, a tab) are written as \n, \t or \xHH. */
void cfg_one_line(char *err, size_t errlen)
{
    char tmp[1024];
    size_t j = 0;
    for (size_t i = 0; err[i] && j + 5 < sizeof tmp; i++) {
        unsigned char ch = (unsigned char)err[i];
        if (ch == '\n' || ch == '\t' || ch == '\r')
            j += (size_t)snprintf(tmp + j, sizeof tmp - j, "\\%c", ch == '\n' ? 'n' : ch == '\t' ? 't' : 'r');
        else if (ch < 0x20 || ch == 0x7f)
            j += (size_t)snprintf(tmp + j, sizeof tmp - j, "\\x%02x", ch);
        else
            tmp[j++] = (char)ch;
    }
    tmp[j] = '\0';
    snprintf(err, errlen, "%s", tmp);
}

int cfg_fail(build *b, const origin *o, const char *key, const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (o->src == CFG_SRC_FILE)
        snprintf(b->err, b->errlen, "%s:%u: %s: %s", o->file, o->line, key, msg);
    else if (o->src == CFG_SRC_ENV)
        snprintf(b->err, b->errlen, "env %s: %s: %s", o->env, key, msg);
    else if (o->src == CFG_SRC_FLAG)
        snprintf(b->err, b->errlen, "serve: --%s %s", o->flag, msg);
    else
        snprintf(b->err, b->errlen, "%s: %s", key, msg);
    cfg_one_line(b->err, b->errlen);
    return -1;
}

/* Flags keep the CLI's message (cli_bad_value). */
static int fail_flag(build *b, const origin *o, const char *val)
{
    snprintf(b->err, b->errlen, "serve: invalid value for --%s: '%s' (see duplex serve --help)", o->flag, val);
    cfg_one_line(b->err, b->errlen);
    return -1;
}

const char *cfg_expected(const row *r, char *buf, size_t len)
{
    const char *off = r->fl & R_OFF ? " or off" : "";
    switch (r->kind) {
    case K_NUM:
        snprintf(buf, len, "a whole number from %.0f to %.0f%s", (r->fl & R_ZERO) ? 0.0 : r->min, r->max, off);
        break;
    case K_SIZE:
        snprintf(buf, len, "a size (bytes, or a number with k/KiB, M/MiB, G/GiB) of at least %.0f%s%s", r->min,
                 r->max < 1e18 ? " and at most " : "", r->max < 1e18 ? "1MiB" : "");
        break;
    case K_MS:
        snprintf(buf, len, "a duration (a number with ms, s or m)%s%s",
                 (r->fl & R_ZERO) ? " or 0" : " above 0", off);
        break;
    case K_SECS:
        snprintf(buf, len, "a duration in whole seconds (e.g. 30s, up to 86400s)");
        break;
    case K_RATE:
        snprintf(buf, len, "a number >= %g%s", r->min < 1 ? 0.0 : r->min, off);
        if (r->min < 1)
            snprintf(buf, len, "a number > 0%s", off);
        break;
    case K_BOOL:
        snprintf(buf, len, "true, false, on or off");
        break;
    case K_ENUM: {
        size_t k = (size_t)snprintf(buf, len, "one of");
        for (size_t i = 0; r->names[i] && k < len; i++)
            k += (size_t)snprintf(buf + k, len - k, "%s %s", i ? "," : "", r->names[i]);
        break;
    }
    case K_FILE:
        snprintf(buf, len, "a readable file");
        break;
    case K_DIR:
        snprintf(buf, len, "a directory");
        break;
    case K_PMD:
        snprintf(buf, len, "on, off, or permessage-deflate parameters (docs/deflate.md)");
        break;
    default:
        snprintf(buf, len, "a non-empty string");
        break;
    }
    return buf;
}

/* A decimal number: digits, an optional fraction. No sign, exponent,
 * hex, inf or nan. */
static int parse_decimal(const char *s, double *out)
{
    const char *p = s;
    if (!isdigit((unsigned char)*p))
        return -1;
    while (isdigit((unsigned char)*p))
        p++;
    if (*p == '.') {
        p++;
        if (!isdigit((unsigned char)*p))
            return -1;
        while (isdigit((unsigned char)*p))
            p++;
    }
    if (*p)
        return -1;
    *out = strtod(s, NULL);
    return isfinite(*out) ? 0 : -1;
}

static void store(void *base, const row *r, uint64_t u, double d, const char *s)
{
    char *f = (char *)base + r->off;
    switch (r->store) {
    case ST_SIZE: *(size_t *)f = (size_t)u; break;
    case ST_UINT: *(unsigned *)f = (unsigned)u; break;
    case ST_U64: *(uint64_t *)f = u; break;
    case ST_INT: *(int *)f = (int)u; break;
    case ST_DBL: *(double *)f = d; break;
    case ST_STR: *(const char **)f = s; break;
    default: break;
    }
}

/* Checks and stores scalar `val` of row r into base. */
int cfg_apply(build *b, const row *r, void *base, const char *key, const char *val, const origin *o)
{
    char exp[200];
    uint64_t u = 0;
    double d = 0;
    const char *s = NULL;
    bool off = !strcmp(val, "off");
    switch (r->kind) {
    case K_STR:
    case K_SECRET:
        if (!*val && !(r->fl & R_EMPTY))
            goto bad;
        if (!(s = keep(b->c, val, strlen(val))))
            return cfg_fail(b, o, key, "out of memory");
        break;
    case K_PMD: {
        dx_deflate_options tmp;
        memset(&tmp, 0, sizeof tmp);
        if (strcmp(val, "on") && !off && dx_deflate_options_parse(&tmp, val) != 0)
            goto bad;
        if (!(s = keep(b->c, val, strlen(val))))
            return cfg_fail(b, o, key, "out of memory");
        break;
    }
    case K_FILE:
    case K_DIR: {
        struct stat st;
        if (!*val)
            goto bad;
        if (stat(val, &st) != 0)
            return cfg_fail(b, o, key, "%s: %s", val, strerror(errno));
        if (r->kind == K_DIR && !S_ISDIR(st.st_mode))
            return cfg_fail(b, o, key, "%s is not a directory (give the directory that holds it)", val);
        if (r->kind == K_FILE) {
            if (S_ISDIR(st.st_mode))
                return cfg_fail(b, o, key, "%s is a directory, expected a file", val);
            if (!S_ISREG(st.st_mode)) /* a FIFO or a device would block or never end */
                return cfg_fail(b, o, key, "%s is not a regular file", val);
            int fd = open(val, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
            if (fd < 0)
                return cfg_fail(b, o, key, "cannot read %s: %s", val, strerror(errno));
            char byte;
            ssize_t n = read(fd, &byte, 1);
            int e = errno;
            close(fd);
            if (n < 0)
                return cfg_fail(b, o, key, "cannot read %s: %s", val, strerror(e));
            if (n == 0)
                return cfg_fail(b, o, key, "%s is empty", val);
        }
        if (!(s = keep(b->c, val, strlen(val))))
            return cfg_fail(b, o, key, "out of memory");
        break;
    }
    case K_NUM: {
        unsigned long v;
        if (off && (r->fl & R_OFF)) {
            u = r->offv;
        } else if (cli_parse_uint(val, 0, (unsigned long)r->max, &v) == 0 && (v >= r->min || (r->fl & R_ZERO))) {
            u = v == 0 ? r->zerov : v;
        } else {
            goto bad;
        }
        break;
    }
    case K_SIZE: {
        size_t v;
        if (off && (r->fl & R_OFF))
            u = r->offv;
        else if (cli_parse_size(val, &v) == 0 && (double)v >= r->min && (double)v <= r->max)
            u = v;
        else
            goto bad;
        break;
    }
    case K_MS:
    case K_SECS: {
        unsigned ms;
        if (off && (r->fl & R_OFF)) {
            u = r->offv;
            break;
        }
        if (off || cli_parse_ms(val, &ms) != 0)
            goto bad;
        if (r->kind == K_SECS) {
            if (ms % 1000 || ms / 1000 > r->max)
                goto bad;
            u = ms == 0 ? r->zerov : ms / 1000;
        } else if (ms == 0) {
            if (!(r->fl & R_ZERO))
                goto bad;
            u = r->zerov;
        } else {
            u = ms;
        }
        break;
    }
    case K_RATE:
        if (off && (r->fl & R_OFF)) {
            d = r->where == W_NS ? 0 : -1; /* a namespace's 0 is "none"; the gateway's -1 */
        } else if (parse_decimal(val, &d) != 0 || d < r->min || d > r->max) {
            goto bad;
        }
        break;
    case K_BOOL:
        if (!strcmp(val, "true") || !strcmp(val, "on"))
            u = 1;
        else if (!strcmp(val, "false") || off)
            u = (r->fl & R_TRI) ? (uint64_t)-1 : 0;
        else
            goto bad;
        break;
    case K_ENUM: {
        size_t i = 0;
        while (r->names[i] && strcmp(r->names[i], val))
            i++;
        if (!r->names[i])
            goto bad;
        u = i + ((r->fl & R_PLUS1) ? 1 : 0);
        break;
    }
    default:
        return cfg_fail(b, o, key, "not a scalar key");
    }
    store(base, r, u, d, s);
    return 0;
bad:
    if (o->src == CFG_SRC_FLAG)
        return fail_flag(b, o, val);
    return cfg_fail(b, o, key, "expected %s, got \"%s\"", cfg_expected(r, exp, sizeof exp), val);
}

void *cfg_row_base(serve_config *c, const row *r)
{
    switch (r->where) {
    case W_SO: return &c->so;
    case W_GO: return &c->go;
    default: return c;
    }
}

size_t cfg_row_index(const row *r) { return (size_t)(r - schema); }

void cfg_mark(build *b, const row *r, const origin *o)
{
    b->c->src[cfg_row_index(r)] = (unsigned char)o->src;
    b->c->line[cfg_row_index(r)] = o->line;
}

/* A list value (origins) from one source: the first value a source gives
 * replaces the lower sources' list. */
int cfg_list_add(build *b, const row *r, const char *val, size_t n, const origin *o)
{
    serve_config *c = b->c;
    if (b->list_src[cfg_row_index(r)] != o->src) {
        c->norigins = 0;
        b->list_src[cfg_row_index(r)] = (unsigned char)o->src;
    }
    if (n == 0)
        return o->src == CFG_SRC_FLAG ? fail_flag(b, o, "") : cfg_fail(b, o, r->key, "an empty origin");
    const char **slot = cfg_push(&c->origins, &c->norigins, sizeof *c->origins);
    if (!slot || !(*slot = keep(c, val, n)))
        return cfg_fail(b, o, r->key, "out of memory");
    cfg_mark(b, r, o);
    return 0;
}

/* A TLS certificate or key from the environment or a flag: the i-th cert
 * pairs with the i-th key of the same source. */
static int tls_add(build *b, const row *r, const char *val, const origin *o)
{
    serve_config *c = b->c;
    const row *seq = cfg_find_row("listen.tls");
    if (b->list_src[cfg_row_index(seq)] != o->src) {
        c->ncerts = 0;
        b->tls_certs = b->tls_keys = 0;
        b->list_src[cfg_row_index(seq)] = (unsigned char)o->src;
    }
    bool cert = r->off == offsetof(dx_tls_cert, cert_file);
    size_t *have = cert ? &b->tls_certs : &b->tls_keys;
    if (*have == MAX_CERTS)
        return o->src == CFG_SRC_FLAG ? fail_flag(b, o, cert ? "more than 16 certificates" : "more than 16 keys")
                                      : cfg_fail(b, o, r->key, "more than %d certificates", MAX_CERTS);
    if (*have == c->ncerts && !cfg_push(&c->certs, &c->ncerts, sizeof *c->certs))
        return cfg_fail(b, o, r->key, "out of memory");
    char key[64];
    snprintf(key, sizeof key, "listen.tls[%zu].%s", *have, cert ? "cert" : "key");
    if (cfg_apply(b, r, &c->certs[*have], key, val, o))
        return -1;
    (*have)++;
    cfg_mark(b, seq, o);
    return 0;
}

/* A value from the environment or a flag for row r. */
static int apply_src(build *b, const row *r, const char *val, const origin *o)
{
    if (r->kind == K_LIST || r->where == W_TLS) {
        /* the environment gives lists comma-separated; a flag one value */
        const char *p = val;
        for (;;) {
            const char *e = o->src == CFG_SRC_ENV ? strchr(p, ',') : NULL;
            size_t n = e ? (size_t)(e - p) : strlen(p);
            char tmp[4096];
            if (n >= sizeof tmp)
                return cfg_fail(b, o, r->key, "value too long");
            memcpy(tmp, p, n);
            tmp[n] = '\0';
            if (r->kind == K_LIST ? cfg_list_add(b, r, tmp, n, o) : tls_add(b, r, tmp, o))
                return -1;
            if (!e)
                return 0;
            p = e + 1;
        }
    }
    const char *prev = r->store == ST_STR ? *(const char **)((char *)cfg_row_base(b->c, r) + r->off) : NULL;
    if ((r->fl & R_JOIN) && o->src == CFG_SRC_FLAG && b->c->src[cfg_row_index(r)] == CFG_SRC_FLAG && prev && *val) {
        /* the flag repeated: the values joined with commas (--redis A --redis B) */
        char joined[8192];
        size_t pl = strlen(prev), vl = strlen(val);
        if (pl + vl + 2 > sizeof joined)
            return cfg_fail(b, o, r->key, "value too long");
        memcpy(joined, prev, pl);
        joined[pl] = ',';
        memcpy(joined + pl + 1, val, vl + 1);
        if (cfg_apply(b, r, cfg_row_base(b->c, r), r->key, joined, o))
            return -1;
        cfg_mark(b, r, o);
        return 0;
    }
    if (cfg_apply(b, r, cfg_row_base(b->c, r), r->key, val, o))
        return -1;
    cfg_mark(b, r, o);
    return 0;
}

/* ---- the command line -------------------------------------------------------- */

struct cfg_flag {
    const row *r;
    const char *val;
    const char *name;
};

/* The shared options (cli.c) land here, each starting at a value no check
 * lets through, so the ones given are known after parsing. */
typedef struct shared_vals {
    size_t max_message, max_fragments, send_max, send_high_water;
    unsigned hs, close, idle, ping, pong;
    int level, format;
} shared_vals;
#define UNSET_SIZE ((size_t)-2)
#define UNSET_MS ((unsigned)-2)
#define UNSET_INT (-100)

enum { O_CONFIG = 0x3000, O_CHECK, O_HELP_CONFIG, O_NO_DEFLATE, O_NAMESPACE, O_ROW = 0x3100 };

int cfg_parse_args(serve_args *a, int argc, char **argv)
{
    memset(a, 0, sizeof *a);
    shared_vals *sh = calloc(1, sizeof *sh);
    if (!sh)
        return CLI_USAGE;
    a->shared = sh;
    sh->max_message = sh->max_fragments = sh->send_max = sh->send_high_water = UNSET_SIZE;
    sh->hs = sh->close = sh->idle = sh->ping = sh->pong = UNSET_MS;
    sh->level = sh->format = UNSET_INT;
    const cli_common common = {
        .prefix = "serve", .cmd = "serve",
        .max_message = &sh->max_message, .max_fragments = &sh->max_fragments,
        .send_max = &sh->send_max, .send_high_water = &sh->send_high_water,
        .handshake_timeout_ms = &sh->hs, .close_timeout_ms = &sh->close,
        .idle_timeout_ms = &sh->idle, .ping_interval_ms = &sh->ping,
        .pong_timeout_ms = &sh->pong, .log_level = &sh->level, .log_format = &sh->format,
    };
    struct option own[NROWS + 8];
    size_t n = 0;
    for (size_t i = 0; i < NROWS; i++)
        if (schema[i].flag && !(schema[i].fl & R_SHARED))
            own[n++] = (struct option){schema[i].flag,
                                       (schema[i].fl & R_NOARG)    ? no_argument
                                       : (schema[i].fl & R_OPTARG) ? optional_argument
                                                                   : required_argument,
                                       0, O_ROW + (int)i};
    own[n++] = (struct option){"config", required_argument, 0, O_CONFIG};
    own[n++] = (struct option){"check-config", no_argument, 0, O_CHECK};
    own[n++] = (struct option){"help-config", no_argument, 0, O_HELP_CONFIG};
    own[n++] = (struct option){"no-deflate", no_argument, 0, O_NO_DEFLATE};
    own[n++] = (struct option){"namespace", required_argument, 0, O_NAMESPACE};
    own[n++] = (struct option){"help", no_argument, 0, 'h'};
    own[n] = (struct option){0, 0, 0, 0};
    int ch;
    const char *name;
    optind = 1;
    while ((ch = cli_getopt(&common, argc, argv, "h", own, &name)) != -1) {
        if (ch == CLI_BAD)
            return CLI_USAGE;
        if (ch == 'h') {
            a->help = 1;
        } else if (ch == O_HELP_CONFIG) {
            a->help_config = 1;
        } else if (ch == O_CONFIG) {
            a->config = optarg;
        } else if (ch == O_CHECK) {
            a->check = 1;
        } else if (ch == O_NAMESPACE) {
            const char **slot = cfg_push(&a->nsflags, &a->nnsflags, sizeof *a->nsflags);
            if (!slot) {
                fprintf(stderr, "serve: out of memory\n");
                return CLI_USAGE;
            }
            *slot = optarg;
        } else if (ch == O_NO_DEFLATE || (ch >= O_ROW && ch < O_ROW + (int)NROWS)) {
            cfg_flag *f = cfg_push(&a->flags, &a->nflags, sizeof *a->flags);
            if (!f) {
                fprintf(stderr, "serve: out of memory\n");
                return CLI_USAGE;
            }
            if (ch == O_NO_DEFLATE) { /* --deflate=off */
                f->r = cfg_find_row("compression.deflate");
                f->val = "off";
                f->name = name;
                continue;
            }
            f->r = &schema[ch - O_ROW];
            f->val = (f->r->fl & R_NOARG) ? "true" : (f->r->fl & R_OPTARG) && !optarg ? "on" : optarg;
            f->name = name;
        } else {
            return -1; /* getopt said why; the caller prints the usage */
        }
    }
    if (optind < argc) {
        fprintf(stderr, "serve: unexpected argument '%s'\n", argv[optind]);
        return CLI_USAGE;
    }
    return 0;
}

void cfg_args_free(serve_args *a)
{
    free(a->flags);
    free(a->nsflags);
    free(a->shared);
    memset(a, 0, sizeof *a);
}

/* The shared options given on the command line, already checked by cli.c. */
static void apply_shared(build *b, const shared_vals *sh)
{
    serve_config *c = b->c;
    const origin o = {.src = CFG_SRC_FLAG};
    struct {
        const char *key;
        int given;
    } given[] = {
        {"server.max_message", sh->max_message != UNSET_SIZE},
        {"server.max_fragments", sh->max_fragments != UNSET_SIZE},
        {"server.send_max", sh->send_max != UNSET_SIZE},
        {"server.send_high_water", sh->send_high_water != UNSET_SIZE},
        {"server.handshake_timeout", sh->hs != UNSET_MS},
        {"server.close_timeout", sh->close != UNSET_MS},
        {"server.idle_timeout", sh->idle != UNSET_MS},
        {"server.ping_interval", sh->ping != UNSET_MS},
        {"server.pong_timeout", sh->pong != UNSET_MS},
        {"log.level", sh->level != UNSET_INT},
        {"log.format", sh->format != UNSET_INT},
    };
    if (given[0].given) c->so.max_message = sh->max_message;
    if (given[1].given) c->so.max_fragments = sh->max_fragments;
    if (given[2].given) c->so.send_max = sh->send_max;
    if (given[3].given) c->so.send_high_water = sh->send_high_water;
    if (given[4].given) c->so.handshake_timeout_ms = sh->hs;
    if (given[5].given) c->so.close_timeout_ms = sh->close;
    if (given[6].given) c->so.idle_timeout_ms = sh->idle;
    if (given[7].given) c->so.ping_interval_ms = sh->ping;
    if (given[8].given) c->so.pong_timeout_ms = sh->pong;
    if (given[9].given) c->log_level = sh->level;
    if (given[10].given) c->log_format = sh->format;
    for (size_t i = 0; i < sizeof given / sizeof given[0]; i++)
        if (given[i].given)
            cfg_mark(b, cfg_find_row(given[i].key), &o);
}

/* --namespace PREFIX[,key=value...] (',' is not a topic character): the
 * flags replace the file's list. Keys are the file's, with '-' for '_' and
 * rate / burst for msg_rate / msg_burst; values are checked by the same rows. */
static int ns_flags(build *b, const serve_args *a)
{
    serve_config *c = b->c;
    const row *seq = cfg_find_row("namespaces");
    c->nns = 0;
    for (size_t i = 0; i < a->nnsflags; i++) {
        origin o = {.src = CFG_SRC_FLAG, .flag = "namespace"};
        char buf[1024];
        size_t len = strlen(a->nsflags[i]);
        if (len >= sizeof buf)
            return fail_flag(b, &o, a->nsflags[i]);
        memcpy(buf, a->nsflags[i], len + 1);
        dx_gateway_namespace *ns = cfg_push(&c->ns, &c->nns, sizeof *c->ns);
        if (!ns)
            return cfg_fail(b, &o, "namespaces", "out of memory");
        char *save = NULL, *rest = strchr(buf, ',');
        if (rest)
            *rest++ = '\0';
        if (!(ns->prefix = keep(c, buf, strlen(buf))))
            return cfg_fail(b, &o, "namespaces", "out of memory");
        for (size_t j = 0; j + 1 < c->nns; j++)
            if (!strcmp(c->ns[j].prefix, ns->prefix))
                return cfg_fail(b, &o, "namespaces", "prefix \"%s\" given twice", ns->prefix);
        for (char *kv = rest ? strtok_r(rest, ",", &save) : NULL; kv; kv = strtok_r(NULL, ",", &save)) {
            char *v = strchr(kv, '=');
            if (!v)
                return cfg_fail(b, &o, "namespaces", "expected key=value, got \"%s\"", kv);
            *v++ = '\0';
            char key[64];
            snprintf(key, sizeof key, "namespaces[].%s", !strcmp(kv, "rate") ? "msg_rate" : !strcmp(kv, "burst") ? "msg_burst" : kv);
            for (char *p = key; *p; p++)
                if (*p == '-')
                    *p = '_';
            const row *r = cfg_find_row(key);
            if (!r || r->where != W_NS || !strcmp(key, "namespaces[].prefix"))
                return cfg_fail(b, &o, "namespaces", "unknown namespace key \"%s\"", kv);
            char dkey[96];
            snprintf(dkey, sizeof dkey, "namespaces[%zu].%s", c->nns - 1, key + strlen("namespaces[]."));
            if (cfg_apply(b, r, ns, dkey, v, &o))
                return -1;
        }
    }
    cfg_mark(b, seq, &(origin){.src = CFG_SRC_FLAG, .flag = "namespace"});
    return 0;
}

/* ---- building ---------------------------------------------------------------- */

int cfg_build(serve_config *c, const serve_args *a, char *err, size_t errlen)
{
    memset(c, 0, sizeof *c);
    err[0] = '\0';
    unsigned char list_src[NROWS] = {0};
    build b = {.c = c, .err = err, .errlen = errlen, .list_src = list_src};
    c->src = calloc(NROWS, 1);
    c->line = calloc(NROWS, sizeof *c->line);
    if (!c->src || !c->line) {
        snprintf(err, errlen, "serve: out of memory");
        return -1;
    }
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    c->workers = ncpu > 0 ? (unsigned)ncpu : 1;
    c->procs = 1;
    c->log_level = DX_LOG_INFO;
    c->log_format = CLI_LOG_TEXT;
    c->deflate = "on"; /* duplex serve compresses by default (docs/deflate.md) */

    const char *file = a->config;
    if (!file) {
        const char *e = getenv("DUPLEX_CONFIG");
        if (e && *e)
            file = e;
    }
    if (file) {
        if (!(c->file = keep(c, file, strlen(file)))) {
            snprintf(err, errlen, "serve: out of memory");
            return -1;
        }
        if (cfg_load_file(&b, c->file))
            return -1;
    }
    /* the environment: every key with a flag */
    for (size_t i = 0; i < NROWS; i++) {
        const row *r = &schema[i];
        if (!r->flag)
            continue;
        char env[64];
        env_name(r, env, sizeof env);
        const char *v = getenv(env);
        if (!v || !*v)
            continue;
        origin o = {.src = CFG_SRC_ENV, .env = env};
        if (apply_src(&b, r, v, &o))
            return -1;
    }
    for (size_t i = 0; i < a->nflags; i++) {
        origin o = {.src = CFG_SRC_FLAG, .flag = a->flags[i].name};
        if (apply_src(&b, a->flags[i].r, a->flags[i].val, &o))
            return -1;
    }
    apply_shared(&b, a->shared);
    if (a->nnsflags && ns_flags(&b, a))
        return -1;
    /* compression.deflate (checked by apply): the server options */
    size_t pmd_min = c->so.deflate.min_size, pmd_budget = c->so.deflate.mem_budget;
    if (c->deflate && !strcmp(c->deflate, "off")) {
        c->so.deflate.enable = 0;
    } else {
        if (c->deflate && strcmp(c->deflate, "on"))
            (void)dx_deflate_options_parse(&c->so.deflate, c->deflate);
        c->so.deflate.enable = 1;
    }
    c->so.deflate.min_size = pmd_min;
    c->so.deflate.mem_budget = pmd_budget;

    /* across keys */
    const row *tls = cfg_find_row("listen.tls");
    unsigned char tls_src = list_src[cfg_row_index(tls)];
    if ((tls_src == CFG_SRC_ENV || tls_src == CFG_SRC_FLAG) && b.tls_certs != b.tls_keys) {
        if (tls_src == CFG_SRC_FLAG)
            snprintf(err, errlen, "serve: --tls-cert and --tls-key must come in pairs (%zu certificates, %zu keys)",
                     b.tls_certs, b.tls_keys);
        else
            snprintf(err, errlen,
                     "env DUPLEX_TLS_CERT, DUPLEX_TLS_KEY: listen.tls: certificates and keys must come in pairs "
                     "(%zu certificates, %zu keys)",
                     b.tls_certs, b.tls_keys);
        return -1;
    }
    if (c->so.send_high_water && c->so.send_max && c->so.send_high_water > c->so.send_max) {
        snprintf(err, errlen, "serve: --send-high-water must not exceed --send-max");
        return -1;
    }
    if (c->so.unix_path && c->so.host) {
        snprintf(err, errlen, "serve: --unix and --host do not go together");
        return -1;
    }
    int keysrc = (c->go.auth.jwt_secret != NULL) + (c->go.auth.jwt_public_key != NULL) +
                 (c->go.auth.jwks_file != NULL);
    if (keysrc > 1) {
        snprintf(err, errlen, "auth: give one of jwt_secret, jwt_key and jwks (--jwt-secret, --jwt-key, --jwks)");
        return -1;
    }
    c->so.tls = c->ncerts ? c->certs : NULL;
    c->so.n_tls = c->ncerts;
    c->go.origins = c->origins;
    c->go.n_origins = c->norigins;
    c->go.api_keys = c->keys;
    c->go.n_api_keys = c->nkeys;
    c->go.namespaces = c->ns;
    c->go.n_namespaces = c->nns;
    return 0;
}

/* ---- printing ---------------------------------------------------------------- */

static void fmt_size(char *buf, size_t len, uint64_t v)
{
    if (v && v % (1u << 30) == 0)
        snprintf(buf, len, "%lluGiB", (unsigned long long)(v >> 30));
    else if (v && v % (1u << 20) == 0)
        snprintf(buf, len, "%lluMiB", (unsigned long long)(v >> 20));
    else if (v && v % 1024 == 0)
        snprintf(buf, len, "%lluKiB", (unsigned long long)(v >> 10));
    else
        snprintf(buf, len, "%llu", (unsigned long long)v);
}

static void fmt_ms(char *buf, size_t len, uint64_t v)
{
    if (v && v % 60000 == 0)
        snprintf(buf, len, "%llum", (unsigned long long)(v / 60000));
    else if (v && v % 1000 == 0)
        snprintf(buf, len, "%llus", (unsigned long long)(v / 1000));
    else
        snprintf(buf, len, "%llums", (unsigned long long)v);
}

/* The value of row r stored at base, as a configuration file would spell it. */
static void fmt_value(const row *r, const void *base, char *buf, size_t len)
{
    const char *f = (const char *)base + r->off;
    uint64_t u = 0;
    double d = 0;
    const char *s = NULL;
    switch (r->store) {
    case ST_SIZE: u = *(const size_t *)f; break;
    case ST_UINT: u = *(const unsigned *)f; break;
    case ST_U64: u = *(const uint64_t *)f; break;
    case ST_INT: u = (uint64_t)(int64_t)*(const int *)f; break;
    case ST_DBL: d = *(const double *)f; break;
    case ST_STR: s = *(const char *const *)f; break;
    default: break;
    }
    if (r->store == ST_STR) {
        if (!s)
            snprintf(buf, len, "(none)");
        else if (r->kind == K_SECRET)
            snprintf(buf, len, "******** (set, %zu bytes)", strlen(s));
        else
            snprintf(buf, len, "\"%s\"", s);
        return;
    }
    if ((r->fl & R_OFF) && r->kind != K_RATE && u == r->offv) {
        snprintf(buf, len, "off");
        return;
    }
    if ((r->fl & R_ZERO) && u == r->zerov && r->zerov) {
        snprintf(buf, len, "0");
        return;
    }
    switch (r->kind) {
    case K_SIZE: fmt_size(buf, len, u); break;
    case K_MS: fmt_ms(buf, len, u); break;
    case K_SECS: snprintf(buf, len, "%llus", (unsigned long long)u); break;
    case K_RATE:
        if (d < 0 || (r->where == W_NS && d == 0 && r->fl & R_OFF))
            snprintf(buf, len, "off");
        else
            snprintf(buf, len, "%g", d);
        break;
    case K_BOOL: snprintf(buf, len, "%s", (int64_t)u == 1 ? "true" : "false"); break;
    case K_ENUM: {
        int64_t i = (int64_t)u - ((r->fl & R_PLUS1) ? 1 : 0);
        size_t n = 0;
        while (r->names[n])
            n++;
        snprintf(buf, len, "%s", i >= 0 && (size_t)i < n ? r->names[i] : "?");
        break;
    }
    default: snprintf(buf, len, "%llu", (unsigned long long)u); break;
    }
}

/* The value as --check-config prints it: a key left at its default shows
 * the default as documented. */
static void fmt_effective(const serve_config *c, const row *r, char *buf, size_t len)
{
    if (c->src[cfg_row_index(r)] == CFG_SRC_DEFAULT && r->where != W_APP)
        snprintf(buf, len, "%s", r->def);
    else
        fmt_value(r, cfg_row_base((serve_config *)c, r), buf, len);
}

static void fmt_source(const serve_config *c, const row *r, char *buf, size_t len)
{
    size_t i = cfg_row_index(r);
    char env[64];
    if (!r->flag && r->kind == K_SEQ && c->src[i] == CFG_SRC_FLAG && !strcmp(r->key, "namespaces")) {
        snprintf(buf, len, "flag --namespace");
        return;
    }
    if (!r->flag && r->kind == K_SEQ && c->src[i] > CFG_SRC_FILE)
        r = cfg_find_row("listen.tls[].cert"); /* the other list with a flag: its certificates' */
    switch (c->src[i]) {
    case CFG_SRC_FILE: snprintf(buf, len, "file %s:%u", c->file, c->line[i]); break;
    case CFG_SRC_ENV:
        env_name(r, env, sizeof env);
        snprintf(buf, len, "env %s", env);
        break;
    case CFG_SRC_FLAG: snprintf(buf, len, "flag --%s", r->flag); break;
    default: snprintf(buf, len, "default"); break;
    }
}

static void print_elem_rows(FILE *f, const char *seqkey, const char *dkey, const void *elem)
{
    size_t n = strlen(seqkey);
    for (size_t i = 0; i < NROWS; i++) {
        const row *r = &schema[i];
        if (strncmp(r->key, seqkey, n) || strncmp(r->key + n, "[].", 3))
            continue;
        char v[256];
        fmt_value(r, elem, v, sizeof v);
        bool unset = false;
        const char *fld = (const char *)elem + r->off;
        switch (r->store) {
        case ST_SIZE: unset = *(const size_t *)fld == 0; break;
        case ST_UINT: unset = *(const unsigned *)fld == 0; break;
        case ST_U64: unset = *(const uint64_t *)fld == 0; break;
        case ST_INT: unset = *(const int *)fld == 0; break;
        case ST_DBL: unset = *(const double *)fld == 0 && !(r->fl & R_OFF); break;
        case ST_STR: unset = *(const char *const *)fld == NULL; break;
        default: break;
        }
        if (unset)
            fprintf(f, "%s.%s: %s (default)\n", dkey, r->key + n + 3, r->def);
        else
            fprintf(f, "%s.%s: %s%s\n", dkey, r->key + n + 3, v, r->kind == K_FILE ? " (file)" : "");
    }
}

void cfg_print(const serve_config *c, FILE *f)
{
    fprintf(f, "# duplex serve: effective configuration (precedence: flag > env > file > default)\n");
    fprintf(f, "# file: %s\n", c->file ? c->file : "(none)");
    for (size_t i = 0; i < NROWS; i++) {
        const row *r = &schema[i];
        if (strchr(r->key, '['))
            continue; /* printed with their list */
        char src[300], v[256];
        fmt_source(c, r, src, sizeof src);
        if (r->kind == K_SEQ) {
            const void *arr = !strcmp(r->key, "listen.tls") ? (const void *)c->certs
                              : !strcmp(r->key, "api.keys") ? (const void *)c->keys
                                                            : (const void *)c->ns;
            size_t n = !strcmp(r->key, "listen.tls") ? c->ncerts : !strcmp(r->key, "api.keys") ? c->nkeys : c->nns;
            size_t size = !strcmp(r->key, "listen.tls") ? sizeof *c->certs
                          : !strcmp(r->key, "api.keys") ? sizeof *c->keys
                                                        : sizeof *c->ns;
            fprintf(f, "%s: %zu item%s  # %s\n", r->key, n, n == 1 ? "" : "s", src);
            for (size_t k = 0; k < n; k++) {
                char dk[64];
                snprintf(dk, sizeof dk, "%s[%zu]", r->key, k);
                print_elem_rows(f, r->key, dk, (const char *)arr + k * size);
            }
            continue;
        }
        if (r->kind == K_LIST) {
            fprintf(f, "%s: %zu item%s  # %s\n", r->key, c->norigins, c->norigins == 1 ? "" : "s", src);
            for (size_t k = 0; k < c->norigins; k++)
                fprintf(f, "%s[%zu]: \"%s\"\n", r->key, k, c->origins[k]);
            continue;
        }
        fmt_effective(c, r, v, sizeof v);
        fprintf(f, "%s: %s%s  # %s\n", r->key, v, r->kind == K_FILE && c->src[i] ? " (file)" : "", src);
    }
}

static const char *kind_name(const row *r)
{
    switch (r->kind) {
    case K_STR: return "string";
    case K_SECRET: return "secret";
    case K_FILE: return "file";
    case K_DIR: return "directory";
    case K_NUM: return "count";
    case K_SIZE: return "size";
    case K_MS: return "duration";
    case K_SECS: return "duration (s)";
    case K_RATE: return "rate";
    case K_BOOL: return "boolean";
    case K_ENUM: return "choice";
    case K_LIST: return "list of strings";
    case K_PMD: return "on|off|parameters";
    default: return "list of mappings";
    }
}

void cfg_print_schema(FILE *f)
{
    fprintf(f, "duplex serve: configuration keys (docs/configuration.md). Each key is read from the file given\n"
               "with --config FILE (or env DUPLEX_CONFIG), then from its environment variable, then its flag.\n\n");
    for (size_t i = 0; i < NROWS; i++) {
        const row *r = &schema[i];
        char env[64] = "-";
        char flag[64] = "(file only)";
        if (r->flag) {
            env_name(r, env, sizeof env);
            snprintf(flag, sizeof flag, "--%s", r->flag);
        }
        fprintf(f, "%-28s %-16s %-22s %-28s [%s]%s\n      %s\n", r->key, kind_name(r), flag, env, r->def,
                (r->fl & R_RELOAD) ? " reloadable" : " restart", r->help);
    }
}

size_t cfg_restart_diffs(const serve_config *old, const serve_config *neu,
                         void (*note)(void *ud, const char *key, const char *was, const char *now), void *ud)
{
    size_t n = 0;
    for (size_t i = 0; i < NROWS; i++) {
        const row *r = &schema[i];
        if ((r->fl & R_RELOAD) || r->kind == K_SEQ || r->kind == K_LIST || strchr(r->key, '['))
            continue;
        char a[256], b[256];
        fmt_effective(old, r, a, sizeof a);
        fmt_effective(neu, r, b, sizeof b);
        if (strcmp(a, b)) {
            note(ud, r->key, r->kind == K_SECRET ? "(secret)" : a, r->kind == K_SECRET ? "(secret)" : b);
            n++;
        }
    }
    return n;
}
