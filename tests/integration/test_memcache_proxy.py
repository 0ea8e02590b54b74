#!/usr/bin/env python3
"""
test_memcache_proxy.py - sidepool in front of a real memcached, compared
with memcached itself.

1. A table of request sequences (classic and meta commands, noreply and
   quiet mode, every error memcached answers) is sent to a fresh memcached
   directly and, through sidepool, to another one in the same state; the
   reply bytes must be identical, except where docs/memcache.md documents
   a deliberate difference (binary protocol, overlong lines, refused
   commands, too many keys, stats values): those rows assert the proxy's
   documented answer. A too-large set/ms removes the old item (as
   memcached does: sidepool sends the delete); a quiet ma that creates its
   item is not answered (a documented difference: memcached answers it). A seeded differential
   fuzz of command lines follows (SIDEPOOL_MC_FUZZ_SEED=n to vary it).
2. 20 threads pipeline noreply, quiet meta, multi-get, incr and delete on
   ONE shared server connection and each gets exactly its own replies.
3. Garbage and limits: memcached's errors, closes where memcached closes,
   binary protocol refused, a 2 MB value refused and swallowed, while a
   neighbour pipelining on the same server connection is untouched.
4. memcached killed with requests in flight: one SERVER_ERROR each (none
   for noreply), no hang; restarted on the same port, the same client
   connection works again.
5. quit closes the client, never the pooled server connection.
6. libmemcached's tools (memcp/memcat/memrm/memcslap) through sidepool.

See docs/memcache-compat.md. MC_ONLY=word[,word] runs only the tests whose
function names contain one of the words.
"""

import json
import os
import random
import re
import selectors
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

h.require_tools("memcached")

CTL_BIN = os.environ.get("SIDEPOOLCTL_BIN") or os.path.join(
    os.path.dirname(h.SIDEPOOL_BIN), "sidepoolctl")

RUN = "%x" % random.getrandbits(32)  # key prefix of this run
MB = 1 << 20


# --------------------------------------------------------------------------
# sidepool for memcached, the control socket

def memcache_config(servers, workers=1, pool=None, control=None, **kw):
    """redis_config's shape with a memcache upstream named 'memcache'."""
    cfg = h.redis_config(servers, workers=workers, pool=pool, upstream="memcache", **kw)
    cfg["upstreams"]["memcache"]["protocol"] = "memcache"
    if control:
        cfg["control"] = {"path": control}
    return cfg


def start_proxy(servers, with_control=False, **kw):
    ctl_path = None
    if with_control:
        ctl_path = os.path.join(h.mkdtemp("sp-mcctl-"), "control.sock")
    sp = h.Sidepool(memcache_config(servers, control=ctl_path, **kw))
    sp.ctl_path = ctl_path
    if ctl_path:
        h.poll_until(lambda: ctl(sp, "version").returncode == 0, h.scale(5),
                     what="the control socket to answer")
    return sp


def ctl(sp, cmd):
    return subprocess.run([CTL_BIN, "-s", sp.ctl_path, "--json", cmd], capture_output=True,
                          text=True, timeout=h.scale(10), stdin=subprocess.DEVNULL)


def pools(sp):
    """(opened, closed-by-reason, pools) summed over workers."""
    r = ctl(sp, "pools")
    if r.returncode not in (0, 4):
        raise AssertionError("sidepoolctl --json pools exited %d: %r %r" % (
            r.returncode, r.stdout[:300], r.stderr[:300]))
    ps = json.loads(r.stdout)["pools"]
    closed = {}
    for p in ps:
        for k, v in p["closed"].items():
            closed[k] = closed.get(k, 0) + v
    return sum(p["opened"] for p in ps), closed, ps


def assert_one_connection(sp, what):
    opened, closed, ps = pools(sp)
    nz = {k: v for k, v in closed.items() if v}
    assert opened == 1 and not nz, \
        "%s: want exactly one server connection ever opened and none closed; " \
        "pools say opened=%d closed=%s (%s)" % (what, opened, nz, ps)


def pause(server):
    """SIGSTOP, then wait until every thread is really stopped: kill()
    returns before the signal takes effect, and a worker thread already
    running would still answer what arrives meanwhile."""
    server.pause()

    def stopped():
        tasks = os.listdir("/proc/%d/task" % server.pid)
        for t in tasks:
            with open("/proc/%d/task/%s/stat" % (server.pid, t)) as f:
                if f.read().rsplit(")", 1)[1].split()[0] not in ("T", "t"):
                    return False
        return True
    h.poll_until(stopped, h.scale(5), interval=0.002, what="memcached to stop (SIGSTOP)")


# --------------------------------------------------------------------------
# A raw memcached text-protocol client

