#!/usr/bin/env python3
"""
test_shutdown.py - graceful shutdown on SIGTERM: requests the proxy has
read are answered, new connections are refused, the daemon exits 0 within
shutdown_timeout, and its log holds no errors or sanitizer reports.

What is asserted about requests in flight at SIGTERM:
  - requests the proxy had certainly read (they were waiting on a stopped
    redis, seen in its socket's receive queue) get their complete, correct
    replies once redis resumes;
  - for requests sent right before SIGTERM without that certainty, every
    reply the client reads is complete and correct, and the connection ends
    either after the last reply or with a clean close between replies
    (never in the middle of one), without hanging.
"""

import os
import re
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

h.require_tools("redis-server", "redis-cli")

SHUTDOWN_TIMEOUT = 5


def start(r, shutdown_timeout=SHUTDOWN_TIMEOUT, request_timeout="20s", listen=None):
    return h.Sidepool(h.redis_config([r], listen=listen or [h.AUTO_TCP, h.AUTO_UNIX],
                                     workers=2, request_timeout=request_timeout,
                                     shutdown_timeout="%ds" % shutdown_timeout))


def assert_clean_log(sp):
    text = sp.log_text()
    bad = [ln for ln in text.splitlines()
           if re.search(r"ERROR|AddressSanitizer|LeakSanitizer|runtime error", ln)]
    assert not bad, "daemon log has error lines:\n" + "\n".join(bad[:20])


