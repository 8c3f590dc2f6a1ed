/*
 * cmd/duplex/connect_opts.c: the command line of `duplex connect`: --help,
 * option parsing into the client or server options, URL normalisation
 * (no scheme means ws://; ws+unix:// URLs), header checks.
 *
 * Layer: the CLI. Public headers only. Fires nothing: it only fills `app`.
 */
#define _GNU_SOURCE
#include "cli.h"
#include "connect.h"
#include "lineedit.h"

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

/* ---- options ------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: duplex connect [options] URL\n"
            "       duplex connect [options] --listen PORT\n"
            "\n"
            "A WebSocket client for terminals and pipes. URL is ws://host[:port]/path?query or\n"
            "wss://...; an IPv6 host is written [::1]; without a scheme, ws:// is meant (http://\n"
            "and https:// are read as ws:// and wss://); ws+unix:///socket/path[:/request/path]\n"
            "connects to a Unix socket.\n"
            "\n"
            "Interactive (stdin is a terminal): each line typed is sent as a text message;\n"
            "received messages are printed after '< ' (binary ones as '[binary N bytes] HEX').\n"
            "Commands: /ping [text], /close [code [reason]], /binary HEX, /help; '//' sends a\n"
            "leading '/'. Ctrl-D or Ctrl-C closes with 1000 and exits; a second Ctrl-C exits at\n"
            "once (status 130). Received text is shown with control characters escaped.\n"
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
            "  -x, --execute MSG        send MSG as a text message once connected, instead of\n"
            "                           reading stdin (repeatable: in order) [none]\n"
            "  -w, --wait T             after the input ended (stdin or -x), stay T before closing\n"
            "                           with 1000, to print late replies [0; with --max-messages: until\n"
            "                           they arrived]\n"
            "      --max-messages N     close with 1000 after N received messages [no limit]\n"
            "  -1, --one-message        --max-messages 1\n"
            "  -e, --echo               send every received message back with its opcode, print\n"
            "                           nothing (client conformance); implies --no-input and\n"
            "                           --max-message 16MiB unless given [off]\n"
            "      --show-frames        trace every frame both ways on stderr: direction (> sent,\n"
            "                           < received), opcode, fin, rsv bits, length, masked, first\n"
            "                           16 payload bytes in hex and as text; a compressed message\n"
            "                           (rsv=100) gets a line with its length and its wire bytes [off]\n"
            "      --deflate[=PARAMS]   offer permessage-deflate (RFC 7692); PARAMS: the offer's\n"
            "                           parameters, e.g. --deflate='server_no_context_takeover;\n"
            "                           client_max_window_bits=10'; with --listen, what the server\n"
            "                           accepts and asks for (docs/deflate.md) [off]\n"
            "      --no-deflate         do not offer it [default]\n"
            "  -H, --header 'N: v'      extra request header (repeatable) [none]\n"
            "  -s, --subprotocol P      offer subprotocol P (repeatable; also --protocol); with\n"
            "                           --listen, accept the first of these the client offers [none]\n"
            "  -o, --origin O           Origin header [none]\n"
            "  -k, --insecure           do not verify the server's certificate (tests only) [verify]\n"
            "      --ca FILE            trust the PEM CAs in FILE instead of the system store [system]\n"
            "      --cert FILE --key FILE  client certificate (PEM) for servers that ask [none]\n"
            "      --basic-auth U:P     Authorization: Basic header (also --auth) [none]\n"
            "      --proxy URL          through a proxy: http://host:port (HTTP CONNECT) or\n"
            "                           socks5://host[:1080] (the proxy resolves the name) [none]\n"
            "      --socks5 HOST:PORT   same as --proxy socks5://HOST:PORT\n"
            "  -L, --follow-redirects   follow a 3xx Location (up to 5; shown either way) [off]\n"
            "  -c, --connect URL        the URL, as an option (wscat)\n"
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
            "      --keep               with --listen: serve clients one after another until\n"
            "                           Ctrl-C (or the end of stdin) [off]\n"
            "      --origin-allow O     with --listen: accept browsers from origin O (repeatable;\n"
            "                           '*': any). Requests with an Origin header are refused\n"
            "                           (403) otherwise [refuse]\n"
            "      --log-level L        library log: error|warn|info|debug [warn]\n"
            "  -V, --version            print the version\n"
            "  -h, --help               this text\n"
            "\n"
            "exit status:\n"
            "  0  the connection closed normally (code 1000 or 1001, whoever closed)\n"
            "  1  the connection failed (DNS, TCP, proxy, TLS, timeout) or closed with any other\n"
            "     code (printed on stderr)\n"
            "  2  usage error\n"
            "  130  a second Ctrl-C\n"
            "  3  TLS certificate verification failed, or the opening handshake failed (the\n"
            "     server answered with an HTTP status other than 101, or an invalid 101)\n");
}

enum {
    O_SHOW = 256, O_PROXY, O_CTO, O_RECONNECT, O_BBASE, O_BCAP, O_MAXATT, O_MAXMSGS, O_AUTH, O_CERT, O_KEY,
    O_ORIGIN_ALLOW, O_KEEP, O_SOCKS5
};


/* Header names the library writes itself: -H may not set them. */
static const char *reserved_header(const char *line)
{
    static const char *const names[] = {"Host", "Upgrade", "Connection", "Origin"};
    size_t n = strcspn(line, ":");
    while (n && (line[n - 1] == ' ' || line[n - 1] == '\t'))
        n--;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strlen(names[i]) == n && !strncasecmp(line, names[i], n))
            return names[i];
    if (n >= 14 && !strncasecmp(line, "Sec-WebSocket-", 14))
        return "Sec-WebSocket-*";
    return NULL;
}

