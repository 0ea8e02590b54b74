#!/usr/bin/env python3
"""
test_idle_clients.py - what an idle client costs, and that a quiet one
gives its buffers back without forgetting its session.

Idle connections are the many (a pool in every application process), so
sidepool keeps a client that has not spoken to its struct client alone
and allocates what talking needs (buffers, the write event, the request
queue: its "conversation") at its first read that returns data; a client
quiet for a second with nothing owed gives that back (docs/DESIGN.md).

1. 2,000 clients that connect and send nothing raise the daemon's VmRSS by
   less than IDLE_MAX_BYTES each (measured: 229 bytes, libevent's
   per-descriptor cost included; one evbuffer per client would add ~140,
   the layout before conversations cost 1,251).
2. 2,000 clients that made one request each and went quiet give their
   buffers back: 2,000 more doing the same afterwards raise VmRSS by less
   than REUSE_MAX_BYTES each, because their conversations reuse the memory
   the first 2,000 gave back (measured: 666 bytes, the client and its
   Redis session state; a daemon that keeps every conversation measures
   1,274, one that keeps only the two evbuffers would measure ~950).
3. A client whose conversation was given back keeps its session: AUTH,
   SELECT and CLIENT SETNAME still hold, and it is served as before;
   memcached clients too.

The memory tests are skipped for a sanitizer build or under
SIDEPOOL_WRAPPER: their allocators keep freed memory in quarantine and
pad every block, so the figures would say nothing about sidepool.
"""

import os
import re
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

h.require_tools("redis-server", "memcached")

CLIENTS = 2000
IDLE_MAX_BYTES = 330
REUSE_MAX_BYTES = 850
RELEASED = re.compile(r"(\d+) quiet client\(s\) gave their buffers back")
CONNECTED = re.compile(r"client #\d+: connected on ")
CLOSED = re.compile(r"client #\d+: closed: ")
GET = b"*2\r\n$3\r\nGET\r\n$8\r\nidle:key\r\n"


# ---------------------------------------------------------------- helpers


def require_plain_malloc():
    if h.WRAPPER:
        raise h.Skip("the daemon runs under SIDEPOOL_WRAPPER, whose allocator is not glibc's")
    if h.sanitizer_build(h.SIDEPOOL_BIN):
        raise h.Skip("a sanitizer build pads and quarantines every allocation")


def require_descriptors(n):
    """Room for n client sockets here (the daemon inherits the limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n + 256
    if soft < want and (hard == resource.RLIM_INFINITY or hard >= want):
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        soft = want
    if soft < want:
        raise h.Skip("open-files limit %d is below the %d this test needs" % (soft, want))


def settled_rss_kb(pid):
    """VmRSS once it has not moved for 0.3 s."""
    last = [h.rss_kb(pid), time.monotonic()]

    def still():
        cur = h.rss_kb(pid)
        if cur != last[0]:
            last[0], last[1] = cur, time.monotonic()
            return False
        return time.monotonic() - last[1] >= 0.3
    h.poll_until(still, h.scale(10), interval=0.05, what="VmRSS of pid %d to settle" % pid)
    return last[0]


def open_clients(sp):
    """Clients the daemon holds, from its debug log (a count of
    descriptors would race with the close of a client that just left)."""
    text = sp.log_text()
    return len(CONNECTED.findall(text)) - len(CLOSED.findall(text))


def wait_open_clients(sp, n):
    h.poll_until(lambda: open_clients(sp) == n, h.scale(30),
                 what="sidepool to hold %d clients" % n)


def start_redis_proxy(r, keep_heap=False, **upstream):
    """sidepool with one worker, logging at debug level (the test counts
    its clients and its releases in the log). keep_heap: glibc never
    trims the heap, so memory freed stays there to be reused, instead of
    going back to the kernel at moments of glibc's choosing."""
    cfg = h.redis_config([r], listen=[h.AUTO_TCP], workers=1, log_level="debug",
                         upstream_extra=upstream)
    if not keep_heap:
        return h.Sidepool(cfg)
    saved = os.environ.get("GLIBC_TUNABLES")
    os.environ["GLIBC_TUNABLES"] = "glibc.malloc.trim_threshold=%d" % (1 << 40)
    try:
        return h.Sidepool(cfg)
    finally:
        if saved is None:
            del os.environ["GLIBC_TUNABLES"]
        else:
            os.environ["GLIBC_TUNABLES"] = saved


