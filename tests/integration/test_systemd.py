#!/usr/bin/env python3
"""
test_systemd.py - the service-manager side: sd_notify datagrams (READY=1
once listening, STOPPING=1 on SIGTERM) to $NOTIFY_SOCKET, path or abstract,
and the unit file, checked by systemd-analyze when it is installed.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

h.require_tools("redis-server")


class Notify:
    """A datagram socket standing in for systemd's notify socket."""

    def __init__(self, abstract=False):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = "sidepool-test-%d" % os.getpid()
            self.sock.bind("\0" + name)
            self.env = "@" + name
        else:
            self.path = os.path.join(h.mkdtemp(), "notify.sock")
            self.sock.bind(self.path)
            self.env = self.path
        self.sock.settimeout(h.scale(10))

    def expect(self, key):
        while True:
            msg = self.sock.recv(4096).decode()
            fields = dict(line.split("=", 1) for line in msg.splitlines() if "=" in line)
            if key in fields:
                return fields


def start_with_notify(notify):
    r = h.RedisServer()
    os.environ["NOTIFY_SOCKET"] = notify.env
    try:
        sp = h.Sidepool(h.redis_config([r], workers=1), start=False)
        sp.start()
    finally:
        del os.environ["NOTIFY_SOCKET"]
    return sp


@h.test("READY=1 with MAINPID arrives once listening; STOPPING=1 on SIGTERM")
def notify_ready_and_stopping():
    n = Notify()
    sp = start_with_notify(n)
    fields = n.expect("READY")
    assert fields["READY"] == "1"
    assert fields["MAINPID"] == str(sp.pid), (fields, sp.pid)
    assert "STATUS" in fields
    assert h.can_connect(sp.listeners[0]), "READY sent before listening"
    sp.send_signal(signal.SIGTERM)
    fields = n.expect("STOPPING")
    assert fields["STOPPING"] == "1"
    assert sp.wait_exit(10) == 0


@h.test("an abstract NOTIFY_SOCKET (@name) works too")
def notify_abstract_socket():
    n = Notify(abstract=True)
    sp = start_with_notify(n)
    assert n.expect("READY")["READY"] == "1"
    assert sp.stop() == 0


@h.test("the systemd unit is Type=notify, hardened, and passes systemd-analyze verify")
def unit_file_verifies():
    src = os.path.join(h.SRCDIR, "conf", "sidepool.service.in")
    text = open(src).read()
    for needle in ("Type=notify", "NoNewPrivileges=yes", "PrivateTmp=yes",
                   "ProtectSystem=strict", "RuntimeDirectory=sidepool",
                   "ExecStartPre=@sbindir@/sidepool -t"):
        assert needle in text, "unit lacks %s" % needle
    if not shutil.which("systemd-analyze"):
        h.diag("systemd-analyze not installed: verify skipped")
        return
    d = h.mkdtemp()
    unit = os.path.join(d, "sidepool.service")
    with open(unit, "w") as f:
        f.write(text.replace("@sbindir@", os.path.dirname(h.SIDEPOOL_BIN))
                .replace("@sysconfdir@", "/etc").replace("User=sidepool\n", "")
                .replace("Group=sidepool\n", ""))
    p = subprocess.run(["systemd-analyze", "verify", unit], capture_output=True,
                       timeout=60)
    # Documentation= pages are not installed where the test runs.
    errors = [ln for ln in p.stderr.decode().splitlines()
              if "sidepool.service" in ln and "Command 'man " not in ln]
    assert not errors, "\n".join(errors)


@h.test("SIGUSR1 reopens the log file: after a logrotate-style rename, new lines go to a "
        "new file")
def sigusr1_reopens_log():
    r = h.RedisServer()
    d = h.mkdtemp()
    log = os.path.join(d, "sidepool.log")
    cfg = h.redis_config([r], workers=1)
    cfg["log"] = {"level": "info", "file": log}
    sp = h.Sidepool(cfg)
    h.poll_until(lambda: os.path.exists(log) and "started" in open(log).read(), 5)
    os.rename(log, log + ".1")
    sp.send_signal(signal.SIGUSR1)
    h.poll_until(lambda: os.path.exists(log), 5, what="a new log file")
    sp.send_signal(signal.SIGHUP)  # something to log
    h.poll_until(lambda: "reload" in open(log).read(), 5,
                 what="new lines in the new file")
    assert "reopening" in open(log + ".1").read()
    assert sp.stop() == 0


if __name__ == "__main__":
    h.run()
