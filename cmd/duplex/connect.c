/*
 * cmd/duplex/connect.c: `duplex connect URL` (a wscat/websocat) and its
 * one-shot server mode `duplex connect --listen PORT`.
 *
 * Layer: the CLI. Uses only the public headers (duplex/client.h,
 * duplex/server.h, duplex/loop.h); never src/.
 *
 * One thread: the dx_loop runs everything. stdin is a dx_watch on fd 0
 * (level-triggered; one read of at most CHUNK bytes per callback, or one
 * keystroke for the line editor), or, when epoll refuses fd 0 (a regular
 * file, /dev/null), a 0 ms dx_timer that reads one chunk per loop iteration.
 * Ctrl-C reaches the loop through a self-pipe watched like stdin; --wait is
 * a dx_timer.
 *
 * Flow control: reading is on only while everything read so far has been
 * turned into messages (at most a partial line is left), the connection is
 * open and its send queue is at most HIGH_WATER; otherwise the watch asks
 * for nothing (the timer is stopped) until on_open or on_drain lets
 * process_input finish. So a fast producer piped into connect, or a large
 * file, waits for a slow peer instead of growing memory: what connect holds
 * is one chunk plus the line being assembled plus the send queue.
 *
 * Invariants: `a->conn` is the open connection or NULL; input is turned into
 * messages only while it is open; `a->reading` says whether the stdin watch
 * asks for DX_WATCH_READ (or the file timer is armed), and only set_reading
 * changes it.
 */
#define _GNU_SOURCE
#include "cli.h"
#include "connect.h"
#include "duplex/client.h"
#include "duplex/loop.h"
#include "lineedit.h"
#include "duplex/server.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>


static volatile sig_atomic_t g_sigints;
static volatile int g_sig_fd = -1;      /* the signal pipe's write end, for the handler */
static volatile int g_stdin_flags = -1; /* fd 0's flags before O_NONBLOCK; -1: untouched */

/* Interactive: around terminal output, so it does not land in
 * the line being typed (lineedit.h). Nests: callbacks may print inside. */
static void term_begin(app *a)
{
    if (a->interactive && a->term_depth++ == 0)
        le_output_begin();
}

static void term_end(app *a)
{
    if (a->interactive && --a->term_depth == 0)
        le_output_end();
}

static app g_app; /* static: the signal handler and main share it; set up by cmd_connect */


/* ---- small helpers ------------------------------------------------------- */

/* Room for n more bytes after b->len. */
static int bytes_reserve(bytes *b, size_t n)
{
    if (b->cap - b->len < n) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap - b->len < n)
            cap *= 2;
        uint8_t *q = realloc(b->p, cap);
        if (!q)
            return -1;
        b->p = q;
        b->cap = cap;
    }
    return 0;
}

static int bytes_append(bytes *b, const void *p, size_t n)
{
    if (bytes_reserve(b, n))
        return -1;
    memcpy(b->p + b->len, p, n);
    b->len += n;
    return 0;
}

static const char *opname(unsigned op)
{
    switch (op) {
    case DX_OP_CONT: return "cont";
    case DX_OP_TEXT: return "text";
    case DX_OP_BINARY: return "binary";
    case DX_OP_CLOSE: return "close";
    case DX_OP_PING: return "ping";
    case DX_OP_PONG: return "pong";
    default: return "reserved";
    }
}

static void put_hex(FILE *f, const uint8_t *p, size_t n)
{
    static const char digits[] = "0123456789abcdef";
    char buf[4096];
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        buf[k++] = digits[p[i] >> 4];
        buf[k++] = digits[p[i] & 15];
        if (k == sizeof buf) {
            fwrite(buf, 1, k, f);
            k = 0;
        }
    }
    fwrite(buf, 1, k, f);
}

static int hexval(int ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    ch = tolower(ch);
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    return -1;
}

