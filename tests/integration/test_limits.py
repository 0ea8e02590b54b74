#!/usr/bin/env python3
"""
test_limits.py - resource exhaustion and the per-client limits.

1. Out of file descriptors (the daemon runs with RLIMIT_NOFILE 40): the
   connections it has no descriptor for wait in the backlog (or are closed),
   the daemon does not spin (its CPU time over 2 s stays low), it logs a
   warning naming LimitNOFILE, keeps serving the clients it has, and accepts
   and serves the waiting ones as soon as clients leave.
2. The same while sidepoolctl waits on the control socket: the control
   socket's accept must back off too (no busy loop), and the command is
   answered once descriptors are free again.
3. max_clients with clients arriving in parallel on two workers never
   admits more than the limit (the clients' own view and
   `sidepoolctl --json clients`), and the rejected ones get one
   -ERR sidepool: line and are closed.
4. max_request_size 1m: a 2 MB request gets one error and its client is
   closed; a client streaming an endless bulk is cut off after about 1 MB
   (the daemon's memory does not follow it); a neighbour pipelining on the
   same server connection sees none of it.
5. max_pending 16: a client pipelining 10,000 requests gets all 10,000
   replies in order; while the server is stopped at most 16 of them are in
   flight (reading pauses, nothing is dropped).
6. max_output: the server connection a slow reader paused is closed under
   it (the server died, a neighbour's write failed) and reaped; every
   request still gets one reply, and when the reader reads on or leaves
   nothing freed is touched (the soak's use-after-free, f4d8a92). Every step
   waits for what the daemon shows, so it holds on slow sanitizer builds.
7. Redis limits give the same answer however the request was cut.
8. Out of descriptors for a server connection: the request that needed it
   gets "-ERR sidepool: out of file descriptors ...", logged once a second;
   the server is never marked down and serves once clients leave.
"""

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

h.require_tools("redis-server")

CTL_BIN = os.environ.get("SIDEPOOLCTL_BIN") or os.path.join(
    os.path.dirname(h.SIDEPOOL_BIN), "sidepoolctl")
if not os.access(CTL_BIN, os.X_OK):
    print("1..0")
    print("Bail out! sidepoolctl not found or not executable: %s" % CTL_BIN)
    sys.stdout.flush()
    sys.exit(0)

MB = 1 << 20
CLK_TCK = os.sysconf("SC_CLK_TCK")
NOFILE = 40 + (24 if h.WRAPPER else 0)   # valgrind keeps descriptors of its own
NO_PROBES = {"size": 2, "max_connections": 2, "idle_timeout": 0, "probe_interval": 0}

# Run the daemon (or its wrapper) with a descriptor limit: this python sets
# RLIMIT_NOFILE and execs the rest of the command line, keeping the pid.
_LIMIT_EXEC = ("import os, resource, sys; n = int(sys.argv[1]); "
               "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); "
               "os.execvp(sys.argv[2], sys.argv[2:])")


class Daemon(h.Sidepool):
    """h.Sidepool with a control socket in its temp dir and, optionally, a
    descriptor limit."""

    def __init__(self, config, nofile=None):
        self.nofile = nofile
        super().__init__(config, start=False)
        self.ctl_path = os.path.join(self.tmp, "control.sock")
        self.config_src["control"] = {"path": self.ctl_path}
        self.start()
        h.poll_until(lambda: ctl(self, "version").returncode == 0, h.scale(5),
                     what="the control socket to answer")

    def argv(self, *extra):
        base = super().argv(*extra)
        if self.nofile is None:
            return base
        return [sys.executable, "-c", _LIMIT_EXEC, str(self.nofile)] + base


def ctl(sp, cmd, timeout=10.0):
    """sidepoolctl --json CMD; the CompletedProcess."""
    return subprocess.run([CTL_BIN, "-s", sp.ctl_path, "--json", cmd], capture_output=True,
                          text=True, timeout=h.scale(timeout), stdin=subprocess.DEVNULL)


def ctl_json(sp, cmd):
    r = ctl(sp, cmd)
    if r.returncode not in (0, 4):
        raise AssertionError("sidepoolctl --json %s exited %d: %r %r" % (
            cmd, r.returncode, r.stdout[:300], r.stderr[:300]))
    return json.loads(r.stdout)


def cpu_seconds(pid):
    """utime + stime of the whole process, in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def thread_cpu(pid):
    """{tid: utime + stime} of every thread, for the diagnostics."""
    out = {}
    for t in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/stat" % (pid, t)) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(t)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def nfds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def cpu_over(pid, seconds):
    """CPU seconds the daemon used over the next `seconds`, and per thread."""
    c0, t0 = cpu_seconds(pid), thread_cpu(pid)
    time.sleep(seconds)
    c1, t1 = cpu_seconds(pid), thread_cpu(pid)
    return c1 - c0, {t: round(t1[t] - t0.get(t, 0), 2) for t in t1}


CPU_LIMIT = 0.3 * (3 if h.WRAPPER else 1)   # seconds of CPU over 2 s of waiting


def got_reply(c, timeout):
    """One reply within timeout: the reply, None if nothing came, or
    h.ConnectionClosed if the daemon closed the connection."""
    try:
        return c.read_reply(timeout=timeout)
    except TimeoutError:
        return None
    except (h.ConnectionClosed, ConnectionResetError):
        return h.ConnectionClosed


def flood(sp, n):
    """n clients connected at once, each with a PING sent; a list."""
    out = []
    for _ in range(n):
        c = sp.client(timeout=10)
        c.send(h.encode("PING"))
        out.append(c)
    return out


def wait_exhausted(sp):
    """Wait for the daemon to say it is out of descriptors (a warning naming
    LimitNOFILE) and for its descriptor count to stop growing."""
    h.poll_until(lambda: "LimitNOFILE" in sp.log_text(), h.scale(5),
                 what="a warning naming LimitNOFILE in the log (%d descriptors open)" %
                 nfds(sp.pid))
    last = [-1]

    def steady():
        n, last[0] = last[0], nfds(sp.pid)
        return n == last[0]

    h.poll_until(steady, h.scale(5), interval=0.2, what="the descriptor count to settle")


def own_keys_ok(c, tag):
    """SET/GET of the client's own keys, pipelined; raise on a wrong reply."""
    cmds, want = [], []
    for j in range(3):
        k, v = "%s:%d" % (tag, j), ("%s=%d" % (tag, j)).encode()
        cmds += [("SET", k, v), ("GET", k)]
        want += ["OK", v]
    got = c.pipeline(cmds)
    assert got == want, "%s: got %r, want %r" % (tag, got, want)


