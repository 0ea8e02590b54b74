#!/usr/bin/env python3
"""
test_nginx.py - nginx pointed at sidepool, with nginx's own modules: the
example configs of conf/nginx/ (addresses rewritten to this test's) loaded
into a private nginx (its own prefix, port and pid file, daemon off, never
the system service), in front of a sidepool in front of a real redis-server
and memcached.

Checked through each path: lua-resty-redis over the unix socket and over TCP,
with and without set_keepalive, pipelines, error replies from sidepool;
memcached_pass over unix and TCP, with and without an upstream keepalive
block; memc_pass. Values stored and read back (and seen in the real
servers), missing keys, 100 KB binary values; that nginx really reuses its
connections to sidepool when keepalive is configured (sidepool's accepted
client count, from the control socket); idle connections closed by sidepool;
the unix-socket permissions the nginx worker user needs; and the traffic
shape of redis2_raw_queries (raw RESP pipelines over one kept-alive
connection; the redis2 module is not packaged in Debian) with a client of
our own.

Needs Debian's nginx, libnginx-mod-http-lua, lua-nginx-redis and
libnginx-mod-http-memc: installed with apt-get when missing and we are root
(SIDEPOOL_NO_APT=1 forbids it); otherwise the file is skipped, saying why.
"""

import http.client
import json
import os
import grp
import pwd
import random
import re
import signal
import stat
import subprocess
import sys
import time
from urllib.parse import urlencode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

h.require_tools("redis-server", "memcached")

CONF_DIR = os.path.join(h.SRCDIR, "conf", "nginx")
CTL = os.path.join(os.path.dirname(h.SIDEPOOL_BIN), "sidepoolctl")
MODDIR = "/usr/lib/nginx/modules"
MODULES = ["ndk_http_module.so", "ngx_http_lua_module.so", "ngx_http_memc_module.so"]
LUA_REDIS = "/usr/share/lua/5.1/nginx/redis.lua"   # Debian's lua-nginx-redis
PACKAGES = ["nginx", "libnginx-mod-http-lua", "lua-nginx-redis", "libnginx-mod-http-memc"]
NGINX_WORKERS = 2
RUN = "%x" % random.getrandbits(32)   # key prefix of this run


# ---------------------------------------------------------------- nginx itself

def _nginx_missing():
    missing = []
    if not h.which("nginx") and not os.access("/usr/sbin/nginx", os.X_OK):
        missing.append("nginx")
    for m in MODULES:
        if not os.path.exists(os.path.join(MODDIR, m)):
            missing.append(os.path.join(MODDIR, m))
    if not os.path.exists(LUA_REDIS):
        missing.append(LUA_REDIS)
    return missing


def _install_nginx():
    """apt-get install the packages; a reason string when that is not
    possible or did not help, None when everything is there."""
    missing = _nginx_missing()
    if not missing:
        return None
    why = "missing %s (Debian packages: %s)" % (", ".join(missing), " ".join(PACKAGES))
    if os.environ.get("SIDEPOOL_NO_APT") == "1":
        return why + "; SIDEPOOL_NO_APT=1 forbids installing them"
    if os.geteuid() != 0 or not h.which("apt-get"):
        return why + "; not root with apt-get, cannot install them"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    h.diag("installing %s with apt-get" % " ".join(PACKAGES))
    try:
        subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=120", "update", "-q"],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, env=env, timeout=300)
        r = subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=120", "install", "-y", "-q",
                            "--no-install-recommends"] + PACKAGES,
                           stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           env=env, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        return why + "; apt-get failed: %s" % e
    missing = _nginx_missing()
    if missing:
        tail = "\n".join((r.stdout + r.stderr).splitlines()[-5:])
        return "still missing %s after apt-get install (exit %d): %s" % (
            ", ".join(missing), r.returncode, tail)
    return None


_why = _install_nginx()
if _why:
    h.skip_all("nginx with the lua and memc modules is not available: %s" % _why)
NGINX = h.which("nginx") or "/usr/sbin/nginx"
h.require_tools()  # bail out if the daemon is not built


def _worker_user():
    """(user, group, gid) for nginx's workers when we are root: the
    unprivileged user a packaged nginx runs them as. None when not root
    (the workers then run as we do)."""
    if os.geteuid() != 0:
        return None
    for name in ("www-data", "nobody"):
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            continue
        return name, grp.getgrgid(pw.pw_gid).gr_name, pw.pw_gid
    return None


WORKER = _worker_user()


def _children(pid):
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                st = f.read()
        except OSError:
            continue
        fields = st[st.rfind(")") + 2:].split()
        if int(fields[1]) == pid:
            out.append(int(d))
    return out


def example(name, subst):
    """The text of conf/nginx/NAME with the production addresses replaced
    by this test's (every one of them must be replaced)."""
    with open(os.path.join(CONF_DIR, name)) as f:
        text = f.read()
    for old, new in subst:
        text = text.replace(old, new)
    left = [a for a in ("/run/sidepool/", "6380", "11212") if a in text]
    assert not left, "conf/nginx/%s: addresses not rewritten for the test: %s" % (name, left)
    return text


