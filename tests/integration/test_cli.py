#!/usr/bin/env python3
"""
test_cli.py - the command line: -V, -h, unknown options, -t on good and bad
configs (errors point at file:line:col), a missing config file, and a
listener address already in use at start.
"""

import os
import re
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

h.require_tools()

VALID = """\
# a valid configuration, as in the README
workers: 2
log: {level: info, file: stderr}
shutdown_timeout: 5s
listeners:
  - listen: 127.0.0.1:{port}
    upstream: redis
  - listen: unix:{dir}/redis.sock
    upstream: redis
    mode: "0660"
upstreams:
  redis:
    protocol: redis
    servers: [127.0.0.1:{rport}]
    pool: {size: 4, max_connections: 8, idle_timeout: 60s}
    connect_timeout: 1s
    request_timeout: 5s
"""


def valid_config(**kw):
    d = h.mkdtemp("sp-cli-")
    vals = {"port": h.free_port(), "rport": h.free_port(), "dir": d}
    vals.update(kw)
    text = VALID
    for k, v in vals.items():
        text = text.replace("{%s}" % k, str(v))
    return text


def pos(text, needle, nth=0):
    """1-based (line, column) of the nth occurrence of needle in text."""
    i = -1
    for _ in range(nth + 1):
        i = text.index(needle, i + 1)
    line = text.count("\n", 0, i) + 1
    col = i - (text.rfind("\n", 0, i) + 1) + 1
    return line, col


def show(r):
    return "exit %s\n--- stdout:\n%s--- stderr:\n%s" % (r.returncode, r.stdout, r.stderr)


# ---------------------------------------------------------------- -V -h

@h.test("-V prints 'sidepool 0.1.0' on stdout and exits 0")
def version():
    r, _ = h.run_sidepool(["-V"])
    assert r.returncode == 0, show(r)
    assert re.search(r"\bsidepool 0\.1\.0\b", r.stdout), show(r)


@h.test("-h prints usage on stdout and exits 0")
def usage():
    r, _ = h.run_sidepool(["-h"])
    assert r.returncode == 0, show(r)
    assert re.search(r"usage", r.stdout, re.I), show(r)
    assert "-c" in r.stdout and "-t" in r.stdout, "usage does not mention -c and -t\n" + show(r)


@h.test("an unknown option prints usage on stderr and exits 1 or 2")
def unknown_option():
    r, _ = h.run_sidepool(["-Z"])
    assert r.returncode in (1, 2), show(r)
    assert re.search(r"usage", r.stderr, re.I), show(r)
    r, _ = h.run_sidepool(["--no-such-option"])
    assert r.returncode in (1, 2), show(r)


# ---------------------------------------------------------------- -t

@h.test("-t with a valid config exits 0 and says the file is valid")
def test_valid():
    text = valid_config()
    t0 = time.monotonic()
    r, path = h.run_sidepool(["-t", "-c", "{config}"], config_text=text)
    assert r.returncode == 0, show(r)
    out = r.stdout + r.stderr
    assert re.search(r"\bvalid\b", out, re.I) and not re.search(r"invalid", out, re.I), show(r)
    assert path in out, "message does not name the file %s\n%s" % (path, show(r))
    assert time.monotonic() - t0 < h.scale(5), "-t took %.1fs" % (time.monotonic() - t0)


@h.test("-t refuses an upstream with two servers (no sharding yet), naming file:line:col")
def test_two_servers_refused():
    text = valid_config().replace("servers: [127.0.0.1:", "servers: [127.0.0.1:1, 127.0.0.1:")
    r, path = h.run_sidepool(["-t", "-c", "{config}"], config_text=text)
    assert r.returncode == 1, show(r)
    line, col = pos(text, "redis:", 0)
    assert "%s:%d:%d:" % (path, line, col) in r.stderr, show(r)
    assert "2 servers" in r.stderr and "one server" in r.stderr, show(r)


@h.test("-t does not bind the listeners (a port in use is not an error for -t)")
def test_does_not_bind():
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        text = valid_config(port=busy.getsockname()[1])
        r, _ = h.run_sidepool(["-c", "{config}", "-t"], config_text=text)
        assert r.returncode == 0, show(r)
    finally:
        busy.close()


@h.test("-t accepts workers: auto and the minimal listener/upstream")
def test_valid_minimal():
    text = ("workers: auto\n"
            "listeners:\n"
            "  - listen: 127.0.0.1:%d\n"
            "    upstream: r\n"
            "upstreams:\n"
            "  r:\n"
            "    protocol: redis\n"
            "    servers: [127.0.0.1:%d]\n" % (h.free_port(), h.free_port()))
    r, _ = h.run_sidepool(["-t", "-c", "{config}"], config_text=text)
    assert r.returncode == 0, show(r)


