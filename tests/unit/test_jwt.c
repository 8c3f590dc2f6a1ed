/*
 * tests/unit/test_jwt.c: src/gateway/jwt.c. Tokens are minted here with
 * keys generated at test time by OpenSSL (RSA 2048, EC P-256, Ed25519, a
 * random HMAC secret), plus the public test vectors of RFC 7515 A.1 (HS256)
 * and RFC 8037 A.4 (Ed25519). Every forgery the gateway must refuse is
 * tried: wrong key, alg none, HMAC keyed with the RSA public key, alg/key
 * type mismatch, an unknown kid, time and audience/issuer claims at and
 * one past their bounds, bad base64url, duplicates, crit, every truncation.
 */
#define _POSIX_C_SOURCE 200809L
#include "testutil.h"

#include "gateway/jwt.h"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rand.h>

#define NOW 1700000000

static EVP_PKEY *rsa_key, *ec_key, *ed_key, *rsa1024_key, *ec384_key;
static uint8_t hs_secret[32];

static void b64url(const uint8_t *in, size_t len, char *out)
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
    out[o] = '\0';
}

/* Signs header.payload with alg using key (pkey, or the secret for HS256). */
static char *mint_raw(const char *alg, EVP_PKEY *pk, const uint8_t *secret, size_t slen, const char *header,
                      const char *payload)
{
    static char tok[20000];
    char h[4096], p[8192];
    b64url((const uint8_t *)header, strlen(header), h);
    b64url((const uint8_t *)payload, strlen(payload), p);
    snprintf(tok, sizeof tok, "%s.%s", h, p);
    size_t in_len = strlen(tok);
    uint8_t sig[1024];
    size_t sl = sizeof sig;
    if (!strcmp(alg, "HS256")) {
        unsigned ml = 0;
        assert_non_null(HMAC(EVP_sha256(), secret, (int)slen, (const uint8_t *)tok, in_len, sig, &ml));
        sl = ml;
    } else if (!strcmp(alg, "none")) {
        sl = 0;
    } else {
        EVP_MD_CTX *ctx = EVP_MD_CTX_new();
        assert_int_equal(EVP_DigestSignInit(ctx, NULL, !strcmp(alg, "EdDSA") ? NULL : EVP_sha256(), NULL, pk), 1);
        uint8_t der[1024];
        size_t dl = sizeof der;
        assert_int_equal(EVP_DigestSign(ctx, der, &dl, (const uint8_t *)tok, in_len), 1);
        EVP_MD_CTX_free(ctx);
        if (!strcmp(alg, "ES256")) {
            const uint8_t *dp = der;
            ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &dp, (long)dl);
            assert_non_null(es);
            assert_int_equal(BN_bn2binpad(ECDSA_SIG_get0_r(es), sig, 32), 32);
            assert_int_equal(BN_bn2binpad(ECDSA_SIG_get0_s(es), sig + 32, 32), 32);
            ECDSA_SIG_free(es);
            sl = 64;
        } else {
            memcpy(sig, der, dl);
            sl = dl;
        }
    }
    char s[2048];
    b64url(sig, sl, s);
    strcat(tok, ".");
    strcat(tok, s);
    return tok;
}

static char *mint(const char *alg, const char *kid, const char *payload)
{
    char header[256];
    if (kid)
        snprintf(header, sizeof header, "{\"alg\":\"%s\",\"typ\":\"JWT\",\"kid\":\"%s\"}", alg, kid);
    else
        snprintf(header, sizeof header, "{\"alg\":\"%s\",\"typ\":\"JWT\"}", alg);
    EVP_PKEY *pk = !strcmp(alg, "RS256") ? rsa_key : !strcmp(alg, "ES256") ? ec_key : ed_key;
    return mint_raw(alg, pk, hs_secret, sizeof hs_secret, header, payload);
}

static char *pem_of(EVP_PKEY *pk)
{
    BIO *b = BIO_new(BIO_s_mem());
    assert_int_equal(PEM_write_bio_PUBKEY(b, pk), 1);
    char *data;
    long n = BIO_get_mem_data(b, &data);
    char *s = malloc((size_t)n + 1);
    memcpy(s, data, (size_t)n);
    s[n] = '\0';
    BIO_free(b);
    return s;
}

static void bn_param_b64(EVP_PKEY *pk, const char *name, char *out)
{
    BIGNUM *bn = NULL;
    assert_int_equal(EVP_PKEY_get_bn_param(pk, name, &bn), 1);
    uint8_t buf[1024];
    int n = BN_bn2bin(bn, buf);
    b64url(buf, (size_t)n, out);
    BN_free(bn);
}

