#!/usr/bin/env python3
"""pkg_subdir: duplex as a subproject (add_subdirectory) of someone else's
build, into a binary folder named `duplex` (which used to collide with the
CLI's output path).

A parent project does add_subdirectory(<duplex source> duplex) and links an
application with duplex::duplex; the test checks that it configures and
builds (the CLI included), that the application runs and links the library
it was given, that DX_TESTS and DX_BENCH are off, and that none of their
tools (cmocka, libwebsockets) was even looked for.

Usage: test_subdir.py --source DIR --cc CC
"""
import argparse
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pkgtest import fail, run  # noqa: E402

PARENT = """cmake_minimum_required(VERSION 3.20)
project(parent LANGUAGES C)
add_subdirectory({source} duplex)
add_executable(app app.c)
target_link_libraries(app PRIVATE duplex::duplex)
"""

APP = """#include <duplex/duplex.h>
#include <stdio.h>
int main(void) { printf("linked %s\\n", dx_version()); return 0; }
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", required=True)
    ap.add_argument("--cc", required=True)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="dx-sub-") as tmp:
        os.mkdir(f"{tmp}/src")
        with open(f"{tmp}/src/CMakeLists.txt", "w") as f:
            f.write(PARENT.format(source=os.path.abspath(a.source)))
        with open(f"{tmp}/src/app.c", "w") as f:
            f.write(APP)
        run(["cmake", "-S", f"{tmp}/src", "-B", f"{tmp}/build", f"-DCMAKE_C_COMPILER={a.cc}"])
        cache = open(f"{tmp}/build/CMakeCache.txt").read()
        for opt in ("DX_TESTS", "DX_BENCH"):
            if not re.search(rf"^{opt}:BOOL=OFF$", cache, re.M):
                fail(f"{opt} is not OFF under add_subdirectory")
        looked = re.findall(r"^(CMOCKA\w*|LWS\w*|pkgcfg_lib_(?:CMOCKA|LWS)\w*):", cache, re.M)
        if looked:
            fail(f"a subproject build looked for test or bench tools: {looked}")
        run(["cmake", "--build", f"{tmp}/build", "-j2", "--target", "app", "duplex"])
        out = run([f"{tmp}/build/app"])
        if not out.startswith("linked "):
            fail(f"app printed {out!r}")
        if "libduplex.so" not in run(["readelf", "-d", f"{tmp}/build/app"]):
            fail("app does not link libduplex.so (duplex::duplex is the shared library)")
        if not os.access(f"{tmp}/build/duplex/duplex", os.X_OK):
            fail("the CLI is not at build/duplex/duplex")
        run([f"{tmp}/build/duplex/duplex", "version"])
    print("pkg_subdir: add_subdirectory into a folder named duplex builds the CLI and an app; "
          "tests and benchmarks off, their tools not needed: ok")


if __name__ == "__main__":
    main()
