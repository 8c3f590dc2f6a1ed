"""
tests/gateway/test_auth.py: authentication of the gateway (GATEWAY.md
"Authentication and policy", docs/gateway.md "Authentication") against a
real `duplex serve`, with tokens minted by PyJWT (Debian python3-jwt) and
keys made at test time with `cryptography`:
  - every algorithm (HS256 secret, RS256 / ES256 / EdDSA PEM keys, a JWKS
    with kids) accepted with its key; forgeries refused 401 with
    WWW-Authenticate: wrong key, alg none, HS256 keyed with the RSA public
    key, expired, not yet valid, wrong audience, wrong issuer, truncated,
    10 KB of garbage, bad base64url, a kid not in the JWKS;
  - each source: Authorization header, ?token=, cookie, subprotocol
    token.<jwt> (the selected subprotocol is never token.*);
  - user:<sub> subscribed at connect (JSON, raw, SSE), another user's
    refused (4403 / 403); subscribe/publish claims enforced;
  - refresh before expiry keeps the connection; none: close 4001 (JSON,
    raw), SSE stream ended; refresh for another sub or invalid: err 4401;
  - anonymous off: 403; anonymous publish off by default with JWT;
  - named API keys from a file, counted per name in /metrics;
  - presence lists authenticated users; /api/disconnect?user=U closes
    U's connections with 4000;
  - no token nor secret ever appears in the server's log.
"""
import asyncio
import base64
import hashlib
import hmac
import json
import os
import random
import tempfile
import time

import jwt  # Debian python3-jwt (PyJWT)
import websockets
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gwtest import (KEY, SSE, Fail, Serve, await_for, check, expect_closed, expect_eq, http, main, metrics,
                    publish, q, recv_timeout, say, topic)

SECRET = "test-secret-%s" % os.urandom(16).hex()  # ≥ 32 bytes
TOKENS = []  # every token sent, to grep the logs for
_tmp = tempfile.mkdtemp(prefix="dx-auth-")

RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC = ec.generate_private_key(ec.SECP256R1())
ED = ed25519.Ed25519PrivateKey.generate()
RSA_OTHER = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem_pub(k):
    return k.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def write(name, data):
    p = os.path.join(_tmp, name)
    with open(p, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())
    return p


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def mint(sub="alice", alg="HS256", key=None, kid=None, exp_in=600, **claims):
    now = int(time.time())
    body = {"sub": sub, "iat": now}
    if exp_in is not None:
        body["exp"] = now + exp_in
    body.update(claims)
    if body.get("sub") is None:
        del body["sub"]
    headers = {"kid": kid} if kid else None
    if key is None:
        key = {"HS256": SECRET, "RS256": RSA, "ES256": EC, "EdDSA": ED}[alg]
    t = jwt.encode(body, key, algorithm=alg, headers=headers)
    TOKENS.append(t)
    return t


def mint_hmac_raw(payload, key_bytes, header=None):
    """HS256 by hand (PyJWT refuses a PEM as an HMAC key, as it should)."""
    h = b64u(json.dumps(header or {"alg": "HS256", "typ": "JWT"}).encode())
    p = b64u(json.dumps(payload).encode())
    sig = hmac.new(key_bytes, (h + "." + p).encode(), hashlib.sha256).digest()
    t = h + "." + p + "." + b64u(sig)
    TOKENS.append(t)
    return t


def ws_status_error(e):
    return getattr(e, "status_code", None), getattr(e, "headers", None)


async def try_connect(srv, path="/ws", token=None, how="header", subprotocols=None, extra_headers=None):
    """Opens a WebSocket with the token placed as `how`; returns (ws, None)
    or (None, (status, headers))."""
    headers = dict(extra_headers or {})
    protos = list(subprotocols or [])
    if token is not None:
        if how == "header":
            headers["Authorization"] = "Bearer " + token
        elif how == "query":
            path += ("&" if "?" in path else "?") + "token=" + q(token)
        elif how == "cookie":
            headers["Cookie"] = "other=1; dxtok=" + token + "; x=y"
        elif how == "subprotocol":
            protos.append("token." + token)
    try:
        ws = await websockets.connect(srv.url(path), subprotocols=protos or None, extra_headers=headers,
                                      open_timeout=10, ping_interval=None, close_timeout=2, max_size=None)
    except websockets.exceptions.InvalidStatusCode as e:
        return None, ws_status_error(e)
    return ws, None


