#!/usr/bin/env python3
"""pkg_install: install duplex into a temporary prefix and use it as a user
would.

  1. `cmake --install BUILD --prefix TMP` (then the tree is moved: nothing may
     depend on where it was installed) puts the CLI, libduplex.so (with its
     SONAME links), libduplex.a, the public headers (and nothing from src/),
     duplex.pc and the CMake package in place; each header compiles alone,
     as pedantic C11 and as C++;
  2. the examples build against the *installed* files only: with pkg-config
     and a plain cc command (shared, and static through --static), and with
     find_package(duplex) (examples/CMakeLists.txt, shared and static);
  3. they run against each other: the echo server (pkg-config build) driven by
     the example client (find_package build) and by Python websockets; the
     chat server (find_package, static) with two clients (pkg-config builds),
     each seeing the other's messages in order;
  4. both servers stop on SIGTERM with exit 0 (under ASan: without a leak).

Usage: test_install.py --build DIR --source DIR --cc CC --version X.Y.Z
                       [--flags "-fsanitize=..."]
"""
import argparse
import asyncio
import glob
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pkgtest import DEADLINE, Server, fail, read_line, run  # noqa: E402

EXAMPLES = ("echo_server", "chat_server", "client")


def check_tree(prefix, source, version):
    major = version.split(".")[0]
    if not os.access(f"{prefix}/bin/duplex", os.X_OK):
        fail("bin/duplex not installed")
    out = run([f"{prefix}/bin/duplex", "version"])
    if version not in out:
        fail(f"installed duplex says {out!r}, not {version}")
    libs = glob.glob(f"{prefix}/lib*/**/libduplex.so", recursive=True) + glob.glob(f"{prefix}/lib*/libduplex.so")
    if not libs:
        fail("libduplex.so not installed")
    libdir = os.path.dirname(libs[0])
    for name in (f"libduplex.so.{major}", f"libduplex.so.{version}", "libduplex.a",
                 "pkgconfig/duplex.pc", "cmake/duplex/duplexConfig.cmake",
                 "cmake/duplex/duplexConfigVersion.cmake", "cmake/duplex/duplexTargets.cmake"):
        if not os.path.exists(f"{libdir}/{name}"):
            fail(f"{libdir}/{name} not installed")
    soname = re.search(r"\(SONAME\)\s+Library soname: \[(.*)\]", run(["readelf", "-d", f"{libdir}/libduplex.so"]))
    if not soname or soname.group(1) != f"libduplex.so.{major}":
        fail(f"SONAME is {soname and soname.group(1)}, want libduplex.so.{major}")
    want = sorted(os.path.basename(p) for p in glob.glob(f"{source}/include/duplex/*.h"))
    got = sorted(os.listdir(f"{prefix}/include/duplex"))
    if got != want or os.listdir(f"{prefix}/include") != ["duplex"]:
        fail(f"installed headers {got} (in {os.listdir(prefix + '/include')}), want exactly {want}")
    return libdir


def check_headers(prefix, cc, tmp):
    """Each installed header compiles on its own, as C11 (pedantic) and as C++."""
    cxx = "clang++" if "clang" in os.path.basename(cc) else "g++"
    for h in sorted(os.listdir(f"{prefix}/include/duplex")):
        src = f"{tmp}/hdr_{h}.c"
        with open(src, "w") as f:
            f.write(f"#include <duplex/{h}>\nint dx_test_header_alone;\n")
        run([cc, "-std=c11", "-Wall", "-Wextra", "-Wpedantic", "-Werror", f"-I{prefix}/include", "-c", src,
             "-o", f"{tmp}/hdr.o"])
        run([cxx, "-x", "c++", "-std=c++17", "-Wall", "-Wextra", "-Werror", f"-I{prefix}/include", "-c", src,
             "-o", f"{tmp}/hdr.o"])