def sort_served(clients, timeout):
    """Split clients by what they got for their PING after waiting timeout
    (scaled): (served, waiting, closed). A served client got exactly PONG."""
    time.sleep(h.scale(timeout))
    served, waiting, closed = [], [], []
    for c in clients:
        v = got_reply(c, 0.02)
        if v is None:
            waiting.append(c)
        elif v is h.ConnectionClosed:
            closed.append(c)
        else:
            assert v == "PONG", "a PING got %r" % (v,)
            served.append(c)
    return served, waiting, closed


# --------------------------------------------------------------------------
# 1. out of file descriptors

@h.test("RLIMIT_NOFILE %d, 80 clients: the extra ones wait (no busy loop: CPU < %.1fs over "
        "2s), a LimitNOFILE warning, the served ones keep working; when clients leave the "
        "waiting ones are accepted and served" % (NOFILE, CPU_LIMIT), timeout=45)
def out_of_fds():
    r = h.RedisServer()
    cfg = h.redis_config([r], workers=1, pool=NO_PROBES)
    sp = Daemon(cfg, nofile=NOFILE)
    with open("/proc/%d/limits" % sp.pid) as f:
        lim = [ln for ln in f if ln.startswith("Max open files")]
    assert lim and lim[0].split()[3] == str(NOFILE), "the limit did not apply: %r" % lim
    # a warm pooled connection: serving needs no new descriptor
    with sp.client() as c:
        own_keys_ok(c, "warm")
    base = nfds(sp.pid)
    h.diag("descriptors at rest: %d of %d" % (base, NOFILE))

    clients = flood(sp, 80)
    wait_exhausted(sp)
    served, waiting, closed = sort_served(clients, 2.0)
    h.diag("served %d, waiting %d, closed %d; descriptors %d" % (
        len(served), len(waiting), len(closed), nfds(sp.pid)))
    assert served, "no client was served"
    assert waiting or closed, "all 80 clients were served with a limit of %d" % NOFILE
    assert len(served) <= NOFILE, len(served)

    used, per_thread = cpu_over(sp.pid, 2.0)
    assert used < CPU_LIMIT, \
        "the daemon used %.2fs of CPU in 2s while out of descriptors (per thread: %s): " \
        "it spins" % (used, per_thread)
    h.diag("CPU over 2s while out of descriptors: %.2fs" % used)
    lines = [ln for ln in sp.log_text().splitlines() if "LimitNOFILE" in ln]
    h.diag("%d warning lines so far; the first: %s" % (len(lines), lines[0]))

    # the clients it has keep working (each its own keys)
    for i, c in enumerate(served):
        own_keys_ok(c, "served%d" % i)

    # clients leave: the waiting ones come in, a batch at a time
    rounds, done, left = 0, len(served), waiting
    for c in served:
        c.close()
    deadline = time.monotonic() + h.scale(20)
    while left:
        assert time.monotonic() < deadline, \
            "%d clients still waiting 20s after the others left (%d served)" % (
                len(left), done)
        rounds += 1
        got, left, gone = sort_served(left, 1.0)
        assert not gone, "%d waiting clients were closed after descriptors came back" % \
            len(gone)
        for i, c in enumerate(got):
            own_keys_ok(c, "late%d.%d" % (rounds, i))
            c.close()
        done += len(got)
    h.diag("every waiting client was served, in %d rounds" % rounds)
    for c in closed:
        c.close()
    h.poll_until(lambda: nfds(sp.pid) <= base, h.scale(5),
                 what="descriptors back to %d (have %d)" % (base, nfds(sp.pid)))
    with sp.client() as c:
        own_keys_ok(c, "after")
    assert sp.alive()


@h.test("RLIMIT_NOFILE %d, sidepoolctl waiting on the control socket while out of "
        "descriptors: no busy loop (CPU < %.1fs over 2s); answered once clients leave"
        % (NOFILE, CPU_LIMIT), timeout=40)
