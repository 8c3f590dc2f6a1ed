/*
 * src/gateway/jwt.c: JWT verification (jwt.h). Layer: gateway; depends on
 * OpenSSL 3 (EVP) and jansson only; no loop, no socket, no clock.
 *
 * Order of checks on a token, cheapest and least trusting first: size,
 * three parts of strict base64url, the header a JSON object with a known
 * `alg` and no `crit`, the key (by `kid`) whose type matches `alg`, the
 * signature, and only then the payload (a JSON object; exp, nbf, aud, iss,
 * sub, subscribe, publish with their types). Nothing in the header selects
 * a key from outside the configured set (`jku`, `jwk`, `x5u` are ignored).
 * Duplicate JSON members are refused (RFC 7515 §5.2, RFC 8725 §3.3: two
 * parsers must not read two different tokens from one).
 */
#include "gateway/jwt.h"

#include "core/seams.h"
#include "duplex/duplex.h"

#include <jansson.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

enum jwt_alg { ALG_HS256 = 0, ALG_RS256, ALG_ES256, ALG_EDDSA, ALG_N };
static const char *const alg_names[ALG_N] = {"HS256", "RS256", "ES256", "EdDSA"};

#define MAX_KEY_FILE (1u << 20) /* a PEM or JWKS file larger than this is refused */
#define MAX_KID 256

typedef struct jwt_key {
    enum jwt_alg alg;       /* the only algorithm this key verifies */
    char *kid;              /* NULL: none */
    EVP_PKEY *pkey;         /* RS256, ES256, EdDSA */
    uint8_t *secret;        /* HS256 */
    size_t secret_len;
} jwt_key;

struct dx__jwt_keys {
    jwt_key *k;
    size_t n;
};

static const char *const reasons[DX__JWT_NERR] = {
    [DX__JWT_OK] = "ok",
    [DX__JWT_E_TOO_LONG] = "too_long",
    [DX__JWT_E_MALFORMED] = "malformed",
    [DX__JWT_E_ALG] = "alg",
    [DX__JWT_E_NO_KEY] = "no_key",
    [DX__JWT_E_SIGNATURE] = "signature",
    [DX__JWT_E_EXPIRED] = "expired",
    [DX__JWT_E_NOT_YET] = "not_yet_valid",
    [DX__JWT_E_AUDIENCE] = "audience",
    [DX__JWT_E_ISSUER] = "issuer",
    [DX__JWT_E_CLAIM] = "claim",
    [DX__JWT_E_NOMEM] = "nomem",
};

const char *dx__jwt_reason(int err)
{
    if (err < 0 || err >= DX__JWT_NERR)
        return "unknown";
    return reasons[err];
}

static int fail(char *why, size_t why_len, int err, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int fail(char *why, size_t why_len, int err, const char *fmt, ...)
{
    if (why && why_len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, why_len, fmt, ap);
        va_end(ap);
    }
    return err;
}

/* ---- base64url ---- */

static int b64url_val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

long dx__jwt_b64url_decode(const char *s, size_t len, uint8_t *out)
{
    if (len % 4 == 1)
        return -1; /* 6 bits cannot end a byte */
    size_t o = 0;
    uint32_t acc = 0;
    unsigned bits = 0;
    for (size_t i = 0; i < len; i++) {
        int v = b64url_val((unsigned char)s[i]);
        if (v < 0)
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
        }
    }
    /* the leftover bits (2 or 4) must be zero: one encoding per value */
    if (bits && (acc & ((1u << bits) - 1)))
        return -1;
    return (long)o;
}

/* Decodes a base64url string member into a fresh buffer. */
static uint8_t *b64_member(json_t *o, const char *name, size_t *outlen)
{
    json_t *v = json_object_get(o, name);
    if (!json_is_string(v))
        return NULL;
    const char *s = json_string_value(v);
    size_t len = json_string_length(v);
    uint8_t *buf = dx__alloc(NULL, len * 3 / 4 + 1);
    if (!buf)
        return NULL;
    long n = dx__jwt_b64url_decode(s, len, buf);
    if (n <= 0) {
        dx__free(NULL, buf);
        return NULL;
    }
    *outlen = (size_t)n;
    return buf;
}