/* The JWK of a generated key: {"kty":...} members without braces. */
static void jwk_members(EVP_PKEY *pk, char *out, size_t cap)
{
    char a[700], b[700];
    if (EVP_PKEY_is_a(pk, "RSA")) {
        bn_param_b64(pk, OSSL_PKEY_PARAM_RSA_N, a);
        bn_param_b64(pk, OSSL_PKEY_PARAM_RSA_E, b);
        snprintf(out, cap, "\"kty\":\"RSA\",\"n\":\"%s\",\"e\":\"%s\"", a, b);
    } else if (EVP_PKEY_is_a(pk, "EC")) {
        uint8_t pt[200];
        size_t pl = 0;
        assert_int_equal(EVP_PKEY_get_octet_string_param(pk, OSSL_PKEY_PARAM_PUB_KEY, pt, sizeof pt, &pl), 1);
        assert_int_equal(pl, 65);
        b64url(pt + 1, 32, a);
        b64url(pt + 33, 32, b);
        snprintf(out, cap, "\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"%s\",\"y\":\"%s\"", a, b);
    } else {
        uint8_t raw[32];
        size_t rl = sizeof raw;
        assert_int_equal(EVP_PKEY_get_raw_public_key(pk, raw, &rl), 1);
        b64url(raw, rl, a);
        snprintf(out, cap, "\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"%s\"", a);
    }
}

static dx__jwt_keys *load_jwks(const char *json)
{
    dx__jwt_keys *ks = NULL;
    char why[256] = "";
    int rc = dx__jwt_keys_jwks(json, strlen(json), &ks, why, sizeof why);
    if (rc)
        fail_msg("jwks refused: %s", why);
    return ks;
}

static int refuse_jwks(const char *json, const char *why_has)
{
    dx__jwt_keys *ks = NULL;
    char why[256] = "";
    int rc = dx__jwt_keys_jwks(json, strlen(json), &ks, why, sizeof why);
    assert_null(ks);
    if (why_has && !strstr(why, why_has))
        fail_msg("reason '%s' lacks '%s'", why, why_has);
    return rc;
}

static int verify(const dx__jwt_keys *ks, const dx__jwt_rules *r, const char *tok, int64_t now)
{
    dx__jwt_claims *c = NULL;
    int rc = dx__jwt_verify(ks, r, tok, strlen(tok), now, &c);
    if (rc)
        assert_null(c);
    else
        assert_non_null(c);
    dx__jwt_claims_free(c);
    return rc;
}

static int setup(void **state)
{
    (void)state;
    rsa_key = EVP_RSA_gen(2048);
    rsa1024_key = EVP_RSA_gen(1024);
    ec_key = EVP_EC_gen("P-256");
    ec384_key = EVP_EC_gen("P-384");
    ed_key = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    assert_int_equal(RAND_bytes(hs_secret, sizeof hs_secret), 1);
    return rsa_key && rsa1024_key && ec_key && ec384_key && ed_key ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    EVP_PKEY_free(rsa_key);
    EVP_PKEY_free(rsa1024_key);
    EVP_PKEY_free(ec_key);
    EVP_PKEY_free(ec384_key);
    EVP_PKEY_free(ed_key);
    return 0;
}

static void test_b64url(void **state)
{
    (void)state;
    uint8_t out[64];
    assert_int_equal(dx__jwt_b64url_decode("", 0, out), 0);
    assert_int_equal(dx__jwt_b64url_decode("Zg", 2, out), 1);
    assert_int_equal(out[0], 'f');
    assert_int_equal(dx__jwt_b64url_decode("Zm9vYg", 6, out), 4);
    assert_memory_equal(out, "foob", 4);
    assert_int_equal(dx__jwt_b64url_decode("-_-_", 4, out), 3);
    assert_int_equal(out[0], 0xfb);
    assert_int_equal(out[1], 0xff);
    assert_int_equal(out[2], 0xbf);
    /* padding, the standard alphabet, whitespace, a lone char, stray bits */
    assert_int_equal(dx__jwt_b64url_decode("Zg==", 4, out), -1);
    assert_int_equal(dx__jwt_b64url_decode("+/+/", 4, out), -1);
    assert_int_equal(dx__jwt_b64url_decode("Zm 9v", 5, out), -1);
    assert_int_equal(dx__jwt_b64url_decode("Zm9vY", 5, out), -1);
    assert_int_equal(dx__jwt_b64url_decode("Zh", 2, out), -1); /* 'f' with a stray low bit */
    assert_int_equal(dx__jwt_b64url_decode("Zm8", 3, out), 2);
    assert_int_equal(dx__jwt_b64url_decode("Zm9", 3, out), -1); /* "fo" with stray low bits */
    assert_int_equal(dx__jwt_b64url_decode("Zm-", 3, out), -1);
    assert_int_equal(dx__jwt_b64url_decode("Zm\0v", 4, out), -1);
}

/* RFC 7515 A.1: the HS256 example (its payload has no sub: a claim error
 * after a good signature; one bit off in the signature: refused). */
