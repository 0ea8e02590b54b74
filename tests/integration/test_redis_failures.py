#!/usr/bin/env python3
"""
test_redis_failures.py - what clients see when the backend fails: redis
killed with requests in flight, restarted on the same port, nothing
listening, connects that hang, a stopped (SIGSTOP) server, connections
killed by the server, and a server that answers garbage or closes
mid-reply. Each request gets its reply or "-ERR sidepool: ...", quickly;
client connections survive; the daemon stays up.
"""

import os
import random
import sys
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

h.require_tools("redis-server", "redis-cli")

RUN = "%x" % random.getrandbits(32)

# Seconds within which clients must be served again once a server that was
# down for a moment is back. The reconnect backoff starts at 250ms and
# doubles per failed retry: one outage of a fraction of a second costs a
# retry or two, not the backoff's cap.
RECOVERY = 4


def sidepool_error(v):
    return isinstance(v, h.Error) and v.startswith("ERR sidepool")


def check_pair(i, set_reply, get_reply, value, what):
    """SET k v then GET k (pipelined) while the backend fails: SET is +OK or
    a sidepool error; GET is v, nil (the server lost it) or a sidepool error,
    never anything else."""
    if set_reply != "OK" and not sidepool_error(set_reply):
        raise AssertionError("%s: SET got %r" % (what, set_reply))
    if get_reply not in (value, None) and not sidepool_error(get_reply):
        raise AssertionError("%s: GET got %r, want %r, nil or -ERR sidepool" % (
            what, get_reply, value))


class Load:
    """n clients, each on one connection for the whole test, pipelining
    batches of SET/GET pairs and checking every reply."""

    def __init__(self, sp, n, pairs=50, timeout=10):
        self.sp = sp
        self.n = n
        self.pairs = pairs
        self.timeout = timeout
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.batches = [0] * n        # batches completed
        self.errors = [0] * n         # sidepool error replies seen
        self.clean_since = [0] * n    # consecutive batches with no error
        self.mark = [0] * n           # batches completed at the last mark()
        self.failures = []
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(n)]
        for t in self.threads:
            t.start()

    def _run(self, i):
        try:
            with h.RespClient(self.sp.addr(), timeout=self.timeout) as c:
                b = 0
                while not self.stop.is_set():
                    cmds, vals = [], []
                    for j in range(self.pairs):
                        k = "%s:load:%d:%d" % (RUN, i, j)
                        v = ("%d.%d.%d" % (i, b, j)).encode()
                        cmds += [("SET", k, v), ("GET", k)]
                        vals.append(v)
                    got = c.pipeline(cmds, timeout=self.timeout)
                    nerr = 0
                    for j, v in enumerate(vals):
                        check_pair(i, got[2 * j], got[2 * j + 1], v,
                                   "client %d batch %d pair %d" % (i, b, j))
                        nerr += sidepool_error(got[2 * j]) + sidepool_error(got[2 * j + 1])
                    with self.lock:
                        self.batches[i] += 1
                        self.errors[i] += nerr
                        self.clean_since[i] = 0 if nerr else self.clean_since[i] + 1
                    b += 1
        except BaseException:  # noqa: BLE001
            self.failures.append((i, traceback.format_exc()))

    def set_mark(self):
        with self.lock:
            self.mark = list(self.batches)
            for i in range(self.n):
                self.clean_since[i] = 0

    def check(self):
        if self.failures:
            i, tb = self.failures[0]
            raise AssertionError("%d client(s) failed; client %d:\n%s" % (
                len(self.failures), i, tb))

    def all_progressed(self, since_mark=1):
        self.check()
        return all(self.batches[i] - self.mark[i] >= since_mark for i in range(self.n))

    def all_clean(self, k=1):
        self.check()
        return all(c >= k for c in self.clean_since)

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(h.scale(self.timeout) + 5)
        alive = [i for i, t in enumerate(self.threads) if t.is_alive()]
        assert not alive, "clients %s still running" % alive
        self.check()


