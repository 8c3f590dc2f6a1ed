/*
 * cmd/duplex/bench.c: `duplex bench URL`, the load generator: options,
 * worker processes, the phases of a run, live progress and the results.
 *
 * Layer: CLI, public headers only. The connections live in
 * bench_worker.c; this file never touches one. It decides when the
 * measurement window opens (every worker connected, plus the warm-up) and
 * closes, writes those times into shared memory, and merges what the
 * workers leave there (counters and histograms: no stored samples).
 *
 * Output: a summary on stdout, or with --json one line; progress on stderr
 * only when stderr is a terminal. Exit 0 when no error was counted, 1
 * otherwise, 2 on bad usage.
 */
#define _GNU_SOURCE
#include "bench.h"
#include "cli.h"

#include "duplex/duplex.h"

#include <errno.h>
#include <getopt.h>
#include <arpa/inet.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define FD_RESERVE 64u        /* descriptors a worker needs besides its sockets */
#define POLL_NS 50000000L     /* coordinator period */
#define PROGRESS_NS 500000000ull

static volatile sig_atomic_t g_signal;
static void on_signal(int sig) { g_signal = sig; }

static void usage(FILE *f)
{
    fprintf(f,
            "usage: duplex bench [options] URL\n"
            "\n"
            "Load generator: opens connections to URL (ws:// or wss://) and measures.\n"
            "Workloads (default: echo, one message at a time):\n"
            "  -d, --depth D          echo with D messages in flight per connection [1]\n"
            "      --rate R           R messages/s per connection (at most --depth in flight [64]);\n"
            "                         with --subscribe: publishes/s in all\n"
            "      --subscribe TOPIC  gateway fan-out: the N connections subscribe to TOPIC in the\n"
            "                         raw dialect (URL?subscribe=TOPIC); one more connection\n"
            "                         publishes on it through the JSON dialect (duplex.v1) at\n"
            "                         --rate R messages/s in all [100]; every delivery is\n"
            "                         checked for order and gaps; latency is publish to deliver.\n"
            "                         URL is the gateway's /ws (ws://HOST:PORT/ws)\n"
            "      --idle             open the connections and hold them for --duration, no traffic\n"
            "                         (no heartbeat pings from the bench either)\n"
            "      --idle --subscribe TOPIC  hold subscribers of TOPIC (raw dialect) and count what others\n"
            "                         publish on it; a payload 'dxts NS' (NS: CLOCK_MONOTONIC ns at the\n"
            "                         publish, same machine) gives the publish-to-delivery time\n"
            "      --handshakes N     open + close N connections, --concurrency K at a time [8]\n"
            "\n"
            "options (sizes take K/M suffixes, times s/ms/m or seconds with a fraction):\n"
            "  -c, --conns N          connections, all processes together [100]\n"
            "      --size S           message payload bytes [16; --subscribe --text: 32 at least]\n"
            "      --text | --binary  message type [binary]\n"
            "  -t, --duration T       measured time [5s]\n"
            "      --warmup W         load before measuring, after every connection is open [1s]\n"
            "      --connect-rate C   new connections per second, all processes [20000]\n"
            "      --max-pending P    connections being set up at once, per process [256]\n"
            "      --sources K[@ADDR] connect from K loopback addresses counting up from ADDR\n"
            "                         [127.0.0.1], e.g. 40@127.0.1.1 (loopback URLs only, K <= 4096)\n"
            "                         [1 + N/4000 above 4000 connections, else the default]\n"
            "      --procs P          worker processes; each holds N/P connections [1]\n"
            "      --timeout T        give up opening connections after T [30s]\n"
            "      --ready-file F     --idle: create F once every connection is open\n"
            "      --json             one JSON line instead of the summary\n"
            "      --progress | --no-progress  live line on stderr [on when stderr is a terminal]\n"
            "      --deflate[=PARAMS] offer permessage-deflate (RFC 7692) with these parameters, e.g.\n"
            "                         --deflate='client_no_context_takeover; server_max_window_bits=10' [off]\n"
            "      --no-deflate       do not offer it [default]\n"
            "  -k, --insecure         wss: do not verify the certificate (tests only)\n"
            "      --ca F             wss: trust these PEM CAs (also --ca-file)\n"
            "      --log-level L      library log: error|warn|info|debug [warn]\n"
            "  -h, --help             this text\n"
            "\n"
            "Each echo is verified (opcode, length, every byte, order); a mismatch is an error.\n"
            "A process holds at most its descriptor limit of connections (often 20000):\n"
            "use --procs for more, and --sources to pass 64k connections to one server.\n"
            "Exit 0 without errors, 1 with errors, 2 on bad usage.\n");
}

/* "5", "1.5", "1.5s", "500ms", "2m": seconds. */
static int parse_seconds(const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || !(v >= 0) || !isfinite(v))
        return -1;
    if (!strcmp(end, "ms"))
        v /= 1000;
    else if (!strcmp(end, "m"))
        v *= 60;
    else if (*end && strcmp(end, "s"))
        return -1;
    *out = v;
    return 0;
}

