#!/usr/bin/env python3
"""
test_listeners.py - listening sockets: stale unix socket files are replaced,
live ones and other files are never taken over, unix socket modes, IPv6,
several listeners on one upstream, listeners routed to their own upstream.
"""

import os
import socket
import stat
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

h.require_tools("redis-server", "redis-cli")


@h.shared
def redis():
    return h.RedisServer()


def roundtrip(addr, tag):
    with h.RespClient(addr, timeout=5) as c:
        k = "listeners:%s" % tag
        got = c.pipeline([("SET", k, tag), ("GET", k), ("PING",)])
    assert got == ["OK", tag.encode(), "PONG"], "%s via %s: got %r" % (tag, addr, got)


def start_fails(cfg, timeout=5.0):
    """Run sidepool on cfg expecting it to exit by itself, non-zero, fast.
    Returns (exit code, its output)."""
    return h.Sidepool(cfg, start=False).run_to_exit(timeout)


@h.test("a stale unix socket file (nobody listening) is replaced at start")
def stale_socket():
    d = h.mkdtemp()
    path = os.path.join(d, "stale.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()  # the file stays: a stale socket
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    try:
        h.connect("unix:" + path, 1).close()
        raise AssertionError("the stale socket accepted a connection")
    except ConnectionRefusedError:
        pass
    sp = h.Sidepool(h.redis_config([redis()], listen=["unix:" + path]))
    roundtrip(sp.addr(0), "stale")
    r = sp.cli("PING")
    assert r.stdout.strip() == "PONG", "redis-cli -s: %r %r" % (r.stdout, r.stderr)


@h.test("a live unix socket (another process listening) is not stolen: exit non-zero "
        "with a message")
def live_socket():
    d = h.mkdtemp()
    path = os.path.join(d, "live.sock")
    ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ls.bind(path)
    ls.listen(8)
    ino = os.stat(path).st_ino
    try:
        code, out = start_fails(h.redis_config([redis()], listen=["unix:" + path]))
        assert code != 0, "sidepool started on a socket another process listens on\n" + out
        assert path in out, "the message does not name %s:\n%s" % (path, out)
        assert os.path.exists(path) and os.stat(path).st_ino == ino, \
            "the live socket file was removed or replaced"
        c = h.connect("unix:" + path, 2)
        ls.settimeout(2)
        a, _ = ls.accept()
        a.close()
        c.close()
    finally:
        ls.close()


@h.test("a regular file at the unix socket path is not removed: exit non-zero")
def regular_file():
    d = h.mkdtemp()
    path = os.path.join(d, "not-a-socket")
    with open(path, "w") as f:
        f.write("precious\n")
    code, out = start_fails(h.redis_config([redis()], listen=["unix:" + path]))
    assert code != 0, "sidepool started over a regular file\n" + out
    assert path in out, "the message does not name %s:\n%s" % (path, out)
    with open(path) as f:
        assert f.read() == "precious\n", "the file was changed"


@h.test("a unix socket in a missing directory: exit non-zero naming the path")
def missing_dir():
    path = os.path.join(h.mkdtemp(), "no", "such", "dir.sock")
    code, out = start_fails(h.redis_config([redis()], listen=["unix:" + path]))
    assert code != 0, "sidepool started\n" + out
    assert path in out, "the message does not name %s:\n%s" % (path, out)


@h.test("unix socket modes from the config are applied (0600, 0660, default 0660)")
def socket_modes():
    old = os.umask(0o022)
    try:
        sp = h.Sidepool(h.redis_config([redis()], listen=[
            {"listen": h.AUTO_UNIX, "mode": "0600"},
            {"listen": h.AUTO_UNIX, "mode": "0660"},
            {"listen": h.AUTO_UNIX},
        ]))
    finally:
        os.umask(old)
    want = [0o600, 0o660, 0o660]
    for i, w in enumerate(want):
        path = h.parse_addr(sp.addr(i))[1]
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode), "%s is not a socket" % path
        got = stat.S_IMODE(st.st_mode)
        assert got == w, "listener %d (%s): mode %04o, configured %04o" % (i, path, got, w)
        roundtrip(sp.addr(i), "mode%d" % i)


@h.test("an IPv6 listener on [::1] works")
def ipv6():
    if not h.ipv6_available():
        raise h.Skip("::1 is not available")
    sp = h.Sidepool(h.redis_config([redis()], listen=[h.AUTO_TCP6]))
    roundtrip(sp.addr(0), "ipv6")
    host, port = h.parse_addr(sp.addr(0))[1]
    r = h.redis_cli(["-h", "::1", "-p", str(port), "PING"])
    assert r.stdout.strip() == "PONG", "redis-cli over ::1: %r %r" % (r.stdout, r.stderr)


@h.test("two TCP listeners and a unix listener on one upstream all work")
def several_listeners():
    sp = h.Sidepool(h.redis_config([redis()], listen=[h.AUTO_TCP, h.AUTO_TCP, h.AUTO_UNIX]))
    for i in range(3):
        roundtrip(sp.addr(i), "multi%d" % i)
    # and at the same time, from several connections each
    conns = [h.RespClient(sp.addr(i % 3), timeout=5) for i in range(9)]
    try:
        for i, c in enumerate(conns):
            c.send(h.encode("INCR", "listeners:shared"))
        got = sorted(c.read_reply() for c in conns)
        base = got[0]
        assert got == list(range(base, base + 9)), "INCR replies %r" % got
    finally:
        for c in conns:
            c.close()


@h.test("each listener reaches its own upstream")
def routing():
    r1, r2 = redis(), h.RedisServer()
    cfg = {
        "workers": 2,
        "log": {"level": "info", "file": "stderr"},
        "shutdown_timeout": "5s",
        "listeners": [{"listen": h.AUTO_TCP, "upstream": "one"},
                      {"listen": h.AUTO_UNIX, "upstream": "two"}],
        "upstreams": {
            "one": {"protocol": "redis", "servers": [r1.addr],
                    "pool": {"size": 2, "max_connections": 4, "idle_timeout": "60s"}},
            "two": {"protocol": "redis", "servers": [r2.addr],
                    "pool": {"size": 2, "max_connections": 4, "idle_timeout": "60s"}},
        },
    }
    sp = h.Sidepool(cfg)
    with sp.client(0) as a, sp.client(1) as b:
        assert a.call("SET", "route", "one") == "OK"
        assert b.call("SET", "route", "two") == "OK"
        assert a.call("GET", "route") == b"one"
        assert b.call("GET", "route") == b"two"
    assert r1.call("GET", "route") == b"one", "redis one has %r" % r1.call("GET", "route")
    assert r2.call("GET", "route") == b"two", "redis two has %r" % r2.call("GET", "route")


if __name__ == "__main__":
    h.run()
