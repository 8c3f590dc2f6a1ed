"""
tests/cli/test_shared_options.py: the options `duplex serve`, `duplex
connect` and `duplex bench` share (parsed once, by cli_getopt in
cmd/duplex/cli.c) take the same value syntax and refuse a bad value with the
same message and exit status in every subcommand that has them:
  - each accepted value passes the parser, as --opt VALUE and --opt=VALUE
    (the command then stops at a later usage error of its own: serve at an
    extra argument, connect and bench at the missing URL);
  - each refused value gives exactly "<cmd>: invalid value for --opt: 'V'
    (see duplex <cmd> --help)" and exit 2, the same text in every subcommand
    but for the command's name; an alias (connect's --ping-timeout) is
    reported under the option's name;
  - a subcommand without the option refuses it as unknown (exit 2), and each
    subcommand's --help lists the shared options it takes;
  - the value reaches the library: --max-message 1K lets 1024-byte messages
    through and closes 1009 on 1025 bytes, in serve and in connect.
No network except the last test (serve and connect on loopback).
"""
import subprocess

import clitest
from clitest import Serve, check, main, say

# subcommand: (prefix of its messages, extra arguments that stop it after
# the options are parsed, the usage error that stop gives)
CMDS = {
    "serve": ("serve", ["EXTRA"], "serve: unexpected argument 'EXTRA'"),
    "connect": ("connect", [], "connect: missing URL"),
    "bench": ("duplex bench", [], "duplex bench: want exactly one URL"),
}

SIZES_OK = ["1", "1048576", "64K", "64k", "64KiB", "64KB", "1M", "1MiB", "2G", "100b"]
SIZES_BAD = ["0", "0K", "abc", "-1", "1X", "1.5M", "", "K", "99999999999999999999"]
MS_OK = ["1", "30", "30s", "500ms", "2m"]
MS_BAD = ["abc", "5h", "-1", "1.5s", "", "ms", "99999999999999999999"]

# option: (subcommands that take it, accepted values, refused values)
SHARED = {
    "max-message": (["serve", "connect"], SIZES_OK, SIZES_BAD),
    "max-fragments": (["serve"], ["1", "1024", "1073741824"], ["0", "1073741825", "1K", "x", ""]),
    "send-max": (["serve"], SIZES_OK, SIZES_BAD),
    "send-high-water": (["serve"], ["1", "64K", "1M"], SIZES_BAD),
    "handshake-timeout": (["serve"], MS_OK, MS_BAD + ["0", "off", "0ms"]),
    "close-timeout": (["serve", "connect"], MS_OK, MS_BAD + ["0", "off", "0ms"]),
    "pong-timeout": (["serve", "connect"], MS_OK, MS_BAD + ["0", "off", "0ms"]),
    "idle-timeout": (["serve"], MS_OK + ["0", "off"], MS_BAD),
    "ping-interval": (["serve", "connect"], MS_OK + ["0", "off"], MS_BAD),
    "ca": (["connect", "bench"], ["ca.pem", "/nonexistent/yet/parsed.pem"], []),
    "log-level": (["serve", "connect", "bench"], ["error", "warn", "info", "debug"],
                  ["INFO", "verbose", "", "warning", "3"]),
    "log-format": (["serve"], ["text", "json"], ["JSON", "xml", ""]),
}
FLAGS = {"insecure": (["connect", "bench"], "k")}  # no value: -k, --insecure
ALIASES = {  # subcommand: [(alias, option it stands for)]
    "connect": [("ping-timeout", "pong-timeout"), ("insecure-skip-verify", "insecure")],
    "bench": [("ca-file", "ca")],
}


def run(cmd, *args):
    p = subprocess.run([clitest.BIN, cmd] + list(args), stdin=subprocess.DEVNULL, capture_output=True,
                       timeout=20)
    err = p.stderr.decode(errors="replace")
    clitest.no_sanitizer_report(err)
    return p.returncode, p.stdout.decode(errors="replace"), err


def accepted(cmd, *args):
    prefix, stop, stop_msg = CMDS[cmd]
    rc, out, err = run(cmd, *(list(args) + stop))
    check(rc == 2 and err.startswith(stop_msg) and err.count("\n") == 1 and "invalid" not in err,
          "%s %s: expected the parser to accept it and stop at %r; got exit %s:\n%s%s"
          % (cmd, " ".join(args), stop_msg, rc, out, err))


def refused(cmd, opt, value, *args):
    """--opt VALUE (or args given as typed) must print the one message."""
    prefix, stop, _ = CMDS[cmd]
    typed = list(args) or ["--" + opt, value]
    rc, out, err = run(cmd, *(typed + stop))
    want = "%s: invalid value for --%s: '%s' (see duplex %s --help)" % (prefix, opt, value, cmd)
    check(rc == 2 and err == want + "\n" and out == "",
          "%s %s: expected exit 2 and\n  %s\ngot exit %s:\n%s%s" % (cmd, " ".join(typed), want, rc, out, err))
    return err[len(prefix):].replace(" " + cmd + " ", " CMD ")


