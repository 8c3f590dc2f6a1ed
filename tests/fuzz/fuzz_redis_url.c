/*
 * tests/fuzz/fuzz_redis_url.c: src/bus/redis_url.c, the Redis bus's URL
 * parser (redis.h), on any input taken as a NUL-terminated string.
 *
 * Invariants (abort() when broken): it returns 0 or DX_EINVAL and nothing
 * else; a refusal always says why; every field it fills is NUL-terminated
 * within its array; an accepted URL has a port in 1..65535, a database
 * number >= 0, and a non-empty host (TCP) or an absolute path (unix).
 */
#include "bus/redis.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int ok)
{
    if (!ok)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (!s)
        return 0;
    memcpy(s, data, size);
    s[size] = 0;
    dx__redis_url u;
    char why[128];
    why[0] = 0;
    int rc = dx__redis_url_parse(s, &u, why, sizeof why);
    check(rc == 0 || rc == DX_EINVAL);
    if (rc) {
        check(why[0] != 0);
    } else {
        check(memchr(u.host, 0, sizeof u.host) != NULL);
        check(memchr(u.path, 0, sizeof u.path) != NULL);
        check(memchr(u.user, 0, sizeof u.user) != NULL);
        check(memchr(u.pass, 0, sizeof u.pass) != NULL);
        check(u.port >= 1 && u.port <= 65535);
        check(u.db >= 0);
        if (u.unix_socket)
            check(u.path[0] == '/');
        else
            check(u.host[0] != 0);
    }
    free(s);
    return 0;
}
