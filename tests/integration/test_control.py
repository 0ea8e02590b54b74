#!/usr/bin/env python3
"""
test_control.py - the control socket and sidepoolctl: every command in text
and JSON (parsed by python's json), counters that move with known traffic,
exit codes scripts rely on, and a private socket that refuses other users.
"""

import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

h.require_tools("redis-server", "redis-cli")

CTL = os.path.join(os.path.dirname(h.SIDEPOOL_BIN), "sidepoolctl")
COMMANDS = ["help", "version", "status", "stats", "pools", "servers",
            "clients", "workers", "config"]


def start(servers, extra=None, workers=2):
    cfg = h.redis_config(servers, listen=[h.AUTO_TCP, h.AUTO_UNIX],
                         workers=workers)
    sp = h.Sidepool(cfg, start=False)
    sp.config_src["control"] = {"path": os.path.join(sp.tmp, "control.sock")}
    sp.config_src["control"].update(extra or {})
    sp.start()
    return sp


def ctl(sp, *args, user=None):
    argv = [CTL, "-s", sp.config_src["control"]["path"]] + list(args)
    if user is not None:
        argv = ["setpriv", "--reuid", str(user), "--regid", str(user),
                "--clear-groups", "--"] + argv
    p = subprocess.run(argv, capture_output=True, timeout=h.scale(10))
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def ctl_json(sp, cmd, expect=0):
    code, out, err = ctl(sp, "--json", cmd)
    assert code == expect, "sidepoolctl --json %s: exit %d, %s %s" % (cmd, code, out, err)
    return json.loads(out)


@h.test("every command answers in text and in JSON that a real parser accepts")
def every_command_text_and_json():
    r = h.RedisServer()
    sp = start([r])
    for cmd in COMMANDS:
        code, out, err = ctl(sp, cmd)
        assert code == 0, "%s: exit %d (%s)" % (cmd, code, err)
        assert out.strip(), "%s: empty text answer" % cmd
        assert not out.startswith("error"), "%s: %s" % (cmd, out)
        doc = ctl_json(sp, cmd)
        assert isinstance(doc, dict) and "error" not in doc, "%s: %r" % (cmd, doc)


@h.test("stats, pools and workers count exactly the traffic that was sent")
def counters_follow_traffic():
    r = h.RedisServer()
    sp = start([r], workers=1)
    before = ctl_json(sp, "stats")
    with sp.client(0) as c:
        for i in range(25):
            assert c.call("SET", "k%d" % i, "v") == "OK"
        assert c.call("PING") == "PONG"
    after = h.poll_until(lambda: (lambda d: d if d["clients"]["closed"] >=
                                  before["clients"]["closed"] + 1 else None)(
                                      ctl_json(sp, "stats")), 5,
                         what="the client close to be counted")
    srv_b, srv_a = before["servers"][0], after["servers"][0]
    assert srv_a["requests"] - srv_b["requests"] == 25, (srv_b, srv_a)
    assert srv_a["replies"] - srv_b["replies"] == 25
    assert after["requests"] - before["requests"] == 25
    assert after["local_replies"] - before["local_replies"] == 1
    # the harness's readiness probes may be counted late: at least ours
    assert after["clients"]["accepted"] - before["clients"]["accepted"] >= 1
    assert srv_a["latency_us"]["p50"] > 0
    assert srv_a["bytes_sent"] > srv_b["bytes_sent"]
    pools = ctl_json(sp, "pools")["pools"]
    assert len(pools) == 1 and pools[0]["opened"] >= 1
    assert pools[0]["idle"] + pools[0]["active"] >= 1
    workers = ctl_json(sp, "workers")["workers"]
    assert workers[0]["requests"] - 0 >= 25


@h.test("clients shows the connected clients per listener")
def clients_counts_connected():
    r = h.RedisServer()
    sp = start([r], workers=1)
    cs = [sp.client(1) for _ in range(3)]
    for c in cs:
        assert c.call("PING") == "PONG"
    doc = ctl_json(sp, "clients")
    by_listener = {}
    for row in doc["clients"]:
        by_listener[row["listener"]] = by_listener.get(row["listener"], 0) + row["clients"]
    assert by_listener[sp.listeners[1]] == 3, by_listener
    assert by_listener[sp.listeners[0]] == 0, by_listener
    for c in cs:
        c.close()


@h.test("status exits 0 when all servers are up and 4 when one is down")
def status_exit_codes():
    r = h.RedisServer()
    sp = start([r], workers=1)
    code, out, _ = ctl(sp, "status")
    assert code == 0 and out.startswith("ok"), (code, out)
    r.kill()
    with sp.client(0) as c:
        reply = c.call("GET", "x")
        assert isinstance(reply, h.Error) and reply.startswith("ERR sidepool"), reply
    code, out, _ = ctl(sp, "status")
    assert code == 4 and out.startswith("degraded"), (code, out)
    doc = ctl_json(sp, "status", expect=4)
    assert doc["healthy"] is False and doc["down"] == 1, doc