static void test_rfc7515_hs256(void **state)
{
    (void)state;
    const char *jwks = "{\"keys\":[{\"kty\":\"oct\",\"k\":\"AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0"
                       "iPS4hcgUuTwjAzZr1Z9CAow\"}]}";
    const char *tok = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9."
                      "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ."
                      "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    dx__jwt_keys *ks = load_jwks(jwks);
    assert_int_equal(verify(ks, NULL, tok, 1300819379), DX__JWT_E_CLAIM);
    assert_int_equal(verify(ks, NULL, tok, 1300819380), DX__JWT_E_EXPIRED);
    char bad[512];
    snprintf(bad, sizeof bad, "%s", tok);
    bad[strlen(bad) - 2] = bad[strlen(bad) - 2] == 'X' ? 'Y' : 'X';
    assert_int_equal(verify(ks, NULL, bad, 1300819379), DX__JWT_E_SIGNATURE);
    dx__jwt_keys_free(ks);
}

/* RFC 8037 A.4: Ed25519 over a payload that is not JSON (a good signature,
 * then malformed); a flipped signature byte refused. */
static void test_rfc8037_ed25519(void **state)
{
    (void)state;
    const char *jwks = "{\"keys\":[{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo\"}]}";
    const char *tok = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc."
                      "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg";
    dx__jwt_keys *ks = load_jwks(jwks);
    assert_int_equal(verify(ks, NULL, tok, NOW), DX__JWT_E_MALFORMED);
    char bad[512];
    snprintf(bad, sizeof bad, "%s", tok);
    bad[strlen(bad) - 5] = bad[strlen(bad) - 5] == 'A' ? 'B' : 'A';
    assert_int_equal(verify(ks, NULL, bad, NOW), DX__JWT_E_SIGNATURE);
    dx__jwt_keys_free(ks);
}

static void test_every_alg(void **state)
{
    (void)state;
    const char *pl = "{\"sub\":\"alice\",\"exp\":1700000100,\"subscribe\":[\"chat.>\",\"news\"],\"publish\":[]}";
    EVP_PKEY *pks[] = {rsa_key, ec_key, ed_key};
    const char *algs[] = {"RS256", "ES256", "EdDSA"};
    for (int i = 0; i < 3; i++) {
        char *pem = pem_of(pks[i]);
        dx__jwt_keys *ks = NULL;
        char why[200];
        assert_int_equal(dx__jwt_keys_pem(pem, strlen(pem), &ks, why, sizeof why), 0);
        free(pem);
        const char *tok = mint(algs[i], NULL, pl);
        dx__jwt_claims *c = NULL;
        assert_int_equal(dx__jwt_verify(ks, NULL, tok, strlen(tok), NOW, &c), DX__JWT_OK);
        assert_string_equal(c->sub, "alice");
        assert_int_equal(c->sub_len, 5);
        assert_true(c->has_exp);
        assert_int_equal(c->exp, 1700000100);
        assert_true(c->has_subscribe);
        assert_int_equal(c->n_subscribe, 2);
        assert_string_equal(c->subscribe[0], "chat.>");
        assert_int_equal(c->subscribe_len[1], 4);
        assert_true(c->has_publish);
        assert_int_equal(c->n_publish, 0);
        dx__jwt_claims_free(c);
        /* every other algorithm against this key: refused for its alg */
        for (int j = 0; j < 3; j++)
            if (j != i)
                assert_int_equal(verify(ks, NULL, mint(algs[j], NULL, pl), NOW), DX__JWT_E_ALG);
        assert_int_equal(verify(ks, NULL, mint("HS256", NULL, pl), NOW), DX__JWT_E_ALG);
        /* the same alg with another key of the same type: a bad signature */
        EVP_PKEY *other = i == 0 ? EVP_RSA_gen(2048) : i == 1 ? EVP_EC_gen("P-256") : EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
        char header[64];
        snprintf(header, sizeof header, "{\"alg\":\"%s\"}", algs[i]);
        assert_int_equal(verify(ks, NULL, mint_raw(algs[i], other, NULL, 0, header, pl), NOW), DX__JWT_E_SIGNATURE);
        EVP_PKEY_free(other);
        dx__jwt_keys_free(ks);
    }
    /* HS256 with the secret; a wrong secret */
    dx__jwt_keys *ks = NULL;
    char why[200];
    assert_int_equal(dx__jwt_keys_secret(hs_secret, sizeof hs_secret, &ks, why, sizeof why), 0);
    assert_int_equal(verify(ks, NULL, mint("HS256", NULL, pl), NOW), DX__JWT_OK);
    assert_int_equal(verify(ks, NULL, mint("RS256", NULL, pl), NOW), DX__JWT_E_ALG);
    uint8_t other[32];
    memset(other, 7, sizeof other);
    assert_int_equal(verify(ks, NULL, mint_raw("HS256", NULL, other, sizeof other, "{\"alg\":\"HS256\"}", pl), NOW),
                     DX__JWT_E_SIGNATURE);
    dx__jwt_keys_free(ks);
    /* a secret shorter than the hash is refused at load */
    assert_int_equal(dx__jwt_keys_secret("short", 5, &ks, why, sizeof why), DX_EINVAL);
    assert_null(ks);
    assert_non_null(strstr(why, "at least 32"));
}