/* ---- keys ---- */

static void key_clear(jwt_key *k)
{
    EVP_PKEY_free(k->pkey);
    if (k->secret) {
        OPENSSL_cleanse(k->secret, k->secret_len);
        dx__free(NULL, k->secret);
    }
    dx__free(NULL, k->kid);
    memset(k, 0, sizeof *k);
}

void dx__jwt_keys_free(dx__jwt_keys *ks)
{
    if (!ks)
        return;
    for (size_t i = 0; i < ks->n; i++)
        key_clear(&ks->k[i]);
    dx__free(NULL, ks->k);
    dx__free(NULL, ks);
}

size_t dx__jwt_keys_count(const dx__jwt_keys *ks)
{
    return ks ? ks->n : 0;
}

static dx__jwt_keys *keys_new(size_t cap)
{
    dx__jwt_keys *ks = dx__alloc(NULL, sizeof *ks);
    if (!ks)
        return NULL;
    ks->n = 0;
    ks->k = dx__alloc(NULL, (cap ? cap : 1) * sizeof *ks->k);
    if (!ks->k) {
        dx__free(NULL, ks);
        return NULL;
    }
    memset(ks->k, 0, (cap ? cap : 1) * sizeof *ks->k);
    return ks;
}

/* OpenSSL's checks of a public key: RSA (e odd and > 1, n odd, ...), EC
 * (the point on the curve). An e of 1 would make any message its own
 * signature. */
static bool pkey_valid(EVP_PKEY *pk)
{
    EVP_PKEY_CTX *c = EVP_PKEY_CTX_new_from_pkey(NULL, pk, NULL);
    bool ok = c && EVP_PKEY_public_check(c) == 1;
    EVP_PKEY_CTX_free(c);
    return ok;
}

/* Which algorithm a public key verifies; -1 when unsupported (why says). */
static int pkey_alg(EVP_PKEY *pk, char *why, size_t why_len)
{
    if (EVP_PKEY_is_a(pk, "RSA")) {
        if (EVP_PKEY_get_bits(pk) < 2048)
            return fail(why, why_len, -1, "RSA key of %d bits (RS256 needs at least 2048)", EVP_PKEY_get_bits(pk));
        if (!pkey_valid(pk))
            return fail(why, why_len, -1, "RSA key fails OpenSSL's public key check (exponent, modulus)");
        return ALG_RS256;
    }
    if (EVP_PKEY_is_a(pk, "EC")) {
        if (!pkey_valid(pk))
            return fail(why, why_len, -1, "EC key: not a point on its curve");
        char grp[64];
        size_t gl = 0;
        if (!EVP_PKEY_get_utf8_string_param(pk, OSSL_PKEY_PARAM_GROUP_NAME, grp, sizeof grp, &gl) ||
            (strcmp(grp, "prime256v1") != 0 && strcmp(grp, "P-256") != 0))
            return fail(why, why_len, -1, "EC key not on P-256 (ES256 only)");
        return ALG_ES256;
    }
    if (EVP_PKEY_is_a(pk, "ED25519"))
        return ALG_EDDSA;
    return fail(why, why_len, -1, "unsupported public key type (RSA, EC P-256 or Ed25519)");
}

int dx__jwt_keys_secret(const void *secret, size_t len, dx__jwt_keys **out, char *why, size_t why_len)
{
    *out = NULL;
    if (len < DX__JWT_MIN_SECRET)
        return fail(why, why_len, DX_EINVAL, "JWT secret of %zu bytes: HS256 needs at least %d", len,
                    DX__JWT_MIN_SECRET);
    dx__jwt_keys *ks = keys_new(1);
    if (!ks)
        return fail(why, why_len, DX_ENOMEM, "out of memory");
    jwt_key *k = &ks->k[0];
    k->alg = ALG_HS256;
    k->secret = dx__alloc(NULL, len);
    if (!k->secret) {
        dx__jwt_keys_free(ks);
        return fail(why, why_len, DX_ENOMEM, "out of memory");
    }
    memcpy(k->secret, secret, len);
    k->secret_len = len;
    ks->n = 1;
    *out = ks;
    return 0;
}

