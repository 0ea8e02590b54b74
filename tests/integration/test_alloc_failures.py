#!/usr/bin/env python3
"""
test_alloc_failures.py - sidepool when malloc returns NULL. The daemon runs
under failalloc.c (an LD_PRELOAD shim, compiled here with cc) that makes
chosen allocations fail:

1. start-up with every allocation after the Nth failing, for N across the
   whole start-up: sidepool exits non-zero with a message, never by a
   signal, never hangs; if it got as far as serving, SIGTERM still stops it;
2. start-up with only the Nth allocation failing: sidepool refuses to
   start with a message, or it starts, answers the request that met the
   failure promptly (correctly or with an error), serves the next one and
   stops on SIGTERM;
3. Redis and memcached clients (pipelining, per-client keys and values)
   while a few percent of allocations fail for a few seconds: no crash,
   every answer right or a protocol error or a close, never another
   client's data; afterwards everything works and no descriptor is left;
4. a reload while allocations fail: the old configuration stays in force
   and serves; with one failure at each point of a reload, the outcome the
   log reports is the configuration that serves.

A run that goes wrong names the allocation that failed (its call stack,
resolved with addr2line). Known bugs are listed by finding in
docs/ALLOC-FAILURES.md; an assertion that meets one says which.

Skipped when no C compiler is found, or when the daemon is a sanitizer
build or runs under SIDEPOOL_WRAPPER (both replace malloc themselves).
AF_ONLY=word[,word] runs only the tests whose function names contain one;
AF_BACKTRACE=K logs the stacks of the first K failures under load (20).
"""

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

h.require_tools("redis-server", "redis-cli", "memcached")

CTL = os.path.join(os.path.dirname(h.SIDEPOOL_BIN), "sidepoolctl")
SHIM_SRC = os.path.join(h.HERE, "failalloc.c")
REPORT = re.compile(r"^failalloc: on=(\d) calls=(\d+) armed_calls=(\d+) failed=(\d+)$", re.M)


# --------------------------------------------------------------------------
# The shim