def pairs_for(i, n):
    """n requests: SET/GET pairs on keys of client i; and the replies."""
    cmds, want = [], []
    for j in range(n // 2):
        k, v = "sd:%d:%d" % (i, j), "value-%d-%d" % (i, j)
        cmds += [("SET", k, v), ("GET", k)]
        want += ["OK", v.encode()]
    return cmds, want


def read_until_close(c, n, timeout):
    """Up to n replies; stops at a close between replies. Returns (replies,
    closed). A close in the middle of a reply raises."""
    got = []
    deadline = time.monotonic() + h.scale(timeout)
    while len(got) < n:
        try:
            got.append(c.read_reply(timeout=max(0.1, deadline - time.monotonic()) /
                                    h.TIME_SCALE))
        except (h.ConnectionClosed, ConnectionResetError):
            if c.reader.in_reply():
                raise AssertionError("connection closed in the middle of reply %d (%d bytes: %r)"
                                     % (len(got) + 1, c.reader.pending(),
                                        bytes(c.reader.buf[c.reader.pos:c.reader.pos + 80])))
            return got, True
    return got, False


@h.test("SIGTERM with requests read but unanswered (redis stopped): after SIGCONT every "
        "reply arrives complete and correct; exit 0 within shutdown_timeout", timeout=40)
def drain_read_requests():
    r = h.RedisServer()
    sp = start(r)
    n_clients, n_req = 10, 50
    clients = [h.RespClient(sp.addr(i % 2), timeout=10) for i in range(n_clients)]
    for c in clients:
        assert c.call("SET", "warm", "1") == "OK"
    r.pause()
    wants = []
    for i, c in enumerate(clients):
        cmds, want = pairs_for(i, n_req)
        c.send(h.encode_many(cmds))
        wants.append(want)
    h.poll_until(lambda: h.tcp_recv_queue(r.port) > 0, h.scale(5),
                 what="requests to reach the stopped redis")
    t0 = time.monotonic()
    sp.send_signal(signal.SIGTERM)
    h.poll_until(lambda: not h.can_connect(sp.addr(0), 0.5), h.scale(3),
                 what="the TCP listener to refuse connections after SIGTERM")
    assert sp.alive(), "sidepool exited (code %s) with requests in flight instead of " \
        "draining" % sp.proc.returncode
    r.resume()

    def drain(i):
        got, closed = read_until_close(clients[i], n_req, 10)
        if got != wants[i]:
            bad = [(j, g, w) for j, (g, w) in enumerate(zip(got, wants[i])) if g != w]
            raise AssertionError("client %d: %d of %d replies (closed=%s), first wrong %r" % (
                i, len(got), n_req, closed, bad[:3]))

    h.run_threads(drain, n_clients, h.scale(15), name="client")
    for c in clients:
        c.close()
    code = sp.wait_exit(SHUTDOWN_TIMEOUT + 2 - (time.monotonic() - t0))
    dt = time.monotonic() - t0
    assert code is not None, "still running %.1fs after SIGTERM (shutdown_timeout %ds)" % (
        dt, SHUTDOWN_TIMEOUT)
    assert code == 0, "exit code %s" % code
    h.diag("exited %.2fs after SIGTERM" % dt)
    assert_clean_log(sp)


@h.test("SIGTERM right after 10 clients sent 50 pipelined requests: replies read are "
        "complete and correct, closes only between replies, no hang, exit 0", timeout=40)
def sigterm_under_pipelines():
    r = h.RedisServer()
    sp = start(r)
    n_clients, n_req = 10, 50
    clients = [h.RespClient(sp.addr(i % 2), timeout=10) for i in range(n_clients)]
    for c in clients:
        assert c.call("PING") == "PONG"
    wants = []
    for i, c in enumerate(clients):
        cmds, want = pairs_for(i, n_req)
        c.send(h.encode_many(cmds))
        wants.append(want)
    t0 = time.monotonic()
    sp.send_signal(signal.SIGTERM)

    def drain(i):
        got, closed = read_until_close(clients[i], n_req, SHUTDOWN_TIMEOUT + 3)
        if got != wants[i][:len(got)]:
            bad = [(j, g, w) for j, (g, w) in enumerate(zip(got, wants[i])) if g != w]
            raise AssertionError("client %d: wrong replies %r" % (i, bad[:3]))
        return len(got)

    counts = h.run_threads(drain, n_clients, h.scale(SHUTDOWN_TIMEOUT + 5), name="client")
    h.diag("replies per client: %s" % counts)
    for c in clients:
        c.close()
    code = sp.wait_exit(SHUTDOWN_TIMEOUT + 2 - (time.monotonic() - t0))
    assert code is not None, "still running %.1fs after SIGTERM" % (time.monotonic() - t0)
    assert code == 0, "exit code %s" % code
    assert_clean_log(sp)


@h.test("after SIGTERM new connections are refused (TCP and unix) while in-flight "
        "requests drain", timeout=30)
def refuses_new_connections():
    r = h.RedisServer()
    sp = start(r)
    c = sp.client(0, timeout=10)
    assert c.call("SET", "k", "v") == "OK"
    r.pause()
    c.send(h.encode("GET", "k"))
    h.poll_until(lambda: h.tcp_recv_queue(r.port) > 0, h.scale(5),
                 what="the GET to reach the stopped redis")
    sp.send_signal(signal.SIGTERM)
    for i in range(2):
        h.poll_until(lambda: not h.can_connect(sp.addr(i), 0.5), h.scale(3),
                     what="listener %s to refuse connections" % sp.addr(i))
    assert sp.alive(), "sidepool exited instead of draining (code %s)" % sp.proc.returncode
    # still refused a moment later (not a listener that comes back)
    assert not h.can_connect(sp.addr(0), 0.5), "TCP listener accepts again"
    r.resume()
    assert c.read_reply() == b"v", "the in-flight GET was not answered"
    c.close()
    code = sp.wait_exit(SHUTDOWN_TIMEOUT + 2)
    assert code == 0, "exit code %s" % code
    assert_clean_log(sp)


@h.test("SIGTERM with only idle clients connected: they are closed, exit 0 in time")
def idle_clients():
    r = h.RedisServer()
    sp = start(r, shutdown_timeout=3)
    clients = [sp.client(i % 2, timeout=10) for i in range(5)]
    for c in clients:
        assert c.call("INCR", "n") is not None
    t0 = time.monotonic()
    sp.send_signal(signal.SIGTERM)
    for i, c in enumerate(clients):
        data, closed = c.read_raw(3 + 2)
        assert closed, "idle client %d was not closed within shutdown_timeout + 2s" % i
        assert data == b"", "idle client %d got %r" % (i, data)
        c.close()
    code = sp.wait_exit(3 + 2)
    dt = time.monotonic() - t0
    assert code == 0, "exit code %s after %.1fs" % (code, dt)
    h.diag("exited %.2fs after SIGTERM" % dt)
    assert_clean_log(sp)


@h.test("SIGTERM when idle: exit 0 at once; the unix socket file is removed")
def idle_exit():
    r = h.RedisServer()
    sp = start(r)
    path = h.parse_addr(sp.addr(1))[1]
    t0 = time.monotonic()
    code = sp.stop(signal.SIGTERM, timeout=SHUTDOWN_TIMEOUT + 2)
    dt = time.monotonic() - t0
    assert code == 0, "exit code %s" % code
    assert dt < h.scale(2), "took %.2fs with nothing to drain" % dt
    assert not os.path.exists(path), "unix socket %s left behind" % path
    assert_clean_log(sp)


@h.test("SIGINT when idle: exit 0")
def sigint_exit():
    r = h.RedisServer()
    sp = start(r)
    code = sp.stop(signal.SIGINT, timeout=SHUTDOWN_TIMEOUT + 2)
    assert code == 0, "exit code %s" % code
    assert_clean_log(sp)


@h.test("a request stuck on a stopped redis does not hold the exit past shutdown_timeout",
        timeout=30)
def shutdown_timeout_bounds_exit():
    r = h.RedisServer()
    sp = start(r, shutdown_timeout=1, request_timeout="30s")
    c = sp.client(0, timeout=10)
    assert c.call("SET", "k", "v") == "OK"
    r.pause()
    c.send(h.encode("GET", "k"))
    h.poll_until(lambda: h.tcp_recv_queue(r.port) > 0, h.scale(5),
                 what="the GET to reach the stopped redis")
    t0 = time.monotonic()
    sp.send_signal(signal.SIGTERM)
    code = sp.wait_exit(1 + 2)
    dt = time.monotonic() - t0
    assert code is not None, "still running %.1fs after SIGTERM with shutdown_timeout 1s" % dt
    h.diag("exited with %s %.2fs after SIGTERM" % (code, dt))
    # the client got an error or a close, not silence
    data, closed = c.read_raw(2)
    assert closed, "client connection still open after the daemon exited"
    assert data == b"" or data.startswith(b"-ERR sidepool"), "client got %r" % data
    c.close()
    r.resume()


@h.test("shutdown timeout with a client mid-transaction (its connection owed a DISCARD) "
        "and one waiting at a stopped redis: everything closes cleanly, exit 0", timeout=30)
def shutdown_timeout_mid_session():
    r = h.RedisServer()
    sp = start(r, shutdown_timeout=1, request_timeout="30s")
    tx = sp.client(0, timeout=10)
    assert tx.call("MULTI") == "OK"
    assert tx.call("SET", "sd:k", "1") == "QUEUED"
    waiting = sp.client(0, timeout=10)
    assert waiting.call("SET", "sd:w", "1") == "OK"
    r.pause()
    waiting.send(h.encode("GET", "sd:w"))
    h.poll_until(lambda: h.tcp_recv_queue(r.port) > 0, h.scale(5),
                 what="the GET to reach the stopped redis")
    sp.send_signal(signal.SIGTERM)
    code = sp.wait_exit(1 + 3)
    r.resume()
    assert code == 0, "exit code %r after the shutdown timeout" % (code,)
    assert_clean_log(sp)


if __name__ == "__main__":
    h.run()
