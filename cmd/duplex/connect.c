/*
 * cmd/duplex/connect.c: `duplex connect URL` (a wscat/websocat) and its
 * one-shot server mode `duplex connect --listen PORT`.
 *
 * Layer: the CLI. Uses only the public headers (duplex/client.h,
 * duplex/server.h); never src/.
 *
 * Threads: the main thread runs the dx_loop and every library call. stdin is
 * read by a second thread (a dx_loop has no fd-watch API) that hands each
 * chunk to the loop with dx_loop_post and then waits for an acknowledgement:
 * one chunk in flight at a time, so memory stays bounded and a slow peer
 * slows the reading of stdin (the loop acknowledges only when the chunk's
 * complete messages are sent and the send queue is at most HIGH_WATER; else
 * on_drain or on_open resumes). The reader polls stdin together with a wake
 * pipe so the main thread can stop and join it at exit.
 *
 * Invariants: `a->conn` is the open connection or NULL; input is turned into
 * messages only while it is open; the reader's buffer is touched by the loop
 * thread only between a post and its acknowledgement.
 */
#define _GNU_SOURCE
#include "cli.h"
#include "duplex/client.h"
#include "duplex/server.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_LIST 64                 /* -H and --subprotocol entries */
#define CHUNK (64u * 1024u)         /* stdin read size; one binary message per read */
#define HIGH_WATER (64u * 1024u)    /* send_high_water given to the library */
#define ECHO_MAX_MESSAGE (16u << 20) /* --echo's default --max-message (Autobahn's 9.x cases reach 16 MiB) */

/* Exit statuses (documented in --help and docs/connect.md). */
enum { ST_OK = 0, ST_FAIL = 1, ST_USAGE = 2, ST_REFUSED = 3 };

typedef struct bytes {
    uint8_t *p;
    size_t len, cap;
} bytes;

typedef struct app {
    /* settings */
    bool interactive, binary, echo, no_input, show_frames, listen;
    char sep;
    unsigned listen_port;
    const char *headers[MAX_LIST];
    size_t n_headers;
    const char *protocols[MAX_LIST];
    size_t n_protocols;
    dx_client_options copt;
    dx_server_options sopt;
    dx_log log;

    /* loop-thread state */
    dx_loop *loop;
    dx_client *cl;
    dx_server *srv;
    dx_conn *conn;      /* the open connection or NULL */
    bool accepted;      /* --listen: a client was accepted (one-shot) */
    bool closing;       /* we started the close handshake */
    bool processing;    /* process_input is on the stack */
    bool out_broken;    /* writing stdout failed */
    int status;         /* exit status so far */
    unsigned pings;     /* /ping sent, pong not printed yet */
    bytes in;           /* stdin bytes not yet turned into messages */
    size_t in_off;
    bool in_eof;
    bool holding;       /* the reader's chunk is in `in`, not acknowledged yet */
    unsigned long line_no;

    /* stdin reader thread */
    pthread_t reader;
    bool reader_started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool posted;        /* a chunk is with the loop, not acknowledged yet */
    bool quitting;      /* the main thread is shutting down */
    int wake[2];        /* main → reader: stop polling stdin */
    uint8_t rbuf[CHUNK];
    size_t rlen;        /* 0: end of input */
} app;

static app g_app; /* large buffer: static, set up once by cmd_connect */


/* ---- small helpers ------------------------------------------------------- */