int dx__jwt_keys_pem(const char *pem, size_t len, dx__jwt_keys **out, char *why, size_t why_len)
{
    *out = NULL;
    if (len > MAX_KEY_FILE || len > INT32_MAX)
        return fail(why, why_len, DX_EINVAL, "PEM key larger than %u bytes", MAX_KEY_FILE);
    BIO *b = BIO_new_mem_buf(pem, (int)len);
    if (!b)
        return fail(why, why_len, DX_ENOMEM, "out of memory");
    EVP_PKEY *pk = PEM_read_bio_PUBKEY(b, NULL, NULL, NULL);
    BIO_free(b);
    if (!pk)
        return fail(why, why_len, DX_EINVAL, "no PEM public key (\"-----BEGIN PUBLIC KEY-----\") found");
    int alg = pkey_alg(pk, why, why_len);
    if (alg < 0) {
        EVP_PKEY_free(pk);
        return DX_EINVAL;
    }
    dx__jwt_keys *ks = keys_new(1);
    if (!ks) {
        EVP_PKEY_free(pk);
        return fail(why, why_len, DX_ENOMEM, "out of memory");
    }
    ks->k[0].alg = (enum jwt_alg)alg;
    ks->k[0].pkey = pk;
    ks->n = 1;
    *out = ks;
    return 0;
}

static EVP_PKEY *fromdata(const char *type, OSSL_PARAM_BLD *bld)
{
    EVP_PKEY *pk = NULL;
    OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(bld);
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, type, NULL);
    if (params && ctx && EVP_PKEY_fromdata_init(ctx) > 0 &&
        EVP_PKEY_fromdata(ctx, &pk, EVP_PKEY_PUBLIC_KEY, params) <= 0)
        pk = NULL;
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    return pk;
}

static EVP_PKEY *jwk_rsa(json_t *j, char *why, size_t why_len)
{
    size_t nl = 0, el = 0;
    uint8_t *n = b64_member(j, "n", &nl), *e = b64_member(j, "e", &el);
    EVP_PKEY *pk = NULL;
    if (!n || !e) {
        fail(why, why_len, 0, "RSA key without base64url n and e");
        goto out;
    }
    BIGNUM *bn = BN_bin2bn(n, (int)nl, NULL), *be = BN_bin2bn(e, (int)el, NULL);
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    if (bn && be && bld && OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn) &&
        OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, be))
        pk = fromdata("RSA", bld);
    OSSL_PARAM_BLD_free(bld);
    BN_free(bn);
    BN_free(be);
    if (!pk)
        fail(why, why_len, 0, "RSA key not usable");
out:
    dx__free(NULL, n);
    dx__free(NULL, e);
    return pk;
}

static EVP_PKEY *jwk_ec(json_t *j, char *why, size_t why_len)
{
    size_t xl = 0, yl = 0;
    uint8_t *x = b64_member(j, "x", &xl), *y = b64_member(j, "y", &yl);
    EVP_PKEY *pk = NULL;
    if (!json_is_string(json_object_get(j, "crv")) || strcmp(json_string_value(json_object_get(j, "crv")), "P-256")) {
        fail(why, why_len, 0, "EC key with a crv other than P-256");
        goto out;
    }
    if (!x || !y || xl != 32 || yl != 32) {
        fail(why, why_len, 0, "EC key without 32-byte base64url x and y");
        goto out;
    }
    uint8_t pt[65];
    pt[0] = 0x04; /* uncompressed point (SEC 1 §2.3.3) */
    memcpy(pt + 1, x, 32);
    memcpy(pt + 33, y, 32);
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    if (bld && OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) &&
        OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, pt, sizeof pt))
        pk = fromdata("EC", bld);
    OSSL_PARAM_BLD_free(bld);
    if (pk && !pkey_valid(pk)) { /* a point not on the curve must not get as far as a verification */
        EVP_PKEY_free(pk);
        pk = NULL;
    }
    if (!pk)
        fail(why, why_len, 0, "EC key: not a point on P-256");
