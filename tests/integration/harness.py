"""
harness.py - what sidepool's integration tests share: real servers to proxy
to (redis-server, memcached), the daemon itself under a generated config, a
small RESP client with deadlines on every read, and a TAP runner.

Python 3 standard library only. Every process the harness starts is stopped
by its own PID (at the end of the test that made it, and again at exit);
temporary directories are removed at the end.

Environment:
  SIDEPOOL_BIN         the daemon to test (default: <repo>/sidepool)
  SIDEPOOL_SRCDIR      the source tree (default: two levels above this file)
  SIDEPOOL_WRAPPER     a command prefix for the daemon, e.g.
                       "valgrind --error-exitcode=99 --leak-check=full"
  SIDEPOOL_TIME_SCALE  multiply every deadline by this (default 1; 10 when
                       SIDEPOOL_WRAPPER is set)
  SIDEPOOL_KEEP_TMP=1  keep temporary directories (their paths are printed)
"""

import atexit
import os
import re
import selectors
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback

# --------------------------------------------------------------------------
# Paths and environment

HERE = os.path.dirname(os.path.abspath(__file__))
SRCDIR = os.environ.get("SIDEPOOL_SRCDIR") or os.path.dirname(os.path.dirname(HERE))
SIDEPOOL_BIN = os.environ.get("SIDEPOOL_BIN") or os.path.join(SRCDIR, "sidepool")
WRAPPER = shlex.split(os.environ.get("SIDEPOOL_WRAPPER", ""))
try:
    TIME_SCALE = float(os.environ.get("SIDEPOOL_TIME_SCALE") or (10 if WRAPPER else 1))
except ValueError:
    TIME_SCALE = 1.0
KEEP_TMP = os.environ.get("SIDEPOOL_KEEP_TMP") == "1"

# Markers of memory errors and undefined behaviour in the daemon's stderr.
SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "ThreadSanitizer",
                     "MemorySanitizer", "runtime error:", "Invalid read of size",
                     "Invalid write of size", "definitely lost: [1-9]",
                     "Conditional jump or move depends")


def scale(seconds):
    """A deadline, stretched when the daemon runs under a slow wrapper."""
    return seconds * TIME_SCALE


def which(tool):
    return shutil.which(tool)


# --------------------------------------------------------------------------
# Bookkeeping: processes and temp dirs, cleaned per scope and at exit

_lock = threading.Lock()
_all_resources = []     # everything ever started, for the atexit sweep
_scope = None           # list receiving resources made by the current test
_tmpdirs = []


def _register(res):
    with _lock:
        _all_resources.append(res)
        if _scope is not None and threading.current_thread() is threading.main_thread():
            _scope.append(res)
    return res


def mkdtemp(prefix="sp-"):
    """A temp dir under /tmp (short: unix socket paths must stay < 108 bytes)."""
    d = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    _tmpdirs.append(d)
    return d


def _cleanup_all():
    for res in reversed(_all_resources):
        try:
            res.cleanup()
        except Exception:
            pass
    if KEEP_TMP:
        for d in _tmpdirs:
            diag("kept temp dir %s" % d)
    else:
        for d in _tmpdirs:
            shutil.rmtree(d, ignore_errors=True)


atexit.register(_cleanup_all)


def _on_signal(signum, frame):
    # Turn SIGTERM/SIGHUP from the test driver into a normal exit so the
    # atexit sweep stops the servers we started.
    raise SystemExit(128 + signum)


for _s in (signal.SIGTERM, signal.SIGHUP):
    signal.signal(_s, _on_signal)

_SETPRIV = shutil.which("setpriv")


def _spawn(argv, log_path, cwd=None, env=None):
    """Start a long-running child. If the harness dies abruptly, the child is
    killed by the kernel (PR_SET_PDEATHSIG via setpriv, from the main thread
    only: the signal follows the thread that forked)."""
    full = list(argv)
    if _SETPRIV and threading.current_thread() is threading.main_thread():
        full = [_SETPRIV, "--pdeathsig", "KILL", "--"] + full
    logf = open(log_path, "ab")
    try:
        return subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=logf,
                                stderr=subprocess.STDOUT, cwd=cwd, env=env,
                                close_fds=True)
    finally:
        logf.close()


# --------------------------------------------------------------------------
# Small helpers

def diag(msg):
    """TAP diagnostics: every line prefixed with '# '."""
    text = str(msg)
    with _lock:
        for line in text.splitlines() or [""]:
            sys.stdout.write("# " + line + "\n")
        sys.stdout.flush()