async def expect_refused(srv, status, what, **kw):
    ws, err = await try_connect(srv, **kw)
    if ws is not None:
        await ws.close()
        raise Fail("%s: expected HTTP %d, the handshake succeeded" % (what, status))
    expect_eq(err[0], status, what + ": status")
    if status == 401:
        wa = err[1].get("WWW-Authenticate", "") if err[1] is not None else ""
        check("Bearer" in wa and "invalid_token" in wa, "%s: 401 without WWW-Authenticate Bearer "
              "error=\"invalid_token\" (got %r)" % (what, wa))


async def jopen(srv, token, how="header", path="/ws"):
    ws, err = await try_connect(srv, path=path, token=token, how=how, subprotocols=["duplex.v1"])
    check(ws is not None, "JSON dialect with a good token (%s): refused %r" % (how, err and err[0]))
    expect_eq(ws.subprotocol, "duplex.v1", "selected subprotocol (%s)" % how)
    return ws


async def jreq(ws, obj, what):
    await ws.send(json.dumps(obj))
    while True:
        f = json.loads(await recv_timeout(ws, 10, what))
        if f.get("op") in ("ack", "err"):
            return f


async def jmsg(ws, what):
    while True:
        f = json.loads(await recv_timeout(ws, 10, what))
        if f.get("op") == "msg":
            return f


async def user_topic_works(srv, ws, sub, dialect="json"):
    """A publish on user:<sub> reaches ws (subscribed at connect)."""
    body = "hello-%s" % os.urandom(4).hex()
    publish(srv, "user:" + sub, body)
    if dialect == "json":
        m = await jmsg(ws, "the message on user:%s" % sub)
        expect_eq((m.get("topic"), m.get("data")), ("user:" + sub, body), "message on the user topic")
    else:
        expect_eq(await recv_timeout(ws, 10, "raw message on user:%s" % sub), body, "raw message on the user topic")


# ------------------------------------------------------------------ servers

_servers = {}


def server(name):
    if name in _servers:
        return _servers[name]
    if name == "hs":
        # --max-head 32K: a 10 KB token reaches authentication (else 431)
        # two workers: user topics, presence and /api/disconnect cross them
        s = Serve("--jwt-secret", SECRET, "--jwt-leeway", "0", "--token-cookie", "dxtok", "--anonymous", "on",
                  "--max-head", "32K", "--jwt-audience", "duplex", "--jwt-issuer", "https://issuer.test",
                  workers=2)
    elif name == "closed":
        s = Serve("--jwt-secret", SECRET, "--jwt-leeway", "0")  # anonymous off by default
    elif name in ("rs", "es", "ed"):
        k = {"rs": RSA, "es": EC, "ed": ED}[name]
        s = Serve("--jwt-key", write(name + ".pem", pem_pub(k)), "--jwt-leeway", "0")
    elif name == "jwks":
        keys = []
        for kid, k, algo in (("r1", RSA, jwt.algorithms.RSAAlgorithm), ("e1", EC, jwt.algorithms.ECAlgorithm),
                             ("d1", ED, jwt.algorithms.OKPAlgorithm)):
            j = json.loads(algo.to_jwk(k.public_key()))
            if j.get("kty") == "EC":
                # RFC 7518 §6.2.1.2: x and y are the full 32 bytes; this
                # pyjwt drops leading zero bytes (1 key in ~64), which the
                # server rightly refuses: the coordinates written in full.
                n = k.public_key().public_numbers()
                j["x"] = b64u(n.x.to_bytes(32, "big"))
                j["y"] = b64u(n.y.to_bytes(32, "big"))
            j["kid"] = kid
            keys.append(j)
        h = json.loads(jwt.algorithms.HMACAlgorithm.to_jwk(SECRET.encode()))
        h["kid"] = "h1"
        keys.append(h)
        s = Serve("--jwks", write("keys.jwks", json.dumps({"keys": keys})), "--jwt-leeway", "0")
    elif name == "peruser":
        s = Serve("--jwt-secret", SECRET, "--jwt-leeway", "0", "--conns-per-user", "3", workers=2)
    elif name == "apikeys":
        f = write("api.keys", "# name key\nci ci-key-%s\n\nbackend backend-key-%s\n" % (SECRET[-8:], SECRET[-8:]))
        s = Serve("--api-keys-file", f, workers=2)
    else:
        raise Fail("no server " + name)
    _servers[name] = s
    return s