out:
    dx__free(NULL, x);
    dx__free(NULL, y);
    return pk;
}

static EVP_PKEY *jwk_okp(json_t *j, char *why, size_t why_len)
{
    size_t xl = 0;
    EVP_PKEY *pk = NULL;
    uint8_t *x = NULL;
    if (!json_is_string(json_object_get(j, "crv")) ||
        strcmp(json_string_value(json_object_get(j, "crv")), "Ed25519")) {
        fail(why, why_len, 0, "OKP key with a crv other than Ed25519");
        goto out;
    }
    x = b64_member(j, "x", &xl);
    if (!x || xl != 32) {
        fail(why, why_len, 0, "Ed25519 key without a 32-byte base64url x");
        goto out;
    }
    pk = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, x, xl);
    if (!pk)
        fail(why, why_len, 0, "Ed25519 key not usable");
out:
    dx__free(NULL, x);
    return pk;
}

/* One JWK into k. 1: added; 0: skipped (another use, unknown kty); -1: error. */
static int jwk_one(json_t *j, jwt_key *k, char *why, size_t why_len)
{
    char sub[200] = "";
    if (!json_is_object(j))
        return fail(why, why_len, -1, "a key that is not a JSON object");
    json_t *kty = json_object_get(j, "kty"), *use = json_object_get(j, "use"), *alg = json_object_get(j, "alg");
    json_t *kid = json_object_get(j, "kid");
    if (!json_is_string(kty))
        return fail(why, why_len, -1, "a key without a string kty");
    if (use && (!json_is_string(use) || strcmp(json_string_value(use), "sig") != 0))
        return 0; /* an encryption key (RFC 7517 §4.2) */
    if (alg && !json_is_string(alg))
        return fail(why, why_len, -1, "a key whose alg is not a string");
    if (kid && (!json_is_string(kid) || json_string_length(kid) == 0 || json_string_length(kid) > MAX_KID))
        return fail(why, why_len, -1, "a key whose kid is not a string of 1-%d bytes", MAX_KID);
    const char *t = json_string_value(kty);
    int a;
    if (!strcmp(t, "RSA")) {
        k->pkey = jwk_rsa(j, sub, sizeof sub);
        a = k->pkey ? pkey_alg(k->pkey, sub, sizeof sub) : -1;
    } else if (!strcmp(t, "EC")) {
        k->pkey = jwk_ec(j, sub, sizeof sub);
        a = k->pkey ? ALG_ES256 : -1;
    } else if (!strcmp(t, "OKP")) {
        k->pkey = jwk_okp(j, sub, sizeof sub);
        a = k->pkey ? ALG_EDDSA : -1;
    } else if (!strcmp(t, "oct")) {
        k->secret = b64_member(j, "k", &k->secret_len);
        if (!k->secret)
            snprintf(sub, sizeof sub, "oct key without a base64url k");
        else if (k->secret_len < DX__JWT_MIN_SECRET)
            snprintf(sub, sizeof sub, "oct key of %zu bytes: HS256 needs at least %d", k->secret_len,
                     DX__JWT_MIN_SECRET);
        a = k->secret && k->secret_len >= DX__JWT_MIN_SECRET ? ALG_HS256 : -1;
    } else {
        return 0; /* RFC 7517 §5: ignore keys of a type not understood */
    }
    if (a < 0) {
        key_clear(k);
        return fail(why, why_len, -1, "%s", sub);
    }
    k->alg = (enum jwt_alg)a;
    if (alg && strcmp(json_string_value(alg), alg_names[a]) != 0) {
        key_clear(k);
        return fail(why, why_len, -1, "a %s key with alg %.32s (this key verifies %s only)", t,
                    json_string_value(alg), alg_names[a]);
    }
    if (kid) {
        k->kid = dx__alloc(NULL, json_string_length(kid) + 1);
        if (!k->kid) {
            key_clear(k);
            return fail(why, why_len, -1, "out of memory");
        }
        memcpy(k->kid, json_string_value(kid), json_string_length(kid) + 1);
    }
    return 1;
}

