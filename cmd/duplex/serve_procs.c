/*
 * cmd/duplex/serve_procs.c: `duplex serve --procs N`, the supervisor. It
 * forks N worker processes that each run serve as today (their own
 * --workers threads, their own listening sockets on the same port with
 * SO_REUSEPORT: the kernel spreads new connections over every socket of the
 * group), forwards SIGTERM/SIGINT/SIGHUP to them, restarts one that dies
 * unexpectedly, and exits once every child has exited after a stop signal.
 *
 * Layer: CLI. serve.c probes the address before calling procs_supervise
 * (a foreign listener is refused there, exit 1), and runs the child's body
 * (serve_run) through the callback; this file only manages processes.
 *
 * The supervisor stays single-threaded (children are forked from it, so no
 * thread ever exists at a fork) and waits in poll() on a signalfd (SIGINT,
 * SIGTERM, SIGHUP, SIGCHLD) and on the ready pipe: each child writes one
 * record {slot, pid} there once all its workers listen. The supervisor
 * prints serve's "serving" line once every first child is ready.
 *
 * Restarts: a child that exits while no stop was asked for is logged (pid,
 * exit status or signal) and started again after a backoff that doubles from
 * PROCS_BACKOFF_MIN_MS up to PROCS_BACKOFF_MAX_MS; a child that stays up
 * PROCS_STABLE_MS clears its slot's count. PROCS_CRASH_MAX exits in a row
 * without that (a crash loop) stop the whole supervisor: one error line,
 * SIGTERM to the others, exit 1. A child that fails before its first ready
 * during the start also stops everything (exit 1): the configuration, not
 * the luck, is wrong.
 *
 * Stop: the first SIGINT/SIGTERM is forwarded to every child (each drains
 * as a single serve does); a second one is forwarded too (children exit at
 * once with 1). Past the grace period serve.c computes (drain + close
 * timeout + margin), children still alive get SIGKILL. Exit status: 0 when
 * every child exited 0 after the stop, else 1. Children get
 * PR_SET_PDEATHSIG SIGTERM: if the supervisor is killed, they drain and go.
 */
#define _GNU_SOURCE
#include "serve_procs.h"
#include "cli.h"

#include "duplex/duplex.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PROCS_BACKOFF_MIN_MS 100u   /* first restart delay of a slot */
#define PROCS_BACKOFF_MAX_MS 5000u  /* the doubling stops here */
#define PROCS_STABLE_MS 30000u      /* up this long: the slot's crash count is cleared */
#define PROCS_CRASH_MAX 5u          /* exits in a row without that: a crash loop, the supervisor stops */

typedef struct slot {
    pid_t pid;          /* 0: not running */
    bool ready;         /* wrote its ready record */
    bool ever_ready;
    unsigned crashes;   /* exits in a row, each before PROCS_STABLE_MS */
    uint64_t start_ms;
    uint64_t restart_ms; /* pid == 0 and not stopping: when to start it again */
    int status;          /* the last wait status */
} slot;

typedef struct sup {
    const procs_options *po;
    slot *s;
    int sfd, rd, wr;
    bool stopping, all_ready;
    uint64_t stop_deadline_ms;
    bool killed;
} sup;

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void describe(int status, char *buf, size_t len)
{
    if (WIFSIGNALED(status))
        snprintf(buf, len, "killed by signal %d (%s)", WTERMSIG(status), strsignal(WTERMSIG(status)));
    else if (WIFEXITED(status))
        snprintf(buf, len, "exited with status %d", WEXITSTATUS(status));
    else
        snprintf(buf, len, "ended (wait status %#x)", (unsigned)status);
}

/* Forks slot i. The child never returns from here. */
static int spawn(sup *s, unsigned i)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        cli_logf(s->po->log, DX_LOG_ERROR, "serve: cannot fork process %u: %s", i, strerror(errno));
        return -1;
    }
    if (pid == 0) {
        close(s->sfd);
        close(s->rd);
        (void)prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent)
            _exit(1); /* the supervisor died between fork and prctl */
        sigset_t chld;
        sigemptyset(&chld);
        sigaddset(&chld, SIGCHLD);
        sigprocmask(SIG_UNBLOCK, &chld, NULL);
        int rc = s->po->child(s->po->ud, i, s->wr);
        fflush(stdout);
        fflush(stderr);
        _exit(rc);
    }
    s->s[i].pid = pid;
    s->s[i].ready = false;
    s->s[i].start_ms = now_ms();
    return 0;
}