def out_of_fds_control():
    r = h.RedisServer()
    cfg = h.redis_config([r], workers=1, pool=NO_PROBES)
    sp = Daemon(cfg, nofile=NOFILE)
    clients = flood(sp, 80)
    wait_exhausted(sp)
    idle, _ = cpu_over(sp.pid, 1.0)
    p = subprocess.Popen([CTL_BIN, "-s", sp.ctl_path, "--json", "stats"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        used, per_thread = cpu_over(sp.pid, 2.0)
        h.diag("CPU: %.2fs in 1s before sidepoolctl, %.2fs in 2s with it waiting (per "
               "thread, main first: %s)" % (idle, used, per_thread))
        problems = []
        if used >= CPU_LIMIT:
            problems.append("the daemon used %.2fs of CPU in 2s while a control connection "
                            "waited and it had no descriptor to accept it: the control "
                            "socket's accept spins on EMFILE (per thread: %s)" % (
                                used, per_thread))
        for c in clients:
            c.close()
        try:
            out, err = p.communicate(timeout=h.scale(10))
        except subprocess.TimeoutExpired:
            problems.append("sidepoolctl stats got no answer within 10s of descriptors "
                            "coming back")
        else:
            if p.returncode != 0 or '"clients"' not in out.decode():
                # its connection was closed for want of a descriptor (what
                # valgrind does): then the next one must be answered
                h.diag("sidepoolctl stats, started while out of descriptors, exited %d: "
                       "%r %r" % (p.returncode, out[:200], err[:200]))
                r = ctl(sp, "stats")
                if r.returncode != 0 or '"clients"' not in r.stdout:
                    problems.append("sidepoolctl stats after the clients left exited %d: "
                                    "%r %r" % (r.returncode, r.stdout[:200], r.stderr[:200]))
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert sp.alive()
    assert not problems, "; ".join(problems)


# --------------------------------------------------------------------------
# 3. max_clients under parallel arrivals

REJECT = b"-ERR sidepool: "


@h.test("max_clients 5, 2 workers, 40 clients at once: exactly 5 admitted, 35 get one "
        "-ERR sidepool: line and are closed; then 24 threads churning never have more than "
        "5 admitted (clients' view and sidepoolctl clients)", timeout=40)
def max_clients_parallel():
    r = h.RedisServer()
    cfg = h.redis_config([r], listen=[h.AUTO_TCP, h.AUTO_UNIX], workers=2, pool=NO_PROBES)
    cfg["listeners"][0]["max_clients"] = 5
    sp = Daemon(cfg)
    limited = sp.listeners[0]

    def listener_clients():
        v = ctl_json(sp, "clients")
        return sum(e["clients"] for e in v["clients"] if e["listener"] == limited)

    # the sampler: sidepoolctl's count of the limited listener, all along
    samples, stop = [], threading.Event()

    def sample():
        while not stop.is_set():
            try:
                samples.append(listener_clients())
            except Exception as e:  # noqa: BLE001 - reported below
                samples.append(repr(e))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        # round 1: 40 at once, nobody leaves
        def arrive(i):
            c = h.RespClient(limited, timeout=10)
            c.send(h.encode("PING"))
            data = b""
            deadline = time.monotonic() + h.scale(5)
            while not data.endswith(b"\r\n") and time.monotonic() < deadline:
                c.sock.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    chunk = c.sock.recv(4096)
                except (socket.timeout, ConnectionResetError):
                    break
                if not chunk:
                    break
                data += chunk
            if data == b"+PONG\r\n":
                return ("admitted", c)
            if data.startswith(REJECT) and data.count(b"\r\n") == 1:
                closed = c.is_closed(timeout=3)
                c.close()
                return ("rejected" if closed else "rejected-open", data)
            c.close()
            return ("other", data)

        results = h.run_threads(arrive, 40, h.scale(20), name="arrival")
        kinds = {}
        for k, _ in results:
            kinds[k] = kinds.get(k, 0) + 1
        admitted = [c for k, c in results if k == "admitted"]
        others = [d for k, d in results if k not in ("admitted", "rejected")]
        h.diag("40 arrivals: %s; a rejection: %r" % (
            kinds, next((d for k, d in results if k == "rejected"), None)))
        assert not others, "unexpected answers: %r" % others[:3]
        assert len(admitted) == 5 and kinds.get("rejected") == 35, kinds
        h.poll_until(lambda: listener_clients() == 5, h.scale(5), what="5 clients")
        st = ctl_json(sp, "stats")["clients"]
        assert st["rejected"] == 35 and st["current"] == 5, st
        for i, c in enumerate(admitted):
            own_keys_ok(c, "held%d" % i)
        # the unlimited listener is not counted against it
        extra = [h.RespClient(sp.listeners[1]) for _ in range(8)]
        for i, c in enumerate(extra):
            own_keys_ok(c, "unix%d" % i)
            c.close()
        for c in admitted:
            c.close()
        h.poll_until(lambda: listener_clients() == 0, h.scale(5), what="0 clients")

        # round 2: churn; a client admitted and not yet closed on our side is
        # still counted by the daemon, so ours is a lower bound of its count
        lock = threading.Lock()
        holding = [0, 0]   # now, max
        counts = {"admitted": 0, "rejected": 0}

        def churn(i):
            for j in range(12):
                c = h.RespClient(limited, timeout=10)
                try:
                    v = got_reply_after(c, h.encode("PING"))
                    if v == "PONG":
                        with lock:
                            holding[0] += 1
                            holding[1] = max(holding[1], holding[0])
                            counts["admitted"] += 1
                        try:
                            own_keys_ok(c, "churn%d.%d" % (i, j))
                            time.sleep(0.005)
                        finally:
                            with lock:
                                holding[0] -= 1
                    else:
                        assert v is h.ConnectionClosed or (
                            isinstance(v, h.Error) and v.startswith("ERR sidepool:")), \
                            "churn %d.%d: PING got %r" % (i, j, v)
                        with lock:
                            counts["rejected"] += 1
                finally:
                    c.close()

        h.run_threads(churn, 24, h.scale(25), name="churn")
        h.diag("churn: %s, at most %d held at once on the clients' side" % (
            counts, holding[1]))
        assert holding[1] <= 5, "%d clients held an admitted connection at once" % holding[1]
        assert counts["admitted"] >= 5, counts
    finally:
        stop.set()
        sampler.join(h.scale(15))
    bad = [s for s in samples if not isinstance(s, int)]
    nums = [s for s in samples if isinstance(s, int)]
    h.diag("%d samples of sidepoolctl clients, max %s" % (len(nums), max(nums or [None])))
    assert not bad, "sidepoolctl clients failed: %s" % bad[:3]
    assert nums and max(nums) <= 5, "sidepoolctl counted %d clients on a listener with " \
        "max_clients 5" % max(nums)
    assert sp.alive()


def got_reply_after(c, data):
    """Send data, then one reply (or h.ConnectionClosed)."""
    try:
        c.send(data)
    except (BrokenPipeError, ConnectionResetError):
        return h.ConnectionClosed
    try:
        return c.read_reply(timeout=5)
    except (h.ConnectionClosed, ConnectionResetError):
        return h.ConnectionClosed


# --------------------------------------------------------------------------
# 4. max_request_size

class Neighbour:
    """A client pipelining SET/GET of its own keys until stopped; every
    reply must be right."""

    def __init__(self, addr, tag):
        self.tag = tag
        self.stop = threading.Event()
        self.errors = []
        self.rounds = 0
        self.c = h.RespClient(addr, timeout=10)
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        try:
            while not self.stop.is_set():
                own_keys_ok(self.c, "%s:%d" % (self.tag, self.rounds))
                self.rounds += 1
        except Exception as e:  # noqa: BLE001
            self.errors.append(repr(e))

    def finish(self):
        h.poll_until(lambda: self.rounds > 10 or self.errors, h.scale(10),
                     what="the neighbour to make progress")
        self.stop.set()
        self.t.join(h.scale(15))
        self.c.close()
        assert not self.errors, "the neighbour saw: %s" % self.errors[:3]


@h.test("max_request_size 1m: a 2 MB SET gets one -ERR line and is closed; an endless "
        "64 MB bulk is cut off near 1 MB and the daemon's RSS does not follow; a neighbour "
        "on the same server connection sees nothing", timeout=40)
def max_request_size():
    r = h.RedisServer()
    cfg = h.redis_config([r], workers=1, pool={"size": 1, "max_connections": 1,
                                               "idle_timeout": 0, "probe_interval": 0},
                         upstream_extra={"limits": {"max_request_size": "1m"}})
    sp = Daemon(cfg)
    nb = Neighbour(sp.addr(), "nb")
    try:
        with sp.client() as c:
            # just under the limit is fine
            v = b"x" * (MB - 4096)
            assert c.call("SET", "under", v) == "OK"
            assert c.call("GET", "under") == v
        # over it: one error, then the close
        with sp.client(timeout=10) as c:
            c.sock.sendall(h.encode("SET", "over", b"y" * (2 * MB)))
            data, closed = c.read_raw(timeout=5)
        h.diag("2 MB SET got %r, closed %s" % (data[:120], closed))
        assert closed, "the client was not closed (got %r)" % data[:200]
        assert data.startswith(b"-ERR") and data.endswith(b"\r\n") and \
            data.count(b"\r\n") == 1, "want one -ERR line, got %r" % data[:300]
        assert b"max_request_size" in data or b"Protocol error" in data, data
        assert r.call("EXISTS", "over") == 0, "the oversized SET reached the server"

        # an endless bulk: the daemon must stop reading it, not buffer it
        rss0 = h.rss_kb(sp.pid)
        c = sp.client(timeout=10)
        c.sock.sendall(b"*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n$100000000\r\n")
        chunk = b"z" * 65536
        sent, peak, cut = 0, rss0, None
        c.sock.settimeout(h.scale(5))
        try:
            while sent < 64 * MB:
                c.sock.sendall(chunk)
                sent += len(chunk)
                if sent % MB == 0:
                    peak = max(peak, h.rss_kb(sp.pid))
        except (BrokenPipeError, ConnectionResetError, socket.timeout) as e:
            cut = e
        peak = max(peak, h.rss_kb(sp.pid))
        data, closed = c.read_raw(timeout=3)
        c.close()
        h.diag("endless bulk: %.1f MB sent before %r; got %r; RSS %d -> peak %d kB" % (
            sent / MB, cut, data[:120], rss0, peak))
        assert cut is not None and not isinstance(cut, socket.timeout), \
            "the daemon took %.1f MB of one request with max_request_size 1m (%r)" % (
                sent / MB, cut)
        assert sent < 16 * MB, "the daemon read %.1f MB of one request" % (sent / MB)
        if not h.WRAPPER:
            assert peak - rss0 < 24 * 1024, \
                "RSS grew by %d kB for one client's 1 MB request" % (peak - rss0)
        with sp.client() as c:
            own_keys_ok(c, "after")
    finally:
        nb.finish()
    st = ctl_json(sp, "stats")
    h.diag("protocol_errors %s, clients %s" % (st["protocol_errors"], st["clients"]))
    assert sp.alive()


@h.test("memcache, max_request_size 1m: a 2 MB set gets SERVER_ERROR object too large for "
        "cache, its data is swallowed and the connection goes on; a neighbour is untouched",
        timeout=30)
def max_request_size_memcache():
    if not h.which("memcached"):
        raise h.Skip("memcached not found")
    m = h.Memcached()
    cfg = h.redis_config([m], workers=1, upstream="mc",
                         pool={"size": 1, "max_connections": 1, "idle_timeout": 0,
                               "probe_interval": 0},
                         upstream_extra={"protocol": "memcache",
                                         "limits": {"max_request_size": "1m"}})
    sp = Daemon(cfg)
    nb_stop, nb_err, nb_n = threading.Event(), [], [0]

    def neighbour():
        try:
            s = h.connect(sp.addr(), h.scale(10))
            f = s.makefile("rb")
            while not nb_stop.is_set():
                k, v = "nb%d" % nb_n[0], b"v%d" % nb_n[0]
                s.sendall(b"set %s 0 0 %d\r\n%s\r\nget %s\r\n" % (k.encode(), len(v), v,
                                                                  k.encode()))
                want = [b"STORED\r\n", b"VALUE %s 0 %d\r\n" % (k.encode(), len(v)),
                        v + b"\r\n", b"END\r\n"]
                got = [f.readline() for _ in want]
                if got != want:
                    nb_err.append("got %r want %r" % (got, want))
                    return
                nb_n[0] += 1
            s.close()
        except Exception as e:  # noqa: BLE001
            nb_err.append(repr(e))

    t = threading.Thread(target=neighbour, daemon=True)
    t.start()
    try:
        s = h.connect(sp.addr(), h.scale(10))
        f = s.makefile("rb")
        big = b"q" * (2 * MB)
        s.sendall(b"set big 0 0 %d\r\n" % len(big) + big + b"\r\n")
        line = f.readline()
        h.diag("2 MB set got %r" % line)
        assert line == b"SERVER_ERROR object too large for cache\r\n", line
        s.sendall(b"set small 0 0 2\r\nok\r\nget small\r\n")
        got = [f.readline() for _ in range(4)]
        assert got == [b"STORED\r\n", b"VALUE small 0 2\r\n", b"ok\r\n", b"END\r\n"], got
        s.close()
    finally:
        h.poll_until(lambda: nb_n[0] > 10 or nb_err, h.scale(10), what="the neighbour")
        nb_stop.set()
        t.join(h.scale(10))
    assert not nb_err, nb_err
    assert sp.alive()


# --------------------------------------------------------------------------
# 5. max_pending

@h.test("max_pending 16: 10,000 pipelined INCRs get 10,000 replies in order; with the "
        "server stopped at most 16 are in flight and reading pauses", timeout=40)
def max_pending():
    r = h.RedisServer()
    cfg = h.redis_config([r], workers=1, request_timeout="20s",
                         pool={"size": 2, "max_connections": 2, "idle_timeout": 0,
                               "probe_interval": 0},
                         upstream_extra={"limits": {"max_pending": 16}})
    sp = Daemon(cfg)
    n = 10000

    # 1. straight through
    with sp.client(timeout=20) as c:
        got = c.send_and_read(h.encode("INCR", "pend:a") * n, n, timeout=20)
        bad = [(i, v) for i, v in enumerate(got) if v != i + 1]
        assert not bad, "%d of %d replies out of order or wrong; first %r" % (
            len(bad), n, bad[:3])

    # 2. with the server stopped: reading must pause at 16 in flight
    c = sp.client(timeout=30)
    assert c.call("PING") == "PONG"
    r.pause()
    sender_err = []

    def send_all():
        try:
            c.sock.sendall(h.encode("INCR", "pend:b") * n)
        except Exception as e:  # noqa: BLE001
            sender_err.append(repr(e))

    t = threading.Thread(target=send_all, daemon=True)
    try:
        t.start()

        def in_flight():
            return sum(p["in_flight"] for p in ctl_json(sp, "pools")["pools"])

        h.poll_until(lambda: in_flight() >= 16, h.scale(5), what="16 requests in flight")
        time.sleep(0.5)
        flying = in_flight()
        cl = ctl_json(sp, "clients")["clients"]
        h.diag("server stopped: %d in flight; clients view %s" % (flying, cl))
        assert flying == 16, "%d requests in flight with max_pending 16" % flying
    finally:
        r.resume()
    got = c.read_replies(n, timeout=30)
    t.join(h.scale(10))
    assert not sender_err, sender_err
    bad = [(i, v) for i, v in enumerate(got) if v != i + 1]
    assert not bad, "%d of %d replies out of order or wrong; first %r" % (
        len(bad), n, bad[:3])
    assert c.call("GET", "pend:b") == b"%d" % n
    c.close()
    assert sp.alive()


# --------------------------------------------------------------------------
# 6. max_output: the paused connection dies under its slow reader

# The soak's use-after-free (fixed in f4d8a92): a client over max_output holds
# the one server connection paused, by pointer; the server dies, a neighbour's
# write closes that connection, and the worker reaps it; then the slow client
# reads on (or leaves) and resumes the connection. Every step waits for what
# the daemon shows (its counters, the kernel's socket table), never for time,
# so a slow sanitizer build only makes it slower. Without the fix ASan aborts
# the daemon at the resume; the harness's last check finds the report.

UAF_VALUE = 512 * 1024
UAF_GETS = 40
UAF_MAX_OUTPUT = "64k"
UAF_MAX_OUTPUT_BYTES = 64 * 1024


def tcp_states_to(port):
    """States (hex, as in /proc/net/tcp) of the loopback TCP sockets whose
    remote port is port: the daemon's connections to a server."""
    return [st for _, remote, st, _ in h.tcp_sockets() if remote == port]


def open_states_to(port):
    """Those of tcp_states_to that can still carry data: ESTABLISHED (01) or
    CLOSE_WAIT (08, the server closed and the daemon has not read the FIN)."""
    return [s for s in tcp_states_to(port) if s in ("01", "08")]


def one_pool(sp):
    pools = ctl_json(sp, "pools")["pools"]
    assert len(pools) == 1, pools
    return pools[0]


def paused_connection_dies(how):
    r = h.RedisServer()
    cfg = h.redis_config([r], listen=[h.AUTO_UNIX, h.AUTO_TCP], workers=1,
                         pool={"size": 1, "max_connections": 1, "idle_timeout": 0,
                               "probe_interval": 0},
                         upstream_extra={"limits": {"max_output": UAF_MAX_OUTPUT}})
    sp = Daemon(cfg)
    value = bytes(i % 251 for i in range(UAF_VALUE))
    assert r.call("SET", "uaf:big", value) == "OK"

    # The slow reader: 40 GETs of 512 KB, nothing read. One reply is more
    # than max_output, so the first one completed pauses the connection
    # (whatever the kernel buffers). Over a unix socket the kernel holds
    # about 200 KB of it and never grows that, so the daemon keeps over
    # half of max_output owed: paused for good, in_flight fixed.
    a = h.RespClient(sp.addr(0), timeout=60)
    a.send(h.encode_many([("GET", "uaf:big")] * UAF_GETS))
    h.poll_until(lambda: any(row["biggest_output"] >= UAF_MAX_OUTPUT_BYTES // 2
                             for row in ctl_json(sp, "clients")["clients"]),
                 h.scale(20), what="the slow reader to be owed half of max_output "
                 "(the connection is then paused)")
    pool = one_pool(sp)
    assert pool["active"] == 1 and pool["opened"] == 1, pool
    held = pool["in_flight"]
    assert 0 < held < UAF_GETS, "in flight on the paused connection: %d" % held
    h.diag("paused with %d of %d GETs still in flight" % (held, UAF_GETS))

    # a neighbour's request joins the paused connection (it is the only
    # one): it waits there, behind the slow reader's replies
    b = h.RespClient(sp.addr(1), timeout=20)
    b.send(h.encode("GET", "uaf:other"))
    h.poll_until(lambda: one_pool(sp)["in_flight"] == held + 1, h.scale(5),
                 what="the neighbour's GET to join the paused connection")

    # the server dies; the paused connection cannot see it (it reads
    # nothing), so the neighbour's next writes find out: the first one is
    # answered by a reset, the one after it fails and closes the connection
    r.kill()
    sent = 1
    while one_pool(sp)["closed"]["server_error"] == 0:
        assert sent < 6, "6 writes to a dead server and the connection is still open: %r" % (
            one_pool(sp),)
        before = len(open_states_to(r.port))
        b.send(h.encode("GET", "uaf:other"))
        sent += 1
        h.poll_until(lambda: one_pool(sp)["closed"]["server_error"] > 0 or
                     len(open_states_to(r.port)) < before, h.scale(5),
                     what="the write to the dead server to be reset or to fail")
    pool = one_pool(sp)
    assert pool["active"] + pool["in_flight"] == 0, pool
    h.diag("the paused connection closed after %d neighbour writes: %s" % (
        sent, pool["closed"]))
    for i in range(sent):
        v = b.read_reply()
        assert isinstance(v, h.Error) and v.startswith("ERR sidepool: connection to") and \
            "lost" in v, "the neighbour's GET %d got %r" % (i + 1, v)
    b.close()

    # the worker has reaped the closed connection by now (the pool no longer
    # counts it); the slow reader now resumes it, by reading or by leaving
    if how == "reads":
        got = a.read_replies(UAF_GETS, timeout=60)
        values = [v for v in got if v == value]
        errors = [v for v in got if isinstance(v, h.Error)]
        assert len(values) + len(errors) == UAF_GETS, \
            "replies neither the value nor an error: %r" % (
                [v[:60] for v in got if v != value and not isinstance(v, h.Error)],)
        assert got == values + errors, "a value after an error: replies out of order"
        assert len(values) == UAF_GETS - held, (len(values), held)
        assert all(e.startswith("ERR sidepool: connection to") for e in errors), errors[:3]
        h.diag("the slow reader got %d values and %d errors" % (len(values), len(errors)))
        a.close()
    else:
        a.close()
        h.poll_until(lambda: sum(row["clients"] for row in ctl_json(sp, "clients")["clients"]
                                 if row["listener"] == sp.addr(0)) == 0,
                     h.scale(5), what="the daemon to see the slow reader leave")

    # the resume is behind us: the daemon must be alive and serving
    try:
        with sp.client(1) as c:
            pong = c.call("PING")
    except (OSError, h.ConnectionClosed, TimeoutError) as e:
        pong = e
    assert pong == "PONG" and sp.alive(), \
        "sidepool died when the slow reader resumed the closed connection (PING: %r); " \
        "the end of its log:\n%s" % (pong, sp.log_tail(12))
    r.restart()

    def served():
        with sp.client(1) as c:
            return c.call("SET", "uaf:after", "1") == "OK"

    h.poll_until(served, h.scale(10), what="a SET through sidepool after the restart")


@h.test("max_output 64k, one server connection: a slow reader holds it paused, the server "
        "dies and a neighbour's write closes it; the reader then reads every reply (values, "
        "then one error each) and nothing freed is touched", timeout=60)
def paused_connection_dies_reader_reads():
    paused_connection_dies("reads")


@h.test("max_output 64k, one server connection: a slow reader holds it paused, the server "
        "dies and a neighbour's write closes it; the reader then leaves without reading and "
        "nothing freed is touched", timeout=60)
def paused_connection_dies_reader_leaves():
    paused_connection_dies("closes")


# --------------------------------------------------------------------------
# 7. Redis limits do not depend on how the bytes arrive (fuzz findings K1,
#    K2): a request over max_request_size or an inline line over
#    max_line_length gets the same error and close in one write as when
#    its first part, already over the limit, arrives alone.

@h.test("redis, max_request_size 1k, max_line_length 100: a 2000-byte SET and a 150-byte "
        "inline line in one write get the same one -ERR line and close as in two writes; "
        "the server never sees them, and requests just under the limits are served",
        timeout=30)
def redis_limits_whole_or_in_pieces():
    r = h.RedisServer()
    cfg = h.redis_config([r], workers=1, pool=NO_PROBES,
                         upstream_extra={"limits": {"max_request_size": "1k",
                                                    "max_line_length": 100}})
    sp = Daemon(cfg)
    cases = [
        ("multibulk", lambda k: h.encode("SET", k, b"v" * 1960), 1500,
         b"-ERR sidepool: request larger than max_request_size\r\n"),
        ("inline", lambda k: b"SET " + k.encode() + b" " + b"w" * 140 + b"\r\n", 120,
         b"-ERR Protocol error: too big inline request\r\n"),
    ]
    for what, make, first, want in cases:
        got = {}
        for how in ("one write", "two writes"):
            key = "%s-%s" % (what, how.replace(" ", "-"))
            data = make(key)
            with sp.client(timeout=10) as c:
                # in two writes the first is over the limit already: the
                # daemon refuses before the rest is sent
                c.sock.sendall(data if how == "one write" else data[:first])
                got[how] = c.read_raw(timeout=5)
            h.diag("%s of %d bytes in %s: %r" % (what, len(data), how, got[how]))
            assert got[how] == (want, True), \
                "%s in %s: want %r and the close, got %r" % (what, how, want, got[how])
            assert r.call("EXISTS", key) == 0, "the refused %s reached the server" % what
        assert got["one write"] == got["two writes"], got
    with sp.client() as c:
        v = b"u" * 900
        assert c.call("SET", "under", v) == "OK"
        c.send(b"SET inline " + b"i" * 80 + b"\r\n")
        assert c.read_reply() == "OK"
    assert r.call("GET", "under") == v
    assert r.call("GET", "inline") == b"i" * 80
    assert sp.alive()


# --------------------------------------------------------------------------
# 8. out of descriptors for a server connection: the request fails, the
#    server does not

FD_ERROR = "ERR sidepool: out of file descriptors"


def fill_descriptors(sp):
    """Connect clients one at a time until the daemon has no descriptor for
    the next: each one is accepted (its PING answered) until one is not and
    the daemon warns that it cannot accept. Returns (the accepted clients,
    the one left in the backlog)."""
    accepted = []
    for _ in range(NOFILE + 1):
        warned = sp.log_text().count("cannot accept")
        c = sp.client(timeout=10)
        c.send(h.encode("PING"))
        seen = []

        def answered_or_refused():
            v = got_reply(c, 0.01)
            if v is not None:
                seen.append(v)
                return True
            return sp.log_text().count("cannot accept") > warned

        h.poll_until(answered_or_refused, h.scale(10),
                     what="client %d to be answered or refused" % (len(accepted) + 1))
        if not seen:
            return accepted, c
        if h.WRAPPER and seen != ["PONG"]:
            # valgrind closes a connection the kernel accepted beyond the
            # descriptors it leaves the program (EMFILE after the fact):
            # the backlog this test relies on is not there
            raise h.Skip("under %s an accept past the descriptor limit closes the "
                         "connection" % h.WRAPPER[0])
        assert seen == ["PONG"], "a PING got %r" % (seen,)
        accepted.append(c)
    raise AssertionError("%d clients accepted with RLIMIT_NOFILE %d" % (len(accepted), NOFILE))


def fd_shortage(queue):
    r = h.RedisServer()
    pool = dict(NO_PROBES, queue_size=queue, queue_timeout="10s")
    cfg = h.redis_config([r], workers=1, pool=pool)
    sp = Daemon(cfg, nofile=NOFILE)
    # no server connection yet: the first request needs a new one
    accepted, waiting = fill_descriptors(sp)
    h.diag("%d clients accepted, the next one waits; %d descriptors open" % (
        len(accepted), nfds(sp.pid)))
    assert len(accepted) >= 2, len(accepted)

    c = accepted[0]
    try:
        v = c.call("GET", "k", timeout=5)
    except TimeoutError:
        raise AssertionError("no answer within 5s: the request waits (in the pool's queue?) "
                             "instead of failing") from None
    assert isinstance(v, h.Error) and v.startswith(FD_ERROR) and "LimitNOFILE" in v, \
        "a GET needing a new server connection got %r" % (v,)
    h.diag("the GET got: %s" % v)

    # the server is not down: each request tries again and fails alike (no
    # "server ... down"), one log line for the lot
    got = accepted[1].pipeline([("GET", "k%d" % i) for i in range(50)], timeout=10)
    assert all(isinstance(x, h.Error) and x.startswith(FD_ERROR) for x in got), \
        "50 pipelined GETs got %r" % (got[:3],)
    assert accepted[1].call("PING") == "PONG", "the client was not kept"
    lines = [ln for ln in sp.log_text().splitlines() if "out of file descriptors" in ln]
    assert 1 <= len(lines) <= 2, "%d log lines for 51 failed requests:\n%s" % (
        len(lines), "\n".join(lines[:5]))
    assert "not marked down" in lines[0], lines[0]

    # a second later, the next line counts the ones it left out
    def counted():
        accepted[0].call("GET", "k")
        return any("more like this" in ln and "out of file descriptors" in ln
                   for ln in sp.log_text().splitlines())

    h.poll_until(counted, h.scale(5), what="a log line counting the requests left out")

    # descriptors come back: the server was never marked down, and a
    # request opens its connection at once
    for x in accepted + [waiting]:
        x.close()
    servers = h.poll_until(lambda: ctl_json(sp, "servers")["servers"], h.scale(10),
                           what="the control socket to answer again")
    s = servers[0]
    assert s["state"] == "up" and s["marked_down"] == 0 and s["failures"] == 0, s
    srv = ctl_json(sp, "stats")["servers"][0]
    assert srv["fast_failures"] == 0, srv
    with sp.client() as c2:
        own_keys_ok(c2, "fds-back")
    assert ctl_json(sp, "pools")["pools"][0]["opened"] >= 1
    assert sp.alive()


@h.test("RLIMIT_NOFILE %d, no pool queue: with every descriptor held by clients, a request "
        "needing a new server connection gets '-ERR sidepool: out of file descriptors ... "
        "LimitNOFILE' at once, one log line a second; the server is never marked down and "
        "serves as soon as clients leave" % NOFILE, timeout=60)
def fd_shortage_fails_request_not_server():
    fd_shortage(queue=0)


@h.test("RLIMIT_NOFILE %d, pool queue on: the request short of a descriptor fails at once "
        "too, instead of waiting in the queue for a connection nobody holds" % NOFILE,
        timeout=60)
def fd_shortage_not_queued():
    fd_shortage(queue=16)


# --------------------------------------------------------------------------
# Out of local ports (EADDRNOTAVAIL), for real: in a network namespace of
# its own whose ephemeral port range is two ports wide

PORTS_FLAG = "--in-netns-ports-exhausted"
PORT_RANGE = (61100, 61101)  # outside the default range: no listener is there


def lo_up():
    """Bring the namespace's loopback up (no ip(8) needed)."""
    import fcntl
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(s, siocgifflags, req)[:18])[1]
        fcntl.ioctl(s, siocsifflags, struct.pack("16sH", b"lo", flags | iff_up))


def ports_exhausted_body():
    """Runs inside `unshare --net`: every process it starts (redis, sidepool,
    sidepoolctl) shares the namespace. Clients use unix sockets, which take
    no port."""
    lo_up()
    tmp = h.mkdtemp("sp-ports-")
    rsock = os.path.join(tmp, "redis.sock")
    r = h.RedisServer(["--unixsocket", rsock, "--unixsocketperm", "700"])
    cfg = h.redis_config([r], listen=(h.AUTO_UNIX,), workers=1,
                         pool={"size": 2, "max_connections": 8, "idle_timeout": "60s",
                               "probe_interval": 0})
    sp = Daemon(cfg)
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", "w") as f:
            f.write("%d %d\n" % PORT_RANGE)
        a, b = sp.client(timeout=10), sp.client(timeout=10)
        a.send(h.encode("BLPOP", "q1", "20"))  # each holds a connection of its own
        b.send(h.encode("BLPOP", "q2", "20"))
        with h.RespClient("unix:" + rsock) as direct:
            h.poll_until(lambda: b"blocked_clients:2" in direct.call("INFO", "clients"),
                         h.scale(5), what="two BLPOPs blocked in redis")
            with sp.client(timeout=5) as c:
                t0 = time.monotonic()
                v = c.call("GET", "k")
                dt = time.monotonic() - t0
                assert isinstance(v, h.Error) and \
                    v.startswith("ERR sidepool: out of local ports") and \
                    "ip_local_port_range" in v, "a GET with no local port left got %r" % (v,)
                assert dt < h.scale(1), "the error took %.2fs" % dt
                h.diag("the GET got: %s" % v)
                srv = ctl_json(sp, "servers")["servers"][0]
                assert srv["state"] == "up" and srv["failures"] == 0 and \
                    srv["marked_down"] == 0, "the server was blamed: %s" % srv
                lines = [ln for ln in sp.log_text().splitlines() if "out of local ports" in ln]
                assert lines and "not marked down" in lines[0], lines
                # a connection comes free: the next request is served on it
                assert direct.call("LPUSH", "q1", "x") == 1
                assert a.read_reply() == [b"q1", b"x"]
                assert c.call("SET", "k", "v") == "OK"
                assert c.call("GET", "k") == b"v"
        b.close()
        a.close()
        assert sp.alive()
    finally:
        sp.stop()
        r.stop()
    return 0


@h.test("out of local ports (a network namespace whose port range is two wide, both held by "
        "blocked clients): a request needing a new server connection gets '-ERR sidepool: "
        "out of local ports ... ip_local_port_range' at once, the server is not marked down, "
        "and the next request is served once a connection comes free", timeout=60)
def local_ports_exhausted():
    unshare = shutil.which("unshare")
    if unshare is None:
        raise h.Skip("no unshare(1)")
    if h.WRAPPER:
        raise h.Skip("not under %s" % h.WRAPPER[0])
    probe = subprocess.run([unshare, "--net", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        raise h.Skip("cannot make a network namespace here: %s" % probe.stderr.strip())
    r = subprocess.run([unshare, "--net", sys.executable, os.path.abspath(__file__),
                        PORTS_FLAG], capture_output=True, text=True, timeout=h.scale(50))
    for ln in (r.stdout + r.stderr).splitlines():
        h.diag(ln[2:] if ln.startswith("# ") else ln)
    assert r.returncode == 0, "the run in its own network namespace failed (exit %d)" % (
        r.returncode,)


if __name__ == "__main__":
    if sys.argv[1:] == [PORTS_FLAG]:
        try:
            sys.exit(ports_exhausted_body())
        except AssertionError as e:
            print("FAILED: %s" % e)
            sys.exit(1)
    h.run()