class Nginx(h._Proc):
    """A private nginx: prefix, config, pid file and port of its own, in the
    foreground (daemon off) so the harness owns the master's PID. Stopped by
    that PID; workers left behind by a killed master are killed by theirs."""

    name = "nginx"

    def __init__(self, files, http_extra, server_extra, workers=NGINX_WORKERS):
        super().__init__()
        self.files = files                  # {name: text} written to conf/
        self.http_extra = http_extra
        self.server_extra = server_extra
        self.workers = workers
        self.port = None
        self.workers_seen = []
        os.chmod(self.tmp, 0o755)           # workers reach their temp dirs
        self.conf_dir = os.path.join(self.tmp, "conf")
        os.makedirs(self.conf_dir)
        os.makedirs(os.path.join(self.tmp, "temp"))
        self.conf_path = os.path.join(self.conf_dir, "nginx.conf")
        h._register(self)
        self.start()

    def config(self):
        loads = "".join("load_module %s;\n" % os.path.join(MODDIR, m) for m in MODULES)
        user = "user %s %s;\n" % (WORKER[0], WORKER[1]) if WORKER else ""
        temp = "".join("    %s_temp_path %s;\n" % (k, os.path.join(self.tmp, "temp", k))
                       for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        inc = "".join("        include %s;\n" % os.path.join(self.conf_dir, n)
                      for n in self.files if n != "sidepool-upstreams.conf")
        return (loads + user +
                "daemon off;\nmaster_process on;\nworker_processes %d;\n"
                "pid %s;\nerror_log stderr notice;\n"
                "events { worker_connections 1024; }\n"
                "http {\n    access_log off;\n%s"
                "    include %s;\n%s\n"
                "    server {\n        listen 127.0.0.1:%d;\n%s%s\n    }\n}\n") % (
                    self.workers, os.path.join(self.tmp, "nginx.pid"), temp,
                    os.path.join(self.conf_dir, "sidepool-upstreams.conf"),
                    self.http_extra, self.port, inc, self.server_extra)

    def argv(self, *extra):
        return [NGINX, "-p", self.tmp + "/", "-c", self.conf_path, "-e", "stderr"] + list(extra)

    def write(self):
        for n, text in self.files.items():
            with open(os.path.join(self.conf_dir, n), "w") as f:
                f.write(text)
        with open(self.conf_path, "w") as f:
            f.write(self.config())

    def check(self):
        """nginx -t on the config; (exit code, output)."""
        r = subprocess.run(self.argv("-t"), capture_output=True, text=True,
                           timeout=h.scale(20), stdin=subprocess.DEVNULL)
        return r.returncode, r.stdout + r.stderr

    def start(self, timeout=15.0):
        for attempt in range(4):
            self.port = h.free_port()
            self.write()
            code, out = self.check()
            assert code == 0, "nginx -t refused the config:\n%s\n--- config:\n%s" % (
                out, self.config())
            self.proc = h._spawn(self.argv(), self.log_path, cwd=self.tmp)
            try:
                h.poll_until(self._ready, h.scale(timeout), what="nginx on port %d" % self.port)
                self.workers_seen = _children(self.pid)
                return self
            except AssertionError:
                exited = not self.alive()
                self.kill()
                if exited and "in use" in self.log_text() and attempt < 3:
                    continue
                raise AssertionError("nginx did not start:\n%s" % self.log_tail(20))
        return self

    def _ready(self):
        if not self.alive():
            raise AssertionError("nginx exited with %s" % self.proc.returncode)
        if not h.can_connect("127.0.0.1:%d" % self.port):
            return False
        return len(_children(self.pid)) >= self.workers

    def reload(self, timeout=15.0):
        """SIGHUP: new workers (with empty connection pools); returns when
        every old worker is gone."""
        old = set(_children(self.pid))
        self.send_signal(signal.SIGHUP)

        def done():
            now = set(_children(self.pid))
            return not (now & old) and len(now) >= self.workers and now
        self.workers_seen = sorted(h.poll_until(done, h.scale(timeout),
                                                what="nginx's old workers to exit"))

    def _kill_workers(self, pids):
        for p in pids:
            try:
                with open("/proc/%d/cmdline" % p, "rb") as f:
                    if b"nginx" not in f.read():
                        continue
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass

    def stop(self, sig=signal.SIGTERM, timeout=10.0):
        workers = set(self.workers_seen)
        if self.alive():
            workers.update(_children(self.pid))
        code = super().stop(sig, timeout)
        self._kill_workers(workers)
        return code

    def cleanup(self):
        if self.proc is not None and self.proc.poll() is None:
            self.stop()

    def errors(self):
        """Lines nginx logged at crit, alert or emerg."""
        return [ln for ln in self.log_text().splitlines()
                if re.search(r"\[(crit|alert|emerg)\]", ln)]


# ---------------------------------------------------------------- HTTP client

class Http:
    """One kept-alive HTTP/1.1 connection to nginx (so its requests all go to
    the same nginx worker)."""

    def __init__(self, ng, timeout=15.0):
        self.c = http.client.HTTPConnection("127.0.0.1", ng.port, timeout=h.scale(timeout))

    def __call__(self, method, path, body=None):
        headers = {}
        if body is not None:
            headers["Content-Type"] = "application/octet-stream"
        self.c.request(method, path, body=body, headers=headers)
        r = self.c.getresponse()
        return r.status, r.read()

    def close(self):
        self.c.close()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


def req(ng, method, path, body=None):
    with Http(ng) as c:
        return c(method, path, body)


def expect(got, want, what):
    assert got == want, "%s: expected %s, got %s" % (what, _short(want), _short(got))


def _short(v, limit=600):
    text = repr(v)
    return text if len(text) <= limit else text[:limit] + "... (%d chars)" % len(text)


def key(*parts):
    return "%s-%s" % (RUN, "-".join(str(p) for p in parts))


# ---------------------------------------------------------------- memcached, directly

def mc_call(addr, data, terminators=(b"\r\n",)):
    """Send raw memcached text, read until the reply ends with one of
    terminators (whole lines)."""
    s = h.connect(addr, h.scale(5))
    try:
        s.sendall(data)
        buf = b""
        while not any(buf.endswith(t) for t in terminators):
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            buf += chunk
        return buf
    finally:
        s.close()


def mc_set(addr, k, v):
    r = mc_call(addr, b"set %s 0 0 %d\r\n%s\r\n" % (k.encode(), len(v), v))
    assert r == b"STORED\r\n", "memcached set %s: %r" % (k, r)


def mc_get(addr, k):
    r = mc_call(addr, b"get %s\r\n" % k.encode(), (b"END\r\n",))
    if r == b"END\r\n":
        return None
    head, _, rest = r.partition(b"\r\n")
    n = int(head.split()[3])
    assert rest[n:] == b"\r\nEND\r\n", "memcached get %s: bad reply %r" % (k, r[:200])
    return rest[:n]


# ---------------------------------------------------------------- the stack

class Stack:
    def __init__(self):
        self.redis = h.RedisServer()
        self.memc = h.Memcached()
        # the sockets' directory, as /run/sidepool is for the packaged unit
        # (0750 and the daemon's group): here the nginx worker's group owns
        # it, setgid, so the sockets inside get that group too
        self.run = h.mkdtemp("spn-run-")
        if WORKER:
            os.chown(self.run, 0, WORKER[2])
            os.chmod(self.run, 0o2750)
        dead_r, dead_m = h.free_port(), h.free_port()
        sock = lambda n: "unix:%s/%s" % (self.run, n)  # noqa: E731
        pool = {"size": 4, "max_connections": 8, "idle_timeout": "60s"}
        ups = lambda proto, srv: {"protocol": proto, "servers": [srv], "pool": dict(pool),  # noqa: E731
                                  "connect_timeout": "1s", "request_timeout": "5s"}
        cfg = {
            "workers": 2,
            "log": {"level": "info", "file": "stderr"},
            "shutdown_timeout": "5s",
            "listeners": [
                {"listen": h.AUTO_TCP, "upstream": "redis"},                         # 0
                {"listen": sock("redis.sock"), "upstream": "redis", "mode": "0660"},  # 1
                {"listen": h.AUTO_TCP, "upstream": "memcached"},                     # 2
                {"listen": sock("memcached.sock"), "upstream": "memcached",
                 "mode": "0660"},                                                     # 3
                {"listen": sock("redis-down.sock"), "upstream": "redis_down",
                 "mode": "0660"},                                                     # 4
                {"listen": sock("memcached-down.sock"), "upstream": "memcached_down",
                 "mode": "0660"},                                                     # 5
                {"listen": sock("redis-idle.sock"), "upstream": "redis", "mode": "0660",
                 "idle_timeout": "1s"},                                               # 6
                {"listen": h.AUTO_TCP, "upstream": "memcached", "idle_timeout": "1s"},  # 7
                {"listen": sock("redis-private.sock"), "upstream": "redis",
                 "mode": "0600"},                                                     # 8
            ],
            "upstreams": {
                "redis": ups("redis", self.redis.addr),
                "memcached": ups("memcache", self.memc.addr),
                "redis_down": ups("redis", "127.0.0.1:%d" % dead_r),
                "memcached_down": ups("memcache", "127.0.0.1:%d" % dead_m),
            },
        }
        self.sp = h.Sidepool(cfg, start=False)
        self.control = os.path.join(self.sp.tmp, "control.sock")
        self.sp.config_src["control"] = {"path": self.control}
        self.sp.start()
        L = self.sp.listeners
        self.redis_tcp, self.redis_unix = L[0], L[1][5:]
        self.memc_tcp, self.memc_unix = L[2], L[3][5:]
        self.memc_idle_tcp = L[7]
        self.subst = [
            ("/run/sidepool/", self.run + "/"),
            ("127.0.0.1:6380", self.redis_tcp),
            ('"127.0.0.1", 6380', '"127.0.0.1", %s' % self.redis_tcp.rsplit(":", 1)[1]),
            ("127.0.0.1:11212", self.memc_tcp),
        ]
        files = {n: example(n, self.subst) for n in (
            "sidepool-upstreams.conf", "sidepool-lua-redis.conf",
            "sidepool-memcached.conf", "sidepool-memc.conf")}
        self.ng = Nginx(files, TEST_HTTP % {"memc_idle": self.memc_idle_tcp},
                        TEST_SERVER % {"run": self.run})

    def healthy(self):
        return all(p.alive() for p in (self.redis, self.memc, self.sp, self.ng))

    def cleanup(self):
        for p in (self.ng, self.sp, self.memc, self.redis):
            p.cleanup()

    def stats(self):
        p = subprocess.run([CTL, "-s", self.control, "--json", "stats"],
                           capture_output=True, timeout=h.scale(10))
        assert p.returncode == 0, "sidepoolctl --json stats: exit %d: %s" % (
            p.returncode, p.stderr.decode(errors="replace"))
        return json.loads(p.stdout)

    def accepted(self):
        return self.stats()["clients"]["accepted"]


# Locations of the test's own, beside the examples: a lua client that shows
# exactly what lua-resty-redis returns, and the listeners that are down,
# closing idle clients after 1 s, or private (0600).
TEST_HTTP = """
    upstream t_memcached_idle {
        server %(memc_idle)s;
        keepalive 8;
    }
"""

TEST_SERVER = r"""
        # GET /t/lua?sock=NAME|port=N&cmd=GET+k&keepalive=1
        location = /t/lua {
            content_by_lua_block {
                local redis = require "nginx.redis"
                local args = ngx.req.get_uri_args()
                local red = redis:new()
                red:set_timeout(10000)
                local ok, err
                if args.sock then
                    ok, err = red:connect("unix:%(run)s/" .. args.sock)
                else
                    ok, err = red:connect("127.0.0.1", tonumber(args.port))
                end
                if not ok then
                    ngx.say("connect error: ", err)
                    return
                end
                local reused = red:get_reused_times()
                local cmd = {}
                for w in args.cmd:gmatch("%%S+") do cmd[#cmd + 1] = w end
                local name = string.lower(table.remove(cmd, 1))
                local res, rerr = red[name](red, unpack(cmd))
                local kept = "closed"
                if args.keepalive == "1" and res ~= nil then
                    local k, kerr = red:set_keepalive(60000, 32)
                    kept = k and "yes" or ("failed: " .. tostring(kerr))
                else
                    red:close()
                end
                ngx.say("reused=", reused)
                if res == nil then
                    ngx.say("nil, ", rerr)
                elseif res == false then
                    ngx.say("false, ", rerr)
                elseif res == ngx.null then
                    ngx.say("ngx.null")
                else
                    ngx.say(type(res), " ", tostring(res))
                end
                ngx.say("kept=", kept)
            }
        }
        location ~ ^/t/memcached-idle/(?<k>[^/]+)$ {
            set $memcached_key $k;
            memcached_pass t_memcached_idle;
        }
        location ~ ^/t/memcached-down/(?<k>[^/]+)$ {
            set $memcached_key $k;
            memcached_pass unix:%(run)s/memcached-down.sock;
        }
        location ~ ^/t/memc-down/(?<k>[^/]+)$ {
            set $memc_key $k;
            memc_pass unix:%(run)s/memcached-down.sock;
        }
"""


@h.shared
def stack():
    return Stack()


def lua(st, c=None, **args):
    """GET /t/lua; the lines it printed."""
    path = "/t/lua?" + urlencode(args)
    status, body = (c or (lambda *a: req(st.ng, *a)))("GET", path)
    expect(status, 200, "GET %s status" % path)
    return body.decode().splitlines()


# ---------------------------------------------------------------- the configs

@h.test("nginx -t accepts conf/nginx/nginx.conf and every snippet it includes")
def example_nginx_conf():
    st = stack()
    tmp = h.mkdtemp("spn-conf-")
    for n in os.listdir(CONF_DIR):
        if n.startswith("sidepool-") and n != "sidepool-redis2.conf":
            with open(os.path.join(tmp, n), "w") as f:
                f.write(example(n, st.subst))
    text = example("nginx.conf", st.subst)
    text = text.replace("/etc/nginx/sidepool/", tmp + "/")
    text = text.replace("pid /run/nginx.pid;", "pid %s/nginx.pid;" % tmp)
    text = text.replace("listen 127.0.0.1:8080;", "listen 127.0.0.1:%d;" % h.free_port())
    temp = "".join("    %s_temp_path %s/%s;\n" % (k, tmp, k)
                   for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    text = text.replace("    access_log off;\n", "    access_log off;\n" + temp)
    if not WORKER:
        text = text.replace("user www-data;", "")
    elif WORKER[0] != "www-data":
        text = text.replace("user www-data;", "user %s %s;" % WORKER[:2])
    path = os.path.join(tmp, "nginx.conf")
    with open(path, "w") as f:
        f.write(text)
    r = subprocess.run([NGINX, "-t", "-p", tmp + "/", "-c", path, "-e", "stderr"],
                       capture_output=True, text=True, timeout=h.scale(20))
    assert r.returncode == 0, "nginx -t %s: exit %d\n%s" % (path, r.returncode, r.stderr)
    assert "redis2" in open(os.path.join(CONF_DIR, "sidepool-redis2.conf")).read()


# ---------------------------------------------------------------- lua-resty-redis

def lua_store_and_read(st, prefix, what):
    with Http(st.ng) as c:
        for i in range(20):
            k = key(prefix, i)
            v = ("value %d of %s " % (i, what)).encode() + bytes(range(256)) * (i % 3)
            expect(c("PUT", "/%s/%s" % (prefix, k), v), (201, b"OK"), "PUT %s" % k)
            expect(c("GET", "/%s/%s" % (prefix, k)), (200, v), "GET %s" % k)
            expect(st.redis.call("GET", k), v, "the value in redis-server itself")
        st.redis.call("SET", key(prefix, "direct"), "set in redis")
        expect(c("GET", "/%s/%s" % (prefix, key(prefix, "direct"))), (200, b"set in redis"),
               "a value set in redis-server directly, read through nginx")
        status, _ = c("GET", "/%s/%s" % (prefix, key(prefix, "missing")))
        expect(status, 404, "GET of a missing key (ngx.null -> 404)")


@h.test("lua-resty-redis over the unix socket, set_keepalive: SET/GET, binary values, "
        "missing key is a 404")
def lua_unix():
    lua_store_and_read(stack(), "redis", "unix")


@h.test("lua-resty-redis over loopback TCP, set_keepalive: SET/GET, binary values, "
        "missing key is a 404")
def lua_tcp():
    lua_store_and_read(stack(), "redis-tcp", "tcp")


@h.test("lua-resty-redis without set_keepalive (close after each request)")
def lua_nokeepalive():
    lua_store_and_read(stack(), "redis-nokeepalive", "no keepalive")


@h.test("lua-resty-redis: a missing key is ngx.null, over unix and TCP")
def lua_missing_is_null():
    st = stack()
    port = st.redis_tcp.rsplit(":", 1)[1]
    for where in ({"sock": "redis.sock"}, {"port": port}):
        out = lua(st, cmd="GET " + key("nope"), keepalive="1", **where)
        expect(out[1:], ["ngx.null", "kept=yes"], "GET of a missing key via %s" % where)
        out = lua(st, cmd="SET %s v" % key("yes"), keepalive="1", **where)
        expect(out[1:], ["string OK", "kept=yes"], "SET via %s" % where)


@h.test("a 100 KB binary value through lua-resty-redis (unix, TCP, no keepalive)")
def lua_big_value():
    st = stack()
    with Http(st.ng) as c:
        for prefix in ("redis", "redis-tcp", "redis-nokeepalive"):
            k = key("big", prefix)
            v = os.urandom(100 * 1024)
            expect(c("PUT", "/%s/%s" % (prefix, k), v), (201, b"OK"), "PUT 100 KB %s" % prefix)
            expect(c("GET", "/%s/%s" % (prefix, k)), (200, v), "GET 100 KB %s" % prefix)
            expect(st.redis.call("GET", k), v, "the 100 KB value in redis-server itself")


@h.test("lua-resty-redis pipeline (init_pipeline/commit_pipeline): replies in order, "
        "error replies from redis and from sidepool in place")
def lua_pipeline():
    st = stack()
    k = key("pipe")
    body = "\n".join([
        "SET %s 1" % k, "GET %s" % k, "INCR %s" % k, "GET %s-missing" % k,
        "DEBUG sleep 0", "LPUSH %s x" % k, "INCR %s" % k, "PING", "ECHO hello",
        "RPUSH %s-list a b c" % k, "LRANGE %s-list 0 -1" % k, "DEL %s-list" % k,
    ]) + "\n"
    want = [
        "OK", "1", "(integer) 2", "(nil)",
        "(error) ERR sidepool: DEBUG is not allowed through the proxy",
        "(error) WRONGTYPE Operation against a key holding the wrong kind of value",
        "(integer) 3", "PONG", "hello", "(integer) 3", "(array) 3", "(integer) 1",
    ]
    with Http(st.ng) as c:
        for rnd in range(5):
            st.redis.call("DEL", k)
            status, out = c("POST", "/redis-pipeline", body.encode())
            expect(status, 200, "POST /redis-pipeline status")
            expect(out.decode().splitlines(), want, "pipeline replies, round %d" % rnd)
        # a long pipeline
        n = 500
        lines = ["INCR %s-n" % k for _ in range(n)]
        status, out = c("POST", "/redis-pipeline", ("\n".join(lines) + "\n").encode())
        expect(status, 200, "500-command pipeline status")
        expect(out.decode().splitlines(), ["(integer) %d" % (i + 1) for i in range(n)],
               "500 INCR replies in order")


@h.test("sidepool's error reply reaches lua as false, \"ERR sidepool: ...\" and the "
        "connection is still kept and reused")
def lua_error_reply():
    st = stack()
    with Http(st.ng) as c:
        # a command sidepool refuses
        out = lua(st, c, sock="redis.sock", cmd="DEBUG sleep 0", keepalive="1")
        expect(out[1:], ["false, ERR sidepool: DEBUG is not allowed through the proxy",
                         "kept=yes"], "DEBUG through sidepool")
        # the server is down: sidepool answers for it, at once
        t0 = time.monotonic()
        first = lua(st, c, sock="redis-down.sock", cmd="GET " + key("x"), keepalive="1")
        dt = time.monotonic() - t0
        assert first[1].startswith("false, ERR sidepool: "), \
            "GET with the server down: expected false, \"ERR sidepool: ...\", got %r" % first
        expect(first[2], "kept=yes", "set_keepalive after an error reply")
        assert dt < h.scale(3), "the error took %.1fs" % dt
        h.diag("server down, as lua sees it: %s" % first[1])
        # the same worker (same HTTP connection) takes the pooled connection again
        again = lua(st, c, sock="redis-down.sock", cmd="GET " + key("x"), keepalive="1")
        assert again[0] != "reused=0", "the connection was not reused after an error: %r" % again
        assert again[1].startswith("false, ERR sidepool: "), again


# ---------------------------------------------------------------- memcached_pass, memc_pass

MC_PATHS = ["memcached", "memcached-tcp", "memcached-nokeepalive", "memcached-tcp-nokeepalive"]


@h.test("memcached_pass over unix and TCP, with and without keepalive: values set in "
        "memcached are read; a missing key is a 404")
def memcached_pass_paths():
    st = stack()
    with Http(st.ng) as c:
        for i in range(10):
            k = key("mc", i)
            v = ("memcached value %d " % i).encode() + bytes(range(256))
            mc_set(st.memc.addr, k, v)
            for p in MC_PATHS:
                expect(c("GET", "/%s/%s" % (p, k)), (200, v), "GET /%s/%s" % (p, k))
        for p in MC_PATHS:
            status, _ = c("GET", "/%s/%s" % (p, key("mc-missing", p)))
            expect(status, 404, "GET /%s of a missing key" % p)
        # also a value stored through sidepool rather than in memcached directly
        k = key("mc-via")
        mc_set(st.memc_tcp, k, b"stored through sidepool")
        for p in MC_PATHS:
            expect(c("GET", "/%s/%s" % (p, k)), (200, b"stored through sidepool"),
                   "GET /%s of a value stored through sidepool" % p)


@h.test("a 100 KB binary value through memcached_pass (each path) and memc_pass")
def memcached_big_value():
    st = stack()
    with Http(st.ng) as c:
        k = key("mc-big")
        v = os.urandom(100 * 1024)
        mc_set(st.memc.addr, k, v)
        for p in MC_PATHS:
            expect(c("GET", "/%s/%s" % (p, k)), (200, v), "GET 100 KB via /%s" % p)
        k2 = key("memc-big")
        v2 = os.urandom(100 * 1024)
        expect(c("PUT", "/memc/" + k2, v2), (201, b"STORED\r\n"), "memc PUT 100 KB")
        expect(c("GET", "/memc/" + k2), (200, v2), "memc GET 100 KB")
        expect(mc_get(st.memc.addr, k2), v2, "the 100 KB value in memcached itself")


@h.test("memc_pass through sidepool: set, get, add, delete, missing key")
def memc_commands():
    st = stack()
    with Http(st.ng) as c:
        k = key("memc")
        expect(c("PUT", "/memc/" + k, b"first"), (201, b"STORED\r\n"), "memc set")
        expect(c("GET", "/memc/" + k), (200, b"first"), "memc get")
        expect(mc_get(st.memc.addr, k), b"first", "the value in memcached itself")
        expect(c("GET", "/memcached/" + k), (200, b"first"), "memcached_pass get")
        expect(c("PUT", "/memc/" + k, b"second"), (201, b"STORED\r\n"), "memc set again")
        expect(c("GET", "/memc/" + k), (200, b"second"), "memc get after the second set")
        status, body = c("POST", "/memc/" + k, b"third")
        expect((status, body), (200, b"NOT_STORED\r\n"), "memc add of an existing key")
        expect(c("DELETE", "/memc/" + k), (200, b"DELETED\r\n"), "memc delete")
        status, _ = c("GET", "/memc/" + k)
        expect(status, 404, "memc get after delete")
        status, _ = c("DELETE", "/memc/" + k)
        expect(status, 404, "memc delete of a missing key")
        expect(c("POST", "/memc/" + k, b"added"), (201, b"STORED\r\n"), "memc add")
        expect(c("GET", "/memcached-tcp/" + k), (200, b"added"), "memcached_pass after add")
        expect(c("PUT", "/memc/%s?exptime=100" % (k + "e"), b"x"), (201, b"STORED\r\n"),
               "memc set with an exptime")


@h.test("memcached server down: sidepool's SERVER_ERROR is a 502 for memcached_pass "
        "and memc_pass, quickly")
def memcached_down():
    st = stack()
    with Http(st.ng) as c:
        for path in ("/t/memcached-down/", "/t/memc-down/"):
            t0 = time.monotonic()
            status, _ = c("GET", path + key("down"))
            expect(status, 502, "GET %s with memcached down" % path)
            assert time.monotonic() - t0 < h.scale(3), "the 502 took too long"
    h.poll_until(lambda: "memcached sent invalid response" in st.ng.log_text()
                 or "SERVER_ERROR" in st.ng.log_text(), 5,
                 what="nginx to log the memcached error")


@h.test("24 concurrent HTTP clients on every path at once each read back their own "
        "values (no cross-talk on the multiplexed connections)", timeout=90)
def concurrent_mixed():
    st = stack()
    rnd_paths = ["redis", "redis-tcp", "redis-nokeepalive"]

    def client(i):
        rnd = random.Random(i)
        with Http(st.ng) as c:
            for j in range(25):
                v = ("client %d request %d " % (i, j)).encode() + os.urandom(rnd.choice([1, 300, 5000]))
                k = key("mix", i, j)
                if j % 2:
                    p = rnd.choice(rnd_paths)
                    expect(c("PUT", "/%s/%s" % (p, k), v), (201, b"OK"), "PUT /%s" % p)
                    expect(c("GET", "/%s/%s" % (rnd.choice(rnd_paths), k)), (200, v),
                           "GET of client %d's value" % i)
                else:
                    expect(c("PUT", "/memc/" + k, v), (201, b"STORED\r\n"), "memc PUT")
                    p = rnd.choice(MC_PATHS)
                    expect(c("GET", "/%s/%s" % (p, k)), (200, v),
                           "GET /%s of client %d's value" % (p, i))
    h.run_threads(client, 24, h.scale(80), name="http")


# ---------------------------------------------------------------- keepalive is real

def count_accepts(st, paths, n_requests, concurrency):
    """Send n_requests GETs spread over the paths from concurrency kept-alive
    HTTP clients; the clients sidepool accepted meanwhile."""
    before = st.accepted()
    per = n_requests // concurrency

    def client(i):
        with Http(st.ng) as c:
            for j in range(per):
                p = paths[(i + j) % len(paths)]
                status, _ = c("GET", p)
                assert status in (200, 404), "GET %s: %d" % (p, status)
    h.run_threads(client, concurrency, h.scale(60), name="http")
    time.sleep(0.1)
    return st.accepted() - before, per * concurrency


@h.test("with keepalive nginx reuses its connections to sidepool: accepted clients "
        "stay far below the requests (lua unix/TCP, memcached_pass unix/TCP, memc)",
        timeout=90)
def keepalive_reuses():
    st = stack()
    k = key("ka")
    st.redis.call("SET", k, "v")
    mc_set(st.memc.addr, k, b"v")
    cases = [
        ("lua-resty-redis, unix, set_keepalive", ["/redis/" + k]),
        ("lua-resty-redis, TCP, set_keepalive", ["/redis-tcp/" + k]),
        ("memcached_pass, unix, upstream keepalive", ["/memcached/" + k]),
        ("memcached_pass, TCP, upstream keepalive", ["/memcached-tcp/" + k]),
        ("memc_pass, unix, upstream keepalive", ["/memc/" + k]),
    ]
    conc = 4
    for what, paths in cases:
        accepted, n = count_accepts(st, paths, 200, conc)
        h.diag("%-45s %3d requests -> %d new clients at sidepool" % (what, n, accepted))
        # a worker's pool holds at most as many as it had requests at once
        assert accepted <= conc + NGINX_WORKERS, \
            "%s: %d requests made sidepool accept %d clients (expected at most %d)" % (
                what, n, accepted, conc + NGINX_WORKERS)


@h.test("without keepalive nginx opens one connection to sidepool per request "
        "(lua close(), memcached_pass to an address, unix and TCP)", timeout=90)
def no_keepalive_one_per_request():
    st = stack()
    k = key("nka")
    st.redis.call("SET", k, "v")
    mc_set(st.memc.addr, k, b"v")
    cases = [
        ("lua-resty-redis, unix, close()", ["/redis-nokeepalive/" + k]),
        ("memcached_pass unix: (no upstream block)", ["/memcached-nokeepalive/" + k]),
        ("memcached_pass 127.0.0.1 (no upstream block)", ["/memcached-tcp-nokeepalive/" + k]),
    ]
    # lua's connect() takes an idle connection from the worker's pool for
    # that address even in code that then calls close(): start from new
    # workers, whose pools are empty
    st.ng.reload()
    for what, paths in cases:
        accepted, n = count_accepts(st, paths, 200, 4)
        h.diag("%-45s %3d requests -> %d new clients at sidepool" % (what, n, accepted))
        expect(accepted, n, "%s: clients accepted for %d requests" % (what, n))


@h.test("sidepool closing idle clients (listener idle_timeout 1s) under nginx's pools: "
        "nginx notices, the next request reconnects and succeeds", timeout=60)
def idle_timeout_under_keepalive():
    st = stack()
    k = key("idle")
    st.redis.call("SET", k, "idle value")
    mc_set(st.memc.addr, k, b"idle value")
    with Http(st.ng) as c:
        out = lua(st, c, sock="redis-idle.sock", cmd="GET " + k, keepalive="1")
        expect(out[1:], ["string idle value", "kept=yes"], "lua GET on the idle listener")
        out = lua(st, c, sock="redis-idle.sock", cmd="GET " + k, keepalive="1")
        assert out[0] != "reused=0", "not reused within the idle timeout: %r" % out
        expect(c("GET", "/t/memcached-idle/" + k), (200, b"idle value"), "memcached_pass")
        for rnd in range(2):
            closed = st.stats()["clients"]["closed"]
            time.sleep(1.2)
            h.poll_until(lambda: st.stats()["clients"]["closed"] - closed >= 2, h.scale(5),
                         what="sidepool to close the two idle connections")
            time.sleep(0.3)  # nginx sees the close on its idle connections
            before = st.accepted()
            out = lua(st, c, sock="redis-idle.sock", cmd="GET " + k, keepalive="1")
            expect(out, ["reused=0", "string idle value", "kept=yes"],
                   "lua GET after sidepool closed the idle connection (round %d)" % rnd)
            expect(c("GET", "/t/memcached-idle/" + k), (200, b"idle value"),
                   "memcached_pass after sidepool closed the idle connection")
            expect(st.accepted() - before, 2, "new clients after the idle close")


@h.test("permissions: the worker user connects to a 0660 socket of its group, and gets "
        "permission denied on a 0600 one")
def socket_permissions():
    st = stack()
    if not WORKER:
        raise h.Skip("not root: nginx's workers run as this user, nothing to check")
    for name in ("redis.sock", "memcached.sock"):
        s = os.stat(os.path.join(st.run, name))
        expect(oct(stat.S_IMODE(s.st_mode)), oct(0o660), "mode of %s" % name)
        expect(s.st_gid, WORKER[2], "group of %s (from the setgid directory)" % name)
    out = lua(st, sock="redis-private.sock", cmd="PING")
    expect(out, ["connect error: permission denied"],
           "lua connect to a 0600 socket as %s" % WORKER[0])
    out = lua(st, sock="redis.sock", cmd="PING")
    expect(out[1], "string PONG", "lua PING through the 0660 socket as %s" % WORKER[0])


# ---------------------------------------------------------------- redis2's traffic shape

def raw_pipelines(st, addr, tag, rounds, seed):
    """What redis2_raw_queries does over an upstream keepalive connection:
    one connection kept, each request a pipeline of N raw commands (RESP or
    inline) sent in one write, exactly N replies read."""
    rnd = random.Random(seed)
    with h.RespClient(addr, timeout=15) as c:
        counter = 0
        for r in range(rounds):
            n = rnd.choice([1, 2, 3, 10, 50, 200])
            data, want = [], []
            for j in range(n):
                k = key("r2", tag, r, j)
                kind = rnd.randrange(8)
                if kind == 0:
                    data.append(("SET %s inline-%d\r\n" % (k, j)).encode())
                    want.append("OK")
                elif kind == 1:
                    data.append(h.encode("SET", k, "v%d" % j))
                    data.append(("GET %s\r\n" % k).encode())
                    want += ["OK", ("v%d" % j).encode()]
                elif kind == 2:
                    counter += 1
                    data.append(h.encode("INCR", key("r2", tag, "counter")))
                    want.append(counter)
                elif kind == 3:
                    data.append(h.encode("GET", k + "-missing"))
                    want.append(None)
                elif kind == 4:
                    data.append(b"PING\r\n")
                    want.append("PONG")
                elif kind == 5:
                    data.append(h.encode("SET", k, "not a number") + h.encode("INCR", k))
                    want += ["OK", h.Error("ERR value is not an integer or out of range")]
                elif kind == 6:
                    data.append(h.encode("DEBUG", "sleep", "0"))
                    want.append(h.Error("ERR sidepool: DEBUG is not allowed through the proxy"))
                else:
                    v = bytes(rnd.getrandbits(8) for _ in range(rnd.choice([0, 10, 4096])))
                    data.append(h.encode("SET", k, v) + h.encode("GET", k))
                    want += ["OK", v]
            got = c.send_and_read(b"".join(data), len(want))
            expect(got, want, "pipeline %d of %s (%d commands)" % (r, tag, len(want)))
    return rounds


@h.test("redis2_raw_queries' shape: raw RESP/inline pipelines of N commands over one "
        "kept-alive connection, unix and TCP, one client accepted per connection",
        timeout=90)
def redis2_shape():
    st = stack()
    for addr, tag in ((st.sp.listeners[1], "unix"), (st.redis_tcp, "tcp")):
        before = st.accepted()
        raw_pipelines(st, addr, tag, 30, hash(tag))
        expect(st.accepted() - before, 1, "clients accepted for 30 pipelines on one "
                                          "connection (%s)" % tag)
    # several workers' pools at once, like nginx workers with keepalive
    before = st.accepted()
    h.run_threads(lambda i: raw_pipelines(
        st, st.sp.listeners[1] if i % 2 else st.redis_tcp, "par%d" % i, 15, i),
        8, h.scale(80), name="pipeline")
    expect(st.accepted() - before, 8, "clients accepted for 8 kept connections")


@h.test("nginx logged no crit, alert or emerg, and is still running")
def nginx_log_clean():
    st = stack()
    assert st.ng.alive(), "nginx exited with %s" % st.ng.proc.returncode
    # connect() refused with EACCES is logged at crit: the permission test
    bad = [ln for ln in st.ng.errors() if "redis-private.sock" not in ln]
    assert not bad, "nginx logged:\n%s" % "\n".join(bad[:20])


h.run()
