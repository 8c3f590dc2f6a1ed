/*
 * tests/fuzz/fuzz_origin.c: src/gateway/limits.c's Origin parser and the
 * allow-list (peer input: every browser handshake carries an Origin), and
 * the address key of a remote string.
 *
 * Input: "ENTRY\nORIGIN": ENTRY configures a one-entry allow-list (refused
 * entries are fine), ORIGIN is matched against it and against the
 * same-host rule with Host "example.com:8080". Invariants (abort() when
 * broken): a parsed origin has a non-empty lowercase scheme and host of
 * the allowed characters and a port below 65536; re-spelling it as
 * scheme://host:port parses to the same; an origin the allow-list admits
 * parses, and its host is the entry's (exact) or ends with the entry's
 * domain after at least one more label (wildcard); nothing is admitted by
 * an allow-list whose entry was refused.
 */
#include "gateway/gw.h"
#include "gateway/limits.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(bool ok)
{
    if (!ok)
        abort();
}

static bool host_ok(const char *h)
{
    if (!*h)
        return false;
    for (const char *p = h; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || strchr("-._[]:", *p)))
            return false;
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 600)
        return 0;
    const uint8_t *nl = memchr(data, '\n', size);
    size_t elen = nl ? (size_t)(nl - data) : 0;
    const char *origin = nl ? (const char *)nl + 1 : (const char *)data;
    size_t olen = nl ? size - elen - 1 : size;

    char scheme[32], host[256];
    unsigned port = 0;
    bool parsed = gw_origin_parse(origin, olen, scheme, sizeof scheme, host, sizeof host, &port);
    if (parsed) {
        check(*scheme && host_ok(host) && port < 65536);
        for (const char *p = scheme; *p; p++)
            check(!(*p >= 'A' && *p <= 'Z'));
        char again[400], s2[32], h2[256];
        unsigned p2 = 0;
        int n = snprintf(again, sizeof again, "%s://%s:%u", scheme, host, port ? port : 1);
        check(n > 0 && (size_t)n < sizeof again);
        check(gw_origin_parse(again, (size_t)n, s2, sizeof s2, h2, sizeof h2, &p2));
        check(!strcmp(s2, scheme) && !strcmp(h2, host) && p2 == (port ? port : 1));
    }

    char entry[601];
    memcpy(entry, data, elen);
    entry[elen] = 0;
    const char *list[1] = {entry};
    dx_gateway_options o;
    memset(&o, 0, sizeof o);
    o.origins = list;
    o.n_origins = 1;
    int err = 0;
    gw_limits_cfg *c = nl && elen && !memchr(entry, 0, elen) ? gw_limits_cfg_new(&o, NULL, 0, &err) : NULL;
    if (c) {
        check(c->norigins == 1);
        if (gw_limits_origin_ok(c, origin, olen, "example.com:8080", 16)) {
            check(parsed);
            const gw_origin *e = &c->origins[0];
            check(!strcmp(e->scheme, scheme) && e->port == port);
            size_t hl = strlen(host), sl = strlen(e->host);
            if (e->wildcard)
                check(hl > sl && !strcmp(host + hl - sl, e->host) && e->host[0] == '.' && host[0] != '.');
            else
                check(!strcmp(host, e->host));
        }
        gw_limits_cfg_free(c);
    }
    (void)gw_limits_origin_ok(&(gw_limits_cfg){.allow_no_origin = true}, origin, olen, "example.com:8080", 16);

    char remote[128];
    size_t rl = olen < sizeof remote - 1 ? olen : sizeof remote - 1;
    memcpy(remote, origin, rl);
    remote[rl] = 0;
    int fam;
    uint64_t key;
    (void)gw_addr_key(remote, &fam, &key);
    return 0;
}
