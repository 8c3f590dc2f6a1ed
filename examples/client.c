/* client URL [-n COUNT] [MESSAGE...]: connects, sends each MESSAGE as text,
 * prints every message received on a line of its own, and closes (1000)
 * after COUNT messages (default: as many as it sent; with neither, it stays
 * until the server closes). Exit 0 after a normal close, 1 on failure.
 * Events go to stderr ("client: open", "client: closed 1000"). */
#include <duplex/client.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct app {
    dx_loop *loop;
    char **msgs;
    int n_msgs;
    long want, got;
    int status;
};

static void on_open(dx_conn *c, void *ud)
{
    struct app *a = ud;
    fprintf(stderr, "client: open\n");
    for (int i = 0; i < a->n_msgs; i++)
        dx_conn_send(c, DX_OP_TEXT, a->msgs[i], strlen(a->msgs[i]));
}

static void on_message(dx_conn *c, int opcode, const uint8_t *data, size_t len, void *ud)
{
    struct app *a = ud;
    (void)opcode;
    fwrite(data, 1, len, stdout);
    putchar('\n');
    fflush(stdout);
    if (++a->got == a->want)
        dx_conn_close(c, DX_CLOSE_NORMAL, "done", 4); /* on_close follows, later */
}

static void on_close(dx_conn *c, unsigned code, const char *reason, size_t len, void *ud)
{
    struct app *a = ud;
    (void)c;
    fprintf(stderr, "client: closed %u %.*s\n", code, (int)len, reason);
    a->status = code == DX_CLOSE_NORMAL ? 0 : 1;
}

static void on_error(dx_client *cl, int err, const char *what, void *ud)
{
    (void)cl, (void)ud;
    fprintf(stderr, "client: %s (%s)\n", what, dx_errname(err));
}

static void on_done(dx_client *cl, void *ud)
{
    (void)cl;
    dx_loop_stop(((struct app *)ud)->loop); /* no reconnect: done after a close or an error */
}

int main(int argc, char **argv)
{
    struct app a = { .status = 1, .want = -1 };
    if (argc < 2) {
        fprintf(stderr, "usage: client URL [-n COUNT] [MESSAGE...]\n");
        return 2;
    }
    int first = 2;
    if (argc > 3 && strcmp(argv[2], "-n") == 0) {
        a.want = strtol(argv[3], NULL, 10);
        first = 4;
    }
    a.msgs = argv + first;
    a.n_msgs = argc - first;
    if (a.want < 0)
        a.want = a.n_msgs ? a.n_msgs : -1;

    int err = 0;
    a.loop = dx_loop_new(NULL, &err);
    dx_client_options o = {
        .url = argv[1],
        .cb = { .on_open = on_open, .on_message = on_message, .on_close = on_close,
                .on_error = on_error, .on_done = on_done },
        .ud = &a,
    };
    dx_client *cl = a.loop ? dx_client_new(a.loop, &o, &err) : NULL;
    if (!cl || (err = dx_client_connect(cl)) < 0) {
        fprintf(stderr, "client: %s\n", dx_strerror(err));
        dx_client_free(cl);
        dx_loop_free(a.loop);
        return 1;
    }
    dx_loop_run(a.loop);
    dx_client_free(cl);
    dx_loop_free(a.loop);
    return a.status;
}
