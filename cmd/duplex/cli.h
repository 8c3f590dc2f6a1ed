/*
 * cmd/duplex/cli.h: helpers shared by the subcommands (argument parsing).
 * The CLI uses only the public headers in include/.
 */
#ifndef DX_CMD_CLI_H
#define DX_CMD_CLI_H

#include <getopt.h>
#include <stdio.h>
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

/* Log lines: every line of a subcommand (its own and the library's, through
 * dx_log.sink = cli_log_sink, dx_log.ud = a pointer to the int format) goes to
 * stderr in one format: "2026-11-30T16:00:58.607Z info  msg" (CLI_LOG_TEXT,
 * the library's default format) or one JSON object per line,
 * {"time":"...","level":"info","msg":"..."} (CLI_LOG_JSON). */
enum { CLI_LOG_TEXT = 0, CLI_LOG_JSON = 1 };
/* "text" or "json" → CLI_LOG_*; -1 for anything else. */
int cli_parse_log_format(const char *s);
void cli_log_sink(void *ud, int level, const char *line, size_t len);
/* Formats one line and writes it through `log` (its level filters it). */
struct dx_log;
void cli_logf(const struct dx_log *log, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Writes UTF-8 text with terminal control characters escaped (\n \r \t \e
 * \xNN for C0 and DEL, \u0080-\u009f for C1, a backslash doubled). */
void cli_put_escaped(FILE *f, const uint8_t *p, size_t n);
/* Standard base64 with padding; `out` holds 4 * ceil(n / 3) + 1 bytes. */
void cli_base64(const uint8_t *in, size_t n, char *out);

int cmd_serve(int argc, char **argv);
int cmd_connect(int argc, char **argv);
int cmd_bench(int argc, char **argv);

#endif
