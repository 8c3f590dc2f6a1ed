/*
 * tests/fuzz/fuzz_jwt.c: src/gateway/jwt.c, token verification, JWKS
 * parsing and strict base64url.
 *
 * Input: byte 0 selects the mode, the rest is its data.
 *   0: a compact token verified against a fixed key set (an HS256 oct key
 *      "h", the RFC 8037 Ed25519 key "d");
 *   1: "header\npayload": both base64url-encoded and signed with the HS256
 *      key here, so that the fuzzer reaches past the signature into the
 *      header and claims checks;
 *   2: a JWKS document;
 *   3: base64url: what decodes must re-encode to the same text (one
 *      encoding per value).
 * Invariants (abort() when broken): verification returns a known code;
 * claims exist exactly on success, with a non-empty sub whose length is
 * its strlen; patterns likewise; a key set loads with at least one key.
 */
#include "gateway/jwt.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const uint8_t secret[32] = "fuzz-secret-0123456789abcdefghij";
static dx__jwt_keys *keys;

static void check(bool ok)
{
    if (!ok)
        abort();
}

static size_t b64url(const uint8_t *in, size_t len, char *out)
{
    static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < len)
            v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < len)
            v |= in[i + 2];
        out[o++] = a[(v >> 18) & 63];
        out[o++] = a[(v >> 12) & 63];
        if (i + 1 < len)
            out[o++] = a[(v >> 6) & 63];
        if (i + 2 < len)
            out[o++] = a[v & 63];
    }
    return o;
}

static void init(void)
{
    if (keys)
        return;
    char k[64];
    size_t kl = b64url(secret, sizeof secret, k);
    char json[512];
    int n = snprintf(json, sizeof json,
                     "{\"keys\":[{\"kty\":\"oct\",\"kid\":\"h\",\"k\":\"%.*s\"},{\"kty\":\"OKP\",\"crv\":\"Ed25519\","
                     "\"kid\":\"d\",\"x\":\"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo\"}]}",
                     (int)kl, k);
    check(dx__jwt_keys_jwks(json, (size_t)n, &keys, NULL, 0) == 0 && dx__jwt_keys_count(keys) == 2);
}

static void verify(const char *tok, size_t len)
{
    dx__jwt_rules r = {.audience = "duplex", .leeway_s = 30};
    for (int pass = 0; pass < 2; pass++) {
        dx__jwt_claims *c = NULL;
        int rc = dx__jwt_verify(keys, pass ? &r : NULL, tok, len, 1700000000, &c);
        check(rc >= 0 && rc < DX__JWT_NERR);
        check((rc == DX__JWT_OK) == (c != NULL));
        if (!c)
            continue;
        check(c->sub_len > 0 && c->sub_len <= DX__JWT_MAX_SUB && strlen(c->sub) == c->sub_len);
        for (size_t i = 0; i < c->n_subscribe; i++)
            check(strlen(c->subscribe[i]) == c->subscribe_len[i]);
        for (size_t i = 0; i < c->n_publish; i++)
            check(strlen(c->publish[i]) == c->publish_len[i]);
        check(c->has_subscribe || c->n_subscribe == 0);
        check(c->has_publish || c->n_publish == 0);
        dx__jwt_claims_free(c);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    init();
    if (size < 1)
        return 0;
    uint8_t mode = data[0] % 4;
    data++;
    size--;
    if (size > 12000)
        return 0;
    static char tok[20000];
    switch (mode) {
    case 0:
        verify((const char *)data, size);
        break;
    case 1: {
        const uint8_t *nl = memchr(data, '\n', size);
        if (!nl)
            return 0;
        size_t hl = (size_t)(nl - data), pl = size - hl - 1;
        size_t o = b64url(data, hl, tok);
        tok[o++] = '.';
        o += b64url(nl + 1, pl, tok + o);
        uint8_t mac[EVP_MAX_MD_SIZE];
        unsigned ml = 0;
        check(HMAC(EVP_sha256(), secret, sizeof secret, (const uint8_t *)tok, o, mac, &ml) != NULL);
        tok[o++] = '.';
        o += b64url(mac, ml, tok + o);
        verify(tok, o);
        break;
    }
    case 2: {
        dx__jwt_keys *ks = NULL;
        char why[256];
        int rc = dx__jwt_keys_jwks((const char *)data, size, &ks, why, sizeof why);
        check((rc == 0) == (ks != NULL));
        if (ks)
            check(dx__jwt_keys_count(ks) >= 1 && dx__jwt_keys_count(ks) <= DX__JWT_MAX_KEYS);
        dx__jwt_keys_free(ks);
        break;
    }
    default: {
        static uint8_t out[16000];
        long n = dx__jwt_b64url_decode((const char *)data, size, out);
        if (n >= 0) {
            size_t o = b64url(out, (size_t)n, tok);
            check(o == size && memcmp(tok, data, size) == 0);
        }
        break;
    }
    }
    return 0;
}