int dx__jwt_keys_jwks(const char *json, size_t len, dx__jwt_keys **out, char *why, size_t why_len)
{
    *out = NULL;
    if (len > MAX_KEY_FILE)
        return fail(why, why_len, DX_EINVAL, "JWKS larger than %u bytes", MAX_KEY_FILE);
    json_error_t je;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return fail(why, why_len, DX_EINVAL, "JWKS is not JSON: line %d: %s", je.line, je.text);
    json_t *keys = json_object_get(root, "keys");
    int rc = 0;
    dx__jwt_keys *ks = NULL;
    if (!json_is_array(keys)) {
        rc = fail(why, why_len, DX_EINVAL, "JWKS without a \"keys\" array");
        goto out;
    }
    if (json_array_size(keys) > DX__JWT_MAX_KEYS) {
        rc = fail(why, why_len, DX_EINVAL, "JWKS with %zu keys (at most %d)", json_array_size(keys),
                  DX__JWT_MAX_KEYS);
        goto out;
    }
    ks = keys_new(json_array_size(keys));
    if (!ks) {
        rc = fail(why, why_len, DX_ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < json_array_size(keys); i++) {
        char sub[200];
        int r = jwk_one(json_array_get(keys, i), &ks->k[ks->n], sub, sizeof sub);
        if (r < 0) {
            rc = fail(why, why_len, DX_EINVAL, "JWKS key %zu: %s", i, sub);
            goto out;
        }
        if (r == 0)
            continue;
        jwt_key *k = &ks->k[ks->n];
        for (size_t m = 0; m < ks->n; m++) {
            if (k->kid && ks->k[m].kid && !strcmp(k->kid, ks->k[m].kid)) {
                key_clear(k);
                rc = fail(why, why_len, DX_EINVAL, "JWKS key %zu: kid used twice", i);
                goto out;
            }
        }
        ks->n++;
    }
    if (!ks->n)
        rc = fail(why, why_len, DX_EINVAL, "JWKS holds no usable signature key");
out:
    json_decref(root);
    if (rc) {
        dx__jwt_keys_free(ks);
        return rc;
    }
    *out = ks;
    return 0;
}

static int read_file(const char *path, char **data, size_t *len, char *why, size_t why_len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return fail(why, why_len, DX_EINVAL, "%s: %s", path, strerror(errno));
    char *buf = dx__alloc(NULL, MAX_KEY_FILE + 1);
    if (!buf) {
        fclose(f);
        return fail(why, why_len, DX_ENOMEM, "out of memory");
    }
    size_t n = fread(buf, 1, MAX_KEY_FILE + 1, f);
    int bad = ferror(f);
    fclose(f);
    if (bad || n > MAX_KEY_FILE) {
        dx__free(NULL, buf);
        return fail(why, why_len, DX_EINVAL, "%s: %s", path, bad ? "read error" : "larger than 1 MiB");
    }
    buf[n] = '\0';
    *data = buf;
    *len = n;
    return 0;
}

int dx__jwt_keys_load(const dx__jwt_key_src *src, dx__jwt_keys **out, char *why, size_t why_len)
{
    *out = NULL;
    int nsrc = !!src->secret + !!src->pem_file + !!src->jwks_file;
    if (nsrc == 0)
        return 0;
    if (nsrc > 1)
        return fail(why, why_len, DX_EINVAL, "more than one JWT key source (secret, public key, JWKS): pick one");
    if (src->secret)
        return dx__jwt_keys_secret(src->secret, strlen(src->secret), out, why, why_len);
    const char *path = src->pem_file ? src->pem_file : src->jwks_file;
    char *data = NULL;
    size_t len = 0;
    int rc = read_file(path, &data, &len, why, why_len);
    if (rc)
        return rc;
    char sub[240];
    rc = src->pem_file ? dx__jwt_keys_pem(data, len, out, sub, sizeof sub)
                       : dx__jwt_keys_jwks(data, len, out, sub, sizeof sub);
    dx__free(NULL, data);
    if (rc)
        fail(why, why_len, rc, "%s: %s", path, sub);
    return rc;
}

/* ---- verification ---- */

static int alg_of(const char *s)
{
    for (int i = 0; i < ALG_N; i++)
        if (!strcmp(s, alg_names[i]))
            return i;
    return -1;
}

static bool sig_hs256(const jwt_key *k, const uint8_t *in, size_t inlen, const uint8_t *sig, size_t slen)
{
    uint8_t mac[EVP_MAX_MD_SIZE];
    unsigned ml = 0;
    if (slen != 32 || !HMAC(EVP_sha256(), k->secret, (int)k->secret_len, in, inlen, mac, &ml) || ml != 32)
        return false;
    return CRYPTO_memcmp(mac, sig, 32) == 0;
}

/* JOSE ES256 is r||s, 32 bytes each (RFC 7518 §3.4); OpenSSL wants DER. */
static bool es256_der(const uint8_t *sig, size_t slen, uint8_t *der, size_t *dlen)
{
    if (slen != 64)
        return false;
    ECDSA_SIG *es = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(sig, 32, NULL), *s = BN_bin2bn(sig + 32, 32, NULL);
    if (!es || !r || !s || !ECDSA_SIG_set0(es, r, s)) {
        BN_free(r);
        BN_free(s);
        ECDSA_SIG_free(es);
        return false;
    }
    int n = i2d_ECDSA_SIG(es, NULL);
    bool ok = n > 0 && (size_t)n <= *dlen;
    if (ok) {
        uint8_t *p = der;
        n = i2d_ECDSA_SIG(es, &p);
        *dlen = (size_t)n;
    }
    ECDSA_SIG_free(es);
    return ok;
}

static bool sig_pkey(const jwt_key *k, const uint8_t *in, size_t inlen, const uint8_t *sig, size_t slen)
{
    uint8_t der[80];
    if (k->alg == ALG_ES256) {
        size_t dl = sizeof der;
        if (!es256_der(sig, slen, der, &dl))
            return false;
        sig = der;
        slen = dl;
    } else if (k->alg == ALG_EDDSA && slen != 64) {
        return false;
    } else if (k->alg == ALG_RS256 && slen != (size_t)EVP_PKEY_get_size(k->pkey)) {
        return false;
    }
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx)
        return false;
    const EVP_MD *md = k->alg == ALG_EDDSA ? NULL : EVP_sha256();
    bool ok = EVP_DigestVerifyInit(ctx, NULL, md, NULL, k->pkey) == 1 &&
              EVP_DigestVerify(ctx, sig, slen, in, inlen) == 1;
    EVP_MD_CTX_free(ctx);
    return ok;
}

