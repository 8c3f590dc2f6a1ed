"""
The gateway under churn (issue 9, "break it"): clients that vanish at every
point of the gateway's asynchronous paths, while publishers flood, on two
workers with a small subscriber budget. Run against the ASan build this
finds use-after-free and leaks (the server must exit 0 at the end); on any
build it checks the bookkeeping:

  - raw subscribers that reset right after sending their request (the
    handshake is held while the topic owners answer), or right after the
    101, with exact topics, patterns and since=;
  - JSON clients that send sub (with and without since), pub and presence
    and reset before the answers come back;
  - /api/publish and /api/history requests whose connections reset before
    the answer;
  - SSE requests that reset before and after the stream starts;
  - raw subscribers that never read while a publisher floods: closed 1013
    (counted), never blocking the others.

Afterwards every gauge is back to zero (connections by dialect,
subscriptions), a well-behaved JSON client still subscribes, publishes and
receives, and SIGTERM ends the server with status 0 (under ASan: no leak).
"""
import json
import random
import re
import socket
import struct
import threading
import time

from hostile import Conn, Server, check, connect, request, run, say


def rst(sock):
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass


def http(port, method, target, body=b"", headers=()):
    s = connect(port)
    head = "%s %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n%s\r\n" % (
        method, target, len(body), "".join(h + "\r\n" for h in headers))
    s.sendall(head.encode() + body)
    return s


def read_response(s):
    buf = b""
    s.settimeout(20)
    while b"\r\n\r\n" not in buf:
        d = s.recv(65536)
        check(d, "connection closed before an answer")
        buf += d
    head, rest = buf.split(b"\r\n\r\n", 1)
    m = re.search(rb"Content-Length: (\d+)", head, re.I)
    n = int(m.group(1)) if m else 0
    while len(rest) < n:
        d = s.recv(65536)
        check(d, "connection closed in a body")
        rest += d
    return int(head.split(b" ")[1]), rest[:n]


def metrics(port):
    s = http(port, "GET", "/metrics")
    status, body = read_response(s)
    s.close()
    check(status == 200, "/metrics answered %d" % status)
    out = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def json_client(port):
    c = Conn(connect(port))
    req, _ = request("/ws", extra=("Sec-WebSocket-Protocol: duplex.v1",))
    c.sock.sendall(req)
    status, hdrs, head = c.read_head()
    check(status == 101 and hdrs.get("sec-websocket-protocol") == "duplex.v1", "JSON handshake: %r" % head)
    return c


def vanish_raw(port, rnd):
    topics = rnd.choice(["churn.a", "churn.a,churn.b", "churn.*", "churn.>,churn.c", "churn.a,churn.b&since=churn.a:0"])
    s = connect(port)
    req, _ = request("/ws?subscribe=" + topics + ("&publish=churn.a" if rnd.random() < 0.5 else ""))
    s.sendall(req)
    if rnd.random() < 0.5:
        rst(s)  # while the handshake is held
        return
    try:
        s.settimeout(10)
        s.recv(1024)  # the 101 (and maybe messages)
    except OSError:
        pass
    rst(s)


def vanish_json(port, rnd):
    try:
        c = json_client(port)
    except Exception:
        return
    ops = []
    for i in range(rnd.randint(1, 6)):
        r = rnd.random()
        if r < 0.35:
            ops.append({"op": "sub", "id": i, "topic": rnd.choice(["churn.a", "churn.b", "churn.*", "churn.>"])})
        elif r < 0.5:
            ops.append({"op": "sub", "id": i, "topic": "churn.a", "since": {"offset": 0}})
        elif r < 0.8:
            ops.append({"op": "pub", "id": i, "topic": rnd.choice(["churn.a", "churn.b", "churn.c"]), "data": "x" * rnd.randint(0, 300)})
        elif r < 0.9:
            ops.append({"op": "presence", "id": i, "topic": "churn.a"})
        else:
            ops.append({"op": "unsub", "id": i, "topic": "churn.a"})
    for op in ops:
        c.send_frame(1, json.dumps(op).encode())
    if rnd.random() < 0.3:
        try:
            c.sock.settimeout(0.2)
            c.sock.recv(65536)
        except OSError:
            pass
    rst(c.sock)