/* Interactive notices go to stderr; pipe mode stays quiet unless asked. */
static void note(const app *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note(const app *a, const char *fmt, ...)
{
    if (!a->interactive && a->log.level < DX_LOG_INFO)
        return;
    va_list ap;
    va_start(ap, fmt);
    term_begin((app *)a);
    fputs("* ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    term_end((app *)a);
    va_end(ap);
}

static bool normal_code(unsigned code)
{
    return code == DX_CLOSE_NORMAL || code == DX_CLOSE_GOING_AWAY;
}

/* ---- stdin, Ctrl-C and --wait on the loop --------------------------------- */

static void process_input(app *a);
static void start_close(app *a, unsigned code, const char *reason, size_t len);
static void set_reading(app *a, bool on);

/* fd 0's flags as they were, if O_NONBLOCK was added (the file description
 * may be shared with the shell or the producer). Async-signal-safe. */
static void restore_stdin_flags(void)
{
    if (g_stdin_flags >= 0)
        (void)fcntl(0, F_SETFL, g_stdin_flags);
}

/* SIGINT: the first asks the loop (through the signal pipe) to close with
 * 1000; the second exits at once. Async-signal-safe: write, fcntl,
 * tcsetattr and _exit only. */
static void on_sigint(int sig)
{
    (void)sig;
    int saved = errno;
    if (g_sigints++ > 0) {
        le_restore_terminal();
        restore_stdin_flags();
        _exit(130);
    }
    if (g_sig_fd >= 0) {
        char c = 's';
        ssize_t r = write(g_sig_fd, &c, 1);
        (void)r;
    }
    errno = saved;
}

/* The first Ctrl-C. */
static void on_signal(app *a)
{
    if (a->conn && !a->closing) {
        term_begin(a);
        fprintf(stderr, "* Ctrl-C: closing with 1000 (Ctrl-C again quits at once)\n");
        term_end(a);
        start_close(a, DX_CLOSE_NORMAL, NULL, 0);
    } else if (a->cl && !a->conn) {
        (void)dx_client_close(a->cl, DX_CLOSE_NORMAL, NULL, 0); /* abandons the attempt; on_done stops */
        a->status = ST_FAIL;
    } else if (!a->conn) {
        dx_loop_stop(a->loop);
    }
}

static void on_sig_ready(dx_watch *w, int fd, unsigned events, void *ud)
{
    (void)w;
    (void)events;
    char buf[16];
    bool got = false;
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0) /* non-blocking: drained */
        got = true;
    if (got)
        on_signal(ud);
}

/* The --wait time after the end of input is over. */
static void on_wait_timer(dx_timer *t, void *ud)
{
    app *a = ud;
    (void)t;
    if (a->conn && !a->closing)
        start_close(a, DX_CLOSE_NORMAL, NULL, 0);
}

static void fail_out_of_memory(app *a)
{
    fprintf(stderr, "connect: out of memory reading stdin\n");
    a->status = ST_FAIL;
    a->in_eof = true; /* nothing more is read */
    set_reading(a, false);
    dx_loop_stop(a->loop);
}

/* Asks for stdin (on) or stops asking (off). Never on once the input ended.
 * In file mode the timer is one-shot: on_stdin_timer clears `reading`
 * before it reads, so asking again re-arms it for the next iteration. */
static void set_reading(app *a, bool on)
{
    on = on && a->read_stdin && !a->in_eof;
    if (on == a->reading)
        return;
    if (a->in_watch) {
        int err = dx_watch_set(a->in_watch, on ? DX_WATCH_READ : 0);
        if (err) {
            /* epoll refused a change for a descriptor it took before: give
             * up on stdin rather than spin on a watch we cannot silence. */
            fprintf(stderr, "connect: watching stdin: %s; treating it as ended\n", dx_strerror(err));
            dx_watch_free(a->in_watch);
            a->in_watch = NULL;
            a->in_eof = true;
            a->reading = false;
            return;
        }
    } else if (a->in_timer) {
        if (on)
            dx_timer_start(a->in_timer, 0, 0);
        else
            dx_timer_stop(a->in_timer);
    } else {
        return;
    }
    a->reading = on;
}

/* Inside le_read_char: a line was typed (or Ctrl-D on an empty line). Only
 * collected here; read_input sends it once the editor has returned. */
static void on_typed_line(char *line, void *ud)
{
    app *a = ud;
    if (!line) {
        a->typed_eof = true;
        return;
    }
    if (bytes_append(&a->in, line, strlen(line)) || bytes_append(&a->in, "\n", 1))
        fail_out_of_memory(a);
    free(line);
}

/* stdin is readable (or, in file mode, may be read): one read of at most
 * CHUNK bytes, or one keystroke for the line editor; then the messages. */
static void read_input(app *a)
{
    if (a->editing) {
        le_read_char(); /* may call on_typed_line */
        if (a->typed_eof) {
            a->typed_eof = false;
            a->editing = false;
            le_stop();
            a->in_eof = true;
        }
    } else {
        if (a->in.cap - a->in.len < CHUNK && bytes_reserve(&a->in, CHUNK)) {
            fail_out_of_memory(a);
            return;
        }
        ssize_t n = read(0, a->in.p + a->in.len, CHUNK);
        if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) {
            set_reading(a, true); /* the watch asks again; the file timer is re-armed */
            return;
        }
        if (n < 0) {
            fprintf(stderr, "connect: reading stdin: %s\n", strerror(errno));
            n = 0; /* treated as the end of input */
        }
        if (n == 0)
            a->in_eof = true;
        a->in.len += (size_t)n;
    }
    if (a->in_eof) {
        set_reading(a, false);
        if (!a->conn && a->interactive) {
            /* Ctrl-D while not connected: give up rather than wait. */
            if (a->cl)
                (void)dx_client_close(a->cl, DX_CLOSE_NORMAL, NULL, 0); /* on_done follows */
            else
                dx_loop_stop(a->loop);
            return;
        }
    }
    process_input(a);
}