static json_t *b64_json(const char *s, size_t len, uint8_t *buf)
{
    long n = dx__jwt_b64url_decode(s, len, buf);
    if (n <= 0)
        return NULL;
    json_t *j = json_loadb((const char *)buf, (size_t)n, JSON_REJECT_DUPLICATES, NULL);
    if (j && !json_is_object(j)) {
        json_decref(j);
        return NULL;
    }
    return j;
}

/* A NumericDate (RFC 7519 §2): a JSON number, possibly fractional. 1: read
 * into *t; 0: absent; -1: wrong type or out of range. */
static int numeric_date(json_t *p, const char *name, int64_t *t)
{
    json_t *v = json_object_get(p, name);
    if (!v)
        return 0;
    if (json_is_integer(v)) {
        *t = (int64_t)json_integer_value(v);
        return 1;
    }
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (!isfinite(d) || d < -9.2e18 || d > 9.2e18)
            return -1;
        *t = (int64_t)d; /* toward zero, then floor (no libm) */
        if ((double)*t > d)
            (*t)--;
        return 1;
    }
    return -1;
}

/* An array of strings (the subscribe/publish claims): its count and the
 * bytes of its strings; false when not an array of strings. */
static bool str_array(json_t *v, size_t *n, size_t *bytes)
{
    if (!json_is_array(v))
        return false;
    *n = json_array_size(v);
    for (size_t i = 0; i < *n; i++) {
        json_t *s = json_array_get(v, i);
        if (!json_is_string(s))
            return false;
        *bytes += json_string_length(s) + 1;
    }
    return true;
}