def build_pkgconfig(prefix, libdir, source, cc, flags, out):
    env = dict(os.environ, PKG_CONFIG_PATH=f"{libdir}/pkgconfig")
    version = run(["pkg-config", "--modversion", "duplex"], env=env).strip()
    cflags = shlex.split(run(["pkg-config", "--cflags", "duplex"], env=env))
    libs = shlex.split(run(["pkg-config", "--libs", "duplex"], env=env))
    static_libs = shlex.split(run(["pkg-config", "--static", "--libs", "duplex"], env=env))
    if os.path.normpath(f"{prefix}/include") not in [os.path.normpath(f[2:]) for f in cflags if f.startswith("-I")]:
        fail(f"pkg-config --cflags gives {cflags}, not -I{prefix}/include")
    if "-lduplex" not in libs or not any(x in static_libs for x in ("-lssl", "-lcrypto")):
        fail(f"pkg-config --libs {libs}, --static --libs {static_libs}")
    os.makedirs(out, exist_ok=True)
    for name in EXAMPLES:
        src = f"{source}/examples/{name}.c"
        common = [cc, "-std=c11", "-Wall", "-Wextra", "-Werror", "-pthread", *flags, src, *cflags]
        run(common + ["-o", f"{out}/{name}", *libs, f"-Wl,-rpath,{libdir}"], env=env)
        # static: the archive by name, then what --static lists after it
        run(common + ["-o", f"{out}/{name}_static",
                      *["-l:libduplex.a" if x == "-lduplex" else x for x in static_libs]], env=env)
    needed = run(["readelf", "-d", f"{out}/client"])
    if "libduplex.so" not in needed:
        fail("the pkg-config shared build does not need libduplex.so")
    if "libduplex.so" in run(["readelf", "-d", f"{out}/client_static"]):
        fail("the --static build still needs libduplex.so")
    return version


def build_cmake(prefix, source, cc, flags, out, static):
    cfg = ["cmake", "-S", f"{source}/examples", "-B", out, f"-DCMAKE_PREFIX_PATH={prefix}",
           f"-DCMAKE_C_COMPILER={cc}", f"-DDUPLEX_STATIC={'ON' if static else 'OFF'}",
           "-DCMAKE_C_FLAGS=-Wall -Wextra -Werror " + " ".join(flags),
           "-DCMAKE_EXE_LINKER_FLAGS=" + " ".join(flags)]
    run(cfg)
    run(["cmake", "--build", out, "-j2"])
    cache = open(f"{out}/CMakeCache.txt").read()
    m = re.search(r"^duplex_DIR:PATH=(.*)$", cache, re.M)
    if not m or not os.path.realpath(m.group(1)).startswith(os.path.realpath(prefix)):
        fail(f"find_package found duplex at {m and m.group(1)}, not under {prefix}")