class Mc(h.SockClient):
    """One socket; every read has a deadline."""

    def __init__(self, addr, timeout=5.0):
        super().__init__(addr, timeout)
        self.buf = b""

    def _recv(self, deadline):
        """More bytes into buf; False at EOF/reset; raises TimeoutError."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no reply within %.1fs (have %r)" % (self.timeout, self.buf[-300:]))
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(1 << 20)
        except socket.timeout:
            raise TimeoutError("no reply within %.1fs (have %r)" % (
                self.timeout, self.buf[-300:])) from None
        except ConnectionResetError:
            return False
        if not chunk:
            return False
        self.buf += chunk
        return True

    def read_until(self, done, timeout=None):
        """Read until done(buf) or the peer closes: (bytes, closed). The
        bytes are taken out of buf."""
        deadline = time.monotonic() + (h.scale(timeout) if timeout else self.timeout)
        closed = False
        while not done(self.buf):
            if not self._recv(deadline):
                closed = True
                break
        data, self.buf = self.buf, b""
        return data, closed

    def line(self, timeout=None):
        data, closed = self.read_until(lambda b: b"\r\n" in b, timeout)
        i = data.find(b"\r\n")
        if i < 0:
            raise ConnectionError("closed before a whole line (have %r)" % data[:200])
        self.buf = data[i + 2:]
        return data[:i + 2]

    def call(self, data, timeout=None):
        """Send data + 'mn'; everything up to and including its MN."""
        want = data.count(b"mn\r\n") + 1
        self.send(data + b"mn\r\n")
        got, closed = self.read_until(
            lambda b: b.endswith(b"MN\r\n") and b.count(b"MN\r\n") >= want, timeout)
        if closed:
            raise ConnectionError("closed by peer; got %r" % got[-300:])
        return got

    def drain(self, timeout):
        """Whatever arrives within timeout (unscaled: the check that nothing
        more does): (bytes, closed?)."""
        deadline = time.monotonic() + timeout
        closed = False
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            self.buf += chunk
        data, self.buf = self.buf, b""
        return data, closed

    def wait_closed(self, timeout=3.0):
        """(bytes received before the close, closed?)"""
        deadline = time.monotonic() + h.scale(timeout)
        while True:
            try:
                if not self._recv(deadline):
                    data, self.buf = self.buf, b""
                    return data, True
            except TimeoutError:
                data, self.buf = self.buf, b""
                return data, False


# The end of a table step: a meta get of a key no case uses, with an opaque
# and the key echoed back. Unlike 'mn', nothing in a case (not even an
# 'mn' of its own) can answer it.
END_REQ = b"mg __end__ O424242 k\r\n"
END_REP = b"EN O424242 k__end__\r\n"


def exchange(addr, steps, timeout=4.0):
    """Run one table case on a fresh connection: each step (bytes, or a
    function of the replies so far) is sent followed by END_REQ, and its
    replies are read up to END_REP (or until the peer closes). Returns
    (list of reply bytes, closed?)."""
    out = []
    with Mc(addr, timeout=timeout) as c:
        for st in steps:
            data = st(out) if callable(st) else st
            try:
                c.send(data + END_REQ)
            except (BrokenPipeError, ConnectionResetError):
                out.append(c.buf)
                return out, True
            try:
                got, closed = c.read_until(lambda b: b.endswith(END_REP))
            except TimeoutError:
                out.append(c.buf + b"<<TIMEOUT>>")
                return out, False
            out.append(got)
            if closed:
                return out, True
    return out, False


# --------------------------------------------------------------------------
# 1. The byte-for-byte table

def cas_of(reply, key=b"k"):
    m = re.search(rb"VALUE " + re.escape(key) + rb" \d+ \d+ (\d+)\r\n", reply)
    assert m, "no cas for %r in %r" % (key, reply[:200])
    return int(m.group(1))


def norm_ttl(b):
    """TTLs count down on each server's own clock: 't99' and 't100' are the
    same answer taken on either side of a tick."""
    b = re.sub(rb"\bt(\d+)\b", lambda m: b"t~%d" % ((int(m.group(1)) + 5) // 10 * 10), b)
    return re.sub(rb"\b(la|exp)=(\d+)\b",
                  lambda m: m.group(1) + b"=~%d" % ((int(m.group(2)) + 5) // 10 * 10), b)


def norm_stats(b):
    """Framing only: STAT/ITEM/PREFIX lines (any number: how many items or
    slabs a server lists is its own state) then END."""
    return re.sub(rb"(?:(?:STAT|ITEM|PREFIX) [^\r\n]*\r\n)*END\r\n", b"<STAT lines>END\r\n", b)


def check_stats(replies):
    """Through the proxy, plain 'stats' is a real STAT list."""
    n = len(re.match(rb"((?:STAT [^\r\n]*\r\n)*)END\r\n", replies[0]).group(1).split(b"\r\n"))
    assert n > 30, "'stats' through sidepool: only %d STAT lines: %r" % (n, replies[0][:300])


KEY250 = b"k" * 250
KEY251 = b"k" * 251
BIGV = b"get k\r\n" * (2 * MB // 7 + 1)   # 2 MB of command lines: must be swallowed
OVER1M = b"x" * (MB + 1)                   # over sidepool's max_value_size and memcached's -I
NEAR1M = b"y" * (MB - 600)                 # under sidepool's limit, over memcached's item max


def S(*parts):
    return b"".join(p if isinstance(p, bytes) else p.encode() for p in parts)


# (name, steps, options). options: norm (applied to both sides), proxy
# (the documented proxy answer instead of memcached's: a list of replies,
# one per step, and 'closed'), fresh (a dedicated memcached pair).
CASES = [
    # ---- retrieval
    ("get hit, miss, multi-key hits and misses, duplicate key", [
        b"set a 5 0 1\r\n1\r\nset b 0 0 2\r\n22\r\nset c 4294967295 0 0\r\n\r\n"
        b"get a\r\nget zz\r\nget a zz b c zz a\r\nget  a   b \r\n"]),
    ("gets returns cas, multi-key", [
        b"set a 0 0 1\r\n1\r\nset b 0 0 1\r\n2\r\ngets a\r\ngets a nope b\r\n"]),
    ("get with no key, bget, get of a 250-byte key", [
        S(b"get\r\nbget a\r\nset ", KEY250, b" 0 0 1\r\nz\r\nget ", KEY250, b"\r\n")]),
    ("value containing END and VALUE lines", [
        b"set v 0 0 26\r\nEND\r\nVALUE v 0 1\r\nx\r\nEND\r\n\r\nget v v\r\n"]),
    ("gat/gats: hit, miss, exptime, bad exptime", [
        b"set a 0 0 1\r\n1\r\ngat 100 a zz\r\ngats 0 a\r\ngat abc a\r\ngat 100\r\n"
        b"gat -1 a\r\nget a\r\n"]),
    ("gat then mg t shows the new TTL", [
        b"set a 0 0 1\r\n1\r\ngat 1000 a\r\nmg a t v\r\n"], {"norm": norm_ttl}),
    # ---- storage
    ("set/add/replace/append/prepend", [
        b"add a 0 0 1\r\n1\r\nadd a 0 0 1\r\n2\r\nreplace a 0 0 1\r\n3\r\n"
        b"replace nope 0 0 1\r\n4\r\nappend a 0 0 2\r\n56\r\nprepend a 0 0 2\r\n78\r\n"
        b"append nope 0 0 1\r\n9\r\nprepend nope 0 0 1\r\n9\r\nget a nope\r\n"
        b"set a 123 0 0\r\n\r\nget a\r\n"]),
    ("cas: good, stale (EXISTS), missing (NOT_FOUND)", [
        b"set k 0 0 1\r\na\r\ngets k\r\n",
        lambda r: b"cas k 0 0 1 %d\r\nb\r\ncas k 0 0 1 %d\r\nc\r\ncas miss 0 0 1 1\r\nd\r\n"
                  b"gets k\r\n" % (cas_of(r[0]), cas_of(r[0]))]),
    ("cas with a bad cas value, too few tokens", [
        b"set k 0 0 1\r\na\r\ncas k 0 0 1 abc\r\nb\r\ncas k 0 0 1\r\nb\r\ncas k 0 0 1 -1\r\nb\r\n"]),
    ("noreply on every storage command, then the values", [
        b"set k 0 0 1\r\na\r\ngets k\r\n",
        lambda r: b"set a 0 0 1 noreply\r\n1\r\nadd a 0 0 1 noreply\r\n2\r\n"
                  b"add b 0 0 1 noreply\r\n2\r\nreplace b 0 0 1 noreply\r\n3\r\n"
                  b"replace nope 0 0 1 noreply\r\n3\r\nappend a 0 0 1 noreply\r\n4\r\n"
                  b"prepend a 0 0 1 noreply\r\n5\r\ncas k 0 0 1 %d noreply\r\nz\r\n"
                  b"cas k 0 0 1 %d noreply\r\ny\r\ncas nope 0 0 1 1 noreply\r\nx\r\n"
                  b"set n 0 0 2 noreply\r\n10\r\nincr n 5 noreply\r\ndecr n 2 noreply\r\n"
                  b"incr nope 1 noreply\r\ntouch a 100 noreply\r\ntouch nope 1 noreply\r\n"
                  b"delete b noreply\r\ndelete nope noreply\r\ndelete k 0 noreply\r\n"
                  b"get a b k n nope\r\n" % (cas_of(r[0]), cas_of(r[0]))]),
    ("noreply errors are silent too (bad number, bad chunk)", [
        b"set k 0 0 abc noreply\r\nset k 0 0 noreply\r\nincr k abc noreply\r\n"
        b"touch k abc noreply\r\nset k 0 0 1 noreply\r\nabc\r\nget k\r\n"]),
    ("'noreply' as a key and as a wrong-position token", [
        b"set noreply 0 0 1\r\nn\r\ndelete noreply\r\nget noreply\r\n"
        b"set k 0 0 1 noreply extra\r\n1\r\n"]),
    ("bad data chunk (too long, too short, no CRLF)", [
        b"set k 0 0 3\r\nabcde\r\nget k\r\nset k 0 0 3\r\nabc  \r\nset k 0 0 5\r\nab\r\n\r\n\r\n"
        b"get k\r\n"]),
    ("negative length, bad flags/exptime/length, huge length", [
        b"set k 0 0 -1\r\nget k\r\nset k abc 0 1\r\nx\r\nset k 0 abc 1\r\nx\r\n"
        b"set k 0 0 1x\r\nx\r\nset k -1 0 1\r\nx\r\nset k 0 0 2147483647\r\nget k\r\n"]),
    ("memcached's number quirks: +5, 5<tab>, 4294967301, flags 2^32", [
        b"set a 0 0 +1\r\n1\r\nset b 4294967296 0 1\r\n2\r\nset c 0 0 4294967297\r\n3\r\n"
        b"get a b c\r\n"]),
    ("too many tokens / too few: ERROR", [
        b"set k 0 0 1 2 3 4\r\nx\r\nincr a 1 2 3\r\ntouch a\r\ndelete\r\nincr\r\n"
        b"delete a 0 noreply x\r\nset k 0 0\r\n"]),
    # memcached 1.6.18 drops the queued replies of everything pipelined
    # before a get/gat whose key is too long (see the documented rows at
    # the end): each such get starts a step of its own here.
    ("keys of 250 and 251 bytes on every command", [
        S(b"set ", KEY251, b" 0 0 1\r\nx\r\n"),
        S(b"get ", KEY251, b"\r\n"),
        b"set a 0 0 1\r\n1\r\n",
        S(b"get a ", KEY251, b" a\r\n"),
        S(b"gets a a ", KEY251, b"\r\n"),
        S(b"gat 1 ", KEY251, b"\r\n"),
        S(b"delete ", KEY251, b"\r\nincr ", KEY251, b" 1\r\ndecr ", KEY251, b" 1\r\n",
          b"touch ", KEY251, b" 1\r\nmg ", KEY251, b" v\r\nms ", KEY251, b" 1\r\nx\r\n",
          b"md ", KEY251, b"\r\nma ", KEY251, b"\r\nme ", KEY251, b"\r\nset ", KEY250,
          b" 0 0 1\r\ny\r\nmg ", KEY250, b" v k\r\nget ", KEY250, b"\r\n")]),
    ("delete variants: hold time 0, non-zero, noreply", [
        b"set a 0 0 1\r\n1\r\nset b 0 0 1\r\n1\r\ndelete a\r\ndelete a\r\ndelete b 0\r\n"
        b"delete b 5\r\ndelete b 0 noreply\r\ndelete b x noreply\r\n"]),
    ("value over memcached's item size, under sidepool's limit (forwarded)", [
        S(b"set k 0 0 5\r\nhello\r\nset k 0 0 %d\r\n" % len(NEAR1M), NEAR1M,
          b"\r\nget k\r\nmn\r\n")]),
    ("value over the item size max: SERVER_ERROR object too large for cache", [
        S(b"append k 0 0 5\r\nhello\r\nset j 0 0 5\r\nhello\r\n",
          b"append j 0 0 %d\r\n" % len(OVER1M), OVER1M, b"\r\nget j\r\n")]),
    ("a 2 MB value is refused and its data (command lines) swallowed", [
        S(b"set k 0 0 %d\r\n" % len(BIGV), BIGV, b"\r\nset k2 0 0 %d noreply\r\n" % len(BIGV),
          BIGV, b"\r\nget k k2\r\n")]),
    # ---- arithmetic, touch
    ("incr/decr: numbers, missing, non-numeric, bad delta, wrap, floor", [
        b"set n 0 0 1\r\n5\r\nincr n 10\r\ndecr n 3\r\ndecr n 100\r\nincr nope 1\r\n"
        b"set s 0 0 3\r\nabc\r\nincr s 1\r\ndecr s 1\r\nincr n abc\r\nincr n -1\r\n"
        b"set w 0 0 20\r\n18446744073709551615\r\nincr w 1\r\nincr w 18446744073709551615\r\n"
        b"set g 0 0 2\r\n99\r\nincr g 1\r\nget g\r\nset sp 0 0 3\r\n1  \r\nincr sp 1\r\n"
        b"incr n 18446744073709551616\r\n"]),
    ("touch: hit, miss, bad exptime", [
        b"set a 0 0 1\r\n1\r\ntouch a 100\r\ntouch nope 100\r\ntouch a abc\r\ntouch a 0\r\n"]),
    # ---- server commands
    ("verbosity: ok, noreply, missing, bad, too many", [
        b"verbosity 1\r\nverbosity 0 noreply\r\nverbosity\r\nverbosity abc\r\n"
        b"verbosity 1 2 3\r\nverbosity 0\r\n"]),
    ("version", [b"version\r\nversion x\r\n"]),
    ("flush_all: now, 0, noreply, bad, with delay (items still there)", [
        b"set a 0 0 1\r\n1\r\nflush_all\r\nget a\r\nset a 0 0 1\r\n1\r\nflush_all noreply\r\n"
        b"get a\r\nset a 0 0 1\r\n1\r\nflush_all 0\r\nflush_all abc\r\nflush_all 1 2 3\r\n"
        b"set b 0 0 1\r\n2\r\nflush_all 1000\r\nget b\r\nflush_all 1000 noreply\r\nget b\r\n"
        b"flush_all -1\r\nget b\r\n"]),
    ("stats (framing: STAT lines then END)", [
        b"stats\r\nstats settings\r\nstats items\r\nstats slabs\r\nstats sizes\r\n"
        b"stats conns\r\nstats extstore\r\nstats nosuch\r\n"],
     {"norm": norm_stats, "check": check_stats}),
    ("stats cachedump, detail, reset", [
        b"set a 0 0 1\r\n1\r\nstats cachedump 1 10\r\nstats detail on\r\nstats detail dump\r\n"
        b"stats detail off\r\nstats reset\r\n"], {"norm": norm_stats}),
    # ---- meta
    ("mg flags v k t f c s O, hit and miss", [
        b"ms k 5 T0 F7\r\nhello\r\nmg k v k t f c s O123\r\nmg k\r\nmg k s\r\nmg k f v\r\n"
        b"mg miss v\r\nmg miss v k O9\r\nmg k h\r\nmg k h\r\n"]),
    ("mg quiet: EN hidden, VA/HD/errors shown; q q is a duplicate flag", [
        b"ms k 1\r\nx\r\nmg k v q\r\nmg miss v q\r\nmg miss q k O1\r\nmg k q O7\r\n"
        b"mn\r\nmg k v q q\r\nmg k v Z q\r\nmg miss v q\r\n"]),
    ("mg on a 250 key, base64 key, too many flags", [
        S(b"ms a 1\r\n1\r\nmg YQ== b v k\r\nmg a v k t f c s O1 h l q T0 N0 R0 E1 x y z\r\n"
          b"mg a v k t f c s O1 h l T0 N0 R0 E1 x y z w\r\n")], {"norm": norm_ttl}),
    ("too many flags on ms, md, ma (17 fine, 18 refused)", [
        b"ms a 1 T0 F1 c k O1 s f t b0 I1 I2 I3 I4 I5 I6 I7 I8\r\nx\r\n"
        b"ms a 1 T0 F1 c k O1 s f t b0 I1 I2 I3 I4 I5 I6 I7 I8 I9\r\nx\r\n"
        b"md a O1 k q T0 x1 x2 x3 x4 x5 x6 x7 x8 x9 xa xb xc xd\r\n"
        b"ma a O1 k q T0 x1 x2 x3 x4 x5 x6 x7 x8 x9 xa xb xc xd xe\r\n"
        b"md a O1 k T0 x1 x2 x3 x4 x5 x6 x7 x8 x9 xa xb xc xd xe\r\n"]),
    ("ms with flags: T F c I, modes E A P R S, base64", [
        b"ms k 2 T0 F3 c\r\nab\r\nms k 2 ME\r\ncd\r\nms k 2 MA\r\nef\r\nms k 2 MP\r\ngh\r\n"
        b"ms k 2 MR\r\nij\r\nms nope 2 MR\r\nkl\r\nms nope 2 MA\r\nmn\r\nms k 2 MS k O5\r\nop\r\n"
        b"mg k v f\r\nms YWI= 1 b\r\nz\r\nmg ab v\r\nms k 2 MX\r\nqr\r\n"
        b"ms k 2 I T30\r\nst\r\nmg k v c\r\nms k 2 I\r\nuv\r\nmg k v\r\n"]),
    ("ms cas: good, stale (EX), missing (NF)", [
        b"ms k 1 c\r\na\r\n",
        lambda r: b"ms k 1 C%d\r\nb\r\nms k 1 C%d\r\nc\r\nms nope 1 C1\r\nd\r\nmg k v\r\n" % (
            int(re.search(rb"c(\d+)", r[0]).group(1)), 1)]),
    ("ms quiet: HD hidden, NS/EX/NF and errors shown", [
        b"ms k 1 q\r\na\r\nms nope 1 MR q\r\nb\r\nms k 1 C1 q\r\nc\r\nms k 1 Z q\r\nd\r\n"
        b"mg k v\r\nms k 1 q q\r\ne\r\n"]),
    ("ms invalid: no length, bad length, negative, bad chunk, bad flag", [
        b"ms k\r\nms k abc\r\nms k -1\r\nms k 2\r\nabc\r\nms k 1 Z\r\nx\r\nmg k v\r\n"
        b"ms k 1 F-1\r\nx\r\nms k 1 Tabc\r\nx\r\nms k 1 MZ\r\nx\r\nms\r\n"]),
    ("md: hit, miss, quiet, cas, invalidate, opaque/key", [
        b"ms a 1\r\n1\r\nms b 1\r\n2\r\nms c 1\r\n3\r\nmd a\r\nmd a\r\nmd b q\r\nmd nope q\r\n"
        b"md c C1\r\nmd c I T30\r\nmg c v c\r\nmd c O5 k\r\nmd nope O6 k\r\nmd c Z\r\nmd\r\n"
        b"mg a v\r\nmg b v\r\n"], {"norm": norm_ttl}),
    ("ma: missing, autovivify N/J, v, modes, delta, quiet, non-numeric", [
        b"ma n\r\nma n N0 J13\r\nma n v\r\nma n v D10\r\nma n MD D100 v\r\nma n MI D5 v t\r\n"
        b"ma n q\r\nma n v q\r\nma nope q\r\nmg n v\r\nms s 3\r\nabc\r\n"
        b"ma s\r\nma s q\r\nma n D-1\r\nma n Dabc\r\nma n MZ\r\nma n O9 k v\r\nma\r\n"],
     {"norm": norm_ttl}),
    ("mg quiet that autovivifies (N): VA/HD with W shown", [
        b"mg m1 N30 v q\r\nmg m1 N30 v q\r\nmg m2 N30 q\r\nmg m3 N30 v\r\nmg m4 N30 s q\r\n"]),
    ("mn, me (la and exp are clock readings)", [
        b"mn\r\nmn\r\nms k 1 T1000\r\nx\r\nme k\r\nme nope\r\nme\r\nmn x y\r\n"],
     {"norm": norm_ttl}),
    # ---- errors
    ("unknown command, empty line, spaces only, case matters", [
        b"foo\r\n\r\n   \r\nGET a\r\nSet a 0 0 1\r\nx\r\ngetx a\r\nmx a\r\n"]),
    ("NUL ends the line, LF-only line ends, tab in a key", [
        b"set a\x00junk 0 0 1\r\nget a\x00 b\r\nset t 0 0 1\nx\r\nget t\nset a\tb 0 0 1\r\n1\r\n"
        b"get a\tb\r\n"]),
    ("quit answers what came before it, then closes", [
        b"set a 0 0 1\r\n1\r\nget a\r\nquit\r\nget a\r\n"]),
    ("a get line of 3000 bytes (multi-key) is served", [
        S(b"set a 0 0 1\r\n1\r\nget ", b" ".join(b"a%d" % i for i in range(600)), b" a\r\n")]),
    # ---- documented differences: the proxy's answer is asserted
    ("binary protocol (0x80): refused, closed", [
        b"\x80\x0b\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
        b"\x00\x00\x00\x00\x00\x00\x00\x00"],
     {"proxy": ([b"CLIENT_ERROR sidepool: binary protocol not supported, use the text "
                 b"protocol\r\n"], True)}),
    ("a non-get line over 2048 bytes: refused, closed", [
        S(b"set a 0 0 1\r\n1\r\nget a\r\nset ", b"k" * 3000, b" 0 0 1\r\nx\r\n")],
     {"proxy": ([b"STORED\r\nVALUE a 0 1\r\n1\r\nEND\r\n"
                 b"CLIENT_ERROR sidepool: command line too long\r\n"], True)}),
    ("a gat line over 2048 bytes: refused, closed", [
        S(b"gat 0 ", b" ".join(b"a%d" % i for i in range(600)), b"\r\n")],
     {"proxy": ([b"CLIENT_ERROR sidepool: command line too long\r\n"], True)}),
    ("refused commands: shutdown, watch, lru_crawler, slabs, lru, cache_memlimit ...", [
        b"shutdown\r\nwatch\r\nwatch fetchers\r\nlru_crawler metadump all\r\n"
        b"slabs automove 1\r\nlru mode flat\r\ncache_memlimit 100\r\nextstore x\r\n"
        b"refresh_certs\r\nmisbehave\r\ndebugtime 1\r\n"
        b"cache_memlimit 100 noreply\r\nslabs reassign 1 2 noreply\r\nlru x noreply\r\n"
        b"watch noreply\r\nversion x y\r\n"],
     {"proxy": ([b"".join(b"CLIENT_ERROR sidepool: '%s' is not supported through the "
                          b"proxy\r\n" % c for c in (
                              b"shutdown", b"watch", b"watch", b"lru_crawler", b"slabs",
                              b"lru", b"cache_memlimit", b"extstore", b"refresh_certs",
                              b"misbehave", b"debugtime"))
                 + b"VERSION <server's>\r\n" + END_REP], False),
      "proxy_norm": lambda b: re.sub(rb"VERSION [^\r]*", b"VERSION <server's>", b)}),
    ("memcached quirk not reproduced: a get/gat with a 251-byte key drops the replies of "
     "commands pipelined before it; sidepool answers each", [
        S(b"set a 0 0 1\r\n1\r\nversion\r\ndelete ", KEY251, b"\r\nget a ", KEY251, b"\r\n")],
     {"proxy": ([b"STORED\r\nVERSION <server's>\r\nCLIENT_ERROR bad command line format\r\n"
                 b"CLIENT_ERROR bad command line format\r\n" + END_REP], False),
      "proxy_norm": lambda b: re.sub(rb"VERSION [^\r]*", b"VERSION <server's>", b)}),
    ("more than max_args (65536) keys in one get", [
        S(b"get ", b" ".join(b"%x" % i for i in range(65537)), b"\r\n")],
     {"proxy": ([b"CLIENT_ERROR sidepool: too many keys (max 65536)\r\n" + END_REP], False)}),
]


# Rows on their own tests: what memcached does to the item when it refuses
# a value, and quiet mode when ma creates the item.
CASES_TOO_LARGE = [
    ("set (and set noreply) too large: the old value is gone, as memcached unlinks it", [
        S(b"set k 0 0 5\r\nhello\r\nset k 0 0 %d\r\n" % len(OVER1M), OVER1M, b"\r\nget k\r\n"),
        S(b"set k 0 0 5\r\nhello\r\nset k 0 0 %d noreply\r\n" % len(OVER1M), OVER1M,
          b"\r\nget k\r\n")]),
    ("ms too large, in set, append and add mode: the old value is gone", [
        S(b"ms k 5\r\nhello\r\nms k %d T0\r\n" % len(OVER1M), OVER1M, b"\r\nmg k v\r\n"),
        S(b"ms k 5\r\nhello\r\nms k %d MA\r\n" % len(OVER1M), OVER1M, b"\r\nmg k v\r\n"),
        S(b"ms k 5\r\nhello\r\nms k %d ME q\r\n" % len(OVER1M), OVER1M, b"\r\nmg k v\r\n")]),
    ("replace/append/cas too large: the old value stays (memcached unlinks only on set)", [
        S(b"set k 0 0 5\r\nhello\r\nreplace k 0 0 %d\r\n" % len(OVER1M), OVER1M,
          b"\r\nappend k 0 0 %d\r\n" % len(OVER1M), OVER1M,
          b"\r\ncas k 0 0 %d 1\r\n" % len(OVER1M), OVER1M, b"\r\nget k\r\n")]),
]

CASES_MA_VIVIFY = [
    ("ma q that autovivifies: memcached shows the created value (VA) or HD", [
        b"ma v1 N0 J7 v q\r\nma h1 N0 J7 q\r\nma h1 N0 J7 q\r\nma v1 N0 J7 v q\r\n"
        b"mg v1 v\r\nmg h1 v\r\n"]),
]


@h.shared
def table_servers():
    """memcached A (asked directly) and B behind sidepool, started alike."""
    a = h.Memcached()
    b = h.Memcached()
    sp = start_proxy([b], request_timeout="10s")
    return a, b, sp


def flush(addr):
    with Mc(addr) as c:
        got = c.call(b"flush_all\r\n")
        assert got == b"OK\r\nMN\r\n", "flush_all on %s: %r" % (addr, got)


def show(steps_out, closed):
    return "%s%s" % (" | ".join(repr(x if len(x) < 400 else x[:300] + b"...(%d bytes)" % len(x))
                                for x in steps_out), " <closed>" if closed else "")


def run_table(cases):
    a, b, sp = table_servers()
    failures = []
    for case in cases:
        name, steps = case[0], case[1]
        opts = case[2] if len(case) > 2 else {}
        if "proxy" in opts:
            got, closed = exchange(sp.addr(), steps)
            pn = opts.get("proxy_norm", lambda x: x)
            got = [pn(x) for x in got]
            want, want_closed = opts["proxy"]
            if got != want or closed != want_closed:
                failures.append("%s:\n  proxy   %s\n  documented %s" % (
                    name, show(got, closed), show(want, want_closed)))
            continue
        flush(a.addr)
        flush(b.addr)
        direct, dclosed = exchange(a.addr, steps)
        proxied, pclosed = exchange(sp.addr(), steps)
        norm = opts.get("norm", lambda x: x)
        if "check" in opts and not pclosed:
            try:
                opts["check"](proxied)
            except AssertionError as e:
                failures.append("%s: %s" % (name, e))
        direct = [norm(x) for x in direct]
        proxied = [norm(x) for x in proxied]
        if direct != proxied or dclosed != pclosed:
            failures.append("%s:\n  memcached %s\n  sidepool  %s" % (
                name, show(direct, dclosed), show(proxied, pclosed)))
    return failures


@h.test("byte-for-byte table: %d request sequences get memcached's exact replies "
        "through sidepool (documented differences assert the proxy's answer)" % len(CASES),
        timeout=60)
def byte_for_byte_table():
    failures = run_table(CASES)
    assert not failures, "%d of %d rows differ:\n%s" % (
        len(failures), len(CASES), "\n".join(failures))


@h.test("a value too large for the item size: the stale item goes exactly when memcached "
        "removes it (set and ms), stays otherwise", timeout=30)
def too_large_value_removes_stale_item():
    failures = run_table(CASES_TOO_LARGE)
    assert not failures, "%d of %d rows differ:\n%s" % (
        len(failures), len(CASES_TOO_LARGE), "\n".join(failures))


@h.test("quiet ma hides HD/VA even when N creates the item: the documented difference "
        "from memcached 1.6.18 (which shows them), and the connection stays in step")
def quiet_ma_autovivify():
    a, b, sp = table_servers()
    flush(a.addr)
    flush(b.addr)
    req = CASES_MA_VIVIFY[0][1][0]
    with Mc(a.addr) as c:
        direct = c.call(req)
    with Mc(sp.addr()) as c:
        proxied = c.call(req)
    # memcached: VA 7, HD (created), then the two mg values
    assert direct == b"VA 1\r\n7\r\nHD\r\nVA 1\r\n8\r\nVA 1\r\n8\r\nMN\r\n", direct
    # sidepool: the same values in the server, only the creations unshown
    assert proxied == b"VA 1\r\n8\r\nVA 1\r\n8\r\nMN\r\n", proxied


# Differential fuzz: command lines built from memcached's own vocabulary,
# sent in batches to both sides. Small lengths, exptimes 0/-1/large only
# (no clock in the answer), no 'l'/'t' flags.
FUZZ_SEED = int(os.environ.get("SIDEPOOL_MC_FUZZ_SEED") or 20250)


def fuzz_line(rnd):
    keys = [b"a", b"b", b"n", b"noreply", b"k" * 250, b"k" * 251, b"x\ty", b"YQ=="]
    nums = [b"0", b"1", b"-1", b"5", b"abc", b"+3", b"4294967296", b"18446744073709551615",
            b"99999", b"1000", b"", b"0x10", b"-0"]
    flags = [b"v", b"k", b"f", b"c", b"s", b"q", b"O42", b"T0", b"T1000", b"N0", b"F3",
             b"MA", b"MP", b"MS", b"ME", b"MR", b"MI", b"MD", b"D2", b"J5", b"I", b"C1",
             b"b", b"Z", b"h", b"E5"]
    cmd = rnd.choice([b"get", b"gets", b"gat", b"gats", b"set", b"add", b"replace",
                      b"append", b"prepend", b"cas", b"incr", b"decr", b"delete", b"touch",
                      b"mg", b"ms", b"md", b"ma", b"mn", b"me", b"verbosity", b"bogus",
                      b"version", b""])
    if cmd in (b"get", b"gets", b"gat", b"gats"):
        # a too-long key there trips memcached's quirk of dropping the
        # replies queued before it (a documented table row)
        keys = keys[:5] + keys[6:]
    toks = [cmd]
    n = rnd.randrange(0, 7)
    for i in range(n):
        r = rnd.random()
        if cmd in (b"mg", b"md", b"ma", b"ms") and i > 0:
            toks.append(rnd.choice(flags) if not (cmd == b"ms" and i == 1) else
                        rnd.choice([b"0", b"1", b"3", b"abc", b"-1"]))
        elif r < 0.45:
            toks.append(rnd.choice(keys))
        elif r < 0.9:
            toks.append(rnd.choice(nums))
        else:
            toks.append(b"noreply")
    line = b" ".join(toks) + rnd.choice([b"\r\n", b"\r\n", b"\r\n", b"\n"])
    if cmd in (b"set", b"add", b"replace", b"append", b"prepend", b"cas", b"ms"):
        size = rnd.randrange(0, 5)
        data = bytes(rnd.choice(b"0123456789abc") for _ in range(size))
        line += data + rnd.choice([b"\r\n", b"\r\n", b"\r\n", b"xx", b""])
    return line


@h.test("differential fuzz: 400 command lines from memcached's vocabulary, same "
        "bytes directly and through sidepool", timeout=40)
def differential_fuzz():
    rnd = random.Random(FUZZ_SEED)
    cases = []
    for i in range(40):
        body = b"".join(fuzz_line(rnd) for _ in range(10))
        # a short data block may still be waiting: the padding feeds it
        cases.append(("fuzz batch %d (seed %d)" % (i, FUZZ_SEED),
                      [body + b"\r\n" * 4]))
    failures = run_table(cases)
    for f in failures[:3]:
        h.diag(f)
    assert not failures, "%d of %d batches differ (seed %d; set SIDEPOOL_MC_FUZZ_SEED to " \
        "rerun); first: %s" % (len(failures), len(cases), FUZZ_SEED, failures[0][:3000])


# --------------------------------------------------------------------------
# 2. Many pipelining clients on one shared server connection

def pipeline(c, data, want_len, timeout):
    """Send data while reading; return the first want_len bytes of replies
    plus whatever else arrived with them."""
    deadline = time.monotonic() + h.scale(timeout)
    sock = c.sock
    sock.setblocking(False)
    sel = selectors.DefaultSelector()
    view = memoryview(data)
    sent = 0
    got = bytearray(c.buf)
    c.buf = b""
    try:
        while len(got) < want_len or sent < len(view):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("%d of %d reply bytes, %d of %d request bytes sent; "
                                   "last bytes %r" % (len(got), want_len, sent, len(view),
                                                      bytes(got[-200:])))
            ev = selectors.EVENT_READ | (selectors.EVENT_WRITE if sent < len(view) else 0)
            sel.register(sock, ev)
            try:
                ready = sel.select(left)
            finally:
                sel.unregister(sock)
            for _, mask in ready:
                if mask & selectors.EVENT_WRITE and sent < len(view):
                    try:
                        sent += sock.send(view[sent:sent + 65536])
                    except (BlockingIOError, InterruptedError):
                        pass
                if mask & selectors.EVENT_READ:
                    try:
                        chunk = sock.recv(1 << 20)
                    except (BlockingIOError, InterruptedError):
                        continue
                    if not chunk:
                        raise ConnectionError("closed after %d of %d reply bytes: %r" % (
                            len(got), want_len, bytes(got[-200:])))
                    got += chunk
    finally:
        sel.close()
        sock.setblocking(True)
        sock.settimeout(c.timeout)
    return bytes(got)


def first_diff(got, want):
    i = 0
    n = min(len(got), len(want))
    while i < n and got[i] == want[i]:
        i += 1
    return i


def thread_work(i, rounds, run):
    """The requests of thread i, the exact reply bytes they must get, and
    the final contents of its keys."""
    P = "%s:t%d:" % (run, i)
    rnd = random.Random(i)
    req, rep = [], []
    final = {}
    req.append(("set %sn 0 0 1\r\n0\r\n" % P).encode())
    rep.append(b"STORED\r\n")
    final[P + "n"] = (0, b"0")
    for j in range(rounds):
        v = ("v%d.%d." % (i, j)).encode() + b"\r\nEND\r\nVALUE x 0 1\r\n" + \
            bytes(rnd.choice(b"abcdefghij") for _ in range(rnd.randrange(0, 300)))
        w = v[::-1]
        s, m = "%ss%d" % (P, j), "%sm%d" % (P, j)
        req.append(("set %s 0 0 %d noreply\r\n" % (s, len(v))).encode() + v + b"\r\n")
        req.append(("ms %s %d T0 F%d q\r\n" % (m, len(w), i)).encode() + w + b"\r\n")
        req.append(("mg %s v k q\r\n" % m).encode())
        rep.append(("VA %d k%s\r\n" % (len(w), m)).encode() + w + b"\r\n")
        req.append(("mg %smissing%d v q\r\n" % (P, j)).encode())
        req.append(b"mn\r\n")
        rep.append(b"MN\r\n")
        req.append(("get %s %snope%d %s\r\n" % (s, P, j, m)).encode())
        rep.append(("VALUE %s 0 %d\r\n" % (s, len(v))).encode() + v + b"\r\n" +
                   ("VALUE %s %d %d\r\n" % (m, i, len(w))).encode() + w + b"\r\nEND\r\n")
        req.append(("incr %sn 1\r\n" % P).encode())
        rep.append(b"%d\r\n" % (j + 1))
        final[s] = (0, v)
        final[m] = (i, w)
        if j % 2 == 1:
            req.append(("delete %ss%d\r\n" % (P, j - 1)).encode())
            rep.append(b"DELETED\r\n")
            final.pop("%ss%d" % (P, j - 1))
        else:
            req.append(("delete %sgone%d\r\n" % (P, j)).encode())
            rep.append(b"NOT_FOUND\r\n")
            req.append(("md %sm%d q\r\n" % (P, j + 10 ** 6)).encode())
            rep.append(b"NF\r\n")
    final[P + "n"] = (0, str(rounds).encode())
    return b"".join(req), b"".join(rep), final


def read_direct(addr, keys):
    """{key: (flags, value)} as memcached has them."""
    out = {}
    with Mc(addr, timeout=10) as c:
        for at in range(0, len(keys), 100):
            chunk = keys[at:at + 100]
            got = c.call(("get %s\r\n" % " ".join(chunk)).encode())
            pos = 0
            while True:
                e = got.index(b"\r\n", pos)
                line = got[pos:e]
                if line == b"END":
                    break
                _, k, f, n = line.split(b" ")
                n = int(n)
                out[k.decode()] = (int(f), got[e + 2:e + 2 + n])
                pos = e + 2 + n + 2
    return out


@h.test("20 threads pipelining noreply, quiet ms/mg + mn, multi-get, incr, delete on ONE "
        "server connection each get exactly their own replies; memcached holds what each "
        "wrote", timeout=60)
def shared_connection_concurrency():
    m = h.Memcached()
    sp = start_proxy([m], with_control=True, workers=1,
                     pool={"size": 1, "max_connections": 1}, request_timeout="30s")
    n, rounds = 20, 60

    def worker(i):
        data, want, final = thread_work(i, rounds, RUN)
        with Mc(sp.addr(), timeout=30) as c:
            got = pipeline(c, data, len(want), 40)
            tail = c.call(b"")   # nothing may follow the last reply but our MN
            got += tail[:-4]
        if got != want:
            at = first_diff(got, want)
            foreign = sorted(set(re.findall(rb"%s:t(\d+):" % RUN.encode(), got)) -
                             {str(i).encode()})
            raise AssertionError(
                "thread %d: replies differ at byte %d of %d (got %d bytes)%s\n  want %r\n"
                "  got  %r" % (i, at, len(want), len(got),
                               "; keys of threads %s in its replies" % foreign if foreign else "",
                               want[max(0, at - 80):at + 120], got[max(0, at - 80):at + 120]))
        return final

    finals = h.run_threads(worker, n, h.scale(50), name="thread")
    want = {}
    for f in finals:
        want.update(f)
    have = read_direct(m.addr, sorted(want) + ["%s:t%d:s%d" % (RUN, i, j)
                                               for i in range(n) for j in range(0, rounds - 1, 2)])
    wrong = [(k, want.get(k), have.get(k)) for k in sorted(set(want) | set(have))
             if want.get(k) != have.get(k)]
    assert not wrong, "%d keys differ in memcached (key, want, have): %r" % (
        len(wrong), wrong[:5])
    assert_one_connection(sp, "after 20 pipelining threads")


# --------------------------------------------------------------------------
# 3. Garbage and limits next to a well-behaved neighbour

class Neighbour:
    """A client pipelining set/get batches in a thread until stopped; every
    reply is checked."""

    def __init__(self, addr):
        self.addr = addr
        self.stop = threading.Event()
        self.error = None
        self.batches = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            with Mc(self.addr, timeout=10) as c:
                while not self.stop.is_set():
                    j = self.batches
                    reqs, want = [], []
                    for x in range(20):
                        k = "%s:nb:%d" % (RUN, x)
                        v = b"%d.%d\r\nEND\r\n" % (j, x)
                        reqs.append(b"set %s 0 0 %d\r\n%s\r\n" % (k.encode(), len(v), v))
                        want.append(b"STORED\r\n")
                        reqs.append(b"get %s %s:nb:none\r\n" % (k.encode(), RUN.encode()))
                        want.append(b"VALUE %s 0 %d\r\n%s\r\nEND\r\n" % (k.encode(), len(v), v))
                    w = b"".join(want) + b"MN\r\n"
                    got = c.call(b"".join(reqs))
                    if got != w:
                        at = first_diff(got, w)
                        raise AssertionError("batch %d differs at %d: want %r got %r" % (
                            j, at, w[at:at + 100], got[at:at + 100]))
                    self.batches += 1
        except BaseException as e:  # noqa: BLE001
            self.error = e

    def wait_batches(self, n):
        target = self.batches + n
        h.poll_until(lambda: self.batches >= target or self.error is not None, h.scale(10),
                     what="the neighbour to complete %d more batches" % n)

    def finish(self):
        self.stop.set()
        self.thread.join(h.scale(15))
        assert not self.thread.is_alive(), "the neighbour hung after %d batches" % self.batches
        if self.error is not None:
            raise AssertionError("the neighbour on the same server connection was disturbed "
                                 "after %d batches: %s" % (self.batches, self.error))


def both(direct_addr, proxy_addr, fn):
    return fn(direct_addr), fn(proxy_addr)


@h.test("garbage: memcached's errors, closed where memcached closes, binary refused, "
        "2 MB value refused and swallowed; a neighbour on the same server connection "
        "is untouched", timeout=40)
def garbage_and_limits():
    direct = h.Memcached()
    m = h.Memcached()
    sp = start_proxy([m], with_control=True, workers=1,
                     pool={"size": 1, "max_connections": 1})
    nb = Neighbour(sp.addr())
    try:
        nb.wait_batches(2)

        # garbage lines get memcached's own errors, and the client goes on
        garbage = (b"\x01\x02\x7f junk\r\nset\r\nget\r\nincr x y\r\nset k 0 0 zz\r\n"
                   b"\xff\xfe\r\nmg\r\nms k\r\n\x00\x00\r\n" + bytes(range(1, 10)) + b"\r\n"
                   b"delete a b c d e\r\n\r\n")

        def garbage_reply(addr):
            with Mc(addr) as c:
                return c.call(garbage)
        d, p = both(direct.addr, sp.addr(), garbage_reply)
        assert d == p, "garbage lines: memcached %r, sidepool %r" % (d, p)
        assert d.count(b"ERROR") >= 8, d
        nb.wait_batches(1)

        # a non-get line over 2048 bytes without a newline: memcached closes
        def long_line(addr):
            with Mc(addr) as c:
                c.send(b"set k 0 0 1\r\nx\r\n")
                assert c.line() == b"STORED\r\n"
                c.send(b"k" * 3000)
                return c.wait_closed(3)
        (dd, dclosed), (pd, pclosed) = both(direct.addr, sp.addr(), long_line)
        assert dclosed and dd == b"", "memcached itself: %r closed=%s" % (dd, dclosed)
        assert pclosed, "sidepool did not close a client sending 3000 bytes of a set line " \
            "without a newline (got %r)" % pd
        assert pd == b"CLIENT_ERROR sidepool: command line too long\r\n", \
            "before the close, sidepool said %r (documented: command line too long)" % pd

        # ... but a get line that long is a multiget and stays open in both
        def long_get(addr):
            with Mc(addr) as c:
                c.send(b"get " + b"a " * 1500)
                d2, closed = c.drain(0.3)
                c.send(b"\r\n")
                return d2, closed, c.call(b"")
        d, p = both(direct.addr, sp.addr(), long_get)
        assert d == p == (b"", False, b"END\r\nMN\r\n"), "long get: memcached %r sidepool %r" % (
            d, p)

        # binary protocol: the documented refusal, then closed
        with Mc(sp.addr()) as c:
            c.send(b"\x80\x0a\x00\x00" + b"\x00" * 20)   # a binary noop
            data, closed = c.wait_closed(3)
            assert closed and data == (b"CLIENT_ERROR sidepool: binary protocol not supported, "
                                       b"use the text protocol\r\n"), (data, closed)

        # a 2 MB value: SERVER_ERROR object too large for cache, the data
        # (full of command lines) swallowed, the connection still usable
        def big(addr):
            with Mc(addr, timeout=10) as c:
                got = c.call(b"set big 0 0 %d\r\n" % len(BIGV) + BIGV + b"\r\nget big\r\n")
                got += c.call(b"set small 0 0 2\r\nok\r\nget small\r\n")
                return got
        d, p = both(direct.addr, sp.addr(), big)
        want = (b"SERVER_ERROR object too large for cache\r\nEND\r\nMN\r\n"
                b"STORED\r\nVALUE small 0 2\r\nok\r\nEND\r\nMN\r\n")
        assert d == want, "memcached itself answered %r" % d
        assert p == want, "sidepool answered %r" % p[:500]

        nb.wait_batches(2)
    finally:
        nb.finish()
    assert nb.batches >= 5, nb.batches
    assert_one_connection(sp, "after garbage from other clients")


# --------------------------------------------------------------------------
# 4. The server dies with requests in flight

@h.test("memcached killed with requests in flight: one SERVER_ERROR sidepool each "
        "(nothing for noreply), no hang; restarted on the same port, the same client "
        "connection works again", timeout=40)
def backend_killed_and_restarted():
    m = h.Memcached()
    sp = start_proxy([m], workers=1, pool={"size": 2, "max_connections": 2},
                     request_timeout="20s", connect_timeout="1s",
                     upstream_extra={"retry_interval": "50ms", "retry_max_interval": "200ms"})
    clients = [Mc(sp.addr(), timeout=10) for _ in range(3)]
    try:
        for c in clients:
            assert c.call(b"set a 0 0 1\r\n1\r\n") == b"STORED\r\nMN\r\n"
        pause(m)
        batch = (b"get a b c\r\nset b 0 0 1 noreply\r\nx\r\nincr n 1\r\nmg a v q\r\n"
                 b"ms a 1 q\r\nz\r\ndelete zz noreply\r\nmn\r\n")
        expect = 5   # get, incr, mg q, ms q, mn; the noreply set and delete: nothing
        for c in clients:
            c.send(batch)
        forwarded = batch.replace(b" noreply", b"").replace(b" q\r\n", b"\r\n")
        h.poll_until(lambda: h.tcp_recv_queue(m.port) >= len(forwarded) * len(clients),
                     h.scale(5), what="the requests to reach the stopped memcached")
        t0 = time.monotonic()
        m.kill()
        for i, c in enumerate(clients):
            got = b""
            for _ in range(expect):
                try:
                    got += c.line(timeout=5)
                except (TimeoutError, ConnectionError) as e:
                    raise AssertionError("client %d: %d of %d error replies (%r): %s" % (
                        i, got.count(b"\r\n"), expect, got, e)) from None
            lines = got.split(b"\r\n")[:-1]
            bad = [ln for ln in lines if not ln.startswith(b"SERVER_ERROR sidepool: ")]
            assert not bad, "client %d: want %d 'SERVER_ERROR sidepool: ...' lines, got %r" % (
                i, expect, got)
            extra, closed = c.drain(0.3)
            assert extra == b"" and not closed, \
                "client %d: more after the %d error replies (noreply must get nothing): %r%s" % (
                    i, expect, extra, " then closed" if closed else "")
        assert time.monotonic() - t0 < h.scale(5), "the error replies took %.1fs" % (
            time.monotonic() - t0)

        # while it is down: a quick error per request, the client stays connected
        t0 = time.monotonic()
        clients[0].send(b"get a\r\nset b 0 0 1 noreply\r\nx\r\nmn\r\n")
        got = clients[0].line(timeout=5) + clients[0].line(timeout=5)
        assert re.match(rb"^SERVER_ERROR sidepool: [^\r\n]+\r\nSERVER_ERROR sidepool: [^\r\n]+"
                        rb"\r\n$", got), "while down: %r" % got
        assert time.monotonic() - t0 < h.scale(3), "errors while down took %.1fs" % (
            time.monotonic() - t0)
        extra, closed = clients[0].drain(0.3)
        assert extra == b"" and not closed, "while down, after 2 errors: %r closed=%s" % (
            extra, closed)

        m.restart()

        def works():
            clients[0].send(b"set a 0 0 2\r\nok\r\n")
            line = clients[0].line(timeout=5)
            if line == b"STORED\r\n":
                return True
            assert line.startswith(b"SERVER_ERROR sidepool: "), line
            return False
        h.poll_until(works, h.scale(10), what="set through sidepool to succeed after restart")
        for i, c in enumerate(clients):
            got = c.call(b"get a\r\nincr a 1\r\nset n 0 0 1\r\n7\r\nincr n 1\r\n")
            assert got == b"VALUE a 0 2\r\nok\r\nEND\r\nCLIENT_ERROR cannot increment or " \
                b"decrement non-numeric value\r\nSTORED\r\n8\r\nMN\r\n", \
                "client %d after restart: %r" % (i, got)
    finally:
        for c in clients:
            c.close()


# --------------------------------------------------------------------------
# 5. quit

@h.test("quit closes the client only: replies before it are delivered (even when in "
        "flight), the pooled server connection serves the next client (opened stays 1)")
def quit_keeps_server_connection():
    m = h.Memcached()
    sp = start_proxy([m], with_control=True, workers=1,
                     pool={"size": 1, "max_connections": 1})
    k = ("%s:quit" % RUN).encode()
    with Mc(sp.addr()) as c:
        c.send(b"set %s 0 0 2\r\nhi\r\nget %s\r\nquit\r\nget %s\r\n" % (k, k, k))
        data, closed = c.wait_closed(3)
    assert closed and data == b"STORED\r\nVALUE %s 0 2\r\nhi\r\nEND\r\n" % k, (data, closed)

    # quit while the reply to the request before it is still at the server
    with Mc(sp.addr()) as c:
        pause(m)
        try:
            c.send(b"get %s\r\nquit\r\n" % k)
            h.poll_until(lambda: h.tcp_recv_queue(m.port) > 0, h.scale(5),
                         what="the get to reach the stopped memcached")
        finally:
            m.resume()
        data, closed = c.wait_closed(3)
    assert closed and data == b"VALUE %s 0 2\r\nhi\r\nEND\r\n" % k, \
        "quit after an in-flight get: %r closed=%s" % (data, closed)

    for _ in range(3):
        with Mc(sp.addr()) as c:
            got = c.call(b"get %s\r\n" % k)
            assert got == b"VALUE %s 0 2\r\nhi\r\nEND\r\nMN\r\n" % k, got
            c.send(b"quit\r\n")
            data, closed = c.wait_closed(3)
            assert closed and data == b"", (data, closed)
    h.poll_until(lambda: pools(sp)[2][0]["idle"] == 1, h.scale(5),
                 what="the server connection to be idle in the pool")
    assert_one_connection(sp, "after 5 clients that quit")


# --------------------------------------------------------------------------
# 6. libmemcached's command-line tools

def tool(*names):
    for n in names:
        if h.which(n):
            return n
    return None


@h.test("libmemcached tools: memcp a file in, memcat it back identical, memrm, memcslap "
        "set/get with 4 threads", timeout=60)
def libmemcached_tools():
    cp, cat, rm, slap = (tool("memccp", "memcp"), tool("memccat", "memcat"),
                         tool("memcrm", "memrm"), tool("memcslap", "memslap"))
    if not (cp and cat and rm and slap):
        raise h.Skip("libmemcached-tools not installed")
    m = h.Memcached()
    sp = start_proxy([m], with_control=True, workers=2,
                     pool={"size": 4, "max_connections": 8})
    servers = "--servers=" + sp.addr()

    def run(*argv, timeout=30):
        r = subprocess.run(list(argv), capture_output=True, timeout=h.scale(timeout),
                           stdin=subprocess.DEVNULL)
        return r

    d = h.mkdtemp("sp-mctools-")
    name = "%s-file.bin" % RUN
    path = os.path.join(d, name)
    payload = os.urandom(200 * 1024) + b"\r\nEND\r\nVALUE x 0 1\r\n"
    with open(path, "wb") as f:
        f.write(payload)
    r = run(cp, servers, path)
    assert r.returncode == 0, "%s: exit %d %r %r" % (cp, r.returncode, r.stdout, r.stderr)
    out = os.path.join(d, "out.bin")
    r = run(cat, servers, "--file=" + out, name)   # on stdout it adds a newline
    with open(out, "rb") as f:
        back = f.read()
    assert r.returncode == 0 and back == payload, "%s: exit %d, %d bytes (want %d) %r" % (
        cat, r.returncode, len(back), len(payload), r.stderr[:300])
    # the value as memcached holds it
    with Mc(m.addr) as c:
        got = c.call(b"get %s\r\n" % name.encode())
    assert payload in got, "memcached does not hold the file's bytes"
    r = run(rm, servers, name)
    assert r.returncode == 0, "%s: exit %d %r %r" % (rm, r.returncode, r.stdout, r.stderr)
    r = run(cat, servers, name)
    assert r.returncode != 0 and r.stdout == b"", \
        "%s after %s: exit %d, stdout %r" % (cat, rm, r.returncode, r.stdout[:100])

    for test in ("set", "get"):
        r = run(slap, servers, "--concurrency=4", "--execute-number=500", "--test=" + test)
        out = (r.stdout + r.stderr).decode("utf-8", "replace")
        assert r.returncode == 0 and not re.search(r"error|fail", out, re.I), \
            "%s --test=%s: exit %d\n%s" % (slap, test, r.returncode, out[-2000:])
    # nothing went wrong on the server side either
    opened, closed, ps = pools(sp)
    bad = {k: v for k, v in closed.items() if v and k not in ("evicted", "idle_timeout")}
    assert not bad, "server connections closed for %s" % bad


# MC_ONLY=name,name runs only the tests whose function names contain one
# of them (to rerun a failure quickly).
if os.environ.get("MC_ONLY"):
    h._tests[:] = [t for t in h._tests
                   if any(x in t[1].__name__ for x in os.environ["MC_ONLY"].split(","))]
h.run()