static bool aud_ok(json_t *aud, const char *want)
{
    if (json_is_string(aud))
        return !strcmp(json_string_value(aud), want);
    if (json_is_array(aud)) {
        for (size_t i = 0; i < json_array_size(aud); i++) {
            json_t *s = json_array_get(aud, i);
            if (json_is_string(s) && !strcmp(json_string_value(s), want))
                return true;
        }
    }
    return false;
}

static int claims_check(json_t *p, const dx__jwt_rules *r, int64_t now)
{
    int64_t exp = 0, nbf = 0, iat = 0;
    int he = numeric_date(p, "exp", &exp), hn = numeric_date(p, "nbf", &nbf), hi = numeric_date(p, "iat", &iat);
    if (he < 0 || hn < 0 || hi < 0)
        return DX__JWT_E_CLAIM;
    int64_t lw = r && r->leeway_s > 0 ? r->leeway_s : 0;
    /* RFC 7519 §4.1.4: must not be accepted on or after exp */
    if (he && (exp > INT64_MAX - lw ? false : now >= exp + lw))
        return DX__JWT_E_EXPIRED;
    if (hn && (nbf < INT64_MIN + lw ? false : now < nbf - lw))
        return DX__JWT_E_NOT_YET;
    json_t *aud = json_object_get(p, "aud"), *iss = json_object_get(p, "iss");
    if (aud && !json_is_string(aud) && !json_is_array(aud))
        return DX__JWT_E_CLAIM;
    if (iss && !json_is_string(iss))
        return DX__JWT_E_CLAIM;
    if (r && r->audience && !aud_ok(aud, r->audience))
        return DX__JWT_E_AUDIENCE;
    if (r && r->issuer && (!iss || strcmp(json_string_value(iss), r->issuer) != 0))
        return DX__JWT_E_ISSUER;
    return 0;
}

static char *pack_str(char **at, json_t *s, size_t *len)
{
    char *d = *at;
    *len = json_string_length(s);
    memcpy(d, json_string_value(s), *len + 1);
    *at += *len + 1;
    return d;
}

static int claims_build(json_t *p, dx__jwt_claims **out)
{
    json_t *sub = json_object_get(p, "sub"), *sb = json_object_get(p, "subscribe"), *pb = json_object_get(p, "publish");
    if (!json_is_string(sub) || json_string_length(sub) == 0 || json_string_length(sub) > DX__JWT_MAX_SUB ||
        strlen(json_string_value(sub)) != json_string_length(sub))
        return DX__JWT_E_CLAIM;
    size_t ns = 0, np = 0, bytes = json_string_length(sub) + 1;
    if ((sb && !str_array(sb, &ns, &bytes)) || (pb && !str_array(pb, &np, &bytes)))
        return DX__JWT_E_CLAIM;
    size_t arr = (ns + np) * (sizeof(char *) + sizeof(size_t));
    dx__jwt_claims *c = dx__alloc(NULL, sizeof *c + arr + bytes);
    if (!c)
        return DX__JWT_E_NOMEM;
    memset(c, 0, sizeof *c);
    char **ptrs = (char **)(c + 1);
    size_t *lens = (size_t *)(ptrs + ns + np);
    char *at = (char *)(lens + ns + np);
    c->sub = pack_str(&at, sub, &c->sub_len);
    int64_t exp;
    c->has_exp = numeric_date(p, "exp", &exp) > 0;
    c->exp = c->has_exp ? exp : 0;
    c->has_subscribe = sb != NULL;
    c->has_publish = pb != NULL;
    c->n_subscribe = ns;
    c->n_publish = np;
    c->subscribe = ptrs;
    c->subscribe_len = lens;
    c->publish = ptrs + ns;
    c->publish_len = lens + ns;
    for (size_t i = 0; i < ns; i++)
        c->subscribe[i] = pack_str(&at, json_array_get(sb, i), &c->subscribe_len[i]);
    for (size_t i = 0; i < np; i++)
        c->publish[i] = pack_str(&at, json_array_get(pb, i), &c->publish_len[i]);
    *out = c;
    return 0;
}