static bool header_name_ok(const char *line)
{
    size_t n = strcspn(line, ":");
    if (n == 0 || !line[n])
        return false;
    for (size_t i = 0; i < n; i++) /* RFC 9110 token */
        if (!isalnum((unsigned char)line[i]) && !strchr("!#$%&'*+-.^_`|~", line[i]))
            return false;
    return !strpbrk(line, "\r\n");
}

/* The URL as the library takes it: no scheme means ws://; http(s):// are
 * taken as ws(s)://; ws+unix:///socket/path[:/request/path] (as in Node's
 * ws) connects to the Unix socket, with Host: localhost. 0, or ST_USAGE
 * after a message. */
int connect_normalize_url(app *a, const char *in, char *out, size_t cap)
{
    const char *rest = in;
    const char *scheme = "ws://";
    if (!strncasecmp(in, "ws+unix://", 10)) {
        const char *sock = in + 10;
        const char *colon = strchr(sock, ':');
        size_t n = colon ? (size_t)(colon - sock) : strlen(sock);
        if (!n || sock[0] != '/' || n >= sizeof a->unix_path) {
            fprintf(stderr, "connect: '%s': expected ws+unix:///absolute/socket/path[:/request/path]\n", in);
            return ST_USAGE;
        }
        memcpy(a->unix_path, sock, n);
        a->unix_path[n] = 0;
        a->copt.unix_path = a->unix_path;
        const char *req = colon ? colon + 1 : "/";
        if ((size_t)snprintf(out, cap, "ws://localhost%s%s", req[0] == '/' ? "" : "/", req) >= cap)
            return ST_USAGE;
        return 0;
    }
    if (!strncasecmp(in, "http://", 7)) {
        rest = in + 7;
    } else if (!strncasecmp(in, "https://", 8)) {
        rest = in + 8;
        scheme = "wss://";
    } else if (strstr(in, "://")) {
        scheme = "";
    }
    if ((size_t)snprintf(out, cap, "%s%s", scheme, rest) >= cap) {
        fprintf(stderr, "connect: URL too long (more than %zu bytes)\n", cap - 1);
        return ST_USAGE;
    }
    return 0;
}

