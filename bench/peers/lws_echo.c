/*
 * bench/peers/lws_echo.c: a libwebsockets peer for scripts/bench_echo.sh.
 * A WebSocket echo server on ws://HOST:PORT/echo written with the
 * libwebsockets API the way its own examples are: one service thread, one
 * protocol, every received piece of a message queued and echoed from the
 * WRITEABLE callback, one lws_write() per callback (the API's rule).
 *
 * Layer: a benchmark peer; depends on libwebsockets only (not on duplex).
 *
 * Invariants: each piece is echoed with its message's opcode and its place in
 * the message (first / continuation, FIN or not), so fragmented messages come
 * back as such; rx_buffer_size is 64 KiB so a 64 KiB message arrives in one
 * callback; when a connection has more than QUEUE_MAX bytes queued its
 * reading is paused (lws_rx_flow_control) until the queue is under half, so
 * memory stays bounded for a client that does not read.
 *
 *   lws_echo [--host 127.0.0.1] [--port 9002]     SIGTERM/SIGINT: exit 0
 */
#define _POSIX_C_SOURCE 200809L /* sigaction */

#include <libwebsockets.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RX_BUFFER (64u * 1024u)
#define QUEUE_MAX (1u << 20)

struct piece {
    struct piece *next;
    size_t len;
    unsigned char binary, first, final;
    unsigned char buf[]; /* LWS_PRE bytes of headroom, then the payload */
};

struct session {
    struct piece *head, *tail;
    size_t queued;
    unsigned char binary; /* opcode of the message being received */
    unsigned char paused;
};

static volatile sig_atomic_t g_stop;
static struct lws_context *g_ctx;

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
    if (g_ctx)
        lws_cancel_service(g_ctx);
}

static void session_free(struct session *s)
{
    while (s->head) {
        struct piece *p = s->head;
        s->head = p->next;
        free(p);
    }
    s->tail = NULL;
    s->queued = 0;
}

static int cb_echo(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
    struct session *s = user;
    switch (reason) {
    case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION: {
        char uri[64];
        if (lws_hdr_copy(wsi, uri, sizeof uri, WSI_TOKEN_GET_URI) < 0 || strcmp(uri, "/echo") != 0)
            return 1; /* only /echo upgrades */
        return 0;
    }
    case LWS_CALLBACK_ESTABLISHED:
        memset(s, 0, sizeof *s);
        return 0;
    case LWS_CALLBACK_RECEIVE: {
        struct piece *p = malloc(sizeof *p + LWS_PRE + len);
        if (!p)
            return -1;
        p->next = NULL;
        p->len = len;
        p->first = (unsigned char)lws_is_first_fragment(wsi);
        p->final = (unsigned char)lws_is_final_fragment(wsi);
        if (p->first)
            s->binary = (unsigned char)lws_frame_is_binary(wsi);
        p->binary = s->binary;
        if (len)
            memcpy(p->buf + LWS_PRE, in, len);
        if (s->tail)
            s->tail->next = p;
        else
            s->head = p;
        s->tail = p;
        s->queued += len;
        if (s->queued > QUEUE_MAX && !s->paused) {
            lws_rx_flow_control(wsi, 0);
            s->paused = 1;
        }
        lws_callback_on_writable(wsi);
        return 0;
    }
    case LWS_CALLBACK_SERVER_WRITEABLE: {
        struct piece *p = s->head;
        if (!p)
            return 0;
        int flags = lws_write_ws_flags(p->binary ? LWS_WRITE_BINARY : LWS_WRITE_TEXT, p->first, p->final);
        int m = lws_write(wsi, p->buf + LWS_PRE, p->len, (enum lws_write_protocol)flags);
        if (m < (int)p->len)
            return -1;
        s->head = p->next;
        if (!s->head)
            s->tail = NULL;
        s->queued -= p->len;
        free(p);
        if (s->paused && s->queued < QUEUE_MAX / 2) {
            lws_rx_flow_control(wsi, 1);
            s->paused = 0;
        }
        if (s->head)
            lws_callback_on_writable(wsi);
        return 0;
    }
    case LWS_CALLBACK_CLOSED:
        session_free(s);
        return 0;
    default:
        return 0;
    }
}

static const struct lws_protocols protocols[] = {
    {"echo", cb_echo, sizeof(struct session), RX_BUFFER, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0}};

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1";
    int port = 9002;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--host") == 0 && i + 1 < argc)
            host = argv[++i];
        else if (strcmp(argv[i], "--port") == 0 && i + 1 < argc)
            port = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: lws_echo [--host IPV4] [--port P]\n");
            return 2;
        }
    }
    lws_set_log_level(LLL_ERR | LLL_WARN, NULL);

    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.port = port;
    info.iface = host;
    info.protocols = protocols;
    info.count_threads = 1;
    info.gid = -1;
    info.uid = -1;

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    g_ctx = lws_create_context(&info);
    if (!g_ctx) {
        fprintf(stderr, "lws_echo: lws_create_context failed (port %d)\n", port);
        return 1;
    }
    fprintf(stderr, "lws_echo: libwebsockets %s listening on %s:%d/echo\n", lws_get_library_version(), host,
            port);
    while (!g_stop)
        if (lws_service(g_ctx, 0) < 0)
            break;
    lws_context_destroy(g_ctx);
    fprintf(stderr, "lws_echo: stopping\n");
    return 0;
}