def broken(name, text, needle, words, col_needles=None, nth=0, startup=False):
    """A test: -t on text fails with exit 1 and an error at the line of
    needle (the column of needle or one of col_needles), containing one of
    words (case-insensitive)."""
    def fn():
        args = ["-c", "{config}"] if startup else ["-t", "-c", "{config}"]
        r, path = h.run_sidepool(args, config_text=text, timeout=10)
        assert r.returncode == 1, "expected exit 1\n" + show(r)
        line, col = pos(text, needle, nth)
        cols = {col}
        for n in col_needles or ():
            cols.add(pos(text, n, nth)[1])
        found = re.findall(re.escape(path) + r":(\d+):(\d+):(.*)", r.stderr)
        assert found, "stderr has no '%s:LINE:COL: message'\n%s" % (path, show(r))
        at_line = [f for f in found if int(f[0]) == line]
        assert at_line, "expected an error at line %d (%r), got lines %s\n%s" % (
            line, needle, [int(f[0]) for f in found], show(r))
        assert any(int(f[1]) in cols for f in at_line), \
            "expected column %s at line %d, got %s\n%s" % (
                sorted(cols), line, [int(f[1]) for f in at_line], show(r))
        msgs = " ".join(f[2] for f in at_line)
        assert any(w.lower() in msgs.lower() for w in words), \
            "error at line %d does not mention any of %s\n%s" % (line, words, show(r))
        assert r.stdout.strip() == "" or not re.search(r"\bis valid\b", r.stdout), show(r)
    h.add_test("%s %s: exit 1, FILE:LINE:COL at the right place" % (
        "start with" if startup else "-t", name), fn)


BASE = valid_config()

broken("unknown top-level key",
       BASE.replace("shutdown_timeout: 5s\n", "shutdown_timeout: 5s\nbogus_key: 1\n"),
       "bogus_key", ["bogus_key"])

broken("unknown key inside an upstream",
       BASE.replace("    connect_timeout: 1s\n", "    conect_timeout: 1s\n"),
       "conect_timeout", ["conect_timeout"])

broken("unknown key inside a pool mapping",
       BASE.replace("max_connections: 8", "max_conns: 8"),
       "max_conns", ["max_conns"])

broken("bad listener address",
       BASE.replace("  - listen: 127.0.0.1:", "  - listen: 127.0.0.1:notaport"),
       "127.0.0.1:notaport", ["address", "port", "notaport"], col_needles=["listen: 127"])

broken("bad port number in a server address",
       re.sub(r"servers: \[127\.0\.0\.1:\d+\]", "servers: [127.0.0.1:99999]", BASE),
       "127.0.0.1:99999", ["address", "port", "99999"])

broken("listener refers to a missing upstream",
       BASE.replace("    upstream: redis\n", "    upstream: nosuch\n", 1),
       "nosuch", ["nosuch"], col_needles=["upstream: nosuch"])

broken("listener without an upstream",
       BASE.replace("    upstream: redis\n", "", 1),
       "listen: 127", ["upstream"], col_needles=["- listen: 127"])

broken("YAML syntax error",
       BASE.replace("workers: 2\n", "workers: 2: 3\n"),
       "workers: 2: 3", ["yaml", "syntax", "mapping values"],
       col_needles=[": 3", "2: 3"])

broken("bad duration",
       BASE.replace("request_timeout: 5s", "request_timeout: 5 parsecs"),
       "5 parsecs", ["request_timeout", "duration"], col_needles=["request_timeout: 5 p"])

broken("bad workers value",
       BASE.replace("workers: 2\n", "workers: lots\n"),
       "lots", ["workers"], col_needles=["workers: lots"])

broken("an unknown key (no -t: refused the same way)",
       BASE.replace("shutdown_timeout: 5s\n", "shutdown_timeout: 5s\nbogus_key: 1\n"),
       "bogus_key", ["bogus_key"], startup=True)


@h.test("-t on a missing config file: exit 1, the path in the message")
def missing_file():
    path = os.path.join(h.mkdtemp("sp-cli-"), "no-such-file.yml")
    r, _ = h.run_sidepool(["-t", "-c", path])
    assert r.returncode == 1, show(r)
    assert path in r.stderr, "stderr does not name %s\n%s" % (path, show(r))


@h.test("starting with a missing config file: exit 1, the path in the message")
def missing_file_start():
    path = os.path.join(h.mkdtemp("sp-cli-"), "no-such-file.yml")
    r, _ = h.run_sidepool(["-c", path])
    assert r.returncode == 1, show(r)
    assert path in r.stderr, "stderr does not name %s\n%s" % (path, show(r))


@h.test("a listener address already in use: exits non-zero fast, naming the address")
def address_in_use():
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    try:
        cfg = h.redis_config(["127.0.0.1:%d" % h.free_port()], listen=["127.0.0.1:%d" % port])
        t0 = time.monotonic()
        code, out = h.Sidepool(cfg, start=False).run_to_exit(10)
        dt = time.monotonic() - t0
        assert code != 0, "sidepool exited 0 although the port is taken\n" + out
        assert dt < h.scale(3), "took %.1fs to give up" % dt
        assert "127.0.0.1:%d" % port in out, "stderr does not name 127.0.0.1:%d\n%s" % (
            port, out)
        # and our socket was left alone
        c = h.connect("127.0.0.1:%d" % port, 2)
        c.close()
    finally:
        busy.close()


if __name__ == "__main__":
    h.run()