/* --sources K or K@A.B.C.D: K loopback source addresses counting up from
 * A.B.C.D [127.0.0.1], all inside 127.0.0.0/8, K at most BENCH_SOURCES_MAX. */
#define BENCH_SOURCES_MAX 4096u
static int parse_sources(const char *s, bench_cfg *cfg)
{
    char *end;
    errno = 0;
    unsigned long k = strtoul(s, &end, 10);
    if (errno || end == s || k < 1 || k > BENCH_SOURCES_MAX)
        return -1;
    uint32_t base = 0x7F000001u;
    if (*end == '@') {
        struct in_addr in;
        if (inet_pton(AF_INET, end + 1, &in) != 1)
            return -1;
        base = ntohl(in.s_addr);
    } else if (*end) {
        return -1;
    }
    if ((base >> 24) != 127u || (base & 0x00FFFFFFu) + k - 1 > 0x00FFFFFEu)
        return -1;
    cfg->sources = (unsigned)k;
    cfg->source_base = base;
    return 0;
}

static int parse_double(const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v > 0) || !isfinite(v))
        return -1;
    *out = v;
    return 0;
}

/* The host of ws[s]://[user@]host[:port]/... into cfg->host. */
static int url_host(bench_cfg *cfg)
{
    const char *p = cfg->url;
    if (!strncmp(p, "ws://", 5))
        p += 5;
    else if (!strncmp(p, "wss://", 6))
        p += 6;
    else
        return -1;
    size_t n;
    if (*p == '[') {
        n = strcspn(p, "]");
        if (p[n] != ']')
            return -1;
        n++;
    } else {
        n = strcspn(p, ":/?#");
    }
    if (n == 0 || n >= sizeof cfg->host)
        return -1;
    memcpy(cfg->host, p, n);
    cfg->host[n] = 0;
    return 0;
}

static const char *mode_name(int m)
{
    static const char *const names[] = {"echo", "rate", "subscribe", "idle", "handshakes"};
    return names[m];
}

/* ---- the coordinator ------------------------------------------------------------ */

typedef struct coord {
    const bench_cfg *cfg;
    bench_shared *sh;
    pid_t *pids;         /* P > 1: the children */
    uint64_t t0;
    uint64_t t_connected; /* every connection settled (or the timeout) */
    double connect_s;
    bool timed_out;
    bool stopped_by_signal;
    bool progress_shown;
} coord;

static uint64_t sum_ctr(bench_shared *sh, unsigned procs, size_t off)
{
    uint64_t s = 0;
    for (unsigned i = 0; i < procs; i++)
        s += atomic_load_explicit((_Atomic uint64_t *)(void *)((char *)&sh->w[i].c + off), memory_order_relaxed);
    return s;
}
#define SUM(co, field) sum_ctr((co)->sh, (co)->cfg->procs, offsetof(bench_counters, field))

static uint64_t errors_now(const coord *co)
{
    return SUM(co, connect_failed) + SUM(co, handshake_failed) + SUM(co, err_verify) + SUM(co, err_closed) +
           SUM(co, err_send) + SUM(co, err_order) + SUM(co, err_missing) + SUM(co, err_publish);
}

static void write_ready_file(const bench_cfg *cfg, uint64_t opened)
{
    if (!cfg->ready_file)
        return;
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", cfg->ready_file);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return;
    fprintf(f, "%llu\n", (unsigned long long)opened);
    fclose(f);
    rename(tmp, cfg->ready_file); /* appears whole */
}

static void show_progress(coord *co, uint64_t now, uint64_t *last_t, uint64_t *last_out, uint64_t *last_in)
{
    const bench_cfg *cfg = co->cfg;
    uint64_t out = SUM(co, sent), in = SUM(co, received);
    double dt = (double)(now - *last_t) * 1e-9;
    double ro = dt > 0 ? (double)(out - *last_out) / dt : 0, ri = dt > 0 ? (double)(in - *last_in) / dt : 0;
    *last_t = now, *last_out = out, *last_in = in;
    uint64_t tm = atomic_load(&co->sh->t_measure), te = atomic_load(&co->sh->t_end);
    char phase[64];
    if (cfg->mode == BM_HANDSHAKES)
        snprintf(phase, sizeof phase, "%llu/%u handshakes", (unsigned long long)SUM(co, hs_ok), cfg->handshakes);
    else if (!tm)
        snprintf(phase, sizeof phase, "connecting %.1fs", (double)(now - co->t0) * 1e-9);
    else if (now < tm)
        snprintf(phase, sizeof phase, "warm-up");
    else if (now < te)
        snprintf(phase, sizeof phase, "measuring %.1f/%.1fs", (double)(now - tm) * 1e-9, (double)(te - tm) * 1e-9);
    else
        snprintf(phase, sizeof phase, "closing");
    fprintf(stderr, "\rduplex bench: %s | conns %llu open / %u | out %.0f/s in %.0f/s | errors %llu\033[K",
            phase, (unsigned long long)SUM(co, live), cfg->mode == BM_HANDSHAKES ? cfg->concurrency : cfg->conns,
            ro, ri, (unsigned long long)errors_now(co));
    co->progress_shown = true;
}