def aud_iss():
    return {"aud": "duplex", "iss": "https://issuer.test"}


# ------------------------------------------------------------------ cases


async def test_every_algorithm():
    for name, alg in (("rs", "RS256"), ("es", "ES256"), ("ed", "EdDSA")):
        s = server(name)
        ws = await jopen(s, mint("alice", alg))
        await user_topic_works(s, ws, "alice")
        await ws.close()
        # the other algorithms, and the same one with another key
        for other in ("RS256", "ES256", "EdDSA", "HS256"):
            if other != alg:
                await expect_refused(s, 401, "%s server, %s token" % (alg, other), token=mint("alice", other))
        wrong = {"RS256": RSA_OTHER, "ES256": ec.generate_private_key(ec.SECP256R1()),
                 "EdDSA": ed25519.Ed25519PrivateKey.generate()}[alg]
        await expect_refused(s, 401, "%s signed with another key" % alg, token=mint("alice", alg, key=wrong))
    s = server("hs")
    ws = await jopen(s, mint("alice", **aud_iss()))
    await user_topic_works(s, ws, "alice")
    await ws.close()
    await expect_refused(s, 401, "HS256 with another secret",
                         token=mint("alice", key="another-secret-of-32-bytes-or-more!", **aud_iss()))


async def test_jwks_kids():
    s = server("jwks")
    for kid, alg in (("r1", "RS256"), ("e1", "ES256"), ("d1", "EdDSA"), ("h1", "HS256")):
        ws = await jopen(s, mint("k-" + kid, alg, kid=kid))
        await user_topic_works(s, ws, "k-" + kid)
        await ws.close()
    await expect_refused(s, 401, "a kid not in the JWKS", token=mint("alice", "RS256", kid="nope"))
    await expect_refused(s, 401, "no kid with several keys", token=mint("alice", "RS256"))
    await expect_refused(s, 401, "ES256 token naming the RSA key", token=mint("alice", "ES256", kid="r1"))


async def test_forgeries_refused():
    s = server("hs")
    good = mint("alice", **aud_iss())
    h, p, sig = good.split(".")
    none_tok = b64u(b'{"alg":"none","typ":"JWT"}') + "." + p + "."
    TOKENS.append(none_tok)
    cases = [
        ("alg none", none_tok),
        ("alg none with a signature", none_tok + "AAAA"),
        ("expired", mint("alice", exp_in=-5, **aud_iss())),
        ("not yet valid", mint("alice", nbf=int(time.time()) + 300, **aud_iss())),
        ("wrong audience", mint("alice", aud="other", iss="https://issuer.test")),
        ("no audience", mint("alice", iss="https://issuer.test")),
        ("wrong issuer", mint("alice", aud="duplex", iss="https://evil.test")),
        ("truncated", good[:-10]),
        ("two parts", h + "." + p),
        ("10 KB of garbage", "A" * 10240),
        ("bad base64url (padding)", good + "=="),
        ("bad base64url (standard alphabet)", h + "." + p + "." + sig.replace("-", "+").replace("_", "/") + "+/"),
        ("exp not a number", mint("alice", exp_in=None, exp="tomorrow", **aud_iss())),
        ("no sub", mint(None, **aud_iss())),
        ("sub not usable in a topic", mint("al ice", **aud_iss())),
    ]
    for what, tok in cases:
        for how in ("header", "query"):
            await expect_refused(s, 401, "%s (%s)" % (what, how), token=tok, how=how)
    # HS256 keyed with the RSA public key's PEM against an RS256 server
    rs = server("rs")
    forged = mint_hmac_raw({"sub": "mallory", "exp": int(time.time()) + 600}, pem_pub(RSA))
    await expect_refused(rs, 401, "HS256 signed with the RSA public key as secret", token=forged)
    # a refused token never falls back to anonymous, even where anonymous is on
    ms = metrics(s)
    got = {dict(l).get("reason"): v for (n, l), v in ms.items() if n == "duplex_auth_refused_total"}
    for reason in ("expired", "not_yet_valid", "audience", "issuer", "malformed", "too_long", "alg", "claim"):
        check(got.get(reason, 0) >= 1, "duplex_auth_refused_total{reason=%r} not counted: %r" % (reason, got))


