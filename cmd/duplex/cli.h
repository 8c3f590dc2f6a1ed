/*
 * cmd/duplex/cli.h: helpers shared by the subcommands (argument parsing).
 * The CLI uses only the public headers in include/.
 */
#ifndef DX_CMD_CLI_H
#define DX_CMD_CLI_H

#include <stddef.h>
#include <stdint.h>

/* "1048576", "64KiB", "64K", "1MiB", "1M", "2G": bytes. 0 on success, -1 bad. */
int cli_parse_size(const char *s, size_t *out);
/* "30" (seconds), "30s", "500ms", "2m", "off"/"0" (0): milliseconds. */
int cli_parse_ms(const char *s, unsigned *out);
/* A whole number in [min, max]. */
int cli_parse_uint(const char *s, unsigned long min, unsigned long max, unsigned long *out);

int cmd_serve(int argc, char **argv);
int cmd_connect(int argc, char **argv);
int cmd_bench(int argc, char **argv);

#endif