@h.test("unknown command: error answer and exit 1; usage error: exit 2; no daemon: exit 3")
def error_exit_codes():
    r = h.RedisServer()
    sp = start([r], workers=1)
    code, out, _ = ctl(sp, "frobnicate")
    assert code == 1 and out.startswith("error:"), (code, out)
    code, out, _ = ctl(sp, "--json", "frobnicate")
    assert code == 1 and "error" in json.loads(out)
    p = subprocess.run([CTL], capture_output=True, timeout=10)
    assert p.returncode == 2, p.returncode
    p = subprocess.run([CTL, "-s", os.path.join(sp.tmp, "nope.sock"), "status"],
                       capture_output=True, timeout=10)
    assert p.returncode == 3 and b"cannot reach" in p.stderr, p


@h.test("the control socket is 0600 by default and refuses another user")
def control_socket_is_private():
    r = h.RedisServer()
    sp = start([r], workers=1)
    path = sp.config_src["control"]["path"]
    mode = stat.S_IMODE(os.stat(path).st_mode)
    assert mode == 0o600, oct(mode)
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        h.diag("not root or no setpriv: the other-user check is skipped")
        return
    nobody = pwd.getpwnam("nobody").pw_uid
    os.chmod(sp.tmp, 0o755)  # so only the socket's own mode decides
    code, _, err = ctl(sp, "status", user=nobody)
    assert code == 3 and "Permission denied" in err, (code, err)


@h.test("a configured control mode is applied")
def control_mode_applied():
    r = h.RedisServer()
    sp = start([r], extra={"mode": "0660"}, workers=1)
    mode = stat.S_IMODE(os.stat(sp.config_src["control"]["path"]).st_mode)
    assert mode == 0o660, oct(mode)


@h.test("config shows the running configuration with every secret masked")
def config_masks_secrets():
    r = h.RedisServer()
    cfg = h.redis_config([r], listen=[h.AUTO_TCP], workers=1)
    cfg["upstreams"]["redis"]["client_auth"] = {"password": "clientsecret123"}
    cfg["upstreams"]["redis"]["auth"] = {"password": "backendsecret456"}
    r.call("CONFIG", "SET", "requirepass", "backendsecret456")
    sp = h.Sidepool(cfg, start=False)
    sp.config_src["control"] = {"path": os.path.join(sp.tmp, "control.sock")}
    sp.start()
    for args in (("config",), ("--json", "config")):
        code, out, _ = ctl(sp, *args)
        assert code == 0, out
        assert "clientsecret123" not in out and "backendsecret456" not in out, out
        assert "********" in out, out
    doc = json.loads(ctl(sp, "--json", "config")[1])
    up = doc["upstreams"][0]
    assert up["auth"]["password"] == "********" and up["client_auth"][0]["user"] == "default"


@h.test("the control socket file is removed at exit")
def control_socket_removed_at_exit():
    r = h.RedisServer()
    sp = start([r], workers=1)
    path = sp.config_src["control"]["path"]
    assert os.path.exists(path)
    assert sp.stop() == 0
    assert not os.path.exists(path)



def scrape(addr, path="/metrics"):
    import urllib.request
    import urllib.error
    try:
        with urllib.request.urlopen("http://%s%s" % (addr, path), timeout=10) as r:
            return r.status, r.headers.get("Content-Type"), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, None, ""


SAMPLE = __import__("re").compile(
    r'^(sidepool_[a-z_]+)(\{([a-z_]+="[^"\\\n]*")(,[a-z_]+="[^"\\\n]*")*\})? '
    r'(-?[0-9.e+]+|\+Inf)$')


def parse_prometheus(text):
    """A strict check of the text format: HELP and TYPE before each family,
    every sample well formed, histogram buckets cumulative."""
    families, samples = {}, []
    for ln in text.splitlines():
        if ln.startswith("# HELP "):
            families.setdefault(ln.split()[2], {})["help"] = True
        elif ln.startswith("# TYPE "):
            _, _, name, kind = ln.split()
            assert kind in ("counter", "gauge", "histogram"), ln
            families.setdefault(name, {})["type"] = kind
        else:
            m = SAMPLE.match(ln)
            assert m, "malformed sample line: %r" % ln
            name = m.group(1)
            base = name
            for suffix in ("_bucket", "_sum", "_count"):
                if name.endswith(suffix) and name[:-len(suffix)] in families:
                    base = name[:-len(suffix)]
            assert base in families and "type" in families[base], \
                "sample before its TYPE: %r" % ln
            samples.append((name, m.group(2) or "", float(m.group(5))))
    for name, f in families.items():
        assert f.get("help") and f.get("type"), "family %s lacks HELP or TYPE" % name
    return samples


@h.test("Prometheus /metrics on loopback: valid text format, counters follow traffic, "
        "histogram buckets cumulative; other paths 404")
