"""
Case 9: descriptors exhausted. The server runs under
`prlimit --nofile=64:64`; the test opens connections (each sending its
upgrade request at once) until the server's accept fails with EMFILE, then
checks:
  - one "accept failed" log line per burst, not one per attempt: no new
    line while accept keeps failing for 3 s (12 retries at 250 ms), every
    "accept failed" is followed by an "accepting again after N failed
    attempts" before the next one, and N > 1;
  - the server does not spin: its CPU time grows by < 0.5 s over 3 s idle;
  - an existing client still echoes;
  - after closing some connections, the waiting ones are accepted (their
    101 arrives) and new connections work again ("accepting again" line).
Two bursts are made, the second after everything was closed.
"""
import select
import shutil
import time

from hostile import (skip, OP_TEXT, Conn, Server, check, connect, echo_roundtrip, request, run, say)

EXTRA = 100  # connections opened per burst


def open_burst(port, n):
    conns = []
    for _ in range(n):
        c = Conn(connect(port))
        c.sock.sendall(request()[0])
        conns.append(c)
    return conns


def answered(conns, timeout):
    """Splits conns into (got a 101, no answer yet) after waiting up to timeout s."""
    deadline = time.monotonic() + timeout
    done, waiting = [], list(conns)
    while waiting and time.monotonic() < deadline:
        r, _, _ = select.select([c.sock for c in waiting], [], [], 0.2)
        if not r:
            if done:
                # answers come in one go per accept round; stop after a quiet 0.5 s
                r2, _, _ = select.select([c.sock for c in waiting], [], [], 0.5)
                if not r2:
                    break
            continue
        for c in list(waiting):
            if c.sock in r:
                st, _, _ = c.read_head()
                check(st == 101, "expected 101, got %d" % st)
                done.append(c)
                waiting.remove(c)
    return done, waiting


def wait_fds(srv, n):
    deadline = time.monotonic() + 30  # wide: the machine may be busy
    while srv.fds() > n and time.monotonic() < deadline:
        time.sleep(0.1)
    check(srv.fds() <= n, "server still holds %d descriptors (expected %d)" % (srv.fds(), n))


def keeper_echo(k, what):
    k.send_frame(OP_TEXT, what)
    op, got = k.read_message()
    check(got == what, "existing client: echo mismatch %r" % got)


def main(binary):
    if not shutil.which("prlimit"):
        skip("prlimit (util-linux) not found")
    srv = Server(binary, "--close-timeout", "2s", prefix=("prlimit", "--nofile=64:64", "--"))
    try:
        check("soft limit 64 " in srv.log(), "server does not run with 64 descriptors: " + srv.log())
        keeper = Conn.open(srv.port)
        base_fds = srv.fds()
        say("server descriptors at start (with one client): %d of 64" % srv.fds())
        total_open = []
        for burst in (1, 2):
            nfail0 = len(srv.lines(r"accept failed"))
            conns = open_burst(srv.port, EXTRA)
            srv.wait_log(r"accept failed", timeout=30, count=nfail0 + 1)
            ok, waiting = answered(conns, 20)
            say("burst %d: %d more connections opened, %d accepted, %d waiting in the backlog; server fds %d"
                % (burst, len(conns), len(ok), len(waiting), srv.fds()))
            check(waiting, "burst %d: every connection was accepted; the limit was not reached" % burst)
            nfail1 = len(srv.lines(r"accept failed"))
            cpu0 = srv.cpu_s()
            time.sleep(3)
            cpu = srv.cpu_s() - cpu0
            nfail2 = len(srv.lines(r"accept failed"))
            say("burst %d: server CPU over 3 s with accept failing: %.3f s; 'accept failed' lines: %d before, %d after"
                % (burst, cpu, nfail1, nfail2))
            check(cpu < 0.5, "server spins while descriptors are exhausted: %.2f s CPU in 3 s" % cpu)
            check(nfail2 == nfail1, "'accept failed' logged again while the same burst went on")
            keeper_echo(k=keeper, what=b"burst %d" % burst)
            # free 20 descriptors: the waiting connections get in
            for c in ok[:20]:
                c.close()
            ok = ok[20:]
            more, waiting = answered(waiting, 30)
            # F and A lines alternate: the nfail1-th A ends this burst's failure (a later one may
            # already follow: the 20 freed slots fill up again, and a descriptor the server frees
            # a moment later ends that short burst after one attempt)
            again = srv.wait_log(r"accepting again after \d+ failed attempts", timeout=30, count=nfail1)[nfail1 - 1]
            say("burst %d: log: %s" % (burst, again.split("  ", 1)[-1]))
            check(int(again.split("after ")[1].split()[0]) > 1, "a burst of one failed attempt? " + again)
            say("burst %d: after closing 20, %d waiting connections were accepted, %d still waiting"
                % (burst, len(more), len(waiting)))
            check(more, "burst %d: no waiting connection was accepted after descriptors were freed" % burst)
            for c in more[:1]:
                c.send_frame(OP_TEXT, b"late")
                check(c.read_message()[1] == b"late", "late-accepted connection does not echo")
            total_open = ok + more + waiting
            if burst == 1:
                # leave room for burst 2 to hit the limit again from a lower level
                for c in total_open:
                    c.sock.close()
                wait_fds(srv, base_fds)
                echo_roundtrip(srv.port)
        for c in total_open:
            c.sock.close()
        wait_fds(srv, base_fds)
        say("after closing everything: server fds %d" % srv.fds())
        echo_roundtrip(srv.port)
        keeper_echo(keeper, b"end")
        keeper.close()
        # per burst: failed, again, failed, again, ... never failed twice in a row
        seq = [("F" if "accept failed" in l else "A") for l in srv.lines(r"accept failed|accepting again")]
        say("accept log sequence: %s (F = accept failed, A = accepting again)" % "".join(seq))
        check("FF" not in "".join(seq) and "AA" not in "".join(seq) and seq[0] == "F",
              "accept failures not logged once per burst: " + "".join(seq))
        say("log: " + srv.lines(r"accept failed")[0])
        srv.stop()
    finally:
        srv.cleanup()


if __name__ == "__main__":
    run(main)
