#!/usr/bin/env python3
"""
test_redis_proxy.py - sidepool in front of a healthy redis-server: real
clients over TCP and unix sockets, inline commands, many concurrent
pipelining clients, big and binary values, the commands sidepool refuses or
answers itself, protocol errors, and the bound on backend connections.
"""

import hashlib
import os
import random
import re
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

h.require_tools("redis-server", "redis-cli")

WORKERS = 2
RUN = "%x" % random.getrandbits(32)  # key prefix of this run


@h.shared
def proxy():
    """One redis and one sidepool (TCP listener 0, unix listener 1)."""
    r = h.RedisServer()
    sp = h.Sidepool(h.redis_config([r], listen=[h.AUTO_TCP, h.AUTO_UNIX], workers=WORKERS,
                                   request_timeout="20s"))
    return r, sp


def key(*parts):
    return "%s:%s" % (RUN, ":".join(str(p) for p in parts))


def expect(reply, want, what=""):
    assert reply == want, "%s: expected %r, got %r" % (what, want, reply)


# ---------------------------------------------------------------- real clients

def cli_session(sp, listener):
    k = key("cli", listener)
    steps = [
        (("SET", k, "hello"), "OK"),
        (("GET", k), "hello"),
        (("DEL", k), "1"),
        (("INCR", k), "1"),
        (("INCR", k), "2"),
        (("DEL", k), "1"),
        (("LPUSH", k, "a", "b", "c"), "3"),
        (("LRANGE", k, "0", "-1"), "c\nb\na"),
        (("DEL", k), "1"),
        (("GET", k), ""),
    ]
    for args, want in steps:
        r = sp.cli(*args, listener=listener)
        got = r.stdout.strip()
        assert r.returncode == 0 and got == want, \
            "redis-cli %s: expected %r, got exit %s stdout %r stderr %r" % (
                " ".join(args), want, r.returncode, r.stdout, r.stderr)


@h.test("redis-cli through the TCP listener: SET/GET/INCR/LPUSH/LRANGE/DEL")
def cli_tcp():
    _, sp = proxy()
    cli_session(sp, 0)


@h.test("redis-cli through the unix socket listener: SET/GET/INCR/LPUSH/LRANGE/DEL")
def cli_unix():
    _, sp = proxy()
    cli_session(sp, 1)


# ---------------------------------------------------------------- inline

@h.test("inline commands: SET k v / GET k, quoted arguments, LF-only lines")
def inline():
    r, sp = proxy()
    k = key("inline")
    with sp.client() as c:
        c.send(("SET %s v\r\nGET %s\r\n" % (k, k)).encode())
        expect(c.read_replies(2), ["OK", b"v"], "SET k v / GET k inline")
        # double quotes with escapes, single quotes, spaces inside
        c.send(('SET "%s q" "a b\\r\\n\\x41\\"z"\r\n' % k).encode())
        expect(c.read_reply(), "OK", "inline SET with double-quoted args")
        expect(c.call("GET", k + " q"), b'a b\r\nA"z', "value set by quoted inline SET")
        c.send(("SET '%s s' 'it\\'s here'\r\n" % k).encode())
        expect(c.read_reply(), "OK", "inline SET with single-quoted args")
        expect(r.call("GET", k + " s"), b"it's here", "value in redis after single-quoted SET")
        # a line ending in LF only, then a multibulk request right after it
        c.send(("GET %s\n" % k).encode() + h.encode("PING"))
        expect(c.read_replies(2), [b"v", "PONG"], "LF-only inline then multibulk")
        # inline pipelined with multibulk, many at once
        data = b"".join(("INCR %s\r\n" % key("inl-n")).encode() + h.encode("INCR", key("inl-n"))
                        for _ in range(50))
        expect(c.send_and_read(data, 100), list(range(1, 101)), "100 mixed inline/multibulk INCRs")


# ---------------------------------------------------------------- concurrency

@h.test("200 concurrent clients each pipelining 100 SET+GET get their own replies in order",
        timeout=60)
