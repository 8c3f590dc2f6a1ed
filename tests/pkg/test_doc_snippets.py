#!/usr/bin/env python3
"""pkg_doc_snippets: every C snippet in the docs compiles and links.

Each ```c block in README.md and docs/*.md is a complete program: it is
compiled against the public headers only (-I include, never src/) with
warnings as errors and linked against libduplex. A block whose info string
is ```c fragment is a piece of a program (declarations and calls shown out of
context); it is counted and skipped, and must say so with that tag.

Usage: test_doc_snippets.py --source DIR --cc CC --lib LIBDUPLEX [--flags ...]
"""
import argparse
import glob
import os
import re
import shlex
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pkgtest import fail  # noqa: E402

FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```\s*$", re.S | re.M)


def snippets(path):
    text = open(path, encoding="utf-8").read()
    for m in FENCE.finditer(text):
        info = m.group(1).split()
        if info and info[0] == "c":
            line = text.count("\n", 0, m.start()) + 1
            yield line, info[1:], m.group(2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", required=True)
    ap.add_argument("--cc", required=True)
    ap.add_argument("--lib", required=True)
    ap.add_argument("--flags", default="")
    a = ap.parse_args()
    files = [f"{a.source}/README.md"] + sorted(glob.glob(f"{a.source}/docs/*.md"))
    built = skipped = 0
    errors = []
    with tempfile.TemporaryDirectory(prefix="dx-snip-") as tmp:
        for path in files:
            rel = os.path.relpath(path, a.source)
            for line, tags, code in snippets(path):
                if tags == ["fragment"]:
                    skipped += 1
                    continue
                if tags:
                    errors.append(f"{rel}:{line}: unknown tag {tags} (```c or ```c fragment)")
                    continue
                src = f"{tmp}/snippet_{built}.c"
                with open(src, "w") as f:
                    f.write(f'#line {line + 1} "{rel}"\n' + code)
                cmd = [a.cc, "-std=c11", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter",
                       *shlex.split(a.flags), f"-I{a.source}/include", src, "-o", f"{tmp}/snippet_{built}",
                       a.lib, "-pthread", f"-Wl,-rpath,{os.path.dirname(os.path.abspath(a.lib))}"]
                p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
                if p.returncode != 0:
                    errors.append(f"{rel}:{line}: does not build:\n{p.stdout}")
                built += 1
    if errors:
        fail("\n".join(errors))
    if built == 0:
        fail("no ```c snippet found: the extraction is broken")
    print(f"pkg_doc_snippets: {built} complete snippets built, {skipped} fragments skipped: ok")


if __name__ == "__main__":
    main()
