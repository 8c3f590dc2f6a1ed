"""Shared helpers of the packaging tests (tests/pkg): run a command with a
deadline and fail loudly, start a server and read the port it prints."""
import os
import re
import select
import signal
import subprocess
import sys
import time

DEADLINE = 120  # seconds for any one step; generous for a loaded machine


def fail(msg):
    print(f"FAIL: {msg}", flush=True)
    sys.exit(1)


def run(cmd, env=None, cwd=None, timeout=600):
    """Runs cmd (a list); returns stdout. Any failure fails the test."""
    print("+ " + " ".join(cmd), flush=True)
    try:
        p = subprocess.run(cmd, env=env, cwd=cwd, timeout=timeout,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    except FileNotFoundError:
        fail(f"{cmd[0]}: not found (scripts/deps.sh test installs it)")
    except subprocess.TimeoutExpired:
        fail(f"timed out after {timeout} s: {' '.join(cmd)}")
    if p.returncode != 0:
        fail(f"exit {p.returncode}: {' '.join(cmd)}\n--- stdout\n{p.stdout}\n--- stderr\n{p.stderr}")
    return p.stdout


def read_line(stream, pattern, deadline, what):
    """Reads lines of `stream` until one matches `pattern`; returns the match."""
    buf = b""
    fd = stream.fileno()
    while time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not r:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
        for line in buf.decode(errors="replace").splitlines():
            m = re.search(pattern, line)
            if m:
                return m
    fail(f"{what}: no line matching {pattern!r} (got {buf!r})")


class Server:
    """A server process started with port 0 that prints 'listening on port N'."""

    def __init__(self, cmd, env=None):
        print("+ " + " ".join(cmd), flush=True)
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        m = read_line(self.proc.stdout, r"listening on port (\d+)", time.monotonic() + DEADLINE, cmd[0])
        self.port = int(m.group(1))

    def stop(self):
        """SIGTERM; the server must exit 0 (under ASan: no leak either)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            fail("server did not stop after SIGTERM")
        if self.proc.returncode != 0:
            fail(f"server exited {self.proc.returncode}: {err.decode(errors='replace')}")

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