def connect_all(sp, n, already=0, batch=250):
    """n connected sockets, once the daemon holds them and the already
    connected ones. In batches well under the listen backlog (1024): a
    connection the kernel could not queue would reach the daemon only
    after SYN-ACK retries."""
    socks = []
    while len(socks) < n:
        for _ in range(min(batch, n - len(socks))):
            socks.append(h.connect(sp.addr(), timeout=h.scale(10)))
        wait_open_clients(sp, already + len(socks))
    return socks


def one_get_each(socks):
    """Every socket sends one GET and reads its reply (a nil), one socket
    at a time, so that what the daemon allocates for requests in flight
    stays small and the same from one run to the next."""
    for i, s in enumerate(socks):
        s.sendall(GET)
        buf = b""
        while not buf.endswith(b"\r\n"):
            chunk = s.recv(64)
            assert chunk, "client %d: connection closed before its reply" % i
            buf += chunk
        assert buf == b"$-1\r\n", "client %d: %r" % (i, buf)


def released(sp):
    return sum(int(m.group(1)) for m in RELEASED.finditer(sp.log_text()))


def wait_released(sp, n):
    h.poll_until(lambda: released(sp) >= n, h.scale(10),
                 what="%d quiet clients to give their buffers back (log says %d)"
                 % (n, released(sp)))


def close_all(socks):
    for s in socks:
        s.close()


# ---------------------------------------------------------------- tests

@h.test("%d idle clients (connected, nothing sent) cost less than %d bytes of RSS each"
        % (CLIENTS, IDLE_MAX_BYTES), timeout=60)
def idle_clients_hold_no_buffers():
    require_plain_malloc()
    require_descriptors(CLIENTS)
    r = h.RedisServer()
    sp = start_redis_proxy(r)
    # the backend connection and whatever the first request sets up
    # belong to the baseline, not to the idle clients
    with h.RespClient(sp.addr()) as c:
        assert c.call("GET", "idle:key") is None
    wait_open_clients(sp, 0)
    rss0 = settled_rss_kb(sp.pid)
    socks = connect_all(sp, CLIENTS)
    try:
        rss1 = settled_rss_kb(sp.pid)
        per = (rss1 - rss0) * 1024 / CLIENTS
        h.diag("idle: %.0f bytes per client (VmRSS %d -> %d kB)" % (per, rss0, rss1))
        assert per < IDLE_MAX_BYTES, \
            "%d idle clients cost %.0f bytes each (limit %d): VmRSS %d -> %d kB" % (
                CLIENTS, per, IDLE_MAX_BYTES, rss0, rss1)
        assert released(sp) == 0, "idle clients had conversations to give back"
    finally:
        close_all(socks)


@h.test("%d clients that made one request and went quiet give their buffers back: "
        "%d more doing the same reuse them (< %d bytes of RSS each)"
        % (CLIENTS, CLIENTS, REUSE_MAX_BYTES), timeout=90)
