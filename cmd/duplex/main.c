/*
 * cmd/duplex/main.c: the `duplex` command: dispatches to its subcommands.
 */
#include "bench.h"
#include "cli.h"
#include "duplex/duplex.h"

#include <stdio.h>
#include <string.h>


static void usage(FILE *f)
{
    fprintf(f, "usage: duplex <command> [options]\n"
               "\n"
               "commands:\n"
               "  serve      run the gateway: topics over WebSocket (JSON and raw dialects), SSE, HTTP API,\n"
               "             metrics; /echo, static files, health check\n"
               "  bench      load generator: connections, echo/rate workloads, gateway fan-out (--subscribe), latency\n"
               "  connect    WebSocket client for terminals and pipes (wscat); --listen: one-shot server\n"
               "  pub        publish on a gateway topic (HTTP API or WebSocket), from arguments or stdin\n"
               "  sub        subscribe to gateway topics and print each message as a line\n"
               "  version    print the version\n"
               "\n"
               "`duplex <command> --help` describes a command's options.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "serve"))
        return cmd_serve(argc - 1, argv + 1);
    if (!strcmp(cmd, "bench"))
        return cmd_bench(argc - 1, argv + 1);
    if (!strcmp(cmd, "connect"))
        return cmd_connect(argc - 1, argv + 1);
    if (!strcmp(cmd, "pub"))
        return cmd_pub(argc - 1, argv + 1);
    if (!strcmp(cmd, "sub"))
        return cmd_sub(argc - 1, argv + 1);
    if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
        printf("duplex %s\n", dx_version());
        return 0;
    }
    if (!strcmp(cmd, "help") || !strcmp(cmd, "--help") || !strcmp(cmd, "-h")) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "duplex: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
