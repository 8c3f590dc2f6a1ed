/* cmd/duplex/cli.c: argument parsing helpers (see cli.h). */
#include "cli.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

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