def quiet_clients_give_buffers_back():
    require_plain_malloc()
    require_descriptors(2 * CLIENTS)
    r = h.RedisServer()
    sp = start_redis_proxy(r, keep_heap=True)
    with h.RespClient(sp.addr()) as c:
        assert c.call("GET", "idle:key") is None
    wait_open_clients(sp, 0)
    first = connect_all(sp, CLIENTS)
    second = []
    try:
        one_get_each(first)
        wait_released(sp, CLIENTS)
        rss0 = settled_rss_kb(sp.pid)
        second = connect_all(sp, CLIENTS, already=CLIENTS)
        one_get_each(second)
        rss1 = settled_rss_kb(sp.pid)
        per = (rss1 - rss0) * 1024 / CLIENTS
        h.diag("after one request each, quiet: %.0f bytes per client (VmRSS %d -> %d kB)"
               % (per, rss0, rss1))
        assert per < REUSE_MAX_BYTES, \
            ("%d more clients after one request each cost %.0f bytes (limit %d): the first "
             "%d kept their buffers; VmRSS %d -> %d kB" % (
                 CLIENTS, per, REUSE_MAX_BYTES, CLIENTS, rss0, rss1))
        wait_released(sp, 2 * CLIENTS)
    finally:
        close_all(first)
        close_all(second)


@h.test("a Redis client that went quiet and gave its buffers back keeps AUTH, its "
        "database and its name, and is served as before", timeout=30)
def quiet_redis_client_keeps_its_session():
    r = h.RedisServer()
    sp = start_redis_proxy(r, client_auth={"password": "idlepw"})
    with h.RespClient(sp.addr()) as c, h.RespClient(sp.addr()) as other:
        assert c.call("AUTH", "idlepw") == "OK"
        assert c.call("SELECT", "3") == "OK"
        assert c.call("CLIENT", "SETNAME", "sleeper") == "OK"
        assert c.call("SET", "idle:db3", "three") == "OK"
        # a half-sent request is not quiet: it must survive the wait too
        c.send(b"*2\r\n$3\r\nGET\r\n$8\r\nidle")
        assert other.call("AUTH", "idlepw") == "OK"
        assert other.call("SET", "idle:db3", "zero") == "OK"
        before = released(sp)
        wait_released(sp, before + 1)  # other: c still has bytes in
        c.send(b":db3\r\n")
        got = c.read_reply()
        assert got == b"three", "the half-sent GET was not kept while waiting: %r" % (got,)
        wait_released(sp, before + 2)  # now c too
        assert c.call("GET", "idle:db3") == b"three", "the quiet client lost its SELECT"
        assert c.call("CLIENT", "GETNAME") == b"sleeper", "the quiet client lost its name"
        assert c.call("PING") == "PONG", "the quiet client lost its AUTH"
        assert other.call("GET", "idle:db3") == b"zero"
    with h.RespClient(sp.addr()) as fresh:
        err = fresh.call("GET", "idle:db3")
        assert isinstance(err, h.Error) and err.startswith("NOAUTH"), \
            "a new client was served without AUTH: %r" % (err,)


@h.test("a memcached client that went quiet and gave its buffers back is served as "
        "before, set and get", timeout=30)
def quiet_memcache_client_is_served():
    m = h.Memcached()
    cfg = h.redis_config([m], listen=[h.AUTO_TCP], workers=1, log_level="debug",
                         upstream="memcache")
    cfg["upstreams"]["memcache"]["protocol"] = "memcache"
    sp = h.Sidepool(cfg)
    with h.SockClient(sp.addr()) as c:
        c.send(b"set idle:mc 0 0 5\r\nvalue\r\n")
        assert recv_until(c.sock, b"\r\n") == b"STORED\r\n"
        wait_released(sp, released(sp) + 1)
        c.send(b"get idle:mc\r\n")
        assert recv_until(c.sock, b"END\r\n") == b"VALUE idle:mc 0 5\r\nvalue\r\nEND\r\n"


def recv_until(sock, end):
    buf = b""
    deadline = time.monotonic() + h.scale(5)
    while not buf.endswith(end):
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        chunk = sock.recv(4096)
        assert chunk, "connection closed after %r" % buf
        buf += chunk
    return buf


if __name__ == "__main__":
    h.run()
