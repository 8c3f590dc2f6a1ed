/*
 * src/gateway/jwt.h: JSON Web Token verification (RFC 7519, JWS compact
 * serialization of RFC 7515) for the gateway's authentication.
 *
 * Pure: dx__jwt_verify reads no clock (the caller passes `now`), does no
 * I/O and logs nothing. Only dx__jwt_keys_load reads files (the key
 * sources named in the configuration). A key set is immutable once built
 * and may be shared by every worker thread (OpenSSL 3 EVP_PKEYs are safe
 * for concurrent verification); it is freed by its owner after the last
 * user is gone (the gateway's policy snapshot holds it).
 *
 * Algorithms (RFC 7518 §3, RFC 8037): HS256 (an `oct` key or the shared
 * secret), RS256 (RSA ≥ 2048 bits), ES256 (EC P-256; the JOSE signature is
 * r||s, converted to DER for OpenSSL), EdDSA (Ed25519). A token's `alg`
 * must match its key's type (and the JWK's own `alg` when it has one): no
 * `none`, no HMAC with a public key, no RS256 with an EC key.
 */
#ifndef DX_GATEWAY_JWT_H
#define DX_GATEWAY_JWT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DX__JWT_MAX_TOKEN 8192 /* bytes of a compact token; longer: DX__JWT_E_TOO_LONG */
#define DX__JWT_MAX_KEYS 64    /* keys in one JWKS */
#define DX__JWT_MIN_SECRET 32  /* bytes of an HS256 secret (RFC 7518 §3.2: at least the hash size) */
#define DX__JWT_MAX_SUB 128    /* bytes of `sub` (it names a user: topic) */

/* Why a token was refused. Each has a short stable name (dx__jwt_reason)
 * used as the `reason` label of duplex_auth_refused_total and in log lines. */
enum dx__jwt_err {
    DX__JWT_OK = 0,
    DX__JWT_E_TOO_LONG,   /* over DX__JWT_MAX_TOKEN */
    DX__JWT_E_MALFORMED,  /* not three base64url parts, bad base64url, not JSON objects, crit */
    DX__JWT_E_ALG,        /* alg missing, unknown, `none`, or not the key's */
    DX__JWT_E_NO_KEY,     /* no key with that kid (or no kid and several keys) */
    DX__JWT_E_SIGNATURE,  /* the signature does not verify */
    DX__JWT_E_EXPIRED,    /* now ≥ exp + leeway */
    DX__JWT_E_NOT_YET,    /* now < nbf - leeway */
    DX__JWT_E_AUDIENCE,   /* aud configured and not (in) the token's */
    DX__JWT_E_ISSUER,     /* iss configured and not the token's */
    DX__JWT_E_CLAIM,      /* a registered or duplex claim of the wrong type, or sub missing/too long */
    DX__JWT_E_NOMEM,
    DX__JWT_NERR
};

/* Stable short name of an error ("expired", "signature", ...). */
const char *dx__jwt_reason(int err);

typedef struct dx__jwt_keys dx__jwt_keys;

/* Key sources (at most one of them set; see dx_gateway_auth). */
typedef struct dx__jwt_key_src {
    const char *secret;     /* HS256 secret, NUL-terminated, ≥ DX__JWT_MIN_SECRET bytes */
    const char *pem_file;   /* PEM public key: RSA, EC P-256 or Ed25519 */
    const char *jwks_file;  /* RFC 7517 JWK Set */
} dx__jwt_key_src;

/* Builds a key set from `src`, reading its file. 0 and *out (NULL when
 * src names no key: JWT auth off), or DX_EINVAL / DX_ENOMEM with a
 * one-line reason in why (never the secret). */
int dx__jwt_keys_load(const dx__jwt_key_src *src, dx__jwt_keys **out, char *why, size_t why_len);

/* The same from memory (tests, fuzzing): a secret's bytes, a PEM, a JWKS. */
int dx__jwt_keys_secret(const void *secret, size_t len, dx__jwt_keys **out, char *why, size_t why_len);
int dx__jwt_keys_pem(const char *pem, size_t len, dx__jwt_keys **out, char *why, size_t why_len);
int dx__jwt_keys_jwks(const char *json, size_t len, dx__jwt_keys **out, char *why, size_t why_len);

size_t dx__jwt_keys_count(const dx__jwt_keys *ks);
void dx__jwt_keys_free(dx__jwt_keys *ks);

/* What is checked besides the signature. */
typedef struct dx__jwt_rules {
    const char *audience;   /* NULL: aud not checked; else aud must be it or an array holding it */
    const char *issuer;     /* NULL: iss not checked */
    int64_t leeway_s;       /* ≥ 0 */
} dx__jwt_rules;

/* A verified token's claims, one allocation (free with dx__jwt_claims_free).
 * Strings are NUL-terminated. `subscribe`/`publish`: has_* false when the
 * claim is absent (no restriction); present, they list the patterns allowed
 * (possibly none). The patterns are not checked here (the gateway's topic
 * syntax is the caller's). */
typedef struct dx__jwt_claims {
    char *sub;
    size_t sub_len;
    bool has_exp;
    int64_t exp;            /* seconds since the epoch (floored) */
    bool has_subscribe, has_publish;
    size_t n_subscribe, n_publish;
    char **subscribe;
    char **publish;
    size_t *subscribe_len;
    size_t *publish_len;
} dx__jwt_claims;

/* Verifies the compact token tok[0..len) with `ks` at time `now` (seconds
 * since the epoch) under `r`. DX__JWT_OK and *out (the caller frees it), or
 * a DX__JWT_E_* (nothing allocated). ks NULL: DX__JWT_E_NO_KEY. */
int dx__jwt_verify(const dx__jwt_keys *ks, const dx__jwt_rules *r, const char *tok, size_t len, int64_t now,
                   dx__jwt_claims **out);

void dx__jwt_claims_free(dx__jwt_claims *c);

/* Strict base64url (RFC 7515 §2, RFC 4648 §5): no padding, no other
 * character, unused trailing bits zero. Returns the decoded length, or -1;
 * out must hold (len * 3) / 4 + 1 bytes. */
long dx__jwt_b64url_decode(const char *s, size_t len, uint8_t *out);

#endif
