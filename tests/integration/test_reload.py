#!/usr/bin/env python3
"""
test_reload.py - SIGHUP and `sidepoolctl reload` apply a new configuration
without dropping a client: pool settings change in place, listeners come
and go, servers change, an invalid file changes nothing, counters survive,
and systemd hears RELOADING=1 then READY=1. Clients keep sending requests
throughout, and every one of them must succeed.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

h.require_tools("redis-server")

CTL = os.path.join(os.path.dirname(h.SIDEPOOL_BIN), "sidepoolctl")


def start(servers, listen=None, workers=2, pool=None):
    cfg = h.redis_config(servers, listen=listen or [h.AUTO_TCP, h.AUTO_UNIX],
                         workers=workers, pool=pool)
    sp = h.Sidepool(cfg, start=False)
    sp.config_src["control"] = {"path": os.path.join(sp.tmp, "control.sock")}
    sp.start()
    # from now on the file is written by hand: the listeners are fixed
    sp.config_src = sp.config
    return sp


def ctl(sp, *args):
    p = subprocess.run([CTL, "-s", sp.config["control"]["path"]] + list(args),
                       capture_output=True, timeout=h.scale(10))
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def write_config(sp, cfg):
    with open(sp.config_path, "w") as f:
        f.write(h.to_yaml(cfg) if isinstance(cfg, dict) else cfg)


class Load:
    """Clients that keep sending SET/GET pairs; every reply must be right."""

    def __init__(self, addrs, n=4):
        self.stop = threading.Event()
        self.errors = []
        self.done = 0
        self.threads = [threading.Thread(target=self.run, args=(addrs[i % len(addrs)], i),
                                         daemon=True) for i in range(n)]
        for t in self.threads:
            t.start()

    def run(self, addr, i):
        try:
            with h.RespClient(addr, timeout=10) as c:
                j = 0
                while not self.stop.is_set():
                    k, v = "reload:%d" % i, "v%d" % j
                    got = c.pipeline([("SET", k, v), ("GET", k)])
                    if got != ["OK", v.encode()]:
                        self.errors.append("client %d: %r" % (i, got))
                        return
                    self.done += 1
                    j += 1
        except Exception as e:  # noqa: BLE001
            self.errors.append("client %d: %r" % (i, e))

    def finish(self):
        h.poll_until(lambda: self.done > 20, 10, what="load to make progress")
        self.stop.set()
        for t in self.threads:
            t.join(h.scale(15))
        assert not self.errors, self.errors[:3]


@h.test("SIGHUP with a new pool size: applied in place, every request of the running "
        "clients succeeds, counters survive")
def reload_pool_size_by_sighup():
    r = h.RedisServer()
    sp = start([r])
    load = Load(sp.listeners)
    h.poll_until(lambda: load.done > 10, 10)
    before = json.loads(ctl(sp, "--json", "stats")[1])["servers"][0]["requests"]
    cfg = json.loads(json.dumps(sp.config))
    cfg["upstreams"]["redis"]["pool"]["size"] = 2
    cfg["upstreams"]["redis"]["pool"]["max_connections"] = 3
    write_config(sp, cfg)
    sp.send_signal(signal.SIGHUP)

    def applied():
        code, out, _ = ctl(sp, "--json", "config")
        return code == 0 and json.loads(out)["upstreams"][0]["pool"]["size"] == 2
    h.poll_until(applied, 10, what="the new pool size in `config`")
    load.finish()
    after = json.loads(ctl(sp, "--json", "stats")[1])["servers"][0]["requests"]
    assert after > before, "counters were reset by the reload (%d -> %d)" % (before, after)
    conns = [ln for ln in r.client_list() if "cmd=client" not in ln]
    assert len(conns) <= 2 * 3, "more connections than workers x max_connections: %d" % len(conns)


@h.test("reload adds a listener: it accepts; the old ones keep their clients")
def reload_adds_listener():
    r = h.RedisServer()
    sp = start([r], listen=[h.AUTO_TCP])
    c_old = sp.client(0)
    assert c_old.call("SET", "a", "1") == "OK"
    cfg = json.loads(json.dumps(sp.config))
    new_addr = "127.0.0.1:%d" % h.free_port()
    cfg["listeners"].append({"listen": new_addr, "upstream": "redis"})
    write_config(sp, cfg)
    code, out, err = ctl(sp, "reload")
    assert code == 0, (code, out, err)
    assert "generation" in out, out
    with h.RespClient(new_addr) as c:
        assert c.call("GET", "a") == b"1"
    assert c_old.call("GET", "a") == b"1", "a client of a listener that stayed was disturbed"
    c_old.close()


@h.test("reload removes a listener: new connections are refused, its connected client "
        "keeps working until it leaves")
def reload_removes_listener():
    r = h.RedisServer()
    sp = start([r], listen=[h.AUTO_TCP, h.AUTO_TCP])
    gone = sp.listeners[1]
    c = sp.client(1)
    assert c.call("SET", "b", "2") == "OK"
    cfg = json.loads(json.dumps(sp.config))
    cfg["listeners"] = cfg["listeners"][:1]
    write_config(sp, cfg)
    code, out, err = ctl(sp, "reload")
    assert code == 0, (code, out, err)
    h.poll_until(lambda: not h.can_connect(gone, timeout=0.5), 10,
                 what="the removed listener to refuse connections")
    for i in range(20):
        assert c.call("INCR", "b") == 3 + i, "the removed listener's client lost service"
    c.close()
    with sp.client(0) as c2:
        assert c2.call("GET", "b") == b"22"


@h.test("reload with an invalid file: the caller gets file:line:col, nothing changes")
def reload_invalid_file_keeps_old():
    r = h.RedisServer()
    sp = start([r])
    load = Load(sp.listeners, n=2)
    good = open(sp.config_path).read()
    write_config(sp, good + "bogus_key: 1\n")
    code, out, err = ctl(sp, "reload")
    assert code == 1, (code, out)
    line = len(good.splitlines()) + 1
    assert "sidepool.yml:%d:1" % line in out and "bogus_key" in out, out
    assert "previous configuration" in out, out
    sp.send_signal(signal.SIGHUP)  # the same by signal: logged, still running
    h.poll_until(lambda: "reload failed" in sp.log_text(), 10)
    load.finish()
    assert sp.alive()
    code, _, _ = ctl(sp, "status")
    assert code == 0


@h.test("reload to a listener address another process holds: refused, nothing changes")
def reload_bind_failure_keeps_old():
    r = h.RedisServer()
    sp = start([r], listen=[h.AUTO_TCP])
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    cfg = json.loads(json.dumps(sp.config))
    cfg["listeners"].append({"listen": "127.0.0.1:%d" % blocker.getsockname()[1],
                             "upstream": "redis"})
    write_config(sp, cfg)
    code, out, _ = ctl(sp, "reload")
    assert code == 1 and "cannot bind" in out, (code, out)
    with sp.client(0) as c:
        assert c.call("PING") == "PONG"
    blocker.close()


@h.test("reload to another server: new clients use it, a connected client stays on the "
        "old one until it leaves, then the old pool closes")
def reload_changes_server():
    r1, r2 = h.RedisServer(), h.RedisServer()
    sp = start([r1], listen=[h.AUTO_TCP], workers=1)
    old = sp.client(0)
    assert old.call("SET", "where", "r1") == "OK"
    with h.RespClient(r2.addr) as direct:
        assert direct.call("SET", "where", "r2") == "OK"
    cfg = json.loads(json.dumps(sp.config))
    cfg["upstreams"]["redis"]["servers"] = [r2.addr]
    write_config(sp, cfg)
    code, out, _ = ctl(sp, "reload")
    assert code == 0, out
    with sp.client(0) as new:
        assert new.call("GET", "where") == b"r2"
    assert old.call("GET", "where") == b"r1", "a connected client was moved mid-session"
    old.close()

    def old_pool_closed():
        return not [ln for ln in r1.client_list() if "cmd=client" not in ln]
    h.poll_until(old_pool_closed, 10, what="the old server's connections to close")


@h.test("reload changing restart-only keys: each is kept and named in a warning, the "
        "rest applies")
def reload_warns_on_restart_only_keys():
    r = h.RedisServer()
    sp = start([r])
    cfg = json.loads(json.dumps(sp.config))
    cfg["workers"] = 1
    cfg["control"]["mode"] = "0660"
    cfg["pid_file"] = os.path.join(sp.tmp, "other.pid")
    cfg["upstreams"]["redis"]["pool"]["size"] = 3
    write_config(sp, cfg)
    code, out, _ = ctl(sp, "reload")
    assert code == 0, out
    log = sp.log_text()
    for key in ("workers: 1 needs a restart", "control.mode needs a restart",
                "pid_file needs a restart"):
        assert key in log, "no warning for %r:\n%s" % (key, sp.log_tail())
    code, out, _ = ctl(sp, "--json", "config")
    assert json.loads(out)["upstreams"][0]["pool"]["size"] == 3, out
    mode = os.stat(sp.config["control"]["path"]).st_mode & 0o777
    assert mode == 0o600, "control socket mode changed to %o" % mode
    assert not os.path.exists(cfg["pid_file"])


@h.test("systemd hears RELOADING=1 then READY=1 around a reload")
def reload_notifies_systemd():
    r = h.RedisServer()
    n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = os.path.join(h.mkdtemp(), "notify.sock")
    n.bind(path)
    n.settimeout(h.scale(10))
    os.environ["NOTIFY_SOCKET"] = path
    try:
        sp = start([r])
    finally:
        del os.environ["NOTIFY_SOCKET"]
    assert b"READY=1" in n.recv(4096)
    sp.send_signal(signal.SIGHUP)
    assert n.recv(4096).startswith(b"RELOADING=1")
    assert b"READY=1" in n.recv(4096)


if __name__ == "__main__":
    h.run()