static void test_forgeries(void **state)
{
    (void)state;
    const char *pl = "{\"sub\":\"mallory\"}";
    char *pem = pem_of(rsa_key);
    dx__jwt_keys *ks = NULL;
    char why[200];
    assert_int_equal(dx__jwt_keys_pem(pem, strlen(pem), &ks, why, sizeof why), 0);
    /* alg none, with and without a signature part */
    char *t = mint_raw("none", NULL, NULL, 0, "{\"alg\":\"none\"}", pl);
    assert_int_equal(verify(ks, NULL, t, NOW), DX__JWT_E_MALFORMED); /* empty signature */
    char t2[4096];
    snprintf(t2, sizeof t2, "%sAAAA", t);
    assert_int_equal(verify(ks, NULL, t2, NOW), DX__JWT_E_ALG);
    assert_int_equal(verify(ks, NULL, mint_raw("none", NULL, NULL, 0, "{\"alg\":\"None\"}", pl), NOW),
                     DX__JWT_E_MALFORMED);
    /* HS256 keyed with the RSA public key's PEM (the classic confusion) */
    t = mint_raw("HS256", NULL, (const uint8_t *)pem, strlen(pem), "{\"alg\":\"HS256\"}", pl);
    assert_int_equal(verify(ks, NULL, t, NOW), DX__JWT_E_ALG);
    /* no alg, alg not a string, an unknown alg, crit */
    assert_int_equal(verify(ks, NULL, mint_raw("RS256", rsa_key, NULL, 0, "{\"typ\":\"JWT\"}", pl), NOW), DX__JWT_E_ALG);
    assert_int_equal(verify(ks, NULL, mint_raw("RS256", rsa_key, NULL, 0, "{\"alg\":256}", pl), NOW), DX__JWT_E_ALG);
    assert_int_equal(verify(ks, NULL, mint_raw("RS256", rsa_key, NULL, 0, "{\"alg\":\"RS512\"}", pl), NOW), DX__JWT_E_ALG);
    assert_int_equal(
        verify(ks, NULL, mint_raw("RS256", rsa_key, NULL, 0, "{\"alg\":\"RS256\",\"crit\":[\"exp\"]}", pl), NOW),
        DX__JWT_E_MALFORMED);
    /* duplicate members: in the header and in the payload */
    assert_int_equal(
        verify(ks, NULL, mint_raw("RS256", rsa_key, NULL, 0, "{\"alg\":\"RS256\",\"alg\":\"none\"}", pl), NOW),
        DX__JWT_E_MALFORMED);
    assert_int_equal(verify(ks, NULL,
                            mint_raw("RS256", rsa_key, NULL, 0, "{\"alg\":\"RS256\"}", "{\"sub\":\"a\",\"sub\":\"b\"}"),
                            NOW),
                     DX__JWT_E_MALFORMED);
    /* header or payload not an object */
    assert_int_equal(verify(ks, NULL, mint_raw("RS256", rsa_key, NULL, 0, "[\"RS256\"]", pl), NOW), DX__JWT_E_MALFORMED);
    assert_int_equal(verify(ks, NULL, mint_raw("RS256", rsa_key, NULL, 0, "{\"alg\":\"RS256\"}", "\"alice\""), NOW),
                     DX__JWT_E_MALFORMED);
    /* a good token, then every truncation and a few stray characters */
    const char *good = mint("RS256", NULL, pl);
    char tok[4096];
    snprintf(tok, sizeof tok, "%s", good);
    size_t len = strlen(tok);
    assert_int_equal(verify(ks, NULL, tok, NOW), DX__JWT_OK);
    for (size_t n = 0; n < len; n++) {
        dx__jwt_claims *c = NULL;
        assert_int_not_equal(dx__jwt_verify(ks, NULL, tok, n, NOW, &c), DX__JWT_OK);
        assert_null(c);
    }
    const char stray[] = {'=', '+', '/', ' ', '.', '\0', '\n'};
    for (size_t s = 0; s < sizeof stray; s++) {
        for (size_t at = 0; at < len; at += 37) {
            char bad[4096];
            memcpy(bad, tok, at);
            bad[at] = stray[s];
            memcpy(bad + at + 1, tok + at, len - at);
            dx__jwt_claims *c = NULL;
            assert_int_not_equal(dx__jwt_verify(ks, NULL, bad, len + 1, NOW, &c), DX__JWT_OK);
        }
    }
    char padded[4200];
    snprintf(padded, sizeof padded, "%s==", tok);
    assert_int_equal(verify(ks, NULL, padded, NOW), DX__JWT_E_MALFORMED);
    /* four parts */
    snprintf(padded, sizeof padded, "%s.e30", tok);
    assert_int_equal(verify(ks, NULL, padded, NOW), DX__JWT_E_MALFORMED);
    /* no key set at all */
    assert_int_equal(verify(NULL, NULL, tok, NOW), DX__JWT_E_NO_KEY);
    free(pem);
    dx__jwt_keys_free(ks);
}