static void on_stdin_ready(dx_watch *w, int fd, unsigned events, void *ud)
{
    (void)w;
    (void)fd;
    (void)events; /* DX_WATCH_ERROR (a hang-up) too: the read says what it is */
    read_input(ud);
}

static void on_stdin_timer(dx_timer *t, void *ud)
{
    app *a = ud;
    (void)t;
    a->reading = false; /* fired: set_reading(a, true) arms it again */
    read_input(a);
}

/* Descriptors 0, 1 and 2 must be open before the loop opens anything: a
 * closed stdin (`<&-`) would otherwise become the epoll descriptor or the
 * socket, and a closed stdout would receive the messages meant for it. A
 * closed one is held by /dev/null opened read-only: stdin then ends at once,
 * and writes to stdout or stderr fail (as they did) instead of landing in a
 * socket. */
static void hold_std_fds(void)
{
    for (int fd = 0; fd <= 2; fd++) {
        if (fcntl(fd, F_GETFD) >= 0 || errno != EBADF)
            continue;
        int n = open("/dev/null", O_RDONLY | O_CLOEXEC); /* the lowest free slot: fd */
        if (n >= 0 && n != fd) {
            (void)dup2(n, fd);
            close(n);
        }
    }
}

/* Sets up stdin (a watch, or the file timer), the line editor, the signal
 * pipe and its watch, and the --wait timer. 0, or ST_FAIL after a message. */
static int start_input(app *a)
{
    int err = 0;
    if (pipe2(a->sig_pipe, O_CLOEXEC | O_NONBLOCK) < 0) {
        fprintf(stderr, "connect: cannot create the signal pipe: %s\n", strerror(errno));
        return ST_FAIL;
    }
    a->sig_watch = dx_watch_new(a->loop, a->sig_pipe[0], DX_WATCH_READ, on_sig_ready, a, &err);
    if (!a->sig_watch)
        goto fail;
    if (a->wait_set && a->wait_ms && !(a->wait_timer = dx_timer_new(a->loop, on_wait_timer, a))) {
        err = DX_ENOMEM;
        goto fail;
    }
    if (a->read_stdin) {
        a->editing = a->interactive && le_start("> ", on_typed_line, a) == 0;
        if (!a->editing && !isatty(0)) {
            /* A pipe or socket: reads never block the loop, even if another
             * reader of the same pipe took the bytes first. A terminal is
             * left as it is (the watch reads it once per readiness): libedit
             * clears O_NONBLOCK itself, and the shell shares the terminal's
             * flags, so a crash would leave it non-blocking. */
            int fl = fcntl(0, F_GETFL);
            if (fl >= 0 && !(fl & O_NONBLOCK) && fcntl(0, F_SETFL, fl | O_NONBLOCK) == 0)
                g_stdin_flags = fl;
        }
        a->in_watch = dx_watch_new(a->loop, 0, DX_WATCH_READ, on_stdin_ready, a, &err);
        if (a->in_watch) {
            a->reading = true;
        } else if (err == DX_EINVAL) {
            /* epoll refuses regular files and /dev/null (always readable):
             * read them one chunk per loop iteration instead. */
            restore_stdin_flags();
            g_stdin_flags = -1;
            if (!(a->in_timer = dx_timer_new(a->loop, on_stdin_timer, a))) {
                err = DX_ENOMEM;
                goto fail;
            }
            set_reading(a, true);
        } else {
            goto fail;
        }
    }
    g_sig_fd = a->sig_pipe[1];
    struct sigaction sa = {.sa_handler = on_sigint, .sa_flags = SA_RESTART};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    return 0;
fail:
    fprintf(stderr, "connect: cannot watch stdin or the signal pipe: %s\n", dx_strerror(err));
    return ST_FAIL;
}

/* Undoes start_input (whatever part of it was done); before dx_loop_free. */
static void stop_input(app *a)
{
    signal(SIGINT, SIG_DFL);
    g_sig_fd = -1;
    a->editing = false;
    le_stop();
    restore_stdin_flags();
    g_stdin_flags = -1;
    dx_watch_free(a->in_watch);
    dx_timer_free(a->in_timer);
    dx_timer_free(a->wait_timer);
    dx_watch_free(a->sig_watch);
    a->in_watch = a->sig_watch = NULL;
    a->in_timer = a->wait_timer = NULL;
    for (int i = 0; i < 2; i++)
        if (a->sig_pipe[i] >= 0) {
            close(a->sig_pipe[i]);
            a->sig_pipe[i] = -1;
        }
}