def vanish_http(port, rnd, key):
    if rnd.random() < 0.5:
        s = http(port, "POST", "/api/publish?topic=churn.b", b"payload", ("Authorization: Bearer " + key, "Content-Type: text/plain"))
    else:
        s = http(port, "GET", "/api/history?topic=churn.a&limit=1000", b"", ("Authorization: Bearer " + key,))
    rst(s)


def vanish_sse(port, rnd):
    s = http(port, "GET", "/sse?subscribe=churn.a,churn.b" + ("&since=churn.a:0" if rnd.random() < 0.5 else ""))
    if rnd.random() < 0.5:
        try:
            s.settimeout(0.5)
            s.recv(4096)
        except OSError:
            pass
    rst(s)


def flood(port, stop, counter):
    """A raw publisher flooding churn.a (and so every subscriber of it)."""
    c = Conn(connect(port))
    c.handshake("/ws?publish=churn.a")
    payload = b"f" * 512
    while not stop.is_set():
        try:
            for _ in range(50):
                c.send_frame(1, payload)
            counter[0] += 50
        except OSError:
            break
        time.sleep(0.002)
    c.close()


def main(binary):
    key = "churn-key"
    srv = Server(binary, "--api-key", key, "--sub-queue", "64K", "--close-timeout", "2s", workers=2)
    rnd = random.Random(int(time.time()))
    try:
        # Subscribers that never read (small receive buffers): must be closed 1013.
        stuck = []
        for _ in range(5):
            s = connect(srv.port, rcvbuf=4096)
            req, _ = request("/ws?subscribe=churn.a")
            s.sendall(req)
            stuck.append(s)
        stop = threading.Event()
        sent = [0]
        ft = threading.Thread(target=flood, args=(srv.port, stop, sent))
        ft.start()
        workers = []
        errors = []

        def churn(seed):
            r = random.Random(seed)
            try:
                for _ in range(150):
                    k = r.random()
                    if k < 0.35:
                        vanish_raw(srv.port, r)
                    elif k < 0.7:
                        vanish_json(srv.port, r)
                    elif k < 0.85:
                        vanish_http(srv.port, r, key)
                    else:
                        vanish_sse(srv.port, r)
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(repr(e))

        for i in range(4):
            t = threading.Thread(target=churn, args=(rnd.random(),))
            t.start()
            workers.append(t)
        for t in workers:
            t.join(120)
        stop.set()
        ft.join(30)
        check(not errors, "churn clients failed: %s" % errors[:3])
        check(srv.alive(), "the server died during the churn")
        say("flood: %d publishes; churn done" % sent[0])
        # The stuck subscribers were dropped as slow consumers.
        srv.wait_log(r"gateway: conn=\d+ slow consumer", timeout=30)
        for s in stuck:
            rst(s)
        # Every gauge returns to zero once the vanished clients are reaped.
        deadline = time.monotonic() + 30
        while True:
            m = metrics(srv.port)
            conns = sum(v for k, v in m.items() if k.startswith("duplex_connections{"))
            if conns == 0 and m["duplex_subscriptions"] == 0:
                break
            check(time.monotonic() < deadline,
                  "gauges not back to zero: connections %s, subscriptions %s" % (conns, m["duplex_subscriptions"]))
            time.sleep(0.1)
        check(m['duplex_dropped_total{reason="slow_disconnect"}'] >= 1, "no slow-consumer drop counted")
        say("after churn: publishes %s, deliveries %s, slow drops %s" % (
            m['duplex_publishes_total{result="accepted"}'], m["duplex_deliveries_total"],
            m['duplex_dropped_total{reason="slow_disconnect"}']))
        # A well-behaved client is still served.
        c = json_client(srv.port)
        c.send_frame(1, json.dumps({"op": "sub", "id": 1, "topic": "after.churn"}).encode())
        op, ack = c.read_message()
        check(json.loads(ack)["op"] == "ack", "sub after churn: %r" % ack)
        c.send_frame(1, json.dumps({"op": "pub", "id": 2, "topic": "after.churn", "data": "ok"}).encode())
        got = [json.loads(c.read_message()[1]) for _ in range(2)]
        check({g["op"] for g in got} == {"msg", "ack"}, "pub after churn: %r" % got)
        # SIGTERM with a live JSON client: it gets 1012, the server exits 0.
        srv.stop()
        say("server stopped cleanly")
    finally:
        srv.cleanup()


if __name__ == "__main__":
    run(main)