static int bytes_append(bytes *b, const void *p, size_t n)
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
    fputs("* ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static bool normal_code(unsigned code)
{
    return code == DX_CLOSE_NORMAL || code == DX_CLOSE_GOING_AWAY;
}

/* ---- the stdin reader thread --------------------------------------------- */

static void process_input(app *a);

/* Loop thread: the reader's chunk (or end of input) arrived. */
static void on_stdin(void *arg)
{
    app *a = arg;
    if (a->rlen == 0) {
        a->in_eof = true;
    } else if (bytes_append(&a->in, a->rbuf, a->rlen)) {
        fprintf(stderr, "connect: out of memory reading stdin\n");
        a->status = ST_FAIL;
        dx_loop_stop(a->loop);
        return;
    } else {
        a->holding = true;
    }
    if (a->in_eof && !a->conn && a->interactive) {
        /* Ctrl-D while not connected: give up rather than wait. */
        if (a->cl)
            (void)dx_client_close(a->cl, DX_CLOSE_NORMAL, NULL, 0); /* on_done follows */
        else
            dx_loop_stop(a->loop);
        return;
    }
    process_input(a);
}

/* Loop thread: the reader may read its next chunk. Only a chunk that
 * on_stdin has taken in is acknowledged: process_input also runs before a
 * posted chunk arrives (on_open, on_drain), and acknowledging then would let
 * the reader overwrite rbuf before on_stdin copied it. */
static void ack_reader(app *a)
{
    if (!a->holding)
        return;
    a->holding = false;
    pthread_mutex_lock(&a->mu);
    if (a->posted) {
        a->posted = false;
        pthread_cond_signal(&a->cv);
    }
    pthread_mutex_unlock(&a->mu);
}

static void *reader_main(void *arg)
{
    app *a = arg;
    for (;;) {
        struct pollfd pf[2] = {{.fd = 0, .events = POLLIN}, {.fd = a->wake[0], .events = POLLIN}};
        if (poll(pf, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (pf[1].revents)
            break;
        ssize_t n = read(0, a->rbuf, sizeof a->rbuf);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n < 0) {
            fprintf(stderr, "connect: reading stdin: %s\n", strerror(errno));
            n = 0; /* treated as end of input */
        }
        pthread_mutex_lock(&a->mu);
        if (a->quitting) {
            pthread_mutex_unlock(&a->mu);
            break;
        }
        a->rlen = (size_t)n;
        a->posted = true;
        pthread_mutex_unlock(&a->mu);
        /* The main thread joins this thread before freeing the loop. */
        if (dx_loop_post(a->loop, on_stdin, a) != 0) {
            fprintf(stderr, "connect: out of memory\n");
            break;
        }
        if (n == 0)
            break;
        pthread_mutex_lock(&a->mu);
        while (a->posted && !a->quitting)
            pthread_cond_wait(&a->cv, &a->mu);
        bool q = a->quitting;
        pthread_mutex_unlock(&a->mu);
        if (q)
            break;
    }
    return NULL;
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

static void send_text(app *a, const uint8_t *s, size_t n)
{
    int err = dx_conn_send(a->conn, DX_OP_TEXT, s, n);
    if (err == DX_EUTF8) {
        fprintf(stderr, "connect: line %lu is not valid UTF-8: sent as a binary message\n", a->line_no);
        if (a->conn)
            err = dx_conn_send(a->conn, DX_OP_BINARY, s, n);
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
            report_send(a, dx_conn_send(a->conn, DX_OP_BINARY, b.p ? b.p : (const uint8_t *)"", b.len));
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
    if (a->interactive && n && s[0] == '/') {
        if (n > 1 && s[1] == '/')
            send_text(a, s + 1, n - 1);
        else
            command(a, (const char *)s, n);
        return;
    }
    send_text(a, s, n);
}

/*
 * Loop thread: turns buffered stdin into messages while the connection is
 * open and the send queue is below HIGH_WATER; acknowledges the reader when
 * only a partial line is left; at the end of input, closes with 1000.
 */
static void process_input(app *a)
{
    if (a->processing || a->no_input)
        return;
    a->processing = true;
    for (;;) {
        if (!a->conn || a->closing) {
            a->processing = false;
            if (a->closing && !a->in_eof)
                ack_reader(a); /* input after /close is dropped */
            if (a->closing)
                a->in_off = a->in.len = 0;
            return;
        }
        if (dx_conn_buffered(a->conn) > HIGH_WATER) {
            a->processing = false;
            return; /* on_drain resumes */
        }
        const uint8_t *s = a->in.p ? a->in.p + a->in_off : a->in.p; /* no offset on NULL (UB) */
        size_t avail = a->in.len - a->in_off;
        if (a->binary) {
            if (!avail)
                break;
            a->in_off += avail;
            report_send(a, dx_conn_send(a->conn, DX_OP_BINARY, s, avail));
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
        ack_reader(a);
    else if (!rest && a->conn && !a->closing)
        start_close(a, DX_CLOSE_NORMAL, NULL, 0);
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

static void on_message(dx_conn *c, int opcode, const uint8_t *data, size_t len, void *ud)
{
    app *a = ud;
    if (a->echo) {
        report_send(a, dx_conn_send(c, opcode, data, len));
        return;
    }
    if (a->out_broken)
        return;
    if (a->binary) {
        fwrite(data, 1, len, stdout); /* raw, text and binary alike */
    } else {
        if (a->interactive)
            fputs("< ", stdout);
        if (opcode == DX_OP_TEXT) {
            fwrite(data, 1, len, stdout);
        } else {
            printf("[binary %zu bytes] ", len);
            put_hex(stdout, data, len);
        }
        putchar(a->interactive ? '\n' : a->sep);
    }
    flush_out(a);
}

static void on_frame(dx_conn *c, int dir, unsigned opcode, int fin, unsigned rsv, uint64_t len, int masked,
                     const uint8_t *head, size_t head_len, void *ud)
{
    app *a = ud;
    (void)c;
    if (a->interactive && dir == '<' && opcode == DX_OP_PONG && a->pings) {
        /* No on_pong callback in the API: the trace shows the first 16 bytes. */
        a->pings--;
        fprintf(stdout, "< pong%s%.*s%s\n", head_len ? ": " : "", (int)head_len, (const char *)head,
                len > head_len ? "..." : "");
        fflush(stdout);
    }
    if (!a->show_frames)
        return;
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
        note(a, "type a line to send it; /help lists commands; Ctrl-D closes");
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
    else
        fprintf(stderr, "connect: closed: %u (%s)%s%.*s\n", code, dx_close_code_name(code), len ? " " : "",
                (int)len, reason);
    if (a->listen)
        dx_loop_stop(a->loop); /* one-shot */
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

static void on_error(dx_client *cl, int err, const char *what, void *ud)
{
    app *a = ud;
    (void)cl;
    a->status = error_status(err, what);
    fprintf(stderr, "connect: %s (%s)\n", what && *what ? what : dx_strerror(err), dx_errname(err));
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
    dx_loop_stop(a->loop);
}

/* ---- server-only callbacks (--listen) ------------------------------------ */

static int on_upgrade(dx_server *srv, dx_request *req, void *ud)
{
    app *a = ud;
    (void)srv;
    if (a->accepted)
        return 503; /* one client only */
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

/* ---- options ------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: duplex connect [options] URL\n"
            "       duplex connect [options] --listen PORT\n"
            "\n"
            "A WebSocket client for terminals and pipes. URL is ws://host[:port]/path?query or\n"
            "wss://...; an IPv6 host is written [::1].\n"
            "\n"
            "Interactive (stdin is a terminal): each line typed is sent as a text message;\n"
            "received messages are printed after '< ' (binary ones as '[binary N bytes] HEX').\n"
            "Commands: /ping [text], /close [code [reason]], /binary HEX, /help; '//' sends a\n"
            "leading '/'. Ctrl-D closes with 1000 and exits.\n"
            "\n"
            "Pipe (stdin is not a terminal): each input line is a text message (a line that is\n"
            "not UTF-8 goes as binary), each received message is written as a line (binary as\n"
            "'[binary N bytes] HEX'). At the end of stdin: close 1000, wait for the peer's close.\n"
            "\n"
            "options (times take s/ms/m, sizes K/M/G; defaults in brackets):\n"
            "  -b, --binary             stdin read in chunks of up to 64KiB, each sent as one binary\n"
            "                           message; received messages written raw, no separator [off]\n"
            "  -0, --null               NUL instead of newline separates messages both ways [newline]\n"
            "  -n, --no-input           do not read stdin; print until the peer closes [off]\n"
            "  -e, --echo               send every received message back with its opcode, print\n"
            "                           nothing (client conformance); implies --no-input and\n"
            "                           --max-message 16MiB unless given [off]\n"
            "      --show-frames        trace every frame both ways on stderr: direction (> sent,\n"
            "                           < received), opcode, fin, rsv bits, length, masked, first\n"
            "                           16 payload bytes in hex and as text [off]\n"
            "  -H, --header 'N: v'      extra request header (repeatable) [none]\n"
            "  -s, --subprotocol P      offer subprotocol P (repeatable); with --listen, accept the\n"
            "                           first of these the client offers [none]\n"
            "  -o, --origin O           Origin header [none]\n"
            "  -k, --insecure           do not verify the server's certificate (tests only) [verify]\n"
            "      --ca FILE            trust the PEM CAs in FILE instead of the system store [system]\n"
            "      --proxy URL          tunnel through an HTTP CONNECT proxy http://host:port [none]\n"
            "      --connect-timeout T  DNS + TCP + proxy + TLS + handshake [10s]\n"
            "      --ping-interval T    heartbeat ping period, 'off' to disable [30s]\n"
            "      --pong-timeout T     drop the connection when a ping gets no pong [10s]\n"
            "      --close-timeout T    wait for the peer's close frame [5s]\n"
            "      --max-message BYTES  larger incoming messages: close 1009 [1MiB; 16MiB with --echo]\n"
            "      --reconnect          reconnect after a close or a failed attempt, with a random\n"
            "                           delay up to min(cap, base * 2^(attempt-1)) [off]\n"
            "      --backoff-base T     first delay bound [500ms]\n"
            "      --backoff-cap T      delay bound cap [30s]\n"
            "      --max-attempts N     consecutive failed attempts before giving up [0: unlimited]\n"
            "  -l, --listen PORT        one-shot server instead: accept one client on\n"
            "                           127.0.0.1:PORT (0: any free port; the port is printed on\n"
            "                           stderr), print what it sends, exit when it closes [off]\n"
            "      --log-level L        library log: error|warn|info|debug [warn]\n"
            "  -h, --help               this text\n"
            "\n"
            "exit status:\n"
            "  0  the connection closed normally (code 1000 or 1001, whoever closed)\n"
            "  1  the connection failed (DNS, TCP, proxy, TLS, timeout) or closed with any other\n"
            "     code (printed on stderr)\n"
            "  2  usage error\n"
            "  3  TLS certificate verification failed, or the opening handshake failed (the\n"
            "     server answered with an HTTP status other than 101, or an invalid 101)\n");
}

enum {
    O_SHOW = 256, O_CA, O_PROXY, O_CTO, O_PING, O_PONG, O_CLOSETO, O_MAXMSG, O_RECONNECT, O_BBASE, O_BCAP,
    O_MAXATT, O_LOGLEVEL
};

static int bad(const char *opt, const char *val)
{
    fprintf(stderr, "connect: invalid value for --%s: '%s' (see duplex connect --help)\n", opt, val);
    return ST_USAGE;
}

static int parse_args(app *a, int argc, char **argv, const char **url)
{
    static const struct option longopts[] = {
        {"binary", no_argument, 0, 'b'},
        {"null", no_argument, 0, '0'},
        {"no-input", no_argument, 0, 'n'},
        {"echo", no_argument, 0, 'e'},
        {"show-frames", no_argument, 0, O_SHOW},
        {"header", required_argument, 0, 'H'},
        {"subprotocol", required_argument, 0, 's'},
        {"origin", required_argument, 0, 'o'},
        {"insecure", no_argument, 0, 'k'},
        {"ca", required_argument, 0, O_CA},
        {"proxy", required_argument, 0, O_PROXY},
        {"connect-timeout", required_argument, 0, O_CTO},
        {"ping-interval", required_argument, 0, O_PING},
        {"pong-timeout", required_argument, 0, O_PONG},
        {"close-timeout", required_argument, 0, O_CLOSETO},
        {"max-message", required_argument, 0, O_MAXMSG},
        {"reconnect", no_argument, 0, O_RECONNECT},
        {"backoff-base", required_argument, 0, O_BBASE},
        {"backoff-cap", required_argument, 0, O_BCAP},
        {"max-attempts", required_argument, 0, O_MAXATT},
        {"listen", required_argument, 0, 'l'},
        {"log-level", required_argument, 0, O_LOGLEVEL},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    dx_client_options *o = &a->copt;
    unsigned long v;
    int ch;
    bool max_message_set = false;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "b0neH:s:o:kl:h", longopts, NULL)) != -1) {
        const char *name = cli_option_name(longopts, ch);
        switch (ch) {
        case 'h':
            usage(stdout);
            return -1;
        case 'b':
            a->binary = true;
            break;
        case '0':
            a->sep = '\0';
            break;
        case 'n':
            a->no_input = true;
            break;
        case 'e':
            a->echo = a->no_input = true;
            break;
        case O_SHOW:
            a->show_frames = true;
            break;
        case 'H':
            if (a->n_headers == MAX_LIST)
                return bad("header", "more than 64 headers");
            if (!strchr(optarg, ':') || optarg[0] == ':' || strpbrk(optarg, "\r\n"))
                return bad("header", optarg);
            a->headers[a->n_headers++] = optarg;
            break;
        case 's':
            if (a->n_protocols == MAX_LIST)
                return bad("subprotocol", "more than 64 subprotocols");
            if (!*optarg || strpbrk(optarg, " ,\t\r\n"))
                return bad("subprotocol", optarg);
            a->protocols[a->n_protocols++] = optarg;
            break;
        case 'o':
            o->origin = optarg;
            break;
        case 'k':
            o->insecure = 1;
            break;
        case O_CA:
            o->ca_file = optarg;
            break;
        case O_PROXY:
            o->proxy = optarg;
            break;
        case O_CTO:
            if (cli_parse_ms(optarg, &o->connect_timeout_ms) || !o->connect_timeout_ms)
                return bad(name, optarg);
            break;
        case O_PING:
            if (cli_parse_ms(optarg, &o->ping_interval_ms))
                return bad(name, optarg);
            if (!o->ping_interval_ms)
                o->ping_interval_ms = (unsigned)-1; /* off */
            break;
        case O_PONG:
            if (cli_parse_ms(optarg, &o->pong_timeout_ms) || !o->pong_timeout_ms)
                return bad(name, optarg);
            break;
        case O_CLOSETO:
            if (cli_parse_ms(optarg, &o->close_timeout_ms) || !o->close_timeout_ms)
                return bad(name, optarg);
            break;
        case O_MAXMSG:
            if (cli_parse_size(optarg, &o->max_message) || !o->max_message)
                return bad(name, optarg);
            max_message_set = true;
            break;
        case O_RECONNECT:
            o->reconnect = 1;
            break;
        case O_BBASE:
            if (cli_parse_ms(optarg, &o->backoff_base_ms) || !o->backoff_base_ms)
                return bad(name, optarg);
            break;
        case O_BCAP:
            if (cli_parse_ms(optarg, &o->backoff_cap_ms) || !o->backoff_cap_ms)
                return bad(name, optarg);
            break;
        case O_MAXATT:
            if (cli_parse_uint(optarg, 0, 1000000, &v))
                return bad(name, optarg);
            o->max_attempts = (unsigned)v;
            break;
        case 'l':
            if (cli_parse_uint(optarg, 0, 65535, &v))
                return bad("listen", optarg);
            a->listen = true;
            a->listen_port = v ? (unsigned)v : DX_PORT_EPHEMERAL;
            break;
        case O_LOGLEVEL:
            if ((a->log.level = cli_parse_log_level(optarg)) < 0)
                return bad(name, optarg);
            break;
        default:
            usage(stderr);
            return ST_USAGE;
        }
    }
    if (a->echo && !max_message_set)
        o->max_message = ECHO_MAX_MESSAGE; /* accept what `duplex serve --max-message 16MiB` accepts */
    if (a->listen) {
        if (optind < argc) {
            fprintf(stderr, "connect: --listen takes no URL (got '%s')\n", argv[optind]);
            return ST_USAGE;
        }
        if (o->proxy || o->ca_file || o->insecure || o->reconnect || o->origin || a->n_headers) {
            fprintf(stderr, "connect: --proxy, --ca, --insecure, --reconnect, --origin and -H are client "
                            "options, not for --listen\n");
            return ST_USAGE;
        }
    } else {
        if (optind >= argc) {
            fprintf(stderr, "connect: missing URL (see duplex connect --help)\n");
            return ST_USAGE;
        }
        if (optind + 1 < argc) {
            fprintf(stderr, "connect: unexpected argument '%s'\n", argv[optind + 1]);
            return ST_USAGE;
        }
        *url = argv[optind];
    }
    if (a->binary && a->sep == '\0') {
        fprintf(stderr, "connect: --binary and --null do not go together (binary has no separator)\n");
        return ST_USAGE;
    }
    if (o->backoff_base_ms && o->backoff_cap_ms && o->backoff_base_ms > o->backoff_cap_ms) {
        fprintf(stderr, "connect: --backoff-base must not exceed --backoff-cap\n");
        return ST_USAGE;
    }
    return 0;
}

/* ---- main ---------------------------------------------------------------- */

static int start_client(app *a, const char *url)
{
    dx_client_options *o = &a->copt;
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
            fprintf(stderr, "connect: invalid URL or option: '%s' (ws://host[:port]/path or wss://...)\n", url);
            return ST_USAGE;
        }
        fprintf(stderr, "connect: %s%s\n", dx_strerror(err), err == DX_ETLS ? " (the --ca file is unusable)" : "");
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

static void stop_reader(app *a)
{
    if (!a->reader_started)
        return;
    pthread_mutex_lock(&a->mu);
    a->quitting = true;
    pthread_cond_signal(&a->cv);
    pthread_mutex_unlock(&a->mu);
    ssize_t r = write(a->wake[1], "x", 1);
    (void)r;
    pthread_join(a->reader, NULL);
    a->reader_started = false;
}

int cmd_connect(int argc, char **argv)
{
    app *a = &g_app;
    memset(a, 0, sizeof *a);
    a->sep = '\n';
    a->log.level = DX_LOG_WARN;
    a->status = ST_FAIL; /* until a connection ends normally */
    a->wake[0] = a->wake[1] = -1;
    pthread_mutex_init(&a->mu, NULL);
    pthread_cond_init(&a->cv, NULL);
    const char *url = NULL;
    int rc = parse_args(a, argc, argv, &url);
    if (rc) {
        pthread_cond_destroy(&a->cv);
        pthread_mutex_destroy(&a->mu);
        return rc < 0 ? ST_OK : rc;
    }
    a->interactive = isatty(0) && !a->binary && a->sep == '\n' && !a->no_input;

    int err;
    dx_loop_options lo = {.log = &a->log};
    a->loop = dx_loop_new(&lo, &err);
    if (!a->loop) {
        fprintf(stderr, "connect: cannot create an event loop: %s\n", dx_strerror(err));
        pthread_cond_destroy(&a->cv);
        pthread_mutex_destroy(&a->mu);
        return ST_FAIL;
    }
    rc = a->listen ? start_server(a) : start_client(a, url);
    if (rc == 0 && !a->no_input) {
        if (pipe(a->wake) < 0 || pthread_create(&a->reader, NULL, reader_main, a) != 0) {
            fprintf(stderr, "connect: cannot start the stdin reader\n");
            rc = ST_FAIL;
        } else {
            a->reader_started = true;
        }
    }
    if (rc == 0) {
        if (dx_loop_run(a->loop) != 0)
            fprintf(stderr, "connect: event loop failed\n");
        rc = a->status;
    }
    stop_reader(a);
    if (a->cl)
        dx_client_free(a->cl);
    if (a->srv)
        dx_server_free(a->srv);
    dx_loop_free(a->loop);
    if (a->wake[0] >= 0) {
        close(a->wake[0]);
        close(a->wake[1]);
    }
    pthread_cond_destroy(&a->cv);
    pthread_mutex_destroy(&a->mu);
    free(a->in.p);
    return rc;
}
