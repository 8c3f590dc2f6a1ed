"""
tests/cli/test_config.py: `duplex serve --config FILE`, `--check-config`,
`--help-config` and the DUPLEX_* environment (issue 10,
docs/configuration.md).

- a file with every key: --check-config prints each key's effective value
  and source; secrets masked; files named but their contents not printed;
- every key of the schema (--help-config) is in docs/configuration.md with
  its flag and environment variable, and in --check-config's output;
- each kind of error exits 2 naming file:line: key (unknown key top-level
  and nested, wrong type, bad size, bad duration, negative number,
  duplicate key, YAML syntax error with its line, a namespace without a
  prefix, a missing file, an unreadable TLS certificate, anchors/aliases);
- YAML pitfalls: `no`/`on` in a string key stay strings; `yes`/`no` in a
  boolean key are refused;
- precedence flag > env > file > default (scalars and lists);
- serve really runs with the file's settings (/healthz on the file's port,
  the file's API key accepted by /api/publish).
"""
import os
import re
import subprocess
import sys
import tempfile
import urllib.request
import urllib.error

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import clitest
from clitest import Fail, check, say, free_port, wait_for

HERE = os.path.dirname(os.path.abspath(__file__))
DOCS = os.path.join(HERE, "..", "..", "docs", "configuration.md")
TMP = tempfile.mkdtemp(prefix="dx-config-")


def write(name, text, mode=None):
    path = os.path.join(TMP, name)
    with open(path, "w") as f:
        f.write(text)
    if mode is not None:
        os.chmod(path, mode)
    return path


def serve(*args, env=None, timeout=20):
    e = {k: v for k, v in os.environ.items() if not k.startswith("DUPLEX_")}
    e.update(env or {})
    cmd = [clitest.BIN, "serve"] + list(args)
    say("run:", " ".join(cmd))
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, env=e)
    r = clitest.Result(p.returncode, p.stdout, p.stderr)
    r.text = p.stdout.decode(errors="replace")
    return r