async def test_token_sources():
    s = server("hs")
    for how in ("header", "query", "cookie", "subprotocol"):
        ws = await jopen(s, mint("src-" + how, **aud_iss()), how=how)
        await user_topic_works(s, ws, "src-" + how)
        await ws.close()
        # raw dialect: no subprotocol selected, token.* never echoed
        ws, err = await try_connect(s, path="/ws", token=mint("raw-" + how, **aud_iss()), how=how)
        check(ws is not None, "raw dialect, token from %s: refused %r" % (how, err))
        expect_eq(ws.subprotocol, None, "raw dialect with the token as %s: selected subprotocol" % how)
        await user_topic_works(s, ws, "raw-" + how, dialect="raw")
        await ws.close()
    # the subprotocol offer lists the token first: still duplex.v1
    tok = mint("order", **aud_iss())
    ws = await websockets.connect(s.url("/ws"), subprotocols=["token." + tok, "duplex.v1"], open_timeout=10,
                                  ping_interval=None, close_timeout=2)
    expect_eq(ws.subprotocol, "duplex.v1", "token.<jwt> offered before duplex.v1")
    await ws.close()
    # an empty token is refused, not anonymous
    await expect_refused(s, 401, "empty Bearer", token="", how="header")


async def test_user_topics_and_claims():
    s = server("hs")
    tok = mint("carol", subscribe=["chat.>", "news"], publish=["chat.room1"], **aud_iss())
    ws = await jopen(s, tok)
    r = await jreq(ws, {"op": "sub", "id": 1, "topic": "user:dave"}, "sub user:dave")
    expect_eq((r["op"], r.get("code")), ("err", 4403), "another user's topic")
    r = await jreq(ws, {"op": "sub", "id": 2, "topic": "user:carol"}, "sub own user topic")
    expect_eq(r["op"], "ack", "own user topic (already subscribed: acked again)")
    r = await jreq(ws, {"op": "sub", "id": 3, "topic": "chat.room9"}, "sub chat.room9")
    expect_eq(r["op"], "ack", "subscribe within the claim")
    r = await jreq(ws, {"op": "sub", "id": 4, "topic": "chat.*"}, "sub chat.*")
    expect_eq(r["op"], "ack", "a pattern within the claim")
    r = await jreq(ws, {"op": "sub", "id": 5, "topic": "prices.eur"}, "sub prices.eur")
    expect_eq((r["op"], r.get("code")), ("err", 4403), "subscribe outside the claim")
    r = await jreq(ws, {"op": "sub", "id": 6, "topic": ">"}, "sub >")
    expect_eq((r["op"], r.get("code")), ("err", 4403), "a wider pattern than the claim")
    r = await jreq(ws, {"op": "presence", "id": 7, "topic": "prices.eur"}, "presence prices.eur")
    expect_eq((r["op"], r.get("code")), ("err", 4403), "presence outside the subscribe claim")
    r = await jreq(ws, {"op": "pub", "id": 8, "topic": "chat.room1", "data": "hi"}, "pub chat.room1")
    expect_eq(r["op"], "ack", "publish within the claim")
    r = await jreq(ws, {"op": "pub", "id": 9, "topic": "chat.room2", "data": "hi"}, "pub chat.room2")
    expect_eq((r["op"], r.get("code")), ("err", 4403), "publish outside the claim")
    await ws.close()
    # raw: a refused subscribe list or publish topic refuses the handshake
    await expect_refused(s, 403, "raw subscribe outside the claim", token=tok, path="/ws?subscribe=prices.eur")
    await expect_refused(s, 403, "raw publish outside the claim", token=tok, path="/ws?publish=chat.room2")
    await expect_refused(s, 403, "raw subscribe to another user's topic", token=tok,
                         path="/ws?subscribe=user:dave")
    ws, err = await try_connect(s, path="/ws?subscribe=chat.x&publish=chat.room1", token=tok)
    check(ws is not None, "raw within the claims: refused %r" % (err,))
    await ws.close()
    # SSE: user topic subscribed, claims enforced, 401 with WWW-Authenticate
    c = SSE(s, "subscribe=chat.a&token=" + q(mint("erin", **aud_iss())))
    expect_eq(c.status, 200, "SSE with ?token=")
    body = "sse-%s" % os.urandom(3).hex()
    publish(s, "user:erin", body)
    m, _ = c.msg(what="the user:erin message over SSE")
    expect_eq((m["topic"], m["data"]), ("user:erin", body), "SSE user topic")
    c.close()
    c = SSE(s, "subscribe=prices.eur", {"Authorization": "Bearer " + tok})
    expect_eq(c.status, 403, "SSE subscribe outside the claim")
    c.close()
    c = SSE(s, "subscribe=a", {"Authorization": "Bearer " + mint("x", exp_in=-10, **aud_iss())})
    expect_eq(c.status, 401, "SSE with an expired token")
    check("invalid_token" in c.headers.get("www-authenticate", ""), "SSE 401 without WWW-Authenticate: %r" % c.head)
    c.close()