def concurrent_pipelines():
    _, sp = proxy()
    n_clients, n_req = 200, 100

    def client(i):
        cmds = []
        want = []
        for j in range(n_req):
            k = key("cc", i, j)
            v = "v_%d_%d_%s" % (i, j, "x" * (j % 37))
            cmds.append(("SET", k, v))
            cmds.append(("GET", k))
            want += ["OK", v.encode()]
        with h.RespClient(sp.addr(i % 2), timeout=30) as c:
            got = c.pipeline(cmds)
        for idx, (g, w) in enumerate(zip(got, want)):
            if g != w:
                raise AssertionError("client %d reply %d (%r): expected %r, got %r" % (
                    i, idx, cmds[idx][:2], w, g))
        return True

    h.run_threads(client, n_clients, h.scale(50), name="client")


@h.test("10000 pipelined INCRs on one connection come back 1..10000 in order")
def long_pipeline():
    _, sp = proxy()
    k = key("longpipe")
    with sp.client(timeout=30) as c:
        got = c.pipeline([("INCR", k)] * 10000)
    bad = [(i, g) for i, g in enumerate(got) if g != i + 1]
    assert not bad, "first wrong replies: %r" % bad[:5]


@h.test("a 64 MB value SET then GET through the proxy is byte-identical", timeout=60)
def big_value():
    r, sp = proxy()
    k = key("big")
    data = os.urandom(64 << 20)
    want = hashlib.sha256(data).hexdigest()
    with sp.client(timeout=40) as c:
        expect(c.call("SET", k, data), "OK", "SET of 64 MB")
        expect(c.call("STRLEN", k), len(data), "STRLEN after SET")
        got = c.call("GET", k)
        assert isinstance(got, bytes), "GET returned %r" % (got[:100],)
        assert len(got) == len(data), "GET returned %d bytes, want %d" % (len(got), len(data))
        assert hashlib.sha256(got).hexdigest() == want, "GET returned different bytes"
        expect(c.call("DEL", k), 1, "DEL")
        expect(c.call("PING"), "PONG", "PING after the big value")


@h.test("binary-safe keys and values (all 256 byte values, CRLF and RESP inside)")
def binary_safe():
    r, sp = proxy()
    k = key("bin").encode() + bytes(range(256)) + b"\r\n"
    v = bytes(range(256)) * 4 + b"\r\n*1\r\n$3\r\nGET\r\n" + b"\x00" * 10 + b"\r"
    with sp.client() as c:
        expect(c.call("SET", k, v), "OK", "SET binary")
        expect(c.call("GET", k), v, "GET binary")
        expect(c.call("STRLEN", k), len(v), "STRLEN binary")
        expect(c.call("EXISTS", k), 1, "EXISTS binary key")
        # empty key and empty value too
        expect(c.call("SET", b"", b""), "OK", "SET empty key")
        expect(c.call("GET", b""), b"", "GET empty key")
        expect(c.call("DEL", b""), 1, "DEL empty key")
    expect(r.call("GET", k), v, "value as redis itself has it")


# ---------------------------------------------------------------- refused commands

# Session commands (SELECT, AUTH, MULTI, SUBSCRIBE, BLPOP...) are supported
# since the stateful-Redis work (see test_redis_sessions.py). What remains
# refused acts on other clients, on the server's role, or needs a client's
# own connection in ways a proxy cannot give (replies turned off, tracking).
STATEFUL = [
    ("CLIENT", "TRACKING", "on"),
    ("client", "reply", "off"),
    ("CLIENT", "KILL", "ID", "1"),
    ("CLIENT", "PAUSE", "10"),
    ("CLIENT", "NO-EVICT", "on"),
    ("SHUTDOWN", "NOSAVE"),
    ("SYNC",),
    ("PSYNC", "?", "-1"),
    ("DEBUG", "SLEEP", "0"),
    ("REPLICAOF", "NO", "ONE"),
    ("READONLY",),
]


# redis-server itself answers these with an error naming the command: the
# proxy's refusal must be a different error (not the forwarded one).
REDIS_ERRORS_TOO = ("readonly",)