# ---------------------------------------------------------------- kill -9

@h.test("redis killed (-9) under load from 20 pipelining clients: replies or -ERR sidepool, "
        "no hang; restarted on the same port, the same connections recover within %ds"
        % RECOVERY, timeout=60)
def kill_under_load():
    r = h.RedisServer()
    sp = h.Sidepool(h.redis_config([r], workers=2, connect_timeout="500ms",
                                   request_timeout="5s"))
    load = Load(sp, 20)
    try:
        h.poll_until(load.all_progressed, h.scale(15), what="every client to finish a batch")
        r.kill()
        load.set_mark()
        # every client keeps getting answers (errors) without hanging
        h.poll_until(lambda: load.all_progressed(2), h.scale(15),
                     what="every client to finish 2 batches after the kill")
        assert sp.alive(), "sidepool died when redis was killed"
        h.diag("sidepool error replies per client after the kill: %s" % load.errors)
        assert sum(load.errors) > 0, "no client saw an error although redis was dead"
        r.restart()
        t0 = time.monotonic()
        load.set_mark()
        h.poll_until(lambda: load.all_clean(2), h.scale(RECOVERY),
                     what="every client to get 2 error-free batches after the restart "
                     "(redis was down for well under a second)")
        h.diag("all clients error-free %.2fs after the restart" % (time.monotonic() - t0))
    finally:
        load.finish()
    assert sp.alive(), "sidepool died"


@h.test("redis stopped then killed with requests already forwarded: every request gets "
        "-ERR sidepool, in order, the connections stay usable and recover within %ds of the "
        "restart" % RECOVERY, timeout=40)
def kill_with_forwarded_requests():
    r = h.RedisServer()
    sp = h.Sidepool(h.redis_config([r], workers=2, connect_timeout="500ms",
                                   request_timeout="20s"))
    n, per = 20, 100
    clients = [h.RespClient(sp.addr(), timeout=10) for _ in range(n)]
    for c in clients:
        c.call_ok("SET", RUN + ":warm", "1")  # warm pools
    r.pause()
    for i, c in enumerate(clients):
        c.send(h.encode_many([("INCR", "%s:fw:%d" % (RUN, i))] * per))
    # the requests have reached redis' socket (it is stopped and cannot read)
    h.poll_until(lambda: h.tcp_recv_queue(r.port) > 0, h.scale(5),
                 what="requests to reach the stopped redis")
    t0 = time.monotonic()
    r.kill()

    def drain(i):
        got = clients[i].read_replies(per, timeout=8)
        bad = [(j, g) for j, g in enumerate(got) if not sidepool_error(g)]
        if bad:
            raise AssertionError("client %d: %d replies are not -ERR sidepool, first %r" % (
                i, len(bad), bad[:3]))
        return time.monotonic() - t0

    times = h.run_threads(drain, n, h.scale(15), name="client")
    h.diag("all %d x %d errors within %.2fs of the kill" % (n, per, max(times)))
    for i, c in enumerate(clients):
        expect_pong(c, "client %d after the kill" % i)
    assert sp.alive(), "sidepool died"
    r.restart()
    t1 = time.monotonic()
    h.poll_until(lambda: clients[0].call("SET", RUN + ":back", "1") == "OK", h.scale(RECOVERY),
                 what="a SET on an old connection to succeed after the restart (redis was "
                 "down for well under a second)")
    h.diag("an old connection succeeded %.2fs after the restart" % (time.monotonic() - t1))
    for c in clients:
        c.close()


def expect_pong(c, what):
    v = c.call("PING")
    assert v == "PONG", "%s: PING got %r" % (what, v)


# ---------------------------------------------------------------- nothing there

@h.test("nothing listening on the server port: -ERR sidepool quickly, in order, "
        "connection usable", timeout=30)
