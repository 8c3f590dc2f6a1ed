/*
 * src/gateway/policy.c: every "may this connection do that" decision of the
 * gateway goes through gw_policy_check, so authentication and per-namespace
 * rules (issue 10) change one function.
 *
 * Authentication (auth.c): a `user:<id>` topic may be subscribed to only
 * by a connection authenticated as <id> (4403); a token's `subscribe` and
 * `publish` claims, when present, list the patterns it may read (subscribe,
 * presence, history) and publish to; anonymous connections publish only
 * when the policy allows it (anonymous_publish: on with no key source, off
 * with one, unless configured). With no configuration (GATEWAY.md "With no
 * configuration") anonymous connections may subscribe and publish anywhere
 * but another user's topic.
 */
#include "gateway/gw.h"

#include <string.h>
#include <strings.h>

/* Is topic (or pattern) within one of a claim's patterns? */
static bool claim_covers(char *const *pats, const size_t *lens, size_t n, const char *topic, size_t len)
{
    for (size_t i = 0; i < n; i++)
        if (dx__gw_topic_covers(pats[i], lens[i], topic, len))
            return true;
    return false;
}

int gw_policy_check(const gw_conn *g, enum gw_action act, const char *topic, size_t len)
{
    const char *id;
    size_t idlen;
    const gw_policy *p = g->k->pol;
    const dx__jwt_claims *c = g->claims;
    bool own = false;
    if (dx__gw_topic_user_id(topic, len, &id, &idlen)) {
        own = g->user && g->ulen == idlen && memcmp(g->user, id, idlen) == 0;
        if (act == GW_ACT_SUBSCRIBE && !own)
            return DX__GW_E_FORBIDDEN; /* GATEWAY.md: nobody else may subscribe to it */
    }
    switch (act) {
    case GW_ACT_SUBSCRIBE:
    case GW_ACT_PRESENCE:
    case GW_ACT_HISTORY:
        /* the token's `subscribe` claim narrows what it may read; its own
         * user: topic is always allowed */
        if (c && c->has_subscribe && !own &&
            !claim_covers(c->subscribe, c->subscribe_len, c->n_subscribe, topic, len))
            return DX__GW_E_FORBIDDEN;
        break;
    case GW_ACT_PUBLISH:
        if (!g->user && !p->anonymous_publish)
            return DX__GW_E_FORBIDDEN;
        if (c && c->has_publish && !claim_covers(c->publish, c->publish_len, c->n_publish, topic, len))
            return DX__GW_E_FORBIDDEN;
        break;
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