/* The input ended (stdin's last message sent, or the -x messages): close
 * now, or after --wait, or when --max-messages arrive. */
static void finish_input(app *a)
{
    if (a->input_done)
        return;
    a->input_done = true;
    if (!a->wait_set && a->max_messages)
        return; /* wait for the messages (or the peer's close) */
    if (!a->wait_set || a->wait_ms == 0) {
        if (a->conn && !a->closing)
            start_close(a, DX_CLOSE_NORMAL, NULL, 0);
        return;
    }
    dx_timer_start(a->wait_timer, a->wait_ms, 0);
}

/* ---- sending ------------------------------------------------------------- */

static void report_send(app *a, int err)
{
    if (err == 0 || err == DX_ECLOSED)
        return;
    fprintf(stderr, "connect: send failed: %s\n", dx_strerror(err));
    (void)a;
}

static void start_close(app *a, unsigned code, const char *reason, size_t len)
{
    a->closing = true;
    int err = a->cl ? dx_client_close(a->cl, code, reason, len) : dx_conn_close(a->conn, code, reason, len);
    if (err && err != DX_ECLOSED)
        fprintf(stderr, "connect: close failed: %s\n", dx_strerror(err));
}

/* dx_conn_send of a message; with --show-frames, a compressed one (RSV1,
 * seen by on_frame) gets a line with both lengths. */
static int msg_send(app *a, dx_conn *c, int opcode, const void *data, size_t len)
{
    a->zout = false;
    a->zout_wire = 0;
    int err = dx_conn_send(c, opcode, data, len);
    if (a->show_frames && a->zout)
        fprintf(stderr, "message > compressed rsv1=1 len=%zu wire=%" PRIu64 "\n", len, a->zout_wire);
    a->zout = false;
    return err;
}

static void send_text(app *a, const uint8_t *s, size_t n)
{
    int err = msg_send(a, a->conn, DX_OP_TEXT, s, n);
    if (err == DX_EUTF8) {
        fprintf(stderr, "connect: line %lu is not valid UTF-8: sent as a binary message\n", a->line_no);
        if (a->conn)
            err = msg_send(a, a->conn, DX_OP_BINARY, s, n);
    }
    report_send(a, err);
}

static void print_help_commands(void)
{
    fprintf(stderr, "* commands:\n"
                    "*   /ping [text]            send a ping (text up to 125 bytes); the pong is printed\n"
                    "*   /close [code [reason]]  close with code [1000] and reason, then exit\n"
                    "*   /binary HEX             send a binary message (hex digits, spaces ignored)\n"
                    "*   //text                  send \"/text\"\n"
                    "*   /help                   this list\n"
                    "* Ctrl-D closes with 1000 and exits.\n");
}

/* An interactive line starting with '/'. */
static void command(app *a, const char *s, size_t n)
{
    size_t w = 1;
    while (w < n && s[w] != ' ')
        w++;
    const char *arg = s + w;
    size_t alen = n - w;
    while (alen && *arg == ' ') {
        arg++;
        alen--;
    }
    if (w == 5 && !memcmp(s, "/ping", 5)) {
        if (alen > 125) {
            fprintf(stderr, "* a ping carries at most 125 bytes\n");
            return;
        }
        int err = dx_conn_send(a->conn, DX_OP_PING, arg, alen);
        if (!err)
            a->pings++;
        report_send(a, err);
    } else if (w == 6 && !memcmp(s, "/close", 6)) {
        unsigned long code = DX_CLOSE_NORMAL;
        const char *reason = "";
        size_t rlen = 0;
        if (alen) {
            char num[16];
            size_t k = 0;
            while (k < alen && arg[k] != ' ' && k < sizeof num - 1) {
                num[k] = arg[k];
                k++;
            }
            num[k] = 0;
            if (cli_parse_uint(num, 1000, 4999, &code) || !dx_close_code_valid((unsigned)code)) {
                fprintf(stderr, "* not a close code that may be sent: '%s' (1000-1003, 1007-1014, 3000-4999)\n",
                        num);
                return;
            }
            reason = arg + k;
            rlen = alen - k;
            while (rlen && *reason == ' ') {
                reason++;
                rlen--;
            }
            if (rlen > 123) {
                fprintf(stderr, "* a close reason is at most 123 bytes\n");
                return;
            }
        }
        start_close(a, (unsigned)code, reason, rlen);
    } else if (w == 7 && !memcmp(s, "/binary", 7)) {
        bytes b = {0};
        int hi = -1;
        for (size_t i = 0; i < alen; i++) {
            if (arg[i] == ' ')
                continue;
            int v = hexval((unsigned char)arg[i]);
            if (v < 0) {
                fprintf(stderr, "* not a hex digit: '%c'\n", arg[i]);
                free(b.p);
                return;
            }
            if (hi < 0) {
                hi = v;
            } else {
                uint8_t byte = (uint8_t)(hi << 4 | v);
                if (bytes_append(&b, &byte, 1)) {
                    free(b.p);
                    return;
                }
                hi = -1;
            }
        }
        if (hi >= 0) {
            fprintf(stderr, "* odd number of hex digits\n");
        } else {
            report_send(a, msg_send(a, a->conn, DX_OP_BINARY, b.p ? b.p : (const uint8_t *)"", b.len));
        }
        free(b.p);
    } else if (w == 5 && !memcmp(s, "/help", 5)) {
        print_help_commands();
    } else {
        fprintf(stderr, "* unknown command '%.*s' (/help lists them; '//' sends a leading '/')\n", (int)w, s);
    }
}