def build_shim():
    if h.WRAPPER:
        h.skip_all("SIDEPOOL_WRAPPER is set: valgrind replaces malloc, the shim cannot")
    if os.access(h.SIDEPOOL_BIN, os.X_OK) and h.sanitizer_build(h.SIDEPOOL_BIN):
        h.skip_all("%s is a sanitizer build: its malloc cannot be replaced" % h.SIDEPOOL_BIN)
    cc = os.environ.get("CC") or "cc"
    if not shutil.which(cc.split()[0]):
        h.skip_all("no C compiler (%s) to build failalloc.so" % cc)
    out = os.path.join(h.mkdtemp("sp-failalloc-"), "failalloc.so")
    r = subprocess.run(cc.split() + ["-shared", "-fPIC", "-O2", "-o", out, SHIM_SRC, "-ldl"],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        h.skip_all("cannot build failalloc.so: %s" % (r.stderr.strip()[-300:],))
    return out


SHIM = build_shim() if __name__ == "__main__" else None


class FailingSidepool(h.Sidepool):
    """The daemon with the shim preloaded; failalloc holds its settings
    (SIDEPOOL_FAILALLOC_ + key)."""

    def __init__(self, config, failalloc=None, **kw):
        self.failalloc = dict(failalloc or {})
        kw.setdefault("start", False)
        super().__init__(config, **kw)

    def argv(self, *extra):
        env = ["env", "LD_PRELOAD=" + SHIM]
        env += ["SIDEPOOL_FAILALLOC_%s=%s" % kv for kv in sorted(self.failalloc.items())]
        return env + super().argv(*extra)

    def launch(self):
        """Start without waiting for the listeners (it may not get there)."""
        self._resolve()
        self.proc = h._spawn(self.argv(), self.log_path, cwd=self.tmp)
        return self

    def reports(self):
        return [tuple(int(x) for x in m) for m in REPORT.findall(self.log_text())]

    def report_now(self):
        """SIGUSR2: the shim re-reads its switch and reports; returns
        (on, calls, armed_calls, failed)."""
        n = len(self.reports())
        self.send_signal(signal.SIGUSR2)

        def report():
            if not self.alive():
                raise AssertionError("sidepool %s" % self.death())
            return self.reports()[n] if len(self.reports()) > n else None
        return h.poll_until(report, h.scale(5), what="the shim's report on SIGUSR2")

    def death(self):
        code = self.proc.returncode
        return "was killed by signal %d" % -code if code < 0 else "exited with %d" % code

    def messages(self):
        """What sidepool said, without the harness's and the shim's lines."""
        return [ln for ln in self.log_text().splitlines()
                if ln and not ln.startswith("----") and not ln.startswith("failalloc:")
                and not re.match(r"^(\S*\(|\[0x)", ln)]

    def fds(self):
        return len(os.listdir("/proc/%d/fd" % self.pid))


def config(redis, memcached=None, workers=2, ctl=True, **kw):
    """Redis on listener 0 and, with memcached, memcached on listener 1;
    short timeouts so a failure shows within a test's time."""
    kw.setdefault("shutdown_timeout", "1s")
    kw.setdefault("request_timeout", "2s")
    cfg = h.redis_config([redis], workers=workers, **kw)
    if memcached is not None:
        cfg["listeners"].append({"listen": h.AUTO_TCP, "upstream": "mc"})
        cfg["upstreams"]["mc"] = dict(cfg["upstreams"]["redis"], protocol="memcache",
                                      servers=[memcached.addr])
    if ctl:
        cfg["control"] = {"path": "@ctl"}
    return cfg


def make(cfg, failalloc=None):
    sp = FailingSidepool(cfg, failalloc)
    if "control" in sp.config_src:
        sp.config_src["control"]["path"] = os.path.join(sp.tmp, "ctl.sock")
    return sp


def ctl(sp, *args, timeout=5.0):
    p = subprocess.run([CTL, "-s", sp.config_src["control"]["path"], "-T", str(int(timeout))]
                       + list(args), capture_output=True, text=True, timeout=h.scale(timeout + 5))
    return p.returncode, p.stdout, p.stderr


def ctl_json(sp, cmd):
    code, out, err = ctl(sp, "--json", cmd)
    if code != 0:
        raise AssertionError("sidepoolctl --json %s: exit %d: %s %s" % (cmd, code, out, err))
    return json.loads(out)


# --------------------------------------------------------------------------
# Which allocation failed, and what is already known about it

_addr_cache = {}


def resolve(frames):
    """sidepool +0x1234 offsets -> 'function (file:line)', the innermost
    inlined function first, by addr2line."""
    todo = [f for f in frames if f not in _addr_cache]
    if todo and shutil.which("addr2line"):
        # a return address is one past its call: ask about the call
        r = subprocess.run(["addr2line", "-f", "-i", "-p", "-s", "-e", h.SIDEPOOL_BIN]
                           + ["0x%x" % (int(f, 16) - 1) for f in todo],
                           capture_output=True, text=True, timeout=30)
        # one line per address, then " (inlined by) ..." lines for it
        groups = []
        for ln in r.stdout.splitlines():
            if ln.startswith(" (inlined by)") and groups:
                continue
            groups.append(ln)
        for f, ln in zip(todo, groups):
            _addr_cache[f] = re.sub(r"^(\S+) at (\S+).*$", r"\1 (\2)", ln)
    return [_addr_cache.get(f, "sidepool+" + f) for f in frames]


def failing_stack(text):
    """The first injected failure's call stack in a log, innermost first:
    sidepool's own frames resolved, libraries' as printed."""
    i = text.find("failalloc: failing this allocation:")
    if i < 0:
        return ""
    out = []
    for ln in text[i:].splitlines()[1:]:
        m = re.match(r"^(\S+)\(([^)]*)\)\s*\[0x[0-9a-f]+\]$", ln)
        if not m:
            break
        out.append((os.path.basename(m.group(1)), m.group(2)))
    names = []
    ours = [off.lstrip("+") for lib, off in out if lib == "sidepool"]
    resolved = dict(zip(ours, resolve(ours)))
    for lib, off in out:
        if "failalloc" in lib:
            continue
        if lib == "sidepool":
            names.append(resolved.get(off.lstrip("+"), off))
        elif "libc.so" not in lib:
            names.append("%s(%s)" % (lib.split(".so")[0], off))
    return " <- ".join(names[:7])


# Bugs found with this test and reported (docs/ALLOC-FAILURES.md has the
# details and the fixes): a run that goes wrong with a finding's symptom,
# and its signature in the failing stack or the log, is labelled with it,
# so the reader knows what is known and where the fix goes. The assertions
# stay as strict as they are.
KNOWN = [
    ("F1", r"new_wgen", r"signal 11",
     "worker.c new_wgen: a failed calloc of routes leaves nroutes set and free_wgen "
     "walks the NULL array"),
    ("F2", r"cannot stop worker|worker_post|run_worker", r"SIGTERM|started nor exited",
     "worker.c: stopping a worker allocates (worker_post, event_base_loopexit); when "
     "that fails it never stops and main waits for ever"),
    ("F3", r"backend_open", r"no reply|waiting for a client",
     "client.c forward_request queues a request for queue_timeout when its connection "
     "could not be opened for want of memory; backend.c backend_open ignores event_add"),
    ("F4", r"store_reply|backend_send|evbuffer_remove_buffer",
     r"no reply|wrong|not RESP|mid-reply|STORED",
     "backend.c backend_send, client.c store_reply: evbuffer_remove_buffer cut short "
     "without a word, so a request or a reply is truncated"),
    ("F5", r"keeping generation|job_apply", r"stats|serve|refuse",
     "worker.c job_apply: a worker that cannot build the new generation keeps the old "
     "one but reports the new id; stats then say 'a reload is being applied' for ever"),
    ("F6", r"error_reply|reply_error|queue_local_reply", r"no reply|wrong|not RESP|STORED",
     "redis.c error_reply writes in three pieces; client.c reply_error drops a reply it "
     "could not build, so the client's replies shift by one"),
    ("F7", r"queue_local_reply|SERVER_ERROR sidepool: out of memory", r"not RESP|ANOTHER",
     "client.c queue_local_reply leaves the shared scratch full when it fails: the next "
     "client's reply carries it"),
    ("F8", r"client_new|on_accept", r"no reply",
     "client.c client_new ignores event_add: a client accepted is never read"),
]


def label(problem, stack, ctx=""):
    """problem, with the known findings that fit it, if any. ctx: the daemon
    or its log text, searched with the stack for the findings' signatures."""
    text = ctx.log_text() if isinstance(ctx, h.Sidepool) else ctx
    fits = ["%s (%s)" % (fid, what) for fid, where, symptom, what in KNOWN
            if re.search(where, "\n".join((problem, stack, text)))
            and re.search(symptom, problem)]
    return "%s [known: %s]" % (problem, "; ".join(fits)) if fits else problem


# --------------------------------------------------------------------------
# Clients

def wait_outcome(sp, timeout=5.0):
    """'exit' (code in sp.proc.returncode), 'started' or 'hang'."""
    deadline = time.monotonic() + h.scale(timeout)
    while time.monotonic() < deadline:
        if sp.proc.poll() is not None:
            return "exit"
        if re.search(r"\] main: sidepool \S+ started", sp.log_text()):
            return "started"
        time.sleep(0.005)
    return "exit" if sp.proc.poll() is not None else "hang"


def refused_properly(sp):
    """A start that failed: non-zero exit code, not a signal, and a message."""
    code = sp.proc.returncode
    if code < 0:
        return "killed by signal %d" % -code
    if code == 0:
        return "exit code 0 though it never said it started"
    said = [ln for ln in sp.messages() if "[error]" in ln or ln.startswith("sidepool:")
            or ".yml" in ln]
    if not said:
        return "exit code %d with no error message (log: %r)" % (code, sp.messages()[-3:])
    # the configuration is valid: an error about it other than the memory
    # itself is a consequence of the failure, reported as the file's fault
    bogus = [ln for ln in said if ".yml" in ln and "out of memory" not in ln
             and "Cannot allocate memory" not in ln and "is not valid" not in ln]
    if bogus:
        return "a valid configuration reported as wrong: %r" % (bogus[0][-200:],)
    return None


def stop_properly(sp, timeout=5.0):
    """SIGTERM: exit code 0 within timeout, not a signal, not a hang."""
    code = sp.stop(signal.SIGTERM, timeout)
    if code is None:
        return "still running %.0fs after SIGTERM" % h.scale(timeout)
    if code < 0:
        return "killed by signal %d on SIGTERM" % -code
    return None


def redis_roundtrip(addr, key, value, timeout=1.0):
    """SET then GET on a fresh connection: None if both right, else what
    went wrong. An error reply or a close is 'refused'; anything else (a
    wrong value, a reply that does not come in time) is a problem."""
    try:
        with h.RespClient(addr, timeout=timeout) as c:
            r = c.pipeline([("SET", key, value), ("GET", key)], timeout=timeout)
    except (h.ConnectionClosed, ConnectionError) as e:
        return "refused: %s" % e
    except TimeoutError as e:
        return "no reply within %.1fs: %s" % (h.scale(timeout), e)
    if isinstance(r[0], h.Error) or isinstance(r[1], h.Error):
        if r[1] not in (None, value.encode()) and not isinstance(r[1], h.Error):
            return "wrong value after an error: %r" % (r,)
        return "refused: %r" % (r,)
    if r != ["OK", value.encode()]:
        return "wrong replies %r" % (r,)
    return None


# --------------------------------------------------------------------------
# 1, 2: start-up

@h.shared
def servers():
    return h.RedisServer(), h.Memcached()


@h.shared
def startup_calls():
    """How many allocations a start-up takes (until sidepool says it
    started and its workers run), counted by the shim."""
    r, _ = servers()
    sp = make(config(r))
    sp.start()
    calls = sp.report_now()[1]
    sp.stop()
    h.diag("a start-up takes %d allocations" % calls)
    return calls


def sweep_startup(failalloc_for, first, last, step, check_started):
    r, _ = servers()
    problems = []
    for n in range(first, last, step):
        sp = make(config(r), failalloc_for(n))
        sp.launch()
        outcome = wait_outcome(sp)
        if outcome == "hang":
            problem = "neither started nor exited within %.0fs" % h.scale(5)
            sp.kill()
        elif outcome == "exit":
            problem = refused_properly(sp)
        else:
            problem = check_started(sp, n)
        if problem:
            stack = failing_stack(sp.log_text())
            problems.append("N=%d: %s; failed: %s" % (n, label(problem, stack, sp),
                                                     stack or "(no failure injected)"))
        sp.cleanup()
        sp.proc = None  # done with: the harness need not dump a hundred logs
    return problems


def report_problems(problems, runs):
    if problems:
        for p in problems[:12]:
            h.diag(p)
        raise AssertionError("%d of %d runs went wrong; first: %s" % (
            len(problems), runs, problems[0]))


@h.test("with every allocation after the Nth failing, start-up ends in a clean refusal "
        "(non-zero exit, a message), never a signal or a hang; a daemon that got to "
        "serving still stops on SIGTERM", timeout=60)
def startup_every_allocation_after_n_fails():
    total = startup_calls()
    step = max(1, total // 60)

    def started(sp, n):
        # nothing can be allocated any more: it need not serve, but it
        # must still stop when told to
        return stop_properly(sp)

    problems = sweep_startup(lambda n: {"AFTER": n, "BACKTRACE": 1}, 0, total + 30, step,
                             started)
    report_problems(problems, len(range(0, total + 30, step)))


@h.test("with only the Nth allocation failing, sidepool refuses to start with a message, "
        "or starts, answers at once, serves the next client and stops on SIGTERM",
        timeout=90)
def startup_one_allocation_fails():
    total = startup_calls()
    step = max(1, total // 150)

    def started(sp, n):
        addr = sp.listeners[0]
        # the failure may meet this first request: an error or a close is
        # fine, waiting for a timeout is not
        first = redis_roundtrip(addr, "one:%d" % n, "first-%d" % n, timeout=1.0)
        if first and not first.startswith("refused"):
            return "first request: " + first
        try:
            h.poll_until(lambda: redis_roundtrip(addr, "one:%d" % n, "next-%d" % n) is None,
                         h.scale(3), what="a client served")
            h.poll_until(lambda: ctl(sp, "stats")[0] == 0, h.scale(3),
                         what="sidepoolctl stats to answer")
        except AssertionError as e:
            return "after one failed allocation: %s (first request: %s)" % (e, first)
        return stop_properly(sp)

    problems = sweep_startup(lambda n: {"AFTER": n, "COUNT": 1, "BACKTRACE": 1},
                             0, total + 40, step, started)
    report_problems(problems, len(range(0, total + 40, step)))


# --------------------------------------------------------------------------
# 3: under load

class McClient(h.SockClient):
    """Just enough of the memcached text protocol: set and get, pipelined,
    every read within the deadline."""

    def __init__(self, addr, timeout=5.0):
        super().__init__(addr, timeout)
        self.buf = b""

    def _more(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no whole memcached reply within %.1fs (have %r)" % (
                self.timeout, self.buf[:80]))
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except OSError as e:
            if isinstance(e, TimeoutError) or "timed out" in str(e):
                raise TimeoutError("no whole memcached reply within %.1fs (have %r)" % (
                    self.timeout, self.buf[:80])) from None
            raise
        if not data:
            raise h.ConnectionClosed("closed%s" % (" mid-reply (%r)" % self.buf[:80]
                                                    if self.buf else ""))
        self.buf += data

    def line(self, deadline):
        while b"\r\n" not in self.buf:
            self._more(deadline)
        ln, _, self.buf = self.buf.partition(b"\r\n")
        return ln

    def exact(self, n, deadline):
        while len(self.buf) < n:
            self._more(deadline)
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def get_reply(self, key, deadline):
        """A get's answer: the value, None (a miss), or ('error', line)."""
        ln = self.line(deadline)
        if ln == b"END":
            return None
        if ln.startswith(b"SERVER_ERROR") or ln.startswith(b"CLIENT_ERROR") or ln == b"ERROR":
            return ("error", ln)
        m = re.match(rb"^VALUE (\S+) (\d+) (\d+)$", ln)
        if not m:
            raise h.ProtocolViolation("get %s: VALUE or END expected, got %s" % (
                key, short(ln)))
        if m.group(1) != key.encode():
            raise AssertionError("get %s answered for key %s" % (key, short(m.group(1))))
        data = self.exact(int(m.group(3)) + 2, deadline)
        if not data.endswith(b"\r\n"):
            raise h.ProtocolViolation("get %s: value not ended by CR LF" % key)
        end = self.line(deadline)
        if end != b"END":
            raise h.ProtocolViolation("get %s: %s after the value" % (key, short(end)))
        return data[:-2]


def short(v, n=48):
    text = repr(v)
    return text if len(text) <= n else text[:n] + "..."


def value_for(cid, seq):
    """A value only this client and this request would have: a wrong one
    says whose it was. Sizes vary so that some span several buffer chunks."""
    head = "v:%s:%d:" % (cid, seq)
    return head + "x" * ((seq * 997) % 6000)


class Load:
    """Clients in threads until stop(): each counts its right answers,
    refusals (an error reply or a close) and problems (anything else)."""

    def __init__(self, redis_addr, mc_addr, nredis=3, nmc=2):
        self.redis_addr, self.mc_addr = redis_addr, mc_addr
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.ok = self.refused = 0
        self.problems = []
        self.threads = [threading.Thread(target=self._redis, args=("r%d" % i, 1 + i % 3),
                                         daemon=True) for i in range(nredis)]
        self.threads += [threading.Thread(target=self._mc, args=("m%d" % i,), daemon=True)
                         for i in range(nmc)]

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def stop(self):
        self.done.set()
        for t in self.threads:
            t.join(h.scale(15))
        hung = [t.name for t in self.threads if t.is_alive()]
        if hung:
            self.problem("client threads still running after the load ended: %s" % hung)

    def snapshot(self):
        with self.lock:
            return self.ok, self.refused, list(self.problems)

    def count(self, ok=0, refused=0):
        with self.lock:
            self.ok += ok
            self.refused += refused

    def problem(self, what):
        with self.lock:
            self.problems.append(what)

    def check_owner(self, cid, *replies):
        """A value made by another client is the worst answer there is:
        say so first."""
        for r in replies:
            m = re.match(rb"v:(\w+):", r) if isinstance(r, bytes) else None
            if m and m.group(1).decode() != cid:
                self.problem("ANOTHER CLIENT'S DATA: %s got a value of %s" % (
                    cid, m.group(1).decode()))

    def _redis(self, cid, depth):
        seq = 0
        while not self.done.is_set():
            try:
                c = h.RespClient(self.redis_addr, timeout=5.0)
            except OSError:
                self.count(refused=1)
                time.sleep(0.01)
                continue
            try:
                while not self.done.is_set():
                    cmds, expect = [], []
                    for _ in range(depth):
                        seq += 1
                        key, val = "af:%s:%d" % (cid, seq), value_for(cid, seq)
                        cmds += [("SET", key, val), ("GET", key)]
                        expect.append((key, val.encode()))
                    replies = c.pipeline(cmds)
                    self.check_owner(cid, *replies)
                    for i, (key, val) in enumerate(expect):
                        st, got = replies[2 * i], replies[2 * i + 1]
                        if st == "OK" and got == val:
                            self.count(ok=1)
                        elif isinstance(st, h.Error) or isinstance(got, h.Error):
                            if not isinstance(got, h.Error) and got not in (None, val):
                                self.problem("%s: SET %s -> %s, then GET -> %s" % (
                                    cid, key, short(st), short(got)))
                            self.count(refused=1)
                        else:
                            self.problem("%s: SET %s -> %s, GET -> %s (expected %s)" % (
                                cid, key, short(st), short(got), short(val)))
            except (h.ConnectionClosed, ConnectionError):
                self.count(refused=1)
            except TimeoutError as e:
                self.problem("%s: no reply: %s" % (cid, e))
            except h.ProtocolViolation as e:
                self.problem("%s: not RESP: %s" % (cid, e))
            finally:
                c.close()

    def _mc(self, cid):
        seq = 0
        while not self.done.is_set():
            try:
                c = McClient(self.mc_addr, timeout=5.0)
            except OSError:
                self.count(refused=1)
                time.sleep(0.01)
                continue
            try:
                while not self.done.is_set():
                    batch = []
                    for _ in range(3):
                        seq += 1
                        batch.append(("af:%s:%d" % (cid, seq), value_for(cid, seq).encode()))
                    c.send(b"".join(b"set %s 0 0 %d\r\n%s\r\nget %s\r\n" % (
                        k.encode(), len(v), v, k.encode()) for k, v in batch))
                    deadline = time.monotonic() + c.timeout
                    for key, val in batch:
                        st = c.line(deadline)
                        got = c.get_reply(key, deadline)
                        self.check_owner(cid, st, got)
                        if st == b"STORED" and got == val:
                            self.count(ok=1)
                        elif st.startswith(b"SERVER_ERROR") or isinstance(got, tuple):
                            if not isinstance(got, tuple) and got not in (None, val):
                                self.problem("%s: set %s -> %s, then get -> %s" % (
                                    cid, key, short(st), short(got)))
                            self.count(refused=1)
                        else:
                            self.problem("%s: set %s -> %s, get -> %s" % (
                                cid, key, short(st), short(got)))
            except (h.ConnectionClosed, ConnectionError):
                self.count(refused=1)
            except TimeoutError as e:
                self.problem("%s: no reply: %s" % (cid, e))
            except (h.ProtocolViolation, AssertionError) as e:
                self.problem("%s: %s" % (cid, e))
            finally:
                c.close()


def mc_roundtrip(addr, key, value, timeout=2.0):
    try:
        with McClient(addr, timeout=timeout) as c:
            v = value.encode()
            c.send(b"set %s 0 0 %d\r\n%s\r\nget %s\r\n" % (key.encode(), len(v), v, key.encode()))
            deadline = time.monotonic() + c.timeout
            st, got = c.line(deadline), c.get_reply(key, deadline)
    except (h.ConnectionClosed, ConnectionError, TimeoutError) as e:
        return "%s" % e
    return None if (st, got) == (b"STORED", v) else "set -> %r, get -> %r" % (st, got)


def held_fds(sp):
    """Descriptors that are neither a backend connection nor a client:
    what must come back to where it was. Counted twice around the two
    questions, so that a connection closing meanwhile is not miscounted."""
    fds = sp.fds()
    pools = ctl_json(sp, "pools")["pools"]
    backends = sum(p[k] for p in pools for k in ("idle", "active", "dedicated", "connecting",
                                                "probing"))
    clients = ctl_json(sp, "stats")["clients"]["current"]
    if sp.fds() != fds:
        return None
    return fds - backends - clients


def switch_failures(sp, gate, plan):
    """Failing on (plan: the gate file's words) or off (plan None); returns
    the shim's report once it has taken the switch."""
    if plan is None:
        os.unlink(gate)
    else:
        with open(gate, "w") as f:
            f.write(plan + "\n")
    rep = sp.report_now()
    assert rep[0] == (plan is not None), "the shim did not take the switch: %r" % (rep,)
    return rep


@h.test("with 3% of allocations failing under Redis and memcached load, sidepool stays up; "
        "every answer is right, a protocol error or a close, never another client's data; "
        "afterwards new clients are served, stats answer and descriptors come back",
        timeout=60)
def random_failures_under_load():
    r, m = servers()
    sp = make(config(r, m, pool={"size": 2, "max_connections": 6, "idle_timeout": "60s"}))
    gate = os.path.join(sp.tmp, "fail-now")
    sp.failalloc = {"FILE": gate, "SEED": 20251121,
                    "BACKTRACE": os.environ.get("AF_BACKTRACE", "20")}
    sp.start()
    rd, mc = sp.listeners
    assert redis_roundtrip(rd, "warm", "up") is None
    assert mc_roundtrip(mc, "warm", "up") is None
    held = h.poll_until(lambda: held_fds(sp), h.scale(5), what="a steady descriptor count")

    load = Load(rd, mc).start()
    h.poll_until(lambda: load.snapshot()[0] >= 20, h.scale(10),
                 what="the clients to be served before failures start")
    assert not load.snapshot()[2], "problems before any failure: %s" % load.snapshot()[2][:3]
    switch_failures(sp, gate, "rate=0.03")
    ok_before = load.snapshot()[0]
    time.sleep(h.scale(3))  # the load runs, with failures, for this long
    report = switch_failures(sp, gate, None)
    load.stop()
    ok, refused, problems = load.snapshot()
    problems.sort(key=lambda p: not p.startswith("ANOTHER"))  # the worst first
    h.diag("%d allocations failed; %d answers right, %d refused or closed (%d right while "
           "failing)" % (report[3], ok, refused, ok - ok_before))
    stack = failing_stack(sp.log_text())
    assert sp.alive(), label("sidepool %s while allocations failed" % sp.death(), stack,
                             sp) + "; first failure: " + stack
    assert report[3] > 0, "the shim made no allocation fail: this test tested nothing"
    assert not problems, label("%d wrong answers, e.g. %s" % (len(problems), problems[:3]),
                               "", sp)

    # failures are off: everything works again
    h.poll_until(lambda: redis_roundtrip(rd, "after", "ok") is None, h.scale(3),
                 what="a new Redis client to be served once failures stopped")
    h.poll_until(lambda: mc_roundtrip(mc, "after", "ok") is None, h.scale(3),
                 what="a new memcached client to be served once failures stopped")
    h.poll_until(lambda: ctl(sp, "stats")[0] == 0, h.scale(3), what="sidepoolctl stats")
    h.poll_until(lambda: held_fds(sp) == held, h.scale(5),
                 what="descriptors to come back to %d (not a backend or client)" % held)
    problem = stop_properly(sp)
    assert problem is None, label(problem, "", sp)


# --------------------------------------------------------------------------
# 4: reloads

def reload_config(redis, ports, extra_port):
    """Listener 0 always; a second listener on extra_port; the pool size
    tells the two configurations apart too."""
    cfg = config(redis, workers=2)
    cfg["listeners"] = [{"listen": "127.0.0.1:%d" % ports[0], "upstream": "redis"},
                        {"listen": "127.0.0.1:%d" % extra_port, "upstream": "redis"}]
    cfg["upstreams"]["redis"]["pool"]["size"] = 3 if extra_port == ports[1] else 5
    return cfg


def write_config(sp, cfg):
    cfg = dict(cfg, control=sp.config_src["control"])
    with open(sp.config_path, "w") as f:
        f.write(h.to_yaml(cfg))


OUTCOME = re.compile(r"configuration generation (\d+) in force|reload failed|reload refused")


def reload_and_wait(sp):
    """SIGHUP; the outcome the log reports: ('applied', generation) or
    ('failed', None)."""
    n = len(OUTCOME.findall(sp.log_text()))
    sp.send_signal(signal.SIGHUP)

    def said():
        if not sp.alive():
            raise AssertionError("sidepool %s" % sp.death())
        return list(OUTCOME.finditer(sp.log_text()))[n:][:1]
    m = h.poll_until(said, h.scale(5), what="the log to say how the reload went")[0]
    return ("applied", int(m.group(1))) if m.group(1) else ("failed", None)


def serves(addr):
    return redis_roundtrip(addr, "reload", "serves", timeout=2.0) is None


def three_ports():
    ports = set()
    while len(ports) < 3:
        ports.add(h.free_port())
    return sorted(ports)


def start_reloadable(ports, failalloc):
    """Listening on ports[0] and ports[1]; reloads move the second
    listener between ports[1] and ports[2]."""
    r, _ = servers()
    sp = make(reload_config(r, ports, ports[1]), failalloc)
    sp.start()
    return r, sp


@h.test("a reload (SIGHUP) while the main thread's allocations fail keeps the old "
        "configuration in force and serving; the same file applies once they stop",
        timeout=30)
def reload_while_allocations_fail():
    ports = three_ports()
    tmp = h.mkdtemp("sp-gate-")
    gate = os.path.join(tmp, "fail-now")
    r, sp = start_reloadable(ports, {"FILE": gate, "BACKTRACE": 3})
    write_config(sp, reload_config(r, ports, ports[2]))
    switch_failures(sp, gate, "thread=main")
    outcome = reload_and_wait(sp)
    report = switch_failures(sp, gate, None)
    assert report[3] > 0, "no allocation failed during the reload: this tested nothing"
    assert outcome == ("failed", None), "the reload %s while every allocation failed" % (
        outcome,)
    assert sp.alive(), "sidepool %s" % sp.death()
    assert serves("127.0.0.1:%d" % ports[0]), "the listener both configurations share stopped"
    assert serves("127.0.0.1:%d" % ports[1]), "the old configuration's listener stopped"
    assert not h.can_connect("127.0.0.1:%d" % ports[2]), \
        "the new configuration's listener accepts though the reload failed"
    listeners = [lst["listen"] for lst in ctl_json(sp, "config")["listeners"]]
    assert listeners == ["127.0.0.1:%d" % ports[0], "127.0.0.1:%d" % ports[1]], listeners

    outcome = reload_and_wait(sp)
    assert outcome == ("applied", 2), "the same file did not apply without failures: %s" % (
        outcome,)
    h.poll_until(lambda: serves("127.0.0.1:%d" % ports[2]), h.scale(3),
                 what="the new listener to serve")
    h.poll_until(lambda: not h.can_connect("127.0.0.1:%d" % ports[1]), h.scale(3),
                 what="the removed listener to close")


@h.test("with one allocation failing at each point of a reload, sidepool stays up and the "
        "configuration the log reports in force is the one that serves and answers stats",
        timeout=60)
def reload_with_one_failure_anywhere():
    ports = three_ports()
    tmp = h.mkdtemp("sp-gate-")
    gate = os.path.join(tmp, "fail-now")
    r, sp = start_reloadable(ports, {"FILE": gate, "BACKTRACE": 100000})
    shared = "127.0.0.1:%d" % ports[0]
    # how many allocations a reload takes, with nothing failing
    write_config(sp, reload_config(r, ports, ports[2]))
    switch_failures(sp, gate, "after=1000000000")
    assert reload_and_wait(sp)[0] == "applied"
    total = switch_failures(sp, gate, None)[2]
    current = ports[2]
    h.diag("a reload takes about %d allocations" % total)
    step = max(1, total // 40)
    problems = []
    for k in range(0, total + 10, step):
        nxt = ports[1] if current == ports[2] else ports[2]
        write_config(sp, reload_config(r, ports, nxt))
        before = len(sp.log_text())
        try:
            switch_failures(sp, gate, "after=%d count=1" % k)
            outcome = reload_and_wait(sp)
            switch_failures(sp, gate, None)
        except AssertionError as e:
            if sp.alive():
                raise
            stack = failing_stack(sp.log_text()[before:])
            problems.append("k=%d: %s; failed: %s" % (k, label(str(e), stack), stack))
            break
        log = sp.log_text()[before:]
        stack = failing_stack(log)
        if outcome[0] == "applied":
            current, gone = nxt, current
        else:
            gone = nxt
        try:
            h.poll_until(lambda: serves(shared) and serves("127.0.0.1:%d" % current),
                         h.scale(3), what="the %s configuration to serve" % (
                             "new" if outcome[0] == "applied" else "old"))
            h.poll_until(lambda: not h.can_connect("127.0.0.1:%d" % gone), h.scale(3),
                         what="the listener not in force (%d) to refuse" % gone)
            h.poll_until(lambda: ctl(sp, "stats")[0] == 0, h.scale(3),
                         what="sidepoolctl stats to answer")
        except AssertionError as e:
            problems.append("k=%d: reload %s, then %s; failed: %s" % (
                k, outcome[0], label(str(e), stack, log), stack or "(none)"))
    report_problems(problems, len(range(0, total + 10, step)))


@h.test("a reply sidepool builds itself is sent whole or not at all: PING with a "
        "3,000-byte message while the worker's Nth allocation fails, for every N the "
        "exchange takes; the client gets the message and the next PONG, or is closed "
        "after whole replies (or an error for the request that met the failure), "
        "never a cut one", timeout=90)
def local_reply_whole_or_closed():
    r = h.RedisServer()
    tmp = h.mkdtemp("sp-gate-")
    gate = os.path.join(tmp, "fail-now")
    sp = make(config(r, workers=1, ctl=False))
    sp.failalloc = {"FILE": gate, "THREAD": "workers", "BACKTRACE": "100000"}
    sp.start()
    msg = bytes(random.Random(7).choice(b"abcdefgh") for _ in range(3000))
    replies = [b"$3000\r\n" + msg + b"\r\n", b"+PONG\r\n"]
    everything = b"".join(replies)
    request = h.encode("PING", msg) + h.encode("PING")

    def whole_replies(got):
        """got is whole replies in order, each the right one or an error
        line (the request that met the failure may be refused)."""
        pos = 0
        for want in replies:
            if pos == len(got):
                return True
            if got.startswith(want, pos):
                pos += len(want)
            elif got.startswith(b"-", pos) and got.find(b"\r\n", pos) > 0:
                pos = got.find(b"\r\n", pos) + 2
            else:
                return False
        return pos == len(got)

    def exchange(plan):
        """Send the two PINGs with plan in force; what came back, and
        whether the connection was closed."""
        with h.RespClient(sp.listeners[0]) as c:
            assert c.call("PING") == "PONG"  # its buffers exist before the plan
            switch_failures(sp, gate, plan)
            try:
                c.send(request)
                got, closed = b"", False
                deadline = time.monotonic() + h.scale(3)
                c.sock.settimeout(0.2)
                while got != everything and time.monotonic() < deadline:
                    try:
                        chunk = c.sock.recv(65536)
                    except socket.timeout:
                        continue
                    if not chunk:
                        closed = True
                        break
                    got += chunk
            finally:
                calls = switch_failures(sp, gate, None)[2]
        return got, closed, calls

    got, closed, total = exchange("after=1000000000")
    assert got == everything and not closed, "with nothing failing: %r" % (got[:80],)
    h.diag("the exchange takes %d allocations on the worker" % total)
    problems = []
    for k in range(total + 2):
        before = len(sp.log_text())
        got, closed, _ = exchange("after=%d count=1" % k)
        if got == everything or (closed and whole_replies(got)):
            continue
        stack = failing_stack(sp.log_text()[before:])
        problems.append("k=%d: %s after %d bytes (%r...); failed: %s" % (
            k, "closed" if closed else "no more", len(got), got[:40], stack or "(none)"))
    assert sp.alive(), "sidepool %s" % sp.death()
    report_problems(problems, total + 2)


def main():
    # AF_ONLY=word[,word] runs only the tests whose function names contain
    # one of the words (to rerun a failure quickly).
    if os.environ.get("AF_ONLY"):
        h._tests[:] = [t for t in h._tests
                       if any(x in t[1].__name__ for x in os.environ["AF_ONLY"].split(","))]
    h.run()


if __name__ == "__main__":
    main()