def test_values_accepted():
    n = 0
    for opt, (cmds, good, _) in SHARED.items():
        for cmd in cmds:
            for v in good:
                accepted(cmd, "--" + opt, v)
                accepted(cmd, "--%s=%s" % (opt, v))
                n += 2
    for opt, (cmds, short) in FLAGS.items():
        for cmd in cmds:
            for typed in (["-" + short], ["--" + opt], ["-%s" % short, "--" + opt]):
                accepted(cmd, *typed)
                n += 1
    for cmd, pairs in ALIASES.items():
        for alias, opt in pairs:
            if opt in SHARED:
                for v in SHARED[opt][1]:
                    accepted(cmd, "--" + alias, v)
                    n += 1
            else:
                accepted(cmd, "--" + alias)
                n += 1
    say("  %d accepted command lines" % n)


def test_values_refused_alike():
    n = 0
    for opt, (cmds, _, bad) in SHARED.items():
        for v in bad:
            texts = {cmd: refused(cmd, opt, v) for cmd in cmds}
            check(len(set(texts.values())) == 1, "--%s %r: different messages: %r" % (opt, v, texts))
            n += len(cmds)
            for cmd in cmds:  # --opt=VALUE says the same
                refused(cmd, opt, v, "--%s=%s" % (opt, v))
                n += 1
    # an alias is reported under the option's own name
    for cmd, pairs in ALIASES.items():
        for alias, opt in pairs:
            for v in SHARED.get(opt, (None, None, []))[2]:
                refused(cmd, opt, v, "--" + alias, v)
                n += 1
    say("  %d refused command lines" % n)


def test_missing_value_and_flag_argument():
    for opt, (cmds, _, _) in SHARED.items():
        for cmd in cmds:
            rc, out, err = run(cmd, "--" + opt)
            check(rc == 2 and "requires an argument" in err and "usage: duplex %s" % cmd in err,
                  "%s --%s without a value: exit %s\n%s" % (cmd, opt, rc, err))
    for opt, (cmds, _) in FLAGS.items():
        for cmd in cmds:
            rc, out, err = run(cmd, "--%s=1" % opt)
            check(rc == 2 and "doesn't allow an argument" in err, "%s --%s=1: exit %s\n%s" % (cmd, opt, rc, err))


def test_only_where_taken():
    """A subcommand without a shared option refuses it as unknown; each
    --help names the shared options its subcommand takes."""
    for cmd in CMDS:
        rc, helptext, _ = run(cmd, "--help")
        check(rc == 0, "%s --help: exit %s" % (cmd, rc))
        for opt, spec in list(SHARED.items()) + list(FLAGS.items()):
            cmds = spec[0]
            value = [] if opt in FLAGS else [SHARED[opt][1][0]]
            if cmd in cmds:
                check("--%s " % opt in helptext, "duplex %s --help does not list --%s" % (cmd, opt))
                continue
            rc, out, err = run(cmd, "--" + opt, *value)
            check(rc == 2 and "unrecognized option '--%s'" % opt in err and "usage: duplex %s" % cmd in err,
                  "%s --%s: expected an unknown option, got exit %s\n%s" % (cmd, opt, rc, err))
        if cmd not in FLAGS["insecure"][0]:
            rc, out, err = run(cmd, "-k")
            check(rc == 2 and "invalid option -- 'k'" in err, "%s -k: exit %s\n%s" % (cmd, rc, err))


def test_max_message_reaches_the_library():
    """--max-message 1K, given to serve or to connect, lets 1024 bytes
    through and closes 1009 on 1025."""
    def echo(srv, n, *args):  # one message of n bytes on stdin (pipe mode), the echo on stdout
        return clitest.connect(*(list(args) + [srv.url()]), data=b"a" * n + b"\n")

    srv = Serve("--max-message", "1K")
    try:
        r = echo(srv, 1024)
        check(r.rc == 0 and r.out == b"a" * 1024 + b"\n", "serve --max-message 1K, 1024 bytes: %r" % r)
        r = echo(srv, 1025)
        check(r.rc == 1 and "1009" in r.errs, "serve --max-message 1K, 1025 bytes: %r" % r)
    finally:
        srv.stop()
    srv = Serve()
    try:
        # -1: wait for the echo (at the end of stdin connect closes at once, and a
        # message over the limit that arrives after its close is not a 1009)
        r = echo(srv, 1024, "-1", "--max-message", "1K")
        check(r.rc == 0 and r.out == b"a" * 1024 + b"\n", "connect --max-message 1K, 1024 bytes: %r" % r)
        r = echo(srv, 1025, "-1", "--max-message=1K")
        check(r.rc == 1 and "1009" in r.errs, "connect --max-message 1K, 1025 bytes: %r" % r)
    finally:
        srv.stop()


main([test_values_accepted, test_values_refused_alike, test_missing_value_and_flag_argument,
      test_only_where_taken, test_max_message_reaches_the_library])