def refused(cmd):
    def fn():
        r, sp = proxy()
        with sp.client(timeout=3) as c:
            got = c.call(*cmd)
            assert isinstance(got, h.Error) and got.startswith("ERR"), \
                "%s: expected an -ERR reply, got %r" % (" ".join(cmd), got)
            assert cmd[0].lower() in got.lower(), \
                "%s: error does not name the command: %r" % (" ".join(cmd), got)
            if cmd[0].lower() in REDIS_ERRORS_TOO:
                direct = r.call(*cmd)
                assert got != direct, "%s: the error is redis-server's own (forwarded): %r" % (
                    " ".join(cmd), got)
            expect(c.call("PING"), "PONG", "PING after %s on the same connection" % cmd[0])
            # and the connection still reaches redis
            expect(c.call("SET", key("after", cmd[0]), "1"), "OK", "SET after %s" % cmd[0])
    h.add_test("%s is refused with -ERR naming it; the connection stays usable" % " ".join(cmd),
               fn, timeout=15)


for _cmd in STATEFUL:
    refused(_cmd)


@h.test("a refused command inside a pipeline keeps every reply in order")
def refused_in_pipeline():
    _, sp = proxy()
    k = key("refpipe")
    with sp.client() as c:
        got = c.pipeline([("SET", k, "1"), ("CLIENT", "REPLY", "OFF"), ("GET", k),
                          ("SHUTDOWN",), ("INCR", k), ("CLIENT", "TRACKING", "ON"),
                          ("GET", k)])
    assert len(got) == 7
    expect(got[0], "OK", "reply 1 (SET)")
    assert isinstance(got[1], h.Error) and "reply" in got[1].lower(), "reply 2: %r" % got[1]
    expect(got[2], b"1", "reply 3 (GET)")
    assert isinstance(got[3], h.Error) and "shutdown" in got[3].lower(), "reply 4: %r" % got[3]
    expect(got[4], 2, "reply 5 (INCR)")
    assert isinstance(got[5], h.Error) and "tracking" in got[5].lower(), "reply 6: %r" % got[5]
    expect(got[6], b"2", "reply 7 (GET)")


@h.test("a refused command sent inline is refused the same way")
def refused_inline():
    _, sp = proxy()
    with sp.client(timeout=3) as c:
        c.send(b"client tracking on\r\nSHUTDOWN nosave\r\nPING\r\n")
        got = c.read_replies(3)
    assert isinstance(got[0], h.Error) and "tracking" in got[0].lower(), "inline: %r" % got[0]
    assert isinstance(got[1], h.Error) and "shutdown" in got[1].lower(), \
        "inline SHUTDOWN: %r" % got[1]
    expect(got[2], "PONG", "PING after")


@h.test("redis' own error replies pass through unchanged")
def errors_pass_through():
    r, sp = proxy()
    k = key("wrongtype")
    r.call("LPUSH", k, "x")
    cmds = [("NOSUCHCOMMAND", "a"), ("GET", k), ("INCR", k), ("SET",), ("INCRBY", key("n"), "x")]
    with r.client() as d:
        direct = d.pipeline(cmds)
    with sp.client() as c:
        got = c.pipeline(cmds)
    assert all(isinstance(x, h.Error) for x in direct), direct
    expect(got, direct, "errors through the proxy vs straight from redis")


@h.test("big and nested replies: 100000-element LRANGE, XRANGE, 10000-key MSET/MGET",
        timeout=60)
def big_replies():
    r, sp = proxy()
    k = key("biglist")
    with sp.client(timeout=30) as c:
        for start in range(0, 100000, 10000):
            c.call_ok("RPUSH", k, *[str(i) for i in range(start, start + 10000)])
        got = c.call("LRANGE", k, 0, -1)
        assert isinstance(got, list) and len(got) == 100000, "LRANGE: %d elements" % len(got)
        assert got[0] == b"0" and got[-1] == b"99999" and got[54321] == b"54321", "LRANGE content"
        xs = key("xs2")
        for i in range(3):
            c.call_ok("XADD", xs, "%d-1" % (i + 1), "f%d" % i, "v%d" % i, "g", "h")
        got = c.call("XRANGE", xs, "-", "+")
        expect(got, [[("%d-1" % (i + 1)).encode(), [("f%d" % i).encode(), ("v%d" % i).encode(),
                                                   b"g", b"h"]] for i in range(3)], "XRANGE")
        args = []
        for i in range(10000):
            args += [key("mset", i), "val%d" % i]
        expect(c.call("MSET", *args), "OK", "MSET of 10000 keys")
        got = c.call("MGET", *[key("mset", i) for i in range(10000)])
        assert got == [("val%d" % i).encode() for i in range(10000)], "MGET differs"


