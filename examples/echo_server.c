/*
 * echo_server: every message goes back to its sender, with its opcode.
 *
 *   echo_server [PORT]      (default 9000; 0: any free port)
 *
 * Prints "echo_server: listening on port N" once it listens; SIGINT or
 * SIGTERM stops it (exit 0). Uses only the installed public API.
 */
#include <duplex/server.h>

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

static void on_message(dx_conn *c, int opcode, const uint8_t *data, size_t len, void *ud)
{
    (void)ud;
    int rc = dx_conn_send(c, opcode, data, len); /* copies (or writes at once) */
    if (rc < 0 && rc != DX_ECLOSED)
        fprintf(stderr, "echo_server: conn %llu: %s\n", (unsigned long long)dx_conn_id(c), dx_strerror(rc));
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
    unsigned port = argc > 1 ? (unsigned)strtoul(argv[1], NULL, 10) : 9000;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_signals, NULL); /* inherited by every thread */

    int err = 0;
    dx_loop *loop = dx_loop_new(NULL, &err);
    if (!loop) {
        fprintf(stderr, "echo_server: loop: %s\n", dx_strerror(err));
        return 1;
    }
    dx_server_options o = {
        .host = "127.0.0.1",
        .port = port ? port : DX_PORT_EPHEMERAL,
        .cb = { .on_message = on_message },
    };
    dx_server *srv = dx_server_new(loop, &o, &err);
    if (!srv || (err = dx_server_start(srv)) < 0) {
        fprintf(stderr, "echo_server: %s\n", dx_strerror(err));
        dx_server_free(srv);
        dx_loop_free(loop);
        return 1;
    }
    printf("echo_server: listening on port %u\n", dx_server_port(srv));
    fflush(stdout);

    pthread_t t;
    pthread_create(&t, NULL, wait_for_signal, loop);
    dx_loop_run(loop);
    pthread_join(t, NULL);
    dx_server_free(srv); /* drops what is still open, without callbacks */
    dx_loop_free(loop);
    return 0;
}