static void handle_line(app *a, const uint8_t *s, size_t n)
{
    a->line_no++;
    term_begin(a); /* the commands and warnings print */
    if (a->interactive && n && s[0] == '/') {
        if (n > 1 && s[1] == '/')
            send_text(a, s + 1, n - 1);
        else
            command(a, (const char *)s, n);
    } else {
        send_text(a, s, n);
    }
    term_end(a);
}

/*
 * Turns buffered stdin into messages while the connection is open and the
 * send queue is at most HIGH_WATER. Reading stays on only if everything but
 * a partial line went out: otherwise on_open or on_drain calls this again
 * and reading resumes then. At the end of input, closes with 1000.
 */
static void process_input(app *a)
{
    if (a->processing || a->no_input)
        return;
    a->processing = true;
    for (;;) {
        if (!a->conn || a->closing) {
            a->processing = false;
            if (a->closing) {
                /* Input after /close is dropped; the line editor keeps the
                 * terminal answering until the close completes. */
                a->in_off = a->in.len = 0;
                set_reading(a, a->editing);
            } else {
                /* Not connected (yet, or again): hold what was read until
                 * on_open. The line editor keeps taking keys until a line
                 * is complete, so typing (and Ctrl-D) works meanwhile. */
                set_reading(a, a->editing && a->in.len == a->in_off);
            }
            return;
        }
        if (dx_conn_buffered(a->conn) > HIGH_WATER) {
            a->processing = false;
            set_reading(a, false);
            return; /* on_drain resumes */
        }
        const uint8_t *s = a->in.p ? a->in.p + a->in_off : a->in.p; /* no offset on NULL (UB) */
        size_t avail = a->in.len - a->in_off;
        if (a->binary) {
            if (!avail)
                break;
            a->in_off += avail;
            report_send(a, msg_send(a, a->conn, DX_OP_BINARY, s, avail));
            continue;
        }
        const uint8_t *e = avail ? memchr(s, a->sep, avail) : NULL;
        size_t n;
        if (e)
            n = (size_t)(e - s);
        else if (a->in_eof && avail)
            n = avail; /* a last line without a separator */
        else
            break;
        a->in_off += n + (e != NULL);
        handle_line(a, s, n);
    }
    /* Keep only the partial line. */
    size_t rest = a->in.len - a->in_off;
    if (rest && a->in_off)
        memmove(a->in.p, a->in.p + a->in_off, rest);
    a->in.len = rest;
    a->in_off = 0;
    a->processing = false;
    if (!a->in_eof)
        set_reading(a, true);
    else if (!rest && a->conn && !a->closing)
        finish_input(a);
}

/* ---- receiving ----------------------------------------------------------- */

static void flush_out(app *a)
{
    if (fflush(stdout) == 0 || a->out_broken)
        return;
    a->out_broken = true;
    fprintf(stderr, "connect: writing stdout: %s; closing\n", strerror(errno));
    if (a->conn && !a->closing)
        start_close(a, DX_CLOSE_GOING_AWAY, NULL, 0);
}

static void count_message(app *a)
{
    a->received++;
    if (a->max_messages && a->received >= a->max_messages && a->conn && !a->closing)
        start_close(a, DX_CLOSE_NORMAL, NULL, 0);
}

static void on_message(dx_conn *c, int opcode, const uint8_t *data, size_t len, void *ud)
{
    app *a = ud;
    if (a->show_frames && a->zin)
        fprintf(stderr, "message < compressed rsv1=1 wire=%" PRIu64 " len=%zu\n", a->zin_wire, len);
    a->zin = false;
    if (a->echo) {
        report_send(a, msg_send(a, c, opcode, data, len));
        count_message(a);
        return;
    }
    if (a->out_broken)
        return;
    term_begin(a);
    if (a->binary) {
        fwrite(data, 1, len, stdout); /* raw, text and binary alike */
    } else {
        if (a->interactive)
            fputs("< ", stdout);
        if (opcode == DX_OP_TEXT && a->interactive) {
            cli_put_escaped(stdout, data, len);
        } else if (opcode == DX_OP_TEXT) {
            fwrite(data, 1, len, stdout);
        } else {
            printf("[binary %zu bytes] ", len);
            put_hex(stdout, data, len);
        }
        putchar(a->interactive ? '\n' : a->sep);
    }
    flush_out(a);
    term_end(a);
    count_message(a);
}