@h.test("stateless look-alikes are forwarded: XREAD without BLOCK, LPOP")
def stateless_lookalikes():
    r, sp = proxy()
    k = key("xs")
    with sp.client() as c:
        c.call_ok("XADD", k, "*", "f", "v")
        got = c.call("XREAD", "COUNT", "1", "STREAMS", k, "0")
        assert isinstance(got, list) and got and got[0][0] == k.encode(), "XREAD: %r" % (got,)
        c.call_ok("RPUSH", k + "l", "a")
        expect(c.call("LPOP", k + "l"), b"a", "LPOP")


# ---------------------------------------------------------------- local answers

@h.test("PING, PING msg, ECHO msg answered; QUIT answers +OK and closes")
def ping_echo_quit():
    _, sp = proxy()
    with sp.client(timeout=3) as c:
        expect(c.call("PING"), "PONG", "PING")
        expect(c.call("PING", "hello world"), b"hello world", "PING msg")
        expect(c.call("ECHO", b"bin\x00\r\nary"), b"bin\x00\r\nary", "ECHO binary")
        expect(c.call("echo", ""), b"", "echo empty")
        c.send(b"PING\r\n")
        expect(c.read_reply(), "PONG", "inline PING")
        expect(c.call("QUIT"), "OK", "QUIT")
        assert c.is_closed(3), "connection still open 3s after QUIT"


@h.test("QUIT after pipelined requests: every earlier reply, then +OK, then close")
def quit_pipelined():
    _, sp = proxy()
    k = key("quitpipe")
    with sp.client(timeout=5) as c:
        c.send(h.encode_many([("SET", k, "1"), ("INCR", k), ("PING",), ("GET", k), ("QUIT",),
                              ("INCR", k)]))
        expect(c.read_replies(5), ["OK", 2, "PONG", b"2", "OK"], "replies up to QUIT")
        data, closed = c.read_raw(3)
        assert closed and data == b"", "after QUIT: closed=%s, extra bytes %r" % (closed, data)
    r, _ = proxy()
    expect(r.call("GET", k), b"2", "the INCR after QUIT must not have run")


@h.test("PING/ECHO are answered by sidepool itself (backend down)")
def local_without_backend():
    sp = h.Sidepool(h.redis_config(["127.0.0.1:%d" % h.free_port()], listen=[h.AUTO_TCP]))
    with sp.client(timeout=3) as c:
        expect(c.call("PING"), "PONG", "PING with no backend")
        expect(c.call("ECHO", "x"), b"x", "ECHO with no backend")
        got = c.call("GET", "k")
        assert isinstance(got, h.Error) and got.startswith("ERR sidepool"), "GET: %r" % got
        expect(c.call("PING"), "PONG", "PING after a backend error")


# ---------------------------------------------------------------- empty requests

@h.test("'*0', '*-1' and empty inline lines are ignored; the next command is answered")
def empty_requests():
    _, sp = proxy()
    with sp.client(timeout=3) as c:
        c.send(b"*0\r\n\r\n\n*-1\r\n\r\n" + h.encode("PING") + b"*0\r\n" + b"\r\n" +
               h.encode("ECHO", "after"))
        data = b""
        want = b"+PONG\r\n$5\r\nafter\r\n"
        deadline = time.monotonic() + h.scale(3)
        while len(data) < len(want) and time.monotonic() < deadline:
            more, closed = c.read_raw(deadline - time.monotonic(), until_closed=False)
            data += more
            if closed:
                break
        assert data == want, "expected %r, got %r" % (want, data)
        # nothing extra arrives for the ignored requests
        expect(c.call("PING"), "PONG", "PING after")


# ---------------------------------------------------------------- protocol errors

