"""
tests/cli/test_tls.py: `duplex connect` over wss:// against `duplex serve
--tls-cert/--tls-key` with a self-signed certificate made by openssl at test
time: without --ca the verification fails (exit 3, the reason printed);
with --ca the echo works (exit 0); --insecure skips verification; a CA for
another name fails.
"""
import os
import shutil
import subprocess
import tempfile

from clitest import Serve, check, connect, main

TMP = tempfile.mkdtemp(prefix="dx-cli-tls-")


def make_cert(name, cn, san):
    crt, key = os.path.join(TMP, name + ".crt"), os.path.join(TMP, name + ".key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", key, "-out", crt, "-days", "2", "-subj", "/CN=" + cn,
                    "-addext", "subjectAltName=" + san], check=True, capture_output=True)
    return crt, key


def test_wss():
    crt, key = make_cert("server", "localhost", "DNS:localhost,IP:127.0.0.1")
    other, _ = make_cert("other", "other.example", "DNS:other.example")
    srv = Serve("--tls-cert", crt, "--tls-key", key)
    url = srv.url(scheme="wss")

    r = connect(url, data=b"secret\n")
    check(r.rc == 3, "wss to a self-signed certificate without --ca should exit 3: %r" % r)
    check("verif" in r.errs, "the verification failure should be named: %r" % r)

    r = connect("--ca", crt, url, data=b"secret\n")
    check(r.rc == 0 and r.out == b"secret\n", "wss with --ca: %r" % r)

    r = connect("--ca", crt, srv.url(scheme="wss", host="localhost"), data=b"by name\n")
    check(r.rc == 0 and r.out == b"by name\n", "wss://localhost with --ca: %r" % r)

    r = connect("--insecure", url, data=b"anyway\n")
    check(r.rc == 0 and r.out == b"anyway\n", "wss with --insecure: %r" % r)

    # A CA that did not sign the server's certificate.
    r = connect("--ca", other, url, data=b"x\n")
    check(r.rc == 3, "wss with the wrong --ca should exit 3: %r" % r)

    # An unusable CA file is a failure before connecting (not a usage error).
    bad = os.path.join(TMP, "garbage.pem")
    with open(bad, "w") as f:
        f.write("not a certificate\n")
    r = connect("--ca", bad, url, data=b"x\n")
    check(r.rc == 1, "an unusable --ca file should exit 1: %r" % r)
    srv.stop()


try:
    main([test_wss])
finally:
    shutil.rmtree(TMP, ignore_errors=True)