async def test_refresh_and_expiry():
    s = server("hs")
    # JSON: refreshed before exp survives past it
    ws = await jopen(s, mint("frank", exp_in=3, **aud_iss()))
    old_exp = time.time() + 3
    r = await jreq(ws, {"op": "refresh", "id": 1, "token": mint("frank", exp_in=600, **aud_iss())}, "refresh")
    expect_eq(r, {"op": "ack", "id": 1}, "refresh with a good token")
    r = await jreq(ws, {"op": "refresh", "id": 2, "token": mint("mallory", **aud_iss())}, "refresh other sub")
    expect_eq((r["op"], r.get("code")), ("err", 4401), "refresh with another sub's token")
    r = await jreq(ws, {"op": "refresh", "id": 3, "token": "x.y.z"}, "refresh garbage")
    expect_eq((r["op"], r.get("code")), ("err", 4401), "refresh with a bad token")
    r = await jreq(ws, {"op": "refresh", "id": 4, "token": mint("frank", exp_in=-1, **aud_iss())}, "refresh expired")
    expect_eq((r["op"], r.get("code")), ("err", 4401), "refresh with an expired token")
    # past the old expiry (+ the 1 s tick + margin) it is still served
    while time.time() < old_exp + 2.5:
        r = await jreq(ws, {"op": "unsub", "id": 5, "topic": "x"}, "unsub")
        expect_eq(r["op"], "ack", "still open after a refresh")
        await asyncio.sleep(0.5)
    await user_topic_works(s, ws, "frank")
    await ws.close()
    # JSON without refresh: 4001
    ws = await jopen(s, mint("gina", exp_in=2, **aud_iss()))
    await expect_closed(ws, 4001, 20, "JSON connection whose token expired")
    # raw: 4001
    ws, err = await try_connect(s, path="/ws?subscribe=r.x", token=mint("hank", exp_in=2, **aud_iss()))
    check(ws is not None, "raw with a short token: %r" % (err,))
    await expect_closed(ws, 4001, 20, "raw connection whose token expired")
    # SSE: the stream ends
    c = SSE(s, "subscribe=s.x", {"Authorization": "Bearer " + mint("ivy", exp_in=2, **aud_iss())}, timeout=20)
    expect_eq(c.status, 200, "SSE with a short token")
    deadline = time.monotonic() + 20
    while not c.eof:
        c._fill(deadline, "the end of an SSE stream whose token expired")
    c.close()
    ms = metrics(s)
    check(ms.get(("duplex_auth_expired_total", frozenset()), 0) >= 3, "duplex_auth_expired_total < 3")
    check(ms.get(("duplex_auth_refresh_total", frozenset({("result", "ok")})), 0) >= 1, "refresh ok not counted")


async def test_anonymous_policy():
    s = server("closed")
    await expect_refused(s, 403, "no token, anonymous off")
    await expect_refused(s, 403, "no token, anonymous off (JSON)", subprotocols=["duplex.v1"])
    c = SSE(s, "subscribe=a")
    expect_eq(c.status, 403, "SSE without a token, anonymous off")
    c.close()
    ws = await jopen(s, mint("jack"))
    await ws.close()
    # anonymous allowed, but publishing is off by default once JWT is configured
    s = server("hs")
    ws = await websockets.connect(s.url("/ws"), subprotocols=["duplex.v1"], open_timeout=10, ping_interval=None)
    r = await jreq(ws, {"op": "pub", "id": 1, "topic": "anon.x", "data": 1}, "anonymous pub")
    expect_eq((r["op"], r.get("code")), ("err", 4403), "anonymous publish with JWT configured")
    r = await jreq(ws, {"op": "sub", "id": 2, "topic": "anon.x"}, "anonymous sub")
    expect_eq(r["op"], "ack", "anonymous subscribe allowed")
    await ws.close()
    await expect_refused(s, 403, "anonymous raw publisher", path="/ws?publish=anon.x")