PROTO_ERRORS = [
    ("invalid multibulk length", b"*abc\r\n",
     b"-ERR Protocol error: invalid multibulk length\r\n"),
    ("expected '$'", b"*1\r\nx\r\n",
     b"-ERR Protocol error: expected '$', got 'x'\r\n"),
    ("unbalanced quotes inline", b'SET "a b\r\n',
     b"-ERR Protocol error: unbalanced quotes in request\r\n"),
    ("invalid bulk length", b"*1\r\n$abc\r\n",
     b"-ERR Protocol error: invalid bulk length\r\n"),
    ("multibulk length too large", b"*3000000000\r\n",
     b"-ERR Protocol error: invalid multibulk length\r\n"),
    ("bulk length over 512 MB", b"*2\r\n$3\r\nGET\r\n$600000000\r\n",
     b"-ERR Protocol error: invalid bulk length\r\n"),
    ("negative bulk length", b"*1\r\n$-5\r\n",
     b"-ERR Protocol error: invalid bulk length\r\n"),
    # redis-server: "too big inline request" past 64 KB without a newline;
    # only the prefix is asserted here
    ("inline request over 64 KB", b"GET " + b"x" * (128 * 1024),
     b"-ERR Protocol error: "),
]


def proto_error(name, payload, want):
    def fn():
        _, sp = proxy()
        k = key("bystander", name)
        with sp.client(timeout=3) as other, sp.client(timeout=3) as bad:
            expect(other.call("SET", k, "1"), "OK", "bystander SET")
            # a good request first: its reply must come before the error
            bad.send(h.encode("PING") + payload)
            data, closed = bad.read_raw(3)
            if want.endswith(b": "):  # prefix only
                ok = data.startswith(b"+PONG\r\n" + want) and data.endswith(b"\r\n") \
                    and data.count(b"\r\n") == 2
            else:
                ok = data == b"+PONG\r\n" + want
            assert ok and closed, \
                "sent %r after PING: expected %r then close; got %r, closed=%s" % (
                    payload, b"+PONG\r\n" + want, data, closed)
            expect(other.call("INCR", k), 2, "bystander INCR after the bad client")
            expect(other.call("PING"), "PONG", "bystander PING")
    h.add_test("protocol error (%s): -ERR Protocol error, client closed, another client "
               "unaffected" % name, fn, timeout=15)


for _pe in PROTO_ERRORS:
    proto_error(*_pe)


@h.test("a forwarded request before a protocol error still gets its reply")
def forwarded_then_garbage():
    _, sp = proxy()
    k = key("fwdgarbage")
    with sp.client(timeout=5) as c:
        c.send(h.encode("SET", k, "x") + h.encode("GET", k) + b"*abc\r\n")
        data, closed = c.read_raw(5)
        want = b"+OK\r\n$1\r\nx\r\n-ERR Protocol error: invalid multibulk length\r\n"
        assert data == want and closed, "expected %r then close; got %r closed=%s" % (
            want, data, closed)


@h.test("requests split at every byte (a slow client) are parsed the same")
def byte_by_byte():
    _, sp = proxy()
    k = key("split")
    data = (h.encode("SET", k, "a\r\nb") + ("GET %s\r\n" % k).encode() + h.encode("PING")
            + b"*0\r\n" + h.encode("APPEND", k, "x" * 300) + h.encode("STRLEN", k)
            + b'ECHO "q \\x41"\r\n')
    with sp.client(timeout=10) as c:
        for i in range(len(data)):
            c.send(data[i:i + 1])
        got = c.read_replies(6)
    expect(got, ["OK", b"a\r\nb", "PONG", 304, 304, b"q A"], "replies to byte-by-byte requests")