def poll_until(fn, timeout=5.0, interval=0.01, what=None):
    """Call fn() until it returns a true value; return that value. Raise
    AssertionError (with what, and the last exception fn raised) when the
    deadline passes. The interval grows up to 0.1 s."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            v = fn()
            if v:
                return v
            last_exc = None
        except Exception as e:  # noqa: BLE001 - fn's failure is the condition
            last_exc = e
        if time.monotonic() >= deadline:
            msg = "timed out after %.1fs waiting for %s" % (
                timeout, what or getattr(fn, "__name__", "condition"))
            if last_exc is not None:
                msg += " (last error: %r)" % (last_exc,)
            raise AssertionError(msg)
        time.sleep(interval)
        interval = min(interval * 1.5, 0.1)


def free_port(family=socket.AF_INET, host="127.0.0.1"):
    """A loopback port nobody listens on right now (bind 0, close, reuse)."""
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.bind((host, 0))
        return s.getsockname()[1]
    finally:
        s.close()


def ipv6_available():
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    except OSError:
        return False
    try:
        s.bind(("::1", 0))
        return True
    except OSError:
        return False
    finally:
        s.close()


def parse_addr(addr):
    """'127.0.0.1:6379', '[::1]:6379', 'unix:/x.sock', '/x.sock' or a
    (host, port) tuple -> (family, sockaddr)."""
    if isinstance(addr, tuple):
        host, port = addr
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        return fam, (host, port)
    if addr.startswith("unix:"):
        return socket.AF_UNIX, addr[5:]
    if addr.startswith("/"):
        return socket.AF_UNIX, addr
    if addr.startswith("["):
        host, _, port = addr[1:].partition("]:")
        return socket.AF_INET6, (host, int(port))
    host, _, port = addr.rpartition(":")
    if host == "localhost":
        host = "127.0.0.1"
    return socket.AF_INET, (host, int(port))


def connect(addr, timeout=5.0):
    """A connected blocking socket to addr (see parse_addr)."""
    fam, sa = parse_addr(addr)
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(sa)
    except BaseException:
        s.close()
        raise
    if fam != socket.AF_UNIX:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def can_connect(addr, timeout=1.0):
    try:
        connect(addr, timeout).close()
        return True
    except OSError:
        return False


def tcp_sockets():
    """Every TCP socket of the host, from /proc/net/tcp{,6}: (local port,
    remote port, state as hex ("01" ESTABLISHED), bytes unread)."""
    out = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 5:
                continue
            out.append((int(fields[1].rsplit(":", 1)[1], 16),
                        int(fields[2].rsplit(":", 1)[1], 16), fields[3],
                        int(fields[4].split(":")[1], 16)))
    return out


def tcp_recv_queue(port):
    """Bytes waiting unread in the receive queues of established TCP
    sockets whose local port is port: how we see that requests reached a
    server that is stopped and cannot read them."""
    return sum(rxq for local, _, st, rxq in tcp_sockets() if local == port and st == "01")


def run_threads(fn, n, timeout, name="worker"):
    """Run fn(i) in n threads at once; return their results in order. Raise
    AssertionError naming the threads that raised or did not finish by the
    deadline (their tracebacks become diagnostics)."""
    results = [None] * n
    errors = {}
    start = threading.Barrier(n) if n > 1 else None

    def body(i):
        try:
            if start is not None:
                try:
                    start.wait(timeout)
                except threading.BrokenBarrierError:
                    pass
            results[i] = fn(i)
        except BaseException as e:  # noqa: BLE001
            errors[i] = (e, traceback.format_exc())

    threads = [threading.Thread(target=body, args=(i,), name="%s-%d" % (name, i),
                                daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    hung = [i for i, t in enumerate(threads) if t.is_alive()]
    if errors or hung:
        msgs = []
        for i in sorted(errors)[:5]:
            diag("%s %d failed:\n%s" % (name, i, errors[i][1].rstrip()))
            msgs.append("%s %d: %s" % (name, i, errors[i][0]))
        if hung:
            msgs.append("%d %s(s) still running after %.1fs: %s" % (
                len(hung), name, timeout, hung[:10]))
        raise AssertionError("%d of %d %ss failed; %s" % (
            len(errors) + len(hung), n, name, "; ".join(msgs)))
    return results


# --------------------------------------------------------------------------
# RESP: values, encoder, incremental reader, client

class Error(str):
    """An error reply ('-ERR ...' or RESP3 blob error), without the '-'.
    A str, so .startswith() works; isinstance tells it from a simple string."""

    def __repr__(self):
        return "Error(%s)" % str.__repr__(self)


class Push(list):
    """A RESP3 push message (>)."""


class RespSet(list):
    """A RESP3 set (~), kept as a list (elements may be unhashable)."""


class Verbatim(bytes):
    """A RESP3 verbatim string (=): the bytes after 'xxx:'; .fmt is 'txt'."""
    fmt = "txt"


class ProtocolViolation(Exception):
    """The bytes received are not RESP."""


class ConnectionClosed(EOFError):
    """The peer closed the connection before a whole reply arrived."""


def _b(x):
    if isinstance(x, bytes):
        return x
    if isinstance(x, (bytearray, memoryview)):
        return bytes(x)
    if isinstance(x, str):
        return x.encode("utf-8", "surrogateescape")
    if isinstance(x, (int, float)):
        return str(x).encode()
    raise TypeError("cannot encode %r" % (x,))


def encode(*args):
    """One multibulk request from its arguments (bytes, str or numbers)."""
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        a = _b(a)
        parts.append(b"$%d\r\n" % len(a))
        parts.append(a)
        parts.append(b"\r\n")
    return b"".join(parts)


def encode_many(cmds):
    return b"".join(encode(*c) for c in cmds)


_NEED = object()


class RespReader:
    """Incremental RESP2/RESP3 reply parser. feed() bytes as they come;
    get() returns one whole reply or NOTHING (RespReader.NOTHING) when more
    bytes are needed. State (the aggregate stack, a bulk being read) is kept
    between calls, so a 64 MB bulk is not rescanned per chunk."""

    NOTHING = _NEED

    def __init__(self):
        self.buf = bytearray()
        self.pos = 0
        self.stack = []        # [kind, remaining, items]; remaining -1: streamed
        self.bulk = None       # (type byte, length) of a bulk being read
        self.attrs = []        # RESP3 attributes seen (discarded by get)
        self.consumed = 0      # bytes of whole replies returned so far

    def feed(self, data):
        self.buf += data

    def pending(self):
        """Bytes received that are not part of a returned reply."""
        return len(self.buf) - self.pos

    def in_reply(self):
        """True when part of a reply has been parsed (the stream is mid-reply)."""
        return bool(self.stack) or self.bulk is not None or self.pending() > 0

    def _compact(self):
        if self.pos > 65536 and self.pos * 2 > len(self.buf):
            del self.buf[:self.pos]
            self.pos = 0

    def _line(self):
        i = self.buf.find(b"\r\n", self.pos)
        if i < 0:
            return None
        line = bytes(self.buf[self.pos:i])
        self.pos = i + 2
        return line

    def get(self):
        while True:
            v = self._scalar_or_open()
            if v is _NEED:
                self._compact()
                return _NEED
            # v is a finished value (or None for an aggregate just opened)
            if v is _OPENED:
                v = self._close_finished()
                if v is _OPENED:
                    continue
            else:
                v = self._deliver(v)
            if v is not _OPENED:
                self._compact()
                return v

    def _deliver(self, v):
        """Hand a finished value to the innermost aggregate, closing those
        that are now complete; return the top-level value or _OPENED."""
        while self.stack:
            top = self.stack[-1]
            if top[0] == "|":
                # attribute: collect, then the next value is the real one
                top[2].append(v)
                top[1] -= 1
                if top[1] == 0:
                    self.stack.pop()
                    self.attrs.append(top[2])
                return _OPENED
            if top[1] == -1 and v is _END:
                self.stack.pop()
                v = self._finish(top)
                continue
            top[2].append(v)
            if top[1] > 0:
                top[1] -= 1
                if top[1] == 0:
                    self.stack.pop()
                    v = self._finish(top)
                    continue
            return _OPENED
        if v is _END:
            raise ProtocolViolation("stream end marker outside an aggregate")
        self.consumed = self.pos
        return v

    def _close_finished(self):
        # an aggregate of zero elements finishes at once
        top = self.stack[-1]
        if top[1] == 0:
            self.stack.pop()
            return self._deliver(self._finish(top))
        return _OPENED

    @staticmethod
    def _finish(top):
        kind, _, items = top
        if kind == "%":
            d = {}
            for k, val in zip(items[0::2], items[1::2]):
                try:
                    d[k] = val
                except TypeError:
                    d[repr(k)] = val
            return d
        if kind == "~":
            return RespSet(items)
        if kind == ">":
            return Push(items)
        return items

    def _scalar_or_open(self):
        if self.bulk is not None:
            t, n = self.bulk
            if len(self.buf) - self.pos < n + 2:
                return _NEED
            data = bytes(self.buf[self.pos:self.pos + n])
            if self.buf[self.pos + n:self.pos + n + 2] != b"\r\n":
                raise ProtocolViolation("bulk of %d bytes not followed by CRLF" % n)
            self.pos += n + 2
            self.bulk = None
            if t == b"$":
                return data
            if t == b"!":
                return Error(data.decode("utf-8", "replace"))
            if t == b"=":
                v = Verbatim(data[4:])
                v.fmt = data[:3].decode("ascii", "replace")
                return v
        line = self._line()
        if line is None:
            return _NEED
        if not line:
            raise ProtocolViolation("empty line where a reply type was expected")
        t, rest = line[:1], line[1:]
        try:
            if t == b"+":
                return rest.decode("utf-8", "replace")
            if t == b"-":
                return Error(rest.decode("utf-8", "replace"))
            if t == b":":
                return int(rest)
            if t in (b"$", b"!", b"="):
                if rest == b"?":
                    raise ProtocolViolation("streamed strings are not supported")
                n = int(rest)
                if n < 0:
                    return None
                self.bulk = (t, n)
                return self._scalar_or_open()
            if t in (b"*", b"%", b"~", b">", b"|"):
                if rest == b"?":
                    n = -1
                else:
                    n = int(rest)
                    if n < 0:
                        return None
                if t in (b"%", b"|") and n > 0:
                    n *= 2
                self.stack.append([t.decode(), n, []])
                return _OPENED
            if t == b"_":
                return None
            if t == b"#":
                return rest == b"t"
            if t == b",":
                return float(rest.decode())
            if t == b"(":
                return int(rest)
            if t == b".":
                return _END
        except ValueError as e:
            raise ProtocolViolation("bad line %r: %s" % (line[:80], e)) from None
        raise ProtocolViolation("unknown reply type %r in line %r" % (t, line[:80]))


_OPENED = object()
_END = object()


def _short(values, limit=300):
    text = repr(values)
    return text if len(text) <= limit else text[:limit] + "..."


class SockClient:
    """One socket (TCP or unix) to addr, closed on leaving a with-block;
    timeout (scaled) bounds every send and read."""

    def __init__(self, addr, timeout=5.0, sock=None):
        self.addr = addr
        self.timeout = scale(timeout)
        self.sock = sock if sock is not None else connect(addr, self.timeout)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def send(self, data):
        self.sock.settimeout(self.timeout)
        self.sock.sendall(data)


class RespClient(SockClient):
    """A RESP client over one socket (TCP or unix). Every read has a
    deadline: a hung proxy fails the test instead of hanging it.

        c = RespClient("127.0.0.1:7000")       # or "unix:/path", (host, port)
        c.call("SET", "k", "v") -> "OK"
        c.pipeline([("GET", "k"), ("PING",)]) -> [b"v", "PONG"]
    Error replies are returned (as Error), not raised; call_ok() raises.
    """

    def __init__(self, addr, timeout=5.0, sock=None):
        super().__init__(addr, timeout, sock)
        self.reader = RespReader()

    def send_command(self, *args):
        self.send(encode(*args))

    def _recv(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no whole reply within %.1fs (have %d bytes: %r)" % (
                self.timeout, self.reader.pending(),
                bytes(self.reader.buf[self.reader.pos:self.reader.pos + 120])))
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(1 << 20)
        except socket.timeout:
            raise TimeoutError("no whole reply within %.1fs (have %d bytes: %r)" % (
                self.timeout, self.reader.pending(),
                bytes(self.reader.buf[self.reader.pos:self.reader.pos + 120]))) from None
        if not data:
            raise ConnectionClosed("connection closed by peer%s" % (
                " in the middle of a reply (%d bytes: %r)" % (
                    self.reader.pending(),
                    bytes(self.reader.buf[self.reader.pos:self.reader.pos + 120]))
                if self.reader.in_reply() else ""))
        self.reader.feed(data)

    def read_reply(self, timeout=None):
        """Exactly one reply."""
        deadline = time.monotonic() + (scale(timeout) if timeout else self.timeout)
        while True:
            v = self.reader.get()
            if v is not RespReader.NOTHING:
                return v
            self._recv(deadline)

    def read_replies(self, n, timeout=None):
        deadline = time.monotonic() + (scale(timeout) if timeout else self.timeout)
        out = []
        while len(out) < n:
            v = self.reader.get()
            if v is not RespReader.NOTHING:
                out.append(v)
                continue
            try:
                self._recv(deadline)
            except (ConnectionClosed, TimeoutError) as e:
                raise type(e)("%s; after %d of %d replies: %s" % (
                    e, len(out), n, _short(out))) from None
        return out

    def call(self, *args, timeout=None):
        self.send(encode(*args))
        return self.read_reply(timeout)

    def call_ok(self, *args, timeout=None):
        v = self.call(*args, timeout=timeout)
        if isinstance(v, Error):
            raise AssertionError("%r -> error %r" % (args, v))
        return v

    def pipeline(self, cmds, timeout=None):
        """Send all commands and read one reply each, writing and reading at
        the same time (a big pipeline cannot deadlock on full buffers)."""
        return self.send_and_read(encode_many(cmds), len(cmds), timeout)

    def send_and_read(self, data, n, timeout=None):
        """Send raw bytes while reading n replies; both within one deadline."""
        deadline = time.monotonic() + (scale(timeout) if timeout else self.timeout)
        out = []
        view = memoryview(data)
        sent = 0
        self.sock.setblocking(False)
        sel = selectors.DefaultSelector()
        try:
            while len(out) < n or sent < len(view):
                while len(out) < n:
                    v = self.reader.get()
                    if v is RespReader.NOTHING:
                        break
                    out.append(v)
                if len(out) >= n and sent >= len(view):
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        "pipeline: %d of %d replies and %d of %d bytes sent in %.1fs" % (
                            len(out), n, sent, len(view),
                            (timeout and scale(timeout)) or self.timeout))
                ev = selectors.EVENT_READ | (selectors.EVENT_WRITE if sent < len(view) else 0)
                sel.register(self.sock, ev)
                try:
                    ready = sel.select(left)
                finally:
                    sel.unregister(self.sock)
                for _, mask in ready:
                    if mask & selectors.EVENT_WRITE and sent < len(view):
                        try:
                            sent += self.sock.send(view[sent:sent + (1 << 20)])
                        except (BlockingIOError, InterruptedError):
                            pass
                    if mask & selectors.EVENT_READ:
                        try:
                            data_in = self.sock.recv(1 << 20)
                        except (BlockingIOError, InterruptedError):
                            continue
                        if not data_in:
                            raise ConnectionClosed(
                                "pipeline: closed by peer after %d of %d replies, "
                                "%d of %d bytes sent%s" % (
                                    len(out), n, sent, len(view),
                                    " (in the middle of a reply)" if self.reader.in_reply() else ""))
                        self.reader.feed(data_in)
        finally:
            sel.close()
            self.sock.setblocking(True)
            self.sock.settimeout(self.timeout)
        return out

    def read_raw(self, timeout=None, until_closed=True, limit=1 << 26):
        """Whatever bytes arrive until the peer closes (returns (data, True))
        or the deadline passes (returns (data, False)). A reset after data
        counts as closed."""
        deadline = time.monotonic() + (scale(timeout) if timeout else self.timeout)
        data = bytes(self.reader.buf[self.reader.pos:])
        self.reader = RespReader()
        while len(data) < limit:
            left = deadline - time.monotonic()
            if left <= 0:
                return data, False
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                return data, False
            except ConnectionResetError:
                return data, True
            if not chunk:
                return data, True
            data += chunk
            if not until_closed:
                return data, False
        return data, False

    def is_closed(self, timeout=2.0):
        """True when the peer closes within timeout (no more bytes arrive)."""
        data, closed = self.read_raw(timeout)
        if data:
            raise AssertionError("unexpected bytes before close: %r" % data[:200])
        return closed


# --------------------------------------------------------------------------
# Servers

class _Proc:
    """Common life cycle of a child process started by the harness."""

    name = "process"

    def __init__(self):
        self.proc = None
        self.tmp = mkdtemp("sp-%s-" % self.name)
        self.log_path = os.path.join(self.tmp, "%s.log" % self.name)
        self.paused = False

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def healthy(self):
        return self.alive()

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, n=30):
        return "\n".join(self.log_text().splitlines()[-n:])

    def send_signal(self, sig):
        if self.alive():
            os.kill(self.proc.pid, sig)

    def pause(self):
        self.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self):
        self.send_signal(signal.SIGCONT)
        self.paused = False

    def kill(self):
        """SIGKILL and reap."""
        if self.alive():
            os.kill(self.proc.pid, signal.SIGKILL)
        if self.proc is not None:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self.paused = False

    def stop(self, sig=signal.SIGTERM, timeout=10.0):
        """Send sig, wait up to timeout, SIGKILL if still there. Returns the
        exit code (negative: killed by that signal), or None if it had to
        be killed after the timeout."""
        if self.proc is None:
            return None
        if self.proc.poll() is not None:
            return self.proc.returncode
        if self.paused:
            self.resume()
        os.kill(self.proc.pid, sig)
        try:
            return self.proc.wait(scale(timeout))
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def cleanup(self):
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                pass


class _Server(_Proc):
    """A real server on a loopback port of its own: a free port is picked
    (again, when another process took it first), or the one given is kept."""

    def __init__(self, extra_args=(), port=None, start=True):
        super().__init__()
        self.extra_args = list(extra_args)
        self.port = port
        self._fixed_port = port is not None
        _register(self)
        if start:
            self.start()

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def start(self, timeout=10.0):
        attempts = 1 if self._fixed_port else 5
        for attempt in range(attempts):
            if self.port is None or (attempt > 0 and not self._fixed_port):
                self.port = free_port()
            self.proc = _spawn(self._argv() + self.extra_args, self.log_path)
            try:
                poll_until(self._ready, timeout, what="%s on port %d" % (self.name, self.port))
                return self
            except AssertionError:
                exited = not self.alive()
                self.kill()
                if exited and attempt + 1 < attempts:
                    continue
                raise AssertionError("%s did not start on port %d:\n%s" % (
                    self.name, self.port, self.log_tail(10)))
        return self

    def restart(self, timeout=10.0):
        """Start again on the same port (after kill() or stop())."""
        if self.alive():
            self.stop()
        self._fixed_port = True
        # the port may linger a moment after the previous process died
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.start(timeout=max(1.0, deadline - time.monotonic()))
            except AssertionError:
                if time.monotonic() >= deadline:
                    raise


class RedisServer(_Server):
    """A real redis-server on a loopback port of its own."""

    name = "redis"

    def _argv(self):
        return ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--daemonize", "no",
                "--dir", self.tmp]

    def _ready(self):
        if not self.alive():
            raise AssertionError("redis-server exited with %s" % self.proc.returncode)
        try:
            with RespClient(self.addr, timeout=1.0) as c:
                return c.call("PING") == "PONG"
        except OSError:
            return False

    def client(self, timeout=5.0):
        """A direct connection, bypassing sidepool."""
        return RespClient(self.addr, timeout=timeout)

    def call(self, *args):
        with self.client() as c:
            return c.call(*args)

    def cli(self, *args, timeout=10.0):
        return redis_cli(["-h", "127.0.0.1", "-p", str(self.port)] + list(args),
                         timeout=timeout)

    def client_list(self):
        """CLIENT LIST as a list of dicts, via redis-cli (whose own entry,
        cmd=client|list, is left out)."""
        r = self.cli("CLIENT", "LIST", timeout=5.0)
        if r.returncode != 0:
            raise AssertionError("redis-cli CLIENT LIST failed: %s %s" % (r.stdout, r.stderr))
        out = []
        for line in r.stdout.splitlines():
            line = line.strip()
            if not line:
                continue
            d = {}
            for field in line.split(" "):
                k, _, v = field.partition("=")
                d[k] = v
            if d.get("cmd") in ("client|list", "client"):
                continue
            out.append(d)
        return out


class Memcached(_Server):
    """A real memcached on a loopback port of its own."""

    name = "memcached"

    def _argv(self):
        argv = ["memcached", "-p", str(self.port), "-l", "127.0.0.1", "-U", "0"]
        if os.geteuid() == 0:
            argv += ["-u", "root"]
        return argv

    def _ready(self):
        if not self.alive():
            raise AssertionError("memcached exited with %s" % self.proc.returncode)
        try:
            s = connect(self.addr, 1.0)
        except OSError:
            return False
        try:
            s.sendall(b"version\r\n")
            data = b""
            while not data.endswith(b"\r\n"):
                chunk = s.recv(256)
                if not chunk:
                    return False
                data += chunk
            return data.startswith(b"VERSION")
        finally:
            s.close()


def rss_kb(pid):
    """VmRSS of a process, in kB."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for pid %d" % pid)