static void test_size_bound(void **state)
{
    (void)state;
    dx__jwt_keys *ks = NULL;
    char why[200];
    assert_int_equal(dx__jwt_keys_secret(hs_secret, sizeof hs_secret, &ks, why, sizeof why), 0);
    /* grow the payload until the token is exactly the bound, then one past */
    char pl[8192];
    char *tok = NULL;
    size_t pad = 6000;
    for (;;) {
        snprintf(pl, sizeof pl, "{\"sub\":\"a\",\"x\":\"%*s\"}", (int)pad, "");
        tok = mint("HS256", NULL, pl);
        size_t l = strlen(tok);
        if (l >= DX__JWT_MAX_TOKEN)
            break;
        pad += (DX__JWT_MAX_TOKEN - l) * 3 / 4 > 1 ? (DX__JWT_MAX_TOKEN - l) * 3 / 4 : 1;
    }
    while (strlen(tok) > DX__JWT_MAX_TOKEN) {
        pad--;
        snprintf(pl, sizeof pl, "{\"sub\":\"a\",\"x\":\"%*s\"}", (int)pad, "");
        tok = mint("HS256", NULL, pl);
    }
    size_t l = strlen(tok);
    assert_true(l <= DX__JWT_MAX_TOKEN && l > DX__JWT_MAX_TOKEN - 4);
    assert_int_equal(verify(ks, NULL, tok, NOW), DX__JWT_OK);
    /* 10 KB of garbage, and one byte over the bound */
    char big[10240];
    memset(big, 'A', sizeof big);
    dx__jwt_claims *c = NULL;
    assert_int_equal(dx__jwt_verify(ks, NULL, big, sizeof big, NOW, &c), DX__JWT_E_TOO_LONG);
    assert_int_equal(dx__jwt_verify(ks, NULL, big, DX__JWT_MAX_TOKEN + 1, NOW, &c), DX__JWT_E_TOO_LONG);
    assert_int_equal(dx__jwt_verify(ks, NULL, big, DX__JWT_MAX_TOKEN, NOW, &c), DX__JWT_E_MALFORMED);
    dx__jwt_keys_free(ks);
}

static void test_time_claims(void **state)
{
    (void)state;
    dx__jwt_keys *ks = NULL;
    char why[200];
    assert_int_equal(dx__jwt_keys_secret(hs_secret, sizeof hs_secret, &ks, why, sizeof why), 0);
    dx__jwt_rules r = {.leeway_s = 30};
    char *t = mint("HS256", NULL, "{\"sub\":\"a\",\"exp\":1000}");
    char tok[1024];
    snprintf(tok, sizeof tok, "%s", t);
    assert_int_equal(verify(ks, NULL, tok, 999), DX__JWT_OK);
    assert_int_equal(verify(ks, NULL, tok, 1000), DX__JWT_E_EXPIRED);
    assert_int_equal(verify(ks, &r, tok, 1029), DX__JWT_OK);
    assert_int_equal(verify(ks, &r, tok, 1030), DX__JWT_E_EXPIRED);
    snprintf(tok, sizeof tok, "%s", mint("HS256", NULL, "{\"sub\":\"a\",\"nbf\":1000}"));
    assert_int_equal(verify(ks, NULL, tok, 999), DX__JWT_E_NOT_YET);
    assert_int_equal(verify(ks, NULL, tok, 1000), DX__JWT_OK);
    assert_int_equal(verify(ks, &r, tok, 970), DX__JWT_OK);
    assert_int_equal(verify(ks, &r, tok, 969), DX__JWT_E_NOT_YET);
    /* fractional NumericDate floors; types are checked */
    assert_int_equal(verify(ks, NULL, mint("HS256", NULL, "{\"sub\":\"a\",\"exp\":1000.9}"), 999), DX__JWT_OK);
    assert_int_equal(verify(ks, NULL, mint("HS256", NULL, "{\"sub\":\"a\",\"exp\":1000.9}"), 1000), DX__JWT_E_EXPIRED);
    assert_int_equal(verify(ks, NULL, mint("HS256", NULL, "{\"sub\":\"a\",\"exp\":\"2000\"}"), 999), DX__JWT_E_CLAIM);
    assert_int_equal(verify(ks, NULL, mint("HS256", NULL, "{\"sub\":\"a\",\"nbf\":null}"), 999), DX__JWT_E_CLAIM);
    assert_int_equal(verify(ks, NULL, mint("HS256", NULL, "{\"sub\":\"a\",\"iat\":true}"), 999), DX__JWT_E_CLAIM);
    assert_int_equal(verify(ks, NULL, mint("HS256", NULL, "{\"sub\":\"a\",\"exp\":1e300}"), 999), DX__JWT_E_CLAIM);
    /* extreme values do not overflow with a leeway */
    assert_int_equal(verify(ks, &r, mint("HS256", NULL, "{\"sub\":\"a\",\"exp\":9223372036854775807}"), NOW),
                     DX__JWT_OK);
    assert_int_equal(verify(ks, &r, mint("HS256", NULL, "{\"sub\":\"a\",\"nbf\":-9223372036854775807}"), NOW),
                     DX__JWT_OK);
    dx__jwt_keys_free(ks);
}