def nothing_listening():
    port = h.free_port()
    sp = h.Sidepool(h.redis_config(["127.0.0.1:%d" % port], connect_timeout="1s"))
    with sp.client(timeout=5) as c:
        for attempt in range(3):
            t0 = time.monotonic()
            v = c.call("GET", "k")
            dt = time.monotonic() - t0
            assert sidepool_error(v), "attempt %d: GET got %r" % (attempt, v)
            assert dt < h.scale(1.0 + 1.0), "attempt %d: error took %.2fs" % (attempt, dt)
        got = c.pipeline([("GET", "a"), ("PING",), ("SET", "b", "1"), ("ECHO", "e"),
                          ("INCR", "c")])
        assert sidepool_error(got[0]) and got[1] == "PONG" and sidepool_error(got[2]) \
            and got[3] == b"e" and sidepool_error(got[4]), "pipeline got %r" % (got,)
        expect_pong(c, "after the errors")
    # a server appears on that port: requests succeed (after the retry backoff)
    h.RedisServer(port=port)
    with sp.client(timeout=5) as c2:
        h.poll_until(lambda: c2.call("SET", "k", "v") == "OK", h.scale(10),
                     what="SET to succeed once redis listens")
    assert sp.alive()


@h.test("a connect that hangs: -ERR sidepool after connect_timeout (500ms), not a hang",
        timeout=30)
def connect_timeout():
    bh = h.Blackhole()
    if not bh.hangs():
        raise h.Skip("cannot make connect() hang on this host")
    sp = h.Sidepool(h.redis_config([bh.addr], connect_timeout="500ms",
                                   request_timeout="10s"))
    with sp.client(timeout=10) as c:
        t0 = time.monotonic()
        got = c.pipeline([("GET", "k"), ("GET", "k2")])
        dt = time.monotonic() - t0
        assert all(sidepool_error(g) for g in got), "got %r" % (got,)
        assert dt < h.scale(0.5 + 1.5), "errors took %.2fs (connect_timeout 500ms)" % dt
        h.diag("errors after %.2fs" % dt)
        expect_pong(c, "after the connect timeout")
    assert sp.alive()


# ---------------------------------------------------------------- stopped server

@h.test("redis stopped (SIGSTOP), request_timeout 500ms: -ERR sidepool in time; after "
        "SIGCONT the same connections recover and never see a stale reply", timeout=40)
def stopped_server():
    r = h.RedisServer()
    sp = h.Sidepool(h.redis_config([r], workers=2, request_timeout="500ms",
                                   connect_timeout="500ms"))
    n = 5
    clients = [sp.client(timeout=5) for _ in range(n)]
    for i, c in enumerate(clients):
        c.call_ok("SET", "%s:A:%d" % (RUN, i), "stale-%d" % i)
        c.call_ok("SET", "%s:B:%d" % (RUN, i), "fresh-%d" % i)
    for rnd in range(2):
        r.pause()
        t0 = time.monotonic()
        for i, c in enumerate(clients):
            c.send(h.encode("GET", "%s:A:%d" % (RUN, i)))

        def wait_error(i):
            v = clients[i].read_reply(timeout=5)
            if not sidepool_error(v):
                raise AssertionError("round %d client %d: GET on a stopped redis got %r" % (
                    rnd, i, v))
            return time.monotonic() - t0

        times = h.run_threads(wait_error, n, h.scale(10), name="client")
        h.diag("round %d: errors after %.2f..%.2fs" % (rnd, min(times), max(times)))
        assert max(times) < h.scale(0.5 + 2.0), "errors took up to %.2fs" % max(times)
        for i, c in enumerate(clients):
            expect_pong(c, "client %d while redis is stopped" % i)
        r.resume()

        def fresh_ok(i):
            c = clients[i]
            v = h.poll_until(lambda: (lambda x: x if not sidepool_error(x) else None)(
                c.call("GET", "%s:B:%d" % (RUN, i))), h.scale(10),
                what="client %d GET to succeed after SIGCONT" % i)
            assert v == ("fresh-%d" % i).encode(), \
                "round %d client %d: GET B got %r (stale reply of the timed-out GET A?)" % (
                    rnd, i, v)
            for k in range(20):
                v = c.call("GET", "%s:B:%d" % (RUN, i))
                assert v == ("fresh-%d" % i).encode(), "round %d client %d GET B #%d: %r" % (
                    rnd, i, k, v)

        for i in range(n):
            fresh_ok(i)
    for c in clients:
        c.close()
    assert sp.alive()


