/*
 * cmd/duplex/connect.h: what connect.c (the loop: stdin, sending,
 * receiving) and connect_opts.c (the command line) share: the settings and
 * state of one `duplex connect` run.
 *
 * Layer: the CLI. Public headers only.
 */
#ifndef DX_CMD_CONNECT_H
#define DX_CMD_CONNECT_H

#include "duplex/client.h"
#include "duplex/loop.h"
#include "duplex/server.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MAX_LIST 64                 /* -H and --subprotocol entries */
#define CHUNK (64u * 1024u)         /* stdin read size; one binary message per read */
#define HIGH_WATER (64u * 1024u)    /* send_high_water given to the library */
#define DX_CLI_URL_MAX 8192         /* a URL as given on the command line */
#define ECHO_MAX_MESSAGE (16u << 20) /* --echo's default --max-message (Autobahn's 9.x cases reach 16 MiB) */

/* Exit statuses (documented in --help and docs/connect.md). */
enum { ST_OK = 0, ST_FAIL = 1, ST_USAGE = 2, ST_REFUSED = 3 };

typedef struct bytes {
    uint8_t *p;
    size_t len, cap;
} bytes;

typedef struct app {
    /* settings */
    bool interactive, binary, echo, no_input, show_frames, listen, keep;
    /* --show-frames of compressed messages (RSV1): wire bytes of the one
     * being received / just sent, shown with the inflated / raw length. */
    bool zin, zout;
    uint64_t zin_wire, zout_wire;
    bool wait_set;          /* -w given */
    bool follow_redirects;  /* -L: follow a 3xx Location */
    unsigned wait_ms;       /* -w: how long to stay after the input ended */
    unsigned long max_messages; /* --max-messages / -1: 0 = no limit */
    const char *execute[MAX_LIST]; /* -x messages */
    size_t n_execute;
    const char *origin_allow[MAX_LIST]; /* --listen: browser origins accepted ("*": all) */
    size_t n_origin_allow;
    char auth_header[1024]; /* --basic-auth, as a header line */
    char unix_path[256];    /* ws+unix:// URLs: the socket */
    char url[8192];         /* the URL being connected to (after redirects) */
    char redirect[8192];    /* -L: the next URL, set by on_error, used after on_done */
    unsigned redirects;
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
    bool input_done;    /* stdin ended (or -x was sent): the --wait phase */
    bool executed;      /* the -x messages went out */
    unsigned long received; /* messages received (for --max-messages) */
    unsigned long line_no;

    /* output nesting while the line editor runs */
    unsigned term_depth;

    /* stdin, Ctrl-C and --wait on the loop */
    bool read_stdin;     /* stdin is input (not --no-input, not -x) */
    bool editing;        /* the line editor has the terminal */
    bool typed_eof;      /* Ctrl-D in the line editor, seen by read_input */
    bool reading;        /* in_watch asks for DX_WATCH_READ, or in_timer is armed */
    dx_watch *in_watch;  /* fd 0 when epoll takes it */
    dx_timer *in_timer;  /* else: one chunk per expiry (regular file, /dev/null) */
    dx_timer *wait_timer; /* --wait */
    dx_watch *sig_watch; /* sig_pipe[0]: the SIGINT handler's byte */
    int sig_pipe[2];
} app;

/* connect_opts.c: parses argv into `a` (settings, client or server
 * options); *url gets the URL to connect to (normalised into url_buf, of
 * sizeof a->url bytes). Returns -1 to go on, else the exit status (usage
 * errors, --help, --version). */
int connect_parse_args(app *a, int argc, char **argv, const char **url, char *url_buf);

/* A URL as typed (no scheme: ws://; ws+unix:// sets a->unix_path) into
 * `out`. 0, or -1 with a message printed. */
int connect_normalize_url(app *a, const char *in, char *out, size_t cap);

#endif
