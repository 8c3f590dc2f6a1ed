/* cmd/duplex/cli.c: argument parsing and log-line helpers (see cli.h). */
#define _GNU_SOURCE
#include "cli.h"
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

const char *cli_option_name(const struct option *opts, int val)
{
    for (const struct option *o = opts; o->name; o++)
        if (o->val == val)
            return o->name;
    return "option";
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