# ---------------------------------------------------------------- server-side kills

@h.test("pooled connections killed by the server (CLIENT KILL) are not handed to clients",
        timeout=30)
def server_kills_idle():
    r = h.RedisServer()
    sp = h.Sidepool(h.redis_config([r], workers=2,
                                   pool={"size": 4, "max_connections": 8, "idle_timeout": "60s"}))
    n = 8
    clients = [sp.client(timeout=5) for _ in range(n)]
    for rnd in range(3):
        h.run_threads(lambda i: clients[i].pipeline([("INCR", "%s:ck:%d" % (RUN, i))] * 50),
                      n, h.scale(10), name="client")
        before = len(r.client_list())
        assert before > 0, "no sidepool connections to kill"
        killed = r.call("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        assert isinstance(killed, int) and killed >= 1, "CLIENT KILL: %r" % (killed,)
        # The idle watch needs a turn of the daemon's event loops to see the
        # EOF; nothing outside the daemon can observe that turn.
        time.sleep(h.scale(0.3))
        for i, c in enumerate(clients):
            v = c.call("INCR", "%s:ck:%d" % (RUN, i))
            assert v == 50 * (rnd + 1) + rnd + 1, \
                "round %d client %d: first INCR after %d connections were killed got %r" % (
                    rnd, i, killed, v)
    for c in clients:
        c.close()
    assert sp.alive()


# ---------------------------------------------------------------- misbehaving server

def fake_redis(on_get):
    """A fake redis: +PONG to PING, on_get(sock, args) for anything else."""
    def handler(s):
        buf = bytearray()
        while True:
            args = h.read_request(s, buf)
            if args is None:
                return
            if args and args[0].upper() == b"PING":
                s.sendall(b"+PONG\r\n")
            elif on_get(s, args) is False:
                return
    return h.FakeServer(handler)


def garbage_test(name, reply_bytes, close_after):
    def fn():
        def on_get(s, args):
            if args[0].upper() == b"SET":
                s.sendall(b"+OK\r\n")
                return True
            s.sendall(reply_bytes)
            if close_after:
                return False
            return True
        srv = fake_redis(on_get)
        sp = h.Sidepool(h.redis_config([srv.addr], workers=1, request_timeout="2s"))
        with sp.client(timeout=5) as c:
            t0 = time.monotonic()
            got = c.pipeline([("GET", "k"), ("PING",)])
            assert sidepool_error(got[0]), "GET answered with %r by the server: got %r" % (
                reply_bytes, got[0])
            assert got[1] == "PONG", "PING after: %r" % (got[1],)
            assert time.monotonic() - t0 < h.scale(2 + 1.5), "took %.2fs" % (
                time.monotonic() - t0)
            expect_pong(c, "after the bad reply")
            # the dubious connection is not reused: a fresh one answers SET
            v = c.call("SET", "k", "v")
            assert v == "OK", "SET after a bad reply got %r" % (v,)
        assert sp.alive(), "sidepool died"
    h.add_test("server %s: -ERR sidepool for that request, the client goes on" % name, fn,
               timeout=30)


garbage_test("answers garbage", b"?what is this\r\n", close_after=False)
garbage_test("closes in the middle of a bulk reply", b"$10\r\nabc", close_after=True)
garbage_test("closes without answering", b"", close_after=True)


if __name__ == "__main__":
    h.run()
