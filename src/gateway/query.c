/*
 * src/gateway/query.c: query strings of gateway requests (/ws, /sse and
 * the API): a parameter's value, percent-decoding, comma-separated topic
 * lists. Moved out of gateway.c (its size).
 */
#include "gateway/gw.h"
#include "core/hex.h"

#include <string.h>

bool gw_query_get(const char *q, size_t qlen, const char *key, const char **v, size_t *vlen)
{
    size_t klen = strlen(key);
    size_t i = 0;
    while (q && i < qlen) {
        size_t j = i;
        while (j < qlen && q[j] != '&')
            j++;
        if (j - i >= klen && memcmp(q + i, key, klen) == 0 && (j - i == klen || q[i + klen] == '=')) {
            size_t vs = i + klen + (j - i > klen ? 1 : 0);
            *v = q + vs;
            *vlen = j - vs;
            return true;
        }
        i = j + 1;
    }
    return false;
}


long gw_pct_decode(const char *s, size_t len, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (c == '%') {
            if (i + 2 >= len)
                return -1;
            int h = dx__hexval(s[i + 1]), l = dx__hexval(s[i + 2]);
            if (h < 0 || l < 0)
                return -1;
            c = (char)(h * 16 + l);
            i += 2;
        } else if (c == '+') {
            c = ' ';
        }
        if (o + 1 >= cap)
            return -1;
        out[o++] = c;
    }
    out[o] = 0;
    return (long)o;
}

int gw_split_list(const char *v, size_t vlen, char *buf, size_t bufcap, const char **names, size_t *lens,
                  size_t cap)
{
    long n = gw_pct_decode(v, vlen, buf, bufcap);
    if (n < 0)
        return -1;
    size_t count = 0, i = 0;
    while ((size_t)i < (size_t)n) {
        size_t j = i;
        while (j < (size_t)n && buf[j] != ',')
            j++;
        if (count == cap)
            return -1;
        names[count] = buf + i;
        lens[count] = j - i;
        count++;
        i = j + 1;
    }
    return (int)count;
}