int connect_parse_args(app *a, int argc, char **argv, const char **url, char *url_buf)
{
    static const struct option own[] = {
        {"binary", no_argument, 0, 'b'},
        {"null", no_argument, 0, '0'},
        {"no-input", no_argument, 0, 'n'},
        {"echo", no_argument, 0, 'e'},
        {"show-frames", no_argument, 0, O_SHOW},
        {"header", required_argument, 0, 'H'},
        {"subprotocol", required_argument, 0, 's'},
        {"origin", required_argument, 0, 'o'},
        {"proxy", required_argument, 0, O_PROXY},
        {"connect-timeout", required_argument, 0, O_CTO},
        {"reconnect", no_argument, 0, O_RECONNECT},
        {"backoff-base", required_argument, 0, O_BBASE},
        {"backoff-cap", required_argument, 0, O_BCAP},
        {"max-attempts", required_argument, 0, O_MAXATT},
        {"listen", required_argument, 0, 'l'},
        {"help", no_argument, 0, 'h'},
        {"execute", required_argument, 0, 'x'},
        {"wait", required_argument, 0, 'w'},
        {"max-messages", required_argument, 0, O_MAXMSGS},
        {"one-message", no_argument, 0, '1'},
        {"version", no_argument, 0, 'V'},
        {"basic-auth", required_argument, 0, O_AUTH},
        {"auth", required_argument, 0, O_AUTH},            /* wscat */
        {"cert", required_argument, 0, O_CERT},
        {"key", required_argument, 0, O_KEY},
        {"follow-redirects", no_argument, 0, 'L'},
        {"location", no_argument, 0, 'L'},                 /* wscat */
        {"origin-allow", required_argument, 0, O_ORIGIN_ALLOW},
        {"keep", no_argument, 0, O_KEEP},
        {"connect", required_argument, 0, 'c'},            /* wscat -c URL */
        {"protocol", required_argument, 0, 's'},           /* websocat */
        {"ping-timeout", required_argument, 0, CLI_O_PONG_TIMEOUT}, /* websocat */
        {"socks5", required_argument, 0, O_SOCKS5},        /* websocat: HOST:PORT */
        {"insecure-skip-verify", no_argument, 0, CLI_O_INSECURE},
        {"null-terminated", no_argument, 0, '0'},          /* websocat */
        {0, 0, 0, 0},
    };
    static char socks_buf[300];
    const char *url_arg = NULL;
    dx_client_options *o = &a->copt;
    const cli_common common = {
        .prefix = "connect", .cmd = "connect",
        .max_message = &o->max_message, .close_timeout_ms = &o->close_timeout_ms,
        .ping_interval_ms = &o->ping_interval_ms, .pong_timeout_ms = &o->pong_timeout_ms,
        .insecure = &o->insecure, .ca_file = &o->ca_file, .log_level = &a->log.level,
        .deflate = &o->deflate,
    };
    unsigned long v;
    int ch;
    const char *name;
    optind = 1;
    while ((ch = cli_getopt(&common, argc, argv, "b0neH:s:o:kl:hx:w:1VLc:", own, &name)) != -1) {
        switch (ch) {
        case CLI_BAD:
            return CLI_USAGE;
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
        case 'H': {
            if (a->n_headers == MAX_LIST - 1)
                return cli_bad_value(&common, "header", "more than 63 headers");
            const char *r = reserved_header(optarg);
            if (r) {
                fprintf(stderr, "connect: -H '%s': duplex writes the %s header itself; %s\n", optarg, r,
                        !strcmp(r, "Origin")            ? "use -o/--origin"
                        : !strcmp(r, "Sec-WebSocket-*") ? "use -s/--subprotocol for Sec-WebSocket-Protocol"
                                                        : "it cannot be replaced");
                return ST_USAGE;
            }
            if (!header_name_ok(optarg)) {
                fprintf(stderr, "connect: -H '%s': expected 'Name: value' (a name of letters, digits and "
                                "!#$%%&'*+-.^_`|~, no line breaks)\n", optarg);
                return ST_USAGE;
            }
            a->headers[a->n_headers++] = optarg;
            break;
        }
        case 'x':
            if (a->n_execute == MAX_LIST)
                return cli_bad_value(&common, name, "more than 64 messages");
            a->execute[a->n_execute++] = optarg;
            break;
        case 'w':
            if (cli_parse_ms(optarg, &a->wait_ms))
                return cli_bad_value(&common, name, optarg);
            a->wait_set = true;
            break;
        case O_MAXMSGS:
            if (cli_parse_uint(optarg, 1, 4000000000ul, &a->max_messages))
                return cli_bad_value(&common, name, optarg);
            break;
        case '1':
            a->max_messages = 1;
            break;
        case 'V':
            printf("duplex connect %s (line editing: %s)\n", dx_version(), le_name());
            return -1;
        case O_AUTH: {
            if (!strchr(optarg, ':'))
                return cli_bad_value(&common, name, "expected user:password");
            if (a->n_headers == MAX_LIST - 1)
                return cli_bad_value(&common, "header", "more than 63 headers");
            size_t n = strlen(optarg);
            if (n > 700)
                return cli_bad_value(&common, name, "longer than 700 bytes");
            char b64[960];
            cli_base64((const uint8_t *)optarg, n, b64);
            snprintf(a->auth_header, sizeof a->auth_header, "Authorization: Basic %s", b64);
            a->headers[a->n_headers++] = a->auth_header;
            break;
        }
        case O_CERT:
            o->cert_file = optarg;
            break;
        case O_KEY:
            o->key_file = optarg;
            break;
        case 'L':
            a->follow_redirects = true;
            break;
        case O_ORIGIN_ALLOW:
            if (a->n_origin_allow == MAX_LIST)
                return cli_bad_value(&common, name, "more than 64 origins");
            a->origin_allow[a->n_origin_allow++] = optarg;
            break;
        case O_KEEP:
            a->keep = true;
            break;
        case 'c':
            url_arg = optarg;
            break;
        case O_SOCKS5:
            if ((size_t)snprintf(socks_buf, sizeof socks_buf, "socks5://%s", optarg) >= sizeof socks_buf)
                return cli_bad_value(&common, name, optarg);
            o->proxy = socks_buf;
            break;
        case 's':
            if (a->n_protocols == MAX_LIST)
                return cli_bad_value(&common, "subprotocol", "more than 64 subprotocols");
            if (!*optarg || strpbrk(optarg, " ,\t\r\n"))
                return cli_bad_value(&common, "subprotocol", optarg);
            a->protocols[a->n_protocols++] = optarg;
            break;
        case 'o':
            o->origin = optarg;
            break;
        case O_PROXY:
            if (strncasecmp(optarg, "http://", 7) && strncasecmp(optarg, "socks5://", 9) &&
                strncasecmp(optarg, "socks5h://", 10)) {
                fprintf(stderr, "connect: --proxy '%s': expected http://HOST:PORT (HTTP CONNECT) or "
                                "socks5://HOST:PORT\n", optarg);
                return ST_USAGE;
            }
            o->proxy = optarg;
            break;
        case O_CTO:
            if (cli_parse_ms(optarg, &o->connect_timeout_ms) || !o->connect_timeout_ms)
                return cli_bad_value(&common, name, optarg);
            break;
        case O_RECONNECT:
            o->reconnect = 1;
            break;
        case O_BBASE:
            if (cli_parse_ms(optarg, &o->backoff_base_ms) || !o->backoff_base_ms)
                return cli_bad_value(&common, name, optarg);
            break;
        case O_BCAP:
            if (cli_parse_ms(optarg, &o->backoff_cap_ms) || !o->backoff_cap_ms)
                return cli_bad_value(&common, name, optarg);
            break;
        case O_MAXATT:
            if (cli_parse_uint(optarg, 0, 1000000, &v))
                return cli_bad_value(&common, name, optarg);
            o->max_attempts = (unsigned)v;
            break;
        case 'l':
            if (cli_parse_uint(optarg, 0, 65535, &v))
                return cli_bad_value(&common, "listen", optarg);
            a->listen = true;
            a->listen_port = v ? (unsigned)v : DX_PORT_EPHEMERAL;
            break;
        default:
            usage(stderr);
            return ST_USAGE;
        }
    }
    if (a->keep && !a->listen) {
        fprintf(stderr, "connect: --keep goes with --listen\n");
        return ST_USAGE;
    }
    if (a->n_origin_allow && !a->listen) {
        fprintf(stderr, "connect: --origin-allow goes with --listen (the origins it accepts)\n");
        return ST_USAGE;
    }
    if (a->n_execute && (a->echo || a->no_input || a->binary)) {
        fprintf(stderr, "connect: -x sends text messages instead of stdin: not with --echo, --no-input or --binary\n");
        return ST_USAGE;
    }
    if ((o->cert_file != NULL) != (o->key_file != NULL)) {
        fprintf(stderr, "connect: --cert and --key go together\n");
        return ST_USAGE;
    }
    if (a->echo && !o->max_message) /* 0 is refused: not given */
        o->max_message = ECHO_MAX_MESSAGE; /* accept what `duplex serve --max-message 16MiB` accepts */
    if (a->listen) {
        if (optind < argc) {
            fprintf(stderr, "connect: --listen takes no URL (got '%s')\n", argv[optind]);
            return ST_USAGE;
        }
        if (o->proxy || o->ca_file || o->insecure || o->reconnect || o->origin || a->n_headers || o->cert_file ||
            a->follow_redirects || url_arg) {
            fprintf(stderr, "connect: --proxy, --socks5, --ca, --insecure, --cert, --reconnect, --origin, -H, "
                            "--basic-auth, --follow-redirects and -c are client options, not for --listen\n");
            return ST_USAGE;
        }
    } else {
        if (!url_arg && optind >= argc) {
            fprintf(stderr, "connect: missing URL (see duplex connect --help)\n");
            return ST_USAGE;
        }
        if (optind + (url_arg ? 0 : 1) < argc) {
            fprintf(stderr, "connect: unexpected argument '%s'\n", argv[optind + (url_arg ? 0 : 1)]);
            return ST_USAGE;
        }
        if (connect_normalize_url(a, url_arg ? url_arg : argv[optind], url_buf, DX_CLI_URL_MAX))
            return ST_USAGE;
        *url = url_buf;
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