async def test_presence_and_disconnect():
    s = server("hs")
    t = topic("pres")
    a = await jopen(s, mint("kate", **aud_iss()))
    b = await jopen(s, mint("kate", **aud_iss()), how="query")
    c = await jopen(s, mint("leo", **aud_iss()))
    for ws in (a, b, c):
        r = await jreq(ws, {"op": "sub", "id": 1, "topic": t}, "sub")
        expect_eq(r["op"], "ack", "sub")
    r = http(s, "GET", "/api/presence?topic=" + t)
    j = r.json()
    expect_eq((j["count"], sorted(j["users"])), (3, ["kate", "leo"]), "presence: authenticated users")
    r = http(s, "POST", "/api/disconnect?user=kate")
    expect_eq(r.status, 200, "disconnect kate")
    await expect_closed(a, 4000, 10, "kate's first connection")
    await expect_closed(b, 4000, 10, "kate's second connection")
    r = await jreq(c, {"op": "unsub", "id": 9, "topic": "x"}, "leo still there")
    expect_eq(r["op"], "ack", "leo is not disconnected")
    await c.close()


async def test_disconnect_races_handshake():
    """/api/disconnect?user=U fired while U's handshakes are in flight:
    whatever the order, every connection that opened either is closed 4000
    or still answers requests (never an open connection the gateway has
    given up on)."""
    s = server("hs")
    loop = asyncio.get_running_loop()
    opened = closed = 0
    for i in range(40):
        user = "race%d-%s" % (i, os.urandom(2).hex())
        tok = mint(user, **aud_iss())
        conns = [asyncio.ensure_future(try_connect(s, token=tok, how=("header", "query")[j % 2],
                                                   subprotocols=["duplex.v1"] if j < 2 else None))
                 for j in range(3)]
        await asyncio.sleep(random.random() * 0.004)
        r = await loop.run_in_executor(None, lambda: http(s, "POST", "/api/disconnect?user=" + user))
        expect_eq(r.status, 200, "disconnect during handshakes")
        for j, c in enumerate(conns):
            ws, err = await c
            if ws is None:
                check(err[0] in (403, 503), "handshake %d of %s: status %r" % (j, user, err))
                continue
            opened += 1
            try:
                if ws.subprotocol == "duplex.v1":
                    await ws.send(json.dumps({"op": "unsub", "id": 1, "topic": "x"}))
                    f = json.loads(await asyncio.wait_for(ws.recv(), 10))
                    expect_eq(f.get("op"), "ack", "an open connection answers")
                else:
                    publish(s, "user:" + user, "ping")
                    expect_eq(await asyncio.wait_for(ws.recv(), 10), "ping", "an open raw connection receives")
            except websockets.exceptions.ConnectionClosed as e:
                rc = getattr(e, "rcvd", None)
                check(rc is not None and rc.code == 4000, "connection %d of %s ended with %s, expected 4000" %
                      (j, user, rc and rc.code))
                closed += 1
            except asyncio.TimeoutError:
                raise Fail("connection %d of %s opened but neither answers nor closes" % (j, user))
            await ws.close()
    say("disconnect races: %d opened, %d of them closed 4000" % (opened, closed))


async def test_conns_per_user():
    """--conns-per-user 3 on two workers: a user's fourth connection is
    refused 429 on every endpoint (JSON, raw, SSE) while other users are
    served; a slot freed by a close is usable again; 20 handshakes of one
    user at once open exactly 3 (counted strictly at the handshake)."""
    s = server("peruser")
    hows = ("header", "query", "subprotocol")
    mine = [await jopen(s, mint("mia"), how=h) for h in hows]
    await expect_refused(s, 429, "mia's fourth JSON connection", token=mint("mia"), subprotocols=["duplex.v1"])
    await expect_refused(s, 429, "mia's fourth connection, raw", token=mint("mia"), path="/ws?subscribe=x")
    c = SSE(s, "subscribe=x&token=" + q(mint("mia")))
    expect_eq(c.status, 429, "mia's fourth connection, SSE")
    c.close()
    other = await jopen(s, mint("ned"))
    await mine[0].close()

    async def reopen():
        ws, err = await try_connect(s, token=mint("mia"), subprotocols=["duplex.v1"])
        return ws

    ws = await await_for(reopen, 10, "a slot freed by mia's close, usable again")
    for w in mine[1:] + [ws, other]:
        await w.close()

    async def one():
        ws, err = await try_connect(s, token=mint("oz"), subprotocols=["duplex.v1"])
        return ws, err

    got = await asyncio.gather(*(one() for _ in range(20)))
    ok = [w for w, e in got if w is not None]
    codes = sorted(set(e[0] for w, e in got if w is None))
    expect_eq((len(ok), codes), (3, [429]), "20 handshakes of one user at once: opened, refused with")
    for w in ok:
        await w.close()
    m = metrics(s)
    n = m.get(("duplex_limit_refused_total", frozenset({("limit", "conns_per_user")})), 0)
    check(n >= 20, "duplex_limit_refused_total{limit=conns_per_user} = %s, expected >= 20" % n)