@h.test("a client that reads slowly still gets every byte of 64 x 1 MB replies", timeout=60)
def slow_reader():
    r, sp = proxy()
    k = key("slow")
    val = os.urandom(1 << 20)
    r.call("SET", k, val)
    with sp.client(timeout=30) as c:
        c.sock.setsockopt(h.socket.SOL_SOCKET, h.socket.SO_RCVBUF, 65536)
        c.send(h.encode_many([("GET", k)] * 64) + h.encode("PING"))
        # let the proxy fill its buffers towards us before reading anything
        h.poll_until(lambda: h.tcp_recv_queue(c.sock.getsockname()[1]) > 0, h.scale(5),
                     what="replies to start arriving")
        got = []
        while len(got) < 65:
            chunk = c.sock.recv(16384)
            if not chunk:
                raise AssertionError("closed after %d replies" % len(got))
            c.reader.feed(chunk)
            while True:
                v = c.reader.get()
                if v is h.RespReader.NOTHING:
                    break
                got.append(v)
    bad = [i for i, g in enumerate(got[:64]) if g != val]
    assert not bad, "replies %s differ from the value" % bad[:10]
    expect(got[64], "PONG", "PING after the big replies")


@h.test("requests then a half-close (shutdown SHUT_WR): every reply is still delivered")
def half_close():
    # a fresh daemon: its pools are cold, so the client's EOF arrives while
    # the replies are still owed
    r = h.RedisServer()
    sp = h.Sidepool(h.redis_config([r], listen=[h.AUTO_TCP, h.AUTO_UNIX], workers=WORKERS))
    k = key("halfclose")
    want = b"+OK\r\n:2\r\n+PONG\r\n$1\r\n2\r\n:3\r\n"
    for addr in (sp.addr(0), sp.addr(1)):
        with h.RespClient(addr, timeout=5) as c:
            c.send(h.encode_many([("SET", k, "1"), ("INCR", k), ("PING",), ("GET", k)]) +
                   b"INCR %s\r\n" % k.encode())
            c.sock.shutdown(h.socket.SHUT_WR)
            data, closed = c.read_raw(5)
            assert data == want, "via %s: sent SET, INCR, PING, GET, inline INCR then SHUT_WR; " \
                "expected %r then close, got %r (closed=%s)" % (addr, want, data, closed)
            assert closed, "connection not closed after the replies"


@h.test("a half-close while a request waits on a stopped redis: the reply still arrives")
def half_close_in_flight():
    r = h.RedisServer()
    sp = h.Sidepool(h.redis_config([r], workers=WORKERS))
    with sp.client(timeout=10) as c:
        expect(c.call("SET", "hc", "v"), "OK", "SET")
        r.pause()
        c.send(h.encode("GET", "hc"))
        h.poll_until(lambda: h.tcp_recv_queue(r.port) > 0, h.scale(5),
                     what="the GET to reach the stopped redis")
        c.sock.shutdown(h.socket.SHUT_WR)
        # the daemon sees the EOF in its own time; nothing outside shows when
        time.sleep(h.scale(0.2))
        r.resume()
        data, closed = c.read_raw(5)
        assert data == b"$1\r\nv\r\n" and closed, \
            "GET in flight, then SHUT_WR: expected the reply then close, got %r (closed=%s)" % (
                data, closed)


@h.test("1000 short-lived client connections open only a few backend connections", timeout=60)
def connection_churn():
    r = h.RedisServer()
    max_conn = 4
    sp = h.Sidepool(h.redis_config([r], listen=[h.AUTO_TCP, h.AUTO_UNIX], workers=WORKERS,
                                   pool={"size": 4, "max_connections": max_conn,
                                         "idle_timeout": "60s"}))

    def received():
        info = r.call("INFO", "stats").decode()
        return int(re.search(r"total_connections_received:(\d+)", info).group(1))

    before = received()

    def worker(t):
        for j in range(100):
            with h.RespClient(sp.addr(j % 2), timeout=10) as c:
                k = key("churn", t, j)
                got = c.pipeline([("SET", k, str(j)), ("GET", k)])
                if got != ["OK", str(j).encode()]:
                    raise AssertionError("thread %d conn %d: %r" % (t, j, got))

    h.run_threads(worker, 10, h.scale(50), name="thread")
    # each received() call is itself one connection
    opened = received() - before - 1
    h.diag("redis saw %d new connections for 1000 client connections" % opened)
    assert opened <= WORKERS * max_conn, \
        "redis received %d connections (limit %d workers x %d)" % (opened, WORKERS, max_conn)


# ---------------------------------------------------------------- disconnects