static void on_frame(dx_conn *c, int dir, unsigned opcode, int fin, unsigned rsv, uint64_t len, int masked,
                     const uint8_t *head, size_t head_len, void *ud)
{
    app *a = ud;
    (void)c;
    if (a->interactive && dir == '<' && opcode == DX_OP_PONG && a->pings) {
        /* No on_pong callback in the API: the trace shows the first 16 bytes. */
        a->pings--;
        term_begin(a);
        fprintf(stdout, "< pong%s%.*s%s\n", head_len ? ": " : "", (int)head_len, (const char *)head,
                len > head_len ? "..." : "");
        fflush(stdout);
        term_end(a);
    }
    if (!a->show_frames)
        return;
    if (opcode < 8) { /* data frames: the wire bytes of a compressed message */
        bool *z = dir == '<' ? &a->zin : &a->zout;
        uint64_t *w = dir == '<' ? &a->zin_wire : &a->zout_wire;
        if (opcode != DX_OP_CONT) {
            *z = (rsv & DX_RSV1) != 0;
            *w = 0;
        }
        *w += len;
    }
    char text[17];
    for (size_t i = 0; i < head_len && i < 16; i++)
        text[i] = head[i] >= 0x20 && head[i] < 0x7f ? (char)head[i] : '.';
    text[head_len < 16 ? head_len : 16] = 0;
    fprintf(stderr, "frame %c opcode=%u(%s) fin=%d rsv=%u%u%u len=%" PRIu64 " masked=%d head=", dir, opcode,
            opname(opcode), fin ? 1 : 0, (rsv >> 2) & 1, (rsv >> 1) & 1, rsv & 1, len, masked ? 1 : 0);
    put_hex(stderr, head, head_len);
    fprintf(stderr, "%s \"%s\"\n", len > head_len ? "..." : "", text);
}

static void on_open(dx_conn *c, void *ud)
{
    app *a = ud;
    a->conn = c;
    a->closing = false;
    const char *p = dx_conn_protocol(c);
    char remote[64];
    dx_conn_remote(c, remote, sizeof remote);
    note(a, "connected to %s%s%s%s", remote, p ? " (subprotocol " : "", p ? p : "", p ? ")" : "");
    if (a->interactive && !a->no_input)
        note(a, "type a line to send it; /help lists commands; Ctrl-D or Ctrl-C closes");
    if (a->n_execute && !a->executed) {
        a->executed = true;
        for (size_t i = 0; i < a->n_execute && a->conn; i++) {
            a->line_no = i + 1;
            send_text(a, (const uint8_t *)a->execute[i], strlen(a->execute[i]));
        }
        finish_input(a);
        return;
    }
    process_input(a);
}

static void on_drain(dx_conn *c, void *ud)
{
    (void)c;
    process_input(ud);
}

static void on_close(dx_conn *c, unsigned code, const char *reason, size_t len, void *ud)
{
    app *a = ud;
    (void)c;
    a->conn = NULL;
    a->status = normal_code(code) ? ST_OK : ST_FAIL;
    if (a->status == ST_OK)
        note(a, "closed: %u (%s)%s%.*s", code, dx_close_code_name(code), len ? " " : "", (int)len, reason);
    else {
        term_begin(a);
        fprintf(stderr, "connect: closed: %u (%s)%s%.*s\n", code, dx_close_code_name(code), len ? " " : "",
                (int)len, reason);
        term_end(a);
    }
    if (a->listen && (!a->keep || a->input_done)) {
        dx_loop_stop(a->loop); /* one-shot, or --keep and the input ended */
    } else if (a->listen) {
        a->accepted = false; /* --keep: the next client */
        a->closing = false;
        note(a, "waiting for the next client");
    }
}

/* ---- client-only callbacks ----------------------------------------------- */

static int error_status(int err, const char *what)
{
    if (err == DX_EHANDSHAKE)
        return ST_REFUSED; /* the server answered, but not with 101 */
    if (err == DX_ETLS && what && strstr(what, "verif"))
        return ST_REFUSED; /* certificate verification failed */
    return ST_FAIL;
}


