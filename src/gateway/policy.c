/*
 * src/gateway/policy.c: every "may this connection do that" decision of the
 * gateway goes through gw_policy_check, so authentication and per-namespace
 * rules (issue 10) change one function.
 *
 * Today (no configuration, GATEWAY.md "With no configuration"): anonymous
 * connections may subscribe and publish anywhere, except that a `user:<id>`
 * topic may be subscribed to only by a connection authenticated as <id>
 * (none is, until authentication exists): 4403.
 */
#include "gateway/gw.h"

#include <string.h>
#include <strings.h>

int gw_policy_check(const gw_conn *g, enum gw_action act, const char *topic, size_t len)
{
    const char *id;
    size_t idlen;
    if (act == GW_ACT_SUBSCRIBE && dx__gw_topic_user_id(topic, len, &id, &idlen)) {
        if (!g->user || g->ulen != idlen || memcmp(g->user, id, idlen) != 0)
            return DX__GW_E_FORBIDDEN;
    }
    return gw_policy_check_ns(g, act, topic, len); /* namespaces (admit.c) */
}

/* GATEWAY.md "With no configuration": requests without Origin are accepted
 * (non-browser clients); a browser's Origin must name the same host and
 * port as Host (scheme://host[:port], compared without the scheme,
 * case-insensitively). "null" (sandboxed frames, file:) never matches. */
bool gw_policy_origin(const char *origin, size_t olen, const char *host, size_t hlen)
{
    if (!origin)
        return true;
    if (!host || !hlen)
        return false;
    const char *p = memchr(origin, ':', olen);
    if (!p || (size_t)(origin + olen - p) < 3 || p[1] != '/' || p[2] != '/')
        return false;
    const char *o = p + 3;
    size_t ol = olen - (size_t)(o - origin);
    if (ol && o[ol - 1] == '/')
        ol--; /* a trailing slash some clients add */
    size_t sl = (size_t)(p - origin);
    /* Host may leave out the default port that Origin spells, and vice versa */
    if (ol == hlen && strncasecmp(o, host, hlen) == 0)
        return true;
    const char *dport = sl == 5 && !strncasecmp(origin, "https", 5) ? ":443" : sl == 4 ? ":80" : NULL;
    if (dport) {
        size_t dl = strlen(dport);
        if (ol == hlen + dl && !strncasecmp(o, host, hlen) && !memcmp(o + hlen, dport, dl))
            return true;
        if (hlen == ol + dl && !strncasecmp(o, host, ol) && !memcmp(host + ol, dport, dl))
            return true;
    }
    return false;
}