static void test_aud_iss_sub(void **state)
{
    (void)state;
    dx__jwt_keys *ks = NULL;
    char why[200];
    assert_int_equal(dx__jwt_keys_secret(hs_secret, sizeof hs_secret, &ks, why, sizeof why), 0);
    dx__jwt_rules r = {.audience = "duplex", .issuer = "https://issuer.example"};
    const char *iss = "\"iss\":\"https://issuer.example\"";
    char pl[512];
    snprintf(pl, sizeof pl, "{\"sub\":\"a\",\"aud\":\"duplex\",%s}", iss);
    assert_int_equal(verify(ks, &r, mint("HS256", NULL, pl), NOW), DX__JWT_OK);
    snprintf(pl, sizeof pl, "{\"sub\":\"a\",\"aud\":[\"x\",\"duplex\"],%s}", iss);
    assert_int_equal(verify(ks, &r, mint("HS256", NULL, pl), NOW), DX__JWT_OK);
    snprintf(pl, sizeof pl, "{\"sub\":\"a\",\"aud\":[\"x\",\"duplex2\"],%s}", iss);
    assert_int_equal(verify(ks, &r, mint("HS256", NULL, pl), NOW), DX__JWT_E_AUDIENCE);
    snprintf(pl, sizeof pl, "{\"sub\":\"a\",%s}", iss);
    assert_int_equal(verify(ks, &r, mint("HS256", NULL, pl), NOW), DX__JWT_E_AUDIENCE);
    snprintf(pl, sizeof pl, "{\"sub\":\"a\",\"aud\":7,%s}", iss);
    assert_int_equal(verify(ks, &r, mint("HS256", NULL, pl), NOW), DX__JWT_E_CLAIM);
    assert_int_equal(verify(ks, &r, mint("HS256", NULL, "{\"sub\":\"a\",\"aud\":\"duplex\"}"), NOW), DX__JWT_E_ISSUER);
    assert_int_equal(verify(ks, &r, mint("HS256", NULL, "{\"sub\":\"a\",\"aud\":\"duplex\",\"iss\":\"https://other\"}"), NOW),
                     DX__JWT_E_ISSUER);
    /* not configured: not checked */
    assert_int_equal(verify(ks, NULL, mint("HS256", NULL, "{\"sub\":\"a\",\"aud\":\"other\"}"), NOW), DX__JWT_OK);
    /* sub: present, a non-empty string, bounded */
    assert_int_equal(verify(ks, NULL, mint("HS256", NULL, "{\"name\":\"a\"}"), NOW), DX__JWT_E_CLAIM);
    assert_int_equal(verify(ks, NULL, mint("HS256", NULL, "{\"sub\":\"\"}"), NOW), DX__JWT_E_CLAIM);
    assert_int_equal(verify(ks, NULL, mint("HS256", NULL, "{\"sub\":42}"), NOW), DX__JWT_E_CLAIM);
    snprintf(pl, sizeof pl, "{\"sub\":\"%0*d\"}", DX__JWT_MAX_SUB, 0);
    assert_int_equal(verify(ks, NULL, mint("HS256", NULL, pl), NOW), DX__JWT_OK);
    snprintf(pl, sizeof pl, "{\"sub\":\"%0*d\"}", DX__JWT_MAX_SUB + 1, 0);
    assert_int_equal(verify(ks, NULL, mint("HS256", NULL, pl), NOW), DX__JWT_E_CLAIM);
    /* subscribe/publish: arrays of strings */
    assert_int_equal(verify(ks, NULL, mint("HS256", NULL, "{\"sub\":\"a\",\"subscribe\":\"chat.>\"}"), NOW),
                     DX__JWT_E_CLAIM);
    assert_int_equal(verify(ks, NULL, mint("HS256", NULL, "{\"sub\":\"a\",\"publish\":[\"a\",1]}"), NOW),
                     DX__JWT_E_CLAIM);
    dx__jwt_claims *c = NULL;
    const char *t = mint("HS256", NULL, "{\"sub\":\"a\"}");
    assert_int_equal(dx__jwt_verify(ks, NULL, t, strlen(t), NOW, &c), DX__JWT_OK);
    assert_false(c->has_subscribe);
    assert_false(c->has_publish);
    assert_false(c->has_exp);
    dx__jwt_claims_free(c);
    dx__jwt_keys_free(ks);
}