/* -L: the absolute URL a Location names, relative to the current URL. */
static int resolve_location(app *a, const char *loc, char *out, size_t cap)
{
    if (strstr(loc, "://"))
        return connect_normalize_url(a, loc, out, cap);
    const char *cur = a->url;
    const char *auth = strstr(cur, "://");
    if (!auth)
        return -1;
    const char *path = strchr(auth + 3, '/');
    size_t base = path ? (size_t)(path - cur) : strlen(cur);
    if (loc[0] != '/' && path) {
        const char *q = strchr(path, '?');
        size_t plen = q ? (size_t)(q - path) : strlen(path);
        while (plen && path[plen - 1] != '/')
            plen--;
        base += plen; /* a relative reference: the current directory */
    }
    if ((size_t)snprintf(out, cap, "%.*s%s%s", (int)base, cur, loc[0] == '/' || path ? "" : "/", loc) >= cap)
        return -1;
    return 0;
}

static void on_error(dx_client *cl, int err, const char *what, void *ud)
{
    app *a = ud;
    a->status = error_status(err, what);
    term_begin(a);
    fprintf(stderr, "connect: %s (%s)\n", what && *what ? what : dx_strerror(err), dx_errname(err));
    term_end(a);
    const char *loc = dx_client_location(cl);
    if (!a->follow_redirects || !loc || a->copt.reconnect)
        return;
    if (a->redirects >= 5) {
        fprintf(stderr, "connect: not following more than 5 redirects\n");
        return;
    }
    if (resolve_location(a, loc, a->redirect, sizeof a->redirect)) {
        fprintf(stderr, "connect: cannot follow Location '%s'\n", loc);
        a->redirect[0] = 0;
        return;
    }
    a->redirects++;
    fprintf(stderr, "connect: following the redirect to %s\n", a->redirect);
}

static int start_client(app *a, const char *url);

/* Posted after on_done: the old client is idle and not on the stack. */
static void do_redirect(void *arg)
{
    app *a = arg;
    dx_client_free(a->cl);
    a->cl = NULL;
    char next[sizeof a->redirect];
    memcpy(next, a->redirect, sizeof next);
    a->redirect[0] = 0;
    int rc = start_client(a, next);
    if (rc) {
        a->status = rc;
        dx_loop_stop(a->loop);
    }
}

static void on_reconnect(dx_client *cl, unsigned attempt, unsigned delay_ms, void *ud)
{
    (void)cl;
    (void)ud;
    fprintf(stderr, "connect: reconnecting in %u ms (attempt %u)\n", delay_ms, attempt);
}

static void on_done(dx_client *cl, void *ud)
{
    app *a = ud;
    (void)cl;
    if (a->redirect[0] && dx_loop_post(a->loop, do_redirect, a) == 0)
        return;
    dx_loop_stop(a->loop);
}

/* ---- server-only callbacks (--listen) ------------------------------------ */

static int on_upgrade(dx_server *srv, dx_request *req, void *ud)
{
    app *a = ud;
    (void)srv;
    if (a->accepted)
        return 503; /* one client at a time */
    if (req->origin) {
        /* A browser (or a page's script) is asking: refuse it unless its
         * origin was allowed, so a web page cannot drive this terminal
         * (cross-site WebSocket hijacking). Tools without Origin pass. */
        bool ok = false;
        for (size_t i = 0; i < a->n_origin_allow && !ok; i++)
            ok = !strcmp(a->origin_allow[i], "*") ||
                 (strlen(a->origin_allow[i]) == req->origin_len &&
                  !strncasecmp(a->origin_allow[i], req->origin, req->origin_len));
        if (!ok) {
            fprintf(stderr, "connect: refused %s: Origin %.*s (browsers are refused; allow with --origin-allow %.*s)\n",
                    req->remote, (int)req->origin_len, req->origin, (int)req->origin_len, req->origin);
            return 403;
        }
    }
    a->accepted = true;
    for (size_t i = 0; i < a->n_protocols; i++) {
        size_t cur = 0, len;
        const char *name;
        while (dx_request_protocol(req, &cur, &name, &len))
            if (strlen(a->protocols[i]) == len && !memcmp(a->protocols[i], name, len)) {
                (void)dx_request_select_protocol(req, name, len);
                goto chosen;
            }
    }
chosen:
    note(a, "client %s asked for %.*s%s%.*s", req->remote, (int)req->path_len, req->path, req->query ? "?" : "",
         (int)req->query_len, req->query ? req->query : "");
    return 0;
}

/* ---- main ---------------------------------------------------------------- */

