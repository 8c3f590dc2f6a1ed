/*
 * cmd/duplex/cli.h: helpers shared by the subcommands (argument parsing).
 * The CLI uses only the public headers in include/.
 */
#ifndef DX_CMD_CLI_H
#define DX_CMD_CLI_H

#include <getopt.h>
#include <stddef.h>
#include <stdint.h>

/* "1048576", "64KiB", "64K", "1MiB", "1M", "2G": bytes. 0 on success, -1 bad. */
int cli_parse_size(const char *s, size_t *out);
/* "30" (seconds), "30s", "500ms", "2m", "off"/"0" (0): milliseconds. */
int cli_parse_ms(const char *s, unsigned *out);
/* A whole number in [min, max]. */
int cli_parse_uint(const char *s, unsigned long min, unsigned long max, unsigned long *out);

/* "error", "warn", "info", "debug" → DX_LOG_*; -1 for anything else. */
int cli_parse_log_level(const char *s);
/* The long name of the option whose getopt value is `val` ("option" if none). */
const char *cli_option_name(const struct option *opts, int val);

int cmd_serve(int argc, char **argv);
int cmd_connect(int argc, char **argv);
int cmd_bench(int argc, char **argv);

#endif