static void test_jwks(void **state)
{
    (void)state;
    char rsa[2048], ec[512], ed[256], json[8192];
    jwk_members(rsa_key, rsa, sizeof rsa);
    jwk_members(ec_key, ec, sizeof ec);
    jwk_members(ed_key, ed, sizeof ed);
    char k[64];
    b64url(hs_secret, sizeof hs_secret, k);
    snprintf(json, sizeof json,
             "{\"keys\":[{%s,\"kid\":\"r1\",\"alg\":\"RS256\",\"use\":\"sig\"},{%s,\"kid\":\"e1\"},{%s,\"kid\":\"d1\"},"
             "{\"kty\":\"oct\",\"k\":\"%s\",\"kid\":\"h1\"},{\"kty\":\"EC\",\"use\":\"enc\",\"kid\":\"x\"},"
             "{\"kty\":\"future\",\"kid\":\"f\"}]}",
             rsa, ec, ed, k);
    dx__jwt_keys *ks = load_jwks(json);
    assert_int_equal(dx__jwt_keys_count(ks), 4);
    const char *pl = "{\"sub\":\"a\"}";
    assert_int_equal(verify(ks, NULL, mint("RS256", "r1", pl), NOW), DX__JWT_OK);
    assert_int_equal(verify(ks, NULL, mint("ES256", "e1", pl), NOW), DX__JWT_OK);
    assert_int_equal(verify(ks, NULL, mint("EdDSA", "d1", pl), NOW), DX__JWT_OK);
    assert_int_equal(verify(ks, NULL, mint("HS256", "h1", pl), NOW), DX__JWT_OK);
    /* a kid not in the set, no kid with several keys, alg of another key */
    assert_int_equal(verify(ks, NULL, mint("RS256", "r2", pl), NOW), DX__JWT_E_NO_KEY);
    assert_int_equal(verify(ks, NULL, mint("RS256", NULL, pl), NOW), DX__JWT_E_NO_KEY);
    assert_int_equal(verify(ks, NULL, mint("ES256", "r1", pl), NOW), DX__JWT_E_ALG);
    assert_int_equal(verify(ks, NULL, mint("HS256", "e1", pl), NOW), DX__JWT_E_ALG);
    assert_int_equal(verify(ks, NULL, mint_raw("RS256", rsa_key, NULL, 0, "{\"alg\":\"RS256\",\"kid\":5}", pl), NOW),
                     DX__JWT_E_MALFORMED);
    dx__jwt_keys_free(ks);

    /* bad sets refused with a reason */
    assert_int_equal(refuse_jwks("not json", "not JSON"), DX_EINVAL);
    assert_int_equal(refuse_jwks("{\"keys\":{}}", "keys"), DX_EINVAL);
    assert_int_equal(refuse_jwks("{\"keys\":[]}", "no usable"), DX_EINVAL);
    assert_int_equal(refuse_jwks("{\"keys\":[{\"kty\":\"EC\",\"use\":\"enc\"}]}", "no usable"), DX_EINVAL);
    snprintf(json, sizeof json, "{\"keys\":[{%s,\"kid\":\"a\"},{%s,\"kid\":\"a\"}]}", ec, ed);
    assert_int_equal(refuse_jwks(json, "kid used twice"), DX_EINVAL);
    snprintf(json, sizeof json, "{\"keys\":[{%s,\"alg\":\"RS256\"}]}", ec);
    assert_int_equal(refuse_jwks(json, "verifies ES256"), DX_EINVAL);
    snprintf(json, sizeof json, "{\"keys\":[{%s,\"alg\":\"HS256\"}]}", rsa);
    assert_int_equal(refuse_jwks(json, "verifies RS256"), DX_EINVAL);
    assert_int_equal(refuse_jwks("{\"keys\":[{\"kty\":\"oct\",\"k\":\"c2hvcnQ\"}]}", "at least 32"), DX_EINVAL);
    assert_int_equal(refuse_jwks("{\"keys\":[{\"kty\":\"OKP\",\"crv\":\"X25519\",\"x\":\"AAAA\"}]}", "Ed25519"),
                     DX_EINVAL);
    assert_int_equal(refuse_jwks("{\"keys\":[{\"kty\":\"RSA\",\"n\":\"AQAB\"}]}", "n and e"), DX_EINVAL);
    assert_int_equal(refuse_jwks("{\"keys\":[{\"kty\":\"RSA\",\"n\":\"AQ==\",\"e\":\"AQAB\"}]}", "n and e"), DX_EINVAL);
    /* RSA with e = 1 (every message its own signature) */
    {
        char n[700];
        bn_param_b64(rsa_key, OSSL_PKEY_PARAM_RSA_N, n);
        snprintf(json, sizeof json, "{\"keys\":[{\"kty\":\"RSA\",\"n\":\"%s\",\"e\":\"AQ\"}]}", n);
        assert_int_equal(refuse_jwks(json, "public key check"), DX_EINVAL);
    }
    jwk_members(rsa1024_key, rsa, sizeof rsa);
    snprintf(json, sizeof json, "{\"keys\":[{%s}]}", rsa);
    assert_int_equal(refuse_jwks(json, "2048"), DX_EINVAL);
    jwk_members(ec_key, ec, sizeof ec);
    /* an EC point off the curve: flip y */
    char *y = strstr(ec, "\"y\":\"") + 5;
    y[3] = y[3] == 'A' ? 'B' : 'A';
    snprintf(json, sizeof json, "{\"keys\":[{%s}]}", ec);
    assert_int_equal(refuse_jwks(json, "not a point"), DX_EINVAL);
    snprintf(json, sizeof json, "{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-384\",\"x\":\"AA\",\"y\":\"AA\"}]}");
    assert_int_equal(refuse_jwks(json, "P-256"), DX_EINVAL);
    /* too many keys */
    char *many = malloc(DX__JWT_MAX_KEYS * 100 + 100);
    strcpy(many, "{\"keys\":[");
    for (int i = 0; i <= DX__JWT_MAX_KEYS; i++)
        strcat(many, i ? ",{\"kty\":\"x\"}" : "{\"kty\":\"x\"}");
    strcat(many, "]}");
    assert_int_equal(refuse_jwks(many, "at most"), DX_EINVAL);
    free(many);
}

