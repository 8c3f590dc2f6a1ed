/*
 * cmd/duplex/cli.c: argument parsing (values, the options serve, connect
 * and bench share) and log-line helpers (see cli.h).
 *
 * Layer: the CLI, public headers only. The shared options have one table
 * here: their names, value checks and error messages cannot drift apart
 * between the subcommands.
 */
#define _GNU_SOURCE
#include "cli.h"
#include "duplex/deflate.h"
#include "duplex/duplex.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

int cli_parse_uint(const char *s, unsigned long min, unsigned long max, unsigned long *out)
{
    if (!s || !*s || !isdigit((unsigned char)*s))
        return -1;
    errno = 0;
    char *end;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || *end || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

int cli_parse_size(const char *s, size_t *out)
{
    if (!s || !isdigit((unsigned char)*s))
        return -1;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno)
        return -1;
    unsigned long long mul = 1;
    if (*end) {
        if (!strcasecmp(end, "k") || !strcasecmp(end, "kib") || !strcasecmp(end, "kb"))
            mul = 1ull << 10;
        else if (!strcasecmp(end, "m") || !strcasecmp(end, "mib") || !strcasecmp(end, "mb"))
            mul = 1ull << 20;
        else if (!strcasecmp(end, "g") || !strcasecmp(end, "gib") || !strcasecmp(end, "gb"))
            mul = 1ull << 30;
        else if (strcasecmp(end, "b"))
            return -1;
    }
    if (v > SIZE_MAX / mul)
        return -1;
    *out = (size_t)(v * mul);
    return 0;
}

int cli_parse_ms(const char *s, unsigned *out)
{
    if (!s)
        return -1;
    if (!strcasecmp(s, "off")) {
        *out = 0;
        return 0;
    }
    if (!isdigit((unsigned char)*s))
        return -1;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno)
        return -1;
    unsigned long long mul = 1000;
    if (*end) {
        if (!strcmp(end, "ms"))
            mul = 1;
        else if (!strcmp(end, "s"))
            mul = 1000;
        else if (!strcmp(end, "m"))
            mul = 60000;
        else
            return -1;
    }
    if (v > 0xFFFFFFFEull / mul)
        return -1;
    *out = (unsigned)(v * mul);
    return 0;
}

int cli_parse_log_level(const char *s)
{
    static const char *const names[] = {"error", "warn", "info", "debug"}; /* DX_LOG_ERROR.. order */
    for (int i = 0; i < 4; i++)
        if (!strcmp(s, names[i]))
            return i;
    return -1;
}

/* ---- options the subcommands share ---------------------------------------- */

/* How a shared option's value is checked and stored (see cli.h). */
enum {
    K_SIZE,       /* size_t: cli_parse_size, not 0 */
    K_COUNT,      /* size_t: 1 to 2^30 */
    K_MS,         /* unsigned: cli_parse_ms, 'off'/0 stored as 0 */
    K_MS_ON,      /* unsigned: cli_parse_ms, not 0 */
    K_MS_OFF_MAX, /* unsigned: cli_parse_ms, 'off'/0 stored as (unsigned)-1 */
    K_FLAG,       /* int: 1 */
    K_STRING,     /* const char *: the argument */
    K_LOG_LEVEL,  /* int: cli_parse_log_level */
    K_LOG_FORMAT, /* int: cli_parse_log_format */
    K_DEFLATE,    /* dx_deflate_options: enable, and the parameters given (dx_deflate_options_parse) */
    K_NO_DEFLATE, /* dx_deflate_options: enable = 0 */
};

static const struct {
    struct option opt;
    int kind;
} common_opts[] = {
    {{"max-message", required_argument, 0, CLI_O_MAX_MESSAGE}, K_SIZE},
    {{"max-fragments", required_argument, 0, CLI_O_MAX_FRAGMENTS}, K_COUNT},
    {{"send-max", required_argument, 0, CLI_O_SEND_MAX}, K_SIZE},
    {{"send-high-water", required_argument, 0, CLI_O_SEND_HIGH_WATER}, K_SIZE},
    {{"handshake-timeout", required_argument, 0, CLI_O_HANDSHAKE_TIMEOUT}, K_MS_ON},
    {{"close-timeout", required_argument, 0, CLI_O_CLOSE_TIMEOUT}, K_MS_ON},
    {{"idle-timeout", required_argument, 0, CLI_O_IDLE_TIMEOUT}, K_MS},
    {{"ping-interval", required_argument, 0, CLI_O_PING_INTERVAL}, K_MS_OFF_MAX},
    {{"pong-timeout", required_argument, 0, CLI_O_PONG_TIMEOUT}, K_MS_ON},
    {{"insecure", no_argument, 0, CLI_O_INSECURE}, K_FLAG},
    {{"ca", required_argument, 0, CLI_O_CA}, K_STRING},
    {{"log-level", required_argument, 0, CLI_O_LOG_LEVEL}, K_LOG_LEVEL},
    {{"log-format", required_argument, 0, CLI_O_LOG_FORMAT}, K_LOG_FORMAT},
    {{"deflate", optional_argument, 0, CLI_O_DEFLATE}, K_DEFLATE},
    {{"no-deflate", no_argument, 0, CLI_O_NO_DEFLATE}, K_NO_DEFLATE},
    {{"deflate-min-size", required_argument, 0, CLI_O_DEFLATE_MIN_SIZE}, K_SIZE},
    {{"deflate-mem-budget", required_argument, 0, CLI_O_DEFLATE_MEM_BUDGET}, K_SIZE},
};
#define N_COMMON (sizeof common_opts / sizeof common_opts[0])
#define CLI_MAX_OPTIONS 96 /* a subcommand's shared and own long options, with the end mark */