static bool all_done(const coord *co)
{
    for (unsigned i = 0; i < co->cfg->procs; i++)
        if (!atomic_load(&co->sh->w[i].done))
            return false;
    return true;
}

/* Reaps children that ended; one that died before `done` is an error. */
static void reap(coord *co)
{
    if (!co->pids)
        return;
    for (unsigned i = 0; i < co->cfg->procs; i++) {
        if (co->pids[i] <= 0)
            continue;
        int st;
        pid_t r = waitpid(co->pids[i], &st, WNOHANG);
        if (r != co->pids[i])
            continue;
        co->pids[i] = 0;
        bench_wstate *ws = &co->sh->w[i];
        if (!atomic_load(&ws->done)) {
            fprintf(stderr, "%sduplex bench: worker %u died (%s %d)\n", co->cfg->progress ? "\r\033[K" : "", i,
                    WIFSIGNALED(st) ? "signal" : "status", WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
            ws->exit_status = -1;
            atomic_store(&ws->done, 1);
        }
    }
}

static void coord_run(coord *co)
{
    const bench_cfg *cfg = co->cfg;
    bench_shared *sh = co->sh;
    uint64_t last_t = co->t0, last_out = 0, last_in = 0, last_hs = 0, t_hs_progress = co->t0;
    uint64_t next_progress = co->t0 + PROGRESS_NS;
    for (;;) {
        struct timespec d = {0, POLL_NS};
        nanosleep(&d, NULL);
        uint64_t now = bench_now_ns();
        reap(co);
        if (g_signal && !co->stopped_by_signal) {
            co->stopped_by_signal = true;
            uint64_t tm = atomic_load(&sh->t_measure);
            if (tm && now >= tm)
                atomic_store(&sh->t_end, now); /* report what was measured so far */
            else
                atomic_store(&sh->abort_run, 1);
        }
        if (cfg->mode == BM_HANDSHAKES) {
            uint64_t ok = SUM(co, hs_ok) + SUM(co, connect_failed) + SUM(co, handshake_failed);
            if (ok != last_hs)
                last_hs = ok, t_hs_progress = now;
            else if ((double)(now - t_hs_progress) * 1e-9 > cfg->timeout && !atomic_load(&sh->abort_run)) {
                fprintf(stderr, "%sduplex bench: no handshake finished for %.0f s; stopping\n", cfg->progress ? "\r\033[K" : "",
                        cfg->timeout);
                co->timed_out = true;
                atomic_store(&sh->abort_run, 1);
            }
        } else if (!atomic_load(&sh->t_measure) && !atomic_load(&sh->abort_run)) {
            bool connected = true;
            for (unsigned i = 0; i < cfg->procs; i++)
                if (!atomic_load(&sh->w[i].connected) && !atomic_load(&sh->w[i].done))
                    connected = false;
            bool late = (double)(now - co->t0) * 1e-9 > cfg->timeout;
            if (connected || late) {
                uint64_t opened = SUM(co, opened);
                co->t_connected = now;
                co->connect_s = (double)(now - co->t0) * 1e-9;
                if (late && !connected) {
                    co->timed_out = true;
                    fprintf(stderr, "%sduplex bench: %llu of %u connections open after %.0f s; measuring those\n",
                            cfg->progress ? "\r\033[K" : "", (unsigned long long)opened, cfg->conns, cfg->timeout);
                }
                if (opened == 0) {
                    fprintf(stderr, "%sduplex bench: no connection opened\n", cfg->progress ? "\r\033[K" : "");
                    atomic_store(&sh->abort_run, 1);
                } else {
                    double warm = cfg->mode == BM_IDLE ? 0 : cfg->warmup;
                    uint64_t tm = now + (uint64_t)(warm * 1e9);
                    atomic_store(&sh->t_end, tm + (uint64_t)(cfg->duration * 1e9));
                    atomic_store(&sh->t_measure, tm);
                    if (cfg->mode == BM_IDLE)
                        write_ready_file(cfg, opened);
                }
            }
        }
        if (all_done(co))
            break;
        if (cfg->progress && now >= next_progress) {
            show_progress(co, now, &last_t, &last_out, &last_in);
            next_progress = now + PROGRESS_NS;
        }
    }
    if (co->progress_shown)
        fprintf(stderr, "\r\033[K");
}

static void *coord_thread(void *arg)
{
    coord_run(arg);
    return NULL;
}

/* ---- results ---------------------------------------------------------------------- */

typedef struct totals {
    uint64_t started, opened, connect_failed, handshake_failed, err_verify, err_closed, err_send;
    uint64_t err_order, err_missing, err_publish, pub_acked, pub_final;
    uint64_t sent, received, hs_ok, w_sent, w_received, w_bytes, late, never_opened, dead;
    double cpu_s, window_s, span_s;
    bench_hist lat, hs;
    uint64_t errors;
} totals;

static void merge(const bench_cfg *cfg, const bench_shared *sh, totals *t)
{
    memset(t, 0, sizeof *t);
    uint64_t first = UINT64_MAX, last = 0;
    for (unsigned i = 0; i < cfg->procs; i++) {
        const bench_wstate *w = &sh->w[i];
        const bench_counters *c = &w->c;
        t->started += c->started;
        t->opened += c->opened;
        t->connect_failed += c->connect_failed;
        t->handshake_failed += c->handshake_failed;
        t->err_verify += c->err_verify;
        t->err_closed += c->err_closed;
        t->err_send += c->err_send;
        t->err_order += c->err_order;
        t->err_missing += c->err_missing;
        t->err_publish += c->err_publish;
        t->pub_acked += w->pub_acked;
        t->sent += c->sent;
        t->received += c->received;
        t->hs_ok += c->hs_ok;
        t->w_sent += w->w_sent;
        t->w_received += w->w_received;
        t->w_bytes += w->w_bytes;
        t->late += w->late;
        t->never_opened += w->never_opened;
        t->dead += w->exit_status != 0;
        t->cpu_s += w->cpu_s;
        if (w->window_s > t->window_s)
            t->window_s = w->window_s;
        if (w->t_first_start && w->t_first_start < first)
            first = w->t_first_start;
        if (w->t_all_done > last)
            last = w->t_all_done;
        bench_hist_merge(&t->lat, &w->lat);
        bench_hist_merge(&t->hs, &w->hs);
    }
    t->span_s = last > first ? (double)(last - first) * 1e-9 : 0;
    t->pub_final = atomic_load(&sh->pub_final);
    t->errors = t->connect_failed + t->handshake_failed + t->err_verify + t->err_closed + t->err_send +
                t->err_order + t->err_missing + t->err_publish + t->never_opened + t->dead;
    if (cfg->mode == BM_HANDSHAKES && t->hs_ok + t->connect_failed + t->handshake_failed < cfg->handshakes)
        t->errors += cfg->handshakes - (t->hs_ok + t->connect_failed + t->handshake_failed);
}

static double us(const bench_hist *h, double p) { return bench_hist_quantile(h, p) / 1e3; }

static void print_json(const bench_cfg *cfg, const coord *co, const totals *t)
{
    double s = t->window_s > 0 ? t->window_s : 1e300;
    printf("{\"tool\":\"duplex bench\",\"version\":\"%s\",\"mode\":\"%s\",\"url\":\"", dx_version(),
           mode_name(cfg->mode));
    for (const char *p = cfg->url; *p; p++) /* URLs have no control characters; escape the JSON ones */
        printf(*p == '"' || *p == '\\' ? "\\%c" : "%c", *p);
    printf("\",\"procs\":%u", cfg->procs);
    if (cfg->mode == BM_HANDSHAKES) {
        double span = t->span_s > 0 ? t->span_s : 1;
        printf(",\"n\":%u,\"concurrency\":%u,\"ok\":%llu,\"seconds\":%.3f,\"per_s\":%.0f", cfg->handshakes,
               cfg->concurrency, (unsigned long long)t->hs_ok, t->span_s, (double)t->hs_ok / span);
    } else {
        printf(",\"conns\":%u,\"open\":%llu,\"connect_s\":%.3f,\"seconds\":%.3f", cfg->conns,
               (unsigned long long)t->opened, co->connect_s, t->window_s);
        if (cfg->mode != BM_IDLE) {
            printf(",\"size\":%zu,\"text\":%s,\"depth\":%u", cfg->size, cfg->text ? "true" : "false", cfg->depth);
            if (cfg->mode == BM_RATE)
                printf(",\"rate\":%g,\"late\":%llu", cfg->rate, (unsigned long long)t->late);
            if (cfg->mode == BM_SUBSCRIBE)
                printf(",\"topic\":\"%s\",\"rate\":%g,\"late\":%llu,\"published\":%llu,\"acked\":%llu,"
                       "\"deliveries_checked\":%llu,\"out_of_order\":%llu,\"missing\":%llu,\"publish_errors\":%llu",
                       cfg->topic, cfg->rate, (unsigned long long)t->late, (unsigned long long)t->pub_final,
                       (unsigned long long)t->pub_acked, (unsigned long long)t->received,
                       (unsigned long long)t->err_order, (unsigned long long)t->err_missing,
                       (unsigned long long)t->err_publish);
            printf(",\"msgs\":%llu,\"msgs_out\":%llu,\"msgs_per_s\":%.0f,\"out_per_s\":%.0f,\"mb_per_s\":%.3f",
                   (unsigned long long)t->w_received, (unsigned long long)t->w_sent, (double)t->w_received / s,
                   (double)t->w_sent / s, (double)t->w_bytes / s / 1e6);
            printf(",\"lat_n\":%llu,\"lat_p50_us\":%.1f,\"lat_p90_us\":%.1f,\"lat_p99_us\":%.1f,"
                   "\"lat_p999_us\":%.1f,\"lat_max_us\":%.1f,\"lat_mean_us\":%.1f",
                   (unsigned long long)t->lat.n, us(&t->lat, 0.50), us(&t->lat, 0.90), us(&t->lat, 0.99),
                   us(&t->lat, 0.999), (double)t->lat.max / 1e3,
                   t->lat.n ? (double)t->lat.sum / (double)t->lat.n / 1e3 : 0.0);
            printf(",\"sent_total\":%llu,\"received_total\":%llu,\"total_msgs\":%llu", (unsigned long long)t->sent,
                   (unsigned long long)t->received, (unsigned long long)t->received);
        }
        if (cfg->idle_sub)
            printf(",\"topic\":\"%s\",\"delivered\":%llu,\"lat_n\":%llu,\"lat_p50_us\":%.1f,\"lat_p99_us\":%.1f,"
                   "\"lat_max_us\":%.1f",
                   cfg->topic, (unsigned long long)t->received, (unsigned long long)t->lat.n, us(&t->lat, 0.50),
                   us(&t->lat, 0.99), (double)t->lat.max / 1e3);
        printf(",\"cpu_pct\":%.1f", t->window_s > 0 ? 100 * t->cpu_s / t->window_s : 0.0);
    }
    printf(",\"hs_p50_us\":%.1f,\"hs_p99_us\":%.1f,\"hs_max_us\":%.1f", us(&t->hs, 0.5), us(&t->hs, 0.99),
           (double)t->hs.max / 1e3);
    printf(",\"errors\":%llu,\"err_connect\":%llu,\"err_handshake\":%llu,\"err_verify\":%llu,"
           "\"err_closed\":%llu,\"err_send\":%llu,\"err_not_open\":%llu,\"err_worker\":%llu,\"err_order\":%llu,"
           "\"err_missing\":%llu,\"err_publish\":%llu,\"interrupted\":%s}\n",
           (unsigned long long)t->errors, (unsigned long long)t->connect_failed,
           (unsigned long long)t->handshake_failed, (unsigned long long)t->err_verify,
           (unsigned long long)t->err_closed, (unsigned long long)t->err_send, (unsigned long long)t->never_opened,
           (unsigned long long)t->dead, (unsigned long long)t->err_order, (unsigned long long)t->err_missing,
           (unsigned long long)t->err_publish, co->stopped_by_signal ? "true" : "false");
}

static void print_summary(const bench_cfg *cfg, const coord *co, const totals *t)
{
    printf("duplex bench %s: %s", cfg->url, mode_name(cfg->mode));
    if (cfg->mode == BM_HANDSHAKES) {
        double span = t->span_s > 0 ? t->span_s : 1;
        printf(", %u connections opened and closed, %u at a time, %u process%s\n", cfg->handshakes,
               cfg->concurrency, cfg->procs, cfg->procs == 1 ? "" : "es");
        printf("  handshakes  %llu ok in %.3f s: %.0f/s\n", (unsigned long long)t->hs_ok, t->span_s,
               (double)t->hs_ok / span);
    } else {
        if (cfg->mode == BM_ECHO)
            printf(" depth %u", cfg->depth);
        else if (cfg->mode == BM_RATE)
            printf(" %g msgs/s per connection (at most %u in flight)", cfg->rate, cfg->depth);
        else if (cfg->mode == BM_SUBSCRIBE)
            printf(" topic \"%s\", publishing %g msgs/s", cfg->topic, cfg->rate);
        if (cfg->mode != BM_IDLE)
            printf(", %zu B %s", cfg->size, cfg->text ? "text" : "binary");
        printf(", %u connections, %u process%s\n", cfg->conns, cfg->procs, cfg->procs == 1 ? "" : "es");
        printf("  connections %llu open of %u in %.3f s\n", (unsigned long long)t->opened, cfg->conns, co->connect_s);
        double s = t->window_s > 0 ? t->window_s : 1e300;
        if (cfg->mode == BM_IDLE) {
            printf("  held        %.3f s\n", t->window_s);
            if (cfg->idle_sub)
                printf("  delivered   %llu on topic \"%s\"; stamped: %llu, publish to delivery p50 %.1f us, "
                       "p99 %.1f us, max %.1f us\n",
                       (unsigned long long)t->received, cfg->topic, (unsigned long long)t->lat.n,
                       us(&t->lat, 0.5), us(&t->lat, 0.99), (double)t->lat.max / 1e3);
        } else {
            printf("  window      %.3f s measured after %.3f s of warm-up\n", t->window_s, cfg->warmup);
            printf("  messages    out %llu (%.0f/s)%s, in %llu (%.0f/s)%s, %.3f MB/s in\n",
                   (unsigned long long)t->w_sent, (double)t->w_sent / s, cfg->mode == BM_SUBSCRIBE ? " published" : "",
                   (unsigned long long)t->w_received, (double)t->w_received / s,
                   cfg->mode == BM_SUBSCRIBE ? " delivered" : "", (double)t->w_bytes / s / 1e6);
            if (t->lat.n)
                printf("  latency     p50 %.1f us, p90 %.1f us, p99 %.1f us, p99.9 %.1f us, max %.1f us (%llu)\n",
                       us(&t->lat, 0.5), us(&t->lat, 0.9), us(&t->lat, 0.99), us(&t->lat, 0.999),
                       (double)t->lat.max / 1e3, (unsigned long long)t->lat.n);
            else
                printf("  latency     none measured\n");
            if (cfg->mode == BM_RATE)
                printf("  late        %llu sends skipped with %u already in flight\n", (unsigned long long)t->late,
                       cfg->depth);
            if (cfg->mode == BM_SUBSCRIBE) {
                printf("  published   %llu, acknowledged %llu, refused or lost %llu, late %llu (skipped with %u "
                       "unanswered)\n",
                       (unsigned long long)t->pub_final, (unsigned long long)t->pub_acked,
                       (unsigned long long)t->err_publish, (unsigned long long)t->late, PUB_MAX_INFLIGHT);
                printf("  order       %llu deliveries checked: %llu out of order, %llu missing\n",
                       (unsigned long long)t->received, (unsigned long long)t->err_order,
                       (unsigned long long)t->err_missing);
            }
            printf("  whole run   sent %llu, received %llu (warm-up and drain included)\n",
                   (unsigned long long)t->sent, (unsigned long long)t->received);
        }
        printf("  cpu         %.0f%% of one core\n", t->window_s > 0 ? 100 * t->cpu_s / t->window_s : 0.0);
    }
    printf("  handshake   p50 %.1f us, p99 %.1f us, max %.1f us\n", us(&t->hs, 0.5), us(&t->hs, 0.99),
           (double)t->hs.max / 1e3);
    printf("  errors      %llu (connect %llu, handshake %llu, verify %llu, closed %llu, send %llu, not open %llu, "
           "workers %llu",
           (unsigned long long)t->errors, (unsigned long long)t->connect_failed,
           (unsigned long long)t->handshake_failed, (unsigned long long)t->err_verify,
           (unsigned long long)t->err_closed, (unsigned long long)t->err_send, (unsigned long long)t->never_opened,
           (unsigned long long)t->dead);
    if (cfg->mode == BM_SUBSCRIBE)
        printf(", order %llu, missing %llu, publish %llu", (unsigned long long)t->err_order,
               (unsigned long long)t->err_missing, (unsigned long long)t->err_publish);
    printf(")%s\n", co->stopped_by_signal ? ", interrupted" : "");
}

/* ---- the command ------------------------------------------------------------------- */

enum {
    O_RATE = 256, O_TEXT, O_BINARY, O_SUB, O_IDLE, O_HS, O_CONC, O_CRATE, O_PENDING, O_SOURCES, O_PROCS,
    O_TIMEOUT, O_READY, O_JSON, O_PROGRESS, O_NOPROGRESS
};

static int parse_args(int argc, char **argv, bench_cfg *cfg)
{
    static const struct option own[] = {
        {"conns", required_argument, 0, 'c'},       {"depth", required_argument, 0, 'd'},
        {"size", required_argument, 0, 's'},        {"duration", required_argument, 0, 't'},
        {"warmup", required_argument, 0, 'w'},      {"rate", required_argument, 0, O_RATE},
        {"text", no_argument, 0, O_TEXT},           {"binary", no_argument, 0, O_BINARY},
        {"subscribe", required_argument, 0, O_SUB}, {"idle", no_argument, 0, O_IDLE},
        {"handshakes", required_argument, 0, O_HS}, {"concurrency", required_argument, 0, O_CONC},
        {"connect-rate", required_argument, 0, O_CRATE},
        {"max-pending", required_argument, 0, O_PENDING},
        {"sources", required_argument, 0, O_SOURCES},
        {"procs", required_argument, 0, O_PROCS},   {"timeout", required_argument, 0, O_TIMEOUT},
        {"ready-file", required_argument, 0, O_READY},
        {"json", no_argument, 0, O_JSON},           {"progress", no_argument, 0, O_PROGRESS},
        {"no-progress", no_argument, 0, O_NOPROGRESS},
        {"ca-file", required_argument, 0, CLI_O_CA},
        {"help", no_argument, 0, 'h'},              {0, 0, 0, 0},
    };
    *cfg = (bench_cfg){.mode = BM_ECHO, .conns = 100, .procs = 1, .size = 16, .duration = 5, .warmup = 1,
                       .timeout = 30, .connect_rate = 20000, .max_pending = 256, .concurrency = 8,
                       .log_level = DX_LOG_WARN, .progress = isatty(2) == 1};
    const cli_common common = {
        .prefix = "duplex bench", .cmd = "bench",
        .insecure = &cfg->insecure, .ca_file = &cfg->ca_file, .log_level = &cfg->log_level,
        .deflate = &cfg->deflate,
    };
    bool depth_set = false, sources_set = false, size_set = false, rate_set = false, idle_set = false;
    unsigned long v;
    int ch;
    const char *name;
    optind = 1;
    /* No -s or -w: in `duplex connect` (and wscat) they are --subprotocol and
     * --wait; --size and --warmup are spelled out. */
    while ((ch = cli_getopt(&common, argc, argv, "c:d:t:kh", own, &name)) != -1) {
        switch (ch) {
        case CLI_BAD:
            return CLI_USAGE;
        case 'h':
            usage(stdout);
            return 1;
        case 'c':
            if (cli_parse_uint(optarg, 1, 10000000, &v))
                return cli_bad_value(&common, name, optarg);
            cfg->conns = (unsigned)v;
            break;
        case 'd':
            if (cli_parse_uint(optarg, 1, 1u << 20, &v))
                return cli_bad_value(&common, name, optarg);
            cfg->depth = (unsigned)v;
            depth_set = true;
            break;
        case 's':
            if (cli_parse_size(optarg, &cfg->size) || cfg->size == 0 || cfg->size > (256u << 20))
                return cli_bad_value(&common, name, optarg);
            size_set = true;
            break;
        case 't':
            if (parse_seconds(optarg, &cfg->duration) || cfg->duration <= 0)
                return cli_bad_value(&common, name, optarg);
            break;
        case 'w':
            if (parse_seconds(optarg, &cfg->warmup))
                return cli_bad_value(&common, name, optarg);
            break;
        case O_RATE:
            if (parse_double(optarg, &cfg->rate))
                return cli_bad_value(&common, name, optarg);
            rate_set = true;
            if (cfg->mode != BM_SUBSCRIBE)
                cfg->mode = BM_RATE;
            break;
        case O_TEXT:
            cfg->text = true;
            break;
        case O_BINARY:
            cfg->text = false;
            break;
        case O_SUB:
            /* a topic (GATEWAY.md: 1-200 bytes of [A-Za-z0-9_.:@/-]); not a
             * pattern, since the bench publishes on it */
            if (!*optarg || strlen(optarg) > 200 ||
                strspn(optarg, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:@/-") !=
                    strlen(optarg))
                return cli_bad_value(&common, name, optarg);
            cfg->topic = optarg;
            cfg->mode = BM_SUBSCRIBE;
            break;
        case O_IDLE:
            cfg->mode = BM_IDLE;
            idle_set = true;
            break;
        case O_HS:
            if (cli_parse_uint(optarg, 1, 1000000000, &v))
                return cli_bad_value(&common, name, optarg);
            cfg->handshakes = (unsigned)v;
            cfg->mode = BM_HANDSHAKES;
            break;
        case O_CONC:
            if (cli_parse_uint(optarg, 1, 100000, &v))
                return cli_bad_value(&common, name, optarg);
            cfg->concurrency = (unsigned)v;
            break;
        case O_CRATE:
            if (parse_double(optarg, &cfg->connect_rate))
                return cli_bad_value(&common, name, optarg);
            break;
        case O_PENDING:
            if (cli_parse_uint(optarg, 1, 1000000, &v))
                return cli_bad_value(&common, name, optarg);
            cfg->max_pending = (unsigned)v;
            break;
        case O_SOURCES:
            if (parse_sources(optarg, cfg))
                return cli_bad_value(&common, name, optarg);
            sources_set = true;
            break;
        case O_PROCS:
            if (cli_parse_uint(optarg, 1, 256, &v))
                return cli_bad_value(&common, name, optarg);
            cfg->procs = (unsigned)v;
            break;
        case O_TIMEOUT:
            if (parse_seconds(optarg, &cfg->timeout) || cfg->timeout <= 0)
                return cli_bad_value(&common, name, optarg);
            break;
        case O_READY:
            cfg->ready_file = optarg;
            break;
        case O_JSON:
            cfg->json = true;
            break;
        case O_PROGRESS:
            cfg->progress = true;
            break;
        case O_NOPROGRESS:
            cfg->progress = false;
            break;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc - 1) {
        fprintf(stderr, "duplex bench: want exactly one URL (see duplex bench --help)\n");
        return 2;
    }
    cfg->url = argv[optind];
    if (url_host(cfg) < 0) {
        fprintf(stderr, "duplex bench: bad URL '%s' (want ws://HOST[:PORT]/PATH or wss://...)\n", cfg->url);
        return 2;
    }
    if (!depth_set)
        cfg->depth = cfg->mode == BM_RATE ? 64 : 1;
    if (idle_set && cfg->topic) {
        if (rate_set) {
            fprintf(stderr, "duplex bench: --idle --subscribe holds subscribers and publishes nothing: no --rate\n");
            return 2;
        }
        cfg->mode = BM_IDLE;
        cfg->idle_sub = true;
    }
    if (cfg->mode == BM_SUBSCRIBE || cfg->idle_sub) {
        size_t head = cfg->idle_sub ? 0 : cfg->text ? 32 : 16; /* sequence number and send time (bench_worker.c) */
        if (!size_set && cfg->size < head)
            cfg->size = head;
        if (cfg->size < head) {
            fprintf(stderr, "duplex bench: --subscribe needs --size %zu at least (%s)\n", head,
                    cfg->text ? "--text" : "binary");
            return 2;
        }
        if (!rate_set)
            cfg->rate = 100;
        int n = snprintf(cfg->sub_url, sizeof cfg->sub_url, "%s%csubscribe=%s", cfg->url,
                         strchr(cfg->url, '?') ? '&' : '?', cfg->topic);
        if (n < 0 || (size_t)n >= sizeof cfg->sub_url) {
            fprintf(stderr, "duplex bench: URL too long\n");
            return 2;
        }
    }
    if (cfg->mode == BM_HANDSHAKES) {
        cfg->conns = cfg->concurrency;
        if (cfg->procs > cfg->handshakes)
            cfg->procs = cfg->handshakes;
    }
    if (cfg->procs > cfg->conns)
        cfg->procs = cfg->conns;
    if (!sources_set && cfg->conns > 4000)
        cfg->sources = 1 + cfg->conns / 4000;
    if (!cfg->source_base)
        cfg->source_base = 0x7F000001u;
    if (!sources_set && cfg->sources > 254)
        cfg->sources = 254;
    if (cfg->sources && strncmp(cfg->host, "127.", 4) && strcmp(cfg->host, "localhost")) {
        if (sources_set)
            fprintf(stderr, "duplex bench: --sources needs a loopback URL (127.x or localhost); ignored\n");
        cfg->sources = 0;
    }
    if (cfg->ready_file && cfg->mode != BM_IDLE) {
        fprintf(stderr, "duplex bench: --ready-file goes with --idle\n");
        return 2;
    }
    if ((double)cfg->size * cfg->depth > (double)(1u << 30)) {
        fprintf(stderr, "duplex bench: --size x --depth is over 1 GiB per connection\n");
        return 2;
    }
    return 0;
}

/* Raises the descriptor limit to the hard limit; checks that one process
 * can hold its share of the connections. */
static int check_fds(const bench_cfg *cfg)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return 0;
    if (rl.rlim_cur < rl.rlim_max) {
        rlim_t soft = rl.rlim_cur;
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
            rl.rlim_cur = soft;
    }
    unsigned per = (cfg->conns + cfg->procs - 1) / cfg->procs;
    if (rl.rlim_cur != RLIM_INFINITY && (rlim_t)per + FD_RESERVE > rl.rlim_cur) {
        unsigned need = (unsigned)((cfg->conns + (rl.rlim_cur - FD_RESERVE) - 1) / (rl.rlim_cur - FD_RESERVE));
        fprintf(stderr,
                "duplex bench: %u connections per process need %u descriptors, the limit is %llu: "
                "use --procs %u (or more)\n",
                per, per + FD_RESERVE, (unsigned long long)rl.rlim_cur, need);
        return -1;
    }
    return 0;
}

int cmd_bench(int argc, char **argv)
{
    bench_cfg cfg;
    int rc = parse_args(argc, argv, &cfg);
    if (rc)
        return rc == 1 ? 0 : rc;
    if (check_fds(&cfg) < 0)
        return 2;

    size_t shlen = sizeof(bench_shared) + cfg.procs * sizeof(bench_wstate);
    bench_shared *sh = mmap(NULL, shlen, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED) {
        fprintf(stderr, "duplex bench: cannot map shared memory: %s\n", strerror(errno));
        return 1;
    }
    unsigned total = cfg.mode == BM_HANDSHAKES ? cfg.handshakes : cfg.conns, first = 0;
    for (unsigned i = 0; i < cfg.procs; i++) {
        sh->w[i].first = first;
        sh->w[i].n = total / cfg.procs + (i < total % cfg.procs);
        first += sh->w[i].n;
    }
    if (cfg.mode == BM_HANDSHAKES) {
        cfg.concurrency = (cfg.concurrency + cfg.procs - 1) / cfg.procs;
        if (cfg.max_pending < cfg.concurrency)
            cfg.max_pending = cfg.concurrency;
    }

    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    coord co = {.cfg = &cfg, .sh = sh, .t0 = bench_now_ns()};
    int status = 0;
    if (cfg.procs == 1) {
        pthread_t th;
        if (pthread_create(&th, NULL, coord_thread, &co) != 0) {
            fprintf(stderr, "duplex bench: cannot start a thread\n");
            munmap(sh, shlen);
            return 1;
        }
        bench_worker_run(&cfg, sh, 0);
        pthread_join(th, NULL);
    } else {
        co.pids = calloc(cfg.procs, sizeof *co.pids);
        if (!co.pids) {
            munmap(sh, shlen);
            return 1;
        }
        fflush(NULL);
        pid_t parent = getpid();
        for (unsigned i = 0; i < cfg.procs; i++) {
            pid_t pid = fork();
            if (pid == 0) {
                /* the parent coordinates: Ctrl-C reaches it, and a dead parent ends us */
                signal(SIGINT, SIG_IGN);
                signal(SIGTERM, SIG_DFL);
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                if (getppid() != parent)
                    _exit(1);
                int r = bench_worker_run(&cfg, sh, i);
                fflush(NULL);
                _exit(r);
            }
            if (pid < 0) {
                fprintf(stderr, "duplex bench: fork: %s\n", strerror(errno));
                sh->w[i].exit_status = -1;
                atomic_store(&sh->w[i].done, 1);
                atomic_store(&sh->abort_run, 1);
                continue;
            }
            co.pids[i] = pid;
        }
        coord_run(&co);
        for (unsigned i = 0; i < cfg.procs; i++)
            if (co.pids[i] > 0)
                waitpid(co.pids[i], NULL, 0);
        free(co.pids);
    }

    totals t;
    merge(&cfg, sh, &t);
    if (cfg.json)
        print_json(&cfg, &co, &t);
    else
        print_summary(&cfg, &co, &t);
    fflush(stdout);
    status = t.errors ? 1 : 0;
    munmap(sh, shlen);
    return status;
}