@h.test("replies for a client that left mid-pipeline never reach another client")
def abandoned_pipeline():
    r, sp = proxy()
    big = key("abandon-big")
    r.call("SET", big, b"B" * 200000)
    for it in range(20):
        c = sp.client(timeout=5)
        c.send(h.encode_many([("GET", big)] * 200))
        c.close()
        with sp.client(timeout=10) as d:
            k = key("abandon", it)
            got = d.pipeline([("SET", k, "mine-%d" % it), ("GET", k), ("PING",), ("GET", k)])
            expect(got, ["OK", ("mine-%d" % it).encode(), "PONG", ("mine-%d" % it).encode()],
                   "iteration %d after a client left with 200 GETs of 200 KB in flight" % it)


# ---------------------------------------------------------------- backend connection bound

@h.test("CLIENT LIST never shows more than workers x max_connections sidepool connections "
        "while 100 clients come and go in waves", timeout=60)
def backend_connection_bound():
    r = h.RedisServer()
    max_conn = 3
    sp = h.Sidepool(h.redis_config([r], listen=[h.AUTO_TCP, h.AUTO_UNIX], workers=WORKERS,
                                   pool={"size": 2, "max_connections": max_conn,
                                         "idle_timeout": "60s"},
                                   request_timeout="20s"))
    limit = WORKERS * max_conn
    samples = []
    seen = []  # the CLIENT LIST rows of a sample over the limit
    stop = threading.Event()
    sampler_err = []

    def sampler():
        try:
            while not stop.is_set():
                rows = r.client_list()
                samples.append(len(rows))
                if len(rows) > limit:
                    seen.append(rows)
        except Exception as e:  # noqa: BLE001
            sampler_err.append(e)

    t = threading.Thread(target=sampler, daemon=True)
    t.start()
    try:
        for wave in range(4):
            def client(i, wave=wave):
                k = key("wave", wave, i)
                cmds = [("SET", k, "v%d" % i)] + [("INCR", k + "n")] * 30 + [("GET", k)]
                with h.RespClient(sp.addr(i % 2), timeout=30) as c:
                    got = c.pipeline(cmds)
                want = ["OK"] + list(range(1, 31)) + [("v%d" % i).encode()]
                if got != want:
                    raise AssertionError("wave %d client %d: got %r" % (wave, i, got[:5]))
            # (no CLIENT LIST here: two at once each see the other
            # redis-cli's connection, a false extra one)
            h.run_threads(client, 100, h.scale(30), name="client")
    finally:
        stop.set()
        t.join(10)
    assert not sampler_err, "CLIENT LIST sampling failed: %r" % sampler_err
    h.diag("%d CLIENT LIST samples; max %d sidepool connections (limit %d)" % (
        len(samples), max(samples), limit))
    assert samples and max(samples) > 0, "never saw a sidepool connection in CLIENT LIST"
    assert max(samples) <= limit, "saw %d backend connections, limit %d x %d = %d: %r" % (
        max(samples), WORKERS, max_conn, limit, seen[:1])


# ---------------------------------------------------------------- redis-benchmark

@h.test("redis-benchmark through the proxy runs without errors", timeout=60)
def benchmark():
    if not h.which("redis-benchmark"):
        raise h.Skip("redis-benchmark not found")
    _, sp = proxy()
    host, port = h.parse_addr(sp.addr(0))[1]
    r = h.subprocess.run(
        ["redis-benchmark", "-h", host, "-p", str(port),
         "-t", "ping,set,get,incr,lpush,rpush,lpop,rpop,sadd,hset,spop,lrange,mset",
         "-c", "50", "-n", "2000", "-q"],
        capture_output=True, text=True, errors="replace", timeout=h.scale(50),
        stdin=h.subprocess.DEVNULL)
    out = r.stdout + r.stderr
    errors = [ln for ln in out.splitlines() if re.search(r"\berr|error", ln, re.I)]
    assert r.returncode == 0 and not errors, "redis-benchmark exit %s, error lines:\n%s\n%s" % (
        r.returncode, "\n".join(errors[:20]), out[-2000:])
    assert "requests per second" in out, "no results:\n" + out[-2000:]


if __name__ == "__main__":
    h.run()
