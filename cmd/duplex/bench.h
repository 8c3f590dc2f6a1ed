/*
 * cmd/duplex/bench.h: `duplex bench`, shared between its coordinator
 * (bench.c: options, processes, phases, progress, output) and its workers
 * (bench_worker.c: one event loop and its client connections).
 *
 * A run has one coordinator and P workers. With --procs 1 the worker is the
 * process's main thread and the coordinator a second thread; with P > 1
 * each worker is a forked child and the parent coordinates. They share one
 * bench_shared block (anonymous shared memory mapped before fork): the
 * coordinator writes the phase times, each worker writes only its own
 * bench_wstate. Counters read while a worker runs (progress) are atomics;
 * histograms are read only after the worker has set `done`.
 *
 * Times are CLOCK_MONOTONIC nanoseconds, which is one clock for every
 * process of the machine, so the measurement window is the same for all.
 */
#ifndef DX_CMD_BENCH_H
#define DX_CMD_BENCH_H

#include "duplex/deflate.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum bench_mode {
    BM_ECHO,       /* echo, D messages in flight per connection */
    BM_RATE,       /* echo at R messages/s per connection (at most D in flight) */
    BM_SUBSCRIBE,  /* gateway fan-out: N raw-dialect subscribers of a topic, one JSON-dialect publisher */
    BM_IDLE,       /* open, hold, no traffic */
    BM_HANDSHAKES  /* open + close N connections, K at a time */
};

#define PUB_MAX_INFLIGHT 1024u /* BM_SUBSCRIBE: unanswered publishes before a send is skipped (late) */

/* ---- log-linear latency histogram ------------------------------------------ */

/* 16 sub-buckets per power of two: values up to 2^64 within ~6%; no stored
 * samples, merging is adding arrays. Values are nanoseconds. */
#define BH_SUB 16u
#define BH_BUCKETS (61u * BH_SUB)

typedef struct bench_hist {
    uint64_t n, max, sum;
    uint64_t b[BH_BUCKETS];
} bench_hist;

void bench_hist_add(bench_hist *h, uint64_t v);
void bench_hist_merge(bench_hist *into, const bench_hist *from);
/* The p-quantile (0 < p <= 1) as the midpoint of its bucket; 0 when empty,
 * never above max. */
double bench_hist_quantile(const bench_hist *h, double p);

/* ---- settings (read-only once the workers start) ----------------------------- */

typedef struct bench_cfg {
    const char *url;
    char host[256];            /* host part of the URL, for the source-address check */
    int mode;
    unsigned conns;            /* total, all processes */
    unsigned procs;
    unsigned depth;            /* in flight per connection */
    size_t size;
    bool text;
    double rate;               /* BM_RATE: messages/s per connection; BM_SUBSCRIBE: publishes/s in all */
    const char *topic;         /* BM_SUBSCRIBE */
    char sub_url[4096];        /* BM_SUBSCRIBE: url with ?subscribe=topic (the raw dialect) */
    unsigned handshakes, concurrency; /* BM_HANDSHAKES */
    double duration, warmup, timeout, connect_rate;
    unsigned max_pending;      /* per process */
    unsigned sources;          /* 0: connect from the default address */
    uint32_t source_base;      /* the first source address, host order [127.0.0.1] */
    const char *ready_file;    /* BM_IDLE */
    bool idle_sub;             /* BM_IDLE with --subscribe: held subscribers that count deliveries */
    bool json, progress;
    dx_deflate_options deflate; /* --deflate[=PARAMS]: offered by every connection [off] */
    int insecure;              /* -k: 1 */
    const char *ca_file;
    int log_level;
} bench_cfg;

/* ---- one worker's state, shared with the coordinator -------------------------- */

typedef struct bench_counters {
    _Atomic uint64_t started, opened, connect_failed, handshake_failed;
    _Atomic uint64_t sent, received;               /* whole run */
    _Atomic uint64_t err_verify, err_closed, err_send;
    _Atomic uint64_t live;                         /* open connections now */
    _Atomic uint64_t hs_ok;                        /* BM_HANDSHAKES: completed cycles */
    /* BM_SUBSCRIBE: deliveries out of order (a sequence number below the
     * next expected: a duplicate or a reordering), messages missing (a
     * sequence number skipped, or not arrived by the end), publishes
     * refused (an err frame, the publisher's connection lost) */
    _Atomic uint64_t err_order, err_missing, err_publish;
} bench_counters;

typedef struct bench_wstate {
    unsigned first, n;         /* connections (or handshakes) of this worker */
    bench_counters c;
    _Atomic int connected;     /* every connection opened or failed */
    _Atomic int done;          /* finished; fields below are final */
    /* written by the worker only, read after `done` */
    uint64_t w_sent, w_received, w_bytes;  /* inside the measurement window */
    uint64_t late;             /* BM_RATE: sends skipped, D already in flight */
    uint64_t pub_acked;        /* BM_SUBSCRIBE (worker 0): publishes acknowledged */
    uint64_t never_opened;     /* connections that did not open before the end */
    double cpu_s;              /* CPU seconds inside the window */
    double window_s;           /* the worker's measured window */
    uint64_t t_first_start, t_all_done; /* BM_HANDSHAKES: wall span */
    int exit_status;           /* -1: the worker died */
    bench_hist lat, hs;
} bench_wstate;

typedef struct bench_shared {
    _Atomic uint64_t t_measure; /* 0 until every worker is connected (or timed out) */
    _Atomic uint64_t t_end;     /* 0 until known; the coordinator may pull it in (signal) */
    _Atomic int abort_run;      /* stop now: nothing opened, a signal, a fatal error */
    /* BM_SUBSCRIBE: worker 0 publishes; once it stopped and every publish
     * was answered it stores how many it sent (sequence numbers 0..n-1)
     * and sets pub_done, so every worker knows what each subscriber must
     * have received before it closes. */
    _Atomic uint64_t pub_final;
    _Atomic int pub_done;
    bench_wstate w[];           /* cfg.procs of them */
} bench_shared;

uint64_t bench_now_ns(void);
/* Runs worker `index` to the end; returns 0, or 1 on a fatal setup error
 * (printed on stderr). Sets sh->w[index].done before returning. */
int bench_worker_run(const bench_cfg *cfg, bench_shared *sh, unsigned index);

int cmd_bench(int argc, char **argv);

#endif