/* The field shared option `val` sets, NULL when c does not take it. The
 * caller converts it back to the field's own type (given by the kind). */
static void *common_field(const cli_common *c, int val)
{
    switch (val) {
    case CLI_O_MAX_MESSAGE: return c->max_message;
    case CLI_O_MAX_FRAGMENTS: return c->max_fragments;
    case CLI_O_SEND_MAX: return c->send_max;
    case CLI_O_SEND_HIGH_WATER: return c->send_high_water;
    case CLI_O_HANDSHAKE_TIMEOUT: return c->handshake_timeout_ms;
    case CLI_O_CLOSE_TIMEOUT: return c->close_timeout_ms;
    case CLI_O_IDLE_TIMEOUT: return c->idle_timeout_ms;
    case CLI_O_PING_INTERVAL: return c->ping_interval_ms;
    case CLI_O_PONG_TIMEOUT: return c->pong_timeout_ms;
    case CLI_O_INSECURE: return c->insecure;
    case CLI_O_CA: return c->ca_file;
    case CLI_O_LOG_LEVEL: return c->log_level;
    case CLI_O_LOG_FORMAT: return c->log_format;
    case CLI_O_DEFLATE:
    case CLI_O_NO_DEFLATE: return c->deflate;
    case CLI_O_DEFLATE_MIN_SIZE: return c->deflate_min_size;
    case CLI_O_DEFLATE_MEM_BUDGET: return c->deflate_mem_budget;
    default: return NULL;
    }
}

int cli_bad_value(const cli_common *c, const char *name, const char *val)
{
    fprintf(stderr, "%s: invalid value for --%s: '%s' (see duplex %s --help)\n", c->prefix, name, val, c->cmd);
    return CLI_USAGE;
}

/* Applies shared option common_opts[i] to its field: 0, or CLI_BAD after
 * the bad-value message. */
static int apply_common(const cli_common *c, size_t i, void *field, const char *arg)
{
    int kind = common_opts[i].kind;
    size_t size;
    unsigned ms;
    unsigned long n;
    int v;
    switch (kind) {
    case K_SIZE:
        if (cli_parse_size(arg, &size) || !size)
            break;
        *(size_t *)field = size;
        return 0;
    case K_COUNT:
        if (cli_parse_uint(arg, 1, 1u << 30, &n))
            break;
        *(size_t *)field = n;
        return 0;
    case K_MS:
    case K_MS_ON:
    case K_MS_OFF_MAX:
        if (cli_parse_ms(arg, &ms) || (kind == K_MS_ON && !ms))
            break;
        if (kind == K_MS_OFF_MAX && !ms)
            ms = (unsigned)-1; /* the library's "off": 0 would mean its default */
        *(unsigned *)field = ms;
        return 0;
    case K_FLAG:
        *(int *)field = 1;
        return 0;
    case K_STRING:
        *(const char **)field = arg;
        return 0;
    case K_LOG_LEVEL:
    case K_LOG_FORMAT:
        if ((v = kind == K_LOG_LEVEL ? cli_parse_log_level(arg) : cli_parse_log_format(arg)) < 0)
            break;
        *(int *)field = v;
        return 0;
    case K_DEFLATE:
        /* --deflate alone: the defaults; --deflate=PARAMS: those parameters
         * (an empty PARAMS is the defaults too). */
        if (dx_deflate_options_parse(field, arg ? arg : ""))
            break;
        return 0;
    case K_NO_DEFLATE:
        ((dx_deflate_options *)field)->enable = 0;
        return 0;
    }
    cli_bad_value(c, common_opts[i].opt.name, arg ? arg : "");
    return CLI_BAD;
}

int cli_getopt(const cli_common *c, int argc, char **argv, const char *shortopts, const struct option *own,
               const char **name)
{
    /* The merged table is rebuilt at each call: getopt_long keeps no pointer
     * into it between calls, only into argv. */
    struct option opts[CLI_MAX_OPTIONS];
    size_t n = 0;
    for (size_t i = 0; i < N_COMMON; i++)
        if (common_field(c, common_opts[i].opt.val))
            opts[n++] = common_opts[i].opt;
    for (; own->name; own++) {
        if (n == CLI_MAX_OPTIONS - 1) {
            fprintf(stderr, "%s: too many options for cli_getopt (raise CLI_MAX_OPTIONS)\n", c->prefix);
            return CLI_BAD;
        }
        opts[n++] = *own;
    }
    opts[n] = (struct option){0, 0, 0, 0};
    int ch;
    while ((ch = getopt_long(argc, argv, shortopts, opts, NULL)) != -1) {
        void *field = common_field(c, ch);
        if (!field)
            break;
        size_t i = 0;
        while (common_opts[i].opt.val != ch)
            i++; /* every value common_field knows is in the table */
        if (apply_common(c, i, field, optarg))
            return CLI_BAD;
    }
    *name = "option";
    for (size_t i = 0; i < n; i++)
        if (opts[i].val == ch) {
            *name = opts[i].name;
            break;
        }
    return ch;
}

