/*
 * src/gateway/settings.c: building, sharing and swapping the policy
 * snapshot (policy.h). dx_gateway_reload is here too: it builds the new
 * snapshot on the caller's thread, swaps gw->pol, and posts each worker a
 * call that takes a reference to it on the worker's own thread.
 */
#define _POSIX_C_SOURCE 200809L
#include "gateway/gw.h"
#include "gateway/policy.h"

#include <openssl/crypto.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

char *gw_policy_strdup(gw_policy *p, const char *s)
{
    if (!s)
        return NULL;
    if (p->nowned == p->capowned) {
        size_t cap = p->capowned ? 2 * p->capowned : 16;
        char **n = realloc(p->owned, cap * sizeof *n);
        if (!n)
            return NULL;
        p->owned = n;
        p->capowned = cap;
    }
    char *c = strdup(s);
    if (c)
        p->owned[p->nowned++] = c;
    return c;
}

static void pol_free(gw_policy *p)
{
    gw_auth_policy_free(p);
    for (size_t i = 0; i < p->nowned; i++)
        free(p->owned[i]);
    free(p->owned);
    free(p->api_keys);
    gw_limits_cfg_free(p->lim);
    free(p);
}

gw_policy *gw_policy_ref(gw_policy *p)
{
    if (p)
        atomic_fetch_add_explicit(&p->refs, 1, memory_order_relaxed);
    return p;
}

void gw_policy_unref(gw_policy *p)
{
    if (p && atomic_fetch_sub_explicit(&p->refs, 1, memory_order_acq_rel) == 1)
        pol_free(p);
}

static int add_api_key(gw_policy *p, const char *name, const char *key)
{
    gw_api_key *n = realloc(p->api_keys, (p->n_api_keys + 1) * sizeof *n);
    if (!n)
        return DX_ENOMEM;
    p->api_keys = n;
    gw_api_key *k = &n[p->n_api_keys];
    if (!(k->name = gw_policy_strdup(p, name)) || !(k->key = gw_policy_strdup(p, key)))
        return DX_ENOMEM;
    k->len = strlen(key);
    p->n_api_keys++;
    return 0;
}

const gw_api_key *gw_policy_api_key(const gw_policy *p, const char *key, size_t len)
{
    const gw_api_key *hit = NULL;
    for (size_t j = 0; j < p->n_api_keys; j++) {
        const gw_api_key *k = &p->api_keys[j];
        /* constant time over the key's length, whatever matches */
        unsigned char diff = (unsigned char)(len != k->len);
        for (size_t i = 0; i < k->len; i++)
            diff |= (unsigned char)(k->key[i] ^ (i < len ? key[i] : 0));
        if (diff == 0 && !hit)
            hit = k;
    }
    return hit;
}

/* "name key" per line; blank lines and lines starting with # skipped. The
 * error names the file and line, never a key. */
static int read_api_keys_file(gw_policy *p, const char *path, char *why, size_t why_len)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(why, why_len, "api_keys_file %s: %s", path, strerror(errno));
        return DX_EINVAL;
    }
    char line[1024];
    unsigned no = 0;
    int rc = 0;
    while (!rc && fgets(line, sizeof line, f)) {
        no++;
        size_t l = strlen(line);
        if (l == sizeof line - 1 && line[l - 1] != '\n') {
            snprintf(why, why_len, "api_keys_file %s:%u: line longer than %zu bytes", path, no, sizeof line - 2);
            rc = DX_EINVAL;
            break;
        }
        char *save = NULL, *name = strtok_r(line, " \t\r\n", &save);
        if (!name || *name == '#')
            continue;
        char *key = strtok_r(NULL, " \t\r\n", &save);
        if (!key || strtok_r(NULL, " \t\r\n", &save)) {
            snprintf(why, why_len, "api_keys_file %s:%u: expected \"name key\"", path, no);
            rc = DX_EINVAL;
        } else if (strlen(name) >= GW_KEYSTAT_NAME) {
            snprintf(why, why_len, "api_keys_file %s:%u: name longer than %d bytes", path, no, GW_KEYSTAT_NAME - 1);
            rc = DX_EINVAL;
        } else {
            for (size_t j = 0; j < p->n_api_keys && !rc; j++)
                if (!strcmp(p->api_keys[j].name, name)) {
                    snprintf(why, why_len, "api_keys_file %s:%u: name '%s' used twice", path, no, name);
                    rc = DX_EINVAL;
                }
            if (!rc && add_api_key(p, name, key) != 0) {
                snprintf(why, why_len, "out of memory");
                rc = DX_ENOMEM;
            }
        }
    }
    if (!rc && ferror(f)) {
        snprintf(why, why_len, "api_keys_file %s: read error", path);
        rc = DX_EINVAL;
    }
    fclose(f);
    OPENSSL_cleanse(line, sizeof line);
    return rc;
}

