#!/usr/bin/env python3
"""pkg_symbols: libduplex.so exports the public API and nothing else.

Every dynamic symbol the library defines starts with dx_ and none is an
internal dx__ one (nm -D --defined-only); the public functions a user calls
are all there (each DX_API name declared in include/duplex/*.h is exported);
its SONAME is libduplex.so.MAJOR.

Usage: test_symbols.py LIBDUPLEX_SO INCLUDE_DIR MAJOR
"""
import glob
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pkgtest import fail, run  # noqa: E402


def main():
    lib, include, major = sys.argv[1], sys.argv[2], sys.argv[3]
    syms = set()
    for line in run(["nm", "-D", "--defined-only", lib]).splitlines():
        parts = line.split()
        if len(parts) == 3:
            syms.add(parts[2].split("@")[0])
    bad = sorted(s for s in syms if not s.startswith("dx_") or s.startswith("dx__"))
    # The linker's own markers are not ours to hide.
    bad = [s for s in bad if s not in ("_init", "_fini", "_edata", "_end", "__bss_start")]
    if bad:
        fail(f"{len(bad)} exported symbols outside the dx_ API: {bad[:40]}")
    declared = set()
    for h in glob.glob(f"{include}/duplex/*.h"):
        text = re.sub(r"/\*.*?\*/", "", open(h).read(), flags=re.S)
        for m in re.finditer(r"DX_API\b[^;{(]*?\b(dx_\w+)\s*\(", text):
            declared.add(m.group(1))
    if len(declared) < 20:
        fail(f"found only {len(declared)} DX_API declarations in {include}: the scan is broken")
    missing = sorted(declared - syms)
    if missing:
        fail(f"declared DX_API but not exported: {missing}")
    soname = re.search(r"Library soname: \[(.*)\]", run(["readelf", "-d", lib]))
    if not soname or soname.group(1) != f"libduplex.so.{major}":
        fail(f"SONAME {soname and soname.group(1)}, want libduplex.so.{major}")
    print(f"pkg_symbols: {len(syms)} exported, all dx_, none dx__; {len(declared)} DX_API declarations "
          f"all exported; SONAME libduplex.so.{major}: ok")


if __name__ == "__main__":
    main()
