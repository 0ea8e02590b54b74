#!/usr/bin/env python3
"""
test_install.py - `make install` puts the daemon, the CLI, the example
config, the man pages and the systemd unit where an operator expects them,
the unit names the installed paths, the installed config passes -t, and
every man page renders without a warning.
"""

import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

BUILDDIR = os.path.dirname(h.SIDEPOOL_BIN)
PAGES = ["man/sidepool.8", "man/sidepoolctl.8", "man/sidepool.yml.5"]


@h.test("make install DESTDIR=...: binaries, config, man pages and a unit with real paths",
        timeout=120)
def make_install_layout():
    dest = h.mkdtemp()
    p = subprocess.run(["make", "-C", BUILDDIR, "install", "DESTDIR=" + dest,
                        "prefix=/usr", "sysconfdir=/etc"],
                       capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr.decode()[-2000:]
    for rel in ("usr/sbin/sidepool", "usr/sbin/sidepoolctl", "etc/sidepool/sidepool.yml",
                "usr/share/man/man8/sidepool.8", "usr/share/man/man8/sidepoolctl.8",
                "usr/share/man/man5/sidepool.yml.5",
                "usr/lib/systemd/system/sidepool.service"):
        assert os.path.exists(os.path.join(dest, rel)), "not installed: " + rel
    unit = open(os.path.join(dest, "usr/lib/systemd/system/sidepool.service")).read()
    assert "@sbindir@" not in unit and "@sysconfdir@" not in unit, unit
    assert "ExecStart=/usr/sbin/sidepool -c /etc/sidepool/sidepool.yml" in unit, unit
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit
    p = subprocess.run([os.path.join(dest, "usr/sbin/sidepool"), "-t", "-c",
                        os.path.join(dest, "etc/sidepool/sidepool.yml")],
                       capture_output=True, timeout=30)
    assert p.returncode == 0, p.stderr.decode()


@h.test("every man page renders without warnings (groff -ww, man -l)")
def man_pages_render_cleanly():
    if not shutil.which("groff"):
        h.diag("groff not installed: skipped")
        return
    for page in PAGES:
        path = os.path.join(h.SRCDIR, page)
        p = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", path],
                           capture_output=True, timeout=30)
        assert p.returncode == 0 and not p.stderr, "%s: %s" % (page, p.stderr.decode())
        if shutil.which("man"):
            p = subprocess.run(["man", "-l", path], capture_output=True, timeout=30,
                               env=dict(os.environ, MANPAGER="cat", PAGER="cat"))
            assert p.returncode == 0 and not p.stderr.strip(), \
                "%s: %s" % (page, p.stderr.decode())


if __name__ == "__main__":
    h.run()