void dx__jwt_claims_free(dx__jwt_claims *c)
{
    dx__free(NULL, c);
}

static const jwt_key *pick_key(const dx__jwt_keys *ks, json_t *kid, int alg, int *err)
{
    const jwt_key *k = NULL;
    if (kid) {
        if (!json_is_string(kid)) {
            *err = DX__JWT_E_MALFORMED;
            return NULL;
        }
        for (size_t i = 0; i < ks->n && !k; i++)
            if (ks->k[i].kid && !strcmp(ks->k[i].kid, json_string_value(kid)))
                k = &ks->k[i];
        /* a single configured key (secret, PEM) has no kid: the token's is a hint */
        if (!k && ks->n == 1 && !ks->k[0].kid)
            k = &ks->k[0];
    } else if (ks->n == 1) {
        k = &ks->k[0];
    }
    if (!k) {
        *err = DX__JWT_E_NO_KEY;
        return NULL;
    }
    if ((int)k->alg != alg) {
        *err = DX__JWT_E_ALG;
        return NULL;
    }
    return k;
}

int dx__jwt_verify(const dx__jwt_keys *ks, const dx__jwt_rules *r, const char *tok, size_t len, int64_t now,
                   dx__jwt_claims **out)
{
    *out = NULL;
    if (len > DX__JWT_MAX_TOKEN)
        return DX__JWT_E_TOO_LONG;
    const char *d1 = memchr(tok, '.', len);
    const char *d2 = d1 ? memchr(d1 + 1, '.', len - (size_t)(d1 + 1 - tok)) : NULL;
    if (!d1 || !d2 || memchr(d2 + 1, '.', len - (size_t)(d2 + 1 - tok)))
        return DX__JWT_E_MALFORMED;
    size_t hl = (size_t)(d1 - tok), pl = (size_t)(d2 - d1 - 1), sl = len - (size_t)(d2 + 1 - tok);
    if (!hl || !pl || !sl)
        return DX__JWT_E_MALFORMED; /* an empty signature is `alg: none` by another name */
    uint8_t buf[DX__JWT_MAX_TOKEN * 3 / 4 + 1];
    uint8_t sig[DX__JWT_MAX_TOKEN * 3 / 4 + 1];
    json_t *h = b64_json(tok, hl, buf);
    if (!h)
        return DX__JWT_E_MALFORMED;
    int err = 0;
    json_t *p = NULL;
    json_t *alg = json_object_get(h, "alg");
    if (json_object_get(h, "crit")) {
        err = DX__JWT_E_MALFORMED; /* RFC 7515 §4.1.11: we understand no extension */
        goto out;
    }
    int a = json_is_string(alg) ? alg_of(json_string_value(alg)) : -1;
    if (a < 0) {
        err = DX__JWT_E_ALG;
        goto out;
    }
    if (!ks) {
        err = DX__JWT_E_NO_KEY;
        goto out;
    }
    const jwt_key *k = pick_key(ks, json_object_get(h, "kid"), a, &err);
    if (!k)
        goto out;
    long sn = dx__jwt_b64url_decode(d2 + 1, sl, sig);
    if (sn <= 0) {
        err = DX__JWT_E_MALFORMED;
        goto out;
    }
    /* the signing input is the first two parts as sent (RFC 7515 §5.2) */
    size_t in_len = (size_t)(d2 - tok);
    bool ok = k->alg == ALG_HS256 ? sig_hs256(k, (const uint8_t *)tok, in_len, sig, (size_t)sn)
                                  : sig_pkey(k, (const uint8_t *)tok, in_len, sig, (size_t)sn);
    if (!ok) {
        err = DX__JWT_E_SIGNATURE;
        goto out;
    }
    p = b64_json(d1 + 1, pl, buf);
    if (!p) {
        err = DX__JWT_E_MALFORMED;
        goto out;
    }
    err = claims_check(p, r, now);
    if (!err)
        err = claims_build(p, out);
out:
    json_decref(h);
    json_decref(p);
    return err;
}