#define FAIL(...)                                                                                                 \
    do {                                                                                                          \
        snprintf(why, why_len, __VA_ARGS__);                                                                      \
        goto fail;                                                                                                \
    } while (0)

gw_policy *gw_policy_new(const dx_gateway_options *o, char *why, size_t why_len)
{
    char dummy[1];
    if (!why || !why_len) {
        why = dummy;
        why_len = sizeof dummy;
    }
    gw_policy *p = calloc(1, sizeof *p);
    if (!p) {
        snprintf(why, why_len, "out of memory");
        return NULL;
    }
    atomic_init(&p->refs, 1);

    /* ---- auth (helper C) ---- */
    p->auth = o->auth;
    const dx_gateway_auth *ao = &o->auth;
    dx_gateway_auth *ap = &p->auth;
    if ((ao->jwt_secret && !(ap->jwt_secret = gw_policy_strdup(p, ao->jwt_secret))) ||
        (ao->jwt_public_key && !(ap->jwt_public_key = gw_policy_strdup(p, ao->jwt_public_key))) ||
        (ao->jwks_file && !(ap->jwks_file = gw_policy_strdup(p, ao->jwks_file))) ||
        (ao->audience && !(ap->audience = gw_policy_strdup(p, ao->audience))) ||
        (ao->issuer && !(ap->issuer = gw_policy_strdup(p, ao->issuer))) ||
        (ao->cookie && !(ap->cookie = gw_policy_strdup(p, ao->cookie))))
        FAIL("out of memory");
    int nsrc = !!p->auth.jwt_secret + !!p->auth.jwt_public_key + !!p->auth.jwks_file;
    if (nsrc > 1)
        FAIL("auth: give one of jwt_secret, jwt_public_key, jwks_file");
    p->jwt = nsrc == 1;
    if (o->api_key && *o->api_key && add_api_key(p, "default", o->api_key) != 0)
        FAIL("out of memory");
    for (size_t i = 0; i < o->n_api_keys; i++) {
        const dx_gateway_api_key *k = &o->api_keys[i];
        if (!k->name || !*k->name || !k->key || !*k->key)
            FAIL("api_keys[%zu]: a key needs a name and a non-empty key", i);
        if (add_api_key(p, k->name, k->key) != 0)
            FAIL("out of memory");
    }
    if (o->api_keys_file && read_api_keys_file(p, o->api_keys_file, why, why_len) != 0)
        goto fail;
    if (gw_auth_policy_init(p, why, why_len) != 0)
        goto fail;

    /* ---- origins, limits, namespaces, drain (helper E) ---- */
    int err;
    if (!(p->lim = gw_limits_cfg_new(o, why, why_len, &err)))
        goto fail;
    return p;
fail:
    pol_free(p);
    return NULL;
}

/* ---- reload ---------------------------------------------------------------- */

/* On worker k's thread: take the gateway's current policy. */
void gw_policy_take(gw_worker *k)
{
    dx_gateway *gw = k->gw;
    pthread_mutex_lock(&gw->pol_mu);
    gw_policy *p = gw_policy_ref(gw->pol);
    pthread_mutex_unlock(&gw->pol_mu);
    gw_policy *old = k->pol;
    k->pol = p;
    gw_policy_unref(old);
}

static void take_posted(void *arg)
{
    gw_policy_take(arg);
}

int dx_gateway_reload_sized(dx_gateway *gw, const dx_gateway_options *opt, size_t opt_size, char *why,
                            size_t why_len)
{
    char dummy[1];
    if (!why || !why_len) {
        why = dummy;
        why_len = sizeof dummy;
    }
    if (!gw || !opt || opt_size > sizeof(dx_gateway_options)) {
        snprintf(why, why_len, "bad arguments");
        return DX_EINVAL;
    }
    dx_gateway_options o;
    memset(&o, 0, sizeof o);
    memcpy(&o, opt, opt_size);
    gw_policy *p = gw_policy_new(&o, why, why_len);
    if (!p) {
        atomic_fetch_add_explicit(&gw->reloads[1], 1, memory_order_relaxed);
        return DX_EINVAL;
    }
    atomic_fetch_add_explicit(&gw->reloads[0], 1, memory_order_relaxed);
    pthread_mutex_lock(&gw->pol_mu);
    gw_policy *old = gw->pol;
    gw->pol = p;
    pthread_mutex_unlock(&gw->pol_mu);
    gw_policy_unref(old);
    /* Workers not attached yet take it at attach; a post that cannot be
     * queued is retried by the worker's 1 s tick (it compares pointers). */
    for (unsigned i = 0; i < gw->n; i++)
        if (gw->w[i].loop)
            (void)dx_loop_post(gw->w[i].loop, take_posted, &gw->w[i]);
    return 0;
}
