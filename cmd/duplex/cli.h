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

/* ---- options the subcommands share --------------------------------------
 *
 * serve, connect and bench take some options with the same name, value
 * syntax, check and error message. Each subcommand fills a cli_common with
 * pointers to the fields those options set (in its own options struct) and
 * leaves NULL the ones it does not take: a NULL pointer means the option is
 * not accepted at all (not in the long-option table, so not even as an
 * abbreviation). Values (checked as in --help; "X" is the option's value):
 *   --max-message BYTES, --send-max BYTES, --send-high-water BYTES
 *                              cli_parse_size, not 0
 *   --max-fragments N          1 to 2^30
 *   --handshake-timeout T, --close-timeout T, --pong-timeout T
 *                              cli_parse_ms, not 0 and not 'off'
 *   --idle-timeout T           cli_parse_ms; 'off' or 0 is 0 (off)
 *   --ping-interval T          cli_parse_ms; 'off' or 0 is (unsigned)-1 (off)
 *   -k, --insecure             *insecure = 1 (the subcommand puts 'k' in its
 *                              short options)
 *   --ca FILE                  *ca_file = FILE
 *   --log-level L              cli_parse_log_level
 *   --log-format F             cli_parse_log_format
 *   --deflate[=PARAMS]         permessage-deflate on, with the extension
 *                              parameters PARAMS (dx_deflate_options_parse:
 *                              "server_no_context_takeover;
 *                              client_max_window_bits=10"); --no-deflate off
 *   --deflate-min-size BYTES, --deflate-mem-budget BYTES
 *                              cli_parse_size, not 0
 * A bad value prints "<prefix>: invalid value for --NAME: 'X' (see duplex
 * <cmd> --help)" on stderr, NAME being the name above even when an alias
 * was typed, and gives exit status CLI_USAGE. */
enum { CLI_USAGE = 2 };
enum {
    CLI_O_MAX_MESSAGE = 0x1000, /* getopt values, above any subcommand's own */
    CLI_O_MAX_FRAGMENTS,
    CLI_O_SEND_MAX,
    CLI_O_SEND_HIGH_WATER,
    CLI_O_HANDSHAKE_TIMEOUT,
    CLI_O_CLOSE_TIMEOUT,
    CLI_O_IDLE_TIMEOUT,
    CLI_O_PING_INTERVAL,
    CLI_O_PONG_TIMEOUT,
    CLI_O_CA,
    CLI_O_LOG_LEVEL,
    CLI_O_LOG_FORMAT,
    CLI_O_DEFLATE,
    CLI_O_NO_DEFLATE,
    CLI_O_DEFLATE_MIN_SIZE,
    CLI_O_DEFLATE_MEM_BUDGET,
    CLI_O_INSECURE = 'k',
};

typedef struct cli_common {
    const char *prefix; /* error messages start "<prefix>: " ("serve", "duplex bench") */
    const char *cmd;    /* ... and end "(see duplex <cmd> --help)" */
    size_t *max_message, *max_fragments, *send_max, *send_high_water;
    unsigned *handshake_timeout_ms, *close_timeout_ms, *idle_timeout_ms, *ping_interval_ms, *pong_timeout_ms;
    int *insecure;
    const char **ca_file;
    int *log_level, *log_format;
    struct dx_deflate_options *deflate;               /* --deflate[=PARAMS], --no-deflate */
    size_t *deflate_min_size, *deflate_mem_budget;    /* serve: --deflate-min-size, --deflate-mem-budget */
} cli_common;

enum { CLI_BAD = -2 };
/* getopt_long over argv with `shortopts` and, as long options, the shared
 * options c takes followed by the subcommand's own table `own` (which may
 * list aliases of shared options with their CLI_O_* value, such as
 * connect's --ping-timeout). A shared option is applied here, through c's
 * pointer; the subcommand's own options are returned as getopt_long returns
 * them ('?' for an unknown one), with *name set to the option's long name
 * (the first with that value; "option" if none) for its error messages.
 * -1 after the last option; CLI_BAD after printing a shared option's
 * bad-value message (the caller then exits with CLI_USAGE). The caller sets
 * optind = 1 before the first call. Not thread-safe (getopt's state). */
int cli_getopt(const cli_common *c, int argc, char **argv, const char *shortopts, const struct option *own,
               const char **name);
/* Prints the bad-value message above for option `name` and value `val`;
 * returns CLI_USAGE. For the subcommands' own options too. */
int cli_bad_value(const cli_common *c, const char *name, const char *val);

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
int cmd_pub(int argc, char **argv);
int cmd_sub(int argc, char **argv);

#endif