static void signal_all(sup *s, int sig)
{
    for (unsigned i = 0; i < s->po->n; i++)
        if (s->s[i].pid > 0)
            kill(s->s[i].pid, sig);
}

static unsigned running(const sup *s)
{
    unsigned n = 0;
    for (unsigned i = 0; i < s->po->n; i++)
        n += s->s[i].pid > 0;
    return n;
}

static void begin_stop(sup *s, int sig, int *status)
{
    s->stopping = true;
    s->stop_deadline_ms = now_ms() + s->po->stop_grace_ms;
    if (status)
        *status = 1;
    signal_all(s, sig);
}

/* Reaps every child that exited; decides on restarts. 0, or 1 when the
 * supervisor must stop with status 1 (a crash loop, a failed start). */
static int reap(sup *s, int *clean)
{
    int rc = 0;
    for (;;) {
        int st;
        pid_t pid = waitpid(-1, &st, WNOHANG);
        if (pid <= 0)
            break;
        unsigned i;
        for (i = 0; i < s->po->n; i++)
            if (s->s[i].pid == pid)
                break;
        if (i == s->po->n)
            continue;
        slot *sl = &s->s[i];
        sl->pid = 0;
        sl->status = st;
        char how[96];
        describe(st, how, sizeof how);
        if (s->stopping) {
            if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0))
                *clean = 0;
            cli_logf(s->po->log, DX_LOG_INFO, "serve: process %u (pid %d) %s; %u still running", i, (int)pid, how,
                     running(s));
            continue;
        }
        if (!sl->ever_ready && !s->all_ready) {
            cli_logf(s->po->log, DX_LOG_ERROR, "serve: process %u (pid %d) %s before listening; stopping the others",
                     i, (int)pid, how);
            rc = 1;
            continue;
        }
        uint64_t t = now_ms();
        if (t - sl->start_ms >= PROCS_STABLE_MS)
            sl->crashes = 0;
        sl->crashes++;
        if (sl->crashes >= PROCS_CRASH_MAX) {
            cli_logf(s->po->log, DX_LOG_ERROR,
                     "serve: process %u (pid %d) %s: %u exits in a row, each within %u s of its start (a crash "
                     "loop); stopping the others and exiting 1",
                     i, (int)pid, how, sl->crashes, PROCS_STABLE_MS / 1000u);
            rc = 1;
            continue;
        }
        unsigned delay = PROCS_BACKOFF_MIN_MS;
        for (unsigned k = 1; k < sl->crashes && delay < PROCS_BACKOFF_MAX_MS; k++)
            delay *= 2;
        if (delay > PROCS_BACKOFF_MAX_MS)
            delay = PROCS_BACKOFF_MAX_MS;
        sl->restart_ms = t + delay;
        cli_logf(s->po->log, DX_LOG_WARN, "serve: process %u (pid %d) %s unexpectedly; restarting it in %u ms (exit %u of %u in a row)",
                 i, (int)pid, how, delay, sl->crashes, PROCS_CRASH_MAX);
    }
    return rc;
}

static void read_ready(sup *s)
{
    procs_ready r;
    for (;;) {
        ssize_t k = read(s->rd, &r, sizeof r);
        if (k != (ssize_t)sizeof r)
            break; /* EAGAIN; records are written whole (smaller than PIPE_BUF) */
        if (r.slot >= s->po->n || s->s[r.slot].pid != r.pid)
            continue; /* a child that has gone since */
        s->s[r.slot].ready = true;
        if (s->s[r.slot].ever_ready)
            cli_logf(s->po->log, DX_LOG_INFO, "serve: process %u (pid %d) restarted and listening", r.slot,
                     (int)r.pid);
        s->s[r.slot].ever_ready = true;
    }
    if (!s->all_ready) {
        for (unsigned i = 0; i < s->po->n; i++)
            if (!s->s[i].ready)
                return;
        s->all_ready = true;
        if (s->po->ready)
            s->po->ready(s->po->ud);
    }
}