def check_version_refused(prefix, version, tmp):
    """find_package(duplex X.Y) refuses another minor (0.x: the API may change)."""
    major, minor = (int(x) for x in version.split(".")[:2])
    os.makedirs(f"{tmp}/ver", exist_ok=True)
    with open(f"{tmp}/ver/CMakeLists.txt", "w") as f:
        f.write("cmake_minimum_required(VERSION 3.20)\nproject(v LANGUAGES C)\n"
                f"find_package(duplex {major}.{minor + 1} REQUIRED)\n")
    p = subprocess.run(["cmake", "-S", f"{tmp}/ver", "-B", f"{tmp}/ver/b", f"-DCMAKE_PREFIX_PATH={prefix}"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=DEADLINE)
    if p.returncode == 0 or "version" not in p.stdout:
        fail(f"find_package(duplex {major}.{minor + 1}) accepted {version}:\n{p.stdout}")


def client(path, url, *args, n=None):
    cmd = [path, url] + (["-n", str(n)] if n is not None else []) + list(args)
    print("+ " + " ".join(cmd), flush=True)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc, what):
    try:
        out, err = proc.communicate(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        proc.kill()
        fail(f"{what}: did not finish")
    out, err = out.decode(), err.decode()
    if proc.returncode != 0 or "client: closed 1000" not in err:
        fail(f"{what}: exit {proc.returncode}\n--- stdout\n{out}\n--- stderr\n{err}")
    return out


async def python_echo(port):
    import websockets  # Debian's python3-websockets
    async with websockets.connect(f"ws://127.0.0.1:{port}/") as ws:
        await ws.send(b"\x00\x01binary\xff")
        got = await asyncio.wait_for(ws.recv(), DEADLINE)
        if got != b"\x00\x01binary\xff":
            fail(f"echo of a binary message from python websockets: {got!r}")
        await ws.send("héllo " * 1000)
        got = await asyncio.wait_for(ws.recv(), DEADLINE)
        if got != "héllo " * 1000:
            fail("echo of a 6 kB text message from python websockets differs")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True)
    ap.add_argument("--source", required=True)
    ap.add_argument("--cc", required=True)
    ap.add_argument("--version", required=True)
    ap.add_argument("--flags", default="")
    a = ap.parse_args()
    flags = shlex.split(a.flags)
    with tempfile.TemporaryDirectory(prefix="dx-pkg-") as tmp:
        # Installed in one place, used from another: duplex.pc and the CMake
        # package must find everything relative to where they lie (a staged
        # DESTDIR tree or a moved prefix).
        prefix = f"{tmp}/prefix"
        run(["cmake", "--install", a.build, "--prefix", f"{tmp}/first"])
        os.rename(f"{tmp}/first", prefix)
        libdir = check_tree(prefix, a.source, a.version)
        check_headers(prefix, a.cc, tmp)
        if build_pkgconfig(prefix, libdir, a.source, a.cc, flags, f"{tmp}/pc") != a.version:
            fail("pkg-config --modversion differs from the project's version")
        build_cmake(prefix, a.source, a.cc, flags, f"{tmp}/cm", static=False)
        build_cmake(prefix, a.source, a.cc, flags, f"{tmp}/cms", static=True)
        check_version_refused(prefix, a.version, tmp)

        servers = []
        try:
            # echo: pkg-config server, find_package client, python websockets
            echo = Server([f"{tmp}/pc/echo_server", "0"])
            servers.append(echo)
            url = f"ws://127.0.0.1:{echo.port}/"
            out = finish(client(f"{tmp}/cm/client", url, "hello", "wörld", "3"), "echo client")
            if out != "hello\nwörld\n3\n":
                fail(f"echo client printed {out!r}")
            asyncio.run(python_echo(echo.port))
            echo.stop()

            # chat: find_package static server; A listens, B talks, both hear B
            chat = Server([f"{tmp}/cms/chat_server", "0"])
            servers.append(chat)
            url = f"ws://127.0.0.1:{chat.port}/"
            a_proc = client(f"{tmp}/pc/client_static", url, n=3)
            read_line(a_proc.stderr, r"client: open", time.monotonic() + DEADLINE, "chat client A")
            b_out = finish(client(f"{tmp}/pc/client", url, "hi", "there", "bye", n=3), "chat client B")
            a_out = finish(a_proc, "chat client A")
            lines = b_out.splitlines()
            if len(lines) != 3 or not re.fullmatch(r"\d+: hi", lines[0]):
                fail(f"chat client B got {b_out!r}")
            ident = lines[0].split(":")[0]
            if lines != [f"{ident}: hi", f"{ident}: there", f"{ident}: bye"] or a_out != b_out:
                fail(f"chat: B got {b_out!r}, A got {a_out!r}")
            chat.stop()
        finally:
            for s in servers:
                s.kill()
    print("pkg_install: installed tree, pkg-config (shared, static), find_package (shared, static), "
          "echo and chat examples run: ok")


if __name__ == "__main__":
    main()