static void test_pem_and_files(void **state)
{
    (void)state;
    char why[300];
    dx__jwt_keys *ks = NULL;
    /* unsupported PEM keys */
    char *pem = pem_of(rsa1024_key);
    assert_int_equal(dx__jwt_keys_pem(pem, strlen(pem), &ks, why, sizeof why), DX_EINVAL);
    assert_non_null(strstr(why, "2048"));
    free(pem);
    pem = pem_of(ec384_key);
    assert_int_equal(dx__jwt_keys_pem(pem, strlen(pem), &ks, why, sizeof why), DX_EINVAL);
    assert_non_null(strstr(why, "P-256"));
    free(pem);
    assert_int_equal(dx__jwt_keys_pem("garbage", 7, &ks, why, sizeof why), DX_EINVAL);
    assert_null(ks);
    /* files */
    char path[] = "/tmp/dx_test_jwt_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    pem = pem_of(ec_key);
    assert_int_equal(write(fd, pem, strlen(pem)), (ssize_t)strlen(pem));
    close(fd);
    free(pem);
    dx__jwt_key_src src = {.pem_file = path};
    assert_int_equal(dx__jwt_keys_load(&src, &ks, why, sizeof why), 0);
    assert_int_equal(verify(ks, NULL, mint("ES256", NULL, "{\"sub\":\"a\"}"), NOW), DX__JWT_OK);
    dx__jwt_keys_free(ks);
    /* the same file read as a JWKS: refused, naming the file */
    src = (dx__jwt_key_src){.jwks_file = path};
    assert_int_equal(dx__jwt_keys_load(&src, &ks, why, sizeof why), DX_EINVAL);
    assert_non_null(strstr(why, path));
    unlink(path);
    assert_int_equal(dx__jwt_keys_load(&src, &ks, why, sizeof why), DX_EINVAL);
    assert_non_null(strstr(why, "No such file"));
    /* two sources; none */
    src = (dx__jwt_key_src){.secret = "0123456789abcdef0123456789abcdef", .jwks_file = path};
    assert_int_equal(dx__jwt_keys_load(&src, &ks, why, sizeof why), DX_EINVAL);
    src = (dx__jwt_key_src){0};
    assert_int_equal(dx__jwt_keys_load(&src, &ks, why, sizeof why), 0);
    assert_null(ks);
    /* a secret: the reason never quotes it */
    src = (dx__jwt_key_src){.secret = "hunter2"};
    assert_int_equal(dx__jwt_keys_load(&src, &ks, why, sizeof why), DX_EINVAL);
    assert_null(strstr(why, "hunter2"));
    assert_string_equal(dx__jwt_reason(DX__JWT_E_EXPIRED), "expired");
    assert_string_equal(dx__jwt_reason(-1), "unknown");
}

int main(void)
{
    dx_test_filter_from_env();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_b64url),
        cmocka_unit_test(test_rfc7515_hs256),
        cmocka_unit_test(test_rfc8037_ed25519),
        cmocka_unit_test(test_every_alg),
        cmocka_unit_test(test_forgeries),
        cmocka_unit_test(test_size_bound),
        cmocka_unit_test(test_time_claims),
        cmocka_unit_test(test_aud_iss_sub),
        cmocka_unit_test(test_jwks),
        cmocka_unit_test(test_pem_and_files),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