int procs_supervise(const procs_options *po)
{
    sup s = {.po = po, .sfd = -1, .rd = -1, .wr = -1};
    int status = 0, clean = 1;
    s.s = calloc(po->n, sizeof *s.s);
    int p[2];
    if (!s.s || pipe2(p, O_CLOEXEC) != 0) {
        cli_logf(po->log, DX_LOG_ERROR, "serve: --procs: cannot set up: %s", strerror(errno));
        free(s.s);
        return 1;
    }
    s.rd = p[0];
    s.wr = p[1];
    fcntl(s.rd, F_SETFL, O_NONBLOCK);
    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGPIPE);
    sigprocmask(SIG_BLOCK, &set, &old);
    sigdelset(&set, SIGPIPE);
    s.sfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    if (s.sfd < 0) {
        cli_logf(po->log, DX_LOG_ERROR, "serve: --procs: signalfd: %s", strerror(errno));
        status = 1;
        goto out;
    }
    cli_logf(po->log, DX_LOG_INFO, "serve: supervisor pid %d starting %u processes on one port (SO_REUSEPORT)",
             (int)getpid(), po->n);
    for (unsigned i = 0; i < po->n; i++)
        if (spawn(&s, i) != 0) {
            begin_stop(&s, SIGTERM, &status);
            break;
        }
    while (!s.stopping || running(&s) > 0) {
        uint64_t t = now_ms();
        int timeout = -1;
        for (unsigned i = 0; !s.stopping && i < po->n; i++) {
            if (s.s[i].pid != 0)
                continue;
            if (s.s[i].restart_ms <= t) {
                if (spawn(&s, i) != 0)
                    s.s[i].restart_ms = t + PROCS_BACKOFF_MAX_MS;
                else
                    continue;
            }
            int d = (int)(s.s[i].restart_ms - t);
            if (timeout < 0 || d < timeout)
                timeout = d;
        }
        if (s.stopping) {
            if (t >= s.stop_deadline_ms && !s.killed) {
                cli_logf(po->log, DX_LOG_ERROR, "serve: %u processes still running %u ms after the stop; killing them",
                         running(&s), po->stop_grace_ms);
                signal_all(&s, SIGKILL);
                s.killed = true;
                clean = 0;
            }
            int d = s.killed ? 1000 : (int)(s.stop_deadline_ms - t);
            if (timeout < 0 || d < timeout)
                timeout = d;
        }
        struct pollfd pf[2] = {{.fd = s.sfd, .events = POLLIN}, {.fd = s.rd, .events = POLLIN}};
        int k = poll(pf, 2, timeout);
        if (k < 0 && errno != EINTR) {
            cli_logf(po->log, DX_LOG_ERROR, "serve: --procs: poll: %s", strerror(errno));
            begin_stop(&s, SIGTERM, &status);
            continue;
        }
        if (pf[1].revents & POLLIN)
            read_ready(&s);
        struct signalfd_siginfo si;
        while (read(s.sfd, &si, sizeof si) == (ssize_t)sizeof si) {
            int sig = (int)si.ssi_signo;
            if (sig == SIGCHLD) {
                continue; /* reaped below */
            } else if (sig == SIGHUP) {
                cli_logf(po->log, DX_LOG_INFO, "serve: SIGHUP: forwarded to %u processes", running(&s));
                signal_all(&s, SIGHUP);
            } else if (!s.stopping) {
                cli_logf(po->log, DX_LOG_INFO, "serve: %s: forwarded to %u processes; waiting for them to drain",
                         strsignal(sig), running(&s));
                begin_stop(&s, sig, NULL);
            } else {
                cli_logf(po->log, DX_LOG_WARN, "serve: %s again: forwarded; the processes exit now", strsignal(sig));
                signal_all(&s, sig);
                clean = 0;
            }
        }
        if (reap(&s, &clean) && !s.stopping)
            begin_stop(&s, SIGTERM, &status);
    }
    if (status == 0 && !clean)
        status = 1;
    cli_logf(po->log, status ? DX_LOG_WARN : DX_LOG_INFO, "serve: every process exited; supervisor exiting %d",
             status);
out:
    if (s.sfd >= 0)
        close(s.sfd);
    close(s.rd);
    close(s.wr);
    sigprocmask(SIG_SETMASK, &old, NULL);
    free(s.s);
    return status;
}