def make_cert(name):
    cert, key = os.path.join(TMP, name + ".pem"), os.path.join(TMP, name + ".key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


def schema_keys():
    """The keys --help-config lists (one per row, first column)."""
    r = serve("--help-config")
    check(r.rc == 0, "--help-config failed: %r" % r)
    rows = []
    for line in r.text.splitlines():
        m = re.match(r"^([a-z_]+(?:\[\])?(?:\.[a-z_]+(?:\[\])?)*)\s{2,}(\S.*)$", line)
        if m and not line.startswith(" "):
            rest = m.group(2)
            flag = re.search(r"--([a-z-]+)", rest)
            env = re.search(r"(DUPLEX_[A-Z_]+)", rest)
            rows.append((m.group(1), flag.group(1) if flag else None, env.group(1) if env else None))
    check(len(rows) >= 60, "--help-config lists only %d keys:\n%s" % (len(rows), r.text))
    return rows


def full_config():
    cert, key = make_cert("full")
    static = os.path.join(TMP, "www")
    os.makedirs(static, exist_ok=True)
    keys_file = write("apikeys.txt", "ci ci-key-contents-0123\n")
    return cert, key, write("full.yaml", """\
# every key (but auth.jwt_key and auth.jwks, which exclude jwt_secret)
listen:
  host: 127.0.0.1
  port: 18443
  static: %(static)s
  tls:
    - cert: %(cert)s
      key: %(key)s
workers: 3
log:
  level: debug
  format: json
server:
  max_message: 2MiB
  max_fragments: 99
  max_head: 16KiB
  max_headers: 50
  send_max: 8MiB
  send_high_water: 128k
  handshake_timeout: 7s
  close_timeout: 4000ms
  idle_timeout: 2m
  ping_interval: off
  pong_timeout: 9s
  max_conns_per_ip: 77
  max_handshaking: off
  max_http_body: 64KiB
  http_keepalive: 3s
  http_max_requests: 55
gateway:
  history: 0
  history_age: off
  slow_policy: drop-oldest
  sub_queue: 512KiB
  max_subs: 12
  max_inflight: 33
  sse_heartbeat: 20s
  demo: true
  demo_interval: 250ms
  drain: 3s
  reconnect_hint: 1500ms
api:
  key: api-key-SECRET-aaaa
  keys:
    - name: deploy
      key: api-key-SECRET-bbbb
  keys_file: %(keys_file)s
auth:
  jwt_secret: jwt-SECRET-cccc
  audience: "no"
  issuer: https://issuer.example
  leeway: 45s
  refresh_grace: 30s
  cookie: dx_token
  anonymous: false
  anonymous_publish: off
origins:
  - https://app.example.com
  - https://*.example.org
allow_no_origin: false
limits:
  conns_per_user: 5
  conns_per_ip: off
  handshakes_per_ip: 12.5
  handshake_burst: 40
  msg_rate: 100
  msg_burst: 300
  rate_policy: refuse
  max_topic: 150
  max_api_body: 256KiB
namespaces:
  - prefix: chat.
    history: 50
    history_age: 1m
    publish: true
    presence: false
    slow_policy: disconnect
    msg_rate: 5
    msg_burst: 10
    rate_policy: close
    max_message: 4KiB
  - prefix: ""
    publish: false
""" % dict(static=static, cert=cert, key=key, keys_file=keys_file))


def test_every_key():
    cert, key, path = full_config()
    r = serve("--config", path, "--check-config")
    check(r.rc == 0, "check-config of the full file failed: %r" % r)
    out = r.text
    want = {
        "listen.host": '"127.0.0.1"', "listen.port": "18443", "workers": "3", "log.level": "debug",
        "log.format": "json", "server.max_message": "2MiB", "server.max_fragments": "99",
        "server.max_head": "16KiB", "server.max_headers": "50", "server.send_max": "8MiB",
        "server.send_high_water": "128KiB", "server.handshake_timeout": "7s", "server.close_timeout": "4s",
        "server.idle_timeout": "2m", "server.ping_interval": "off", "server.pong_timeout": "9s",
        "server.max_conns_per_ip": "77", "server.max_handshaking": "off", "server.max_http_body": "64KiB",
        "server.http_keepalive": "3s", "server.http_max_requests": "55", "gateway.history": "0",
        "gateway.history_age": "off", "gateway.slow_policy": "drop-oldest", "gateway.sub_queue": "512KiB",
        "gateway.max_subs": "12", "gateway.max_inflight": "33", "gateway.sse_heartbeat": "20s",
        "gateway.demo": "true", "gateway.demo_interval": "250ms", "gateway.drain": "3s",
        "gateway.reconnect_hint": "1500ms", "auth.audience": '"no"', "auth.issuer": '"https://issuer.example"',
        "auth.leeway": "45s", "auth.refresh_grace": "30s", "auth.cookie": '"dx_token"', "auth.anonymous": "false",
        "auth.anonymous_publish": "false", "allow_no_origin": "false", "limits.conns_per_user": "5",
        "limits.conns_per_ip": "off", "limits.handshakes_per_ip": "12.5", "limits.handshake_burst": "40",
        "limits.msg_rate": "100", "limits.msg_burst": "300", "limits.rate_policy": "refuse",
        "limits.max_topic": "150", "limits.max_api_body": "256KiB", "origins[0]": '"https://app.example.com"',
        "origins[1]": '"https://*.example.org"', "namespaces[0].prefix": '"chat."',
        "namespaces[0].history": "50", "namespaces[0].history_age": "1m", "namespaces[0].publish": "true",
        "namespaces[0].presence": "false", "namespaces[0].slow_policy": "disconnect",
        "namespaces[0].msg_rate": "5", "namespaces[0].msg_burst": "10", "namespaces[0].rate_policy": "close",
        "namespaces[0].max_message": "4KiB", "namespaces[1].prefix": '""', "namespaces[1].publish": "false",
        "api.keys[0].name": '"deploy"',
    }
    for k, v in want.items():
        m = re.search(r"^%s: (.*?)(?:  # (.*))?$" % re.escape(k), out, re.M)
        check(m, "check-config does not print %s:\n%s" % (k, out))
        check(m.group(1).startswith(v), "%s: expected %s, printed %r" % (k, v, m.group(1)))
    # sources: file and line for a scalar
    check(re.search(r"^limits\.msg_rate: 100  # file .*full\.yaml:66$", out, re.M),
          "the file and line of limits.msg_rate are not printed:\n" + out)
    # secrets masked, files named but not printed
    for secret in ("api-key-SECRET-aaaa", "api-key-SECRET-bbbb", "jwt-SECRET-cccc", "ci-key-contents-0123"):
        check(secret not in out and secret not in r.errs, "secret %r printed:\n%s" % (secret, out))
    check(re.search(r"^auth\.jwt_secret: \*{8} ", out, re.M), "jwt_secret not shown as masked:\n" + out)
    check(re.search(r"^api\.key: \*{8} ", out, re.M), "api.key not shown as masked:\n" + out)
    check(re.search(r"^api\.keys\[0\]\.key: \*{8} ", out, re.M), "api.keys[0].key not masked:\n" + out)
    check(cert in out and "BEGIN" not in out, "the TLS files must be named, not printed:\n" + out)
    # every schema key appears in the output
    for k, _, _ in schema_keys():
        pat = k.replace("[]", "[0]")
        if k in ("auth.jwt_key", "auth.jwks"):
            check(re.search(r"^%s: " % re.escape(k), out, re.M), "%s missing from check-config" % k)
            continue
        check(re.search(r"^%s: " % re.escape(pat), out, re.M), "%s missing from check-config:\n%s" % (pat, out))
    # the key sources excluded above, each on its own
    pem = write("pub.pem", "-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----\n")
    jwks = write("keys.jwks", '{"keys": []}\n')
    for k, f in (("jwt_key", pem), ("jwks", jwks)):
        p = write("auth_%s.yaml" % k, "auth:\n  %s: %s\n" % (k, f))
        r = serve("--config", p, "--check-config")
        check(r.rc == 0 and re.search(r"^auth\.%s: \"%s\" \(file\)" % (k, re.escape(f)), r.text, re.M),
              "auth.%s: %r" % (k, r))
    p = write("two_keys.yaml", "auth:\n  jwt_secret: x\n  jwks: %s\n" % jwks)
    r = serve("--config", p, "--check-config")
    check(r.rc == 2 and "one of jwt_secret" in r.errs, "two key sources accepted: %r" % r)


def test_docs_and_help():
    with open(DOCS) as f:
        docs = f.read()
    help_text = serve("--help").text
    for k, flag, env in schema_keys():
        check("`%s`" % k in docs, "docs/configuration.md does not document key `%s`" % k)
        if flag:
            check("`--%s`" % flag in docs, "docs/configuration.md does not name flag `--%s` (%s)" % (flag, k))
            check("--" + flag in help_text, "duplex serve --help does not name --%s (%s)" % (flag, k))
            check("`%s`" % env in docs, "docs/configuration.md does not name `%s` (%s)" % (env, k))
            want_env = "DUPLEX_" + flag.upper().replace("-", "_")
            check(env == want_env, "%s: env %s, expected %s" % (k, env, want_env))


ERRORS = [
    # (name, file text, line, key, words in the message)
    ("unknown top-level", "listen:\n  port: 8080\nlisten_port: 9\n", 3, "listen_port", "unknown key"),
    ("unknown nested", "limits:\n  msg_rate: 5\n  msg_rat: 6\n", 3, "limits.msg_rat", "unknown key"),
    ("unknown in a namespace", "namespaces:\n  - prefix: a.\n    histroy: 3\n", 3, "namespaces[0].histroy",
     "unknown key"),
    ("wrong type", "limits:\n  msg_rate: fast\n", 2, "limits.msg_rate", 'expected a number > 0 or off, got "fast"'),
    ("mapping for a scalar", "workers:\n  n: 2\n", 2, "workers", "expected a single value"),
    ("scalar for a section", "limits: 5\n", 1, "limits", "expected a mapping"),
    ("bad size", "server:\n  max_message: 12 parsecs\n", 2, "server.max_message", "expected a size"),
    ("bad size suffix", "gateway:\n  sub_queue: 1TB\n", 2, "gateway.sub_queue", "expected a size"),
    ("bad duration", "gateway:\n  drain: 10 minutes\n", 2, "gateway.drain", "expected a duration"),
    ("zero duration", "server:\n  pong_timeout: 0\n", 2, "server.pong_timeout", "expected a duration"),
    ("negative", "limits:\n  conns_per_ip: -5\n", 2, "limits.conns_per_ip", "expected a whole number"),
    ("negative rate", "limits:\n  msg_rate: -1\n", 2, "limits.msg_rate", "expected a number"),
    ("over the maximum", "listen:\n  port: 65536\n", 2, "listen.port", "from 1 to 65535"),
    ("duplicate key", "workers: 2\nlisten:\n  port: 1\nworkers: 3\n", 4, "workers", "duplicate key (first at line 1)"),
    ("YAML syntax", "listen:\n  port: 1\n   host: [unclosed\n", 3, None, "YAML syntax"),
    ("bad indentation", "limits:\n  msg_rate: 1\n max_topic: 3\n", 3, None, "YAML syntax"),
    ("namespace without prefix", "namespaces:\n  - history: 5\n", 2, "namespaces[0]", "needs a prefix"),
    ("namespace prefix twice", "namespaces:\n  - prefix: a.\n  - prefix: a.\n", 3, "namespaces[1]", "twice"),
    ("empty value", "listen:\n  host:\n", 2, "listen.host", "got nothing"),
    ("yes is no boolean", "allow_no_origin: yes\n", 1, "allow_no_origin", "expected true, false, on or off"),
    ("no is no boolean", "gateway:\n  demo: no\n", 2, "gateway.demo", 'got "no"'),
    ("octal-looking is decimal, too big", "gateway:\n  max_subs: 0100001\n", 2, "gateway.max_subs",
     "from 1 to 100000"),
    ("exponent refused", "limits:\n  msg_rate: 1e3\n", 2, "limits.msg_rate", 'got "1e3"'),
    ("bad choice", "limits:\n  rate_policy: drop\n", 2, "limits.rate_policy", "one of pause, refuse, close"),
    ("alias", "limits:\n  msg_rate: &r 5\n  msg_burst: *r\n", 2, None, "anchors"),
    ("list for origins", "origins: https://a.example\n", 1, "origins", "expected a list"),
    ("tls without key", "listen:\n  tls:\n    - cert: %(cert)s\n", 3, "listen.tls[0]", "needs both cert and key"),
    ("missing TLS cert", "listen:\n  tls:\n    - cert: /nonexistent/c.pem\n      key: %(key)s\n", 3,
     "listen.tls[0].cert", "No such file"),
    ("unreadable TLS cert", "listen:\n  tls:\n    - cert: %(tmp)s\n      key: %(key)s\n", 3, "listen.tls[0].cert",
     "is a directory"),
    ("empty TLS key", "listen:\n  tls:\n    - cert: %(cert)s\n      key: %(empty)s\n", 4, "listen.tls[0].key",
     "is empty"),
    ("not a mapping", "- a\n- b\n", 1, None, "expected a mapping of keys at the top level"),
    ("two documents", "workers: 1\n---\nworkers: 2\n", 2, None, "one YAML document only"),
    # a plain scalar folded over a blank line holds a newline: the error stays one line (found by fuzz_config)
    ("folded scalar", "listen:\n  port: 8080\nworkers: 2\n\n  port; 8\n", 3, "workers", 'got "2\\nport; 8"'),
]


def test_errors():
    cert, key = make_cert("err")
    empty = write("empty.key", "")
    for name, text, line, key_name, words in ERRORS:
        path = write("bad.yaml", text % dict(cert=cert, key=key, tmp=TMP, empty=empty))
        r = serve("--config", path, "--check-config")
        check(r.rc == 2, "%s: exit %s, expected 2: %r" % (name, r.rc, r))
        prefix = "%s:%d: " % (path, line) + (key_name + ": " if key_name else "")
        check(prefix in r.errs, "%s: expected %r in the message: %r" % (name, prefix, r.errs))
        check(words in r.errs, "%s: expected %r in the message: %r" % (name, words, r.errs))
        check(r.errs.count("\n") == 1, "%s: expected one line: %r" % (name, r.errs))
        check(r.text == "", "%s: printed a configuration on error" % name)
        say("  ok:", r.errs.strip())
    # the same refusals without --check-config: serve does not start
    r = serve("--config", write("bad2.yaml", "limits:\n  msg_rate: fast\n"), "--port", str(free_port()))
    check(r.rc == 2 and "limits.msg_rate" in r.errs and "listening" not in r.errs, "serve started: %r" % r)
    # a missing file
    r = serve("--config", os.path.join(TMP, "nope.yaml"), "--check-config")
    check(r.rc == 2 and "nope.yaml: cannot read the configuration file: No such file" in r.errs, repr(r))
    # env errors name the variable and the key
    r = serve("--check-config", env={"DUPLEX_MSG_RATE": "fast"})
    check(r.rc == 2 and 'env DUPLEX_MSG_RATE: limits.msg_rate: expected a number > 0 or off, got "fast"' in r.errs,
          repr(r))
    # flag errors keep the CLI's wording
    r = serve("--check-config", "--msg-rate", "fast")
    check(r.rc == 2 and "serve: invalid value for --msg-rate: 'fast'" in r.errs, repr(r))
    r = serve("--check-config", "--tls-cert", cert)
    check(r.rc == 2 and "--tls-cert and --tls-key must come in pairs" in r.errs, repr(r))
    # an empty file is all defaults
    r = serve("--config", write("empty.yaml", "# nothing\n"), "--check-config")
    check(r.rc == 0 and "listen.port: 8080  # default" in r.text, repr(r))


def test_redis_list():
    """cluster.redis as a YAML list: its items joined with commas (one
    server per item: the bus names the item a bad URL is in)."""
    ok = write("rl.yaml", "cluster:\n  redis:\n    - redis://127.0.0.1:1\n    - redis://127.0.0.1:2\n")
    r = serve("--config", ok, "--check-config")
    check(r.rc == 0 and re.search(r"^cluster.redis: .*# .*rl.yaml", r.text, re.M), repr(r))
    bad = write("rl2.yaml", "cluster:\n  redis:\n    - redis://127.0.0.1:1\n    - http://x\n")
    r = serve("--config", bad, "--unix", os.path.join(TMP, "rl.sock"))
    check(r.rc != 0 and "Redis URL 2 of the list" in r.errs + r.text, repr(r))
    # the flag repeated: joined (the second item is the bad one); a flag replaces the file's list
    r = serve("--redis", "redis://127.0.0.1:1", "--redis", "http://y", "--unix", os.path.join(TMP, "rl.sock"))
    check(r.rc != 0 and "Redis URL 2 of the list" in r.errs + r.text, repr(r))
    r = serve("--config", bad, "--redis", "redis://127.0.0.1:1", "--check-config")
    check(r.rc == 0 and re.search(r"^cluster.redis: .*# .*flag", r.text, re.M), repr(r))
    empty = write("rl3.yaml", "cluster:\n  redis:\n    - redis://127.0.0.1:1\n    - ''\n")
    r = serve("--config", empty, "--check-config")
    check(r.rc == 2 and "expected a list of strings" in r.errs, repr(r))


def value(out, key):
    m = re.search(r"^%s: (.*?)  # (.*)$" % re.escape(key), out, re.M)
    check(m, "%s not printed:\n%s" % (key, out))
    return m.group(1), m.group(2)


def test_precedence():
    path = write("prec.yaml", "listen:\n  port: 1111\nlimits:\n  msg_rate: 10\norigins:\n  - https://file.example\n"
                              "api:\n  key: from-file\n")
    r = serve("--config", path, "--check-config")
    check(value(r.text, "listen.port") == ("1111", "file %s:2" % path), repr(value(r.text, "listen.port")))
    check(value(r.text, "limits.msg_burst")[1] == "default", "msg_burst not default")
    env = {"DUPLEX_PORT": "2222", "DUPLEX_ORIGIN": "https://env1.example,https://env2.example",
           "DUPLEX_MSG_RATE": "20", "DUPLEX_API_KEY": "from-env"}
    r = serve("--config", path, "--check-config", env=env)
    check(value(r.text, "listen.port") == ("2222", "env DUPLEX_PORT"), r.text)
    check(value(r.text, "limits.msg_rate") == ("20", "env DUPLEX_MSG_RATE"), r.text)
    check('origins[0]: "https://env1.example"' in r.text and 'origins[1]: "https://env2.example"' in r.text
          and "file.example" not in r.text, "env origins do not replace the file's:\n" + r.text)
    check(value(r.text, "api.key")[1] == "env DUPLEX_API_KEY" and "from-env" not in r.text, r.text)
    r = serve("--config", path, "--check-config", "--port", "3333", "--origin", "https://flag.example",
              "--msg-rate", "off", "--api-key", "from-flag", env=env)
    check(value(r.text, "listen.port") == ("3333", "flag --port"), r.text)
    check(value(r.text, "limits.msg_rate") == ("off", "flag --msg-rate"), r.text)
    check('origins[0]: "https://flag.example"' in r.text and "origins[1]" not in r.text, r.text)
    check(value(r.text, "api.key")[1] == "flag --api-key" and "from-flag" not in r.text, r.text)
    # the config file from the environment
    r = serve("--check-config", env={"DUPLEX_CONFIG": path})
    check(value(r.text, "listen.port") == ("1111", "file %s:2" % path), r.text)
    # shared options (cli.c) too: flag over env over file
    p2 = write("shared.yaml", "server:\n  max_message: 2MiB\nlog:\n  level: warn\n")
    r = serve("--config", p2, "--check-config", env={"DUPLEX_MAX_MESSAGE": "3MiB"})
    check(value(r.text, "server.max_message") == ("3MiB", "env DUPLEX_MAX_MESSAGE"), r.text)
    check(value(r.text, "log.level") == ("warn", "file %s:4" % p2), r.text)
    r = serve("--config", p2, "--check-config", "--max-message", "4MiB", "--log-level", "error",
              env={"DUPLEX_MAX_MESSAGE": "3MiB"})
    check(value(r.text, "server.max_message") == ("4MiB", "flag --max-message"), r.text)
    check(value(r.text, "log.level") == ("error", "flag --log-level"), r.text)
    # TLS pairs: flags replace the file's list
    c1, k1 = make_cert("p1")
    c2, k2 = make_cert("p2")
    p3 = write("tls.yaml", "listen:\n  tls:\n    - cert: %s\n      key: %s\n" % (c1, k1))
    r = serve("--config", p3, "--check-config", "--tls-cert", c2, "--tls-key", k2)
    check(r.rc == 0 and c2 in r.text and c1 not in r.text and "listen.tls: 1 item  # flag --tls-cert" in r.text,
          repr(r) + r.text)


def test_serve_runs_with_file():
    port = free_port()
    path = write("run.yaml", "listen:\n  host: 127.0.0.1\n  port: %d\nworkers: 1\napi:\n  keys:\n"
                             "    - name: ci\n      key: run-key-123\n" % port)
    s = clitest.Serve("--config", path, port=port)  # flags from Serve repeat host/port/workers
    try:
        wait_for(lambda: "listening" in s.log(), 10, "listening")
        body = urllib.request.urlopen("http://127.0.0.1:%d/healthz" % port, timeout=10).read()
        check(body.strip() == b"ok", "healthz: %r" % body)
        req = urllib.request.Request("http://127.0.0.1:%d/api/publish?topic=a" % port, data=b"x", method="POST",
                                     headers={"Authorization": "Bearer run-key-123"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            check(resp.status == 200, "publish with the file's named key: %d" % resp.status)
        req = urllib.request.Request("http://127.0.0.1:%d/api/publish?topic=a" % port, data=b"x", method="POST",
                                     headers={"Authorization": "Bearer wrong"})
        try:
            urllib.request.urlopen(req, timeout=10)
            raise Fail("a wrong key was accepted")
        except urllib.error.HTTPError as e:
            check(e.code in (401, 403), "wrong key: %d" % e.code)
    finally:
        s.stop()


if __name__ == "__main__":
    clitest.main([test_docs_and_help, test_every_key, test_errors, test_precedence, test_serve_runs_with_file,
                  test_redis_list])