static int start_client(app *a, const char *url)
{
    dx_client_options *o = &a->copt;
    if (url != a->url)
        snprintf(a->url, sizeof a->url, "%s", url);
    url = a->url;
    o->url = url;
    o->protocols = a->protocols;
    o->n_protocols = a->n_protocols;
    o->headers = a->headers;
    o->n_headers = a->n_headers;
    o->send_high_water = HIGH_WATER;
    o->cb = (dx_client_callbacks){
        .on_open = on_open,
        .on_message = on_message,
        .on_drain = on_drain,
        .on_close = on_close,
        .on_error = on_error,
        .on_reconnect = on_reconnect,
        .on_done = on_done,
        .on_frame = (a->show_frames || a->interactive) ? on_frame : NULL,
    };
    o->ud = a;
    int err;
    a->cl = dx_client_new(a->loop, o, &err);
    if (!a->cl) {
        if (err == DX_EINVAL) {
            /* Name what is wrong: try again without the proxy. */
            dx_client_options t = *o;
            t.proxy = NULL;
            t.unix_path = NULL;
            dx_client *probe = o->proxy ? dx_client_new(a->loop, &t, &err) : NULL;
            if (probe) {
                dx_client_free(probe);
                fprintf(stderr, "connect: invalid --proxy '%s' (http://HOST:PORT or socks5://HOST:PORT)\n",
                        o->proxy);
            } else {
                fprintf(stderr, "connect: invalid URL '%s' (ws://host[:port]/path, wss://..., or "
                                "ws+unix:///socket/path[:/request/path])\n", url);
            }
            return ST_USAGE;
        }
        fprintf(stderr, "connect: %s%s\n", dx_strerror(err),
                err == DX_ETLS ? " (the --ca, --cert or --key file is unusable: see the line above)" : "");
        return ST_FAIL;
    }
    if ((err = dx_client_connect(a->cl)) != 0) {
        fprintf(stderr, "connect: cannot start connecting: %s\n", dx_strerror(err));
        return ST_FAIL;
    }
    note(a, "connecting to %s", url);
    return 0;
}

static int start_server(app *a)
{
    dx_server_options *s = &a->sopt;
    const dx_client_options *o = &a->copt;
    s->host = "127.0.0.1";
    s->port = a->listen_port;
    s->max_message = o->max_message;
    s->send_high_water = HIGH_WATER;
    s->close_timeout_ms = o->close_timeout_ms;
    s->ping_interval_ms = o->ping_interval_ms;
    s->pong_timeout_ms = o->pong_timeout_ms;
    s->handshake_timeout_ms = o->connect_timeout_ms;
    s->deflate = o->deflate; /* --deflate: accepted from the client, with these parameters */
    s->cb = (dx_server_callbacks){
        .on_upgrade = on_upgrade,
        .on_open = on_open,
        .on_message = on_message,
        .on_drain = on_drain,
        .on_close = on_close,
        .on_frame = (a->show_frames || a->interactive) ? on_frame : NULL,
    };
    s->ud = a;
    int err;
    a->srv = dx_server_new(a->loop, s, &err);
    if (!a->srv) {
        fprintf(stderr, "connect: cannot create the server: %s\n", dx_strerror(err));
        return ST_FAIL;
    }
    if ((err = dx_server_start(a->srv)) != 0) {
        fprintf(stderr, "connect: cannot listen on 127.0.0.1:%u: %s (%s)\n",
                a->listen_port == DX_PORT_EPHEMERAL ? 0 : a->listen_port, dx_strerror(err), strerror(errno));
        return ST_FAIL;
    }
    /* Always printed: tests and scripts wait for this line. */
    fprintf(stderr, "connect: listening on 127.0.0.1:%u (one client)\n", dx_server_port(a->srv));
    return 0;
}

int cmd_connect(int argc, char **argv)
{
    app *a = &g_app;
    hold_std_fds();
    memset(a, 0, sizeof *a);
    a->sep = '\n';
    a->log.level = DX_LOG_WARN;
    a->status = ST_FAIL; /* until a connection ends normally */
    a->sig_pipe[0] = a->sig_pipe[1] = -1;
    const char *url = NULL;
    char url_buf[DX_CLI_URL_MAX];
    int rc = connect_parse_args(a, argc, argv, &url, url_buf);
    if (rc)
        return rc < 0 ? ST_OK : rc;
    a->interactive = isatty(0) && !a->binary && a->sep == '\n' && !a->no_input && !a->n_execute;
    a->read_stdin = !a->no_input && !a->n_execute;

    int err;
    dx_loop_options lo = {.log = &a->log};
    a->loop = dx_loop_new(&lo, &err);
    if (!a->loop) {
        fprintf(stderr, "connect: cannot create an event loop: %s\n", dx_strerror(err));
        return ST_FAIL;
    }
    rc = a->listen ? start_server(a) : start_client(a, url);
    if (rc == 0)
        rc = start_input(a);
    if (rc == 0) {
        if (dx_loop_run(a->loop) != 0)
            fprintf(stderr, "connect: event loop failed\n");
        rc = a->status;
    }
    stop_input(a);
    if (a->cl)
        dx_client_free(a->cl);
    if (a->srv)
        dx_server_free(a->srv);
    dx_loop_free(a->loop);
    free(a->in.p);
    return rc;
}