/* ---- log lines ----------------------------------------------------------- */

static const char *level_name(int level)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};
    return level >= 0 && level < 4 ? names[level] : "debug";
}

int cli_parse_log_format(const char *s)
{
    if (!strcmp(s, "text"))
        return CLI_LOG_TEXT;
    if (!strcmp(s, "json"))
        return CLI_LOG_JSON;
    return -1;
}

void cli_log_sink(void *ud, int level, const char *line, size_t len)
{
    const int *format = ud;
    char out[8192];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    char stamp[64];
    snprintf(stamp, sizeof stamp, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000L);
    size_t n;
    if (!format || *format != CLI_LOG_JSON) {
        int k = snprintf(out, sizeof out, "%s %-5s %.*s\n", stamp, level_name(level), (int)len, line);
        if (k < 0)
            return;
        n = (size_t)k < sizeof out ? (size_t)k : sizeof out - 1;
        if (n == sizeof out - 1)
            out[n - 1] = '\n';
    } else {
        /* One JSON object per line; the message escaped per RFC 8259 §7. */
        int k = snprintf(out, sizeof out, "{\"time\":\"%s\",\"level\":\"%s\",\"msg\":\"", stamp, level_name(level));
        if (k < 0)
            return;
        n = (size_t)k;
        for (size_t i = 0; i < len && n < sizeof out - 16; i++) {
            unsigned char ch = (unsigned char)line[i];
            if (ch == '"' || ch == '\\') {
                out[n++] = '\\';
                out[n++] = (char)ch;
            } else if (ch < 0x20 || ch == 0x7f) {
                n += (size_t)snprintf(out + n, sizeof out - n, "\\u%04x", ch);
            } else {
                out[n++] = (char)ch;
            }
        }
        memcpy(out + n, "\"}\n", 3);
        n += 3;
    }
    ssize_t w = write(STDERR_FILENO, out, n); /* one write per line: threads do not interleave */
    (void)w;
}

void cli_logf(const dx_log *log, int level, const char *fmt, ...)
{
    if (log && level > log->level)
        return;
    char line[4096];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    size_t len = (size_t)n < sizeof line ? (size_t)n : sizeof line - 1;
    if (log && log->sink)
        log->sink(log->ud, level, line, len); /* serve --procs: a child's sink adds its prefix */
    else
        cli_log_sink(log ? log->ud : NULL, level, line, len);
}

/* ---- output helpers ------------------------------------------------------ */

/* Interactive: text with the terminal's control characters shown escaped
 * (C0 and DEL as \n, \t, \r, \e or \xNN; C1 U+0080-U+009F as \u0080), so a
 * message cannot move the cursor, change colours or retitle the terminal.
 * A backslash is doubled so the output stays unambiguous. The text is valid
 * UTF-8 (the library checked it). */
void cli_put_escaped(FILE *f, const uint8_t *p, size_t n)
{
    size_t run = 0; /* start of the bytes not written yet */
    for (size_t i = 0; i < n; i++) {
        const char *esc = NULL;
        char buf[8];
        size_t skip = 1;
        uint8_t ch = p[i];
        if (ch < 0x20 || ch == 0x7f) {
            switch (ch) {
            case '\n': esc = "\\n"; break;
            case '\r': esc = "\\r"; break;
            case '\t': esc = "\\t"; break;
            case 0x1b: esc = "\\e"; break;
            default:
                snprintf(buf, sizeof buf, "\\x%02x", ch);
                esc = buf;
            }
        } else if (ch == 0xc2 && i + 1 < n && p[i + 1] >= 0x80 && p[i + 1] <= 0x9f) {
            snprintf(buf, sizeof buf, "\\u%04x", p[i + 1]);
            esc = buf;
            skip = 2;
        } else if (ch == '\\') {
            esc = "\\\\";
        }
        if (!esc)
            continue;
        fwrite(p + run, 1, i - run, f);
        fputs(esc, f);
        i += skip - 1;
        run = i + 1;
    }
    fwrite(p + run, 1, n - run, f);
}

void cli_base64(const uint8_t *in, size_t n, char *out)
{
    static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < n ? (uint32_t)in[i + 1] << 8 : 0) | (i + 2 < n ? in[i + 2] : 0);
        out[o++] = t[v >> 18 & 63];
        out[o++] = t[v >> 12 & 63];
        out[o++] = i + 1 < n ? t[v >> 6 & 63] : '=';
        out[o++] = i + 2 < n ? t[v & 63] : '=';
    }
    out[o] = 0;
}

