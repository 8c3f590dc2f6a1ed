/*
 * src/core/log.c: formatting log lines and the default stderr sink.
 *
 * Layer: core. The default sink writes "2026-11-21T11:14:34.123Z level msg\n"
 * (the level padded to 5 columns)
 * with one write(2) per line, so lines from several threads do not interleave.
 */
#define _GNU_SOURCE
#include "core/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

const char *dx__log_level_name(int level)
{
    switch (level) {
    case DX_LOG_ERROR:
        return "error";
    case DX_LOG_WARN:
        return "warn";
    case DX_LOG_INFO:
        return "info";
    default:
        return "debug";
    }
}

static void stderr_sink(int level, const char *line, size_t len)
{
    char out[DX_LOG_LINE_MAX + 64];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(out, sizeof out, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %-5s %.*s\n", tm.tm_year + 1900,
                     tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000L,
                     dx__log_level_name(level), (int)len, line);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof out)
        n = (int)sizeof out - 1;
    ssize_t w = write(STDERR_FILENO, out, (size_t)n);
    (void)w; /* nowhere to report a failed log write */
}

void dx__log(const dx_log *log, int level, const char *fmt, ...)
{
    int threshold = log ? log->level : DX_LOG_INFO;
    if (level > threshold)
        return;
    char line[DX_LOG_LINE_MAX];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    size_t len = (size_t)n;
    if (len >= sizeof line) {
        len = sizeof line - 1;
        memcpy(line + len - 3, "...", 3);
    }
    if (log && log->sink)
        log->sink(log->ud, level, line, len);
    else
        stderr_sink(level, line, len);
}
