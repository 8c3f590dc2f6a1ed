#!/usr/bin/python3
"""permessage-deflate benchmark: duplex serve against Node `ws`, in one run.

Run by scripts/bench_deflate.sh (which finds the binaries); see
docs/benchmarks.md, "permessage-deflate". Standard library only.

    bench_deflate.py --duplex BIN --node-modules DIR --out PREFIX

The client side is bench/peers/deflate_load.js (Node `ws`, the same for both
servers), carrying realistic JSON (bench/peers/json_gen.js: order-book
updates, about 2:1 alone at 1 KiB, 4.4:1 at 16 KiB with zlib level 6). For
each server (duplex serve --workers 1; Node ws_echo.js / ws_broadcast.js)
and each mode (off: no extension; ctx: permessage-deflate with context
takeover both ways, what browsers and ws negotiate by default; nct:
server_no_context_takeover; client_no_context_takeover):

  echo    CONNS connections echo JSON messages of 1 KiB and 16 KiB one at a
          time: compression ratio (payload bytes / bytes on the wire, frame
          headers included, both ways), wire bytes per message, and the
          server's CPU time (utime + stime from /proc/PID/stat) per message
          (one inflate + one deflate each);
  memory  HOLD connections each echo one 1 KiB message and stay open: the
          server's VmRSS growth per connection (duplex with
          --deflate-mem-budget 4GiB so that no connection is downgraded);
  fanout  SUBS subscribers, one publisher sending COUNT 1 KiB messages at
          RATE/s: server CPU per delivery and wire bytes per delivery;
          duplex compresses once per message for subscribers that
          negotiated server_no_context_takeover (nct) and once per
          connection with context takeover (ctx); ws compresses per client
          either way. duplex runs ctx with --deflate-mem-budget 4GiB (the
          default 64 MiB per worker would downgrade all but ~217 of them).

The servers are pinned to CPU 0 and the clients to CPU 1 (taskset) when
there are two CPUs. Environment: BENCH_DEFLATE_CONNS (20),
BENCH_DEFLATE_MSGS_1K (1000 per connection), BENCH_DEFLATE_MSGS_16K (250),
BENCH_DEFLATE_HOLD (1000), BENCH_DEFLATE_SUBS (500), BENCH_DEFLATE_RATE
(200), BENCH_DEFLATE_COUNT (1000). Every process started here is stopped by
PID. Exit 1 if a client reported an error (an echo or delivery that
differed, a closed connection).
"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS = os.path.join(ROOT, "bench", "peers")
HOST = "127.0.0.1"

CONNS = int(os.environ.get("BENCH_DEFLATE_CONNS", 20))
MSGS = {1024: int(os.environ.get("BENCH_DEFLATE_MSGS_1K", 1000)),
        16384: int(os.environ.get("BENCH_DEFLATE_MSGS_16K", 250))}
HOLD = int(os.environ.get("BENCH_DEFLATE_HOLD", 1000))
SUBS = int(os.environ.get("BENCH_DEFLATE_SUBS", 500))
RATE = int(os.environ.get("BENCH_DEFLATE_RATE", 200))
COUNT = int(os.environ.get("BENCH_DEFLATE_COUNT", 1000))

MODES = ("off", "ctx", "nct")
# what each client offers (ws perMessageDeflate client options)
OFFER = {"off": False, "ctx": {}, "nct": {"serverNoContextTakeover": True, "clientNoContextTakeover": True}}
# duplex serve flags per mode
DUPLEX_FLAGS = {"off": ["--no-deflate"], "ctx": ["--deflate"],
                "nct": ["--deflate=server_no_context_takeover; client_no_context_takeover"]}
# ws server options per mode (threshold 0: compress everything, as duplex does past its 64-byte minimum)
WS_OPTS = {"off": False, "ctx": {"threshold": 0},
           "nct": {"threshold": 0, "serverNoContextTakeover": True, "clientNoContextTakeover": True}}

two_cpus = (os.cpu_count() or 1) >= 2 and shutil.which("taskset")
PIN_SERVER = ["taskset", "-c", "0"] if two_cpus else []
PIN_CLIENT = ["taskset", "-c", "1"] if two_cpus else []
procs = []


def log(*a):
    print("bench_deflate:", *a, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Srv:
    def __init__(self, kind, mode, a, path, extra=()):
        self.kind, self.mode = kind, mode
        self.port = free_port()
        if kind == "duplex":
            argv = [a.duplex, "serve", "--host", HOST, "--port", str(self.port), "--workers", "1",
                    "--log-level", "warn", "--max-message", "1MiB", *DUPLEX_FLAGS[mode], *extra]
        else:
            script = "ws_echo.js" if path == "/echo" else "ws_broadcast.js"
            argv = ["node", os.path.join(PEERS, script), "--host", HOST, "--port", str(self.port),
                    "--deflate", json.dumps(WS_OPTS[mode])]
        self.argv = argv
        env = dict(os.environ, NODE_PATH=a.node_modules)
        self.proc = subprocess.Popen(PIN_SERVER + argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, env=env)
        procs.append(self.proc)
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{' '.join(argv)}: did not start")
                time.sleep(0.05)
        time.sleep(0.2)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def client(a, *args, timeout=600):
    env = dict(os.environ, NODE_PATH=a.node_modules)
    r = subprocess.run(PIN_CLIENT + ["node", os.path.join(PEERS, "deflate_load.js"), *args], env=env,
                       capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"deflate_load {' '.join(args[:1])}: {r.stderr.strip()[-300:]}")
    return json.loads(r.stdout.strip().splitlines()[0])


def run_echo(a, kind, mode, size):
    s = Srv(kind, mode, a, "/echo")
    try:
        c0 = cpu_s(s.proc.pid)
        r = client(a, "echo", "--url", f"ws://{HOST}:{s.port}/echo", "--conns", str(CONNS), "--messages",
                   str(MSGS[size]), "--size", str(size), "--offer", json.dumps(OFFER[mode]))
        r["server_cpu_s"] = cpu_s(s.proc.pid) - c0
    finally:
        s.stop()
    r.update(test="echo", server=kind, deflate=mode)
    r["ratio"] = 2 * r["raw_bytes_each_way"] / (r["wire_out"] + r["wire_in"])
    r["wire_per_msg"] = (r["wire_out"] + r["wire_in"]) / r["messages"]
    r["cpu_us_per_msg"] = 1e6 * r["server_cpu_s"] / r["messages"]
    return r


def run_memory(a, kind, mode):
    extra = ["--deflate-mem-budget", "4GiB"] if (kind == "duplex" and mode != "off") else []
    s = Srv(kind, mode, a, "/echo", extra)
    try:
        rss0 = rss_kib(s.proc.pid)
        env = dict(os.environ, NODE_PATH=a.node_modules)
        p = subprocess.Popen(PIN_CLIENT + ["node", os.path.join(PEERS, "deflate_load.js"), "hold", "--url",
                                           f"ws://{HOST}:{s.port}/echo", "--conns", str(HOLD), "--size", "1024",
                                           "--offer", json.dumps(OFFER[mode])],
                             env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append(p)
        first = p.stdout.readline()
        ready = p.stdout.readline().strip()
        if ready != "ready":
            raise RuntimeError(f"hold: {first!r} {ready!r}")
        time.sleep(0.5)
        rss1 = rss_kib(s.proc.pid)
        p.stdin.close()
        p.wait(30)
        r = json.loads(first)
    finally:
        s.stop()
    r.update(test="memory", server=kind, deflate=mode, rss0_kib=rss0, rss1_kib=rss1,
             kib_per_conn=(rss1 - rss0) / HOLD)
    return r


def run_fanout(a, kind, mode):
    # with the default budget (64 MiB per worker) only about 217 subscribers
    # would keep a context; the rest would be downgraded to nct
    extra = ["--deflate-mem-budget", "4GiB"] if (kind == "duplex" and mode == "ctx") else []
    s = Srv(kind, mode, a, "/ws", extra)
    try:
        sub = f"ws://{HOST}:{s.port}/ws" + ("?subscribe=bench.t" if kind == "duplex" else "")
        pub = f"ws://{HOST}:{s.port}/ws?publish=bench.t"
        c0 = cpu_s(s.proc.pid)
        r = client(a, "fanout", "--url", sub, "--pub-url", pub, "--conns", str(SUBS), "--rate", str(RATE),
                   "--count", str(COUNT), "--size", "1024", "--offer", json.dumps(OFFER[mode]))
        r["server_cpu_s"] = cpu_s(s.proc.pid) - c0
    finally:
        s.stop()
    r.update(test="fanout", server=kind, deflate=mode)
    n = max(1, r["deliveries"])
    r["cpu_us_per_delivery"] = 1e6 * r["server_cpu_s"] / n
    r["wire_per_delivery"] = r["wire_in"] / n
    r["ratio"] = r["raw_bytes_delivered"] / max(1, r["wire_in"])
    return r


def table(rows):
    out = []
    out.append(f"Echo ({CONNS} connections, one message in flight each; server CPU per echoed message = one "
               f"inflate + one deflate; ratio = payload bytes / wire bytes, both ways, headers included)")
    out.append("| server | deflate | message | negotiated | ratio | wire bytes/msg (both ways) | server CPU us/msg | "
               "vs off |")
    out.append("| --- | --- | --- | --- | ---: | ---: | ---: | ---: |")
    echo = [r for r in rows if r["test"] == "echo"]
    for r in echo:
        base = next((b for b in echo if b["server"] == r["server"] and b["size"] == r["size"]
                     and b["deflate"] == "off"), None)
        vs = f"{r['cpu_us_per_msg'] / base['cpu_us_per_msg']:.1f}x" if base and base["cpu_us_per_msg"] else "-"
        out.append(f"| {r['server']} | {r['deflate']} | {r['size'] // 1024} KiB | {r['negotiated'] or '-'} | "
                   f"{r['ratio']:.2f} | {r['wire_per_msg']:.0f} | {r['cpu_us_per_msg']:.1f} | {vs} |")
    for size in sorted({r["size"] for r in echo}):
        for mode in ("ctx", "nct"):
            d = next((r for r in echo if r["server"] == "duplex" and r["deflate"] == mode and r["size"] == size), None)
            n = next((r for r in echo if r["server"] == "node" and r["deflate"] == mode and r["size"] == size), None)
            if d and n and d["cpu_us_per_msg"]:
                out.append(f"  {size // 1024} KiB {mode}: node ws / duplex server CPU per message = "
                           f"{n['cpu_us_per_msg'] / d['cpu_us_per_msg']:.2f}x; wire bytes duplex / node = "
                           f"{d['wire_per_msg'] / n['wire_per_msg']:.2f}")
    out.append("")
    out.append(f"Memory ({HOLD} connections, each echoed one 1 KiB message and stays open; server VmRSS growth)")
    out.append("| server | deflate | negotiated | KiB per connection |")
    out.append("| --- | --- | --- | ---: |")
    for r in rows:
        if r["test"] == "memory":
            out.append(f"| {r['server']} | {r['deflate']} | {r['negotiated'] or '-'} | {r['kib_per_conn']:.1f} |")
    out.append("")
    out.append(f"Fan-out ({SUBS} subscribers, {COUNT} messages of 1 KiB JSON at {RATE}/s; server CPU per delivery)")
    out.append("| server | deflate | negotiated | ratio | wire bytes/delivery | server CPU us/delivery | vs off | "
               "delivered |")
    out.append("| --- | --- | --- | ---: | ---: | ---: | ---: | --- |")
    fan = [r for r in rows if r["test"] == "fanout"]
    for r in fan:
        base = next((b for b in fan if b["server"] == r["server"] and b["deflate"] == "off"), None)
        vs = f"{r['cpu_us_per_delivery'] / base['cpu_us_per_delivery']:.1f}x" if base and base["cpu_us_per_delivery"] else "-"
        out.append(f"| {r['server']} | {r['deflate']} | {r['negotiated'] or '-'} | {r['ratio']:.2f} | "
                   f"{r['wire_per_delivery']:.0f} | {r['cpu_us_per_delivery']:.2f} | {vs} | "
                   + ("all" if r.get("finished", True) else
                      f"did not keep up: {r['deliveries']} of {r['expected']} in {r['secs']:.0f} s") + " |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duplex", required=True)
    ap.add_argument("--node-modules", required=True)
    ap.add_argument("--out", required=True, help="PREFIX: writes PREFIX.txt and PREFIX.jsonl")
    ap.add_argument("--only", default="echo,memory,fanout", help="tests to run")
    ap.add_argument("--servers", default="duplex,node")
    ap.add_argument("--modes", default=",".join(MODES))
    a = ap.parse_args()
    only = a.only.split(",")
    rows, errors = [], []
    try:
        for kind in a.servers.split(","):
            for mode in a.modes.split(","):
                steps = []
                if "echo" in only:
                    steps += [("echo", size) for size in (1024, 16384)]
                if "memory" in only:
                    steps.append(("memory", None))
                if "fanout" in only:
                    steps.append(("fanout", None))
                for test, size in steps:
                    log(f"{test} {kind} {mode}" + (f" {size}" if size else ""))
                    try:
                        r = (run_echo(a, kind, mode, size) if test == "echo" else
                             run_memory(a, kind, mode) if test == "memory" else run_fanout(a, kind, mode))
                        rows.append(r)
                        with open(a.out + ".jsonl", "a") as f:
                            f.write(json.dumps(r) + "\n")
                    except Exception as e:  # noqa: BLE001 - reported, the run goes on
                        errors.append(f"{test} {kind} {mode}: {e}")
                        log("ERROR", errors[-1])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    t = table(rows)
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
    except OSError:
        pass
    head = (f"permessage-deflate benchmark, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {cpu}, "
            f"{os.cpu_count()} CPUs; servers {'on CPU 0, clients on CPU 1' if two_cpus else 'not pinned'}")
    text = head + "\n\n" + t + ("\n\nERRORS:\n" + "\n".join(errors) if errors else "") + "\n"
    with open(a.out + ".txt", "w") as f:
        f.write(text)
    print(text)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
