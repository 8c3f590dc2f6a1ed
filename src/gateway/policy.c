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

int gw_policy_check(const gw_conn *g, enum gw_action act, const char *topic, size_t len)
{
    const char *id;
    size_t idlen;
    if (act == GW_ACT_SUBSCRIBE && dx__gw_topic_user_id(topic, len, &id, &idlen)) {
        if (!g->user || g->ulen != idlen || memcmp(g->user, id, idlen) != 0)
            return DX__GW_E_FORBIDDEN;
    }
    return 0;
}
