/* chat_server [PORT]: each text message goes to every member, sender included,
 * as "ID: text". PORT: default 9001, 0 any free one. Prints "chat_server:
 * listening on port N"; SIGINT or SIGTERM stops it (exit 0). Public API only. */
#include <duplex/server.h>

#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_MEMBERS 1024
/* One slot per member; a slot emptied during a broadcast is just skipped. */
static dx_conn *members[MAX_MEMBERS];
static size_t n_members;

static int on_upgrade(dx_server *srv, dx_request *req, void *ud)
{
    return (void)srv, (void)req, (void)ud, n_members < MAX_MEMBERS ? 0 : 503; /* full */
}

static void on_open(dx_conn *c, void *ud)
{
    size_t i = 0;
    while (members[i])
        i++; /* a free slot exists: on_upgrade checked */
    (void)ud, members[i] = c;
    dx_conn_set_user(c, &members[i]);
    n_members++;
}

static void on_close(dx_conn *c, unsigned code, const char *reason, size_t len, void *ud)
{
    (void)code, (void)reason, (void)len, (void)ud, n_members--;
    *(dx_conn **)dx_conn_user(c) = NULL;
}

static void on_message(dx_conn *c, int opcode, const uint8_t *data, size_t len, void *ud)
{
    char *line = opcode == DX_OP_TEXT ? malloc(len + 32) : NULL;
    if ((void)ud, !line) {
        dx_conn_close(c, opcode == DX_OP_TEXT ? DX_CLOSE_INTERNAL_ERROR : DX_CLOSE_UNSUPPORTED_DATA, NULL, 0);
        return;
    }
    size_t n = (size_t)snprintf(line, 32, "%" PRIu64 ": ", dx_conn_id(c));
    memcpy(line + n, data, len);
    /* BROADCAST: encoded once, one reference per member (no copy). */
    dx_msg *m = dx_msg_new(DX_OP_TEXT, line, n + len, NULL);
    for (size_t i = 0; m && i < MAX_MEMBERS; i++)
        if (members[i])
            dx_conn_send_msg(members[i], m);
    dx_msg_unref(m);
    free(line);
}

/* SIGINT and SIGTERM go to a thread of their own, which stops the loop. */
static sigset_t stop_signals;

static void *wait_for_signal(void *loop)
{
    int sig;
    sigwait(&stop_signals, &sig);
    dx_loop_stop(loop); /* thread-safe */
    return NULL;
}

int main(int argc, char **argv)
{
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_signals, NULL); /* inherited by every thread */

    int err = 0;
    unsigned port = argc > 1 ? (unsigned)strtoul(argv[1], NULL, 10) : 9001;
    dx_server_options o = { .host = "127.0.0.1", .port = port ? port : DX_PORT_EPHEMERAL,
                            .cb = { .on_upgrade = on_upgrade, .on_open = on_open,
                                    .on_message = on_message, .on_close = on_close } };
    dx_loop *loop = dx_loop_new(NULL, &err);
    dx_server *srv = loop ? dx_server_new(loop, &o, &err) : NULL;
    if (!srv || (err = dx_server_start(srv)) < 0) {
        fprintf(stderr, "chat_server: %s\n", dx_strerror(err));
        dx_server_free(srv);
        dx_loop_free(loop);
        return 1;
    }
    printf("chat_server: listening on port %u\n", dx_server_port(srv));
    fflush(stdout);
    pthread_t t; /* after dx_server_start: nothing to stop before */
    pthread_create(&t, NULL, wait_for_signal, loop);
    dx_loop_run(loop);
    pthread_join(t, NULL);
    dx_server_free(srv); /* drops what is still open, without callbacks */
    dx_loop_free(loop);
    return 0;
}