def prometheus_metrics():
    r = h.RedisServer()
    port = h.free_port()
    cfg = h.redis_config([r], listen=[h.AUTO_TCP], workers=2)
    cfg["metrics"] = {"listen": "127.0.0.1:%d" % port}
    sp = h.Sidepool(cfg)
    addr = "127.0.0.1:%d" % port
    status, ctype, body = scrape(addr)
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4"), (status, ctype)
    before = {(n, l): v for n, l, v in parse_prometheus(body)}
    with sp.client(0) as c:
        for i in range(40):
            assert c.call("SET", "m%d" % i, "x") == "OK"
    _, _, body = scrape(addr)
    samples = parse_prometheus(body)
    after = {(n, l): v for n, l, v in samples}
    key = [k for k in after if k[0] == "sidepool_server_requests_total"][0]
    assert after[key] - before.get(key, 0) == 40, (before.get(key), after[key])
    buckets = [v for n, l, v in samples if n == "sidepool_server_reply_seconds_bucket"]
    assert buckets == sorted(buckets), "buckets are not cumulative"
    count = [v for n, l, v in samples if n == "sidepool_server_reply_seconds_count"][0]
    assert buckets[-1] == count >= 40
    up = [v for n, l, v in samples if n == "sidepool_server_up"]
    assert up == [1.0], up
    assert scrape(addr, "/other")[0] == 404
    # every family is documented in sidepoolctl(8), PROMETHEUS METRICS
    with open(os.path.join(h.SRCDIR, "man", "sidepoolctl.8")) as f:
        man = f.read()
    section = man[man.index(".SH PROMETHEUS METRICS"):]
    section = section[:section.index("\n.SH ", 1)]
    names = sorted({ln.split()[2] for ln in body.splitlines() if ln.startswith("# TYPE ")})
    missing = [n for n in names if n[len("sidepool_"):] not in section]
    assert not missing, "metrics missing from sidepoolctl(8) PROMETHEUS METRICS: %s" % missing


def ctl_timed(sp, *args, stdout=subprocess.PIPE):
    """sidepoolctl ARGS against sp; (exit code, stderr, seconds it took)."""
    t0 = time.monotonic()
    p = subprocess.run([CTL, "-s", sp.config_src["control"]["path"]] + list(args),
                       stdout=stdout, stderr=subprocess.PIPE, timeout=h.scale(30))
    return p.returncode, p.stderr.decode(), time.monotonic() - t0


def fill_backlog(path):
    """Unix connections to path until its listen backlog is full (nobody
    accepts them: the daemon is stopped); the sockets."""
    socks = []
    for _ in range(1000):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(path)
        except BlockingIOError:
            s.close()
            return socks
        socks.append(s)
    raise AssertionError("1000 connections and the backlog of %s is not full" % path)


@h.test("a stopped daemon (SIGSTOP): sidepoolctl gives up after -T (and after 5s by default), "
        "exit 3 with a message saying what to check, also when the connect itself would "
        "block; after SIGCONT it answers again")
def stopped_daemon_times_out():
    r = h.RedisServer()
    sp = start([r], workers=1)
    sp.pause()  # SIGSTOP: connections wait in the backlog, unanswered
    socks = []
    try:
        code, err, took = ctl_timed(sp, "-T", "0.5", "status")
        assert code == 3 and "did not answer within 0.5 s" in err and "stopped" in err, \
            (code, err)
        assert 0.4 < took < 5, "-T 0.5 gave up after %.2fs" % took
        code, err, took = ctl_timed(sp, "--timeout", "1", "--json", "stats")
        assert code == 3 and "did not answer within 1 s" in err, (code, err)
        code, err, took = ctl_timed(sp, "status")
        assert code == 3 and "within 5 s" in err, (code, err)
        assert 4.5 < took < 15, "the default timeout gave up after %.2fs" % took
        # a full backlog: the connect blocks, and is bounded the same way
        socks = fill_backlog(sp.config_src["control"]["path"])
        code, err, took = ctl_timed(sp, "-T", "0.5", "status")
        assert code == 3 and "did not accept the connection within 0.5 s" in err, (code, err)
        assert took < 5, took
    finally:
        for s in socks:
            s.close()
        sp.resume()
    code, out, err = ctl(sp, "status")
    assert code == 0 and out.startswith("ok"), (code, out, err)


@h.test("-T with something other than seconds: exit 2 and what it takes; -T 0 waits as long "
        "as it takes")
def timeout_option_checked():
    r = h.RedisServer()
    sp = start([r], workers=1)
    for bad in ("abc", "-1", "5s", "", "nan", "1e9"):
        code, err, _ = ctl_timed(sp, "-T", bad, "status")
        assert code == 2 and "-T takes seconds" in err, (bad, code, err)
    code, out, err = ctl(sp, "-T", "0", "status")
    assert code == 0 and out.startswith("ok"), (code, out, err)
    code, out, err = ctl(sp, "-T", "2.5", "version")
    assert code == 0 and "sidepool" in out, (code, out, err)


@h.test("stdout closed before the answer: sidepoolctl reports the write error and exits 1 "
        "instead of dying of SIGPIPE")
def closed_stdout_is_reported():
    r = h.RedisServer()
    sp = start([r], workers=1)
    rd, wr = os.pipe()
    os.close(rd)
    try:
        code, err, _ = ctl_timed(sp, "config", stdout=wr)
    finally:
        os.close(wr)
    assert code == 1 and "cannot write the answer" in err and "Broken pipe" in err, (code, err)


if __name__ == "__main__":
    h.run()