def test_api_keys_by_name():
    s = server("apikeys")
    ci, backend = "ci-key-" + SECRET[-8:], "backend-key-" + SECRET[-8:]
    t = topic("keys")
    for _ in range(3):
        publish(s, t, "x", key=ci)
    publish(s, t, "y", key=backend)
    r = http(s, "POST", "/api/publish?topic=" + t, body="z", key="wrong-" + ci)
    expect_eq(r.status, 401, "a wrong key")
    r = http(s, "POST", "/api/publish?topic=" + t, body="z", key=KEY)
    expect_eq(r.status, 200, "--api-key is still accepted (named default)")
    ms = metrics(s)
    got = {dict(l).get("key"): v for (n, l), v in ms.items() if n == "duplex_api_requests_total"}
    expect_eq((got.get("ci"), got.get("backend"), got.get("default")), (3.0, 1.0, 1.0), "requests by key name %r" % got)
    check(got.get("", 0) >= 1, "the refused request counted under key=\"\": %r" % got)
    log = s.log()
    check(ci not in log and backend not in log, "an API key appears in the server log")


def test_startup_errors():
    """Bad auth settings stop `duplex serve` at start with a reason (never
    the secret); a secret of exactly 32 bytes is enough, 31 is not."""
    import subprocess
    import gwtest
    bad = [
        (["--jwt-secret", "x" * 31], "at least 32"),
        (["--jwt-key", "/nonexistent/key.pem"], "/nonexistent/key.pem"),
        (["--jwks", write("empty.jwks", '{"keys":[]}')], "no usable"),
        (["--jwt-key", write("not.pem", "hello")], "PEM"),
        (["--jwt-secret", "y" * 40, "--jwks", write("k2.jwks", "{}")], "one of"),
        (["--api-keys-file", write("bad.keys", "lonely\n")], "name key"),
    ]
    for args, want in bad:
        p = subprocess.run([gwtest.BIN, "serve", "--host", "127.0.0.1", "--port", "1"] + args,
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20)
        out = p.stdout + p.stderr
        check(p.returncode != 0, "serve %s: exited %d, expected a failure:\n%s" % (args, p.returncode, out))
        check(want in out, "serve %s: the reason lacks %r:\n%s" % (args, want, out))
        check("x" * 31 not in out, "the secret is quoted in the error")
    s = Serve("--jwt-secret", "z" * 32)
    ws, err = await_free_connect(s, mint("zed", key="z" * 32))
    s.stop()


def await_free_connect(s, tok):
    async def go():
        ws, err = await try_connect(s, token=tok)
        check(ws is not None, "a 32-byte secret: refused %r" % (err,))
        await ws.close()
        return ws, err
    return asyncio.run(go())


def test_log_has_no_token():
    for name, s in _servers.items():
        log = s.log()
        check(SECRET not in log, "the JWT secret appears in the log of server %s" % name)
        for tok in TOKENS:
            for part in (tok, tok.split(".")[-1]) if tok.count(".") == 2 and len(tok.split(".")[-1]) > 10 else (tok,):
                if len(part) > 20 and part in log:
                    raise Fail("a token appears in the log of server %s: ...%s" % (name, part[-20:]))
    say("checked %d tokens against %d server logs" % (len(TOKENS), len(_servers)))


if __name__ == "__main__":
    main([
        test_every_algorithm,
        test_jwks_kids,
        test_forgeries_refused,
        test_token_sources,
        test_user_topics_and_claims,
        test_refresh_and_expiry,
        test_anonymous_policy,
        test_presence_and_disconnect,
        test_disconnect_races_handshake,
        test_conns_per_user,
        test_api_keys_by_name,
        test_startup_errors,
        test_log_has_no_token,
    ], timeout_each=90)