def sanitizer_build(path):
    """True for an ASan, TSan, MSan or HWASan binary: their runtimes leave
    these names in it (and bring their own malloc)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return False
    return any(m in data for m in (b"__asan_init", b"__tsan_init", b"__msan_init",
                                   b"__hwasan_init"))


def redis_cli(args, timeout=10.0, input=None):
    """Run redis-cli; returns CompletedProcess with text stdout/stderr."""
    return subprocess.run(["redis-cli"] + list(args), input=input, capture_output=True,
                          text=True, timeout=scale(timeout))


class Blackhole:
    """A TCP port where connect() hangs: a listening socket with a full
    backlog that never accepts. For connect timeouts."""

    def __init__(self):
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(0)
        self.port = self.lsock.getsockname()[1]
        self.fillers = []
        # fill the accept queue so further SYNs are dropped
        for _ in range(2):
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", self.port))
            except BlockingIOError:
                pass
            self.fillers.append(s)
        _register(self)

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def hangs(self, timeout=0.5):
        """True when a fresh connect() really does hang here."""
        s = socket.socket()
        s.settimeout(timeout)
        try:
            s.connect(("127.0.0.1", self.port))
            return False
        except socket.timeout:
            return True
        except OSError:
            return False
        finally:
            s.close()

    def cleanup(self):
        for s in self.fillers:
            s.close()
        self.lsock.close()


class FakeServer:
    """A scripted TCP server: handler(sock) runs in a thread per accepted
    connection (sock has a 30 s timeout). For backends that misbehave in
    ways a real one will not (garbage replies, closing mid-reply)."""

    def __init__(self, handler):
        self.handler = handler
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.port = self.lsock.getsockname()[1]
        self.conns = []
        self.accepted = 0
        self.closed = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()
        _register(self)

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def _accept(self):
        while not self.closed:
            try:
                s, _ = self.lsock.accept()
            except OSError:
                return
            self.accepted += 1
            s.settimeout(30)
            self.conns.append(s)
            threading.Thread(target=self._run, args=(s,), daemon=True).start()

    def _run(self, s):
        try:
            self.handler(s)
        except Exception:  # noqa: BLE001 - the peer going away is normal here
            pass
        finally:
            try:
                s.close()
            except OSError:
                pass

    def cleanup(self):
        self.closed = True
        try:
            self.lsock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.lsock.close()
        for s in self.conns:
            try:
                s.close()
            except OSError:
                pass


def read_request(sock, buf):
    """Read one RESP multibulk request (what a proxy sends a server) from
    sock; buf is a bytearray carried between calls. Returns the argument
    list (bytes), or None at EOF."""
    def line():
        while True:
            i = buf.find(b"\r\n")
            if i >= 0:
                ln = bytes(buf[:i])
                del buf[:i + 2]
                return ln
            chunk = sock.recv(65536)
            if not chunk:
                return None
            buf.extend(chunk)

    head = line()
    if head is None:
        return None
    if not head.startswith(b"*"):
        return head.split()
    args = []
    for _ in range(int(head[1:])):
        ln = line()
        if ln is None:
            return None
        n = int(ln[1:])
        while len(buf) < n + 2:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            buf.extend(chunk)
        args.append(bytes(buf[:n]))
        del buf[:n + 2]
    return args


# --------------------------------------------------------------------------
# YAML emitter (just enough for configs: dicts, lists, scalars)

class Raw(str):
    """A scalar written to YAML exactly as given."""


_PLAIN_OK = re.compile(r"^[A-Za-z0-9_/.][A-Za-z0-9_./:@-]*$")
_YAML_SPECIAL = re.compile(
    r"^(?:[-+]?[0-9][0-9_.]*(?:[eE][-+]?[0-9]+)?|0x[0-9a-fA-F]+|0o?[0-7]+|"
    r"true|false|yes|no|on|off|null|y|n|~)$", re.I)


def yaml_scalar(v):
    if isinstance(v, Raw):
        return str(v)
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, (int, float)):
        return repr(v)
    s = str(v)
    if _PLAIN_OK.match(s) and not _YAML_SPECIAL.match(s) and not s.endswith(":"):
        return s
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_yaml(obj, indent=0):
    """Block-style YAML for nested dicts/lists/scalars."""
    pad = " " * indent
    lines = []
    if isinstance(obj, dict):
        if not obj:
            return pad + "{}\n"
        for k, v in obj.items():
            key = yaml_scalar(k)
            if isinstance(v, dict) and v:
                lines.append("%s%s:\n%s" % (pad, key, to_yaml(v, indent + 2)))
            elif isinstance(v, list) and v:
                lines.append("%s%s:\n%s" % (pad, key, to_yaml(v, indent + 2)))
            elif isinstance(v, (dict, list)):
                lines.append("%s%s: %s\n" % (pad, key, "{}" if isinstance(v, dict) else "[]"))
            else:
                lines.append("%s%s: %s\n" % (pad, key, yaml_scalar(v)))
        return "".join(lines)
    if isinstance(obj, list):
        if not obj:
            return pad + "[]\n"
        for item in obj:
            if isinstance(item, (dict, list)) and item:
                sub = to_yaml(item, indent + 2)
                # put the first line after the dash
                lines.append("%s- %s" % (pad, sub[indent + 2:]))
            else:
                lines.append("%s- %s\n" % (pad, yaml_scalar(item) if not isinstance(item, (dict, list))
                                             else ("{}" if isinstance(item, dict) else "[]")))
        return "".join(lines)
    return pad + yaml_scalar(obj) + "\n"


# --------------------------------------------------------------------------
# The daemon

AUTO_TCP = "@tcp"     # listen: a free 127.0.0.1 port
AUTO_TCP6 = "@tcp6"   # listen: a free [::1] port
AUTO_UNIX = "@unix"   # listen: a socket in the daemon's temp dir


def redis_config(servers, listen=(AUTO_TCP,), workers=2, pool=None,
                 connect_timeout="1s", request_timeout="5s", shutdown_timeout="5s",
                 log_level="info", upstream="redis", listener_extra=None, upstream_extra=None):
    """A config dict: listeners (AUTO_* or addresses) all on one redis
    upstream over servers (RedisServer objects or address strings)."""
    addrs = [s.addr if hasattr(s, "addr") else s for s in servers]
    ups = {
        "protocol": "redis",
        "servers": addrs,
        "pool": dict(pool or {"size": 4, "max_connections": 8, "idle_timeout": "60s"}),
        "connect_timeout": connect_timeout,
        "request_timeout": request_timeout,
    }
    ups.update(upstream_extra or {})
    lst = []
    for a in listen:
        d = a if isinstance(a, dict) else {"listen": a}
        d = dict(d)
        d.setdefault("upstream", upstream)
        d.update(listener_extra or {})
        lst.append(d)
    return {
        "workers": workers,
        "log": {"level": log_level, "file": "stderr"},
        "shutdown_timeout": shutdown_timeout,
        "listeners": lst,
        "upstreams": {upstream: ups},
    }


class Sidepool(_Proc):
    """The daemon under test, with a config written from a dict (or given as
    YAML text) into its own temp dir; stderr goes to a log file there.

    Listener addresses AUTO_TCP / AUTO_TCP6 / AUTO_UNIX are resolved to free
    ones at start (and re-picked if the daemon says the address is in use).
    After start(), .listeners holds the resolved addresses in config order.
    """

    name = "sidepool"

    def __init__(self, config, start=True, args=(), timeout=10.0):
        super().__init__()
        self.config_src = config
        self.args = list(args)
        self.config_path = os.path.join(self.tmp, "sidepool.yml")
        self.listeners = []
        self.config = None
        self.started_at = None
        self.final_code = "unset"
        _register(self)
        if start:
            self.start(timeout=timeout)

    # --- config
    def _resolve(self):
        if isinstance(self.config_src, str):
            self.config = None
            self.listeners = []
            with open(self.config_path, "w") as f:
                f.write(self.config_src)
            return
        cfg = _deepcopy(self.config_src)
        self.listeners = []
        for i, lst in enumerate(cfg.get("listeners", [])):
            a = lst.get("listen")
            if a == AUTO_TCP:
                a = "127.0.0.1:%d" % free_port()
            elif a == AUTO_TCP6:
                a = "[::1]:%d" % free_port(socket.AF_INET6, "::1")
            elif a == AUTO_UNIX:
                a = "unix:%s" % os.path.join(self.tmp, "l%d.sock" % i)
            lst["listen"] = a
            self.listeners.append(a)
        self.config = cfg
        with open(self.config_path, "w") as f:
            f.write(to_yaml(cfg))

    def _has_auto(self):
        if isinstance(self.config_src, str):
            return False
        return any(lst.get("listen") in (AUTO_TCP, AUTO_TCP6)
                   for lst in self.config_src.get("listeners", []))

    def argv(self, *extra):
        return WRAPPER + [SIDEPOOL_BIN, "-c", self.config_path] + self.args + list(extra)

    # --- life cycle
    def start(self, timeout=10.0):
        attempts = 4 if self._has_auto() else 1
        for attempt in range(attempts):
            self._resolve()
            with open(self.log_path, "ab") as f:
                f.write(("---- start: %s\n" % " ".join(self.argv())).encode())
            self.proc = _spawn(self.argv(), self.log_path, cwd=self.tmp)
            self.started_at = time.monotonic()
            try:
                self.wait_ready(timeout)
                return self
            except AssertionError as e:
                exited = not self.alive()
                self.kill()
                if exited and attempt + 1 < attempts and re.search(
                        r"in use", self.log_text(), re.I):
                    continue
                self.dump_log("sidepool did not start")
                raise AssertionError("sidepool did not start: %s" % e) from None
        return self

    def wait_ready(self, timeout=10.0):
        """Poll until every listener accepts a connection."""
        pending = list(self.listeners)

        def ready():
            if not self.alive():
                raise AssertionError("sidepool exited with code %s" % self.proc.returncode)
            while pending:
                if not can_connect(pending[0], timeout=1.0):
                    return False
                pending.pop(0)
            return True

        try:
            poll_until(ready, scale(timeout), what="sidepool listeners %s" % pending)
        except AssertionError as e:
            if not self.alive():
                raise AssertionError("sidepool exited with code %s before it was ready" %
                                     self.proc.returncode) from None
            raise e

    def wait_exit(self, timeout):
        """Wait for the daemon to exit by itself; its exit code, or None."""
        try:
            return self.proc.wait(scale(timeout))
        except subprocess.TimeoutExpired:
            return None

    def stop(self, sig=signal.SIGTERM, timeout=10.0):
        code = super().stop(sig, timeout)
        if code is None:
            self.dump_log("sidepool did not exit within %.1fs of signal %d" % (
                scale(timeout), sig))
        return code

    def cleanup(self):
        """Stop gracefully (so sanitizers can report leaks at exit); the
        exit code is kept in final_code for the last check of the file."""
        if self.proc is not None and self.proc.poll() is None:
            self.final_code = self.stop(signal.SIGTERM, 8.0)
            if self.final_code != 0:
                diag("sidepool pid %s exited with %s when stopped after its test" % (
                    self.pid, self.final_code))
        elif self.proc is not None and self.final_code == "unset":
            self.final_code = "exited by itself with %s" % self.proc.returncode

    def dump_log(self, why, n=30):
        diag("%s; last lines of %s:" % (why, self.log_path))
        diag(self.log_tail(n) or "(empty log)")

    def sanitizer_reports(self):
        text = self.log_text()
        return [m for m in SANITIZER_MARKERS if re.search(m, text)]

    def run_to_exit(self, timeout=5.0):
        """Run the daemon expecting it to exit by itself (a start that must
        fail). Returns (exit code, its output); raises AssertionError if it
        is still running after timeout (it is then killed)."""
        self._resolve()
        self.proc = _spawn(self.argv(), self.log_path, cwd=self.tmp)
        try:
            code = self.proc.wait(scale(timeout))
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("sidepool was still running %.1fs after start (expected it to "
                                 "refuse to start); its output:\n%s" % (
                                     scale(timeout), self.log_tail(20))) from None
        return code, self.log_text()

    # --- clients
    def addr(self, i=0):
        return self.listeners[i]

    def client(self, i=0, timeout=5.0):
        return RespClient(self.listeners[i], timeout=timeout)

    def cli(self, *args, listener=0, timeout=10.0):
        a = self.listeners[listener]
        fam, sa = parse_addr(a)
        if fam == socket.AF_UNIX:
            conn = ["-s", sa]
        else:
            conn = ["-h", sa[0], "-p", str(sa[1])]
        return redis_cli(conn + list(args), timeout=timeout)


def run_sidepool(args, timeout=10.0, config_text=None, config_name="sidepool.yml"):
    """Run the binary to completion (for -V, -h, -t...). With config_text,
    the text is written to a temp file whose path replaces '{config}' in
    args. Returns (CompletedProcess, config_path or None)."""
    path = None
    if config_text is not None:
        d = mkdtemp("sp-cli-")
        path = os.path.join(d, config_name)
        with open(path, "w") as f:
            f.write(config_text)
        args = [a.replace("{config}", path) for a in args]
    r = subprocess.run(WRAPPER + [SIDEPOOL_BIN] + list(args), capture_output=True,
                       text=True, errors="replace", timeout=scale(timeout),
                       stdin=subprocess.DEVNULL)
    return r, path


def _deepcopy(x):
    if isinstance(x, dict):
        return {k: _deepcopy(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_deepcopy(v) for v in x]
    return x


# --------------------------------------------------------------------------
# Shared fixtures: made once per file, outside any one test's scope

def shared(fn):
    """Memoise a fixture factory. What it starts lives until the end of the
    file. If the fixture (or any object in a returned tuple) stopped being
    healthy (a daemon that crashed), it is made again."""
    cache = {}

    def wrapper():
        v = cache.get("v")
        if v is not None:
            objs = v if isinstance(v, tuple) else (v,)
            if all(getattr(o, "healthy", lambda: True)() for o in objs):
                return v
            diag("shared fixture %s is no longer healthy; making it again" % fn.__name__)
            for o in objs:
                if isinstance(o, _Proc) and o.proc is not None and not o.alive():
                    diag("%s pid %s exited with %s" % (o.name, o.pid, o.proc.returncode))
                    if isinstance(o, Sidepool):
                        o.dump_log("the shared sidepool died", 40)
                if hasattr(o, "cleanup"):
                    o.cleanup()
        global _scope
        saved = _scope
        _scope = None
        try:
            v = fn()
        finally:
            _scope = saved
        cache["v"] = v
        _shared_objs.extend(v if isinstance(v, tuple) else (v,))
        return v

    wrapper.__name__ = fn.__name__
    return wrapper


# --------------------------------------------------------------------------
# TAP runner

class Skip(Exception):
    """Raise inside a test to report it as skipped."""


class TestTimeout(BaseException):
    """Raised in the main thread when a test overruns its time limit."""


_tests = []
_shared_objs = []


def test(name=None, timeout=30.0):
    """Register a test function (in file order). timeout: seconds (scaled)."""
    def deco(fn):
        _tests.append((name or fn.__name__, fn, timeout))
        return fn
    return deco


def add_test(name, fn, timeout=30.0):
    _tests.append((name, fn, timeout))


def _alarm(signum, frame):
    raise TestTimeout()


def _daemons():
    return [r for r in _all_resources if isinstance(r, Sidepool)]


def skip_all(reason):
    print("1..0 # SKIP %s" % reason)
    sys.stdout.flush()
    sys.exit(0)


def require_tools(*tools, need_daemon=True):
    """Skip the whole file when a tool is missing; bail out (an error, not a
    skip) when the daemon under test is not built."""
    for t in tools:
        if not which(t):
            skip_all("%s not found" % t)
    if need_daemon and not os.access(SIDEPOOL_BIN, os.X_OK):
        print("1..0")
        print("Bail out! sidepool binary not found or not executable: %s" % SIDEPOOL_BIN)
        sys.stdout.flush()
        sys.exit(0)


def run():
    """Run the registered tests, printing TAP; then a last test that the
    logs of every daemon started are free of sanitizer reports. Exit 0."""
    global _scope
    total = len(_tests) + 1
    print("1..%d" % total)
    sys.stdout.flush()
    signal.signal(signal.SIGALRM, _alarm)
    t_file = time.monotonic()
    for num, (name, fn, limit) in enumerate(_tests, 1):
        _scope = []
        t0 = time.monotonic()
        status, detail = "ok", None
        try:
            signal.setitimer(signal.ITIMER_REAL, scale(limit))
            try:
                fn()
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except Skip as e:
            status, detail = "skip", str(e)
        except TestTimeout:
            status, detail = "not ok", "test took longer than its %.0fs limit:\n%s" % (
                scale(limit), traceback.format_exc())
        except KeyboardInterrupt:
            raise
        except BaseException:  # noqa: BLE001 - anything is a failure of this test
            status, detail = "not ok", traceback.format_exc()
        # stop what this test started (daemons first, servers last)
        scope, _scope = _scope, None
        if status == "not ok":
            shared_daemons = [r for r in _all_resources if isinstance(r, Sidepool)
                              and r in _shared_objs and r.proc is not None]
            for r in scope + shared_daemons:
                if isinstance(r, Sidepool) and r.proc is not None:
                    state = "running" if r.alive() else "exited with %s" % r.proc.returncode
                    r.dump_log("sidepool (pid %s, %s)" % (r.pid, state), 25)
        for r in reversed(scope):
            try:
                r.cleanup()
            except Exception:
                pass
        dt = time.monotonic() - t0
        if status == "skip":
            print("ok %d - %s # SKIP %s" % (num, name, detail))
        else:
            print("%s %d - %s" % (status, num, name))
            if detail:
                diag(detail.rstrip())
        if dt > 5:
            diag("%s: %.2fs" % (name, dt))
        sys.stdout.flush()
    # the last test: what sanitizers/valgrind said
    bad = []
    for d in _daemons():
        d.cleanup()
        reports = d.sanitizer_reports()
        if d.final_code not in (0, "unset") and not str(d.final_code).startswith("exited by"):
            reports.append("exit code %s on SIGTERM" % d.final_code)
        if reports:
            bad.append((d, reports))
    name = "daemon logs are free of sanitizer and valgrind reports"
    if bad:
        print("not ok %d - %s" % (total, name))
        for d, reports in bad:
            diag("%s: %s" % (d.log_path, ", ".join(reports)))
            text = d.log_text().splitlines()
            for i, line in enumerate(text):
                if any(re.search(m, line) for m in SANITIZER_MARKERS):
                    diag("\n".join(text[max(0, i - 2):i + 25]))
                    break
    else:
        print("ok %d - %s" % (total, name))
    diag("total %.1fs" % (time.monotonic() - t_file))
    sys.stdout.flush()
    _cleanup_all()
    os._exit(0)
